//! A loaded model: its [`Backend`] (libtorch, ONNX Runtime or OpenVINO) with the precision
//! that engine actually computes in, the inputs a job must match, and how job tensors are
//! matched to them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::{CModule, Kind, Tensor};

use super::onnx::Onnx;
use super::openvino::OpenVino;
use super::replay::Replay;
use super::torch::Torch;
use super::{
    first_line, Backend, Builtin, EngineKind, InputSpec, InstanceSpec, Outputs, Precision, Session,
};
use crate::tensorfile::{kind_name, Named};

/// Where a model comes from; it decides the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Builtin(Builtin),
    TorchScript(PathBuf),
    Onnx(PathBuf),
    /// An `.onnx` file or an IR `.xml` (with its `.bin`) on OpenVINO.
    OpenVino(PathBuf),
    /// A latency profile (JSON, the planner's format) replayed on virtual cores.
    Replay(PathBuf),
}

impl ModelSource {
    /// The model file (None for a built-in).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            ModelSource::Builtin(_) => None,
            ModelSource::TorchScript(p)
            | ModelSource::Onnx(p)
            | ModelSource::OpenVino(p)
            | ModelSource::Replay(p) => Some(p),
        }
    }

    pub fn engine(&self) -> EngineKind {
        match self {
            ModelSource::Builtin(_) | ModelSource::TorchScript(_) => EngineKind::Libtorch,
            ModelSource::Onnx(_) => EngineKind::OnnxRuntime,
            ModelSource::OpenVino(_) => EngineKind::OpenVino,
            ModelSource::Replay(_) => EngineKind::Replay,
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Builtin(b) => write!(f, "builtin:{}", b.name()),
            ModelSource::TorchScript(p)
            | ModelSource::Onnx(p)
            | ModelSource::OpenVino(p)
            | ModelSource::Replay(p) => {
                write!(f, "{}", p.display())
            }
        }
    }
}

/// Why a job's tensors do not fit the model's declared inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// Missing, extra, or disagreeing named inputs.
    Input,
    Dtype,
    Shape,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct InputMismatch {
    pub kind: MismatchKind,
    pub message: String,
}

fn mismatch(kind: MismatchKind, message: String) -> InputMismatch {
    InputMismatch { kind, message }
}

/// A loaded model: its backend and what its jobs must look like.
pub struct Model {
    pub name: String,
    pub inputs: Vec<InputSpec>,
    pub engine: EngineKind,
    /// What the engine computes in (it may differ from what was asked: see `precision_note`).
    pub precision: Precision,
    /// Why the engine computes in another precision than the model was loaded for.
    pub precision_note: Option<String>,
    backend: Box<dyn Backend>,
}

/// Engine settings beyond the precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// OpenVINO: sub-batch sizes per instance that may get a static-shape compiled model.
    pub static_shapes: usize,
}

impl EngineOptions {
    pub const DEFAULT_STATIC_SHAPES: usize = 4;
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            static_shapes: EngineOptions::DEFAULT_STATIC_SHAPES,
        }
    }
}

impl Model {
    /// [`Model::load_with`] the default options.
    pub fn load(
        name: &str,
        source: &ModelSource,
        inputs: Vec<InputSpec>,
        precision: Precision,
    ) -> Result<Model> {
        Model::load_with(name, source, inputs, precision, EngineOptions::default())
    }

    pub fn load_with(
        name: &str,
        source: &ModelSource,
        inputs: Vec<InputSpec>,
        precision: Precision,
        options: EngineOptions,
    ) -> Result<Model> {
        let backend: Box<dyn Backend> = match source {
            ModelSource::Builtin(b) => Box::new(Torch::new(
                name,
                b.build(&inputs, precision)?,
                &inputs,
                precision,
            )?),
            ModelSource::TorchScript(path) => {
                let module = CModule::load(path).map_err(|e| {
                    log::debug!("loading {}: {e}", path.display());
                    anyhow::anyhow!(
                        "cannot load TorchScript file '{}' ({}): save it with torch.jit.save(torch.jit.script(model) or torch.jit.trace(...), path)",
                        path.display(),
                        first_line(&e.to_string())
                    )
                })?;
                Box::new(Torch::new(name, module, &inputs, precision)?)
            }
            ModelSource::Onnx(path) => {
                anyhow::ensure!(
                    precision == Precision::F32,
                    "ONNX Runtime has no bf16 path on CPU"
                );
                Box::new(Onnx::load(path, &inputs)?)
            }
            ModelSource::Replay(path) => {
                anyhow::ensure!(
                    precision == Precision::F32,
                    "the replay engine has no bf16 path"
                );
                Box::new(Replay::load(path, &inputs)?)
            }
            ModelSource::OpenVino(path) => Box::new(OpenVino::load(
                path,
                &inputs,
                precision,
                options.static_shapes,
            )?),
        };
        let (precision, precision_note) = backend.computes_in();
        Ok(Model {
            name: name.to_string(),
            inputs,
            engine: source.engine(),
            precision,
            precision_note,
            backend,
        })
    }

