//! Several batches in flight. The cores split into `k` equal lanes ([`Lanes`]), each with its
//! own plan table over its cores (the DP, bounded by the layout menu); the dispatcher hands
//! each lane its own batch as soon as it is free, with no barrier on its siblings. `k = 1` is
//! the plain plan table: one batch split over every core.
//!
//! Which `k`: [`crate::planner::serving::choose`] from the live profile's predictions at the
//! current load — the arrival rate ([`Arrivals`], from the names scans see appear in
//! `incoming/`) plus the backlog — re-weighed at most every [`CHOOSE_EVERY`], with hysteresis.
//! At low load one batch on every core wins; near saturation independent batches on fewer
//! cores each serve more.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::plans;
use crate::engine::{InstanceInfo, InstanceSpec};
use crate::planner::menu;
use crate::planner::profile::Curve;
use crate::planner::topology::Topology;
use crate::planner::PlanTable;

/// How often the lane count is re-weighed.
pub const CHOOSE_EVERY: Duration = Duration::from_millis(500);
/// Another lane count must predict this much less latency to be switched to…
pub const HYSTERESIS: f64 = 0.15;
/// … in this many choices in a row ([`CHOOSE_EVERY`] apart).
pub const CONFIRM: u32 = 2;
/// Layouts each lane keeps warm (its menu): lanes hold `k` times as many instance sets.
pub const LANE_LAYOUTS: usize = 2;
/// The window the arrival rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// `k` lanes: one plan table per lane, over disjoint cores.
#[derive(Debug, Clone)]
pub struct Lanes {
    pub k: usize,
    pub tables: Vec<PlanTable>,
    /// Every core the lanes run on.
    pub cores: Vec<usize>,
}

impl Lanes {
    /// Lanes of `k` from `curve` on `topo` (None unless k splits the cores evenly).
    pub fn build(
        curve: &Curve,
        topo: &Topology,
        k: usize,
        max_batch: usize,
        weights: &[f64],
    ) -> Result<Option<Lanes>> {
        let Some(parts) = topo.lanes(k) else {
            return Ok(None);
        };
        let tables = parts
            .iter()
            .map(|t| menu::bounded(curve, t, max_batch, weights, LANE_LAYOUTS).map(|(t, _)| t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Lanes {
            k,
            tables,
            cores: topo.ordered(),
        }))
    }

    /// Every lane's instance layouts (to keep warm).
    pub fn layouts(&self) -> Vec<Vec<InstanceSpec>> {
        self.tables.iter().flat_map(plans::layouts_of).collect()
    }

    /// A lane's predicted batch time for `b` items, in ms (lanes are alike: lane 0's).
    pub fn batch_ms(&self, b: usize) -> f64 {
        self.tables
            .first()
            .and_then(|t| t.for_batch(b).predicted_latency_ms)
            .unwrap_or(f64::INFINITY)
    }
}

/// Jobs arriving, from the names successive scans of `incoming/` see appear.
#[derive(Debug, Default)]
pub struct Arrivals {
    seen: HashSet<OsString>,
    events: VecDeque<(Instant, usize)>,
    since: Option<Instant>,
}

impl Arrivals {
    /// A scan saw `names` waiting: those not in the last scan arrived since.
    pub fn scanned<'a>(&mut self, names: impl Iterator<Item = &'a OsString>) {
        let now = Instant::now();
        let names: HashSet<OsString> = names.cloned().collect();
        let new = names.iter().filter(|n| !self.seen.contains(*n)).count();
        self.seen = names;
        self.since.get_or_insert(now);
        if new > 0 {
            self.events.push_back((now, new));
        }
        while self
            .events
            .front()
            .is_some_and(|(t, _)| now - *t > RATE_WINDOW)
        {
            self.events.pop_front();
        }
    }

    /// Jobs per second over the last few seconds.
    pub fn rate(&self) -> f64 {
        let Some(since) = self.since else { return 0.0 };
        let window = since.elapsed().min(RATE_WINDOW).as_secs_f64().max(0.5);
        self.events.iter().map(|(_, n)| *n as f64).sum::<f64>() / window
    }
}

/// What status shows of concurrent batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LanesStatus {
    /// `auto`, or the fixed count the config sets.
    pub setting: String,
    /// Lanes now: 1 = one batch split over every core.
    pub lanes: usize,
    /// Batches running now, and the most at once so far.
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Batches run on lanes (k > 1) so far.
    pub lane_batches: u64,
    /// Arrival rate (jobs/s) and backlog the last choice was made at.
    pub arrival_rate: f64,
    /// Predicted mean job latency (ms) per lane count at the last choice (None: that count
    /// cannot keep up).
    pub predicted_ms: Vec<(usize, Option<f64>)>,
    /// Lane-count switches so far.
    pub switches: u64,
    /// Each lane's warm instances (thread ids, cores), for the lane count now.
    #[serde(default)]
    pub lane_instances: Vec<Vec<InstanceInfo>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_count_names_new_since_the_last_scan() {
        let mut a = Arrivals::default();
        let n = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        a.scanned(n(&["a", "b"]).iter());
        a.scanned(n(&["b", "c"]).iter());
        a.scanned(n(&["b", "c"]).iter());
        // 3 arrivals within the first half second: counted over 0.5 s at least.
        assert!((a.rate() - 6.0).abs() < 0.5, "{}", a.rate());
    }
}
