//! Preflight: checks on facts before any change, and when `--limit` is unsafe.
//! Pure functions: facts in, problems out.

use std::collections::BTreeMap;

use crate::engine::desired::HostDesired;
use crate::engine::facts::HostFacts;
use crate::inventory::Inventory;

/// Largest clock difference to this machine accepted before a deploy (etcd and
/// Patroni leases need synchronised clocks).
pub const MAX_CLOCK_SKEW: f64 = 2.0;
/// Free space needed in /var/lib.
pub const MIN_FREE_KIB: u64 = 1024 * 1024;

/// Why `--limit` would be unsafe: a cluster that does not exist yet needs every
/// host, and cluster-wide changes cannot be applied to a subset of hosts.
pub fn limit_refusals(cluster_missing: bool, dcs_differs: bool, sql_differs: bool) -> Vec<String> {
    let mut r = Vec::new();
    if cluster_missing {
        r.push(
            "the cluster does not exist yet: the first deploy must include every host".to_string(),
        );
    }
    if dcs_differs {
        r.push(
            "Patroni's dynamic configuration differs from the inventory (a cluster-wide change)"
                .to_string(),
        );
    }
    if sql_differs {
        r.push(
            "roles or databases on the primary differ from the inventory (a cluster-wide change)"
                .to_string(),
        );
    }
    r
}

