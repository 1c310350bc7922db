//! The agent: the configured models' runtimes, started in order (load → plan → warm up →
//! recover), plus what the event loop asks of them — scan, reload, status, stop.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use super::sdnotify::Notifier;
use super::status::{process_start_time, AgentState, Status};
use crate::config::{Config, ConfigError, ModelConfig, PlanChoice};
use crate::engine::{EngineKind, Model};
use crate::planner::cpu::CpuInfo;
use crate::planner::profile::ProfileFile;
use crate::planner::topology::Topology;
use crate::planner::PlanTable;
use crate::profiler::profile_path;
use crate::runtime::adapt::{live_path, unix_now, Adapter, Reason, Replan};
use crate::runtime::plans::{build_plans, log_plans, Profiling};
use crate::runtime::precision::resolve;
use crate::runtime::ModelRuntime;
use crate::spool::{Folder, Spool, SpoolOptions};

/// What to do when a configured model does not load.
fn load_fix(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Libtorch => "point source at a TorchScript file (torch.jit.save) or a builtin:NAME",
        EngineKind::OpenVino => "point source at an ONNX model or an OpenVINO IR .xml (with its .bin) whose inputs match the config; if OpenVINO itself is missing, run packaging/setup-openvino.sh or set PACKRAT_OPENVINO=/path/to/libopenvino_c.so",
        EngineKind::OnnxRuntime => "point source at an ONNX model (torch.onnx.export) whose inputs match the config; if ONNX Runtime itself is missing, run packaging/setup-onnxruntime.sh or set PACKRAT_ONNXRUNTIME=/path/to/libonnxruntime.so.1",
    }
}

