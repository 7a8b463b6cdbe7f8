//! Patroni actions, one function each: member restart, rolling restart,
//! pause/resume, tag changes (drain, undrain), and the wait for members to apply a
//! dynamic configuration change. The switchover is `ops::switchover`. Every command
//! that needs one of these calls it here; none has its own copy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::run::{Ctx, host_failed};
use super::switchover::{MEMBER, SwitchoverOpts, SwitchoverReport, TAKEOVER, switchover};
use super::waits;
use crate::engine::apply;
use crate::engine::desired;
use crate::engine::roles::Library;
use crate::error::Failure;
use crate::probe::patroni::{self};
use crate::wait::until;

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

/// Restart `members` in the order PostgreSQL requires (`rolling_restart`), the
/// order chosen from what waits on the leader (`lowered_on_leader`) and shown on
/// the current phase.
pub async fn restart_in_order(
    ctx: &Ctx<'_>,
    members: &[String],
    only_pending: bool,
) -> Result<RestartReport, Failure> {
    let lowered = lowered_on_leader(ctx).await?;
    let how = if lowered.is_empty() {
        String::new()
    } else {
        format!(
            ", the leader first ({} lowered: standbys must not run below the primary)",
            lowered.join(", ")
        )
    };
    ctx.ui
        .host("cluster", format!("restarting {}{how}", members.join(", ")));
    rolling_restart(ctx, members, !lowered.is_empty(), only_pending).await
}

/// What a rolling restart did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestartReport {
    /// Members restarted, in order.
    pub restarted: Vec<String>,
    /// The leader handed over before its own restart (raising, or no order needed).
    pub switchover: Option<SwitchoverReport>,
    /// The leader restarted in place first (lowering a parameter standbys must
    /// match): the write gap measured on the routers meanwhile.
    pub leader_in_place: Option<Option<super::gap::Gap>>,
}

/// Restart the members in `pending` in the order PostgreSQL requires, without
/// losing the write port for longer than needed. Normally replicas one at a time
/// (each streaming again before the next), then the leader after a switchover to
/// a caught-up standby, restarted as a replica. With `leader_first` (a parameter
/// that standbys must hold at least at the primary's value is lowered), the
/// leader restarts in place first, the write gap measured, then the replicas.
/// `only_pending`: the old leader is restarted after the switchover only if it
/// still waits for a restart (a deploy's parameter change); otherwise always.
pub async fn rolling_restart(
    ctx: &Ctx<'_>,
    pending: &[String],
    leader_first: bool,
    only_pending: bool,
) -> Result<RestartReport, Failure> {
    let db = ctx.db_hosts();
    let view = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .map_err(Failure::error)?;
    let leader = view
        .leader()
        .map(|l| l.name.clone())
        .ok_or_else(|| Failure::error(format!("no leader: {}", view.summary())))?;
    let mut report = RestartReport::default();
    if leader_first && pending.contains(&leader) {
        let routers = super::switchover::serving_routers(ctx).await;
        let probes = super::gap::start_all(&ctx.ep.net, routers.clone());
        // Pooled clients wait through the restart: resumed once every write port
        // reaches the leader again (bounded, and on any error).
        let paused = super::pool::pause_planned(ctx).await?;
        // Ok(Some(last)): the write ports did not reach it within the pause's
        // bound; what they answered last.
        let r = async {
            restart_member(ctx, &leader).await?;
            if paused.is_empty() {
                return Ok(None);
            }
            let until = std::time::Instant::now() + super::switchover::POOLER_PAUSE_MAX;
            Ok(super::follow::routers_reach(ctx, &leader, &routers, until)
                .await
                .err())
        }
        .await;
        let late = match &r {
            Ok(Some(last)) => Some(format!("the leader restarted in place ({last})")),
            _ => None,
        };
        let was_paused = !paused.is_empty();
        super::switchover::resume(ctx, &leader, paused, late.as_deref()).await;
        // Resumed (on the write ports, the bound or an error): the whole proof.
        let r = match r {
            Ok(_) if was_paused => {
                super::switchover::writes_reach(ctx, &leader, &leader, &routers).await
            }
            other => other.map(|_| ()),
        };
        let gap = super::gap::stop_all(probes).await;
        r?;
        if let Some(g) = &gap {
            ctx.ui.host(
                &leader,
                format!("restarted in place first; write gap {}", g.summary()),
            );
        }
        report.restarted.push(leader.clone());
        report.leader_in_place = Some(gap);
        waits::wait_patroni_healthy(&ctx.ep, &db, MEMBER).await?;
    }
    for h in pending.iter().filter(|h| **h != leader) {
        if leader_first && !pending.contains(&leader) {
            // The primary still runs the higher value: Patroni starts the standby
            // with it, and the lower one waits for the leader's restart.
            if !restart_until_applied(ctx, h, &leader, 1).await? {
                ctx.ui.warn(format!(
                    "{h} runs the primary's higher value until the leader {leader} restarts: \
                     `pgha restart --member {leader}`, then {h} again"
                ));
            }
        } else if leader_first {
            // Patroni starts a standby with the primary's higher value until the
            // standby has replayed the change: restart it again until it applies.
            if !restart_until_applied(ctx, h, &leader, 3).await? {
                return Err(host_failed(format!(
                    "{h}: still a pending restart after 3 restarts (Patroni keeps starting it \
                     with the primary's value)"
                )));
            }
        } else {
            restart_member(ctx, h).await?;
        }
        report.restarted.push(h.clone());
        waits::wait_patroni_healthy(&ctx.ep, &db, MEMBER).await?;
    }
    if pending.contains(&leader) && !report.restarted.contains(&leader) {
        let r = switchover(
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
            format!("switched over to {} before restarting it", r.to),
        );
        report.switchover = Some(r);
        let still = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
            .await
            .map_err(Failure::error)?
            .member(&leader)
            .is_some_and(|m| m.pending_restart);
        if still || !only_pending {
            restart_member(ctx, &leader).await?;
            waits::wait_patroni_healthy(&ctx.ep, &db, MEMBER).await?;
            report.restarted.push(leader.clone());
        }
    }
    Ok(report)
}

