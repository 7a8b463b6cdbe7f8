//! `pgha deploy`: bare hosts -> verified cluster, and converging re-runs. The
//! phases themselves live in `ops::converge`; this is their order, the lock, the
//! `--check` report and the final words.

use serde_json::json;

use crate::commands::args::DeployArgs;
use crate::commands::ssh_options;
use crate::commands::{finish, fleet, load_inventory, load_pki};
use crate::engine::desired::DesiredFile;
use crate::engine::mask;
use crate::engine::plan::{Action, FileReason};
use crate::error::{Exit, Failure};
use crate::inventory::Inventory;
use crate::ops::converge::{self, Converge, Existing};
use crate::ops::lock::ClusterLock;
use crate::ops::{Ctx, etcd as etcd_ops, roster, verify};
use crate::probe::etcd;
use crate::ssh::{Cmd, SshOptions, shell_quote};
use crate::ui::OutputFormat;
use crate::ui::Ui;

#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub check: bool,
    pub diff: bool,
    pub limit: Vec<String>,
    /// How long to wait for the cluster lock held by another run.
    pub lock_wait: std::time::Duration,
}

pub async fn command(args: DeployArgs, output: OutputFormat) -> Result<Exit, Failure> {
    if !args.more.is_empty() {
        return several(args, output).await;
    }
    let inv = load_inventory(&args.inventory, !args.check)?;
    // --check writes nothing: without certificates yet, the plan says they are missing.
    let pki = if args.check {
        load_pki(&inv, false).unwrap_or(None)
    } else {
        load_pki(&inv, true)?
    };
    let opts = DeployOptions {
        check: args.check,
        diff: args.diff,
        limit: args.limit.clone(),
        lock_wait: args.lock.duration(),
    };
    let ssh = ssh_options(&args.ssh, &inv);
    deploy(&inv, pki, &opts, ssh, &Ui::new(output)).await
}

/// `pgha deploy a.yml b.yml ...`: every cluster at once (bounded by --forks),
/// then a line each.
async fn several(args: DeployArgs, output: OutputFormat) -> Result<Exit, Failure> {
    if !args.limit.is_empty() {
        return Err(Failure::options(
            "--limit names hosts of one cluster: give it one inventory",
        ));
    }
    let paths = fleet::paths(&args.inventory, &args.more)?;
    let invs = fleet::load_all(&paths, !args.check)?;
    let opts = DeployOptions {
        check: args.check,
        diff: args.diff,
        limit: Vec::new(),
        lock_wait: args.lock.duration(),
    };
    let forks = args.forks.unwrap_or_else(fleet::default_forks);
    let (opts, args) = (&opts, &args);
    let outcomes = fleet::run_each(&invs, forks, output, |inv, ui| async move {
        let r = async {
            let pki = if opts.check {
                load_pki(inv, false).unwrap_or(None)
            } else {
                load_pki(inv, true)?
            };
            deploy(inv, pki, opts, ssh_options(&args.ssh, inv), &ui).await
        }
        .await;
        let summary = if opts.check {
            "checked (its plan above)".to_string()
        } else {
            format!("changed={}", ui.total_changed())
        };
        (r, summary)
    })
    .await;
    fleet::print_summary("deploy", &outcomes, output);
    Ok(fleet::worst(&outcomes))
}

/// Deploy the cluster the inventory describes (also what `pgha lab up` runs).
pub async fn deploy(
    inv: &Inventory,
    pki: Option<crate::pki::Pki>,
    opts: &DeployOptions,
    ssh: SshOptions,
    ui: &Ui,
) -> Result<Exit, Failure> {
    if let Some(w) = pki.as_ref().and_then(|p| p.ca_warning()) {
        ui.warn(w);
    }
    let mut ctx = Ctx::new(inv, pki, ui).with_limit(&opts.limit)?;
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        let etcd_up = !opts.check && etcd::probe(&ctx.ep.net, &ctx.ep.etcd).await.any_healthy();
        let mut lock = if opts.check {
            None
        } else {
            Some(ClusterLock::acquire(&ctx, "pgha deploy", etcd_up, opts.lock_wait).await?)
        };
        let r = match Converge::load(&ctx).await {
            // A cluster that exists may well need nothing: verify's checks then
            // start at once, beside the facts and phases (`verify::ahead`).
            Ok(mut conv) => run(&mut conv, opts, lock.as_mut(), etcd_up).await,
            Err(f) => Err(f),
        };
        if let Some(l) = lock {
            l.release(&ctx).await;
        }
        r
    }
    .await;
    ctx.close().await;
    finish(inv, ui, result, !opts.check)
}

