//! Unit tests of `load`: precedence, defaults, secrets, redaction, validation.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

const BASE: &str = "\
all:
  vars:
    cluster_name: demo
  children:
    db:
      hosts:
        db1: {ansible_host: 10.0.0.11}
        db2: {ansible_host: 10.0.0.12}
        db3: {ansible_host: 10.0.0.13}
    router:
      hosts:
        router1: {ansible_host: 10.0.0.21}
    backup:
      hosts:
        router1:
";

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, text).unwrap();
        p
    }
    fn load(&self, text: &str) -> Result<Inventory, InventoryError> {
        let p = self.write("inv.yml", text);
        load(&p, &LoadOptions::default())
    }
}

fn err_text(r: Result<Inventory, InventoryError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults() {
    let d = Dir::new();
    let inv = d.load(BASE).unwrap();
    let c = &inv.cluster;
    assert_eq!(c.cluster_name, "demo");
    assert_eq!(c.postgresql_version, 17);
    assert_eq!(c.postgresql_port, 5432);
    assert_eq!(c.postgresql_data_dir, "/var/lib/postgresql/17/main");
    assert_eq!(
        (c.patroni_ttl, c.patroni_loop_wait, c.patroni_retry_timeout),
        (20, 2, 8)
    );
    assert_eq!(
        (
            c.haproxy_write_port,
            c.haproxy_read_port,
            c.haproxy_stats_port
        ),
        (5000, 5001, 8404)
    );
    assert!(c.synchronous_mode && !c.synchronous_mode_strict);
    assert_eq!(c.install_method, InstallMethod::Native);
    let h = inv.host("db1").unwrap();
    assert_eq!(h.ssh.port, 22);
    assert_eq!(h.ssh.user, "root");
    assert!(!h.ssh.become_);
    assert_eq!(h.ssh.key_file, None);
    assert_eq!(h.ip.to_string(), "10.0.0.11");
    assert_eq!(inv.db_hosts().len(), 3);
    assert_eq!(inv.router_hosts().len(), 1);
    assert_eq!(
        inv.etcd_hosts()
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>(),
        ["db1", "db2", "db3"]
    );
    assert_eq!(inv.known_hosts, None);
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
}

#[test]
fn data_dir_follows_version() {
    let d = Dir::new();
    let text = BASE.replace("cluster_name: demo", "postgresql_version: 16");
    let inv = d.load(&text).unwrap();
    assert_eq!(
        inv.cluster.postgresql_data_dir,
        "/var/lib/postgresql/16/main"
    );
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.message.contains("Debian 13 ships only PostgreSQL 17"))
    );
}

#[test]
fn precedence_all_group_child_host() {
    let d = Dir::new();
    let text = "\
all:
  vars:
    ansible_user: a
    ssh_port: 1
    ansible_become: false
  children:
    cluster:
      vars:
        ansible_user: b
        ssh_port: 2
      children:
        db:
          vars:
            ansible_user: c
          hosts:
            db1: {ansible_host: 10.0.0.11, ansible_user: d}
            db2: {ansible_host: 10.0.0.12}
            db3: {ansible_host: 10.0.0.13}
        router:
          hosts:
            router1: {ansible_host: 10.0.0.21}
        backup:
          hosts:
            router1:
";
    let inv = d.load(text).unwrap();
    let u = |h: &str| inv.host(h).unwrap().ssh.user.clone();
    assert_eq!(u("db1"), "d"); // host vars beat group vars
    assert_eq!(u("db2"), "c"); // child group beats parent group
    assert_eq!(u("router1"), "b"); // parent group beats all
    assert_eq!(inv.host("db2").unwrap().ssh.port, 2);
    assert!(!inv.host("db2").unwrap().ssh.become_);
    assert_eq!(inv.host("db1").unwrap().groups, ["cluster", "db"]);
    // Effective raw vars are kept, with precedence applied.
    assert_eq!(inv.host("db1").unwrap().vars["ansible_user"], "d");
    assert_eq!(inv.host("db2").unwrap().vars["ssh_port"], 2);
}

