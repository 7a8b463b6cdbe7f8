//! Read-only facts about a host, gathered by ONE remote script per host: OS, clock,
//! disk, installed packages, managed files (checksum, owner, mode), units, listening
//! ports, data directories and, on a running primary, the roles pgha manages.
//! The script is generated and its output parsed by pure functions (unit-tested).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

use crate::ssh::shell_quote;

/// What to ask a host about.
#[derive(Debug, Clone, Default)]
pub struct FactsRequest {
    pub packages: Vec<String>,
    pub files: Vec<String>,
    pub units: Vec<String>,
    /// install_method docker: (service, container) pairs. A container reads as its
    /// service's unit (active when it runs, enabled when it exists) and, with its
    /// spec label, image and start time, as a `ContainerFact`.
    pub containers: Vec<(String, String)>,
    /// install_method docker: image references whose local id to read.
    pub images: Vec<String>,
    /// User names whose uid to read (the image contract's users).
    pub users: Vec<String>,
    pub paths: Vec<String>,
    /// Directories whose owner, group and mode to read.
    pub dirs: Vec<String>,
    /// Whole unit names (timers, template instances) read beside `units`, with
    /// whether systemd needs a reload to see their files.
    pub systemd_units: Vec<String>,
    /// Files asked whether they start with pgha's header ("Managed by pgha").
    pub marked: Vec<String>,
    /// Files whose `read_once` lines (prefixes) are taken out for a second sha256.
    pub read_once: Vec<(String, Vec<String>)>,
    /// PostgreSQL port and role/database names to read when this host runs the primary.
    pub sql: Option<SqlFactsRequest>,
    /// (service, variable names): which of these the service's running main
    /// process was started with (`NAME=value`), read from /proc.
    pub process_env: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct SqlFactsRequest {
    pub port: u16,
    /// A shell test that PostgreSQL can be asked locally, and the local psql
    /// command (they differ by install method).
    pub reachable: String,
    pub psql: String,
    pub roles: Vec<String>,
    pub databases: Vec<String>,
    /// Databases whose extensions are read (one psql each, only where asked).
    pub extension_databases: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFact {
    pub sha256: String,
    /// sha256 of the lines left once the `read_once` lines are taken out (when asked).
    pub read_once_sha256: Option<String>,
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFact {
    /// `systemctl is-active`: active, inactive, failed, activating...
    pub active: String,
    /// `systemctl is-enabled`: enabled, disabled, not-found...
    pub enabled: String,
}

impl UnitFact {
    pub fn is_active(&self) -> bool {
        self.active == "active"
    }
    pub fn is_enabled(&self) -> bool {
        self.enabled == "enabled"
    }
}

/// A unit asked by its whole name (`FactsRequest::systemd_units`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdUnitFact {
    /// loaded, not-found, masked...
    pub load: String,
    pub active: String,
    pub enabled: String,
    /// Its file changed since systemd last read it (`NeedDaemonReload`).
    pub needs_reload: bool,
}

/// A component's container (install_method docker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFact {
    /// Running, and not in Docker's restart loop (a crashing container is not).
    pub running: bool,
    /// The spec hash it was created from (its label).
    pub spec: String,
    /// The id of the image it runs.
    pub image_id: String,
    pub started_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFact {
    pub name: String,
    /// The stored password verifier (SCRAM), empty when none. Never printed.
    pub verifier: String,
    pub can_login: bool,
    pub pg_monitor: bool,
    /// The attributes besides LOGIN that are on, as `objects::ATTRIBUTES` words, sorted.
    pub attributes: Vec<String>,
    pub connection_limit: i64,
    /// The roles it is a direct member of, sorted.
    pub member_of: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseFact {
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// Sessions connected to it when the facts were read.
    pub connections: u64,
    /// Its extensions (read only for the databases asked).
    pub extensions: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub os_id: String,
    pub os_version: String,
    pub os_codename: String,
    /// The host's clock (seconds since the epoch) when the script ran.
    pub clock: f64,
    pub disk_free_kib: u64,
    /// Installed packages and versions.
    pub packages: BTreeMap<String, String>,
    pub files: BTreeMap<String, FileFact>,
    pub units: BTreeMap<String, UnitFact>,
    /// install_method docker: containers by service, and image ids by reference.
    pub containers: BTreeMap<String, ContainerFact>,
    pub images: BTreeMap<String, String>,
    /// uid of each asked-for user that exists.
    pub users: BTreeMap<String, u32>,
    /// Listening TCP port -> process name.
    pub listening: BTreeMap<u16, String>,
    pub existing_paths: BTreeSet<String>,
    /// Those of the asked directories that exist: owner, group and mode (no sha256).
    pub dirs: BTreeMap<String, FileFact>,
    pub systemd_units: BTreeMap<String, SystemdUnitFact>,
    /// Those of the asked files that start with pgha's header.
    pub marked_paths: BTreeSet<String>,
    /// Age in seconds of apt's newest package list; None when there are none.
    pub apt_lists_age: Option<u64>,
    /// Some when this host runs the PostgreSQL primary (not in recovery).
    pub primary_sql: Option<SqlFacts>,
    /// Asked services whose main process runs: the `NAME=value` settings among the
    /// asked names it was started with.
    pub process_env: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct SqlFacts {
    pub roles: BTreeMap<String, RoleFact>,
    pub databases: BTreeMap<String, DatabaseFact>,
    /// The comment on PgBouncer's password lookup function (its version), when
    /// the function exists.
    pub pooler_lookup: Option<String>,
}

impl HostFacts {
    pub fn unit(&self, name: &str) -> UnitFact {
        self.units.get(name).cloned().unwrap_or(UnitFact {
            active: "unknown".into(),
            enabled: "not-found".into(),
        })
    }
    pub fn exists(&self, path: &str) -> bool {
        self.existing_paths.contains(path)
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn words(items: &[String]) -> String {
    items
        .iter()
        .map(|s| shell_quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The read-only script. Every line of its output is `kind<TAB>fields...`.
// Long by design: the facts script is one shell text, built section by section.
pub fn script(req: &FactsRequest) -> String {
    let mut s = String::from(
        r#"set +e
export LC_ALL=C
T="$(printf '\t')"
. /etc/os-release 2>/dev/null
printf 'os\t%s\t%s\t%s\n' "$ID" "$VERSION_ID" "$VERSION_CODENAME"
printf 'clock\t%s\n' "$(date +%s.%N)"
printf 'disk\t%s\n' "$(df -Pk /var/lib 2>/dev/null | awk 'NR==2{print $4}')"
newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -printf '%T@\n' 2>/dev/null | sort -n | tail -1)
printf 'aptlists\t%s\t%s\n' "${newest%.*}" "$(date +%s)"
ss -ltnpH 2>/dev/null | awk '{print "listen\t" $4 "\t" $6}'
"#,
    );
    if !req.packages.is_empty() {
        s.push_str(&format!(
            "dpkg-query -W -f='pkg\\t${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' {} 2>/dev/null\n",
            words(&req.packages)
        ));
    }
    if !req.files.is_empty() {
        // One sha256sum and one stat for all files (a fork per file adds up to a
        // good part of a no-op run). Managed paths hold no whitespace.
        s.push_str(&format!(
            "(set --; for f in {}; do [ -f \"$f\" ] && set -- \"$@\" \"$f\"; done\n\
             [ $# -gt 0 ] && {{ sha256sum -- \"$@\" | awk -v OFS=\"$T\" '{{print \"filesum\", $2, $1}}'; \
             stat -c \"filestat$T%n$T%U$T%G$T%a\" -- \"$@\"; }})\n",
            words(&req.files)
        ));
    }
    for (path, prefixes) in &req.read_once {
        let patterns: String = prefixes
            .iter()
            .map(|p| format!(" -e {}", shell_quote(&format!("^{p}"))))
            .collect();
        s.push_str(&format!(
            "if [ -f {f} ]; then printf 'readonce\t%s\t%s\n' {f} \"$(grep -v{patterns} {f} | sha256sum | cut -d' ' -f1)\"; fi\n",
            f = shell_quote(path)
        ));
    }
    if !req.units.is_empty() || !req.systemd_units.is_empty() {
        // One systemctl for all units, services first: its blocks come in the order
        // asked.
        let names = req
            .units
            .iter()
            .chain(&req.systemd_units)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        let asked = req
            .units
            .iter()
            .map(|u| shell_quote(&format!("{u}.service")))
            .chain(req.systemd_units.iter().map(|u| shell_quote(u)))
            .collect::<Vec<_>>()
            .join(" ");
        s.push_str(&format!(
            "systemctl show -p LoadState -p ActiveState -p UnitFileState -p NeedDaemonReload -- {asked} 2>/dev/null | \
             awk -F= -v OFS=\"$T\" -v names={names} -v services={services} '\n\
             function emit() {{ if (seen) {{ i++; if (i <= services) print \"unit\", n[i], act, (load == \"not-found\" ? \"not-found\" : ufs); else print \"sdunit\", n[i], load, act, ufs, reload }}; seen = 0; load = \"\"; act = \"\"; ufs = \"\"; reload = \"\" }}\n\
             BEGIN {{ split(names, n, \" \") }}\n\
             {{ if ($0 == \"\") emit(); else {{ seen = 1; if ($1 == \"LoadState\") load = $2; else if ($1 == \"ActiveState\") act = $2; else if ($1 == \"UnitFileState\") ufs = $2; else if ($1 == \"NeedDaemonReload\") reload = $2 }} }}\n\
             END {{ emit() }}'\n",
            names = shell_quote(&names),
            services = req.units.len(),
        ));
    }
    for (service, name) in &req.containers {
        s.push_str(&format!(
            "c=$(docker inspect -f '{{{{and .State.Running (not .State.Restarting)}}}}\t{{{{index .Config.Labels \"{label}\"}}}}\t{{{{.Image}}}}\t{{{{.State.StartedAt}}}}' {name} 2>/dev/null) && \
             printf 'container\\t%s\\t%s\\n' {service} \"$c\"\n",
            label = super::desired::SPEC_LABEL,
            name = shell_quote(name),
            service = shell_quote(service),
        ));
    }
    if !req.users.is_empty() {
        s.push_str(&format!(
            "for u in {}; do i=$(id -u \"$u\" 2>/dev/null) && printf 'user\\t%s\\t%s\\n' \"$u\" \"$i\"; done\n",
            words(&req.users)
        ));
    }
    for r in &req.images {
        s.push_str(&format!(
            "i=$(docker image inspect -f '{{{{.Id}}}}' {r} 2>/dev/null) && printf 'image\\t%s\\t%s\\n' {r} \"$i\"\n",
            r = shell_quote(r),
        ));
    }
    if !req.paths.is_empty() {
        s.push_str(&format!(
            "for p in {}; do [ -e \"$p\" ] && printf 'path\\t%s\\n' \"$p\"; done\n",
            words(&req.paths)
        ));
    }
    if !req.dirs.is_empty() {
        s.push_str(&format!(
            "(set --; for d in {}; do [ -d \"$d\" ] && set -- \"$@\" \"$d\"; done\n\
             [ $# -gt 0 ] && stat -c \"dirstat$T%n$T%U$T%G$T%a\" -- \"$@\")\n",
            words(&req.dirs)
        ));
    }
    if !req.marked.is_empty() {
        s.push_str(&format!(
            "for p in {}; do head -c 512 \"$p\" 2>/dev/null | grep -q 'Managed by pgha' && printf 'marked\\t%s\\n' \"$p\"; done\n",
            words(&req.marked)
        ));
    }
    for (service, names) in &req.process_env {
        let pattern: String = names
            .iter()
            .map(|n| format!(" -e {}", shell_quote(&format!("^{n}="))))
            .collect();
        // `procenv<TAB>service` alone: it runs, with none of them.
        s.push_str(&format!(
            "p=$(systemctl show -p MainPID --value {unit} 2>/dev/null); if [ -n \"$p\" ] && [ \"$p\" != 0 ] && [ -r /proc/$p/environ ]; then \
             printf 'procenv\\t%s\\n' {svc}; tr '\\0' '\\n' < /proc/$p/environ | grep{pattern} | sed \"s/^/procenv$T\"{svc}\"$T/\"; fi\n",
            unit = shell_quote(&format!("{service}.service")),
            svc = shell_quote(service),
        ));
    }
    if let Some(sql) = &req.sql {
        let roles = sql
            .roles
            .iter()
            .map(|r| sql_literal(r))
            .collect::<Vec<_>>()
            .join(",");
        let dbs = sql
            .databases
            .iter()
            .map(|r| sql_literal(r))
            .collect::<Vec<_>>()
            .join(",");
        // One psql (it is the slowest part of a primary's facts): every statement
        // answers only where PostgreSQL is not in recovery.
        let q = format!(
            "select 'primary' where not pg_is_in_recovery(); \
             select 'role', a.rolname, coalesce(a.rolpassword, ''), a.rolcanlogin, pg_has_role(a.oid, 'pg_monitor', 'member'), \
               concat_ws(',', case when a.rolbypassrls then 'bypassrls' end, case when a.rolcreatedb then 'createdb' end, \
                 case when a.rolcreaterole then 'createrole' end, case when not a.rolinherit then 'noinherit' end, \
                 case when a.rolreplication then 'replication' end, case when a.rolsuper then 'superuser' end), \
               a.rolconnlimit, \
               coalesce((select string_agg(distinct g.rolname, ',' order by g.rolname) from pg_auth_members m join pg_roles g on g.oid = m.roleid where m.member = a.oid), '') \
               from pg_authid a where not pg_is_in_recovery() and a.rolname in ({roles}); \
             select 'database', d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, \
               (select count(*) from pg_stat_activity s where s.datname = d.datname) \
               from pg_database d where not pg_is_in_recovery() and d.datname in ({dbs}); \
             select 'poolerfn', coalesce(obj_description(p.oid, 'pg_proc'), '') from pg_proc p join pg_namespace n on n.oid = p.pronamespace \
               where not pg_is_in_recovery() and n.nspname = 'pgha' and p.proname = 'pgbouncer_lookup';"
        );
        s.push_str(&format!(
            "if {reachable}; then\n  {psql} -A -t -q -F \"$T\" -c {q} 2>/dev/null\nfi\n",
            reachable = sql.reachable,
            psql = sql.psql,
            q = shell_quote(&q)
        ));
        if !sql.extension_databases.is_empty() {
            let q = "select 'ext', current_database(), extname from pg_extension where not pg_is_in_recovery()";
            s.push_str(&format!(
                "if {reachable}; then\n  for d in {dbs}; do {psql} -d \"$d\" -A -t -q -F \"$T\" -c {q} 2>/dev/null; done\nfi\n",
                reachable = sql.reachable,
                dbs = words(&sql.extension_databases),
                psql = sql.psql,
                q = shell_quote(q)
            ));
        }
    }
    s.push_str("exit 0\n");
    s
}

/// Parse the script's output.
// Long by design: one pass over the script's sections, in the order it prints them.
pub fn parse(host: &str, out: &str) -> Result<HostFacts> {
    let mut f = HostFacts::default();
    let mut saw_os = false;
    for line in out.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        match cols.as_slice() {
            ["os", id, ver, code] => {
                saw_os = true;
                f.os_id = id.to_string();
                f.os_version = ver.to_string();
                f.os_codename = code.to_string();
            }
            ["clock", t] => f.clock = t.parse().unwrap_or(0.0),
            ["disk", kib] => f.disk_free_kib = kib.parse().unwrap_or(0),
            ["aptlists", newest, now] => {
                if let (Ok(n), Ok(t)) = (newest.parse::<u64>(), now.parse::<u64>()) {
                    f.apt_lists_age = Some(t.saturating_sub(n));
                }
            }
            ["listen", local, process] | ["listen", local, process, ..] => {
                if let Some(port) = local.rsplit(':').next().and_then(|p| p.parse().ok()) {
                    let name = process.split('"').nth(1).unwrap_or("").to_string();
                    f.listening.insert(port, name);
                }
            }
            ["listen", local] => {
                if let Some(port) = local.rsplit(':').next().and_then(|p| p.parse().ok()) {
                    f.listening.insert(port, String::new());
                }
            }
            // "ii " = installed; "rc " (config files only) and others are not.
            ["pkg", name, version, status]
                if status.starts_with("ii") || status.starts_with("hi") =>
            {
                f.packages.insert(name.to_string(), version.to_string());
            }
            ["readonce", path, sha] => {
                f.files
                    .entry(path.to_string())
                    .or_default()
                    .read_once_sha256 = Some(sha.to_string());
            }
            ["filesum", path, sha] => {
                f.files.entry(path.to_string()).or_default().sha256 = sha.to_string();
            }
            ["filestat", path, owner, group, mode] => {
                let e = f.files.entry(path.to_string()).or_default();
                e.owner = owner.to_string();
                e.group = group.to_string();
                e.mode = u32::from_str_radix(mode, 8).unwrap_or(0);
            }
            ["procenv", service] => {
                f.process_env.entry(service.to_string()).or_default();
            }
            ["procenv", service, setting, rest @ ..] => {
                // A value may hold tabs: the line's rest is the setting.
                let mut v = setting.to_string();
                for r in rest {
                    v.push('\t');
                    v.push_str(r);
                }
                f.process_env
                    .entry(service.to_string())
                    .or_default()
                    .insert(v);
            }
            ["unit", name, active, enabled] => {
                f.units.insert(
                    name.to_string(),
                    UnitFact {
                        active: active.to_string(),
                        enabled: enabled.to_string(),
                    },
                );
            }
            ["dirstat", path, owner, group, mode] => {
                f.dirs.insert(
                    path.to_string(),
                    FileFact {
                        owner: owner.to_string(),
                        group: group.to_string(),
                        mode: u32::from_str_radix(mode, 8).unwrap_or(0),
                        ..Default::default()
                    },
                );
            }
            ["sdunit", name, load, active, enabled, reload] => {
                f.systemd_units.insert(
                    name.to_string(),
                    SystemdUnitFact {
                        load: load.to_string(),
                        active: active.to_string(),
                        enabled: enabled.to_string(),
                        needs_reload: *reload != "no",
                    },
                );
            }
            ["path", p] => {
                f.existing_paths.insert(p.to_string());
            }
            ["marked", p] => {
                f.marked_paths.insert(p.to_string());
            }
            ["container", service, running, spec, image, started] => {
                let running = *running == "true";
                f.containers.insert(
                    service.to_string(),
                    ContainerFact {
                        running,
                        spec: spec.to_string(),
                        image_id: image.to_string(),
                        started_at: started.to_string(),
                    },
                );
                f.units.insert(
                    service.to_string(),
                    UnitFact {
                        active: if running { "active" } else { "inactive" }.into(),
                        enabled: "enabled".into(),
                    },
                );
            }
            ["user", name, uid] => {
                if let Ok(uid) = uid.parse() {
                    f.users.insert(name.to_string(), uid);
                }
            }
            ["image", reference, id] => {
                f.images.insert(reference.to_string(), id.to_string());
            }
            ["primary"] => f.primary_sql = Some(SqlFacts::default()),
            ["poolerfn", comment] => {
                if let Some(sql) = f.primary_sql.as_mut() {
                    sql.pooler_lookup = Some(comment.to_string());
                }
            }
            [
                "role",
                name,
                verifier,
                login,
                monitor,
                attributes,
                limit,
                member_of,
            ] => {
                let list = |s: &str| -> Vec<String> {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_string)
                        .collect()
                };
                if let Some(sql) = f.primary_sql.as_mut() {
                    sql.roles.insert(
                        name.to_string(),
                        RoleFact {
                            name: name.to_string(),
                            verifier: verifier.to_string(),
                            can_login: *login == "t",
                            pg_monitor: *monitor == "t",
                            attributes: list(attributes),
                            connection_limit: limit.parse().unwrap_or(-1),
                            member_of: list(member_of),
                        },
                    );
                }
            }
            [
                "database",
                name,
                owner,
                encoding,
                collate,
                ctype,
                connections,
            ] => {
                if let Some(sql) = f.primary_sql.as_mut() {
                    let d = sql.databases.entry(name.to_string()).or_default();
                    d.owner = owner.to_string();
                    d.encoding = encoding.to_string();
                    d.collate = collate.to_string();
                    d.ctype = ctype.to_string();
                    d.connections = connections.parse().unwrap_or(0);
                }
            }
            ["ext", db, name] => {
                if let Some(d) = f
                    .primary_sql
                    .as_mut()
                    .and_then(|sql| sql.databases.get_mut(*db))
                {
                    d.extensions.insert(name.to_string());
                }
            }
            _ => {}
        }
    }
    if !saw_os {
        bail!("{host}: the facts script printed nothing recognisable (is /bin/sh a POSIX shell?)");
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "os\tdebian\t13\ttrixie\n\
clock\t1763762400.250000000\n\
disk\t52428800\n\
aptlists\t1763760000\t1763762400\n\
listen\t0.0.0.0:22\tusers:((\"sshd\",pid=50,fd=3))\n\
listen\t10.0.0.11:2379\tusers:((\"etcd\",pid=99,fd=7))\n\
listen\t[::]:22\tusers:((\"sshd\",pid=50,fd=4))\n\
pkg\tetcd-server\t3.5.16-4\tii \n\
pkg\thaproxy\t3.0.11-1\trc \n\
filesum\t/etc/default/etcd\tabc123\n\
filestat\t/etc/default/etcd\troot\troot\t644\n\
unit\tetcd\tactive\tenabled\n\
unit\tpatroni\tinactive\tdisabled\n\
path\t/var/lib/etcd/main/member\n\
marked\t/etc/pgbouncer/pgbouncer.ini\n\
primary\n\
role\tpgha_monitor\tSCRAM-SHA-256$4096:xx\tt\tt\t\t-1\t\n\
role\treporting\tSCRAM-SHA-256$4096:yy\tt\tf\tcreatedb,noinherit\t5\tpg_read_all_data,readers\n\
database\tapp\tapp\tUTF8\tC.UTF-8\tC.UTF-8\t3\n\
ext\tapp\tplpgsql\n\
ext\tapp\tvector\n";

    #[test]
    fn parses_every_kind_of_line() {
        let f = parse("db1", SAMPLE).unwrap();
        assert_eq!((f.os_id.as_str(), f.os_version.as_str()), ("debian", "13"));
        assert_eq!(f.disk_free_kib, 52428800);
        assert_eq!(f.apt_lists_age, Some(2400));
        assert_eq!(f.listening.get(&2379).map(String::as_str), Some("etcd"));
        assert_eq!(f.listening.get(&22).map(String::as_str), Some("sshd"));
        assert_eq!(
            f.packages.get("etcd-server").map(String::as_str),
            Some("3.5.16-4")
        );
        assert!(!f.packages.contains_key("haproxy"), "rc is not installed");
        assert_eq!(f.files["/etc/default/etcd"].mode, 0o644);
        assert!(f.unit("etcd").is_active() && f.unit("etcd").is_enabled());
        assert!(!f.unit("patroni").is_active());
        assert_eq!(f.unit("nope").enabled, "not-found");
        assert!(f.exists("/var/lib/etcd/main/member"));
        assert!(f.marked_paths.contains("/etc/pgbouncer/pgbouncer.ini"));
        let sql = f.primary_sql.unwrap();
        assert!(sql.roles["pgha_monitor"].pg_monitor);
        assert_eq!(sql.databases["app"].owner, "app");
        assert_eq!(sql.databases["app"].connections, 3);
        assert_eq!(sql.databases["app"].encoding, "UTF8");
        assert!(sql.databases["app"].extensions.contains("vector"));
        let r = &sql.roles["reporting"];
        assert_eq!(r.attributes, ["createdb", "noinherit"]);
        assert_eq!(r.connection_limit, 5);
        assert_eq!(r.member_of, ["pg_read_all_data", "readers"]);
        assert!(sql.roles["pgha_monitor"].member_of.is_empty());
    }

    #[test]
    fn a_process_environment_is_read_only_where_asked_and_running() {
        let out = "os\tdebian\t13\ttrixie\n\
procenv\tpatroni\n\
procenv\tpatroni\tPYTHONPATH=/etc/patroni/python\n\
procenv\tetcd\n";
        let f = parse("db1", out).unwrap();
        assert_eq!(
            f.process_env["patroni"],
            BTreeSet::from(["PYTHONPATH=/etc/patroni/python".to_string()])
        );
        assert!(f.process_env["etcd"].is_empty(), "runs, without any");
        assert!(!f.process_env.contains_key("haproxy"), "not read");
        let s = script(&FactsRequest {
            process_env: vec![("patroni".into(), vec!["PYTHONPATH".into()])],
            ..Default::default()
        });
        assert!(
            s.contains("systemctl show -p MainPID --value patroni.service"),
            "{s}"
        );
        assert!(s.contains("grep -e '^PYTHONPATH='"), "{s}");
        assert!(!script(&FactsRequest::default()).contains("procenv"));
    }

    #[test]
    fn a_container_reads_as_its_unit_and_images_by_reference() {
        let out = "os\tdebian\t13\ttrixie\n\
container\tetcd\ttrue\tabc123\tsha256:1\t2026-12-01T10:00:00Z\n\
container\tpatroni\tfalse\tdef\tsha256:1\t0001-01-01T00:00:00Z\n\
image\tpgha-stack:abc\tsha256:1\n\
user\tpostgres\t470\n";
        let f = parse("db1", out).unwrap();
        assert!(f.unit("etcd").is_active() && f.unit("etcd").is_enabled());
        assert!(!f.unit("patroni").is_active() && f.unit("patroni").is_enabled());
        assert_eq!(f.containers["etcd"].spec, "abc123");
        assert_eq!(f.containers["etcd"].image_id, "sha256:1");
        assert_eq!(f.images["pgha-stack:abc"], "sha256:1");
        assert_eq!(f.users["postgres"], 470);
        assert!(!f.unit("exporter").is_enabled(), "no container: not found");
    }

    #[test]
    fn empty_output_is_an_error_naming_the_host() {
        let e = parse("db2", "").unwrap_err();
        assert!(e.to_string().starts_with("db2:"));
    }

    /// The facts script for `req` run on this machine, parsed.
    fn read_here(req: &FactsRequest) -> HostFacts {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script(req))
            .output()
            .unwrap();
        parse("local", &String::from_utf8_lossy(&out.stdout)).unwrap()
    }

    #[test]
    fn marked_files_are_those_with_pgha_header() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("ours.ini"), dir.path().join("theirs.ini"));
        std::fs::write(&ours, "; Managed by pgha: PgBouncer on router1\n").unwrap();
        std::fs::write(&theirs, "[databases]\n").unwrap();
        let paths: Vec<String> = [&ours, &theirs, &dir.path().join("absent")]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let f = read_here(&FactsRequest {
            marked: paths.clone(),
            ..Default::default()
        });
        assert_eq!(
            f.marked_paths.into_iter().collect::<Vec<_>>(),
            vec![paths[0].clone()]
        );
    }

    #[test]
    fn directories_read_with_owner_and_mode_only_where_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("spool");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let asked: Vec<String> = [&sub, &file, &dir.path().join("absent")]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let f = read_here(&FactsRequest {
            dirs: asked.clone(),
            ..Default::default()
        });
        assert_eq!(f.dirs.keys().collect::<Vec<_>>(), vec![&asked[0]]);
        assert_eq!(f.dirs[&asked[0]].mode, 0o750);
        assert!(!f.dirs[&asked[0]].owner.is_empty());
    }

    #[test]
    fn whole_unit_names_follow_the_services_in_one_systemctl() {
        let s = script(&FactsRequest {
            units: vec!["patroni".into()],
            systemd_units: vec!["pgha-backup-full.timer".into()],
            ..Default::default()
        });
        assert_eq!(s.matches("systemctl show").count(), 1, "{s}");
        assert!(
            s.contains("-- patroni.service pgha-backup-full.timer "),
            "{s}"
        );
        assert!(s.contains("NeedDaemonReload"), "{s}");
        let f = parse(
            "db1",
            "os\tdebian\t13\ttrixie\n\
             unit\tpatroni\tactive\tenabled\n\
             sdunit\tpgha-backup-full.timer\tloaded\tactive\tenabled\tno\n\
             sdunit\tpgha-backup@full.service\tloaded\tinactive\t\tyes\n",
        )
        .unwrap();
        assert!(f.unit("patroni").is_active());
        let t = &f.systemd_units["pgha-backup-full.timer"];
        assert_eq!(
            (t.load.as_str(), t.active.as_str(), t.enabled.as_str()),
            ("loaded", "active", "enabled")
        );
        assert!(!t.needs_reload);
        assert!(f.systemd_units["pgha-backup@full.service"].needs_reload);
    }

    #[test]
    fn script_quotes_names_and_reads_roles_only_on_a_primary() {
        let s = script(&FactsRequest {
            packages: vec!["postgresql-17".into()],
            files: vec!["/etc/patroni/config.yml".into()],
            units: vec!["patroni".into()],
            containers: vec![("etcd".into(), "pgha-etcd".into())],
            images: vec!["pgha-stack:abc".into()],
            users: vec!["postgres".into()],
            paths: vec![],
            dirs: vec![],
            systemd_units: vec![],
            marked: vec![],
            read_once: vec![],
            process_env: vec![],
            sql: Some(SqlFactsRequest {
                port: 5432,
                reachable: "true".into(),
                psql: "psql -X".into(),
                roles: vec!["o'brien".into()],
                databases: vec!["app".into()],
                extension_databases: vec!["app".into()],
            }),
        });
        assert!(s.contains("dpkg-query"));
        assert!(s.contains("pg_is_in_recovery"));
        assert!(
            s.contains(r"o'\'''\''brien"),
            "SQL literal inside a shell-quoted word"
        );
        assert!(s.ends_with("exit 0\n"));
        assert!(s.contains("docker inspect"), "{s}");
        assert!(s.contains("docker image inspect"), "{s}");
    }
}
