//! The rollout phases, in the order the cluster needs: packages (etcd started
//! early on a new cluster), etcd members together until quorum (one at a time with
//! quorum proven in between on a running cluster), Patroni on the first db host
//! until it leads and then the others until they stream, dynamic configuration
//! with a rolling restart when needed, roles and databases, exporters, HAProxy.
//! Each acts on the plans `ops::converge` made.

use std::path::Path;
use std::time::Duration;

use super::converge::Converge;
use super::run::host_failed;
use super::{patroni as actions, waits};
use crate::engine::apply;
use crate::engine::desired;
use crate::engine::facts::{self, SqlFacts};
use crate::engine::plan::{self, Action, FileReason};
use crate::engine::roles::{Notify, Stage};
use crate::error::Failure;
use crate::install;
use crate::ops::images;
use crate::probe::patroni;
use crate::ssh::{Cmd, Session, shell_quote};

/// Deadlines of the rollout's barriers.
const ETCD_QUORUM: Duration = Duration::from_secs(90);
const LEADER: Duration = Duration::from_secs(180);
const REPLICAS: Duration = Duration::from_secs(300);
const EXPORTERS: Duration = Duration::from_secs(60);
/// Every target up in Prometheus: started just now, scraped within an interval.
const MONITORING: Duration = Duration::from_secs(120);

impl Converge<'_, '_> {
    /// Packages (and the files written before them) wherever the plan wants them;
    /// each host then goes on with what needs nothing from the others (below).
    pub async fn packages(&self, new_cluster: bool) -> Result<(), Failure> {
        self.packages_on(&self.ctx.all_hosts(), new_cluster).await
    }

