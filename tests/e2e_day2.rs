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
    let lab = Lab::up(LAB, "root").await;
    // The inventory as a plain argument, as users type it.
    let (code, _, _) = pgha(&["deploy", &lab.inventory()]);
    assert_eq!(code, 0, "deploy");
    healthy_cluster(&lab).await;
    let pw = lab.secret("superuser_password");
    let c = pg(&lab.router(), 5000, &pw).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE day2 (id int PRIMARY KEY, note text)")
        .await
        .unwrap();

    status_matches_patroni(&lab).await;
    switchover_to_a_named_replica(&lab, &pw).await;
    switchover_picks_the_sync_standby(&lab).await;
    refused_switchovers_change_nothing(&lab).await;
    concurrent_deploys_one_runs(&lab).await;
    status_names_a_killed_replica(&lab).await;
    leader_partition_rejoins_and_never_serves_stale_reads(&lab, &pw).await;
    replica_partition_comes_back_streaming(&lab, &pw).await;
    short_leader_partition_ends_well(&lab, &pw).await;
}

/// The leader is cut off longer than Patroni's ttl while a writer and a reader run:
/// a survivor takes over, nothing acknowledged is lost, the isolated old leader
/// acknowledges nothing after the cut, and after the heal it is rewound and streams
/// from the new leader; until then, reads through :5001 never reach it.
async fn leader_partition_rejoins_and_never_serves_stale_reads(lab: &Lab, pw: &str) {
    let old = healthy_cluster(lab).await;
    let old_ip = lab.ip(&old);
    let old_tl = timeline_of(lab, &old).await;
    let writer = writer_going(lab, pw, "day2", 1).await;
    let reader = Reader::start(&lab.router(), pw);

    lab::partition(LAB, &old).await.expect("lab partition");
    let cut = Instant::now();
    let survivors: Vec<String> = lab.db_hosts().into_iter().filter(|h| *h != old).collect();
    let new = eventually("a survivor to lead", 90, || async {
        let mut last = String::new();
        for h in &survivors {
            match get_json(&format!("http://{}:8008/patroni", lab.ip(h))).await {
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

    // Stay cut off until the new leader takes writes and the isolated old leader,
    // seen on the host itself, has stopped acting as a primary (Patroni demotes it
    // once it cannot renew its key): the long partition of the field report.
    acked(&writer, 20, cut, Some(&lab.ip(&new))).await;
    eventually(&format!("isolated {old} to step down"), 120, || async {
        not_a_primary(lab, &old)
    })
    .await;
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
    let reads = reader.stop().await;

    assert!(acked.len() > 20, "the writer got acknowledgements");
    assert_no_loss(lab, "day2", &acked).await;
    let split_brain: Vec<&Ack> = acked
        .iter()
        .filter(|a| a.sent > cut && a.server == old_ip)
        .collect();
    assert!(
        split_brain.is_empty(),
        "writes acknowledged by the isolated old leader after the cut: {split_brain:?}"
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
async fn replica_partition_comes_back_streaming(lab: &Lab, pw: &str) {
    let leader = healthy_cluster(lab).await;
    let tl = timeline_of(lab, &leader).await;
    let (_, members) = patroni_cluster(lab).await.unwrap();
    // The synchronous standby: the harder case (the leader must pick another).
    let replica = members
        .iter()
        .find(|m| m.role == "sync_standby")
        .or_else(|| members.iter().find(|m| m.role != "leader"))
        .unwrap()
        .name
        .clone();
    let writer = writer_going(lab, pw, "day2", 100_000).await;
    let reader = Reader::start(&lab.router(), pw);
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
async fn short_leader_partition_ends_well(lab: &Lab, pw: &str) {
    let leader = healthy_cluster(lab).await;
    let writer = writer_going(lab, pw, "day2", 200_000).await;
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
        let v = get_json(&format!("http://{}:8008/patroni", lab.ip(host))).await?;
        v["timeline"].as_u64().ok_or(format!("{v}"))
    })
    .await
}

fn status_json(lab: &Lab) -> (i32, serde_json::Value) {
    let (code, out, _) = pgha(&["status", &lab.inventory(), "--output", "json"]);
    (code, json_doc(&out))
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

/// `switchover --to` a replica while a writer runs: that host leads (read from
/// Patroni), the old leader streams again, no acknowledged row is lost, and the
/// measured gap is reported.
async fn switchover_to_a_named_replica(lab: &Lab, pw: &str) {
    let old = healthy_cluster(lab).await;
    // In synchronous mode only the sync standby can be promoted: name it.
    let target = sync_standby(lab).await;
    let writer = writer_going(lab, pw, "day2", 300_000).await;
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

/// `--to` the leader itself, an unknown host, or a replica that is not the
/// synchronous standby: refused, and the leader and its postmaster stay.
async fn refused_switchovers_change_nothing(lab: &Lab) {
    let leader = healthy_cluster(lab).await;
    sync_standby(lab).await;
    let (_, members) = patroni_cluster(lab).await.unwrap();
    let async_replica = members
        .iter()
        .find(|m| m.role == "replica")
        .map(|m| m.name.clone());
    let before = start_times(lab).await;
    let mut attempts = vec![(leader.clone(), 1), ("db9".to_string(), 5)];
    if let Some(r) = async_replica {
        attempts.push((r, 1));
    }
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
    let ep = format!("http://{}:2379", lab.ip(&leader));
    let holder = eventually("the first deploy to hold the etcd lock", 60, || async {
        let mut c = etcd_client::Client::connect([ep.as_str()], None)
            .await
            .map_err(|e| e.to_string())?;
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

async fn sync_standby(lab: &Lab) -> String {
    eventually("a synchronous standby", 60, || async {
        let (_, members) = patroni_cluster(lab).await?;
        members
            .iter()
            .find(|m| m.role == "sync_standby" && m.state == "streaming")
            .map(|m| m.name.clone())
            .ok_or(format!("{members:?}"))
    })
    .await
}
