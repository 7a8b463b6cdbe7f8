//! pgha's alert rules and Prometheus/Alertmanager configurations, as `deploy`
//! renders them for `monitoring/rules-test-inventory.yml`, checked by the tools
//! Prometheus ships: `promtool check rules`, `promtool check config`, `amtool
//! check-config`, and `promtool test rules` with the unit tests in
//! `monitoring/pgha.rules.test.yml` (series in, alerts expected out: each rule
//! fires when it should, not before its `for:`, and resolves).
//!
//! promtool and amtool: on PATH, or in ~/.cache/pgha/bin (scripts/prereqs puts
//! them there, from Debian's packages).

use std::path::{Path, PathBuf};
use std::process::Command;

use pgha::engine::desired::desired_state;
use pgha::engine::roles::Library;
use pgha::inventory::{self, LoadOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("HOME") {
        let cached = Path::new(&home).join(".cache/pgha/bin").join(name);
        if cached.exists() {
            return cached;
        }
    }
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.exists())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is missing: run scripts/prereqs (it puts {name} in ~/.cache/pgha/bin)")
    })
}

/// The monitoring host's rendered files: (path on the host, content).
fn rendered() -> Vec<(String, String)> {
    let path = root().join("monitoring/rules-test-inventory.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let inv = inventory::load_str(&path, &text, &LoadOptions::default()).unwrap();
    let lib = Library::builtin().unwrap();
    let d = desired_state(&inv, &lib).unwrap();
    let m = d.iter().find(|h| h.host == "router1").unwrap();
    m.files()
        .filter(|f| f.path.starts_with("/etc/prometheus/"))
        .map(|f| {
            (
                f.path.clone(),
                String::from_utf8(f.content.clone()).unwrap(),
            )
        })
        .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn rules_and_configurations_pass_prometheus_own_checks_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let files = rendered();
    let write = |dest: &str| -> PathBuf {
        let (_, content) = files
            .iter()
            .find(|(p, _)| p == dest)
            .unwrap_or_else(|| panic!("{dest} not rendered"));
        let p = dir.path().join(Path::new(dest).file_name().unwrap());
        std::fs::write(&p, content).unwrap();
        p
    };
    let rules = write("/etc/prometheus/pgha.rules.yml");
    let config = write("/etc/prometheus/prometheus.yml");
    let am = write("/etc/prometheus/alertmanager.yml");
    if let Ok(keep) = std::env::var("PGHA_KEEP_RULES") {
        std::fs::copy(&rules, keep).unwrap();
    }
    let out = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules));
    assert!(out.contains("SUCCESS"), "{out}");
    run(Command::new(tool("promtool"))
        .args(["check", "config", "--syntax-only"])
        .arg(&config));
    run(Command::new(tool("amtool")).arg("check-config").arg(&am));
    // The unit tests name the rules file `pgha.rules.yml` beside them.
    std::fs::copy(
        root().join("monitoring/pgha.rules.test.yml"),
        dir.path().join("pgha.rules.test.yml"),
    )
    .unwrap();
    let out = run(Command::new(tool("promtool"))
        .current_dir(dir.path())
        .args(["test", "rules", "pgha.rules.test.yml"]));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let files = rendered();
    let rules = &files
        .iter()
        .find(|(p, _)| p == "/etc/prometheus/pgha.rules.yml")
        .unwrap()
        .1;
    let tests = std::fs::read_to_string(root().join("monitoring/pgha.rules.test.yml")).unwrap();
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for n in names {
        assert!(
            tests.contains(&format!("alertname: {n}\n")),
            "alert {n} has no test in monitoring/pgha.rules.test.yml"
        );
    }
}

#[test]
fn the_grafana_dashboard_queries_metrics_the_rules_know() {
    let text =
        std::fs::read_to_string(root().join("monitoring/grafana/pgha-cluster.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = v["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("cluster=\"$cluster\""),
                "{expr}: not scoped to the chosen cluster"
            );
        }
    }
}
