//! `.safetensors`: named tensors behind a JSON header, parsed and validated (offsets, lengths,
//! dtypes) by the `safetensors` crate.

use std::io::Write;

use ::safetensors::tensor::{Dtype, SafeTensors, TensorView};
use ::safetensors::SafeTensorError;
use tch::{Kind, Tensor};

use super::{bad, byte_len, tensor_bytes, tensor_from, Named, ReadError};

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// What is wrong with a file, in words a client can act on.
fn describe(e: SafeTensorError) -> String {
    let what = match e {
        SafeTensorError::HeaderTooSmall => "it is shorter than the 8-byte header length".into(),
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => {
            "its header declares more bytes than the file holds".into()
        }
        SafeTensorError::InvalidHeader
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization
        | SafeTensorError::JsonError(_) => "its header is not a JSON object".into(),
        SafeTensorError::InvalidOffset(name) => {
            format!("the data offsets of tensor '{name}' do not fit the file (truncated?)")
        }
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::TensorInvalidInfo => {
            "its tensors' shapes and offsets do not match its data (truncated?)".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape is too large to exist".into(),
        other => format!("{other:?}"),
    };
    format!("not a valid .safetensors file: {what}; write it with safetensors' save_file")
}

pub(super) fn read(bytes: &[u8]) -> Result<Vec<Named>, ReadError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(describe(e)))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            bad(format!(
                "tensor '{name}': dtype {:?} is not supported",
                view.dtype()
            ))
        })?;
        let shape: Vec<i64> = view
            .shape()
            .iter()
            .map(|&d| {
                i64::try_from(d).map_err(|_| bad(format!("tensor '{name}': shape too large")))
            })
            .collect::<Result<_, _>>()?;
        if byte_len(&shape, kind)? != view.data().len() {
            return Err(bad(format!(
                "tensor '{name}' is inconsistent: shape {shape:?} does not match its {} data bytes",
                view.data().len()
            )));
        }
        out.push(Named {
            tensor: tensor_from(view.data(), &shape, kind)?,
            name,
        });
    }
    if out.is_empty() {
        return Err(bad("the .safetensors file holds no tensors"));
    }
    // The header is a JSON object: keep the file's order stable for callers (by name).
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes `tensors`, with `meta` as the file's `__metadata__` (none when empty).
pub(super) fn write<W: Write>(
    w: &mut W,
    tensors: &[(String, Tensor)],
    meta: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut blobs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            anyhow::anyhow!("output dtype {:?} has no safetensors equivalent", t.kind())
        })?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        blobs.push((name.as_str(), dtype, shape, tensor_bytes(t)?));
    }
    let views = blobs
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((*name, TensorView::new(*dtype, shape.clone(), data)?))
        })
        .collect::<Result<Vec<_>, ::safetensors::SafeTensorError>>()
        .map_err(|e| anyhow::anyhow!("cannot describe the outputs as safetensors: {e:?}"))?;
    let meta = (!meta.is_empty()).then(|| {
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::HashMap<_, _>>()
    });
    let bytes = ::safetensors::serialize(views, &meta)
        .map_err(|e| anyhow::anyhow!("cannot write safetensors: {e:?}"))?;
    w.write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_files_are_refused_with_a_reason() {
        let reason = |bytes: &[u8]| read(bytes).unwrap_err().message;
        assert!(reason(&[1, 2]).contains("8-byte"));
        assert!(reason(&[255u8; 12]).contains("header declares"));
        let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut truncated = (header.len() as u64).to_le_bytes().to_vec();
        truncated.extend_from_slice(header);
        truncated.extend_from_slice(&[0u8; 8]);
        assert!(
            reason(&truncated).contains("truncated"),
            "{}",
            reason(&truncated)
        );
    }
}
