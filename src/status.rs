//! Counters, latency percentiles, and the status file (`<state_dir>/status.json`, plus
//! `metrics.prom` in Prometheus text format) that `packrat status` and node exporters read.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::instances::InstanceInfo;
use crate::planner::{Plan, PlanSource};

/// How many recent job latencies the percentiles are computed over.
const WINDOW: usize = 1024;

#[derive(Debug, Default)]
pub struct Stats {
    pub done: u64,
    pub failed: u64,
    pub batches: u64,
    latencies_ms: VecDeque<f64>,
    /// (measured − predicted) / predicted of recent batches, in %.
    prediction_errors_pct: VecDeque<f64>,
}

impl Stats {
    pub fn record_done(&mut self, latency: Duration) {
        self.done += 1;
        if self.latencies_ms.len() == WINDOW {
            self.latencies_ms.pop_front();
        }
        self.latencies_ms.push_back(latency.as_secs_f64() * 1e3);
    }

    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile(self.latencies_ms.iter().copied().collect(), p)
    }

    pub fn record_batch(&mut self, measured: Duration, predicted_ms: Option<f64>) {
        self.batches += 1;
        if let Some(p) = predicted_ms.filter(|p| *p > 0.0) {
            if self.prediction_errors_pct.len() == WINDOW {
                self.prediction_errors_pct.pop_front();
            }
            self.prediction_errors_pct
                .push_back((measured.as_secs_f64() * 1e3 - p) / p * 100.0);
        }
    }

    /// Median prediction error over the last `n` planned batches (None until there are `n`).
    pub fn prediction_error_pct(&self, n: usize) -> Option<f64> {
        let k = self.prediction_errors_pct.len();
        (k >= n)
            .then(|| {
                percentile(
                    self.prediction_errors_pct
                        .iter()
                        .skip(k - n)
                        .copied()
                        .collect(),
                    50.0,
                )
            })
            .flatten()
    }
}

/// The p-th percentile (0..=100, nearest rank) of `v`.
pub fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    pub source: String,
    pub spool: String,
    pub plan_source: PlanSource,
    pub max_batch: usize,
    /// The plan for max_batch, and the one used by the last batch.
    pub plan_max_batch: Plan,
    pub last_plan: Option<Plan>,
    pub instances: Vec<InstanceInfo>,
    pub queue_depth: usize,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub batches: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Median (measured − predicted) / predicted of the last 50 planned batches, in %.
    pub prediction_error_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub state: String,
    pub updated: String,
    pub config: String,
    pub models: Vec<ModelStatus>,
}

impl Status {
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        tmp.persist(state_dir.join("status.json"))
            .map_err(|e| e.error)?;
        let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
        std::io::Write::write_all(&mut tmp, self.prometheus().as_bytes())?;
        tmp.persist(state_dir.join("metrics.prom"))
            .map_err(|e| e.error)?;
        Ok(())
    }

    pub fn read(state_dir: &Path) -> Result<Status> {
        let p = state_dir.join("status.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("no status at {}: is the agent running with this state dir? (pass --state-dir or --config)", p.display())
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a packrat status file", p.display()))
    }

    fn prometheus(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# TYPE packrat_jobs_done_total counter\n# TYPE packrat_jobs_failed_total counter\n",
        );
        s.push_str("# TYPE packrat_queue_depth gauge\n# TYPE packrat_job_latency_ms gauge\n# TYPE packrat_instances gauge\n");
        for m in &self.models {
            let l = format!("model=\"{}\"", m.name);
            s.push_str(&format!("packrat_jobs_done_total{{{l}}} {}\n", m.jobs_done));
            s.push_str(&format!(
                "packrat_jobs_failed_total{{{l}}} {}\n",
                m.jobs_failed
            ));
            s.push_str(&format!("packrat_queue_depth{{{l}}} {}\n", m.queue_depth));
            s.push_str(&format!(
                "packrat_instances{{{l}}} {}\n",
                m.plan_max_batch.instances.len()
            ));
            for (q, v) in [("0.5", m.latency_p50_ms), ("0.99", m.latency_p99_ms)] {
                if let Some(v) = v {
                    s.push_str(&format!(
                        "packrat_job_latency_ms{{{l},quantile=\"{q}\"}} {v:.3}\n"
                    ));
                }
            }
        }
        s
    }
}

/// `2026-11-28T14:41:22Z` for a time (UTC, seconds), without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_876_882);
        assert_eq!(rfc3339(t), "2026-11-28T14:41:22Z");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 50.0), Some(50.0));
        assert_eq!(percentile(v, 99.0), Some(99.0));
        assert_eq!(percentile(vec![], 50.0), None);
    }
}
