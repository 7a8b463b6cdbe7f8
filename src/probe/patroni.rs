//! Patroni's REST API: cluster view, member status, dynamic config, restart and
//! switchover.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Net;
use crate::inventory::Secret;

/// The user Patroni's REST API authenticates unsafe requests as (see patroni.yml.j2).
pub const API_USER: &str = "patroni";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Member {
    pub name: String,
    /// leader, replica, sync_standby, standby_leader...
    pub role: String,
    /// running, streaming, starting, stopped...
    pub state: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub timeline: Option<u64>,
    /// Replication lag in bytes; Patroni says "unknown" when it cannot tell.
    #[serde(default, deserialize_with = "lag")]
    pub lag: Option<u64>,
    #[serde(default)]
    pub pending_restart: bool,
    /// Tags Patroni reports for the member (nofailover, noloadbalance, nosync...).
    #[serde(default)]
    pub tags: serde_json::Map<String, Value>,
}

impl Member {
    /// Whether a boolean tag is set.
    pub fn tag(&self, name: &str) -> bool {
        self.tags.get(name).is_some_and(|v| v == true)
    }
}

fn lag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64(),
        _ => None,
    })
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ClusterView {
    #[serde(default)]
    pub members: Vec<Member>,
    /// Maintenance mode: Patroni does not fail over or manage PostgreSQL.
    #[serde(default)]
    pub pause: bool,
}

