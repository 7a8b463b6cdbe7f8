//! `pgha destroy`: the cluster taken down for good. What goes is named and asked
//! for first (or `--yes`); then, under the cluster lock: the backup timers, the
//! routers (clients are cut off before anything else), Patroni on the replicas
//! then the leader, the exporters and pgBackRest's servers, the cluster's keys in
//! etcd (Patroni's only with the data), and etcd itself last. Data stays unless `--wipe-data`; backups stay unless
//! `--delete-backups` (a directory repository is then kept aside, out of the way of
//! a new cluster's stanza). A `deploy` afterwards builds the cluster again: from the
//! kept data, or a fresh one.

use serde_json::json;

use crate::commands::args::DestroyArgs;
use crate::commands::{confirm_by_name, finish, load_inventory, load_pki, ssh_options};
use crate::error::{Exit, Failure};
use crate::ops::Ctx;
use crate::ops::backup::{self, now};
use crate::ops::converge::Converge;
use crate::ops::destroy as plan;
use crate::ops::lock::ClusterLock;
use crate::ops::monitoring::ROLES as MONITORING_ROLES;
use crate::probe::{etcd, patroni};
use crate::ssh::shell_quote;
use crate::ui::{OutputFormat, Ui};

/// What stops once no member runs: the exporters, pgBackRest's servers, the monitoring.
const LAST_ROLES: [&str; 6] = [
    "exporter",
    "pgbackrest",
    MONITORING_ROLES[0],
    MONITORING_ROLES[1],
    MONITORING_ROLES[2],
    MONITORING_ROLES[3],
];

pub async fn command(args: DestroyArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, false)?;
    if args.wipe_data && inv.cluster.backup_enabled && inv.cluster.s3() && !args.delete_backups {
        return Err(Failure::options(format!(
            "--wipe-data with the S3 repository of {}: its stanza would refuse a new cluster of the \
             same name; add --delete-backups to delete it (the backups go with it), or keep the \
             data (no --wipe-data). Nothing was changed",
            inv.cluster.cluster_name
        )));
    }
    let pki = load_pki(&inv, false)?;
    let ui = Ui::new(output);
    let mut ctx = Ctx::new(&inv, pki, &ui);
    let ssh = ssh_options(&args.ssh, &inv);
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        run(&ctx, &args).await
    }
    .await;
    ctx.close().await;
    finish(&inv, &ui, result, !args.check)
}

async fn run(ctx: &Ctx<'_>, args: &DestroyArgs) -> Result<Exit, Failure> {
    let c = &ctx.inv.cluster;
    let conv = Converge::load(ctx).await?;
    let leader = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .ok()
        .and_then(|v| v.leader().map(|l| l.name.clone()));
    let repo = ctx.inv.backup_host().map(|h| h.name.clone());
    let steps = steps(ctx, args, leader.as_deref(), repo.as_deref());
    show(ctx, &steps, args.check);
    if args.check {
        if ctx.ui.json() {
            println!("{}", json!({"check": true, "destroy": steps}));
        }
        return Ok(Exit::Ok);
    }
    confirm_by_name(
        &ctx.inv.cluster.cluster_name,
        args.yes,
        "takes down",
        "destroy",
    )?;
    let etcd_up = etcd::probe(&ctx.ep.net, &ctx.ep.etcd).await.any_healthy();
    let mut lock = ClusterLock::acquire(ctx, "pgha destroy", etcd_up, args.lock.duration()).await?;
    let r = destroy(
        ctx,
        args,
        &conv,
        leader.as_deref(),
        repo.as_deref(),
        &mut lock,
    )
    .await;
    lock.release(ctx).await;
    r?;
    ctx.ui.line("");
    ctx.ui.line(format!(
        "Cluster {} destroyed{}. `pgha deploy` builds it again{}.",
        c.cluster_name,
        if args.wipe_data {
            " and its data removed"
        } else {
            "; its data is kept"
        },
        if args.wipe_data {
            " as a new, empty cluster"
        } else {
            " from the kept data"
        }
    ));
    if ctx.ui.json() {
        println!(
            "{}",
            json!({"ok": true, "destroyed": c.cluster_name, "steps": steps})
        );
    }
    Ok(Exit::Ok)
}

