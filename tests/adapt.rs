//! Online adaptation, end to end on the real binary: an agent started on a profile that is
//! wrong for this host corrects it while it serves (idle-gap measurements and every batch it
//! runs) and re-plans by itself, without dropping a job, through a SIGHUP; and a workload whose
//! batch sizes shift never starts an instance set in front of a job.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use packrat::planner::live::LiveProfile;
use packrat::planner::menu::evaluate;
use packrat::planner::profile::{Curve, ProfileFile};
use packrat::planner::{Plan, PlanTable};

/// These tests time things: one at a time, so that neither measures the other.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn plans(st: &serde_json::Value) -> Vec<Plan> {
    serde_json::from_value(st["models"][0]["plan_table"].clone()).unwrap()
}

/// The live profile's points as status shows them, as a curve (each estimate a point).
fn live_curve(st: &serde_json::Value) -> Curve {
    let points: Vec<serde_json::Value> = st["models"][0]["adapt"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            serde_json::json!({"threads": p["threads"], "batch": p["batch"], "latency_ms": p["estimate_ms"]})
        })
        .collect();
    let file: ProfileFile =
        serde_json::from_value(serde_json::json!({"model": "m", "cores": 2, "points": points}))
            .unwrap();
    file.curve().unwrap()
}

/// How much slower, on average over `sizes`, the table in force is than the optimum on what
/// the agent itself measured (its live profile): an agent that acts on what it learnt keeps
/// this within its re-planning hysteresis (3 %), whatever this host's speed.
fn excess_on_live(st: &serde_json::Value, sizes: &[usize]) -> f64 {
    let curve = live_curve(st);
    let topo = packrat::planner::topology::usable(None).unwrap();
    let best = PlanTable::from_curve(&curve, &topo, 8).unwrap();
    let table = plans(st);
    let sum: f64 = sizes
        .iter()
        .map(|&b| {
            let got = evaluate(&table[b - 1], &curve).unwrap();
            got / best.for_batch(b).predicted_latency_ms.unwrap() - 1.0
        })
        .sum();
    sum / sizes.len() as f64
}

/// The points of thread count `used` whose live estimate is back within 1.6× of the fresh
/// profile (they were told 3×), each backed by more samples than the prior's weight.
fn corrected(st: &serde_json::Value, fresh: &ProfileFile, used: usize) -> usize {
    let Some(points) = st["models"][0]["adapt"]["points"].as_array() else {
        return 0;
    };
    fresh
        .points
        .iter()
        .filter(|p| p.threads == used)
        .filter(|p| {
            points.iter().any(|q| {
                q["threads"] == p.threads
                    && q["batch"] == p.batch
                    && q["samples"].as_u64().unwrap_or(0) > 3
                    && q["estimate_ms"]
                        .as_f64()
                        .is_some_and(|e| e < p.latency_ms * 1.6)
            })
        })
        .count()
}

