//! What the backup phase leaves on the hosts besides files: pgBackRest's
//! directories and, on the repository's host, the scheduled timers; the commands
//! that make them so, and whether a host's facts show them so already (then a
//! re-run sends no command). Pure.

use crate::engine::facts::HostFacts;
use crate::inventory::Cluster;
use crate::ssh::shell_quote;

/// The timers pgha may install, by kind (`pgha-backup-<kind>.timer`).
const TIMER_KINDS: [&str; 4] = ["full", "diff", "incr", "verify"];

/// The directories pgBackRest needs on a host, owned by postgres (the repository's
/// only on its host).
pub fn dirs(c: &Cluster, repository: bool) -> Vec<String> {
    let mut dirs = vec![
        "/var/log/pgbackrest".to_string(),
        "/var/spool/pgbackrest".into(),
    ];
    if repository && !c.s3() {
        dirs.push(c.backup_repo_path.clone());
    }
    dirs
}

pub fn dirs_script(c: &Cluster, repository: bool) -> String {
    let quoted: Vec<String> = dirs(c, repository).iter().map(|d| shell_quote(d)).collect();
    format!(
        "install -d -o postgres -g postgres -m 0750 {}",
        quoted.join(" ")
    )
}

/// The facts show every directory `dirs_script` makes, as it makes them.
pub fn dirs_settled(c: &Cluster, repository: bool, f: &HostFacts) -> bool {
    dirs(c, repository).iter().all(|d| {
        f.dirs
            .get(d)
            .is_some_and(|d| d.owner == "postgres" && d.group == "postgres" && d.mode == 0o750)
    })
}

fn wanted(c: &Cluster, kind: &str) -> bool {
    match kind {
        "full" => !c.backup_schedule_full.is_empty(),
        "diff" => !c.backup_schedule_diff.is_empty(),
        "incr" => !c.backup_schedule_incr.is_empty(),
        _ => !c.backup_schedule_verify.is_empty(),
    }
}

fn timer(kind: &str) -> String {
    format!("pgha-backup-{kind}.timer")
}

/// The scheduled timers' units: each timer and the service it starts.
fn timer_units(c: &Cluster) -> Vec<String> {
    TIMER_KINDS
        .iter()
        .filter(|k| wanted(c, k))
        .flat_map(|k| match *k {
            "verify" => [timer(k), "pgha-backup-verify.service".to_string()],
            k => [timer(k), format!("pgha-backup@{k}.service")],
        })
        .collect()
}

/// The unit files of timers not scheduled (removed when found).
fn unscheduled_timer_files(c: &Cluster) -> Vec<String> {
    TIMER_KINDS
        .iter()
        .filter(|k| !wanted(c, k))
        .map(|k| format!("/etc/systemd/system/{}", timer(k)))
        .collect()
}

/// What the repository's host's facts read for `timers_settled`: whole unit names
/// and paths.
pub fn timer_facts(c: &Cluster) -> (Vec<String>, Vec<String>) {
    (timer_units(c), unscheduled_timer_files(c))
}

/// The facts show what `timers_script` would leave: every scheduled timer enabled
/// and running, systemd up to date with its units' files, no other timer's file.
pub fn timers_settled(c: &Cluster, f: &HostFacts) -> bool {
    let units = timer_units(c);
    units.iter().all(|u| {
        f.systemd_units.get(u).is_some_and(|s| {
            s.load == "loaded"
                && !s.needs_reload
                && (!u.ends_with(".timer") || (s.enabled == "enabled" && s.active == "active"))
        })
    }) && unscheduled_timer_files(c).iter().all(|p| !f.exists(p))
}

