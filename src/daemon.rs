//! `packrat serve`: starts the models, watches the spools, and runs until SIGTERM.
//!
//! Start-up order: config (refused → exit 78) → models loaded → plans (cached profile, fresh
//! profile, config or baseline) → instances warmed → leftover jobs recovered → READY=1.
//! One event loop owns claiming: inotify wake-ups and a periodic rescan (inotify overflows and
//! misses NFS writes) both lead to a scan of every incoming/. SIGHUP re-reads the config and
//! re-plans; a bad new config is refused and the old one stays. SIGTERM/SIGINT stop claiming,
//! drain what was claimed, and exit 0.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use notify::Watcher;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{Config, ModelConfig, PlanChoice, EX_CONFIG};
use crate::model::Model;
use crate::planner::profile::ProfileFile;
use crate::planner::topology::{allowed_cpus, Topology};
use crate::planner::{profiler, PlanTable};
use crate::queue::ModelRuntime;
use crate::sdnotify::Notifier;
use crate::spool::Spool;
use crate::status::Status;

enum Event {
    Fs,
    Signal(i32),
}

/// The cores the agent may use: the config's list (checked against the affinity mask) or the
/// mask itself.
pub fn usable_topology(cfg: &Config) -> Result<Topology> {
    let allowed = allowed_cpus()?;
    let cores = match &cfg.cores {
        Some(list) => {
            if let Some(c) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(anyhow!(
                    "{}: cores: core {c} is not in this process's CPU mask {allowed:?}\n  fix: list only allowed cores, or widen CPUAffinity= in the unit",
                    cfg.path.display()
                ));
            }
            list.clone()
        }
        None => allowed,
    };
    Ok(Topology::detect(&cores))
}

/// When a model with `plan = "auto"` may be profiled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profiling {
    /// At start-up (and in `bench`): nothing is being served on these cores yet.
    Allowed,
    /// On reload: the instances are serving, so only a valid cached profile may be used.
    CachedOnly,
}

/// The plan table for a model, per its config. `Auto` reuses the cached profile or, when
/// `profiling` allows, measures one; if measuring fails the model still serves, on the baseline.
pub fn build_plans(
    cfg: &ModelConfig,
    model: &Arc<Model>,
    topo: &Topology,
    state_dir: &Path,
    notifier: &Notifier,
    profiling: Profiling,
) -> Result<PlanTable> {
    if cfg.plan == PlanChoice::Auto && profiling == Profiling::CachedOnly {
        let key = profiler::profile_key(cfg, topo)?;
        let profile = profiler::cached(state_dir, &key).ok_or_else(|| {
            anyhow!(
                "no valid cached profile for '{0}' (new model file, or the host changed?), and profiling now would stall serving: run `packrat profile --model {0} --config <this agent's config>` and reload, or restart the agent",
                cfg.name
            )
        })?;
        return plans_from_profile(&profile, topo, cfg.max_batch);
    }
    match &cfg.plan {
        PlanChoice::Baseline => Ok(PlanTable::baseline(topo, cfg.max_batch)),
        PlanChoice::Explicit(parts) => PlanTable::explicit(topo, parts, cfg.max_batch)
            .with_context(|| {
                format!(
                    "model[{}].plan does not fit the {} usable cores",
                    cfg.name,
                    topo.len()
                )
            }),
        PlanChoice::Auto => {
            let budget = cfg.profile_budget_s;
            // Profiling may take the whole budget: tell systemd to wait for it.
            notifier.send(&format!(
                "EXTEND_TIMEOUT_USEC={}",
                ((budget * 2.0 + 60.0) * 1e6) as u64
            ));
            let mut last_log = Instant::now() - Duration::from_secs(10);
            let mut progress = |done: usize, total: usize, eta: Duration, what: &str| {
                if last_log.elapsed() >= Duration::from_secs(2) || done == total {
                    last_log = Instant::now();
                    let msg = format!(
                        "profiling {}: point {done}/{total} {what}, ~{:.0}s left",
                        cfg.name,
                        eta.as_secs_f64()
                    );
                    log::info!("{msg}");
                    notifier.status(&msg);
                }
            };
            match profiler::profile_or_cached(model.clone(), cfg, topo, state_dir, &mut progress) {
                Ok((profile, was_cached)) => {
                    if was_cached {
                        log::info!(
                            "model {}: using the cached profile in {}",
                            cfg.name,
                            profiler::profile_path(state_dir, &cfg.name).display()
                        );
                    }
                    plans_from_profile(&profile, topo, cfg.max_batch)
                }
                Err(e) => {
                    log::error!("model {}: profiling failed ({e:#}); serving on the baseline (one instance, all cores)", cfg.name);
                    Ok(PlanTable::baseline(topo, cfg.max_batch))
                }
            }
        }
    }
}

