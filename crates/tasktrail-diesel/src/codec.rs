//! Encodings shared by the SQL backends: timestamps as fixed-width RFC 3339
//! text (SQLite), artifacts as a JSON array, and integers checked on the way
//! back in. A value that does not decode is a `CorruptRow`, never a panic.
//! Each backend uses its part; with one backend (or none) built, the rest is
//! unused.
#![cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use tasktrail_core::{
    HostIdentity, StorageError, TaskId, TaskRecord, TaskStatus, Timestamp, WorkerId, WorkerState,
};

pub(crate) fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::CorruptRow {
        detail: detail.into(),
    }
}

/// `2026-05-11T15:13:02.123456Z`: fixed width, so text order is time order.
pub(crate) fn encode_timestamp(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The zone-less forms a timestamp column written by something else
/// commonly holds (SQLite's own `datetime()` / `CURRENT_TIMESTAMP`, Diesel's
/// SQLite timestamp text, ISO 8601 without an offset): read as UTC.
const ZONELESS_TIMESTAMP_FORMATS: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"];

/// Reads a timestamp in any form such a column commonly holds: RFC 3339
/// with or without a fraction, with `Z` or an offset (also with a space for
/// the `T`), and `YYYY-MM-DD HH:MM:SS[.fff]` or its `T` form without an
/// offset, taken as UTC. Writes always use [`encode_timestamp`].
pub(crate) fn decode_timestamp(column: &str, text: &str) -> Result<Timestamp, StorageError> {
    let trimmed = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(at.with_timezone(&Utc));
    }
    ZONELESS_TIMESTAMP_FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(trimmed, format).ok())
        .map(|naive| naive.and_utc())
        .ok_or_else(|| {
            corrupt(format!(
                "{column} {text:?} is not a time (RFC 3339, or YYYY-MM-DD HH:MM:SS[.fff] in UTC)"
            ))
        })
}

/// Artifacts as a JSON array of strings (SQLite stores its text, Postgres
/// stores it as `jsonb`).
pub(crate) fn artifacts_to_json(artifacts: &[String]) -> serde_json::Value {
    serde_json::Value::Array(
        artifacts
            .iter()
            .map(|artifact| serde_json::Value::String(artifact.clone()))
            .collect(),
    )
}

pub(crate) fn encode_artifacts(artifacts: &[String]) -> String {
    artifacts_to_json(artifacts).to_string()
}

pub(crate) fn decode_artifacts(id: &str, text: &str) -> Result<Vec<String>, StorageError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| corrupt(format!("task {id}: artifacts are not valid JSON")))?;
    artifacts_from_json(id, value)
}

/// Reads artifacts back from a JSON value: an array is required; an item
/// that is not a string is kept as its JSON text.
pub(crate) fn artifacts_from_json(
    id: &str,
    value: serde_json::Value,
) -> Result<Vec<String>, StorageError> {
    let serde_json::Value::Array(items) = value else {
        return Err(corrupt(format!(
            "task {id}: artifacts are not a JSON array"
        )));
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(text) => Ok(text),
            other => Ok(other.to_string()),
        })
        .collect()
}

pub(crate) fn decode_status(id: &str, text: &str) -> Result<TaskStatus, StorageError> {
    text.parse()
        .map_err(|_| corrupt(format!("task {id}: unknown status {text:?}")))
}

pub(crate) fn decode_worker_state(id: &str, text: &str) -> Result<WorkerState, StorageError> {
    WorkerState::from_column(text)
        .ok_or_else(|| corrupt(format!("worker {id}: unknown state {text:?}")))
}

pub(crate) fn decode_task_id(text: &str) -> Result<TaskId, StorageError> {
    text.parse()
        .map_err(|_| corrupt(format!("task id {text:?} is not a UUID")))
}

pub(crate) fn decode_worker_id(column: &str, text: &str) -> Result<WorkerId, StorageError> {
    text.parse()
        .map_err(|_| corrupt(format!("{column} {text:?} is not a UUID")))
}

