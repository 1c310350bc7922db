//! The instance pool: one model's warm instance sets, keyed by layout, started on first use and
//! kept most-recently-used first up to a capacity. The runtime, the profiler and the bench all
//! get their instance sets here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;

use super::{InstanceInfo, InstanceSet, InstanceSpec, Model};

pub struct InstancePool {
    model: Arc<Model>,
    /// Thread-name label (instance threads are called `pr-<label>-<i>`).
    label: String,
    capacity: usize,
    sets: Mutex<Vec<Arc<InstanceSet>>>,
    /// Sets started by [`InstancePool::get`], i.e. in front of the batch that needed them.
    cold_starts: AtomicU64,
    /// Sets started ahead of use by [`InstancePool::prepare`].
    prepared: AtomicU64,
}

impl InstancePool {
    /// A pool keeping at most `capacity` instance sets warm.
    pub fn new(model: Arc<Model>, label: &str, capacity: usize) -> InstancePool {
        InstancePool {
            model,
            label: label.chars().take(6).collect(),
            capacity: capacity.max(1),
            sets: Mutex::new(Vec::new()),
            cold_starts: AtomicU64::new(0),
            prepared: AtomicU64::new(0),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<InstanceSet>>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance set for `layout`, started when it is not warm (the least recently used set
    /// beyond the capacity is dropped; its threads exit once the batch in flight is done).
    pub fn get(&self, layout: &[InstanceSpec]) -> Result<Arc<InstanceSet>> {
        let mut sets = self.lock();
        if let Some(i) = sets.iter().position(|s| s.layout == layout) {
            let set = sets.remove(i);
            sets.insert(0, set.clone());
            return Ok(set);
        }
        let set = self.start(layout)?;
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        sets.insert(0, set.clone());
        sets.truncate(self.capacity);
        Ok(set)
    }

    fn start(&self, layout: &[InstanceSpec]) -> Result<Arc<InstanceSet>> {
        let set = InstanceSet::start(self.model.clone(), layout.to_vec(), &self.label)?;
        Ok(Arc::new(set))
    }

    /// The warm set for `layout`, if there is one (never starts a set, keeps the order).
    pub fn warm(&self, layout: &[InstanceSpec]) -> Option<Arc<InstanceSet>> {
        self.lock().iter().find(|s| s.layout == layout).cloned()
    }

    /// Starts the sets of `layouts` that are not warm, one at a time and without holding the
    /// pool, so that a dispatcher using warm sets meanwhile never waits for a start; `ready`
    /// readies each new set before it joins the pool. They go in least recently used; returns
    /// how many were started.
    pub fn prepare(
        &self,
        layouts: &[Vec<InstanceSpec>],
        ready: impl Fn(&InstanceSet) -> Result<()>,
    ) -> Result<usize> {
        let mut n = 0;
        for l in layouts {
            if self.warm(l).is_some() {
                continue;
            }
            let set = self.start(l)?;
            ready(&set)?;
            self.prepared.fetch_add(1, Ordering::Relaxed);
            n += 1;
            let mut sets = self.lock();
            if !sets.iter().any(|s| s.layout == *l) {
                sets.push(set);
            }
        }
        Ok(n)
    }

    /// (sets started in front of a batch, sets started ahead of use).
    pub fn starts(&self) -> (u64, u64) {
        (
            self.cold_starts.load(Ordering::Relaxed),
            self.prepared.load(Ordering::Relaxed),
        )
    }

    /// Drops every warm set whose layout is not in `keep`.
    pub fn retain(&self, keep: &[Vec<InstanceSpec>]) {
        self.lock().retain(|s| keep.contains(&s.layout));
    }

    /// How many sets are warm.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live instance threads (tids, cores, thread counts), most recently used set first.
    pub fn infos(&self) -> Vec<InstanceInfo> {
        self.lock().iter().flat_map(|s| s.infos()).collect()
    }
}
