//! The client side of the protocol: copy a job file in under a free name (write to tmp/, rename
//! into incoming/), and wait for its output or failure record. `packrat submit`, the demo and
//! the tests all submit through here.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::naming::{self, candidates, in_use, JOB_EXTENSIONS};
use crate::Folder;

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
    if let Some(why) = naming::unservable(std::ffi::OsStr::new(base)) {
        bail!("{why}");
    }
    let queued = [
        Folder::Incoming,
        Folder::Claims,
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
        // link(2), not rename(2): it never replaces a job another client just dropped.
        let dest = Folder::Incoming.of(model_dir).join(&name);
        let res = std::fs::hard_link(&tmp, &dest);
        let _ = std::fs::remove_file(&tmp);
        match res {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => bail!("cannot link into {}: {e}", dest.display()),
        }
    }
    bail!("no free job name for {}", file.display())
}

/// No outcome within the timeout (`packrat submit --wait` exits 75, EX_TEMPFAIL).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(String);

/// How a submitted job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its output file.
    Output(PathBuf),
    /// The reason in its failure record.
    Failed(String),
}

/// What to tell a client who may not read the spool's results.
fn unreadable(path: &Path, e: &io::Error) -> anyhow::Error {
    let group = std::fs::metadata(path.parent().unwrap_or(path))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .map(|gid| {
            let name = nix::unistd::Group::from_gid(gid.into())
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_else(|| gid.to_string());
            format!("group '{name}'")
        })
        .unwrap_or_else(|| "the spool's group".into());
    anyhow::anyhow!(
        "cannot read {}: {e}. Results are readable by {group}: ask to join it (then log in again), or have the agent's output_mode include other users (e.g. \"0644\")",
        path.display()
    )
}

/// Whether `path` exists; an error when the caller may not even look.
fn present(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(unreadable(path, &e)),
    }
}

/// Waits for job `name`'s outcome; an error when `timeout` passes first, or when the outcome
/// exists but this user cannot read it.
pub fn wait(model_dir: &Path, name: &str, timeout: Duration) -> Result<Outcome> {
    let outs = naming::output_paths(model_dir, name);
    let failed = naming::error_record_path(model_dir, name);
    let t0 = Instant::now();
    loop {
        for p in &outs {
            if present(p)? {
                std::fs::File::open(p).map_err(|e| unreadable(p, &e))?;
                return Ok(Outcome::Output(p.clone()));
            }
        }
        if present(&failed)? {
            let text = std::fs::read_to_string(&failed).map_err(|e| unreadable(&failed, &e))?;
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .unwrap_or(text);
            return Ok(Outcome::Failed(reason));
        }
        if t0.elapsed() > timeout {
            return Err(TimedOut(format!(
                "{name}: no output after {:.0} s: is the agent running (systemctl status packrat)?",
                timeout.as_secs_f64()
            ))
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