#[test]
fn become_defaults_to_true_for_non_root() {
    let d = Dir::new();
    let text = BASE.replace("cluster_name: demo", "ansible_user: deploy");
    let inv = d.load(&text).unwrap();
    assert!(inv.host("db1").unwrap().ssh.become_);
    let text = BASE.replace("cluster_name: demo", "ansible_user: deploy\n    become: no");
    let inv = d.load(&text).unwrap();
    assert!(!inv.host("db1").unwrap().ssh.become_);
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.message.contains("become is off"))
    );
}

#[test]
fn host_in_several_groups_and_order() {
    let d = Dir::new();
    let text = "\
all:
  children:
    db:
      hosts:
        db2: {ansible_host: 10.0.0.12}
        db1: {ansible_host: 10.0.0.11}
        db3:
    etcd:
      hosts:
        db1:
        db2:
        db3:
    router:
      hosts:
        router1: {ansible_host: 10.0.0.21}
    backup:
      hosts:
        router1:
    db_east:
      hosts:
        db3: {ansible_host: 10.0.0.13}
";
    let inv = d.load(text).unwrap();
    let names: Vec<_> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["db2", "db1", "db3", "router1"]);
    assert_eq!(inv.db_hosts()[0].name, "db2"); // first db host bootstraps
    assert_eq!(inv.host("db3").unwrap().ip.to_string(), "10.0.0.13");
    assert_eq!(inv.host("db3").unwrap().groups, ["db", "etcd", "db_east"]);
    assert_eq!(inv.groups["etcd"], ["db2", "db1", "db3"]);
}

#[test]
fn unmanaged_hosts_are_ignored_with_a_warning() {
    let d = Dir::new();
    let text = format!(
        "{BASE}    monitoring:\n      hosts:\n        grafana1: {{ansible_host: not-resolvable.invalid}}\n"
    );
    let inv = d.load(&text).unwrap();
    assert!(inv.host("grafana1").is_none());
    assert!(inv.warnings.iter().any(|w| w.message.contains("grafana1")));
}

#[test]
fn did_you_mean_is_an_error_unknown_is_a_warning() {
    let d = Dir::new();
    let text = BASE.replace(
        "cluster_name: demo",
        "postgres_version: 16\n    ntp_servers: [a]",
    );
    let e = err_text(d.load(&text));
    assert!(e.contains("inv.yml:3:5"), "{e}");
    assert!(e.contains("did you mean `postgresql_version`?"), "{e}");
    let text = BASE.replace("cluster_name: demo", "ntp_servers: [a]");
    let inv = d.load(&text).unwrap();
    assert!(inv.warnings[0].message.contains("inv.yml:3"));
    assert!(
        inv.warnings[0]
            .message
            .contains("ignored: not a pgha setting")
    );
}

#[test]
fn all_errors_are_reported_together() {
    let d = Dir::new();
    let text = BASE
        .replace(
            "cluster_name: demo",
            "postgresql_port: 0\n    patroni_rest_port: abc",
        )
        .replace(
            "db3: {ansible_host: 10.0.0.13}",
            "db3: {ansible_host: 10.0.0.12}",
        );
    let e = d.load(&text).unwrap_err();
    assert_eq!(e.errors.len(), 3, "{e}");
    let s = e.to_string();
    assert!(s.starts_with("3 problems in inventory"), "{s}");
    assert!(s.contains("inv.yml:3:5: `postgresql_port`: port 0"), "{s}");
    assert!(
        s.contains("inv.yml:4:5: `patroni_rest_port`: expected a whole number"),
        "{s}"
    );
    assert!(s.contains("same address 10.0.0.12"), "{s}");
}

#[test]
fn cluster_vars_need_one_value() {
    let d = Dir::new();
    let text = BASE.replace(
        "    db:\n      hosts:",
        "    db:\n      vars:\n        postgresql_port: 6432\n      hosts:",
    );
    let e = err_text(d.load(&text));
    assert!(e.contains("`postgresql_port` must have one value"), "{e}");
    assert!(e.contains("db1 gets 6432"), "{e}");
    assert!(e.contains("router1 gets the default"), "{e}");
    assert!(e.contains("all: vars:"), "{e}");
    assert!(e.contains("inv.yml:7:"), "{e}");
    // The same value everywhere is fine even when set per group.
    let text = BASE
        .replace(
            "    db:\n      hosts:",
            "    db:\n      vars:\n        postgresql_port: 6432\n      hosts:",
        )
        .replace(
            "    router:\n      hosts:",
            "    router:\n      vars:\n        postgresql_port: 6432\n      hosts:",
        );
    assert_eq!(d.load(&text).unwrap().cluster.postgresql_port, 6432);
}

