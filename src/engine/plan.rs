//! Planning: desired state x facts -> actions. Pure functions, no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::desired::{DesiredDir, DesiredFile, HostDesired};
use super::facts::HostFacts;
use super::roles::{Notify, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileReason {
    /// The file does not exist.
    New,
    /// Content differs.
    Content,
    /// Only owner, group or mode differ.
    Attributes,
}

#[derive(Debug, Clone)]
pub enum Action {
    WriteFile {
        file: DesiredFile,
        reason: FileReason,
    },
    AptUpdate,
    Install {
        packages: Vec<String>,
    },
    /// install_method docker: an image a container needs, missing on the host or
    /// with another id than the one wanted.
    Image {
        reference: String,
    },
    Enable {
        service: String,
    },
    Start {
        service: String,
    },
    /// Handler: a changed file needs the service reloaded or restarted.
    Notify {
        service: String,
        notify: Notify,
    },
    /// A service of a role turned off in the inventory, still running or enabled:
    /// stopped and disabled (its container removed under docker).
    Retire {
        service: String,
        container: Option<String>,
    },
    /// A directory missing (`New`) or with another owner, group or mode
    /// (`Attributes`).
    Directory {
        dir: DesiredDir,
        reason: FileReason,
    },
    /// A scheduled timer systemd must (re-)read, or not enabled and running.
    Timer {
        timer: String,
        reason: TimerReason,
    },
    /// A timer no longer scheduled whose unit file is still there: stopped,
    /// disabled, its file removed.
    Unschedule {
        timer: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    /// systemd does not know the timer or the unit it starts (no file yet).
    NotLoaded,
    /// Their unit files changed (in this run, or since systemd last read them).
    UnitChanged,
    Disabled,
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Planned {
    pub role: String,
    pub action: Action,
}

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.action {
            Action::WriteFile { file, reason } => {
                let why = match reason {
                    FileReason::New => "new",
                    FileReason::Content => "content changed",
                    FileReason::Attributes => "owner/mode changed",
                };
                format!("write {} ({why})", file.path)
            }
            Action::AptUpdate => "apt-get update".to_string(),
            Action::Install { packages } => format!("install {}", packages.join(" ")),
            Action::Image { reference } => format!("image {reference}"),
            Action::Enable { service } => format!("enable {service}"),
            Action::Start { service } => format!("start {service}"),
            Action::Retire { service, .. } => {
                format!("stop and disable {service} (turned off in the inventory)")
            }
            Action::Directory { dir, reason } => {
                let why = match reason {
                    FileReason::New => "new",
                    _ => "owner/mode changed",
                };
                format!(
                    "directory {} {}:{} {:04o} ({why})",
                    dir.path, dir.owner, dir.group, dir.mode
                )
            }
            Action::Timer { timer, reason } => match reason {
                TimerReason::NotLoaded => format!("enable and start {timer} (new)"),
                TimerReason::UnitChanged => {
                    format!("reload systemd for {timer} (unit files changed)")
                }
                TimerReason::Disabled => format!("enable and start {timer} (disabled)"),
                TimerReason::Stopped => format!("start {timer} (stopped)"),
            },
            Action::Unschedule { timer } => {
                format!("stop and remove {timer} (no longer scheduled)")
            }
            Action::Notify { service, notify } => match notify {
                Notify::Reload => format!("reload {service}"),
                // Patroni restarts under pause (ops::phases): PostgreSQL keeps running.
                Notify::Restart if service == "patroni" => {
                    "restart patroni under pause (PostgreSQL keeps running)".to_string()
                }
                Notify::Restart => format!("restart {service}"),
                Notify::AptUpdate | Notify::None => String::new(),
            },
        };
        write!(f, "{:<9} {what}", self.role)
    }
}

#[derive(Debug, Clone, Default)]
pub struct HostPlan {
    pub host: String,
    pub actions: Vec<Planned>,
}

impl HostPlan {
    pub fn for_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Action> + 'a {
        self.actions
            .iter()
            .filter(move |p| p.role == role)
            .map(|p| &p.action)
    }
    pub fn files<'a>(&'a self, role: &'a str, stage: Stage) -> Vec<&'a DesiredFile> {
        self.for_role(role)
            .filter_map(|a| match a {
                Action::WriteFile { file, .. } if file.stage == stage => Some(file),
                _ => None,
            })
            .collect()
    }
    pub fn pre_install_files(&self) -> Vec<&DesiredFile> {
        self.actions
            .iter()
            .filter_map(|p| match &p.action {
                Action::WriteFile { file, .. } if file.stage == Stage::PreInstall => Some(file),
                _ => None,
            })
            .collect()
    }
    pub fn packages(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|p| match &p.action {
                Action::Install { packages } => Some(packages.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
    /// Images to bring onto the host (install_method docker).
    pub fn images(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|p| match &p.action {
                Action::Image { reference } => Some(reference.clone()),
                _ => None,
            })
            .collect()
    }
    pub fn apt_update(&self) -> bool {
        self.actions
            .iter()
            .any(|p| matches!(p.action, Action::AptUpdate))
    }
    pub fn wants(&self, role: &str, pred: impl Fn(&Action) -> bool) -> bool {
        self.for_role(role).any(pred)
    }
    /// The strongest handler a role's changed files need (Restart > Reload > None).
    pub fn notify(&self, role: &str) -> Notify {
        self.for_role(role)
            .filter_map(|a| match a {
                Action::Notify { notify, .. } => Some(*notify),
                _ => None,
            })
            .max()
            .unwrap_or(Notify::None)
    }
    pub fn starts(&self, role: &str) -> bool {
        self.wants(role, |a| matches!(a, Action::Start { .. }))
    }
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
    /// The role's directories to create or mend.
    pub fn dirs<'a>(&'a self, role: &'a str) -> Vec<&'a DesiredDir> {
        self.for_role(role)
            .filter_map(|a| match a {
                Action::Directory { dir, .. } => Some(dir),
                _ => None,
            })
            .collect()
    }
    /// The role's timers to (re-)enable and start, and those to remove.
    pub fn timers<'a>(&'a self, role: &'a str) -> (Vec<&'a str>, Vec<&'a str>) {
        let mut start = Vec::new();
        let mut remove = Vec::new();
        for a in self.for_role(role) {
            match a {
                Action::Timer { timer, .. } => start.push(timer.as_str()),
                Action::Unschedule { timer } => remove.push(timer.as_str()),
                _ => {}
            }
        }
        (start, remove)
    }
    /// Services to stop and disable: (service, container under docker).
    pub fn retired(&self) -> Vec<(String, Option<String>)> {
        self.actions
            .iter()
            .filter_map(|p| match &p.action {
                Action::Retire { service, container } => Some((service.clone(), container.clone())),
                _ => None,
            })
            .collect()
    }
}

fn file_reason(want: &DesiredFile, have: Option<&super::facts::FileFact>) -> Option<FileReason> {
    let have = match have {
        None => return Some(FileReason::New),
        Some(h) => h,
    };
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&want.content));
    if sha != have.sha256 {
        Some(FileReason::Content)
    } else if have.owner != want.owner || have.group != want.group || have.mode != want.mode {
        Some(FileReason::Attributes)
    } else {
        None
    }
}

