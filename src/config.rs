//! The config file: TOML, parsed into serde structs (unknown fields refused), then validated
//! field by field before anything starts. Every error names the field, says why, and says what
//! to write instead. Defaults live in [`defaults`] and nowhere else.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{
    Builtin, EngineKind, EngineOptions, InputSpec, Model, ModelSource, Precision, VersionDir,
};
use crate::planner::topology::{self, parse_cpu_list, Topology};
use crate::planner::FixedInstance;
use crate::tensorfile::kind_from_name;

/// A refused config. Exit code 78 (EX_CONFIG) when the daemon refuses one at start.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {problem}\n  fix: {fix}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

/// sysexits' EX_CONFIG.
pub const EX_CONFIG: i32 = 78;

/// Every default of the config, in one place (the README's table lists the same).
pub mod defaults {
    pub const STATE_DIR: &str = "/var/lib/packrat";
    pub const RESCAN_INTERVAL_MS: u64 = 1000;
    pub const TMP_MAX_AGE_S: u64 = 3600;
    pub const KEEP_INPUTS: bool = false;
    /// Outputs and failure records: readable by the spool's group (see the README's access
    /// model).
    pub const OUTPUT_MODE: &str = "0640";
    pub const MAX_BATCH: usize = 64;
    pub const MAX_JOB_BYTES: u64 = 1 << 30;
    pub const PROFILE_BUDGET_S: f64 = 60.0;
    /// `precision = "auto"` serves bf16 while its outputs stay within 1 % of the largest f32
    /// output (ResNet-50 drifts 0.4–0.8 % here; a model that loses more falls back to f32).
    pub const BF16_TOLERANCE: f64 = 0.01;
    /// `precision = "auto"` serves bf16 only where it is also measurably faster: f32 time over
    /// bf16 time, median of interleaved pairs at load, at least this (OpenVINO on AMX: ~5×;
    /// libtorch autocast: ~1.5–1.9×; a small model may not gain at all).
    pub const BF16_MIN_SPEEDUP: f64 = 1.1;
    pub const DTYPE: &str = "float32";
    /// `plan = "auto"` keeps learning while it serves and re-plans by itself.
    pub const ADAPT: bool = true;
    /// Idle-gap re-profiling of every point, this often (and whenever drift is seen).
    pub const REPROFILE_INTERVAL_S: f64 = 600.0;
    /// Without `max_probe_delay_ms`: an idle-gap measurement may hold up a job that arrives
    /// meanwhile by at most this many times the B=1 plan's predicted latency.
    pub const PROBE_DELAY_B1_FACTOR: f64 = 2.0;
    /// Exploration under load may cost at most this % of serving time (0: never explore).
    pub const EXPLORE_BUDGET_PCT: f64 = 1.0;
    /// Instance layouts kept warm per model (each layout is a set of sessions).
    pub const MAX_LAYOUTS: usize = 8;
    /// Dynamic batching off: run what is waiting, never wait for more.
    pub const MAX_BATCH_DELAY_MS: f64 = 0.0;

    pub fn rescan_interval_ms() -> u64 {
        RESCAN_INTERVAL_MS
    }
    pub fn tmp_max_age_s() -> u64 {
        TMP_MAX_AGE_S
    }
    pub fn keep_inputs() -> bool {
        KEEP_INPUTS
    }
    pub fn max_batch() -> usize {
        MAX_BATCH
    }
    pub fn max_job_bytes() -> u64 {
        MAX_JOB_BYTES
    }
    pub fn profile_budget_s() -> f64 {
        PROFILE_BUDGET_S
    }
    pub fn bf16_tolerance() -> f64 {
        BF16_TOLERANCE
    }
    pub fn bf16_min_speedup() -> f64 {
        BF16_MIN_SPEEDUP
    }
    pub fn adapt() -> bool {
        ADAPT
    }
    pub fn reprofile_interval_s() -> f64 {
        REPROFILE_INTERVAL_S
    }
    pub fn max_layouts() -> usize {
        MAX_LAYOUTS
    }
    pub fn explore_budget_pct() -> f64 {
        EXPLORE_BUDGET_PCT
    }
    pub fn max_batch_delay_ms() -> f64 {
        MAX_BATCH_DELAY_MS
    }
}

/// The largest `max_batch` accepted.
pub const MAX_BATCH_LIMIT: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    spool: PathBuf,
    state_dir: Option<PathBuf>,
    cores: Option<String>,
    #[serde(default = "defaults::rescan_interval_ms")]
    rescan_interval_ms: u64,
    #[serde(default = "defaults::tmp_max_age_s")]
    tmp_max_age_s: u64,
    #[serde(default = "defaults::keep_inputs")]
    keep_inputs: bool,
    output_mode: Option<String>,
    partition: Option<String>,
    #[serde(default)]
    model: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    source: String,
    engine: Option<String>,
    version: Option<u64>,
    precision: Option<String>,
    input: Option<Vec<i64>>,
    dtype: Option<String>,
    inputs: Option<Vec<RawInput>>,
    #[serde(default = "defaults::max_batch")]
    max_batch: usize,
    #[serde(default = "defaults::max_job_bytes")]
    max_job_bytes: u64,
    plan: Option<toml::Value>,
    #[serde(default = "defaults::profile_budget_s")]
    profile_budget_s: f64,
    #[serde(default = "defaults::bf16_tolerance")]
    bf16_tolerance: f64,
    #[serde(default = "defaults::bf16_min_speedup")]
    bf16_min_speedup: f64,
    #[serde(default = "defaults::adapt")]
    adapt: bool,
    #[serde(default = "defaults::reprofile_interval_s")]
    reprofile_interval_s: f64,
    max_probe_delay_ms: Option<f64>,
    #[serde(default = "defaults::explore_budget_pct")]
    explore_budget_pct: f64,
    #[serde(default = "defaults::max_layouts")]
    max_layouts: usize,
    #[serde(default = "defaults::max_batch_delay_ms")]
    max_batch_delay_ms: f64,
    deadline_ms: Option<f64>,
    on_deadline: Option<String>,
    concurrent_batches: Option<toml::Value>,
    static_shapes: Option<usize>,
    weight: Option<f64>,
    min_cores: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    dtype: Option<String>,
}