#[test]
fn known_hosts_relative_to_inventory() {
    let d = Dir::new();
    let text = BASE.replace("cluster_name: demo", "pgha_known_hosts: lab/known_hosts");
    let inv = d.load(&text).unwrap();
    assert_eq!(inv.known_hosts, Some(d.dir.path().join("lab/known_hosts")));
}

#[test]
fn key_files_relative_and_checked() {
    let d = Dir::new();
    d.write("id_test", "KEY");
    let text = BASE.replace(
        "cluster_name: demo",
        "ansible_ssh_private_key_file: id_test",
    );
    let inv = d.load(&text).unwrap();
    assert_eq!(
        inv.host("db2").unwrap().ssh.key_file,
        Some(d.dir.path().join("id_test"))
    );
    let text = BASE.replace(
        "cluster_name: demo",
        "ansible_ssh_private_key_file: missing_key",
    );
    let e = err_text(d.load(&text));
    assert!(e.contains("cannot read private key file"), "{e}");
    assert!(e.contains("hosts `db1`, `db2`, `db3`, `router1`"), "{e}");
    assert!(e.contains("inv.yml:3:5"), "{e}");
}

#[test]
fn secrets_pending_without_write() {
    let d = Dir::new();
    let inv = d.load(BASE).unwrap();
    assert!(!inv.secrets_path.exists());
    assert_eq!(inv.secrets_path, d.dir.path().join("inv.secrets.yml"));
    assert!(matches!(
        inv.secret_sources["app_password"],
        SecretSource::Pending { .. }
    ));
    assert_eq!(inv.secrets.app_password.expose().len(), 32);
}

#[test]
fn secrets_generated_once_with_mode_0600_and_reused() {
    let d = Dir::new();
    let p = d.write("inv.yml", BASE);
    let opts = LoadOptions {
        write_secrets: true,
    };
    let a = load(&p, &opts).unwrap();
    let store = d.dir.path().join("inv.secrets.yml");
    assert_eq!(
        fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(matches!(
        a.secret_sources["superuser_password"],
        SecretSource::SecretsFile { .. }
    ));
    let b = load(&p, &opts).unwrap();
    let c = load(&p, &LoadOptions::default()).unwrap();
    for (x, y) in a.secrets.all().iter().zip(b.secrets.all()) {
        assert_eq!(x.expose(), y.expose());
    }
    assert_eq!(
        a.secrets.app_password.expose(),
        c.secrets.app_password.expose()
    );
    // All nine generated ones differ from each other; the S3 keys (the user's
    // own) are never generated.
    let mut values: Vec<_> = a
        .secrets
        .all()
        .iter()
        .map(|s| s.expose().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 9);
    assert!(a.secrets.backup_s3_key.expose().is_empty());
    // Nothing else was created (no temp files): the inventory and the secrets file.
    // Loading an inventory reads and makes no certificates (a run does, later).
    let mut names: Vec<String> = fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".pki")), "{names:?}");
}

