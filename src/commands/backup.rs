//! `pgha backup run|list|verify`: take a backup now, list the repository with the
//! recovery window, test a restore. pgBackRest runs on the repository's host
//! (`ops::backup`); the recovery window's end comes from the leader's archiver.

use serde_json::json;

use futures_util::future::BoxFuture;

use crate::commands::args::{
    BackupArgs, BackupCommand, BackupListArgs, BackupRunArgs, BackupVerifyArgs, InventoryArg,
    SshArgs,
};
use crate::commands::{finish, load_inventory, load_pki, ssh_options};
use crate::error::{Exit, Failure};
use crate::inventory::Inventory;
use crate::ops::Ctx;
use crate::ops::backup::{self as ops, now};
use crate::ops::backup_info::{human_age, human_bytes, utc};
use crate::ops::lock::ClusterLock;
use crate::ui::{OutputFormat, Ui};

pub async fn command(args: BackupArgs, output: OutputFormat) -> Result<Exit, Failure> {
    match args.command {
        BackupCommand::Run(a) => run(a, output).await,
        BackupCommand::List(a) => list(a, output).await,
        BackupCommand::Verify(a) => verify(a, output).await,
    }
}

/// The inventory, with backups on and the deploy's secrets known.
fn inventory(arg: &crate::commands::args::InventoryArg) -> Result<Inventory, Failure> {
    let inv = load_inventory(arg, false)?;
    if inv.backup_host().is_none() {
        return Err(Failure::new(
            Exit::Inventory,
            format!(
                "{}: backups are off for this cluster (backup_enabled: false): turn them on and run `pgha deploy`",
                inv.path.display()
            ),
        ));
    }
    inv.require_secrets().map_err(Failure::error)?;
    Ok(inv)
}

