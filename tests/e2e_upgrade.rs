//! End-to-end: `pgha upgrade` on its own lab (`pgha-e2e-upgrade`). A cluster
//! deployed with PostgreSQL and HAProxy pinned to older builds, then upgraded to
//! Debian's current ones with the pins lifted while a writer inserts through :5000;
//! the first run is killed after its first replica and run again. A second writer
//! goes through PgBouncer on the router: it must see no error at all (the poolers
//! are paused around the switchover, and the next run resumes the ones a killed
//! run left paused). Last, a PgBouncer left running a replaced binary is
//! restarted by the upgrade (nothing else is) and takes clients again.
//! Assertions read the hosts and the running servers, not pgha's report.
//!
//! The older builds are the hosts' current candidates repackaged as `<version>~e2e`
//! (`pgha::lab::rehearsal`): a real package upgrade whatever the mirror holds today.

mod common;

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
    main_process(lab, "haproxy")
}

/// A unit's main process on router1: its PID and binary.
fn main_process(lab: &Lab, unit: &str) -> (String, String) {
    let (_, pid) = lab.sh(
        "router1",
        &format!("systemctl show -p MainPID --value {unit}.service"),
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

/// Members tagged nofailover (drained by pgha or anyone), sorted.
async fn tagged(lab: &Lab) -> Vec<String> {
    let mut t = Vec::new();
    for h in lab.db_hosts() {
        let st = lab.patroni_status(&h).await.expect("patroni status");
        if st["tags"]["nofailover"] == true {
            t.push(h);
        }
    }
    t
}

/// Members pgha's record in etcd says it tagged.
async fn recorded(lab: &Lab, key: &str) -> Vec<String> {
    let mut c = lab.etcd(&lab.db_hosts()[0]).await;
    let r = c.get(key, None).await.expect("etcd get");
    r.kvs()
        .first()
        .map(|kv| {
            let v: Value = serde_json::from_slice(kv.value()).expect("record JSON");
            v["tagged"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// Revoke the cluster lock's etcd lease from outside (as `pgha lock --break` or an
/// operator would), and wait until the key is gone.
async fn revoke_lock(lab: &Lab) {
    let mut c = lab.etcd(&lab.db_hosts()[0]).await;
    let key = format!("/pgha/{}/lock", lab.cluster_name());
    let r = c.get(key.as_str(), None).await.expect("etcd get");
    let lease = r
        .kvs()
        .first()
        .expect("the run holds the etcd lock")
        .lease();
    c.lease_revoke(lease)
        .await
        .expect("revoke the lock's lease");
    let r = c.get(key.as_str(), None).await.expect("etcd get");
    assert!(r.kvs().is_empty(), "the lock key went with its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_minor_versions_with_a_writer_and_an_interruption() {
    let lab = Lab::up_unmonitored(LAB).await;
    lab.add_vars("    pgbouncer_enabled: true\n    postgresql_users:\n      - name: pooluser\n");
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
    // router1 holds the backup repository too, with PostgreSQL's binaries for
    // restore tests: the pins apply to it as well.
    let mut on_router = PG_PACKAGES.to_vec();
    on_router.push("haproxy");
    let haproxy_new = older_builds(&lab, "router1", &on_router)
        .await
        .into_iter()
        .find(|(p, _)| p == "haproxy")
        .expect("haproxy's build on router1")
        .1;
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
    // The repository host's PostgreSQL (restore tests), upgraded with pgBackRest's
    // step.
    want.push((
        "router1".into(),
        "postgresql-17".into(),
        pg_old.clone(),
        pg_new.clone(),
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

    // 3. A pause someone else set (an operator's maintenance): refused, nothing
    // installed, the pause left as it is.
    let (code, out, err) = lab.sh_err("db1", "patronictl -c /etc/patroni/config.yml pause --wait");
    assert_eq!(code, 0, "patronictl pause: {out}{err}");
    let (code, _, stderr) = pgha(&["upgrade", &inv]);
    assert_eq!(code, 1, "an operator's pause refuses the upgrade: {stderr}");
    assert!(
        stderr.contains("paused") && stderr.contains("--force"),
        "names the pause and the way on: {stderr}"
    );
    assert_eq!(
        lab.patroni_status("db1").await.unwrap()["pause"],
        true,
        "the operator's pause is left alone"
    );
    assert_eq!(package_version(&lab, "db1", "postgresql-17"), pg_old);
    let (code, out, err) = lab.sh_err("db1", "patronictl -c /etc/patroni/config.yml resume --wait");
    assert_eq!(code, 0, "patronictl resume: {out}{err}");

    // 4. The upgrade, interrupted at exact steps with a writer running; each run
    // continues from what the hosts show (and pgha's record of what it set).
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE upg (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let writer = writer_going(&lab, "upg", 1).await;
    c.batch_execute(
        "CREATE TABLE upg_pooled (id int PRIMARY KEY, note text); GRANT ALL ON upg_pooled TO pooluser",
    )
    .await
    .unwrap();
    let pooluser = lab
        .target()
        .as_user("pooluser", &lab.secret("user.pooluser"), "postgres");
    let t0 = Instant::now();
    let pooled = pgha::lab::clients::Writer::start_pooled(&pooluser, 6432, "upg_pooled", 1);
    pooled
        .wait_acked(20, t0, None, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let work_key = format!("/pgha/{}/work", lab.cluster_name());
    let upgrade = ["upgrade", inv.as_str(), "--lock-wait", "90"];

    // a. Killed mid-drain: the first replica tagged, nothing installed.
    let mut run = PausedRun::start(&upgrade, &["upgrade:drained"]);
    run.paused_at("upgrade:drained", 1).await;
    let first = tagged(&lab).await;
    assert_eq!(first.len(), 1, "one member drained: {first:?}");
    let first = first[0].clone();
    run.kill();
    assert_eq!(
        recorded(&lab, &work_key).await,
        std::slice::from_ref(&first),
        "pgha recorded its tags"
    );
    assert_eq!(package_version(&lab, &first, "postgresql-17"), pg_old);

    // b. Killed mid-install: that replica's packages in, its PostgreSQL still the
    // old binary, still drained.
    let mut run = PausedRun::start(&upgrade, &["upgrade:installed"]);
    run.paused_at("upgrade:installed", 1).await;
    let installed: Vec<String> = lab
        .db_hosts()
        .into_iter()
        .filter(|h| package_version(&lab, h, "postgresql-17") == pg_new)
        .collect();
    assert_eq!(
        installed.len(),
        1,
        "one member's packages in: {installed:?}"
    );
    run.kill();

    // c. The lock revoked from outside while a run is paused between two steps: it
    // stops before its next change (no package on the member it drained), changes
    // nothing more, and leaves its record for the next run.
    let mut run = PausedRun::start(&upgrade, &["upgrade:drained"]);
    run.paused_at("upgrade:drained", 1).await;
    run.resume("upgrade:drained");
    run.paused_at("upgrade:drained", 2).await;
    let drained = tagged(&lab).await;
    assert_eq!(drained.len(), 1, "one member drained: {drained:?}");
    let drained = drained[0].clone();
    let old_before = package_version(&lab, &drained, "postgresql-17");
    revoke_lock(&lab).await;
    run.resume("upgrade:drained");
    let (code, _, stderr) = run.finish().await;
    assert_eq!(code, 1, "a run that lost its lock stops: {stderr}");
    assert!(
        stderr.contains("the cluster lock was lost") && stderr.contains("stopped before"),
        "names the loss and where it stopped: {stderr}"
    );
    assert_eq!(
        package_version(&lab, &drained, "postgresql-17"),
        old_before,
        "no package installed after the lock was lost"
    );
    assert_eq!(
        tagged(&lab).await,
        std::slice::from_ref(&drained),
        "its tags left for the next run"
    );
    assert_eq!(
        recorded(&lab, &work_key).await,
        std::slice::from_ref(&drained)
    );

    // d. Killed mid-switchover: Patroni completes it by itself.
    let mut run = PausedRun::start(&upgrade, &["switchover:requested"]);
    run.paused_at("switchover:requested", 1).await;
    run.kill();

    // e. Run again: it finishes.
    let (code, out, _) = pgha(&["upgrade", &inv, "--lock-wait", "90", "--output", "json"]);
    assert_eq!(code, 0, "the last upgrade finishes");
    acked(&writer, 20, Instant::now(), None).await;
    let acked = writer.stop().await;
    pooled
        .wait_acked(20, Instant::now(), None, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        pooled.errors().is_empty(),
        "the pooled writer saw errors across the upgrade and its interruptions: {:?}",
        pooled.errors()
    );
    let pooled_acked = pooled.stop().await;
    assert!(json_doc(&out)["ok"] == true, "{out}");
    assert!(
        recorded(&lab, &work_key).await.is_empty(),
        "pgha's record of what it set is gone"
    );
    assert!(tagged(&lab).await.is_empty(), "no member left tagged");

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
    assert_eq!(
        package_version(&lab, "router1", "postgresql-17"),
        pg_new,
        "the repository host's PostgreSQL upgraded too"
    );
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
    assert!(
        pooled_acked.len() > 50,
        "the pooled writer wrote throughout ({})",
        pooled_acked.len()
    );
    assert_no_loss(&lab, "upg_pooled", &pooled_acked).await;
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

    // 6. PgBouncer running a binary replaced under it (its package reinstalled with
    // service restarts held back, as an apt run that did not restart it leaves it):
    // the upgrade restarts it, and clients log in through it again.
    let (pid, _) = main_process(&lab, "pgbouncer");
    let (code, out) = lab.sh(
        "router1",
        "printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold --reinstall pgbouncer; \
         rc=$?; rm -f /usr/sbin/policy-rc.d; exit $rc",
    );
    assert_eq!(code, 0, "reinstall pgbouncer: {out}");
    assert_eq!(
        main_process(&lab, "pgbouncer"),
        (pid.clone(), "/usr/sbin/pgbouncer (deleted)".to_string()),
        "PgBouncer kept running on the replaced binary"
    );
    let (code, out, _) = pgha(&["upgrade", &inv, "--check", "--output", "json"]);
    assert_eq!(code, 0, "upgrade --check: {out}");
    let steps = json_doc(&out)["steps"].clone();
    assert_eq!(
        steps.as_array().map(Vec::len),
        Some(1),
        "one step, the router's: {steps}"
    );
    assert!(
        steps[0]
            .as_str()
            .unwrap_or("")
            .starts_with("router router1 (PgBouncer restarted"),
        "{steps}"
    );
    let before = start_times(&lab).await;
    let (haproxy_pid, _) = haproxy_master(&lab);
    let (code, out, err) = pgha(&["upgrade", &inv]);
    assert_eq!(code, 0, "upgrade restarting PgBouncer:\n{out}\n{err}");
    let (new_pid, exe) = main_process(&lab, "pgbouncer");
    assert_ne!(new_pid, pid, "PgBouncer restarted");
    assert_eq!(
        exe, "/usr/sbin/pgbouncer",
        "PgBouncer runs the binary on disk"
    );
    assert_eq!(start_times(&lab).await, before, "no PostgreSQL restarted");
    assert_eq!(haproxy_master(&lab).0, haproxy_pid, "HAProxy not restarted");
    let t = Instant::now();
    let again = pgha::lab::clients::Writer::start_pooled(&pooluser, 6432, "upg_pooled", 1_000_000);
    // As many acknowledgements as the no-loss check asks of a writer that was answered.
    again
        .wait_acked(20, t, None, std::time::Duration::from_secs(60))
        .await
        .expect("writes through the restarted PgBouncer");
    assert_no_loss(&lab, "upg_pooled", &again.stop().await).await;
    verify_every_backup(&lab);
}