/// A secrets file written before `haproxy_stats_password` existed: day-2 commands
/// still run (the routers' stats page has no password until the next deploy), and a
/// deploy adds it to the file, keeping the others and mode 0600.
#[test]
fn a_secrets_file_without_the_stats_password_gets_it_added() {
    let d = Dir::new();
    let p = d.write("inv.yml", BASE);
    let old: String = SECRET_NAMES
        .iter()
        .filter(|n| **n != "haproxy_stats_password")
        .map(|n| format!("{n}: old-{n}\n"))
        .collect();
    let store = d.write("inv.secrets.yml", &old);
    fs::set_permissions(&store, fs::Permissions::from_mode(0o600)).unwrap();
    let mut day2 = load(&p, &LoadOptions::default()).unwrap();
    day2.cluster.tls = false; // no certificates in this test
    assert!(matches!(
        day2.secret_sources["haproxy_stats_password"],
        SecretSource::Pending { .. }
    ));
    assert_eq!(day2.require_secrets(), Ok(()));
    assert_eq!(
        fs::read_to_string(&store).unwrap(),
        old,
        "a day-2 load writes nothing"
    );
    let inv = load(
        &p,
        &LoadOptions {
            write_secrets: true,
        },
    )
    .unwrap();
    let added = inv.secrets.haproxy_stats_password.expose().to_string();
    assert_eq!(added.len(), 32);
    let text = fs::read_to_string(&store).unwrap();
    assert!(
        text.contains(&format!("haproxy_stats_password: {added}")),
        "added"
    );
    assert!(
        text.contains("superuser_password: old-superuser_password"),
        "kept"
    );
    assert_eq!(
        inv.secrets.superuser_password.expose(),
        "old-superuser_password"
    );
    assert_eq!(
        fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Any other secret missing still stops a day-2 command.
    d.write("inv.secrets.yml", "superuser_password: x\n");
    let mut partial = load(&p, &LoadOptions::default()).unwrap();
    partial.cluster.tls = false;
    let e = partial.require_secrets().unwrap_err();
    assert!(
        e.contains("replication_password") && !e.contains("haproxy_stats"),
        "{e}"
    );
}

#[test]
fn secrets_file_with_loose_mode_is_tightened() {
    let d = Dir::new();
    let p = d.write("inv.yml", BASE);
    let store = d.write("inv.secrets.yml", "app_password: fromstore123\n");
    fs::set_permissions(&store, fs::Permissions::from_mode(0o644)).unwrap();
    let inv = load(
        &p,
        &LoadOptions {
            write_secrets: true,
        },
    )
    .unwrap();
    assert_eq!(
        fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.message.contains("readable by others"))
    );
    assert_eq!(inv.secrets.app_password.expose(), "fromstore123");
    // The other four were added, the existing one kept.
    let text = fs::read_to_string(&store).unwrap();
    assert!(text.contains("app_password: fromstore123"));
    assert!(text.contains("superuser_password:"));
}

#[test]
fn secrets_inline_and_from_files() {
    let d = Dir::new();
    d.write("su.txt", "  s3cret-from-file\n");
    let text = BASE.replace(
        "cluster_name: demo",
        "superuser_password_file: su.txt\n    app_password: inline-app-pw",
    );
    let inv = d.load(&text).unwrap();
    assert_eq!(inv.secrets.superuser_password.expose(), "s3cret-from-file");
    assert_eq!(inv.secrets.app_password.expose(), "inline-app-pw");
    assert_eq!(inv.secret_sources["app_password"], SecretSource::Inventory);
    assert_eq!(
        inv.secret_sources["superuser_password"],
        SecretSource::File {
            path: d.dir.path().join("su.txt")
        }
    );
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.message.contains("app_password_file"))
    );
    // Redaction: not in Debug, not in vars, not in either output.
    assert!(!format!("{inv:?}").contains("inline-app-pw"));
    assert_eq!(inv.host("db1").unwrap().vars["app_password"], "<redacted>");
    let t = print::text(&inv);
    let j = print::json(&inv);
    for out in [&t, &j] {
        assert!(!out.contains("inline-app-pw"), "{out}");
        assert!(!out.contains("s3cret-from-file"), "{out}");
    }
    assert!(t.contains("<redacted>  inventory"), "{t}");
    let doc: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(
        doc["secrets"]["app_password"]["source"]["kind"],
        "inventory"
    );
    assert_eq!(doc["cluster"]["cluster_name"], "pgha");
    // Both forms at once is an error; an unreadable file names its path.
    let text = BASE.replace(
        "cluster_name: demo",
        "app_password: x1234567\n    app_password_file: nope.txt",
    );
    let e = err_text(d.load(&text));
    assert!(e.contains("are both set"), "{e}");
    let text = BASE.replace("cluster_name: demo", "app_password_file: nope.txt");
    let e = err_text(d.load(&text));
    assert!(e.contains("nope.txt"), "{e}");
}

