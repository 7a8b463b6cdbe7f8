//! Roles, databases and extensions on the primary: what differs from the
//! inventory (pgha's monitor and app roles, `postgresql_users`,
//! `postgresql_databases`), the refusals that must stop a deploy before any
//! change, and the SQL that converges them. Pure: facts in, changes out.

use std::collections::BTreeSet;
use std::fmt;

use super::facts::{RoleFact, SqlFacts};
use super::scram;
use crate::inventory::{Cluster, PgUser, Secrets};

/// A change to roles or databases on the primary, in the order it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlChange {
    /// pgha's monitor or app role: create or alter it so its password matches.
    LoginRole {
        name: String,
        create: bool,
    },
    GrantMonitor {
        name: String,
    },
    /// PgBouncer's password lookup (auth_query) for its auth user: created or
    /// replaced when missing or of another version.
    PoolerLookup {
        user: String,
    },
    /// A `postgresql_users` role, created with everything the inventory says.
    CreateRole {
        name: String,
    },
    /// A `postgresql_users` role altered to match; `what` names what differed.
    AlterRole {
        name: String,
        what: Vec<&'static str>,
    },
    Grant {
        role: String,
        to: String,
    },
    Revoke {
        role: String,
        from: String,
    },
    CreateDatabase {
        name: String,
        owner: String,
        encoding: Option<String>,
        locale: Option<String>,
    },
    AlterOwner {
        database: String,
        owner: String,
    },
    CreateExtension {
        database: String,
        name: String,
    },
    DropExtension {
        database: String,
        name: String,
    },
    DropDatabase {
        name: String,
    },
    DropRole {
        name: String,
    },
}

impl fmt::Display for SqlChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlChange::LoginRole { name, create: true } => write!(f, "create role {name}"),
            SqlChange::LoginRole {
                name,
                create: false,
            } => write!(f, "set password/login of role {name}"),
            SqlChange::GrantMonitor { name } => write!(f, "grant pg_monitor to {name}"),
            SqlChange::PoolerLookup { user } => {
                write!(f, "create PgBouncer's password lookup for {user}")
            }
            SqlChange::CreateRole { name } => write!(f, "create role {name}"),
            SqlChange::AlterRole { name, what } => {
                write!(f, "alter role {name} ({})", what.join(", "))
            }
            SqlChange::Grant { role, to } => write!(f, "grant {role} to {to}"),
            SqlChange::Revoke { role, from } => write!(f, "revoke {role} from {from}"),
            SqlChange::CreateDatabase { name, owner, .. } => {
                write!(f, "create database {name} owned by {owner}")
            }
            SqlChange::AlterOwner { database, owner } => {
                write!(f, "set the owner of database {database} to {owner}")
            }
            SqlChange::CreateExtension { database, name } => {
                write!(f, "create extension {name} in database {database}")
            }
            SqlChange::DropExtension { database, name } => {
                write!(f, "drop extension {name} from database {database}")
            }
            SqlChange::DropDatabase { name } => write!(f, "drop database {name}"),
            SqlChange::DropRole { name } => write!(f, "drop role {name}"),
        }
    }
}

