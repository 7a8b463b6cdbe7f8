//! The variables pgha understands: names, aliases, types, conversion to a
//! normalised JSON value, and "did you mean" for misspelt names.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value as Json, json};
use yaml_serde::Value as Yaml;

use super::locate::Seg;

/// What a variable configures, which decides how its value is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Per host: how to reach it over SSH.
    Connection,
    /// One value for the whole cluster.
    Cluster,
    /// A password, inline (one value for the whole cluster).
    Secret,
    /// A file holding a password (`<name>_file`).
    SecretFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `cluster_name`: `^[a-z0-9][a-z0-9_-]*$`.
    ClusterName,
    /// A PostgreSQL role or database name.
    Role,
    /// An IP address or DNS name.
    Address,
    /// A Unix user name.
    User,
    Port,
    Int {
        min: u64,
        max: u64,
    },
    Bool,
    /// An HAProxy time (`4s`, `30m`, `500ms`; a bare number is milliseconds).
    Duration,
    /// A directory pgha may wipe as root (PostgreSQL's data directory): absolute,
    /// normalized, at least two levels deep, not a system directory.
    DataDir,
    /// A path on this machine (relative to the inventory's directory, `~` expanded).
    LocalPath,
    InstallMethod,
    /// `push` or `registry`: how docker images reach the hosts.
    ImageSource,
    /// Free text on one line (a storage driver name).
    Text,
    /// A Docker image reference (`name[:tag][@digest]`): it reaches `docker`
    /// command lines on the hosts.
    Image,
    Cidrs,
    /// Registries as `host[:port]` (Docker's `insecure-registries`).
    Registries,
    AptSources,
    AptPins,
    Params,
    Secret,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySpec {
    pub name: &'static str,
    /// The name the value is resolved under (aliases share it).
    pub canonical: &'static str,
    pub scope: Scope,
    pub kind: Kind,
}

const fn k(name: &'static str, scope: Scope, kind: Kind) -> KeySpec {
    KeySpec {
        name,
        canonical: name,
        scope,
        kind,
    }
}

const fn alias(name: &'static str, canonical: &'static str, kind: Kind) -> KeySpec {
    KeySpec {
        name,
        canonical,
        scope: Scope::Connection,
        kind,
    }
}

const U32: Kind = Kind::Int {
    min: 0,
    max: u32::MAX as u64,
};
const POS_U32: Kind = Kind::Int {
    min: 1,
    max: u32::MAX as u64,
};

use Scope::{Cluster as C, Connection as Conn, Secret as S, SecretFile as SF};

