//! One SVG per scenario next to the JSON: the latency histogram where there
//! is one, else throughput over time.

use std::path::Path;

use plotters::prelude::*;

use crate::report::ScenarioResult;

/// Writes `<out>.<scenario>.svg`.
pub fn write(out: &Path, r: &ScenarioResult) -> anyhow::Result<()> {
    let path = out.with_extension(format!("{}.svg", r.scenario));
    let root = SVGBackend::new(&path, (800, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    if !r.histogram.is_empty() {
        let max_count = r.histogram.iter().map(|(_, c)| *c).max().unwrap_or(1);
        let max_us = r.histogram.last().map(|(v, _)| *v).unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{}: latency (µs)", r.scenario), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((1u64..max_us * 2).log_scale(), 0u64..max_count + 1)?;
        chart
            .configure_mesh()
            .x_desc("latency µs")
            .y_desc("messages")
            .draw()?;
        chart.draw_series(LineSeries::new(r.histogram.iter().copied(), &BLUE))?;
    } else if r.timeline.len() > 1 {
        let max_t = r.timeline.last().map(|(t, _)| *t).unwrap_or(1.0).max(0.001);
        let rates: Vec<(f64, f64)> = r
            .timeline
            .windows(2)
            .map(|w| {
                (
                    w[1].0,
                    (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0).max(1e-6),
                )
            })
            .collect();
        let max_rate = rates.iter().map(|(_, r)| *r).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: {}/s over time", r.scenario, r.unit),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_t, 0f64..max_rate * 1.1)?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        chart.draw_series(LineSeries::new(rates, &BLUE))?;
    }
    root.present()?;
    Ok(())
}
