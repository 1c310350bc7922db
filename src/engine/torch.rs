//! The libtorch backend: one TorchScript module (a file or a traced built-in), frozen and
//! optimised for inference where that helps (`torch_opt`), shared by every instance thread —
//! the module is `Send + Sync` (DESIGN §2). Each instance thread sets its own intra-op thread
//! count once, after it was pinned.

use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{CModule, Kind, Tensor};

use super::torch_opt::{examples, optimize, plain_forward, OptimizedModule};
use super::{Backend, InputSpec, InstanceSpec, Outputs, Precision, Session};

/// The module as it serves.
enum Module {
    Plain(CModule),
    Optimized(OptimizedModule),
}

impl Module {
    fn forward(&self, inputs: &[Tensor]) -> Result<Outputs> {
        match self {
            Module::Optimized(m) => m.forward(inputs),
            Module::Plain(m) => plain_forward(m, inputs).context("the model's forward pass failed"),
        }
    }
}

pub(super) struct Torch {
    module: Arc<Module>,
    precision: Precision,
}

impl Torch {
    /// Serves `module` frozen and optimised for inference when that reproduces its outputs,
    /// else as it is (with a warning).
    pub(super) fn new(
        name: &str,
        mut module: CModule,
        inputs: &[InputSpec],
        precision: Precision,
    ) -> Result<Torch> {
        module.set_eval();
        let floats = match precision {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        };
        if precision == Precision::Bf16 {
            module.to(tch::Device::Cpu, Kind::BFloat16, false);
            // A traced file keeps its weights as graph constants, which `to` cannot convert.
            let xs = examples(inputs, floats);
            plain_forward(&module, &xs).context("this TorchScript module cannot run in bf16 (its weights are graph constants, e.g. from torch.jit.trace): export it scripted, or use precision = \"f32\"")?;
        }
        let module = match optimize(&module, inputs, floats) {
            Ok(o) => {
                log::info!(
                    "model {name}: frozen and optimised for inference ({:.2} ms -> {:.2} ms at batch 2)",
                    o.plain_ms,
                    o.optimized_ms
                );
                Module::Optimized(o.module)
            }
            Err(e) => {
                log::warn!("model {name}: serving the module as loaded, not optimised: {e:#}");
                Module::Plain(module)
            }
        };
        Ok(Torch {
            module: Arc::new(module),
            precision,
        })
    }
}

impl Backend for Torch {
    fn computes_in(&self) -> (Precision, Option<String>) {
        (self.precision, None)
    }

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
    module: Arc<Module>,
    precision: Precision,
}

impl Session for TorchSession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Outputs> {
        let bf16 = self.precision == Precision::Bf16;
        let args: Vec<Tensor> = inputs
            .iter()
            .map(|t| match t.kind() {
                Kind::Float if bf16 => t.to_kind(Kind::BFloat16),
                _ => t.shallow_clone(),
            })
            .collect();
        let mut out = self.module.forward(&args)?;
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
