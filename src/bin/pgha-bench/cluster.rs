//! The lab's cluster as the benchmark reaches it: addresses, the TLS material,
//! the workload clients' target, and waits on Patroni's view.

use std::collections::BTreeMap;
use std::time::Duration;

use pgha::lab::LabInfo;
use pgha::lab::clients::{Target, pg};
use pgha::probe::{Net, patroni};

/// How to reach the lab's cluster: its CA and pgha's client certificate (after
/// its first deploy created them).
pub(crate) fn net(info: &LabInfo) -> Net {
    let inv =
        pgha::inventory::load(&info.inventory_path, &Default::default()).expect("lab inventory");
    let pki = pgha::pki::load(&inv, false).expect("the lab's certificates (deploy makes them)");
    Net::new(Some(pki.tls()))
}

/// The clients' target: the router's ports as the superuser.
pub(crate) fn target(info: &LabInfo) -> Target {
    Target::new(
        net(info),
        &ip(info, "router1"),
        &secret(info, "superuser_password"),
    )
}

pub(crate) fn ip(info: &LabInfo, host: &str) -> String {
    info.host(host)
        .map(|h| h.address.to_string())
        .unwrap_or_default()
}

pub(crate) fn apis(info: &LabInfo) -> Vec<String> {
    info.hosts
        .iter()
        .filter(|h| h.name.starts_with("db"))
        .map(|h| format!("https://{}:8008", h.address))
        .collect()
}

pub(crate) fn secret(info: &LabInfo, key: &str) -> String {
    let text = std::fs::read_to_string(info.dir.join("inventory.secrets.yml")).expect("secrets");
    let m: BTreeMap<String, String> = yaml_serde::from_str(&text).expect("secrets yaml");
    m[key].clone()
}

/// Wait for a leader and every replica streaming with lag 0; the leader.
pub(crate) async fn wait_healthy(info: &LabInfo) -> String {
    let names: Vec<String> = info
        .hosts
        .iter()
        .filter(|h| h.name.starts_with("db"))
        .map(|h| h.name.clone())
        .collect();
    pgha::wait::until("a healthy cluster", Duration::from_secs(300), || async {
        let v = patroni::cluster_any(&net(info), &apis(info)).await?;
        v.healthy(&names, 0)
    })
    .await
    .expect("cluster healthy")
}

pub(crate) async fn wait_streaming(info: &LabInfo, host: &str) {
    pgha::wait::until(
        &format!("{host} streaming"),
        Duration::from_secs(300),
        || async {
            let v = patroni::cluster_any(&net(info), &apis(info)).await?;
            let tl = v.leader_timeline();
            match v.member(host) {
                Some(m) if m.state == "streaming" && m.timeline == tl && m.lag == Some(0) => Ok(()),
                _ => Err(v.summary()),
            }
        },
    )
    .await
    .expect("old leader streams");
}

pub(crate) async fn create_table(target: &Target, table: &str) {
    let c = pg(target, 5000).await.expect("connect :5000");
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, note text)"
    ))
    .await
    .expect("create table");
}

/// Hand etcd's leadership to `host` (the bench's own doing, past the lock: it sets
/// up the case pgha avoids) and wait until every member agrees.
pub(crate) async fn lead_etcd_on(info: &LabInfo, host: &str) {
    let net = net(info);
    let eps: Vec<String> = info
        .hosts
        .iter()
        .filter(|h| h.name.starts_with("db"))
        .map(|h| format!("https://{}:2379", h.address))
        .collect();
    let report = pgha::probe::etcd::probe(&net, &eps).await;
    let q = report.quorum(eps.len()).expect("etcd quorum");
    if q.leader == host {
        return;
    }
    let (from_ep, _) = report.member(&q.leader).expect("etcd leader answers");
    let (_, to_id) = report.member(host).expect("etcd member answers");
    let opts = net.etcd_options(&from_ep, Duration::from_secs(10));
    etcd_client::Client::connect([from_ep.as_str()], Some(opts))
        .await
        .expect("connect to etcd's leader")
        .move_leader(to_id)
        .await
        .expect("etcd move-leader");
    pgha::wait::until(
        &format!("etcd led by {host}"),
        Duration::from_secs(30),
        || async {
            let q = pgha::probe::etcd::probe(&net, &eps)
                .await
                .quorum(eps.len())?;
            if q.leader == host {
                Ok(())
            } else {
                Err(format!("etcd leader {}", q.leader))
            }
        },
    )
    .await
    .expect("etcd leadership moved");
}
