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
/// row written through the write port read back from a replica through the read port.
pub async fn verify(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let phase = ctx.ui.phase("verify");
    let db = ctx.db_hosts();
    let fail = |e: String| Failure::error(format!("verify: {e}"));
    let q = waits::wait_etcd_quorum(&ctx.ep, VERIFY)
        .await
        .map_err(|e| fail(e.to_string()))?;
    ctx.ui.host(
        "etcd",
        format!(
            "{}/{} members healthy, leader {}, cluster id {}, etcd {}",
            q.members.len(),
            ctx.ep.etcd.len(),
            q.leader,
            q.cluster_id,
            q.version
        ),
    );
    let view = waits::wait_patroni_healthy(&ctx.ep, &db, VERIFY)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if ctx.inv.cluster.synchronous_mode && db.len() > 1 {
        // Done means protected: a failover now would lose no acknowledged commit.
        let sync = waits::wait_sync_standby(&ctx.ep, VERIFY)
            .await
            .map_err(|e| fail(e.to_string()))?;
        ctx.ui.host(
            "patroni",
            format!("{}; synchronous standby {sync}", view.summary()),
        );
    } else {
        ctx.ui.host("patroni", view.summary());
    }
    let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
    let replicas: Vec<String> = db.iter().filter(|h| **h != leader).cloned().collect();
    waits::wait_haproxy(&ctx.ep, &leader, &replicas, VERIFY)
        .await
        .map_err(|e| fail(e.to_string()))?;
    ctx.ui.host(
        "haproxy",
        format!("writes -> {leader} only; reads -> {}", replicas.join(", ")),
    );
    for r in ctx.inv.router_hosts() {
        let rt = waits::sql_round_trip(&ctx.ep, &r.ip.to_string(), VERIFY)
            .await
            .map_err(|e| fail(format!("SQL round trip through {}: {e}", r.name)))?;
        ctx.ui.host(
            "sql",
            format!(
                "row written via {} read back via {} (served by replica {})",
                rt.written_via, rt.read_via, rt.read_from
            ),
        );
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
            .map_err(|e| fail(e.to_string()))?;
        for (router, primary) in reached {
            ctx.ui.host(
                "pooler",
                format!(
                    "{} logged in through {router}:{} and reached the primary {primary}",
                    ctx.inv.cluster.app_user, ctx.inv.cluster.pgbouncer_port
                ),
            );
        }
    }
    if let Some(line) = super::backup::verify_repository(ctx).await? {
        ctx.ui.host("backup", line);
    }
    phase.done("cluster verified");
    Ok(())
}
