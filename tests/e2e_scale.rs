//! The scale drill on a lab of 5 db hosts: a cluster deployed on 3 grows to 5 by
//! adding them to the inventory (etcd learners promoted, clones, routers and pg_hba
//! by reloads, nothing restarted on the members that were there), a host taken
//! out of the inventory stops deploy until `pgha remove` takes it out (refused as
//! the leader without --switchover), and back to 3, all under a writer that loses
//! nothing. After each step etcd's and Patroni's members, pg_hba and the routers'
//! backends are what the inventory says, and a deploy changes nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::*;
use serde_json::Value;

const DB: [&str; 5] = ["db1", "db2", "db3", "db4", "db5"];
const ALL: [&str; 7] = ["db1", "db2", "db3", "db4", "db5", "router1", "router2"];

/// The lab's inventory with only these hosts (same file: the secrets and
/// certificates beside it stay the cluster's).
fn write_inventory(lab: &Lab, full: &str, keep: &[&str]) {
    let mut out = Vec::new();
    let mut skip = false;
    for l in full.lines() {
        let t = l.trim_end();
        if let Some(name) = t.strip_prefix("        ").and_then(|n| n.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            skip = ALL.contains(&name) && !keep.contains(&name);
        } else if !t.starts_with("          ") {
            skip = false;
        }
        if !skip {
            out.push(l);
        }
    }
    std::fs::write(lab.inventory(), out.join("\n") + "\n").expect("write inventory");
}

fn deploy_json(lab: &Lab) -> (i32, Value, String) {
    let inv = lab.inventory();
    let (code, stdout, stderr) = pgha(&["deploy", "-i", &inv, "--output", "json"]);
    let doc = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    (code, doc, stderr)
}

fn deploy_changes_nothing(lab: &Lab, after: &str) {
    let (code, doc, stderr) = deploy_json(lab);
    assert_eq!(code, 0, "deploy after {after}: {stderr}");
    assert_eq!(
        doc["changed"], 0,
        "deploy after {after} changed something: {doc}"
    );
}

/// etcd's voting members as db1's (or `via`'s) member reports them; no learner left.
async fn etcd_voters(lab: &Lab, via: &str) -> Vec<String> {
    let mut c = lab.etcd(via).await;
    let list = c.member_list().await.expect("etcd member list");
    let learners: Vec<String> = list
        .members()
        .iter()
        .filter(|m| m.is_learner())
        .map(|m| format!("{:x}", m.id()))
        .collect();
    assert!(learners.is_empty(), "learners left in etcd: {learners:?}");
    let mut names: Vec<String> = list
        .members()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    names
}

/// Patroni's members once the leader runs and every other one streams with lag 0.
async fn patroni_members(lab: &Lab, want: &[&str]) -> String {
    eventually(
        &format!("Patroni members {want:?}: a leader, the others streaming with lag 0"),
        180,
        || async {
            let (leader, members) = patroni_cluster(lab).await?;
            let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            names.sort();
            let streaming = members
                .iter()
                .filter(|m| m.role != "leader" && m.state == "streaming" && m.lag == Some(0))
                .count();
            if names == want && streaming == want.len() - 1 {
                Ok(leader)
            } else {
                Err(format!("{members:?}"))
            }
        },
    )
    .await
}

fn hba_addresses(lab: &Lab, on: &str) -> Vec<String> {
    let mut v: Vec<String> = lab
        .psql(
            on,
            "SELECT DISTINCT address FROM pg_hba_file_rules WHERE address IS NOT NULL",
        )
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// etcd, Patroni, pg_hba and the routers' backends are exactly `hosts` (`etcd`
/// for etcd, `routers` for the routers in pg_hba); returns the leader.
async fn cluster_is(lab: &Lab, hosts: &[&str], etcd: &[&str], routers: &[&str]) -> String {
    assert_eq!(
        etcd_voters(lab, hosts[0]).await,
        etcd,
        "etcd's voting members"
    );
    let leader = patroni_members(lab, hosts).await;
    // pg_hba.conf is rewritten by Patroni when it handles the reload (its next
    // loop), the routers' backends by HAProxy's reload: waited on, not assumed.
    let expect_hba: Vec<(String, bool)> = ALL
        .iter()
        .map(|h| (lab.ip(h), hosts.contains(h) || routers.contains(h)))
        .collect();
    eventually(
        &format!("{leader}'s pg_hba to list exactly {hosts:?} and {routers:?}"),
        60,
        || async {
            let hba = hba_addresses(lab, &leader);
            let wrong: Vec<String> = expect_hba
                .iter()
                .filter(|(ip, want)| hba.contains(ip) != *want)
                .map(|(ip, want)| {
                    format!("{ip} {}", if *want { "missing" } else { "still listed" })
                })
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("{wrong:?} in {hba:?}"))
            }
        },
    )
    .await;
    for proxy in ["primary", "replicas"] {
        eventually(
            &format!("HAProxy's {proxy} backend to be {hosts:?}"),
            60,
            || async {
                let servers: BTreeMap<String, String> = haproxy_servers(lab, proxy).await;
                let mut names: Vec<&str> = servers.keys().map(|s| s.as_str()).collect();
                names.sort();
                if names == hosts {
                    Ok(())
                } else {
                    Err(format!("{servers:?}"))
                }
            },
        )
        .await;
    }
    leader
}

