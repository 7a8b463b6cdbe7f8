//! Converging hosts to the inventory: desired state, facts from every host in one
//! round trip each, a pure plan per host, what of the cluster exists already, and
//! the refusals before any change. The rollout phases that act on the plans are in
//! `ops::phases`. `deploy` runs them all; `rebuild` after replacing a lost member.

use std::collections::BTreeMap;

use crate::engine::desired::{self, HostDesired};
use crate::engine::facts::{FactsRequest, HostFacts, SqlFactsRequest};
use crate::engine::plan::{self, HostPlan};
use crate::engine::preflight::{limit_refusals, preflight};
use crate::engine::roles::Library;
use crate::engine::sqlplan::{self, SqlChange};
use crate::error::Failure;
use crate::install;
use crate::inventory::{InstallMethod, Inventory};
use crate::ops::Ctx;
use crate::ops::endpoints::scheme;
use crate::ops::etcd as etcd_ops;
use crate::ops::images;
use crate::ops::membership::{self, Changes, Layout, Observed};
use crate::ops::run::host_failed;
use crate::probe::{etcd, patroni};

/// What a cluster that may already exist looks like before any change.
pub struct Existing {
    pub etcd_new: bool,
    pub patroni_initialized: bool,
    pub dcs_patch: Option<serde_json::Value>,
    pub sql_changes: Option<Vec<SqlChange>>,
    /// etcd membership changes the inventory asks of a running etcd.
    pub members: Changes,
    /// Patroni is paused and pgha's record says pgha paused it: a run stopped
    /// before it resumed it (the `patroni` phase finishes that run's work).
    pub left_paused: bool,
}

/// Desired state, facts and plans of every host of a run.
pub struct Converge<'c, 'a> {
    pub ctx: &'c Ctx<'a>,
    pub inv: &'a Inventory,
    pub desired: BTreeMap<String, HostDesired>,
    pub facts: BTreeMap<String, HostFacts>,
    pub plans: BTreeMap<String, HostPlan>,
    /// (host, role) steps a host already did in this run, ahead of their phase.
    pub(super) done: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// install_method docker: the images' archive (push), made once per run.
    pub(super) archive: images::Archive,
}

/// Every host's desired state for this run: the inventory's roles rendered with
/// the cluster's certificates and, under the docker method, the ids of the images
/// the containers run (push: this machine's; a missing image fails here, before
/// any change).
pub async fn desired_state(ctx: &Ctx<'_>) -> Result<BTreeMap<String, HostDesired>, Failure> {
    let image_ids = if ctx.inv.cluster.install_method == InstallMethod::Docker {
        images::local_ids(&ctx.inv.cluster).await?
    } else {
        BTreeMap::new()
    };
    let lib = Library::load().map_err(|e| Failure::error(format!("{e:#}")))?;
    let inputs = desired::Inputs {
        image_ids,
        pki: ctx.pki.clone(),
    };
    Ok(desired::desired_state_with(ctx.inv, &lib, &inputs)
        .map_err(|e| Failure::error(format!("{e:#}")))?
        .into_iter()
        .map(|d| (d.host.clone(), d))
        .collect())
}

/// See `Converge::idle`.
fn nothing_to_change(e: &Existing, plans: &BTreeMap<String, HostPlan>) -> bool {
    !e.etcd_new
        && e.patroni_initialized
        && e.dcs_patch.is_none()
        && e.members.is_empty()
        && e.sql_changes.as_ref().is_some_and(|c| c.is_empty())
        && !e.left_paused
        && plans.values().all(|p| p.actions.is_empty())
}

/// What `existing` reads from a cluster that runs. None of it depends on the
/// facts, so a re-run reads it beside them (`read_existing`).
pub struct Reads {
    members: Result<Observed, String>,
    initialized: bool,
    /// Patroni's dynamic configuration as the first member that answers has it.
    config: Option<serde_json::Value>,
}

impl Default for Reads {
    /// A new cluster: nothing to read.
    fn default() -> Self {
        Reads {
            members: Err("no etcd member has data yet".into()),
            initialized: false,
            config: None,
        }
    }
}

