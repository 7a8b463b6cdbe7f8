//! Addresses of the cluster's services, derived from the inventory, and how to
//! reach them (`net`: the cluster's TLS material when it has TLS).

use crate::inventory::{Inventory, Secret};
use crate::probe::haproxy::StatsAccess;
use crate::probe::{Net, patroni, sql};

/// Addresses of the cluster's services, derived from the inventory.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// How every probe reaches them (TLS verified against the cluster CA).
    pub net: Net,
    pub etcd: Vec<String>,
    /// (host name, REST base URL) of every db host.
    pub patroni: Vec<(String, String)>,
    pub db_names: Vec<String>,
    pub routers: Vec<(String, String)>,
    /// The routers' stats page (port and password).
    pub stats: StatsAccess,
    pub exporters: Vec<(String, String)>,
    /// (host name, base URL) of Prometheus and Alertmanager, when monitoring is on.
    pub prometheus: Option<(String, String)>,
    pub alertmanager: Option<(String, String)>,
    /// (router name, admin console) of every PgBouncer, when pooling is on.
    pub poolers: Vec<(String, sql::Endpoint)>,
    /// (host name, REST base URL) of a member outside the inventory that a command
    /// takes out (`pgha remove`): asked by name only, never counted as a member.
    pub outside: Vec<(String, String)>,
    /// The routers' write and read ports, and the superuser pgha checks them as.
    pub write_port: u16,
    pub read_port: u16,
    superuser: String,
    superuser_password: Secret,
}

impl Endpoints {
    pub fn new(inv: &Inventory, net: Net) -> Endpoints {
        let c = &inv.cluster;
        Endpoints {
            net,
            write_port: c.haproxy_write_port,
            read_port: c.haproxy_read_port,
            superuser: c.superuser_name.clone(),
            superuser_password: inv.secrets.superuser_password.clone(),
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
            prometheus: inv.monitor_host().map(|h| {
                (
                    h.name.clone(),
                    format!(
                        "http://{}:{}",
                        crate::engine::desired::listen_host(h.ip),
                        c.prometheus_port
                    ),
                )
            }),
            alertmanager: inv.monitor_host().map(|h| {
                (
                    h.name.clone(),
                    format!(
                        "http://{}:{}",
                        crate::engine::desired::listen_host(h.ip),
                        c.alertmanager_port
                    ),
                )
            }),
            poolers: if c.pgbouncer_enabled {
                inv.router_hosts()
                    .iter()
                    .map(|h| {
                        (
                            h.name.clone(),
                            sql::Endpoint {
                                host: h.ip.to_string(),
                                port: c.pgbouncer_port,
                                user: c.pgbouncer_auth_user.clone(),
                                password: inv.secrets.pgbouncer_auth_password.expose().to_string(),
                                dbname: "pgbouncer".into(),
                            },
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            outside: Vec::new(),
        }
    }

    pub fn patroni_apis(&self) -> Vec<String> {
        self.patroni.iter().map(|(_, a)| a.clone()).collect()
    }

    /// The superuser's endpoint on a router's port (`write_port` or `read_port`).
    pub fn router_port(&self, router_ip: &str, port: u16) -> sql::Endpoint {
        sql::Endpoint {
            host: router_ip.to_string(),
            port,
            user: self.superuser.clone(),
            password: self.superuser_password.expose().to_string(),
            dbname: "postgres".into(),
        }
    }

    /// Every router's write port, as the superuser (the write-gap probes use them).
    pub fn write_ports(&self) -> Vec<sql::Endpoint> {
        self.routers
            .iter()
            .map(|(_, ip)| self.router_port(ip, self.write_port))
            .collect()
    }

    pub fn api_of(&self, host: &str) -> Option<&str> {
        self.patroni
            .iter()
            .chain(&self.outside)
            .find(|(n, _)| n == host)
            .map(|(_, a)| a.as_str())
    }
}

/// URL scheme of the cluster's TLS endpoints (etcd, Patroni's REST API).
pub fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}
