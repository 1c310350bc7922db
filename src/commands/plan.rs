//! `packrat plan`: the plan a profile gives for one batch size (or a sweep of them), with the
//! baseline and the reference semantics beside it; for a queue (`--rate`); or, given several
//! profiles each with its rate, the agent's joint split of the cores among those models.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::planner::profile::Curve;
use crate::planner::profile::ProfileFile;
use crate::planner::topology::Topology;
use crate::planner::{cores_str, dp, partition, plan_from, serving, PlanTable};

#[derive(clap::Args)]
pub struct Args {
    /// A latency profile; given several times (each with its --rate), the joint split of the
    /// cores among those models.
    #[arg(long, required = true)]
    profile: Vec<PathBuf>,
    #[arg(long)]
    cores: usize,
    #[arg(long)]
    batch: usize,
    #[arg(long)]
    json: bool,
    /// Print a table for every batch 1..=BATCH, with the baseline and the reference DP.
    #[arg(long)]
    sweep: bool,
    /// Plan for a queue instead: jobs arriving at this many per second (BATCH is max_batch),
    /// how many batches to run at once on their own cores, each lane count's prediction.
    /// With several profiles: each one's rate, in the same order.
    #[arg(long, value_name = "JOBS_PER_S")]
    rate: Vec<f64>,
    /// With --rate: items per job.
    #[arg(long, default_value_t = 1.0)]
    job_items: f64,
}

/// A profile, its curve, checked against `--cores`.
fn load(path: &Path, cores: usize) -> Result<(ProfileFile, Curve)> {
    let pf = ProfileFile::load(path)?;
    let curve = pf
        .curve()
        .with_context(|| format!("profile {}", path.display()))?;
    if cores > pf.cores.max(curve.max_threads()) {
        bail!(
            "{} was measured on {} cores; plan for --cores {} or fewer",
            path.display(),
            pf.cores,
            pf.cores
        );
    }
    Ok((pf, curve))
}

pub fn run(args: &Args) -> Result<i32> {
    let (cores, batch) = (args.cores, args.batch);
    if cores == 0 || batch == 0 {
        bail!("--cores and --batch must be >= 1");
    }
    if args.profile.len() > 1 {
        return joint(args);
    }
    let path = &args.profile[0];
    let (pf, curve) = load(path, cores)?;
    let topo = Topology::flat(cores);
    match args.rate[..] {
        [] => {}
        [rate] => return queue(&curve, &topo, batch, rate, args.job_items),
        _ => bail!("one --rate per --profile"),
    }
    let t0 = Instant::now();
    let sol = dp::solve(&curve, cores, batch);
    let solve_ms = t0.elapsed().as_secs_f64() * 1e3;
    if args.sweep {
        println!(
            "{:>5}  {:>10}  {:>10}  {:>10}  {:>7}  {:>7}  plan",
            "batch", "planned", "baseline", "reference", "vs base", "vs ref"
        );
        for b in 1..=batch {
            let p = plan_from(&sol, &curve, &topo, b)?;
            let pred = p.predicted_latency_ms.unwrap_or(f64::NAN);
            let reference = dp::reference(&curve, cores, b).map(|r| r.0);
            let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            let r = |x: Option<f64>| {
                x.map(|v| format!("{:.2}x", v / pred))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{b:>5}  {:>10.2}  {:>10}  {:>10}  {:>7}  {:>7}  {}",
                pred,
                f(p.baseline_latency_ms),
                f(reference),
                r(p.baseline_latency_ms),
                r(reference),
                p.summary()
            );
        }
        return Ok(0);
    }
    let p = plan_from(&sol, &curve, &topo, batch)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(0);
    }
    // A profile packrat measured names the engine, its version and the precision it ran in.
    let measured_on = pf
        .framework
        .as_deref()
        .map(|f| format!(", measured on {f}"))
        .unwrap_or_default();
    println!(
        "model {} ({} cores profiled{measured_on}), batch {batch} on {cores} cores — solved in {solve_ms:.2} ms",
        pf.model, pf.cores
    );
    for (i, inst) in p.instances.iter().enumerate() {
        println!(
            "  instance {i}: {:>2} threads, {:>4} items, cores {}",
            inst.threads,
            inst.batch,
            cores_str(&inst.cores)
        );
    }
    let pred = p.predicted_latency_ms.unwrap_or(f64::NAN);
    println!("  predicted latency: {pred:.2} ms");
    match p.baseline_latency_ms {
        Some(b) => println!("  baseline ⟨1, {cores}, {batch}⟩: {b:.2} ms  → predicted speedup {:.2}x", b / pred),
        None => println!("  baseline ⟨1, {cores}, {batch}⟩: not in the profile ({cores} threads were not measured)"),
    }
    Ok(0)
}

