//! Which precision a model serves in, and why. `f32` and `bf16` are what the config says (bf16's
//! drift against an f32 twin is measured at load, for the status). `auto` serves bf16 only while
//! its drift stays within the model's `bf16_tolerance`: first on example inputs at load, then on
//! a bounded sample of real jobs, checked when nothing waits; past the tolerance the model
//! switches to f32 for good and the journal says why.

use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::{ModelConfig, PrecisionChoice};
use crate::engine::{relative_difference, Model, Outputs, Precision};

/// Real jobs an `auto` model checks against f32 at most.
pub const JOB_CHECKS: u32 = 8;

/// What `packrat status` and the metrics say about a model's precision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrecisionStatus {
    /// `f32` or `bf16`: what serves now.
    pub in_use: String,
    /// `f32`, `bf16` or `auto`: what the config asked for.
    pub requested: String,
    /// Largest drift of bf16 from f32 seen so far (max |Δ| over max |f32 output|).
    pub bf16_drift: Option<f64>,
    pub tolerance: Option<f64>,
    /// Real jobs checked against f32 (auto).
    pub jobs_checked: u32,
    /// Why it serves what it serves, when that was decided by measuring.
    pub reason: Option<String>,
}

/// A loaded model in its chosen precision, and the f32 twin `auto` keeps for checking jobs.
pub struct Resolved {
    pub model: Arc<Model>,
    pub twin: Option<Arc<Model>>,
    pub status: PrecisionStatus,
}

/// Drift of `bf16` from `f32` on example inputs of 4 items.
fn example_drift(f32: &Model, bf16: &Model) -> Result<f64> {
    let xs = f32.example_inputs(4);
    relative_difference(&f32.forward(&xs)?, &bf16.forward(&xs)?)
}

/// Loads the model in the precision its config asks for (deciding `auto` by measuring).
pub fn resolve(cfg: &ModelConfig) -> Result<Resolved> {
    let engine = cfg.source.engine();
    let status = |in_use: Precision, drift, reason| PrecisionStatus {
        in_use: in_use.name().into(),
        requested: cfg.precision.name().into(),
        bf16_drift: drift,
        tolerance: matches!(cfg.precision, PrecisionChoice::Auto).then_some(cfg.bf16_tolerance),
        jobs_checked: 0,
        reason,
    };
    match cfg.precision {
        PrecisionChoice::F32 => Ok(Resolved {
            model: Arc::new(cfg.load(Precision::F32)?),
            twin: None,
            status: status(Precision::F32, None, None),
        }),
        PrecisionChoice::Bf16 => {
            let bf16 = cfg.load(Precision::Bf16)?;
            let drift = example_drift(&cfg.load(Precision::F32)?, &bf16)?;
            Ok(Resolved {
                model: Arc::new(bf16),
                twin: None,
                status: status(Precision::Bf16, Some(drift), None),
            })
        }
        PrecisionChoice::Auto if !engine.has_bf16() => Ok(Resolved {
            model: Arc::new(cfg.load(Precision::F32)?),
            twin: None,
            status: status(
                Precision::F32,
                None,
                Some(format!("{} has no bf16 path", engine.name())),
            ),
        }),
        PrecisionChoice::Auto => {
            let f32 = Arc::new(cfg.load(Precision::F32)?);
            let bf16 = cfg.load(Precision::Bf16)?;
            let drift = example_drift(&f32, &bf16)?;
            let pct = |x: f64| x * 100.0;
            if drift <= cfg.bf16_tolerance {
                log::info!(
                    "model {}: precision auto: bf16 (drift {:.3} % on example inputs, within {:.2} %)",
                    cfg.name,
                    pct(drift),
                    pct(cfg.bf16_tolerance)
                );
                Ok(Resolved {
                    model: Arc::new(bf16),
                    twin: Some(f32),
                    status: status(
                        Precision::Bf16,
                        Some(drift),
                        Some("drift within tolerance on example inputs".into()),
                    ),
                })
            } else {
                let why = format!(
                    "bf16 drifted {:.3} % from f32 on example inputs, over bf16_tolerance {:.2} %",
                    pct(drift),
                    pct(cfg.bf16_tolerance)
                );
                log::warn!("model {}: precision auto: f32 ({why})", cfg.name);
                Ok(Resolved {
                    model: f32,
                    twin: None,
                    status: status(Precision::F32, Some(drift), Some(why)),
                })
            }
        }
    }
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
