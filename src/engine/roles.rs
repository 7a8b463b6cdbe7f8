//! Role definitions (roles/*.yml) and templates (templates/*.j2) as data.
//!
//! The files are compiled into the binary so `pgha` is one file to install; set
//! `PGHA_ROLES_DIR` to a directory holding `roles/` and `templates/` to use
//! adjusted copies instead.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// When a file is written relative to package installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Before packages are installed (apt sources, createcluster.conf).
    PreInstall,
    /// After packages are installed, in the role's own rollout phase.
    Configure,
}

/// What a change to the file requires of the role's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notify {
    None,
    Reload,
    Restart,
    /// Refresh apt's package lists before installing.
    AptUpdate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDef {
    pub dest: String,
    pub template: String,
    pub owner: String,
    pub group: String,
    /// Octal, as a string ("0640").
    pub mode: String,
    pub stage: Stage,
    pub notify: Notify,
    /// A shell command that checks the new file (`%s`) before it replaces the old one;
    /// every `{{ value }}` in it is quoted as one shell word.
    #[serde(default)]
    pub validate: Option<String>,
    /// Only when this expression (minijinja, over the same variables as the
    /// templates) is true, e.g. `cluster.tls`.
    #[serde(default)]
    pub when: Option<String>,
    /// Where the file holds secrets: masked on both sides of `deploy --check --diff`.
    #[serde(default)]
    pub secrets: SecretLines,
    /// Variables the template sees as `vars.NAME` (one template, several files).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Prefixes of lines the service reads only on its first start (etcd's initial
    /// membership): when only such lines differ, the file is written and nothing
    /// is restarted. Letters, digits, `_` and `=` only (they go into a grep pattern).
    #[serde(default)]
    pub read_once: Vec<String>,
}

/// Which lines of a managed file hold a secret (roles/*.yml `secrets:`). Their
/// values are masked on the host's side and pgha's before a diff, whatever they
/// are: a password changed or tampered with on a host is no known secret, but it
/// sits where one does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretLines {
    /// YAML keys whose values are secrets, at any depth (`password`).
    #[serde(default)]
    pub yaml_keys: Vec<String>,
    /// Environment file variables whose values are secrets (`DATA_SOURCE_PASS`).
    #[serde(default)]
    pub env_keys: Vec<String>,
    /// Configuration directives whose arguments are secrets (`stats auth`).
    #[serde(default)]
    pub directives: Vec<String>,
    /// `key=value` lines (INI files) whose values are secrets (`repo1-cipher-pass`).
    #[serde(default)]
    pub ini_keys: Vec<String>,
    /// The whole file is a secret (a private key).
    #[serde(default)]
    pub whole_file: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    pub name: String,
    /// Inventory groups the role applies to, comma-separated (`all`, `db`,
    /// `router`, `etcd`, `backup`).
    pub hosts: String,
    pub packages: Vec<String>,
    /// Installed packages `pgha upgrade` moves together with `packages` (libraries
    /// and clients of the same release); not installed by deploy.
    #[serde(default)]
    pub upgrade_with: Vec<String>,
    pub files: Vec<FileDef>,
    pub services: Vec<String>,
    /// Only when this expression is true (e.g. the docker role).
    #[serde(default)]
    pub when: Option<String>,
    /// When `when` turns false on a host of the role's groups, deploy stops and
    /// disables the role's services there (a feature turned off in the inventory;
    /// packages and files stay), where this file of the role starts with pgha's
    /// header (a service someone else runs is not pgha's to stop). None: never
    /// (the docker role must not stop Docker because the install method changed).
    #[serde(default)]
    pub retire: Option<String>,
    /// How the role's service runs under the docker install method.
    #[serde(default)]
    pub container: Option<ContainerDef>,
    /// Directories the role needs, created before its files are written.
    #[serde(default)]
    pub directories: Vec<DirDef>,
    /// systemd timers the role schedules.
    #[serde(default)]
    pub timers: Vec<TimerDef>,
    /// `NAME=value` settings the running service must have been started with
    /// (read from its main process, native services only): one missing restarts
    /// the service, as a changed file does that it reads only at start. Catches a
    /// run interrupted between writing such a file and the restart.
    #[serde(default)]
    pub started_with: Vec<String>,
}

