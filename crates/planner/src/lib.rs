//! The planner: from a latency profile to the ⟨instances, threads, sub-batch⟩ plan for every
//! batch size, with concrete cores. Pure computation plus the profile file: it builds and tests
//! without libtorch.
//!
//! - [`profile`]: the profile format, the latency model between measured points, and which
//!   points a targeted profiler should measure;
//! - [`dp`]: the knapsack dynamic program (and the reference semantics, for comparison);
//! - [`menu`]: the table restricted to a bounded menu of layouts the agent keeps warm;
//! - [`live`]: the live profile, kept true from serving and idle-gap measurements;
//! - [`serving`]: how many independent batches to run at once (lanes) at a given load;
//! - [`partition`]: the cores each of several models gets, from their loads (the knapsack one
//!   level up);
//! - [`topology`]: usable cores, NUMA nodes, SMT siblings, and core assignment;
//! - [`cpu`]: the CPU's model and the instruction sets that matter for inference (bf16, AMX);
//! - [`stats`]: the median and percentile estimators the profiler and the agent share;
//! - this file: [`Plan`] and [`PlanTable`], what the agent runs.

pub mod cpu;
pub mod dp;
pub mod live;
pub mod menu;
pub mod partition;
pub mod profile;
pub mod serving;
pub mod stats;
pub mod topology;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use profile::Curve;
use topology::Topology;

/// One instance of a plan: its thread count, its share of the batch, its cores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedInstance {
    pub threads: usize,
    pub batch: usize,
    pub cores: Vec<usize>,
}

/// How one batch size is run. Serialises to the shape `packrat plan --json` promises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub batch: usize,
    pub cores: usize,
    pub predicted_latency_ms: Option<f64>,
    pub baseline_latency_ms: Option<f64>,
    pub instances: Vec<PlannedInstance>,
}

impl Plan {
    /// Each instance's share of the batch, in order.
    pub fn shares(&self) -> Vec<usize> {
        self.instances.iter().map(|i| i.batch).collect()
    }

