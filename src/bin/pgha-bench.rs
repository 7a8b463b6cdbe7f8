//! pgha-bench: every figure of pgha's benchmark measured on lab hosts in one
//! session, beside the baselines in ../shared/bench (the hand-made floor of a cold
//! deploy and an Ansible playbook), printed as a table and written as JSON. Run it
//! through `scripts/bench`, which builds everything in release mode first.
//!
//! Each figure is the median of `--runs` runs. Cold deploys of pgha and the floor are
//! interleaved, so that drift on a shared machine affects both alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};

use pgha::lab::clients::{Ack, Connector, Target, Writer, pg};
use pgha::lab::{self, LabInfo, LabSpec, rehearsal};
use pgha::probe::{Net, patroni};

#[derive(Debug, Parser)]
#[command(name = "pgha-bench", about = "pgha's benchmark beside its baselines")]
struct Args {
    /// Runs per figure (each figure is their median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The pgha binary to measure (release build).
    #[arg(long, default_value = "target/release/pgha")]
    pgha: PathBuf,
    /// Directory of the baselines (floor.sh, ansible/run.sh).
    #[arg(long, default_value = "../shared/bench")]
    baselines: PathBuf,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results/latest.json")]
    out: PathBuf,
    /// Skip the Ansible baseline (it installs ansible-core from PyPI).
    #[arg(long)]
    no_ansible: bool,
    /// Only these figure groups (cold, noop, failover, switchover, load, scale,
    /// upgrade, rebuild); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// An inventory variable for every lab, `KEY: VALUE` (repeatable): measure a
    /// variant of the defaults, e.g. `--var 'patroni_loop_wait: 5'`.
    #[arg(long = "var")]
    vars: Vec<String>,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    name: String,
    unit: String,
    pgha: Option<f64>,
    baseline: Option<f64>,
    baseline_name: Option<String>,
    /// pgha / baseline (or baseline / pgha where that is the goal's sense).
    ratio: Option<f64>,
    goal: Option<String>,
    met: Option<bool>,
    runs: Vec<f64>,
    detail: Value,
    /// Why the figure could not be computed (its baseline failed, say): a failed
    /// figure has no baseline or ratio rather than numbers from a bogus one.
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

struct Bench {
    args: Args,
    figures: Vec<Figure>,
    tmp: PathBuf,
    started: Instant,
}

/// A command's exit code, stdout, stderr and wall time.
fn run(cmd: &mut Command) -> (i32, String, String, f64) {
    let t0 = Instant::now();
    let out = cmd.output().expect("run a command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed().as_secs_f64(),
    )
}

fn last_json(stdout: &str) -> Value {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null)
}

/// `ok <phase> ... (12.3s)` lines of pgha's text output -> phase -> seconds.
fn phases(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("ok ") {
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            if let Some(secs) = rest
                .rsplit_once('(')
                .and_then(|(_, t)| t.strip_suffix("s)"))
                .and_then(|t| t.parse::<f64>().ok())
            {
                *m.entry(name).or_insert(0.0) += secs;
            }
        }
    }
    m
}

