//! `pgha upgrade`: bring every host's stack packages to the versions the inventory
//! asks for (apt's candidates under its `apt_pins`), one node at a time, with the
//! cluster serving throughout.
//!
//! Read-only first: what is installed, what apt would install, what runs. Then,
//! under the cluster lock: leftovers of an interrupted run cleared, every package
//! downloaded, the gates checked; then etcd followers and the etcd leader; database
//! replicas one at a time (drained, upgraded, restarted, streaming again); a
//! switchover and the old leader; Patroni-only changes under pause; exporters;
//! routers one at a time; verification. The write port is probed throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::commands::args::UpgradeArgs;
use crate::commands::ssh_options;
use crate::commands::{finish, load_inventory, load_pki};
use crate::engine::desired;
use crate::engine::upgrade::{Component, HostWork, PackageChange, UpgradePlan};
use crate::error::{Exit, Failure};
use crate::ops::gap::{self, Gap};
use crate::ops::lock::ClusterLock;
use crate::ops::marks;
use crate::ops::patroni as actions;
use crate::ops::stack::{Policies, Stack};
use crate::ops::switchover::SwitchoverReport;
use crate::ops::{Ctx, etcd as etcd_ops, verify};
use crate::probe::patroni;
use crate::ui::OutputFormat;
use crate::ui::Ui;

pub async fn command(args: UpgradeArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, false)?;
    inv.require_secrets().map_err(Failure::error)?;
    let ui = Ui::new(output);
    let pki = load_pki(&inv, false)?;
    let mut ctx = Ctx::new(&inv, pki, &ui);
    let ssh = ssh_options(&args.ssh, &inv);
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        Upgrade::new(&ctx, args.check, args.force, args.lock.duration())
            .await?
            .run()
            .await
    }
    .await;
    ctx.close().await;
    finish(&inv, &ui, result, !args.check)
}

/// What the upgrade did (text and `--output json`).
#[derive(Debug, Serialize)]
struct Report {
    hosts: BTreeMap<String, Vec<PackageChange>>,
    restarted: BTreeMap<String, Vec<Component>>,
    switchovers: Vec<SwitchoverReport>,
    /// The longest write gap the routers' write port saw during the whole run.
    gap: Option<Gap>,
    took_secs: f64,
}

struct Upgrade<'c, 'a> {
    ctx: &'c Ctx<'a>,
    /// The inventory's stack on every host (ops::stack; its rolling steps: ops::rolling).
    stack: Stack<'c, 'a>,
    check: bool,
    started: Instant,
    lock_wait: Duration,
    /// Upgrade a cluster paused or tagged by someone else (pgha clears it).
    force: bool,
}

impl<'c, 'a> Upgrade<'c, 'a> {
    async fn new(
        ctx: &'c Ctx<'a>,
        check: bool,
        force: bool,
        lock_wait: Duration,
    ) -> Result<Self, Failure> {
        Ok(Upgrade {
            ctx,
            stack: Stack::new(ctx).await?,
            check,
            started: Instant::now(),
            lock_wait,
            force,
        })
    }

    /// The upgrade, top to bottom.
    async fn run(&self) -> Result<Exit, Failure> {
        let (plan, policies) = self.stack.plan().await?;
        let leftovers = self.leftovers().await?;
        self.show_plan(&plan, &policies, &leftovers);
        if self.check {
            return Ok(Exit::Ok);
        }
        if plan.is_empty() && !leftovers.leftovers() {
            if leftovers.foreign() {
                self.ctx.ui.line(format!(
                    "Not pgha's, left alone: {}",
                    foreign_text(&leftovers)
                ));
            }
            self.ctx
                .ui
                .line("Nothing to upgrade: every host runs the versions the inventory asks for.");
            if self.ctx.ui.json() {
                println!("{}", json!({"ok": true, "changed": 0, "upgraded": {}}));
            }
            return Ok(Exit::Ok);
        }
        if leftovers.foreign() && !self.force {
            return Err(Failure::error(format!(
                "upgrade refused, nothing was changed: {} (pgha did not set this: someone may be \
                 doing maintenance). Upgrade when they are done and the cluster is resumed and \
                 untagged, or pass --force to upgrade anyway: pgha then clears that pause and \
                 those tags as it goes",
                foreign_text(&leftovers)
            )));
        }
        let lock = ClusterLock::acquire(self.ctx, "pgha upgrade", true, self.lock_wait).await?;
        // A killed run's PAUSE would hold pooled clients through this one.
        crate::ops::pool::resume_interrupted(self.ctx).await;
        let result = self.apply(plan).await;
        lock.release(self.ctx).await;
        let report = result?;
        self.print_report(&report);
        Ok(Exit::Ok)
    }

