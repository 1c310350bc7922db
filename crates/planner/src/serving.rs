//! Planning for a queue, not for one batch: how many independent batches to run at once.
//!
//! The cores are split into `k` equal *lanes*; each lane runs its own batches with its own
//! plan (the DP over its cores), taking the next batch as soon as it is free. `k = 1` is the
//! plain plan: every batch split over every core. Which `k` is best depends on the load:
//!
//! - a lane that receives `r` items/s and needs `L(b)` ms for a batch of `b` settles at the
//!   smallest `b` (at least one job's items) with `r · L(b) ≤ b`: what arrives while a batch
//!   runs makes the next one. No such `b` up to `max_batch` means the lane cannot keep up;
//! - a job then takes its batch's `L(b)`, plus a wait when it finds every lane busy: with
//!   utilisation `ρ = r · L(b) / b`, all `k` lanes are busy about `ρ^k` of the time, and the
//!   first of them frees after about `L(b) / (k + 1)`.
//!
//! So `W_k = L_k(b_k) · (1 + ρ^k / (k + 1))`. At low load one job on every core wins (the
//! smallest `L(1)`); near saturation several lanes win when independent batches on fewer cores
//! each serve more items per second than one split batch with its barrier. When no `k` keeps
//! up, the one with the most capacity wins. This is a model, not a measurement: the benchmark
//! (BENCHMARKS.md) checks it end to end.

use crate::topology::Topology;

/// One way to run: `lanes` lanes, each with batch latency `batch_ms(b)` for b = 1..=max.
pub struct Choice<'a> {
    pub lanes: usize,
    pub batch_ms: &'a dyn Fn(usize) -> f64,
}

/// What the model predicts for `lanes` lanes at a load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub lanes: usize,
    /// The batch size each lane settles at (None: it cannot keep up).
    pub batch: Option<usize>,
    /// Mean job latency in ms (infinite when it cannot keep up).
    pub latency_ms: f64,
    /// Items per second all lanes serve at max_batch.
    pub capacity: f64,
}

/// The prediction for one option at `rate` items/s, jobs of `per_job` items.
pub fn predict(o: &Choice<'_>, rate: f64, per_job: f64, max_batch: usize) -> Prediction {
    let k = o.lanes.max(1);
    let max = max_batch.max(1);
    let l_max = (o.batch_ms)(max).max(1e-6);
    let capacity = k as f64 * max as f64 / (l_max / 1e3);
    let r = rate.max(0.0) / k as f64;
    let first = (per_job.ceil() as usize).clamp(1, max);
    let settled = (first..=max).find(|&b| r * (o.batch_ms)(b) / 1e3 <= b as f64);
    let latency_ms = settled.map_or(f64::INFINITY, |b| {
        let l = (o.batch_ms)(b);
        let rho = (r * l / 1e3 / b as f64).clamp(0.0, 1.0);
        l * (1.0 + rho.powi(k as i32) / (k as f64 + 1.0))
    });
    Prediction {
        lanes: k,
        batch: settled,
        latency_ms,
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
        Some(c)
            if !best.latency_ms.is_finite() && best.capacity <= c.capacity * (1.0 + hysteresis) =>
        {
            c
        }
        _ => best,
    };
    Some((pick, all))
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
            },
            Choice {
                lanes: 2,
                batch_ms: &two,
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
    fn a_lane_settles_where_arrivals_during_a_batch_fill_the_next() {
        let o = Choice {
            lanes: 1,
            batch_ms: &one,
        };
        // 100 items/s: b=1 takes 14 ms (1.4 items arrive) ... b=2: 18 ms, 1.8 ≤ 2.
        assert_eq!(predict(&o, 100.0, 1.0, 16).batch, Some(2));
        // Jobs of 4 items: never below 4.
        assert_eq!(predict(&o, 1.0, 4.0, 16).batch, Some(4));
    }

    #[test]
    fn hysteresis_keeps_the_current_choice_unless_clearly_worse() {
        let a = |b: usize| 10.0 + b as f64;
        let b = |b: usize| 9.8 + b as f64;
        let opts = [
            Choice {
                lanes: 1,
                batch_ms: &a,
            },
            Choice {
                lanes: 2,
                batch_ms: &b,
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
