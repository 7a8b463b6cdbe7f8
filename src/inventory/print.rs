//! `pgha inventory` output: a text report for people, one JSON document for programs.
//! Secrets never appear: typed secrets print as `<redacted>`, variables whose
//! names look secret are redacted at load time, and the whole output is scrubbed
//! of every secret value as a last line of defence.

use std::fmt::Write as _;

use serde_json::{Value as Json, json};

use super::model::Inventory;
use super::vars::{self, Scope};
use super::{InventoryError, SECRET_NAMES};

/// Remove every secret value from `text` (values shorter than 4 characters are
/// left alone: replacing them would mangle the output, not protect anything).
fn scrub(inv: &Inventory, text: &str) -> String {
    let mut out = text.to_string();
    for s in inv.secrets.all() {
        if s.expose().chars().count() >= 4 {
            out = out.replace(s.expose(), "<redacted>");
        }
    }
    out
}

fn cluster_settings(inv: &Inventory) -> Vec<(&'static str, Json)> {
    let all = serde_json::to_value(&inv.cluster).unwrap_or(Json::Null);
    vars::KEYS
        .iter()
        .filter(|k| k.scope == Scope::Cluster)
        .filter_map(|k| all.get(k.name).map(|v| (k.name, v.clone())))
        .collect()
}

fn compact(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// Long by design: one section per part of the resolved inventory, in print order.
pub(crate) fn text(inv: &Inventory) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "inventory     {}", inv.path.display());
    let store_state = if inv.secrets_path.exists() {
        "exists"
    } else {
        "not created yet"
    };
    let _ = writeln!(
        o,
        "secrets file  {} ({store_state})",
        inv.secrets_path.display()
    );
    let _ = writeln!(
        o,
        "known_hosts   {}",
        inv.known_hosts
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts (default; --known-hosts overrides)".into())
    );

    o.push_str("\ngroups\n");
    let width = inv.groups.keys().map(String::len).max().unwrap_or(0).max(6);
    for g in ["db", "router", "etcd", "backup", "monitor"] {
        let members: Vec<String> = match g {
            "etcd" => inv.etcd_hosts().iter().map(|h| h.name.clone()).collect(),
            "monitor" => inv.monitor_host().iter().map(|h| h.name.clone()).collect(),
            _ => inv.groups.get(g).cloned().unwrap_or_default(),
        };
        let note = if g == "etcd" && inv.groups.get("etcd").is_none_or(|m| m.is_empty()) {
            "  (no etcd group: the db hosts)"
        } else if g == "backup" && !inv.cluster.backup_enabled {
            "  (backups off: backup_enabled is false)"
        } else if g == "monitor" && !inv.cluster.monitoring_enabled {
            "  (monitoring off: monitoring_enabled is false)"
        } else if g == "monitor" && inv.groups.get("monitor").is_none_or(|m| m.is_empty()) {
            "  (no monitor group: the first router)"
        } else {
            ""
        };
        let _ = writeln!(o, "  {g:width$}  {}{note}", members.join(", "));
    }
    for (g, members) in &inv.groups {
        if crate::inventory::resolve::MANAGED.contains(&g.as_str()) {
            continue;
        }
        let shown = if members.is_empty() {
            "(no managed hosts)".to_string()
        } else {
            members.join(", ")
        };
        let _ = writeln!(o, "  {g:width$}  {shown}");
    }

    o.push_str("\nhosts\n");
    let header = [
        "NAME", "ADDRESS", "IP", "PORT", "USER", "KEY FILE", "BECOME", "GROUPS",
    ];
    let rows: Vec<[String; 8]> = inv
        .hosts
        .iter()
        .map(|h| {
            [
                h.name.clone(),
                h.ssh.address.clone(),
                h.ip.to_string(),
                h.ssh.port.to_string(),
                h.ssh.user.clone(),
                h.ssh
                    .key_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "- (ssh-agent / default keys)".into()),
                if h.ssh.become_ { "yes" } else { "no" }.into(),
                h.groups.join(","),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                let _ = write!(s, " {c}");
            } else {
                let _ = write!(s, " {c:w$}", w = widths[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    o.push_str(&line(&header.map(String::from)));
    for r in &rows {
        o.push_str(&line(r));
    }

    o.push_str("\ncluster\n");
    let settings = cluster_settings(inv);
    let w = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &settings {
        let _ = writeln!(o, "  {k:w$}  {}", compact(v));
    }

    o.push_str("\nsecrets\n");
    let w = SECRET_NAMES.iter().map(|n| n.len()).max().unwrap_or(0);
    for name in SECRET_NAMES {
        match inv.secret_sources.get(name) {
            Some(source) => {
                let _ = writeln!(o, "  {name:w$}  <redacted>  {source}");
            }
            None => {
                let _ = writeln!(o, "  {name:w$}  (not set)");
            }
        }
    }

    if !inv.warnings.is_empty() {
        o.push_str("\nwarnings\n");
        for wn in &inv.warnings {
            let _ = writeln!(o, "  - {}", wn.message);
        }
    }
    scrub(inv, &o)
}

pub(crate) fn json(inv: &Inventory) -> String {
    let hosts: Vec<Json> = inv
        .hosts
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "address": h.ssh.address,
                "ip": h.ip.to_string(),
                "port": h.ssh.port,
                "user": h.ssh.user,
                "key_file": h.ssh.key_file,
                "become": h.ssh.become_,
                "groups": h.groups,
                "vars": h.vars,
            })
        })
        .collect();
    let secrets: serde_json::Map<String, Json> = SECRET_NAMES
        .iter()
        .map(|n| {
            let src = inv.secret_sources.get(*n);
            (
                n.to_string(),
                json!({
                    "value": "<redacted>",
                    "source": src,
                    "description": src.map(|s| s.to_string()),
                }),
            )
        })
        .collect();
    let cluster: serde_json::Map<String, Json> = cluster_settings(inv)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let doc = json!({
        "ok": true,
        "inventory": inv.path,
        "secrets_file": inv.secrets_path,
        "known_hosts": inv.known_hosts,
        "groups": inv.groups,
        "etcd_hosts": inv.etcd_hosts().iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
        "hosts": hosts,
        "cluster": cluster,
        "secrets": secrets,
        "warnings": inv.warnings.iter().map(|w| w.message.clone()).collect::<Vec<_>>(),
    });
    let s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    scrub(inv, &s) + "\n"
}

pub(crate) fn json_error(e: &InventoryError) -> String {
    let doc = json!({
        "ok": false,
        "inventory": e.path,
        "errors": e.errors,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}