/// One instance of a `plan = [...]` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    threads: usize,
    batch: usize,
    cores: Option<Vec<usize>>,
}

/// How a model's instances are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanChoice {
    /// Profile on this host (or use the cached profile) and solve the DP.
    Auto,
    /// One instance with every core.
    Baseline,
    /// Fixed instances, their batch shares as weights.
    Fixed(Vec<FixedInstance>),
}

/// The precision a config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    F32,
    Bf16,
    /// bf16 while its drift from f32 stays within `bf16_tolerance`, else f32.
    Auto,
}

impl PrecisionChoice {
    pub fn name(self) -> &'static str {
        match self {
            PrecisionChoice::F32 => "f32",
            PrecisionChoice::Bf16 => "bf16",
            PrecisionChoice::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    /// The model file (for a folder of versions: the version this config was read for).
    pub source: ModelSource,
    /// `source` named a folder of numbered versions: where they are and which is wanted.
    pub versions: Option<VersionDir>,
    pub precision: PrecisionChoice,
    /// For `auto`: the largest drift of bf16 from f32 (relative to the largest f32 output).
    pub bf16_tolerance: f64,
    /// For `auto`: the least f32/bf16 time ratio at which bf16 is worth serving (0: any).
    pub bf16_min_speedup: f64,
    pub inputs: Vec<InputSpec>,
    pub max_batch: usize,
    pub max_job_bytes: u64,
    pub plan: PlanChoice,
    pub profile_budget_s: f64,
    pub adapt: Adapt,
    /// When fewer than max_batch items wait, wait up to this long for more (0: never wait).
    pub max_batch_delay_ms: f64,
    /// Every job's deadline from its arrival (its file's mtime), unless its name sets its own
    /// (`deadline=250ms`); None: only jobs that name one have one.
    pub deadline_ms: Option<f64>,
    pub on_deadline: OnDeadline,
    /// How many batches may run at once on disjoint cores (lanes): None = chosen from the load
    /// (`"auto"`); 1 = one batch at a time over every core.
    pub concurrent_batches: Option<usize>,
    pub engine_options: EngineOptions,
    /// `engine = "replay"`: the replayed machine's core count; the model plans and runs on
    /// virtual cores 0..N instead of the agent's `cores`.
    pub virtual_cores: Option<usize>,
    /// In the joint core partition: how much this model's job latency counts against the
    /// others' (1: as much).
    pub weight: f64,
    /// In the joint core partition, while it has work: the fewest cores it gets (None: one,
    /// when there are at least as many cores as models).
    pub min_cores: Option<usize>,
}

/// How several models share the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// Cores go to models by predicted latency at their current loads, re-solved as loads
    /// shift; a model without work lends its cores.
    Joint,
    /// Every model plans over every core by itself (they time-share the cores when busy at
    /// once). The default: measured, it served as well as the joint split on 2 real cores and
    /// better on 16 replayed ones (BENCHMARKS.md §13).
    #[default]
    Overlap,
    /// Each model gets an equal, fixed part of the cores, whatever the load.
    Equal,
}

impl Partition {
    pub fn name(self) -> &'static str {
        match self {
            Partition::Joint => "joint",
            Partition::Overlap => "overlap",
            Partition::Equal => "equal",
        }
    }
}

/// What becomes of a job that can no longer finish by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadline {
    /// It runs anyway, late (and is counted late).
    #[default]
    Run,
    /// It goes to failed/ with `deadline_exceeded` as soon as the prediction says it cannot
    /// make it, without running.
    Fail,
}

impl OnDeadline {
    pub fn name(self) -> &'static str {
        match self {
            OnDeadline::Run => "run",
            OnDeadline::Fail => "fail",
        }
    }
}

/// How a `plan = "auto"` model keeps its plans true while serving.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapt {
    /// Learn from serving and idle gaps, and re-plan (false: the start-up plan stays).
    pub enabled: bool,
    pub reprofile_interval_s: f64,
    /// The longest an idle-gap measurement may run (None: twice the B=1 plan's latency).
    pub max_probe_delay_ms: Option<f64>,
    /// Under load, points idle gaps cannot measure are measured on real batches run on another
    /// layout, at an extra cost of at most this % of serving time (0: never).
    pub explore_budget_pct: f64,
    pub max_layouts: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub spool: PathBuf,
    pub state_dir: PathBuf,
    /// None: the process's affinity mask.
    pub cores: Option<Vec<usize>>,
    pub rescan_interval_ms: u64,
    pub tmp_max_age_s: u64,
    pub keep_inputs: bool,
    /// Mode bits of outputs and failure records.
    pub output_mode: u32,
    /// How the models share the cores.
    pub partition: Partition,
    pub models: Vec<ModelConfig>,
}

impl ModelConfig {
    /// Loads the model on its engine in `precision`.
    pub fn load(&self, precision: Precision) -> anyhow::Result<Model> {
        Model::load_with(
            &self.name,
            &self.source,
            self.inputs.clone(),
            precision,
            self.engine_options,
        )
    }
}

impl Config {
    /// The cores the agent may use: `cores` (checked against the CPU affinity mask) or the mask.
    pub fn topology(&self) -> anyhow::Result<Topology> {
        use anyhow::Context;
        topology::usable(self.cores.as_deref())
            .with_context(|| format!("{}: cores", self.path.display()))
    }

    /// The cores `model` plans and runs on: a replayed model's virtual ones, else `host`
    /// (what [`Config::topology`] gave).
    pub fn model_topology(model: &ModelConfig, host: &Topology) -> Topology {
        match model.virtual_cores {
            Some(n) => Topology::flat(n),
            None => host.clone(),
        }
    }
}

/// A refusal before the file name is attached: (field, problem, fix).
struct Refusal(String, String, String);