/// etcd's and Patroni's members, whether Patroni's cluster exists, and its
/// dynamic configuration, read at once.
pub async fn read_existing(ctx: &Ctx<'_>) -> Reads {
    let (members, initialized, config) = tokio::join!(
        observe_members(ctx),
        patroni_initialized(ctx),
        patroni_config(ctx)
    );
    Reads {
        members,
        initialized,
        config,
    }
}

/// `read_existing` without the members, for a caller that does not judge them
/// (a rebuild replaced the etcd member itself).
async fn read_state(ctx: &Ctx<'_>) -> Reads {
    let (initialized, config) = tokio::join!(patroni_initialized(ctx), patroni_config(ctx));
    Reads {
        members: Err("not read: the caller does not judge members".into()),
        initialized,
        config,
    }
}

async fn patroni_initialized(ctx: &Ctx<'_>) -> bool {
    etcd::key_exists(
        &ctx.ep.net,
        &ctx.ep.etcd,
        &format!("/service/{}/initialize", ctx.inv.cluster.cluster_name),
    )
    .await
    .unwrap_or(false)
}

async fn patroni_config(ctx: &Ctx<'_>) -> Option<serde_json::Value> {
    for api in ctx.ep.patroni_apis() {
        if let Ok(have) = patroni::config(&ctx.ep.net, &api).await {
            return Some(have);
        }
    }
    None
}

/// The etcd and Patroni members the running cluster reports (etcd must answer;
/// Patroni's members are read when any member's REST API answers).
async fn observe_members(ctx: &Ctx<'_>) -> Result<Observed, String> {
    let etcd = async {
        let mut c = etcd::client(&ctx.ep.net, &ctx.ep.etcd)
            .await
            .map_err(|e| e.to_string())?;
        etcd_ops::members(&mut c).await.map_err(|f| f.message)
    };
    let patroni = async {
        patroni::cluster_any(&ctx.ep.net, &ctx.ep.patroni_apis())
            .await
            .map(|v| v.members.into_iter().map(|m| m.name).collect())
            .unwrap_or_default()
    };
    let recorded = crate::ops::roster::read(ctx);
    let (etcd, patroni, recorded) = tokio::join!(etcd, patroni, recorded);
    let etcd = etcd?;
    let recorded = recorded.missing_from(ctx.inv);
    Ok(Observed {
        etcd,
        patroni,
        recorded,
    })
}

/// The inventory's `postgresql_parameters`, parsed by PostgreSQL's own server
/// binary on a db host before any change (names, types, ranges, enums); a
/// refusal names the file, the line and the key (exit 4). Ok(false): no db host
/// has the server yet (a first deploy checks again once packages are in).
pub async fn check_parameters(ctx: &Ctx<'_>) -> Result<bool, Failure> {
    use crate::engine::params;
    let c = &ctx.inv.cluster;
    if c.postgresql_parameters.is_empty() {
        return Ok(true);
    }
    let script = params::script(c, &c.postgresql_parameters);
    for h in ctx.db_hosts() {
        let Ok(s) = ctx.session(&h) else {
            continue;
        };
        let out = s
            .exec(
                &crate::ssh::Cmd::root(script.clone()).timeout(std::time::Duration::from_secs(60)),
            )
            .await
            .map_err(|e| host_failed(format!("{h}: checking postgresql_parameters: {e}")))?;
        let text = format!(
            "{}{}",
            out.stdout_str(),
            String::from_utf8_lossy(&out.stderr)
        );
        match params::verdict(Some(out.status), &text) {
            Ok(true) => return Ok(true),
            Ok(false) => continue,
            Err((name, words)) => {
                let path = ctx.inv.path.display();
                let at = name
                    .as_deref()
                    .and_then(|n| {
                        let text = std::fs::read_to_string(&ctx.inv.path).ok()?;
                        params::line_of(&text, n)
                    })
                    .map(|l| format!(":{l}"))
                    .unwrap_or_default();
                let key = name
                    .map(|n| format!("postgresql_parameters.{n}"))
                    .unwrap_or_else(|| "postgresql_parameters".into());
                return Err(Failure::new(
                    crate::error::Exit::Inventory,
                    format!(
                        "{path}{at}: {key}: PostgreSQL {} refuses it ({words}); fix or remove it. \
                         Nothing was changed",
                        c.postgresql_version
                    ),
                ));
            }
        }
    }
    Ok(false)
}