/// The parameters that standbys must hold at least at the primary's value and that
/// wait, on the leader, for a restart to a lower value (its restart must come
/// first): from Patroni's `pending_restart_reason` (old and new value of each).
pub async fn lowered_on_leader(ctx: &Ctx<'_>) -> Result<Vec<String>, Failure> {
    let leader = waits::wait_leader(&ctx.ep, None, TAKEOVER).await?;
    let st = patroni::status(&ctx.ep.net, &ctx.api(&leader))
        .await
        .map_err(|e| Failure::error(format!("{leader}: Patroni's status: {e}")))?;
    Ok(lowered_in_reason(&st["pending_restart_reason"]))
}

/// `lowered_shared_memory` of a Patroni `pending_restart_reason`
/// (`{name: {old_value, new_value}}`). Pure.
pub fn lowered_in_reason(reason: &Value) -> Vec<String> {
    let Some(m) = reason.as_object() else {
        return Vec::new();
    };
    let side = |k: &str| -> BTreeMap<String, Value> {
        m.iter()
            .map(|(name, v)| (name.clone(), v[k].clone()))
            .collect()
    };
    crate::engine::plan::lowered_shared_memory(&side("old_value"), &side("new_value"))
}

/// Restart a standby until it runs with no pending restart, at most `attempts`
/// times, each after it streams from `leader` again (so it has replayed the
/// primary's new settings). Whether it applied them.
async fn restart_until_applied(
    ctx: &Ctx<'_>,
    host: &str,
    leader: &str,
    attempts: u32,
) -> Result<bool, Failure> {
    let api = ctx.api(host);
    for _ in 0..attempts {
        waits::wait_member_streaming(&ctx.ep, host, leader, MEMBER).await?;
        ctx.ensure_locked(&format!("{host}: restart PostgreSQL"))
            .await?;
        patroni::restart(&ctx.ep.net, &api, &ctx.inv.secrets.patroni_api_password)
            .await
            .map_err(|e| host_failed(format!("{host}: restart PostgreSQL: {e}")))?;
        ctx.ui.changed(host, 1);
        let st = until(&format!("{host} to run again"), MEMBER, || async {
            let st = patroni::status(&ctx.ep.net, &api).await?;
            if st["state"] == "running" {
                Ok(st)
            } else {
                Err(format!("state {}", st["state"]))
            }
        })
        .await?;
        ctx.ui.host(host, "PostgreSQL restarted");
        if st["pending_restart"] != true {
            return Ok(true);
        }
    }
    Ok(false)
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

/// Whether pgha's record says it paused the cluster (a run that stopped before it
/// resumed it); an operator's own pause is not in it.
pub async fn paused_by_pgha(ctx: &Ctx<'_>) -> Result<bool, Failure> {
    Ok(super::marks::read(ctx).await?.paused)
}

/// Work on Patroni itself, member by member in `hosts`, with PostgreSQL left
/// running: the cluster is paused first (a paused Patroni neither stops PostgreSQL
/// when it exits nor restarts it when it starts, and no member fails over
/// meanwhile), resumed once `each` is done on every member, then every member is
/// healthy again. A failure leaves the cluster paused, recorded as pgha's: resuming
/// while a primary's Patroni is not back could fail over away from a PostgreSQL
/// that still takes writes.
pub async fn under_pause<F, Fut>(
    ctx: &Ctx<'_>,
    hosts: &[String],
    mut each: F,
) -> Result<(), Failure>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    set_pause(ctx, true).await?;
    for h in hosts {
        each(h.clone()).await?;
        if crate::testpoint::fail_once("patroni:under-pause") {
            return Err(Failure::error(format!(
                "stopped after {h} (PGHA_FAIL_ONCE=patroni:under-pause); the cluster stays paused"
            )));
        }
    }
    set_pause(ctx, false).await?;
    waits::wait_patroni_healthy(&ctx.ep, &ctx.db_hosts(), MEMBER).await?;
    Ok(())
}

