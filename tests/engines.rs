//! The engines behind the same agent: ONNX Runtime models (generated at test set-up with the
//! `onnx` package, references from onnx's own ReferenceEvaluator) in every job format and batch
//! size, several inputs and outputs, broken or missing models and runtimes, and where ONNX
//! Runtime's threads run.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use std::time::Duration;
use tch::{Kind, Tensor};

fn load(path: &Path) -> Vec<(String, Tensor)> {
    read(path)
}

/// The CNN's example batch of `n` items and the reference's outputs for it.
fn cnn_case(models: &Path, n: usize) -> (Tensor, Tensor) {
    let first = |name: String| load(&models.join(name)).remove(0).1;
    (
        first(format!("cnn_x{n}.npy")),
        first(format!("cnn_y{n}.npy")),
    )
}

fn onnx_agent(models: &Path, file: &str, extra: &str) -> Agent {
    Agent::start_source(&models.join(file).display().to_string(), extra)
}

#[test]
fn an_onnx_model_serves_every_format_and_batch_size_like_the_reference() {
    let m = onnx_models();
    let agent = onnx_agent(
        m.path(),
        "cnn.onnx",
        "input = [3, 8, 8]\nplan = \"baseline\"",
    );
    for n in [1, 3, 8] {
        let (x, want) = cnn_case(m.path(), n);
        for ext in ["npy", "npz", "safetensors"] {
            let name = agent.submit(&format!("x{n}.{ext}"), &[("x".into(), x.shallow_clone())]);
            let got = read(&agent.wait(&name).unwrap());
            assert_eq!(got.len(), 1, "{name}");
            if ext != "npy" {
                assert_eq!(got[0].0, "y", "outputs keep the model's names");
            }
            assert_close(&got[0].1, &want);
        }
    }
    agent.status_when(|st| st["models"][0]["jobs_done"] == 9);
}

#[test]
fn several_inputs_and_outputs_go_by_name() {
    let m = onnx_models();
    let agent = onnx_agent(
        m.path(),
        "two.onnx",
        "inputs = [{ name = \"b\", shape = [8] }, { name = \"a\", shape = [16] }]\nplan = \"baseline\"",
    );
    let inputs = load(&m.path().join("two_in.npz"));
    let name = agent.submit("pair.npz", &inputs);
    let got = read(&agent.wait(&name).unwrap());
    let want = load(&m.path().join("two_out.npz"));
    assert_eq!(
        got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["pa", "y"]
    );
    for ((_, g), (_, w)) in got.iter().zip(&want) {
        assert_close(g, w);
    }
    // A job missing an input fails with a reason; the agent keeps serving.
    let name = agent.submit("half.npz", &inputs[..1]);
    assert!(agent.wait(&name).unwrap_err().contains("missing"));
}

fn serve_exit(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_packrat"));
    cmd.args(["serve", "--config"]).arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn models_and_runtimes_that_cannot_load_are_config_errors() {
    let m = onnx_models();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let source = |f: &str| m.path().join(f).display().to_string();
    type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (
            source("not_onnx.onnx"),
            "input = [3, 8, 8]",
            vec![],
            "not an ONNX model",
        ),
        (source("cnn.onnx"), "input = [8, 8]", vec![], "dimensions"),
        (
            source("cnn.onnx"),
            "input = [3, 8, 8]",
            vec![("PACKRAT_ONNXRUNTIME", "/nonexistent/libonnxruntime.so.1")],
            "not installed",
        ),
        (
            source("cnn.onnx"),
            "input = [3, 8, 8]",
            vec![("PACKRAT_ONNXRUNTIME", "/etc/hostname")],
            "cannot load ONNX Runtime",
        ),
    ];
    for (src, extra, env, want) in cases {
        std::fs::write(&cfg, config_with_source(dir.path(), &src, extra)).unwrap();
        let (code, err) = serve_exit(&cfg, &env);
        assert_eq!(code, Some(78), "{src} {env:?}: {err}");
        assert!(
            err.contains("model[0].source") && err.contains(want),
            "{err}"
        );
        assert!(
            err.contains("fix:") && !err.contains("Exception raised from"),
            "{err}"
        );
    }
    // A .pt that is not TorchScript: one line, no C++ backtrace.
    let pt = dir.path().join("broken.pt");
    std::fs::write(&pt, "not a zip").unwrap();
    std::fs::write(
        &cfg,
        config_with_source(dir.path(), &pt.display().to_string(), "input = [3]"),
    )
    .unwrap();
    let (code, err) = serve_exit(&cfg, &[]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("TorchScript") && err.lines().count() <= 3,
        "{err}"
    );
}

