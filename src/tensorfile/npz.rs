//! `.npz`: a zip of `.npy` arrays (`np.savez`), one per named input.

use std::io::{Read, Seek, Write};

use tch::Tensor;

use super::{bad, npy, tensor_from, too_large, Named, ReadError};

pub(super) fn read(bytes: &[u8], max_bytes: u64) -> Result<Vec<Named>, ReadError> {
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
            return Err(too_large(format!(
                "npz entry '{name}' unpacks to {} bytes, over max_job_bytes = {max_bytes}",
                entry.size()
            )));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("cannot unpack npz entry '{name}': {e}")))?;
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
