//! The built-in models: an enum of what there is, the inputs each takes, and building one as a
//! traced `CModule` with random but fixed weights (the same in every process, so outputs are
//! reproducible and tests can compare the agent with an in-process run).

use anyhow::{bail, Context, Result};
use tch::nn::{self, ModuleT};
use tch::{CModule, Kind, Tensor};

use super::{nets, InputSpec, Precision};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Resnet18,
    Resnet34,
    Resnet50,
    MobilenetV2,
    InceptionV3,
    BertBase,
    TinyCnn,
    TwoHeads,
}

impl Builtin {
    pub const ALL: [Builtin; 8] = [
        Builtin::Resnet18,
        Builtin::Resnet34,
        Builtin::Resnet50,
        Builtin::MobilenetV2,
        Builtin::InceptionV3,
        Builtin::BertBase,
        Builtin::TinyCnn,
        Builtin::TwoHeads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Resnet18 => "resnet18",
            Builtin::Resnet34 => "resnet34",
            Builtin::Resnet50 => "resnet50",
            Builtin::MobilenetV2 => "mobilenet_v2",
            Builtin::InceptionV3 => "inception_v3",
            Builtin::BertBase => "bert_base",
            Builtin::TinyCnn => "tiny_cnn",
            Builtin::TwoHeads => "two_heads",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Builtin::Resnet18 => "ResNet-18",
            Builtin::Resnet34 => "ResNet-34",
            Builtin::Resnet50 => "ResNet-50",
            Builtin::MobilenetV2 => "MobileNet-v2",
            Builtin::InceptionV3 => "Inception-v3",
            Builtin::BertBase => {
                "a BERT-base-sized transformer encoder over int64 token ids (input 'input_ids' [128])"
            }
            Builtin::TinyCnn => "a small CNN for tests and demos",
            Builtin::TwoHeads => "a two-input MLP (inputs 'a' [16] and 'b' [8])",
        }
    }

    /// The inputs a job gives this model when the config does not override them.
    pub fn default_inputs(self) -> Vec<InputSpec> {
        let image = |side| vec![InputSpec::float("input", vec![3, side, side])];
        match self {
            Builtin::InceptionV3 => image(299),
            Builtin::TinyCnn => image(32),
            Builtin::BertBase => vec![InputSpec {
                name: "input_ids".into(),
                shape: vec![128],
                dtype: Kind::Int64,
            }],
            Builtin::TwoHeads => vec![
                InputSpec::float("a", vec![16]),
                InputSpec::float("b", vec![8]),
            ],
            _ => image(224),
        }
    }

    /// Whether the network can be built for `inputs` (a config may override the defaults):
    /// `Err` says what it needs.
    pub fn check_inputs(self, inputs: &[InputSpec]) -> Result<(), String> {
        let one = |pred: &dyn Fn(&InputSpec) -> bool, need: &str| match inputs {
            [i] if pred(i) => Ok(()),
            _ => Err(format!("built-in '{}' takes {need}", self.name())),
        };
        // The smallest image side the network's strides and pools survive.
        let min_side = match self {
            Builtin::InceptionV3 => 75,
            Builtin::TinyCnn => 2,
            _ => 32,
        };
        match self {
            Builtin::BertBase => one(
                &|i| {
                    i.dtype == Kind::Int64 && i.shape.len() == 1 && (1..=4096).contains(&i.shape[0])
                },
                "one int64 input of shape [S] with 1 <= S <= 4096 (token ids)",
            ),
            Builtin::TwoHeads => {
                if inputs.len() == 2 && *inputs == Builtin::TwoHeads.default_inputs()[..] {
                    Ok(())
                } else {
                    Err("built-in 'two_heads' takes exactly its own inputs: a [16] and b [8], float32".into())
                }
            }
            _ => one(
                &|i| {
                    i.dtype == Kind::Float
                        && i.shape.len() == 3
                        && i.shape[0] == 3
                        && i.shape[1..].iter().all(|&s| s >= min_side)
                },
                &format!("one float32 image input [3, H, W] with H, W >= {min_side}"),
            ),
        }
    }

    /// Builds the network and traces it into a `CModule` (the code path of TorchScript files).
    /// A trace bakes the weights into the graph as constants, so a bf16 network is traced in
    /// bf16 (weights and float inputs).
    pub fn build(self, inputs: &[InputSpec], precision: Precision) -> Result<CModule> {
        self.check_inputs(inputs).map_err(anyhow::Error::msg)?;
        // tch's non-`f_` ops panic on a libtorch error: keep that inside this call.
        std::panic::catch_unwind(|| self.trace(inputs, precision))
            .unwrap_or_else(|_| bail!("building built-in '{}' failed inside libtorch", self.name()))
    }

    fn trace(self, inputs: &[InputSpec], precision: Precision) -> Result<CModule> {
        let bf16 = precision == Precision::Bf16;
        let examples: Vec<Tensor> = inputs
            .iter()
            .map(|i| match i.dtype {
                Kind::Float if bf16 => i.zeros(1).to_kind(Kind::BFloat16),
                _ => i.zeros(1),
            })
            .collect();
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let p = &vs.root();
        type Forward = Box<dyn Fn(&[Tensor]) -> Tensor>;
        fn single(f: impl Fn(&Tensor) -> Tensor + 'static) -> Forward {
            Box::new(move |xs| f(&xs[0]))
        }
        let forward: Forward = match self {
            Builtin::Resnet18 => single(nets::resnet(p, [2, 2, 2, 2], false, 1000)),
            Builtin::Resnet34 => single(nets::resnet(p, [3, 4, 6, 3], false, 1000)),
            Builtin::Resnet50 => single(nets::resnet(p, [3, 4, 6, 3], true, 1000)),
            Builtin::MobilenetV2 => {
                let net = tch::vision::mobilenet::v2(p, 1000);
                single(move |x| net.forward_t(x, false))
            }
            Builtin::InceptionV3 => single(nets::inception_v3(p, 1000)),
            Builtin::BertBase => single(nets::bert_base(p, inputs[0].shape[0])),
            Builtin::TinyCnn => single(nets::tiny_cnn(p)),
            // One output: a traced method cannot return a tuple.
            Builtin::TwoHeads => {
                let f = nets::two_heads(p);
                Box::new(move |xs| f(&xs[0], &xs[1]))
            }
        };
        deterministic_weights(&vs)
            .with_context(|| format!("initialising built-in '{}'", self.name()))?;
        if bf16 {
            vs.bfloat16();
        }
        // Weights must not require grad, or tracing refuses to bake them into the graph.
        vs.freeze();
        tch::no_grad(|| {
            CModule::create_by_tracing("packrat", "forward", &examples, &mut |xs| vec![forward(xs)])
        })
        .with_context(|| format!("tracing built-in '{}' failed", self.name()))
    }
}

/// Fixed seed so that a built-in has the same random weights in every process.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_defaults_fit_their_own_check() {
        for b in Builtin::ALL {
            assert_eq!(Builtin::from_name(b.name()), Some(b));
            assert_eq!(b.check_inputs(&b.default_inputs()), Ok(()), "{}", b.name());
        }
        assert_eq!(Builtin::from_name("nope"), None);
    }

    #[test]
    fn inputs_a_network_cannot_take_are_refused_not_panicked_on() {
        let bert_scalar = [InputSpec {
            name: "input_ids".into(),
            shape: vec![],
            dtype: Kind::Int64,
        }];
        assert!(Builtin::BertBase.check_inputs(&bert_scalar).is_err());
        let one_head = [InputSpec::float("a", vec![16])];
        assert!(Builtin::TwoHeads.build(&one_head, Precision::F32).is_err());
        let tiny_image = [InputSpec::float("input", vec![3, 8, 8])];
        assert!(Builtin::Resnet18.check_inputs(&tiny_image).is_err());
    }
}