/// Several profiles, each with its rate: the split of the cores the agent's joint partition
/// would choose for these loads (before hysteresis), beside sharing every core and an equal
/// split.
fn joint(args: &Args) -> Result<i32> {
    let (cores, batch, per_job) = (args.cores, args.batch, args.job_items);
    if args.rate.len() != args.profile.len() {
        bail!(
            "{} profiles and {} rates: give one --rate (jobs/s) per --profile, in order",
            args.profile.len(),
            args.rate.len()
        );
    }
    if args.rate.iter().any(|r| !(r.is_finite() && *r >= 0.0)) || per_job < 1.0 {
        bail!("--rate must be >= 0 jobs/s and --job-items >= 1");
    }
    let mut names = Vec::new();
    let mut members = Vec::new();
    for (path, &rate) in args.profile.iter().zip(&args.rate) {
        let (pf, curve) = load(path, cores)?;
        let tables: Vec<Option<(PlanTable, usize)>> = (1..=cores)
            .map(|c| {
                let t = PlanTable::from_curve(&curve, &Topology::flat(c), batch).ok()?;
                let m = serving::measured_batch(&t, &curve);
                Some((t, m))
            })
            .collect();
        let table = |c: usize| {
            tables
                .get(c.checked_sub(1)?)?
                .as_ref()
                .map(|(t, m)| (t, *m))
        };
        let load = rate * per_job;
        let best = |n: usize, slow: f64| partition::best_on(n, &table, slow, load, per_job);
        members.push(partition::Member {
            weight: 1.0,
            min_cores: 1,
            busy: rate > 0.0,
            jobs_per_s: rate,
            load,
            on: (0..=cores).map(|n| best(n, 1.0)).collect(),
            shared: partition::SHARED_SLOWDOWNS
                .iter()
                .map(|&s| best(cores, s))
                .collect(),
            most: partition::most_on(cores, &table, 1.0, per_job),
        });
        names.push(pf.model);
    }
    let per_s: f64 = members.iter().map(|m| m.jobs_per_s.max(1e-3)).sum();
    let show = |cost: Option<f64>| match cost.map(|c| c / per_s) {
        Some(ms) if ms < 1e6 => format!("{ms:.1} ms"),
        Some(_) => "cannot keep up".into(),
        None => "-".into(),
    };
    let split = partition::solve(&members, cores);
    let shared = partition::overlap_cost(&members, cores);
    let equal = partition::equal(members.len(), cores);
    println!(
        "{} models on {cores} cores, max_batch {batch}, {per_job} item(s) per job (predicted from the profiles)",
        members.len()
    );
    println!(
        "  split by load: {}   sharing every core: {}   equal split: {}   (mean per job)",
        show(split.as_ref().map(|s| s.cost)),
        show(shared),
        show(Some(partition::cost_of(&members, &equal)))
    );
    let pick = match partition::choose(&members, cores) {
        Some(partition::Layout::Split(s)) => Some(s),
        _ => None,
    };
    let layout = |p: &Option<crate::planner::serving::Prediction>, n: usize| match p {
        Some(p) if p.lanes > 1 => format!("{} lanes x {} core(s)", p.lanes, n / p.lanes),
        Some(_) => format!("one batch over {n} core(s)"),
        None => "-".into(),
    };
    let ms = |p: &Option<crate::planner::serving::Prediction>| match p {
        Some(p) if p.latency_ms.is_finite() => format!("{:.1}", p.latency_ms),
        Some(_) => "cannot keep up".into(),
        None => "-".into(),
    };
    match &pick {
        Some(s) => {
            println!("packrat: a split by load");
            println!(
                "{:<16} {:>8}  {:<12} {:<22} {:>12}",
                "model", "jobs/s", "cores", "layout", "predicted ms"
            );
            let runs = partition::place(&s.cores, &(0..cores).collect::<Vec<_>>());
            for ((name, m), run) in names.iter().zip(&members).zip(runs) {
                let p = m.on.get(run.len()).cloned().flatten();
                println!(
                    "{name:<16} {:>8.1}  {:<12} {:<22} {:>12}",
                    m.jobs_per_s,
                    if run.is_empty() {
                        "none".to_string()
                    } else {
                        cores_str(&run)
                    },
                    layout(&p, run.len()),
                    ms(&p)
                );
            }
        }
        None => {
            println!("packrat: every model on every core, sharing them");
            println!(
                "{:<16} {:>8}  {:<12} {:<22} {:>12}",
                "model", "jobs/s", "cores", "layout", "predicted ms"
            );
            let on = partition::overlap(&members, cores).unwrap_or_default();
            for (i, (name, m)) in names.iter().zip(&members).enumerate() {
                let p = on.get(i).cloned().flatten();
                println!(
                    "{name:<16} {:>8.1}  {:<12} {:<22} {:>12}",
                    m.jobs_per_s,
                    cores_str(&(0..cores).collect::<Vec<_>>()),
                    layout(&p, cores),
                    ms(&p)
                );
            }
        }
    }
    Ok(0)
}

