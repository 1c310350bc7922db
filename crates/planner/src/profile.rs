//! Latency profiles: latency(t, b) of one instance with `t` threads on `b` items, stored as
//! JSON, plus the latency model the planner uses between measured batch sizes, and the points
//! a targeted profiler measures ([`targets`]).
//!
//! Schema (reads `shared/profiles/*.json` as they are; extra fields are kept optional):
//! `{"model", "cores", "machine"?, "source"?, "framework"?, "units"?, "co_located"?, "key"?,
//!   "points": [{"threads", "batch", "latency_ms", "latency_min_ms"?, "latency_max_ms"?,
//!               "samples"?}]}`
//! Each profiled thread count needs batch 1; other batch sizes may differ between thread
//! counts (targeted profiling measures only what the planner can use).
//!
//! Latency between profiled batch sizes is piecewise-linear in b, and linear past the last
//! one (the last segment's slope). Why: on CPU, inference cost is a per-call overhead plus a
//! per-item cost, and in the authors' profiles latency/b changes little between neighbouring
//! powers of two (the midpoint check in `tests` bounds it). The curve is made non-decreasing in
//! b (a measured dip is noise: a larger batch never costs less), which the DP relies on.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Writes `value` as JSON to `path` atomically (a temporary file beside it, then a rename), so
/// that a reader or a crash never sees half a file.
pub fn save_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub threads: usize,
    pub batch: usize,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_min_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_max_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

/// What a profile was measured on; a cached profile is reused only when all of it matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProfileKey {
    pub model: String,
    pub model_hash: String,
    pub input: String,
    pub cpu_model: String,
    /// Vendor, family/model and the inference-relevant instruction sets
    /// ([`crate::cpu::CpuInfo::key`]): a state dir carried to another CPU, or a VM moved to
    /// another host generation under the same name, is never trusted. Keys written before
    /// this field read as "" and so never match.
    #[serde(default)]
    pub cpu: String,
    pub cores: Vec<usize>,
    /// The engine, its version and the precision (`libtorch 2.13.0+cu130 f32`).
    pub engine: String,
    pub packrat: String,
    pub max_batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileFile {
    pub model: String,
    pub cores: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// True when each point was measured with ⌊cores/t⌋ instances running at once.
    #[serde(default)]
    pub co_located: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ProfileKey>,
    pub points: Vec<Point>,
}

impl Point {
    /// A measured point without the optional spread and sample count.
    pub fn new(threads: usize, batch: usize, latency_ms: f64) -> Point {
        Point {
            threads,
            batch,
            latency_ms,
            latency_min_ms: None,
            latency_max_ms: None,
            samples: None,
        }
    }
}

impl ProfileFile {
    pub fn load(path: &Path) -> Result<ProfileFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        if text.trim().is_empty() {
            bail!(
                "profile {} is empty: re-run `packrat profile` or point at a profile JSON file",
                path.display()
            );
        }
        serde_json::from_str(&text).with_context(|| {
            format!(
                "profile {} is not valid profile JSON (see the schema in the README)",
                path.display()
            )
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }

    /// Validates the points and builds the latency model.
    pub fn curve(&self) -> Result<Curve> {
        Curve::from_points(&self.points)
    }
}

/// One thread count's measured batch sizes (ascending) and latencies (non-decreasing).
#[derive(Debug, Clone)]
struct Row {
    batches: Vec<usize>,
    lat: Vec<f64>,
}

/// latency(t, b) for the profiled thread counts and any batch size b >= 1.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Profiled thread counts, ascending.
    pub threads: Vec<usize>,
    rows: Vec<Row>,
}

