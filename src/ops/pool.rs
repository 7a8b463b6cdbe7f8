//! The poolers (PgBouncer on the routers) as commands act on them: their pools,
//! PAUSE with a bound (transactions in flight finish, then every server
//! connection is closed and new work waits), RESUME, RECONNECT. A planned
//! operation pauses them right before the primary changes and resumes them as
//! soon as every router's write port reaches the new one (`Paused`).

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::Endpoints;
use crate::error::Failure;
use crate::probe::pgbouncer::{self, Pool};
use crate::probe::sql::Endpoint;
use tokio_postgres::Client;

/// Bound of one console command that does not wait for clients.
const CONSOLE: Duration = Duration::from_secs(5);

/// One pooler as `show` reads it.
#[derive(Debug, Clone)]
pub struct PoolerView {
    pub pools: Vec<Pool>,
    pub paused: bool,
}

/// Each pooler's pools and whether it is paused (or why it did not answer).
pub async fn show(ep: &Endpoints) -> Vec<(String, Result<PoolerView, String>)> {
    join_all(ep.poolers.iter().map(|(name, e)| async move {
        let r = async {
            let c = pgbouncer::console(&ep.net, e, CONSOLE).await?;
            Ok(PoolerView {
                pools: pgbouncer::pools(&c).await?,
                paused: pgbouncer::paused(&c).await?,
            })
        }
        .await;
        (name.clone(), r)
    }))
    .await
}

/// Resume every pooler left paused (a planned operation interrupted before its
/// RESUME, or a `pgha pool pause`): the routers it resumed.
pub async fn resume_left_paused(ep: &Endpoints) -> Result<Vec<String>, String> {
    let mut resumed = Vec::new();
    for (name, view) in show(ep).await {
        if view.map_err(|e| format!("{name}: {e}"))?.paused {
            command(ep, pooler(ep, &name), "RESUME", CONSOLE)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            resumed.push(name);
        }
    }
    Ok(resumed)
}

/// Before a command that may move the primary: resume the poolers a killed run
/// left paused (its clients would wait until query_wait_timeout and fail), each
/// named in a warning. Poolers that do not answer are left to the command's own
/// checks (on a first deploy they are not there yet).
pub async fn resume_interrupted(ctx: &super::Ctx<'_>) {
    if !ctx.inv.cluster.pgbouncer_enabled {
        return;
    }
    for (name, view) in show(&ctx.ep).await {
        match view {
            Ok(v) if v.paused => {
                let e = pooler(&ctx.ep, &name);
                match command(&ctx.ep, e, "RESUME", CONSOLE).await {
                    Ok(()) => ctx.ui.warn(format!(
                        "the pooler on {name} was left paused (an interrupted run, or `pgha pool pause`): resumed"
                    )),
                    Err(e) => ctx.ui.warn(format!(
                        "the pooler on {name} is paused and did not take RESUME ({e}): run `pgha pool resume`"
                    )),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("pooler {name} not read: {e}"),
        }
    }
}

fn pooler<'e>(ep: &'e Endpoints, name: &str) -> &'e Endpoint {
    ep.poolers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, e)| e)
        .expect("a pooler of the endpoints")
}

/// Run one console command on a pooler, bounded.
async fn command(ep: &Endpoints, e: &Endpoint, cmd: &str, bound: Duration) -> Result<(), String> {
    let c = pgbouncer::console(&ep.net, e, CONSOLE).await?;
    command_on(&c, cmd, bound).await
}

/// Run one console command on an open console connection, bounded.
async fn command_on(c: &Client, cmd: &str, bound: Duration) -> Result<(), String> {
    match tokio::time::timeout(bound, c.simple_query(cmd)).await {
        Err(_) => Err(format!(
            "{cmd} did not complete within {}s",
            bound.as_secs()
        )),
        Ok(Err(e)) => {
            let msg = crate::probe::sql::pg_error(&e);
            // Asking again what is already so is not a failure.
            if (cmd == "RESUME" && msg.contains("not paused"))
                || (cmd == "PAUSE" && msg.contains("already"))
            {
                Ok(())
            } else {
                Err(format!("{cmd}: {msg}"))
            }
        }
        Ok(Ok(_)) => Ok(()),
    }
}

/// A console command on every pooler at once: (router, outcome).
pub async fn on_all(
    ep: &Endpoints,
    cmd: &str,
    bound: Duration,
) -> Vec<(String, Result<(), String>)> {
    join_all(
        ep.poolers
            .iter()
            .map(|(name, e)| async move { (name.clone(), command(ep, e, cmd, bound).await) }),
    )
    .await
}

/// Poolers paused by a planned operation; `resume` must follow, whatever happens.
/// Each keeps the console connection that paused it, so RESUME costs one round
/// trip instead of a new TLS connection while clients wait.
#[must_use = "paused poolers must be resumed"]
pub struct Paused {
    consoles: Vec<(String, Client)>,
    since: Instant,
}

