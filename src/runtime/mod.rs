//! The runtime of one model: everything between the spool and the engine. Scans of incoming/
//! feed its [`queue`]; its [`dispatcher`] thread claims jobs only as it runs them, in batches
//! with the plan for their size ([`plans`]) on warm instance sets from the engine's pool; it
//! counts what happened ([`stats`]), holds jobs while the spool cannot be written
//! ([`storage`]), and knows which precision the model computes in and why ([`precision`]).
//!
//! Reconfiguring (a new plan table) swaps an `Arc` between batches: jobs stay queued, the batch
//! in flight finishes on the old instances, so nothing is dropped. A `plan = "auto"` model
//! re-plans by itself ([`adapt`]): from every batch it runs and from measurements it makes only
//! while nothing waits; a new table's instance sets are started on a helper thread and the
//! table takes effect only once they are warm.

pub mod adapt;
mod dispatcher;
pub mod plans;
pub mod precision;
pub mod queue;
pub mod stats;
pub mod storage;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::ModelConfig;
use crate::engine::{
    InstanceInfo, InstancePool, InstanceSet, InstanceSpec, Model, Outputs, Specialized,
};
use crate::planner::topology::Topology;
use crate::planner::{Plan, PlanSource, PlanTable};
use crate::spool::{Job, JobError, Spool, StorageError};
use adapt::{AdaptStatus, Adapter, Decision, Probe, Reason, Replan};
use plans::{layout, PlanState};
use precision::{PrecisionStatus, Resolved};
use queue::JobQueue;
use stats::{Drift, Stats};
use storage::StorageHealth;

/// Instance sets a pool may hold: the table's layouts (bounded by `max_layouts`), the next
/// table's while it is being prepared, and a margin.
fn pool_capacity(cfg: &ModelConfig) -> usize {
    2 * cfg.adapt.max_layouts + 4
}

/// Instance sets started so far: by warm-up and helper threads (ahead of use), and on the
/// dispatch path in front of a batch (zero after warm-up, unless a set died).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SetStarts {
    pub ahead: u64,
    pub on_dispatch: u64,
}

/// A model's state as `packrat status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    pub source: String,
    pub spool: String,
    pub plan_source: PlanSource,
    pub max_batch: usize,
    /// The plan for max_batch, and the one used by the last batch.
    pub plan_max_batch: Plan,
    pub last_plan: Option<Plan>,
    pub instances: Vec<InstanceInfo>,
    pub queue_depth: usize,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub batches: u64,
    /// Sum of every batch's forward time, in ms (divide by `batches` for the mean).
    pub batch_ms_sum: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Median (measured − predicted) / predicted of the last 50 planned batches, in %.
    pub prediction_error_pct: Option<f64>,
    /// Median |measured − predicted| / predicted of the last 20 planned batches, in %.
    #[serde(default)]
    pub prediction_abs_error_pct: Option<f64>,
    /// The plan for every batch size 1..=max_batch now in force.
    #[serde(default)]
    pub plan_table: Vec<Plan>,
    /// Why jobs are held (disk full, spool not writable), while they are.
    #[serde(default)]
    pub storage_problem: Option<String>,
    #[serde(default)]
    pub disk_full: bool,
    #[serde(default)]
    pub job_latency: stats::Histogram,
    #[serde(default)]
    pub batch_latency: stats::Histogram,
    /// This agent's claim folder under the model's `claims/`.
    #[serde(default)]
    pub agent_id: String,
    pub engine: String,
    pub precision: PrecisionStatus,
    /// Online adaptation (`plan = "auto"` with `adapt` on).
    #[serde(default)]
    pub adapt: Option<AdaptStatus>,
    #[serde(default)]
    pub instance_sets_started: SetStarts,
    /// Sub-batch sizes weighed for a static shape at warm-up (OpenVINO), instance by instance.
    #[serde(default)]
    pub static_shapes: Vec<Specialized>,
}

pub struct ModelRuntime {
    pub cfg: ModelConfig,
    pub spool: Spool,
    plans: PlanState,
    /// Replaced whole when `auto` precision falls back to f32.
    pool: RwLock<Arc<InstancePool>>,
    queue: JobQueue,
    stats: Mutex<Stats>,
    drift: Mutex<Drift>,
    storage: Mutex<StorageHealth>,
    /// When the batch now running started (None: idle). The watchdog reads it.
    busy_since: Mutex<Option<Instant>>,
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
}

