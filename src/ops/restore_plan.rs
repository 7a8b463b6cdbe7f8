//! Point-in-time recovery, the pure part: the target a user names, checked against
//! the recovery window, turned into pgBackRest's options; the record that lets an
//! interrupted restore resume; the shell steps run on the hosts. No I/O.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::backup_info::{BackupSet, utc};
use crate::inventory::Cluster;
use crate::ssh::shell_quote;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Target {
    /// Seconds and microseconds since the epoch, UTC.
    Time { secs: i64, micros: u32 },
    /// A WAL position, `X/Y`.
    Lsn(String),
    /// The end of the archived WAL.
    Latest,
}

/// Parse `--time`: RFC 3339 (`2026-12-02T10:15:00Z`, `...+01:00`), or the same with a
/// space for the `T`. A time without a zone is refused: a restore must not depend on
/// which machine's zone the operator typed it in.
pub fn parse_time(s: &str) -> Result<Target, String> {
    let t = s.trim();
    let normal = if t.len() > 10 && t.as_bytes()[10] == b' ' {
        format!("{}T{}", &t[..10], &t[11..])
    } else {
        t.to_string()
    };
    let normal = normal.replace(" +", "+").replace(" -", "-");
    match OffsetDateTime::parse(&normal, &Rfc3339) {
        Ok(d) => Ok(Target::Time {
            secs: d.unix_timestamp(),
            micros: d.microsecond(),
        }),
        Err(_) => {
            let zoned = t.ends_with('Z')
                || t.ends_with('z')
                || t.rsplit_once(['+', '-'])
                    .is_some_and(|(_, z)| z.len() == 5 && z.as_bytes()[2] == b':');
            Err(if zoned {
                format!(
                    "--time {t:?}: not a date and time; write it as 2026-12-02T10:15:00Z (UTC) or \
                     2026-12-02T11:15:00+01:00"
                )
            } else {
                format!(
                    "--time {t:?}: give the time zone (Z for UTC, or an offset such as +01:00), \
                     e.g. 2026-12-02T10:15:00Z"
                )
            })
        }
    }
}

/// Parse `--lsn` (`16/B374D848`): two hexadecimal halves of 1-8 digits.
pub fn parse_lsn(s: &str) -> Result<Target, String> {
    lsn_value(s.trim())
        .map(|_| Target::Lsn(s.trim().to_uppercase()))
        .ok_or_else(|| {
            format!(
                "--lsn {s:?}: not a WAL position; write it as PostgreSQL prints it, e.g. 0/5000060 \
                 (SELECT pg_current_wal_lsn())"
            )
        })
}

