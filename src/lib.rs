//! packrat: a node agent that serves PyTorch models on CPU from a spool directory, running
//! each model as several pinned instances whose ⟨instances, threads, sub-batch⟩ split is chosen
//! by the Packrat planner (ICML 2025).
//!
//! # Layout
//!
//! A job flows spool → queue → planner → instances → outputs:
//!
//! - [`config`]: the TOML config, validated field by field before anything starts;
//! - [`spool`]: the on-disk protocol — claim by rename, atomic outputs, failed/ with reasons,
//!   restart recovery;
//! - [`tensorfile`]: `.npy` / `.npz` / `.safetensors` reading (validated) and writing;
//! - [`queue`]: per-model queue and dispatcher — coalescing, splitting, reconfiguration;
//! - [`planner`]: latency profiles, targeted profiling, the knapsack DP, core topology;
//! - [`instances`]: pinned instance threads sharing one model;
//! - [`model`]: TorchScript files and built-in models behind one `CModule`;
//! - [`builtins`]: the built-in networks (random weights, batch-agnostic when traced);
//! - [`daemon`]: `packrat serve` — start-up, inotify, signals, reload, drain;
//! - [`sdnotify`], [`status`]: talking to systemd, the status file and metrics;
//! - [`bench`], [`demo`], [`cli`]: the side-by-side benchmark, the guided demo, the commands.

pub mod bench;
pub mod builtins;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod instances;
pub mod model;
pub mod planner;
pub mod queue;
pub mod sdnotify;
pub mod spool;
pub mod status;
pub mod tensorfile;

/// The libtorch version this binary was built against (from its `build-version` file).
pub const LIBTORCH_VERSION: &str = env!("PACKRAT_LIBTORCH_VERSION");
