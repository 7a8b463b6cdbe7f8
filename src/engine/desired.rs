//! Desired state: what every host should have, rendered from roles, templates and
//! the inventory. Pure: no I/O, unit-tested.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;
use serde_json::json;

use super::quote;
use super::roles::{Library, Notify, SecretLines, Stage};
use crate::inventory::{Cluster, Host, Inventory};

/// One file a host should have.
#[derive(Debug, Clone)]
pub struct DesiredFile {
    pub role: String,
    pub path: String,
    pub content: Vec<u8>,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub stage: Stage,
    pub notify: Notify,
    pub validate: Option<String>,
    /// Where it holds secrets (masked in diffs); boxed: plans carry many files.
    pub secrets: Box<SecretLines>,
    /// Prefixes of lines read only on the service's first start (roles' `read_once`).
    pub read_once: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DesiredRole {
    pub name: String,
    pub packages: Vec<String>,
    /// Companions `pgha upgrade` moves with the packages when installed.
    pub upgrade_with: Vec<String>,
    pub files: Vec<DesiredFile>,
    pub services: Vec<String>,
    /// install_method docker: the container the service runs in.
    pub container: Option<ContainerSpec>,
    pub dirs: Vec<DesiredDir>,
    pub timers: Vec<DesiredTimer>,
    /// `NAME=value` settings its native service's process must have (empty under
    /// docker: a container is compared by its spec).
    pub started_with: Vec<String>,
}

/// A directory a host should have, with this owner, group and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDir {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

/// A role's systemd timer on a host: scheduled (enabled and running) or not (its
/// unit file removed where found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTimer {
    pub timer: String,
    pub service: String,
    pub scheduled: bool,
}

impl DesiredTimer {
    /// Where pgha writes the timer's unit.
    pub fn unit_file(&self) -> String {
        format!("/etc/systemd/system/{}", self.timer)
    }
}

/// A component's container, rendered (install_method docker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// The image reference.
    pub image: String,
    /// The id that reference must have on the host (push: this machine's); empty
    /// when any will do (registry: whatever the host pulled).
    pub image_id: String,
    /// `docker` arguments that create it (`run -d ...`).
    pub run_args: Vec<String>,
    /// Hash of the run arguments and the image's id: a container carrying another is
    /// re-created.
    pub spec: String,
    pub stop_timeout: u32,
    pub reload_signal: Option<String>,
    pub prepare: Option<String>,
}

/// What desired state needs from outside the inventory: the ids of the images the
/// containers use (push: this machine's; a new id under the same tag re-creates),
/// and the cluster's certificates when it has TLS.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub image_ids: BTreeMap<String, String>,
    pub pki: Option<crate::pki::Pki>,
}

#[derive(Debug, Clone)]
pub struct HostDesired {
    pub host: String,
    /// Roles that apply to this host, in rollout order.
    pub roles: Vec<DesiredRole>,
    /// Services of roles turned off in the inventory (roles with `retire:` whose
    /// `when` is false here): stopped and disabled where pgha set them up.
    pub retired: Vec<Retired>,
}

/// A service that must not run on a host any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub role: String,
    pub service: String,
    /// The file whose pgha header shows pgha set the service up.
    pub marker: String,
    /// install_method docker: the container it runs in (pgha's by its name).
    pub container: Option<String>,
}

impl HostDesired {
    pub fn role(&self, name: &str) -> Option<&DesiredRole> {
        self.roles.iter().find(|r| r.name == name)
    }
    pub fn packages(&self) -> Vec<String> {
        self.roles.iter().flat_map(|r| r.packages.clone()).collect()
    }
    pub fn files(&self) -> impl Iterator<Item = &DesiredFile> {
        self.roles.iter().flat_map(|r| r.files.iter())
    }
    pub fn services(&self) -> Vec<String> {
        self.roles.iter().flat_map(|r| r.services.clone()).collect()
    }
    pub fn dirs(&self) -> impl Iterator<Item = &DesiredDir> {
        self.roles.iter().flat_map(|r| r.dirs.iter())
    }
    pub fn timers(&self) -> impl Iterator<Item = &DesiredTimer> {
        self.roles.iter().flat_map(|r| r.timers.iter())
    }
    /// install_method docker: (service, container name) of each role in a container.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.roles
            .iter()
            .filter_map(|r| {
                r.container
                    .as_ref()
                    .map(|c| (r.services[0].clone(), c.name.clone()))
            })
            .collect()
    }
    /// install_method docker: the distinct images the host's containers run.
    pub fn images(&self) -> Vec<String> {
        let mut images: Vec<String> = self
            .roles
            .iter()
            .filter_map(|r| r.container.as_ref().map(|c| c.image.clone()))
            .collect();
        images.sort();
        images.dedup();
        images
    }
}

