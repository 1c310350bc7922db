//! `packrat demo`: the README's first command. Starts the real agent on a temporary spool with
//! a built-in model, submits jobs of several batch sizes (and one bad one), prints the plan,
//! each job's latency and where its output is, shows `packrat status`, and stops the agent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use crate::engine::Builtin;
use crate::planner::{profile::ProfileFile, topology, PlanTable};
use crate::profiler::profile_path;
use crate::spool::client::{self, Outcome};
use crate::spool::Folder;
use crate::tensorfile::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "resnet18")]
    model: String,
}

pub fn run(args: &Args) -> Result<i32> {
    let model = args.model.as_str();
    let inputs = Builtin::from_name(model)
        .with_context(|| format!("'{model}' is not a built-in model"))?
        .default_inputs();
    let dir = tempfile::Builder::new()
        .prefix("packrat-demo-")
        .tempdir()?
        .keep();
    let spool = dir.join("spool");
    let state = dir.join("state");
    let config = dir.join("packrat.toml");
    std::fs::write(
        &config,
        format!(
            "spool = \"{}\"\nstate_dir = \"{}\"\n\n[[model]]\nname = \"{model}\"\nsource = \"builtin:{model}\"\nmax_batch = 16\nplan = \"auto\"\nprofile_budget_s = 20\n",
            spool.display(),
            state.display()
        ),
    )?;
    println!("packrat demo — everything lives in {}", dir.display());
    println!(
        "config:\n{}",
        std::fs::read_to_string(&config)?
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("\nstarting the agent (it profiles {model} on this host, then plans; agent log lines are marked │)\n");
    let exe = std::env::current_exe()?;
    let mut agent = Command::new(exe)
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the agent")?;
    let stderr = agent.stderr.take().context("no agent stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("  │ {line}");
        }
    });
    let t0 = Instant::now();
    let status_file = state.join("status.json");
    while !status_file.exists() {
        if let Some(code) = agent.try_wait()? {
            bail!("the agent exited during start-up ({code})");
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let _ = agent.kill();
            bail!("the agent did not become ready in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nagent ready after {:.1} s", t0.elapsed().as_secs_f64());
    print_plans(&state, model)?;
    println!("\nsubmitting jobs of several batch sizes, one at a time, then a malformed one\n");
    let model_dir = spool.join(model);
    let jobs_dir = dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir)?;
    let mut rows = Vec::new();
    for (i, b) in [1i64, 4, 8, 16, 3].into_iter().enumerate() {
        let mut shape = vec![b];
        shape.extend(&inputs[0].shape);
        let x = Tensor::randn(&shape, (Kind::Float, tch::Device::Cpu));
        let path = jobs_dir.join(format!("job{i}-b{b}.npy"));
        tensorfile::write(
            &mut std::fs::File::create(&path)?,
            Format::Npy,
            &[("input".into(), x)],
        )?;
        let t = Instant::now();
        let name = client::submit(&model_dir, &path)?;
        let res = client::wait(&model_dir, &name, Duration::from_secs(300))?;
        rows.push((name, b, t.elapsed(), res));
    }
    // A wrong job: the agent refuses it with a reason and keeps serving.
    let bad = jobs_dir.join("wrong-shape.npy");
    tensorfile::write(
        &mut std::fs::File::create(&bad)?,
        Format::Npy,
        &[(
            "input".into(),
            Tensor::zeros([2, 5], (Kind::Float, tch::Device::Cpu)),
        )],
    )?;
    let name = client::submit(&model_dir, &bad)?;
    let res = client::wait(&model_dir, &name, Duration::from_secs(60))?;
    rows.push((name, 2, Duration::ZERO, res));
    std::thread::sleep(Duration::from_millis(1200));
    println!("\n{:<22} {:>5} {:>10}  result", "job", "batch", "latency");
    for (name, b, dt, res) in &rows {
        match res {
            Outcome::Output(p) => {
                let out = tensorfile::read(p, Format::from_path(p).unwrap_or(Format::Npy), 1 << 30)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                let t = &out[0].tensor;
                let top = t.argmax(-1, false).int64_value(&[0]);
                println!(
                    "{name:<22} {b:>5} {:>7.1} ms  {} shape {:?}, argmax of item 0: {top} (random weights)",
                    dt.as_secs_f64() * 1e3,
                    p.display(),
                    t.size()
                );
            }
            Outcome::Failed(reason) => println!("{name:<22} {b:>5} {:>10}  failed/: {reason}", "-"),
        }
    }
    println!("\n$ packrat status --state-dir {}", state.display());
    let st = Command::new(std::env::current_exe()?)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()?;
    print!("{}", String::from_utf8_lossy(&st.stdout));
    println!("\nstopping the agent with SIGTERM (it finishes the batch in flight, gives back the rest, exits 0)");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let code = agent.wait()?;
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "agent exited: {code}\noutputs: {}  failed: {}",
        Folder::Out.of(&model_dir).display(),
        Folder::Failed.of(&model_dir).display()
    );
    Ok(if code.success() { 0 } else { 1 })
}

/// The plans the agent derived from the profile it just measured, for the demo's batch sizes.
fn print_plans(state: &std::path::Path, model: &str) -> Result<()> {
    let path = profile_path(state, model);
    let pf = ProfileFile::load(&path)?;
    let topo = topology::Topology::detect(&topology::allowed_cpus()?);
    let table = PlanTable::from_curve(&pf.curve()?, &topo, 16)?;
    println!(
        "\nthe plan per batch size on this host's {} cores (from {}):",
        topo.len(),
        path.display()
    );
    println!(
        "  {:>5}  {:>13}  {:>13}  plan (threads × items @ cores)",
        "batch", "predicted ms", "1 instance ms"
    );
    for b in [1, 3, 4, 8, 16] {
        let p = table.for_batch(b);
        let f = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "  {b:>5}  {:>13}  {:>13}  {}",
            f(p.predicted_latency_ms),
            f(p.baseline_latency_ms),
            p.summary()
        );
    }
    Ok(())
}
