//! `postgresql_users` and `postgresql_databases`: each item checked field by
//! field (an error names the item and the key) and normalised to the JSON form of
//! `model::PgUser` / `model::PgDatabase`.

use serde_json::{Map, Value as Json, json};
use yaml_serde::Value as Yaml;

use super::locate::Seg;
use super::scalar::{ConvError, boolean, cidrs, each_item, err, integer, list, pg_name, string};
use super::vars::describe;

/// Role attributes besides LOGIN, as written in `attributes:`.
pub const ATTRIBUTES: [&str; 6] = [
    "superuser",
    "createdb",
    "createrole",
    "replication",
    "bypassrls",
    "noinherit",
];

const USER_KEYS: &str = "name, login, attributes (or flags), member_of, cidrs, password_file \
     (or password), connection_limit, state";
const DATABASE_KEYS: &str =
    "name (or db), owner, encoding, locale (or lc_collate and lc_ctype), extensions, cidrs, state";

/// An item as a mapping; a bare string is `{name: it}`.
fn mapping(v: &Yaml, what: &str) -> Result<Vec<(String, Yaml)>, Vec<ConvError>> {
    match v {
        Yaml::String(_) => Ok(vec![("name".into(), v.clone())]),
        Yaml::Mapping(m) => Ok(m
            .iter()
            .map(|(k, v)| (k.as_str().unwrap_or("").to_string(), v.clone()))
            .collect()),
        other => Err(err(format!(
            "expected a {what} (`- name: ...` with its settings), found {}",
            describe(other)
        ))),
    }
}

fn state(v: &Yaml) -> Result<bool, Vec<ConvError>> {
    match string(v)?.as_str() {
        "present" => Ok(false),
        "absent" => Ok(true),
        s => Err(err(format!(
            "\"{s}\" is not a state: use present or absent"
        ))),
    }
}

