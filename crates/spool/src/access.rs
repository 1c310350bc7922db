//! The spool's access model. Any local user may submit (`tmp/` and `incoming/` are 1777, sticky);
//! results are for the spool's group: `out/`, `failed/`, `done/` and `claims/` are setgid, so
//! what the agent writes there belongs to the group of the spool folder (e.g. `packrat`), and
//! outputs and failure records get `output_mode` (0640 by default: readable by that group).
//! Folders are changed only through a descriptor opened with `O_NOFOLLOW`, so a symlink planted
//! where a spool folder should be is refused, never followed or chmod'ed.

use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fchmod, Mode};

/// `output_mode` when the config does not say.
pub const DEFAULT_OUTPUT_MODE: u32 = 0o640;

/// The mode of the result folders for files of `output_mode`: group-searchable and setgid,
/// and world-searchable only when the files are world-readable.
pub fn result_dir_mode(output_mode: u32) -> u32 {
    0o2750 | if output_mode & 0o004 != 0 { 0o005 } else { 0 }
}

/// Sets `dir`'s mode through an `O_NOFOLLOW` descriptor; refuses a symlink.
pub fn set_mode(dir: &Path, mode: u32) -> Result<()> {
    let fd = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
            "{} is not a directory (a symbolic link or a file): packrat never follows links in the spool; replace it with a directory (bind-mount it if it must live elsewhere)",
            dir.display()
        ),
        e => anyhow::anyhow!("cannot open {}: {e}", dir.display()),
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // Already right: leave it (the folder may belong to the admin, who made it so).
    let current = file
        .metadata()
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
    if current.is_ok_and(|m| m == mode) {
        return Ok(());
    }
    match fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode)) {
        // A sandbox that forbids setgid bits (systemd's RestrictSUIDSGID=): go without; results
        // then get the agent's group instead of the spool's.
        Err(Errno::EPERM) if mode & 0o2000 != 0 => {
            log::warn!(
                "cannot make {} setgid (the sandbox forbids it): results get the agent's own group",
                dir.display()
            );
            fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode & !0o2000))
        }
        other => other,
    }
    .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    Ok(())
}

/// Creates `dir` if missing and refuses it if it is (or was replaced by) anything but a real
/// directory.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory (a symbolic link or a file): packrat never follows links in the spool; replace it with a directory (bind-mount it if it must live elsewhere)",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).with_context(|| {
                format!(
                    "cannot create {}: check that the spool is writable by the agent (ReadWritePaths= in the unit)",
                    dir.display()
                )
            })?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", dir.display())),
    }
    set_mode(dir, mode)
}

/// Sets a file's mode through its open handle (tempfile creates 0600).
pub fn set_file_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
    fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(std::io::Error::from)
}

/// Sets the extended attribute `name` (e.g. `user.packrat.version`) on an open file.
pub fn set_xattr(file: &std::fs::File, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a name"))?;
    // SAFETY: the descriptor is open for the call; `name` is NUL-terminated and `value` is a
    // live slice of the length passed.
    let rc = unsafe {
        nix::libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Says once per process that outputs under `root` go without the attribute `name`.
pub fn xattr_unsupported(root: &Path, name: &str, e: &std::io::Error) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log::info!(
            "outputs under {} are published without the extended attribute {name} ({e}): the filesystem has no user attributes; safetensors outputs still name their version in __metadata__",
            root.display()
        )
    });
}
