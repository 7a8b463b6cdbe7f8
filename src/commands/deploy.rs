//! `pgha deploy`: bare hosts -> verified cluster, and converging re-runs.
//!
//! Facts from every host in one round trip each, a pure plan, then phases separated
//! by the barriers the cluster needs: packages everywhere in parallel; etcd members
//! started together until quorum is proven; Patroni on the first db host until it
//! leads, then the others until they stream; dynamic configuration (and a rolling
//! restart when it needs one); roles; exporters; HAProxy; verification.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::cli::{DeployArgs, OutputFormat, SshArgs};
use crate::commands::preflight::{limit_refusals, preflight};
use crate::commands::{finish, load_inventory};
use crate::engine::apply;
use crate::engine::desired::{self, HostDesired};
use crate::engine::facts::{self, FactsRequest, HostFacts, SqlFacts, SqlFactsRequest};
use crate::engine::plan::{self, Action, FileReason, HostPlan, SqlChange};
use crate::engine::roles::{Library, Notify, Stage};
use crate::error::{Exit, Failure};
use crate::inventory::{InstallMethod, Inventory};
use crate::ops::lock::ClusterLock;
use crate::ops::run::{host_failed, ssh_options};
use crate::ops::{Ctx, patroni as actions, verify, waits};
use crate::probe::{etcd, patroni};
use crate::ssh::{Cmd, SshOptions, shell_quote};
use crate::ui::Ui;

/// Deadlines of the rollout's barriers.
const ETCD_QUORUM: Duration = Duration::from_secs(90);
const LEADER: Duration = Duration::from_secs(180);
const REPLICAS: Duration = Duration::from_secs(300);
const EXPORTERS: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub check: bool,
    pub diff: bool,
    pub limit: Vec<String>,
}

pub async fn command(args: DeployArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = load_inventory(&args.inventory, !args.check)?;
    let opts = DeployOptions {
        check: args.check,
        diff: args.diff,
        limit: args.limit.clone(),
    };
    let ssh = ssh_options(&args.ssh, &inv);
    deploy(&inv, &opts, ssh, &Ui::new(output)).await
}

/// Deploy the cluster described by the inventory at `inventory` (used by `pgha lab up`).
/// Host keys are verified against the inventory's `pgha_known_hosts` file.
pub async fn run_for_lab(inventory: &Path, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = crate::inventory::load(
        inventory,
        &crate::inventory::LoadOptions {
            write_secrets: true,
        },
    )?;
    let ssh = ssh_options(
        &SshArgs {
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout: 10,
        },
        &inv,
    );
    deploy(&inv, &DeployOptions::default(), ssh, &Ui::new(output)).await
}

pub async fn deploy(
    inv: &Inventory,
    opts: &DeployOptions,
    ssh: SshOptions,
    ui: &Ui,
) -> Result<Exit, Failure> {
    if inv.cluster.install_method == InstallMethod::Docker {
        return Err(Failure::options(
            "install_method: docker is not available in this version of pgha; set install_method: native (Debian packages)",
        ));
    }
    let mut ctx = Ctx::new(inv, ui).with_limit(&opts.limit)?;
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        let mut lock = if opts.check {
            None
        } else {
            let etcd_up = etcd::probe(&ctx.ep.etcd).await.any_healthy();
            Some(ClusterLock::acquire(&ctx, "pgha deploy", etcd_up).await?)
        };
        let r = Deploy::new(&ctx, opts)?.run(lock.as_mut()).await;
        if let Some(l) = lock {
            l.release().await;
        }
        r
    }
    .await;
    ctx.close().await;
    finish(inv, ui, result, !opts.check)
}

/// What a cluster that may already exist looks like before any change.
struct Existing {
    etcd_new: bool,
    patroni_initialized: bool,
    dcs_patch: Option<serde_json::Value>,
    sql_changes: Option<Vec<SqlChange>>,
}

struct Deploy<'c, 'a> {
    ctx: &'c Ctx<'a>,
    inv: &'a Inventory,
    opts: &'c DeployOptions,
    desired: BTreeMap<String, HostDesired>,
    facts: BTreeMap<String, HostFacts>,
    plans: BTreeMap<String, HostPlan>,
}

