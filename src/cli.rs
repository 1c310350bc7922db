//! The `packrat` command line: `serve` (the daemon), `submit`, `status`, `plan`, `profile`,
//! `bench` and `demo`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, EX_CONFIG};
use crate::planner::profile::ProfileFile;
use crate::planner::topology::Topology;
use crate::planner::{cores_str, dp, plan_from, Plan};
use crate::status::Status;
use crate::tensorfile::Format;

#[derive(Parser)]
#[command(
    name = "packrat",
    version,
    about = "Serve PyTorch models on CPU from a spool directory, with the instance/thread/batch split chosen per host"
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
    Submit {
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        model: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        wait: bool,
        /// Seconds to wait for each job with --wait.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
    /// Show models, plans, instances, queues and latencies of a running agent.
    Status {
        #[arg(long, conflicts_with = "config")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Plan from a latency profile: instances, threads, sub-batches and cores for a batch.
    Plan {
        #[arg(long)]
        profile: PathBuf,
        #[arg(long)]
        cores: usize,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        json: bool,
        /// Print a table for every batch 1..=BATCH, with the baseline and the reference DP.
        #[arg(long)]
        sweep: bool,
    },
    /// Profile a configured model on this host and cache the profile.
    Profile {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        model: String,
        /// Measure again even when a valid cached profile exists.
        #[arg(long)]
        force: bool,
    },
    /// Baseline ⟨1, T, B⟩ against the planned split, interleaved in rounds.
    Bench(crate::bench::BenchArgs),
    /// The guided tour: an agent on a temporary spool with a built-in model.
    Demo {
        #[arg(long, default_value = "resnet18")]
        model: String,
    },
}

pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(if std::env::var_os("JOURNAL_STREAM").is_some() {
            None
        } else {
            Some(env_logger::TimestampPrecision::Millis)
        })
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve { config } => return crate::daemon::serve(&config),
        Cmd::Submit {
            spool,
            model,
            files,
            wait,
            timeout,
        } => submit(
            &spool,
            &model,
            &files,
            wait,
            Duration::from_secs_f64(timeout),
        ),
        Cmd::Status {
            state_dir,
            config,
            json,
        } => status(state_dir, config, json),
        Cmd::Plan {
            profile,
            cores,
            batch,
            json,
            sweep,
        } => plan(&profile, cores, batch, json, sweep),
        Cmd::Profile {
            config,
            model,
            force,
        } => profile(&config, &model, force),
        Cmd::Bench(args) => crate::bench::run(&args),
        Cmd::Demo { model } => crate::demo::run(&model),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("packrat: {e:#}");
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                EX_CONFIG
            } else {
                1
            }
        }
    }
}

/// Where the outcome of a submitted job will appear.
pub fn outcome_paths(model_dir: &Path, name: &str) -> (Vec<PathBuf>, PathBuf) {
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
    let outs = ["npy", "npz", "safetensors"]
        .iter()
        .map(|e| model_dir.join("out").join(format!("{stem}.{e}")))
        .collect();
    (
        outs,
        model_dir.join("failed").join(format!("{name}.error.json")),
    )
}

/// Copies `file` into the spool under a name nothing else uses; returns that name.
pub fn submit_one(model_dir: &Path, file: &Path) -> Result<String> {
    if Format::from_path(file).is_none() {
        bail!(
            "{}: job files must end in .npy, .npz or .safetensors",
            file.display()
        );
    }
    let base = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file name is not valid UTF-8")?;
    let (stem, ext) = base.rsplit_once('.').unwrap_or((base, ""));
    for k in 0..10_000 {
        let name = if k == 0 {
            base.to_string()
        } else {
            format!("{stem}~{k}.{ext}")
        };
        let (outs, failed) = outcome_paths(model_dir, &name);
        let taken = ["incoming", "processing", "failed", "done"]
            .iter()
            .any(|d| model_dir.join(d).join(&name).exists())
            || outs.iter().any(|p| p.exists())
            || failed.exists();
        if taken {
            continue;
        }
        let tmp = model_dir.join("tmp").join(format!(".{name}.part"));
        std::fs::copy(file, &tmp)
            .with_context(|| format!("cannot copy {} into {}", file.display(), tmp.display()))?;
        let dest = model_dir.join("incoming").join(&name);
        match nix::fcntl::renameat2(
            None,
            &tmp,
            None,
            &dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => return Ok(name),
            Err(nix::errno::Errno::EEXIST) => {
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                bail!("cannot rename into {}: {e}", dest.display());
            }
        }
    }
    bail!("no free job name for {}", file.display())
}