/// Only lines the service reads on its first start differ (etcd's initial
/// membership, after a member joined or left): the file is written, the running
/// service is not restarted.
fn read_once_only(want: &DesiredFile, have: Option<&super::facts::FileFact>) -> bool {
    !want.read_once.is_empty()
        && have.and_then(|h| h.read_once_sha256.as_deref())
            == Some(without_read_once(&want.content, &want.read_once).as_str())
}

/// sha256 of `content` without the lines starting with one of `prefixes`, as
/// `grep -v -e ^P ... | sha256sum` computes it on the host (every kept line ends
/// with a newline).
pub fn without_read_once(content: &[u8], prefixes: &[String]) -> String {
    let text = String::from_utf8_lossy(content);
    let mut kept = String::new();
    for line in text.lines() {
        if !prefixes.iter().any(|p| line.starts_with(p.as_str())) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(kept.as_bytes()))
}

/// The file pgha writes a unit to: a template's instance (`name@kind.service`) is
/// read from the template (`name@.service`). Pure.
fn unit_file(unit: &str) -> String {
    let file = match (unit.split_once('@'), unit.rsplit_once('.')) {
        (Some((name, _)), Some((_, kind))) => format!("{name}@.{kind}"),
        _ => unit.to_string(),
    };
    format!("/etc/systemd/system/{file}")
}

