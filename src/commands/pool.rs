//! `pgha pool show|pause|resume|reconnect`: the poolers (PgBouncer on every router)
//! through their admin consoles, as the inventory's auth user.

use std::time::Duration;

use serde_json::json;

use crate::commands::args::{PoolArgs, PoolCommand};
use crate::commands::{load_inventory, load_pki};
use crate::error::{Exit, Failure};
use crate::inventory::Inventory;
use crate::ops::Ctx;
use crate::ops::pool;
use crate::probe::pgbouncer;
use crate::ui::{OutputFormat, Ui};

pub async fn command(args: PoolArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inventory = match &args.command {
        PoolCommand::Show(a) | PoolCommand::Resume(a) | PoolCommand::Reconnect(a) => &a.inventory,
        PoolCommand::Pause(a) => &a.inventory,
    };
    let inv = load_inventory(inventory, false)?;
    if !inv.cluster.pgbouncer_enabled {
        return Err(Failure::error(format!(
            "{}: pgbouncer_enabled is false, so this cluster has no pooler; set it to true and run `pgha deploy`",
            inv.path.display()
        )));
    }
    inv.require_secrets().map_err(Failure::error)?;
    let ui = Ui::new(output);
    let pki = load_pki(&inv, false)?;
    let ctx = Ctx::new(&inv, pki, &ui);
    match args.command {
        PoolCommand::Show(_) => show(&ctx, &ui).await,
        PoolCommand::Pause(a) => {
            let secs = a
                .timeout
                .unwrap_or(inv.cluster.pgbouncer_pause_timeout.into());
            // Left paused on purpose: `resume` ends it.
            let (_paused, unreachable) = pool::pause(&ctx.ep, Duration::from_secs(secs)).await?;
            let ok = unreachable.is_empty();
            let routers = inv.router_hosts();
            let lines = routers.iter().map(|r| {
                match unreachable
                    .iter()
                    .find(|u| u.starts_with(&format!("{}: ", r.name)))
                {
                    Some(u) => (u.clone(), false),
                    None => (format!("{}: paused", r.name), true),
                }
            });
            act(&ui, &inv, "PAUSE", lines);
            if !ui.json() {
                ui.line("clients of the pooled port wait until `pgha pool resume`");
            }
            Ok(if ok { Exit::Ok } else { Exit::HostFailed })
        }
        PoolCommand::Resume(_) => run_all(&ctx, &ui, &inv, "RESUME").await,
        PoolCommand::Reconnect(_) => run_all(&ctx, &ui, &inv, "RECONNECT").await,
    }
}

async fn run_all(ctx: &Ctx<'_>, ui: &Ui, inv: &Inventory, cmd: &str) -> Result<Exit, Failure> {
    let outcomes = pool::on_all(&ctx.ep, cmd, Duration::from_secs(5)).await;
    let ok = outcomes.iter().all(|(_, o)| o.is_ok());
    act(
        ui,
        inv,
        cmd,
        outcomes.into_iter().map(|(r, o)| match o {
            Ok(()) => (format!("{r}: done"), true),
            Err(e) => (format!("{r}: {e}"), false),
        }),
    );
    Ok(if ok { Exit::Ok } else { Exit::HostFailed })
}

fn act(ui: &Ui, inv: &Inventory, cmd: &str, lines: impl Iterator<Item = (String, bool)>) {
    let lines: Vec<(String, bool)> = lines.collect();
    if ui.json() {
        println!(
            "{}",
            json!({
                "cluster": inv.cluster.cluster_name,
                "command": cmd,
                "ok": lines.iter().all(|(_, ok)| *ok),
                "routers": lines.iter().map(|(l, ok)| json!({"line": l, "ok": ok})).collect::<Vec<_>>(),
            })
        );
        return;
    }
    ui.line(format!("{cmd} on {} pooler(s)", inv.router_hosts().len()));
    for (l, ok) in lines {
        if ok {
            ui.line(format!("  {l}"));
        } else {
            ui.warn(l);
        }
    }
}

async fn show(ctx: &Ctx<'_>, ui: &Ui) -> Result<Exit, Failure> {
    let all = pool::show(&ctx.ep).await;
    let ok = all.iter().all(|(_, r)| r.is_ok());
    if ui.json() {
        let doc: Vec<_> = all
            .iter()
            .map(|(r, p)| match p {
                Ok(v) => {
                    let (clients, waiting, servers) = pgbouncer::totals(&v.pools);
                    json!({"router": r, "paused": v.paused, "clients": clients, "waiting": waiting, "servers": servers, "pools": v.pools})
                }
                Err(e) => json!({"router": r, "error": e}),
            })
            .collect();
        println!("{}", json!({"ok": ok, "poolers": doc}));
    } else {
        for (r, p) in &all {
            match p {
                Ok(v) => {
                    let (clients, waiting, servers) = pgbouncer::totals(&v.pools);
                    let paused = if v.paused { "PAUSED, " } else { "" };
                    ui.line(format!(
                        "{r}: {paused}{clients} client(s), {waiting} waiting, {servers} server connection(s)"
                    ));
                    for p in &v.pools {
                        ui.line(format!(
                            "  {}/{} ({}): clients {} active {} waiting (oldest {}s), servers {} active {} idle {} used",
                            p.database,
                            p.user,
                            p.pool_mode,
                            p.cl_active,
                            p.cl_waiting,
                            p.maxwait,
                            p.sv_active,
                            p.sv_idle,
                            p.sv_used
                        ));
                    }
                }
                Err(e) => ui.warn(format!("{r}: {e}")),
            }
        }
    }
    Ok(if ok { Exit::Ok } else { Exit::HostFailed })
}
