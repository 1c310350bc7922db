//! Several models on one node: which cores each gets ([`Partitioner`]). Every model with a
//! live profile reports its [`Demand`] — its arrival rate and backlog, and what it would
//! predict on each core count ([`crate::planner::partition`]); the split with the least
//! weighted job latency is solved from them, placed as contiguous runs of cores, and put in
//! force once every model that keeps serving meanwhile has its instance sets on its new
//! cores warm. Each model's dispatcher then plans its batches (one split batch, or lanes) on
//! its cores only.
//!
//! A model without work gets no cores: the busy ones use them (work-conserving). A model
//! with no cores whose jobs arrive is given some at once ([`Partitioner::tick`] with
//! `urgent`); otherwise a new split must predict [`HYSTERESIS`] less latency in
//! [`CONFIRM`] solves in a row. With `partition = "equal"` every model keeps a fixed equal
//! part; with `"overlap"` (or fewer than two models with live profiles) every model plans
//! over every core, as it would alone.
//!
//! A move takes effect at each model's next batch: a batch already running on cores just
//! given away finishes there, so two models may share a core for at most one batch.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ModelRuntime;
use crate::config::Partition;
use crate::planner::partition::{self, Member};
use crate::planner::serving::Prediction;
use crate::planner::topology::Topology;

/// How often the split is re-solved.
pub const SOLVE_EVERY: Duration = Duration::from_millis(500);
/// A new split must predict this much less weighted latency…
pub const HYSTERESIS: f64 = 0.15;
/// … in this many solves in a row.
pub const CONFIRM: u32 = 2;

/// What a model tells the partition.
#[derive(Debug, Clone)]
pub struct Demand {
    /// It has work: jobs arrived lately, wait, or run.
    pub busy: bool,
    /// Jobs wait in its queue now.
    pub waiting: bool,
    pub jobs_per_s: f64,
    /// Items per second.
    pub load: f64,
    /// Its prediction on n = 0..=cores cores.
    pub on: Vec<Option<Prediction>>,
    pub weight: f64,
    pub min_cores: usize,
}

impl Demand {
    fn member(&self) -> Member {
        Member {
            weight: self.weight,
            min_cores: self.min_cores,
            busy: self.busy,
            jobs_per_s: self.jobs_per_s,
            load: self.load,
            on: self.on.clone(),
        }
    }
}

/// What status shows of a model's cores.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShareStatus {
    /// `joint`, `equal` or `overlap` (empty: one model, or no live profile).
    pub partition: String,
    /// Its cores now (None: every core).
    pub cores: Option<Vec<usize>>,
    /// Jobs per second it was offered at the last solve (backlog included).
    pub arrival_rate: f64,
    /// The predicted mean job latency on its cores at that load (None: no work, or it
    /// cannot keep up).
    pub predicted_ms: Option<f64>,
    pub weight: f64,
    pub min_cores: usize,
}

/// What status shows of the split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub mode: String,
    /// Splits put in force so far.
    pub switches: u64,
    /// Why the last one was, and what it was predicted to gain.
    pub last_change: Option<String>,
}

/// Cores per model, by name (None: every core).
type Placed = Vec<(String, Option<Vec<usize>>)>;

/// The split in force, a split waiting for its instance sets (and why it was chosen), and
/// the solves that preferred another.
#[derive(Default)]
pub struct Partitioner {
    in_force: Placed,
    pending: Option<(Placed, String)>,
    candidate: Option<(Vec<usize>, u32)>,
    pub status: PartitionStatus,
}

fn show(cores: &Option<Vec<usize>>) -> String {
    match cores {
        None => "every core".into(),
        Some(c) if c.is_empty() => "no cores".into(),
        Some(c) => format!("cores {}", crate::planner::cores_str(c)),
    }
}

impl Partitioner {
    /// Re-solves the split of `models`' cores in `mode`; `urgent`: a model without cores has
    /// jobs waiting, so it is given some without hysteresis.
    pub fn tick(&mut self, mode: Partition, models: &[Arc<ModelRuntime>], urgent: bool) {
        self.status.mode = mode.name().into();
        // Models planning on the same cores, with live profiles (the first model's cores).
        let topo = models.first().map(|m| m.topology().clone());
        let Some(topo) = topo else { return };
        let cores = topo.ordered();
        let demands: Vec<(&Arc<ModelRuntime>, Option<Demand>)> = models
            .iter()
            .map(|m| {
                let d = (m.topology().ordered() == cores)
                    .then(|| m.demand())
                    .flatten();
                (m, d)
            })
            .collect();
        let members: Vec<(&Arc<ModelRuntime>, Demand)> = demands
            .iter()
            .filter_map(|(m, d)| Some((*m, d.clone()?)))
            .collect();
        let outside: Vec<&Arc<ModelRuntime>> = demands
            .iter()
            .filter(|(_, d)| d.is_none())
            .map(|(m, _)| *m)
            .collect();
        for m in &outside {
            m.set_share(None);
            m.set_share_status(ShareStatus::default());
        }
        let names: Vec<String> = members.iter().map(|(m, _)| m.name.clone()).collect();
        let wanted: Option<(Vec<usize>, String)> =
            if mode == Partition::Overlap || members.len() < 2 {
                None
            } else if mode == Partition::Equal {
                Some((
                    partition::equal(members.len(), cores.len()),
                    "equal parts".into(),
                ))
            } else {
                self.joint(&members, cores.len(), &names, urgent)
            };
        let placed: Placed = match &wanted {
            None => names.iter().map(|n| (n.clone(), None)).collect(),
            Some((counts, _)) => names
                .iter()
                .zip(partition::place(counts, &cores))
                .map(|(n, c)| (n.clone(), Some(c).filter(|c| c.len() < cores.len())))
                .collect(),
        };
        if placed != self.in_force {
            let why =
                wanted.map_or_else(|| "every model on every core".to_string(), |(_, why)| why);
            self.pending = Some((placed, why));
        } else {
            self.pending = None;
        }
        self.apply(&members, &topo);
        for (m, d) in &members {
            let cores = self
                .in_force
                .iter()
                .find(|(n, _)| *n == m.name)
                .and_then(|(_, c)| c.clone());
            let n = cores.as_ref().map_or(topo.len(), Vec::len);
            m.set_share_status(ShareStatus {
                partition: if members.len() < 2 {
                    String::new()
                } else {
                    mode.name().into()
                },
                cores,
                arrival_rate: d.jobs_per_s,
                predicted_ms: d.member().latency_ms(n),
                weight: d.weight,
                min_cores: d.min_cores,
            });
        }
    }

