//! Figures about the trail for an operator (`tasktrail stats`): rows by
//! status, running rows per worker, recent interruptions by cause, task
//! durations by status.
//!
//! The SQL backends compute these in the database (`SqliteStorage::stats`,
//! `PostgresStorage::stats`); [`MemoryStorage::stats`](crate::MemoryStorage::stats)
//! and [`TaskStats::from_records`] compute the same figures over records in
//! memory. The definitions below are the contract every backend keeps.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

use crate::clock::Timestamp;
use crate::ids::WorkerId;
use crate::record::TaskRecord;
use crate::status::TaskStatus;
use crate::task::ABANDONED_REASON;
use crate::worker::{WorkerRecord, WorkerState};

/// What a stats call measures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsRequest {
    /// The present: running rows' ages and both windows end here.
    pub now: Timestamp,
    /// The duration window: durations are taken over final rows that ended
    /// at or after `now - since` (see [`StatsRequest::window_start`]).
    pub since: Duration,
}

/// The `interrupt_reason` the `tasktrail` crate's `Worker::stop` writes on
/// the tasks still in flight (`tasktrail::runtime::STOPPED_REASON`; a test
/// in the `tasktrail` crate checks the two agree).
pub const WORKER_STOPPED_REASON: &str = "worker stopped before the task finished";

/// What a recovery sweep's `interrupt_reason` starts with
/// ([`recovery_reason`](crate::backend::recovery_reason)).
pub const RECOVERY_REASON_PREFIX: &str = "recovered at boot: ";

impl StatsRequest {
    /// How far back "recent interruptions" reach: 24 hours.
    pub const INTERRUPTED_WINDOW_HOURS: i64 = 24;

    /// `now - since`, never before 1970-01-01 (a longer window means the
    /// whole history).
    pub fn window_start(&self) -> Timestamp {
        clamp_to_epoch(self.now.checked_sub_signed(self.since))
    }

    /// `now - 24 h`: interrupted rows whose `interrupted_at` is at or after
    /// it count as recent.
    pub fn interrupted_start(&self) -> Timestamp {
        clamp_to_epoch(
            self.now
                .checked_sub_signed(Duration::hours(Self::INTERRUPTED_WINDOW_HOURS)),
        )
    }
}

fn clamp_to_epoch(at: Option<Timestamp>) -> Timestamp {
    at.map_or(DateTime::<Utc>::UNIX_EPOCH, |at| {
        at.max(DateTime::<Utc>::UNIX_EPOCH)
    })
}

/// Why an `interrupted` row was interrupted, read from its
/// `interrupt_reason` and from who wrote it (`interrupted_by` equal to the
/// row's `worker_id`: its own worker; different: a recovery sweep of
/// another worker).
///
/// The reason column is free text; the classification is by the fixed
/// leading words each writer puts before any host name or value, never by
/// what follows them, so a host name cannot change the class. An
/// application's own interrupt reason that imitates a sweep's text is still
/// [`InterruptCause::FinishedInterrupted`]: a sweep never interrupts the
/// rows of the worker that runs it, so `interrupted_by` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterruptCause {
    /// A sweep's pid probe: the owner's process is gone.
    ProcessGone,
    /// A sweep's pid probe: the owner's pid belongs to another process.
    PidReused,
    /// A sweep: no lock to check, and no heartbeat within the lease.
    LeaseExpired,
    /// A sweep: the owner's liveness lock was free past the grace.
    LockReleased,
    /// A sweep: the owner deregistered (`stopped`) and left the row running.
    Deregistered,
    /// A sweep: an earlier sweep had already declared the owner dead.
    DeclaredDead,
    /// A sweep: the row names no registered worker.
    NeverRegistered,
    /// Its own worker: the task handle was dropped without a finish.
    Abandoned,
    /// Its own worker, stopping: the task was still in flight.
    WorkerStopped,
    /// Its own worker, with a reason of the application's
    /// (`Outcome::Interrupted`, e.g. `worker received SIGTERM`, a server's
    /// own shutdown reason).
    FinishedInterrupted,
    /// No reason recorded (rows written before tasktrail, adopted).
    Unrecorded,
    /// A reason that fits none of the above (a sweep reason in an unknown
    /// form, a row written by hand).
    Other,
}

