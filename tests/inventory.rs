//! Inventory corpus: every file in tests/inventories/bad must fail to load with
//! exit code 4 and the message its header announces; every file in
//! tests/inventories/good and the examples in inventory/ must load.
//!
//! Header of a bad file:
//!   # expect: <substring of the error message>
//!   # line: <N>          (optional: the message must contain `<file name>:<N>`)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgha::error::{Exit, Failure};
use pgha::inventory::{self, Inventory, InventoryError, LoadOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    files
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(&format!("# {key}:"))
                .map(|v| v.trim().to_string())
        })
}

fn load(p: &Path) -> Result<Inventory, InventoryError> {
    inventory::load(p, &LoadOptions::default())
}

#[test]
fn bad_corpus_fails_with_the_announced_error() {
    let files = yml_files(&root().join("tests/inventories/bad"));
    assert!(files.len() >= 40, "corpus too small: {}", files.len());
    let mut problems = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(path).unwrap();
        let expect = header(&text, "expect")
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: <substring>`"));
        assert!(
            text.starts_with("# expect:"),
            "{name}: `# expect:` must be the first line"
        );
        match load(path) {
            Ok(_) => problems.push(format!(
                "{name}: loaded, expected an error containing {expect:?}"
            )),
            Err(e) => {
                let failure: Failure = e.clone().into();
                if failure.exit != Exit::Inventory || failure.exit as i32 != 4 {
                    problems.push(format!("{name}: exit {:?}, expected 4", failure.exit));
                }
                let msg = e.to_string();
                if !msg.contains(&expect) {
                    problems.push(format!("{name}: message lacks {expect:?}:\n{msg}"));
                }
                if let Some(line) = header(&text, "line") {
                    let at = format!("{name}:{line}");
                    if !msg.contains(&at) {
                        problems.push(format!("{name}: message lacks {at:?}:\n{msg}"));
                    }
                }
                if failure.message != msg {
                    problems.push(format!(
                        "{name}: Failure message differs from the error's Display"
                    ));
                }
            }
        }
    }
    // Loading (without write_secrets) created no file in the corpus.
    let leftovers: Vec<_> = fs::read_dir(root().join("tests/inventories/bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".yml") || n.contains(".secrets."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "files created in the corpus: {leftovers:?}"
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn missing_file_is_an_inventory_error() {
    let e = load(Path::new("tests/inventories/no-such-inventory.yml")).unwrap_err();
    let f: Failure = e.into();
    assert_eq!(f.exit, Exit::Inventory);
    assert!(
        f.message
            .contains("no-such-inventory.yml: the inventory file does not exist"),
        "{}",
        f.message
    );
}

#[test]
fn several_problems_are_reported_together() {
    let e = load(&root().join("tests/inventories/multiple-errors.yml")).unwrap_err();
    let msg = e.to_string();
    assert!(e.errors.len() >= 4, "{msg}");
    assert!(msg.contains("problems in inventory"), "{msg}");
    for want in [
        "multiple-errors.yml:5:5: unknown variable `postgresql_verison`",
        "multiple-errors.yml:6:5: `postgresql_port`: port 70000",
        "multiple-errors.yml:7:5: `client_cidrs`",
        "group `router` is missing",
    ] {
        assert!(msg.contains(want), "lacks {want:?}:\n{msg}");
    }
}

#[test]
fn good_corpus_loads() {
    for path in yml_files(&root().join("tests/inventories/good")) {
        if path.to_string_lossy().contains(".secrets.") {
            continue;
        }
        if let Err(e) = load(&path) {
            panic!("{}: {e}", path.display());
        }
    }
}

/// Copy an example into a temp dir (with the dummy key file it names) and load it.
fn load_example(name: &str) -> (tempfile::TempDir, Inventory) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(name);
    fs::copy(root().join("inventory").join(name), &dest).unwrap();
    fs::create_dir_all(dir.path().join("keys")).unwrap();
    fs::write(dir.path().join("keys/deploy_ed25519"), "dummy key\n").unwrap();
    let inv = load(&dest).unwrap_or_else(|e| panic!("{name}: {e}"));
    (dir, inv)
}

#[test]
fn example_inventory_loads() {
    let (_d, inv) = load_example("example.yml");
    assert_eq!(inv.db_hosts().len(), 3);
    assert_eq!(inv.router_hosts().len(), 1);
    assert_eq!(inv.db_hosts()[0].name, "db1");
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    // The plain example also loads in place (it names no key file).
    load(&root().join("inventory/example.yml")).unwrap();
}

#[test]
fn ansible_style_inventory_loads() {
    let (d, inv) = load_example("ansible-style.yml");
    let names: Vec<_> = inv.db_hosts().iter().map(|h| h.name.clone()).collect();
    assert_eq!(names, ["pg-a", "pg-b", "pg-c"]);
    assert_eq!(inv.router_hosts()[0].name, "lb-a");
    let c = inv.host("pg-c").unwrap();
    assert_eq!(
        (c.ssh.user.as_str(), c.ssh.port, c.ssh.become_),
        ("deploy", 2222, true)
    );
    assert_eq!(
        c.ssh.key_file.as_deref(),
        Some(d.path().join("keys/deploy_ed25519").as_path())
    );
    assert_eq!(inv.cluster.cluster_name, "orders");
    assert_eq!(inv.cluster.postgresql_parameters["max_connections"], 300);
    assert!(inv.host("grafana").is_none());
    // Other playbooks' variables and hosts: warnings, not errors.
    let w: Vec<_> = inv.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        w.iter()
            .any(|m| m.contains("`timezone` ignored: not a pgha setting")),
        "{w:?}"
    );
    assert!(w.iter().any(|m| m.contains("host `grafana`")), "{w:?}");
}

