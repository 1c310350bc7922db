//! The per-model queue and its dispatcher thread: claimed jobs wait here; the dispatcher loads
//! them, coalesces waiting jobs into one batch up to `max_batch`, runs the batch with the plan
//! for its size on the matching instance set, splits the outputs back per job and hands them
//! to the spool.
//!
//! Reconfiguring (a new plan table) swaps an `Arc` between batches: jobs stay queued, the batch
//! in flight finishes on the old instances, so nothing is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tch::Tensor;

use crate::config::ModelConfig;
use crate::instances::{InstanceInfo, InstanceSet, InstanceSpec};
use crate::model::Model;
use crate::planner::{Plan, PlanTable};
use crate::spool::{Job, Spool};
use crate::status::{ModelStatus, Stats};
use crate::tensorfile::{self, Format, JobError};

/// How many instance sets (layouts) a model keeps warm at once.
const MAX_SETS: usize = 8;
/// Batches over which measured latency is compared with the plan's prediction.
const DRIFT_WINDOW: usize = 50;
const DRIFT_WARN_PCT: f64 = 25.0;

type Outputs = Vec<(String, Tensor)>;

struct Loaded {
    job: Job,
    format: Format,
    inputs: Vec<Tensor>,
    items: usize,
}

pub struct ModelRuntime {
    pub cfg: ModelConfig,
    pub model: Arc<Model>,
    pub spool: Spool,
    plans: RwLock<Arc<PlanTable>>,
    sets: Mutex<Vec<(Vec<InstanceSpec>, Arc<InstanceSet>)>>,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stopping: AtomicBool,
    pub stats: Mutex<Stats>,
    last_plan: Mutex<Option<Plan>>,
    drift_warned: Mutex<Option<Instant>>,
}

impl ModelRuntime {
    pub fn new(
        cfg: ModelConfig,
        model: Arc<Model>,
        spool: Spool,
        plans: PlanTable,
    ) -> ModelRuntime {
        ModelRuntime {
            cfg,
            model,
            spool,
            plans: RwLock::new(Arc::new(plans)),
            sets: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            stats: Mutex::new(Stats::default()),
            last_plan: Mutex::new(None),
            drift_warned: Mutex::new(None),
        }
    }

    pub fn plans(&self) -> Arc<PlanTable> {
        self.plans
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Switches to a new plan table; instance sets no longer used are dropped (their threads
    /// exit once the batch in flight, if any, is done with them).
    pub fn set_plans(&self, table: PlanTable) {
        let layouts: Vec<Vec<InstanceSpec>> = table.plans.iter().map(|p| p.layout()).collect();
        *self.plans.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.lock_sets().retain(|(l, _)| layouts.contains(l));
    }

    fn lock_sets(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<InstanceSpec>, Arc<InstanceSet>)>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance set for a layout, started on first use (most recently used kept first).
    pub fn instance_set(&self, layout: &[InstanceSpec]) -> Result<Arc<InstanceSet>> {
        let mut sets = self.lock_sets();
        if let Some(i) = sets.iter().position(|(l, _)| l == layout) {
            let entry = sets.remove(i);
            let set = entry.1.clone();
            sets.insert(0, entry);
            return Ok(set);
        }
        let label: String = self.cfg.name.chars().take(6).collect();
        let set = Arc::new(InstanceSet::start(
            self.model.clone(),
            layout.to_vec(),
            &label,
        )?);
        sets.insert(0, (layout.to_vec(), set.clone()));
        sets.truncate(MAX_SETS);
        Ok(set)
    }

    /// Starts the instance sets of the most useful plans (max_batch first) and runs each once,
    /// so the first real jobs do not pay for thread start-up and oneDNN primitive creation.
    pub fn warm_up(&self) -> Result<()> {
        let table = self.plans();
        let mut seen: Vec<Vec<InstanceSpec>> = Vec::new();
        for plan in table.plans.iter().rev() {
            let layout = plan.layout();
            if seen.contains(&layout) || seen.len() >= MAX_SETS {
                continue;
            }
            let set = self.instance_set(&layout)?;
            let inputs = self.model.example_inputs(plan.batch as i64);
            set.run(&inputs, &plan.shares())
                .with_context(|| format!("warm-up of model '{}' failed", self.cfg.name))?;
            seen.push(layout);
        }
        Ok(())
    }

    /// Runs `inputs` (a batch of `items`) with the plan for its size, and records its latency
    /// against the plan's prediction.
    pub fn run_batch(&self, inputs: &[Tensor], items: usize) -> Result<(Outputs, Plan)> {
        let table = self.plans();
        let plan = table.for_batch(items).clone();
        let set = self.instance_set(&plan.layout())?;
        let shares = if plan.batch == items {
            plan.shares()
        } else {
            crate::instances::scale_shares(&plan.shares(), items)
        };
        let t0 = Instant::now();
        let (out, _) = set.run(inputs, &shares)?;
        let took = t0.elapsed();
        log::debug!(
            "model {}: batch of {items} ran in {:.2} ms ({})",
            self.cfg.name,
            took.as_secs_f64() * 1e3,
            plan.summary()
        );
        let drift = {
            let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            st.record_batch(took, plan.predicted_latency_ms);
            st.prediction_error_pct(DRIFT_WINDOW)
        };
        if let Some(err) = drift.filter(|e| e.abs() > DRIFT_WARN_PCT) {
            let mut last = self.drift_warned.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(600)) {
                *last = Some(Instant::now());
                log::warn!(
                    "model {}: batches run {err:+.0}% off the profile's prediction (median of the last {DRIFT_WINDOW}): has the host changed? Re-profile with `packrat profile --force`, then `systemctl reload packrat`",
                    self.cfg.name
                );
            }
        }
        *self.last_plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan.clone());
        Ok((out, plan))
    }

