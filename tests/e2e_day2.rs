//! End-to-end, day 2, on one lab (`pgha-e2e-day2`): network partitions of the
//! leader and of a replica while clients write through :5000 and read through
//! :5001. Every assertion reads live state (Patroni, PostgreSQL through the router
//! and on each host), never pgha's report.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgha::lab;

const LAB: &str = "pgha-e2e-day2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn day2_partitions() {
    let lab = Lab::up(LAB, "root").await;
    let (code, _, _) = pgha(&["deploy", "-i", &lab.inventory()]);
    assert_eq!(code, 0, "deploy");
    healthy_cluster(&lab).await;
    let pw = lab.secret("superuser_password");
    let c = pg(&lab.router(), 5000, &pw).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE day2 (id int PRIMARY KEY, note text)")
        .await
        .unwrap();

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
    let writer = Writer::start(&lab.router(), pw, "day2", 1);
    let reader = Reader::start(&lab.router(), pw);
    tokio::time::sleep(Duration::from_secs(2)).await;

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

    // Stay cut off well past the leader key's ttl (20 s), as in the field report.
    let hold = Duration::from_secs(45).saturating_sub(cut.elapsed());
    tokio::time::sleep(hold).await;
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
    // Give the read port a few checks with the old leader back in it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = writer.stop().await;
    let reads = reader.stop().await;

    assert!(acked.len() > 20, "the writer got acknowledgements");
    assert_no_loss(lab, "day2", &acked).await;
    let split_brain: Vec<&Ack> = acked
        .iter()
        .filter(|a| a.at > cut && a.server == old_ip)
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
    let writer = Writer::start(&lab.router(), pw, "day2", 100_000);
    let reader = Reader::start(&lab.router(), pw);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab::partition(LAB, &replica).await.expect("lab partition");
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = writer.stop().await;
    let reads = reader.stop().await;
    assert_eq!(
        healthy_cluster(lab).await,
        leader,
        "a replica's partition moves no leadership"
    );
    assert_no_loss(lab, "day2", &acked).await;
    assert!(
        acked.iter().any(|a| a.at > cut + Duration::from_secs(25)),
        "writes went on while the replica was cut off"
    );
    check_reads(lab, &reads, cut, &replica, tl, &leader);
}

/// A leader cut off for less than Patroni's retry_timeout keeps (or cleanly hands
/// over) leadership: the cluster ends healthy and nothing acknowledged is lost.
async fn short_leader_partition_ends_well(lab: &Lab, pw: &str) {
    let leader = healthy_cluster(lab).await;
    let writer = Writer::start(&lab.router(), pw, "day2", 200_000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab::partition(LAB, &leader).await.expect("lab partition");
    tokio::time::sleep(Duration::from_secs(5)).await;
    lab::heal(LAB, &leader).await.expect("lab heal");
    healthy_cluster(lab).await;
    let (l, members) = patroni_cluster(lab).await.unwrap();
    let tl = members.iter().find(|m| m.name == l).unwrap().timeline;
    assert!(
        members.iter().all(|m| m.timeline == tl),
        "every member on the leader's timeline: {members:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.stop().await;
    assert_no_loss(lab, "day2", &acked).await;
}

async fn timeline_of(lab: &Lab, host: &str) -> u64 {
    eventually(&format!("{host}'s timeline"), 30, || async {
        let v = get_json(&format!("http://{}:8008/patroni", lab.ip(host))).await?;
        v["timeline"].as_u64().ok_or(format!("{v}"))
    })
    .await
}
