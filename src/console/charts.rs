//! Charts as inline SVG made on the server: no script, nothing fetched, readable without
//! colour (each series has its own dash pattern) and with the numbers in a table beside each
//! chart for screen readers.

use maud::{html, Markup};

/// One line of a chart.
pub struct Line<'a> {
    pub label: &'a str,
    /// A CSS class giving its colour and dash (see console.css).
    pub class: &'a str,
    pub points: Vec<Option<f64>>,
}

const W: f64 = 640.0;
const H: f64 = 200.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;

/// A "nice" upper bound for the y axis (1, 2, 5 x 10^n).
pub fn nice_max(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A line chart of `lines` over evenly spaced points, the x axis labelled by `x_labels`
/// (first, middle, last).
pub fn line_chart(title: &str, lines: &[Line<'_>], x_labels: [&str; 3]) -> Markup {
    let n = lines.iter().map(|l| l.points.len()).max().unwrap_or(0);
    let max = nice_max(
        lines
            .iter()
            .flat_map(|l| l.points.iter().flatten())
            .fold(0.0, |a: f64, b| a.max(*b)),
    );
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n.max(1) as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - v / max);
    // One path per run of consecutive points with data: gaps stay gaps.
    let path = |pts: &[Option<f64>]| {
        let mut d = String::new();
        let mut pen_down = false;
        for (i, p) in pts.iter().enumerate() {
            match p {
                Some(v) => {
                    d.push_str(&format!(
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i),
                        y(*v)
                    ));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        d
    };
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                title { (title) }
                @for frac in [0.0, 0.5, 1.0] {
                    line.grid x1=(LEFT) x2=(W - 8.0) y1=(y(max * frac)) y2=(y(max * frac)) {}
                    text.axis x=(LEFT - 6.0) y=(y(max * frac) + 4.0) text-anchor="end" { (fmt_count(max * frac)) }
                }
                text.axis x=(LEFT) y=(H - 6.0) text-anchor="start" { (x_labels[0]) }
                text.axis x=(LEFT + plot_w / 2.0) y=(H - 6.0) text-anchor="middle" { (x_labels[1]) }
                text.axis x=(W - 8.0) y=(H - 6.0) text-anchor="end" { (x_labels[2]) }
                @for l in lines {
                    path class=(format!("series {}", l.class)) d=(path(&l.points)) {}
                    // A point with no neighbour draws no line: a dot instead.
                    @for (i, v) in isolated(&l.points) {
                        circle class=(format!("dot {}", l.class)) cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(v))) r="3" {}
                    }
                }
            }
            figcaption {
                (title) ": "
                @for (i, l) in lines.iter().enumerate() {
                    @if i > 0 { ", " }
                    span class=(format!("key {}", l.class)) { (l.label) }
                    " " (fmt_count(l.points.iter().flatten().sum::<f64>())) " in all"
                }
            }
        }
    }
}

/// Points with data whose neighbours have none.
fn isolated(points: &[Option<f64>]) -> Vec<(usize, f64)> {
    let has = |i: Option<usize>| i.and_then(|i| points.get(i)).is_some_and(|p| p.is_some());
    points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let v = (*p)?;
            (!has(i.checked_sub(1)) && !has(Some(i + 1))).then_some((i, v))
        })
        .collect()
}

/// Horizontal bars, one per row, for counts by category.
pub fn bars(title: &str, rows: &[(String, f64)]) -> Markup {
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1.0);
    html! {
        table.bars {
            caption { (title) }
            thead { tr { th scope="col" { "What" } th scope="col" { "Count" } th scope="col" { span.visually-hidden { "Bar" } } } }
            tbody {
                @for (label, v) in rows {
                    tr {
                        th scope="row" { (label) }
                        td.num { (fmt_count(*v)) }
                        td.barcell {
                            svg.bar viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" {
                                rect x="0" y="0" height="10" width=(format!("{:.1}", 100.0 * v / max)) {}
                            }
                        }
                    }
                }
                @if rows.is_empty() {
                    tr { td colspan="3" { "none so far" } }
                }
            }
        }
    }
}

/// A count without a useless ".0", large ones with a thin separator.
pub fn fmt_count(v: f64) -> String {
    if v.fract().abs() > 1e-9 && v < 100.0 {
        return format!("{v:.1}");
    }
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds_and_counts() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(17.0), 20.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(101.0), 200.0);
        assert_eq!(fmt_count(1234567.0), "1\u{202f}234\u{202f}567");
        assert_eq!(fmt_count(12.0), "12");
        assert_eq!(fmt_count(2.5), "2.5");
    }

    #[test]
    fn gaps_break_the_line() {
        let m = line_chart(
            "t",
            &[Line {
                label: "a",
                class: "s1",
                points: vec![Some(1.0), None, Some(2.0), Some(3.0)],
            }],
            ["x", "y", "z"],
        )
        .into_string();
        let d = m
            .split("d=\"")
            .nth(1)
            .unwrap_or("")
            .split('"')
            .next()
            .unwrap_or("");
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        assert!(m.contains("<title>t</title>"));
        assert_eq!(
            isolated(&[Some(1.0), None, Some(2.0), Some(3.0), None, Some(4.0)]),
            vec![(0, 1.0), (5, 4.0)]
        );
    }
}
