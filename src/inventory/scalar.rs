//! The building blocks of value checking shared by `convert` (one variable's
//! value) and `objects` (the items of postgresql_users/postgresql_databases):
//! each error says what to write instead.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value as Json, json};
use yaml_serde::Value as Yaml;

use super::locate::Seg;
use super::vars::describe;

/// A conversion error: where below the key (for list items) and what is wrong.
pub(crate) type ConvError = (Vec<Seg>, String);

pub(crate) fn err(msg: impl Into<String>) -> Vec<ConvError> {
    vec![(Vec::new(), msg.into())]
}

pub(crate) fn integer(v: &Yaml, allow_digit_string: bool) -> Result<i128, Vec<ConvError>> {
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

/// true/false, also yes/no and on/off as Ansible writes them.
pub(crate) fn boolean(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    match v {
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
    }
}

/// A PostgreSQL role or database name pgha creates.
pub(crate) fn pg_name(v: &Yaml) -> Result<Json, Vec<ConvError>> {
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

/// A list of networks.
pub(crate) fn cidrs(v: &Yaml) -> Result<Json, Vec<ConvError>> {
    each_item(v, |item| match item {
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
    })
}

pub(crate) fn string(v: &Yaml) -> Result<String, Vec<ConvError>> {
    match v {
        Yaml::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(err(format!("expected a string, found {}", describe(v)))),
    }
}

pub(crate) fn each_item(
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

pub(crate) fn list(v: &Yaml) -> Result<Vec<Yaml>, Vec<ConvError>> {
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

/// A whole number within [min, max].
pub(crate) fn int_in(v: &Yaml, min: u64, max: u64) -> Result<Json, Vec<ConvError>> {
    let n = integer(v, false)?;
    if n < min as i128 || n > max as i128 {
        return Err(err(format!(
            "{n} is out of range: use a whole number from {min} to {max}"
        )));
    }
    Ok(json!(n as u64))
}