fn refuse<T>(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Result<T, Refusal> {
    Err(Refusal(field.into(), problem.into(), fix.into()))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |Refusal(field, problem, fix)| ConfigError {
            file: path.display().to_string(),
            field,
            problem,
            fix,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(Refusal(
                "(file)".into(),
                format!("cannot read it: {e}"),
                "pass an existing TOML file: packrat serve --config /etc/packrat/packrat.toml"
                    .into(),
            ))
        })?;
        Self::parse(path, &text).map_err(err)
    }

    fn parse(path: &Path, text: &str) -> Result<Config, Refusal> {
        let raw: RawConfig = toml::from_str(text).or_else(|e| {
            let line = e
                .span()
                .map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1));
            refuse(
                line.unwrap_or_else(|| "(syntax)".into()),
                e.message().to_string(),
                "see examples/packrat.toml for every field and its type",
            )
        })?;
        if !raw.spool.is_absolute() {
            return refuse(
                "spool",
                format!("'{}' is not an absolute path", raw.spool.display()),
                "write spool = \"/var/spool/packrat\"",
            );
        }
        if let Some(d) = raw.state_dir.as_ref().filter(|d| !d.is_absolute()) {
            return refuse(
                "state_dir",
                format!("'{}' is not an absolute path", d.display()),
                "write state_dir = \"/var/lib/packrat\" (or leave it out)",
            );
        }
        let cores = raw.cores.as_deref().map(cores).transpose()?;
        if !(10..=600_000).contains(&raw.rescan_interval_ms) {
            return refuse(
                "rescan_interval_ms",
                format!("{} is out of range", raw.rescan_interval_ms),
                format!("use 10..600000 (default {})", defaults::RESCAN_INTERVAL_MS),
            );
        }
        let output_mode = output_mode(raw.output_mode.as_deref().unwrap_or(defaults::OUTPUT_MODE))?;
        let partition = match raw.partition.as_deref() {
            Some("joint") => Partition::Joint,
            None | Some("overlap") => Partition::Overlap,
            Some("equal") => Partition::Equal,
            Some(other) => {
                return refuse(
                    "partition",
                    format!("there is no partition '{other}'"),
                    "write partition = \"overlap\" (every model on every core; the default), \"joint\" (cores follow the models' loads) or \"equal\" (a fixed equal share each)",
                )
            }
        };
        if raw.model.is_empty() {
            return refuse(
                "model",
                "no [[model]] is configured",
                "add a [[model]] table with name, source and input (see examples/packrat.toml)",
            );
        }
        let mut names = HashSet::new();
        let mut models = Vec::new();
        for (i, m) in raw.model.into_iter().enumerate() {
            let m = model(i, m, cores.as_deref())?;
            if !names.insert(m.name.clone()) {
                return refuse(
                    format!("model[{i}].name"),
                    format!("'{}' is used by two models", m.name),
                    "give every [[model]] its own name",
                );
            }
            models.push(m);
        }
        Ok(Config {
            path: path.to_path_buf(),
            spool: raw.spool,
            state_dir: raw.state_dir.unwrap_or_else(state_dir_from_env),
            cores,
            rescan_interval_ms: raw.rescan_interval_ms,
            tmp_max_age_s: raw.tmp_max_age_s,
            keep_inputs: raw.keep_inputs,
            output_mode,
            partition,
            models,
        })
    }
}

/// systemd's `$STATE_DIRECTORY` (its first entry) when set, else the default.
fn state_dir_from_env() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|s| s.to_string_lossy().split(':').next().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR))
}

fn output_mode(s: &str) -> Result<u32, Refusal> {
    let fix = "write output_mode = \"0640\" (the spool's group may read results; the default) or \"0644\" (every local user may)";
    match u32::from_str_radix(s, 8) {
        Ok(m) if m & !0o666 != 0 => refuse(
            "output_mode",
            format!("'{s}' sets bits other than read and write"),
            fix,
        ),
        Ok(m) if m & 0o600 != 0o600 => refuse(
            "output_mode",
            format!("'{s}' does not let the agent read and write its own files"),
            fix,
        ),
        Ok(m) => Ok(m),
        Err(_) => refuse("output_mode", format!("'{s}' is not an octal mode"), fix),
    }
}

fn cores(s: &str) -> Result<Vec<usize>, Refusal> {
    let fix = "write cores = \"0-3\" or leave it out to use the CPU affinity mask";
    match parse_cpu_list(s) {
        Ok(list) if list.is_empty() => refuse("cores", "the list is empty", fix),
        Ok(list) => Ok(list),
        Err(e) => refuse("cores", e.to_string(), fix),
    }
}

