//! The `packrat` command line, one file per command. Each command is thin: it parses its
//! arguments and calls the layers below; no command imports another.

mod assets;
mod bench;
mod demo;
mod plan;
mod profile;
mod status;
mod submit;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::ConfigError;
use crate::spool::client::TimedOut;

/// Exit codes (sysexits where one fits), the same for every command.
pub mod exit {
    /// Something else went wrong (the message says what).
    pub const FAILURE: i32 = 1;
    /// clap's usage error.
    pub const USAGE: i32 = 2;
    /// `packrat status`: the agent is not running (LSB's "program is not running").
    pub const NOT_RUNNING: i32 = 3;
    /// `packrat submit --wait`: a job failed (EX_DATAERR).
    pub const JOB_FAILED: i32 = 65;
    /// `packrat submit --wait`: no outcome before the timeout (EX_TEMPFAIL).
    pub const TIMEOUT: i32 = 75;
    /// A bad config (EX_CONFIG); the unit does not restart on it.
    pub const CONFIG: i32 = crate::config::EX_CONFIG;
}

#[derive(Parser)]
#[command(
    name = "packrat",
    version,
    about = "Serve TorchScript, ONNX and OpenVINO models on CPU from a spool directory, with the instance/thread/batch split chosen per host"
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
    /// Write the man pages and shell completions into a directory (for packaging).
    #[command(hide = true)]
    Assets(assets::Args),
}

/// Logs go to stderr: under systemd (`JOURNAL_STREAM` set) each line starts with its syslog
/// priority (`<3>` error … `<7>` debug), which journald reads, and carries no timestamp (journald
/// has its own); on a terminal, plain timestamped lines. `RUST_LOG` filters as usual.
fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format(|f, r| {
            use std::io::Write;
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(f, "<{prio}>{}: {}", r.target(), r.args())
        });
    } else {
        b.format_timestamp_millis();
    }
    b.init();
}

pub fn main() -> i32 {
    init_logging();
    // --version names the engines this binary runs, not only the crate, and the CPU it runs
    // on: what it can compute fast decides precisions and plans.
    let cpu = crate::planner::cpu::CpuInfo::detect();
    let version = format!(
        "{} (libtorch {}, ONNX Runtime {}, OpenVINO {})\ncpu: {}; bf16 units: {}",
        env!("CARGO_PKG_VERSION"),
        crate::LIBTORCH_VERSION,
        crate::engine::ONNXRUNTIME_VERSION,
        crate::engine::OPENVINO_VERSION,
        cpu.summary(),
        if cpu.native_bf16() { "yes" } else { "no" }
    );
    let matches = Cli::command()
        .version(&*Box::leak(version.into_boxed_str()))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let res = match cli.cmd {
        Cmd::Serve { config } => return crate::daemon::serve(&config),
        Cmd::Submit(args) => submit::run(&args),
        Cmd::Status(args) => status::run(&args),
        Cmd::Plan(args) => plan::run(&args),
        Cmd::Profile(args) => profile::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Assets(args) => assets::run(&args),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("packrat: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                exit::CONFIG
            } else if e.downcast_ref::<TimedOut>().is_some() {
                exit::TIMEOUT
            } else {
                exit::FAILURE
            }
        }
    }
}
