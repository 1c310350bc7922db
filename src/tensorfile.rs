//! Job file formats: `.npy`, `.npz` and `.safetensors`, read and written by packrat itself.
//!
//! Headers are parsed here rather than by libtorch so that a bad file (truncated, a header that
//! declares a huge shape, an unknown dtype) is refused with a precise reason *before* anything is
//! allocated, and so that a job file can never crash the agent.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use tch::{Kind, Tensor};

/// A job-level error: `kind` is a stable machine-readable word, `message` says what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub kind: &'static str,
    pub message: String,
}

impl JobError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        JobError {
            kind,
            message: message.into(),
        }
    }
}

fn bad(message: impl Into<String>) -> JobError {
    JobError::new("bad_file", message)
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

fn npy_descr(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "<f4",
        Kind::Double => "<f8",
        Kind::Half => "<f2",
        Kind::Int64 => "<i8",
        Kind::Int => "<i4",
        Kind::Int16 => "<i2",
        Kind::Int8 => "|i1",
        Kind::Uint8 => "|u1",
        Kind::Bool => "|b1",
        _ => return None,
    })
}

fn kind_from_npy_descr(descr: &str) -> Option<Kind> {
    // '=' is native order; on the little-endian hosts packrat runs on it equals '<'.
    let d = descr.replace('=', "<");
    Some(match d.as_str() {
        "<f4" => Kind::Float,
        "<f8" => Kind::Double,
        "<f2" => Kind::Half,
        "<i8" => Kind::Int64,
        "<i4" => Kind::Int,
        "<i2" => Kind::Int16,
        "|i1" | "<i1" => Kind::Int8,
        "|u1" | "<u1" => Kind::Uint8,
        "|b1" | "<b1" => Kind::Bool,
        _ => return None,
    })
}

fn st_dtype(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

fn kind_from_st(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

/// Bytes a tensor of this shape and kind occupies, or an error when the header lies about it.
fn byte_len(shape: &[i64], kind: Kind) -> Result<usize, JobError> {
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

fn tensor_from(data: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor, JobError> {
    Tensor::f_from_data_size(data, shape, kind)
        .map_err(|e| bad(format!("libtorch could not build the tensor: {e}")))
}

/// A parsed `.npy` header: dtype, shape, where the data starts and how long it is.
struct NpyHeader {
    kind: Kind,
    shape: Vec<i64>,
    data_start: usize,
    data_len: usize,
}

fn truncated(what: &str, h: &NpyHeader, have: usize) -> JobError {
    bad(format!(
        "{what} is truncated: its header declares shape {:?} ({} bytes of data) but only {have} bytes follow",
        h.shape, h.data_len
    ))
}

/// Parses one `.npy` image: returns (kind, shape, data).
fn parse_npy<'a>(bytes: &'a [u8], what: &str) -> Result<(Kind, Vec<i64>, &'a [u8]), JobError> {
    let h = parse_npy_header(bytes, what)?;
    let data = &bytes[h.data_start..];
    if data.len() < h.data_len {
        return Err(truncated(what, &h, data.len()));
    }
    Ok((h.kind, h.shape, &data[..h.data_len]))
}

/// Parses the header at the start of `bytes` (which need not hold the data).
fn parse_npy_header(bytes: &[u8], what: &str) -> Result<NpyHeader, JobError> {
    if bytes.is_empty() {
        return Err(bad(format!(
            "{what} is empty: write a numpy array with np.save"
        )));
    }
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(format!(
            "{what} is not a .npy file (no \\x93NUMPY magic): write it with np.save"
        )));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(format!("{what}: truncated .npy header")));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!("{what}: unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "{what}: truncated .npy header (declares {hlen} bytes)"
            ))
        })?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad(format!("{what}: .npy header is not text")))?;
    let descr = dict_str(header, "descr")
        .ok_or_else(|| bad(format!("{what}: .npy header has no 'descr'")))?;
    let kind = kind_from_npy_descr(&descr).ok_or_else(|| {
        bad(format!(
            "{what}: dtype '{descr}' is not supported: use a little-endian numeric dtype (e.g. float32, int64)"
        ))
    })?;
    if header.contains("'fortran_order': True") {
        return Err(bad(format!(
            "{what}: Fortran-ordered arrays are not supported: save np.ascontiguousarray(x)"
        )));
    }
    let shape = dict_shape(header)
        .ok_or_else(|| bad(format!("{what}: .npy header has no valid 'shape'")))?;
    let data_len = byte_len(&shape, kind)?;
    Ok(NpyHeader {
        kind,
        shape,
        data_start: end,
        data_len,
    })
}

