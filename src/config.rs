//! The config file: TOML, parsed and fully validated before anything starts. Every error
//! names the field, says why, and says what to write instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{builtin_inputs, InputSpec, BUILTINS};
use crate::planner::topology::parse_cpu_list;
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

pub const EX_CONFIG: i32 = 78;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    spool: PathBuf,
    state_dir: Option<PathBuf>,
    cores: Option<String>,
    rescan_interval_ms: Option<u64>,
    tmp_max_age_s: Option<u64>,
    keep_inputs: Option<bool>,
    #[serde(default)]
    model: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    source: String,
    input: Option<Vec<i64>>,
    dtype: Option<String>,
    inputs: Option<Vec<RawInput>>,
    max_batch: Option<usize>,
    max_job_bytes: Option<u64>,
    plan: Option<toml::Value>,
    profile_budget_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    dtype: Option<String>,
}

/// How a model's instances are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanChoice {
    /// Profile on this host (or use the cached profile) and solve the DP.
    Auto,
    /// One instance with every core.
    Baseline,
    /// Fixed instances: (threads, batch share, optional cores).
    Explicit(Vec<(usize, usize, Option<Vec<usize>>)>),
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub source: String,
    pub inputs: Vec<InputSpec>,
    pub max_batch: usize,
    pub max_job_bytes: u64,
    pub plan: PlanChoice,
    pub profile_budget_s: f64,
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
    pub models: Vec<ModelConfig>,
}

