//! A model's version history as status and metrics show it: which version serves, which are
//! loaded or loading, the swaps, the loads that failed (and so are not retried until their
//! folder changes), and the outcomes of jobs per version.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A version that was refused: it failed to load, to take the configured inputs, or to run
/// its warm-up batch. The version before it kept serving.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedLoad {
    pub version: String,
    /// The version folder or model file.
    pub source: String,
    pub reason: String,
    pub at: String,
}

/// A switch from one version to the next, between batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Swap {
    pub from: String,
    pub to: String,
    pub at: String,
    /// From the start of loading to the switch: load, check, plan, warm-up.
    pub load_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcomes {
    pub done: u64,
    pub failed: u64,
}

/// What `packrat status` says of a model's versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionsStatus {
    pub serving: String,
    /// Versions in memory: the serving one, one loading or warm and waiting to switch, or one
    /// switched away from whose last batch is still running. Never more than two.
    pub loaded: Vec<String>,
    pub loading: Option<String>,
    pub swaps: u64,
    pub last_swap: Option<Swap>,
    pub failed_loads: u64,
    pub last_failed_load: Option<FailedLoad>,
    /// Jobs finished per version that ran them.
    pub outcomes: BTreeMap<String, Outcomes>,
}

#[derive(Default)]
pub struct Lifecycle {
    pub status: VersionsStatus,
    /// Versions that failed, with what their folder held then: retried once that changes.
    refused: HashMap<String, String>,
}

impl Lifecycle {
    pub fn new(serving: &str) -> Lifecycle {
        Lifecycle {
            status: VersionsStatus {
                serving: serving.into(),
                ..VersionsStatus::default()
            },
            refused: HashMap::new(),
        }
    }

    /// Whether `version` failed before with its folder as it is now (`fingerprint`).
    pub fn refused_as_is(&self, version: &str, fingerprint: &str) -> bool {
        self.refused.get(version).is_some_and(|f| f == fingerprint)
    }

    pub fn failed(&mut self, version: &str, source: &str, reason: &str, fingerprint: String) {
        self.refused.insert(version.into(), fingerprint);
        self.status.failed_loads += 1;
        self.status.last_failed_load = Some(FailedLoad {
            version: version.into(),
            source: source.into(),
            reason: reason.into(),
            at: crate::spool::time::rfc3339(SystemTime::now()),
        });
    }

    pub fn swapped(&mut self, from: &str, to: &str, load_ms: f64) {
        self.refused.remove(to);
        self.status.serving = to.into();
        self.status.swaps += 1;
        self.status.last_swap = Some(Swap {
            from: from.into(),
            to: to.into(),
            at: crate::spool::time::rfc3339(SystemTime::now()),
            load_ms,
        });
    }

    pub fn outcome(&mut self, version: &str, done: bool) {
        let o = self.status.outcomes.entry(version.into()).or_default();
        if done {
            o.done += 1;
        } else {
            o.failed += 1;
        }
    }
}