/// Every variable pgha reads. Cluster keys are in README order.
pub(crate) const KEYS: &[KeySpec] = &[
    k("address", Conn, Kind::Address),
    alias("ansible_host", "address", Kind::Address),
    alias("ansible_ssh_host", "address", Kind::Address),
    k("ssh_port", Conn, Kind::Port),
    alias("ansible_port", "ssh_port", Kind::Port),
    alias("ansible_ssh_port", "ssh_port", Kind::Port),
    k("ssh_user", Conn, Kind::User),
    alias("ansible_user", "ssh_user", Kind::User),
    alias("ansible_ssh_user", "ssh_user", Kind::User),
    k("ssh_private_key_file", Conn, Kind::LocalPath),
    alias(
        "ansible_ssh_private_key_file",
        "ssh_private_key_file",
        Kind::LocalPath,
    ),
    alias(
        "ansible_private_key_file",
        "ssh_private_key_file",
        Kind::LocalPath,
    ),
    k("become", Conn, Kind::Bool),
    alias("ansible_become", "become", Kind::Bool),
    k("pgha_known_hosts", C, Kind::LocalPath),
    k("cluster_name", C, Kind::ClusterName),
    k("install_method", C, Kind::InstallMethod),
    k("postgresql_version", C, Kind::Int { min: 13, max: 18 }),
    k("postgresql_port", C, Kind::Port),
    k("postgresql_data_dir", C, Kind::DataDir),
    k("postgresql_parameters", C, Kind::Params),
    k("patroni_rest_port", C, Kind::Port),
    k("patroni_ttl", C, POS_U32),
    k("patroni_loop_wait", C, POS_U32),
    k("patroni_retry_timeout", C, POS_U32),
    k(
        "patroni_maximum_lag_on_failover",
        C,
        Kind::Int {
            min: 0,
            max: i64::MAX as u64,
        },
    ),
    k("synchronous_mode", C, Kind::Bool),
    k("synchronous_mode_strict", C, Kind::Bool),
    k("synchronous_node_count", C, U32),
    k("etcd_client_port", C, Kind::Port),
    k("etcd_peer_port", C, Kind::Port),
    k("haproxy_write_port", C, Kind::Port),
    k("haproxy_read_port", C, Kind::Port),
    k("haproxy_stats_port", C, Kind::Port),
    k("haproxy_maxconn", C, POS_U32),
    k("haproxy_timeout_connect", C, Kind::Duration),
    k("haproxy_timeout_client", C, Kind::Duration),
    k("haproxy_timeout_server", C, Kind::Duration),
    k("haproxy_check_inter", C, Kind::Duration),
    k("haproxy_check_fastinter", C, Kind::Duration),
    k("haproxy_check_downinter", C, Kind::Duration),
    k("haproxy_check_fall", C, POS_U32),
    k("haproxy_check_rise", C, POS_U32),
    k(
        "haproxy_replica_max_lag",
        C,
        Kind::Int {
            min: 0,
            max: i64::MAX as u64,
        },
    ),
    k("exporter_port", C, Kind::Port),
    k("client_cidrs", C, Kind::Cidrs),
    k("superuser_name", C, Kind::Role),
    k("replication_user", C, Kind::Role),
    k("rewind_user", C, Kind::Role),
    k("monitor_user", C, Kind::Role),
    k("app_user", C, Kind::Role),
    k("app_database", C, Kind::Role),
    k("apt_sources", C, Kind::AptSources),
    k("apt_pins", C, Kind::AptPins),
    k(
        "apt_cache_valid_time",
        C,
        Kind::Int {
            min: 0,
            max: i64::MAX as u64,
        },
    ),
    k("allow_router_on_db", C, Kind::Bool),
    k("docker_image", C, Kind::Image),
    k("docker_image_etcd", C, Kind::Image),
    k("docker_image_postgres", C, Kind::Image),
    k("docker_image_haproxy", C, Kind::Image),
    k("docker_image_exporter", C, Kind::Image),
    k("docker_image_source", C, Kind::ImageSource),
    k("docker_storage_driver", C, Kind::Text),
    k("docker_insecure_registries", C, Kind::Registries),
    k("tls", C, Kind::Bool),
    k("tls_ca_cert_file", C, Kind::LocalPath),
    k("tls_ca_key_file", C, Kind::LocalPath),
    k("tls_cert_validity_days", C, Kind::Int { min: 1, max: 3650 }),
    k("tls_renew_before_days", C, Kind::Int { min: 0, max: 3650 }),
    k("tls_cert_file", Conn, Kind::LocalPath),
    k("tls_key_file", Conn, Kind::LocalPath),
    k("superuser_password", S, Kind::Secret),
    k("replication_password", S, Kind::Secret),
    k("rewind_password", S, Kind::Secret),
    k("monitor_password", S, Kind::Secret),
    k("app_password", S, Kind::Secret),
    k("patroni_api_password", S, Kind::Secret),
    k("haproxy_stats_password", S, Kind::Secret),
    k("superuser_password_file", SF, Kind::LocalPath),
    k("replication_password_file", SF, Kind::LocalPath),
    k("rewind_password_file", SF, Kind::LocalPath),
    k("monitor_password_file", SF, Kind::LocalPath),
    k("app_password_file", SF, Kind::LocalPath),
    k("patroni_api_password_file", SF, Kind::LocalPath),
    k("haproxy_stats_password_file", SF, Kind::LocalPath),
];

/// Ansible variables that are accepted without comment (they belong to Ansible itself).
const ANSIBLE_KNOWN: &[&str] = &[
    "ansible_connection",
    "ansible_password",
    "ansible_ssh_pass",
    "ansible_ssh_password",
    "ansible_ssh_common_args",
    "ansible_ssh_extra_args",
    "ansible_sftp_extra_args",
    "ansible_scp_extra_args",
    "ansible_ssh_pipelining",
    "ansible_ssh_executable",
    "ansible_become_method",
    "ansible_become_user",
    "ansible_become_password",
    "ansible_become_pass",
    "ansible_become_exe",
    "ansible_become_flags",
    "ansible_sudo",
    "ansible_sudo_pass",
    "ansible_shell_type",
    "ansible_shell_executable",
    "ansible_python_interpreter",
    "ansible_timeout",
];

pub(crate) fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.name == name)
}

/// Names a user may mean when writing a pgha setting (no `ansible_` aliases).
fn candidates() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .map(|s| s.name)
        .filter(|n| !n.starts_with("ansible_"))
}

