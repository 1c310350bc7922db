//! Job file formats: `.npy`, `.npz` and `.safetensors`, one file each. Reading validates every
//! header before anything is allocated, so a bad file (truncated, a header that declares a huge
//! shape, an unknown dtype) is refused with a precise reason and can never crash the agent.

mod npy;
mod npz;
mod safetensors;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use tch::{Kind, Tensor};

/// Why a job file could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadErrorKind {
    /// Not a valid file of its format (or truncated, or an unsupported dtype).
    BadFile,
    /// Larger than the caller's byte budget.
    TooLarge,
    /// The file system refused.
    Io,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ReadError {
    pub kind: ReadErrorKind,
    pub message: String,
}

fn bad(message: impl Into<String>) -> ReadError {
    ReadError {
        kind: ReadErrorKind::BadFile,
        message: message.into(),
    }
}

fn too_large(message: impl Into<String>) -> ReadError {
    ReadError {
        kind: ReadErrorKind::TooLarge,
        message: message.into(),
    }
}

fn io(e: std::io::Error) -> ReadError {
    ReadError {
        kind: ReadErrorKind::Io,
        message: format!("cannot read the job file: {e}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Npy,
    Npz,
    Safetensors,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "npy" => Some(Format::Npy),
            "npz" => Some(Format::Npz),
            "safetensors" => Some(Format::Safetensors),
            _ => None,
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            Format::Npy => "npy",
            Format::Npz => "npz",
            Format::Safetensors => "safetensors",
        }
    }

    /// The format an output is written in: the input's, except that a `.npy` (one array) cannot
    /// hold several outputs, which then go to `.npz`.
    pub fn for_outputs(self, n_outputs: usize) -> Format {
        if self == Format::Npy && n_outputs > 1 {
            Format::Npz
        } else {
            self
        }
    }
}

/// One named tensor of a job file.
#[derive(Debug)]
pub struct Named {
    pub name: String,
    pub tensor: Tensor,
}

/// dtype names as users write them in the config.
pub fn kind_from_name(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "f32" => Kind::Float,
        "float64" | "f64" => Kind::Double,
        "float16" | "f16" => Kind::Half,
        "bfloat16" | "bf16" => Kind::BFloat16,
        "int64" | "i64" => Kind::Int64,
        "int32" | "i32" => Kind::Int,
        "int16" | "i16" => Kind::Int16,
        "int8" | "i8" => Kind::Int8,
        "uint8" | "u8" => Kind::Uint8,
        "bool" => Kind::Bool,
        _ => return None,
    })
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "unsupported",
    }
}

/// Bytes a tensor of this shape and kind occupies, or an error when the header lies about it.
fn byte_len(shape: &[i64], kind: Kind) -> Result<usize, ReadError> {
    let mut n: usize = kind.elt_size_in_bytes();
    for &d in shape {
        let d = usize::try_from(d)
            .map_err(|_| bad(format!("negative dimension {d} in shape {shape:?}")))?;
        n = n
            .checked_mul(d)
            .ok_or_else(|| bad(format!("shape {shape:?} is too large to exist")))?;
    }
    Ok(n)
}

fn tensor_from(data: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor, ReadError> {
    Tensor::f_from_data_size(data, shape, kind)
        .map_err(|e| bad(format!("libtorch could not build the tensor: {e}")))
}

/// A tensor's bytes, contiguous, in native (little-endian) order.
fn tensor_bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let t = t.f_contiguous()?;
    let n = t.numel();
    let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, n)?;
    Ok(buf)
}

/// Reads every tensor of a job file. `max_bytes` bounds what is read into memory.
pub fn read(path: &Path, format: Format, max_bytes: u64) -> Result<Vec<Named>, ReadError> {
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max_bytes {
        return Err(too_large(format!(
            "the file is {len} bytes, over this model's max_job_bytes = {max_bytes}: split the batch into smaller jobs"
        )));
    }
    if len == 0 {
        return Err(bad(format!(
            "the .{} file is empty: write it with numpy or safetensors",
            format.ext()
        )));
    }
    let whole = |mut file: File| {
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(io)?;
        Ok::<_, ReadError>(bytes)
    };
    match format {
        Format::Npy => npy::read_file(&mut file, len),
        Format::Npz => npz::read(&whole(file)?, max_bytes),
        Format::Safetensors => safetensors::read(&whole(file)?),
    }
}

/// Writes named tensors in `format` to `w`. `.npy` takes exactly one tensor.
pub fn write<W: Write + Seek>(
    w: &mut W,
    format: Format,
    tensors: &[(String, Tensor)],
) -> anyhow::Result<()> {
    write_tagged(w, format, tensors, &[])
}

/// [`write`], with `meta` in the file where its format has a place for it (safetensors'
/// `__metadata__`; `.npy` and `.npz` have none).
pub fn write_tagged<W: Write + Seek>(
    w: &mut W,
    format: Format,
    tensors: &[(String, Tensor)],
    meta: &[(&str, &str)],
) -> anyhow::Result<()> {
    match format {
        Format::Npy => {
            anyhow::ensure!(
                tensors.len() == 1,
                ".npy holds one array, got {}",
                tensors.len()
            );
            w.write_all(&npy::to_bytes(&tensors[0].1)?)?;
        }
        Format::Npz => npz::write(w, tensors)?,
        Format::Safetensors => safetensors::write(w, tensors, meta)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(format: Format, tensors: &[(String, Tensor)]) -> Vec<Named> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("x.{}", format.ext()));
        let mut f = File::create(&p).unwrap();
        write(&mut f, format, tensors).unwrap();
        drop(f);
        read(&p, format, 1 << 30).unwrap()
    }

    #[test]
    fn every_format_roundtrips_values_shapes_and_dtypes() {
        let a = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).reshape([2, 3, 4]);
        let b = Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)).reshape([2, 3]);
        for fmt in [Format::Npz, Format::Safetensors] {
            let got = roundtrip(
                fmt,
                &[
                    ("a".into(), a.shallow_clone()),
                    ("b".into(), b.shallow_clone()),
                ],
            );
            assert_eq!(got.len(), 2);
            let ga = got.iter().find(|n| n.name == "a").unwrap();
            let gb = got.iter().find(|n| n.name == "b").unwrap();
            assert!(ga.tensor.equal(&a) && ga.tensor.kind() == Kind::Float);
            assert!(gb.tensor.equal(&b) && gb.tensor.kind() == Kind::Int64);
        }
        let got = roundtrip(Format::Npy, &[("x".into(), a.shallow_clone())]);
        assert!(got[0].tensor.equal(&a));
        let one_d = Tensor::arange(5, (Kind::Double, tch::Device::Cpu));
        assert!(
            roundtrip(Format::Npy, &[("x".into(), one_d.shallow_clone())])[0]
                .tensor
                .equal(&one_d)
        );
    }

    #[test]
    fn files_over_the_budget_or_empty_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        assert_eq!(
            read(&p, Format::Npy, 99).unwrap_err().kind,
            ReadErrorKind::TooLarge
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            read(&p, Format::Npy, 99).unwrap_err().kind,
            ReadErrorKind::BadFile
        );
    }
}
