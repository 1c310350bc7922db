//! `packrat bench`: the baseline ⟨1, T, B⟩ against the planned split, side by side.
//!
//! The two run interleaved in rounds (A B, then B A, …) in one process, because these machines
//! drift ±30 % from minute to minute: only medians and ratios of interleaved runs mean
//! anything. Writes CSV, JSON and an SVG plot of latency vs batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use tch::Tensor;

use crate::config::{Config, PlanChoice};
use crate::engine::{InstancePool, InstanceSet, InstanceSpec, Model};
use crate::planner::stats::percentile;
use crate::planner::{Plan, PlanTable};
use crate::runtime::plans::{build_plans, layout, Profiling};
use crate::runtime::precision::resolve;

const MAX_ROUNDS: usize = 41;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub model: String,
    /// Comma-separated batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub batches: Vec<usize>,
    /// Timed rounds per batch size at least (each round runs both configurations once); cheap
    /// batch sizes get more, up to 41, so that each configuration has ~2 s of samples.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Rounds that also time T1(B), the whole batch on one thread (0 to skip: it is slow).
    #[arg(long, default_value_t = 3)]
    pub t1_rounds: usize,
    /// Where the CSV, JSON and SVG go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub batch: usize,
    pub plan: String,
    pub baseline_median_ms: f64,
    pub planned_median_ms: f64,
    pub speedup: f64,
    pub predicted_ms: Option<f64>,
    pub prediction_error_pct: Option<f64>,
    /// The profile's prediction for the baseline.
    pub baseline_predicted_ms: Option<f64>,
    /// The prediction error after removing the host's drift since profiling, as seen on the
    /// baseline in the same rounds: (planned/predicted) / (baseline/baseline predicted) − 1.
    pub drift_corrected_error_pct: Option<f64>,
    /// The whole batch on one thread, alone on the machine (median of `t1_rounds`).
    pub t1_median_ms: Option<f64>,
    /// Perfect-scaling limit T1(B)/N over the planned latency (1.0 = perfect scaling).
    pub parallel_efficiency: Option<f64>,
}

/// One configuration under test: a warm instance set and each instance's share of the batch.
struct Contender {
    set: Arc<InstanceSet>,
    shares: Vec<usize>,
}

impl Contender {
    fn of(pool: &InstancePool, plan: &Plan) -> Result<Contender> {
        Ok(Contender {
            set: pool.get(&layout(plan))?,
            shares: plan.shares(),
        })
    }

