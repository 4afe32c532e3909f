//! `--plot PATH`: a PNG of the loss and the loss scale over the steps of a run, skipped steps
//! marked (red: inf/NaN gradients; magenta: an inf/NaN loss, a forward overflow). The font is embedded (DejaVu Sans Mono, `assets/fonts/`), so the plot needs no
//! system fonts.
//!
//! Only with the `plot` cargo feature (a default feature; it brings plotters and image): without
//! it this module is absent, and a plot asked of [`super::trainer::run`] is refused by
//! [`super::outputs::Outputs::validate`] with [`Error::FeatureDisabled`] before the first step.

use super::backend::StepRecord;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        path,
        "drawing the plot",
        std::io::Error::other(e.to_string()),
    )
}

/// Draws loss (top) and loss scale (bottom, log axis) against the global step into a PNG at
/// `path`. Errors: [`Error::Io`] naming `path` when the plot cannot be drawn or written (with
/// the operating system's own error for the latter).
pub fn loss_and_scale(path: &Path, steps: &[(u64, StepRecord)]) -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if !*REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    }) {
        return Err(plot_error(path, "the embedded font could not be loaded"));
    }
    let size = (1000, 700);
    let mut pixels = vec![0u8; 3 * size.0 as usize * size.1 as usize];
    draw(
        BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area(),
        path,
        steps,
    )?;
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

/// A skipped step's marker: red when the gradients overflowed (the backward pass), magenta
/// when the loss itself was inf/NaN (the forward pass).
fn overflow_color(r: &StepRecord) -> RGBColor {
    if r.loss.is_finite() {
        RED
    } else {
        MAGENTA
    }
}

fn draw(
    root: DrawingArea<BitMapBackend<'_>, Shift>,
    path: &Path,
    steps: &[(u64, StepRecord)],
) -> Result<()> {
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let (top, bottom) = root.split_vertically(350);
    let x_max = steps.last().map_or(1.0, |(s, _)| *s as f64 + 1.0);
    let x_min = steps.first().map_or(0.0, |(s, _)| *s as f64);
    let finite = |v: f32| v.is_finite().then_some(f64::from(v));
    let losses: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|(s, r)| finite(r.loss).map(|l| (*s as f64, l)))
        .collect();
    let loss_max = losses.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "training loss (skipped steps: red for inf/NaN gradients, magenta for an inf/NaN loss)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_max, 0.0..loss_max)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new(losses.iter().copied(), &BLUE))
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(steps.iter().filter(|(_, r)| r.skipped).map(|(s, r)| {
            Circle::new(
                (*s as f64, finite(r.loss).unwrap_or(0.0).min(loss_max)),
                3,
                overflow_color(r).filled(),
            )
        }))
        .map_err(|e| plot_error(path, e))?;

    let scales: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|(s, r)| finite(r.scale).filter(|v| *v > 0.0).map(|v| (*s as f64, v)))
        .collect();
    let lo = scales.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = scales.iter().map(|p| p.1).fold(0.0, f64::max);
    let (lo, hi) = if scales.is_empty() {
        (0.5, 2.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    let mut chart = ChartBuilder::on(&bottom)
        .caption("loss scale", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_max, (lo..hi).log_scale())
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("scale")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(LineSeries::new(scales.iter().copied(), &BLACK))
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(
            steps
                .iter()
                .filter(|(_, r)| r.skipped && r.scale > 0.0 && r.scale.is_finite())
                .map(|(s, r)| {
                    Circle::new(
                        (*s as f64, f64::from(r.scale)),
                        3,
                        overflow_color(r).filled(),
                    )
                }),
        )
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}