    /// `1t×4b@0 + 1t×4b@1`-style one-line summary.
    pub fn summary(&self) -> String {
        self.instances
            .iter()
            .map(|i| format!("{}t×{}b@{}", i.threads, i.batch, cores_str(&i.cores)))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Compact CPU list (`0-3,8`).
pub fn cores_str(cores: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let mut j = i;
        while j + 1 < cores.len() && cores[j + 1] == cores[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cores[i].to_string()
        } else {
            format!("{}-{}", cores[i], cores[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Where a model's plans come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanSource {
    /// One instance with every core: what packrat does without a profile.
    Baseline,
    /// The `plan` given in the config.
    Config,
    /// Solved from a latency profile by the DP.
    Profile,
}

/// One instance of a fixed plan: threads, its weight in the batch split, optional cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedInstance {
    pub threads: usize,
    pub weight: usize,
    pub cores: Option<Vec<usize>>,
}

/// The plan for every batch size 1..=max_batch of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanTable {
    pub source: PlanSource,
    pub plans: Vec<Plan>,
}

impl PlanTable {
    /// The plan for `batch` items (batches above max_batch are run in chunks by the caller).
    pub fn for_batch(&self, batch: usize) -> &Plan {
        let i = batch.clamp(1, self.plans.len()) - 1;
        &self.plans[i]
    }

    pub fn max_batch(&self) -> usize {
        self.plans.len()
    }

    pub fn baseline(topo: &Topology, max_batch: usize) -> PlanTable {
        let cores = topo.ordered();
        let plans = (1..=max_batch)
            .map(|b| Plan {
                batch: b,
                cores: cores.len(),
                predicted_latency_ms: None,
                baseline_latency_ms: None,
                instances: vec![PlannedInstance {
                    threads: cores.len(),
                    batch: b,
                    cores: cores.clone(),
                }],
            })
            .collect();
        PlanTable {
            source: PlanSource::Baseline,
            plans,
        }
    }

    /// A fixed layout from the config; its weights are scaled to each batch size.
    pub fn fixed(topo: &Topology, parts: &[FixedInstance], max_batch: usize) -> Result<PlanTable> {
        let threads: Vec<usize> = parts.iter().map(|p| p.threads).collect();
        let auto = topo.assign(&threads)?;
        let cores: Vec<Vec<usize>> = parts
            .iter()
            .zip(auto)
            .map(|(p, a)| p.cores.clone().unwrap_or(a))
            .collect();
        let weights: Vec<usize> = parts.iter().map(|p| p.weight).collect();
        let plans = (1..=max_batch)
            .map(|b| Plan {
                batch: b,
                cores: topo.len(),
                predicted_latency_ms: None,
                baseline_latency_ms: None,
                instances: scale_shares(&weights, b)
                    .into_iter()
                    .zip(&threads)
                    .zip(&cores)
                    .map(|((share, &t), c)| PlannedInstance {
                        threads: t,
                        batch: share,
                        cores: c.clone(),
                    })
                    .collect(),
            })
            .collect();
        Ok(PlanTable {
            source: PlanSource::Config,
            plans,
        })
    }

    /// Solves the DP for every batch size and gives instances concrete cores.
    pub fn from_curve(curve: &Curve, topo: &Topology, max_batch: usize) -> Result<PlanTable> {
        let n = topo.len();
        if n == 0 {
            bail!("no usable cores");
        }
        let sol = dp::solve(curve, n, max_batch);
        let mut plans = Vec::with_capacity(max_batch);
        for b in 1..=max_batch {
            plans.push(plan_from(&sol, curve, topo, b)?);
        }
        Ok(PlanTable {
            source: PlanSource::Profile,
            plans,
        })
    }
}

/// One batch size's plan from a solved table.
pub fn plan_from(sol: &dp::Solution, curve: &Curve, topo: &Topology, batch: usize) -> Result<Plan> {
    let n = topo.len();
    let Some((parts, lat)) = sol.plan(batch) else {
        bail!(
            "no plan for batch {batch} on {n} cores: the profile has no thread count <= {n} (it has {:?})",
            curve.threads
        );
    };
    let threads: Vec<usize> = parts.iter().map(|p| p.threads).collect();
    let cores = topo.assign(&threads)?;
    Ok(Plan {
        batch,
        cores: n,
        predicted_latency_ms: Some(lat),
        baseline_latency_ms: dp::baseline(curve, n, batch),
        instances: parts
            .iter()
            .zip(cores)
            .map(|(p, c)| PlannedInstance {
                threads: p.threads,
                batch: p.batch,
                cores: c,
            })
            .collect(),
    })
}

/// Splits `batch` items over instances in proportion to `weights` (largest remainder, ties to
/// the earlier instance), so a fixed plan made for one batch size serves any other.
pub fn scale_shares(weights: &[usize], batch: usize) -> Vec<usize> {
    let total: usize = weights.iter().sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<usize> = weights.iter().map(|w| w * batch / total).collect();
    let mut rest = batch - shares.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse((weights[i] * batch) % total), i));
    for &i in order.iter().cycle() {
        if rest == 0 {
            break;
        }
        shares[i] += 1;
        rest -= 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_scale_and_sum_to_the_batch() {
        assert_eq!(scale_shares(&[4, 4], 8), vec![4, 4]);
        assert_eq!(scale_shares(&[4, 4], 3), vec![2, 1]);
        assert_eq!(scale_shares(&[3, 1], 8), vec![6, 2]);
        assert_eq!(scale_shares(&[1, 1, 1], 1), vec![1, 0, 0]);
        for b in 0..50 {
            assert_eq!(scale_shares(&[5, 2, 9], b).iter().sum::<usize>(), b);
        }
    }

    #[test]
    fn a_fixed_plan_scales_its_weights_to_every_batch() {
        let parts = [
            FixedInstance {
                threads: 1,
                weight: 3,
                cores: None,
            },
            FixedInstance {
                threads: 1,
                weight: 1,
                cores: Some(vec![7]),
            },
        ];
        let table = PlanTable::fixed(&Topology::flat(2), &parts, 8).unwrap();
        assert_eq!(table.source, PlanSource::Config);
        assert_eq!(table.for_batch(8).shares(), vec![6, 2]);
        assert_eq!(table.for_batch(8).instances[1].cores, vec![7]);
        assert_eq!(table.for_batch(100).batch, 8);
        assert!(PlanTable::fixed(&Topology::flat(1), &parts, 8).is_err());
    }

    #[test]
    fn core_lists_are_compacted() {
        assert_eq!(cores_str(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cores_str(&[]), "");
    }
}
