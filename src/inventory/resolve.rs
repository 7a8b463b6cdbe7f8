//! From the parsed tree to typed hosts and cluster settings: Ansible variable
//! precedence, type checks, and the cluster's validation rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::convert;
use super::locate::Seg;
use super::model::{AptPin, Cluster, Host, InstallMethod, SshTarget};
use super::parse::{Level, Tree};
use super::validate::{ClusterVals, validate};
use super::vars::{self, Scope};
use super::{Ctx, expand_local_path};

/// The managed groups: a host in none of them is not touched.
pub(crate) const MANAGED: [&str; 5] = ["db", "router", "etcd", "backup", "monitor"];

pub(crate) struct Resolved {
    pub hosts: Vec<Host>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub cluster: Cluster,
    pub known_hosts: Option<PathBuf>,
    /// Secret name -> inline value, and where it was written.
    pub secret_inline: BTreeMap<&'static str, (String, Vec<Seg>)>,
    /// Secret name (without `_file`) -> the file's path as written, and where.
    pub secret_files: BTreeMap<&'static str, (String, Vec<Seg>)>,
    /// Each present login role of `postgresql_users`, with its `password_file`
    /// (as written, and where) when it has one.
    pub user_password_files: Vec<super::secrets::UserPassword>,
}

pub(crate) fn resolve(ctx: &mut Ctx, tree: &Tree, dir: &Path) -> Resolved {
    // Structural errors (a skipped host or group) make membership counts meaningless.
    let structural_errors = ctx.error_count() > 0;
    let typed = check_defs(ctx, tree);
    let closures = group_closures(tree);
    let managed = effective_vars(ctx, tree, &typed, &closures);
    let cvals = cluster_values(ctx, tree, &typed, &managed);
    let mut cluster = build_cluster(&cvals);
    let local = |k: &str| {
        cvals
            .get(k)
            .and_then(|(v, _)| v.as_str().map(|s| expand_local_path(dir, s)))
    };
    cluster.tls_ca_cert_file = local("tls_ca_cert_file");
    cluster.tls_ca_key_file = local("tls_ca_key_file");
    let def_path = |name: &str| -> Vec<Seg> {
        cvals
            .get(name)
            .map(|(_, d)| tree.defs[*d].path.clone())
            .unwrap_or_default()
    };
    let hosts = resolve_hosts(ctx, tree, &typed, &managed, dir);
    let groups = member_groups(tree, &hosts);
    validate(
        ctx,
        tree,
        &cluster,
        &hosts,
        &groups,
        &cvals,
        &def_path,
        !structural_errors,
    );
    let (secret_inline, secret_files) = secret_sources(tree, &cvals);
    let inline_passwords = cvals
        .get("postgresql_users")
        .and_then(|(j, _)| j.as_array().cloned())
        .unwrap_or_default();
    let user_password_files = cluster
        .postgresql_users
        .iter()
        .enumerate()
        // Every inline password too, used or not: it must be redacted wherever
        // the inventory is printed.
        .filter(|(i, u)| {
            (u.login && !u.absent)
                || inline_passwords
                    .get(*i)
                    .is_some_and(|j| j["password"].is_string())
        })
        .map(|(i, u)| {
            let at = |key: &str| {
                let mut p = def_path("postgresql_users");
                p.extend([Seg::Index(i), Seg::key(key)]);
                p
            };
            super::secrets::UserPassword {
                role: u.name.clone(),
                file: u
                    .password_file
                    .as_ref()
                    .map(|f| (f.clone(), at("password_file"))),
                inline: inline_passwords
                    .get(i)
                    .and_then(|j| j["password"].as_str())
                    .map(|p| (p.to_string(), at("password"))),
            }
        })
        .collect();
    Resolved {
        hosts,
        groups,
        cluster,
        known_hosts: local("pgha_known_hosts"),
        secret_inline,
        secret_files,
        user_password_files,
    }
}

