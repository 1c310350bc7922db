//! The dispatcher thread of one model: it claims and loads jobs only when it is about to run
//! them, coalesces what is waiting into one batch up to `max_batch` (waiting up to
//! `max_batch_delay_ms` for more, 0 by default), runs the batch with the plan for its size,
//! splits the outputs back per job and publishes them through the spool. A write the job is
//! not to blame for (disk full) holds the job and retries it later; it never fails it.
//! Between batches it switches to a staged version and lets the serving one re-plan; while
//! nothing waits it makes the version's idle-gap measurements, one bounded step at a time.
//! When the version is due to explore a point under load that only small batches reach, a
//! batch whose first job is within that point's reach coalesces no more than the point needs.
//!
//! Deadlines ([`super::deadline`]): between batches, with `on_deadline = "fail"`, waiting jobs
//! predicted to finish after they are due are failed unrun; a claimed job that cannot make
//! it alone is failed too. A batch takes no more jobs than let its jobs that can still make
//! their deadlines do so.
//!
//! Every job is loaded against the version serving when it is claimed and runs on that
//! version: a batch never mixes versions. Its output names the version (the extended
//! attribute `user.packrat.version`, and safetensors' `__metadata__`).

use std::ffi::OsString;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use tch::Tensor;

use super::deadline;
use super::lanes::{self, Lanes};
use super::queue::Next;
use super::version::ModelVersion;
use super::ModelRuntime;
use crate::config::OnDeadline;
use crate::engine::{concat_outputs, split_outputs, InputMismatch, MismatchKind, Outputs};
use crate::spool::{Claim, ErrorKind, Job, JobError, PublishError, Published};
use crate::tensorfile::{self, Format, ReadError, ReadErrorKind};

impl From<ReadError> for JobError {
    fn from(e: ReadError) -> JobError {
        let kind = match e.kind {
            ReadErrorKind::BadFile => ErrorKind::BadFile,
            ReadErrorKind::TooLarge => ErrorKind::TooLarge,
            ReadErrorKind::Io => ErrorKind::Io,
        };
        JobError::new(kind, e.message)
    }
}

impl From<InputMismatch> for JobError {
    fn from(e: InputMismatch) -> JobError {
        let kind = match e.kind {
            MismatchKind::Input => ErrorKind::WrongInput,
            MismatchKind::Dtype => ErrorKind::WrongDtype,
            MismatchKind::Shape => ErrorKind::WrongShape,
        };
        JobError::new(kind, e.message)
    }
}

/// A job read and checked against a version, ready to run on it.
struct Loaded {
    job: Job,
    version: Arc<ModelVersion>,
    format: Format,
    inputs: Vec<Tensor>,
    items: usize,
    due: Option<SystemTime>,
}

/// Where a batch runs: over every core (the plan table), or on one lane of a lane set.
#[derive(Clone)]
enum Target {
    All,
    Lane(Arc<Lanes>, usize),
}

impl Target {
    fn lanes(&self) -> Option<&Lanes> {
        match self {
            Target::All => None,
            Target::Lane(l, _) => Some(l),
        }
    }
}

/// A batch of `b` items predicted in ms on `target`: the version's plan, else as measured.
fn batch_ms<'a>(
    rt: &'a ModelRuntime,
    v: &'a ModelVersion,
    target: &'a Target,
) -> impl Fn(usize) -> f64 + 'a {
    move |b| {
        v.predict_on(target.lanes(), b)
            .or_else(|| rt.stats().measured_batch_ms(b))
            .unwrap_or(0.0)
    }
}

impl Loaded {
    /// Due, and predicted to finish after, were it run by itself from now on `target` (None:
    /// it can make it, or has no deadline).
    fn cannot_make_it(
        &self,
        rt: &ModelRuntime,
        target: &Target,
    ) -> Option<(SystemTime, SystemTime)> {
        let due = self.due?;
        let f = batch_ms(rt, &self.version, target);
        let ms = deadline::work_ms(self.items, self.version.cfg.max_batch, &f);
        let at = SystemTime::now() + Duration::from_secs_f64(ms.max(0.0) / 1e3);
        (at > due).then_some((due, at))
    }
}

