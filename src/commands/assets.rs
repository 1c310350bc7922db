//! `packrat assets DIR` (hidden; the .deb build runs it): writes the man page `packrat.8`
//! generated from the command-line definitions, the written config reference `packrat.toml.5`,
//! and bash, zsh and fish completions.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The config reference, written by hand (the README's configuration table, as roff).
const CONFIG_PAGE: &str = include_str!("../../docs/packrat.toml.5");

#[derive(clap::Args)]
pub struct Args {
    /// Where to write man/ and completions/.
    out: PathBuf,
}

pub fn run(args: &Args) -> Result<i32> {
    let man = args.out.join("man");
    let comp = args.out.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let cmd = super::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut page)?;
    write(&man.join("packrat.8"), &page)?;
    write(&man.join("packrat.toml.5"), CONFIG_PAGE.as_bytes())?;
    for (shell, file) in [
        (Shell::Bash, "packrat"),
        (Shell::Zsh, "_packrat"),
        (Shell::Fish, "packrat.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "packrat", &mut buf);
        write(&comp.join(file), &buf)?;
    }
    Ok(0)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
