//! A plot people can look at: per scenario configuration, one horizontal bar per column and
//! metric (the median) with a whisker out to p95. Bars are scaled against the largest p95 of
//! the same unit within the configuration, so ms and MiB never share an axis. Plain SVG.

use std::fmt::Write;

use crate::report::ScenarioReport;

const BAR_H: f64 = 14.0;
const ROW_H: f64 = 20.0;
const LABEL_W: f64 = 420.0;
const PLOT_W: f64 = 420.0;
const PALETTE: [&str; 6] = [
    "#2b7bba", "#d9822b", "#5a9e4b", "#9b59b6", "#c0392b", "#7f8c8d",
];

/// The unit a metric name ends with ("... ms", "... ops/s").
fn unit(metric: &str) -> &str {
    metric.rsplit(' ').next().unwrap_or(metric)
}

pub fn render(reports: &[ScenarioReport]) -> String {
    let rows: usize = reports.iter().map(|r| r.rows.len() + 1).sum();
    let height = 40.0 + rows as f64 * ROW_H + 20.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="monospace" font-size="11">"#,
        w = LABEL_W + PLOT_W + 110.0
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="8" y="20" font-size="14">coinop-bench: median (bar) and p95 (whisker); bars scaled per unit within each group</text>"#
    );
    let mut y = 40.0;
    for r in reports {
        let _ = write!(
            svg,
            r#"<text x="8" y="{ty}" font-weight="bold">{title}</text>"#,
            ty = y + 12.0,
            title = xml_escape(&format!("{}: {}", r.scenario, r.config)),
        );
        y += ROW_H;
        let mut columns: Vec<&str> = Vec::new();
        for row in &r.rows {
            let u = unit(&row.metric);
            let max = r
                .rows
                .iter()
                .filter(|o| unit(&o.metric) == u)
                .map(|o| o.summary.p95.max(o.summary.median))
                .fold(0.0_f64, f64::max)
                .max(1e-12);
            let ci = columns
                .iter()
                .position(|c| *c == row.engine)
                .unwrap_or_else(|| {
                    columns.push(&row.engine);
                    columns.len() - 1
                });
            let (median, p95) = (row.summary.median, row.summary.p95);
            let (w, wp) = (median / max * PLOT_W, p95 / max * PLOT_W);
            let _ = write!(
                svg,
                r#"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect x="{x}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{color}"/><line x1="{x}" x2="{xp:.1}" y1="{my}" y2="{my}" stroke="black"/><text x="{tx:.1}" y="{ty}">{median:.3}</text>"#,
                lx = LABEL_W - 6.0,
                ty = y + 11.0,
                label = xml_escape(&format!(
                    "{} | {}{}",
                    row.engine,
                    row.metric,
                    // A rate's p95 is its fast tail: said where the whisker is drawn.
                    if crate::stats::is_rate(&row.metric) {
                        " (p95: fast tail)"
                    } else {
                        ""
                    }
                )),
                x = LABEL_W,
                xp = LABEL_W + wp,
                my = y + BAR_H / 2.0,
                tx = LABEL_W + wp.max(w) + 4.0,
                color = PALETTE[ci % PALETTE.len()],
            );
            y += ROW_H;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::MetricRow;
    use crate::stats::Summary;

    #[test]
    fn one_bar_per_row_scaled_within_its_unit() {
        let fast = Summary::of(&[1.0, 1.0, 2.0]).expect("non-empty");
        let slow = Summary::of(&[4.0, 4.0]).expect("non-empty");
        let big = Summary::of(&[1000.0]).expect("non-empty");
        let report = ScenarioReport {
            scenario: "vmm".into(),
            config: "1 vCPU <128> MiB".into(),
            runs: 2,
            warmup: 0,
            rows: vec![
                MetricRow::new("coinop", "spawn→guest_ready ms", fast),
                MetricRow::new("qemu-microvm", "spawn→ready line ms", slow),
                MetricRow::new("coinop", "peak RSS MiB", big),
            ],
            ratios: vec![],
            notes: vec![],
        };
        let svg = render(&[report]);
        assert_eq!(svg.matches("<rect x=").count(), 3);
        // The slow ms bar and the MiB bar each fill the plot: their own unit's maximum.
        assert_eq!(svg.matches(r#"width="420.0""#).count(), 2, "{svg}");
        // The fast bar's median (1) is a quarter of the ms maximum (4).
        assert!(svg.contains(r#"width="105.0""#), "{svg}");
        assert!(svg.contains("&lt;128&gt;"), "labels are escaped");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_rates_whisker_is_labelled_as_its_fast_tail() {
        let s = Summary::of(&[10.0, 12.0]).expect("non-empty");
        let report = ScenarioReport {
            scenario: "burst".into(),
            config: String::new(),
            runs: 2,
            warmup: 0,
            rows: vec![
                MetricRow::new("K=8", "leases/s", s),
                MetricRow::new("K=8", "burst wall ms", s),
            ],
            ratios: vec![],
            notes: vec![],
        };
        let svg = render(&[report]);
        assert!(svg.contains("K=8 | leases/s (p95: fast tail)"), "{svg}");
        assert!(svg.contains("K=8 | burst wall ms<"), "{svg}");
    }
}
