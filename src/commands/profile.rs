//! `packrat profile`: measure a configured model on this host (with a progress bar) and cache
//! the profile where the agent will find it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::planner::profile::ProfileFile;
use crate::profiler;
use crate::runtime::plans::profile_key;
use crate::runtime::precision::resolve;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    model: String,
    /// Measure again even when a valid cached profile exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &Args) -> Result<i32> {
    let cfg = Config::load(&args.config)?;
    let mc = cfg
        .models
        .iter()
        .find(|m| m.name == args.model)
        .with_context(|| format!("no model '{}' in {}", args.model, args.config.display()))?;
    tch::set_num_interop_threads(1);
    let topo = Config::model_topology(mc, &cfg.topology()?);
    let model = resolve(mc)?.model;
    let key = profile_key(mc, model.precision, &topo)?;
    let path = profiler::profile_path(&cfg.state_dir, &mc.name);
    if !args.force {
        if let Some(p) = profiler::cached(&cfg.state_dir, &key) {
            println!(
                "valid cached profile: {} (use --force to measure again)",
                path.display()
            );
            print_profile(&p);
            return Ok(0);
        }
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} points, ETA {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = |done: usize, total: usize, eta: Duration, what: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{:.0}s — {what}", eta.as_secs_f64()));
    };
    let t0 = Instant::now();
    let mut p = profiler::measure(
        model,
        &topo,
        mc.max_batch,
        Duration::from_secs_f64(mc.profile_budget_s),
        &mut progress,
    )?;
    bar.finish_and_clear();
    p.key = Some(key);
    p.save(&path)?;
    println!(
        "profiled {} on {} cores in {:.1} s → {}",
        mc.name,
        topo.len(),
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    print_profile(&p);
    Ok(0)
}

fn print_profile(p: &ProfileFile) {
    println!(
        "{:>7} {:>6} {:>11} {:>8}",
        "threads", "batch", "latency_ms", "samples"
    );
    for pt in &p.points {
        println!(
            "{:>7} {:>6} {:>11.2} {:>8}",
            pt.threads,
            pt.batch,
            pt.latency_ms,
            pt.samples.map(|s| s.to_string()).unwrap_or_default()
        );
    }
}