/// Each host's groups: its direct groups and all their ancestors (without `all`),
/// in file order.
fn group_closures(tree: &Tree) -> Vec<Vec<String>> {
    let group_pos: HashMap<&str, usize> = tree
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.as_str(), i))
        .collect();
    let mut closures: Vec<Vec<String>> = Vec::new();
    for h in &tree.hosts {
        let mut set: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = h.seen.iter().map(|(g, _)| g.as_str()).collect();
        while let Some(g) = todo.pop() {
            if g == "all" || !set.insert(g) {
                continue;
            }
            if let Some(grp) = tree.group(g) {
                todo.extend(grp.parents.iter().map(|p| p.as_str()));
            }
        }
        let mut list: Vec<String> = set.into_iter().map(str::to_string).collect();
        list.sort_by_key(|g| group_pos.get(g.as_str()).copied().unwrap_or(usize::MAX));
        closures.push(list);
    }
    closures
}

/// A managed host and its effective variables (after Ansible's precedence).
struct Eff {
    entry: usize,
    groups: Vec<String>,
    /// Variable name as written -> the definition that wins.
    raw: BTreeMap<String, usize>,
    /// Canonical name -> the definition that wins.
    canon: BTreeMap<&'static str, usize>,
}

/// The hosts of the managed groups with their effective variables (`all`, then
/// groups from the shallowest, then the host's own); others are warned about.
fn effective_vars(
    ctx: &mut Ctx,
    tree: &Tree,
    typed: &[Option<Json>],
    closures: &[Vec<String>],
) -> Vec<Eff> {
    let depth = group_depths(ctx, tree);
    let mut managed: Vec<Eff> = Vec::new();
    for (i, h) in tree.hosts.iter().enumerate() {
        let groups = &closures[i];
        if !groups.iter().any(|g| MANAGED.contains(&g.as_str())) {
            let at = h.seen.first().map(|(_, p)| p.clone()).unwrap_or_default();
            ctx.warn_at(
                Some(&at),
                format!(
                    "host `{}` is in none of the groups db, router, etcd, backup, monitor: pgha does not manage it",
                    h.name
                ),
            );
            continue;
        }
        let mut order: Vec<usize> = tree
            .group("all")
            .map(|g| g.vars.clone())
            .unwrap_or_default();
        let mut sorted: Vec<&String> = groups.iter().collect();
        sorted.sort_by(|a, b| {
            (depth.get(a.as_str()), a.as_str()).cmp(&(depth.get(b.as_str()), b.as_str()))
        });
        for g in sorted {
            if let Some(grp) = tree.group(g) {
                order.extend(&grp.vars);
            }
        }
        order.extend(&h.vars);
        let mut raw = BTreeMap::new();
        let mut canon: BTreeMap<&'static str, usize> = BTreeMap::new();
        for d in order {
            let def = &tree.defs[d];
            raw.insert(def.key.clone(), d);
            let (Some(spec), Some(val)) = (vars::spec(&def.key), &typed[d]) else {
                continue;
            };
            if let Some(&prev) = canon.get(spec.canonical) {
                let p = &tree.defs[prev];
                if p.level == def.level && p.key != def.key && typed[prev].as_ref() != Some(val) {
                    ctx.error_at(
                        &def.path,
                        format!(
                            "`{}` and `{}` are both set for `{}` with different values: keep one of them",
                            p.key,
                            def.key,
                            level_name(&def.level)
                        ),
                    );
                }
            }
            canon.insert(spec.canonical, d);
        }
        managed.push(Eff {
            entry: i,
            groups: groups.clone(),
            raw,
            canon,
        });
    }
    managed
}

