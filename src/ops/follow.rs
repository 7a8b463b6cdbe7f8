//! The routers' write ports following a leader that changed (or restarted) while a
//! planned operation watches: each router's write port is probed until it reaches
//! the new leader. Where pgha holds an SSH session to a router, it does not wait
//! for HAProxy's next check of a server it holds DOWN (`downinter`, up to 250 ms):
//! as soon as Patroni answers `/primary` on the new leader as HAProxy's own check
//! wants it (200, and PostgreSQL out of recovery), pgha marks that server UP
//! through HAProxy's runtime API and reads back that it alone runs.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use super::run::Ctx;
use crate::probe::haproxy::{self, ADMIN_SOCKET, WRITE_PROXY};
use crate::probe::{Net, sql};
use crate::ssh::Session;

/// How often the write ports are probed, and Patroni asked, meanwhile.
const EVERY: Duration = Duration::from_millis(20);
/// Bound of one runtime API request.
const RUNTIME_API: Duration = Duration::from_secs(2);

/// Every router's write port reaches `leader` out of recovery, which is all a
/// pooled client needs. The routers are probed at once and often (a failed probe
/// is one refused connection), without waiting for Patroni's view first; a
/// router pgha marked the leader UP on (see the module's note) counts as reached
/// once HAProxy says the leader alone runs there. Gives up at `until` with what
/// each router that had not reached it last answered.
pub async fn routers_reach(
    ctx: &Ctx<'_>,
    leader: &str,
    routers: &[sql::Endpoint],
    until: Instant,
) -> Result<(), String> {
    let leader_ip = ctx
        .inv
        .host(leader)
        .map(|h| h.ip.to_string())
        .unwrap_or_default();
    let flags: Vec<Router> = routers
        .iter()
        .map(|ep| Router {
            flag: watch::channel(false).0,
            session: router_session(ctx, &ep.host),
        })
        .collect();
    let probes = futures_util::future::join_all(routers.iter().zip(&flags).map(|(ep, r)| {
        probe(
            &ctx.ep.net,
            ep,
            &leader_ip,
            leader,
            r.flag.subscribe(),
            until,
        )
    }));
    // Done forcing (or unable to): the probes, flagged or not, decide. Probes
    // done first: the forcing is dropped (its Patroni requests run as tasks).
    let forced = force(ctx, leader, &flags, until);
    tokio::pin!(probes, forced);
    let last = tokio::select! {
        last = &mut probes => last,
        () = &mut forced => probes.await,
    };
    let last: Vec<String> = last.into_iter().flatten().collect();
    if last.is_empty() {
        Ok(())
    } else {
        Err(last.join("; "))
    }
}

/// One router as the forcing sees it: a flag raised once HAProxy there routes to
/// the leader alone, and its name with pgha's SSH session to it, when the run
/// holds one.
struct Router {
    flag: watch::Sender<bool>,
    session: Option<(String, Session)>,
}

/// The router's name and pgha's SSH session to it, when the run holds one.
fn router_session(ctx: &Ctx<'_>, router_ip: &str) -> Option<(String, Session)> {
    let name = ctx
        .inv
        .router_hosts()
        .into_iter()
        .find(|h| h.ip.to_string() == router_ip)?
        .name
        .clone();
    let s = ctx.session(&name).ok()?.clone();
    Some((name, s))
}

/// One router's write port until it reaches `leader` (None) or `until` (what it
/// answered last), or its flag says HAProxy there routes to the leader alone.
/// Each probe runs as its own task: one given up on is not cut half-way.
async fn probe(
    net: &Net,
    ep: &sql::Endpoint,
    leader_ip: &str,
    leader: &str,
    mut forced: watch::Receiver<bool>,
    until: Instant,
) -> Option<String> {
    loop {
        let attempt = tokio::spawn(write_port_primary(net.clone(), ep.clone()));
        let last = tokio::select! {
            r = attempt => match r {
                Ok(Ok(addr)) if addr == leader_ip => return None,
                Ok(Ok(addr)) => format!("{}:{} reached {addr}", ep.host, ep.port),
                Ok(Err(e)) => e,
                Err(e) => format!("{}:{}: the probe failed: {e}", ep.host, ep.port),
            },
            Ok(_) = forced.wait_for(|f| *f) => return None,
        };
        tracing::debug!("waiting for the write ports to reach {leader}: {last}");
        if Instant::now() >= until {
            return Some(last);
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            Ok(_) = forced.wait_for(|f| *f) => return None,
        }
    }
}

