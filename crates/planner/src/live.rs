//! The live profile: latency(t, b) kept true while the agent serves. It starts from a measured
//! profile (each point's *prior*) and folds in every timing serving produces (passive samples:
//! each instance of each batch is a co-located measurement of its (t, b)) and every point
//! measured in an idle gap (active samples).
//!
//! The estimator of a point is the median of its last [`WINDOW`] samples, with the prior
//! standing in for [`PRIOR_WEIGHT`] samples until more than that many real ones arrive. Why a
//! windowed median: one outlier (a page fault storm, a noisy neighbour's burst) never moves it — it
//! needs a majority of the window — while a real change of the host's speed takes over the
//! estimate after ⌈WINDOW/2⌉ samples, which for any point serving uses is seconds, and for an
//! idle-gap point within a few re-profiling rounds. Time only matters for staleness: a point
//! whose last sample is older than the re-profiling interval is measured again when there is
//! an idle gap.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::profile::{save_json, targets, Curve, Point, ProfileFile, ProfileKey};
use crate::stats::median;

/// Samples per point the estimate looks at.
pub const WINDOW: usize = 9;
/// How many samples the measured profile's value counts for, until real ones push it out.
pub const PRIOR_WEIGHT: usize = 3;
/// Samples a re-profiling round takes of each point: enough to move the median.
pub const ROUND_SAMPLES: usize = WINDOW / 2 + 1;

/// Where a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// An instance's share of a batch that served jobs.
    Passive,
    /// A point measured in an idle gap.
    Active,
    /// An instance's share of a batch that served jobs on a layout chosen to measure a point
    /// (exploration under load).
    Explored,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Sample {
    ms: f64,
    /// Seconds since the Unix epoch.
    at: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LivePoint {
    pub threads: usize,
    pub batch: usize,
    /// The measured profile's latency, if it had this point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_ms: Option<f64>,
    samples: VecDeque<Sample>,
}

impl LivePoint {
    fn new(threads: usize, batch: usize, prior_ms: Option<f64>) -> LivePoint {
        LivePoint {
            threads,
            batch,
            prior_ms,
            samples: VecDeque::new(),
        }
    }

    /// The windowed median; while there are at most PRIOR_WEIGHT samples, the prior counts as
    /// PRIOR_WEIGHT more (so one or two odd samples do not move it), and after that not at
    /// all (so a prior that is wrong for this host does not bias what was measured here).
    pub fn estimate(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|s| s.ms).collect();
        if let Some(p) = self.prior_ms.filter(|_| v.len() <= PRIOR_WEIGHT) {
            v.extend(std::iter::repeat_n(p, PRIOR_WEIGHT));
        }
        median(&v)
    }

    /// Whether this host's samples outweigh the prior (or there is no prior).
    pub fn measured_enough(&self) -> bool {
        !self.samples.is_empty() && !self.prior_dominates()
    }

    /// When this point was last measured on this host while serving (None: prior only).
    pub fn last_measured(&self) -> Option<f64> {
        self.samples.back().map(|s| s.at)
    }

    pub fn samples_len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the measured profile's value still outweighs what was measured here.
    fn prior_dominates(&self) -> bool {
        self.prior_ms.is_some() && self.samples.len() <= PRIOR_WEIGHT
    }

    fn samples_since(&self, t: f64) -> usize {
        self.samples.iter().filter(|s| s.at >= t).count()
    }

    /// This point with its uncertainty, for status.
    pub fn report(&self, now: f64) -> PointReport {
        let v: Vec<f64> = self.samples.iter().map(|s| s.ms).collect();
        let spread_pct = (v.len() >= 2).then(|| {
            let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
            let mid = median(&v).unwrap_or(hi).max(1e-9);
            (hi - lo) / mid * 100.0
        });
        PointReport {
            threads: self.threads,
            batch: self.batch,
            estimate_ms: self.estimate(),
            prior_ms: self.prior_ms,
            samples: v.len(),
            age_s: self.last_measured().map(|t| (now - t).max(0.0)),
            spread_pct,
        }
    }
}

/// One live point as status shows it: its estimate with how much it is worth — how many
/// samples back it, how old the newest is, how widely they spread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PointReport {
    pub threads: usize,
    pub batch: usize,
    pub estimate_ms: Option<f64>,
    pub prior_ms: Option<f64>,
    /// Samples measured on this host while serving (0: the estimate is the prior).
    pub samples: usize,
    /// Seconds since the newest sample.
    pub age_s: Option<f64>,
    /// (max − min) / median of the samples in the window, in % (None below 2 samples).
    pub spread_pct: Option<f64>,
}

