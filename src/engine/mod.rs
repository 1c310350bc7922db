//! The engine: everything that runs a model. A [`Model`] (a TorchScript file or a [`Builtin`]
//! on libtorch, an `.onnx` file on ONNX Runtime, an `.onnx` or IR `.xml` on OpenVINO) is a
//! [`Backend`] that opens one [`Session`]
//! per instance thread; instances ([`InstanceSet`]: pinned threads with their own intra-op
//! thread counts) run sessions; a measured profile on `replay` stands in for a model on a
//! larger machine's virtual cores; and the [`InstancePool`] keeps warm instance sets for the
//! runtime, the profiler and the bench alike.
//!
//! It knows nothing of plans, spools or configs: an instance layout is a list of
//! [`InstanceSpec`]s, a batch split is a list of shares.

mod builtins;
mod instances;
mod model;
mod nets;
pub mod onnx;
pub mod openvino;
mod pool;
mod replay;
mod torch;
mod torch_opt;
pub mod versions;

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use tch::{Kind, Tensor};

pub use builtins::Builtin;
pub use instances::{InstanceInfo, InstanceSet, InstanceSpec};
pub use model::{EngineOptions, InputMismatch, MismatchKind, Model, ModelSource};
pub use onnx::ONNXRUNTIME_VERSION;
pub use openvino::OPENVINO_VERSION;
pub use pool::InstancePool;
pub use replay::replay_cores;
pub use versions::VersionDir;

/// A forward pass's named outputs, in the model's order.
pub type Outputs = Vec<(String, Tensor)>;

/// What runs a model: it opens a session for each instance thread.
pub trait Backend: Send + Sync {
    /// What the engine actually computes in, and why when that is not what the model was
    /// loaded for; None: exactly what it was asked for.
    fn computes_in(&self) -> (Precision, Option<String>);
    /// Called inside an instance thread that was just pinned to `spec.cores`: sets up that
    /// thread's session with `spec.threads` intra-op threads.
    fn open(&self, spec: &InstanceSpec) -> Result<Box<dyn Session>>;
    /// Whether instance threads are pinned to their cores (false: the cores are virtual).
    fn pins(&self) -> bool {
        true
    }
}

/// One instance thread's handle on a model.
pub trait Session {
    /// One forward pass on already-batched inputs (in declared order).
    fn run(&mut self, inputs: &[Tensor]) -> Result<Outputs>;
    /// [`Session::run`] for a share of a batch handed out at `dispatched` (what a replay
    /// times from: on its virtual cores every share starts then, not when this host's few
    /// cores get round to waking each instance thread).
    fn run_dispatched(&mut self, inputs: &[Tensor], _dispatched: Instant) -> Result<Outputs> {
        self.run(inputs)
    }
    /// The intra-op thread count as the engine reports it from inside the instance thread.
    fn observed_threads(&self) -> i32;
    /// Prepares for batches shaped like `inputs` ahead of serving them (warm-up, never on the
    /// dispatch path): an engine that can compile a faster kernel for one shape does so here
    /// and says what it found. The default does nothing.
    fn specialize(&mut self, _inputs: &[Tensor]) -> Result<Option<Specialized>> {
        Ok(None)
    }
}

/// What [`Session::specialize`] found for one sub-batch size.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Specialized {
    /// The instance's intra-op threads.
    pub threads: usize,
    pub batch: usize,
    pub static_ms: f64,
    pub dynamic_ms: f64,
    pub compile_ms: f64,
    /// The median over interleaved pairs of runs of static / dynamic time: what decides, as
    /// the two medians alone can disagree with it on a drifting host.
    pub ratio: f64,
    /// Whether the static shape serves this size from now on.
    pub kept: bool,
}

/// The inference engines packrat drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Libtorch,
    OnnxRuntime,
    OpenVino,
    /// A measured latency profile replayed on virtual cores (evaluation, tests).
    Replay,
}

impl EngineKind {
    pub const ALL: [EngineKind; 4] = [
        EngineKind::Libtorch,
        EngineKind::OnnxRuntime,
        EngineKind::OpenVino,
        EngineKind::Replay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Libtorch => "libtorch",
            EngineKind::OnnxRuntime => "onnxruntime",
            EngineKind::OpenVino => "openvino",
            EngineKind::Replay => "replay",
        }
    }

    pub fn from_name(name: &str) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Whether the engine has a bfloat16 path.
    pub fn has_bf16(self) -> bool {
        matches!(self, EngineKind::Libtorch | EngineKind::OpenVino)
    }
}

