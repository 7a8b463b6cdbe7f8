//! The cluster's validation rules, over typed hosts and settings: group
//! membership, etcd's size, hosts' addresses and ports, Patroni's timing rules,
//! synchronous replication, role names. Each error names where to fix it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use super::Ctx;
use super::locate::Seg;
use super::model::{Cluster, Host};
use super::parse::Tree;
use super::vars;

/// Effective cluster-wide values: canonical key -> (value, index of the def that set it).
pub(crate) type ClusterVals = BTreeMap<&'static str, (Json, usize)>;

/// What the rules look at.
#[derive(Clone, Copy)]
struct V<'x> {
    tree: &'x Tree,
    c: &'x Cluster,
    hosts: &'x [Host],
    groups: &'x BTreeMap<String, Vec<String>>,
    cvals: &'x ClusterVals,
    /// Where a cluster setting was written (empty when defaulted).
    def_path: &'x dyn Fn(&str) -> Vec<Seg>,
    /// Group sizes can be judged (no host or group was skipped as malformed).
    check_membership: bool,
}

impl V<'_> {
    fn group_path(&self, g: &str) -> Option<Vec<Seg>> {
        self.tree.group(g).map(|x| x.path.clone())
    }
    fn members(&self, g: &str) -> Vec<String> {
        self.groups.get(g).cloned().unwrap_or_default()
    }
    /// The etcd members: the etcd group when given, else the first 3 (or 5) db hosts.
    /// The monitoring host: the `monitor` group's, else the first router.
    fn monitor(&self) -> Option<String> {
        if !self.c.monitoring_enabled {
            return None;
        }
        let m = self.members("monitor");
        m.first().or(self.members("router").first()).cloned()
    }
    fn etcd(&self) -> Vec<String> {
        let explicit = self.members("etcd");
        if explicit.is_empty() {
            let mut db = self.members("db");
            db.truncate(super::model::default_etcd_size(db.len()));
            db
        } else {
            explicit
        }
    }
}

/// Check every rule; each problem goes to `ctx` (errors and warnings).
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate(
    ctx: &mut Ctx,
    tree: &Tree,
    c: &Cluster,
    hosts: &[Host],
    groups: &BTreeMap<String, Vec<String>>,
    cvals: &ClusterVals,
    def_path: &dyn Fn(&str) -> Vec<Seg>,
    check_membership: bool,
) {
    let v = V {
        tree,
        c,
        hosts,
        groups,
        cvals,
        def_path,
        check_membership,
    };
    membership(ctx, &v);
    etcd_size(ctx, &v);
    router_on_db(ctx, &v);
    addresses(ctx, &v);
    ports(ctx, &v);
    patroni_timing(ctx, &v);
    synchronous(ctx, &v);
    exposure(ctx, &v);
    roles(ctx, &v);
    users_and_databases(ctx, &v);
    pg_version(ctx, &v);
    backup(ctx, &v);
    monitoring(ctx, &v);
    pooling(ctx, &v);
}

/// db and router each have hosts.
fn membership(ctx: &mut Ctx, v: &V) {
    let V {
        check_membership, ..
    } = *v;
    for (g, what) in [
        ("db", "the PostgreSQL hosts (Patroni)"),
        ("router", "the HAProxy hosts"),
    ] {
        if check_membership && v.members(g).is_empty() {
            let how = format!("list {what} under `all: children: {g}: hosts:`");
            match v.group_path(g) {
                Some(p) => ctx.error_at(&p, format!("group `{g}` has no hosts: {how}")),
                None => ctx.error(format!("group `{g}` is missing: {how}")),
            }
        }
    }
}

