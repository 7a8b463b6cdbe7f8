//! One snapshot of the whole cluster from live probes (no SSH): every db member as
//! Patroni sees it and as it reports itself, every etcd member, every router's
//! HAProxy backends, every exporter. All probes run in parallel and each is
//! bounded, so a dead or partitioned host costs seconds, not minutes, and is shown
//! as unreachable. The verdict (healthy / degraded / down, with reasons) is a pure
//! function of the snapshot.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use serde::Serialize;
use serde_json::Value;

use super::run::Ctx;
use crate::probe::{Net, etcd, haproxy, patroni};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberState {
    pub name: String,
    pub address: String,
    /// Whether its Patroni REST API answered.
    pub reachable: bool,
    /// leader, sync_standby, replica; "unknown" when nothing says.
    pub role: String,
    /// running, streaming, starting, stopped...; "unreachable" when it did not answer.
    pub state: String,
    pub timeline: Option<u64>,
    pub lag_bytes: Option<u64>,
    /// The WAL receiver's state as Patroni reports it ("streaming" on a healthy replica).
    pub replication_state: Option<String>,
    /// PostgreSQL server version (e.g. 17.12).
    pub server_version: Option<String>,
    pub patroni_version: Option<String>,
    pub pending_restart: bool,
    pub tags: BTreeMap<String, Value>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EtcdMemberState {
    pub name: String,
    pub endpoint: String,
    pub healthy: bool,
    pub id: Option<String>,
    pub leader: bool,
    pub version: Option<String>,
    pub db_size_bytes: Option<i64>,
    pub raft_index: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouterState {
    pub name: String,
    pub address: String,
    /// Whether HAProxy's stats page answered.
    pub up: bool,
    /// Server -> status on the write port's backend.
    pub write: BTreeMap<String, String>,
    /// Server -> status on the read port's backend.
    pub read: BTreeMap<String, String>,
    /// Whether the backends match Patroni: the leader alone UP for writes, the
    /// replicas that may serve reads UP for reads.
    pub agrees: bool,
    pub disagreement: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExporterState {
    pub name: String,
    pub pg_up: Option<bool>,
    pub error: Option<String>,
}

/// A certificate a host serves (TLS), read from a live handshake.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertState {
    pub host: String,
    /// `patroni` (Patroni's REST API and PostgreSQL share it) or `etcd`.
    pub service: String,
    /// Expiry, RFC 3339.
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    pub error: Option<String>,
}

/// The cluster CA (from the inventory's PKI): its own expiry, which no host's
/// renewal covers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaState {
    pub subject: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    /// Set when it expires within `pki::CA_WARN_DAYS` (or has expired).
    pub warning: Option<String>,
}

/// The CA's state at `now` (seconds since the epoch). Pure.
pub fn ca_state(ca: &crate::pki::CertInfo, now: u64) -> CaState {
    CaState {
        subject: ca.subject.clone(),
        not_after: crate::pki::rfc3339(ca.not_after),
        days_left: crate::pki::days_between(now, ca.not_after),
        warning: crate::pki::ca_warning(ca.not_after, now),
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Healthy,
    Degraded,
    Down,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub level: Level,
    pub reasons: Vec<String>,
    /// Worth knowing, not a fault (pending restarts, tags set).
    pub notes: Vec<String>,
}

impl Verdict {
    /// One line: `healthy`, `degraded: why; why`, `down: why`.
    pub fn line(&self) -> String {
        match self.level {
            Level::Healthy => "healthy".into(),
            Level::Degraded => format!("degraded: {}", self.reasons.join("; ")),
            Level::Down => format!("down: {}", self.reasons.join("; ")),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub cluster: String,
    pub leader: Option<String>,
    pub healthy: bool,
    pub verdict: Verdict,
    pub paused: bool,
    pub members: Vec<MemberState>,
    pub etcd: Vec<EtcdMemberState>,
    pub etcd_quorum: bool,
    pub routers: Vec<RouterState>,
    pub exporters: Vec<ExporterState>,
    /// Certificates in use (TLS clusters), with their expiry.
    pub certificates: Vec<CertState>,
    /// The cluster CA (TLS clusters).
    pub ca: Option<CaState>,
}

/// Bounds the snapshot uses (from the inventory).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A replica lagging more is degraded (Patroni's maximum_lag_on_failover).
    pub max_lag: u64,
    /// A replica lagging more may not serve the read port.
    pub read_max_lag: u64,
    pub synchronous_mode: bool,
    /// Certificates expiring within this many days get a note (deploy renews them).
    pub renew_before_days: i64,
}

/// Gather a snapshot; never fails: what does not answer is recorded as such.
pub async fn snapshot(ctx: &Ctx<'_>) -> Snapshot {
    let c = &ctx.inv.cluster;
    let apis = ctx.ep.patroni_apis();
    // Every probe at once, each bounded by one probe timeout: a host that silently
    // drops packets costs that bound once, not once per probe.
    let (view, statuses, etcd_report, routers, exporters, certificates) = tokio::join!(
        patroni::cluster_any(&ctx.ep.net, &apis),
        join_all(
            ctx.ep
                .patroni
                .iter()
                .map(|(_, api)| patroni::status(&ctx.ep.net, api))
        ),
        etcd::probe_within(&ctx.ep.net, &ctx.ep.etcd, crate::probe::PROBE_TIMEOUT),
        join_all(ctx.ep.routers.iter().map(|(_, ip)| haproxy::backends(
            &ctx.ep.net,
            ip,
            &ctx.ep.stats
        ))),
        join_all(
            ctx.ep
                .exporters
                .iter()
                .map(|(_, url)| pg_up(&ctx.ep.net, url))
        ),
        async {
            if c.tls {
                certificates(ctx).await
            } else {
                Vec::new()
            }
        },
    );
    let ca = ctx.pki.as_ref().and_then(|p| p.ca_info().ok()).map(|i| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ca_state(&i, now)
    });
    let addresses: Vec<String> = ctx
        .inv
        .db_hosts()
        .iter()
        .map(|h| h.ip.to_string())
        .collect();
    let members = members(&ctx.ep.db_names, &addresses, view.as_ref().ok(), &statuses);
    let etcd_names: Vec<String> = ctx.etcd_hosts();
    let etcd = etcd_members(&etcd_names, &etcd_report);
    let bounds = Bounds {
        max_lag: c.patroni_maximum_lag_on_failover,
        read_max_lag: c.haproxy_replica_max_lag,
        synchronous_mode: c.synchronous_mode,
        renew_before_days: c.tls_renew_before_days as i64,
    };
    let routers: Vec<RouterState> = ctx
        .ep
        .routers
        .iter()
        .zip(routers)
        .map(|((name, ip), b)| router(name, ip, b, &members, &bounds))
        .collect();
    let exporters = ctx
        .ep
        .exporters
        .iter()
        .zip(exporters)
        .map(|((name, _), r)| match r {
            Ok(up) => ExporterState {
                name: name.clone(),
                pg_up: Some(up),
                error: None,
            },
            Err(e) => ExporterState {
                name: name.clone(),
                pg_up: None,
                error: Some(e),
            },
        })
        .collect();
    let paused = view.as_ref().is_ok_and(|v| v.pause);
    let parts = Parts {
        members,
        etcd,
        routers,
        exporters,
        certificates,
        ca,
    };
    assemble(&c.cluster_name, parts, paused, &bounds)
}

/// The certificate each TLS endpoint serves: Patroni's REST API on db hosts (the
/// same file as PostgreSQL's), etcd's client port on etcd hosts.
async fn certificates(ctx: &Ctx<'_>) -> Vec<CertState> {
    let c = &ctx.inv.cluster;
    let mut targets = Vec::new();
    for h in ctx.inv.db_hosts() {
        targets.push((
            h.name.clone(),
            "patroni",
            h.ip.to_string(),
            c.patroni_rest_port,
        ));
    }
    for h in ctx.inv.etcd_hosts() {
        targets.push((h.name.clone(), "etcd", h.ip.to_string(), c.etcd_client_port));
    }
    join_all(
        targets
            .into_iter()
            .map(|(host, service, ip, port)| async move {
                let Some(tls) = ctx.ep.net.tls() else {
                    return CertState {
                        host,
                        service: service.into(),
                        not_after: None,
                        days_left: None,
                        error: Some("no TLS material loaded".into()),
                    };
                };
                let info = crate::probe::tls::served_certificate(tls, &ip, port)
                    .await
                    .and_then(|pem| {
                        crate::pki::cert_info(&pem)
                            .map(|i| (i, crate::pki::days_left(&pem)))
                            .map_err(|e| e.to_string())
                    });
                match info {
                    Ok((i, days)) => CertState {
                        host,
                        service: service.into(),
                        not_after: Some(
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + std::time::Duration::from_secs(i.not_after),
                            )
                            .to_string(),
                        ),
                        days_left: days,
                        error: None,
                    },
                    Err(e) => CertState {
                        host,
                        service: service.into(),
                        not_after: None,
                        days_left: None,
                        error: Some(e),
                    },
                }
            }),
    )
    .await
}

/// Put the parts together and judge them.
/// What the probes found, before it is judged.
pub struct Parts {
    pub members: Vec<MemberState>,
    pub etcd: Vec<EtcdMemberState>,
    pub routers: Vec<RouterState>,
    pub exporters: Vec<ExporterState>,
    pub certificates: Vec<CertState>,
    pub ca: Option<CaState>,
}

pub fn assemble(cluster: &str, parts: Parts, paused: bool, bounds: &Bounds) -> Snapshot {
    let Parts {
        members,
        etcd,
        routers,
        exporters,
        certificates,
        ca,
    } = parts;
    let healthy_etcd = etcd.iter().filter(|e| e.healthy).count();
    let etcd_quorum = healthy_etcd > etcd.len() / 2;
    let leader = members
        .iter()
        .find(|m| m.role == "leader" && m.state == "running")
        .map(|m| m.name.clone());
    let mut s = Snapshot {
        cluster: cluster.to_string(),
        leader,
        healthy: false,
        verdict: Verdict {
            level: Level::Healthy,
            reasons: vec![],
            notes: vec![],
        },
        paused,
        members,
        etcd,
        etcd_quorum,
        routers,
        exporters,
        certificates,
        ca,
    };
    s.verdict = verdict(&s, bounds);
    s.healthy = s.verdict.level == Level::Healthy;
    s
}

fn server_version(n: &Value) -> Option<String> {
    let n = n.as_u64()?;
    // 170012 -> 17.12 (PostgreSQL 10 and later: major * 10000 + minor).
    Some(format!("{}.{}", n / 10000, n % 10000))
}

/// Members in inventory order: Patroni's cluster view (roles, lag) joined with
/// each member's own status (versions, WAL receiver, pending restart).
pub fn members(
    names: &[String],
    addresses: &[String],
    view: Option<&patroni::ClusterView>,
    statuses: &[Result<Value, String>],
) -> Vec<MemberState> {
    names
        .iter()
        .zip(addresses)
        .zip(statuses)
        .map(|((name, address), st)| {
            let in_view = view.and_then(|v| v.member(name));
            match st {
                Ok(st) => {
                    let own_role = match st["role"].as_str() {
                        Some("primary") | Some("master") => "leader",
                        Some(r) => r,
                        None => "unknown",
                    };
                    let tags: BTreeMap<String, Value> = st["tags"]
                        .as_object()
                        .map(|m| m.clone().into_iter().collect())
                        .unwrap_or_default();
                    MemberState {
                        name: name.clone(),
                        address: address.clone(),
                        reachable: true,
                        role: in_view
                            .map(|m| m.role.clone())
                            .unwrap_or_else(|| own_role.to_string()),
                        state: in_view
                            .map(|m| m.state.clone())
                            .or_else(|| st["state"].as_str().map(str::to_string))
                            .unwrap_or_else(|| "unknown".into()),
                        timeline: in_view.and_then(|m| m.timeline).or(st["timeline"].as_u64()),
                        lag_bytes: in_view.and_then(|m| m.lag),
                        replication_state: st["replication_state"].as_str().map(str::to_string),
                        server_version: server_version(&st["server_version"]),
                        patroni_version: st["patroni"]["version"].as_str().map(str::to_string),
                        pending_restart: st["pending_restart"] == true
                            || in_view.is_some_and(|m| m.pending_restart),
                        tags,
                        error: None,
                    }
                }
                Err(e) => MemberState {
                    name: name.clone(),
                    address: address.clone(),
                    reachable: false,
                    role: in_view
                        .map(|m| m.role.clone())
                        .unwrap_or_else(|| "unknown".into()),
                    state: "unreachable".into(),
                    timeline: None,
                    lag_bytes: None,
                    replication_state: None,
                    server_version: None,
                    patroni_version: None,
                    pending_restart: false,
                    tags: BTreeMap::new(),
                    error: Some(e.clone()),
                },
            }
        })
        .collect()
}

pub fn etcd_members(names: &[String], report: &etcd::EtcdReport) -> Vec<EtcdMemberState> {
    names
        .iter()
        .zip(&report.endpoints)
        .map(|(name, e)| match &e.health {
            Ok(h) => EtcdMemberState {
                name: h.name().unwrap_or_else(|| name.clone()),
                endpoint: e.endpoint.clone(),
                healthy: h.errors.is_empty(),
                id: Some(format!("{:x}", h.member_id)),
                leader: h.leader == h.member_id,
                version: Some(h.version.clone()),
                db_size_bytes: Some(h.db_size),
                raft_index: Some(h.raft_index),
                error: (!h.errors.is_empty()).then(|| h.errors.join("; ")),
            },
            Err(err) => EtcdMemberState {
                name: name.clone(),
                endpoint: e.endpoint.clone(),
                healthy: false,
                id: None,
                leader: false,
                version: None,
                db_size_bytes: None,
                raft_index: None,
                error: Some(err.clone()),
            },
        })
        .collect()
}

/// The replicas that may serve reads: streaming on the leader's timeline, within the
/// read lag bound, not tagged noloadbalance.
fn readable(members: &[MemberState], bounds: &Bounds) -> Vec<String> {
    let tl = members
        .iter()
        .find(|m| m.role == "leader")
        .and_then(|m| m.timeline);
    members
        .iter()
        .filter(|m| {
            m.role != "leader"
                && m.reachable
                && m.state == "streaming"
                && m.timeline == tl
                && m.lag_bytes.is_some_and(|l| l <= bounds.read_max_lag)
                && m.tags.get("noloadbalance") != Some(&Value::Bool(true))
        })
        .map(|m| m.name.clone())
        .collect()
}

pub fn router(
    name: &str,
    ip: &str,
    b: Result<haproxy::Backends, String>,
    members: &[MemberState],
    bounds: &Bounds,
) -> RouterState {
    match b {
        Err(e) => RouterState {
            name: name.to_string(),
            address: ip.to_string(),
            up: false,
            write: BTreeMap::new(),
            read: BTreeMap::new(),
            agrees: false,
            disagreement: None,
            error: Some(e),
        },
        Ok(b) => {
            let write = b.proxies.get("primary").cloned().unwrap_or_default();
            let read = b.proxies.get("replicas").cloned().unwrap_or_default();
            let leader: Vec<String> = members
                .iter()
                .filter(|m| m.role == "leader" && m.state == "running")
                .map(|m| m.name.clone())
                .collect();
            let mut problems = Vec::new();
            let up_w = b.up("primary");
            if up_w != leader {
                problems.push(format!(
                    "writes go to [{}], Patroni's leader is [{}]",
                    up_w.join(", "),
                    leader.join(", ")
                ));
            }
            let mut up_r = b.up("replicas");
            up_r.sort();
            let mut want_r = readable(members, bounds);
            want_r.sort();
            let stale: Vec<&String> = up_r.iter().filter(|s| !want_r.contains(s)).collect();
            if !stale.is_empty() {
                problems.push(format!(
                    "reads go to {} which may not serve them",
                    stale
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let missing: Vec<&String> = want_r.iter().filter(|s| !up_r.contains(s)).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "reads skip streaming replica(s) {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            RouterState {
                name: name.to_string(),
                address: ip.to_string(),
                up: true,
                write,
                read,
                agrees: problems.is_empty(),
                disagreement: (!problems.is_empty()).then(|| problems.join("; ")),
                error: None,
            }
        }
    }
}

/// The exporter's pg_up. postgres_exporter keeps its connection between scrapes, so
/// the first scrape after PostgreSQL restarted fails once and reconnects: only a
/// second 0 in a row counts.
async fn pg_up(net: &Net, url: &str) -> Result<bool, String> {
    // Both scrapes within one probe timeout.
    let twice = async {
        match scrape_pg_up(net, url).await {
            Ok(false) => scrape_pg_up(net, url).await,
            r => r,
        }
    };
    tokio::time::timeout(crate::probe::PROBE_TIMEOUT, twice)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}

async fn scrape_pg_up(net: &Net, url: &str) -> Result<bool, String> {
    let text = net
        .get(url, crate::probe::PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("pg_up "))
        .map(|v| v.trim() == "1")
        .ok_or_else(|| "no pg_up metric".to_string())
}

/// Judge a snapshot. Down: no leader, no etcd quorum, or no router sending writes to
/// the leader. Degraded: anything else not as it should be.
pub fn verdict(s: &Snapshot, bounds: &Bounds) -> Verdict {
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    let mut notes = Vec::new();
    let healthy_etcd = s.etcd.iter().filter(|e| e.healthy).count();
    if !s.etcd_quorum {
        down.push(format!(
            "etcd has no quorum ({healthy_etcd} of {} members healthy)",
            s.etcd.len()
        ));
    }
    let leader = s
        .members
        .iter()
        .find(|m| m.role == "leader" && m.state == "running");
    if leader.is_none() {
        down.push("no running leader".into());
    }
    if !s.routers.is_empty()
        && !s.routers.iter().any(|r| {
            r.up && leader.is_some_and(|l| r.write.get(&l.name).is_some_and(|st| st == "UP"))
        })
    {
        down.push("no router sends writes to the leader".into());
    }
    for e in &s.etcd {
        if !e.healthy && s.etcd_quorum {
            degraded.push(format!(
                "etcd member {} unhealthy ({})",
                e.name,
                e.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    let tl = leader.and_then(|l| l.timeline);
    for m in &s.members {
        if Some(m) == leader {
            continue;
        }
        if !m.reachable {
            degraded.push(format!("{} unreachable", m.name));
        } else if m.state != "streaming" {
            degraded.push(format!("{} is {}, not streaming", m.name, m.state));
        } else if leader.is_some() && m.timeline != tl {
            degraded.push(format!(
                "{} on timeline {}, the leader on {}",
                m.name,
                opt(m.timeline),
                opt(tl)
            ));
        } else if m.lag_bytes.is_none_or(|l| l > bounds.max_lag) {
            degraded.push(format!(
                "{} lags {} bytes (bound {})",
                m.name,
                m.lag_bytes.map_or("unknown".into(), |l| l.to_string()),
                bounds.max_lag
            ));
        }
        if m.pending_restart {
            notes.push(format!("{} has a pending restart", m.name));
        }
        for (t, v) in &m.tags {
            if v == &Value::Bool(true) {
                notes.push(format!("{} tagged {t}", m.name));
            }
        }
    }
    if let Some(l) = leader
        && l.pending_restart
    {
        notes.push(format!("{} has a pending restart", l.name));
    }
    if let Some(l) = leader
        && s.etcd.iter().any(|e| e.leader && e.name == l.name)
        && s.etcd.len() > 1
    {
        notes.push(format!(
            "{} leads both etcd and Patroni: losing that host costs an etcd election and a \
             longer failover (`pgha deploy` or `pgha switchover` moves etcd's leadership)",
            l.name
        ));
    }
    if bounds.synchronous_mode
        && leader.is_some()
        && s.members.len() > 1
        && !s.members.iter().any(|m| m.role == "sync_standby")
    {
        degraded.push("no synchronous standby".into());
    }
    if s.paused {
        degraded.push("paused: Patroni will not fail over".into());
    }
    for r in &s.routers {
        if !r.up {
            degraded.push(format!(
                "router {} HAProxy unreachable ({})",
                r.name,
                r.error.as_deref().unwrap_or("no answer")
            ));
        } else if let Some(d) = &r.disagreement {
            degraded.push(format!("router {}: {d}", r.name));
        }
    }
    for e in &s.exporters {
        match (e.pg_up, &e.error) {
            (Some(true), _) => {}
            (Some(false), _) => degraded.push(format!("exporter on {} reports pg_up 0", e.name)),
            (None, err) => degraded.push(format!(
                "exporter on {} unreachable ({})",
                e.name,
                err.as_deref().unwrap_or("no answer")
            )),
        }
    }
    for cert in &s.certificates {
        match cert.days_left {
            Some(d) if d < 0 => degraded.push(format!(
                "{}'s {} certificate expired: run `pgha deploy` to renew it",
                cert.host, cert.service
            )),
            Some(d) if d <= bounds.renew_before_days => notes.push(format!(
                "{}'s {} certificate expires in {d} day(s): the next `pgha deploy` renews it",
                cert.host, cert.service
            )),
            _ => {}
        }
    }
    // An expired CA is a fault; one expiring within a year is a warning of its own
    // (CaState::warning), not a note.
    if let Some(ca) = &s.ca
        && ca.days_left < 0
    {
        degraded.push(format!(
            "the cluster CA expired on {}: replace it and run `pgha deploy`",
            ca.not_after
        ));
    }
    let (level, reasons) = if !down.is_empty() {
        down.extend(degraded);
        (Level::Down, down)
    } else if !degraded.is_empty() {
        (Level::Degraded, degraded)
    } else {
        (Level::Healthy, vec![])
    };
    Verdict {
        level,
        reasons,
        notes,
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_lag: 1_048_576,
        read_max_lag: 16 << 20,
        synchronous_mode: true,
        renew_before_days: 30,
    };

    fn member(name: &str, role: &str, state: &str, tl: u64, lag: Option<u64>) -> MemberState {
        MemberState {
            name: name.into(),
            address: format!("10.0.0.{}", &name[2..]),
            reachable: true,
            role: role.into(),
            state: state.into(),
            timeline: Some(tl),
            lag_bytes: lag,
            replication_state: (state == "streaming").then(|| "streaming".into()),
            server_version: Some("17.12".into()),
            patroni_version: Some("4.0.7".into()),
            pending_restart: false,
            tags: BTreeMap::new(),
            error: None,
        }
    }

    fn etcd_ok(name: &str, leader: bool) -> EtcdMemberState {
        EtcdMemberState {
            name: name.into(),
            endpoint: format!("http://{name}:2379"),
            healthy: true,
            id: Some("1".into()),
            leader,
            version: Some("3.5.16".into()),
            db_size_bytes: Some(20480),
            raft_index: Some(10),
            error: None,
        }
    }

    fn backends(write: &[(&str, &str)], read: &[(&str, &str)]) -> haproxy::Backends {
        let mut b = haproxy::Backends::default();
        for (proxy, list) in [("primary", write), ("replicas", read)] {
            b.proxies.insert(
                proxy.into(),
                list.iter()
                    .map(|(s, st)| (s.to_string(), st.to_string()))
                    .collect(),
            );
        }
        b
    }

    fn healthy_members() -> Vec<MemberState> {
        vec![
            member("db1", "leader", "running", 2, None),
            member("db2", "sync_standby", "streaming", 2, Some(0)),
            member("db3", "replica", "streaming", 2, Some(0)),
        ]
    }

    fn snap(members: Vec<MemberState>, b: haproxy::Backends) -> Snapshot {
        let r = router("router1", "10.0.0.101", Ok(b), &members, &BOUNDS);
        assemble(
            "pgha",
            Parts {
                members,
                etcd: vec![
                    etcd_ok("db1", true),
                    etcd_ok("db2", false),
                    etcd_ok("db3", false),
                ],
                routers: vec![r],
                exporters: vec![ExporterState {
                    name: "db1".into(),
                    pg_up: Some(true),
                    error: None,
                }],
                certificates: vec![],
                ca: None,
            },
            false,
            &BOUNDS,
        )
    }

    fn good_backends() -> haproxy::Backends {
        backends(
            &[("db1", "UP"), ("db2", "DOWN"), ("db3", "DOWN")],
            &[("db1", "DOWN"), ("db2", "UP"), ("db3", "UP")],
        )
    }

    #[test]
    fn a_healthy_cluster_is_healthy() {
        let s = snap(healthy_members(), good_backends());
        assert_eq!(s.verdict.line(), "healthy");
        assert!(s.healthy && s.etcd_quorum);
        assert_eq!(s.leader.as_deref(), Some("db1"));
        assert!(s.routers[0].agrees);
    }

    #[test]
    fn a_member_on_an_old_timeline_or_not_streaming_is_degraded() {
        let mut m = healthy_members();
        m[2] = member("db3", "replica", "running", 1, Some(97_000));
        let s = snap(m, good_backends());
        assert_eq!(s.verdict.level, Level::Degraded);
        let line = s.verdict.line();
        assert!(line.contains("db3 is running, not streaming"), "{line}");
        // HAProxy still sending reads to it disagrees with Patroni.
        assert!(
            line.contains("reads go to db3 which may not serve them"),
            "{line}"
        );
        let mut m = healthy_members();
        m[2].timeline = Some(1);
        let line = snap(m, good_backends()).verdict.line();
        assert!(
            line.contains("db3 on timeline 1, the leader on 2"),
            "{line}"
        );
    }

    #[test]
    fn an_unreachable_member_is_named() {
        let mut m = healthy_members();
        m[2].reachable = false;
        m[2].state = "unreachable".into();
        let b = backends(
            &[("db1", "UP"), ("db2", "DOWN"), ("db3", "DOWN")],
            &[("db1", "DOWN"), ("db2", "UP"), ("db3", "DOWN")],
        );
        let s = snap(m, b);
        assert_eq!(s.verdict.line(), "degraded: db3 unreachable");
        assert!(!s.healthy);
    }

    #[test]
    fn no_leader_or_no_quorum_is_down() {
        let mut m = healthy_members();
        m[0].reachable = false;
        m[0].state = "unreachable".into();
        let s = snap(m, good_backends());
        assert_eq!(s.verdict.level, Level::Down);
        assert!(
            s.verdict.line().starts_with("down: no running leader"),
            "{}",
            s.verdict.line()
        );
        let mut s = snap(healthy_members(), good_backends());
        s.etcd[1].healthy = false;
        s.etcd[2].healthy = false;
        s.etcd_quorum = false;
        let v = verdict(&s, &BOUNDS);
        assert_eq!(v.level, Level::Down);
        assert!(v.reasons[0].contains("etcd has no quorum (1 of 3"), "{v:?}");
    }

    #[test]
    fn writes_to_the_wrong_server_disagree() {
        let b = backends(
            &[("db1", "UP"), ("db2", "UP"), ("db3", "DOWN")],
            &[("db1", "DOWN"), ("db2", "UP"), ("db3", "UP")],
        );
        let s = snap(healthy_members(), b);
        assert!(!s.routers[0].agrees);
        assert!(
            s.verdict.line().contains("writes go to [db1, db2]"),
            "{}",
            s.verdict.line()
        );
    }

    #[test]
    fn server_versions_read_like_postgres_prints_them() {
        assert_eq!(server_version(&Value::from(170012)).unwrap(), "17.12");
        assert_eq!(server_version(&Value::from(130022)).unwrap(), "13.22");
    }

    fn ca_info(not_after: u64) -> crate::pki::CertInfo {
        crate::pki::CertInfo {
            not_after,
            names: Default::default(),
            issuer: "CN=pgha CA prod, O=pgha".into(),
            subject: "CN=pgha CA prod, O=pgha".into(),
        }
    }

    #[test]
    fn the_ca_expiry_is_in_the_model_with_a_warning_a_year_ahead() {
        const DAY: u64 = 86_400;
        let now = 1_900_000_000;
        let far = ca_state(&ca_info(now + 400 * DAY), now);
        assert_eq!((far.days_left, &far.warning), (400, &None));
        assert_eq!(far.not_after, crate::pki::rfc3339(now + 400 * DAY));
        let near = ca_state(&ca_info(now + 365 * DAY), now);
        assert_eq!(near.days_left, 365);
        assert!(near.warning.as_deref().unwrap().contains("365 day(s)"));
        let mut s = snap(healthy_members(), good_backends());
        s.ca = Some(near);
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["ca"]["days_left"], 365);
        assert!(j["ca"]["not_after"].is_string() && j["ca"]["warning"].is_string());
        // A warning, not a fault.
        assert_eq!(verdict(&s, &BOUNDS).level, Level::Healthy);
        s.ca = Some(ca_state(&ca_info(now - DAY), now));
        let v = verdict(&s, &BOUNDS);
        assert_eq!(v.level, Level::Degraded);
        assert!(v.reasons[0].contains("cluster CA expired"), "{v:?}");
    }
}
