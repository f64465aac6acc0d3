//! Row structs for the MySQL schema and their conversion to and from the
//! domain records. Ids are hyphenated UUID text, times `DATETIME(6)` read
//! as UTC, artifacts JSON text; integers are checked on the way back in,
//! so a value that does not fit the domain is a `CorruptRow`, never a
//! panic.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Datetime, Nullable, Text};
use tasktrail_core::{
    truncate_to_micros, RecoveredTask, SessionId, SessionRecord, StorageError, TaskRecord,
    Timestamp, WorkerRecord,
};
use uuid::Uuid;

use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use crate::codec::{
    corrupt, decode_artifacts, decode_cost, decode_host_identity, decode_status, decode_task_id,
    decode_u32, decode_worker_id, decode_worker_state, name_the_row, recovered_again, CauseColumns,
    RowLabel,
};
use crate::overview::{HourCount, HourCountRow, StatusCount};
use crate::stats::{OwnerColumns, RunningOwnerColumns, RunningOwnerRow};

/// `workers.liveness_lock` of a worker whose liveness session holds its
/// named lock.
pub(super) const NAMED_LOCK: &str = "named_lock";

/// An id as this schema's `CHAR(36)` columns hold it: hyphenated, lower
/// case.
pub(super) fn stored_id(id: &Uuid) -> String {
    id.hyphenated().to_string()
}

/// A time as stored: UTC, to the microsecond.
pub(super) fn stored_time(at: Timestamp) -> NaiveDateTime {
    truncate_to_micros(at).naive_utc()
}

fn read_time(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = task_history)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
pub(super) struct TaskRow {
    id: String,
    repo: String,
    issue_number: i64,
    user: String,
    agent: String,
    agent_type: String,
    model: String,
    provider: String,
    status: String,
    started_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_usd: Option<f64>,
    turns: Option<i64>,
    artifacts: Option<String>,
    worker_id: Option<String>,
    interrupted_at: Option<NaiveDateTime>,
    interrupt_reason: Option<String>,
    interrupted_by: Option<String>,
}

impl TaskRow {
    /// The task id as stored.
    pub(super) fn stored_id(&self) -> String {
        self.id.clone()
    }

    /// The record, or a `CorruptRow` that names this row.
    pub(super) fn into_record(self) -> Result<TaskRecord, StorageError> {
        let id = self.id.clone();
        let label = RowLabel {
            kind: "task",
            id: &id,
        };
        self.decode().map_err(|error| name_the_row(&label, error))
    }

    fn decode(self) -> Result<TaskRecord, StorageError> {
        let label = RowLabel {
            kind: "task",
            id: &self.id,
        };
        let optional_u32 = |column: &str, value: Option<i64>| {
            value.map(|v| decode_u32(column, &label, v)).transpose()
        };
        let optional_worker = |column: &str, value: Option<String>| {
            value.map(|v| decode_worker_id(column, &v)).transpose()
        };
        Ok(TaskRecord {
            id: decode_task_id(&self.id)?,
            repo: self.repo,
            issue_number: decode_u32("issue_number", &label, self.issue_number)?,
            user: self.user,
            agent: self.agent,
            agent_type: self.agent_type,
            model: self.model,
            provider: self.provider,
            status: decode_status(&self.id, &self.status)?,
            worker_id: optional_worker("worker_id", self.worker_id)?,
            started_at: read_time(self.started_at),
            finished_at: self.finished_at.map(read_time),
            input_tokens: optional_u32("input_tokens", self.input_tokens)?,
            output_tokens: optional_u32("output_tokens", self.output_tokens)?,
            cost_usd: self
                .cost_usd
                .map(|c| decode_cost(&self.id, c))
                .transpose()?,
            turns: optional_u32("turns", self.turns)?,
            artifacts: self
                .artifacts
                .map(|a| decode_artifacts(&self.id, &a))
                .transpose()?,
            interrupted_at: self.interrupted_at.map(read_time),
            interrupt_reason: self.interrupt_reason,
            interrupted_by: optional_worker("interrupted_by", self.interrupted_by)?,
        })
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = workers)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
pub(super) struct WorkerRow {
    id: String,
    host: String,
    pid: i64,
    process_start_marker: String,
    started_at: NaiveDateTime,
    heartbeat_at: NaiveDateTime,
    state: String,
    stopped_at: Option<NaiveDateTime>,
    boot_id: Option<String>,
    pid_namespace: Option<i64>,
    liveness_lock: Option<String>,
}

impl WorkerRow {
    /// Whether the worker registered holding its named lock.
    pub(super) fn holds_liveness_lock(&self) -> bool {
        self.liveness_lock.as_deref() == Some(NAMED_LOCK)
    }