    /// Whether instances are pinned to their cores (false: a replay's virtual cores).
    pub fn pins(&self) -> bool {
        self.backend.pins()
    }

    /// Opens a session for the calling thread (see [`Backend::open`]).
    pub fn open(&self, spec: &InstanceSpec) -> Result<Box<dyn Session>> {
        self.backend
            .open(spec)
            .with_context(|| format!("model '{}': cannot start an instance", self.name))
    }

    /// One forward pass on the calling thread, on a one-thread session opened for it (tests
    /// and references; serving runs through instance sets).
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Outputs> {
        let spec = InstanceSpec {
            threads: 1,
            cores: Vec::new(),
        };
        self.open(&spec)?.run(inputs)
    }

    /// Checks a job's tensors against the declared inputs and returns them in declared order
    /// with the job's batch size.
    pub fn match_inputs(&self, mut given: Vec<Named>) -> Result<(Vec<Tensor>, i64), InputMismatch> {
        let mut ordered = Vec::with_capacity(self.inputs.len());
        if self.inputs.len() == 1 && given.len() == 1 {
            ordered.push((self.inputs[0].clone(), given.remove(0).tensor));
        } else {
            for spec in &self.inputs {
                let pos = given.iter().position(|n| n.name == spec.name).ok_or_else(|| {
                    let names: Vec<&str> = given.iter().map(|n| n.name.as_str()).collect();
                    mismatch(
                        MismatchKind::Input,
                        format!(
                            "input '{}' is missing (the file holds {names:?}); model '{}' takes {:?}",
                            spec.name,
                            self.name,
                            self.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>()
                        ),
                    )
                })?;
                ordered.push((spec.clone(), given.remove(pos).tensor));
            }
            if let Some(extra) = given.first() {
                return Err(mismatch(
                    MismatchKind::Input,
                    format!("the file holds an unexpected tensor '{}'", extra.name),
                ));
            }
        }
        let mut batch = None;
        let mut tensors = Vec::with_capacity(ordered.len());
        for (spec, t) in ordered {
            if t.kind() != spec.dtype {
                return Err(mismatch(
                    MismatchKind::Dtype,
                    format!(
                        "input '{}' has dtype {}, model '{}' takes {}: convert it (e.g. x.astype(np.{}))",
                        spec.name,
                        kind_name(t.kind()),
                        self.name,
                        kind_name(spec.dtype),
                        kind_name(spec.dtype)
                    ),
                ));
            }
            let size = t.size();
            if size.len() != spec.shape.len() + 1 || size[1..] != spec.shape[..] || size[0] < 1 {
                return Err(mismatch(
                    MismatchKind::Shape,
                    format!(
                        "input '{}' has shape {size:?}, model '{}' takes [B, {}] with B >= 1 (batch is dimension 0)",
                        spec.name,
                        self.name,
                        spec.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            match batch {
                None => batch = Some(size[0]),
                Some(b) if b != size[0] => {
                    return Err(mismatch(
                        MismatchKind::Input,
                        format!(
                            "inputs disagree on the batch size ({b} vs {} for '{}')",
                            size[0], spec.name
                        ),
                    ))
                }
                _ => {}
            }
            tensors.push(t);
        }
        Ok((tensors, batch.unwrap_or(0)))
    }

    /// Random inputs of `batch` items, for warm-up and profiling.
    pub fn example_inputs(&self, batch: i64) -> Vec<Tensor> {
        self.inputs
            .iter()
            .map(|i| {
                let mut s = vec![batch];
                s.extend(&i.shape);
                match i.dtype {
                    Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
                        Tensor::randn(&s, (i.dtype, tch::Device::Cpu))
                    }
                    _ => i.zeros(batch),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::torch_opt::flatten_output;
    use tch::IValue;

    fn builtin(b: Builtin) -> Model {
        Model::load(
            b.name(),
            &ModelSource::Builtin(b),
            b.default_inputs(),
            Precision::F32,
        )
        .unwrap()
    }

    #[test]
    fn tuple_list_and_dict_outputs_get_documented_names() {
        let t = || Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let names = |v: IValue| {
            flatten_output(v)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(IValue::Tensor(t())), ["output"]);
        assert_eq!(
            names(IValue::Tuple(vec![
                IValue::Tensor(t()),
                IValue::Tensor(t())
            ])),
            ["output_0", "output_1"]
        );
        assert_eq!(
            names(IValue::TensorList(vec![t(), t(), t()])),
            ["output_0", "output_1", "output_2"]
        );
        let dict =
            IValue::GenericDict(vec![(IValue::String("logits".into()), IValue::Tensor(t()))]);
        assert_eq!(names(dict), ["logits"]);
        assert!(flatten_output(IValue::Int(3)).is_err());
    }

    #[test]
    fn every_builtin_serves_batch_sizes_other_than_the_traced_one() {
        for b in Builtin::ALL {
            let m = builtin(b);
            for n in [1, 3] {
                let out = m
                    .forward(&m.example_inputs(n))
                    .unwrap_or_else(|e| panic!("{} at batch {n}: {e:#}", b.name()));
                assert_eq!(out[0].1.size()[0], n, "{}", b.name());
            }
        }
    }

    #[test]
    fn builtins_have_the_same_weights_in_every_load() {
        // Other tests draw from libtorch's process-wide RNG while this one loads; a thread that
        // keeps drawing makes that certain instead of occasional.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rng_user = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = Tensor::randn([64], (Kind::Float, tch::Device::Cpu));
                }
            })
        };
        let a = builtin(Builtin::TinyCnn);
        tch::manual_seed(12345);
        let b = builtin(Builtin::TinyCnn);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rng_user.join().unwrap();
        let x = a.example_inputs(2);
        assert!(a.forward(&x).unwrap()[0]
            .1
            .equal(&b.forward(&x).unwrap()[0].1));
    }

    #[test]
    fn job_tensors_are_matched_by_name_dtype_and_shape() {
        let m = builtin(Builtin::TwoHeads);
        let named = |n: &str, t: Tensor| Named {
            name: n.into(),
            tensor: t,
        };
        let f = |s: &[i64]| Tensor::zeros(s, (Kind::Float, tch::Device::Cpu));
        let (ts, b) = m
            .match_inputs(vec![named("b", f(&[3, 8])), named("a", f(&[3, 16]))])
            .unwrap();
        assert_eq!((ts[0].size(), b), (vec![3, 16], 3));
        let kind = |given| m.match_inputs(given).unwrap_err().kind;
        assert_eq!(kind(vec![named("a", f(&[3, 16]))]), MismatchKind::Input);
        assert_eq!(
            kind(vec![named("a", f(&[3, 16])), named("b", f(&[2, 8]))]),
            MismatchKind::Input
        );
        assert_eq!(
            kind(vec![named("a", f(&[3, 15])), named("b", f(&[3, 8]))]),
            MismatchKind::Shape
        );
        let ints = Tensor::zeros([3, 8], (Kind::Int64, tch::Device::Cpu));
        assert_eq!(
            kind(vec![named("a", f(&[3, 16])), named("b", ints)]),
            MismatchKind::Dtype
        );
    }
}

#[cfg(test)]
mod precision_tests {
    use super::*;
    use crate::engine::relative_difference;

    #[test]
    fn a_bf16_builtin_answers_in_f32_close_to_its_f32_twin() {
        let b = Builtin::TinyCnn;
        let load = |p| Model::load("m", &ModelSource::Builtin(b), b.default_inputs(), p).unwrap();
        let (f32, bf16) = (load(Precision::F32), load(Precision::Bf16));
        let xs = f32.example_inputs(3);
        let (a, c) = (f32.forward(&xs).unwrap(), bf16.forward(&xs).unwrap());
        assert_eq!(c[0].1.kind(), Kind::Float, "outputs stay float32");
        let drift = relative_difference(&a, &c).unwrap();
        assert!(drift > 0.0 && drift < 0.05, "bf16 drift {drift}");
    }
}
