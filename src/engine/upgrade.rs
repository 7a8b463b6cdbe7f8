//! Rolling upgrade planning. Pure: what each host has installed and what apt would
//! install (its candidates under the inventory's pins), what each host is running,
//! and the cluster's roles in; the ordered steps out. Unit-tested without hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::ssh::shell_quote;

/// A component whose running process an upgrade restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Etcd,
    Postgres,
    Patroni,
    Exporter,
    Haproxy,
    /// PgBouncer on the routers (pooling on): restarted by its unit's safe
    /// shutdown, so its clients reconnect once.
    Pgbouncer,
    /// pgBackRest's server (db hosts and the repository's host).
    Pgbackrest,
    /// Prometheus, Alertmanager, the node and pgBackRest exporters: nothing in the
    /// cluster depends on them, so they go last, in any order.
    Monitoring,
}

impl Component {
    /// The component of a role's packages and service.
    pub fn from_role(role: &str) -> Option<Component> {
        Some(match role {
            "etcd" => Component::Etcd,
            "postgres" => Component::Postgres,
            "patroni" => Component::Patroni,
            "exporter" => Component::Exporter,
            "haproxy" => Component::Haproxy,
            "pgbouncer" => Component::Pgbouncer,
            "pgbackrest" => Component::Pgbackrest,
            "node_exporter"
            | "pgbackrest_exporter"
            | "pgbouncer_exporter"
            | "alertmanager"
            | "prometheus" => Component::Monitoring,
            _ => return None,
        })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Etcd => "etcd",
            Component::Postgres => "PostgreSQL",
            Component::Patroni => "Patroni",
            Component::Exporter => "postgres_exporter",
            Component::Haproxy => "HAProxy",
            Component::Pgbouncer => "PgBouncer",
            Component::Pgbackrest => "pgBackRest",
            Component::Monitoring => "monitoring",
        })
    }
}

/// One package's installed version and apt's candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackagePolicy {
    pub installed: Option<String>,
    pub candidate: Option<String>,
}

/// Parse `apt-cache policy PKG...`.
pub fn parse_policy(text: &str) -> BTreeMap<String, PackagePolicy> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            let name = line.trim_end_matches(':').to_string();
            out.insert(
                name.clone(),
                PackagePolicy {
                    installed: None,
                    candidate: None,
                },
            );
            current = Some(name);
            continue;
        }
        let Some(name) = &current else { continue };
        let t = line.trim();
        let value = |v: &str| (v != "(none)").then(|| v.to_string());
        if let Some(v) = t.strip_prefix("Installed: ") {
            out.get_mut(name).unwrap().installed = value(v.trim());
        } else if let Some(v) = t.strip_prefix("Candidate: ") {
            out.get_mut(name).unwrap().candidate = value(v.trim());
        }
    }
    out
}

/// The upstream part of a Debian version: `17.12-0+deb13u1` -> `17.12`,
/// `1:2.3-1` -> `2.3`.
pub fn upstream(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// One package to move from `installed` to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    /// The component whose step makes this change.
    pub component: Component,
    pub package: String,
    pub installed: String,
    pub target: String,
}

impl PackageChange {
    /// `pkg=version`, as apt-get takes it.
    pub fn spec(&self) -> String {
        format!("{}={}", self.package, self.target)
    }
}

/// What one host needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostWork {
    pub host: String,
    pub packages: Vec<PackageChange>,
    /// Components to restart: their packages change, or they still run an old
    /// binary (an earlier upgrade was interrupted between install and restart).
    pub restart: BTreeSet<Component>,
    /// Why components restart with no package change (for the report).
    pub stale: Vec<String>,
}

impl HostWork {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.restart.is_empty()
    }
    pub fn touches(&self, c: Component) -> bool {
        self.restart.contains(&c)
    }
    pub fn specs(&self) -> Vec<String> {
        self.packages.iter().map(PackageChange::spec).collect()
    }
}