fn model(i: usize, m: RawModel, cores: Option<&[usize]>) -> Result<ModelConfig, Refusal> {
    let f = |k: &str| format!("model[{i}].{k}");
    let valid_name = !m.name.is_empty()
        && m.name.len() <= 64
        && !m.name.starts_with('.')
        && m.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_name {
        return refuse(
            f("name"),
            format!("'{}' cannot be a spool folder name", m.name),
            "use letters, digits, '-', '_' or '.', e.g. name = \"resnet18\"",
        );
    }
    let (source, versions) = source(&f, &m.source, m.engine.as_deref(), m.version)?;
    let precision = precision(&f("precision"), m.precision.as_deref(), source.engine())?;
    let inputs = inputs(&f, &m, &source)?;
    // A replayed model runs on the profile's virtual cores, not on this host's.
    let virtual_cores = match &source {
        ModelSource::Replay(p) => Some(crate::engine::replay_cores(p).or_else(|e| {
            refuse(
                f("source"),
                format!("{e:#}"),
                "point source at a latency profile: packrat profile's profile.json, or one of the Packrat authors' (points of threads, batch, latency_ms)",
            )
        })?),
        _ => None,
    };
    let virtual_list: Option<Vec<usize>> = virtual_cores.map(|n| (0..n).collect());
    let cores = virtual_list.as_deref().or(cores);
    if let ModelSource::Builtin(b) = &source {
        if let Err(need) = b.check_inputs(&inputs) {
            return refuse(
                f("inputs"),
                need,
                "leave input/inputs out to use the built-in's own",
            );
        }
    }
    if !(1..=MAX_BATCH_LIMIT).contains(&m.max_batch) {
        return refuse(
            f("max_batch"),
            format!("{} is out of range", m.max_batch),
            format!(
                "use 1..{MAX_BATCH_LIMIT}, e.g. max_batch = {}",
                defaults::MAX_BATCH
            ),
        );
    }
    if m.max_job_bytes == 0 {
        return refuse(
            f("max_job_bytes"),
            "0 would refuse every job",
            "leave it out (1 GiB) or give a byte count",
        );
    }
    let plan = plan(&f("plan"), m.plan.as_ref(), cores)?;
    let budget = m.profile_budget_s;
    if !(m.bf16_tolerance > 0.0 && m.bf16_tolerance < 1.0) {
        return refuse(
            f("bf16_tolerance"),
            format!("{} is not a fraction between 0 and 1", m.bf16_tolerance),
            format!(
                "leave it out ({}) or write e.g. bf16_tolerance = 0.02 (2 % of the largest f32 output)",
                defaults::BF16_TOLERANCE
            ),
        );
    }
    if !(m.bf16_min_speedup.is_finite() && (0.0..=1000.0).contains(&m.bf16_min_speedup)) {
        return refuse(
            f("bf16_min_speedup"),
            format!("{} is not a speed-up between 0 and 1000", m.bf16_min_speedup),
            format!(
                "leave it out ({}) or write e.g. bf16_min_speedup = 1.2 (bf16 must run 20 % faster); 0 serves bf16 whatever its speed",
                defaults::BF16_MIN_SPEEDUP
            ),
        );
    }
    if !(budget.is_finite() && budget > 0.0) {
        return refuse(
            f("profile_budget_s"),
            format!("{budget} is not a positive number of seconds"),
            format!(
                "leave it out ({}) or write e.g. profile_budget_s = 60",
                defaults::PROFILE_BUDGET_S
            ),
        );
    }
    let positive = |field: &str, v: f64, example: &str| -> Result<(), Refusal> {
        if v.is_finite() && v > 0.0 {
            return Ok(());
        }
        refuse(
            f(field),
            format!("{v} is not a positive number"),
            format!("leave it out or write e.g. {field} = {example}"),
        )
    };
    positive("reprofile_interval_s", m.reprofile_interval_s, "600")?;
    if let Some(d) = m.max_probe_delay_ms {
        positive("max_probe_delay_ms", d, "20")?;
    }
    if !(m.explore_budget_pct.is_finite() && (0.0..=50.0).contains(&m.explore_budget_pct)) {
        return refuse(
            f("explore_budget_pct"),
            format!("{} is not between 0 and 50 %", m.explore_budget_pct),
            format!(
                "leave it out ({}) or write e.g. explore_budget_pct = 2 (0: never explore under load)",
                defaults::EXPLORE_BUDGET_PCT
            ),
        );
    }
    if !(m.max_batch_delay_ms.is_finite() && (0.0..=60_000.0).contains(&m.max_batch_delay_ms)) {
        return refuse(
            f("max_batch_delay_ms"),
            format!("{} is not between 0 and 60000 ms", m.max_batch_delay_ms),
            "leave it out (0: never wait for more jobs) or write e.g. max_batch_delay_ms = 5",
        );
    }
    if let Some(d) = m.deadline_ms {
        if !(d.is_finite() && d > 0.0 && d <= 3_600_000.0) {
            return refuse(
                f("deadline_ms"),
                format!("{d} is not between 0 and 3600000 ms"),
                "leave it out (no deadline unless a job names one) or write e.g. deadline_ms = 500",
            );
        }
    }
    let on_deadline = match m.on_deadline.as_deref() {
        None | Some("run") => OnDeadline::Run,
        Some("fail") => OnDeadline::Fail,
        Some(other) => {
            return refuse(
                f("on_deadline"),
                format!("there is no on_deadline '{other}'"),
                "write on_deadline = \"run\" (late jobs still run) or \"fail\" (jobs that cannot make it go to failed/ unrun)",
            )
        }
    };
    let concurrent_batches = match &m.concurrent_batches {
        None => None,
        Some(toml::Value::String(s)) if s == "auto" => None,
        Some(toml::Value::Integer(n)) if (1..=1024).contains(n) => Some(*n as usize),
        Some(other) => {
            return refuse(
                f("concurrent_batches"),
                format!("{other} is neither \"auto\" nor a count of 1..1024"),
                "leave it out (\"auto\": chosen from the load), or write e.g. concurrent_batches = 2 (it must divide the cores; 1: one batch at a time)",
            )
        }
    };
    if !(1..=64).contains(&m.max_layouts) {
        return refuse(
            f("max_layouts"),
            format!("{} is out of range", m.max_layouts),
            format!(
                "use 1..64, e.g. max_layouts = {} (each layout keeps its instances' sessions in memory)",
                defaults::MAX_LAYOUTS
            ),
        );
    }
    let static_shapes = match m.static_shapes {
        Some(n) if n > 64 => {
            return refuse(
                f("static_shapes"),
                format!("{n} is out of range"),
                format!(
                    "use 0..64, e.g. static_shapes = {} (each kept size holds another compiled copy of the model; 0: dynamic shapes only)",
                    EngineOptions::DEFAULT_STATIC_SHAPES
                ),
            )
        }
        Some(_) if source.engine() != EngineKind::OpenVino => {
            return refuse(
                f("static_shapes"),
                format!("engine {} has no static shapes", source.engine().name()),
                "remove it, or use engine = \"openvino\"",
            )
        }
        Some(n) => n,
        None => EngineOptions::DEFAULT_STATIC_SHAPES,
    };
    let weight = m.weight.unwrap_or(1.0);
    if !(weight.is_finite() && (0.01..=100.0).contains(&weight)) {
        return refuse(
            f("weight"),
            format!("{weight} is out of range"),
            "use 0.01..100, e.g. weight = 2 (this model's latency counts twice the others' in the joint partition; default 1)",
        );
    }
    let all_cores = cores.map(<[usize]>::len);
    if let Some(n) = m.min_cores {
        if n == 0 || all_cores.is_some_and(|c| n > c) {
            return refuse(
                f("min_cores"),
                format!("{n} is not a count of 1..the cores"),
                "write e.g. min_cores = 2 (the fewest cores this model keeps while it has work), or leave it out (one core)",
            );
        }
    }
    Ok(ModelConfig {
        weight,
        min_cores: m.min_cores,
        engine_options: EngineOptions { static_shapes },
        adapt: Adapt {
            enabled: m.adapt,
            reprofile_interval_s: m.reprofile_interval_s,
            max_probe_delay_ms: m.max_probe_delay_ms,
            explore_budget_pct: m.explore_budget_pct,
            max_layouts: m.max_layouts,
        },
        max_batch_delay_ms: m.max_batch_delay_ms,
        deadline_ms: m.deadline_ms,
        on_deadline,
        concurrent_batches,
        name: m.name,
        source,
        versions,
        precision,
        bf16_tolerance: m.bf16_tolerance,
        bf16_min_speedup: m.bf16_min_speedup,
        inputs,
        max_batch: m.max_batch,
        max_job_bytes: m.max_job_bytes,
        plan,
        profile_budget_s: budget,
        virtual_cores,
    })
}