fn plans_from_profile(
    profile: &ProfileFile,
    topo: &Topology,
    max_batch: usize,
) -> Result<PlanTable> {
    PlanTable::from_curve(&profile.curve()?, topo, max_batch)
}

fn log_plans(name: &str, table: &PlanTable) {
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

struct Agent {
    config: Config,
    topo: Topology,
    notifier: Notifier,
    models: Vec<Arc<ModelRuntime>>,
}

impl Agent {
    fn start(config: Config, notifier: Notifier) -> Result<Agent> {
        let topo = usable_topology(&config)?;
        log::info!("using {} cores: {:?}", topo.len(), topo.ordered());
        let mut models = Vec::new();
        for mc in &config.models {
            notifier.status(&format!("loading model {}", mc.name));
            let t0 = Instant::now();
            let model = Arc::new(
                Model::load(&mc.name, &mc.source, mc.inputs.clone())
                    .with_context(|| format!("model '{}'", mc.name))?,
            );
            log::info!(
                "model {}: loaded {} in {:.1} s",
                mc.name,
                mc.source,
                t0.elapsed().as_secs_f64()
            );
            let spool = Spool::open(config.spool.join(&mc.name), config.keep_inputs)?;
            spool.clean_tmp(Duration::from_secs(config.tmp_max_age_s));
            let table = build_plans(
                mc,
                &model,
                &topo,
                &config.state_dir,
                &notifier,
                Profiling::Allowed,
            )?;
            log_plans(&mc.name, &table);
            let rt = Arc::new(ModelRuntime::new(mc.clone(), model, spool, table));
            notifier.status(&format!("warming up model {}", mc.name));
            rt.warm_up()?;
            let recovered = rt.spool.recover()?;
            if !recovered.is_empty() {
                log::info!(
                    "model {}: {} job(s) left in processing/ run again",
                    mc.name,
                    recovered.len()
                );
            }
            rt.enqueue(recovered);
            models.push(rt);
        }
        Ok(Agent {
            config,
            topo,
            notifier,
            models,
        })
    }

    fn scan(&self) {
        for rt in &self.models {
            let mut jobs = Vec::new();
            for name in rt.spool.scan() {
                match rt.spool.claim(&name) {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) => {}
                    Err(e) => log::error!("model {}: {e:#}", rt.cfg.name),
                }
            }
            rt.enqueue(jobs);
        }
    }

    fn status(&self, state: &str) -> Status {
        Status {
            pid: std::process::id(),
            state: state.into(),
            updated: crate::status::rfc3339(std::time::SystemTime::now()),
            config: self.config.path.display().to_string(),
            models: self.models.iter().map(|m| m.status()).collect(),
        }
    }

    fn write_status(&self, state: &str) {
        if let Err(e) = self.status(state).write(&self.config.state_dir) {
            log::warn!("cannot write the status file: {e:#}");
        }
    }

    /// SIGHUP: re-read the config; re-plan models whose plan settings changed (or that plan
    /// automatically: their cached profile may be newer). A refused config changes nothing.
    fn reload(&mut self) {
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
        for mc in &new.models {
            let Some(rt) = self.models.iter().find(|m| m.cfg.name == mc.name) else {
                log::warn!("reload: new model '{}' is not started by a reload: restart the agent to add it", mc.name);
                continue;
            };
            if rt.cfg.source != mc.source
                || rt.cfg.inputs != mc.inputs
                || rt.cfg.max_batch != mc.max_batch
            {
                log::warn!("reload: model '{}' changed its source, inputs or max_batch: restart the agent to apply that", mc.name);
                continue;
            }
            match build_plans(
                mc,
                &rt.model,
                &self.topo,
                &new.state_dir,
                &self.notifier,
                Profiling::CachedOnly,
            ) {
                Ok(table) => {
                    log_plans(&mc.name, &table);
                    rt.set_plans(table);
                }
                Err(e) => log::error!("reload: model '{}' keeps its plan: {e:#}", mc.name),
            }
        }
        for rt in &self.models {
            if !new.models.iter().any(|m| m.name == rt.cfg.name) {
                log::warn!("reload: model '{}' was removed from the config: restart the agent to stop serving it", rt.cfg.name);
            }
        }
        self.notifier.send(&format!(
            "READY=1\nSTATUS=serving {} model(s) (reloaded)",
            self.models.len()
        ));
    }
}

