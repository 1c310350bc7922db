//! Model versions and models changing while the agent serves: version folders renamed into
//! place, config edits with SIGHUP, pinned versions, broken versions, models added and
//! removed — each under a steady stream of jobs from a client thread, on the real binary.
//! Every job must end exactly once, on a version whose clean result it equals, and the output
//! must name that version.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use nix::sys::signal::{kill, Signal};
use packrat::spool::client::{self, Outcome};
use tch::{Kind, Tensor};

const F32: (Kind, tch::Device) = (Kind::Float, tch::Device::Cpu);

/// Version k's weights: k · 0.5 sin(0..31) as [8, 4] (make_onnx.py writes the same).
fn weights(k: u64) -> Tensor {
    let w: Vec<f32> = (0..32).map(|i| (0.5 * (i as f64).sin()) as f32).collect();
    Tensor::from_slice(&w).view([8, 4]) * (k as f64)
}

/// The clean result of version k on `x`.
fn expected(x: &Tensor, k: u64) -> Tensor {
    x.matmul(&weights(k)).tanh()
}

/// A TorchScript file of version k: traced tanh(x @ W_k), taking [N, `width`].
fn write_pt(path: &Path, k: u64, width: i64) {
    let w = if width == 8 {
        weights(k)
    } else {
        Tensor::ones([width, 4], F32)
    };
    let m = tch::no_grad(|| {
        tch::CModule::create_by_tracing(
            "lin",
            "forward",
            &[Tensor::zeros([1, width], F32)],
            &mut |xs| vec![xs[0].matmul(&w).tanh()],
        )
    })
    .unwrap();
    m.save(path).unwrap();
}

/// Makes version `n` appear as a client should: written under a hidden name, then renamed.
fn publish_version(dir: &Path, n: u64, write: impl FnOnce(&Path)) {
    let tmp = dir.join(format!(".{n}.tmp"));
    fs::create_dir_all(&tmp).unwrap();
    write(&tmp);
    fs::rename(&tmp, dir.join(n.to_string())).unwrap();
}

fn pt_version(dir: &Path, n: u64) {
    publish_version(dir, n, |d| write_pt(&d.join("model.pt"), n, 8));
}

/// The version an output names (its extended attribute).
fn version_of(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = c"user.packrat.version";
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and buf is as long as passed.
    let n = unsafe {
        nix::libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n > 0, "{} names no version", path.display());
    String::from_utf8(buf[..n as usize].to_vec()).unwrap()
}

fn input_of(i: usize) -> Tensor {
    let v: Vec<f32> = (0..16)
        .map(|j| ((i * 16 + j) as f32 * 0.37).cos())
        .collect();
    Tensor::from_slice(&v).view([2, 8])
}

