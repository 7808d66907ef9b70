//! A plot people can look at: one horizontal bar per engine and time metric (the median),
//! with a whisker out to p95, grouped by scenario configuration. Plain SVG, no plotting crate.

use std::fmt::Write;

use crate::report::ScenarioReport;

const BAR_H: f64 = 16.0;
const LABEL_W: f64 = 330.0;
const PLOT_W: f64 = 460.0;

pub fn render(reports: &[ScenarioReport]) -> String {
    let rows: Vec<(String, String, f64, f64)> = reports
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .filter(|row| row.metric.ends_with(" ms"))
                .map(move |row| {
                    let label = format!("{} | {} | {}", r.config, row.engine, row.metric);
                    (
                        label,
                        row.engine.clone(),
                        row.summary.median,
                        row.summary.p95,
                    )
                })
        })
        .collect();
    let max = rows.iter().map(|r| r.3).fold(0.0_f64, f64::max).max(1e-9);
    let height = 40.0 + rows.len() as f64 * (BAR_H + 6.0) + 30.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="monospace" font-size="11">"#,
        w = LABEL_W + PLOT_W + 90.0
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="8" y="20" font-size="14">coinop-bench: median (bar) and p95 (whisker), ms</text>"#
    );
    for (i, (label, engine, median, p95)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (BAR_H + 6.0);
        let w = median / max * PLOT_W;
        let wp = p95 / max * PLOT_W;
        let color = if engine == "coinop" {
            "#2b7bba"
        } else {
            "#d9822b"
        };
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect x="{x}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{color}"/><line x1="{x}" x2="{xp:.1}" y1="{my}" y2="{my}" stroke="black"/><text x="{tx:.1}" y="{ty}">{median:.2}</text>"#,
            lx = LABEL_W - 6.0,
            ty = y + 12.0,
            label = xml_escape(label),
            x = LABEL_W,
            xp = LABEL_W + wp,
            my = y + BAR_H / 2.0,
            tx = LABEL_W + wp.max(w) + 4.0,
        );
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
    fn draws_one_bar_per_time_metric() {
        let s = Summary::of(&[1.0, 2.0]).expect("non-empty");
        let report = ScenarioReport {
            scenario: "vmm".into(),
            config: "1 vCPU <128> MiB".into(),
            runs: 2,
            warmup: 0,
            rows: vec![
                MetricRow::new("coinop", "spawn→guest_ready ms", s),
                MetricRow::new("qemu-microvm", "spawn→first serial line ms", s),
                MetricRow::new("coinop", "peak RSS MiB", s),
            ],
            ratios: vec![],
        };
        let svg = render(&[report]);
        assert_eq!(svg.matches("<rect x=").count(), 2, "RSS is not a time bar");
        assert!(svg.contains("&lt;128&gt;"), "labels are escaped");
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
