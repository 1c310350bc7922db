//! Integration tests: the real `packrat` binary on a temporary spool — files in, real inotify,
//! real signals (SIGTERM, SIGHUP, SIGSTOP, kill -9), sd_notify on a real socket.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use tch::{Kind, Tensor};

const TWO_INSTANCES: &str = "plan = [{ threads = 1, batch = 2 }, { threads = 1, batch = 2 }]";

#[test]
fn every_format_round_trips_and_matches_the_in_process_model() {
    let agent = Agent::start("tiny_cnn", TWO_INSTANCES);
    let x = input("tiny_cnn", 5);
    let want = reference("tiny_cnn", &[x.shallow_clone()]);
    for ext in ["npy", "npz", "safetensors"] {
        let name = agent.submit(
            &format!("job.{ext}"),
            &[("input".into(), x.shallow_clone())],
        );
        let out = agent.wait(&name).unwrap();
        assert_eq!(
            out.extension().unwrap(),
            ext,
            "output keeps the input's format"
        );
        let got = read(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, if ext == "npy" { "input" } else { "output" });
        assert_close(&got[0].1, &want[0].1);
    }
    // Same name again: a new output, nothing overwritten.
    let again = agent.submit("job.npy", &[("input".into(), x.shallow_clone())]);
    assert_ne!(again, "job.npy");
    agent.wait(&again).unwrap();
    assert_eq!(agent.files("out").len(), 4);
}

#[test]
fn multi_input_models_take_inputs_by_name() {
    let agent = Agent::start("two_heads", "");
    let a = Tensor::randn([3, 16], (Kind::Float, tch::Device::Cpu));
    let b = Tensor::randn([3, 8], (Kind::Float, tch::Device::Cpu));
    let want = reference("two_heads", &[a.shallow_clone(), b.shallow_clone()]);
    for ext in ["npz", "safetensors"] {
        // Inputs in the file in the "wrong" order: matched by name.
        let name = agent.submit(
            &format!("pair.{ext}"),
            &[
                ("b".into(), b.shallow_clone()),
                ("a".into(), a.shallow_clone()),
            ],
        );
        let got = read(&agent.wait(&name).unwrap());
        assert_eq!(got.len(), 1);
        assert_close(&got[0].1, &want[0].1);
    }
    let name = agent.submit("only-a.npz", &[("a".into(), a.shallow_clone())]);
    assert!(agent
        .wait(&name)
        .unwrap_err()
        .contains("input 'b' is missing"));
}

#[test]
fn waiting_jobs_are_coalesced_and_split_back_per_job() {
    let agent = Agent::start("tiny_cnn", TWO_INSTANCES);
    // Freeze the agent so that every job is waiting when it looks.
    kill(agent.pid(), Signal::SIGSTOP).unwrap();
    let inputs: Vec<Tensor> = (0..6).map(|i| input("tiny_cnn", 1 + i % 3)).collect();
    let names: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| agent.submit(&format!("c{i}.npy"), &[("input".into(), x.shallow_clone())]))
        .collect();
    kill(agent.pid(), Signal::SIGCONT).unwrap();
    for (name, x) in names.iter().zip(&inputs) {
        let got = read(&agent.wait(name).unwrap());
        assert_close(&got[0].1, &reference("tiny_cnn", &[x.shallow_clone()])[0].1);
    }
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 6);
    let batches = st["models"][0]["batches"].as_u64().unwrap();
    // 12 items with max_batch 8: two batches when all six were waiting.
    assert!(
        batches < 6,
        "jobs were not coalesced: {batches} batches for 6 jobs"
    );
}

#[test]
fn kill_9_mid_job_then_restart_finishes_it_exactly_once() {
    let mut agent = Agent::start("resnet18", "plan = \"baseline\"\nmax_job_bytes = 100000000");
    let name = agent.submit("big.npy", &[("input".into(), input("resnet18", 24))]);
    let t0 = Instant::now();
    while agent.claimed() != [name.clone()] {
        assert!(t0.elapsed() < Duration::from_secs(30), "job never claimed");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(100));
    agent.stop(Signal::SIGKILL);
    assert_eq!(
        agent.files("out"),
        Vec::<String>::new(),
        "killed before the output"
    );
    assert_eq!(agent.claimed(), std::slice::from_ref(&name));
    agent.spawn(&[]);
    let out = agent.wait(&name).unwrap();
    assert_eq!(read(&out)[0].1.size(), [24, 1000]);
    assert_eq!(agent.files("out"), std::slice::from_ref(&name));
    // The input (and its run counter) is retired right after the output is published, and the
    // dead agent's claim folder is gone: only the live agent's remains.
    let t0 = Instant::now();
    while !agent.claimed().is_empty() || agent.files("claims").len() != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "claims/ is not left clean: {:?}",
            agent.files("claims")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(agent.files("failed").is_empty());
    assert!(agent.log().contains("took over 1 claimed job"));
}