/// Why a scheduled timer needs a command, from its and its service's facts (a unit
/// not read counts as unknown to systemd); None when it is enabled and running and
/// systemd has read both units' files.
fn timer_reason(
    facts: &HostFacts,
    timer: &str,
    service: &str,
    units_written: bool,
) -> Option<TimerReason> {
    let (Some(t), Some(s)) = (
        facts.systemd_units.get(timer),
        facts.systemd_units.get(service),
    ) else {
        return Some(TimerReason::NotLoaded);
    };
    if t.load != "loaded" || s.load != "loaded" {
        Some(TimerReason::NotLoaded)
    } else if units_written || t.needs_reload || s.needs_reload {
        Some(TimerReason::UnitChanged)
    } else if t.enabled != "enabled" {
        Some(TimerReason::Disabled)
    } else if t.active != "active" {
        Some(TimerReason::Stopped)
    } else {
        None
    }
}

/// Plan one host: files that differ, missing packages, services not enabled/running,
/// and the handlers that changed files need.
// Long by design: the rules in the order their actions run, each a few lines.
pub fn plan_host(want: &HostDesired, facts: &HostFacts, apt_cache_valid_time: u64) -> HostPlan {
    let mut actions = Vec::new();
    let mut apt_files_changed = false;
    let mut missing_all = Vec::new();
    for role in &want.roles {
        for dir in &role.dirs {
            let reason = match facts.dirs.get(&dir.path) {
                None => Some(FileReason::New),
                Some(h) if (&h.owner, &h.group, h.mode) != (&dir.owner, &dir.group, dir.mode) => {
                    Some(FileReason::Attributes)
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                actions.push(Planned {
                    role: role.name.clone(),
                    action: Action::Directory {
                        dir: dir.clone(),
                        reason,
                    },
                });
            }
        }
        let missing: Vec<String> = role
            .packages
            .iter()
            .filter(|p| !facts.packages.contains_key(*p))
            .cloned()
            .collect();
        let mut notify = Notify::None;
        for file in &role.files {
            if let Some(reason) = file_reason(file, facts.files.get(&file.path)) {
                if file.notify == Notify::AptUpdate {
                    apt_files_changed |= apt_lists_may_change(file, facts.files.get(&file.path));
                } else if reason != FileReason::Attributes
                    && !read_once_only(file, facts.files.get(&file.path))
                {
                    notify = notify.max(file.notify);
                }
                actions.push(Planned {
                    role: role.name.clone(),
                    action: Action::WriteFile {
                        file: file.clone(),
                        reason,
                    },
                });
            }
        }
        // A running service started without a setting it must have (a run stopped
        // between writing the file it comes from and the restart): restart it.
        for service in &role.services {
            if let Some(running) = facts.process_env.get(service)
                && role.started_with.iter().any(|w| !running.contains(w))
            {
                notify = notify.max(Notify::Restart);
            }
        }
        if !missing.is_empty() {
            missing_all.extend(missing.iter().cloned());
            actions.push(Planned {
                role: role.name.clone(),
                action: Action::Install { packages: missing },
            });
        }
        for service in &role.services {
            let unit = facts.unit(service);
            if !unit.is_enabled() {
                actions.push(Planned {
                    role: role.name.clone(),
                    action: Action::Enable {
                        service: service.clone(),
                    },
                });
            }
            if !unit.is_active() {
                actions.push(Planned {
                    role: role.name.clone(),
                    action: Action::Start {
                        service: service.clone(),
                    },
                });
            } else if matches!(notify, Notify::Reload | Notify::Restart) {
                // A service being started reads the new files anyway.
                actions.push(Planned {
                    role: role.name.clone(),
                    action: Action::Notify {
                        service: service.clone(),
                        notify,
                    },
                });
            }
        }
    }
    for role in &want.roles {
        for t in &role.timers {
            // A unit file of this timer written now: systemd reads it on a reload only.
            let files = [unit_file(&t.timer), unit_file(&t.service)];
            let units_written = actions.iter().any(|p| {
                matches!(&p.action, Action::WriteFile { file, .. } if files.contains(&file.path))
            });
            let action = if t.scheduled {
                timer_reason(facts, &t.timer, &t.service, units_written).map(|reason| {
                    Action::Timer {
                        timer: t.timer.clone(),
                        reason,
                    }
                })
            } else {
                facts.exists(&t.unit_file()).then(|| Action::Unschedule {
                    timer: t.timer.clone(),
                })
            };
            if let Some(action) = action {
                actions.push(Planned {
                    role: role.name.clone(),
                    action,
                });
            }
        }
    }
    // A role turned off: its service stopped where it still runs or would start
    // at boot (unless a role that stays uses the same service).
    let kept = want.services();
    for r in want.retired.iter().filter(|r| !kept.contains(&r.service)) {
        let unit = facts.unit(&r.service);
        let pghas = r.container.is_some() || facts.marked_paths.contains(&r.marker);
        if pghas && (unit.is_active() || unit.is_enabled()) {
            actions.push(Planned {
                role: r.role.clone(),
                action: Action::Retire {
                    service: r.service.clone(),
                    container: r.container.clone(),
                },
            });
        }
    }
    let mut images: Vec<(&str, &str)> = want
        .roles
        .iter()
        .filter_map(|r| r.container.as_ref())
        .map(|c| (c.image.as_str(), c.image_id.as_str()))
        .collect();
    images.sort();
    images.dedup();
    for (reference, id) in images {
        let ok = match facts.images.get(reference) {
            None => false,
            Some(have) => id.is_empty() || have == id,
        };
        if !ok {
            actions.push(Planned {
                role: "docker".into(),
                action: Action::Image {
                    reference: reference.to_string(),
                },
            });
        }
    }
    // Fresh lists are used as they are unless an apt file changed what they hold.
    let lists_stale = facts
        .apt_lists_age
        .is_none_or(|age| age > apt_cache_valid_time);
    if !missing_all.is_empty() && (lists_stale || apt_files_changed) {
        actions.insert(
            0,
            Planned {
                role: "common".into(),
                action: Action::AptUpdate,
            },
        );
    }
    HostPlan {
        host: want.host.clone(),
        actions,
    }
}

/// Canonical text of a PostgreSQL parameter value, so 100 == "100" and on == true.
fn canon(v: &Value) -> String {
    match v {
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" => "on".into(),
            "false" | "off" | "no" => "off".into(),
            _ => s.clone(),
        },
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        other => other.to_string(),
    }
}

