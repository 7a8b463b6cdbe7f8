//! Patroni's dynamic configuration changed: one PATCH through the leader, then
//! every member has run its HA loop since (Patroni applies a change, and flags
//! pending restarts, in that loop). Used by deploy and by the switchover.

use std::time::Duration;

use serde_json::Value;

use super::run::{Ctx, now_secs};
use crate::error::Failure;
use crate::probe::patroni;
use crate::wait::until;

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