impl ClusterView {
    pub fn leader(&self) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.role == "leader" && m.state == "running")
    }
    pub fn replicas(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.role != "leader")
    }
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
    /// The leader's timeline (members on another one are diverged or behind).
    pub fn leader_timeline(&self) -> Option<u64> {
        self.leader().and_then(|l| l.timeline)
    }
    /// One line per member, for "last seen" reports.
    pub fn summary(&self) -> String {
        if self.members.is_empty() {
            return "no members registered".into();
        }
        self.members
            .iter()
            .map(|m| {
                let lag = m.lag.map(|l| format!(" lag {l}")).unwrap_or_default();
                format!("{} {}/{}{lag}", m.name, m.role, m.state)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// The leader plus `replicas` members streaming with lag <= max_lag.
    pub fn healthy(&self, expected: &[String], max_lag: u64) -> Result<String, String> {
        let leader = self
            .leader()
            .ok_or_else(|| format!("no running leader ({})", self.summary()))?;
        for name in expected {
            if *name == leader.name {
                continue;
            }
            match self.member(name) {
                Some(m) if m.state == "streaming" && m.lag.is_some_and(|l| l <= max_lag) => {}
                _ => {
                    return Err(format!(
                        "{name} not streaming with lag <= {max_lag} ({})",
                        self.summary()
                    ));
                }
            }
        }
        Ok(leader.name.clone())
    }
}

/// Base URL of a member's REST API (HTTPS with TLS).
pub fn api(ip: &str, port: u16, tls: bool) -> String {
    format!("{}://{ip}:{port}", if tls { "https" } else { "http" })
}

async fn get_json<T: for<'de> Deserialize<'de>>(net: &Net, url: &str) -> Result<T, String> {
    let resp = net
        .get(url, super::PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    resp.json::<T>().await.map_err(|e| format!("{url}: {e}"))
}

pub async fn cluster(net: &Net, api: &str) -> Result<ClusterView, String> {
    get_json(net, &format!("{api}/cluster")).await
}

/// The cluster view from the first member that answers, all asked at once (a
/// member that silently drops packets costs one probe timeout, not one each).
/// The other requests run to their end in the background: one dropped half-way
/// would close its connection under Patroni, which logs a 30-line traceback
/// ("Exception happened during processing of request") for each.
pub async fn cluster_any(net: &Net, apis: &[String]) -> Result<ClusterView, String> {
    if apis.is_empty() {
        return Err("no members".into());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(apis.len());
    for api in apis {
        let (net, api, tx) = (net.clone(), api.clone(), tx.clone());
        tokio::spawn(async move {
            // The receiver is gone once one answered: nothing to tell.
            let _ = tx.send(cluster(&net, &api).await).await;
        });
    }
    drop(tx);
    let mut last = String::new();
    while let Some(r) = rx.recv().await {
        match r {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// GET /patroni: this member's own status (state, role, pending_restart, postmaster_start_time).
pub async fn status(net: &Net, api: &str) -> Result<Value, String> {
    // /patroni answers 200 on every running member whatever its role.
    get_json(net, &format!("{api}/patroni")).await
}

/// A member's WAL position from its own /patroni status: the leader's current
/// location; a replica's received or replayed location, whichever is further (what
/// Patroni itself compares when it checks a candidate).
pub fn wal_position(status: &Value) -> Option<u64> {
    let x = status.get("xlog")?;
    if let Some(l) = x.get("location").and_then(Value::as_u64) {
        return Some(l);
    }
    let received = x.get("received_location").and_then(Value::as_u64);
    let replayed = x.get("replayed_location").and_then(Value::as_u64);
    received.max(replayed)
}

pub async fn config(net: &Net, api: &str) -> Result<Value, String> {
    get_json(net, &format!("{api}/config")).await
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<String, String> {
    let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{what}: HTTP {status}: {}", body.trim()))
    }
}

pub async fn patch_config(
    net: &Net,
    api: &str,
    auth: &Secret,
    patch: &Value,
) -> Result<(), String> {
    send(
        net.patch(&format!("{api}/config"), super::PROBE_TIMEOUT)
            .basic_auth(API_USER, Some(auth.expose()))
            .json(patch),
        "PATCH /config",
    )
    .await?;
    Ok(())
}

/// Restart PostgreSQL on this member (Patroni refuses while a restart is unsafe).
pub async fn restart(net: &Net, api: &str, auth: &Secret) -> Result<(), String> {
    send(
        net.post(
            &format!("{api}/restart"),
            std::time::Duration::from_secs(120),
        )
        .basic_auth(API_USER, Some(auth.expose()))
        .json(&serde_json::json!({})),
        "POST /restart",
    )
    .await?;
    Ok(())
}

/// Patroni's answer to a switchover request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchoverAnswer {
    /// 200: the switchover happened.
    Done,
    /// 4xx: refused before anything happened (precondition failed, bad candidate).
    Refused(String),
    /// 503, a timeout or a lost connection: it may or may not have happened.
    Unknown(String),
}

/// Ask for a planned switchover from `leader` to `candidate`. Never retried here:
/// a second request after an unknown outcome could switch over twice.
pub async fn switchover(
    net: &Net,
    api: &str,
    auth: &Secret,
    leader: &str,
    candidate: &str,
) -> SwitchoverAnswer {
    // Patroni itself polls for up to 2*max(10, loop_wait) s before answering.
    let resp = net
        .post(
            &format!("{api}/switchover"),
            std::time::Duration::from_secs(90),
        )
        .basic_auth(API_USER, Some(auth.expose()))
        .json(&serde_json::json!({"leader": leader, "candidate": candidate}))
        .send()
        .await;
    match resp {
        Err(e) if e.is_connect() => {
            SwitchoverAnswer::Refused(format!("POST {api}/switchover: {e}"))
        }
        Err(e) => SwitchoverAnswer::Unknown(format!("POST {api}/switchover: {e}")),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default().trim().to_string();
            if status.is_success() {
                SwitchoverAnswer::Done
            } else if status.is_client_error() {
                SwitchoverAnswer::Refused(format!("HTTP {status}: {body}"))
            } else {
                SwitchoverAnswer::Unknown(format!("HTTP {status}: {body}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"{"members": [
      {"name": "db1", "role": "leader", "state": "running", "api_url": "http://10.0.0.11:8008/patroni", "host": "10.0.0.11", "port": 5432, "timeline": 1},
      {"name": "db2", "role": "sync_standby", "state": "streaming", "host": "10.0.0.12", "port": 5432, "timeline": 1, "lag": 0},
      {"name": "db3", "role": "replica", "state": "streaming", "host": "10.0.0.13", "port": 5432, "timeline": 1, "lag": "unknown", "pending_restart": true}
    ], "scope": "pgha"}"#;

    #[test]
    fn parses_patroni_cluster_view() {
        let v: ClusterView = serde_json::from_str(CLUSTER).unwrap();
        assert_eq!(v.leader().unwrap().name, "db1");
        assert_eq!(v.member("db2").unwrap().lag, Some(0));
        assert_eq!(v.member("db3").unwrap().lag, None);
        assert!(v.member("db3").unwrap().pending_restart);
        assert_eq!(v.replicas().count(), 2);
    }

    #[test]
    fn wal_position_reads_the_leader_and_the_furthest_replica_position() {
        let leader = serde_json::json!({"role": "primary", "xlog": {"location": 500}});
        assert_eq!(wal_position(&leader), Some(500));
        let replica = serde_json::json!({"role": "replica",
            "xlog": {"received_location": 400, "replayed_location": 300}});
        assert_eq!(wal_position(&replica), Some(400));
        let replaying = serde_json::json!({"xlog": {"replayed_location": 300}});
        assert_eq!(wal_position(&replaying), Some(300));
        assert_eq!(wal_position(&serde_json::json!({"state": "stopped"})), None);
    }

    #[test]
    fn health_requires_every_replica_streaming_with_known_lag() {
        let v: ClusterView = serde_json::from_str(CLUSTER).unwrap();
        let names = ["db1", "db2", "db3"].map(String::from);
        let e = v.healthy(&names, 0).unwrap_err();
        assert!(e.starts_with("db3 not streaming"), "{e}");
        assert_eq!(v.healthy(&names[..2], 0).unwrap(), "db1");
    }
}