#[test]
fn onnx_runtime_threads_stay_on_their_instances_cores() {
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs, has {cpus:?}");
    let (c0, c1) = (cpus[0], cpus[1]);
    let m = onnx_models();
    // One instance with two threads: the instance thread keeps c0, ONNX Runtime's one pool
    // thread gets c1.
    let agent = onnx_agent(
        m.path(),
        "cnn.onnx",
        &format!("input = [3, 8, 8]\nplan = [{{ threads = 2, batch = 1, cores = [{c0}, {c1}] }}]"),
    );
    let st = agent.status();
    let inst = &st["models"][0]["instances"][0];
    assert_eq!(inst["observed_threads"], 2);
    let tid = inst["tid"].as_i64().unwrap() as i32;
    let tasks = task_cpus(agent.pid());
    let mine = tasks.iter().find(|t| t.0 == tid).unwrap();
    assert_eq!(mine.2, c0.to_string(), "{tasks:?}");
    assert!(
        tasks.iter().any(|t| t.0 != tid && t.2 == c1.to_string()),
        "no ONNX Runtime pool thread pinned to {c1}: {tasks:?}"
    );
    let x = load(&m.path().join("cnn_x3.npy")).remove(0).1;
    let name = agent.submit("x.npy", &[("x".into(), x)]);
    agent.wait(&name).unwrap();
    drop(agent);
    // Two one-thread instances: each on its own core, and no pool threads at all.
    let agent = onnx_agent(
        m.path(),
        "cnn.onnx",
        &format!(
            "input = [3, 8, 8]\nplan = [{{ threads = 1, batch = 1, cores = [{c0}] }}, {{ threads = 1, batch = 1, cores = [{c1}] }}]"
        ),
    );
    let st = agent.status();
    let insts = st["models"][0]["instances"].as_array().unwrap();
    let tasks = task_cpus(agent.pid());
    for inst in insts {
        assert_eq!(inst["observed_threads"], 1);
        let tid = inst["tid"].as_i64().unwrap() as i32;
        let core = inst["cores"][0].as_u64().unwrap().to_string();
        assert_eq!(tasks.iter().find(|t| t.0 == tid).unwrap().2, core);
    }
}

/// An agent serving the CNN on OpenVINO, from its ONNX file or its IR.
fn openvino_agent(models: &Path, file: &str, extra: &str) -> Agent {
    onnx_agent(
        models,
        file,
        &format!("engine = \"openvino\"\ninput = [3, 8, 8]\n{extra}"),
    )
}

#[test]
fn openvino_serves_onnx_and_ir_models_in_f32_and_in_what_the_cpu_computes_for_bf16() {
    let m = onnx_models();
    let (x, want) = cnn_case(m.path(), 3);
    for file in ["cnn.onnx", "cnn.xml"] {
        let agent = openvino_agent(m.path(), file, "plan = \"baseline\"");
        let name = agent.submit("x.npy", &[("x".into(), x.shallow_clone())]);
        assert_close(&read(&agent.wait(&name).unwrap())[0].1, &want);
    }
    // bf16 moves the outputs a little, never a lot, and they stay float32.
    let agent = openvino_agent(
        m.path(),
        "cnn.onnx",
        "plan = \"baseline\"\nprecision = \"bf16\"",
    );
    let name = agent.submit("x.npy", &[("x".into(), x.shallow_clone())]);
    let got = read(&agent.wait(&name).unwrap()).remove(0).1;
    assert_eq!(got.kind(), tch::Kind::Float);
    let scale = f64::try_from(want.abs().max()).unwrap();
    let drift = f64::try_from((&got - &want).abs().max()).unwrap() / scale;
    assert!(drift < 0.05, "bf16 drift {drift}");
    // The status says what OpenVINO computes in, as its compiled model reports it.
    let p = agent.status()["models"][0]["precision"].clone();
    assert_eq!(p["requested"], "bf16", "{p}");
    if host_has_bf16_units() {
        assert_eq!(p["in_use"], "bf16", "{p}");
        assert!(p["bf16_drift"].as_f64().unwrap() < 0.05, "{p}");
    } else {
        // No bf16 units: OpenVINO computes f32, the output is f32's, and the journal says so
        // once, at warning level, naming the CPU.
        assert_eq!(p["in_use"], "f32", "{p}");
        let why = p["reason"].as_str().unwrap();
        assert!(why.contains("OpenVINO compiles this model in f32"), "{why}");
        assert!(why.contains(&cpu_model()), "{why}");
        // f32's agreement with the reference (float reassociation), not bf16's ~1e-3.
        assert!(drift < 1e-5, "f32 drift {drift}");
        let log = agent.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("precision bf16 requested, serving f32"))
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
    }
}

