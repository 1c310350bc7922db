//! The client side of the protocol: copy a job file in under a free name (write to tmp/, rename
//! into incoming/), and wait for its output or failure record. `packrat submit`, the demo and
//! the tests all submit through here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

use crate::naming::{self, candidates, in_use, JOB_EXTENSIONS};
use crate::{rename_noreplace, Folder};

/// Copies `file` into the model spool at `model_dir` under a name nothing else uses; returns
/// that name.
pub fn submit(model_dir: &Path, file: &Path) -> Result<String> {
    let ext_ok = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| JOB_EXTENSIONS.contains(&e));
    if !ext_ok {
        bail!(
            "{}: job files must end in .npy, .npz or .safetensors",
            file.display()
        );
    }
    let base = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file name is not valid UTF-8")?;
    let queued = [
        Folder::Incoming,
        Folder::Processing,
        Folder::Failed,
        Folder::Done,
    ];
    for name in candidates(base) {
        if in_use(model_dir, &name, &queued) {
            continue;
        }
        let tmp = Folder::Tmp.of(model_dir).join(format!(".{name}.part"));
        std::fs::copy(file, &tmp)
            .with_context(|| format!("cannot copy {} into {}", file.display(), tmp.display()))?;
        let dest = Folder::Incoming.of(model_dir).join(&name);
        let res = rename_noreplace(&tmp, &dest);
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        match res {
            Ok(()) => return Ok(name),
            Err(Errno::EEXIST) => continue,
            Err(e) => bail!("cannot rename into {}: {e}", dest.display()),
        }
    }
    bail!("no free job name for {}", file.display())
}

/// How a submitted job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its output file.
    Output(PathBuf),
    /// The reason in its failure record.
    Failed(String),
}

/// Waits for job `name`'s outcome; an error when `timeout` passes first.
pub fn wait(model_dir: &Path, name: &str, timeout: Duration) -> Result<Outcome> {
    let outs = naming::output_paths(model_dir, name);
    let failed = naming::error_record_path(model_dir, name);
    let t0 = Instant::now();
    loop {
        if let Some(p) = outs.iter().find(|p| p.exists()) {
            return Ok(Outcome::Output(p.clone()));
        }
        if failed.exists() {
            let text = std::fs::read_to_string(&failed).unwrap_or_default();
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .unwrap_or(text);
            return Ok(Outcome::Failed(reason));
        }
        if t0.elapsed() > timeout {
            bail!(
                "{name}: no output after {:.0} s: is the agent running (systemctl status packrat)?",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
