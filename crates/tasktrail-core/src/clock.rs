//! Where timestamps come from. Every stored time is UTC with microsecond
//! precision, so a value read back from any backend equals the one written.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, DurationRound, Utc};

/// A UTC time with microsecond precision.
pub type Timestamp = DateTime<Utc>;

/// Truncates a time to the microsecond precision every backend stores.
pub fn truncate_to_micros(at: Timestamp) -> Timestamp {
    at.duration_trunc(Duration::microseconds(1)).unwrap_or(at)
}

/// A source of the current time. Workers take one so tests can move time
/// (for example to make a heartbeat go stale) without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, truncated to microseconds.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        truncate_to_micros(Utc::now())
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(truncate_to_micros(start))),
        }
    }

    /// Moves the clock forward (or backward, for a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = truncate_to_micros(*now + by);
    }

    /// Sets the clock to `at` (forward or backward).
    pub fn set(&self, at: Timestamp) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = truncate_to_micros(at);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A time to the second, `2026-05-11T15:13:02Z`, as the `[recovery]` lines
/// print it. Written field by field: no format string to interpret per call
/// (a sweep prints one per orphan).
pub(crate) struct UtcSeconds(pub(crate) Timestamp);

impl std::fmt::Display for UtcSeconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::{Datelike, Timelike};
        let at = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            at.year(),
            at.month(),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    }
}
