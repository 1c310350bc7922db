//! `packrat serve`: the agent's event loop and its systemd side.
//!
//! Start-up order: config (refused → exit 78) → models loaded → plans (cached profile, fresh
//! profile, config or baseline) → instances warmed → jobs of dead agents taken over → READY=1.
//! inotify wake-ups and a periodic rescan (inotify overflows and misses other hosts' writes)
//! both lead to a scan of every incoming/; the rescan also looks for dead agents' claims.
//! Dispatchers claim lazily from what the scan saw. SIGHUP re-reads the config and re-plans; a bad new config is
//! refused and the old one stays. SIGTERM/SIGINT finish the batch in flight, give back what is
//! still claimed, and exit 0.
//!
//! - [`agent`]: the models' runtimes and what the loop asks of them;
//! - [`events`]: signals and inotify as [`Event`]s on one channel (passed into the loop);
//! - [`timers`]: the loop's periodic chores;
//! - [`sdnotify`], [`status`]: talking to systemd; the status file and metrics.

pub mod agent;
pub mod events;
pub mod sdnotify;
pub mod status;
pub mod timers;

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::Result;

use crate::config::{Config, EX_CONFIG};
use agent::Agent;
pub use events::Event;
use sdnotify::Notifier;
use status::AgentState;
use timers::Every;

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
        Err(e) => match e
            .chain()
            .find_map(|c| c.downcast_ref::<crate::config::ConfigError>())
        {
            Some(ce) => {
                eprintln!("packrat: config refused: {ce}");
                EX_CONFIG
            }
            None => {
                log::error!("{e:#}");
                eprintln!("packrat: {e:#}");
                1
            }
        },
    }
}

fn run(config: Config) -> Result<()> {
    // Inter-op parallelism is process-wide and may be set only once; instances use intra-op.
    tch::set_num_interop_threads(1);
    let (tx, rx) = mpsc::channel::<Event>();
    // Signals first, so a SIGTERM during a long start-up is not lost (the default would kill
    // us); it waits in the channel and the loop handles it before any claim.
    events::forward_signals(tx.clone())?;
    let mut agent =
        Agent::start(config, Notifier::from_env()).map_err(|e| e.context("start-up failed"))?;
    agent.watch(tx)?;
    serve_until_shutdown(&mut agent, &rx);
    Ok(())
}

/// The event loop: claims on arrivals and rescans, reloads on [`Event::Reload`], and on
/// [`Event::Shutdown`] (or when every sender is gone) drains and returns.
pub fn serve_until_shutdown(agent: &mut Agent, events: &Receiver<Event>) {
    let rescan_period = Duration::from_millis(agent.config.rescan_interval_ms);
    let watchdog_period = agent.notifier.watchdog_interval();
    let tick = watchdog_period
        .map_or(rescan_period, |w| w.min(rescan_period))
        .min(crate::runtime::partition::SOLVE_EVERY);
    let mut rescan = Every::new(rescan_period);
    // Not reset by arrivals: under steady load these must still run.
    let mut chores = Every::new(rescan_period);
    let mut status = Every::new(Duration::from_secs(1));
    let mut clean = Every::new(Duration::from_secs(60));
    let mut watchdog = watchdog_period.map(Every::new);
    let mut partition = Every::new(crate::runtime::partition::SOLVE_EVERY);

    agent.scan();
    agent.write_status(AgentState::Serving);
    agent.notifier.send(&format!(
        "READY=1\nSTATUS=serving {} model(s)",
        agent.model_count()
    ));
    log::info!(
        "ready: serving {} model(s) from {}",
        agent.model_count(),
        agent.config.spool.display()
    );
    let mut status_line = agent.status_line();
    let mut stalled = false;
    let mut pending: Option<Event> = None;
    loop {
        let next = match pending.take() {
            Some(ev) => Ok(ev),
            None => events.recv_timeout(tick),
        };
        match next {
            Ok(Event::Arrival) => {
                // A burst of arrivals is one scan; keep any other event that came in between.
                while let Ok(ev) = events.try_recv() {
                    if ev != Event::Arrival {
                        pending = Some(ev);
                        break;
                    }
                }
                agent.scan();
                agent.repartition_if_starved();
                rescan.reset();
            }
            Ok(Event::Versions) => agent.check_versions(),
            Ok(Event::Reload) => agent.reload(),
            Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                log::info!("stopping: finishing the batch in flight, then exiting");
                agent
                    .notifier
                    .send("STOPPING=1\nSTATUS=finishing the batch in flight");
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        agent.adopt_added();
        if rescan.due() {
            agent.scan();
            agent.repartition_if_starved();
        }
        if partition.due() {
            agent.repartition();
        }
        if chores.due() {
            // Dead agents are looked for periodically, not per arrival; so are versions
            // inotify missed (another host's writes) and refused versions whose folder
            // changed since.
            agent.take_over();
            agent.check_versions();
        }
        if watchdog.as_mut().is_some_and(Every::due) {
            // "Alive" means making progress: a hung forward pass withholds the ping, so systemd
            // restarts the agent after WatchdogSec (its claims are then taken over).
            match agent.progress(watchdog_period.unwrap_or_default() * 2) {
                Ok(()) => {
                    agent.notifier.send("WATCHDOG=1");
                    stalled = false;
                }
                Err(why) if !stalled => {
                    log::error!("{why}: no watchdog ping until it moves; systemd restarts the agent after WatchdogSec");
                    agent.notifier.status(&format!("stalled: {why}"));
                    stalled = true;
                }
                Err(_) => {}
            }
        }
        if status.due() {
            agent.write_status(AgentState::Serving);
            // Tell systemd only when it changes: "disk full" once, not every second.
            let line = agent.status_line();
            if line != status_line {
                agent.notifier.status(&line);
                status_line = line;
            }
        }
        if clean.due() {
            agent.clean_tmp();
        }
    }
    agent.drain();
    agent.write_status(AgentState::Stopped);
    log::info!("stopped cleanly");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Folder;
    use crate::tensorfile::{self, Format};

    #[test]
    fn the_loop_claims_on_arrival_drains_on_shutdown_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packrat.toml");
        std::fs::write(
            &path,
            format!(
                "spool = \"{0}/spool\"\nstate_dir = \"{0}/state\"\n[[model]]\nname = \"m\"\nsource = \"builtin:tiny_cnn\"\nplan = \"baseline\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut agent = Agent::start(Config::load(&path).unwrap(), Notifier::from_env()).unwrap();
        let model_dir = dir.path().join("spool/m");
        let x = tch::Tensor::zeros([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let mut f = std::fs::File::create(Folder::Incoming.of(&model_dir).join("j.npy")).unwrap();
        tensorfile::write(&mut f, Format::Npy, &[("input".into(), x)]).unwrap();
        let (tx, rx) = mpsc::channel();
        tx.send(Event::Arrival).unwrap();
        // Claims are lazy: shut down only once the job is done (else it stays in incoming/).
        let out = Folder::Out.of(&model_dir).join("j.npy");
        let waiter = {
            let out = out.clone();
            std::thread::spawn(move || {
                let t0 = std::time::Instant::now();
                while !out.exists() && t0.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                tx.send(Event::Shutdown).unwrap();
            })
        };
        serve_until_shutdown(&mut agent, &rx);
        waiter.join().unwrap();
        assert!(out.exists());
        let st = status::Status::read(&dir.path().join("state")).unwrap();
        assert_eq!(st.state, AgentState::Stopped);
        assert_eq!(st.models[0].jobs_done, 1);
    }
}