/// Cluster-wide values: one value across all managed hosts (a difference is an
/// error naming both hosts and where each value was set).
fn cluster_values(
    ctx: &mut Ctx,
    tree: &Tree,
    typed: &[Option<Json>],
    managed: &[Eff],
) -> ClusterVals {
    let mut cvals: ClusterVals = BTreeMap::new();
    for spec in vars::KEYS
        .iter()
        .filter(|s| s.scope != Scope::Connection && s.name == s.canonical)
    {
        let name = spec.canonical;
        if managed.is_empty() {
            let all = tree
                .group("all")
                .map(|g| g.vars.clone())
                .unwrap_or_default();
            if let Some(&d) = all
                .iter()
                .rev()
                .find(|&&d| tree.defs[d].key == name && typed[d].is_some())
            {
                cvals.insert(name, (typed[d].clone().unwrap_or(Json::Null), d));
            }
            continue;
        }
        let per_host: Vec<(usize, Option<usize>)> = managed
            .iter()
            .map(|e| (e.entry, e.canon.get(name).copied()))
            .collect();
        let value_of = |d: Option<usize>| d.and_then(|d| typed[d].clone());
        let first = per_host[0];
        if let Some(other) = per_host
            .iter()
            .find(|(_, d)| value_of(*d) != value_of(first.1))
        {
            // Point at a definition: the one that differs from the default or the other.
            let (a, b) = if first.1.is_some() {
                (first, *other)
            } else {
                (*other, first)
            };
            let secret = matches!(spec.scope, Scope::Secret);
            let show = |(h, d): (usize, Option<usize>)| {
                let host = &tree.hosts[h].name;
                match d {
                    None => format!("{host} gets the default"),
                    Some(d) if secret => format!(
                        "{host} gets the value set at {}",
                        ctx.line_of(&tree.defs[d].path)
                    ),
                    Some(d) => format!(
                        "{host} gets {} (set at {})",
                        short_json(typed[d].as_ref().unwrap_or(&Json::Null)),
                        ctx.line_of(&tree.defs[d].path)
                    ),
                }
            };
            let msg = format!(
                "cluster setting `{name}` must have one value for the whole cluster, but {} and {}: set it once in `all: vars:`",
                show(a),
                show(b)
            );
            let at = a.1.map(|d| tree.defs[d].path.clone()).unwrap_or_default();
            ctx.error_at(&at, msg);
        }
        if let Some(d) = first.1
            && let Some(v) = &typed[d]
        {
            cvals.insert(name, (v.clone(), d));
        }
    }
    cvals
}

/// The managed hosts, typed: address resolved, SSH settings, key files readable.
fn resolve_hosts(
    ctx: &mut Ctx,
    tree: &Tree,
    typed: &[Option<Json>],
    managed: &[Eff],
    dir: &Path,
) -> Vec<Host> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut resolved_addr: HashMap<String, Result<IpAddr, String>> = HashMap::new();
    let mut key_problems: BTreeMap<usize, (PathBuf, Vec<String>, String)> = BTreeMap::new();
    for e in managed {
        let entry = &tree.hosts[e.entry];
        let name = entry.name.clone();
        let get = |k: &str| e.canon.get(k).and_then(|&d| typed[d].clone());
        let address = get("address")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| name.clone());
        let port = get("ssh_port").and_then(|v| v.as_u64()).unwrap_or(22) as u16;
        let user = get("ssh_user")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "root".to_string());
        let become_ = get("become")
            .and_then(|v| v.as_bool())
            .unwrap_or(user != "root");
        let key_file = e.canon.get("ssh_private_key_file").and_then(|&d| {
            let p = expand_local_path(dir, typed[d].as_ref()?.as_str()?);
            if let Err(err) = std::fs::File::open(&p) {
                key_problems
                    .entry(d)
                    .or_insert_with(|| (p.clone(), Vec::new(), err.to_string()))
                    .1
                    .push(name.clone());
            }
            Some(p)
        });
        if !become_ && user != "root" {
            ctx.warn_at(
                e.canon.get("become").map(|&d| tree.defs[d].path.as_slice()),
                format!(
                    "host `{name}`: become is off and the SSH user is `{user}`, not root: \
                     installing packages and writing /etc will fail unless that user is root-equivalent"
                ),
            );
        }
        let ip = host_ip(ctx, tree, e, &address, port, &mut resolved_addr);
        let mut shown = BTreeMap::new();
        for (k, &d) in &e.raw {
            let v = if vars::is_secret_name(k) {
                Json::String("<redacted>".into())
            } else {
                convert::yaml_to_json(&tree.defs[d].value)
            };
            shown.insert(k.clone(), v);
        }
        hosts.push(Host {
            name: name.clone(),
            ssh: SshTarget {
                host: name,
                address,
                port,
                user,
                key_file,
                become_,
            },
            ip,
            groups: e.groups.clone(),
            vars: shown,
            tls_cert_file: get("tls_cert_file")
                .and_then(|v| v.as_str().map(|s| expand_local_path(dir, s))),
            tls_key_file: get("tls_key_file")
                .and_then(|v| v.as_str().map(|s| expand_local_path(dir, s))),
        });
    }
    for (d, (path, hs, why)) in key_problems {
        ctx.error_at(
            &tree.defs[d].path,
            format!(
                "cannot read private key file {} for {} `{}` ({why}): fix the path (relative paths start at the inventory's directory) \
                 or its permissions, or remove the variable to use ssh-agent",
                path.display(),
                if hs.len() == 1 { "host" } else { "hosts" },
                hs.join("`, `")
            ),
        );
    }
    hosts
}

