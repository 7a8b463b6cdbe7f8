//! `pgha remove HOST`: take out of the cluster a host the inventory no longer lists
//! (deploy stops and points here; it never removes a member silently). Judged
//! first, read-only, and refused when it would cost the cluster: the leader
//! (unless `--switchover`), etcd's quorum, an etcd member to be added that is not
//! yet. Then, under the cluster lock and with the write gap measured: leadership
//! handed over, the routers reloaded without it, its services stopped and
//! disabled, its Patroni key and slot and its etcd member removed, db hosts the
//! inventory no longer counts as etcd members leaving etcd, pgha's record of the
//! hosts updated, and the rest converged (pg_hba and etcd endpoints by reloads).
//! Data stays unless `--wipe`.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::commands::args::RemoveArgs;
use crate::commands::{confirm_typed, finish, load_inventory, load_pki, ssh_options};
use crate::error::{Exit, Failure};
use crate::install;
use crate::ops::converge::Converge;
use crate::ops::etcd::{self as etcd_ops, MemberInfo};
use crate::ops::gap::{self, Gap};
use crate::ops::lock::ClusterLock;
use crate::ops::member;
use crate::ops::roster::{self, Roster};
use crate::ops::switchover::{self, SwitchoverOpts};
use crate::ops::{Ctx, verify, waits};
use crate::probe::{etcd, patroni};
use crate::ssh::shell_quote;
use crate::ui::{OutputFormat, Ui};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Db,
    Router,
}

/// What the cluster holds of the host, read before anything changes.
#[derive(Debug, Clone, Serialize)]
struct Assessment {
    kind: Kind,
    address: String,
    leader: Option<String>,
    patroni_member: bool,
    etcd_member: Option<MemberInfo>,
    /// db hosts of the inventory etcd lists that the inventory no longer counts as
    /// etcd members (deploy's rule): they leave etcd too.
    etcd_leaving: Vec<String>,
    steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    host: String,
    took_secs: f64,
    switchover_to: Option<String>,
    gap: Option<Gap>,
    data_kept: bool,
}

pub async fn command(args: RemoveArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, false)?;
    let t = &args.host;
    if let Some(h) = inv.host(t) {
        return Err(Failure::new(
            Exit::Inventory,
            format!(
                "{t} is still a {} host of {}: delete it from the inventory first, then run \
                 `pgha remove` (the inventory says what the cluster is; remove takes out a member \
                 it no longer lists). Nothing was changed",
                if h.in_group("db") { "db" } else { "router" },
                inv.path.display()
            ),
        ));
    }
    let pki = load_pki(&inv, false)?;
    let ui = Ui::new(output);
    let mut ctx = Ctx::new(&inv, pki, &ui);
    let ssh = ssh_options(&args.ssh, &inv);
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        let a = assess(&ctx, &args).await?;
        show(&ctx, &args, &a);
        if args.check {
            if ctx.ui.json() {
                println!("{}", json!({"check": true, "remove": a}));
            }
            return Ok(Exit::Ok);
        }
        confirm_typed(
            t,
            "the host's name",
            "remove it from the cluster",
            args.yes,
            &format!("removing {t} from the cluster"),
        )?;
        if a.kind == Kind::Db {
            // Asked by name (a switchover from it), never counted as a member.
            let c = &inv.cluster;
            let api = patroni::api(&a.address, c.patroni_rest_port, c.tls);
            ctx.ep.outside.push((t.clone(), api));
        }
        if !args.host_gone {
            let like = match a.kind {
                Kind::Db => inv.db_hosts(),
                Kind::Router => inv.router_hosts(),
            };
            let mut target = like
                .first()
                .map(|h| h.ssh.clone())
                .ok_or_else(|| Failure::error("the inventory has no host of that kind"))?;
            target.host = t.clone();
            target.address = a.address.clone();
            ctx.connect_outside(&ssh, target).await.map_err(|f| {
                Failure::new(
                    f.exit,
                    format!(
                        "{}\n{t} cannot be reached, so its services cannot be stopped; nothing was \
                         changed. If it is gone for good, add --host-gone: pgha then takes it out of \
                         the cluster without touching it (should it come back, stop its etcd and \
                         Patroni by hand)",
                        f.message
                    ),
                )
            })?;
        }
        let lock = ClusterLock::acquire(&ctx, "pgha remove", true, args.lock.duration()).await?;
        // Judged again under the lock: a switchover may have moved leadership.
        let r = match assess(&ctx, &args).await {
            Ok(a) => remove(&ctx, &args, &a).await,
            Err(f) => Err(f),
        };
        lock.release(&ctx).await;
        let report = r?;
        print_report(&ctx, &report);
        Ok(Exit::Ok)
    }
    .await;
    ctx.close().await;
    finish(&inv, &ui, result, !args.check)
}

