//! HAProxy backend states from the stats page's CSV export.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Net, PROBE_TIMEOUT};
use crate::inventory::{Inventory, Secret};

/// The user of HAProxy's stats page (its password: `haproxy_stats_password`).
pub const STATS_USER: &str = "pgha";

/// How to read a router's stats page: its port and password.
#[derive(Debug, Clone)]
pub struct StatsAccess {
    pub port: u16,
    pub password: Secret,
}

impl StatsAccess {
    pub fn new(inv: &Inventory) -> StatsAccess {
        StatsAccess {
            port: inv.cluster.haproxy_stats_port,
            password: inv.secrets.haproxy_stats_password.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Backends {
    /// proxy name -> server name -> status (UP, DOWN, MAINT, "DOWN 1/2"...)
    pub proxies: BTreeMap<String, BTreeMap<String, String>>,
}

impl Backends {
    pub fn up(&self, proxy: &str) -> Vec<String> {
        self.proxies
            .get(proxy)
            .map(|s| {
                s.iter()
                    .filter(|(_, st)| st.as_str() == "UP")
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn summary(&self, proxy: &str) -> String {
        match self.proxies.get(proxy) {
            None => format!("no proxy {proxy}"),
            Some(s) => s
                .iter()
                .map(|(n, st)| format!("{n} {st}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Parse `;csv` output: a `# pxname,svname,...` header, then one line per proxy/server.
pub fn parse_csv(text: &str) -> Result<Backends, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or("stats CSV has no header")?;
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or(format!("stats CSV has no {name} column"))
    };
    let (px, sv, st) = (idx("pxname")?, idx("svname")?, idx("status")?);
    let mut b = Backends::default();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() <= st.max(px).max(sv) {
            continue;
        }
        if f[sv] == "FRONTEND" || f[sv] == "BACKEND" {
            continue;
        }
        b.proxies
            .entry(f[px].to_string())
            .or_default()
            .insert(f[sv].to_string(), f[st].to_string());
    }
    Ok(b)
}

/// The backends of one router, from its stats CSV (basic auth with pgha's password).
pub async fn backends(net: &Net, router_ip: &str, stats: &StatsAccess) -> Result<Backends, String> {
    let url = format!("http://{router_ip}:{}/;csv", stats.port);
    let resp = net
        .get(&url, PROBE_TIMEOUT)
        .basic_auth(STATS_USER, Some(stats.password.expose()))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(format!(
            "{url}: HAProxy refused the stats password (401): haproxy_stats_password in the \
             secrets file is not the one the router was deployed with; `pgha deploy` sets it"
        ));
    }
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    parse_csv(&text)
}

/// HAProxy's runtime API socket on a router (`stats socket` in haproxy.cfg): root
/// and the haproxy group may use it.
pub const ADMIN_SOCKET: &str = "/run/haproxy/admin.sock";

/// The write port's proxy in haproxy.cfg.
pub const WRITE_PROXY: &str = "primary";

/// Runtime API request: mark `server` of `proxy` UP now (its health set to the
/// top, so one check still in flight that fails leaves it UP), then list the
/// proxy's servers as HAProxy sees them after that.
pub fn force_up_request(proxy: &str, server: &str) -> String {
    format!("set server {proxy}/{server} health up; show servers state {proxy}\n")
}

/// From `show servers state` output: each server of `proxy` with its operational
/// state (0 stopped, 1 starting, 2 running, 3 stopping).
pub fn parse_servers_state(text: &str, proxy: &str) -> Result<Vec<(String, u8)>, String> {
    let mut header: Option<Vec<&str>> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            header = Some(h.split_whitespace().collect());
            continue;
        }
        let Some(h) = &header else { continue };
        let col = |name: &str| h.iter().position(|c| *c == name);
        let (Some(be), Some(srv), Some(op)) =
            (col("be_name"), col("srv_name"), col("srv_op_state"))
        else {
            return Err(format!("unexpected header: {}", h.join(" ")));
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < h.len() || f[be] != proxy {
            continue;
        }
        let state = f[op]
            .parse::<u8>()
            .map_err(|_| format!("srv_op_state {:?} of {}", f[op], f[srv]))?;
        out.push((f[srv].to_string(), state));
    }
    if header.is_none() {
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("no server list in HAProxy's answer ({first:?})"));
    }
    Ok(out)
}

/// Whether `server` alone is running in the list: the write port then reaches
/// nothing else.
pub fn serves_alone(servers: &[(String, u8)], server: &str) -> Result<(), String> {
    const RUNNING: u8 = 2;
    const STOPPED: u8 = 0;
    let show = || {
        servers
            .iter()
            .map(|(n, s)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !servers.iter().any(|(n, s)| n == server && *s == RUNNING) {
        return Err(format!("{server} is not running there ({})", show()));
    }
    if servers.iter().any(|(n, s)| n != server && *s != STOPPED) {
        return Err(format!("another server is not stopped ({})", show()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "\n1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 primary 1 db1 172.28.7.11 0 0 1 1 17 15 3 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n\
3 primary 2 db2 172.28.7.12 2 0 1 1 33 13 2 2 6 0 0 0 - 5432 - 0 8008 - - 8008\n\
3 primary 3 db3 172.28.7.13 0 0 1 1 33 13 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n\n";

    #[test]
    fn reads_servers_state_and_who_serves_alone() {
        let s = parse_servers_state(STATE, "primary").unwrap();
        assert_eq!(s, [("db1".into(), 0), ("db2".into(), 2), ("db3".into(), 0)]);
        assert!(serves_alone(&s, "db2").is_ok());
        let e = serves_alone(&s, "db1").unwrap_err();
        assert!(e.contains("db1 is not running"), "{e}");
        let mut two = s.clone();
        two[0].1 = 2;
        let e = serves_alone(&two, "db2").unwrap_err();
        assert!(e.contains("another server") && e.contains("db1 2"), "{e}");
        // Another proxy's servers are not counted.
        assert!(parse_servers_state(STATE, "replicas").unwrap().is_empty());
        // A refusal (no header) is an error naming what HAProxy said.
        let e = parse_servers_state("Permission denied\n", "primary").unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
        assert_eq!(
            force_up_request("primary", "db2"),
            "set server primary/db2 health up; show servers state primary\n"
        );
    }

    #[test]
    fn parses_servers_and_skips_frontends() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
stats,FRONTEND,,,0,1,1000,2,0,0,0,0,0,,,,,OPEN,\n\
primary,FRONTEND,,,0,0,1000,0,0,0,0,0,0,,,,,OPEN,\n\
primary,db1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n\
primary,db2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1\n\
primary,BACKEND,0,0,0,0,100,0,0,0,0,0,,0,0,0,0,UP,1\n\
replicas,db2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n\
replicas,db1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN 1/2,1\n";
        let b = parse_csv(csv).unwrap();
        assert_eq!(b.up("primary"), ["db1"]);
        assert_eq!(b.up("replicas"), ["db2"]);
        assert_eq!(b.summary("replicas"), "db1 DOWN 1/2, db2 UP");
        assert!(!b.proxies.contains_key("stats"));
    }

    /// A one-request stats page that wants `pgha:right` (basic auth), as HAProxy
    /// with `stats auth` does.
    async fn stats_page() -> u16 {
        use base64::Engine;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let want = format!(
            "authorization: basic {}",
            base64::engine::general_purpose::STANDARD.encode("pgha:right")
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let n = sock.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let (status, body) = if req.lines().any(|l| l.trim() == want.to_lowercase()) {
                    ("200 OK", "# pxname,svname,status\nprimary,db1,UP\n")
                } else {
                    ("401 Unauthorized", "401 Unauthorized\n")
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        port
    }

    #[tokio::test]
    async fn backends_authenticate_and_name_a_wrong_password() {
        let port = stats_page().await;
        let access = |pw: &str| StatsAccess {
            port,
            password: Secret::new(pw),
        };
        let b = backends(&Net::plain(), "127.0.0.1", &access("right"))
            .await
            .unwrap();
        assert_eq!(b.up("primary"), ["db1"]);
        let e = backends(&Net::plain(), "127.0.0.1", &access("wrong"))
            .await
            .unwrap_err();
        assert!(
            e.contains("401") && e.contains("haproxy_stats_password"),
            "{e}"
        );
        assert!(
            !e.contains("wrong"),
            "the password is not in the error: {e}"
        );
    }
}
