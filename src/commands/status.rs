//! `packrat status`: what a running agent's status file says, for people or (`--json`) scripts.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::{defaults, Config};
use crate::daemon::status::{AgentState, Status};

use crate::planner::cores_str;

/// A status older than this (it is rewritten every second) means the agent hangs.
const STALE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the agent that wrote `st` is not serving now (None: it is). The pid decides:
/// `kill(pid, 0)` tells a dead process (ESRCH) from a live one, even one of another user
/// (EPERM) whose /proc entry may be hidden; where /proc shows the pid, its start time tells
/// the agent from a process that reused the pid. A live agent whose status is stale hangs.
/// The file's age alone decides only where the pid cannot be asked.
fn not_running(st: &Status, age: std::time::Duration) -> Option<String> {
    use nix::errno::Errno;
    if st.state != AgentState::Serving {
        return Some(format!("it {}", st.state));
    }
    let pid = i32::try_from(st.pid).ok().map(nix::unistd::Pid::from_raw)?;
    match nix::sys::signal::kill(pid, None) {
        Err(Errno::ESRCH) => return Some(format!("pid {} is gone", st.pid)),
        Ok(()) | Err(Errno::EPERM) => {
            let now = crate::daemon::status::process_start_time(st.pid);
            if let (Some(was), Some(now)) = (st.start_time, now) {
                if was != now {
                    return Some(format!("pid {} is another process now", st.pid));
                }
            }
        }
        Err(_) => {}
    }
    (age >= STALE).then(|| {
        format!(
            "its status is {:.0} s old: it hangs or died; see journalctl -u packrat",
            age.as_secs_f64()
        )
    })
}

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
    let age = std::fs::metadata(dir.join("status.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    let dead = not_running(&st, age);
    let alive = dead.is_none();
    let code = if alive { 0 } else { super::exit::NOT_RUNNING };
    if args.json {
        let mut v = serde_json::to_value(&st)?;
        v["alive"] = alive.into();
        v["status_age_s"] = age.as_secs_f64().into();
        v["not_running"] = dead.clone().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    if let Some(why) = dead.filter(|_| st.state == AgentState::Serving) {
        println!(
            "packrat pid {}: not running ({why}; last update {})",
            st.pid, st.updated
        );
        return Ok(code);
    }
    println!(
        "packrat pid {} — {} (updated {}, config {})",
        st.pid, st.state, st.updated, st.config
    );
    if let Some(cpu) = &st.cpu {
        println!(
            "cpu {}: {}{}",
            cpu.model,
            cpu.features_str(),
            if cpu.native_bf16() {
                " (bf16 units)"
            } else {
                " (no bf16 units: bf16 serves as f32)"
            }
        );
    }
    let ms = |x: Option<f64>| {
        x.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    for m in &st.models {
        println!("\nmodel {} ({}) spool {}", m.name, m.source, m.spool);
        if let Some(p) = &m.storage_problem {
            println!("  JOBS HELD: {p}");
        }
        print_versions(&m.versions);
        println!(
            "  jobs: {} done, {} failed, {} waiting; {} batches; latency p50 {} p99 {}",
            m.jobs_done,
            m.jobs_failed,
            m.queue_depth,
            m.batches,
            ms(m.latency_p50_ms),
            ms(m.latency_p99_ms)
        );
        let d = &m.deadlines;
        let g = &d.goodput;
        let with_deadline = g.on_time + g.late + g.expired;
        if d.deadline_ms.is_some() || with_deadline > 0 {
            let deadline = d
                .deadline_ms
                .map_or_else(|| "set by job names".into(), |ms| format!("{ms} ms"));
            let share = if with_deadline > 0 {
                format!(
                    " ({:.1} % on time)",
                    g.on_time as f64 * 100.0 / with_deadline as f64
                )
            } else {
                String::new()
            };
            println!(
                "  deadlines ({deadline}, on_deadline = {}): {} on time, {} late ({} started late), {} expired unrun{share}",
                d.on_deadline.name(),
                g.on_time,
                g.late,
                g.started_late,
                g.expired
            );
        }
        let sh = &m.share;
        if !sh.partition.is_empty() {
            println!(
                "  cores ({} partition, weight {}, min_cores {}): {}; {:.1} jobs/s, predicted {}",
                sh.partition,
                sh.weight,
                sh.min_cores,
                match &sh.cores {
                    None => "every core".to_string(),
                    Some(c) if c.is_empty() => "none while it has no work".to_string(),
                    Some(c) => crate::planner::cores_str(c),
                },
                sh.arrival_rate,
                sh.predicted_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms per job"))
            );
        }
        let c = &m.concurrency;
        if c.lanes > 1 || c.lane_batches > 0 {
            let predicted: Vec<String> = c
                .predicted_ms
                .iter()
                .map(|(k, ms)| match ms {
                    Some(ms) => format!("{k} lane(s) {ms:.1} ms"),
                    None => format!("{k} lane(s) cannot keep up"),
                })
                .collect();
            println!(
                "  concurrent batches ({}): {} lane(s) now, {} in flight (at most {}), {} lane batches, {} switches; at {:.1} jobs/s{}",
                c.setting,
                c.lanes,
                c.in_flight,
                c.max_in_flight,
                c.lane_batches,
                c.switches,
                c.arrival_rate,
                if predicted.is_empty() {
                    String::new()
                } else {
                    format!(" predicted {}", predicted.join(", "))
                }
            );
        }
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
        let speed = p
            .bf16_speedup
            .map(|x| format!("; bf16 {x:.2}× as fast as f32"))
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
            "  engine {}, precision {} ({} requested{tolerance}){drift}{speed}{checked}",
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
                "  live profile: {} points, {} measured while serving ({} passive + {} idle-gap + {} explored samples), {age}",
                a.live.points,
                a.live.points_measured,
                a.live.passive_samples,
                a.live.active_samples,
                a.live.explored_samples
            );
            let x = &a.explore;
            if x.batches > 0 {
                let filled: Vec<String> = x
                    .points_filled
                    .iter()
                    .map(|(t, b)| format!("(t={t}, b={b})"))
                    .collect();
                println!(
                    "  explored under load: {} batches, {:+.0} ms against the plan ({:.2} % of serving time spent, budget {} %); points filled: {}",
                    x.batches,
                    x.cost_ms,
                    x.spent_pct,
                    x.budget_pct,
                    if filled.is_empty() { "none".into() } else { filled.join(", ") }
                );
            }
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
                "  instance tid {:>7}: {} threads on cores {} ({} reports {})",
                i.tid,
                i.threads,
                cores_str(&i.cores),
                m.engine,
                i.observed_threads
            );
        }
    }
    Ok(code)
}

/// `version 3 (loaded: 3, 4); 2 swaps, last 2 -> 3 (loaded in 1.2 s); 1 refused, last: ...`
fn print_versions(v: &crate::runtime::lifecycle::VersionsStatus) {
    let mut line = format!("  version {} (loaded: {})", v.serving, v.loaded.join(", "));
    if let Some(l) = &v.loading {
        line.push_str(&format!("; loading {l}"));
    }
    if let Some(s) = &v.last_swap {
        line.push_str(&format!(
            "; {} swap(s), last {} -> {} at {} ({:.1} s to load)",
            v.swaps,
            s.from,
            s.to,
            s.at,
            s.load_ms / 1e3
        ));
    }
    println!("{line}");
    if let Some(f) = &v.last_failed_load {
        println!(
            "  refused versions: {}; last: version {} ({}) at {}: {}",
            v.failed_loads, f.version, f.source, f.at, f.reason
        );
    }
    let per: Vec<String> = v
        .outcomes
        .iter()
        .map(|(k, o)| format!("{k}: {} done, {} failed", o.done, o.failed))
        .collect();
    if per.len() > 1 {
        println!("  jobs per version: {}", per.join("; "));
    }
}