/// A directory a role needs: created where missing, its owner, group and mode set
/// where they differ. `path` is rendered like the templates; rendered empty, the
/// directory does not apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirDef {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: String,
    #[serde(default)]
    pub when: Option<String>,
}

/// A systemd timer a role schedules (its unit files are among the role's files):
/// enabled and started where `when` holds; where it does not and the timer's unit
/// file (`/etc/systemd/system/<timer>`) is there, stopped and the file removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerDef {
    /// The timer's whole unit name.
    pub timer: String,
    /// The unit it starts (read with the timer: systemd must know both).
    pub service: String,
    #[serde(default)]
    pub when: Option<String>,
}

/// A component's container (install_method docker). Strings are rendered like the
/// templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDef {
    pub name: String,
    /// Which image: etcd, postgres, haproxy or exporter (`docker_image_<this>`).
    pub image: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env_file: Option<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    pub command: Vec<String>,
    /// Seconds Docker waits for a clean stop before killing.
    pub stop_timeout: u32,
    /// The signal that stops it cleanly (Docker's default: SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// The signal that makes the component re-read its configuration (none: restart).
    #[serde(default)]
    pub reload_signal: Option<String>,
    /// Shell run on the host before the container is created (directories); every
    /// `{{ value }}` in it is quoted as one shell word. The other strings are single
    /// arguments of `docker run`, quoted whole.
    #[serde(default)]
    pub prepare: Option<String>,
}

impl RoleDef {
    /// The groups of `hosts`.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.hosts.split(',').map(str::trim)
    }
}

/// An octal mode as the roles write it ("0640").
fn octal(what: &str, mode: &str) -> Result<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .with_context(|| format!("{what}: mode {mode:?} is not octal"))
}

impl FileDef {
    pub fn mode_bits(&self) -> Result<u32> {
        octal(&format!("file {}", self.dest), &self.mode)
    }
}

impl DirDef {
    pub fn mode_bits(&self) -> Result<u32> {
        octal(&format!("directory {}", self.path), &self.mode)
    }
}

/// Roles in rollout order, and the templates they use.
#[derive(Debug, Clone)]
pub struct Library {
    pub roles: Vec<RoleDef>,
    pub templates: BTreeMap<String, String>,
}

/// Role names in the order their phases run.
pub const ROLE_ORDER: [&str; 14] = [
    "common",
    "docker",
    "postgres",
    "pgbackrest",
    "etcd",
    "patroni",
    "exporter",
    "haproxy",
    "pgbouncer",
    "node_exporter",
    "pgbackrest_exporter",
    "pgbouncer_exporter",
    "alertmanager",
    "prometheus",
];

const BUILTIN_ROLES: [(&str, &str); 14] = [
    ("common", include_str!("../../roles/common.yml")),
    ("docker", include_str!("../../roles/docker.yml")),
    ("postgres", include_str!("../../roles/postgres.yml")),
    ("pgbackrest", include_str!("../../roles/pgbackrest.yml")),
    ("etcd", include_str!("../../roles/etcd.yml")),
    ("patroni", include_str!("../../roles/patroni.yml")),
    ("exporter", include_str!("../../roles/exporter.yml")),
    ("haproxy", include_str!("../../roles/haproxy.yml")),
    ("pgbouncer", include_str!("../../roles/pgbouncer.yml")),
    (
        "node_exporter",
        include_str!("../../roles/node_exporter.yml"),
    ),
    (
        "pgbackrest_exporter",
        include_str!("../../roles/pgbackrest_exporter.yml"),
    ),
    (
        "pgbouncer_exporter",
        include_str!("../../roles/pgbouncer_exporter.yml"),
    ),
    ("alertmanager", include_str!("../../roles/alertmanager.yml")),
    ("prometheus", include_str!("../../roles/prometheus.yml")),
];

