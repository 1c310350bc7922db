//! One loaded version of a model: its engine (through the instance pool), its plan table, its
//! live profile and adapter, and the precision it computes in. A version is built and warmed
//! beside the one serving (by the runtime's loader), then swapped in between batches; it is
//! unloaded when the last batch that holds it is done (its pool's instance threads exit on
//! drop).
//!
//! Re-planning (a new table) swaps an `Arc` between batches: the batch in flight finishes on
//! the old instance sets. A `plan = "auto"` version re-plans by itself ([`super::adapt`]): from
//! every batch it runs, and from measurements it makes only while nothing waits; a new table's
//! instance sets are started on a helper thread and the table takes effect once they are warm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::Tensor;

use super::adapt::{self, AdaptStatus, Adapter, Decision, Probe, Reason, Replan};
use super::lanes::{self, Lanes};
use super::plans::{self, layout, PlanState};
use super::precision::{self, PrecisionStatus, Resolved};
use super::queue::JobQueue;
use super::stats::{self, Busy, Drift, SetStarts};
use crate::config::{ModelConfig, PlanChoice};
use crate::engine::{
    InstanceInfo, InstancePool, InstanceSet, InstanceSpec, Model, Outputs, Specialized,
};
use crate::planner::serving;
use crate::planner::topology::Topology;
use crate::planner::{Plan, PlanTable};

/// Instance sets a pool may hold: the table's layouts (bounded by `max_layouts`), the next
/// table's while it is being prepared, and a margin.
fn pool_capacity(cfg: &ModelConfig, cores: usize) -> usize {
    // Lanes over every core, and over the share of them the joint partition gives.
    2 * cfg.adapt.max_layouts + 4 + 2 * lanes::LANE_LAYOUTS * cores
}

/// What a version predicts for the partition: on n = 0..=its cores cores by itself (`on`),
/// and on every core shared, at each of [`crate::planner::partition::SHARED_SLOWDOWNS`].
pub struct SharePredictions {
    pub on: Vec<Option<serving::Prediction>>,
    pub shared: Vec<Option<serving::Prediction>>,
    /// The most items/s on every core, on any lane count.
    pub most: f64,
}

/// Lane plans for the table in force, per (cores, lane count), and plan tables per core count
/// for the joint partition's predictions (None: that cannot be run).
#[derive(Default)]
struct LaneCache {
    table: Option<Arc<PlanTable>>,
    sets: std::collections::BTreeMap<(Vec<usize>, usize), Option<Arc<Lanes>>>,
    by_cores: std::collections::BTreeMap<usize, Option<(Arc<PlanTable>, usize)>>,
}

pub struct ModelVersion {
    /// The config this version was loaded with (its `source` is this version's model file).
    pub cfg: ModelConfig,
    /// What outputs, status and metrics call it: the folder number `N` of `<dir>/<N>/`, or the
    /// model file's path for a single-file source.
    pub label: String,
    plans: PlanState,
    /// Replaced whole when `auto` precision falls back to f32.
    pool: RwLock<Arc<InstancePool>>,
    drift: Mutex<Drift>,
    precision: Mutex<PrecisionStatus>,
    /// The f32 twin an `auto` model checks real jobs against, while it serves bf16.
    twin: Mutex<Option<Arc<Model>>>,
    topo: Topology,
    /// None unless the model plans `auto` and adapts.
    adapter: Mutex<Option<Adapter>>,
    /// Sets for idle-gap measurements whose layout the table does not use.
    probe_pool: Arc<InstancePool>,
    /// A re-planned table waiting for its instance sets.
    pending: Mutex<Option<(PlanTable, Replan)>>,
    /// A helper thread is starting instance sets.
    preparing: Arc<AtomicBool>,
    /// What the instance sets' sessions found when readied for their shapes.
    specialized: Arc<Mutex<Vec<Specialized>>>,
    lanes: Mutex<LaneCache>,
}