/// An LSN's 64-bit value.
pub fn lsn_value(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_hexdigit());
    if !ok(hi) || !ok(lo) {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl Target {
    /// As the report and the record say it.
    pub fn describe(&self) -> String {
        match self {
            Target::Time { secs, micros } => format!("time {}", pg_time(*secs, *micros)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Latest => "the latest archived WAL".into(),
        }
    }

    /// pgBackRest's restore options: recovery stops at the target and promotes (a
    /// restore to the end of the archive promotes by itself). The newest timeline is
    /// followed, so a target after a failover is reached through it.
    pub fn pgbackrest_options(&self) -> String {
        match self {
            Target::Time { secs, micros } => format!(
                "--type=time --target={} --target-action=promote --target-timeline=latest",
                shell_quote(&pg_time(*secs, *micros))
            ),
            Target::Lsn(l) => format!(
                "--type=lsn --target={} --target-action=promote --target-timeline=latest",
                shell_quote(l)
            ),
            Target::Latest => "--type=default --target-timeline=latest".into(),
        }
    }
}

/// A time as PostgreSQL reads `recovery_target_time`, in UTC.
fn pg_time(secs: i64, micros: u32) -> String {
    let base = utc(secs).trim_end_matches('Z').replace('T', " ");
    if micros == 0 {
        format!("{base}+00")
    } else {
        format!("{base}.{micros:06}+00")
    }
}

/// Refuse a target outside the recovery window: before the end of the oldest
/// backup (nothing consistent to start from), or in the future. The window is named.
pub fn check_window(target: &Target, backups: &[BackupSet], now: i64) -> Result<(), String> {
    let Some(oldest) = backups.first() else {
        return Err(
            "the repository holds no backup: there is nothing to restore from (`pgha backup run`)"
                .into(),
        );
    };
    let window = format!(
        "the recovery window is {} .. now ({}); `pgha backup list` shows it",
        utc(oldest.stop),
        utc(now)
    );
    match target {
        Target::Time { secs, .. } if *secs < oldest.stop => Err(format!(
            "{} is before the end of the oldest backup {}: {window}",
            utc(*secs),
            oldest.label
        )),
        Target::Time { secs, .. } if *secs > now => {
            Err(format!("{} is in the future: {window}", utc(*secs)))
        }
        Target::Lsn(l) => match oldest.lsn_stop.as_deref().and_then(lsn_value) {
            Some(stop) if lsn_value(l).is_some_and(|v| v < stop) => Err(format!(
                "LSN {l} is before the end of the oldest backup {} (LSN {}): {window}",
                oldest.label,
                oldest.lsn_stop.as_deref().unwrap_or("?")
            )),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The steps of a restore, in order; the record says which one was done last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Recorded; nothing changed yet.
    Started,
    /// Patroni stopped on every db host; the old leader's last WAL in the repository.
    Stopped,
    /// Every member's data directory moved aside.
    Aside,
    /// Restored on the member, recovered and promoted by hand, stopped again.
    Restored,
    /// Patroni leads on the restored member.
    Leading,
    /// A new full backup of the restored cluster.
    BackedUp,
}

/// What a restore in progress keeps on the repository's host, so that a second
/// `pgha restore --resume` finishes what an interrupted one started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names the data directories set aside (`<data>.before-restore-<id>`).
    pub id: String,
    pub target: Target,
    /// The member restored first (it leads the restored cluster).
    pub member: String,
    /// The leader before the restore, when there was one.
    pub old_leader: Option<String>,
    pub started: i64,
    pub step: Step,
    /// Hosts whose data directory was set aside (kept until the restore is proven).
    pub aside: Vec<String>,
    /// The full backup taken of the restored cluster.
    pub backup: Option<String>,
}

impl Record {
    pub fn done(&self, s: Step) -> bool {
        self.step >= s
    }
}

/// Where the record lives on the repository's host.
pub fn record_path(c: &Cluster) -> String {
    format!("/var/lib/pgha/restore-{}.json", c.stanza())
}

/// The directory a member's data is kept in until the restore is proven.
pub fn aside_dir(c: &Cluster, id: &str) -> String {
    format!("{}.before-restore-{id}", c.postgresql_data_dir)
}

/// The file that marks a data directory as this restore's own work (and so safe to
/// empty again on resume): beside it, never inside.
fn ours_mark(c: &Cluster, id: &str) -> String {
    format!("{}.restore-{id}", c.postgresql_data_dir)
}

/// A PostgreSQL tool run as postgres (on the host, or in the pgBackRest container).
fn pg_bin(c: &Cluster, tool: &str) -> String {
    format!(
        "{} /usr/lib/postgresql/{}/bin/{tool}",
        as_pg(c),
        c.postgresql_version
    )
}

fn as_pg(c: &Cluster) -> String {
    crate::install::as_postgres(c)
}

/// Stop whatever PostgreSQL still runs on a stopped member (Patroni stops its own;
/// one started by hand would not be).
pub fn stop_postgres_script(c: &Cluster) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    format!(
        "if [ -f {data}/postmaster.pid ] && {ctl} -D {data} status >/dev/null 2>&1; then \
         {ctl} -D {data} -m fast -w -t 600 stop >/dev/null; echo stopped; fi",
        ctl = pg_bin(c, "pg_ctl")
    )
}

/// On the stopped old leader: push the WAL it wrote last (the segment holding its
/// shutdown checkpoint, and any still waiting for the archiver) to the repository, so
/// that a restore to the latest point loses no acknowledged write. Pushing a segment
/// the repository already has with the same content is a no-op.
pub fn push_last_wal_script(c: &Cluster) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    format!(
        "set -e
cd {data}/pg_wal
seg=$({controldata} -D {data} | sed -n \"s/^Latest checkpoint's REDO WAL file: *//p\")
test -n \"$seg\"
for f in $(ls archive_status 2>/dev/null | sed -n 's/\\.ready$//p' | sort) $seg; do
  [ -f \"$f\" ] || continue
  {as_pg} pgbackrest --stanza={stanza} --archive-async=n --log-level-console=warn archive-push {data}/pg_wal/$f
  echo \"$f\"
done",
        controldata = pg_bin(c, "pg_controldata"),
        as_pg = as_pg(c),
        stanza = shell_quote(c.stanza())
    )
}

/// Set a member's data directory aside (once: on resume it is already there) and
/// leave an empty one marked as this restore's own.
pub fn aside_script(c: &Cluster, id: &str) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    let aside = shell_quote(&aside_dir(c, id));
    let mark = shell_quote(&ours_mark(c, id));
    format!(
        "set -e
if [ -d {data} ] && [ ! -e {aside} ] && [ ! -e {mark} ]; then
  mv {data} {aside}; echo aside
fi
touch {mark}
install -d -o postgres -g postgres -m 0700 {data}"
    )
}

/// Empty this restore's own data directory (a half-done restore, on resume) and
/// restore into it. Refuses a directory not marked as this restore's.
pub fn restore_script(c: &Cluster, id: &str, target: &Target) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    let mark = shell_quote(&ours_mark(c, id));
    format!(
        "set -e
if [ ! -e {mark} ]; then echo 'the data directory is not this restore'\"'\"'s own: refusing to empty it' >&2; exit 3; fi
{stop}
find {data} -mindepth 1 -delete
{as_pg} pgbackrest --stanza={stanza} --log-level-console=warn {opts} restore",
        as_pg = as_pg(c),
        stanza = shell_quote(c.stanza()),
        opts = target.pgbackrest_options(),
        stop = stop_postgres_script(c)
    )
}

/// The log of the recovery run by hand (in pgBackRest's log directory: the
/// pgBackRest container under docker sees it at the same path).
pub fn recovery_log(c: &Cluster) -> String {
    format!("/var/log/pgbackrest/pgha-restore-{}.log", c.stanza())
}

/// Start the restored PostgreSQL by hand to replay WAL up to the target and
/// promote: reachable over its socket only, no hot standby (Patroni's rule for a
/// custom bootstrap), no synchronous standby to wait for, no upstream to stream from.
/// `pg_ctl -w` returns once recovery has started (postmaster.pid says `standby`),
/// so that the looks that follow never mistake a server still starting for one
/// that died.
pub fn recover_script(c: &Cluster) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    // Everything it logs goes to the log below (not Patroni's logging collector).
    let opts = "-c hot_standby=off -c listen_addresses='' -c synchronous_standby_names='' \
                -c primary_conninfo='' -c primary_slot_name='' -c logging_collector=off";
    format!(
        "set -e
install -d -o postgres -g postgres -m 0750 /var/log/pgbackrest
: > {log}; chown postgres: {log}
{ctl} -D {data} -l {log} -w -t 3600 -o {opts} start >/dev/null || {{ tail -n 20 {log} >&2; exit 1; }}",
        ctl = pg_bin(c, "pg_ctl"),
        log = shell_quote(&recovery_log(c)),
        opts = shell_quote(opts)
    )
}