/// etcd: an odd number of members, at least 3; fewer than 3 db hosts warned about.
fn etcd_size(ctx: &mut Ctx, v: &V) {
    let V {
        check_membership, ..
    } = *v;
    let db = v.members("db");
    let explicit_etcd = !v.members("etcd").is_empty();
    let etcd = v.etcd();
    if check_membership && !db.is_empty() && (etcd.len() < 3 || etcd.len().is_multiple_of(2)) {
        let (g, how) = if explicit_etcd {
            ("etcd", "add or remove hosts in the `etcd` group")
        } else {
            (
                "db",
                "the etcd members are the first 3 db hosts (5 from 5 db hosts on) unless an \
                 `etcd` group is given: add db hosts, or list 3 (or 5) etcd hosts in an `etcd` group",
            )
        };
        ctx.error_at(
            &v.group_path(g).unwrap_or_default(),
            format!(
                "etcd needs an odd number of members, at least 3, to keep quorum; it would have {} ({}): {how}",
                etcd.len(),
                etcd.join(", ")
            ),
        );
    }
    if !db.is_empty() && db.len() < 3 {
        ctx.warn_at(
            v.group_path("db").as_deref(),
            format!(
                "only {} db host(s): with fewer than 3 there is {} after a failure",
                db.len(),
                if db.len() == 1 {
                    "no replica to fail over to"
                } else {
                    "no synchronous standby left"
                }
            ),
        );
    }
}

/// A host in both db and router: an error unless allowed.
fn router_on_db(ctx: &mut Ctx, v: &V) {
    let V { tree, c, hosts, .. } = *v;
    for h in hosts
        .iter()
        .filter(|h| h.in_group("db") && h.in_group("router"))
    {
        let at = router_entry(tree, &h.name);
        if c.allow_router_on_db {
            ctx.warn_at(
                Some(&at),
                format!(
                    "host `{}` is both a db host and a router (allowed by allow_router_on_db): losing it takes out a \
                     database member and a router at once",
                    h.name
                ),
            );
        } else {
            ctx.error_at(
                &at,
                format!(
                    "host `{}` is in both db and router: losing it would take out a database member and a router at once; \
                     use a separate router host, or set `allow_router_on_db: true` in all.vars",
                    h.name
                ),
            );
        }
    }
}

/// Each host its own address and SSH endpoint.
fn addresses(ctx: &mut Ctx, v: &V) {
    let V { tree, hosts, .. } = *v;
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[..i] {
            let same_ssh =
                a.ssh.address.eq_ignore_ascii_case(&b.ssh.address) && a.ssh.port == b.ssh.port;
            let at = address_path(tree, &a.name);
            if same_ssh {
                ctx.error_at(
                    &at,
                    format!(
                        "hosts `{}` and `{}` have the same address {} and SSH port {}: each host needs its own address \
                         (a host in several groups is written once per group with the same name)",
                        b.name, a.name, a.ssh.address, a.ssh.port
                    ),
                );
                break;
            }
            if a.ip == b.ip && !a.ip.is_unspecified() {
                ctx.error_at(
                    &at,
                    format!(
                        "hosts `{}` and `{}` both resolve to {}: cluster members reach each other by IP, so each host needs \
                         its own address",
                        b.name, a.name, a.ip
                    ),
                );
                break;
            }
        }
    }
}

