//! Patroni actions, one function each: switchover (with a freshly chosen
//! candidate), member restart, rolling restart, pause/resume, tag changes, and the
//! wait for members to apply a dynamic configuration change. Every command that
//! needs one of these calls it here; none has its own copy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::gap::{self, Gap};
use super::run::{Ctx, host_failed, now_secs};
use super::waits;
use crate::engine::apply;
use crate::engine::desired;
use crate::engine::roles::Library;
use crate::error::Failure;
use crate::probe::patroni::{self, ClusterView, SwitchoverAnswer};
use crate::probe::{Net, sql};
use crate::wait::until;

/// Bound for a member to come back after a restart, or to stream after one.
pub const MEMBER: Duration = Duration::from_secs(300);
/// Bound for a new leader to take over after a switchover was accepted.
pub const TAKEOVER: Duration = Duration::from_secs(120);

/// What `switchover` is asked to do.
#[derive(Debug, Clone)]
pub struct SwitchoverOpts {
    /// The member to promote; None: the synchronous standby (or, without synchronous
    /// mode, the replica) with the least lag.
    pub to: Option<String>,
    /// Largest replication lag (bytes) the candidate may have.
    pub max_lag: u64,
    /// How long to wait for a suitable candidate to appear (0: refuse at once). A
    /// rolling restart waits: right after a member restarts there may be no
    /// synchronous standby for a loop or two.
    pub candidate_wait: Duration,
}

/// What a switchover did, as measured.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchoverReport {
    pub from: String,
    pub to: String,
    /// Seconds the leader's CHECKPOINT took (run right before asking Patroni).
    pub checkpoint_secs: Option<f64>,
    /// Seconds from the request to the new leader serving writes through the
    /// routers and the old leader streaming again.
    pub took_secs: f64,
    /// The write-port probe's measurement (None: no router was serving writes).
    pub gap: Option<Gap>,
}

/// Choose the member to promote from a view of the cluster. Pure: the rules Patroni
/// applies, checked before asking it, so a refusal names the reason.
pub fn choose_candidate(
    view: &ClusterView,
    to: Option<&str>,
    sync_mode: bool,
    max_lag: u64,
) -> Result<(String, String), String> {
    if view.pause {
        return Err(
            "the cluster is paused (maintenance mode): resume it first (Patroni does not switch over while paused)"
                .into(),
        );
    }
    let leader = view
        .leader()
        .ok_or_else(|| format!("there is no running leader ({})", view.summary()))?;
    let suitable = |m: &patroni::Member| -> Result<(), String> {
        if m.name == leader.name {
            return Err(format!("{} is the leader already", m.name));
        }
        if m.state != "streaming" {
            return Err(format!("{} is {}, not streaming", m.name, m.state));
        }
        if m.timeline != leader.timeline {
            return Err(format!(
                "{} is on timeline {:?}, the leader on {:?}",
                m.name, m.timeline, leader.timeline
            ));
        }
        match m.lag {
            Some(l) if l <= max_lag => {}
            Some(l) => return Err(format!("{} lags {l} bytes (bound {max_lag})", m.name)),
            None => return Err(format!("{}'s lag is unknown", m.name)),
        }
        if m.tag("nofailover") {
            return Err(format!("{} is tagged nofailover", m.name));
        }
        if sync_mode && m.role != "sync_standby" {
            return Err(format!(
                "{} is not the synchronous standby; in synchronous mode Patroni promotes only {}",
                m.name,
                sync_names(view)
            ));
        }
        Ok(())
    };
    match to {
        Some(name) => {
            let m = view.member(name).ok_or_else(|| {
                format!("{name} is not a member of the cluster ({})", view.summary())
            })?;
            suitable(m)?;
            Ok((leader.name.clone(), m.name.clone()))
        }
        None => {
            let mut reasons = Vec::new();
            let mut best: Option<&patroni::Member> = None;
            for m in view.replicas() {
                match suitable(m) {
                    Ok(()) => {
                        if best.is_none_or(|b| m.lag < b.lag) {
                            best = Some(m);
                        }
                    }
                    Err(r) => reasons.push(r),
                }
            }
            best.map(|m| (leader.name.clone(), m.name.clone()))
                .ok_or_else(|| {
                    if reasons.is_empty() {
                        "there is no replica".to_string()
                    } else {
                        format!("no member can take over: {}", reasons.join("; "))
                    }
                })
        }
    }
}

