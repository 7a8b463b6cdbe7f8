//! The cluster's health as data, and the verdict on it: each member, etcd member,
//! router, exporter and certificate as the probes found them (`health` gathers
//! them), the pure functions that join those findings, and the verdict (healthy,
//! degraded or down, with reasons and notes). Pure: no I/O, no imports above
//! `probe`'s data types.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::probe::{etcd, haproxy, patroni};

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
    /// Backups and WAL archiving (when backups are on).
    pub backup: Option<BackupState>,
    /// The alerts Alertmanager holds (when monitoring is on). Shown, not judged:
    /// the verdict stands on the probes above.
    pub alerts: Option<AlertsState>,
    /// Each pooler's clients and server connections (when pooling is on).
    pub poolers: Vec<PoolerState>,
}

/// One pooler (PgBouncer on a router), from its admin console.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolerState {
    pub router: String,
    pub clients: u64,
    pub waiting: u64,
    pub servers: u64,
    /// Seconds the longest-waiting client has waited.
    pub maxwait: u64,
    /// Paused: its clients wait until `pgha pool resume` (or the next deploy).
    pub paused: bool,
    pub error: Option<String>,
}

/// Alertmanager's alerts, or why they could not be read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertsState {
    /// Alertmanager's page.
    pub url: String,
    /// The cluster's key graphs on Prometheus's page.
    pub graphs: String,
    pub alerts: Vec<crate::probe::prometheus::Alert>,
    pub error: Option<String>,
}

/// The backups' health: the newest backup in the repository and the leader's WAL
/// archiver (`pg_stat_archiver`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupState {
    pub repository: String,
    /// The newest backup: (label, type, age in seconds).
    pub newest: Option<(String, String, i64)>,
    pub backups: usize,
    /// The repository could not be read (unreachable host, pgBackRest error).
    pub repository_error: Option<String>,
    pub last_archived_wal: Option<String>,
    pub last_archived_age_secs: Option<i64>,
    pub archive_failed_count: i64,
    /// Failing now (the last failure is newer than the last success): since how
    /// long nothing was archived.
    pub archive_failing_secs: Option<i64>,
    pub archiver_error: Option<String>,
}

/// The bounds backups are judged by (the inventory's).
#[derive(Debug, Clone, Copy)]
pub struct BackupBounds {
    /// `backup_max_age_hours` in seconds; None: not checked.
    pub max_age_secs: Option<i64>,
    /// `backup_archive_fail_minutes` in seconds.
    pub archive_fail_secs: i64,
}

/// What makes backups degraded, each with what to do.
pub fn backup_faults(b: &BackupState, bounds: &BackupBounds) -> Vec<String> {
    let mut out = Vec::new();
    match (&b.repository_error, &b.newest) {
        (Some(e), _) => out.push(format!(
            "backup repository on {} not readable: {e}",
            b.repository
        )),
        (None, None) => out.push(format!(
            "no backup in the repository on {}: `pgha backup run`",
            b.repository
        )),
        (None, Some((label, kind, age))) => {
            if let Some(max) = bounds.max_age_secs
                && *age > max
            {
                out.push(format!(
                    "newest backup ({kind} {label}) is {}h old, over backup_max_age_hours {}: \
                     check the timers on {} (`systemctl list-timers 'pgha-*'`, `journalctl -u 'pgha-backup@*'`) \
                     or `pgha backup run`",
                    age / 3600,
                    max / 3600,
                    b.repository
                ));
            }
        }
    }
    if let Some(f) = b.archive_failing_secs
        && f > bounds.archive_fail_secs
    {
        out.push(format!(
            "WAL archiving has failed for {}m (last archived {}, {} failure(s)): the recovery window \
             stops there; see /var/log/pgbackrest on the leader and the repository host",
            f / 60,
            b.last_archived_wal.as_deref().unwrap_or("none"),
            b.archive_failed_count
        ));
    }
    out
}

