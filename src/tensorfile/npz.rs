//! `.npz`: a zip of `.npy` arrays (`np.savez`), one per named input.

use std::io::{Read, Seek, Write};

use tch::Tensor;

use super::{bad, npy, tensor_from, too_large, Named, ReadError};

/// Reads every array, stopping at `max_bytes` of inflated data summed over all entries: the
/// sizes an entry declares are never trusted (a zip bomb declares a few bytes).
pub(super) fn read(bytes: &[u8], max_bytes: u64) -> Result<Vec<Named>, ReadError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        bad(format!(
            "not a valid .npz (zip) file: {e}; write it with np.savez"
        ))
    })?;
    let mut budget = max_bytes;
    let mut out: Vec<Named> = Vec::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("bad .npz entry #{i}: {e}")))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let over = |n: u64| {
            too_large(format!(
                "the .npz unpacks to more than max_job_bytes = {max_bytes} bytes (entry '{name}' alone declares {n}): split the batch into smaller jobs"
            ))
        };
        if entry.size() > budget {
            return Err(over(entry.size()));
        }
        if out.iter().any(|n| n.name == name) {
            return Err(bad(format!(
                "the .npz holds two arrays named '{name}': write it with np.savez"
            )));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        let declared = entry.size();
        entry
            .take(budget + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("cannot unpack npz entry '{name}': {e}")))?;
        if buf.len() as u64 > budget {
            return Err(over(declared));
        }
        budget -= buf.len() as u64;
        let (kind, shape, data) = npy::parse(&buf, &format!("npz entry '{name}'"))?;
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

pub(super) fn write<W: Write + Seek>(
    w: &mut W,
    tensors: &[(String, Tensor)],
) -> anyhow::Result<()> {
    let mut zip = zip::ZipWriter::new(w);
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, t) in tensors {
        zip.start_file(format!("{name}.npy"), opts)?;
        zip.write_all(&npy::to_bytes(t)?)?;
    }
    zip.finish()?;
    Ok(())
}
