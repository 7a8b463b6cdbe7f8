//! Backups with pgBackRest: the deploy's backup phase (timers, stanza, the first
//! full backup), taking a backup with its progress shown, the restore test, and
//! the repository's health for `verify`. Every pgBackRest command runs as
//! `postgres` on the repository's host (root would leave lock files postgres
//! cannot remove); what pgBackRest says is read by `backup_info`.

use std::time::{Duration, Instant};

use super::backup_info::{self, BackupSet, RepoInfo, Verified, human_age, human_bytes};
use super::converge::Converge;
use super::run::{Ctx, host_failed};
use crate::engine::apply;
use crate::engine::facts::HostFacts;
use crate::error::{Exit, Failure};
use crate::inventory::Cluster;
use crate::ssh::{Cmd, Output, Session, shell_quote};

/// Bounds of pgBackRest's commands (a backup of a large cluster takes hours).
const INFO: Duration = Duration::from_secs(60);
const CHECK: Duration = Duration::from_secs(180);
const STANZA: Duration = Duration::from_secs(300);
pub const BACKUP: Duration = Duration::from_secs(12 * 3600);
pub const RESTORE_TEST: Duration = Duration::from_secs(12 * 3600);
/// The restore test's script on the repository's host (roles/pgbackrest.yml).
const VERIFY_SCRIPT: &str = "/usr/local/lib/pgha/backup-verify";
/// The timers pgha may install, by kind (`pgha-backup-<kind>.timer`).
const TIMER_KINDS: [&str; 4] = ["full", "diff", "incr", "verify"];

