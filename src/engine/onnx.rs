//! The ONNX Runtime backend (`.onnx` files). The runtime is the shared library of the PyPI
//! `onnxruntime` wheel, loaded at run time (DESIGN §7): `$PACKRAT_ONNXRUNTIME`, else the path
//! baked in at build time (`packaging/setup-onnxruntime.sh` puts it in the checkout).
//!
//! `Session::run` takes `&mut self`, so every instance thread opens its own session, with
//! `t` intra-op threads, inter-op 1 and sequential execution. ONNX Runtime runs part of the work
//! on the calling thread and starts `t − 1` pool threads; it never pins the calling thread, and
//! without an affinity its pool threads inherit the creator's mask. So the instance thread pins
//! itself to its first core, and each pool thread gets one of the others through
//! `session.intra_op_thread_affinities` (1-based processor ids, exactly `t − 1` entries).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use ort::session::Session as OrtSession;
use ort::value::{DynTensor, TensorElementType, ValueType};
use tch::{Kind, Tensor};

use super::{first_line, Backend, InputSpec, InstanceSpec, Outputs, Precision, Session};

/// The ONNX Runtime version `packaging/setup-onnxruntime.sh` installs.
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";

/// Where the runtime library is: `$PACKRAT_ONNXRUNTIME` when set, else the path baked in at
/// build time.
pub fn library_path() -> PathBuf {
    super::library_path(
        "PACKRAT_ONNXRUNTIME",
        env!("PACKRAT_ORT_LIB"),
        "onnxruntime/libonnxruntime.so.1",
    )
}

/// Spinning pool threads gained ≤ 2 % on ResNet-50 (1×2 threads; nothing at 2×1) and burn a
/// core a co-located instance could use (BENCHMARKS.md §6).
const SPINNING: bool = false;

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's one ONNX Runtime environment, loading the library on first use.
fn environment() -> Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let lib = library_path();
        if !lib.exists() {
            return Err(format!(
                "the ONNX Runtime library is not installed (looked for {})",
                lib.display()
            ));
        }
        let builder = ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
        builder
            .with_name("packrat")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", lib.display()))
    });
    env.as_ref().map_err(|e| anyhow!("{e}"))
}

pub(super) struct Onnx {
    path: PathBuf,
    /// The session's input names, in the order of the model's declared inputs.
    input_names: Vec<String>,
}

fn element_type(kind: Kind) -> Option<TensorElementType> {
    Some(match kind {
        Kind::Float => TensorElementType::Float32,
        Kind::Double => TensorElementType::Float64,
        Kind::Int64 => TensorElementType::Int64,
        Kind::Int => TensorElementType::Int32,
        Kind::Int16 => TensorElementType::Int16,
        Kind::Int8 => TensorElementType::Int8,
        Kind::Uint8 => TensorElementType::Uint8,
        Kind::Bool => TensorElementType::Bool,
        Kind::Half => TensorElementType::Float16,
        Kind::BFloat16 => TensorElementType::Bfloat16,
        _ => return None,
    })
}

fn kind_of(ty: TensorElementType) -> Option<Kind> {
    Some(match ty {
        TensorElementType::Float32 => Kind::Float,
        TensorElementType::Float64 => Kind::Double,
        TensorElementType::Int64 => Kind::Int64,
        TensorElementType::Int32 => Kind::Int,
        TensorElementType::Int16 => Kind::Int16,
        TensorElementType::Int8 => Kind::Int8,
        TensorElementType::Uint8 => Kind::Uint8,
        TensorElementType::Bool => Kind::Bool,
        TensorElementType::Float16 => Kind::Half,
        TensorElementType::Bfloat16 => Kind::BFloat16,
        _ => return None,
    })
}

impl Onnx {
    /// Opens `path` once to check it against the declared inputs (names, dtypes, ranks).
    pub(super) fn load(path: &Path, inputs: &[InputSpec]) -> Result<Onnx> {
        let env = environment()?;
        let session = OrtSession::builder(env)
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| anyhow!("{}", first_line(&e.to_string())))
            .with_context(|| {
                format!(
                    "'{}' is not an ONNX model ONNX Runtime can run",
                    path.display()
                )
            })?;
        let outlets = session.inputs();
        if outlets.len() != inputs.len() {
            bail!(
                "the model takes {} inputs ({:?}) but {} are declared",
                outlets.len(),
                outlets.iter().map(|o| o.name()).collect::<Vec<_>>(),
                inputs.len()
            );
        }
        let mut names = Vec::with_capacity(inputs.len());
        for (k, spec) in inputs.iter().enumerate() {
            // One input: names need not agree. Several: matched by name.
            let outlet = if inputs.len() == 1 {
                &outlets[0]
            } else {
                outlets
                    .iter()
                    .find(|o| o.name() == spec.name)
                    .ok_or_else(|| {
                        anyhow!(
                            "the model has no input '{}' (it has {:?})",
                            spec.name,
                            outlets.iter().map(|o| o.name()).collect::<Vec<_>>()
                        )
                    })?
            };
            if let ValueType::Tensor { ty, shape, .. } = outlet.dtype() {
                if kind_of(*ty) != Some(spec.dtype) {
                    bail!(
                        "input {k} ('{}') is {ty:?} in the model but declared {:?}",
                        outlet.name(),
                        spec.dtype
                    );
                }
                if shape.len() != spec.shape.len() + 1 {
                    bail!(
                        "input '{}' has {} dimensions in the model; the declared shape {:?} plus the batch has {}",
                        outlet.name(),
                        shape.len(),
                        spec.shape,
                        spec.shape.len() + 1
                    );
                }
            } else {
                bail!("input '{}' is not a tensor", outlet.name());
            }
            names.push(outlet.name().to_string());
        }
        Ok(Onnx {
            path: path.to_path_buf(),
            input_names: names,
        })
    }
}