/// The model source; `engine` (when given) decides how a file is read, else its extension
/// does (`.onnx` runs on ONNX Runtime, anything else is TorchScript on libtorch).
fn source(
    f: &dyn Fn(&str) -> String,
    s: &str,
    engine: Option<&str>,
    version: Option<u64>,
) -> Result<(ModelSource, Option<VersionDir>), Refusal> {
    let engine = match engine {
        None => None,
        Some(e) => Some(EngineKind::from_name(e).map_or_else(
            || {
                refuse(
                    f("engine"),
                    format!("there is no engine '{e}'"),
                    "write engine = \"libtorch\", \"onnxruntime\", \"openvino\" or \"replay\" (or leave it out: the source decides)",
                )
            },
            Ok,
        )?),
    };
    if let Some(name) = s.strip_prefix("builtin:") {
        let Some(b) = Builtin::from_name(name) else {
            let known: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
            return refuse(
                f("source"),
                format!("there is no built-in model '{name}'"),
                format!("use one of builtin:{}", known.join(", builtin:")),
            );
        };
        if engine.is_some_and(|e| e != EngineKind::Libtorch) {
            return refuse(
                f("engine"),
                "built-in models run on libtorch",
                "leave engine out, or export the model to ONNX and point source at the .onnx file",
            );
        }
        if version.is_some() {
            return refuse(
                f("version"),
                "a built-in model has no versions",
                "remove version, or point source at a folder of numbered versions",
            );
        }
        return Ok((ModelSource::Builtin(b), None));
    }
    let path = Path::new(s);
    if !path.is_absolute() {
        return refuse(
            f("source"),
            format!("'{s}' is neither builtin:NAME nor an absolute path"),
            "write source = \"builtin:resnet18\", \"/srv/models/model.pt\" or \"/srv/models/model.onnx\"",
        );
    }
    if path.is_dir() {
        let dir = VersionDir {
            dir: path.to_path_buf(),
            pin: version,
            engine,
        };
        return Ok((version_source(f, &dir)?, Some(dir)));
    }
    if version.is_some() {
        return refuse(
            f("version"),
            format!("'{s}' is a model file, not a folder of versions"),
            "remove version, or point source at a folder holding <N>/model.pt (or .onnx, .xml)",
        );
    }
    if engine.is_none() && path.extension().is_some_and(|e| e == "json") {
        return refuse(
            f("engine"),
            format!("'{s}' looks like a latency profile, not a model"),
            "to replay a profile on virtual cores write engine = \"replay\"; to serve a model point source at its .pt, .onnx or .xml",
        );
    }
    let engine = engine.unwrap_or(match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => EngineKind::OnnxRuntime,
        Some("xml") => EngineKind::OpenVino,
        _ => EngineKind::Libtorch,
    });
    if !path.is_file() {
        return refuse(
            f("source"),
            format!("model file '{s}' does not exist"),
            "check the path; export the model with torch.jit.save (libtorch) or torch.onnx.export (onnxruntime)",
        );
    }
    let source = match engine {
        EngineKind::Libtorch => ModelSource::TorchScript(path.to_path_buf()),
        EngineKind::OnnxRuntime => ModelSource::Onnx(path.to_path_buf()),
        EngineKind::OpenVino => ModelSource::OpenVino(path.to_path_buf()),
        EngineKind::Replay => ModelSource::Replay(path.to_path_buf()),
    };
    Ok((source, None))
}

/// The model file of the version a folder of versions serves: the pinned one, or the highest
/// that holds a model file (a newer, half-written one is the runtime's to retry).
fn version_source(f: &dyn Fn(&str) -> String, dir: &VersionDir) -> Result<ModelSource, Refusal> {
    let shown = dir.dir.display();
    let list = dir.list().or_else(|e| {
        refuse(
            f("source"),
            format!("cannot list the versions in {shown}: {e}"),
            "let the agent read the folder",
        )
    })?;
    let layout = format!("put each version in {shown}/<N>/model.pt (or model.onnx, or model.xml with model.bin), N = 1, 2, …");
    if let Some(pin) = dir.pin {
        if !list.contains(&pin) {
            return refuse(
                f("version"),
                format!("{shown} has no version {pin} (it has {list:?})"),
                "pin a version that is there, or remove version to serve the highest",
            );
        }
        return dir
            .source(pin)
            .or_else(|why| refuse(f("version"), why, layout));
    }
    let mut why = format!("{shown} holds no version folder");
    for &n in list.iter().rev() {
        match dir.source(n) {
            Ok(source) => return Ok(source),
            Err(e) => why = e,
        }
    }
    refuse(f("source"), why, layout)
}