impl<'c, 'a> Converge<'c, 'a> {
    /// Desired state of every host. Under the docker method the images must be at
    /// hand first (push: in this machine's Docker): a missing one fails here, before
    /// any change.
    pub async fn load(ctx: &'c Ctx<'a>) -> Result<Self, Failure> {
        let desired = desired_state(ctx).await?;
        Ok(Converge {
            ctx,
            inv: ctx.inv,
            desired,
            facts: BTreeMap::new(),
            plans: BTreeMap::new(),
            done: Default::default(),
            archive: Default::default(),
        })
    }

    pub(super) fn facts_request(&self, host: &str) -> FactsRequest {
        let d = &self.desired[host];
        let c = &self.inv.cluster;
        let mut paths = Vec::new();
        if d.role("etcd").is_some() {
            paths.push(format!("{}/member", desired::etcd_data_dir(c)));
            paths.push(format!("{}/ca.crt", desired::TLS_DIR));
        }
        let is_db = d.role("patroni").is_some();
        if is_db {
            paths.push(format!("{}/PG_VERSION", c.postgresql_data_dir));
            paths.push(format!("/etc/postgresql/{}/main", c.postgresql_version));
        }
        // The roles' directories, their scheduled timers with the units they start,
        // and whether the unit files of timers no longer scheduled are there.
        let dirs: Vec<String> = d.dirs().map(|d| d.path.clone()).collect();
        let mut systemd_units = Vec::new();
        for t in d.timers() {
            if t.scheduled {
                systemd_units.extend([t.timer.clone(), t.service.clone()]);
            } else {
                paths.push(t.unit_file());
            }
        }
        // A service in a container is read from Docker, the others from systemd.
        let containers = d.containers();
        let images = d.images();
        let mut units: Vec<String> = d
            .roles
            .iter()
            .filter(|r| r.container.is_none())
            .flat_map(|r| r.services.clone())
            .collect();
        let mut containers = containers;
        let mut marked = Vec::new();
        for r in &d.retired {
            match &r.container {
                Some(c) => containers.push((r.service.clone(), c.clone())),
                None => units.push(r.service.clone()),
            }
            marked.push(r.marker.clone());
        }
        FactsRequest {
            packages: d.packages(),
            files: d.files().map(|f| f.path.clone()).collect(),
            units,
            users: if images.is_empty() {
                Vec::new()
            } else {
                crate::docker::stack::USERS
                    .iter()
                    .map(|(n, _, _)| n.to_string())
                    .collect()
            },
            containers,
            images,
            paths,
            dirs,
            systemd_units,
            marked,
            read_once: d
                .files()
                .filter(|f| !f.read_once.is_empty())
                .map(|f| (f.path.clone(), f.read_once.clone()))
                .collect(),
            process_env: d
                .roles
                .iter()
                .filter(|r| !r.started_with.is_empty())
                .flat_map(|r| {
                    let names: Vec<String> = r
                        .started_with
                        .iter()
                        .map(|w| w.split('=').next().unwrap_or_default().to_string())
                        .collect();
                    r.services.iter().map(move |s| (s.clone(), names.clone()))
                })
                .collect(),
            sql: is_db.then(|| SqlFactsRequest {
                port: c.postgresql_port,
                reachable: install::postgres_reachable(c),
                psql: install::psql(c),
                roles: [
                    c.monitor_user.clone(),
                    c.app_user.clone(),
                    c.pgbouncer_auth_user.clone(),
                ]
                .into_iter()
                .chain(c.postgresql_users.iter().flat_map(|u| {
                    std::iter::once(u.name.clone()).chain(u.member_of.iter().cloned())
                }))
                .collect(),
                databases: std::iter::once(c.app_database.clone())
                    .chain(c.postgresql_databases.iter().map(|d| d.name.clone()))
                    .collect(),
                extension_databases: c
                    .postgresql_databases
                    .iter()
                    .filter(|d| !d.absent && !d.extensions.is_empty())
                    .map(|d| d.name.clone())
                    .collect(),
            }),
        }
    }

