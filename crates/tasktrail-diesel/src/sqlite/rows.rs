//! Row structs for the SQLite schema and their conversion to and from the
//! domain records.

use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use tasktrail_core::{
    RecoveredTask, SessionId, SessionRecord, StorageError, TaskRecord, WorkerRecord,
    WorkerRegistration, WorkerState,
};

use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use crate::codec::{
    corrupt, decode_artifacts, decode_cost, decode_host_identity, decode_status, decode_task_id,
    decode_timestamp, decode_u32, decode_worker_id, decode_worker_state, encode_host_identity,
    encode_timestamp, name_the_row, recovered_again, CauseColumns, RowLabel,
};
use crate::overview::{HourCount, HourCountRow, StatusCount};
use crate::stats::{OwnerColumns, RunningOwnerColumns, RunningOwnerRow};

/// A time as this schema's TEXT columns hold it: the one form tasktrail
/// writes (its text order is time order).
pub(super) use crate::codec::encode_timestamp as stored_time;

/// An id as this schema's TEXT columns hold it: hyphenated, lower case.
pub(super) fn stored_id(id: &uuid::Uuid) -> String {
    id.hyphenated().to_string()
}

/// `workers.liveness_lock` of a worker holding an flock on its lock file.
pub(super) const FLOCK_LOCK: &str = "flock";

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = task_history)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
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
    started_at: String,
    finished_at: Option<String>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_usd: Option<f64>,
    turns: Option<i64>,
    artifacts: Option<String>,
    worker_id: Option<String>,
    interrupted_at: Option<String>,
    interrupt_reason: Option<String>,
    interrupted_by: Option<String>,
}

impl TaskRow {
    /// The task id as stored.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The task id as stored, owned (what `stored_id` makes of it).
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
        let id = decode_task_id(&self.id)?;
        let label = RowLabel {
            kind: "task",
            id: &self.id,
        };
        let optional_u32 = |column: &str, value: Option<i64>| {
            value.map(|v| decode_u32(column, &label, v)).transpose()
        };
        let optional_time = |column: &str, value: Option<String>| {
            value.map(|v| decode_timestamp(column, &v)).transpose()
        };
        let optional_worker = |column: &str, value: Option<String>| {
            value.map(|v| decode_worker_id(column, &v)).transpose()
        };
        Ok(TaskRecord {
            id,
            repo: self.repo,
            issue_number: decode_u32("issue_number", &label, self.issue_number)?,
            user: self.user,
            agent: self.agent,
            agent_type: self.agent_type,
            model: self.model,
            provider: self.provider,
            status: decode_status(&self.id, &self.status)?,
            worker_id: optional_worker("worker_id", self.worker_id)?,
            started_at: decode_timestamp("started_at", &self.started_at)?,
            finished_at: optional_time("finished_at", self.finished_at)?,
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
            interrupted_at: optional_time("interrupted_at", self.interrupted_at)?,
            interrupt_reason: self.interrupt_reason,
            interrupted_by: optional_worker("interrupted_by", self.interrupted_by)?,
        })
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = workers)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(super) struct WorkerRow {
    id: String,
    host: String,
    pid: i64,
    process_start_marker: String,
    started_at: String,
    heartbeat_at: String,
    state: String,
    stopped_at: Option<String>,
    boot_id: Option<String>,
    pid_namespace: Option<i64>,
    liveness_lock: Option<String>,
}

impl WorkerRow {
    pub(super) fn from_registration(registration: &WorkerRegistration) -> Self {
        let started_at = encode_timestamp(registration.started_at);
        let (boot_id, pid_namespace) = encode_host_identity(registration.host_identity.as_ref());
        Self {
            id: registration.id.to_string(),
            host: registration.host.clone(),
            pid: i64::from(registration.pid),
            process_start_marker: registration.process_start_marker.clone(),
            heartbeat_at: started_at.clone(),
            started_at,
            state: WorkerState::Alive.as_str().to_owned(),
            stopped_at: None,
            boot_id,
            pid_namespace,
            liveness_lock: Some(FLOCK_LOCK.to_owned()),
        }
    }

