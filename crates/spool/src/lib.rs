//! The spool: one Maildir-like tree per model, and every state change a `rename(2)` inside it.
//! Knows files and names only — never tensors — so it builds and tests without libtorch.
//!
//! ```text
//! <spool>/<model>/tmp/         clients write here (or to dot-files / *.tmp / *.part)
//!                /incoming/    clients rename finished files in
//!                /processing/  claimed by the agent (rename, never overwriting)
//!                /out/         outputs appear atomically (temp file + rename)
//!                /failed/      bad inputs, each beside <name>.error.json
//!                /done/        inputs of finished jobs, when keep_inputs = true
//! ```
//! A job is claimed under a name that collides with nothing in out/, failed/ or done/, so no
//! output or failure record is ever overwritten. Restart recovery: a job left in processing/
//! whose output exists was finished; one with an error record had failed; the rest run again,
//! at most [`MAX_ATTEMPTS`] times in all, so a job that kills the agent cannot keep it in a
//! crash loop.
//!
//! - [`error`]: why a job failed ([`JobError`], [`ErrorKind`]);
//! - [`naming`]: job names, output names, free-name probing;
//! - [`client`]: submitting a job and waiting for its outcome (`packrat submit`, the demo, tests);
//! - [`time`]: RFC 3339 times for records.

pub mod client;
pub mod error;
pub mod naming;
pub mod time;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};

pub use error::{ErrorKind, JobError};
use naming::{candidates, in_use, is_in_progress_name, stem_of};

/// How many agent starts may find a job still claimed before it is failed as a likely crasher.
pub const MAX_ATTEMPTS: u32 = 3;

/// The folders of a model's spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Tmp,
    Incoming,
    Processing,
    Out,
    Failed,
    Done,
}

impl Folder {
    pub const ALL: [Folder; 6] = [
        Folder::Tmp,
        Folder::Incoming,
        Folder::Processing,
        Folder::Out,
        Folder::Failed,
        Folder::Done,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Folder::Tmp => "tmp",
            Folder::Incoming => "incoming",
            Folder::Processing => "processing",
            Folder::Out => "out",
            Folder::Failed => "failed",
            Folder::Done => "done",
        }
    }

    /// This folder of the model spool at `model_dir`.
    pub fn of(self, model_dir: &Path) -> PathBuf {
        model_dir.join(self.name())
    }
}

/// A claimed job.
#[derive(Debug)]
pub struct Job {
    /// The file name under processing/ (unique, see module docs).
    pub name: String,
    pub path: PathBuf,
    /// When the agent claimed it; job latency is measured from here.
    pub claimed: Instant,
}

impl Job {
    /// The name minus its format extension: what the output is called.
    pub fn stem(&self) -> &str {
        stem_of(&self.name)
    }
}

/// What claiming a name in incoming/ came to.
#[derive(Debug)]
pub enum Claim {
    /// Claimed: it is ours to run.
    Job(Job),
    /// Not a regular file: never opened, moved to failed/ with this reason.
    Refused(String, JobError),
    /// It vanished (another claimer, or the client took it back).
    Gone,
}

fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE)
}

/// One model's spool tree.
pub struct Spool {
    pub root: PathBuf,
    keep_inputs: bool,
}