    /// Maintenance tags and a pause set now, sorted by pgha's record into its own
    /// leftovers (an interrupted run) and what someone else set.
    async fn leftovers(&self) -> Result<marks::Found, Failure> {
        let mut tagged = Vec::new();
        let mut paused = false;
        for h in self.ctx.db_hosts() {
            if let Ok(st) = patroni::status(&self.ctx.ep.net, &self.ctx.api(&h)).await {
                if actions::work_tags().keys().any(|t| st["tags"][t] == true) {
                    tagged.push(h.clone());
                }
                paused |= st["pause"] == true;
            }
        }
        let record = marks::read(self.ctx).await?;
        Ok(marks::classify(&record, &tagged, paused))
    }

    fn show_plan(&self, plan: &UpgradePlan, policies: &Policies, leftovers: &marks::Found) {
        let ui = &self.ctx.ui;
        ui.line("");
        ui.line(if self.check {
            "UPGRADE PLAN (--check: nothing is changed)"
        } else {
            "UPGRADE PLAN"
        });
        let mut hosts = serde_json::Map::new();
        if self.stack.docker {
            for (h, w) in &plan.work {
                let rows: Vec<serde_json::Value> = w
                    .packages
                    .iter()
                    .map(|p| {
                        ui.host(
                            h,
                            format!("{:<28} {} -> {}", p.package, p.installed, p.target),
                        );
                        json!({"container": p.package, "running": p.installed, "target": p.target, "change": true})
                    })
                    .collect();
                hosts.insert(h.clone(), json!(rows));
            }
        }
        for (h, policy) in policies {
            let mut rows = Vec::new();
            for (c, pkgs) in self.stack.role_packages(h) {
                for p in pkgs {
                    let Some(pol) = policy.get(&p) else { continue };
                    let Some(installed) = &pol.installed else {
                        continue;
                    };
                    let target = pol.candidate.clone().unwrap_or_else(|| installed.clone());
                    let change = *installed != target;
                    ui.host(
                        h,
                        format!(
                            "{p:<28} {installed} {} {target}",
                            if change { "->" } else { "==" }
                        ),
                    );
                    rows.push(json!({"component": c, "package": p, "installed": installed, "target": target, "change": change}));
                }
            }
            for s in &plan.work[h].stale {
                ui.host(h, format!("restart: {s}"));
            }
            hosts.insert(h.clone(), json!(rows));
        }
        if leftovers.leftovers() {
            ui.line(format!(
                "Left by an interrupted pgha run, cleared first: {}{}",
                if leftovers.ours_tagged.is_empty() {
                    String::new()
                } else {
                    format!("tags on {} ", leftovers.ours_tagged.join(", "))
                },
                if leftovers.ours_paused {
                    "(cluster paused)"
                } else {
                    ""
                }
            ));
        }
        if leftovers.foreign() {
            ui.line(format!(
                "Not set by pgha: {}{}",
                foreign_text(leftovers),
                if self.force {
                    " (--force: cleared as the upgrade goes)"
                } else {
                    " (refused without --force)"
                }
            ));
        }
        let steps = plan.steps();
        if steps.is_empty() {
            ui.line(if self.stack.docker {
                "No container changes: every container runs the inventory's image and spec."
            } else {
                "No package changes."
            });
        } else {
            ui.line("Order:");
            for (i, s) in steps.iter().enumerate() {
                ui.line(format!("  {}. {s}", i + 1));
            }
            ui.line(format!("Switchovers expected: {}", plan.switchovers));
        }
        if self.check && ui.json() {
            println!(
                "{}",
                json!({"check": true, "hosts": hosts, "steps": steps, "switchovers": plan.switchovers, "leftovers": leftovers})
            );
        }
    }

