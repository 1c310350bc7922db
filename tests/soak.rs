//! The soak test: three agent processes serve one spool (two on disjoint cores, one on all)
//! while jobs of mixed sizes and formats arrive in waves and random agents are killed with
//! SIGKILL, stopped with SIGTERM, or reloaded with SIGHUP. At the end every job has exactly
//! one outcome, no output is duplicated, nothing is left claimed, and every output equals the
//! model's output for that job.
//!
//! ResNet-18, so that kills land on running batches. CI runs a bounded version (120 jobs, 8
//! kills); `packaging/soak.sh` runs the full one (1,200 jobs, 60 kills) through
//! `PACKRAT_SOAK_JOBS` and `PACKRAT_SOAK_KILLS` (`PACKRAT_SOAK_MODEL` picks another built-in).
//! `PACKRAT_SOAK_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use packrat::spool::client;
use tch::Tensor;

const FORMATS: [&str; 3] = ["npy", "npz", "safetensors"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn three_agents_under_kill_9_sigterm_and_sighup_end_every_job_exactly_once() {
    let model = std::env::var("PACKRAT_SOAK_MODEL").unwrap_or_else(|_| "resnet18".into());
    let model = model.as_str();
    let jobs_n = env_or("PACKRAT_SOAK_JOBS", 120) as usize;
    let kills_n = env_or("PACKRAT_SOAK_KILLS", 8);
    let seed = env_or("PACKRAT_SOAK_SEED", 0x5eed_0000 ^ std::process::id() as u64) | 1;
    eprintln!("soak: {jobs_n} jobs, {kills_n} kills, PACKRAT_SOAK_SEED={seed}");
    let mut rng = Rng(seed);

    let cpus = allowed_cpus();
    let core = |k: usize| format!("cores = \"{}\"", cpus[k % cpus.len()]);
    let extra = "plan = \"baseline\"";
    // With PACKRAT_SOAK_SHARED_FS=DIR (a `shared-fs up DIR` volume), the agents run as two
    // hosts, each on its own mount of one GlusterFS volume (packaging/soak-shared-fs.sh).
    let shared = std::env::var("PACKRAT_SOAK_SHARED_FS").ok();
    let source = format!("builtin:{model}");
    let mut agents: Vec<Agent> = Vec::new();
    for k in 0..3 {
        let top = if k < 2 { core(k) } else { String::new() };
        let mut a = match &shared {
            Some(dir) => {
                let host = 1 + k % 2;
                let spool = Path::new(dir).join(format!("h{host}/spool"));
                let mut a = Agent::configured(Some(&spool), &top, &source, extra);
                let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/shared-fs");
                a.wrap = vec![
                    tool.display().to_string(),
                    "exec".into(),
                    dir.clone(),
                    host.to_string(),
                ];
                a
            }
            None => {
                let spool = agents.first().map(|a: &Agent| a.spool.clone());
                Agent::configured(spool.as_deref(), &top, &source, extra)
            }
        };
        a.spawn(&[]);
        agents.push(a);
    }
    let model_dir = agents[0].model_dir();

    // Job files, written beforehand: sizes 1..12, every format.
    let staging = tempfile::tempdir().unwrap();
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for i in 0..jobs_n {
        let fmt = FORMATS[rng.below(3)];
        let x = input(model, 1 + rng.below(12) as i64);
        let path = staging.path().join(format!("s{i:05}.{fmt}"));
        write_job(&path, &[("input".into(), x.shallow_clone())]);
        inputs.push((path.to_string_lossy().into_owned(), x));
    }

    // Waves of jobs, and between them chaos on random agents.
    let mut submitted: BTreeMap<String, Tensor> = BTreeMap::new();
    let (mut kills, mut terms, mut hups) = (0u64, 0u64, 0u64);
    let waves = (kills_n as usize).max(1) * 2;
    let per_wave = jobs_n.div_ceil(waves);
    let mut pending = inputs.into_iter();
    let t0 = Instant::now();
    while kills < kills_n || submitted.len() < jobs_n {
        for (path, x) in pending.by_ref().take(per_wave) {
            let name = client::submit(&model_dir, Path::new(&path)).unwrap();
            submitted.insert(name, x);
        }
        std::thread::sleep(Duration::from_millis(rng.below(300) as u64));
        let k = rng.below(3);
        match rng.below(10) {
            0..=5 if kills < kills_n => {
                agents[k].stop(Signal::SIGKILL);
                kills += 1;
                agents[k].spawn(&[]);
            }
            6..=7 => {
                assert_eq!(agents[k].stop(Signal::SIGTERM), 0, "{}", agents[k].log());
                terms += 1;
                agents[k].spawn(&[]);
            }
            _ => {
                kill(agents[k].pid(), Signal::SIGHUP).unwrap();
                hups += 1;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(900), "soak ran too long");
    }
    eprintln!(
        "soak: chaos done in {:.0} s: {kills} SIGKILL, {terms} SIGTERM, {hups} SIGHUP",
        t0.elapsed().as_secs_f64()
    );

    // Every job ends exactly once.
    tch::set_num_threads(1);
    let b = packrat::engine::Builtin::from_name(model).unwrap();
    let clean = packrat::engine::Model::load(
        "clean",
        &packrat::engine::ModelSource::Builtin(b),
        b.default_inputs(),
        packrat::engine::Precision::F32,
    )
    .unwrap();
    let mut crashed = 0;
    for (name, x) in &submitted {
        match client::wait(&model_dir, name, Duration::from_secs(120)).unwrap() {
            client::Outcome::Output(p) => {
                let want = clean.forward(std::slice::from_ref(x)).unwrap();
                assert_close(&read(&p)[0].1, &want[0].1);
            }
            client::Outcome::Failed(reason) => {
                // Legitimate only for a job that was running at MAX_ATTEMPTS crashes.
                assert!(reason.contains("died"), "{name} failed: {reason}");
                crashed += 1;
            }
        }
    }
    for a in agents.iter_mut() {
        assert_eq!(a.stop(Signal::SIGTERM), 0, "{}", a.log());
    }
    // How much work the kills interrupted: jobs taken over from dead agents.
    let taken: usize = agents
        .iter()
        .flat_map(|a| {
            a.log()
                .lines()
                .filter_map(|l| {
                    l.split("took over ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    let names: Vec<&String> = submitted.keys().collect();
    let out = agents[0].files("out");
    let failed_records: Vec<String> = agents[0]
        .files("failed")
        .into_iter()
        .filter(|n| n.ends_with(".error.json"))
        .collect();
    assert_eq!(
        out.len() + failed_records.len(),
        names.len(),
        "outcomes: {} outputs + {} failures for {} jobs",
        out.len(),
        failed_records.len(),
        names.len()
    );
    for n in &out {
        assert!(submitted.contains_key(n), "an output nobody asked for: {n}");
    }
    assert_eq!(failed_records.len(), crashed);
    assert!(agents[0].claimed().is_empty(), "{:?}", agents[0].claimed());
    assert!(agents[0].files("incoming").is_empty());
    // No agent's half-written temp file survives either.
    let temps: Vec<String> = fs::read_dir(model_dir.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    eprintln!(
        "soak: {} jobs, {} outputs, {crashed} failed as crashed_agent, {taken} taken over from killed agents, 0 duplicates, in {:.0} s",
        names.len(),
        out.len(),
        t0.elapsed().as_secs_f64()
    );
}