impl ModelVersion {
    pub fn new(
        cfg: ModelConfig,
        label: String,
        resolved: Resolved,
        table: PlanTable,
        topo: Topology,
        adapter: Option<Adapter>,
    ) -> ModelVersion {
        let capacity = pool_capacity(&cfg, topo.len());
        let pool = InstancePool::new(resolved.model.clone(), &cfg.name, capacity);
        let probe_pool = InstancePool::new(resolved.model, "probe", 8);
        ModelVersion {
            topo,
            label,
            adapter: Mutex::new(adapter),
            probe_pool: Arc::new(probe_pool),
            pending: Mutex::new(None),
            preparing: Arc::new(AtomicBool::new(false)),
            specialized: Arc::new(Mutex::new(Vec::new())),
            lanes: Mutex::new(LaneCache::default()),
            cfg,
            plans: PlanState::new(table),
            pool: RwLock::new(Arc::new(pool)),
            drift: Mutex::new(Drift::default()),
            precision: Mutex::new(resolved.status),
            twin: Mutex::new(resolved.twin),
        }
    }

    fn pool(&self) -> Arc<InstancePool> {
        self.pool
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn model(&self) -> Arc<Model> {
        self.pool().model().clone()
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// For `auto` precision while bf16 serves: checks one real job (its inputs and what was
    /// served) against the f32 twin, when nothing waits and fewer than
    /// [`precision::JOB_CHECKS`] were checked; past the tolerance, switches to f32.
    pub fn check_precision(&self, queue: &JobQueue, inputs: &[Tensor], served: &Outputs) {
        let mut twin = self.twin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f32) = twin.clone() else { return };
        let mut status = self.precision.lock().unwrap_or_else(|p| p.into_inner());
        if !queue.is_empty() || status.jobs_checked >= precision::JOB_CHECKS {
            return;
        }
        match precision::check_job(&f32, &mut status, inputs, served) {
            Ok(None) => {
                if status.jobs_checked == precision::JOB_CHECKS {
                    *twin = None; // enough evidence: free the twin
                }
            }
            Ok(Some(why)) => {
                log::warn!(
                    "model {}: precision auto: switching to f32 ({why})",
                    self.name()
                );
                status.in_use = f32.precision.name().into();
                status.reason = Some(why);
                *twin = None;
                drop(status);
                *self.pool.write().unwrap_or_else(|p| p.into_inner()) =
                    Arc::new(InstancePool::new(
                        f32,
                        &self.cfg.name,
                        pool_capacity(&self.cfg, self.topo.len()),
                    ));
                if let Err(e) = self.warm_up() {
                    log::error!("model {}: warm-up in f32 failed: {e:#}", self.name());
                }
            }
            Err(e) => log::warn!(
                "model {}: cannot check bf16 against f32: {e:#}",
                self.name()
            ),
        }
    }

    pub fn plan_table(&self) -> Arc<PlanTable> {
        self.plans.table()
    }

    /// Switches to a new plan table; instance sets it no longer uses are dropped (their threads
    /// exit once the batch in flight, if any, is done with them).
    pub fn set_plans(&self, table: PlanTable) {
        self.plans.set(table);
        // Lane sets stay warm too: the next lane plans mostly reuse their layouts.
        let mut keep = self.plans.layouts();
        keep.extend(
            self.lane_cache()
                .sets
                .values()
                .flatten()
                .flat_map(|l| l.layouts()),
        );
        self.pool().retain(&keep);
    }

    fn lane_cache(&self) -> MutexGuard<'_, LaneCache> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lane cache for `table`: emptied first when it was for another.
    fn lane_cache_for(&self, table: &Arc<PlanTable>) -> MutexGuard<'_, LaneCache> {
        let mut cache = self.lane_cache();
        if !cache.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
            cache.table = Some(table.clone());
            cache.sets.clear();
            cache.by_cores.clear();
        }
        cache
    }

    /// The cores a share names, as this version's topology (None: every core).
    fn share_topo(&self, share: Option<&Topology>) -> Option<Topology> {
        share
            .map(|t| self.topo.subset(&t.ordered()))
            .filter(|t| t.len() < self.topo.len())
    }

    /// The lane plan for `k` lanes over `share` (None: every core), from the live profile, for
    /// the table in force (cached until the table changes); with `plan = "baseline"`, one
    /// instance over each lane's cores (the fixed stream counts OpenVINO's THROUGHPUT hint and
    /// TorchServe workers run). None: this version has no live profile (a fixed plan, or
    /// `adapt = false`), or `k` does not split the cores evenly.
    fn lane_plan(&self, share: Option<&Topology>, k: usize) -> Option<Arc<Lanes>> {
        let topo = self.share_topo(share).unwrap_or_else(|| self.topo.clone());
        let mut cache = self.lane_cache_for(&self.plans.table());
        let key = (topo.ordered(), k);
        if let Some(l) = cache.sets.get(&key) {
            return l.clone();
        }
        let baseline = (self.cfg.plan == PlanChoice::Baseline).then(|| {
            topo.lanes(k).map(|parts| Lanes {
                k,
                tables: parts
                    .iter()
                    .map(|t| PlanTable::baseline(t, self.cfg.max_batch))
                    .collect(),
                cores: topo.ordered(),
            })
        });
        let built = match baseline {
            Some(lanes) => lanes.map(Arc::new),
            None => self.lane_plan_from_profile(&topo, k),
        };
        cache.sets.insert(key, built.clone());
        built
    }

    fn lane_plan_from_profile(&self, topo: &Topology, k: usize) -> Option<Arc<Lanes>> {
        self.adapter()
            .as_ref()
            .and_then(Adapter::curve_and_weights)
            .and_then(|(curve, w)| {
                Lanes::build(&curve, topo, k, self.cfg.max_batch, &w)
                    .map_err(|e| log::debug!("model {}: no plan for {k} lanes: {e:#}", self.name()))
                    .ok()
                    .flatten()
            })
            .map(Arc::new)
    }

    /// `k` lanes over `share` (None: every core) ready to serve: planned, their instance sets
    /// warm. None for k = 1 over every core (the plan table serves), when `k` lanes cannot
    /// run there, and while their sets are started on a helper thread — except one lane over
    /// a share, which is what the model has to run on: it is returned cold if need be (its
    /// sets start in front of the batch).
    pub fn lanes(&self, share: Option<&Topology>, k: usize) -> Option<Arc<Lanes>> {
        let share = self.share_topo(share);
        if k <= 1 && share.is_none() {
            return None;
        }
        let lanes = self.lane_plan(share.as_ref(), k)?;
        if !self.warm_or_prepare(&lanes) && (k > 1 || share.is_none()) {
            return None;
        }
        Some(lanes)
    }

    /// Whether every instance set of `lanes` is warm; if not, has the missing ones started on
    /// a helper thread.
    fn warm_or_prepare(&self, lanes: &Lanes) -> bool {
        let pool = self.pool();
        let missing: Vec<Vec<InstanceSpec>> = lanes
            .layouts()
            .into_iter()
            .filter(|l| pool.warm(l).is_none())
            .collect();
        if missing.is_empty() {
            return true;
        }
        self.prepare_in_background(pool, missing, None);
        false
    }

    /// Whether one lane over `share` is warm; if not, has its sets started on a helper thread
    /// (the joint partition moves a model to new cores only once it is).
    pub fn share_ready(&self, share: &Topology) -> bool {
        self.lane_plan(self.share_topo(Some(share)).as_ref(), 1)
            .is_none_or(|lanes| self.warm_or_prepare(&lanes))
    }

    /// The live profile's curve, if this version has one.
    fn live_curve(&self) -> Option<crate::planner::profile::Curve> {
        self.adapter()
            .as_ref()
            .and_then(Adapter::curve_and_weights)
            .map(|(c, _)| c)
    }

    /// The plan table on `c` cores (the first `c` of this version's, physical cores first)
    /// and its measured batch, for predictions (cached until the table changes).
    fn table_on(&self, c: usize) -> Option<(Arc<PlanTable>, usize)> {
        let full = self.plans.table();
        if let Some(t) = self.lane_cache_for(&full).by_cores.get(&c) {
            return t.clone();
        }
        let built = (|| {
            let (curve, w) = self.adapter().as_ref()?.curve_and_weights()?;
            let table = if c == self.topo.len() {
                full.clone()
            } else {
                let topo = self.topo.subset(self.topo.ordered().get(..c)?);
                Arc::new(
                    crate::planner::menu::bounded(
                        &curve,
                        &topo,
                        self.cfg.max_batch,
                        &w,
                        lanes::LANE_LAYOUTS,
                    )
                    .ok()?
                    .0,
                )
            };
            let measured = serving::measured_batch(&table, &curve);
            Some((table, measured))
        })();
        self.lane_cache_for(&full).by_cores.insert(c, built.clone());
        built
    }

    /// What this version predicts on `n` cores for n = 0..=its cores, at `load` items/s in
    /// jobs of `per_job` items: the best of one batch over them and lanes on them (None
    /// without a live profile: such a model keeps every core, outside the partition), and on
    /// every core shared with other models at each of the partition's slowdowns.
    pub fn share_predictions(&self, load: f64, per_job: f64) -> Option<SharePredictions> {
        self.live_curve()?;
        let tables: Vec<Option<(Arc<PlanTable>, usize)>> =
            (1..=self.topo.len()).map(|c| self.table_on(c)).collect();
        let table = |c: usize| {
            tables
                .get(c.checked_sub(1)?)?
                .as_ref()
                .map(|(t, m)| (t.as_ref(), *m))
        };
        let scale = self.correction();
        let best = |n: usize, slow: f64| {
            crate::planner::partition::best_on(n, &table, scale * slow, load, per_job)
        };
        Some(SharePredictions {
            on: (0..=self.topo.len()).map(|n| best(n, 1.0)).collect(),
            shared: crate::planner::partition::SHARED_SLOWDOWNS
                .iter()
                .map(|&slow| best(self.topo.len(), slow))
                .collect(),
            most: crate::planner::partition::most_on(self.topo.len(), &table, scale, per_job),
        })
    }

    /// The lane count to run now over `share` (None: every core), and every count's predicted
    /// mean job latency: `setting` fixes it (when it can run here), else
    /// [`crate::planner::serving::choose`] decides at `rate` items/s, jobs of `per_job`
    /// items, keeping `current` unless another is clearly better.
    pub fn choose_lanes(
        &self,
        share: Option<&Topology>,
        setting: Option<usize>,
        rate: f64,
        per_job: f64,
        current: usize,
    ) -> (usize, Vec<(usize, f64)>) {
        let share = self.share_topo(share);
        let cores = share.as_ref().map_or(self.topo.len(), Topology::len);
        if let Some(n) = setting {
            let k = serving::lane_counts(cores, n).last().copied().unwrap_or(1);
            return (k, Vec::new());
        }
        let full = match &share {
            None => Some(self.plans.table()),
            Some(_) => self
                .lane_plan(share.as_ref(), 1)
                .and_then(|l| l.tables.first().cloned().map(Arc::new)),
        };
        let Some(full) = full else {
            return (1, Vec::new());
        };
        let sets: Vec<(usize, Arc<Lanes>)> = serving::lane_counts(cores, cores)
            .into_iter()
            .filter(|&k| k > 1)
            .filter_map(|k| self.lane_plan(share.as_ref(), k).map(|l| (k, l)))
            .collect();
        // Capacity counts only batches the live profile measured (see serving::Choice).
        let curve = self.live_curve();
        let measured = |t: &PlanTable| {
            curve
                .as_ref()
                .map_or(t.max_batch(), |c| serving::measured_batch(t, c))
        };
        let tables: Vec<(usize, &PlanTable, usize)> =
            std::iter::once((1, full.as_ref(), measured(&full)))
                .chain(sets.iter().filter_map(|(k, l)| {
                    let t = l.tables.first()?;
                    Some((*k, t, measured(t)))
                }))
                .collect();
        match serving::choose_among(
            &tables,
            self.correction(),
            rate,
            per_job,
            current,
            lanes::HYSTERESIS,
        ) {
            Some((pick, all)) => (
                pick.lanes,
                all.iter().map(|p| (p.lanes, p.latency_ms)).collect(),
            ),
            None => (1, Vec::new()),
        }
    }

    /// Runs a batch of `items` on lane `lane` of `lanes`, with that lane's plan for its size;
    /// the live profile learns from it as from any batch.
    pub fn run_on_lane(
        &self,
        lanes: &Lanes,
        lane: usize,
        inputs: &[Tensor],
        items: usize,
    ) -> Result<(Outputs, Duration)> {
        let plan = lanes
            .tables
            .get(lane)
            .context("no such lane")?
            .for_batch(items)
            .clone();
        let set = self.pool().get(&layout(&plan))?;
        let t0 = Instant::now();
        let (out, per_instance) = set.run_timed(inputs, &plan.shares())?;
        let took = t0.elapsed();
        if let Some(a) = self.adapter().as_mut() {
            a.observe(&plan, &per_instance, items, took);
        }
        log::debug!(
            "model {} v{}: batch of {items} ran in {:.2} ms on lane {lane} of {} ({})",
            self.name(),
            self.label,
            took.as_secs_f64() * 1e3,
            lanes.k,
            plan.summary()
        );
        self.drift
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(took, plan.predicted_latency_ms);
        Ok((out, took))
    }

    /// Starts the instance sets of the most useful plans (max_batch first) and runs each once,
    /// so the first real jobs do not pay for thread start-up and oneDNN primitive creation.
    /// For a new version this is also its check: it must take the configured inputs.
    pub fn warm_up(&self) -> Result<()> {
        let table = self.plans.table();
        let layouts = self.plans.layouts();
        let model = self.model();
        self.pool().prepare(&layouts, |set| {
            specialize_set(&self.cfg.name, &table, &model, set, &self.specialized)
        })?;
        for l in layouts {
            let plan = table
                .plans
                .iter()
                .rev()
                .find(|p| layout(p) == l)
                .context("a layout without a plan")?;
            let set = self.pool().get(&l)?;
            set.run(&model.example_inputs(plan.batch as i64), &plan.shares())
                .with_context(|| format!("warm-up of model '{}' failed", self.name()))?;
        }
        Ok(())
    }

    /// A batch of `items` (≤ max_batch) predicted in ms: the plan table's prediction,
    /// corrected by the median error of the recent batches (within −50…+100 %); None when the
    /// plan has no prediction (a fixed plan without a profile).
    pub fn predict_ms(&self, items: usize) -> Option<f64> {
        let p = self.plans.table().for_batch(items).predicted_latency_ms?;
        Some(p * self.correction())
    }

    /// [`Self::predict_ms`] on one lane of `lanes` (None: on every core, the plan table).
    pub fn predict_on(&self, lanes: Option<&Lanes>, items: usize) -> Option<f64> {
        match lanes {
            None => self.predict_ms(items),
            Some(l) => Some(l.batch_ms(items) * self.correction()).filter(|ms| ms.is_finite()),
        }
    }

    /// The factor recent batches ran over their predictions (their median, within 0.5–2×).
    fn correction(&self) -> f64 {
        let err = self
            .drift
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent_error_pct()
            .unwrap_or(0.0)
            .clamp(-50.0, 100.0);
        1.0 + err / 100.0
    }

    /// Runs `inputs` (a batch of `items` ≤ max_batch) with the plan for its size, and records
    /// its latency against the plan's prediction; returns the outputs and the forward time.
    pub fn run_batch(&self, inputs: &[Tensor], items: usize) -> Result<(Outputs, Duration)> {
        let plan = self.plans.for_batch(items);
        if let Some(done) = self.explore(inputs, items) {
            return Ok(done);
        }
        let set = self.pool().get(&layout(&plan))?;
        let t0 = Instant::now();
        let (out, per_instance) = set.run_timed(inputs, &plan.shares())?;
        let took = t0.elapsed();
        let mut adapter = self.adapter();
        if let Some(a) = adapter.as_mut() {
            a.observe(&plan, &per_instance, items, took);
        }
        log::debug!(
            "model {} v{}: batch of {items} ran in {:.2} ms ({})",
            self.name(),
            self.label,
            took.as_secs_f64() * 1e3,
            plan.summary()
        );
        let mut drift = self.drift.lock().unwrap_or_else(|p| p.into_inner());
        drift.record(took, plan.predicted_latency_ms);
        if let Some(a) = adapter.as_mut() {
            let off = drift
                .error_pct(stats::DRIFT_MIN)
                .is_some_and(|e| e.abs() > adapt::DRIFT_ROUND_PCT);
            if off {
                a.drift_seen();
            }
            // Adapting: the plans follow the host by themselves, no need to tell anyone.
            return Ok((out, took));
        }
        drop(adapter);
        if let Some(err) = drift.warning_due() {
            log::warn!(
                "model {}: batches run {err:+.0}% off the profile's prediction (median of the last {}): has the host changed? Re-profile with `packrat profile --force`, then `systemctl reload packrat`",
                self.name(),
                stats::DRIFT_WINDOW
            );
        }
        Ok((out, took))
    }

    /// Under load, runs this batch on a layout that measures a point idle gaps could not, when
    /// one is due ([`super::explore`]). None: run it on the plan — also when the exploration
    /// cannot run (its layout is started on a helper thread for next time) or fails, so no job
    /// ever pays for exploring with more than time.
    fn explore(&self, inputs: &[Tensor], items: usize) -> Option<(Outputs, Duration)> {
        let table = self.plans.table();
        let e = self.adapter().as_ref()?.explore(items, &table)?;
        let specs = crate::profiler::co_located(&self.topo, e.threads).ok()?;
        // These outputs are served: never from the probe sets once `auto` precision has
        // switched the serving pool to f32 (the probe sets keep the model they started with).
        let pool = self.pool();
        let spare = if Arc::ptr_eq(pool.model(), self.probe_pool.model()) {
            self.probe_pool.clone()
        } else {
            pool.clone()
        };
        let Some(set) = pool.warm(&specs).or_else(|| spare.warm(&specs)) else {
            self.prepare_in_background(spare, vec![specs], None);
            return None;
        };
        let pad = e.padding(items);
        let padded: Vec<Tensor> = if pad == 0 {
            inputs.iter().map(Tensor::shallow_clone).collect()
        } else {
            let rows = self.model().example_inputs(pad as i64);
            inputs
                .iter()
                .zip(&rows)
                .map(|(x, r)| Tensor::f_cat(&[x, r], 0))
                .collect::<Result<_, _>>()
                .ok()?
        };
        let t0 = Instant::now();
        let res = set.run_timed(&padded, &vec![e.batch; e.instances]);
        let took = t0.elapsed();
        let (out, per_instance) = match res {
            Ok(x) => x,
            Err(err) => {
                log::warn!(
                    "model {}: an exploration batch on {}×{} thread(s) failed ({err:#}); it runs on the plan",
                    self.name(),
                    e.instances,
                    e.threads
                );
                return None;
            }
        };
        let out: Outputs = out
            .into_iter()
            .map(|(name, t)| t.f_narrow(0, 0, items as i64).map(|t| (name, t)))
            .collect::<Result<_, _>>()
            .ok()?;
        let ran = Plan {
            batch: e.instances * e.batch,
            cores: self.topo.len(),
            predicted_latency_ms: Some(e.expected_ms),
            baseline_latency_ms: None,
            instances: specs_planned(&set.layout, e.batch),
        };
        log::debug!(
            "model {} v{}: exploration batch of {items} ran in {:.2} ms ({})",
            self.name(),
            self.label,
            took.as_secs_f64() * 1e3,
            ran.summary()
        );
        if let Some(a) = self.adapter().as_mut() {
            a.explored(&e, &ran, &per_instance, items, took);
        }
        Some((out, took))
    }

    /// The batch sizes (lo, hi) that can explore a point only small batches reach, when
    /// exploring is due: a batch whose first job has lo..=hi items should hold at most hi.
    pub fn explore_cap(&self) -> Option<(usize, usize)> {
        let table = self.plans.table();
        self.adapter().as_ref()?.explore_cap(&table)
    }

    fn adapter(&self) -> MutexGuard<'_, Option<Adapter>> {
        self.adapter.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn adapts(&self) -> bool {
        self.adapter().is_some()
    }

    /// An adapter for the next version of this model, grown from this one's live profile.
    pub fn inherit_adapter(
        &self,
        key: Option<crate::planner::profile::ProfileKey>,
    ) -> Option<Adapter> {
        self.adapter().as_ref().map(|a| a.inherit(key))
    }

    /// What STATUS= says of this model's re-plans (None before the first).
    pub fn replan_summary(&self) -> Option<String> {
        self.adapter().as_ref().and_then(Adapter::summary)
    }

    /// Starts or stops adapting (a reload that changed the plan choice), saving what was learnt.
    pub fn set_adapter(&self, adapter: Option<Adapter>) {
        let mut a = self.adapter();
        if let Some(old) = a.as_mut() {
            old.save(true);
        }
        *a = adapter;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Saves the live profile now (before the version is unloaded or the agent stops).
    pub fn save_profile(&self) {
        if let Some(a) = self.adapter().as_mut() {
            a.save(true);
        }
    }

    /// Starts `layouts`' instance sets on a helper thread (one helper at a time), so that
    /// neither the dispatcher nor a job waits for them.
    /// New sets are readied for the sub-batch shapes `table` gives them, when there is one.
    fn prepare_in_background(
        &self,
        pool: Arc<InstancePool>,
        layouts: Vec<Vec<InstanceSpec>>,
        table: Option<PlanTable>,
    ) {
        if self.preparing.swap(true, Ordering::SeqCst) {
            return;
        }
        let busy = self.preparing.clone();
        let name = self.cfg.name.clone();
        let specialized = self.specialized.clone();
        let spawned = std::thread::Builder::new()
            .name("pr-prepare".into())
            .spawn(move || {
                let ready = |set: &InstanceSet| match &table {
                    Some(t) => specialize_set(&name, t, pool.model(), set, &specialized),
                    None => Ok(()),
                };
                if let Err(e) = pool.prepare(&layouts, ready) {
                    log::warn!("model {name}: cannot start instances for a new plan: {e:#}");
                }
                busy.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::warn!("model {}: cannot spawn a helper thread: {e}", self.name());
            self.preparing.store(false, Ordering::SeqCst);
        }
    }

    /// Adopts the pending table once its instance sets are warm (else has them started).
    fn apply_pending(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some((table, _)) = pending.as_ref() else {
            return;
        };
        let pool = self.pool();
        let missing: Vec<Vec<InstanceSpec>> = plans::layouts_of(table)
            .into_iter()
            .filter(|l| pool.warm(l).is_none())
            .collect();
        if !missing.is_empty() {
            self.prepare_in_background(pool, missing, Some(table.clone()));
            return;
        }
        let Some((table, replan)) = pending.take() else {
            return;
        };
        drop(pending);
        log::info!(
            "model {}: re-planned ({}): predicted {:+.1} % weighted latency; max_batch now runs {}",
            self.name(),
            replan.reason.name(),
            replan.predicted_change_pct,
            replan.summary
        );
        plans::log_plans(&self.cfg.name, &table);
        self.set_plans(table);
        if let Some(a) = self.adapter().as_mut() {
            a.switched(replan);
        }
    }

    /// Re-solves on the live profile (when due, or now with `force`) and acts on the answer.
    fn solve(&self, force: Option<Reason>) {
        let decision = {
            let mut guard = self.adapter();
            let Some(a) = guard.as_mut() else { return };
            if force.is_none() && !a.solve_due() {
                return;
            }
            a.solve(&self.plans.table(), force)
        };
        match decision {
            Some(Decision::Switch(table, replan)) => {
                *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((table, replan));
            }
            Some(Decision::Refresh(table)) => self.plans.set(table),
            None => {}
        }
    }

    /// Between batches: re-plan when due, adopt a prepared table, save the live profile.
    pub fn between_batches(&self) {
        if !self.adapts() {
            return;
        }
        self.solve(None);
        self.apply_pending();
        if let Some(a) = self.adapter().as_mut() {
            a.save(false);
        }
    }

    /// `systemctl reload`: re-plans from the live profile. False when this model does not adapt.
    pub fn replan_now(&self) -> bool {
        if !self.adapts() {
            return false;
        }
        self.solve(Some(Reason::Reload));
        self.apply_pending();
        true
    }

    /// Called while no job waits: does one piece of background work — an idle-gap measurement
    /// that fits the delay bound (only when `may_probe`: such a measurement takes every core,
    /// which other models may be using). Returns false when there is nothing to do now.
    pub fn idle_step(&self, queue: &JobQueue, busy: &Busy, may_probe: bool) -> bool {
        self.between_batches();
        if !may_probe {
            return false;
        }
        let probe = {
            let mut guard = self.adapter();
            let Some(a) = guard.as_mut() else {
                return false;
            };
            let bound = a.probe_bound_ms(&self.plans.table());
            match a.next_probe(bound) {
                Some(p) => p,
                None => return false,
            }
        };
        let Ok(layout) = crate::profiler::co_located(&self.topo, probe.threads) else {
            return false;
        };
        let k = layout.len();
        let Some(set) = self
            .pool()
            .warm(&layout)
            .or_else(|| self.probe_pool.warm(&layout))
        else {
            self.prepare_in_background(self.probe_pool.clone(), vec![layout], None);
            return false;
        };
        // Last look: a job that arrived meanwhile goes first.
        if !queue.is_empty() {
            return false;
        }
        self.probe(&set, &probe, k, busy)
    }

    fn probe(&self, set: &InstanceSet, probe: &Probe, k: usize, busy: &Busy) -> bool {
        let inputs = self.model().example_inputs((probe.batch * k) as i64);
        let t0 = Instant::now();
        let res = busy.during(|| set.run(&inputs, &vec![probe.batch; k]));
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        match res {
            Ok(_) => {
                log::debug!(
                    "model {}: idle-gap {}{}×(t={}, b={}): {ms:.2} ms (expected {:.2})",
                    self.name(),
                    if probe.warm_up { "warm-up " } else { "" },
                    k,
                    probe.threads,
                    probe.batch,
                    probe.expected_ms
                );
                if let Some(a) = self.adapter().as_mut() {
                    a.probed(probe, ms);
                }
                true
            }
            Err(e) => {
                log::warn!("model {}: idle-gap measurement failed: {e:#}", self.name());
                false
            }
        }
    }

    /// Live instance threads (tids, cores, thread counts), most recently used set first.
    pub fn instance_infos(&self) -> Vec<InstanceInfo> {
        self.pool().infos()
    }

    /// The warm instances of each lane of `k` over `share` (None: every core; empty when
    /// those lanes are not planned, and for one batch over every core).
    pub fn lane_instances(&self, share: Option<&Topology>, k: usize) -> Vec<Vec<InstanceInfo>> {
        let share = self.share_topo(share);
        if k <= 1 && share.is_none() {
            return Vec::new();
        }
        let key = (share.unwrap_or_else(|| self.topo.clone()).ordered(), k);
        let Some(lanes) = self.lane_cache().sets.get(&key).cloned().flatten() else {
            return Vec::new();
        };
        let pool = self.pool();
        lanes
            .tables
            .iter()
            .map(|t| {
                plans::layouts_of(t)
                    .iter()
                    .filter_map(|l| pool.warm(l))
                    .flat_map(|set| set.infos())
                    .collect()
            })
            .collect()
    }

    pub fn last_plan(&self) -> Option<Plan> {
        self.plans.last()
    }

    /// (median signed, median absolute) prediction error of recent batches, in %.
    pub fn prediction_errors(&self) -> (Option<f64>, Option<f64>) {
        let d = self.drift.lock().unwrap_or_else(|p| p.into_inner());
        (d.recent_error_pct(), d.abs_error_pct(20))
    }

    pub fn adapt_status(&self) -> Option<AdaptStatus> {
        let table = self.plans.table();
        self.adapter().as_ref().map(|a| a.status(&table))
    }

    pub fn precision(&self) -> PrecisionStatus {
        self.precision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_starts(&self) -> SetStarts {
        let (on_dispatch, ahead) = self.pool().starts();
        SetStarts { ahead, on_dispatch }
    }

    pub fn static_shapes(&self) -> Vec<Specialized> {
        self.specialized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `layout` as a plan's instances, each given `batch` items.
fn specs_planned(layout: &[InstanceSpec], batch: usize) -> Vec<crate::planner::PlannedInstance> {
    layout
        .iter()
        .map(|s| crate::planner::PlannedInstance {
            threads: s.threads,
            batch,
            cores: s.cores.clone(),
        })
        .collect()
}

/// Readies a new instance set for the sub-batch shapes `table` gives its layout, smallest batch
/// first (see [`crate::engine::Session::specialize`]), and records what the engine found. An
/// engine that fails to specialize keeps serving through its general path: a warning, not an
/// error.
fn specialize_set(
    name: &str,
    table: &PlanTable,
    model: &Model,
    set: &InstanceSet,
    found: &Mutex<Vec<Specialized>>,
) -> Result<()> {
    for plan in table.plans.iter().filter(|p| layout(p) == set.layout) {
        let inputs = model.example_inputs(plan.batch as i64);
        match set.specialize(&inputs, &plan.shares()) {
            Ok(done) => {
                for s in &done {
                    log::info!(
                        "model {name}: {} thread(s), sub-batch {}: static shape {:.2} ms, dynamic {:.2} ms, paired ratio {:.3} (compiled in {:.0} ms): {}",
                        s.threads,
                        s.batch,
                        s.static_ms,
                        s.dynamic_ms,
                        s.ratio,
                        s.compile_ms,
                        if s.kept { "static kept" } else { "dynamic kept" }
                    );
                }
                found.lock().unwrap_or_else(|p| p.into_inner()).extend(done);
            }
            Err(e) => {
                log::warn!("model {name}: serving with dynamic shapes only: {e:#}");
                break;
            }
        }
    }
    Ok(())
}
