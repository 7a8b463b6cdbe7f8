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

#[cfg(test)]
mod tests {
    use super::*;

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
