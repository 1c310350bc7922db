//! Online adaptation, end to end on the real binary: an agent started on a profile that is
//! wrong for this host corrects it while it serves (idle-gap measurements and every batch it
//! runs) and re-plans by itself, without dropping a job, through a SIGHUP; and a workload whose
//! batch sizes shift never starts an instance set in front of a job.

mod common;

use std::fs;
use std::process::Command;
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

/// Profiles the agent's model once with `packrat profile` (cached in its state dir).
fn profile(agent: &Agent) -> ProfileFile {
    let out = Command::new(env!("CARGO_BIN_EXE_packrat"))
        .args(["profile", "--model", "m", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ProfileFile::load(&agent.state().join("profiles/m.json")).unwrap()
}

fn plans(st: &serde_json::Value) -> Vec<Plan> {
    serde_json::from_value(st["models"][0]["plan_table"].clone()).unwrap()
}

/// How much slower than the optimum `table`'s plan for `b` is, on the curve `truth`.
fn excess(table: &[Plan], b: usize, truth: &Curve, best: &PlanTable) -> f64 {
    let got = evaluate(&table[b - 1], truth).unwrap();
    let opt = best.for_batch(b).predicted_latency_ms.unwrap();
    got / opt - 1.0
}

#[test]
fn a_wrong_profile_is_corrected_while_serving_without_a_restart() {
    let _alone = alone();
    let sizes = [1usize, 2, 4, 8];
    let extra = "profile_budget_s = 15\nmax_probe_delay_ms = 400";
    let mut agent = Agent::configured(None, "", "builtin:resnet18", extra);
    let fresh = profile(&agent);
    let truth = fresh.curve().unwrap();
    let topo = packrat::planner::topology::usable(None).unwrap();
    let best = PlanTable::from_curve(&truth, &topo, 8).unwrap();
    // Make the thread count the optimum uses at b=4 look 3× slower than it is (keeping the
    // profile's key: to the agent it is this host's valid cached profile).
    let used = best.for_batch(4).instances[0].threads;
    let mut wrong = fresh.clone();
    for p in &mut wrong.points {
        if p.threads == used {
            p.latency_ms *= 3.0;
        }
    }
    wrong.save(&agent.state().join("profiles/m.json")).unwrap();
    let wrong_table = PlanTable::from_curve(&wrong.curve().unwrap(), &topo, 8).unwrap();
    let worst = sizes
        .iter()
        .map(|&b| excess(&wrong_table.plans, b, &truth, &best))
        .fold(0.0, f64::max);
    assert!(
        worst > 0.05,
        "precondition: the wrong profile's plans must be measurably worse here ({:.1} %)",
        worst * 100.0
    );

    agent.spawn(&[]);
    let x = input("resnet18", 8);
    let mut rng = Rng(7);
    let mut names = Vec::new();
    let mut converged_after = None;
    let t0 = Instant::now();
    // Converged: re-planned, the table uses the thread count the wrong profile made it avoid
    // (where the fresh optimum does), and predictions hold (the host drifts ±30 % between any
    // two profiles here, so the fresh profile is a reference for shapes, not for times).
    let uses = |table: &[Plan]| {
        sizes.iter().any(|&b| {
            best.for_batch(b)
                .instances
                .iter()
                .any(|i| i.threads == used)
                && table[b - 1].instances.iter().any(|i| i.threads == used)
        })
    };
    assert!(!uses(&wrong_table.plans));
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
        if i % 10 == 9 {
            let st = agent.status();
            let m = &st["models"][0];
            let replanned = m["adapt"]["replans"]
                .as_object()
                .is_some_and(|r| !r.is_empty());
            let err = m["prediction_abs_error_pct"].as_f64();
            if replanned && uses(&plans(&st)) && err.is_some_and(|e| e < 15.0) {
                converged_after = Some((i + 1, err, st));
                break;
            }
        }
    }
    let (jobs, err, st) = converged_after.unwrap_or_else(|| {
        panic!(
            "did not converge in 300 jobs ({:.0} s): {}\n{}",
            t0.elapsed().as_secs_f64(),
            agent.status(),
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
    assert!(agent.log().contains("re-planned ("), "{}", agent.log());
    assert!(
        agent.log().contains("re-plans from its live profile"),
        "the SIGHUP re-planned from the live profile: {}",
        agent.log()
    );
    // What it learnt outlives the agent: the live profile corrected the points made 3× slow.
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
    let live = LiveProfile::load(&agent.state().join("profiles/m.live.json")).unwrap();
    let mut corrected = 0;
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
        corrected += 1;
    }
    assert!(corrected >= 2, "{corrected} points corrected");
    agent.spawn(&[]);
    assert!(agent.log().contains("planning from the live profile"));
    assert!(uses(&plans(&agent.status())));
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
        assert_eq!(seen, n, "one logged batch per job");
    }
    assert!(agent.files("failed").is_empty());
    assert_eq!(agent.files("out").len(), n as usize);
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
