//! Fixed-bucket latency histograms on atomics.
//!
//! Prometheus histograms are cumulative counts over fixed upper bounds, so fixed buckets are
//! all the exposition needs; an observation is one bucket search and three relaxed atomic adds
//! on a cache line only its shard writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the latency buckets (request handling and fsync): 50 us to
/// 10 s, roughly 1-2.5-5 per decade, which brackets both a page-cache append and a slow disk.
pub const LATENCY_BUCKETS_SECONDS: [f64; BUCKETS] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Number of finite buckets (the `+Inf` bucket is the total count).
pub const BUCKETS: usize = 17;

const BUCKET_NANOS: [u64; BUCKETS] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram updated with relaxed atomics by one shard, read by the scraper.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); observations above the last bound only
    /// count in `count`.
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let idx = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(bucket) = self.buckets.get(idx) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0u64; BUCKETS];
        for (out, b) in buckets.iter_mut().zip(&self.buckets) {
            *out = b.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// Counts read from one or more [`Histogram`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative).
    pub buckets: [u64; BUCKETS],
    /// All observations, including those above the last bound.
    pub count: u64,
    /// Sum of the observations in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Adds another snapshot's counts (aggregating shards).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }

    /// Cumulative counts per bound, as the exposition format wants them.
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut out = [0u64; BUCKETS];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc += b;
            *o = acc;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree_with_seconds_table() {
        for (n, s) in BUCKET_NANOS.iter().zip(LATENCY_BUCKETS_SECONDS) {
            assert_eq!(*n, (s * 1e9).round() as u64);
        }
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // exactly the first bound: le="5e-05"
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60)); // above every bound: only +Inf
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative()[BUCKETS - 1], 2);
        assert_eq!(s.sum_nanos, 50_000 + 51_000 + 60_000_000_000);
    }

    #[test]
    fn merge_adds() {
        let a = Histogram::default();
        let b = Histogram::default();
        a.observe(Duration::from_millis(1));
        b.observe(Duration::from_millis(1));
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        assert_eq!(s.count, 2);
        assert_eq!(s.buckets[4], 2);
    }
}