/// Names a row in a `CorruptRow` detail ("task 0190…"); formatted only when
/// a detail is built, so decoding a good row allocates nothing for it.
pub(crate) struct RowLabel<'a> {
    pub(crate) kind: &'static str,
    pub(crate) id: &'a dyn std::fmt::Display,
}

impl std::fmt::Display for RowLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

/// A PID namespace inode in a BIGINT column: the same 64 bits, so every
/// inode round-trips.
fn encode_namespace(inode: u64) -> i64 {
    i64::from_ne_bytes(inode.to_ne_bytes())
}

/// The `boot_id` and `pid_namespace` columns of a registration's identity
/// (both NULL without one).
pub(crate) fn encode_host_identity(
    identity: Option<&HostIdentity>,
) -> (Option<String>, Option<i64>) {
    identity.map_or((None, None), |identity| {
        (
            Some(identity.boot_id.clone()),
            Some(encode_namespace(identity.pid_namespace)),
        )
    })
}

/// The host identity of a `workers` row: both columns, or none (rows
/// registered before they were recorded).
pub(crate) fn decode_host_identity(
    boot_id: Option<String>,
    pid_namespace: Option<i64>,
) -> Option<HostIdentity> {
    Some(HostIdentity {
        boot_id: boot_id?,
        pid_namespace: u64::from_ne_bytes(pid_namespace?.to_ne_bytes()),
    })
}

/// Makes a row's decoding error name the row (`task <id>: ...`), so a
/// listing can report it on its own line; errors that already name it are
/// kept as they are.
pub(crate) fn name_the_row(row: &RowLabel<'_>, error: StorageError) -> StorageError {
    match error {
        StorageError::CorruptRow { detail } if !detail.contains(&row.id.to_string()) => {
            corrupt(format!("{row}: {detail}"))
        }
        other => other,
    }
}

pub(crate) fn decode_u32(
    column: &str,
    row: &RowLabel<'_>,
    value: i64,
) -> Result<u32, StorageError> {
    u32::try_from(value).map_err(|_| corrupt(format!("{row}: {column} {value} is out of range")))
}

pub(crate) fn decode_cost(id: &str, value: f64) -> Result<f64, StorageError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(corrupt(format!(
            "task {id}: cost_usd {value} is not a finite amount >= 0"
        )))
    }
}

/// A [`DeathCause`](tasktrail_core::DeathCause) as the `recovery_reports`
/// columns keep it: its kind and the facts it names (each backend stores
/// the time in its own type).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CauseColumns {
    pub(crate) kind: String,
    pub(crate) host: Option<String>,
    pub(crate) pid: Option<i64>,
    pub(crate) last_heartbeat: Option<Timestamp>,
    pub(crate) lease_ms: Option<i64>,
}

impl CauseColumns {
    /// The columns of `cause`.
    pub(crate) fn of(cause: &tasktrail_core::DeathCause) -> Self {
        use tasktrail_core::DeathCause;
        let mut columns = CauseColumns {
            kind: cause.kind().to_owned(),
            host: None,
            pid: None,
            last_heartbeat: None,
            lease_ms: None,
        };
        match cause {
            DeathCause::ProcessGone { host, pid } | DeathCause::PidReused { host, pid } => {
                columns.host = Some(host.clone());
                columns.pid = Some(i64::from(*pid));
            }
            DeathCause::LeaseExpired {
                host,
                last_heartbeat,
                lease,
            } => {
                columns.host = Some(host.clone());
                columns.last_heartbeat = Some(*last_heartbeat);
                columns.lease_ms = Some(lease.num_milliseconds());
            }
            DeathCause::LockReleased {
                host,
                pid,
                last_heartbeat,
            } => {
                columns.host = Some(host.clone());
                columns.pid = Some(i64::from(*pid));
                columns.last_heartbeat = Some(*last_heartbeat);
            }
            _ => {}
        }
        columns
    }

