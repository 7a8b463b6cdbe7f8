//! The planned switchover, in one function every command calls: the candidate
//! chosen (or checked) from a fresh view by Patroni's own rules, the routers' write
//! port probed throughout, a CHECKPOINT on the leader first, exactly one request
//! to Patroni (an unknown answer is resolved by watching, never by asking again),
//! then the new leader serving writes through every router and the old one
//! streaming from it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::follow::{routers_reach, write_port_primary};
use super::gap::{self, Gap};
use super::run::Ctx;
use super::waits;
use crate::error::Failure;
use crate::probe::patroni::{self, ClusterView, SwitchoverAnswer};
use crate::probe::sql;
use crate::wait::{until, until_every};

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
    /// Seconds the poolers were paused (clients of the pooled port waited, none
    /// failed); None without pooling.
    pub pooler_pause_secs: Option<f64>,
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

/// Synchronous mode, `to` named: whether it qualifies except that it is not the
/// synchronous standby (it must become one first). False: it is the synchronous
/// standby, or the rules refuse it for another reason, which `choose_candidate`
/// then names. Pure.
pub fn must_become_sync(view: &ClusterView, to: &str, max_lag: u64) -> Result<bool, String> {
    if choose_candidate(view, Some(to), false, max_lag).is_err() {
        return Ok(false);
    }
    let Some(m) = view.member(to) else {
        return Ok(false);
    };
    if m.role == "sync_standby" {
        return Ok(false);
    }
    if m.tag("nosync") {
        return Err(format!(
            "{to} is tagged nosync: it cannot become the synchronous standby, which is the only member Patroni promotes in synchronous mode"
        ));
    }
    Ok(true)
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
    // An asynchronous replica named in synchronous mode becomes a synchronous
    // standby first; the write probe covers that too.
    let widen = match (&opts.to, sync) {
        (Some(to), true) => {
            let view = fresh_view(ctx, &apis).await.map_err(Failure::error)?;
            must_become_sync(&view, to, opts.max_lag).map_err(refused)?
        }
        _ => false,
    };
    let routers = serving_routers(ctx).await;
    let probes = super::gap::start_all(&ctx.ep.net, routers.clone());
    let outcome = if widen {
        let to = opts.to.as_deref().unwrap_or_default();
        let r = match every_replica_synchronous(ctx, to).await {
            Ok(()) => chosen_and_switched(ctx, opts, &routers).await,
            Err(e) => Err(e),
        };
        // The inventory's count again, whatever happened (a run interrupted
        // before this leaves it to the next deploy, which converges it).
        if let Err(e) = sync_count(ctx, ctx.inv.cluster.synchronous_node_count).await {
            ctx.ui.warn(format!(
                "setting synchronous_node_count back to {}: {} (the next `pgha deploy` does it)",
                ctx.inv.cluster.synchronous_node_count, e.message
            ));
        }
        r
    } else {
        chosen_and_switched(ctx, opts, &routers).await
    };
    let gap = gap::stop_all(probes).await;
    let (leader, candidate, (checkpoint_secs, took_secs, pooler_pause_secs)) = outcome?;
    super::etcd::keep_apart(ctx).await;
    Ok(SwitchoverReport {
        from: leader,
        to: candidate,
        checkpoint_secs,
        took_secs,
        gap,
        pooler_pause_secs,
    })
}

/// The routers serving writes now: the ones that must serve them afterwards.
pub(super) async fn serving_routers(ctx: &Ctx<'_>) -> Vec<sql::Endpoint> {
    let mut routers = Vec::new();
    for r in ctx.inv.router_hosts() {
        let ep = ctx.ep.router_port(&r.ip.to_string(), ctx.ep.write_port);
        if write_port_primary(ctx.ep.net.clone(), ep.clone())
            .await
            .is_ok()
        {
            routers.push(ep);
        }
    }
    routers
}

/// Make every replica a synchronous standby (Patroni's `synchronous_node_count`
/// raised to their number, through its REST API: no SSH), and wait until Patroni
/// names `to` one of them. More protection meanwhile, never less.
async fn every_replica_synchronous(ctx: &Ctx<'_>, to: &str) -> Result<(), Failure> {
    let replicas = ctx.db_hosts().len().saturating_sub(1).max(1);
    sync_count(ctx, u32::try_from(replicas).unwrap_or(u32::MAX)).await?;
    let apis = ctx.ep.patroni_apis();
    until(
        &format!("{to} to become a synchronous standby"),
        TAKEOVER,
        || async {
            let v = patroni::cluster_any(&ctx.ep.net, &apis).await?;
            if v.member(to).is_some_and(|m| m.role == "sync_standby") {
                Ok(())
            } else {
                Err(v.summary())
            }
        },
    )
    .await?;
    ctx.ui.host(to, "a synchronous standby");
    Ok(())
}

