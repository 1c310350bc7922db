//! The libtorch backend: one `CModule` (a TorchScript file or a traced built-in) shared by every
//! instance thread — a `CModule` is `Send + Sync` (DESIGN §2). Each instance thread sets its own
//! intra-op thread count once, after it was pinned.

use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{CModule, IValue, Kind, Tensor};

use super::{Backend, InstanceSpec, Outputs, Precision, Session};

pub(super) struct Torch {
    module: Arc<CModule>,
    precision: Precision,
}

impl Torch {
    pub(super) fn new(mut module: CModule, precision: Precision) -> Result<Torch> {
        module.set_eval();
        if precision == Precision::Bf16 {
            module.to(tch::Device::Cpu, Kind::BFloat16, false);
        }
        Ok(Torch {
            module: Arc::new(module),
            precision,
        })
    }
}

impl Backend for Torch {
    fn open(&self, spec: &InstanceSpec) -> Result<Box<dyn Session>> {
        // The trap (DESIGN §2): a thread's first op adopts "the last value any thread set";
        // reading the count first pins this thread's own, then it is set once (it also clears
        // oneDNN's primitive cache, so never per batch).
        let _ = tch::get_num_threads();
        tch::set_num_threads(spec.threads as i32);
        Ok(Box::new(TorchSession {
            module: self.module.clone(),
            precision: self.precision,
        }))
    }
}

struct TorchSession {
    module: Arc<CModule>,
    precision: Precision,
}

impl Session for TorchSession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Outputs> {
        let bf16 = self.precision == Precision::Bf16;
        let args: Vec<IValue> = inputs
            .iter()
            .map(|t| match t.kind() {
                Kind::Float if bf16 => IValue::Tensor(t.to_kind(Kind::BFloat16)),
                _ => IValue::Tensor(t.shallow_clone()),
            })
            .collect();
        let out = tch::no_grad(|| self.module.forward_is(&args))
            .context("the model's forward pass failed")?;
        let mut out = flatten_output(out)?;
        if bf16 {
            for (_, t) in out.iter_mut() {
                if t.kind() == Kind::BFloat16 {
                    *t = t.to_kind(Kind::Float);
                }
            }
        }
        Ok(out)
    }

    fn observed_threads(&self) -> i32 {
        tch::get_num_threads()
    }
}

/// Names a TorchScript result: `output` for a single tensor, `output_0..` for a tuple or list,
/// the keys for a dict.
pub(super) fn flatten_output(v: IValue) -> Result<Outputs> {
    use anyhow::bail;
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
