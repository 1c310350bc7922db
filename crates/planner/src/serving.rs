//! Planning for a queue, not for one batch: how many independent batches to run at once.
//!
//! The cores are split into `k` equal *lanes*; each lane runs its own batches with its own
//! plan (the DP over its cores), taking the next batch as soon as it is free. `k = 1` is the
//! plain plan: every batch split over every core. Which `k` is best depends on the load. The
//! lanes are `k` servers sharing one queue; a lane running batches of `b` items takes `L(b)` ms
//! each, so at `r = λ/k` items/s per lane it is busy `ρ = r · L(b) / b` of the time. A job's
//! mean latency is its batch plus the wait for a free lane, the M/D/k wait as the usual
//! approximation gives it (half the M/M/k wait, Erlang's C formula):
//!
//! `W_k(b) = L(b) + ½ · C(k, kρ) · L(b) / (k (1 − ρ))`
//!
//! For `k = 1` this is the Pollaczek–Khinchine formula for deterministic service. Batching
//! adapts to the queue, so each `k` is taken at the batch size (at least one job's items)
//! that gives it the least `W`; a `k` whose lanes are saturated at every size (`ρ ≥ 1`)
//! cannot keep up. At low load one job on every core wins (the smallest `L(1)`); near
//! saturation several lanes win when independent batches on fewer cores each serve more
//! items per second than one split batch with its barrier, or when a queue builds behind one
//! batch at a time. When no `k` keeps up, the one with the most capacity wins. This is a
//! model, not a measurement: the benchmark (BENCHMARKS.md) checks it end to end.

use crate::profile::Curve;
use crate::topology::Topology;
use crate::PlanTable;

/// One way to run: `lanes` lanes, each with batch latency `batch_ms(b)` for b = 1..=max.
pub struct Choice<'a> {
    pub lanes: usize,
    pub batch_ms: &'a dyn Fn(usize) -> f64,
    /// The largest batch whose latency comes from measured points (interpolated between
    /// them, not extrapolated past them): capacity is counted up to it only. A lane of few
    /// cores batching far past what the co-located profile measured would otherwise look
    /// faster than it is — extrapolation once put 16 one-core lanes with 64-item batches of
    /// ResNet-50 at 3.4 s, where the authors measured 4.8 s.
    pub measured: usize,
}

/// Under overload, the capacity another option must add to be switched to.
pub const OVERLOAD_GAIN: f64 = 0.03;

/// The largest batch of `table` whose plan runs every instance within the sub-batches
/// `curve` measured for its thread count (at least 1).
pub fn measured_batch(table: &PlanTable, curve: &Curve) -> usize {
    table
        .plans
        .iter()
        .take_while(|p| {
            p.instances.iter().all(|i| {
                curve
                    .batches(i.threads)
                    .last()
                    .is_some_and(|&top| i.batch <= top)
            })
        })
        .count()
        .max(1)
}

/// What the model predicts for `lanes` lanes at a load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub lanes: usize,
    /// The batch size a lane is taken at: the one with the least latency (None: it cannot
    /// keep up).
    pub batch: Option<usize>,
    /// Mean job latency in ms (infinite when it cannot keep up).
    pub latency_ms: f64,
    /// Items per second all lanes serve at max_batch.
    pub capacity: f64,
}

/// Erlang's C formula: the chance that a job finds all `k` servers busy at offered load `a`
/// (in servers, `a < k`).
fn erlang_c(k: usize, a: f64) -> f64 {
    let kf = k as f64;
    if a >= kf {
        return 1.0;
    }
    let (mut term, mut sum) = (1.0, 1.0);
    for i in 1..k {
        term *= a / i as f64;
        sum += term;
    }
    let last = term * a / kf * (kf / (kf - a));
    last / (sum + last)
}

/// The prediction for one option at `rate` items/s, jobs of `per_job` items.
pub fn predict(o: &Choice<'_>, rate: f64, per_job: f64, max_batch: usize) -> Prediction {
    let k = o.lanes.max(1);
    let kf = k as f64;
    let max = max_batch.max(1);
    let m = max.min(o.measured).max(1);
    let capacity = kf * m as f64 / ((o.batch_ms)(m).max(1e-6) / 1e3);
    let r = rate.max(0.0) / kf;
    let first = (per_job.ceil() as usize).clamp(1, max);
    let mut best: Option<(usize, f64)> = None;
    for b in first..=max {
        let l = (o.batch_ms)(b);
        let rho = r * l / 1e3 / b as f64;
        if !(l.is_finite() && rho < 1.0) {
            continue;
        }
        let w = l + 0.5 * erlang_c(k, kf * rho) * l / (kf * (1.0 - rho));
        if best.is_none_or(|(_, bw)| w < bw) {
            best = Some((b, w));
        }
    }
    Prediction {
        lanes: k,
        batch: best.map(|(b, _)| b),
        latency_ms: best.map_or(f64::INFINITY, |(_, w)| w),
        capacity,
    }
}

