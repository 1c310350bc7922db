//! Cores for several models at once: the Packrat knapsack one level up.
//!
//! Each model (a [`Member`]) says what it would predict on `n` cores for `n = 0..=N`, at its
//! current load — the best of one batch split over the `n` cores and several lanes on them
//! ([`best_on`], the queueing model of [`crate::serving`]). [`solve`] gives each model a core
//! count so that the weighted sum of predicted job latencies over every job arriving is
//! least: a dynamic program over models × cores, exact for this objective. A model with no
//! work gets no cores (the others use them: the split is work-conserving); a model with work
//! gets at least its `min_cores`. A model that cannot keep up on any count it could get costs
//! more the less capacity it gets, above any model that keeps up, so under overload cores go
//! where they add the most capacity, the others keeping their minimum. [`place`] turns the
//! counts into contiguous runs of cores, model after model in config order; [`place_near`]
//! does so moving as few cores as it can from the split before.
//!
//! Disjoint cores are not always best: when a busy model's minimum leaves another too few
//! cores to keep up (two models on two cores, one at 70 % of what both serve), every model
//! on every core, time-sharing them, serves both. [`overlap_cost`] predicts that by
//! processor sharing — each model's batches run slower by `1 / (1 - ρ)`, ρ the share of the
//! cores the others keep busy. [`choose`] takes sharing where it predicts clearly less than
//! the best split (or the split cannot serve a busy model): on 2 real cores, two models at 40
//! and 10 % of what the cores serve had a third of the p99 sharing both cores that they had
//! on one core each.

use crate::serving::{predict, Choice, Prediction};
use crate::PlanTable;

/// Cost per job of a model that cannot keep up, per unit of load over capacity (ms): above
/// any latency a model that keeps up is predicted.
const OVERLOAD_MS: f64 = 1e7;

/// The slowdowns at which a member reports its prediction on every core shared with others
/// ([`Member::shared`]); [`overlap_cost`] takes the first at or above the one it predicts.
/// The cap — as many busy models as there are — is on the grid for up to 5 models: rounding
/// 4 up to 5 predicted four busy models a quarter slower than sharing gives them.
pub const SHARED_SLOWDOWNS: [f64; 10] = [1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0];

/// One model, as the split sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub weight: f64,
    pub min_cores: usize,
    /// It has work (jobs arrived lately, or wait): without, it gets no cores.
    pub busy: bool,
    /// Jobs per second it is offered (the backlog counted as if it came within a second).
    pub jobs_per_s: f64,
    /// Items per second it is offered.
    pub load: f64,
    /// What it predicts on `n` cores, for n = 0..=cores (index 0: none; None: it cannot run
    /// on that many).
    pub on: Vec<Option<Prediction>>,
    /// What it predicts on every core with its batches [`SHARED_SLOWDOWNS`] times slower
    /// (one entry per slowdown; empty: it cannot share).
    pub shared: Vec<Option<Prediction>>,
    /// The most items per second it serves on every core, on any lane count ([`most_on`]).
    pub most: f64,
}

impl Member {
    /// Its weighted share of the objective on `n` cores (infinite: not allowed).
    pub fn cost(&self, n: usize) -> f64 {
        if !self.busy {
            return 0.0;
        }
        if n < self.min_cores.max(1) {
            return f64::INFINITY;
        }
        match self.on.get(n) {
            Some(Some(p)) => self.cost_at(p),
            _ => f64::INFINITY,
        }
    }

    /// Its weighted share of the objective with prediction `p`.
    fn cost_at(&self, p: &Prediction) -> f64 {
        let w = self.weight.max(0.0) * self.jobs_per_s.max(1e-3);
        if p.latency_ms.is_finite() {
            w * p.latency_ms
        } else if p.capacity > 0.0 {
            w * OVERLOAD_MS * (self.load / p.capacity).max(1.0)
        } else {
            f64::INFINITY
        }
    }

    /// The predicted mean job latency on `n` cores, in ms (None: no work, or cannot keep up).
    pub fn latency_ms(&self, n: usize) -> Option<f64> {
        let p = self.on.get(n)?.as_ref()?;
        (self.busy && p.latency_ms.is_finite()).then_some(p.latency_ms)
    }
}

