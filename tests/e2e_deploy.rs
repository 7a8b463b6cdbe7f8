//! End-to-end: `pgha deploy` onto real lab hosts (Docker containers booting systemd
//! and sshd, real Debian packages). Every assertion reads live state: etcd members,
//! Patroni roles, rows in PostgreSQL, HAProxy stats, exporter metrics.
//!
//! Two labs run side by side: `pgha-e2e` (root) for the cluster lifecycle, and
//! `pgha-e2e-user` (non-root `deploy` user with sudo) for refusals and sudo.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgha::lab;
use serde_json::Value;

fn deploy_json(inventory: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["deploy", "-i", inventory, "--output", "json"];
    args.extend_from_slice(extra);
    let (code, stdout, _) = pgha(&args);
    let doc = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    (code, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_rerun_reconfigure_and_survive_leader_loss() {
    let lab = Lab::up("pgha-e2e", "root").await;
    let inv = lab.inventory();

    // 1. Bare hosts -> cluster.
    let (code, doc) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "first deploy");
    assert!(doc["changed"].as_u64().unwrap() > 0);

    // Observed independently of pgha's report.
    check_etcd(&lab).await;
    let leader = healthy_cluster(&lab).await;
    let (code, out) = lab.sh(
        &leader,
        "dpkg-query -W -f='${Version}' postgresql-17 patroni etcd-server",
    );
    assert_eq!(code, 0, "packages installed on {leader}: {out}");
    let (_, clusters) = lab.sh("db2", "ls /etc/postgresql/17 2>/dev/null | wc -l");
    assert_eq!(
        clusters.trim(),
        "0",
        "no Debian-managed 17/main cluster next to Patroni's"
    );
    let router = lab.router();
    let w = pg(&lab.target(), 5000).await.expect("connect :5000");
    w.batch_execute("CREATE TABLE e2e (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    w.execute("INSERT INTO e2e VALUES (1, 'through the router')", &[])
        .await
        .unwrap();
    let on_primary: bool = w
        .query_one("SELECT NOT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(on_primary, "port 5000 reaches the primary");
    replica_count(&lab, "SELECT count(*) FROM e2e WHERE id = 1", 1).await;
    let metrics = reqwest::get(format!("http://{}:9187/metrics", lab.ip("db1")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "pg_up 1"),
        "exporter on db1 reports pg_up 1"
    );
    // The stats page wants pgha's password, and listens on the router's address only.
    let anonymous = reqwest::get(format!("http://{router}:8404/;csv"))
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        401,
        "the stats page refuses anonymous reads"
    );
    let (_, listening) = lab.sh("router1", "ss -ltnH 'sport = :8404'");
    assert!(
        listening.contains(&format!("{router}:8404")) && !listening.contains("0.0.0.0:8404"),
        "stats bound to the router's address: {listening}"
    );
    let (_, listening) = lab.sh("db1", "ss -ltnH 'sport = :9187'");
    assert!(
        listening.contains(&format!("{}:9187", lab.ip("db1"))),
        "the exporter bound to its host's address: {listening}"
    );
    let csv = haproxy_csv(&lab).await;
    let up: Vec<&str> = csv
        .lines()
        .filter(|l| l.starts_with("primary,db") && l.contains(",UP,"))
        .collect();
    assert_eq!(
        up.len(),
        1,
        "exactly one server UP in the primary backend: {csv}"
    );
    assert!(
        up[0].starts_with(&format!("primary,{leader},")),
        "the UP server is the leader {leader}"
    );
    let secrets_mode = std::fs::metadata(lab.info.dir.join("inventory.secrets.yml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&secrets_mode.permissions()) & 0o777,
        0o600
    );

    // 2. Re-run: nothing changes, nothing restarts.
    let before = start_times(&lab).await;
    let (code, doc) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "second deploy");
    assert_eq!(doc["changed"], 0, "second deploy changes nothing: {doc}");
    assert_eq!(start_times(&lab).await, before, "no PostgreSQL restarted");
    assert_eq!(healthy_cluster(&lab).await, leader, "leader unchanged");

    // 2b. Replicas whose Patroni runs without pgha's environment (as deployed by an
    // older pgha, or by a run stopped before the restart): the deploy restarts
    // them under pause, PostgreSQL keeps running. The first deploy is stopped
    // after one restart, the cluster paused; the next one finishes and resumes.
    let patroni_env = |h: &str| {
        lab.sh(
            h,
            "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value patroni)/environ | grep '^PYTHONPATH=' || true",
        )
        .1
        .trim()
        .to_string()
    };
    const ENV: &str = "PYTHONPATH=/etc/patroni/python";
    for h in lab.db_hosts() {
        assert_eq!(patroni_env(&h), ENV, "Patroni on {h} started with it");
    }
    let replicas: Vec<String> = lab
        .db_hosts()
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    for (i, r) in replicas.iter().enumerate() {
        // One without the files, one with them (only its process lacks it).
        let script = if i == 0 {
            "rm -f /etc/patroni_env.conf /etc/patroni/python/sitecustomize.py && systemctl restart patroni"
        } else {
            "mv /etc/patroni_env.conf /root/env && systemctl restart patroni && mv /root/env /etc/patroni_env.conf"
        };
        let (code, out) = lab.sh(r, script);
        assert_eq!(code, 0, "{out}");
    }
    healthy_cluster(&lab).await;
    for r in &replicas {
        assert_eq!(patroni_env(r), "", "{r}'s Patroni runs without it");
    }
    let before = start_times(&lab).await;
    let (code, out, _) = pgha_env(
        &["deploy", &inv],
        &[("PGHA_FAIL_ONCE", "patroni:under-pause")],
    );
    assert_ne!(code, 0, "the deploy stopped midway: {out}");
    let leader_status = || async { lab.patroni_status(&leader).await.expect("leader's status") };
    assert_eq!(leader_status().await["pause"], true, "left paused: {out}");
    let restarted = replicas.iter().filter(|r| patroni_env(r) == ENV).count();
    assert_eq!(restarted, 1, "one replica restarted before the stop: {out}");
    let (code, doc) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "the next deploy finishes: {doc}");
    assert!(doc["changed"].as_u64().unwrap() > 0, "{doc}");
    for r in &replicas {
        assert_eq!(patroni_env(r), ENV, "{r}'s Patroni was restarted with it");
    }
    assert_eq!(
        start_times(&lab).await,
        before,
        "no PostgreSQL restarted (Patroni restarted under pause)"
    );
    assert_eq!(healthy_cluster(&lab).await, leader, "leader unchanged");
    assert_ne!(
        leader_status().await["pause"],
        true,
        "the pause the stopped run left is gone"
    );
    // Stopped right after its only restart: no Patroni is left to restart, only
    // the pause, which the next deploy finds in pgha's record and lifts.
    let (code, out) = lab.sh(
        &replicas[0],
        "mv /etc/patroni_env.conf /root/env && systemctl restart patroni && mv /root/env /etc/patroni_env.conf",
    );
    assert_eq!(code, 0, "{out}");
    healthy_cluster(&lab).await;
    let before = start_times(&lab).await;
    let (code, out, _) = pgha_env(
        &["deploy", &inv],
        &[("PGHA_FAIL_ONCE", "patroni:under-pause")],
    );
    assert_ne!(code, 0, "the deploy stopped after its restart: {out}");
    assert_eq!(leader_status().await["pause"], true, "left paused: {out}");
    assert_eq!(patroni_env(&replicas[0]), ENV, "{out}");
    let (code, out, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("paused by an interrupted pgha run"), "{out}");
    assert_ne!(leader_status().await["pause"], true, "resumed: {out}");
    assert_eq!(start_times(&lab).await, before, "no PostgreSQL restarted");
    let replica = &replicas[0];
    // What the module does, in Patroni's Python as Patroni's user.
    let (code, out) = lab.sh(
        replica,
        "runuser -u postgres -- env PYTHONPATH=/etc/patroni/python python3 -c \
         'import http.server; print(http.server.BaseHTTPRequestHandler.disable_nagle_algorithm)'",
    );
    assert_eq!(
        (code, out.trim()),
        (0, "True"),
        "Patroni's REST API turns TCP_NODELAY on"
    );

    // 3. Config change: work_mem (reload) and max_connections (restart: rolled).
    let text = std::fs::read_to_string(&inv).unwrap();
    let changed = text.replacen(
        "vars:\n",
        "vars:\n    postgresql_parameters:\n      work_mem: 8MB\n      max_connections: 250\n",
        1,
    );
    assert_ne!(text, changed, "inventory has an all.vars block");
    std::fs::write(&inv, changed).unwrap();
    let (code, _) = deploy_json(&inv, &[]);
    assert_eq!(code, 0, "deploy with changed parameters");
    let new_leader = healthy_cluster(&lab).await;
    for h in ["db1", "db2", "db3"] {
        let (_, out) = lab.sh(
            h,
            "runuser -u postgres -- psql -XAtc 'show max_connections' -c 'show work_mem'",
        );
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["250", "8MB"],
            "{h} runs the new settings"
        );
    }
    assert_ne!(
        new_leader, leader,
        "the leader was restarted last, after a switchover"
    );
    let w = pg(&lab.target(), 5000)
        .await
        .expect("connect :5000 after rolling restart");
    let n: i64 = w
        .query_one("SELECT count(*) FROM e2e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "rows survive the rolling restart");

    // 4. Hard kill of the leader while a writer runs: no acknowledged write is lost.
    let leader = new_leader;
    let writer = writer_going(&lab, "e2e", 1000).await;
    // New connections through :5000 all along: none may hang in HAProxy.
    let connector = Connector::start(&lab.target());
    lab::kill(&lab.info.name, &leader).await.expect("lab kill");
    let survivors: Vec<&str> = ["db1", "db2", "db3"]
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    let promoted = eventually("a surviving replica to become leader", 120, || async {
        for h in &survivors {
            if let Ok(v) = lab.patroni_status(h).await
                && v["role"] == "primary"
                && v["state"] == "running"
            {
                return Ok(h.to_string());
            }
        }
        Err("no survivor is primary yet".to_string())
    })
    .await;
    assert_ne!(promoted, leader);
    eventually("writes through :5000 to succeed again", 120, || async {
        let c = pg(&lab.target(), 5000).await?;
        let insert = c.execute(
            "INSERT INTO e2e VALUES (999999, 'after failover') ON CONFLICT DO NOTHING",
            &[],
        );
        match tokio::time::timeout(Duration::from_secs(3), insert).await {
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 3 s".to_string()),
        }
    })
    .await;
    // The writer itself is answered by the new leader again.
    acked(&writer, 20, Instant::now(), Some(&lab.ip(&promoted))).await;
    let acked = writer.stop().await;
    let attempts = connector.stop().await;
    let slowest = attempts.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let hung = attempts
        .iter()
        .filter(|(d, _)| *d > Duration::from_secs(8))
        .count();
    eprintln!(
        "{} connection attempts during the failover, {} succeeded, slowest {:.1}s",
        attempts.len(),
        attempts.iter().filter(|(_, ok)| *ok).count(),
        slowest.as_secs_f64()
    );
    assert_eq!(
        hung,
        0,
        "connections through :5000 that did not end within 8 s of a hard kill: {hung} of {}",
        attempts.len()
    );
    assert!(
        attempts.iter().any(|(_, ok)| !*ok),
        "some attempts fell into the outage (the kill was observed)"
    );
    assert!(
        acked.len() > 10,
        "the writer got acknowledgements ({})",
        acked.len()
    );
    assert_no_loss(&lab, "e2e", &acked).await;

    // 5. The old leader comes back as a replica by itself.
    lab::start(&lab.info.name, &leader)
        .await
        .expect("lab start");
    eventually(
        &format!("{leader} to rejoin as a streaming replica"),
        180,
        || async {
            let (l, members) = patroni_cluster(&lab).await?;
            let m = members
                .iter()
                .find(|m| m.name == leader)
                .ok_or("not listed")?;
            if l != leader && m.state == "streaming" {
                Ok(())
            } else {
                Err(format!("{members:?}"))
            }
        },
    )
    .await;
    verify_every_backup(&lab);
}

fn untouched(lab: &Lab, host: &str) {
    let (_, pkgs) = lab.sh(host, "dpkg-query -W -f='${Status}\\n' postgresql-17 etcd-server haproxy 2>/dev/null | grep -c installed");
    assert_eq!(pkgs.trim(), "0", "{host}: no package installed");
    let (_, files) = lab.sh(host, "ls /etc/apt/sources.list.d/pgha.list /etc/postgresql-common/createcluster.conf 2>/dev/null | wc -l");
    assert_eq!(files.trim(), "0", "{host}: no file written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_touch_nothing_then_non_root_deploy_works() {
    // TLS off here: the plain-text path keeps a run of its own.
    let lab = Lab::up_tls("pgha-e2e-user", "deploy", 3, false).await;
    let inv = lab.inventory();
    let text = std::fs::read_to_string(&inv).unwrap();
    assert!(
        text.contains("ansible_user: deploy"),
        "lab inventory uses the deploy user"
    );

    // Invalid inventory: exit 4, no host touched.
    let bad = lab.info.dir.join("bad.yml");
    std::fs::write(
        &bad,
        text.replacen("vars:\n", "vars:\n    postgresql_verison: 17\n", 1),
    )
    .unwrap();
    let (code, _, stderr) = pgha(&["deploy", "-i", bad.to_str().unwrap()]);
    assert_eq!(code, 4, "invalid inventory exit code");
    assert!(
        stderr.contains("postgresql_version"),
        "did-you-mean names the right key: {stderr}"
    );
    for h in ["db1", "db2", "db3", "router1"] {
        untouched(&lab, h);
    }

    // One unreachable host: exit 3 naming it, the other hosts untouched.
    let dead = format!("{}.250", lab.ip("db3").rsplit_once('.').unwrap().0);
    let unreachable = lab.info.dir.join("unreachable.yml");
    std::fs::write(&unreachable, text.replace(&lab.ip("db3"), &dead)).unwrap();
    let (code, _, stderr) = pgha(&[
        "deploy",
        "-i",
        unreachable.to_str().unwrap(),
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(code, 3, "unreachable host exit code");
    assert!(
        stderr.contains("db3") && stderr.contains(&dead),
        "names host and address: {stderr}"
    );
    for h in ["db1", "db2", "router1"] {
        untouched(&lab, h);
    }

    // The real deploy, as `deploy` through sudo.
    let (code, _, _) = pgha(&["deploy", "-i", &inv]);
    assert_eq!(code, 0, "deploy as the non-root user");
    healthy_cluster(&lab).await;
    let (_, owner) = lab.sh("db1", "stat -c '%U %a' /etc/patroni/config.yml");
    assert_eq!(
        owner.trim(),
        "postgres 600",
        "patroni config owned by postgres, mode 0600"
    );
    let (_, grep) = lab.sh(
        "db1",
        &format!(
            "grep -c {} /etc/patroni/config.yml",
            lab.secret("superuser_password")
        ),
    );
    assert_eq!(
        grep.trim(),
        "1",
        "the generated superuser password is what Patroni uses"
    );

    // --check --diff on a changed parameter: shows the change with secrets redacted,
    // and changes nothing.
    let changed = text.replacen(
        "vars:\n",
        "vars:\n    postgresql_parameters:\n      work_mem: 12MB\n",
        1,
    );
    std::fs::write(&inv, &changed).unwrap();
    // Drift on db1: its password lines edited by hand, so the diff must show that
    // they differ, without their values.
    let (code, _) = lab.sh(
        "db1",
        "sed -i 's/^\\( *\\)password: .*/\\1password: \"tampered\"/' /etc/patroni/config.yml",
    );
    assert_eq!(code, 0);
    let (code, stdout, stderr) = pgha(&["deploy", "-i", &inv, "--check", "--diff"]);
    assert_eq!(code, 0, "--check exit code");
    let shown = format!("{stdout}{stderr}");
    assert!(
        shown.contains("work_mem"),
        "the diff shows the parameter: {shown}"
    );
    // The drifted lines are in the diff as changed secrets, masked on both sides: a
    // value tampered with on a host is a secret too.
    assert!(
        shown.contains("-      password: <redacted (old)>"),
        "the drifted lines are in the diff: {shown}"
    );
    assert!(
        shown.contains("+      password: <redacted (new)>"),
        "the wanted password is redacted: {shown}"
    );
    assert!(
        !shown.contains("tampered"),
        "the host's value is not shown: {shown}"
    );
    for key in [
        "superuser_password",
        "replication_password",
        "rewind_password",
        "patroni_api_password",
        "haproxy_stats_password",
    ] {
        assert!(
            !shown.contains(&lab.secret(key)),
            "{key} leaked into --check --diff output"
        );
    }
    let show_work_mem = || {
        lab.sh("db1", "runuser -u postgres -- psql -XAtc 'show work_mem'")
            .1
    };
    assert_eq!(show_work_mem().trim(), "4MB", "--check changed nothing");

    // --limit is refused for a cluster-wide change, with the reason (exit 5).
    let (code, _, stderr) = pgha(&["deploy", "-i", &inv, "--limit", "db1"]);
    assert_eq!(code, 5, "--limit refused");
    assert!(
        stderr.contains("dynamic configuration"),
        "names the reason: {stderr}"
    );
    assert_eq!(
        show_work_mem().trim(),
        "4MB",
        "a refused --limit changed nothing"
    );

    // The real run repairs the drift and applies the parameter (a reload, no restart).
    let (code, _, _) = pgha(&["deploy", "-i", &inv]);
    assert_eq!(code, 0, "deploy repairs drift");
    eventually("work_mem 12MB on db1", 30, || async {
        let v = show_work_mem();
        if v.trim() == "12MB" { Ok(()) } else { Err(v) }
    })
    .await;
    let (_, tampered) = lab.sh("db1", "grep -c tampered /etc/patroni/config.yml");
    assert_eq!(tampered.trim(), "0", "drifted lines restored");
    healthy_cluster(&lab).await;
    verify_every_backup(&lab);
}
