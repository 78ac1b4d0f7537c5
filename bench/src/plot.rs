//! Plots with plotters, each as SVG and PNG: the latency percentile spectrum (percentile on a
//! log axis of 1/(1-p), as HdrHistogram's plotter draws it) and throughput over time.

use crate::runner::Sample;
use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];
const SIZE: (u32, u32) = (1024, 640);

type SampleField = fn(&Sample) -> f64;
/// The spectrum's x axis stops at 99.9999%.
const MAX_NINES: f64 = 6.0;

/// One latency distribution: (percentile as a fraction, latency in ms) points.
#[derive(Debug, Clone)]
pub struct Spectrum {
    /// Legend label.
    pub label: String,
    /// Points in increasing percentile order.
    pub points: Vec<(f64, f64)>,
}

impl Spectrum {
    /// The spectrum of a microsecond histogram.
    pub fn from_histogram(label: &str, h: &Histogram<u64>) -> Self {
        let points = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(5)
                .map(|v| {
                    (
                        v.quantile_iterated_to(),
                        v.value_iterated_to() as f64 / 1000.0,
                    )
                })
                .collect()
        };
        Spectrum {
            label: label.to_string(),
            points,
        }
    }
}

fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (1.0 / (1.0 - q)).log10().min(MAX_NINES)
    }
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-*x));
    if *x < 0.5 {
        "0%".to_string()
    } else {
        let decimals = (x.round() as usize).saturating_sub(2);
        format!("{p:.decimals$}%")
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

fn draw_spectrum<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Spectrum],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| nines(p.0)))
        .fold(1.0f64, f64::max)
        .ceil()
        .min(MAX_NINES);
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.001f64, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency by percentile: {title}"),
            ("sans-serif", 20),
        )
        .margin(15)
        .margin_right(45)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&nines_label)
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().map(|(q, v)| (nines(*q), *v)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A labelled instant on the time axis (warm-up end, an injected fault...).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Marker {
    /// Seconds since producers started.
    pub t: f64,
    /// What happened.
    pub label: String,
}

fn draw_markers<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    markers: &[Marker],
    y_max: f64,
) -> Result<()> {
    for m in markers {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(m.t, 0.0), (m.t, y_max)],
                6,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                m.label.clone(),
                (m.t, y_max * 0.97),
                ("sans-serif", 13).into_font().color(&BLACK.mix(0.8)),
            )))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws one line per `(label, field)` of the per-second samples, colours from `PALETTE`
/// starting at `first_color`, with a legend at `legend`.
fn draw_sample_lines<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    samples: &[Sample],
    lines: &[(&str, SampleField)],
    first_color: usize,
    legend: SeriesLabelPosition,
) -> Result<()> {
    for (i, (label, f)) in lines.iter().enumerate() {
        let color = PALETTE[first_color + i];
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.t, f(s))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw_throughput<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    samples: &[Sample],
    markers: &[Marker],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    let max_t = samples.iter().map(|s| s.t).fold(1.0f64, f64::max);
    let max_rate = samples
        .iter()
        .map(|s| s.publish_rate.max(s.consume_rate))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("Throughput over time: {title}"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..max_t, 0f64..max_rate)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("msgs/s")
        .draw()
        .map_err(err)?;
    draw_markers(&mut chart, markers, max_rate)?;
    draw_sample_lines(
        &mut chart,
        samples,
        &[
            ("publish (acked)", |s| s.publish_rate),
            ("consume", |s| s.consume_rate),
        ],
        0,
        SeriesLabelPosition::LowerRight,
    )?;

    let max_lat = samples
        .iter()
        .map(|s| s.publish_p99_ms.max(s.e2e_p99_ms))
        .fold(0.01f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..max_t, 0f64..max_lat)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("p99 latency per second (ms)")
        .draw()
        .map_err(err)?;
    draw_markers(&mut chart, markers, max_lat)?;
    draw_sample_lines(
        &mut chart,
        samples,
        &[
            ("publish p99", |s| s.publish_p99_ms),
            ("end-to-end p99", |s| s.e2e_p99_ms),
        ],
        2,
        SeriesLabelPosition::UpperRight,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png` with the spectra of `series`.
pub fn spectrum_files(dir: &Path, stem: &str, title: &str, series: &[Spectrum]) -> Result<()> {
    let svg = dir.join(format!("{stem}.svg"));
    draw_spectrum(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        title,
        series,
    )?;
    let png = dir.join(format!("{stem}.png"));
    draw_spectrum(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        title,
        series,
    )?;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png` with throughput and p99 over time.
pub fn throughput_files(
    dir: &Path,
    stem: &str,
    title: &str,
    samples: &[Sample],
    markers: &[Marker],
) -> Result<()> {
    let svg = dir.join(format!("{stem}.svg"));
    draw_throughput(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        title,
        samples,
        markers,
    )?;
    let png = dir.join(format!("{stem}.png"));
    draw_throughput(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        title,
        samples,
        markers,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(nines_label(&0.0), "0%");
        assert_eq!(nines_label(&1.0), "90%");
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&4.0), "99.99%");
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
    }
}