    /// Whether the worker registered holding a lock file (rows written
    /// before the locks have none).
    pub(super) fn holds_flock(&self) -> bool {
        self.liveness_lock.as_deref() == Some(FLOCK_LOCK)
    }

    pub(super) fn into_record(self) -> Result<WorkerRecord, StorageError> {
        let label = RowLabel {
            kind: "worker",
            id: &self.id,
        };
        Ok(WorkerRecord {
            id: decode_worker_id("workers.id", &self.id)?,
            host: self.host,
            pid: decode_u32("pid", &label, self.pid)?,
            process_start_marker: self.process_start_marker,
            host_identity: decode_host_identity(self.boot_id, self.pid_namespace),
            started_at: decode_timestamp("started_at", &self.started_at)?,
            heartbeat_at: decode_timestamp("heartbeat_at", &self.heartbeat_at)?,
            state: decode_worker_state(&self.id, &self.state)?,
            stopped_at: self
                .stopped_at
                .map(|at| decode_timestamp("stopped_at", &at))
                .transpose()?,
        })
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = claude_sdk_sessions)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(super) struct SessionRow {
    pub(super) session_id: String,
    pub(super) task_id: String,
    pub(super) repo: String,
    pub(super) issue_number: i64,
    pub(super) agent: String,
    pub(super) created_at: String,
    pub(super) invalidated_at: Option<String>,
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
            created_at: decode_timestamp("created_at", &self.created_at)?,
            invalidated_at: self
                .invalidated_at
                .map(|at| decode_timestamp("invalidated_at", &at))
                .transpose()?,
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
    cause_last_heartbeat: Option<String>,
    cause_lease_ms: Option<i64>,
    sessions_invalidated: i64,
    owed_by: String,
    owed_since: String,
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
            cause_last_heartbeat: cause.last_heartbeat.map(encode_timestamp),
            cause_lease_ms: cause.lease_ms,
            sessions_invalidated: i64::from(recovered.sessions_invalidated),
            owed_by: recovered.recovered_by.to_string(),
            owed_since: encode_timestamp(recovered.recovered_at),
        }
    }
}

/// A `recovery_reports` row read back for a claim.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = recovery_reports)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(super) struct ReportRow {
    cause_kind: String,
    cause_host: Option<String>,
    cause_pid: Option<i64>,
    cause_last_heartbeat: Option<String>,
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
            last_heartbeat: self
                .cause_last_heartbeat
                .as_deref()
                .map(|text| decode_timestamp("cause_last_heartbeat", text))
                .transpose()?,
            lease_ms: self.cause_lease_ms,
        };
        let previous_reporter = decode_worker_id("owed_by", &self.owed_by)?;
        recovered_again(task, cause, self.sessions_invalidated, previous_reporter)
    }
}

/// A row of the stats' running owners: the worker id and the oldest
/// start as text.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct RunningRow {
    #[diesel(sql_type = Nullable<Text>)]
    worker_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    oldest: Option<String>,
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
            oldest_started_at: self
                .oldest
                .as_deref()
                .map(|at| decode_timestamp("started_at", at))
                .transpose()?,
            label: self.worker_id.unwrap_or_else(|| "none".to_owned()),
            owner: self.owner,
        })
    }
}

/// A row of the dashboard's hourly counts, `hour` and a [`StatusCount`]:
/// the hour as text.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct HourRow {
    #[diesel(sql_type = Text)]
    hour: String,
    #[diesel(embed)]
    count: StatusCount,
}

impl HourCountRow for HourRow {
    fn into_hour_count(self) -> Result<HourCount, StorageError> {
        Ok((
            decode_timestamp("hour", &self.hour)?,
            self.count.status,
            self.count.row_count,
        ))
    }
}
