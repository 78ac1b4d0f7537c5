//! One process-wide clock for send and receive timestamps.
//!
//! Payload timestamps must be comparable between the producer that writes them and the
//! consumer that reads them (possibly another process on the same host), so they are wall-clock
//! microseconds. To keep them monotonic inside one process they are derived from a single
//! (`Instant`, `SystemTime`) pair captured once: a wall-clock step during a run cannot make a
//! latency negative.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    instant: Instant,
    wall_micros: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        wall_micros: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
    })
}

/// Microseconds since the UNIX epoch for `at`, on the process-wide monotonic wall clock.
pub fn micros_at(at: Instant) -> u64 {
    let a = anchor();
    match at.checked_duration_since(a.instant) {
        Some(d) => a.wall_micros + d.as_micros() as u64,
        None => a
            .wall_micros
            .saturating_sub(a.instant.duration_since(at).as_micros() as u64),
    }
}

/// Microseconds since the UNIX epoch, now.
pub fn now_micros() -> u64 {
    micros_at(Instant::now())
}

/// The `Instant` that corresponds to wall-clock microseconds `micros` on this clock.
pub fn instant_of(micros: u64) -> Instant {
    let a = anchor();
    if micros >= a.wall_micros {
        a.instant + Duration::from_micros(micros - a.wall_micros)
    } else {
        a.instant
            .checked_sub(Duration::from_micros(a.wall_micros - micros))
            .unwrap_or(a.instant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_through_instants() {
        let now = Instant::now();
        let m = micros_at(now);
        let back = instant_of(m);
        let diff = if back > now { back - now } else { now - back };
        assert!(diff < Duration::from_micros(2), "{diff:?}");
        let later = micros_at(now + Duration::from_millis(5)) - m;
        assert!((4999..=5001).contains(&later), "{later}");
    }
}
