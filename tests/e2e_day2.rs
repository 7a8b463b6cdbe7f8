//! End-to-end, day 2, on one lab (`pgha-e2e-day2`): `status`, `switchover` and the
//! cluster lock, then network partitions of the leader and of a replica while
//! clients write through :5000 and read through :5001. Every assertion reads live
//! state (Patroni, PostgreSQL through the router and on each host), never only
//! pgha's report.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgha::lab;

const LAB: &str = "pgha-e2e-day2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn day2_partitions() {
    let lab = Lab::up_unmonitored(LAB).await;
    // The inventory as a plain argument, as users type it.
    let (code, _, _) = pgha(&["deploy", &lab.inventory()]);
    assert_eq!(code, 0, "deploy");
    healthy_cluster(&lab).await;
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE day2 (id int PRIMARY KEY, note text)")
        .await
        .unwrap();

    status_matches_patroni(&lab).await;
    etcd_move_asked_again(&lab).await;
    switchover_to_a_named_replica(&lab).await;
    switchover_picks_the_sync_standby(&lab).await;
    refused_switchovers_change_nothing(&lab).await;
    concurrent_deploys_one_runs(&lab).await;
    max_connections_raised_then_lowered(&lab).await;
    restarts_by_hand(&lab).await;
    patroni_settings_without_restart(&lab).await;
    locks_are_judged_by_lease_and_expiry(&lab).await;
    status_names_a_killed_replica(&lab).await;
    status_is_bounded_with_a_silent_replica(&lab).await;
    leader_cut_from_its_peers_loses_nothing(&lab).await;
    replica_partition_comes_back_streaming(&lab).await;
    short_leader_partition_ends_well(&lab).await;
    verify_every_backup(&lab);
}

