//! Names in the spool: which files are jobs, what a job's outcome is called, which names cannot
//! be served, and how a free name is found when a name is taken (`job.npy`, `job~1.npy`, …).
//! The agent (claiming) and the client (submitting) probe names the same way.
//!
//! Every outcome name derives from the *whole* job name — `c.npy` → `out/c.npy` (or
//! `out/c.npy.npz` when a one-array format must hold several outputs), `c.npz` → `out/c.npz`,
//! failures → `failed/c.npy.error.json` — so two jobs never share an outcome, and a job name of
//! at most [`MAX_JOB_NAME`] bytes keeps every derived name within `NAME_MAX`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Folder;

/// Extensions of job files; an output takes its input's.
pub const JOB_EXTENSIONS: [&str; 3] = ["npy", "npz", "safetensors"];

/// The longest job name served, in bytes: leaves room under `NAME_MAX` (255) for a `~N`
/// suffix, an `.npz` output suffix, the `.error.json` record suffix and the agent's sidecars.
pub const MAX_JOB_NAME: usize = 200;

/// The suffix of failure records.
pub const RECORD_SUFFIX: &str = ".error.json";

/// The name field a job sets its own deadline with: `img42.deadline=250ms.npy`.
pub const DEADLINE_FIELD: &str = "deadline=";

/// The deadline a job names for itself: a `deadline=<N>ms` (or `<N>s`) part among the
/// dot-separated parts of its name, e.g. `img42.deadline=250ms.npy` or `b.deadline=1.5s.npz`.
/// It counts from the file's mtime (when the client finished writing it). Err: the field is
/// there but does not say a positive duration.
pub fn deadline_in_name(name: &str) -> Result<Option<Duration>, String> {
    // `1.5s` spans a dot: look at the text after the field, up to the next dot after its unit.
    let Some(at) = name.find(DEADLINE_FIELD) else {
        return Ok(None);
    };
    if at > 0 && !name[..at].ends_with('.') {
        return Ok(None); // part of a longer word (`nodeadline=…`): not the field
    }
    let rest = &name[at + DEADLINE_FIELD.len()..];
    let bad = || {
        format!(
            "the name's deadline field '{DEADLINE_FIELD}{}' is not a duration: write it as {DEADLINE_FIELD}250ms or {DEADLINE_FIELD}1.5s",
            rest.split_once(".npy")
                .or_else(|| rest.split_once(".npz"))
                .or_else(|| rest.split_once(".safetensors"))
                .map_or(rest, |(v, _)| v)
        )
    };
    let digits = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = rest.split_at(digits);
    let scale = if unit.starts_with("ms") {
        1e-3
    } else if unit.starts_with('s') {
        1.0
    } else {
        return Err(bad());
    };
    let unit_len = if scale < 1.0 { 2 } else { 1 };
    let after = &unit[unit_len..];
    if !(after.is_empty() || after.starts_with('.')) {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !(v.is_finite() && v > 0.0 && v * scale < 1e7) {
        return Err(bad());
    }
    Ok(Some(Duration::from_secs_f64(v * scale)))
}

/// Names clients use for files still being written: never claimed.
pub fn is_in_progress_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".") || b.ends_with(b".tmp") || b.ends_with(b".part")
}

/// Why a name in `incoming/` cannot be served as it is.
pub fn unservable(name: &OsStr) -> Option<String> {
    let shown = quoted(name);
    if name.to_str().is_none() {
        Some(format!(
            "the file name {shown} is not valid UTF-8: name job files in UTF-8"
        ))
    } else if name.len() > MAX_JOB_NAME {
        Some(format!(
            "the file name {shown} is {} bytes long; job names may have at most {MAX_JOB_NAME} bytes: use a shorter name",
            name.len()
        ))
    } else if name.as_bytes().ends_with(RECORD_SUFFIX.as_bytes()) {
        Some(format!(
            "the file name {shown} ends in '{RECORD_SUFFIX}', which names failure records: rename the job"
        ))
    } else {
        None
    }
}

/// A name's bytes as a quoted string: printable ASCII as is, everything else escaped (`\xff`).
pub fn quoted(name: &OsStr) -> String {
    format!("\"{}\"", name.as_bytes().escape_ascii())
}

