//! End-to-end: `pgha upgrade` on its own lab (`pgha-e2e-upgrade`). A cluster
//! deployed with PostgreSQL and HAProxy pinned to older builds, then upgraded to
//! Debian's current ones with the pins lifted while a writer inserts through :5000;
//! the first run is killed after its first replica and run again. Assertions read
//! the hosts and the running servers, not pgha's report.
//!
//! The older builds are the hosts' current candidates repackaged as `<version>~e2e`
//! (`pgha::lab::rehearsal`): a real package upgrade whatever the mirror holds today.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::Value;

const LAB: &str = "pgha-e2e-upgrade";
use pgha::lab::rehearsal::{PG_PACKAGES, older, vars};

async fn older_builds(lab: &Lab, host: &str, pkgs: &[&str]) -> Vec<(String, String)> {
    pgha::lab::rehearsal::older_builds(&lab.info.name, host, pkgs)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn package_version(lab: &Lab, host: &str, pkg: &str) -> String {
    lab.sh(host, &format!("dpkg-query -W -f='${{Version}}' {pkg}"))
        .1
}

/// Each member's running postmaster: whether it runs a binary replaced on disk.
fn postmaster_exes(lab: &Lab) -> Vec<(String, String)> {
    lab.db_hosts()
        .into_iter()
        .map(|h| {
            let (_, exe) = lab.sh(
                &h,
                "readlink /proc/$(head -1 /var/lib/postgresql/17/main/postmaster.pid)/exe",
            );
            (h, exe.trim().to_string())
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
        let st = lab.patroni_status(&h).await.expect("patroni status");
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
    let mut pg_new = String::new();
    for h in lab.db_hosts() {
        let v = older_builds(&lab, &h, &PG_PACKAGES).await;
        assert!(
            v.iter().all(|(_, x)| *x == v[0].1),
            "{h}: one PostgreSQL release: {v:?}"
        );
        pg_new = v[0].1.clone();
    }
    let haproxy_new = older_builds(&lab, "router1", &["haproxy"]).await[0]
        .1
        .clone();
    let (pg_old, haproxy_old) = (older(&pg_new), older(&haproxy_new));
    let original = std::fs::read_to_string(&inv).unwrap();
    let with = |pinned: bool| {
        original.replacen(
            "vars:\n",
            &format!("vars:\n{}", vars(&pg_new, &haproxy_new, pinned)),
            1,
        )
    };
    let (pinned, unpinned) = (with(true), with(false));
    std::fs::write(&inv, &pinned).unwrap();

    // 1. Deploy the older versions.
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with pins");
    healthy_cluster(&lab).await;
    for h in lab.db_hosts() {
        for p in PG_PACKAGES {
            assert_eq!(
                package_version(&lab, &h, p),
                pg_old,
                "{h} has the pinned {p}"
            );
        }
    }
    assert_eq!(package_version(&lab, "router1", "haproxy"), haproxy_old);
    let deployed = start_times(&lab).await;

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
            want.push((h.clone(), p.to_string(), pg_old.clone(), pg_new.clone()));
        }
    }
    want.push((
        "router1".into(),
        "haproxy".into(),
        haproxy_old.clone(),
        haproxy_new.clone(),
    ));
    want.sort();
    assert_eq!(changes, want, "--check lists exactly the pending changes");
    assert_eq!(doc["switchovers"], 1, "one switchover expected");
    for h in lab.db_hosts() {
        assert_eq!(
            package_version(&lab, &h, "postgresql-17"),
            pg_old,
            "--check changed nothing on {h}"
        );
    }
    assert_eq!(
        start_times(&lab).await,
        deployed,
        "--check restarted nothing"
    );
    assert_eq!(package_version(&lab, "router1", "haproxy"), haproxy_old);
    assert!(
        lab.sh("db1", "cat /etc/apt/preferences.d/pgha")
            .1
            .contains(&pg_old),
        "--check wrote no apt preferences (the pins are still there)"
    );

    // 3. The upgrade, killed after its first replica, with a writer running.
    let pw = lab.secret("superuser_password");
    let c = pg(&lab.router(), 5000, &pw).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE upg (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let writer = writer_going(&lab, &pw, "upg", 1).await;
    let inv2 = inv.clone();
    let seen = tokio::task::spawn_blocking(move || upgrade_killed_after_first_replica(&inv2))
        .await
        .unwrap();
    assert!(
        seen.iter().any(|l| l.contains("upgraded and streaming")),
        "the first run got through one replica: {seen:?}"
    );
    let upgraded: Vec<String> = lab
        .db_hosts()
        .into_iter()
        .filter(|h| package_version(&lab, h, "postgresql-17") == pg_new)
        .collect();
    assert!(
        !upgraded.is_empty() && upgraded.len() < 3,
        "killed midway: some members upgraded, not all ({upgraded:?})"
    );

    // 4. Run again: it continues from what the hosts show and finishes.
    let (code, out, _) = pgha(&["upgrade", &inv, "--output", "json"]);
    assert_eq!(code, 0, "the second upgrade finishes");
    acked(&writer, 20, Instant::now(), None).await;
    let acked = writer.stop().await;
    let doc = json_doc(&out);
    for h in &upgraded {
        assert!(
            doc["upgrade"]["hosts"].get(h).is_none(),
            "{h} was finished by the first run and not upgraded again: {doc}"
        );
    }

    let leader = healthy_cluster(&lab).await;
    for h in lab.db_hosts() {
        for p in PG_PACKAGES {
            assert_eq!(package_version(&lab, &h, p), pg_new, "{h} has the new {p}");
        }
    }
    // Every postmaster was restarted onto the new binary.
    let restarted = start_times(&lab).await;
    for (h, t) in &restarted {
        assert_ne!(Some(t), deployed.get(h), "{h}'s PostgreSQL was restarted");
    }
    for (h, exe) in postmaster_exes(&lab) {
        assert!(
            exe.ends_with("/postgres") && !exe.ends_with("(deleted)"),
            "{h} runs the new PostgreSQL binary: {exe}"
        );
    }
    assert_eq!(package_version(&lab, "router1", "haproxy"), haproxy_new);
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