#[test]
fn openvino_runtimes_that_cannot_load_are_config_errors() {
    let m = onnx_models();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let src = m.path().join("cnn.onnx").display().to_string();
    std::fs::write(
        &cfg,
        config_with_source(dir.path(), &src, "engine = \"openvino\"\ninput = [3, 8, 8]"),
    )
    .unwrap();
    for (lib, want) in [
        ("/nonexistent/libopenvino_c.so", "not installed"),
        ("/etc/hostname", "cannot load OpenVINO"),
    ] {
        let (code, err) = serve_exit(&cfg, &[("PACKRAT_OPENVINO", lib)]);
        assert_eq!(code, Some(78), "{lib}: {err}");
        assert!(
            err.contains(want) && err.contains("setup-openvino.sh"),
            "{err}"
        );
    }
    // An IR without its weights.
    let xml = dir.path().join("lonely.xml");
    std::fs::copy(m.path().join("cnn.xml"), &xml).unwrap();
    std::fs::write(
        &cfg,
        config_with_source(dir.path(), &xml.display().to_string(), "input = [3, 8, 8]"),
    )
    .unwrap();
    let (code, err) = serve_exit(&cfg, &[]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("weights") && err.contains(".bin"), "{err}");
}

#[test]
fn openvino_threads_inherit_their_instances_cores() {
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs, has {cpus:?}");
    let (c0, c1) = (cpus[0], cpus[1]);
    let m = onnx_models();
    let agent = openvino_agent(
        m.path(),
        "cnn.onnx",
        &format!(
            "plan = [{{ threads = 1, batch = 1, cores = [{c0}] }}, {{ threads = 1, batch = 1, cores = [{c1}] }}]"
        ),
    );
    let x = load(&m.path().join("cnn_x3.npy")).remove(0).1;
    let name = agent.submit("x.npy", &[("x".into(), x)]);
    agent.wait(&name).unwrap();
    let st = agent.status();
    let tasks = task_cpus(agent.pid());
    for inst in st["models"][0]["instances"].as_array().unwrap() {
        let tid = inst["tid"].as_i64().unwrap() as i32;
        let core = inst["cores"][0].as_u64().unwrap().to_string();
        let comm = &tasks.iter().find(|t| t.0 == tid).unwrap().1;
        // OpenVINO's own threads for this compiled model carry the instance's name.
        let family: Vec<_> = tasks.iter().filter(|t| &t.1 == comm).collect();
        assert!(
            family.len() >= 2,
            "no OpenVINO threads beside {comm}: {tasks:?}"
        );
        assert!(
            family.iter().all(|t| t.2 == core),
            "{family:?} left core {core}"
        );
    }
}

#[test]
fn openvino_weighs_static_shapes_at_warm_up_and_serves_the_same_outputs() {
    let m = onnx_models();
    // Every sub-batch size of the table (max_batch 8) is weighed once per instance, before READY.
    let agent = openvino_agent(
        m.path(),
        "cnn.onnx",
        "plan = \"baseline\"\nstatic_shapes = 64",
    );
    let st = agent.status();
    let weighed = st["models"][0]["static_shapes"].as_array().unwrap().clone();
    let threads = st["models"][0]["instances"][0]["threads"].as_u64().unwrap();
    let mut sizes: Vec<u64> = weighed
        .iter()
        .map(|w| w["batch"].as_u64().unwrap())
        .collect();
    sizes.sort();
    assert_eq!(sizes, (1..=8).collect::<Vec<_>>(), "{weighed:?}");
    for w in &weighed {
        assert_eq!(w["threads"].as_u64(), Some(threads), "{w}");
        assert!(w["static_ms"].as_f64().unwrap() > 0.0, "{w}");
        assert!(w["dynamic_ms"].as_f64().unwrap() > 0.0, "{w}");
        let ratio = w["ratio"].as_f64().unwrap();
        assert_eq!(w["kept"] == true, ratio <= 0.97, "{w}");
    }
    // Whichever way each size went, the outputs are the reference's.
    for n in [1, 3, 8] {
        let (x, want) = cnn_case(m.path(), n);
        let name = agent.submit(&format!("x{n}.npy"), &[("x".into(), x)]);
        assert_close(&read(&agent.wait(&name).unwrap())[0].1, &want);
    }
    drop(agent);
    // A budget bounds the sizes kept static; 0 weighs none.
    for (budget, most) in [(1, 1), (0, 0)] {
        let agent = openvino_agent(
            m.path(),
            "cnn.onnx",
            &format!("plan = \"baseline\"\nstatic_shapes = {budget}"),
        );
        let st = agent.status();
        let weighed = st["models"][0]["static_shapes"].as_array().unwrap();
        let kept = weighed.iter().filter(|w| w["kept"] == true).count();
        assert!(kept <= most, "budget {budget}: {weighed:?}");
        if budget == 0 {
            assert!(weighed.is_empty(), "{weighed:?}");
        }
        let (x, want) = cnn_case(m.path(), 3);
        let name = agent.submit("x.npy", &[("x".into(), x)]);
        assert_close(&read(&agent.wait(&name).unwrap())[0].1, &want);
    }
}

