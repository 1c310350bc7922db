//! The spool: one Maildir-like tree per model, and every state change a `rename(2)` inside it.
//!
//! ```text
//! <spool>/<model>/tmp/         clients write here (or to dot-files / *.tmp / *.part)
//!                /incoming/    clients rename finished files in
//!                /processing/  claimed by the agent (rename, never overwriting)
//!                /out/         outputs appear atomically (temp file + rename)
//!                /failed/      bad inputs, each beside <name>.error.json
//!                /done/        inputs of finished jobs, when keep_inputs = true
//! ```
//! A job is claimed under a name that collides with nothing in processing/, out/, failed/ or
//! done/, so no output or failure record is ever overwritten. Restart recovery: a job left in
//! processing/ whose output exists was finished; one with an error record had failed; the rest
//! run again, at most [`MAX_ATTEMPTS`] times in all, so a job that kills the agent cannot keep
//! it in a crash loop.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use tch::Tensor;

use crate::tensorfile::{Format, JobError};

/// How many agent starts may find a job still claimed before it is failed as a likely crasher.
pub const MAX_ATTEMPTS: u32 = 3;

const OUTPUT_EXTS: [&str; 3] = ["npy", "npz", "safetensors"];

#[derive(Debug)]
pub struct Job {
    /// The file name under processing/ (unique, see module docs).
    pub name: String,
    pub path: PathBuf,
    /// When the agent claimed it; job latency is measured from here.
    pub claimed: Instant,
    /// Why it cannot run at all (not a regular file), found at claim time.
    pub refused: Option<JobError>,
}

impl Job {
    /// The name minus its format extension: what the output is called.
    pub fn stem(&self) -> &str {
        stem_of(&self.name)
    }
}

fn stem_of(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((s, e)) if OUTPUT_EXTS.contains(&e) && !s.is_empty() => s,
        _ => name,
    }
}

/// Names clients use for files still being written: never claimed.
pub fn is_in_progress_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

pub struct Spool {
    pub root: PathBuf,
    keep_inputs: bool,
}

fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE)
}

