//! Identifiers: task ids and worker ids are client-side UUIDs, session ids are
//! opaque strings handed out by the agent SDK.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The id of one dispatched task: a UUID chosen by the client before the
/// `running` row is written, so a retry of the same start can never create a
/// second row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(Uuid);

/// The id of one worker boot. Every boot gets a fresh one, so a restarted
/// worker never owns the rows of its previous life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(Uuid);

/// An id that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} id {input:?} is not a UUID")]
pub struct InvalidIdError {
    what: &'static str,
    input: String,
}

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        impl $name {
            /// A fresh random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidIdError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                // Only the canonical hyphenated form is accepted: ids are
                // compared as strings by the SQL backends.
                let parsed = Uuid::try_parse(input).map_err(|_| InvalidIdError {
                    what: $what,
                    input: input.chars().take(64).collect(),
                })?;
                let mut canonical = [0_u8; uuid::fmt::Hyphenated::LENGTH];
                if !parsed
                    .hyphenated()
                    .encode_lower(&mut canonical)
                    .eq_ignore_ascii_case(input)
                {
                    return Err(InvalidIdError {
                        what: $what,
                        input: input.chars().take(64).collect(),
                    });
                }
                Ok(Self(parsed))
            }
        }
    };
}

uuid_id!(TaskId, "task");
uuid_id!(WorkerId, "worker");

/// The agent SDK's session id (the `claude_sdk_sessions` key). Opaque to
/// tasktrail; non-empty, at most [`SessionId::MAX_LEN`] bytes, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(String);

/// A session id that was empty, too long or held control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session id is empty, longer than {max} bytes, or holds control characters", max = SessionId::MAX_LEN)]
pub struct InvalidSessionIdError;

impl SessionId {
    /// The longest session id accepted, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validates a session id.
    pub fn parse(input: &str) -> Result<Self, InvalidSessionIdError> {
        if input.trim().is_empty()
            || input.len() > Self::MAX_LEN
            || input.chars().any(char::is_control)
        {
            return Err(InvalidSessionIdError);
        }
        Ok(Self(input.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TaskId {
    /// A fresh time-ordered (v7) id: 48 bits of Unix milliseconds, then
    /// random bits, so ids sort in start order. [`Task::queue`] uses it.
    /// Every index keyed by task id (the primary key, the sessions'
    /// `task_id`) then grows at its end and a sweep visits rows in the order
    /// they sit on disk; see docs/performance.md. It is as unique as a v4 id
    /// (74 random bits per millisecond) and reveals only the start time,
    /// which the row stores anyway.
    ///
    /// [`Task::queue`]: crate::Task::queue
    pub fn new_time_ordered() -> Self {
        Self::time_ordered_at(std::time::SystemTime::now())
    }

    /// A UUIDv7 for `now`, which is read once (uuid's own `now_v7` reads
    /// the clock itself, and panics on a clock before 1970, also one that
    /// steps there after our check). A clock before 1970 has no Unix time
    /// to order by: the id then carries the epoch and stays unique by its
    /// random bits. Otherwise one context for the process keeps ids unique
    /// and ordered within a millisecond and when the clock steps back (it
    /// goes on from the latest time it gave), as `now_v7`'s does.
    fn time_ordered_at(now: std::time::SystemTime) -> Self {
        static CONTEXT: std::sync::Mutex<std::panic::AssertUnwindSafe<uuid::ContextV7>> =
            std::sync::Mutex::new(std::panic::AssertUnwindSafe(uuid::ContextV7::new()));
        let Ok(since_epoch) = now.duration_since(std::time::UNIX_EPOCH) else {
            return Self(Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                0,
                0,
            )));
        };
        Self(Uuid::new_v7(uuid::Timestamp::from_unix(
            &CONTEXT,
            since_epoch.as_secs(),
            since_epoch.subsec_nanos(),
        )))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_of_exactly_the_longest_length_is_kept_as_written() {
        let longest = "s".repeat(SessionId::MAX_LEN);
        let id = SessionId::parse(&longest).expect("the limit itself is allowed");
        assert_eq!(id.to_string(), longest);
        assert_eq!(id.as_str(), longest);
        assert_eq!(
            SessionId::parse(&"s".repeat(SessionId::MAX_LEN + 1)),
            Err(InvalidSessionIdError)
        );
    }

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::new_random();
        assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
    }

    #[test]
    fn time_ordered_task_ids_sort_in_creation_order_as_text() {
        let ids: Vec<String> = (0..64)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                TaskId::new_time_ordered().to_string()
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert!(ids.iter().all(|id| id.parse::<TaskId>().is_ok()));
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "nope",
            "1234",
            "ca432f8fd29e4cab8d4222db730c9419",
            "{ca432f8f-d29e-4cab-8d42-22db730c9419}",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?} was accepted");
        }
        assert!("ca432f8f-d29e-4cab-8d42-22db730c9419"
            .parse::<TaskId>()
            .is_ok());
    }

    #[test]
    fn session_ids_are_validated() {
        assert!(SessionId::parse("sess_123").is_ok());
        assert!(SessionId::parse("  ").is_err());
        assert!(SessionId::parse("a\nb").is_err());
        assert!(SessionId::parse(&"x".repeat(SessionId::MAX_LEN + 1)).is_err());
    }

    #[test]
    fn a_clock_before_1970_still_makes_unique_ids_and_never_panics() {
        let before_the_epoch = std::time::UNIX_EPOCH - std::time::Duration::from_secs(86_400);
        let first = TaskId::time_ordered_at(before_the_epoch);
        let second = TaskId::time_ordered_at(before_the_epoch);
        assert_ne!(first, second);
        assert_eq!(first.as_uuid().get_version_num(), 7);
        let (seconds, _) = first
            .as_uuid()
            .get_timestamp()
            .expect("a v7 id carries its time")
            .to_unix();
        assert_eq!(seconds, 0, "a time before 1970 is carried as the epoch");
        let now = TaskId::time_ordered_at(std::time::SystemTime::now());
        assert!(first < now, "epoch ids sort before today's");
    }

    #[test]
    fn ids_stay_unique_and_ordered_when_the_clock_steps_back() {
        let now = std::time::SystemTime::now();
        let before = TaskId::time_ordered_at(now);
        let after_a_step_back = TaskId::time_ordered_at(now - std::time::Duration::from_secs(3600));
        assert!(
            before < after_a_step_back,
            "{before} then {after_a_step_back}"
        );
    }
}
