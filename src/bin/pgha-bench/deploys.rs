//! The deploy figures: a cold deploy beside the hand-made floor, the no-op re-run
//! beside Ansible's, scale, a rolling upgrade and a rebuild beside pg_basebackup.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cluster::*;
use super::faults::{longest_gap, lost};
use super::{Bench, Figure, cpu_counters, last_json, median, phases, run, say};
use pgha::lab::clients::{Target, Writer, pg};
use pgha::lab::{self, LabInfo, rehearsal};

impl Bench {
    /// A timed cold deploy of pgha on a fresh lab (`all`: pgha's defaults, or only
    /// the parts the floor sets up): seconds and phases.
    pub(crate) async fn pgha_cold(
        &self,
        name: &str,
        db: u32,
        all: bool,
    ) -> (f64, BTreeMap<String, f64>) {
        let info = self.lab_with(name, db, 1, all).await;
        let inv = info.inventory_path.display().to_string();
        let (code, out, _, secs) = self.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "cold deploy on {name}");
        let _ = lab::down(name).await;
        (secs, phases(&out))
    }

    /// The hand-made floor on `db` db hosts and a router (bench/floor-n.sh, the
    /// shared floor.sh for any number of db hosts, on hosts set up as the lab's):
    /// barrier -> seconds since its start, and its work time (everything after its
    /// containers are up, as pgha's deploy starts from booted hosts).
    pub(crate) fn floor(&self, db: u32) -> (f64, BTreeMap<String, f64>) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/floor-n.sh");
        let (code, out, err, _) = run(Command::new(script).env("DB", db.to_string()));
        assert_eq!(code, 0, "floor-n.sh with {db} db hosts failed: {err}");
        let mut m = BTreeMap::new();
        for l in out.lines() {
            if let Some((t, name)) = l.split_once("s ")
                && let Ok(t) = t.parse::<f64>()
            {
                m.insert(name.trim().to_string(), t);
            }
        }
        let total = m.get("read-via-5001").copied().unwrap_or(f64::NAN);
        let up = m.get("containers-up").copied().unwrap_or(0.0);
        (total - up, m)
    }

    /// Cold deploys beside the floor, side by side in each run: pgha with the
    /// floor's parts only (etcd, Patroni, PostgreSQL, HAProxy, the exporter; the
    /// goal's figure: every check pgha makes stays) and with its defaults (TLS,
    /// backups, monitoring too: reported, no goal).
    pub(crate) async fn cold(&mut self) {
        let (mut parts, mut all, mut f) = (Vec::new(), Vec::new(), Vec::new());
        let (mut parts_ph, mut all_ph, mut fph) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.args.runs {
            say(format!("cold deploy {}/{}: floor", i + 1, self.args.runs));
            let (fs, fm) = self.floor(3);
            f.push(fs);
            fph.push(fm);
            say(format!(
                "cold deploy {}/{}: pgha, the floor's parts",
                i + 1,
                self.args.runs
            ));
            let (ps, pm) = self.pgha_cold("pgha-b-cold", 3, false).await;
            parts.push(ps);
            parts_ph.push(pm);
            say(format!(
                "cold deploy {}/{}: pgha, defaults",
                i + 1,
                self.args.runs
            ));
            let (ps, pm) = self.pgha_cold("pgha-b-cold", 3, true).await;
            all.push(ps);
            all_ph.push(pm);
        }
        let mf = median(&f);
        self.push(against_floor(
            "cold deploy, 3 db + 1 router, the floor's parts (no TLS, backups or monitoring)",
            "floor-n.sh",
            parts,
            &f,
            json!({"pgha_phases": parts_ph, "floor_barriers": fph, "floor_runs": f}),
        ));
        let ma = median(&all);
        self.push(Figure {
            name: "cold deploy, 3 db + 1 router, pgha's defaults (TLS, backups, monitoring)".into(),
            unit: "s".into(),
            pgha: ma,
            baseline: mf,
            baseline_name: Some("floor-n.sh (without TLS, backups or monitoring)".into()),
            ratio: ma.zip(mf).map(|(a, b)| a / b),
            goal: None,
            met: None,
            runs: all,
            failed: None,
            detail: json!({"pgha_phases": all_ph, "floor_runs": f}),
        });
    }

    pub(crate) async fn noop(&mut self, inv: &str) {
        let mut p = Vec::new();
        for _ in 0..self.args.runs {
            let (code, out, _, secs) = self.pgha(&["deploy", inv, "--output", "json"]);
            assert_eq!(code, 0, "no-op deploy");
            assert_eq!(
                last_json(&out)["changed"],
                0,
                "a no-op run changed something"
            );
            p.push(secs);
        }
        let mut a = Vec::new();
        let mut cold = None;
        if !self.args.no_ansible {
            say("Ansible baseline (one cold run, three no-op runs)");
            let (code, out, err, _) = run(&mut Command::new(
                self.args.baselines.join("ansible/run.sh"),
            ));
            if code != 0 {
                say(format!("ansible/run.sh failed: {err}"));
            }
            for l in out.lines() {
                let secs = l
                    .split_whitespace()
                    .rev()
                    .nth(1)
                    .and_then(|s| s.parse::<f64>().ok());
                if l.starts_with("ansible no-op") {
                    a.extend(secs);
                } else if l.starts_with("ansible cold") {
                    cold = secs;
                }
            }
        }
        let (mp, ma) = (median(&p), median(&a));
        let ratio = mp.zip(ma).map(|(p, a)| a / p);
        self.push(Figure {
            name: "no-op re-run (pgha with full verification)".into(),
            unit: "s".into(),
            pgha: mp,
            baseline: ma,
            baseline_name: Some("ansible no-op".into()),
            ratio,
            goal: Some(">= 30x faster than Ansible".into()),
            met: ratio.map(|r| r >= 30.0),
            runs: p,
            failed: None,
            detail: json!({"ansible_noop_runs": a, "ansible_cold": cold}),
        });
    }

    /// Three clusters of 3 db hosts and a router on one lab, from one controller:
    /// deployed cold at once, then the no-op re-run of all three against one alone.
    pub(crate) async fn fleet(&mut self) {
        let name = "pgha-b-fleet";
        let info = self.lab_sized(name, 9, 3).await;
        let invs: Vec<String> = ["alpha", "beta", "gamma"]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let text = pgha::lab::layout::fleet_inventory(c, i, &info.dir, |h| {
                    info.host(h).map(|x| x.address)
                })
                .expect("fleet inventory");
                let path = info.dir.join(c).join("inventory.yml");
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, text).unwrap();
                path.display().to_string()
            })
            .collect();
        let all: Vec<&str> = invs.iter().map(String::as_str).collect();
        fn deploy<'a>(invs: &[&'a str]) -> Vec<&'a str> {
            let mut a = vec!["deploy"];
            a.extend(invs);
            a.extend(["--output", "json"]);
            a
        }
        say("fleet: three clusters deployed cold at once");
        let (code, out, _, cold) = self.pgha(&deploy(&all));
        assert_eq!(code, 0, "fleet deploy: {out}");
        let (mut one, mut two, mut three) = (Vec::new(), Vec::new(), Vec::new());
        // Per run and cluster count: the share of the machine's CPUs busy while it
        // ran, and pgha's own CPU seconds (the lab's hosts share the 2 CPUs).
        let mut cpu: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut timed = |b: &Self, invs: &[&str]| {
            let before = cpu_counters();
            let r = b.pgha(&deploy(invs));
            let after = cpu_counters();
            cpu.entry(invs.len())
                .or_default()
                .push(((after.0 - before.0) / (r.3 * ncpu), after.1 - before.1));
            r
        };
        // Interleaved, so drift on the shared machine hits all three alike.
        for _ in 0..self.args.runs {
            let (code, out, _, secs) = timed(self, &all[..1]);
            assert_eq!(code, 0, "no-op deploy of one cluster");
            assert_eq!(
                last_json(&out)["changed"],
                0,
                "a no-op run changed something"
            );
            one.push(secs);
            for (n, times) in [(2, &mut two), (3, &mut three)] {
                let (code, out, _, secs) = timed(self, &all[..n]);
                assert_eq!(code, 0, "no-op deploy of {n} clusters");
                let doc = last_json(&out);
                let changed: u64 = doc["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["result"]["changed"].as_u64().unwrap_or(u64::MAX))
                    .sum();
                assert_eq!(changed, 0, "a no-op run changed something: {doc}");
                times.push(secs);
            }
        }
        let (m3, m2, m1) = (median(&three), median(&two), median(&one));
        let ratio2 = m2.zip(m1).map(|(t, o)| t / o);
        self.push(Figure {
            name: "no-op re-run on 8 hosts (2 clusters at once) vs 4".into(),
            unit: "s".into(),
            pgha: m2,
            baseline: m1,
            baseline_name: Some("no-op of 1 cluster (4 hosts)".into()),
            ratio: ratio2,
            goal: Some("<= 1.1x 4 hosts".into()),
            met: ratio2.map(|r| r <= 1.1),
            runs: two,
            failed: None,
            detail: json!({"one_cluster_runs": one, "cpu": cpu_detail(&cpu)}),
        });
        let ratio = m3.zip(m1).map(|(t, o)| t / o);
        self.push(Figure {
            name: "no-op re-run of 3 clusters at once (12 hosts)".into(),
            unit: "s".into(),
            pgha: m3,
            baseline: m1,
            baseline_name: Some("no-op of 1 cluster (4 hosts)".into()),
            ratio,
            goal: Some("<= 1.3x one cluster".into()),
            met: ratio.map(|r| r <= 1.3),
            runs: three,
            failed: None,
            detail: json!({
                "one_cluster_runs": one,
                "cold_three_clusters_at_once_secs": cold,
                "cpu": cpu_detail(&cpu),
            }),
        });
        let _ = lab::down(name).await;
    }

    /// Flat in host count: a cold deploy on 5 db hosts beside the floor on 5.
    pub(crate) async fn scale(&mut self) {
        let (mut p, mut f, mut pph, mut fph) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.args.runs {
            say(format!(
                "cold deploy with 5 db hosts {}/{}: floor",
                i + 1,
                self.args.runs
            ));
            let (fs, fm) = self.floor(5);
            f.push(fs);
            fph.push(fm);
            say(format!(
                "cold deploy with 5 db hosts {}/{}: pgha",
                i + 1,
                self.args.runs
            ));
            let (ps, pm) = self.pgha_cold("pgha-b-scale", 5, false).await;
            p.push(ps);
            pph.push(pm);
        }
        let detail = json!({"pgha_phases": pph, "floor_barriers": fph, "floor_runs": f});
        self.push(against_floor(
            "cold deploy, 5 db + 1 router, the floor's parts (no TLS, backups or monitoring)",
            "floor-n.sh on 5 db hosts",
            p,
            &f,
            detail,
        ));
    }

    pub(crate) async fn upgrade(&mut self) {
        let info = self.lab("pgha-b-upg", 3).await;
        let inv = info.inventory_path.display().to_string();
        let unpinned = std::fs::read_to_string(&inv).unwrap();
        // Older builds of what the mirror has today (see pgha::lab::rehearsal).
        let mut pg_new = String::new();
        for h in info.hosts.iter().filter(|h| h.name.starts_with("db")) {
            let v = rehearsal::older_builds(&info.name, &h.name, &rehearsal::PG_PACKAGES)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            pg_new = v[0].1.clone();
        }
        let haproxy_new = rehearsal::older_builds(&info.name, "router1", &["haproxy"])
            .await
            .unwrap_or_else(|e| panic!("{e}"))[0]
            .1
            .clone();
        let with = |pinned: bool| {
            unpinned.replacen(
                "vars:\n",
                &format!("vars:\n{}", rehearsal::vars(&pg_new, &haproxy_new, pinned)),
                1,
            )
        };
        std::fs::write(&inv, with(true)).unwrap();
        let (code, _, _, _) = self.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "pinned deploy");
        std::fs::write(&inv, with(false)).unwrap();
        let target = target(&info);
        create_table(&target, "bench_upg").await;
        let writer = Writer::start(&target, "bench_upg", 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        let (code, out, _, secs) = self.pgha(&["upgrade", &inv, "--output", "json"]);
        assert_eq!(code, 0, "upgrade");
        let end = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = writer.stop().await;
        let client = longest_gap(&acked, t, end);
        let lost = lost(&target, "bench_upg", &acked).await;
        let doc = last_json(&out);
        let reported = reported_gap(&doc["upgrade"]["gap"]);
        if let Err(e) = &reported {
            say(format!("upgrade: {e}"));
        }
        let _ = lab::down("pgha-b-upg").await;
        self.push(Figure {
            name: "upgrade (PostgreSQL and HAProxy, older build -> current): longest write gap"
                .into(),
            unit: "s".into(),
            pgha: Some(client),
            baseline: reported.as_ref().ok().copied(),
            baseline_name: Some("gap pgha reported".into()),
            ratio: None,
            goal: Some("0 rows lost".into()),
            met: Some(lost == 0),
            runs: vec![client],
            failed: None,
            detail: json!({"upgrade_secs": secs, "rows_lost": lost, "postgresql": [rehearsal::older(&pg_new), &pg_new], "haproxy": [rehearsal::older(&haproxy_new), &haproxy_new], "switchovers": doc["upgrade"]["switchovers"].as_array().map(|a| a.len()), "reported_unmeasured": reported.err()}),
        });
    }

    pub(crate) async fn rebuild(&mut self, info: &LabInfo, inv: &str, target: &Target) {
        let leader = wait_healthy(info).await;
        let replica = info
            .hosts
            .iter()
            .find(|h| h.name.starts_with("db") && h.name != leader)
            .unwrap()
            .name
            .clone();
        // Some data, so the clone is not trivially small.
        if let Ok(c) = pg(target, 5000).await {
            let _ = c
                .batch_execute("CREATE TABLE IF NOT EXISTS bench_fill AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 500000) g")
                .await;
        }
        wait_healthy(info).await;
        let rpw = secret(info, "replication_password");
        let leader_ip = ip(info, &leader);
        let (code, _, err, bb) = run(Command::new("docker").args([
            "exec",
            &format!("{}-{replica}", info.name),
            "sh",
            "-c",
            &format!(
                "rm -rf /tmp/bb && PGPASSWORD='{rpw}' runuser -u postgres -- pg_basebackup -h {leader_ip} -U replicator -D /tmp/bb -X stream -c fast && du -sb /tmp/bb | cut -f1 && rm -rf /tmp/bb"
            ),
        ]));
        let baseline = basebackup_baseline(code, &err, bb);
        if let Err(e) = &baseline {
            say(e);
        }
        lab::replace(&info.name, &replica)
            .await
            .expect("lab replace");
        let (code, out, _, secs) = self.pgha(&["rebuild", &replica, inv, "--output", "json"]);
        assert_eq!(code, 0, "rebuild");
        let doc = last_json(&out);
        let detail = json!({"clone_secs": doc["rebuild"]["clone_secs"], "clone_bytes": doc["rebuild"]["clone_bytes"], "steps": doc["rebuild"]["steps"], "write_gap": doc["rebuild"]["gap"]});
        self.push(rebuild_figure(secs, baseline, detail));
    }
}

