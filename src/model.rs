//! Models: loading a TorchScript file or tracing a built-in `tch::vision` network into one
//! `CModule`, the declared inputs a job must match, and one forward pass.
//!
//! Built-ins and files take one code path (a `CModule`), which is `Send + Sync`, so every
//! instance thread shares the same weights (DESIGN §2).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::{self, ModuleT};
use tch::{CModule, IValue, Kind, Tensor};

use crate::tensorfile::{kind_name, JobError, Named};

/// One declared input of a model: a job must supply it with shape `[B] ++ shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: Kind,
}

/// The built-in models: name, default per-item input shape, what it is.
pub const BUILTINS: &[(&str, &[i64], &str)] = &[
    ("resnet18", &[3, 224, 224], "ResNet-18"),
    ("resnet34", &[3, 224, 224], "ResNet-34"),
    ("resnet50", &[3, 224, 224], "ResNet-50"),
    ("mobilenet_v2", &[3, 224, 224], "MobileNet-v2"),
    ("inception_v3", &[3, 299, 299], "Inception-v3"),
    (
        "bert_base",
        &[128],
        "a BERT-base-sized transformer encoder over int64 token ids (input 'input_ids' [128])",
    ),
    ("tiny_cnn", &[3, 32, 32], "a small CNN for tests and demos"),
    (
        "two_heads",
        &[16],
        "a two-input, two-output MLP (inputs 'a' [16] and 'b' [8])",
    ),
];

/// Default inputs of a built-in, or None when the name is unknown.
pub fn builtin_inputs(name: &str) -> Option<Vec<InputSpec>> {
    let (_, shape, _) = BUILTINS.iter().find(|(n, _, _)| *n == name)?;
    if name == "bert_base" {
        return Some(vec![InputSpec {
            name: "input_ids".into(),
            shape: shape.to_vec(),
            dtype: Kind::Int64,
        }]);
    }
    if name == "two_heads" {
        return Some(vec![
            InputSpec {
                name: "a".into(),
                shape: vec![16],
                dtype: Kind::Float,
            },
            InputSpec {
                name: "b".into(),
                shape: vec![8],
                dtype: Kind::Float,
            },
        ]);
    }
    Some(vec![InputSpec {
        name: "input".into(),
        shape: shape.to_vec(),
        dtype: Kind::Float,
    }])
}

/// Fixed seed so that a built-in has the same random weights in every process: outputs are
/// reproducible and tests can compare the agent against an in-process run.
const BUILTIN_SEED: u64 = 0x5eed;

/// splitmix64: a tiny counter-based generator, so that weights do not depend on libtorch's
/// process-wide RNG (any thread's `randn` draws from that one, between `manual_seed` and the
/// weight draws, and two loads then differ).
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, name: &str) -> SplitMix {
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        SplitMix(h)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Overwrites every random variable of `vs` from [`SplitMix`], keyed by the variable's name,
/// with the distribution tch's default initialisers gave it: Kaiming-uniform weights (fan in),
/// linear biases uniform in ±1/√fan_in, batch-norm scales uniform in [0, 1). Constant variables
/// (zero biases, running statistics, layer-norm affine) are left as built.
fn deterministic_weights(vs: &nn::VarStore) -> Result<()> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let size = var.size();
        let n = var.numel();
        let constant = n < 2 || bool::try_from(var.max().eq_tensor(&var.min()))?;
        if constant {
            continue;
        }
        let fan_in = |shape: &[i64]| shape.iter().skip(1).product::<i64>().max(1) as f32;
        let (lo, hi) = if size.len() >= 2 {
            let bound = (6.0 / fan_in(&size)).sqrt();
            (-bound, bound)
        } else if let Some(prefix) = name.strip_suffix("bias") {
            let weight = vars
                .get(&format!("{prefix}weight"))
                .map_or(n as f32, |w| fan_in(&w.size()));
            let bound = 1.0 / weight.sqrt();
            (-bound, bound)
        } else {
            (0.0, 1.0)
        };
        let mut rng = SplitMix::new(BUILTIN_SEED, name);
        let values: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect();
        let fresh = Tensor::from_slice(&values)
            .reshape(&size)
            .to_kind(var.kind());
        tch::no_grad(|| var.shallow_clone().f_copy_(&fresh))?;
    }
    Ok(())
}

