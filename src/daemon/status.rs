//! The status file (`<state_dir>/status.json`) and `metrics.prom` beside it in Prometheus text
//! format, which `packrat status` and node exporters read.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::runtime::ModelStatus;

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
    pub state: AgentState,
    pub updated: String,
    pub config: String,
    pub models: Vec<ModelStatus>,
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

    fn prometheus(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# TYPE packrat_jobs_done_total counter\n# TYPE packrat_jobs_failed_total counter\n",
        );
        s.push_str("# TYPE packrat_queue_depth gauge\n# TYPE packrat_job_latency_ms gauge\n# TYPE packrat_instances gauge\n");
        s.push_str("# TYPE packrat_precision_bf16 gauge\n# TYPE packrat_bf16_drift_ratio gauge\n");
        s.push_str("# HELP packrat_spool_disk_full 1 while jobs are held because the spool's disk is full.\n# TYPE packrat_spool_disk_full gauge\n");
        s.push_str("# HELP packrat_spool_write_blocked 1 while jobs are held because the spool cannot be written.\n# TYPE packrat_spool_write_blocked gauge\n");
        for m in &self.models {
            let l = format!("model=\"{}\"", m.name);
            s.push_str(&format!("packrat_jobs_done_total{{{l}}} {}\n", m.jobs_done));
            s.push_str(&format!(
                "packrat_jobs_failed_total{{{l}}} {}\n",
                m.jobs_failed
            ));
            s.push_str(&format!("packrat_queue_depth{{{l}}} {}\n", m.queue_depth));
            s.push_str(&format!(
                "packrat_instances{{{l}}} {}\n",
                m.plan_max_batch.instances.len()
            ));
            s.push_str(&format!(
                "packrat_precision_bf16{{{l}}} {}\n",
                u8::from(m.precision.in_use == "bf16")
            ));
            s.push_str(&format!(
                "packrat_spool_disk_full{{{l}}} {}\npackrat_spool_write_blocked{{{l}}} {}\n",
                u8::from(m.disk_full),
                u8::from(m.storage_problem.is_some())
            ));
            if let Some(d) = m.precision.bf16_drift {
                s.push_str(&format!("packrat_bf16_drift_ratio{{{l}}} {d:.6}\n"));
            }
            for (q, v) in [("0.5", m.latency_p50_ms), ("0.99", m.latency_p99_ms)] {
                if let Some(v) = v {
                    s.push_str(&format!(
                        "packrat_job_latency_ms{{{l},quantile=\"{q}\"}} {v:.3}\n"
                    ));
                }
            }
        }
        s
    }
}
