//! Targeted, co-located profiling of a loaded model on this host: it runs the engine's
//! instance sets on the points [`targets`] names and writes a [`ProfileFile`] for the planner.
//! It also owns the profile cache in the state dir (keyed by everything that invalidates it).
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

use crate::engine::{
    EngineKind, InputSpec, InstancePool, InstanceSet, InstanceSpec, Model, ModelSource, Precision,
};
use crate::planner::cpu::CpuInfo;
use crate::planner::profile::{targets, Point, ProfileFile, ProfileKey};
use crate::planner::stats::median_precision;
use crate::planner::topology::Topology;

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

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The version of an engine's library.
pub fn engine_version(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Libtorch => crate::LIBTORCH_VERSION,
        EngineKind::OnnxRuntime => crate::engine::ONNXRUNTIME_VERSION,
        EngineKind::OpenVino => crate::engine::OPENVINO_VERSION,
        EngineKind::Replay => "1",
    }
}

/// What a profile is of: a model as served (its source, precision, inputs and batch limit).
pub struct Subject<'a> {
    pub name: &'a str,
    pub source: &'a ModelSource,
    pub precision: Precision,
    pub inputs: &'a [InputSpec],
    pub max_batch: usize,
}

/// Everything that invalidates a profile.
pub fn profile_key(subject: &Subject, topo: &Topology) -> Result<ProfileKey> {
    let model_hash = match subject.source {
        ModelSource::Builtin(_) => subject.source.to_string(),
        ModelSource::TorchScript(path)
        | ModelSource::Onnx(path)
        | ModelSource::OpenVino(path)
        | ModelSource::Replay(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read {} to hash it", path.display()))?;
            format!("fnv1a64:{:016x}", fnv1a(&bytes, 0xcbf2_9ce4_8422_2325))
        }
    };
    Ok(ProfileKey {
        model: subject.name.to_string(),
        model_hash,
        input: format!("{:?}", subject.inputs),
        cpu_model: CpuInfo::detect().model.clone(),
        cpu: CpuInfo::detect().key(),
        cores: topo.ordered(),
        engine: format!(
            "{} {} {}",
            subject.source.engine().name(),
            engine_version(subject.source.engine()),
            subject.precision.name()
        ),
        packrat: env!("CARGO_PKG_VERSION").to_string(),
        max_batch: subject.max_batch,
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

/// The layout a point with `t` threads is measured on: ⌊T/t⌋ instances on disjoint cores.
pub fn co_located(topo: &Topology, t: usize) -> Result<Vec<InstanceSpec>> {
    let k = topo.len() / t.max(1);
    Ok(topo
        .assign(&vec![t; k])?
        .into_iter()
        .map(|cores| InstanceSpec { threads: t, cores })
        .collect())
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
    let pool = InstancePool::new(model.clone(), "prof", plan.len());
    let mut sets = Vec::with_capacity(plan.len());
    for (t, _) in &plan {
        let layout = co_located(topo, *t)?;
        sets.push((layout.len(), pool.get(&layout)?));
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
        machine: Some(CpuInfo::detect().summary()),
        source: Some(format!("packrat {} targeted co-located profiling", env!("CARGO_PKG_VERSION"))),
        framework: Some(format!(
            "{} {} {}",
            model.engine.name(),
            engine_version(model.engine),
            model.precision.name()
        )),
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
    subject: &Subject,
    budget: Duration,
    topo: &Topology,
    state_dir: &Path,
    progress: Progress,
) -> Result<(ProfileFile, bool)> {
    let key = profile_key(subject, topo)?;
    if let Some(p) = cached(state_dir, &key) {
        return Ok((p, true));
    }
    let mut p = measure(model, topo, subject.max_batch, budget, progress)?;
    p.key = Some(key);
    let path = profile_path(state_dir, subject.name);
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
    use super::*;
    use crate::engine::Builtin;

    #[test]
    fn a_profile_is_cached_under_its_key_and_refused_for_another() {
        let b = Builtin::TinyCnn;
        let (source, inputs) = (ModelSource::Builtin(b), b.default_inputs());
        let subject = |max_batch| Subject {
            name: "tiny",
            source: &source,
            precision: Precision::F32,
            inputs: &inputs,
            max_batch,
        };
        let topo = Topology::flat(1);
        let model = Arc::new(Model::load("tiny", &source, inputs.clone(), Precision::F32).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let budget = Duration::from_secs(5);
        let mut quiet = |_: usize, _: usize, _: Duration, _: &str| {};
        let (p, was_cached) = profile_or_cached(
            model.clone(),
            &subject(2),
            budget,
            &topo,
            dir.path(),
            &mut quiet,
        )
        .unwrap();
        assert!(!was_cached);
        assert_eq!(
            p.points
                .iter()
                .map(|p| (p.threads, p.batch))
                .collect::<Vec<_>>(),
            [(1, 1), (1, 2)]
        );
        let (_, was_cached) = profile_or_cached(
            model.clone(),
            &subject(2),
            budget,
            &topo,
            dir.path(),
            &mut quiet,
        )
        .unwrap();
        assert!(was_cached);
        // Another max_batch is another key: measured again.
        let key = profile_key(&subject(4), &topo).unwrap();
        assert!(cached(dir.path(), &key).is_none());
    }
}