/// Runs the daemon; returns the process exit code.
pub fn serve(config_path: &Path) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("packrat: config refused: {e}");
            return EX_CONFIG;
        }
    };
    match run(config) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("packrat: {e:#}");
            1
        }
    }
}

fn run(config: Config) -> Result<()> {
    // Inter-op parallelism is process-wide and may be set only once; instances use intra-op.
    tch::set_num_interop_threads(1);
    let notifier = Notifier::from_env();
    let (tx, rx) = mpsc::channel::<Event>();

    // Signals first, so a SIGTERM during a long start-up is not lost (the default would kill us).
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let sig_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if sig_tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })?;

    let mut agent = match Agent::start(config, notifier) {
        Ok(a) => a,
        Err(e) => {
            return Err(e.context("start-up failed"));
        }
    };
    // A SIGTERM that came in during start-up is handled by the loop below before any claim.
    let dispatchers: Vec<_> = agent
        .models
        .iter()
        .map(|rt| {
            let rt = rt.clone();
            std::thread::Builder::new()
                .name(
                    format!("dispatch-{}", rt.cfg.name)
                        .chars()
                        .take(15)
                        .collect(),
                )
                .spawn(move || rt.dispatch())
        })
        .collect::<Result<_, _>>()?;

    let fs_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        // Only arrivals matter. Open/read events must be ignored: our own scans cause them.
        let arrival = match res {
            Ok(ev) => matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Modify(ModifyKind::Name(_))
                    | EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Other
                    | EventKind::Any
            ),
            Err(e) => {
                log::warn!("inotify reported an error ({e}): rescanning");
                true
            }
        };
        if arrival {
            let _ = fs_tx.send(Event::Fs);
        }
    })
    .context("cannot start inotify")?;
    for rt in &agent.models {
        watcher
            .watch(
                &rt.spool.dir("incoming"),
                notify::RecursiveMode::NonRecursive,
            )
            .with_context(|| format!("cannot watch {}", rt.spool.dir("incoming").display()))?;
    }

    let rescan = Duration::from_millis(agent.config.rescan_interval_ms);
    let tick = agent
        .notifier
        .watchdog_interval()
        .map_or(rescan, |w| w.min(rescan))
        .min(Duration::from_secs(1));
    agent.scan();
    agent.write_status("serving");
    agent.notifier.send(&format!(
        "READY=1\nSTATUS=serving {} model(s)",
        agent.models.len()
    ));
    log::info!(
        "ready: serving {} model(s) from {}",
        agent.models.len(),
        agent.config.spool.display()
    );

    let mut last_scan = Instant::now();
    let mut last_status = Instant::now();
    let mut last_clean = Instant::now();
    let mut last_watchdog = Instant::now();
    let mut pending: Option<Event> = None;
    loop {
        let next = match pending.take() {
            Some(ev) => Ok(ev),
            None => rx.recv_timeout(tick),
        };
        match next {
            Ok(Event::Fs) => {
                // A burst of events is one scan; keep any signal that arrived in between.
                loop {
                    match rx.try_recv() {
                        Ok(Event::Fs) => continue,
                        Ok(other) => pending = Some(other),
                        Err(_) => {}
                    }
                    break;
                }
                agent.scan();
                last_scan = Instant::now();
            }
            Ok(Event::Signal(SIGHUP)) => agent.reload(),
            Ok(Event::Signal(s)) => {
                log::info!(
                    "signal {s} received: no new claims, draining claimed jobs, then exiting"
                );
                agent.notifier.send("STOPPING=1\nSTATUS=draining");
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_scan.elapsed() >= rescan {
            agent.scan();
            last_scan = Instant::now();
        }
        if let Some(w) = agent.notifier.watchdog_interval() {
            if last_watchdog.elapsed() >= w {
                agent.notifier.send("WATCHDOG=1");
                last_watchdog = Instant::now();
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            agent.write_status("serving");
            last_status = Instant::now();
        }
        if last_clean.elapsed() >= Duration::from_secs(60) {
            for rt in &agent.models {
                rt.spool
                    .clean_tmp(Duration::from_secs(agent.config.tmp_max_age_s));
            }
            last_clean = Instant::now();
        }
    }
    drop(watcher);
    for rt in &agent.models {
        rt.stop();
    }
    for d in dispatchers {
        let _ = d.join();
    }
    agent.write_status("stopped");
    log::info!("stopped cleanly");
    Ok(())
}
