//! DP solve time for T = 64 cores and every batch up to 1024 (target: <= 50 ms), on synthetic
//! Amdahl-shaped profiles, plus the authors' 16/18-core profiles at max_batch 1024.
//! Run: `cargo bench --bench dp`.

use std::time::Instant;

use packrat_planner::dp;
use packrat_planner::profile::{Curve, Point, ProfileFile};

fn synthetic(threads: &[usize]) -> Curve {
    let mut pts = Vec::new();
    for &t in threads {
        for k in 0..=10 {
            let b = 1usize << k;
            // 10 % serial, per-call overhead 2 ms, 8 ms per item on one thread.
            let lat = (2.0 + 8.0 * b as f64) * (0.1 + 0.9 / t as f64);
            pts.push(Point {
                threads: t,
                batch: b,
                latency_ms: lat,
                latency_min_ms: None,
                latency_max_ms: None,
                samples: None,
            });
        }
    }
    Curve::from_points(&pts).expect("valid synthetic profile")
}

fn median_ms(mut f: impl FnMut()) -> (f64, f64) {
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[3], v[0])
}

fn main() {
    println!(
        "{:<44} {:>10} {:>10}",
        "profile (T cores, every B <= max)", "median ms", "min ms"
    );
    let all: Vec<usize> = (1..=64).collect();
    let pow2 = vec![1, 2, 4, 8, 16, 32, 64];
    for (label, threads) in [
        ("synthetic, t = 1..64 profiled (T=64, B<=1024)", all),
        ("synthetic, t = 1,2,4..64 (T=64, B<=1024)", pow2),
    ] {
        let curve = synthetic(&threads);
        let (med, min) = median_ms(|| {
            std::hint::black_box(dp::solve(&curve, 64, 1024));
        });
        println!("{label:<44} {med:>10.2} {min:>10.2}");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for f in files {
            let Ok(pf) = ProfileFile::load(&f) else {
                continue;
            };
            let Ok(curve) = pf.curve() else { continue };
            let (med, min) = median_ms(|| {
                std::hint::black_box(dp::solve(&curve, pf.cores, 1024));
            });
            let name = format!(
                "{} (T={}, B<=1024)",
                f.file_name().unwrap_or_default().to_string_lossy(),
                pf.cores
            );
            println!("{name:<44} {med:>10.2} {min:>10.2}");
        }
    }
}