#[test]
fn sigterm_finishes_the_batch_in_flight_and_leaves_the_backlog_for_the_next_agent() {
    // max_batch is 8: each 6-item job is a batch of its own.
    let mut agent = Agent::start("resnet18", "plan = \"baseline\"");
    let names: Vec<String> = (0..4)
        .map(|i| {
            agent.submit(
                &format!("d{i}.npy"),
                &[("input".into(), input("resnet18", 6))],
            )
        })
        .collect();
    let t0 = Instant::now();
    while agent.claimed().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    let t0 = Instant::now();
    assert_eq!(agent.stop(Signal::SIGTERM), 0, "{}", agent.log());
    let stop_s = t0.elapsed().as_secs_f64();
    // Nothing is claimed any more; every job is either done or back in incoming/, once.
    assert!(agent.claimed().is_empty());
    let done = agent.files("out");
    let left = agent.files("incoming");
    assert!(
        !done.is_empty() && !left.is_empty(),
        "out {done:?}, incoming {left:?} ({stop_s:.2} s)"
    );
    let mut all: Vec<String> = done.iter().chain(&left).cloned().collect();
    all.sort();
    assert_eq!(all, names);
    agent.spawn(&[]);
    for n in &names {
        agent.wait(n).unwrap();
    }
    assert_eq!(agent.files("out"), names);
}

#[test]
fn sd_notify_ready_watchdog_reload_and_stopping() {
    let mut notify = NotifySocket::bind();
    let mut agent = Agent::start_with("tiny_cnn", "", &[notify.env(), ("WATCHDOG_USEC", "400000")]);
    notify.recv_until("READY=1");
    assert!(
        notify.seen.iter().any(|m| m.starts_with("STATUS=")),
        "{:?}",
        notify.seen
    );
    notify.recv_until("WATCHDOG=1");
    let pos = |want: &str| {
        notify
            .seen
            .iter()
            .position(|m| m.lines().any(|l| l == want))
    };
    assert!(pos("WATCHDOG=1") > pos("READY=1"), "{:?}", notify.seen);
    notify.seen.clear();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    notify.recv_until("RELOADING=1");
    notify.recv_until("READY=1");
    assert!(notify.seen.iter().any(|m| m.contains("MONOTONIC_USEC=")));
    notify.seen.clear();
    kill(agent.pid(), Signal::SIGTERM).unwrap();
    notify.recv_until("STOPPING=1");
    assert_eq!(agent.child.take().unwrap().wait().unwrap().code(), Some(0));
}

#[test]
fn instances_are_pinned_and_keep_their_own_thread_counts() {
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs, has {cpus:?}");
    let (c0, c1) = (cpus[0], cpus[1]);
    let agent = Agent::start(
        "tiny_cnn",
        &format!(
            "plan = [{{ threads = 1, batch = 1, cores = [{c1}] }}, {{ threads = 1, batch = 1, cores = [{c0}] }}]"
        ),
    );
    let st = agent.status();
    let insts = st["models"][0]["instances"].as_array().unwrap().clone();
    assert_eq!(insts.len(), 2);
    let tasks = task_cpus(agent.pid());
    for inst in &insts {
        assert_eq!(
            inst["observed_threads"], 1,
            "libtorch inside the instance thread sees its own count"
        );
        let tid = inst["tid"].as_i64().unwrap() as i32;
        let (_, comm, cpus) = tasks
            .iter()
            .find(|t| t.0 == tid)
            .expect("instance thread exists");
        assert!(comm.starts_with("pr-m-"), "{comm}");
        let core = inst["cores"][0].as_u64().unwrap().to_string();
        assert_eq!(cpus, &core);
        for t in tasks.iter().filter(|t| &t.1 == comm) {
            assert_eq!(t.2, core, "thread {} of instance {comm} left its core", t.0);
        }
    }
    let mut cores: Vec<u64> = insts
        .iter()
        .map(|i| i["cores"][0].as_u64().unwrap())
        .collect();
    cores.sort();
    assert_eq!(cores, [c0 as u64, c1 as u64]);
    drop(agent);

    // Baseline: one instance with every allowed core; its OpenMP workers stay inside its mask.
    let agent = Agent::start("resnet18", "plan = \"baseline\"");
    let st = agent.status();
    let inst = &st["models"][0]["instances"][0];
    assert_eq!(inst["observed_threads"], cpus.len());
    let mask = packrat::planner::cores_str(&cpus);
    let tasks = task_cpus(agent.pid());
    let (_, comm, cpus) = tasks
        .iter()
        .find(|t| t.0 == inst["tid"].as_i64().unwrap() as i32)
        .unwrap();
    assert_eq!(cpus, &mask);
    // Threads started from inside the instance (libgomp workers) inherit its name and its mask.
    let family: Vec<_> = tasks.iter().filter(|t| &t.1 == comm).collect();
    assert!(
        family.len() >= 2,
        "expected OpenMP workers beside the instance thread: {tasks:?}"
    );
    assert!(family.iter().all(|t| t.2 == mask), "{family:?}");
}

fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b
}

#[test]
fn bad_inputs_land_in_failed_with_a_reason_and_the_agent_keeps_serving() {
    let agent = Agent::start("tiny_cnn", "");
    let inc = agent.model_dir().join("incoming");
    let good = fs::read(write_job(
        &agent.dir.path().join("good.npy"),
        &[("x".into(), input("tiny_cnn", 2))],
    ))
    .unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let f64_job = fs::read(write_job(
        &agent.dir.path().join("f64.npy"),
        &[("x".into(), input("tiny_cnn", 1).to_kind(Kind::Double))],
    ))
    .unwrap();
    let mut huge = npy_header("<f4", "(4000000000, 3, 32, 32)");
    huge.extend_from_slice(&[0u8; 128]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated.npy", truncated, "truncated"),
        ("dtype.npy", f64_job, "dtype float64"),
        (
            "shape.npy",
            npy_header("<f4", "(2, 5)")
                .into_iter()
                .chain([0u8; 40])
                .collect(),
            "has shape [2, 5]",
        ),
        ("huge.npy", huge, "truncated"),
        ("empty.npy", Vec::new(), "empty"),
        ("notes.txt", b"hello".to_vec(), "no known extension"),
        ("bad zip.npz", b"PK not really".to_vec(), "not a valid .npz"),
        (
            "ünïcode bad.safetensors",
            vec![255u8; 12],
            "header declares",
        ),
    ];
    for (name, bytes, _) in &cases {
        let tmp = agent.model_dir().join("tmp").join(name);
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, inc.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(agent.dir.path().join("good.npy"), inc.join("link.npy")).unwrap();
    fs::create_dir(inc.join("dir.npy")).unwrap();
    nix::unistd::mkfifo(&inc.join("fifo.npy"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // In-progress names are never touched.
    fs::write(inc.join(".hidden.npy"), &good).unwrap();
    fs::write(inc.join("upload.npy.part"), &good).unwrap();
    let mut expect: Vec<(String, &str)> = cases
        .iter()
        .map(|(n, _, why)| (n.to_string(), *why))
        .collect();
    expect.push(("link.npy".into(), "symbolic link"));
    expect.push(("dir.npy".into(), "a directory"));
    expect.push(("fifo.npy".into(), "a FIFO"));
    for (name, why) in &expect {
        let reason = agent.wait(name).unwrap_err();
        assert!(reason.contains(why), "{name}: '{reason}' lacks '{why}'");
        // The record is written first (it is the client's signal, and a crash after it
        // leaves the job recoverable), the input moved right after it.
        let kept = agent.model_dir().join("failed").join(name);
        let t0 = Instant::now();
        while kept.symlink_metadata().is_err() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(kept.symlink_metadata().is_ok(), "{name} kept in failed/");
        let rec: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(
                agent
                    .model_dir()
                    .join("failed")
                    .join(format!("{name}.error.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(rec["time"].as_str().unwrap().ends_with('Z') && rec["error"].is_string());
    }
    // Still serving, including names with spaces and unicode.
    let ok = agent.submit(
        "späce ✓ name.npy",
        &[("input".into(), input("tiny_cnn", 2))],
    );
    assert!(agent.wait(&ok).unwrap().ends_with("out/späce ✓ name.npy"));
    assert!(inc.join(".hidden.npy").exists() && inc.join("upload.npy.part").exists());
    assert!(
        nix::sys::signal::kill(agent.pid(), None).is_ok(),
        "agent alive"
    );
}

#[test]
fn a_bad_config_is_refused_with_the_field_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = "builtin:tiny_cnn";
    let cases = [
        (tiny, "max_job_bytes = 0", "model[0].max_job_bytes"),
        ("builtin:nope", "", "there is no built-in model 'nope'"),
        ("relative/model.pt", "input = [3]", "model[0].source"),
        (tiny, "plan = \"fastest\"", "model[0].plan"),
        (tiny, "inptu = [3]", "unknown field"),
        (tiny, "input = [3, 0]", "model[0].input"),
        (
            tiny,
            "plan = [{ threads = 1, batch = 1, core = [0] }]",
            "unknown field `core`",
        ),
    ];
    let file = dir.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let spool = dir.path().join("spool");
    let n = allowed_cpus().len();
    let too_many = format!(
        "cores = \"0-{}\"",
        allowed_cpus().iter().max().unwrap() + 64
    );
    let wide = format!("plan = [{{ threads = {}, batch = 1 }}]", n + 1);
    let mut all: Vec<(&Path, &str, &str, &str, &str)> = cases
        .iter()
        .map(|&(source, extra, want)| (spool.as_path(), "", source, extra, want))
        .collect();
    all.extend([
        (spool.as_path(), too_many.as_str(), tiny, "", "cores"),
        (spool.as_path(), "", tiny, wide.as_str(), "model[0].plan"),
        (file.as_path(), "", tiny, "", "spool"),
        (
            spool.as_path(),
            "state_dir = \"rel/state\"",
            tiny,
            "",
            "state_dir",
        ),
    ]);
    for (spool, top, source, extra, want) in all {
        let cfg = dir.path().join("bad.toml");
        let mut text = config_on_spool(dir.path(), spool, top, source, extra);
        if top.starts_with("state_dir") {
            text = text.replacen("state_dir", "# state_dir", 1);
        }
        fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_packrat"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{top} {extra}: {err}");
        assert!(err.contains(want) && err.contains("fix:"), "{extra}: {err}");
        assert!(
            !err.contains("libc10") && !err.contains("frame #"),
            "a C++ backtrace: {err}"
        );
    }
}

#[test]
fn sighup_applies_a_new_plan_and_refuses_a_bad_config_without_dropping_jobs() {
    let agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    let x = input("tiny_cnn", 4);
    let n1 = agent.submit("before.npy", &[("input".into(), x.shallow_clone())]);
    agent.wait(&n1).unwrap();
    // Reconfigure to two instances while jobs keep arriving.
    fs::write(
        &agent.config,
        config_text(agent.dir.path(), "tiny_cnn", TWO_INSTANCES),
    )
    .unwrap();
    let mut names = Vec::new();
    for i in 0..20 {
        if i == 5 {
            kill(agent.pid(), Signal::SIGHUP).unwrap();
        }
        names.push(agent.submit(
            &format!("during{i}.npy"),
            &[("input".into(), x.shallow_clone())],
        ));
        std::thread::sleep(Duration::from_millis(10));
    }
    for n in &names {
        agent.wait(n).unwrap();
    }
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 21);
    assert_eq!(st["models"][0]["plan_source"], "config");
    assert_eq!(
        st["models"][0]["last_plan"]["instances"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A broken config is refused; the agent keeps the running one and keeps serving.
    fs::write(&agent.config, "spool = 5\n").unwrap();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let n2 = agent.submit("after.npy", &[("input".into(), x.shallow_clone())]);
    agent.wait(&n2).unwrap();
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 22);
    assert!(agent.log().contains("reload refused"), "{}", agent.log());
    assert_eq!(st["models"][0]["plan_source"], "config");
}

#[test]
fn a_python_client_writes_npy_and_reads_the_output() {
    let python = std::env::var("PACKRAT_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let agent = Agent::start("tiny_cnn", "");
    let script = r#"
import numpy as np, os, sys, time, json
d = sys.argv[1]
x = np.random.default_rng(7).standard_normal((3, 3, 32, 32)).astype(np.float32)
np.save(os.path.join(d, "tmp", "client.npy"), x)
np.save(os.path.join(sys.argv[2]), x)
os.rename(os.path.join(d, "tmp", "client.npy"), os.path.join(d, "incoming", "client.npy"))
out = os.path.join(d, "out", "client.npy")
t0 = time.time()
while not os.path.exists(out):
    assert time.time() - t0 < 60, "no output"
    time.sleep(0.01)
y = np.load(out)
print(json.dumps({"shape": list(y.shape), "dtype": str(y.dtype)}))
"#;
    let copy = agent.dir.path().join("sent.npy");
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(agent.model_dir())
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}): run the tests through packaging/test.sh, which sets up numpy"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shape"], serde_json::json!([3, 10]));
    assert_eq!(v["dtype"], "float32");
    let sent = read(&copy);
    let got = read(&agent.model_dir().join("out/client.npy"));
    assert_close(
        &got[0].1,
        &reference("tiny_cnn", &[sent[0].1.shallow_clone()])[0].1,
    );
}

#[test]
fn auto_plan_profiles_before_ready_then_reuses_the_cached_profile() {
    let mut notify = NotifySocket::bind();
    let mut agent = Agent::start_with(
        "tiny_cnn",
        "plan = \"auto\"\nprofile_budget_s = 10",
        &[notify.env()],
    );
    notify.recv_until("READY=1");
    let msgs = &notify.seen;
    let extend = msgs
        .iter()
        .position(|m| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .expect("EXTEND_TIMEOUT_USEC sent");
    let ready = msgs.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        extend < ready
            && msgs[..ready]
                .iter()
                .any(|m| m.starts_with("STATUS=profiling")),
        "{msgs:?}"
    );
    let profile = agent.state().join("profiles/m.json");
    let pf = packrat::planner::profile::ProfileFile::load(&profile).unwrap();
    assert!(pf.co_located && pf.key.is_some() && pf.curve().is_ok());
    let st = agent.status();
    assert_eq!(st["models"][0]["plan_source"], "profile");
    assert!(
        st["models"][0]["plan_max_batch"]["predicted_latency_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let x = input("tiny_cnn", 5);
    let name = agent.submit("auto.npy", &[("input".into(), x.shallow_clone())]);
    assert_close(
        &read(&agent.wait(&name).unwrap())[0].1,
        &reference("tiny_cnn", &[x])[0].1,
    );
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
    let measured_at = fs::metadata(&profile).unwrap().modified().unwrap();
    agent.spawn(&[]);
    assert!(
        agent.log().contains("using the cached profile"),
        "{}",
        agent.log()
    );
    assert_eq!(
        fs::metadata(&profile).unwrap().modified().unwrap(),
        measured_at,
        "not measured again"
    );
}

#[test]
fn the_submit_command_waits_and_reports_failures() {
    let mut agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    let good = write_job(
        &agent.dir.path().join("good.npy"),
        &[("x".into(), input("tiny_cnn", 2))],
    );
    let bad = agent.dir.path().join("bad.npy");
    fs::write(&bad, b"not numpy").unwrap();
    let spool = agent.dir.path().join("spool");
    let run = |f: &Path| {
        Command::new(env!("CARGO_BIN_EXE_packrat"))
            .arg("submit")
            .arg("--spool")
            .arg(&spool)
            .args(["--model", "m", "--wait"])
            .arg(f)
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = PathBuf::from(String::from_utf8_lossy(&ok.stdout).trim());
    assert!(out.starts_with(agent.model_dir().join("out")) && out.exists());
    let again = run(&good);
    let out2 = PathBuf::from(String::from_utf8_lossy(&again.stdout).trim());
    assert_ne!(
        out, out2,
        "a second submission of the same file gets its own output"
    );
    // Exit codes a script can tell apart: 65 a failed job, 75 a timeout, 2 a usage error.
    let failed = run(&bad);
    assert_eq!(failed.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("np.save"));
    let wrong = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .arg("submit")
        .arg("--spool")
        .arg(&spool)
        .args(["--model", "nope"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        !wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("no incoming/")
    );
    let usage = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .arg("submit")
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    agent.stop(Signal::SIGTERM);
    let late = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .arg("submit")
        .arg("--spool")
        .arg(&spool)
        .args(["--model", "m", "--wait", "--timeout", "0.3"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(late.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&late.stderr).contains("is the agent running"));
}

#[test]
fn a_reload_never_profiles_while_serving() {
    let agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    fs::write(
        &agent.config,
        config_text(agent.dir.path(), "tiny_cnn", "plan = \"auto\""),
    )
    .unwrap();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    let t0 = Instant::now();
    while !agent.log().contains("keeps its plan") {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.log().contains("no valid cached profile"));
    assert!(
        !agent.state().join("profiles/m.json").exists(),
        "nothing was measured"
    );
    let name = agent.submit("still.npy", &[("input".into(), input("tiny_cnn", 2))]);
    agent.wait(&name).unwrap();
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 1);
    assert_eq!(st["models"][0]["plan_source"], "baseline");
}

#[test]
fn status_tells_a_dead_agent_from_a_live_one_within_a_second() {
    let mut agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    let state = agent.state();
    let status = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_packrat"));
        c.args(["status", "--state-dir"]).arg(&state);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let live = status(false);
    let said = String::from_utf8_lossy(&live.stdout);
    assert_eq!(live.status.code(), Some(0), "{said}");
    // The CPU and its features are on show.
    assert!(said.contains("cpu "), "{said}");
    let pid = agent.pid().as_raw();
    agent.stop(Signal::SIGKILL);
    // Its last status (rewritten every second) still says "serving" and is fresh: the pid
    // decides, at once.
    let t0 = Instant::now();
    let dead = status(false);
    let said = String::from_utf8_lossy(&dead.stdout);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(dead.status.code(), Some(3), "{said}");
    assert!(
        said.contains(&format!("not running (pid {pid} is gone; last update ")),
        "{said}"
    );
    let json = status(true);
    assert_eq!(json.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["alive"], false);
    assert!(
        v["not_running"].as_str().unwrap().contains("is gone"),
        "{v}"
    );
    assert!(v["start_time"].as_u64().is_some(), "{v}");

    // A pid reused by another process: a live pid, but not the agent's start time.
    let path = state.join("status.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    st["pid"] = std::process::id().into();
    st["start_time"] = 1.into();
    std::fs::write(&path, st.to_string()).unwrap();
    let reused = status(false);
    let said = String::from_utf8_lossy(&reused.stdout);
    assert_eq!(reused.status.code(), Some(3), "{said}");
    assert!(said.contains("is another process now"), "{said}");
    // A live agent (this process stands in, with its own start time) whose status stopped
    // moving hangs: the file's age says so.
    let own = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = own[own.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    st["start_time"] = start.into();
    std::fs::write(&path, st.to_string()).unwrap();
    assert_eq!(status(false).status.code(), Some(0), "fresh and alive");
    assert!(Command::new("touch")
        .args(["-d", "30 seconds ago"])
        .arg(&path)
        .status()
        .unwrap()
        .success());
    let hung = status(false);
    let said = String::from_utf8_lossy(&hung.stdout);
    assert_eq!(hung.status.code(), Some(3), "{said}");
    assert!(
        said.contains("30 s old") || said.contains("s old"),
        "{said}"
    );
}

#[test]
fn metrics_follow_prometheus_conventions() {
    let agent = Agent::start("tiny_cnn", "plan = \"baseline\"");
    let name = agent.submit("x.npy", &[("input".into(), input("tiny_cnn", 2))]);
    agent.wait(&name).unwrap();
    let path = agent.state().join("metrics.prom");
    let done = "packrat_jobs_total{model=\"m\",outcome=\"done\"} 1";
    let t0 = Instant::now();
    let text = loop {
        let text = fs::read_to_string(&path).unwrap_or_default();
        if text.contains(done) || t0.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
    // Every sample belongs to a family announced with # HELP and # TYPE.
    let mut families = std::collections::HashMap::new();
    for l in text.lines().filter(|l| !l.starts_with("# HELP ")) {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_string(), kind.to_string());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        } else {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                families.contains_key(family),
                "sample without a family: {l}"
            );
        }
    }
    for (name, kind) in &families {
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
        assert!(!name.ends_with("_ms"), "base units: {name}");
    }
    assert!(
        text.contains("packrat_jobs_total{model=\"m\",outcome=\"done\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("packrat_job_latency_seconds_bucket{model=\"m\",le=\"+Inf\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("packrat_job_latency_seconds_count{model=\"m\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "packrat_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}