impl Curve {
    pub fn from_points(points: &[Point]) -> Result<Curve> {
        if points.is_empty() {
            bail!("the profile has no points: it needs latency_ms for each (threads, batch)");
        }
        for p in points {
            if p.threads == 0 || p.batch == 0 {
                bail!(
                    "profile point (threads {}, batch {}): threads and batch must be >= 1",
                    p.threads,
                    p.batch
                );
            }
            if !p.latency_ms.is_finite() || p.latency_ms <= 0.0 {
                bail!(
                    "profile point (threads {}, batch {}) has latency_ms = {}: latencies must be finite and > 0; re-profile",
                    p.threads,
                    p.batch,
                    p.latency_ms
                );
            }
        }
        let threads: Vec<usize> = points
            .iter()
            .map(|p| p.threads)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut rows = Vec::with_capacity(threads.len());
        for &t in &threads {
            let mut pts: Vec<(usize, f64)> = points
                .iter()
                .filter(|p| p.threads == t)
                .map(|p| (p.batch, p.latency_ms))
                .collect();
            pts.sort_by_key(|p| p.0);
            if let Some(w) = pts.windows(2).find(|w| w[0].0 == w[1].0) {
                bail!(
                    "profile point (threads {t}, batch {}) appears twice",
                    w[0].0
                );
            }
            if pts[0].0 != 1 {
                bail!(
                    "the profile is missing the point (threads {t}, batch 1): every thread count needs batch 1 so that small sub-batches are measured, not guessed"
                );
            }
            let batches: Vec<usize> = pts.iter().map(|p| p.0).collect();
            let mut lat: Vec<f64> = pts.iter().map(|p| p.1).collect();
            for i in 1..lat.len() {
                lat[i] = lat[i].max(lat[i - 1]);
            }
            rows.push(Row { batches, lat });
        }
        Ok(Curve { threads, rows })
    }

    /// Profiled thread counts that fit on `cores` cores (a prefix of `threads`, so indices agree).
    pub fn threads_up_to(&self, cores: usize) -> Vec<usize> {
        self.threads
            .iter()
            .copied()
            .take_while(|&t| t <= cores)
            .collect()
    }

    pub fn max_threads(&self) -> usize {
        self.threads.last().copied().unwrap_or(0)
    }

    /// Batch sizes measured for thread count `t`.
    pub fn batches(&self, t: usize) -> &[usize] {
        match self.threads.binary_search(&t) {
            Ok(ti) => &self.rows[ti].batches,
            Err(_) => &[],
        }
    }

    /// Measured latency at a profiled point, if (t, b) was profiled.
    pub fn measured(&self, t: usize, b: usize) -> Option<f64> {
        let row = &self.rows[self.threads.binary_search(&t).ok()?];
        Some(row.lat[row.batches.binary_search(&b).ok()?])
    }

    /// Modelled latency of an instance with the `ti`-th profiled thread count on `b` items.
    pub fn latency(&self, ti: usize, b: usize) -> f64 {
        let Row {
            batches: bs,
            lat: row,
        } = &self.rows[ti];
        if bs.len() == 1 {
            // Batch 1 only: assume latency proportional to b.
            return row[0] * b as f64;
        }
        let k = match bs.binary_search(&b) {
            Ok(i) => return row[i],
            Err(i) if i >= bs.len() => bs.len() - 2,
            Err(i) => i - 1,
        };
        let (b0, b1) = (bs[k] as f64, bs[k + 1] as f64);
        let slope = (row[k + 1] - row[k]) / (b1 - b0);
        row[k] + slope * (b as f64 - b0)
    }
}

/// The points a targeted profiler measures: thread counts are the powers of two up to `cores`
/// plus `cores` itself, and for t threads only the batch sizes an instance can get when
/// ⌊cores/t⌋ of them share `max_batch` (powers of two up to that, and that).
pub fn targets(cores: usize, max_batch: usize) -> Vec<(usize, Vec<usize>)> {
    let mut ts: Vec<usize> = (0..)
        .map(|k| 1usize << k)
        .take_while(|&t| t <= cores)
        .collect();
    if ts.last() != Some(&cores) {
        ts.push(cores);
    }
    ts.into_iter()
        .map(|t| {
            let k = cores / t;
            let top = max_batch.div_ceil(k).next_power_of_two().min(max_batch);
            let mut bs: Vec<usize> = (0..)
                .map(|k| 1usize << k)
                .take_while(|&b| b <= top)
                .collect();
            if bs.last() != Some(&top) {
                bs.push(top);
            }
            (t, bs)
        })
        .collect()
}

#[cfg(test)]
mod target_tests {
    use super::targets;

    #[test]
    fn targets_cover_what_the_dp_can_use() {
        assert_eq!(
            targets(2, 64),
            vec![
                (1, vec![1, 2, 4, 8, 16, 32]),
                (2, vec![1, 2, 4, 8, 16, 32, 64])
            ]
        );
        let t = targets(6, 48);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 4, 6]);
        assert_eq!(t[0].1, vec![1, 2, 4, 8]);
        assert_eq!(t[3].1.last(), Some(&48));
    }
}
