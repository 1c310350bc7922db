//! What wakes the event loop: job arrivals and new model versions (inotify), and signals,
//! turned into [`Event`]s on one channel. The loop itself only reads the channel, so a test can
//! drive it directly.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use anyhow::{Context, Result};
use notify::Watcher;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Something may have arrived in an incoming/: scan.
    Arrival,
    /// A folder of model versions changed (a version renamed in, or removed): look at it.
    Versions,
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

/// An inotify watch on a set of folders that can change while it runs (models added or
/// removed by a reload). Every change in them becomes `event` (and so do inotify errors, which
/// may hide one).
pub struct Watch {
    watcher: notify::RecommendedWatcher,
    dirs: Vec<PathBuf>,
}

impl Watch {
    pub fn new(tx: Sender<Event>, event: Event) -> Result<Watch> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
            // Open/read events must be ignored: our own scans cause them.
            let changed = match res {
                Ok(ev) => {
                    matches!(
                        ev.kind,
                        EventKind::Create(_)
                            | EventKind::Modify(ModifyKind::Name(_))
                            | EventKind::Access(AccessKind::Close(AccessMode::Write))
                            | EventKind::Other
                            | EventKind::Any
                    ) || (event == Event::Versions && matches!(ev.kind, EventKind::Remove(_)))
                }
                Err(e) => {
                    log::warn!("inotify reported an error ({e}): rescanning");
                    true
                }
            };
            if changed {
                let _ = tx.send(event);
            }
        })
        .context("cannot start inotify")?;
        Ok(Watch {
            watcher,
            dirs: Vec::new(),
        })
    }

    /// Watches exactly `dirs` from now on.
    pub fn set(&mut self, dirs: &[PathBuf]) -> Result<()> {
        for gone in self.dirs.iter().filter(|d| !dirs.contains(d)) {
            // A folder removed from disk has lost its watch already.
            let _ = self.watcher.unwatch(gone);
        }
        self.dirs.retain(|d| dirs.contains(d));
        for d in dirs {
            if !self.dirs.contains(d) {
                self.watcher
                    .watch(d, notify::RecursiveMode::NonRecursive)
                    .with_context(|| format!("cannot watch {}", d.display()))?;
                self.dirs.push(d.clone());
            }
        }
        Ok(())
    }
}
