//! The spool: one Maildir-like tree per model, every state change a `rename(2)` or `link(2)`
//! inside it. Knows files and names only — never tensors — so it builds without libtorch.
//!
//! ```text
//! <spool>/<model>/tmp/            clients write here (or to dot-files / *.tmp / *.part)
//!                /incoming/       clients rename finished files in; the backlog waits here
//!                /claims/<agent>/ jobs one running agent claimed, beside its flock'd .lock
//!                /out/            outputs appear atomically (temp file, then link)
//!                /failed/         bad inputs, each beside <name>.error.json
//!                /done/           inputs of finished jobs, when keep_inputs = true
//! ```
//!
//! **Exactly once.** An agent claims lazily — only the jobs it is about to run — by renaming
//! them from `incoming/` into its own claim folder, under a name no other job uses (see
//! [`naming`]). A job's outcome (its output, or its failure record) is created with `link(2)`,
//! which never replaces a name, so whichever agent finishes first decides the outcome and any
//! later run of the same job only retires its input. **Ownership** ([`ownership`]): an agent's
//! claim folder is guarded by a lock the kernel drops when the agent dies; another agent that
//! can take the lock takes over the folder's jobs, each by one rename, so exactly one agent
//! wins each job. **Crash loops:** a job counts a run when it starts running (a `.runs`
//! sidecar), not when it is claimed, and the count is dropped once its forward pass returns; one
//! that was running at [`MAX_ATTEMPTS`] crashes is failed as `crashed_agent`.
//!
//! - [`access`]: folder and file modes, and refusing symlinked folders;
//! - [`client`]: submitting a job and waiting for its outcome (`packrat submit`, demo, tests);
//! - [`error`]: why a job failed ([`JobError`], [`ErrorKind`]);
//! - [`naming`]: job and outcome names, unservable names, free-name probing;
//! - [`ownership`]: claim folders, their locks, liveness;
//! - [`time`]: RFC 3339 times for records.

pub mod access;
pub mod client;
pub mod error;
pub mod naming;
pub mod ownership;
pub mod time;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

pub use error::{ErrorKind, JobError};
use naming::{candidates, in_use, is_in_progress_name, output_name, unservable};
use ownership::{claim_dirs, liveness, Liveness, Owner};

/// How many crashes a job may be running at before it is failed as a likely crasher.
pub const MAX_ATTEMPTS: u32 = 3;

/// The folders of a model's spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Tmp,
    Incoming,
    Claims,
    Out,
    Failed,
    Done,
}

impl Folder {
    pub const ALL: [Folder; 6] = [
        Folder::Tmp,
        Folder::Incoming,
        Folder::Claims,
        Folder::Out,
        Folder::Failed,
        Folder::Done,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Folder::Tmp => "tmp",
            Folder::Incoming => "incoming",
            Folder::Claims => "claims",
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

/// A job this agent claimed.
#[derive(Debug)]
pub struct Job {
    /// Its name in the claim folder: unique among all jobs with an outcome or in flight.
    pub name: String,
    pub path: PathBuf,
    /// When it was claimed; job latency is measured from here.
    pub claimed: Instant,
    /// When the client finished writing it (its mtime, which claiming keeps): a deadline
    /// counts from here.
    pub arrived: SystemTime,
    /// How many times it started running before (under any agent).
    pub runs: u32,
}

/// A name seen in incoming/, not claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub name: OsString,
    /// Its mtime: when the client finished writing it.
    pub arrived: SystemTime,
}

/// What claiming a name in incoming/ came to.
#[derive(Debug)]
pub enum Claim {
    /// Claimed: it is ours to run.
    Job(Job),
    /// Claimed, but it cannot be served (not a regular file, or an unservable name): fail it
    /// with this error.
    Refused(Job, JobError),
    /// It vanished (another agent claimed it, or the client took it back).
    Gone,
}

/// A write the job is not to blame for failed (disk full, quota, I/O error, permissions). The
/// job stays claimed; retry later.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StorageError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl StorageError {
    fn new(what: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
        let what = what.into();
        move |source| StorageError { what, source }
    }

    /// Out of space or quota: it goes away by itself once space is freed.
    pub fn is_full(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(e) if e == nix::libc::ENOSPC || e == nix::libc::EDQUOT)
    }
}