/// Reads a `.npy` file of `len` bytes straight into a new tensor: the data is copied once,
/// from the kernel into the tensor, not through an intermediate buffer.
fn read_npy_file(f: &mut File, len: u64) -> Result<Vec<Named>, JobError> {
    const WHAT: &str = "the .npy file";
    let io = |e: std::io::Error| JobError::new("io", format!("cannot read the job file: {e}"));
    // numpy writes headers of a few hundred bytes; 64 KiB covers any sane one.
    let mut head = vec![0u8; (len as usize).min(64 * 1024)];
    f.read_exact(&mut head).map_err(io)?;
    let h = parse_npy_header(&head, WHAT)?;
    let have = len as usize - h.data_start;
    if have < h.data_len {
        return Err(truncated(WHAT, &h, have));
    }
    let tensor = Tensor::f_empty(h.shape.as_slice(), (h.kind, tch::Device::Cpu))
        .map_err(|e| bad(format!("libtorch could not allocate the tensor: {e}")))?;
    if h.data_len > 0 {
        // SAFETY: `tensor` was just allocated, contiguous, on the CPU, with exactly `data_len`
        // bytes (`byte_len` of its shape and kind), and nothing else refers to it yet.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, h.data_len) };
        let in_head = (head.len() - h.data_start).min(h.data_len);
        dst[..in_head].copy_from_slice(&head[h.data_start..h.data_start + in_head]);
        f.read_exact(&mut dst[in_head..]).map_err(io)?;
    }
    Ok(vec![Named {
        name: "input".into(),
        tensor,
    }])
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let quote = rest.chars().next()?;
    if quote != '\'' && quote != '"' {
        return None;
    }
    let rest = &rest[1..];
    Some(rest[..rest.find(quote)?].to_string())
}

fn dict_shape(header: &str) -> Option<Vec<i64>> {
    let at = header.find("'shape'")? + "'shape'".len();
    let rest = header[at..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('(')?;
    let inner = &rest[..rest.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<i64>().ok())
        .collect()
}

/// Reads every tensor of a job file. `max_bytes` bounds what is read into memory.
pub fn read(path: &Path, format: Format, max_bytes: u64) -> Result<Vec<Named>, JobError> {
    let io = |e: std::io::Error| JobError::new("io", format!("cannot read the job file: {e}"));
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max_bytes {
        return Err(JobError::new(
            "too_large",
            format!(
                "the file is {len} bytes, over this model's max_job_bytes = {max_bytes}: split the batch into smaller jobs"
            ),
        ));
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
        Ok::<_, JobError>(bytes)
    };
    match format {
        Format::Npy => read_npy_file(&mut file, len),
        Format::Npz => read_npz(&whole(file)?, max_bytes),
        Format::Safetensors => read_safetensors(&whole(file)?),
    }
}

fn read_npz(bytes: &[u8], max_bytes: u64) -> Result<Vec<Named>, JobError> {
    if bytes.is_empty() {
        return Err(bad("the .npz file is empty: write it with np.savez"));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        bad(format!(
            "not a valid .npz (zip) file: {e}; write it with np.savez"
        ))
    })?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("bad .npz entry #{i}: {e}")))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        if entry.size() > max_bytes {
            return Err(JobError::new(
                "too_large",
                format!(
                    "npz entry '{name}' unpacks to {} bytes, over max_job_bytes = {max_bytes}",
                    entry.size()
                ),
            ));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("cannot unpack npz entry '{name}': {e}")))?;
        let (kind, shape, data) = parse_npy(&buf, &format!("npz entry '{name}'"))?;
        out.push(Named {
            tensor: tensor_from(data, &shape, kind)?,
            name,
        });
    }
    if out.is_empty() {
        return Err(bad("the .npz file holds no arrays"));
    }
    Ok(out)
}