/// Counts for status: how much of the profile serving has measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LiveCounts {
    pub points: usize,
    /// Points with at least one sample taken while serving.
    pub points_measured: usize,
    pub passive_samples: u64,
    pub active_samples: u64,
    /// From batches run on another layout than the plan's to measure its points.
    #[serde(default)]
    pub explored_samples: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveProfile {
    pub model: String,
    pub cores: usize,
    pub max_batch: usize,
    /// What the profile it grew from was measured on; a live profile is reused only under the
    /// same key.
    pub key: Option<ProfileKey>,
    points: Vec<LivePoint>,
    pub counts: LiveCounts,
}

impl LiveProfile {
    /// A live profile whose priors are `p`'s points.
    pub fn from_profile(p: &ProfileFile, max_batch: usize) -> LiveProfile {
        let mut points: Vec<LivePoint> = p
            .points
            .iter()
            .map(|x| LivePoint::new(x.threads, x.batch, Some(x.latency_ms)))
            .collect();
        points.sort_by_key(|x| (x.threads, x.batch));
        let mut live = LiveProfile {
            model: p.model.clone(),
            cores: p.cores,
            max_batch,
            key: p.key.clone(),
            points,
            counts: LiveCounts::default(),
        };
        live.recount();
        live
    }

    fn recount(&mut self) {
        self.counts.points = self.points.len();
        self.counts.points_measured = self.points.iter().filter(|p| !p.samples.is_empty()).count();
    }

    fn find(&self, t: usize, b: usize) -> Result<usize, usize> {
        self.points
            .binary_search_by_key(&(t, b), |p| (p.threads, p.batch))
    }

    /// Every point with its uncertainty, for status.
    pub fn reports(&self, now: f64) -> Vec<PointReport> {
        self.points.iter().map(|p| p.report(now)).collect()
    }

    pub fn point(&self, t: usize, b: usize) -> Option<&LivePoint> {
        self.find(t, b).ok().map(|i| &self.points[i])
    }

    /// Folds in one timing; returns how far the point's estimate moved, as a fraction of the
    /// old one (1.0 for a point that had no estimate).
    pub fn record(&mut self, t: usize, b: usize, ms: f64, kind: SampleKind, now: f64) -> f64 {
        if !(ms.is_finite() && ms > 0.0) || t == 0 || b == 0 {
            return 0.0;
        }
        let i = match self.find(t, b) {
            Ok(i) => i,
            Err(i) => {
                self.points.insert(i, LivePoint::new(t, b, None));
                i
            }
        };
        let p = &mut self.points[i];
        let before = p.estimate();
        if p.samples.len() == WINDOW {
            p.samples.pop_front();
        }
        p.samples.push_back(Sample { ms, at: now });
        let after = p.estimate();
        match kind {
            SampleKind::Passive => self.counts.passive_samples += 1,
            SampleKind::Active => self.counts.active_samples += 1,
            SampleKind::Explored => self.counts.explored_samples += 1,
        }
        self.recount();
        match (before, after) {
            (Some(x), Some(y)) if x > 0.0 => ((y - x) / x).abs(),
            _ => 1.0,
        }
    }

    /// What measuring (t, b) is expected to take. For a point this host has not yet measured
    /// enough, its estimate is scaled by how far this host's samples of the nearest measured
    /// batch size of the same thread count are from their prior: when the measured profile
    /// is wrong for this host, its unmeasured points are wrong alike, and an idle-gap bound
    /// judged on them would keep them from ever being measured.
    pub fn expected_ms(&self, t: usize, b: usize) -> Option<f64> {
        let point = self.point(t, b);
        let est = match point.and_then(LivePoint::estimate) {
            Some(e) => e,
            None => {
                let curve = self.curve().ok()?;
                curve.latency(curve.threads.binary_search(&t).ok()?, b)
            }
        };
        if point.is_some_and(|p| !p.prior_dominates() && !p.samples.is_empty()) {
            return Some(est);
        }
        let ratio = self
            .points
            .iter()
            .filter(|p| p.threads == t && p.batch != b && !p.samples.is_empty())
            .filter_map(|p| {
                let measured = median(&p.samples.iter().map(|s| s.ms).collect::<Vec<_>>())?;
                Some((p.batch.abs_diff(b), measured / p.prior_ms?))
            })
            .min_by_key(|x| x.0)
            .map_or(1.0, |x| x.1);
        Some(est * ratio)
    }