/// Run `f` with a context connected to the repository's host (named as its
/// second argument), then close the sessions and finish as every command does.
async fn on_repository<F>(
    arg: &InventoryArg,
    ssh: &SshArgs,
    output: OutputFormat,
    f: F,
) -> Result<Exit, Failure>
where
    F: for<'c> FnOnce(&'c Ctx<'c>, String) -> BoxFuture<'c, Result<Exit, Failure>>,
{
    let inv = inventory(arg)?;
    let ui = Ui::new(output);
    let pki = load_pki(&inv, false)?;
    let mut ctx = Ctx::new(&inv, pki, &ui);
    let ssh = ssh_options(ssh, &inv);
    let result = match ops::repository_host(&ctx) {
        Ok(repo) => match ctx.connect(&ssh, std::slice::from_ref(&repo)).await {
            Ok(()) => f(&ctx, repo).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    ctx.close().await;
    finish(&inv, &ui, result, false)
}

async fn run(args: BackupRunArgs, output: OutputFormat) -> Result<Exit, Failure> {
    on_repository(&args.inventory, &args.ssh, output, move |ctx, repo| {
        Box::pin(async move {
            let ui = &ctx.ui;
            let lock =
                ClusterLock::acquire(ctx, "pgha backup run", true, args.lock.duration()).await?;
            let started = std::time::Instant::now();
            let r = ops::take(
                ctx,
                ctx.session(&repo)?,
                args.kind.as_str(),
                args.from_standby,
            )
            .await;
            lock.release(ctx).await;
            let b = r?;
            ui.line(format!(
                "{} backup {} taken on {repo}: {} of data, {} added to the repository, {:.0}s",
                b.kind,
                b.label,
                human_bytes(b.size),
                human_bytes(b.repo_size),
                started.elapsed().as_secs_f64()
            ));
            if ui.json() {
                println!(
                    "{}",
                    json!({"ok": true, "backup": b, "seconds": started.elapsed().as_secs_f64()})
                );
            }
            Ok(Exit::Ok)
        })
    })
    .await
}

async fn list(args: BackupListArgs, output: OutputFormat) -> Result<Exit, Failure> {
    on_repository(&args.inventory, &args.ssh, output, move |ctx, repo| {
        Box::pin(async move {
        let ui = &ctx.ui;
        let inv = ctx.inv;
        let (info, arch) = tokio::join!(
            ops::info(ctx.session(&repo)?, &inv.cluster),
            crate::ops::health::archiver(ctx)
        );
        let info = info?;
        let earliest = info.backups.first().map(|b| b.stop);
        let arch = arch.ok();
        let latest = arch.as_ref().and_then(|a| a.archived_at);
        if ui.json() {
            println!(
                "{}",
                json!({
                    "stanza": inv.cluster.stanza(),
                    "repository": repo,
                    "status": info.status_message,
                    "backups": info.backups,
                    "wal": {"min": info.wal_min, "max": info.wal_max},
                    "window": {
                        "earliest": earliest.map(utc),
                        "latest": latest.map(utc),
                        "latest_wal": arch.as_ref().and_then(|a| a.wal.clone()),
                    },
                })
            );
            return Ok(Exit::Ok);
        }
        ui.line(format!(
            "stanza {} on {repo} ({}; {} backup(s), cipher {})",
            inv.cluster.stanza(),
            info.status_message,
            info.backups.len(),
            info.cipher
        ));
        if !info.backups.is_empty() {
            ui.line(format!(
                "  {:<34} {:<5} {:<21} {:>7} {:>10} {:>10}  WAL",
                "LABEL", "TYPE", "STARTED (UTC)", "TOOK", "SIZE", "IN REPO"
            ));
        }
        for b in &info.backups {
            ui.line(format!(
                "  {:<34} {:<5} {:<21} {:>7} {:>10} {:>10}  {}..{}",
                b.label,
                b.kind,
                utc(b.start),
                human_age(b.stop - b.start),
                human_bytes(b.size),
                human_bytes(b.repo_size),
                b.wal_start,
                b.wal_stop
            ));
        }
        match (earliest, latest) {
            (Some(e), Some(t)) => ui.line(format!(
                "recovery window: {} .. {} (last archived WAL {}, {} ago)",
                utc(e),
                utc(t),
                arch.as_ref().and_then(|a| a.wal.as_deref()).unwrap_or("?"),
                human_age(now() - t)
            )),
            (Some(e), _) => ui.line(format!(
                "recovery window: from {} (the leader's archiver could not be read: the end is the newest WAL in the repository, {})",
                utc(e),
                info.wal_max.as_deref().unwrap_or("none")
            )),
            (None, _) => ui.line("recovery window: none (no backup yet): `pgha backup run`"),
        }
        Ok(Exit::Ok)
        })
    })
    .await
}

async fn verify(args: BackupVerifyArgs, output: OutputFormat) -> Result<Exit, Failure> {
    on_repository(&args.inventory, &args.ssh, output, move |ctx, repo| {
        Box::pin(async move {
        let ui = &ctx.ui;
        let inv = ctx.inv;
        let phase = ui.phase("verify");
        phase.set(format!(
            "restoring {} into a scratch directory on {repo}",
            args.set.as_deref().unwrap_or("the newest backup")
        ));
        let v = ops::restore_test(ctx.session(&repo)?, args.set.as_deref()).await?;
        drop(phase);
        if v.ok() {
            ui.line(format!(
                "backup {} restores: PostgreSQL started on {repo}, recovery ended, {} database(s), {} table(s), {} row(s) counted; {} restored in {}s (removed)",
                v.set,
                v.databases,
                v.tables,
                v.rows,
                human_bytes(v.restored_bytes),
                v.seconds
            ));
            if ui.json() {
                println!("{}", json!({"ok": true, "host": repo, "result": v}));
            }
            return Ok(Exit::Ok);
        }
        let msg = format!(
            "backup {} does NOT restore: {} failed on {repo}: {}",
            if v.set.is_empty() { "(none)" } else { &v.set },
            v.step.as_deref().unwrap_or("?"),
            v.message.as_deref().unwrap_or("")
        );
        let msg = inv.secrets.redact(&msg);
        // One document with the test's result (finish would print a second one).
        if ui.json() {
            println!(
                "{}",
                json!({"ok": false, "exit": Exit::Error as i32, "error": msg, "host": repo, "result": v})
            );
        }
        eprintln!("error: {msg}");
        Ok(Exit::Error)
        })
    })
    .await
}