/// The host's IP address (resolved once per name); 0.0.0.0 after an error it
/// reported (or that its address' type check reported already).
fn host_ip(
    ctx: &mut Ctx,
    tree: &Tree,
    e: &Eff,
    address: &str,
    port: u16,
    resolved: &mut HashMap<String, Result<IpAddr, String>>,
) -> IpAddr {
    let name = &tree.hosts[e.entry].name;
    let host_path = tree.hosts[e.entry].seen[0].1.clone();
    // An address that failed its type check was reported already: do not
    // fall back to resolving the host's name.
    let bad_address = !e.canon.contains_key("address")
        && e.raw
            .keys()
            .any(|k| vars::spec(k).is_some_and(|s| s.canonical == "address"));
    let ip = if bad_address {
        Ok(IpAddr::from([0, 0, 0, 0]))
    } else {
        resolved
            .entry(address.to_string())
            .or_insert_with(|| resolve_address(address, port))
            .clone()
    };
    match ip {
        Ok(ip) => ip,
        Err(why) => {
            let at = e
                .canon
                .get("address")
                .map(|&d| tree.defs[d].path.clone())
                .unwrap_or_else(|| host_path.clone());
            let what = if e.canon.contains_key("address") {
                "set ansible_host to an IP address or a DNS name this machine can resolve"
            } else {
                "the host has no ansible_host, so its name is used as address: set ansible_host"
            };
            ctx.error_at(
                &at,
                format!("host `{name}`: cannot resolve address `{address}` ({why}): {what}"),
            );
            IpAddr::from([0, 0, 0, 0])
        }
    }
}

/// Every group's members among the managed hosts, in file order.
fn member_groups(tree: &Tree, hosts: &[Host]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in tree.groups.iter().filter(|g| g.name != "all") {
        let members = hosts
            .iter()
            .filter(|h| h.in_group(&g.name))
            .map(|h| h.name.clone())
            .collect();
        groups.insert(g.name.clone(), members);
    }
    groups
}

/// Secrets set inline and secrets read from files, with where they were written.
#[allow(clippy::type_complexity)]
fn secret_sources(
    tree: &Tree,
    cvals: &ClusterVals,
) -> (
    BTreeMap<&'static str, (String, Vec<Seg>)>,
    BTreeMap<&'static str, (String, Vec<Seg>)>,
) {
    let mut secret_inline = BTreeMap::new();
    let mut secret_files = BTreeMap::new();
    for spec in vars::KEYS {
        match spec.scope {
            Scope::Secret => {
                if let Some((Json::String(s), d)) = cvals.get(spec.name) {
                    secret_inline.insert(spec.name, (s.clone(), tree.defs[*d].path.clone()));
                }
            }
            Scope::SecretFile => {
                if let Some((Json::String(s), d)) = cvals.get(spec.name) {
                    let base = spec.name.trim_end_matches("_file");
                    let base = vars::KEYS
                        .iter()
                        .find(|k| k.name == base)
                        .map(|k| k.name)
                        .unwrap_or(spec.name);
                    secret_files.insert(base, (s.clone(), tree.defs[*d].path.clone()));
                }
            }
            _ => {}
        }
    }
    (secret_inline, secret_files)
}