/// Restart Patroni on a member of a paused cluster (`under_pause`), then wait until
/// it answers again with PostgreSQL running. Says whether PostgreSQL kept running
/// (its postmaster's start time unchanged), which a paused restart promises.
pub async fn restart_paused(ctx: &Ctx<'_>, h: &str, script: String) -> Result<(), Failure> {
    let api = ctx.api(h);
    let started = |st: &Value| st["postmaster_start_time"].as_str().map(str::to_string);
    let before = patroni::status(&ctx.ep.net, &api)
        .await
        .ok()
        .and_then(|st| started(&st));
    ctx.run_on(h, "restart Patroni", script).await?;
    let after = until(
        &format!("Patroni on {h} to answer again with PostgreSQL running"),
        MEMBER,
        || async {
            let st = patroni::status(&ctx.ep.net, &api).await?;
            if st["state"] == "running" {
                Ok(started(&st))
            } else {
                Err(format!("PostgreSQL {}", st["state"]))
            }
        },
    )
    .await?;
    ctx.ui.changed(h, 1);
    ctx.ui.host(
        h,
        match (before, after) {
            (Some(b), Some(a)) if a == b => "Patroni restarted (PostgreSQL kept running)",
            (Some(_), Some(_)) => "Patroni restarted (PostgreSQL was restarted too)",
            // Its start time was not read before or after: nothing to say.
            _ => "Patroni restarted",
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
    let reload = desired::desired_state_with(ctx.inv, &lib, &inputs)
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

    #[test]
    fn a_lowered_value_in_patronis_pending_restart_reason_is_found() {
        let reason = json!({
            "max_connections": {"old_value": "200", "new_value": "100"},
            "max_wal_senders": {"old_value": "10", "new_value": "12"},
            "shared_buffers": {"old_value": "128MB", "new_value": "64MB"}
        });
        assert_eq!(lowered_in_reason(&reason), ["max_connections"]);
        assert!(lowered_in_reason(&Value::Null).is_empty());
        let raised = json!({"max_connections": {"old_value": "100", "new_value": "200"}});
        assert!(lowered_in_reason(&raised).is_empty());
    }
}
