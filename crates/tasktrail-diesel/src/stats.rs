//! The operator's figures (`tasktrail stats`), computed in the database:
//! four aggregate queries in one read-only transaction (one snapshot),
//! run here ([`stats`]) and their rows turned into a
//! [`TaskStats`](tasktrail_core::TaskStats). Nothing loads the history row
//! by row: counts are `GROUP BY`s, percentiles are ranked in SQL. A backend
//! supplies [`StatsStatements`]: its read transaction, the three
//! statements whose text is its own, and its running-owner row.
//!
//! The interrupt cause is one `CASE` shared by both backends
//! ([`cause_case!`]), the SQL twin of
//! [`InterruptCause::classify`](tasktrail_core::InterruptCause::classify);
//! the stats tests check the two agree on every reason a writer stores.

use std::collections::HashMap;

use chrono::Duration;
use tasktrail_core::{
    DurationStats, InterruptCause, RunningOwner, StatsRequest, StorageError, TaskStats, TaskStatus,
    Timestamp, WorkerId,
};

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{QueryResult, QueryableByName};

use crate::codec::{corrupt, decode_worker_state};
use crate::overview::{StatusCount, STATUS_COUNTS};
use crate::store::{map, SqlDialect};

/// The cause of an interrupted row as SQL, over a subquery's columns
/// `reason` (`interrupt_reason`), `by_own_worker` (whether
/// `interrupted_by` is the row's `worker_id`) and `cause` (the reason after
/// `recovered at boot: ` and an optional `worker <uuid> died (`). Plain
/// literals: no value of a row is ever part of the statement.
macro_rules! cause_case {
    () => {
        "CASE \
           WHEN reason IS NULL THEN 'unrecorded' \
           WHEN by_own_worker THEN CASE reason \
             WHEN 'abandoned: the task handle was dropped without a finish (panic, cancellation or early return)' \
               THEN 'abandoned' \
             WHEN 'worker stopped before the task finished' THEN 'worker_stopped' \
             ELSE 'finished_interrupted' END \
           WHEN substr(reason, 1, length('recovered at boot: ')) <> 'recovered at boot: ' \
             THEN 'other' \
           WHEN substr(cause, 1, length('process ')) = 'process ' THEN 'process_gone' \
           WHEN substr(cause, 1, length('pid ')) = 'pid ' THEN 'pid_reused' \
           WHEN substr(cause, 1, length('no heartbeat from ')) = 'no heartbeat from ' \
             THEN 'lease_expired' \
           WHEN substr(cause, 1, length('the liveness lock of process ')) \
             = 'the liveness lock of process ' THEN 'lock_released' \
           WHEN substr(cause, 1, length('worker stopped without finishing the task')) \
             = 'worker stopped without finishing the task' THEN 'deregistered' \
           WHEN substr(cause, 1, length('worker was already declared dead')) \
             = 'worker was already declared dead' THEN 'declared_dead' \
           WHEN substr(cause, 1, length('row names no registered worker')) \
             = 'row names no registered worker' THEN 'never_registered' \
           ELSE 'other' \
         END"
    };
}
pub(crate) use cause_case;

/// The `cause` column of [`cause_case!`]'s subquery: `interrupt_reason`
/// after `recovered at boot: ` (19 characters) and, when it names the dead
/// worker, after `worker <36-character uuid> died (` too.
macro_rules! cause_text {
    () => {
        "CASE WHEN substr(interrupt_reason, 20, 7) = 'worker ' \
              AND substr(interrupt_reason, 63, 7) = ' died (' \
            THEN substr(interrupt_reason, 70) \
            ELSE substr(interrupt_reason, 20) END"
    };
}
pub(crate) use cause_text;

