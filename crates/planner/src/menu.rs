//! A bounded menu of instance layouts. The DP's plan table may use a different layout (set of
//! thread counts) for almost every batch size — 34 of them for ResNet-50 on 16 cores — but the
//! agent can keep only so many warm: a layout started while serving is a cold start (thread
//! creation, session set-up) on some job's latency. So the planner picks at most `max_layouts`
//! layouts that serve the expected batch-size mix best, splits every batch size over the best
//! of them, and reports what that costs against the unbounded table.
//!
//! Within one layout the best split of b items is greedy: give each next item to the instance
//! whose latency grows least. For non-decreasing per-instance latencies that minimises the
//! slowest instance for every b at once (an exchange argument), so one pass over b builds the
//! cost of a layout for every batch size. Layouts are then added greedily, each time the one
//! that lowers the weighted total latency most.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::profile::Curve;
use crate::topology::Topology;
use crate::{dp, Plan, PlanTable, PlannedInstance};

/// What restricting a table to a menu cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MenuReport {
    /// Distinct layouts of the unbounded DP table.
    pub unbounded_layouts: usize,
    /// Layouts the served table uses.
    pub layouts: usize,
    /// Instance threads (sessions) kept alive for those layouts.
    pub instances: usize,
    /// Weighted predicted latency of the menu's table over the unbounded one, minus 1, in %.
    pub predicted_loss_pct: f64,
}

/// The predicted latency of `plan` on `curve` (the slowest instance with work), if the curve
/// covers its thread counts.
pub fn evaluate(plan: &Plan, curve: &Curve) -> Option<f64> {
    plan.instances
        .iter()
        .filter(|i| i.batch > 0)
        .map(|i| {
            let ti = curve.threads.binary_search(&i.threads).ok()?;
            Some(curve.latency(ti, i.batch))
        })
        .try_fold(0.0f64, |acc, l| Some(acc.max(l?)))
}

