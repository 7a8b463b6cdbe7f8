//! The stack as an upgrade sees it: what each host runs (installed versions, apt's
//! candidates under the inventory's pins, processes on replaced binaries; under
//! the docker method, containers and their specs) against what the inventory asks
//! for, and the preparation before anything is upgraded (package lists refreshed
//! and every package downloaded, or every image brought to its hosts). Read-only
//! except `prepare`. The rolling steps themselves are in `ops::rolling`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::images;
use super::run::{Ctx, host_failed};
use crate::engine::apply;
use crate::engine::desired::{self, HostDesired};
use crate::engine::facts;
use crate::engine::roles::Stage;
use crate::engine::upgrade::{
    self, Component, HostWork, PackagePolicy, Roles, Running, UpgradePlan,
};
use crate::error::Failure;
use crate::inventory::InstallMethod;
use crate::probe::patroni;
use crate::ssh::Cmd;

/// The inventory's stack on every host, and how it is installed.
pub struct Stack<'c, 'a> {
    pub ctx: &'c Ctx<'a>,
    pub desired: BTreeMap<String, HostDesired>,
    /// install_method docker: containers are re-created on new images instead of
    /// packages being installed.
    pub docker: bool,
    pub archive: images::Archive,
}

/// Every package of each host's stack, read with its policy under the pins.
pub type Policies = BTreeMap<String, BTreeMap<String, PackagePolicy>>;

impl<'c, 'a> Stack<'c, 'a> {
    pub async fn new(ctx: &'c Ctx<'a>) -> Result<Self, Failure> {
        Ok(Stack {
            ctx,
            desired: super::converge::desired_state(ctx).await?,
            docker: ctx.inv.cluster.install_method == InstallMethod::Docker,
            archive: Default::default(),
        })
    }

    /// A role of a host's desired state.
    pub fn role(
        &self,
        host: &str,
        role: &str,
    ) -> Result<&crate::engine::desired::DesiredRole, Failure> {
        self.desired[host]
            .role(role)
            .ok_or_else(|| Failure::error(format!("{host} has no {role} role")))
    }

    /// Packages each role owns on a host (and installed companions), by component
    /// (the monitoring's roles are one component; the first role's first package
    /// stays first).
    pub fn role_packages(&self, host: &str) -> BTreeMap<Component, Vec<String>> {
        let mut out: BTreeMap<Component, Vec<String>> = BTreeMap::new();
        for r in &self.desired[host].roles {
            if let Some(c) = Component::from_role(&r.name) {
                let p = out.entry(c).or_default();
                p.extend(r.packages.iter().cloned());
                p.extend(r.upgrade_with.iter().cloned());
            }
        }
        out
    }

    /// The content of /etc/apt/preferences.d/pgha the inventory asks for.
    pub fn preferences(&self, host: &str) -> String {
        self.desired[host]
            .files()
            .find(|f| f.path == "/etc/apt/preferences.d/pgha")
            .map(|f| String::from_utf8_lossy(&f.content).into_owned())
            .unwrap_or_default()
    }

    /// Read-only: every host's policy under the inventory's pins and what it runs,
    /// then the ordered plan.
    pub async fn plan(&self) -> Result<(UpgradePlan, Policies), Failure> {
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
        let mut futs = Vec::new();
        for h in self.ctx.all_hosts() {
            let pkgs: Vec<String> = self.role_packages(&h).into_values().flatten().collect();
            let units = self.units(&h);
            let unit_refs: Vec<(&str, &str)> = units
                .iter()
                .map(|(a, b, _)| (a.as_str(), b.as_str()))
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
                replaced_binary: self
                    .units(&h)
                    .into_iter()
                    .filter(|(u, _, _)| replaced.contains(u))
                    .map(|(_, _, c)| c)
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

    /// The processes whose binary the plan checks on a host: (unit, pid file or
    /// empty for the unit's main PID, component). PostgreSQL by its pid file
    /// (Patroni runs it); Patroni by the version its API reports.
    fn units(&self, host: &str) -> Vec<(String, String, Component)> {
        let c = &self.ctx.inv.cluster;
        self.desired[host]
            .roles
            .iter()
            .filter_map(|r| {
                let comp = Component::from_role(&r.name)?;
                match comp {
                    Component::Patroni => None,
                    Component::Postgres => Some((
                        "postgres".to_string(),
                        format!("{}/postmaster.pid", c.postgresql_data_dir),
                        comp,
                    )),
                    _ => Some((r.services.first()?.clone(), String::new(), comp)),
                }
            })
            .collect()
    }

    /// Who leads Patroni and etcd now.
    pub async fn roles(&self) -> Result<Roles, Failure> {
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
            etcd_leader: super::etcd::leader(self.ctx).await?,
        })
    }

    /// The containers a host should run, as the upgrade compares them.
    pub fn wanted_containers(&self, host: &str) -> Vec<upgrade::WantedContainer> {
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
    pub async fn container_work(&self) -> Result<BTreeMap<String, HostWork>, Failure> {
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

    pub async fn container_facts(&self) -> Result<BTreeMap<String, facts::HostFacts>, Failure> {
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

    /// apt configuration as the inventory wants it (pins, sources), fresh package
    /// lists, the plan again (new sources can add versions), then every package
    /// downloaded on every host before anything is installed.
    pub async fn prepare(&self, plan: UpgradePlan) -> Result<UpgradePlan, Failure> {
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
    pub async fn prepare_images(&self, plan: UpgradePlan) -> Result<UpgradePlan, Failure> {
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

    /// The upstream version a component's main package goes to (None: unchanged).
    pub fn target_upstream(&self, w: &HostWork, c: Component) -> Option<String> {
        let main = self.role_packages(&w.host).get(&c)?.first()?.clone();
        w.packages
            .iter()
            .find(|p| p.package == main)
            .map(|p| upgrade::upstream(&p.target).to_string())
    }
}
