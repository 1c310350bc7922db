//! Planner tests: the DP against brute force, against the reference semantics on the authors'
//! profiles (vendored in `tests/data/`), the consistency of every plan it emits, bad profiles,
//! the latency model, and the plan's JSON shape.

use std::path::PathBuf;

use packrat_planner::dp::{self, Part};
use packrat_planner::profile::{Curve, Point, ProfileFile};
use packrat_planner::topology::Topology;
use packrat_planner::{plan_from, PlanTable};
use proptest::prelude::*;

/// The Packrat authors' 16- and 18-core profiles, vendored from the public msr-fiddle/packrat
/// repository (see `tests/data/README.md`).
fn shared_profiles() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 8, "expected the 8 vendored profiles");
    v
}

/// The latency curve of one of the authors' profiles, by file name.
fn shared_curve(file: &str) -> Curve {
    let path = shared_profiles()
        .into_iter()
        .find(|p| p.ends_with(file))
        .unwrap();
    ProfileFile::load(&path).unwrap().curve().unwrap()
}

/// Minimum over every multiset of instances (t, b) with Σt <= cores and Σb = batch of the
/// slowest instance, by plain enumeration (instances in non-increasing (t, b) order).
fn brute(curve: &Curve, cores: usize, batch: usize) -> f64 {
    fn go(curve: &Curve, cores: usize, left: usize, max_part: (usize, usize), worst: f64) -> f64 {
        if left == 0 {
            return worst;
        }
        let mut best = f64::INFINITY;
        for (ti, &t) in curve.threads.iter().enumerate() {
            if t > cores {
                continue;
            }
            for b in 1..=left {
                if (t, b) > max_part {
                    continue;
                }
                let w = worst.max(curve.latency(ti, b));
                best = best.min(go(curve, cores - t, left - b, (t, b), w));
            }
        }
        best
    }
    go(curve, cores, batch, (usize::MAX, usize::MAX), 0.0)
}