/// The known pgha key `key` is most likely a misspelling of, if any.
///
/// Close means: equal ignoring case and `-`/`_`, or a Damerau-Levenshtein
/// distance of at most 2 (names of 10+ characters) or 1 (5+ characters).
/// Stricter than a plain similarity score on purpose: Ansible inventories carry
/// many variables of other playbooks with similar prefixes (`postgresql_users`),
/// which must load with a warning, not fail.
pub(crate) fn did_you_mean(key: &str) -> Option<&'static str> {
    if key.starts_with("ansible_") {
        return None;
    }
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    let lower = key.to_ascii_lowercase().replace('-', "_");
    let mut best: Option<(usize, &'static str)> = None;
    for cand in candidates() {
        if norm(key) == norm(cand) {
            return Some(cand);
        }
        let allowed = if cand.len() >= 10 {
            2
        } else if cand.len() >= 5 {
            1
        } else {
            0
        };
        let d = strsim::damerau_levenshtein(&lower, cand);
        if d <= allowed && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// For an `ansible_*` variable that is not one Ansible knows: the alias it is
/// probably a misspelling of (`ansible_hosts` -> `ansible_host`).
pub(crate) fn ansible_did_you_mean(key: &str) -> Option<&'static str> {
    if !key.starts_with("ansible_") || ANSIBLE_KNOWN.contains(&key) || spec(key).is_some() {
        return None;
    }
    KEYS.iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("ansible_"))
        .find(|n| strsim::damerau_levenshtein(key, n) <= 1)
}

