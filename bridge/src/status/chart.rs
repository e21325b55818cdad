//! Small line and area charts as inline SVG, drawn on the server: the status page needs
//! no script, and nothing is loaded from anywhere. The SVG has a fixed coordinate system
//! (`viewBox`) and scales to the width of its box, so one drawing fits a phone and a
//! desktop.
use std::fmt::Write;

/// Drawing size in `viewBox` units.
const W: f64 = 360.0;
const H: f64 = 150.0;
/// The plot area inside it (room for the y labels on the left, x labels below).
const LEFT: f64 = 44.0;
const RIGHT: f64 = 354.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 126.0;

/// How values are written on the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Per second ("12/s").
    Rate,
    /// Durations in seconds ("25ms", "1.5s").
    Seconds,
    /// Whole numbers.
    Count,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Line,
    /// A line with the area below it filled (series are drawn in order: put the larger of
    /// two areas first).
    Area,
    /// Bars over each interval, stacked on the bar series before it: for counts of events.
    Bars,
}

/// One series: a value per point (None: a gap).
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: Vec<Option<f64>>,
    pub style: Style,
}

/// A chart over a time window that ends now.
pub(crate) struct Chart<'a> {
    /// CSS class of the svg element (the page's tests look for it).
    pub class: &'a str,
    pub label: &'a str,
    pub unit: Unit,
    /// Unix seconds of each point (the end of its interval).
    pub times: &'a [f64],
    /// Seconds between two points.
    pub interval: f64,
    pub now: f64,
    pub window: f64,
    pub series: Vec<Series<'a>>,
}

/// The smallest "nice" number (1, 2, 2.5 or 5 times a power of ten) at or above `v`.
pub(crate) fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// A value as the axis and captions write it.
pub(crate) fn format(unit: Unit, v: f64) -> String {
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s };
    match unit {
        Unit::Seconds if v == 0.0 => "0".to_owned(),
        Unit::Seconds if v < 1.0 => format!("{}ms", trim(format!("{:.1}", v * 1000.0))),
        Unit::Seconds => format!("{}s", trim(format!("{v:.2}"))),
        Unit::Rate if v >= 100.0 => format!("{v:.0}/s"),
        Unit::Rate => format!("{}/s", trim(format!("{v:.2}"))),
        Unit::Count => trim(format!("{v:.1}")),
    }
}

