//! End-to-end: `pgha rebuild` on its own lab (`pgha-e2e-rebuild`): a replica lost and
//! rebuilt at the same address and at a new one while a writer runs, the live
//! leader refused, a killed leader rebuilt after failover, and a router rebuilt,
//! with TLS on (the default).
//! Assertions read etcd, Patroni, the hosts' files and rows, not pgha's report.

mod common;

use common::*;
use pgha::lab;

const LAB: &str = "pgha-e2e-rebuild";

/// etcd as every db host's endpoint sees it: (member name, peer URLs) sorted, and
/// one cluster id shared by all.
async fn etcd_members(lab: &Lab) -> Vec<(String, Vec<String>)> {
    let mut ids = Vec::new();
    let mut seen = None;
    for h in lab.db_hosts() {
        let mut c = lab.etcd(&h).await;
        let st = c.status().await.expect("etcd status");
        ids.push(st.header().unwrap().cluster_id());
        let r = c.member_list().await.expect("member list");
        let mut m: Vec<(String, Vec<String>)> = r
            .members()
            .iter()
            .map(|m| {
                assert!(!m.is_learner(), "{} is still a learner", m.name());
                (m.name().to_string(), m.peer_urls().to_vec())
            })
            .collect();
        m.sort();
        if let Some(prev) = &seen {
            assert_eq!(prev, &m, "every endpoint lists the same members");
        }
        seen = Some(m);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one etcd cluster id");
    seen.unwrap()
}

async fn rebuilt_and_streaming(lab: &Lab, host: &str) {
    let leader = healthy_cluster(lab).await;
    assert_ne!(leader, host, "{host} came back as a replica");
    let members = etcd_members(lab).await;
    assert_eq!(members.len(), 3, "three etcd voters: {members:?}");
    let url = format!("{}://{}:2380", lab.scheme(), lab.ip(host));
    assert!(
        members
            .iter()
            .any(|(n, u)| n == host && u == &vec![url.clone()]),
        "{host} is an etcd voter at {url}: {members:?}"
    );
}

fn deploy_changes_nothing(lab: &Lab) {
    let (code, out, _) = pgha(&["deploy", &lab.inventory(), "--output", "json"]);
    assert_eq!(code, 0, "deploy after rebuild");
    assert_eq!(
        json_doc(&out)["changed"],
        0,
        "a deploy after a rebuild changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_replicas_a_lost_leader_and_a_router() {
    // TLS on (the default): a rebuilt member gets its certificate, a new address a
    // new one.
    let mut lab = Lab::up_tls(LAB, "root", 3, true).await;
    let inv = lab.inventory();
    let (code, _, _) = pgha(&["deploy", &inv]);
    assert_eq!(code, 0, "deploy");
    let leader = healthy_cluster(&lab).await;
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE rb (id int PRIMARY KEY, note text)")
        .await
        .unwrap();

    // 1. The live leader: refused, nothing changes.
    let before = start_times(&lab).await;
    let (code, _, stderr) = pgha(&["rebuild", &leader, &inv]);
    assert_eq!(code, 1, "rebuilding the leader is refused");
    assert!(
        stderr.contains("pgha switchover"),
        "names the way out: {stderr}"
    );
    assert_eq!(start_times(&lab).await, before, "nothing restarted");
    assert_eq!(healthy_cluster(&lab).await, leader);
    // A healthy replica needs --force.
    let replica = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    let (code, _, stderr) = pgha(&["rebuild", &replica, &inv]);
    assert_eq!(code, 1, "a healthy member needs --force: {stderr}");

    moved_leadership_is_seen_before_the_wipe(&lab, &inv).await;
    tls_switch_refused_before_any_change(&lab, &inv).await;

    // 2. A replica's disk lost: fresh host at the same address. First the
    // refusals that leave it as it is: etcd would lose its quorum (another
    // member's etcd down), nothing to clone from (no other Patroni answers).
    let leader = healthy_cluster(&lab).await;
    let replica = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    let other = lab
        .db_hosts()
        .into_iter()
        .find(|h| *h != leader && *h != replica)
        .unwrap();
    lab::replace(LAB, &replica).await.expect("lab replace");
    // etcd stopped on another member (rebuild needs every host reachable by SSH).
    let (code, _) = lab.sh(&other, "systemctl stop etcd");
    assert_eq!(code, 0, "stop etcd on {other}");
    let (code, _, stderr) = pgha(&["rebuild", &replica, &inv]);
    assert_eq!(code, 1, "refused without etcd quorum: {stderr}");
    assert!(
        stderr.contains("needed for quorum") && stderr.contains("nothing was changed"),
        "names the quorum: {stderr}"
    );
    still_bare(&lab, &replica);
    let (code, _) = lab.sh(&other, "systemctl start etcd");
    assert_eq!(code, 0, "start etcd on {other}");
    leader_and_streaming(&lab, &other).await;
    for h in lab.db_hosts().iter().filter(|h| **h != replica) {
        let (code, _) = lab.sh(h, "systemctl stop patroni");
        assert_eq!(code, 0, "stop Patroni on {h}");
    }
    let (code, _, stderr) = pgha(&["rebuild", &replica, &inv]);
    assert_eq!(code, 1, "refused with nothing to clone from: {stderr}");
    assert!(
        stderr.contains("nothing to clone from"),
        "names the missing clone source: {stderr}"
    );
    still_bare(&lab, &replica);
    for h in lab.db_hosts().iter().filter(|h| **h != replica) {
        let (code, _) = lab.sh(h, "systemctl start patroni");
        assert_eq!(code, 0, "start Patroni on {h}");
    }
    leader_and_streaming(&lab, &other).await;

    // The rebuild itself, with a writer running.
    let writer = writer_going(&lab, "rb", 1).await;
    let (code, _, _) = pgha(&["rebuild", &replica, &inv]);
    assert_eq!(code, 0, "rebuild {replica}");
    rebuilt_and_streaming(&lab, &replica).await;
    let acked = writer.stop().await;
    assert_no_loss(&lab, "rb", &acked).await;
    let n = lab.psql(&replica, "SELECT count(*) FROM rb");
    assert!(
        n.parse::<usize>().unwrap() >= acked.len(),
        "{replica} holds the rows ({n})"
    );
    deploy_changes_nothing(&lab);

    // 3. The same at a new address: the old one is gone everywhere.
    let old_ip = lab.ip(&replica);
    lab::replace_at_new_address(LAB, &replica)
        .await
        .expect("lab replace --new-address");
    lab.refresh().await;
    let new_ip = lab.ip(&replica);
    assert_ne!(new_ip, old_ip, "a new address");
    let writer = writer_going(&lab, "rb", 100_000).await;
    let (code, _, _) = pgha(&["rebuild", &replica, &inv]);
    assert_eq!(code, 0, "rebuild {replica} at {new_ip}");
    rebuilt_and_streaming(&lab, &replica).await;
    let acked = writer.stop().await;
    assert_no_loss(&lab, "rb", &acked).await;
    let members = etcd_members(&lab).await;
    assert!(
        !members
            .iter()
            .any(|(_, u)| u.iter().any(|u| u.contains(&format!("{old_ip}:")))),
        "the old address in no etcd member: {members:?}"
    );
    for h in lab.db_hosts() {
        let (_, n) = lab.sh(
            &h,
            &format!(
                "grep -c -w {old_ip} /etc/patroni/config.yml /etc/default/etcd /var/lib/postgresql/17/main/pg_hba.conf | awk -F: '{{s+=$2}} END {{print s}}'"
            ),
        );
        assert_eq!(
            n.trim(),
            "0",
            "{h}: the old address in no pg_hba, Patroni or etcd file"
        );
    }
    let (_, n) = lab.sh(
        "router1",
        &format!("grep -c -w {old_ip} /etc/haproxy/haproxy.cfg"),
    );
    assert_eq!(n.trim(), "0", "the old address in no HAProxy backend");
    deploy_changes_nothing(&lab);

    // 4. The leader's host killed: after failover, the lost old leader is rebuilt.
    let old_leader = healthy_cluster(&lab).await;
    lab::kill(LAB, &old_leader).await.expect("lab kill");
    eventually("a survivor to lead", 90, || async {
        let (l, _) = patroni_cluster(&lab).await?;
        if l != old_leader {
            Ok(())
        } else {
            Err(format!("{l} still leads"))
        }
    })
    .await;
    lab::replace(LAB, &old_leader).await.expect("lab replace");
    let (code, _, _) = pgha(&["rebuild", &old_leader, &inv]);
    assert_eq!(code, 0, "rebuild the lost leader");
    rebuilt_and_streaming(&lab, &old_leader).await;

    // 5. A router lost and rebuilt: writes go through it again.
    lab::replace(LAB, "router1")
        .await
        .expect("lab replace router1");
    let (code, _, _) = pgha(&["rebuild", "router1", &inv]);
    assert_eq!(code, 0, "rebuild router1");
    let leader = healthy_cluster(&lab).await;
    let up: Vec<String> = haproxy_servers(&lab, "primary")
        .await
        .into_iter()
        .filter(|(_, s)| s == "UP")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        up,
        [leader],
        "the rebuilt router sends writes to the leader alone"
    );
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    c.execute(
        "INSERT INTO rb VALUES (999999, 'via the rebuilt router')",
        &[],
    )
    .await
    .expect("a write through the rebuilt router");
    verify_every_backup(&lab);
}

/// A replaced host got nothing: no package, no data directory.
fn still_bare(lab: &Lab, host: &str) {
    let (_, n) = lab.sh(
        host,
        "dpkg-query -W -f='${Status}\\n' postgresql-17 patroni etcd-server 2>/dev/null | grep -c 'ok installed'",
    );
    assert_eq!(
        n.trim(),
        "0",
        "{host}: no package installed by a refused rebuild"
    );
    let (code, _) = lab.sh(host, "test -e /var/lib/postgresql/17/main");
    assert_ne!(code, 0, "{host}: no data directory");
}

/// A running leader and `member` streaming from it (the third db host may be bare).
async fn leader_and_streaming(lab: &Lab, member: &str) {
    eventually(&format!("a leader and {member} streaming"), 180, || async {
        let (l, members) = patroni_cluster(lab).await?;
        let ok = members
            .iter()
            .any(|m| m.name == member && (l == member || m.state == "streaming"));
        if ok {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await
}

/// An operator's switchover onto the target while rebuild --force runs (patronictl,
/// outside pgha): judged again under the lock, and again right before the wipe;
/// refused both times, the target leading on with its data untouched.
async fn moved_leadership_is_seen_before_the_wipe(lab: &Lab, inv: &str) {
    for point in ["rebuild:assessed", "rebuild:before-wipe"] {
        let leader = healthy_cluster(lab).await;
        let target = sync_standby(lab).await;
        let before = start_times(lab).await;
        let mut run = PausedRun::start(&["rebuild", &target, inv, "--force"], &[point]);
        run.paused_at(point, 1).await;
        patronictl_switchover(lab, &leader, &leader, &target);
        leads(lab, &target).await;
        run.resume(point);
        let (code, _, stderr) = run.finish().await;
        assert_eq!(code, 1, "{point}: the rebuild is refused: {stderr}");
        assert!(
            stderr.contains("nothing was") && stderr.contains("pgha switchover"),
            "{point}: says nothing was wiped and how to go on: {stderr}"
        );
        assert_eq!(healthy_cluster(lab).await, target, "{target} leads on");
        assert_eq!(
            start_times(lab).await.get(&target),
            before.get(&target),
            "{point}: {target}'s PostgreSQL was never stopped"
        );
        let (code, _) = lab.sh(&target, "test -s /var/lib/postgresql/17/main/PG_VERSION");
        assert_eq!(code, 0, "{point}: {target}'s data directory is there");
    }
}

/// `tls: false` against a TLS cluster: refused before anything (the check used to
/// come after the wipe).
async fn tls_switch_refused_before_any_change(lab: &Lab, inv: &str) {
    let leader = healthy_cluster(lab).await;
    let replica = lab.db_hosts().into_iter().find(|h| *h != leader).unwrap();
    let text = std::fs::read_to_string(inv).unwrap();
    std::fs::write(inv, text.replacen("vars:\n", "vars:\n    tls: false\n", 1)).unwrap();
    let before = start_times(lab).await;
    let (code, _, stderr) = pgha(&["rebuild", &replica, inv, "--force"]);
    std::fs::write(inv, &text).unwrap();
    assert_eq!(code, 1, "refused: {stderr}");
    assert!(
        stderr.contains("runs with TLS") && stderr.contains("nothing was changed"),
        "names the TLS setting: {stderr}"
    );
    assert_eq!(
        start_times(lab).await,
        before,
        "nothing was restarted or wiped"
    );
}
