//! Several batches in flight, through the real agent: lanes run their own batches on disjoint
//! cores (read from /proc while they run), every job ends once through SIGTERM and kill -9
//! mid-flight, and outputs equal a clean run's.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use tch::Tensor;

/// These tests load the host: one at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// An `auto` agent on resnet18 (profiled first with `packrat profile`), not started.
fn profiled(extra: &str) -> Agent {
    let agent = Agent::configured(
        None,
        "",
        "builtin:resnet18",
        &format!("profile_budget_s = 4\nmax_job_bytes = 100000000\n{extra}"),
    );
    agent.profile();
    agent
}

fn cpus_of(list: &str) -> BTreeSet<usize> {
    packrat::planner::topology::parse_cpu_list(list)
        .unwrap()
        .into_iter()
        .collect()
}

fn jobs(n: usize, items: i64) -> Vec<(String, Tensor)> {
    (0..n)
        .map(|i| (format!("j{i:03}.npy"), input("resnet18", items)))
        .collect()
}

/// Every job has exactly one outcome, an output equal to the in-process model's, and nothing
/// is left in incoming/ or claims/.
fn check_all_served(agent: &Agent, jobs: &[(String, Tensor)], names: &[String]) {
    let outs: Vec<_> = names
        .iter()
        .map(|n| agent.wait(n).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect();
    // One reference run over every job's items (loading the model once), split per job.
    let all = Tensor::cat(&jobs.iter().map(|(_, x)| x).collect::<Vec<_>>(), 0);
    let want = reference("resnet18", &[all]).remove(0).1;
    let mut off = 0;
    for ((_, x), out) in jobs.iter().zip(&outs) {
        let n = x.size()[0];
        assert_close(&read(out)[0].1, &want.narrow(0, off, n));
        off += n;
    }
    let mut out = agent.files("out");
    out.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(out, want, "one output per job, none twice");
    assert!(
        agent.files("failed").is_empty(),
        "{:?}",
        agent.files("failed")
    );
    assert!(agent.files("incoming").is_empty() && agent.claimed().is_empty());
}

#[test]
fn concurrent_batches_run_on_disjoint_cores_and_every_job_ends_once() {
    let _alone = alone();
    let cores = allowed_cpus().len();
    if cores < 2 {
        // One core cannot hold two lanes: the agent runs one batch at a time, as tested
        // everywhere else.
        return;
    }
    let mut agent = profiled(&format!("concurrent_batches = {cores}"));
    agent.spawn(&[]);
    let pid = agent.pid();
    let jobs = jobs(40, 4);
    kill(pid, Signal::SIGSTOP).unwrap();
    let names: Vec<String> = jobs
        .iter()
        .map(|(n, x)| agent.submit(n, &[("input".into(), x.shallow_clone())]))
        .collect();
    kill(pid, Signal::SIGCONT).unwrap();
    // The lanes' instance threads, as the agent reports them: each lane pinned to its own
    // cores, verified from /proc, none sharing a core with another lane.
    let st = agent.status_when(|st| {
        st["models"][0]["concurrency"]["lane_instances"]
            .as_array()
            .is_some_and(|l| {
                l.len() == cores
                    && l.iter()
                        .all(|i| i.as_array().is_some_and(|i| !i.is_empty()))
            })
    });
    let lanes: Vec<Vec<(i32, Vec<usize>)>> = st["models"][0]["concurrency"]["lane_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lane| {
            lane.as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let cores = i["cores"].as_array().unwrap();
                    (
                        i["tid"].as_i64().unwrap() as i32,
                        cores.iter().map(|c| c.as_u64().unwrap() as usize).collect(),
                    )
                })
                .collect()
        })
        .collect();
    let proc_cpus: std::collections::BTreeMap<i32, String> = task_cpus(pid)
        .into_iter()
        .map(|(tid, _, cpus)| (tid, cpus))
        .collect();
    let mut owner = std::collections::BTreeMap::new();
    for (k, lane) in lanes.iter().enumerate() {
        assert!(!lane.is_empty(), "lane {k} has no instances: {lanes:?}");
        for (tid, cs) in lane {
            let pinned = cpus_of(&proc_cpus[tid]);
            assert_eq!(
                pinned,
                cs.iter().copied().collect(),
                "thread {tid} pinned as reported"
            );
            for c in pinned {
                assert_eq!(
                    *owner.entry(c).or_insert(k),
                    k,
                    "core {c} in two lanes: {lanes:?}"
                );
            }
        }
    }
    let lane_tids: Vec<(usize, i32)> = lanes
        .iter()
        .enumerate()
        .flat_map(|(k, l)| l.iter().map(move |(t, _)| (k, *t)))
        .collect();
    // While they run: at some moment instances of several lanes run at once.
    let running = |tid: i32| {
        fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('R'))
            })
            .unwrap_or(false)
    };
    let mut most_at_once = 0;
    let t0 = Instant::now();
    while agent.files("out").len() < names.len() && t0.elapsed() < Duration::from_secs(120) {
        let lanes_running: BTreeSet<usize> = lane_tids
            .iter()
            .filter(|(_, t)| running(*t))
            .map(|(k, _)| *k)
            .collect();
        most_at_once = most_at_once.max(lanes_running.len());
        std::thread::sleep(Duration::from_millis(2));
    }
    check_all_served(&agent, &jobs, &names);
    let st = agent.status_when(|st| st["models"][0]["jobs_done"] == 40);
    let c = &st["models"][0]["concurrency"];
    assert_eq!(c["lanes"], cores as u64, "{c}");
    assert!(c["lane_batches"].as_u64().unwrap() > 0, "{c}");
    assert!(
        most_at_once >= 2 && c["max_in_flight"].as_u64().unwrap() >= 2,
        "never two batches at once ({most_at_once} lanes seen running at once): {c}"
    );
    assert!(
        agent.log().contains("batches at once on their own cores"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
}

#[test]
fn sigterm_and_kill_9_with_batches_in_flight_lose_nothing() {
    let _alone = alone();
    let cores = allowed_cpus().len();
    let mut agent = profiled(&format!("concurrent_batches = {}", cores.max(1)));
    agent.spawn(&[]);
    let jobs = jobs(30, 3);
    kill(agent.pid(), Signal::SIGSTOP).unwrap();
    let names: Vec<String> = jobs
        .iter()
        .map(|(n, x)| agent.submit(n, &[("input".into(), x.shallow_clone())]))
        .collect();
    kill(agent.pid(), Signal::SIGCONT).unwrap();
    let wait_for_outputs = |agent: &Agent, n: usize| {
        let t0 = Instant::now();
        while agent.files("out").len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "stuck: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // SIGTERM mid-flight: the batches in flight finish, the rest goes back to incoming/.
    wait_for_outputs(&agent, 3);
    assert_eq!(agent.stop(Signal::SIGTERM), 0, "{}", agent.log());
    assert!(
        agent.claimed().is_empty(),
        "SIGTERM gives back what it holds"
    );
    let done = agent.files("out").len();
    assert_eq!(done + agent.files("incoming").len(), names.len());
    // kill -9 mid-flight: what it claimed is taken over by the next agent.
    agent.spawn(&[]);
    wait_for_outputs(&agent, done + 3);
    agent.stop(Signal::SIGKILL);
    agent.spawn(&[]);
    check_all_served(&agent, &jobs, &names);
    assert_eq!(agent.stop(Signal::SIGTERM), 0);
}
