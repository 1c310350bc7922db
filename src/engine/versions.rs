//! A model's version folders, the layout of TensorFlow Serving and Triton: `<dir>/<N>/` for
//! each version N, holding one model file (`model.pt`, `model.onnx`, or `model.xml` with its
//! `model.bin`; `profile.json` for the replay engine). Which versions exist, which one is
//! wanted (the highest, or a pinned one), and which model file and engine a version folder
//! holds. Names that are not a plain number (`.5.tmp`, `5-staging`) are not versions: a
//! client writes a version under such a name and renames it into place.

use std::io;
use std::path::PathBuf;

use super::{EngineKind, ModelSource};

/// The model files a version folder may hold, in the order they are looked for.
const FILES: [(&str, EngineKind); 4] = [
    ("model.pt", EngineKind::Libtorch),
    ("model.onnx", EngineKind::OnnxRuntime),
    ("model.xml", EngineKind::OpenVino),
    // Only with engine = "replay": a profile is no model a user would mean to serve.
    ("profile.json", EngineKind::Replay),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDir {
    pub dir: PathBuf,
    /// `version = N`: serve N only (None: the highest).
    pub pin: Option<u64>,
    /// `engine = ...` from the config: decides how every version's file is read.
    pub engine: Option<EngineKind>,
}

impl VersionDir {
    /// The version numbers present, ascending.
    pub fn list(&self) -> io::Result<Vec<u64>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(n) = entry.file_name().to_str().and_then(version_number) else {
                continue;
            };
            if entry.file_type()?.is_dir() {
                found.push(n);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// The version to serve: the pinned one if it is there, else the highest present.
    pub fn wanted(&self) -> io::Result<Option<u64>> {
        let list = self.list()?;
        Ok(match self.pin {
            Some(p) => list.contains(&p).then_some(p),
            None => list.last().copied(),
        })
    }

    pub fn folder(&self, n: u64) -> PathBuf {
        self.dir.join(n.to_string())
    }

    /// The model file of version `n` and the engine it runs on; a reason when the folder
    /// holds none, or an IR `.xml` without its `.bin`, or an empty file (half-written).
    pub fn source(&self, n: u64) -> Result<ModelSource, String> {
        let folder = self.folder(n);
        let file = FILES
            .iter()
            .filter(|(_, e)| match self.engine {
                // OpenVINO reads ONNX as well as its own IR.
                Some(EngineKind::OpenVino) => *e != EngineKind::Libtorch,
                Some(want) => *e == want,
                None => *e != EngineKind::Replay,
            })
            .map(|(f, e)| (folder.join(f), *e))
            .find(|(p, _)| p.exists());
        let Some((path, found)) = file else {
            let names: Vec<&str> = FILES.iter().map(|(f, _)| *f).collect();
            return Err(format!(
                "{} holds no model file (looked for {})",
                folder.display(),
                names.join(", ")
            ));
        };
        for p in std::iter::once(path.clone())
            .chain((found == EngineKind::OpenVino).then(|| path.with_extension("bin")))
        {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() && m.len() > 0 => {}
                Ok(_) => return Err(format!("{} is empty or not a file", p.display())),
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        Ok(match self.engine.unwrap_or(found) {
            EngineKind::Libtorch => ModelSource::TorchScript(path),
            EngineKind::OnnxRuntime => ModelSource::Onnx(path),
            EngineKind::OpenVino => ModelSource::OpenVino(path),
            EngineKind::Replay => ModelSource::Replay(path),
        })
    }

    /// What version `n`'s folder holds now (names, sizes, modification times): a version that
    /// failed is retried only once this changes.
    pub fn fingerprint(&self, n: u64) -> String {
        let mut parts = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.folder(n)) {
            for e in entries.flatten() {
                let meta = e.metadata().ok();
                let mtime = meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                parts.push(format!(
                    "{}:{}:{mtime}",
                    e.file_name().to_string_lossy(),
                    meta.map_or(0, |m| m.len())
                ));
            }
        }
        parts.sort();
        parts.join(",")
    }
}

/// `"12"` → 12; anything else (leading zeros, signs, suffixes) is not a version folder.
fn version_number(name: &str) -> Option<u64> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    ok.then(|| name.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        d
    }

    #[test]
    fn numbered_folders_are_versions_and_the_highest_or_the_pinned_one_is_wanted() {
        let d = tree(&[
            ("1/model.pt", b"x"),
            ("3/model.onnx", b"x"),
            ("10/model.xml", b"x"),
            (".11.tmp/model.pt", b"x"),
            ("007/model.pt", b"x"),
            ("12", b"a file, not a folder"),
        ]);
        let mut v = VersionDir {
            dir: d.path().into(),
            pin: None,
            engine: None,
        };
        assert_eq!(v.list().unwrap(), vec![1, 3, 10]);
        assert_eq!(v.wanted().unwrap(), Some(10));
        v.pin = Some(3);
        assert_eq!(v.wanted().unwrap(), Some(3));
        v.pin = Some(4);
        assert_eq!(v.wanted().unwrap(), None);
        assert_eq!(
            v.source(1).unwrap(),
            ModelSource::TorchScript(d.path().join("1/model.pt"))
        );
        assert_eq!(
            v.source(3).unwrap(),
            ModelSource::Onnx(d.path().join("3/model.onnx"))
        );
        // An IR without its weights is half-written.
        assert!(v.source(10).unwrap_err().contains("model.bin"));
        v.engine = Some(EngineKind::OpenVino);
        assert_eq!(
            v.source(3).unwrap(),
            ModelSource::OpenVino(d.path().join("3/model.onnx"))
        );
        assert!(v.source(1).unwrap_err().contains("no model file"));
    }

    #[test]
    fn an_empty_file_is_refused_and_a_change_shows_in_the_fingerprint() {
        let d = tree(&[("2/model.pt", b"")]);
        let v = VersionDir {
            dir: d.path().into(),
            pin: None,
            engine: None,
        };
        assert!(v.source(2).unwrap_err().contains("empty"));
        let before = v.fingerprint(2);
        std::fs::write(d.path().join("2/model.pt"), b"weights").unwrap();
        assert_ne!(v.fingerprint(2), before);
        assert!(v.source(2).is_ok());
    }
}