    /// The cause back; a kind this build does not know, or a fact its kind
    /// needs and the row lacks, is a `CorruptRow` naming `task`.
    pub(crate) fn into_cause(self, task: &str) -> Result<tasktrail_core::DeathCause, StorageError> {
        use tasktrail_core::DeathCause;
        let missing = |column: &str| {
            corrupt(format!(
                "recovery report of task {task}: {column} is NULL for a {} cause",
                self.kind
            ))
        };
        let host = || self.host.clone().ok_or_else(|| missing("cause_host"));
        let pid = || {
            let pid = self.pid.ok_or_else(|| missing("cause_pid"))?;
            u32::try_from(pid).map_err(|_| {
                corrupt(format!(
                    "recovery report of task {task}: cause_pid {pid} is not a pid"
                ))
            })
        };
        let last_heartbeat = || {
            self.last_heartbeat
                .ok_or_else(|| missing("cause_last_heartbeat"))
        };
        Ok(match self.kind.as_str() {
            "process_gone" => DeathCause::ProcessGone {
                host: host()?,
                pid: pid()?,
            },
            "pid_reused" => DeathCause::PidReused {
                host: host()?,
                pid: pid()?,
            },
            "lease_expired" => DeathCause::LeaseExpired {
                host: host()?,
                last_heartbeat: last_heartbeat()?,
                lease: chrono::Duration::milliseconds(
                    self.lease_ms.ok_or_else(|| missing("cause_lease_ms"))?,
                ),
            },
            "lock_released" => DeathCause::LockReleased {
                host: host()?,
                pid: pid()?,
                last_heartbeat: last_heartbeat()?,
            },
            "deregistered" => DeathCause::Deregistered,
            "declared_dead" => DeathCause::DeclaredDead,
            "unknown_worker" => DeathCause::UnknownWorker,
            "handle_abandoned" => DeathCause::HandleAbandoned,
            other => {
                return Err(corrupt(format!(
                    "recovery report of task {task}: unknown cause_kind {other:?}"
                )))
            }
        })
    }
}

