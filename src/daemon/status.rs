//! The status file (`<state_dir>/status.json`: the agent's pid and start time, its CPU, every
//! model's state) and `metrics.prom` beside it in Prometheus text format, which `packrat
//! status` and node exporters read.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::planner::cpu::{CpuInfo, FEATURES};
use crate::runtime::adapt::REASONS;
use crate::runtime::stats::Histogram;
use crate::runtime::ModelStatus;

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-model gauge's value, if it has one now.
type Gauge = fn(&ModelStatus) -> Option<f64>;

/// What the agent is doing, as `status.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Serving,
    Stopped,
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentState::Serving => "serving",
            AgentState::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The agent process's start time (`/proc/<pid>/stat` field 22, clock ticks since boot):
    /// with the pid it names one process, so a reused pid is not taken for the agent.
    #[serde(default)]
    pub start_time: Option<u64>,
    pub state: AgentState,
    pub updated: String,
    pub config: String,
    /// The CPU the agent runs on and what it can compute fast.
    #[serde(default)]
    pub cpu: Option<CpuInfo>,
    pub models: Vec<ModelStatus>,
    /// How the models share the cores.
    #[serde(default)]
    pub partition: crate::runtime::partition::PartitionStatus,
}

/// A process's start time as `/proc/<pid>/stat` gives it (None where /proc hides it).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Status {
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        // They hold no secrets: `packrat status` and node exporters read them as other users.
        let publish = |name: &str, text: &[u8]| -> Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
            std::io::Write::write_all(&mut tmp, text)?;
            crate::spool::access::set_file_mode(tmp.as_file(), 0o644)?;
            tmp.persist(state_dir.join(name)).map_err(|e| e.error)?;
            Ok(())
        };
        publish("status.json", &serde_json::to_vec_pretty(self)?)?;
        publish("metrics.prom", self.prometheus().as_bytes())
    }

    pub fn read(state_dir: &Path) -> Result<Status> {
        let p = state_dir.join("status.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("no status at {}: is the agent running with this state dir? (pass --state-dir or --config)", p.display())
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a packrat status file", p.display()))
    }

    /// The metrics in Prometheus' text format, by its conventions: `# HELP` and `# TYPE` for
    /// every family, base units (seconds), `_total` counters, histograms, a `build_info`.
    fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<String>| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for x in samples {
                s.push_str(&x);
                s.push('\n');
            }
        };
        family(
            "packrat_build_info",
            "gauge",
            "The running packrat and the engine versions it was built with (always 1).",
            vec![format!(
                "packrat_build_info{{version=\"{}\",libtorch=\"{}\",onnxruntime=\"{}\",openvino=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                crate::LIBTORCH_VERSION,
                crate::engine::ONNXRUNTIME_VERSION,
                crate::engine::OPENVINO_VERSION
            )],
        );
        if let Some(cpu) = &self.cpu {
            let flags: Vec<String> = FEATURES
                .iter()
                .map(|f| format!("{f}=\"{}\"", u8::from(cpu.has(f))))
                .collect();
            family(
                "packrat_cpu_info",
                "gauge",
                "The CPU the agent runs on and the instruction sets that matter for inference (1 = present; always 1).",
                vec![format!(
                    "packrat_cpu_info{{model=\"{}\",vendor=\"{}\",{}}} 1",
                    label(&cpu.model),
                    label(&cpu.vendor),
                    flags.join(",")
                )],
            );
        }
        let per_model = |f: &dyn Fn(&ModelStatus, &str) -> Vec<String>| -> Vec<String> {
            self.models
                .iter()
                .flat_map(|m| f(m, &format!("model=\"{}\"", m.name)))
                .collect()
        };
        family(
            "packrat_jobs_total",
            "counter",
            "Jobs that ended, by outcome (done: an output; failed: a failure record).",
            per_model(&|m, l| {
                vec![
                    format!("packrat_jobs_total{{{l},outcome=\"done\"}} {}", m.jobs_done),
                    format!(
                        "packrat_jobs_total{{{l},outcome=\"failed\"}} {}",
                        m.jobs_failed
                    ),
                ]
            }),
        );
        family(
            "packrat_deadline_jobs_total",
            "counter",
            "Jobs with a deadline, by outcome: on_time and late finished (before or after they were due), expired failed unrun as deadline_exceeded. on_time is the goodput.",
            per_model(&|m, l| {
                let g = &m.deadlines.goodput;
                [("on_time", g.on_time), ("late", g.late), ("expired", g.expired)]
                    .iter()
                    .map(|(o, n)| format!("packrat_deadline_jobs_total{{{l},outcome=\"{o}\"}} {n}"))
                    .collect()
            }),
        );
        family(
            "packrat_lanes",
            "gauge",
            "How many batches may run at once now, each on its own share of the cores (1: one batch over every core).",
            per_model(&|m, l| vec![format!("packrat_lanes{{{l}}} {}", m.concurrency.lanes)]),
        );
        family(
            "packrat_batches_in_flight",
            "gauge",
            "Batches running now.",
            per_model(&|m, l| {
                vec![format!(
                    "packrat_batches_in_flight{{{l}}} {}",
                    m.concurrency.in_flight
                )]
            }),
        );
        family(
            "packrat_lane_batches_total",
            "counter",
            "Batches run on a lane (several batches at once).",
            per_model(&|m, l| {
                vec![format!(
                    "packrat_lane_batches_total{{{l}}} {}",
                    m.concurrency.lane_batches
                )]
            }),
        );
        family(
            "packrat_model_version_info",
            "gauge",
            "The version each model serves (always 1).",
            per_model(&|m, l| {
                vec![format!(
                    "packrat_model_version_info{{{l},version=\"{}\"}} 1",
                    label(&m.versions.serving)
                )]
            }),
        );
        family(
            "packrat_model_versions_loaded",
            "gauge",
            "Versions of the model in memory: the serving one, and one loading or being retired.",
            per_model(&|m, l| {
                vec![format!(
                    "packrat_model_versions_loaded{{{l}}} {}",
                    m.versions.loaded.len()
                )]
            }),
        );
        family(
            "packrat_model_version_swaps_total",
            "counter",
            "Switches to a new version while serving.",
            per_model(&|m, l| {
                vec![format!(
                    "packrat_model_version_swaps_total{{{l}}} {}",
                    m.versions.swaps
                )]
            }),
        );
        family(
            "packrat_model_version_load_failures_total",
            "counter",
            "Versions refused: they failed to load, to take the configured inputs or to run a warm-up batch.",
            per_model(&|m, l| {
                vec![format!(
                    "packrat_model_version_load_failures_total{{{l}}} {}",
                    m.versions.failed_loads
                )]
            }),
        );
        family(
            "packrat_version_jobs_total",
            "counter",
            "Jobs that ended, by the version that ran them and outcome.",
            per_model(&|m, l| {
                m.versions
                    .outcomes
                    .iter()
                    .flat_map(|(v, o)| {
                        let v = label(v);
                        [
                            format!("packrat_version_jobs_total{{{l},version=\"{v}\",outcome=\"done\"}} {}", o.done),
                            format!("packrat_version_jobs_total{{{l},version=\"{v}\",outcome=\"failed\"}} {}", o.failed),
                        ]
                    })
                    .collect()
            }),
        );
        family(
            "packrat_batches_total",
            "counter",
            "Batches run (several jobs may share one).",
            per_model(&|m, l| vec![format!("packrat_batches_total{{{l}}} {}", m.batches)]),
        );
        for (name, help, pick) in [
            (
                "packrat_job_latency_seconds",
                "Time from claiming a job to publishing its output.",
                (|m: &ModelStatus| &m.job_latency) as fn(&ModelStatus) -> &Histogram,
            ),
            (
                "packrat_batch_latency_seconds",
                "Forward time of one batch on its instances.",
                |m: &ModelStatus| &m.batch_latency,
            ),
        ] {
            family(
                name,
                "histogram",
                help,
                per_model(&|m, l| {
                    let h = pick(m);
                    let mut v: Vec<String> = h
                        .cumulative()
                        .into_iter()
                        .map(|(le, c)| format!("{name}_bucket{{{l},le=\"{le}\"}} {c}"))
                        .collect();
                    v.push(format!("{name}_sum{{{l}}} {:.6}", h.sum_s));
                    v.push(format!("{name}_count{{{l}}} {}", h.count));
                    v
                }),
            );
        }
        family(
            "packrat_replans_total",
            "counter",
            "Plan tables adopted while serving, by reason (drift, new_points, mix, reload, schedule, restored).",
            per_model(&|m, l| {
                m.adapt
                    .iter()
                    .flat_map(|a| {
                        REASONS.iter().map(move |r| {
                            format!(
                                "packrat_replans_total{{{l},reason=\"{}\"}} {}",
                                r.name(),
                                a.replans.get(r.name()).copied().unwrap_or(0)
                            )
                        })
                    })
                    .collect()
            }),
        );
        family(
            "packrat_profile_samples_total",
            "counter",
            "Timings folded into the live profile: passive (from serving), active (idle gaps) and explored (batches run on another layout to measure it under load).",
            per_model(&|m, l| {
                m.adapt
                    .iter()
                    .flat_map(|a| {
                        [
                            format!(
                                "packrat_profile_samples_total{{{l},kind=\"passive\"}} {}",
                                a.live.passive_samples
                            ),
                            format!(
                                "packrat_profile_samples_total{{{l},kind=\"active\"}} {}",
                                a.live.active_samples
                            ),
                            format!(
                                "packrat_profile_samples_total{{{l},kind=\"explored\"}} {}",
                                a.live.explored_samples
                            ),
                        ]
                    })
                    .collect()
            }),
        );
        family(
            "packrat_explore_batches_total",
            "counter",
            "Batches run on another layout than the plan's to measure live-profile points under load.",
            per_model(&|m, l| {
                m.adapt
                    .iter()
                    .map(|a| format!("packrat_explore_batches_total{{{l}}} {}", a.explore.batches))
                    .collect()
            }),
        );
        family(
            "packrat_instance_sets_started_total",
            "counter",
            "Instance sets started: ahead of use (warm-up, helper threads) or on the dispatch path in front of a batch (0 after warm-up).",
            per_model(&|m, l| {
                let s = &m.instance_sets_started;
                vec![
                    format!(
                        "packrat_instance_sets_started_total{{{l},when=\"ahead\"}} {}",
                        s.ahead
                    ),
                    format!(
                        "packrat_instance_sets_started_total{{{l},when=\"on_dispatch\"}} {}",
                        s.on_dispatch
                    ),
                ]
            }),
        );
        let gauges: [(&str, &str, Gauge); 11] = [
            (
                "packrat_explore_spent_ratio",
                "What exploration under load cost over the plan's predictions (batches slower than their plan), as a fraction of serving time.",
                |m| m.adapt.as_ref().map(|a| a.explore.spent_pct / 100.0),
            ),
            (
                "packrat_prediction_error_ratio",
                "Median (measured - predicted) / predicted batch latency of recent batches.",
                |m| m.prediction_error_pct.map(|e| e / 100.0),
            ),
            (
                "packrat_live_profile_age_seconds",
                "Time since the live profile's newest sample.",
                |m| m.adapt.as_ref().and_then(|a| a.live_profile_age_s),
            ),
            (
                "packrat_layouts",
                "Instance layouts the plan table uses (each kept warm).",
                |m| m.adapt.as_ref().map(|a| a.menu.layouts as f64),
            ),
            (
                "packrat_layout_menu_loss_ratio",
                "Predicted latency cost of bounding the layouts, against the unbounded plan table.",
                |m| m.adapt.as_ref().map(|a| a.menu.predicted_loss_pct / 100.0),
            ),
            (
                "packrat_jobs_waiting",
                "Jobs seen waiting in incoming/ or held by this agent.",
                |m| Some(m.queue_depth as f64),
            ),
            (
                "packrat_instances",
                "Instances of the plan for max_batch.",
                |m| Some(m.plan_max_batch.instances.len() as f64),
            ),
            (
                "packrat_precision_bf16",
                "1 while the model serves in bf16.",
                |m| Some(f64::from(u8::from(m.precision.in_use == "bf16"))),
            ),
            (
                "packrat_bf16_drift_ratio",
                "Largest bf16-vs-f32 output difference measured, over the largest f32 output.",
                |m| m.precision.bf16_drift,
            ),
            (
                "packrat_spool_disk_full",
                "1 while jobs are held because the spool's disk is full.",
                |m| Some(f64::from(u8::from(m.disk_full))),
            ),
            (
                "packrat_spool_write_blocked",
                "1 while jobs are held because the spool cannot be written.",
                |m| Some(f64::from(u8::from(m.storage_problem.is_some()))),
            ),
        ];
        for (name, help, value) in gauges {
            family(
                name,
                "gauge",
                help,
                per_model(&|m, l| {
                    value(m)
                        .map(|v| format!("{name}{{{l}}} {v}"))
                        .into_iter()
                        .collect()
                }),
            );
        }
        s
    }
}