/// What a host runs right now, as far as the upgrade cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// Components whose process runs a binary that was replaced on disk.
    pub replaced_binary: BTreeSet<Component>,
    /// PostgreSQL server version the member reports (e.g. "17.11").
    pub postgres: Option<String>,
    /// Patroni version the member reports (e.g. "4.0.7").
    pub patroni: Option<String>,
}

/// A host's work: packages whose candidate differs from what is installed (for the
/// packages each role owns, and the companions it upgrades with them when they are
/// installed), and components running something older than what is installed.
pub fn host_work(
    host: &str,
    role_packages: &BTreeMap<Component, Vec<String>>,
    policy: &BTreeMap<String, PackagePolicy>,
    running: &Running,
) -> HostWork {
    let mut w = HostWork {
        host: host.to_string(),
        ..Default::default()
    };
    for (c, pkgs) in role_packages {
        for p in pkgs {
            let Some(pol) = policy.get(p) else { continue };
            if let (Some(i), Some(t)) = (&pol.installed, &pol.candidate)
                && i != t
            {
                w.packages.push(PackageChange {
                    component: *c,
                    package: p.clone(),
                    installed: i.clone(),
                    target: t.clone(),
                });
                w.restart.insert(*c);
            }
        }
        if running.replaced_binary.contains(c) && !w.restart.contains(c) {
            w.restart.insert(*c);
            w.stale.push(format!("{c} runs a binary replaced on disk"));
        }
    }
    let installed = |c: Component| {
        role_packages
            .get(&c)
            .and_then(|p| p.first())
            .and_then(|p| policy.get(p))
            .and_then(|p| p.installed.clone())
    };
    for (c, run) in [
        (Component::Postgres, &running.postgres),
        (Component::Patroni, &running.patroni),
    ] {
        if let (Some(run), Some(inst)) = (run, installed(c))
            && upstream(&inst) != run
            && !w.restart.contains(&c)
        {
            w.restart.insert(c);
            w.stale
                .push(format!("{c} runs {run}, {} is installed", upstream(&inst)));
        }
    }
    w
}

/// install_method docker: one container as the upgrade sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedContainer {
    pub name: String,
    /// The components it runs (Patroni's container runs PostgreSQL too).
    pub components: Vec<Component>,
    pub spec: String,
    pub image: String,
    pub image_id: String,
}

/// The components a container runs, by the role that declares it.
pub fn container_components(role: &str) -> Vec<Component> {
    match role {
        "patroni" => vec![Component::Postgres, Component::Patroni],
        r => Component::from_role(r).into_iter().collect(),
    }
}

fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// A docker host's work: every existing container created from another spec than
/// the inventory's (a new image reference, a new image under the same tag, other
/// run arguments) is re-created, its components restarted in the upgrade's order.
/// A container that does not exist is deploy's to create, not the upgrade's.
pub fn container_work(
    host: &str,
    wanted: &[WantedContainer],
    have: &BTreeMap<String, super::facts::ContainerFact>,
) -> HostWork {
    let mut w = HostWork {
        host: host.to_string(),
        ..Default::default()
    };
    for c in wanted {
        let Some(fact) = have.get(&c.name) else {
            continue;
        };
        if fact.spec == c.spec {
            continue;
        }
        let target = if c.image_id.is_empty() {
            c.image.clone()
        } else {
            format!("{} ({})", c.image, short_id(&c.image_id))
        };
        let installed = if !c.image_id.is_empty() && fact.image_id == c.image_id {
            format!("{} (other run arguments)", short_id(&fact.image_id))
        } else {
            short_id(&fact.image_id).to_string()
        };
        w.packages.push(PackageChange {
            component: c.components[0],
            package: c.name.clone(),
            installed,
            target,
        });
        w.restart.extend(c.components.iter().copied());
    }
    w
}

/// The cluster's roles when the upgrade is planned.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    pub db: Vec<String>,
    pub etcd: Vec<String>,
    pub routers: Vec<String>,
    pub leader: String,
    /// The etcd leader's member name.
    pub etcd_leader: String,
}