    /// Facts of these hosts only (read-only; no preflight, no plan).
    pub async fn gather_facts(&mut self, hosts: &[String]) -> Result<(), Failure> {
        let requests: BTreeMap<String, FactsRequest> = hosts
            .iter()
            .map(|h| (h.clone(), self.facts_request(h)))
            .collect();
        let (facts, _) = self.ctx.gather(&requests).await?;
        self.facts.extend(facts);
        Ok(())
    }

    /// Facts, preflight (refuses before any change), and a plan per host.
    pub async fn gather_and_plan(&mut self) -> Result<(), Failure> {
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
        self.note_stale_containers();
        Ok(())
    }

    /// Running containers created from another spec (a new image, other run
    /// arguments) keep running: re-creating them all at once would stop the
    /// cluster. `pgha upgrade` re-creates them one at a time.
    fn note_stale_containers(&self) {
        let mut stale = Vec::new();
        for (h, d) in &self.desired {
            for r in &d.roles {
                let Some(c) = &r.container else { continue };
                if let Some(f) = self
                    .facts
                    .get(h)
                    .and_then(|f| f.containers.get(&r.services[0]))
                    && f.running
                    && f.spec != c.spec
                {
                    stale.push(format!("{h} {}", c.name));
                }
            }
        }
        if !stale.is_empty() {
            self.ctx.ui.warn(format!(
                "{} container(s) run another image or spec than the inventory's ({}): \
                 `pgha upgrade` re-creates them one at a time with the cluster serving",
                stale.len(),
                stale.join(", ")
            ));
        }
    }

    /// Whether etcd and Patroni exist, and the cluster-wide changes visible now.
    pub async fn existing(&self) -> Result<Existing, Failure> {
        self.existing_judged(true, None).await
    }

    /// `existing`, from what `read_existing` read beside the facts.
    pub async fn existing_from(&self, reads: Option<Reads>) -> Result<Existing, Failure> {
        self.existing_judged(true, reads).await
    }

    /// `existing` for a rebuild, which replaced the etcd member itself and removes
    /// a renamed host's old Patroni member and record at its end.
    pub async fn existing_after_rebuild(&self) -> Result<Existing, Failure> {
        self.existing_judged(false, None).await
    }

    async fn existing_judged(
        &self,
        judge_members: bool,
        reads: Option<Reads>,
    ) -> Result<Existing, Failure> {
        let c = &self.inv.cluster;
        let etcd_hosts = self.ctx.etcd_hosts();
        let etcd_member_dir = format!("{}/member", desired::etcd_data_dir(c));
        let (with_data, missing): (Vec<&String>, Vec<&String>) = etcd_hosts
            .iter()
            .partition(|h| self.facts[*h].exists(&etcd_member_dir));
        let etcd_new = with_data.is_empty();
        if !etcd_new {
            self.refuse_tls_switch(&with_data)?;
        }
        let with_data: Vec<String> = with_data.into_iter().cloned().collect();
        let reads = match reads {
            Some(r) => r,
            None if etcd_new => Reads::default(),
            None if !judge_members => read_state(self.ctx).await,
            None => read_existing(self.ctx).await,
        };
        let members = if etcd_new || !judge_members {
            Changes::default()
        } else {
            match reads.members {
                Ok(obs) => self.plan_members(&obs, &with_data)?,
                // etcd stopped everywhere (destroy kept the data, a power cut): the
                // etcd phase starts it; a host without data cannot be judged then.
                Err(e) if !missing.is_empty() => {
                    let list =
                        |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                    return Err(host_failed(format!(
                        "etcd hosts {} have no data directory ({etcd_member_dir}) while {} do, and \
                         etcd does not answer ({e}): pgha cannot tell a new member from a lost one. \
                         Take the new hosts out of the inventory's etcd members and deploy to bring \
                         etcd back first (a lost member is replaced with `pgha rebuild HOST`); \
                         nothing was changed",
                        list(&missing),
                        with_data.join(", ")
                    )));
                }
                Err(_) => Changes::default(),
            }
        };
        let patroni_initialized = !etcd_new && reads.initialized;
        // pgha's record is read only when Patroni says it is paused.
        let left_paused = patroni_initialized
            && reads
                .config
                .as_ref()
                .is_some_and(|have| have["pause"] == true)
            && super::patroni::paused_by_pgha(self.ctx).await?;
        let dcs_patch = if patroni_initialized {
            reads
                .config
                .and_then(|have| plan::plan_dcs(&desired::dcs_config(c), &have))
        } else {
            None
        };
        Ok(Existing {
            etcd_new,
            patroni_initialized,
            dcs_patch,
            sql_changes: self
                .facts
                .values()
                .find_map(|f| f.primary_sql.as_ref())
                .map(|sql| self.plan_sql(sql))
                .transpose()?,
            members,
            left_paused,
        })
    }

