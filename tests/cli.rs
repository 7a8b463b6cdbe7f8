//! The command line without hosts: how the inventory is found, shell completions,
//! and options refused before anything is contacted (exit 5).

use std::path::PathBuf;
use std::process::Command;

fn pgha(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgha"));
    c.args(args).current_dir(dir).env_remove("PGHA_INVENTORY");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run pgha");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("inventory/example.yml")
}

#[test]
fn the_inventory_is_a_plain_argument_or_an_option() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example();
    let ex = ex.to_str().unwrap();
    let (code, by_arg, _) = pgha(&["inventory", ex, "--output", "json"], dir.path(), &[]);
    assert_eq!(code, 0);
    let (code, by_opt, _) = pgha(
        &["inventory", "-i", ex, "--output", "json"],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(by_arg, by_opt, "the same inventory either way");
    let (code, _, stderr) = pgha(&["inventory", ex, "-i", ex], dir.path(), &[]);
    assert_eq!(code, 5, "both at once is refused: {stderr}");
}

#[test]
fn without_one_pgha_reads_pgha_inventory_then_the_current_directory_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example();
    let (code, _, stderr) = pgha(&["inventory"], dir.path(), &[]);
    assert_eq!(code, 5, "no inventory anywhere: {stderr}");
    assert!(
        stderr.contains("PGHA_INVENTORY") && stderr.contains("inventory.yml"),
        "{stderr}"
    );

    let (code, out, stderr) = pgha(
        &["inventory", "--output", "json"],
        dir.path(),
        &[("PGHA_INVENTORY", ex.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("from PGHA_INVENTORY"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc["hosts"].as_array().is_some_and(|h| !h.is_empty()),
        "{doc}"
    );

    std::fs::copy(&ex, dir.path().join("inventory.yml")).unwrap();
    let (code, _, stderr) = pgha(&["inventory"], dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("using inventory inventory.yml (found in the current directory)"),
        "{stderr}"
    );
}

#[test]
fn completions_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef pgha"),
        ("fish", "complete -c pgha"),
    ] {
        let (code, out, _) = pgha(&["completions", shell], dir.path(), &[]);
        assert_eq!(code, 0, "{shell}");
        assert!(
            out.contains(marker),
            "{shell} script: {}",
            &out[..out.len().min(200)]
        );
        for sub in ["deploy", "status", "switchover", "upgrade", "rebuild"] {
            assert!(out.contains(sub), "{shell} completes {sub}");
        }
    }
}

#[test]
fn a_switchover_to_a_host_outside_the_inventory_is_refused_before_any_contact() {
    let dir = tempfile::tempdir().unwrap();
    // The example's addresses are documentation addresses: nothing is contacted,
    // because the option is checked first.
    let inv = dir.path().join("inventory.yml");
    std::fs::copy(example(), &inv).unwrap();
    std::fs::write(
        dir.path().join("inventory.secrets.yml"),
        "superuser_password: a\nreplication_password: b\nrewind_password: c\nmonitor_password: d\napp_password: e\npatroni_api_password: f\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(dir.path().join("inventory.secrets.yml"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(dir.path().join("inventory.secrets.yml"), perms).unwrap();
    let (code, _, stderr) = pgha(&["switchover", "--to", "db9"], dir.path(), &[]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("db9") && stderr.contains("not a db host"),
        "{stderr}"
    );
    let (code, _, stderr) = pgha(&["rebuild", "db9"], dir.path(), &[]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("db9: not a host of the inventory"),
        "{stderr}"
    );
}

#[test]
fn remove_refuses_a_host_the_inventory_still_lists_before_contacting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example();
    // The example's hosts are on addresses nothing answers on: a refusal that
    // contacted them would fail with exit 3 instead.
    let (code, _, stderr) = pgha(
        &["remove", "db2", ex.to_str().unwrap(), "--yes"],
        dir.path(),
        &[],
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("db2 is still a db host of")
            && stderr.contains("delete it from the inventory first"),
        "{stderr}"
    );
}
