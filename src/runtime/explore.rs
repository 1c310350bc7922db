//! Exploration under load: how a busy model measures the live-profile points that idle gaps
//! cannot (there are none, or the points are too slow for the idle-gap bound). Passive samples
//! only ever see the layouts the plan already uses, so a wrong prior on a rival layout would
//! stay wrong for as long as the node is busy. Now and then a real batch — real jobs, real
//! outputs — runs on a layout that measures such a point instead of the plan's.
//!
//! What it may cost is bounded by `explore_budget_pct` of serving time: the measured cost of
//! an exploration batch is its time over the plan's prediction for the same batch, and a new
//! one starts only while what explorations cost so far is within the budget (one can overshoot
//! it by its own cost, which later batches pay back). Which point: never-measured points first,
//! then the one expected to cost least — the one the plan is likeliest to switch to, its
//! expectation scaled by how far its measured neighbours are from their priors (see
//! [`LiveProfile::expected_ms`]), an optimistic guess where the prior is off. Idle gaps come
//! first: while they are used for measurements, nothing is explored.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::planner::live::LiveProfile;
use crate::planner::profile::targets;
use crate::planner::PlanTable;

/// At least this many plan batches between two exploration batches: no run of jobs in a row
/// pays for exploration.
pub const SPACING: u64 = 4;
/// No exploration within this long of an idle-gap measurement: idle gaps come first.
pub const IDLE_FIRST: Duration = Duration::from_secs(10);
/// A point expected to take more than this many times the plan's batch is never explored
/// (one exploration must not make a tail of its own; a 3×-wrong prior still fits).
pub const MAX_SLOWDOWN: f64 = 4.0;

/// A batch to run on another layout than the plan's, to measure (threads, batch): ⌊T/t⌋
/// co-located instances of `threads` threads, `batch` items each — the batch's own items
/// first, padded with example rows up to `instances × batch` (their outputs are dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct Exploration {
    pub threads: usize,
    pub batch: usize,
    pub instances: usize,
    /// What the live profile expects the exploration batch to take.
    pub expected_ms: f64,
    /// What the plan was predicted to take for the same items.
    pub plan_ms: f64,
    pub never_measured: bool,
}

impl Exploration {
    /// Example rows to add so that every instance gets `batch` items.
    pub fn padding(&self, items: usize) -> usize {
        (self.instances * self.batch).saturating_sub(items)
    }
}

/// The last exploration batch, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExploreReport {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub threads: usize,
    pub batch: usize,
    pub instances: usize,
    /// Real items in the batch (the rest was padding).
    pub items: usize,
    pub measured_ms: f64,
    pub plan_ms: f64,
}

/// The exploration part of a model's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExploreStatus {
    pub budget_pct: f64,
    /// Batches run on an exploration layout.
    pub batches: u64,
    /// Σ (measured − the plan's prediction) over those batches, in ms (negative: they ran
    /// faster than the plan would have — the plan was wrong).
    pub cost_ms: f64,
    /// What is counted against the budget (the batches slower than their plan), as % of the
    /// time spent serving.
    pub spent_pct: f64,
    /// Points exploration measured until this host's samples outweigh their prior.
    pub points_filled: Vec<(usize, usize)>,
    pub last: Option<ExploreReport>,
}

/// Budget accounting and the record of what was explored, for one adapter.
pub struct Explorer {
    budget_pct: f64,
    serving_ms: f64,
    spent_ms: f64,
    cost_ms: f64,
    batches: u64,
    since_last: u64,
    idle_probe_at: Option<Instant>,
    filled: BTreeSet<(usize, usize)>,
    last: Option<ExploreReport>,
}

impl Explorer {
    pub fn new(budget_pct: f64) -> Explorer {
        Explorer {
            budget_pct,
            serving_ms: 0.0,
            spent_ms: 0.0,
            cost_ms: 0.0,
            batches: 0,
            since_last: 0,
            idle_probe_at: None,
            filled: BTreeSet::new(),
            last: None,
        }
    }

    /// A batch ran on the plan.
    pub fn served(&mut self, ms: f64) {
        self.serving_ms += ms;
        self.since_last += 1;
    }

    /// An idle-gap measurement was made.
    pub fn idle_probe(&mut self) {
        self.idle_probe_at = Some(Instant::now());
    }