pub struct Agent {
    pub config: Config,
    topo: Topology,
    pub notifier: Notifier,
    pub models: Vec<Arc<ModelRuntime>>,
    dispatchers: Vec<JoinHandle<()>>,
    /// This process's start time, written beside the pid (see [`Status::start_time`]).
    start_time: Option<u64>,
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
        let mut models = Vec::new();
        for (i, mc) in config.models.iter().enumerate() {
            notifier.status(&format!("loading model {}", mc.name));
            let t0 = Instant::now();
            // The config pointed at something the engine cannot run: a config error (exit 78).
            let resolved = resolve(mc).map_err(|e| ConfigError {
                file: config.path.display().to_string(),
                field: format!("model[{i}].source"),
                problem: format!("{e:#}"),
                fix: load_fix(mc.source.engine()).into(),
            })?;
            let model = resolved.model.clone();
            log::info!(
                "model {}: loaded {} in {:.1} s",
                mc.name,
                mc.source,
                t0.elapsed().as_secs_f64()
            );
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
            let (table, profile) =
                Self::plan(&config, &topo, &notifier, mc, &model, Profiling::Allowed).map_err(|e| match &mc.plan {
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
            let (table, adapter) = Self::adapting(&config, &topo, mc, table, profile);
            let rt = Arc::new(ModelRuntime::new(
                mc.clone(),
                resolved,
                spool,
                table,
                topo.clone(),
                adapter,
            ));
            notifier.status(&format!("warming up model {}", mc.name));
            rt.warm_up()?;
            let recovered = rt.take_over();
            if recovered > 0 {
                log::info!(
                    "model {}: {recovered} job(s) of stopped agents run again first",
                    mc.name
                );
            }
            models.push(rt);
        }
        let dispatchers = models
            .iter()
            .map(|rt| rt.spawn_dispatcher())
            .collect::<Result<_, _>>()?;
        Ok(Agent {
            config,
            topo,
            notifier,
            models,
            dispatchers,
            start_time: process_start_time(std::process::id()),
        })
    }

    /// A model's plan table; profiling progress goes to the journal and to systemd.
    fn plan(
        config: &Config,
        topo: &Topology,
        notifier: &Notifier,
        mc: &crate::config::ModelConfig,
        model: &Arc<Model>,
        profiling: Profiling,
    ) -> Result<(PlanTable, Option<ProfileFile>)> {
        if mc.plan == PlanChoice::Auto && profiling == Profiling::Allowed {
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
        let (table, profile) =
            build_plans(mc, model, topo, &config.state_dir, profiling, &mut progress)?;
        log_plans(&mc.name, &table);
        Ok((table, profile))
    }

    /// For an adapting `auto` model: the adapter, grown from the profile (or from the live
    /// profile the last run left), and the table it gives; otherwise `table` as it is.
    fn adapting(
        config: &Config,
        topo: &Topology,
        mc: &ModelConfig,
        table: PlanTable,
        profile: Option<ProfileFile>,
    ) -> (PlanTable, Option<Adapter>) {
        let Some(profile) = profile.filter(|_| mc.plan == PlanChoice::Auto && mc.adapt.enabled)
        else {
            return (table, None);
        };
        let (mut adapter, restored) = Adapter::new(
            &profile,
            &profile_path(&config.state_dir, &mc.name),
            &config.state_dir,
            topo.clone(),
            mc.adapt.clone(),
            mc.max_batch,
        );
        match adapter.table() {
            Ok(t) => {
                if restored {
                    log::info!(
                        "model {}: planning from the live profile the last run left ({})",
                        mc.name,
                        live_path(&config.state_dir, &mc.name).display()
                    );
                    log_plans(&mc.name, &t);
                    adapter.switched(Replan {
                        reason: Reason::Restored,
                        at: unix_now(),
                        predicted_change_pct: 0.0,
                        summary: t.for_batch(mc.max_batch).summary(),
                    });
                }
                (t, Some(adapter))
            }
            Err(e) => {
                log::warn!("model {}: not adapting ({e:#})", mc.name);
                (table, None)
            }
        }
    }

    /// The incoming/ folders to watch.
    pub fn incoming_dirs(&self) -> Vec<std::path::PathBuf> {
        self.models
            .iter()
            .map(|rt| rt.spool.dir(Folder::Incoming))
            .collect()
    }

    /// Looks at what waits in every model's incoming/ (claimed only when it runs).
    pub fn scan(&self) {
        for rt in &self.models {
            rt.offer_waiting();
        }
    }

    /// Takes over the jobs of agents on the same spools that are gone.
    pub fn take_over(&self) {
        for rt in &self.models {
            rt.take_over();
        }
    }

    /// Whether every model is making progress: its dispatcher is alive, and idle or running a
    /// batch that started less than `limit` ago. The watchdog pings only then.
    pub fn progress(&self, limit: Duration) -> Result<(), String> {
        for (rt, d) in self.models.iter().zip(&self.dispatchers) {
            if d.is_finished() {
                return Err(format!(
                    "model {}: its dispatcher thread is gone",
                    rt.cfg.name
                ));
            }
            if let Some(t) = rt.stuck_for().filter(|t| *t > limit) {
                return Err(format!(
                    "model {}: a batch has been running for {:.0} s",
                    rt.cfg.name,
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
            .filter_map(|rt| {
                rt.storage_problem()
                    .map(|p| format!("model {}: {p}", rt.cfg.name))
            })
            .collect();
        if troubles.is_empty() {
            let replans: Vec<String> = self
                .models
                .iter()
                .filter_map(|rt| rt.replan_summary().map(|s| format!("{}: {s}", rt.cfg.name)))
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
        for rt in &self.models {
            rt.spool
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
            models: self.models.iter().map(|m| m.status()).collect(),
        };
        if let Err(e) = status.write(&self.config.state_dir) {
            log::warn!("cannot write the status file: {e:#}");
        }
    }

    /// SIGHUP: re-read the config; re-plan models whose plan settings changed (or that plan
    /// automatically: their cached profile may be newer). A refused config changes nothing.
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
            let adapts = mc.plan == PlanChoice::Auto && mc.adapt.enabled;
            if adapts && rt.replan_now() {
                log::info!("reload: model '{}' re-plans from its live profile", mc.name);
                continue;
            }
            match Self::plan(
                &new,
                &self.topo,
                &self.notifier,
                mc,
                &rt.model(),
                Profiling::CachedOnly,
            ) {
                Ok((table, profile)) => {
                    let (table, adapter) = Self::adapting(&new, &self.topo, mc, table, profile);
                    rt.set_adapter(adapter);
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

    /// Stops every dispatcher after its batch in flight, waits for them, and gives back what
    /// is still claimed: the backlog stays in incoming/ for the next agent.
    pub fn drain(&mut self) {
        for rt in &self.models {
            rt.stop();
        }
        for d in self.dispatchers.drain(..) {
            let _ = d.join();
        }
        for rt in &self.models {
            rt.give_back();
        }
    }
}