#[test]
fn a_wrong_profile_is_corrected_while_serving_without_a_restart() {
    let _alone = alone();
    let sizes = [1usize, 2, 4, 8];
    let extra = "profile_budget_s = 15\nmax_probe_delay_ms = 400";
    let mut agent = Agent::configured(None, "", "builtin:resnet18", extra);
    let fresh = agent.profile();
    let truth = fresh.curve().unwrap();
    let topo = packrat::planner::topology::usable(None).unwrap();
    let best = PlanTable::from_curve(&truth, &topo, 8).unwrap();
    // Make the thread count the optimum uses at b=4 look 3× slower than it is (keeping the
    // profile's key: to the agent it is this host's valid cached profile). Everything below
    // holds by construction — a 3× error against the ±30 % this host drifts — not by how
    // much faster one layout happens to be here.
    let used = best.for_batch(4).instances[0].threads;
    let mut wrong = fresh.clone();
    for p in &mut wrong.points {
        if p.threads == used {
            p.latency_ms *= 3.0;
        }
    }
    wrong.save(&agent.state().join("profiles/m.json")).unwrap();
    let wrong_table = PlanTable::from_curve(&wrong.curve().unwrap(), &topo, 8).unwrap();
    // At 3× the wrong profile steers every size away from that thread count.
    assert!(
        sizes.iter().all(|&b| wrong_table.plans[b - 1]
            .instances
            .iter()
            .all(|i| i.threads != used)),
        "precondition: {:?}",
        wrong_table.plans
    );
    let told = fresh.points.iter().filter(|p| p.threads == used).count();

    agent.spawn(&[]);
    let x = input("resnet18", 8);
    let mut rng = Rng(7);
    let mut names = Vec::new();
    let mut converged_after = None;
    let t0 = Instant::now();
    // Converged: the points made 3× slow are measured back (at least two of them), the table
    // in force is the optimum on what was measured (within hysteresis and drift), and
    // predictions hold.
    for i in 0..300 {
        let b = sizes[rng.below(sizes.len())];
        let name = agent.submit(
            &format!("j{i}.npy"),
            &[("input".into(), x.narrow(0, 0, b as i64))],
        );
        agent.wait(&name).unwrap();
        names.push(name);
        if i == 20 {
            kill(agent.pid(), Signal::SIGHUP).unwrap();
        }
        // A steady stream with gaps: the agent measures what serving does not in them.
        std::thread::sleep(Duration::from_millis(30));
        if i % 10 == 9 && i > 20 {
            let st = agent.status();
            let err = st["models"][0]["prediction_abs_error_pct"].as_f64();
            if corrected(&st, &fresh, used) >= 2.min(told)
                && excess_on_live(&st, &sizes) < 0.08
                && err.is_some_and(|e| e < 15.0)
            {
                converged_after = Some((i + 1, err, st));
                break;
            }
        }
    }
    let (jobs, err, st) = converged_after.unwrap_or_else(|| {
        let st = agent.status();
        panic!(
            "did not converge in 300 jobs ({:.0} s): {} point(s) corrected, {:.1} % over the live optimum: {st}\n{}",
            t0.elapsed().as_secs_f64(),
            corrected(&st, &fresh, used),
            excess_on_live(&st, &sizes) * 100.0,
            agent.log()
        )
    });
    eprintln!(
        "converged after {jobs} jobs ({:.0} s): median |prediction error| {:.1} %",
        t0.elapsed().as_secs_f64(),
        err.unwrap_or(f64::NAN)
    );
    let m = &st["models"][0];
    assert!(m["adapt"]["live"]["active_samples"].as_u64().unwrap() > 0);
    assert!(m["adapt"]["live"]["passive_samples"].as_u64().unwrap() > 0);
    assert_eq!(m["instance_sets_started"]["on_dispatch"], 0, "{m}");
    // Every job ended once, with an output.
    assert!(
        agent.files("failed").is_empty(),
        "{:?}",
        agent.files("failed")
    );
    assert_eq!(agent.files("out").len(), names.len());
    assert!(
        agent.log().contains("re-plans from its live profile"),
        "the SIGHUP re-planned from the live profile: {}",
        agent.log()
    );
    // What it learnt outlives the agent: the live file holds the corrected points.
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
    let live = LiveProfile::load(&agent.state().join("profiles/m.live.json")).unwrap();
    let mut kept = 0;
    for p in fresh.points.iter().filter(|p| p.threads == used) {
        let Some(lp) = live
            .point(p.threads, p.batch)
            .filter(|lp| lp.samples_len() > 3)
        else {
            continue;
        };
        let est = lp.estimate().unwrap();
        assert!(
            est < p.latency_ms * 1.6,
            "(t={}, b={}): live {est:.1} ms, fresh {:.1} ms, told {:.1} ms",
            p.threads,
            p.batch,
            p.latency_ms,
            p.latency_ms * 3.0
        );
        kept += 1;
    }
    assert!(kept >= 2.min(told), "{kept} points corrected");
    // A restart plans from it, not from the wrong cached profile.
    agent.spawn(&[]);
    assert!(agent.log().contains("planning from the live profile"));
    let st = agent.status();
    assert_eq!(
        st["models"][0]["adapt"]["last_replan"]["reason"],
        "restored"
    );
    assert!(
        excess_on_live(&st, &sizes) < 0.08,
        "{:.1} %",
        excess_on_live(&st, &sizes) * 100.0
    );
}

