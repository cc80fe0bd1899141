//! `messenger bench --plot FILE.svg`: round trips/s and the latency
//! distribution (p50, p99, p99.9) of every measured cell (transport,
//! body size, requests in flight), as an SVG.
//!
//! SVG with plotters' own text metrics: drawing needs no system fonts and
//! no image libraries, and the picture is text a README can show and a
//! diff can read.

use std::path::Path;

use messenger_scenarios::bench::{Row, human_size};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// A cell's label on the x axis: `tcp 64 B ×1000`.
fn label(r: &Row) -> String {
    format!("{} {} ×{}", r.transport, human_size(r.size), r.in_flight)
}

/// A transport's colour, the same in both panels.
fn colour(transport: &str) -> RGBColor {
    match transport {
        "tcp" => RGBColor(31, 119, 180),
        "ipc" => RGBColor(44, 160, 44),
        _ => RGBColor(255, 127, 14),
    }
}

/// A log axis's range around `values` (positive), a little beyond them.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    (lo / 2.0, hi * 2.0)
}

/// Draws `rows` into the SVG file `path`; `title` says what was measured.
pub fn draw(path: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(format!(
            "--plot {}: only .svg is drawn (no fonts or image libraries needed)",
            path.display()
        ));
    }
    if rows.is_empty() {
        return Err("--plot: nothing was measured".into());
    }
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let n = rows.len();
    let width = (160 + 110 * n as u32).max(900);
    let root = SVGBackend::new(path, (width, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(390);
    // One segment per cell: a segmented 0..k has k + 1 of them.
    let cells = 0..n.saturating_sub(1).max(1);
    let x_label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => rows.get(*i).map(label).unwrap_or_default(),
        _ => String::new(),
    };

    let (lo, hi) = span(rows.iter().map(|r| r.sample.round_trips_per_s));
    let mut chart = ChartBuilder::on(&top)
        .caption("round trips per second (log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(cells.clone().into_segmented(), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(n)
        .x_label_formatter(&x_label)
        .x_label_style(("sans-serif", 11))
        .y_desc("round trips/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let top = r.sample.round_trips_per_s.max(lo);
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), lo),
                    (SegmentValue::Exact(i + 1), top),
                ],
                colour(r.transport).filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(|e| err(&e))?;

    let lat = rows
        .iter()
        .flat_map(|r| [r.sample.p50_us, r.sample.p99_us, r.sample.p999_us]);
    let (lo, hi) = span(lat);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "round-trip latency, µs (log scale): ● p50  ▲ p99  ✕ p99.9",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(cells.clone().into_segmented(), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(n)
        .x_label_formatter(&x_label)
        .x_label_style(("sans-serif", 11))
        .y_desc("µs")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    let at = |i: usize| SegmentValue::CenterOf(i);
    let finite = |v: f64| v.is_finite() && v > 0.0;
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let s = &r.sample;
            (finite(s.p50_us) && finite(s.p999_us)).then(|| {
                PathElement::new(
                    vec![(at(i), s.p50_us), (at(i), s.p999_us)],
                    colour(r.transport).stroke_width(2),
                )
            })
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .filter(|(_, r)| finite(r.sample.p50_us))
                .map(|(i, r)| {
                    Circle::new((at(i), r.sample.p50_us), 6, colour(r.transport).filled())
                }),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .filter(|(_, r)| finite(r.sample.p99_us))
                .map(|(i, r)| {
                    TriangleMarker::new((at(i), r.sample.p99_us), 7, colour(r.transport).filled())
                }),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .filter(|(_, r)| finite(r.sample.p999_us))
                .map(|(i, r)| {
                    Cross::new(
                        (at(i), r.sample.p999_us),
                        6,
                        colour(r.transport).stroke_width(2),
                    )
                }),
        )
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