/// A short description of a YAML value for error messages (no secret ever goes through here).
pub(crate) fn describe(v: &Yaml) -> String {
    match v {
        Yaml::Null => "nothing (an empty value)".into(),
        Yaml::Bool(b) => format!("the boolean `{b}`"),
        Yaml::Number(n) => format!("the number `{n}`"),
        Yaml::String(s) => {
            let short: String = s.chars().take(40).collect();
            let dots = if s.chars().count() > 40 { "..." } else { "" };
            format!("the string \"{short}{dots}\"")
        }
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A conversion error: where below the key (for list items) and what is wrong.
pub(crate) type ConvError = (Vec<Seg>, String);

fn err(msg: impl Into<String>) -> Vec<ConvError> {
    vec![(Vec::new(), msg.into())]
}

/// Check `v` against `kind` and normalise it (`"yes"` -> true, CIDRs canonical, ...).
pub(crate) fn convert(kind: Kind, v: &Yaml) -> Result<Json, Vec<ConvError>> {
    if kind != Kind::Secret
        && let Yaml::String(s) = v
        && (s.contains("{{") || s.contains("{%"))
    {
        return Err(err(
            "Jinja expressions are not evaluated by pgha: write the value itself",
        ));
    }
    if let Yaml::Tagged(t) = v {
        if t.tag == "!vault" {
            return Err(err(
                "Ansible Vault values (!vault) are not supported: put the value in a file \
                 readable only by you and use the `_file` form of the variable",
            ));
        }
        return Err(err(format!(
            "unexpected YAML tag {}: remove the tag",
            t.tag
        )));
    }
    match kind {
        Kind::Port => {
            let n = integer(v, true)?;
            match n {
                0 => Err(err("port 0 is not usable: use a port from 1 to 65535")),
                1..=65535 => Ok(json!(n)),
                _ => Err(err(format!(
                    "port {n} is out of range: use a port from 1 to 65535"
                ))),
            }
        }
        Kind::Int { min, max } => {
            let n = integer(v, false)?;
            if n < min as i128 || n > max as i128 {
                return Err(err(format!(
                    "{n} is out of range: use a whole number from {min} to {max}"
                )));
            }
            Ok(json!(n as u64))
        }
        Kind::Bool => match v {
            Yaml::Bool(b) => Ok(json!(b)),
            Yaml::String(s) => match s.to_ascii_lowercase().as_str() {
                "yes" | "true" | "on" => Ok(json!(true)),
                "no" | "false" | "off" => Ok(json!(false)),
                _ => Err(err(format!(
                    "expected true or false, found {}",
                    describe(v)
                ))),
            },
            _ => Err(err(format!(
                "expected true or false, found {}",
                describe(v)
            ))),
        },
        Kind::ClusterName => {
            let s = string(v)?;
            let ok = s.len() <= 63
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if ok {
                Ok(json!(s))
            } else {
                Err(err(format!(
                    "\"{s}\" is not a valid cluster name: use lowercase letters, digits, `_` and `-`, \
                     starting with a letter or digit (^[a-z0-9][a-z0-9_-]*$, at most 63 characters)"
                )))
            }
        }
        Kind::Role => {
            let s = string(v)?;
            let ok = s.len() <= 63
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if ok {
                Ok(json!(s))
            } else {
                Err(err(format!(
                    "\"{s}\" is not a usable PostgreSQL name: use lowercase letters, digits and `_`, \
                     starting with a letter or `_` (at most 63 characters)"
                )))
            }
        }
        Kind::User => {
            let s = string(v)?;
            let ok = s.len() <= 32
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if ok {
                Ok(json!(s))
            } else {
                Err(err(format!("\"{s}\" is not a valid user name")))
            }
        }
        Kind::Address => {
            let s = string(v)?;
            if s.parse::<IpAddr>().is_ok() || is_dns_name(&s) {
                Ok(json!(s))
            } else {
                Err(err(format!("\"{s}\" is not an IP address or DNS name")))
            }
        }
        Kind::Duration => {
            let s = match v {
                Yaml::Number(n) if n.as_u64().is_some() => n.to_string(),
                _ => string(v)?,
            };
            let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
            let unit = &s[digits..];
            let value: u64 = s[..digits].parse().unwrap_or(0);
            if digits == 0 || !matches!(unit, "" | "us" | "ms" | "s" | "m" | "h" | "d") {
                return Err(err(format!(
                    "\"{s}\" is not an HAProxy time: write a number with a unit, like 500ms, 4s, 30m"
                )));
            }
            if value == 0 {
                return Err(err("a zero time is not usable here"));
            }
            Ok(json!(s))
        }
        Kind::DataDir => {
            let s = string(v)?;
            data_dir(&s).map_err(|why| {
                err(format!(
                    "\"{s}\" {why}: pgha wipes this directory as root when it rebuilds a member; \
                     use a dedicated directory such as /var/lib/postgresql/17/main or /srv/pg/data"
                ))
            })?;
            Ok(json!(s))
        }
        Kind::LocalPath => {
            let s = string(v)?;
            if s.chars().any(|c| c.is_control()) {
                return Err(err("the path contains control characters"));
            }
            Ok(json!(s))
        }
        Kind::ImageSource => {
            let s = string(v)?;
            match s.as_str() {
                "push" | "registry" => Ok(json!(s)),
                _ => Err(err(format!(
                    "\"{s}\" is not an image source: use push (pgha copies images from this machine) or registry (hosts pull them)"
                ))),
            }
        }
        Kind::Text => {
            let s = string(v)?;
            if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(err("the value contains spaces or control characters"));
            }
            Ok(json!(s))
        }
        Kind::Image => {
            let s = string(v)?;
            if is_image_ref(&s) {
                Ok(json!(s))
            } else {
                Err(err(format!(
                    "\"{s}\" is not an image reference: write name[:tag] or name@sha256:<digest>, \
                     like registry.example:5000/pgha-stack:1.2 (letters, digits and `. _ - / : @`, \
                     starting with a letter or digit)"
                )))
            }
        }
        Kind::InstallMethod => {
            let s = string(v)?;
            match s.as_str() {
                "native" | "docker" => Ok(json!(s)),
                _ => Err(err(format!(
                    "\"{s}\" is not an install method: use native or docker"
                ))),
            }
        }
        Kind::Secret => match v {
            Yaml::String(s) if s.is_empty() => Err(err(
                "the password is empty: set a value or remove the line (pgha then generates one)",
            )),
            Yaml::String(s) if s.chars().any(|c| c.is_control()) => Err(err(
                "the password contains a control character (newline, tab, ...)",
            )),
            Yaml::String(s) => Ok(json!(s)),
            Yaml::Number(_) | Yaml::Bool(_) => {
                Err(err("the password is not a string: put it in quotes"))
            }
            _ => Err(err("expected a password (a string)")),
        },
        Kind::Cidrs => each_item(v, |item| match item {
            Yaml::String(s) => match parse_cidr(s) {
                Some(net) => Ok(json!(net.to_string())),
                None => Err(err(format!(
                    "\"{s}\" is not a CIDR: write a network like 10.0.0.0/24 or 2001:db8::/32"
                ))),
            },
            other => Err(err(format!(
                "expected a CIDR string, found {}",
                describe(other)
            ))),
        }),
        Kind::Registries => each_item(v, |item| match item {
            Yaml::String(s) if is_registry(s) => Ok(json!(s)),
            Yaml::String(s) => Err(err(format!(
                "\"{s}\" is not a registry: write its host and port, like 10.0.0.5:5000 or \
                 registry.internal:5000 (no scheme, no path)"
            ))),
            other => Err(err(format!(
                "expected a registry host:port string, found {}",
                describe(other)
            ))),
        }),
        Kind::AptSources => each_item(v, |item| match item {
            Yaml::String(s)
                if (s.starts_with("deb ") || s.starts_with("deb-src ")) && !s.contains('\n') =>
            {
                Ok(json!(s.trim()))
            }
            Yaml::String(s) => Err(err(format!(
                "\"{}\" is not a sources.list line: write one line starting with `deb `",
                s.lines().next().unwrap_or("")
            ))),
            other => Err(err(format!(
                "expected a sources.list line, found {}",
                describe(other)
            ))),
        }),
        Kind::AptPins => each_item(v, pin),
        Kind::Params => params(v),
    }
}

fn pin(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let Yaml::Mapping(m) = v else {
        return Err(err(format!(
            "expected {{package, version, priority}}, found {}",
            describe(v)
        )));
    };
    let mut package = None;
    let mut version = None;
    let mut priority: i64 = 1001;
    let mut errors = Vec::new();
    for (key, val) in m {
        let name = key.as_str().unwrap_or("");
        let at = vec![Seg::key(name)];
        match name {
            "package" => match val {
                Yaml::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                    package = Some(s.clone())
                }
                _ => errors.push((at, "expected a package name".to_string())),
            },
            "version" => match val {
                Yaml::String(s) if !s.is_empty() && !s.contains('\n') => version = Some(s.clone()),
                Yaml::Number(n) if n.is_u64() => version = Some(n.to_string()),
                _ => errors.push((
                    at,
                    format!(
                        "expected a version string like \"17.12*\", found {} (put versions in quotes)",
                        describe(val)
                    ),
                )),
            },
            "priority" => match val {
                Yaml::Number(n) if n.as_i64().is_some_and(|p| i32::try_from(p).is_ok()) => {
                    priority = n.as_i64().unwrap_or(1001)
                }
                _ => errors.push((
                    at,
                    format!("expected a whole number, found {}", describe(val)),
                )),
            },
            _ => errors.push((
                at,
                format!("unknown key `{name}` in an apt pin: use package, version and priority"),
            )),
        }
    }
    if package.is_none() && errors.is_empty() {
        errors.push((Vec::new(), "the apt pin has no `package`".to_string()));
    }
    if version.is_none() && errors.is_empty() {
        errors.push((Vec::new(), "the apt pin has no `version`".to_string()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(json!({"package": package, "version": version, "priority": priority}))
}

/// `{name: scalar}`, or autobase's `[{option: name, value: scalar}]` form.
fn params(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let mut out = Map::new();
    let mut errors = Vec::new();
    let mut add = |name: &str, val: &Yaml, at: Vec<Seg>, errors: &mut Vec<ConvError>| {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            errors.push((at, format!("\"{name}\" is not a PostgreSQL parameter name")));
            return;
        }
        let j = match val {
            Yaml::String(s) if !s.contains('\n') => json!(s),
            Yaml::Number(n) => {
                if let Some(i) = n.as_i64() {
                    json!(i)
                } else if let Some(u) = n.as_u64() {
                    json!(u)
                } else {
                    json!(n.as_f64())
                }
            }
            Yaml::Bool(b) => json!(if *b { "on" } else { "off" }),
            other => {
                errors.push((
                    at,
                    format!(
                        "parameter `{name}`: expected a single value (string, number or boolean), found {}",
                        describe(other)
                    ),
                ));
                return;
            }
        };
        out.insert(name.to_string(), j);
    };
    match v {
        Yaml::Null => {}
        Yaml::Mapping(m) => {
            for (key, val) in m {
                let name = key.as_str().unwrap_or("");
                add(name, val, vec![Seg::key(name)], &mut errors);
            }
        }
        Yaml::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = vec![Seg::Index(i)];
                match (
                    item.get("option").and_then(|o| o.as_str()),
                    item.get("value"),
                ) {
                    (Some(name), Some(val)) => add(name, val, at, &mut errors),
                    _ => errors.push((
                        at,
                        "expected `{option: NAME, value: VALUE}` (or write postgresql_parameters as a mapping NAME: VALUE)"
                            .to_string(),
                    )),
                }
            }
        }
        other => {
            return Err(err(format!(
                "expected a mapping of parameter name to value, found {}",
                describe(other)
            )));
        }
    }
    if errors.is_empty() {
        Ok(Json::Object(out))
    } else {
        Err(errors)
    }
}