#[test]
fn errors_never_contain_secret_values() {
    let d = Dir::new();
    let text = BASE
        .replace("cluster_name: demo", "superuser_password: 123456789")
        .replace(
            "    db:\n      hosts:",
            "    db:\n      vars:\n        app_password: groupsecret1\n      hosts:",
        );
    let e = err_text(d.load(&text));
    assert!(e.contains("put it in quotes"), "{e}");
    assert!(!e.contains("123456789"), "{e}");
    assert!(!e.contains("groupsecret1"), "{e}");
    assert!(e.contains("`app_password` must have one value"), "{e}");
}

#[test]
fn yaml_syntax_and_duplicates() {
    let d = Dir::new();
    let e = err_text(d.load("all:\n  vars:\n    a: [1, 2\n"));
    assert!(e.contains("YAML syntax error"), "{e}");
    assert!(e.contains("inv.yml:4:1"), "{e}");
    let e = err_text(d.load("all:\n  vars:\n    cluster_name: a\n    x: 1\n    cluster_name: b\n"));
    assert!(e.contains("inv.yml:5:5"), "{e}");
    assert!(
        e.contains("`cluster_name` appears twice in `all.vars`"),
        "{e}"
    );
}

#[test]
fn yaml_anchors_and_merge_keys() {
    let d = Dir::new();
    let text = "\
all:
  children:
    db:
      hosts:
        db1: &common {ansible_host: 10.0.0.11, ansible_user: deploy}
        db2: {<<: *common, ansible_host: 10.0.0.12}
        db3: {<<: *common, ansible_host: 10.0.0.13}
    router:
      hosts:
        router1: {ansible_host: 10.0.0.21}
    backup:
      hosts:
        router1:
";
    let inv = d.load(text).unwrap();
    assert_eq!(inv.host("db3").unwrap().ssh.user, "deploy");
    assert_eq!(inv.host("db3").unwrap().ip.to_string(), "10.0.0.13");
}

#[test]
fn alias_conflict_at_one_level() {
    let d = Dir::new();
    let text = BASE.replace(
        "db1: {ansible_host: 10.0.0.11}",
        "db1: {ansible_host: 10.0.0.11, address: 10.0.0.99}",
    );
    let e = err_text(d.load(&text));
    assert!(
        e.contains("`ansible_host` and `address` are both set"),
        "{e}"
    );
}

#[test]
fn group_cycles_are_reported() {
    let d = Dir::new();
    let text =
        format!("{BASE}    a:\n      children:\n        b:\n          children:\n            a:\n");
    let e = err_text(d.load(&text));
    assert!(e.contains("its own ancestor"), "{e}");
}

#[test]
fn default_cluster_matches_documented_defaults() {
    let c = Cluster::default();
    assert_eq!(c.patroni_maximum_lag_on_failover, 1_048_576);
    assert_eq!(c.apt_cache_valid_time, 86_400);
    assert_eq!(c.monitor_user, "pgha_monitor");
    assert!(!c.allow_router_on_db);
}

#[test]
fn readme_documents_every_variable() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- BEGIN inventory-reference -->").unwrap();
    let end = readme.find("<!-- END inventory-reference -->").unwrap();
    let section = &readme[start..end];
    for k in vars::KEYS {
        assert!(
            section.contains(&format!("`{}`", k.name)),
            "README lacks `{}`",
            k.name
        );
    }
}

#[test]
fn backups_default_on_with_the_documented_settings() {
    let d = Dir::new();
    let inv = d.load(BASE).unwrap();
    let c = &inv.cluster;
    assert!(c.backup_enabled && c.backup_encryption && c.backup_archive_async);
    assert_eq!(inv.backup_host().map(|h| h.name.as_str()), Some("router1"));
    assert_eq!(c.stanza(), "demo");
    assert_eq!(
        (
            c.backup_retention_full,
            c.backup_port,
            c.backup_max_age_hours
        ),
        (2, 8432, 26)
    );
    assert_eq!(c.backup_compress_type, "zst");
    // The longest gap of the schedules bounds the newest backup's age.
    let weekly = BASE.replace(
        "    cluster_name: demo\n",
        "    cluster_name: demo\n    backup_schedule_diff: \"\"\n",
    );
    assert_eq!(
        d.load(&weekly).unwrap().cluster.backup_max_age_hours,
        7 * 24 + 2
    );
    let set = BASE.replace(
        "    cluster_name: demo\n",
        "    cluster_name: demo\n    backup_max_age_hours: 50\n",
    );
    assert_eq!(d.load(&set).unwrap().cluster.backup_max_age_hours, 50);
}

