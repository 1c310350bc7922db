//! The agent: the configured models' runtimes, started in order (load → plan → warm up →
//! recover), plus what the event loop asks of them — scan, look at version folders, reload
//! (which may add, remove or re-version models while the others serve), status, stop.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use super::events::{Event, Watch};
use super::sdnotify::Notifier;
use super::status::{process_start_time, AgentState, Status};
use crate::config::{Config, ConfigError, ModelConfig, PlanChoice};
use crate::engine::EngineKind;
use crate::planner::cpu::CpuInfo;
use crate::runtime::load::{self, Place};
use crate::runtime::partition::Partitioner;
use crate::runtime::plans::Profiling;
use crate::runtime::precision::resolve;
use crate::runtime::version::ModelVersion;
use crate::runtime::ModelRuntime;
use crate::spool::{Folder, Spool, SpoolOptions};

/// What to do when a configured model does not load.
fn load_fix(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Libtorch => "point source at a TorchScript file (torch.jit.save) or a builtin:NAME",
        EngineKind::OpenVino => "point source at an ONNX model or an OpenVINO IR .xml (with its .bin) whose inputs match the config; if OpenVINO itself is missing, run packaging/setup-openvino.sh or set PACKRAT_OPENVINO=/path/to/libopenvino_c.so",
        EngineKind::OnnxRuntime => "point source at an ONNX model (torch.onnx.export) whose inputs match the config; if ONNX Runtime itself is missing, run packaging/setup-onnxruntime.sh or set PACKRAT_ONNXRUNTIME=/path/to/libonnxruntime.so.1",
        EngineKind::Replay => "point source at a latency profile (packrat profile's JSON, or one of the Packrat authors') with float32 inputs",
    }
}

/// Whether two configs of a model load the same thing: anything else needs a new version.
fn same_model(a: &ModelConfig, b: &ModelConfig) -> bool {
    let source = match (&a.versions, &b.versions) {
        // The version folders decide the file; check_versions follows them.
        (Some(x), Some(y)) => x == y,
        (None, None) => a.source == b.source,
        _ => false,
    };
    source
        && a.inputs == b.inputs
        && a.max_batch == b.max_batch
        && a.precision == b.precision
        && a.bf16_tolerance == b.bf16_tolerance
        && a.bf16_min_speedup == b.bf16_min_speedup
        && a.engine_options == b.engine_options
}

/// A model being served: its runtime and its dispatcher thread.
struct Served {
    rt: Arc<ModelRuntime>,
    /// None once joined (the agent drained).
    dispatcher: Option<JoinHandle<()>>,
}

pub struct Agent {
    pub config: Config,
    place: Place,
    pub notifier: Notifier,
    models: Vec<Served>,
    /// Models a reload added, loading on helper threads; they arrive on `added`.
    adding: HashSet<String>,
    added_tx: Sender<(String, Result<Arc<ModelRuntime>>)>,
    added: Receiver<(String, Result<Arc<ModelRuntime>>)>,
    /// Models a reload removed, finishing their batch in flight on helper threads.
    removing: Vec<JoinHandle<()>>,
    jobs_watch: Option<Watch>,
    versions_watch: Option<Watch>,
    /// This process's start time, written beside the pid (see [`Status::start_time`]).
    start_time: Option<u64>,
    /// Which cores each model gets.
    partitioner: Partitioner,
}

impl Agent {
    /// Loads, plans, warms up and recovers every model, then starts their dispatchers.
    pub fn start(config: Config, notifier: Notifier) -> Result<Agent> {
        let topo = config.topology().map_err(|e| ConfigError {
            file: config.path.display().to_string(),
            field: "cores".into(),
            problem: format!("{:#}", e.root_cause()),
            fix: "list only cores this process may use (see `taskset -p $$`), or leave cores out"
                .into(),
        })?;
        log::info!(
            "using {} cores: {:?} of {}",
            topo.len(),
            topo.ordered(),
            CpuInfo::detect().summary()
        );
        let place = Place {
            topo,
            state_dir: config.state_dir.clone(),
        };
        let mut runtimes = Vec::new();
        for (i, mc) in config.models.iter().enumerate() {
            runtimes.push(Self::start_model(&config, &place.of(mc), &notifier, i, mc)?);
        }
        let models = runtimes
            .into_iter()
            .map(|rt| {
                let dispatcher = Some(rt.spawn_dispatcher()?);
                Ok(Served { rt, dispatcher })
            })
            .collect::<Result<_, std::io::Error>>()?;
        let (added_tx, added) = mpsc::channel();
        Ok(Agent {
            config,
            place,
            notifier,
            models,
            adding: HashSet::new(),
            added_tx,
            added,
            removing: Vec::new(),
            jobs_watch: None,
            versions_watch: None,
            start_time: process_start_time(std::process::id()),
            partitioner: Partitioner::default(),
        })
    }

