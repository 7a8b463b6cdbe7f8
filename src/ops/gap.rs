//! The write-port probe: while a cluster action runs, a fresh connection to a
//! router's write port every ~100 ms asks `SELECT pg_is_in_recovery()` (nothing is
//! written). The longest stretch without an answer from a primary is the write gap
//! clients saw, measured, not estimated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::probe::{Net, sql};

/// How often the probe asks.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A probe that has no answer by then counts as "no primary reached".
pub const PROBE_BOUND: Duration = Duration::from_secs(1);

/// What the probe measured, or why it could not: a probe that crashed or never
/// finished a probe has no figure, and must not read as "no gap".
#[derive(Debug, Clone, PartialEq)]
pub enum Gap {
    Measured {
        /// The longest time between two answers from a primary (seconds).
        longest_secs: f64,
        probes: u32,
        /// Probes that did not reach a primary (refused, timed out, or a replica answered).
        failed: u32,
    },
    Unmeasured {
        error: String,
    },
}

/// The JSON shape: `measured` says which; the figures are null when it is false.
#[derive(Serialize)]
struct GapJson<'a> {
    measured: bool,
    longest_secs: Option<f64>,
    probes: Option<u32>,
    failed: Option<u32>,
    error: Option<&'a str>,
}

impl Serialize for Gap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let j = match self {
            Gap::Measured {
                longest_secs,
                probes,
                failed,
            } => GapJson {
                measured: true,
                longest_secs: Some(*longest_secs),
                probes: Some(*probes),
                failed: Some(*failed),
                error: None,
            },
            Gap::Unmeasured { error } => GapJson {
                measured: false,
                longest_secs: None,
                probes: None,
                failed: None,
                error: Some(error),
            },
        };
        j.serialize(s)
    }
}

impl Gap {
    /// For reports: `1.23s (4 of 30 probes reached no primary)`, or
    /// `could not measure: <why>`.
    pub fn summary(&self) -> String {
        match self {
            Gap::Measured {
                longest_secs,
                probes,
                failed,
            } => format!("{longest_secs:.2}s ({failed} of {probes} probes reached no primary)"),
            Gap::Unmeasured { error } => format!("could not measure: {error}"),
        }
    }

    /// Whether no probe failed (a measured gap of none).
    pub fn no_gap(&self) -> bool {
        matches!(self, Gap::Measured { failed: 0, .. })
    }
}

/// The gap clients saw across several routers: the longest measured one, or
/// unmeasured when any probe could not measure (the longest is then unknown).
/// None when there was no probe.
pub fn worst(gaps: impl IntoIterator<Item = Gap>) -> Option<Gap> {
    gaps.into_iter().reduce(|a, b| match (&a, &b) {
        (Gap::Unmeasured { .. }, _) => a,
        (_, Gap::Unmeasured { .. }) => b,
        (
            Gap::Measured {
                longest_secs: x, ..
            },
            Gap::Measured {
                longest_secs: y, ..
            },
        ) => {
            if y > x {
                b
            } else {
                a
            }
        }
    })
}

/// Pure bookkeeping of probe outcomes, so the arithmetic is testable.
#[derive(Debug, Clone)]
pub struct GapTracker {
    last_ok: Instant,
    longest: Duration,
    probes: u32,
    failed: u32,
    last_failed: bool,
}

impl GapTracker {
    pub fn new(start: Instant) -> GapTracker {
        GapTracker {
            last_ok: start,
            longest: Duration::ZERO,
            probes: 0,
            failed: 0,
            last_failed: false,
        }
    }

    /// One probe finished at `at`: `ok` when a primary answered.
    pub fn record(&mut self, at: Instant, ok: bool) {
        self.probes += 1;
        self.last_failed = !ok;
        if ok {
            self.longest = self.longest.max(at.saturating_duration_since(self.last_ok));
            self.last_ok = at;
        } else {
            self.failed += 1;
        }
    }

