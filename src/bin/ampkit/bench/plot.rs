//! `ampkit bench --plot PATH`: a roofline PNG of a [`Report`]. x is arithmetic intensity
//! (FLOP per byte of device traffic, log axis), y the achieved rate (FLOP/s, log axis): GEMMs and
//! training steps at their FLOP/s, memory-bound kernels at GB/s × intensity (their approximate
//! FLOP counts, [`super::bytes::flops_per_element`]). Both measured ceilings are drawn: the copy
//! bandwidth as the sloped line, cuBLAS 8192³ as the flat one. Each row is a numbered point,
//! coloured by kind; the key beside the chart names them. The font is embedded (DejaVu Sans Mono,
//! `assets/fonts/`, as in [`ampkit::train::plot`]), so no system fonts are needed.

use super::report::{Kind, Report, Row};
use ampkit::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSansMono.ttf");

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        path,
        "drawing the roofline",
        std::io::Error::other(e.to_string()),
    )
}

/// One plotted row: (intensity FLOP/byte, FLOP/s).
pub fn point(row: &Row) -> Option<(f64, f64)> {
    if row.error.is_some() {
        return None;
    }
    let (us, flops, bytes) = (row.median_us?, row.flops?, row.bytes?);
    let ok = |v: f64| v.is_finite() && v > 0.0;
    (ok(us) && ok(flops) && ok(bytes)).then(|| (flops / bytes, flops / (us * 1e-6)))
}

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Ceiling => RGBColor(0, 0, 0),
        Kind::Gemm => RGBColor(31, 90, 200),
        Kind::Mem => RGBColor(20, 140, 60),
        Kind::Train => RGBColor(200, 40, 40),
    }
}

/// Draws the roofline of `report` to `path` (PNG).
pub fn roofline(path: &Path, report: &Report) -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if !*REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    }) {
        return Err(plot_error(path, "the embedded font could not be loaded"));
    }
    let pts: Vec<(usize, &Row, (f64, f64))> = (report.rows.iter())
        .filter_map(|r| point(r).map(|p| (r, p)))
        .enumerate()
        .map(|(i, (r, p))| (i + 1, r, p))
        .collect();
    let bw = report
        .ceilings
        .copy_gbs
        .filter(|v| *v > 0.0)
        .map(|v| v * 1e9);
    let peak = (report.ceilings.cublas_f16_8192_tflops)
        .filter(|v| *v > 0.0)
        .map(|v| v * 1e12);

    // Axis ranges: every point, the ridge point, with a factor of 2-3 of margin.
    let mut xs: Vec<f64> = pts.iter().map(|p| p.2 .0).collect();
    let mut ys: Vec<f64> = pts.iter().map(|p| p.2 .1).collect();
    if let (Some(bw), Some(peak)) = (bw, peak) {
        xs.push(peak / bw);
    }
    ys.extend(peak);
    let lo_hi = |v: &[f64], lo: f64, hi: f64| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        if min.is_finite() && max > 0.0 {
            (min / 3.0, max * 3.0)
        } else {
            (lo, hi)
        }
    };
    let (x0, x1) = lo_hi(&xs, 0.01, 1e4);
    let (y0, y1) = lo_hi(&ys, 1e9, 1e15);

    let key_lines = pts.len() + 2;
    let size = (1700, (80 + 15 * key_lines as u32).max(800));
    let mut pixels = vec![0u8; 3 * size.0 as usize * size.1 as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        draw(&root, path, &pts, (bw, peak), (x0, x1, y0, y1), report)?;
    }
    write_png(path, &pixels, size)
}

/// Writes RGB pixels as a PNG. plotters can write the file itself, but its errors print as Rust
/// debug dumps; this one reports the operating system's error against the path.
fn write_png(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> Result<()> {
    image::save_buffer_with_format(
        path,
        rgb,
        w,
        h,
        image::ColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| match e {
        image::ImageError::IoError(io) => Error::io(path, "writing the plot", io),
        e => plot_error(path, e),
    })
}

type Point<'a> = (usize, &'a Row, (f64, f64));

