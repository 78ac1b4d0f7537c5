//! Prometheus text exposition format 0.0.4, written by hand (sans-IO: a `String` out).
//!
//! The format is small: `# HELP`/`# TYPE` once per family, then one line per sample, label
//! values escaped, histograms as cumulative `_bucket{le=...}` lines plus `_sum` and `_count`.

use std::fmt::Write;

use super::histogram::{HistogramSnapshot, LATENCY_BUCKETS_SECONDS};

/// The `Content-Type` of the output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Cumulative buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Accumulates the exposition text.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

impl TextEncoder {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its HELP and TYPE lines. Samples of the family must follow directly.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(valid_name(name), "invalid metric name {name}");
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.as_str()
        );
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's bucket, sum and count lines (the family line must precede).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let cumulative = h.cumulative();
        for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(cumulative) {
            let _ = write!(self.out, "{name}_bucket");
            let mut le = String::new();
            write_value(&mut le, *bound);
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {count}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, h.sum_nanos as f64 / 1e9);
        self.out.push('\n');
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    /// The finished document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    for (k, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::Histogram;
    use std::time::Duration;

    #[test]
    fn counter_with_escaped_labels() {
        let mut e = TextEncoder::new();
        e.family("sluice_x_total", "Things.\nMore", Kind::Counter);
        e.sample("sluice_x_total", &[("topic", "a\"b\\c\nd")], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP sluice_x_total Things.\\nMore\n# TYPE sluice_x_total counter\n\
             sluice_x_total{topic=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn histogram_lines_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(2));
        let mut e = TextEncoder::new();
        e.family("sluice_h_seconds", "h", Kind::Histogram);
        e.histogram("sluice_h_seconds", &[("api", "Produce")], &h.snapshot());
        let text = e.finish();
        assert!(text.contains("sluice_h_seconds_bucket{api=\"Produce\",le=\"0.00005\"} 1\n"));
        assert!(text.contains("sluice_h_seconds_bucket{api=\"Produce\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("sluice_h_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("sluice_h_seconds_count{api=\"Produce\"} 2\n"));
        assert!(text.contains("sluice_h_seconds_sum{api=\"Produce\"} 0.00201\n"));
    }

    #[test]
    fn names() {
        assert!(valid_name("sluice_requests_total"));
        assert!(!valid_name("1abc"));
        assert!(!valid_name("a-b"));
    }
}
