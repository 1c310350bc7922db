//! Online adaptation of one `plan = "auto"` model: the [`LiveProfile`] it learns from every
//! batch (passive samples) and from idle-gap measurements (active ones, chosen here), the
//! batch-size mix it serves, and the decision to re-plan.
//!
//! Re-planning is cheap (the DP takes milliseconds), so it is tried whenever an estimate moved
//! and at least every [`MIX_EVERY`] for the mix; a new table is adopted only when it predicts,
//! on the live profile, a weighted latency at least [`HYSTERESIS`] lower than the table in
//! force, or one size's plan [`SIZE_HYSTERESIS`] faster — evaluated on the same live
//! profile, so two tables never flap over noise. Layouts are
//! bounded by the menu ([`crate::planner::menu`]), so the sets a table needs are few and are
//! started ahead of the switch, never in front of a job.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::explore::{self, Exploration, ExploreStatus, Explorer};
use crate::config::{defaults, Adapt};
use crate::planner::live::{LiveCounts, LiveProfile, PointReport, SampleKind, PRIOR_WEIGHT};
use crate::planner::menu::{self, MenuReport};
use crate::planner::profile::{Curve, ProfileFile, ProfileKey};
use crate::planner::topology::Topology;
use crate::planner::{Plan, PlanTable};

/// A new table must predict at least this much less weighted latency to replace the old one.
pub const HYSTERESIS: f64 = 0.03;
/// … or where, for some batch size, the new table's plan is predicted this much faster than
/// the one in force (and the table as a whole no slower). Rare sizes weigh little in the
/// mix: a plan for them left on a layout the live profile has since measured far slower
/// (ResNet-18, B=3..5 on 2 threads, 30–48 % over one thread each) would otherwise stay.
pub const SIZE_HYSTERESIS: f64 = 0.25;
/// An estimate that moved by this fraction makes a re-plan worth trying.
const MOVED: f64 = 0.02;
/// Re-plans are tried at most this often.
const SOLVE_EVERY: Duration = Duration::from_secs(1);
/// ... and at least this often, so that a change of the batch-size mix is followed.
pub const MIX_EVERY: Duration = Duration::from_secs(20);
/// The live profile is written to the state dir at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// Past this median prediction error, every point is measured again in idle gaps.
pub const DRIFT_ROUND_PCT: f64 = 15.0;
/// ... at most once per this long.
const DRIFT_ROUND_EVERY: Duration = Duration::from_secs(60);
/// Each batch multiplies the mix's old counts by this (a memory of about 500 batches).
const MIX_DECAY: f64 = 0.998;

/// Why a model was re-planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Serving measured the plan's points off the profile.
    Drift,
    /// Measurements of points the plan does not use (in idle gaps, or exploring under load)
    /// changed them.
    NewPoints,
    /// The batch-size mix changed which layouts are worth keeping.
    Mix,
    /// `systemctl reload`.
    Reload,
    /// The periodic re-profiling found a change.
    Schedule,
    /// At start-up, from the live profile the last run left.
    Restored,
}

/// Every reason, in the order metrics list them.
pub const REASONS: [Reason; 6] = [
    Reason::Drift,
    Reason::NewPoints,
    Reason::Mix,
    Reason::Reload,
    Reason::Schedule,
    Reason::Restored,
];

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Drift => "drift",
            Reason::NewPoints => "new_points",
            Reason::Mix => "mix",
            Reason::Reload => "reload",
            Reason::Schedule => "schedule",
            Reason::Restored => "restored",
        }
    }
}

/// One re-plan, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replan {
    pub reason: Reason,
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// Predicted weighted latency of the new table against the old one's, in % (negative:
    /// faster).
    pub predicted_change_pct: f64,
    pub summary: String,
}

/// The adaptation part of a model's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AdaptStatus {
    /// Seconds since the live profile's newest sample.
    pub live_profile_age_s: Option<f64>,
    pub live: LiveCounts,
    pub replans: BTreeMap<String, u64>,
    pub last_replan: Option<Replan>,
    pub menu: MenuReport,
    /// The longest an idle-gap measurement may take.
    pub probe_bound_ms: f64,
    /// Points still to measure in idle gaps (never measured while serving, or stale).
    pub points_pending: usize,
    /// Points too slow to measure within the bound: they are learnt from serving only.
    pub points_too_slow: usize,
    /// Every point of the live profile with its sample count, age and spread.
    #[serde(default)]
    pub points: Vec<PointReport>,
    /// Batches run on another layout to measure points under load.
    #[serde(default)]
    pub explore: ExploreStatus,
}