/// `session.intra_op_thread_affinities` for the pool threads: one 1-based processor id per
/// pool thread, the instance's cores after the first.
fn affinities(cores: &[usize]) -> String {
    cores
        .iter()
        .skip(1)
        .map(|c| (c + 1).to_string())
        .collect::<Vec<_>>()
        .join(";")
}

impl Backend for Onnx {
    fn computes_in(&self) -> (Precision, Option<String>) {
        (Precision::F32, None)
    }

    fn open(&self, spec: &InstanceSpec) -> Result<Box<dyn Session>> {
        let t = spec.threads.max(1);
        if t > 1 && spec.cores.len() == t {
            // The calling thread works too: it keeps the first core, the pool the others.
            let mut set = CpuSet::new();
            set.set(spec.cores[0])?;
            sched_setaffinity(Pid::from_raw(0), &set)?;
        }
        let env = environment()?;
        let mut b = OrtSession::builder(env)
            .and_then(|b| b.with_intra_threads(t).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| b.with_parallel_execution(false).map_err(Into::into))
            .and_then(|b| b.with_intra_op_spinning(SPINNING).map_err(Into::into))
            .map_err(|e| anyhow!("cannot configure an ONNX Runtime session: {e}"))?;
        if t > 1 && spec.cores.len() == t {
            b = b
                .with_config_entry(
                    "session.intra_op_thread_affinities",
                    affinities(&spec.cores),
                )
                .map_err(|e| anyhow!("cannot pin ONNX Runtime's threads: {e}"))?;
        }
        let session = b
            .commit_from_file(&self.path)
            .map_err(|e| anyhow!("cannot open {}: {e}", self.path.display()))?;
        Ok(Box::new(OnnxSession {
            session,
            input_names: self.input_names.clone(),
            threads: t as i32,
        }))
    }
}

struct OnnxSession {
    session: OrtSession,
    input_names: Vec<String>,
    threads: i32,
}

/// Copies a (CPU) tch tensor into a new ONNX Runtime tensor.
fn to_ort(t: &Tensor) -> Result<DynTensor> {
    let ty = element_type(t.kind())
        .ok_or_else(|| anyhow!("dtype {:?} has no ONNX equivalent", t.kind()))?;
    let t = t.f_contiguous()?;
    let shape: Vec<i64> = t.size();
    let mut v = DynTensor::new(&ort::memory::Allocator::default(), ty, shape)?;
    let bytes = t.numel() * t.kind().elt_size_in_bytes();
    if bytes > 0 {
        // SAFETY: both buffers are contiguous CPU memory of exactly `bytes` bytes (same shape,
        // same element type); the ONNX tensor was just allocated and is not shared.
        unsafe {
            std::ptr::copy_nonoverlapping(
                t.data_ptr() as *const u8,
                v.data_ptr_mut() as *mut u8,
                bytes,
            );
        }
    }
    Ok(v)
}

impl Session for OnnxSession {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Outputs> {
        let values: Vec<(String, DynTensor)> = self
            .input_names
            .iter()
            .zip(inputs)
            .map(|(n, t)| Ok((n.clone(), to_ort(t)?)))
            .collect::<Result<_>>()?;
        let outputs = self
            .session
            .run(values)
            .map_err(|e| anyhow!("the model's forward pass failed: {e}"))?;
        let mut out = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
                bail!("output '{name}' is not a tensor");
            };
            let kind = kind_of(*ty).ok_or_else(|| {
                anyhow!("output '{name}' has dtype {ty:?}, which packrat cannot write")
            })?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            let n: usize = dims.iter().map(|&d| d.max(0) as usize).product();
            let bytes = n * kind.elt_size_in_bytes();
            let data = value.downcast::<ort::value::DynTensorValueType>()?;
            // SAFETY: ONNX Runtime's CPU tensor holds `bytes` contiguous bytes for this shape
            // and element type; they are copied before `outputs` is dropped.
            let raw = unsafe { std::slice::from_raw_parts(data.data_ptr() as *const u8, bytes) };
            let t = Tensor::f_from_data_size(raw, &dims, kind)?;
            out.push((name.to_string(), t));
        }
        Ok(out)
    }

    fn observed_threads(&self) -> i32 {
        self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::affinities;

    #[test]
    fn pool_threads_get_the_instances_other_cores_one_based() {
        assert_eq!(affinities(&[4]), "");
        assert_eq!(affinities(&[0, 1]), "2");
        assert_eq!(affinities(&[2, 3, 4, 5]), "4;5;6");
    }
}