fn pgha(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .env_remove("PGHA_LOG")
        .output()
        .expect("run pgha")
}

#[test]
fn binary_exits_4_on_a_bad_inventory() {
    let bad = root().join("tests/inventories/bad/did_you_mean.yml");
    let out = pgha(&["inventory", "-i", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did_you_mean.yml:6:5"), "{stderr}");
    assert!(
        stderr.contains("did you mean `postgresql_version`?"),
        "{stderr}"
    );
    // JSON mode: a JSON error document on stdout, same exit code.
    let out = pgha(&["inventory", "-i", bad.to_str().unwrap(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(4));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"][0]["line"], 6);
}

#[test]
fn binary_json_output_has_no_passwords_and_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("prod.yml");
    fs::copy(root().join("tests/inventories/good/with-secrets.yml"), &inv).unwrap();
    fs::write(
        dir.path().join("replication.pw"),
        "Repl1cation-Secret-From-File\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("prod.secrets.yml"),
        "monitor_password: Monitor-Secret-From-Store\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        dir.path().join("prod.secrets.yml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let out = pgha(&["--output", "json", "inventory", "-i", inv.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for secret in [
        "Inline-Superuser-Secret",
        "Repl1cation-Secret-From-File",
        "Monitor-Secret-From-Store",
        "Hidden-Ssh-Pass",
    ] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["hosts"].as_array().unwrap().len(), 4);
    assert_eq!(doc["hosts"][0]["name"], "db1");
    assert_eq!(doc["hosts"][0]["ip"], "10.0.0.11");
    assert_eq!(doc["cluster"]["postgresql_port"], 5432);
    let s = &doc["secrets"];
    assert_eq!(s["superuser_password"]["value"], "<redacted>");
    assert_eq!(s["superuser_password"]["source"]["kind"], "inventory");
    assert_eq!(s["replication_password"]["source"]["kind"], "file");
    assert_eq!(s["monitor_password"]["source"]["kind"], "secrets_file");
    assert_eq!(s["app_password"]["source"]["kind"], "pending");
    assert_eq!(doc["hosts"][0]["vars"]["superuser_password"], "<redacted>");
    assert_eq!(doc["hosts"][0]["vars"]["ansible_ssh_pass"], "<redacted>");

    // Text output: no secrets either, and the pending one is announced.
    let out = pgha(&["inventory", "-i", inv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("Inline-Superuser-Secret"), "{text}");
    assert!(text.contains("<generated on first deploy>"), "{text}");

    // Printing created nothing and left the secrets file as it was.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["prod.secrets.yml", "prod.yml", "replication.pw"]);
    assert_eq!(
        fs::read_to_string(dir.path().join("prod.secrets.yml")).unwrap(),
        "monitor_password: Monitor-Secret-From-Store\n"
    );
}

#[test]
fn deploy_style_load_writes_the_secrets_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("site.yml");
    fs::copy(root().join("inventory/example.yml"), &inv).unwrap();
    let opts = LoadOptions {
        write_secrets: true,
    };
    let a = inventory::load(&inv, &opts).unwrap();
    let store = dir.path().join("site.secrets.yml");
    assert_eq!(a.secrets_path, store);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let b = inventory::load(&inv, &opts).unwrap();
    assert_eq!(
        a.secrets.app_password.expose(),
        b.secrets.app_password.expose()
    );
    assert_eq!(a.secrets.superuser_password.expose().len(), 32);
    // A failing inventory never writes secrets.
    let bad = dir.path().join("bad.yml");
    fs::copy(root().join("tests/inventories/bad/sync_count.yml"), &bad).unwrap();
    assert!(inventory::load(&bad, &opts).is_err());
    assert!(!dir.path().join("bad.secrets.yml").exists());
}
