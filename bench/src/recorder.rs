//! Latency histograms: HDR, microseconds, 3 significant digits, and the standard
//! percentile-distribution text (`.hgrm`) that HdrHistogram's tools and plotter read.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Highest trackable latency: one hour in microseconds. Larger values saturate.
pub const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// A new latency histogram (1 us .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that the crate accepts; failure here is a programming error.
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid histogram bounds")
}

/// Records one latency in microseconds, clamping into the trackable range.
pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
}

/// Merges `parts` into one histogram (used to combine per-task recorders).
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut total = new_histogram();
    for p in parts {
        // Same bounds everywhere, so add cannot fail; a failure would mean lost samples.
        total
            .add(p)
            .expect("histograms with identical bounds always merge");
    }
    total
}

/// The percentiles every report carries, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: u64,
    /// 50th percentile.
    pub p50: u64,
    /// 75th percentile.
    pub p75: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Maximum.
    pub max: u64,
}

impl Percentiles {
    /// Summarises a histogram (all zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// HdrHistogram's `outputPercentileDistribution` text, values in milliseconds (the histogram
/// holds microseconds, so the output scaling ratio is 1000), 5 ticks per half distance.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let scale = 1000.0;
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                    value,
                    q,
                    v.count_since_last_iteration(),
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>2.12} {:>10}",
                    value,
                    q,
                    v.count_since_last_iteration()
                );
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        mean, stdev
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        max,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Reads the (percentile, value in ms) points back from `.hgrm` text, for overlaid plots.
pub fn parse_percentile_distribution(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let value: f64 = it.next()?.parse().ok()?;
            let q: f64 = it.next()?.parse().ok()?;
            Some((q, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        let mut all = new_histogram();
        for i in 1..=10_000u64 {
            let v = i * 37 % 100_000 + 1;
            if i % 3 == 0 {
                record(&mut a, v);
            } else {
                record(&mut b, v);
            }
            record(&mut all, v);
        }
        let merged = merge([&a, &b]);
        assert_eq!(merged.len(), 10_000);
        assert_eq!(Percentiles::of(&merged), Percentiles::of(&all));
    }

    #[test]
    fn three_significant_digits() {
        let mut h = new_histogram();
        record(&mut h, 123_456);
        let v = h.value_at_quantile(0.5);
        assert!((v as f64 - 123_456.0).abs() / 123_456.0 < 0.001, "{v}");
    }

    #[test]
    fn hgrm_text_round_trips_its_points() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, i * 1000);
        }
        let text = percentile_distribution(&h);
        assert!(text.contains("Percentile"));
        assert!(text.contains("#[Max     ="));
        let pts = parse_percentile_distribution(&text);
        assert!(pts.len() > 20);
        let (q_last, v_last) = *pts.last().unwrap();
        assert_eq!(q_last, 1.0);
        assert!((v_last - 1000.0).abs() < 1.0, "{v_last}");
        let median = pts.iter().find(|(q, _)| *q >= 0.5).unwrap().1;
        assert!((median - 500.0).abs() < 1.0, "{median}");
    }
}
