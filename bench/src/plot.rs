//! The ratio plot docs/benchmarks.md and README.md show: one horizontal bar per compared row,
//! green where strata meets its target (or is at least as fast, for rows without one), red
//! where it does not, with a line at 1.0x.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Row;

/// Draws `rows` (label, row) as an SVG at `path`.
pub fn ratios(rows: &[(String, &Row)], title: &str, path: &Path) -> Result<(), String> {
    let n = rows.len().max(1);
    let height = 80 + 22 * n as u32;
    let xmax = rows
        .iter()
        .map(|(_, r)| r.ratio())
        .filter(|r| r.is_finite())
        .fold(1.5_f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (980, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(430)
        .build_cartesian_2d(0.0..xmax, (0..n).into_segmented())
        .map_err(|e| err(&e))?;
    let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("strata speed relative to containerd's built-ins (x)")
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).map_or(String::new(), |l| l.to_string()),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
            let ok = r.met().unwrap_or(r.ratio() >= 1.0);
            let color = if ok { GREEN.mix(0.7) } else { RED.mix(0.7) };
            let ratio = if r.ratio().is_finite() {
                r.ratio()
            } else {
                0.0
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (ratio, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
