//! The module map in `src/lib.rs` is a rule: a module imports only modules below it. This
//! reads every `crate::…` / `super::…` path under `src/` and fails on an import that points
//! up (which is also how a cycle would have to start).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top to bottom; `planner` and `spool` are the workspace crates re-exported at the bottom.
const LAYERS: [&str; 9] = [
    "commands",
    "daemon",
    "runtime",
    "config",
    "profiler",
    "engine",
    "tensorfile",
    "planner",
    "spool",
];

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| *l == module)
        .unwrap_or_else(|| panic!("module '{module}' is not in the layer list"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/runtime/plans.rs` → `runtime`).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let m = first.trim_end_matches(".rs");
    (!matches!(m, "lib" | "main")).then(|| m.to_string())
}

/// Top-level modules named by `crate::X` in `text`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `packrat_crate::`
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_lowercase()) {
            out.insert(name);
        }
    }
    out
}

#[test]
fn modules_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for f in &files {
        let Some(me) = owner(&src, f) else { continue };
        seen_modules.insert(me.clone());
        let text = std::fs::read_to_string(f).unwrap();
        for dep in imports(&text) {
            if dep == me || dep == "LIBTORCH_VERSION" {
                continue;
            }
            if rank(&dep) <= rank(&me) {
                upward.push(format!("{} ({me}) imports {dep}", f.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
    // Every module of the tree is placed (a new one must be given a layer).
    for m in &seen_modules {
        rank(m);
    }
}

#[test]
fn the_planner_and_spool_crates_do_not_depend_on_libtorch() {
    for krate in ["planner", "spool"] {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates")
            .join(krate)
            .join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let deps = text.split("[dependencies]").nth(1).unwrap_or_default();
        let deps = deps.split("\n[").next().unwrap_or_default();
        for forbidden in ["tch", "torch-sys", "packrat ="] {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(forbidden)),
                "{krate} depends on {forbidden}"
            );
        }
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert!(
        imports("use crate::daemon::status;\nlet x = crate::engine::Model;").contains("daemon")
    );
    assert!(rank("engine") > rank("runtime"));
}