#[test]
fn a_batch_size_shift_starts_no_instance_set_and_runs_each_size_with_its_plan() {
    let _alone = alone();
    let mut agent = Agent::configured(
        None,
        "",
        "builtin:tiny_cnn",
        "profile_budget_s = 4\nmax_layouts = 8",
    );
    fs::write(
        &agent.config,
        fs::read_to_string(&agent.config)
            .unwrap()
            .replace("max_batch = 8", "max_batch = 32"),
    )
    .unwrap();
    agent.spawn(&[("RUST_LOG", "debug")]);
    let x = input("tiny_cnn", 32);
    let mut rng = Rng(3);
    let phases: [(&str, Vec<usize>); 3] = [
        ("B=1", vec![1; 30]),
        ("B=32", vec![32; 30]),
        ("mixed", (0..60).map(|_| 1 + rng.below(32)).collect()),
    ];
    let mut n = 0;
    for (_, sizes) in &phases {
        for &b in sizes {
            let name = agent.submit(
                &format!("j{n}.npy"),
                &[("input".into(), x.narrow(0, 0, b as i64))],
            );
            agent.wait(&name).unwrap();
            n += 1;
        }
    }
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == n);
    let m = &st["models"][0];
    assert_eq!(m["instance_sets_started"]["on_dispatch"], 0, "{m}");
    // Each batch ran with the plan for its size (the table in force when it ran: the log
    // names each re-plan, and with none the final table is the one every batch used).
    let log = agent.log();
    if !log.contains("re-planned (") {
        let table = plans(&st);
        let mut seen = 0;
        for line in log.lines().filter(|l| l.contains(": batch of ")) {
            let items: usize = line
                .split(": batch of ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap();
            let summary = line.rsplit_once(" (").unwrap().1.trim_end_matches(')');
            assert_eq!(summary, table[items - 1].summary(), "{line}");
            seen += 1;
        }
        let explored = log.matches("exploration batch of ").count();
        assert_eq!(seen + explored, n, "one logged batch per job");
    }
    assert!(agent.files("failed").is_empty());
    assert_eq!(agent.files("out").len(), n);
}

/// `max_batch_delay_ms`: single-item jobs that arrive close together are run as one batch when
/// the agent may wait for more; without the delay each runs as soon as it is seen.
#[test]
fn a_batch_delay_coalesces_jobs_that_arrive_close_together() {
    let _alone = alone();
    let batches = |delay_ms: u64| -> Vec<usize> {
        let mut agent = Agent::configured(
            None,
            "",
            "builtin:tiny_cnn",
            &format!("plan = \"baseline\"\nmax_batch_delay_ms = {delay_ms}"),
        );
        agent.spawn(&[("RUST_LOG", "debug")]);
        let x = input("tiny_cnn", 1);
        let mut names = Vec::new();
        for i in 0..4 {
            names.push(agent.submit(&format!("j{i}.npy"), &[("input".into(), x.shallow_clone())]));
            std::thread::sleep(Duration::from_millis(40));
        }
        for n in &names {
            agent.wait(n).unwrap();
        }
        assert_eq!(agent.stop(Signal::SIGTERM), 0);
        agent
            .log()
            .lines()
            .filter_map(|l| l.split(": batch of ").nth(1))
            .filter_map(|r| r.split(' ').next()?.parse().ok())
            .collect()
    };
    // inotify sees each job within a millisecond: with no delay, one batch per job.
    assert_eq!(batches(0), vec![1, 1, 1, 1]);
    // Waiting up to 1 s for more gathers all four (120 ms apart at most).
    assert_eq!(batches(1000), vec![4]);
}