/// The pg_basebackup baseline: its seconds when it succeeded; when it failed, why
/// (the time of a failed copy is no baseline).
pub(crate) fn basebackup_baseline(code: i32, stderr: &str, secs: f64) -> Result<f64, String> {
    if code == 0 {
        return Ok(secs);
    }
    let why = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(format!(
        "the pg_basebackup baseline failed (exit {code}): {}",
        why.unwrap_or("no message")
    ))
}

/// pgha's rebuild beside a plain pg_basebackup of the same data. Without a baseline
/// the figure fails, naming why, instead of a ratio to a bogus one.
pub(crate) fn rebuild_figure(secs: f64, baseline: Result<f64, String>, detail: Value) -> Figure {
    let (baseline, failed) = match baseline {
        Ok(b) => (Some(b), None),
        Err(e) => (None, Some(e)),
    };
    Figure {
        name: "rebuild of a lost replica vs a plain pg_basebackup".into(),
        unit: "s".into(),
        pgha: Some(secs),
        baseline,
        baseline_name: Some("pg_basebackup of the same data".into()),
        ratio: baseline.map(|b| secs / b),
        goal: None,
        met: None,
        runs: vec![secs],
        failed,
        detail,
    }
}

/// The write gap pgha reported (`gap` of its JSON result): seconds, or why there is
/// none. A gap pgha could not measure is no figure, never 0.
pub(crate) fn reported_gap(gap: &Value) -> Result<f64, String> {
    if gap.is_null() {
        return Err("pgha reported no gap (no router was probed)".into());
    }
    if gap["measured"] == false {
        return Err(format!(
            "pgha could not measure the gap: {}",
            gap["error"].as_str().unwrap_or("no reason given")
        ));
    }
    gap["longest_secs"]
        .as_f64()
        .ok_or_else(|| format!("no longest_secs in pgha's gap {gap}"))
}

