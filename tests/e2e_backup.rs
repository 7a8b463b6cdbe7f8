//! End-to-end: backups on their own lab (`pgha-e2e-backup`), observed on the
//! repository host with pgBackRest itself and on PostgreSQL, independently of pgha.
//! A cluster deployed without backups gets them by a re-run of deploy with no
//! restart of any member (archive_mode was on from the first deploy) and a first
//! full backup; under a writer, `backup run` takes a full backup that `backup list`
//! and `pgbackrest info` agree on; `backup verify` restores it and counts the
//! writer's rows; after a switchover the new leader's WAL reaches the repository
//! and a scheduled backup (the timer's service) runs against it, and after a hard
//! kill of the leader the next one archives too; a backup damaged
//! in the repository fails `backup verify` with pgBackRest's cause; no
//! acknowledged write is lost.

mod common;

use std::collections::BTreeSet;

use common::*;
use pgha::lab;

const LAB: &str = "pgha-e2e-backup";
const REPO: &str = "router1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_enabled_taken_listed_verified_and_following_the_leader() {
    let (lab, inv, leader) = deployed_without_backups(LAB).await;
    // Deployed without backups: archiving is on and accepts every segment.
    assert_eq!(lab.psql(&leader, "SHOW archive_mode"), "on");
    assert_eq!(lab.psql(&leader, "SHOW archive_command"), "/bin/true");
    let before = start_times(&lab).await;
    lab.psql(&leader, "CREATE TABLE bk_w (id int PRIMARY KEY, note text)");
    let writer = writer_going(&lab, "bk_w", 1).await;

    // Turn them on: the lab's inventory gets its router as the repository.
    let text = std::fs::read_to_string(&inv).unwrap();
    assert!(text.contains("    backup_enabled: false\n"), "{text}");
    let with = text.replace("    backup_enabled: false\n", "")
        + &format!("    backup:\n      hosts:\n        {REPO}:\n");
    std::fs::write(&inv, with).unwrap();
    let enabled_at = lab.psql(&leader, "SELECT now()");
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy enabling backups:\n{out}\n{err}");
    assert_eq!(
        start_times(&lab).await,
        before,
        "enabling backups restarted a member"
    );
    let leader = healthy_cluster(&lab).await;
    assert_eq!(
        lab.psql(&leader, "SHOW archive_command"),
        format!("pgbackrest --stanza={} archive-push %p", lab.cluster_name())
    );
    // Pushes refused before the stanza existed are not counted as failures: the
    // archiver's counters start again once it does (reset by this deploy).
    assert_eq!(
        lab.psql(
            &leader,
            &format!("SELECT stats_reset > '{enabled_at}' FROM pg_stat_archiver"),
        ),
        "t",
        "the archiver's counters were reset when the stanza was created"
    );
    let info = repo_info(&lab);
    assert_eq!(info["status"]["code"], 0, "{info}");
    assert_eq!(info["cipher"], "aes-256-cbc", "encrypted by default");
    assert_eq!(
        newest(&info)["type"],
        "full",
        "the first full backup: {info}"
    );
    // A re-run takes no backup (the stanza and the first backup are not redone),
    // and mends what was undone by hand since: the timers and pgBackRest's
    // directories are planned from its facts, like files and services.
    lab.sh(REPO, "systemctl disable --now pgha-backup-diff.timer");
    lab.sh(&leader, "chmod 0700 /var/spool/pgbackrest");
    // --check plans exactly those two, and changes nothing.
    let (code, out, _) = pgha(&["deploy", &inv, "--check", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let plan = json_doc(&out);
    assert_eq!(plan["changes"], 2, "{plan}");
    assert_eq!(
        plan["hosts"][REPO][0],
        "pgbackrest enable and start pgha-backup-diff.timer (disabled)"
    );
    assert_eq!(
        plan["hosts"][leader.as_str()][0],
        "pgbackrest directory /var/spool/pgbackrest postgres:postgres 0750 (owner/mode changed)"
    );
    let (_, still) = lab.sh(REPO, "systemctl is-enabled pgha-backup-diff.timer");
    assert_eq!(still.trim(), "disabled", "--check changed nothing");
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        labels(&repo_info(&lab)),
        labels(&info),
        "a re-run took a backup"
    );
    let (_, timer) = lab.sh(
        REPO,
        "systemctl is-enabled pgha-backup-diff.timer; systemctl is-active pgha-backup-diff.timer",
    );
    assert_eq!(
        timer.split_whitespace().collect::<Vec<_>>(),
        ["enabled", "active"],
        "the re-run enabled the timer again"
    );
    let (_, dir) = lab.sh(&leader, "stat -c '%U:%G %a' /var/spool/pgbackrest");
    assert_eq!(
        dir.trim(),
        "postgres:postgres 750",
        "the spool's owner and mode"
    );
    let recap = &json_doc(&out)["recap"];
    for host in [REPO, leader.as_str()] {
        assert_eq!(recap[host]["changed"], 1, "{host} mended: {recap}");
    }

    // A full backup under the writer; list and pgBackRest agree.
    let taken = full_backup_listed(&lab, &inv);

    // The restore test: restored on the repository host, the writer's rows counted.
    let acked_before = writer.acked().len() as u64;
    let (code, out, err) = pgha(&["backup", "verify", &inv, "--output", "json"]);
    assert_eq!(code, 0, "backup verify:\n{out}\n{err}");
    let v = json_doc(&out);
    assert_eq!(v["result"]["status"], "ok", "{v}");
    assert_eq!(v["result"]["set"], taken.as_str());
    assert!(
        v["result"]["rows"].as_u64().unwrap() >= acked_before.min(20),
        "rows counted in the restored copy: {v}"
    );
    let (_, leftovers) = lab.sh(
        REPO,
        "ls -A /var/lib/pgha/backup-verify 2>/dev/null | wc -l",
    );
    assert_eq!(leftovers.trim(), "0", "the scratch directory is removed");

    // After a switchover the new leader archives, and a scheduled backup runs
    // against it (the service its timer starts).
    let (code, out, err) = pgha(&["switchover", &inv]);
    assert_eq!(code, 0, "switchover:\n{out}\n{err}");
    let new_leader = healthy_cluster(&lab).await;
    assert_ne!(new_leader, leader);
    let wal = switch_reaches_repository(&lab, &new_leader).await;
    assert!(
        lab.psql(
            &new_leader,
            "SELECT timeline_id FROM pg_control_checkpoint()"
        )
        .parse::<u32>()
        .unwrap()
            > 1,
        "the switchover started a new timeline (WAL {wal})"
    );
    let (code, out) = lab.sh(REPO, "systemctl start pgha-backup@incr.service 2>&1");
    assert_eq!(code, 0, "the scheduled backup's service: {out}");
    let info = repo_info(&lab);
    let incr = newest(&info);
    assert_eq!(incr["type"], "incr", "{info}");
    // Every backup this test took restores: the deploy's first full one and the
    // scheduled increment (the full one of `backup run` was verified above).
    for set in [
        labels(&info)[0].clone(),
        incr["label"].as_str().unwrap().to_string(),
    ] {
        let (code, out, err) = pgha(&["backup", "verify", &inv, "--set", &set, "--output", "json"]);
        assert_eq!(code, 0, "backup verify --set {set}:\n{out}\n{err}");
        assert_eq!(json_doc(&out)["result"]["status"], "ok", "{out}");
    }
    let (_, timers) = lab.sh(
        REPO,
        "systemctl list-timers --all --no-legend 'pgha-backup-*' | wc -l",
    );
    assert_eq!(timers.trim(), "3", "full, diff and verify timers");

    // After a hard kill of the leader, the member that takes over archives too.
    lab::kill(LAB, &new_leader).await.expect("lab kill");
    let third = eventually("a leader other than the killed one", 120, || async {
        let (l, _) = patroni_cluster(&lab).await?;
        if l != new_leader {
            Ok(l)
        } else {
            Err(format!("{l} still leads"))
        }
    })
    .await;
    switch_reaches_repository(&lab, &third).await;
    lab::start(LAB, &new_leader).await.expect("lab start");
    healthy_cluster(&lab).await;

    // A backup damaged in the repository does not pass.
    let dir = format!(
        "/var/lib/pgbackrest/backup/{}/{taken}/pg_data",
        lab.cluster_name()
    );
    let (code, out) = lab.sh(
        REPO,
        &format!(
            "f=$(find {dir} -type f -size +64k | head -1); test -n \"$f\" && \
             dd if=/dev/urandom of=\"$f\" bs=1k count=16 seek=2 conv=notrunc 2>/dev/null && echo \"$f\""
        ),
    );
    assert_eq!(code, 0, "damaging a file of {taken}: {out}");
    let (code, out, _) = pgha(&[
        "backup", "verify", &inv, "--set", &taken, "--output", "json",
    ]);
    assert_eq!(code, 1, "verify of a damaged backup must fail:\n{out}");
    let v = json_doc(&out);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["result"]["step"], "restore", "{v}");
    assert!(
        v["result"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ERROR"),
        "pgBackRest's cause is named: {v}"
    );

    let acked = writer.stop().await;
    assert_no_loss(&lab, "bk_w", &acked).await;
    let kinds: BTreeSet<String> = repo_info(&lab)["backup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains("full") && kinds.contains("incr"),
        "{kinds:?}"
    );
}