/// The PATCH body that brings Patroni's dynamic configuration from `current` to
/// `desired`, or None when nothing differs. Parameters no longer in the inventory
/// are removed (null), so the inventory stays the source of truth.
pub fn plan_dcs(desired: &Value, current: &Value) -> Option<Value> {
    let mut patch = serde_json::Map::new();
    let (Some(want), Some(have)) = (desired.as_object(), current.as_object()) else {
        return Some(desired.clone());
    };
    for (k, v) in want {
        if k == "postgresql" {
            continue;
        }
        if have.get(k).map(canon) != Some(canon(v)) {
            patch.insert(k.clone(), v.clone());
        }
    }
    let want_pg = &want["postgresql"];
    let have_pg = have.get("postgresql").cloned().unwrap_or(Value::Null);
    let mut pg_patch = serde_json::Map::new();
    for k in ["use_pg_rewind", "use_slots"] {
        if have_pg.get(k).map(canon) != want_pg.get(k).map(canon) {
            pg_patch.insert(k.into(), want_pg[k].clone());
        }
    }
    let empty = serde_json::Map::new();
    let want_params = want_pg["parameters"].as_object().unwrap_or(&empty);
    let have_params = have_pg
        .get("parameters")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut params = serde_json::Map::new();
    for (k, v) in want_params {
        if have_params.get(k).map(canon) != Some(canon(v)) {
            params.insert(k.clone(), v.clone());
        }
    }
    for k in have_params.keys() {
        if !want_params.contains_key(k) {
            params.insert(k.clone(), Value::Null);
        }
    }
    if !params.is_empty() {
        pg_patch.insert("parameters".into(), Value::Object(params));
    }
    if !pg_patch.is_empty() {
        patch.insert("postgresql".into(), Value::Object(pg_patch));
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// Parameters that size shared memory and that a standby must hold at least at the
/// primary's value (PostgreSQL stops a standby below them), with PostgreSQL's
/// defaults.
pub const STANDBY_AT_LEAST: [(&str, i64); 5] = [
    ("max_connections", 100),
    ("max_locks_per_transaction", 64),
    ("max_prepared_transactions", 0),
    ("max_wal_senders", 10),
    ("max_worker_processes", 8),
];

/// Those of `STANDBY_AT_LEAST` that `new` lowers from `old` (values as Patroni
/// keeps them: numbers or strings; absent: PostgreSQL's default). Lowering one
/// means restarting the primary first, then the standbys.
pub fn lowered_shared_memory(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> Vec<String> {
    let int = |v: Option<&Value>, default: i64| match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(default),
        _ => default,
    };
    STANDBY_AT_LEAST
        .iter()
        .filter(|(name, default)| {
            new.contains_key(*name) && int(new.get(*name), *default) < int(old.get(*name), *default)
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Names of parameters in a DCS patch (for the report).
pub fn patched_parameters(patch: &Value) -> BTreeMap<String, Value> {
    patch["postgresql"]["parameters"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Whether writing an apt file (sources, pins) can change what `apt-get update`
/// would fetch: an existing file rewritten may drop or add sources; a new one only
/// when it holds more than comments (pgha's header alone, with no sources or pins
/// in the inventory, changes nothing, and fresh lists are then used as they are).
fn apt_lists_may_change(file: &DesiredFile, fact: Option<&super::facts::FileFact>) -> bool {
    fact.is_some()
        || String::from_utf8_lossy(&file.content)
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lowering_a_shared_memory_parameter_is_told_apart_from_raising() {
        let m = |v: Value| -> BTreeMap<String, Value> {
            v.as_object().unwrap().clone().into_iter().collect()
        };
        let old = m(json!({"max_connections": "200", "work_mem": "4MB"}));
        assert_eq!(
            lowered_shared_memory(&old, &m(json!({"max_connections": 100}))),
            ["max_connections"]
        );
        assert!(lowered_shared_memory(&old, &m(json!({"max_connections": 300}))).is_empty());
        // Absent before: PostgreSQL's default (64) is what runs.
        assert_eq!(
            lowered_shared_memory(&old, &m(json!({"max_locks_per_transaction": "32"}))),
            ["max_locks_per_transaction"]
        );
        // A parameter the patch removes goes back to its default: 200 -> 100.
        assert_eq!(
            lowered_shared_memory(&old, &m(json!({"max_connections": null}))),
            ["max_connections"]
        );
        assert!(lowered_shared_memory(&old, &m(json!({"work_mem": "1MB"}))).is_empty());
    }

    #[test]
    fn dcs_equal_modulo_representation_needs_no_patch() {
        let want = json!({"ttl": 20, "postgresql": {"use_pg_rewind": true, "use_slots": true,
            "parameters": {"max_connections": 200, "hot_standby": "on"}}});
        let have = json!({"ttl": 20, "postgresql": {"use_pg_rewind": true, "use_slots": true,
            "parameters": {"max_connections": "200", "hot_standby": true}}});
        assert_eq!(plan_dcs(&want, &have), None);
    }

    #[test]
    fn dcs_patch_holds_only_differences_and_removals() {
        let want = json!({"ttl": 20, "loop_wait": 2, "postgresql": {"use_pg_rewind": true,
            "parameters": {"max_connections": 300, "work_mem": "8MB"}}});
        let have = json!({"ttl": 20, "loop_wait": 10, "postgresql": {"use_pg_rewind": true,
            "parameters": {"max_connections": 200, "work_mem": "8MB", "old_param": "x"}}});
        let patch = plan_dcs(&want, &have).unwrap();
        assert_eq!(
            patch,
            json!({"loop_wait": 2, "postgresql": {"parameters": {"max_connections": 300, "old_param": null}}})
        );
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;
    use crate::engine::desired::DesiredRole;
    use crate::engine::facts::{FileFact, UnitFact};

    fn file(path: &str, content: &str, notify: Notify) -> DesiredFile {
        DesiredFile {
            role: "etcd".into(),
            path: path.into(),
            content: content.as_bytes().to_vec(),
            owner: "root".into(),
            group: "root".into(),
            mode: 0o644,
            stage: Stage::Configure,
            notify,
            validate: None,
            secrets: Default::default(),
            read_once: vec![],
        }
    }

    fn want() -> HostDesired {
        HostDesired {
            host: "db1".into(),
            roles: vec![DesiredRole {
                name: "etcd".into(),
                packages: vec!["etcd-server".into()],
                upgrade_with: vec![],
                files: vec![file("/etc/default/etcd", "A=1\n", Notify::Restart)],
                services: vec!["etcd".into()],
                container: None,
                dirs: vec![],
                timers: vec![],
                started_with: vec![],
            }],
            retired: vec![],
        }
    }

    fn converged() -> HostFacts {
        let mut f = HostFacts::default();
        f.packages.insert("etcd-server".into(), "3.5.16".into());
        f.files.insert(
            "/etc/default/etcd".into(),
            FileFact {
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"A=1\n")),
                owner: "root".into(),
                group: "root".into(),
                mode: 0o644,
                read_once_sha256: None,
            },
        );
        f.units.insert(
            "etcd".into(),
            UnitFact {
                active: "active".into(),
                enabled: "enabled".into(),
            },
        );
        f.apt_lists_age = Some(10);
        f
    }

    #[test]
    fn a_role_turned_off_is_stopped_where_it_runs_and_then_left_alone() {
        let mut want = want();
        let retired = |service: &str| super::super::desired::Retired {
            role: "pgbouncer".into(),
            service: service.into(),
            marker: "/etc/pgbouncer/pgbouncer.ini".into(),
            container: None,
        };
        // etcd stays wanted by a role: never retired, even if listed.
        want.retired = vec![retired("pgbouncer"), retired("etcd")];
        let mut facts = converged();
        facts.units.insert(
            "pgbouncer".into(),
            UnitFact {
                active: "active".into(),
                enabled: "enabled".into(),
            },
        );
        // Someone else's PgBouncer (no pgha header on its configuration): not ours.
        assert!(plan_host(&want, &facts, 3600).is_empty());
        facts
            .marked_paths
            .insert("/etc/pgbouncer/pgbouncer.ini".into());
        let p = plan_host(&want, &facts, 3600);
        assert_eq!(p.retired(), vec![("pgbouncer".to_string(), None)]);
        assert_eq!(
            p.actions[0].to_string().trim_end(),
            "pgbouncer stop and disable pgbouncer (turned off in the inventory)"
        );
        // Stopped but still enabled (it would start at boot): retired again.
        facts.units.get_mut("pgbouncer").unwrap().active = "inactive".into();
        assert_eq!(plan_host(&want, &facts, 3600).retired().len(), 1);
        // Stopped and disabled, or never installed: nothing to do.
        facts.units.get_mut("pgbouncer").unwrap().enabled = "disabled".into();
        assert!(plan_host(&want, &facts, 3600).is_empty());
        facts.units.remove("pgbouncer");
        assert!(plan_host(&want, &facts, 3600).is_empty());
    }

    #[test]
    fn converged_host_has_an_empty_plan() {
        assert!(plan_host(&want(), &converged(), 86400).is_empty());
    }

    #[test]
    fn bare_host_gets_update_install_write_enable_start_but_no_restart() {
        let p = plan_host(&want(), &HostFacts::default(), 86400);
        let shown: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shown,
            [
                "common    apt-get update",
                "etcd      write /etc/default/etcd (new)",
                "etcd      install etcd-server",
                "etcd      enable etcd",
                "etcd      start etcd",
            ]
        );
        assert_eq!(
            p.notify("etcd"),
            Notify::None,
            "a starting service needs no restart"
        );
    }

    #[test]
    fn changed_content_on_a_running_service_notifies_its_handler() {
        let mut f = converged();
        f.files.get_mut("/etc/default/etcd").unwrap().sha256 = "other".into();
        let p = plan_host(&want(), &f, 86400);
        assert_eq!(p.notify("etcd"), Notify::Restart);
        assert!(!p.apt_update(), "nothing to install");
    }

    #[test]
    fn a_service_started_without_a_setting_it_must_have_restarts() {
        let mut w = want();
        w.roles[0].started_with = vec!["PYTHONPATH=/etc/x".into()];
        let mut f = converged();
        // Not read (not running, or not asked): nothing to say.
        assert_eq!(plan_host(&w, &f, 86400).notify("etcd"), Notify::None);
        let running = |env: &[&str]| env.iter().map(|s| s.to_string()).collect();
        f.process_env
            .insert("etcd".into(), running(&["PYTHONPATH=/etc/x"]));
        assert_eq!(plan_host(&w, &f, 86400).notify("etcd"), Notify::None);
        for env in [&[][..], &["PYTHONPATH=/elsewhere"][..]] {
            f.process_env.insert("etcd".into(), running(env));
            let p = plan_host(&w, &f, 86400);
            assert_eq!(p.notify("etcd"), Notify::Restart, "started with {env:?}");
            assert!(
                p.actions
                    .iter()
                    .all(|a| !matches!(a.action, Action::WriteFile { .. })),
                "the files are as they should be: {:?}",
                p.actions
            );
        }
    }

    #[test]
    fn a_change_in_read_once_lines_only_writes_the_file() {
        let read_once = vec!["ETCD_INITIAL_CLUSTER=".to_string()];
        let mut w = want();
        let f0 = &mut w.roles[0].files[0];
        f0.content = b"A=1\nETCD_INITIAL_CLUSTER=\"db1=x,db2=y\"\n".to_vec();
        f0.read_once = read_once.clone();
        // On the host: another initial membership, the rest the same.
        let on_host = b"A=1\nETCD_INITIAL_CLUSTER=\"db1=x\"\n";
        let mut f = converged();
        let fact = f.files.get_mut("/etc/default/etcd").unwrap();
        fact.sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(on_host));
        fact.read_once_sha256 = Some(without_read_once(on_host, &read_once));
        let p = plan_host(&w, &f, 86400);
        assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
        assert_eq!(p.notify("etcd"), Notify::None);
        // Any other line changed too: a restart.
        let on_host = b"A=2\nETCD_INITIAL_CLUSTER=\"db1=x\"\n";
        let fact = f.files.get_mut("/etc/default/etcd").unwrap();
        fact.read_once_sha256 = Some(without_read_once(on_host, &read_once));
        assert_eq!(plan_host(&w, &f, 86400).notify("etcd"), Notify::Restart);
        // grep -v | sha256sum on the host: every kept line ends with a newline.
        assert_eq!(
            without_read_once(b"A=1\nETCD_INITIAL_CLUSTER=z", &read_once),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"A=1\n"))
        );
    }

    #[test]
    fn mode_only_change_rewrites_without_restart() {
        let mut f = converged();
        f.files.get_mut("/etc/default/etcd").unwrap().mode = 0o666;
        let p = plan_host(&want(), &f, 86400);
        assert_eq!(p.actions.len(), 1);
        assert_eq!(p.notify("etcd"), Notify::None);
    }

    /// pgha's apt files written for the first time with nothing but its header
    /// (no sources, no pins) leave fresh lists alone; with a source, or over a file
    /// that was there, they do not.
    #[test]
    fn new_apt_files_that_add_nothing_keep_fresh_lists() {
        let apt = |content: &str| DesiredFile {
            path: "/etc/apt/sources.list.d/pgha.list".into(),
            content: content.as_bytes().to_vec(),
            notify: Notify::AptUpdate,
            ..want().roles[0].files[0].clone()
        };
        let header =
            "# Managed by pgha (inventory: apt_sources). Changes here are overwritten.\n\n";
        let mut w = want();
        w.roles[0].files.push(apt(header));
        let mut f = converged();
        f.packages.clear();
        let p = plan_host(&w, &f, 86400);
        assert!(!p.apt_update(), "{:?}", p.actions);
        assert!(
            p.actions.iter().any(|a| a
                .to_string()
                .contains("write /etc/apt/sources.list.d/pgha.list")),
            "the file is still written: {:?}",
            p.actions
        );
        w.roles[0].files[1] = apt(&format!(
            "{header}deb http://example.org/debian trixie main\n"
        ));
        assert!(plan_host(&w, &f, 86400).apt_update(), "a new source");
        w.roles[0].files[1] = apt(header);
        f.files.insert(
            "/etc/apt/sources.list.d/pgha.list".into(),
            FileFact {
                sha256: "someone else's".into(),
                owner: "root".into(),
                group: "root".into(),
                mode: 0o644,
                read_once_sha256: None,
            },
        );
        assert!(
            plan_host(&w, &f, 86400).apt_update(),
            "an existing file rewritten"
        );
    }

    #[test]
    fn fresh_apt_lists_skip_the_update() {
        let mut f = converged();
        f.packages.clear();
        assert!(!plan_host(&want(), &f, 86400).apt_update());
        f.apt_lists_age = Some(90000);
        assert!(plan_host(&want(), &f, 86400).apt_update());
    }

    /// etcd's role given a directory and two timers, one scheduled; and the facts
    /// as applying them leaves the host.
    fn with_units() -> (HostDesired, HostFacts) {
        use super::super::desired::DesiredTimer;
        use super::super::facts::SystemdUnitFact;
        let mut want = want();
        let r = &mut want.roles[0];
        r.dirs = vec![DesiredDir {
            path: "/var/spool/pgbackrest".into(),
            owner: "postgres".into(),
            group: "postgres".into(),
            mode: 0o750,
        }];
        let timer = |kind: &str, scheduled| DesiredTimer {
            timer: format!("pgha-backup-{kind}.timer"),
            service: format!("pgha-backup@{kind}.service"),
            scheduled,
        };
        r.timers = vec![timer("full", true), timer("incr", false)];
        let mut f = converged();
        f.dirs.insert(
            "/var/spool/pgbackrest".into(),
            FileFact {
                owner: "postgres".into(),
                group: "postgres".into(),
                mode: 0o750,
                ..Default::default()
            },
        );
        let unit = |active: &str, enabled: &str| SystemdUnitFact {
            load: "loaded".into(),
            active: active.into(),
            enabled: enabled.into(),
            needs_reload: false,
        };
        f.systemd_units
            .insert("pgha-backup-full.timer".into(), unit("active", "enabled"));
        f.systemd_units.insert(
            "pgha-backup@full.service".into(),
            unit("inactive", "static"),
        );
        (want, f)
    }

    #[test]
    fn directories_are_planned_when_missing_or_off() {
        let (want, mut f) = with_units();
        assert!(plan_host(&want, &f, 86400).is_empty());
        f.dirs.get_mut("/var/spool/pgbackrest").unwrap().mode = 0o700;
        let p = plan_host(&want, &f, 86400);
        assert_eq!(p.dirs("etcd").len(), 1);
        assert_eq!(
            p.actions[0].to_string(),
            "etcd      directory /var/spool/pgbackrest postgres:postgres 0750 (owner/mode changed)"
        );
        f.dirs.get_mut("/var/spool/pgbackrest").unwrap().mode = 0o750;
        f.dirs.get_mut("/var/spool/pgbackrest").unwrap().group = "root".into();
        assert_eq!(plan_host(&want, &f, 86400).dirs("etcd").len(), 1);
        f.dirs.clear();
        assert!(matches!(
            plan_host(&want, &f, 86400).actions[0].action,
            Action::Directory {
                reason: FileReason::New,
                ..
            }
        ));
    }

    #[test]
    fn timers_are_planned_for_each_kind_of_drift() {
        let (want, settled) = with_units();
        let reason = |f: &HostFacts| -> Vec<String> {
            plan_host(&want, f, 86400)
                .actions
                .iter()
                .map(|a| a.to_string())
                .collect()
        };
        type Spoil = fn(&mut HostFacts);
        let cases: [(Spoil, &str); 6] = [
            (
                |f| {
                    f.systemd_units
                        .get_mut("pgha-backup-full.timer")
                        .unwrap()
                        .enabled = "disabled".into()
                },
                "enable and start pgha-backup-full.timer (disabled)",
            ),
            (
                |f| {
                    f.systemd_units
                        .get_mut("pgha-backup-full.timer")
                        .unwrap()
                        .active = "inactive".into()
                },
                "start pgha-backup-full.timer (stopped)",
            ),
            (
                |f| {
                    f.systemd_units
                        .get_mut("pgha-backup@full.service")
                        .unwrap()
                        .needs_reload = true
                },
                "reload systemd for pgha-backup-full.timer (unit files changed)",
            ),
            (
                |f| {
                    f.systemd_units
                        .get_mut("pgha-backup@full.service")
                        .unwrap()
                        .load = "not-found".into()
                },
                "enable and start pgha-backup-full.timer (new)",
            ),
            (
                |f| {
                    f.systemd_units.remove("pgha-backup-full.timer");
                },
                "enable and start pgha-backup-full.timer (new)",
            ),
            (
                |f| {
                    f.existing_paths
                        .insert("/etc/systemd/system/pgha-backup-incr.timer".into());
                },
                "stop and remove pgha-backup-incr.timer (no longer scheduled)",
            ),
        ];
        for (spoil, want_line) in cases {
            let mut f = settled.clone();
            spoil(&mut f);
            assert_eq!(reason(&f), [format!("etcd      {want_line}")]);
        }
        // A unit file of the role written this run: systemd must read it again.
        let (mut want, mut f) = with_units();
        want.roles[0].files.push(file(
            "/etc/systemd/system/pgha-backup@.service",
            "[Unit]\n",
            Notify::None,
        ));
        f.files.remove("/etc/systemd/system/pgha-backup@.service");
        let p = plan_host(&want, &f, 86400);
        assert_eq!(p.timers("etcd"), (vec!["pgha-backup-full.timer"], vec![]));
        // Another timer's file: nothing for this one.
        let (mut want, f) = with_units();
        want.roles[0].files.push(file(
            "/etc/systemd/system/pgha-backup-diff.timer",
            "[Timer]\n",
            Notify::None,
        ));
        let p = plan_host(&want, &f, 86400);
        assert_eq!(p.timers("etcd"), (vec![], vec![]));
        assert_eq!(
            unit_file("pgha-backup-verify.service"),
            "/etc/systemd/system/pgha-backup-verify.service"
        );
    }
}