/// What each member predicts on every core at once, time-sharing them (an idle member:
/// None). Each busy member's batches are predicted `1 / (1 - ρ)` slower, ρ the fraction of
/// the cores the other busy members' loads take at the most they serve on every core — but
/// no more than the number of busy members: sharing gives each at least an equal part.
/// None when a busy member cannot share.
pub fn overlap(members: &[Member], cores: usize) -> Option<Vec<Option<Prediction>>> {
    // The most, not what the layout fastest for it alone serves: a loaded model sharing the
    // cores runs the lanes that serve its load. In a replayed run BERT's one batch over 16
    // cores served a seventh to a third of what 16 one-core lanes do, which predicted sharing
    // several times too slow.
    let util = |m: &Member| -> Option<f64> {
        if !m.busy {
            return Some(0.0);
        }
        let p = m.on.get(cores)?.as_ref()?;
        let most = m.most.max(p.capacity);
        (most > 0.0).then(|| m.load.max(0.0) / most)
    };
    let rho: Vec<f64> = members.iter().map(util).collect::<Option<_>>()?;
    let total: f64 = rho.iter().sum();
    // However loaded the others, sharing gives each busy model at least an equal part.
    let busy = members.iter().filter(|m| m.busy).count() as f64;
    members
        .iter()
        .zip(&rho)
        .map(|(m, r)| {
            if !m.busy {
                return Some(None);
            }
            let others = total - r;
            let slow = if others < 1.0 {
                (1.0 / (1.0 - others)).min(busy)
            } else {
                busy
            };
            let at = SHARED_SLOWDOWNS.iter().position(|&s| s >= slow - 1e-9)?;
            Some(Some((*m.shared.get(at)?)?))
        })
        .collect()
}

/// The total cost of [`overlap`] (None: the members cannot share every core).
pub fn overlap_cost(members: &[Member], cores: usize) -> Option<f64> {
    let on = overlap(members, cores)?;
    Some(
        members
            .iter()
            .zip(&on)
            .filter_map(|(m, p)| Some(m.cost_at(p.as_ref()?)))
            .sum(),
    )
}

/// What [`choose`] runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Disjoint cores: so many per member.
    Split(Split),
    /// Every member on every core, time-sharing them, at this cost.
    Shared(f64),
}

/// Sharing every core is taken over the best split only when it predicts this much less
/// (or the split leaves a busy model unable to keep up): processor sharing has no cost of
/// co-location, which real cores and the replay's per-core sharing both have.
pub const SHARING_MARGIN: f64 = 0.3;

/// The layout for `members` on `cores`: the least-cost split, or sharing every core where
/// that predicts [`SHARING_MARGIN`] less, or less at all when the split leaves a busy member
/// unable to keep up. A busy member with `min_cores` above one reserves them: then only a
/// split. None: more busy members than cores, and they cannot share.
pub fn choose(members: &[Member], cores: usize) -> Option<Layout> {
    let split = solve(members, cores);
    let reserved = members.iter().any(|m| m.busy && m.min_cores > 1);
    let shared = (!reserved).then(|| overlap_cost(members, cores)).flatten();
    match (split, shared) {
        (Some(s), Some(o)) => {
            let keeps_up = members
                .iter()
                .zip(&s.cores)
                .all(|(m, &n)| !m.busy || m.latency_ms(n).is_some());
            let margin = if keeps_up { 1.0 - SHARING_MARGIN } else { 1.0 };
            Some(if o < s.cost * margin {
                Layout::Shared(o)
            } else {
                Layout::Split(s)
            })
        }
        (Some(s), None) => Some(Layout::Split(s)),
        (None, Some(o)) => Some(Layout::Shared(o)),
        (None, None) => None,
    }
}

/// A split: cores per member (in the members' order) and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub cores: Vec<usize>,
    pub cost: f64,
}

/// The total cost of giving `counts` cores to `members`.
pub fn cost_of(members: &[Member], counts: &[usize]) -> f64 {
    members.iter().zip(counts).map(|(m, &n)| m.cost(n)).sum()
}