/// With `on_deadline = "fail"`: a claimed job that cannot make its deadline even alone is
/// failed unrun; otherwise it is given back to run.
fn expire_if_late(rt: &ModelRuntime, l: Loaded, target: &Target) -> Option<Loaded> {
    if rt.settings().on_deadline != OnDeadline::Fail {
        return Some(l);
    }
    let Some((due, at)) = l.cannot_make_it(rt, target) else {
        return Some(l);
    };
    let now = SystemTime::now();
    let predicted = at.duration_since(now).unwrap_or_default();
    rt.fail(l.job, &deadline::exceeded(due, now, predicted, 0), None);
    None
}

/// With `on_deadline = "fail"`, between batches: fails the waiting jobs predicted to finish
/// after they are due, without running them (claiming each first, so it ends once). With `k`
/// lanes the batches ahead spread over them.
fn shed(rt: &ModelRuntime, target: &Target) {
    let cfg = rt.settings();
    if cfg.on_deadline != OnDeadline::Fail {
        return;
    }
    let (owned, waiting) = rt.queue.waiting();
    if waiting.iter().all(|p| p.due.is_none()) {
        return;
    }
    let v = rt.serving();
    let per_job = rt.stats().items_per_job();
    let now = SystemTime::now();
    let k = target.lanes().map_or(1, |l| l.k);
    let shed = deadline::to_shed(
        now,
        owned,
        &waiting,
        per_job,
        cfg.max_batch,
        k,
        &batch_ms(rt, &v, target),
    );
    if shed.is_empty() {
        return;
    }
    let names: Vec<OsString> = shed.iter().map(|&(k, _)| waiting[k].name.clone()).collect();
    rt.queue.withdraw(&names);
    for (n, &(k, predicted)) in shed.iter().enumerate() {
        let p = &waiting[k];
        let Some(due) = p.due else { continue };
        match rt.spool.claim(&p.name) {
            Ok(Claim::Job(job)) => {
                let ahead = owned + k - n;
                rt.fail(job, &deadline::exceeded(due, now, predicted, ahead), None)
            }
            Ok(Claim::Refused(job, err)) => rt.fail(job, &err, None),
            Ok(Claim::Gone) => {}
            Err(e) => log::error!("model {}: {e:#}", rt.name),
        }
    }
}

/// Coalesces what is waiting behind `first` into one batch for `target`, up to `max` items
/// (waiting for more only up to the batch delay), while its jobs that can still make their
/// deadlines are predicted to; the first job that does not fit is left in `carry`. With
/// `on_deadline = "fail"`, a batch grows past its tightest jobs where that finishes more jobs
/// in time ([`deadline::grow_past_tightest`]); those it then makes late are failed unrun.
fn coalesce(
    rt: &ModelRuntime,
    first: Loaded,
    max: usize,
    target: &Target,
    carry: &mut Option<Loaded>,
) -> Vec<Loaded> {
    let delay = Duration::from_secs_f64(rt.settings().max_batch_delay_ms / 1e3);
    let shedding = rt.settings().on_deadline == OnDeadline::Fail;
    let wait_until = Instant::now() + delay;
    // The earliest deadline in the batch that can still be made. Once the batch has grown
    // past its tightest jobs (`grown`) it no longer binds: each job only has to make its own.
    let mut due = first
        .due
        .filter(|_| first.cannot_make_it(rt, target).is_none());
    let mut grown = false;
    let mut group = vec![first];
    let mut total = group[0].items;
    while total < max {
        let Some(l) = next_loaded(rt, false) else {
            let left = wait_until.saturating_duration_since(Instant::now());
            if !left.is_zero() && rt.queue.wait_for_work(left) {
                continue;
            }
            break;
        };
        let Some(l) = expire_if_late(rt, l, target) else {
            continue;
        };
        let v = Arc::clone(&group[0].version);
        let ms = batch_ms(rt, &v, target);
        let in_time = |due: Option<SystemTime>| {
            let Some(due) = due else { return true };
            SystemTime::now() + Duration::from_secs_f64(ms(total + l.items).max(0.0) / 1e3) <= due
        };
        let l_due = l.due.filter(|_| l.cannot_make_it(rt, target).is_none());
        let fits = total + l.items <= max && Arc::ptr_eq(&l.version, &v) && in_time(l_due);
        if fits && (grown || in_time(due) || (shedding && grow(rt, &group, total, &l, max, &ms))) {
            grown |= !in_time(due);
            total += l.items;
            due = due.into_iter().chain(l_due).min();
            group.push(l);
        } else {
            *carry = Some(l);
            break;
        }
    }
    if grown {
        fail_late(rt, &mut group, target);
    }
    group
}

