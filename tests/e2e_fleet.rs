//! End-to-end: several clusters from one controller, on its own lab
//! (`pgha-e2e-fleet`: 9 db hosts and 3 routers, three clusters of 3 + 1).
//! `pgha deploy a b c` deploys them at once; one cluster with a host down fails
//! alone (its hosts untouched) while the others are deployed; `pgha status a b c`
//! gives a line per cluster and the worst exit code; a re-run of the two, one
//! cluster at a time (`--forks 4`), changes nothing. Assertions
//! read each cluster's Patroni on its own hosts and the hosts' packages.

mod common;

use std::collections::BTreeSet;

use common::*;
use pgha::lab;
use serde_json::Value;

const LAB: &str = "pgha-e2e-fleet";
/// Each cluster and its db hosts (router1..3 in order).
const CLUSTERS: [(&str, [&str; 3]); 3] = [
    ("alpha", ["db1", "db2", "db3"]),
    ("beta", ["db4", "db5", "db6"]),
    ("gamma", ["db7", "db8", "db9"]),
];

/// One cluster's inventory in its own directory (its secrets and certificates
/// beside it).
fn inventory(lab: &Lab, index: usize, cluster: &str) -> String {
    let text = pgha::lab::layout::fleet_inventory(cluster, index, &lab.info.dir, |h| {
        lab.info.host(h).map(|x| x.address)
    })
    .unwrap();
    let path = lab.info.dir.join(cluster).join("inventory.yml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Patroni's own view from a host of the cluster: (members, leader), once a
/// leader and every other member streaming.
async fn patroni_members(lab: &Lab, via: &str) -> (BTreeSet<String>, String) {
    eventually(
        &format!("a healthy cluster seen from {via}"),
        120,
        || async {
            let (code, out) = lab.sh(via, "curl -sk https://127.0.0.1:8008/cluster");
            if code != 0 {
                return Err(format!("curl exited {code}"));
            }
            let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let names = members
                .iter()
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect();
            let leaders: Vec<String> = members
                .iter()
                .filter(|m| m["role"] == "leader")
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect();
            let streaming = members.iter().filter(|m| m["state"] == "streaming").count();
            if leaders.len() == 1 && streaming + 1 == members.len() {
                Ok((names, leaders[0].clone()))
            } else {
                Err(out)
            }
        },
    )
    .await
}

fn has_postgres(lab: &Lab, host: &str) -> bool {
    lab.sh(
        host,
        "dpkg-query -W -f='${Status}' postgresql-17 2>/dev/null",
    )
    .1
    .contains("install ok installed")
}

fn cluster_doc<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["clusters"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cluster"] == name))
        .unwrap_or_else(|| panic!("{name} in the summary: {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_clusters_at_once_one_failing_alone() {
    let lab = Lab::up_hosts(LAB, 9, 3).await;
    let invs: Vec<String> = CLUSTERS
        .iter()
        .enumerate()
        .map(|(i, (c, _))| inventory(&lab, i, c))
        .collect();

    // Two inventories sharing hosts: refused before any contact.
    let copy = lab.info.dir.join("delta.yml");
    std::fs::write(
        &copy,
        std::fs::read_to_string(&invs[0])
            .unwrap()
            .replace("cluster_name: alpha", "cluster_name: delta"),
    )
    .unwrap();
    let (code, _, err) = pgha(&["deploy", &invs[0], &copy.display().to_string()]);
    assert_eq!(code, 4, "shared hosts are an inventory error: {err}");
    assert!(
        err.contains("lists host(s) of")
            && err.contains("db1 (")
            && err.contains("nothing was done"),
        "{err}"
    );
    assert!(!has_postgres(&lab, "db1"), "the refusal touched no host");

    // gamma has a host down: it fails alone, the others are deployed at once.
    lab::kill(LAB, "db9").await.expect("lab kill");
    let mut args = vec!["deploy"];
    args.extend(invs.iter().map(String::as_str));
    args.extend(["--output", "json"]);
    let (code, out, err) = pgha(&args);
    let doc = json_doc(&out);
    assert_eq!(
        code, 3,
        "the worst exit code (gamma unreachable): {doc}\n{err}"
    );
    assert_eq!(doc["exit"], 3, "{doc}");
    for ok in ["alpha", "beta"] {
        let c = cluster_doc(&doc, ok);
        assert_eq!(c["ok"], true, "{ok} deployed: {c}");
        assert!(c["result"]["changed"].as_u64().unwrap_or(0) > 0, "{c}");
        assert!(
            err.contains(&format!("[{ok}] ")),
            "its lines carry its name"
        );
    }
    let gamma = cluster_doc(&doc, "gamma");
    assert_eq!(gamma["ok"], false, "{gamma}");
    assert!(
        gamma["error"].as_str().unwrap_or_default().contains("db9"),
        "names the host: {gamma}"
    );
    for (cluster, dbs) in &CLUSTERS[..2] {
        let (members, leader) = patroni_members(&lab, dbs[0]).await;
        assert_eq!(
            members,
            dbs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
            "{cluster} is its own hosts only"
        );
        assert!(dbs.contains(&leader.as_str()), "{cluster}: {leader}");
    }
    for h in ["db7", "db8"] {
        assert!(!has_postgres(&lab, h), "gamma's {h} untouched");
    }

    // Status of all: a line each, the worst exit code. Read until alpha's and
    // beta's verdicts settle (a deploy's last reload may still be under way).
    let mut args = vec!["status"];
    args.extend(invs.iter().map(String::as_str));
    let line = |out: &str, c: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{c} ")))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let (code, out) = eventually("alpha and beta healthy in status", 60, || async {
        let (code, out, _) = pgha(&args);
        if ["alpha", "beta"]
            .iter()
            .all(|c| line(&out, c).contains("ok      healthy"))
        {
            Ok((code, out))
        } else {
            Err(out)
        }
    })
    .await;
    assert_eq!(code, 1, "gamma is down: {out}");
    assert!(line(&out, "gamma").contains("exit 1  down"), "{out}");

    // A re-run of the two deployed clusters, at most 4 hosts at once (one cluster
    // after the other): nothing to change on either. (Deploying gamma too would
    // prove nothing new and cost the suite another cold deploy.)
    let (code, out, err) = pgha(&[
        "deploy", "--forks", "4", &invs[0], &invs[1], "--output", "json",
    ]);
    let doc = json_doc(&out);
    assert_eq!(code, 0, "{doc}\n{err}");
    for ok in ["alpha", "beta"] {
        assert_eq!(
            cluster_doc(&doc, ok)["result"]["changed"],
            0,
            "{ok} left as it was: {doc}"
        );
    }
    let (code, out, _) = pgha(&["status", &invs[0], &invs[1], "--output", "json"]);
    let doc = json_doc(&out);
    assert_eq!(code, 0, "{doc}");
    for (c, _) in &CLUSTERS[..2] {
        let d = cluster_doc(&doc, c);
        assert_eq!(d["result"]["healthy"], true, "{c}: {d}");
        assert_eq!(d["result"]["cluster"], *c, "{d}");
    }
}