/// Read-only: where the host is in the cluster, and the refusals.
// Long by design: the refusals, in the order they are judged.
async fn assess(ctx: &Ctx<'_>, args: &RemoveArgs) -> Result<Assessment, Failure> {
    let t = &args.host;
    let inv = ctx.inv.path.display().to_string();
    let refuse =
        |why: String| Failure::error(format!("removing {t} refused, nothing was changed: {why}"));
    let view = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .map_err(|e| refuse(format!("no member's Patroni answers ({e})")))?;
    let mut client = etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
    let members = etcd_ops::members(&mut client).await?;
    let recorded = roster::read(ctx).await.find(t);
    let patroni_member = view.member(t).cloned();
    let etcd_member = members.iter().find(|m| m.name == *t).cloned();
    let from_url = |u: &str| {
        u.split("://")
            .nth(1)
            .and_then(|r| r.rsplit_once(':'))
            .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
    };
    let address = args
        .address
        .map(|a| a.to_string())
        .or_else(|| recorded.as_ref().map(|(a, _)| a.clone()))
        .or_else(|| {
            patroni_member
                .as_ref()
                .map(|m| m.host.clone())
                .filter(|h| !h.is_empty())
        })
        .or_else(|| {
            etcd_member
                .as_ref()
                .and_then(|m| m.peer_urls.first().and_then(|u| from_url(u)))
        });
    let kind = match (&patroni_member, &etcd_member, &recorded) {
        (None, None, Some((_, "router"))) => Kind::Router,
        (None, None, None) => {
            return Err(refuse(format!(
                "{t} is not a member of cluster {}: not among Patroni's members ({}), etcd's \
                 members or pgha's record of the hosts it deployed; nothing to remove",
                ctx.inv.cluster.cluster_name,
                view.members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        _ => Kind::Db,
    };
    let Some(address) = address else {
        return Err(refuse(format!(
            "{t}'s address is not known: give it with --address"
        )));
    };
    let leader = view.leader().map(|l| l.name.clone());
    if kind == Kind::Db {
        match &leader {
            Some(l) if l == t && !args.switchover => {
                return Err(refuse(format!(
                    "{t} leads the cluster: add --switchover to hand leadership over first, or run \
                     `pgha switchover {inv}`"
                )));
            }
            Some(_) => {}
            None => {
                return Err(refuse(format!(
                    "no member leads the cluster now ({})",
                    view.summary()
                )));
            }
        }
    }
    if let Some(m) = &etcd_member {
        let etcd_hosts = ctx.etcd_hosts();
        let missing: Vec<&String> = etcd_hosts
            .iter()
            .filter(|h| !members.iter().any(|x| x.name == **h && !x.learner))
            .collect();
        if !missing.is_empty() {
            return Err(refuse(format!(
                "the inventory's etcd members {} are not voting members yet: run `pgha deploy {inv}` \
                 first so they join, then remove {t} (etcd would otherwise fall to an even count)",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let healthy = member::healthy_etcd_names(ctx).await;
        member::keeps_quorum(&members, &[m.id], &healthy)
            .map_err(|why| refuse(format!("removing its etcd member: {why}")))?;
    }
    let (db, etcd_hosts) = (ctx.db_hosts(), ctx.etcd_hosts());
    let etcd_leaving = members
        .iter()
        .filter(|m| db.contains(&m.name) && !etcd_hosts.contains(&m.name))
        .map(|m| m.name.clone())
        .collect();
    let mut a = Assessment {
        kind,
        address,
        leader,
        patroni_member: patroni_member.is_some(),
        etcd_member,
        etcd_leaving,
        steps: Vec::new(),
    };
    a.steps = steps(ctx, args, &a);
    Ok(a)
}

fn steps(ctx: &Ctx<'_>, args: &RemoveArgs, a: &Assessment) -> Vec<String> {
    let t = &args.host;
    let mut s = Vec::new();
    if a.kind == Kind::Db && a.leader.as_deref() == Some(t.as_str()) {
        s.push(format!(
            "switchover: hand leadership from {t} to a synchronous standby"
        ));
    }
    if a.kind == Kind::Db {
        s.push(format!(
            "routers {}: reload HAProxy without {t}",
            ctx.router_hosts().join(", ")
        ));
    }
    let touch = |what: String| {
        if args.host_gone {
            format!("(--host-gone: not done) {what}")
        } else {
            what
        }
    };
    match a.kind {
        Kind::Db => s.push(touch(format!(
            "{t}: stop and disable Patroni (PostgreSQL), the exporter and pgBackRest's server"
        ))),
        Kind::Router => s.push(touch(format!("{t}: stop and disable HAProxy"))),
    }
    if a.patroni_member {
        s.push(format!(
            "Patroni: remove {t}'s member key and its replication slot on the leader"
        ));
    }
    if let Some(m) = &a.etcd_member {
        s.push(format!(
            "etcd: remove member {} ({t}){}",
            m.id_hex(),
            if args.host_gone {
                String::new()
            } else {
                format!(", stop etcd on {t} and remove its etcd data")
            }
        ));
    }
    for h in &a.etcd_leaving {
        s.push(format!(
            "etcd: {h} leaves etcd (the inventory's etcd members are {}); it stays a Patroni member",
            ctx.etcd_hosts().join(", ")
        ));
    }
    s.push(format!(
        "every other host follows (pg_hba, etcd endpoints, HAProxy backends: reloads); pgha's \
         record of the hosts without {t}"
    ));
    if a.kind == Kind::Db && !args.host_gone {
        s.push(if args.wipe {
            format!(
                "{t}: remove PostgreSQL's data directory ({})",
                ctx.inv.cluster.postgresql_data_dir
            )
        } else {
            format!(
                "{t}: PostgreSQL's data directory ({}) is kept",
                ctx.inv.cluster.postgresql_data_dir
            )
        });
    }
    s.push("verify the cluster".into());
    s
}

fn show(ctx: &Ctx<'_>, args: &RemoveArgs, a: &Assessment) {
    let ui = &ctx.ui;
    ui.line("");
    ui.line(format!(
        "REMOVE {} ({}) at {} from cluster {}{}",
        args.host,
        match a.kind {
            Kind::Db => "database member",
            Kind::Router => "router",
        },
        a.address,
        ctx.inv.cluster.cluster_name,
        if args.check {
            " (--check: nothing is changed)"
        } else {
            ""
        }
    ));
    for (i, s) in a.steps.iter().enumerate() {
        ui.line(format!("  {}. {s}", i + 1));
    }
}

// Long by design: the removal, in the order the cluster needs it.
async fn remove(ctx: &Ctx<'_>, args: &RemoveArgs, a: &Assessment) -> Result<Report, Failure> {
    let started = Instant::now();
    let t = &args.host;
    let c = &ctx.inv.cluster;
    let ep = &ctx.ep;
    let ports = ep
        .routers
        .iter()
        .map(|(_, ip)| ep.router_port(ip, ep.write_port))
        .collect();
    let probes = gap::start_all(&ep.net, ports);
    let result = async {
        let mut switchover_to = None;
        if a.kind == Kind::Db && a.leader.as_deref() == Some(t.as_str()) {
            let r = switchover::switchover(
                ctx,
                &SwitchoverOpts {
                    to: None,
                    max_lag: c.patroni_maximum_lag_on_failover,
                    candidate_wait: Duration::from_secs(60),
                },
            )
            .await?;
            ctx.ui
                .host("cluster", format!("leadership handed from {} to {}", r.from, r.to));
            switchover_to = Some(r.to);
        }
        let mut conv = Converge::load(ctx).await?;
        conv.gather_and_plan().await?;
        // Clients first: no new connection reaches the host.
        conv.haproxy().await?;
        // Any member's definitions name the same units and containers.
        let first_db = ctx.db_hosts().first().cloned().unwrap_or_default();
        let roles: Vec<&str> = match a.kind {
            Kind::Db => vec!["patroni", "exporter", "pgbackrest", "node_exporter"],
            // A router may have been the monitoring host (and the repository's).
            Kind::Router => {
                let mut r = vec!["pgbouncer", "haproxy"];
                r.extend(crate::ops::monitoring::ROLES);
                r
            }
        };
        let pick = |r: &str| {
            let from = if r == "haproxy" || r == "pgbouncer" {
                ctx.router_hosts().first().cloned().unwrap_or_default()
            } else {
                first_db.clone()
            };
            conv.desired
                .get(&from)
                .and_then(|d| d.role(r))
                .or_else(|| conv.desired.values().find_map(|d| d.role(r)))
        };
        if !args.host_gone {
            let mut script = String::new();
            for r in &roles {
                if let Some(role) = pick(r) {
                    script.push_str(&format!(
                        "{}\n{}\n",
                        install::remove(role),
                        install::disable(role)
                    ));
                }
            }
            ctx.run_on(t, "stop its services", script).await?;
            ctx.ui.host(t, format!("stopped and disabled: {}", roles.join(", ")));
            ctx.ui.changed(t, 1);
        }
        if a.patroni_member {
            let leader = waits::wait_leader(&ctx.ep, None, Duration::from_secs(60)).await?;
            member::remove_stale_members(ctx, std::slice::from_ref(t), &leader).await?;
        }
        if let Some(m) = &a.etcd_member {
            ctx.ensure_locked("etcd: remove the member").await?;
            let mut client = etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
            if etcd_ops::members(&mut client).await?.iter().any(|x| x.id == m.id) {
                etcd_ops::remove(&mut client, m).await?;
            }
            ctx.ui
                .host("etcd", format!("removed member {} ({t})", m.id_hex()));
            if !args.host_gone {
                conv.stop_etcd_on(t).await?;
            }
        }
        if a.kind == Kind::Db && args.wipe && !args.host_gone {
            ctx.run_on(
                t,
                "remove the data directory",
                format!(
                    "r=$({} -Atq -c 'SELECT 1' 2>/dev/null || true)\n\
                     if [ -n \"$r\" ]; then echo 'PostgreSQL still runs on this host' >&2; exit 3; fi\n\
                     rm -rf {}",
                    install::psql(c),
                    shell_quote(&c.postgresql_data_dir)
                ),
            )
            .await?;
            ctx.ui.host(t, "PostgreSQL's data directory removed");
        }
        roster::write(ctx, &Roster::of(ctx.inv)).await?;
        // The rest converges as deploy would: members that leave etcd, then the
        // files every host has (pg_hba, etcd endpoints) by reloads.
        conv.gather_and_plan().await?;
        let existing = conv.existing().await?;
        if !existing.members.is_empty() {
            conv.converge_members(&existing.members).await?;
            conv.gather_and_plan().await?;
        }
        conv.etcd(false).await?;
        // The repository's configuration lists the db hosts it backs up from.
        conv.pgbackrest_servers().await?;
        conv.patroni(true).await?;
        conv.haproxy().await?;
        conv.backups().await?;
        // Prometheus's targets follow the inventory (the host's are gone).
        conv.monitoring().await?;
        etcd_ops::keep_apart(ctx).await;
        verify::verify(ctx).await?;
        Ok::<_, Failure>(switchover_to)
    }
    .await;
    let gap = gap::stop_all(probes).await;
    let switchover_to = result?;
    Ok(Report {
        host: t.clone(),
        took_secs: started.elapsed().as_secs_f64(),
        switchover_to,
        gap,
        data_kept: !args.wipe,
    })
}

fn print_report(ctx: &Ctx<'_>, r: &Report) {
    let ui = &ctx.ui;
    ui.line("");
    ui.line(format!(
        "{} removed from cluster {} in {:.1}s{}.",
        r.host,
        ctx.inv.cluster.cluster_name,
        r.took_secs,
        if r.data_kept {
            " (its data directory is kept)"
        } else {
            ""
        }
    ));
    if let Some(to) = &r.switchover_to {
        ui.line(format!("  leadership handed over to {to} first"));
    }
    match &r.gap {
        Some(g) if g.no_gap() => ui.line("  write gap on the write port: none"),
        Some(g) => ui.line(format!("  write gap on the write port: {}", g.summary())),
        None => ui.line("  write gap: not measured (no router)"),
    }
    if ui.json() {
        println!("{}", json!({"ok": true, "remove": r}));
    }
}