impl InterruptCause {
    /// Every cause, in this order.
    pub const ALL: [InterruptCause; 12] = [
        InterruptCause::ProcessGone,
        InterruptCause::PidReused,
        InterruptCause::LeaseExpired,
        InterruptCause::LockReleased,
        InterruptCause::Deregistered,
        InterruptCause::DeclaredDead,
        InterruptCause::NeverRegistered,
        InterruptCause::Abandoned,
        InterruptCause::WorkerStopped,
        InterruptCause::FinishedInterrupted,
        InterruptCause::Unrecorded,
        InterruptCause::Other,
    ];

    /// The cause's name (`process_gone`, `worker_stopped`...), as the SQL
    /// backends compute it.
    pub const fn as_str(self) -> &'static str {
        match self {
            InterruptCause::ProcessGone => "process_gone",
            InterruptCause::PidReused => "pid_reused",
            InterruptCause::LeaseExpired => "lease_expired",
            InterruptCause::LockReleased => "lock_released",
            InterruptCause::Deregistered => "deregistered",
            InterruptCause::DeclaredDead => "declared_dead",
            InterruptCause::NeverRegistered => "never_registered",
            InterruptCause::Abandoned => "abandoned",
            InterruptCause::WorkerStopped => "worker_stopped",
            InterruptCause::FinishedInterrupted => "finished_interrupted",
            InterruptCause::Unrecorded => "unrecorded",
            InterruptCause::Other => "other",
        }
    }

    /// Whether a recovery sweep (another worker) wrote it.
    pub const fn is_recovery(self) -> bool {
        matches!(
            self,
            InterruptCause::ProcessGone
                | InterruptCause::PidReused
                | InterruptCause::LeaseExpired
                | InterruptCause::LockReleased
                | InterruptCause::Deregistered
                | InterruptCause::DeclaredDead
                | InterruptCause::NeverRegistered
        )
    }

    /// The cause of an interrupted row: its `interrupt_reason`, and whether
    /// its own worker wrote it (`interrupted_by` is the row's `worker_id`,
    /// both NULL included). The SQL backends compute exactly this in SQL.
    ///
    /// - no reason: [`Unrecorded`](Self::Unrecorded);
    /// - written by the row's own worker: [`ABANDONED_REASON`] is
    ///   `abandoned`, [`WORKER_STOPPED_REASON`] `worker_stopped`, any other
    ///   text `finished_interrupted`;
    /// - written by another (a sweep): the reason must start with
    ///   `recovered at boot: `, optionally followed by `worker <uuid> died (`;
    ///   what follows names the cause by its first words (`process ` →
    ///   `process_gone`, `pid ` → `pid_reused`, `no heartbeat from ` →
    ///   `lease_expired`, `the liveness lock of process ` →
    ///   `lock_released`, `worker stopped without finishing the task` →
    ///   `deregistered`, `worker was already declared dead` →
    ///   `declared_dead`, `row names no registered worker` →
    ///   `never_registered`); anything else is `other`.
    pub fn classify(reason: Option<&str>, by_own_worker: bool) -> InterruptCause {
        let Some(reason) = reason else {
            return InterruptCause::Unrecorded;
        };
        if by_own_worker {
            return if reason == ABANDONED_REASON {
                InterruptCause::Abandoned
            } else if reason == WORKER_STOPPED_REASON {
                InterruptCause::WorkerStopped
            } else {
                InterruptCause::FinishedInterrupted
            };
        }
        let Some(rest) = reason.strip_prefix(RECOVERY_REASON_PREFIX) else {
            return InterruptCause::Other;
        };
        // `worker <36-character uuid> died (<cause>)`, or the cause alone
        // (counted in characters, as SQL's substr counts).
        let chars = |skip, take| rest.chars().skip(skip).take(take).collect::<String>();
        let cause = if chars(0, 7) == "worker " && chars(43, 7) == " died (" {
            rest.char_indices()
                .nth(50)
                .map_or("", |(at, _)| &rest[at..])
        } else {
            rest
        };
        CAUSE_PREFIXES
            .iter()
            .find(|(prefix, _)| cause.starts_with(prefix))
            .map_or(InterruptCause::Other, |(_, kind)| *kind)
    }
}

