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
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::commands::args::RebuildArgs;
use crate::commands::ssh_options;
use crate::commands::{finish, inventory_path, load_inventory, load_pki};
use crate::error::{Exit, Failure};
use crate::inventory::Inventory;
use crate::ops::converge::Converge;
use crate::ops::gap::{self, Gap};
use crate::ops::lock::ClusterLock;
use crate::ops::member::{self, EtcdState, Member};
use crate::ops::{Ctx, roster, verify};
use crate::probe::{haproxy, patroni};
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

impl<'c, 'a> Rebuild<'c, 'a> {
    fn inv(&self) -> &'a Inventory {
        self.ctx.inv
    }

    /// The target, as its membership is changed (ops::member).
    fn member(&self) -> Member<'c, 'a> {
        Member::new(self.ctx, &self.target)
    }

    fn address(&self) -> String {
        self.member().address()
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
        // A killed run's PAUSE would hold pooled clients through this one.
        crate::ops::pool::resume_interrupted(self.ctx).await;
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
    // Long by design: the refusals, in the order they are judged.
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
            let view = self.member().others_view().await.map_err(|e| {
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
            let state = self.member().etcd_state(&refuse).await?;
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
                s.push(format!("etcd: add {t} at {} as a learner, start it with the survivors' membership, promote it", self.member().peer_url()));
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
            let m = self.member();
            let saved = m.save_etcd_snapshot(&self.snapshot_dir);
            snapshot = Some(self.step("etcd snapshot", saved).await?);
        }
        let conv = {
            let mut conv = Converge::load(self.ctx).await?;
            if a.kind != Kind::Router {
                crate::testpoint::pause("rebuild:before-wipe").await;
                let data = a.kind == Kind::Db;
                let etcd = matches!(a.etcd, Some(EtcdState::Replace { .. }));
                let m = self.member();
                self.step("wipe", m.wipe(&conv, data, etcd)).await?;
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
            let m = self.member();
            self.step("etcd member", m.replace_etcd_member(state, &conv))
                .await?;
        }
        drop(conv);
        // The rest is the usual rollout, from fresh facts: the new host starts, every
        // other host follows (files that differ, reloads), nothing else changes.
        let mut conv = Converge::load(self.ctx).await?;
        conv.gather_and_plan().await?;
        let existing = conv.existing_after_rebuild().await?;
        conv.etcd(false).await?;
        let clone_started = Instant::now();
        let leader = self.step("patroni", conv.patroni(true)).await?;
        let clone_secs = (a.kind == Kind::Db).then(|| clone_started.elapsed().as_secs_f64());
        conv.dynamic_config(&leader, existing.dcs_patch).await?;
        conv.roles(&leader).await?;
        conv.exporters().await?;
        conv.haproxy().await?;
        // A rebuilt repository host starts empty: stanza, timers, a first full backup.
        self.step("backups", conv.backups()).await?;
        // A rebuilt monitoring host starts with no samples; every target up again.
        self.step("monitoring", conv.monitoring()).await?;
        if !a.stale_members.is_empty() {
            self.step(
                "stale members",
                member::remove_stale_members(self.ctx, &a.stale_members, &leader),
            )
            .await?;
        }
        crate::ops::etcd::keep_apart(self.ctx).await;
        self.step("verify", verify::verify(self.ctx)).await?;
        // A renamed host's old name leaves pgha's record of the hosts too.
        roster::write(self.ctx, &roster::Roster::of(self.inv())).await?;
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