/// Path data of a series: a line through its points, a new subpath after each gap.
fn line_path(pts: &[(f64, Option<f64>)]) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for &(x, y) in pts {
        match y {
            Some(y) => {
                let _ = write!(d, "{}{x:.1},{y:.1}", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    d
}

/// Path data of the area under a series (each run of points without a gap).
fn area_path(pts: &[(f64, Option<f64>)]) -> String {
    let mut d = String::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let close = |run: &mut Vec<(f64, f64)>, d: &mut String| {
        if let (Some(first), Some(last)) = (run.first(), run.last()) {
            let _ = write!(d, "M{:.1},{BOTTOM:.1}", first.0);
            for (x, y) in run.iter() {
                let _ = write!(d, "L{x:.1},{y:.1}");
            }
            let _ = write!(d, "L{:.1},{BOTTOM:.1}Z", last.0);
        }
        run.clear();
    };
    for &(x, y) in pts {
        match y {
            Some(y) => run.push((x, y)),
            None => close(&mut run, &mut d),
        }
    }
    close(&mut run, &mut d);
    d
}

/// Rectangles for the non-zero values of a bar series, on top of `stack` (raised by them).
fn bars_path(
    c: &Chart<'_>,
    s: &Series<'_>,
    stack: &mut [f64],
    x_of: impl Fn(f64) -> f64,
    y_of: impl Fn(f64) -> f64,
) -> String {
    let mut d = String::new();
    for ((&t, v), base) in c.times.iter().zip(&s.values).zip(stack.iter_mut()) {
        let Some(v) = v.filter(|v| *v > 0.0) else { continue };
        let (x0, x1) = (x_of(t - c.interval), x_of(t));
        // At least a visible sliver, however many intervals share the width.
        let x0 = x0.min(x1 - 1.5).max(LEFT);
        let (y0, y1) = (y_of(*base), y_of(*base + v));
        let _ = write!(d, "M{x0:.1},{y0:.1}V{y1:.1}H{x1:.1}V{y0:.1}Z");
        *base += v;
    }
    d
}

/// The chart as an `<svg>` element.
pub(crate) fn svg(c: &Chart<'_>) -> String {
    let mut o = String::with_capacity(4096);
    let _ = write!(
        o,
        "<svg class=\"chart {}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" preserveAspectRatio=\"xMidYMid meet\">",
        c.class,
        super::html::esc(c.label)
    );
    let lines = c.series.iter().filter(|s| s.style != Style::Bars).flat_map(|s| s.values.iter().flatten());
    let stacked = (0..c.times.len()).map(|i| {
        c.series
            .iter()
            .filter(|s| s.style == Style::Bars)
            .filter_map(|s| s.values.get(i).copied().flatten())
            .sum::<f64>()
    });
    let max = lines.copied().chain(stacked).fold(0.0f64, f64::max);
    let floor = match c.unit {
        Unit::Seconds => 0.001,
        _ => 1.0,
    };
    let top = nice_ceiling(max.max(floor));
    // Grid lines and y labels at 0, half and the top.
    for (frac, v) in [(0.0, 0.0), (0.5, top / 2.0), (1.0, top)] {
        let y = BOTTOM - frac * (BOTTOM - TOP);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"yl\" x=\"{:.0}\" y=\"{:.1}\">{}</text>",
            LEFT - 4.0,
            y + 3.5,
            format(c.unit, v)
        );
    }
    // x labels: time before now, at most five.
    let step = [15.0, 30.0, 60.0, 120.0, 300.0, 600.0].into_iter().find(|s| c.window / s <= 4.0).unwrap_or(900.0);
    let mut back = 0.0;
    while back <= c.window + 1e-6 {
        let x = RIGHT - (back / c.window) * (RIGHT - LEFT);
        let text = match back as u64 {
            0 => "now".to_owned(),
            s if s % 60 != 0 => format!("-{s}s"),
            s => format!("-{}m", s / 60),
        };
        // The labels at the edges stay inside the drawing.
        let anchor = if back == 0.0 {
            " end"
        } else if c.window - back < 0.1 * c.window {
            " start"
        } else {
            ""
        };
        let _ = write!(o, "<text class=\"xl{anchor}\" x=\"{x:.1}\" y=\"{:.0}\">{text}</text>", H - 10.0);
        back += step;
    }
    if c.times.is_empty() {
        let _ = write!(
            o,
            "<text class=\"wait\" x=\"{:.0}\" y=\"{:.0}\">collecting data…</text></svg>",
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        );
        return o;
    }
    let x_of = |t: f64| LEFT + ((t - (c.now - c.window)) / c.window).clamp(0.0, 1.0) * (RIGHT - LEFT);
    let y_of = |v: f64| BOTTOM - (v / top).clamp(0.0, 1.0) * (BOTTOM - TOP);
    let mut stack = vec![0.0f64; c.times.len()];
    for s in &c.series {
        if s.style == Style::Bars {
            let d = bars_path(c, s, &mut stack, x_of, y_of);
            if !d.is_empty() {
                let _ = write!(
                    o,
                    "<path class=\"bar\" data-series=\"{}\" fill=\"{}\" d=\"{d}\"/>",
                    super::html::esc(s.name),
                    s.color
                );
            }
            continue;
        }
        let pts: Vec<(f64, Option<f64>)> =
            c.times.iter().zip(&s.values).map(|(&t, v)| (x_of(t), v.map(y_of))).collect();
        if s.style == Style::Area {
            let _ = write!(o, "<path class=\"area\" fill=\"{}\" d=\"{}\"/>", s.color, area_path(&pts));
        }
        let _ = write!(
            o,
            "<path class=\"line\" data-series=\"{}\" stroke=\"{}\" d=\"{}\"/>",
            super::html::esc(s.name),
            s.color,
            line_path(&pts)
        );
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(80.0), 100.0);
        assert!((nice_ceiling(0.0031) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn formats() {
        assert_eq!(format(Unit::Seconds, 0.0025), "2.5ms");
        assert_eq!(format(Unit::Seconds, 0.25), "250ms");
        assert_eq!(format(Unit::Seconds, 1.5), "1.5s");
        assert_eq!(format(Unit::Rate, 12.0), "12/s");
        assert_eq!(format(Unit::Rate, 0.25), "0.25/s");
        assert_eq!(format(Unit::Count, 3.0), "3");
        assert_eq!(format(Unit::Count, 2.5), "2.5");
    }

    #[test]
    fn gaps_split_the_line_and_the_area() {
        let pts = [(1.0, Some(10.0)), (2.0, Some(20.0)), (3.0, None), (4.0, Some(5.0))];
        assert_eq!(line_path(&pts), "M1.0,10.0L2.0,20.0M4.0,5.0");
        assert_eq!(area_path(&pts), "M1.0,126.0L1.0,10.0L2.0,20.0L2.0,126.0ZM4.0,126.0L4.0,5.0L4.0,126.0Z");
    }

    #[test]
    fn draws_points_inside_the_plot() {
        let times = [940.0, 1000.0];
        let c = Chart {
            class: "rps",
            label: "Requests <per> second",
            unit: Unit::Rate,
            times: &times,
            now: 1000.0,
            window: 900.0,
            interval: 60.0,
            series: vec![Series {
                name: "req/s",
                color: "#36c",
                values: vec![Some(5.0), Some(10.0)],
                style: Style::Area,
            }],
        };
        let s = svg(&c);
        assert!(s.starts_with("<svg class=\"chart rps\"") && s.ends_with("</svg>"), "{s}");
        assert!(s.contains("aria-label=\"Requests &lt;per&gt; second\""));
        // 10/s is the top of the scale; "now" is the right edge.
        assert!(s.contains("L354.0,8.0\""), "{s}");
        assert!(s.contains(">-15m<") && s.contains(">now<") && s.contains(">10/s<"));
        assert!(s.contains("class=\"xl start\" x=\"44.0\""), "{s}");
        let empty = svg(&Chart { times: &[], series: vec![], ..c });
        assert!(empty.contains("collecting data") && !empty.contains("<path"));
    }

    #[test]
    fn bars_stack_and_set_the_scale() {
        let times = [950.0, 1000.0];
        let c = Chart {
            class: "events",
            label: "events",
            unit: Unit::Count,
            times: &times,
            interval: 50.0,
            now: 1000.0,
            window: 100.0,
            series: vec![
                Series { name: "503", color: "#a00", values: vec![Some(0.0), Some(3.0)], style: Style::Bars },
                Series { name: "504", color: "#f00", values: vec![Some(0.0), Some(2.0)], style: Style::Bars },
                Series { name: "exits", color: "#333", values: vec![Some(0.0), Some(0.0)], style: Style::Bars },
            ],
        };
        let s = svg(&c);
        // 3 + 2 = 5 is the top; the second bar starts where the first ends (y 126 - 3/5 * 118).
        assert!(s.contains(">5<"), "{s}");
        assert!(s.contains("data-series=\"503\" fill=\"#a00\" d=\"M199.0,126.0V55.2H354.0V126.0Z\""), "{s}");
        assert!(s.contains("d=\"M199.0,55.2V8.0H354.0V55.2Z\""), "{s}");
        assert!(!s.contains("data-series=\"exits\""), "{s}");
        // x labels every 30 s over 100 s, the oldest anchored at its start.
        assert!(
            s.contains(">-30s<") && s.contains(">-1m<") && s.contains(">-90s<") && s.contains("class=\"xl end\""),
            "{s}"
        );
        assert!(!s.contains("xl start"), "{s}");
    }
}