/// The split of `cores` cores among `members` with the least cost; None when the busy
/// members cannot each get their minimum (not even one core each).
pub fn solve(members: &[Member], cores: usize) -> Option<Split> {
    let need: usize = members
        .iter()
        .filter(|m| m.busy)
        .map(|m| m.min_cores.max(1))
        .sum();
    if need > cores {
        // The minimums do not fit: one core each, if that does.
        let relaxed: Vec<Member> = members
            .iter()
            .map(|m| Member {
                min_cores: 1,
                ..m.clone()
            })
            .collect();
        let busy = members.iter().filter(|m| m.busy).count();
        return (busy <= cores && need > busy)
            .then(|| solve(&relaxed, cores))
            .flatten();
    }
    // best[c]: (least cost, counts) for the members so far on exactly c cores.
    let mut best: Vec<Option<(f64, Vec<usize>)>> = vec![None; cores + 1];
    best[0] = Some((0.0, Vec::new()));
    for m in members {
        let mut next: Vec<Option<(f64, Vec<usize>)>> = vec![None; cores + 1];
        for (used, prev) in best.iter().enumerate() {
            let Some((c0, counts)) = prev else { continue };
            // An idle member takes none: its cores are the busy ones'.
            let max_n = if m.busy { cores - used } else { 0 };
            for n in 0..=max_n {
                let c = c0 + m.cost(n);
                if !c.is_finite() {
                    continue;
                }
                let slot = &mut next[used + n];
                if slot.as_ref().is_none_or(|(s, _)| c < *s - 1e-9 * s.abs()) {
                    let mut v = counts.clone();
                    v.push(n);
                    *slot = Some((c, v));
                }
            }
        }
        best = next;
    }
    // The least cost; among equal ones the most cores used (idle cores help no one).
    best.into_iter()
        .flatten()
        .rev()
        .reduce(|a, b| if b.0 < a.0 - 1e-9 * a.0.abs() { b } else { a })
        .map(|(cost, cores)| Split { cores, cost })
}

/// A static split for comparison: `cores` in equal parts, one per member (the first ones get
/// the remainder), whatever the load.
pub fn equal(members: usize, cores: usize) -> Vec<usize> {
    if members == 0 {
        return Vec::new();
    }
    (0..members)
        .map(|i| cores / members + usize::from(i < cores % members))
        .collect()
}

/// The cores each member gets: contiguous runs of `ordered` (physical cores first), in the
/// members' order.
pub fn place(counts: &[usize], ordered: &[usize]) -> Vec<Vec<usize>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&n| {
            let end = (at + n).min(ordered.len());
            let run = ordered[at..end].to_vec();
            at = end;
            run
        })
        .collect()
}

/// [`place`], moving as few cores as it can from `was` (each member's cores before, in the
/// members' order): a member keeps up to its new count of its old cores, and the ones it
/// gains are the first free ones of `ordered`. A member whose count is unchanged keeps its
/// cores, so its warm instance sets stay usable; with nothing before, it is [`place`].
pub fn place_near(counts: &[usize], ordered: &[usize], was: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut taken = std::collections::BTreeSet::new();
    let mut out: Vec<Vec<usize>> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let old = was.get(i).map_or(&[][..], Vec::as_slice);
            let keep: Vec<usize> = old
                .iter()
                .copied()
                .filter(|c| ordered.contains(c) && !taken.contains(c))
                .take(n)
                .collect();
            taken.extend(keep.iter().copied());
            keep
        })
        .collect();
    let mut free = ordered.iter().copied().filter(|c| !taken.contains(c));
    for (run, &n) in out.iter_mut().zip(counts) {
        while run.len() < n {
            match free.next() {
                Some(c) => run.push(c),
                None => break,
            }
        }
        run.sort_by_key(|c| ordered.iter().position(|o| o == c));
    }
    out
}

/// The predictions on `n` cores at `load`: one batch over all of them, then `k` lanes of
/// `n/k` cores for each k dividing n. `table(c)` is the plan table on `c` cores with its
/// measured batch (see [`crate::serving::Choice`]), every predicted batch latency scaled by
/// `scale`.
fn on_cores<'a>(
    n: usize,
    table: &dyn Fn(usize) -> Option<(&'a PlanTable, usize)>,
    scale: f64,
    load: f64,
    per_job: f64,
) -> Vec<Prediction> {
    (1..=n)
        .filter(|k| n.is_multiple_of(*k))
        .filter_map(|k| {
            let (t, measured) = table(n / k)?;
            let f = |b: usize| {
                t.for_batch(b)
                    .predicted_latency_ms
                    .map_or(f64::INFINITY, |ms| ms * scale)
            };
            let c = Choice {
                lanes: k,
                batch_ms: &f,
                measured,
            };
            Some(predict(&c, load, per_job, t.max_batch()))
        })
        .collect()
}