/// Two services of one host never on one port.
fn ports(ctx: &mut Ctx, v: &V) {
    let V {
        c,
        hosts,
        cvals,
        def_path,
        ..
    } = *v;
    let etcd = v.etcd();
    let monitor = v.monitor();
    let mut reported: BTreeSet<(&str, &str)> = BTreeSet::new();
    for h in hosts {
        let mut ports: Vec<(&str, u16)> = Vec::new();
        if h.in_group("db") {
            ports.extend([
                ("postgresql_port", c.postgresql_port),
                ("patroni_rest_port", c.patroni_rest_port),
                ("exporter_port", c.exporter_port),
            ]);
        }
        if etcd.contains(&h.name) {
            ports.extend([
                ("etcd_client_port", c.etcd_client_port),
                ("etcd_peer_port", c.etcd_peer_port),
            ]);
        }
        if c.backup_enabled && (h.in_group("db") || h.in_group("backup")) {
            ports.push(("backup_port", c.backup_port));
        }
        if c.monitoring_enabled {
            ports.push(("node_exporter_port", c.node_exporter_port));
            if etcd.contains(&h.name) {
                ports.push(("etcd_metrics_port", c.etcd_metrics_port));
            }
            if monitor.as_deref() == Some(h.name.as_str()) {
                ports.extend([
                    ("prometheus_port", c.prometheus_port),
                    ("alertmanager_port", c.alertmanager_port),
                ]);
            }
            if c.backup_enabled && v.members("backup").first() == Some(&h.name) {
                ports.push(("pgbackrest_exporter_port", c.pgbackrest_exporter_port));
            }
        }
        if h.in_group("router") {
            ports.extend([
                ("haproxy_write_port", c.haproxy_write_port),
                ("haproxy_read_port", c.haproxy_read_port),
                ("haproxy_stats_port", c.haproxy_stats_port),
            ]);
            if c.pgbouncer_enabled {
                ports.push(("pgbouncer_port", c.pgbouncer_port));
                if c.monitoring_enabled {
                    ports.push(("pgbouncer_exporter_port", c.pgbouncer_exporter_port));
                }
            }
        }
        for (i, (ka, pa)) in ports.iter().enumerate() {
            for (kb, pb) in &ports[..i] {
                if pa == pb && reported.insert((kb, ka)) {
                    let at = if cvals.contains_key(ka) {
                        def_path(ka)
                    } else {
                        def_path(kb)
                    };
                    ctx.error_at(
                        &at,
                        format!(
                            "`{kb}` and `{ka}` are both {pa} on host `{}`: two services cannot listen on one port; \
                             change one of them",
                            h.name
                        ),
                    );
                }
            }
        }
    }
}

/// Patroni's timing rules (ttl floor, loop_wait + 2 * retry_timeout <= ttl).
fn patroni_timing(ctx: &mut Ctx, v: &V) {
    let V {
        c, cvals, def_path, ..
    } = *v;
    if c.patroni_ttl < 20 {
        ctx.error_at(
            &def_path("patroni_ttl"),
            format!(
                "`patroni_ttl` is {}: Patroni requires at least 20 (seconds)",
                c.patroni_ttl
            ),
        );
    }
    if c.patroni_loop_wait as u64 + 2 * c.patroni_retry_timeout as u64 > c.patroni_ttl as u64 {
        let at = ["patroni_loop_wait", "patroni_retry_timeout", "patroni_ttl"]
            .into_iter()
            .find(|k| cvals.contains_key(k))
            .map(def_path)
            .unwrap_or_default();
        ctx.error_at(
            &at,
            format!(
                "Patroni requires patroni_loop_wait + 2 * patroni_retry_timeout <= patroni_ttl, but {} + 2 * {} = {} > {}: \
                 lower loop_wait or retry_timeout, or raise ttl",
                c.patroni_loop_wait,
                c.patroni_retry_timeout,
                c.patroni_loop_wait as u64 + 2 * c.patroni_retry_timeout as u64,
                c.patroni_ttl
            ),
        );
    }
    if c.patroni_ttl > 60 {
        ctx.warn_at(
            Some(&def_path("patroni_ttl")),
            format!(
                "`patroni_ttl` is {}: a failed leader is replaced only after up to that many seconds (slow failover)",
                c.patroni_ttl
            ),
        );
    }
}

/// Synchronous replication settings against the db hosts.
fn synchronous(ctx: &mut Ctx, v: &V) {
    let V {
        c,
        def_path,
        check_membership,
        ..
    } = *v;
    let db = v.members("db");
    if c.synchronous_mode {
        if c.synchronous_node_count == 0 {
            ctx.error_at(
                &def_path("synchronous_node_count"),
                "`synchronous_node_count` must be at least 1 when synchronous_mode is on",
            );
        } else if check_membership
            && !db.is_empty()
            && c.synchronous_node_count as usize > db.len() - 1
        {
            ctx.error_at(
                &def_path("synchronous_node_count"),
                format!(
                    "`synchronous_node_count` is {} but there are only {} db host(s), so at most {} synchronous standby(s): \
                     lower it, add db hosts, or set synchronous_mode: false",
                    c.synchronous_node_count,
                    db.len(),
                    db.len() - 1
                ),
            );
        }
    } else {
        ctx.warn_at(
            Some(&def_path("synchronous_mode")),
            "synchronous_mode is off: a failover can lose commits the old leader had already acknowledged",
        );
    }
}