impl<'c, 'a> Deploy<'c, 'a> {
    fn new(ctx: &'c Ctx<'a>, opts: &'c DeployOptions) -> Result<Self, Failure> {
        let lib = Library::load().map_err(|e| Failure::error(format!("{e:#}")))?;
        let desired = desired::desired_state(ctx.inv, &lib)
            .map_err(|e| Failure::error(format!("{e:#}")))?
            .into_iter()
            .map(|d| (d.host.clone(), d))
            .collect();
        Ok(Deploy {
            ctx,
            inv: ctx.inv,
            opts,
            desired,
            facts: BTreeMap::new(),
            plans: BTreeMap::new(),
        })
    }

    /// The deploy, top to bottom.
    async fn run(mut self, lock: Option<&mut ClusterLock>) -> Result<Exit, Failure> {
        self.gather_and_plan().await?;
        let existing = self.existing().await?;
        self.refuse_unsafe_limit(&existing)?;
        if self.opts.check {
            return self.report_check(&existing).await;
        }
        self.packages().await?;
        self.etcd(existing.etcd_new).await?;
        if let Some(lock) = lock {
            // A first deploy held the lock on the hosts only; etcd exists now.
            lock.add_etcd(&self.ctx.ep.etcd).await?;
        }
        let leader = self.patroni(existing.patroni_initialized).await?;
        // A cluster bootstrapped just now took bootstrap.dcs from the same inventory,
        // but check it: the patch computed before covers only a running cluster.
        let dcs_patch = if existing.patroni_initialized {
            existing.dcs_patch
        } else {
            self.dcs_patch().await
        };
        self.dynamic_config(&leader, dcs_patch).await?;
        self.roles(&leader).await?;
        self.exporters().await?;
        self.haproxy().await?;
        verify::verify(self.ctx).await?;
        for h in &self.inv.hosts {
            let d = &self.desired[&h.name];
            let resources = d.files().count() + d.packages().len() + d.services().len();
            self.ctx.ui.ok(&h.name, resources as u32);
        }
        self.print_connect();
        Ok(Exit::Ok)
    }

    fn facts_request(&self, host: &str) -> FactsRequest {
        let d = &self.desired[host];
        let c = &self.inv.cluster;
        let mut paths = Vec::new();
        if d.role("etcd").is_some() {
            paths.push(format!("{}/member", desired::etcd_data_dir(c)));
        }
        let is_db = d.role("patroni").is_some();
        if is_db {
            paths.push(format!("{}/PG_VERSION", c.postgresql_data_dir));
            paths.push(format!("/etc/postgresql/{}/main", c.postgresql_version));
        }
        FactsRequest {
            packages: d.packages(),
            files: d.files().map(|f| f.path.clone()).collect(),
            units: d.services(),
            paths,
            sql: is_db.then(|| SqlFactsRequest {
                port: c.postgresql_port,
                roles: vec![c.monitor_user.clone(), c.app_user.clone()],
                databases: vec![c.app_database.clone()],
            }),
        }
    }

    /// Facts, preflight (refuses before any change), and a plan per host.
    async fn gather_and_plan(&mut self) -> Result<(), Failure> {
        let requests: BTreeMap<String, FactsRequest> = self
            .ctx
            .all_hosts()
            .into_iter()
            .map(|h| {
                let r = self.facts_request(&h);
                (h, r)
            })
            .collect();
        let (facts, skews) = self.ctx.gather(&requests).await?;
        self.facts = facts;
        let problems = preflight(self.inv, &self.desired, &self.facts, &skews);
        if !problems.is_empty() {
            for p in &problems {
                if let Some((host, _)) = p.split_once(':') {
                    self.ctx.ui.failed(host);
                }
            }
            return Err(host_failed(format!(
                "preflight refused the deploy; nothing was changed:\n  {}",
                problems.join("\n  ")
            )));
        }
        for h in &self.inv.hosts {
            let p = plan::plan_host(
                &self.desired[&h.name],
                &self.facts[&h.name],
                self.inv.cluster.apt_cache_valid_time,
            );
            self.plans.insert(h.name.clone(), p);
        }
        Ok(())
    }