/// What the adapter proposes after a solve.
pub enum Decision {
    /// Switch to this table (its sets first started ahead of use).
    Switch(PlanTable, Replan),
    /// Keep the layouts; only the predictions moved with the live profile.
    Refresh(PlanTable),
}

/// An idle-gap measurement to make: ⌊T/t⌋ instances of (t, b) at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub threads: usize,
    pub batch: usize,
    pub expected_ms: f64,
    /// The first run of a shape only warms it up (it is not recorded).
    pub warm_up: bool,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn live_path(state_dir: &Path, model: &str) -> PathBuf {
    state_dir
        .join("profiles")
        .join(format!("{model}.live.json"))
}

pub struct Adapter {
    live: LiveProfile,
    path: PathBuf,
    topo: Topology,
    cfg: Adapt,
    max_batch: usize,
    /// Decayed count of batches per size (index b-1).
    mix: Vec<f64>,
    /// The largest relative move of an estimate since the last solve, and by which samples.
    moved: f64,
    moved_by: Option<SampleKind>,
    last_solve: Instant,
    last_save: Instant,
    unsaved: bool,
    /// A re-profiling round was asked for at this time: points measured before are stale.
    round_since: Option<f64>,
    round_asked: Option<Instant>,
    /// Why the points now being measured are measured.
    probing_for: Reason,
    shapes_run: HashSet<(usize, usize)>,
    replans: BTreeMap<String, u64>,
    last_replan: Option<Replan>,
    menu: MenuReport,
    explorer: Explorer,
}

impl Adapter {
    /// Starts from the live profile the last run left, if it grew from this same profile
    /// (same key, and not older than the profile file), else from `profile`. Returns whether
    /// it was restored.
    pub fn new(
        profile: &ProfileFile,
        profile_path: &Path,
        state_dir: &Path,
        topo: Topology,
        cfg: Adapt,
        max_batch: usize,
    ) -> (Adapter, bool) {
        let path = live_path(state_dir, &profile.model);
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let restored = LiveProfile::load(&path).ok().filter(|l| {
            l.key.is_some()
                && l.key == profile.key
                && l.max_batch == max_batch
                && l.curve().is_ok()
                && mtime(&path) >= mtime(profile_path)
        });
        let was_restored = restored.is_some();
        let live = restored.unwrap_or_else(|| LiveProfile::from_profile(profile, max_batch));
        let adapter = Adapter::from_live(live, path, topo, cfg, max_batch);
        (adapter, was_restored)
    }

    /// The live profile's curve and the batch-size mix (what lanes are planned from).
    pub fn curve_and_weights(&self) -> Option<(Curve, Vec<f64>)> {
        Some((self.live.curve().ok()?, self.weights()))
    }

    /// The table the menu gives for the live profile now (start-up, restore).
    pub fn table(&mut self) -> anyhow::Result<PlanTable> {
        let (table, report) = self.bounded(&self.live.curve()?, &self.weights())?;
        self.menu = report;
        Ok(table)
    }

    fn bounded(&self, curve: &Curve, weights: &[f64]) -> anyhow::Result<(PlanTable, MenuReport)> {
        menu::bounded(
            curve,
            &self.topo,
            self.max_batch,
            weights,
            self.cfg.max_layouts,
        )
    }

    /// Folds one batch of `items` run on `plan` in: each instance's time (`took`) is a sample
    /// of its (t, b); `total` is the batch's.
    pub fn observe(
        &mut self,
        plan: &Plan,
        took: &[Option<Duration>],
        items: usize,
        total: Duration,
    ) {
        self.count_size(items);
        self.record_instances(plan, took, SampleKind::Passive);
        self.explorer.served(total.as_secs_f64() * 1e3);
    }

