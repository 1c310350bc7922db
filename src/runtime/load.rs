//! Building a [`ModelVersion`]: load the model in its precision, plan it, warm it up. At
//! start-up the plan may come from a fresh profile; beside a serving version (a swap, or a
//! model added by a reload) it never profiles — that would stall the models serving on the
//! same cores — but starts from the serving version's live profile where the new one has the
//! same inputs, engine and max_batch, else from a cached profile, else from the baseline.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::adapt::{live_path, unix_now, Adapter, Reason, Replan};
use super::plans::{build_plans, log_plans, profile_key, Profiling};
use super::precision::{resolve, Resolved};
use super::version::ModelVersion;
use crate::config::{ModelConfig, PlanChoice};
use crate::engine::Model;
use crate::planner::profile::ProfileFile;
use crate::planner::topology::Topology;
use crate::planner::PlanTable;
use crate::profiler::{profile_path, Progress};

/// Where a model's versions are built: the cores it may use and the agent's state dir.
#[derive(Clone)]
pub struct Place {
    pub topo: Topology,
    pub state_dir: PathBuf,
}

impl Place {
    /// Where `model` is built: on a replayed model's virtual cores, else on these.
    pub fn of(&self, model: &ModelConfig) -> Place {
        Place {
            topo: crate::config::Config::model_topology(model, &self.topo),
            state_dir: self.state_dir.clone(),
        }
    }
}

/// What a config's version is called: its folder number for a folder of versions, else the
/// model source itself.
pub fn label(cfg: &ModelConfig) -> String {
    let folder = match (&cfg.versions, cfg.source.path()) {
        (Some(_), Some(file)) => file
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        _ => None,
    };
    folder.unwrap_or_else(|| cfg.source.to_string())
}

/// A model's plan table per its config, and the profile it was solved from.
pub fn plan(
    cfg: &ModelConfig,
    model: &Arc<Model>,
    place: &Place,
    profiling: Profiling,
    progress: Progress,
) -> Result<(PlanTable, Option<ProfileFile>)> {
    let (table, profile) = build_plans(
        cfg,
        model,
        &place.topo,
        &place.state_dir,
        profiling,
        progress,
    )?;
    log_plans(&cfg.name, &table);
    Ok((table, profile))
}

/// For an adapting `auto` model: the adapter, grown from the profile (or from the live
/// profile the last run left), and the table it gives; otherwise `table` as it is.
pub fn adapting(
    cfg: &ModelConfig,
    place: &Place,
    table: PlanTable,
    profile: Option<ProfileFile>,
) -> (PlanTable, Option<Adapter>) {
    let Some(profile) = profile.filter(|_| cfg.plan == PlanChoice::Auto && cfg.adapt.enabled)
    else {
        return (table, None);
    };
    let (mut adapter, restored) = Adapter::new(
        &profile,
        &profile_path(&place.state_dir, &cfg.name),
        &place.state_dir,
        place.topo.clone(),
        cfg.adapt.clone(),
        cfg.max_batch,
    );
    match adapter.table() {
        Ok(t) => {
            if restored {
                log::info!(
                    "model {}: planning from the live profile the last run left ({})",
                    cfg.name,
                    live_path(&place.state_dir, &cfg.name).display()
                );
                log_plans(&cfg.name, &t);
                adapter.switched(Replan {
                    reason: Reason::Restored,
                    at: unix_now(),
                    predicted_change_pct: 0.0,
                    summary: t.for_batch(cfg.max_batch).summary(),
                });
            }
            (t, Some(adapter))
        }
        Err(e) => {
            log::warn!("model {}: not adapting ({e:#})", cfg.name);
            (table, None)
        }
    }
}

/// The plans of a version loaded while others serve: see the module doc.
fn plan_beside(
    cfg: &ModelConfig,
    resolved: &Resolved,
    place: &Place,
    serving: Option<&ModelVersion>,
) -> Result<(PlanTable, Option<Adapter>)> {
    let model = &resolved.model;
    let adapts = cfg.plan == PlanChoice::Auto && cfg.adapt.enabled;
    let same = serving.filter(|old| {
        adapts
            && old.cfg.inputs == cfg.inputs
            && old.cfg.source.engine() == cfg.source.engine()
            && old.cfg.max_batch == cfg.max_batch
    });
    if let Some(old) = same {
        let key = profile_key(cfg, model.precision, &place.topo).ok();
        if let Some(mut adapter) = old.inherit_adapter(key) {
            let table = adapter.table()?;
            log::info!(
                "model {}: version {} starts from version {}'s live profile",
                cfg.name,
                label(cfg),
                old.label
            );
            log_plans(&cfg.name, &table);
            return Ok((table, Some(adapter)));
        }
    }
    match plan(
        cfg,
        model,
        place,
        Profiling::CachedOnly,
        &mut |_, _, _, _| {},
    ) {
        Ok((table, profile)) => Ok(adapting(cfg, place, table, profile)),
        Err(e) if cfg.plan == PlanChoice::Auto => {
            log::warn!(
                "model {}: version {} starts on the baseline (one instance, all cores): {e:#}",
                cfg.name,
                label(cfg)
            );
            Ok((PlanTable::baseline(&place.topo, cfg.max_batch), None))
        }
        Err(e) => Err(e),
    }
}