    /// Nothing for this run to change: etcd and Patroni's cluster exist with the
    /// inventory's members, configuration, roles and databases, and every host's
    /// plan is empty. What may still change (a pending restart, the backup timers)
    /// is read by the phases themselves.
    pub fn idle(&self, e: &Existing) -> bool {
        nothing_to_change(e, &self.plans)
    }

    /// The roles/databases changes, or the refusals as an inventory error naming
    /// each entry's line: nothing is changed.
    pub fn plan_sql(
        &self,
        have: &crate::engine::facts::SqlFacts,
    ) -> Result<Vec<SqlChange>, Failure> {
        sqlplan::plan_sql(&self.inv.cluster, &self.inv.secrets, have).map_err(|refusals| {
            let text = std::fs::read_to_string(&self.inv.path).unwrap_or_default();
            let lines: Vec<String> = refusals
                .iter()
                .map(|r| {
                    let at = sqlplan::line_of(&text, r.list, &r.name)
                        .map(|l| format!(":{l}"))
                        .unwrap_or_default();
                    format!("{}{at}: {r}", self.inv.path.display())
                })
                .collect();
            Failure::new(
                crate::error::Exit::Inventory,
                format!("{}\nNothing was changed", lines.join("\n")),
            )
        })
    }

    /// Patroni's cluster exists in etcd (false when etcd does not answer).
    pub async fn patroni_initialized(&self) -> bool {
        patroni_initialized(self.ctx).await
    }

    /// A running cluster keeps the TLS setting it was built with: etcd members
    /// cannot be moved between plain and TLS URLs by a restart, and Patroni, HAProxy
    /// and clients would lose each other half-way. Whether it runs with TLS is read
    /// from its etcd hosts (pgha's CA file is there). Refused before any change.
    pub fn refuse_tls_switch(&self, etcd_hosts: &[&String]) -> Result<(), Failure> {
        let ca = format!("{}/ca.crt", desired::TLS_DIR);
        let with_tls = etcd_hosts.iter().any(|h| self.facts[*h].exists(&ca));
        match (self.inv.cluster.tls, with_tls) {
            (true, false) => Err(Failure::error(
                "this cluster runs without TLS and the inventory asks for `tls: true` (the \
                 default); pgha does not switch a running cluster to TLS in place. Nothing was \
                 changed. Keep running it as it is with `tls: false` in the inventory, or move it \
                 to TLS by the procedure in the README (\"Moving an existing cluster to TLS\")",
            )),
            (false, true) => Err(Failure::error(
                "this cluster runs with TLS and the inventory says `tls: false`; pgha does not \
                 turn TLS off on a running cluster. Nothing was changed: set `tls: true`",
            )),
            _ => Ok(()),
        }
    }

    /// The inventory's `postgresql_parameters`, parsed by PostgreSQL's own server
    /// binary on a db host before any change (names, types, ranges, enums); a
    /// refusal names the file, the line and the key (exit 4). Ok(false): no db host
    /// has the server yet (a first deploy checks again once packages are in).
    pub async fn check_parameters(&self) -> Result<bool, Failure> {
        check_parameters(self.ctx).await
    }

