//! Row structs for the Postgres schema and their conversion to and from the
//! domain records. Ids are native `uuid`, times `timestamptz`, artifacts
//! `jsonb`; integers are checked on the way back in, so a value that does not
//! fit the domain is a `CorruptRow`, never a panic.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Timestamptz};
use tasktrail_core::{
    truncate_to_micros, RecoveredTask, SessionId, SessionRecord, StorageError, TaskId, TaskRecord,
    Timestamp, WorkerId, WorkerRecord, WorkerRegistration, WorkerState,
};
use uuid::Uuid;

use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use crate::codec::{
    artifacts_from_json, corrupt, decode_cost, decode_host_identity, decode_status, decode_u32,
    decode_worker_state, encode_host_identity, recovered_again, CauseColumns, RowLabel,
};
use crate::overview::{HourCount, HourCountRow, StatusCount};
use crate::stats::{OwnerColumns, RunningOwnerColumns, RunningOwnerRow};

/// A time as this schema's `timestamptz` columns hold it: to the
/// microsecond.
pub(super) use tasktrail_core::truncate_to_micros as stored_time;

/// An id as this schema's `uuid` columns hold it.
pub(super) fn stored_id(id: &Uuid) -> Uuid {
    *id
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = task_history)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct TaskRow {
    id: Uuid,
    repo: String,
    issue_number: i64,
    user: String,
    agent: String,
    agent_type: String,
    model: String,
    provider: String,
    status: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_usd: Option<f64>,
    turns: Option<i64>,
    artifacts: Option<serde_json::Value>,
    worker_id: Option<Uuid>,
    interrupted_at: Option<DateTime<Utc>>,
    interrupt_reason: Option<String>,
    interrupted_by: Option<Uuid>,
}

impl TaskRow {
    /// The task id as stored.
    pub(super) fn stored_id(&self) -> Uuid {
        self.id
    }

    pub(super) fn into_record(self) -> Result<TaskRecord, StorageError> {
        let id = self.id.hyphenated().to_string();
        let label = RowLabel {
            kind: "task",
            id: &id,
        };
        let optional_u32 = |column: &str, value: Option<i64>| {
            value.map(|v| decode_u32(column, &label, v)).transpose()
        };
        Ok(TaskRecord {
            id: TaskId::from_uuid(self.id),
            repo: self.repo,
            issue_number: decode_u32("issue_number", &label, self.issue_number)?,
            user: self.user,
            agent: self.agent,
            agent_type: self.agent_type,
            model: self.model,
            provider: self.provider,
            status: decode_status(&id, &self.status)?,
            worker_id: self.worker_id.map(WorkerId::from_uuid),
            started_at: self.started_at,
            finished_at: self.finished_at,
            input_tokens: optional_u32("input_tokens", self.input_tokens)?,
            output_tokens: optional_u32("output_tokens", self.output_tokens)?,
            cost_usd: self.cost_usd.map(|c| decode_cost(&id, c)).transpose()?,
            turns: optional_u32("turns", self.turns)?,
            artifacts: self
                .artifacts
                .map(|a| artifacts_from_json(&id, a))
                .transpose()?,
            interrupted_at: self.interrupted_at,
            interrupt_reason: self.interrupt_reason,
            interrupted_by: self.interrupted_by.map(WorkerId::from_uuid),
        })
    }
}

/// A registration. `heartbeat_at` is left to the column's default, the
/// database's `now()`.
#[derive(Debug, Insertable)]
#[diesel(table_name = workers)]
pub(super) struct NewWorkerRow {
    id: Uuid,
    host: String,
    pid: i64,
    process_start_marker: String,
    started_at: DateTime<Utc>,
    state: &'static str,
    boot_id: Option<String>,
    pid_namespace: Option<i64>,
    liveness_lock: Option<&'static str>,
}

/// `workers.liveness_lock` of a worker whose liveness session holds its
/// session-level advisory lock.
pub(super) const ADVISORY_LOCK: &str = "advisory";

impl NewWorkerRow {
    /// The same row for a worker that holds no lock (behind a transaction
    /// pooler without a liveness URL): judged by its lease.
    pub(super) fn without_lock(mut self) -> Self {
        self.liveness_lock = None;
        self
    }

    pub(super) fn from_registration(registration: &WorkerRegistration) -> Self {
        let (boot_id, pid_namespace) = encode_host_identity(registration.host_identity.as_ref());
        Self {
            id: *registration.id.as_uuid(),
            host: registration.host.clone(),
            pid: i64::from(registration.pid),
            process_start_marker: registration.process_start_marker.clone(),
            started_at: truncate_to_micros(registration.started_at),
            state: WorkerState::Alive.as_str(),
            boot_id,
            pid_namespace,
            liveness_lock: Some(ADVISORY_LOCK),
        }
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = workers)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct WorkerRow {
    id: Uuid,
    host: String,
    pid: i64,
    process_start_marker: String,
    started_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    state: String,
    stopped_at: Option<DateTime<Utc>>,
    boot_id: Option<String>,
    pid_namespace: Option<i64>,
    liveness_lock: Option<String>,
}

impl WorkerRow {
    /// Whether the worker registered holding its advisory lock (rows
    /// written before the locks were recorded have none).
    pub(super) fn holds_liveness_lock(&self) -> bool {
        self.liveness_lock.as_deref() == Some(ADVISORY_LOCK)
    }