/// A layout's best split of every batch size 1..=max_batch: (latency, shares) per b.
fn splits(curve: &Curve, threads: &[usize], max_batch: usize) -> Option<Vec<(f64, Vec<usize>)>> {
    let tis: Vec<usize> = threads
        .iter()
        .map(|t| curve.threads.binary_search(t).ok())
        .collect::<Option<_>>()?;
    let mut shares = vec![0usize; threads.len()];
    let mut out = Vec::with_capacity(max_batch);
    for _ in 1..=max_batch {
        let (k, _) = tis
            .iter()
            .enumerate()
            .map(|(k, &ti)| (k, curve.latency(ti, shares[k] + 1)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        shares[k] += 1;
        let lat = tis
            .iter()
            .zip(&shares)
            .filter(|(_, &s)| s > 0)
            .map(|(&ti, &s)| curve.latency(ti, s))
            .fold(0.0, f64::max);
        out.push((lat, shares.clone()));
    }
    Some(out)
}

/// The thread counts of a plan, largest first: what names its layout.
fn threads_of(plan: &Plan) -> Vec<usize> {
    let mut t: Vec<usize> = plan.instances.iter().map(|i| i.threads).collect();
    t.sort_by(|a, b| b.cmp(a));
    t
}

/// The DP's table restricted to at most `max_layouts` layouts, chosen for `weights` (the
/// expected share of each batch size 1..=max_batch; any positive numbers).
pub fn bounded(
    curve: &Curve,
    topo: &Topology,
    max_batch: usize,
    weights: &[f64],
    max_layouts: usize,
) -> Result<(PlanTable, MenuReport)> {
    let full = PlanTable::from_curve(curve, topo, max_batch)?;
    let mut candidates: Vec<Vec<usize>> = Vec::new();
    for p in &full.plans {
        let t = threads_of(p);
        if !candidates.contains(&t) {
            candidates.push(t);
        }
    }
    let dp_lat: Vec<f64> = full
        .plans
        .iter()
        .map(|p| p.predicted_latency_ms.unwrap_or(f64::INFINITY))
        .collect();
    let w = |b: usize| weights.get(b).copied().unwrap_or(1.0).max(0.0);
    let unbounded = candidates.len();
    if unbounded <= max_layouts.max(1) {
        let instances = candidates.iter().map(Vec::len).sum();
        let report = MenuReport {
            unbounded_layouts: unbounded,
            layouts: unbounded,
            instances,
            predicted_loss_pct: 0.0,
        };
        return Ok((full, report));
    }
    let costs: Vec<Vec<(f64, Vec<usize>)>> = candidates
        .iter()
        .map(|t| splits(curve, t, max_batch))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("a layout uses a thread count the profile lacks"))?;
    // Greedy: add the layout that lowers the weighted total most.
    let mut best = vec![f64::INFINITY; max_batch];
    let mut menu: Vec<usize> = Vec::new();
    while menu.len() < max_layouts.max(1) {
        let total = |l: usize| -> f64 {
            (0..max_batch)
                .map(|b| w(b) * best[b].min(costs[l][b].0))
                .sum()
        };
        let Some(pick) = (0..candidates.len())
            .filter(|l| !menu.contains(l))
            .min_by(|&a, &b| total(a).total_cmp(&total(b)))
        else {
            break;
        };
        menu.push(pick);
        for (b, x) in best.iter_mut().enumerate() {
            *x = x.min(costs[pick][b].0);
        }
    }
    let mut plans = Vec::with_capacity(max_batch);
    let mut used: Vec<usize> = Vec::new();
    for b in 1..=max_batch {
        let Some(&l) = menu
            .iter()
            .min_by(|&&x, &&y| costs[x][b - 1].0.total_cmp(&costs[y][b - 1].0))
        else {
            bail!("an empty layout menu");
        };
        if !used.contains(&l) {
            used.push(l);
        }
        let (lat, shares) = &costs[l][b - 1];
        let threads = &candidates[l];
        let cores = topo.assign(threads)?;
        plans.push(Plan {
            batch: b,
            cores: topo.len(),
            predicted_latency_ms: Some(*lat),
            baseline_latency_ms: dp::baseline(curve, topo.len(), b),
            instances: threads
                .iter()
                .zip(shares)
                .zip(cores)
                .map(|((&t, &s), c)| PlannedInstance {
                    threads: t,
                    batch: s,
                    cores: c,
                })
                .collect(),
        });
    }
    let served: f64 = (0..max_batch).map(|b| w(b) * best[b]).sum();
    let ideal: f64 = (0..max_batch).map(|b| w(b) * dp_lat[b]).sum();
    let report = MenuReport {
        unbounded_layouts: unbounded,
        layouts: used.len(),
        instances: used.iter().map(|&l| candidates[l].len()).sum(),
        predicted_loss_pct: if ideal > 0.0 {
            (served / ideal - 1.0) * 100.0
        } else {
            0.0
        },
    };
    Ok((
        PlanTable {
            source: full.source,
            plans,
        },
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Point;

    fn curve(points: &[(usize, usize, f64)]) -> Curve {
        let pts: Vec<Point> = points
            .iter()
            .map(|&(t, b, ms)| Point::new(t, b, ms))
            .collect();
        Curve::from_points(&pts).unwrap()
    }

    #[test]
    fn greedy_splits_equal_brute_force() {
        let c = curve(&[
            (1, 1, 10.0),
            (1, 2, 18.0),
            (1, 8, 70.0),
            (2, 1, 6.0),
            (2, 4, 20.0),
            (2, 8, 38.0),
        ]);
        let layout = [2, 1, 1];
        let s = splits(&c, &layout, 12).unwrap();
        for b in 1..=12usize {
            let mut brute = f64::INFINITY;
            for x in 0..=b {
                for y in 0..=b - x {
                    let z = b - x - y;
                    let l = [(1usize, x), (0, y), (0, z)]
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|&(ti, n)| c.latency(ti, n))
                        .fold(0.0, f64::max);
                    brute = brute.min(l);
                }
            }
            assert!((s[b - 1].0 - brute).abs() < 1e-9, "b={b}");
            assert_eq!(s[b - 1].1.iter().sum::<usize>(), b);
        }
    }

    #[test]
    fn a_menu_as_large_as_the_table_changes_nothing() {
        let c = curve(&[(1, 1, 10.0), (1, 4, 30.0), (2, 1, 6.0), (2, 4, 20.0)]);
        let topo = Topology::flat(2);
        let (t, r) = bounded(&c, &topo, 8, &[1.0; 8], 8).unwrap();
        let full = PlanTable::from_curve(&c, &topo, 8).unwrap();
        assert_eq!(t.plans, full.plans);
        assert_eq!(r.predicted_loss_pct, 0.0);
    }
}