    /// Whether etcd and Patroni exist, and the cluster-wide changes visible now.
    async fn existing(&self) -> Result<Existing, Failure> {
        let c = &self.inv.cluster;
        let etcd_hosts = self.ctx.etcd_hosts();
        let etcd_member_dir = format!("{}/member", desired::etcd_data_dir(c));
        let (with_data, missing): (Vec<&String>, Vec<&String>) = etcd_hosts
            .iter()
            .partition(|h| self.facts[*h].exists(&etcd_member_dir));
        let etcd_new = with_data.is_empty();
        if !etcd_new && !missing.is_empty() {
            let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return Err(host_failed(format!(
                "etcd members {} have no data directory ({etcd_member_dir}) while {} do: a lost member \
                 must be replaced in the running etcd cluster: run `pgha rebuild HOST`; nothing was changed",
                list(&missing),
                list(&with_data)
            )));
        }
        let patroni_initialized = !etcd_new
            && etcd::key_exists(
                &self.ctx.ep.etcd,
                &format!("/service/{}/initialize", c.cluster_name),
            )
            .await
            .unwrap_or(false);
        Ok(Existing {
            etcd_new,
            patroni_initialized,
            dcs_patch: if patroni_initialized {
                self.dcs_patch().await
            } else {
                None
            },
            sql_changes: self
                .facts
                .values()
                .find_map(|f| f.primary_sql.as_ref())
                .map(|sql| plan::plan_sql(c, &self.inv.secrets, sql)),
        })
    }