/// The upgrade, in the order it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpgradePlan {
    pub work: BTreeMap<String, HostWork>,
    /// etcd members, followers first, the etcd leader last.
    pub etcd: Vec<String>,
    /// Database members whose PostgreSQL (or PostgreSQL and Patroni) change: one at
    /// a time, replicas first; the leader, if listed, last, after a switchover.
    pub db_rolling: Vec<String>,
    /// Members where only Patroni changes: done under Patroni's pause, PostgreSQL
    /// keeps running.
    pub patroni_only: Vec<String>,
    /// Members where only the exporter changes.
    pub exporter_only: Vec<String>,
    /// Routers whose HAProxy or PgBouncer changes, one at a time.
    pub routers: Vec<String>,
    /// Hosts whose pgBackRest server changes (restarted last: PostgreSQL does not
    /// depend on it, a WAL push that fails meanwhile is retried).
    pub pgbackrest: Vec<String>,
    /// Hosts whose monitoring services change (after everything else).
    pub monitoring: Vec<String>,
    pub switchovers: u32,
    /// install_method docker: changes are containers re-created on new images.
    pub containers: bool,
}

impl UpgradePlan {
    pub fn is_empty(&self) -> bool {
        self.work.values().all(HostWork::is_empty)
    }

    /// One line per step, in order (for --check and the log).
    pub fn steps(&self) -> Vec<String> {
        let mut s = Vec::new();
        // A step lists the changes of the components it restarts.
        let what = |h: &str, cs: &[Component]| {
            let w = &self.work[h];
            let mut parts: Vec<String> = w
                .packages
                .iter()
                .filter(|p| cs.contains(&p.component))
                .map(|p| format!("{} {} -> {}", p.package, p.installed, p.target))
                .collect();
            parts.extend(w.stale.iter().map(|x| format!("restart: {x}")));
            parts.join(", ")
        };
        use Component::*;
        for h in &self.etcd {
            s.push(format!("etcd member {h}: {}", what(h, &[Etcd])));
        }
        for h in &self.db_rolling {
            if h == self.db_rolling.last().unwrap() && self.switchovers > 0 {
                s.push(format!(
                    "switchover from {h} to an upgraded synchronous standby"
                ));
            }
            s.push(format!(
                "db member {h} (out of reads and failover, drained): {}",
                what(h, &[Postgres, Patroni, Exporter])
            ));
        }
        if !self.patroni_only.is_empty() {
            s.push("pause the cluster (PostgreSQL keeps running)".into());
            for h in &self.patroni_only {
                s.push(format!("Patroni on {h}: {}", what(h, &[Patroni, Exporter])));
            }
            s.push("resume the cluster".into());
        }
        for h in &self.exporter_only {
            s.push(format!("exporter on {h}: {}", what(h, &[Exporter])));
        }
        for h in &self.routers {
            let w = &self.work[h];
            let mut how = Vec::new();
            if w.touches(Haproxy) {
                how.push(if self.containers {
                    "HAProxy's container re-created: its sessions end"
                } else {
                    "HAProxy reloaded: sessions kept"
                });
            }
            if w.touches(Pgbouncer) {
                how.push("PgBouncer restarted: transactions finish, its clients reconnect");
            }
            s.push(format!(
                "router {h} ({}): {}",
                how.join("; "),
                what(h, &[Haproxy, Pgbouncer])
            ));
        }
        for h in &self.pgbackrest {
            s.push(format!("pgBackRest on {h}: {}", what(h, &[Pgbackrest])));
        }
        for h in &self.monitoring {
            s.push(format!("monitoring on {h}: {}", what(h, &[Monitoring])));
        }
        s
    }
}

