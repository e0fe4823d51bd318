//! Time charts as SVG, drawn on the server: the dashboard's last 24 hours and `simulate --chart`.
//! Colours are presentation attributes, not `style`: pages allow no inline style.

use std::fmt::Write;

use chrono::{DateTime, Duration, Utc};

use crate::web::escape;

pub struct Chart<'a> {
    pub title: &'a str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Claims per bucket, drawn as bars: each bucket's start and count.
    pub bars: &'a [(DateTime<Utc>, u32)],
    pub bar_width: Duration,
    pub bar_label: &'a str,
    pub lines: Vec<Line<'a>>,
}

pub struct Line<'a> {
    pub label: &'a str,
    pub colour: &'a str,
    pub dashed: bool,
    /// A step line: each value holds until the next point.
    pub points: Vec<(DateTime<Utc>, u32)>,
}

/// The pool's two lines, idle agents and the target, from samples `(at, idle, target)` in time
/// order: a step line keeps a point only where its value changes.
pub fn idle_and_target(samples: &[(DateTime<Utc>, u32, u32)]) -> Vec<Line<'static>> {
    let steps = |value: fn(&(DateTime<Utc>, u32, u32)) -> u32| {
        let mut points: Vec<(DateTime<Utc>, u32)> = Vec::new();
        for s in samples {
            if points.last().is_none_or(|p| p.1 != value(s)) {
                points.push((s.0, value(s)));
            }
        }
        points
    };
    vec![
        Line {
            label: "idle",
            colour: "#2a7f3f",
            dashed: false,
            points: steps(|s| s.1),
        },
        Line {
            label: "target",
            colour: "#d2691e",
            dashed: true,
            points: steps(|s| s.2),
        },
    ]
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 28.0;

impl Chart<'_> {
    pub fn svg(&self) -> String {
        let span = (self.end - self.start).num_seconds().max(1) as f64;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let max = self
            .bars
            .iter()
            .map(|b| b.1)
            .chain(self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)))
            .max()
            .unwrap_or(0)
            .max(1);
        let x = |t: DateTime<Utc>| {
            LEFT + ((t - self.start).num_seconds() as f64 / span).clamp(0.0, 1.0) * plot_w
        };
        let y = |v: u32| TOP + plot_h - f64::from(v) / f64::from(max) * plot_h;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{title}" font-family="sans-serif" font-size="12"><rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/><text x="{LEFT}" y="16" font-size="14" fill="#222">{title}</text>"##,
            title = escape(self.title)
        );
        // Axes, the top value, and a tick a day (or every three hours within two days).
        let _ = write!(
            svg,
            r##"<path d="M{LEFT} {TOP}V{b}H{r}" fill="none" stroke="#888"/><text x="{tx}" y="{ty}" text-anchor="end" fill="#444">{max}</text><text x="{tx}" y="{b}" text-anchor="end" fill="#444">0</text>"##,
            b = TOP + plot_h,
            r = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = TOP + 4.0,
        );
        let step = if span > 2.0 * 86_400.0 {
            Duration::days(1)
        } else {
            Duration::hours(3)
        };
        let mut tick = self.start;
        while tick <= self.end {
            let format = if step == Duration::days(1) {
                "%a %d"
            } else {
                "%H:%M"
            };
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
                x(tick),
                HEIGHT - 8.0,
                tick.format(format)
            );
            tick += step;
        }
        let bar_w = (self.bar_width.num_seconds() as f64 / span * plot_w - 1.0).max(1.0);
        for &(at, n) in self.bars {
            let _ = write!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{bar_w:.1}" height="{:.1}" fill="#c6d8ef"/>"##,
                x(at),
                y(n),
                TOP + plot_h - y(n)
            );
        }
        for line in &self.lines {
            let mut d = String::new();
            for (i, &(at, v)) in line.points.iter().enumerate() {
                if i == 0 {
                    let _ = write!(d, "M{:.1} {:.1}", x(at), y(v));
                } else {
                    let _ = write!(d, "H{:.1}V{:.1}", x(at), y(v));
                }
            }
            if let Some(&(_, v)) = line.points.last() {
                let _ = write!(d, "H{:.1}V{:.1}", x(self.end), y(v));
            }
            let dash = if line.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                svg,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5"{dash}/>"#,
                escape(line.colour)
            );
        }
        // The legend, top right.
        let mut lx = WIDTH - RIGHT - 360.0;
        let _ = write!(
            svg,
            r##"<rect x="{lx}" y="8" width="12" height="10" fill="#c6d8ef"/><text x="{}" y="17" fill="#222">{}</text>"##,
            lx + 16.0,
            escape(self.bar_label)
        );
        lx += 150.0;
        for line in &self.lines {
            let _ = write!(
                svg,
                r##"<path d="M{lx} 13h14" stroke="{}" stroke-width="2"/><text x="{}" y="17" fill="#222">{}</text>"##,
                escape(line.colour),
                lx + 18.0,
                escape(line.label)
            );
            lx += 100.0;
        }
        svg.push_str("</svg>");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_its_bars_lines_and_escaped_labels() {
        let start = DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let bars = [(start, 4), (start + Duration::hours(1), 8)];
        let chart = Chart {
            title: "claims <&> idle",
            start,
            end: start + Duration::hours(2),
            bars: &bars,
            bar_width: Duration::hours(1),
            bar_label: "claims per hour",
            lines: vec![Line {
                label: "idle",
                colour: "#2a7",
                dashed: false,
                points: vec![(start, 2), (start + Duration::minutes(30), 8)],
            }],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("claims &lt;&amp;&gt; idle"));
        assert!(!svg.contains("style="));
        assert_eq!(svg.matches("fill=\"#c6d8ef\"").count(), 3);
        // The line's top value is the chart's top: y = TOP.
        assert!(svg.contains(&format!("V{TOP:.1}")), "{svg}");
    }
}