/// Which server a router's write port reaches: the address of a primary, or why not.
pub(super) async fn write_port_primary(net: Net, ep: sql::Endpoint) -> Result<String, String> {
    let c = sql::connect_bounded(&net, &ep, Duration::from_secs(2)).await?;
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

/// Once Patroni answers `/primary` on `leader` as HAProxy's check wants it, mark
/// the leader UP on every router pgha holds a session to, and raise the router's
/// flag where HAProxy then says the leader alone runs. Routers where that cannot
/// be done (a login user outside the haproxy group, another server still
/// running) are left to their probes. Returns when done, or at `until`.
async fn force(ctx: &Ctx<'_>, leader: &str, routers: &[Router], until: Instant) {
    let sessions: Vec<(&watch::Sender<bool>, &String, &Session)> = routers
        .iter()
        .filter_map(|r| r.session.as_ref().map(|(n, s)| (&r.flag, n, s)))
        .collect();
    let Some(api) = ctx.ep.api_of(leader).map(str::to_string) else {
        return;
    };
    if sessions.is_empty() {
        return;
    }
    loop {
        if Instant::now() >= until {
            return;
        }
        if serves_writes(&ctx.ep.net, &api).await {
            break;
        }
        tokio::time::sleep(EVERY).await;
    }
    let request = haproxy::force_up_request(WRITE_PROXY, leader);
    futures_util::future::join_all(sessions.iter().map(|(flag, name, s)| {
        let request = request.as_bytes();
        async move {
            loop {
                let servers = async {
                    let answer = s
                        .unix_socket(ADMIN_SOCKET, request, RUNTIME_API)
                        .await
                        .map_err(|e| e.to_string())?;
                    haproxy::parse_servers_state(&String::from_utf8_lossy(&answer), WRITE_PROXY)
                }
                .await;
                let servers = match servers {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(
                            "{name}: HAProxy's runtime API not used, its checks decide ({e})"
                        );
                        return;
                    }
                };
                // The old leader may still count as running for a check or two
                // (Patroni answered /primary until it released its key): the
                // write port follows only once it is out, so ask again.
                match haproxy::serves_alone(&servers, leader) {
                    Ok(()) => {
                        let _ = flag.send(true);
                        ctx.ui.host(
                            name.as_str(),
                            format!(
                                "write port set to {leader} as soon as Patroni named it primary"
                            ),
                        );
                        return;
                    }
                    Err(e) if Instant::now() >= until => {
                        tracing::debug!("{name}: {e}; its checks decide");
                        return;
                    }
                    Err(e) => tracing::debug!("{name}: {e}; asking again"),
                }
                tokio::time::sleep(EVERY).await;
            }
        }
    }))
    .await;
}

/// Whether Patroni on `api` answers `/primary` as the write port's check wants it:
/// 200, with PostgreSQL's role primary (a member still finishing its promotion
/// holds the lock and answers 200 with another role). The request runs as its
/// own task, so a caller that gives up does not cut it half-way (Patroni logs a
/// traceback for every connection closed under it).
async fn serves_writes(net: &Net, api: &str) -> bool {
    let (net, url) = (net.clone(), format!("{api}/primary"));
    let ask = tokio::spawn(async move {
        let resp = net
            .get(&url, crate::probe::PROBE_TIMEOUT)
            .send()
            .await
            .ok()?;
        let ok = resp.status() == reqwest::StatusCode::OK;
        let body: Value = resp.json().await.ok()?;
        Some(ok && body.get("role").and_then(Value::as_str) == Some("primary"))
    });
    matches!(ask.await, Ok(Some(true)))
}
