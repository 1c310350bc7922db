//! Deadlines through the real agent: a job names its own deadline or the model sets one; with
//! `on_deadline = "fail"` a job that cannot make it goes to failed/ as `deadline_exceeded`
//! without running, and under overload the agent sheds what cannot make it and serves the
//! rest in time. Every job ends once.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use common::*;
use nix::sys::signal::{kill, Signal};
use tch::Tensor;

fn set_mtime(path: &std::path::Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn record(agent: &Agent, name: &str) -> serde_json::Value {
    let p = agent
        .model_dir()
        .join("failed")
        .join(format!("{name}.error.json"));
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

/// Submits `jobs` while the agent is stopped, dated `arrived`, then lets it go.
fn submit_all(agent: &Agent, jobs: &[(String, Tensor)], arrived: SystemTime) -> Vec<String> {
    kill(agent.pid(), Signal::SIGSTOP).unwrap();
    let names: Vec<String> = jobs
        .iter()
        .map(|(n, x)| agent.submit(n, &[("input".into(), x.shallow_clone())]))
        .collect();
    for n in &names {
        set_mtime(&agent.model_dir().join("incoming").join(n), arrived);
    }
    kill(agent.pid(), Signal::SIGCONT).unwrap();
    names
}

fn deadlines(st: &serde_json::Value) -> (u64, u64, u64, u64) {
    let d = &st["models"][0]["deadlines"];
    let n = |k: &str| d[k].as_u64().unwrap();
    (n("on_time"), n("late"), n("expired"), n("started_late"))
}

#[test]
fn a_job_past_its_deadline_is_failed_unrun_with_the_reason() {
    let agent = Agent::start("tiny_cnn", "on_deadline = \"fail\"");
    let x = |b| input("tiny_cnn", b);
    let past = SystemTime::now() - Duration::from_secs(10);
    // Dated 10 s ago: the 50 ms one is long past due, the 60 s one is not, and the one
    // without a deadline has none.
    let names = submit_all(
        &agent,
        &[
            ("late.deadline=50ms.npy".into(), x(3)),
            ("soon.deadline=60s.npy".into(), x(2)),
            ("free.npy".into(), x(1)),
            ("bad.deadline=soon.npy".into(), x(1)),
        ],
        past,
    );
    let why = agent.wait(&names[0]).unwrap_err();
    assert!(why.contains("was due") && why.contains("not run"), "{why}");
    assert_eq!(record(&agent, &names[0])["error"], "deadline_exceeded");
    let why = agent.wait(&names[3]).unwrap_err();
    assert!(why.contains("deadline=250ms"), "{why}");
    assert_eq!(record(&agent, &names[3])["error"], "bad_name");
    for (n, b) in [(&names[1], 2), (&names[2], 1)] {
        let got = read(&agent.wait(n).unwrap());
        assert_eq!(got[0].1.size(), [b, 10]);
    }
    assert_eq!(agent.files("out").len(), 2, "the late job has no output");
    let st = agent.status_when(|st| st["models"][0]["jobs_failed"] == 2);
    // The 60 s job on time; the late one expired, and no job started after it was due.
    assert_eq!(deadlines(&st), (1, 0, 1, 0), "{st}");
}

#[test]
fn with_on_deadline_run_a_late_job_still_runs_and_is_counted_late() {
    let agent = Agent::start("tiny_cnn", "deadline_ms = 50");
    let past = SystemTime::now() - Duration::from_secs(10);
    let x = input("tiny_cnn", 2);
    let names = submit_all(&agent, &[("old.npy".into(), x.shallow_clone())], past);
    let got = read(&agent.wait(&names[0]).unwrap());
    assert_close(&got[0].1, &reference("tiny_cnn", &[x])[0].1);
    // A fresh job has 50 ms (the model's deadline_ms) and makes it.
    let fresh = agent.submit("fresh.npy", &[("input".into(), input("tiny_cnn", 1))]);
    agent.wait(&fresh).unwrap();
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 2);
    let (on_time, late, expired, started_late) = deadlines(&st);
    assert_eq!((late, expired, started_late), (1, 0, 1), "{st}");
    // The fresh one is on time unless this host stalled it past 50 ms.
    assert!(on_time + late == 2, "{st}");
}

#[test]
fn under_overload_fail_sheds_what_cannot_make_it_and_serves_the_rest_in_time() {
    let mut agent = Agent::start("resnet18", "plan = \"baseline\"\nmax_job_bytes = 100000000");
    // This host's batch time: four 4-item jobs, one batch each (max_batch is 8).
    for i in 0..4 {
        let n = agent.submit(
            &format!("w{i}.npy"),
            &[("input".into(), input("resnet18", 4))],
        );
        agent.wait(&n).unwrap();
    }
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 4);
    let m = &st["models"][0];
    let batch_ms = m["batch_ms_sum"].as_f64().unwrap() / m["batches"].as_f64().unwrap();
    // A deadline that 8 such batches fit in, and 30 jobs at once (15 batches of 8 items,
    // each slower than two of 4 only if batching did not pay): most of them cannot make it,
    // whatever this host's speed.
    let deadline_ms = (8.0 * batch_ms).ceil();
    let text = fs::read_to_string(&agent.config).unwrap().replace(
        "plan = \"baseline\"",
        &format!("plan = \"baseline\"\ndeadline_ms = {deadline_ms}\non_deadline = \"fail\""),
    );
    fs::write(&agent.config, text).unwrap();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    agent.status_when(|st| st["models"][0]["deadlines"]["on_deadline"] == "fail");

    let jobs: Vec<(String, Tensor)> = (0..30)
        .map(|i| (format!("j{i:02}.npy"), input("resnet18", 4)))
        .collect();
    let names = submit_all(&agent, &jobs, SystemTime::now());
    // Every outcome first, then the references: computing them now would take the agent's cores.
    let outcomes: Vec<Result<std::path::PathBuf, String>> =
        names.iter().map(|n| agent.wait(n)).collect();
    let mut served: u64 = 0;
    for (((_, x), n), outcome) in jobs.iter().zip(&names).zip(outcomes) {
        match outcome {
            Ok(out) => {
                served += 1;
                let got = read(&out);
                assert_close(&got[0].1, &reference("resnet18", &[x.shallow_clone()])[0].1);
            }
            Err(why) => {
                assert_eq!(
                    record(&agent, n)["error"],
                    "deadline_exceeded",
                    "{n}: {why}"
                );
            }
        }
    }
    // Every job ended once: an output or a record, never both, nothing left behind.
    let outs: Vec<String> = agent
        .files("out")
        .into_iter()
        .filter(|o| o.starts_with('j'))
        .collect();
    let failed: Vec<String> = agent
        .files("failed")
        .into_iter()
        .filter(|f| !f.ends_with(".error.json"))
        .collect();
    assert_eq!(
        outs.len() + failed.len(),
        30,
        "out {outs:?} failed {failed:?}"
    );
    assert!(outs.iter().all(|o| !failed.contains(o)));
    assert!(agent.files("incoming").is_empty() && agent.claimed().is_empty());
    let st = agent.status_when(|st| {
        let (a, b, c, _) = deadlines(st);
        a + b + c == 30
    });
    let (on_time, late, expired, started_late) = deadlines(&st);
    assert_eq!(on_time + late, served, "{st}");
    assert_eq!(expired as usize, failed.len(), "{st}");
    assert!(on_time >= 1 && expired >= 1, "{st}");
    assert_eq!(started_late, 0, "no job started after it was due: {st}");
    println!(
        "batch {batch_ms:.1} ms, deadline {deadline_ms} ms: {on_time} on time, {late} late, {expired} expired"
    );
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
}
