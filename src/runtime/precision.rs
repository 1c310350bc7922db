//! Which precision a model serves in, and why — always what the engine actually computes in,
//! never merely what was asked. `f32` is f32. `bf16` serves bf16 where the CPU has bf16 units
//! and the engine confirms it computes bf16 (OpenVINO's compiled model says; libtorch without
//! the units only emulates bf16, slowly); elsewhere it serves f32 and the journal says why,
//! once, naming the CPU. `auto` serves bf16 only where it is both within the model's
//! `bf16_tolerance` (on example inputs at load, then on a bounded sample of real jobs, checked
//! when nothing waits) and measurably faster (`bf16_min_speedup`, interleaved pairs at load);
//! past the tolerance the model switches to f32 for good and the journal says why.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::{ModelConfig, PrecisionChoice};
use crate::engine::{relative_difference, EngineKind, InstanceSpec, Model, Outputs, Precision};
use crate::planner::cpu::CpuInfo;
use crate::planner::stats::median;

/// Real jobs an `auto` model checks against f32 at most.
pub const JOB_CHECKS: u32 = 8;

/// Interleaved f32/bf16 pairs timed at load for `auto` (fewer when they take over
/// [`SPEED_BUDGET_S`], but never fewer than 3).
const SPEED_PAIRS: usize = 5;
const SPEED_BUDGET_S: f64 = 5.0;

/// What `packrat status` and the metrics say about a model's precision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrecisionStatus {
    /// `f32` or `bf16`: what the engine computes in now.
    pub in_use: String,
    /// `f32`, `bf16` or `auto`: what the config asked for.
    pub requested: String,
    /// Largest drift of bf16 from f32 seen so far (max |Δ| over max |f32 output|).
    pub bf16_drift: Option<f64>,
    pub tolerance: Option<f64>,
    /// For `auto`: f32 time over bf16 time on example inputs (median of interleaved pairs).
    #[serde(default)]
    pub bf16_speedup: Option<f64>,
    /// Real jobs checked against f32 (auto).
    pub jobs_checked: u32,
    /// Why it serves what it serves, when that was decided by measuring or by the CPU.
    pub reason: Option<String>,
}

/// A loaded model in its chosen precision, and the f32 twin `auto` keeps for checking jobs.
pub struct Resolved {
    pub model: Arc<Model>,
    pub twin: Option<Arc<Model>>,
    pub status: PrecisionStatus,
}

/// Drift of `bf16` from `f32` on example inputs of 4 items.
fn example_drift(f32: &Model, bf16: &Model, xs: &[Tensor]) -> Result<f64> {
    relative_difference(&f32.forward(xs)?, &bf16.forward(xs)?)
}

/// f32 time over bf16 time on `xs`: the median over pairs run back to back on this thread,
/// alternating which goes first, after a warm-up run of each (the host's speed drifts by tens
/// of percent within seconds, so only pairs compare).
fn paired_speedup(f32: &Model, bf16: &Model, xs: &[Tensor]) -> Result<(f64, usize)> {
    let spec = InstanceSpec {
        threads: 1,
        cores: Vec::new(),
    };
    let (mut a, mut b) = (f32.open(&spec)?, bf16.open(&spec)?);
    a.run(xs)?;
    b.run(xs)?;
    let time = |s: &mut Box<dyn crate::engine::Session>| -> Result<f64> {
        let t0 = Instant::now();
        s.run(xs)?;
        Ok(t0.elapsed().as_secs_f64())
    };
    let t0 = Instant::now();
    let mut ratios = Vec::new();
    while ratios.len() < SPEED_PAIRS
        && (ratios.len() < 3 || t0.elapsed().as_secs_f64() < SPEED_BUDGET_S)
    {
        let (fa, fb) = if ratios.len() % 2 == 0 {
            let fa = time(&mut a)?;
            (fa, time(&mut b)?)
        } else {
            let fb = time(&mut b)?;
            (time(&mut a)?, fb)
        };
        ratios.push(fa / fb.max(1e-9));
    }
    Ok((median(&ratios).unwrap_or(f64::NAN), ratios.len()))
}

/// Loads the model in the precision its config asks for and this CPU computes (deciding
/// `auto` by measuring).
pub fn resolve(cfg: &ModelConfig) -> Result<Resolved> {
    resolve_on(cfg, CpuInfo::detect())
}