/// The deploy, top to bottom; with `ahead`, verify's checks run beside it and
/// stand for the final verification when the run changed nothing.
async fn run(
    conv: &mut Converge<'_, '_>,
    opts: &DeployOptions,
    lock: Option<&mut ClusterLock>,
    ahead: bool,
) -> Result<Exit, Failure> {
    let ctx = conv.ctx;
    let (done, early) = if ahead {
        let unchanged = || ctx.ui.total_changed() == 0;
        // Boxed: the phases' and checks' futures nest past the compiler's layout depth.
        verify::ahead(
            Box::pin(verify::check_ahead(ctx)),
            unchanged,
            Box::pin(phases(conv, opts, lock, true)),
        )
        .await
    } else {
        (phases(conv, opts, lock, false).await, None)
    };
    let etcd_moved = match done? {
        Phases::Checked(exit) => return Ok(exit),
        Phases::Done { etcd_moved } => etcd_moved,
    };
    match early {
        // The etcd leader moved after the checks read it: their line is stale.
        Some(report) if !etcd_moved => verify::print_ahead(ctx, report),
        _ => verify::verify(ctx).await?,
    }
    if !ctx.limited() {
        roster::write(ctx, &roster::Roster::of(conv.inv)).await?;
    }
    for (h, d) in &conv.desired {
        let resources = d.files().count() + d.packages().len() + d.services().len();
        ctx.ui.ok(h, resources as u32);
    }
    print_connect(conv);
    Ok(Exit::Ok)
}

enum Phases {
    /// `--check`: the plan is reported, nothing was done.
    Checked(Exit),
    Done {
        etcd_moved: bool,
    },
}

/// Every phase before the verification. `etcd_up`: etcd answered before the
/// lock, so what exists of the cluster is read beside the facts.
async fn phases(
    conv: &mut Converge<'_, '_>,
    opts: &DeployOptions,
    lock: Option<&mut ClusterLock>,
    etcd_up: bool,
) -> Result<Phases, Failure> {
    let ctx = conv.ctx;
    let reads = async {
        if etcd_up {
            Some(converge::read_existing(ctx).await)
        } else {
            None
        }
    };
    let (planned, reads, params_checked) = tokio::join!(
        conv.gather_and_plan(),
        reads,
        converge::check_parameters(ctx)
    );
    planned?;
    let existing = conv.existing_from(reads).await?;
    conv.refuse_unsafe_limit(&existing)?;
    let params_checked = params_checked?;
    if etcd_up && !opts.check && conv.idle(&existing) {
        return idle(conv).await;
    }
    if opts.check {
        return report_check(conv, opts, &existing)
            .await
            .map(Phases::Checked);
    }
    conv.packages(existing.etcd_new).await?;
    if !params_checked {
        // A first deploy: PostgreSQL's server is there now, nothing runs yet.
        conv.check_parameters().await?;
    }
    if !existing.members.is_empty() {
        // Joining hosts have their packages now; every etcd host's configuration
        // then follows the new membership without a restart (read_once lines).
        conv.converge_members(&existing.members).await?;
        conv.gather_and_plan().await?;
    }
    conv.etcd(existing.etcd_new).await?;
    if let Some(lock) = lock {
        // A first deploy held the lock on the hosts only; etcd exists now.
        lock.add_etcd(&conv.ctx.ep.etcd).await?;
    }
    // etcd kept its data but was stopped (`pgha destroy` without --wipe-data, a
    // power cut): whether Patroni's cluster exists is known only now it runs. An
    // existing one is started on every member at once, and Patroni's own rules
    // pick who leads; only a new one is bootstrapped on the first db host.
    let initialized =
        existing.patroni_initialized || (!existing.etcd_new && conv.patroni_initialized().await);
    // pgBackRest's servers before Patroni: a member starting as a standby fetches
    // WAL and timeline history from the repository, and with the repository's
    // server down each fetch waits out pgBackRest's retries (a minute).
    conv.pgbackrest_servers().await?;
    let leader = conv.patroni(initialized).await?;
    // A cluster bootstrapped just now took bootstrap.dcs from the same inventory,
    // but check it: the patch computed before covers only a running cluster.
    let dcs_patch = if existing.patroni_initialized {
        existing.dcs_patch
    } else {
        conv.dcs_patch().await
    };
    conv.dynamic_config(&leader, dcs_patch).await?;
    conv.roles(&leader).await?;
    conv.exporters().await?;
    conv.haproxy().await?;
    conv.backups().await?;
    conv.monitoring().await?;
    conv.retire().await?;
    let etcd_moved = etcd_ops::keep_apart(conv.ctx).await;
    Ok(Phases::Done { etcd_moved })
}

