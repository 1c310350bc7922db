//! Targeted, co-located profiling of a loaded model on this host.
//!
//! Not the full grid: thread counts are the powers of two up to T plus T itself, and for t
//! threads only the batch sizes an instance can get when ⌊T/t⌋ of them share `max_batch`
//! (powers of two up to that, and that). Each point is measured **co-located**: ⌊T/t⌋
//! instances of (t, b) run at once on disjoint cores and the batch's wall time is recorded, so
//! the profile includes the memory-bandwidth and cache interference that isolated profiles
//! miss. A first pass goes breadth-first over batch sizes, warming up and timing each point once;
//! a point whose estimated cost would overrun the budget is skipped, and the latency model
//! extrapolates the larger batches of that thread count. Then the points are timed again in
//! rounds — so that the host's drift during profiling shifts them alike rather than skewing
//! some against others — until each median is known to ±3 % (95 % confidence) or the budget is
//! spent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::profile::{Point, ProfileFile, ProfileKey};
use super::topology::Topology;
use crate::config::ModelConfig;
use crate::instances::{InstanceSet, InstanceSpec};
use crate::model::Model;

/// Target relative half-width of the 95 % confidence interval of a point's median.
const TARGET_PRECISION: f64 = 0.03;
const MIN_REPS: usize = 3;
const MAX_REPS: usize = 25;

/// A point being measured: ⌊T/t⌋ instances of (t, b) at once.
struct Measured {
    t: usize,
    b: usize,
    k: usize,
    ti: usize,
    inputs: Vec<tch::Tensor>,
    samples: Vec<f64>,
}