impl ModelRuntime {
    pub fn new(
        cfg: ModelConfig,
        resolved: Resolved,
        spool: Spool,
        table: PlanTable,
        topo: Topology,
        adapter: Option<Adapter>,
    ) -> ModelRuntime {
        let pool = InstancePool::new(resolved.model.clone(), &cfg.name, pool_capacity(&cfg));
        let probe_pool = InstancePool::new(resolved.model, "probe", 8);
        ModelRuntime {
            topo,
            adapter: Mutex::new(adapter),
            probe_pool: Arc::new(probe_pool),
            pending: Mutex::new(None),
            preparing: Arc::new(AtomicBool::new(false)),
            specialized: Arc::new(Mutex::new(Vec::new())),
            cfg,
            spool,
            plans: PlanState::new(table),
            pool: RwLock::new(Arc::new(pool)),
            queue: JobQueue::default(),
            stats: Mutex::new(Stats::default()),
            drift: Mutex::new(Drift::default()),
            storage: Mutex::new(StorageHealth::default()),
            busy_since: Mutex::new(None),
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

    /// For `auto` precision while bf16 serves: checks one real job (its inputs and what was
    /// served) against the f32 twin, when nothing waits and fewer than
    /// [`precision::JOB_CHECKS`] were checked; past the tolerance, switches to f32.
    fn check_precision(&self, inputs: &[Tensor], served: &Outputs) {
        let mut twin = self.twin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f32) = twin.clone() else { return };
        let mut status = self.precision.lock().unwrap_or_else(|p| p.into_inner());
        if !self.queue.is_empty() || status.jobs_checked >= precision::JOB_CHECKS {
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
                    self.cfg.name
                );
                status.in_use = f32.precision.name().into();
                status.reason = Some(why);
                *twin = None;
                drop(status);
                *self.pool.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(
                    InstancePool::new(f32, &self.cfg.name, pool_capacity(&self.cfg)),
                );
                if let Err(e) = self.warm_up() {
                    log::error!("model {}: warm-up in f32 failed: {e:#}", self.cfg.name);
                }
            }
            Err(e) => log::warn!(
                "model {}: cannot check bf16 against f32: {e:#}",
                self.cfg.name
            ),
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn plan_table(&self) -> Arc<PlanTable> {
        self.plans.table()
    }

    /// Switches to a new plan table; instance sets it no longer uses are dropped (their threads
    /// exit once the batch in flight, if any, is done with them).
    pub fn set_plans(&self, table: PlanTable) {
        self.plans.set(table);
        self.pool().retain(&self.plans.layouts());
    }

    /// Starts the instance sets of the most useful plans (max_batch first) and runs each once,
    /// so the first real jobs do not pay for thread start-up and oneDNN primitive creation.
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
            set.run(
                &self.model().example_inputs(plan.batch as i64),
                &plan.shares(),
            )
            .with_context(|| format!("warm-up of model '{}' failed", self.cfg.name))?;
        }
        Ok(())
    }

    /// Tells the dispatcher what waits in incoming/ (nothing is claimed here).
    pub fn offer_waiting(&self) {
        self.queue.offer(self.spool.scan());
    }

    /// Takes over the jobs of agents on this spool that are gone; returns how many will run.
    pub fn take_over(&self) -> usize {
        let jobs = self.spool.take_over();
        let n = jobs.len();
        self.queue.push_owned(jobs);
        n
    }

    fn storage(&self) -> MutexGuard<'_, StorageHealth> {
        self.storage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a job whose outcome could not be written, to retry after a back-off.
    fn hold(&self, mut job: Job, err: &StorageError) {
        // It ran without crashing: a retry is not a crash.
        self.spool.forget_runs(&mut job);
        let delay = self.storage().failed(&self.cfg.name, err);
        self.queue.pause(delay);
        self.queue.push_owned(vec![job]);
    }

    /// Why jobs are held, while the spool cannot be written.
    pub fn storage_problem(&self) -> Option<String> {
        self.storage().problem()
    }

    /// A write went through: any storage trouble is over.
    fn storage_ok(&self) {
        self.storage().ok(&self.cfg.name);
        self.queue.resume();
    }

    /// Runs `inputs` (a batch of `items` ≤ max_batch) with the plan for its size, and records
    /// its latency against the plan's prediction.
    pub fn run_batch(&self, inputs: &[Tensor], items: usize) -> Result<Outputs> {
        let plan = self.plans.for_batch(items);
        let set = self.pool().get(&layout(&plan))?;
        let t0 = Instant::now();
        let (out, per_instance) = set.run_timed(inputs, &plan.shares())?;
        let took = t0.elapsed();
        let mut adapter = self.adapter();
        if let Some(a) = adapter.as_mut() {
            a.observe(&plan, &per_instance, items);
        }
        log::debug!(
            "model {}: batch of {items} ran in {:.2} ms ({})",
            self.cfg.name,
            took.as_secs_f64() * 1e3,
            plan.summary()
        );
        self.stats().record_batch(took);
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
            return Ok(out);
        }
        drop(adapter);
        if let Some(err) = drift.warning_due() {
            log::warn!(
                "model {}: batches run {err:+.0}% off the profile's prediction (median of the last {}): has the host changed? Re-profile with `packrat profile --force`, then `systemctl reload packrat`",
                self.cfg.name,
                stats::DRIFT_WINDOW
            );
        }
        Ok(out)
    }

    fn adapter(&self) -> MutexGuard<'_, Option<Adapter>> {
        self.adapter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn adapts(&self) -> bool {
        self.adapter().is_some()
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
            log::warn!("model {}: cannot spawn a helper thread: {e}", self.cfg.name);
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
            self.cfg.name,
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
    /// that fits the delay bound. Returns false when there is nothing to do now.
    pub fn idle_step(&self) -> bool {
        self.between_batches();
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
        if !self.queue.is_empty() {
            return false;
        }
        self.probe(&set, &probe, k)
    }

    fn probe(&self, set: &crate::engine::InstanceSet, probe: &Probe, k: usize) -> bool {
        let inputs = self.model().example_inputs((probe.batch * k) as i64);
        self.busy(true);
        let t0 = Instant::now();
        let res = set.run(&inputs, &vec![probe.batch; k]);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        self.busy(false);
        match res {
            Ok(_) => {
                log::debug!(
                    "model {}: idle-gap {}{}×(t={}, b={}): {ms:.2} ms (expected {:.2})",
                    self.cfg.name,
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
                log::warn!(
                    "model {}: idle-gap measurement failed: {e:#}",
                    self.cfg.name
                );
                false
            }
        }
    }

    /// Fails a job with a record; if the record cannot be written, holds the job instead.
    fn fail(&self, job: Job, err: &JobError) {
        match self.spool.fail(&job, err) {
            Ok(()) => {
                log::warn!(
                    "model {}: job {} failed: {} ({})",
                    self.cfg.name,
                    job.name,
                    err.message,
                    err.kind
                );
                self.storage_ok();
                self.stats().failed += 1;
            }
            Err(e) => self.hold(job, &e),
        }
    }

    /// Marks a batch as running (`true`) or done; see [`ModelRuntime::stuck_for`].
    fn busy(&self, running: bool) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = running.then(Instant::now);
    }

    /// How long the batch now running has run, if one is.
    pub fn stuck_for(&self) -> Option<std::time::Duration> {
        self.busy_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Starts the dispatcher thread; it runs until [`ModelRuntime::stop`].
    pub fn spawn_dispatcher(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let rt = self.clone();
        std::thread::Builder::new()
            .name(
                format!("dispatch-{}", rt.cfg.name)
                    .chars()
                    .take(15)
                    .collect(),
            )
            .spawn(move || dispatcher::run(&rt))
    }

    /// Asks the dispatcher to finish the batch in flight, then exit.
    pub fn stop(&self) {
        self.queue.stop();
    }

    /// After the dispatcher stopped: gives jobs this agent still owns back to incoming/ and
    /// leaves the spool.
    pub fn give_back(&self) {
        let jobs = self.queue.take_owned();
        if !jobs.is_empty() {
            log::info!(
                "model {}: giving {} claimed job(s) back to incoming/",
                self.cfg.name,
                jobs.len()
            );
        }
        for job in &jobs {
            self.spool.release(job);
        }
        if let Some(a) = self.adapter().as_mut() {
            a.save(true);
        }
        self.spool.leave();
    }

    /// Live instance threads (tids, cores, thread counts), most recently used set first.
    pub fn instance_infos(&self) -> Vec<InstanceInfo> {
        self.pool().infos()
    }

    pub fn status(&self) -> ModelStatus {
        let table = self.plans.table();
        let (storage_problem, disk_full) = {
            let s = self.storage();
            (s.problem(), s.disk_full())
        };
        let (prediction_error_pct, prediction_abs_error_pct) = {
            let d = self.drift.lock().unwrap_or_else(|p| p.into_inner());
            (d.recent_error_pct(), d.abs_error_pct(20))
        };
        // Never hold `stats` while taking the adapter: run_batch takes them the other way round.
        let adapt = self.adapter().as_ref().map(|a| a.status(&table));
        let stats = self.stats();
        ModelStatus {
            name: self.cfg.name.clone(),
            source: self.cfg.source.to_string(),
            spool: self.spool.root.display().to_string(),
            plan_source: table.source,
            max_batch: table.max_batch(),
            plan_max_batch: table.for_batch(table.max_batch()).clone(),
            last_plan: self.plans.last(),
            instances: self.instance_infos(),
            queue_depth: self.queue.len(),
            jobs_done: stats.done,
            jobs_failed: stats.failed,
            batches: stats.batches,
            batch_ms_sum: stats.batch_ms_sum,
            latency_p50_ms: stats.percentile(50.0),
            latency_p99_ms: stats.percentile(99.0),
            prediction_error_pct,
            prediction_abs_error_pct,
            plan_table: table.plans.clone(),
            storage_problem,
            disk_full,
            job_latency: stats.job_latency.clone(),
            batch_latency: stats.batch_latency.clone(),
            agent_id: self.spool.agent_id().to_string(),
            engine: self.model().engine.name().into(),
            precision: self
                .precision
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            adapt,
            instance_sets_started: {
                let (on_dispatch, ahead) = self.pool().starts();
                SetStarts { ahead, on_dispatch }
            },
            static_shapes: self
                .specialized
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
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
