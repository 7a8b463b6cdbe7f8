//! pgha-bench: every figure of pgha's benchmark measured on lab hosts in one
//! session, beside its baselines (the hand-made floor of a cold deploy, bench/floor-n.sh,
//! and the Ansible playbook in ../shared/bench), printed as a table and written as JSON. Run it
//! through `scripts/bench`, which builds everything in release mode first.
//!
//! Each figure is the median of `--runs` runs. Cold deploys of pgha and the floor are
//! interleaved, so that drift on a shared machine affects both alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime};

use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};

use pgha::lab::{self, LabInfo, LabSpec};

mod backups;
mod cluster;
mod deploys;
mod faults;
mod pooling;

use cluster::*;

#[derive(Debug, Parser)]
#[command(name = "pgha-bench", about = "pgha's benchmark beside its baselines")]
struct Args {
    /// Runs per figure (each figure is their median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The pgha binary to measure (release build).
    #[arg(long, default_value = "target/release/pgha")]
    pgha: PathBuf,
    /// Directory of the shared baselines (ansible/run.sh; the cold deploy's floor is
    /// this repository's bench/floor-n.sh).
    #[arg(long, default_value = "../shared/bench")]
    baselines: PathBuf,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results/latest.json")]
    out: PathBuf,
    /// Skip the Ansible baseline (it installs ansible-core from PyPI).
    #[arg(long)]
    no_ansible: bool,
    /// Only these figure groups (cold, noop, failover, crash, switchover, pool
    /// (pool-switchover: its switchover figure alone),
    /// load, scale, fleet, upgrade, rebuild, backup); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// An inventory variable for every lab, `KEY: VALUE` (repeatable): measure a
    /// variant of the defaults, e.g. `--var 'patroni_loop_wait: 5'`.
    #[arg(long = "var")]
    vars: Vec<String>,
    /// Hard kills of the leader (etcd's leadership elsewhere, as pgha keeps it).
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Further hard kills of a leader whose host leads etcd too (etcd's
    /// leadership moved there first), reported apart.
    #[arg(long, default_value_t = 3)]
    etcd_leader_kills: usize,
    /// Size of the backup group's data set, in GB (generated with pgbench).
    #[arg(long, default_value_t = 1.0)]
    backup_gb: f64,
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

/// CPU seconds so far: (the whole machine's busy time, this process's waited-for
/// children's), from /proc (USER_HZ = 100 on Linux). Around one command they say
/// whether it waited on the machine's CPUs and how much of them it used itself.
fn cpu_counters() -> (f64, f64) {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let ticks = |v: &[&str], i: &[usize]| -> f64 {
        i.iter()
            .filter_map(|&i| v.get(i).and_then(|x| x.parse::<f64>().ok()))
            .sum::<f64>()
            / 100.0
    };
    let stat = read("/proc/stat");
    let cpu: Vec<&str> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // cpu user nice system idle iowait irq softirq steal
    let busy = ticks(&cpu, &[1, 2, 3, 6, 7, 8]);
    let me = read("/proc/self/stat");
    let after: Vec<&str> = me
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    // Fields from the state (3rd) on: cutime and cstime are the 16th and 17th.
    let children = ticks(&after, &[13, 14]);
    (busy, children)
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
        self.lab_sized(name, db, 1).await
    }

    async fn lab_sized(&self, name: &str, db: u32, routers: u32) -> LabInfo {
        self.lab_with(name, db, routers, true).await
    }

    /// A lab with pgha's defaults (`all`: TLS, backups, monitoring), or with only
    /// the parts the hand-made floor sets up.
    async fn lab_with(&self, name: &str, db: u32, routers: u32, all: bool) -> LabInfo {
        let _ = lab::down(name).await;
        let dir = self.tmp.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let info = lab::up(&LabSpec {
            name: name.into(),
            db,
            routers,
            dir,
            user: "root".into(),
            tls: all,
            docker: false,
            backup: all,
            monitoring: all,
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
    let main_groups = [
        "noop",
        "failover",
        "crash",
        "switchover",
        "pool",
        "pool-switchover",
        "load",
        "rebuild",
    ];
    if main_groups.iter().any(|g| b.wants(g)) {
        let info = b.lab("pgha-b-main", 3).await;
        let inv = info.inventory_path.display().to_string();
        let (code, _, _, _) = b.pgha(&["deploy", &inv]);
        assert_eq!(code, 0, "deploy pgha-b-main");
        let target = target(&info);
        for t in ["bench_kill", "bench_part", "bench_sw", "bench_crash"] {
            create_table(&target, t).await;
        }
        if b.wants("noop") {
            b.noop(&inv).await;
        }
        if b.wants("failover") {
            b.hard_kill(&info, &target).await;
            b.partition(&info, &target).await;
        }
        if b.wants("crash") {
            b.postmaster_crash(&info, &target).await;
        }
        if b.wants("switchover") {
            b.switchover(&info, &inv, &target).await;
        }
        // Turns pooling on for the figures after it.
        if b.wants("pool") || b.wants("pool-switchover") {
            b.pooled_switchover(&info, &inv, &target).await;
        }
        if b.wants("pool") {
            b.pooled_throughput(&info, &target).await;
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
    if b.wants("fleet") {
        b.fleet().await;
    }
    if b.wants("upgrade") {
        b.upgrade().await;
    }
    if b.wants("backup") {
        b.backups().await;
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
mod tests;