    pub fn refuse_unsafe_limit(&self, e: &Existing) -> Result<(), Failure> {
        if !self.ctx.limited() {
            return Ok(());
        }
        let mut reasons = limit_refusals(
            e.etcd_new || !e.patroni_initialized,
            e.dcs_patch.is_some(),
            e.sql_changes.as_ref().is_some_and(|s| !s.is_empty()),
        );
        if !e.members.is_empty() {
            reasons.push(format!(
                "etcd's membership changes ({}): every etcd member's configuration follows",
                e.members.lines().join("; ")
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Failure::options(format!(
                "--limit is not safe here; run without --limit. Reasons:\n  {}",
                reasons.join("\n  ")
            )))
        }
    }

    pub async fn dcs_patch(&self) -> Option<serde_json::Value> {
        let have = patroni_config(self.ctx).await?;
        plan::plan_dcs(&desired::dcs_config(&self.inv.cluster), &have)
    }

    /// A role of a host's desired state.
    pub fn role(&self, host: &str, role: &str) -> anyhow::Result<&desired::DesiredRole> {
        self.desired[host]
            .role(role)
            .ok_or_else(|| anyhow::anyhow!("{host} has no {role} role"))
    }
}

impl Converge<'_, '_> {
    /// The etcd and Patroni members the running cluster reports (etcd must answer;
    /// Patroni's members are read when any member's REST API answers).
    pub async fn observe_members(&self) -> Result<Observed, String> {
        observe_members(self.ctx).await
    }

    /// Judge the members against the inventory (read-only).
    pub fn plan_members(&self, obs: &Observed, with_data: &[String]) -> Result<Changes, Failure> {
        let (all, db, etcd) = (
            self.ctx.all_hosts(),
            self.ctx.db_hosts(),
            self.ctx.etcd_hosts(),
        );
        let c = &self.inv.cluster;
        let peer_url = |h: &str| {
            let ip = self
                .inv
                .host(h)
                .map(|x| x.ip.to_string())
                .unwrap_or_default();
            format!("{}://{ip}:{}", scheme(c.tls), c.etcd_peer_port)
        };
        let inventory = self.inv.path.display().to_string();
        membership::plan(
            &Layout {
                all: &all,
                db: &db,
                etcd: &etcd,
                peer_url: &peer_url,
                with_data,
            },
            obs,
            &inventory,
        )
        .map_err(|r| host_failed(format!("{}\nNothing was changed", r.join("\n"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::{Action, Planned};

    fn settled() -> Existing {
        Existing {
            etcd_new: false,
            patroni_initialized: true,
            dcs_patch: None,
            sql_changes: Some(Vec::new()),
            members: Changes::default(),
            left_paused: false,
        }
    }

    fn plans(actions: Vec<Planned>) -> BTreeMap<String, HostPlan> {
        [
            (
                "db1".to_string(),
                HostPlan {
                    host: "db1".into(),
                    actions,
                },
            ),
            (
                "router1".to_string(),
                HostPlan {
                    host: "router1".into(),
                    actions: Vec::new(),
                },
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn idle_only_when_nothing_anywhere_would_change() {
        assert!(nothing_to_change(&settled(), &plans(Vec::new())));
        let restart = Planned {
            role: "patroni".into(),
            action: Action::AptUpdate,
        };
        assert!(!nothing_to_change(&settled(), &plans(vec![restart])));
        let mut joining = settled();
        joining.members.join.push("db4".into());
        let busy = [
            (
                "etcd is new",
                Existing {
                    etcd_new: true,
                    ..settled()
                },
            ),
            (
                "Patroni bootstraps",
                Existing {
                    patroni_initialized: false,
                    ..settled()
                },
            ),
            (
                "the configuration changes",
                Existing {
                    dcs_patch: Some(serde_json::json!({"ttl": 30})),
                    ..settled()
                },
            ),
            // No primary's SQL facts: roles cannot be judged, so the phases run.
            (
                "roles unknown",
                Existing {
                    sql_changes: None,
                    ..settled()
                },
            ),
            ("a member joins", joining),
            (
                "a stopped run left the cluster paused",
                Existing {
                    left_paused: true,
                    ..settled()
                },
            ),
        ];
        for (why, e) in busy {
            assert!(!nothing_to_change(&e, &plans(Vec::new())), "{why}");
        }
    }
}
