//! Addresses of the cluster's services, derived from the inventory.

use crate::inventory::Inventory;
use crate::probe::haproxy::StatsAccess;
use crate::probe::patroni;

/// Addresses of the cluster's services, derived from the inventory.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub etcd: Vec<String>,
    /// (host name, REST base URL) of every db host.
    pub patroni: Vec<(String, String)>,
    pub db_names: Vec<String>,
    pub routers: Vec<(String, String)>,
    /// The routers' stats page (port and password).
    pub stats: StatsAccess,
    pub exporters: Vec<(String, String)>,
}

impl Endpoints {
    pub fn new(inv: &Inventory) -> Endpoints {
        let c = &inv.cluster;
        Endpoints {
            etcd: inv
                .etcd_hosts()
                .iter()
                .map(|h| format!("{}://{}:{}", scheme(c.tls), h.ip, c.etcd_client_port))
                .collect(),
            patroni: inv
                .db_hosts()
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        patroni::api(&h.ip.to_string(), c.patroni_rest_port, c.tls),
                    )
                })
                .collect(),
            db_names: inv.db_hosts().iter().map(|h| h.name.clone()).collect(),
            routers: inv
                .router_hosts()
                .iter()
                .map(|h| (h.name.clone(), h.ip.to_string()))
                .collect(),
            stats: StatsAccess::new(inv),
            exporters: inv
                .db_hosts()
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        format!("http://{}:{}/metrics", h.ip, c.exporter_port),
                    )
                })
                .collect(),
        }
    }

    pub fn patroni_apis(&self) -> Vec<String> {
        self.patroni.iter().map(|(_, a)| a.clone()).collect()
    }

    pub fn api_of(&self, host: &str) -> Option<&str> {
        self.patroni
            .iter()
            .find(|(n, _)| n == host)
            .map(|(_, a)| a.as_str())
    }
}

/// URL scheme of the cluster's TLS endpoints (etcd, Patroni's REST API).
pub fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}
