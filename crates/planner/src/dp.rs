//! The planner's dynamic program: choose instances ⟨tᵢ, bᵢ⟩ minimising the slowest instance,
//! with Σtᵢ ≤ T (idle cores allowed) and Σbᵢ = B exactly, for every B up to `max_batch` in one
//! solve.
//!
//! `g[c][B]` = best plan for B items on at most c cores:
//! `g[c][B] = min(g[c-1][B], min over t, b of max(lat(t, b), g[c-t][B-b]))`.
//! lat(t, ·) is non-decreasing in b and g[c][·] is non-decreasing in B, so for a given t the
//! best b sits where the two cross, and that crossing only moves forward as B grows: one
//! forward-moving pointer per (c, t) instead of a scan over b (amortised O(T·|t|·B)).
//! Each cell keeps its argmin, so plans are read back from the table (never by comparing
//! floats). Ties go to fewer instances, then fewer cores, then the first candidate in a
//! fixed scan order (idle core, then ascending t), so the result is deterministic.

use crate::profile::Curve;

#[derive(Debug, Clone, Copy)]
struct Cell {
    lat: f64,
    instances: u32,
    used: u32,
    /// Thread count of the instance added here; 0 means "one core left idle".
    t: u32,
    b: u32,
}

impl Cell {
    const EMPTY: Cell = Cell {
        lat: 0.0,
        instances: 0,
        used: 0,
        t: 0,
        b: 0,
    };
    const INFEASIBLE: Cell = Cell {
        lat: f64::INFINITY,
        instances: 0,
        used: 0,
        t: 0,
        b: 0,
    };

    fn better_than(&self, o: &Cell) -> bool {
        (self.lat, self.instances, self.used) < (o.lat, o.instances, o.used)
    }
}

/// A planned instance before cores are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Part {
    pub threads: usize,
    pub batch: usize,
}

/// The solved table for one curve, `cores` cores and batches up to `max_batch`.
pub struct Solution {
    cores: usize,
    max_batch: usize,
    cells: Vec<Cell>,
}

impl Solution {
    fn at(&self, c: usize, b: usize) -> &Cell {
        &self.cells[c * (self.max_batch + 1) + b]
    }

    /// The plan for `batch` items: instances (largest first) and the predicted latency.
    pub fn plan(&self, batch: usize) -> Option<(Vec<Part>, f64)> {
        if batch == 0 || batch > self.max_batch {
            return None;
        }
        let top = self.at(self.cores, batch);
        if !top.lat.is_finite() {
            return None;
        }
        let (mut c, mut b) = (self.cores, batch);
        let mut parts = Vec::new();
        while b > 0 {
            let cell = self.at(c, b);
            if cell.t == 0 {
                c -= 1;
            } else {
                parts.push(Part {
                    threads: cell.t as usize,
                    batch: cell.b as usize,
                });
                c -= cell.t as usize;
                b -= cell.b as usize;
            }
        }
        parts.sort_by(|a, b| b.cmp(a));
        Some((parts, top.lat))
    }
}

/// Solves for all batch sizes 1..=max_batch on `cores` cores.
pub fn solve(curve: &Curve, cores: usize, max_batch: usize) -> Solution {
    let width = max_batch + 1;
    let ts = curve.threads_up_to(cores);
    // f[ti][b]: latency of one instance (non-decreasing in b, see `Curve`); index 0 unused.
    let f: Vec<Vec<f64>> = (0..ts.len())
        .map(|ti| {
            (0..width)
                .map(|b| if b == 0 { 0.0 } else { curve.latency(ti, b) })
                .collect()
        })
        .collect();
    let mut cells = vec![Cell::INFEASIBLE; (cores + 1) * width];
    cells[0] = Cell::EMPTY;
    // cross[ti]: the crossing point for the previous B; it only moves forward as B grows.
    let mut cross = vec![1usize; ts.len()];
    for c in 1..=cores {
        cells[c * width] = Cell::EMPTY;
        cross.iter_mut().for_each(|x| *x = 1);
        for big_b in 1..=max_batch {
            let idle = cells[(c - 1) * width + big_b];
            let mut best = Cell { t: 0, b: 0, ..idle };
            for (ti, &t) in ts.iter().enumerate() {
                if t > c {
                    break;
                }
                let rest = (c - t) * width;
                let fr = &f[ti];
                // Smallest b with f(b) >= g[rest][B-b]: monotone in b, true at b = B, and
                // never smaller than it was for B-1 (g[rest] is non-decreasing).
                let mut lo = cross[ti].min(big_b);
                while lo < big_b && fr[lo] < cells[rest + big_b - lo].lat {
                    lo += 1;
                }
                cross[ti] = lo;
                for b in [lo, lo - 1] {
                    if b == 0 {
                        continue;
                    }
                    let r = &cells[rest + big_b - b];
                    let cand = Cell {
                        lat: fr[b].max(r.lat),
                        instances: r.instances + 1,
                        used: r.used + t as u32,
                        t: t as u32,
                        b: b as u32,
                    };
                    if cand.better_than(&best) {
                        best = cand;
                    }
                }
            }
            cells[c * width + big_b] = best;
        }
    }
    Solution {
        cores,
        max_batch,
        cells,
    }
}

/// The reference semantics (msr-fiddle/packrat): every core used, every instance a profiled
/// point exactly. Returns the predicted latency and parts, or None when no split exists.
pub fn reference(curve: &Curve, cores: usize, batch: usize) -> Option<(f64, Vec<Part>)> {
    let ts = curve.threads_up_to(cores);
    let w = batch + 1;
    let mut opt = vec![(f64::INFINITY, None::<(usize, usize)>); (cores + 1) * w];
    opt[0] = (0.0, None);
    for c in 1..=cores {
        for bb in 1..=batch {
            let mut best = (f64::INFINITY, None);
            for &t in ts.iter().filter(|&&t| t <= c) {
                for &b in curve.batches(t).iter().filter(|&&b| b <= bb) {
                    let rest = opt[(c - t) * w + bb - b].0;
                    let lat = curve.measured(t, b).unwrap_or(f64::INFINITY).max(rest);
                    if lat < best.0 {
                        best = (lat, Some((t, b)));
                    }
                }
            }
            opt[c * w + bb] = best;
        }
    }
    let top = opt[cores * w + batch].0;
    if !top.is_finite() {
        return None;
    }
    let (mut c, mut b, mut parts) = (cores, batch, Vec::new());
    while b > 0 {
        let (t, pb) = opt[c * w + b].1?;
        parts.push(Part {
            threads: t,
            batch: pb,
        });
        c -= t;
        b -= pb;
    }
    parts.sort_by(|a, b| b.cmp(a));
    Some((top, parts))
}

/// The baseline ⟨1, N, B⟩: one instance with every core, when N threads were profiled.
pub fn baseline(curve: &Curve, cores: usize, batch: usize) -> Option<f64> {
    let ti = curve.threads.iter().position(|&t| t == cores)?;
    Some(curve.latency(ti, batch))
}