/// The leader is cut off from its db peers (and so from etcd) while the router and
/// clients on its own host still reach it: the partition where a stale primary
/// could keep taking writes. A writer through :5000 and a writer on the leader's
/// own host run throughout, a reader through :5001 too. A survivor takes over;
/// every write acknowledged by anyone, the isolated leader included, is present
/// afterwards; reads never reach it while it does not stream; after the heal it is
/// rewound and streams from the new leader.
async fn leader_cut_from_its_peers_loses_nothing(lab: &Lab) {
    let old = healthy_cluster(lab).await;
    let old_ip = lab.ip(&old);
    let old_tl = timeline_of(lab, &old).await;
    let writer = writer_going(lab, "day2", 1).await;
    let local = LocalWriter::start(lab, &old, "day2", 500_000);
    local.wait_acked(20).await;
    let reader = Reader::start(&lab.target());

    let survivors: Vec<String> = lab.db_hosts().into_iter().filter(|h| *h != old).collect();
    // etcd led by the synchronous standby, the one member Patroni may promote: the
    // new primary's own callback must then move etcd's leadership off its host.
    let (_, members) = patroni_cluster(lab).await.unwrap();
    let sync = members
        .iter()
        .find(|m| m.role == "sync_standby")
        .map(|m| m.name.clone())
        .expect("a synchronous standby");
    lead_etcd_on(lab, &sync).await;
    lab::partition_from(LAB, &old, &survivors)
        .await
        .expect("lab partition --from");
    let cut = Instant::now();
    let new = eventually("a survivor to lead", 90, || async {
        let mut last = String::new();
        for h in &survivors {
            match lab.patroni_status(h).await {
                Ok(v) if v["role"] == "primary" && v["state"] == "running" => {
                    return Ok(h.clone());
                }
                Ok(v) => last = format!("{h}: {} {}", v["role"], v["state"]),
                Err(e) => last = format!("{h}: {e}"),
            }
        }
        Err(last)
    })
    .await;
    let new_tl = timeline_of(lab, &new).await;
    assert!(new_tl > old_tl, "the promotion started a new timeline");
    assert_eq!(new, sync, "the synchronous standby was promoted");
    // No pgha runs from here to the heal: Patroni's on_role_change callback
    // (pgha-role-change) moves etcd's leadership off the new primary's host.
    eventually(&format!("etcd led off {new}'s host"), 60, || async {
        match try_etcd_leader(lab, &new).await? {
            l if l != new => Ok(()),
            l => Err(format!("etcd leader {l}")),
        }
    })
    .await;

    // Stay cut off until the new leader takes writes and the isolated old leader,
    // asked on its own host, has stopped acting as a primary (Patroni demotes it
    // once it cannot renew its key).
    acked(&writer, 20, cut, Some(&lab.ip(&new))).await;
    eventually(&format!("isolated {old} to step down"), 120, || async {
        not_a_primary(lab, &old)
    })
    .await;
    // The controller still reaches the cut host: `status` says why its etcd member
    // is unhealthy (it answers, but hears no leader), not just that a read timed out.
    let (_, out, _) = pgha(&["status", &lab.inventory(), "--output", "json"]);
    let doc = json_doc(&out);
    let member = doc["etcd"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == old.as_str()))
        .cloned()
        .unwrap_or_default();
    let why = member["error"].as_str().unwrap_or_default();
    assert!(
        member["healthy"] == false
            && (why.contains("knows no leader") || why.contains("does not hear")),
        "status on the cut-off {old}'s etcd member: {member}"
    );
    lab::heal(LAB, &old).await.expect("lab heal");
    let healed = Instant::now();

    // Rejoins by itself: rewound and streaming on the new timeline, lag 0.
    eventually(
        &format!("{old} to stream from {new} on timeline {new_tl} with lag 0"),
        120,
        || async {
            let (leader, members) = patroni_cluster(lab).await?;
            let m = members
                .iter()
                .find(|m| m.name == old)
                .ok_or("old leader not listed")?;
            if leader == new
                && m.state == "streaming"
                && m.timeline == Some(new_tl)
                && m.lag == Some(0)
            {
                Ok(())
            } else {
                Err(format!("{members:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "{old} streams again {:.1}s after the heal",
        healed.elapsed().as_secs_f64()
    );
    let status = lab.psql(
        &old,
        "SELECT status, received_tli FROM pg_stat_wal_receiver",
    );
    assert_eq!(
        status,
        format!("streaming|{new_tl}"),
        "{old}'s WAL receiver streams the new timeline"
    );
    // The old leader is back in the read port (so the reads below cover it).
    reader
        .wait_served_by(&old_ip, healed, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let acked = writer.stop().await;
    let local_acked = local.stop().await;
    let reads = reader.stop().await;

    // Nothing acknowledged is missing: not through the router, not on the isolated
    // leader's own host (after the cut it could only acknowledge what its
    // synchronous standby, out of reach, had confirmed: nothing).
    assert_no_loss(lab, "day2", &acked).await;
    let local_ids: Vec<i32> = local_acked.iter().map(|(id, _)| *id).collect();
    assert_present(lab, "day2", &local_ids).await;
    let after_cut = local_acked.iter().filter(|(_, at)| *at > cut).count();
    eprintln!(
        "local writer on {old}: {} acknowledged, {after_cut} after the cut",
        local_acked.len()
    );
    assert!(
        acked.iter().any(|a| a.at > cut && a.server == lab.ip(&new)),
        "writes resumed on the new leader"
    );
    check_reads(lab, &reads, cut, &old, new_tl, &new);
    // The rewound member holds exactly the new leader's rows.
    let count = |h: &str| lab.psql(h, "SELECT count(*) FROM day2");
    eventually(&format!("{old} to hold {new}'s rows"), 30, || async {
        let (a, b) = (count(&old), count(&new));
        if a == b {
            Ok(())
        } else {
            Err(format!("{old} {a}, {new} {b}"))
        }
    })
    .await;
}

/// Every read through :5001 came from a replica, or from `leader` (a replica
/// being promoted keeps serving reads until HAProxy's next checks, about a second:
/// it is the newest copy of the data, never a stale one); after `cut`, a read served
/// by `member` came from it while it streamed on timeline `tl`.
fn check_reads(lab: &Lab, reads: &[Read], cut: Instant, member: &str, tl: u64, leader: &str) {
    assert!(!reads.is_empty(), "the reader got answers");
    let ip = lab.ip(member);
    for r in reads {
        assert!(
            r.in_recovery || r.server == lab.ip(leader),
            "the read port served a primary other than the current leader {leader}: {r:?}"
        );
        if r.at > cut && r.server == ip {
            assert!(
                r.receiver == "streaming" && r.received_tli as u64 == tl,
                "the read port sent a client to {member} while it was not streaming on timeline {tl}: {r:?}"
            );
        }
    }
}

/// A replica cut off and healed comes back streaming by itself, and the read port
/// avoids it while it does not stream.
async fn replica_partition_comes_back_streaming(lab: &Lab) {
    // The failover before this left etcd's leadership wherever it fell. A deploy
    // puts it back where its loss hurts least (off the Patroni leader and the
    // synchronous standby): cutting off the etcd leader's host costs an election,
    // during which Patroni 4.0.7 can demote a healthy leader (patroni#3407).
    let (code, _, _) = pgha(&["deploy", &lab.inventory()]);
    assert_eq!(code, 0, "deploy");
    let leader = healthy_cluster(lab).await;
    let tl = timeline_of(lab, &leader).await;
    let (_, members) = patroni_cluster(lab).await.unwrap();
    let sync = members
        .iter()
        .find(|m| m.role == "sync_standby")
        .map(|m| m.name.clone());
    let etcd_at = etcd_leader(lab, &leader).await;
    assert!(
        etcd_at != leader && Some(&etcd_at) != sync.as_ref(),
        "deploy keeps etcd's leader ({etcd_at}) off the Patroni leader ({leader}) and the synchronous standby ({sync:?})"
    );
    // The synchronous standby: the harder case (the leader must pick another).
    let replica = members
        .iter()
        .find(|m| m.role == "sync_standby")
        .or_else(|| members.iter().find(|m| m.role != "leader"))
        .unwrap()
        .name
        .clone();
    let writer = writer_going(lab, "day2", 100_000).await;
    let reader = Reader::start(&lab.target());
    lab::partition(LAB, &replica).await.expect("lab partition");
    let cut = Instant::now();
    // Cut off until the leader has moved on without it (its member key expired,
    // another synchronous standby) and writes were acknowledged since.
    let moved_on = eventually(
        &format!("{leader} to go on without {replica}"),
        120,
        || async {
            let (l, members) = patroni_cluster(lab).await?;
            let listed = members.iter().any(|m| m.name == replica);
            let sync = members.iter().find(|m| m.role == "sync_standby");
            match sync {
                Some(m) if l == leader && !listed && m.name != replica => Ok(Instant::now()),
                _ => Err(format!("{members:?}")),
            }
        },
    )
    .await;
    acked(&writer, 20, moved_on, None).await;
    let healed_at = Instant::now();
    lab::heal(LAB, &replica).await.expect("lab heal");
    eventually(&format!("{replica} to stream again"), 120, || async {
        let (l, members) = patroni_cluster(lab).await?;
        let m = members
            .iter()
            .find(|m| m.name == replica)
            .ok_or("not listed")?;
        if l == leader && m.state == "streaming" && m.lag == Some(0) {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    reader
        .wait_served_by(&lab.ip(&replica), healed_at, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let acked = writer.stop().await;
    let reads = reader.stop().await;
    assert_eq!(
        healthy_cluster(lab).await,
        leader,
        "a replica's partition moves no leadership"
    );
    // Nor demotes the leader and promotes it again (a new timeline, a write outage).
    let tl_after = timeline_of(lab, &leader).await;
    assert_eq!(
        tl_after,
        tl,
        "{leader} went from timeline {tl} to {tl_after} while {replica} was cut off; its Patroni log:\n{}",
        lab.journal(&leader, "patroni", 80)
    );
    assert_no_loss(lab, "day2", &acked).await;
    assert!(
        acked
            .iter()
            .filter(|a| a.sent > cut && a.at < healed_at)
            .count()
            >= 20,
        "writes went on while the replica was cut off"
    );
    check_reads(lab, &reads, cut, &replica, tl, &leader);
}

/// A leader cut off for less than Patroni's retry_timeout keeps (or cleanly hands
/// over) leadership: the cluster ends healthy and nothing acknowledged is lost.
async fn short_leader_partition_ends_well(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    let writer = writer_going(lab, "day2", 200_000).await;
    lab::partition(LAB, &leader).await.expect("lab partition");
    // The fault's length is the scenario (shorter than retry_timeout), not a wait
    // for some state: the outcome is checked on observed state below.
    tokio::time::sleep(Duration::from_secs(5)).await;
    lab::heal(LAB, &leader).await.expect("lab heal");
    let healed = Instant::now();
    healthy_cluster(lab).await;
    let (l, members) = patroni_cluster(lab).await.unwrap();
    let tl = members.iter().find(|m| m.name == l).unwrap().timeline;
    assert!(
        members.iter().all(|m| m.timeline == tl),
        "every member on the leader's timeline: {members:?}"
    );
    acked(&writer, 20, healed, None).await;
    let acked = writer.stop().await;
    assert_no_loss(lab, "day2", &acked).await;
}

/// Whether `host`'s PostgreSQL, asked on the host itself, is not a primary (in
/// recovery, or not accepting connections).
fn not_a_primary(lab: &Lab, host: &str) -> Result<(), String> {
    match lab.try_psql(host, "SELECT pg_is_in_recovery()") {
        Ok(t) if t == "t" => Ok(()),
        Ok(t) => Err(format!("pg_is_in_recovery {t}")),
        Err(e) if e.contains("could not connect") || e.contains("No such file") => Ok(()),
        Err(e) => Err(e),
    }
}

async fn timeline_of(lab: &Lab, host: &str) -> u64 {
    eventually(&format!("{host}'s timeline"), 30, || async {
        let v = lab.patroni_status(host).await?;
        v["timeline"].as_u64().ok_or(format!("{v}"))
    })
    .await
}

fn status_json(lab: &Lab) -> (i32, serde_json::Value) {
    let (code, out, _) = pgha(&["status", &lab.inventory(), "--output", "json"]);
    (code, json_doc(&out))
}

/// etcd's leadership put on the Patroni leader's host: a deploy moves it off, and
/// asks again when a move's request fails (as when raft gives up a transfer whose
/// transferee lags, and etcd answers nothing), or counts it done when the transfer
/// happened but its answer was lost. On the settled cluster the deploy starts with:
/// right after a healed partition, a member can miss the leader's messages for a
/// minute or more (etcd's peer streams wait on TCP's retransmission backoff), and
/// the deploy then leaves the placement with a warning.
async fn etcd_move_asked_again(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    for point in ["etcd:move-leader", "etcd:move-leader-answer"] {
        lead_etcd_on(lab, &leader).await;
        let (code, out, _) = pgha_env(&["deploy", &lab.inventory()], &[("PGHA_FAIL_ONCE", point)]);
        assert_eq!(code, 0, "deploy failing once at {point}: {out}");
        assert!(
            out.contains("leadership moved") && !out.contains("attempts)"),
            "failing once at {point}, the deploy still moved etcd's leadership: {out}"
        );
        let etcd_at = etcd_leader(lab, &leader).await;
        assert_ne!(
            etcd_at, leader,
            "{point}: etcd's leader moved off the Patroni leader's host"
        );
    }
}

/// `pgha status` names the leader and replicas Patroni names, and exits 0.
async fn status_matches_patroni(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    sync_standby(lab).await;
    // Lag moves between two reads (Patroni's and pgha's are moments apart): with no
    // writer running, both must come to say 0 for every replica; the stable fields
    // are compared from that same pair of reads.
    let (members, code, doc) = eventually(
        "pgha status and Patroni to show every replica at lag 0",
        60,
        || async {
            let (_, members) = patroni_cluster(lab).await?;
            let (code, doc) = status_json(lab);
            for m in members.iter().filter(|m| m.role != "leader") {
                let shown = doc["members"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == m.name.as_str()))
                    .map(|x| x["lag_bytes"].as_u64());
                if m.lag != Some(0) || shown != Some(Some(0)) {
                    return Err(format!(
                        "{}: Patroni lag {:?}, pgha status lag {shown:?}",
                        m.name, m.lag
                    ));
                }
            }
            Ok((members, code, doc))
        },
    )
    .await;
    assert_eq!(code, 0, "a healthy cluster: exit 0: {doc}");
    assert_eq!(doc["healthy"], true);
    assert_eq!(doc["leader"], leader.as_str());
    for m in &members {
        let s = doc["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == m.name.as_str())
            .unwrap_or_else(|| panic!("{} in status: {doc}", m.name));
        assert_eq!(s["role"], m.role.as_str(), "{}'s role", m.name);
        assert_eq!(s["state"], m.state.as_str(), "{}'s state", m.name);
        assert_eq!(s["timeline"].as_u64(), m.timeline, "{}'s timeline", m.name);
        if m.role == "leader" {
            assert!(s["lag_bytes"].is_null(), "the leader has no lag: {s}");
        }
    }
    let (_, version) = lab.sh(&leader, "dpkg-query -W -f='${Version}' postgresql-17");
    let running = lab.psql(&leader, "SHOW server_version");
    let shown = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == leader.as_str())
        .unwrap()["server_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        running.starts_with(&format!("{shown} ")),
        "status shows the running server version {running} (package {version})"
    );
    assert_eq!(doc["etcd"].as_array().unwrap().len(), 3);
    assert_eq!(doc["etcd_quorum"], true);
    assert_eq!(doc["routers"][0]["agrees"], true);
    // The text view says the same in one line at the top.
    let (code, text, _) = pgha(&["status", "-i", &lab.inventory()]);
    assert_eq!(code, 0);
    assert!(
        text.lines().next().unwrap().ends_with(": healthy"),
        "{text}"
    );
}

/// `switchover --to` the asynchronous replica while a writer runs (in synchronous
/// mode Patroni promotes only the synchronous standby: pgha makes the named replica
/// it one first): that host leads (read from Patroni), the old leader streams
/// again, one synchronous standby again, no acknowledged row is lost, and the
/// measured gap is reported.
async fn switchover_to_a_named_replica(lab: &Lab) {
    let old = healthy_cluster(lab).await;
    let sync = sync_standby(lab).await;
    let target = lab
        .db_hosts()
        .into_iter()
        .find(|h| *h != old && *h != sync)
        .expect("an asynchronous replica");
    let writer = writer_going(lab, "day2", 300_000).await;
    let (code, out, _) = pgha(&[
        "switchover",
        &lab.inventory(),
        "--to",
        &target,
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "switchover --to {target}");
    // Writes resume on the new leader.
    acked(&writer, 20, Instant::now(), Some(&lab.ip(&target))).await;
    let acked = writer.stop().await;
    let (leader, members) = patroni_cluster(lab).await.unwrap();
    assert_eq!(leader, target, "{target} leads after the switchover");
    let m = members.iter().find(|m| m.name == old).unwrap();
    assert_eq!(
        m.state, "streaming",
        "the old leader streams again: {members:?}"
    );
    assert_no_loss(lab, "day2", &acked).await;
    let config = lab.patroni_get(&target, "/config").await.expect("config");
    assert_eq!(
        config["synchronous_node_count"], 1,
        "the inventory's synchronous_node_count again: {config}"
    );
    eventually("exactly one synchronous standby", 60, || async {
        let (_, members) = patroni_cluster(lab).await?;
        let n = members.iter().filter(|m| m.role == "sync_standby").count();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    // etcd's leadership is kept off the new Patroni leader's host.
    assert_ne!(
        etcd_leader(lab, &target).await,
        target,
        "etcd leadership kept apart from the Patroni leader"
    );
    let doc = json_doc(&out);
    let gap = doc["switchover"]["gap"]["longest_secs"].as_f64().unwrap();
    assert!(gap > 0.0, "a measured write gap: {doc}");
    assert_eq!(doc["switchover"]["from"], old.as_str());
    assert_eq!(doc["switchover"]["to"], target.as_str());
}

/// Without `--to`, the synchronous standby is promoted.
async fn switchover_picks_the_sync_standby(lab: &Lab) {
    healthy_cluster(lab).await;
    let sync = sync_standby(lab).await;
    let (code, _, _) = pgha(&["switchover", &lab.inventory()]);
    assert_eq!(code, 0, "switchover");
    let (leader, _) = patroni_cluster(lab).await.unwrap();
    assert_eq!(leader, sync, "the synchronous standby was promoted");
}

/// `--to` the leader itself or an unknown host: refused, and the leader and its
/// postmaster stay.
async fn refused_switchovers_change_nothing(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    let before = start_times(lab).await;
    let attempts = vec![(leader.clone(), 1), ("db9".to_string(), 5)];
    for (to, want) in attempts {
        let (code, _, stderr) = pgha(&["switchover", &lab.inventory(), "--to", &to]);
        assert_eq!(code, want, "switchover --to {to} refused: {stderr}");
        assert!(
            stderr.contains("nothing was changed"),
            "says nothing was changed: {stderr}"
        );
    }
    let (now, _) = patroni_cluster(lab).await.unwrap();
    assert_eq!(now, leader, "the leader did not change");
    assert_eq!(start_times(lab).await, before, "no PostgreSQL restarted");
}

/// Two deploys at once: exactly one runs; the other exits 1 naming the holder and
/// changes nothing. The first has real work (a parameter to roll out), and the
/// second starts once the first is seen holding the lock, so the overlap is certain.
async fn concurrent_deploys_one_runs(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    let inv = lab.inventory();
    let text = std::fs::read_to_string(&inv).unwrap();
    let changed = text.replacen(
        "vars:\n",
        "vars:\n    postgresql_parameters:\n      work_mem: 6MB\n",
        1,
    );
    assert_ne!(text, changed, "inventory has an all.vars block");
    std::fs::write(&inv, changed).unwrap();
    let inv2 = inv.clone();
    let first = std::thread::spawn(move || pgha(&["deploy", &inv2, "--output", "json"]));
    let key = format!("/pgha/{}/lock", lab.cluster_name());
    let holder = eventually("the first deploy to hold the etcd lock", 60, || async {
        let mut c = lab.etcd(&leader).await;
        let r = c.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
        r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .ok_or("no lock key yet".to_string())
    })
    .await;
    assert!(
        holder.contains("pgha deploy"),
        "the lock names its command: {holder}"
    );
    let before = start_times(lab).await;
    let (code, out, stderr) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 1, "the second deploy is refused: {stderr}");
    assert!(
        stderr.contains("is held by") && stderr.contains("running `pgha deploy`"),
        "the refused deploy names the holder: {stderr}"
    );
    let doc = json_doc(&out);
    let changes: u64 = doc["recap"]
        .as_object()
        .map(|r| r.values().map(|h| h["changed"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(changes, 0, "the refused deploy changed nothing: {doc}");
    let (code, _, _) = first.join().unwrap();
    assert_eq!(code, 0, "the first deploy ran to the end");
    assert_eq!(
        lab.psql(&leader, "SHOW work_mem"),
        "6MB",
        "the first deploy's change is in"
    );
    assert_eq!(start_times(lab).await, before, "a reload, no restart");
    // The lock is free again afterwards.
    let (code, out, _) = pgha(&["lock", &inv]);
    assert_eq!(code, 0);
    assert!(out.contains("etcd lock: free"), "{out}");
}

/// Each member's `SHOW name` once it answers `want` with no pending restart.
async fn every_member_shows(lab: &Lab, name: &str, want: &str) {
    for h in lab.db_hosts() {
        let got = lab.psql(&h, &format!("SHOW {name}"));
        assert_eq!(got, want, "{h}: SHOW {name}");
        let st = lab
            .patroni_get(&h, "/patroni")
            .await
            .expect("patroni status");
        assert!(
            st["pending_restart"] != true,
            "{h}: still a pending restart: {st}"
        );
    }
}

/// Invalid parameters refused before any change (exit 4, the key and line named).
/// A parameter that standbys must hold at least at the primary's value, raised
/// (standbys first, the leader after a switchover) then lowered (the leader first,
/// in place, then the standbys) by deploy, under a writer: every member shows the
/// new value with no pending restart, no acknowledged row is lost, and the order
/// is the one PostgreSQL requires (read from the postmasters' start times).
async fn max_connections_raised_then_lowered(lab: &Lab) {
    let inv = lab.inventory();
    let text = std::fs::read_to_string(&inv).unwrap();
    assert!(text.contains("      work_mem: 6MB\n"), "{text}");
    // Refused before any change, by PostgreSQL's own parser, naming file, line and key.
    let before = start_times(lab).await;
    for (bad, says) in [
        (
            "max_connections: abc",
            "postgresql_parameters.max_connections",
        ),
        ("max_connections: 99999999", "outside the valid range"),
        ("wal_level: bogus", "Available values"),
        ("no_such_setting: 1", "unrecognized configuration parameter"),
    ] {
        std::fs::write(
            &inv,
            text.replace(
                "      work_mem: 6MB\n",
                &format!("      work_mem: 6MB\n      {bad}\n"),
            ),
        )
        .unwrap();
        let (code, _, err) = pgha(&["deploy", &inv]);
        assert_eq!(code, 4, "{bad} is refused:\n{err}");
        assert!(
            err.contains(says) && err.contains("inventory.yml:"),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        start_times(lab).await,
        before,
        "a refusal restarted nothing"
    );
    every_member_shows(lab, "max_connections", "200").await;
    let writer = writer_going(lab, "day2", 600_000).await;
    for (value, lowered) in [("300", false), ("200", true)] {
        let leader = healthy_cluster(lab).await;
        let before = start_times(lab).await;
        std::fs::write(
            &inv,
            text.replace(
                "      work_mem: 6MB\n",
                &format!("      work_mem: 6MB\n      max_connections: {value}\n"),
            ),
        )
        .unwrap();
        let since = Instant::now();
        let (code, out, err) = pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy max_connections {value}:\n{out}\n{err}");
        acked(&writer, 20, since, None).await;
        every_member_shows(lab, "max_connections", value).await;
        let after = start_times(lab).await;
        for h in lab.db_hosts() {
            assert_ne!(
                before[&h], after[&h],
                "{h} restarted for max_connections {value}"
            );
        }
        let (now, _) = patroni_cluster(lab).await.unwrap();
        let first = after
            .iter()
            .min_by_key(|(_, t)| t.as_str())
            .map(|(h, _)| h.clone())
            .unwrap();
        if lowered {
            assert_eq!(
                now, leader,
                "lowering keeps the leader (restarted in place)"
            );
            assert_eq!(
                first, leader,
                "lowering restarts the leader first: {after:?}"
            );
        } else {
            assert_ne!(
                now, leader,
                "raising hands the leader over before its restart"
            );
            assert_ne!(
                first, leader,
                "raising restarts the standbys first: {after:?}"
            );
        }
    }
    let acks = writer.stop().await;
    assert_no_loss(lab, "day2", &acks).await;
    // The inventory's default again (200 is pgha's default): nothing to change.
    std::fs::write(&inv, &text).unwrap();
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json_doc(&out)["changed"], 0, "{out}");
}

/// `pgha restart`: one named replica (only it restarts), then every member with
/// `--rolling` under a writer (each postmaster restarted, the leader handed over,
/// the write gap reported, nothing acknowledged lost); a host not in the inventory
/// is refused with exit 5.
async fn restarts_by_hand(lab: &Lab) {
    let inv = lab.inventory();
    let leader = healthy_cluster(lab).await;
    let replica = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    let (code, _, err) = pgha(&["restart", &inv, "--member", "db9"]);
    assert_eq!(code, 5, "an unknown member is refused: {err}");
    let before = start_times(lab).await;
    let (code, out, err) = pgha(&["restart", &inv, "--member", &replica]);
    assert_eq!(code, 0, "restart --member {replica}:\n{out}\n{err}");
    let after = start_times(lab).await;
    for h in lab.db_hosts() {
        assert_eq!(
            before[&h] != after[&h],
            h == replica,
            "{h}: {before:?} -> {after:?}"
        );
    }
    healthy_cluster(lab).await;
    let writer = writer_going(lab, "day2", 700_000).await;
    let before = start_times(lab).await;
    let since = Instant::now();
    let (code, out, err) = pgha(&["restart", &inv, "--rolling", "--output", "json"]);
    assert_eq!(code, 0, "restart --rolling:\n{out}\n{err}");
    acked(&writer, 20, since, None).await;
    let acks = writer.stop().await;
    assert_no_loss(lab, "day2", &acks).await;
    let after = start_times(lab).await;
    for h in lab.db_hosts() {
        assert_ne!(before[&h], after[&h], "{h} restarted");
    }
    let doc = json_doc(&out);
    let r = &doc["restart"];
    assert_eq!(r["restarted"].as_array().map(Vec::len), Some(3), "{doc}");
    assert_eq!(r["restarted"][2], leader.as_str(), "the leader last: {doc}");
    assert_eq!(r["switchover"]["from"], leader.as_str(), "{doc}");
    assert!(r["switchover"]["gap"]["measured"] == true, "{doc}");
    let (now, _) = patroni_cluster(lab).await.unwrap();
    assert_ne!(now, leader, "the leader was handed over");
}

/// Patroni settings pgha owns (ttl, loop_wait, retry_timeout, the synchronous
/// standbys' count) changed in the inventory: the next deploy puts them into
/// Patroni's configuration, every member runs with them, no PostgreSQL restarts;
/// back to the defaults the same way.
async fn patroni_settings_without_restart(lab: &Lab) {
    let inv = lab.inventory();
    let text = std::fs::read_to_string(&inv).unwrap();
    let leader = healthy_cluster(lab).await;
    let before = start_times(lab).await;
    std::fs::write(
        &inv,
        text.replacen(
            "vars:\n",
            "vars:\n    patroni_ttl: 24\n    patroni_loop_wait: 3\n    patroni_retry_timeout: 9\n",
            1,
        ),
    )
    .unwrap();
    let (code, out, err) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy with new Patroni settings:\n{out}\n{err}");
    let config = lab.patroni_get(&leader, "/config").await.expect("config");
    assert_eq!(
        (
            &config["ttl"],
            &config["loop_wait"],
            &config["retry_timeout"]
        ),
        (
            &serde_json::json!(24),
            &serde_json::json!(3),
            &serde_json::json!(9)
        ),
        "{config}"
    );
    assert_eq!(start_times(lab).await, before, "no PostgreSQL restarted");
    let (now, _) = patroni_cluster(lab).await.unwrap();
    assert_eq!(now, leader, "the leader stayed");
    std::fs::write(&inv, &text).unwrap();
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0);
    let config = lab.patroni_get(&leader, "/config").await.expect("config");
    assert_eq!(config["ttl"], 20, "{config}");
    assert_eq!(start_times(lab).await, before, "no PostgreSQL restarted");
}

/// With a replica killed, status still answers (bounded probes), exits 1 and names it.
async fn status_names_a_killed_replica(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    let victim = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    lab::kill(LAB, &victim).await.expect("lab kill");
    let inv = lab.inventory();
    // A deadline, not a benchmark: status must not hang on a dead host.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(pgha(&["status", &inv, "--output", "json"]));
    });
    let (code, out, _) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("status answers with a host down");
    assert_eq!(code, 1, "degraded: exit 1");
    let doc = json_doc(&out);
    assert_eq!(doc["healthy"], false);
    let m = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == victim.as_str())
        .unwrap()
        .clone();
    assert_eq!(m["state"], "unreachable", "{doc}");
    assert!(
        doc["verdict"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r
                .as_str()
                .unwrap()
                .contains(&format!("{victim} unreachable"))),
        "{doc}"
    );
    lab::start(LAB, &victim).await.expect("lab start");
    healthy_cluster(lab).await;
}

/// A holder as another controller would write it, for the lock tests: named like
/// this machine, with a pid that runs nowhere here (the old code took such a lock
/// over at once, though a live controller of the same name may hold it).
fn other_holder(command: &str) -> pgha::ops::guard::Holder {
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    pgha::ops::guard::Holder {
        user: "ci".into(),
        controller: here.clone(),
        command: command.into(),
        pid: 4_000_000,
        since,
        id: format!("{here}:4000000:e2e"),
    }
}

/// The cluster lock is judged by its lease (etcd) and its expiry (host file) only:
/// a lock in etcd whose holder looks dead from here but keeps its lease alive
/// refuses switchover (etcd lock only) and deploy (host lock taken, etcd refused);
/// once its lease is revoked the lock is free. A live host lock refuses deploy; an
/// expired one does not.
async fn locks_are_judged_by_lease_and_expiry(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    let inv = lab.inventory();
    let key = format!("/pgha/{}/lock", lab.cluster_name());

    // etcd: a lease kept alive by this test.
    let mut c = lab.etcd(&leader).await;
    let lease = c.lease_grant(10, None).await.expect("lease").id();
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.expect("keep alive");
    let keep = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let holder = other_holder("pgha upgrade");
    c.put(
        key.as_str(),
        serde_json::to_string(&holder).unwrap(),
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put the lock");
    let before = start_times(lab).await;
    let (code, _, stderr) = pgha(&["switchover", &inv]);
    assert_eq!(code, 1, "switchover refused by the etcd lock: {stderr}");
    assert!(
        stderr.contains("etcd key") && stderr.contains("running `pgha upgrade`"),
        "names the etcd lock's holder: {stderr}"
    );
    let (code, _, stderr) = pgha(&["deploy", &inv]);
    assert_eq!(code, 1, "deploy refused by the etcd lock: {stderr}");
    assert!(stderr.contains("etcd key"), "{stderr}");
    assert_eq!(healthy_cluster(lab).await, leader, "nothing moved");
    assert_eq!(start_times(lab).await, before, "nothing restarted");
    let (_, host_lock) = lab.sh(&lab.db_hosts()[0], "cat /var/lib/pgha/lock 2>/dev/null");
    assert!(
        host_lock.trim().is_empty(),
        "the refused deploy gave its host lock back: {host_lock}"
    );
    let got = c.get(key.as_str(), None).await.expect("get");
    assert_eq!(
        got.kvs().first().map(|kv| kv.lease()),
        Some(lease),
        "the live holder's lock was not taken over"
    );
    keep.abort();
    c.lease_revoke(lease).await.expect("revoke");
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0, "the lock is free once its lease ended");
    assert_eq!(json_doc(&out)["changed"], 0, "{out}");

    // The host lock on the first db host, written as another run would.
    let db1 = lab.db_hosts()[0].clone();
    let write_host_lock = |expires: i64| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&other_holder("pgha rebuild")).unwrap());
        let (code, _) = lab.sh(
            &db1,
            &format!(
                "mkdir -p -m 0700 /var/lib/pgha && printf 'id=other:1:x\\nexpires=%s\\nholder=%s\\n' \
                 $(( $(date +%s) + {expires} )) {b64} > /var/lib/pgha/lock"
            ),
        );
        assert_eq!(code, 0, "write the host lock");
    };
    write_host_lock(300);
    let (code, _, stderr) = pgha(&["deploy", &inv]);
    assert_eq!(code, 1, "deploy refused by the host lock: {stderr}");
    assert!(
        stderr.contains("/var/lib/pgha/lock on") && stderr.contains("running `pgha rebuild`"),
        "names the host lock's holder: {stderr}"
    );
    let (code, out, _) = pgha(&["lock", &inv]);
    assert_eq!(code, 0);
    assert!(out.contains("pgha rebuild"), "pgha lock shows it: {out}");
    write_host_lock(-1);
    let (code, out, _) = pgha(&["deploy", &inv, "--output", "json"]);
    assert_eq!(code, 0, "an expired host lock does not refuse");
    assert_eq!(json_doc(&out)["changed"], 0, "{out}");
}

/// A replica that silently drops this machine's packets (not killed, not refusing):
/// status still answers within its bound, exits 1 and names it.
async fn status_is_bounded_with_a_silent_replica(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    let victim = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    lab::partition_from(LAB, &victim, &[lab::CONTROLLER.to_string()])
        .await
        .expect("lab partition --from controller");
    let inv = lab.inventory();
    let t0 = Instant::now();
    let (code, out, _) = pgha(&["status", &inv, "--output", "json"]);
    let took = t0.elapsed();
    lab::heal(LAB, &victim).await.expect("lab heal");
    eprintln!("status with {victim} silent: {:.1}s", took.as_secs_f64());
    // A deadline, not a benchmark: every probe runs at once, each bounded at 3 s;
    // probes one after another took 9 s and more.
    assert!(
        took < Duration::from_secs(7),
        "status took {:.1}s with one silent host",
        took.as_secs_f64()
    );
    assert_eq!(code, 1, "degraded: exit 1");
    let doc = json_doc(&out);
    let m = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == victim.as_str())
        .unwrap()
        .clone();
    assert_eq!(m["state"], "unreachable", "{doc}");
    assert_eq!(doc["leader"], leader.as_str(), "{doc}");
    healthy_cluster(lab).await;
}