/// A re-run with nothing to change: the phases that read (pending restarts,
/// exporters, the repository, Prometheus's targets, etcd's leader) at once.
/// etcd's quorum and Patroni's health are left to verify, which checks them
/// beside the run; anything these phases change makes it verify afresh.
async fn idle(conv: &Converge<'_, '_>) -> Result<Phases, Failure> {
    let (restarts, exporters, backups, monitoring, etcd_moved) = tokio::join!(
        conv.restart_pending(),
        conv.exporters(),
        conv.backups(),
        conv.monitoring(),
        etcd_ops::keep_apart(conv.ctx)
    );
    restarts?;
    exporters?;
    backups?;
    monitoring?;
    Ok(Phases::Done { etcd_moved })
}

async fn report_check(
    conv: &Converge<'_, '_>,
    opts: &DeployOptions,
    e: &Existing,
) -> Result<Exit, Failure> {
    let ui = &conv.ctx.ui;
    let mut doc = serde_json::Map::new();
    let mut total = 0;
    ui.line("");
    ui.line("PLAN (--check: nothing is changed)");
    for h in &conv.inv.hosts {
        let p = &conv.plans[&h.name];
        let acts = conv.ctx.acts_on(&h.name);
        let lines: Vec<String> = p
            .actions
            .iter()
            .filter(|_| acts)
            .map(|a| a.to_string())
            .collect();
        total += lines.len();
        if lines.is_empty() {
            ui.host(&h.name, "no changes");
        }
        for l in &lines {
            ui.host(&h.name, l);
        }
        if opts.diff && acts {
            for a in &p.actions {
                if let Action::WriteFile { file, reason } = &a.action {
                    if *reason == FileReason::Attributes {
                        continue;
                    }
                    let old = if *reason == FileReason::Content {
                        remote_content(conv, &h.name, &file.path).await?
                    } else {
                        String::new()
                    };
                    ui.line(redacted_diff(conv, &h.name, file, &old));
                }
            }
        }
        doc.insert(h.name.clone(), json!(lines));
    }
    let c = &conv.inv.cluster;
    let mut cluster_lines = Vec::new();
    if e.etcd_new {
        cluster_lines.push("etcd: bootstrap a new cluster".to_string());
    }
    if !e.patroni_initialized {
        cluster_lines.push(format!(
            "patroni: bootstrap the cluster on {}",
            conv.inv.db_hosts()[0].name
        ));
    }
    cluster_lines.extend(e.members.lines());
    if let Some(p) = &e.dcs_patch {
        cluster_lines.push(format!("patroni: PATCH /config {p}"));
    }
    if e.left_paused {
        cluster_lines
            .push("patroni: resume the cluster (paused by an interrupted pgha run)".to_string());
    }
    match &e.sql_changes {
        Some(changes) => cluster_lines.extend(changes.iter().map(|c| format!("sql: {c}"))),
        None if !e.patroni_initialized => {
            let present = |absent: bool, name: &str| (!absent).then(|| name.to_string());
            let roles: Vec<String> = [c.monitor_user.clone(), c.app_user.clone()]
                .into_iter()
                .chain(
                    c.postgresql_users
                        .iter()
                        .filter_map(|u| present(u.absent, &u.name)),
                )
                .collect();
            let dbs: Vec<String> = std::iter::once(c.app_database.clone())
                .chain(
                    c.postgresql_databases
                        .iter()
                        .filter_map(|d| present(d.absent, &d.name)),
                )
                .collect();
            cluster_lines.push(format!(
                "sql: create roles {} and databases {}",
                roles.join(", "),
                dbs.join(", ")
            ))
        }
        None => {}
    }
    if let Some(repo) = conv.inv.backup_host() {
        // What the backup phase will do: read from the repository (a host without
        // pgBackRest yet has neither stanza nor backup).
        let info = match conv.ctx.session(&repo.name) {
            Ok(s) => crate::ops::backup::info(s, c).await.ok(),
            Err(_) => None,
        };
        match info {
            Some(i) if i.newest().is_some() => {}
            Some(i) if i.stanza_exists() => {
                cluster_lines.push(format!("backups: first full backup on {}", repo.name))
            }
            _ => cluster_lines.push(format!(
                "backups: create stanza {} and take a first full backup on {}",
                c.stanza(),
                repo.name
            )),
        }
    }
    total += cluster_lines.len();
    for l in &cluster_lines {
        ui.host("cluster", l);
    }
    ui.line(format!("{total} change(s) planned"));
    if ui.json() {
        ui.document(
            json!({"check": true, "changes": total, "hosts": doc, "cluster": cluster_lines}),
        );
    }
    Ok(Exit::Ok)
}