    fn time_ms(&self, inputs: &[Tensor]) -> Result<f64> {
        let t0 = Instant::now();
        self.set.run(inputs, &self.shares)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

pub fn run(args: &Args) -> Result<i32> {
    let cfg = Config::load(&args.config)?;
    let mut mc = cfg
        .models
        .iter()
        .find(|m| m.name == args.model)
        .with_context(|| format!("no model '{}' in the config", args.model))?
        .clone();
    if !matches!(mc.plan, PlanChoice::Fixed(_)) {
        mc.plan = PlanChoice::Auto;
    }
    let max_b = args.batches.iter().copied().max().unwrap_or(1);
    mc.max_batch = mc.max_batch.max(max_b);
    tch::set_num_interop_threads(1);
    let topo = crate::config::Config::model_topology(&mc, &cfg.topology()?);
    // Every figure belongs to a CPU: print it first, and record it in the JSON.
    let cpu = crate::planner::cpu::CpuInfo::detect();
    println!("cpu: {}", cpu.summary());
    let resolved = resolve(&mc)?;
    let (model, precision) = (resolved.model, resolved.status);
    if let Some(why) = &precision.reason {
        println!(
            "precision {} ({} requested): {why}",
            precision.in_use, precision.requested
        );
    }
    if let Some(d) = precision.bf16_drift {
        println!(
            "precision {} ({} requested): bf16 drift against f32 on example inputs {:.3} % of the largest f32 output",
            precision.in_use,
            precision.requested,
            d * 100.0
        );
    }
    let mut progress = |done: usize, total: usize, _: std::time::Duration, what: &str| {
        log::info!("profiling {}: point {done}/{total} {what}", mc.name);
    };
    let planned = build_plans(
        &mc,
        &model,
        &topo,
        &cfg.state_dir,
        Profiling::Allowed,
        &mut progress,
    )?
    .0;
    let baseline = PlanTable::baseline(&topo, mc.max_batch);
    let n = topo.len();
    let pool = InstancePool::new(model.clone(), "bench", usize::MAX);
    let t1_set = pool.get(&[InstanceSpec {
        threads: 1,
        cores: vec![topo.ordered()[0]],
    }])?;
    println!(
        "bench {} on {n} cores, at least {} rounds per batch (ABBA order)",
        mc.name, args.rounds
    );
    println!(
        "{:>5} {:>12} {:>12} {:>8} {:>10} {:>7} {:>9} {:>6}  plan",
        "batch", "baseline ms", "planned ms", "speedup", "predicted", "error", "drift-adj", "eff"
    );
    let mut rows = Vec::new();
    let mut rounds_used = Vec::new();
    for &b in &args.batches {
        let plan = planned.for_batch(b);
        let a = Contender::of(&pool, baseline.for_batch(b))?;
        let p = Contender::of(&pool, plan)?;
        let t1 = Contender {
            set: t1_set.clone(),
            shares: vec![b],
        };
        let (row, rounds) = measure(args, &model, plan, n, [&a, &p, &t1])?;
        rounds_used.push(rounds);
        print_row(&row);
        rows.push(row);
    }
    let geo = (rows
        .iter()
        .filter(|r| r.batch >= 2)
        .map(|r| r.speedup.ln())
        .sum::<f64>()
        / rows.iter().filter(|r| r.batch >= 2).count().max(1) as f64)
        .exp();
    println!(
        "geometric-mean speedup over B >= 2: {geo:.3}x; min speedup {:.3}x",
        rows.iter().map(|r| r.speedup).fold(f64::INFINITY, f64::min)
    );
    std::fs::create_dir_all(&args.out)?;
    let stem = args.out.join(&mc.name);
    write_csv(&stem.with_extension("csv"), &rows)?;
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"model": mc.name, "cpu": cpu, "engine": model.engine.name(), "precision": precision.in_use, "precision_requested": precision.requested, "drift_vs_f32": precision.bf16_drift, "cores": n, "rounds": args.rounds, "rounds_used": rounds_used, "geomean_speedup": geo, "rows": rows}),
        )?,
    )?;
    plot(&stem.with_extension("svg"), &mc.name, n, &rows)?;
    println!("wrote {}.{{csv,json,svg}}", stem.display());
    Ok(0)
}

