//! What people see: a spinner per phase on a terminal (indicatif), plain lines
//! otherwise, and a recap per host at the end. With `--output json` the human
//! lines go to stderr and stdout carries one JSON document.
//!
//! Layer 0: imports nothing above it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

/// Output format: text for people, json for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct HostRecap {
    pub ok: u32,
    pub changed: u32,
    pub failed: u32,
    pub unreachable: u32,
}

#[derive(Clone)]
pub struct Ui {
    inner: Arc<Inner>,
}

struct Inner {
    json: bool,
    bars: Option<MultiProgress>,
    start: Instant,
    recap: Mutex<BTreeMap<String, HostRecap>>,
    /// One cluster of several run at once: its name before each line, no
    /// spinners (they would garble each other), its JSON documents kept for the
    /// summary document instead of printed.
    cluster: Option<String>,
    documents: Mutex<Vec<serde_json::Value>>,
}

/// A running phase: a spinner on a terminal, a start line otherwise.
pub struct Phase {
    ui: Ui,
    name: String,
    bar: Option<ProgressBar>,
    start: Instant,
}

impl Ui {
    pub fn new(output: OutputFormat) -> Ui {
        let json = output == OutputFormat::Json;
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Ui {
            inner: Arc::new(Inner {
                json,
                bars: tty.then(MultiProgress::new),
                start: Instant::now(),
                recap: Mutex::new(BTreeMap::new()),
                cluster: None,
                documents: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The UI of one cluster among several run at once (`pgha deploy a.yml b.yml`).
    pub fn for_cluster(output: OutputFormat, cluster: &str) -> Ui {
        Ui {
            inner: Arc::new(Inner {
                json: output == OutputFormat::Json,
                bars: None,
                start: Instant::now(),
                recap: Mutex::new(BTreeMap::new()),
                cluster: Some(cluster.to_string()),
                documents: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A command's JSON document: printed on stdout, or kept when this UI is one
    /// cluster's among several (the summary carries it).
    pub fn document(&self, doc: serde_json::Value) {
        if self.inner.cluster.is_some() {
            self.inner.documents.lock().unwrap().push(doc);
        } else {
            println!("{doc}");
        }
    }

    /// The documents kept (see `document`), the last one last.
    pub fn documents(&self) -> Vec<serde_json::Value> {
        self.inner.documents.lock().unwrap().clone()
    }

    pub fn json(&self) -> bool {
        self.inner.json
    }

    /// A line for people (stderr in json mode, so stdout stays one document).
    pub fn line(&self, msg: impl AsRef<str>) {
        let prefixed;
        let msg = match &self.inner.cluster {
            Some(c) => {
                prefixed = format!("[{c}] {}", msg.as_ref());
                prefixed.as_str()
            }
            None => msg.as_ref(),
        };
        match &self.inner.bars {
            Some(mp) => {
                let _ = mp.println(msg);
            }
            None if self.inner.json => eprintln!("{msg}"),
            None => println!("{msg}"),
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        self.line(format!("warning: {}", msg.as_ref()));
    }

    pub fn host(&self, host: &str, msg: impl AsRef<str>) {
        self.line(format!("  {host:<10} {}", msg.as_ref()));
    }

    pub fn phase(&self, name: &str) -> Phase {
        let bar = self.inner.bars.as_ref().map(|mp| {
            let b = mp.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
                    .expect("static template"),
            );
            b.set_prefix(name.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        if bar.is_none() {
            self.line(format!("== {name}"));
        }
        Phase {
            ui: self.clone(),
            name: name.to_string(),
            bar,
            start: Instant::now(),
        }
    }

    /// Progress of a transfer of `total` bytes to a host: a bar with bytes, rate
    /// and time left on a terminal, a line at each quarter otherwise.
    pub fn transfer(&self, host: &str, what: &str, total: u64) -> Transfer {
        let bar = self.inner.bars.as_ref().map(|mp| {
            let b = mp.add(ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template(
                    "  {prefix:<10} {msg} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_prefix(host.to_string());
            b.set_message(what.to_string());
            b
        });
        Transfer {
            ui: self.clone(),
            host: host.to_string(),
            what: what.to_string(),
            total: total.max(1),
            bar,
            quarter: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }

    fn tally(&self, host: &str, f: impl FnOnce(&mut HostRecap)) {
        f(self
            .inner
            .recap
            .lock()
            .unwrap()
            .entry(host.into())
            .or_default());
    }
    pub fn changed(&self, host: &str, n: u32) {
        self.tally(host, |r| r.changed += n);
    }
    pub fn ok(&self, host: &str, n: u32) {
        self.tally(host, |r| r.ok += n);
    }
    pub fn failed(&self, host: &str) {
        self.tally(host, |r| r.failed += 1);
    }
    pub fn unreachable(&self, host: &str) {
        self.tally(host, |r| r.unreachable += 1);
    }
    pub fn recap(&self) -> BTreeMap<String, HostRecap> {
        self.inner.recap.lock().unwrap().clone()
    }
    pub fn total_changed(&self) -> u32 {
        self.recap().values().map(|r| r.changed).sum()
    }

    /// The recap table, one line per host.
    pub fn print_recap(&self) {
        if self.recap().is_empty() {
            return;
        }
        self.line("");
        self.line("RECAP");
        for (host, r) in self.recap() {
            self.line(format!(
                "  {host:<10} ok={:<4} changed={:<4} failed={:<2} unreachable={}",
                r.ok, r.changed, r.failed, r.unreachable
            ));
        }
    }
}

/// A transfer in progress (see `Ui::transfer`); cheap to clone into callbacks.
#[derive(Clone)]
pub struct Transfer {
    ui: Ui,
    host: String,
    what: String,
    total: u64,
    bar: Option<ProgressBar>,
    /// The last quarter reported (lines mode).
    quarter: Arc<AtomicU64>,
}

impl Transfer {
    /// `done` bytes of the total have been sent.
    pub fn set(&self, done: u64) {
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                let q = done.min(self.total) * 4 / self.total;
                if (1..4).contains(&q) && self.quarter.fetch_max(q, Ordering::Relaxed) < q {
                    self.ui
                        .host(&self.host, format!("{}: {}% sent", self.what, q * 25));
                }
            }
        }
    }
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Phase {
    /// Progress text (what is being waited for).
    pub fn set(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }
    pub fn done(self, summary: impl AsRef<str>) {
        let secs = self.start.elapsed().as_secs_f32();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.ui.line(format!(
            "ok {:<9} {} ({secs:.1}s)",
            self.name,
            summary.as_ref()
        ));
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
