//! The runtime of one model: everything between the spool and the engine. Scans of incoming/
//! feed its [`queue`]; its [`dispatcher`] thread owns the serving loop: it claims jobs only as
//! it runs them, in batches on the serving [`version`] (a loaded model: engine, instance sets,
//! plan table, live profile), counts what happened ([`stats`], [`lifecycle`]) and holds jobs
//! while the spool cannot be written ([`storage`]). A `plan = "auto"` version keeps its
//! profile true while it serves ([`adapt`]): from every batch, from idle gaps, and under load
//! from the odd batch run on another layout ([`explore`]). Jobs run earliest deadline first;
//! with `on_deadline = "fail"` those that cannot make it are failed unrun ([`deadline`]).
//!
//! **Versions.** A new version (a new folder `<dir>/<N>/`, or a config change on SIGHUP) is
//! built on a helper thread beside the serving one ([`load`]): loaded, checked, planned and
//! warmed. The dispatcher switches to it between batches: jobs it claimed before run on the
//! old version, jobs claimed after on the new one. The old version is unloaded once its last
//! batch is done; a version that fails is refused and the old one serves on. At most two
//! versions are in memory: a load waits until the last version switched away from is gone.

pub mod adapt;
pub mod deadline;
mod dispatcher;
pub mod explore;
pub mod lanes;
pub mod lifecycle;
pub mod load;
pub mod partition;
pub mod plans;
pub mod precision;
pub mod queue;
pub mod stats;
pub mod storage;
pub mod version;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::engine::{InstanceInfo, Specialized};
use crate::planner::topology::Topology;
use crate::planner::{Plan, PlanSource};
use crate::spool::{ErrorKind, Job, JobError, Spool, StorageError};
use adapt::AdaptStatus;
use deadline::DeadlineStatus;
use lanes::{Arrivals, LanesStatus};
use lifecycle::{Lifecycle, VersionsStatus};
use load::Place;
use partition::{Demand, ShareStatus};
use precision::PrecisionStatus;
use queue::{JobQueue, Pending};
pub use stats::SetStarts;
use stats::{Busy, Stats};
use storage::StorageHealth;
use version::ModelVersion;

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
    /// Which version serves, which are loaded, swaps, refused versions, outcomes per version.
    #[serde(default)]
    pub versions: VersionsStatus,
    /// The deadline settings, and how many jobs with a deadline finished on time, late, or
    /// expired unrun.
    #[serde(default)]
    pub deadlines: DeadlineStatus,
    /// Batches in flight at once (lanes).
    #[serde(default)]
    pub concurrency: LanesStatus,
    /// Its cores in the joint partition of several models.
    #[serde(default)]
    pub share: ShareStatus,
}

pub struct ModelRuntime {
    pub name: String,
    pub spool: Spool,
    place: Place,
    /// The config as last read: the dispatch settings (batch delay, job size limit) apply at
    /// once; what changes the model makes a new version.
    settings: RwLock<ModelConfig>,
    serving: RwLock<Arc<ModelVersion>>,
    /// Built and warm, waiting for the dispatcher to switch to it.
    staged: Mutex<Option<(Arc<ModelVersion>, Instant)>>,
    /// The version last switched away from, until its last batch lets go of it.
    retiring: Mutex<Option<(String, Weak<ModelVersion>)>>,
    /// The config of the next version to build, and whether a loader thread runs.
    next: Mutex<Option<ModelConfig>>,
    loading: AtomicBool,
    lifecycle: Mutex<Lifecycle>,
    queue: JobQueue,
    stats: Mutex<Stats>,
    storage: Mutex<StorageHealth>,
    busy: Busy,
    arrivals: Mutex<Arrivals>,
    lanes: Mutex<LanesStatus>,
    /// The cores the joint partition gives this model (None: every core; empty: none, while
    /// it has no work).
    share: RwLock<Option<Topology>>,
    share_status: Mutex<ShareStatus>,
}

impl ModelRuntime {
    pub fn new(version: ModelVersion, spool: Spool, place: Place) -> ModelRuntime {
        ModelRuntime {
            name: version.cfg.name.clone(),
            settings: RwLock::new(version.cfg.clone()),
            lifecycle: Mutex::new(Lifecycle::new(&version.label)),
            serving: RwLock::new(Arc::new(version)),
            staged: Mutex::new(None),
            retiring: Mutex::new(None),
            next: Mutex::new(None),
            loading: AtomicBool::new(false),
            spool,
            place,
            queue: JobQueue::default(),
            stats: Mutex::new(Stats::default()),
            storage: Mutex::new(StorageHealth::default()),
            busy: Busy::default(),
            arrivals: Mutex::new(Arrivals::default()),
            lanes: Mutex::new(LanesStatus::default()),
            share: RwLock::new(None),
            share_status: Mutex::new(ShareStatus::default()),
        }
    }