fn integer(v: &Yaml, allow_digit_string: bool) -> Result<i128, Vec<ConvError>> {
    match v {
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i as i128)
            } else if let Some(u) = n.as_u64() {
                Ok(u as i128)
            } else {
                Err(err(format!(
                    "expected a whole number, found {}",
                    describe(v)
                )))
            }
        }
        Yaml::String(s)
            if allow_digit_string && !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) =>
        {
            s.parse::<i128>()
                .map_err(|_| err(format!("expected a whole number, found {}", describe(v))))
        }
        _ => Err(err(format!(
            "expected a whole number, found {}",
            describe(v)
        ))),
    }
}

fn string(v: &Yaml) -> Result<String, Vec<ConvError>> {
    match v {
        Yaml::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(err(format!("expected a string, found {}", describe(v)))),
    }
}

/// Convert every item of a list, collecting all items' errors, each located at its
/// index.
/// `host[:port]` as Docker names a registry: no scheme, path or spaces.
/// A character a path on the hosts may hold: nothing a shell, a Docker mount
/// (`src:dst:opts`) or a validation command (`%s`) gives a meaning to.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/._-+".contains(c)
}

/// Docker's reference grammar, loosely: `[host[:port]/]path[:tag][@algo:hex]` out of
/// letters, digits and `. _ - / : @`. A leading `-` would read as an option.
fn is_image_ref(s: &str) -> bool {
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let word = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
    };
    s.len() <= 512
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && word(name)
        && !name.contains("//")
        && digest.is_none_or(|d| {
            d.split_once(':').is_some_and(|(algo, hex)| {
                word(algo) && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
            })
        })
}

