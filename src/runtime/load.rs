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

/// Loads, checks, plans and warms a new version beside `serving` (None: a model added while
/// others serve). Any failure is the version's: it is refused and nothing else changes.
pub fn beside(
    cfg: ModelConfig,
    place: &Place,
    serving: Option<&ModelVersion>,
) -> Result<ModelVersion> {
    let resolved = resolve(&cfg).context("cannot load it")?;
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
    Ok(version)
}