/// Where etcd keeps this cluster's data (not Debian's `default` one-member dir).
/// The label a container carries with the hash of the spec it was created from.
pub const SPEC_LABEL: &str = "pgha.spec";

pub fn etcd_data_dir(c: &Cluster) -> String {
    format!("/var/lib/etcd/{}", c.cluster_name)
}

/// PostgreSQL parameters pgha sets unless the inventory overrides them.
pub fn default_pg_parameters() -> BTreeMap<String, serde_json::Value> {
    let p = [
        ("max_connections", json!(200)),
        ("max_wal_senders", json!(10)),
        ("max_replication_slots", json!(10)),
        ("wal_level", json!("replica")),
        ("hot_standby", json!("on")),
        // pg_rewind needs hint bits WAL-logged (data checksums are on too).
        ("wal_log_hints", json!("on")),
        ("wal_keep_size", json!("512MB")),
        ("hot_standby_feedback", json!("on")),
        ("password_encryption", json!("scram-sha-256")),
        ("max_wal_size", json!("1GB")),
        ("log_line_prefix", json!("%m [%p] %q%u@%d ")),
    ];
    p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Patroni's dynamic (DCS) configuration: applied at bootstrap, and converged by
/// PATCH /config on later deploys.
pub fn dcs_config(c: &Cluster) -> serde_json::Value {
    let mut params = default_pg_parameters();
    params.extend(c.postgresql_parameters.clone());
    // archive_mode needs a restart, archive_command only a reload: archiving is on
    // from the first deploy, so that turning backups on later restarts nothing.
    params.insert("archive_mode".into(), json!("on"));
    params.insert("archive_command".into(), json!(archive_command(c)));
    json!({
        "ttl": c.patroni_ttl,
        "loop_wait": c.patroni_loop_wait,
        "retry_timeout": c.patroni_retry_timeout,
        "maximum_lag_on_failover": c.patroni_maximum_lag_on_failover,
        "synchronous_mode": c.synchronous_mode,
        "synchronous_mode_strict": c.synchronous_mode_strict,
        "synchronous_node_count": c.synchronous_node_count,
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            "parameters": params,
        },
    })
}

/// The leader's archive_command: pgBackRest's archive-push with backups on; without
/// them a command that accepts every segment (never empty: PostgreSQL would keep
/// WAL forever waiting for it).
pub fn archive_command(c: &Cluster) -> String {
    if c.backup_enabled {
        format!("pgbackrest --stanza={} archive-push %p", c.stanza())
    } else {
        "/bin/true".into()
    }
}

#[derive(Serialize)]
struct HostRef {
    name: String,
    ip: String,
    /// `ip` as the host part of `host:port`.
    listen: String,
}

fn ctx_value(v: serde_json::Value) -> Value {
    Value::from(minijinja::value::Serde(v))
}

fn refs(hosts: &[&Host]) -> Vec<HostRef> {
    hosts
        .iter()
        .map(|h| HostRef {
            name: h.name.clone(),
            ip: h.ip.to_string(),
            listen: listen_host(h.ip),
        })
        .collect()
}

pub fn template_env(lib: &Library) -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a template variable is an error, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Config files are never escaped; role fields that run in a shell quote every
    // value (see `render_shell`).
    env.set_auto_escape_callback(quote::auto_escape);
    env.set_formatter(quote::formatter);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.add_filter("envquote", quote::envquote);
    env.add_filter("haproxy_quote", quote::haproxy_quote);
    env.add_filter("pgbouncer_quote", quote::pgbouncer_quote);
    env.add_filter("uri_component", quote::uri_component);
    for (name, text) in &lib.templates {
        env.add_template_owned(name.clone(), text.clone())
            .expect("template syntax is checked by tests");
    }
    env
}

/// Render a role field that runs in a shell on the hosts (`prepare`, `validate`):
/// every `{{ value }}` in it becomes one shell word, whatever the inventory put in it.
fn render_shell(env: &Environment<'static>, source: &str, ctx: &Value) -> Result<String> {
    let name = format!("role-field{}", quote::SHELL_SUFFIX);
    env.render_named_str(&name, source, ctx)
        .map_err(anyhow::Error::from)
}

