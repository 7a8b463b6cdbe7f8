//! The monitoring host as the other commands see it: the scrape targets the
//! inventory implies (pure), the wait until Prometheus reports each of them up,
//! and the alerts Alertmanager holds (for `status`).

use std::collections::BTreeSet;
use std::time::Duration;

use super::Endpoints;
use crate::inventory::{InstallMethod, Inventory};
use crate::probe::prometheus::{self, Alert};
use crate::wait::{WaitError, until};

/// (job, instance) of every target Prometheus scrapes for this inventory.
pub fn expected_targets(inv: &Inventory) -> BTreeSet<(String, String)> {
    let mut t = BTreeSet::new();
    let Some(m) = inv.monitor_host() else {
        return t;
    };
    let mut add = |job: &str, name: &str| {
        t.insert((job.to_string(), name.to_string()));
    };
    add("prometheus", &m.name);
    add("alertmanager", &m.name);
    for h in &inv.hosts {
        add("node", &h.name);
    }
    for h in inv.db_hosts() {
        add("postgres", &h.name);
        add("patroni", &h.name);
    }
    for h in inv.etcd_hosts() {
        add("etcd", &h.name);
    }
    for h in inv.router_hosts() {
        add("haproxy", &h.name);
    }
    if let Some(b) = inv.backup_host()
        && inv.cluster.install_method == InstallMethod::Native
    {
        add("pgbackrest", &b.name);
    }
    t
}

/// What is missing or not up among the expected targets, in words (empty: all up).
pub fn targets_not_up(
    expected: &BTreeSet<(String, String)>,
    seen: &[prometheus::Target],
) -> Vec<String> {
    let mut out = Vec::new();
    for (job, instance) in expected {
        match seen
            .iter()
            .find(|t| &t.job == job && &t.instance == instance)
        {
            None => out.push(format!("{job} on {instance}: not a target")),
            Some(t) if t.health == "up" => {}
            Some(t) if t.last_error.is_empty() => {
                out.push(format!("{job} on {instance}: {}", t.health))
            }
            Some(t) => out.push(format!(
                "{job} on {instance}: {} ({})",
                t.health, t.last_error
            )),
        }
    }
    for t in seen {
        if !expected.contains(&(t.job.clone(), t.instance.clone())) {
            out.push(format!("{} on {}: not in the inventory", t.job, t.instance));
        }
    }
    out
}

/// Until Prometheus scrapes exactly the expected targets and each is up.
pub async fn wait_targets(
    ep: &Endpoints,
    expected: &BTreeSet<(String, String)>,
    timeout: Duration,
) -> Result<usize, WaitError> {
    let Some((name, base)) = &ep.prometheus else {
        return Ok(0);
    };
    until(
        &format!("Prometheus on {name} to scrape every target of the inventory, each up"),
        timeout,
        || async {
            let seen = prometheus::targets(&ep.net, base).await?;
            let bad = targets_not_up(expected, &seen);
            if bad.is_empty() {
                Ok(seen.len())
            } else {
                Err(bad.join("; "))
            }
        },
    )
    .await
}

/// The alerts Alertmanager holds, Watchdog left out (it always fires); None
/// without monitoring.
pub async fn alerts(ep: &Endpoints) -> Option<Result<Vec<Alert>, String>> {
    let (_, base) = ep.alertmanager.as_ref()?;
    Some(
        prometheus::alerts(&ep.net, base)
            .await
            .map(|a| a.into_iter().filter(|a| a.name != "Watchdog").collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::prometheus::Target;

    fn t(job: &str, instance: &str, health: &str) -> Target {
        Target {
            job: job.into(),
            instance: instance.into(),
            health: health.into(),
            last_error: if health == "down" {
                "connection refused".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn targets_are_judged_against_the_inventory() {
        let expected: BTreeSet<(String, String)> = [("node", "db1"), ("etcd", "db1")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(
            targets_not_up(&expected, &[t("node", "db1", "up"), t("etcd", "db1", "up")]).is_empty()
        );
        let bad = targets_not_up(
            &expected,
            &[t("etcd", "db1", "down"), t("node", "db9", "up")],
        );
        assert_eq!(
            bad,
            [
                "etcd on db1: down (connection refused)",
                "node on db1: not a target",
                "node on db9: not in the inventory"
            ]
        );
    }
}