/// Client networks open to every address.
fn exposure(ctx: &mut Ctx, v: &V) {
    let V { c, def_path, .. } = *v;
    if c.client_cidrs.iter().any(|n| n.prefix_len() == 0) {
        ctx.warn_at(
            Some(&def_path("client_cidrs")),
            "client_cidrs allows every address (0.0.0.0/0 or ::/0): PostgreSQL accepts password logins from anywhere",
        );
    }
}

/// pgha's own roles, each with the variable that names it.
fn pgha_roles(c: &Cluster) -> [(&'static str, &String); 6] {
    [
        ("superuser_name", &c.superuser_name),
        ("replication_user", &c.replication_user),
        ("rewind_user", &c.rewind_user),
        ("monitor_user", &c.monitor_user),
        ("app_user", &c.app_user),
        ("pgbouncer_auth_user", &c.pgbouncer_auth_user),
    ]
}

/// Each role its own name (one role cannot have two jobs with two passwords).
fn roles(ctx: &mut Ctx, v: &V) {
    let V {
        c, cvals, def_path, ..
    } = *v;
    let roles = pgha_roles(c);
    for (i, (ka, a)) in roles.iter().enumerate() {
        if let Some((kb, _)) = roles[..i].iter().find(|(_, b)| b == a) {
            let at = if cvals.contains_key(ka) {
                def_path(ka)
            } else {
                def_path(kb)
            };
            ctx.error_at(
                &at,
                format!("`{kb}` and `{ka}` are both `{a}`: each role needs its own name"),
            );
        }
    }
}

/// Extensions PostgreSQL must load at server start (`shared_preload_libraries`)
/// before they work: named so the inventory asks for the restart itself.
pub const PRELOADED: [&str; 4] = ["pg_stat_statements", "pg_cron", "pgaudit", "timescaledb"];

/// `postgresql_users` and `postgresql_databases`: one name each, none of pgha's
/// own, owners and memberships that will exist, preloaded extensions loaded.
// Long by design: one pass per list, each rule a few lines.
fn users_and_databases(ctx: &mut Ctx, v: &V) {
    let V { c, def_path, .. } = *v;
    let at = |key: &str, i: usize, field: &str| {
        let mut p = def_path(key);
        p.push(Seg::Index(i));
        if !field.is_empty() {
            p.push(Seg::key(field));
        }
        p
    };
    let pgha_roles = pgha_roles(c);
    let mut seen = BTreeSet::new();
    for (i, u) in c.postgresql_users.iter().enumerate() {
        if !seen.insert(u.name.as_str()) {
            ctx.error_at(
                &at("postgresql_users", i, "name"),
                format!("role `{}` is listed twice: keep one entry", u.name),
            );
        }
        if let Some((key, _)) = pgha_roles.iter().find(|(_, n)| **n == u.name) {
            ctx.error_at(
                &at("postgresql_users", i, "name"),
                format!(
                    "role `{}` is pgha's own ({key}): pgha manages it; give your role another name",
                    u.name
                ),
            );
        }
        if u.name.starts_with("pg_") {
            ctx.error_at(
                &at("postgresql_users", i, "name"),
                format!(
                    "`{}`: role names starting with pg_ are reserved by PostgreSQL",
                    u.name
                ),
            );
        }
        for m in &u.member_of {
            let target = c.postgresql_users.iter().find(|x| x.name == *m);
            if target.is_some_and(|t| t.absent) && !u.absent {
                ctx.error_at(
                    &at("postgresql_users", i, "member_of"),
                    format!("role `{}` is a member of `{m}`, which is marked absent: remove it from member_of", u.name),
                );
            }
            if *m == u.name {
                ctx.error_at(
                    &at("postgresql_users", i, "member_of"),
                    format!("role `{m}` cannot be a member of itself"),
                );
            }
        }
        if u.password_file.is_some() && !u.login {
            ctx.error_at(
                &at("postgresql_users", i, "password_file"),
                format!(
                    "role `{}` has `login: false` (a group role): it takes no password",
                    u.name
                ),
            );
        }
    }
    let preload: Vec<String> = c
        .postgresql_parameters
        .get("shared_preload_libraries")
        .and_then(|x| x.as_str())
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().trim_matches('"').to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (i, d) in c.postgresql_databases.iter().enumerate() {
        if !seen.insert(d.name.as_str()) {
            ctx.error_at(
                &at("postgresql_databases", i, "name"),
                format!("database `{}` is listed twice: keep one entry", d.name),
            );
        }
        if [
            "postgres",
            "template0",
            "template1",
            c.app_database.as_str(),
        ]
        .contains(&d.name.as_str())
        {
            ctx.error_at(
                &at("postgresql_databases", i, "name"),
                format!(
                    "database `{}` is PostgreSQL's or pgha's own (app_database): give yours another name",
                    d.name
                ),
            );
        }
        if let Some(owner) = &d.owner {
            let listed = c.postgresql_users.iter().find(|u| u.name == *owner);
            if !d.absent && listed.is_some_and(|u| u.absent) {
                ctx.error_at(
                    &at("postgresql_databases", i, "owner"),
                    format!(
                        "database `{}` is owned by `{owner}`, which is marked absent: change the owner or drop the database too",
                        d.name
                    ),
                );
            }
        }
        let own_image = !c.docker_image.is_empty() || !c.docker_image_postgres.is_empty();
        for (j, e) in d.extensions.iter().enumerate() {
            let package = super::objects::extension_package(&e.name, c.postgresql_version);
            if c.install_method == super::InstallMethod::Docker
                && !own_image
                && let Some(p) = package.filter(|p| !p.ends_with("-pgvector"))
            {
                let mut at = at("postgresql_databases", i, "extensions");
                at.push(Seg::Index(j));
                ctx.error_at(
                    &at,
                    format!(
                        "extension `{}` needs the package {p}, which pgha's image does not hold (it has \
                         PostgreSQL's contrib extensions and pgvector): build an image with it and set docker_image_postgres",
                        e.name
                    ),
                );
            }
            if !e.absent
                && !d.absent
                && PRELOADED.contains(&e.name.as_str())
                && !preload.contains(&e.name)
            {
                let mut p = at("postgresql_databases", i, "extensions");
                p.push(Seg::Index(j));
                ctx.error_at(
                    &p,
                    format!(
                        "extension `{}` works only when PostgreSQL loads it at start: add it to                          postgresql_parameters.shared_preload_libraries (a rolling restart on the next deploy)",
                        e.name
                    ),
                );
            }
        }
    }
}

/// A PostgreSQL version Debian 13 does not ship needs its repository.
fn pg_version(ctx: &mut Ctx, v: &V) {
    let V { c, def_path, .. } = *v;
    if c.postgresql_version != 17 && c.apt_sources.is_empty() {
        ctx.warn_at(
            Some(&def_path("postgresql_version")),
            format!(
                "postgresql_version is {}: Debian 13 ships only PostgreSQL 17; add the PGDG repository to apt_sources \
                 (deb http://apt.postgresql.org/pub/repos/apt trixie-pgdg main) or the packages will not be found",
                c.postgresql_version
            ),
        );
    }
}

/// Backups: one repository host, sane retention and queue bounds.
/// A setting's name, its value, the characters it may hold, and what it must be.
type WordCheck<'a> = (&'a str, &'a str, fn(char) -> bool, &'a str);