fn precision(field: &str, p: Option<&str>, engine: EngineKind) -> Result<PrecisionChoice, Refusal> {
    let precision = match p {
        None | Some("f32") => PrecisionChoice::F32,
        Some("bf16") => PrecisionChoice::Bf16,
        Some("auto") => PrecisionChoice::Auto,
        Some(other) => {
            return refuse(
                field,
                format!("there is no precision '{other}'"),
                "write precision = \"f32\" (the default), \"bf16\" or \"auto\"",
            )
        }
    };
    if precision == PrecisionChoice::Bf16 && !engine.has_bf16() {
        let with: Vec<&str> = EngineKind::ALL
            .iter()
            .filter(|e| e.has_bf16())
            .map(|e| e.name())
            .collect();
        return refuse(
            field,
            format!("engine {} has no bf16 path on CPU", engine.name()),
            format!(
                "use precision = \"f32\", or an engine with bf16: {}",
                with.join(", ")
            ),
        );
    }
    Ok(precision)
}

fn dtype(field: String, d: Option<&str>) -> Result<tch::Kind, Refusal> {
    let d = d.unwrap_or(defaults::DTYPE);
    kind_from_name(d).map_or_else(
        || {
            refuse(
                field,
                format!("unknown dtype '{d}'"),
                "use float32, float64, float16, bfloat16, int64, int32, int16, int8, uint8 or bool",
            )
        },
        Ok,
    )
}

fn shape(field: String, s: &[i64]) -> Result<Vec<i64>, Refusal> {
    if s.iter().any(|&d| d < 1) {
        return refuse(
            field,
            format!("{s:?} has a dimension < 1"),
            "give the shape of ONE item without the batch dimension, e.g. input = [3, 224, 224]",
        );
    }
    Ok(s.to_vec())
}

fn inputs(
    f: &dyn Fn(&str) -> String,
    m: &RawModel,
    source: &ModelSource,
) -> Result<Vec<InputSpec>, Refusal> {
    match (&m.input, &m.inputs) {
        (Some(_), Some(_)) => refuse(
            f("inputs"),
            "both input and inputs are set",
            "use input = [...] for one input, or inputs = [{name, shape, dtype}] for several",
        ),
        (Some(s), None) => Ok(vec![InputSpec {
            name: "input".into(),
            shape: shape(f("input"), s)?,
            dtype: dtype(f("dtype"), m.dtype.as_deref())?,
        }]),
        (None, Some(list)) if list.is_empty() => refuse(
            f("inputs"),
            "the list is empty",
            "give at least one {name, shape, dtype}",
        ),
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(k, inp)| {
                Ok(InputSpec {
                    name: inp.name.clone(),
                    shape: shape(f(&format!("inputs[{k}].shape")), &inp.shape)?,
                    dtype: dtype(f(&format!("inputs[{k}].dtype")), inp.dtype.as_deref())?,
                })
            })
            .collect(),
        (None, None) => match source {
            ModelSource::Builtin(b) => Ok(b.default_inputs()),
            // A replay computes nothing from its input: the smallest job file will do.
            ModelSource::Replay(_) => Ok(vec![InputSpec::float("input", vec![1])]),
            ModelSource::TorchScript(_) | ModelSource::Onnx(_) | ModelSource::OpenVino(_) => {
                refuse(
                    f("input"),
                    "a model file needs its input shape",
                    "write input = [3, 224, 224] (one item, without the batch dimension)",
                )
            }
        },
    }
}

