//! `pgha rebuild HOST`: a lost host (VM or disk) made a full member again on a
//! fresh bare host, at the same or a new address, with the cluster serving.
//!
//! First what is safe, decided and printed before any change: not the live leader,
//! etcd keeps its quorum when the old member goes, something to clone from, and a
//! healthy member is only rebuilt with --force. Then, under the cluster lock: a
//! snapshot of etcd saved here; the host wiped; its packages; the old etcd member
//! removed by id and the new one added as a learner, started with the survivors'
//! exact membership, promoted once caught up; then the usual rollout phases (Patroni
//! clones from the leader, every other host follows a new address with reloads);
//! stale Patroni members and slots removed; verification.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;

use crate::commands::args::RebuildArgs;
use crate::commands::ssh_options;
use crate::commands::{finish, inventory_path, load_inventory, load_pki};
use crate::engine::apply;
use crate::engine::desired;
use crate::error::{Exit, Failure};
use crate::install;
use crate::inventory::Inventory;
use crate::ops::converge::Converge;
use crate::ops::endpoints::scheme;
use crate::ops::etcd::{self as etcd_ops, MemberInfo};
use crate::ops::gap::{self, Gap};
use crate::ops::lock::ClusterLock;
use crate::ops::run::host_failed;
use crate::ops::{Ctx, verify, waits};
use crate::probe::{etcd, haproxy, patroni};
use crate::ssh::shell_quote;
use crate::ui::OutputFormat;
use crate::ui::Ui;

pub async fn command(args: RebuildArgs, output: OutputFormat) -> Result<Exit, Failure> {
    // Like deploy, a rebuild issues what the cluster's certificates now lack (a host
    // at a new address needs one naming it; db hosts' name the routers too).
    let inv = load_inventory(&args.inventory, !args.check)?;
    let Some(target) = inv.host(&args.host).map(|h| h.name.clone()) else {
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(Failure::options(format!(
            "{}: not a host of the inventory (hosts: {}); nothing was changed",
            args.host,
            names.join(", ")
        )));
    };
    inv.require_secrets().map_err(Failure::error)?;
    let pki = load_pki(&inv, !args.check)?;
    let ui = Ui::new(output);
    let mut ctx = Ctx::new(&inv, pki, &ui);
    let ssh = ssh_options(&args.ssh, &inv);
    let snapshot_dir = inventory_path(&args.inventory)?
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let result = async {
        ctx.connect(&ssh, &ctx.all_hosts()).await?;
        let r = Rebuild {
            ctx: &ctx,
            target: target.clone(),
            force: args.force,
            snapshot_dir,
            started: Instant::now(),
            steps: std::sync::Mutex::new(Vec::new()),
            lock_wait: args.lock.duration(),
        };
        r.run(args.check).await
    }
    .await;
    ctx.close().await;
    finish(&inv, &ui, result, !args.check)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// PostgreSQL + Patroni (+ exporter), and an etcd member when in the etcd group.
    Db,
    /// An etcd member only.
    Etcd,
    Router,
}

/// Where the target's etcd membership stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
enum EtcdState {
    /// A healthy voter at the target's address: nothing to do.
    Done,
    /// Added as a learner by an interrupted rebuild: start it (if needed) and promote.
    Learner { id: u64 },
    /// Remove these members (the old one, stale ones), then add the new one.
    Replace { remove: Vec<MemberInfo> },
}

/// What rebuild found and will do, decided before any change.
#[derive(Debug, Serialize)]
struct Assessment {
    kind: Kind,
    address: String,
    leader: Option<String>,
    /// The target is a working member now (rebuilding it needs --force).
    healthy_member: bool,
    etcd: Option<EtcdState>,
    /// Patroni members that are not hosts of the inventory (a renamed host).
    stale_members: Vec<String>,
    steps: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    host: String,
    address: String,
    steps: Vec<(String, f64)>,
    snapshot: Option<String>,
    clone_bytes: Option<u64>,
    clone_secs: Option<f64>,
    gap: Option<Gap>,
    took_secs: f64,
}

struct Rebuild<'c, 'a> {
    ctx: &'c Ctx<'a>,
    target: String,
    force: bool,
    snapshot_dir: PathBuf,
    started: Instant,
    steps: std::sync::Mutex<Vec<(String, f64)>>,
    lock_wait: std::time::Duration,
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

impl<'c, 'a> Rebuild<'c, 'a> {
    fn inv(&self) -> &'a Inventory {
        self.ctx.inv
    }