#[test]
fn backup_rules() {
    let d = Dir::new();
    let off = BASE
        .replace("    backup:\n      hosts:\n        router1:\n", "")
        .replace(
            "    cluster_name: demo\n",
            "    cluster_name: demo\n    backup_enabled: false\n",
        );
    let inv = d.load(&off).unwrap();
    assert!(inv.backup_host().is_none());
    let on_db = BASE.replace(
        "    backup:\n      hosts:\n        router1:\n",
        "    backup:\n      hosts:\n        db3:\n",
    );
    let inv = d.load(&on_db).unwrap();
    assert!(
        inv.warnings.iter().any(|w| w
            .message
            .contains("a repository on a cluster member is not a backup")),
        "{:?}",
        inv.warnings
    );
    let docker = BASE.replace(
        "    cluster_name: demo\n",
        "    cluster_name: demo\n    install_method: docker\n",
    );
    // Backups under docker: pgBackRest comes in the image.
    assert!(d.load(&docker).is_ok());
    let clash = BASE.replace(
        "    cluster_name: demo\n",
        "    cluster_name: demo\n    backup_port: 5432\n",
    );
    let e = d.load(&clash).unwrap_err().to_string();
    assert!(
        e.contains("`postgresql_port` and `backup_port` are both 5432"),
        "{e}"
    );
}

