//! Unit tests of `desired`.

use super::*;

#[test]
fn strict_undefined_rejects_typos() {
    let lib = Library::builtin().unwrap();
    let env = template_env(&lib);
    let err = env
        .render_str(
            "{{ cluster.clustr_name }}",
            ctx_value(json!({"cluster": {}})),
        )
        .unwrap_err();
    assert!(err.to_string().contains("undefined"), "{err}");
}

fn sample() -> Inventory {
    let text = "all:\n  vars:\n    tls: false\n    superuser_password: \"pa'ss\\\"word\"\n    postgresql_parameters:\n      work_mem: 8MB\n  children:\n    db:\n      hosts:\n        db1: {ansible_host: 10.9.0.11}\n        db2: {ansible_host: 10.9.0.12}\n        db3: {ansible_host: 10.9.0.13}\n    router:\n      hosts:\n        router1: {ansible_host: 10.9.0.21}\n    backup:\n      hosts:\n        router1:\n";
    crate::inventory::load_str(
        std::path::Path::new("/nonexistent/inv.yml"),
        text,
        &crate::inventory::LoadOptions::default(),
    )
    .unwrap()
}

/// A host's role as rendered (panics when the host lacks it).
fn role_of(d: &[HostDesired], host: &str, role: &str) -> DesiredRole {
    d.iter()
        .find(|x| x.host == host)
        .and_then(|x| x.role(role))
        .cloned()
        .unwrap_or_else(|| panic!("{host} has no role {role}"))
}

fn desired_file<'a>(d: &'a [HostDesired], host: &str, path: &str) -> &'a DesiredFile {
    let h = d.iter().find(|h| h.host == host).unwrap();
    h.files().find(|f| f.path == path).unwrap()
}

fn file(d: &[HostDesired], host: &str, path: &str) -> String {
    String::from_utf8(desired_file(d, host, path).content.clone()).unwrap()
}

#[test]
fn docker_daemon_config_is_json_with_the_inventorys_registries() {
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    inv.cluster.docker_image = "pgha:test".into();
    let lib = Library::builtin().unwrap();
    let read = |inv: &Inventory| -> serde_json::Value {
        let d = desired_state(inv, &lib).unwrap();
        serde_json::from_str(&file(&d, "db1", "/etc/docker/daemon.json")).unwrap()
    };
    let plain = read(&inv);
    assert_eq!(plain["live-restore"], true);
    assert!(plain.get("insecure-registries").is_none(), "{plain}");
    inv.cluster.docker_insecure_registries = vec!["10.9.0.21:5050".into()];
    inv.cluster.docker_storage_driver = "vfs".into();
    let with = read(&inv);
    assert_eq!(
        with["insecure-registries"],
        serde_json::json!(["10.9.0.21:5050"])
    );
    assert_eq!(with["storage-driver"], "vfs");
}