    pub fn enqueue(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(jobs);
        self.wake.notify_one();
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Asks the dispatcher to finish what is queued, then exit.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    fn next_job(&self, block: bool) -> Option<Job> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(j) = q.pop_front() {
                return Some(j);
            }
            if !block || self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            q = self
                .wake
                .wait_timeout(q, Duration::from_millis(500))
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn fail(&self, job: &Job, err: &JobError) {
        log::warn!(
            "model {}: job {} failed: {} ({})",
            self.cfg.name,
            job.name,
            err.message,
            err.kind
        );
        if let Err(e) = self.spool.fail(job, err) {
            log::error!(
                "model {}: cannot move {} to failed/: {e:#}",
                self.cfg.name,
                job.name
            );
        }
        self.stats.lock().map(|mut s| s.failed += 1).ok();
    }

    fn load(&self, job: Job) -> Option<Loaded> {
        let t0 = Instant::now();
        let res = (|| {
            if let Some(e) = &job.refused {
                return Err(e.clone());
            }
            let format = Format::from_path(&job.path).ok_or_else(|| {
                JobError::new(
                    "unknown_format",
                    format!(
                        "'{}' has no known extension: name job files *.npy, *.npz or *.safetensors",
                        job.name
                    ),
                )
            })?;
            let named = tensorfile::read(&job.path, format, self.cfg.max_job_bytes)?;
            let (inputs, items) = self.model.match_inputs(named)?;
            Ok((format, inputs, items as usize))
        })();
        match res {
            Ok((format, inputs, items)) => {
                log::debug!(
                    "model {}: {} loaded in {:.2} ms",
                    self.cfg.name,
                    job.name,
                    t0.elapsed().as_secs_f64() * 1e3
                );
                Some(Loaded {
                    job,
                    format,
                    inputs,
                    items,
                })
            }
            Err(e) => {
                self.fail(&job, &e);
                None
            }
        }
    }

    /// The dispatcher: runs until stopped and the queue is empty.
    pub fn dispatch(self: Arc<Self>) {
        let max = self.cfg.max_batch;
        let mut carry: Option<Loaded> = None;
        loop {
            let first = match carry.take() {
                Some(l) => l,
                None => match self.next_job(true) {
                    Some(j) => match self.load(j) {
                        Some(l) => l,
                        None => continue,
                    },
                    None => break,
                },
            };
            let mut group = vec![first];
            let mut total = group[0].items;
            // Coalesce what is already waiting; do not wait for more.
            while total < max {
                let Some(j) = self.next_job(false) else { break };
                let Some(l) = self.load(j) else { continue };
                if total + l.items <= max {
                    total += l.items;
                    group.push(l);
                } else {
                    carry = Some(l);
                    break;
                }
            }
            self.run_group(group);
        }
        log::debug!("model {}: dispatcher drained and stopped", self.cfg.name);
    }

    fn run_group(&self, group: Vec<Loaded>) {
        let result = if group.len() == 1 {
            self.run_one(&group[0]).map(|o| vec![o])
        } else {
            self.run_coalesced(&group)
        };
        match result {
            Ok(outs) => {
                for (l, out) in group.iter().zip(outs) {
                    self.finish(l, &out);
                }
            }
            Err(e) if group.len() > 1 => {
                log::warn!(
                    "model {}: coalesced batch of {} jobs failed ({e:#}); running them one by one",
                    self.cfg.name,
                    group.len()
                );
                for l in &group {
                    match self.run_one(l) {
                        Ok(out) => self.finish(l, &out),
                        Err(e) => {
                            self.fail(&l.job, &JobError::new("model_error", format!("{e:#}")))
                        }
                    }
                }
            }
            Err(e) => self.fail(
                &group[0].job,
                &JobError::new("model_error", format!("{e:#}")),
            ),
        }
    }

    fn finish(&self, l: &Loaded, out: &Outputs) {
        let t0 = Instant::now();
        let res = self.spool.complete(&l.job, l.format, out);
        log::debug!(
            "model {}: {} written in {:.2} ms",
            self.cfg.name,
            l.job.name,
            t0.elapsed().as_secs_f64() * 1e3
        );
        match res {
            Ok(path) => {
                let dt = l.job.claimed.elapsed();
                log::info!(
                    "model {}: {} ({} items) -> {} in {:.1} ms",
                    self.cfg.name,
                    l.job.name,
                    l.items,
                    path.display(),
                    dt.as_secs_f64() * 1e3
                );
                self.stats.lock().map(|mut s| s.record_done(dt)).ok();
            }
            Err(e) => self.fail(
                &l.job,
                &JobError::new("output_error", format!("cannot write the output: {e:#}")),
            ),
        }
    }

    /// One job, in chunks of max_batch when it is larger.
    fn run_one(&self, l: &Loaded) -> Result<Outputs> {
        let max = self.cfg.max_batch;
        let mut parts = Vec::new();
        let mut off = 0;
        while off < l.items {
            let n = (l.items - off).min(max);
            let inputs: Vec<Tensor> = l
                .inputs
                .iter()
                .map(|t| t.narrow(0, off as i64, n as i64))
                .collect();
            parts.push(self.run_batch(&inputs, n)?.0);
            off += n;
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let names: Vec<String> = parts[0].iter().map(|(n, _)| n.clone()).collect();
        names
            .into_iter()
            .enumerate()
            .map(|(k, name)| {
                Ok((
                    name,
                    Tensor::f_cat(&parts.iter().map(|p| &p[k].1).collect::<Vec<_>>(), 0)?,
                ))
            })
            .collect()
    }

    fn run_coalesced(&self, group: &[Loaded]) -> Result<Vec<Outputs>> {
        let total: usize = group.iter().map(|l| l.items).sum();
        let n_inputs = group[0].inputs.len();
        let inputs: Vec<Tensor> = (0..n_inputs)
            .map(|k| Tensor::f_cat(&group.iter().map(|l| &l.inputs[k]).collect::<Vec<_>>(), 0))
            .collect::<Result<_, _>>()?;
        let (out, _) = self.run_batch(&inputs, total)?;
        // Split every output back along the batch dimension, job by job.
        let mut per_job: Vec<Outputs> = (0..group.len()).map(|_| Vec::new()).collect();
        for (name, t) in out {
            if t.size().first().copied() != Some(total as i64) {
                return Err(anyhow!("output '{name}' does not have the batch as dimension 0, so it cannot be split per job"));
            }
            let mut off = 0i64;
            for (j, l) in group.iter().enumerate() {
                per_job[j].push((name.clone(), t.narrow(0, off, l.items as i64)));
                off += l.items as i64;
            }
        }
        Ok(per_job)
    }

    /// Live instance threads (tids, cores, thread counts), most recently used set first.
    pub fn instance_infos(&self) -> Vec<InstanceInfo> {
        self.lock_sets()
            .iter()
            .flat_map(|(_, s)| s.infos())
            .collect()
    }

    pub fn status(&self) -> ModelStatus {
        let table = self.plans();
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        ModelStatus {
            name: self.cfg.name.clone(),
            source: self.cfg.source.clone(),
            spool: self.spool.root.display().to_string(),
            plan_source: table.source,
            max_batch: table.max_batch(),
            plan_max_batch: table.for_batch(table.max_batch()).clone(),
            last_plan: self.last_plan.lock().map(|p| p.clone()).unwrap_or(None),
            instances: self.instance_infos(),
            queue_depth: self.queue_depth(),
            jobs_done: stats.done,
            jobs_failed: stats.failed,
            batches: stats.batches,
            latency_p50_ms: stats.percentile(50.0),
            latency_p99_ms: stats.percentile(99.0),
            prediction_error_pct: stats
                .prediction_error_pct(DRIFT_WINDOW.min(stats.batches as usize).max(1)),
        }
    }
}

/// Models by name, for the daemon.
pub type Runtimes = HashMap<String, Arc<ModelRuntime>>;