impl Paused {
    /// Nothing paused (pooling off).
    pub fn none() -> Paused {
        Paused {
            consoles: Vec::new(),
            since: Instant::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.consoles.is_empty()
    }

    /// RESUME every paused pooler; how long they were paused. A console
    /// connection that broke meanwhile is opened again; a pooler that does not
    /// take it is named (its clients wait until query_wait_timeout).
    pub async fn resume(self, ep: &Endpoints) -> (f64, Vec<String>) {
        if self.consoles.is_empty() {
            return (0.0, Vec::new());
        }
        let took = self.since.elapsed().as_secs_f64();
        let failed = join_all(self.consoles.iter().map(|(name, c)| async move {
            let r = match command_on(c, "RESUME", CONSOLE).await {
                Err(e) if c.is_closed() || e.contains("did not complete") => {
                    tracing::debug!("RESUME on {name} over the pausing connection: {e}");
                    command(ep, pooler(ep, name), "RESUME", CONSOLE).await
                }
                r => r,
            };
            r.err().map(|e| format!("{name}: {e}"))
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
        (took, failed)
    }
}

/// PAUSE every pooler within `bound` (transactions in flight finish first). When
/// one does not pause in time, every pooler is resumed and the operation must
/// not go on: its error says which pooler waited on what. A pooler that does not
/// answer at all is skipped with a warning line (its clients cannot reach it
/// either).
pub async fn pause(ep: &Endpoints, bound: Duration) -> Result<(Paused, Vec<String>), Failure> {
    if ep.poolers.is_empty() {
        return Ok((Paused::none(), Vec::new()));
    }
    let outcomes = join_all(ep.poolers.iter().map(|(name, e)| async move {
        let r = async {
            let c = pgbouncer::console(&ep.net, e, CONSOLE).await?;
            command_on(&c, "PAUSE", bound).await.map(|()| c)
        }
        .await;
        (name.clone(), r)
    }))
    .await;
    let mut consoles = Vec::new();
    let mut unreachable = Vec::new();
    let mut slow = Vec::new();
    for (r, o) in outcomes {
        match o {
            Ok(c) => consoles.push((r, c)),
            Err(e) if e.contains("did not complete") => slow.push(format!("{r}: {e}")),
            Err(e) => unreachable.push(format!("{r}: {e}")),
        }
    }
    if !slow.is_empty() {
        let _ = on_all(ep, "RESUME", CONSOLE).await;
        return Err(Failure::error(format!(
            "the poolers did not pause within {}s (a transaction still running through them): {}; \
             they were resumed and nothing was changed; end the long transaction or raise pgbouncer_pause_timeout",
            bound.as_secs(),
            slow.join("; ")
        )));
    }
    Ok((
        Paused {
            consoles,
            since: Instant::now(),
        },
        unreachable,
    ))
}

/// The poolers paused before a planned change of the primary (a switchover, a
/// restart of the leader in place), bounded by pgbouncer_pause_timeout, poolers
/// that do not answer named in a warning. Nothing to pause in session mode (a
/// client keeps its server connection) or without pooling.
pub async fn pause_planned(ctx: &super::Ctx<'_>) -> Result<Paused, Failure> {
    let c = &ctx.inv.cluster;
    if !c.pgbouncer_enabled || c.pgbouncer_pool_mode == "session" {
        return Ok(Paused::none());
    }
    let (paused, unreachable) = pause(
        &ctx.ep,
        Duration::from_secs(c.pgbouncer_pause_timeout.into()),
    )
    .await?;
    for u in unreachable {
        ctx.ui.warn(format!(
            "pooler not paused (its clients will see the change): {u}"
        ));
    }
    Ok(paused)
}

/// Until every pooler lets the application role in (its password looked up in
/// PostgreSQL) and reaches the primary: the proof `deploy` ends with. The role's
/// name and the primary's address, per router.
pub async fn wait_app_through_poolers(
    ctx: &super::Ctx<'_>,
    timeout: Duration,
) -> Result<Vec<(String, String)>, crate::wait::WaitError> {
    let c = &ctx.inv.cluster;
    let mut out = Vec::new();
    for r in ctx.inv.router_hosts() {
        let e = Endpoint {
            host: r.ip.to_string(),
            port: c.pgbouncer_port,
            user: c.app_user.clone(),
            password: ctx.inv.secrets.app_password.expose().to_string(),
            dbname: c.app_database.clone(),
        };
        let primary = crate::wait::until(
            &format!(
                "{} to reach the primary through {}'s pooler",
                c.app_user, r.name
            ),
            timeout,
            || async {
                let client = crate::probe::sql::connect_bounded(&ctx.ep.net, &e, CONSOLE).await?;
                let row = client
                    .query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[])
                    .await
                    .map_err(|x| crate::probe::sql::pg_error(&x))?;
                if row.get::<_, bool>(0) {
                    Err("reached a server in recovery".to_string())
                } else {
                    Ok(row.get::<_, String>(1))
                }
            },
        )
        .await?;
        out.push((r.name.clone(), primary));
    }
    Ok(out)
}