/// Exploration under load, the scenario of a busy node: the 1-thread points told 3× slower
/// than this host runs them, the agent never able to measure in an idle gap (the idle-gap
/// bound is too short for any point) and always given work (4 jobs of 1–16 items
/// outstanding, closed loop). Passive samples alone would never see a 1-thread layout again;
/// exploration batches must measure them back and the plan must follow what was measured —
/// with every job's output equal to a clean run's. By construction (a 3× error against the
/// ±30 % this host drifts), not by how much faster one layout happens to be here.
#[test]
fn a_wrong_profile_is_corrected_under_sustained_load_without_idle_gaps() {
    let _alone = alone();
    // One batch at a time: this is the plan table's exploration (lanes would measure the
    // 1-thread points by themselves, and take the load exploration is tested under).
    let extra = "profile_budget_s = 15\nprecision = \"f32\"\nmax_probe_delay_ms = 0.001\nconcurrent_batches = 1";
    let mut agent = Agent::configured(None, "", "builtin:resnet18", extra);
    fs::write(
        &agent.config,
        fs::read_to_string(&agent.config)
            .unwrap()
            .replace("max_batch = 8", "max_batch = 16"),
    )
    .unwrap();
    let fresh = agent.profile();
    let truth = fresh.curve().unwrap();
    let topo = packrat::planner::topology::usable(None).unwrap();
    let best = PlanTable::from_curve(&truth, &topo, 16).unwrap();
    let mut wrong = fresh.clone();
    for p in &mut wrong.points {
        if p.threads == 1 {
            p.latency_ms *= 3.0;
        }
    }
    wrong.save(&agent.state().join("profiles/m.json")).unwrap();
    let wrong_table = PlanTable::from_curve(&wrong.curve().unwrap(), &topo, 16).unwrap();
    assert!(
        wrong_table
            .plans
            .iter()
            .all(|p| p.instances.iter().all(|i| i.threads != 1)),
        "precondition: at 3× the wrong profile steers every size away from 1 thread: {:?}",
        wrong_table.plans
    );
    // The 1-thread grid points: each must be measured back.
    let grid: Vec<usize> = packrat::planner::profile::targets(topo.len(), 16)
        .into_iter()
        .find(|(t, _)| *t == 1)
        .map(|(_, bs)| bs)
        .unwrap();
    // Back near the fresh profile (within 1.6×; they were told 3×), each backed by more
    // samples than the prior's weight. Not closer: on 2 vCPUs under load a point drifts
    // ±30 % (sometimes 2×) from what the profiler saw minutes before — every layout, not
    // the corrected ones only; BENCHMARKS.md reports how close they came.
    let measured_back = |st: &serde_json::Value| -> Vec<usize> {
        let Some(points) = st["models"][0]["adapt"]["points"].as_array() else {
            return Vec::new();
        };
        grid.iter()
            .copied()
            .filter(|&b| {
                let f = fresh
                    .points
                    .iter()
                    .find(|p| p.threads == 1 && p.batch == b)
                    .map_or(f64::NAN, |p| p.latency_ms);
                points.iter().any(|q| {
                    q["threads"] == 1
                        && q["batch"] == b
                        && q["samples"].as_u64().unwrap_or(0) > 3
                        && q["estimate_ms"]
                            .as_f64()
                            .is_some_and(|e| e < f * 1.6 && e > f / 1.6)
                })
            })
            .collect()
    };
    // How much slower the table in force is, over every size, than the optimum on what the
    // agent measured (its live profile), and its B=16 plan than the fresh profile's optimum.
    let excess = |st: &serde_json::Value| -> (f64, f64) {
        let points: Vec<serde_json::Value> = st["models"][0]["adapt"]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| serde_json::json!({"threads": p["threads"], "batch": p["batch"], "latency_ms": p["estimate_ms"]}))
            .collect();
        let live: ProfileFile = serde_json::from_value(
            serde_json::json!({"model": "m", "cores": topo.len(), "points": points}),
        )
        .unwrap();
        let live = live.curve().unwrap();
        let optimum = PlanTable::from_curve(&live, &topo, 16).unwrap();
        let table = plans(st);
        let on_live = (1..=16)
            .map(|b| {
                evaluate(&table[b - 1], &live).unwrap()
                    / optimum.for_batch(b).predicted_latency_ms.unwrap()
                    - 1.0
            })
            .sum::<f64>()
            / 16.0;
        let b16 = evaluate(&table[15], &truth).unwrap()
            / best.for_batch(16).predicted_latency_ms.unwrap()
            - 1.0;
        (on_live, b16)
    };

    agent.spawn(&[]);
    let x = input("resnet18", 16);
    let want = reference("resnet18", &[x.shallow_clone()]);
    let mut rng = Rng(11);
    let mut outstanding: Vec<(String, usize)> = Vec::new();
    let mut done: Vec<(String, usize, std::path::PathBuf)> = Vec::new();
    let mut n = 0;
    let t0 = Instant::now();
    let mut last_look = Instant::now();
    let mut converged = None;
    while t0.elapsed() < Duration::from_secs(120) {
        while outstanding.len() < 4 {
            let b = 1 + rng.below(16);
            let name = agent.submit(
                &format!("j{n}.npy"),
                &[("input".into(), x.narrow(0, 0, b as i64))],
            );
            outstanding.push((name, b));
            n += 1;
        }
        outstanding.retain(|(name, b)| {
            match packrat::spool::client::wait(&agent.model_dir(), name, Duration::ZERO) {
                Ok(packrat::spool::client::Outcome::Output(p)) => {
                    done.push((name.clone(), *b, p));
                    false
                }
                Ok(packrat::spool::client::Outcome::Failed(why)) => panic!("{name}: {why}"),
                Err(_) => true,
            }
        });
        // Polling is not free on 2 vCPUs: look every 20 ms (a batch takes 50–600 ms).
        std::thread::sleep(Duration::from_millis(20));
        if last_look.elapsed() > Duration::from_secs(2) {
            last_look = Instant::now();
            let st = agent.status();
            let (on_live, b16) = excess(&st);
            if measured_back(&st).len() == grid.len() && on_live < 0.05 {
                eprintln!(
                    "B=16: {:.1} % over the fresh profile's optimum",
                    b16 * 100.0
                );
                converged = Some((t0.elapsed(), st));
                break;
            }
        }
    }
    let (took, st) = converged.unwrap_or_else(|| {
        let st = agent.status();
        let (on_live, b16) = excess(&st);
        panic!(
            "not converged in 120 s of load: 1-thread points measured back {:?} of {grid:?}; the table {:.1} % over the live optimum; B=16 runs {}, {:.1} % over the fresh optimum {}: {st}\n{}",
            measured_back(&st),
            on_live * 100.0,
            plans(&st)[15].summary(),
            b16 * 100.0,
            best.for_batch(16).summary(),
            agent.log()
        )
    });
    let m = &st["models"][0];
    for q in m["adapt"]["points"].as_array().unwrap() {
        if let Some(f) = fresh
            .points
            .iter()
            .find(|p| q["threads"] == p.threads && q["batch"] == p.batch)
        {
            eprintln!(
                "(t={}, b={}): live {:.1} ms ({} samples), fresh {:.1} ms: {:+.0} %",
                q["threads"],
                q["batch"],
                q["estimate_ms"].as_f64().unwrap_or(f64::NAN),
                q["samples"],
                f.latency_ms,
                (q["estimate_ms"].as_f64().unwrap_or(f64::NAN) / f.latency_ms - 1.0) * 100.0
            );
        }
    }
    eprintln!(
        "converged under load in {:.0} s: {} exploration batches, {:.0} ms against the plan, {:.2} % of serving spent; B=16 runs {} (fresh optimum {})",
        took.as_secs_f64(),
        m["adapt"]["explore"]["batches"],
        m["adapt"]["explore"]["cost_ms"].as_f64().unwrap_or(f64::NAN),
        m["adapt"]["explore"]["spent_pct"].as_f64().unwrap_or(f64::NAN),
        plans(&st)[15].summary(),
        best.for_batch(16).summary()
    );
    // No idle-gap measurement helped: exploration did it. The plan follows what was measured
    // (the convergence test above: within 5 % of the live optimum); whether that is a
    // 1-thread layout at B=16 is this host's answer under load — 2 × 1 and 1 × 2 threads
    // come within a few % of each other here — not the test's.
    assert_eq!(m["adapt"]["live"]["active_samples"], 0, "{m}");
    assert!(m["adapt"]["explore"]["batches"].as_u64().unwrap() > 0);
    assert!(m["adapt"]["live"]["explored_samples"].as_u64().unwrap() > 0);
    eprintln!("re-plans: {}", m["adapt"]["replans"]);
    assert_eq!(m["instance_sets_started"]["on_dispatch"], 0, "{m}");
    assert!(agent.log().contains("explored under load"));
    // Every job ends once, with the output a clean run gives (exploration batches too).
    for (name, b) in std::mem::take(&mut outstanding) {
        let p = agent.wait(&name).unwrap();
        done.push((name, b, p));
    }
    assert_eq!(done.len(), n);
    assert!(agent.files("failed").is_empty());
    assert_eq!(agent.files("out").len(), n);
    for (name, b, path) in &done {
        // One output tensor (an .npy job gets an .npy output).
        let got = read(path);
        assert_eq!(got.len(), 1, "{name}");
        assert_close(&got[0].1, &want[0].1.narrow(0, 0, *b as i64));
    }
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
}
