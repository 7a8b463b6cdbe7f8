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
use crate::engine::desired::DesiredTimer;
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

/// A pgBackRest command line for the cluster's stanza, run as postgres.
pub fn pgbackrest(c: &Cluster, args: &str) -> String {
    format!(
        "{} pgbackrest --stanza={} {args}",
        crate::install::as_postgres(c),
        shell_quote(c.stanza())
    )
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
        // The timers the plan holds (a unit file written this run plans a reload).
        let (start, remove) = self
            .plans
            .get(&repo.name)
            .map(|p| p.timers("pgbackrest"))
            .unwrap_or_default();
        let scheduled: Vec<&DesiredTimer> = self.desired[&repo.name]
            .timers()
            .filter(|t| t.scheduled)
            .collect();
        let timers = async {
            if start.is_empty() && remove.is_empty() {
                return Ok(String::new());
            }
            apply::run(s, apply::timers_script(&scheduled, &start, &remove))
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
            self.archiver_counted_from_now().await;
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

impl Converge<'_, '_> {
    /// The leader's archiver refused every push before the stanza existed (it
    /// retries them): its counters start again once it does, so that `status` does
    /// not call a new cluster's expected refusals earlier failures. Best effort.
    async fn archiver_counted_from_now(&self) {
        let c = &self.inv.cluster;
        let leader =
            match crate::probe::patroni::cluster_any(&self.ctx.ep.net, &self.ctx.ep.patroni_apis())
                .await
            {
                Ok(view) => view.leader().map(|l| l.name.clone()),
                Err(_) => None,
            };
        let Some(leader) = leader.filter(|l| self.ctx.has_session(l)) else {
            return;
        };
        let script = format!(
            "{} -qAt -c \"SELECT failed_count FROM pg_stat_archiver\" \
             -c \"SELECT pg_stat_reset_shared('archiver')\"",
            crate::install::psql(c)
        );
        match self
            .ctx
            .run_on(&leader, "reset the archiver's counters", script)
            .await
        {
            Ok(out) => {
                let refused = out.lines().next().unwrap_or("0").trim().to_string();
                if refused != "0" {
                    self.ctx.ui.host(
                        &leader,
                        format!(
                            "archiver's counters reset: {refused} push(es) refused before the stanza existed"
                        ),
                    );
                }
            }
            Err(e) => self.ctx.ui.warn(format!(
                "the archiver's counters were not reset ({}): `status` counts the pushes refused before the stanza existed",
                e.message
            )),
        }
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
    }
}