    fn address(&self) -> String {
        self.inv()
            .host(&self.target)
            .map(|h| h.ip.to_string())
            .unwrap_or_default()
    }

    fn peer_url(&self) -> String {
        format!(
            "{}://{}:{}",
            scheme(self.inv().cluster.tls),
            self.address(),
            self.inv().cluster.etcd_peer_port
        )
    }

    fn in_etcd(&self) -> bool {
        self.ctx.etcd_hosts().contains(&self.target)
    }

    /// The rebuild, top to bottom.
    async fn run(&self, check: bool) -> Result<Exit, Failure> {
        let a = self.assess().await?;
        self.show(&a, check);
        if check {
            return Ok(Exit::Ok);
        }
        crate::testpoint::pause("rebuild:assessed").await;
        let lock = ClusterLock::acquire(self.ctx, "pgha rebuild", true, self.lock_wait).await?;
        // Judged again under the lock: the cluster may have moved since the first
        // assessment (a switchover onto the target, a member lost).
        let a = match self.assess().await {
            Ok(again) => {
                if again.steps != a.steps {
                    self.ctx
                        .ui
                        .line("The cluster changed since the plan above; under the lock:");
                    self.show(&again, false);
                }
                again
            }
            Err(f) => {
                lock.release(self.ctx).await;
                return Err(f);
            }
        };
        // The write port of every router but the one being rebuilt.
        let ep = &self.ctx.ep;
        let ports = ep
            .routers
            .iter()
            .filter(|(name, _)| *name != self.target)
            .map(|(_, ip)| ep.router_port(ip, ep.write_port))
            .collect();
        let probes = gap::start_all(&ep.net, ports);
        let result = self.apply(&a).await;
        let gap = gap::stop_all(probes).await;
        lock.release(self.ctx).await;
        let mut report = result?;
        report.gap = gap;
        report.took_secs = self.started.elapsed().as_secs_f64();
        self.print_report(&report);
        Ok(Exit::Ok)
    }

    /// Read-only: what the cluster looks like without the target, and the refusals.
    async fn assess(&self) -> Result<Assessment, Failure> {
        let phase = self.ctx.ui.phase("assess");
        let t = &self.target;
        let kind = if self.ctx.db_hosts().contains(t) {
            Kind::Db
        } else if self.in_etcd() {
            Kind::Etcd
        } else {
            Kind::Router
        };
        let refuse = |why: String| {
            Failure::error(format!(
                "rebuild of {t} refused, nothing was changed: {why}"
            ))
        };
        // First: with the other TLS setting nothing below could even reach the
        // cluster, and the refusal should say why.
        self.refuse_tls_switch(&refuse).await?;
        let mut a = Assessment {
            kind,
            address: self.address(),
            leader: None,
            healthy_member: false,
            etcd: None,
            stale_members: Vec::new(),
            steps: Vec::new(),
        };
        if kind == Kind::Db {
            let survivors: Vec<String> = self
                .ctx
                .ep
                .patroni
                .iter()
                .filter(|(n, _)| n != t)
                .map(|(_, api)| api.clone())
                .collect();
            let view = patroni::cluster_any(&self.ctx.ep.net, &survivors)
                .await
                .map_err(|e| {
                    refuse(format!(
                        "there is nothing to clone from: no other member's Patroni answers ({e}); \
                     bring the other members back first"
                    ))
                })?;
            let leader = view.leader().map(|l| l.name.clone());
            if leader.as_deref() == Some(t.as_str()) {
                return Err(refuse(format!(
                    "{t} is the leader; hand leadership over first: `pgha switchover {}`, then rebuild {t}",
                    self.inv().path.display()
                )));
            }
            let Some(leader) = leader else {
                return Err(refuse(format!(
                    "there is nothing to clone from: no running leader ({})",
                    view.summary()
                )));
            };
            a.healthy_member = view
                .member(t)
                .is_some_and(|m| m.state == "streaming" && m.lag == Some(0))
                && patroni::status(&self.ctx.ep.net, &self.ctx.api(t))
                    .await
                    .is_ok_and(|s| s["state"] == "running");
            let db = self.ctx.db_hosts();
            a.stale_members = view
                .members
                .iter()
                .filter(|m| !db.contains(&m.name))
                .map(|m| m.name.clone())
                .collect();
            a.leader = Some(leader);
        }
        if self.in_etcd() {
            let state = self.assess_etcd(&refuse).await?;
            if state != EtcdState::Done {
                a.healthy_member = false;
            }
            a.etcd = Some(state);
        }
        if kind == Kind::Router {
            let ip = self.address();
            a.healthy_member = haproxy::backends(&self.ctx.ep.net, &ip, &self.ctx.ep.stats)
                .await
                .is_ok_and(|b| !b.up("primary").is_empty());
        }
        if a.healthy_member && !self.force {
            return Err(refuse(format!(
                "{t} is a healthy member of the cluster; rebuilding it wipes its data: add --force \
                 to do that deliberately"
            )));
        }
        a.steps = self.steps(&a);
        phase.done(format!(
            "{t} ({}) at {}: {} step(s)",
            match kind {
                Kind::Db => "database member",
                Kind::Etcd => "etcd member",
                Kind::Router => "router",
            },
            a.address,
            a.steps.len()
        ));
        Ok(a)
    }