    pub(super) fn into_record(self) -> Result<WorkerRecord, StorageError> {
        let id = self.id.hyphenated().to_string();
        let label = RowLabel {
            kind: "worker",
            id: &id,
        };
        Ok(WorkerRecord {
            id: WorkerId::from_uuid(self.id),
            host: self.host,
            pid: decode_u32("pid", &label, self.pid)?,
            process_start_marker: self.process_start_marker,
            host_identity: decode_host_identity(self.boot_id, self.pid_namespace),
            started_at: self.started_at,
            heartbeat_at: self.heartbeat_at,
            state: decode_worker_state(&id, &self.state)?,
            stopped_at: self.stopped_at,
        })
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = claude_sdk_sessions)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct SessionRow {
    pub(super) session_id: String,
    pub(super) task_id: Uuid,
    pub(super) repo: String,
    pub(super) issue_number: i64,
    pub(super) agent: String,
    pub(super) created_at: DateTime<Utc>,
    pub(super) invalidated_at: Option<DateTime<Utc>>,
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
            task_id: TaskId::from_uuid(self.task_id),
            repo: self.repo,
            issue_number: decode_u32("issue_number", &label, self.issue_number)?,
            agent: self.agent,
            created_at: self.created_at,
            invalidated_at: self.invalidated_at,
            invalidation_reason: self.invalidation_reason,
        })
    }
}

/// A `recovery_reports` row as a sweep writes it: owed, unconfirmed.
#[derive(Debug, Insertable)]
#[diesel(table_name = recovery_reports)]
pub(super) struct NewReportRow {
    task_id: Uuid,
    cause_kind: String,
    cause_host: Option<String>,
    cause_pid: Option<i64>,
    cause_last_heartbeat: Option<DateTime<Utc>>,
    cause_lease_ms: Option<i64>,
    sessions_invalidated: i64,
    owed_by: Uuid,
    owed_since: DateTime<Utc>,
}

impl NewReportRow {
    /// The report `recovered` owes, owed by its recovering worker since it
    /// was recovered.
    pub(super) fn owed(recovered: &RecoveredTask) -> Self {
        let cause = CauseColumns::of(&recovered.cause);
        NewReportRow {
            task_id: *recovered.task.id.as_uuid(),
            cause_kind: cause.kind,
            cause_host: cause.host,
            cause_pid: cause.pid,
            cause_last_heartbeat: cause.last_heartbeat.map(truncate_to_micros),
            cause_lease_ms: cause.lease_ms,
            sessions_invalidated: i64::from(recovered.sessions_invalidated),
            owed_by: *recovered.recovered_by.as_uuid(),
            owed_since: truncate_to_micros(recovered.recovered_at),
        }
    }
}

/// A `recovery_reports` row read back for a claim.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = recovery_reports)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(super) struct ReportRow {
    cause_kind: String,
    cause_host: Option<String>,
    cause_pid: Option<i64>,
    cause_last_heartbeat: Option<DateTime<Utc>>,
    cause_lease_ms: Option<i64>,
    sessions_invalidated: i64,
    owed_by: Uuid,
}

impl ReportRow {
    /// The report of `task` (its row, read in the same transaction), made
    /// again by a new reporter.
    pub(super) fn into_recovered(self, task: TaskRecord) -> Result<RecoveredTask, StorageError> {
        let cause = CauseColumns {
            kind: self.cause_kind,
            host: self.cause_host,
            pid: self.cause_pid,
            last_heartbeat: self.cause_last_heartbeat,
            lease_ms: self.cause_lease_ms,
        };
        recovered_again(
            task,
            cause,
            self.sessions_invalidated,
            WorkerId::from_uuid(self.owed_by),
        )
    }
}

/// A row of the stats' running owners: the worker id a `uuid`, the
/// oldest start a `timestamptz`.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct RunningRow {
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    worker_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<Timestamp>,
    #[diesel(embed)]
    owner: OwnerColumns,
}

impl RunningOwnerRow for RunningRow {
    fn into_columns(self) -> Result<RunningOwnerColumns, StorageError> {
        Ok(RunningOwnerColumns {
            worker: self.worker_id.map(WorkerId::from_uuid),
            label: self
                .worker_id
                .map_or_else(|| "none".to_owned(), |id| id.to_string()),
            oldest_started_at: self.oldest,
            owner: self.owner,
        })
    }
}

/// A row of the dashboard's hourly counts, `hour` and a [`StatusCount`]:
/// the hour as `timestamptz`.
#[derive(QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct HourRow {
    #[diesel(sql_type = Timestamptz)]
    hour: Timestamp,
    #[diesel(embed)]
    count: StatusCount,
}

impl HourCountRow for HourRow {
    fn into_hour_count(self) -> Result<HourCount, StorageError> {
        Ok((self.hour, self.count.status, self.count.row_count))
    }
}