fn names(v: &Yaml) -> Result<Vec<String>, Vec<ConvError>> {
    let j = each_item(v, pg_name)?;
    Ok(j.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Collect a field's result, its errors placed under the field's key.
fn field<T>(key: &str, r: Result<T, Vec<ConvError>>, errors: &mut Vec<ConvError>) -> Option<T> {
    match r {
        Ok(x) => Some(x),
        Err(es) => {
            errors.extend(es.into_iter().map(|(mut at, m)| {
                at.insert(0, Seg::key(key));
                (at, m)
            }));
            None
        }
    }
}

fn user(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let mut errors = Vec::new();
    let mut out = json!({
        "name": null, "login": true, "attributes": [], "member_of": [], "cidrs": [],
        "password_file": null, "connection_limit": -1, "absent": false,
    });
    for (key, val) in mapping(v, "role")? {
        let e = &mut errors;
        match key.as_str() {
            "name" => out["name"] = field(&key, pg_name(&val), e).unwrap_or(Json::Null),
            "login" => out["login"] = field(&key, boolean(&val), e).unwrap_or(json!(true)),
            "attributes" => {
                let r = list(&val).and_then(|items| {
                    let mut words = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let w = item.as_str().map(|s| s.trim().to_ascii_lowercase());
                        match w {
                            Some(w) if ATTRIBUTES.contains(&w.as_str()) => words.push(w),
                            Some(w) if w == "login" || w == "nologin" => {
                                return Err(vec![(
                                    vec![Seg::Index(i)],
                                    "LOGIN is not an attribute here: write `login: true` or `login: false`"
                                        .to_string(),
                                )]);
                            }
                            _ => {
                                return Err(vec![(
                                    vec![Seg::Index(i)],
                                    format!(
                                        "{} is not a role attribute: use {}",
                                        describe(item),
                                        ATTRIBUTES.join(", ")
                                    ),
                                )]);
                            }
                        }
                    }
                    words.sort();
                    words.dedup();
                    Ok(words)
                });
                if let Some(w) = field(&key, r, e) {
                    out["attributes"] = json!(w);
                }
            }
            "member_of" => {
                if let Some(n) = field(&key, names(&val), e) {
                    out["member_of"] = json!(n);
                }
            }
            "cidrs" => {
                if let Some(c) = field(&key, cidrs(&val), e) {
                    out["cidrs"] = c;
                }
            }
            "password_file" => {
                if let Some(p) = field(&key, string(&val), e) {
                    out["password_file"] = json!(p);
                }
            }
            // Inline as autobase writes it; kept out of the role's model (only the
            // secrets hold it) and redacted wherever the inventory is printed.
            "password" => {
                if let Some(p) = field(&key, string(&val), e) {
                    out["password"] = json!(p);
                }
            }
            // autobase's `flags: "LOGIN,CREATEDB"` (or NOLOGIN, SUPERUSER...).
            "flags" => {
                let r = string(&val).and_then(|s| {
                    let mut login = true;
                    let mut words = Vec::new();
                    for w in s.split([',', ' ']).filter(|w| !w.is_empty()) {
                        match w.to_ascii_lowercase().as_str() {
                            "login" => login = true,
                            "nologin" => login = false,
                            "inherit" => {}
                            a if ATTRIBUTES.contains(&a) => words.push(a.to_string()),
                            _ => {
                                return Err(err(format!(
                                    "`{w}` is not a role flag: use LOGIN, NOLOGIN or {}",
                                    ATTRIBUTES.map(str::to_ascii_uppercase).join(", ")
                                )));
                            }
                        }
                    }
                    Ok((login, words))
                });
                if let Some((login, words)) = field(&key, r, e) {
                    out["login"] = json!(login);
                    let mut all: Vec<String> =
                        serde_json::from_value(out["attributes"].clone()).unwrap_or_default();
                    all.extend(words);
                    all.sort();
                    all.dedup();
                    out["attributes"] = json!(all);
                }
            }
            "connection_limit" => {
                let r = integer(&val, true).and_then(|n| {
                    if (-1..=i32::MAX as i128).contains(&n) {
                        Ok(n as i64)
                    } else {
                        Err(err(format!(
                            "{n} is out of range: use -1 (no limit) or a number of connections"
                        )))
                    }
                });
                if let Some(n) = field(&key, r, e) {
                    out["connection_limit"] = json!(n);
                }
            }
            "state" => {
                if let Some(a) = field(&key, state(&val), e) {
                    out["absent"] = json!(a);
                }
            }
            other => e.push((
                vec![Seg::key(other)],
                format!("unknown key `{other}` in a role: use {USER_KEYS}"),
            )),
        }
    }
    if out["name"].is_null() && errors.is_empty() {
        errors.push((Vec::new(), "the role has no `name`".to_string()));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn extension(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let mut errors = Vec::new();
    let mut name = None;
    let mut absent = false;
    for (key, val) in mapping(v, "extension")? {
        match key.as_str() {
            "name" => {
                let r = string(&val).and_then(|s| {
                    let ok = !s.is_empty()
                        && s.len() <= 63
                        && s.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
                    if ok {
                        Ok(s)
                    } else {
                        Err(err(format!(
                            "\"{s}\" is not an extension name (lowercase letters, digits, `_` and `-`)"
                        )))
                    }
                });
                name = field(&key, r, &mut errors);
            }
            "state" => absent = field(&key, state(&val), &mut errors).unwrap_or(false),
            other => errors.push((
                vec![Seg::key(other)],
                format!("unknown key `{other}` in an extension: use name and state"),
            )),
        }
    }
    match name {
        Some(n) if errors.is_empty() => Ok(json!({"name": n, "absent": absent})),
        None if errors.is_empty() => Err(err("the extension has no `name`")),
        _ => Err(errors),
    }
}

fn database(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    let mut errors = Vec::new();
    let mut out = Map::new();
    out.insert("name".into(), Json::Null);
    out.insert("owner".into(), Json::Null);
    out.insert("encoding".into(), Json::Null);
    out.insert("locale".into(), Json::Null);
    out.insert("extensions".into(), json!([]));
    out.insert("cidrs".into(), json!([]));
    out.insert("absent".into(), json!(false));
    for (key, val) in mapping(v, "database")? {
        let e = &mut errors;
        match key.as_str() {
            "name" | "db" => {
                if let Some(n) = field(&key, pg_name(&val), e) {
                    out.insert("name".into(), n);
                }
            }
            // autobase's pair; PostgreSQL's LOCALE sets both, so they must agree.
            "lc_collate" | "lc_ctype" => {
                let r = string(&val);
                if let Some(x) = field(&key, r, e) {
                    match out.get("locale").and_then(Json::as_str) {
                        Some(other) if other != x => e.push((
                            vec![Seg::key(&key)],
                            format!(
                                "lc_collate and lc_ctype differ ({other}, {x}): pgha sets one locale for both; make them equal"
                            ),
                        )),
                        _ => {
                            out.insert("locale".into(), json!(x));
                        }
                    }
                }
            }
            "owner" => {
                if let Some(n) = field(&key, pg_name(&val), e) {
                    out.insert(key, n);
                }
            }
            "encoding" => {
                let r = string(&val).and_then(|s| {
                    let canon = s.to_ascii_uppercase().replace('-', "");
                    if !canon.is_empty()
                        && canon.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        Ok(canon)
                    } else {
                        Err(err(format!("\"{s}\" is not an encoding name (e.g. UTF8)")))
                    }
                });
                if let Some(x) = field(&key, r, e) {
                    out.insert(key, json!(x));
                }
            }
            "locale" => {
                let r = string(&val).and_then(|s| {
                    if s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
                    {
                        Ok(s)
                    } else {
                        Err(err(format!(
                            "\"{s}\" is not a locale name (e.g. C.UTF-8 or en_US.UTF-8)"
                        )))
                    }
                });
                if let Some(x) = field(&key, r, e) {
                    out.insert(key, json!(x));
                }
            }
            "extensions" => {
                if let Some(x) = field(&key, each_item(&val, extension), e) {
                    out.insert(key, x);
                }
            }
            "cidrs" => {
                if let Some(x) = field(&key, cidrs(&val), e) {
                    out.insert(key, x);
                }
            }
            "state" => {
                if let Some(a) = field(&key, state(&val), e) {
                    out.insert("absent".into(), json!(a));
                }
            }
            other => e.push((
                vec![Seg::key(other)],
                format!("unknown key `{other}` in a database: use {DATABASE_KEYS}"),
            )),
        }
    }
    if out["name"].is_null() && errors.is_empty() {
        errors.push((Vec::new(), "the database has no `name`".to_string()));
    }
    if errors.is_empty() {
        Ok(Json::Object(out))
    } else {
        Err(errors)
    }
}

pub(super) fn users(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    each_item(v, user)
}

pub(super) fn databases(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    each_item(v, database)
}

/// Debian's package for an extension that is not in PostgreSQL's own contrib
/// (which comes with the server package), for PostgreSQL `version`. None: contrib,
/// or an extension pgha does not know (its package is the user's to install,
/// e.g. with apt_sources; CREATE EXTENSION names it when it is missing).
pub fn extension_package(name: &str, version: u32) -> Option<String> {
    let suffix = match name {
        "vector" => "pgvector",
        "postgis"
        | "postgis_raster"
        | "postgis_topology"
        | "postgis_tiger_geocoder"
        | "postgis_sfcgal"
        | "address_standardizer"
        | "address_standardizer_data_us" => "postgis-3",
        "pgrouting" => "pgrouting",
        "pg_cron" => "cron",
        "pgaudit" => "pgaudit",
        "pg_repack" => "repack",
        "hypopg" => "hypopg",
        "pg_partman" => "partman",
        "orafce" => "orafce",
        "ip4r" => "ip4r",
        "pglogical" => "pglogical",
        "rum" => "rum",
        "pgtap" => "pgtap",
        "plpython3u" => return Some(format!("postgresql-plpython3-{version}")),
        "plperl" | "plperlu" => return Some(format!("postgresql-plperl-{version}")),
        "pltcl" | "pltclu" => return Some(format!("postgresql-pltcl-{version}")),
        _ => return None,
    };
    Some(format!("postgresql-{version}-{suffix}"))
}

/// The packages every db host needs for the extensions the inventory lists
/// (absent ones too: dropping an extension needs its files), sorted, once each.
pub fn extension_packages(c: &super::Cluster) -> Vec<String> {
    let mut out: Vec<String> = c
        .postgresql_databases
        .iter()
        .flat_map(|d| d.extensions.iter())
        .filter_map(|e| extension_package(&e.name, c.postgresql_version))
        .collect();
    out.sort();
    out.dedup();
    out
}
