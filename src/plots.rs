//! PNG plots for `vigil eval --plots`: ROC curves and score histograms (plotters).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    pub path: String,
    pub reason: String,
}

const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Register a system TTF for labels; `false` when none is installed (plots then have
/// no text but are still drawn).
fn ensure_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_CANDIDATES {
            if let Ok(bytes) = std::fs::read(p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// One ROC curve: (name, (fpr, tpr) points, AUROC).
pub type RocCurve = (String, Vec<(f64, f64)>, f64);

/// ROC curves, one per (name, points, auc).
pub fn roc_png(path: &Path, title: &str, curves: &[RocCurve]) -> Result<(), PlotError> {
    let text = ensure_font();
    let root = BitMapBackend::new(path, (720, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(16)
        .x_label_area_size(if text { 40 } else { 8 })
        .y_label_area_size(if text { 50 } else { 8 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(|e| err(path, e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("false positive rate")
            .y_desc("true positive rate");
    } else {
        mesh.disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0);
    }
    mesh.draw().map_err(|e| err(path, e))?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            BLACK.mix(0.3),
        ))
        .map_err(|e| err(path, e))?;
    for (i, (name, pts, auc)) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let series = chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(path, e))?;
        if text {
            series
                .label(format!("{name} (AUROC {auc:.3})"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Overlaid histograms of anomaly scores (−log-density), one per group, with the
/// threshold as a vertical line.
pub fn histogram_png(
    path: &Path,
    title: &str,
    groups: &[(String, Vec<f64>)],
    threshold: f64,
) -> Result<(), PlotError> {
    let text = ensure_font();
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (mut lo, mut hi) = all
        .iter()
        .fold((threshold, threshold), |(a, b), &v| (a.min(v), b.max(v)));
    if hi <= lo {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.02;
    lo -= pad;
    hi += pad;
    let bins = 40usize;
    let width = (hi - lo) / bins as f64;
    let densities: Vec<Vec<f64>> = groups
        .iter()
        .map(|(_, v)| {
            let mut h = vec![0.0; bins];
            for &x in v.iter().filter(|x| x.is_finite()) {
                let b = (((x - lo) / width) as usize).min(bins - 1);
                h[b] += 1.0;
            }
            let n = v.len().max(1) as f64;
            h.iter().map(|c| c / n).collect()
        })
        .collect();
    let ymax = densities
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let root = BitMapBackend::new(path, (820, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(16)
        .x_label_area_size(if text { 40 } else { 8 })
        .y_label_area_size(if text { 50 } else { 8 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder
        .build_cartesian_2d(lo..hi, 0f64..ymax)
        .map_err(|e| err(path, e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("anomaly score (−log-density)")
            .y_desc("fraction of images");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| err(path, e))?;
    for (i, ((name, _), h)) in groups.iter().zip(&densities).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = h
            .iter()
            .enumerate()
            .flat_map(|(b, &y)| {
                let x0 = lo + b as f64 * width;
                [(x0, y), (x0 + width, y)]
            })
            .collect();
        let series = chart
            .draw_series(
                AreaSeries::new(pts.iter().copied(), 0.0, color.mix(0.25))
                    .border_style(color.stroke_width(2)),
            )
            .map_err(|e| err(path, e))?;
        if text {
            series.label(name.clone()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.mix(0.5).filled())
            });
        }
    }
    chart
        .draw_series(LineSeries::new(
            vec![(threshold, 0.0), (threshold, ymax)],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| err(path, e))?;
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}