/// One look at the recovery: `promoted`, `recovering <last log line>` or
/// `dead <log tail>`.
pub fn recovery_state_script(c: &Cluster) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    let log = shell_quote(&recovery_log(c));
    format!(
        "if ! {ctl} -D {data} status >/dev/null 2>&1; then echo dead; tail -n 8 {log}; exit 0; fi
r=$({as_pg} psql -X -h /var/run/postgresql -p {port} -d postgres -Atqc 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
if [ \"$r\" = f ]; then echo promoted; else echo \"recovering $(tail -n 1 {log})\"; fi",
        ctl = pg_bin(c, "pg_ctl"),
        as_pg = as_pg(c),
        port = c.postgresql_port
    )
}

/// What one look at the recovery saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    Promoted,
    Recovering(String),
    Dead(String),
}

pub fn parse_recovery(out: &str) -> Recovery {
    let out = out.trim();
    if out == "promoted" {
        Recovery::Promoted
    } else if let Some(rest) = out.strip_prefix("dead") {
        Recovery::Dead(rest.trim().to_string())
    } else {
        Recovery::Recovering(
            out.strip_prefix("recovering")
                .unwrap_or(out)
                .trim()
                .to_string(),
        )
    }
}

/// Stop the promoted PostgreSQL cleanly (Patroni starts it next).
pub fn stop_recovered_script(c: &Cluster) -> String {
    let data = shell_quote(&c.postgresql_data_dir);
    format!(
        "{ctl} -D {data} -m fast -w -t 600 stop >/dev/null",
        ctl = pg_bin(c, "pg_ctl")
    )
}

