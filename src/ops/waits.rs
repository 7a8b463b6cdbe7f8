//! Waits on cluster state, built on the probes; every command reuses them (deploy's
//! barriers and verification, switchover, upgrade, rebuild). Each names what it
//! waits for and, when its deadline passes, the last state it saw.

use std::time::Duration;

use serde::Serialize;

use super::Endpoints;
use crate::probe::{etcd, haproxy, patroni, sql};
use crate::wait::{WaitError, until};

pub async fn wait_etcd_quorum(
    ep: &Endpoints,
    timeout: Duration,
) -> Result<etcd::Quorum, WaitError> {
    let n = ep.etcd.len();
    until(
        "etcd quorum (every endpoint healthy, one leader, one cluster id)",
        timeout,
        || async { etcd::probe(&ep.net, &ep.etcd).await.quorum(n) },
    )
    .await
}

/// etcd quorum among these endpoints only (members still to join are left out).
pub async fn wait_etcd_quorum_of(
    ep: &Endpoints,
    endpoints: &[String],
    timeout: Duration,
) -> Result<etcd::Quorum, WaitError> {
    let n = endpoints.len();
    until(
        &format!(
            "etcd quorum of {} (every endpoint healthy, one leader, one cluster id)",
            endpoints.join(", ")
        ),
        timeout,
        || async { etcd::probe(&ep.net, endpoints).await.quorum(n) },
    )
    .await
}

/// Leader running and every other db host streaming with lag 0.
pub async fn wait_patroni_healthy(
    ep: &Endpoints,
    members: &[String],
    timeout: Duration,
) -> Result<patroni::ClusterView, WaitError> {
    let what = format!("Patroni leader and {} streaming with lag 0", {
        let others = members.len().saturating_sub(1);
        format!("{others} replica{}", if others == 1 { "" } else { "s" })
    });
    until(&what, timeout, || async {
        let view = patroni::cluster_any(&ep.net, &ep.patroni_apis()).await?;
        view.healthy(members, 0)?;
        Ok(view)
    })
    .await
}

/// `member` streaming from `leader` (leader running, member on its timeline, lag 0).
pub async fn wait_member_streaming(
    ep: &Endpoints,
    member: &str,
    leader: &str,
    timeout: Duration,
) -> Result<(), WaitError> {
    until(
        &format!("{member} to stream from {leader} with lag 0"),
        timeout,
        || async {
            let view = patroni::cluster_any(&ep.net, &ep.patroni_apis()).await?;
            let l = view.leader().ok_or_else(|| view.summary())?;
            match view.member(member) {
                Some(m)
                    if l.name == leader
                        && m.state == "streaming"
                        && m.timeline == l.timeline
                        && m.lag == Some(0) =>
                {
                    Ok(())
                }
                _ => Err(view.summary()),
            }
        },
    )
    .await
}

/// A running leader with a synchronous standby streaming from it.
pub async fn wait_sync_standby(ep: &Endpoints, timeout: Duration) -> Result<String, WaitError> {
    until("a synchronous standby", timeout, || async {
        let view = patroni::cluster_any(&ep.net, &ep.patroni_apis()).await?;
        let tl = view.leader_timeline().ok_or_else(|| view.summary())?;
        view.members
            .iter()
            .find(|m| m.role == "sync_standby" && m.state == "streaming" && m.timeline == Some(tl))
            .map(|m| m.name.clone())
            .ok_or_else(|| view.summary())
    })
    .await
}

pub async fn wait_leader(
    ep: &Endpoints,
    expected: Option<&str>,
    timeout: Duration,
) -> Result<String, WaitError> {
    let what = match expected {
        Some(h) => format!("{h} to become the Patroni leader"),
        None => "a Patroni leader".to_string(),
    };
    until(&what, timeout, || async {
        let view = patroni::cluster_any(&ep.net, &ep.patroni_apis()).await?;
        match view.leader() {
            Some(l) if expected.is_none_or(|e| e == l.name) => Ok(l.name.clone()),
            _ => Err(view.summary()),
        }
    })
    .await
}

/// HAProxy on every router: exactly the leader UP for writes, the replicas UP for reads.
pub async fn wait_haproxy(
    ep: &Endpoints,
    leader: &str,
    replicas: &[String],
    timeout: Duration,
) -> Result<(), WaitError> {
    let mut want_replicas: Vec<String> = replicas.to_vec();
    want_replicas.sort();
    for (name, ip) in &ep.routers {
        let what = format!(
            "HAProxy on {name}: primary backend {leader} UP alone, replicas {} UP",
            want_replicas.join(",")
        );
        until(&what, timeout, || async {
            let b = haproxy::backends(&ep.net, ip, &ep.stats).await?;
            let up = b.up("primary");
            let mut rup = b.up("replicas");
            rup.sort();
            if up == [leader.to_string()] && rup == want_replicas {
                Ok(())
            } else {
                Err(format!(
                    "primary: {}; replicas: {}",
                    b.summary("primary"),
                    b.summary("replicas")
                ))
            }
        })
        .await?;
    }
    Ok(())
}

