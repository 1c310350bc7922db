//! `packrat submit`: copy job files into a model's spool; with `--wait`, print each outcome.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::spool::client::{self, Outcome};
use crate::spool::Folder;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    spool: PathBuf,
    #[arg(long)]
    model: String,
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long)]
    wait: bool,
    /// Seconds to wait for each job with --wait.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

pub fn run(args: &Args) -> Result<i32> {
    let dir = args.spool.join(&args.model);
    if !Folder::Incoming.of(&dir).is_dir() {
        bail!(
            "{} has no incoming/: is '{}' a model of the agent serving {}?",
            dir.display(),
            args.model,
            args.spool.display()
        );
    }
    let names: Vec<String> = args
        .files
        .iter()
        .map(|f| client::submit(&dir, f))
        .collect::<Result<_>>()?;
    if !args.wait {
        for n in &names {
            println!("{}", Folder::Incoming.of(&dir).join(n).display());
        }
        return Ok(0);
    }
    let mut code = 0;
    for n in &names {
        match client::wait(&dir, n, Duration::from_secs_f64(args.timeout))? {
            Outcome::Output(p) => println!("{}", p.display()),
            Outcome::Failed(reason) => {
                eprintln!("{n}: failed: {reason}");
                code = super::exit::JOB_FAILED;
            }
        }
    }
    Ok(code)
}