    /// Whether an exploration may run now: budget left, spaced from the last one, and no
    /// idle gap in use.
    pub fn may_explore(&self) -> bool {
        self.budget_pct > 0.0
            && self.since_last >= SPACING
            && self.idle_probe_at.is_none_or(|t| t.elapsed() > IDLE_FIRST)
            && self.spent_ms <= self.budget_pct / 100.0 * self.serving_ms
    }

    /// Counts an exploration batch of `items` that took `ms`; `filled`: its point is now
    /// measured past its prior.
    pub fn record(&mut self, e: &Exploration, items: usize, ms: f64, filled: bool, now: f64) {
        let cost = ms - e.plan_ms;
        self.serving_ms += ms;
        self.cost_ms += cost;
        self.spent_ms += cost.max(0.0);
        self.batches += 1;
        self.since_last = 0;
        if filled {
            self.filled.insert((e.threads, e.batch));
        }
        self.last = Some(ExploreReport {
            at: now,
            threads: e.threads,
            batch: e.batch,
            instances: e.instances,
            items,
            measured_ms: ms,
            plan_ms: e.plan_ms,
        });
    }

    pub fn status(&self) -> ExploreStatus {
        ExploreStatus {
            budget_pct: self.budget_pct,
            batches: self.batches,
            cost_ms: self.cost_ms,
            spent_pct: if self.serving_ms > 0.0 {
                self.spent_ms / self.serving_ms * 100.0
            } else {
                0.0
            },
            points_filled: self.filled.iter().copied().collect(),
            last: self.last.clone(),
        }
    }
}

/// How much a point needs measuring: never measured, its prior still outweighing this host's
/// samples, or only stale (old, or a re-profiling round wants it again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Never,
    Unsettled,
    Stale,
}

fn need(live: &LiveProfile, t: usize, b: usize) -> Need {
    match live.point(t, b) {
        Some(p) if p.measured_enough() => Need::Stale,
        Some(p) if p.last_measured().is_some() => Need::Unsettled,
        _ => Need::Never,
    }
}

/// Whether ⌊T/t⌋ instances of `b` items can run a batch of `items`: the items fill the layout,
/// and the padding adds at most a quarter (one row for the smallest batches).
fn fits(k: usize, b: usize, items: usize) -> bool {
    items <= k * b && k * b - items <= (items / 4).max(1)
}

/// (t, b, k, need) of every point worth an exploration batch: in the profiler's grid (other
/// points serving met by chance are not worth a batch), run by no plan of the table (those
/// are measured by serving), and within reach of the batch sizes in `served`.
fn open_points(
    live: &LiveProfile,
    wanted: &[(usize, usize)],
    cores: usize,
    table: &PlanTable,
    served: &[usize],
) -> Vec<(usize, usize, usize, Need)> {
    let grid: Vec<(usize, usize)> = targets(live.cores, live.max_batch)
        .into_iter()
        .flat_map(|(t, bs)| bs.into_iter().map(move |b| (t, b)))
        .collect();
    let table_runs = |t: usize, b: usize| {
        table
            .plans
            .iter()
            .any(|p| p.instances.iter().any(|i| i.threads == t && i.batch == b))
    };
    wanted
        .iter()
        .copied()
        .filter(|&(t, b)| grid.contains(&(t, b)) && (1..=cores).contains(&t) && b > 0)
        .filter(|&(t, b)| !table_runs(t, b))
        .map(|(t, b)| (t, b, cores / t))
        // A batch that small was served: jobs that small come, and [`cap`] can keep their
        // batch within the point's reach.
        .filter(|&(_, b, k)| served.iter().any(|&n| n <= k * b))
        .map(|(t, b, k)| (t, b, k, need(live, t, b)))
        .collect()
}

/// The batch sizes (lo, hi) that can explore the neediest point only small batches reach,
/// when one is worth it: the dispatcher keeps a batch whose first job has lo..=hi items from
/// coalescing past hi (a batch of many small jobs would never reach it otherwise). Every batch
/// it so keeps small can explore the point: no batch is kept small for nothing.
pub fn cap(
    live: &LiveProfile,
    wanted: &[(usize, usize)],
    cores: usize,
    table: &PlanTable,
    served: &[usize],
) -> Option<(usize, usize)> {
    let open = open_points(live, wanted, cores, table, served);
    let neediest = open.iter().map(|x| x.3).min()?;
    let (t, b, k, _) = open
        .into_iter()
        .filter(|x| x.3 == neediest)
        .min_by_key(|&(_, b, k, _)| k * b)?;
    let hi = k * b;
    let plan_ms = table.for_batch(hi).predicted_latency_ms?;
    if live.expected_ms(t, b)? > plan_ms * MAX_SLOWDOWN {
        return None;
    }
    let lo = (1..=hi).find(|&n| fits(k, b, n))?;
    Some((lo, hi))
}