    /// The cores this model may run on now (None: every core; empty: none for now).
    pub fn share(&self) -> Option<Topology> {
        self.share
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The partition moves this model to `share` (its next batch runs there).
    pub fn set_share(&self, share: Option<Topology>) {
        *self.share.write().unwrap_or_else(|p| p.into_inner()) = share;
        self.queue.nudge();
    }

    /// What the partition last said of this model.
    pub fn set_share_status(&self, status: ShareStatus) {
        *self.share_status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Jobs wait for this model (claimed or not).
    pub fn has_waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The cores this model's versions plan on.
    pub fn topology(&self) -> &Topology {
        &self.place.topo
    }

    /// This model's load and what it would predict on each core count, for the partition
    /// (None: it has no live profile to predict from — a fixed plan, or `adapt = false`).
    pub fn demand(&self) -> Option<Demand> {
        let v = self.serving();
        let backlog = self.queue.len();
        let per_job = self.stats().items_per_job();
        let jobs_per_s = self.arrival_rate() + backlog as f64 / partition::DRAIN_S;
        let load = jobs_per_s * per_job;
        let predicted = v.share_predictions(load, per_job)?;
        let cfg = self.settings();
        Some(Demand {
            // Arrivals count for a few seconds after the last: it keeps its cores a while.
            busy: jobs_per_s > 0.0,
            waiting: backlog > 0,
            jobs_per_s,
            load,
            on: predicted.on,
            shared: predicted.shared,
            most: predicted.most,
            weight: cfg.weight,
            min_cores: cfg.min_cores.unwrap_or(1),
        })
    }

    fn lanes_status(&self) -> MutexGuard<'_, LanesStatus> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs per second arriving in incoming/ lately.
    pub fn arrival_rate(&self) -> f64 {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rate()
    }

    /// The dispatcher chose `k` lanes at `rate` jobs/s (backlog included).
    fn lanes_chosen(&self, k: usize, rate: f64, predicted: Vec<(usize, f64)>, switched: bool) {
        let mut s = self.lanes_status();
        s.lanes = k;
        s.arrival_rate = rate;
        s.predicted_ms = predicted
            .into_iter()
            .map(|(k, ms)| (k, Some(ms).filter(|m| m.is_finite())))
            .collect();
        s.switches += u64::from(switched);
    }

    fn lanes_in_flight(&self, n: usize) {
        let mut s = self.lanes_status();
        s.in_flight = n;
        s.max_in_flight = s.max_in_flight.max(n);
    }

    fn lane_batch(&self) {
        self.lanes_status().lane_batches += 1;
    }

    /// The version serving now.
    pub fn serving(&self) -> Arc<ModelVersion> {
        self.serving
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn settings(&self) -> ModelConfig {
        self.settings
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A reload's config: the dispatch settings apply from the next batch.
    pub fn set_settings(&self, cfg: &ModelConfig) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = cfg.clone();
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `version` (with its folder as `fingerprint` says) is worth a load now: it is not
    /// the serving or staged one, not loading, and did not fail as it is.
    pub fn wants(&self, version: &str, fingerprint: &str) -> bool {
        // `next` is held throughout: the loader moves a request from it to `loading` and from
        // `loading` to `staged` under the same lock, so a request is always seen somewhere.
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let staged = self
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(v, _)| v.label.clone());
        let lc = self.lifecycle();
        self.serving().label != version
            && staged.as_deref() != Some(version)
            && next.as_ref().map(load::label).as_deref() != Some(version)
            && lc.status.loading.as_deref() != Some(version)
            && !lc.refused_as_is(version, fingerprint)
    }

    /// Builds a version of `cfg` beside the serving one, on a helper thread; the dispatcher
    /// switches to it between batches. A newer request replaces one not yet started.
    pub fn stage(self: &Arc<Self>, cfg: ModelConfig) {
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = Some(cfg);
        if self.loading.swap(true, Ordering::SeqCst) {
            return; // the loader thread takes it next
        }
        let rt = self.clone();
        let spawned = std::thread::Builder::new()
            .name("pr-load".into())
            .spawn(move || rt.load_queued());
        if let Err(e) = spawned {
            log::error!("model {}: cannot spawn a loader thread: {e}", self.name);
            self.loading.store(false, Ordering::SeqCst);
        }
    }

    /// The loader thread: builds what [`Self::stage`] asked for until nothing more is asked.
    fn load_queued(&self) {
        loop {
            let taken = {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                let cfg = next.take();
                self.lifecycle().status.loading = cfg.as_ref().map(load::label);
                cfg
            };
            let Some(cfg) = taken else {
                self.loading.store(false, Ordering::SeqCst);
                // A request that came in between the look and the store is ours to take.
                let more = self
                    .next
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some();
                if more && !self.loading.swap(true, Ordering::SeqCst) {
                    continue;
                }
                return;
            };
            // At most two versions in memory: the serving one and this one.
            while !self.queue.stopping() && (self.has_staged() || self.has_retiring()) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.queue.stopping() {
                self.lifecycle().status.loading = None;
                self.loading.store(false, Ordering::SeqCst);
                return;
            }
            self.load_one(cfg);
        }
    }

    fn has_staged(&self) -> bool {
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn has_retiring(&self) -> bool {
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(_, w)| w.strong_count() > 0)
    }

    fn load_one(&self, cfg: ModelConfig) {
        let label = load::label(&cfg);
        let source = match (&cfg.versions, cfg.source.path()) {
            (Some(_), Some(file)) => file.parent().unwrap_or(file).display().to_string(),
            _ => cfg.source.to_string(),
        };
        let fingerprint = cfg
            .versions
            .as_ref()
            .zip(label.parse::<u64>().ok())
            .map(|(d, n)| d.fingerprint(n))
            .unwrap_or_default();
        log::info!("model {}: loading version {label} ({source})", self.name);
        let t0 = Instant::now();
        let serving = self.serving();
        let built = load::beside(cfg, &self.place, Some(&serving));
        drop(serving);
        let _next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let mut lc = self.lifecycle();
        lc.status.loading = None;
        match built {
            Ok(v) => {
                log::info!(
                    "model {}: version {label} loaded and warm in {:.1} s; switching between batches",
                    self.name,
                    t0.elapsed().as_secs_f64()
                );
                *self.staged.lock().unwrap_or_else(|p| p.into_inner()) = Some((Arc::new(v), t0));
                self.queue.nudge();
            }
            Err(e) => {
                let reason = format!("{e:#}");
                log::warn!(
                    "model {}: version {label} ({source}) refused: {reason}; version {} serves on",
                    self.name,
                    lc.status.serving
                );
                lc.failed(&label, &source, &reason, fingerprint);
            }
        }
    }

    /// Refuses a version without loading it (its folder holds no usable model file).
    pub fn refuse(&self, version: &str, source: &str, why: &str, fingerprint: String) {
        let mut lc = self.lifecycle();
        log::warn!(
            "model {}: version {version} ({source}) refused: {why}; version {} serves on",
            self.name,
            lc.status.serving
        );
        lc.failed(version, source, why, fingerprint);
    }

    /// Between batches (the dispatcher): switches to a staged version. The old one stays in
    /// memory only while a batch it claimed still holds it.
    pub fn adopt_staged(&self) -> bool {
        let Some((new, t0)) = self.staged.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        let old = std::mem::replace(
            &mut *self.serving.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        old.save_profile();
        self.lifecycle()
            .swapped(&old.label, &new.label, t0.elapsed().as_secs_f64() * 1e3);
        log::info!(
            "model {}: now serving version {} (was {})",
            self.name,
            new.label,
            old.label
        );
        *self.retiring.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((old.label.clone(), Arc::downgrade(&old)));
        drop(old);
        self.reap();
        true
    }

    /// Once the version switched away from is gone, gives its memory back to the system.
    pub fn reap(&self) {
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let gone = retiring
            .as_ref()
            .is_some_and(|(_, w)| w.strong_count() == 0);
        if let Some((label, _)) = retiring.take_if(|_| gone) {
            // glibc keeps what the instance threads freed in their arenas: hand it back, so
            // RSS falls to one version's.
            // SAFETY: malloc_trim only walks glibc's own heap metadata.
            unsafe { nix::libc::malloc_trim(0) };
            log::info!("model {}: version {label} unloaded", self.name);
        }
    }

    /// Tells the dispatcher what waits in incoming/ (nothing is claimed here), and when each
    /// job is due.
    pub fn offer_waiting(&self) {
        let cfg = self.settings();
        let scanned = self.spool.scan();
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .scanned(scanned.iter().map(|w| &w.name));
        let pending = scanned
            .into_iter()
            .map(|w| Pending {
                due: deadline::due_waiting(&w.name, w.arrived, &cfg),
                name: w.name,
                arrived: w.arrived,
            })
            .collect();
        self.queue.offer(pending);
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
        let delay = self.storage().failed(&self.name, err);
        self.queue.pause(delay);
        self.queue.push_owned(vec![job]);
    }

    /// Why jobs are held, while the spool cannot be written.
    pub fn storage_problem(&self) -> Option<String> {
        self.storage().problem()
    }

    /// A write went through: any storage trouble is over.
    fn storage_ok(&self) {
        self.storage().ok(&self.name);
        self.queue.resume();
    }

    /// Fails a job with a record (counted against `version` when one ran it); if the record
    /// cannot be written, holds the job instead.
    fn fail(&self, job: Job, err: &JobError, version: Option<&str>) {
        match self.spool.fail(&job, err) {
            Ok(()) if err.kind == ErrorKind::DeadlineExceeded => {
                // Shedding under overload is the setting doing its job: one line per while.
                log::debug!(
                    "model {}: job {} failed: {}",
                    self.name,
                    job.name,
                    err.message
                );
                self.storage_ok();
                let mut stats = self.stats();
                stats.failed += 1;
                stats.goodput.expired += 1;
                if let Some(n) = stats.expired_to_log(Duration::from_secs(10)) {
                    log::info!(
                        "model {}: {n} job(s) failed unrun as deadline_exceeded since the last such line: they could not finish by their deadlines (on_deadline = \"fail\")",
                        self.name
                    );
                }
            }
            Ok(()) => {
                log::warn!(
                    "model {}: job {} failed: {} ({})",
                    self.name,
                    job.name,
                    err.message,
                    err.kind
                );
                self.storage_ok();
                self.stats().failed += 1;
                if let Some(v) = version {
                    self.lifecycle().outcome(v, false);
                }
            }
            Err(e) => self.hold(job, &e),
        }
    }

    /// How long the batch now running has run, if one is.
    pub fn stuck_for(&self) -> Option<Duration> {
        self.busy.for_how_long()
    }

    /// What STATUS= says of this model's re-plans (None before the first).
    pub fn replan_summary(&self) -> Option<String> {
        self.serving().replan_summary()
    }

    /// Starts the dispatcher thread; it runs until [`ModelRuntime::stop`].
    pub fn spawn_dispatcher(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let rt = self.clone();
        std::thread::Builder::new()
            .name(format!("dispatch-{}", rt.name).chars().take(15).collect())
            .spawn(move || dispatcher::run(&rt))
    }

    /// Asks the dispatcher to finish the batch in flight, then exit (and a loader to give up).
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
                self.name,
                jobs.len()
            );
        }
        for job in &jobs {
            self.spool.release(job);
        }
        self.serving().save_profile();
        self.spool.leave();
    }

    pub fn status(&self) -> ModelStatus {
        let v = self.serving();
        let table = v.plan_table();
        let (storage_problem, disk_full) = {
            let s = self.storage();
            (s.problem(), s.disk_full())
        };
        let (prediction_error_pct, prediction_abs_error_pct) = v.prediction_errors();
        let adapt = v.adapt_status();
        let mut versions = self.lifecycle().status.clone();
        versions.loaded = std::iter::once(v.label.clone())
            .chain(
                self.staged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|(s, _)| s.label.clone()),
            )
            .chain(
                self.retiring
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .filter(|(_, w)| w.strong_count() > 0)
                    .map(|(l, _)| l.clone()),
            )
            .chain(versions.loading.clone())
            .collect();
        let settings = self.settings();
        let mut concurrency = self.lanes_status().clone();
        concurrency.setting = settings
            .concurrent_batches
            .map_or_else(|| "auto".into(), |n| n.to_string());
        concurrency.lanes = concurrency.lanes.max(1);
        let share = self.share();
        concurrency.lane_instances = v.lane_instances(share.as_ref(), concurrency.lanes);
        let stats = self.stats();
        ModelStatus {
            share: self
                .share_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            concurrency,
            deadlines: DeadlineStatus {
                deadline_ms: settings.deadline_ms,
                on_deadline: settings.on_deadline,
                goodput: stats.goodput.clone(),
            },
            name: self.name.clone(),
            source: v.cfg.source.to_string(),
            spool: self.spool.root.display().to_string(),
            plan_source: table.source,
            max_batch: table.max_batch(),
            plan_max_batch: table.for_batch(table.max_batch()).clone(),
            last_plan: v.last_plan(),
            instances: v.instance_infos(),
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
            engine: v.model().engine.name().into(),
            precision: v.precision(),
            adapt,
            instance_sets_started: v.set_starts(),
            static_shapes: v.static_shapes(),
            versions,
        }
    }
}