/// Waits for a job's output (Ok(path)) or failure record (Err(reason)).
pub fn wait_for(
    model_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<Result<PathBuf, String>> {
    let (outs, failed) = outcome_paths(model_dir, name);
    let t0 = Instant::now();
    loop {
        if let Some(p) = outs.iter().find(|p| p.exists()) {
            return Ok(Ok(p.clone()));
        }
        if failed.exists() {
            let text = std::fs::read_to_string(&failed).unwrap_or_default();
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .unwrap_or(text);
            return Ok(Err(reason));
        }
        if t0.elapsed() > timeout {
            bail!(
                "{name}: no output after {:.0} s: is the agent running (systemctl status packrat)?",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn submit(
    spool: &Path,
    model: &str,
    files: &[PathBuf],
    wait: bool,
    timeout: Duration,
) -> Result<i32> {
    let dir = spool.join(model);
    if !dir.join("incoming").is_dir() {
        bail!(
            "{} has no incoming/: is '{model}' a model of the agent serving {}?",
            dir.display(),
            spool.display()
        );
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| submit_one(&dir, f))
        .collect::<Result<_>>()?;
    if !wait {
        for n in &names {
            println!("{}", dir.join("incoming").join(n).display());
        }
        return Ok(0);
    }
    let mut code = 0;
    for n in &names {
        match wait_for(&dir, n, timeout)? {
            Ok(p) => println!("{}", p.display()),
            Err(reason) => {
                eprintln!("{n}: failed: {reason}");
                code = 2;
            }
        }
    }
    Ok(code)
}

fn status(state_dir: Option<PathBuf>, config: Option<PathBuf>, json: bool) -> Result<i32> {
    let dir = match (state_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => Config::load(&c)?.state_dir,
        (None, None) => Config::load(Path::new("/etc/packrat/packrat.toml"))
            .map(|c| c.state_dir)
            .unwrap_or_else(|_| PathBuf::from("/var/lib/packrat")),
    };
    let st = Status::read(&dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(0);
    }
    println!(
        "packrat pid {} — {} (updated {}, config {})",
        st.pid, st.state, st.updated, st.config
    );
    for m in &st.models {
        let ms = |x: Option<f64>| {
            x.map(|v| format!("{v:.1} ms"))
                .unwrap_or_else(|| "-".into())
        };
        println!("\nmodel {} ({}) spool {}", m.name, m.source, m.spool);
        println!(
            "  jobs: {} done, {} failed, {} queued; {} batches; latency p50 {} p99 {}",
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
        if let Some(e) = m.prediction_error_pct {
            println!("  measured vs predicted batch latency: {e:+.1}% (median of recent batches)");
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
    Ok(0)
}

fn plan(profile: &Path, cores: usize, batch: usize, json: bool, sweep: bool) -> Result<i32> {
    let pf = ProfileFile::load(profile)?;
    let curve = pf
        .curve()
        .with_context(|| format!("profile {}", profile.display()))?;
    if cores == 0 || batch == 0 {
        bail!("--cores and --batch must be >= 1");
    }
    if cores > pf.cores.max(curve.max_threads()) {
        bail!(
            "the profile was measured on {} cores; plan for --cores {} or fewer",
            pf.cores,
            pf.cores
        );
    }
    let topo = Topology::flat(cores);
    let t0 = Instant::now();
    let sol = dp::solve(&curve, cores, batch);
    let solve_ms = t0.elapsed().as_secs_f64() * 1e3;
    if sweep {
        println!(
            "{:>5}  {:>10}  {:>10}  {:>10}  {:>7}  {:>7}  plan",
            "batch", "planned", "baseline", "reference", "vs base", "vs ref"
        );
        for b in 1..=batch {
            let p = plan_from(&sol, &curve, &topo, b)?;
            let pred = p.predicted_latency_ms.unwrap_or(f64::NAN);
            let base = p.baseline_latency_ms;
            let reference = dp::reference(&curve, cores, b).map(|r| r.0);
            let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            let r = |x: Option<f64>| {
                x.map(|v| format!("{:.2}x", v / pred))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{b:>5}  {:>10.2}  {:>10}  {:>10}  {:>7}  {:>7}  {}",
                pred,
                f(base),
                f(reference),
                r(base),
                r(reference),
                p.summary()
            );
        }
        return Ok(0);
    }
    let p: Plan = plan_from(&sol, &curve, &topo, batch)?;
    if json {
        let v = serde_json::json!({
            "batch": p.batch,
            "cores": p.cores,
            "predicted_latency_ms": p.predicted_latency_ms,
            "baseline_latency_ms": p.baseline_latency_ms,
            "instances": p.instances,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "model {} ({} cores profiled), batch {batch} on {cores} cores — solved in {solve_ms:.2} ms",
        pf.model, pf.cores
    );
    for (i, inst) in p.instances.iter().enumerate() {
        println!(
            "  instance {i}: {:>2} threads, {:>4} items, cores {}",
            inst.threads,
            inst.batch,
            cores_str(&inst.cores)
        );
    }
    let pred = p.predicted_latency_ms.unwrap_or(f64::NAN);
    println!("  predicted latency: {pred:.2} ms");
    match p.baseline_latency_ms {
        Some(b) => println!("  baseline ⟨1, {cores}, {batch}⟩: {b:.2} ms  → predicted speedup {:.2}x", b / pred),
        None => println!("  baseline ⟨1, {cores}, {batch}⟩: not in the profile ({cores} threads were not measured)"),
    }
    Ok(0)
}

fn profile(config: &Path, model: &str, force: bool) -> Result<i32> {
    let cfg = Config::load(config)?;
    let mc = cfg
        .models
        .iter()
        .find(|m| m.name == model)
        .with_context(|| format!("no model '{model}' in {}", config.display()))?
        .clone();
    tch::set_num_interop_threads(1);
    let topo = crate::daemon::usable_topology(&cfg)?;
    let m = std::sync::Arc::new(crate::model::Model::load(
        &mc.name,
        &mc.source,
        mc.inputs.clone(),
    )?);
    let key = crate::planner::profiler::profile_key(&mc, &topo)?;
    if !force {
        if let Some(p) = crate::planner::profiler::cached(&cfg.state_dir, &key) {
            println!(
                "valid cached profile: {} (use --force to measure again)",
                crate::planner::profiler::profile_path(&cfg.state_dir, model).display()
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
    let mut p = crate::planner::profiler::measure(
        m,
        &topo,
        mc.max_batch,
        Duration::from_secs_f64(mc.profile_budget_s),
        &mut progress,
    )?;
    bar.finish_and_clear();
    p.key = Some(key);
    let path = crate::planner::profiler::profile_path(&cfg.state_dir, model);
    p.save(&path)?;
    println!(
        "profiled {model} on {} cores in {:.1} s → {}",
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