/// A servable name for an unservable one: its bytes with everything outside a safe set
/// replaced by `_`, cut to fit, never a dot-file.
pub fn safe_name(name: &OsStr) -> String {
    let mut s: String = name
        .as_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"._-+~".contains(&b) {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    const KEEP: usize = MAX_JOB_NAME - 20;
    if s.len() > KEEP {
        // Cut the middle, keep the extension: the record still says what format it was.
        let ext = job_extension(&s)
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        s = format!("{}{ext}", &s[..KEEP - ext.len()]);
    }
    if s.starts_with('.') || s.is_empty() {
        s.insert(0, '_');
    }
    if s.ends_with(RECORD_SUFFIX) {
        s.push('_');
    }
    s
}

/// The job name's format extension, if it has a known one.
pub fn job_extension(name: &str) -> Option<&str> {
    match name.rsplit_once('.') {
        Some((s, e)) if JOB_EXTENSIONS.contains(&e) && !s.is_empty() => Some(e),
        _ => None,
    }
}

/// The output file name of job `name` written in format `ext`: the job's own name when the
/// format is the job's, else the name with `.<ext>` appended.
pub fn output_name(name: &str, ext: &str) -> String {
    if job_extension(name) == Some(ext) {
        name.to_string()
    } else {
        format!("{name}.{ext}")
    }
}

/// Where the output of job `name` may appear: `out/<name>`, and `out/<name>.npz` for a `.npy`
/// job (a one-array format cannot hold several outputs).
pub fn output_paths(model_dir: &Path, name: &str) -> Vec<PathBuf> {
    let out = Folder::Out.of(model_dir);
    let mut v = vec![out.join(name)];
    if job_extension(name) == Some("npy") {
        v.push(out.join(output_name(name, "npz")));
    }
    v
}

/// Where the failure record of job `name` appears.
pub fn error_record_path(model_dir: &Path, name: &str) -> PathBuf {
    Folder::Failed
        .of(model_dir)
        .join(format!("{name}{RECORD_SUFFIX}"))
}

/// The one other name whose outputs can coincide with `name`'s: `c.npy` and `c.npy.npz` both
/// may write `out/c.npy.npz`.
fn sibling(name: &str) -> Option<String> {
    if job_extension(name) == Some("npy") {
        Some(format!("{name}.npz"))
    } else {
        name.strip_suffix(".npz")
            .filter(|s| job_extension(s) == Some("npy"))
            .map(String::from)
    }
}

/// Whether `name` (or its sibling) is used in any of `folders` — in any agent's claim folder,
/// for [`Folder::Claims`] — or its output or failure record exists.
pub fn in_use(model_dir: &Path, name: &str, folders: &[Folder]) -> bool {
    let names: Vec<String> = std::iter::once(name.to_string())
        .chain(sibling(name))
        .collect();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in folders {
        if *f == Folder::Claims {
            dirs.extend(crate::ownership::claim_dirs(model_dir));
        } else {
            dirs.push(f.of(model_dir));
        }
    }
    let taken = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    dirs.iter().any(|d| names.iter().any(|n| taken(&d.join(n))))
        || output_paths(model_dir, name).iter().any(|p| taken(p))
        || taken(&error_record_path(model_dir, name))
}

/// `name` first, then `stem~1.ext`, `stem~2.ext`, … (at most 10,000 names).
pub fn candidates(name: &str) -> impl Iterator<Item = String> + '_ {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (0..10_000u32).map(move |k| match k {
        0 => name.to_string(),
        k => format!("{stem}~{k}{ext}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn a_job_names_its_deadline_in_ms_or_s() {
        let d = |n: &str| deadline_in_name(n);
        assert_eq!(d("a.npy"), Ok(None));
        assert_eq!(
            d("img.deadline=250ms.npy"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(d("deadline=2s.npz"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(
            d("b.deadline=1.5s.safetensors"),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(d("b.deadline=0.5ms"), Ok(Some(Duration::from_micros(500))));
        // Part of another word: not the field.
        assert_eq!(d("nodeadline=3s.npy"), Ok(None));
        for bad in [
            "x.deadline=.npy",
            "x.deadline=fast.npy",
            "x.deadline=250.npy",
            "x.deadline=250min.npy",
            "x.deadline=0ms.npy",
            "x.deadline=1.2.3s.npy",
        ] {
            let e = d(bad).unwrap_err();
            assert!(e.contains("deadline=250ms"), "{bad}: {e}");
        }
    }

    #[test]
    fn outputs_derive_from_the_whole_name() {
        assert_eq!(output_name("c.npy", "npy"), "c.npy");
        assert_eq!(output_name("c.npy", "npz"), "c.npy.npz");
        assert_eq!(output_name("c.npz", "npz"), "c.npz");
        let d = Path::new("/m");
        let a = output_paths(d, "c.npy");
        let b = output_paths(d, "c.npz");
        assert!(a.iter().all(|p| !b.contains(p)), "{a:?} {b:?}");
        assert_eq!(sibling("c.npy").as_deref(), Some("c.npy.npz"));
        assert_eq!(sibling("c.npy.npz").as_deref(), Some("c.npy"));
        assert_eq!(sibling("c.npz"), None);
    }

    #[test]
    fn candidates_number_before_the_extension() {
        let c: Vec<String> = candidates("job.npz").take(3).collect();
        assert_eq!(c, ["job.npz", "job~1.npz", "job~2.npz"]);
        assert_eq!(candidates("noext").nth(1).unwrap(), "noext~1");
        assert_eq!(candidates("j.npy").count(), 10_000);
    }

    #[test]
    fn in_progress_names_are_never_jobs() {
        assert!(is_in_progress_name(OsStr::new(".x.npy")));
        assert!(is_in_progress_name(OsStr::new("x.npy.part")));
        assert!(is_in_progress_name(OsStr::new("x.tmp")));
        assert!(!is_in_progress_name(OsStr::new("x.npy")));
    }

    #[test]
    fn unservable_names_get_a_safe_name_within_name_max() {
        let long = "a".repeat(246) + ".npy";
        let bad = OsStr::from_bytes(b"caf\xe9 \n.npy");
        assert!(unservable(OsStr::new(&long)).unwrap().contains("250 bytes"));
        assert!(unservable(bad).unwrap().contains(r"caf\xe9 \n.npy"));
        assert!(unservable(OsStr::new("x.error.json")).is_some());
        assert!(unservable(OsStr::new("ok.npy")).is_none());
        for n in [
            OsStr::new(&long),
            bad,
            OsStr::new("..x"),
            OsStr::new("x.error.json"),
        ] {
            let s = safe_name(n);
            assert!(unservable(OsStr::new(&s)).is_none(), "{s}");
            assert!(
                s.ends_with(".npy") || !n.as_bytes().ends_with(b".npy"),
                "{s}"
            );
            assert!(!s.starts_with('.'));
            let worst = candidates(&s).last().unwrap();
            assert!(worst.len() + RECORD_SUFFIX.len() + 4 <= 255);
        }
    }
}