/// An S3 repository: endpoint and bucket given, each value one safe word (they
/// go into pgBackRest's configuration file as they are).
fn s3(ctx: &mut Ctx, v: &V) {
    let c = v.c;
    let checks: [WordCheck; 3] = [
        (
            "backup_s3_endpoint",
            &c.backup_s3_endpoint,
            |ch| ch.is_ascii_alphanumeric() || ".-:[]".contains(ch),
            "a host name or an address, e.g. s3.eu-west-1.amazonaws.com (the port is `backup_s3_port`)",
        ),
        (
            "backup_s3_bucket",
            &c.backup_s3_bucket,
            |ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ".-".contains(ch),
            "an existing bucket's name: lower-case letters, digits, dots and dashes",
        ),
        (
            "backup_s3_region",
            &c.backup_s3_region,
            |ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_',
            "a region such as us-east-1 (most self-hosted servers accept any)",
        ),
    ];
    for (key, value, ok, what) in checks {
        if value.is_empty() {
            ctx.error_at(
                &(v.def_path)(key),
                format!("`backup_repo_type: s3` needs `{key}`: {what}"),
            );
        } else if !value.chars().all(ok) {
            ctx.error_at(
                &(v.def_path)(key),
                format!("`{key}` is {value:?}: it must be {what}"),
            );
        }
    }
}