/// Once the restored cluster is verified: remove the data set aside and the marks.
pub fn cleanup_script(c: &Cluster, id: &str) -> String {
    format!(
        "rm -rf {} {} {}",
        shell_quote(&aside_dir(c, id)),
        shell_quote(&ours_mark(c, id)),
        shell_quote(&recovery_log(c))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(stop: i64, lsn: &str) -> BackupSet {
        BackupSet {
            label: "20261202-101500F".into(),
            kind: "full".into(),
            start: stop - 10,
            stop,
            size: 1,
            repo_size: 1,
            wal_start: String::new(),
            wal_stop: String::new(),
            lsn_stop: Some(lsn.into()),
            prior: None,
            error: false,
        }
    }

    #[test]
    fn times_need_a_zone_and_are_given_to_postgres_in_utc() {
        let t = parse_time("2026-12-02T11:15:00+01:00").unwrap();
        assert_eq!(t, parse_time("2026-12-02 10:15:00Z").unwrap());
        assert_eq!(
            t.pgbackrest_options(),
            "--type=time --target='2026-12-02 10:15:00+00' --target-action=promote --target-timeline=latest"
        );
        let t = parse_time("2026-12-02T10:15:00.25Z").unwrap();
        assert!(
            t.describe().ends_with("10:15:00.250000+00"),
            "{}",
            t.describe()
        );
        let e = parse_time("2026-12-02 10:15:00").unwrap_err();
        assert!(e.contains("time zone"), "{e}");
        let e = parse_time("yesterday").unwrap_err();
        assert!(e.contains("time zone"), "{e}");
        let e = parse_time("2026-13-02T10:15:00Z").unwrap_err();
        assert!(e.contains("not a date"), "{e}");
    }

    #[test]
    fn lsns_are_two_hex_halves() {
        assert_eq!(lsn_value("0/5000060"), Some(0x5000060));
        assert_eq!(lsn_value("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(
            parse_lsn("16/b374d848").unwrap(),
            Target::Lsn("16/B374D848".into())
        );
        for bad in ["", "5000060", "0/", "x/1", "123456789/0"] {
            assert!(parse_lsn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_outside_the_window_are_refused_naming_it() {
        let b = [set(1_000_000, "0/6000138")];
        let now = 2_000_000;
        let before = Target::Time {
            secs: 999_000,
            micros: 0,
        };
        let e = check_window(&before, &b, now).unwrap_err();
        assert!(e.contains("before the end of the oldest backup"), "{e}");
        assert!(
            e.contains("recovery window is 1970-01-12T13:46:40Z .. now"),
            "{e}"
        );
        let future = Target::Time {
            secs: now + 60,
            micros: 0,
        };
        assert!(
            check_window(&future, &b, now)
                .unwrap_err()
                .contains("future")
        );
        let inside = Target::Time {
            secs: 1_500_000,
            micros: 0,
        };
        assert!(check_window(&inside, &b, now).is_ok());
        assert!(check_window(&Target::Lsn("0/5000000".into()), &b, now).is_err());
        assert!(check_window(&Target::Lsn("0/7000000".into()), &b, now).is_ok());
        assert!(check_window(&Target::Latest, &b, now).is_ok());
        assert!(
            check_window(&Target::Latest, &[], now)
                .unwrap_err()
                .contains("no backup")
        );
    }

    #[test]
    fn the_record_round_trips_and_orders_its_steps() {
        let r = Record {
            id: "1764670500".into(),
            target: Target::Time { secs: 5, micros: 0 },
            member: "db1".into(),
            old_leader: Some("db2".into()),
            started: 5,
            step: Step::Aside,
            aside: vec!["db1".into()],
            backup: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        assert!(r.done(Step::Stopped) && r.done(Step::Aside) && !r.done(Step::Restored));
    }

    #[test]
    fn only_this_restores_own_directory_is_emptied() {
        let c = Cluster::default();
        let s = restore_script(&c, "42", &Target::Latest);
        let mark = ours_mark(&c, "42");
        assert!(
            s.starts_with(&format!("set -e\nif [ ! -e {} ]", shell_quote(&mark))),
            "{s}"
        );
        let a = aside_script(&c, "42");
        assert!(a.contains(&format!(
            "mv {} {}",
            shell_quote(&c.postgresql_data_dir),
            shell_quote(&aside_dir(&c, "42"))
        )));
        assert_eq!(parse_recovery("promoted\n"), Recovery::Promoted);
        assert_eq!(
            parse_recovery(
                "dead\nFATAL: recovery ended before configured recovery target was reached"
            ),
            Recovery::Dead(
                "FATAL: recovery ended before configured recovery target was reached".into()
            )
        );
        assert_eq!(
            parse_recovery("recovering LOG:  redo in progress"),
            Recovery::Recovering("LOG:  redo in progress".into())
        );
    }
}