    /// The profile as the planner reads it: each point's estimate. Thread counts without a
    /// batch-1 point are left out (the curve needs it to model small sub-batches).
    pub fn profile(&self) -> ProfileFile {
        let points: Vec<Point> = self
            .points
            .iter()
            .filter(|p| self.find(p.threads, 1).is_ok())
            .filter_map(|p| {
                Some(Point {
                    threads: p.threads,
                    batch: p.batch,
                    latency_ms: p.estimate()?,
                    latency_min_ms: None,
                    latency_max_ms: None,
                    samples: Some(p.samples.len()),
                })
            })
            .collect();
        ProfileFile {
            model: self.model.clone(),
            cores: self.cores,
            machine: None,
            source: Some(
                "packrat live profile (measured profile + serving + idle-gap samples)".into(),
            ),
            framework: None,
            units: None,
            co_located: true,
            key: self.key.clone(),
            points,
        }
    }

    pub fn curve(&self) -> Result<Curve> {
        self.profile().curve()
    }

    /// The points worth measuring in an idle gap, most needed first: those of the profiler's
    /// grid (and any other known point) never measured while serving; then, least recently
    /// measured first, those whose prior still outweighs this host's samples, those with
    /// fewer than [`ROUND_SAMPLES`] samples since a re-profiling round began at `round`, and
    /// those whose last sample is older than `max_age_s`.
    pub fn stale(&self, now: f64, max_age_s: f64, round: Option<f64>) -> Vec<(usize, usize)> {
        let mut want: Vec<(usize, usize)> = targets(self.cores, self.max_batch)
            .into_iter()
            .flat_map(|(t, bs)| bs.into_iter().map(move |b| (t, b)))
            .collect();
        for p in &self.points {
            if !want.contains(&(p.threads, p.batch)) {
                want.push((p.threads, p.batch));
            }
        }
        let mut aged: Vec<(f64, (usize, usize))> = want
            .into_iter()
            .filter_map(|(t, b)| {
                let never = Some((f64::NEG_INFINITY, (t, b)));
                let Some(p) = self.point(t, b) else {
                    return never;
                };
                let Some(at) = p.last_measured() else {
                    return never;
                };
                let stale = p.prior_dominates()
                    || round.is_some_and(|r| p.samples_since(r) < ROUND_SAMPLES)
                    || now - at > max_age_s;
                stale.then_some((at, (t, b)))
            })
            .collect();
        // Never measured first; then oldest; small points before large ones on ties.
        aged.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1 .1.cmp(&y.1 .1)));
        aged.into_iter().map(|x| x.1).collect()
    }

    /// Seconds since the newest sample (None before any).
    pub fn age_s(&self, now: f64) -> Option<f64> {
        self.points
            .iter()
            .filter_map(LivePoint::last_measured)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
            .map(|newest| (now - newest).max(0.0))
    }

    pub fn load(path: &Path) -> Result<LiveProfile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a live profile", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> LiveProfile {
        let pt = Point::new;
        let p = ProfileFile {
            model: "m".into(),
            cores: 2,
            machine: None,
            source: None,
            framework: None,
            units: None,
            co_located: true,
            key: None,
            points: vec![
                pt(1, 1, 10.0),
                pt(1, 2, 19.0),
                pt(2, 1, 6.0),
                pt(2, 2, 11.0),
            ],
        };
        LiveProfile::from_profile(&p, 2)
    }

    fn est(l: &LiveProfile, t: usize, b: usize) -> f64 {
        l.point(t, b).and_then(LivePoint::estimate).unwrap()
    }

    #[test]
    fn one_outlier_does_not_move_a_point() {
        let mut l = base();
        assert_eq!(est(&l, 1, 1), 10.0);
        l.record(1, 1, 500.0, SampleKind::Passive, 0.0);
        assert_eq!(est(&l, 1, 1), 10.0);
        // Among real samples too.
        for k in 0..WINDOW {
            l.record(1, 1, 12.0, SampleKind::Passive, k as f64);
        }
        l.record(1, 1, 0.5, SampleKind::Passive, 99.0);
        assert_eq!(est(&l, 1, 1), 12.0);
    }

    #[test]
    fn a_real_change_takes_over_within_half_a_window() {
        let mut l = base();
        let mut n = 0;
        while est(&l, 2, 2) != 22.0 {
            l.record(2, 2, 22.0, SampleKind::Passive, n as f64);
            n += 1;
            assert!(n <= PRIOR_WEIGHT + 1, "took {n} samples");
        }
        // And then it follows the next change as fast, the prior long gone.
        for k in 0..WINDOW {
            l.record(2, 2, 22.0, SampleKind::Passive, 10.0 + k as f64);
        }
        let mut m = 0;
        while est(&l, 2, 2) != 15.0 {
            l.record(2, 2, 15.0, SampleKind::Passive, 100.0 + m as f64);
            m += 1;
            assert!(m <= WINDOW / 2 + 1, "took {m} samples");
        }
    }

    #[test]
    fn a_point_reports_its_samples_age_and_spread() {
        let mut l = base();
        let r = l.point(1, 2).unwrap().report(50.0);
        assert_eq!((r.samples, r.age_s, r.spread_pct), (0, None, None));
        assert_eq!((r.estimate_ms, r.prior_ms), (Some(19.0), Some(19.0)));
        l.record(1, 2, 20.0, SampleKind::Passive, 10.0);
        l.record(1, 2, 30.0, SampleKind::Active, 40.0);
        let r = l.point(1, 2).unwrap().report(50.0);
        assert_eq!((r.samples, r.age_s), (2, Some(10.0)));
        // (30 − 20) / median 25 = 40 %.
        assert!((r.spread_pct.unwrap() - 40.0).abs() < 1e-9, "{r:?}");
        assert_eq!(l.reports(50.0).len(), 4);
    }

    #[test]
    fn stale_points_come_first_never_measured_then_oldest() {
        let mut l = base();
        let s = l.stale(1000.0, 60.0, None);
        // The 2-core, max_batch 2 grid: (1,1), (2,1), (2,2); (1,2) is a known point too.
        assert_eq!(s.len(), 4);
        assert_eq!(&s[..2], &[(1, 1), (2, 1)]);
        // Until this host's samples outweigh the prior, a point stays wanted.
        for k in 0..=PRIOR_WEIGHT {
            for (t, b) in [(1, 1), (2, 1), (2, 2)] {
                assert!(l.stale(1000.0, 60.0, None).contains(&(t, b)), "{k}");
                l.record(t, b, 10.0, SampleKind::Active, 980.0 + k as f64);
            }
        }
        for _ in 0..=PRIOR_WEIGHT {
            l.record(1, 2, 10.0, SampleKind::Active, 900.0);
        }
        assert_eq!(l.stale(1000.0, 60.0, None), vec![(1, 2)]);
        assert_eq!(l.counts.active_samples, 4 * 4);
        assert_eq!(l.age_s(1000.0), Some(1000.0 - 980.0 - PRIOR_WEIGHT as f64));
        // A round wants ROUND_SAMPLES of every point from its start on.
        let mut round = l.stale(1000.0, 600.0, Some(999.0));
        round.sort();
        assert_eq!(round, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        for k in 0..ROUND_SAMPLES {
            l.record(2, 2, 10.0, SampleKind::Active, 999.5 + k as f64);
        }
        assert!(!l.stale(1010.0, 600.0, Some(999.0)).contains(&(2, 2)));
    }

    #[test]
    fn a_point_not_yet_measured_is_expected_as_far_off_as_its_measured_neighbour() {
        let mut l = base();
        assert_eq!(l.expected_ms(1, 2), Some(19.0));
        l.record(1, 1, 5.0, SampleKind::Active, 0.0);
        // (1,1) ran at half its prior: (1,2) is expected at half too.
        assert_eq!(l.expected_ms(1, 2), Some(9.5));
        assert_eq!(l.expected_ms(2, 2), Some(11.0));
    }

    #[test]
    fn the_curve_skips_thread_counts_without_batch_one() {
        let mut l = base();
        l.record(4, 3, 5.0, SampleKind::Passive, 0.0);
        assert_eq!(l.curve().unwrap().threads, vec![1, 2]);
        l.record(2, 5, 30.0, SampleKind::Passive, 0.0);
        assert_eq!(l.curve().unwrap().batches(2), &[1, 2, 5]);
    }

    #[test]
    fn it_round_trips_through_its_file() {
        let mut l = base();
        l.record(1, 1, 11.0, SampleKind::Active, 5.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.live.json");
        l.save(&path).unwrap();
        let back = LiveProfile::load(&path).unwrap();
        assert_eq!(back.points, l.points);
        assert_eq!(back.counts, l.counts);
    }
}