/// The chart and its key on `root`: points, the copy-bandwidth slope and the compute roof.
fn draw(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    path: &Path,
    pts: &[Point<'_>],
    (bw, peak): (Option<f64>, Option<f64>),
    (x0, x1, y0, y1): (f64, f64, f64, f64),
    report: &Report,
) -> Result<()> {
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let (left, right) = root.split_horizontally(1100);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("ampkit roofline: {}", report.meta.card),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP / byte)")
        .y_desc("achieved FLOP/s")
        .x_label_formatter(&|v| format!("{v:.0e}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| plot_error(path, e))?;

    if let Some(bw) = bw {
        // y = bw·x, clipped to the chart (and to the compute roof when there is one).
        let top = peak.unwrap_or(y1).min(y1);
        let (a, b) = (x0.max(y0 / bw), x1.min(top / bw));
        if a < b {
            chart
                .draw_series(LineSeries::new(
                    [(a, bw * a), (b, bw * b)],
                    RGBColor(90, 90, 90).stroke_width(2),
                ))
                .map_err(|e| plot_error(path, e))?
                .label(format!("copy bandwidth {:.0} GB/s", bw / 1e9))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(90, 90, 90)));
        }
    }
    if let Some(peak) = peak {
        chart
            .draw_series(LineSeries::new(
                [(x0, peak), (x1, peak)],
                RGBColor(0, 0, 0).stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(format!("cuBLAS f16 8192^3 {:.0} TFLOP/s", peak / 1e12))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    }
    chart
        .draw_series(pts.iter().map(|(i, r, (x, y))| {
            let c = color(r.kind);
            EmptyElement::at((*x, *y))
                + Circle::new((0, 0), 4, c.filled())
                + Text::new(
                    i.to_string(),
                    (5, -14),
                    ("sans-serif", 12).into_font().color(&c),
                )
        }))
        .map_err(|e| plot_error(path, e))?;
    if bw.is_some() || peak.is_some() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| plot_error(path, e))?;
    }

    // The key: one line per point.
    let title = ("sans-serif", 14).into_font().color(&BLACK);
    right
        .draw(&Text::new(
            "points (kind name shape: rate)".to_string(),
            (10, 20),
            title,
        ))
        .map_err(|e| plot_error(path, e))?;
    for (line, (i, r, _)) in pts.iter().enumerate() {
        let rate = r
            .rate
            .map_or(String::new(), |v| format!(": {v:.1} {}", r.unit));
        let text: String = format!("{i:>2} {} {} {}{rate}", r.kind.as_str(), r.name, r.shape)
            .chars()
            .take(80)
            .collect();
        let style = ("sans-serif", 12).into_font().color(&color(r.kind));
        right
            .draw(&Text::new(text, (10, 45 + 15 * line as i32), style))
            .map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{Ceilings, Meta};

    fn report(ceilings: Ceilings) -> Report {
        let gemm = Row::measured(
            Kind::Gemm,
            "8192^3",
            "s",
            2000.0,
            Some(550.0),
            "TFLOP/s",
            None,
        )
        .with_work(2.0 * 8192f64.powi(3), 3.0 * 2.0 * 8192f64.powi(2));
        let mem = Row::measured(
            Kind::Mem,
            "softmax fwd",
            "s",
            50.0,
            Some(2.7e3),
            "GB/s",
            None,
        )
        .with_work(5.0 * 16384.0 * 1024.0, 8.0 * 16384.0 * 1024.0);
        let failed = Row::failed(Kind::Train, "x", "y", &"boom");
        let no_rate = Row::measured(Kind::Mem, "loss-scale update", "1", 2.0, None, "", None);
        Report {
            meta: Meta {
                card: "FAKE".into(),
                driver: "d".into(),
                ampkit: "0".into(),
                date: "now".into(),
                runs: "r".into(),
            },
            ceilings,
            rows: vec![gemm, mem, failed, no_rate],
            notes: vec![],
        }
    }

    #[test]
    fn points_skip_failed_and_rateless_rows() {
        let r = report(Ceilings::default());
        let p: Vec<_> = r.rows.iter().filter_map(point).collect();
        assert_eq!(p.len(), 2);
        assert!((p[1].0 - 5.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn draws_a_png_with_and_without_ceilings() {
        let dir = std::env::temp_dir().join(format!("ampkit-roofline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, ceil) in [
            Ceilings {
                copy_gbs: Some(3000.0),
                cublas_f16_8192_tflops: Some(700.0),
            },
            Ceilings::default(),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(format!("roofline{i}.png"));
            roofline(&path, &report(ceil)).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
        }
        let bad = dir.join("no/such/dir/x.png");
        assert!(roofline(&bad, &report(Ceilings::default())).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