fn steps(
    ctx: &Ctx<'_>,
    args: &DestroyArgs,
    leader: Option<&str>,
    repo: Option<&str>,
) -> Vec<String> {
    let c = &ctx.inv.cluster;
    let mut s = Vec::new();
    if let Some(r) = repo {
        s.push(format!("stop the scheduled backups on {r}"));
    }
    s.push(format!(
        "stop and disable HAProxy on {}",
        ctx.router_hosts().join(", ")
    ));
    s.push(format!(
        "stop and disable Patroni and PostgreSQL on {} (the leader{} last), the exporters and pgBackRest's servers",
        ctx.db_hosts().join(", "),
        leader.map(|l| format!(" {l}")).unwrap_or_default()
    ));
    s.push(if args.wipe_data {
        format!(
            "remove the cluster's keys from etcd (/service/{0}/, /pgha/{0}/)",
            c.cluster_name
        )
    } else {
        format!(
            "remove pgha's marks from etcd (/pgha/{0}/); Patroni's state (/service/{0}/) stays with the data",
            c.cluster_name
        )
    });
    if args.wipe_data {
        s.push(format!(
            "remove PostgreSQL's data ({}) on every db host",
            c.postgresql_data_dir
        ));
    }
    s.push(format!(
        "stop and disable etcd on {}{}",
        ctx.etcd_hosts().join(", "),
        if args.wipe_data {
            " and remove its data"
        } else {
            ""
        }
    ));
    match (repo, args.wipe_data, args.delete_backups, c.s3()) {
        (Some(_), true, true, true) => s.push(format!(
            "delete stanza {} from the bucket {} (its backups are gone)",
            c.stanza(),
            c.backup_s3_bucket
        )),
        (Some(r), true, true, false) => s.push(format!(
            "delete the repository {} on {r} (its backups are gone)",
            c.backup_repo_path
        )),
        (Some(r), true, false, _) => s.push(format!(
            "keep the repository on {r} aside as {}: its backups stay restorable",
            plan::aside(c, 0).replace("-0", "-<time>")
        )),
        (Some(r), false, _, _) => s.push(format!("keep the backups on {r} as they are")),
        (None, _, _, _) => {}
    }
    s
}

fn show(ctx: &Ctx<'_>, steps: &[String], check: bool) {
    let ui = &ctx.ui;
    ui.line("");
    ui.line(format!(
        "DESTROY cluster {}{}",
        ctx.inv.cluster.cluster_name,
        if check {
            " (--check: nothing is changed)"
        } else {
            ""
        }
    ));
    for (i, s) in steps.iter().enumerate() {
        ui.line(format!("  {}. {s}", i + 1));
    }
}

/// The steps, in order.
async fn destroy(
    ctx: &Ctx<'_>,
    args: &DestroyArgs,
    conv: &Converge<'_, '_>,
    leader: Option<&str>,
    repo: Option<&str>,
    lock: &mut ClusterLock,
) -> Result<(), Failure> {
    let c = &ctx.inv.cluster;
    let stop = |hosts: Vec<String>, roles: &'static [&'static str], what: &'static str| async move {
        ctx.each(&hosts, what, |h, s| {
            let script = plan::stop_script(&conv.desired[&h], roles);
            async move {
                crate::engine::apply::run(&s, script).await?;
                Ok(1)
            }
        })
        .await
    };
    if let Some(r) = repo {
        ctx.run_on(r, "stop the scheduled backups", plan::timers_script())
            .await?;
    }
    let phase = ctx.ui.phase("stop");
    phase.set("PgBouncer and HAProxy on the routers");
    stop(
        ctx.router_hosts(),
        &["pgbouncer", "haproxy"],
        "stop pgbouncer and haproxy",
    )
    .await?;
    let db = ctx.db_hosts();
    let replicas: Vec<String> = db
        .iter()
        .filter(|h| Some(h.as_str()) != leader)
        .cloned()
        .collect();
    phase.set("Patroni on the replicas");
    stop(replicas, &["patroni"], "stop patroni").await?;
    if let Some(l) = leader {
        phase.set(format!("Patroni on the leader {l}"));
        stop(vec![l.to_string()], &["patroni"], "stop patroni").await?;
    }
    phase.set("the exporters, pgBackRest's servers and the monitoring");
    let all = ctx.all_hosts();
    stop(
        all,
        &LAST_ROLES,
        "stop exporters, pgbackrest and monitoring",
    )
    .await?;
    phase.done(
        "every router, member, exporter, pgBackRest server and monitoring service stopped and disabled",
    );

    let phase = ctx.ui.phase("etcd");
    let removed = clear_etcd(ctx, args.wipe_data).await?;
    phase.set(format!("{removed} key(s) of the cluster removed"));
    if args.wipe_data {
        let script = plan::wipe_db_script(c);
        ctx.each(&db, "remove PostgreSQL's data", |_, s| {
            let script = script.clone();
            async move {
                crate::engine::apply::run(&s, script).await?;
                Ok(1)
            }
        })
        .await?;
        if let Some(r) = repo {
            repository(ctx, args, r).await?;
        }
    }
    // etcd last, after the lock's etcd part is given back (a lease left in a
    // stopped etcd would come back with it and refuse the next command).
    lock.release_etcd().await;
    let etcd_hosts = ctx.etcd_hosts();
    let wipe = args.wipe_data.then(|| plan::wipe_etcd_script(c));
    ctx.each(&etcd_hosts, "stop etcd", |h, s| {
        let mut script = plan::stop_script(&conv.desired[&h], &["etcd"]);
        if let Some(w) = &wipe {
            script.push('\n');
            script.push_str(w);
        }
        async move {
            crate::engine::apply::run(&s, script).await?;
            Ok(1)
        }
    })
    .await?;
    phase.done(format!(
        "{removed} key(s) of the cluster removed; etcd stopped and disabled{}",
        if args.wipe_data {
            ", its data removed"
        } else {
            ""
        }
    ));
    Ok(())
}