fn is_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (s, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

fn each_item(
    v: &Yaml,
    f: impl Fn(&Yaml) -> Result<Json, Vec<ConvError>>,
) -> Result<Json, Vec<ConvError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in list(v)?.iter().enumerate() {
        match f(item) {
            Ok(j) => out.push(j),
            Err(es) => errors.extend(es.into_iter().map(|(mut at, m)| {
                at.insert(0, Seg::Index(i));
                (at, m)
            })),
        }
    }
    if errors.is_empty() {
        Ok(Json::Array(out))
    } else {
        Err(errors)
    }
}

fn list(v: &Yaml) -> Result<Vec<Yaml>, Vec<ConvError>> {
    match v {
        Yaml::Null => Ok(Vec::new()),
        Yaml::Sequence(s) => Ok(s.clone()),
        _ => Err(err(format!(
            "expected a list (one `- item` per line), found {}",
            describe(v)
        ))),
    }
}

/// A CIDR, or a bare address meaning that one host.
pub(crate) fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A YAML value as JSON (for `Host.vars`); keys that are not strings are stringified,
/// tagged values (Ansible Vault) are never shown.
pub(crate) fn yaml_to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => json!(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .unwrap_or(Json::Null)
            }
        }
        Yaml::String(s) => json!(s),
        Yaml::Sequence(items) => Json::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (key, val) in m {
                let name = match key {
                    Yaml::String(s) => s.clone(),
                    other => yaml_to_json(other).to_string(),
                };
                out.insert(name, yaml_to_json(val));
            }
            Json::Object(out)
        }
        Yaml::Tagged(t) => json!(format!("{} <not shown>", t.tag)),
    }
}

/// Whether a variable of this name holds a secret and must never be shown.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    (n.contains("pass") || n.contains("secret") || n.contains("token")) && !n.ends_with("_file")
}

/// System directories (and their ancestors) a data directory may never be, and
/// pseudo or volatile filesystems it may never be under.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var/backups",
    "/var/cache",
    "/var/lib",
    "/var/local",
    "/var/log",
    "/var/mail",
    "/var/opt",
    "/var/run",
    "/var/spool",
    "/var/tmp",
    "/var/lib/postgresql",
    "/var/lib/etcd",
    "/var/lib/docker",
    "/etc/postgresql",
];
const NEVER_UNDER: &[&str] = &[
    "/proc", "/sys", "/dev", "/run", "/tmp", "/boot", "/etc", "/usr",
];