/// The running rows per owner, with the owner's `workers` row: `worker_id,
/// rows, oldest, host, pid, state`, through the partial index on running
/// rows (as cheap as the sweep's read). A dialect gives the oldest start of
/// an owner's rows (`oldest_of_rows`, over `started_at`) and how it is read
/// back (`oldest`, over `r.oldest`).
macro_rules! running_owners {
    (oldest_of_rows: $oldest_of_rows:literal, oldest: $oldest:literal) => {
        concat!(
            "SELECT r.worker_id AS worker_id, r.row_count AS row_count, ",
            $oldest,
            " AS oldest, w.host AS host, w.pid AS pid, w.state AS state \
             FROM (SELECT worker_id, COUNT(*) AS row_count, ",
            $oldest_of_rows,
            " AS oldest FROM task_history WHERE status = 'running' GROUP BY worker_id) AS r \
             LEFT JOIN workers AS w ON w.id = r.worker_id"
        )
    };
}
pub(crate) use running_owners;

/// The interrupted rows of the window by [`cause_case!`]: `cause, rows`.
/// A dialect gives how it tells whether `interrupted_by` is the row's own
/// `worker_id` (both may be NULL) and how it compares `interrupted_at` with
/// the window's start, its first bind parameter.
macro_rules! interrupted_causes {
    (by_own_worker: $by_own_worker:literal, interrupted_since: $interrupted_since:literal) => {
        concat!(
            "SELECT ",
            $crate::stats::cause_case!(),
            " AS cause, COUNT(*) AS row_count FROM (SELECT interrupt_reason AS reason, ",
            $by_own_worker,
            " AS by_own_worker, ",
            $crate::stats::cause_text!(),
            " AS cause FROM task_history WHERE status = 'interrupted' AND ",
            $interrupted_since,
            ") AS interrupted GROUP BY 1"
        )
    };
}
pub(crate) use interrupted_causes;

/// `cause, rows`: interrupted rows by cause, from any backend.
#[derive(QueryableByName)]
pub(crate) struct CauseCount {
    #[diesel(sql_type = Text)]
    cause: String,
    #[diesel(sql_type = BigInt)]
    row_count: i64,
}

/// `status, rows, median_ms, p95_ms`: one status's durations, from any
/// backend.
#[derive(QueryableByName)]
pub(crate) struct DurationFigures {
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) row_count: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) median_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) p95_ms: Option<i64>,
}

/// `rows, host, pid, state`: the columns of a running owners' row that
/// read alike on every backend (a backend's row embeds them).
#[derive(QueryableByName)]
pub(crate) struct OwnerColumns {
    #[diesel(sql_type = BigInt)]
    row_count: i64,
    #[diesel(sql_type = Nullable<Text>)]
    host: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pid: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    state: Option<String>,
}

/// A row of the running owners' query, its worker id and oldest start
/// decoded by the dialect; the rest is read here.
pub(crate) struct RunningOwnerColumns {
    /// The owner, `None` for rows that name none.
    pub(crate) worker: Option<WorkerId>,
    /// How errors name the owner (its id as stored, or `none`).
    pub(crate) label: String,
    pub(crate) oldest_started_at: Option<Timestamp>,
    pub(crate) owner: OwnerColumns,
}

/// A backend's row of the running owners' query.
pub(crate) trait RunningOwnerRow {
    /// The row with what the dialect stores its way (the worker id, the
    /// oldest start) decoded.
    fn into_columns(self) -> Result<RunningOwnerColumns, StorageError>;
}

impl RunningOwnerColumns {
    fn into_owner(self) -> Result<RunningOwner, StorageError> {
        let label = self.label;
        let owner = self.owner;
        Ok(RunningOwner {
            worker: self.worker,
            host: owner.host,
            pid: owner
                .pid
                .map(|pid| {
                    u32::try_from(pid).map_err(|_| corrupt(format!("worker {label}: pid {pid}")))
                })
                .transpose()?,
            state: owner
                .state
                .as_deref()
                .map(|state| decode_worker_state(&label, state))
                .transpose()?,
            rows: u64::try_from(owner.row_count).unwrap_or(0),
            oldest_started_at: self.oldest_started_at,
        })
    }
}

