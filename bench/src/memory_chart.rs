//! A soak's memory samples: the CSV they are written to as they are taken, the growth of each
//! process over the second half, and the SVG line chart where a leak shows as a slope.

use std::fmt::Write as _;

/// One memory reading.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySample {
    /// Seconds since the soak started.
    pub seconds: f64,
    /// The process's name, as given in the plan.
    pub process: String,
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
}

/// The CSV's header line.
pub const CSV_HEADER: &str = "seconds,process,rss_kib";

/// Reads samples back from the CSV the soak writes ([`crate::soak::run`]).
pub fn read_csv(text: &str) -> Result<Vec<MemorySample>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && line.trim() != CSV_HEADER)
        .map(|(n, line)| {
            let mut fields = line.split(',');
            let parsed = (|| {
                let seconds = fields.next()?.trim().parse().ok()?;
                let process = fields.next()?.trim().to_owned();
                let rss_kib = fields.next()?.trim().parse().ok()?;
                fields.next().is_none().then_some(MemorySample {
                    seconds,
                    process,
                    rss_kib,
                })
            })();
            parsed.ok_or_else(|| format!("line {}: expected seconds,process,rss_kib", n + 1))
        })
        .collect()
}

/// Growth in KiB per minute over the second half of each process's samples (least squares),
/// after start-up has settled: a steady leak shows here.
pub fn slopes(samples: &[MemorySample]) -> Vec<(String, f64)> {
    let mut names: Vec<&str> = Vec::new();
    for sample in samples {
        if !names.contains(&sample.process.as_str()) {
            names.push(&sample.process);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| s.process == name)
                .map(|s| (s.seconds / 60.0, s.rss_kib as f64))
                .collect();
            let half = &points[points.len() / 2..];
            let n = half.len() as f64;
            let (mx, my) = (
                half.iter().map(|p| p.0).sum::<f64>() / n,
                half.iter().map(|p| p.1).sum::<f64>() / n,
            );
            let var: f64 = half.iter().map(|p| (p.0 - mx).powi(2)).sum();
            let cov: f64 = half.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let slope = if var > 0.0 { cov / var } else { 0.0 };
            (name.to_owned(), slope)
        })
        .collect()
}

/// Line colours, one per process.
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Draws the samples as an SVG line chart: resident memory (MiB) over time (minutes), one line
/// per process, with axes, grid lines and a legend.
pub fn render_svg(samples: &[MemorySample], title: &str) -> String {
    let (width, height) = (760.0, 380.0);
    let (left, right, top, bottom) = (64.0, 170.0, 40.0, 48.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max_minutes = samples
        .iter()
        .map(|s| s.seconds / 60.0)
        .fold(0.0, f64::max)
        .max(1.0 / 60.0);
    let max_mib = samples
        .iter()
        .map(|s| s.rss_kib as f64 / 1024.0)
        .fold(0.0, f64::max);
    let y_top = nice_ceiling(max_mib * 1.1);
    let x = |minutes: f64| left + minutes / max_minutes * plot_w;
    let y = |mib: f64| top + plot_h - mib / y_top * plot_h;
    // Enough decimals that the minute ticks differ.
    let decimals = if max_minutes >= 5.0 {
        0
    } else if max_minutes >= 0.5 {
        1
    } else {
        2
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/><text x="{left}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for step in 0..=5 {
        let mib = y_top * f64::from(step) / 5.0;
        let minutes = max_minutes * f64::from(step) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{xr:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{mib:.0}</text>"##,
            yy = y(mib),
            xr = left + plot_w,
            tx = left - 6.0,
            ty = y(mib) + 4.0
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{yb:.1}" stroke="#eee"/><text x="{xx:.1}" y="{ty:.1}" text-anchor="middle">{minutes:.decimals$}</text>"##,
            xx = x(minutes),
            yb = top + plot_h,
            ty = top + plot_h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">minutes</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">resident memory, MiB</text>"#,
        left + plot_w / 2.0,
        height - 10.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let mut names: Vec<&str> = Vec::new();
    for sample in samples {
        if !names.contains(&sample.process.as_str()) {
            names.push(&sample.process);
        }
    }
    for (n, name) in names.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<String> = samples
            .iter()
            .filter(|s| s.process == *name)
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    x(s.seconds / 60.0),
                    y(s.rss_kib as f64 / 1024.0)
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 10.0 + 20.0 * n as f64;
        let lx = left + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2 or 5 times a power of ten at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= value)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, process: &str, rss_kib: u64) -> MemorySample {
        MemorySample {
            seconds,
            process: process.into(),
            rss_kib,
        }
    }

    #[test]
    fn the_csv_reads_back_and_bad_lines_are_named() {
        let text = format!("{CSV_HEADER}\n0.0,emulator,1024\n30.5,handler,2048\n");
        assert_eq!(
            read_csv(&text).unwrap(),
            [sample(0.0, "emulator", 1024), sample(30.5, "handler", 2048)]
        );
        assert_eq!(
            read_csv("0.0,emulator,lots\n").unwrap_err(),
            "line 1: expected seconds,process,rss_kib"
        );
    }

    #[test]
    fn a_leak_shows_as_a_slope_and_a_flat_line_does_not() {
        let mut samples = Vec::new();
        for minute in 0..10 {
            let seconds = f64::from(minute) * 60.0;
            samples.push(sample(
                seconds,
                "leaky",
                1000 + 100 * u64::from(minute as u32),
            ));
            samples.push(sample(seconds, "steady", 5000));
        }
        let slopes = slopes(&samples);
        assert_eq!(slopes[0].0, "leaky");
        assert!((slopes[0].1 - 100.0).abs() < 1e-6, "{slopes:?}");
        assert_eq!(slopes[1], ("steady".to_owned(), 0.0));
    }

    #[test]
    fn the_chart_has_one_line_per_process_scaled_to_the_largest_value() {
        let samples = [
            sample(0.0, "emulator", 10 * 1024),
            sample(60.0, "emulator", 20 * 1024),
            sample(0.0, "handler <app>", 5 * 1024),
        ];
        let svg = render_svg(&samples, "Soak");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("handler &lt;app&gt;"));
        // 20 MiB * 1.1 rounds up to a 50 MiB axis.
        assert!(svg.contains(">50</text>"), "{svg}");
        assert_eq!(nice_ceiling(22.0), 50.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
    }
}