impl Measured {
    fn run(&self, set: &InstanceSet) -> Result<f64> {
        let t0 = Instant::now();
        set.run(&self.inputs, &vec![self.b; self.k])?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn converged(&self) -> bool {
        let n = self.samples.len();
        n >= MAX_REPS || (n >= MIN_REPS && median_precision(&self.samples).1 <= TARGET_PRECISION)
    }

    fn cost_ms(&self) -> f64 {
        median_precision(&self.samples).0
    }
}

/// Progress callback: (points done, points in all, estimated time left, what is measured now).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, Duration, &str);

/// The thread counts and, for each, the batch sizes to measure.
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

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Everything that invalidates a profile.
pub fn profile_key(cfg: &ModelConfig, topo: &Topology) -> Result<ProfileKey> {
    let model_hash = match cfg.source.strip_prefix("builtin:") {
        Some(_) => cfg.source.clone(),
        None => {
            let bytes = std::fs::read(&cfg.source)
                .with_context(|| format!("cannot read {} to hash it", cfg.source))?;
            format!("fnv1a64:{:016x}", fnv1a(&bytes, 0xcbf2_9ce4_8422_2325))
        }
    };
    Ok(ProfileKey {
        model: cfg.name.clone(),
        model_hash,
        input: format!("{:?}", cfg.inputs),
        cpu_model: cpu_model(),
        cores: topo.ordered(),
        libtorch: crate::LIBTORCH_VERSION.to_string(),
        packrat: env!("CARGO_PKG_VERSION").to_string(),
        max_batch: cfg.max_batch,
    })
}

pub fn profile_path(state_dir: &Path, model: &str) -> PathBuf {
    state_dir.join("profiles").join(format!("{model}.json"))
}

/// The cached profile, when its key matches exactly.
pub fn cached(state_dir: &Path, key: &ProfileKey) -> Option<ProfileFile> {
    let p = ProfileFile::load(&profile_path(state_dir, &key.model)).ok()?;
    (p.key.as_ref() == Some(key) && p.curve().is_ok()).then_some(p)
}

/// Median and the relative half-width of its 95 % confidence interval.
fn median_precision(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    if v.len() < 2 {
        return (med, f64::INFINITY);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
    // The median's standard error is about 1.2533·σ/√n for near-normal timings.
    (med, 1.96 * 1.2533 * sd / (v.len() as f64).sqrt() / med)
}

/// Measures the model on `topo`'s cores within about `budget`.
pub fn measure(
    model: Arc<Model>,
    topo: &Topology,
    max_batch: usize,
    budget: Duration,
    progress: Progress,
) -> Result<ProfileFile> {
    let cores = topo.len();
    let plan = targets(cores, max_batch);
    let total_points: usize = plan.iter().map(|(_, bs)| bs.len()).sum();
    // Budget shares are proportional to the work of a point (items per instance).
    let total_weight: f64 = plan
        .iter()
        .flat_map(|(_, bs)| bs.iter().map(|&b| b as f64))
        .sum();
    // One instance set per thread count: ⌊T/t⌋ co-located instances of t threads.
    let mut sets = Vec::with_capacity(plan.len());
    for (t, _) in &plan {
        let k = cores / t;
        let layout: Vec<InstanceSpec> = topo
            .assign(&vec![*t; k])?
            .into_iter()
            .map(|c| InstanceSpec {
                threads: *t,
                cores: c,
            })
            .collect();
        sets.push((k, InstanceSet::start(model.clone(), layout, "prof")?));
    }
    // Breadth-first over batch sizes, so that when the budget runs out it is the largest
    // batches that are left to extrapolation, for every thread count alike.
    let mut order: Vec<(usize, usize)> = plan
        .iter()
        .enumerate()
        .flat_map(|(ti, (_, bs))| bs.iter().map(move |&b| (b, ti)))
        .collect();
    order.sort();
    let start = Instant::now();
    let over_budget =
        |extra_ms: f64| start.elapsed().as_secs_f64() + extra_ms / 1e3 > budget.as_secs_f64();
    let mut done_weight = 0.0;
    let mut done = 0;
    // Per thread count: the last measured (batch, ms), and whether its row is closed.
    let mut last: Vec<Option<(usize, f64)>> = vec![None; plan.len()];
    let mut closed = vec![false; plan.len()];
    // Every point runs on a view of one shared input, sized for the largest point.
    let most_items = plan
        .iter()
        .map(|(t, bs)| bs.last().copied().unwrap_or(1) * (cores / t))
        .max()
        .unwrap_or(1);
    let shared_inputs = model.example_inputs(most_items as i64);
    // Pass 1, breadth-first: a warm-up and a first timed run of every point that fits.
    let mut measured: Vec<Measured> = Vec::new();
    for (b, ti) in order {
        let t = plan[ti].0;
        let (k, set) = &sets[ti];
        done += 1;
        done_weight += b as f64;
        if closed[ti] {
            continue;
        }
        // A warm-up and two timed runs at least: skip the point if that cannot fit.
        let estimate = last[ti].map_or(0.0, |(pb, ms)| ms * b as f64 / pb as f64 * 3.0);
        if b > 1 && over_budget(estimate) {
            log::info!(
                "profiling {}: budget reached; t={t} measured up to b={}, larger batches are extrapolated",
                model.name,
                last[ti].map_or(1, |l| l.0)
            );
            closed[ti] = true;
            continue;
        }
        let eta = start
            .elapsed()
            .mul_f64((total_weight - done_weight) / done_weight.max(1.0));
        progress(done - 1, total_points, eta, &format!("{k}×(t={t}, b={b})"));
        let mut point = Measured {
            t,
            b,
            k: *k,
            ti,
            inputs: shared_inputs
                .iter()
                .map(|x| x.narrow(0, 0, (b * k) as i64))
                .collect(),
            samples: Vec::new(),
        };
        // Always warm up: the first run of a new batch size pays for oneDNN primitives and
        // for first-touch allocation of its activations (hundreds of MB for large batches).
        point.run(set)?;
        let ms = point.run(set)?;
        point.samples.push(ms);
        last[ti] = Some((b, ms));
        measured.push(point);
    }
    // Pass 2, in rounds over the points: drift during profiling then shifts every point alike
    // instead of skewing some against others, and the plan depends on their ratios.
    progress(
        done,
        total_points,
        budget.saturating_sub(start.elapsed()),
        "timing in rounds",
    );
    loop {
        let open: Vec<usize> = (0..measured.len())
            .filter(|&i| !measured[i].converged())
            .collect();
        if open.is_empty() {
            break;
        }
        let round_ms: f64 = open.iter().map(|&i| measured[i].cost_ms()).sum();
        if over_budget(round_ms) {
            // Not a whole round left: give the remaining time to points with a single sample.
            for &i in &open {
                if measured[i].samples.len() < 2 && !over_budget(measured[i].cost_ms()) {
                    let ms = measured[i].run(&sets[measured[i].ti].1)?;
                    measured[i].samples.push(ms);
                }
            }
            break;
        }
        for &i in &open {
            let ms = measured[i].run(&sets[measured[i].ti].1)?;
            measured[i].samples.push(ms);
        }
    }
    let mut points: Vec<Point> = measured
        .iter()
        .map(|m| {
            let (med, _) = median_precision(&m.samples);
            log::debug!(
                "profile t={} b={} ×{}: median {med:.2} ms over {} runs",
                m.t,
                m.b,
                m.k,
                m.samples.len()
            );
            Point {
                threads: m.t,
                batch: m.b,
                latency_ms: med,
                latency_min_ms: Some(m.samples.iter().copied().fold(f64::INFINITY, f64::min)),
                latency_max_ms: Some(m.samples.iter().copied().fold(0.0, f64::max)),
                samples: Some(m.samples.len()),
            }
        })
        .collect();
    points.sort_by_key(|p| (p.threads, p.batch));
    progress(done, total_points, Duration::ZERO, "done");
    Ok(ProfileFile {
        model: model.name.clone(),
        cores,
        machine: Some(cpu_model()),
        source: Some(format!("packrat {} targeted co-located profiling", env!("CARGO_PKG_VERSION"))),
        framework: Some(format!("libtorch {}", crate::LIBTORCH_VERSION)),
        units: Some(
            "latency_ms: median wall time of one batch when floor(cores/threads) instances of (threads, batch) run at once on disjoint cores"
                .into(),
        ),
        co_located: true,
        key: None,
        points,
    })
}

/// The cached profile for this model and host, or a fresh measurement (then cached).
pub fn profile_or_cached(
    model: Arc<Model>,
    cfg: &ModelConfig,
    topo: &Topology,
    state_dir: &Path,
    progress: Progress,
) -> Result<(ProfileFile, bool)> {
    let key = profile_key(cfg, topo)?;
    if let Some(p) = cached(state_dir, &key) {
        return Ok((p, true));
    }
    let mut p = measure(
        model,
        topo,
        cfg.max_batch,
        Duration::from_secs_f64(cfg.profile_budget_s),
        progress,
    )?;
    p.key = Some(key);
    let path = profile_path(state_dir, &cfg.name);
    if let Err(e) = p.save(&path) {
        log::warn!(
            "cannot cache the profile at {}: {e:#} (it will be measured again next start)",
            path.display()
        );
    }
    Ok((p, false))
}

#[cfg(test)]
mod tests {
    use super::targets;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        // Two samples, one cold: the estimate must not be the cold one.
        assert_eq!(super::median_precision(&[100.0, 140.0]).0, 120.0);
        let (m, prec) = super::median_precision(&[10.0, 10.0, 10.0]);
        assert_eq!((m, prec), (10.0, 0.0));
        assert!(super::median_precision(&[5.0]).1.is_infinite());
    }

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
