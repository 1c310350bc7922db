//! What a model's runtime counts: jobs and batches, recent job latencies, and how far measured
//! batch latencies drift from the plan's predictions.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::deadline::Goodput;
use crate::planner::stats::percentile;

/// How many recent values the windows keep.
const WINDOW: usize = 1024;
/// Batches over which measured latency is compared with the plan's prediction.
pub const DRIFT_WINDOW: usize = 50;
/// The fewest recent batches whose median error may start a re-profiling round.
pub const DRIFT_MIN: usize = 10;
/// Past this median error the journal gets a warning.
const DRIFT_WARN_PCT: f64 = 25.0;
/// At most one drift warning per this long.
const DRIFT_WARN_EVERY: Duration = Duration::from_secs(600);

fn push_bounded(v: &mut VecDeque<f64>, x: f64) {
    if v.len() == WINDOW {
        v.pop_front();
    }
    v.push_back(x);
}

/// Upper bounds of the latency histograms' buckets, in seconds (Prometheus' base unit).
pub const BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram: per-bucket counts (not cumulative; the last is +Inf), sum, count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS_S.len() + 1],
            sum_s: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let k = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        if let Some(c) = self.counts.get_mut(k) {
            *c += 1;
        }
        self.sum_s += s;
        self.count += 1;
    }

    /// (le, cumulative count) pairs as Prometheus writes them, ending with `+Inf`.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut acc = 0;
        let mut v = Vec::new();
        for (k, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = BUCKETS_S
                .get(k)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            v.push((le, acc));
        }
        v
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub done: u64,
    pub failed: u64,
    pub batches: u64,
    /// Sum of every batch's forward time (with `batches`, a Prometheus-style summary).
    pub batch_ms_sum: f64,
    latencies_ms: VecDeque<f64>,
    /// Claim to output, per job.
    pub job_latency: Histogram,
    /// Forward time, per batch.
    pub batch_latency: Histogram,
    /// Jobs with a deadline, by outcome.
    pub goodput: Goodput,
    /// Items per job, a moving average (what a job still waiting is guessed to hold).
    items_per_job: Option<f64>,
    /// Measured forward time per batch size, a moving average in ms.
    batch_ms_by_size: BTreeMap<usize, f64>,
    /// Expired jobs not yet in a journal line, and when the last line was written.
    expired_log: (u64, Option<Instant>),
}

impl Stats {
    pub fn record_batch(&mut self, took: Duration, items: usize) {
        let ms = took.as_secs_f64() * 1e3;
        self.batches += 1;
        self.batch_ms_sum += ms;
        self.batch_latency.observe(took);
        let m = self.batch_ms_by_size.entry(items).or_insert(ms);
        *m = 0.8 * *m + 0.2 * ms;
    }

    pub fn record_done(&mut self, latency: Duration) {
        self.done += 1;
        push_bounded(&mut self.latencies_ms, latency.as_secs_f64() * 1e3);
        self.job_latency.observe(latency);
    }

    pub fn record_items(&mut self, items: usize) {
        let x = items as f64;
        self.items_per_job = Some(self.items_per_job.map_or(x, |m| 0.9 * m + 0.1 * x));
    }

    /// Counts an expired job; the count to log now, when the last line is `every` old.
    pub fn expired_to_log(&mut self, every: Duration) -> Option<u64> {
        self.expired_log.0 += 1;
        let due = self.expired_log.1.is_none_or(|t| t.elapsed() >= every);
        due.then(|| {
            self.expired_log.1 = Some(Instant::now());
            std::mem::take(&mut self.expired_log.0)
        })
    }

    pub fn items_per_job(&self) -> f64 {
        self.items_per_job.unwrap_or(1.0)
    }

    /// A batch of `items` as measured so far, in ms: its size's recent mean, else the nearest
    /// measured size's, scaled up by items (never down: a batch has a fixed cost too). For
    /// plans without a prediction.
    pub fn measured_batch_ms(&self, items: usize) -> Option<f64> {
        let below = self.batch_ms_by_size.range(..=items).next_back();
        let above = self.batch_ms_by_size.range(items..).next();
        let (&k, &ms) = match (below, above) {
            (Some(b), Some(a)) if a.0 - items < items - b.0 => a,
            (Some(b), _) => b,
            (None, a) => a?,
        };
        Some(ms * (items as f64 / k as f64).max(1.0))
    }

    /// The p-th percentile of recent job latencies, in ms.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile(self.latencies_ms.iter().copied().collect(), p)
    }
}

/// Measured against predicted batch latency, and when to warn about it.
#[derive(Debug, Default)]
pub struct Drift {
    /// (measured − predicted) / predicted of recent batches, in %.
    errors_pct: VecDeque<f64>,
    warned: Option<Instant>,
}