fn read_safetensors(bytes: &[u8]) -> Result<Vec<Named>, JobError> {
    if bytes.len() < 8 {
        return Err(bad(
            "the .safetensors file is empty or truncated (no 8-byte header length)",
        ));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
    let hend = usize::try_from(hlen)
        .ok()
        .and_then(|h| h.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "the .safetensors header declares {hlen} bytes but the file is shorter"
            ))
        })?;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..hend])
        .map_err(|e| bad(format!("the .safetensors header is not valid JSON: {e}")))?;
    let data = &bytes[hend..];
    let mut out = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap_or("");
        let kind = kind_from_st(dtype)
            .ok_or_else(|| bad(format!("tensor '{name}': dtype '{dtype}' is not supported")))?;
        let shape: Vec<i64> = v["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_i64()).collect())
            .ok_or_else(|| bad(format!("tensor '{name}': missing or bad 'shape'")))?;
        let offs: Vec<usize> = v["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|x| x as usize)).collect())
            .filter(|o: &Vec<usize>| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| bad(format!("tensor '{name}': missing or bad 'data_offsets'")))?;
        let need = byte_len(&shape, kind)?;
        if offs[1] - offs[0] != need || offs[1] > data.len() {
            return Err(bad(format!(
                "tensor '{name}' is truncated or inconsistent: shape {shape:?} needs {need} bytes, offsets {offs:?}, {} data bytes in the file",
                data.len()
            )));
        }
        out.push(Named {
            tensor: tensor_from(&data[offs[0]..offs[1]], &shape, kind)?,
            name,
        });
    }
    if out.is_empty() {
        return Err(bad("the .safetensors file holds no tensors"));
    }
    Ok(out)
}

fn tensor_bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let t = t.f_contiguous()?;
    let n = t.numel();
    let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, n)?;
    Ok(buf)
}

fn npy_bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let descr = npy_descr(t.kind()).ok_or_else(|| {
        anyhow::anyhow!(
            "output dtype {:?} has no .npy equivalent: use .safetensors jobs",
            t.kind()
        )
    })?;
    let dims: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic + version + len + header + '\n' is a multiple of 64, as numpy does.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&tensor_bytes(t)?);
    Ok(out)
}

/// Writes named tensors in `format` to `w`. `.npy` takes exactly one tensor.
pub fn write<W: Write + std::io::Seek>(
    w: &mut W,
    format: Format,
    tensors: &[(String, Tensor)],
) -> anyhow::Result<()> {
    match format {
        Format::Npy => {
            anyhow::ensure!(
                tensors.len() == 1,
                ".npy holds one array, got {}",
                tensors.len()
            );
            w.write_all(&npy_bytes(&tensors[0].1)?)?;
        }
        Format::Npz => {
            let mut zip = zip::ZipWriter::new(w);
            let opts = zip::write::FileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for (name, t) in tensors {
                zip.start_file(format!("{name}.npy"), opts)?;
                zip.write_all(&npy_bytes(t)?)?;
            }
            zip.finish()?;
        }
        Format::Safetensors => {
            let mut header = serde_json::Map::new();
            let mut blobs = Vec::new();
            let mut off = 0usize;
            for (name, t) in tensors {
                let dtype = st_dtype(t.kind()).ok_or_else(|| {
                    anyhow::anyhow!("output dtype {:?} has no safetensors equivalent", t.kind())
                })?;
                let b = tensor_bytes(t)?;
                header.insert(
                    name.clone(),
                    serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [off, off + b.len()]}),
                );
                off += b.len();
                blobs.push(b);
            }
            let mut h = serde_json::to_vec(&header)?;
            h.resize(h.len().div_ceil(8) * 8, b' ');
            w.write_all(&(h.len() as u64).to_le_bytes())?;
            w.write_all(&h)?;
            for b in blobs {
                w.write_all(&b)?;
            }
        }
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
    fn a_header_declaring_a_huge_shape_is_refused_before_allocation() {
        let hdr =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 3, 224, 224), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        let err = parse_npy(&bytes, "f").unwrap_err();
        assert!(
            err.message.contains("truncated") || err.message.contains("too large"),
            "{}",
            err.message
        );
    }

    #[test]
    fn wrong_magic_and_big_endian_are_refused_with_a_reason() {
        assert!(parse_npy(b"hello world, not numpy", "f")
            .unwrap_err()
            .message
            .contains("np.save"));
        let hdr = "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend_from_slice(&[0u8; 4]);
        assert!(parse_npy(&bytes, "f")
            .unwrap_err()
            .message
            .contains("little-endian"));
    }
}