impl Spool {
    /// Creates the tree as needed; tmp/ and incoming/ are open to every user (sticky).
    pub fn open(root: PathBuf, keep_inputs: bool) -> Result<Spool> {
        for f in Folder::ALL {
            let d = f.of(&root);
            fs::create_dir_all(&d).with_context(|| {
                format!("cannot create {}: check that the spool is writable by the agent (ReadWritePaths= in the unit)", d.display())
            })?;
            // Clients of any user may drop files in; the sticky bit stops them from removing each
            // other's, while the agent, owning the folder, may still claim them.
            if matches!(f, Folder::Tmp | Folder::Incoming) {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o1777))
                    .with_context(|| format!("cannot make {} writable for clients", d.display()))?;
            }
        }
        Ok(Spool { root, keep_inputs })
    }

    pub fn dir(&self, folder: Folder) -> PathBuf {
        folder.of(&self.root)
    }

    /// Names waiting in incoming/, oldest first (by mtime, then name).
    pub fn scan(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.dir(Folder::Incoming)) else {
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

    /// Claims incoming/`name`. Anything but a regular file is never opened: it is failed here,
    /// so that the sender learns why.
    pub fn claim(&self, name: &str) -> Result<Claim> {
        let from = self.dir(Folder::Incoming).join(name);
        let meta = match fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Claim::Gone),
            Err(e) => return Err(e).context("cannot stat an incoming file"),
        };
        let refusal = not_regular(name, meta.file_type());
        for cand in candidates(name) {
            if in_use(&self.root, &cand, &[Folder::Failed, Folder::Done]) {
                continue;
            }
            let to = self.dir(Folder::Processing).join(&cand);
            match rename_noreplace(&from, &to) {
                Ok(()) => {}
                Err(Errno::EEXIST) => continue,
                Err(Errno::ENOENT) => return Ok(Claim::Gone),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot claim {}", from.display()))
                }
            }
            let job = Job {
                name: cand,
                path: to,
                claimed: Instant::now(),
            };
            return Ok(match refusal {
                None => Claim::Job(job),
                Some(err) => {
                    self.fail(&job, &err)?;
                    Claim::Refused(job.name, err)
                }
            });
        }
        anyhow::bail!("no free name for '{name}' after 10000 tries: clean out/ and failed/")
    }

    fn attempts_path(&self, name: &str) -> PathBuf {
        self.dir(Folder::Processing)
            .join(format!(".{name}.attempts"))
    }

    fn output_of(&self, job: &Job) -> Option<PathBuf> {
        naming::output_paths(&self.root, &job.name)
            .into_iter()
            .find(|p| p.exists())
    }

    /// Start-up recovery of processing/: see the module docs. Returns the jobs to run again.
    pub fn recover(&self) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let rd = fs::read_dir(self.dir(Folder::Processing)).context("cannot list processing/")?;
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names.iter().filter(|n| !n.starts_with('.')) {
            let job = Job {
                name: name.clone(),
                path: self.dir(Folder::Processing).join(name),
                claimed: Instant::now(),
            };
            if let Some(out) = self.output_of(&job) {
                log::info!(
                    "recovery: {name} already has its output {}, finishing it",
                    out.display()
                );
                self.retire_input(&job)?;
            } else if naming::error_record_path(&self.root, name).exists() {
                log::info!("recovery: {name} had failed, moving it to failed/");
                fs::rename(&job.path, self.dir(Folder::Failed).join(name))?;
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
                        ErrorKind::CrashedAgent,
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
        if let Ok(rd) = fs::read_dir(self.dir(Folder::Out)) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(jobs)
    }

    fn retire_input(&self, job: &Job) -> Result<()> {
        if self.keep_inputs {
            rename_noreplace(&job.path, &self.dir(Folder::Done).join(&job.name))
                .context("cannot move the input to done/")?;
        } else {
            fs::remove_file(&job.path).context("cannot remove the finished input")?;
        }
        let _ = fs::remove_file(self.attempts_path(&job.name));
        Ok(())
    }

    /// Publishes the job's output atomically as `out/<stem>.<ext>` — `write` fills a temp file,
    /// which is then renamed into place — and retires the input. Returns the output path.
    pub fn publish<F>(&self, job: &Job, ext: &str, write: F) -> Result<PathBuf>
    where
        F: FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
    {
        let out_dir = self.dir(Folder::Out);
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(&out_dir)?;
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            write(&mut w)?;
            w.flush()?;
        }
        let mut target = out_dir.join(format!("{}.{ext}", job.stem()));
        for k in 1.. {
            match tmp.persist_noclobber(&target) {
                Ok(_) => break,
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && k < 1000 => {
                    // Only if a client wrote into out/ by hand: never overwrite it.
                    tmp = e.file;
                    target = out_dir.join(format!("{}~out{k}.{ext}", job.stem()));
                }
                Err(e) => return Err(e.error).context("cannot publish the output"),
            }
        }
        self.retire_input(job)?;
        Ok(target)
    }

    /// Records why the job failed, then moves its input to failed/.
    pub fn fail(&self, job: &Job, err: &JobError) -> Result<()> {
        let failed = self.dir(Folder::Failed);
        let now = SystemTime::now();
        let record = serde_json::json!({
            "job": job.name,
            "error": err.kind,
            "reason": err.message,
            "time": time::rfc3339(now),
            "unix_time": time::unix_seconds(now),
        });
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&failed)?;
        serde_json::to_writer_pretty(&mut tmp, &record)?;
        tmp.write_all(b"\n")?;
        tmp.persist(naming::error_record_path(&self.root, &job.name))
            .map_err(|e| e.error)?;
        fs::rename(&job.path, failed.join(&job.name))
            .context("cannot move the input to failed/")?;
        let _ = fs::remove_file(self.attempts_path(&job.name));
        Ok(())
    }

    /// Removes client temp files in tmp/ older than `max_age` (abandoned uploads).
    pub fn clean_tmp(&self, max_age: Duration) {
        let Ok(rd) = fs::read_dir(self.dir(Folder::Tmp)) else {
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

/// The agent's own temp files (outputs and records being written) start with this.
const TEMP_PREFIX: &str = ".packrat-";

/// The refusal for anything in incoming/ that is not a regular file.
fn not_regular(name: &str, ft: fs::FileType) -> Option<JobError> {
    let what = if ft.is_file() {
        return None;
    } else if ft.is_symlink() {
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
        ErrorKind::NotRegular,
        format!("'{name}' is {what}, not a regular file: write the tensor into a file in tmp/, then rename it into incoming/"),
    ))
}

#[cfg(test)]
mod tests;
