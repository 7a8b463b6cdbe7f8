//! End-to-end: `pgha upgrade` on its own lab (`pgha-e2e-upgrade`). A cluster
//! deployed with PostgreSQL and HAProxy pinned to Debian 13's point-release
//! versions, then upgraded to trixie-security's with the pins lifted while a writer
//! inserts through :5000; the first run is killed after its first replica and run
//! again. Assertions read the hosts and the running servers, not pgha's report.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const LAB: &str = "pgha-e2e-upgrade";
const PG_OLD: &str = "17.11-0+deb13u1";
const PG_NEW: &str = "17.12-0+deb13u1";
const HAPROXY_OLD: &str = "3.0.11-1+deb13u3";
const HAPROXY_NEW: &str = "3.0.11-1+deb13u5";

fn pins() -> String {
    format!(
        "    apt_pins:\n\
         \x20     - {{package: postgresql-17, version: {PG_OLD}}}\n\
         \x20     - {{package: postgresql-client-17, version: {PG_OLD}}}\n\
         \x20     - {{package: libpq5, version: {PG_OLD}}}\n\
         \x20     - {{package: haproxy, version: {HAPROXY_OLD}}}\n"
    )
}

fn package_version(lab: &Lab, host: &str, pkg: &str) -> String {
    lab.sh(host, &format!("dpkg-query -W -f='${{Version}}' {pkg}"))
        .1
}