/// A sweep's cause text (the `Display` of [`DeathCause`](crate::DeathCause))
/// by its leading words. The SQL backends hold the same table in SQL.
const CAUSE_PREFIXES: [(&str, InterruptCause); 7] = [
    ("process ", InterruptCause::ProcessGone),
    ("pid ", InterruptCause::PidReused),
    ("no heartbeat from ", InterruptCause::LeaseExpired),
    (
        "the liveness lock of process ",
        InterruptCause::LockReleased,
    ),
    (
        "worker stopped without finishing the task",
        InterruptCause::Deregistered,
    ),
    (
        "worker was already declared dead",
        InterruptCause::DeclaredDead,
    ),
    (
        "row names no registered worker",
        InterruptCause::NeverRegistered,
    ),
];

impl fmt::Display for InterruptCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`InterruptCause::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown interrupt cause {0:?}")]
pub struct UnknownCauseError(String);

impl FromStr for InterruptCause {
    type Err = UnknownCauseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        InterruptCause::ALL
            .into_iter()
            .find(|cause| cause.as_str() == input)
            .ok_or_else(|| UnknownCauseError(input.chars().take(64).collect()))
    }
}

/// The `running` rows of one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningOwner {
    /// `worker_id` of the rows (`None`: rows that name no worker).
    pub worker: Option<WorkerId>,
    /// Its `workers` row's host, pid and state (`None` when it has none).
    pub host: Option<String>,
    /// Its pid.
    pub pid: Option<u32>,
    /// Its state (`alive`, or a worker a sweep has yet to reach).
    pub state: Option<WorkerState>,
    /// How many `running` rows it has.
    pub rows: u64,
    /// The earliest `started_at` among them (`None` when no row's time can
    /// be read).
    pub oldest_started_at: Option<Timestamp>,
}

impl RunningOwner {
    /// How long the oldest of these rows has been running at `now`.
    pub fn oldest_age(&self, now: Timestamp) -> Option<Duration> {
        self.oldest_started_at.map(|started| now - started)
    }
}

/// Durations of one final status over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStats {
    /// The status.
    pub status: TaskStatus,
    /// How many rows of it ended in the window.
    pub rows: u64,
    /// The median duration (nearest rank: the `ceil(n / 2)`-th shortest),
    /// to the millisecond; `None` without rows.
    pub median: Option<Duration>,
    /// The 95th percentile (nearest rank: the `ceil(0.95 n)`-th shortest).
    pub p95: Option<Duration>,
}

/// What [`MemoryStorage::stats`](crate::MemoryStorage::stats) and the SQL
/// backends' `stats` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStats {
    /// The request it answers.
    pub request: StatsRequest,
    /// Rows of each status, every status in [`TaskStatus::ALL`] order.
    pub by_status: Vec<(TaskStatus, u64)>,
    /// Owners of `running` rows, oldest row first.
    pub running: Vec<RunningOwner>,
    /// `interrupted` rows whose `interrupted_at` is in the last 24 hours,
    /// by cause, every cause in [`InterruptCause::ALL`] order.
    pub interrupted: Vec<(InterruptCause, u64)>,
    /// Durations (`finished_at`, else `interrupted_at`, minus `started_at`)
    /// of final rows that ended in the window, each final status in
    /// [`TaskStatus::ALL`] order.
    pub durations: Vec<DurationStats>,
}

/// The rank (1-based) of the nearest-rank `percent`-th percentile of `n`
/// sorted values: `ceil(percent * n / 100)`, at least 1.
pub fn nearest_rank(percent: u64, n: u64) -> u64 {
    (percent * n).div_ceil(100).max(1)
}

/// A duration to the nearest millisecond (halves away from zero), as the
/// SQL backends report it.
pub fn round_to_millis(duration: Duration) -> Duration {
    match duration.num_microseconds() {
        Some(micros) => {
            let millis = (micros.abs() + 500) / 1000;
            Duration::milliseconds(if micros < 0 { -millis } else { millis })
        }
        None => Duration::milliseconds(duration.num_milliseconds()),
    }
}

impl TaskStats {
    /// The figures over records in memory: what every backend must report
    /// for the same rows.
    pub fn from_records<'a>(
        request: &StatsRequest,
        tasks: impl IntoIterator<Item = &'a TaskRecord>,
        workers: &[WorkerRecord],
    ) -> TaskStats {
        let window_start = request.window_start();
        let interrupted_start = request.interrupted_start();
        let mut by_status: Vec<(TaskStatus, u64)> =
            TaskStatus::ALL.iter().map(|status| (*status, 0)).collect();
        let mut interrupted: Vec<(InterruptCause, u64)> = InterruptCause::ALL
            .iter()
            .map(|cause| (*cause, 0))
            .collect();
        let mut running: Vec<RunningOwner> = Vec::new();
        let mut ended: Vec<(TaskStatus, Duration)> = Vec::new();
        for task in tasks {
            count(&mut by_status, task.status);
            match task.status {
                TaskStatus::Running => {
                    match running
                        .iter_mut()
                        .find(|owner| owner.worker == task.worker_id)
                    {
                        Some(owner) => {
                            owner.rows += 1;
                            owner.oldest_started_at = owner
                                .oldest_started_at
                                .map(|oldest| oldest.min(task.started_at));
                        }
                        None => {
                            let record = workers
                                .iter()
                                .find(|worker| Some(worker.id) == task.worker_id);
                            running.push(RunningOwner {
                                worker: task.worker_id,
                                host: record.map(|worker| worker.host.clone()),
                                pid: record.map(|worker| worker.pid),
                                state: record.map(|worker| worker.state),
                                rows: 1,
                                oldest_started_at: Some(task.started_at),
                            });
                        }
                    }
                }
                status => {
                    if status == TaskStatus::Interrupted
                        && task
                            .interrupted_at
                            .is_some_and(|at| at >= interrupted_start)
                    {
                        let cause = InterruptCause::classify(
                            task.interrupt_reason.as_deref(),
                            task.interrupted_by == task.worker_id,
                        );
                        count(&mut interrupted, cause);
                    }
                    if let Some(end) = task.finished_at.or(task.interrupted_at) {
                        if end >= window_start {
                            ended.push((status, round_to_millis(end - task.started_at)));
                        }
                    }
                }
            }
        }
        running.sort_by_key(|owner| (owner.oldest_started_at, owner.worker));
        ended.sort();
        let durations = TaskStatus::ALL
            .iter()
            .filter(|status| status.is_final())
            .map(|status| {
                let sorted: Vec<Duration> = ended
                    .iter()
                    .filter(|(of, _)| of == status)
                    .map(|(_, duration)| *duration)
                    .collect();
                let n = sorted.len() as u64;
                let at = |percent| (n > 0).then(|| sorted[(nearest_rank(percent, n) - 1) as usize]);
                DurationStats {
                    status: *status,
                    rows: n,
                    median: at(50),
                    p95: at(95),
                }
            })
            .collect();
        TaskStats {
            request: *request,
            by_status,
            running,
            interrupted,
            durations,
        }
    }

    /// How many rows have `status`.
    pub fn rows_with(&self, status: TaskStatus) -> u64 {
        self.by_status
            .iter()
            .find(|(of, _)| *of == status)
            .map_or(0, |(_, rows)| *rows)
    }

    /// How many recent interrupted rows have `cause`.
    pub fn interrupted_by(&self, cause: InterruptCause) -> u64 {
        self.interrupted
            .iter()
            .find(|(of, _)| *of == cause)
            .map_or(0, |(_, rows)| *rows)
    }
}

fn count<K: PartialEq>(counts: &mut [(K, u64)], key: K) {
    if let Some((_, n)) = counts.iter_mut().find(|(of, _)| *of == key) {
        *n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::recovery_reason;
    use crate::worker::DeathCause;

    fn at_day(days: i64) -> Timestamp {
        chrono::DateTime::<Utc>::UNIX_EPOCH + Duration::days(days)
    }

    #[test]
    fn the_windows_end_now_and_never_start_before_1970() {
        let now = at_day(20_000);
        let request = StatsRequest {
            now,
            since: Duration::hours(2),
        };
        assert_eq!(request.window_start(), now - Duration::hours(2));
        assert_eq!(request.interrupted_start(), now - Duration::hours(24));
        let whole_history = StatsRequest {
            now,
            since: Duration::days(30_000),
        };
        assert_eq!(
            whole_history.window_start(),
            chrono::DateTime::<Utc>::UNIX_EPOCH
        );
        let early = StatsRequest {
            now: chrono::DateTime::<Utc>::UNIX_EPOCH + Duration::hours(1),
            since: Duration::hours(2),
        };
        assert_eq!(
            early.interrupted_start(),
            chrono::DateTime::<Utc>::UNIX_EPOCH
        );
    }

    #[test]
    fn only_the_sweeps_causes_are_recoveries_and_each_shows_its_name() {
        for cause in InterruptCause::ALL {
            let by_a_sweep = !matches!(
                cause,
                InterruptCause::Abandoned
                    | InterruptCause::WorkerStopped
                    | InterruptCause::FinishedInterrupted
                    | InterruptCause::Unrecorded
                    | InterruptCause::Other
            );
            assert_eq!(cause.is_recovery(), by_a_sweep, "{cause:?}");
            assert_eq!(cause.to_string(), cause.as_str());
        }
    }

    #[test]
    fn an_owners_oldest_row_is_as_old_as_the_time_since_it_started() {
        let owner = RunningOwner {
            worker: None,
            host: None,
            pid: None,
            state: None,
            rows: 1,
            oldest_started_at: Some(at_day(20_000)),
        };
        assert_eq!(
            owner.oldest_age(at_day(20_000) + Duration::minutes(90)),
            Some(Duration::minutes(90))
        );
    }

    #[test]
    fn the_figures_of_a_known_history_are_exactly_its_counts_windows_and_percentiles() {
        let now = at_day(20_000);
        let hours = Duration::hours;
        let owner = WorkerId::new_random();
        let row =
            |status: TaskStatus, worker: Option<WorkerId>, started_at: Timestamp| TaskRecord {
                id: crate::TaskId::new_random(),
                repo: "acme/widgets".into(),
                issue_number: 1,
                user: "alice".into(),
                agent: "fixer".into(),
                agent_type: "claude_sdk".into(),
                model: "claude-opus".into(),
                provider: "anthropic".into(),
                status,
                worker_id: worker,
                started_at,
                finished_at: None,
                input_tokens: None,
                output_tokens: None,
                cost_usd: None,
                turns: None,
                artifacts: None,
                interrupted_at: None,
                interrupt_reason: None,
                interrupted_by: None,
            };
        let ended = |status, started_at: Timestamp, ran: Duration| {
            let mut row = row(status, Some(owner), started_at);
            row.finished_at = Some(started_at + ran);
            row
        };
        let interrupted = |started_at: Timestamp, at: Timestamp, reason: &str| {
            let mut row = row(TaskStatus::Interrupted, Some(owner), started_at);
            row.interrupted_at = Some(at);
            row.interrupt_reason = Some(reason.into());
            row.interrupted_by = Some(owner);
            row
        };
        let rows = [
            row(TaskStatus::Running, Some(owner), now - hours(5)),
            row(TaskStatus::Running, Some(owner), now - hours(4)),
            row(TaskStatus::Running, None, now - hours(6)),
            // Within the windows: one hour long, interrupted two hours ago.
            interrupted(now - hours(3), now - hours(2), ABANDONED_REASON),
            // Before both windows, of another cause.
            interrupted(now - hours(40), now - hours(30), WORKER_STOPPED_REASON),
            ended(TaskStatus::Failure, now - hours(3), hours(2)),
            ended(TaskStatus::Success, now - hours(1), Duration::seconds(10)),
            ended(TaskStatus::Success, now - hours(1), Duration::seconds(1)),
            ended(TaskStatus::Success, now - hours(1), Duration::seconds(2)),
            ended(TaskStatus::Success, now - hours(50), Duration::seconds(100)),
        ];
        let workers = [WorkerRecord {
            id: owner,
            host: "vm-1".into(),
            pid: 41,
            process_start_marker: "boot:41".into(),
            host_identity: None,
            started_at: now - hours(7),
            heartbeat_at: now,
            state: WorkerState::Alive,
            stopped_at: None,
        }];
        let request = StatsRequest {
            now,
            since: hours(24),
        };
        let stats = TaskStats::from_records(&request, &rows, &workers);

        let by_status: Vec<u64> = TaskStatus::ALL
            .iter()
            .map(|status| stats.rows_with(*status))
            .collect();
        let expected: Vec<u64> = TaskStatus::ALL
            .iter()
            .map(|status| rows.iter().filter(|row| row.status == *status).count() as u64)
            .collect();
        assert_eq!(by_status, expected);
        assert_eq!(stats.rows_with(TaskStatus::Running), 3);
        assert_eq!(stats.rows_with(TaskStatus::Success), 4);

        for cause in InterruptCause::ALL {
            let recent = u64::from(cause == InterruptCause::Abandoned);
            assert_eq!(stats.interrupted_by(cause), recent, "{cause:?}");
        }

        assert_eq!(
            stats.running,
            vec![
                RunningOwner {
                    worker: None,
                    host: None,
                    pid: None,
                    state: None,
                    rows: 1,
                    oldest_started_at: Some(now - hours(6)),
                },
                RunningOwner {
                    worker: Some(owner),
                    host: Some("vm-1".into()),
                    pid: Some(41),
                    state: Some(WorkerState::Alive),
                    rows: 2,
                    oldest_started_at: Some(now - hours(5)),
                },
            ]
        );

        let durations = |status| {
            *stats
                .durations
                .iter()
                .find(|durations| durations.status == status)
                .expect("every final status")
        };
        assert_eq!(
            durations(TaskStatus::Success),
            DurationStats {
                status: TaskStatus::Success,
                rows: 3,
                median: Some(Duration::seconds(2)),
                p95: Some(Duration::seconds(10)),
            }
        );
        assert_eq!(durations(TaskStatus::Failure).median, Some(hours(2)));
        assert_eq!(durations(TaskStatus::Interrupted).rows, 1);
        assert_eq!(durations(TaskStatus::Interrupted).p95, Some(hours(1)));
        assert_eq!(
            durations(TaskStatus::Cancelled),
            DurationStats {
                status: TaskStatus::Cancelled,
                rows: 0,
                median: None,
                p95: None,
            }
        );
        assert!(stats.durations.iter().all(|d| d.status.is_final()));
    }

    fn sweep(cause: DeathCause, worker: bool) -> String {
        recovery_reason(worker.then(WorkerId::new_random), &cause)
    }

    #[test]
    fn every_reason_a_writer_stores_has_its_own_cause() {
        let at = chrono::DateTime::<Utc>::UNIX_EPOCH;
        for worker in [true, false] {
            for (cause, expected) in [
                (
                    DeathCause::ProcessGone {
                        host: "dev".into(),
                        pid: 7,
                    },
                    InterruptCause::ProcessGone,
                ),
                (
                    DeathCause::PidReused {
                        host: "dev".into(),
                        pid: 7,
                    },
                    InterruptCause::PidReused,
                ),
                (
                    DeathCause::LeaseExpired {
                        host: "gpu-7".into(),
                        last_heartbeat: at,
                        lease: Duration::seconds(15),
                    },
                    InterruptCause::LeaseExpired,
                ),
                (
                    DeathCause::LockReleased {
                        host: "pod".into(),
                        pid: 1,
                        last_heartbeat: at,
                    },
                    InterruptCause::LockReleased,
                ),
                (DeathCause::Deregistered, InterruptCause::Deregistered),
                (DeathCause::DeclaredDead, InterruptCause::DeclaredDead),
                (DeathCause::UnknownWorker, InterruptCause::NeverRegistered),
            ] {
                let reason = sweep(cause, worker);
                assert_eq!(
                    InterruptCause::classify(Some(&reason), false),
                    expected,
                    "{reason}"
                );
                // The same text written by the row's own worker is the
                // application's reason, not a sweep's.
                assert_eq!(
                    InterruptCause::classify(Some(&reason), true),
                    InterruptCause::FinishedInterrupted
                );
            }
        }
        assert_eq!(
            InterruptCause::classify(Some(ABANDONED_REASON), true),
            InterruptCause::Abandoned
        );
        assert_eq!(
            InterruptCause::classify(Some(WORKER_STOPPED_REASON), true),
            InterruptCause::WorkerStopped
        );
        assert_eq!(
            InterruptCause::classify(Some("worker received SIGTERM"), true),
            InterruptCause::FinishedInterrupted
        );
        assert_eq!(
            InterruptCause::classify(None, true),
            InterruptCause::Unrecorded
        );
        assert_eq!(
            InterruptCause::classify(None, false),
            InterruptCause::Unrecorded
        );
        assert_eq!(
            InterruptCause::classify(Some(ABANDONED_REASON), false),
            InterruptCause::Other
        );
        assert_eq!(
            InterruptCause::classify(Some("recovered at boot: the cat ate it"), false),
            InterruptCause::Other
        );
    }

    #[test]
    fn a_host_name_cannot_change_the_cause() {
        for host in [
            "pid 7 on x",
            "no heartbeat from y",
            ") (worker was already declared dead",
            "日本",
        ] {
            let reason = sweep(
                DeathCause::LockReleased {
                    host: host.into(),
                    pid: 3,
                    last_heartbeat: chrono::DateTime::<Utc>::UNIX_EPOCH,
                },
                true,
            );
            assert_eq!(
                InterruptCause::classify(Some(&reason), false),
                InterruptCause::LockReleased,
                "{reason}"
            );
        }
    }

    #[test]
    fn causes_round_trip_through_their_names() {
        for cause in InterruptCause::ALL {
            assert_eq!(cause.as_str().parse::<InterruptCause>(), Ok(cause));
        }
        assert!("nope".parse::<InterruptCause>().is_err());
    }

    #[test]
    fn nearest_rank_is_the_smallest_rank_covering_the_percentile() {
        assert_eq!(nearest_rank(50, 1), 1);
        assert_eq!(nearest_rank(50, 2), 1);
        assert_eq!(nearest_rank(50, 3), 2);
        assert_eq!(nearest_rank(95, 1), 1);
        assert_eq!(nearest_rank(95, 20), 19);
        assert_eq!(nearest_rank(95, 21), 20);
        assert_eq!(nearest_rank(95, 100), 95);
        assert_eq!(nearest_rank(95, 101), 96);
    }

    #[test]
    fn durations_round_to_the_nearest_millisecond() {
        assert_eq!(
            round_to_millis(Duration::microseconds(1_499)),
            Duration::milliseconds(1)
        );
        assert_eq!(
            round_to_millis(Duration::microseconds(1_500)),
            Duration::milliseconds(2)
        );
        assert_eq!(
            round_to_millis(Duration::microseconds(-1_500)),
            Duration::milliseconds(-2)
        );
    }

    #[test]
    fn a_window_reaching_before_1970_is_the_whole_history() {
        let request = StatsRequest {
            now: chrono::DateTime::<Utc>::UNIX_EPOCH + Duration::days(1),
            since: Duration::days(365),
        };
        assert_eq!(request.window_start(), chrono::DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(
            request.interrupted_start(),
            chrono::DateTime::<Utc>::UNIX_EPOCH
        );
    }
}