/// Whether `group` (`total` items, on time) grows past its tightest job to take `l` and the
/// jobs waiting behind it, up to `max` items.
fn grow(
    rt: &ModelRuntime,
    group: &[Loaded],
    total: usize,
    l: &Loaded,
    max: usize,
    ms: &dyn Fn(usize) -> f64,
) -> bool {
    let per_job = rt.stats().items_per_job().max(1.0);
    let (_, waiting) = rt.queue.waiting();
    let room = max.saturating_sub(total + l.items);
    let behind = ((room as f64 / per_job).floor() as usize).min(waiting.len());
    let rest: Vec<Option<SystemTime>> = std::iter::once(l.due)
        .chain(waiting[..behind].iter().map(|p| p.due))
        .collect();
    let rest_items = l.items + (behind as f64 * per_job).round() as usize;
    let batch: Vec<Option<SystemTime>> = group.iter().map(|g| g.due).collect();
    deadline::grow_past_tightest(SystemTime::now(), &batch, total, &rest, rest_items, ms)
}

/// Fails unrun the jobs of a batch grown past them that it would finish after they are due.
fn fail_late(rt: &ModelRuntime, group: &mut Vec<Loaded>, target: &Target) {
    let Some(v) = group.first().map(|g| Arc::clone(&g.version)) else {
        return;
    };
    let items: usize = group.iter().map(|g| g.items).sum();
    let ms = batch_ms(rt, &v, target)(items);
    let now = SystemTime::now();
    let finish = now + Duration::from_secs_f64(ms.max(0.0) / 1e3);
    let (late, kept): (Vec<Loaded>, Vec<Loaded>) = std::mem::take(group)
        .into_iter()
        .partition(|g| g.due.is_some_and(|d| d < finish));
    *group = kept;
    let predicted = finish.duration_since(now).unwrap_or_default();
    for l in late {
        if let Some(due) = l.due {
            let e = deadline::exceeded(due, now, predicted, 0);
            let why = format!(
                "{} (in a batch of {items} items, grown past it because that finishes more jobs in time)",
                e.message
            );
            rt.fail(l.job, &JobError::new(e.kind, why), None);
        }
    }
}

/// How many batches run at once: re-weighed every [`lanes::CHOOSE_EVERY`] from the load.
#[derive(Default)]
struct Mode {
    k: usize,
    at: Option<Instant>,
    /// Another count the last choices preferred, and how many times in a row.
    candidate: Option<(usize, u32)>,
    /// The cores chosen for (None: every core).
    cores: Option<Vec<usize>>,
}

impl Mode {
    /// Whether `k`, just chosen, is switched to: only once [`lanes::CONFIRM`] choices in a row
    /// agree on it. A switch waits for every batch in flight, and a burst that is drained
    /// within a second would otherwise flip the count back and forth.
    fn confirm(&mut self, k: usize) -> bool {
        if k == self.k.max(1) {
            self.candidate = None;
            return false;
        }
        let n = match self.candidate {
            Some((c, n)) if c == k => n + 1,
            _ => 1,
        };
        self.candidate = Some((k, n));
        // The first choice (no count yet) is taken at once.
        if n >= lanes::CONFIRM || self.k == 0 {
            self.candidate = None;
            return true;
        }
        false
    }
}

/// Where the next batch goes.
enum Where {
    /// Over every core: the version's plan table.
    All,
    /// On a free lane of these (over every core, or over the model's share of them).
    Lanes(Arc<Lanes>),
    /// Nowhere yet: the partition gave this model no cores (it had no work).
    Nowhere,
}

