//! The checks that end every command that changes the cluster (deploy, upgrade,
//! rebuild): each reads live state, and the run fails if any does not hold.

use std::time::Duration;

use super::run::Ctx;
use super::waits;
use crate::error::Failure;

/// Bound of each verification wait.
pub const VERIFY: Duration = Duration::from_secs(120);

/// etcd quorum, a Patroni leader with every replica streaming at lag 0, HAProxy on
/// every router sending writes to the leader alone and reads to the replicas, and a
/// row written through the write port read back from a replica through the read port;
/// with pooling, the application through every pooler; with backups, a WAL switch
/// archived in the repository.
///
/// Checks that do not depend on each other run at once (etcd beside Patroni; the
/// repository beside the routers, once Patroni is healthy): a re-run that changes
/// nothing spends most of its time here. Their lines are printed in the same order
/// whatever finishes first, and the first failure in that order is the one reported.
pub async fn verify(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let phase = ctx.ui.phase("verify");
    let (etcd, patroni) = tokio::join!(etcd_line(ctx), patroni_line(ctx));
    let etcd = etcd?;
    ctx.ui.host("etcd", etcd);
    let (leader, line) = patroni?;
    ctx.ui.host("patroni", line);
    let (routes, backup) = tokio::join!(
        routes_lines(ctx, &leader),
        super::backup::verify_repository(ctx)
    );
    for (who, line) in routes? {
        ctx.ui.host(who, line);
    }
    if let Some(line) = backup? {
        ctx.ui.host("backup", line);
    }
    phase.done("cluster verified");
    Ok(())
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::error(format!("verify: {e}"))
}

async fn etcd_line(ctx: &Ctx<'_>) -> Result<String, Failure> {
    let q = waits::wait_etcd_quorum(&ctx.ep, VERIFY)
        .await
        .map_err(fail)?;
    Ok(format!(
        "{}/{} members healthy, leader {}, cluster id {}, etcd {}",
        q.members.len(),
        ctx.ep.etcd.len(),
        q.leader,
        q.cluster_id,
        q.version
    ))
}

/// The leader, and Patroni's line.
async fn patroni_line(ctx: &Ctx<'_>) -> Result<(String, String), Failure> {
    let db = ctx.db_hosts();
    let view = waits::wait_patroni_healthy(&ctx.ep, &db, VERIFY)
        .await
        .map_err(fail)?;
    let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
    if ctx.inv.cluster.synchronous_mode && db.len() > 1 {
        // Done means protected: a failover now would lose no acknowledged commit.
        let sync = waits::wait_sync_standby(&ctx.ep, VERIFY)
            .await
            .map_err(fail)?;
        Ok((
            leader,
            format!("{}; synchronous standby {sync}", view.summary()),
        ))
    } else {
        Ok((leader, view.summary()))
    }
}

/// HAProxy's backends, a row through every router, and the poolers: lines to print
/// (a pooler found paused is resumed, with a warning).
async fn routes_lines(ctx: &Ctx<'_>, leader: &str) -> Result<Vec<(&'static str, String)>, Failure> {
    let mut lines = Vec::new();
    let replicas: Vec<String> = ctx.db_hosts().into_iter().filter(|h| h != leader).collect();
    waits::wait_haproxy(&ctx.ep, leader, &replicas, VERIFY)
        .await
        .map_err(fail)?;
    lines.push((
        "haproxy",
        format!("writes -> {leader} only; reads -> {}", replicas.join(", ")),
    ));
    for r in ctx.inv.router_hosts() {
        let rt = waits::sql_round_trip(&ctx.ep, &r.ip.to_string(), VERIFY)
            .await
            .map_err(|e| fail(format!("SQL round trip through {}: {e}", r.name)))?;
        lines.push((
            "sql",
            format!(
                "row written via {} read back via {} (served by replica {})",
                rt.written_via, rt.read_via, rt.read_from
            ),
        ));
    }
    if ctx.inv.cluster.pgbouncer_enabled {
        // A pooler left paused (a run interrupted between PAUSE and RESUME, or
        // `pgha pool pause`) holds every client: a deploy puts it back in service.
        let resumed = super::pool::resume_left_paused(&ctx.ep)
            .await
            .map_err(|e| fail(format!("reading the poolers' state: {e}")))?;
        for r in resumed {
            ctx.ui
                .warn(format!("the pooler on {r} was paused: resumed"));
        }
        let reached = super::pool::wait_app_through_poolers(ctx, VERIFY)
            .await
            .map_err(fail)?;
        for (router, primary) in reached {
            lines.push((
                "pooler",
                format!(
                    "{} logged in through {router}:{} and reached the primary {primary}",
                    ctx.inv.cluster.app_user, ctx.inv.cluster.pgbouncer_port
                ),
            ));
        }
    }
    Ok(lines)
}
