//! Checking and normalising a variable's value against its kind (`vars::Kind`):
//! one function per kind, each error saying what to write instead.

use std::net::IpAddr;

use serde_json::{Map, Value as Json, json};
use yaml_serde::Value as Yaml;

use super::locate::Seg;
use super::scalar::*;
use super::vars::{Kind, describe};

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
        Kind::Port => port(v),
        Kind::Int { min, max } => int_in(v, min, max),
        Kind::Bool => boolean(v),
        Kind::ClusterName => cluster_name(v),
        Kind::Role => pg_name(v),
        Kind::User => user_name(v),
        Kind::Address => address(v),
        Kind::Duration => haproxy_time(v),
        Kind::DataDir => data_dir_value(v),
        Kind::LocalPath => local_path(v),
        Kind::ImageSource => image_source(v),
        Kind::Text => text(v),
        Kind::Image => image(v),
        Kind::InstallMethod => install_method(v),
        Kind::Secret => secret(v),
        Kind::Cidrs => cidrs(v),
        Kind::Registries => registries(v),
        Kind::Urls => urls(v),
        Kind::AptSources => apt_sources(v),
        Kind::AptPins => each_item(v, pin),
        Kind::Params => params(v),
        Kind::Users => super::objects::users(v),
        Kind::Databases => super::objects::databases(v),
        Kind::OneOf(words) => one_of(v, words),
        Kind::Calendar => calendar(v),
        Kind::Size => size(v),
    }
}

/// One word of `words`.
fn one_of(v: &Yaml, words: &[&str]) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    if words.contains(&s.as_str()) {
        Ok(json!(s))
    } else {
        Err(err(format!(
            "\"{s}\" is not one of {}: use one of them",
            words.join(", ")
        )))
    }
}

/// A systemd calendar event as `OnCalendar=` takes it, or empty (none).
fn calendar(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = match v {
        Yaml::Null => return Ok(json!("")),
        Yaml::String(s) if s.trim().is_empty() => return Ok(json!("")),
        _ => string(v)?,
    };
    super::calendar::Calendar::parse(&s).map_err(|e| {
        err(format!(
            "not a systemd calendar event: {e} (e.g. \"Sun *-*-* 01:00:00\" or \"daily\"; \
             `systemd-analyze calendar '...'` checks one; empty for none)"
        ))
    })?;
    Ok(json!(s.trim()))
}

/// A size as pgBackRest writes it: a number of bytes with an optional unit
/// (KB, MB, GB, TB, PB, or KiB, MiB, ... which pgBackRest reads as the same powers of 1024).
pub(crate) fn size_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let exp = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 2,
        "g" | "gb" | "gib" => 3,
        "t" | "tb" | "tib" => 4,
        "p" | "pb" | "pib" => 5,
        _ => return None,
    };
    n.checked_mul(1024u64.checked_pow(exp)?)
}

fn size(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = match v {
        Yaml::Number(n) => n.to_string(),
        _ => string(v)?,
    };
    match size_bytes(&s) {
        Some(_) => Ok(json!(s.trim())),
        None => Err(err(format!(
            "\"{s}\" is not a size: write a number of bytes with a unit, e.g. 4GiB or 512MiB"
        ))),
    }
}

/// A TCP port, 1 to 65535.
fn port(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let n = integer(v, true)?;
    match n {
        0 => Err(err("port 0 is not usable: use a port from 1 to 65535")),
        1..=65535 => Ok(json!(n)),
        _ => Err(err(format!(
            "port {n} is out of range: use a port from 1 to 65535"
        ))),
    }
}

/// A cluster name: also an etcd prefix and a directory name.
fn cluster_name(v: &Yaml) -> Result<Json, Vec<ConvError>> {
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

/// A Unix user name.
fn user_name(v: &Yaml) -> Result<Json, Vec<ConvError>> {
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

/// An IP address or a DNS name.
fn address(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    if s.parse::<IpAddr>().is_ok() || is_dns_name(&s) {
        Ok(json!(s))
    } else {
        Err(err(format!("\"{s}\" is not an IP address or DNS name")))
    }
}

/// An HAProxy time: a number with a unit (500ms, 4s, 30m).
fn haproxy_time(v: &Yaml) -> Result<Json, Vec<ConvError>> {
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

/// A directory pgha may wipe as root (see `data_dir`).
fn data_dir_value(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    data_dir(&s).map_err(|why| {
        err(format!(
            "\"{s}\" {why}: pgha wipes this directory as root when it rebuilds a member; \
             use a dedicated directory such as /var/lib/postgresql/17/main or /srv/pg/data"
        ))
    })?;
    Ok(json!(s))
}

/// A path on this machine.
fn local_path(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    if s.chars().any(|c| c.is_control()) {
        return Err(err("the path contains control characters"));
    }
    Ok(json!(s))
}

/// How images reach the hosts.
fn image_source(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    match s.as_str() {
        "push" | "registry" => Ok(json!(s)),
        _ => Err(err(format!(
            "\"{s}\" is not an image source: use push (pgha copies images from this machine) or registry (hosts pull them)"
        ))),
    }
}

/// One word of free text.
fn text(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err("the value contains spaces or control characters"));
    }
    Ok(json!(s))
}

/// An image reference.
fn image(v: &Yaml) -> Result<Json, Vec<ConvError>> {
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

/// native or docker.
fn install_method(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let s = string(v)?;
    match s.as_str() {
        "native" | "docker" => Ok(json!(s)),
        _ => Err(err(format!(
            "\"{s}\" is not an install method: use native or docker"
        ))),
    }
}

/// A password (kept as written).
fn secret(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    match v {
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
    }
}

/// A list of registries as host:port.
fn registries(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    each_item(v, |item| match item {
        Yaml::String(s) if is_registry(s) => Ok(json!(s)),
        Yaml::String(s) => Err(err(format!(
            "\"{s}\" is not a registry: write its host and port, like 10.0.0.5:5000 or \
         registry.internal:5000 (no scheme, no path)"
        ))),
        other => Err(err(format!(
            "expected a registry host:port string, found {}",
            describe(other)
        ))),
    })
}

/// A list of webhook URLs: they reach Alertmanager's configuration as YAML strings.
fn urls(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    each_item(v, |item| match item {
        Yaml::String(s)
            if (s.starts_with("http://") || s.starts_with("https://"))
                && s.len() > "https://".len()
                && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(json!(s))
        }
        Yaml::String(s) => Err(err(format!(
            "\"{s}\" is not a URL: write one like http://10.0.0.9:8080/alerts (http:// or https://, no spaces)"
        ))),
        other => Err(err(format!(
            "expected a URL string, found {}",
            describe(other)
        ))),
    })
}

/// A list of sources.list lines.
fn apt_sources(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    each_item(v, |item| match item {
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
    })
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
#[path = "convert_tests.rs"]
mod tests;