/// Set Patroni's `synchronous_node_count` (dynamic configuration) through the
/// member that leads now, once every member has applied it.
async fn sync_count(ctx: &Ctx<'_>, n: u32) -> Result<(), Failure> {
    let leader = waits::wait_leader(&ctx.ep, None, TAKEOVER).await?;
    super::dcs::patch_config(
        ctx,
        &leader,
        &serde_json::json!({ "synchronous_node_count": n }),
    )
    .await?;
    ctx.ui
        .host("cluster", format!("synchronous_node_count {n}"));
    Ok(())
}

/// Choose (or check) the candidate and switch over to it.
async fn chosen_and_switched(
    ctx: &Ctx<'_>,
    opts: &SwitchoverOpts,
    routers: &[sql::Endpoint],
) -> Result<(String, String, Switched), Failure> {
    let sync = ctx.inv.cluster.synchronous_mode;
    let apis = ctx.ep.patroni_apis();
    let choose = || async {
        let view = fresh_view(ctx, &apis).await?;
        choose_candidate(&view, opts.to.as_deref(), sync, opts.max_lag)
    };
    let (leader, mut candidate) = if opts.candidate_wait.is_zero() {
        choose().await.map_err(refused)?
    } else {
        until("a member that can take over", opts.candidate_wait, choose).await?
    };
    let switched = switch(ctx, opts, &leader, &mut candidate, routers).await?;
    Ok((leader, candidate, switched))
}

/// The CHECKPOINT's seconds, the request's to done, the poolers' pause.
type Switched = (Option<f64>, f64, Option<f64>);

/// Longest the poolers stay paused waiting for the write ports to reach the new
/// leader: then they are resumed anyway (their clients may see errors until the
/// routers follow), and the run says so.
pub(super) const POOLER_PAUSE_MAX: Duration = Duration::from_secs(30);

