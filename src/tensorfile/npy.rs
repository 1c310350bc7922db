//! `.npy`: numpy's single-array format. The header (a Python dict literal) is parsed here, and
//! a file's data is read straight into a new tensor — copied once, from the kernel.

use std::fs::File;
use std::io::Read;

use tch::{Kind, Tensor};

use super::{bad, byte_len, io, tensor_bytes, Named, ReadError};

fn kind_from_descr(descr: &str) -> Option<Kind> {
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

fn descr(kind: Kind) -> Option<&'static str> {
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

/// A parsed `.npy` header: dtype, shape, where the data starts and how long it is.
struct NpyHeader {
    kind: Kind,
    shape: Vec<i64>,
    data_start: usize,
    data_len: usize,
}

fn truncated(what: &str, h: &NpyHeader, have: usize) -> ReadError {
    bad(format!(
        "{what} is truncated: its header declares shape {:?} ({} bytes of data) but only {have} bytes follow",
        h.shape, h.data_len
    ))
}

/// Parses one `.npy` image: returns (kind, shape, data).
pub(super) fn parse<'a>(
    bytes: &'a [u8],
    what: &str,
) -> Result<(Kind, Vec<i64>, &'a [u8]), ReadError> {
    let h = parse_npy_header(bytes, what)?;
    let data = &bytes[h.data_start..];
    if data.len() < h.data_len {
        return Err(truncated(what, &h, data.len()));
    }
    Ok((h.kind, h.shape, &data[..h.data_len]))
}

/// Parses the header at the start of `bytes` (which need not hold the data).
fn parse_npy_header(bytes: &[u8], what: &str) -> Result<NpyHeader, ReadError> {
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
    // A key given twice could mean one thing to numpy and another here: refuse it.
    for key in ["'descr'", "'shape'", "'fortran_order'"] {
        if header.matches(key).count() > 1 {
            return Err(bad(format!(
                "{what}: the .npy header gives {key} more than once: write it with np.save"
            )));
        }
    }
    let descr = dict_str(header, "descr")
        .ok_or_else(|| bad(format!("{what}: .npy header has no 'descr'")))?;
    let kind = kind_from_descr(&descr).ok_or_else(|| {
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
pub(super) fn read_file(f: &mut File, len: u64) -> Result<Vec<Named>, ReadError> {
    const WHAT: &str = "the .npy file";
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

pub(super) fn to_bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let descr = descr(t.kind()).ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(descr: &str, shape: &str, data: usize) -> Vec<u8> {
        let hdr = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend_from_slice(&vec![0u8; data]);
        bytes
    }

    #[test]
    fn a_header_declaring_a_huge_shape_is_refused_before_allocation() {
        let err = parse(&file("<f4", "(100000000000, 3, 224, 224)", 64), "f").unwrap_err();
        assert!(
            err.message.contains("truncated") || err.message.contains("too large"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_header_with_a_duplicate_key_is_refused() {
        let hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (2,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        let err = parse(&bytes, "f").unwrap_err();
        assert!(err.message.contains("more than once"), "{}", err.message);
    }

    #[test]
    fn wrong_magic_and_big_endian_are_refused_with_a_reason() {
        assert!(parse(b"hello world, not numpy", "f")
            .unwrap_err()
            .message
            .contains("np.save"));
        assert!(parse(&file(">f4", "(1,)", 4), "f")
            .unwrap_err()
            .message
            .contains("little-endian"));
    }
}
