//! What a scenario reports: rows of min / median / p95 / max per engine and metric, ratios
//! between engines, printed as a table and written as JSON.

use serde::Serialize;

use crate::stats::Summary;

#[derive(Clone, Debug, Serialize)]
pub struct MetricRow {
    pub engine: String,
    pub metric: String,
    pub summary: Summary,
}

impl MetricRow {
    pub fn new(engine: &str, metric: &str, summary: Summary) -> MetricRow {
        MetricRow {
            engine: engine.to_string(),
            metric: metric.to_string(),
            summary,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub config: String,
    pub runs: usize,
    pub warmup: usize,
    pub rows: Vec<MetricRow>,
    /// (what, summary of per-run-pair ratios)
    pub ratios: Vec<(String, Summary)>,
    /// What a reader must know to trust the figures (peers not run, host load, ...).
    pub notes: Vec<String>,
}

/// Summary of ours[i] / theirs[i] over run pairs: pairs ran back to back, so each ratio
/// sees the same machine state.
pub fn ratio_summary(ours: &[f64], theirs: &[f64]) -> Option<Summary> {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter(|(_, t)| **t > 0.0)
        .map(|(o, t)| o / t)
        .collect();
    Summary::of(&ratios)
}

pub fn print_table(reports: &[ScenarioReport]) {
    for r in reports {
        println!(
            "\nscenario {} — {} — {} runs after {} warm-up",
            r.scenario, r.config, r.runs, r.warmup
        );
        println!(
            "  {:<16} {:<36} {:>5} {:>12} {:>12} {:>12} {:>12}",
            "engine", "metric", "n", "min", "median", "p95", "max"
        );
        for row in &r.rows {
            let s = &row.summary;
            println!(
                "  {:<16} {:<36} {:>5} {:>12.3} {:>12.3} {:>12.3} {:>12.3}",
                row.engine, row.metric, s.n, s.min, s.median, s.p95, s.max
            );
        }
        for (what, s) in &r.ratios {
            println!(
                "  ratio {what}: median {:.3}, p95 {:.3} (min {:.3}, max {:.3})",
                s.median, s.p95, s.min, s.max
            );
        }
        for n in &r.notes {
            println!("  note: {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_runs_in_order() {
        let r = ratio_summary(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0]).expect("three pairs");
        assert_eq!((r.min, r.median, r.max), (0.5, 1.0, 1.5));
    }

    #[test]
    fn zero_peer_times_are_not_divided_by() {
        assert!(ratio_summary(&[1.0], &[0.0]).is_none());
    }
}
