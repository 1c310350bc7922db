//! Agent overhead and memory, for builtin:resnet18 at B=1 and B=8 on the baseline plan (one
//! instance, all cores).
//!
//! Overhead = mean job time (rename into incoming/ → output visible) − the agent's mean forward
//! time over the same batches (from `status.json`'s `batches` and `batch_ms_sum` counters). A
//! forward timed in *this* process is shown for reference, interleaved with the jobs; it is not
//! subtracted, because the two processes' OpenMP workers spin-wait after each forward and slow
//! each other down.
//! Then peak RSS of the agent with 1 and with 2 instances. Run: `cargo bench --bench overhead`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use packrat::daemon::status::Status;
use packrat::engine::{Builtin, Model, ModelSource, Precision};
use packrat::planner::stats::percentile;
use packrat::tensorfile::{self, Format};
use tch::{Kind, Tensor};

const ROUNDS: usize = 25;

/// Starts the agent and waits for its status file.
fn start(dir: &Path, plan: &str) -> Child {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "spool = \"{0}/spool\"\nstate_dir = \"{0}/state\"\n[[model]]\nname = \"r\"\nsource = \"builtin:resnet18\"\nmax_batch = 8\nplan = {plan}\n",
            dir.display()
        ),
    )
    .expect("write config");
    let _ = std::fs::remove_file(dir.join("state/status.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn agent");
    let t0 = Instant::now();
    while !dir.join("state/status.json").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The agent's (batches, sum of batch forward ms) once it reports at least `at_least` batches.
fn agent_batches(state: &Path, at_least: u64) -> (u64, f64) {
    let t0 = Instant::now();
    loop {
        if let Ok(st) = Status::read(state) {
            let m = &st.models[0];
            if m.batches >= at_least {
                return (m.batches, m.batch_ms_sum);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no status update");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut c: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = c.wait();
}

fn vm_hwm_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// rename into incoming/ → output visible, in ms.
fn job_ms(model_dir: &Path, job: &Path, k: usize) -> f64 {
    let name = format!("j{k}.npy");
    let tmp = model_dir.join("tmp").join(&name);
    std::fs::copy(job, &tmp).expect("copy job");
    let out: PathBuf = model_dir.join("out").join(&name);
    let t0 = Instant::now();
    std::fs::rename(&tmp, model_dir.join("incoming").join(&name)).expect("rename");
    while !out.exists() {
        std::thread::sleep(Duration::from_micros(50));
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_file(out);
    ms
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b18 = Builtin::Resnet18;
    let model = Model::load(
        "r",
        &ModelSource::Builtin(b18),
        b18.default_inputs(),
        Precision::F32,
    )
    .expect("load resnet18");
    let agent = start(dir.path(), "\"baseline\"");
    let state = dir.path().join("state");
    let mut batches_so_far = 0;
    let model_dir = dir.path().join("spool/r");
    // In-process: same plan as the agent's baseline (one instance, both cores, pinned).
    let cpus = packrat::planner::topology::allowed_cpus().expect("cpus");
    let mut set = nix::sched::CpuSet::new();
    for &c in &cpus {
        set.set(c).expect("cpu");
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin");
    let _ = tch::get_num_threads();
    tch::set_num_threads(cpus.len() as i32);
    println!("agent overhead, builtin:resnet18, baseline plan, {ROUNDS} rounds (means; overhead = job − the agent's forward)");
    println!(
        "{:>3} {:>12} {:>14} {:>14} {:>12} {:>18}",
        "B", "job ms", "agent fwd ms", "overhead ms", "target ms", "this-process fwd"
    );
    for b in [1i64, 8] {
        let x = Tensor::randn([b, 3, 224, 224], (Kind::Float, tch::Device::Cpu));
        let job = dir.path().join(format!("in{b}.npy"));
        let mut f = std::fs::File::create(&job).expect("job file");
        tensorfile::write(&mut f, Format::Npy, &[("input".into(), x.shallow_clone())])
            .expect("write job");
        for k in 0..3 {
            model.forward(&[x.shallow_clone()]).expect("warm");
            job_ms(&model_dir, &job, 1000 + b as usize * 100 + k);
        }
        batches_so_far += 3;
        let (n0, sum0) = agent_batches(&state, batches_so_far);
        let (mut fwd, mut jobs) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let t0 = Instant::now();
            model.forward(&[x.shallow_clone()]).expect("forward");
            fwd.push(t0.elapsed().as_secs_f64() * 1e3);
            jobs.push(job_ms(&model_dir, &job, b as usize * 100 + r));
        }
        batches_so_far = n0 + ROUNDS as u64;
        let (n1, sum1) = agent_batches(&state, batches_so_far);
        let inner = (sum1 - sum0) / (n1 - n0) as f64;
        let mean_job = jobs.iter().sum::<f64>() / jobs.len() as f64;
        println!(
            "{b:>3} {mean_job:>12.2} {inner:>14.2} {:>14.2} {:>12.2} {:>15.2} ms",
            mean_job - inner,
            1.0 + 0.01 * inner,
            percentile(fwd, 50.0).unwrap_or(f64::NAN)
        );
    }
    println!(
        "peak RSS (VmHWM), agent with 1 instance: {:.0} MiB",
        vm_hwm_mib(agent.id())
    );
    stop(agent);
    let agent2 = start(
        dir.path(),
        "[{ threads = 1, batch = 4 }, { threads = 1, batch = 4 }]",
    );
    let job = dir.path().join("in8.npy");
    for k in 0..5 {
        job_ms(&model_dir, &job, 2000 + k);
    }
    println!(
        "peak RSS (VmHWM), agent with 2 instances: {:.0} MiB (one shared model copy)",
        vm_hwm_mib(agent2.id())
    );
    stop(agent2);
}
