//! A line chart as SVG, for the bench's document: a logarithmic x axis (rule counts span four
//! orders of magnitude) and a linear y axis from 0. SVG leaves text to the viewer, so nothing here
//! needs a font.

use std::fmt::Write as _;

/// What to draw: one line per series, each a list of (x, y) points.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
/// The plot area's margins: left, right, top, bottom.
const MARGIN: [f64; 4] = [70.0, 200.0, 40.0, 60.0];
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The chart as an SVG document. Points with x ≤ 0 cannot go on a log axis and are left out.
#[must_use]
pub fn lines(chart: &Chart<'_>) -> String {
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|&(x, _)| x > 0.0)
    };
    let (mut lo, mut hi) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(x.log10()), hi.max(x.log10()))
    });
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let y_max = points().map(|(_, y)| y).fold(1.0_f64, f64::max) * 1.1;
    let [left, right, top, bottom] = MARGIN;
    let (plot_w, plot_h) = (WIDTH - left - right, HEIGHT - top - bottom);
    let sx = |x: f64| left + (x.log10() - lo) / (hi - lo) * plot_w;
    let sy = |y: f64| top + plot_h - y / y_max * plot_h;

    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        left + plot_w / 2.0,
        escape(chart.title)
    );
    // Writing to a String cannot fail: the `write!` results are ignored for that reason.
    let mut decade = lo;
    while decade <= hi {
        let x = sx(10_f64.powf(decade));
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h,
            top + plot_h + 18.0,
            tick(10_f64.powf(decade))
        );
        decade += 1.0;
    }
    let step = nice_step(y_max);
    let mut y = 0.0;
    while y <= y_max {
        let py = sy(y);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{y:.1}</text>",
            left + plot_w,
            left - 8.0,
            py + 4.0
        );
        y += step;
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        HEIGHT - 16.0,
        escape(chart.x_label),
        top + plot_h / 2.0,
        escape(chart.y_label)
    );
    for (k, (name, series)) in chart.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mut sorted: Vec<(f64, f64)> =
            series.iter().copied().filter(|&(x, _)| x > 0.0).collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = sorted
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(x, y) in &sorted {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"><title>{}: {y:.3} at {x}</title></circle>",
                sx(x),
                sy(y),
                escape(name)
            );
        }
        let ly = top + 10.0 + 20.0 * k as f64;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A step of 1, 2 or 5 times a power of ten that gives about five grid lines up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let power = 10_f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= raw)
        .unwrap_or(power * 10.0)
}

/// `1000` → `1k`, `100000` → `100k`.
fn tick(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{}k", value / 1e3)
    } else {
        format!("{value}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_line_and_a_legend_entry_per_series() {
        let svg = lines(&Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            series: vec![
                ("a & b".into(), vec![(10.0, 1.0), (1000.0, 0.5)]),
                ("c".into(), vec![(100.0, 0.9), (0.0, 1.0)]),
            ],
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // The point at x = 0 cannot be drawn on a log axis.
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains(">1k<"), "decade ticks: {svg}");
    }

    #[test]
    fn steps_are_round() {
        assert!((nice_step(1.1) - 0.5).abs() < 1e-9);
        assert!((nice_step(10.0) - 2.0).abs() < 1e-9);
        assert_eq!(tick(100_000.0), "100k");
        assert_eq!(tick(10.0), "10");
    }
}