    /// Everything that changes hosts, under the lock.
    async fn apply(&self, plan: UpgradePlan) -> Result<Report, Failure> {
        // One Ctrl-C listener for the whole run: before anything is installed it just
        // stops; during the steps it stops after clearing tags and pause.
        let interrupted = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        tokio::pin!(interrupted);
        let stopped = || Failure::error("interrupted by Ctrl-C; the cluster lock was released");
        let plan = tokio::select! {
            r = async {
                // Judged again under the lock (the record changes only under it).
                let leftovers = self.leftovers().await?;
                if leftovers.foreign() && !self.force {
                    return Err(Failure::error(format!(
                        "upgrade stopped before any change: {} meanwhile (not by pgha); pass \
                         --force to upgrade anyway",
                        foreign_text(&leftovers)
                    )));
                }
                self.clear_leftovers(&leftovers).await?;
                let plan = self.stack.prepare(plan).await?;
                self.stack.gates(&plan).await?;
                Ok::<_, Failure>(plan)
            } => r?,
            _ = &mut interrupted => return Err(stopped()),
        };
        let probes = gap::start_all(&self.ctx.ep.net, self.ctx.ep.write_ports());
        let mut switchovers = Vec::new();
        let steps = tokio::select! {
            r = self.stack.steps(&plan, &mut switchovers) => r,
            _ = &mut interrupted => Err(stopped()),
        };
        if steps.is_err() {
            if self.ctx.lock_lost() {
                // Without the lock nothing may change: the next run clears what is
                // left, from pgha's record.
                self.ctx.ui.warn(
                    "the cluster lock was lost: tags and pause pgha set are left as they are; \
                     the next `pgha upgrade` clears them",
                );
            } else {
                // Leave nothing set that pgha set: tags cleared, pause lifted.
                self.cleanup().await;
            }
        }
        let gap = gap::stop_all(probes).await;
        steps?;
        etcd_ops::keep_apart(self.ctx).await;
        verify::verify(self.ctx).await?;
        let (after, _) = self.stack.plan().await?;
        let unfinished: Vec<&HostWork> = after.work.values().filter(|w| !w.is_empty()).collect();
        if !unfinished.is_empty() {
            return Err(Failure::error(format!(
                "after the upgrade, still to do: {}",
                unfinished
                    .iter()
                    .map(|w| format!("{}: {:?} {:?}", w.host, w.specs(), w.stale))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Ok(Report {
            hosts: plan
                .work
                .iter()
                .filter(|(_, w)| !w.packages.is_empty())
                .map(|(h, w)| (h.clone(), w.packages.clone()))
                .collect(),
            restarted: plan
                .work
                .iter()
                .filter(|(_, w)| !w.restart.is_empty())
                .map(|(h, w)| (h.clone(), w.restart.iter().copied().collect()))
                .collect(),
            switchovers,
            gap,
            took_secs: self.started.elapsed().as_secs_f64(),
        })
    }

    /// pgha's leftovers (and, with --force, what someone else set) cleared; records
    /// of what is no longer set dropped.
    async fn clear_leftovers(&self, l: &marks::Found) -> Result<(), Failure> {
        let mut tagged = l.ours_tagged.clone();
        if self.force {
            tagged.extend(l.foreign_tagged.iter().cloned());
        }
        for h in &tagged {
            actions::undrain(self.ctx, h).await?;
            self.ctx.ui.host(h, "tags left by an earlier run cleared");
        }
        if l.ours_paused || (self.force && l.foreign_paused) {
            actions::set_pause(self.ctx, false).await?;
        }
        if l.stale {
            let keep: Vec<String> = tagged;
            marks::update(self.ctx, |m| {
                m.tagged.retain(|h| keep.contains(h));
                m.paused = false;
            })
            .await?;
        }
        Ok(())
    }

    /// Best effort after a failure: what pgha recorded setting is cleared (tags,
    /// pause), nothing else.
    async fn cleanup(&self) {
        let record = match marks::read(self.ctx).await {
            Ok(m) => m,
            Err(e) => {
                self.ctx.ui.warn(format!(
                    "after the failure, pgha's record of the tags and pause it set could not be \
                     read ({e}); the next `pgha upgrade` clears them"
                ));
                return;
            }
        };
        for h in &record.tagged {
            let cleared = async {
                actions::set_tags(self.ctx, h, &desired::default_tags()).await?;
                marks::update(self.ctx, |m| {
                    m.tagged.remove(h);
                })
                .await
            };
            if let Err(e) = cleared.await {
                self.ctx
                    .ui
                    .warn(format!("{h}: clearing tags after the failure: {e}"));
            }
        }
        if record.paused
            && let Err(e) = actions::set_pause(self.ctx, false).await
        {
            self.ctx
                .ui
                .warn(format!("resuming the cluster after the failure: {e}"));
        }
    }

    fn print_report(&self, r: &Report) {
        let ui = &self.ctx.ui;
        ui.line("");
        ui.line(format!("Upgrade done in {:.1}s.", r.took_secs));
        for (h, changes) in &r.hosts {
            for c in changes {
                ui.host(h, format!("{} {} -> {}", c.package, c.installed, c.target));
            }
        }
        for (h, cs) in &r.restarted {
            ui.host(
                h,
                format!(
                    "restarted {}",
                    cs.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        ui.line(format!("  switchovers: {}", r.switchovers.len()));
        match &r.gap {
            Some(g) => ui.line(format!(
                "  longest write gap on the routers' write port: {}",
                g.summary()
            )),
            None => ui.line("  write gap: not measured (no router)"),
        }
        if ui.json() {
            println!("{}", json!({"ok": true, "upgrade": r}));
        }
    }
}

/// What someone other than pgha set, in words.
fn foreign_text(f: &marks::Found) -> String {
    let mut parts = Vec::new();
    if f.foreign_paused {
        parts.push("the cluster is paused".to_string());
    }
    if !f.foreign_tagged.is_empty() {
        parts.push(format!(
            "{} tagged nofailover/noloadbalance/nosync",
            f.foreign_tagged.join(", ")
        ));
    }
    parts.join(" and ")
}
