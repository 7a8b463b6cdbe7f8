//! Backups and restore: pgha's full backup beside the same pgBackRest backup run
//! by hand on the repository host (the floor), and pgha's whole-cluster restore
//! (RTO) beside the floor's restore of one member plus the re-clone of the others,
//! by hand, into scratch directories. The data set is generated with pgbench.

use std::process::Command;

use serde_json::json;

use crate::cluster::wait_healthy;
use crate::{Bench, Figure, last_json, median, run, say};
use pgha::lab::LabInfo;

/// pgbench's scale for about `gb` GB of data (scale 1 is about 15 MB).
fn scale(gb: f64) -> u64 {
    ((gb * 1024.0 / 15.0).round() as u64).max(1)
}

/// A shell script run on a lab host: (exit code, stdout, stderr, seconds).
fn on(info: &LabInfo, host: &str, script: &str) -> (i32, String, String, f64) {
    run(Command::new("docker").args(["exec", &format!("{}-{host}", info.name), "sh", "-c", script]))
}

/// A figure from pgha's runs and the floor's, when every floor run succeeded.
fn figure(
    name: &str,
    baseline_name: &str,
    pgha: &[f64],
    floor: Result<Vec<f64>, String>,
    goal: Option<(&str, f64)>,
    detail: serde_json::Value,
) -> Figure {
    let p = median(pgha);
    let (baseline, failed) = match floor {
        Ok(v) => (median(&v), None),
        Err(e) => (None, Some(e)),
    };
    let ratio = p.zip(baseline).map(|(a, b)| a / b);
    Figure {
        name: name.into(),
        unit: "s".into(),
        pgha: p,
        baseline,
        baseline_name: Some(baseline_name.into()),
        ratio,
        goal: goal.map(|(g, _)| g.to_string()),
        met: goal.and_then(|(_, max)| ratio.map(|r| r <= max)),
        runs: pgha.to_vec(),
        detail,
        failed,
    }
}

impl Bench {
    pub(crate) async fn backups(&mut self) {
        let info = self.lab("pgha-b-backup", 3).await;
        let inv = info.inventory_path.display().to_string();
        let (code, _, _, _) = self.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy pgha-b-backup");
        let leader = wait_healthy(&info).await;
        let stanza = info.name.clone();
        let s = scale(self.args.backup_gb);
        say(format!(
            "generating the data set: pgbench scale {s} on {leader}"
        ));
        let (code, _, err, secs) = on(
            &info,
            &leader,
            &format!(
                "runuser -u postgres -- /usr/lib/postgresql/17/bin/pgbench -i -q -s {s} postgres"
            ),
        );
        assert_eq!(code, 0, "pgbench -i: {err}");
        let (_, bytes, _, _) = on(
            &info,
            &leader,
            "runuser -u postgres -- psql -XAtc 'SELECT sum(pg_database_size(oid)) FROM pg_database'",
        );
        let bytes: f64 = bytes.trim().parse().unwrap_or(0.0);
        let gb = bytes / 1e9;
        say(format!("data set: {gb:.2} GB in {secs:.0}s"));
        wait_healthy(&info).await;

        // Full backups, pgha's and the hand-run one interleaved.
        let mut pgha_runs = Vec::new();
        let mut floor_runs = Vec::new();
        let mut floor_err = None;
        for _ in 0..self.args.runs {
            let (code, out, _, secs) =
                self.pgha(&["backup", "run", &inv, "--type", "full", "--output", "json"]);
            assert_eq!(code, 0, "pgha backup run");
            let doc = last_json(&out);
            say(format!(
                "pgha backup run: {secs:.1}s ({})",
                doc["backup"]["label"]
            ));
            pgha_runs.push(secs);
            let (code, _, err, secs) = on(
                &info,
                "router1",
                &format!(
                    "runuser -u postgres -- pgbackrest --stanza={stanza} --type=full --log-level-console=warn backup"
                ),
            );
            if code == 0 {
                floor_runs.push(secs);
            } else {
                floor_err = Some(format!("the hand-run pgbackrest backup failed: {err}"));
            }
        }
        let detail = json!({"data_bytes": bytes, "pgbench_scale": s,
            "pgha_gb_per_s": median(&pgha_runs).map(|t| gb / t)});
        self.push(figure(
            "full backup of the data set vs pgbackrest backup by hand",
            "pgbackrest --type=full backup on the repository host",
            &pgha_runs,
            floor_err.map_or(Ok(floor_runs), Err),
            Some(("<= 1.1x the hand-run backup", 1.1)),
            detail,
        ));

        // Restore: pgha's whole-cluster restore against the floor: one member's
        // restore by hand, then the two others' in parallel (the re-clone).
        let mut pgha_runs = Vec::new();
        let mut floor_runs = Vec::new();
        let mut floor_err = None;
        let scratch = "/var/lib/postgresql/bench-restore";
        let restore = format!(
            "rm -rf {scratch} && install -d -o postgres -g postgres -m 0700 {scratch} && \
             runuser -u postgres -- pgbackrest --stanza={stanza} --pg1-path={scratch} --type=immediate \
             --archive-mode=off --log-level-console=warn restore; rc=$?; rm -rf {scratch}; exit $rc"
        );
        let mut reports = Vec::new();
        for _ in 0..self.args.runs {
            let (c1, _, e1, t1) = on(&info, "db2", &restore);
            let t0 = std::time::Instant::now();
            let (r1, r3) = tokio::join!(
                tokio::task::spawn_blocking({
                    let info = info.clone();
                    let restore = restore.clone();
                    move || on(&info, "db1", &restore)
                }),
                tokio::task::spawn_blocking({
                    let info = info.clone();
                    let restore = restore.clone();
                    move || on(&info, "db3", &restore)
                })
            );
            let t2 = t0.elapsed().as_secs_f64();
            let (r1, r3) = (r1.unwrap(), r3.unwrap());
            if c1 == 0 && r1.0 == 0 && r3.0 == 0 {
                floor_runs.push(t1 + t2);
            } else {
                floor_err = Some(format!(
                    "the hand-run pgbackrest restore failed: {} {} {}",
                    e1.trim(),
                    r1.2.trim(),
                    r3.2.trim()
                ));
            }
            let (code, out, err, secs) =
                self.pgha(&["restore", &inv, "--latest", "--yes", "--output", "json"]);
            assert_eq!(code, 0, "pgha restore --latest: {err}");
            let doc = last_json(&out);
            say(format!("pgha restore --latest: {secs:.1}s"));
            reports.push(doc["restore"].clone());
            pgha_runs.push(secs);
            wait_healthy(&info).await;
        }
        let detail = json!({"data_bytes": bytes,
            "pgha_secs_per_gb": median(&pgha_runs).map(|t| t / gb),
            "floor_secs_per_gb": median(&floor_runs).map(|t| t / gb),
            "reports": reports,
            "note": "pgha's time includes stopping the cluster, WAL replay, a new full backup and verify; the floor is pgbackrest restore of one member, then of two in parallel"});
        self.push(figure(
            "restore of the whole cluster (RTO) vs restore + re-clone by hand",
            "pgbackrest restore of one member, then two in parallel",
            &pgha_runs,
            floor_err.map_or(Ok(floor_runs), Err),
            None,
            detail,
        ));
        let _ = pgha::lab::down(&info.name).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_data_set_is_sized_by_pgbench_scale() {
        assert_eq!(super::scale(1.0), 68);
        assert_eq!(super::scale(0.001), 1);
    }
}