/// etcd's process and PostgreSQL's postmaster start on each host: unchanged means
/// not restarted.
async fn started(lab: &Lab, hosts: &[&str]) -> BTreeMap<String, (String, String)> {
    let mut m = BTreeMap::new();
    for h in hosts {
        let (_, pid) = lab.sh(h, "systemctl show -p MainPID --value etcd");
        let v = lab
            .patroni_get(h, "/patroni")
            .await
            .expect("patroni status");
        m.insert(
            h.to_string(),
            (pid.trim().to_string(), postmaster_start(&v)),
        );
    }
    m
}

fn active(lab: &Lab, host: &str, unit: &str) -> String {
    lab.sh(host, &format!("systemctl is-active {unit}"))
        .1
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_from_3_to_5_and_back_under_a_writer() {
    let lab = Lab::up_hosts("pgha-e2e-scale", 5, 2).await;
    let inv = lab.inventory();
    let full = std::fs::read_to_string(&inv).expect("lab inventory");

    // 3 db hosts, one router.
    write_inventory(&lab, &full, &["db1", "db2", "db3", "router1"]);
    let (code, _, stderr) = deploy_json(&lab);
    assert_eq!(code, 0, "first deploy on 3 db hosts: {stderr}");
    cluster_is(&lab, &DB[..3], &DB[..3], &["router1"]).await;
    assert_eq!(active(&lab, "router2", "haproxy"), "inactive");
    let c = pg(&lab.target(), 5000).await.expect("connect :5000");
    c.batch_execute("CREATE TABLE scale (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let writer = writer_going(&lab, "scale", 1).await;
    let before = started(&lab, &DB[..3]).await;

    // 3 -> 5 and a second router: they join on one deploy; nothing restarts on
    // db1..db3.
    std::fs::write(&inv, &full).unwrap();
    let t0 = Instant::now();
    let (code, doc, stderr) = deploy_json(&lab);
    assert_eq!(code, 0, "deploy adding db4, db5 and router2: {stderr}");
    eprintln!(
        "deploy adding db4, db5 and router2 took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(doc["changed"].as_u64().unwrap_or(0) > 0, "{doc}");
    cluster_is(&lab, &DB, &DB, &["router1", "router2"]).await;
    let via_router2 = Target::new(
        lab.net(),
        &lab.ip("router2"),
        &lab.secret("superuser_password"),
    );
    let c2 = pg(&via_router2, 5000)
        .await
        .expect("connect to router2:5000");
    let primary: bool = c2
        .query_one("SELECT NOT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(primary, "router2's write port reaches the primary");
    drop(c2);
    assert_eq!(
        started(&lab, &DB[..3]).await,
        before,
        "etcd and PostgreSQL of the members already there were not restarted"
    );
    acked(&writer, 20, t0, None).await;
    deploy_changes_nothing(&lab, "the hosts joined");

    // router2 deleted from the inventory: deploy stops and points to remove.
    write_inventory(&lab, &full, &["db1", "db2", "db3", "db4", "db5", "router1"]);
    let (code, _, stderr) = deploy_json(&lab);
    assert_eq!(code, 2, "deploy without router2 is refused: {stderr}");
    assert!(
        stderr.contains(&format!("pgha remove {inv} router2")),
        "{stderr}"
    );
    let (code, stdout, stderr) = pgha(&["remove", "router2", "-i", &inv, "--yes"]);
    assert_eq!(code, 0, "remove router2: {stdout}\n{stderr}");
    assert_eq!(active(&lab, "router2", "haproxy"), "inactive");
    cluster_is(&lab, &DB, &DB, &["router1"]).await;

    // db5 leads, then is deleted from the inventory: deploy stops, names it and
    // points to remove.
    let (code, _, stderr) = pgha(&["switchover", "-i", &inv, "--to", "db5"]);
    assert_eq!(code, 0, "switchover to db5: {stderr}");
    leads(&lab, "db5").await;
    write_inventory(&lab, &full, &["db1", "db2", "db3", "db4", "router1"]);
    let (code, _, stderr) = deploy_json(&lab);
    assert_eq!(code, 2, "deploy without db5 is refused: {stderr}");
    assert!(
        stderr.contains("db5") && stderr.contains(&format!("pgha remove {inv} db5")),
        "{stderr}"
    );
    assert_eq!(etcd_voters(&lab, "db1").await, DB, "nothing was changed");

    // The plan names what goes, db4 leaving etcd with it; nothing changes.
    let (code, stdout, stderr) = pgha(&["remove", "db5", "-i", &inv, "--check", "--switchover"]);
    assert_eq!(code, 0, "remove --check: {stderr}");
    assert!(
        stdout.contains("hand leadership from db5") && stdout.contains("etcd: db4 leaves etcd"),
        "{stdout}"
    );
    assert_eq!(
        etcd_voters(&lab, "db1").await,
        DB,
        "--check changed nothing"
    );
    leads(&lab, "db5").await;
    // db5 leads: remove refuses until --switchover hands leadership over.
    let (code, _, stderr) = pgha(&["remove", "db5", "-i", &inv, "--yes"]);
    assert_ne!(code, 0, "removing the leader without --switchover");
    assert!(stderr.contains("db5 leads the cluster"), "{stderr}");
    leads(&lab, "db5").await;
    let t0 = Instant::now();
    let (code, stdout, stderr) = pgha(&["remove", "db5", "-i", &inv, "--yes", "--switchover"]);
    assert_eq!(code, 0, "remove db5: {stdout}\n{stderr}");
    eprintln!("{stdout}");
    // 4 db hosts: etcd keeps 3 members (db4 left it too) and stays odd.
    let leader = cluster_is(&lab, &DB[..4], &DB[..3], &["router1"]).await;
    assert_ne!(leader, "db5");
    assert_eq!(active(&lab, "db5", "patroni"), "inactive");
    assert_eq!(active(&lab, "db5", "etcd"), "inactive");
    assert_eq!(active(&lab, "db4", "etcd"), "inactive", "db4 left etcd");
    let (code, _) = lab.sh("db5", "test -f /var/lib/postgresql/17/main/PG_VERSION");
    assert_eq!(code, 0, "db5's data is kept without --wipe");
    acked(&writer, 20, t0, None).await;
    deploy_changes_nothing(&lab, "db5 was removed");

    // 4 -> 3, the data wiped.
    write_inventory(&lab, &full, &["db1", "db2", "db3", "router1"]);
    let t0 = Instant::now();
    // It may lead now (the switchover from db5 picks the synchronous standby).
    let (code, stdout, stderr) = pgha(&[
        "remove",
        "db4",
        "-i",
        &inv,
        "--yes",
        "--wipe",
        "--switchover",
    ]);
    assert_eq!(code, 0, "remove db4: {stdout}\n{stderr}");
    eprintln!("{stdout}");
    cluster_is(&lab, &DB[..3], &DB[..3], &["router1"]).await;
    assert_eq!(active(&lab, "db4", "patroni"), "inactive");
    let (code, _) = lab.sh("db4", "test -e /var/lib/postgresql/17/main");
    assert_ne!(code, 0, "db4's data directory is removed with --wipe");
    acked(&writer, 20, t0, None).await;
    deploy_changes_nothing(&lab, "db4 was removed");

    // A host that is no member is refused; nothing acknowledged was lost.
    let (code, _, stderr) = pgha(&["remove", "db4", "-i", &inv, "--yes"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not a member"), "{stderr}");
    let acks = writer.stop().await;
    assert_no_loss(&lab, "scale", &acks).await;
}