/// A pgBackRest command line for the cluster's stanza, run as postgres.
pub fn pgbackrest(c: &Cluster, args: &str) -> String {
    format!(
        "{} pgbackrest --stanza={} {args}",
        crate::install::as_postgres(c),
        shell_quote(c.stanza())
    )
}

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
fn timers_script(c: &Cluster) -> String {
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

async fn sh(s: &Session, script: String, timeout: Duration) -> Result<Output, Failure> {
    s.exec(&Cmd::root(script).timeout(timeout))
        .await
        .map_err(Failure::from)
}

fn both(o: &Output) -> String {
    format!("{}\n{}", o.stdout_str(), o.stderr_str())
}

/// How long a command waits out a stanza lock held by another command, or no primary yet.
const TRANSIENT_WAIT: Duration = Duration::from_secs(120);

/// pgBackRest's "unable to acquire lock" (error 050), or "unable to find primary
/// cluster" (056): what a moment later may not say.
fn worth_retrying(out: &str) -> bool {
    out.contains("ERROR: [050]") || out.contains("ERROR: [056]")
}

/// A pgBackRest command that takes the stanza's archive lock, run again while
/// another holds it: on a new cluster the leader's archive-push keeps reaching the
/// repository (and failing until the stanza exists) and holds that lock for a
/// moment each time. Also run again while no database host answers as the primary
/// (seen on a cluster bootstrapped a moment before, under load): a primary that
/// stays unreachable fails when the wait ends, with what each host answered.
async fn past_transient_errors(
    s: &Session,
    c: &Cluster,
    args: &str,
    timeout: Duration,
) -> Result<Output, Failure> {
    let what = format!(
        "`pgbackrest {args}` on {} to get the stanza's lock and find the primary",
        s.host()
    );
    crate::wait::until(&what, TRANSIENT_WAIT, || async {
        match sh(s, pgbackrest(c, args), timeout).await {
            Ok(out) if !out.success() && worth_retrying(&both(&out)) => {
                Err(backup_info::errors(&both(&out)))
            }
            other => Ok(other),
        }
    })
    .await?
}

#[cfg(test)]
#[test]
fn only_a_held_lock_or_no_primary_yet_is_waited_out() {
    assert!(worth_retrying(
        "P00  ERROR: [050]: unable to acquire lock on file '/tmp/pgbackrest/x-archive-1.lock'"
    ));
    assert!(!worth_retrying(
        "P00  ERROR: [055]: unable to load info file"
    ));
    assert!(worth_retrying(
        "P00  ERROR: [056]: unable to find primary cluster - cannot proceed"
    ));
}

/// The repository's host, or why there is none.
pub fn repository_host(ctx: &Ctx<'_>) -> Result<String, Failure> {
    ctx.inv
        .backup_host()
        .map(|h| h.name.clone())
        .ok_or_else(|| {
            Failure::new(
                Exit::Inventory,
                format!(
                    "{}: backups are off for this cluster (backup_enabled: false): turn them on and run `pgha deploy`",
                    ctx.inv.path.display()
                ),
            )
        })
}

/// `pgbackrest info` of the stanza, read.
pub async fn info(s: &Session, c: &Cluster) -> Result<RepoInfo, Failure> {
    let out = sh(s, pgbackrest(c, "--output=json info"), INFO).await?;
    if !out.success() {
        return Err(host_failed(format!(
            "{}: `pgbackrest info` failed: {}",
            s.host(),
            backup_info::errors(&both(&out))
        )));
    }
    backup_info::parse_info(&out.stdout_str(), c.stanza())
        .map_err(|e| host_failed(format!("{}: {e}", s.host())))
}

/// `pgbackrest check`: the stanza's configuration matches the cluster, and a WAL
/// switch forced on the leader reaches the repository (within archive-timeout).
pub async fn check(s: &Session, c: &Cluster) -> Result<(), Failure> {
    let out = sh(s, pgbackrest(c, "check"), CHECK).await?;
    if out.success() {
        Ok(())
    } else {
        Err(Failure::error(format!(
            "pgBackRest check on {} failed: {} (WAL archiving or the repository is not working: \
             `journalctl -u pgbackrest` and /var/log/pgbackrest on the hosts say more)",
            s.host(),
            backup_info::errors(&both(&out))
        )))
    }
}

/// Take a backup of type `kind` (full, diff, incr) from the repository's host,
/// against the leader (or a standby), showing its progress; the new backup.
pub async fn take(
    ctx: &Ctx<'_>,
    s: &Session,
    kind: &str,
    from_standby: bool,
) -> Result<BackupSet, Failure> {
    let c = &ctx.inv.cluster;
    let before: Option<String> = info(s, c).await?.newest().map(|b| b.label.clone());
    let phase = ctx.ui.phase("backup");
    phase.set(format!("{kind} backup starting on {}", s.host()));
    let standby = if from_standby {
        "--backup-standby=y "
    } else {
        ""
    };
    let args = format!("--type={kind} {standby}--log-level-console=warn backup");
    let started = Instant::now();
    let run = sh(s, pgbackrest(c, &args), BACKUP);
    tokio::pin!(run);
    // Progress from pgBackRest's own lock status while the backup runs.
    let out = loop {
        tokio::select! {
            out = &mut run => break out?,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                if let Ok(i) = info(s, c).await
                    && let Some((done, all)) = i.running
                    && all > 0
                {
                    phase.set(format!(
                        "{kind} backup: {} of {} copied ({}s)",
                        human_bytes(done),
                        human_bytes(all),
                        started.elapsed().as_secs()
                    ));
                }
            }
        }
    };
    if !out.success() {
        return Err(host_failed(format!(
            "{kind} backup on {} failed: {}",
            s.host(),
            backup_info::errors(&both(&out))
        )));
    }
    let after = info(s, c).await?;
    let new = after
        .newest()
        .filter(|b| Some(&b.label) != before.as_ref())
        .cloned()
        .ok_or_else(|| {
            host_failed(format!(
                "{}: pgBackRest reported success but the repository shows no new backup",
                s.host()
            ))
        })?;
    phase.done(format!(
        "{} backup {}: {} of data, {} in the repository, {}s",
        new.kind,
        new.label,
        human_bytes(new.size),
        human_bytes(new.repo_size),
        started.elapsed().as_secs()
    ));
    Ok(new)
}

/// Restore `set` (None: the newest backup) into a scratch directory on the
/// repository's host and check it (templates/backup-verify.sh.j2). A failed check
/// is a result, not an error: the caller reports it.
pub async fn restore_test(s: &Session, set: Option<&str>) -> Result<Verified, Failure> {
    let script = match set {
        Some(l) => format!("{VERIFY_SCRIPT} {}", shell_quote(l)),
        None => VERIFY_SCRIPT.to_string(),
    };
    let out = sh(s, script, RESTORE_TEST).await?;
    backup_info::parse_verified(&both(&out)).map_err(|e| host_failed(format!("{}: {e}", s.host())))
}