/// Enable the scheduled timers, disable and remove the others; prints one line per
/// change.
pub fn timers_script(c: &Cluster) -> String {
    // systemd reads new or changed unit files on a reload only; a reload costs a
    // re-run a fifth of a second, so it happens when a wanted unit asks for one.
    let units = timer_units(c);
    let mut s = String::from("set -e\n");
    if !units.is_empty() {
        s.push_str(&format!(
            "if systemctl show -p LoadState -p NeedDaemonReload --value {} | grep -qxE 'yes|not-found'; \
             then systemctl daemon-reload; fi\n",
            units.join(" ")
        ));
    }
    for k in TIMER_KINDS {
        let t = timer(k);
        if wanted(c, k) {
            s.push_str(&format!(
                "if ! systemctl is-enabled --quiet {t} || ! systemctl is-active --quiet {t}; then \
                 systemctl enable --now --quiet {t}; echo \"enabled {t}\"; fi\n"
            ));
        } else {
            s.push_str(&format!(
                "if [ -f /etc/systemd/system/{t} ]; then systemctl disable --now --quiet {t} || true; \
                 rm -f /etc/systemd/system/{t}; systemctl daemon-reload; echo \"removed {t}\"; fi\n"
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_directory_only_on_its_host() {
        let c = Cluster::default();
        assert!(dirs_script(&c, true).ends_with("/var/lib/pgbackrest"));
        assert!(!dirs_script(&c, false).contains("/var/lib/pgbackrest"));
    }

    #[test]
    fn timers_follow_the_schedules() {
        let c = Cluster {
            backup_schedule_incr: String::new(),
            ..Cluster::default()
        };
        let s = timers_script(&c);
        assert!(s.contains("systemctl enable --now --quiet pgha-backup-full.timer"));
        assert!(s.contains("systemctl enable --now --quiet pgha-backup-verify.timer"));
        assert!(s.contains("rm -f /etc/systemd/system/pgha-backup-incr.timer"));
        // A reload only when a wanted unit is new or changed on disk.
        assert!(s.contains(
            "--value pgha-backup-full.timer pgha-backup@full.service pgha-backup-diff.timer \
             pgha-backup@diff.service pgha-backup-verify.timer pgha-backup-verify.service | \
             grep -qxE 'yes|not-found'; then systemctl daemon-reload; fi"
        ));
        assert!(!s.contains("pgha-backup@incr.service"));
    }

    /// Facts as the timers script leaves them, for `c`.
    fn settled_facts(c: &Cluster) -> HostFacts {
        use crate::engine::facts::SystemdUnitFact;
        let mut f = HostFacts::default();
        for u in timer_units(c) {
            let timer = u.ends_with(".timer");
            f.systemd_units.insert(
                u,
                SystemdUnitFact {
                    load: "loaded".into(),
                    active: if timer { "active" } else { "inactive" }.into(),
                    enabled: if timer { "enabled" } else { "static" }.into(),
                    needs_reload: false,
                },
            );
        }
        f
    }

    #[test]
    fn timers_are_settled_only_as_the_script_would_leave_them() {
        let c = Cluster {
            backup_schedule_incr: String::new(),
            ..Cluster::default()
        };
        let (units, unscheduled) = timer_facts(&c);
        assert!(units.contains(&"pgha-backup@full.service".to_string()));
        assert_eq!(
            unscheduled,
            vec!["/etc/systemd/system/pgha-backup-incr.timer"]
        );
        assert!(timers_settled(&c, &settled_facts(&c)));
        type Spoil = fn(&mut HostFacts);
        let cases: [(&str, Spoil); 5] = [
            ("a timer disabled", |f| {
                f.systemd_units
                    .get_mut("pgha-backup-diff.timer")
                    .unwrap()
                    .enabled = "disabled".into()
            }),
            ("a timer stopped", |f| {
                f.systemd_units
                    .get_mut("pgha-backup-full.timer")
                    .unwrap()
                    .active = "inactive".into()
            }),
            ("a unit file changed on disk", |f| {
                f.systemd_units
                    .get_mut("pgha-backup@full.service")
                    .unwrap()
                    .needs_reload = true
            }),
            ("a unit not read", |f| {
                f.systemd_units.remove("pgha-backup-verify.service");
            }),
            ("an unscheduled timer's file", |f| {
                f.existing_paths
                    .insert("/etc/systemd/system/pgha-backup-incr.timer".into());
            }),
        ];
        for (what, spoil) in cases {
            let mut f = settled_facts(&c);
            spoil(&mut f);
            assert!(!timers_settled(&c, &f), "{what}");
        }
    }

    #[test]
    fn directories_are_settled_with_postgres_owner_and_mode_0750() {
        use crate::engine::facts::FileFact;
        let c = Cluster::default();
        let mut f = HostFacts::default();
        for d in dirs(&c, true) {
            let fact = FileFact {
                owner: "postgres".into(),
                group: "postgres".into(),
                mode: 0o750,
                ..Default::default()
            };
            f.dirs.insert(d, fact);
        }
        assert!(dirs_settled(&c, true, &f));
        f.dirs.get_mut("/var/spool/pgbackrest").unwrap().mode = 0o755;
        assert!(!dirs_settled(&c, true, &f));
        f.dirs.get_mut("/var/spool/pgbackrest").unwrap().mode = 0o750;
        f.dirs.get_mut("/var/log/pgbackrest").unwrap().owner = "root".into();
        assert!(!dirs_settled(&c, true, &f));
        f.dirs.remove(&c.backup_repo_path);
        f.dirs.get_mut("/var/log/pgbackrest").unwrap().owner = "postgres".into();
        assert!(
            dirs_settled(&c, false, &f),
            "the repository's only on its host"
        );
        assert!(!dirs_settled(&c, true, &f));
    }
}