/// Times the baseline `a` and the plan `p` on a batch, interleaved (ABBA), and the whole batch
/// on one thread (`t1`) beside them.
fn measure(
    args: &Args,
    model: &Model,
    pb: &Plan,
    cores: usize,
    [a, p, t1]: [&Contender; 3],
) -> Result<(Row, usize)> {
    let b = pb.batch;
    let inputs = model.example_inputs(b as i64);
    let t1_ms = |inputs: &[Tensor]| t1.time_ms(inputs);
    // As the agent's warm-up does: the engine may compile these shapes (static shapes).
    for c in [a, p] {
        for s in c.set.specialize(&inputs, &c.shares)? {
            println!(
                "    {} thread(s) × {}: static shape {:.2} ms, dynamic {:.2} ms, paired ratio {:.3}: {} kept",
                s.threads,
                s.batch,
                s.static_ms,
                s.dynamic_ms,
                s.ratio,
                if s.kept { "static" } else { "dynamic" }
            );
        }
    }
    for _ in 0..2 {
        a.time_ms(&inputs)?;
        p.time_ms(&inputs)?;
    }
    if args.t1_rounds > 0 {
        t1_ms(&inputs)?;
    }
    // Cheap batches get more rounds: at least `rounds`, else ~2 s of samples per configuration.
    let warm_ms = a.time_ms(&inputs)?;
    let rounds = args
        .rounds
        .max(((2000.0 / warm_ms.max(1.0)) as usize).min(MAX_ROUNDS));
    let (mut ta, mut tb, mut t1s) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        if r < args.t1_rounds {
            t1s.push(t1_ms(&inputs)?);
        }
        if r % 2 == 0 {
            ta.push(a.time_ms(&inputs)?);
            tb.push(p.time_ms(&inputs)?);
        } else {
            tb.push(p.time_ms(&inputs)?);
            ta.push(a.time_ms(&inputs)?);
        }
    }
    let ma = percentile(ta, 50.0).unwrap_or(f64::NAN);
    let mb = percentile(tb, 50.0).unwrap_or(f64::NAN);
    let t1 = percentile(t1s, 50.0);
    Ok((
        Row {
            batch: b,
            plan: pb.summary(),
            baseline_median_ms: ma,
            planned_median_ms: mb,
            speedup: ma / mb,
            predicted_ms: pb.predicted_latency_ms,
            prediction_error_pct: pb.predicted_latency_ms.map(|p| (mb - p) / p * 100.0),
            baseline_predicted_ms: pb.baseline_latency_ms,
            drift_corrected_error_pct: pb
                .predicted_latency_ms
                .zip(pb.baseline_latency_ms)
                .map(|(p, pa)| ((mb / p) / (ma / pa) - 1.0) * 100.0),
            t1_median_ms: t1,
            parallel_efficiency: t1.map(|t1| t1 / cores as f64 / mb),
        },
        rounds,
    ))
}

fn print_row(row: &Row) {
    let f = |x: Option<f64>, d: usize| x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
    println!(
        "{:>5} {:>12.2} {:>12.2} {:>7.3}x {:>10} {:>6}% {:>8}% {:>6}  {}",
        row.batch,
        row.baseline_median_ms,
        row.planned_median_ms,
        row.speedup,
        f(row.predicted_ms, 2),
        f(row.prediction_error_pct, 1),
        f(row.drift_corrected_error_pct, 1),
        f(row.parallel_efficiency, 2),
        row.plan
    );
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut csv = String::from("batch,baseline_median_ms,planned_median_ms,speedup,predicted_ms,prediction_error_pct,baseline_predicted_ms,drift_corrected_error_pct,t1_median_ms,parallel_efficiency,plan\n");
    for r in rows {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
        csv.push_str(&format!(
            "{},{:.4},{:.4},{:.4},{},{},{},{},{},{},{}\n",
            r.batch,
            r.baseline_median_ms,
            r.planned_median_ms,
            r.speedup,
            f(r.predicted_ms),
            f(r.prediction_error_pct),
            f(r.baseline_predicted_ms),
            f(r.drift_corrected_error_pct),
            f(r.t1_median_ms),
            f(r.parallel_efficiency),
            r.plan
        ));
    }
    std::fs::write(path, csv)?;
    Ok(())
}

fn plot(path: &Path, model: &str, cores: usize, rows: &[Row]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_b = rows.iter().map(|r| r.batch).max().unwrap_or(1) as f64;
    let max_y = rows
        .iter()
        .map(|r| r.baseline_median_ms.max(r.planned_median_ms))
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{model}: latency vs batch on {cores} cores"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_b * 1.05, 0f64..max_y.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("batch size B")
        .y_desc("median latency (ms)")
        .draw()?;
    let series = [
        ("baseline ⟨1, T, B⟩", RED, true),
        ("packrat plan", BLUE, false),
    ];
    for (label, color, is_base) in series {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    r.batch as f64,
                    if is_base {
                        r.baseline_median_ms
                    } else {
                        r.planned_median_ms
                    },
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
