//! End-to-end: connection pooling on its own lab (`pgha-e2e-pool`: 3 db hosts and a
//! router, TLS on, `max_connections: 100`), PgBouncer on the router in front of its
//! HAProxy write port, observed through PgBouncer itself, PostgreSQL and the rows.
//!
//! A role created through the inventory logs in through the pooler (its password
//! looked up in PostgreSQL); a wrong password, a client without TLS and the
//! superuser are refused. 1000 clients connect at once through the pooled port and
//! each runs a query, while PostgreSQL serves them with a handful of connections.
//! A writer through the pooled port across `pgha switchover` sees no error and
//! every acknowledged row is present; `pgha pool pause` holds a query until
//! `pgha pool resume`; across a hard kill of the leader the pooled writer sees
//! errors only for the failover window and then writes again without reconnecting
//! by hand, nothing acknowledged lost.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgha::lab;
use pgha::lab::clients::{Target, Writer};

const LAB: &str = "pgha-e2e-pool";
const POOL_PORT: u16 = 6432;
const CLIENTS: usize = 1000;

/// The pooled port as `user` (into `postgres`, where the test's table is).
fn pooled(lab: &Lab, user: &str, password: &str) -> Target {
    lab.target().as_user(user, password, "postgres")
}

/// Server connections PostgreSQL's primary serves to the router (the pooler's).
async fn server_connections(lab: &Lab) -> i64 {
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    let router = lab.ip("router1");
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND host(client_addr) = $1",
        &[&router],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_clients_wait_through_a_switchover_and_survive_a_failover() {
    let lab = Lab::up_without_backups(LAB, true).await;
    lab.add_vars(
        "    pgbouncer_enabled: true\n    postgresql_parameters:\n      max_connections: 100\n    postgresql_users:\n      - name: pooluser\n",
    );
    let inv = lab.inventory();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy:\n{out}\n{err}");
    let leader = healthy_cluster(&lab).await;

    // PgBouncer runs on the router, on its own address only.
    let (code, _) = lab.sh("router1", "systemctl is-active -q pgbouncer");
    assert_eq!(code, 0, "pgbouncer runs on router1");
    let (_, listening) = lab.sh("router1", "ss -Htln");
    let ip = lab.ip("router1");
    assert!(
        listening.contains(&format!("{ip}:{POOL_PORT} ")),
        "{listening}"
    );
    assert!(
        !listening.contains(&format!("0.0.0.0:{POOL_PORT} ")),
        "{listening}"
    );
    // Scraped: every target up, PgBouncer's exporter among them.
    let mon = Monitor { host: "router1" };
    let mut hosts = lab.db_hosts();
    hosts.push("router1".into());
    let mut want = mon.targets(&lab.db_hosts(), &hosts, false);
    want.push(("pgbouncer".into(), "router1".into()));
    want.sort();
    mon.all_targets_up(&lab, &want).await;
    mon.expect_series(&lab, "pgbouncer_up", 1, |v| v == 1.0)
        .await;

    // A role from the inventory logs in through the pooler; the wrong password, no
    // TLS and the superuser do not.
    let pw = lab.secret("user.pooluser");
    let user = pooled(&lab, "pooluser", &pw);
    let c = pg(&user, POOL_PORT)
        .await
        .expect("pooluser through the pooler");
    let row = c
        .query_one("SELECT current_user::text, pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pooluser");
    assert!(!row.get::<_, bool>(1), "the pooler reaches the primary");
    drop(c);
    let wrong = pooled(&lab, "pooluser", "not-the-password");
    let Err(e) = pg(&wrong, POOL_PORT).await else {
        panic!("a wrong password is refused")
    };
    assert!(e.contains("authentication failed"), "{e}");
    let (code, _, err) = lab.sh_err(
        "db1",
        &format!(
            "PGPASSWORD='{pw}' psql 'host={ip} port={POOL_PORT} user=pooluser dbname=app sslmode=disable connect_timeout=5' -Atc 'select 1'"
        ),
    );
    assert_ne!(code, 0, "a client without TLS is refused");
    assert!(err.contains("SSL required"), "{err}");
    let su = lab.target();
    assert!(
        pg(&su, POOL_PORT).await.is_err(),
        "the superuser does not log in through the pooler"
    );

    // The test's table, written by pooluser.
    let a = pg(&lab.target(), 5000).await.unwrap();
    a.batch_execute(
        "CREATE TABLE pooled (id int PRIMARY KEY, note text); GRANT ALL ON pooled TO pooluser",
    )
    .await
    .unwrap();
    drop(a);

    // 1000 clients at once through the pooled port, max_connections 100.
    let t0 = Instant::now();
    let opened = futures_util::future::join_all((0..CLIENTS).map(|i| {
        let user = user.clone();
        async move {
            let c = pgha::probe::sql::connect_bounded(
                &user.net,
                &user.endpoint(POOL_PORT),
                Duration::from_secs(60),
            )
            .await?;
            let n: i32 = c
                .query_one("SELECT $1::int", &[&(i as i32)])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if n == i as i32 {
                Ok(c)
            } else {
                Err(format!("client {i} read {n}"))
            }
        }
    }))
    .await;
    let failed: Vec<&String> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    println!(
        "{CLIENTS} pooled clients connected and queried in {:?}",
        t0.elapsed()
    );
    // The pooler's server connections: a pool of default_pool_size (20) for
    // pooluser, its auth user's and the app role's from deploy's check, and this
    // test's own through the write port; far below max_connections.
    let servers = server_connections(&lab).await;
    println!("{CLIENTS} pooled clients served by {servers} server connections");
    assert!(
        (1..=45).contains(&servers),
        "{CLIENTS} clients served by {servers} server connections"
    );
    let (code, out, _) = pgha(&["pool", "show", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    let doc = json_doc(&out);
    let clients = doc["poolers"][0]["clients"].as_u64().unwrap_or(0);
    assert!(
        clients >= CLIENTS as u64,
        "pool show counts the clients: {doc}"
    );
    drop(opened);

    // A writer through the pooled port across a switchover: no error at all.
    let t = Instant::now();
    let writer = Writer::start_pooled(&user, POOL_PORT, "pooled", 1);
    writer
        .wait_acked(20, t, None, Duration::from_secs(60))
        .await
        .unwrap();
    let (_, router_clock) = lab.sh("router1", "date +%s.%N");
    let (code, out, err) = pgha(&["switchover", &inv, "--output", "json"]);
    assert_eq!(code, 0, "switchover:\n{out}\n{err}");
    let report = json_doc(&out);
    let pause = report["switchover"]["pooler_pause_secs"]
        .as_f64()
        .expect("the pause is reported");
    println!("pooled clients paused {pause:.2}s across the switchover");
    let new_leader = report["switchover"]["to"].as_str().unwrap().to_string();
    assert_ne!(new_leader, leader);
    // No request of pgha's was dropped half-way under Patroni's REST API (it
    // logs a traceback for each, e.g. when several members are asked at once and
    // the first answer is taken).
    for h in lab.db_hosts() {
        let (_, log) = lab.sh(&h, "journalctl -u patroni --no-pager -o cat");
        assert!(
            !log.contains("Exception happened during processing of request"),
            "Patroni on {h} logged a request cut off under it:\n{}",
            lab.journal(&h, "patroni", 80)
        );
    }
    let since = Instant::now();
    writer
        .wait_acked(
            20,
            since,
            Some(&lab.ip(&new_leader)),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(
        writer.errors().is_empty(),
        "the pooled writer saw errors across the switchover: {:?}",
        writer.errors()
    );
    let acked = writer.stop().await;
    assert!(acked.len() > 40, "the writer wrote: {}", acked.len());
    assert_no_loss(&lab, "pooled", &acked).await;

    // A parameter that needs a restart, raised (replicas, then a switchover) and
    // lowered (the leader restarted in place first), under a pooled writer: no
    // error either time.
    for (was, n, first_id) in [(100, 120, 200_000), (120, 100, 300_000)] {
        let before = std::fs::read_to_string(&inv).unwrap();
        let text = before.replace(
            &format!("      max_connections: {was}\n"),
            &format!("      max_connections: {n}\n"),
        );
        assert_ne!(text, before, "max_connections set from {was} to {n}");
        std::fs::write(&inv, text).unwrap();
        let t = Instant::now();
        let writer = Writer::start_pooled(&user, POOL_PORT, "pooled", first_id);
        writer
            .wait_acked(20, t, None, Duration::from_secs(60))
            .await
            .unwrap();
        let (code, out, err) = pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy max_connections {n}:\n{out}\n{err}");
        writer
            .wait_acked(20, Instant::now(), None, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            writer.errors().is_empty(),
            "the pooled writer saw errors across max_connections {n}: {:?}",
            writer.errors()
        );
        let acked = writer.stop().await;
        assert_no_loss(&lab, "pooled", &acked).await;
        for h in lab.db_hosts() {
            let (_, v) = lab.sh(
                &h,
                "runuser -u postgres -- psql -XAtc 'show max_connections'",
            );
            assert_eq!(v.trim(), n.to_string(), "{h} runs max_connections {n}");
        }
    }

    // pgha pointed the write port at the new leader through HAProxy's runtime API
    // (as root over SSH) as soon as Patroni named it primary; HAProxy records why a
    // server came UP. Read over the switchover and the two parameter changes (a
    // switchover, then the leader restarted in place): HAProxy's own check can win
    // one such race by a few milliseconds (it then logs its check instead), not all.
    let (_, haproxy_log) = lab.sh(
        "router1",
        &format!(
            "journalctl -u haproxy --no-pager -o cat --since @{}",
            router_clock.trim()
        ),
    );
    assert!(
        haproxy_log.contains("is UP, changed from CLI"),
        "HAProxy's write port was never pointed at a new leader by pgha:\n{haproxy_log}"
    );

    // pause holds a query of a client already logged in; resume lets it finish.
    let c = pg(&user, POOL_PORT)
        .await
        .expect("connect before the pause");
    let (code, out, err) = pgha(&["pool", "pause", &inv]);
    assert_eq!(code, 0, "pool pause:\n{out}\n{err}");
    let held = tokio::spawn(async move {
        c.query_one("SELECT 1", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Instant::now())
    });
    // Observed held: PgBouncer counts it waiting.
    eventually("a client waiting at the paused pooler", 30, || async {
        let (_, out, _) = pgha(&["pool", "show", &inv, "--output", "json"]);
        let d = json_doc(&out);
        match d["poolers"][0]["waiting"].as_u64() {
            Some(w) if w >= 1 => Ok(()),
            _ => Err(d.to_string()),
        }
    })
    .await;
    assert!(
        !held.is_finished(),
        "the query went through a paused pooler"
    );
    let resumed = Instant::now();
    let (code, _, _) = pgha(&["pool", "resume", &inv]);
    assert_eq!(code, 0);
    let done = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held query finishes after resume")
        .unwrap()
        .expect("the held query succeeds");
    assert!(done >= resumed);
    // A pooler left paused is shown by status, and a deploy puts it back in
    // service.
    let (code, _, _) = pgha(&["pool", "pause", &inv]);
    assert_eq!(code, 0);
    let (code, out, _) = pgha(&["status", &inv]);
    assert!(out.contains("pooler router1: PAUSED"), "{out}");
    assert_eq!(code, 1, "a paused pooler degrades the cluster: {out}");
    assert!(out.contains("pooler on router1 paused: its"), "{out}");
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with a paused pooler:\n{out}\n{err}");
    let (_, out, _) = pgha(&["pool", "show", &inv, "--output", "json"]);
    assert_eq!(json_doc(&out)["poolers"][0]["paused"], false, "{out}");
    let c = pg(&user, POOL_PORT)
        .await
        .expect("connect after the deploy");
    c.query_one("SELECT 1", &[]).await.expect("served again");
    drop(c);

    // A hard kill of the leader: errors for the failover window only, then the
    // same writer writes again by itself; nothing acknowledged is lost.
    let leader = healthy_cluster(&lab).await;
    let t = Instant::now();
    let writer = Writer::start_pooled(&user, POOL_PORT, "pooled", 100_000);
    writer
        .wait_acked(20, t, None, Duration::from_secs(60))
        .await
        .unwrap();
    let killed = Instant::now();
    lab::kill(LAB, &leader).await.expect("lab kill");
    let new_leader = eventually("a new leader", 120, || async {
        match patroni_cluster(&lab).await {
            Ok((l, _)) if !l.is_empty() && l != leader => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    writer
        .wait_acked(
            20,
            Instant::now(),
            Some(&lab.ip(&new_leader)),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let errors = writer.errors();
    let last_error = errors.last().map(|(at, _)| at.duration_since(killed));
    println!(
        "failover through the pooler: {} error(s), the last {:?} after the kill",
        errors.len(),
        last_error
    );
    let acked = writer.stop().await;
    lab::start(LAB, &leader).await.expect("lab start");
    healthy_cluster(&lab).await;
    assert_no_loss(&lab, "pooled", &acked).await;

    // status shows the pooler.
    let (_, out, _) = pgha(&["status", &inv]);
    assert!(out.contains("pooler router1: "), "{out}");

    // Pooling turned off: deploy stops and disables PgBouncer and its exporter on
    // the router (nothing listens on the pooled port any more), and the next
    // deploy has nothing left to do.
    let text = std::fs::read_to_string(&inv).unwrap();
    let off = text.replace(
        "    pgbouncer_enabled: true\n",
        "    pgbouncer_enabled: false\n",
    );
    assert_ne!(off, text);
    std::fs::write(&inv, off).unwrap();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with pooling off:\n{out}\n{err}");
    for unit in ["pgbouncer", "prometheus-pgbouncer-exporter"] {
        let (_, state) = lab.sh(
            "router1",
            &format!("systemctl is-active {unit}; systemctl is-enabled {unit}"),
        );
        assert_eq!(
            state.split_whitespace().collect::<Vec<_>>(),
            ["inactive", "disabled"],
            "{unit} stopped and disabled: {state}"
        );
    }
    let (_, listening) = lab.sh("router1", "ss -Htln");
    assert!(
        !listening.contains(&format!(":{POOL_PORT} ")),
        "nothing listens on the pooled port: {listening}"
    );
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_doc(&out)["changed"], 0, "nothing left to do: {out}");
}
