//! End-to-end: monitoring on its own lab (`pgha-e2e-monitor`: 3 db hosts and a
//! router that is the backup repository and the monitoring host), observed in
//! Prometheus's and Alertmanager's own APIs and at a webhook receiver this test
//! runs on the lab network's gateway (this machine's address on the lab network).
//!
//! After deploy every target the inventory implies is up and each component's key
//! metric answers; exporters listen on their host's address only; the stats page
//! still wants its password. With a webhook added to the inventory (a reload of
//! Alertmanager, nothing else) and a re-run changing nothing: PostgreSQL stopped
//! on a replica, an etcd member stopped and the repository's pgBackRest server
//! stopped (WAL archiving failing) each reach the webhook as firing, `pgha status`
//! lists them, and each reaches it as resolved once put back. A hard kill of the
//! leader reaches it as PatroniNoLeader and PatroniFailover. The monitoring host,
//! lost and rebuilt with `pgha rebuild`, scrapes every target again (its samples
//! start fresh).
//!
//! Bounds (with the shipped `for:` values, 15 s scrapes, Alertmanager's 10 s
//! group_wait and 1 min group_interval): firing within 4 minutes, resolved
//! within 4 minutes.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pgha::lab;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LAB: &str = "pgha-e2e-monitor";
const ROUTER: &str = "router1";
const FIRE: u64 = 240;
const RESOLVE: u64 = 240;

/// What the webhook received: (status, alertname, instance, when).
type Got = Arc<Mutex<Vec<(String, String, String, Instant)>>>;

struct Hook {
    url: String,
    got: Got,
}

/// A webhook receiver: every POST's alerts recorded, 200 answered.
async fn webhook(ip: Ipv4Addr) -> Hook {
    let l = TcpListener::bind((IpAddr::V4(ip), 0)).await.unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    let got: Got = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then Content-Length bytes of body.
                let body = loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    }
                };
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                    return;
                };
                let now = Instant::now();
                let mut g = g.lock().unwrap();
                for a in v["alerts"].as_array().into_iter().flatten() {
                    let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
                    g.push((
                        s(&a["status"]),
                        s(&a["labels"]["alertname"]),
                        s(&a["labels"]["instance"]),
                        now,
                    ));
                }
            });
        }
    });
    Hook { url, got }
}

impl Hook {
    /// Until an alert `name` (on `instance`, when given) arrives with `status`
    /// after `since`; how long it took.
    async fn wait(
        &self,
        status: &str,
        name: &str,
        instance: Option<&str>,
        since: Instant,
        secs: u64,
    ) -> Duration {
        eventually(
            &format!("the webhook to receive {name} {status} (instance {instance:?})"),
            secs,
            || async {
                let g = self.got.lock().unwrap();
                match g.iter().find(|(st, n, i, at)| {
                    st == status && n == name && instance.is_none_or(|x| x == i) && *at >= since
                }) {
                    Some((_, _, _, at)) => Ok(at.duration_since(since)),
                    None => Err(format!(
                        "received so far: {:?}",
                        g.iter()
                            .map(|(s, n, i, _)| format!("{n}/{i} {s}"))
                            .collect::<Vec<_>>()
                    )),
                }
            },
        )
        .await
    }
}