/// The point to explore on a batch of `items` instead of `table`'s plan for it, among `wanted`
/// (the live profile's stale points). Only the profiler's grid, and only points no plan of the
/// table runs (those are measured by serving). The batch explores only a point of the
/// neediest class that some size in `served` (the sizes served lately) can reach — so a
/// batch that cannot reach a never-measured point does not spend the budget on a merely
/// stale one — and never one expected to take more than [`MAX_SLOWDOWN`] × the plan. Within
/// the class: no padding first, then the cheapest.
pub fn choose(
    live: &LiveProfile,
    wanted: &[(usize, usize)],
    cores: usize,
    items: usize,
    table: &PlanTable,
    served: &[usize],
) -> Option<Exploration> {
    let plan_ms = table
        .for_batch(items)
        .predicted_latency_ms
        .filter(|&ms| ms > 0.0)?;
    let open = open_points(live, wanted, cores, table, served);
    let neediest = open.iter().map(|x| x.3).min()?;
    open.into_iter()
        .filter(|&(_, b, k, n)| n == neediest && fits(k, b, items))
        .filter_map(|(t, b, k, n)| {
            let expected_ms = live.expected_ms(t, b)?;
            (expected_ms <= plan_ms * MAX_SLOWDOWN).then_some(Exploration {
                threads: t,
                batch: b,
                instances: k,
                expected_ms,
                plan_ms,
                never_measured: n == Need::Never,
            })
        })
        .min_by(|x, y| {
            (x.padding(items) > 0)
                .cmp(&(y.padding(items) > 0))
                .then(x.expected_ms.total_cmp(&y.expected_ms))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::live::SampleKind;
    use crate::planner::profile::{Point, ProfileFile};
    use crate::planner::{Plan, PlannedInstance};

    const ALL: [usize; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn live() -> LiveProfile {
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
            // The 1-thread points told 3× slower than they are (9, 15, 27 ms for 3, 5, 9).
            points: vec![
                pt(1, 1, 9.0),
                pt(1, 2, 15.0),
                pt(1, 4, 27.0),
                pt(2, 1, 4.0),
                pt(2, 2, 6.0),
                pt(2, 4, 10.0),
                pt(2, 8, 18.0),
            ],
        };
        LiveProfile::from_profile(&p, 8)
    }

    /// A table that runs every size up to 8 on one 2-thread instance, `items` predicted `ms`.
    fn plan(items: usize, ms: f64) -> PlanTable {
        PlanTable {
            source: crate::planner::PlanSource::Profile,
            plans: (1..=8)
                .map(|b| Plan {
                    batch: b,
                    cores: 2,
                    predicted_latency_ms: Some(if b == items { ms } else { 2.0 * b as f64 }),
                    baseline_latency_ms: None,
                    instances: vec![PlannedInstance {
                        threads: 2,
                        batch: b,
                        cores: vec![0, 1],
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_explores_the_point_its_size_fills() {
        let l = live();
        let wanted = l.stale(1000.0, 600.0, None);
        // 8 items on 2 × 1 thread: (1, 4), no padding.
        let e = choose(&l, &wanted, 2, 8, &plan(8, 18.0), &ALL).unwrap();
        assert_eq!((e.threads, e.batch, e.instances), (1, 4, 2));
        assert_eq!(e.padding(8), 0);
        assert!(e.never_measured);
        // 3 items: (1, 2) with one row of padding; (1, 1) cannot hold them, and every
        // 2-thread point up to 8 is what the table runs.
        let e = choose(&l, &wanted, 2, 3, &plan(3, 8.0), &ALL).unwrap();
        assert_eq!((e.threads, e.batch, e.padding(3)), (1, 2, 1));
        // 1 item: (1, 1), the second instance given one row of padding.
        let e = choose(&l, &wanted, 2, 1, &plan(1, 4.0), &ALL).unwrap();
        assert_eq!((e.threads, e.batch, e.padding(1)), (1, 1, 1));
    }

    #[test]
    fn a_point_far_slower_than_the_plan_is_not_explored() {
        let l = live();
        let wanted = l.stale(1000.0, 600.0, None);
        // (1, 4) is expected at 27 ms: more than 4 × a 6 ms plan.
        assert_eq!(choose(&l, &wanted, 2, 8, &plan(8, 6.0), &ALL), None);
    }

    #[test]
    fn a_measured_neighbour_makes_the_others_cheaper_to_expect() {
        let mut l = live();
        for k in 0..4 {
            l.record(1, 4, 9.0, SampleKind::Explored, 990.0 + k as f64);
        }
        // (1, 4) ran at a third of its prior: (1, 2) is expected at a third too.
        assert_eq!(l.expected_ms(1, 2), Some(5.0));
        let wanted = l.stale(1000.0, 600.0, None);
        assert!(!wanted.contains(&(1, 4)));
        let e = choose(&l, &wanted, 2, 4, &plan(4, 10.0), &ALL).unwrap();
        assert_eq!((e.threads, e.batch, e.expected_ms), (1, 2, 5.0));
    }

    #[test]
    fn a_stale_point_waits_while_a_never_measured_one_is_within_reach() {
        let mut l = live();
        for k in 0..4 {
            l.record(1, 4, 9.0, SampleKind::Explored, k as f64);
        }
        let wanted = l.stale(1000.0, 600.0, None);
        assert!(wanted.contains(&(1, 4)), "old: stale again");
        // 8 items reach only (1, 4); (1, 1) and (1, 2) were never measured and batches of
        // 1–4 items come too: this batch runs on the plan.
        assert_eq!(choose(&l, &wanted, 2, 8, &plan(8, 18.0), &ALL), None);
        // When only batches of 8 come, nothing better is within reach.
        let e = choose(&l, &wanted, 2, 8, &plan(8, 18.0), &[8]).unwrap();
        assert_eq!((e.threads, e.batch, e.never_measured), (1, 4, false));
    }

    #[test]
    fn small_batches_are_capped_while_only_they_reach_the_neediest_point() {
        let mut l = live();
        let wanted = l.stale(1000.0, 600.0, None);
        // (1, 1), (1, 2), (1, 4) never measured: the smallest, (1, 1), takes batches of 1–2.
        assert_eq!(cap(&l, &wanted, 2, &plan(8, 18.0), &ALL), Some((1, 2)));
        // Batches of 8 only: (1, 4), with 7–8 items.
        assert_eq!(cap(&l, &wanted, 2, &plan(8, 18.0), &[8]), Some((7, 8)));
        for p in [(1, 1), (1, 2), (1, 4)] {
            for k in 0..4 {
                l.record(p.0, p.1, 5.0, SampleKind::Explored, 990.0 + k as f64);
            }
        }
        let wanted = l.stale(1000.0, 600.0, None);
        assert_eq!(cap(&l, &wanted, 2, &plan(8, 18.0), &ALL), None);
    }

    #[test]
    fn the_budget_is_paid_back_by_serving() {
        let e = Exploration {
            threads: 1,
            batch: 4,
            instances: 2,
            expected_ms: 12.0,
            plan_ms: 10.0,
            never_measured: true,
        };
        let mut x = Explorer::new(1.0);
        assert!(!x.may_explore(), "spaced from the start");
        for _ in 0..SPACING {
            x.served(10.0);
        }
        assert!(x.may_explore());
        x.record(&e, 8, 15.0, false, 0.0);
        // 5 ms over the plan: 1 % of serving pays it back after 500 ms of serving.
        let mut batches = 0;
        while !x.may_explore() {
            x.served(10.0);
            batches += 1;
            assert!(batches < 100, "never allowed again");
        }
        assert!((45..=50).contains(&batches), "{batches}");
        // An exploration faster than the plan costs nothing.
        x.record(&e, 8, 7.0, true, 0.0);
        let st = x.status();
        assert_eq!((st.batches, st.points_filled.clone()), (2, vec![(1, 4)]));
        assert!((st.cost_ms - 2.0).abs() < 1e-9, "{st:?}");
        assert!(st.spent_pct <= 1.0, "{st:?}");
        // An idle-gap measurement holds exploration back; 0 % never explores.
        for _ in 0..SPACING {
            x.served(1e6);
        }
        x.idle_probe();
        assert!(!x.may_explore());
        assert!(!Explorer::new(0.0).may_explore());
    }
}
