//! Point-in-time recovery of the whole cluster, in place or onto bare hosts: the
//! steps `pgha restore` runs in order, each skipped when the record on the
//! repository's host says an interrupted run did it already. The shell each step
//! runs is in `restore_plan` (pure); this is the I/O.
//!
//! The order is the one that loses nothing by surprise and leaves no member
//! bootstrapping on its own: Patroni stopped on the replicas, then the leader; the
//! leader's last WAL pushed to the repository; every data directory set aside (kept
//! until the restored cluster is verified); Patroni's state in etcd cleared; the
//! restore on one member, recovered and promoted by PostgreSQL started by hand;
//! Patroni started there (it takes the cluster for the restored system); a new full
//! backup on the new timeline; the other members cloned from it.

use std::time::Duration;

use base64::Engine;
use serde::Serialize;

use super::backup::{self, now};
use super::converge::Converge;
use super::lock::ClusterLock;
use super::restore_plan::{self as plan, Record, Recovery, Step};
use super::run::{Ctx, host_failed};
use super::waits;
use crate::error::Failure;
use crate::inventory::Cluster;
use crate::probe::{etcd, patroni};
use crate::ssh::{Cmd, Session};

/// Bounds: a restore and the recovery of a large cluster take hours.
const RESTORE: Duration = Duration::from_secs(12 * 3600);
const RECOVERY: Duration = Duration::from_secs(12 * 3600);
const STOP: Duration = Duration::from_secs(660);
const LEADER: Duration = Duration::from_secs(300);

async fn sh(s: &Session, script: String, timeout: Duration) -> Result<String, Failure> {
    let out = s
        .exec(&Cmd::root(script).timeout(timeout))
        .await
        .map_err(Failure::from)?;
    if out.success() {
        Ok(out.stdout_str())
    } else {
        Err(host_failed(format!(
            "{}: {}",
            s.host(),
            super::backup_info::errors(&format!("{}\n{}", out.stdout_str(), out.stderr_str()))
        )))
    }
}

/// The record of a restore in progress on the repository's host, if any.
pub async fn read_record(s: &Session, c: &Cluster) -> Result<Option<Record>, Failure> {
    let path = plan::record_path(c);
    let text = sh(
        s,
        format!("cat {} 2>/dev/null || true", crate::ssh::shell_quote(&path)),
        Duration::from_secs(30),
    )
    .await?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Failure::error(format!(
            "{}:{path}: the record of a restore in progress is unreadable ({e}); look at it, \
             and remove it only if no restore is under way",
            s.host()
        ))
    })
}

/// Save the record (root's, mode 0600), replacing it whole.
pub async fn write_record(s: &Session, c: &Cluster, r: &Record) -> Result<(), Failure> {
    let path = crate::ssh::shell_quote(&plan::record_path(c));
    let json = serde_json::to_string(r).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    sh(
        s,
        format!(
            "set -e; install -d -m 0700 /var/lib/pgha; umask 077; \
             echo {b64} | base64 -d > {path}.new; mv {path}.new {path}"
        ),
        Duration::from_secs(30),
    )
    .await
    .map(|_| ())
}

pub async fn remove_record(s: &Session, c: &Cluster) -> Result<(), Failure> {
    let path = crate::ssh::shell_quote(&plan::record_path(c));
    sh(s, format!("rm -f {path}"), Duration::from_secs(30))
        .await
        .map(|_| ())
}

/// A restore under way: the context, the repository's host and the record kept
/// there after every step.
pub struct Restore<'c, 'a> {
    pub ctx: &'c Ctx<'a>,
    pub repo: String,
    pub record: Record,
}

impl Restore<'_, '_> {
    fn c(&self) -> &Cluster {
        &self.ctx.inv.cluster
    }

    async fn save(&mut self, step: Step) -> Result<(), Failure> {
        self.record.step = step;
        let s = self.ctx.session(&self.repo)?;
        write_record(s, self.c(), &self.record).await
    }

