//! TorchScript optimised at load: frozen (weights folded into the graph) and run through
//! `optimize_for_inference` (conv/BN folding, oneDNN layouts) by a small C++ shim
//! (`torch_opt.cpp`), since tch exposes neither. The optimised module keeps oneDNN constants
//! that do not survive saving, so it lives behind a handle in the shim and runs through it.
//! It must reproduce the plain module's outputs on example inputs (float tolerance); otherwise
//! the plain module serves and the journal says why. The choice never depends on timing, so
//! every load of a model serves the same module (and the same outputs, bit for bit); the two
//! are timed for the journal only.
//!
//! It also holds what both it and the libtorch backend (`torch.rs`, above it) need of a
//! TorchScript module: a plain forward pass, the naming of its outputs, example inputs.

use std::ffi::{c_char, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{CModule, IValue, Kind, Tensor};

use super::{first_line, relative_difference, InputSpec, Outputs};

extern "C" {
    fn packrat_load_optimized(
        path: *const c_char,
        bf16: i32,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    fn packrat_forward(
        module: *mut c_void,
        inputs: *const *const c_void,
        n_in: usize,
        outputs: *mut *mut c_void,
        max_out: usize,
        n_out: *mut usize,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn packrat_free(module: *mut c_void);
}

const MAX_OUTPUTS: usize = 64;

/// A frozen, inference-optimised TorchScript module held by the shim.
pub(super) struct OptimizedModule(*mut c_void);

// SAFETY: the handle owns a torch::jit::Module, whose forward may run from several threads at
// once (as CModule's, which tch marks Send + Sync); it is freed once, on drop.
unsafe impl Send for OptimizedModule {}
unsafe impl Sync for OptimizedModule {}

impl Drop for OptimizedModule {
    fn drop(&mut self) {
        // SAFETY: the pointer came from packrat_load_optimized and is freed only here.
        unsafe { packrat_free(self.0) }
    }
}

fn error_text(err: &[c_char]) -> String {
    // SAFETY: the shim NUL-terminates `err` within its length (and it starts zeroed).
    unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

impl OptimizedModule {
    fn load(path: &Path, bf16: bool) -> Result<OptimizedModule> {
        let c = CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: `c` is NUL-terminated; `err` has `err.len()` writable bytes.
        let h = unsafe {
            packrat_load_optimized(c.as_ptr(), i32::from(bf16), err.as_mut_ptr(), err.len())
        };
        if h.is_null() {
            bail!("{}", error_text(&err));
        }
        Ok(OptimizedModule(h))
    }

    /// One forward pass; outputs are named as TorchScript results are (`output`, `output_i`).
    pub(super) fn forward(&self, inputs: &[Tensor]) -> Result<Outputs> {
        let ins: Vec<*const c_void> = inputs.iter().map(|t| t.as_ptr() as *const c_void).collect();
        let mut outs = [std::ptr::null_mut::<c_void>(); MAX_OUTPUTS];
        let mut n = 0usize;
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: `ins` holds live torch::Tensor pointers (tch's C_tensor) for the call's
        // duration; `outs` has MAX_OUTPUTS slots and the shim writes at most that many, each a
        // new torch::Tensor the caller owns; `err` has `err.len()` writable bytes.
        let rc = unsafe {
            packrat_forward(
                self.0,
                ins.as_ptr(),
                ins.len(),
                outs.as_mut_ptr(),
                MAX_OUTPUTS,
                &mut n,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            bail!("the model's forward pass failed: {}", error_text(&err));
        }
        // SAFETY: the first `n` slots hold tensors the shim allocated with `new`; tch takes
        // ownership and frees them (at_free deletes a torch::Tensor*).
        let tensors: Vec<Tensor> = outs[..n]
            .iter()
            .map(|&p| unsafe { Tensor::from_ptr(p as *mut _) })
            .collect();
        Ok(match tensors.len() {
            1 => vec![(
                "output".to_string(),
                tensors
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Tensor::from(0)),
            )],
            _ => tensors
                .into_iter()
                .enumerate()
                .map(|(i, t)| (format!("output_{i}"), t))
                .collect(),
        })
    }
}

pub(super) fn plain_forward(m: &CModule, xs: &[Tensor]) -> Result<Outputs> {
    let args: Vec<IValue> = xs
        .iter()
        .map(|t| IValue::Tensor(t.shallow_clone()))
        .collect();
    flatten_output(tch::no_grad(|| m.forward_is(&args))?)
}

/// Names a TorchScript result: `output` for a single tensor, `output_0..` for a tuple or list,
/// the keys for a dict.
pub(super) fn flatten_output(v: IValue) -> Result<Outputs> {
    let list = match v {
        IValue::Tensor(t) => return Ok(vec![("output".into(), t)]),
        IValue::Tuple(items) | IValue::GenericList(items) => items,
        IValue::TensorList(ts) => ts.into_iter().map(IValue::Tensor).collect(),
        IValue::GenericDict(kv) => {
            return kv
                .into_iter()
                .map(|(k, v)| match (k, v) {
                    (IValue::String(k), IValue::Tensor(t)) => Ok((k, t)),
                    _ => bail!("the model returned a dict that is not str -> Tensor"),
                })
                .collect()
        }
        other => bail!("the model returned {other:?}; packrat serves models that return tensors"),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            IValue::Tensor(t) => Ok((format!("output_{i}"), t)),
            _ => bail!("output {i} of the model is not a tensor"),
        })
        .collect()
}

/// Example inputs that exercise the model: a fixed pattern of floats in [−0.5, 0.5] (not
/// random: the check must decide the same way at every load), zeros for integer inputs.
pub(super) fn examples(inputs: &[InputSpec], floats: Kind) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|i| match i.dtype {
            Kind::Float => {
                let shape = i.zeros(2).size();
                let n: i64 = shape.iter().product();
                ((Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.37).sin() * 0.5)
                    .reshape(&shape)
                    .to_kind(floats)
            }
            _ => i.zeros(2),
        })
        .collect()
}

/// fp32 outputs may differ by float reassociation (conv/BN folding) only.
const F32_TOLERANCE: f64 = 1e-4;
const BF16_TOLERANCE: f64 = 1e-2;

/// Fastest wall time of `f` over a few runs, after one warm-up, in ms.
fn time_ms(mut f: impl FnMut() -> Result<Outputs>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        f()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// What optimising gave: the module and its time against the plain one's (ms at batch 2).
pub(super) struct Optimized {
    pub module: OptimizedModule,
    pub plain_ms: f64,
    pub optimized_ms: f64,
}

/// The frozen, inference-optimised version of `module`, checked against it and timed beside it
/// (for the journal); an error says why the plain module should serve instead.
pub(super) fn optimize(module: &CModule, inputs: &[InputSpec], floats: Kind) -> Result<Optimized> {
    let dir = tempfile::tempdir().context("a temporary directory for the module")?;
    let plain = dir.path().join("plain.pt");
    module
        .save(&plain)
        .map_err(|e| anyhow!("cannot save the module: {}", first_line(&e.to_string())))?;
    let optimized = OptimizedModule::load(&plain, floats == Kind::BFloat16)?;
    let xs = examples(inputs, floats);
    let want = plain_forward(module, &xs).context("the plain module fails on example inputs")?;
    let got = optimized
        .forward(&xs)
        .context("the optimised module fails on example inputs")?;
    let tolerance = if floats == Kind::Float {
        F32_TOLERANCE
    } else {
        BF16_TOLERANCE
    };
    let diff = relative_difference(&want, &got)?;
    if diff > tolerance {
        bail!("its outputs differ by {diff:.2e} (relative), over {tolerance:.0e}");
    }
    // For the journal only (one round each, back to back).
    let plain_ms = time_ms(|| plain_forward(module, &xs))?;
    let optimized_ms = time_ms(|| optimized.forward(&xs))?;
    Ok(Optimized {
        module: optimized,
        plain_ms,
        optimized_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Builtin;

    #[test]
    fn the_optimised_module_reproduces_the_plain_one_with_several_inputs() {
        let b = Builtin::TwoHeads;
        let plain = b
            .build(&b.default_inputs(), crate::engine::Precision::F32)
            .unwrap();
        let xs = examples(&b.default_inputs(), Kind::Float);
        let want = plain_forward(&plain, &xs).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pt");
        plain.save(&path).unwrap();
        let optimized = OptimizedModule::load(&path, false).unwrap();
        let got = optimized.forward(&xs).unwrap();
        assert!(relative_difference(&want, &got).unwrap() <= F32_TOLERANCE);
        assert_eq!(got[0].0, "output");
    }

    #[test]
    fn a_changed_output_or_a_broken_file_is_caught() {
        let t = Tensor::from_slice(&[1.0f32, -2.0, 4.0]);
        let a = vec![("output".to_string(), t.shallow_clone())];
        let b = vec![("output".to_string(), &t + 0.01)];
        assert!(relative_difference(&a, &b).unwrap() > F32_TOLERANCE);
        let two = vec![a[0].clone_pair(), a[0].clone_pair()];
        assert!(relative_difference(&a, &two).is_err());
        assert_eq!(relative_difference(&a, &a).unwrap(), 0.0);
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pt");
        std::fs::write(&bad, b"not a module").unwrap();
        let err = OptimizedModule::load(&bad, false)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.is_empty() && !err.contains('\n'), "{err}");
    }

    trait ClonePair {
        fn clone_pair(&self) -> (String, Tensor);
    }

    impl ClonePair for (String, Tensor) {
        fn clone_pair(&self) -> (String, Tensor) {
            (self.0.clone(), self.1.shallow_clone())
        }
    }
}
