//! Order statistics over a set of samples: what every scenario reports.

use serde::Serialize;

/// min / median / p95 / max of one measured quantity, in the unit its name says.
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
            median: percentile(&s, 50.0),
            p95: percentile(&s, 95.0),
            max: s[s.len() - 1],
        })
    }
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
        assert_eq!((s.min, s.median, s.p95, s.max), (1.0, 50.0, 95.0, 100.0));
        let one = Summary::of(&[7.0]).expect("non-empty");
        assert_eq!((one.median, one.p95), (7.0, 7.0));
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