    fn count_size(&mut self, items: usize) {
        for x in self.mix.iter_mut() {
            *x *= MIX_DECAY;
        }
        if let Some(m) = self.mix.get_mut(items.clamp(1, self.max_batch) - 1) {
            *m += 1.0;
        }
    }

    fn record_instances(&mut self, plan: &Plan, took: &[Option<Duration>], kind: SampleKind) {
        let now = unix_now();
        for (inst, dt) in plan.instances.iter().zip(took) {
            if let (Some(dt), true) = (dt, inst.batch > 0) {
                let ms = dt.as_secs_f64() * 1e3;
                let moved = self.live.record(inst.threads, inst.batch, ms, kind, now);
                self.note_move(moved, kind);
                self.shapes_run.insert((inst.threads, inst.batch));
            }
        }
    }

    /// A point to measure on this batch of `items` instead of running `table`'s plan, when exploring
    /// under load is due (see [`super::explore`]).
    pub fn explore(&self, items: usize, table: &PlanTable) -> Option<Exploration> {
        if !self.explorer.may_explore() {
            return None;
        }
        let wanted = self.wanted();
        explore::choose(
            &self.live,
            &wanted,
            self.topo.len(),
            items,
            table,
            &self.served(),
        )
    }

    /// The batch sizes (lo, hi) that can explore a point only small batches reach, when
    /// exploring is due (see [`explore::cap`]).
    pub fn explore_cap(&self, table: &PlanTable) -> Option<(usize, usize)> {
        if !self.explorer.may_explore() {
            return None;
        }
        let wanted = self.wanted();
        explore::cap(&self.live, &wanted, self.topo.len(), table, &self.served())
    }

    fn wanted(&self) -> Vec<(usize, usize)> {
        self.live
            .stale(unix_now(), self.cfg.reprofile_interval_s, self.round_since)
    }

    /// Batch sizes served lately: more than about one batch in the mix's memory.
    fn served(&self) -> Vec<usize> {
        (1..=self.max_batch)
            .filter(|&n| self.mix[n - 1] >= 0.5)
            .collect()
    }

    /// Folds in an exploration batch of `items` run as `layout` (one instance per entry of
    /// `took`), which took `total`.
    pub fn explored(
        &mut self,
        e: &Exploration,
        layout: &Plan,
        took: &[Option<Duration>],
        items: usize,
        total: Duration,
    ) {
        let before = self
            .live
            .point(e.threads, e.batch)
            .and_then(|p| p.estimate());
        self.probing_for = self.measuring_for(e.never_measured);
        self.count_size(items);
        self.record_instances(layout, took, SampleKind::Explored);
        let point = self.live.point(e.threads, e.batch);
        let filled = point.is_some_and(|p| p.measured_enough());
        let ms = total.as_secs_f64() * 1e3;
        self.explorer.record(e, items, ms, filled, unix_now());
        log::info!(
            "model {}: explored under load: {} items on {}×(t={}, b={}) in {ms:.1} ms against the plan's predicted {:.1} ms; (t={}, b={}) {} -> {} ms ({} samples)",
            self.live.model,
            items,
            e.instances,
            e.threads,
            e.batch,
            e.plan_ms,
            e.threads,
            e.batch,
            before.map_or("?".into(), |x| format!("{x:.1}")),
            point
                .and_then(|p| p.estimate())
                .map_or("?".into(), |x| format!("{x:.1}")),
            point.map_or(0, |p| p.samples_len())
        );
    }

    fn note_move(&mut self, moved: f64, kind: SampleKind) {
        self.unsaved = true;
        if moved >= MOVED && moved > self.moved {
            self.moved = moved;
            self.moved_by = Some(kind);
        }
    }

    /// Batches run far off the predictions: measure every point again in idle gaps.
    pub fn drift_seen(&mut self) {
        if self
            .round_asked
            .is_none_or(|t| t.elapsed() > DRIFT_ROUND_EVERY)
        {
            self.round_asked = Some(Instant::now());
            self.round_since = Some(unix_now());
        }
    }

    fn weights(&self) -> Vec<f64> {
        let total: f64 = self.mix.iter().sum();
        let floor = 1.0 / self.max_batch as f64;
        self.mix
            .iter()
            .map(|&m| floor + if total > 0.0 { m / total } else { 0.0 })
            .collect()
    }