/// The cluster's keys in etcd: pgha's marks (all but the lock this run holds), and
/// with the data Patroni's. Patroni's stay with kept data: a deploy then starts
/// the members on them and Patroni's own rules pick who leads (the old leader or
/// its synchronous standby, never a replica that missed acknowledged commits).
/// How many went.
async fn clear_etcd(ctx: &Ctx<'_>, wipe: bool) -> Result<i64, Failure> {
    let c = &ctx.inv.cluster;
    if !etcd::probe(&ctx.ep.net, &ctx.ep.etcd).await.any_healthy() {
        ctx.ui.warn("etcd does not answer: the cluster's keys in it stay (a deploy of a new cluster removes nothing of them; wipe etcd's data with --wipe-data)");
        return Ok(0);
    }
    ctx.ensure_locked("remove the cluster's keys from etcd")
        .await?;
    let mut client = etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
    let mut n = 0;
    if wipe {
        let service = format!("/service/{}/", c.cluster_name);
        n += client
            .delete(
                service.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| Failure::error(format!("etcd: delete {service}*: {e}")))?
            .deleted();
    }
    let ours = format!("/pgha/{}/", c.cluster_name);
    let lock_key = crate::ops::lock::etcd_key(&c.cluster_name);
    let keys = client
        .get(
            ours.as_str(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .map_err(|e| Failure::error(format!("etcd: list {ours}*: {e}")))?;
    for kv in keys.kvs() {
        let k = String::from_utf8_lossy(kv.key()).into_owned();
        if k != lock_key {
            client
                .delete(k.as_str(), None)
                .await
                .map_err(|e| Failure::error(format!("etcd: delete {k}: {e}")))?;
            n += 1;
        }
    }
    Ok(n)
}

/// The backups of a cluster whose data is wiped: a directory repository kept
/// aside (or deleted with --delete-backups); an S3 stanza deleted (only with it).
async fn repository(ctx: &Ctx<'_>, args: &DestroyArgs, r: &str) -> Result<(), Failure> {
    let c = &ctx.inv.cluster;
    if c.s3() {
        // --delete-backups is required with S3 (checked before any change).
        let script = format!(
            "{} && {}",
            backup::pgbackrest(c, "--log-level-console=warn stop"),
            backup::pgbackrest(c, "--log-level-console=warn --force stanza-delete")
        );
        ctx.run_on(r, "delete the stanza", script).await?;
        ctx.ui
            .host(r, format!("stanza {} deleted from the bucket", c.stanza()));
        return Ok(());
    }
    let stamp = now();
    let out = ctx
        .run_on(
            r,
            "the repository",
            plan::repository_script(c, stamp, args.delete_backups),
        )
        .await?;
    if args.delete_backups {
        ctx.ui.host(
            r,
            format!("repository {} deleted", shell_quote(&c.backup_repo_path)),
        );
    } else if out.contains("kept") {
        ctx.ui.host(
            r,
            format!(
                "repository kept as {} (move it back to restore from it)",
                plan::aside(c, stamp)
            ),
        );
    }
    Ok(())
}