/// Why `path` may not be a data directory (None: it may).
fn data_dir(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("is not an absolute path".into());
    }
    if let Some(c) = path.chars().find(|c| !is_path_char(*c)) {
        return Err(format!(
            "contains {c:?} (use letters, digits and / . _ - + only: the path goes into \
             commands run as root and into Docker's `-v src:dst` mounts)"
        ));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if path.len() > 1 && path.ends_with('/')
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err("is not a normalized path (no empty, `.` or `..` parts, no trailing /)".into());
    }
    if parts.len() < 2 {
        return Err("is less than two levels deep".into());
    }
    if SYSTEM_DIRS.contains(&path) {
        return Err("is a system directory".into());
    }
    if let Some(root) = NEVER_UNDER
        .iter()
        .find(|r| path.starts_with(&format!("{r}/")))
    {
        return Err(format!("is under {root}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Yaml {
        yaml_serde::from_str(s).unwrap()
    }

    #[test]
    fn did_you_mean_catches_typos() {
        assert_eq!(did_you_mean("postgres_version"), Some("postgresql_version"));
        assert_eq!(
            did_you_mean("postgresql_verison"),
            Some("postgresql_version")
        );
        assert_eq!(did_you_mean("PostgreSQL_Port"), Some("postgresql_port"));
        assert_eq!(did_you_mean("patroni-ttl"), Some("patroni_ttl"));
        assert_eq!(did_you_mean("synchronus_mode"), Some("synchronous_mode"));
        assert_eq!(did_you_mean("clustername"), Some("cluster_name"));
        assert_eq!(
            did_you_mean("superuser_pasword"),
            Some("superuser_password")
        );
    }

    #[test]
    fn did_you_mean_leaves_other_playbooks_alone() {
        for other in [
            "postgresql_users",
            "postgresql_databases",
            "postgresql_packages",
            "ntp_servers",
            "timezone",
            "patroni_cluster_name",
            "with_haproxy_load_balancing",
            "node_exporter_version",
            "ansible_python_interpreter",
            "app_env",
        ] {
            assert_eq!(did_you_mean(other), None, "{other}");
        }
    }

    #[test]
    fn ansible_typos() {
        assert_eq!(ansible_did_you_mean("ansible_hosts"), Some("ansible_host"));
        assert_eq!(ansible_did_you_mean("ansible_host"), None);
        assert_eq!(ansible_did_you_mean("ansible_connection"), None);
        assert_eq!(ansible_did_you_mean("ansible_facts_cache"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(convert(Kind::Port, &y("5432")).unwrap(), json!(5432));
        assert_eq!(convert(Kind::Port, &y("'2222'")).unwrap(), json!(2222));
        assert!(
            convert(Kind::Port, &y("0")).unwrap_err()[0]
                .1
                .contains("port 0")
        );
        assert!(
            convert(Kind::Port, &y("70000")).unwrap_err()[0]
                .1
                .contains("out of range")
        );
        assert!(
            convert(Kind::Port, &y("54.32")).unwrap_err()[0]
                .1
                .contains("whole number")
        );
        assert!(
            convert(Kind::Port, &y("five")).unwrap_err()[0]
                .1
                .contains("\"five\"")
        );
        assert!(convert(Kind::Port, &y("-1")).is_err());
    }

    #[test]
    fn booleans_accept_ansible_spellings() {
        assert_eq!(convert(Kind::Bool, &y("yes")).unwrap(), json!(true));
        assert_eq!(convert(Kind::Bool, &y("False")).unwrap(), json!(false));
        assert!(convert(Kind::Bool, &y("1")).is_err());
    }

    #[test]
    fn cidrs_and_lists() {
        assert_eq!(
            convert(Kind::Cidrs, &y("[10.1.2.3/24, 192.168.0.7]")).unwrap(),
            json!(["10.1.2.0/24", "192.168.0.7/32"])
        );
        let e = convert(Kind::Cidrs, &y("[10.0.0.0/8, 10.0.0.0/33]")).unwrap_err();
        assert_eq!(e[0].0, vec![Seg::Index(1)]);
        assert!(convert(Kind::Cidrs, &y("10.0.0.0/8")).is_err());
        assert_eq!(convert(Kind::Cidrs, &y("~")).unwrap(), json!([]));
        assert_eq!(
            convert(
                Kind::Registries,
                &y("[10.1.2.3:5050, registry.internal, \"[fd00::1]:5000\"]")
            )
            .unwrap(),
            json!(["10.1.2.3:5050", "registry.internal", "[fd00::1]:5000"])
        );
        for bad in [
            "[\"http://10.1.2.3:5050\"]",
            "[\"reg:99999\"]",
            "[\"reg/path\"]",
            "[\"a b\"]",
            "[\"reg:\"]",
            "[5050]",
        ] {
            assert!(convert(Kind::Registries, &y(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins_and_params() {
        let p = convert(Kind::AptPins, &y("[{package: patroni, version: '4.0.7*'}]")).unwrap();
        assert_eq!(
            p,
            json!([{"package": "patroni", "version": "4.0.7*", "priority": 1001}])
        );
        let e = convert(Kind::AptPins, &y("[{package: a, version: 17.10}]")).unwrap_err();
        assert_eq!(e[0].0, vec![Seg::Index(0), Seg::key("version")]);
        let p = convert(
            Kind::Params,
            &y("{max_connections: 200, wal_log_hints: true}"),
        )
        .unwrap();
        assert_eq!(p, json!({"max_connections": 200, "wal_log_hints": "on"}));
        let p = convert(Kind::Params, &y("[{option: work_mem, value: 8MB}]")).unwrap();
        assert_eq!(p, json!({"work_mem": "8MB"}));
        assert!(convert(Kind::Params, &y("{a: {b: 1}}")).is_err());
    }

    #[test]
    fn strings_and_names() {
        assert!(convert(Kind::ClusterName, &y("Prod")).is_err());
        assert!(convert(Kind::ClusterName, &y("prod-1_a")).is_ok());
        assert!(convert(Kind::Role, &y("app; drop")).is_err());
        assert!(convert(Kind::Duration, &y("4s")).is_ok());
        assert!(convert(Kind::Duration, &y("4 seconds")).is_err());
        assert_eq!(convert(Kind::Duration, &y("500")).unwrap(), json!("500"));
        assert!(convert(Kind::Address, &y("db1.example.com")).is_ok());
        assert!(convert(Kind::Address, &y("fe80::1")).is_ok());
        assert!(convert(Kind::Address, &y("not an address")).is_err());
        for bad in [
            "/",
            "/var",
            "/etc",
            "/var/lib",
            "/usr/local",
            "/home",
            "/var/lib/postgresql",
            "relative/dir",
            "/srv//pg",
            "/srv/pg/",
            "/srv/./pg",
            "/srv/pg/../x",
            "/data",
            "/tmp/pg",
            "/etc/postgresql/17/main",
            "/proc/1/x",
            "/srv/pg data",
            "/srv/$(id)",
            "/srv/pg;rm",
            "/srv/`x`",
        ] {
            assert!(
                convert(Kind::DataDir, &y(bad)).is_err(),
                "{bad} must be refused as a data directory"
            );
        }
        for good in [
            "/var/lib/postgresql/17/main",
            "/srv/pg/data",
            "/data/pg",
            "/pg/17",
        ] {
            assert!(convert(Kind::DataDir, &y(good)).is_ok(), "{good}");
        }
        let e = format!("{:?}", convert(Kind::DataDir, &y("/var")).unwrap_err());
        assert!(e.contains("wipes this directory"), "{e}");
        for bad in [
            "/var/lib/pg;rm",
            "/var/lib/$(id)",
            "/var/lib/`id`",
            "/var/lib/a|b",
            "/var/lib/a:b",
            "/var/lib/'x'",
            "/var/lib/%s",
        ] {
            let e = convert(Kind::DataDir, &y(&format!("\"{bad}\""))).unwrap_err();
            assert!(e[0].1.contains("use letters, digits"), "{bad}: {e:?}");
        }
        assert!(convert(Kind::DataDir, &y("/srv/pg-17/data_1.x+y")).is_ok());
        for good in [
            "pgha-stack:0123abcd",
            "10.9.0.21:5050/pgha/stack:v1.2-rc_1",
            "registry.example/pgha@sha256:0123456789abcdef",
        ] {
            assert!(convert(Kind::Image, &y(good)).is_ok(), "{good}");
        }
        for bad in [
            "pgha;id",
            "pgha:$(id)",
            "pgha`id`",
            "pgha|cat",
            "--privileged",
            "a b",
            "pgha@sha256:xyz",
            "x//y",
        ] {
            assert!(
                convert(Kind::Image, &y(&format!("\"{bad}\""))).is_err(),
                "{bad}"
            );
        }
        assert!(convert(Kind::Secret, &y("12345")).is_err());
        assert!(convert(Kind::Secret, &y("!vault |\n  $ANSIBLE_VAULT;1.1")).is_err());
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("superuser_password"));
        assert!(is_secret_name("ansible_ssh_pass"));
        assert!(is_secret_name("api_token"));
        assert!(!is_secret_name("superuser_password_file"));
        assert!(!is_secret_name("cluster_name"));
    }
}
