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

/// The first path segments named after `prefix` in `text`: `super::a::b` gives `a`,
/// `super::{a, b::c}` gives `a` and `b`.
fn segments_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the brace group.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(&item));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Which sibling files `file` imports: `super::x` where `x.rs` (or `x/mod.rs`) sits beside
/// it, and `crate::m::x` where `src/m/x.rs` does. A folder's `mod.rs` is its module's face
/// (it declares and re-exports its files), so it is no node here.
fn sibling_imports(src: &Path, file: &Path, text: &str) -> BTreeSet<PathBuf> {
    let dir = file.parent().unwrap();
    let mut out = BTreeSet::new();
    let exists = |d: &Path, name: &str| -> Option<PathBuf> {
        let f = d.join(format!("{name}.rs"));
        f.is_file().then_some(f)
    };
    for name in segments_after(text, "super::") {
        if let Some(f) = exists(dir, &name) {
            out.insert(f);
        }
    }
    if let Ok(rel) = dir.strip_prefix(src) {
        if let Some(top) = rel.components().next() {
            let top = top.as_os_str().to_str().unwrap();
            for name in segments_after(text, &format!("crate::{top}::")) {
                if let Some(f) = exists(&src.join(top), &name) {
                    out.insert(f);
                }
            }
        }
    }
    out.remove(file);
    out
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("mod.rs") && !f.ends_with("lib.rs") && !f.ends_with("main.rs"));
    let graph: Vec<(PathBuf, BTreeSet<PathBuf>)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            (f.clone(), sibling_imports(&src, f, &text))
        })
        .collect();
    // Depth-first search for a cycle; report the path.
    fn visit(
        node: &Path,
        graph: &[(PathBuf, BTreeSet<PathBuf>)],
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(pos) = stack.iter().position(|p| p == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_path_buf());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_path_buf());
        let deps = graph
            .iter()
            .find(|(f, _)| f == node)
            .map(|(_, d)| d.clone());
        for d in deps.unwrap_or_default() {
            if let Some(c) = visit(&d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_path_buf());
        None
    }
    let mut done = BTreeSet::new();
    for (f, _) in &graph {
        if let Some(cycle) = visit(f, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle
                .iter()
                .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
                .collect();
            panic!("files import each other: {}", names.join(" → "));
        }
    }
}

#[test]
fn the_file_checker_sees_a_circle() {
    let names = segments_after(
        "use super::torch_opt::X;\nuse super::{first_line, torch::{a, b}, Backend};\nfoo::super::no",
        "super::",
    );
    let want: BTreeSet<String> = ["torch_opt", "first_line", "torch", "Backend"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
    // The engine's two libtorch files, as they were before the fix, form a circle.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("engine")).unwrap();
    let a = src.join("engine/torch.rs");
    let b = src.join("engine/torch_opt.rs");
    std::fs::write(&a, "use super::torch_opt::OptimizedModule;").unwrap();
    std::fs::write(&b, "super::torch::flatten_output(x)").unwrap();
    let ta = std::fs::read_to_string(&a).unwrap();
    let tb = std::fs::read_to_string(&b).unwrap();
    assert!(sibling_imports(src, &a, &ta).contains(&b));
    assert!(sibling_imports(src, &b, &tb).contains(&a));
}
