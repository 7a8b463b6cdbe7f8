//! `pgha deploy`: bare hosts -> verified cluster, and converging re-runs.
//!
//! Orchestration over the plan engine: facts from every host in one round trip each,
//! a pure plan, then phases separated by barriers the cluster needs: packages
//! everywhere in parallel; etcd members started together until quorum is proven;
//! Patroni on the first db host until it leads, then the others until they stream;
//! roles; exporters; HAProxy until its backends match Patroni; then verification.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use serde_json::json;

use crate::cli::{DeployArgs, OutputFormat, SshArgs};
use crate::cluster::{self, Endpoints};
use crate::engine::apply;
use crate::engine::desired::{self, HostDesired};
use crate::engine::facts::{self, FactsRequest, HostFacts, SqlFacts, SqlFactsRequest};
use crate::engine::plan::{self, Action, FileReason, HostPlan, SqlChange};
use crate::engine::roles::{Library, Notify, Stage};
use crate::error::{Exit, Failure};
use crate::inventory::{self, InstallMethod, Inventory, LoadOptions};
use crate::preflight::{limit_refusals, preflight};
use crate::probe::{etcd, patroni};
use crate::ssh::{self, Cmd, Session, SshOptions, shell_quote};
use crate::ui::Ui;
use crate::wait::until;

/// Deadlines of the rollout's barriers.
const ETCD_QUORUM: Duration = Duration::from_secs(90);
const LEADER: Duration = Duration::from_secs(180);
const REPLICAS: Duration = Duration::from_secs(300);
const ROUTER: Duration = Duration::from_secs(60);
const EXPORTERS: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub check: bool,
    pub diff: bool,
    pub limit: Vec<String>,
}

/// SSH options: --known-hosts, else the inventory's pgha_known_hosts, else ~/.ssh/known_hosts.
pub fn ssh_options(args: &SshArgs, inv: &Inventory) -> SshOptions {
    let known = args
        .known_hosts
        .clone()
        .or_else(|| inv.known_hosts.clone())
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".ssh").join("known_hosts")
        });
    let mut o = SshOptions::new(known);
    o.accept_new_host_keys = args.accept_new_host_keys;
    o.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    o
}