fn backup(ctx: &mut Ctx, v: &V) {
    let V {
        c,
        def_path,
        check_membership,
        ..
    } = *v;
    if !c.backup_enabled {
        return;
    }
    let hosts = v.members("backup");
    let how = "list the repository's host under `all: children: backup: hosts:` (a router may double as it), \
               or set `backup_enabled: false` to run without backups";
    if check_membership && hosts.is_empty() {
        match v.group_path("backup") {
            Some(p) => ctx.error_at(&p, format!("group `backup` has no hosts: {how}")),
            None => ctx.error(format!(
                "backups are on (the default) but group `backup` is missing: {how}"
            )),
        }
    }
    if hosts.len() > 1 {
        let at = v.group_path("backup").unwrap_or_default();
        ctx.error_at(
            &at,
            format!(
                "group `backup` has {} hosts ({}): the repository lives on one host; keep one",
                hosts.len(),
                hosts.join(", ")
            ),
        );
    }
    if let Some(h) = hosts.first()
        && v.members("db").contains(h)
    {
        let at = v.group_path("backup");
        ctx.warn_at(
            at.as_deref(),
            format!(
                "the backup repository is on `{h}`, a db host: a repository on a cluster member is not a backup \
                 (losing `{h}` loses a member and every backup); use another host"
            ),
        );
    }
    if c.backup_retention_full == 1 {
        ctx.warn_at(
            Some(&def_path("backup_retention_full")),
            "`backup_retention_full` is 1: the recovery window starts at the newest full backup, and a damaged one \
             leaves nothing to restore; keep 2 or more",
        );
    }
    let sched = [
        &c.backup_schedule_full,
        &c.backup_schedule_diff,
        &c.backup_schedule_incr,
    ];
    if c.backup_schedule_full.is_empty() && sched.iter().any(|s| !s.is_empty()) {
        ctx.warn_at(
            Some(&def_path("backup_schedule_full")),
            "no full backup is scheduled but differential or incremental ones are: pgBackRest turns each into \
             a full one while none exists, and the chain of increments then grows until you run `pgha backup run --type full`",
        );
    }
    let queue = super::convert::size_bytes(&c.backup_archive_push_queue_max).unwrap_or(0);
    if queue < 16 * 1024 * 1024 {
        ctx.error_at(
            &def_path("backup_archive_push_queue_max"),
            format!(
                "`backup_archive_push_queue_max` is {}: it must hold at least one WAL segment (16MiB); \
                 the default is 4GiB",
                c.backup_archive_push_queue_max
            ),
        );
    }
    if c.s3() {
        s3(ctx, v);
    }
}

/// Where a host is listed in the router group (for the db+router message).
fn router_entry(tree: &Tree, host: &str) -> Vec<Seg> {
    tree.hosts
        .iter()
        .find(|h| h.name == host)
        .and_then(|h| {
            h.seen
                .iter()
                .find(|(g, _)| g == "router")
                .or(h.seen.first())
                .map(|(_, p)| p.clone())
        })
        .unwrap_or_default()
}

