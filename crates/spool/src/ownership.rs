//! Who owns a claimed job. Each running agent has its own claim folder, `claims/<id>/`, with a
//! `.lock` file it holds an exclusive `flock` on for its whole life. The kernel (or the network
//! filesystem's lock manager) drops the lock when the process dies, however it dies, so any
//! other agent can test liveness by trying the lock: if it gets it, the owner is gone and its
//! jobs may be taken over. A folder is created under a dot-name and renamed into place only
//! once locked, so nobody ever sees a live agent's folder without its lock.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::Folder;

/// The lock file inside a claim folder.
pub const LOCK_FILE: &str = ".lock";

/// The claim folders of every agent (live or dead) on the model spool at `model_dir`.
pub fn claim_dirs(model_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(Folder::Claims.of(model_dir)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// This agent's identity: host, pid and start time, unique across hosts and restarts.
fn new_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{host}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// This agent's claim folder and the lock that says it is alive.
pub struct Owner {
    pub id: String,
    pub dir: PathBuf,
    _lock: Flock<File>,
}

impl Owner {
    /// Creates and locks a claim folder for this process under `claims/`.
    pub fn join(claims: &Path, mode: u32) -> Result<Owner> {
        let id = new_id();
        let staging = claims.join(format!(".new-{id}"));
        fs::create_dir(&staging)
            .with_context(|| format!("cannot create the claim folder {}", staging.display()))?;
        crate::access::set_mode(&staging, mode)?;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(staging.join(LOCK_FILE))
            .context("cannot create the claim folder's lock file")?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!("cannot lock {}: {e}: the spool's filesystem must support flock (local, NFSv4, CephFS and GlusterFS do)", staging.display())
        })?;
        let dir = claims.join(&id);
        fs::rename(&staging, &dir).context("cannot publish the claim folder")?;
        Ok(Owner {
            id,
            dir,
            _lock: lock,
        })
    }
}

/// What a look at another agent's claim folder found.
pub enum Liveness {
    /// Its owner holds the lock.
    Alive,
    /// The owner is gone; the lock is ours while this lives (None: there was no lock file).
    Gone(Option<Flock<File>>),
}

/// Tests whether the agent owning claim folder `dir` is alive, without blocking.
pub fn liveness(dir: &Path) -> Liveness {
    let file = match File::open(dir.join(LOCK_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Liveness::Gone(None),
        // Cannot tell (permissions, I/O): assume alive; never take over on a guess.
        Err(_) => return Liveness::Alive,
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Liveness::Gone(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Liveness::Alive,
        Err(_) => Liveness::Alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owner_is_alive_and_a_dropped_one_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let a = Owner::join(d.path(), 0o750).unwrap();
        let b = Owner::join(d.path(), 0o750).unwrap();
        assert_ne!(a.id, b.id);
        assert!(matches!(liveness(&a.dir), Liveness::Alive));
        let dir = a.dir.clone();
        drop(a);
        assert!(matches!(liveness(&dir), Liveness::Gone(Some(_))));
        assert!(matches!(liveness(&b.dir), Liveness::Alive));
        fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        assert!(matches!(liveness(&dir), Liveness::Gone(None)));
    }
}