    /// The inventory's `tls` against what the cluster runs, read from the other
    /// hosts before anything is wiped (deploy refuses the same switch).
    async fn refuse_tls_switch(&self, refuse: &dyn Fn(String) -> Failure) -> Result<(), Failure> {
        let mut conv = Converge::load(self.ctx).await?;
        let others: Vec<String> = self
            .ctx
            .etcd_hosts()
            .into_iter()
            .filter(|h| *h != self.target)
            .collect();
        conv.gather_facts(&others).await?;
        conv.refuse_tls_switch(&others.iter().collect::<Vec<_>>())
            .map_err(|f| refuse(f.message))
    }

    /// Right before the wipe: the target is not the leader and another member
    /// leads, judged from a fresh view (a switchover may have moved leadership onto
    /// it since the assessment).
    async fn safe_to_wipe(&self, a: &Assessment) -> Result<(), Failure> {
        if a.kind != Kind::Db {
            return Ok(());
        }
        let t = &self.target;
        let refuse = |why: String| {
            Failure::error(format!(
                "rebuild of {t} stopped before wiping it; nothing was wiped or changed: {why}"
            ))
        };
        let survivors: Vec<String> = self
            .ctx
            .ep
            .patroni
            .iter()
            .filter(|(n, _)| n != t)
            .map(|(_, api)| api.clone())
            .collect();
        let view = patroni::cluster_any(&self.ctx.ep.net, &survivors)
            .await
            .map_err(|e| refuse(format!("no other member's Patroni answers ({e})")))?;
        match view.leader() {
            Some(l) if l.name == *t => {
                return Err(refuse(format!(
                    "{t} leads the cluster now; hand leadership over first: `pgha switchover {}`",
                    self.inv().path.display()
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
        if let Ok(st) = patroni::status(&self.ctx.ep.net, &self.ctx.api(t)).await
            && st["role"] == "primary"
        {
            return Err(refuse(format!("{t}'s Patroni says it is a primary")));
        }
        Ok(())
    }

    async fn assess_etcd(&self, refuse: &dyn Fn(String) -> Failure) -> Result<EtcdState, Failure> {
        let t = &self.target;
        let target_ep = format!(
            "{}://{}:{}",
            scheme(self.inv().cluster.tls),
            self.address(),
            self.inv().cluster.etcd_client_port
        );
        let survivors: Vec<String> = self
            .ctx
            .ep
            .etcd
            .iter()
            .filter(|e| **e != target_ep)
            .cloned()
            .collect();
        let mut c = etcd::client(&self.ctx.ep.net, &survivors)
            .await
            .map_err(|e| refuse(format!("no other etcd member answers ({e})")))?;
        let members = etcd_ops::members(&mut c).await?;
        let report = etcd::probe(&self.ctx.ep.net, &self.ctx.ep.etcd).await;
        let healthy_names: Vec<String> = report
            .endpoints
            .iter()
            .filter_map(|e| e.health.as_ref().ok().and_then(|h| h.name()))
            .collect();
        let url = self.peer_url();
        let ours = |m: &MemberInfo| m.name == *t || m.peer_urls.contains(&url);
        let etcd_names = self.ctx.etcd_hosts();
        if let Some(m) = members.iter().find(|m| m.peer_urls.contains(&url)) {
            if m.learner {
                return Ok(EtcdState::Learner { id: m.id });
            }
            if m.name == *t && healthy_names.contains(t) {
                return Ok(EtcdState::Done);
            }
        }
        let remove: Vec<MemberInfo> = members
            .iter()
            .filter(|m| ours(m) || (!m.name.is_empty() && !etcd_names.contains(&m.name)))
            .cloned()
            .collect();
        let voters_left: Vec<&MemberInfo> = members
            .iter()
            .filter(|m| !m.learner && !remove.contains(m))
            .collect();
        let healthy_left = voters_left
            .iter()
            .filter(|m| healthy_names.contains(&m.name))
            .count();
        if healthy_left < quorum(voters_left.len()) {
            return Err(refuse(format!(
                "removing {t}'s etcd member would leave {} voter(s) of which {healthy_left} are \
                 healthy; {} are needed for quorum: bring the other members back first",
                voters_left.len(),
                quorum(voters_left.len())
            )));
        }
        Ok(EtcdState::Replace { remove })
    }

    fn steps(&self, a: &Assessment) -> Vec<String> {
        let t = &self.target;
        let mut s = Vec::new();
        if matches!(a.etcd, Some(EtcdState::Replace { .. })) {
            s.push(format!(
                "save a snapshot of etcd to {}",
                self.snapshot_dir.display()
            ));
        }
        if a.kind != Kind::Router {
            s.push(format!(
                "wipe {t}'s data directories{}",
                if a.healthy_member {
                    " (--force: it is a working member)"
                } else {
                    ""
                }
            ));
        }
        s.push(format!("install {t}'s packages"));
        match &a.etcd {
            Some(EtcdState::Replace { remove }) => {
                for m in remove {
                    s.push(format!(
                        "etcd: remove member {} ({}, {})",
                        m.id_hex(),
                        if m.name.is_empty() {
                            "unnamed"
                        } else {
                            &m.name
                        },
                        m.peer_urls.join(",")
                    ));
                }
                s.push(format!("etcd: add {t} at {} as a learner, start it with the survivors' membership, promote it", self.peer_url()));
            }
            Some(EtcdState::Learner { id }) => {
                s.push(format!("etcd: start learner {id:x} ({t}) and promote it"))
            }
            Some(EtcdState::Done) => s.push(format!("etcd: {t} is a healthy voter already")),
            None => {}
        }
        if a.kind == Kind::Db {
            s.push(format!(
                "Patroni on {t} clones from the leader {} and streams",
                a.leader.as_deref().unwrap_or("?")
            ));
        }
        s.push(
            "every other host follows (pg_hba, etcd endpoints, HAProxy backends: reloads)".into(),
        );
        for m in &a.stale_members {
            s.push(format!(
                "remove stale Patroni member {m} and its replication slot"
            ));
        }
        s.push("verify the cluster".into());
        s
    }

    fn show(&self, a: &Assessment, check: bool) {
        let ui = &self.ctx.ui;
        ui.line("");
        ui.line(format!(
            "REBUILD {} at {}{}",
            self.target,
            a.address,
            if check {
                " (--check: nothing is changed)"
            } else {
                ""
            }
        ));
        for (i, s) in a.steps.iter().enumerate() {
            ui.line(format!("  {}. {s}", i + 1));
        }
        if check && ui.json() {
            println!("{}", json!({"check": true, "rebuild": a}));
        }
    }

    /// Time a step for the report.
    async fn step<T>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let t0 = Instant::now();
        let r = f.await?;
        self.steps
            .lock()
            .unwrap()
            .push((name.to_string(), t0.elapsed().as_secs_f64()));
        Ok(r)
    }

    async fn apply(&self, a: &Assessment) -> Result<Report, Failure> {
        let t = self.target.clone();
        let mut snapshot = None;
        if matches!(a.etcd, Some(EtcdState::Replace { .. })) {
            // Before the membership changes.
            snapshot = Some(self.step("etcd snapshot", self.snapshot()).await?);
        }
        let conv = {
            let mut conv = Converge::load(self.ctx).await?;
            if a.kind != Kind::Router {
                self.step("wipe", self.wipe(a, &conv)).await?;
            }
            self.step("facts", conv.gather_and_plan()).await?;
            self.step(
                "packages",
                conv.packages_on(std::slice::from_ref(&t), false),
            )
            .await?;
            conv
        };
        if let Some(state) = &a.etcd {
            self.step("etcd member", self.etcd_member(state, &conv))
                .await?;
        }
        drop(conv);
        // The rest is the usual rollout, from fresh facts: the new host starts, every
        // other host follows (files that differ, reloads), nothing else changes.
        let mut conv = Converge::load(self.ctx).await?;
        conv.gather_and_plan().await?;
        let existing = conv.existing().await?;
        conv.etcd(false).await?;
        let clone_started = Instant::now();
        let leader = self.step("patroni", conv.patroni(true)).await?;
        let clone_secs = (a.kind == Kind::Db).then(|| clone_started.elapsed().as_secs_f64());
        conv.dynamic_config(&leader, existing.dcs_patch).await?;
        conv.roles(&leader).await?;
        conv.exporters().await?;
        conv.haproxy().await?;
        if !a.stale_members.is_empty() {
            self.step(
                "stale members",
                self.remove_stale(&a.stale_members, &leader),
            )
            .await?;
        }
        crate::ops::etcd::keep_apart(self.ctx).await;
        self.step("verify", verify::verify(self.ctx)).await?;
        let clone_bytes = if a.kind == Kind::Db {
            let out = self
                .ctx
                .run_on(
                    &t,
                    "data directory size",
                    format!(
                        "du -sb {} | cut -f1",
                        shell_quote(&self.inv().cluster.postgresql_data_dir)
                    ),
                )
                .await?;
            out.trim().parse().ok()
        } else {
            None
        };
        Ok(Report {
            host: t,
            address: a.address.clone(),
            steps: self.steps.lock().unwrap().clone(),
            snapshot: snapshot.map(|p: PathBuf| p.display().to_string()),
            clone_bytes,
            clone_secs,
            gap: None,
            took_secs: 0.0,
        })
    }

    /// A snapshot of etcd's data from a healthy survivor, kept beside the inventory.
    async fn snapshot(&self) -> Result<PathBuf, Failure> {
        let report = etcd::probe(&self.ctx.ep.net, &self.ctx.ep.etcd).await;
        let survivor = report
            .endpoints
            .iter()
            .find(|e| {
                e.health
                    .as_ref()
                    .is_ok_and(|h| h.name().as_deref() != Some(&self.target))
            })
            .map(|e| e.endpoint.clone())
            .ok_or_else(|| Failure::error("no healthy etcd member to take a snapshot from"))?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let stem = self
            .inv()
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "inventory".into());
        let path = self
            .snapshot_dir
            .join(format!("{stem}.etcd-snapshot-{stamp}.db"));
        let bytes = etcd_ops::snapshot(&self.ctx.ep.net, &survivor, &path).await?;
        self.ctx.ui.host(
            "etcd",
            format!(
                "snapshot of {survivor} saved to {} ({bytes} bytes)",
                path.display()
            ),
        );
        Ok(path)
    }

    /// Stop what may run on the target and remove its data directories (etcd's only
    /// when its membership is replaced).
    async fn wipe(&self, a: &Assessment, conv: &Converge<'_, '_>) -> Result<(), Failure> {
        crate::testpoint::pause("rebuild:before-wipe").await;
        self.safe_to_wipe(a).await?;
        let c = &self.inv().cluster;
        let roles = &conv.desired[&self.target];
        let mut script = String::new();
        if a.kind == Kind::Db {
            // The last word is the host's own: a PostgreSQL that runs as a primary
            // there is never stopped or wiped (exit 3 is reported below).
            script.push_str(&format!(
                "r=$({} -Atq -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
                 if [ \"$r\" = f ]; then echo 'PostgreSQL on this host is a primary' >&2; exit 3; fi
",
                install::psql(c)
            ));
        }
        for r in ["patroni", "exporter"] {
            if let Some(role) = roles.role(r) {
                script.push_str(&install::remove(role));
                script.push('\n');
            }
        }
        if a.kind == Kind::Db {
            script.push_str(&format!("rm -rf {}\n", shell_quote(&c.postgresql_data_dir)));
        }
        if matches!(a.etcd, Some(EtcdState::Replace { .. }))
            && let Some(role) = roles.role("etcd")
        {
            script.push_str(&format!(
                "{}\nrm -rf /var/lib/etcd/default {}\n",
                install::remove(role),
                shell_quote(&desired::etcd_data_dir(c))
            ));
        }
        self.ctx.run_on(&self.target, "wipe", script).await?;
        self.ctx.ui.host(&self.target, "data directories wiped");
        Ok(())
    }

    /// Replace the target's etcd member the safe way, then make every etcd host's
    /// configuration file what deploy renders (no restarts: those values are read
    /// only when a data directory is empty).
    async fn etcd_member(&self, state: &EtcdState, conv: &Converge<'_, '_>) -> Result<(), Failure> {
        let t = &self.target;
        let c = &self.inv().cluster;
        let target_ep = format!(
            "{}://{}:{}",
            scheme(c.tls),
            self.address(),
            c.etcd_client_port
        );
        let survivors: Vec<String> = self
            .ctx
            .ep
            .etcd
            .iter()
            .filter(|e| **e != target_ep)
            .cloned()
            .collect();
        self.ctx.ensure_locked("etcd: replace the member").await?;
        let mut client = etcd::client(&self.ctx.ep.net, &survivors).await?;
        let id = match state {
            EtcdState::Done => None,
            EtcdState::Learner { id } => Some(*id),
            EtcdState::Replace { remove } => {
                for m in remove {
                    etcd_ops::remove(&mut client, m).await?;
                    self.ctx.ui.host(
                        "etcd",
                        format!("removed member {} ({})", m.id_hex(), m.name),
                    );
                    self.ctx.ui.changed(t, 1);
                }
                let (id, _) = etcd_ops::add_learner(&mut client, &self.peer_url()).await?;
                self.ctx
                    .ui
                    .host("etcd", format!("added {t} as learner {id:x}"));
                Some(id)
            }
        };
        let env = conv.desired[t]
            .files()
            .find(|f| f.path == "/etc/default/etcd")
            .cloned()
            .ok_or_else(|| Failure::error(format!("{t}: no etcd configuration rendered")))?;
        if let Some(id) = id {
            let members = etcd_ops::members(&mut client).await?;
            let initial = etcd_ops::initial_cluster(&members, id, t);
            let mut joining = env.clone();
            joining.content =
                joining_env(&String::from_utf8_lossy(&env.content), &initial).into_bytes();
            // Every file of the member (its TLS certificate and key too), the
            // configuration in its joining form.
            let mut files: Vec<&desired::DesiredFile> = conv
                .role(t, "etcd")
                .map_err(Failure::from)?
                .files
                .iter()
                .filter(|f| f.path != env.path)
                .collect();
            files.push(&joining);
            let s = self.ctx.session(t)?;
            apply::write_files(s, &files)
                .await
                .map_err(|e| host_failed(format!("{t}: write etcd's files: {e:#}")))?;
            let dir = desired::etcd_data_dir(c);
            let role = conv.role(t, "etcd").map_err(Failure::from)?;
            let running = self
                .ctx
                .run_on(
                    t,
                    "etcd state",
                    format!("if {}; then echo active; fi", install::is_active(role)),
                )
                .await?;
            if running.trim() != "active" {
                self.ctx
                    .run_on(
                        t,
                        "start etcd",
                        format!(
                            "rm -rf /var/lib/etcd/default {d}\ninstall -d -o etcd -g etcd -m 0700 {d}\n{}\n{}",
                            install::enable(role),
                            install::start(role, true),
                            d = shell_quote(&dir)
                        ),
                    )
                    .await?;
            }
            self.ctx
                .ui
                .host(t, format!("etcd started, joining as {initial}"));
            etcd_ops::promote(&mut client, id).await?;
            self.ctx
                .ui
                .host("etcd", format!("{t} promoted to a voting member"));
        }
        waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        // The survivors' files name the new address too; no restart needed.
        for h in self.ctx.etcd_hosts() {
            let f = conv.desired[&h]
                .files()
                .find(|f| f.path == "/etc/default/etcd")
                .cloned()
                .ok_or_else(|| Failure::error(format!("{h}: no etcd configuration rendered")))?;
            let s = self.ctx.session(&h)?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&f.content));
            if s.sha256(&f.path).await.map_err(Failure::from)?.as_deref() != Some(sha.as_str()) {
                apply::write_files(s, &[&f])
                    .await
                    .map_err(|e| host_failed(format!("{h}: write /etc/default/etcd: {e:#}")))?;
            }
        }
        let q = waits::wait_etcd_quorum(&self.ctx.ep, etcd_ops::QUORUM).await?;
        self.ctx.ui.host(
            "etcd",
            format!(
                "{} voters healthy, leader {}, cluster id {}",
                q.members.len(),
                q.leader,
                q.cluster_id
            ),
        );
        Ok(())
    }

    /// Members of another name (a renamed host): their key in etcd and their
    /// replication slot on the leader go, so nothing waits for them.
    async fn remove_stale(&self, stale: &[String], leader: &str) -> Result<(), Failure> {
        self.ctx
            .ensure_locked("remove stale Patroni members")
            .await?;
        let c = &self.inv().cluster;
        let mut client = etcd::client(&self.ctx.ep.net, &self.ctx.ep.etcd).await?;
        for m in stale {
            let key = format!("/service/{}/members/{m}", c.cluster_name);
            client
                .delete(key.clone(), None)
                .await
                .map_err(|e| Failure::error(format!("etcd: delete {key}: {e}")))?;
            let slot = m
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() {
                        ch.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect::<String>();
            let sql = format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND NOT active"
            );
            self.ctx
                .run_on(
                    leader,
                    "drop a stale replication slot",
                    format!("{} -Atq -c {}", install::psql(c), shell_quote(&sql)),
                )
                .await?;
            self.ctx
                .ui
                .host("patroni", format!("stale member {m}: key and slot removed"));
        }
        Ok(())
    }

    fn print_report(&self, r: &Report) {
        let ui = &self.ctx.ui;
        ui.line("");
        ui.line(format!(
            "{} rebuilt at {} in {:.1}s.",
            r.host, r.address, r.took_secs
        ));
        for (s, secs) in &r.steps {
            ui.line(format!("  {s:<16} {secs:.1}s"));
        }
        if let (Some(b), Some(s)) = (r.clone_bytes, r.clone_secs) {
            ui.line(format!(
                "  clone: {:.1} MiB, streaming {s:.1}s after Patroni started",
                b as f64 / (1u64 << 20) as f64
            ));
        }
        if let Some(p) = &r.snapshot {
            ui.line(format!("  etcd snapshot: {p}"));
        }
        match &r.gap {
            Some(g) if g.no_gap() => ui.line("  write gap on the write port: none"),
            Some(g) => ui.line(format!("  write gap on the write port: {}", g.summary())),
            None => ui.line("  write gap: not measured (no other router)"),
        }
        if ui.json() {
            println!("{}", json!({"ok": true, "rebuild": r}));
        }
    }
}

/// etcd's environment file for a member joining a running cluster: the survivors'
/// exact membership and state `existing`.
fn joining_env(rendered: &str, initial_cluster: &str) -> String {
    rendered
        .lines()
        .map(|l| {
            if l.starts_with("ETCD_INITIAL_CLUSTER=") {
                format!("ETCD_INITIAL_CLUSTER=\"{initial_cluster}\"")
            } else if l.starts_with("ETCD_INITIAL_CLUSTER_STATE=") {
                "ETCD_INITIAL_CLUSTER_STATE=\"existing\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joining_member_starts_with_the_survivors_membership() {
        let rendered = "ETCD_NAME=\"db2\"\nETCD_INITIAL_CLUSTER=\"db1=a,db2=b,db3=c\"\nETCD_INITIAL_CLUSTER_TOKEN=\"t\"\nETCD_INITIAL_CLUSTER_STATE=\"new\"\n";
        let out = joining_env(rendered, "db1=a,db2=z,db3=c");
        assert_eq!(
            out,
            "ETCD_NAME=\"db2\"\nETCD_INITIAL_CLUSTER=\"db1=a,db2=z,db3=c\"\nETCD_INITIAL_CLUSTER_TOKEN=\"t\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"
        );
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
    }
}