pub async fn command(args: DeployArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let inv = inventory::load(
        &args.inventory,
        &LoadOptions {
            write_secrets: !args.check,
        },
    )?;
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
    let inv = inventory::load(
        inventory,
        &LoadOptions {
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
    for w in &inv.warnings {
        ui.warn(&w.message);
    }
    if inv.cluster.install_method == InstallMethod::Docker {
        return Err(Failure::options(
            "install_method: docker is not available in this version of pgha; set install_method: native (Debian packages)",
        ));
    }
    let unknown: Vec<&String> = opts
        .limit
        .iter()
        .filter(|h| inv.host(h).is_none())
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(Failure::options(format!(
            "--limit names unknown host(s) {}; the inventory has: {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            known.join(", ")
        )));
    }
    let result = Run::start(inv, opts, ssh, ui).await;
    let result = match result {
        Ok(mut run) => {
            let r = run.execute().await;
            run.close().await;
            r
        }
        Err(e) => Err(e),
    };
    // Secrets never leave in an error message.
    let result = result.map_err(|f| Failure::new(f.exit, inv.secrets.redact(&f.message)));
    if !opts.check {
        ui.print_recap();
    }
    if let Err(f) = &result
        && ui.json()
    {
        // Programs get a document on failure too (the message goes to stderr as well).
        println!(
            "{}",
            json!({"ok": false, "exit": f.exit as i32, "error": f.message, "recap": ui.recap()})
        );
    }
    result
}

struct Run<'a> {
    inv: &'a Inventory,
    opts: &'a DeployOptions,
    ui: Ui,
    sessions: BTreeMap<String, Session>,
    desired: BTreeMap<String, HostDesired>,
    facts: BTreeMap<String, HostFacts>,
    plans: BTreeMap<String, HostPlan>,
    ep: Endpoints,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn host_failed(msg: impl Into<String>) -> Failure {
    Failure::new(Exit::HostFailed, msg)
}

impl<'a> Run<'a> {
    async fn start(
        inv: &'a Inventory,
        opts: &'a DeployOptions,
        ssh: SshOptions,
        ui: &Ui,
    ) -> Result<Run<'a>, Failure> {
        let lib = Library::load().map_err(|e| Failure::error(format!("{e:#}")))?;
        let desired: BTreeMap<String, HostDesired> = desired::desired_state(inv, &lib)
            .map_err(|e| Failure::error(format!("{e:#}")))?
            .into_iter()
            .map(|d| (d.host.clone(), d))
            .collect();

        let phase = ui.phase("connect");
        phase.set(format!("{} hosts", inv.hosts.len()));
        let targets: Vec<_> = inv.hosts.iter().map(|h| h.ssh.clone()).collect();
        let mut sessions = BTreeMap::new();
        let mut unreachable = Vec::new();
        let mut other = Vec::new();
        for (host, res) in ssh::connect_all(&targets, &ssh).await {
            match res {
                Ok(s) => {
                    sessions.insert(host, s);
                }
                Err(e) => {
                    let f: Failure = e.into();
                    if f.exit == Exit::Unreachable {
                        ui.unreachable(&host);
                        unreachable.push(f.message);
                    } else {
                        ui.failed(&host);
                        other.push(f.message);
                    }
                }
            }
        }
        if !unreachable.is_empty() || !other.is_empty() {
            for s in sessions.values() {
                s.close().await;
            }
            let exit = if unreachable.is_empty() {
                Exit::HostFailed
            } else {
                Exit::Unreachable
            };
            let mut all = unreachable;
            all.extend(other);
            return Err(Failure::new(
                exit,
                format!(
                    "nothing was changed; cannot reach every host:\n  {}",
                    all.join("\n  ")
                ),
            ));
        }
        phase.done(format!("{} hosts, host keys verified", sessions.len()));
        Ok(Run {
            inv,
            opts,
            ui: ui.clone(),
            sessions,
            desired,
            facts: BTreeMap::new(),
            plans: BTreeMap::new(),
            ep: Endpoints::new(inv),
        })
    }

    async fn close(&self) {
        for s in self.sessions.values() {
            s.close().await;
        }
    }

    /// Patroni REST base URL of a db host of the inventory.
    fn api(&self, host: &str) -> String {
        self.ep
            .api_of(host)
            .expect("Patroni hosts come from the inventory")
            .to_string()
    }

    fn session(&self, host: &str) -> &Session {
        &self.sessions[host]
    }

    /// Whether --limit lets this run act on the host.
    fn acts_on(&self, host: &str) -> bool {
        self.opts.limit.is_empty() || self.opts.limit.iter().any(|h| h == host)
    }

    fn names(hosts: &[&crate::inventory::Host]) -> Vec<String> {
        hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// Run `f` on each host in parallel; every failure is collected and reported
    /// with the host and the step, then the run stops (exit 2).
    async fn each<F, Fut>(&self, hosts: &[String], step: &str, f: F) -> Result<(), Failure>
    where
        F: Fn(String, Session) -> Fut,
        Fut: Future<Output = anyhow::Result<u32>>,
    {
        let futs = hosts.iter().filter(|h| self.acts_on(h)).map(|h| {
            let fut = f(h.clone(), self.session(h).clone());
            async move { (h.clone(), fut.await) }
        });
        let mut failures = Vec::new();
        for (host, res) in join_all(futs).await {
            match res {
                Ok(n) => {
                    if n > 0 {
                        self.ui.changed(&host, n);
                    }
                }
                Err(e) => {
                    self.ui.failed(&host);
                    failures.push(format!("{host}: {step}: {e:#}"));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(host_failed(failures.join("\n")))
        }
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

    async fn gather(&mut self) -> Result<BTreeMap<String, f64>, Failure> {
        let phase = self.ui.phase("facts");
        let futs = self.inv.hosts.iter().map(|h| {
            let s = self.session(&h.name).clone();
            let script = facts::script(&self.facts_request(&h.name));
            async move {
                let t0 = now_secs();
                let out = s
                    .exec(&Cmd::root(script).timeout(Duration::from_secs(60)))
                    .await;
                let mid = (t0 + now_secs()) / 2.0;
                let res = match out {
                    Ok(o) => o
                        .ok()
                        .map_err(anyhow::Error::from)
                        .and_then(|o| facts::parse(&h.name, &o.stdout_str()).map(|f| (f, mid))),
                    Err(e) => Err(e.into()),
                };
                (h.name.clone(), res)
            }
        });
        let mut failures = Vec::new();
        let mut skews = BTreeMap::new();
        for (host, res) in join_all(futs).await {
            match res {
                Ok((f, mid)) => {
                    skews.insert(host.clone(), f.clock - mid);
                    self.facts.insert(host, f);
                }
                Err(e) => {
                    self.ui.failed(&host);
                    failures.push(format!("{host}: gathering facts: {e:#}"));
                }
            }
        }
        if !failures.is_empty() {
            return Err(host_failed(format!(
                "nothing was changed:\n  {}",
                failures.join("\n  ")
            )));
        }
        phase.done(format!("{} hosts", self.facts.len()));
        Ok(skews)
    }

    async fn execute(&mut self) -> Result<Exit, Failure> {
        let skews = self.gather().await?;
        let problems = preflight(self.inv, &self.desired, &self.facts, &skews);
        if !problems.is_empty() {
            for p in &problems {
                if let Some((host, _)) = p.split_once(':') {
                    self.ui.failed(host);
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
        let c = &self.inv.cluster;
        let etcd_hosts = Self::names(&self.inv.etcd_hosts());
        let etcd_member_dir = format!("{}/member", desired::etcd_data_dir(c));
        let with_data: Vec<&String> = etcd_hosts
            .iter()
            .filter(|h| self.facts[*h].exists(&etcd_member_dir))
            .collect();
        let etcd_new = with_data.is_empty();
        if !etcd_new && with_data.len() < etcd_hosts.len() {
            let missing: Vec<&String> = etcd_hosts
                .iter()
                .filter(|h| !with_data.contains(h))
                .collect();
            return Err(host_failed(format!(
                "etcd members {} have no data directory ({etcd_member_dir}) while {} do: a lost member must be \
                 removed from and re-added to the running etcd cluster, which deploy does not do implicitly; nothing was changed",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                with_data
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let patroni_initialized = if etcd_new {
            false
        } else {
            etcd::key_exists(
                &self.ep.etcd,
                &format!("/service/{}/initialize", c.cluster_name),
            )
            .await
            .unwrap_or(false)
        };
        // Cluster-wide changes visible now (a running cluster).
        let dcs_patch = if patroni_initialized {
            self.dcs_patch().await
        } else {
            None
        };
        let sql_changes = self.sql_changes_from_facts();

        if !self.opts.limit.is_empty() {
            let reasons = limit_refusals(
                etcd_new || !patroni_initialized,
                dcs_patch.is_some(),
                sql_changes.as_ref().is_some_and(|s| !s.is_empty()),
            );
            if !reasons.is_empty() {
                return Err(Failure::options(format!(
                    "--limit is not safe here; run without --limit. Reasons:\n  {}",
                    reasons.join("\n  ")
                )));
            }
        }

        if self.opts.check {
            return self
                .report_check(
                    etcd_new,
                    patroni_initialized,
                    dcs_patch.as_ref(),
                    sql_changes.as_deref(),
                )
                .await;
        }

        self.phase_packages().await?;
        self.phase_etcd(etcd_new).await?;
        let leader = self.phase_patroni(patroni_initialized).await?;
        // A cluster bootstrapped just now took bootstrap.dcs from the same inventory,
        // but check it: the patch computed above covers only a running cluster.
        let dcs_patch = if patroni_initialized {
            dcs_patch
        } else {
            self.dcs_patch().await
        };
        self.phase_dcs(&leader, dcs_patch).await?;
        self.phase_sql(&leader).await?;
        self.phase_exporters().await?;
        self.phase_haproxy().await?;
        self.verify().await?;
        for h in &self.inv.hosts {
            let resources = self.desired[&h.name].files().count()
                + self.desired[&h.name].packages().len()
                + self.desired[&h.name].services().len();
            self.ui.ok(&h.name, resources as u32);
        }
        self.print_connect();
        Ok(Exit::Ok)
    }

    fn sql_changes_from_facts(&self) -> Option<Vec<SqlChange>> {
        self.facts
            .values()
            .find_map(|f| f.primary_sql.as_ref())
            .map(|sql| plan::plan_sql(&self.inv.cluster, &self.inv.secrets, sql))
    }

    async fn dcs_patch(&self) -> Option<serde_json::Value> {
        let want = desired::dcs_config(&self.inv.cluster);
        for api in self.ep.patroni_apis() {
            if let Ok(have) = patroni::config(&api).await {
                return plan::plan_dcs(&want, &have);
            }
        }
        None
    }

    async fn report_check(
        &self,
        etcd_new: bool,
        patroni_initialized: bool,
        dcs_patch: Option<&serde_json::Value>,
        sql: Option<&[SqlChange]>,
    ) -> Result<Exit, Failure> {
        let mut doc = serde_json::Map::new();
        let mut total = 0;
        self.ui.line("");
        self.ui.line("PLAN (--check: nothing is changed)");
        for h in &self.inv.hosts {
            let p = &self.plans[&h.name];
            let lines: Vec<String> = p
                .actions
                .iter()
                .filter(|_| self.acts_on(&h.name))
                .map(|a| a.to_string())
                .collect();
            total += lines.len();
            if lines.is_empty() {
                self.ui.host(&h.name, "no changes");
            }
            for l in &lines {
                self.ui.host(&h.name, l);
            }
            if self.opts.diff && self.acts_on(&h.name) {
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
                        self.ui
                            .line(self.redacted_diff(&h.name, &file.path, &old, &new));
                    }
                }
            }
            doc.insert(h.name.clone(), json!(lines));
        }
        let mut cluster_lines = Vec::new();
        if etcd_new {
            cluster_lines.push("etcd: bootstrap a new cluster".to_string());
        }
        if !patroni_initialized {
            cluster_lines.push(format!(
                "patroni: bootstrap the cluster on {}",
                self.inv.db_hosts()[0].name
            ));
        }
        if let Some(p) = dcs_patch {
            cluster_lines.push(format!("patroni: PATCH /config {}", p));
        }
        match sql {
            Some(changes) => cluster_lines.extend(changes.iter().map(|c| format!("sql: {c}"))),
            None if !patroni_initialized => cluster_lines.push(format!(
                "sql: create roles {}, {} and database {}",
                self.inv.cluster.monitor_user,
                self.inv.cluster.app_user,
                self.inv.cluster.app_database
            )),
            None => {}
        }
        total += cluster_lines.len();
        for l in &cluster_lines {
            self.ui.host("cluster", l);
        }
        self.ui.line(format!("{total} change(s) planned"));
        if self.ui.json() {
            println!(
                "{}",
                json!({"check": true, "changes": total, "hosts": doc, "cluster": cluster_lines})
            );
        }
        Ok(Exit::Ok)
    }

    async fn remote_content(&self, host: &str, path: &str) -> Result<String, Failure> {
        let out = self
            .session(host)
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

    async fn phase_packages(&self) -> Result<(), Failure> {
        let hosts: Vec<String> = self
            .plans
            .iter()
            .filter(|(_, p)| !p.packages().is_empty() || !p.pre_install_files().is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        if hosts.iter().all(|h| !self.acts_on(h)) {
            return Ok(());
        }
        let phase = self.ui.phase("packages");
        phase.set(format!("installing on {}", hosts.join(", ")));
        self.each(&hosts, "install packages", |h, s| async move {
            let p = &self.plans[&h];
            let pre = p.pre_install_files();
            apply::write_files(&s, &pre).await?;
            let pkgs = p.packages();
            apply::install(&s, &pkgs, p.apt_update()).await?;
            if !pkgs.is_empty() {
                self.ui.host(&h, format!("installed {}", pkgs.join(" ")));
            }
            Ok(pre.len() as u32 + u32::from(!pkgs.is_empty()) + u32::from(p.apt_update()))
        })
        .await?;
        phase.done(format!("{} host(s)", hosts.len()));
        Ok(())
    }

    async fn phase_etcd(&self, new_cluster: bool) -> Result<(), Failure> {
        let c = &self.inv.cluster;
        let hosts = Self::names(&self.inv.etcd_hosts());
        let phase = self.ui.phase("etcd");
        let data_dir = desired::etcd_data_dir(c);
        let prepare = format!(
            "install -d -o etcd -g etcd -m 0700 {dir}",
            dir = shell_quote(&data_dir)
        );
        if new_cluster {
            phase.set("starting every member together (the first cannot report ready alone)");
            // Debian's package may have started a one-member cluster in
            // /var/lib/etcd/default (when installed without pgha's guard): stop and wipe it.
            let script = format!(
                "systemctl stop etcd.service 2>/dev/null || true\nrm -rf /var/lib/etcd/default\n{prepare}\nsystemctl enable --quiet etcd.service\nsystemctl start --no-block etcd.service"
            );
            self.each(&hosts, "start etcd", |h, s| {
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
            self.each(&hosts, "configure etcd", |h, s| {
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
                if self.acts_on(h) && self.plans[h].notify("etcd") == Notify::Restart {
                    cluster::wait_etcd_quorum(&self.ep, ETCD_QUORUM).await?;
                    phase.set(format!("restarting {h}"));
                    apply::run(self.session(h), "systemctl restart --no-block etcd.service")
                        .await
                        .map_err(|e| host_failed(format!("{h}: restart etcd: {e:#}")))?;
                    self.ui.host(h, "etcd restarted (configuration changed)");
                    self.ui.changed(h, 1);
                }
            }
        }
        phase.set("waiting for quorum");
        let q = cluster::wait_etcd_quorum(&self.ep, ETCD_QUORUM).await?;
        phase.done(format!(
            "quorum: {} members, leader {}, cluster id {}",
            q.members.len(),
            q.leader,
            q.cluster_id
        ));
        Ok(())
    }

    /// Returns the leader's name.
    async fn phase_patroni(&self, initialized: bool) -> Result<String, Failure> {
        let c = &self.inv.cluster;
        let db = Self::names(&self.inv.db_hosts());
        let phase = self.ui.phase("patroni");
        let parent = Path::new(&c.postgresql_data_dir)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/var/lib/postgresql".into());
        let prepare = format!(
            "install -d -o postgres -g postgres -m 0755 {}",
            shell_quote(&parent)
        );
        // Config files everywhere first; services are started below in cluster order.
        self.each(&db, "configure patroni", |h, s| {
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
                    self.ui.host(&h, "patroni reloaded (configuration changed)");
                    n += 1;
                }
                Ok(n)
            }
        })
        .await?;
        let start = |hosts: Vec<String>| async move {
            self.each(&hosts, "start patroni", |_h, s| async move {
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
            let leader = cluster::wait_leader(&self.ep, Some(&first), LEADER).await?;
            self.ui.host(&leader, "leader (cluster bootstrapped)");
            let rest: Vec<String> = stopped.into_iter().filter(|h| *h != first).collect();
            phase.set(format!("starting replicas {}", rest.join(", ")));
            start(rest).await?;
        } else if !stopped.is_empty() {
            phase.set(format!("starting {}", stopped.join(", ")));
            start(stopped).await?;
        }
        phase.set("waiting for every replica to stream with lag 0");
        let view = cluster::wait_patroni_healthy(&self.ep, &db, REPLICAS).await?;
        let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
        phase.done(view.summary());
        Ok(leader)
    }

    /// Converge Patroni's dynamic configuration, then restart members whose
    /// PostgreSQL needs it: replicas one at a time, the leader last after a switchover.
    async fn phase_dcs(
        &self,
        leader: &str,
        patch: Option<serde_json::Value>,
    ) -> Result<(), Failure> {
        let db = Self::names(&self.inv.db_hosts());
        if let Some(p) = &patch {
            let phase = self.ui.phase("config");
            let api = self.api(leader);
            let since = now_secs();
            patroni::patch_config(&api, &self.inv.secrets.patroni_api_password, p)
                .await
                .map_err(Failure::error)?;
            let params = plan::patched_parameters(p);
            self.ui.host(
                "cluster",
                format!(
                    "dynamic configuration updated: {}",
                    if params.is_empty() {
                        p.to_string()
                    } else {
                        params.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            );
            self.ui.changed(leader, 1);
            phase.set("waiting for every member to apply it");
            self.wait_members_applied(&db, since).await?;
            phase.done("applied");
        }
        let view = patroni::cluster_any(&self.ep.patroni_apis())
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
        let phase = self.ui.phase("restart");
        self.rolling_restart(&db, &pending, &view, &phase).await?;
        phase.done(format!("restarted {}", pending.join(", ")));
        Ok(())
    }

    /// Wait until every member ran two HA loops after `since` (Patroni applies a new
    /// dynamic configuration, and flags pending restarts, in its loop).
    async fn wait_members_applied(&self, db: &[String], since: f64) -> Result<(), Failure> {
        let loop_wait = f64::from(self.inv.cluster.patroni_loop_wait);
        for h in db {
            let api = self.api(h);
            until(
                &format!("{h} to run its HA loop after the configuration change"),
                Duration::from_secs(60),
                || async {
                    let st = patroni::status(&api).await?;
                    let seen = st["dcs_last_seen"].as_f64().unwrap_or(0.0);
                    if seen > since + loop_wait + 1.0 {
                        Ok(())
                    } else {
                        Err(format!("dcs_last_seen {seen:.0}, change at {since:.0}"))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn rolling_restart(
        &self,
        db: &[String],
        pending: &[String],
        view: &patroni::ClusterView,
        phase: &crate::ui::Phase,
    ) -> Result<(), Failure> {
        let leader = view
            .leader()
            .map(|l| l.name.clone())
            .ok_or_else(|| Failure::error(format!("no leader: {}", view.summary())))?;
        for h in pending.iter().filter(|h| **h != leader) {
            phase.set(format!("restarting {h} (replica)"));
            self.restart_member(h).await?;
            cluster::wait_patroni_healthy(&self.ep, db, REPLICAS).await?;
        }
        if pending.contains(&leader) {
            // Choose right before the switchover, from a fresh view: a replica
            // streaming with lag 0 and, in synchronous mode, the synchronous standby
            // (Patroni refuses any other). Roles can move between the read and the
            // request, so a refusal is retried with a fresh choice.
            let sync = self.inv.cluster.synchronous_mode;
            let api = self.api(&leader);
            let candidate = until(
                &format!(
                    "a switchover of {leader} to a caught-up {}",
                    if sync {
                        "synchronous standby"
                    } else {
                        "replica"
                    }
                ),
                REPLICAS,
                || async {
                    let view = patroni::cluster_any(&self.ep.patroni_apis()).await?;
                    let candidate = view
                        .replicas()
                        .find(|m| {
                            m.state == "streaming"
                                && m.lag == Some(0)
                                && (!sync || m.role == "sync_standby")
                        })
                        .map(|m| m.name.clone())
                        .ok_or_else(|| view.summary())?;
                    phase.set(format!("switchover {leader} -> {candidate}"));
                    patroni::switchover(
                        &api,
                        &self.inv.secrets.patroni_api_password,
                        &leader,
                        &candidate,
                    )
                    .await?;
                    Ok(candidate)
                },
            )
            .await?;
            self.ui.host(
                &leader,
                format!("switched over to {candidate} before restarting the leader"),
            );
            self.ui.changed(&leader, 1);
            cluster::wait_leader(&self.ep, Some(&candidate), LEADER).await?;
            cluster::wait_patroni_healthy(&self.ep, db, REPLICAS).await?;
            let still = patroni::cluster_any(&self.ep.patroni_apis())
                .await
                .map_err(Failure::error)?
                .member(&leader)
                .is_some_and(|m| m.pending_restart);
            if still {
                phase.set(format!("restarting {leader} (now a replica)"));
                self.restart_member(&leader).await?;
                cluster::wait_patroni_healthy(&self.ep, db, REPLICAS).await?;
            }
        }
        Ok(())
    }

    async fn restart_member(&self, h: &str) -> Result<(), Failure> {
        let api = self.api(h);
        patroni::restart(&api, &self.inv.secrets.patroni_api_password)
            .await
            .map_err(|e| host_failed(format!("{h}: restart PostgreSQL: {e}")))?;
        until(
            &format!("{h} to have no pending restart"),
            REPLICAS,
            || async {
                let st = patroni::status(&api).await?;
                if st["state"] == "running" && st["pending_restart"] != true {
                    Ok(())
                } else {
                    Err(format!(
                        "state {}, pending_restart {}",
                        st["state"], st["pending_restart"]
                    ))
                }
            },
        )
        .await?;
        self.ui.host(h, "PostgreSQL restarted (pending restart)");
        self.ui.changed(h, 1);
        Ok(())
    }

    /// Roles and the application database, on the leader.
    async fn phase_sql(&self, leader: &str) -> Result<(), Failure> {
        let c = &self.inv.cluster;
        let facts = match self.facts.get(leader).and_then(|f| f.primary_sql.clone()) {
            Some(f) => f,
            None => self.sql_facts(leader).await?,
        };
        let changes = plan::plan_sql(c, &self.inv.secrets, &facts);
        if changes.is_empty() {
            return Ok(());
        }
        let phase = self.ui.phase("roles");
        let sql = plan::sql_statements(c, &self.inv.secrets, &changes).join("\n");
        let script = format!(
            "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p {} -d postgres",
            c.postgresql_port
        );
        self.session(leader)
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
            self.ui.host(leader, ch.to_string());
        }
        self.ui.changed(leader, changes.len() as u32);
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
            .session(host)
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

    async fn phase_service_role(
        &self,
        role: &str,
        hosts: &[String],
        step: &str,
    ) -> Result<(), Failure> {
        let service = format!(
            "{}.service",
            self.desired[&hosts[0]]
                .role(role)
                .map(|r| r.services[0].clone())
                .unwrap_or_default()
        );
        self.each(hosts, step, |h, s| {
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
                    match p.notify(role) {
                        Notify::Restart => {
                            apply::systemctl(&s, "restart", &service).await?;
                            self.ui
                                .host(&h, format!("{service} restarted (configuration changed)"));
                            n += 1;
                        }
                        Notify::Reload => {
                            apply::systemctl(&s, "reload", &service).await?;
                            self.ui
                                .host(&h, format!("{service} reloaded (configuration changed)"));
                            n += 1;
                        }
                        Notify::None | Notify::AptUpdate => {}
                    }
                }
                Ok(n)
            }
        })
        .await
    }

    async fn phase_exporters(&self) -> Result<(), Failure> {
        let db = Self::names(&self.inv.db_hosts());
        let phase = self.ui.phase("exporter");
        self.phase_service_role("exporter", &db, "configure postgres_exporter")
            .await?;
        phase.set("waiting for pg_up 1");
        cluster::wait_exporters(&self.ep, EXPORTERS).await?;
        phase.done(format!("{} exporters report pg_up 1", db.len()));
        Ok(())
    }

    async fn phase_haproxy(&self) -> Result<(), Failure> {
        let routers = Self::names(&self.inv.router_hosts());
        let phase = self.ui.phase("haproxy");
        self.phase_service_role("haproxy", &routers, "configure haproxy")
            .await?;
        phase.done(format!("{} router(s) configured", routers.len()));
        Ok(())
    }

    /// Checks that must hold after every deploy; each reads live state.
    async fn verify(&self) -> Result<(), Failure> {
        let phase = self.ui.phase("verify");
        let db = Self::names(&self.inv.db_hosts());
        let q = cluster::wait_etcd_quorum(&self.ep, ETCD_QUORUM)
            .await
            .map_err(|e| Failure::error(format!("verify: {e}")))?;
        self.ui.host(
            "etcd",
            format!(
                "{}/{} members healthy, leader {}, cluster id {}, etcd {}",
                q.members.len(),
                self.ep.etcd.len(),
                q.leader,
                q.cluster_id,
                q.version
            ),
        );
        let view = cluster::wait_patroni_healthy(&self.ep, &db, REPLICAS)
            .await
            .map_err(|e| Failure::error(format!("verify: {e}")))?;
        self.ui.host("patroni", view.summary());
        let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
        let replicas: Vec<String> = db.iter().filter(|h| **h != leader).cloned().collect();
        cluster::wait_haproxy(&self.ep, &leader, &replicas, ROUTER)
            .await
            .map_err(|e| Failure::error(format!("verify: {e}")))?;
        self.ui.host(
            "haproxy",
            format!("writes -> {leader} only; reads -> {}", replicas.join(", ")),
        );
        for r in self.inv.router_hosts() {
            let rt = cluster::sql_round_trip(self.inv, &r.ip.to_string(), ROUTER)
                .await
                .map_err(|e| {
                    Failure::error(format!("verify: SQL round trip through {}: {e}", r.name))
                })?;
            self.ui.host(
                "sql",
                format!(
                    "row written via {} read back via {} (served by replica {})",
                    rt.written_via, rt.read_via, rt.read_from
                ),
            );
        }
        phase.done("cluster verified");
        Ok(())
    }

    fn print_connect(&self) {
        let c = &self.inv.cluster;
        let changed = self.ui.total_changed();
        self.ui.line("");
        self.ui.line(format!(
            "Cluster {} is up ({} change(s), {:.1}s).",
            c.cluster_name,
            changed,
            self.ui.elapsed().as_secs_f32()
        ));
        for r in self.inv.router_hosts() {
            self.ui.line(format!(
                "  writes: psql \"host={} port={} user={} dbname={}\"",
                r.ip, c.haproxy_write_port, c.app_user, c.app_database
            ));
            self.ui.line(format!(
                "  reads:  psql \"host={} port={} user={} dbname={}\"",
                r.ip, c.haproxy_read_port, c.app_user, c.app_database
            ));
            self.ui.line(format!(
                "  stats:  http://{}:{}/",
                r.ip, c.haproxy_stats_port
            ));
        }
        self.ui.line(format!(
            "  password of {}: app_password in {}",
            c.app_user,
            self.inv.secrets_path.display()
        ));
        if self.ui.json() {
            println!(
                "{}",
                json!({
                    "ok": true,
                    "changed": changed,
                    "elapsed_secs": self.ui.elapsed().as_secs_f64(),
                    "recap": self.ui.recap(),
                    "routers": self.inv.router_hosts().iter().map(|r| r.ip.to_string()).collect::<Vec<_>>(),
                })
            );
        }
    }
}