/// Where a host's address is set, else where the host is listed.
fn address_path(tree: &Tree, host: &str) -> Vec<Seg> {
    let Some(h) = tree.hosts.iter().find(|h| h.name == host) else {
        return Vec::new();
    };
    h.vars
        .iter()
        .rev()
        .map(|&d| &tree.defs[d])
        .find(|d| vars::spec(&d.key).is_some_and(|s| s.canonical == "address"))
        .map(|d| d.path.clone())
        .unwrap_or_else(|| h.seen.first().map(|(_, p)| p.clone()).unwrap_or_default())
}

/// One monitoring host; receivers complete enough for Alertmanager to use.
fn monitoring(ctx: &mut Ctx, v: &V) {
    let V { c, def_path, .. } = *v;
    if !c.monitoring_enabled {
        return;
    }
    let hosts = v.members("monitor");
    if hosts.len() > 1 {
        let at = v.group_path("monitor").unwrap_or_default();
        ctx.error_at(
            &at,
            format!(
                "group `monitor` has {} hosts ({}): Prometheus and Alertmanager run on one host; keep one",
                hosts.len(),
                hosts.join(", ")
            ),
        );
    }
    if !c.alert_email_to.is_empty() {
        for (key, val) in [
            ("alert_email_from", &c.alert_email_from),
            ("alert_smtp_smarthost", &c.alert_smtp_smarthost),
        ] {
            if val.is_empty() {
                ctx.error_at(
                    &def_path("alert_email_to"),
                    format!(
                        "`alert_email_to` is set but `{key}` is not: email alerts need the sender \
                         (alert_email_from) and the SMTP relay as host:port (alert_smtp_smarthost)"
                    ),
                );
            }
        }
    }
    let smarthost = &c.alert_smtp_smarthost;
    if !smarthost.is_empty()
        && smarthost
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        ctx.error_at(
            &def_path("alert_smtp_smarthost"),
            format!("`alert_smtp_smarthost` is {smarthost:?}: write the SMTP relay as host:port, like mail.internal:25"),
        );
    }
    for (key, val) in [
        ("alert_email_to", &c.alert_email_to),
        ("alert_email_from", &c.alert_email_from),
    ] {
        if !val.is_empty() && (!val.contains('@') || val.contains(['"', '\\', '\n'])) {
            ctx.error_at(
                &def_path(key),
                format!("`{key}` is {val:?}: write an email address, like dba@example.com"),
            );
        }
    }
}

/// PgBouncer closes a server connection idle this long (`server_idle_timeout`).
pub const PGBOUNCER_SERVER_IDLE_SECS: u64 = 600;

/// Milliseconds of an HAProxy time (`30m`, `4s`, `500`: milliseconds), as the
/// inventory's values are already checked.
fn haproxy_millis(s: &str) -> u64 {
    let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
    let n: u64 = s[..digits].parse().unwrap_or(0);
    match &s[digits..] {
        "us" => n / 1000,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => n,
    }
}

/// The poolers' server connections pass through HAProxy's write port: HAProxy
/// must not cut one PgBouncer still keeps for reuse.
fn pooling(ctx: &mut Ctx, v: &V) {
    let V { c, def_path, .. } = *v;
    if !c.pgbouncer_enabled {
        return;
    }
    for (key, val) in [
        ("haproxy_timeout_client", &c.haproxy_timeout_client),
        ("haproxy_timeout_server", &c.haproxy_timeout_server),
    ] {
        if haproxy_millis(val) <= PGBOUNCER_SERVER_IDLE_SECS * 1000 {
            ctx.error_at(
                &def_path(key),
                format!(
                    "`{key}` is {val}: with pgbouncer_enabled, HAProxy would cut PgBouncer's idle \
                     server connections (PgBouncer keeps them {PGBOUNCER_SERVER_IDLE_SECS} s); \
                     make it longer than {}m, like 30m",
                    PGBOUNCER_SERVER_IDLE_SECS / 60
                ),
            );
        }
    }
}