/// Patroni's configuration file on a db host.
pub const PATRONI_CONFIG: &str = "/etc/patroni/config.yml";
/// Where certificates and keys go on the hosts (TLS).
pub const TLS_DIR: &str = "/etc/pgha/tls";

/// Render a role's container: `docker run` arguments (host networking, restart
/// policy, stop timeout, the role's user, env file and mounts, and a label with the
/// spec's hash) and that hash.
fn container_spec(
    env: &Environment<'static>,
    ctx: &Value,
    def: &crate::engine::roles::ContainerDef,
    c: &crate::inventory::Cluster,
    inputs: &Inputs,
) -> Result<ContainerSpec> {
    let r = |s: &str| env.render_str(s, ctx).map_err(anyhow::Error::from);
    let image = crate::docker::stack::image(c, &def.image);
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        def.name.clone(),
        "--network".into(),
        "host".into(),
        "--restart".into(),
        "unless-stopped".into(),
        "--stop-timeout".into(),
        def.stop_timeout.to_string(),
    ];
    if let Some(sig) = &def.stop_signal {
        args.extend(["--stop-signal".into(), sig.clone()]);
    }
    if let Some(u) = &def.user {
        args.extend(["--user".into(), r(u)?]);
    }
    let env_file = def.env_file.as_deref().map(r).transpose()?;
    if let Some(f) = &env_file {
        // Read in the container by its shell, as systemd reads it for the native
        // unit (same quoting); `--env-file` would keep the quotes, and would show
        // the values (a password) in `docker inspect`.
        args.extend(["-v".into(), format!("{f}:{f}:ro")]);
    }
    for v in &def.volumes {
        // A volume rendered empty does not apply to this host.
        let v = r(v)?;
        if !v.trim().is_empty() {
            args.extend(["-v".into(), v]);
        }
    }
    let mut command = Vec::new();
    if let Some(f) = env_file {
        command.extend([
            "sh".to_string(),
            "-c".into(),
            r#"set -a; . "$0"; set +a; exec "$@""#.into(),
            f,
        ]);
    }
    for a in &def.command {
        command.push(r(a)?);
    }
    let id = inputs.image_ids.get(&image).cloned().unwrap_or_default();
    let spec_input = format!("{}\n{image}\n{id}\n{}", args.join("\n"), command.join("\n"));
    let spec = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        spec_input.as_bytes(),
    ))[..16]
        .to_string();
    args.extend([
        "--label".into(),
        format!("{}={spec}", SPEC_LABEL),
        image.clone(),
    ]);
    args.extend(command);
    Ok(ContainerSpec {
        name: def.name.clone(),
        image,
        image_id: id,
        run_args: args,
        spec,
        stop_timeout: def.stop_timeout,
        reload_signal: def.reload_signal.clone(),
        prepare: def
            .prepare
            .as_ref()
            .map(|p| render_shell(env, p, ctx))
            .transpose()?,
    })
}

/// An address as the host part of `host:port` or a URL (IPv6 in brackets).
pub fn listen_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Patroni tags every member has unless pgha is working on it. `clonefrom`: a new
/// member without a backup repository to clone from takes its copy from a running
/// replica (Patroni picks among those tagged, never the leader while one is), so
/// the primary does not pay for it.
pub fn default_tags() -> BTreeMap<String, bool> {
    ["nofailover", "noloadbalance", "clonefrom", "nosync"]
        .into_iter()
        .map(|t| (t.to_string(), t == "clonefrom"))
        .collect()
}

/// Render the desired state of every host of the inventory.
pub fn desired_state(inv: &Inventory, lib: &Library) -> Result<Vec<HostDesired>> {
    render(inv, lib, &BTreeMap::new(), &Inputs::default())
}

/// `desired_state` with the image ids the containers must run.
pub fn desired_state_with(
    inv: &Inventory,
    lib: &Library,
    inputs: &Inputs,
) -> Result<Vec<HostDesired>> {
    render(inv, lib, &BTreeMap::new(), inputs)
}

/// Patroni's configuration file of one member, with `tags` set over the defaults.
pub fn patroni_config_file(
    inv: &Inventory,
    lib: &Library,
    inputs: &Inputs,
    host: &str,
    tags: &BTreeMap<String, bool>,
) -> Result<DesiredFile> {
    let overrides = BTreeMap::from([(host.to_string(), tags.clone())]);
    render(inv, lib, &overrides, inputs)?
        .into_iter()
        .find(|d| d.host == host)
        .and_then(|d| {
            d.role("patroni")
                .and_then(|r| r.files.iter().find(|f| f.path == PATRONI_CONFIG).cloned())
        })
        .with_context(|| format!("{host} is not a db host of the inventory"))
}