    fn refuse_unsafe_limit(&self, e: &Existing) -> Result<(), Failure> {
        if !self.ctx.limited() {
            return Ok(());
        }
        let reasons = limit_refusals(
            e.etcd_new || !e.patroni_initialized,
            e.dcs_patch.is_some(),
            e.sql_changes.as_ref().is_some_and(|s| !s.is_empty()),
        );
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Failure::options(format!(
                "--limit is not safe here; run without --limit. Reasons:\n  {}",
                reasons.join("\n  ")
            )))
        }
    }

    async fn dcs_patch(&self) -> Option<serde_json::Value> {
        let want = desired::dcs_config(&self.inv.cluster);
        for api in self.ctx.ep.patroni_apis() {
            if let Ok(have) = patroni::config(&api).await {
                return plan::plan_dcs(&want, &have);
            }
        }
        None
    }

    async fn report_check(&self, e: &Existing) -> Result<Exit, Failure> {
        let ui = &self.ctx.ui;
        let mut doc = serde_json::Map::new();
        let mut total = 0;
        ui.line("");
        ui.line("PLAN (--check: nothing is changed)");
        for h in &self.inv.hosts {
            let p = &self.plans[&h.name];
            let acts = self.ctx.acts_on(&h.name);
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
            if self.opts.diff && acts {
                for a in &p.actions {
                    if let Action::WriteFile { file, reason } = &a.action {
                        if *reason == FileReason::Attributes {
                            continue;
                        }
                        let old = if *reason == FileReason::Content {
                            self.remote_content(&h.name, &file.path).await?
                        } else {
                            String::new()
                        };
                        let new = String::from_utf8_lossy(&file.content);
                        ui.line(self.redacted_diff(&h.name, &file.path, &old, &new));
                    }
                }
            }
            doc.insert(h.name.clone(), json!(lines));
        }
        let c = &self.inv.cluster;
        let mut cluster_lines = Vec::new();
        if e.etcd_new {
            cluster_lines.push("etcd: bootstrap a new cluster".to_string());
        }
        if !e.patroni_initialized {
            cluster_lines.push(format!(
                "patroni: bootstrap the cluster on {}",
                self.inv.db_hosts()[0].name
            ));
        }
        if let Some(p) = &e.dcs_patch {
            cluster_lines.push(format!("patroni: PATCH /config {p}"));
        }
        match &e.sql_changes {
            Some(changes) => cluster_lines.extend(changes.iter().map(|c| format!("sql: {c}"))),
            None if !e.patroni_initialized => cluster_lines.push(format!(
                "sql: create roles {}, {} and database {}",
                c.monitor_user, c.app_user, c.app_database
            )),
            None => {}
        }
        total += cluster_lines.len();
        for l in &cluster_lines {
            ui.host("cluster", l);
        }
        ui.line(format!("{total} change(s) planned"));
        if ui.json() {
            println!(
                "{}",
                json!({"check": true, "changes": total, "hosts": doc, "cluster": cluster_lines})
            );
        }
        Ok(Exit::Ok)
    }

    async fn remote_content(&self, host: &str, path: &str) -> Result<String, Failure> {
        let out = self
            .ctx
            .session(host)?
            .exec(&Cmd::root(format!("cat {}", shell_quote(path))))
            .await
            .map_err(Failure::from)?;
        Ok(out.stdout_str())
    }

    fn redacted_diff(&self, host: &str, path: &str, old: &str, new: &str) -> String {
        let old = self.inv.secrets.redact(old);
        let new = self.inv.secrets.redact(new);
        similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{host}:{path} (current)"),
                &format!("{host}:{path} (pgha)"),
            )
            .to_string()
    }

    async fn packages(&self) -> Result<(), Failure> {
        let hosts: Vec<String> = self
            .plans
            .iter()
            .filter(|(_, p)| !p.packages().is_empty() || !p.pre_install_files().is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        if hosts.iter().all(|h| !self.ctx.acts_on(h)) {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("packages");
        phase.set(format!("installing on {}", hosts.join(", ")));
        self.ctx
            .each(&hosts, "install packages", |h, s| async move {
                let p = &self.plans[&h];
                let pre = p.pre_install_files();
                apply::write_files(&s, &pre).await?;
                let pkgs = p.packages();
                apply::install(&s, &pkgs, p.apt_update()).await?;
                if !pkgs.is_empty() {
                    self.ctx
                        .ui
                        .host(&h, format!("installed {}", pkgs.join(" ")));
                }
                Ok(pre.len() as u32 + u32::from(!pkgs.is_empty()) + u32::from(p.apt_update()))
            })
            .await?;
        phase.done(format!("{} host(s)", hosts.len()));
        Ok(())
    }

    async fn etcd(&self, new_cluster: bool) -> Result<(), Failure> {
        let c = &self.inv.cluster;
        let hosts = self.ctx.etcd_hosts();
        let phase = self.ctx.ui.phase("etcd");
        let prepare = format!(
            "install -d -o etcd -g etcd -m 0700 {}",
            shell_quote(&desired::etcd_data_dir(c))
        );
        if new_cluster {
            phase.set("starting every member together (the first cannot report ready alone)");
            // Debian's package may have started a one-member cluster in
            // /var/lib/etcd/default (when installed without pgha's guard): stop and wipe it.
            let script = format!(
                "systemctl stop etcd.service 2>/dev/null || true\nrm -rf /var/lib/etcd/default\n{prepare}\nsystemctl enable --quiet etcd.service\nsystemctl start --no-block etcd.service"
            );
            self.ctx
                .each(&hosts, "start etcd", |h, s| {
                    let script = script.clone();
                    async move {
                        let files = self.plans[&h].files("etcd", Stage::Configure);
                        apply::write_files(&s, &files).await?;
                        apply::run(&s, script).await?;
                        Ok(files.len() as u32 + 1)
                    }
                })
                .await?;
        } else {
            // Running cluster: new files everywhere first, then restarts one member
            // at a time with quorum proven in between.
            self.ctx
                .each(&hosts, "configure etcd", |h, s| {
                    let prepare = prepare.clone();
                    async move {
                        let p = &self.plans[&h];
                        let files = p.files("etcd", Stage::Configure);
                        apply::write_files(&s, &files).await?;
                        let mut n = files.len() as u32;
                        if p.wants("etcd", |a| matches!(a, Action::Enable { .. })) {
                            apply::systemctl(&s, "enable --quiet", "etcd.service").await?;
                            n += 1;
                        }
                        if p.starts("etcd") {
                            apply::run(
                                &s,
                                format!("{prepare}\nsystemctl start --no-block etcd.service"),
                            )
                            .await?;
                            n += 1;
                        }
                        Ok(n)
                    }
                })
                .await?;
            for h in &hosts {
                if self.ctx.acts_on(h) && self.plans[h].notify("etcd") == Notify::Restart {
                    waits::wait_etcd_quorum(&self.ctx.ep, ETCD_QUORUM).await?;
                    phase.set(format!("restarting {h}"));
                    self.ctx
                        .run_on(
                            h,
                            "restart etcd",
                            "systemctl restart --no-block etcd.service",
                        )
                        .await?;
                    self.ctx
                        .ui
                        .host(h, "etcd restarted (configuration changed)");
                    self.ctx.ui.changed(h, 1);
                }
            }
        }
        phase.set("waiting for quorum");
        let q = waits::wait_etcd_quorum(&self.ctx.ep, ETCD_QUORUM).await?;
        phase.done(format!(
            "quorum: {} members, leader {}, cluster id {}",
            q.members.len(),
            q.leader,
            q.cluster_id
        ));
        Ok(())
    }

    /// Patroni configured everywhere, then started in cluster order; returns the leader.
    async fn patroni(&self, initialized: bool) -> Result<String, Failure> {
        let c = &self.inv.cluster;
        let db = self.ctx.db_hosts();
        let phase = self.ctx.ui.phase("patroni");
        let parent = Path::new(&c.postgresql_data_dir)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/var/lib/postgresql".into());
        let prepare = format!(
            "install -d -o postgres -g postgres -m 0755 {}",
            shell_quote(&parent)
        );
        // Config files everywhere first; services are started below in cluster order.
        self.ctx
            .each(&db, "configure patroni", |h, s| {
                let prepare = prepare.clone();
                async move {
                    let p = &self.plans[&h];
                    let files = p.files("patroni", Stage::Configure);
                    apply::write_files(&s, &files).await?;
                    let mut n = files.len() as u32;
                    if p.starts("patroni") {
                        apply::run(&s, prepare).await?;
                    }
                    if p.wants("patroni", |a| matches!(a, Action::Enable { .. })) {
                        apply::systemctl(&s, "enable --quiet", "patroni.service").await?;
                        n += 1;
                    }
                    if p.notify("patroni") == Notify::Reload {
                        apply::systemctl(&s, "reload", "patroni.service").await?;
                        self.ctx
                            .ui
                            .host(&h, "patroni reloaded (configuration changed)");
                        n += 1;
                    }
                    Ok(n)
                }
            })
            .await?;
        let start = |hosts: Vec<String>| async move {
            self.ctx
                .each(&hosts, "start patroni", |_h, s| async move {
                    apply::systemctl(&s, "start", "patroni.service").await?;
                    Ok(1)
                })
                .await
        };
        let stopped: Vec<String> = db
            .iter()
            .filter(|h| self.plans[*h].starts("patroni"))
            .cloned()
            .collect();
        if !initialized {
            let first = db[0].clone();
            phase.set(format!("bootstrapping on {first}"));
            start(vec![first.clone()]).await?;
            let leader = waits::wait_leader(&self.ctx.ep, Some(&first), LEADER).await?;
            self.ctx.ui.host(&leader, "leader (cluster bootstrapped)");
            let rest: Vec<String> = stopped.into_iter().filter(|h| *h != first).collect();
            phase.set(format!("starting replicas {}", rest.join(", ")));
            start(rest).await?;
        } else if !stopped.is_empty() {
            phase.set(format!("starting {}", stopped.join(", ")));
            start(stopped).await?;
        }
        phase.set("waiting for every replica to stream with lag 0");
        let view = waits::wait_patroni_healthy(&self.ctx.ep, &db, REPLICAS).await?;
        let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
        phase.done(view.summary());
        Ok(leader)
    }

    /// Converge Patroni's dynamic configuration, then restart members whose
    /// PostgreSQL needs it (the core's rolling restart).
    async fn dynamic_config(
        &self,
        leader: &str,
        patch: Option<serde_json::Value>,
    ) -> Result<(), Failure> {
        if let Some(p) = &patch {
            let phase = self.ctx.ui.phase("config");
            let params = plan::patched_parameters(p);
            self.ctx.ui.host(
                "cluster",
                format!(
                    "dynamic configuration: {}",
                    if params.is_empty() {
                        p.to_string()
                    } else {
                        params.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            );
            phase.set("waiting for every member to apply it");
            actions::patch_config(self.ctx, leader, p).await?;
            phase.done("applied");
        }
        let view = patroni::cluster_any(&self.ctx.ep.patroni_apis())
            .await
            .map_err(Failure::error)?;
        let pending: Vec<String> = view
            .members
            .iter()
            .filter(|m| m.pending_restart)
            .map(|m| m.name.clone())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("restart");
        phase.set(format!("rolling restart of {}", pending.join(", ")));
        actions::rolling_restart(self.ctx, &pending).await?;
        phase.done(format!("restarted {}", pending.join(", ")));
        Ok(())
    }

    /// Roles and the application database, on the leader.
    async fn roles(&self, leader: &str) -> Result<(), Failure> {
        let c = &self.inv.cluster;
        let facts = match self.facts.get(leader).and_then(|f| f.primary_sql.clone()) {
            Some(f) => f,
            None => self.sql_facts(leader).await?,
        };
        let changes = plan::plan_sql(c, &self.inv.secrets, &facts);
        if changes.is_empty() {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("roles");
        let sql = plan::sql_statements(c, &self.inv.secrets, &changes).join("\n");
        let script = format!(
            "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p {} -d postgres",
            c.postgresql_port
        );
        self.ctx
            .session(leader)?
            .exec(&Cmd::root(script).stdin(sql.into_bytes()))
            .await
            .and_then(|o| o.ok())
            .map_err(|e| {
                host_failed(format!(
                    "{leader}: create roles: {}",
                    self.inv.secrets.redact(&e.to_string())
                ))
            })?;
        for ch in &changes {
            self.ctx.ui.host(leader, ch.to_string());
        }
        self.ctx.ui.changed(leader, changes.len() as u32);
        phase.done(format!("{} change(s)", changes.len()));
        Ok(())
    }

    async fn sql_facts(&self, host: &str) -> Result<SqlFacts, Failure> {
        let mut req = self.facts_request(host);
        req.packages.clear();
        req.files.clear();
        req.units.clear();
        req.paths.clear();
        let out = self
            .ctx
            .session(host)?
            .exec(&Cmd::root(facts::script(&req)))
            .await
            .and_then(|o| o.ok())
            .map_err(Failure::from)?;
        let f = facts::parse(host, &out.stdout_str()).map_err(|e| host_failed(e.to_string()))?;
        f.primary_sql.ok_or_else(|| {
            host_failed(format!(
                "{host}: expected the primary here, but PostgreSQL is in recovery"
            ))
        })
    }

    /// Files of a role, then enable/start or the handler its changed files need.
    async fn service_role(&self, role: &str, hosts: &[String], step: &str) -> Result<(), Failure> {
        let service = format!(
            "{}.service",
            self.desired[&hosts[0]]
                .role(role)
                .map(|r| r.services[0].clone())
                .unwrap_or_default()
        );
        self.ctx
            .each(hosts, step, |h, s| {
                let service = service.clone();
                async move {
                    let p = &self.plans[&h];
                    let files = p.files(role, Stage::Configure);
                    apply::write_files(&s, &files).await?;
                    let mut n = files.len() as u32;
                    if p.wants(role, |a| matches!(a, Action::Enable { .. })) {
                        apply::systemctl(&s, "enable --quiet", &service).await?;
                        n += 1;
                    }
                    if p.starts(role) {
                        apply::systemctl(&s, "start", &service).await?;
                        n += 1;
                    } else {
                        let verb = match p.notify(role) {
                            Notify::Restart => Some(("restart", "restarted")),
                            Notify::Reload => Some(("reload", "reloaded")),
                            Notify::None | Notify::AptUpdate => None,
                        };
                        if let Some((verb, done)) = verb {
                            apply::systemctl(&s, verb, &service).await?;
                            self.ctx
                                .ui
                                .host(&h, format!("{service} {done} (configuration changed)"));
                            n += 1;
                        }
                    }
                    Ok(n)
                }
            })
            .await
    }

    async fn exporters(&self) -> Result<(), Failure> {
        let db = self.ctx.db_hosts();
        let phase = self.ctx.ui.phase("exporter");
        self.service_role("exporter", &db, "configure postgres_exporter")
            .await?;
        phase.set("waiting for pg_up 1");
        waits::wait_exporters(&self.ctx.ep, EXPORTERS).await?;
        phase.done(format!("{} exporters report pg_up 1", db.len()));
        Ok(())
    }

    async fn haproxy(&self) -> Result<(), Failure> {
        let routers = self.ctx.router_hosts();
        let phase = self.ctx.ui.phase("haproxy");
        self.service_role("haproxy", &routers, "configure haproxy")
            .await?;
        phase.done(format!("{} router(s) configured", routers.len()));
        Ok(())
    }

    fn print_connect(&self) {
        let c = &self.inv.cluster;
        let ui = &self.ctx.ui;
        let changed = ui.total_changed();
        ui.line("");
        ui.line(format!(
            "Cluster {} is up ({} change(s), {:.1}s).",
            c.cluster_name,
            changed,
            ui.elapsed().as_secs_f32()
        ));
        for r in self.inv.router_hosts() {
            ui.line(format!(
                "  writes: psql \"host={} port={} user={} dbname={}\"",
                r.ip, c.haproxy_write_port, c.app_user, c.app_database
            ));
            ui.line(format!(
                "  reads:  psql \"host={} port={} user={} dbname={}\"",
                r.ip, c.haproxy_read_port, c.app_user, c.app_database
            ));
            ui.line(format!(
                "  stats:  http://{}:{}/",
                r.ip, c.haproxy_stats_port
            ));
        }
        ui.line(format!(
            "  password of {}: app_password in {}",
            c.app_user,
            self.inv.secrets_path.display()
        ));
        if ui.json() {
            println!(
                "{}",
                json!({
                    "ok": true,
                    "changed": changed,
                    "elapsed_secs": ui.elapsed().as_secs_f64(),
                    "recap": ui.recap(),
                    "routers": self.inv.router_hosts().iter().map(|r| r.ip.to_string()).collect::<Vec<_>>(),
                })
            );
        }
    }
}
