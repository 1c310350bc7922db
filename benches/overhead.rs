//! Agent overhead and memory: the time from a job file's rename into incoming/ to its output
//! appearing, minus the in-process forward time of the same batch on the same plan (one
//! instance, both cores), for builtin:resnet18 at B=1 and B=8; interleaved in rounds because
//! these machines drift. Then peak RSS of the agent with 1 and with 2 instances.
//! Run: `cargo bench --bench overhead`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use packrat::model::{builtin_inputs, Model};
use packrat::status::percentile;
use packrat::tensorfile::{self, Format};
use tch::{Kind, Tensor};

const ROUNDS: usize = 25;

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
        .stderr(Stdio::null())
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
    let agent = start(dir.path(), "\"baseline\"");
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
    println!("agent overhead, builtin:resnet18, {} rounds interleaved (in-process forward, then agent job)", ROUNDS);
    println!(
        "{:>3} {:>14} {:>14} {:>14} {:>12}",
        "B", "forward ms", "agent ms", "overhead ms", "target ms"
    );
    for b in [1i64, 8] {
        let x = Tensor::randn([b, 3, 224, 224], (Kind::Float, tch::Device::Cpu));
        let job = dir.path().join(format!("in{b}.npy"));
        tensorfile::write(
            &mut std::fs::File::create(&job).expect("job"),
            Format::Npy,
            &[("input".into(), x.shallow_clone())],
        )
        .expect("write");
        for k in 0..3 {
            model.forward(&[x.shallow_clone()]).expect("warm");
            job_ms(&model_dir, &job, 1000 + k);
        }
        let (mut fwd, mut agt) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let t0 = Instant::now();
            model.forward(&[x.shallow_clone()]).expect("forward");
            fwd.push(t0.elapsed().as_secs_f64() * 1e3);
            agt.push(job_ms(&model_dir, &job, r));
        }
        let f = percentile(fwd, 50.0).unwrap_or(f64::NAN);
        let a = percentile(agt, 50.0).unwrap_or(f64::NAN);
        println!(
            "{b:>3} {f:>14.2} {a:>14.2} {:>14.2} {:>12.2}",
            a - f,
            1.0 + 0.01 * f
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