/// The arithmetic a model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16 weights and activations (AMX / AVX512-BF16 where the CPU has them); inputs and
    /// outputs stay float32.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// One declared input of a model: a job must supply it with shape `[B] ++ shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: Kind,
}

impl InputSpec {
    pub fn float(name: &str, shape: Vec<i64>) -> InputSpec {
        InputSpec {
            name: name.into(),
            shape,
            dtype: Kind::Float,
        }
    }

    /// Zeros of `batch` items of this input.
    pub fn zeros(&self, batch: i64) -> Tensor {
        let mut s = vec![batch];
        s.extend(&self.shape);
        Tensor::zeros(&s, (self.dtype, tch::Device::Cpu))
    }
}

/// The first line of an engine's error: libtorch appends a C++ backtrace no user needs.
pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

/// Concatenates outputs of consecutive slices of one batch along dimension 0, output by output.
pub fn concat_outputs(mut parts: Vec<Outputs>) -> Result<Outputs> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let first = parts
        .first()
        .ok_or_else(|| anyhow!("no instance produced output"))?;
    let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let ts: Vec<&Tensor> = parts.iter().map(|p| &p[k].1).collect();
            let t = Tensor::f_cat(&ts, 0).with_context(|| {
                format!("output '{name}' does not concatenate along dimension 0")
            })?;
            Ok((name.clone(), t))
        })
        .collect()
}

/// Splits a batch's outputs back into consecutive slices of `sizes` items (the inverse of
/// [`concat_outputs`]).
pub fn split_outputs(out: Outputs, sizes: &[usize]) -> Result<Vec<Outputs>> {
    let total: usize = sizes.iter().sum();
    let mut parts: Vec<Outputs> = sizes.iter().map(|_| Vec::new()).collect();
    for (name, t) in out {
        if t.size().first().copied() != Some(total as i64) {
            return Err(anyhow!("output '{name}' does not have the batch as dimension 0, so it cannot be split per job"));
        }
        let mut off = 0i64;
        for (part, &n) in parts.iter_mut().zip(sizes) {
            part.push((name.clone(), t.narrow(0, off, n as i64)));
            off += n as i64;
        }
    }
    Ok(parts)
}

/// Where an engine's runtime library is: `$env_var` if set; else where the build found it, if
/// it is still there; else where the .deb installs it (`/usr/lib/packrat/<packaged>`, found
/// beside the binary as `../lib/packrat/<packaged>`).
fn library_path(env_var: &str, built: &str, packaged: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let built = std::path::PathBuf::from(built);
    if built.exists() {
        return built;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("../lib/packrat").join(packaged)))
        .filter(|p| p.exists())
        .unwrap_or(built)
}

/// Largest |a − b| over the largest |a|, over every output (how far `b` drifted from `a`); an
/// error when the outputs do not even match in names or shapes.
pub fn relative_difference(a: &Outputs, b: &Outputs) -> Result<f64> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.0 != y.0) {
        anyhow::bail!(
            "the outputs differ in number or names ({} vs {})",
            b.len(),
            a.len()
        );
    }
    let mut worst = 0.0f64;
    for ((_, x), (_, y)) in a.iter().zip(b) {
        if x.size() != y.size() {
            anyhow::bail!(
                "an output of shape {:?} instead of {:?}",
                y.size(),
                x.size()
            );
        }
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        let scale = f64::try_from(x.abs().max())?.max(1e-12);
        let diff = f64::try_from((x - y).abs().max())?;
        worst = worst.max(diff / scale);
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_undoes_concat() {
        let t = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([6, 2]);
        let parts = split_outputs(vec![("output".into(), t.shallow_clone())], &[1, 3, 2]).unwrap();
        assert_eq!(parts[1][0].1.size(), [3, 2]);
        let back = concat_outputs(parts).unwrap();
        assert!(back[0].1.equal(&t));
        let scalar = Tensor::from(1.0f32);
        assert!(split_outputs(vec![("output".into(), scalar)], &[1]).is_err());
    }
}