    /// The spool of a model; a spool that cannot be opened is the config's mistake.
    fn open_spool(config: &Config, mc: &ModelConfig) -> Result<Spool, ConfigError> {
        let opts = SpoolOptions {
            keep_inputs: config.keep_inputs,
            output_mode: config.output_mode,
        };
        let spool = Spool::open(config.spool.join(&mc.name), opts).map_err(|e| ConfigError {
            file: config.path.display().to_string(),
            field: "spool".into(),
            problem: format!("{e:#}"),
            fix: "point spool at a directory the agent may write (not a symlinked one); see the README's spool section".into(),
        })?;
        spool.clean_tmp(Duration::from_secs(config.tmp_max_age_s));
        Ok(spool)
    }

    /// Start-up of one model: load, plan (profiling allowed: nothing serves yet), warm up,
    /// take over dead agents' jobs. What the config got wrong exits 78.
    fn start_model(
        config: &Config,
        place: &Place,
        notifier: &Notifier,
        i: usize,
        mc: &ModelConfig,
    ) -> Result<Arc<ModelRuntime>> {
        notifier.status(&format!("loading model {}", mc.name));
        let t0 = Instant::now();
        // The config pointed at something the engine cannot run: a config error (exit 78).
        let resolved = resolve(mc).map_err(|e| ConfigError {
            file: config.path.display().to_string(),
            field: format!("model[{i}].source"),
            problem: format!("{e:#}"),
            fix: load_fix(mc.source.engine()).into(),
        })?;
        log::info!(
            "model {}: loaded {} in {:.1} s",
            mc.name,
            mc.source,
            t0.elapsed().as_secs_f64()
        );
        if let Some(n) = mc.virtual_cores {
            log::info!(
                "model {}: replaying a measured profile on {n} virtual cores (figures are replayed, not measured here)",
                mc.name
            );
        }
        let spool = Self::open_spool(config, mc)?;
        if mc.plan == PlanChoice::Auto {
            // Profiling may take the whole budget: tell systemd to wait for it.
            notifier.send(&format!(
                "EXTEND_TIMEOUT_USEC={}",
                ((mc.profile_budget_s * 2.0 + 60.0) * 1e6) as u64
            ));
        }
        let mut last_log = Instant::now() - Duration::from_secs(10);
        let mut progress = |done: usize, total: usize, eta: Duration, what: &str| {
            if last_log.elapsed() >= Duration::from_secs(2) || done == total {
                last_log = Instant::now();
                let msg = format!(
                    "profiling {}: point {done}/{total} {what}, ~{:.0}s left",
                    mc.name,
                    eta.as_secs_f64()
                );
                log::info!("{msg}");
                notifier.status(&msg);
            }
        };
        let (table, profile) = load::plan(
            mc,
            &resolved.model,
            place,
            Profiling::Allowed,
            &mut progress,
        )
        .map_err(|e| match &mc.plan {
            // A fixed plan that cannot run here is the config's mistake.
            PlanChoice::Fixed(_) => ConfigError {
                file: config.path.display().to_string(),
                field: format!("model[{i}].plan"),
                problem: format!("{e:#}"),
                fix: "give the instances at most as many threads (and cores) as `cores` allows, or use plan = \"auto\"".into(),
            }
            .into(),
            _ => e,
        })?;
        let (table, adapter) = load::adapting(mc, place, table, profile);
        let version = ModelVersion::new(
            mc.clone(),
            load::label(mc),
            resolved,
            table,
            place.topo.clone(),
            adapter,
        );
        notifier.status(&format!("warming up model {}", mc.name));
        version.warm_up()?;
        let rt = Arc::new(ModelRuntime::new(version, spool, place.clone()));
        let recovered = rt.take_over();
        if recovered > 0 {
            log::info!(
                "model {}: {recovered} job(s) of stopped agents run again first",
                mc.name
            );
        }
        Ok(rt)
    }