    /// The joint split to run now (None: every model on every core): the solved one when it
    /// is clearly better than the one in force, or a busy model has no cores.
    fn joint(
        &mut self,
        members: &[(&Arc<ModelRuntime>, Demand)],
        cores: usize,
        names: &[String],
        urgent: bool,
    ) -> Option<(Vec<usize>, String)> {
        let ms: Vec<Member> = members.iter().map(|(_, d)| d.member()).collect();
        // The counts in force, if the same models are split now.
        let current: Option<Vec<usize>> = (self.in_force.len() == names.len()
            && self.in_force.iter().zip(names).all(|((a, _), b)| a == b)
            && self.in_force.iter().any(|(_, c)| c.is_some()))
        .then(|| {
            self.in_force
                .iter()
                .map(|(_, c)| c.as_ref().map_or(cores, Vec::len))
                .collect()
        });
        if !ms.iter().any(|m| m.busy) {
            // Nobody works: the split stays until somebody does (a model without cores that
            // gets jobs is given some at once).
            self.candidate = None;
            return current.map(|c| (c, String::new()));
        }
        let Some(best) = partition::solve(&ms, cores) else {
            log::debug!("partition: more busy models than cores; they overlap");
            self.candidate = None;
            return None;
        };
        let per_job: f64 = ms
            .iter()
            .filter(|m| m.busy)
            .map(|m| m.weight * m.jobs_per_s.max(1e-3))
            .sum();
        let mean = |cost: f64| cost / per_job.max(1e-9);
        let load = members
            .iter()
            .filter(|(_, d)| d.busy)
            .map(|(m, d)| format!("{} {:.1} jobs/s", m.name, d.jobs_per_s))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(current) = current else {
            self.candidate = None;
            return Some((
                best.cores,
                format!(
                    "load: {load}; predicted {:.1} ms per job (weighted)",
                    mean(best.cost)
                ),
            ));
        };
        if current == best.cores {
            self.candidate = None;
            return Some((current, String::new()));
        }
        let now = partition::cost_of(&ms, &current);
        let starved = ms
            .iter()
            .zip(&current)
            .any(|(m, &n)| m.busy && n < m.min_cores.max(1));
        let better = best.cost < now * (1.0 - HYSTERESIS);
        let confirmed = match &mut self.candidate {
            Some((c, n)) if *c == best.cores => {
                *n += 1;
                *n >= CONFIRM
            }
            _ => {
                self.candidate = Some((best.cores.clone(), 1));
                CONFIRM <= 1
            }
        };
        if starved || urgent || (better && confirmed) {
            self.candidate = None;
            let fmt = |ms: f64| {
                if ms.is_finite() && ms < 1e6 {
                    format!("{ms:.1} ms")
                } else {
                    "overloaded".into()
                }
            };
            let was = if starved {
                "a busy model had too few cores".to_string()
            } else {
                fmt(mean(now))
            };
            Some((
                best.cores,
                format!(
                    "load: {load}; predicted per job (weighted) {was} -> {}",
                    fmt(mean(best.cost))
                ),
            ))
        } else {
            if !better {
                self.candidate = None;
            }
            Some((current, String::new()))
        }
    }

    /// Puts the pending split in force once every model that keeps running meanwhile has its
    /// new cores warm (a model without cores now has nothing to wait for).
    fn apply(&mut self, members: &[(&Arc<ModelRuntime>, Demand)], topo: &Topology) {
        let Some((placed, why)) = self.pending.take() else {
            return;
        };
        let mut ready = true;
        for (m, _) in members {
            let Some((_, Some(new))) = placed.iter().find(|(n, _)| *n == m.name) else {
                continue;
            };
            let now = m.share();
            let has_cores = now.as_ref().is_none_or(|t| !t.is_empty());
            if !new.is_empty() && has_cores && !m.serving().share_ready(&topo.subset(new)) {
                ready = false;
            }
        }
        if !ready {
            self.pending = Some((placed, why));
            return;
        }
        for (m, _) in members {
            let share = placed
                .iter()
                .find(|(n, _)| *n == m.name)
                .and_then(|(_, c)| c.as_ref().map(|c| topo.subset(c)));
            m.set_share(share);
        }
        let what = placed
            .iter()
            .map(|(n, c)| format!("{n} {}", show(c)))
            .collect::<Vec<_>>()
            .join(", ");
        if !why.is_empty() {
            log::info!("partition: {what} ({why})");
            self.status.switches += 1;
            self.status.last_change = Some(format!("{what} ({why})"));
        }
        self.in_force = placed;
    }
}