fn level_name(l: &Level) -> String {
    match l {
        Level::All => "all".into(),
        Level::Group(g) => format!("group {g}"),
        Level::Host(h) => format!("host {h}"),
    }
}

fn short_json(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// Type-check every definition once, where it is written. Unknown names: error
/// when close to a pgha name, warning otherwise.
fn check_defs(ctx: &mut Ctx, tree: &Tree) -> Vec<Option<Json>> {
    let mut typed = Vec::with_capacity(tree.defs.len());
    let mut unknown: BTreeMap<&str, (usize, usize)> = BTreeMap::new(); // key -> (first def, count)
    for (i, def) in tree.defs.iter().enumerate() {
        let key = def.key.as_str();
        if let Some(spec) = vars::spec(key) {
            match convert::convert(spec.kind, &def.value) {
                Ok(v) => {
                    if spec.scope == Scope::Secret {
                        ctx.warn_at(
                            Some(&def.path),
                            format!(
                                "`{key}` is written in the inventory: prefer `{key}_file: PATH` (a file readable only by you), \
                                 or leave it out and pgha generates one"
                            ),
                        );
                    }
                    typed.push(Some(v));
                }
                Err(errs) => {
                    for (sub, msg) in errs {
                        let mut p = def.path.clone();
                        p.extend(sub);
                        ctx.error_at(&p, format!("`{key}`: {msg}"));
                    }
                    typed.push(None);
                }
            }
            continue;
        }
        typed.push(None);
        if key.starts_with("ansible_") {
            match key {
                "ansible_password" | "ansible_ssh_pass" | "ansible_ssh_password" => ctx.warn_at(
                    Some(&def.path),
                    format!(
                        "`{key}` ignored: password authentication is not supported; use SSH keys \
                         (ssh-agent or ansible_ssh_private_key_file)"
                    ),
                ),
                "ansible_become_password" | "ansible_become_pass" | "ansible_sudo_pass" => ctx.warn_at(
                    Some(&def.path),
                    format!(
                        "`{key}` ignored: sudo passwords are not supported; the SSH user needs passwordless sudo (NOPASSWD)"
                    ),
                ),
                _ => {
                    if let Some(m) = vars::ansible_did_you_mean(key) {
                        ctx.warn_at(
                            Some(&def.path),
                            format!("`{key}` is not an Ansible connection variable pgha reads: did you mean `{m}`?"),
                        );
                    }
                }
            }
            continue;
        }
        if let Some(m) = vars::did_you_mean(key) {
            ctx.error_at(
                &def.path,
                format!("unknown variable `{key}`: did you mean `{m}`?"),
            );
            continue;
        }
        unknown.entry(key).or_insert((i, 0)).1 += 1;
    }
    for (key, (first, count)) in unknown {
        let more = if count > 1 {
            format!(" (and {} more times)", count - 1)
        } else {
            String::new()
        };
        ctx.warn_at(
            Some(&tree.defs[first].path),
            format!("`{key}` ignored: not a pgha setting{more}"),
        );
    }
    typed
}

/// Depth of each group below `all` (longest path), for Ansible's precedence.
fn group_depths(ctx: &mut Ctx, tree: &Tree) -> HashMap<String, usize> {
    fn visit(
        ctx: &mut Ctx,
        tree: &Tree,
        g: &str,
        stack: &mut Vec<String>,
        memo: &mut HashMap<String, usize>,
    ) -> usize {
        if g == "all" {
            return 0;
        }
        if let Some(&d) = memo.get(g) {
            return d;
        }
        if let Some(pos) = stack.iter().position(|x| x == g) {
            let mut cycle: Vec<String> = stack[pos..].to_vec();
            cycle.push(g.to_string());
            let at = tree.group(g).map(|x| x.path.clone()).unwrap_or_default();
            ctx.error_at(
                &at,
                format!(
                    "group `{g}` is its own ancestor ({}): remove one of the `children:` entries",
                    cycle.join(" -> ")
                ),
            );
            memo.insert(g.to_string(), 1);
            return 1;
        }
        stack.push(g.to_string());
        let parents = tree.group(g).map(|x| x.parents.clone()).unwrap_or_default();
        let d = parents
            .iter()
            .map(|p| visit(ctx, tree, p, stack, memo) + 1)
            .max()
            .unwrap_or(1);
        stack.pop();
        memo.insert(g.to_string(), d);
        d
    }
    let mut memo = HashMap::new();
    for g in &tree.groups {
        let mut stack = Vec::new();
        visit(ctx, tree, &g.name, &mut stack, &mut memo);
    }
    memo
}

fn resolve_address(address: &str, port: u16) -> Result<IpAddr, String> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(ip);
    }
    match (address, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .map(|a| a.ip())
                .ok_or_else(|| "no address found".to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

// Long by design: one `set!` per cluster variable, a table rather than logic.
fn build_cluster(v: &ClusterVals) -> Cluster {
    let mut c = Cluster::default();
    let s = |k: &str| v.get(k).and_then(|(j, _)| j.as_str().map(str::to_string));
    let n = |k: &str| v.get(k).and_then(|(j, _)| j.as_u64());
    let b = |k: &str| v.get(k).and_then(|(j, _)| j.as_bool());
    macro_rules! set {
        ($field:ident, str) => {
            if let Some(x) = s(stringify!($field)) {
                c.$field = x;
            }
        };
        ($field:ident, bool) => {
            if let Some(x) = b(stringify!($field)) {
                c.$field = x;
            }
        };
        ($field:ident, $t:ty) => {
            if let Some(x) = n(stringify!($field)) {
                c.$field = x as $t;
            }
        };
    }
    set!(cluster_name, str);
    if let Some(m) = s("install_method") {
        c.install_method = if m == "docker" {
            InstallMethod::Docker
        } else {
            InstallMethod::Native
        };
    }
    set!(postgresql_version, u32);
    set!(postgresql_port, u16);
    c.postgresql_data_dir = format!("/var/lib/postgresql/{}/main", c.postgresql_version);
    set!(postgresql_data_dir, str);
    if let Some((Json::Object(m), _)) = v.get("postgresql_parameters") {
        c.postgresql_parameters = m.clone().into_iter().collect();
    }
    set!(patroni_rest_port, u16);
    set!(patroni_ttl, u32);
    set!(patroni_loop_wait, u32);
    set!(patroni_retry_timeout, u32);
    set!(patroni_maximum_lag_on_failover, u64);
    set!(synchronous_mode, bool);
    set!(synchronous_mode_strict, bool);
    set!(synchronous_node_count, u32);
    set!(etcd_client_port, u16);
    set!(etcd_peer_port, u16);
    set!(haproxy_write_port, u16);
    set!(haproxy_read_port, u16);
    set!(haproxy_stats_port, u16);
    set!(haproxy_maxconn, u32);
    set!(haproxy_timeout_connect, str);
    set!(haproxy_timeout_client, str);
    set!(haproxy_timeout_server, str);
    set!(haproxy_check_inter, str);
    set!(haproxy_check_fastinter, str);
    set!(haproxy_check_downinter, str);
    set!(haproxy_check_fall, u32);
    set!(haproxy_check_rise, u32);
    set!(haproxy_replica_max_lag, u64);
    set!(exporter_port, u16);
    if let Some((Json::Array(a), _)) = v.get("client_cidrs") {
        c.client_cidrs = a
            .iter()
            .filter_map(|x| x.as_str().and_then(super::scalar::parse_cidr))
            .collect();
    }
    set!(superuser_name, str);
    set!(replication_user, str);
    set!(rewind_user, str);
    set!(monitor_user, str);
    set!(app_user, str);
    set!(app_database, str);
    if let Some((j @ Json::Array(_), _)) = v.get("postgresql_users") {
        c.postgresql_users = serde_json::from_value(j.clone()).unwrap_or_default();
    }
    if let Some((j @ Json::Array(_), _)) = v.get("postgresql_databases") {
        c.postgresql_databases = serde_json::from_value(j.clone()).unwrap_or_default();
    }
    if let Some((Json::Array(a), _)) = v.get("apt_sources") {
        c.apt_sources = a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
    }
    if let Some((Json::Array(a), _)) = v.get("apt_pins") {
        c.apt_pins = a
            .iter()
            .map(|p| AptPin {
                package: p["package"].as_str().unwrap_or_default().to_string(),
                version: p["version"].as_str().unwrap_or_default().to_string(),
                priority: p["priority"].as_i64().unwrap_or(1001) as i32,
            })
            .collect();
    }
    set!(apt_cache_valid_time, u64);
    set!(allow_router_on_db, bool);
    set!(docker_image, str);
    set!(docker_image_etcd, str);
    set!(docker_image_postgres, str);
    set!(docker_image_haproxy, str);
    set!(docker_image_pgbouncer, str);
    set!(docker_image_exporter, str);
    set!(docker_image_monitoring, str);
    set!(docker_image_source, str);
    set!(docker_storage_driver, str);
    if let Some((Json::Array(a), _)) = v.get("docker_insecure_registries") {
        c.docker_insecure_registries = a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
    }
    set!(tls, bool);
    set!(tls_cert_validity_days, u64);
    set!(tls_renew_before_days, u64);
    set!(backup_enabled, bool);
    set!(backup_repo_type, str);
    set!(backup_repo_path, str);
    set!(backup_s3_endpoint, str);
    set!(backup_s3_port, u16);
    set!(backup_s3_bucket, str);
    set!(backup_s3_region, str);
    set!(backup_s3_uri_style, str);
    set!(backup_s3_ca, str);
    set!(backup_port, u16);
    set!(backup_encryption, bool);
    set!(backup_retention_full, u32);
    set!(backup_retention_diff, u32);
    set!(backup_compress_type, str);
    set!(backup_process_max, u32);
    set!(backup_schedule_full, str);
    set!(backup_schedule_diff, str);
    set!(backup_schedule_incr, str);
    set!(backup_schedule_verify, str);
    set!(backup_archive_async, bool);
    set!(backup_archive_push_queue_max, str);
    set!(backup_archive_fail_minutes, u32);
    set!(monitoring_enabled, bool);
    set!(prometheus_port, u16);
    set!(alertmanager_port, u16);
    set!(node_exporter_port, u16);
    set!(etcd_metrics_port, u16);
    set!(pgbackrest_exporter_port, u16);
    set!(monitoring_scrape_interval, u32);
    set!(monitoring_retention_days, u32);
    set!(monitoring_retention_size, str);
    set!(alert_replica_lag_seconds, u32);
    if let Some((Json::Array(a), _)) = v.get("alert_webhook_urls") {
        c.alert_webhook_urls = a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
    }
    set!(alert_email_to, str);
    set!(alert_email_from, str);
    set!(alert_smtp_smarthost, str);
    set!(alert_smtp_require_tls, bool);
    set!(pgbouncer_enabled, bool);
    set!(pgbouncer_port, u16);
    set!(pgbouncer_pool_mode, str);
    set!(pgbouncer_max_client_conn, u32);
    set!(pgbouncer_default_pool_size, u32);
    set!(pgbouncer_max_prepared_statements, u32);
    set!(pgbouncer_pause_timeout, u32);
    set!(pgbouncer_auth_user, str);
    set!(pgbouncer_exporter_port, u16);
    c.backup_max_age_hours = default_max_age_hours(&c);
    set!(backup_max_age_hours, u32);
    c
}

/// The longest gap between scheduled backups plus 2 hours (a backup's own
/// duration and some slack); 0 (not checked) when nothing is scheduled.
pub(crate) fn default_max_age_hours(c: &Cluster) -> u32 {
    let events: Vec<_> = [
        &c.backup_schedule_full,
        &c.backup_schedule_diff,
        &c.backup_schedule_incr,
    ]
    .into_iter()
    .filter_map(|s| super::calendar::Calendar::parse(s).ok())
    .collect();
    super::calendar::longest_gap_minutes(&events)
        .map(|m| (m.div_ceil(60) + 2) as u32)
        .unwrap_or(0)
}
