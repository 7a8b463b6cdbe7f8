//! The monitoring host as the other commands see it: the scrape targets the
//! inventory implies (pure), the wait until Prometheus reports each of them up,
//! and the alerts Alertmanager holds (for `status`).

use std::collections::BTreeSet;
use std::time::Duration;

use super::Endpoints;
use crate::inventory::Inventory;
use crate::probe::prometheus::{self, Alert};
use crate::wait::{WaitError, until};

/// The monitoring's roles, in the order a rollout configures them (any host may
/// have node_exporter; the repository's host and the monitoring host the others).
pub const ROLES: [&str; 5] = [
    "node_exporter",
    "pgbackrest_exporter",
    "pgbouncer_exporter",
    "alertmanager",
    "prometheus",
];

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
        if inv.cluster.pgbouncer_enabled {
            add("pgbouncer", &h.name);
        }
    }
    if let Some(b) = inv.backup_host() {
        add("pgbackrest", &b.name);
    }
    t
}

/// The cluster's key graphs on Prometheus's own graph page, one link (`base`:
/// Prometheus's URL): who is up and primary, replication lag, the routers'
/// backends, etcd's leader, WAL archived, the alerts, over the last hour.
pub fn graphs_link(base: &str) -> String {
    const PANELS: [&str; 7] = [
        "pg_up",
        "patroni_primary",
        "pg_replication_lag_seconds",
        "haproxy_backend_active_servers",
        "etcd_server_has_leader",
        "rate(pg_stat_archiver_archived_count[5m])",
        "ALERTS{alertstate=\"firing\"}",
    ];
    let mut params: Vec<(String, String)> = Vec::new();
    for (i, expr) in PANELS.iter().enumerate() {
        params.push((format!("g{i}.expr"), expr.to_string()));
        params.push((format!("g{i}.tab"), "0".into()));
        params.push((format!("g{i}.range_input"), "1h".into()));
    }
    match reqwest::Url::parse_with_params(&format!("{base}/graph"), &params) {
        Ok(u) => u.to_string(),
        Err(_) => format!("{base}/graph"),
    }
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
    fn the_graphs_link_opens_every_panel() {
        let l = graphs_link("http://10.0.0.21:9090");
        assert!(
            l.starts_with("http://10.0.0.21:9090/graph?g0.expr=pg_up&g0.tab=0&g0.range_input=1h&"),
            "{l}"
        );
        assert!(
            l.contains("g6.expr=ALERTS%7Balertstate%3D%22firing%22%7D"),
            "{l}"
        );
        assert!(
            l.contains("g5.expr=rate%28pg_stat_archiver_archived_count%5B5m%5D%29"),
            "{l}"
        );
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
