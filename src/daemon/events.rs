//! What wakes the event loop: job arrivals (inotify), and signals, turned into [`Event`]s on
//! one channel. The loop itself only reads the channel, so a test can drive it directly.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use anyhow::{Context, Result};
use notify::Watcher;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Something may have arrived in an incoming/: scan.
    Arrival,
    /// SIGHUP: re-read the config and re-plan.
    Reload,
    /// SIGTERM/SIGINT: stop claiming, drain, exit.
    Shutdown,
}

/// Forwards SIGTERM, SIGINT and SIGHUP as events, from a thread of its own.
pub fn forward_signals(tx: Sender<Event>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let ev = if s == SIGHUP {
                    Event::Reload
                } else {
                    Event::Shutdown
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

/// Watches `dirs` with inotify; arrivals (and inotify errors, which may hide arrivals) become
/// [`Event::Arrival`]. The watch lasts as long as the returned watcher.
pub fn watch(tx: Sender<Event>, dirs: &[PathBuf]) -> Result<notify::RecommendedWatcher> {
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
            let _ = tx.send(Event::Arrival);
        }
    })
    .context("cannot start inotify")?;
    for d in dirs {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", d.display()))?;
    }
    Ok(watcher)
}
