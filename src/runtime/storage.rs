//! The health of a model's spool storage. When a write fails for a reason outside the job (disk
//! full, quota, I/O error), jobs are held and retried with back-off — 1 s, doubling to 60 s —
//! and the journal says so once when the trouble starts and once when it ends, not per job.

use std::time::{Duration, Instant};

use crate::spool::StorageError;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);

struct Trouble {
    since: Instant,
    /// The last failed write: failures of one retry round (a batch) double the wait once.
    last: Instant,
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
                if t.last.elapsed() >= t.backoff / 2 {
                    t.backoff = (t.backoff * 2).min(LAST_RETRY);
                }
                t.last = Instant::now();
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
                    last: Instant::now(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StorageError {
        StorageError {
            what: "cannot write the output".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        }
    }

    #[test]
    fn a_batch_of_failures_is_one_round_and_rounds_back_off_until_ok() {
        let mut h = StorageHealth::default();
        assert_eq!(h.failed("m", &full()), FIRST_RETRY);
        // The rest of the same batch does not double the wait.
        for _ in 0..7 {
            assert_eq!(h.failed("m", &full()), FIRST_RETRY);
        }
        assert!(h.disk_full() && h.problem().unwrap().starts_with("disk full"));
        h.trouble.as_mut().unwrap().last -= FIRST_RETRY;
        assert_eq!(h.failed("m", &full()), FIRST_RETRY * 2);
        h.ok("m");
        assert!(h.problem().is_none() && !h.disk_full());
    }
}
