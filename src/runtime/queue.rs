//! What the dispatcher runs next: jobs this agent already owns (taken over from a dead agent,
//! or held back by a storage error) come first; then names waiting in `incoming/`, which stay
//! unclaimed — any agent may take them — until the dispatcher is about to run them. Those run
//! earliest deadline first; a job without a deadline counts as due when it arrived, so it is
//! never starved by jobs with one (and jobs without deadlines run oldest first).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::spool::Job;

/// A name seen waiting in incoming/, with when it is due.
#[derive(Debug, Clone)]
pub struct Pending {
    pub name: OsString,
    pub arrived: SystemTime,
    pub due: Option<SystemTime>,
}

impl Pending {
    fn key(&self) -> SystemTime {
        self.due.unwrap_or(self.arrived)
    }
}

/// The next thing to run.
pub enum Next {
    /// A job this agent already claimed.
    Owned(Job),
    /// A name seen in incoming/, to claim now.
    Waiting(OsString),
}

#[derive(Default)]
struct Inner {
    owned: VecDeque<Job>,
    waiting: VecDeque<Pending>,
    /// Storage trouble: owned jobs are retried from then on, and nothing new is claimed.
    paused_until: Option<Instant>,
    /// Something other than a job wants the dispatcher's attention (a version to switch to).
    nudged: bool,
}

#[derive(Default)]
pub struct JobQueue {
    inner: Mutex<Inner>,
    wake: Condvar,
    stopping: AtomicBool,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs this agent owns, to run before anything waiting.
    pub fn push_owned(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        self.lock().owned.extend(jobs);
        self.wake.notify_one();
    }

    /// The names a scan of incoming/ found, oldest first: they replace the previous scan's,
    /// in the order they are to run.
    pub fn offer(&self, mut names: Vec<Pending>) {
        // Stable: equal keys keep the scan's order (mtime, then name).
        names.sort_by_key(Pending::key);
        let mut q = self.lock();
        q.waiting = names.into();
        if !q.waiting.is_empty() {
            self.wake.notify_one();
        }
    }

    /// The names waiting, in the order they are to run, and how many owned jobs come first.
    pub fn waiting(&self) -> (usize, Vec<Pending>) {
        let q = self.lock();
        (q.owned.len(), q.waiting.iter().cloned().collect())
    }

    /// Takes `names` out of the waiting list (the dispatcher settles them itself).
    pub fn withdraw(&self, names: &[OsString]) {
        let names: std::collections::HashSet<&OsString> = names.iter().collect();
        self.lock().waiting.retain(|p| !names.contains(&p.name));
    }

    /// Jobs owned plus names seen waiting.
    pub fn len(&self) -> usize {
        let q = self.lock();
        q.owned.len() + q.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the dispatcher to stop after the batch in flight: nothing more is claimed.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Holds back claiming for `delay` (storage trouble); owned jobs wait as long.
    pub fn pause(&self, delay: Duration) {
        self.lock().paused_until = Some(Instant::now() + delay);
    }

    pub fn resume(&self) {
        self.lock().paused_until = None;
    }

    /// The next thing to run; with `block`, waits for one. None once stopping, or (without
    /// `block`) when nothing is ready. While paused, nothing comes out until the pause ends.
    pub fn next(&self, block: bool) -> Option<Next> {
        let mut q = self.lock();
        loop {
            if self.stopping() {
                return None;
            }
            // Paused: wait; once the pause is over, owned jobs retry first.
            let wait = q
                .paused_until
                .and_then(|t| t.checked_duration_since(Instant::now()));
            if wait.is_none() {
                if let Some(j) = q.owned.pop_front() {
                    return Some(Next::Owned(j));
                }
                if let Some(p) = q.waiting.pop_front() {
                    return Some(Next::Waiting(p.name));
                }
            }
            if !block {
                return None;
            }
            let timeout = wait.unwrap_or(Duration::from_millis(500));
            q = self
                .wake
                .wait_timeout(q, timeout)
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wakes a dispatcher waiting for work without giving it any.
    pub fn nudge(&self) {
        self.lock().nudged = true;
        self.wake.notify_all();
    }

    /// Waits up to `timeout` for something to run; true when there is (false on timeout, on a
    /// nudge, or once stopping).
    pub fn wait_for_work(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if self.stopping() {
                return false;
            }
            if !q.owned.is_empty() || !q.waiting.is_empty() {
                return true;
            }
            if std::mem::take(&mut q.nudged) {
                return false;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            q = self
                .wake
                .wait_timeout(q, left)
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Owned jobs left when the dispatcher stopped (to give back).
    pub fn take_owned(&self) -> Vec<Job> {
        self.lock().owned.drain(..).collect()
    }
}