/// Render every host, with tag overrides per host.
fn render(
    inv: &Inventory,
    lib: &Library,
    tag_overrides: &BTreeMap<String, BTreeMap<String, bool>>,
    inputs: &Inputs,
) -> Result<Vec<HostDesired>> {
    let env = template_env(lib);
    let mut out = Vec::new();
    for host in &inv.hosts {
        let mut tags = default_tags();
        if let Some(o) = tag_overrides.get(&host.name) {
            tags.extend(o.clone());
        }
        let ctx = host_context(inv, host, &tags, inputs)?;
        let mut roles = Vec::new();
        let mut retired = Vec::new();
        for role in &lib.roles {
            if let Some(r) = render_role(&env, &ctx, inv, host, role, inputs)? {
                roles.push(r);
            } else if let Some(marker) = role
                .retire
                .as_ref()
                .filter(|_| role_applies(inv, host, role))
            {
                let docker = inv.cluster.install_method == crate::inventory::InstallMethod::Docker;
                retired.extend(role.services.iter().map(|s| {
                    Retired {
                        role: role.name.clone(),
                        service: s.clone(),
                        marker: marker.clone(),
                        container: role
                            .container
                            .as_ref()
                            .filter(|_| docker)
                            .map(|c| c.name.clone()),
                    }
                }));
            }
        }
        out.push(HostDesired {
            host: host.name.clone(),
            roles,
            retired,
        });
    }
    Ok(out)
}

/// The secrets templates may use, by name.
fn secret_values(inv: &Inventory) -> BTreeMap<&'static str, &str> {
    let s = &inv.secrets;
    [
        ("superuser_password", s.superuser_password.expose()),
        ("replication_password", s.replication_password.expose()),
        ("rewind_password", s.rewind_password.expose()),
        ("monitor_password", s.monitor_password.expose()),
        ("app_password", s.app_password.expose()),
        ("patroni_api_password", s.patroni_api_password.expose()),
        ("haproxy_stats_password", s.haproxy_stats_password.expose()),
        (
            "pgbouncer_auth_password",
            s.pgbouncer_auth_password.expose(),
        ),
        ("backup_cipher_pass", s.backup_cipher_pass.expose()),
        ("backup_s3_key", s.backup_s3_key.expose()),
        ("backup_s3_key_secret", s.backup_s3_key_secret.expose()),
    ]
    .into_iter()
    .collect()
}

/// What the templates of one host see: the cluster, its secrets and certificates,
/// the host, the groups, its Patroni tags.
fn host_context(
    inv: &Inventory,
    host: &crate::inventory::Host,
    tags: &BTreeMap<String, bool>,
    inputs: &Inputs,
) -> Result<minijinja::Value> {
    let c = &inv.cluster;
    let (db, etcd, routers) = (inv.db_hosts(), inv.etcd_hosts(), inv.router_hosts());
    // Filled whenever the certificates are loaded: pgBackRest's TLS server uses
    // them also when the cluster's own `tls` is off.
    let not_after = |pem: &str| crate::pki::cert_info(pem).map(|i| i.not_after).unwrap_or(0);
    let tls = match (&inputs.pki, c.tls) {
        (Some(p), _) => {
            let cert = p
                .hosts
                .get(&host.name)
                .map(|k| k.cert.clone())
                .unwrap_or_default();
            json!({
                "ca": p.ca_cert,
                "ca_not_after": not_after(&p.ca_cert),
                "cert_not_after": not_after(&cert),
                "cert": cert,
                "key": p.hosts.get(&host.name).map(|k| k.key.expose().to_string()).unwrap_or_default(),
            })
        }
        (None, true) => anyhow::bail!(
            "tls is on but the cluster's certificates are not loaded ({}): `pgha deploy` creates them",
            crate::pki::pki_dir(&inv.path).display()
        ),
        _ => json!({"ca": "", "cert": "", "key": "", "ca_not_after": 0, "cert_not_after": 0}),
    };
    let pg_data_parent = std::path::Path::new(&c.postgresql_data_dir)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/var/lib/postgresql".into());
    let images: BTreeMap<&str, String> = crate::docker::stack::COMPONENTS
        .into_iter()
        .map(|k| (k, crate::docker::stack::image(c, k)))
        .collect();
    let etcd_client_hosts: Vec<String> = etcd
        .iter()
        .map(|h| format!("{}:{}", h.ip, c.etcd_client_port))
        .collect();
    Ok(ctx_value(json!({
        "images": images,
        "pg_data_parent": pg_data_parent,
        "tls": tls,
        "tls_dir": TLS_DIR,
        "scheme": if c.tls { "https" } else { "http" },
        "hostssl": if c.tls { "hostssl" } else { "host" },
        "tags": tags,
        "cluster": c,
        "extension_packages": crate::inventory::objects::extension_packages(c),
        "secrets": secret_values(inv),
        "backup": backup_context(inv, host, inputs),
        "host": {
            "name": host.name,
            "ip": host.ip.to_string(),
            "db": host.in_group("db"),
            "backup": inv.backup_host().is_some_and(|b| b.name == host.name),
            // The address in `listen` form (`host:port` needs brackets for IPv6).
            "listen": listen_host(host.ip),
        },
        "haproxy_stats_user": crate::probe::haproxy::STATS_USER,
        "db_hosts": refs(&db),
        "etcd_hosts": refs(&etcd),
        "router_hosts": refs(&routers),
        "etcd_client_hosts": etcd_client_hosts,
        "all_hosts": refs(&inv.hosts.iter().collect::<Vec<_>>()),
        "monitor": monitor_context(inv, host),
        "etcd_data_dir": etcd_data_dir(c),
        "dcs": dcs_config(c),
    })))
}

