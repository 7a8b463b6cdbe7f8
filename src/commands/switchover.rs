//! `pgha switchover`: hand the leader role to a caught-up standby, with the write
//! gap clients saw measured on the routers' write port.

use std::time::Duration;

use serde_json::json;

use crate::commands::args::SwitchoverArgs;
use crate::commands::{load_inventory, load_pki, ssh_options, under_lock};
use crate::error::{Exit, Failure};
use crate::ops::Ctx;
use crate::ops::switchover::{self as actions, SwitchoverOpts, SwitchoverReport};
use crate::ui::OutputFormat;
use crate::ui::Ui;

pub async fn command(args: SwitchoverArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, false)?;
    if let Some(to) = &args.to
        && !inv.db_hosts().iter().any(|h| h.name == *to)
    {
        let db: Vec<&str> = inv.db_hosts().iter().map(|h| h.name.as_str()).collect();
        return Err(Failure::options(format!(
            "--to {to}: not a db host of the inventory (db hosts: {}); nothing was changed",
            db.join(", ")
        )));
    }
    inv.require_secrets().map_err(Failure::error)?;
    let ui = Ui::new(output);
    let pki = load_pki(&inv, false)?;
    let mut ctx = Ctx::new(&inv, pki, &ui);
    // Only to point the routers' write ports at the new leader sooner: a router
    // that cannot be reached is left to HAProxy's own checks.
    let routers = ctx.router_hosts();
    for (host, why) in ctx
        .connect_quietly_all(&ssh_options(&args.ssh, &inv), &routers)
        .await
    {
        ui.warn(format!(
            "{host}: no SSH session ({why}); HAProxy's own checks will point its write \
             port at the new leader (up to haproxy_check_downinter later)"
        ));
    }
    let opts = SwitchoverOpts {
        to: args.to.clone(),
        max_lag: args
            .max_lag
            .unwrap_or(inv.cluster.patroni_maximum_lag_on_failover),
        candidate_wait: Duration::ZERO,
    };
    let phase = ui.phase("switchover");
    let report = under_lock(
        &ctx,
        "pgha switchover",
        args.lock.duration(),
        actions::switchover(&ctx, &opts),
    )
    .await;
    ctx.close().await;
    let report = report?;
    phase.done(format!("{} -> {}", report.from, report.to));
    print(&ui, &report);
    Ok(Exit::Ok)
}

fn print(ui: &Ui, r: &SwitchoverReport) {
    ui.line(format!(
        "{} is the leader; {} streams from it again ({:.1}s after the request).",
        r.to, r.from, r.took_secs
    ));
    if let Some(c) = r.checkpoint_secs {
        ui.line(format!(
            "  CHECKPOINT on {} before the switchover: {c:.2}s",
            r.from
        ));
    }
    match &r.gap {
        Some(g) => ui.line(format!(
            "  write gap on the routers' write port (probed every 100 ms): {}",
            g.summary()
        )),
        None => {
            ui.line("  write gap: not measured (no router served writes before the switchover)")
        }
    }
    if let Some(p) = r.pooler_pause_secs {
        ui.line(format!(
            "  pooled write port: clients paused {p:.2}s (waited, no error)"
        ));
    }
    if ui.json() {
        println!("{}", json!({"ok": true, "switchover": r}));
    }
}
