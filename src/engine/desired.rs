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

#[derive(Serialize)]
struct HostRef {
    name: String,
    ip: String,
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
        args.extend(["-v".into(), r(v)?]);
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

/// An address as the host part of `host:port` (IPv6 in brackets).
fn listen_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Patroni tags every member has unless pgha is working on it.
pub fn default_tags() -> BTreeMap<String, bool> {
    ["nofailover", "noloadbalance", "clonefrom", "nosync"]
        .into_iter()
        .map(|t| (t.to_string(), false))
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
    let docker = inv.cluster.install_method == crate::inventory::InstallMethod::Docker;
    let env = template_env(lib);
    let c = &inv.cluster;
    let db = inv.db_hosts();
    let etcd = inv.etcd_hosts();
    let routers = inv.router_hosts();
    let secrets: BTreeMap<&str, &str> = [
        (
            "superuser_password",
            inv.secrets.superuser_password.expose(),
        ),
        (
            "replication_password",
            inv.secrets.replication_password.expose(),
        ),
        ("rewind_password", inv.secrets.rewind_password.expose()),
        ("monitor_password", inv.secrets.monitor_password.expose()),
        ("app_password", inv.secrets.app_password.expose()),
        (
            "patroni_api_password",
            inv.secrets.patroni_api_password.expose(),
        ),
        (
            "haproxy_stats_password",
            inv.secrets.haproxy_stats_password.expose(),
        ),
    ]
    .into_iter()
    .collect();
    let etcd_client_hosts: Vec<String> = etcd
        .iter()
        .map(|h| format!("{}:{}", h.ip, c.etcd_client_port))
        .collect();

    let mut out = Vec::new();
    for host in &inv.hosts {
        let mut tags = default_tags();
        if let Some(o) = tag_overrides.get(&host.name) {
            tags.extend(o.clone());
        }
        let tls = match (&inputs.pki, c.tls) {
            (Some(p), true) => json!({
                "ca": p.ca_cert,
                "cert": p.hosts.get(&host.name).map(|k| k.cert.clone()).unwrap_or_default(),
                "key": p.hosts.get(&host.name).map(|k| k.key.expose().to_string()).unwrap_or_default(),
            }),
            (None, true) => anyhow::bail!(
                "tls is on but the cluster's certificates are not loaded ({}): `pgha deploy` creates them",
                crate::pki::pki_dir(&inv.path).display()
            ),
            _ => json!({"ca": "", "cert": "", "key": ""}),
        };
        let pg_data_parent = std::path::Path::new(&c.postgresql_data_dir)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/var/lib/postgresql".into());
        let images: BTreeMap<&str, String> = ["etcd", "postgres", "haproxy", "exporter"]
            .into_iter()
            .map(|k| (k, crate::docker::stack::image(c, k)))
            .collect();
        let ctx = ctx_value(json!({
            "images": images,
            "pg_data_parent": pg_data_parent,
            "tls": tls,
            "tls_dir": TLS_DIR,
            "scheme": if c.tls { "https" } else { "http" },
            "hostssl": if c.tls { "hostssl" } else { "host" },
            "tags": tags,
            "cluster": c,
            "secrets": secrets,
            "host": {
                "name": host.name,
                "ip": host.ip.to_string(),
                // The address in `listen` form (`host:port` needs brackets for IPv6).
                "listen": listen_host(host.ip),
            },
            "haproxy_stats_user": crate::probe::haproxy::STATS_USER,
            "db_hosts": refs(&db),
            "etcd_hosts": refs(&etcd),
            "router_hosts": refs(&routers),
            "etcd_client_hosts": etcd_client_hosts,
            "etcd_data_dir": etcd_data_dir(c),
            "dcs": dcs_config(c),
        }));
        let mut roles = Vec::new();
        for role in &lib.roles {
            let applies = match role.hosts.as_str() {
                "all" => true,
                "etcd" => etcd.iter().any(|h| h.name == host.name),
                g => host.in_group(g),
            };
            if !applies {
                continue;
            }
            if let Some(w) = &role.when {
                let expr = env
                    .compile_expression(w)
                    .map_err(|e| anyhow::anyhow!("role {}: when {w:?}: {e}", role.name))?;
                if !expr.eval(&ctx)?.is_true() {
                    continue;
                }
            }
            let render_all = |list: &[String]| {
                list.iter()
                    .map(|p| {
                        env.render_str(p, &ctx)
                            .with_context(|| format!("role {}: package {p:?}", role.name))
                    })
                    .collect::<Result<Vec<_>>>()
            };
            // Under docker a component comes in its image, not as packages.
            let in_container = docker && role.container.is_some();
            let (packages, upgrade_with) = if in_container {
                (Vec::new(), Vec::new())
            } else {
                (render_all(&role.packages)?, render_all(&role.upgrade_with)?)
            };
            let container = match (&role.container, in_container) {
                (Some(def), true) => Some(
                    container_spec(&env, &ctx, def, c, inputs)
                        .with_context(|| format!("role {}: container", role.name))?,
                ),
                _ => None,
            };
            let mut files = Vec::new();
            for f in &role.files {
                if let Some(w) = &f.when {
                    let expr = env.compile_expression(w).map_err(|e| {
                        anyhow::anyhow!("role {}: file {}: when {w:?}: {e}", role.name, f.dest)
                    })?;
                    if !expr.eval(&ctx)?.is_true() {
                        continue;
                    }
                }
                let tmpl = env.get_template(&f.template)?;
                let content = tmpl.render(&ctx).map_err(|e| {
                    anyhow::anyhow!(
                        "role {}: rendering templates/{} for {}: {e:#}",
                        role.name,
                        f.template,
                        host.name
                    )
                })?;
                files.push(DesiredFile {
                    role: role.name.clone(),
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
                        .map(|v| render_shell(&env, v, &ctx))
                        .transpose()
                        .with_context(|| format!("role {}: validate of {}", role.name, f.dest))?,
                    secrets: Box::new(f.secrets.clone()),
                });
            }
            roles.push(DesiredRole {
                name: role.name.clone(),
                packages,
                upgrade_with,
                files,
                services: role.services.clone(),
                container,
            });
        }
        out.push(HostDesired {
            host: host.name.clone(),
            roles,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_undefined_rejects_typos() {
        let lib = Library::builtin().unwrap();
        let env = template_env(&lib);
        let err = env
            .render_str(
                "{{ cluster.clustr_name }}",
                ctx_value(json!({"cluster": {}})),
            )
            .unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    fn sample() -> Inventory {
        let text = "all:\n  vars:\n    tls: false\n    superuser_password: \"pa'ss\\\"word\"\n    postgresql_parameters:\n      work_mem: 8MB\n  children:\n    db:\n      hosts:\n        db1: {ansible_host: 10.9.0.11}\n        db2: {ansible_host: 10.9.0.12}\n        db3: {ansible_host: 10.9.0.13}\n    router:\n      hosts:\n        router1: {ansible_host: 10.9.0.21}\n";
        crate::inventory::load_str(
            std::path::Path::new("/nonexistent/inv.yml"),
            text,
            &crate::inventory::LoadOptions::default(),
        )
        .unwrap()
    }

    fn file(d: &[HostDesired], host: &str, path: &str) -> String {
        let h = d.iter().find(|h| h.host == host).unwrap();
        let f = h.files().find(|f| f.path == path).unwrap();
        String::from_utf8(f.content.clone()).unwrap()
    }

    #[test]
    fn docker_daemon_config_is_json_with_the_inventorys_registries() {
        let mut inv = sample();
        inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
        inv.cluster.docker_image = "pgha:test".into();
        let lib = Library::builtin().unwrap();
        let read = |inv: &Inventory| -> serde_json::Value {
            let d = desired_state(inv, &lib).unwrap();
            serde_json::from_str(&file(&d, "db1", "/etc/docker/daemon.json")).unwrap()
        };
        let plain = read(&inv);
        assert_eq!(plain["live-restore"], true);
        assert!(plain.get("insecure-registries").is_none(), "{plain}");
        inv.cluster.docker_insecure_registries = vec!["10.9.0.21:5050".into()];
        inv.cluster.docker_storage_driver = "vfs".into();
        let with = read(&inv);
        assert_eq!(
            with["insecure-registries"],
            serde_json::json!(["10.9.0.21:5050"])
        );
        assert_eq!(with["storage-driver"], "vfs");
    }

    #[test]
    fn patroni_config_is_valid_yaml_with_the_right_values() {
        let d = desired_state(&sample(), &Library::builtin().unwrap()).unwrap();
        let text = file(&d, "db2", "/etc/patroni/config.yml");
        let y: serde_json::Value = yaml_serde::from_str(&text).unwrap();
        assert_eq!(y["name"], "db2");
        assert_eq!(y["restapi"]["connect_address"], "10.9.0.12:8008");
        assert_eq!(
            y["postgresql"]["authentication"]["superuser"]["password"],
            "pa'ss\"word"
        );
        assert_eq!(y["etcd3"]["hosts"][2], "10.9.0.13:2379");
        assert_eq!(
            y["bootstrap"]["dcs"]["postgresql"]["parameters"]["work_mem"],
            "8MB"
        );
        let hba: Vec<String> = y["postgresql"]["pg_hba"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert!(
            hba.contains(&"host replication replicator 10.9.0.11/32 scram-sha-256".to_string())
        );
        assert!(hba.contains(&"host all all 10.9.0.21/32 scram-sha-256".to_string()));
        assert!(
            !hba.iter().any(|l| l.contains("0.0.0.0/0")),
            "no open pg_hba by default"
        );
        // Patroni checks a demoted primary's timeline over a replication connection
        // to itself: over the socket, with no TCP replication rule from localhost.
        assert_eq!(y["postgresql"]["use_unix_socket_repl"], true);
        assert!(hba.contains(&"local replication replicator scram-sha-256".to_string()));
        assert!(
            !hba.iter()
                .any(|l| l.starts_with("host replication") && l.contains("127.0.0.1")),
            "no replication from localhost over TCP"
        );
    }

    #[test]
    fn roles_apply_to_their_groups_only() {
        let d = desired_state(&sample(), &Library::builtin().unwrap()).unwrap();
        let names = |h: &str| -> Vec<String> {
            d.iter()
                .find(|x| x.host == h)
                .unwrap()
                .roles
                .iter()
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(
            names("db1"),
            ["common", "postgres", "etcd", "patroni", "exporter"]
        );
        assert_eq!(names("router1"), ["common", "haproxy"]);
        let d1 = d.iter().find(|x| x.host == "db1").unwrap();
        assert_eq!(d1.role("postgres").unwrap().packages, ["postgresql-17"]);
    }

    #[test]
    fn etcd_and_haproxy_files_list_every_member() {
        let d = desired_state(&sample(), &Library::builtin().unwrap()).unwrap();
        let etcd = file(&d, "db3", "/etc/default/etcd");
        assert!(etcd.contains("ETCD_NAME=\"db3\"\n"));
        assert!(etcd.contains(
            "ETCD_INITIAL_CLUSTER=\"db1=http://10.9.0.11:2380,db2=http://10.9.0.12:2380,db3=http://10.9.0.13:2380\"\n"
        ));
        let hap = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
        assert_eq!(
            hap.matches("server db2 10.9.0.12:5432 check port 8008")
                .count(),
            2
        );
        assert!(
            hap.contains("bind *:5000")
                && hap.contains("bind *:5001")
                && hap.contains("bind 10.9.0.21:8404\n")
        );
        // The read port serves only streaming replicas within the lag bound.
        assert!(hap.contains("uri /replica?lag=16777216"), "{hap}");
        assert!(
            hap.contains(r#"http-check expect rstring '"replication_state": *"streaming"'"#),
            "{hap}"
        );
        let exp = file(&d, "db1", "/etc/default/prometheus-postgres-exporter");
        assert!(exp.contains("DATA_SOURCE_USER=\"pgha_monitor\""));
    }

    #[test]
    fn rendering_is_deterministic() {
        let lib = Library::builtin().unwrap();
        let inv = sample();
        let a = desired_state(&inv, &lib).unwrap();
        let b = desired_state(&inv, &lib).unwrap();
        for (x, y) in a.iter().zip(&b) {
            for (f, g) in x.files().zip(y.files()) {
                assert!(f.content == g.content, "{} differs between renders", f.path);
            }
        }
    }

    #[test]
    fn tls_configures_every_component_with_the_cluster_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prod.yml");
        std::fs::write(
            &path,
            "all:\n  children:\n    db:\n      hosts:\n        db1: {ansible_host: 10.9.0.11}\n        db2: {ansible_host: 10.9.0.12}\n        db3: {ansible_host: 10.9.0.13}\n    router:\n      hosts:\n        router1: {ansible_host: 10.9.0.21}\n",
        )
        .unwrap();
        let inv = crate::inventory::load(
            &path,
            &crate::inventory::LoadOptions {
                write_secrets: true,
            },
        )
        .unwrap();
        let pki = crate::pki::load(&inv, true).expect("certificates created");
        let inputs = Inputs {
            pki: Some(pki.clone()),
            ..Default::default()
        };
        let d = desired_state_with(&inv, &Library::builtin().unwrap(), &inputs).unwrap();
        let etcd = file(&d, "db1", "/etc/default/etcd");
        assert!(
            etcd.contains(
                "ETCD_LISTEN_CLIENT_URLS=\"https://10.9.0.11:2379,https://127.0.0.1:2379\""
            )
        );
        assert!(
            etcd.contains("ETCD_CLIENT_CERT_AUTH=\"true\"")
                && etcd.contains("ETCD_PEER_CLIENT_CERT_AUTH=\"true\"")
        );
        let y: serde_json::Value =
            yaml_serde::from_str(&file(&d, "db1", "/etc/patroni/config.yml")).unwrap();
        assert_eq!(y["etcd3"]["protocol"], "https");
        assert_eq!(y["restapi"]["certfile"], "/etc/pgha/tls/postgres.crt");
        assert_eq!(y["postgresql"]["parameters"]["ssl"], "on");
        assert_eq!(
            y["postgresql"]["authentication"]["replication"]["sslmode"],
            "verify-full"
        );
        let hba: Vec<String> = y["postgresql"]["pg_hba"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert!(hba.contains(&"hostssl all all 10.9.0.21/32 scram-sha-256".to_string()));
        assert!(
            hba.contains(&"hostssl replication replicator 10.9.0.12/32 scram-sha-256".to_string())
        );
        assert!(
            !hba.iter()
                .any(|l| l.starts_with("host ") && !l.contains("127.0.0.1") && !l.contains("::1")),
            "{hba:?}"
        );
        let hap = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
        assert_eq!(
            hap.matches("check-ssl verify required ca-file /etc/pgha/tls/ca.crt")
                .count(),
            2
        );
        // The host's own certificate and key, private.
        let db1 = d.iter().find(|h| h.host == "db1").unwrap();
        let key = db1
            .files()
            .find(|f| f.path == "/etc/pgha/tls/postgres.key")
            .unwrap();
        assert_eq!((key.mode, key.owner.as_str()), (0o600, "postgres"));
        assert_eq!(
            String::from_utf8_lossy(&key.content),
            pki.hosts["db1"].key.expose()
        );
        let cert = file(&d, "db1", "/etc/pgha/tls/etcd.crt");
        let names = crate::pki::cert_info(&cert).unwrap().names;
        for n in ["db1", "10.9.0.11", "127.0.0.1", "10.9.0.21", "router1"] {
            assert!(names.contains(n), "db1's certificate names {n}: {names:?}");
        }
        assert_eq!(file(&d, "router1", "/etc/pgha/tls/ca.crt"), pki.ca_cert);
        assert!(
            d.iter()
                .find(|h| h.host == "router1")
                .unwrap()
                .files()
                .all(|f| !f.path.ends_with(".key")),
            "routers get no key"
        );
        // Loading again reuses every certificate (a re-run changes nothing).
        let again = crate::inventory::load(
            &path,
            &crate::inventory::LoadOptions {
                write_secrets: true,
            },
        )
        .unwrap();
        let p2 = crate::pki::load(&again, true).unwrap();
        assert!(p2.issued.is_empty(), "{:?}", p2.issued);
        assert_eq!(p2.hosts["db2"].cert, pki.hosts["db2"].cert);
        // A private key never appears in redacted text.
        let shown = inv
            .secrets
            .redact(&format!("x\n{}y", pki.hosts["db1"].key.expose()));
        assert_eq!(shown, "x\n<redacted private key>\ny");
    }

    /// The exporter's environment file carries a hostile password literally to both
    /// of its readers: systemd (native) and the docker container's own `sh`.
    #[test]
    fn exporter_env_file_reads_the_same_under_both_methods() {
        use crate::engine::quote::tests::{HOSTILE, sh_reads, systemd_reads};
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join("exporter.env");
        let lib = Library::builtin().unwrap();
        for pw in HOSTILE {
            let mut inv = sample();
            inv.secrets.monitor_password = crate::inventory::Secret::new(pw);
            let text = file(
                &desired_state(&inv, &lib).unwrap(),
                "db1",
                "/etc/default/prometheus-postgres-exporter",
            );
            std::fs::write(&env_path, &text).unwrap();
            assert_eq!(systemd_reads(&text)["DATA_SOURCE_PASS"], pw, "{text}");
            assert_eq!(sh_reads(&env_path, "DATA_SOURCE_PASS"), pw, "{text}");
            // The container reads it with the command its spec runs.
            inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
            inv.cluster.docker_image = "pgha:test".into();
            let d = desired_state(&inv, &lib).unwrap();
            let spec = d
                .iter()
                .find(|h| h.host == "db1")
                .and_then(|h| h.role("exporter"))
                .and_then(|r| r.container.clone())
                .unwrap();
            let sh = spec.run_args.iter().position(|a| a == "sh").unwrap();
            let out = std::process::Command::new("sh")
                .args(["-c", &spec.run_args[sh + 2]])
                .arg(&env_path)
                .args(["printenv", "DATA_SOURCE_PASS"])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{pw}\n"));
        }
        assert!(!std::path::Path::new("/tmp/pgha-pwned").exists());
    }

    /// etcd's file holds only validated names, addresses and ports: both readers
    /// see the same values.
    #[test]
    fn etcd_env_file_reads_the_same_in_systemd_and_sh() {
        use crate::engine::quote::tests::{sh_reads, systemd_reads};
        let text = file(
            &desired_state(&sample(), &Library::builtin().unwrap()).unwrap(),
            "db2",
            "/etc/default/etcd",
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.env");
        std::fs::write(&path, &text).unwrap();
        let vars = systemd_reads(&text);
        assert!(vars.len() > 10, "{vars:?}");
        for (k, v) in &vars {
            assert_eq!(&sh_reads(&path, k), v, "{k}");
        }
    }

    /// Role fields that run in a root shell (`prepare`, `validate`) carry inventory
    /// values as single words, even values validation would refuse.
    #[test]
    fn shell_fields_quote_hostile_inventory_values() {
        use crate::engine::quote::tests::sh_args;
        let mut inv = sample();
        inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
        let parent = "/srv/a b;$(touch /tmp/pgha-pwned)|`id`'x'";
        inv.cluster.postgresql_data_dir = format!("{parent}/main");
        let image = "img:1 $(touch /tmp/pgha-pwned);id";
        inv.cluster.docker_image = image.into();
        let d = desired_state(&inv, &Library::builtin().unwrap()).unwrap();
        let role = |h: &str, r: &str| {
            d.iter()
                .find(|x| x.host == h)
                .and_then(|x| x.role(r))
                .cloned()
                .unwrap()
        };
        let prepare = role("db1", "patroni").container.unwrap().prepare.unwrap();
        assert_eq!(
            sh_args("install", &prepare),
            [
                "-d",
                "-o",
                "postgres",
                "-g",
                "postgres",
                "-m",
                "0755",
                "/var/lib/postgresql",
                parent
            ]
        );
        let haproxy = role("router1", "haproxy");
        let validate = haproxy.files[0].validate.clone().unwrap();
        // As the upload script runs it: %s is the new file.
        let script = format!("t=/tmp/new.cfg\n{}", validate.replace("%s", "\"$t\""));
        let args = sh_args("docker", &script);
        assert_eq!(
            args[..6],
            [
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                "/tmp/new.cfg:/tmp/pgha-haproxy.cfg:ro"
            ]
        );
        assert_eq!(args[8], image, "{args:?}");
        assert_eq!(
            args[9..],
            ["haproxy", "-c", "-q", "-f", "/tmp/pgha-haproxy.cfg"]
        );
        assert!(!std::path::Path::new("/tmp/pgha-pwned").exists());
        // A plain inventory renders them as before (no needless quotes).
        let plain = desired_state(
            &{
                let mut i = sample();
                i.cluster.install_method = crate::inventory::InstallMethod::Docker;
                i.cluster.docker_image = "pgha-stack:abc".into();
                i
            },
            &Library::builtin().unwrap(),
        )
        .unwrap();
        let v = plain
            .iter()
            .find(|x| x.host == "router1")
            .and_then(|x| x.role("haproxy"))
            .map(|r| r.files[0].validate.clone().unwrap())
            .unwrap();
        assert_eq!(
            v,
            "docker run --rm --network none -v %s:/tmp/pgha-haproxy.cfg:ro -v /etc/pgha/tls:/etc/pgha/tls:ro pgha-stack:abc haproxy -c -q -f /tmp/pgha-haproxy.cfg"
        );
    }

    /// HAProxy's stats page is bound to the router's address and needs pgha's
    /// password, carried literally whatever it holds; the exporters listen on their
    /// host's address only, under both install methods.
    #[test]
    fn stats_page_and_exporters_are_not_open_to_every_address() {
        use crate::engine::quote::tests::{HOSTILE, sh_args};
        let lib = Library::builtin().unwrap();
        for pw in HOSTILE {
            let mut inv = sample();
            inv.secrets.haproxy_stats_password = crate::inventory::Secret::new(pw);
            let d = desired_state(&inv, &lib).unwrap();
            let hap = file(&d, "router1", "/etc/haproxy/haproxy.cfg");
            let stats =
                &hap[hap.find("listen stats").unwrap()..hap.find("listen primary").unwrap()];
            assert!(stats.contains("    bind 10.9.0.21:8404\n"), "{stats}");
            assert!(!hap.contains("bind *:8404"), "{hap}");
            let auth = stats
                .lines()
                .find_map(|l| l.trim().strip_prefix("stats auth "))
                .expect("an auth line");
            // HAProxy's strong quoting is sh's: one word, read literally.
            assert_eq!(sh_args("w", &format!("w {auth}")), [format!("pgha:{pw}")]);
        }
        let exp = file(
            &desired_state(&sample(), &lib).unwrap(),
            "db2",
            "/etc/default/prometheus-postgres-exporter",
        );
        assert!(
            exp.contains("ARGS=\"--web.listen-address=10.9.0.12:9187\"\n"),
            "{exp}"
        );
        let mut inv = sample();
        inv.cluster.install_method = crate::inventory::InstallMethod::Docker;
        inv.cluster.docker_image = "pgha:test".into();
        let d = desired_state(&inv, &lib).unwrap();
        let spec = d
            .iter()
            .find(|h| h.host == "db2")
            .and_then(|h| h.role("exporter"))
            .and_then(|r| r.container.clone())
            .unwrap();
        assert_eq!(
            spec.run_args.last().unwrap(),
            "--web.listen-address=10.9.0.12:9187"
        );
        assert_eq!(listen_host("fe80::1".parse().unwrap()), "[fe80::1]");
    }
}