/// `--rate`: the lane count packrat picks for this load, and what each predicts.
fn queue(curve: &Curve, topo: &Topology, max_batch: usize, rate: f64, per_job: f64) -> Result<i32> {
    if !(rate.is_finite() && rate >= 0.0 && per_job >= 1.0) {
        bail!("--rate must be >= 0 jobs/s and --job-items >= 1");
    }
    let mut tables: Vec<(usize, PlanTable)> = Vec::new();
    for k in serving::lane_counts(topo.len(), topo.len()) {
        let lane = topo.lanes(k).and_then(|l| l.into_iter().next());
        if let Some(lane) = lane {
            if let Ok(t) = PlanTable::from_curve(curve, &lane, max_batch) {
                tables.push((k, t));
            }
        }
    }
    let refs: Vec<(usize, &PlanTable, usize)> = tables
        .iter()
        .map(|(k, t)| (*k, t, serving::measured_batch(t, curve)))
        .collect();
    let Some((pick, all)) = serving::choose_among(&refs, 1.0, rate * per_job, per_job, 1, 0.0)
    else {
        bail!("the profile gives no plan on {} cores", topo.len());
    };
    println!(
        "{rate} jobs/s of {per_job} item(s), max_batch {max_batch}, {} cores (predicted from the profile)",
        topo.len()
    );
    println!(
        "{:>5}  {:>5}  {:>12}  {:>15}  lane plan at that batch",
        "lanes", "batch", "latency ms", "capacity jobs/s"
    );
    for p in &all {
        let plan = tables
            .iter()
            .find(|(k, _)| *k == p.lanes)
            .map(|(_, t)| t.for_batch(p.batch.unwrap_or(max_batch)).summary())
            .unwrap_or_default();
        println!(
            "{:>5}  {:>5}  {:>12}  {:>15.1}  {plan}{}",
            p.lanes,
            p.batch.map_or_else(|| "-".into(), |b| b.to_string()),
            if p.latency_ms.is_finite() {
                format!("{:.2}", p.latency_ms)
            } else {
                "cannot keep up".into()
            },
            p.capacity / per_job,
            if p.lanes == pick.lanes {
                "  <- packrat"
            } else {
                ""
            }
        );
    }
    Ok(0)
}