#[test]
fn patroni_config_is_valid_yaml_with_the_right_values() {
    let d = desired_state(&sample(), &Library::builtin().unwrap()).unwrap();
    let text = file(&d, "db2", "/etc/patroni/config.yml");
    let y: serde_json::Value = yaml_serde::from_str(&text).unwrap();
    assert_eq!(y["name"], "db2");
    assert_eq!(y["restapi"]["connect_address"], "10.9.0.12:8008");
    assert_eq!(
        y["postgresql"]["authentication"]["superuser"]["password"],
        "pa'ss\"word"
    );
    assert_eq!(y["etcd3"]["hosts"][2], "10.9.0.13:2379");
    assert_eq!(
        y["bootstrap"]["dcs"]["postgresql"]["parameters"]["work_mem"],
        "8MB"
    );
    let hba: Vec<String> = y["postgresql"]["pg_hba"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(hba.contains(&"host replication replicator 10.9.0.11/32 scram-sha-256".to_string()));
    assert!(hba.contains(&"host all all 10.9.0.21/32 scram-sha-256".to_string()));
    assert!(
        !hba.iter().any(|l| l.contains("0.0.0.0/0")),
        "no open pg_hba by default"
    );
    // Patroni checks a demoted primary's timeline over a replication connection
    // to itself: over the socket, with no TCP replication rule from localhost.
    assert_eq!(y["postgresql"]["use_unix_socket_repl"], true);
    assert!(hba.contains(&"local replication replicator scram-sha-256".to_string()));
    assert!(
        !hba.iter()
            .any(|l| l.starts_with("host replication") && l.contains("127.0.0.1")),
        "no replication from localhost over TCP"
    );
}

#[test]
fn roles_apply_to_their_groups_only() {
    let d = desired_state(&sample(), &Library::builtin().unwrap()).unwrap();
    let names = |h: &str| -> Vec<String> {
        d.iter()
            .find(|x| x.host == h)
            .unwrap()
            .roles
            .iter()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(
        names("db1"),
        [
            "common",
            "postgres",
            "pgbackrest",
            "etcd",
            "patroni",
            "exporter",
            "node_exporter"
        ]
    );
    // router1 doubles as the backup repository, and is the monitoring host (the
    // first router, without a `monitor` group).
    assert_eq!(
        names("router1"),
        [
            "common",
            "pgbackrest",
            "haproxy",
            "node_exporter",
            "pgbackrest_exporter",
            "alertmanager",
            "prometheus"
        ]
    );
    let d1 = d.iter().find(|x| x.host == "db1").unwrap();
    assert_eq!(d1.role("postgres").unwrap().packages, ["postgresql-17"]);
}

#[test]
fn etcd_and_haproxy_files_list_every_member() {
    let d = desired_state(&sample(), &Library::builtin().unwrap()).unwrap();
    let etcd = file(&d, "db3", "/etc/default/etcd");
    assert!(etcd.contains("ETCD_NAME=\"db3\"\n"));
    assert!(etcd.contains(
        "ETCD_INITIAL_CLUSTER=\"db1=http://10.9.0.11:2380,db2=http://10.9.0.12:2380,db3=http://10.9.0.13:2380\"\n"
    ));
    let hap = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
    assert_eq!(
        hap.matches("server db2 10.9.0.12:5432 check port 8008")
            .count(),
        2
    );
    assert!(
        hap.contains("bind *:5000")
            && hap.contains("bind *:5001")
            && hap.contains("bind 10.9.0.21:8404\n")
    );
    // The read port serves only streaming replicas within the lag bound.
    assert!(hap.contains("uri /replica?lag=16777216"), "{hap}");
    assert!(
        hap.contains(r#"http-check expect rstring '"replication_state": *"streaming"'"#),
        "{hap}"
    );
    let exp = file(&d, "db1", "/etc/default/prometheus-postgres-exporter");
    assert!(exp.contains("DATA_SOURCE_USER=\"pgha_monitor\""));
}

#[test]
fn rendering_is_deterministic() {
    let lib = Library::builtin().unwrap();
    let inv = sample();
    let a = desired_state(&inv, &lib).unwrap();
    let b = desired_state(&inv, &lib).unwrap();
    for (x, y) in a.iter().zip(&b) {
        for (f, g) in x.files().zip(y.files()) {
            assert!(f.content == g.content, "{} differs between renders", f.path);
        }
    }
}

#[test]
fn tls_configures_every_component_with_the_cluster_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::pki::test_inventory(dir.path());
    let inv = crate::inventory::load(
        &path,
        &crate::inventory::LoadOptions {
            write_secrets: true,
        },
    )
    .unwrap();
    let pki = crate::pki::load(&inv, true).expect("certificates created");
    let inputs = Inputs {
        pki: Some(pki.clone()),
        ..Default::default()
    };
    let d = desired_state_with(&inv, &Library::builtin().unwrap(), &inputs).unwrap();
    let etcd = file(&d, "db1", "/etc/default/etcd");
    assert!(
        etcd.contains("ETCD_LISTEN_CLIENT_URLS=\"https://10.9.0.11:2379,https://127.0.0.1:2379\"")
    );
    assert!(
        etcd.contains("ETCD_CLIENT_CERT_AUTH=\"true\"")
            && etcd.contains("ETCD_PEER_CLIENT_CERT_AUTH=\"true\"")
    );
    let y: serde_json::Value =
        yaml_serde::from_str(&file(&d, "db1", "/etc/patroni/config.yml")).unwrap();
    assert_eq!(y["etcd3"]["protocol"], "https");
    assert_eq!(y["restapi"]["certfile"], "/etc/pgha/tls/postgres.crt");
    assert_eq!(y["postgresql"]["parameters"]["ssl"], "on");
    assert_eq!(
        y["postgresql"]["authentication"]["replication"]["sslmode"],
        "verify-full"
    );
    let hba: Vec<String> = y["postgresql"]["pg_hba"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(hba.contains(&"hostssl all all 10.9.0.21/32 scram-sha-256".to_string()));
    assert!(hba.contains(&"hostssl replication replicator 10.9.0.12/32 scram-sha-256".to_string()));
    assert!(
        !hba.iter()
            .any(|l| l.starts_with("host ") && !l.contains("127.0.0.1") && !l.contains("::1")),
        "{hba:?}"
    );
    let hap = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
    assert_eq!(
        hap.matches("check-ssl verify required ca-file /etc/pgha/tls/ca.crt")
            .count(),
        2
    );
    // The host's own certificate and key, private.
    let db1 = d.iter().find(|h| h.host == "db1").unwrap();
    let key = db1
        .files()
        .find(|f| f.path == "/etc/pgha/tls/postgres.key")
        .unwrap();
    assert_eq!((key.mode, key.owner.as_str()), (0o600, "postgres"));
    assert_eq!(
        String::from_utf8_lossy(&key.content),
        pki.hosts["db1"].key.expose()
    );
    let cert = file(&d, "db1", "/etc/pgha/tls/etcd.crt");
    let names = crate::pki::cert_info(&cert).unwrap().names;
    for n in ["db1", "10.9.0.11", "127.0.0.1", "10.9.0.21", "router1"] {
        assert!(names.contains(n), "db1's certificate names {n}: {names:?}");
    }
    assert_eq!(file(&d, "router1", "/etc/pgha/tls/ca.crt"), pki.ca_cert);
    assert!(
        d.iter()
            .find(|h| h.host == "router1")
            .unwrap()
            .files()
            .all(|f| !f.path.ends_with(".key") || f.path.starts_with("/etc/pgbackrest/")),
        "routers get no key but pgBackRest's (router1 holds the repository)"
    );
    // Loading again reuses every certificate (a re-run changes nothing).
    let again = crate::inventory::load(
        &path,
        &crate::inventory::LoadOptions {
            write_secrets: true,
        },
    )
    .unwrap();
    let p2 = crate::pki::load(&again, true).unwrap();
    assert!(p2.issued.is_empty(), "{:?}", p2.issued);
    assert_eq!(p2.hosts["db2"].cert, pki.hosts["db2"].cert);
    // A private key never appears in redacted text.
    let shown = inv
        .secrets
        .redact(&format!("x\n{}y", pki.hosts["db1"].key.expose()));
    assert_eq!(shown, "x\n<redacted private key>\ny");
}

/// The exporter's environment file carries a hostile password literally to both
/// of its readers: systemd (native) and the docker container's own `sh`.
#[test]
fn exporter_env_file_reads_the_same_under_both_methods() {
    use crate::engine::quote::tests::{HOSTILE, sh_reads, systemd_reads};
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("exporter.env");
    let lib = Library::builtin().unwrap();
    for pw in HOSTILE {
        let mut inv = sample();
        inv.secrets.monitor_password = crate::inventory::Secret::new(pw);
        let text = file(
            &desired_state(&inv, &lib).unwrap(),
            "db1",
            "/etc/default/prometheus-postgres-exporter",
        );
        std::fs::write(&env_path, &text).unwrap();
        assert_eq!(systemd_reads(&text)["DATA_SOURCE_PASS"], pw, "{text}");
        assert_eq!(sh_reads(&env_path, "DATA_SOURCE_PASS"), pw, "{text}");
        // The container reads it with the command its spec runs.
        inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
        inv.cluster.docker_image = "pgha:test".into();
        let d = desired_state(&inv, &lib).unwrap();
        let spec = d
            .iter()
            .find(|h| h.host == "db1")
            .and_then(|h| h.role("exporter"))
            .and_then(|r| r.container.clone())
            .unwrap();
        let sh = spec.run_args.iter().position(|a| a == "sh").unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &spec.run_args[sh + 2]])
            .arg(&env_path)
            .args(["printenv", "DATA_SOURCE_PASS"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{pw}\n"));
    }
    assert!(!std::path::Path::new("/tmp/pgha-pwned").exists());
}

/// etcd's file holds only validated names, addresses and ports: both readers
/// see the same values.
#[test]
fn etcd_env_file_reads_the_same_in_systemd_and_sh() {
    use crate::engine::quote::tests::{sh_reads, systemd_reads};
    let text = file(
        &desired_state(&sample(), &Library::builtin().unwrap()).unwrap(),
        "db2",
        "/etc/default/etcd",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.env");
    std::fs::write(&path, &text).unwrap();
    let vars = systemd_reads(&text);
    assert!(vars.len() > 10, "{vars:?}");
    for (k, v) in &vars {
        assert_eq!(&sh_reads(&path, k), v, "{k}");
    }
}

/// Role fields that run in a root shell (`prepare`, `validate`) carry inventory
/// values as single words, even values validation would refuse.
#[test]
fn shell_fields_quote_hostile_inventory_values() {
    use crate::engine::quote::tests::sh_args;
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    let parent = "/srv/a b;$(touch /tmp/pgha-pwned)|`id`'x'";
    inv.cluster.postgresql_data_dir = format!("{parent}/main");
    let image = "img:1 $(touch /tmp/pgha-pwned);id";
    inv.cluster.docker_image = image.into();
    let d = desired_state(&inv, &Library::builtin().unwrap()).unwrap();
    let role = |h: &str, r: &str| role_of(&d, h, r);
    let prepare = role("db1", "patroni").container.unwrap().prepare.unwrap();
    // The first of its commands takes the data directory's parent.
    assert_eq!(
        sh_args("install", &prepare)[..9],
        [
            "-d",
            "-o",
            "postgres",
            "-g",
            "postgres",
            "-m",
            "0755",
            "/var/lib/postgresql",
            parent
        ]
    );
    let haproxy = role("router1", "haproxy");
    let validate = haproxy.files[0].validate.clone().unwrap();
    // As the upload script runs it: %s is the new file.
    let script = format!("t=/tmp/new.cfg\n{}", validate.replace("%s", "\"$t\""));
    let args = sh_args("docker", &script);
    assert_eq!(
        args[..6],
        [
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "/tmp/new.cfg:/tmp/pgha-haproxy.cfg:ro"
        ]
    );
    assert_eq!(args[8], image, "{args:?}");
    assert_eq!(
        args[9..],
        ["haproxy", "-c", "-q", "-f", "/tmp/pgha-haproxy.cfg"]
    );
    assert!(!std::path::Path::new("/tmp/pgha-pwned").exists());
    // A plain inventory renders them as before (no needless quotes).
    let plain = desired_state(
        &{
            let mut i = sample();
            i.cluster.install_method = crate::inventory::InstallMethod::Docker;
            i.cluster.docker_image = "pgha-stack:abc".into();
            i
        },
        &Library::builtin().unwrap(),
    )
    .unwrap();
    let v = plain
        .iter()
        .find(|x| x.host == "router1")
        .and_then(|x| x.role("haproxy"))
        .map(|r| r.files[0].validate.clone().unwrap())
        .unwrap();
    assert_eq!(
        v,
        "docker run --rm --network none -v %s:/tmp/pgha-haproxy.cfg:ro -v /etc/pgha/tls:/etc/pgha/tls:ro pgha-stack:abc haproxy -c -q -f /tmp/pgha-haproxy.cfg"
    );
}

/// HAProxy's stats page is bound to the router's address and needs pgha's
/// password, carried literally whatever it holds; the exporters listen on their
/// host's address only, under both install methods.
#[test]
fn stats_page_and_exporters_are_not_open_to_every_address() {
    use crate::engine::quote::tests::{HOSTILE, sh_args};
    let lib = Library::builtin().unwrap();
    for pw in HOSTILE {
        let mut inv = sample();
        inv.secrets.haproxy_stats_password = crate::inventory::Secret::new(pw);
        let d = desired_state(&inv, &lib).unwrap();
        let hap = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
        let stats = &hap[hap.find("listen stats").unwrap()..hap.find("listen primary").unwrap()];
        assert!(stats.contains("    bind 10.9.0.21:8404\n"), "{stats}");
        assert!(!hap.contains("bind *:8404"), "{hap}");
        let auth = stats
            .lines()
            .find_map(|l| l.trim().strip_prefix("stats auth "))
            .expect("an auth line");
        // HAProxy's strong quoting is sh's: one word, read literally.
        assert_eq!(sh_args("w", &format!("w {auth}")), [format!("pgha:{pw}")]);
    }
    let exp = file(
        &desired_state(&sample(), &lib).unwrap(),
        "db2",
        "/etc/default/prometheus-postgres-exporter",
    );
    assert!(
        exp.contains("ARGS=\"--web.listen-address=10.9.0.12:9187\"\n"),
        "{exp}"
    );
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    inv.cluster.docker_image = "pgha:test".into();
    let d = desired_state(&inv, &lib).unwrap();
    let spec = d
        .iter()
        .find(|h| h.host == "db2")
        .and_then(|h| h.role("exporter"))
        .and_then(|r| r.container.clone())
        .unwrap();
    assert_eq!(
        spec.run_args.last().unwrap(),
        "--web.listen-address=10.9.0.12:9187"
    );
    assert_eq!(listen_host("fe80::1".parse().unwrap()), "[fe80::1]");
}

#[test]
fn pgbackrest_connects_the_repository_and_the_members_over_tls() {
    // The sample has `tls: false`: pgBackRest's TLS uses the CA all the same.
    let dir = tempfile::tempdir().unwrap();
    let mut inv = sample();
    inv.path = dir.path().join("inv.yml");
    let (d, pki) = with_certificates(&inv);
    let repo = file(&d, "router1", "/etc/pgbackrest/pgbackrest.conf");
    for want in [
        "repo1-path=/var/lib/pgbackrest\n",
        "repo1-retention-full=2\n",
        "repo1-cipher-type=aes-256-cbc\n",
        "tls-server-address=10.9.0.21\n",
        "tls-server-auth=db1=pgha\ntls-server-auth=db2=pgha\ntls-server-auth=db3=pgha\n",
        "[pgha]\npg1-host=10.9.0.11\npg1-host-type=tls\n",
        "pg3-host=10.9.0.13\n",
        "pg3-path=/var/lib/postgresql/17/main\n",
    ] {
        assert!(
            repo.contains(want),
            "repository host lacks {want:?}:\n{repo}"
        );
    }
    assert!(repo.contains(&format!(
        "repo1-cipher-pass={}\n",
        inv.secrets.backup_cipher_pass.expose()
    )));
    let db = file(&d, "db2", "/etc/pgbackrest/pgbackrest.conf");
    for want in [
        "repo1-host=10.9.0.21\nrepo1-host-type=tls\n",
        "archive-async=y\n",
        "archive-push-queue-max=4GiB\n",
        "tls-server-address=10.9.0.12\n",
        "tls-server-auth=router1=pgha\n",
        "[global:archive-get]\narchive-async=n\n",
        "[pgha]\npg1-path=/var/lib/postgresql/17/main\n",
    ] {
        assert!(db.contains(want), "db host lacks {want:?}:\n{db}");
    }
    assert!(
        !db.contains("cipher"),
        "the cipher pass stays on the repository host"
    );
    assert_eq!(
        file(&d, "db2", "/etc/pgbackrest/tls/host.key"),
        pki.hosts["db2"].key.expose()
    );
    // Timers on the repository host only, one per schedule.
    let timer = file(&d, "router1", "/etc/systemd/system/pgha-backup-diff.timer");
    assert!(
        timer.contains("OnCalendar=Mon..Sat *-*-* 01:00:00\n"),
        "{timer}"
    );
    assert!(timer.contains("Unit=pgha-backup@diff.service\n"), "{timer}");
    let verify = file(
        &d,
        "router1",
        "/etc/systemd/system/pgha-backup-verify.timer",
    );
    assert!(
        verify.contains("Unit=pgha-backup-verify.service\n"),
        "{verify}"
    );
    let router = d.iter().find(|h| h.host == "router1").unwrap();
    assert!(
        router
            .files()
            .all(|f| !f.path.ends_with("pgha-backup-incr.timer"))
    );
    assert_eq!(
        router.role("pgbackrest").unwrap().packages,
        ["pgbackrest", "postgresql-17"]
    );
    let db1 = d.iter().find(|h| h.host == "db1").unwrap();
    assert_eq!(db1.role("pgbackrest").unwrap().packages, ["pgbackrest"]);
    assert!(db1.files().all(|f| !f.path.contains("pgha-backup")));
    // Archiving from the leader, replicas cloned from the repository first.
    let y: serde_json::Value =
        yaml_serde::from_str(&file(&d, "db1", "/etc/patroni/config.yml")).unwrap();
    let params = &y["bootstrap"]["dcs"]["postgresql"]["parameters"];
    assert_eq!(params["archive_mode"], "on");
    assert_eq!(
        params["archive_command"],
        "pgbackrest --stanza=pgha archive-push %p"
    );
    assert_eq!(
        y["postgresql"]["create_replica_methods"],
        serde_json::json!(["pgbackrest", "basebackup"])
    );
    assert_eq!(y["postgresql"]["pgbackrest"]["keep_data"], true);
}

#[test]
fn without_backups_archiving_stays_on_and_accepts_every_segment() {
    let mut inv = sample();
    inv.cluster.backup_enabled = false;
    let d = desired_state(&inv, &Library::builtin().unwrap()).unwrap();
    assert!(d.iter().all(|h| h.role("pgbackrest").is_none()));
    let y: serde_json::Value =
        yaml_serde::from_str(&file(&d, "db1", "/etc/patroni/config.yml")).unwrap();
    let params = &y["bootstrap"]["dcs"]["postgresql"]["parameters"];
    // archive_mode from the first deploy: turning backups on later needs no restart.
    assert_eq!(params["archive_mode"], "on");
    assert_eq!(params["archive_command"], "/bin/true");
    assert!(y["postgresql"].get("create_replica_methods").is_none());
}

#[test]
fn an_s3_repository_is_configured_on_the_backup_host_only_with_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut inv = sample();
    inv.path = dir.path().join("inv.yml");
    inv.cluster.backup_repo_type = "s3".into();
    inv.cluster.backup_s3_endpoint = "10.9.0.21".into();
    inv.cluster.backup_s3_port = 9000;
    inv.cluster.backup_s3_bucket = "pgha".into();
    inv.cluster.backup_s3_ca = "pgha".into();
    inv.secrets.backup_s3_key = crate::inventory::Secret::new("AKIAEXAMPLEKEY0000001");
    inv.secrets.backup_s3_key_secret = crate::inventory::Secret::new("s3cr3tS3cr3tS3cr3tKey");
    let (d, _) = with_certificates(&inv);
    let repo = file(&d, "router1", "/etc/pgbackrest/pgbackrest.conf");
    for want in [
        "repo1-type=s3\nrepo1-path=/var/lib/pgbackrest\nrepo1-s3-bucket=pgha\n",
        "repo1-s3-endpoint=10.9.0.21\nrepo1-storage-port=9000\nrepo1-s3-region=us-east-1\n",
        "repo1-s3-uri-style=path\n",
        "repo1-s3-key=AKIAEXAMPLEKEY0000001\nrepo1-s3-key-secret=s3cr3tS3cr3tS3cr3tKey\n",
        "repo1-storage-ca-file=/etc/pgbackrest/tls/ca.crt\n",
    ] {
        assert!(
            repo.contains(want),
            "repository host lacks {want:?}:\n{repo}"
        );
    }
    // The keys are masked in diffs, and never reach a db host.
    let spec = d
        .iter()
        .find(|h| h.host == "router1")
        .and_then(|h| {
            h.files()
                .find(|f| f.path == "/etc/pgbackrest/pgbackrest.conf")
        })
        .map(|f| f.secrets.clone())
        .unwrap();
    let (_, masked) = crate::engine::mask::mask_pair(&spec, "", &repo);
    assert!(!masked.contains("s3cr3tS3cr3tS3cr3tKey"), "{masked}");
    assert!(!masked.contains("AKIAEXAMPLEKEY0000001"), "{masked}");
    let db = file(&d, "db2", "/etc/pgbackrest/pgbackrest.conf");
    assert!(
        !db.contains("s3"),
        "the keys stay on the backup host:\n{db}"
    );
}

/// The desired state with the cluster's certificates (made in the inventory's
/// directory), and those certificates.
fn with_certificates(inv: &Inventory) -> (Vec<HostDesired>, crate::pki::Pki) {
    let pki = crate::pki::load(inv, true).unwrap();
    let inputs = Inputs {
        pki: Some(pki.clone()),
        ..Default::default()
    };
    let d = desired_state_with(inv, &Library::builtin().unwrap(), &inputs).unwrap();
    (d, pki)
}

/// Under docker, pgBackRest's server runs in a container with what it serves
/// mounted (a db host: the data directory and the socket volume shared with
/// Patroni's container; the repository's host: the repository and the restore
/// test's directory), no package is installed, and the scheduled backups run in it.
#[test]
fn docker_pgbackrest_mounts_what_each_host_serves() {
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    let d = desired_state(&inv, &Library::builtin().unwrap()).unwrap();
    let role = |h: &str, r: &str| role_of(&d, h, r);
    let mounts = |h: &str, r: &str| -> Vec<String> {
        let args = role(h, r).container.unwrap().run_args;
        args.windows(2)
            .filter(|w| w[0] == "-v")
            .map(|w| w[1].clone())
            .collect()
    };
    let db = mounts("db1", "pgbackrest");
    for m in [
        "/etc/pgbackrest:/etc/pgbackrest:ro",
        "/var/spool/pgbackrest:/var/spool/pgbackrest",
        "/var/lib/postgresql/17:/var/lib/postgresql/17",
        "pgha-pgrun:/run/postgresql",
    ] {
        assert!(db.contains(&m.to_string()), "db1 mounts {m}: {db:?}");
    }
    assert!(
        !db.iter()
            .any(|m| m.contains("pgbackrest:/var/lib/pgbackrest"))
    );
    let repo = mounts("router1", "pgbackrest");
    assert!(repo.contains(&"/var/lib/pgbackrest:/var/lib/pgbackrest".to_string()));
    assert!(repo.contains(&"/var/lib/pgha:/var/lib/pgha".to_string()));
    assert!(!repo.iter().any(|m| m.contains("pgrun")), "{repo:?}");
    let patroni = mounts("db1", "patroni");
    assert!(patroni.contains(&"pgha-pgrun:/run/postgresql".to_string()));
    assert!(patroni.contains(&"/etc/pgbackrest:/etc/pgbackrest:ro".to_string()));
    assert!(role("db1", "pgbackrest").packages.is_empty());
    assert!(role("router1", "pgbackrest").packages.is_empty());
    let unit = file(&d, "router1", "/etc/systemd/system/pgha-backup@.service");
    assert!(
        unit.contains(
            "ExecStart=/usr/bin/docker exec -u postgres pgha-pgbackrest pgbackrest --stanza="
        ) && !unit.contains("User=postgres"),
        "{unit}"
    );
    let verify = file(&d, "router1", "/usr/local/lib/pgha/backup-verify");
    assert!(
        verify.contains("as_pg() { docker exec -i -u postgres pgha-pgbackrest \"$@\"; }"),
        "{verify}"
    );
}

#[test]
fn monitoring_scrapes_every_component_on_its_hosts_address_and_can_be_turned_off() {
    let lib = Library::builtin().unwrap();
    let mut inv = sample();
    inv.cluster.alert_webhook_urls = vec!["http://10.9.0.99:9099/hook?token=s3cret".into()];
    let d = desired_state(&inv, &lib).unwrap();
    let prom: serde_json::Value =
        yaml_serde::from_str(&file(&d, "router1", "/etc/prometheus/prometheus.yml")).unwrap();
    let jobs: BTreeMap<String, Vec<String>> = prom["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let targets = j["static_configs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    format!(
                        "{}@{}",
                        s["labels"]["instance"].as_str().unwrap(),
                        s["targets"][0].as_str().unwrap()
                    )
                })
                .collect();
            (j["job_name"].as_str().unwrap().to_string(), targets)
        })
        .collect();
    assert_eq!(
        jobs["etcd"],
        [
            "db1@10.9.0.11:2381",
            "db2@10.9.0.12:2381",
            "db3@10.9.0.13:2381"
        ]
    );
    assert_eq!(jobs["haproxy"], ["router1@10.9.0.21:8404"]);
    assert_eq!(jobs["pgbackrest"], ["router1@10.9.0.21:9854"]);
    assert_eq!(jobs["node"].len(), 4);
    assert_eq!(jobs["patroni"][0], "db1@10.9.0.11:8008");
    assert_eq!(prom["global"]["external_labels"]["cluster"], "pgha");
    // Exporters and etcd's metrics on the host's own address.
    assert!(
        file(&d, "db2", "/etc/default/prometheus-node-exporter")
            .contains("--web.listen-address=10.9.0.12:9100")
    );
    assert!(
        file(&d, "db2", "/etc/default/etcd")
            .contains("ETCD_LISTEN_METRICS_URLS=\"http://10.9.0.12:2381\"\n")
    );
    let haproxy = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
    assert!(haproxy.contains("    http-request use-service prometheus-exporter if { path /metrics }\n    stats enable\n"), "{haproxy}");
    let am = file(&d, "router1", "/etc/prometheus/alertmanager.yml");
    assert!(am.contains("      - url: \"http://10.9.0.99:9099/hook?token=s3cret\"\n        send_resolved: true\n"), "{am}");
    // The webhook's token is masked in diffs.
    let f = desired_file(&d, "router1", "/etc/prometheus/alertmanager.yml");
    let (_, shown) = crate::engine::mask::mask_pair(&f.secrets, "", &am);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("      - url: <redacted"), "{shown}");
    // Retention in Prometheus's MB (powers of two).
    assert!(
        file(&d, "router1", "/etc/default/prometheus")
            .contains("--storage.tsdb.retention.size=2048MB")
    );

    inv.cluster.monitoring_enabled = false;
    let d = desired_state(&inv, &lib).unwrap();
    for h in &d {
        for r in [
            "node_exporter",
            "prometheus",
            "alertmanager",
            "pgbackrest_exporter",
        ] {
            assert!(h.role(r).is_none(), "{} has {r}", h.host);
        }
    }
    assert!(!file(&d, "db2", "/etc/default/etcd").contains("METRICS"));
    assert!(!file(&d, "router1", "/etc/haproxy/haproxy.cfg").contains("prometheus-exporter"));
}

