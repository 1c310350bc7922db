//! A model's plan table: building it from the config's choice (a cached or fresh profile and the
//! DP, the baseline, or a fixed plan), and holding the one in force so that a reload can swap it
//! between batches.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::{ModelConfig, PlanChoice};
use crate::engine::{InstanceSpec, Model, Precision};
use crate::planner::profile::ProfileFile;
use crate::planner::topology::Topology;
use crate::planner::{Plan, PlanTable};
use crate::profiler::{self, Progress, Subject};

/// When a model with `plan = "auto"` may be profiled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profiling {
    /// At start-up (and in `bench`): nothing is being served on these cores yet.
    Allowed,
    /// On reload: the instances are serving, so only a valid cached profile may be used.
    CachedOnly,
}

/// The instance layout of a plan (threads and cores): it names a warm instance set.
pub fn layout(plan: &Plan) -> Vec<InstanceSpec> {
    plan.instances
        .iter()
        .map(|i| InstanceSpec {
            threads: i.threads,
            cores: i.cores.clone(),
        })
        .collect()
}

fn subject(cfg: &ModelConfig, precision: Precision) -> Subject<'_> {
    Subject {
        name: &cfg.name,
        source: &cfg.source,
        precision,
        inputs: &cfg.inputs,
        max_batch: cfg.max_batch,
    }
}

/// The profile key of a configured model, served in `precision`, on `topo`.
pub fn profile_key(
    cfg: &ModelConfig,
    precision: Precision,
    topo: &Topology,
) -> Result<crate::planner::profile::ProfileKey> {
    profiler::profile_key(&subject(cfg, precision), topo)
}

/// The plan table for a model, per its config, and the profile it was solved from. `Auto`
/// reuses the cached profile or, when `profiling` allows, measures one; if measuring fails the
/// model still serves, on the baseline.
pub fn build_plans(
    cfg: &ModelConfig,
    model: &Arc<Model>,
    topo: &Topology,
    state_dir: &std::path::Path,
    profiling: Profiling,
    progress: Progress,
) -> Result<(PlanTable, Option<ProfileFile>)> {
    let from_profile = |p: ProfileFile| -> Result<(PlanTable, Option<ProfileFile>)> {
        let table = PlanTable::from_curve(&p.curve()?, topo, cfg.max_batch)?;
        Ok((table, Some(p)))
    };
    match &cfg.plan {
        PlanChoice::Baseline => Ok((PlanTable::baseline(topo, cfg.max_batch), None)),
        PlanChoice::Fixed(parts) => {
            let table = PlanTable::fixed(topo, parts, cfg.max_batch).with_context(|| {
                format!(
                    "model[{}].plan does not fit the {} usable cores",
                    cfg.name,
                    topo.len()
                )
            })?;
            Ok((table, None))
        }
        PlanChoice::Auto if profiling == Profiling::CachedOnly => {
            let key = profile_key(cfg, model.precision, topo)?;
            let profile = profiler::cached(state_dir, &key).ok_or_else(|| {
                anyhow!(
                    "no valid cached profile for '{0}' (new model file, or the host changed?), and profiling now would stall serving: run `packrat profile --model {0} --config <this agent's config>` and reload, or restart the agent",
                    cfg.name
                )
            })?;
            from_profile(profile)
        }
        PlanChoice::Auto => {
            let budget = Duration::from_secs_f64(cfg.profile_budget_s);
            match profiler::profile_or_cached(
                model.clone(),
                &subject(cfg, model.precision),
                budget,
                topo,
                state_dir,
                progress,
            ) {
                Ok((profile, was_cached)) => {
                    if was_cached {
                        log::info!(
                            "model {}: using the cached profile in {}",
                            cfg.name,
                            profiler::profile_path(state_dir, &cfg.name).display()
                        );
                    }
                    from_profile(profile)
                }
                Err(e) => {
                    log::error!("model {}: profiling failed ({e:#}); serving on the baseline (one instance, all cores)", cfg.name);
                    Ok((PlanTable::baseline(topo, cfg.max_batch), None))
                }
            }
        }
    }
}

/// Logs where the plan's shape changes along the batch sizes.
pub fn log_plans(name: &str, table: &PlanTable) {
    let mut last = String::new();
    for p in &table.plans {
        let shape = p
            .instances
            .iter()
            .map(|i| format!("{}t", i.threads))
            .collect::<Vec<_>>()
            .join("+");
        if shape != last {
            let pred = p
                .predicted_latency_ms
                .map(|x| format!(", predicted {x:.1} ms"))
                .unwrap_or_default();
            log::info!(
                "model {name}: from batch {}: {}{pred} ({:?})",
                p.batch,
                p.summary(),
                table.source
            );
            last = shape;
        }
    }
}

/// The plan table in force and the plan the last batch ran with.
pub struct PlanState {
    table: RwLock<Arc<PlanTable>>,
    last: Mutex<Option<Plan>>,
}

impl PlanState {
    pub fn new(table: PlanTable) -> PlanState {
        PlanState {
            table: RwLock::new(Arc::new(table)),
            last: Mutex::new(None),
        }
    }

    pub fn table(&self) -> Arc<PlanTable> {
        self.table
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set(&self, table: PlanTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The plan for a batch of `items`, remembered as the last one used.
    pub fn for_batch(&self, items: usize) -> Plan {
        let plan = self.table().for_batch(items).clone();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan.clone());
        plan
    }

    pub fn last(&self) -> Option<Plan> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every distinct layout of the table, max_batch's first.
    pub fn layouts(&self) -> Vec<Vec<InstanceSpec>> {
        layouts_of(&self.table())
    }
}

/// Every distinct layout of a table, max_batch's first.
pub fn layouts_of(table: &PlanTable) -> Vec<Vec<InstanceSpec>> {
    let mut seen: Vec<Vec<InstanceSpec>> = Vec::new();
    for plan in table.plans.iter().rev() {
        let l = layout(plan);
        if !seen.contains(&l) {
            seen.push(l);
        }
    }
    seen
}
