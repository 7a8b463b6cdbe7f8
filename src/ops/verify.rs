//! The checks that end every command that changes the cluster (deploy, upgrade,
//! rebuild): each reads live state, and the run fails if any does not hold.

use std::future::Future;
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
pub async fn verify(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let phase = ctx.ui.phase("verify");
    let report = check(ctx).await?;
    report.print(ctx, phase, "cluster verified");
    Ok(())
}

/// What `check` saw: a line per check, in a fixed order.
pub struct Report {
    lines: Vec<(&'static str, String)>,
    took: Duration,
}

impl Report {
    fn print(self, ctx: &Ctx<'_>, phase: crate::ui::Phase, summary: &str) {
        for (who, line) in self.lines {
            ctx.ui.host(who, line);
        }
        phase.done(summary);
    }
}

/// Every check of `verify`, its lines kept to print. Checks that do not depend on
/// each other run at once (etcd beside Patroni; the repository beside the routers,
/// once Patroni is healthy): a re-run that changes nothing spends most of its time
/// here. The first failure in the lines' order is the one reported.
pub async fn check(ctx: &Ctx<'_>) -> Result<Report, Failure> {
    checks(ctx, false).await
}

/// `check` for `ahead`: the repository's check (pgBackRest's, the longest) starts
/// at once too, beside etcd and Patroni. After a change it waits for Patroni to be
/// healthy, as it would fail while a member restarts; ahead, a failure only means
/// verifying afresh.
pub async fn check_ahead(ctx: &Ctx<'_>) -> Result<Report, Failure> {
    checks(ctx, true).await
}

async fn checks(ctx: &Ctx<'_>, eager: bool) -> Result<Report, Failure> {
    let start = std::time::Instant::now();
    let cluster = async {
        let (etcd, patroni) = tokio::join!(etcd_line(ctx), patroni_line(ctx));
        let etcd = etcd?;
        let (leader, line) = patroni?;
        Ok::<_, Failure>((leader, vec![("etcd", etcd), ("patroni", line)]))
    };
    let (mut lines, routes, backup) = if eager {
        let routes = async {
            let (leader, lines) = cluster.await?;
            Ok::<_, Failure>((lines, routes_lines(ctx, &leader).await))
        };
        let (r, backup) = tokio::join!(routes, super::backup::verify_repository(ctx));
        let (lines, routes) = r?;
        (lines, routes, backup)
    } else {
        let (leader, lines) = cluster.await?;
        let (routes, backup) = tokio::join!(
            routes_lines(ctx, &leader),
            super::backup::verify_repository(ctx)
        );
        (lines, routes, backup)
    };
    lines.extend(routes?);
    if let Some(line) = backup? {
        lines.push(("backup", line));
    }
    Ok(Report {
        lines,
        took: start.elapsed(),
    })
}

/// Runs `work` (a command's phases) with `checks` (`check`, started now) beside
/// it, and returns `work`'s result with the checks' report when they passed and
/// `work` changed nothing (`unchanged` says so, asked when `work` ends): a re-run
/// that changes nothing then waits for neither in turn. The checks stop as soon as
/// `unchanged` says no: a run that changes something verifies afresh, after its
/// changes. Checks that fail ahead prove nothing either way (the run may have
/// mended what they saw): the caller verifies afresh then too.
pub async fn ahead<T, R, E>(
    checks: impl Future<Output = Result<R, E>>,
    unchanged: impl Fn() -> bool,
    work: impl Future<Output = T>,
) -> (T, Option<R>) {
    tokio::pin!(checks, work);
    let mut report: Option<Result<R, E>> = None;
    let mut checking = true;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            r = &mut checks, if checking && report.is_none() => report = Some(r),
            _ = tick.tick(), if checking => checking = unchanged(),
        }
    };
    if !unchanged() {
        return (out, None);
    }
    let report = match report {
        Some(r) => r,
        None if checking => checks.await,
        None => return (out, None),
    };
    (out, report.ok())
}

/// Prints a report `ahead` returned, as `verify` would have.
pub fn print_ahead(ctx: &Ctx<'_>, report: Report) {
    let phase = ctx.ui.phase("verify");
    let took = report.took.as_secs_f32();
    report.print(
        ctx,
        phase,
        &format!("cluster verified, checked beside the run's phases in {took:.1}s"),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    async fn after<T>(ms: u64, v: T) -> T {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        v
    }

    #[tokio::test(start_paused = true)]
    async fn checks_that_passed_stand_for_a_run_that_changed_nothing() {
        let (out, r) = ahead(after(50, Ok::<_, ()>("seen")), || true, after(500, 7)).await;
        assert_eq!((out, r), (7, Some("seen")));
        // Slower checks than the run are waited for.
        let (_, r) = ahead(after(900, Ok::<_, ()>("late")), || true, after(10, ())).await;
        assert_eq!(r, Some("late"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_or_a_failure_leaves_the_verification_to_the_caller() {
        let changed = Cell::new(false);
        let work = async {
            after(200, ()).await;
            changed.set(true);
            after(200, ()).await;
        };
        // Checks that would never end stop being waited for once the run changes something.
        let (_, r) = ahead(
            std::future::pending::<Result<(), ()>>(),
            || !changed.get(),
            work,
        )
        .await;
        assert_eq!(r, None);
        // A change made after the checks passed voids them too.
        changed.set(false);
        let work = async {
            after(300, ()).await;
            changed.set(true);
        };
        let (_, r) = ahead(after(10, Ok::<_, ()>(())), || !changed.get(), work).await;
        assert_eq!(r, None);
        let (_, r) = ahead(after(10, Err::<(), _>("no leader")), || true, after(50, ())).await;
        assert_eq!(r, None);
    }
}
