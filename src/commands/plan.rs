//! `packrat plan`: the plan a profile gives for one batch size (or a sweep of them), with the
//! baseline and the reference semantics beside it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::planner::profile::Curve;
use crate::planner::profile::ProfileFile;
use crate::planner::topology::Topology;
use crate::planner::{cores_str, dp, plan_from, serving, PlanTable};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    profile: PathBuf,
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
    #[arg(long, value_name = "JOBS_PER_S")]
    rate: Option<f64>,
    /// With --rate: items per job.
    #[arg(long, default_value_t = 1.0)]
    job_items: f64,
}

pub fn run(args: &Args) -> Result<i32> {
    let (cores, batch) = (args.cores, args.batch);
    let pf = ProfileFile::load(&args.profile)?;
    let curve = pf
        .curve()
        .with_context(|| format!("profile {}", args.profile.display()))?;
    if cores == 0 || batch == 0 {
        bail!("--cores and --batch must be >= 1");
    }
    if cores > pf.cores.max(curve.max_threads()) {
        bail!(
            "the profile was measured on {} cores; plan for --cores {} or fewer",
            pf.cores,
            pf.cores
        );
    }
    let topo = Topology::flat(cores);
    if let Some(rate) = args.rate {
        return queue(&curve, &topo, batch, rate, args.job_items);
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