    pub fn model_count(&self) -> usize {
        self.models.len()
    }

    /// Watches the models' incoming/ folders and version folders from now on; `tx` gets what
    /// they see.
    pub fn watch(&mut self, tx: Sender<Event>) -> Result<()> {
        self.jobs_watch = Some(Watch::new(tx.clone(), Event::Arrival)?);
        self.versions_watch = Some(Watch::new(tx, Event::Versions)?);
        self.rewatch()
    }

    fn rewatch(&mut self) -> Result<()> {
        let incoming: Vec<PathBuf> = self
            .models
            .iter()
            .map(|m| m.rt.spool.dir(Folder::Incoming))
            .collect();
        let versions: Vec<PathBuf> = self
            .models
            .iter()
            .filter_map(|m| m.rt.settings().versions.map(|v| v.dir))
            .collect();
        if let Some(w) = self.jobs_watch.as_mut() {
            w.set(&incoming)?;
        }
        if let Some(w) = self.versions_watch.as_mut() {
            // A version folder that cannot be watched is still rescanned periodically.
            if let Err(e) = w.set(&versions) {
                log::warn!("{e:#}; new versions are seen on the periodic rescan only");
            }
        }
        Ok(())
    }

    /// Looks at what waits in every model's incoming/ (claimed only when it runs).
    pub fn scan(&self) {
        for m in &self.models {
            m.rt.offer_waiting();
        }
    }

    /// Re-solves which cores each model gets, from their loads now.
    pub fn repartition(&mut self) {
        let rts: Vec<Arc<ModelRuntime>> = self.models.iter().map(|m| m.rt.clone()).collect();
        self.partitioner.tick(self.config.partition, &rts, false);
    }

    /// After a scan: a model the partition gave no cores (it had no work) whose jobs now wait
    /// is given some at once.
    pub fn repartition_if_starved(&mut self) {
        let starved = self
            .models
            .iter()
            .any(|m| m.rt.share().is_some_and(|s| s.is_empty()) && m.rt.has_waiting());
        if starved {
            let rts: Vec<Arc<ModelRuntime>> = self.models.iter().map(|m| m.rt.clone()).collect();
            self.partitioner.tick(self.config.partition, &rts, true);
        }
    }

    /// Takes over the jobs of agents on the same spools that are gone.
    pub fn take_over(&self) {
        for m in &self.models {
            m.rt.take_over();
        }
    }

