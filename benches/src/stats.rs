//! Order statistics over a set of samples: what every scenario reports.

use serde::Serialize;

/// min / median / p95 / max of one measured quantity, in the unit its name says. The median
/// of an even count is the mean of the two middle samples; p95 is nearest-rank (the
/// smallest sample with at least 95% of samples at or below it: with fewer than 20 samples,
/// the max). For a rate (a metric in "/s", see [`is_rate`]) p95 is the fast tail.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample set: a scenario that measured nothing must say so, not
    /// print zeros.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            min: s[0],
            median: median(&s),
            p95: percentile(&s, 95.0),
            max: s[s.len() - 1],
        })
    }
}

/// Median of sorted, non-empty samples: the middle one, or the mean of the two middle ones.
fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Whether a metric is a rate (its name ends in "/s", e.g. "leases/s", "verify ops/s"):
/// higher is better, so its p95 is the fast tail, not the slow one a latency's p95 is.
pub fn is_rate(metric: &str) -> bool {
    metric.ends_with("/s")
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&samples).expect("non-empty");
        assert_eq!((s.min, s.median, s.p95, s.max), (1.0, 50.5, 95.0, 100.0));
        let one = Summary::of(&[7.0]).expect("non-empty");
        assert_eq!((one.median, one.p95), (7.0, 7.0));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(Summary::of(&[1.0, 2.0]).expect("two").median, 1.5);
        assert_eq!(
            Summary::of(&[4.0, 1.0, 3.0, 2.0]).expect("four").median,
            2.5
        );
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Summary::of(&ten).expect("ten");
        assert_eq!(
            (s.median, s.p95),
            (5.5, 10.0),
            "nearest rank: below 20, p95 is the max"
        );
    }

    #[test]
    fn rates_are_told_from_times() {
        assert!(is_rate("leases/s"));
        assert!(is_rate("verify ops/s"));
        assert!(!is_rate("spawn→ready line ms"));
        assert!(!is_rate("peak RSS at ready MiB"));
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let a = Summary::of(&[5.0, 1.0, 3.0]).expect("non-empty");
        let b = Summary::of(&[1.0, 3.0, 5.0]).expect("non-empty");
        assert_eq!(a, b);
        assert_eq!(a.median, 3.0);
    }

    #[test]
    fn empty_is_none() {
        assert!(Summary::of(&[]).is_none());
    }
}