    pub(super) fn into_record(self) -> Result<WorkerRecord, StorageError> {
        let label = RowLabel {
            kind: "worker",
            id: &self.id,
        };
        Ok(WorkerRecord {
            id: decode_worker_id("id", &self.id)?,
            host: self.host,
            pid: decode_u32("pid", &label, self.pid)?,
            process_start_marker: self.process_start_marker,
            host_identity: decode_host_identity(self.boot_id, self.pid_namespace),
            started_at: read_time(self.started_at),
            heartbeat_at: read_time(self.heartbeat_at),
            state: decode_worker_state(&self.id, &self.state)?,
            stopped_at: self.stopped_at.map(read_time),
        })
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = claude_sdk_sessions)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
pub(super) struct SessionRow {
    pub(super) session_id: String,
    pub(super) task_id: String,
    pub(super) repo: String,
    pub(super) issue_number: i64,
    pub(super) agent: String,
    pub(super) created_at: NaiveDateTime,
    pub(super) invalidated_at: Option<NaiveDateTime>,
    pub(super) invalidation_reason: Option<String>,
}

impl SessionRow {
    pub(super) fn into_record(self) -> Result<SessionRecord, StorageError> {
        let label = RowLabel {
            kind: "session",
            id: &self.session_id,
        };
        Ok(SessionRecord {
            session_id: SessionId::parse(&self.session_id)
                .map_err(|_| corrupt(format!("{label}: invalid session id")))?,
            task_id: decode_task_id(&self.task_id)?,
            repo: self.repo,
            issue_number: decode_u32("issue_number", &label, self.issue_number)?,
            agent: self.agent,
            created_at: read_time(self.created_at),
            invalidated_at: self.invalidated_at.map(read_time),
            invalidation_reason: self.invalidation_reason,
        })
    }
}

/// A `recovery_reports` row as a sweep writes it: owed, unconfirmed.
#[derive(Debug, Insertable)]
#[diesel(table_name = recovery_reports)]
pub(super) struct NewReportRow {
    task_id: String,
    cause_kind: String,
    cause_host: Option<String>,
    cause_pid: Option<i64>,
    cause_last_heartbeat: Option<NaiveDateTime>,
    cause_lease_ms: Option<i64>,
    sessions_invalidated: i64,
    owed_by: String,
    owed_since: NaiveDateTime,
}

impl NewReportRow {
    /// The report `recovered` owes, owed by its recovering worker since it
    /// was recovered.
    pub(super) fn owed(recovered: &RecoveredTask) -> Self {
        let cause = CauseColumns::of(&recovered.cause);
        NewReportRow {
            task_id: recovered.task.id.to_string(),
            cause_kind: cause.kind,
            cause_host: cause.host,
            cause_pid: cause.pid,
            cause_last_heartbeat: cause.last_heartbeat.map(stored_time),
            cause_lease_ms: cause.lease_ms,
            sessions_invalidated: i64::from(recovered.sessions_invalidated),
            owed_by: recovered.recovered_by.to_string(),
            owed_since: stored_time(recovered.recovered_at),
        }
    }
}

/// A `recovery_reports` row read back for a claim.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = recovery_reports)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
pub(super) struct ReportRow {
    cause_kind: String,
    cause_host: Option<String>,
    cause_pid: Option<i64>,
    cause_last_heartbeat: Option<NaiveDateTime>,
    cause_lease_ms: Option<i64>,
    sessions_invalidated: i64,
    owed_by: String,
}

impl ReportRow {
    /// The report of `task` (its row, read in the same transaction), made
    /// again by a new reporter.
    pub(super) fn into_recovered(self, task: TaskRecord) -> Result<RecoveredTask, StorageError> {
        let cause = CauseColumns {
            kind: self.cause_kind,
            host: self.cause_host,
            pid: self.cause_pid,
            last_heartbeat: self.cause_last_heartbeat.map(read_time),
            lease_ms: self.cause_lease_ms,
        };
        recovered_again(
            task,
            cause,
            self.sessions_invalidated,
            decode_worker_id("owed_by", &self.owed_by)?,
        )
    }
}

/// A row of the stats' running owners: the worker id as text, the oldest
/// start a `DATETIME(6)`.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
pub(crate) struct RunningRow {
    #[diesel(sql_type = Nullable<Text>)]
    worker_id: Option<String>,
    #[diesel(sql_type = Nullable<Datetime>)]
    oldest: Option<NaiveDateTime>,
    #[diesel(embed)]
    owner: OwnerColumns,
}

impl RunningOwnerRow for RunningRow {
    fn into_columns(self) -> Result<RunningOwnerColumns, StorageError> {
        Ok(RunningOwnerColumns {
            worker: self
                .worker_id
                .as_deref()
                .map(|id| decode_worker_id("worker_id", id))
                .transpose()?,
            label: self.worker_id.unwrap_or_else(|| "none".to_owned()),
            oldest_started_at: self.oldest.map(read_time),
            owner: self.owner,
        })
    }
}

/// A row of the dashboard's hourly counts, `hour, status, row_count`: the
/// hour a `DATETIME(6)` in UTC.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
pub(crate) struct HourRow {
    #[diesel(sql_type = Datetime)]
    hour: NaiveDateTime,
    #[diesel(embed)]
    count: StatusCount,
}

impl HourCountRow for HourRow {
    fn into_hour_count(self) -> Result<HourCount, StorageError> {
        Ok((
            read_time(self.hour),
            self.count.status,
            self.count.row_count,
        ))
    }
}
