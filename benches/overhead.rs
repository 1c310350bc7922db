//! Agent overhead and memory, for builtin:resnet18 at B=1 and B=8 on the baseline plan (one
//! instance, all cores).
//!
//! Overhead of a job = (rename into incoming/ → output visible) − (the forward pass of that
//! same batch, timed inside the agent, from its debug log). A forward timed in *this* process
//! is shown for reference, interleaved with the jobs; it is not subtracted, because the two
//! processes' OpenMP workers spin-wait after each forward and slow each other down.
//! Then peak RSS of the agent with 1 and with 2 instances. Run: `cargo bench --bench overhead`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use packrat::model::{builtin_inputs, Model};
use packrat::status::percentile;
use packrat::tensorfile::{self, Format};
use tch::{Kind, Tensor};

const ROUNDS: usize = 25;

/// Starts the agent; the receiver yields each batch's forward time (ms) from its debug log.
fn start(dir: &Path, plan: &str) -> (Child, mpsc::Receiver<f64>) {
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
        .env("RUST_LOG", "packrat::queue=debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut child = child;
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ms = line
                .split(" ran in ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(ms) = ms {
                let _ = tx.send(ms);
            }
        }
    });
    let t0 = Instant::now();
    while !dir.join("state/status.json").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, rx)
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
    let spec = builtin_inputs("resnet18").expect("builtin");
    let model = Model::load("r", "builtin:resnet18", spec).expect("load resnet18");
    let (agent, forwards) = start(dir.path(), "\"baseline\"");
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
    println!("agent overhead, builtin:resnet18, baseline plan, {ROUNDS} rounds (medians; overhead = job − the agent's forward of that batch)");
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
        while forwards.try_recv().is_ok() {}
        let (mut fwd, mut jobs, mut agent_fwd, mut over) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let t0 = Instant::now();
            model.forward(&[x.shallow_clone()]).expect("forward");
            fwd.push(t0.elapsed().as_secs_f64() * 1e3);
            let job = job_ms(&model_dir, &job, b as usize * 100 + r);
            let inner = forwards
                .recv_timeout(Duration::from_secs(10))
                .expect("forward time in the agent log");
            jobs.push(job);
            agent_fwd.push(inner);
            over.push(job - inner);
        }
        let med = |v: Vec<f64>| percentile(v, 50.0).unwrap_or(f64::NAN);
        let inner = med(agent_fwd);
        println!(
            "{b:>3} {:>12.2} {inner:>14.2} {:>14.2} {:>12.2} {:>15.2} ms",
            med(jobs),
            med(over),
            1.0 + 0.01 * inner,
            med(fwd)
        );
    }
    println!(
        "peak RSS (VmHWM), agent with 1 instance: {:.0} MiB",
        vm_hwm_mib(agent.id())
    );
    stop(agent);
    let (agent2, _forwards2) = start(
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