/// The repository's health for `verify`: pgBackRest's check passes, and the newest
/// backup's age against `backup_max_age_hours`.
pub async fn verify_repository(ctx: &Ctx<'_>) -> Result<Option<String>, Failure> {
    let Some(repo) = ctx.inv.backup_host() else {
        return Ok(None);
    };
    if !ctx.has_session(&repo.name) {
        return Ok(None);
    }
    let c = &ctx.inv.cluster;
    let s = ctx.session(&repo.name)?;
    // The listing does not depend on the check: read beside it (the check, about
    // 0.4 s of pgBackRest polling for the segment, is a re-run's longest step).
    let (checked, i) = tokio::join!(check(s, c), info(s, c));
    checked.map_err(|f| Failure::error(format!("verify: {}", f.message)))?;
    let i = i?;
    let newest = match i.newest() {
        Some(b) => {
            let age = now() - b.stop;
            format!(
                "newest backup {} {} ago ({})",
                b.kind,
                human_age(age),
                human_bytes(b.size)
            )
        }
        None => "no backup yet".into(),
    };
    Ok(Some(format!(
        "stanza {} on {}: check passed (a WAL switch reached the repository); {}; {} backup(s) kept",
        c.stanza(),
        repo.name,
        newest,
        i.backups.len()
    )))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Converge<'_, '_> {
    /// The backup phase of a deploy: the timers on the repository's host, the
    /// stanza (created once), and a first full backup when the repository has none.
    pub async fn backups(&self) -> Result<(), Failure> {
        let Some(repo) = self.inv.backup_host() else {
            return Ok(());
        };
        self.pgbackrest_servers().await?;
        if !self.ctx.acts_on(&repo.name) {
            return Ok(());
        }
        let c = &self.inv.cluster;
        let phase = self.ctx.ui.phase("backups");
        let s = self.ctx.session(&repo.name)?;
        self.ctx.ensure_locked("schedule backups").await?;
        // The facts were read at the run's start: nothing planned on the host since
        // (no unit file written), what they show still holds.
        let settled = self.plans.get(&repo.name).is_some_and(|p| p.is_empty())
            && self
                .facts
                .get(&repo.name)
                .is_some_and(|f| timers_settled(c, f));
        let timers = async {
            if settled {
                return Ok(String::new());
            }
            apply::run(s, timers_script(c))
                .await
                .map_err(|e| host_failed(format!("{}: timers: {e:#}", repo.name)))
        };
        // The listing does not depend on the timers: read beside them.
        let (changed, i) = tokio::join!(timers, info(s, c));
        for l in changed?.lines().filter(|l| !l.trim().is_empty()) {
            self.ctx.ui.host(&repo.name, l);
            self.ctx.ui.changed(&repo.name, 1);
        }
        let i = i?;
        if !i.stanza_exists() && !i.stanza_missing() {
            return Err(host_failed(format!(
                "{}: the repository of stanza {} cannot be read: {}",
                repo.name,
                c.stanza(),
                backup_info::errors(&i.status_message)
            )));
        }
        if !i.stanza_exists() {
            self.ctx.ensure_locked("create the stanza").await?;
            phase.set(format!("creating stanza {}", c.stanza()));
            let out = past_transient_errors(s, c, "--log-level-console=warn stanza-create", STANZA)
                .await?;
            if !out.success() {
                return Err(host_failed(format!(
                    "{}: `pgbackrest stanza-create` failed: {}",
                    repo.name,
                    backup_info::errors(&both(&out))
                )));
            }
            self.ctx
                .ui
                .host(&repo.name, format!("stanza {} created", c.stanza()));
            self.ctx.ui.changed(&repo.name, 1);
        }
        if i.newest().is_none() {
            self.ctx.ensure_locked("take the first full backup").await?;
            drop(phase);
            let b = match take(self.ctx, s, "full", false).await {
                // On a cluster bootstrapped moments ago, WAL archiving may lag:
                // pushes refused before the stanza existed (or cut by pgBackRest's
                // server starting) leave PostgreSQL's archiver retrying on its own
                // schedule, and the backup gives up waiting for its last segment
                // after archive-timeout (CI saw it once under load). By then the
                // backlog is moving: one more attempt, said in a warning.
                Err(f) if backup_info::archive_lagged(&f.message) => {
                    self.ctx.ui.warn(format!(
                        "the first full backup waited too long for WAL archiving ({}); taking it once more",
                        f.message
                    ));
                    take(self.ctx, s, "full", false).await?
                }
                r => r?,
            };
            self.ctx
                .ui
                .host(&repo.name, format!("first full backup {} taken", b.label));
            self.ctx.ui.changed(&repo.name, 1);
            return Ok(());
        }
        phase.done(format!("repository on {}", repo.name));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_as_postgres_for_the_stanza() {
        let c = Cluster {
            cluster_name: "demo".into(),
            ..Cluster::default()
        };
        assert_eq!(
            pgbackrest(&c, "info"),
            "runuser -u postgres -- pgbackrest --stanza=demo info"
        );
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