/// What the monitoring templates see: the monitoring host and whether this is it.
fn monitor_context(inv: &Inventory, host: &Host) -> serde_json::Value {
    match inv.monitor_host() {
        Some(m) => json!({
            "enabled": true,
            "retention_mib": inv.cluster.monitoring_retention_mib().max(1),
            "here": m.name == host.name,
            "host": {"name": m.name, "ip": m.ip.to_string(), "listen": listen_host(m.ip)},
        }),
        None => json!({"enabled": false, "here": false, "host": null}),
    }
}

/// Where pgBackRest's files put its certificates (root-owned, the key postgres').
pub const BACKUP_TLS_DIR: &str = "/etc/pgbackrest/tls";

/// What pgBackRest's templates see: the stanza, the repository's host, the db
/// hosts (pg1..pgN on the repository host), and the certificate common names
/// this host's TLS server lets in (the repository host: the db hosts; a db host:
/// the repository host).
fn backup_context(inv: &Inventory, host: &Host, inputs: &Inputs) -> serde_json::Value {
    let c = &inv.cluster;
    let Some(repo) = inv.backup_host() else {
        return json!({"enabled": false, "stanza": c.stanza(), "tls_dir": BACKUP_TLS_DIR,
                      "host": null, "members": [], "clients": []});
    };
    let cn = |h: &Host| {
        inputs
            .pki
            .as_ref()
            .and_then(|p| p.common_name(&h.name))
            .unwrap_or_else(|| h.name.clone())
    };
    let mut clients: Vec<String> = Vec::new();
    if repo.name == host.name {
        clients.extend(
            inv.db_hosts()
                .into_iter()
                .filter(|h| h.name != host.name)
                .map(cn),
        );
    }
    if host.in_group("db") && repo.name != host.name {
        clients.push(cn(repo));
    }
    clients.sort();
    clients.dedup();
    json!({
        "enabled": true,
        "stanza": c.stanza(),
        "tls_dir": BACKUP_TLS_DIR,
        "host": {"name": repo.name, "ip": repo.ip.to_string(), "listen": listen_host(repo.ip)},
        "members": refs(&inv.db_hosts()),
        "clients": clients,
    })
}

/// Whether a `when` expression holds in this context (no expression: it does).
fn holds(
    env: &Environment<'static>,
    ctx: &minijinja::Value,
    when: Option<&String>,
    what: &str,
) -> Result<bool> {
    let Some(w) = when else { return Ok(true) };
    let expr = env
        .compile_expression(w)
        .map_err(|e| anyhow::anyhow!("{what}: when {w:?}: {e}"))?;
    Ok(expr.eval(ctx)?.is_true())
}

/// Whether a host is in one of a role's groups.
fn role_applies(
    inv: &Inventory,
    host: &crate::inventory::Host,
    role: &crate::engine::roles::RoleDef,
) -> bool {
    role.groups().any(|g| match g {
        "all" => true,
        "etcd" => inv.etcd_hosts().iter().any(|h| h.name == host.name),
        "backup" => inv.backup_host().is_some_and(|b| b.name == host.name),
        "monitor" => inv.monitor_host().is_some_and(|m| m.name == host.name),
        g => host.in_group(g),
    })
}