/// How publishing an output ended.
#[derive(Debug)]
pub enum Published {
    /// The output is at this path.
    Output(PathBuf),
    /// Another run of the same job (a taken-over job) published first; ours was dropped.
    Duplicate(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The outputs cannot be encoded: the job's fault.
    #[error("{0:#}")]
    Encode(anyhow::Error),
}

/// How a model spool serves files.
#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    /// Move finished inputs to done/ instead of deleting them.
    pub keep_inputs: bool,
    /// Mode of outputs and failure records (see [`access`]).
    pub output_mode: u32,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            keep_inputs: false,
            output_mode: access::DEFAULT_OUTPUT_MODE,
        }
    }
}

/// One model's spool tree, as one agent serves it.
pub struct Spool {
    pub root: PathBuf,
    opts: SpoolOptions,
    owner: Owner,
}

impl Spool {
    /// Creates the tree as needed (refusing symlinked folders), and joins it as an agent with
    /// its own locked claim folder.
    pub fn open(root: PathBuf, opts: SpoolOptions) -> Result<Spool> {
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent).with_context(|| {
                format!("cannot create the spool {}: check that it is writable by the agent (ReadWritePaths= in the unit)", parent.display())
            })?;
        }
        let fresh = !root.exists();
        if fresh {
            access::ensure_dir(&root, 0o2755)?;
        } else {
            access::ensure_dir(&root, mode_of(&root)?)?;
        }
        let result_mode = access::result_dir_mode(opts.output_mode);
        for f in Folder::ALL {
            // Clients of any user may drop files in; the sticky bit stops them from removing
            // each other's, while the agent, owning the folder, may still claim them.
            let mode = match f {
                Folder::Tmp | Folder::Incoming => 0o1777,
                Folder::Claims => 0o2750,
                Folder::Out | Folder::Failed | Folder::Done => result_mode,
            };
            access::ensure_dir(&f.of(&root), mode)?;
        }
        let owner = Owner::join(&Folder::Claims.of(&root), 0o2750)?;
        Ok(Spool { root, opts, owner })
    }

    /// This agent's identity in the spool.
    pub fn agent_id(&self) -> &str {
        &self.owner.id
    }

    pub fn dir(&self, folder: Folder) -> PathBuf {
        folder.of(&self.root)
    }

    /// Names waiting in incoming/, oldest first (by mtime, then name), with their mtimes.
    pub fn scan(&self) -> Vec<Waiting> {
        let Ok(rd) = fs::read_dir(self.dir(Folder::Incoming)) else {
            return Vec::new();
        };
        let mut v: Vec<(SystemTime, OsString)> = rd
            .flatten()
            .filter(|e| !is_in_progress_name(&e.file_name()))
            .map(|e| {
                let mtime = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (mtime, e.file_name())
            })
            .collect();
        v.sort();
        v.into_iter()
            .map(|(arrived, name)| Waiting { name, arrived })
            .collect()
    }

    /// Claims incoming/`name` into this agent's claim folder. Anything that cannot be served as
    /// it is — not a regular file, a name not UTF-8 or too long — is claimed under a safe name
    /// and returned as [`Claim::Refused`], never opened.
    pub fn claim(&self, name: &OsStr) -> Result<Claim> {
        let from = self.dir(Folder::Incoming).join(name);
        let meta = match fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Gone),
            Err(e) => return Err(e).context("cannot stat an incoming file"),
        };
        let bad_name = unservable(name);
        let base = match (name.to_str(), &bad_name) {
            (Some(s), None) => s.to_string(),
            _ => naming::safe_name(name),
        };
        let refusal = match bad_name {
            Some(why) => Some(JobError::new(ErrorKind::BadName, why)),
            None => not_regular(&base, meta.file_type()),
        };
        for cand in candidates(&base) {
            if in_use(
                &self.root,
                &cand,
                &[Folder::Claims, Folder::Failed, Folder::Done],
            ) {
                continue;
            }
            let to = self.owner.dir.join(&cand);
            if let Err(e) = fs::rename(&from, &to) {
                // On NFS a lost reply can report a rename that happened as failed: look.
                if fs::symlink_metadata(&to).is_err() {
                    if e.kind() == io::ErrorKind::NotFound {
                        return Ok(Claim::Gone);
                    }
                    return Err(e).with_context(|| format!("cannot claim {}", from.display()));
                }
            }
            let job = Job {
                name: cand,
                path: to,
                claimed: Instant::now(),
                arrived: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                runs: 0,
            };
            return Ok(match refusal {
                None => Claim::Job(job),
                Some(err) => Claim::Refused(job, err),
            });
        }
        anyhow::bail!(
            "no free name for {} after 10000 tries: clean out/ and failed/",
            naming::quoted(name)
        )
    }

    fn runs_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!(".{name}.runs"))
    }

    /// Counts a run of `job`, before it starts: if the agent dies while it runs, whoever takes
    /// it over knows.
    pub fn started(&self, job: &mut Job) -> Result<(), StorageError> {
        job.runs += 1;
        fs::write(
            Self::runs_path(&self.owner.dir, &job.name),
            job.runs.to_string(),
        )
        .map_err(StorageError::new("cannot count the job's run"))
    }

    /// Forgets `job`'s runs: it ran without crashing (its forward pass returned), so a crash
    /// while its outcome is written, or a retry after a storage error, is not its fault.
    pub fn forget_runs(&self, job: &mut Job) {
        job.runs = 0;
        let _ = fs::remove_file(Self::runs_path(&self.owner.dir, &job.name));
    }

    fn output_exists(&self, name: &str) -> Option<PathBuf> {
        naming::output_paths(&self.root, name)
            .into_iter()
            .find(|p| fs::symlink_metadata(p).is_ok())
    }

    /// A temp file of this agent in `folder` (named so a takeover can clean it up).
    fn temp_in(&self, folder: Folder) -> Result<tempfile::NamedTempFile, StorageError> {
        tempfile::Builder::new()
            .prefix(&format!("{}{}-", TEMP_PREFIX, self.owner.id))
            .suffix(".tmp")
            .tempfile_in(self.dir(folder))
            .map_err(StorageError::new(format!(
                "cannot create a file in {}",
                self.dir(folder).display()
            )))
    }

    /// Publishes the job's output as `out/<name>` (see [`naming::output_name`]): `write` fills
    /// a temp file, which is then linked into place — never over an existing output. `tags`
    /// become the output's extended attributes (`user.packrat.version`), set before the link
    /// so a client never sees an output without them; where the filesystem has no user
    /// attributes the output is published without.
    pub fn publish<F>(
        &self,
        job: &Job,
        ext: &str,
        tags: &[(&str, &str)],
        write: F,
    ) -> Result<Published, PublishError>
    where
        F: FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
    {
        let target = self.dir(Folder::Out).join(output_name(&job.name, ext));
        if let Some(done) = self.output_exists(&job.name) {
            self.retire(job)?;
            return Ok(Published::Duplicate(done));
        }
        let mut tmp = self.temp_in(Folder::Out)?;
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            if let Err(e) = write(&mut w) {
                return Err(
                    match e.chain().find_map(|c| c.downcast_ref::<io::Error>()) {
                        Some(io) => PublishError::Storage(StorageError {
                            what: "cannot write the output".into(),
                            source: io::Error::new(io.kind(), io.to_string()),
                        }),
                        None => PublishError::Encode(e),
                    },
                );
            }
            w.flush()
                .map_err(StorageError::new("cannot write the output"))?;
        }
        access::set_file_mode(tmp.as_file(), self.opts.output_mode)
            .map_err(StorageError::new("cannot set the output's mode"))?;
        for (name, value) in tags {
            if let Err(e) = access::set_xattr(tmp.as_file(), name, value.as_bytes()) {
                access::xattr_unsupported(&self.root, name, &e);
            }
        }
        match link_once(tmp.path(), &target) {
            Ok(true) => {}
            Ok(false) => {
                self.retire(job)?;
                return Ok(Published::Duplicate(target));
            }
            Err(e) => return Err(StorageError::new("cannot publish the output")(e).into()),
        }
        drop(tmp);
        if let Err(e) = self.retire(job) {
            // The outcome stands; the input stays claimed until a takeover retires it.
            log::warn!("{} published, but its input stays claimed: {e}", job.name);
        }
        Ok(Published::Output(target))
    }

    /// Removes (or keeps in done/) a finished job's input.
    fn retire(&self, job: &Job) -> Result<(), StorageError> {
        let res = if self.opts.keep_inputs {
            fs::rename(&job.path, self.dir(Folder::Done).join(&job.name))
        } else {
            fs::remove_file(&job.path).or_else(|e| match e.raw_os_error() {
                // A directory refused as not_regular cannot be an output's input; but be safe.
                Some(nix::libc::EISDIR) => fs::remove_dir_all(&job.path),
                _ => Err(e),
            })
        };
        let _ = fs::remove_file(Self::runs_path(&self.owner.dir, &job.name));
        match res {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StorageError::new("cannot retire the finished input")(e))
            }
            _ => Ok(()),
        }
    }

    /// Records why the job failed (never over an existing record), then moves its input to
    /// failed/. A job that already has an output is only retired.
    pub fn fail(&self, job: &Job, err: &JobError) -> Result<(), StorageError> {
        if self.output_exists(&job.name).is_some() {
            return self.retire(job);
        }
        let now = SystemTime::now();
        let record = serde_json::json!({
            "job": job.name,
            "error": err.kind,
            "reason": err.message,
            "time": time::rfc3339(now),
            "unix_time": time::unix_seconds(now),
            "agent": self.owner.id,
        });
        let mut tmp = self.temp_in(Folder::Failed)?;
        let text = serde_json::to_string_pretty(&record).unwrap_or_default() + "\n";
        tmp.write_all(text.as_bytes())
            .and_then(|()| access::set_file_mode(tmp.as_file(), self.opts.output_mode))
            .map_err(StorageError::new("cannot write the failure record"))?;
        let record_path = naming::error_record_path(&self.root, &job.name);
        link_once(tmp.path(), &record_path)
            .map_err(StorageError::new("cannot publish the failure record"))?;
        drop(tmp);
        match fs::rename(&job.path, self.dir(Folder::Failed).join(&job.name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StorageError::new("cannot move the input to failed/")(e))
            }
            _ => {}
        }
        let _ = fs::remove_file(Self::runs_path(&self.owner.dir, &job.name));
        Ok(())
    }

    /// Gives a claimed job back to incoming/ (on a clean stop): any agent may run it.
    pub fn release(&self, job: &Job) {
        let incoming = self.dir(Folder::Incoming);
        for cand in candidates(&job.name) {
            if in_use(&self.root, &cand, &[Folder::Incoming]) {
                continue;
            }
            match link_once(&job.path, &incoming.join(&cand)) {
                Ok(true) => {
                    let _ = fs::remove_file(&job.path);
                    let _ = fs::remove_file(Self::runs_path(&self.owner.dir, &job.name));
                    return;
                }
                Ok(false) => continue,
                Err(e) => {
                    log::warn!("cannot give {} back to incoming/ ({e}); it stays claimed and is taken over by the next agent", job.name);
                    return;
                }
            }
        }
    }

    /// Takes over the jobs of agents that are gone: a job that has its outcome is retired, one
    /// that was running at [`MAX_ATTEMPTS`] crashes is failed, the rest are returned to run
    /// (oldest first).
    pub fn take_over(&self) -> Vec<Job> {
        self.sweep_unborn();
        let mut jobs = Vec::new();
        for dir in claim_dirs(&self.root) {
            if dir == self.owner.dir {
                continue;
            }
            let Liveness::Gone(lock) = liveness(&dir) else {
                continue;
            };
            let dead = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut names: Vec<String> = fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|n| !n.starts_with('.'))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let n = names.len();
            for name in names {
                if let Some(job) = self.adopt(&dir, &name) {
                    jobs.push(job);
                }
            }
            self.bury(&dir, &dead);
            drop(lock);
            if n > 0 {
                log::info!("took over {n} claimed job(s) of agent {dead}, which is gone");
            }
        }
        jobs
    }

    /// Removes claim folders of agents killed while creating them (they never held a job).
    fn sweep_unborn(&self) {
        let Ok(rd) = fs::read_dir(self.dir(Folder::Claims)) else {
            return;
        };
        for e in rd.flatten() {
            // Old ones only: a young one may be an agent between its mkdir and its lock.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if e.file_name().as_encoded_bytes().starts_with(b".new-")
                && old
                && matches!(liveness(&e.path()), Liveness::Gone(_))
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Moves one job of a dead agent's folder into ours and settles what to do with it.
    fn adopt(&self, dir: &Path, name: &str) -> Option<Job> {
        let runs: u32 = fs::read_to_string(Self::runs_path(dir, name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let to = self.owner.dir.join(name);
        if let Err(e) = fs::rename(dir.join(name), &to) {
            if fs::symlink_metadata(&to).is_err() {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot take over {name}: {e}");
                }
                return None;
            }
        }
        let arrived = fs::symlink_metadata(&to)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let job = Job {
            name: name.to_string(),
            path: to,
            claimed: Instant::now(),
            arrived,
            runs,
        };
        let settled = if let Some(out) = self.output_exists(name) {
            log::info!(
                "{name} already has its output {}: finishing it",
                out.display()
            );
            self.retire(&job)
        } else if naming::error_record_path(&self.root, name).exists() {
            log::info!("{name} already has its failure record: moving it to failed/");
            fs::rename(&job.path, self.dir(Folder::Failed).join(name))
                .map_err(StorageError::new("cannot move the input to failed/"))
        } else if runs >= MAX_ATTEMPTS {
            log::warn!("{name} was running at {runs} agent crashes: failing it");
            let err = JobError::new(
                ErrorKind::CrashedAgent,
                format!("the agent died {runs} times while running this job; it may crash the model: check it, then submit again"),
            );
            self.fail(&job, &err)
        } else {
            if runs > 0 {
                let _ = fs::write(Self::runs_path(&self.owner.dir, name), runs.to_string());
            }
            return Some(job);
        };
        if let Err(e) = settled {
            log::warn!("{name}: {e}; it stays claimed");
        }
        None
    }

    /// Removes a dead agent's emptied claim folder and its temp files.
    fn bury(&self, dir: &Path, dead: &str) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().as_encoded_bytes().starts_with(b".") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
        let prefix = format!("{TEMP_PREFIX}{dead}-");
        for f in [Folder::Out, Folder::Failed] {
            if let Ok(rd) = fs::read_dir(self.dir(f)) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// Leaves the spool on a clean stop: removes this agent's claim folder if nothing is
    /// claimed in it (else the next agent takes it over).
    pub fn leave(&self) {
        let empty = fs::read_dir(&self.owner.dir).is_ok_and(|rd| {
            rd.flatten()
                .all(|e| e.file_name().as_encoded_bytes().starts_with(b"."))
        });
        if empty {
            self.bury(&self.owner.dir, &self.owner.id);
        }
    }

    /// Removes client temp files older than `max_age`: abandoned uploads in tmp/, and
    /// in-progress names (dot-files, `*.tmp`, `*.part`) left in incoming/.
    pub fn clean_tmp(&self, max_age: Duration) {
        let old = |e: &fs::DirEntry| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age)
        };
        for (folder, only_in_progress) in [(Folder::Tmp, false), (Folder::Incoming, true)] {
            let Ok(rd) = fs::read_dir(self.dir(folder)) else {
                continue;
            };
            for e in rd.flatten() {
                let candidate = !only_in_progress || is_in_progress_name(&e.file_name());
                if candidate && old(&e) && e.file_type().is_ok_and(|t| !t.is_dir()) {
                    log::info!("removing stale temp file {}", e.path().display());
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The agent's own temp files (outputs and records being written) start with this.
const TEMP_PREFIX: &str = ".packrat-";

/// Creates `to` as a second name of `from`, never replacing anything: Ok(false) when `to`
/// exists. After an error, looks: on NFS a lost reply can report a link that happened.
fn link_once(from: &Path, to: &Path) -> io::Result<bool> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e) => {
            let same = match (fs::metadata(from), fs::metadata(to)) {
                (Ok(a), Ok(b)) => Some(a.ino() == b.ino() && a.dev() == b.dev()),
                _ => None,
            };
            match (same, e.kind()) {
                (Some(true), _) => Ok(true),
                (_, io::ErrorKind::AlreadyExists) => Ok(false),
                _ => Err(e),
            }
        }
    }
}

/// The current mode of a directory (kept when the admin made it).
fn mode_of(dir: &Path) -> Result<u32> {
    let m = fs::symlink_metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    Ok(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
}

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
