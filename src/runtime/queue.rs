//! The queue of claimed jobs waiting for the dispatcher, and the stop flag that ends it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::spool::Job;

#[derive(Default)]
pub struct JobQueue {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stopping: AtomicBool,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        self.lock().extend(jobs);
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the dispatcher to finish what is queued, then exit.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// The next job; with `block`, waits for one unless stopping (then None once empty).
    pub fn pop(&self, block: bool) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if let Some(j) = q.pop_front() {
                return Some(j);
            }
            if !block || self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            q = self
                .wake
                .wait_timeout(q, Duration::from_millis(500))
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}