#[test]
fn auto_precision_picks_bf16_only_where_it_is_harmless_and_faster_on_this_cpu() {
    let m = onnx_models();
    // bf16_min_speedup = 0: this test is about the drift guard (a model this small need not
    // run faster in bf16); the speed rule is checked below with a ratio no CPU can reach.
    let benign = openvino_agent(
        m.path(),
        "cnn.onnx",
        "plan = \"baseline\"\nprecision = \"auto\"\nbf16_tolerance = 0.05\nbf16_min_speedup = 0",
    );
    let p = benign.status()["models"][0]["precision"].clone();
    assert_eq!(p["requested"], "auto", "{p}");
    if !host_has_bf16_units() {
        // No bf16 units: f32, with the reason, and no bf16 measured at all.
        assert_eq!(p["in_use"], "f32", "{p}");
        let why = p["reason"].as_str().unwrap();
        assert!(why.contains("f32") && why.contains(&cpu_model()), "{why}");
        assert!(p["bf16_drift"].is_null(), "{p}");
        assert!(benign.log().contains("precision auto: f32"));
        let st = benign.status();
        let features = st["cpu"]["features"].as_array().unwrap();
        assert!(
            !features
                .iter()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16"),
            "{features:?}"
        );
        return;
    }
    assert_eq!(p["in_use"], "bf16", "{p}");
    assert!(p["bf16_drift"].as_f64().unwrap() < 0.05, "{p}");
    assert!(p["bf16_speedup"].as_f64().unwrap() > 0.0, "{p}");
    drop(benign);
    let sensitive = onnx_agent(
        m.path(),
        "sensitive.onnx",
        "engine = \"openvino\"\ninput = [64]\nplan = \"baseline\"\nprecision = \"auto\"\nbf16_min_speedup = 0",
    );
    let p = &sensitive.status()["models"][0]["precision"];
    assert_eq!(p["in_use"], "f32", "{p}");
    assert!(p["bf16_drift"].as_f64().unwrap() > 0.01, "{p}");
    assert!(
        p["reason"].as_str().unwrap().contains("example inputs"),
        "{p}"
    );
    assert!(
        sensitive.log().contains("precision auto: f32"),
        "{}",
        sensitive.log()
    );
    drop(sensitive);
    // Harmless but not fast enough: nothing runs 1000× faster in bf16.
    let slow = openvino_agent(
        m.path(),
        "cnn.onnx",
        "plan = \"baseline\"\nprecision = \"auto\"\nbf16_tolerance = 0.05\nbf16_min_speedup = 1000",
    );
    let p = &slow.status()["models"][0]["precision"];
    assert_eq!(p["in_use"], "f32", "{p}");
    assert!(p["bf16_speedup"].as_f64().unwrap() < 1000.0, "{p}");
    assert!(
        p["reason"].as_str().unwrap().contains("bf16_min_speedup"),
        "{p}"
    );
}

#[test]
fn auto_precision_falls_back_to_f32_when_a_real_job_drifts() {
    let m = onnx_models();
    let agent = onnx_agent(
        m.path(),
        "trap.onnx",
        "engine = \"openvino\"\ninput = [2]\nplan = \"baseline\"\nprecision = \"auto\"\nbf16_tolerance = 0.05\nbf16_min_speedup = 0",
    );
    // Equal columns: 1000.25·x − 1000·x = 0.25·x, which bf16 (1000.25 → 1000) turns into 0.
    let x = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0]).reshape([3, 2]);
    let want = Tensor::from_slice(&[0.25f32, 0.5, 0.75]).reshape([3, 1]);
    if host_has_bf16_units() {
        assert_eq!(agent.status()["models"][0]["precision"]["in_use"], "bf16");
        let first = agent.submit("a.npy", &[("x".into(), x.shallow_clone())]);
        agent.wait(&first).unwrap();
        let st = agent.status_when(|st| st["models"][0]["precision"]["in_use"] == "f32");
        let p = &st["models"][0]["precision"];
        assert!(p["reason"].as_str().unwrap().contains("real job"), "{p}");
        assert_eq!(p["jobs_checked"], 1);
    } else {
        // No bf16 units: f32 from the start, so the trap never springs and nothing is checked.
        let p = agent.status()["models"][0]["precision"].clone();
        assert_eq!(p["in_use"], "f32", "{p}");
        assert_eq!(p["jobs_checked"], 0, "{p}");
        let first = agent.submit("a.npy", &[("x".into(), x.shallow_clone())]);
        assert_close(&read(&agent.wait(&first).unwrap()).remove(0).1, &want);
    }
    // From now on (on every CPU) the model answers in f32.
    let second = agent.submit("b.npy", &[("x".into(), x)]);
    let got = read(&agent.wait(&second).unwrap()).remove(0).1;
    assert_close(&got, &want);
    let metrics = std::fs::read_to_string(agent.state().join("metrics.prom")).unwrap();
    assert!(metrics.contains("packrat_precision_bf16{model=\"m\"} 0"));
}