/// A client thread that submits a job every `every` until stopped: (name, input index,
/// submitted at) per job.
struct Load {
    stop: Arc<AtomicBool>,
    jobs: Arc<Mutex<Vec<(String, usize, Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(model_dir: PathBuf, scratch: PathBuf, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let (s, j) = (stop.clone(), jobs.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !s.load(Ordering::SeqCst) {
                let path = write_job(
                    &scratch.join(format!("j{i:05}.npy")),
                    &[("input".into(), input_of(i))],
                );
                let name = client::submit(&model_dir, &path).unwrap();
                j.lock().unwrap().push((name, i, Instant::now()));
                i += 1;
                std::thread::sleep(every);
            }
        });
        Load {
            stop,
            jobs,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<(String, usize, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.jobs.lock().unwrap().clone()
    }
}

/// Every job's output: its path and the version it names. Panics on a failed job.
fn outcomes(agent: &Agent, jobs: &[(String, usize, Instant)]) -> Vec<(PathBuf, String)> {
    jobs.iter()
        .map(
            |(name, _, _)| match client::wait(&agent.model_dir(), name, Duration::from_secs(60)) {
                Ok(Outcome::Output(p)) => {
                    let v = version_of(&p);
                    (p, v)
                }
                Ok(Outcome::Failed(why)) => panic!("job {name} failed: {why}\n{}", agent.log()),
                Err(e) => panic!("job {name}: {e}\n{}", agent.log()),
            },
        )
        .collect()
}

/// The longest time between two consecutive outputs.
fn longest_gap(paths: &[PathBuf]) -> Duration {
    let mut t: Vec<SystemTime> = paths
        .iter()
        .map(|p| fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    t.sort();
    t.windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .max()
        .unwrap_or_default()
}

fn serving(st: &serde_json::Value) -> String {
    st["models"][0]["versions"]["serving"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits (up to 60 s) until the agent serves `version`; returns when it saw it.
fn await_serving(agent: &Agent, version: &str) -> Instant {
    let t0 = Instant::now();
    loop {
        let st = fs::read_to_string(agent.state().join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if st.as_ref().is_some_and(|s| serving(s) == version) {
            return Instant::now();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never served version {version}: {st:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn versioned_config(agent: &Agent, versions: &Path, extra: &str) {
    fs::write(
        &agent.config,
        config_with_source(
            agent.dir.path(),
            &versions.display().to_string(),
            &format!("input = [8]\n{extra}"),
        ),
    )
    .unwrap();
}

/// An agent on a folder of versions holding version 1 (a TorchScript file).
fn versioned_agent(extra: &str) -> (Agent, PathBuf) {
    let root = tempfile::tempdir().unwrap().keep();
    let versions = root.join("versions");
    fs::create_dir_all(&versions).unwrap();
    pt_version(&versions, 1);
    let agent = Agent::start_source(
        &versions.display().to_string(),
        &format!("input = [8]\n{extra}"),
    );
    (agent, versions)
}

#[test]
fn ten_swaps_under_load_by_folder_and_by_sighup_lose_no_job_and_never_pause() {
    let (agent, versions) = versioned_agent("plan = \"auto\"\nprofile_budget_s = 3");
    let pid = agent.pid();
    await_serving(&agent, "1");
    let load = Load::start(
        agent.model_dir(),
        agent.dir.path().to_path_buf(),
        Duration::from_millis(8),
    );
    std::thread::sleep(Duration::from_millis(300));
    // (version now serving, when the test saw it serve) in order; 3 serves twice.
    let mut seen: Vec<(String, Instant)> = vec![("1".into(), Instant::now())];
    let hup = || kill(pid, Signal::SIGHUP).unwrap();
    let swap = |v: u64, seen: &mut Vec<(String, Instant)>| {
        let at = await_serving(&agent, &v.to_string());
        seen.push((v.to_string(), at));
        std::thread::sleep(Duration::from_millis(250));
    };
    // 1–5: new folders, seen by inotify.
    for n in 2..=6 {
        pt_version(&versions, n);
        swap(n, &mut seen);
    }
    // 6: pin an older version by a config edit and SIGHUP (a rollback).
    versioned_config(&agent, &versions, "version = 3");
    hup();
    swap(3, &mut seen);
    // While pinned, new folders are not served.
    pt_version(&versions, 7);
    pt_version(&versions, 8);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(serving(&agent.status()), "3", "{}", agent.log());
    // 7, 8: pin forward.
    for n in [7, 8] {
        versioned_config(&agent, &versions, &format!("version = {n}"));
        hup();
        swap(n, &mut seen);
    }
    // 9: unpin, with 9 waiting: the highest serves.
    pt_version(&versions, 9);
    versioned_config(&agent, &versions, "");
    hup();
    swap(9, &mut seen);
    // 10: a folder again.
    pt_version(&versions, 10);
    swap(10, &mut seen);
    let jobs = load.stop();
    let outs = outcomes(&agent, &jobs);

    assert!(jobs.len() > 200, "only {} jobs", jobs.len());
    assert!(
        agent.files("failed").is_empty(),
        "{:?}",
        agent.files("failed")
    );
    assert_eq!(agent.files("out").len(), jobs.len(), "one outcome per job");
    for ((name, i, submitted), (path, v)) in jobs.iter().zip(&outs) {
        // The output is version v's clean result...
        let k: u64 = v.parse().unwrap();
        let got = read(path).remove(0).1;
        assert!(
            got.allclose(&expected(&input_of(*i), k), 1e-5, 1e-5, false),
            "{name}: not version {v}'s result"
        );
        // ...and v serves at or after the last swap seen before the job was submitted.
        let since = seen
            .iter()
            .rposition(|(_, at)| at <= submitted)
            .unwrap_or(0);
        assert!(
            seen[since..].iter().any(|(s, _)| s == v),
            "{name}, submitted after version {} served, ran on version {v}",
            seen[since].0
        );
    }
    let per_version: BTreeMap<&str, usize> = outs.iter().fold(BTreeMap::new(), |mut m, (_, v)| {
        *m.entry(v.as_str()).or_default() += 1;
        m
    });
    for v in ["1", "2", "3", "6", "7", "8", "9", "10"] {
        assert!(
            per_version.contains_key(v),
            "no job ran on {v}: {per_version:?}"
        );
    }
    assert!(!per_version.contains_key("11"));
    // No pause: a restart takes seconds; a swap must not show as a gap in the outputs.
    let gap = longest_gap(&outs.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());
    assert!(
        gap < Duration::from_millis(1000),
        "outputs paused for {gap:?}"
    );
    // One process throughout; status counts it all.
    assert_eq!(agent.pid(), pid);
    let st = agent.status_when(|s| {
        s["models"][0]["versions"]["outcomes"]
            .as_object()
            .is_some_and(|o| {
                o.values()
                    .map(|x| x["done"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == jobs.len() as u64
            })
    });
    let vs = &st["models"][0]["versions"];
    let log = agent.log();
    let swaps: Vec<&str> = log.lines().filter(|l| l.contains("now serving")).collect();
    assert_eq!(vs["swaps"], 10, "{vs}\n{}", swaps.join("\n"));
    assert_eq!(vs["failed_loads"], 0, "{vs}");
    assert_eq!(vs["loaded"].as_array().map(Vec::len), Some(1), "{vs}");
    assert!(
        log.contains("starts from version 1's live profile"),
        "a same-shaped version inherits the live profile: {log}"
    );
    let metrics = fs::read_to_string(agent.state().join("metrics.prom")).unwrap();
    assert!(
        metrics.contains("packrat_model_version_info{model=\"m\",version=\"10\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("packrat_model_version_swaps_total{model=\"m\"} 10"),
        "{metrics}"
    );
}

#[test]
fn broken_versions_are_refused_with_the_reason_and_the_old_one_serves_on() {
    let (agent, versions) = versioned_agent("plan = \"baseline\"");
    await_serving(&agent, "1");
    let load = Load::start(
        agent.model_dir(),
        agent.dir.path().to_path_buf(),
        Duration::from_millis(10),
    );
    let refused = |n: u64, failed: u64| {
        let st = agent
            .status_when(|s| s["models"][0]["versions"]["failed_loads"].as_u64() == Some(failed));
        let vs = &st["models"][0]["versions"];
        assert_eq!(vs["serving"], "1", "{vs}");
        assert_eq!(vs["last_failed_load"]["version"], n.to_string(), "{vs}");
        vs["last_failed_load"]["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Garbage bytes.
    publish_version(&versions, 2, |d| {
        fs::write(d.join("model.pt"), b"not a model").unwrap()
    });
    let why = refused(2, 1);
    assert!(why.contains("TorchScript"), "{why}");
    // A model that takes [N, 5] where the config says [8].
    publish_version(&versions, 3, |d| write_pt(&d.join("model.pt"), 3, 5));
    let why = refused(3, 2);
    assert!(why.contains("warm-up"), "{why}");
    // A folder with no model file.
    publish_version(&versions, 4, |d| {
        fs::write(d.join("README"), b"soon").unwrap()
    });
    let why = refused(4, 3);
    assert!(why.contains("no model file"), "{why}");
    // Half-written in place: a folder, an empty file, then the rest — each change is looked
    // at again (the folder may be seen before its file), the last one serves.
    fs::create_dir(versions.join("5")).unwrap();
    fs::write(versions.join("5/model.pt"), b"").unwrap();
    let st = agent.status_when(|s| {
        s["models"][0]["versions"]["last_failed_load"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("model.pt is empty"))
    });
    let failed = st["models"][0]["versions"]["failed_loads"]
        .as_u64()
        .unwrap();
    assert!((4..=5).contains(&failed), "{st}");
    // Refused as it is: not retried on every rescan (every 200 ms).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        agent.status()["models"][0]["versions"]["failed_loads"],
        failed,
        "{}",
        agent.log()
    );
    write_pt(&versions.join("5/model.pt"), 5, 8);
    await_serving(&agent, "5");
    std::thread::sleep(Duration::from_millis(200));
    let jobs = load.stop();
    let outs = outcomes(&agent, &jobs);
    assert!(
        agent.files("failed").is_empty(),
        "{:?}",
        agent.files("failed")
    );
    for ((name, i, _), (path, v)) in jobs.iter().zip(&outs) {
        assert!(v == "1" || v == "5", "{name} ran on {v}");
        let got = read(path).remove(0).1;
        assert!(got.allclose(
            &expected(&input_of(*i), v.parse().unwrap()),
            1e-5,
            1e-5,
            false
        ));
    }
    let log = agent.log();
    for n in 2..=5 {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("version {n} (")) && l.contains("refused"))
            .unwrap_or_else(|| panic!("no refusal of version {n}: {log}"));
        assert!(line.contains("WARN") || line.contains("<4>"), "{line}");
        assert!(
            line.contains(&versions.join(n.to_string()).display().to_string()),
            "{line}"
        );
    }
    let metrics = fs::read_to_string(agent.state().join("metrics.prom")).unwrap();
    assert!(
        metrics.contains(&format!(
            "packrat_model_version_load_failures_total{{model=\"m\"}} {failed}"
        )),
        "{metrics}"
    );
}

/// Two swaps under load on an engine that reads `model.onnx`.
fn swaps_on(engine: &str) {
    let m = onnx_models();
    let versions = m.path().join("versions");
    fs::create_dir_all(&versions).unwrap();
    let onnx = |n: u64| {
        publish_version(&versions, n, |d| {
            fs::copy(m.path().join(format!("lin{n}.onnx")), d.join("model.onnx")).unwrap();
        })
    };
    onnx(1);
    let agent = Agent::start_source(
        &versions.display().to_string(),
        &format!("input = [8]\nengine = \"{engine}\"\nplan = \"baseline\""),
    );
    await_serving(&agent, "1");
    assert_eq!(agent.status()["models"][0]["engine"], engine);
    let load = Load::start(
        agent.model_dir(),
        agent.dir.path().to_path_buf(),
        Duration::from_millis(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    for n in [2, 3] {
        onnx(n);
        await_serving(&agent, &n.to_string());
        std::thread::sleep(Duration::from_millis(300));
    }
    let jobs = load.stop();
    let outs = outcomes(&agent, &jobs);
    assert!(agent.files("failed").is_empty());
    let mut seen = std::collections::BTreeSet::new();
    for ((name, i, _), (path, v)) in jobs.iter().zip(&outs) {
        let got = read(path).remove(0).1;
        assert!(
            got.allclose(
                &expected(&input_of(*i), v.parse().unwrap()),
                1e-4,
                1e-4,
                false
            ),
            "{name}: not version {v}'s result on {engine}"
        );
        seen.insert(v.clone());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["1", "2", "3"]);
}

#[test]
fn a_swap_on_onnx_runtime() {
    swaps_on("onnxruntime");
}

#[test]
fn a_swap_on_openvino() {
    swaps_on("openvino");
}

#[test]
fn a_safetensors_output_names_its_version_in_its_metadata() {
    let (agent, _versions) = versioned_agent("plan = \"baseline\"");
    let name = agent.submit("j.safetensors", &[("input".into(), input_of(0))]);
    let out = agent.wait(&name).unwrap();
    let bytes = fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    assert_eq!(meta.get("packrat.version").map(String::as_str), Some("1"));
    assert_eq!(meta.get("packrat.model").map(String::as_str), Some("m"));
    assert_eq!(version_of(&out), "1");
}

#[test]
fn a_model_added_and_one_removed_by_sighup_under_load() {
    let mut agent = Agent::configured(None, "", "builtin:tiny_cnn", "plan = \"baseline\"");
    let root = agent.dir.path().to_path_buf();
    let spool = agent.spool.clone();
    let state = agent.state();
    let two = |names: &[&str]| {
        let mut text = format!(
            "spool = \"{}\"\nstate_dir = \"{}\"\nrescan_interval_ms = 200\n",
            spool.display(),
            state.display()
        );
        for n in names {
            // n plans `auto` with no cached profile: added beside m, it must not profile.
            let plan = if *n == "n" { "auto" } else { "baseline" };
            text.push_str(&format!(
                "[[model]]\nname = \"{n}\"\nsource = \"builtin:tiny_cnn\"\nplan = \"{plan}\"\n"
            ));
        }
        text
    };
    let cfg = agent.config.clone();
    fs::write(&cfg, two(&["m"])).unwrap();
    agent.spawn(&[]);
    let pid = agent.pid();
    let x = input("tiny_cnn", 1);
    let submit_every = |model: &str, stop: Arc<AtomicBool>| {
        let dir = spool.join(model);
        let scratch = root.join(format!("scratch-{model}"));
        fs::create_dir_all(&scratch).unwrap();
        let x = x.shallow_clone();
        std::thread::spawn(move || {
            let mut names = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let p = write_job(
                    &scratch.join(format!("j{i:05}.npy")),
                    &[("input".into(), x.shallow_clone())],
                );
                if let Ok(n) = client::submit(&dir, &p) {
                    names.push(n);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            names
        })
    };
    let stop_m = Arc::new(AtomicBool::new(false));
    let load_m = submit_every("m", stop_m.clone());
    std::thread::sleep(Duration::from_millis(300));
    // Add "n": it warms on a helper thread while m serves on.
    fs::write(&cfg, two(&["m", "n"])).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let st = agent.status_when(|s| s["models"].as_array().is_some_and(|m| m.len() == 2));
    assert_eq!(st["models"][1]["name"], "n");
    fs::create_dir_all(spool.join("n/incoming")).unwrap();
    let stop_n = Arc::new(AtomicBool::new(false));
    let load_n = submit_every("n", stop_n.clone());
    std::thread::sleep(Duration::from_millis(500));
    // Remove "m": its later jobs wait in incoming/.
    fs::write(&cfg, two(&["n"])).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    agent.status_when(|s| s["models"].as_array().is_some_and(|m| m.len() == 1));
    std::thread::sleep(Duration::from_millis(500));
    stop_m.store(true, Ordering::SeqCst);
    let m_jobs = load_m.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop_n.store(true, Ordering::SeqCst);
    let n_jobs = load_n.join().unwrap();

    let reference = reference("tiny_cnn", &[x.shallow_clone()]).remove(0).1;
    // n: every job done, right, and it never stalled.
    let mut n_outs = Vec::new();
    for name in &n_jobs {
        match client::wait(&spool.join("n"), name, Duration::from_secs(60)).unwrap() {
            Outcome::Output(p) => {
                assert_close(&read(&p).remove(0).1, &reference);
                n_outs.push(p);
            }
            Outcome::Failed(why) => panic!("{name}: {why}"),
        }
    }
    let gap = longest_gap(&n_outs);
    assert!(gap < Duration::from_millis(1000), "n paused for {gap:?}");
    // m: each job has an output, or waits in incoming/ — none failed, none claimed, none lost.
    let m_dir = spool.join("m");
    let incoming: Vec<String> = fs::read_dir(m_dir.join("incoming"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let mut waiting = 0;
    let mut m_outs = Vec::new();
    for name in &m_jobs {
        let out = m_dir.join("out").join(name);
        if out.exists() {
            assert_close(&read(&out).remove(0).1, &reference);
            m_outs.push(out);
        } else {
            assert!(incoming.contains(name), "{name}: neither done nor waiting");
            waiting += 1;
        }
    }
    assert!(waiting > 0, "m's jobs after its removal stay in incoming/");
    assert!(fs::read_dir(m_dir.join("failed")).unwrap().next().is_none());
    assert!(claimed(&m_dir).is_empty(), "{:?}", claimed(&m_dir));
    // While n was being added, m never stalled either.
    let gap = longest_gap(&m_outs);
    assert!(gap < Duration::from_millis(1000), "m paused for {gap:?}");
    assert_eq!(agent.pid(), pid);
    // n started on the baseline and measures its own profile in idle gaps.
    let st = agent.status_when(|s| {
        s["models"][0]["adapt"]["live"]["active_samples"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert_eq!(st["models"][0]["name"], "n");
    let log = agent.log();
    assert!(log.contains("adapts from a seed profile"), "{log}");
    assert!(
        !log.contains("profiling n: point"),
        "n was profiled while m served: {log}"
    );
    assert!(log.contains("model n: added"), "{log}");
    assert!(log.contains("model m: removed"), "{log}");
}