    /// Every step not yet done, in order; the restored cluster's leader.
    pub async fn run(&mut self, lock: &mut ClusterLock) -> Result<String, Failure> {
        self.prepare_hosts(lock).await?;
        if !self.record.done(Step::Stopped) {
            self.stop_members().await?;
            self.save(Step::Stopped).await?;
        }
        if !self.record.done(Step::Aside) {
            self.set_aside().await?;
            self.save(Step::Aside).await?;
        }
        if !self.record.done(Step::Restored) {
            self.clear_dcs().await?;
            crate::testpoint::pause("restore:before-restore").await;
            self.restore_member().await?;
            self.save(Step::Restored).await?;
        }
        crate::testpoint::pause("restore:restored").await;
        if !self.record.done(Step::Leading) {
            self.start_leader().await?;
            self.save(Step::Leading).await?;
        }
        if !self.record.done(Step::BackedUp) {
            let s = self.ctx.session(&self.repo)?;
            let b = backup::take(self.ctx, s, "full", false).await?;
            self.ctx.ui.host(
                &self.repo,
                format!("full backup {} of the restored cluster taken", b.label),
            );
            self.record.backup = Some(b.label);
            self.save(Step::BackedUp).await?;
        }
        self.rejoin_members().await
    }

    /// Packages, etcd, pgBackRest and Patroni's files wherever they are missing (a
    /// host replaced by a bare one), Patroni not started: nothing may bootstrap a new
    /// cluster before the restore. A no-op on a cluster that runs.
    async fn prepare_hosts(&self, lock: &mut ClusterLock) -> Result<(), Failure> {
        let mut conv = Converge::load(self.ctx).await?;
        conv.gather_and_plan().await?;
        let existing = conv.existing().await?;
        conv.packages(existing.etcd_new).await?;
        if !existing.members.is_empty() {
            conv.converge_members(&existing.members).await?;
            conv.gather_and_plan().await?;
        }
        conv.etcd(existing.etcd_new).await?;
        if existing.etcd_new {
            // Bare hosts: the lock held on the first db host moves into etcd too.
            lock.add_etcd(&self.ctx.ep.etcd).await?;
        }
        conv.pgbackrest_servers().await?;
        conv.configure_patroni().await?;
        Ok(())
    }

