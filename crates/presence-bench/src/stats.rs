//! Latency histograms per ack kind, error counts by code, and the figures
//! they turn into.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one phase of a run (setting up, or the measured run) recorded.
/// Shared by every session task; the locks are held for one histogram update.
pub struct Stats {
    started: Mutex<Instant>,
    kinds: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Answers received (any kind, ok or not): what the progress line shows.
    pub answers: AtomicU64,
    /// Errors of any kind so far.
    pub failed: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Mutex::new(Instant::now()),
            kinds: Mutex::default(),
            errors: Mutex::default(),
            answers: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Restarts the clock of this phase.
    pub fn start(&self) {
        *self.started.lock().expect("stats") = Instant::now();
    }

    /// When this phase started.
    pub fn started(&self) -> Instant {
        *self.started.lock().expect("stats")
    }

    /// Records a successful answer of `kind` that took `d`.
    pub fn ok(&self, kind: &'static str, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        let mut kinds = self.kinds.lock().expect("stats");
        let h = kinds.entry(kind).or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
        });
        h.saturating_record(us);
        drop(kinds);
        self.answers.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error under `code` (an error code of the protocol, or one of
    /// the client's own: `timeout`, `closed`, `connect_failed`...).
    pub fn error(&self, code: &str) {
        *self
            .errors
            .lock()
            .expect("stats")
            .entry(code.to_owned())
            .or_default() += 1;
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.answers.fetch_add(1, Ordering::Relaxed);
    }

    /// p99 of `kind` so far in ms, for the progress line.
    pub fn p99_ms(&self, kind: &str) -> Option<f64> {
        let kinds = self.kinds.lock().expect("stats");
        kinds
            .get(kind)
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
    }

    /// The figures of this phase, over `seconds` of wall time.
    pub fn summary(&self, seconds: f64) -> PhaseSummary {
        let kinds = self.kinds.lock().expect("stats");
        let acks = kinds
            .iter()
            .map(|(k, h)| {
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                (
                    (*k).to_owned(),
                    AckSummary {
                        count: h.len(),
                        per_second: if seconds > 0.0 {
                            h.len() as f64 / seconds
                        } else {
                            0.0
                        },
                        mean_ms: h.mean() / 1000.0,
                        p50_ms: ms(0.50),
                        p90_ms: ms(0.90),
                        p99_ms: ms(0.99),
                        max_ms: h.max() as f64 / 1000.0,
                    },
                )
            })
            .collect();
        PhaseSummary {
            seconds,
            acks,
            errors: self.errors.lock().expect("stats").clone(),
        }
    }
}

/// One phase's figures, as the report prints and writes them.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    /// Wall time of the phase.
    pub seconds: f64,
    /// Per ack kind (`hello`, `join`, `heartbeat`, ...).
    pub acks: BTreeMap<String, AckSummary>,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
}

/// The latency distribution and rate of one kind of answer.
#[derive(Debug, Clone, Serialize)]
pub struct AckSummary {
    /// Successful answers.
    pub count: u64,
    /// `count` over the phase's wall time.
    pub per_second: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest answer.
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_errors_are_reported() {
        let s = Stats::default();
        for ms in 1..=100u64 {
            s.ok("heartbeat", Duration::from_millis(ms));
        }
        s.error("timeout");
        s.error("timeout");
        s.error("stale_epoch");
        let sum = s.summary(10.0);
        let hb = &sum.acks["heartbeat"];
        assert_eq!(hb.count, 100);
        assert!((hb.per_second - 10.0).abs() < 1e-9);
        assert!((hb.p50_ms - 50.0).abs() < 0.1, "{}", hb.p50_ms);
        assert!((hb.p99_ms - 99.0).abs() < 0.1, "{}", hb.p99_ms);
        assert!((hb.max_ms - 100.0).abs() < 0.1, "{}", hb.max_ms);
        assert_eq!(sum.errors["timeout"], 2);
        assert_eq!(sum.errors["stale_epoch"], 1);
        assert_eq!(s.answers.load(Ordering::Relaxed), 103);
        assert_eq!(s.failed.load(Ordering::Relaxed), 3);
    }
}
