//! The OpenVINO backend (`engine = "openvino"`: an `.onnx` file or an OpenVINO IR `.xml` with its
//! `.bin`). The runtime is the C library of the PyPI `openvino` wheel with its CPU plugin and
//! frontends beside it (`packaging/setup-openvino.sh`), loaded at run time (DESIGN §11):
//! `$PACKRAT_OPENVINO` (the library or its folder), else the path baked in at build time.
//!
//! Every instance thread compiles its own model with `INFERENCE_NUM_THREADS = t`, one stream,
//! the LATENCY hint, and OpenVINO's own CPU pinning off: the instance thread is already pinned to
//! its cores, and OpenVINO's pinning would place every compiled model on the same first cores.
//! Precision is explicit: `INFERENCE_PRECISION_HINT` is f32 unless the model asks for bf16
//! (OpenVINO's default on AMX/AVX512-BF16 CPUs is bf16).
//!
//! The model is compiled with a dynamic batch, so one compiled model serves every sub-batch
//! size; at warm-up each instance also compiles the sizes it will serve with a static shape and
//! keeps those that measure faster (`static_shapes` per instance).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use openvino::{
    Core, DeviceType, ElementType, InferRequest, PartialShape, PropertyKey, RwPropertyKey, Shape,
};
use tch::{Kind, Tensor};

use super::{Backend, InputSpec, InstanceSpec, Outputs, Precision, Session, Specialized};
use crate::planner::stats::median;

/// The OpenVINO version `packaging/setup-openvino.sh` installs.
pub const OPENVINO_VERSION: &str = "2026.4.0";

/// Where the runtime is looked for: `$PACKRAT_OPENVINO` when set (and then only there), else
/// the path baked in at build time.
pub fn library_path() -> PathBuf {
    super::library_path(
        "PACKRAT_OPENVINO",
        env!("PACKRAT_OPENVINO_LIB"),
        "openvino/libs/libopenvino_c.so",
    )
}

static LOADED: OnceLock<Result<(), String>> = OnceLock::new();

