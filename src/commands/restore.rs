//! `pgha restore --time T | --lsn L | --latest | --resume`: point-in-time recovery
//! of the whole cluster from its pgBackRest repository, in place or onto bare hosts
//! named in the inventory. First what is checked and shown before any change (the
//! target inside the recovery window, the member restored, the steps), a
//! confirmation, the cluster lock; then the steps of `ops::restore`, each recorded
//! on the repository's host so that `--resume` finishes an interrupted run.

use std::time::Instant;

use serde_json::json;

use crate::commands::args::RestoreArgs;
use crate::commands::{confirm_by_name, finish, load_inventory, load_pki, ssh_options};
use crate::error::{Exit, Failure};
use crate::ops::Ctx;
use crate::ops::backup::{self, now};
use crate::ops::gap;
use crate::ops::lock::ClusterLock;
use crate::ops::restore::{self as ops, Report, Restore};
use crate::ops::restore_plan::{self as plan, Record, Target};
use crate::probe::etcd;
use crate::ui::{OutputFormat, Ui};

pub async fn command(args: RestoreArgs, output: OutputFormat) -> Result<Exit, Failure> {
    // The target first: a malformed one is refused before anything is read.
    let target = if let Some(t) = &args.time {
        Some(plan::parse_time(t).map_err(Failure::options)?)
    } else if let Some(l) = &args.lsn {
        Some(plan::parse_lsn(l).map_err(Failure::options)?)
    } else if args.latest {
        Some(Target::Latest)
    } else {
        None
    };
    let inv = load_inventory(&args.inventory, !args.check)?;
    if inv.backup_host().is_none() {
        return Err(Failure::new(
            Exit::Inventory,
            format!(
                "{}: backups are off for this cluster (backup_enabled: false): there is no \
                 repository to restore from",
                inv.path.display()
            ),
        ));
    }
    inv.require_secrets().map_err(Failure::error)?;
    let pki = load_pki(&inv, !args.check)?;
    let ui = Ui::new(output);
    let mut ctx = Ctx::new(&inv, pki, &ui);
    let ssh = ssh_options(&args.ssh, &inv);
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        run(&ctx, &args, target).await
    }
    .await;
    ctx.close().await;
    finish(&inv, &ui, result, !args.check)
}

async fn run(ctx: &Ctx<'_>, args: &RestoreArgs, target: Option<Target>) -> Result<Exit, Failure> {
    let c = &ctx.inv.cluster;
    let repo = backup::repository_host(ctx)?;
    let s = ctx.session(&repo)?;
    let existing = ops::read_record(s, c).await?;
    let record = match (target, existing) {
        (None, None) => {
            return Err(Failure::options(format!(
                "--resume: no restore of {} is in progress (no record on {repo}); nothing was changed",
                c.cluster_name
            )));
        }
        (None, Some(r)) => r,
        (Some(_), Some(r)) => {
            return Err(Failure::error(format!(
                "a restore of {} to {} started at {} was interrupted after step {:?}; nothing \
                 was changed now. Finish it with `pgha restore {} --resume`",
                c.cluster_name,
                r.target.describe(),
                crate::ops::backup_info::utc(r.started),
                r.step,
                ctx.inv.path.display()
            )));
        }
        (Some(t), None) => {
            let info = backup::info(s, c).await?;
            plan::check_window(&t, &info.backups, now()).map_err(|e| {
                Failure::options(format!("restore refused, nothing was changed: {e}"))
            })?;
            let (member, leader) = ops::choose_member(ctx).await;
            ops::new_record(t, member, leader)
        }
    };
    show(ctx, &record, &repo, args.resume, args.check);
    if args.check {
        if ctx.ui.json() {
            println!("{}", json!({"check": true, "restore": record}));
        }
        return Ok(Exit::Ok);
    }
    confirm_by_name(
        &ctx.inv.cluster.cluster_name,
        args.yes,
        "replaces the data of",
        "restore",
    )?;
    let etcd_up = etcd::probe(&ctx.ep.net, &ctx.ep.etcd).await.any_healthy();
    let mut lock = ClusterLock::acquire(ctx, "pgha restore", etcd_up, args.lock.duration()).await?;
    let started = Instant::now();
    let ep = &ctx.ep;
    let probes = gap::start_all(
        &ep.net,
        ep.routers
            .iter()
            .map(|(_, ip)| ep.router_port(ip, ep.write_port))
            .collect(),
    );
    let result = async {
        if record.step == plan::Step::Started {
            if let Some(l) = &record.old_leader {
                ops::mark_now(ctx, l).await?;
            }
            ops::write_record(ctx.session(&repo)?, c, &record).await?;
        }
        let mut r = Restore {
            ctx,
            repo: repo.clone(),
            record: record.clone(),
        };
        r.run(&mut lock).await.map(|l| (l, r.record))
    }
    .await;
    let gap = gap::stop_all(probes).await;
    lock.release(ctx).await;
    let (leader, done) = result.map_err(|f| {
        Failure::new(
            f.exit,
            format!(
                "{}\nThe restore stopped; what it did is recorded on {repo}: `pgha restore {} --resume` goes on from there",
                f.message,
                ctx.inv.path.display()
            ),
        )
    })?;
    let report = Report {
        target: done.target.describe(),
        member: done.member.clone(),
        leader,
        backup: done.backup.clone(),
        aside_removed: done.aside.clone(),
        gap,
        took_secs: started.elapsed().as_secs_f64(),
    };
    print_report(ctx, &report);
    Ok(Exit::Ok)
}

