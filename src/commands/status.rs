//! `packrat status`: what a running agent's status file says, for people or (`--json`) scripts.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::{defaults, Config};
use crate::daemon::status::{AgentState, Status};

/// A status older than this (it is rewritten every second) means the agent is gone.
const STALE: std::time::Duration = std::time::Duration::from_secs(10);
use crate::planner::cores_str;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, conflicts_with = "config")]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<i32> {
    let dir = match (&args.state_dir, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => Config::load(c)?.state_dir,
        (None, None) => Config::load(Path::new("/etc/packrat/packrat.toml"))
            .map(|c| c.state_dir)
            .unwrap_or_else(|_| PathBuf::from(defaults::STATE_DIR)),
    };
    let st = Status::read(&dir)?;
    // A serving agent rewrites its status every second; one that stopped saying so is dead (or
    // hung). The file's age, not its pid: /proc may hide the agent from other users.
    let age = std::fs::metadata(dir.join("status.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    let alive = st.state == AgentState::Serving && age < STALE;
    let code = if alive { 0 } else { super::exit::NOT_RUNNING };
    if args.json {
        let mut v = serde_json::to_value(&st)?;
        v["alive"] = alive.into();
        v["status_age_s"] = age.as_secs_f64().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    if st.state == AgentState::Serving && !alive {
        println!(
            "packrat pid {}: NOT RUNNING — its status is {:.0} s old (it was serving); it died or hangs: see journalctl -u packrat",
            st.pid,
            age.as_secs_f64()
        );
        return Ok(code);
    }
    println!(
        "packrat pid {} — {} (updated {}, config {})",
        st.pid, st.state, st.updated, st.config
    );
    let ms = |x: Option<f64>| {
        x.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    for m in &st.models {
        println!("\nmodel {} ({}) spool {}", m.name, m.source, m.spool);
        if let Some(p) = &m.storage_problem {
            println!("  JOBS HELD: {p}");
        }
        println!(
            "  jobs: {} done, {} failed, {} waiting; {} batches; latency p50 {} p99 {}",
            m.jobs_done,
            m.jobs_failed,
            m.queue_depth,
            m.batches,
            ms(m.latency_p50_ms),
            ms(m.latency_p99_ms)
        );
        println!(
            "  plan ({:?}) at max_batch {}: {}  predicted {}",
            m.plan_source,
            m.max_batch,
            m.plan_max_batch.summary(),
            ms(m.plan_max_batch.predicted_latency_ms)
        );
        if let Some(p) = &m.last_plan {
            println!(
                "  last batch ({}): {}  predicted {}",
                p.batch,
                p.summary(),
                ms(p.predicted_latency_ms)
            );
        }
        let p = &m.precision;
        let drift = p
            .bf16_drift
            .map(|d| format!("; bf16 drift from f32 {:.3} %", d * 100.0))
            .unwrap_or_default();
        let checked = if p.jobs_checked > 0 {
            format!(" ({} real jobs checked)", p.jobs_checked)
        } else {
            String::new()
        };
        let tolerance = p
            .tolerance
            .map(|t| format!(", tolerance {:.2} %", t * 100.0))
            .unwrap_or_default();
        println!(
            "  engine {}, precision {} ({} requested{tolerance}){drift}{checked}",
            m.engine, p.in_use, p.requested
        );
        if let Some(why) = &p.reason {
            println!("    why: {why}");
        }
        if let Some(e) = m.prediction_error_pct {
            println!("  measured vs predicted batch latency: {e:+.1}% (median of recent batches)");
        }
        if let Some(a) = &m.adapt {
            let age = a
                .live_profile_age_s
                .map(|s| format!("newest sample {s:.0} s ago"))
                .unwrap_or_else(|| "nothing measured yet".into());
            println!(
                "  live profile: {} points, {} measured while serving ({} passive + {} idle-gap samples), {age}",
                a.live.points, a.live.points_measured, a.live.passive_samples, a.live.active_samples
            );
            let counts: Vec<String> = a.replans.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let last = a
                .last_replan
                .as_ref()
                .map(|r| {
                    format!(
                        "; last: {}, {:.0} s ago, predicted {:+.1} %",
                        r.reason.name(),
                        (crate::runtime::adapt::unix_now() - r.at).max(0.0),
                        r.predicted_change_pct
                    )
                })
                .unwrap_or_default();
            println!(
                "  re-plans: {}{last}",
                if counts.is_empty() {
                    "none".into()
                } else {
                    counts.join(", ")
                }
            );
            println!(
                "  layouts kept warm: {} of the unbounded table's {} ({} instances), predicted cost {:.2} %; idle-gap bound {:.1} ms, {} points to measure ({} too slow for the bound: learnt from serving)",
                a.menu.layouts,
                a.menu.unbounded_layouts,
                a.menu.instances,
                a.menu.predicted_loss_pct,
                a.probe_bound_ms,
                a.points_pending,
                a.points_too_slow
            );
        }
        println!(
            "  instance sets started: {} ahead of use, {} on the dispatch path",
            m.instance_sets_started.ahead, m.instance_sets_started.on_dispatch
        );
        if !m.static_shapes.is_empty() {
            let kept: Vec<String> = m
                .static_shapes
                .iter()
                .filter(|s| s.kept)
                .map(|s| {
                    format!(
                        "{}t×{} ({:.0} %)",
                        s.threads,
                        s.batch,
                        (s.ratio - 1.0) * 100.0
                    )
                })
                .collect();
            println!(
                "  static shapes: {} of {} sub-batch sizes weighed run faster static{}",
                kept.len(),
                m.static_shapes.len(),
                if kept.is_empty() {
                    String::new()
                } else {
                    format!(": {}", kept.join(", "))
                }
            );
        }
        for i in &m.instances {
            println!(
                "  instance tid {:>7}: {} threads on cores {} (libtorch sees {})",
                i.tid,
                i.threads,
                cores_str(&i.cores),
                i.observed_threads
            );
        }
    }
    Ok(code)
}