    /// The result at `end`: a gap still open then counts up to `end`. A run in
    /// which no probe finished measured nothing.
    pub fn finish(&self, end: Instant) -> Gap {
        if self.probes == 0 {
            return Gap::Unmeasured {
                error: "no probe finished while the action ran".into(),
            };
        }
        // A healthy stretch still has the probe interval between answers: only a
        // stretch with failed probes is a gap worth reporting.
        let longest = if self.failed == 0 {
            Duration::ZERO
        } else if self.last_failed {
            self.longest
                .max(end.saturating_duration_since(self.last_ok))
        } else {
            self.longest
        };
        Gap::Measured {
            longest_secs: longest.as_secs_f64(),
            probes: self.probes,
            failed: self.failed,
        }
    }
}

/// What a stopped probe measured: its tracker's result, or, when its task did not
/// come back (it panicked or was cancelled), that it could not measure and why.
pub fn settle(at: &str, joined: Result<GapTracker, String>, end: Instant) -> Gap {
    match joined {
        Ok(t) => t.finish(end),
        Err(why) => Gap::Unmeasured {
            error: format!("the write-port probe of {at} stopped: {why}"),
        },
    }
}

/// A running probe of one write endpoint; `stop` returns what it measured.
pub struct GapProbe {
    /// `host:port`, for messages.
    at: String,
    stop: Arc<AtomicBool>,
    task: JoinHandle<GapTracker>,
}

impl GapProbe {
    pub fn start(net: Net, endpoint: sql::Endpoint) -> GapProbe {
        let at = format!("{}:{}", endpoint.host, endpoint.port);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut t = GapTracker::new(Instant::now());
            while !stop2.load(Ordering::SeqCst) {
                let began = Instant::now();
                let ok = matches!(
                    tokio::time::timeout(PROBE_BOUND, primary_answers(&net, &endpoint)).await,
                    Ok(Ok(true))
                );
                t.record(Instant::now(), ok);
                tokio::time::sleep(INTERVAL.saturating_sub(began.elapsed())).await;
            }
            t
        });
        GapProbe { at, stop, task }
    }

    pub async fn stop(self) -> Gap {
        self.stop.store(true, Ordering::SeqCst);
        let end = Instant::now();
        let joined = self.task.await.map_err(|e| e.to_string());
        settle(&self.at, joined, end)
    }
}

/// Start a probe on each of these write endpoints.
pub fn start_all(net: &Net, endpoints: Vec<sql::Endpoint>) -> Vec<GapProbe> {
    endpoints
        .into_iter()
        .map(|e| GapProbe::start(net.clone(), e))
        .collect()
}

/// Stop every probe; the worst gap among them (see `worst`), None without probes.
pub async fn stop_all(probes: Vec<GapProbe>) -> Option<Gap> {
    let mut gaps = Vec::new();
    for p in probes {
        gaps.push(p.stop().await);
    }
    worst(gaps)
}

