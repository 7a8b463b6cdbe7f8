//! `pgha restart`: PostgreSQL restarted on members through Patroni, one at a time,
//! in the order PostgreSQL requires: normally the replicas first and the leader
//! after a switchover; the leader first, in place, when a parameter that standbys
//! must hold at least at the primary's value waits to be lowered. The write gap is
//! measured on the routers' write port either way.

use serde_json::json;

use crate::commands::args::RestartArgs;
use crate::commands::{load_inventory, load_pki, under_lock};
use crate::error::{Exit, Failure};
use crate::ops::Ctx;
use crate::ops::patroni::{self as actions, RestartReport};
use crate::probe::patroni;
use crate::ui::{OutputFormat, Ui};

pub async fn command(args: RestartArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, false)?;
    let db: Vec<String> = inv.db_hosts().iter().map(|h| h.name.clone()).collect();
    if let Some(h) = args.member.iter().find(|h| !db.contains(h)) {
        return Err(Failure::options(format!(
            "--member {h}: not a db host of the inventory (db hosts: {}); nothing was changed",
            db.join(", ")
        )));
    }
    inv.require_secrets().map_err(Failure::error)?;
    let ui = Ui::new(output);
    let pki = load_pki(&inv, false)?;
    let ctx = Ctx::new(&inv, pki, &ui);
    let report = under_lock(
        &ctx,
        "pgha restart",
        args.lock.duration(),
        run(&ctx, &args, &db),
    )
    .await?;
    print(&ui, &report);
    Ok(Exit::Ok)
}

async fn run(ctx: &Ctx<'_>, args: &RestartArgs, db: &[String]) -> Result<RestartReport, Failure> {
    let view = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .map_err(Failure::error)?;
    let named: Vec<String> = if args.rolling {
        db.to_vec()
    } else {
        args.member.clone()
    };
    let members: Vec<String> = named
        .into_iter()
        .filter(|h| !args.pending || view.member(h).is_some_and(|m| m.pending_restart))
        .collect();
    let phase = ctx.ui.phase("restart");
    if members.is_empty() {
        phase.done("no member waits for a restart");
        return Ok(RestartReport::default());
    }
    let report = actions::restart_in_order(ctx, &members, false).await?;
    phase.done(format!("restarted {}", report.restarted.join(", ")));
    Ok(report)
}

fn print(ui: &Ui, r: &RestartReport) {
    if r.restarted.is_empty() {
        ui.line("Nothing restarted.");
    } else {
        ui.line(format!("Restarted, in order: {}.", r.restarted.join(", ")));
    }
    if let Some(s) = &r.switchover {
        let gap = s
            .gap
            .as_ref()
            .map_or("not measured (no router served writes)".to_string(), |g| {
                g.summary()
            });
        ui.line(format!(
            "  switchover {} -> {} before restarting {}; write gap {gap}",
            s.from, s.to, s.from
        ));
    }
    if let Some(g) = &r.leader_in_place {
        let gap = g
            .as_ref()
            .map_or("not measured (no router served writes)".to_string(), |g| {
                g.summary()
            });
        ui.line(format!(
            "  the leader restarted in place first; write gap {gap}"
        ));
    }
    if ui.json() {
        println!("{}", json!({"ok": true, "restart": r}));
    }
}