async fn remote_content(
    conv: &Converge<'_, '_>,
    host: &str,
    path: &str,
) -> Result<String, Failure> {
    let out = conv
        .ctx
        .session(host)?
        .exec(&Cmd::root(format!("cat {}", shell_quote(path))))
        .await
        .map_err(Failure::from)?;
    Ok(out.stdout_str())
}

/// The host's file against pgha's, secrets masked by structure on both sides (the
/// role's `secrets:` lines, whatever their value), then by value (every known
/// secret in every encoding, private keys) as a second net.
fn redacted_diff(conv: &Converge<'_, '_>, host: &str, file: &DesiredFile, old: &str) -> String {
    let path = &file.path;
    let new = String::from_utf8_lossy(&file.content);
    let (old, new) = mask::mask_pair(&file.secrets, old, &new);
    let old = conv.inv.secrets.redact(&old);
    let new = conv.inv.secrets.redact(&new);
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{host}:{path} (current)"),
            &format!("{host}:{path} (pgha)"),
        )
        .to_string()
}

fn print_connect(conv: &Converge<'_, '_>) {
    let c = &conv.inv.cluster;
    let ui = &conv.ctx.ui;
    let changed = ui.total_changed();
    ui.line("");
    ui.line(format!(
        "Cluster {} is up ({} change(s), {:.1}s).",
        c.cluster_name,
        changed,
        ui.elapsed().as_secs_f32()
    ));
    // With TLS, clients verify the server through the router (the db hosts'
    // certificates name the routers).
    let tls = if c.tls {
        format!(
            " sslmode=verify-full sslrootcert={}",
            crate::pki::pki_dir(&conv.inv.path).join("ca.crt").display()
        )
    } else {
        String::new()
    };
    for r in conv.inv.router_hosts() {
        ui.line(format!(
            "  writes: psql \"host={} port={} user={} dbname={}{tls}\"",
            r.ip, c.haproxy_write_port, c.app_user, c.app_database
        ));
        ui.line(format!(
            "  reads:  psql \"host={} port={} user={} dbname={}{tls}\"",
            r.ip, c.haproxy_read_port, c.app_user, c.app_database
        ));
        if c.pgbouncer_enabled {
            ui.line(format!(
                "  pooled: psql \"host={} port={} user={} dbname={}{tls}\" (writes, {} pooling)",
                r.ip, c.pgbouncer_port, c.app_user, c.app_database, c.pgbouncer_pool_mode
            ));
        }
        ui.line(format!(
            "  stats:  http://{}:{}/ (user {})",
            r.ip,
            c.haproxy_stats_port,
            crate::probe::haproxy::STATS_USER
        ));
    }
    if let (Some((_, prom)), Some((_, am))) = (&conv.ctx.ep.prometheus, &conv.ctx.ep.alertmanager) {
        ui.line(format!(
            "  alerts: {prom}/alerts (rules), {am} (Alertmanager)"
        ));
        ui.line(format!(
            "  graphs: {}",
            crate::ops::monitoring::graphs_link(prom)
        ));
    }
    ui.line(format!(
        "  password of {}: app_password in {}; of the stats page: haproxy_stats_password",
        c.app_user,
        conv.inv.secrets_path.display()
    ));
    if ui.json() {
        ui.document(json!({
            "ok": true,
            "changed": changed,
            "elapsed_secs": ui.elapsed().as_secs_f64(),
            "recap": ui.recap(),
            "routers": conv.inv.router_hosts().iter().map(|r| r.ip.to_string()).collect::<Vec<_>>(),
        }));
    }
}