/// One role on one host, or None when it does not apply there.
fn render_role(
    env: &Environment<'static>,
    ctx: &minijinja::Value,
    inv: &Inventory,
    host: &crate::inventory::Host,
    role: &crate::engine::roles::RoleDef,
    inputs: &Inputs,
) -> Result<Option<DesiredRole>> {
    let c = &inv.cluster;
    if !role_applies(inv, host, role)
        || !holds(env, ctx, role.when.as_ref(), &format!("role {}", role.name))?
    {
        return Ok(None);
    }
    // A package rendered empty does not apply to this host; one rendered to
    // several words is several packages (a list from the inventory).
    let render_all = |list: &[String]| -> Result<Vec<String>> {
        let mut out = Vec::new();
        for p in list {
            let r = env
                .render_str(p, ctx)
                .with_context(|| format!("role {}: package {p:?}", role.name))?;
            out.extend(r.split_whitespace().map(str::to_string));
        }
        Ok(out)
    };
    // Under docker a component comes in its image, not as packages.
    let docker = c.install_method == crate::inventory::InstallMethod::Docker;
    let in_container = docker && role.container.is_some();
    let (packages, upgrade_with) = if in_container {
        (Vec::new(), Vec::new())
    } else {
        (render_all(&role.packages)?, render_all(&role.upgrade_with)?)
    };
    let container = match (&role.container, in_container) {
        (Some(def), true) => Some(
            container_spec(env, ctx, def, c, inputs)
                .with_context(|| format!("role {}: container", role.name))?,
        ),
        _ => None,
    };
    let mut files = Vec::new();
    for f in &role.files {
        let what = format!("role {}: file {}", role.name, f.dest);
        if holds(env, ctx, f.when.as_ref(), &what)? {
            files.push(render_file(env, ctx, &role.name, f, &host.name)?);
        }
    }
    let mut dirs = Vec::new();
    for d in &role.directories {
        let what = format!("role {}: directory {}", role.name, d.path);
        if holds(env, ctx, d.when.as_ref(), &what)? {
            let path = env.render_str(&d.path, ctx).with_context(|| what.clone())?;
            let path = path.trim();
            if !path.is_empty() && !path.starts_with('/') {
                anyhow::bail!("{what}: {path:?} is not an absolute path");
            }
            if !path.is_empty() {
                dirs.push(DesiredDir {
                    path: path.to_string(),
                    owner: d.owner.clone(),
                    group: d.group.clone(),
                    mode: d.mode_bits()?,
                });
            }
        }
    }
    let mut timers = Vec::new();
    for t in &role.timers {
        let what = format!("role {}: timer {}", role.name, t.timer);
        timers.push(DesiredTimer {
            timer: t.timer.clone(),
            service: t.service.clone(),
            scheduled: holds(env, ctx, t.when.as_ref(), &what)?,
        });
    }
    Ok(Some(DesiredRole {
        name: role.name.clone(),
        packages,
        upgrade_with,
        files,
        services: role.services.clone(),
        started_with: if container.is_none() {
            role.started_with.clone()
        } else {
            Vec::new()
        },
        container,
        dirs,
        timers,
    }))
}

/// One file of a role, rendered from its template.
fn render_file(
    env: &Environment<'static>,
    ctx: &minijinja::Value,
    role: &str,
    f: &crate::engine::roles::FileDef,
    host: &str,
) -> Result<DesiredFile> {
    let with_vars;
    let ctx = if f.vars.is_empty() {
        ctx
    } else {
        with_vars = minijinja::context! { vars => Value::from(minijinja::value::Serde(&f.vars)), ..ctx.clone() };
        &with_vars
    };
    let content = env.get_template(&f.template)?.render(ctx).map_err(|e| {
        anyhow::anyhow!(
            "role {role}: rendering templates/{} for {host}: {e:#}",
            f.template
        )
    })?;
    Ok(DesiredFile {
        role: role.to_string(),
        path: f.dest.clone(),
        content: content.into_bytes(),
        owner: f.owner.clone(),
        group: f.group.clone(),
        mode: f.mode_bits()?,
        stage: f.stage,
        notify: f.notify,
        validate: f
            .validate
            .as_ref()
            .map(|v| render_shell(env, v, ctx))
            .transpose()
            .with_context(|| format!("role {role}: validate of {}", f.dest))?,
        secrets: Box::new(f.secrets.clone()),
        read_once: f.read_once.clone(),
    })
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