/// What a backend supplies for the stats: its read transaction and the
/// statements whose text is its own (how it reads a time, ranks a
/// percentile, compares an owner), with the row the running owners'
/// query returns. The status counts are [`STATUS_COUNTS`], every dialect's.
pub(crate) trait StatsStatements: SqlDialect {
    /// Running rows per owner, with the owner's `workers` row: `worker_id,
    /// rows, oldest, host, pid, state`.
    const RUNNING_OWNERS: &'static str;
    /// Interrupted rows since the time bound as the first parameter, by
    /// [`cause_case!`]: `cause, rows`.
    const INTERRUPTED_CAUSES: &'static str;
    /// Durations of the rows that ended since the time bound as the first
    /// parameter, per status, nearest-rank median and p95 in milliseconds:
    /// `status, rows, median_ms, p95_ms`.
    const DURATIONS: &'static str;
    /// One row of [`Self::RUNNING_OWNERS`].
    type RunningRow: QueryableByName<Self::Backend> + RunningOwnerRow + 'static;

    /// Runs `body` in a transaction that only reads, over one snapshot.
    fn read_transaction<T>(
        connection: &mut Self::Connection,
        body: impl FnOnce(&mut Self::Connection) -> QueryResult<T>,
    ) -> QueryResult<T>;
}

/// The rows of `statement`, its first bind parameter the time `since`.
fn load_since<S, R>(
    connection: &mut S::Connection,
    statement: &str,
    since: Timestamp,
) -> QueryResult<Vec<R>>
where
    S: StatsStatements,
    R: QueryableByName<S::Backend> + 'static,
{
    S::load_text(
        connection,
        S::bind_time(diesel::sql_query(statement).into_boxed(), since),
    )
}

/// The operator's figures ([`TaskStats`]): rows by status, running rows
/// per worker, interrupted rows of the window by cause, median and p95
/// durations of the rows that ended in it; four queries in one read
/// transaction.
pub(crate) fn stats<S>(store: &S, request: &StatsRequest) -> Result<TaskStats, StorageError>
where
    S: StatsStatements,
    StatusCount: QueryableByName<S::Backend>,
    CauseCount: QueryableByName<S::Backend>,
    DurationFigures: QueryableByName<S::Backend>,
{
    let (by_status, running, causes, durations) =
        S::read_transaction(&mut *store.hold()?, |connection| {
            let by_status: Vec<StatusCount> =
                S::load_text(connection, diesel::sql_query(STATUS_COUNTS).into_boxed())?;
            let running: Vec<S::RunningRow> = S::load_text(
                connection,
                diesel::sql_query(S::RUNNING_OWNERS).into_boxed(),
            )?;
            let causes: Vec<CauseCount> = load_since::<S, _>(
                connection,
                S::INTERRUPTED_CAUSES,
                request.interrupted_start(),
            )?;
            let durations: Vec<DurationFigures> =
                load_since::<S, _>(connection, S::DURATIONS, request.window_start())?;
            Ok((by_status, running, causes, durations))
        })
        .map_err(map::<S>)?;
    assemble(
        request,
        Figures {
            by_status: by_status
                .into_iter()
                .map(|row| (row.status, row.row_count))
                .collect(),
            running: running
                .into_iter()
                .map(|row| row.into_columns()?.into_owner())
                .collect::<Result<_, _>>()?,
            causes: causes
                .into_iter()
                .map(|row| (row.cause, row.row_count))
                .collect(),
            durations,
        },
    )
}

/// What the four queries returned.
pub(crate) struct Figures {
    pub(crate) by_status: Vec<(String, i64)>,
    pub(crate) running: Vec<RunningOwner>,
    pub(crate) causes: Vec<(String, i64)>,
    pub(crate) durations: Vec<DurationFigures>,
}

fn count(what: &str, rows: i64) -> Result<u64, StorageError> {
    u64::try_from(rows).map_err(|_| corrupt(format!("{what}: negative count {rows}")))
}

fn status(text: &str) -> Result<TaskStatus, StorageError> {
    text.parse()
        .map_err(|_| corrupt(format!("task_history holds unknown status {text:?}")))
}

