//! The two estimators packrat uses on timings: a nearest-rank percentile (status, benchmarks)
//! and a median with the precision of its estimate (the profiler's stopping rule).

/// The p-th percentile (0..=100, nearest rank) of `v`.
pub fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The median (the mean of the middle two for an even count: with two samples, one of them
/// cold, the estimate must not be the cold one).
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Median and the relative half-width of its 95 % confidence interval (∞ below two samples).
pub fn median_precision(xs: &[f64]) -> (f64, f64) {
    let med = median(xs).unwrap_or(f64::NAN);
    let n = xs.len();
    if n < 2 {
        return (med, f64::INFINITY);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    // The median's standard error is about 1.2533·σ/√n for near-normal timings.
    (med, 1.96 * 1.2533 * sd / (n as f64).sqrt() / med)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 50.0), Some(50.0));
        assert_eq!(percentile(v, 99.0), Some(99.0));
        assert_eq!(percentile(vec![], 50.0), None);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median_precision(&[100.0, 140.0]).0, 120.0);
        assert_eq!(median_precision(&[10.0, 10.0, 10.0]), (10.0, 0.0));
        assert!(median_precision(&[5.0]).1.is_infinite());
        assert_eq!(median(&[]), None);
    }
}