    /// Looks at every folder of versions: a wanted version (the highest, or the pinned one)
    /// that is not serving, and did not fail as its folder is now, is loaded beside the
    /// serving one.
    pub fn check_versions(&self) {
        for m in &self.models {
            let cfg = m.rt.settings();
            let Some(dir) = &cfg.versions else { continue };
            let wanted = match dir.wanted() {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    log::debug!("model {}: cannot list {}: {e}", cfg.name, dir.dir.display());
                    continue;
                }
            };
            let label = wanted.to_string();
            let fingerprint = dir.fingerprint(wanted);
            if !m.rt.wants(&label, &fingerprint) {
                continue;
            }
            match dir.source(wanted) {
                Ok(source) => m.rt.stage(ModelConfig { source, ..cfg }),
                Err(why) => m.rt.refuse(
                    &label,
                    &dir.folder(wanted).display().to_string(),
                    &why,
                    fingerprint,
                ),
            }
        }
    }

    /// Whether every model is making progress: its dispatcher is alive, and idle or running a
    /// batch that started less than `limit` ago. The watchdog pings only then.
    pub fn progress(&self, limit: Duration) -> Result<(), String> {
        for m in &self.models {
            if m.dispatcher.as_ref().is_some_and(JoinHandle::is_finished) {
                return Err(format!(
                    "model {}: its dispatcher thread is gone",
                    m.rt.name
                ));
            }
            if let Some(t) = m.rt.stuck_for().filter(|t| *t > limit) {
                return Err(format!(
                    "model {}: a batch has been running for {:.0} s",
                    m.rt.name,
                    t.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// What systemd's `STATUS=` should say now.
    pub fn status_line(&self) -> String {
        let troubles: Vec<String> = self
            .models
            .iter()
            .filter_map(|m| {
                m.rt.storage_problem()
                    .map(|p| format!("model {}: {p}", m.rt.name))
            })
            .collect();
        if troubles.is_empty() {
            let replans: Vec<String> = self
                .models
                .iter()
                .filter_map(|m| m.rt.replan_summary().map(|s| format!("{}: {s}", m.rt.name)))
                .collect();
            let mut line = format!("serving {} model(s)", self.models.len());
            if !replans.is_empty() {
                line.push_str(&format!(" ({})", replans.join("; ")));
            }
            line
        } else {
            format!("jobs held: {}", troubles.join("; "))
        }
    }

    pub fn clean_tmp(&self) {
        for m in &self.models {
            m.rt.spool
                .clean_tmp(Duration::from_secs(self.config.tmp_max_age_s));
        }
    }

    pub fn write_status(&self, state: AgentState) {
        let status = Status {
            pid: std::process::id(),
            start_time: self.start_time,
            state,
            updated: crate::spool::time::rfc3339(SystemTime::now()),
            config: self.config.path.display().to_string(),
            cpu: Some(CpuInfo::detect().clone()),
            models: self.models.iter().map(|m| m.rt.status()).collect(),
            partition: self.partitioner.status.clone(),
        };
        if let Err(e) = status.write(&self.config.state_dir) {
            log::warn!("cannot write the status file: {e:#}");
        }
    }

    /// SIGHUP: re-read the config and apply all of it while the models serve. A changed
    /// model (source, version, inputs, max_batch, engine, precision) gets a new version
    /// beside the old; a changed plan re-plans; a new model is loaded on a helper thread and
    /// joins once warm; a removed one finishes its batch in flight and gives back what it
    /// claimed. A refused config changes nothing.
    pub fn reload(&mut self) {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.notifier
            .send(&format!("RELOADING=1\nMONOTONIC_USEC={mono}"));
        log::info!("SIGHUP received: reloading {}", self.config.path.display());
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, keeping the running config: {e}");
                self.notifier.send(
                    "READY=1\nSTATUS=reload refused: bad config (see the journal); old config kept",
                );
                return;
            }
        };
        let gone: Vec<String> = self
            .models
            .iter()
            .map(|m| m.rt.name.clone())
            .filter(|n| !new.models.iter().any(|mc| &mc.name == n))
            .collect();
        for name in gone {
            self.remove(&name);
        }
        for mc in &new.models {
            match self.models.iter().find(|m| m.rt.name == mc.name) {
                Some(m) => Self::reconfigure(&new, &self.place.of(mc), &m.rt, mc),
                None => self.add(&new, mc),
            }
        }
        self.config = new;
        if let Err(e) = self.rewatch() {
            log::warn!("reload: {e:#}; rescans still find new jobs");
        }
        self.check_versions();
        self.notifier.send(&format!(
            "READY=1\nSTATUS=serving {} model(s) (reloaded)",
            self.models.len()
        ));
    }

    /// A reload's config for a model that serves on.
    fn reconfigure(new: &Config, place: &Place, rt: &Arc<ModelRuntime>, mc: &ModelConfig) {
        rt.set_settings(mc);
        let serving = rt.serving();
        if !same_model(&serving.cfg, mc) {
            log::info!(
                "reload: model '{}' changed: loading it as a new version",
                mc.name
            );
            rt.stage(mc.clone());
            return;
        }
        let adapts = mc.plan == PlanChoice::Auto && mc.adapt.enabled;
        if adapts && serving.replan_now() {
            log::info!("reload: model '{}' re-plans from its live profile", mc.name);
            return;
        }
        let place = Place {
            topo: place.topo.clone(),
            state_dir: new.state_dir.clone(),
        };
        let noop = &mut |_: usize, _: usize, _: Duration, _: &str| {};
        match load::plan(mc, &serving.model(), &place, Profiling::CachedOnly, noop) {
            Ok((table, profile)) => {
                let (table, adapter) = load::adapting(mc, &place, table, profile);
                serving.set_adapter(adapter);
                serving.set_plans(table);
            }
            Err(e) => log::error!("reload: model '{}' keeps its plan: {e:#}", mc.name),
        }
    }

    /// A model a reload added: loaded, planned and warmed on a helper thread (never profiled:
    /// the others serve on these cores), then it joins through [`Agent::adopt_added`].
    fn add(&mut self, config: &Config, mc: &ModelConfig) {
        if !self.adding.insert(mc.name.clone()) {
            return; // already on its way
        }
        log::info!("reload: adding model '{}'", mc.name);
        let name = mc.name.clone();
        let (config, mc, place, tx) = (
            config.clone(),
            mc.clone(),
            self.place.of(mc),
            self.added_tx.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("pr-add".into())
            .spawn(move || {
                let name = mc.name.clone();
                let built = (|| -> Result<Arc<ModelRuntime>> {
                    let version = load::beside(mc.clone(), &place, None)?;
                    let spool = Self::open_spool(&config, &mc)?;
                    let rt = Arc::new(ModelRuntime::new(version, spool, place));
                    rt.take_over();
                    Ok(rt)
                })();
                let _ = tx.send((name, built));
            });
        if let Err(e) = spawned {
            log::error!("reload: cannot spawn a thread to add '{name}': {e}");
            self.adding.remove(&name);
        }
    }

    /// Starts serving the models whose loading finished (call from the loop).
    pub fn adopt_added(&mut self) {
        let mut changed = false;
        while let Ok((name, built)) = self.added.try_recv() {
            self.adding.remove(&name);
            let still_wanted = self.config.models.iter().any(|m| m.name == name);
            let rt = match built {
                Ok(rt) if still_wanted => rt,
                Ok(rt) => {
                    rt.give_back();
                    continue;
                }
                Err(e) => {
                    log::error!("reload: model '{name}' not added: {e:#}; a later reload retries");
                    continue;
                }
            };
            match rt.spawn_dispatcher() {
                Ok(dispatcher) => {
                    log::info!(
                        "model {name}: added; serving version {}",
                        rt.serving().label
                    );
                    rt.offer_waiting();
                    self.models.push(Served {
                        rt,
                        dispatcher: Some(dispatcher),
                    });
                    changed = true;
                }
                Err(e) => log::error!("model {name}: cannot start its dispatcher: {e}"),
            }
        }
        if changed {
            if let Err(e) = self.rewatch() {
                log::warn!("{e:#}; rescans still find new jobs");
            }
        }
        self.removing.retain(|h| !h.is_finished());
    }

    /// A model a reload removed: it stops claiming, finishes its batch in flight and gives
    /// back what it claimed (on a helper thread), so its backlog waits in incoming/.
    fn remove(&mut self, name: &str) {
        let Some(k) = self.models.iter().position(|m| m.rt.name == name) else {
            return;
        };
        let Served { rt, dispatcher } = self.models.remove(k);
        log::info!("reload: removing model '{name}': finishing its batch in flight");
        rt.stop();
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("pr-remove".into())
            .spawn(move || {
                if let Some(d) = dispatcher {
                    let _ = d.join();
                }
                rt.give_back();
                log::info!("model {name}: removed; its backlog stays in incoming/");
            })
            .context("cannot spawn a thread to remove a model");
        match spawned {
            Ok(h) => self.removing.push(h),
            Err(e) => log::error!("{e:#}"),
        }
    }

    /// Stops every dispatcher after its batch in flight, waits for them, and gives back what
    /// is still claimed: the backlog stays in incoming/ for the next agent.
    pub fn drain(&mut self) {
        for m in &self.models {
            m.rt.stop();
        }
        for h in self.removing.drain(..) {
            let _ = h.join();
        }
        for m in &mut self.models {
            if let Some(d) = m.dispatcher.take() {
                let _ = d.join();
            }
            m.rt.give_back();
        }
    }
}
