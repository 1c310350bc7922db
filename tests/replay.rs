//! The replay engine: the whole agent on a virtual 16- or 18-core machine whose batches take
//! what the Packrat authors measured there (vendored in crates/planner/tests/data). Every
//! figure these tests see is replayed, not measured on this host.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use packrat::planner::menu::evaluate;
use packrat::planner::profile::{Curve, ProfileFile};
use packrat::planner::Plan;
use tch::{Kind, Tensor};

/// These tests keep the agent's helper threads busy with timing: one at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn vendored(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/planner/tests/data")
        .join(name)
}

fn replaying(profile: &Path, extra: &str) -> Agent {
    Agent::start_source(
        &profile.display().to_string(),
        &format!("engine = \"replay\"\nprofile_budget_s = 30\n{extra}"),
    )
}

/// `packrat plan --json` for one batch size.
fn packrat_plan(profile: &Path, cores: usize, batch: usize) -> Plan {
    let out = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .args(["plan", "--json", "--profile"])
        .arg(profile)
        .args(["--cores", &cores.to_string(), "--batch", &batch.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn shape(p: &Plan) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = p
        .instances
        .iter()
        .filter(|i| i.batch > 0)
        .map(|i| (i.threads, i.batch))
        .collect();
    v.sort_unstable();
    v
}

/// A job of `n` items of the default replay input (one float each): 1, 2, …, n.
fn items(n: i64) -> Tensor {
    Tensor::arange_start(1, n + 1, (Kind::Float, tch::Device::Cpu)).reshape([n, 1])
}

/// The agent replays `file` on its cores: its profile measures what the file says, its plans
/// are `packrat plan`'s for those points, and a served batch takes what the file gives for
/// the plan it ran.
fn replays_as_profiled(file: &str) {
    let path = vendored(file);
    let authors = ProfileFile::load(&path).unwrap();
    let truth: Curve = authors.curve().unwrap();
    let cores = authors.cores;
    let mut agent = replaying(&path, "adapt = false\nconcurrent_batches = 1");
    let st = agent.status();
    let m = &st["models"][0];
    assert_eq!(
        m["engine"].as_str().unwrap().split(' ').next(),
        Some("replay")
    );

    // The profile the agent measured on its virtual cores is the authors' within 5 %.
    let measured = agent.profile();
    assert_eq!(
        measured.cores, cores,
        "the replay runs on the profile's cores"
    );
    let mut points = BTreeSet::new();
    for p in &measured.points {
        let want = truth
            .measured(p.threads, p.batch)
            .unwrap_or_else(|| panic!("({}, {}) is not in {file}", p.threads, p.batch));
        let err = p.latency_ms / want - 1.0;
        assert!(
            err.abs() < 0.05,
            "{file}: ({}, {}) measured {:.2} ms, profiled {want:.2} ms",
            p.threads,
            p.batch,
            p.latency_ms
        );
        points.insert((p.threads, p.batch));
    }
    let cores_seen: BTreeSet<usize> = m["instances"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["cores"].as_array().unwrap().clone())
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();
    assert!(
        cores_seen.iter().all(|&c| c < cores) && cores_seen.len() > allowed_cpus().len(),
        "{file}: instances on virtual cores {cores_seen:?}"
    );

    // packrat plan on the authors' figures for the points the agent measures.
    let mut subset = authors.clone();
    subset
        .points
        .retain(|p| points.contains(&(p.threads, p.batch)));
    let subset_path = agent.dir.path().join("subset.json");
    std::fs::write(&subset_path, serde_json::to_string(&subset).unwrap()).unwrap();
    let subset_curve = subset.curve().unwrap();
    let table: Vec<Plan> = serde_json::from_value(m["plan_table"].clone()).unwrap();
    let max_batch = table.len();
    let mut same = 0;
    for served in &table {
        let b = served.batch;
        let planned = packrat_plan(&subset_path, cores, b);
        let want = planned.predicted_latency_ms.unwrap();
        let got = evaluate(served, &subset_curve).unwrap();
        // The agent plans on its ±3 % measurements: where two plans tie within that, either
        // may win; no other difference is allowed.
        assert!(
            got <= want * 1.03,
            "{file} batch {b}: the agent serves {} ({got:.2} ms on the authors' figures), packrat plan {} ({want:.2} ms)",
            served.summary(),
            planned.summary()
        );
        same += usize::from(shape(served) == shape(&planned));
    }
    eprintln!(
        "{file}: {same} of {max_batch} plans identical to packrat plan's, the rest within 3 %"
    );

    // Served batches take the authors' time for the plan they ran, within 5 %.
    let st = agent.status();
    let mut before = st["models"][0]["batches"].as_u64().unwrap();
    let mut ms_before = st["models"][0]["batch_ms_sum"].as_f64().unwrap();
    let t0 = Instant::now();
    for n in [1, 2, 3, max_batch as i64 / 2 + 1, max_batch as i64] {
        let mut took = Vec::new();
        let mut expect = 0.0;
        for rep in 0..3 {
            let name = agent.submit(&format!("b{n}-{rep}.npy"), &[("input".into(), items(n))]);
            let out = agent.wait(&name).unwrap();
            let sums = read(&out).remove(0).1;
            assert!(
                sums.equal(&items(n)),
                "{file}: the outputs are the items' sums"
            );
            let st = agent.status_when(|s| s["models"][0]["batches"].as_u64() > Some(before));
            let m = &st["models"][0];
            let batches = m["batches"].as_u64().unwrap();
            assert_eq!(batches, before + 1, "one batch per job");
            before = batches;
            let last: Plan = serde_json::from_value(m["last_plan"].clone()).unwrap();
            assert_eq!(last.batch, n as usize);
            expect = evaluate(&last, &truth).unwrap();
            let ms = m["batch_ms_sum"].as_f64().unwrap();
            took.push(ms - ms_before);
            ms_before = ms;
        }
        took.sort_by(f64::total_cmp);
        let median = took[1];
        assert!(
            (median / expect - 1.0).abs() < 0.05,
            "{file}: a {n}-item batch took {median:.2} ms (of {took:?}), the profile gives {expect:.2} ms"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(120));
    agent.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_replayed_16_core_agent_plans_as_packrat_plan_and_its_batches_take_the_profiled_time() {
    let _alone = alone();
    replays_as_profiled("resnet_cloudlab16.json");
}

#[test]
fn a_replayed_18_core_agent_plans_as_packrat_plan_and_its_batches_take_the_profiled_time() {
    let _alone = alone();
    replays_as_profiled("bert_skylake18.json");
}