/// A change the inventory asks for that PostgreSQL cannot or must not make; the
/// deploy stops before any change. `list`/`name` locate it in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub list: &'static str,
    pub name: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`: {}", self.list, self.name, self.reason)
    }
}

/// The attribute words of a role as the inventory says them (sorted).
fn attributes(u: &PgUser) -> Vec<String> {
    let mut a = u.attributes.clone();
    a.sort();
    a
}

/// What differs between a role and its inventory entry.
fn role_differs(u: &PgUser, have: &RoleFact, password: &str) -> Vec<&'static str> {
    let mut what = Vec::new();
    if have.can_login != u.login {
        what.push("login");
    }
    if have.attributes != attributes(u) {
        what.push("attributes");
    }
    if have.connection_limit != u.connection_limit {
        what.push("connection limit");
    }
    if u.login && !scram::matches(&have.verifier, password) {
        what.push("password");
    }
    what
}

/// Same locale names as PostgreSQL spells them (`C.UTF-8` is `C.utf8`).
fn same_locale(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
    norm(a) == norm(b)
}

/// The changes that bring the primary to the inventory, or every refusal.
// Long by design: pgha's roles, then the user's roles, memberships, databases,
// extensions and drops, each a few lines, in the order they are applied.
pub fn plan_sql(
    c: &Cluster,
    secrets: &Secrets,
    have: &SqlFacts,
) -> Result<Vec<SqlChange>, Vec<Refusal>> {
    let mut out = Vec::new();
    let mut refusals = Vec::new();
    let mut wanted = vec![
        (&c.monitor_user, secrets.monitor_password.expose()),
        (&c.app_user, secrets.app_password.expose()),
    ];
    if c.pgbouncer_enabled {
        wanted.push((
            &c.pgbouncer_auth_user,
            secrets.pgbouncer_auth_password.expose(),
        ));
    }
    for (name, password) in wanted {
        match have.roles.get(name.as_str()) {
            None => out.push(SqlChange::LoginRole {
                name: name.clone(),
                create: true,
            }),
            Some(r) if !r.can_login || !scram::matches(&r.verifier, password) => {
                out.push(SqlChange::LoginRole {
                    name: name.clone(),
                    create: false,
                })
            }
            Some(_) => {}
        }
    }
    if !have
        .roles
        .get(&c.monitor_user)
        .is_some_and(|r| r.pg_monitor)
    {
        out.push(SqlChange::GrantMonitor {
            name: c.monitor_user.clone(),
        });
    }
    if c.pgbouncer_enabled && have.pooler_lookup.as_deref() != Some(POOLER_LOOKUP_VERSION) {
        out.push(SqlChange::PoolerLookup {
            user: c.pgbouncer_auth_user.clone(),
        });
    }
    let present: Vec<&PgUser> = c.postgresql_users.iter().filter(|u| !u.absent).collect();
    // Roles that exist once the run's creations are done.
    let will_exist = |r: &str| {
        have.roles.contains_key(r)
            || present.iter().any(|u| u.name == r)
            || [&c.superuser_name, &c.app_user, &c.monitor_user].contains(&&r.to_string())
    };
    for u in &present {
        let password = secrets.users.get(&u.name).map(|s| s.expose()).unwrap_or("");
        match have.roles.get(&u.name) {
            None => out.push(SqlChange::CreateRole {
                name: u.name.clone(),
            }),
            Some(r) => {
                let what = role_differs(u, r, password);
                if !what.is_empty() {
                    out.push(SqlChange::AlterRole {
                        name: u.name.clone(),
                        what,
                    });
                }
            }
        }
    }
    for u in &present {
        let had: BTreeSet<&str> = have
            .roles
            .get(&u.name)
            .map(|r| r.member_of.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for m in &u.member_of {
            if !will_exist(m) {
                refusals.push(Refusal {
                    list: "postgresql_users",
                    name: u.name.clone(),
                    reason: format!(
                        "member_of names role `{m}`, which does not exist: add it to postgresql_users or create it first"
                    ),
                });
            } else if !had.contains(m.as_str()) {
                out.push(SqlChange::Grant {
                    role: m.clone(),
                    to: u.name.clone(),
                });
            }
        }
        for m in had {
            if !u.member_of.iter().any(|x| x == m) {
                out.push(SqlChange::Revoke {
                    role: m.to_string(),
                    from: u.name.clone(),
                });
            }
        }
    }
    if !have.databases.contains_key(&c.app_database) {
        out.push(SqlChange::CreateDatabase {
            name: c.app_database.clone(),
            owner: c.app_user.clone(),
            encoding: None,
            locale: None,
        });
    }
    let mut extensions = Vec::new();
    for d in c.postgresql_databases.iter().filter(|d| !d.absent) {
        let owner = d.owner.clone().unwrap_or_else(|| c.superuser_name.clone());
        if !will_exist(&owner) {
            refusals.push(Refusal {
                list: "postgresql_databases",
                name: d.name.clone(),
                reason: format!(
                    "its owner `{owner}` does not exist: add it to postgresql_users or create it first"
                ),
            });
            continue;
        }
        match have.databases.get(&d.name) {
            None => out.push(SqlChange::CreateDatabase {
                name: d.name.clone(),
                owner,
                encoding: d.encoding.clone(),
                locale: d.locale.clone(),
            }),
            Some(h) => {
                if let Some(e) = d
                    .encoding
                    .as_ref()
                    .filter(|e| !e.eq_ignore_ascii_case(&h.encoding))
                {
                    refusals.push(Refusal {
                        list: "postgresql_databases",
                        name: d.name.clone(),
                        reason: format!(
                            "it exists with encoding {} and PostgreSQL cannot change a database's encoding \
                             (the inventory says {e}): dump and restore it into a new database, or write encoding: {}",
                            h.encoding, h.encoding
                        ),
                    });
                }
                if let Some(l) = d
                    .locale
                    .as_ref()
                    .filter(|l| !same_locale(l, &h.collate) || !same_locale(l, &h.ctype))
                {
                    refusals.push(Refusal {
                        list: "postgresql_databases",
                        name: d.name.clone(),
                        reason: format!(
                            "it exists with locale {} (ctype {}) and PostgreSQL cannot change a database's \
                             locale (the inventory says {l}): dump and restore it into a new database, or write locale: {}",
                            h.collate, h.ctype, h.collate
                        ),
                    });
                }
                if h.owner != owner {
                    out.push(SqlChange::AlterOwner {
                        database: d.name.clone(),
                        owner,
                    });
                }
            }
        }
        let had = have.databases.get(&d.name).map(|h| &h.extensions);
        for e in &d.extensions {
            let there = had.is_some_and(|x| x.contains(&e.name));
            if !e.absent && !there {
                extensions.push(SqlChange::CreateExtension {
                    database: d.name.clone(),
                    name: e.name.clone(),
                });
            } else if e.absent && there {
                extensions.push(SqlChange::DropExtension {
                    database: d.name.clone(),
                    name: e.name.clone(),
                });
            }
        }
    }
    out.extend(extensions);
    for d in c.postgresql_databases.iter().filter(|d| d.absent) {
        if let Some(h) = have.databases.get(&d.name) {
            if h.connections > 0 {
                refusals.push(Refusal {
                    list: "postgresql_databases",
                    name: d.name.clone(),
                    reason: format!(
                        "marked absent but {} session(s) are connected to it: stop its clients \
                         (or end them with pg_terminate_backend) and deploy again",
                        h.connections
                    ),
                });
            } else {
                out.push(SqlChange::DropDatabase {
                    name: d.name.clone(),
                });
            }
        }
    }
    for u in c.postgresql_users.iter().filter(|u| u.absent) {
        if have.roles.contains_key(&u.name) {
            out.push(SqlChange::DropRole {
                name: u.name.clone(),
            });
        }
    }
    if refusals.is_empty() {
        Ok(out)
    } else {
        Err(refusals)
    }
}

/// The version of PgBouncer's password lookup, kept as the function's comment:
/// a new definition gets a new version, and every deploy replaces an older one.
pub const POOLER_LOOKUP_VERSION: &str = "pgha pgbouncer lookup v1";

/// PgBouncer's `auth_query` function, in `postgres` (its `auth_dbname`): the
/// SCRAM verifier of a role that may log in and whose password has not expired
/// (CVE-2025-2291), never a superuser's (they connect directly); owned by the
/// superuser and run with its rights (SECURITY DEFINER) with a fixed search_path,
/// executable by PgBouncer's auth user alone.
fn pooler_lookup_sql(user: &str) -> String {
    let u = ident(user);
    format!(
        "BEGIN;\n\
         CREATE SCHEMA IF NOT EXISTS pgha;\n\
         REVOKE ALL ON SCHEMA pgha FROM PUBLIC;\n\
         GRANT USAGE ON SCHEMA pgha TO {u};\n\
         CREATE OR REPLACE FUNCTION pgha.pgbouncer_lookup(p_user text, OUT usename text, OUT passwd text)\n\
         RETURNS record LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgha$\n\
         SELECT a.rolname::text, a.rolpassword::text FROM pg_catalog.pg_authid a\n\
         WHERE a.rolname = p_user AND a.rolcanlogin AND NOT a.rolsuper\n\
         AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())\n\
         $pgha$;\n\
         REVOKE ALL ON FUNCTION pgha.pgbouncer_lookup(text) FROM PUBLIC;\n\
         GRANT EXECUTE ON FUNCTION pgha.pgbouncer_lookup(text) TO {u};\n\
         COMMENT ON FUNCTION pgha.pgbouncer_lookup(text) IS {};\n\
         COMMIT;",
        literal(POOLER_LOOKUP_VERSION)
    )
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A role's options as the inventory says them: every attribute spelled out,
/// so CREATE and ALTER leave nothing to PostgreSQL's defaults.
fn role_options(u: &PgUser, password: &str) -> String {
    let on = |a: &str| u.attributes.iter().any(|x| x == a);
    let flag = |a: &str, word: &str| {
        if on(a) {
            word.to_string()
        } else {
            format!("NO{word}")
        }
    };
    let mut o = vec![
        if u.login { "LOGIN" } else { "NOLOGIN" }.to_string(),
        flag("superuser", "SUPERUSER"),
        flag("createdb", "CREATEDB"),
        flag("createrole", "CREATEROLE"),
        flag("replication", "REPLICATION"),
        flag("bypassrls", "BYPASSRLS"),
        if on("noinherit") {
            "NOINHERIT"
        } else {
            "INHERIT"
        }
        .to_string(),
        format!("CONNECTION LIMIT {}", u.connection_limit),
    ];
    if u.login {
        o.push(format!("PASSWORD {}", literal(&scram::verifier(password))));
    }
    o.join(" ")
}

/// SQL for the changes, as one psql script run on the primary with
/// ON_ERROR_STOP (psql meta-commands switch databases for extensions).
/// Passwords are sent as SCRAM verifiers, never in plain text.
pub fn sql_statements(c: &Cluster, secrets: &Secrets, changes: &[SqlChange]) -> Vec<String> {
    let user = |name: &str| c.postgresql_users.iter().find(|u| u.name == name);
    let password = |name: &str| secrets.users.get(name).map(|s| s.expose()).unwrap_or("");
    let mut out = Vec::new();
    let mut connected: Option<&str> = None;
    for ch in changes {
        // Extensions live in their database; everything else from `postgres`.
        let want_db = match ch {
            SqlChange::CreateExtension { database, .. }
            | SqlChange::DropExtension { database, .. } => Some(database.as_str()),
            _ => None,
        };
        if want_db != connected {
            out.push(format!(
                "\\connect {}",
                ident(want_db.unwrap_or("postgres"))
            ));
            connected = want_db;
        }
        out.push(match ch {
            SqlChange::LoginRole { name, create } => {
                let pw = if *name == c.monitor_user {
                    secrets.monitor_password.expose()
                } else if *name == c.pgbouncer_auth_user {
                    secrets.pgbouncer_auth_password.expose()
                } else {
                    secrets.app_password.expose()
                };
                let verb = if *create { "CREATE" } else { "ALTER" };
                format!(
                    "{verb} ROLE {} WITH LOGIN PASSWORD {};",
                    ident(name),
                    literal(&scram::verifier(pw))
                )
            }
            SqlChange::GrantMonitor { name } => format!("GRANT pg_monitor TO {};", ident(name)),
            SqlChange::PoolerLookup { user } => pooler_lookup_sql(user),
            SqlChange::CreateRole { name } | SqlChange::AlterRole { name, .. } => {
                let verb = if matches!(ch, SqlChange::CreateRole { .. }) {
                    "CREATE"
                } else {
                    "ALTER"
                };
                match user(name) {
                    Some(u) => format!(
                        "{verb} ROLE {} WITH {};",
                        ident(name),
                        role_options(u, password(name))
                    ),
                    None => continue,
                }
            }
            SqlChange::Grant { role, to } => format!("GRANT {} TO {};", ident(role), ident(to)),
            SqlChange::Revoke { role, from } => {
                format!("REVOKE {} FROM {};", ident(role), ident(from))
            }
            SqlChange::CreateDatabase {
                name,
                owner,
                encoding,
                locale,
            } => {
                let mut s = format!("CREATE DATABASE {} OWNER {}", ident(name), ident(owner));
                if encoding.is_some() || locale.is_some() {
                    // template1 may hold another encoding or locale.
                    s.push_str(" TEMPLATE template0");
                }
                if let Some(e) = encoding {
                    s.push_str(&format!(" ENCODING {}", literal(e)));
                }
                if let Some(l) = locale {
                    s.push_str(&format!(" LOCALE {}", literal(l)));
                }
                s.push(';');
                s
            }
            SqlChange::AlterOwner { database, owner } => {
                format!(
                    "ALTER DATABASE {} OWNER TO {};",
                    ident(database),
                    ident(owner)
                )
            }
            SqlChange::CreateExtension { name, .. } => {
                format!("CREATE EXTENSION IF NOT EXISTS {} CASCADE;", ident(name))
            }
            SqlChange::DropExtension { name, .. } => {
                format!("DROP EXTENSION IF EXISTS {};", ident(name))
            }
            SqlChange::DropDatabase { name } => format!("DROP DATABASE {};", ident(name)),
            SqlChange::DropRole { name } => format!("DROP ROLE {};", ident(name)),
        });
    }
    // The script starts in `postgres`: a first \connect there is no change.
    if out.first().is_some_and(|s| s == "\\connect \"postgres\"") {
        out.remove(0);
    }
    out
}

/// The line of `name`'s entry in the inventory's `list` (`- name: x` or `- x`).
pub fn line_of(text: &str, list: &str, name: &str) -> Option<usize> {
    let mut inside: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if t.starts_with(&format!("{list}:")) {
            inside = Some(indent);
            continue;
        }
        if let Some(at) = inside {
            if !t.is_empty() && !t.starts_with('-') && indent <= at {
                inside = None;
                continue;
            }
            let item = t.trim_start_matches('-').trim();
            // `name: x`, `db: x` (autobase), `{name: x, ...}` or a bare `- x`.
            let flow = item.strip_prefix('{').map(|f| f.trim_end_matches('}'));
            let fields: Vec<&str> = match flow {
                Some(f) => f.split(',').map(str::trim).collect(),
                None => vec![item],
            };
            let unquote = |v: &str| v.trim().trim_matches(['"', '\'']).to_string();
            let named = fields.iter().any(|f| {
                ["name:", "db:"]
                    .iter()
                    .any(|k| f.strip_prefix(k).is_some_and(|v| unquote(v) == name))
            });
            let bare = flow.is_none() && t.starts_with("- ") && unquote(item) == name;
            if named || bare {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
#[path = "sqlplan_tests.rs"]
mod tests;