/// On every router, `server` UP (`up`) or not UP in HAProxy's `proxy` backend.
pub async fn wait_haproxy_server(
    ep: &Endpoints,
    proxy: &str,
    server: &str,
    up: bool,
    timeout: Duration,
) -> Result<(), WaitError> {
    for (name, ip) in &ep.routers {
        let what = format!(
            "HAProxy on {name} to mark {server} {} in {proxy}",
            if up { "UP" } else { "not UP" }
        );
        until(&what, timeout, || async {
            let b = haproxy::backends(&ep.net, ip, &ep.stats).await?;
            if b.up(proxy).iter().any(|s| s == server) == up {
                Ok(())
            } else {
                Err(b.summary(proxy))
            }
        })
        .await?;
    }
    Ok(())
}

/// Every exporter answers with pg_up 1.
pub async fn wait_exporters(ep: &Endpoints, timeout: Duration) -> Result<(), WaitError> {
    for (name, url) in &ep.exporters {
        until(
            &format!("postgres_exporter on {name} to report pg_up 1"),
            timeout,
            || async {
                match crate::probe::exporter::pg_up(&ep.net, url).await? {
                    true => Ok(()),
                    false => Err("pg_up 0".to_string()),
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// The canary key of one write attempt: unique per run and attempt.
pub fn canary_token(run: &str, attempt: u32) -> String {
    format!("{run}-{attempt}")
}

/// Write a canary through `write` until an attempt is acknowledged; the key it
/// wrote. Each attempt writes a fresh key: an insert that committed but whose
/// answer was lost (a failover, a dropped connection) would make a retry of the
/// same key fail on the primary key until the deadline.
pub async fn write_fresh_canary<F, Fut>(
    what: &str,
    timeout: Duration,
    run: &str,
    write: F,
) -> Result<String, WaitError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut attempt = 0;
    until(what, timeout, || {
        attempt += 1;
        let token = canary_token(run, attempt);
        let written = write(token.clone());
        async move { written.await.map(|()| token) }
    })
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundTrip {
    pub router: String,
    pub written_via: String,
    pub read_via: String,
    pub read_from: String,
}

/// Write a row through router:write_port and read it back through router:read_port
/// (from a replica: read port routes to replicas only).
pub async fn sql_round_trip(
    ep: &Endpoints,
    router_ip: &str,
    timeout: Duration,
) -> Result<RoundTrip, String> {
    let run = format!(
        "pgha-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        std::process::id()
    );
    let write = ep.router_port(router_ip, ep.write_port);
    let token = write_fresh_canary(
        &format!("a write through {router_ip}:{}", ep.write_port),
        timeout,
        &run,
        |token| {
            let write = write.clone();
            async move { sql::write_canary(&ep.net, &write, &token).await }
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let read = ep.router_port(router_ip, ep.read_port);
    let (_, server, _) = until(
        &format!(
            "the row to be readable through {router_ip}:{}",
            ep.read_port
        ),
        timeout,
        || async {
            match sql::read_canary(&ep.net, &read, &token).await? {
                (true, server, true) => Ok((true, server, true)),
                (false, server, _) => Err(format!("not yet visible on {server}")),
                (true, server, false) => Err(format!(
                    "read port served by {server}, which is not a replica"
                )),
            }
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(RoundTrip {
        router: router_ip.to_string(),
        written_via: format!("{router_ip}:{}", ep.write_port),
        read_via: format!("{router_ip}:{}", ep.read_port),
        read_from: server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// An attempt whose insert committed but whose answer was lost: the retry must
    /// not trip over its own row (the table's primary key), and the key read back
    /// is the one acknowledged.
    #[tokio::test]
    async fn a_canary_retry_after_a_lost_answer_writes_a_fresh_key() {
        let table: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        let calls = Mutex::new(0u32);
        let insert = |token: String| {
            let mut rows = table.lock().unwrap();
            let mut n = calls.lock().unwrap();
            *n += 1;
            let result = if !rows.insert(token.clone()) {
                Err(format!("insert: duplicate key value {token}"))
            } else if *n == 1 {
                Err("connection lost before the commit's answer".to_string())
            } else {
                Ok(())
            };
            async move { result }
        };
        let token = write_fresh_canary("a canary write", Duration::from_secs(3), "run", insert)
            .await
            .expect("a retry succeeds");
        assert_eq!(token, canary_token("run", 2));
        let rows = table.lock().unwrap();
        assert!(rows.contains(&token) && rows.contains("run-1"), "{rows:?}");
    }

    #[test]
    fn canary_keys_differ_per_attempt_and_per_run() {
        assert_ne!(canary_token("pgha-1-7", 1), canary_token("pgha-1-7", 2));
        assert_ne!(canary_token("pgha-1-7", 1), canary_token("pgha-1-8", 1));
    }
}
