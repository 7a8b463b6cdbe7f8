//! PgBouncer's admin console (the `pgbouncer` virtual database), reached over TCP
//! as its admin user: read-only `SHOW` commands here, the commands that act in
//! `ops::pool`. The console speaks the simple query protocol only.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::Net;
use super::sql::{self, Endpoint};

/// One pool (database, user) of one pooler, from `SHOW POOLS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pool {
    pub database: String,
    pub user: String,
    /// Clients linked to a server connection, and clients waiting for one.
    pub cl_active: u64,
    pub cl_waiting: u64,
    pub sv_active: u64,
    pub sv_idle: u64,
    pub sv_used: u64,
    /// Seconds the oldest waiting client has waited.
    pub maxwait: u64,
    pub pool_mode: String,
}

/// Open the admin console of the pooler at `ep` (its `dbname` is `pgbouncer`).
pub async fn console(net: &Net, ep: &Endpoint, bound: Duration) -> Result<Client, String> {
    sql::connect_bounded(net, ep, bound).await
}

/// The rows of an admin command, as column -> text.
pub async fn rows(c: &Client, command: &str) -> Result<Vec<BTreeMap<String, String>>, String> {
    let msgs = c
        .simple_query(command)
        .await
        .map_err(|e| format!("{command}: {}", sql::pg_error(&e)))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| {
                        (
                            col.name().to_string(),
                            r.get(i).unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// `SHOW POOLS`, the console's own pool (`pgbouncer`) left out.
pub async fn pools(c: &Client) -> Result<Vec<Pool>, String> {
    Ok(parse_pools(&rows(c, "SHOW POOLS").await?))
}

pub fn parse_pools(rows: &[BTreeMap<String, String>]) -> Vec<Pool> {
    let n = |r: &BTreeMap<String, String>, k: &str| -> u64 {
        r.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    rows.iter()
        .filter(|r| r.get("database").map(String::as_str) != Some("pgbouncer"))
        .map(|r| Pool {
            database: r.get("database").cloned().unwrap_or_default(),
            user: r.get("user").cloned().unwrap_or_default(),
            cl_active: n(r, "cl_active"),
            cl_waiting: n(r, "cl_waiting"),
            sv_active: n(r, "sv_active"),
            sv_idle: n(r, "sv_idle"),
            sv_used: n(r, "sv_used"),
            maxwait: n(r, "maxwait"),
            pool_mode: r.get("pool_mode").cloned().unwrap_or_default(),
        })
        .collect()
}

/// Whether the pooler is paused (`SHOW STATE`: active, paused, suspended).
pub async fn paused(c: &Client) -> Result<bool, String> {
    Ok(parse_paused(&rows(c, "SHOW STATE").await?))
}

pub fn parse_paused(rows: &[BTreeMap<String, String>]) -> bool {
    rows.iter().any(|r| {
        r.get("key").map(String::as_str) == Some("paused")
            && r.get("value").map(String::as_str) == Some("yes")
    })
}

/// The pooler's totals: (clients, waiting clients, server connections).
pub fn totals(pools: &[Pool]) -> (u64, u64, u64) {
    pools.iter().fold((0, 0, 0), |(c, w, s), p| {
        (
            c + p.cl_active + p.cl_waiting,
            w + p.cl_waiting,
            s + p.sv_active + p.sv_idle + p.sv_used,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_paused_state_is_read() {
        let state = |p: &str| {
            vec![
                row(&[
                    ("key", "active"),
                    ("value", if p == "yes" { "no" } else { "yes" }),
                ]),
                row(&[("key", "paused"), ("value", p)]),
                row(&[("key", "suspended"), ("value", "no")]),
            ]
        };
        assert!(parse_paused(&state("yes")));
        assert!(!parse_paused(&state("no")));
    }

    #[test]
    fn pools_are_read_and_the_console_left_out() {
        let rows = [
            row(&[
                ("database", "pgbouncer"),
                ("user", "pgbouncer"),
                ("cl_active", "1"),
            ]),
            row(&[
                ("database", "app"),
                ("user", "app"),
                ("cl_active", "12"),
                ("cl_waiting", "3"),
                ("sv_active", "5"),
                ("sv_idle", "2"),
                ("sv_used", "1"),
                ("maxwait", "4"),
                ("pool_mode", "transaction"),
            ]),
        ];
        let p = parse_pools(&rows);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].cl_waiting, 3);
        assert_eq!(totals(&p), (15, 3, 8));
    }
}