/// The figures as a [`TaskStats`]: every status and cause present (zero
/// when no row has it), owners oldest row first.
pub(crate) fn assemble(
    request: &StatsRequest,
    figures: Figures,
) -> Result<TaskStats, StorageError> {
    let mut by_status: HashMap<TaskStatus, u64> = HashMap::new();
    for (text, rows) in figures.by_status {
        by_status.insert(status(&text)?, count("status", rows)?);
    }
    let mut causes: HashMap<InterruptCause, u64> = HashMap::new();
    for (text, rows) in figures.causes {
        let cause: InterruptCause = text
            .parse()
            .map_err(|_| corrupt(format!("unknown interrupt cause {text:?}")))?;
        causes.insert(cause, count("cause", rows)?);
    }
    let mut durations: HashMap<TaskStatus, DurationStats> = HashMap::new();
    for row in figures.durations {
        let status = status(&row.status)?;
        durations.insert(
            status,
            DurationStats {
                status,
                rows: count("durations", row.row_count)?,
                median: row.median_ms.map(Duration::milliseconds),
                p95: row.p95_ms.map(Duration::milliseconds),
            },
        );
    }
    let mut running = figures.running;
    running.sort_by_key(|owner| (owner.oldest_started_at, owner.worker));
    Ok(TaskStats {
        request: *request,
        by_status: TaskStatus::ALL
            .iter()
            .map(|status| (*status, by_status.get(status).copied().unwrap_or(0)))
            .collect(),
        running,
        interrupted: InterruptCause::ALL
            .iter()
            .map(|cause| (*cause, causes.get(cause).copied().unwrap_or(0)))
            .collect(),
        durations: TaskStatus::ALL
            .iter()
            .filter(|status| status.is_final())
            .map(|status| {
                durations.remove(status).unwrap_or(DurationStats {
                    status: *status,
                    rows: 0,
                    median: None,
                    p95: None,
                })
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> StatsRequest {
        StatsRequest {
            now: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + Duration::days(20_000),
            since: Duration::hours(24),
        }
    }

    fn figures(rows: i64) -> Figures {
        Figures {
            by_status: vec![("failure".into(), rows)],
            running: vec![],
            causes: vec![("process_gone".into(), rows)],
            durations: vec![DurationFigures {
                status: "failure".into(),
                row_count: rows,
                median_ms: Some(1500),
                p95_ms: Some(9000),
            }],
        }
    }

    #[test]
    fn the_counts_the_queries_returned_are_the_figures() {
        let stats = assemble(&request(), figures(3)).expect("figures");
        let by_status: HashMap<TaskStatus, u64> = stats.by_status.iter().copied().collect();
        assert_eq!(by_status[&TaskStatus::Failure], 3);
        assert_eq!(by_status[&TaskStatus::Success], 0);
        let causes: HashMap<InterruptCause, u64> = stats.interrupted.iter().copied().collect();
        assert_eq!(causes[&InterruptCause::ProcessGone], 3);
        let failure = stats
            .durations
            .iter()
            .find(|durations| durations.status == TaskStatus::Failure)
            .expect("failure durations");
        assert_eq!(failure.rows, 3);
        assert_eq!(failure.median, Some(Duration::milliseconds(1500)));
    }

    #[test]
    fn a_negative_count_is_a_corrupt_figure_not_a_number() {
        assert!(matches!(
            assemble(&request(), figures(-1)),
            Err(StorageError::CorruptRow { .. })
        ));
    }

    #[test]
    fn the_sql_names_the_reasons_the_writers_store() {
        let case = cause_case!();
        for text in [
            tasktrail_core::ABANDONED_REASON,
            tasktrail_core::WORKER_STOPPED_REASON,
            tasktrail_core::RECOVERY_REASON_PREFIX,
        ] {
            assert!(case.contains(&format!("'{text}'")), "{text}");
        }
        for cause in tasktrail_core::InterruptCause::ALL {
            assert!(case.contains(&format!("'{}'", cause.as_str())), "{cause}");
        }
        // `recovered at boot: ` is 19 characters, `worker <uuid> died (` 50.
        assert_eq!(tasktrail_core::RECOVERY_REASON_PREFIX.chars().count(), 19);
        assert!(cause_text!().contains("substr(interrupt_reason, 70)"));
    }
}