/// Loads `cfg`'s model on a thread of its own that yields to the serving instances: nice 10
/// and one intra-op thread. Loading, freezing and optimising a model is seconds of CPU work;
/// on a busy node it must not take the cores from the batches being served. A thread of its
/// own, because threads inherit their creator's nice value and an unprivileged thread cannot
/// lower it again: the new version's instance threads are started later, from the loader,
/// at the process's priority.
fn load_yielding(cfg: &ModelConfig) -> Result<Resolved> {
    std::thread::scope(|s| {
        let loading = std::thread::Builder::new()
            .name("pr-load-model".into())
            .spawn_scoped(s, || {
                // SAFETY: setpriority on this thread's own tid; raising nice needs no privilege.
                let tid = nix::unistd::gettid().as_raw() as nix::libc::id_t;
                unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, 10) };
                // Read first, so this thread keeps its own count (DESIGN §2), then set it.
                let _ = tch::get_num_threads();
                tch::set_num_threads(1);
                resolve(cfg)
            })
            .context("cannot spawn a thread to load the model")?;
        loading
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("loading the model panicked")))
    })
}

/// Loads, checks, plans and warms a new version beside `serving` (None: a model added while
/// others serve). Any failure is the version's: it is refused and nothing else changes.
pub fn beside(
    cfg: ModelConfig,
    place: &Place,
    serving: Option<&ModelVersion>,
) -> Result<ModelVersion> {
    let resolved = load_yielding(&cfg).context("cannot load it")?;
    let (table, adapter) = plan_beside(&cfg, &resolved, place, serving)?;
    let version = ModelVersion::new(
        cfg.clone(),
        label(&cfg),
        resolved,
        table,
        place.topo.clone(),
        adapter,
    );
    version
        .warm_up()
        .context("it does not run a warm-up batch of the configured inputs")?;
    if cfg.plan == PlanChoice::Auto && cfg.adapt.enabled && !version.adapts() {
        match seed(&cfg, &version, place) {
            Ok(adapter) => {
                log::info!(
                    "model {}: version {} adapts from a seed profile: its idle gaps measure the rest",
                    cfg.name,
                    version.label
                );
                version.set_adapter(Some(adapter));
            }
            Err(e) => log::warn!("model {}: not adapting ({e:#})", cfg.name),
        }
    }
    Ok(version)
}

/// How much worse than the linear guess a point the seed did not measure is assumed to be:
/// the DP then keeps the measured baseline until online adaptation has measured better.
const SEED_PESSIMISM: f64 = 1.5;

/// The adapter of an `auto` version with no profile to start from (a model added by a reload,
/// or a version with other inputs, beside models that serve: never a profiling pause). It
/// starts from the one thing measured here, the baseline's max_batch latency on the warm
/// instances: linear in the batch on all cores, [`SEED_PESSIMISM`] × linear in threads below.
/// The live profile's points are priors to be measured in idle gaps, like a profile's; a live
/// profile the model left under the same key (it was served before) is restored instead.
fn seed(cfg: &ModelConfig, version: &ModelVersion, place: &Place) -> Result<Adapter> {
    let b_max = cfg.max_batch;
    let xs = version.model().example_inputs(b_max as i64);
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let (_, took) = version.run_batch(&xs, b_max)?;
        best = best.min(took.as_secs_f64() * 1e3);
    }
    let cores = place.topo.len();
    let points = crate::planner::profile::targets(cores, b_max)
        .into_iter()
        .flat_map(|(t, bs)| {
            bs.into_iter().map(move |b| {
                let linear = best * b as f64 / b_max as f64 * cores as f64 / t as f64;
                let guess = if t == cores {
                    linear
                } else {
                    linear * SEED_PESSIMISM
                };
                crate::planner::profile::Point::new(t, b, guess)
            })
        })
        .collect();
    let profile = ProfileFile {
        model: cfg.name.clone(),
        cores,
        machine: None,
        source: Some("seed".into()),
        framework: None,
        units: None,
        co_located: true,
        key: profile_key(cfg, version.model().precision, &place.topo).ok(),
        points,
    };
    let (adapter, _) = Adapter::new(
        &profile,
        &profile_path(&place.state_dir, &cfg.name),
        &place.state_dir,
        place.topo.clone(),
        cfg.adapt.clone(),
        b_max,
    );
    Ok(adapter)
}
