//! pgha's record of the hosts it deployed (`/pgha/<cluster>/hosts` in etcd): a
//! router, or a Patroni-only member whose key expired while it was down, shows
//! nowhere else. Deploy refuses when a recorded host is gone from the inventory
//! (`pgha remove` takes it out on purpose) and writes the record once verified.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::run::Ctx;
use crate::error::Failure;
use crate::inventory::Inventory;

/// Host name -> address, per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    #[serde(default)]
    pub db: BTreeMap<String, String>,
    #[serde(default)]
    pub router: BTreeMap<String, String>,
}

impl Roster {
    pub fn of(inv: &Inventory) -> Roster {
        let map = |hosts: Vec<&crate::inventory::Host>| {
            hosts
                .into_iter()
                .map(|h| (h.name.clone(), h.ip.to_string()))
                .collect()
        };
        Roster {
            db: map(inv.db_hosts()),
            router: map(inv.router_hosts()),
        }
    }

    /// The recorded hosts the inventory does not list: (name, "db" | "router").
    pub fn missing_from(&self, inv: &Inventory) -> Vec<(String, &'static str)> {
        let listed = |n: &String| inv.host(n).is_some();
        self.db
            .keys()
            .filter(|n| !listed(n))
            .map(|n| (n.clone(), "db"))
            .chain(
                self.router
                    .keys()
                    .filter(|n| !listed(n))
                    .map(|n| (n.clone(), "router")),
            )
            .collect()
    }

    /// A recorded host's address and kind.
    pub fn find(&self, name: &str) -> Option<(String, &'static str)> {
        self.db
            .get(name)
            .map(|a| (a.clone(), "db"))
            .or_else(|| self.router.get(name).map(|a| (a.clone(), "router")))
    }
}

pub fn key(cluster: &str) -> String {
    format!("/pgha/{cluster}/hosts")
}

/// The record (empty when there is none or etcd does not answer: then nothing
/// can be judged from it).
pub async fn read(ctx: &Ctx<'_>) -> Roster {
    let key = key(&ctx.inv.cluster.cluster_name);
    let Ok(mut c) = crate::probe::etcd::client(&ctx.ep.net, &ctx.ep.etcd).await else {
        return Roster::default();
    };
    match c.get(key.as_str(), None).await {
        Ok(r) => r
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok())
            .unwrap_or_default(),
        Err(_) => Roster::default(),
    }
}

/// Write the record when it differs (under the cluster lock).
pub async fn write(ctx: &Ctx<'_>, roster: &Roster) -> Result<(), Failure> {
    if read(ctx).await == *roster {
        return Ok(());
    }
    ctx.ensure_locked("record the cluster's hosts").await?;
    let key = key(&ctx.inv.cluster.cluster_name);
    let mut c = crate::probe::etcd::client(&ctx.ep.net, &ctx.ep.etcd).await?;
    let value = serde_json::to_string(roster).expect("roster serializes");
    c.put(key.as_str(), value, None)
        .await
        .map_err(|e| Failure::error(format!("etcd: write {key}: {e}")))?;
    Ok(())
}