/// The best option at `rate` items/s: the least predicted latency among those that keep up,
/// else the most capacity. `current` (a lane count) is kept unless another predicts at
/// least `hysteresis` (e.g. 0.1 = 10 %) less latency, or it cannot keep up.
pub fn choose(
    options: &[Choice<'_>],
    rate: f64,
    per_job: f64,
    max_batch: usize,
    current: usize,
    hysteresis: f64,
) -> Option<(Prediction, Vec<Prediction>)> {
    let all: Vec<Prediction> = options
        .iter()
        .map(|o| predict(o, rate, per_job, max_batch))
        .collect();
    let best = all
        .iter()
        .filter(|p| p.latency_ms.is_finite())
        .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
        .or_else(|| all.iter().max_by(|a, b| a.capacity.total_cmp(&b.capacity)))
        .copied()?;
    let cur = all.iter().find(|p| p.lanes == current).copied();
    let pick = match cur {
        Some(c)
            if c.latency_ms.is_finite() && best.latency_ms >= c.latency_ms * (1.0 - hysteresis) =>
        {
            c
        }
        // Nothing keeps up: the backlog grows under every option, and any option that serves
        // more drains it sooner, so a little more (measured) capacity is switched to.
        Some(c)
            if !best.latency_ms.is_finite()
                && best.capacity <= c.capacity * (1.0 + OVERLOAD_GAIN.min(hysteresis)) =>
        {
            c
        }
        _ => best,
    };
    Some((pick, all))
}

/// [`choose`] over plan tables: `(lanes, one lane's plan table, its measured batch)` each
/// (for one lane, the table over every core), every predicted batch latency scaled by `scale`.
pub fn choose_among(
    tables: &[(usize, &PlanTable, usize)],
    scale: f64,
    rate: f64,
    per_job: f64,
    current: usize,
    hysteresis: f64,
) -> Option<(Prediction, Vec<Prediction>)> {
    let max_batch = tables.iter().map(|(_, t, _)| t.max_batch()).min()?;
    let fns: Vec<(usize, _, usize)> = tables
        .iter()
        .map(|&(k, t, measured)| {
            let f = move |b: usize| {
                t.for_batch(b)
                    .predicted_latency_ms
                    .map_or(f64::INFINITY, |ms| ms * scale)
            };
            (k, f, measured)
        })
        .collect();
    let options: Vec<Choice<'_>> = fns
        .iter()
        .map(|(k, f, measured)| Choice {
            lanes: *k,
            batch_ms: f,
            measured: *measured,
        })
        .collect();
    choose(&options, rate, per_job, max_batch, current, hysteresis)
}

/// The lane counts worth weighing on `cores` cores: every k that splits them evenly.
pub fn lane_counts(cores: usize, max_lanes: usize) -> Vec<usize> {
    (1..=cores.min(max_lanes.max(1)))
        .filter(|k| cores.is_multiple_of(*k))
        .collect()
}

impl Topology {
    /// The usable CPUs in `k` equal lanes of contiguous CPUs, node by node and physical
    /// cores first (as [`Topology::ordered`]); None unless k divides them.
    pub fn lanes(&self, k: usize) -> Option<Vec<Topology>> {
        if k == 0 || !self.len().is_multiple_of(k) {
            return None;
        }
        let per = self.len() / k;
        let ordered = self.ordered();
        Some(ordered.chunks(per).map(|c| self.subset(c)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One split batch: 10 ms + 4 ms/item on 2 cores; one lane of 1 core: 12 + 6 ms/item
    /// (less fixed cost shared, no barrier: 2 lanes serve more items per second).
    fn one(b: usize) -> f64 {
        10.0 + 4.0 * b as f64
    }
    fn two(b: usize) -> f64 {
        12.0 + 6.0 * b as f64
    }

    #[test]
    fn low_load_splits_one_batch_and_high_load_runs_lanes() {
        let opts = [
            Choice {
                lanes: 1,
                batch_ms: &one,
                measured: usize::MAX,
            },
            Choice {
                lanes: 2,
                batch_ms: &two,
                measured: usize::MAX,
            },
        ];
        let (p, _) = choose(&opts, 5.0, 1.0, 16, 1, 0.0).unwrap();
        assert_eq!((p.lanes, p.batch), (1, Some(1)));
        // Capacity: one lane 16 / 74 ms = 216/s; two lanes 2 × 16 / 108 ms = 296/s.
        let (p, all) = choose(&opts, 250.0, 1.0, 16, 1, 0.0).unwrap();
        assert_eq!(p.lanes, 2, "{all:?}");
        assert!(all[0].latency_ms.is_infinite());
        // Beyond every capacity: the most capacity.
        let (p, _) = choose(&opts, 1000.0, 1.0, 16, 1, 0.0).unwrap();
        assert_eq!((p.lanes, p.batch), (2, None));
    }

    #[test]
    fn a_lane_batches_as_much_as_keeps_its_queue_shortest() {
        let o = Choice {
            lanes: 1,
            batch_ms: &one,
            measured: usize::MAX,
        };
        // 100 items/s: b=1 is saturated (1.4 items arrive in its 14 ms); b=2 is 90 % busy
        // (W = 18 + 0.5·0.9·18/0.1 = 99 ms); b=4's 50 ms is the least (b=3 52, b=5 52.5).
        let p = predict(&o, 100.0, 1.0, 16);
        assert_eq!(p.batch, Some(4));
        assert!((p.latency_ms - 50.14).abs() < 0.1, "{p:?}");
        // Jobs of 4 items: never below 4.
        assert_eq!(predict(&o, 1.0, 4.0, 16).batch, Some(4));
    }

    #[test]
    fn erlang_c_matches_known_values() {
        assert!(
            (erlang_c(1, 0.85) - 0.85).abs() < 1e-12,
            "M/M/1: the utilisation"
        );
        // k = 2, a = 1.58: (a²/2 · 2/(2−a)) / (1 + a + a²/2 · 2/(2−a)) = 0.6974.
        assert!((erlang_c(2, 1.58) - 0.6974).abs() < 1e-3);
        assert_eq!(erlang_c(4, 4.0), 1.0);
    }

    #[test]
    fn under_overload_more_measured_capacity_is_switched_to_and_extrapolated_is_not() {
        // One lane: 8 items per 100 ms (80/s); two lanes: 8 items per 190 ms each (84/s),
        // 2 items per 77.5 ms (52/s).
        let one = |b: usize| 100.0 * b as f64 / 8.0;
        let two = |b: usize| 40.0 + 18.75 * b as f64;
        let opts = |measured| {
            [
                Choice {
                    lanes: 1,
                    batch_ms: &one,
                    measured: 8,
                },
                Choice {
                    lanes: 2,
                    batch_ms: &two,
                    measured,
                },
            ]
        };
        // At 100 items/s nothing keeps up: 5 % more capacity wins despite a 15 % hysteresis…
        let (pick, all) = choose(&opts(8), 100.0, 1.0, 8, 1, 0.15).unwrap();
        assert!(all.iter().all(|p| !p.latency_ms.is_finite()));
        assert_eq!(pick.lanes, 2);
        // … but not when it only shows past the batches the profile measured.
        let (pick, all) = choose(&opts(2), 100.0, 1.0, 8, 1, 0.15).unwrap();
        assert_eq!(pick.lanes, 1, "{all:?}");
    }

    #[test]
    fn the_measured_batch_stops_where_a_plan_needs_an_unmeasured_sub_batch() {
        use crate::profile::Point;
        // 1-thread instances measured up to 2 items, 2-thread ones up to 8.
        let curve = Curve::from_points(&[
            Point::new(1, 1, 10.0),
            Point::new(1, 2, 19.0),
            Point::new(2, 1, 6.0),
            Point::new(2, 8, 40.0),
        ])
        .unwrap();
        let one_core = crate::PlanTable::from_curve(&curve, &Topology::flat(1), 8).unwrap();
        assert_eq!(measured_batch(&one_core, &curve), 2);
        let two_cores = crate::PlanTable::from_curve(&curve, &Topology::flat(2), 8).unwrap();
        assert!(measured_batch(&two_cores, &curve) >= 4, "{two_cores:?}");
    }

    #[test]
    fn hysteresis_keeps_the_current_choice_unless_clearly_worse() {
        let a = |b: usize| 10.0 + b as f64;
        let b = |b: usize| 9.8 + b as f64;
        let opts = [
            Choice {
                lanes: 1,
                batch_ms: &a,
                measured: usize::MAX,
            },
            Choice {
                lanes: 2,
                batch_ms: &b,
                measured: usize::MAX,
            },
        ];
        assert_eq!(choose(&opts, 1.0, 1.0, 8, 1, 0.1).unwrap().0.lanes, 1);
        assert_eq!(choose(&opts, 1.0, 1.0, 8, 1, 0.0).unwrap().0.lanes, 2);
    }

    #[test]
    fn lanes_split_the_cores_evenly() {
        assert_eq!(lane_counts(16, 16), [1, 2, 4, 8, 16]);
        assert_eq!(lane_counts(6, 4), [1, 2, 3]);
        let t = Topology::flat(4);
        let l = t.lanes(2).unwrap();
        assert_eq!(
            l.iter().map(|t| t.ordered()).collect::<Vec<_>>(),
            [vec![0, 1], vec![2, 3]]
        );
        assert!(t.lanes(3).is_none());
    }
}