impl Drift {
    pub fn record(&mut self, measured: Duration, predicted_ms: Option<f64>) {
        if let Some(p) = predicted_ms.filter(|p| *p > 0.0) {
            push_bounded(
                &mut self.errors_pct,
                (measured.as_secs_f64() * 1e3 - p) / p * 100.0,
            );
        }
    }

    /// Median error over the last `n` planned batches (None until there are `n`).
    pub fn error_pct(&self, n: usize) -> Option<f64> {
        let k = self.errors_pct.len();
        (k >= n && n > 0)
            .then(|| percentile(self.errors_pct.iter().skip(k - n).copied().collect(), 50.0))
            .flatten()
    }

    /// Median |error| over the last `n` planned batches (or as many as there are).
    pub fn abs_error_pct(&self, n: usize) -> Option<f64> {
        let k = self.errors_pct.len();
        percentile(
            self.errors_pct
                .iter()
                .skip(k.saturating_sub(n))
                .map(|e| e.abs())
                .collect(),
            50.0,
        )
    }

    /// Median error over the recent window or whatever there is of it.
    pub fn recent_error_pct(&self) -> Option<f64> {
        self.error_pct(DRIFT_WINDOW.min(self.errors_pct.len()))
    }

    /// The error worth a warning now: over the threshold, and not warned about recently.
    pub fn warning_due(&mut self) -> Option<f64> {
        let err = self.error_pct(DRIFT_WINDOW)?;
        let due = err.abs() > DRIFT_WARN_PCT
            && self.warned.is_none_or(|t| t.elapsed() > DRIFT_WARN_EVERY);
        due.then(|| {
            self.warned = Some(Instant::now());
            err
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmeasured_sizes_come_from_the_nearest_measured_one() {
        let mut s = Stats::default();
        assert_eq!(s.measured_batch_ms(4), None);
        s.record_batch(Duration::from_millis(10), 2);
        s.record_batch(Duration::from_millis(40), 8);
        assert_eq!(s.measured_batch_ms(2), Some(10.0));
        assert_eq!(s.measured_batch_ms(1), Some(10.0));
        assert_eq!(s.measured_batch_ms(4), Some(20.0));
        assert_eq!(s.measured_batch_ms(6), Some(40.0));
        assert_eq!(s.measured_batch_ms(16), Some(80.0));
    }

    #[test]
    fn drift_warns_once_past_the_threshold() {
        let mut d = Drift::default();
        for _ in 0..DRIFT_WINDOW - 1 {
            d.record(Duration::from_millis(20), Some(10.0));
        }
        assert_eq!(d.warning_due(), None, "not a full window yet");
        d.record(Duration::from_millis(20), None);
        assert_eq!(d.warning_due(), None, "unplanned batches do not count");
        d.record(Duration::from_millis(20), Some(10.0));
        assert_eq!(d.warning_due(), Some(100.0));
        assert_eq!(d.warning_due(), None, "rate-limited");
        assert_eq!(d.recent_error_pct(), Some(100.0));
    }

    #[test]
    fn job_latency_percentiles_cover_recent_jobs() {
        let mut s = Stats::default();
        for ms in 1..=100 {
            s.record_done(Duration::from_millis(ms));
        }
        assert_eq!(s.done, 100);
        assert_eq!(s.percentile(50.0), Some(50.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let mut h = Histogram::default();
        for ms in [0.5, 3.0, 3.0, 40_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1e3));
        }
        let c = h.cumulative();
        assert_eq!(c[0], ("0.001".to_string(), 1));
        assert_eq!(c[2], ("0.005".to_string(), 3));
        assert_eq!(c.last().unwrap(), &("+Inf".to_string(), 4));
        assert_eq!(c[c.len() - 2].1, 3, "40 s is above the last finite bucket");
        assert_eq!(h.count, 4);
    }
}

/// Instance sets started so far: by warm-up and helper threads (ahead of use), and on the
/// dispatch path in front of a batch (zero after warm-up, unless a set died).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SetStarts {
    pub ahead: u64,
    pub on_dispatch: u64,
}

/// When each forward pass now running started (several, with batches in flight on lanes).
/// The watchdog reads the oldest.
#[derive(Default)]
pub struct Busy(std::sync::Mutex<(u64, Vec<(u64, Instant)>)>);

impl Busy {
    /// Runs `f` as a forward pass: counted as running until it returns.
    pub fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        let id = {
            let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
            g.0 += 1;
            let id = g.0;
            g.1.push((id, Instant::now()));
            id
        };
        let out = f();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .retain(|(i, _)| *i != id);
        out
    }

    /// How long the oldest forward pass now running has run, if one is.
    pub fn for_how_long(&self) -> Option<Duration> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1.iter().map(|(_, t)| t.elapsed()).max()
    }
}