fn deploy_json(lab: &Lab) -> Value {
    let inv = lab.inventory();
    let (code, out, err) = pgha(&["deploy", "-i", &inv, "--output", "json"]);
    assert_eq!(code, 0, "deploy:\n{out}\n{err}");
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_fire_for_each_failure_and_resolve() {
    let lab = Lab::up(LAB, "root").await;
    let (code, out, err) = pgha(&["deploy", "-i", &lab.inventory()]);
    assert_eq!(code, 0, "deploy:\n{out}\n{err}");
    println!("{out}");
    let leader = healthy_cluster(&lab).await;
    let dbs = lab.db_hosts();
    let hosts: Vec<String> = dbs.iter().cloned().chain([ROUTER.to_string()]).collect();

    // Every target the inventory implies, each up (Patroni's over HTTPS), and
    // each component's key metric.
    let mon = Monitor { host: ROUTER };
    let want = mon.targets(&dbs, &hosts, true);
    mon.all_targets_up(&lab, &want).await;
    mon.key_metrics(&lab, &leader, hosts.len(), true).await;

    // Exporters and etcd's metrics on the host's own address, not every interface.
    let (_, listening) = lab.sh("db1", "ss -Htln");
    let ip = lab.ip("db1");
    for port in [9100, 9187, 2381] {
        assert!(
            listening.contains(&format!("{ip}:{port} ")),
            "db1 :{port} not on {ip}:\n{listening}"
        );
        assert!(
            !listening.contains(&format!("0.0.0.0:{port} "))
                && !listening.contains(&format!("*:{port} ")),
            "db1 :{port} on every interface:\n{listening}"
        );
    }
    // The stats page still wants its password (only /metrics is open).
    let r = lab
        .net()
        .get(
            &format!("http://{}:8404/", lab.ip(ROUTER)),
            Duration::from_secs(5),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the stats page answered without a password"
    );

    // A webhook from the inventory: Alertmanager reloaded; nothing else restarted.
    let gw = lab::layout::gateway(lab.info.subnet);
    let hook = webhook(gw).await;
    let before = start_times(&lab).await;
    lab.add_vars(&format!(
        "    alert_webhook_urls: [\"{}\"]\n    backup_archive_fail_minutes: 1\n",
        hook.url
    ));
    let doc = deploy_json(&lab);
    assert!(doc["changed"].as_u64().unwrap_or(0) > 0, "{doc}");
    assert_eq!(
        start_times(&lab).await,
        before,
        "adding a webhook restarted a member"
    );
    let (_, cfg) = lab.sh(ROUTER, "cat /etc/prometheus/alertmanager.yml");
    assert!(cfg.contains(&hook.url), "{cfg}");
    let doc = deploy_json(&lab);
    assert_eq!(doc["changed"], 0, "a re-run changed something: {doc}");

    // Three failures at once, on three hosts.
    let replicas: Vec<String> = dbs.iter().filter(|h| **h != leader).cloned().collect();
    let (pg_down, etcd_down) = (replicas[0].clone(), replicas[1].clone());
    let t0 = Instant::now();
    assert_eq!(lab.sh(&pg_down, "systemctl stop patroni").0, 0);
    assert_eq!(lab.sh(&etcd_down, "systemctl stop etcd").0, 0);
    assert_eq!(lab.sh(ROUTER, "systemctl stop pgbackrest").0, 0);
    lab.psql(
        &leader,
        "CREATE TABLE mon_w (id serial PRIMARY KEY, at timestamptz DEFAULT now())",
    );
    // WAL to archive: a segment switched every few seconds while we wait.
    let stop_wal = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wal = {
        let (stop, lab_leader) = (stop_wal.clone(), leader.clone());
        let container = lab.info.host(&lab_leader).unwrap().container.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("docker")
                    .args([
                        "exec",
                        &container,
                        "su",
                        "postgres",
                        "-c",
                        "psql -qAtc 'INSERT INTO mon_w DEFAULT VALUES; SELECT pg_switch_wal()'",
                    ])
                    .output();
                std::thread::sleep(Duration::from_secs(5));
            }
        })
    };
    let took = hook
        .wait("firing", "PostgresDown", Some(&pg_down), t0, FIRE)
        .await;
    println!("PostgresDown {pg_down} reached the webhook after {took:?}");
    let took = hook
        .wait("firing", "EtcdMemberDown", Some(&etcd_down), t0, FIRE)
        .await;
    println!("EtcdMemberDown {etcd_down} reached the webhook after {took:?}");
    let took = hook
        .wait(
            "firing",
            "WalArchivingFailing",
            Some(&leader),
            t0,
            FIRE + 60,
        )
        .await;
    println!("WalArchivingFailing {leader} reached the webhook after {took:?}");
    // `pgha status` lists them.
    let (_, out, _) = pgha(&["status", "-i", &lab.inventory(), "--output", "json"]);
    let st = json_doc(&out);
    let listed: Vec<String> = st["alerts"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "active")
        .map(|a| {
            format!(
                "{}/{}",
                a["name"].as_str().unwrap_or(""),
                a["instance"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        format!("PostgresDown/{pg_down}"),
        format!("EtcdMemberDown/{etcd_down}"),
        format!("WalArchivingFailing/{leader}"),
    ] {
        assert!(
            listed.contains(&want),
            "status does not list {want}: {listed:?}"
        );
    }
    let (_, text, _) = pgha(&["status", "-i", &lab.inventory()]);
    assert!(
        text.contains("PostgresDown") && text.contains("firing"),
        "{text}"
    );

    // Put back: each resolves.
    let t1 = Instant::now();
    assert_eq!(lab.sh(&pg_down, "systemctl start patroni").0, 0);
    assert_eq!(lab.sh(&etcd_down, "systemctl start etcd").0, 0);
    assert_eq!(lab.sh(ROUTER, "systemctl start pgbackrest").0, 0);
    for (name, inst) in [
        ("PostgresDown", &pg_down),
        ("EtcdMemberDown", &etcd_down),
        ("WalArchivingFailing", &leader),
    ] {
        let took = hook.wait("resolved", name, Some(inst), t1, RESOLVE).await;
        println!("{name} {inst} resolved at the webhook after {took:?}");
    }
    stop_wal.store(true, std::sync::atomic::Ordering::Relaxed);
    wal.join().unwrap();
    let leader = healthy_cluster(&lab).await;

    // A hard kill of the leader: no leader, then a failover.
    let t2 = Instant::now();
    lab::kill(LAB, &leader).await.expect("lab kill");
    let took = hook.wait("firing", "PatroniNoLeader", None, t2, FIRE).await;
    println!("PatroniNoLeader reached the webhook after {took:?}");
    let took = hook.wait("firing", "PatroniFailover", None, t2, FIRE).await;
    println!("PatroniFailover reached the webhook after {took:?}");
    lab::start(LAB, &leader).await.expect("lab start");
    healthy_cluster(&lab).await;

    // The monitoring host lost and rebuilt (a new, empty host at its address): it
    // starts without samples, and every target is up again, the rules running.
    lab::replace(LAB, ROUTER).await.expect("lab replace");
    let (code, out, err) = pgha(&["rebuild", ROUTER, &lab.inventory()]);
    assert_eq!(code, 0, "rebuild {ROUTER}:\n{out}\n{err}");
    mon.all_targets_up(&lab, &want).await;
    mon.watchdog_at_alertmanager(&lab).await;
    let (_, cfg) = lab.sh(ROUTER, "cat /etc/prometheus/alertmanager.yml");
    assert!(
        cfg.contains(&hook.url),
        "the rebuilt host lost the webhook: {cfg}"
    );
}