fn build_builtin(name: &str, inputs: &[InputSpec]) -> Result<CModule> {
    let examples: Vec<Tensor> = inputs
        .iter()
        .map(|i| {
            let mut s = vec![1i64];
            s.extend(&i.shape);
            Tensor::zeros(&s, (i.dtype, tch::Device::Cpu))
        })
        .collect();
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let p = &vs.root();
    type Forward = Box<dyn Fn(&[Tensor]) -> Vec<Tensor>>;
    fn single(f: impl Fn(&Tensor) -> Tensor + 'static) -> impl Fn(&[Tensor]) -> Vec<Tensor> {
        move |xs| vec![f(&xs[0])]
    }
    let forward: Forward = match name {
        "resnet18" => Box::new(single(crate::builtins::resnet(
            p,
            [2, 2, 2, 2],
            false,
            1000,
        ))),
        "resnet34" => Box::new(single(crate::builtins::resnet(
            p,
            [3, 4, 6, 3],
            false,
            1000,
        ))),
        "resnet50" => Box::new(single(crate::builtins::resnet(p, [3, 4, 6, 3], true, 1000))),
        "mobilenet_v2" => {
            let net = tch::vision::mobilenet::v2(p, 1000);
            Box::new(move |xs| vec![net.forward_t(&xs[0], false)])
        }
        "inception_v3" => Box::new(single(crate::builtins::inception_v3(p, 1000))),
        "bert_base" => Box::new(single(crate::builtins::bert_base(p, inputs[0].shape[0]))),
        "tiny_cnn" => {
            let c1 = nn::conv2d(
                p / "c1",
                3,
                16,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            );
            let c2 = nn::conv2d(
                p / "c2",
                16,
                32,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            );
            let fc = nn::linear(p / "fc", 32, 10, Default::default());
            Box::new(move |xs| {
                let h = xs[0]
                    .apply(&c1)
                    .relu()
                    .max_pool2d_default(2)
                    .apply(&c2)
                    .relu();
                vec![h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&fc)]
            })
        }
        "two_heads" => {
            let la = nn::linear(p / "la", 16, 4, Default::default());
            let lb = nn::linear(p / "lb", 8, 4, Default::default());
            Box::new(move |xs| {
                // One output: a traced method cannot return a tuple.
                vec![(xs[0].apply(&la) + xs[1].apply(&lb)).tanh()]
            })
        }
        other => bail!("unknown built-in model '{other}'"),
    };
    deterministic_weights(&vs).with_context(|| format!("initialising built-in '{name}'"))?;
    // Weights must not require grad, or tracing refuses to bake them into the graph.
    vs.freeze();
    let m = tch::no_grad(|| {
        CModule::create_by_tracing("packrat", "forward", &examples, &mut |xs| forward(xs))
    })
    .with_context(|| format!("tracing built-in '{name}' failed"))?;
    Ok(m)
}

/// A loaded model: the shared module and what its jobs must look like.
pub struct Model {
    pub name: String,
    pub inputs: Vec<InputSpec>,
    module: CModule,
}

impl Model {
    /// Loads `source` (`builtin:NAME` or a TorchScript file path).
    pub fn load(name: &str, source: &str, inputs: Vec<InputSpec>) -> Result<Model> {
        let mut module = match source.strip_prefix("builtin:") {
            Some(b) => build_builtin(b, &inputs)?,
            None => CModule::load(Path::new(source)).with_context(|| {
                format!("cannot load TorchScript file '{source}': save it with torch.jit.save(torch.jit.script(model) or torch.jit.trace(...), path)")
            })?,
        };
        module.set_eval();
        Ok(Model {
            name: name.to_string(),
            inputs,
            module,
        })
    }

    /// One forward pass on already-batched inputs (in declared order). Returns named outputs:
    /// `output` for a single tensor, `output_0..` for a tuple or list, the keys for a dict.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<(String, Tensor)>> {
        let args: Vec<IValue> = inputs
            .iter()
            .map(|t| IValue::Tensor(t.shallow_clone()))
            .collect();
        let out = tch::no_grad(|| self.module.forward_is(&args))
            .context("the model's forward pass failed")?;
        flatten_output(out)
    }

    /// Checks a job's tensors against the declared inputs and returns them in declared order
    /// with the job's batch size.
    pub fn match_inputs(&self, mut given: Vec<Named>) -> Result<(Vec<Tensor>, i64), JobError> {
        let mismatch = |m: String| JobError::new("wrong_input", m);
        let mut ordered = Vec::with_capacity(self.inputs.len());
        if self.inputs.len() == 1 && given.len() == 1 {
            ordered.push((self.inputs[0].clone(), given.remove(0).tensor));
        } else {
            for spec in &self.inputs {
                let pos = given
                    .iter()
                    .position(|n| n.name == spec.name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = given.iter().map(|n| n.name.as_str()).collect();
                        mismatch(format!(
                        "input '{}' is missing (the file holds {names:?}); model '{}' takes {:?}",
                        spec.name,
                        self.name,
                        self.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>()
                    ))
                    })?;
                ordered.push((spec.clone(), given.remove(pos).tensor));
            }
            if let Some(extra) = given.first() {
                return Err(mismatch(format!(
                    "the file holds an unexpected tensor '{}'",
                    extra.name
                )));
            }
        }
        let mut batch = None;
        let mut tensors = Vec::with_capacity(ordered.len());
        for (spec, t) in ordered {
            if t.kind() != spec.dtype {
                return Err(JobError::new(
                    "wrong_dtype",
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
                return Err(JobError::new(
                    "wrong_shape",
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
                    return Err(mismatch(format!(
                        "inputs disagree on the batch size ({b} vs {} for '{}')",
                        size[0], spec.name
                    )))
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
                    k => Tensor::zeros(&s, (k, tch::Device::Cpu)),
                }
            })
            .collect()
    }
}

fn flatten_output(v: IValue) -> Result<Vec<(String, Tensor)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        for (name, _, _) in BUILTINS {
            let inputs = builtin_inputs(name).unwrap();
            let m = Model::load(name, &format!("builtin:{name}"), inputs).unwrap();
            for b in [1, 3] {
                let out = m
                    .forward(&m.example_inputs(b))
                    .unwrap_or_else(|e| panic!("{name} at batch {b}: {e:#}"));
                assert_eq!(out[0].1.size()[0], b, "{name}");
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
        let spec = builtin_inputs("tiny_cnn").unwrap();
        let a = Model::load("a", "builtin:tiny_cnn", spec.clone()).unwrap();
        tch::manual_seed(12345);
        let b = Model::load("b", "builtin:tiny_cnn", spec).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rng_user.join().unwrap();
        let x = a.example_inputs(2);
        assert!(a.forward(&x).unwrap()[0]
            .1
            .equal(&b.forward(&x).unwrap()[0].1));
    }
}
