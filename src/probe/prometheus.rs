//! Prometheus's and Alertmanager's views of the cluster: scrape targets and their
//! health (`/api/v1/targets`), instant queries (`/api/v1/query`), and the alerts
//! Alertmanager holds (`/api/v2/alerts`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Net, PROBE_TIMEOUT};

/// One scrape target as Prometheus reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub job: String,
    pub instance: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    pub last_error: String,
}

/// One alert Alertmanager holds (active: not silenced or inhibited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub name: String,
    pub severity: String,
    pub instance: String,
    pub summary: String,
    /// `active`, `suppressed` (silenced or inhibited) or `unprocessed`.
    pub state: String,
}

async fn get_json(net: &Net, url: &str) -> Result<Value, String> {
    let r = net
        .get(url, PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    r.json().await.map_err(|e| format!("{url}: {e}"))
}

/// The active scrape targets (`base`: Prometheus's URL, `http://ip:9090`).
pub async fn targets(net: &Net, base: &str) -> Result<Vec<Target>, String> {
    parse_targets(&get_json(net, &format!("{base}/api/v1/targets?state=active")).await?)
}

fn parse_targets(v: &Value) -> Result<Vec<Target>, String> {
    let list = v["data"]["activeTargets"]
        .as_array()
        .ok_or("no data.activeTargets in Prometheus's answer")?;
    Ok(list
        .iter()
        .map(|t| Target {
            job: t["labels"]["job"].as_str().unwrap_or_default().to_string(),
            instance: t["labels"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            health: t["health"].as_str().unwrap_or("unknown").to_string(),
            last_error: t["lastError"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// An instant query's samples: (labels, value).
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub metric: serde_json::Map<String, Value>,
    pub value: (f64, String),
}

/// Evaluate `query` now.
pub async fn query(net: &Net, base: &str, query: &str) -> Result<Vec<Sample>, String> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), &[("query", query)])
        .map_err(|e| format!("{base}: {e}"))?;
    let r = net
        .get(url.as_str(), PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let v: Value = r.json().await.map_err(|e| format!("{base}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query {query:?}: {}",
            v["error"].as_str().unwrap_or("no answer")
        ));
    }
    serde_json::from_value(v["data"]["result"].clone()).map_err(|e| format!("query {query:?}: {e}"))
}

/// The alerts Alertmanager holds (`base`: its URL, `http://ip:9093`).
pub async fn alerts(net: &Net, base: &str) -> Result<Vec<Alert>, String> {
    parse_alerts(&get_json(net, &format!("{base}/api/v2/alerts")).await?)
}

fn parse_alerts(v: &Value) -> Result<Vec<Alert>, String> {
    let list = v.as_array().ok_or("Alertmanager's answer is not a list")?;
    let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
    let mut out: Vec<Alert> = list
        .iter()
        .map(|a| Alert {
            name: s(&a["labels"]["alertname"]),
            severity: s(&a["labels"]["severity"]),
            instance: s(&a["labels"]["instance"]),
            summary: s(&a["annotations"]["summary"]),
            state: s(&a["status"]["state"]),
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_are_read_with_their_health() {
        let v = json!({"status":"success","data":{"activeTargets":[
            {"labels":{"job":"node","instance":"db1"},"health":"up","lastError":""},
            {"labels":{"job":"etcd","instance":"db2"},"health":"down","lastError":"connection refused"}]}});
        let t = parse_targets(&v).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].job.as_str(), t[1].health.as_str()), ("etcd", "down"));
        assert_eq!(t[1].last_error, "connection refused");
        assert!(parse_targets(&json!({"status":"error"})).is_err());
    }

    #[test]
    fn alerts_are_read_sorted() {
        let v = json!([
            {"labels":{"alertname":"PostgresDown","instance":"db3","severity":"critical"},
             "annotations":{"summary":"PostgreSQL on db3 does not answer"},"status":{"state":"active"}},
            {"labels":{"alertname":"EtcdMemberDown","instance":"db2","severity":"warning"},
             "annotations":{},"status":{"state":"suppressed"}}]);
        let a = parse_alerts(&v).unwrap();
        assert_eq!(a[0].name, "EtcdMemberDown");
        assert_eq!(a[1].summary, "PostgreSQL on db3 does not answer");
        assert_eq!(a[0].state, "suppressed");
    }
}