    /// Whether a solve is due now.
    pub fn solve_due(&self) -> bool {
        let since = self.last_solve.elapsed();
        (self.moved >= MOVED && since >= SOLVE_EVERY) || since >= MIX_EVERY
    }

    /// Solves on the live profile and decides against `current` (`force`: adopt the new table
    /// whatever it predicts, for a reload).
    pub fn solve(&mut self, current: &PlanTable, force: Option<Reason>) -> Option<Decision> {
        let why = force.unwrap_or(match self.moved_by {
            _ if self.moved < MOVED => Reason::Mix,
            Some(SampleKind::Passive) => Reason::Drift,
            _ => self.probing_for,
        });
        self.last_solve = Instant::now();
        self.moved = 0.0;
        self.moved_by = None;
        let curve = self.live.curve().ok()?;
        let weights = self.weights();
        let (table, report) = self.bounded(&curve, &weights).ok()?;
        let cost = |t: &PlanTable| -> f64 {
            t.plans
                .iter()
                .zip(&weights)
                .map(|(p, w)| w * menu::evaluate(p, &curve).unwrap_or(f64::INFINITY))
                .sum()
        };
        let (new, old) = (cost(&table), cost(current));
        let change = if old.is_finite() && old > 0.0 {
            new / old - 1.0
        } else {
            -1.0
        };
        let layouts_differ = table
            .plans
            .iter()
            .zip(&current.plans)
            .any(|(a, b)| a.instances != b.instances);
        let a_size_gains = change <= 0.0
            && table.plans.iter().zip(&current.plans).any(|(a, b)| {
                match (menu::evaluate(a, &curve), menu::evaluate(b, &curve)) {
                    (Some(new), Some(old)) => new < old * (1.0 - SIZE_HYSTERESIS),
                    _ => false,
                }
            });
        if layouts_differ && (change <= -HYSTERESIS || a_size_gains || force.is_some()) {
            self.menu = report;
            let replan = Replan {
                reason: why,
                at: unix_now(),
                predicted_change_pct: change * 100.0,
                summary: table.for_batch(self.max_batch).summary(),
            };
            return Some(Decision::Switch(table, replan));
        }
        // Same plans: their predictions follow the live profile.
        let mut refreshed = current.clone();
        for p in &mut refreshed.plans {
            if let Some(l) = menu::evaluate(p, &curve) {
                p.predicted_latency_ms = Some(l);
            }
        }
        Some(Decision::Refresh(refreshed))
    }

    /// Counts a switch that took effect.
    pub fn switched(&mut self, replan: Replan) {
        *self
            .replans
            .entry(replan.reason.name().to_string())
            .or_default() += 1;
        self.last_replan = Some(replan);
    }

    /// The bound on an idle-gap measurement, given the table in force.
    pub fn probe_bound_ms(&self, table: &PlanTable) -> f64 {
        self.cfg.max_probe_delay_ms.unwrap_or_else(|| {
            table.for_batch(1).predicted_latency_ms.unwrap_or(0.0) * defaults::PROBE_DELAY_B1_FACTOR
        })
    }

    /// Points to measure in idle gaps now: (those within `bound_ms`, those beyond it).
    fn pending(&self, bound_ms: f64) -> (Vec<Probe>, usize) {
        let now = unix_now();
        let mut fits = Vec::new();
        let mut too_slow = 0;
        let stale = self
            .live
            .stale(now, self.cfg.reprofile_interval_s, self.round_since);
        for (t, b) in stale {
            if t > self.topo.len() {
                continue;
            }
            let Some(expected_ms) = self.live.expected_ms(t, b) else {
                continue;
            };
            if expected_ms <= bound_ms {
                fits.push(Probe {
                    threads: t,
                    batch: b,
                    expected_ms,
                    warm_up: !self.shapes_run.contains(&(t, b)),
                });
            } else {
                too_slow += 1;
            }
        }
        (fits, too_slow)
    }

    /// The next idle-gap measurement, if one is due and fits `bound_ms`.
    pub fn next_probe(&mut self, bound_ms: f64) -> Option<Probe> {
        let probe = self.pending(bound_ms).0.into_iter().next()?;
        let never = self
            .live
            .point(probe.threads, probe.batch)
            .and_then(|p| p.last_measured())
            .is_none();
        self.probing_for = self.measuring_for(never);
        Some(probe)
    }