fn resolve_on(cfg: &ModelConfig, cpu: &CpuInfo) -> Result<Resolved> {
    let engine = cfg.source.engine();
    let auto = matches!(cfg.precision, PrecisionChoice::Auto);
    let status = |in_use: Precision, drift, speedup, reason| PrecisionStatus {
        in_use: in_use.name().into(),
        requested: cfg.precision.name().into(),
        bf16_drift: drift,
        tolerance: auto.then_some(cfg.bf16_tolerance),
        bf16_speedup: speedup,
        jobs_checked: 0,
        reason,
    };
    let serve = |model: Model, drift, speedup, reason| Resolved {
        status: status(model.precision, drift, speedup, reason),
        model: Arc::new(model),
        twin: None,
    };
    let pct = |x: f64| x * 100.0;
    if cfg.precision == PrecisionChoice::F32 {
        return Ok(serve(cfg.load(Precision::F32)?, None, None, None));
    }
    if auto && !engine.has_bf16() {
        let why = format!("{} has no bf16 path", engine.name());
        return Ok(serve(cfg.load(Precision::F32)?, None, None, Some(why)));
    }
    // Where bf16 cannot run natively, f32 serves and the journal says why, once: at warning
    // level when bf16 was asked for, as a choice for `auto`.
    let f32_instead = |model: Model, why: String| {
        if auto {
            log::info!("model {}: precision auto: f32 ({why})", cfg.name);
        } else {
            log::warn!(
                "model {}: precision bf16 requested, serving f32: {why}",
                cfg.name
            );
        }
        Ok(serve(model, None, None, Some(why)))
    };
    // libtorch runs bf16 without bf16 units only by emulation, slower than f32: the CPU's
    // flags decide. OpenVINO is asked instead (its compiled model says what it computes).
    if engine == EngineKind::Libtorch {
        if let Some(why) = cpu.no_bf16_reason() {
            return f32_instead(cfg.load(Precision::F32)?, why);
        }
    }
    let bf16 = cfg.load(Precision::Bf16)?;
    if let Some(note) = bf16.precision_note.clone() {
        // The engine computes f32 anyway: that model is the f32 one.
        return f32_instead(bf16, format!("{note}; CPU {}", cpu.summary()));
    }
    let f32 = cfg.load(Precision::F32)?;
    let xs = f32.example_inputs(4);
    let drift = example_drift(&f32, &bf16, &xs)?;
    if !auto {
        return Ok(serve(bf16, Some(drift), None, None));
    }
    if drift > cfg.bf16_tolerance {
        let why = format!(
            "bf16 drifted {:.3} % from f32 on example inputs, over bf16_tolerance {:.2} %",
            pct(drift),
            pct(cfg.bf16_tolerance)
        );
        log::warn!("model {}: precision auto: f32 ({why})", cfg.name);
        return Ok(serve(f32, Some(drift), None, Some(why)));
    }
    let (speedup, pairs) = paired_speedup(&f32, &bf16, &xs)?;
    if speedup.is_nan() || speedup < cfg.bf16_min_speedup {
        let why = format!(
            "bf16 ran {speedup:.2}× as fast as f32 on example inputs (median of {pairs} interleaved pairs), under bf16_min_speedup {:.2}",
            cfg.bf16_min_speedup
        );
        log::info!("model {}: precision auto: f32 ({why})", cfg.name);
        return Ok(serve(f32, Some(drift), Some(speedup), Some(why)));
    }
    log::info!(
        "model {}: precision auto: bf16 (drift {:.3} % on example inputs, within {:.2} %; {speedup:.2}× as fast as f32)",
        cfg.name,
        pct(drift),
        pct(cfg.bf16_tolerance)
    );
    Ok(Resolved {
        model: Arc::new(bf16),
        twin: Some(Arc::new(f32)),
        status: status(
            Precision::Bf16,
            Some(drift),
            Some(speedup),
            Some(format!(
                "drift within tolerance on example inputs, {speedup:.2}× as fast as f32"
            )),
        ),
    })
}

/// The check of one real job against the f32 twin: `Some(reason)` when bf16 must stop.
pub fn check_job(
    twin: &Model,
    status: &mut PrecisionStatus,
    inputs: &[Tensor],
    served: &Outputs,
) -> Result<Option<String>> {
    let drift = relative_difference(&twin.forward(inputs)?, served)?;
    status.jobs_checked += 1;
    status.bf16_drift = Some(status.bf16_drift.map_or(drift, |d| d.max(drift)));
    let tolerance = status.tolerance.unwrap_or(f64::INFINITY);
    Ok((drift > tolerance).then(|| {
        format!(
            "bf16 drifted {:.3} % from f32 on a real job, over bf16_tolerance {:.2} %",
            drift * 100.0,
            tolerance * 100.0
        )
    }))
}