    /// Packages on these hosts. Each host goes on by itself as soon as its own
    /// packages are in, instead of waiting for the slowest host: a router starts
    /// HAProxy, a db host its exporter, and in a new cluster an etcd member installs
    /// etcd first and starts it, so quorum forms while PostgreSQL still installs;
    /// the first db host (the one that bootstraps) installs ahead of the others.
    // Long by design: one host's package step and what may start right after it
    // (etcd of a new cluster, HAProxy, exporters), run for every host at once.
    pub async fn packages_on(&self, only: &[String], new_cluster: bool) -> Result<(), Failure> {
        let hosts: Vec<String> = self
            .plans
            .iter()
            .filter(|(h, p)| {
                only.contains(h)
                    && (!p.packages().is_empty()
                        || !p.pre_install_files().is_empty()
                        || !p.images().is_empty())
            })
            .map(|(h, _)| h.clone())
            .collect();
        if hosts.iter().all(|h| !self.ctx.acts_on(h)) {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("packages");
        phase.set(format!("installing on {}", hosts.join(", ")));
        let first_db = self.ctx.db_hosts().first().cloned().unwrap_or_default();
        let etcd_hosts = self.ctx.etcd_hosts();
        self.ctx
            .each(&hosts, "install packages", |h, s| {
                let first_db = first_db.clone();
                let etcd_early = new_cluster && etcd_hosts.contains(&h);
                async move {
                    let p = &self.plans[&h];
                    let docker = self.desired[&h].role("docker").is_some();
                    if docker {
                        // The users the images run as own files written below.
                        apply::run(&s, crate::docker::stack::user_script()).await?;
                    }
                    let pre = p.pre_install_files();
                    apply::write_files(&s, &pre).await?;
                    let mut n = pre.len() as u32 + u32::from(p.apt_update());
                    let pkgs = apply::pinned(&p.packages(), &self.inv.cluster.apt_pins);
                    // Native: etcd's packages first in a new cluster. Docker: the
                    // engine is all there is to install, and etcd follows its image.
                    let etcd_pkgs: Vec<String> = if etcd_early && !docker {
                        let want = self.desired[&h]
                            .role("etcd")
                            .map(|r| r.packages.clone())
                            .unwrap_or_default();
                        pkgs.iter()
                            .filter(|x| want.iter().any(|w| x.split('=').next() == Some(w)))
                            .cloned()
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let rest: Vec<String> = pkgs
                        .iter()
                        .filter(|x| !etcd_pkgs.contains(x))
                        .cloned()
                        .collect();
                    let mut update = p.apt_update();
                    if etcd_early && !docker {
                        apply::install_niced(&s, &etcd_pkgs, update, 0).await?;
                        update = false;
                        n += self.start_new_etcd_member(&h, &s).await?;
                    }
                    // The first db host bootstraps the cluster: it goes first.
                    let nice = if new_cluster
                        && self.desired[&h].role("patroni").is_some()
                        && h != first_db
                    {
                        10
                    } else {
                        0
                    };
                    apply::install_niced(&s, &rest, update, nice).await?;
                    if !pkgs.is_empty() {
                        self.ctx
                            .ui
                            .host(&h, format!("installed {}", pkgs.join(" ")));
                        n += 1;
                    }
                    if docker {
                        // The engine (configured before its first start), then the
                        // images the host lacks.
                        n += self.service_role_host("docker", &h, &s).await?;
                        n += images::ensure_on(
                            &self.inv.cluster,
                            &h,
                            &s,
                            &p.images(),
                            &self.archive,
                            &self.ctx.ui,
                        )
                        .await?;
                        if etcd_early {
                            n += self.start_new_etcd_member(&h, &s).await?;
                        }
                    }
                    // pgBackRest's server before Patroni starts archiving to it.
                    if self.desired[&h].role("pgbackrest").is_some() {
                        n += self.service_role_host("pgbackrest", &h, &s).await?;
                    }
                    for role in [
                        "haproxy",
                        "pgbouncer",
                        "exporter",
                        "node_exporter",
                        "pgbackrest_exporter",
                    ] {
                        if self.desired[&h].role(role).is_some() {
                            n += self.service_role_host(role, &h, &s).await?;
                        }
                    }
                    Ok(n)
                }
            })
            .await?;
        phase.done(format!("{} host(s)", hosts.len()));
        Ok(())
    }

    /// A member of a new etcd cluster: its files, Debian's own one-member cluster
    /// stopped and wiped (when installed without pgha's guard), started without
    /// waiting (the first member cannot report ready alone).
    async fn start_new_etcd_member(&self, h: &str, s: &Session) -> anyhow::Result<u32> {
        let c = &self.inv.cluster;
        let role = self.role(h, "etcd")?;
        let script = format!(
            "{}\nrm -rf /var/lib/etcd/default\ninstall -d -o etcd -g etcd -m 0700 {}\n{}\n{}",
            install::stop(role),
            shell_quote(&desired::etcd_data_dir(c)),
            install::enable(role),
            install::start(role, true)
        );
        let files = self.plans[h].files("etcd", Stage::Configure);
        apply::write_files(s, &files).await?;
        apply::run(s, script).await?;
        self.mark(h, "etcd");
        Ok(files.len() as u32 + 1)
    }

    pub async fn etcd(&self, new_cluster: bool) -> Result<(), Failure> {
        let c = &self.inv.cluster;
        let hosts = self.ctx.etcd_hosts();
        let phase = self.ctx.ui.phase("etcd");
        let prepare = format!(
            "install -d -o etcd -g etcd -m 0700 {}",
            shell_quote(&desired::etcd_data_dir(c))
        );
        if new_cluster {
            phase.set("starting every member together (the first cannot report ready alone)");
            let todo: Vec<String> = hosts
                .iter()
                .filter(|h| !self.is_done(h, "etcd"))
                .cloned()
                .collect();
            self.ctx
                .each(&todo, "start etcd", |h, s| async move {
                    self.start_new_etcd_member(&h, &s).await
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
                        let role = self.role(&h, "etcd")?;
                        if p.wants("etcd", |a| matches!(a, Action::Enable { .. })) {
                            apply::run(&s, install::enable(role)).await?;
                            n += 1;
                        }
                        if p.starts("etcd") {
                            apply::run(&s, format!("{prepare}\n{}", install::start(role, true)))
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
                    let restart =
                        install::restart(self.role(h, "etcd").map_err(Failure::from)?, true);
                    self.ctx.run_on(h, "restart etcd", restart).await?;
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

    /// Patroni's files on every db host and its service enabled (reloaded where a
    /// file changed and it runs), nothing started: `patroni` starts it in cluster
    /// order; `restore` starts it only once the data is restored. Returns the hosts
    /// whose running Patroni must restart to read a changed file (its environment):
    /// `patroni` restarts them under pause.
    pub async fn configure_patroni(&self) -> Result<Vec<String>, Failure> {
        let c = &self.inv.cluster;
        let db = self.ctx.db_hosts();
        let parent = Path::new(&c.postgresql_data_dir)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/var/lib/postgresql".into());
        let prepare = format!(
            "install -d -o postgres -g postgres -m 0755 {}",
            shell_quote(&parent)
        );
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
                    let role = self.role(&h, "patroni")?;
                    if p.wants("patroni", |a| matches!(a, Action::Enable { .. })) {
                        apply::run(&s, install::enable(role)).await?;
                        n += 1;
                    }
                    // A restart is left to `patroni`, under pause (native only:
                    // no container's file asks for one).
                    if p.notify("patroni") == Notify::Reload {
                        apply::run(&s, install::reload(role)).await?;
                        self.ctx
                            .ui
                            .host(&h, "patroni reloaded (configuration changed)");
                        n += 1;
                    }
                    Ok(n)
                }
            })
            .await?;
        Ok(db
            .into_iter()
            .filter(|h| self.ctx.acts_on(h) && self.plans[h].notify("patroni") == Notify::Restart)
            .collect())
    }

    /// Patroni restarted where it must read a changed file, member by member under
    /// the cluster's pause: PostgreSQL keeps running, no switchover.
    async fn restart_patroni_paused(&self, hosts: &[String]) -> Result<(), Failure> {
        actions::under_pause(self.ctx, hosts, |h| async move {
            let restart = install::restart(self.role(&h, "patroni")?, false);
            actions::restart_paused(self.ctx, &h, restart).await
        })
        .await
    }

    /// Patroni configured everywhere, then started in cluster order; returns the leader.
    pub async fn patroni(&self, initialized: bool) -> Result<String, Failure> {
        let db = self.ctx.db_hosts();
        let phase = self.ctx.ui.phase("patroni");
        // Config files everywhere first; services are started below in cluster order.
        let restart = self.configure_patroni().await?;
        let start = |hosts: Vec<String>| async move {
            self.ctx
                .each(&hosts, "start patroni", |h, s| async move {
                    apply::run(&s, install::start(self.role(&h, "patroni")?, false)).await?;
                    Ok(1)
                })
                .await
        };
        let stopped: Vec<String> = db
            .iter()
            .filter(|h| self.plans[*h].starts("patroni"))
            .cloned()
            .collect();
        let starting = !stopped.is_empty();
        if !initialized {
            let first = db[0].clone();
            phase.set(format!("bootstrapping on {first}"));
            start(vec![first.clone()]).await?;
            let leader = waits::wait_leader(&self.ctx.ep, Some(&first), LEADER).await?;
            self.ctx.ui.host(&leader, "leader (cluster bootstrapped)");
            let rest: Vec<String> = stopped.into_iter().filter(|h| *h != first).collect();
            phase.set(format!("starting replicas {}", rest.join(", ")));
            start(rest).await?;
        } else if starting {
            phase.set(format!("starting {}", stopped.join(", ")));
            start(stopped).await?;
        }
        if !restart.is_empty() && starting {
            // A paused Patroni may leave a member it is creating (a rebuild's clone)
            // unstarted: the restart waits for a run that starts none. It reads
            // what its process was started with, so the next deploy does it.
            self.ctx.ui.warn(format!(
                "Patroni on {} must restart to read its environment; a member starts in \
                 this run, so the next `pgha deploy` restarts it (under pause)",
                restart.join(", ")
            ));
        } else if !restart.is_empty() {
            phase.set(format!(
                "restarting Patroni on {} under pause",
                restart.join(", ")
            ));
            self.restart_patroni_paused(&restart).await?;
        }
        phase.set("waiting for every replica to stream with lag 0");
        let mut view = waits::wait_patroni_healthy(&self.ctx.ep, &db, REPLICAS).await?;
        if view.pause && actions::paused_by_pgha(self.ctx).await? {
            // A run stopped while it had the cluster paused (its record says so):
            // every member runs and streams, so failover comes back.
            self.ctx
                .ui
                .host("cluster", "paused by an interrupted pgha run");
            actions::set_pause(self.ctx, false).await?;
            view = waits::wait_patroni_healthy(&self.ctx.ep, &db, REPLICAS).await?;
        }
        let leader = view.leader().map(|l| l.name.clone()).unwrap_or_default();
        phase.done(view.summary());
        Ok(leader)
    }

    /// Converge Patroni's dynamic configuration, then restart members whose
    /// PostgreSQL needs it (the core's rolling restart).
    pub async fn dynamic_config(
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
            super::dcs::patch_config(self.ctx, leader, p).await?;
            phase.done("applied");
        }
        self.restart_pending().await
    }

    /// Members whose PostgreSQL waits for a restart (a parameter that needs one),
    /// restarted in order.
    pub async fn restart_pending(&self) -> Result<(), Failure> {
        let view = patroni::cluster_any(&self.ctx.ep.net, &self.ctx.ep.patroni_apis())
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
        let r = actions::restart_in_order(self.ctx, &pending, true).await?;
        phase.done(format!("restarted {}", r.restarted.join(", ")));
        Ok(())
    }

    /// Roles and the application database, on the leader.
    pub async fn roles(&self, leader: &str) -> Result<(), Failure> {
        let c = &self.inv.cluster;
        let facts = match self.facts.get(leader).and_then(|f| f.primary_sql.clone()) {
            Some(f) => f,
            None => self.sql_facts(leader).await?,
        };
        let changes = self.plan_sql(&facts)?;
        if changes.is_empty() {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("roles");
        let sql = crate::engine::sqlplan::sql_statements(c, &self.inv.secrets, &changes).join("\n");
        let script = format!("{} -q -v ON_ERROR_STOP=1", install::psql(c));
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
    /// The unit of a role's service on a host (`haproxy.service`).
    fn service_of(&self, role: &str, host: &str) -> String {
        format!(
            "{}.service",
            self.desired[host]
                .role(role)
                .map(|r| r.services[0].clone())
                .unwrap_or_default()
        )
    }

    /// One host's files of a role, then enable/start, or the handler its changed
    /// files need. Returns the number of changes.
    async fn service_role_host(&self, role: &str, h: &str, s: &Session) -> anyhow::Result<u32> {
        let service = self.service_of(role, h);
        let p = &self.plans[h];
        let dirs = p.dirs(role);
        apply::dirs(s, &dirs).await?;
        // A directory changed by hand is worth a line; a new one is counted only,
        // like a file.
        for a in p.for_role(role) {
            if let Action::Directory {
                dir: d,
                reason: FileReason::Attributes,
            } = a
            {
                self.ctx.ui.host(
                    h,
                    format!(
                        "directory {} mended ({}:{} {:04o})",
                        d.path, d.owner, d.group, d.mode
                    ),
                );
            }
        }
        let files = p.files(role, Stage::Configure);
        apply::write_files(s, &files).await?;
        let mut n = (dirs.len() + files.len()) as u32;
        let r = self.role(h, role)?;
        if p.wants(role, |a| matches!(a, Action::Enable { .. })) {
            apply::run(s, install::enable(r)).await?;
            n += 1;
        }
        if p.starts(role) {
            apply::run(s, install::start(r, false)).await?;
            n += 1;
        } else {
            let verb = match p.notify(role) {
                Notify::Restart => Some((install::restart(r, false), "restarted")),
                Notify::Reload => Some((install::reload(r), "reloaded")),
                Notify::None | Notify::AptUpdate => None,
            };
            if let Some((cmd, done)) = verb {
                apply::run(s, cmd).await?;
                self.ctx
                    .ui
                    .host(h, format!("{service} {done} (configuration changed)"));
                n += 1;
            }
        }
        self.mark(h, role);
        Ok(n)
    }

    /// A role's files and service on these hosts (those not done earlier in the run).
    async fn service_role(&self, role: &str, hosts: &[String], step: &str) -> Result<(), Failure> {
        let todo: Vec<String> = hosts
            .iter()
            .filter(|h| !self.is_done(h, role))
            .cloned()
            .collect();
        self.ctx
            .each(&todo, step, |h, s| async move {
                self.service_role_host(role, &h, &s).await
            })
            .await
    }

    fn mark(&self, host: &str, step: &str) {
        self.done
            .lock()
            .unwrap()
            .insert((host.to_string(), step.to_string()));
    }

    fn is_done(&self, host: &str, step: &str) -> bool {
        self.done
            .lock()
            .unwrap()
            .contains(&(host.to_string(), step.to_string()))
    }

    pub async fn exporters(&self) -> Result<(), Failure> {
        let db = self.ctx.db_hosts();
        let phase = self.ctx.ui.phase("exporter");
        self.service_role("exporter", &db, "configure postgres_exporter")
            .await?;
        phase.set("waiting for pg_up 1");
        waits::wait_exporters(&self.ctx.ep, EXPORTERS).await?;
        phase.done(format!("{} exporters report pg_up 1", db.len()));
        Ok(())
    }

    /// pgBackRest's files and TLS server on the db hosts and the repository's host
    /// (those the package step did not already do).
    pub async fn pgbackrest_servers(&self) -> Result<(), Failure> {
        let hosts: Vec<String> = self
            .desired
            .iter()
            .filter(|(h, d)| d.role("pgbackrest").is_some() && !self.is_done(h, "pgbackrest"))
            .map(|(h, _)| h.clone())
            .collect();
        self.ctx
            .each(&hosts, "configure pgbackrest", |h, s| async move {
                self.service_role_host("pgbackrest", &h, &s).await
            })
            .await
    }

    /// node_exporter everywhere, pgBackRest's exporter, Alertmanager and
    /// Prometheus (those the package step did not already do), then every target
    /// the inventory implies up in Prometheus.
    pub async fn monitoring(&self) -> Result<(), Failure> {
        let Some(m) = self.inv.monitor_host() else {
            return Ok(());
        };
        let phase = self.ctx.ui.phase("monitoring");
        let with = |role: &str| -> Vec<String> {
            self.desired
                .iter()
                .filter(|(_, d)| d.role(role).is_some())
                .map(|(h, _)| h.clone())
                .collect()
        };
        for role in super::monitoring::ROLES {
            self.service_role(role, &with(role), &format!("configure {role}"))
                .await?;
        }
        if !self.ctx.acts_on(&m.name) {
            phase.done("not on this run's hosts (--limit)");
            return Ok(());
        }
        phase.set("waiting for every target up in Prometheus");
        let expected = super::monitoring::expected_targets(self.inv);
        let n = super::monitoring::wait_targets(&self.ctx.ep, &expected, MONITORING).await?;
        phase.done(format!(
            "{n} targets up in Prometheus, http://{}:{}",
            m.ip, self.inv.cluster.prometheus_port
        ));
        Ok(())
    }

    /// Services of roles turned off in the inventory (pooling, monitoring), still
    /// running or enabled: stopped and disabled, their containers removed.
    pub async fn retire(&self) -> Result<(), Failure> {
        let hosts: Vec<String> = self
            .plans
            .iter()
            .filter(|(_, p)| !p.retired().is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        if hosts.is_empty() {
            return Ok(());
        }
        let phase = self.ctx.ui.phase("retire");
        self.ctx
            .each(&hosts, "stop services turned off", |h, s| async move {
                let retired = self.plans[&h].retired();
                for (service, container) in &retired {
                    apply::run(&s, install::retire(service, container.as_deref())).await?;
                    self.ctx.ui.host(
                        &h,
                        format!("{service} stopped and disabled (turned off in the inventory)"),
                    );
                }
                Ok(retired.len() as u32)
            })
            .await?;
        phase.done(format!("{} host(s)", hosts.len()));
        Ok(())
    }

    pub async fn haproxy(&self) -> Result<(), Failure> {
        let routers = self.ctx.router_hosts();
        let phase = self.ctx.ui.phase("haproxy");
        self.service_role("haproxy", &routers, "configure haproxy")
            .await?;
        phase.done(format!("{} router(s) configured", routers.len()));
        Ok(())
    }
}