impl Spool {
    pub fn open(root: PathBuf, keep_inputs: bool) -> Result<Spool> {
        use std::os::unix::fs::PermissionsExt;
        for sub in ["tmp", "incoming", "processing", "out", "failed", "done"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).with_context(|| {
                format!("cannot create {}: check that the spool is writable by the agent (ReadWritePaths= in the unit)", d.display())
            })?;
            // Clients of any user may drop files in; the sticky bit stops them from removing each
            // other's, while the agent, owning the folder, may still claim them.
            if sub == "tmp" || sub == "incoming" {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o1777))
                    .with_context(|| format!("cannot make {} writable for clients", d.display()))?;
            }
        }
        Ok(Spool { root, keep_inputs })
    }

    pub fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// Names waiting in incoming/, oldest first (by mtime, then name).
    pub fn scan(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.dir("incoming")) else {
            return Vec::new();
        };
        let mut v: Vec<(SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if is_in_progress_name(&name) {
                    return None;
                }
                let mtime = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Some((mtime, name))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    fn output_exists(&self, stem: &str) -> Option<PathBuf> {
        OUTPUT_EXTS
            .iter()
            .map(|e| self.dir("out").join(format!("{stem}.{e}")))
            .find(|p| p.exists())
    }

    fn name_is_free(&self, name: &str) -> bool {
        !self.dir("failed").join(name).exists()
            && !self.dir("done").join(name).exists()
            && self.output_exists(stem_of(name)).is_none()
    }

    /// Claims incoming/`name`: Ok(None) when it vanished (another claimer, or the client).
    pub fn claim(&self, name: &str) -> Result<Option<Job>> {
        let from = self.dir("incoming").join(name);
        let meta = match fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("cannot stat an incoming file"),
        };
        let ft = meta.file_type();
        // Never opened: moved to failed/ so that the sender learns why.
        let refused = if ft.is_file() {
            None
        } else {
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a device or other special file"
            };
            Some(JobError::new(
                "not_regular",
                format!("'{name}' is {what}, not a regular file: write the tensor into a file in tmp/, then rename it into incoming/"),
            ))
        };
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
            _ => (name, String::new()),
        };
        for k in 0..10_000u32 {
            let cand = if k == 0 {
                name.to_string()
            } else {
                format!("{stem}~{k}{ext}")
            };
            if !self.name_is_free(&cand) {
                continue;
            }
            let to = self.dir("processing").join(&cand);
            match rename_noreplace(&from, &to) {
                Ok(()) => {
                    return Ok(Some(Job {
                        name: cand,
                        path: to,
                        claimed: Instant::now(),
                        refused,
                    }))
                }
                Err(Errno::EEXIST) => continue,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot claim {}", from.display()))
                }
            }
        }
        anyhow::bail!("no free name for '{name}' after 10000 tries: clean out/ and failed/")
    }

    fn attempts_path(&self, name: &str) -> PathBuf {
        self.dir("processing").join(format!(".{name}.attempts"))
    }

    /// Start-up recovery of processing/: see the module docs. Returns the jobs to run again.
    pub fn recover(&self) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let rd = fs::read_dir(self.dir("processing")).context("cannot list processing/")?;
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names.iter().filter(|n| !n.starts_with('.')) {
            let path = self.dir("processing").join(name);
            let job = Job {
                name: name.clone(),
                path: path.clone(),
                claimed: Instant::now(),
                refused: None,
            };
            if let Some(out) = self.output_exists(job.stem()) {
                log::info!(
                    "recovery: {} already has its output {}, finishing it",
                    name,
                    out.display()
                );
                self.finish_input(&job)?;
            } else if self
                .dir("failed")
                .join(format!("{name}.error.json"))
                .exists()
            {
                log::info!("recovery: {name} had failed, moving it to failed/");
                fs::rename(&path, self.dir("failed").join(name))?;
                let _ = fs::remove_file(self.attempts_path(name));
            } else {
                let ap = self.attempts_path(name);
                let attempts: u32 = fs::read_to_string(&ap)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
                    + 1;
                if attempts >= MAX_ATTEMPTS {
                    log::warn!(
                        "recovery: {name} was in flight at {attempts} agent stops, failing it"
                    );
                    let err = JobError::new(
                        "crashed_agent",
                        format!("the agent stopped {attempts} times while this job was claimed; it may crash the model: check it, then submit again"),
                    );
                    self.fail(&job, &err)?;
                } else {
                    fs::write(&ap, attempts.to_string())?;
                    log::info!("recovery: {name} runs again (attempt {})", attempts + 1);
                    jobs.push(job);
                }
            }
        }
        // Our own half-written outputs from a killed run.
        if let Ok(rd) = fs::read_dir(self.dir("out")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(".packrat-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(jobs)
    }

    fn finish_input(&self, job: &Job) -> Result<()> {
        if self.keep_inputs {
            rename_noreplace(&job.path, &self.dir("done").join(&job.name))
                .context("cannot move the input to done/")?;
        } else {
            fs::remove_file(&job.path).context("cannot remove the finished input")?;
        }
        let _ = fs::remove_file(self.attempts_path(&job.name));
        Ok(())
    }

    /// Writes the job's output atomically, then retires its input. Returns the output path.
    pub fn complete(
        &self,
        job: &Job,
        input_format: Format,
        outputs: &[(String, Tensor)],
    ) -> Result<PathBuf> {
        let fmt = input_format.for_outputs(outputs.len());
        let out_dir = self.dir("out");
        let tmp = tempfile::Builder::new()
            .prefix(".packrat-")
            .suffix(".tmp")
            .tempfile_in(&out_dir)?;
        let mut w = BufWriter::new(tmp);
        crate::tensorfile::write(&mut w, fmt, outputs)?;
        let tmp = w.into_inner().map_err(|e| e.into_error())?;
        let mut target = out_dir.join(format!("{}.{}", job.stem(), fmt.ext()));
        let mut tmp = tmp;
        for k in 1.. {
            match tmp.persist_noclobber(&target) {
                Ok(_) => break,
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && k < 1000 => {
                    // Only if a client wrote into out/ by hand: never overwrite it.
                    tmp = e.file;
                    target = out_dir.join(format!("{}~out{k}.{}", job.stem(), fmt.ext()));
                }
                Err(e) => return Err(e.error).context("cannot publish the output"),
            }
        }
        self.finish_input(job)?;
        Ok(target)
    }

    /// Records why the job failed, then moves its input to failed/.
    pub fn fail(&self, job: &Job, err: &JobError) -> Result<()> {
        let failed = self.dir("failed");
        let record = serde_json::json!({
            "job": job.name,
            "error": err.kind,
            "reason": err.message,
            "time": crate::status::rfc3339(SystemTime::now()),
            "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        });
        let mut tmp = tempfile::Builder::new()
            .prefix(".packrat-")
            .tempfile_in(&failed)?;
        serde_json::to_writer_pretty(&mut tmp, &record)?;
        tmp.write_all(b"\n")?;
        tmp.persist(failed.join(format!("{}.error.json", job.name)))
            .map_err(|e| e.error)?;
        fs::rename(&job.path, failed.join(&job.name))
            .context("cannot move the input to failed/")?;
        let _ = fs::remove_file(self.attempts_path(&job.name));
        Ok(())
    }

    /// Removes client temp files in tmp/ older than `max_age` (abandoned uploads).
    pub fn clean_tmp(&self, max_age: Duration) {
        let Ok(rd) = fs::read_dir(self.dir("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if old && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
                log::info!("removing stale temp file {}", e.path().display());
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