/// Order the work: etcd followers then the etcd leader; database replicas one at a
/// time, then the leader after one switchover; Patroni-only members under pause;
/// exporter-only members; routers one at a time; pgBackRest's servers; the
/// monitoring.
pub fn plan(work: BTreeMap<String, HostWork>, roles: &Roles) -> UpgradePlan {
    let has = |h: &str, c: Component| work.get(h).is_some_and(|w| w.touches(c));
    let mut etcd: Vec<String> = roles
        .etcd
        .iter()
        .filter(|h| has(h, Component::Etcd) && **h != roles.etcd_leader)
        .cloned()
        .collect();
    if has(&roles.etcd_leader, Component::Etcd) {
        etcd.push(roles.etcd_leader.clone());
    }
    let rolling = |h: &String| has(h, Component::Postgres);
    let mut db_rolling: Vec<String> = roles
        .db
        .iter()
        .filter(|h| rolling(h) && **h != roles.leader)
        .cloned()
        .collect();
    let mut switchovers = 0;
    if rolling(&roles.leader) {
        db_rolling.push(roles.leader.clone());
        switchovers = 1;
    }
    let patroni_only: Vec<String> = roles
        .db
        .iter()
        .filter(|h| !rolling(h) && has(h, Component::Patroni))
        .cloned()
        .collect();
    let exporter_only: Vec<String> = roles
        .db
        .iter()
        .filter(|h| !rolling(h) && !has(h, Component::Patroni) && has(h, Component::Exporter))
        .cloned()
        .collect();
    let routers: Vec<String> = roles
        .routers
        .iter()
        .filter(|h| has(h, Component::Haproxy) || has(h, Component::Pgbouncer))
        .cloned()
        .collect();
    let on = |c: Component| -> Vec<String> {
        work.iter()
            .filter(|(_, w)| w.touches(c))
            .map(|(h, _)| h.clone())
            .collect()
    };
    let pgbackrest = on(Component::Pgbackrest);
    let monitoring = on(Component::Monitoring);
    UpgradePlan {
        work,
        etcd,
        db_rolling,
        patroni_only,
        exporter_only,
        routers,
        pgbackrest,
        monitoring,
        switchovers,
        containers: false,
    }
}

