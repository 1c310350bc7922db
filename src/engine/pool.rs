//! The instance pool: one model's warm instance sets, keyed by layout, started on first use and
//! kept most-recently-used first up to a capacity. The runtime, the profiler and the bench all
//! get their instance sets here.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;

use super::{InstanceInfo, InstanceSet, InstanceSpec, Model};

pub struct InstancePool {
    model: Arc<Model>,
    /// Thread-name label (instance threads are called `pr-<label>-<i>`).
    label: String,
    capacity: usize,
    sets: Mutex<Vec<Arc<InstanceSet>>>,
}

impl InstancePool {
    /// A pool keeping at most `capacity` instance sets warm.
    pub fn new(model: Arc<Model>, label: &str, capacity: usize) -> InstancePool {
        InstancePool {
            model,
            label: label.chars().take(6).collect(),
            capacity: capacity.max(1),
            sets: Mutex::new(Vec::new()),
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
        let set = Arc::new(InstanceSet::start(
            self.model.clone(),
            layout.to_vec(),
            &self.label,
        )?);
        sets.insert(0, set.clone());
        sets.truncate(self.capacity);
        Ok(set)
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