fn show(ctx: &Ctx<'_>, r: &Record, repo: &str, resume: bool, check: bool) {
    let ui = &ctx.ui;
    let c = &ctx.inv.cluster;
    ui.line("");
    ui.line(format!(
        "RESTORE cluster {} to {}{}{}",
        c.cluster_name,
        r.target.describe(),
        if resume {
            format!(" (resuming after step {:?})", r.step)
        } else {
            String::new()
        },
        if check {
            " (--check: nothing is changed)"
        } else {
            ""
        }
    ));
    let db = ctx.db_hosts().join(", ");
    let steps = [
        format!(
            "stop Patroni on {db} (the replicas first), the leader's last WAL to the repository on {repo}"
        ),
        format!(
            "keep every data directory aside as {} until the restored cluster is verified",
            plan::aside_dir(c, &r.id)
        ),
        "clear the cluster's state in etcd".into(),
        format!(
            "restore on {} and replay WAL up to the target, promote",
            r.member
        ),
        format!(
            "Patroni on {} leads; a new full backup; the other members cloned from it",
            r.member
        ),
        "verify the cluster; remove what was kept aside".into(),
    ];
    for (i, s) in steps.iter().enumerate() {
        ui.line(format!("  {}. {s}", i + 1));
    }
    ui.line("Writes after the target are discarded; clients are cut off until the restored leader runs.");
}

fn print_report(ctx: &Ctx<'_>, r: &Report) {
    let ui = &ctx.ui;
    ui.line("");
    ui.line(format!(
        "Cluster {} restored to {} in {:.1}s: {} leads{}.",
        ctx.inv.cluster.cluster_name,
        r.target,
        r.took_secs,
        r.leader,
        r.backup
            .as_deref()
            .map(|b| format!(", new full backup {b}"))
            .unwrap_or_default()
    ));
    match &r.gap {
        Some(g) if g.no_gap() => ui.line("  write gap on the write port: none"),
        Some(g) => ui.line(format!("  write gap on the write port: {}", g.summary())),
        None => ui.line("  write gap: not measured (no router)"),
    }
    if !r.aside_removed.is_empty() {
        ui.line(format!(
            "  the data kept aside on {} was removed (the restored cluster is verified)",
            r.aside_removed.join(", ")
        ));
    }
    if ui.json() {
        println!("{}", json!({"ok": true, "restore": r}));
    }
}
