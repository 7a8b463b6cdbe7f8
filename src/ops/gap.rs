//! The write-port probe: while a cluster action runs, a fresh connection to a
//! router's write port every ~100 ms asks `SELECT pg_is_in_recovery()` (nothing is
//! written). The longest stretch without an answer from a primary is the write gap
//! clients saw, measured, not estimated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::probe::sql;

/// How often the probe asks.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A probe that has no answer by then counts as "no primary reached".
pub const PROBE_BOUND: Duration = Duration::from_secs(1);

/// What the probe measured.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Gap {
    /// The longest time between two answers from a primary (seconds).
    pub longest_secs: f64,
    pub probes: u32,
    /// Probes that did not reach a primary (refused, timed out, or a replica answered).
    pub failed: u32,
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

    /// The result at `end`: a gap still open then counts up to `end`.
    pub fn finish(&self, end: Instant) -> Gap {
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
        Gap {
            longest_secs: longest.as_secs_f64(),
            probes: self.probes,
            failed: self.failed,
        }
    }
}

/// A running probe of one write endpoint; `stop` returns what it measured.
pub struct GapProbe {
    stop: Arc<AtomicBool>,
    task: JoinHandle<GapTracker>,
}

impl GapProbe {
    pub fn start(endpoint: sql::Endpoint) -> GapProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut t = GapTracker::new(Instant::now());
            while !stop2.load(Ordering::SeqCst) {
                let began = Instant::now();
                let ok = matches!(
                    tokio::time::timeout(PROBE_BOUND, primary_answers(&endpoint)).await,
                    Ok(Ok(true))
                );
                t.record(Instant::now(), ok);
                tokio::time::sleep(INTERVAL.saturating_sub(began.elapsed())).await;
            }
            t
        });
        GapProbe { stop, task }
    }

    pub async fn stop(self) -> Gap {
        self.stop.store(true, Ordering::SeqCst);
        let end = Instant::now();
        match self.task.await {
            Ok(t) => t.finish(end),
            Err(_) => Gap::default(),
        }
    }
}

async fn primary_answers(ep: &sql::Endpoint) -> Result<bool, String> {
    let c = sql::connect_bounded(ep, PROBE_BOUND).await?;
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

    #[test]
    fn no_failures_is_no_gap() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        for i in 1..=10 {
            t.record(t0 + ms(100 * i), true);
        }
        assert_eq!(t.finish(t0 + ms(1100)).longest_secs, 0.0);
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
        let g = t.finish(t0 + ms(2800));
        assert!((g.longest_secs - 2.5).abs() < 1e-9, "{g:?}");
        assert_eq!((g.probes, g.failed), (5, 2));
    }

    #[test]
    fn a_gap_still_open_at_the_end_counts_to_the_end() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        t.record(t0 + ms(100), true);
        t.record(t0 + ms(1100), false);
        let g = t.finish(t0 + ms(3100));
        assert!((g.longest_secs - 3.0).abs() < 1e-9, "{g:?}");
    }

    #[test]
    fn never_reaching_a_primary_is_a_gap_of_the_whole_run() {
        let t0 = Instant::now();
        let mut t = GapTracker::new(t0);
        t.record(t0 + ms(1000), false);
        t.record(t0 + ms(2000), false);
        let g = t.finish(t0 + ms(2500));
        assert!((g.longest_secs - 2.5).abs() < 1e-9, "{g:?}");
    }
}
