//! The `packrat` command line, one file per command. Each command is thin: it parses its
//! arguments and calls the layers below; no command imports another.

mod bench;
mod demo;
mod plan;
mod profile;
mod status;
mod submit;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, EX_CONFIG};

#[derive(Parser)]
#[command(
    name = "packrat",
    version,
    about = "Serve PyTorch models on CPU from a spool directory, with the instance/thread/batch split chosen per host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (what systemd starts).
    Serve {
        #[arg(long, default_value = "/etc/packrat/packrat.toml")]
        config: PathBuf,
    },
    /// Drop job files into a model's spool atomically; with --wait, print the output path.
    Submit(submit::Args),
    /// Show models, plans, instances, queues and latencies of a running agent.
    Status(status::Args),
    /// Plan from a latency profile: instances, threads, sub-batches and cores for a batch.
    Plan(plan::Args),
    /// Profile a configured model on this host and cache the profile.
    Profile(profile::Args),
    /// Baseline ⟨1, T, B⟩ against the planned split, interleaved in rounds.
    Bench(bench::Args),
    /// The guided tour: an agent on a temporary spool with a built-in model.
    Demo(demo::Args),
}

pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(if std::env::var_os("JOURNAL_STREAM").is_some() {
            None
        } else {
            Some(env_logger::TimestampPrecision::Millis)
        })
        .init();
    let res = match Cli::parse().cmd {
        Cmd::Serve { config } => return crate::daemon::serve(&config),
        Cmd::Submit(args) => submit::run(&args),
        Cmd::Status(args) => status::run(&args),
        Cmd::Plan(args) => plan::run(&args),
        Cmd::Profile(args) => profile::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Demo(args) => demo::run(&args),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("packrat: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                EX_CONFIG
            } else {
                1
            }
        }
    }
}