    /// Why a point is measured (idle gap or exploration): never measured, a drift round, or
    /// its age.
    fn measuring_for(&self, never_measured: bool) -> Reason {
        if never_measured {
            Reason::NewPoints
        } else if self.round_since.is_some() {
            Reason::Drift
        } else {
            Reason::Schedule
        }
    }

    /// Records an idle-gap measurement (or only notes the shape warm, for a warm-up run).
    pub fn probed(&mut self, probe: &Probe, ms: f64) {
        self.shapes_run.insert((probe.threads, probe.batch));
        self.explorer.idle_probe();
        if probe.warm_up {
            return;
        }
        // A point far from its estimate: the host may have changed, look at all of them.
        let settled = self
            .live
            .point(probe.threads, probe.batch)
            .is_some_and(|p| p.samples_len() > PRIOR_WEIGHT);
        if settled && (ms - probe.expected_ms).abs() > probe.expected_ms * DRIFT_ROUND_PCT / 100.0 {
            self.drift_seen();
        }
        let moved = self.live.record(
            probe.threads,
            probe.batch,
            ms,
            SampleKind::Active,
            unix_now(),
        );
        self.note_move(moved, SampleKind::Active);
    }

    /// Writes the live profile when it changed and the last write is old enough (or `now`).
    pub fn save(&mut self, now: bool) {
        if !self.unsaved || (!now && self.last_save.elapsed() < SAVE_EVERY) {
            return;
        }
        self.last_save = Instant::now();
        match self.live.save(&self.path) {
            Ok(()) => self.unsaved = false,
            Err(e) => log::warn!(
                "cannot save the live profile {}: {e:#} (it is kept in memory)",
                self.path.display()
            ),
        }
    }

    /// `3 re-plans, last: drift` (None before the first).
    pub fn summary(&self) -> Option<String> {
        let last = self.last_replan.as_ref()?;
        let n: u64 = self.replans.values().sum();
        Some(format!("{n} re-plan(s), last: {}", last.reason.name()))
    }

    /// The adapter of a new version of the same model (same inputs, engine and max_batch):
    /// it starts from what this one learnt, under the new version's profile key, and online
    /// adaptation corrects whatever the new weights change.
    pub fn inherit(&self, key: Option<ProfileKey>) -> Adapter {
        let mut live = self.live.clone();
        live.key = key;
        Adapter {
            mix: self.mix.clone(),
            unsaved: true,
            menu: self.menu.clone(),
            ..Adapter::from_live(
                live,
                self.path.clone(),
                self.topo.clone(),
                self.cfg.clone(),
                self.max_batch,
            )
        }
    }

    /// A fresh adapter on `live`: nothing solved, nothing saved, no shape run yet.
    fn from_live(
        live: LiveProfile,
        path: PathBuf,
        topo: Topology,
        cfg: Adapt,
        max_batch: usize,
    ) -> Adapter {
        let explorer = Explorer::new(cfg.explore_budget_pct);
        Adapter {
            live,
            path,
            topo,
            cfg,
            max_batch,
            mix: vec![0.0; max_batch],
            moved: 0.0,
            moved_by: None,
            last_solve: Instant::now(),
            last_save: Instant::now(),
            unsaved: false,
            round_since: None,
            round_asked: None,
            probing_for: Reason::NewPoints,
            shapes_run: HashSet::new(),
            replans: BTreeMap::new(),
            last_replan: None,
            menu: MenuReport::default(),
            explorer,
        }
    }

    pub fn status(&self, table: &PlanTable) -> AdaptStatus {
        let bound = self.probe_bound_ms(table);
        let (fits, too_slow) = self.pending(bound);
        AdaptStatus {
            live_profile_age_s: self.live.age_s(unix_now()),
            live: self.live.counts.clone(),
            replans: self.replans.clone(),
            last_replan: self.last_replan.clone(),
            menu: self.menu.clone(),
            probe_bound_ms: bound,
            points_pending: fits.len() + too_slow,
            points_too_slow: too_slow,
            points: self.live.reports(unix_now()),
            explore: self.explorer.status(),
        }
    }
}
