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

/// The system's wall clock. It never panics: a clock set before 1970 reads
/// as that time (chrono's own `Utc::now` panics there), and a clock beyond
/// what a [`Timestamp`] holds reads as the last time it does. A worker
/// refuses to boot on a clock before 1970 ([`ClockBeforeEpochError`]) and
/// rides out one that steps back (or before 1970) under it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        truncate_to_micros(timestamp_from_system_time(std::time::SystemTime::now()))
    }
}

/// A [`SystemTime`](std::time::SystemTime) as a [`Timestamp`], before 1970
/// too; saturating at the ends of the range, never panicking.
pub fn timestamp_from_system_time(at: std::time::SystemTime) -> Timestamp {
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => Duration::from_std(after)
            .ok()
            .and_then(|after| epoch.checked_add_signed(after))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        Err(before) => Duration::from_std(before.duration())
            .ok()
            .and_then(|before| epoch.checked_sub_signed(before))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    }
}

/// A clock that reads before 1970: nothing is written with such a time
/// (a worker does not boot, the `tasktrail` commands that write refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the system clock reads {}, before 1970: set the clock (NTP) and try again",
    UtcSeconds(*.now)
)]
pub struct ClockBeforeEpochError {
    /// What the clock read.
    pub now: Timestamp,
}

/// `clock`'s time, or [`ClockBeforeEpochError`] when it reads before 1970.
pub fn now_after_epoch(clock: &dyn Clock) -> Result<Timestamp, ClockBeforeEpochError> {
    let now = clock.now();
    if now < DateTime::<Utc>::UNIX_EPOCH {
        return Err(ClockBeforeEpochError { now });
    }
    Ok(now)
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_system_clock_reads_the_time_of_day_to_the_microsecond() {
        let before = truncate_to_micros(Utc::now());
        let now = SystemClock.now();
        let after = Utc::now();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
        assert_eq!(now, truncate_to_micros(now));
    }

    #[test]
    fn a_system_time_before_1970_is_read_as_that_time_never_a_panic() {
        let before = std::time::UNIX_EPOCH - std::time::Duration::from_secs(31 * 86_400);
        let at = timestamp_from_system_time(before);
        assert_eq!(
            at,
            Utc.with_ymd_and_hms(1969, 12, 1, 0, 0, 0)
                .single()
                .expect("time")
        );
        let after = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_778_512_380_000_001);
        assert_eq!(
            timestamp_from_system_time(after).timestamp_micros(),
            1_778_512_380_000_001
        );
        assert_eq!(
            timestamp_from_system_time(std::time::UNIX_EPOCH),
            DateTime::<Utc>::UNIX_EPOCH
        );
        // Saturates instead of panicking at the ends of chrono's range.
        let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::MAX / 4);
        assert_eq!(timestamp_from_system_time(far), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn a_clock_before_1970_is_a_clear_error_and_1970_itself_is_fine() {
        let clock = ManualClock::starting_at(
            Utc.with_ymd_and_hms(1969, 12, 1, 0, 0, 0)
                .single()
                .expect("time"),
        );
        let error = now_after_epoch(&clock).expect_err("before 1970");
        assert_eq!(
            error.to_string(),
            "the system clock reads 1969-12-01T00:00:00Z, before 1970: set the clock (NTP) and try again"
        );
        clock.set(DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(now_after_epoch(&clock), Ok(DateTime::<Utc>::UNIX_EPOCH));
    }
}