pub const MAX_BATCH_LIMIT: usize = 4096;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |field: &str, problem: String, fix: &str| ConfigError {
            file: file.clone(),
            field: field.to_string(),
            problem,
            fix: fix.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "(file)",
                format!("cannot read it: {e}"),
                "pass an existing TOML file: packrat serve --config /etc/packrat/packrat.toml",
            )
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| {
            let span = e.span().map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            });
            err(
                span.as_deref().unwrap_or("(syntax)"),
                e.message().to_string(),
                "see examples/packrat.toml for every field and its type",
            )
        })?;
        Self::validate(path, raw).map_err(|(field, problem, fix)| err(&field, problem, &fix))
    }

    fn validate(path: &Path, raw: RawConfig) -> Result<Config, (String, String, String)> {
        let e = |f: &str, p: String, x: &str| (f.to_string(), p, x.to_string());
        if !raw.spool.is_absolute() {
            return Err(e(
                "spool",
                format!("'{}' is not an absolute path", raw.spool.display()),
                "write spool = \"/var/spool/packrat\"",
            ));
        }
        let cores = match &raw.cores {
            None => None,
            Some(s) => {
                let list = parse_cpu_list(s).map_err(|x| {
                    e(
                        "cores",
                        x.to_string(),
                        "write cores = \"0-3\" or leave it out to use the CPU affinity mask",
                    )
                })?;
                if list.is_empty() {
                    return Err(e(
                        "cores",
                        "the list is empty".into(),
                        "write cores = \"0-3\" or leave it out",
                    ));
                }
                Some(list)
            }
        };
        let rescan = raw.rescan_interval_ms.unwrap_or(1000);
        if !(10..=600_000).contains(&rescan) {
            return Err(e(
                "rescan_interval_ms",
                format!("{rescan} is out of range"),
                "use 10..600000 (default 1000)",
            ));
        }
        if raw.model.is_empty() {
            return Err(e(
                "model",
                "no [[model]] is configured".into(),
                "add a [[model]] table with name, source and input (see examples/packrat.toml)",
            ));
        }
        let mut names = HashSet::new();
        let mut models = Vec::new();
        for (i, m) in raw.model.into_iter().enumerate() {
            let f = |k: &str| format!("model[{i}].{k}");
            let valid_name = !m.name.is_empty()
                && m.name.len() <= 64
                && !m.name.starts_with('.')
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_name {
                return Err(e(
                    &f("name"),
                    format!("'{}' cannot be a spool folder name", m.name),
                    "use letters, digits, '-', '_' or '.', e.g. name = \"resnet18\"",
                ));
            }
            if !names.insert(m.name.clone()) {
                return Err(e(
                    &f("name"),
                    format!("'{}' is used by two models", m.name),
                    "give every [[model]] its own name",
                ));
            }
            let builtin = m.source.strip_prefix("builtin:");
            match builtin {
                Some(b) if builtin_inputs(b).is_none() => {
                    let known: Vec<&str> = BUILTINS.iter().map(|b| b.0).collect();
                    return Err(e(
                        &f("source"),
                        format!("there is no built-in model '{b}'"),
                        &format!("use one of builtin:{}", known.join(", builtin:")),
                    ));
                }
                None if !Path::new(&m.source).is_absolute() => {
                    return Err(e(
                        &f("source"),
                        format!(
                            "'{}' is neither builtin:NAME nor an absolute path",
                            m.source
                        ),
                        "write source = \"builtin:resnet18\" or source = \"/srv/models/model.pt\"",
                    ));
                }
                None if !Path::new(&m.source).is_file() => {
                    return Err(e(
                        &f("source"),
                        format!("TorchScript file '{}' does not exist", m.source),
                        "check the path, or export the model with torch.jit.save",
                    ));
                }
                _ => {}
            }
            let dtype = |field: String, d: &Option<String>| {
                match d {
                None => Ok(tch::Kind::Float),
                Some(d) => kind_from_name(d).ok_or_else(|| e(&field, format!("unknown dtype '{d}'"), "use float32, float64, float16, bfloat16, int64, int32, int16, int8, uint8 or bool")),
            }
            };
            let check_shape = |field: String, s: &[i64]| {
                if s.iter().any(|&d| d < 1) {
                    Err(e(&field, format!("{s:?} has a dimension < 1"), "give the shape of ONE item without the batch dimension, e.g. input = [3, 224, 224]"))
                } else {
                    Ok(())
                }
            };
            let inputs = match (&m.input, &m.inputs) {
                (Some(_), Some(_)) => return Err(e(&f("inputs"), "both input and inputs are set".into(), "use input = [...] for one input, or inputs = [{name, shape, dtype}] for several")),
                (Some(shape), None) => {
                    check_shape(f("input"), shape)?;
                    vec![InputSpec { name: "input".into(), shape: shape.clone(), dtype: dtype(f("dtype"), &m.dtype)? }]
                }
                (None, Some(list)) => {
                    if list.is_empty() {
                        return Err(e(&f("inputs"), "the list is empty".into(), "give at least one {name, shape, dtype}"));
                    }
                    let mut v = Vec::new();
                    for (k, inp) in list.iter().enumerate() {
                        check_shape(f(&format!("inputs[{k}].shape")), &inp.shape)?;
                        v.push(InputSpec { name: inp.name.clone(), shape: inp.shape.clone(), dtype: dtype(f(&format!("inputs[{k}].dtype")), &inp.dtype)? });
                    }
                    v
                }
                (None, None) => match builtin.and_then(builtin_inputs) {
                    Some(v) => v,
                    None => return Err(e(&f("input"), "a TorchScript model needs its input shape".into(), "write input = [3, 224, 224] (one item, without the batch dimension)")),
                },
            };
            let max_batch = m.max_batch.unwrap_or(64);
            if !(1..=MAX_BATCH_LIMIT).contains(&max_batch) {
                return Err(e(
                    &f("max_batch"),
                    format!("{max_batch} is out of range"),
                    &format!("use 1..{MAX_BATCH_LIMIT}, e.g. max_batch = 64"),
                ));
            }
            let max_job_bytes = m.max_job_bytes.unwrap_or(1 << 30);
            if max_job_bytes == 0 {
                return Err(e(
                    &f("max_job_bytes"),
                    "0 would refuse every job".into(),
                    "leave it out (1 GiB) or give a byte count",
                ));
            }
            let plan =
                parse_plan(&m.plan, cores.as_ref()).map_err(|(p, x)| e(&f("plan"), p, &x))?;
            let budget = m.profile_budget_s.unwrap_or(60.0);
            if !(budget.is_finite() && budget > 0.0) {
                return Err(e(
                    &f("profile_budget_s"),
                    format!("{budget} is not a positive number of seconds"),
                    "leave it out (60) or write e.g. profile_budget_s = 60",
                ));
            }
            models.push(ModelConfig {
                name: m.name,
                source: m.source,
                inputs,
                max_batch,
                max_job_bytes,
                plan,
                profile_budget_s: budget,
            });
        }
        let state_dir = raw
            .state_dir
            .or_else(|| {
                std::env::var_os("STATE_DIRECTORY").map(|s| {
                    PathBuf::from(s.to_string_lossy().split(':').next().unwrap_or_default())
                })
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/packrat"));
        Ok(Config {
            path: path.to_path_buf(),
            spool: raw.spool,
            state_dir,
            cores,
            rescan_interval_ms: rescan,
            tmp_max_age_s: raw.tmp_max_age_s.unwrap_or(3600),
            keep_inputs: raw.keep_inputs.unwrap_or(false),
            models,
        })
    }
}

fn parse_plan(
    v: &Option<toml::Value>,
    cores: Option<&Vec<usize>>,
) -> Result<PlanChoice, (String, String)> {
    let fix = "write plan = \"auto\", plan = \"baseline\", or plan = [{ threads = 1, batch = 4 }, { threads = 1, batch = 4 }] (cores = [0] optional)".to_string();
    let v = match v {
        None => return Ok(PlanChoice::Auto),
        Some(v) => v,
    };
    match v {
        toml::Value::String(s) if s == "auto" => Ok(PlanChoice::Auto),
        toml::Value::String(s) if s == "baseline" => Ok(PlanChoice::Baseline),
        toml::Value::Array(items) if !items.is_empty() => {
            let mut parts = Vec::new();
            for (k, it) in items.iter().enumerate() {
                let t = it
                    .get("threads")
                    .and_then(|x| x.as_integer())
                    .filter(|&x| x >= 1);
                let b = it
                    .get("batch")
                    .and_then(|x| x.as_integer())
                    .filter(|&x| x >= 1);
                let (Some(t), Some(b)) = (t, b) else {
                    return Err((
                        format!("instance {k} needs threads >= 1 and batch >= 1"),
                        fix,
                    ));
                };
                let c = match it.get("cores") {
                    None => None,
                    Some(c) => {
                        let list: Option<Vec<usize>> = c.as_array().and_then(|a| {
                            a.iter()
                                .map(|x| x.as_integer().and_then(|i| usize::try_from(i).ok()))
                                .collect()
                        });
                        let list = list.ok_or_else(|| {
                            (
                                format!("instance {k}: cores must be a list of CPU numbers"),
                                fix.clone(),
                            )
                        })?;
                        if list.len() != t as usize {
                            return Err((
                                format!("instance {k} has threads = {t} but {} cores", list.len()),
                                "give as many cores as threads, or leave cores out".into(),
                            ));
                        }
                        if let Some(allowed) = cores {
                            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                                return Err((
                                    format!("instance {k} uses core {bad}, which is not in cores"),
                                    "use only cores listed in the top-level cores".into(),
                                ));
                            }
                        }
                        Some(list)
                    }
                };
                parts.push((t as usize, b as usize, c));
            }
            Ok(PlanChoice::Explicit(parts))
        }
        other => Err((format!("{other} is not a plan"), fix)),
    }
}
