//! The replay engine: the whole agent on a virtual 16- or 18-core machine whose batches take
//! what the Packrat authors measured there (vendored in crates/planner/tests/data). Every
//! figure these tests see is replayed, not measured on this host.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use packrat::planner::menu::evaluate;
use packrat::planner::profile::{Curve, ProfileFile};
use packrat::planner::Plan;
use tch::{Kind, Tensor};

/// The agent's own time per batch on this host, beyond the replayed sleep (ms).
const HOST_MS: f64 = 0.5;

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
    let args = [
        OsString::from("plan"),
        "--json".into(),
        "--cores".into(),
        cores.to_string().into(),
        "--batch".into(),
        batch.to_string().into(),
        "--profile".into(),
        profile.into(),
    ];
    serde_json::from_slice(&packrat_ok(&args)).unwrap()
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
        // Within 5 %, plus what the agent itself spends handing a batch out and collecting it
        // on this host (0.2-0.6 ms seen on 2 vCPUs): a fixed cost the replay cannot replay,
        // which alone took a 2-item batch of 12.44 ms to 5.0 % over in one CI run.
        assert!(
            (median - expect).abs() < 0.05 * expect + HOST_MS,
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

/// The lane count `packrat plan --rate` picks for `profile` at `rate` jobs of `items` items.
fn planned_lanes(profile: &Path, cores: usize, max_batch: usize, rate: f64, items: usize) -> usize {
    let args = [
        OsString::from("plan"),
        "--cores".into(),
        cores.to_string().into(),
        "--batch".into(),
        max_batch.to_string().into(),
        "--rate".into(),
        rate.to_string().into(),
        "--job-items".into(),
        items.to_string().into(),
        "--profile".into(),
        profile.into(),
    ];
    let out = packrat_ok(&args);
    let text = String::from_utf8_lossy(&out);
    // The row packrat picks is marked "<- packrat"; its first column is the lane count.
    text.lines()
        .find(|l| l.contains("<- packrat"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pick in:\n{text}"))
}

/// On the authors' 16-core ResNet-50, the agent itself (dispatcher, lane choice from the
/// arrival rate it sees) runs one batch over all 16 cores at low load, and past one batch's
/// capacity runs several lanes on disjoint virtual cores, as `packrat plan --rate` predicts;
/// every job ends once with its output.
#[test]
fn on_16_replayed_cores_the_agent_runs_lanes_past_one_batch_capacity_and_not_before() {
    let _alone = alone();
    let path = vendored("resnet_cloudlab16.json");
    let truth = ProfileFile::load(&path).unwrap().curve().unwrap();
    let (cores, max_batch, items) = (16, 8, 8);
    // One batch of 8 items over 16 cores: its best plan's time gives one lane's capacity.
    let one_batch = packrat_plan(&path, cores, max_batch);
    let one_lane = 1e3 / evaluate(&one_batch, &truth).unwrap();
    let busy = one_lane * 1.08;
    let (low_pick, busy_pick) = (
        planned_lanes(&path, cores, max_batch, 1.0, items),
        planned_lanes(&path, cores, max_batch, busy, items),
    );
    assert_eq!(low_pick, 1, "packrat plan: one batch at 1 job/s");
    assert!(busy_pick > 1, "packrat plan: lanes at {busy:.1} jobs/s");
    let agent = replaying(&path, "");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut jobs = Vec::new();
    let submit = |agent: &Agent, rng: &mut Rng, rate: f64, seconds: f64, jobs: &mut Vec<_>| {
        let t0 = Instant::now();
        let mut next = 0.0f64;
        let mut seen = BTreeSet::new();
        let mut with_lanes = None;
        while next < seconds {
            // Poisson arrivals: exponential gaps.
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            next += -(1.0 - u).ln() / rate;
            let wait = next - t0.elapsed().as_secs_f64();
            if wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
            let k = jobs.len() as i64;
            let x = items_from(k * 100, items as i64);
            let name = agent.submit(
                &format!("j{k:04}.npy"),
                &[("input".into(), x.shallow_clone())],
            );
            jobs.push((name, x));
            let st = agent.status();
            let c = &st["models"][0]["concurrency"];
            let k = c["lanes"].as_u64().unwrap_or(0);
            seen.insert(k);
            if k > 1
                && c["lane_instances"]
                    .as_array()
                    .is_some_and(|l| l.len() as u64 == k)
            {
                with_lanes = Some(c.clone());
            }
        }
        (seen, with_lanes)
    };
    let (low, _) = submit(&agent, &mut rng, 2.0, 6.0, &mut jobs);
    assert_eq!(
        low,
        BTreeSet::from([1]),
        "at 2 jobs/s: one batch over every core"
    );
    let (high, lanes) = submit(&agent, &mut rng, busy, 15.0, &mut jobs);
    assert!(
        high.iter().any(|&k| k > 1),
        "at {busy:.1} jobs/s (1.08x one batch's capacity) the agent never ran lanes: {high:?}\n{}",
        agent.log()
    );
    // Every job ends once, with its items' sums.
    for (name, x) in &jobs {
        let out = agent.wait(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(read(&out).remove(0).1.equal(x), "{name}: the items' sums");
    }
    assert_eq!(agent.files("out").len(), jobs.len(), "one output per job");
    assert!(agent.files("failed").is_empty() && agent.claimed().is_empty());
    let st = agent.status();
    let c = &st["models"][0]["concurrency"];
    assert!(c["max_in_flight"].as_u64() > Some(1), "{c}");
    assert!(c["lane_batches"].as_u64() > Some(0), "{c}");
    // The lanes' virtual cores are disjoint (a lane's own layouts share its cores).
    let lanes = lanes.expect("a status with the lanes' instances while they ran");
    let mut used = BTreeSet::new();
    for lane in lanes["lane_instances"].as_array().unwrap() {
        let mine: BTreeSet<u64> = lane
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["cores"].as_array().unwrap().clone())
            .map(|c| c.as_u64().unwrap())
            .collect();
        for core in mine {
            assert!(core < 16 && used.insert(core), "core {core}: {lanes}");
        }
    }
}

/// `n` items starting at `from`: from+1, …, from+n.
fn items_from(from: i64, n: i64) -> Tensor {
    Tensor::arange_start(from + 1, from + n + 1, (Kind::Float, tch::Device::Cpu)).reshape([n, 1])
}
