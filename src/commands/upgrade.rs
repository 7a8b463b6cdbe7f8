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
use crate::engine::apply;
use crate::engine::desired::{self, HostDesired};
use crate::engine::facts;
use crate::engine::roles::{Library, Stage};
use crate::engine::upgrade::{
    self, Component, HostWork, PackageChange, PackagePolicy, Roles, Running, UpgradePlan,
};
use crate::error::{Exit, Failure};
use crate::install;
use crate::inventory::InstallMethod;
use crate::ops::gap::{self, Gap};
use crate::ops::health::{self, Level};
use crate::ops::images;
use crate::ops::lock::ClusterLock;
use crate::ops::marks;
use crate::ops::patroni::{self as actions, SwitchoverOpts, SwitchoverReport};
use crate::ops::run::host_failed;
use crate::ops::{Ctx, etcd as etcd_ops, verify, waits};
use crate::probe::patroni;
use crate::ssh::Cmd;
use crate::ui::OutputFormat;
use crate::ui::Ui;
use crate::wait::until;

/// Bound for the cluster to be healthy before the upgrade starts.
const GATE: Duration = Duration::from_secs(60);
const MEMBER: Duration = Duration::from_secs(300);

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
    check: bool,
    desired: BTreeMap<String, HostDesired>,
    /// install_method docker: the upgrade re-creates containers on new images
    /// instead of installing packages.
    docker: bool,
    archive: images::Archive,
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
        let docker = ctx.inv.cluster.install_method == InstallMethod::Docker;
        // Under docker the wanted containers name image ids (push: this machine's;
        // a missing image fails here, before any change).
        let image_ids = if docker {
            images::local_ids(&ctx.inv.cluster).await?
        } else {
            BTreeMap::new()
        };
        let lib = Library::load().map_err(|e| Failure::error(format!("{e:#}")))?;
        let desired = desired::desired_state_with(
            ctx.inv,
            &lib,
            &desired::Inputs {
                image_ids,
                pki: ctx.pki.clone(),
            },
        )
        .map_err(|e| Failure::error(format!("{e:#}")))?
        .into_iter()
        .map(|d| (d.host.clone(), d))
        .collect();
        Ok(Upgrade {
            ctx,
            check,
            desired,
            docker,
            archive: Default::default(),
            started: Instant::now(),
            lock_wait,
            force,
        })
    }

    /// The upgrade, top to bottom.
    async fn run(&self) -> Result<Exit, Failure> {
        let (plan, policies) = self.plan().await?;
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
        let result = self.apply(plan).await;
        lock.release(self.ctx).await;
        let report = result?;
        self.print_report(&report);
        Ok(Exit::Ok)
    }

    /// A role of a host's desired state.
    fn role(
        &self,
        host: &str,
        role: &str,
    ) -> Result<&crate::engine::desired::DesiredRole, Failure> {
        self.desired[host]
            .role(role)
            .ok_or_else(|| Failure::error(format!("{host} has no {role} role")))
    }

    /// Packages each role owns on a host (and installed companions), by component.
    fn role_packages(&self, host: &str) -> BTreeMap<Component, Vec<String>> {
        self.desired[host]
            .roles
            .iter()
            .filter_map(|r| {
                let c = Component::from_role(&r.name)?;
                let mut p = r.packages.clone();
                p.extend(r.upgrade_with.clone());
                Some((c, p))
            })
            .collect()
    }

    /// The content of /etc/apt/preferences.d/pgha the inventory asks for.
    fn preferences(&self, host: &str) -> String {
        self.desired[host]
            .files()
            .find(|f| f.path == "/etc/apt/preferences.d/pgha")
            .map(|f| String::from_utf8_lossy(&f.content).into_owned())
            .unwrap_or_default()
    }

    /// Read-only: every host's policy under the inventory's pins and what it runs,
    /// then the ordered plan.
    async fn plan(
        &self,
    ) -> Result<
        (
            UpgradePlan,
            BTreeMap<String, BTreeMap<String, PackagePolicy>>,
        ),
        Failure,
    > {
        let phase = self.ctx.ui.phase("versions");
        if self.docker {
            let work = self.container_work().await?;
            let plan = upgrade::UpgradePlan {
                containers: true,
                ..upgrade::plan(work, &self.roles().await?)
            };
            phase.done(format!(
                "{} host(s) with work",
                plan.work.values().filter(|w| !w.is_empty()).count()
            ));
            return Ok((plan, BTreeMap::new()));
        }
        let c = &self.ctx.inv.cluster;
        let mut futs = Vec::new();
        for h in self.ctx.all_hosts() {
            let pkgs: Vec<String> = self.role_packages(&h).into_values().flatten().collect();
            let d = &self.desired[&h];
            let mut units: Vec<(String, String)> = Vec::new();
            if d.role("etcd").is_some() {
                units.push(("etcd".into(), String::new()));
            }
            if d.role("exporter").is_some() {
                units.push(("prometheus-postgres-exporter".into(), String::new()));
            }
            if d.role("haproxy").is_some() {
                units.push(("haproxy".into(), String::new()));
            }
            if d.role("postgres").is_some() {
                units.push((
                    "postgres".into(),
                    format!("{}/postmaster.pid", c.postgresql_data_dir),
                ));
            }
            let unit_refs: Vec<(&str, &str)> = units
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let script = upgrade::facts_script(&pkgs, &self.preferences(&h), &unit_refs);
            let session = self.ctx.session(&h)?.clone();
            let api = self.ctx.ep.api_of(&h).map(str::to_string);
            futs.push(async move {
                let out = session
                    .exec(&Cmd::root(script).timeout(Duration::from_secs(120)))
                    .await
                    .and_then(|o| o.ok())
                    .map_err(|e| host_failed(format!("{h}: reading package versions: {e}")))?;
                let text = out.stdout_str();
                let status = match api {
                    Some(a) => patroni::status(&self.ctx.ep.net, &a).await.ok(),
                    None => None,
                };
                Ok::<_, Failure>((h, text, status))
            });
        }
        let mut work = BTreeMap::new();
        let mut policies = BTreeMap::new();
        for r in futures_util::future::join_all(futs).await {
            let (h, text, status) = r?;
            let policy = upgrade::parse_policy(&text);
            let replaced = upgrade::replaced(&text);
            let running = Running {
                replaced_binary: replaced
                    .iter()
                    .filter_map(|u| match u.as_str() {
                        "etcd" => Some(Component::Etcd),
                        "prometheus-postgres-exporter" => Some(Component::Exporter),
                        "haproxy" => Some(Component::Haproxy),
                        "postgres" => Some(Component::Postgres),
                        _ => None,
                    })
                    .collect(),
                postgres: status
                    .as_ref()
                    .and_then(|s| s["server_version"].as_u64())
                    .map(|n| format!("{}.{}", n / 10000, n % 10000)),
                patroni: status
                    .as_ref()
                    .and_then(|s| s["patroni"]["version"].as_str().map(str::to_string)),
            };
            work.insert(
                h.clone(),
                upgrade::host_work(&h, &self.role_packages(&h), &policy, &running),
            );
            policies.insert(h, policy);
        }
        let plan = upgrade::plan(work, &self.roles().await?);
        phase.done(format!(
            "{} host(s) with work",
            plan.work.values().filter(|w| !w.is_empty()).count()
        ));
        Ok((plan, policies))
    }

    /// Who leads Patroni and etcd now.
    async fn roles(&self) -> Result<Roles, Failure> {
        let view = patroni::cluster_any(&self.ctx.ep.net, &self.ctx.ep.patroni_apis())
            .await
            .map_err(|e| Failure::error(format!("reading Patroni's cluster view: {e}")))?;
        Ok(Roles {
            db: self.ctx.db_hosts(),
            etcd: self.ctx.etcd_hosts(),
            routers: self.ctx.router_hosts(),
            leader: view
                .leader()
                .map(|l| l.name.clone())
                .ok_or_else(|| Failure::error(format!("no running leader: {}", view.summary())))?,
            etcd_leader: etcd_ops::leader(self.ctx).await?,
        })
    }

    /// The containers a host should run, as the upgrade compares them.
    fn wanted_containers(&self, host: &str) -> Vec<upgrade::WantedContainer> {
        self.desired[host]
            .roles
            .iter()
            .filter_map(|r| {
                r.container.as_ref().map(|c| upgrade::WantedContainer {
                    name: c.name.clone(),
                    components: upgrade::container_components(&r.name),
                    spec: c.spec.clone(),
                    image: c.image.clone(),
                    image_id: c.image_id.clone(),
                })
            })
            .collect()
    }

    /// install_method docker: read every host's containers (one round trip each)
    /// and compare them with the inventory's.
    async fn container_work(&self) -> Result<BTreeMap<String, HostWork>, Failure> {
        let facts = self.container_facts().await?;
        Ok(facts
            .iter()
            .map(|(h, f)| {
                (
                    h.clone(),
                    upgrade::container_work(h, &self.wanted_containers(h), &f.containers),
                )
            })
            .collect())
    }

    async fn container_facts(&self) -> Result<BTreeMap<String, facts::HostFacts>, Failure> {
        let mut futs = Vec::new();
        for h in self.ctx.all_hosts() {
            let d = &self.desired[&h];
            let req = facts::FactsRequest {
                containers: d.containers(),
                images: d.images(),
                ..Default::default()
            };
            let session = self.ctx.session(&h)?.clone();
            futs.push(async move {
                let out = session
                    .exec(&Cmd::root(facts::script(&req)).timeout(Duration::from_secs(120)))
                    .await
                    .and_then(|o| o.ok())
                    .map_err(|e| host_failed(format!("{h}: reading containers: {e}")))?;
                let mut f =
                    facts::parse(&h, &out.stdout_str()).map_err(|e| host_failed(e.to_string()))?;
                // Keyed by container name, as the wanted list is.
                let by_service: BTreeMap<String, String> = req.containers.iter().cloned().collect();
                f.containers = std::mem::take(&mut f.containers)
                    .into_iter()
                    .filter_map(|(svc, c)| by_service.get(&svc).map(|n| (n.clone(), c)))
                    .collect();
                Ok::<_, Failure>((h, f))
            });
        }
        futures_util::future::join_all(futs)
            .await
            .into_iter()
            .collect()
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

    fn show_plan(
        &self,
        plan: &UpgradePlan,
        policies: &BTreeMap<String, BTreeMap<String, PackagePolicy>>,
        leftovers: &marks::Found,
    ) {
        let ui = &self.ctx.ui;
        ui.line("");
        ui.line(if self.check {
            "UPGRADE PLAN (--check: nothing is changed)"
        } else {
            "UPGRADE PLAN"
        });
        let mut hosts = serde_json::Map::new();
        if self.docker {
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
            for (c, pkgs) in self.role_packages(h) {
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
            ui.line(if self.docker {
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
                let plan = self.prepare(plan).await?;
                self.gates(&plan).await?;
                Ok::<_, Failure>(plan)
            } => r?,
            _ = &mut interrupted => return Err(stopped()),
        };
        let probes = gap::start_all(&self.ctx.ep.net, self.ctx.ep.write_ports());
        let mut switchovers = Vec::new();
        let steps = tokio::select! {
            r = self.steps(&plan, &mut switchovers) => r,
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
        let (after, _) = self.plan().await?;
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

    /// apt configuration as the inventory wants it (pins, sources), fresh package
    /// lists, the plan again (new sources can add versions), then every package
    /// downloaded on every host before anything is installed.
    async fn prepare(&self, plan: UpgradePlan) -> Result<UpgradePlan, Failure> {
        if self.docker {
            return self.prepare_images(plan).await;
        }
        let phase = self.ctx.ui.phase("download");
        let hosts: Vec<String> = plan
            .work
            .iter()
            .filter(|(_, w)| !w.packages.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        self.ctx
            .each(
                &hosts,
                "apt configuration and package lists",
                |h, s| async move {
                    let files: Vec<&desired::DesiredFile> = self.desired[&h]
                        .files()
                        .filter(|f| f.role == "common" && f.stage == Stage::PreInstall)
                        .collect();
                    let mut changed = Vec::new();
                    for f in files {
                        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&f.content));
                        if s.sha256(&f.path).await?.as_deref() != Some(sha.as_str()) {
                            changed.push(f);
                        }
                    }
                    apply::write_files(&s, &changed).await?;
                    apply::run(&s, "apt-get -q -o DPkg::Lock::Timeout=300 update").await?;
                    Ok(changed.len() as u32)
                },
            )
            .await?;
        let (plan, _) = self.plan().await?;
        phase.set("downloading every target package");
        let specs: BTreeMap<String, Vec<String>> = plan
            .work
            .iter()
            .map(|(h, w)| (h.clone(), w.specs()))
            .collect();
        self.ctx
            .each(&hosts, "download packages", |h, s| {
                let specs = specs[&h].clone();
                async move {
                    apply::install_exact(&s, &specs, true).await?;
                    Ok(0)
                }
            })
            .await?;
        phase.done(format!("{} host(s) have every package", hosts.len()));
        Ok(plan)
    }

    /// install_method docker: every image a host's new containers need is on it
    /// (sent or pulled) before any container is touched.
    async fn prepare_images(&self, plan: UpgradePlan) -> Result<UpgradePlan, Failure> {
        let phase = self.ctx.ui.phase("images");
        let facts = self.container_facts().await?;
        let hosts: Vec<String> = plan
            .work
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        let missing: BTreeMap<String, Vec<String>> = hosts
            .iter()
            .map(|h| {
                let mut refs: Vec<String> = self
                    .wanted_containers(h)
                    .into_iter()
                    .filter(|w| {
                        facts[h]
                            .images
                            .get(&w.image)
                            .is_none_or(|id| !w.image_id.is_empty() && *id != w.image_id)
                    })
                    .map(|w| w.image)
                    .collect();
                refs.sort();
                refs.dedup();
                (h.clone(), refs)
            })
            .collect();
        self.ctx
            .each(&hosts, "bring images", |h, s| {
                let refs = missing[&h].clone();
                async move {
                    images::ensure_on(
                        &self.ctx.inv.cluster,
                        &h,
                        &s,
                        &refs,
                        &self.archive,
                        &self.ctx.ui,
                    )
                    .await?;
                    Ok(0)
                }
            })
            .await?;
        phase.done(format!("{} host(s) have every image", hosts.len()));
        Ok(plan)
    }

    /// Refuse before any package is installed unless the cluster is healthy, etcd
    /// has every member healthy, and every host has room.
    async fn gates(&self, plan: &UpgradePlan) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("gates");
        let snap = until("a healthy cluster to upgrade", GATE, || async {
            let s = health::snapshot(self.ctx).await;
            if s.verdict.level == Level::Healthy && s.etcd.iter().all(|e| e.healthy) {
                Ok(s)
            } else {
                Err(s.verdict.line())
            }
        })
        .await
        .map_err(|e| {
            Failure::error(format!(
                "upgrade refused, nothing was installed: the cluster is not healthy ({})",
                e.last
            ))
        })?;
        let min = crate::engine::preflight::MIN_FREE_KIB;
        for h in plan.work.keys() {
            let out = self
                .ctx
                .run_on(
                    h,
                    "free space",
                    "df -Pk /var/lib /var/cache/apt | awk 'NR>1{print $4}'",
                )
                .await?;
            if let Some(free) = out
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .min()
                && free < min
            {
                return Err(host_failed(format!(
                    "upgrade refused, nothing was installed: {h} has {} MiB free in /var, {} MiB needed",
                    free / 1024,
                    min / 1024
                )));
            }
        }
        phase.done(format!(
            "healthy: leader {}, etcd {} of {} healthy, room on every host",
            snap.leader.unwrap_or_default(),
            snap.etcd.iter().filter(|e| e.healthy).count(),
            snap.etcd.len()
        ));
        Ok(())
    }

    async fn steps(
        &self,
        plan: &UpgradePlan,
        switchovers: &mut Vec<SwitchoverReport>,
    ) -> Result<(), Failure> {
        for h in &plan.etcd {
            self.etcd_member(h, &plan.work[h]).await?;
        }
        for h in &plan.db_rolling {
            // The leader is asked from a fresh view: it may have moved.
            let leader = waits::wait_leader(&self.ctx.ep, None, MEMBER).await?;
            if *h == leader {
                let phase = self.ctx.ui.phase("switchover");
                let r = actions::switchover(
                    self.ctx,
                    &SwitchoverOpts {
                        to: None,
                        max_lag: self.ctx.inv.cluster.patroni_maximum_lag_on_failover,
                        candidate_wait: MEMBER,
                    },
                )
                .await?;
                phase.done(format!("{} -> {}", r.from, r.to));
                switchovers.push(r);
            }
            self.db_member(h, &plan.work[h]).await?;
        }
        if !plan.patroni_only.is_empty() {
            self.patroni_under_pause(plan).await?;
        }
        for h in &plan.exporter_only {
            self.install_and_restart(h, &plan.work[h]).await?;
        }
        for h in &plan.routers {
            self.router(h, &plan.work[h]).await?;
        }
        Ok(())
    }

    /// Install a host's packages (services are not started by package scripts).
    async fn install(&self, host: &str, w: &HostWork) -> Result<(), Failure> {
        // Docker: the images are on the host already (prepare); the restart
        // re-creates the container on the new one.
        if w.packages.is_empty() || self.docker {
            return Ok(());
        }
        self.ctx
            .ensure_locked(&format!("{host}: install {}", w.specs().join(" ")))
            .await?;
        apply::install_exact(self.ctx.session(host)?, &w.specs(), false)
            .await
            .map_err(|e| host_failed(format!("{host}: install {}: {e:#}", w.specs().join(" "))))?;
        self.ctx
            .ui
            .host(host, format!("installed {}", w.specs().join(" ")));
        self.ctx.ui.changed(host, 1);
        Ok(())
    }

    async fn etcd_member(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("etcd");
        phase.set(format!("{h}: waiting for every member to be healthy"));
        waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        let leader = etcd_ops::leader(self.ctx).await?;
        if leader == h
            && let Some(to) = self.ctx.etcd_hosts().into_iter().find(|m| m != h)
        {
            phase.set(format!("moving etcd leadership {h} -> {to}"));
            etcd_ops::move_leader(self.ctx, h, &to).await?;
        }
        self.install(h, w).await?;
        phase.set(format!("restarting etcd on {h}"));
        self.ctx
            .run_on(
                h,
                "restart etcd",
                install::restart(self.role(h, "etcd")?, true),
            )
            .await?;
        waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        phase.done(format!("{h} upgraded; quorum with every member healthy"));
        Ok(())
    }

    /// One database member: drained, upgraded, restarted, streaming again, back.
    async fn db_member(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("postgres");
        phase.set(format!("draining {h}"));
        actions::drain(self.ctx, h).await?;
        crate::testpoint::pause("upgrade:drained").await;
        self.install_and_restart(h, w).await?;
        phase.set(format!("{h}: back into service"));
        actions::undrain(self.ctx, h).await?;
        phase.done(format!("{h} upgraded and streaming"));
        Ok(())
    }

    /// Install, then restart what changed and wait until it runs the new versions.
    async fn install_and_restart(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        self.install(h, w).await?;
        crate::testpoint::pause("upgrade:installed").await;
        if w.touches(Component::Patroni) {
            // Restarting Patroni on a drained replica restarts its PostgreSQL too.
            self.ctx
                .run_on(
                    h,
                    "restart patroni",
                    install::restart(self.role(h, "patroni")?, false),
                )
                .await?;
            self.ctx.ui.host(h, "Patroni restarted");
        } else if w.touches(Component::Postgres) {
            actions::restart_member(self.ctx, h).await?;
        }
        if w.touches(Component::Exporter) {
            self.ctx
                .run_on(
                    h,
                    "restart postgres_exporter",
                    install::restart(self.role(h, "exporter")?, false),
                )
                .await?;
            self.ctx.ui.host(h, "postgres_exporter restarted");
        }
        if w.touches(Component::Postgres) || w.touches(Component::Patroni) {
            let want_pg = self.target_upstream(w, Component::Postgres);
            let want_patroni = self.target_upstream(w, Component::Patroni);
            let api = self.ctx.api(h);
            until(&format!("{h} to run the new versions"), MEMBER, || async {
                let st = patroni::status(&self.ctx.ep.net, &api).await?;
                let pg = st["server_version"]
                    .as_u64()
                    .map(|n| format!("{}.{}", n / 10000, n % 10000));
                let pat = st["patroni"]["version"].as_str().map(str::to_string);
                let ok = st["state"] == "running"
                    && want_pg.as_ref().is_none_or(|v| pg.as_ref() == Some(v))
                    && want_patroni
                        .as_ref()
                        .is_none_or(|v| pat.as_ref() == Some(v));
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "state {}, PostgreSQL {pg:?}, Patroni {pat:?}",
                        st["state"]
                    ))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The upstream version a component's main package goes to (None: unchanged).
    fn target_upstream(&self, w: &HostWork, c: Component) -> Option<String> {
        let main = self.role_packages(&w.host).get(&c)?.first()?.clone();
        w.packages
            .iter()
            .find(|p| p.package == main)
            .map(|p| upgrade::upstream(&p.target).to_string())
    }

    /// Patroni packages only: pause (PostgreSQL keeps running and is not managed),
    /// restart Patroni member by member on the new version, resume.
    async fn patroni_under_pause(&self, plan: &UpgradePlan) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("patroni");
        actions::set_pause(self.ctx, true).await?;
        for h in &plan.patroni_only {
            phase.set(format!("{h}: Patroni (PostgreSQL keeps running)"));
            let w = &plan.work[h];
            self.install(h, w).await?;
            self.ctx
                .run_on(
                    h,
                    "restart patroni",
                    install::restart(self.role(h, "patroni")?, false),
                )
                .await?;
            let want = self.target_upstream(w, Component::Patroni);
            let api = self.ctx.api(h);
            until(
                &format!("Patroni on {h} to answer on its new version"),
                MEMBER,
                || async {
                    let st = patroni::status(&self.ctx.ep.net, &api).await?;
                    let v = st["patroni"]["version"].as_str().map(str::to_string);
                    if want.as_ref().is_none_or(|w| v.as_ref() == Some(w)) {
                        Ok(())
                    } else {
                        Err(format!("Patroni {v:?}"))
                    }
                },
            )
            .await?;
            if w.touches(Component::Exporter) {
                self.ctx
                    .run_on(
                        h,
                        "restart postgres_exporter",
                        install::restart(self.role(h, "exporter")?, false),
                    )
                    .await?;
            }
        }
        actions::set_pause(self.ctx, false).await?;
        waits::wait_patroni_healthy(&self.ctx.ep, &self.ctx.db_hosts(), MEMBER).await?;
        phase.done(format!(
            "Patroni upgraded on {}",
            plan.patroni_only.join(", ")
        ));
        Ok(())
    }

    /// A router: the new package, then a reload (the master process re-executes the
    /// new binary; established sessions stay with the old workers until they end).
    async fn router(&self, h: &str, w: &HostWork) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("haproxy");
        self.install(h, w).await?;
        let role = self.role(h, "haproxy")?;
        if self.docker {
            // A new image is a new container: its sessions end (a second router
            // keeps serving meanwhile).
            phase.set(format!("{h}: re-creating the HAProxy container"));
            self.ctx
                .run_on(h, "re-create haproxy", install::restart(role, false))
                .await?;
        } else {
            phase.set(format!("{h}: reload"));
            self.ctx
                .run_on(h, "reload haproxy", install::reload(role))
                .await?;
        }
        let check = format!("p={}; readlink /proc/$p/exe", install::main_pid(role));
        until(
            &format!("HAProxy on {h} to run the new binary"),
            MEMBER,
            || async {
                let exe = self
                    .ctx
                    .run_on(h, "haproxy binary", check.clone())
                    .await
                    .map_err(|f| f.message)?;
                if exe.trim().ends_with("(deleted)") {
                    Err(exe.trim().to_string())
                } else {
                    Ok(())
                }
            },
        )
        .await?;
        let view = patroni::cluster_any(&self.ctx.ep.net, &self.ctx.ep.patroni_apis())
            .await
            .map_err(Failure::error)?;
        let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
        let replicas: Vec<String> = self
            .ctx
            .db_hosts()
            .into_iter()
            .filter(|x| *x != leader)
            .collect();
        waits::wait_haproxy(&self.ctx.ep, &leader, &replicas, MEMBER).await?;
        phase.done(format!("{h} upgraded; backends match Patroni"));
        Ok(())
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
