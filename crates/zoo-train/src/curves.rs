//! The training-curve picture: losses and accuracy per epoch, as SVG.

use crate::error::{Result, TrainError};
use crate::metrics::EpochMetrics;
use plotters::prelude::*;
use std::path::Path;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::io(path, std::io::Error::other(format!("cannot draw curves: {e}")))
}

/// Draws train/eval loss (left) and train/eval accuracy (right) against the epoch.
pub fn write_curves_svg(history: &[EpochMetrics], path: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let (left, right) = root.split_horizontally(480);
        let last = history.last().map(|m| m.epoch).unwrap_or(1).max(1);
        let x_range = 0.5f64..(last as f64 + 0.5);
        let series = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
            history
                .iter()
                .filter_map(|m| f(m).filter(|v| v.is_finite()).map(|v| (m.epoch as f64, v)))
                .collect()
        };
        let panels = [
            (
                "loss",
                [
                    ("train", series(|m| Some(m.train_loss)), BLUE),
                    ("eval", series(|m| m.eval_loss), RED),
                ],
                &left,
            ),
            (
                "accuracy",
                [
                    ("train", series(|m| m.train_acc), BLUE),
                    ("eval", series(|m| m.eval_acc), RED),
                ],
                &right,
            ),
        ];
        for (title, lines, area) in panels {
            let ys: Vec<f64> = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)).collect();
            let (lo, hi) = ys
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
            let (lo, hi) = if ys.is_empty() { (0.0, 1.0) } else { (lo, hi) };
            let pad = ((hi - lo) * 0.1).max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(x_range.clone(), (lo - pad)..(hi + pad))
                .map_err(|e| plot_err(path, e))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .draw()
                .map_err(|e| plot_err(path, e))?;
            for (name, points, color) in lines {
                if points.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| plot_err(path, e))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| plot_err(path, e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    crate::checkpoint::write_atomic(path, svg.as_bytes())
}