fn curve_strategy() -> impl Strategy<Value = (Vec<Point>, usize)> {
    (
        1usize..=4,
        proptest::collection::vec(1.0f64..100.0, 16),
        proptest::bool::ANY,
    )
        .prop_map(|(cores, lats, sparse)| {
            let threads: Vec<usize> = if sparse {
                vec![1, cores]
            } else {
                (1..=cores).collect()
            };
            let mut points = Vec::new();
            let mut k = 0;
            for &t in threads.iter().collect::<std::collections::BTreeSet<_>>() {
                let mut acc = 0.0;
                for b in [1usize, 2, 4] {
                    acc += lats[k % lats.len()];
                    k += 1;
                    points.push(Point {
                        threads: t,
                        batch: b,
                        latency_ms: acc,
                        latency_min_ms: None,
                        latency_max_ms: None,
                        samples: None,
                    });
                }
            }
            (points, cores)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn dp_equals_brute_force((points, cores) in curve_strategy(), batch in 1usize..=7) {
        let curve = Curve::from_points(&points).unwrap();
        let sol = dp::solve(&curve, cores, batch);
        for b in 1..=batch {
            let (parts, lat) = sol.plan(b).unwrap();
            let want = brute(&curve, cores, b);
            prop_assert!((lat - want).abs() <= 1e-9 * want, "B={b}: dp {lat} brute {want}");
            // The plan's own numbers add up.
            prop_assert_eq!(parts.iter().map(|p| p.batch).sum::<usize>(), b);
            prop_assert!(parts.iter().map(|p| p.threads).sum::<usize>() <= cores);
            let slowest = parts.iter().map(|p| curve.latency(curve.threads.binary_search(&p.threads).unwrap(), p.batch)).fold(0.0, f64::max);
            prop_assert_eq!(slowest, lat);
        }
    }
}

#[test]
fn never_worse_than_the_reference_on_the_authors_profiles() {
    for path in shared_profiles() {
        let pf = ProfileFile::load(&path).unwrap();
        let curve = pf.curve().unwrap();
        for cores in [1, 2, 4, 8, pf.cores] {
            let sol = dp::solve(&curve, cores, 128);
            for batch in [1, 2, 3, 4, 8, 16, 24, 32, 64, 128] {
                let (_, ours) = sol.plan(batch).unwrap();
                if let Some((reference, parts)) = dp::reference(&curve, cores, batch) {
                    assert!(
                        ours <= reference + 1e-9,
                        "{}: N={cores} B={batch}: ours {ours} > reference {reference}",
                        path.display()
                    );
                    assert_eq!(
                        parts.iter().map(|p| p.threads).sum::<usize>(),
                        cores,
                        "reference uses every core"
                    );
                }
                if let Some(base) = dp::baseline(&curve, cores, batch) {
                    assert!(
                        ours <= base + 1e-9,
                        "never worse than one instance with all cores"
                    );
                }
            }
        }
    }
}

#[test]
fn idle_cores_beat_the_reference_for_inception_at_batch_1() {
    // The Skylake-18 profile planned for 16 of its cores, as in DESIGN §4.
    let curve = shared_curve("inception_skylake18.json");
    let (reference, _) = dp::reference(&curve, 16, 1).unwrap();
    let (parts, ours) = dp::solve(&curve, 16, 1).plan(1).unwrap();
    // DESIGN §4: the reference predicts 32.3 ms; 8 threads alone give 27.5 ms.
    assert!((reference - 32.3).abs() < 0.1, "reference {reference}");
    assert!(ours < reference - 4.0, "ours {ours}");
    assert_eq!(parts.len(), 1);
    assert!(
        parts[0].threads < 16,
        "an idle core must be allowed: {parts:?}"
    );
    let best_single = curve
        .threads
        .iter()
        .enumerate()
        .filter(|(_, &t)| t <= 16)
        .map(|(ti, _)| curve.latency(ti, 1))
        .fold(f64::INFINITY, f64::min);
    assert_eq!(ours, best_single);
    assert!((ours - 27.5).abs() < 0.1, "8 threads alone: {ours}");
}

#[test]
fn non_power_of_two_sub_batches_help_where_powers_cannot_split() {
    // B = 24 on 16 cores: the reference must use profiled batch sizes only.
    let curve = shared_curve("resnet_cloudlab16.json");
    let (parts, ours) = dp::solve(&curve, 16, 24).plan(24).unwrap();
    let (reference, _) = dp::reference(&curve, 16, 24).unwrap();
    assert!(ours < reference, "ours {ours} reference {reference}");
    assert!(
        parts.iter().any(|p: &Part| !p.batch.is_power_of_two()),
        "{parts:?}"
    );
}

#[test]
fn every_plan_in_a_table_is_consistent_and_gets_disjoint_contiguous_cores() {
    for path in shared_profiles() {
        let pf = ProfileFile::load(&path).unwrap();
        let curve = pf.curve().unwrap();
        let topo = Topology::flat(pf.cores);
        let table = PlanTable::from_curve(&curve, &topo, 128).unwrap();
        for (i, plan) in table.plans.iter().enumerate() {
            assert_eq!(plan.batch, i + 1);
            assert_eq!(
                plan.instances.iter().map(|p| p.batch).sum::<usize>(),
                plan.batch
            );
            let mut seen = std::collections::HashSet::new();
            for inst in &plan.instances {
                assert_eq!(inst.cores.len(), inst.threads);
                assert!(
                    inst.cores.windows(2).all(|w| w[1] == w[0] + 1),
                    "contiguous: {:?}",
                    inst.cores
                );
                for c in &inst.cores {
                    assert!(seen.insert(*c), "core {c} given twice in {plan:?}");
                }
            }
            let slowest = plan
                .instances
                .iter()
                .map(|p| curve.latency(curve.threads.binary_search(&p.threads).unwrap(), p.batch))
                .fold(0.0, f64::max);
            assert_eq!(plan.predicted_latency_ms, Some(slowest));
        }
    }
}

fn profile_error(json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    std::fs::write(&p, json).unwrap();
    match ProfileFile::load(&p).and_then(|f| f.curve()) {
        Ok(_) => panic!("accepted a bad profile: {json}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_profiles_are_refused_with_a_reason() {
    let pt =
        |t: usize, b: usize, l: &str| format!(r#"{{"threads":{t},"batch":{b},"latency_ms":{l}}}"#);
    let file =
        |pts: Vec<String>| format!(r#"{{"model":"m","cores":2,"points":[{}]}}"#, pts.join(","));
    assert!(profile_error("").contains("empty"));
    assert!(profile_error(&file(vec![])).contains("no points"));
    assert!(profile_error(&file(vec![pt(1, 2, "5.0")]))
        .contains("missing the point (threads 1, batch 1)"));
    assert!(profile_error(&file(vec![pt(1, 1, "0")])).contains("finite and > 0"));
    assert!(profile_error(&file(vec![pt(1, 1, "-3")])).contains("finite and > 0"));
    assert!(profile_error(&file(vec![pt(1, 1, "NaN")])).contains("not valid profile JSON"));
    assert!(profile_error(&file(vec![pt(1, 1, "null")])).contains("not valid profile JSON"));
    assert!(
        profile_error(r#"{"model":"m","cores":2,"points":[{"threads":1,"batch":1}]}"#)
            .contains("not valid profile JSON")
    );
}

#[test]
fn plan_json_has_the_promised_shape_for_every_shared_profile() {
    for path in shared_profiles() {
        let pf = ProfileFile::load(&path).unwrap();
        let curve = pf.curve().unwrap();
        for n in [1, pf.cores / 2, pf.cores] {
            let sol = dp::solve(&curve, n, 32);
            let plan = plan_from(&sol, &curve, &Topology::flat(n), 32).unwrap();
            let v = serde_json::to_value(&plan).unwrap();
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                [
                    "baseline_latency_ms",
                    "batch",
                    "cores",
                    "instances",
                    "predicted_latency_ms"
                ]
            );
            assert_eq!(v["batch"], 32);
            assert_eq!(v["cores"], n);
            assert!(v["baseline_latency_ms"].is_f64());
            let insts = v["instances"].as_array().unwrap();
            assert_eq!(
                insts
                    .iter()
                    .map(|i| i["batch"].as_u64().unwrap())
                    .sum::<u64>(),
                32
            );
            assert!(
                insts
                    .iter()
                    .map(|i| i["threads"].as_u64().unwrap())
                    .sum::<u64>()
                    <= n as u64
            );
            assert!(insts
                .iter()
                .all(|i| i.as_object().unwrap().len() == 3 && i["cores"].is_array()));
            assert!(
                v["predicted_latency_ms"].as_f64().unwrap()
                    <= v["baseline_latency_ms"].as_f64().unwrap()
            );
        }
    }
}

/// Why piecewise-linear in b: hide every other batch size of each profile, predict the hidden
/// points from the rest, and compare with "latency proportional to b" from batch 1.
/// `cargo test --release -p packrat-planner --test planner latency_model -- --nocapture` prints the figures.
#[test]
fn latency_model_predicts_held_out_batch_sizes_from_the_authors_profiles() {
    let (mut lin, mut prop) = (Vec::new(), Vec::new());
    for path in shared_profiles() {
        let pf = ProfileFile::load(&path).unwrap();
        let kept: Vec<Point> = pf
            .points
            .iter()
            .filter(|p| p.batch.trailing_zeros() % 2 == 0)
            .cloned()
            .collect();
        let curve = Curve::from_points(&kept).unwrap();
        for p in pf
            .points
            .iter()
            .filter(|p| p.batch.trailing_zeros() % 2 == 1 && p.batch < 1024)
        {
            let ti = curve.threads.binary_search(&p.threads).unwrap();
            lin.push((curve.latency(ti, p.batch) - p.latency_ms).abs() / p.latency_ms);
            let one = pf
                .points
                .iter()
                .find(|q| q.threads == p.threads && q.batch == 1)
                .unwrap()
                .latency_ms;
            prop.push((one * p.batch as f64 - p.latency_ms).abs() / p.latency_ms);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2] * 100.0
    };
    let (ml, mp) = (med(&mut lin), med(&mut prop));
    println!(
        "held-out points: {}; median error: piecewise-linear {ml:.1}%, proportional-to-b {mp:.1}%",
        lin.len()
    );
    assert!(ml < 6.0, "piecewise-linear median error {ml:.1}%");
    assert!(ml < mp / 5.0);
}

/// The agent keeps at most 8 layouts warm. On the authors' 16-core profiles the DP's table for
/// B = 1…64 uses 30–35 layouts; the menu must cover every batch size with 8 of them, every
/// plan a split of its batch over one of those layouts on a simulated 16-core host, for a small
/// predicted loss it reports.
#[test]
fn a_menu_of_eight_layouts_serves_every_batch_size_on_16_cores() {
    let topo = Topology::flat(16);
    for file in ["resnet_cloudlab16.json", "inception_cloudlab16.json"] {
        let curve = shared_curve(file);
        let full = PlanTable::from_curve(&curve, &topo, 64).unwrap();
        let (table, report) =
            packrat_planner::menu::bounded(&curve, &topo, 64, &[1.0; 64], 8).unwrap();
        let mut layouts: Vec<Vec<(usize, Vec<usize>)>> = Vec::new();
        for p in &table.plans {
            assert_eq!(p.instances.iter().map(|i| i.batch).sum::<usize>(), p.batch);
            let used: usize = p.instances.iter().map(|i| i.threads).sum();
            assert!(used <= 16, "{file} b={}: {used} threads", p.batch);
            let mut cores: Vec<usize> = p.instances.iter().flat_map(|i| i.cores.clone()).collect();
            cores.sort();
            cores.dedup();
            assert_eq!(cores.len(), used, "{file} b={}: cores overlap", p.batch);
            let l: Vec<(usize, Vec<usize>)> = p
                .instances
                .iter()
                .map(|i| (i.threads, i.cores.clone()))
                .collect();
            if !layouts.contains(&l) {
                layouts.push(l);
            }
            // Never better than the unbounded optimum, which it must not misreport.
            let ideal = full.for_batch(p.batch).predicted_latency_ms.unwrap();
            let got = p.predicted_latency_ms.unwrap();
            assert!(got >= ideal - 1e-9, "{file} b={}", p.batch);
            let eval = packrat_planner::menu::evaluate(p, &curve).unwrap();
            assert!((eval - got).abs() < 1e-9);
        }
        assert!(report.unbounded_layouts >= 30, "{file}: {report:?}");
        assert!(layouts.len() <= 8, "{file}: {} layouts", layouts.len());
        assert_eq!(report.layouts, layouts.len());
        let sessions: usize = layouts.iter().map(Vec::len).sum();
        assert_eq!(report.instances, sessions);
        // Resident cost of the menu on a simulated 16-core host: one session per instance.
        assert!(sessions <= 8 * 16, "{file}: {sessions} sessions");
        assert!(
            report.predicted_loss_pct >= 0.0 && report.predicted_loss_pct < 5.0,
            "{file}: {report:?}"
        );
        eprintln!("{file}: {report:?}");
    }
}

/// The menu follows the batch-size mix: weighted all on B=1, B=1 gets its unbounded optimum.
#[test]
fn the_menu_follows_the_batch_size_mix() {
    let topo = Topology::flat(16);
    let curve = shared_curve("resnet_cloudlab16.json");
    let full = PlanTable::from_curve(&curve, &topo, 64).unwrap();
    for b in [1usize, 7, 32, 64] {
        let mut w = vec![1e-6; 64];
        w[b - 1] = 1.0;
        let (table, _) = packrat_planner::menu::bounded(&curve, &topo, 64, &w, 2).unwrap();
        let got = table.for_batch(b).predicted_latency_ms.unwrap();
        let ideal = full.for_batch(b).predicted_latency_ms.unwrap();
        assert!((got - ideal).abs() < 1e-9, "b={b}: {got} vs {ideal}");
    }
}