/// Under docker the monitoring runs in containers of the monitoring image, with
/// no package installed: the same arguments from the same files, node_exporter
/// reading the host under /host, each file checked in that image.
#[test]
fn docker_monitoring_runs_in_containers_of_its_image() {
    let lib = Library::builtin().unwrap();
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    inv.cluster.docker_image_monitoring = "mon:1".into();
    let d = desired_state(&inv, &lib).unwrap();
    let role = |h: &str, r: &str| role_of(&d, h, r);
    for (h, r, name) in [
        ("db1", "node_exporter", "pgha-node-exporter"),
        ("router1", "node_exporter", "pgha-node-exporter"),
        ("router1", "prometheus", "pgha-prometheus"),
        ("router1", "alertmanager", "pgha-alertmanager"),
        ("router1", "pgbackrest_exporter", "pgha-pgbackrest-exporter"),
    ] {
        let c = role(h, r).container.unwrap_or_else(|| panic!("{h} {r}"));
        assert_eq!(c.name, name);
        assert_eq!(c.image, "mon:1", "{h} {r}");
        assert!(role(h, r).packages.is_empty(), "{h} {r}: no package");
    }
    let node = role("db1", "node_exporter").container.unwrap();
    assert!(node.run_args.contains(&"/:/host:ro,rslave".to_string()));
    let env = file(&d, "db1", "/etc/default/prometheus-node-exporter");
    assert!(
        env.contains("--path.rootfs=/host ")
            && env.contains(
                "--collector.textfile.directory=/host/var/lib/prometheus/node-exporter\""
            ),
        "{env}"
    );
    let prom = role("router1", "prometheus").container.unwrap();
    assert_eq!(prom.reload_signal.as_deref(), Some("HUP"));
    assert!(prom.run_args.ends_with(&[
        "sh".to_string(),
        "-c".into(),
        "exec prometheus $ARGS".into()
    ]));
    assert!(
        !file(&d, "router1", "/etc/default/prometheus").contains("--web.console"),
        "no console templates in the host's /etc/prometheus"
    );
    let validate = d
        .iter()
        .find(|h| h.host == "router1")
        .unwrap()
        .files()
        .filter(|f| f.path.starts_with("/etc/prometheus/"))
        .map(|f| f.validate.clone().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(validate.len(), 3, "{validate:?}");
    for v in &validate {
        assert!(
            v.starts_with("docker run --rm --network none -v %s:"),
            "{v}"
        );
        assert!(v.contains(" mon:1 "), "{v}");
    }
    // The exporter reads the repository in place, read-only.
    let pb = role("router1", "pgbackrest_exporter").container.unwrap();
    assert!(
        pb.run_args
            .contains(&"/var/lib/pgbackrest:/var/lib/pgbackrest:ro".to_string()),
        "{:?}",
        pb.run_args
    );
    let prom_yml = file(&d, "router1", "/etc/prometheus/prometheus.yml");
    assert!(prom_yml.contains("job_name: pgbackrest"), "{prom_yml}");
    // The image goes to every host that runs one of them.
    assert!(crate::docker::stack::images(&inv.cluster).contains(&"mon:1".to_string()));
    inv.cluster.monitoring_enabled = false;
    assert!(!crate::docker::stack::images(&inv.cluster).contains(&"mon:1".to_string()));
}

/// Under docker PgBouncer and its exporter run in containers, with no package:
/// PgBouncer as postgres with its configuration read-only, stopped by its safe
/// shutdown (SIGINT), raising its open-file limit as far as Docker lets it toward
/// the native unit's; the exporter in
/// the monitoring image (the CA it verifies PgBouncer with mounted only with TLS
/// on). Each image goes
/// to the hosts only when pooling is on.
#[test]
fn docker_pgbouncer_runs_in_a_container_stopped_safely() {
    let lib = Library::builtin().unwrap();
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    inv.cluster.pgbouncer_enabled = true;
    inv.cluster.monitoring_enabled = true;
    inv.cluster.docker_image_pgbouncer = "pb:1".into();
    inv.cluster.docker_image_monitoring = "mon:1".into();
    let d = desired_state(&inv, &lib).unwrap();
    let pb = role_of(&d, "router1", "pgbouncer");
    assert!(pb.packages.is_empty(), "no package: {:?}", pb.packages);
    let c = pb.container.unwrap();
    assert_eq!(c.name, "pgha-pgbouncer");
    assert_eq!(c.image, "pb:1");
    assert_eq!(c.reload_signal.as_deref(), Some("HUP"));
    let args = c.run_args.join(" ");
    for want in [
        "--stop-signal SIGINT",
        "--user postgres",
        "-v /etc/pgbouncer:/etc/pgbouncer:ro",
    ] {
        assert!(args.contains(want), "{want}: {args}");
    }
    assert!(
        c.run_args.ends_with(&[
            "pb:1".to_string(),
            "sh".into(),
            "-c".into(),
            r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec pgbouncer /etc/pgbouncer/pgbouncer.ini"#.into(),
        ]),
        "{args}"
    );
    assert!(
        !d.iter()
            .find(|h| h.host == "router1")
            .unwrap()
            .files()
            .any(|f| f
                .path
                .starts_with("/etc/systemd/system/pgbouncer.service.d/")),
        "no systemd drop-in for a unit that does not run"
    );
    let ex = role_of(&d, "router1", "pgbouncer_exporter")
        .container
        .unwrap();
    assert_eq!(
        (ex.name.as_str(), ex.image.as_str()),
        ("pgha-pgbouncer-exporter", "mon:1")
    );
    // TLS off here: no CA to mount, and no empty volume argument either.
    assert!(
        !ex.run_args
            .iter()
            .any(|a| a.contains("/etc/pgbouncer/tls") || a.is_empty()),
        "{:?}",
        ex.run_args
    );
    assert!(crate::docker::stack::images(&inv.cluster).contains(&"pb:1".to_string()));
    inv.cluster.pgbouncer_enabled = false;
    assert!(!crate::docker::stack::images(&inv.cluster).contains(&"pb:1".to_string()));
}

/// With pooling on, every router runs PgBouncer on its own address in front of
/// its HAProxy write port, passwords looked up in PostgreSQL (only the auth
/// user's in auth_file, quoted PgBouncer's way, masked in diffs), TLS both ways
/// with TLS on; off, no router has it.
#[test]
fn pgbouncer_on_the_routers_in_front_of_the_write_port() {
    let lib = Library::builtin().unwrap();
    let mut inv = sample();
    inv.cluster.pgbouncer_enabled = true;
    inv.secrets.pgbouncer_auth_password = crate::inventory::Secret::new("p\"w\\x");
    let d = desired_state(&inv, &lib).unwrap();
    assert!(role_of(&d, "router1", "pgbouncer").packages == ["pgbouncer"]);
    assert!(
        d.iter()
            .find(|h| h.host == "db1")
            .unwrap()
            .role("pgbouncer")
            .is_none()
    );
    let ini = file(&d, "router1", "/etc/pgbouncer/pgbouncer.ini");
    for line in [
        "* = host=127.0.0.1 port=5000\n",
        "listen_addr = 10.9.0.21\n",
        "listen_port = 6432\n",
        "auth_type = scram-sha-256\n",
        "auth_user = pgha_pgbouncer\n",
        "auth_query = SELECT usename, passwd FROM pgha.pgbouncer_lookup($1)\n",
        "pool_mode = transaction\n",
        "max_prepared_statements = 200\n",
    ] {
        assert!(ini.contains(line), "{line}:\n{ini}");
    }
    assert!(!ini.contains("tls"), "TLS off in the sample:\n{ini}");
    let users = file(&d, "router1", "/etc/pgbouncer/userlist.txt");
    assert_eq!(users, "\"pgha_pgbouncer\" \"p\"\"w\\x\"\n");
    let f = desired_file(&d, "router1", "/etc/pgbouncer/userlist.txt");
    assert_eq!(f.mode, 0o640);
    let (_, shown) = crate::engine::mask::mask_pair(&f.secrets, "", &users);
    assert!(!shown.contains("p\"\"w"), "{shown}");

    // Scraped through its exporter, which reads the console as the auth user.
    let prom = file(&d, "router1", "/etc/prometheus/prometheus.yml");
    assert!(
        prom.contains(
            "  - job_name: pgbouncer\n    static_configs:\n      - targets: [\"10.9.0.21:9127\"]\n"
        ),
        "{prom}"
    );
    let exporter = file(&d, "router1", "/etc/default/prometheus-pgbouncer-exporter");
    assert!(
        exporter.contains(
            "PGBOUNCER_EXPORTER_CONNECTION_STRING=\"postgres://pgha_pgbouncer:p%22w%5Cx@10.9.0.21:6432/pgbouncer?sslmode=disable\"\n"
        ),
        "{exporter}"
    );
    assert!(exporter.contains("ARGS=\"--web.listen-address=10.9.0.21:9127\"\n"));

    inv.cluster.tls = true;
    let (d, _) = with_certificates(&inv);
    let exporter = file(&d, "router1", "/etc/default/prometheus-pgbouncer-exporter");
    assert!(
        exporter.contains("/pgbouncer?sslmode=verify-full&sslrootcert=/etc/pgbouncer/tls/ca.crt\""),
        "{exporter}"
    );
    let ini = file(&d, "router1", "/etc/pgbouncer/pgbouncer.ini");
    for line in [
        "client_tls_sslmode = require\n",
        "server_tls_sslmode = verify-ca\n",
        "server_tls_ca_file = /etc/pgbouncer/tls/ca.crt\n",
    ] {
        assert!(ini.contains(line), "{line}:\n{ini}");
    }
    inv.cluster.pgbouncer_enabled = false;
    let d = desired_state(&inv, &lib).unwrap_or_else(|_| with_certificates(&inv).0);
    assert!(d.iter().all(|h| h.role("pgbouncer").is_none()));
}

#[test]
fn role_change_callback_names_this_host_and_its_etcd_and_is_python() {
    let lib = Library::builtin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = crate::pki::test_inventory(dir.path());
    let with_tls = crate::inventory::load(
        &path,
        &crate::inventory::LoadOptions {
            write_secrets: true,
        },
    )
    .unwrap();
    let inputs = Inputs {
        pki: Some(crate::pki::load(&with_tls, true).expect("certificates created")),
        ..Default::default()
    };
    for tls in [false, true] {
        let d = if tls {
            desired_state_with(&with_tls, &lib, &inputs).unwrap()
        } else {
            desired_state(&sample(), &lib).unwrap()
        };
        let f = desired_file(&d, "db2", "/etc/patroni/pgha-role-change");
        assert_eq!(f.mode, 0o755);
        let s = file(&d, "db2", "/etc/patroni/pgha-role-change");
        assert!(s.starts_with("#!/usr/bin/python3\n"), "{s}");
        assert!(s.contains("ME = \"db2\"\n"), "{s}");
        assert!(
            s.contains(r#"ETCD = ["10.9.0.11:2379", "10.9.0.12:2379", "10.9.0.13:2379"]"#),
            "{s}"
        );
        let scheme = if tls { "https" } else { "http" };
        assert!(
            s.contains(&format!("PATRONI = \"{scheme}://10.9.0.12:8008/cluster\"")),
            "{s}"
        );
        assert_eq!(s.contains("load_cert_chain("), tls, "{s}");
        // Patroni runs it for these two events only.
        let cfg = file(&d, "db2", "/etc/patroni/config.yml");
        let doc: serde_json::Value = yaml_serde::from_str(&cfg).unwrap();
        assert_eq!(
            doc["postgresql"]["callbacks"]["on_role_change"],
            "/etc/patroni/pgha-role-change"
        );
        assert_eq!(
            doc["postgresql"]["callbacks"]["on_start"],
            "/etc/patroni/pgha-role-change"
        );
        // Valid Python where a python3 is at hand (the hosts always have one).
        if let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", "import ast,sys; ast.parse(sys.stdin.read())"])
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            assert!(child.wait().unwrap().success(), "not valid Python:\n{s}");
        }
    }
}

#[test]
fn pgbackrest_directories_and_timers_follow_the_host_and_the_schedules() {
    let mut inv = sample();
    inv.cluster.backup_schedule_incr = String::new();
    let lib = Library::builtin().unwrap();
    let d = desired_state(&inv, &lib).unwrap();
    let paths = |host: &str| -> Vec<String> {
        role_of(&d, host, "pgbackrest")
            .dirs
            .iter()
            .map(|d| format!("{} {}:{} {:o}", d.path, d.owner, d.group, d.mode))
            .collect()
    };
    assert_eq!(
        paths("db1"),
        [
            "/var/log/pgbackrest postgres:postgres 750",
            "/var/spool/pgbackrest postgres:postgres 750"
        ]
    );
    assert_eq!(
        paths("router1")[2],
        format!("{} postgres:postgres 750", inv.cluster.backup_repo_path),
        "the repository's directory on its host only"
    );
    let timers = |host: &str| -> Vec<(String, String, bool)> {
        role_of(&d, host, "pgbackrest")
            .timers
            .iter()
            .map(|t| (t.timer.clone(), t.service.clone(), t.scheduled))
            .collect()
    };
    let t = timers("router1");
    assert_eq!(t.len(), 4);
    assert_eq!(
        t[0],
        (
            "pgha-backup-full.timer".into(),
            "pgha-backup@full.service".into(),
            true
        )
    );
    assert!(
        t.iter()
            .any(|(timer, _, on)| timer == "pgha-backup-incr.timer" && !on),
        "an empty schedule unschedules its timer: {t:?}"
    );
    assert!(
        t.iter()
            .any(|(timer, service, on)| timer == "pgha-backup-verify.timer"
                && service == "pgha-backup-verify.service"
                && *on)
    );
    assert!(
        timers("db1").iter().all(|(_, _, on)| !on),
        "no timer runs on a db host"
    );
    // An S3 repository has no directory on the repository's host.
    inv.cluster.backup_repo_type = "s3".into();
    let d = desired_state(&inv, &lib).unwrap();
    assert_eq!(role_of(&d, "router1", "pgbackrest").dirs.len(), 2);
}

#[test]
fn a_role_directory_must_render_to_an_absolute_path() {
    let mut inv = sample();
    inv.cluster.backup_repo_path = "relative/repo".into();
    let lib = Library::builtin().unwrap();
    let err = desired_state(&inv, &lib).unwrap_err().to_string();
    assert!(
        err.contains("role pgbackrest: directory {{ cluster.backup_repo_path }}")
            && err.contains("\"relative/repo\" is not an absolute path"),
        "{err}"
    );
}

#[test]
fn patroni_starts_with_nodelay_on_its_rest_api_under_both_methods() {
    let lib = Library::builtin().unwrap();
    let module = "/etc/patroni/python/sitecustomize.py";
    // Native: Debian's unit reads the environment file; a change to either file
    // restarts Patroni (under pause, ops::phases).
    let d = desired_state(&sample(), &lib).unwrap();
    let env = desired_file(&d, "db1", "/etc/patroni_env.conf");
    assert_eq!(env.notify, Notify::Restart);
    assert!(
        String::from_utf8(env.content.clone())
            .unwrap()
            .lines()
            .any(|l| l == "PYTHONPATH=/etc/patroni/python"),
        "PYTHONPATH names the module's directory"
    );
    let m = desired_file(&d, "db1", module);
    assert_eq!((m.notify, m.mode), (Notify::Restart, 0o644));
    let text = file(&d, "db1", module);
    assert!(
        text.contains("http.server.BaseHTTPRequestHandler.disable_nagle_algorithm = True"),
        "{text}"
    );
    // Docker: the same module in the mounted /etc/patroni, PYTHONPATH set by the
    // container's command; no restart on a change (it would stop PostgreSQL).
    let mut inv = sample();
    inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
    let d = desired_state(&inv, &lib).unwrap();
    let h = d.iter().find(|h| h.host == "db1").unwrap();
    assert!(h.files().all(|f| f.path != "/etc/patroni_env.conf"));
    let same: Vec<_> = h.files().filter(|f| f.path == module).collect();
    assert_eq!(same.len(), 1, "one module file under docker");
    assert_eq!(same[0].notify, Notify::None);
    let c = role_of(&d, "db1", "patroni").container.unwrap();
    let command = c.run_args.last().unwrap();
    assert!(
        command.contains("export PYTHONPATH=/etc/patroni/python; exec patroni"),
        "{command}"
    );
    assert!(
        c.run_args
            .join(" ")
            .contains("-v /etc/patroni:/etc/patroni:ro")
    );
}
