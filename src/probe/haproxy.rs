//! HAProxy backend states from the stats page's CSV export.

use std::collections::BTreeMap;

use serde::Serialize;

use super::http;

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

pub async fn backends(router_ip: &str, stats_port: u16) -> Result<Backends, String> {
    let url = format!("http://{router_ip}:{stats_port}/;csv");
    let resp = http()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
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
}