fn load_library() -> Result<()> {
    LOADED
        .get_or_init(|| {
            let path = library_path();
            if !path.exists() {
                return Err(format!(
                    "the OpenVINO runtime is not installed (looked for {})",
                    path.display()
                ));
            }
            openvino_sys::library::load_from(&path)
                .map_err(|e| format!("cannot load OpenVINO from {}: {e}", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn element_type(kind: Kind) -> Option<ElementType> {
    Some(match kind {
        Kind::Float => ElementType::F32,
        Kind::Double => ElementType::F64,
        Kind::Half => ElementType::F16,
        Kind::BFloat16 => ElementType::Bf16,
        Kind::Int64 => ElementType::I64,
        Kind::Int => ElementType::I32,
        Kind::Int16 => ElementType::I16,
        Kind::Int8 => ElementType::I8,
        Kind::Uint8 => ElementType::U8,
        Kind::Bool => ElementType::Boolean,
        _ => return None,
    })
}

fn kind_of(ty: ElementType) -> Option<Kind> {
    Some(match ty {
        ElementType::F32 => Kind::Float,
        ElementType::F64 => Kind::Double,
        ElementType::F16 => Kind::Half,
        ElementType::Bf16 => Kind::BFloat16,
        ElementType::I64 => Kind::Int64,
        ElementType::I32 => Kind::Int,
        ElementType::I16 => Kind::Int16,
        ElementType::I8 => Kind::Int8,
        ElementType::U8 => Kind::Uint8,
        ElementType::Boolean => Kind::Bool,
        _ => return None,
    })
}

fn ov<T>(r: std::result::Result<T, openvino::InferenceError>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

pub(super) struct OpenVino {
    compiler: Arc<Compiler>,
    /// Why the model computes in another precision than it asked for.
    downgraded: Option<String>,
}

/// What every compile needs: the model's files and precision, and the core.
struct Compiler {
    model: PathBuf,
    /// The IR's weights (`.bin` beside the `.xml`); empty for ONNX.
    weights: String,
    precision: Precision,
    /// Sub-batch sizes an instance may compile with a static shape (0: dynamic only).
    static_shapes: usize,
    /// Compiling changes the core's CPU properties, so one compile at a time.
    core: Mutex<Core>,
}

impl OpenVino {
    /// Reads `path` once to check it against the declared inputs (count, dtypes, ranks).
    pub(super) fn load(
        path: &Path,
        inputs: &[InputSpec],
        precision: Precision,
        static_shapes: usize,
    ) -> Result<OpenVino> {
        load_library()?;
        let mut core = Core::new().map_err(|e| anyhow!("cannot start OpenVINO: {e}"))?;
        let weights = match path.extension().and_then(|e| e.to_str()) {
            Some("xml") => {
                let bin = path.with_extension("bin");
                if !bin.is_file() {
                    bail!("the IR's weights {} are missing", bin.display());
                }
                bin.display().to_string()
            }
            _ => String::new(),
        };
        let model_path = path.to_str().context("a model path that is not UTF-8")?;
        let model = ov(core.read_model_from_file(model_path, &weights)).with_context(|| {
            format!(
                "'{}' is not a model OpenVINO can read (ONNX or IR .xml)",
                path.display()
            )
        })?;
        let n = ov(model.get_inputs_len())?;
        if n != inputs.len() {
            bail!(
                "the model takes {n} inputs but {} are declared",
                inputs.len()
            );
        }
        for (k, spec) in inputs.iter().enumerate() {
            let node = ov(model.get_input_by_index(k))?;
            let ty = ov(node.get_element_type())?;
            if kind_of(ty) != Some(spec.dtype) {
                bail!(
                    "input {k} is {ty:?} in the model but declared {:?}",
                    spec.dtype
                );
            }
            let rank = ov(node.get_partial_shape())?.get_dimensions().len();
            if rank != spec.shape.len() + 1 {
                bail!(
                    "input {k} has {rank} dimensions in the model; the declared shape {:?} plus the batch has {}",
                    spec.shape,
                    spec.shape.len() + 1
                );
            }
        }
        let mut compiler = Compiler {
            model: path.to_path_buf(),
            weights,
            precision,
            static_shapes,
            core: Mutex::new(core),
        };
        // Asked for bf16: ask the compiled model what it computes in, and compile every
        // instance in that (the status must never claim bf16 where the CPU computes f32).
        let mut downgraded = None;
        if precision == Precision::Bf16 {
            let (computed, caps) = compiler.computed_precision()?;
            if computed != Precision::Bf16 {
                compiler.precision = computed;
                downgraded = Some(format!(
                    "OpenVINO compiles this model in {} on this CPU (its optimisation capabilities: {caps})",
                    computed.name()
                ));
            }
        }
        Ok(OpenVino {
            compiler: Arc::new(compiler),
            downgraded,
        })
    }
}

impl Compiler {
    /// Compiles the model for `threads` intra-op threads: as the file has it (a dynamic
    /// batch), or with the static input `shapes` of one batch.
    fn compile_model(
        &self,
        threads: usize,
        shapes: Option<&[Vec<i64>]>,
    ) -> Result<openvino::CompiledModel> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let cpu = DeviceType::CPU;
        let threads = threads.max(1).to_string();
        let precision = match self.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        for (key, value) in [
            (RwPropertyKey::InferenceNumThreads, threads.as_str()),
            (RwPropertyKey::NumStreams, "1"),
            (RwPropertyKey::HintPerformanceMode, "LATENCY"),
            (RwPropertyKey::HintEnableCpuPinning, "NO"),
            (RwPropertyKey::HintInferencePrecision, precision),
        ] {
            ov(core.set_property(&cpu, &key, value))
                .with_context(|| format!("cannot set OpenVINO's {}", key.as_ref()))?;
        }
        let path = self
            .model
            .to_str()
            .context("a model path that is not UTF-8")?;
        let mut model = ov(core.read_model_from_file(path, &self.weights))?;
        if let Some(dims) = shapes {
            let shapes = dims
                .iter()
                .map(|s| ov(PartialShape::new_static(s.len() as i64, s)))
                .collect::<Result<Vec<_>>>()?;
            let ports: Vec<(usize, &PartialShape)> = shapes.iter().enumerate().collect();
            ov(model.reshape_by_port_indexes(&ports))
                .with_context(|| format!("OpenVINO cannot reshape the model to {dims:?}"))?;
        }
        ov(core.compile_model(&model, cpu))
            .with_context(|| format!("OpenVINO cannot compile {}", self.model.display()))
    }

    /// [`Compiler::compile_model`], and an infer request on it with the output names.
    fn compile(
        &self,
        threads: usize,
        shapes: Option<&[Vec<i64>]>,
    ) -> Result<(InferRequest, Vec<String>)> {
        let mut compiled = self.compile_model(threads, shapes)?;
        let mut outputs = Vec::new();
        for i in 0..ov(compiled.get_output_size())? {
            outputs.push(ov(ov(compiled.get_output_by_index(i))?.get_name())?);
        }
        Ok((ov(compiled.create_infer_request())?, outputs))
    }

    /// What a compiled model computes in: its own `INFERENCE_PRECISION_HINT`, which is the
    /// truth (DESIGN §12: a bf16 hint on a CPU without bf16 compiles without error and
    /// computes f32). With the CPU device's optimisation capabilities, for the reason.
    fn computed_precision(&self) -> Result<(Precision, String)> {
        let compiled = self.compile_model(1, None)?;
        let hint =
            ov(compiled.get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision)))?
                .to_lowercase();
        let caps = {
            let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            ov(core.get_property(&DeviceType::CPU, &PropertyKey::DeviceCapabilities))
                .unwrap_or_else(|_| "unknown".into())
        };
        let precision = if hint.contains("bf16") {
            Precision::Bf16
        } else {
            Precision::F32
        };
        Ok((precision, caps))
    }
}

impl Backend for OpenVino {
    fn computes_in(&self) -> (Precision, Option<String>) {
        (self.compiler.precision, self.downgraded.clone())
    }

    fn open(&self, spec: &InstanceSpec) -> Result<Box<dyn Session>> {
        let threads = spec.threads.max(1);
        let (dynamic, outputs) = self.compiler.compile(threads, None)?;
        Ok(Box::new(OpenVinoSession {
            compiler: self.compiler.clone(),
            dynamic,
            fixed: HashMap::new(),
            tried: HashSet::new(),
            outputs,
            threads,
        }))
    }
}

/// One instance's requests: the model as compiled with a dynamic batch, and static-shape twins
/// for the sub-batch sizes where one measured faster (see [`Session::specialize`]).
struct OpenVinoSession {
    compiler: Arc<Compiler>,
    dynamic: InferRequest,
    /// Batch size → a request on the model compiled for exactly that batch.
    fixed: HashMap<i64, InferRequest>,
    /// Sizes already weighed (kept or not): each is compiled and timed once.
    tried: HashSet<i64>,
    outputs: Vec<String>,
    threads: usize,
}

/// Interleaved pairs of runs when a static shape is weighed against the dynamic one: the host's
/// speed drifts by tens of percent within seconds here, so each pair is compared on its own.
const WEIGH_PAIRS: usize = 7;

/// A static shape is kept only when it is at least this much faster (it costs a compiled model's
/// memory; a smaller gain is within run-to-run noise here).
const KEEP_IF_BELOW: f64 = 0.97;

fn infer(request: &mut InferRequest, names: &[String], inputs: &[Tensor]) -> Result<Outputs> {
    for (i, t) in inputs.iter().enumerate() {
        let ty = element_type(t.kind())
            .ok_or_else(|| anyhow!("dtype {:?} has no OpenVINO equivalent", t.kind()))?;
        let t = t.f_contiguous()?;
        let mut v = ov(openvino::Tensor::new(ty, &ov(Shape::new(&t.size()))?))?;
        let dst = ov(v.get_raw_data_mut())?;
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        if dst.len() != bytes {
            bail!("OpenVINO allocated {} bytes for {bytes}", dst.len());
        }
        t.f_copy_data_u8(dst, t.numel())?;
        ov(request.set_input_tensor_by_index(i, &v))?;
    }
    ov(request.infer()).context("the model's forward pass failed")?;
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let v = ov(request.get_output_tensor_by_index(i))?;
        let ty = ov(v.get_element_type())?;
        let kind = kind_of(ty).ok_or_else(|| {
            anyhow!("output '{name}' has dtype {ty:?}, which packrat cannot write")
        })?;
        let dims = ov(v.get_shape())?.get_dimensions().to_vec();
        out.push((
            name.clone(),
            Tensor::f_from_data_size(ov(v.get_raw_data())?, &dims, kind)?,
        ));
    }
    Ok(out)
}

fn timed_ms(request: &mut InferRequest, names: &[String], inputs: &[Tensor]) -> Result<f64> {
    let t0 = Instant::now();
    infer(request, names, inputs)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// The batch size of a forward pass's inputs (dimension 0 of the first).
fn batch_of(inputs: &[Tensor]) -> Option<i64> {
    inputs.first().and_then(|t| t.size().first().copied())
}

/// (static ms, dynamic ms, median of the pairs' static/dynamic ratios), after a warm-up run of
/// each; the pairs alternate which side runs first.
fn weigh(
    fixed: &mut InferRequest,
    dynamic: &mut InferRequest,
    names: &[String],
    inputs: &[Tensor],
) -> Result<(f64, f64, f64)> {
    infer(fixed, names, inputs)?;
    infer(dynamic, names, inputs)?;
    let (mut s, mut d, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..WEIGH_PAIRS {
        let (a, b) = if k % 2 == 0 {
            let a = timed_ms(fixed, names, inputs)?;
            (a, timed_ms(dynamic, names, inputs)?)
        } else {
            let b = timed_ms(dynamic, names, inputs)?;
            (timed_ms(fixed, names, inputs)?, b)
        };
        s.push(a);
        d.push(b);
        ratio.push(a / b.max(1e-9));
    }
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    Ok((med(&s), med(&d), med(&ratio)))
}

impl Session for OpenVinoSession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Outputs> {
        let request = match batch_of(inputs).and_then(|b| self.fixed.get_mut(&b)) {
            Some(r) => r,
            None => &mut self.dynamic,
        };
        infer(request, &self.outputs, inputs)
    }

    /// OpenVINO's CPU plugin runs a static shape up to 19 % faster than the same batch through a
    /// dynamic one on some models (ResNet-50 at small batches) and slower on others (BERT in
    /// bf16 at 2–4 sequences), and every compiled model holds its own copy of the weights: so
    /// each size is compiled, weighed against the dynamic model on these inputs, and kept only
    /// when it wins, up to `static_shapes` sizes per instance.
    fn specialize(&mut self, inputs: &[Tensor]) -> Result<Option<Specialized>> {
        let Some(batch) = batch_of(inputs) else {
            return Ok(None);
        };
        // A kept size was tried too: `tried` alone says whether a size was weighed.
        if self.fixed.len() >= self.compiler.static_shapes || !self.tried.insert(batch) {
            return Ok(None);
        }
        let shapes: Vec<Vec<i64>> = inputs.iter().map(|t| t.size()).collect();
        let t0 = Instant::now();
        let (mut fixed, _) = self.compiler.compile(self.threads, Some(&shapes))?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (static_ms, dynamic_ms, ratio) =
            weigh(&mut fixed, &mut self.dynamic, &self.outputs, inputs)?;
        let kept = ratio <= KEEP_IF_BELOW;
        if kept {
            self.fixed.insert(batch, fixed);
        }
        Ok(Some(Specialized {
            threads: self.threads,
            batch: batch as usize,
            static_ms,
            dynamic_ms,
            compile_ms,
            ratio,
            kept,
        }))
    }

    fn observed_threads(&self) -> i32 {
        self.threads as i32
    }
}