fn plan(
    field: &str,
    v: Option<&toml::Value>,
    cores: Option<&[usize]>,
) -> Result<PlanChoice, Refusal> {
    let fix = "write plan = \"auto\", plan = \"baseline\", or plan = [{ threads = 1, batch = 4 }, { threads = 1, batch = 4 }] (cores = [0] optional)";
    let items = match v {
        None => return Ok(PlanChoice::Auto),
        Some(toml::Value::String(s)) if s == "auto" => return Ok(PlanChoice::Auto),
        Some(toml::Value::String(s)) if s == "baseline" => return Ok(PlanChoice::Baseline),
        Some(toml::Value::Array(items)) if !items.is_empty() => items,
        Some(other) => return refuse(field, format!("{other} is not a plan"), fix),
    };
    let mut parts = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let inst = RawInstance::deserialize(item.clone())
            .or_else(|e| refuse(field, format!("instance {k}: {}", e.message()), fix))?;
        if inst.threads < 1 || inst.batch < 1 {
            return refuse(
                field,
                format!("instance {k} needs threads >= 1 and batch >= 1"),
                fix,
            );
        }
        if let Some(list) = &inst.cores {
            if list.len() != inst.threads {
                return refuse(
                    field,
                    format!(
                        "instance {k} has threads = {} but {} cores",
                        inst.threads,
                        list.len()
                    ),
                    "give as many cores as threads, or leave cores out",
                );
            }
            if let Some(bad) = cores.and_then(|allowed| list.iter().find(|c| !allowed.contains(c)))
            {
                return refuse(
                    field,
                    format!("instance {k} uses core {bad}, which is not in cores"),
                    "use only cores listed in the top-level cores",
                );
            }
        }
        parts.push(FixedInstance {
            threads: inst.threads,
            weight: inst.batch,
            cores: inst.cores,
        });
    }
    Ok(PlanChoice::Fixed(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, (String, String)> {
        Config::parse(Path::new("t.toml"), text).map_err(|Refusal(f, p, _)| (f, p))
    }

    fn with_model(model: &str) -> String {
        format!("spool = \"/s\"\nstate_dir = \"/st\"\n[[model]]\nname = \"m\"\n{model}\n")
    }

    #[test]
    fn a_minimal_config_gets_every_default() {
        let c = parse(&with_model("source = \"builtin:tiny_cnn\"")).unwrap();
        assert_eq!(c.rescan_interval_ms, defaults::RESCAN_INTERVAL_MS);
        assert_eq!(c.tmp_max_age_s, defaults::TMP_MAX_AGE_S);
        let m = &c.models[0];
        assert_eq!(m.source, ModelSource::Builtin(Builtin::TinyCnn));
        assert_eq!(m.inputs, Builtin::TinyCnn.default_inputs());
        assert_eq!(
            (m.max_batch, m.plan.clone()),
            (defaults::MAX_BATCH, PlanChoice::Auto)
        );
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases = [
            ("source = \"builtin:nope\"", "model[0].source", "no built-in"),
            ("source = \"rel.pt\"\ninput = [1]", "model[0].source", "absolute"),
            ("source = \"/no/such.pt\"\ninput = [1]", "model[0].source", "does not exist"),
            ("source = \"builtin:tiny_cnn\"\nengine = \"tensorrt\"", "model[0].engine", "no engine"),
            ("source = \"builtin:tiny_cnn\"\nengine = \"onnxruntime\"", "model[0].engine", "libtorch"),
            ("source = \"builtin:tiny_cnn\"\nprecision = \"fp8\"", "model[0].precision", "no precision"),
            ("source = \"builtin:tiny_cnn\"\nmax_batch = 0", "model[0].max_batch", "out of range"),
            ("source = \"builtin:tiny_cnn\"\ninput = [3, 0, 4]", "model[0].input", "< 1"),
            ("source = \"builtin:tiny_cnn\"\ndtype = \"f128\"\ninput = [3, 8, 8]", "model[0].dtype", "unknown dtype"),
            ("source = \"builtin:two_heads\"\ninputs = [{ name = \"a\", shape = [16] }]", "model[0].inputs", "two_heads"),
            ("source = \"builtin:bert_base\"\ninputs = [{ name = \"input_ids\", shape = [], dtype = \"int64\" }]", "model[0].inputs", "bert_base"),
            ("source = \"builtin:tiny_cnn\"\nplan = \"fast\"", "model[0].plan", "not a plan"),
            ("source = \"builtin:tiny_cnn\"\nplan = [{ threads = 1, batch = 1, core = [0] }]", "model[0].plan", "unknown field `core`"),
            ("source = \"builtin:tiny_cnn\"\nplan = [{ threads = 2, batch = 1, cores = [0] }]", "model[0].plan", "but 1 cores"),
            ("source = \"builtin:tiny_cnn\"\nprofile_budget_s = -1.0", "model[0].profile_budget_s", "positive"),
            ("source = \"builtin:tiny_cnn\"\nreprofile_interval_s = 0.0", "model[0].reprofile_interval_s", "positive"),
            ("source = \"builtin:tiny_cnn\"\nmax_probe_delay_ms = -5.0", "model[0].max_probe_delay_ms", "positive"),
            ("source = \"builtin:tiny_cnn\"\nexplore_budget_pct = 80.0", "model[0].explore_budget_pct", "between 0 and 50"),
            ("source = \"builtin:tiny_cnn\"\nmax_batch_delay_ms = -1.0", "model[0].max_batch_delay_ms", "between"),
            ("source = \"builtin:tiny_cnn\"\ndeadline_ms = 0.0", "model[0].deadline_ms", "not between 0 and 3600000"),
            ("source = \"builtin:tiny_cnn\"\non_deadline = \"drop\"", "model[0].on_deadline", "no on_deadline 'drop'"),
            ("source = \"builtin:tiny_cnn\"\nconcurrent_batches = 0", "model[0].concurrent_batches", "neither"),
            ("source = \"builtin:tiny_cnn\"\nconcurrent_batches = \"many\"", "model[0].concurrent_batches", "neither"),
            ("source = \"builtin:tiny_cnn\"\nmax_layouts = 0", "model[0].max_layouts", "out of range"),
            ("source = \"builtin:tiny_cnn\"\nstatic_shapes = 2", "model[0].static_shapes", "no static shapes"),
            ("source = \"builtin:tiny_cnn\"\nstatic_shapes = 65", "model[0].static_shapes", "out of range"),
            ("source = \"builtin:tiny_cnn\"\nadapt = \"yes\"", "line 6", "bool"),
            ("source = \"builtin:tiny_cnn\"\nversion = 2", "model[0].version", "no versions"),
        ];
        for (model, field, problem) in cases {
            let (f, p) = parse(&with_model(model)).unwrap_err();
            assert_eq!(f, field, "{model}");
            assert!(p.contains(problem), "{model}: {p}");
        }
    }

    #[test]
    fn top_level_mistakes_name_their_field_too() {
        let m = "[[model]]\nname = \"m\"\nsource = \"builtin:tiny_cnn\"\n";
        let cases = [
            (format!("spool = \"rel\"\n{m}"), "spool"),
            (format!("spool = \"/s\"\ncores = \"3-1\"\n{m}"), "cores"),
            (
                format!("spool = \"/s\"\ncores = \"0-100000000000\"\n{m}"),
                "cores",
            ),
            (
                format!("spool = \"/s\"\nrescan_interval_ms = 1\n{m}"),
                "rescan_interval_ms",
            ),
            (
                format!("spool = \"/s\"\noutput_mode = \"4755\"\n{m}"),
                "output_mode",
            ),
            (
                format!("spool = \"/s\"\nstate_dir = \"rel/state\"\n{m}"),
                "state_dir",
            ),
            (
                format!("spool = \"/s\"\noutput_mode = \"0044\"\n{m}"),
                "output_mode",
            ),
            (
                format!("spool = \"/s\"\noutput_mode = \"rw-r--r--\"\n{m}"),
                "output_mode",
            ),
            ("spool = \"/s\"\n".to_string(), "model"),
            (format!("spool = \"/s\"\n{m}{m}"), "model[1].name"),
            (format!("spool = \"/s\"\nbogus = 1\n{m}"), "line 2"),
        ];
        for (text, field) in cases {
            assert_eq!(parse(&text).unwrap_err().0, field, "{text}");
        }
    }

    #[test]
    fn a_folder_of_versions_serves_the_highest_with_a_file_or_the_pinned_one() {
        let dir = tempfile::tempdir().unwrap();
        for (f, bytes) in [
            ("1/model.pt", &b"x"[..]),
            ("2/model.onnx", b"x"),
            ("3/README", b"x"),
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let model = |extra: &str| {
            parse(&with_model(&format!(
                "source = \"{}\"\ninput = [4]\n{extra}",
                dir.path().display()
            )))
        };
        // 3 holds no model file yet: 2 serves, on the engine its file names.
        let m = model("").unwrap();
        assert_eq!(
            m.models[0].source,
            ModelSource::Onnx(dir.path().join("2/model.onnx"))
        );
        assert_eq!(m.models[0].versions.as_ref().unwrap().pin, None);
        let m = model("version = 1").unwrap();
        assert_eq!(
            m.models[0].source,
            ModelSource::TorchScript(dir.path().join("1/model.pt"))
        );
        let (field, problem) = model("version = 7").unwrap_err();
        assert_eq!(field, "model[0].version");
        assert!(problem.contains("no version 7"), "{problem}");
        let (field, problem) = model("version = 3").unwrap_err();
        assert_eq!(field, "model[0].version");
        assert!(problem.contains("no model file"), "{problem}");
        let file = dir.path().join("1/model.pt");
        let (field, _) = parse(&with_model(&format!(
            "source = \"{}\"\ninput = [4]\nversion = 1",
            file.display()
        )))
        .unwrap_err();
        assert_eq!(field, "model[0].version");
    }

    #[test]
    fn the_source_picks_the_engine_and_bf16_is_refused_where_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("m.onnx");
        let other = dir.path().join("m.bin");
        std::fs::write(&onnx, b"").unwrap();
        std::fs::write(&other, b"").unwrap();
        let model = |src: &std::path::Path, extra: &str| {
            parse(&with_model(&format!(
                "source = \"{}\"\ninput = [4]\n{extra}",
                src.display()
            )))
        };
        let m = model(&onnx, "").unwrap();
        assert_eq!(m.models[0].source, ModelSource::Onnx(onnx.clone()));
        assert_eq!(
            model(&other, "").unwrap().models[0].source,
            ModelSource::TorchScript(other.clone())
        );
        assert_eq!(
            model(&other, "engine = \"onnxruntime\"").unwrap().models[0].source,
            ModelSource::Onnx(other.clone())
        );
        let (field, problem) = model(&onnx, "precision = \"bf16\"").unwrap_err();
        assert_eq!(field, "model[0].precision");
        assert!(problem.contains("onnxruntime has no bf16"), "{problem}");
        let bf16 = parse(&with_model(
            "source = \"builtin:tiny_cnn\"\nprecision = \"bf16\"",
        ))
        .unwrap();
        assert_eq!(bf16.models[0].precision, PrecisionChoice::Bf16);
        let auto = model(&onnx, "precision = \"auto\"\nbf16_tolerance = 0.05").unwrap();
        assert_eq!(auto.models[0].precision, PrecisionChoice::Auto);
        assert_eq!(auto.models[0].bf16_tolerance, 0.05);
        let (field, _) = model(&onnx, "precision = \"auto\"\nbf16_tolerance = 2.0").unwrap_err();
        assert_eq!(field, "model[0].bf16_tolerance");
        assert_eq!(auto.models[0].bf16_min_speedup, defaults::BF16_MIN_SPEEDUP);
        let (field, problem) =
            model(&onnx, "precision = \"auto\"\nbf16_min_speedup = -1").unwrap_err();
        assert_eq!(field, "model[0].bf16_min_speedup");
        assert!(problem.contains("-1"), "{problem}");
    }

    #[test]
    fn a_replayed_profile_runs_on_its_virtual_cores_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("p.json");
        std::fs::write(
            &good,
            r#"{"model":"r","cores":16,"points":[{"threads":16,"batch":1,"latency_ms":10}]}"#,
        )
        .unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"model":"r","cores":16,"points":[]}"#).unwrap();
        let model = |src: &std::path::Path, extra: &str| {
            parse(&with_model(&format!(
                "source = \"{}\"\n{extra}",
                src.display()
            )))
        };
        let c = model(&good, "engine = \"replay\"").unwrap();
        let m = &c.models[0];
        assert_eq!(m.source, ModelSource::Replay(good.clone()));
        assert_eq!(m.virtual_cores, Some(16));
        assert_eq!(m.inputs, vec![InputSpec::float("input", vec![1])]);
        assert_eq!(Config::model_topology(m, &Topology::flat(2)).len(), 16);
        // A fixed plan is checked against the virtual cores, not this host's.
        assert!(model(
            &good,
            "engine = \"replay\"\nplan = [{ threads = 8, batch = 1, cores = [8, 9, 10, 11, 12, 13, 14, 15] }]"
        )
        .is_ok());
        let (field, problem) = model(&bad, "engine = \"replay\"").unwrap_err();
        assert_eq!(field, "model[0].source");
        assert!(problem.contains("no points"), "{problem}");
        let (field, problem) = model(&good, "").unwrap_err();
        assert_eq!(field, "model[0].engine");
        assert!(problem.contains("latency profile"), "{problem}");
        let (field, _) = model(&good, "engine = \"replay\"\nprecision = \"bf16\"").unwrap_err();
        assert_eq!(field, "model[0].precision");
    }

    #[test]
    fn a_fixed_plan_keeps_threads_weights_and_cores() {
        let c = parse(&with_model(
            "source = \"builtin:tiny_cnn\"\nplan = [{ threads = 1, batch = 3, cores = [1] }, { threads = 1, batch = 1 }]",
        ))
        .unwrap();
        let PlanChoice::Fixed(parts) = &c.models[0].plan else {
            panic!("{:?}", c.models[0].plan)
        };
        assert_eq!(parts[0].cores, Some(vec![1]));
        assert_eq!((parts[1].threads, parts[1].weight), (1, 1));
    }
}
