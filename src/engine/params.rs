//! `postgresql_parameters` checked by PostgreSQL itself before any change: the
//! server binary parses them (`postgres -C ... -c name=value`, which validates
//! names, types, ranges and enums exactly as the server will, and starts nothing)
//! against a scratch configuration. Pure: the script and the reading of its answer.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::install;
use crate::inventory::{Cluster, InstallMethod};
use crate::ssh::shell_quote;

/// Printed when the host has no PostgreSQL server binary yet (a first deploy).
pub const NO_SERVER: &str = "PGHA-NO-SERVER";

/// A parameter's value as PostgreSQL reads it (`true` -> `on`, as Patroni writes it).
pub fn render(v: &Value) -> String {
    match v {
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The root shell that runs the check on a db host: as postgres, on the host
/// (native) or in the Patroni container (docker; none yet: no server).
pub fn script(c: &Cluster, params: &BTreeMap<String, Value>) -> String {
    let bin = format!("/usr/lib/postgresql/{}/bin/postgres", c.postgresql_version);
    let args: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("-c {}", shell_quote(&format!("{k}={}", render(v)))))
        .collect();
    let inner = format!(
        "[ -x {bin} ] || {{ echo {NO_SERVER}; exit 0; }}\n\
         d=$(mktemp -d) && : > \"$d/postgresql.conf\" && : > \"$d/postgresql.auto.conf\" || exit 1\n\
         {bin} -D \"$d\" -C server_version {} 2>&1; rc=$?\n\
         rm -rf \"$d\"; exit $rc",
        args.join(" ")
    );
    match c.install_method {
        InstallMethod::Native => format!(
            "id postgres >/dev/null 2>&1 || {{ echo {NO_SERVER}; exit 0; }}\nrunuser -u postgres -- sh -c {}",
            shell_quote(&inner)
        ),
        InstallMethod::Docker => format!(
            "{} || {{ echo {NO_SERVER}; exit 0; }}\ndocker exec -u postgres {} sh -c {}",
            install::postgres_reachable(c),
            install::PATRONI_CONTAINER,
            shell_quote(&inner)
        ),
    }
}

/// What the check found: Ok(true) checked and accepted, Ok(false) no server to
/// check with, Err((parameter named by PostgreSQL if any, PostgreSQL's words)).
pub fn verdict(code: Option<u32>, out: &str) -> Result<bool, (Option<String>, String)> {
    if out.lines().any(|l| l.trim() == NO_SERVER) {
        return Ok(false);
    }
    if code == Some(0) {
        return Ok(true);
    }
    // PostgreSQL's own lines: `<time> [pid] FATAL:  <why>`, then maybe a HINT.
    let mut why = Vec::new();
    let mut hints = Vec::new();
    for l in out.lines() {
        if let Some((_, rest)) = l.split_once("FATAL:").or_else(|| l.split_once("ERROR:")) {
            why.push(rest.trim().to_string());
        } else if let Some((_, rest)) = l.split_once("HINT:").or_else(|| l.split_once("DETAIL:")) {
            hints.push(rest.trim().to_string());
        }
    }
    if why.is_empty() {
        why = out
            .lines()
            .map(|l| l.trim().trim_start_matches("postgres: ").to_string())
            .filter(|l| !l.is_empty())
            .collect();
    }
    let mut text = why.join("; ");
    if !hints.is_empty() {
        text = format!("{text} ({})", hints.join(" "));
    }
    let name = text
        .split("parameter \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(str::to_string);
    Err((name, text))
}

/// The line of `name:` under a `postgresql_parameters` mapping in the inventory's
/// text (the first one), for the message.
pub fn line_of(text: &str, name: &str) -> Option<usize> {
    let mut inside: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.starts_with("postgresql_parameters:") {
            inside = Some(indent);
            continue;
        }
        if let Some(at) = inside {
            if !t.is_empty() && indent <= at {
                inside = None;
                continue;
            }
            let key = t.trim_start_matches("- ");
            if key.starts_with(&format!("{name}:")) || key.contains(&format!("option: {name}")) {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_passed_as_postgres_reads_them_and_quoted() {
        let c = Cluster::default();
        let p: BTreeMap<String, Value> = [
            ("max_connections".to_string(), json!(300)),
            ("jit".to_string(), json!(false)),
            (
                "search_path".to_string(),
                json!("\"$user\", public; rm -rf /"),
            ),
        ]
        .into_iter()
        .collect();
        let s = script(&c, &p);
        assert!(s.contains("runuser -u postgres -- sh -c"), "{s}");
        assert!(s.contains("max_connections=300"), "{s}");
        assert!(s.contains("jit=off"), "{s}");
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "printf '%s\\n' {}",
                    p.iter()
                        .map(|(k, v)| shell_quote(&format!("{k}={}", render(v))))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("search_path=\"$user\", public; rm -rf /")
        );
    }

    #[test]
    fn postgres_answers_are_read() {
        assert_eq!(verdict(Some(0), "17.12\n"), Ok(true));
        assert_eq!(verdict(Some(0), "PGHA-NO-SERVER\n"), Ok(false));
        let (name, text) = verdict(
            Some(1),
            "2026-12-02 18:16:05.624 GMT [1400] FATAL:  invalid value for parameter \"wal_level\": \"bogus\"\n\
             2026-12-02 18:16:05.624 GMT [1400] HINT:  Available values: minimal, replica, logical.\n",
        )
        .unwrap_err();
        assert_eq!(name.as_deref(), Some("wal_level"));
        assert_eq!(
            text,
            "invalid value for parameter \"wal_level\": \"bogus\" (Available values: minimal, replica, logical.)"
        );
        let (name, _) = verdict(
            Some(1),
            "2026-12-02 18:16:05.005 GMT [1398] FATAL:  unrecognized configuration parameter \"foo_bar\"\n",
        )
        .unwrap_err();
        assert_eq!(name.as_deref(), Some("foo_bar"));
    }

    #[test]
    fn the_line_of_a_parameter_is_found_in_either_form() {
        let text = "all:\n  vars:\n    work_mem: 1MB\n    postgresql_parameters:\n      work_mem: 8MB\n      max_connections: abc\n    tls: true\n";
        assert_eq!(line_of(text, "max_connections"), Some(6));
        assert_eq!(line_of(text, "work_mem"), Some(5));
        let list = "all:\n  vars:\n    postgresql_parameters:\n      - {option: wal_level, value: bogus}\n";
        assert_eq!(line_of(list, "wal_level"), Some(4));
        assert_eq!(line_of(text, "tls"), None);
    }
}