/// libtorch without bf16 units only emulates bf16 (slower than f32): a bf16 request serves
/// f32 with the reason there, and bf16 where the units exist.
#[test]
fn libtorch_bf16_serves_what_this_cpu_computes_natively() {
    let agent = Agent::start("tiny_cnn", "plan = \"baseline\"\nprecision = \"bf16\"");
    let x = input("tiny_cnn", 3);
    let name = agent.submit("x.npy", &[("input".into(), x.shallow_clone())]);
    let got = read(&agent.wait(&name).unwrap()).remove(0).1;
    let want = reference("tiny_cnn", &[x]).remove(0).1;
    let p = agent.status()["models"][0]["precision"].clone();
    assert_eq!(p["requested"], "bf16", "{p}");
    if host_has_bf16_units() {
        assert_eq!(p["in_use"], "bf16", "{p}");
        let scale = f64::try_from(want.abs().max()).unwrap();
        let drift = f64::try_from((&got - &want).abs().max()).unwrap() / scale;
        assert!(drift > 0.0 && drift < 0.05, "bf16 drift {drift}");
    } else {
        assert_eq!(p["in_use"], "f32", "{p}");
        let why = p["reason"].as_str().unwrap();
        assert!(
            why.contains("no bf16 units") && why.contains(&cpu_model()),
            "{why}"
        );
        assert_close(&got, &want);
        let log = agent.log();
        assert_eq!(
            log.matches("precision bf16 requested, serving f32").count(),
            1,
            "{log}"
        );
    }
    // The metrics and status name the CPU and its features.
    let st = agent.status();
    assert_eq!(st["cpu"]["model"], cpu_model().as_str(), "{st}");
    let metrics = std::fs::read_to_string(agent.state().join("metrics.prom")).unwrap();
    let info = metrics
        .lines()
        .find(|l| l.starts_with("packrat_cpu_info{"))
        .unwrap_or_else(|| panic!("no packrat_cpu_info in {metrics}"));
    for f in ["avx2", "avx512f", "avx512_bf16", "amx_bf16"] {
        let has = cpu_flags().iter().any(|g| g == f);
        assert!(
            info.contains(&format!("{f}=\"{}\"", u8::from(has))),
            "{f}: {info}"
        );
    }
}

#[test]
fn a_hung_forward_pass_stops_the_watchdog_pings() {
    let m = onnx_models();
    let mut notify = NotifySocket::bind();
    let source = m.path().join("hang.onnx").display().to_string();
    let agent = Agent::start_full(
        &source,
        "input = [4]\nplan = \"baseline\"",
        &[notify.env(), ("WATCHDOG_USEC", "1000000")],
    );
    notify.recv_until("WATCHDOG=1");
    let x = Tensor::ones([2, 4], (Kind::Float, tch::Device::Cpu));
    let name = agent.submit("quick.npy", &[("x".into(), x.shallow_clone())]);
    assert_close(&read(&agent.wait(&name).unwrap())[0].1, &x);
    // A job whose forward pass loops for days: the pings stop, so systemd would restart it.
    let huge = Tensor::full([1, 4], 1e15, (Kind::Float, tch::Device::Cpu));
    agent.submit("hang.npy", &[("x".into(), huge)]);
    notify.recv_until("STATUS=stalled");
    notify.seen.clear();
    std::thread::sleep(Duration::from_millis(2500));
    notify.seen.extend(notify.messages_now());
    assert!(
        !notify
            .seen
            .iter()
            .any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
        "{:?}",
        notify.seen
    );
    assert!(
        agent.log().contains("a batch has been running"),
        "{}",
        agent.log()
    );
}
