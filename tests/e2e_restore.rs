//! End-to-end: `pgha restore` on its own lab (`pgha-e2e-restore`), observed on
//! PostgreSQL, Patroni and the repository host independently of pgha.
//!
//! The repository's server stopped under a writer: no write fails, status names
//! the failing archiving, and catches up when it is back. Bad targets are refused with nothing changed. Then the point-in-time test: a
//! table and rows, the time T, the table dropped and more written; `restore --time
//! T`, interrupted (killed) once the member is restored while every old data
//! directory is kept aside, and finished by `--resume`: the table is back with its
//! rows, every write acknowledged before T is there and none sent after T, all
//! three members stream on a new timeline, a WAL switch reaches the repository, a
//! new full backup exists (and passes `backup verify`), nothing is left aside.
//! Then the disaster: every db host replaced by a bare one, `restore --latest`
//! builds the cluster from the repository alone with every write acknowledged
//! before the last archived WAL. Last, `destroy` with the data kept and a deploy
//! bring the same cluster back with every row; `destroy --wipe-data` stops and disables
//! everything and removes the data (the repository kept aside), and a deploy
//! builds a new, empty cluster on the same hosts.

mod common;

use std::time::Instant;

use common::*;
use pgha::lab;

const LAB: &str = "pgha-e2e-restore";

/// Every member's timeline, from Patroni.
async fn timelines(lab: &Lab) -> Vec<(String, Option<u64>, String)> {
    let (_, members) = patroni_cluster(lab).await.expect("patroni cluster");
    members
        .into_iter()
        .map(|m| (m.name, m.timeline, m.state))
        .collect()
}

fn aside_count(lab: &Lab, host: &str) -> usize {
    let (_, out) = lab.sh(
        host,
        "ls -d /var/lib/postgresql/17/main.before-restore-* 2>/dev/null | wc -l",
    );
    out.trim().parse().unwrap_or(0)
}