/// A recovered task's report made again from its row (read in the claim's
/// transaction) and its `recovery_reports` columns: `dead_worker`,
/// `recovered_by` and `recovered_at` are the row's `worker_id`,
/// `interrupted_by` and `interrupted_at`.
pub(crate) fn recovered_again(
    task: TaskRecord,
    cause: CauseColumns,
    sessions_invalidated: i64,
    previous_reporter: WorkerId,
) -> Result<tasktrail_core::RecoveredTask, StorageError> {
    let id = task.id.to_string();
    let label = RowLabel {
        kind: "recovery report of task",
        id: &id,
    };
    let cause = cause.into_cause(&id)?;
    let sessions_invalidated = decode_u32("sessions_invalidated", &label, sessions_invalidated)?;
    Ok(tasktrail_core::RecoveredTask::reported_again(
        task,
        cause,
        sessions_invalidated,
        previous_reporter,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_death_cause_round_trips_through_its_report_columns() {
        use tasktrail_core::DeathCause;
        let at = decode_timestamp("t", "2026-05-11T15:13:02.123456Z").expect("time");
        for cause in [
            DeathCause::ProcessGone {
                host: "vm-1".into(),
                pid: 41,
            },
            DeathCause::PidReused {
                host: "vm-1".into(),
                pid: 41,
            },
            DeathCause::LeaseExpired {
                host: "vm-2".into(),
                last_heartbeat: at,
                lease: chrono::Duration::milliseconds(15_250),
            },
            DeathCause::LockReleased {
                host: "vm-3".into(),
                pid: 7,
                last_heartbeat: at,
            },
            DeathCause::Deregistered,
            DeathCause::DeclaredDead,
            DeathCause::UnknownWorker,
            DeathCause::HandleAbandoned,
        ] {
            let back = CauseColumns::of(&cause).into_cause("t").expect("decodes");
            assert_eq!(back, cause);
        }
    }

    #[test]
    fn a_cost_is_a_finite_amount_of_zero_or_more() {
        assert_eq!(decode_cost("t", 0.0).expect("zero"), 0.0);
        assert_eq!(decode_cost("t", 0.4275).expect("cost"), 0.4275);
        for bad in [-0.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                matches!(decode_cost("t", bad), Err(StorageError::CorruptRow { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_corrupt_detail_is_prefixed_with_the_row_it_concerns_once() {
        let id = "0196c0de-0000-7000-a000-000000000001";
        let row = RowLabel {
            kind: "task",
            id: &id,
        };
        let named = name_the_row(&row, corrupt("cost_usd is negative"));
        assert!(
            matches!(&named, StorageError::CorruptRow { detail } if detail == &format!("task {id}: cost_usd is negative")),
            "{named:?}"
        );
        let again = name_the_row(&row, named);
        assert!(
            matches!(&again, StorageError::CorruptRow { detail } if detail == &format!("task {id}: cost_usd is negative")),
            "named once: {again:?}"
        );
    }

    #[test]
    fn every_pid_namespace_inode_round_trips_and_half_an_identity_is_none() {
        for inode in [0, 1, 4_026_531_836, u64::from(u32::MAX) + 1, u64::MAX] {
            let (boot_id, namespace) = encode_host_identity(Some(&HostIdentity {
                boot_id: "b".into(),
                pid_namespace: inode,
            }));
            let identity = decode_host_identity(boot_id, namespace);
            assert_eq!(identity.map(|i| i.pid_namespace), Some(inode));
        }
        assert_eq!(encode_host_identity(None), (None, None));
        assert_eq!(decode_host_identity(None, Some(1)), None);
        assert_eq!(decode_host_identity(Some("b".into()), None), None);
    }

    #[test]
    fn artifacts_round_trip_and_garbage_is_corrupt() {
        let artifacts = vec!["pr/12".to_owned(), "a \"quoted\" path".to_owned()];
        assert_eq!(
            decode_artifacts("t", &encode_artifacts(&artifacts)).ok(),
            Some(artifacts)
        );
        assert!(matches!(
            decode_artifacts("t", "{not json"),
            Err(StorageError::CorruptRow { .. })
        ));
        assert!(matches!(
            decode_artifacts("t", "{\"a\":1}"),
            Err(StorageError::CorruptRow { .. })
        ));
    }

    #[test]
    fn timestamps_are_fixed_width_and_round_trip() {
        let at = tasktrail_core::truncate_to_micros(Utc::now());
        let text = encode_timestamp(at);
        assert_eq!(text.len(), "2026-05-11T15:13:02.123456Z".len());
        assert_eq!(decode_timestamp("started_at", &text).ok(), Some(at));
        assert!(decode_timestamp("started_at", "yesterday").is_err());
    }

    #[test]
    fn every_common_timestamp_form_is_read_and_zoneless_ones_are_utc() {
        let utc = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect("reference")
                .with_timezone(&Utc)
        };
        let cases = [
            ("2026-05-11T15:13:00Z", "2026-05-11T15:13:00Z"),
            ("2026-05-11T15:13:00.5Z", "2026-05-11T15:13:00.5Z"),
            (
                "2026-05-11T15:13:00.123456789Z",
                "2026-05-11T15:13:00.123456789Z",
            ),
            ("2026-05-11T17:13:00+02:00", "2026-05-11T15:13:00Z"),
            ("2026-05-11 15:13:00+00:00", "2026-05-11T15:13:00Z"),
            // SQLite's datetime() / CURRENT_TIMESTAMP, and Diesel's text.
            ("2026-05-11 15:13:00", "2026-05-11T15:13:00Z"),
            ("2026-05-11 15:13:00.250", "2026-05-11T15:13:00.25Z"),
            ("2026-05-11T15:13:00", "2026-05-11T15:13:00Z"),
            ("2026-05-11T15:13:00.000001", "2026-05-11T15:13:00.000001Z"),
            (" 2026-05-11 15:13:00 ", "2026-05-11T15:13:00Z"),
        ];
        for (stored, meant) in cases {
            assert_eq!(
                decode_timestamp("started_at", stored).ok(),
                Some(utc(meant)),
                "{stored:?}"
            );
        }
        for bad in [
            "",
            "2026-05-11",
            "15:13:00",
            "2026-13-11 15:13:00",
            "11/05/2026 15:13",
        ] {
            let error = decode_timestamp("started_at", bad).expect_err(bad);
            assert!(matches!(error, StorageError::CorruptRow { .. }), "{bad:?}");
        }
    }
}