impl Snapshot {
    /// Add the backups' state and fold its faults into the verdict.
    pub fn with_backup(mut self, b: BackupState, bounds: &BackupBounds) -> Snapshot {
        let faults = backup_faults(&b, bounds);
        if !faults.is_empty() {
            if self.verdict.level == Level::Healthy {
                self.verdict.level = Level::Degraded;
            }
            self.verdict.reasons.extend(faults);
            self.healthy = false;
        }
        self.backup = Some(b);
        self
    }
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

/// Put the parts together and judge them.
/// What the probes found, before it is judged.
pub struct Parts {
    pub members: Vec<MemberState>,
    pub etcd: Vec<EtcdMemberState>,
    pub routers: Vec<RouterState>,
    pub exporters: Vec<ExporterState>,
    pub certificates: Vec<CertState>,
    pub ca: Option<CaState>,
    pub poolers: Vec<PoolerState>,
}

pub fn assemble(cluster: &str, parts: Parts, paused: bool, bounds: &Bounds) -> Snapshot {
    let Parts {
        members,
        etcd,
        routers,
        exporters,
        certificates,
        ca,
        poolers,
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
        backup: None,
        alerts: None,
        poolers,
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
    // Lag from the members' own answers, read at once, where both positions are
    // known: the cluster view compares positions each member publishes once per
    // loop_wait, so right after a WAL switch (a backup, pgBackRest's check) it
    // shows a whole segment that no replica lacks.
    let leader_position = statuses
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .find(|st| matches!(st["role"].as_str(), Some("primary" | "master")))
        .and_then(patroni::wal_position);
    let live_lag = |st: &Value| {
        let replica = !matches!(st["role"].as_str(), Some("primary" | "master"));
        leader_position
            .zip(patroni::wal_position(st).filter(|_| replica))
            .map(|(l, r)| l.saturating_sub(r))
    };
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
                        lag_bytes: live_lag(st).or_else(|| in_view.and_then(|m| m.lag)),
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
            // A member that answered but could not serve a read: what it said.
            Err(err) => {
                let said = e.answered.as_ref();
                EtcdMemberState {
                    name: name.clone(),
                    endpoint: e.endpoint.clone(),
                    healthy: false,
                    id: said.map(|h| format!("{:x}", h.member_id)),
                    leader: false,
                    version: said.map(|h| h.version.clone()),
                    db_size_bytes: said.map(|h| h.db_size),
                    raft_index: said.map(|h| h.raft_index),
                    error: Some(err.clone()),
                }
            }
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

/// Judge a snapshot. Down: no leader, no etcd quorum, or no router sending writes to
/// the leader. Degraded: anything else not as it should be. Notes: worth knowing.
pub fn verdict(s: &Snapshot, bounds: &Bounds) -> Verdict {
    let leader = s
        .members
        .iter()
        .find(|m| m.role == "leader" && m.state == "running");
    let mut j = Judgement::default();
    cluster_faults(s, leader, bounds, &mut j);
    member_faults(s, leader, bounds, &mut j);
    router_and_exporter_faults(s, &mut j);
    pooler_faults(s, &mut j);
    certificate_faults(s, bounds, &mut j);
    let Judgement {
        mut down,
        degraded,
        notes,
    } = j;
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

/// The reasons found so far, by weight.
#[derive(Default)]
struct Judgement {
    down: Vec<String>,
    degraded: Vec<String>,
    notes: Vec<String>,
}

/// etcd's quorum and members, the leader, the write path, synchronous mode, pause.
fn cluster_faults(s: &Snapshot, leader: Option<&MemberState>, bounds: &Bounds, j: &mut Judgement) {
    let healthy_etcd = s.etcd.iter().filter(|e| e.healthy).count();
    if !s.etcd_quorum {
        j.down.push(format!(
            "etcd has no quorum ({healthy_etcd} of {} members healthy)",
            s.etcd.len()
        ));
    }
    if leader.is_none() {
        j.down.push("no running leader".into());
    }
    if !s.routers.is_empty()
        && !s.routers.iter().any(|r| {
            r.up && leader.is_some_and(|l| r.write.get(&l.name).is_some_and(|st| st == "UP"))
        })
    {
        j.down.push("no router sends writes to the leader".into());
    }
    for e in s.etcd.iter().filter(|e| !e.healthy && s.etcd_quorum) {
        j.degraded.push(format!(
            "etcd member {} unhealthy ({})",
            e.name,
            e.error.as_deref().unwrap_or("no answer")
        ));
    }
    if let Some(l) = leader {
        if l.pending_restart {
            j.notes.push(format!("{} has a pending restart", l.name));
        }
        if s.etcd.iter().any(|e| e.leader && e.name == l.name) && s.etcd.len() > 1 {
            j.notes.push(format!(
                "{} leads both etcd and Patroni: losing that host costs an etcd election and a \
                 longer failover (`pgha deploy` or `pgha switchover` moves etcd's leadership)",
                l.name
            ));
        }
    }
    if bounds.synchronous_mode
        && leader.is_some()
        && s.members.len() > 1
        && !s.members.iter().any(|m| m.role == "sync_standby")
    {
        j.degraded.push("no synchronous standby".into());
    }
    if s.paused {
        j.degraded.push("paused: Patroni will not fail over".into());
    }
}

/// Every member but the leader: reachable, streaming on the leader's timeline,
/// within the lag bound; pending restarts and tags as notes.
fn member_faults(s: &Snapshot, leader: Option<&MemberState>, bounds: &Bounds, j: &mut Judgement) {
    let tl = leader.and_then(|l| l.timeline);
    // Tags pgha sets on every member (clonefrom) are no news.
    let defaults = crate::engine::desired::default_tags();
    for m in s.members.iter().filter(|m| Some(*m) != leader) {
        if !m.reachable {
            j.degraded.push(format!("{} unreachable", m.name));
        } else if m.state != "streaming" {
            j.degraded
                .push(format!("{} is {}, not streaming", m.name, m.state));
        } else if leader.is_some() && m.timeline != tl {
            j.degraded.push(format!(
                "{} on timeline {}, the leader on {}",
                m.name,
                opt(m.timeline),
                opt(tl)
            ));
        } else if m.lag_bytes.is_none_or(|l| l > bounds.max_lag) {
            j.degraded.push(format!(
                "{} lags {} bytes (bound {})",
                m.name,
                m.lag_bytes.map_or("unknown".into(), |l| l.to_string()),
                bounds.max_lag
            ));
        }
        if m.pending_restart {
            j.notes.push(format!("{} has a pending restart", m.name));
        }
        for (t, v) in &m.tags {
            if v == &Value::Bool(true) && defaults.get(t) != Some(&true) {
                j.notes.push(format!("{} tagged {t}", m.name));
            }
        }
    }
}

fn router_and_exporter_faults(s: &Snapshot, j: &mut Judgement) {
    for r in &s.routers {
        if !r.up {
            j.degraded.push(format!(
                "router {} HAProxy unreachable ({})",
                r.name,
                r.error.as_deref().unwrap_or("no answer")
            ));
        } else if let Some(d) = &r.disagreement {
            j.degraded.push(format!("router {}: {d}", r.name));
        }
    }
    for e in &s.exporters {
        match (e.pg_up, &e.error) {
            (Some(true), _) => {}
            (Some(false), _) => j
                .degraded
                .push(format!("exporter on {} reports pg_up 0", e.name)),
            (None, err) => j.degraded.push(format!(
                "exporter on {} unreachable ({})",
                e.name,
                err.as_deref().unwrap_or("no answer")
            )),
        }
    }
}

/// A pooler that does not answer, or is paused, holds its clients: degraded.
fn pooler_faults(s: &Snapshot, j: &mut Judgement) {
    for p in &s.poolers {
        match &p.error {
            Some(e) => j
                .degraded
                .push(format!("pooler on {} not answering ({e})", p.router)),
            None if p.paused => j.degraded.push(format!(
                "pooler on {} paused: its {} client(s) wait (`pgha pool resume`)",
                p.router, p.clients
            )),
            None => {}
        }
    }
}

fn certificate_faults(s: &Snapshot, bounds: &Bounds, j: &mut Judgement) {
    for cert in &s.certificates {
        match cert.days_left {
            Some(d) if d < 0 => j.degraded.push(format!(
                "{}'s {} certificate expired: run `pgha deploy` to renew it",
                cert.host, cert.service
            )),
            Some(d) if d <= bounds.renew_before_days => j.notes.push(format!(
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
        j.degraded.push(format!(
            "the cluster CA expired on {}: replace it and run `pgha deploy`",
            ca.not_after
        ));
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