fn sync_names(view: &ClusterView) -> String {
    let s: Vec<&str> = view
        .members
        .iter()
        .filter(|m| m.role == "sync_standby")
        .map(|m| m.name.as_str())
        .collect();
    if s.is_empty() {
        "a synchronous standby (there is none right now)".into()
    } else {
        s.join(", ")
    }
}

/// Which server a router's write port reaches: Some(address) when a primary answers.
async fn write_port_primary(net: &Net, ep: &sql::Endpoint) -> Result<String, String> {
    let c = sql::connect_bounded(net, ep, Duration::from_secs(2)).await?;
    let row = c
        .query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[])
        .await
        .map_err(|e| sql::pg_error(&e))?;
    let (recovery, addr): (bool, String) = (row.get(0), row.get(1));
    if recovery {
        Err(format!(
            "{}:{} reached a replica ({addr})",
            ep.host, ep.port
        ))
    } else {
        Ok(addr)
    }
}

/// CHECKPOINT on the leader so its shutdown checkpoint, which the switchover waits
/// for, is short. Over SSH when connected to it, else through a router's write port
/// (checked to reach that leader). Returns the seconds it took.
async fn checkpoint(ctx: &Ctx<'_>, leader: &str, routers: &[sql::Endpoint]) -> Result<f64, String> {
    let t0 = Instant::now();
    let c = &ctx.inv.cluster;
    if ctx.has_session(leader) {
        let script = format!("{} -q -c CHECKPOINT", crate::install::psql(c));
        ctx.run_on(leader, "CHECKPOINT", script)
            .await
            .map_err(|f| f.message)?;
        return Ok(t0.elapsed().as_secs_f64());
    }
    let leader_ip = ctx
        .inv
        .host(leader)
        .map(|h| h.ip.to_string())
        .unwrap_or_default();
    let mut last = "no router serves writes".to_string();
    for ep in routers {
        let res = async {
            let cl = sql::connect_bounded(&ctx.ep.net, ep, Duration::from_secs(3)).await?;
            let row = cl
                .query_one("SELECT host(inet_server_addr()), pg_is_in_recovery()", &[])
                .await
                .map_err(|e| sql::pg_error(&e))?;
            let (addr, rec): (String, bool) = (row.get(0), row.get(1));
            if addr != leader_ip || rec {
                return Err(format!(
                    "{}:{} reached {addr}, not {leader}",
                    ep.host, ep.port
                ));
            }
            tokio::time::timeout(Duration::from_secs(120), cl.batch_execute("CHECKPOINT"))
                .await
                .map_err(|_| "CHECKPOINT took over 120 s".to_string())?
                .map_err(|e| sql::pg_error(&e))
        }
        .await;
        match res {
            Ok(()) => return Ok(t0.elapsed().as_secs_f64()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Planned switchover: choose (or check) the candidate from a fresh view, start the
/// write-port probe, CHECKPOINT the leader, re-check the candidate, ask Patroni once,
/// then wait until the new leader serves writes through every router that served
/// them before and the old leader streams again. An unknown answer from Patroni is
/// resolved by watching the cluster, never by asking again.
pub async fn switchover(ctx: &Ctx<'_>, opts: &SwitchoverOpts) -> Result<SwitchoverReport, Failure> {
    let sync = ctx.inv.cluster.synchronous_mode;
    let apis = ctx.ep.patroni_apis();
    let choose = || async {
        let view = patroni::cluster_any(&ctx.ep.net, &apis).await?;
        choose_candidate(&view, opts.to.as_deref(), sync, opts.max_lag)
    };
    let (leader, mut candidate) = if opts.candidate_wait.is_zero() {
        choose().await.map_err(refused)?
    } else {
        until("a member that can take over", opts.candidate_wait, choose).await?
    };

    // Routers serving writes now are the ones that must serve them afterwards.
    let mut routers = Vec::new();
    for r in ctx.inv.router_hosts() {
        let ep = ctx.ep.router_port(&r.ip.to_string(), ctx.ep.write_port);
        if write_port_primary(&ctx.ep.net, &ep).await.is_ok() {
            routers.push(ep);
        }
    }
    let probes = super::gap::start_all(&ctx.ep.net, routers.clone());
    let outcome = switch(ctx, opts, &leader, &mut candidate, &routers).await;
    let gap = gap::stop_all(probes).await;
    let (checkpoint_secs, took_secs) = outcome?;
    super::etcd::keep_apart(ctx).await;
    Ok(SwitchoverReport {
        from: leader,
        to: candidate,
        checkpoint_secs,
        took_secs,
        gap,
    })
}

fn refused(reason: String) -> Failure {
    Failure::error(format!("switchover refused, nothing was changed: {reason}"))
}

async fn switch(
    ctx: &Ctx<'_>,
    opts: &SwitchoverOpts,
    leader: &str,
    candidate: &mut String,
    routers: &[sql::Endpoint],
) -> Result<(Option<f64>, f64), Failure> {
    let sync = ctx.inv.cluster.synchronous_mode;
    let apis = ctx.ep.patroni_apis();
    let checkpoint_secs = match checkpoint(ctx, leader, routers).await {
        Ok(s) => Some(s),
        Err(e) => {
            ctx.ui.warn(format!(
                "CHECKPOINT on {leader} before the switchover failed: {e}"
            ));
            None
        }
    };
    let deadline = Instant::now() + opts.candidate_wait.max(Duration::from_secs(30));
    let api = ctx.api(leader);
    loop {
        // Re-check right before asking: roles and lag move.
        let view = patroni::cluster_any(&ctx.ep.net, &apis)
            .await
            .map_err(Failure::error)?;
        let to = opts.to.as_deref().or(Some(candidate.as_str()));
        match choose_candidate(&view, to, sync, opts.max_lag) {
            Ok((l, _)) if l != leader => {
                return Err(refused(format!(
                    "the leader changed to {l} meanwhile; nothing was asked of Patroni"
                )));
            }
            Ok(_) => {}
            Err(e) if opts.to.is_some() || Instant::now() >= deadline => return Err(refused(e)),
            Err(_) => {
                // The chosen member stopped qualifying: choose again from this view.
                match choose_candidate(&view, None, sync, opts.max_lag) {
                    Ok((_, c)) => *candidate = c,
                    Err(e) if Instant::now() >= deadline => return Err(refused(e)),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
        }
        ctx.ensure_locked(&format!("switchover {leader} -> {candidate}"))
            .await?;
        ctx.ui
            .host(leader, format!("switchover {leader} -> {candidate}"));
        let asked = Instant::now();
        match patroni::switchover(
            &ctx.ep.net,
            &api,
            &ctx.inv.secrets.patroni_api_password,
            leader,
            candidate,
        )
        .await
        {
            SwitchoverAnswer::Done => crate::testpoint::pause("switchover:requested").await,
            SwitchoverAnswer::Refused(why) => {
                // Nothing happened: with a free choice, try a fresh one until the deadline.
                if opts.to.is_some() || Instant::now() >= deadline {
                    return Err(refused(format!("Patroni refused: {why}")));
                }
                tracing::info!("switchover to {candidate} refused ({why}); choosing again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            SwitchoverAnswer::Unknown(why) => {
                crate::testpoint::pause("switchover:requested").await;
                ctx.ui.host(
                    leader,
                    format!("Patroni's answer was not conclusive ({why}); watching the cluster, not asking again"),
                );
            }
        }
        waits::wait_leader(&ctx.ep, Some(candidate), TAKEOVER)
            .await
            .map_err(|e| {
                Failure::error(format!(
                    "switchover {leader} -> {candidate} was requested once and not repeated, but {e}"
                ))
            })?;
        ctx.ui.changed(leader, 1);
        let candidate_ip = ctx
            .inv
            .host(candidate)
            .map(|h| h.ip.to_string())
            .unwrap_or_default();
        for ep in routers {
            until(
                &format!(
                    "{}:{} to reach the new leader {candidate}",
                    ep.host, ep.port
                ),
                TAKEOVER,
                || async {
                    let addr = write_port_primary(&ctx.ep.net, ep).await?;
                    if addr == candidate_ip {
                        Ok(())
                    } else {
                        Err(format!("reached {addr}"))
                    }
                },
            )
            .await?;
        }
        waits::wait_member_streaming(&ctx.ep, leader, candidate, MEMBER).await?;
        if sync {
            // Done means protected again: a synchronous standby is named.
            waits::wait_sync_standby(&ctx.ep, TAKEOVER).await?;
        }
        return Ok((checkpoint_secs, asked.elapsed().as_secs_f64()));
    }
}

/// Restart PostgreSQL on one member through Patroni and wait until it runs with no
/// pending restart.
pub async fn restart_member(ctx: &Ctx<'_>, host: &str) -> Result<(), Failure> {
    ctx.ensure_locked(&format!("{host}: restart PostgreSQL"))
        .await?;
    let api = ctx.api(host);
    patroni::restart(&ctx.ep.net, &api, &ctx.inv.secrets.patroni_api_password)
        .await
        .map_err(|e| host_failed(format!("{host}: restart PostgreSQL: {e}")))?;
    until(
        &format!("{host} to have no pending restart"),
        MEMBER,
        || async {
            let st = patroni::status(&ctx.ep.net, &api).await?;
            if st["state"] == "running" && st["pending_restart"] != true {
                Ok(())
            } else {
                Err(format!(
                    "state {}, pending_restart {}",
                    st["state"], st["pending_restart"]
                ))
            }
        },
    )
    .await?;
    ctx.ui.host(host, "PostgreSQL restarted");
    ctx.ui.changed(host, 1);
    Ok(())
}

/// Restart the members in `pending` without losing the write port for longer than
/// a switchover: replicas one at a time (each streaming again before the next), then
/// the leader after a switchover to a caught-up standby, restarted as a replica.
pub async fn rolling_restart(
    ctx: &Ctx<'_>,
    pending: &[String],
) -> Result<Vec<SwitchoverReport>, Failure> {
    let db = ctx.db_hosts();
    let view = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .map_err(Failure::error)?;
    let leader = view
        .leader()
        .map(|l| l.name.clone())
        .ok_or_else(|| Failure::error(format!("no leader: {}", view.summary())))?;
    let mut switchovers = Vec::new();
    for h in pending.iter().filter(|h| **h != leader) {
        restart_member(ctx, h).await?;
        waits::wait_patroni_healthy(&ctx.ep, &db, MEMBER).await?;
    }
    if pending.contains(&leader) {
        let report = switchover(
            ctx,
            &SwitchoverOpts {
                to: None,
                max_lag: 0,
                candidate_wait: MEMBER,
            },
        )
        .await?;
        ctx.ui.host(
            &leader,
            format!("switched over to {} before restarting it", report.to),
        );
        switchovers.push(report);
        let still = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
            .await
            .map_err(Failure::error)?
            .member(&leader)
            .is_some_and(|m| m.pending_restart);
        if still {
            restart_member(ctx, &leader).await?;
            waits::wait_patroni_healthy(&ctx.ep, &db, MEMBER).await?;
        }
    }
    Ok(switchovers)
}

/// Converge Patroni's dynamic configuration with one PATCH, then wait until every
/// member applied it (Patroni applies it, and flags pending restarts, in its loop).
pub async fn patch_config(ctx: &Ctx<'_>, leader: &str, patch: &Value) -> Result<(), Failure> {
    ctx.ensure_locked("patroni: PATCH /config").await?;
    let since = now_secs();
    patroni::patch_config(
        &ctx.ep.net,
        &ctx.api(leader),
        &ctx.inv.secrets.patroni_api_password,
        patch,
    )
    .await
    .map_err(Failure::error)?;
    ctx.ui.changed(leader, 1);
    wait_members_looped(ctx, since).await
}

/// Wait until every db member ran an HA loop well after `since`.
async fn wait_members_looped(ctx: &Ctx<'_>, since: f64) -> Result<(), Failure> {
    let loop_wait = f64::from(ctx.inv.cluster.patroni_loop_wait);
    for h in ctx.db_hosts() {
        let api = ctx.api(&h);
        until(
            &format!("{h} to run its HA loop after the configuration change"),
            Duration::from_secs(60),
            || async {
                let st = patroni::status(&ctx.ep.net, &api).await?;
                let seen = st["dcs_last_seen"].as_f64().unwrap_or(0.0);
                if seen > since + loop_wait + 1.0 {
                    Ok(())
                } else {
                    Err(format!("dcs_last_seen {seen:.0}, change at {since:.0}"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Pause (maintenance mode: Patroni stops managing PostgreSQL, which keeps running)
/// or resume the cluster, and wait until every member reports it.
pub async fn set_pause(ctx: &Ctx<'_>, pause: bool) -> Result<(), Failure> {
    let view = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .map_err(Failure::error)?;
    if view.pause == pause {
        return Ok(());
    }
    if pause {
        // Recorded first: a run interrupted right after the PATCH leaves a pause
        // that the next run knows to be pgha's.
        super::marks::update(ctx, |m| m.paused = true).await?;
    } else {
        ctx.ensure_locked("resume the cluster").await?;
    }
    let via = view
        .leader()
        .map(|l| l.name.clone())
        .or_else(|| view.members.first().map(|m| m.name.clone()))
        .ok_or_else(|| Failure::error("no Patroni member answers"))?;
    patroni::patch_config(
        &ctx.ep.net,
        &ctx.api(&via),
        &ctx.inv.secrets.patroni_api_password,
        &json!({ "pause": pause }),
    )
    .await
    .map_err(Failure::error)?;
    for h in ctx.db_hosts() {
        let api = ctx.api(&h);
        until(
            &format!("{h} to report pause={pause}"),
            Duration::from_secs(60),
            || async {
                let st = patroni::status(&ctx.ep.net, &api).await?;
                let now = st["pause"] == true;
                if now == pause {
                    Ok(())
                } else {
                    Err(format!("pause={now}"))
                }
            },
        )
        .await?;
    }
    if !pause {
        super::marks::update(ctx, |m| m.paused = false).await?;
    }
    ctx.ui.host(
        "cluster",
        if pause {
            "paused (maintenance mode)"
        } else {
            "resumed"
        },
    );
    Ok(())
}

/// Tags of a member pgha works on: out of read traffic, failover candidacy and
/// synchronous replication.
pub fn work_tags() -> Tags {
    ["nofailover", "noloadbalance", "nosync"]
        .into_iter()
        .map(|t| (t.to_string(), true))
        .collect()
}

/// Bound for a drained replica's clients to leave.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Take a replica out of service before work on it: tags (reads drain through
/// HAProxy's `/replica` check, failover and synchronous replication move to other
/// members), then wait until HAProxy stops sending it reads, it is no longer the
/// synchronous standby, and its client sessions are gone (bounded: sessions left
/// after `DRAIN` end with the restart).
pub async fn drain(ctx: &Ctx<'_>, host: &str) -> Result<(), Failure> {
    // Recorded before the tags are set, so they are known to be pgha's.
    super::marks::update(ctx, |m| {
        m.tagged.insert(host.to_string());
    })
    .await?;
    set_tags(ctx, host, &work_tags()).await?;
    waits::wait_haproxy_server(&ctx.ep, "replicas", host, false, Duration::from_secs(60)).await?;
    let others = ctx.db_hosts().len() > 2;
    if ctx.inv.cluster.synchronous_mode && others {
        let apis = ctx.ep.patroni_apis();
        until(
            &format!("another member to take over as synchronous standby from {host}"),
            Duration::from_secs(60),
            || async {
                let v = patroni::cluster_any(&ctx.ep.net, &apis).await?;
                let sync: Vec<&str> = v
                    .members
                    .iter()
                    .filter(|m| m.role == "sync_standby")
                    .map(|m| m.name.as_str())
                    .collect();
                if !sync.is_empty() && !sync.contains(&host) {
                    Ok(())
                } else {
                    Err(v.summary())
                }
            },
        )
        .await?;
    }
    // Client sessions, not Patroni's own nor the exporter's (it stays connected).
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND pid <> pg_backend_pid() AND coalesce(application_name, '') NOT LIKE 'Patroni%' \
         AND usename IS DISTINCT FROM '{}'",
        ctx.inv.cluster.monitor_user
    );
    let count = format!(
        "{} -At -c {}",
        crate::install::psql(&ctx.inv.cluster),
        crate::ssh::shell_quote(&sql)
    );
    let left = until(
        &format!("client sessions on {host} to end"),
        DRAIN,
        || async {
            let n = ctx
                .run_on(host, "count client sessions", count.clone())
                .await
                .map_err(|f| f.message)?;
            match n.trim() {
                "0" => Ok(()),
                n => Err(format!("{n} client session(s)")),
            }
        },
    )
    .await;
    if let Err(e) = left {
        ctx.ui
            .host(host, format!("{}; they end with the restart", e.last));
    }
    ctx.ui
        .host(host, "drained: no reads, no failover, not synchronous");
    Ok(())
}

/// Put a drained member back: default tags, streaming from the leader with lag 0,
/// and back in HAProxy's read backend.
pub async fn undrain(ctx: &Ctx<'_>, host: &str) -> Result<(), Failure> {
    set_tags(ctx, host, &desired::default_tags()).await?;
    super::marks::update(ctx, |m| {
        m.tagged.remove(host);
    })
    .await?;
    let leader = waits::wait_leader(&ctx.ep, None, TAKEOVER).await?;
    waits::wait_member_streaming(&ctx.ep, host, &leader, MEMBER).await?;
    waits::wait_haproxy_server(&ctx.ep, "replicas", host, true, Duration::from_secs(60)).await?;
    Ok(())
}

/// Patroni tags of one member (they live in its local configuration file).
pub type Tags = BTreeMap<String, bool>;

/// Set a member's tags (`nofailover`, `noloadbalance`, `nosync`, ...): its
/// configuration file is rendered with them, written, and Patroni reloaded; returns
/// once Patroni reports them. Needs an SSH session to the member.
pub async fn set_tags(ctx: &Ctx<'_>, host: &str, tags: &Tags) -> Result<(), Failure> {
    ctx.ensure_locked(&format!("{host}: set tags")).await?;
    let lib = Library::load().map_err(|e| Failure::error(format!("{e:#}")))?;
    let inputs = desired::Inputs {
        pki: ctx.pki.clone(),
        ..Default::default()
    };
    let file = desired::patroni_config_file(ctx.inv, &lib, &inputs, host, tags)
        .map_err(|e| Failure::error(format!("{e:#}")))?;
    let s = ctx.session(host)?;
    apply::write_files(s, &[&file])
        .await
        .map_err(|e| host_failed(format!("{host}: write {}: {e:#}", file.path)))?;
    let reload = desired::desired_state(ctx.inv, &lib)
        .map_err(|e| Failure::error(format!("{e:#}")))?
        .into_iter()
        .find(|d| d.host == host)
        .and_then(|d| d.role("patroni").map(crate::install::reload))
        .ok_or_else(|| Failure::error(format!("{host} is not a db host")))?;
    ctx.run_on(host, "reload patroni", reload).await?;
    let api = ctx.api(host);
    until(
        &format!("{host} to report tags {tags:?}"),
        Duration::from_secs(60),
        || async {
            let st = patroni::status(&ctx.ep.net, &api).await?;
            let have = &st["tags"];
            let ok = tags.iter().all(|(k, v)| (have[k] == true) == *v);
            if ok {
                Ok(())
            } else {
                Err(format!("tags {have}"))
            }
        },
    )
    .await?;
    let set: Vec<&str> = tags
        .iter()
        .filter(|(_, v)| **v)
        .map(|(k, _)| k.as_str())
        .collect();
    ctx.ui.host(
        host,
        if set.is_empty() {
            "tags cleared".to_string()
        } else {
            format!("tagged {}", set.join(", "))
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: &str) -> ClusterView {
        serde_json::from_str(json).unwrap()
    }

    const HEALTHY: &str = r#"{"members": [
      {"name": "db1", "role": "leader", "state": "running", "timeline": 3},
      {"name": "db2", "role": "sync_standby", "state": "streaming", "timeline": 3, "lag": 0},
      {"name": "db3", "role": "replica", "state": "streaming", "timeline": 3, "lag": 0}
    ]}"#;

    #[test]
    fn without_a_target_the_synchronous_standby_is_chosen() {
        let v = view(HEALTHY);
        assert_eq!(
            choose_candidate(&v, None, true, 0).unwrap(),
            ("db1".into(), "db2".into())
        );
    }

    #[test]
    fn without_synchronous_mode_the_least_lagging_replica_is_chosen() {
        let v = view(
            r#"{"members": [
          {"name": "db1", "role": "leader", "state": "running", "timeline": 1},
          {"name": "db2", "role": "replica", "state": "streaming", "timeline": 1, "lag": 500},
          {"name": "db3", "role": "replica", "state": "streaming", "timeline": 1, "lag": 10}
        ]}"#,
        );
        assert_eq!(choose_candidate(&v, None, false, 1000).unwrap().1, "db3");
        let e = choose_candidate(&v, None, false, 5).unwrap_err();
        assert!(
            e.contains("db2 lags 500") && e.contains("db3 lags 10"),
            "{e}"
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let v = view(HEALTHY);
        let e = choose_candidate(&v, Some("db1"), true, 0).unwrap_err();
        assert!(e.contains("db1 is the leader already"), "{e}");
        let e = choose_candidate(&v, Some("db9"), true, 0).unwrap_err();
        assert!(e.contains("db9 is not a member"), "{e}");
        let e = choose_candidate(&v, Some("db3"), true, 0).unwrap_err();
        assert!(
            e.contains("not the synchronous standby") && e.contains("db2"),
            "{e}"
        );
        assert_eq!(
            choose_candidate(&v, Some("db3"), false, 0).unwrap().1,
            "db3"
        );
    }

    #[test]
    fn unhealthy_clusters_are_refused() {
        let paused = view(&HEALTHY.replacen('{', r#"{"pause": true, "#, 1));
        assert!(
            choose_candidate(&paused, None, true, 0)
                .unwrap_err()
                .contains("paused")
        );
        let leaderless = view(
            r#"{"members": [{"name": "db2", "role": "replica", "state": "streaming", "lag": 0}]}"#,
        );
        assert!(
            choose_candidate(&leaderless, None, true, 0)
                .unwrap_err()
                .contains("no running leader")
        );
        let stale = view(
            r#"{"members": [
          {"name": "db1", "role": "leader", "state": "running", "timeline": 3},
          {"name": "db2", "role": "sync_standby", "state": "running", "timeline": 2, "lag": 0},
          {"name": "db3", "role": "replica", "state": "streaming", "timeline": 3, "lag": 0, "tags": {"nofailover": true}}
        ]}"#,
        );
        let e = choose_candidate(&stale, None, false, 0).unwrap_err();
        assert!(e.contains("db2 is running, not streaming"), "{e}");
        assert!(e.contains("db3 is tagged nofailover"), "{e}");
    }
}