impl Mode {
    /// Where the next batch goes: a lane set of the serving version over the model's share
    /// of the cores, or every core.
    fn target(&mut self, rt: &ModelRuntime) -> Where {
        let v = rt.serving();
        let share = rt.share();
        if share.as_ref().is_some_and(|s| s.is_empty()) {
            return Where::Nowhere;
        }
        let cores = share.as_ref().map(|s| s.ordered());
        if cores != self.cores {
            // New cores: choose again for them at once.
            self.cores = cores;
            self.at = None;
            self.candidate = None;
        }
        if self.at.is_none_or(|t| t.elapsed() >= lanes::CHOOSE_EVERY) {
            self.at = Some(Instant::now());
            let per_job = rt.stats().items_per_job();
            // The backlog counts as if it came within a second: it is to be drained.
            let jobs_per_s = rt.arrival_rate() + rt.queue.len() as f64;
            let (chosen, predicted) = v.choose_lanes(
                share.as_ref(),
                rt.settings().concurrent_batches,
                jobs_per_s * per_job,
                per_job,
                self.k.max(1),
            );
            let fixed = rt.settings().concurrent_batches.is_some();
            let k = if fixed || self.confirm(chosen) {
                chosen
            } else {
                self.k.max(1)
            };
            if k != self.k.max(1) {
                log::info!(
                    "model {}: {} now ({:.1} jobs/s with the backlog; predicted mean latency {})",
                    rt.name,
                    if k == 1 {
                        "one batch at a time over its cores".to_string()
                    } else {
                        format!("{k} batches at once on their own cores")
                    },
                    jobs_per_s,
                    predicted
                        .iter()
                        .map(|(k, ms)| format!("{k} lane(s) {ms:.1} ms"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            rt.lanes_chosen(k, jobs_per_s, predicted, k != self.k.max(1));
            self.k = k;
        }
        match v.lanes(share.as_ref(), self.k) {
            Some(l) => Where::Lanes(l),
            // Lanes not warm yet over a share: one batch at a time over it meanwhile.
            None if share.is_some() => v.lanes(share.as_ref(), 1).map_or(Where::All, Where::Lanes),
            None => Where::All,
        }
    }
}

/// A batch for a lane worker.
struct LaneBatch {
    group: Vec<Loaded>,
    target: Target,
}

/// The threads that run lane batches, one per lane slot, started as lanes are first used;
/// each runs its batch, writes its outcomes and reports back, with no barrier on the others.
struct LaneWorkers<'scope, 'env> {
    txs: Vec<mpsc::Sender<LaneBatch>>,
    busy: Vec<bool>,
    /// The lane count and cores of the batches now running (another count, or other cores,
    /// reuses the cores differently: every batch finishes first).
    running: (usize, Vec<usize>),
    done_tx: mpsc::Sender<usize>,
    done_rx: mpsc::Receiver<usize>,
    scope: &'scope std::thread::Scope<'scope, 'env>,
}

impl<'scope, 'env> LaneWorkers<'scope, 'env> {
    fn new(scope: &'scope std::thread::Scope<'scope, 'env>) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        LaneWorkers {
            txs: Vec::new(),
            busy: Vec::new(),
            running: (0, Vec::new()),
            done_tx,
            done_rx,
            scope,
        }
    }

    fn in_flight(&self) -> usize {
        self.busy.iter().filter(|b| **b).count()
    }

    fn collect(&mut self, block: bool) {
        let got = if block {
            self.done_rx.recv().ok()
        } else {
            self.done_rx.try_recv().ok()
        };
        if let Some(l) = got {
            self.busy[l] = false;
            while let Ok(l) = self.done_rx.try_recv() {
                self.busy[l] = false;
            }
        }
    }

    /// Waits until no lane batch runs.
    fn wait_idle(&mut self) {
        self.collect(false);
        while self.in_flight() > 0 {
            self.collect(true);
        }
    }

    /// A free lane of `lanes` (waiting for one), its worker started.
    fn free(&mut self, rt: &'env ModelRuntime, lanes: &Lanes) -> usize {
        let k = lanes.k;
        if k != self.running.0 || lanes.cores != self.running.1 {
            self.wait_idle();
            self.running = (k, lanes.cores.clone());
        }
        loop {
            self.collect(false);
            if let Some(l) = (0..k).find(|&l| !self.busy.get(l).copied().unwrap_or(false)) {
                self.start(rt, l);
                return l;
            }
            self.collect(true);
        }
    }

    fn start(&mut self, rt: &'env ModelRuntime, lane: usize) {
        while self.txs.len() <= lane {
            let (tx, rx) = mpsc::channel::<LaneBatch>();
            let done = self.done_tx.clone();
            let slot = self.txs.len();
            let spawned = std::thread::Builder::new()
                .name(format!("pr-lane-{slot}"))
                .spawn_scoped(self.scope, move || {
                    for b in rx {
                        run_group(rt, b.group, &b.target);
                        let _ = done.send(slot);
                    }
                });
            if let Err(e) = spawned {
                // Without a worker the batch runs on the dispatcher (see `send`).
                log::error!("model {}: cannot spawn a lane thread: {e}", rt.name);
            }
            self.txs.push(tx);
            self.busy.push(false);
        }
    }

    /// Hands `group` to its lane's worker (or runs it here, should the worker be gone).
    fn send(&mut self, rt: &ModelRuntime, lane: usize, group: Vec<Loaded>, target: Target) {
        self.busy[lane] = true;
        rt.lanes_in_flight(self.in_flight());
        if let Err(mpsc::SendError(b)) = self.txs[lane].send(LaneBatch { group, target }) {
            self.busy[lane] = false;
            run_group(rt, b.group, &b.target);
        }
    }
}

/// Runs until the queue is stopped; the batches in flight finish first.
pub(super) fn run(rt: &ModelRuntime) {
    let mut carry: Option<Loaded> = None;
    std::thread::scope(|s| {
        let mut workers = LaneWorkers::new(s);
        let mut mode = Mode::default();
        loop {
            let lanes = match mode.target(rt) {
                Where::All => None,
                Where::Lanes(l) => Some(l),
                Where::Nowhere => {
                    // No cores until the partition gives some (at once, once jobs wait).
                    workers.wait_idle();
                    rt.lanes_in_flight(0);
                    if rt.queue.stopping() {
                        break;
                    }
                    if carry.is_none() && rt.queue.is_empty() {
                        idle(rt);
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    continue;
                }
            };
            let first_target = lanes
                .as_ref()
                .map_or(Target::All, |l| Target::Lane(l.clone(), 0));
            shed(rt, &first_target);
            let target = match &lanes {
                None => {
                    // A batch over every core: the lanes' batches finish first.
                    workers.wait_idle();
                    Target::All
                }
                Some(l) => Target::Lane(l.clone(), workers.free(rt, l)),
            };
            rt.lanes_in_flight(workers.in_flight());
            let first = match carry.take() {
                Some(l) => l,
                None => {
                    // Idle-gap measurements take every core: only while no lane runs.
                    if workers.in_flight() == 0 {
                        idle(rt);
                    }
                    match next_loaded(rt, true) {
                        Some(l) => l,
                        None => break,
                    }
                }
            };
            let Some(first) = expire_if_late(rt, first, &target) else {
                continue;
            };
            let max = match &target {
                // Exploring a point only small batches reach: keep this one small if it can be.
                Target::All => first
                    .version
                    .explore_cap()
                    .filter(|&(lo, hi)| (lo..=hi).contains(&first.items))
                    .map_or(first.version.cfg.max_batch, |(_, hi)| hi),
                Target::Lane(..) => first.version.cfg.max_batch,
            };
            let group = coalesce(rt, first, max, &target, &mut carry);
            if group.is_empty() {
                continue;
            }
            match target {
                Target::Lane(l, lane) if Arc::ptr_eq(&group[0].version, &rt.serving()) => {
                    workers.send(rt, lane, group, Target::Lane(l, lane));
                }
                // Jobs of a version switched away from meanwhile: on its own plan table.
                Target::Lane(..) => {
                    workers.wait_idle();
                    run_group(rt, group, &Target::All);
                }
                Target::All => run_group(rt, group, &Target::All),
            }
            between_batches(rt);
        }
        workers.wait_idle();
        rt.lanes_in_flight(0);
    });
    if let Some(l) = carry {
        rt.queue.push_owned(vec![l.job]);
    }
    log::debug!("model {}: dispatcher stopped", rt.name);
}

/// A staged version takes over; the serving one re-plans when due; a version switched away
/// from is unloaded once no batch holds it.
fn between_batches(rt: &ModelRuntime) {
    rt.adopt_staged();
    rt.serving().between_batches();
    rt.reap();
}

/// While nothing waits: background work one bounded step at a time, re-checking the queue in
/// between; when there is none, sleeps until a job comes (or a while, to look again).
fn idle(rt: &ModelRuntime) {
    while rt.queue.is_empty() && !rt.queue.stopping() {
        if rt.adopt_staged() {
            continue;
        }
        rt.reap();
        // Idle-gap measurements take every core: not while other models may use some.
        let may_probe = rt.share().is_none();
        if !rt.serving().idle_step(&rt.queue, &rt.busy, may_probe) {
            rt.queue.wait_for_work(Duration::from_millis(500));
        }
    }
}

/// The next job, claimed (if it was waiting) and loaded; jobs that fail to load are failed here.
fn next_loaded(rt: &ModelRuntime, block: bool) -> Option<Loaded> {
    loop {
        let job = match rt.queue.next(block)? {
            Next::Owned(job) => job,
            Next::Waiting(name) => match rt.spool.claim(&name) {
                Ok(Claim::Job(job)) => job,
                Ok(Claim::Refused(job, err)) => {
                    rt.fail(job, &err, None);
                    continue;
                }
                Ok(Claim::Gone) => continue,
                Err(e) => {
                    log::error!("model {}: {e:#}", rt.name);
                    continue;
                }
            },
        };
        if let Some(l) = load(rt, job) {
            return Some(l);
        }
    }
}

fn load(rt: &ModelRuntime, job: Job) -> Option<Loaded> {
    let t0 = Instant::now();
    let version = rt.serving();
    let settings = rt.settings();
    let max_job_bytes = settings.max_job_bytes;
    let res = (|| -> Result<_, JobError> {
        let due = deadline::due(&job.name, job.arrived, &settings)?;
        let format = Format::from_path(&job.path).ok_or_else(|| {
            JobError::new(
                ErrorKind::UnknownFormat,
                format!(
                    "'{}' has no known extension: name job files *.npy, *.npz or *.safetensors",
                    job.name
                ),
            )
        })?;
        let named = tensorfile::read(&job.path, format, max_job_bytes)?;
        let (inputs, items) = version.model().match_inputs(named)?;
        Ok((format, inputs, items as usize, due))
    })();
    match res {
        Ok((format, inputs, items, due)) => {
            rt.stats().record_items(items);
            log::debug!(
                "model {}: {} loaded in {:.2} ms",
                rt.name,
                job.name,
                t0.elapsed().as_secs_f64() * 1e3
            );
            Some(Loaded {
                job,
                version,
                format,
                inputs,
                items,
                due,
            })
        }
        Err(e) => {
            rt.fail(job, &e, None);
            None
        }
    }
}

fn model_error(e: anyhow::Error) -> JobError {
    JobError::new(ErrorKind::ModelError, format!("{e:#}"))
}

fn run_group(rt: &ModelRuntime, mut group: Vec<Loaded>, target: &Target) {
    // Count the run first: if the agent dies now, whoever takes these jobs over knows they ran.
    if let Err(e) = group
        .iter_mut()
        .try_for_each(|l| rt.spool.started(&mut l.job))
    {
        for l in group {
            rt.hold(l.job, &e);
        }
        return;
    }
    let now = SystemTime::now();
    let late = group
        .iter()
        .filter(|l| l.due.is_some_and(|d| d < now))
        .count();
    rt.stats().goodput.started_late += late as u64;
    let version = group[0].version.clone();
    let result = rt.busy.during(|| {
        if group.len() == 1 {
            let out = run_one(rt, &group[0], target);
            if let Ok(out) = &out {
                version.check_precision(&rt.queue, &group[0].inputs, out);
            }
            out.map(|o| vec![o])
        } else {
            run_coalesced(rt, &group, target)
        }
    });
    let fail = |l: Loaded, e: anyhow::Error| {
        let label = l.version.label.clone();
        rt.fail(l.job, &model_error(e), Some(&label));
    };
    match result {
        Ok(outs) => {
            // The forward pass returned: whatever kills the agent from here on, these jobs are
            // not to blame, so their runs stop counting towards crashed_agent — all of them
            // before any is written out.
            for l in &mut group {
                rt.spool.forget_runs(&mut l.job);
            }
            for (l, out) in group.into_iter().zip(outs) {
                finish(rt, l, &out);
            }
        }
        Err(e) if group.len() > 1 => {
            log::warn!(
                "model {}: coalesced batch of {} jobs failed ({e:#}); running them one by one",
                rt.name,
                group.len()
            );
            for mut l in group {
                match run_one(rt, &l, target) {
                    Ok(out) => {
                        rt.spool.forget_runs(&mut l.job);
                        finish(rt, l, &out)
                    }
                    Err(e) => fail(l, e),
                }
            }
        }
        Err(e) => {
            if let Some(l) = group.into_iter().next() {
                fail(l, e);
            }
        }
    }
}

fn finish(rt: &ModelRuntime, l: Loaded, out: &Outputs) {
    let t0 = Instant::now();
    let fmt = l.format.for_outputs(out.len());
    let version = l.version.label.as_str();
    let meta = [
        ("packrat.model", rt.name.as_str()),
        ("packrat.version", version),
    ];
    let res = rt.spool.publish(
        &l.job,
        fmt.ext(),
        &[("user.packrat.version", version)],
        |w| tensorfile::write_tagged(w, fmt, out, &meta),
    );
    log::debug!(
        "model {}: {} written in {:.2} ms",
        rt.name,
        l.job.name,
        t0.elapsed().as_secs_f64() * 1e3
    );
    match res {
        Ok(published) => {
            let dt = l.job.claimed.elapsed();
            match published {
                Published::Output(path) => log::debug!(
                    "model {} v{version}: {} ({} items) -> {} in {:.1} ms",
                    rt.name,
                    l.job.name,
                    l.items,
                    path.display(),
                    dt.as_secs_f64() * 1e3
                ),
                Published::Duplicate(path) => log::info!(
                    "model {}: {} already had its output {} (another agent ran it too); this run's is dropped",
                    rt.name,
                    l.job.name,
                    path.display()
                ),
            }
            rt.storage_ok();
            let mut stats = rt.stats();
            stats.record_done(dt);
            if let Some(due) = l.due {
                stats.goodput.finished(due, SystemTime::now());
            }
            drop(stats);
            rt.lifecycle().outcome(version, true);
        }
        Err(PublishError::Storage(e)) => rt.hold(l.job, &e),
        Err(PublishError::Encode(e)) => {
            let label = l.version.label.clone();
            rt.fail(
                l.job,
                &JobError::new(
                    ErrorKind::OutputError,
                    format!("cannot encode the output: {e:#}"),
                ),
                Some(&label),
            )
        }
    }
}

/// Runs one batch (≤ max_batch items) on the version, on `target`, and counts it.
fn run_batch(
    rt: &ModelRuntime,
    v: &ModelVersion,
    inputs: &[Tensor],
    n: usize,
    target: &Target,
) -> Result<Outputs> {
    let (out, took) = match target {
        Target::All => v.run_batch(inputs, n)?,
        Target::Lane(lanes, lane) => {
            let ran = v.run_on_lane(lanes, *lane, inputs, n)?;
            rt.lane_batch();
            ran
        }
    };
    rt.stats().record_batch(took, n);
    Ok(out)
}

/// One job, in chunks of max_batch when it is larger.
fn run_one(rt: &ModelRuntime, l: &Loaded, target: &Target) -> Result<Outputs> {
    let max = l.version.cfg.max_batch;
    let mut parts = Vec::new();
    let mut off = 0;
    while off < l.items {
        let n = (l.items - off).min(max);
        let inputs: Vec<Tensor> = l
            .inputs
            .iter()
            .map(|t| t.narrow(0, off as i64, n as i64))
            .collect();
        parts.push(run_batch(rt, &l.version, &inputs, n, target)?);
        off += n;
    }
    concat_outputs(parts)
}

fn run_coalesced(rt: &ModelRuntime, group: &[Loaded], target: &Target) -> Result<Vec<Outputs>> {
    let total: usize = group.iter().map(|l| l.items).sum();
    let n_inputs = group[0].inputs.len();
    let inputs: Vec<Tensor> = (0..n_inputs)
        .map(|k| Tensor::f_cat(&group.iter().map(|l| &l.inputs[k]).collect::<Vec<_>>(), 0))
        .collect::<Result<_, _>>()?;
    let out = run_batch(rt, &group[0].version, &inputs, total, target)?;
    let sizes: Vec<usize> = group.iter().map(|l| l.items).collect();
    split_outputs(out, &sizes)
}

#[cfg(test)]
mod tests {
    use super::Mode;

    #[test]
    fn a_lane_count_is_switched_to_only_when_choices_in_a_row_agree() {
        let mut m = Mode::default();
        // The first choice is taken at once.
        assert!(m.confirm(2));
        m.k = 2;
        // A single other choice (a burst) is not…
        assert!(!m.confirm(1));
        assert!(!m.confirm(2));
        assert!(!m.confirm(1));
        // … two in a row are.
        assert!(m.confirm(1));
        m.k = 1;
        assert!(!m.confirm(4));
        assert!(!m.confirm(2));
        assert!(m.confirm(2));
    }
}