const BUILTIN_TEMPLATES: [(&str, &str); 31] = [
    (
        "patroni-role-change.py.j2",
        include_str!("../../templates/patroni-role-change.py.j2"),
    ),
    (
        "patroni-sitecustomize.py.j2",
        include_str!("../../templates/patroni-sitecustomize.py.j2"),
    ),
    (
        "patroni-env.conf.j2",
        include_str!("../../templates/patroni-env.conf.j2"),
    ),
    (
        "pgbackrest.conf.j2",
        include_str!("../../templates/pgbackrest.conf.j2"),
    ),
    (
        "pgha-backup.service.j2",
        include_str!("../../templates/pgha-backup.service.j2"),
    ),
    (
        "pgha-backup.timer.j2",
        include_str!("../../templates/pgha-backup.timer.j2"),
    ),
    (
        "pgha-backup-verify.service.j2",
        include_str!("../../templates/pgha-backup-verify.service.j2"),
    ),
    (
        "backup-verify.sh.j2",
        include_str!("../../templates/backup-verify.sh.j2"),
    ),
    (
        "docker-daemon.json.j2",
        include_str!("../../templates/docker-daemon.json.j2"),
    ),
    (
        "tls-ca.crt.j2",
        include_str!("../../templates/tls-ca.crt.j2"),
    ),
    (
        "tls-cert.pem.j2",
        include_str!("../../templates/tls-cert.pem.j2"),
    ),
    (
        "tls-key.pem.j2",
        include_str!("../../templates/tls-key.pem.j2"),
    ),
    (
        "apt-sources.list.j2",
        include_str!("../../templates/apt-sources.list.j2"),
    ),
    (
        "apt-preferences.j2",
        include_str!("../../templates/apt-preferences.j2"),
    ),
    (
        "createcluster.conf.j2",
        include_str!("../../templates/createcluster.conf.j2"),
    ),
    ("etcd.env.j2", include_str!("../../templates/etcd.env.j2")),
    (
        "patroni.yml.j2",
        include_str!("../../templates/patroni.yml.j2"),
    ),
    (
        "postgres-exporter.env.j2",
        include_str!("../../templates/postgres-exporter.env.j2"),
    ),
    (
        "haproxy.cfg.j2",
        include_str!("../../templates/haproxy.cfg.j2"),
    ),
    (
        "pgbouncer.ini.j2",
        include_str!("../../templates/pgbouncer.ini.j2"),
    ),
    (
        "pgbouncer-userlist.txt.j2",
        include_str!("../../templates/pgbouncer-userlist.txt.j2"),
    ),
    (
        "pgbouncer-limits.conf.j2",
        include_str!("../../templates/pgbouncer-limits.conf.j2"),
    ),
    (
        "pgbouncer-exporter.env.j2",
        include_str!("../../templates/pgbouncer-exporter.env.j2"),
    ),
    (
        "node-exporter.env.j2",
        include_str!("../../templates/node-exporter.env.j2"),
    ),
    (
        "pgha-tls.prom.j2",
        include_str!("../../templates/pgha-tls.prom.j2"),
    ),
    (
        "prometheus.env.j2",
        include_str!("../../templates/prometheus.env.j2"),
    ),
    (
        "alertmanager.env.j2",
        include_str!("../../templates/alertmanager.env.j2"),
    ),
    (
        "prometheus.yml.j2",
        include_str!("../../templates/prometheus.yml.j2"),
    ),
    (
        "alertmanager.yml.j2",
        include_str!("../../templates/alertmanager.yml.j2"),
    ),
    (
        "pgha.rules.yml.j2",
        include_str!("../../templates/pgha.rules.yml.j2"),
    ),
    (
        "pgbackrest-exporter.env.j2",
        include_str!("../../templates/pgbackrest-exporter.env.j2"),
    ),
];

impl Library {
    /// The built-in library, or the one under `$PGHA_ROLES_DIR`.
    pub fn load() -> Result<Library> {
        match std::env::var_os("PGHA_ROLES_DIR") {
            Some(dir) => Self::from_dir(Path::new(&dir)),
            None => Self::builtin(),
        }
    }

