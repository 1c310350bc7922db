//! Several models on one node: which cores each gets ([`Partitioner`]). Every model with a
//! live profile reports its [`Demand`] — its arrival rate and backlog, and what it would
//! predict on each core count ([`crate::planner::partition`]); the split with the least
//! weighted job latency is solved from them, placed moving as few cores as it can, and put
//! in force once every model that keeps serving meanwhile has its instance sets on its new
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

/// A model's backlog counts as jobs arriving within this many seconds: it is to be drained,
/// but a burst's backlog must not outbid every steady load (within one second, the cores
/// chased each backlog in turn, every move re-warming instance sets).
pub const DRAIN_S: f64 = 3.0;
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
    /// Its prediction on every core shared (see [`Member::shared`]).
    pub shared: Vec<Option<Prediction>>,
    /// The most items/s it serves on every core (see [`Member::most`]).
    pub most: f64,
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
            shared: self.shared.clone(),
            most: self.most,
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
    candidate: Option<(Option<Vec<usize>>, u32)>,
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
        let (wanted, why): (Option<Vec<usize>>, String) =
            if mode == Partition::Overlap || members.len() < 2 {
                (None, "every model on every core".into())
            } else if mode == Partition::Equal {
                let counts = partition::equal(members.len(), cores.len());
                (Some(counts), "equal parts".into())
            } else {
                self.joint(&members, cores.len(), &names, urgent)
            };
        let placed: Placed = match &wanted {
            None => names.iter().map(|n| (n.clone(), None)).collect(),
            Some(counts) => names
                .iter()
                .zip(partition::place_near(
                    counts,
                    &cores,
                    &self.cores_before(&names, &cores),
                ))
                .map(|(n, c)| (n.clone(), Some(c).filter(|c| c.len() < cores.len())))
                .collect(),
        };
        if placed != self.in_force {
            self.pending = Some((placed, why));
        } else {
            self.pending = None;
        }
        self.apply(&members, &topo);
        // Every model on every core: each one's prediction is with the others' load on them.
        let ms: Vec<Member> = members.iter().map(|(_, d)| d.member()).collect();
        let sharing = (members.len() >= 2 && self.in_force.iter().all(|(_, c)| c.is_none()))
            .then(|| partition::overlap(&ms, topo.len()))
            .flatten();
        for (i, (m, d)) in members.iter().enumerate() {
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
                predicted_ms: match &sharing {
                    Some(on) => on
                        .get(i)
                        .and_then(Option::as_ref)
                        .map(|p| p.latency_ms)
                        .filter(|l| l.is_finite()),
                    None => ms[i].latency_ms(n),
                },
                weight: d.weight,
                min_cores: d.min_cores,
            });
        }
    }

    /// Each of `names`' cores in the layout in force (every core for a model on all of them,
    /// or sharing them; none for a model new to it).
    fn cores_before(&self, names: &[String], cores: &[usize]) -> Vec<Vec<usize>> {
        names
            .iter()
            .map(|n| match self.in_force.iter().find(|(m, _)| m == n) {
                Some((_, Some(c))) => c.clone(),
                Some((_, None)) => cores.to_vec(),
                None => Vec::new(),
            })
            .collect()
    }

    /// The layout to run now: a split (core counts), or None for every model on every core.
    /// The solved split or sharing, whichever predicts less, when it is clearly better than
    /// the layout in force, or a busy model has no cores; with why (empty: no change).
    fn joint(
        &mut self,
        members: &[(&Arc<ModelRuntime>, Demand)],
        cores: usize,
        names: &[String],
        urgent: bool,
    ) -> (Option<Vec<usize>>, String) {
        let ms: Vec<Member> = members.iter().map(|(_, d)| d.member()).collect();
        // The layout in force, if the same models are placed now (None inside: sharing).
        let current: Option<Option<Vec<usize>>> = (self.in_force.len() == names.len()
            && self.in_force.iter().zip(names).all(|((a, _), b)| a == b))
        .then(|| {
            self.in_force.iter().any(|(_, c)| c.is_some()).then(|| {
                self.in_force
                    .iter()
                    .map(|(_, c)| c.as_ref().map_or(cores, Vec::len))
                    .collect()
            })
        });
        if !ms.iter().any(|m| m.busy) {
            // Nobody works: the layout stays until somebody does (a model without cores that
            // gets jobs is given some at once).
            self.candidate = None;
            return (current.flatten(), String::new());
        }
        let shared = partition::overlap_cost(&ms, cores);
        let cost = |l: &Option<Vec<usize>>| match l {
            Some(c) => partition::cost_of(&ms, c),
            None => shared.unwrap_or(f64::INFINITY),
        };
        let best: Option<Vec<usize>> = match partition::choose(&ms, cores) {
            Some(partition::Layout::Split(s)) => Some(s.cores),
            // Sharing predicts clearly less, or the split leaves a busy model unable to keep
            // up and sharing predicts less; or more busy models than cores.
            _ => None,
        };
        let per_job: f64 = ms
            .iter()
            .filter(|m| m.busy)
            .map(|m| m.weight * m.jobs_per_s.max(1e-3))
            .sum();
        let fmt = |c: f64| {
            let ms = c / per_job.max(1e-9);
            if ms.is_finite() && ms < 1e6 {
                format!("{ms:.1} ms")
            } else {
                "overloaded".into()
            }
        };
        let load = members
            .iter()
            .filter(|(_, d)| d.busy)
            .map(|(m, d)| format!("{} {:.1} jobs/s", m.name, d.jobs_per_s))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(current) = current else {
            self.candidate = None;
            let why = format!(
                "load: {load}; predicted {} per job (weighted)",
                fmt(cost(&best))
            );
            return (best, why);
        };
        if current == best {
            self.candidate = None;
            return (current, String::new());
        }
        let now = cost(&current);
        // A busy model without its min_cores: on too few cores of a split, or sharing every
        // core while it reserves some of its own.
        let starved = match &current {
            Some(c) => ms
                .iter()
                .zip(c)
                .any(|(m, &n)| m.busy && n < m.min_cores.max(1)),
            None => best.is_some() && ms.iter().any(|m| m.busy && m.min_cores > 1),
        };
        let better = cost(&best) < now * (1.0 - HYSTERESIS);
        let confirmed = match &mut self.candidate {
            Some((c, n)) if *c == best => {
                *n += 1;
                *n >= CONFIRM
            }
            _ => {
                self.candidate = Some((best.clone(), 1));
                CONFIRM <= 1
            }
        };
        if starved || urgent || (better && confirmed) {
            self.candidate = None;
            let was = if starved {
                "a busy model had too few cores".to_string()
            } else {
                fmt(now)
            };
            let why = format!(
                "load: {load}; predicted per job (weighted) {was} -> {}{}",
                fmt(cost(&best)),
                if best.is_none() {
                    ", sharing every core".to_string()
                } else {
                    format!("; sharing every core {}", fmt(cost(&None)))
                }
            );
            (best, why)
        } else {
            if !better {
                self.candidate = None;
            }
            (current, String::new())
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
