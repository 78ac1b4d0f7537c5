//! Open-loop send schedule: message i is due at `start + i / rate`, whatever happened before.
//!
//! This is what makes the latency coordinated-omission correct: the producer measures from the
//! intended time on this schedule, so a stalled broker cannot slow the schedule down and hide
//! the stall (the mistake closed-loop load generators make).

use std::time::{Duration, Instant};

/// The intended send times of a fixed-rate, open-loop producer.
#[derive(Debug, Clone)]
pub struct RateSchedule {
    start: Instant,
    interval_nanos: f64,
    next_index: u64,
}

impl RateSchedule {
    /// A schedule of `rate` messages per second starting at `start`. `rate` must be > 0.
    pub fn new(start: Instant, rate: f64) -> Self {
        debug_assert!(rate > 0.0 && rate.is_finite());
        RateSchedule {
            start,
            interval_nanos: 1e9 / rate.max(1e-9),
            next_index: 0,
        }
    }

    /// The intended time of the next message.
    pub fn next_intended(&self) -> Instant {
        self.start + Duration::from_nanos((self.next_index as f64 * self.interval_nanos) as u64)
    }

    /// Takes the next message if it is due at or before `now`, returning its intended time.
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        let t = self.next_intended();
        if t <= now {
            self.next_index += 1;
            Some(t)
        } else {
            None
        }
    }

    /// Messages taken so far.
    pub fn taken(&self) -> u64 {
        self.next_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_accurate_over_a_long_simulated_run() {
        let start = Instant::now();
        let mut s = RateSchedule::new(start, 12_345.0);
        // Simulate a driver that wakes every 1.3 ms for 100 s and takes all due messages.
        let mut now = start;
        let end = start + Duration::from_secs(100);
        let mut n = 0u64;
        while now < end {
            while s.take_due(now).is_some() {
                n += 1;
            }
            now += Duration::from_micros(1300);
        }
        let expected = 12_345.0 * 100.0;
        let err = (n as f64 - expected).abs() / expected;
        assert!(err < 1e-4, "took {n}, expected {expected}");
    }

    #[test]
    fn a_late_driver_does_not_shift_the_schedule() {
        let start = Instant::now();
        let mut s = RateSchedule::new(start, 1000.0);
        // The driver sleeps through 50 ms (a stall): 51 messages are due, each keeping its own
        // intended time, which is what latency is measured from.
        let late = start + Duration::from_millis(50);
        let mut due = Vec::new();
        while let Some(t) = s.take_due(late) {
            due.push(t);
        }
        assert_eq!(due.len(), 51);
        assert_eq!(due[10] - start, Duration::from_millis(10));
        assert_eq!(s.next_intended() - start, Duration::from_millis(51));
    }
}