/// Per cluster count: the machine's CPU busy share and pgha's CPU seconds, each
/// per run.
fn cpu_detail(cpu: &BTreeMap<usize, Vec<(f64, f64)>>) -> Value {
    cpu.iter()
        .map(|(n, v)| {
            (
                format!("{n}_clusters"),
                json!({
                    "machine_busy_share": v.iter().map(|x| (x.0 * 100.0).round() / 100.0).collect::<Vec<_>>(),
                    "pgha_cpu_secs": v.iter().map(|x| (x.1 * 100.0).round() / 100.0).collect::<Vec<_>>(),
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A cold deploy with the floor's parts against the floor on as many hosts, with
/// issue 23's goal: within 1.05x.
fn against_floor(
    name: &str,
    baseline_name: &str,
    runs: Vec<f64>,
    floor: &[f64],
    detail: Value,
) -> Figure {
    let (mp, mf) = (median(&runs), median(floor));
    let ratio = mp.zip(mf).map(|(a, b)| a / b);
    Figure {
        name: name.into(),
        unit: "s".into(),
        pgha: mp,
        baseline: mf,
        baseline_name: Some(baseline_name.into()),
        ratio,
        goal: Some("<= 1.05x floor".into()),
        met: ratio.map(|r| r <= 1.05),
        runs,
        failed: None,
        detail,
    }
}
