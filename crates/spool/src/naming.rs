//! Names in the spool: which files are jobs, what a job's output is called, and how a free name
//! is found when a name was used before (`job.npy`, `job~1.npy`, …). The agent (claiming) and
//! the client (submitting) probe names the same way.

use std::path::Path;

use crate::Folder;

/// Extensions of job files; an output takes its input's.
pub const JOB_EXTENSIONS: [&str; 3] = ["npy", "npz", "safetensors"];

/// Names clients use for files still being written: never claimed.
pub fn is_in_progress_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// The name minus its job extension: what the output is called.
pub fn stem_of(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((s, e)) if JOB_EXTENSIONS.contains(&e) && !s.is_empty() => s,
        _ => name,
    }
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

/// Where the output of job `name` may appear (one path per job extension).
pub fn output_paths(model_dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let stem = stem_of(name);
    JOB_EXTENSIONS
        .iter()
        .map(|e| Folder::Out.of(model_dir).join(format!("{stem}.{e}")))
        .collect()
}

/// Where the failure record of job `name` appears.
pub fn error_record_path(model_dir: &Path, name: &str) -> std::path::PathBuf {
    Folder::Failed
        .of(model_dir)
        .join(format!("{name}.error.json"))
}

/// Whether `name` is used in any of `folders`, or its output or failure record exists.
pub fn in_use(model_dir: &Path, name: &str, folders: &[Folder]) -> bool {
    folders.iter().any(|f| f.of(model_dir).join(name).exists())
        || output_paths(model_dir, name).iter().any(|p| p.exists())
        || error_record_path(model_dir, name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_drop_only_job_extensions() {
        assert_eq!(stem_of("a.b.npy"), "a.b");
        assert_eq!(stem_of("x.txt"), "x.txt");
        assert_eq!(stem_of(".npy"), ".npy");
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
        assert!(is_in_progress_name(".x.npy"));
        assert!(is_in_progress_name("x.npy.part"));
        assert!(is_in_progress_name("x.tmp"));
        assert!(!is_in_progress_name("x.npy"));
    }
}
