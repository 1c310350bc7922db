//! The health of a model's spool storage. When a write fails for a reason outside the job (disk
//! full, quota, I/O error), jobs are held and retried with back-off — 1 s, doubling to 60 s —
//! and the journal says so once when the trouble starts and once when it ends, not per job.

use std::time::{Duration, Instant};

use crate::spool::StorageError;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);

struct Trouble {
    since: Instant,
    what: String,
    full: bool,
    backoff: Duration,
}

#[derive(Default)]
pub struct StorageHealth {
    trouble: Option<Trouble>,
}

impl StorageHealth {
    /// Records a failed write; returns how long to wait before retrying.
    pub fn failed(&mut self, model: &str, err: &StorageError) -> Duration {
        match &mut self.trouble {
            Some(t) => {
                t.backoff = (t.backoff * 2).min(LAST_RETRY);
                t.what = err.to_string();
                t.backoff
            }
            None => {
                let full = err.is_full();
                log::error!(
                    "model {model}: {}: {err}; jobs are held and retried with back-off until it is writable again",
                    if full { "spool disk full" } else { "cannot write to the spool" }
                );
                self.trouble = Some(Trouble {
                    since: Instant::now(),
                    what: err.to_string(),
                    full,
                    backoff: FIRST_RETRY,
                });
                FIRST_RETRY
            }
        }
    }

    /// Records a successful write; says so when it ends a spell of trouble.
    pub fn ok(&mut self, model: &str) {
        if let Some(t) = self.trouble.take() {
            log::warn!(
                "model {model}: the spool is writable again after {:.0} s; held jobs resume",
                t.since.elapsed().as_secs_f64()
            );
        }
    }

    /// What is wrong, for `packrat status` and `STATUS=`.
    pub fn problem(&self) -> Option<String> {
        self.trouble.as_ref().map(|t| {
            format!(
                "{} for {:.0} s ({}); retrying every {:.0} s",
                if t.full {
                    "disk full"
                } else {
                    "spool not writable"
                },
                t.since.elapsed().as_secs_f64(),
                t.what,
                t.backoff.as_secs_f64()
            )
        })
    }

    /// Whether the trouble is that the disk is full (for the metric).
    pub fn disk_full(&self) -> bool {
        self.trouble.as_ref().is_some_and(|t| t.full)
    }
}
