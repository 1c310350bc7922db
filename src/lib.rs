//! packrat: a node agent that serves deep-learning models on CPU from a spool directory —
//! TorchScript on libtorch, ONNX on ONNX Runtime, ONNX or IR on OpenVINO — running each model
//! as several pinned instances whose ⟨instances, threads, sub-batch⟩ split is chosen by the
//! Packrat planner (ICML 2025).
//!
//! # Layout
//!
//! A job flows spool → runtime (queue, dispatcher) → planner → engine (instances) → outputs.
//! Modules depend only on those listed after them, and no two files import each other
//! (`tests/layers.rs` checks both):
//!
//! - [`commands`]: the command line, one file per command (`serve`, `submit`, `status`, `plan`,
//!   `profile`, `bench`, `demo`); thin, none imports another;
//! - [`daemon`]: `packrat serve` — the event loop (signals, inotify on jobs and version
//!   folders, timers), reload (models added, removed, re-versioned) and drain, sd_notify, the
//!   status file and metrics;
//! - [`runtime`]: one per model — its queue (earliest deadline first) and the dispatcher that
//!   owns the serving loop (coalescing, splitting, several batches in flight on lanes —
//!   [`runtime::lanes`] — deadlines and shedding — [`runtime::deadline`] — switching versions
//!   between batches), the serving
//!   [`runtime::version`] (engine, instance sets, plan table, precision, online adaptation —
//!   [`runtime::adapt`], with exploration under load in [`runtime::explore`]) and
//!   at most one being built beside it ([`runtime::load`]), the version history
//!   ([`runtime::lifecycle`]), stats and drift;
//!   [`runtime::partition`] splits the cores between several models by their loads;
//! - [`config`]: the TOML config, parsed and validated field by field before anything starts;
//! - [`profiler`]: targeted, co-located profiling through the engine, and the profile cache;
//! - [`engine`]: the engines (libtorch for TorchScript files and built-ins, ONNX Runtime,
//!   OpenVINO, and `replay`: a measured profile slept out on virtual cores) behind one session
//!   interface, pinned instance sets, the instance pool, and a model's numbered version
//!   folders ([`engine::versions`]);
//! - [`tensorfile`]: the `.npy` / `.npz` / `.safetensors` formats, one file each;
//! - [`planner`] (crate `packrat-planner`): profiles, the knapsack DP, the bounded layout menu,
//!   the live profile, CPU topology and features (bf16, AMX), plan tables — no libtorch;
//! - [`spool`] (crate `packrat-spool`): the on-disk protocol — claim by rename, recovery,
//!   atomic outputs, failure records, the client side — no libtorch.

pub mod commands;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod profiler;
pub mod runtime;
pub mod tensorfile;

pub use packrat_planner as planner;
pub use packrat_spool as spool;

/// The libtorch version this binary was built against (from its `build-version` file).
pub const LIBTORCH_VERSION: &str = env!("PACKRAT_LIBTORCH_VERSION");
