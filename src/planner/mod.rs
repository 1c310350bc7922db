//! The planner: from a latency profile to the ⟨instances, threads, sub-batch⟩ plan for every
//! batch size, with concrete cores.
//!
//! - [`profile`]: the profile format and the latency model between measured points;
//! - [`dp`]: the knapsack dynamic program (and the reference semantics, for comparison);
//! - [`topology`]: usable cores, NUMA nodes, SMT siblings, and core assignment;
//! - [`profiler`]: targeted, co-located profiling of a loaded model on this host.

pub mod dp;
pub mod profile;
pub mod profiler;
pub mod topology;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::instances::{scale_shares, InstanceSpec};
use profile::Curve;
use topology::Topology;

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
    /// The instance layout (threads and cores), which identifies a set of instance threads.
    pub fn layout(&self) -> Vec<InstanceSpec> {
        self.instances
            .iter()
            .map(|i| InstanceSpec {
                threads: i.threads,
                cores: i.cores.clone(),
            })
            .collect()
    }

    pub fn shares(&self) -> Vec<usize> {
        self.instances.iter().map(|i| i.batch).collect()
    }

    /// `2×1t/4 + 1×2t/8`-style one-line summary.
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

    /// A fixed layout from the config; its batch shares are weights scaled to each batch size.
    pub fn explicit(
        topo: &Topology,
        parts: &[(usize, usize, Option<Vec<usize>>)],
        max_batch: usize,
    ) -> Result<PlanTable> {
        let threads: Vec<usize> = parts.iter().map(|p| p.0).collect();
        let auto = topo.assign(&threads)?;
        let cores: Vec<Vec<usize>> = parts
            .iter()
            .zip(auto)
            .map(|(p, a)| p.2.clone().unwrap_or(a))
            .collect();
        let weights: Vec<usize> = parts.iter().map(|p| p.1).collect();
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