/// The cluster view with each replica's lag measured now. Patroni's /cluster lag
/// compares positions the members wrote to the DCS at different moments (each
/// once per loop_wait): right after a WAL switch (archive_timeout, a backup) a
/// replica that is fully caught up shows a whole segment of lag until its next
/// loop. The members' own /patroni status is read instead, replicas first and the
/// leader last, so the measured lag can only be larger than the truth, never
/// smaller. A member that does not answer keeps Patroni's figure.
async fn fresh_view(ctx: &Ctx<'_>, apis: &[String]) -> Result<ClusterView, String> {
    let mut view = patroni::cluster_any(&ctx.ep.net, apis).await?;
    let Some(leader) = view.leader().map(|l| l.name.clone()) else {
        return Ok(view);
    };
    if view.replicas().all(|m| m.lag == Some(0)) {
        return Ok(view);
    }
    let position = |name: String| async move {
        let api = ctx.ep.api_of(&name)?.to_string();
        let status = patroni::status(&ctx.ep.net, &api).await.ok()?;
        patroni::wal_position(&status).map(|p| (name, p))
    };
    let replicas: Vec<String> = view.replicas().map(|m| m.name.clone()).collect();
    let positions: Vec<(String, u64)> =
        futures_util::future::join_all(replicas.into_iter().map(position))
            .await
            .into_iter()
            .flatten()
            .collect();
    if let Some((_, at)) = position(leader).await {
        for (name, pos) in positions {
            if let Some(m) = view.members.iter_mut().find(|m| m.name == name) {
                m.lag = Some(at.saturating_sub(pos));
            }
        }
    }
    Ok(view)
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
) -> Result<Switched, Failure> {
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
        let view = fresh_view(ctx, &apis).await.map_err(Failure::error)?;
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
        // Pooled clients wait instead of failing: their transactions finish, the
        // poolers close every server connection and hold new work.
        let paused = super::pool::pause_planned(ctx).await?;
        if !paused.is_empty() {
            ctx.ui.host(leader, "poolers paused");
        }
        ctx.ui
            .host(leader, format!("switchover {leader} -> {candidate}"));
        let asked = Instant::now();
        let candidate_now = candidate.clone();
        let request = patroni::switchover(
            &ctx.ep.net,
            &api,
            &ctx.inv.secrets.patroni_api_password,
            leader,
            &candidate_now,
        );
        // Patroni answers on a whole second after the request (it polls its DCS
        // once a second), up to a second after the candidate took over: clients
        // must not wait on that. The write ports are watched from the request on
        // (and, where pgha can, HAProxy is told of the new leader at once); the
        // poolers resume as soon as they reach the candidate, never later than
        // POOLER_PAUSE_MAX, and are never left paused.
        let reach = routers_reach(ctx, &candidate_now, routers, asked + POOLER_PAUSE_MAX);
        tokio::pin!(request, reach);
        let mut paused = Some(paused).filter(|p| !p.is_empty());
        let mut pause_secs = None;
        let mut reached = false;
        let late = |r: Result<(), String>| r.err().map(|last| format!("the new leader ({last})"));
        let answer = tokio::select! {
            a = &mut request => a,
            r = &mut reach => {
                reached = true;
                if let Some(p) = paused.take() {
                    pause_secs = Some(resume(ctx, leader, p, late(r).as_deref()).await);
                }
                request.await
            }
        };
        match answer {
            SwitchoverAnswer::Done => crate::testpoint::pause("switchover:requested").await,
            SwitchoverAnswer::Refused(why) => {
                if let Some(p) = paused.take() {
                    resume(ctx, leader, p, None).await;
                }
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
        ctx.ui.changed(leader, 1);
        if !reached {
            let r = (&mut reach).await;
            if let Some(p) = paused.take() {
                pause_secs = Some(resume(ctx, leader, p, late(r).as_deref()).await);
            }
        }
        // The whole proof, Patroni's view included (after RESUME when paused).
        writes_reach(ctx, leader, candidate, routers).await?;
        settled(ctx, leader, candidate).await?;
        return Ok((checkpoint_secs, asked.elapsed().as_secs_f64(), pause_secs));
    }
}

/// Resume the poolers a switchover paused; the seconds they were paused.
/// `late`: what the write ports did not reach within the bound (said in a warning).
pub(super) async fn resume(
    ctx: &Ctx<'_>,
    leader: &str,
    paused: super::pool::Paused,
    late: Option<&str>,
) -> f64 {
    if paused.is_empty() {
        return 0.0;
    }
    let (secs, failed) = paused.resume(&ctx.ep).await;
    if let Some(what) = late {
        ctx.ui.warn(format!(
            "the routers' write ports did not reach {what} within {}s: poolers resumed anyway \
             (their clients may see errors until the routers follow)",
            POOLER_PAUSE_MAX.as_secs()
        ));
    }
    for f in failed {
        ctx.ui
            .warn(format!("RESUME failed on {f}: run `pgha pool resume`"));
    }
    ctx.ui
        .host(leader, format!("poolers resumed after {secs:.2}s paused"));
    secs
}

/// After the request: the candidate leads and every router's write port reaches it.
/// Polled every 100 ms.
pub(super) async fn writes_reach(
    ctx: &Ctx<'_>,
    leader: &str,
    candidate: &str,
    routers: &[sql::Endpoint],
) -> Result<(), Failure> {
    const EVERY: Duration = Duration::from_millis(100);
    let apis = ctx.ep.patroni_apis();
    until_every(
        &format!("{candidate} to become the Patroni leader"),
        TAKEOVER,
        EVERY,
        || async {
            let view = patroni::cluster_any(&ctx.ep.net, &apis).await?;
            match view.leader() {
                Some(l) if l.name == candidate => Ok(()),
                _ => Err(view.summary()),
            }
        },
    )
    .await
    .map_err(|e| {
        Failure::error(if leader == candidate {
            format!("{leader} was restarted in place, but {e}")
        } else {
            format!(
                "switchover {leader} -> {candidate} was requested once and not repeated, but {e}"
            )
        })
    })?;
    let candidate_ip = ctx
        .inv
        .host(candidate)
        .map(|h| h.ip.to_string())
        .unwrap_or_default();
    for ep in routers {
        until_every(
            &format!(
                "{}:{} to reach the new leader {candidate}",
                ep.host, ep.port
            ),
            TAKEOVER,
            EVERY,
            || async {
                let addr = write_port_primary(ctx.ep.net.clone(), ep.clone()).await?;
                if addr == candidate_ip {
                    Ok(())
                } else {
                    Err(format!("reached {addr}"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Then the old leader streams from the new one, and (synchronous mode) a standby
/// protects it.
async fn settled(ctx: &Ctx<'_>, leader: &str, candidate: &str) -> Result<(), Failure> {
    let sync = ctx.inv.cluster.synchronous_mode;
    waits::wait_member_streaming(&ctx.ep, leader, candidate, MEMBER).await?;
    if sync {
        // Done means protected again: a synchronous standby is named.
        waits::wait_sync_standby(&ctx.ep, TAKEOVER).await?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "switchover_tests.rs"]
mod tests;