async fn primary_answers(net: &Net, ep: &sql::Endpoint) -> Result<bool, String> {
    let c = sql::connect_bounded(net, ep, PROBE_BOUND).await?;
    let row = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| sql::pg_error(&e))?;
    Ok(!row.get::<_, bool>(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The measured figures, or a panic naming what came instead.
    fn figures(g: &Gap) -> (f64, u32, u32) {
        match g {
            Gap::Measured {
                longest_secs,
                probes,
                failed,
            } => (*longest_secs, *probes, *failed),
            Gap::Unmeasured { error } => panic!("unmeasured: {error}"),
        }
    }

    fn measured(longest_secs: f64) -> Gap {
        Gap::Measured {
            longest_secs,
            probes: 10,
            failed: 1,
        }
    }

    #[test]
    fn no_failures_is_no_gap() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        for i in 1..=10 {
            t.record(t0 + ms(100 * i), true);
        }
        let g = t.finish(t0 + ms(1100));
        assert_eq!(figures(&g).0, 0.0);
        assert!(g.no_gap());
    }

    #[test]
    fn the_longest_stretch_between_answers_is_the_gap() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        t.record(t0 + ms(100), true);
        t.record(t0 + ms(1100), false);
        t.record(t0 + ms(2100), false);
        t.record(t0 + ms(2600), true);
        t.record(t0 + ms(2700), true);
        let (longest, probes, failed) = figures(&t.finish(t0 + ms(2800)));
        assert!((longest - 2.5).abs() < 1e-9, "{longest}");
        assert_eq!((probes, failed), (5, 2));
    }

    #[test]
    fn a_gap_still_open_at_the_end_counts_to_the_end() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        t.record(t0 + ms(100), true);
        t.record(t0 + ms(1100), false);
        let longest = figures(&t.finish(t0 + ms(3100))).0;
        assert!((longest - 3.0).abs() < 1e-9, "{longest}");
    }

    #[test]
    fn never_reaching_a_primary_is_a_gap_of_the_whole_run() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        t.record(t0 + ms(1000), false);
        t.record(t0 + ms(2000), false);
        let longest = figures(&t.finish(t0 + ms(2500))).0;
        assert!((longest - 2.5).abs() < 1e-9, "{longest}");
    }

    #[test]
    fn a_run_without_a_finished_probe_measured_nothing() {
        let t0 = Instant::now();
        let g = GapTracker::new(t0).finish(t0 + ms(5000));
        assert!(matches!(g, Gap::Unmeasured { .. }), "{g:?}");
        assert!(!g.no_gap());
    }

    #[test]
    fn a_crashed_probe_could_not_measure_and_says_why() {
        let g = settle(
            "10.0.0.21:5000",
            Err("task 7 panicked with message \"boom\"".into()),
            Instant::now(),
        );
        assert!(!g.no_gap());
        let s = g.summary();
        assert!(s.starts_with("could not measure: "), "{s}");
        assert!(s.contains("10.0.0.21:5000") && s.contains("boom"), "{s}");
    }

    /// The probe task itself dies: `stop` must not turn that into "no gap".
    #[tokio::test]
    async fn a_probe_task_that_panics_or_is_aborted_is_unmeasured_not_zero() {
        let crashed = GapProbe {
            at: "10.0.0.21:5000".into(),
            stop: Arc::new(AtomicBool::new(false)),
            task: tokio::spawn(async { panic!("simulated probe crash") }),
        };
        match crashed.stop().await {
            Gap::Unmeasured { error } => assert!(error.contains("panicked"), "{error}"),
            g => panic!("a crashed probe reported {g:?}"),
        }
        let task = tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            GapTracker::new(Instant::now())
        });
        task.abort();
        let aborted = GapProbe {
            at: "10.0.0.22:5000".into(),
            stop: Arc::new(AtomicBool::new(false)),
            task,
        };
        match aborted.stop().await {
            Gap::Unmeasured { error } => assert!(error.contains("cancelled"), "{error}"),
            g => panic!("an aborted probe reported {g:?}"),
        }
    }

    #[test]
    fn the_worst_gap_is_unknown_when_any_probe_could_not_measure() {
        assert_eq!(worst(Vec::new()), None);
        assert_eq!(
            worst([measured(0.5), measured(1.5), measured(1.0)]),
            Some(measured(1.5))
        );
        let lost = Gap::Unmeasured {
            error: "the write-port probe of r2 stopped".into(),
        };
        assert_eq!(worst([measured(1.5), lost.clone()]), Some(lost.clone()));
        assert_eq!(worst([lost.clone(), measured(9.0)]), Some(lost));
    }

    #[test]
    fn json_carries_measured_and_no_figure_when_unmeasured() {
        let j = serde_json::to_value(measured(1.25)).unwrap();
        assert_eq!(j["measured"], true);
        assert_eq!(j["longest_secs"], 1.25);
        assert!(j["error"].is_null());
        let j = serde_json::to_value(Gap::Unmeasured {
            error: "why".into(),
        })
        .unwrap();
        assert_eq!(j["measured"], false);
        assert!(j["longest_secs"].is_null() && j["probes"].is_null(), "{j}");
        assert_eq!(j["error"], "why");
    }
}