#[test]
fn users_and_databases_are_read_with_their_passwords_in_the_secrets_file() {
    let d = Dir::new();
    d.write("etl.pw", "etl-secret\n");
    let text = BASE.replace(
        "cluster_name: demo",
        "cluster_name: demo
    postgresql_users:
      - name: reporting
        attributes: [createdb, CreateRole]
        member_of: [pg_read_all_data]
        cidrs: [10.20.0.0/16]
      - {name: readers, login: false}
      - {name: etl, password_file: etl.pw}
      - {name: legacy, flags: \"NOLOGIN,SUPERUSER\", password: inline-pw}
      - {name: gone, state: absent}
    postgresql_databases:
      - name: reports
        owner: reporting
        extensions: [pg_trgm, {name: vector}, {name: hstore, state: absent}]
      - {db: old, lc_collate: C.UTF-8, lc_ctype: C.UTF-8, encoding: utf-8}",
    );
    let p = d.write("inv.yml", &text);
    let inv = load(
        &p,
        &LoadOptions {
            write_secrets: true,
        },
    )
    .unwrap();
    let c = &inv.cluster;
    let u = &c.postgresql_users;
    assert_eq!(u.len(), 5);
    assert_eq!(u[0].attributes, ["createdb", "createrole"]);
    assert_eq!(u[0].member_of, ["pg_read_all_data"]);
    assert_eq!(u[0].cidrs, ["10.20.0.0/16"]);
    assert!(u[0].login && !u[1].login && u[4].absent);
    assert!(!u[3].login && u[3].attributes == ["superuser"]);
    let db = &c.postgresql_databases;
    assert_eq!(db[0].owner.as_deref(), Some("reporting"));
    assert_eq!(db[0].extensions.len(), 3);
    assert!(db[0].extensions[2].absent);
    assert_eq!(db[1].name, "old");
    assert_eq!(db[1].locale.as_deref(), Some("C.UTF-8"));
    assert_eq!(db[1].encoding.as_deref(), Some("UTF8"));
    // Passwords: generated and stored, from the file, inline; none for a group role.
    let s = &inv.secrets.users;
    assert_eq!(s["reporting"].expose().len(), secrets::GENERATED_LEN);
    assert_eq!(s["etl"].expose(), "etl-secret");
    assert_eq!(s["legacy"].expose(), "inline-pw");
    assert!(!s.contains_key("readers") && !s.contains_key("gone"));
    let store = fs::read_to_string(secrets_path(&p)).unwrap();
    assert!(store.contains(&format!("user.reporting: {}", s["reporting"].expose())));
    // The same password on the next load; pgvector's package on the db hosts.
    let again = load(&p, &LoadOptions::default()).unwrap();
    assert_eq!(
        again.secrets.users["reporting"].expose(),
        s["reporting"].expose()
    );
    assert_eq!(objects::extension_packages(c), ["postgresql-17-pgvector"]);
    for printed in [print::text(&inv), print::json(&inv)] {
        assert!(!printed.contains("inline-pw"), "{printed}");
        assert!(!printed.contains("etl-secret"), "{printed}");
    }
}

#[test]
fn users_and_databases_errors_name_the_line_and_key() {
    let d = Dir::new();
    let case = |vars: &str| err_text(d.load(&BASE.replace("cluster_name: demo", vars)));
    let e = case("postgresql_users:\n      - {name: r1, attributes: [flying]}");
    assert!(
        e.contains("inv.yml:4") && e.contains("flying") && e.contains("createdb"),
        "{e}"
    );
    let e = case("postgresql_users:\n      - {name: r1}\n      - {name: r1}");
    assert!(e.contains("inv.yml:5") && e.contains("listed twice"), "{e}");
    let e = case("postgresql_users:\n      - {name: app}");
    assert!(e.contains("pgha's own (app_user)"), "{e}");
    let e = case("postgresql_users:\n      - {name: r1, colour: red}");
    assert!(e.contains("unknown key `colour`"), "{e}");
    let e = case(
        "postgresql_users:\n      - {name: old, state: absent}\n    postgresql_databases:\n      - {name: d1, owner: old}",
    );
    assert!(
        e.contains("inv.yml:6") && e.contains("marked absent"),
        "{e}"
    );
    let e = case("postgresql_databases:\n      - {name: d1, extensions: [pg_stat_statements]}");
    assert!(e.contains("shared_preload_libraries"), "{e}");
    // Loaded by shared_preload_libraries: accepted.
    let ok = d.load(&BASE.replace(
        "cluster_name: demo",
        "postgresql_parameters: {shared_preload_libraries: pg_stat_statements}\n    postgresql_databases:\n      - {name: d1, extensions: [pg_stat_statements]}",
    ));
    assert!(
        ok.is_ok(),
        "{}",
        ok.err().map(|e| e.to_string()).unwrap_or_default()
    );
    let e = case("postgresql_databases:\n      - {name: d1, lc_collate: C, lc_ctype: en_US.UTF-8}");
    assert!(e.contains("lc_collate and lc_ctype differ"), "{e}");
    let e = case(
        "install_method: docker\n    postgresql_databases:\n      - {name: d1, extensions: [postgis]}",
    );
    assert!(
        e.contains("postgresql-17-postgis-3") && e.contains("docker_image_postgres"),
        "{e}"
    );
}

#[test]
fn etcd_stays_odd_as_db_hosts_are_added() {
    let d = Dir::new();
    let names = |inv: &Inventory| -> Vec<String> {
        inv.etcd_hosts().iter().map(|h| h.name.clone()).collect()
    };
    let four = BASE.replace(
        "        db3: {ansible_host: 10.0.0.13}\n",
        "        db3: {ansible_host: 10.0.0.13}\n        db4: {ansible_host: 10.0.0.14}\n",
    );
    let inv = d.load(&four).unwrap();
    assert_eq!(inv.db_hosts().len(), 4);
    assert_eq!(names(&inv), ["db1", "db2", "db3"]);
    let six = four.replace(
        "        db4: {ansible_host: 10.0.0.14}\n",
        "        db4: {ansible_host: 10.0.0.14}\n        db5: {ansible_host: 10.0.0.15}\n        db6: {ansible_host: 10.0.0.16}\n",
    );
    let inv = d.load(&six).unwrap();
    assert_eq!(names(&inv), ["db1", "db2", "db3", "db4", "db5"]);
    // An `etcd` group chooses them; an even count is refused.
    let chosen =
        format!("{four}    etcd:\n      hosts:\n        db2:\n        db3:\n        db4:\n");
    let inv = d.load(&chosen).unwrap();
    assert_eq!(names(&inv), ["db2", "db3", "db4"]);
    let even = format!("{four}    etcd:\n      hosts:\n        db2:\n        db3:\n");
    let e = err_text(d.load(&even));
    assert!(
        e.contains("odd number of members") && e.contains("db2, db3"),
        "{e}"
    );
}