/// `pgha status`'s exit code and its reasons.
fn status(lab: &Lab) -> (i32, Vec<String>) {
    let (code, out, _) = pgha(&["status", &lab.inventory(), "--output", "json"]);
    let doc = json_doc(&out);
    let reasons = doc["verdict"]["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    (code, reasons)
}

/// The repository unreachable under a writer (its pgBackRest server stopped): no
/// write fails, status turns degraded naming the archiving once it has failed past
/// `backup_archive_fail_minutes`, and when the server is back the archive catches
/// up by itself and status is healthy again.
async fn repository_outage(lab: &Lab, leader: &str) {
    let inv = lab.inventory();
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(
        &inv,
        text.replace("  vars:\n", "  vars:\n    backup_archive_fail_minutes: 1\n"),
    )
    .unwrap();
    lab.psql(leader, "CREATE TABLE rs_o (id int PRIMARY KEY, note text)");
    let writer = writer_going(lab, "rs_o", 1).await;
    let (code, _) = lab.sh(BACKUP_REPO, "systemctl stop pgbackrest");
    assert_eq!(code, 0, "stop the repository's pgBackRest server");
    let down = Instant::now();
    lab.psql(leader, "SELECT pg_switch_wal()");
    let reasons = eventually("status to name the failing archiving", 240, || async {
        match status(lab) {
            (1, r) if r.iter().any(|x| x.contains("WAL archiving has failed")) => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!("status while the repository is down: {reasons:?}");
    acked(&writer, 20, down, None).await;
    let (code, _) = lab.sh(BACKUP_REPO, "systemctl start pgbackrest");
    assert_eq!(code, 0, "start the repository's pgBackRest server");
    switch_reaches_repository(lab, leader).await;
    eventually("status healthy again", 180, || async {
        match status(lab) {
            (0, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let acks = writer.stop().await;
    assert_no_loss(lab, "rs_o", &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_restore_resumed_then_the_whole_cluster_from_the_repository() {
    let lab = Lab::up_unmonitored(LAB).await;
    let inv = lab.inventory();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy:\n{out}\n{err}");
    let leader = healthy_cluster(&lab).await;
    repository_outage(&lab, &leader).await;
    let started = start_times(&lab).await;

    // Refusals: exit 5, the cause named, nothing changed.
    for (args, says) in [
        (vec!["--time", "2026-12-02 10:15:00"], "time zone"),
        (vec!["--time", "2999-01-01T00:00:00Z"], "in the future"),
        (
            vec!["--time", "2001-01-01T00:00:00Z"],
            "before the end of the oldest backup",
        ),
        (vec!["--lsn", "nonsense"], "not a WAL position"),
        (vec!["--latest"], "add --yes"),
        (vec!["--resume", "--yes"], "no restore of"),
    ] {
        let mut a = vec!["restore", inv.as_str()];
        a.extend(args.iter().copied());
        let (code, _, err) = pgha(&a);
        assert_eq!(code, 5, "pgha {a:?} must be refused:\n{err}");
        assert!(
            err.contains(says),
            "pgha {a:?} names the cause ({says}):\n{err}"
        );
    }
    // --check: the plan for a target inside the window, nothing changed.
    let now = clock_utc(&lab, &leader);
    let (code, out, err) = pgha(&[
        "restore", &inv, "--time", &now, "--check", "--output", "json",
    ]);
    assert_eq!(code, 0, "restore --check:\n{out}\n{err}");
    let plan = json_doc(&out);
    assert_eq!(plan["check"], true, "{plan}");
    assert_eq!(plan["restore"]["member"], leader.as_str(), "{plan}");
    assert_eq!(
        start_times(&lab).await,
        started,
        "a refusal restarted a member"
    );
    let old_timeline = timelines(&lab).await[0].1.unwrap_or(0);

    // The marker: rs_t and its rows before T; dropped after T, rs_after created.
    lab.psql(
        &leader,
        "CREATE TABLE rs_t AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    lab.psql(&leader, "CREATE TABLE rs_w (id int PRIMARY KEY, note text)");
    let writer = writer_going(&lab, "rs_w", 1).await;
    let before_t = Instant::now();
    let t = clock_utc(&lab, &leader);
    let after_t = Instant::now();
    lab.psql(&leader, "DROP TABLE rs_t");
    lab.psql(&leader, "CREATE TABLE rs_after AS SELECT 1 AS id");
    acked(&writer, 20, after_t, None).await;
    let acks = writer.stop().await;
    let present = acked_before(&acks, before_t);
    let absent: Vec<i32> = acks
        .iter()
        .filter(|a| a.sent > after_t)
        .map(|a| a.id)
        .collect();
    assert!(
        present.len() >= 20 && absent.len() >= 20,
        "writes on both sides of T"
    );

    // Interrupted once the member is restored: every old data directory is kept.
    let mut run = PausedRun::start(
        &["restore", &inv, "--time", &t, "--yes"],
        &["restore:restored"],
    );
    run.paused_at("restore:restored", 1).await;
    for h in lab.db_hosts() {
        assert_eq!(aside_count(&lab, &h), 1, "{h}'s old data is kept aside");
    }
    let (out, err) = run.kill();
    assert!(
        out.contains("restored to time") || err.contains("restored to time"),
        "the member was restored before the kill:\n{out}\n{err}"
    );
    let record = format!("/var/lib/pgha/restore-{}.json", lab.cluster_name());
    let (code, _) = lab.sh(BACKUP_REPO, &format!("test -s {record}"));
    assert_eq!(
        code, 0,
        "the interrupted restore is recorded on {BACKUP_REPO}"
    );
    let (code, out, err) = pgha(&[
        "restore",
        &inv,
        "--resume",
        "--yes",
        "--lock-wait",
        "120",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "restore --resume:\n{out}\n{err}");
    let report = json_doc(&out);
    assert_eq!(report["ok"], true, "{report}");

    let leader = healthy_cluster(&lab).await;
    assert_eq!(lab.psql(&leader, "SELECT count(*) FROM rs_t"), "100");
    assert_eq!(
        lab.psql(&leader, "SELECT to_regclass('rs_after') IS NULL"),
        "t",
        "a table created after T is gone"
    );
    assert_present(&lab, "rs_w", &present).await;
    let ids: String = absent
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        lab.psql(
            &leader,
            &format!("SELECT count(*) FROM rs_w WHERE id IN ({ids})")
        ),
        "0",
        "no write sent after T survives"
    );
    let tls = timelines(&lab).await;
    assert_eq!(tls.len(), 3, "{tls:?}");
    let new_timeline = tls[0].1.unwrap_or(0);
    assert!(new_timeline > old_timeline, "{tls:?}");
    assert!(
        tls.iter().all(|(_, tl, state)| *tl == Some(new_timeline)
            && (state == "running" || state == "streaming")),
        "every member on timeline {new_timeline}: {tls:?}"
    );
    switch_reaches_repository(&lab, &leader).await;
    let info = repo_info(&lab);
    let newest_backup = newest(&info);
    assert_eq!(newest_backup["type"], "full", "{info}");
    assert_eq!(
        report["restore"]["backup"], newest_backup["label"],
        "the restore's new full backup: {report}"
    );
    for h in lab.db_hosts() {
        assert_eq!(aside_count(&lab, &h), 0, "nothing is left aside on {h}");
    }
    let (code, _) = lab.sh(BACKUP_REPO, &format!("test -e {record}"));
    assert_ne!(code, 0, "the record is removed once the restore is done");
    let (code, out, err) = pgha(&["backup", "verify", &inv, "--output", "json"]);
    assert_eq!(code, 0, "backup verify:\n{out}\n{err}");
    assert_eq!(json_doc(&out)["result"]["status"], "ok", "{out}");

    // The disaster: every db host lost. What was acknowledged before the last
    // archived WAL comes back from the repository alone.
    lab.psql(&leader, "CREATE TABLE rs_d (id int PRIMARY KEY, note text)");
    let writer = writer_going(&lab, "rs_d", 1).await;
    acked(&writer, 20, Instant::now(), None).await;
    let acked = writer.stop().await;
    switch_reaches_repository(&lab, &leader).await;
    for h in lab.db_hosts() {
        lab::replace(LAB, &h).await.expect("lab replace");
    }
    let (code, out, err) = pgha(&["restore", &inv, "--latest", "--yes"]);
    assert_eq!(code, 0, "restore --latest onto bare hosts:\n{out}\n{err}");
    let leader = healthy_cluster(&lab).await;
    assert_no_loss(&lab, "rs_d", &acked).await;
    assert_eq!(lab.psql(&leader, "SELECT count(*) FROM rs_t"), "100");
    assert_eq!(timelines(&lab).await.len(), 3);
    switch_reaches_repository(&lab, &leader).await;
    check_etcd(&lab).await;

    // Destroy: refused without --yes; then every component stopped and disabled,
    // the data removed, the repository kept aside; a deploy builds a new, empty
    // cluster on the same hosts.
    let (code, _, err) = pgha(&["destroy", &inv]);
    assert_eq!(code, 5, "destroy without --yes: {err}");
    assert!(err.contains("add --yes"), "{err}");
    let (code, out, err) = pgha(&["destroy", &inv, "--check"]);
    assert_eq!(code, 0, "destroy --check:\n{out}\n{err}");
    let system =
        |lab: &Lab, h: &str| lab.psql(h, "SELECT system_identifier FROM pg_control_system()");
    let old_system = system(&lab, &leader);
    // Kept data: a deploy brings the same cluster back with every row.
    let (code, out, err) = pgha(&["destroy", &inv, "--yes"]);
    assert_eq!(code, 0, "destroy:\n{out}\n{err}");
    let (_, active) = lab.sh(&leader, "systemctl is-active patroni etcd || true");
    assert!(
        !active.lines().any(|l| l.trim() == "active"),
        "{leader}: patroni and etcd stopped: {active}"
    );
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy after destroy (data kept):\n{out}\n{err}");
    let leader = healthy_cluster(&lab).await;
    assert_eq!(system(&lab, &leader), old_system, "the same cluster");
    assert_no_loss(&lab, "rs_d", &acked).await;
    let (code, out, err) = pgha(&["destroy", &inv, "--yes", "--wipe-data"]);
    assert_eq!(code, 0, "destroy --wipe-data:\n{out}\n{err}");
    let units = [
        ("db", "patroni etcd prometheus-postgres-exporter pgbackrest"),
        ("router", "haproxy pgbackrest pgha-backup-full.timer"),
    ];
    for h in lab.info.hosts.iter().map(|h| h.name.clone()) {
        let list = units
            .iter()
            .find(|(p, _)| h.starts_with(p))
            .map(|(_, u)| *u)
            .unwrap();
        let (_, active) = lab.sh(&h, &format!("systemctl is-active {list} || true"));
        assert!(
            !active.lines().any(|l| l.trim() == "active"),
            "{h}: {list} stopped: {active}"
        );
        let (_, enabled) = lab.sh(
            &h,
            &format!("systemctl is-enabled {list} 2>/dev/null || true"),
        );
        assert!(
            !enabled.lines().any(|l| l.trim() == "enabled"),
            "{h}: {list} disabled: {enabled}"
        );
    }
    for h in lab.db_hosts() {
        let (code, _) = lab.sh(&h, "test -e /var/lib/postgresql/17/main");
        assert_ne!(code, 0, "{h}: PostgreSQL's data removed");
    }
    let (_, kept) = lab.sh(
        BACKUP_REPO,
        "ls -d /var/lib/pgbackrest.destroyed-* | wc -l; test -e /var/lib/pgbackrest && echo present",
    );
    assert_eq!(kept.trim(), "1", "the repository kept aside: {kept}");
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy after destroy:\n{out}\n{err}");
    let leader = healthy_cluster(&lab).await;
    assert_ne!(system(&lab, &leader), old_system, "a new cluster");
    assert_eq!(
        lab.psql(&leader, "SELECT to_regclass('rs_t') IS NULL"),
        "t",
        "the new cluster is empty"
    );
    check_etcd(&lab).await;
    verify_every_backup(&lab);
}