/// Checks before any change. Pure: facts in, problems out (each starts with the host).
pub fn preflight(
    inv: &Inventory,
    desired: &BTreeMap<String, HostDesired>,
    facts: &BTreeMap<String, HostFacts>,
    skews: &BTreeMap<String, f64>,
) -> Vec<String> {
    let c = &inv.cluster;
    let mut problems = Vec::new();
    for h in &inv.hosts {
        let f = &facts[&h.name];
        let d = &desired[&h.name];
        if f.os_id != "debian" || f.os_version != "13" {
            problems.push(format!(
                "{}: unsupported OS {} {} ({}); pgha supports Debian 13 (trixie)",
                h.name, f.os_id, f.os_version, f.os_codename
            ));
        }
        // install_method docker: bind-mounted files keep their owners only when
        // the host's users have the image's ids.
        if d.role("docker").is_some() {
            for (name, id, _) in crate::docker::stack::USERS {
                if let Some(have) = f.users.get(*name)
                    && have != id
                {
                    problems.push(format!(
                        "{}: user {name} has uid {have}, but the images run {name} as uid {id} \
                         (files on the host are bind-mounted into the containers); remove or \
                         renumber that user, or use install_method: native",
                        h.name
                    ));
                }
            }
        }
        if f.disk_free_kib < MIN_FREE_KIB {
            problems.push(format!(
                "{}: only {} MiB free in /var/lib; at least {} MiB are needed",
                h.name,
                f.disk_free_kib / 1024,
                MIN_FREE_KIB / 1024
            ));
        }
        if let Some(skew) = skews.get(&h.name)
            && skew.abs() > MAX_CLOCK_SKEW
        {
            problems.push(format!(
                "{}: clock is {skew:+.1}s off this machine's; etcd and Patroni need synchronised clocks (enable NTP, e.g. systemd-timesyncd or chrony)",
                h.name
            ));
        }
        // Port -> (process names of ours, the unit that owns it). A process name can
        // be hidden (no ptrace access, e.g. in containers): then an active unit of
        // ours counts as the owner.
        let mut ports: Vec<(u16, &[&str], &str)> = Vec::new();
        if d.role("patroni").is_some() {
            ports.push((c.postgresql_port, &["postgres"], "patroni"));
            ports.push((c.patroni_rest_port, &["patroni", "python3"], "patroni"));
            ports.push((
                c.exporter_port,
                &["prometheus-post", "postgres_export"],
                "prometheus-postgres-exporter",
            ));
            if f.exists(&format!("/etc/postgresql/{}/main", c.postgresql_version)) {
                problems.push(format!(
                    "{}: a Debian-managed PostgreSQL cluster {}/main exists (pg_lsclusters); Patroni must own PostgreSQL here: save its data, then remove it with `pg_dropcluster --stop {} main`",
                    h.name, c.postgresql_version, c.postgresql_version
                ));
            }
        }
        if d.role("etcd").is_some() {
            ports.push((c.etcd_client_port, &["etcd"], "etcd"));
            ports.push((c.etcd_peer_port, &["etcd"], "etcd"));
        }
        if d.role("haproxy").is_some() {
            ports.push((c.haproxy_write_port, &["haproxy"], "haproxy"));
            ports.push((c.haproxy_read_port, &["haproxy"], "haproxy"));
            ports.push((c.haproxy_stats_port, &["haproxy"], "haproxy"));
        }
        for (port, ours, unit) in ports {
            let Some(proc_name) = f.listening.get(&port) else {
                continue;
            };
            let owned = if proc_name.is_empty() {
                f.unit(unit).is_active()
            } else {
                ours.contains(&proc_name.as_str())
            };
            if !owned {
                problems.push(format!(
                    "{}: port {port} is already in use by {}; free it or choose another port in the inventory",
                    h.name,
                    if proc_name.is_empty() { "another process" } else { proc_name }
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::engine::desired;
    use crate::engine::facts::UnitFact;
    use crate::engine::roles::Library;
    use crate::inventory::{self, LoadOptions};

    fn sample() -> Inventory {
        let text = "all:\n  vars:\n    tls: false\n  children:\n    db:\n      hosts:\n        db1: {ansible_host: 10.9.0.11}\n        db2: {ansible_host: 10.9.0.12}\n        db3: {ansible_host: 10.9.0.13}\n    router:\n      hosts:\n        router1: {ansible_host: 10.9.0.21}\n    backup:\n      hosts:\n        router1:\n";
        inventory::load_str(
            Path::new("/nonexistent/inv.yml"),
            text,
            &LoadOptions::default(),
        )
        .unwrap()
    }

    fn healthy() -> HostFacts {
        HostFacts {
            os_id: "debian".into(),
            os_version: "13".into(),
            os_codename: "trixie".into(),
            disk_free_kib: 10 * 1024 * 1024,
            ..HostFacts::default()
        }
    }

    fn check(edit: impl Fn(&str, &mut HostFacts), skew: f64) -> Vec<String> {
        let inv = sample();
        let lib = Library::builtin().unwrap();
        let desired: BTreeMap<_, _> = desired::desired_state(&inv, &lib)
            .unwrap()
            .into_iter()
            .map(|d| (d.host.clone(), d))
            .collect();
        let mut facts = BTreeMap::new();
        let mut skews = BTreeMap::new();
        for h in &inv.hosts {
            let mut f = healthy();
            edit(&h.name, &mut f);
            facts.insert(h.name.clone(), f);
            skews.insert(h.name.clone(), if h.name == "db2" { skew } else { 0.0 });
        }
        preflight(&inv, &desired, &facts, &skews)
    }

    #[test]
    fn bare_debian_13_hosts_pass() {
        assert_eq!(check(|_, _| {}, 0.3), Vec::<String>::new());
    }

    #[test]
    fn wrong_os_low_disk_and_skew_are_refused_per_host() {
        let p = check(
            |h, f| {
                if h == "db1" {
                    f.os_version = "12".into();
                    f.os_codename = "bookworm".into();
                }
                if h == "router1" {
                    f.disk_free_kib = 1000;
                }
            },
            5.0,
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("db1: unsupported OS debian 12 (bookworm)"));
        assert!(p[1].starts_with("db2: clock is +5.0s off"));
        assert!(p[2].starts_with("router1: only 0 MiB free"));
    }

    #[test]
    fn ports_held_by_others_are_refused_but_our_own_services_are_not() {
        let p = check(
            |h, f| {
                if h == "router1" {
                    f.listening.insert(5000, "nginx".into());
                }
                if h == "db1" {
                    // Hidden owner (no ptrace access) but our etcd unit is active.
                    f.listening.insert(2379, String::new());
                    f.units.insert(
                        "etcd".into(),
                        UnitFact {
                            active: "active".into(),
                            enabled: "enabled".into(),
                        },
                    );
                    f.listening.insert(5432, "postgres".into());
                }
                if h == "db3" {
                    f.listening.insert(2380, String::new());
                }
            },
            0.0,
        );
        assert_eq!(
            p,
            [
                "db3: port 2380 is already in use by another process; free it or choose another port in the inventory",
                "router1: port 5000 is already in use by nginx; free it or choose another port in the inventory",
            ]
        );
    }

    #[test]
    fn a_debian_managed_cluster_is_refused() {
        let p = check(
            |h, f| {
                if h == "db2" {
                    f.existing_paths.insert("/etc/postgresql/17/main".into());
                }
            },
            0.0,
        );
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("pg_dropcluster --stop 17 main"), "{}", p[0]);
    }

    #[test]
    fn limit_is_refused_for_new_clusters_and_cluster_wide_changes() {
        assert!(limit_refusals(false, false, false).is_empty());
        assert_eq!(limit_refusals(true, false, false).len(), 1);
        let r = limit_refusals(false, true, true);
        assert!(r[0].contains("dynamic configuration") && r[1].contains("roles"));
    }
}