/// The best prediction on `n` cores ([`on_cores`]): whichever predicts the least latency
/// (else the most capacity).
pub fn best_on<'a>(
    n: usize,
    table: &dyn Fn(usize) -> Option<(&'a PlanTable, usize)>,
    scale: f64,
    load: f64,
    per_job: f64,
) -> Option<Prediction> {
    on_cores(n, table, scale, load, per_job)
        .into_iter()
        .reduce(|a, b| {
            let better = match (a.latency_ms.is_finite(), b.latency_ms.is_finite()) {
                (true, true) => b.latency_ms < a.latency_ms,
                (false, false) => b.capacity > a.capacity,
                (af, _) => !af,
            };
            if better {
                b
            } else {
                a
            }
        })
}

/// The most items per second on `n` cores, over one batch and every lane count (0: none
/// can run).
pub fn most_on<'a>(
    n: usize,
    table: &dyn Fn(usize) -> Option<(&'a PlanTable, usize)>,
    scale: f64,
    per_job: f64,
) -> f64 {
    on_cores(n, table, scale, 0.0, per_job)
        .into_iter()
        .map(|p| p.capacity)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model on n cores serving `per_core` items/s per core, `base` ms per batch at best.
    fn member(busy: bool, jobs: f64, cores: usize, base: f64, per_core: f64) -> Member {
        Member {
            weight: 1.0,
            min_cores: 1,
            busy,
            jobs_per_s: jobs,
            load: jobs,
            on: (0..=cores)
                .map(|n| {
                    (n > 0).then(|| {
                        let capacity = per_core * n as f64;
                        let rho = jobs / capacity;
                        Prediction {
                            lanes: 1,
                            batch: Some(1),
                            latency_ms: if rho < 1.0 {
                                base / n as f64 + 100.0 * rho / (1.0 - rho)
                            } else {
                                f64::INFINITY
                            },
                            capacity,
                        }
                    })
                })
                .collect(),
            shared: SHARED_SLOWDOWNS
                .iter()
                .map(|&slow| {
                    let capacity = per_core * cores as f64 / slow;
                    let rho = jobs / capacity;
                    Some(Prediction {
                        lanes: 1,
                        batch: Some(1),
                        latency_ms: if rho < 1.0 {
                            slow * base / cores as f64 + 100.0 * rho / (1.0 - rho)
                        } else {
                            f64::INFINITY
                        },
                        capacity,
                    })
                })
                .collect(),
            most: per_core * cores as f64,
        }
    }

    #[test]
    fn sharing_every_core_is_chosen_where_it_predicts_clearly_less_or_a_split_cannot_serve() {
        // Two cores of 10 items/s each; one model at 14/s needs more than one core.
        let hot = member(true, 14.0, 2, 20.0, 10.0);
        let light = member(true, 3.0, 2, 20.0, 10.0);
        let split = solve(&[hot.clone(), light.clone()], 2).unwrap();
        assert_eq!(split.cores, [1, 1]);
        let shared = overlap_cost(&[hot.clone(), light.clone()], 2).unwrap();
        assert!(shared < split.cost / 100.0, "{shared} vs {split:?}");
        assert_eq!(
            choose(&[hot, light.clone()], 2),
            Some(Layout::Shared(shared))
        );
        // Both light: each batch on both cores, slowed a little by the other's load, predicts
        // far less than one core each.
        let a = member(true, 1.0, 2, 20.0, 10.0);
        let pair = [a.clone(), a.clone()];
        let (s, o) = (solve(&pair, 2).unwrap(), overlap_cost(&pair, 2).unwrap());
        assert!(o < s.cost * (1.0 - SHARING_MARGIN), "{o:?} {s:?}");
        assert_eq!(choose(&pair, 2), Some(Layout::Shared(o)));
        // A batch uses 4 cores at best (no gain from more): sharing only slows it, and the
        // split stays.
        let flat = |jobs: f64| Member {
            on: (0..=16)
                .map(|n| {
                    (n >= 4).then_some(Prediction {
                        lanes: n / 4,
                        batch: Some(1),
                        latency_ms: 10.0 + jobs * 0.1,
                        capacity: 100.0 * n as f64,
                    })
                })
                .collect(),
            shared: SHARED_SLOWDOWNS
                .iter()
                .map(|&slow| {
                    Some(Prediction {
                        lanes: 4,
                        batch: Some(1),
                        latency_ms: (10.0 + jobs * 0.1) * slow,
                        capacity: 1600.0 / slow,
                    })
                })
                .collect(),
            ..member(true, jobs, 16, 10.0, 100.0)
        };
        let two = [flat(400.0), flat(400.0)];
        assert!(matches!(choose(&two, 16), Some(Layout::Split(_))));
        // A flood keeping every core busy: sharing still gives the light one half the cores
        // (it keeps up), and the flood more than one core: less overloaded than a split.
        let flood = member(true, 25.0, 2, 20.0, 10.0);
        let on = overlap(&[flood.clone(), light.clone()], 2).unwrap();
        assert!(on[1].as_ref().unwrap().latency_ms.is_finite(), "{on:?}");
        assert!(matches!(
            choose(&[flood, light], 2),
            Some(Layout::Shared(_))
        ));
        // Unless a busy one reserves cores of its own (min_cores 2 of 3).
        let flood = member(true, 40.0, 3, 20.0, 10.0);
        let kept = Member {
            min_cores: 2,
            ..member(true, 3.0, 3, 20.0, 10.0)
        };
        let c = choose(&[flood, kept], 3);
        assert_eq!(
            c.map(|l| matches!(l, Layout::Split(s) if s.cores == [1, 2])),
            Some(true)
        );
    }

    #[test]
    fn sharing_gives_each_of_several_flooded_models_an_equal_part() {
        // However many busy models flood the cores, each is predicted as many times slower as
        // there are busy ones: on the grid for 2 to 5.
        for n in 2..=5 {
            let m: Vec<Member> = (0..n)
                .map(|_| member(true, 150.0, 16, 40.0, 10.0))
                .collect();
            let on = overlap(&m, 16).unwrap();
            for p in &on {
                let p = p.as_ref().unwrap();
                assert_eq!(p.capacity, 160.0 / n as f64, "{n} models: {p:?}");
            }
        }
    }

    #[test]
    fn a_models_share_of_the_cores_is_its_load_over_the_most_it_serves_on_them() {
        // Fastest alone on 16 cores is one batch over all of them, 160 items/s; 16 one-core
        // lanes serve 640. At 96 items/s it takes 15 % of the cores, not 60 %: the other is
        // predicted 1/(1 - 0.15) slower, i.e. at the grid's 1.25, not 2.5.
        let wide = Member {
            most: 640.0,
            ..member(true, 96.0, 16, 40.0, 10.0)
        };
        let other = member(true, 20.0, 16, 40.0, 10.0);
        let on = overlap(&[wide, other.clone()], 16).unwrap();
        let at = SHARED_SLOWDOWNS.iter().position(|&s| s == 1.25).unwrap();
        assert_eq!(on[1], other.shared[at], "{on:?}");
    }

    #[test]
    fn an_idle_model_lends_every_core_to_the_busy_one() {
        let m = [
            member(true, 10.0, 8, 80.0, 10.0),
            member(false, 0.0, 8, 80.0, 10.0),
        ];
        assert_eq!(solve(&m, 8).unwrap().cores, [8, 0]);
    }

    #[test]
    fn cores_follow_the_load_and_every_busy_model_keeps_its_minimum() {
        let heavy = member(true, 50.0, 8, 80.0, 10.0);
        let light = member(true, 5.0, 8, 80.0, 10.0);
        let s = solve(&[heavy.clone(), light.clone()], 8).unwrap();
        assert!(s.cores[0] > s.cores[1] && s.cores[1] >= 1, "{s:?}");
        assert_eq!(s.cores.iter().sum::<usize>(), 8);
        // Swapped loads swap the split.
        let t = solve(&[light.clone(), heavy.clone()], 8).unwrap();
        assert_eq!(t.cores, [s.cores[1], s.cores[0]]);
        // A flood takes all but the other's min_cores, never below it.
        let flood = member(true, 1000.0, 8, 80.0, 10.0);
        let kept = Member {
            min_cores: 3,
            ..light.clone()
        };
        assert_eq!(solve(&[flood.clone(), kept], 8).unwrap().cores, [5, 3]);
        assert_eq!(solve(&[flood, light], 8).unwrap().cores, [7, 1]);
    }

    #[test]
    fn the_split_is_the_least_cost_of_all_splits() {
        let m = [
            member(true, 30.0, 6, 60.0, 10.0),
            member(true, 12.0, 6, 120.0, 8.0),
            member(true, 3.0, 6, 30.0, 20.0),
        ];
        let s = solve(&m, 6).unwrap();
        let mut least = f64::INFINITY;
        for a in 0..=6 {
            for b in 0..=6 - a {
                for c in 0..=6 - a - b {
                    least = least.min(cost_of(&m, &[a, b, c]));
                }
            }
        }
        assert!((s.cost - least).abs() < 1e-9 * least, "{s:?} vs {least}");
        assert!((cost_of(&m, &s.cores) - s.cost).abs() < 1e-9 * least);
    }

    #[test]
    fn minimums_that_do_not_fit_fall_back_to_one_core_and_too_many_models_to_none() {
        let mut a = member(true, 5.0, 2, 10.0, 10.0);
        a.min_cores = 2;
        let b = Member {
            min_cores: 2,
            ..a.clone()
        };
        assert_eq!(solve(&[a.clone(), b.clone()], 2).unwrap().cores, [1, 1]);
        assert!(solve(&[a.clone(), b, a], 2).is_none());
    }

    #[test]
    fn runs_are_contiguous_in_order_and_equal_splits_share_the_remainder() {
        assert_eq!(
            place(&[2, 0, 3], &[4, 5, 6, 7, 8]),
            [vec![4, 5], vec![], vec![6, 7, 8]]
        );
        assert_eq!(equal(3, 16), [6, 5, 5]);
        // Near the split before: unchanged counts keep their cores, gains come from the freed.
        let ordered: Vec<usize> = (0..8).collect();
        let was = place(&[4, 2, 2], &ordered);
        assert_eq!(place_near(&[4, 2, 2], &ordered, &was), was);
        let moved = place_near(&[2, 4, 2], &ordered, &was);
        assert_eq!(moved, [vec![0, 1], vec![2, 3, 4, 5], vec![6, 7]]);
        let moved = place_near(&[3, 1, 4], &ordered, &was);
        assert_eq!(moved[1], [4]);
        assert_eq!(moved[2].len(), 4);
        assert!(moved[2].contains(&6) && moved[2].contains(&7), "{moved:?}");
        assert_eq!(place_near(&[5, 3], &ordered, &[]), place(&[5, 3], &ordered));
        assert!(equal(0, 4).is_empty());
    }

    #[test]
    fn on_n_cores_the_best_of_one_batch_and_lanes_is_taken() {
        use crate::profile::{Curve, Point};
        use crate::topology::Topology;
        // 1 thread: 10 ms + 10/item; 2 threads: 8 ms + 6/item (less than twice as fast).
        let pts: Vec<Point> = [1usize, 2, 4, 8]
            .iter()
            .flat_map(|&b| {
                [
                    Point::new(1, b, 10.0 + 10.0 * b as f64),
                    Point::new(2, b, 8.0 + 6.0 * b as f64),
                ]
            })
            .collect();
        let curve = Curve::from_points(&pts).unwrap();
        let t1 = PlanTable::from_curve(&curve, &Topology::flat(1), 8).unwrap();
        let t2 = PlanTable::from_curve(&curve, &Topology::flat(2), 8).unwrap();
        let table = |c: usize| match c {
            1 => Some((&t1, 8)),
            2 => Some((&t2, 8)),
            _ => None,
        };
        // At low load one job over both cores; near their capacity two lanes.
        let low = best_on(2, &table, 1.0, 1.0, 1.0).unwrap();
        assert_eq!(low.lanes, 1, "{low:?}");
        let high = best_on(2, &table, 1.0, 140.0, 1.0).unwrap();
        assert_eq!(high.lanes, 2, "{high:?}");
        // 3 cores: only three 1-core lanes are planned; without 1-core plans, nothing.
        assert_eq!(best_on(3, &table, 1.0, 1.0, 1.0).unwrap().lanes, 3);
        let two_only = |c: usize| (c == 2).then_some((&t2, 8));
        assert!(best_on(3, &two_only, 1.0, 1.0, 1.0).is_none());
    }
}