    /// Patroni stopped on the replicas, then on the leader (so none takes over), and
    /// any PostgreSQL left running stopped; then the old leader's last WAL pushed.
    async fn stop_members(&self) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("stop");
        let db = self.ctx.db_hosts();
        let leader = self.record.old_leader.clone();
        let replicas: Vec<String> = db
            .iter()
            .filter(|h| Some(*h) != leader.as_ref())
            .cloned()
            .collect();
        let c = self.c().clone();
        // Each member's stop script: its Patroni (when installed), then any
        // PostgreSQL still running.
        let conv = Converge::load(self.ctx).await?;
        let scripts: std::collections::BTreeMap<String, String> = db
            .iter()
            .map(|h| {
                let mut script = conv
                    .role(h, "patroni")
                    .map(|r| format!("{}\n", crate::install::stop(r)))
                    .unwrap_or_default();
                script.push_str(&plan::stop_postgres_script(&c));
                (h.clone(), script)
            })
            .collect();
        let scripts = &scripts;
        let ctx = self.ctx;
        let stop = |hosts: Vec<String>| async move {
            ctx.each(&hosts, "stop patroni", |h, s| async move {
                sh(&s, scripts[&h].clone(), STOP)
                    .await
                    .map_err(|f| anyhow::anyhow!(f.message))?;
                Ok(1)
            })
            .await
        };
        phase.set(format!("stopping Patroni on {}", replicas.join(", ")));
        stop(replicas).await?;
        if let Some(l) = &leader {
            phase.set(format!("stopping Patroni on the leader {l}"));
            stop(vec![l.clone()]).await?;
            phase.set(format!("pushing {l}'s last WAL to the repository"));
            let s = self.ctx.session(l)?;
            let pushed = sh(s, plan::push_last_wal_script(&c), STOP).await.map_err(|f| {
                Failure::error(format!(
                    "the old leader's last WAL could not be archived, so a restore could lose \
                     acknowledged writes: {} (the cluster is stopped, its data untouched: fix \
                     archiving and run `pgha restore --resume`, or `pgha deploy` to start it as it was)",
                    f.message
                ))
            })?;
            let n = pushed.lines().filter(|l| !l.trim().is_empty()).count();
            self.ctx.ui.host(
                l,
                format!("last WAL archived ({n} segment(s) pushed or already there)"),
            );
        }
        phase.done(format!("Patroni stopped on {} member(s)", db.len()));
        Ok(())
    }

    async fn set_aside(&mut self) -> Result<(), Failure> {
        let phase = self.ctx.ui.phase("aside");
        let c = self.c().clone();
        let id = self.record.id.clone();
        let db = self.ctx.db_hosts();
        let aside = std::sync::Mutex::new(Vec::new());
        self.ctx
            .each(&db, "set the data directory aside", |h, s| {
                let script = plan::aside_script(&c, &id);
                let aside = &aside;
                async move {
                    let out = sh(&s, script, STOP)
                        .await
                        .map_err(|f| anyhow::anyhow!(f.message))?;
                    if out.contains("aside") {
                        aside.lock().unwrap().push(h);
                    }
                    Ok(1)
                }
            })
            .await?;
        let mut moved = aside.into_inner().unwrap();
        moved.sort();
        for h in &moved {
            self.ctx.ui.host(
                h,
                format!(
                    "data directory kept in {} until the restore is verified",
                    plan::aside_dir(&c, &id)
                ),
            );
        }
        self.record.aside.extend(moved);
        self.record.aside.sort();
        self.record.aside.dedup();
        phase.done(format!(
            "{} data directory(ies) kept aside",
            self.record.aside.len()
        ));
        Ok(())
    }

    /// Patroni's keys of this cluster go: the restored member then takes the
    /// cluster for its own system (the pgha lock lives elsewhere).
    async fn clear_dcs(&self) -> Result<(), Failure> {
        self.ctx
            .ensure_locked("clear Patroni's state in etcd")
            .await?;
        let prefix = format!("/service/{}/", self.c().cluster_name);
        let mut client = etcd::client(&self.ctx.ep.net, &self.ctx.ep.etcd).await?;
        let r = client
            .delete(
                prefix.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| Failure::error(format!("etcd: delete {prefix}*: {e}")))?;
        self.ctx.ui.host(
            "etcd",
            format!(
                "Patroni's state cleared ({} key(s) under {prefix})",
                r.deleted()
            ),
        );
        Ok(())
    }

    /// Restore on the member, replay WAL up to the target with PostgreSQL started
    /// by hand, wait for the promotion, stop it.
    async fn restore_member(&self) -> Result<(), Failure> {
        let m = &self.record.member;
        let c = self.c();
        let phase = self.ctx.ui.phase("restore");
        let s = self.ctx.session(m)?;
        phase.set(format!(
            "pgBackRest restores {m} to {}",
            self.record.target.describe()
        ));
        self.ctx.ensure_locked(&format!("{m}: restore")).await?;
        sh(
            s,
            plan::restore_script(c, &self.record.id, &self.record.target),
            RESTORE,
        )
        .await
        .map_err(|f| Failure::new(f.exit, format!("restore on {}", f.message)))?;
        phase.set(format!("{m}: PostgreSQL replays WAL up to the target"));
        sh(s, plan::recover_script(c), STOP).await?;
        let state_script = plan::recovery_state_script(c);
        let what = format!("{m} to replay WAL up to the target and promote");
        let ended = crate::wait::until(&what, RECOVERY, || async {
            let out = sh(s, state_script.clone(), Duration::from_secs(60))
                .await
                .map_err(|f| f.message)?;
            match plan::parse_recovery(&out) {
                Recovery::Promoted => Ok(Ok(())),
                Recovery::Dead(log) => Ok(Err(log)),
                Recovery::Recovering(last) => {
                    phase.set(format!("{m}: replaying WAL: {last}"));
                    Err(last)
                }
            }
        })
        .await?;
        if let Err(log) = ended {
            return Err(host_failed(format!(
                "{m}: PostgreSQL stopped during recovery (log {}):\n{log}\n\
                 A target past the end of the archived WAL is never reached: run `pgha restore --resume` \
                 after fixing the cause, or start over with --latest (nothing else was changed; \
                 the old data is kept aside)",
                plan::recovery_log(c)
            )));
        }
        sh(s, plan::stop_recovered_script(c), STOP).await?;
        phase.done(format!(
            "{m} restored to {} and promoted",
            self.record.target.describe()
        ));
        Ok(())
    }

    /// Patroni on the restored member: with etcd empty it takes the cluster for the
    /// data directory's system and leads.
    async fn start_leader(&self) -> Result<(), Failure> {
        let m = &self.record.member;
        let phase = self.ctx.ui.phase("leader");
        phase.set(format!("starting Patroni on {m}"));
        let conv = Converge::load(self.ctx).await?;
        let role = conv
            .role(m, "patroni")
            .map_err(|e| Failure::error(format!("{e:#}")))?;
        self.ctx
            .run_on(m, "start patroni", crate::install::start(role, false))
            .await?;
        let leader = waits::wait_leader(&self.ctx.ep, Some(m), LEADER).await?;
        // Patroni says leader once it holds the lock; PostgreSQL may still be
        // leaving recovery, and a backup needs a primary (pgBackRest asks each member).
        let s = self.ctx.session(m)?;
        let ask = format!(
            "{} -Atqc 'SELECT pg_is_in_recovery()' 2>&1 || true",
            crate::install::psql(self.c())
        );
        crate::wait::until(
            &format!("PostgreSQL on {m} to leave recovery"),
            LEADER,
            || async {
                let out = sh(s, ask.clone(), Duration::from_secs(30))
                    .await
                    .map_err(|f| f.message)?;
                if out.trim() == "f" {
                    Ok(())
                } else {
                    Err(format!("pg_is_in_recovery: {}", out.trim()))
                }
            },
        )
        .await?;
        phase.done(format!("{leader} leads the restored cluster"));
        Ok(())
    }

    /// The other members cloned (from the new full backup), the rest of the
    /// cluster converged, verified; then what was kept aside goes.
    async fn rejoin_members(&self) -> Result<String, Failure> {
        let mut conv = Converge::load(self.ctx).await?;
        conv.gather_and_plan().await?;
        let leader = conv.patroni(true).await?;
        let patch = conv.dcs_patch().await;
        conv.dynamic_config(&leader, patch).await?;
        conv.roles(&leader).await?;
        conv.exporters().await?;
        conv.haproxy().await?;
        conv.backups().await?;
        conv.monitoring().await?;
        super::etcd::keep_apart(self.ctx).await;
        super::verify::verify(self.ctx).await?;
        super::roster::write(self.ctx, &super::roster::Roster::of(self.ctx.inv)).await?;
        let c = self.c().clone();
        let id = self.record.id.clone();
        self.ctx
            .each(
                &self.ctx.db_hosts(),
                "remove what was kept aside",
                |_, s| {
                    let script = plan::cleanup_script(&c, &id);
                    async move {
                        sh(&s, script, STOP)
                            .await
                            .map_err(|f| anyhow::anyhow!(f.message))?;
                        Ok(1)
                    }
                },
            )
            .await?;
        let s = self.ctx.session(&self.repo)?;
        remove_record(s, &c).await?;
        Ok(leader)
    }
}