    pub fn builtin() -> Result<Library> {
        let roles = BUILTIN_ROLES
            .iter()
            .map(|(name, text)| parse_role(&format!("roles/{name}.yml"), text))
            .collect::<Result<Vec<_>>>()?;
        let templates = BUILTIN_TEMPLATES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        Self::checked(roles, templates)
    }

    pub fn from_dir(dir: &Path) -> Result<Library> {
        let mut roles = Vec::new();
        for name in ROLE_ORDER {
            let path = dir.join("roles").join(format!("{name}.yml"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("PGHA_ROLES_DIR: cannot read {}", path.display()))?;
            roles.push(parse_role(&path.display().to_string(), &text)?);
        }
        let mut templates = BTreeMap::new();
        let tdir = dir.join("templates");
        for entry in std::fs::read_dir(&tdir)
            .with_context(|| format!("PGHA_ROLES_DIR: cannot read {}", tdir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "j2") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                templates.insert(name, std::fs::read_to_string(&path)?);
            }
        }
        Self::checked(roles, templates)
    }

    fn checked(roles: Vec<RoleDef>, templates: BTreeMap<String, String>) -> Result<Library> {
        for (role, expected) in roles.iter().zip(ROLE_ORDER) {
            if role.name != expected {
                bail!("roles/{expected}.yml declares name {:?}", role.name);
            }
            if role
                .groups()
                .any(|g| !["all", "db", "router", "etcd", "backup", "monitor"].contains(&g))
            {
                bail!(
                    "role {}: hosts must be among all, db, router, etcd, backup, monitor (got {:?})",
                    role.name,
                    role.hosts
                );
            }
            for d in &role.directories {
                d.mode_bits()?;
            }
            if let Some(t) = role.timers.iter().find(|t| {
                !t.timer.ends_with(".timer")
                    || t.timer.contains('/')
                    || !t.service.ends_with(".service")
            }) {
                bail!(
                    "role {}: timer {:?} starting {:?}: a timer is a unit name ending in .timer, \
                     starting one ending in .service",
                    role.name,
                    t.timer,
                    t.service
                );
            }
            for f in &role.files {
                f.mode_bits()?;
                if let Some(bad) = f.read_once.iter().find(|p| {
                    p.is_empty()
                        || !p
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '=')
                }) {
                    bail!(
                        "role {}: read_once {bad:?} of {}: letters, digits, `_` and `=` only",
                        role.name,
                        f.dest
                    );
                }
                if !templates.contains_key(&f.template) {
                    bail!("role {}: template {} not found", role.name, f.template);
                }
            }
        }
        Ok(Library { roles, templates })
    }

    pub fn role(&self, name: &str) -> &RoleDef {
        self.roles
            .iter()
            .find(|r| r.name == name)
            .expect("roles are checked on load")
    }
}

fn parse_role(path: &str, text: &str) -> Result<RoleDef> {
    yaml_serde::from_str(text).with_context(|| format!("{path}: invalid role definition"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_library_loads_in_rollout_order() {
        let lib = Library::builtin().unwrap();
        let names: Vec<_> = lib.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ROLE_ORDER);
        let patroni_config = lib
            .role("patroni")
            .files
            .iter()
            .find(|f| f.dest == "/etc/patroni/config.yml")
            .unwrap();
        assert_eq!(patroni_config.mode_bits().unwrap(), 0o600);
        let key = lib
            .role("patroni")
            .files
            .iter()
            .find(|f| f.dest.ends_with(".key"))
            .unwrap();
        assert_eq!(key.mode_bits().unwrap(), 0o600, "private keys are 0600");
        assert_eq!(key.when.as_deref(), Some("cluster.tls"));
        assert_eq!(lib.role("haproxy").files[0].notify, Notify::Reload);
    }

    #[test]
    fn unknown_fields_in_a_role_are_errors() {
        let err = parse_role(
            "roles/x.yml",
            "name: x\nhosts: db\npackages: []\nfiles: []\nservices: []\nhandler: y\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }
}