/// What each member's running server says it is.
fn server_versions(lab: &Lab) -> Vec<(String, String)> {
    lab.db_hosts()
        .into_iter()
        .map(|h| {
            let v = lab.psql(&h, "SHOW server_version");
            (h, v.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect()
}

/// HAProxy's running master: its pid and whether it runs a binary replaced on disk.
fn haproxy_master(lab: &Lab) -> (String, String) {
    let (_, pid) = lab.sh(
        "router1",
        "systemctl show -p MainPID --value haproxy.service",
    );
    let (_, exe) = lab.sh("router1", &format!("readlink /proc/{}/exe", pid.trim()));
    (pid.trim().to_string(), exe.trim().to_string())
}

async fn no_tags_no_pending_restart(lab: &Lab) {
    for h in lab.db_hosts() {
        let st = get_json(&format!("http://{}:8008/patroni", lab.ip(&h)))
            .await
            .expect("patroni status");
        for t in ["nofailover", "noloadbalance", "nosync"] {
            assert_ne!(
                st["tags"][t],
                Value::Bool(true),
                "{h} left tagged {t}: {st}"
            );
        }
        assert_ne!(
            st["pending_restart"],
            Value::Bool(true),
            "{h} pending restart"
        );
        assert_ne!(st["pause"], Value::Bool(true), "cluster left paused");
    }
}

/// Run `pgha upgrade` and kill it (SIGKILL: no cleanup possible) once it reports
/// its first upgraded replica.
fn upgrade_killed_after_first_replica(inv: &str) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["upgrade", inv])
        .env("CI", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run pgha upgrade");
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in out.lines() {
        let line = line.unwrap_or_default();
        eprintln!("upgrade| {line}");
        let done = line.starts_with("ok postgres") && line.contains("upgraded and streaming");
        seen.push(line);
        if done {
            child.kill().expect("kill pgha upgrade");
            break;
        }
    }
    let _ = child.wait();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_minor_versions_with_a_writer_and_an_interruption() {
    let lab = Lab::up(LAB, "root").await;
    let inv = lab.inventory();
    let unpinned = std::fs::read_to_string(&inv).unwrap();
    let pinned = unpinned.replacen("vars:\n", &format!("vars:\n{}", pins()), 1);
    assert_ne!(pinned, unpinned);
    std::fs::write(&inv, &pinned).unwrap();

    // 1. Deploy the older versions.
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with pins");
    healthy_cluster(&lab).await;
    for (h, v) in server_versions(&lab) {
        assert_eq!(v, "17.11", "{h} runs the pinned PostgreSQL");
    }
    assert_eq!(package_version(&lab, "router1", "haproxy"), HAPROXY_OLD);

    // 2. Pins lifted: --check lists exactly the changes and changes nothing.
    std::fs::write(&inv, &unpinned).unwrap();
    let (code, out, _) = pgha(&["upgrade", &inv, "--check", "--output", "json"]);
    assert_eq!(code, 0, "upgrade --check");
    let doc = json_doc(&out);
    let mut changes: Vec<(String, String, String, String)> = Vec::new();
    for (h, rows) in doc["hosts"].as_object().expect("hosts") {
        for r in rows.as_array().unwrap() {
            if r["change"] == true {
                changes.push((
                    h.clone(),
                    r["package"].as_str().unwrap().into(),
                    r["installed"].as_str().unwrap().into(),
                    r["target"].as_str().unwrap().into(),
                ));
            }
        }
    }
    changes.sort();
    let mut want = Vec::new();
    for h in lab.db_hosts() {
        for p in ["libpq5", "postgresql-17", "postgresql-client-17"] {
            want.push((
                h.clone(),
                p.to_string(),
                PG_OLD.to_string(),
                PG_NEW.to_string(),
            ));
        }
    }
    want.push((
        "router1".into(),
        "haproxy".into(),
        HAPROXY_OLD.into(),
        HAPROXY_NEW.into(),
    ));
    want.sort();
    assert_eq!(changes, want, "--check lists exactly the pending changes");
    assert_eq!(doc["switchovers"], 1, "one switchover expected");
    for (h, v) in server_versions(&lab) {
        assert_eq!(v, "17.11", "--check changed nothing on {h}");
    }
    assert_eq!(package_version(&lab, "router1", "haproxy"), HAPROXY_OLD);
    assert!(
        !lab.sh("db1", "cat /etc/apt/preferences.d/pgha")
            .1
            .contains("17.12"),
        "--check wrote no apt preferences"
    );

    // 3. The upgrade, killed after its first replica, with a writer running.
    let pw = lab.secret("superuser_password");
    let c = pg(&lab.router(), 5000, &pw).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE upg (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let writer = Writer::start(&lab.router(), &pw, "upg", 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let inv2 = inv.clone();
    let seen = tokio::task::spawn_blocking(move || upgrade_killed_after_first_replica(&inv2))
        .await
        .unwrap();
    assert!(
        seen.iter().any(|l| l.contains("upgraded and streaming")),
        "the first run got through one replica: {seen:?}"
    );
    let upgraded: Vec<String> = server_versions(&lab)
        .into_iter()
        .filter(|(_, v)| v == "17.12")
        .map(|(h, _)| h)
        .collect();
    assert!(
        !upgraded.is_empty() && upgraded.len() < 3,
        "killed midway: some members upgraded, not all ({upgraded:?})"
    );

    // 4. Run again: it continues from what the hosts show and finishes.
    let (code, out, _) = pgha(&["upgrade", &inv, "--output", "json"]);
    assert_eq!(code, 0, "the second upgrade finishes");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop().await;
    let doc = json_doc(&out);
    for h in &upgraded {
        assert!(
            doc["upgrade"]["hosts"].get(h).is_none(),
            "{h} was finished by the first run and not upgraded again: {doc}"
        );
    }

    let leader = healthy_cluster(&lab).await;
    for (h, v) in server_versions(&lab) {
        assert_eq!(v, "17.12", "{h} runs the new PostgreSQL");
        assert_eq!(package_version(&lab, &h, "postgresql-17"), PG_NEW);
    }
    assert_eq!(package_version(&lab, "router1", "haproxy"), HAPROXY_NEW);
    let (_, exe) = haproxy_master(&lab);
    assert!(
        !exe.ends_with("(deleted)"),
        "HAProxy runs the new binary: {exe}"
    );
    no_tags_no_pending_restart(&lab).await;
    assert!(
        acked.len() > 50,
        "the writer wrote throughout ({})",
        acked.len()
    );
    assert_no_loss(&lab, "upg", &acked).await;
    let servers = haproxy_servers(&lab, "primary").await;
    assert_eq!(
        servers
            .iter()
            .filter(|(_, s)| *s == "UP")
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&leader),
        "writes go to the leader alone"
    );

    // 5. A third run has nothing to do and restarts nothing.
    let before = start_times(&lab).await;
    let (pid, _) = haproxy_master(&lab);
    let (code, out, _) = pgha(&["upgrade", &inv]);
    assert_eq!(code, 0);
    assert!(out.contains("Nothing to upgrade"), "{out}");
    assert_eq!(start_times(&lab).await, before, "no PostgreSQL restarted");
    assert_eq!(haproxy_master(&lab).0, pid, "HAProxy not restarted");
    // And deploy agrees with what upgrade left.
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "deploy after upgrade changes nothing"
    );
}