/// The member to restore on: the leader when one runs, else the first db host.
pub async fn choose_member(ctx: &Ctx<'_>) -> (String, Option<String>) {
    let leader = patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
        .await
        .ok()
        .and_then(|v| v.leader().map(|l| l.name.clone()))
        .filter(|l| ctx.db_hosts().contains(l));
    let member = leader.clone().unwrap_or_else(|| ctx.db_hosts()[0].clone());
    (member, leader)
}

/// Before the cluster stops: a commit on the leader stamped now, so that recovery
/// to any earlier time finds a commit past its target (it stops there instead of
/// running off the end of the WAL).
pub async fn mark_now(ctx: &Ctx<'_>, leader: &str) -> Result<(), Failure> {
    let c = &ctx.inv.cluster;
    ctx.run_on(
        leader,
        "a commit stamped now",
        format!(
            "{} -Atqc 'SELECT pg_current_xact_id()' >/dev/null",
            crate::install::psql(c)
        ),
    )
    .await
    .map(|_| ())
}

/// A new restore's record.
pub fn new_record(target: plan::Target, member: String, old_leader: Option<String>) -> Record {
    let started = now();
    Record {
        id: started.to_string(),
        target,
        member,
        old_leader,
        started,
        step: Step::Started,
        aside: Vec::new(),
        backup: None,
    }
}

/// What `pgha restore` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub member: String,
    pub leader: String,
    pub backup: Option<String>,
    pub aside_removed: Vec<String>,
    pub gap: Option<super::gap::Gap>,
    pub took_secs: f64,
}