impl Bench {
    fn wants(&self, group: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|g| g == group)
    }

    fn pgha(&self, args: &[&str]) -> (i32, String, String, f64) {
        let r = run(Command::new(&self.args.pgha).args(args).env("CI", "1"));
        if r.0 != 0 {
            say(format!(
                "pgha {} exited {}: {}",
                args.join(" "),
                r.0,
                r.2.lines().last().unwrap_or("")
            ));
        }
        r
    }

    fn push(&mut self, f: Figure) {
        say(format!(
            "{}: pgha {} {} (baseline {}){}",
            f.name,
            f.pgha.map_or("-".into(), |v| format!("{v:.2}")),
            f.unit,
            f.baseline.map_or("-".into(), |v| format!("{v:.2}")),
            match (&f.failed, f.met) {
                (Some(e), _) => format!(" FAILED: {e}"),
                (None, Some(true)) => " goal met".into(),
                (None, Some(false)) => " goal NOT met".into(),
                (None, None) => String::new(),
            }
        ));
        self.figures.push(f);
        // Written after every figure: a run that stops early keeps what it measured.
        self.save();
    }

    fn save(&self) -> Value {
        let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let doc = results_doc(
            &date,
            self.args.runs,
            self.started.elapsed().as_secs_f64(),
            &self.figures,
        );
        if let Some(dir) = self.args.out.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&self.args.out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        doc
    }

    async fn lab(&self, name: &str, db: u32) -> LabInfo {
        let _ = lab::down(name).await;
        let dir = self.tmp.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let info = lab::up(&LabSpec {
            name: name.into(),
            db,
            routers: 1,
            dir,
            user: "root".into(),
            tls: true,
            docker: false,
        })
        .await
        .unwrap_or_else(|e| panic!("lab up {name}: {e}"));
        if !self.args.vars.is_empty() {
            let text = std::fs::read_to_string(&info.inventory_path).expect("lab inventory");
            let extra: String = self
                .args
                .vars
                .iter()
                .map(|v| format!("    {v}\n"))
                .collect();
            std::fs::write(
                &info.inventory_path,
                text.replacen("vars:\n", &format!("vars:\n{extra}"), 1),
            )
            .expect("lab inventory");
        }
        info
    }

    /// A timed cold deploy of pgha on a fresh lab: seconds and phases.
    async fn pgha_cold(&self, name: &str, db: u32) -> (f64, BTreeMap<String, f64>) {
        let info = self.lab(name, db).await;
        let inv = info.inventory_path.display().to_string();
        let (code, out, _, secs) = self.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "cold deploy on {name}");
        let _ = lab::down(name).await;
        (secs, phases(&out))
    }

    /// The floor script: barrier -> seconds since its start, and its work time
    /// (everything after its containers are up, as pgha's deploy starts from booted hosts).
    fn floor(&self) -> (f64, BTreeMap<String, f64>) {
        let (code, out, err, _) = run(&mut Command::new(self.args.baselines.join("floor.sh")));
        assert_eq!(code, 0, "floor.sh failed: {err}");
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

    async fn cold(&mut self) {
        let (mut p, mut f) = (Vec::new(), Vec::new());
        let (mut pph, mut fph) = (Vec::new(), Vec::new());
        for i in 0..self.args.runs {
            say(format!("cold deploy {}/{}: floor", i + 1, self.args.runs));
            let (fs, fm) = self.floor();
            f.push(fs);
            fph.push(fm);
            say(format!("cold deploy {}/{}: pgha", i + 1, self.args.runs));
            let (ps, pm) = self.pgha_cold("pgha-b-cold", 3).await;
            p.push(ps);
            pph.push(pm);
        }
        let (mp, mf) = (median(&p), median(&f));
        let ratio = mp.zip(mf).map(|(a, b)| a / b);
        self.push(Figure {
            name: "cold deploy, 3 db + 1 router".into(),
            unit: "s".into(),
            pgha: mp,
            baseline: mf,
            baseline_name: Some("floor.sh".into()),
            ratio,
            goal: Some("<= 1.15x floor".into()),
            met: ratio.map(|r| r <= 1.15),
            runs: p.clone(),
            failed: None,
            detail: json!({"pgha_phases": pph, "floor_barriers": fph, "floor_runs": f}),
        });
    }

    async fn noop(&mut self, inv: &str) {
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
            goal: Some(">= 15x faster than Ansible".into()),
            met: ratio.map(|r| r >= 15.0),
            runs: p,
            failed: None,
            detail: json!({"ansible_noop_runs": a, "ansible_cold": cold}),
        });
    }

    /// The cluster as pgha leaves it (a deploy: nothing to change but etcd's
    /// leadership kept off the Patroni leader's host), then (Patroni leader, etcd
    /// leader).
    async fn as_pgha_leaves_it(&self, info: &LabInfo) -> (String, String) {
        wait_healthy(info).await;
        let inv = info.inventory_path.display().to_string();
        let (code, _, _, _) = self.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy before a fault");
        let (_, out, _, _) = self.pgha(&["status", &inv, "--output", "json"]);
        let doc = last_json(&out);
        let etcd_leader = doc["etcd"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["leader"] == true)
            .and_then(|e| e["name"].as_str())
            .unwrap_or_default()
            .to_string();
        (wait_healthy(info).await, etcd_leader)
    }

    async fn hard_kill(&mut self, info: &LabInfo, target: &Target) {
        let mut outages = Vec::new();
        let mut lost_total = 0;
        let mut hung_total = 0;
        let mut etcd_leader_killed = 0;
        for i in 0..self.args.runs {
            let (leader, etcd_leader) = self.as_pgha_leaves_it(info).await;
            etcd_leader_killed += usize::from(etcd_leader == leader);
            say(format!(
                "hard kill {}/{}: {leader} (etcd leader {etcd_leader})",
                i + 1,
                self.args.runs
            ));
            let writer = Writer::start(target, "bench_kill", (i as i32 + 1) * 1_000_000);
            let conn = Connector::start(target);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let t = Instant::now();
            lab::kill(&info.name, &leader).await.expect("lab kill");
            let old_ip = ip(info, &leader);
            let first = wait_ack_after(t, &old_ip, target).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let acked = writer.stop().await;
            let attempts = conn.stop().await;
            hung_total += attempts
                .iter()
                .filter(|(d, _)| *d > Duration::from_secs(5))
                .count();
            let first_new = acked
                .iter()
                .filter(|a| a.at > t && a.server != old_ip)
                .map(|a| a.at)
                .min()
                .unwrap_or(first);
            outages.push(first_new.duration_since(t).as_secs_f64());
            lost_total += lost(target, "bench_kill", &acked).await;
            lab::start(&info.name, &leader).await.expect("lab start");
            wait_healthy(info).await;
        }
        let m = median(&outages);
        self.push(Figure {
            name: "hard kill of the leader: write outage on :5000".into(),
            unit: "s".into(),
            pgha: m,
            baseline: None,
            baseline_name: None,
            ratio: None,
            goal: Some("median <= 20 s, 0 rows lost, 0 hung connections".into()),
            met: m.map(|m| m <= 20.0 && lost_total == 0 && hung_total == 0),
            runs: outages,
            failed: None,
            detail: json!({
                "rows_lost": lost_total,
                "connections_over_5s": hung_total,
                "runs_where_the_killed_host_led_etcd_too": etcd_leader_killed,
            }),
        });
    }

    async fn partition(&mut self, info: &LabInfo, target: &Target) {
        let mut outages = Vec::new();
        let mut rejoin = Vec::new();
        let (mut lost_total, mut split_total, mut split_lost) = (0, 0, 0);
        for i in 0..self.args.runs {
            let (leader, etcd_leader) = self.as_pgha_leaves_it(info).await;
            say(format!(
                "partition {}/{}: {leader} (etcd leader {etcd_leader})",
                i + 1,
                self.args.runs
            ));
            let old_ip = ip(info, &leader);
            let writer = Writer::start(target, "bench_part", (i as i32 + 1) * 1_000_000);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let t = Instant::now();
            // Cut from its db peers (and so from etcd) only: the router and this
            // machine still reach it, so a stale primary could still be written to.
            let peers: Vec<String> = info
                .hosts
                .iter()
                .filter(|h| h.name.starts_with("db") && h.name != leader)
                .map(|h| h.name.clone())
                .collect();
            lab::partition_from(&info.name, &leader, &peers)
                .await
                .expect("lab partition --from");
            let cut = Instant::now();
            wait_ack_after(t, &old_ip, target).await;
            tokio::time::sleep(Duration::from_secs(45).saturating_sub(t.elapsed())).await;
            lab::heal(&info.name, &leader).await.expect("lab heal");
            let healed = Instant::now();
            wait_streaming(info, &leader).await;
            rejoin.push(healed.elapsed().as_secs_f64());
            let acked = writer.stop().await;
            let first_new = acked
                .iter()
                .filter(|a| a.at > t && a.server != old_ip)
                .map(|a| a.at)
                .min();
            if let Some(f) = first_new {
                outages.push(f.duration_since(t).as_secs_f64());
            }
            // Writes the isolated leader acknowledged after the cut: the router still
            // reaches it, so it may (its synchronous standby out of reach should
            // stop it); each must be present afterwards.
            let split: Vec<Ack> = acked
                .iter()
                .filter(|a| a.sent > cut && a.server == old_ip)
                .cloned()
                .collect();
            split_total += split.len();
            split_lost += lost(target, "bench_part", &split).await;
            lost_total += lost(target, "bench_part", &acked).await;
        }
        let m = median(&outages);
        self.push(Figure {
            name: "leader partitioned: write outage on :5000".into(),
            unit: "s".into(),
            pgha: m,
            baseline: None,
            baseline_name: None,
            ratio: None,
            goal: Some("0 rows lost, none of them acknowledged by the isolated leader".into()),
            met: Some(lost_total == 0 && split_lost == 0),
            runs: outages,
            failed: None,
            detail: json!({
                "rows_lost": lost_total,
                "partition": "leader cut from its db peers; router and clients still reach it",
                "writes_acknowledged_by_isolated_leader": split_total,
                "of_those_lost": split_lost,
                "old_leader_streams_after_heal_secs": rejoin,
                "old_leader_streams_after_heal_median": median(&rejoin),
            }),
        });
    }

    async fn switchover(&mut self, info: &LabInfo, inv: &str, target: &Target) {
        let (mut client, mut reported) = (Vec::new(), Vec::new());
        let mut unmeasured: Vec<String> = Vec::new();
        let mut lost_total = 0;
        for i in 0..self.args.runs {
            wait_healthy(info).await;
            let writer = Writer::start(target, "bench_sw", (i as i32 + 1) * 1_000_000);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let t = Instant::now();
            let (code, out, _, _) = self.pgha(&["switchover", inv, "--output", "json"]);
            assert_eq!(code, 0, "switchover");
            let end = Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let acked = writer.stop().await;
            client.push(longest_gap(&acked, t, end));
            match reported_gap(&last_json(&out)["switchover"]["gap"]) {
                Ok(g) => reported.push(g),
                Err(e) => {
                    say(format!("switchover {}: {e}", i + 1));
                    unmeasured.push(e);
                }
            }
            lost_total += lost(target, "bench_sw", &acked).await;
        }
        // A median of only the runs pgha measured would not compare with the
        // client's median of all of them.
        let mr = if unmeasured.is_empty() {
            median(&reported)
        } else {
            None
        };
        let mc = median(&client);
        self.push(Figure {
            name: "switchover: write gap seen by a writing client".into(),
            unit: "s".into(),
            pgha: mc,
            baseline: mr,
            baseline_name: Some("gap pgha reported".into()),
            ratio: mc.zip(mr).map(|(c, r)| c / r),
            goal: Some("median <= 2 s, 0 rows lost".into()),
            met: mc.map(|m| m <= 2.0 && lost_total == 0),
            runs: client,
            failed: None,
            detail: json!({"reported_runs": reported, "reported_unmeasured": unmeasured, "rows_lost": lost_total}),
        });
    }

    /// Busy loops on every db host for 60 s: the leader must not change.
    async fn load(&mut self, info: &LabInfo) {
        let before = wait_healthy(info).await;
        let dbs: Vec<String> = info
            .hosts
            .iter()
            .filter(|h| h.name.starts_with("db"))
            .map(|h| h.container.clone())
            .collect();
        say("CPU saturation on every db host for 60 s");
        for c in &dbs {
            let _ = run(Command::new("docker").args([
                "exec",
                "-d",
                c,
                "sh",
                "-c",
                "for i in 1 2 3 4; do timeout 60 sh -c 'while :; do :; done' & done; wait",
            ]));
        }
        let t = Instant::now();
        let mut changes = 0;
        let mut last = before.clone();
        while t.elapsed() < Duration::from_secs(62) {
            if let Ok(v) = patroni::cluster_any(&net(info), &apis(info)).await
                && let Some(l) = v.leader()
                && l.name != last
            {
                changes += 1;
                last = l.name.clone();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.push(Figure {
            name: "leader changes with every db host's CPUs saturated (60 s)".into(),
            unit: "changes".into(),
            pgha: Some(changes as f64),
            baseline: None,
            baseline_name: None,
            ratio: None,
            goal: Some("0 (no false failover)".into()),
            met: Some(changes == 0),
            runs: vec![changes as f64],
            failed: None,
            detail: json!({}),
        });
    }

    async fn scale(&mut self) {
        let three: Vec<f64> = self
            .figures
            .iter()
            .find(|f| f.name.starts_with("cold deploy"))
            .map(|f| f.runs.clone())
            .unwrap_or_default();
        let three = if three.is_empty() {
            vec![self.pgha_cold("pgha-b-cold", 3).await.0]
        } else {
            three
        };
        let mut five = Vec::new();
        for i in 0..self.args.runs.min(2) {
            say(format!(
                "cold deploy with 5 db hosts {}/{}",
                i + 1,
                self.args.runs.min(2)
            ));
            five.push(self.pgha_cold("pgha-b-scale", 5).await.0);
        }
        let (m5, m3) = (median(&five), median(&three));
        self.push(Figure {
            name: "scale: cold deploy 5 db vs 3 db".into(),
            unit: "s".into(),
            pgha: m5,
            baseline: m3,
            baseline_name: Some("3 db hosts".into()),
            ratio: m5.zip(m3).map(|(a, b)| a / b),
            goal: None,
            met: None,
            runs: five,
            failed: None,
            detail: json!({"three_db_runs": three}),
        });
    }

    async fn upgrade(&mut self) {
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

    async fn rebuild(&mut self, info: &LabInfo, inv: &str, target: &Target) {
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
fn basebackup_baseline(code: i32, stderr: &str, secs: f64) -> Result<f64, String> {
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
fn rebuild_figure(secs: f64, baseline: Result<f64, String>, detail: Value) -> Figure {
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
fn reported_gap(gap: &Value) -> Result<f64, String> {
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

/// The results file: everything it holds, so that nothing else ends up there.
fn results_doc(date: &str, runs: usize, took_secs: f64, figures: &[Figure]) -> Value {
    json!({
        "date": date,
        "machine": machine(),
        "runs": runs,
        "took_secs": took_secs,
        "figures": figures,
        "pgha_version": env!("CARGO_PKG_VERSION"),
    })
}

/// How to reach the lab's cluster: its CA and pgha's client certificate (after
/// its first deploy created them).
fn net(info: &LabInfo) -> Net {
    let inv =
        pgha::inventory::load(&info.inventory_path, &Default::default()).expect("lab inventory");
    let pki = pgha::pki::load(&inv, false).expect("the lab's certificates (deploy makes them)");
    Net::new(Some(pki.tls()))
}

/// The clients' target: the router's ports as the superuser.
fn target(info: &LabInfo) -> Target {
    Target::new(
        net(info),
        &ip(info, "router1"),
        &secret(info, "superuser_password"),
    )
}

fn ip(info: &LabInfo, host: &str) -> String {
    info.host(host)
        .map(|h| h.address.to_string())
        .unwrap_or_default()
}

fn apis(info: &LabInfo) -> Vec<String> {
    info.hosts
        .iter()
        .filter(|h| h.name.starts_with("db"))
        .map(|h| format!("https://{}:8008", h.address))
        .collect()
}

fn secret(info: &LabInfo, key: &str) -> String {
    let text = std::fs::read_to_string(info.dir.join("inventory.secrets.yml")).expect("secrets");
    let m: BTreeMap<String, String> = yaml_serde::from_str(&text).expect("secrets yaml");
    m[key].clone()
}

/// Wait for a leader and every replica streaming with lag 0; the leader.
async fn wait_healthy(info: &LabInfo) -> String {
    let names: Vec<String> = info
        .hosts
        .iter()
        .filter(|h| h.name.starts_with("db"))
        .map(|h| h.name.clone())
        .collect();
    pgha::wait::until("a healthy cluster", Duration::from_secs(300), || async {
        let v = patroni::cluster_any(&net(info), &apis(info)).await?;
        v.healthy(&names, 0)
    })
    .await
    .expect("cluster healthy")
}

async fn wait_streaming(info: &LabInfo, host: &str) {
    pgha::wait::until(
        &format!("{host} streaming"),
        Duration::from_secs(300),
        || async {
            let v = patroni::cluster_any(&net(info), &apis(info)).await?;
            let tl = v.leader_timeline();
            match v.member(host) {
                Some(m) if m.state == "streaming" && m.timeline == tl && m.lag == Some(0) => Ok(()),
                _ => Err(v.summary()),
            }
        },
    )
    .await
    .expect("old leader streams");
}

/// Wait until the write port reaches a primary other than `old_ip` (the writer keeps
/// its own record of acknowledgements; this bounds the wait). `t` if it never does.
async fn wait_ack_after(t: Instant, old_ip: &str, target: &Target) -> Instant {
    pgha::wait::until(
        "a write on the new leader",
        Duration::from_secs(120),
        || async {
            let c = pg(target, 5000).await?;
            let row = tokio::time::timeout(
                Duration::from_secs(3),
                c.query_one("SELECT host(inet_server_addr()), pg_is_in_recovery()", &[]),
            )
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
            let (addr, rec): (String, bool) = (row.get(0), row.get(1));
            if addr != old_ip && !rec {
                Ok(Instant::now())
            } else {
                Err(format!("{addr} in recovery {rec}"))
            }
        },
    )
    .await
    .unwrap_or(t)
}

async fn create_table(target: &Target, table: &str) {
    let c = pg(target, 5000).await.expect("connect :5000");
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, note text)"
    ))
    .await
    .expect("create table");
}

/// Acknowledged ids missing from the table.
async fn lost(target: &Target, table: &str, acked: &[Ack]) -> usize {
    let rows = pgha::wait::until("a read of the rows", Duration::from_secs(60), || async {
        let c = pg(target, 5000).await?;
        c.query(&format!("SELECT id FROM {table}"), &[])
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("read rows");
    let present: std::collections::BTreeSet<i32> = rows.iter().map(|r| r.get(0)).collect();
    acked.iter().filter(|a| !present.contains(&a.id)).count()
}

/// The longest stretch between two acknowledgements (or a window edge) in [from, to].
fn longest_gap(acked: &[Ack], from: Instant, to: Instant) -> f64 {
    let mut times: Vec<Instant> = acked
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in times {
        longest = longest.max(t.duration_since(prev));
        prev = t;
    }
    longest.max(to.duration_since(prev)).as_secs_f64()
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "cpus": cpus,
        "memory_gib": (mem_kib as f64 / 1048576.0).round(),
        "cpu_model": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

fn table(figures: &[Figure]) -> String {
    let mut s = String::from(
        "| figure | pgha | baseline | ratio | goal | met |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for f in figures {
        let v = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2} {}", f.unit));
        s.push_str(&format!(
            "| {} | {} | {}{} | {} | {} | {} |\n",
            f.name,
            v(f.pgha),
            v(f.baseline),
            f.baseline_name
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})")),
            f.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            f.goal.clone().unwrap_or_else(|| "-".into()),
            match (&f.failed, f.met) {
                (Some(e), _) => format!("FAILED: {e}"),
                (None, m) => m
                    .map_or("-", |m| if m { "met" } else { "NOT met" })
                    .to_string(),
            },
        ));
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = Args::parse();
    assert!(
        args.pgha.exists(),
        "{}: build it first (scripts/bench does)",
        args.pgha.display()
    );
    let tmp = std::env::temp_dir().join("pgha-bench");
    std::fs::create_dir_all(&tmp).unwrap();
    let started = Instant::now();
    lab::ensure_image().await.expect("lab image");
    let mut b = Bench {
        args,
        figures: Vec::new(),
        tmp,
        started,
    };
    if b.wants("cold") {
        b.cold().await;
    }
    let main_groups = ["noop", "failover", "switchover", "load", "rebuild"];
    if main_groups.iter().any(|g| b.wants(g)) {
        let info = b.lab("pgha-b-main", 3).await;
        let inv = info.inventory_path.display().to_string();
        let (code, _, _, _) = b.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy pgha-b-main");
        let target = target(&info);
        for t in ["bench_kill", "bench_part", "bench_sw"] {
            create_table(&target, t).await;
        }
        if b.wants("noop") {
            b.noop(&inv).await;
        }
        if b.wants("failover") {
            b.hard_kill(&info, &target).await;
            b.partition(&info, &target).await;
        }
        if b.wants("switchover") {
            b.switchover(&info, &inv, &target).await;
        }
        if b.wants("load") {
            b.load(&info).await;
        }
        if b.wants("rebuild") {
            b.rebuild(&info, &inv, &target).await;
        }
        let _ = lab::down("pgha-b-main").await;
    }
    if b.wants("scale") {
        b.scale().await;
    }
    if b.wants("upgrade") {
        b.upgrade().await;
    }
    let doc = b.save();
    let date = doc["date"].as_str().unwrap_or_default().to_string();
    let t = table(&b.figures);
    println!("{t}");
    println!(
        "{} on {} CPUs, {} GiB; {} run(s) per figure; {:.0} min. JSON: {}",
        date,
        doc["machine"]["cpus"],
        doc["machine"]["memory_gib"],
        b.args.runs,
        started.elapsed().as_secs_f64() / 60.0,
        b.args.out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_basebackup_fails_the_rebuild_figure_instead_of_a_ratio() {
        let baseline = basebackup_baseline(1, "pg_basebackup: error: connection refused\n", 0.4);
        let f = rebuild_figure(56.0, baseline, json!({}));
        assert_eq!((f.baseline, f.ratio), (None, None), "{f:?}");
        let why = f.failed.clone().unwrap();
        assert!(
            why.contains("exit 1") && why.contains("connection refused"),
            "{why}"
        );
        assert_eq!(f.pgha, Some(56.0));
        let row = table(&[f]);
        assert!(
            row.contains("FAILED: the pg_basebackup baseline failed"),
            "{row}"
        );
        let j = serde_json::to_value(rebuild_figure(56.0, Err("x".into()), json!({}))).unwrap();
        assert_eq!(j["failed"], "x");
        assert!(j["ratio"].is_null() && j["baseline"].is_null(), "{j}");
    }

    #[test]
    fn a_good_basebackup_is_the_rebuild_baseline() {
        let f = rebuild_figure(50.0, basebackup_baseline(0, "", 2.0), json!({}));
        assert_eq!(
            (f.baseline, f.ratio, &f.failed),
            (Some(2.0), Some(25.0), &None)
        );
        // A figure that did not fail writes no `failed` key.
        let j = serde_json::to_value(&f).unwrap();
        assert!(j.get("failed").is_none(), "{j}");
    }

    #[test]
    fn an_unmeasured_gap_is_no_figure_not_zero() {
        let measured = json!({"measured": true, "longest_secs": 1.7, "probes": 40, "failed": 12, "error": null});
        assert_eq!(reported_gap(&measured), Ok(1.7));
        let crashed = json!({"measured": false, "longest_secs": null, "probes": null, "failed": null, "error": "the write-port probe of 10.0.0.21:5000 stopped: task 9 panicked"});
        let e = reported_gap(&crashed).unwrap_err();
        assert!(
            e.contains("could not measure") && e.contains("panicked"),
            "{e}"
        );
        assert!(reported_gap(&Value::Null).is_err());
    }

    fn keys(v: &Value) -> std::collections::BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// The committed results file holds what `save` writes and nothing else (no
    /// hand-added keys whose numbers no run of the benchmark produced).
    #[test]
    fn the_results_file_holds_only_what_the_benchmark_writes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results/latest.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let figure = rebuild_figure(1.0, Ok(1.0), json!({}));
        let written = results_doc("d", 1, 1.0, std::slice::from_ref(&figure));
        assert_eq!(keys(&doc), keys(&written), "{path}: top-level keys");
        let figure_keys = keys(&serde_json::to_value(&figure).unwrap());
        for f in doc["figures"].as_array().unwrap() {
            let mut k = keys(f);
            k.remove("failed");
            assert_eq!(k, figure_keys, "{path}: figure {}", f["name"]);
        }
        assert_eq!(keys(&doc["machine"]), keys(&machine()), "{path}: machine");
    }
}
