//! Samples gathered per column (engine, payment kind, burst size) and metric, in the order
//! they were first measured, turned into report rows.

use crate::report::MetricRow;
use crate::stats::Summary;

/// One column's metrics: (metric, samples).
type Column = Vec<(String, Vec<f64>)>;

#[derive(Default, Debug)]
pub struct SampleSet {
    columns: Vec<(String, Column)>,
}

impl SampleSet {
    pub fn push(&mut self, column: &str, metric: &str, value: f64) {
        let col = match self.columns.iter().position(|(c, _)| c == column) {
            Some(i) => &mut self.columns[i].1,
            None => {
                self.columns.push((column.to_string(), Vec::new()));
                &mut self.columns.last_mut().expect("just pushed").1
            }
        };
        match col.iter_mut().find(|(m, _)| m == metric) {
            Some((_, v)) => v.push(value),
            None => col.push((metric.to_string(), vec![value])),
        }
    }

    pub fn get(&self, column: &str, metric: &str) -> Option<&[f64]> {
        let (_, col) = self.columns.iter().find(|(c, _)| c == column)?;
        col.iter()
            .find(|(m, _)| m == metric)
            .map(|(_, v)| v.as_slice())
    }

    pub fn rows(&self) -> Vec<MetricRow> {
        self.columns
            .iter()
            .flat_map(|(c, col)| {
                col.iter()
                    .filter_map(move |(m, v)| Summary::of(v).map(|s| MetricRow::new(c, m, s)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_first_seen_order_and_summarise() {
        let mut s = SampleSet::default();
        s.push("credit", "z first", 3.0);
        s.push("credit", "a second", 1.0);
        s.push("credit", "z first", 1.0);
        s.push("onchain", "z first", 5.0);
        let rows = s.rows();
        let names: Vec<_> = rows
            .iter()
            .map(|r| format!("{} {}", r.engine, r.metric))
            .collect();
        assert_eq!(
            names,
            ["credit z first", "credit a second", "onchain z first"]
        );
        assert_eq!(rows[0].summary.n, 2);
        assert_eq!(rows[0].summary.max, 3.0);
        assert_eq!(s.get("onchain", "z first"), Some(&[5.0][..]));
        assert_eq!(s.get("onchain", "a second"), None);
    }
}