/// Read-only script: apt's policy for `packages` under the preferences pgha would
/// write (`preferences`: the content of /etc/apt/preferences.d/pgha), other
/// preference files kept; then which services run a binary replaced on disk.
/// Output: the policy text, then `exe<TAB>unit<TAB>path` lines.
pub fn facts_script(packages: &[String], preferences: &str, units: &[(&str, &str)]) -> String {
    let pkgs = packages
        .iter()
        .map(|p| shell_quote(p))
        .collect::<Vec<_>>()
        .join(" ");
    let mut s = format!(
        r#"set +e
export LC_ALL=C
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
for f in /etc/apt/preferences.d/*; do [ -f "$f" ] && [ "$f" != /etc/apt/preferences.d/pgha ] && cp "$f" "$d/"; done
cat > "$d/pgha" <<'PGHA_PREFS'
{preferences}PGHA_PREFS
apt-cache -o Dir::Etc::PreferencesParts="$d" policy {pkgs}
"#
    );
    for (unit, pidfile) in units {
        // A pid file (PostgreSQL's postmaster.pid) or the unit's main PID.
        let pid = if pidfile.is_empty() {
            format!("$(systemctl show -p MainPID --value {})", shell_quote(unit))
        } else {
            format!("$(head -1 {} 2>/dev/null)", shell_quote(pidfile))
        };
        s.push_str(&format!(
            "p={pid}; [ -n \"$p\" ] && [ \"$p\" != 0 ] && printf 'exe\\t%s\\t%s\\n' {} \"$(readlink /proc/$p/exe)\"\n",
            shell_quote(unit)
        ));
    }
    s.push_str("exit 0\n");
    s
}

/// Units whose process runs a replaced binary (`readlink` says "(deleted)").
pub fn replaced(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3 && f[0] == "exe" && f[2].ends_with(" (deleted)"))
                .then(|| f[1].to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "postgresql-17:
  Installed: 17.11-0+deb13u1
  Candidate: 17.12-0+deb13u1
  Version table:
     17.12-0+deb13u1 500
        500 http://deb.debian.org/debian-security trixie-security/main amd64 Packages
 *** 17.11-0+deb13u1 500
        100 /var/lib/dpkg/status
patroni:
  Installed: 4.0.7-3~deb13u1
  Candidate: 4.0.7-3~deb13u1
  Version table:
 *** 4.0.7-3~deb13u1 500
libpq5:
  Installed: (none)
  Candidate: 17.12-0+deb13u1
";

    #[test]
    fn policy_is_parsed() {
        let p = parse_policy(POLICY);
        assert_eq!(
            p["postgresql-17"].installed.as_deref(),
            Some("17.11-0+deb13u1")
        );
        assert_eq!(
            p["postgresql-17"].candidate.as_deref(),
            Some("17.12-0+deb13u1")
        );
        assert_eq!(p["patroni"].installed, p["patroni"].candidate);
        assert_eq!(p["libpq5"].installed, None);
    }

    #[test]
    fn upstream_versions() {
        assert_eq!(upstream("17.12-0+deb13u1"), "17.12");
        assert_eq!(upstream("4.0.7-3~deb13u1"), "4.0.7");
        assert_eq!(upstream("1:2.3-1"), "2.3");
        assert_eq!(upstream("3.5"), "3.5");
    }

    fn packages() -> BTreeMap<Component, Vec<String>> {
        BTreeMap::from([
            (
                Component::Postgres,
                vec!["postgresql-17".into(), "libpq5".into()],
            ),
            (Component::Patroni, vec!["patroni".into()]),
        ])
    }

    #[test]
    fn changed_packages_restart_their_component_and_absent_companions_are_skipped() {
        let w = host_work(
            "db1",
            &packages(),
            &parse_policy(POLICY),
            &Running::default(),
        );
        assert_eq!(w.specs(), ["postgresql-17=17.12-0+deb13u1"]);
        assert_eq!(w.restart, BTreeSet::from([Component::Postgres]));
    }

    #[test]
    fn an_interrupted_upgrade_is_finished_by_a_restart() {
        let current = POLICY.replace("Installed: 17.11-0+deb13u1", "Installed: 17.12-0+deb13u1");
        let running = Running {
            postgres: Some("17.11".into()),
            patroni: Some("4.0.7".into()),
            ..Default::default()
        };
        let w = host_work("db1", &packages(), &parse_policy(&current), &running);
        assert!(w.packages.is_empty());
        assert_eq!(w.restart, BTreeSet::from([Component::Postgres]));
        assert_eq!(w.stale, ["PostgreSQL runs 17.11, 17.12 is installed"]);
        let up_to_date = Running {
            postgres: Some("17.12".into()),
            ..running
        };
        assert!(host_work("db1", &packages(), &parse_policy(&current), &up_to_date).is_empty());
    }

    fn work(host: &str, cs: &[Component]) -> (String, HostWork) {
        (
            host.to_string(),
            HostWork {
                host: host.into(),
                packages: vec![PackageChange {
                    component: cs[0],
                    package: "x".into(),
                    installed: "1".into(),
                    target: "2".into(),
                }],
                restart: cs.iter().copied().collect(),
                stale: vec![],
            },
        )
    }

    fn roles() -> Roles {
        Roles {
            db: vec!["db1".into(), "db2".into(), "db3".into()],
            etcd: vec!["db1".into(), "db2".into(), "db3".into()],
            routers: vec!["router1".into()],
            leader: "db2".into(),
            etcd_leader: "db1".into(),
        }
    }

    #[test]
    fn replicas_first_then_one_switchover_and_the_old_leader() {
        use Component::*;
        let w = BTreeMap::from([
            work("db1", &[Postgres, Etcd]),
            work("db2", &[Postgres, Etcd]),
            work("db3", &[Postgres, Etcd]),
            work("router1", &[Haproxy]),
        ]);
        let p = plan(w, &roles());
        assert_eq!(p.etcd, ["db2", "db3", "db1"], "the etcd leader last");
        assert_eq!(p.db_rolling, ["db1", "db3", "db2"], "the leader last");
        assert_eq!(p.switchovers, 1);
        assert_eq!(p.routers, ["router1"]);
        let steps = p.steps();
        let sw = steps
            .iter()
            .position(|s| s.starts_with("switchover from db2"))
            .unwrap();
        let last = steps
            .iter()
            .position(|s| s.starts_with("db member db2"))
            .unwrap();
        assert_eq!(sw + 1, last, "{steps:?}");
    }

    /// PgBouncer's package moves with the routers' step, one router at a time,
    /// also on a router whose HAProxy has nothing to do; the step says its clients
    /// reconnect and only where it is restarted.
    #[test]
    fn pgbouncer_changes_are_a_router_step_that_says_its_clients_reconnect() {
        use Component::*;
        assert_eq!(Component::from_role("pgbouncer"), Some(Pgbouncer));
        let two = Roles {
            routers: vec!["router1".into(), "router2".into()],
            ..roles()
        };
        let w = BTreeMap::from([work("router1", &[Pgbouncer]), work("router2", &[Haproxy])]);
        let p = plan(w, &two);
        assert_eq!(p.routers, ["router1", "router2"]);
        assert!(p.db_rolling.is_empty() && p.switchovers == 0);
        let steps = p.steps();
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(
            steps[0].starts_with("router router1 (PgBouncer restarted: transactions finish, its clients reconnect): x 1 -> 2"),
            "{steps:?}"
        );
        assert!(
            steps[1].starts_with("router router2 (HAProxy reloaded: sessions kept): x 1 -> 2"),
            "{steps:?}"
        );
        let policy = "pgbouncer:\n  Installed: 1.24.1-1\n  Candidate: 1.24.1-1+deb13u2\n";
        let pkgs = BTreeMap::from([
            (Haproxy, vec!["haproxy".to_string()]),
            (Pgbouncer, vec!["pgbouncer".to_string()]),
        ]);
        let w = host_work("router1", &pkgs, &parse_policy(policy), &Running::default());
        assert_eq!(w.specs(), ["pgbouncer=1.24.1-1+deb13u2"]);
        assert_eq!(w.restart, BTreeSet::from([Pgbouncer]));
    }

    #[test]
    fn patroni_only_changes_go_under_pause_without_a_switchover() {
        use Component::*;
        let w = BTreeMap::from([
            work("db1", &[Patroni]),
            work("db2", &[Patroni]),
            work("db3", &[Exporter]),
        ]);
        let p = plan(w, &roles());
        assert!(p.db_rolling.is_empty());
        assert_eq!(p.switchovers, 0);
        assert_eq!(p.patroni_only, ["db1", "db2"]);
        assert_eq!(p.exporter_only, ["db3"]);
        assert!(p.steps().first().unwrap().starts_with("pause"));
    }

    #[test]
    fn pgbackrest_servers_restart_last_on_any_host() {
        use Component::*;
        let w = BTreeMap::from([
            work("db1", &[Postgres, Pgbackrest]),
            work("db2", &[Pgbackrest]),
            work("router1", &[Haproxy, Pgbackrest]),
        ]);
        let p = plan(w, &roles());
        assert_eq!(p.pgbackrest, ["db1", "db2", "router1"]);
        assert_eq!(p.db_rolling, ["db1"]);
        assert!(p.exporter_only.is_empty() && p.patroni_only.is_empty());
        let steps = p.steps();
        assert!(
            steps.last().unwrap().starts_with("pgBackRest on router1"),
            "{steps:?}"
        );
        assert_eq!(container_components("pgbackrest"), [Pgbackrest]);
    }

    /// The monitoring's roles are one component, upgraded after everything else on
    /// any host; its containers are compared like the others (no panic on a
    /// container of no earlier component).
    #[test]
    fn the_monitoring_goes_last_and_its_containers_are_recreated() {
        use Component::*;
        for r in [
            "node_exporter",
            "pgbackrest_exporter",
            "alertmanager",
            "prometheus",
        ] {
            assert_eq!(container_components(r), [Monitoring], "{r}");
        }
        let w = BTreeMap::from([
            work("db1", &[Monitoring]),
            work("router1", &[Haproxy, Pgbackrest, Monitoring]),
        ]);
        let p = plan(w, &roles());
        assert_eq!(p.monitoring, ["db1", "router1"]);
        assert_eq!(p.routers, ["router1"]);
        assert!(p.db_rolling.is_empty() && p.switchovers == 0);
        let steps = p.steps();
        assert!(
            steps[steps.len() - 2].starts_with("monitoring on db1"),
            "{steps:?}"
        );
        assert!(
            steps.last().unwrap().starts_with("monitoring on router1"),
            "{steps:?}"
        );

        let wanted = vec![WantedContainer {
            name: "pgha-prometheus".into(),
            components: container_components("prometheus"),
            spec: "new".into(),
            image: "pgha-stack:b".into(),
            image_id: "sha256:bbbb".into(),
        }];
        let have = BTreeMap::from([(
            "pgha-prometheus".to_string(),
            crate::engine::facts::ContainerFact {
                running: true,
                spec: "old".into(),
                image_id: "sha256:aaaa".into(),
                started_at: String::new(),
            },
        )]);
        let w = container_work("router1", &wanted, &have);
        assert_eq!(w.packages[0].component, Monitoring);
        assert!(w.touches(Monitoring));
    }

    #[test]
    fn containers_with_another_spec_are_recreated_and_missing_ones_left_to_deploy() {
        use crate::engine::facts::ContainerFact;
        let want = |name: &str, role: &str, spec: &str| WantedContainer {
            name: name.into(),
            components: container_components(role),
            spec: spec.into(),
            image: "pgha-stack:new".into(),
            image_id: "sha256:bbbbbbbbbbbbbbbb".into(),
        };
        let fact = |spec: &str, id: &str| ContainerFact {
            running: true,
            spec: spec.into(),
            image_id: id.into(),
            started_at: String::new(),
        };
        let wanted = vec![
            want("pgha-etcd", "etcd", "s1"),
            want("pgha-patroni", "patroni", "s2"),
            want("pgha-exporter", "exporter", "s3"),
        ];
        let have = BTreeMap::from([
            (
                "pgha-etcd".to_string(),
                fact("s1", "sha256:bbbbbbbbbbbbbbbb"),
            ),
            (
                "pgha-patroni".to_string(),
                fact("old", "sha256:aaaaaaaaaaaaaaaa"),
            ),
        ]);
        let w = container_work("db1", &wanted, &have);
        assert_eq!(
            w.restart,
            BTreeSet::from([Component::Postgres, Component::Patroni])
        );
        assert_eq!(w.packages.len(), 1);
        assert_eq!(w.packages[0].package, "pgha-patroni");
        assert_eq!(w.packages[0].installed, "aaaaaaaaaaaa");
        assert_eq!(w.packages[0].target, "pgha-stack:new (bbbbbbbbbbbb)");
        // Patroni's container runs PostgreSQL: a rolling member, not a pause.
        let roles = roles();
        let p = plan(BTreeMap::from([("db1".to_string(), w)]), &roles);
        assert!(p.patroni_only.is_empty());
        assert!(p.db_rolling.contains(&"db1".to_string()));
        let converged = BTreeMap::from([
            (
                "pgha-etcd".to_string(),
                fact("s1", "sha256:bbbbbbbbbbbbbbbb"),
            ),
            (
                "pgha-patroni".to_string(),
                fact("s2", "sha256:bbbbbbbbbbbbbbbb"),
            ),
            (
                "pgha-exporter".to_string(),
                fact("s3", "sha256:bbbbbbbbbbbbbbbb"),
            ),
        ]);
        assert!(container_work("db1", &wanted, &converged).is_empty());
    }

    #[test]
    fn replaced_binaries_are_found() {
        let out = "exe\tetcd\t/usr/bin/etcd (deleted)\nexe\thaproxy\t/usr/sbin/haproxy\n";
        assert_eq!(replaced(out), BTreeSet::from(["etcd".to_string()]));
    }
}
