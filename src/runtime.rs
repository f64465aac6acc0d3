//! The worker a server holds: [`Worker`].
//!
//! One object registers the worker, sweeps dead workers' rows at boot, keeps
//! the heartbeat going, sweeps again every `sweep_interval`, interrupts the
//! tasks whose handle was abandoned, and on [`Worker::stop`] interrupts what
//! is still in flight and deregisters. Every task starts through it.
//!
//! Nothing it does in the background is swallowed: each failure is an
//! [`WorkerEvent::UpkeepFailed`] given to the hook registered with
//! [`WorkerBuilder::on_event`], and [`Worker::health`] reads
//! [`WorkerHealth::Degraded`] until the same upkeep succeeds again.
//!
//! # Store outages
//!
//! A transient storage failure ([`StorageError::is_transient`]: connection
//! lost, server restarting or failing over, disk full, busy) never stops a
//! worker and never loses an outcome:
//! - [`Worker::finish`] that hits one keeps the task and its outcome
//!   ([`FinishReceipt::Queued`]) and the background thread retries the
//!   UPDATE with capped exponential backoff ([`WorkerBuilder::retry_backoff`])
//!   until it lands ([`WorkerEvent::OutcomeWritten`]); the row keeps the
//!   time the work ended. [`Worker::pending_outcomes`] lists what waits.
//!   A permanent failure hands the task and outcome back, as
//!   [`Task::finish`] does.
//! - Heartbeats, sweeps and abandoned tasks that fail are retried with the
//!   same backoff (capped at the heartbeat interval); the store reconnects
//!   by itself.
//! - [`Worker::health`] reads [`WorkerHealth::Degraded`] with the reason
//!   meanwhile, and `Healthy` again once everything landed.
//! - [`Worker::stop`] writes queued outcomes and interrupts what is still in
//!   flight while the store answers, retrying until the stop deadline
//!   ([`WorkerBuilder::stop_deadline`], 10 s by default); what it could not
//!   write by then is named in [`StopError::unwritten`] and stays `running`
//!   for the next sweep.
//!
//! Detection bounds (how long a `running` row can outlive its task; the
//! full table is in docs/operations.md):
//! - a handle dropped without a finish: at once (the drop wakes the
//!   worker), and at the latest at the next tick, within one
//!   `heartbeat_interval`;
//! - a dead worker in the sweeper's own boot and PID namespace: within one
//!   `sweep_interval` of any live worker (the pid probe);
//! - any other dead worker (another PID namespace, container or machine):
//!   its lock is free at once, so `grace + sweep_interval` after its last
//!   heartbeat (on Postgres, a sweeper whose connection or database is
//!   younger than the grace waits until it is a grace old);
//! - a worker registered before liveness locks: `lease + sweep_interval`.
//!
//! A worker that holds its lock is never declared dead: one silent past the
//! lease (stopped, hung) is reported as stalled
//! ([`WorkerEvent::StalledWorker`], [`Worker::stalled_neighbours`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::Duration;
use tasktrail_core::backend::{
    NoticingJudge, PolicyJudge, RecoveryRequest, ReportClaim, SweepMode,
};
use tasktrail_core::{
    now_after_epoch, Clock, ClockBeforeEpochError, FinishError, FinishRefusal, Finished,
    HostIdentity, InterruptReason, Liveness, LivenessPolicy, NoticedOwner, Outcome, ProcessProbe,
    Queued, RecoveredTask, RegisteredWorker, Running, SessionId, StartError, Storage, StorageError,
    SystemClock, Task, TaskId, TaskStatus, Timestamp, WorkerId, WorkerRegistration,
};

use crate::host::{current_registration, probe_identity, HostError, ProcfsProbe};

/// The defaults of a [`Worker`].
pub mod defaults {
    use std::time::Duration;

    /// How often a worker heartbeats (and interrupts abandoned tasks).
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
    /// How often a live worker sweeps other workers' dead rows.
    pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
    /// How old the heartbeat of a worker whose lock cannot be checked may be
    /// before it counts as dead, and of one holding its lock before it is
    /// reported stalled: three heartbeat intervals.
    pub const LEASE: Duration = Duration::from_secs(15);
    /// How long a free lock must stay free, with the owner silent, before it
    /// proves death: three heartbeat intervals (a live worker takes its lock
    /// back at its next heartbeat after a dropped connection).
    pub const GRACE: Duration = Duration::from_secs(15);
    /// The first pause before a failed write is retried; it doubles at each
    /// failure up to [`RETRY_BACKOFF_CAP`].
    pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(100);
    /// The longest pause between two attempts of a queued outcome (upkeep
    /// retries are also capped at the heartbeat interval).
    pub const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(2);
    /// How long [`Worker::stop`](super::Worker::stop) keeps retrying writes
    /// the store refuses for now before it gives up and names them.
    pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
}

/// The reason written on rows a stopping worker still had in flight.
pub const STOPPED_REASON: &str = "worker stopped before the task finished";

/// Which part of a worker's own upkeep failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Upkeep {
    /// Writing the heartbeat.
    Heartbeat,
    /// The recovery sweep of dead workers' rows (at boot or periodic).
    Sweep,
    /// Interrupting the tasks whose handle was abandoned.
    AbandonedTasks,
    /// Interrupting in-flight tasks and deregistering on stop.
    Stop,
    /// Writing the outcomes queued by a finish that hit a transient failure.
    QueuedOutcomes,
}

impl fmt::Display for Upkeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Upkeep::Heartbeat => "heartbeat",
            Upkeep::Sweep => "recovery sweep",
            Upkeep::AbandonedTasks => "interrupting abandoned tasks",
            Upkeep::Stop => "stop",
            Upkeep::QueuedOutcomes => "writing queued outcomes",
        })
    }
}

/// What a worker tells the hook registered with [`WorkerBuilder::on_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// A task was marked `interrupted` and is reported here exactly once:
    /// by the boot sweep, a periodic sweep, or because its handle was
    /// abandoned. Log [`RecoveredTask::hint`], the `[recovery]` line.
    Recovered(Box<RecoveredTask>),
    /// A storage call of the worker's upkeep failed; it is retried at the
    /// next tick, and [`Worker::health`] reads degraded meanwhile.
    UpkeepFailed {
        /// What failed.
        upkeep: Upkeep,
        /// Why.
        error: StorageError,
    },
    /// Another worker's sweep declared this worker dead: its rows are no
    /// longer its own, and it must stop.
    DeclaredDead,
    /// A sweep found another worker holding its lock but silent longer than
    /// the lease: stopped or hung. Its rows are left alone; log a warning.
    /// (Given at every sweep that finds it so.)
    StalledWorker(Box<NoticedOwner>),
    /// A sweep found another worker's lock free, but could not prove it dead
    /// yet (see [`tasktrail_core::Unproven`]); its rows are left alone until
    /// a later sweep can.
    DeathNotYetProvable(Box<NoticedOwner>),
    /// This worker itself went longer than the lease without a heartbeat
    /// (its process was stopped or hung, or the machine was suspended):
    /// other workers saw it stalled meanwhile. Its lock kept its tasks.
    ResumedAfterStall {
        /// How long it went without a heartbeat, on its own clock.
        silent_for: Duration,
    },
    /// A finish hit a transient storage failure: the worker keeps the
    /// outcome and retries its UPDATE until it lands
    /// ([`WorkerEvent::OutcomeWritten`]).
    OutcomeQueued {
        /// The task and its outcome.
        pending: PendingOutcome,
        /// Why the first attempt failed.
        error: StorageError,
    },
    /// A queued outcome landed: the row now holds it.
    OutcomeWritten {
        /// The task and its outcome (`attempts` counts every try, the first
        /// included).
        pending: PendingOutcome,
        /// How long it waited, by the worker's clock.
        waited: std::time::Duration,
    },
    /// A queued outcome was refused when it was retried: the row is no
    /// longer this worker's running task (a sweep declared the worker dead
    /// meanwhile). Nothing was written.
    OutcomeRefused {
        /// The task and the outcome that was not written.
        pending: PendingOutcome,
        /// What the row is now.
        refusal: FinishRefusal,
    },
}

/// An outcome the worker holds because its UPDATE hit a transient storage
/// failure; it is retried until it lands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingOutcome {
    /// The task.
    pub id: TaskId,
    /// The status the outcome writes.
    pub status: TaskStatus,
    /// When the work ended (written as `finished_at` / `interrupted_at`).
    pub finished_at: Timestamp,
    /// How many UPDATEs were tried so far.
    pub attempts: u32,
}

/// What [`Worker::finish`] did with an outcome.
#[derive(Debug)]
#[must_use]
pub enum FinishReceipt {
    /// The UPDATE committed.
    Written(Box<Task<Finished>>),
    /// The store failed transiently: the worker keeps the task and the
    /// outcome and retries until the UPDATE lands
    /// ([`WorkerEvent::OutcomeWritten`]), or names it at stop
    /// ([`StopError::unwritten`]).
    Queued(PendingOutcome),
}

impl FinishReceipt {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        match self {
            FinishReceipt::Written(task) => task.id(),
            FinishReceipt::Queued(pending) => pending.id,
        }
    }

    /// The finished task, when the UPDATE committed at once.
    pub fn written(self) -> Option<Task<Finished>> {
        match self {
            FinishReceipt::Written(task) => Some(*task),
            FinishReceipt::Queued(_) => None,
        }
    }
}

/// An outcome a stopping worker could not write before its stop deadline.
/// Its row stays `running`; the next sweep recovers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnwrittenOutcome {
    /// The task.
    pub id: TaskId,
    /// The status that was not written (`interrupted` for a task still in
    /// flight at stop).
    pub status: TaskStatus,
}

/// A stop that could not write everything before its deadline.
#[derive(Debug)]
#[non_exhaustive]
pub struct StopError {
    /// The last storage failure.
    pub error: StorageError,
    /// Each task whose outcome was not written: its row stays `running`
    /// and the next sweep recovers it. Empty when only the deregistration
    /// failed.
    pub unwritten: Vec<UnwrittenOutcome>,
    /// What the stop did write.
    pub report: Box<StopReport>,
}

impl fmt::Display for StopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unwritten.is_empty() {
            write!(f, "the worker could not deregister: {}", self.error)
        } else {
            write!(
                f,
                "{} outcome(s) could not be written before the stop deadline (their rows stay running for the next sweep): {}",
                self.unwritten.len(),
                self.error
            )
        }
    }
}

impl std::error::Error for StopError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// How a worker is doing, as [`Worker::health`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerHealth {
    /// Every upkeep succeeded at its last attempt.
    Healthy,
    /// Some upkeep failed at its last attempt; it is being retried.
    Degraded {
        /// What failed and why, one clause per failing upkeep.
        reason: String,
        /// When the oldest of those failures began.
        since: Timestamp,
    },
    /// Declared dead by another worker's sweep: it must stop.
    DeclaredDead,
    /// Stopped.
    Stopped,
}

/// A worker that could not boot. Nothing is left registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// An option is out of range.
    #[error("invalid worker option: {detail}")]
    InvalidOption {
        /// Which, and why.
        detail: String,
    },
    /// This process could not describe itself for its registration.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The `workers` row could not be written.
    #[error("could not register the worker: {0}")]
    Register(#[source] StorageError),
    /// The background thread could not be started (the worker was
    /// deregistered again).
    #[error("could not start the worker's background thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The worker's clock reads before 1970: nothing was registered. (A
    /// clock that steps back, or before 1970, under a running worker is
    /// ridden out: see [`Worker::tick`].)
    #[error(transparent)]
    ClockBeforeEpoch(#[from] ClockBeforeEpochError),
}

type EventHook = Box<dyn Fn(&WorkerEvent) + Send + Sync>;
type RecoveryReporter = Box<dyn Fn(&RecoveredTask) -> std::io::Result<()> + Send + Sync>;

/// Builds a [`Worker`]: `Worker::builder(storage)`, options, then
/// [`boot`](WorkerBuilder::boot).
pub struct WorkerBuilder {
    storage: Arc<dyn Storage>,
    heartbeat_interval: std::time::Duration,
    sweep_interval: std::time::Duration,
    lease: std::time::Duration,
    grace: std::time::Duration,
    clock: Arc<dyn Clock>,
    probe: Arc<dyn ProcessProbe>,
    probe_identity: Option<HostIdentity>,
    registration: Option<WorkerRegistration>,
    hook: Option<EventHook>,
    reporter: Option<RecoveryReporter>,
    background: bool,
    retry_first: std::time::Duration,
    retry_cap: std::time::Duration,
    stop_deadline: std::time::Duration,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("sweep_interval", &self.sweep_interval)
            .field("lease", &self.lease)
            .field("grace", &self.grace)
            .field("probe_identity", &self.probe_identity)
            .field("registration", &self.registration)
            .field("background", &self.background)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// How often the worker heartbeats and handles abandoned tasks.
    /// Default [`defaults::HEARTBEAT_INTERVAL`].
    pub fn heartbeat_interval(mut self, interval: std::time::Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How often the worker sweeps other workers' dead rows. Default
    /// [`defaults::SWEEP_INTERVAL`].
    pub fn sweep_interval(mut self, interval: std::time::Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// How long a worker whose lock cannot be checked may stay silent before
    /// it counts as dead, and one holding its lock before it is reported
    /// stalled. Default [`defaults::LEASE`]; must exceed the heartbeat
    /// interval.
    pub fn lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a worker's lock must stay free, with the worker silent,
    /// before it proves death. Default [`defaults::GRACE`]; must exceed the
    /// heartbeat interval.
    pub fn grace(mut self, grace: std::time::Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The boot and PID namespace whose pids the probe sees (default: this
    /// process's, [`probe_identity`], when `/proc` is provably its own).
    /// Only workers registered with exactly this identity are probed.
    pub fn probe_identity(mut self, identity: Option<HostIdentity>) -> Self {
        self.probe_identity = identity;
        self
    }

    /// The clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How processes on this host are probed (default
    /// [`ProcfsProbe`]).
    pub fn probe(mut self, probe: Arc<dyn ProcessProbe>) -> Self {
        self.probe = probe;
        self
    }

    /// What the worker registers (default: this process,
    /// [`current_registration`]).
    pub fn registration(mut self, registration: WorkerRegistration) -> Self {
        self.registration = Some(registration);
        self
    }

    /// Called with every [`WorkerEvent`], from the thread that caused it
    /// (the caller's at boot and stop, the background thread otherwise).
    /// Keep it quick: log and return.
    pub fn on_event(mut self, hook: impl Fn(&WorkerEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Delivers each recovered task's `[recovery]` report (prints
    /// [`RecoveredTask::hint`], sends it on): the store confirms a report
    /// only once this returns `Ok`. A report that could not be delivered
    /// stays owed, and this worker delivers it again at its next sweep; a
    /// report whose worker died before confirming it is taken over by the
    /// next sweep of any worker that finds it dead. Without a reporter a
    /// report counts as delivered once its `tasktrail::recovery` tracing
    /// event and its [`WorkerEvent::Recovered`] are out.
    pub fn recovery_reporter(
        mut self,
        reporter: impl Fn(&RecoveredTask) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.reporter = Some(Box::new(reporter));
        self
    }

    /// The backoff of failed writes: the first retry after `first`, each
    /// next pause doubled, at most `cap` (defaults
    /// [`defaults::RETRY_BACKOFF_FIRST`], [`defaults::RETRY_BACKOFF_CAP`]).
    /// Queued outcomes use it as is; heartbeats, sweeps and abandoned tasks
    /// that failed use it capped at the heartbeat interval.
    pub fn retry_backoff(mut self, first: std::time::Duration, cap: std::time::Duration) -> Self {
        self.retry_first = first;
        self.retry_cap = cap;
        self
    }

    /// How long [`Worker::stop`] keeps retrying the writes a store refuses
    /// for now (queued outcomes, interrupting what is in flight,
    /// deregistering) before it names what it could not write. Default
    /// [`defaults::STOP_DEADLINE`]; zero makes one attempt. Measured on the
    /// monotonic clock (it bounds how long a process takes to exit). A write
    /// already under way at the deadline ends by the store's own timeout
    /// (the Postgres connection timeout, the SQLite busy timeout).
    pub fn stop_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.stop_deadline = deadline;
        self
    }

    /// Runs no background thread: the caller calls [`Worker::tick`] itself
    /// (tests with a manual clock, or a runtime with its own scheduler).
    pub fn without_background_thread(mut self) -> Self {
        self.background = false;
        self
    }

    /// Registers the worker, sweeps dead workers' rows (each recovered task
    /// is a [`WorkerEvent::Recovered`] before this returns), and starts the
    /// background thread. A failed boot sweep does not fail the boot: it is
    /// reported, the worker reads degraded, and the sweep is retried at
    /// every tick until it succeeds.
    pub fn boot(self) -> Result<Worker, BootError> {
        let heartbeat_interval = positive("heartbeat interval", self.heartbeat_interval)?;
        let sweep_interval = positive("sweep interval", self.sweep_interval)?;
        let lease = positive("lease", self.lease)?;
        let retry_first = positive("first retry pause", self.retry_first)?;
        let retry_cap = positive("longest retry pause", self.retry_cap)?;
        if retry_cap < retry_first {
            return Err(BootError::InvalidOption {
                detail: format!(
                    "the longest retry pause ({:?}) must not be shorter than the first ({:?})",
                    self.retry_cap, self.retry_first
                ),
            });
        }
        let grace = positive("grace", self.grace)?;
        for (name, value, given) in [("lease", lease, self.lease), ("grace", grace, self.grace)] {
            if value <= heartbeat_interval {
                return Err(BootError::InvalidOption {
                    detail: format!(
                        "the {name} ({given:?}) must be longer than the heartbeat interval ({:?})",
                        self.heartbeat_interval
                    ),
                });
            }
        }
        now_after_epoch(self.clock.as_ref())?;
        let registration = match self.registration {
            Some(registration) => registration,
            None => current_registration(self.clock.as_ref())?,
        };
        let policy = LivenessPolicy {
            local_identity: self.probe_identity,
            lease,
            grace,
        };
        let registered = RegisteredWorker::register(
            self.storage.as_ref(),
            registration,
            Arc::clone(&self.clock),
        )
        .map_err(BootError::Register)?;
        let wakeup = Arc::new(Wakeup::default());
        let waker = Arc::clone(&wakeup);
        registered.on_abandoned(move || waker.wake());
        let now = self.clock.now();
        let shared = Arc::new(Shared {
            storage: self.storage,
            registered,
            clock: self.clock,
            probe: self.probe,
            policy,
            heartbeat_interval,
            sweep_interval,
            hook: self.hook,
            reporter: self.reporter,
            reporting: Mutex::new(()),
            declared_dead: AtomicBool::new(false),
            backoff: Backoff {
                first: retry_first,
                cap: retry_cap,
            },
            upkeep: Mutex::new(UpkeepState {
                last_heartbeat: now,
                next_heartbeat: now + heartbeat_interval,
                heartbeat_failures: 0,
                last_tick: now,
                last_sweep: None,
                next_sweep: now,
                sweep_failures: 0,
                failures: Vec::new(),
                stopped: false,
                stalled_neighbours: Vec::new(),
            }),
            queued: Mutex::new(QueuedOutcomes::default()),
            running: crate::metrics::RunningGauge::default(),
        });
        let recovered_at_boot = shared.sweep_now();
        let mut worker = Worker {
            shared,
            wakeup,
            thread: None,
            recovered_at_boot,
            stopped: false,
            stop_deadline: self.stop_deadline,
        };
        if self.background {
            let shared = Arc::clone(&worker.shared);
            let wakeup = Arc::clone(&worker.wakeup);
            let spawned = std::thread::Builder::new()
                .name(format!("tasktrail-worker-{}", worker.id()))
                .spawn(move || background(&shared, &wakeup));
            match spawned {
                Ok(thread) => worker.thread = Some(thread),
                Err(error) => {
                    let _ = worker.shutdown(std::time::Duration::ZERO);
                    return Err(BootError::Thread(error));
                }
            }
        }
        Ok(worker)
    }
}

fn positive(name: &str, value: std::time::Duration) -> Result<Duration, BootError> {
    match Duration::from_std(value) {
        Ok(duration) if duration > Duration::zero() => Ok(duration),
        _ => Err(BootError::InvalidOption {
            detail: format!("the {name} must be more than zero and at most ~292 years"),
        }),
    }
}

/// What a [`Worker::stop`] did.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Tasks still in flight at stop, now `interrupted` with
    /// [`STOPPED_REASON`].
    pub interrupted: Vec<TaskId>,
    /// Abandoned tasks handled at stop (also given to the hook).
    pub recovered: Vec<RecoveredTask>,
    /// Queued outcomes written at stop (each also a
    /// [`WorkerEvent::OutcomeWritten`]).
    pub written: Vec<PendingOutcome>,
}

/// A running worker: the one object a server holds. Not `Clone`; share it
/// behind an `Arc`. See the [module docs](self) for what it does and the
/// detection bounds.
pub struct Worker {
    shared: Arc<Shared>,
    wakeup: Arc<Wakeup>,
    thread: Option<JoinHandle<()>>,
    recovered_at_boot: Vec<RecoveredTask>,
    stopped: bool,
    stop_deadline: std::time::Duration,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("registration", self.shared.registered.registration())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    registered: RegisteredWorker,
    clock: Arc<dyn Clock>,
    probe: Arc<dyn ProcessProbe>,
    policy: LivenessPolicy,
    heartbeat_interval: Duration,
    sweep_interval: Duration,
    hook: Option<EventHook>,
    reporter: Option<RecoveryReporter>,
    /// Held across a sweep, its claim and their reports: one at a time, so
    /// a report is delivered once.
    reporting: Mutex<()>,
    declared_dead: AtomicBool,
    backoff: Backoff,
    upkeep: Mutex<UpkeepState>,
    queued: Mutex<QueuedOutcomes>,
    running: crate::metrics::RunningGauge,
}

/// Whether something scheduled for `due`, at most `longest` after the time
/// it was scheduled at, is due at `now`. Further ahead than `longest`, the
/// clock stepped back since (NTP, an operator, a virtual machine restored
/// from a snapshot, a clock set before 1970): it is due now, not once the
/// clock has caught up again (an hour without heartbeats, sweeps or retries
/// after a step back of an hour). Its next time is then scheduled from the
/// new `now`.
fn is_due(now: Timestamp, due: Timestamp, longest: Duration) -> bool {
    now >= due || due - now > longest
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    first: Duration,
    cap: Duration,
}

impl Backoff {
    /// The longest pause [`pause`](Self::pause) gives.
    fn longest(self) -> Duration {
        self.cap.max(Duration::milliseconds(1))
    }

    /// The pause after the `failures`-th consecutive failure (1-based),
    /// at most `cap`.
    fn pause(self, failures: u32, cap: Duration) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let pause = self
            .first
            .checked_mul(1 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap);
        pause.min(cap).max(Duration::milliseconds(1))
    }
}

struct UpkeepState {
    /// The last heartbeat that succeeded.
    last_heartbeat: Timestamp,
    /// When the next heartbeat attempt is due.
    next_heartbeat: Timestamp,
    heartbeat_failures: u32,
    /// When the last tick ran (a gap longer than the lease: the process was
    /// stopped or hung).
    last_tick: Timestamp,
    /// `None` until the boot sweep succeeded.
    last_sweep: Option<Timestamp>,
    /// When the next sweep attempt is due.
    next_sweep: Timestamp,
    sweep_failures: u32,
    /// The upkeeps whose last attempt failed: what, why, since when.
    failures: Vec<(Upkeep, String, Timestamp)>,
    stopped: bool,
    /// The stalled workers the last successful sweep found.
    stalled_neighbours: Vec<NoticedOwner>,
}

/// One outcome a finish could not write yet, with its task handle (whose
/// in-flight ticket keeps the task counted as in flight).
struct QueuedFinish {
    task: Task<Running>,
    outcome: Outcome,
    pending: PendingOutcome,
    next_attempt: Timestamp,
}

#[derive(Default)]
struct QueuedOutcomes {
    /// Waiting for their next attempt.
    waiting: Vec<QueuedFinish>,
    /// Taken out for an attempt right now (listed by
    /// [`Worker::pending_outcomes`] all the same).
    attempting: Vec<PendingOutcome>,
}

#[derive(Default)]
struct Wakeup {
    state: Mutex<WakeState>,
    signal: Condvar,
}

#[derive(Default)]
struct WakeState {
    woken: bool,
    stop: bool,
}

impl Wakeup {
    fn lock(&self) -> MutexGuard<'_, WakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        self.lock().woken = true;
        self.signal.notify_all();
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.signal.notify_all();
    }
}

/// The background thread: a tick whenever something is due or a handle was
/// abandoned, until stopped.
fn background(shared: &Shared, wakeup: &Wakeup) {
    loop {
        let wait = shared.until_next_due();
        {
            let mut state = wakeup.lock();
            if !state.stop && !state.woken {
                state = wakeup
                    .signal
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if state.stop {
                return;
            }
            state.woken = false;
        }
        shared.tick();
        if shared.declared_dead.load(Ordering::SeqCst) {
            return;
        }
    }
}

impl Shared {
    fn emit(&self, event: WorkerEvent) {
        crate::events::worker_event(self.registered.id(), &event);
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }

    fn upkeep(&self) -> MutexGuard<'_, UpkeepState> {
        self.upkeep.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queued(&self) -> MutexGuard<'_, QueuedOutcomes> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn until_next_due(&self) -> std::time::Duration {
        let now = self.clock.now();
        let mut due = {
            let upkeep = self.upkeep();
            upkeep.next_heartbeat.min(upkeep.next_sweep)
        };
        if let Some(next) = self.queued().waiting.iter().map(|q| q.next_attempt).min() {
            due = due.min(next);
        }
        (due - now).to_std().unwrap_or_default().clamp(
            std::time::Duration::from_millis(1),
            self.heartbeat_interval
                .to_std()
                .unwrap_or(defaults::HEARTBEAT_INTERVAL),
        )
    }

    fn record(&self, upkeep: Upkeep, result: Result<(), StorageError>) {
        let now = self.clock.now();
        match result {
            Ok(()) => self.upkeep().failures.retain(|(u, _, _)| *u != upkeep),
            Err(StorageError::WorkerNotAlive { .. })
                if matches!(upkeep, Upkeep::Heartbeat | Upkeep::Sweep) =>
            {
                if !self.declared_dead.swap(true, Ordering::SeqCst) {
                    self.emit(WorkerEvent::DeclaredDead);
                }
            }
            Err(error) => {
                {
                    let mut state = self.upkeep();
                    let reason = format!("{upkeep} failed: {error}");
                    match state.failures.iter_mut().find(|(u, _, _)| *u == upkeep) {
                        Some(failure) => failure.1 = reason,
                        None => state.failures.push((upkeep, reason, now)),
                    }
                }
                self.emit(WorkerEvent::UpkeepFailed { upkeep, error });
            }
        }
    }

    /// The pause before the next attempt of an upkeep after its
    /// `failures`-th consecutive failure: the backoff, capped at the
    /// heartbeat interval.
    fn upkeep_pause(&self, failures: u32) -> Duration {
        self.backoff.pause(failures, self.heartbeat_interval)
    }

    /// Runs what is due at the clock's `now`.
    fn tick(&self) {
        if self.declared_dead.load(Ordering::SeqCst) || self.upkeep().stopped {
            return;
        }
        // The heartbeat first: after a store outage it reconnects the
        // store (on Postgres it takes the worker's lock back) before
        // anything else is written.
        let now = self.clock.now();
        let since_last_tick = {
            let mut upkeep = self.upkeep();
            let gap = now - upkeep.last_tick;
            upkeep.last_tick = now;
            gap
        };
        if since_last_tick > self.policy.lease {
            // Ticks come at least every heartbeat interval: the process did
            // not run meanwhile (SIGSTOP, a hang, a suspended machine).
            self.emit(WorkerEvent::ResumedAfterStall {
                silent_for: since_last_tick,
            });
        }
        let heartbeat_due = is_due(now, self.upkeep().next_heartbeat, self.heartbeat_interval);
        if heartbeat_due {
            let beat = self.registered.heartbeat(self.storage.as_ref());
            {
                let mut upkeep = self.upkeep();
                if beat.is_ok() {
                    upkeep.last_heartbeat = now;
                    upkeep.heartbeat_failures = 0;
                    upkeep.next_heartbeat = now + self.heartbeat_interval;
                } else {
                    upkeep.heartbeat_failures = upkeep.heartbeat_failures.saturating_add(1);
                    upkeep.next_heartbeat = now + self.upkeep_pause(upkeep.heartbeat_failures);
                }
            }
            self.record(Upkeep::Heartbeat, beat);
        }
        if self.declared_dead.load(Ordering::SeqCst) {
            return;
        }
        if let (_, Some(error)) = self.write_queued_outcomes(false) {
            self.emit(WorkerEvent::UpkeepFailed {
                upkeep: Upkeep::QueuedOutcomes,
                error,
            });
        }
        self.interrupt_abandoned();
        let sweep_due = is_due(
            self.clock.now(),
            self.upkeep().next_sweep,
            self.sweep_interval.max(self.heartbeat_interval),
        );
        if sweep_due && !self.declared_dead.load(Ordering::SeqCst) {
            self.sweep_now();
        }
        self.running.sync(&self.registered);
    }

    /// Queues a finish that hit a transient failure.
    fn queue_finish(
        &self,
        task: Task<Running>,
        outcome: Outcome,
        finished_at: Timestamp,
        error: StorageError,
    ) -> PendingOutcome {
        let pending = PendingOutcome {
            id: task.id(),
            status: outcome.status(),
            finished_at,
            attempts: 1,
        };
        let next_attempt = self.clock.now() + self.backoff.pause(1, self.backoff.cap);
        self.queued().waiting.push(QueuedFinish {
            task,
            outcome,
            pending: pending.clone(),
            next_attempt,
        });
        self.record_queue_failure(&error);
        self.emit(WorkerEvent::OutcomeQueued {
            pending: pending.clone(),
            error,
        });
        pending
    }

    /// Health reads degraded while outcomes wait: keeps the oldest `since`.
    fn record_queue_failure(&self, error: &StorageError) {
        let now = self.clock.now();
        let waiting = {
            let queued = self.queued();
            queued.waiting.len() + queued.attempting.len()
        };
        let reason = format!(
            "{} failed ({waiting} outcome(s) waiting): {error}",
            Upkeep::QueuedOutcomes
        );
        let mut state = self.upkeep();
        match state
            .failures
            .iter_mut()
            .find(|(u, _, _)| *u == Upkeep::QueuedOutcomes)
        {
            Some(failure) => failure.1 = reason,
            None => state.failures.push((Upkeep::QueuedOutcomes, reason, now)),
        }
    }

    /// Tries the UPDATE of every queued outcome that is due (`all`: every
    /// one, due or not). Each that lands is a [`WorkerEvent::OutcomeWritten`]
    /// and is returned; each refused is a [`WorkerEvent::OutcomeRefused`];
    /// each that fails again waits a longer pause. Returns the last failure.
    fn write_queued_outcomes(&self, all: bool) -> (Vec<PendingOutcome>, Option<StorageError>) {
        let now = self.clock.now();
        let due: Vec<QueuedFinish> = {
            let mut queued = self.queued();
            let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut queued.waiting)
                .into_iter()
                .partition(|q| all || is_due(now, q.next_attempt, self.backoff.longest()));
            queued.waiting = waiting;
            queued.attempting = due.iter().map(|q| q.pending.clone()).collect();
            due
        };
        if due.is_empty() {
            return (Vec::new(), None);
        }
        let mut written = Vec::new();
        let mut last_error = None;
        let mut retry = Vec::new();
        for mut queued in due {
            if last_error.is_some() {
                // The store just failed: try the rest at the next round.
                retry.push(queued);
                continue;
            }
            queued.pending.attempts = queued.pending.attempts.saturating_add(1);
            let QueuedFinish {
                task,
                outcome,
                mut pending,
                ..
            } = queued;
            let started_at = task.started_at();
            match task.finish_at(outcome, pending.finished_at, self.storage.as_ref()) {
                Ok(_) => {
                    crate::metrics::finished(pending.status, started_at, pending.finished_at);
                    let waited = (self.clock.now() - pending.finished_at)
                        .to_std()
                        .unwrap_or_default();
                    written.push(pending.clone());
                    self.emit(WorkerEvent::OutcomeWritten { pending, waited });
                }
                // An earlier attempt committed and only its answer was lost
                // (the connection dropped after COMMIT): the row is this
                // worker's, finished with this very status. Written.
                Err(FinishError::Refused {
                    refusal: FinishRefusal::AlreadyFinished { status },
                    ..
                }) if status == pending.status => {
                    crate::metrics::finished(pending.status, started_at, pending.finished_at);
                    let waited = (self.clock.now() - pending.finished_at)
                        .to_std()
                        .unwrap_or_default();
                    written.push(pending.clone());
                    self.emit(WorkerEvent::OutcomeWritten { pending, waited });
                }
                Err(FinishError::Refused { refusal, .. }) => {
                    crate::metrics::refused(&refusal);
                    self.emit(WorkerEvent::OutcomeRefused { pending, refusal });
                }
                Err(FinishError::Storage {
                    error,
                    task,
                    outcome,
                }) => {
                    let failures = pending.attempts;
                    let next_attempt =
                        self.clock.now() + self.backoff.pause(failures, self.backoff.cap);
                    pending.attempts = failures;
                    retry.push(QueuedFinish {
                        task: *task,
                        outcome: *outcome,
                        pending,
                        next_attempt,
                    });
                    last_error = Some(error);
                }
            }
        }
        let left = {
            let mut queued = self.queued();
            queued.attempting.clear();
            queued.waiting.extend(retry);
            queued.waiting.len()
        };
        match &last_error {
            Some(error) => self.record_queue_failure(error),
            None if left == 0 => {
                self.upkeep()
                    .failures
                    .retain(|(u, _, _)| *u != Upkeep::QueuedOutcomes);
            }
            None => {}
        }
        (written, last_error)
    }

    fn interrupt_abandoned(&self) -> Vec<RecoveredTask> {
        let sweep = self.registered.interrupt_abandoned(self.storage.as_ref());
        crate::metrics::recovered(&sweep.recovered);
        for task in &sweep.recovered {
            self.deliver(task);
        }
        self.record(Upkeep::AbandonedTasks, sweep.error.map_or(Ok(()), Err));
        sweep.recovered
    }

    /// One recovery sweep of other workers' dead rows, attributed to this
    /// worker, with the claim of reports nobody alive will deliver. Returns
    /// what it reported: the reports taken over first, then the tasks it
    /// recovered (each also given to the hook and the reporter).
    fn sweep_now(&self) -> Vec<RecoveredTask> {
        let _one_at_a_time = self
            .reporting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        // First the reports owed by dead reporters (and this worker's own
        // undelivered ones): before the sweep, so the reports this sweep
        // makes are not claimed back as undelivered.
        let claimed = self.storage.claim_unreported_recoveries(
            &ReportClaim {
                claimant: self.registered.id(),
                now,
                unregistered_owed_before: now - self.policy.lease,
            },
            &PolicyJudge {
                policy: &self.policy,
                probe: self.probe.as_ref(),
            },
        );
        let judge = NoticingJudge::new(PolicyJudge {
            policy: &self.policy,
            probe: self.probe.as_ref(),
        });
        let swept = self.storage.recover_orphans(
            &RecoveryRequest {
                recovering_worker: self.registered.id(),
                now,
                mode: SweepMode::Apply,
            },
            &judge,
        );
        let noticed = judge.into_noticed();
        let (claimed, claim_error) = match claimed {
            Ok(claimed) => (claimed, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let (recovered, sweep_error) = match swept {
            Ok(recovered) => (recovered, claim_error),
            Err(error) => (Vec::new(), Some(error)),
        };
        let sweep_failed = sweep_error.is_some();
        match sweep_error {
            None => {
                let stalled: Vec<NoticedOwner> = noticed
                    .iter()
                    .filter(|owner| matches!(owner.verdict, Liveness::Stalled { .. }))
                    .cloned()
                    .collect();
                {
                    let mut upkeep = self.upkeep();
                    upkeep.last_sweep = Some(now);
                    upkeep.sweep_failures = 0;
                    upkeep.next_sweep = now + self.sweep_interval;
                    upkeep.stalled_neighbours = stalled;
                }
                self.record(Upkeep::Sweep, Ok(()));
                for owner in noticed {
                    self.emit(match owner.verdict {
                        Liveness::Stalled { .. } => WorkerEvent::StalledWorker(Box::new(owner)),
                        _ => WorkerEvent::DeathNotYetProvable(Box::new(owner)),
                    });
                }
            }
            Some(error) => {
                {
                    let mut upkeep = self.upkeep();
                    upkeep.sweep_failures = upkeep.sweep_failures.saturating_add(1);
                    upkeep.next_sweep = now + self.upkeep_pause(upkeep.sweep_failures);
                }
                self.record(Upkeep::Sweep, Err(error));
            }
        }
        crate::events::sweep_summary(
            self.registered.id(),
            recovered.len(),
            claimed.len(),
            sweep_failed,
        );
        let mut reported = claimed;
        crate::metrics::recovered(&recovered);
        reported.extend(recovered);
        self.report(&reported);
        reported
    }

    /// Delivers each report (tracing event, hook, reporter) and confirms in
    /// the store the ones the reporter took. A confirmation that fails
    /// leaves them owed: the next claim delivers them again (at least once).
    fn report(&self, reported: &[RecoveredTask]) {
        let delivered: Vec<TaskId> = reported
            .iter()
            .filter(|task| self.deliver(task))
            .map(|task| task.task.id)
            .collect();
        if delivered.is_empty() {
            return;
        }
        let confirmed =
            self.storage
                .confirm_reports(self.registered.id(), &delivered, self.clock.now());
        if let Err(error) = confirmed {
            self.record(Upkeep::Sweep, Err(error));
        }
    }

    /// One report out: its tracing event, the hook, the reporter. Whether
    /// the reporter took it.
    fn deliver(&self, task: &RecoveredTask) -> bool {
        crate::events::recovered(task);
        self.emit(WorkerEvent::Recovered(Box::new(task.clone())));
        let outcome = match &self.reporter {
            Some(reporter) => reporter(task),
            None => Ok(()),
        };
        match outcome {
            Ok(()) => true,
            Err(error) => {
                crate::events::report_undelivered(task, &error);
                false
            }
        }
    }
}

impl Worker {
    /// A builder for a worker writing into `storage`.
    pub fn builder(storage: Arc<dyn Storage>) -> WorkerBuilder {
        WorkerBuilder {
            storage,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            sweep_interval: defaults::SWEEP_INTERVAL,
            lease: defaults::LEASE,
            grace: defaults::GRACE,
            clock: Arc::new(SystemClock),
            probe: Arc::new(ProcfsProbe),
            probe_identity: probe_identity(),
            registration: None,
            hook: None,
            reporter: None,
            background: true,
            retry_first: defaults::RETRY_BACKOFF_FIRST,
            retry_cap: defaults::RETRY_BACKOFF_CAP,
            stop_deadline: defaults::STOP_DEADLINE,
        }
    }

    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.shared.registered.id()
    }

    /// What the worker registered.
    pub fn registration(&self) -> &WorkerRegistration {
        self.shared.registered.registration()
    }

    /// The storage it writes into.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// The tasks the boot sweep recovered (each was also given to the hook).
    pub fn recovered_at_boot(&self) -> &[RecoveredTask] {
        &self.recovered_at_boot
    }

    /// The tasks started through this worker and not yet finished or
    /// abandoned.
    pub fn in_flight(&self) -> Vec<TaskId> {
        self.shared.registered.in_flight()
    }

    /// How the worker is doing.
    pub fn health(&self) -> WorkerHealth {
        if self.shared.declared_dead.load(Ordering::SeqCst) {
            return WorkerHealth::DeclaredDead;
        }
        let upkeep = self.shared.upkeep();
        if upkeep.stopped {
            return WorkerHealth::Stopped;
        }
        match upkeep.failures.iter().map(|(_, _, since)| *since).min() {
            None => WorkerHealth::Healthy,
            Some(since) => WorkerHealth::Degraded {
                reason: upkeep
                    .failures
                    .iter()
                    .map(|(_, reason, _)| reason.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                since,
            },
        }
    }

    /// The workers the last successful sweep found stalled: holding their
    /// lock but silent longer than the lease (stopped or hung). Their rows
    /// are left alone.
    pub fn stalled_neighbours(&self) -> Vec<NoticedOwner> {
        self.shared.upkeep().stalled_neighbours.clone()
    }

    /// Whether another worker's sweep declared this one dead. Once true,
    /// its starts and finishes are refused: stop it.
    pub fn is_declared_dead(&self) -> bool {
        self.shared.declared_dead.load(Ordering::SeqCst)
    }

    /// Starts a task: INSERTs its `running` row and returns the running
    /// task once the row is committed. See [`Task::start`].
    pub fn start(&self, task: Task<Queued>) -> Result<Task<Running>, StartError> {
        let started = task.start(&self.shared.registered, self.shared.storage.as_ref());
        if let Ok(task) = &started {
            crate::events::started(task);
        }
        self.shared
            .running
            .started(&started, &self.shared.registered);
        started
    }

    /// Records the SDK session a running task runs under. See
    /// [`Task::record_session`].
    pub fn record_session(
        &self,
        task: &Task<Running>,
        session_id: SessionId,
    ) -> Result<(), StorageError> {
        task.record_session(session_id, self.shared.storage.as_ref())
    }

    /// Finishes a task with its one guarded UPDATE (see [`Task::finish`]).
    ///
    /// - The UPDATE committed: [`FinishReceipt::Written`].
    /// - A transient storage failure ([`StorageError::is_transient`]): the
    ///   worker keeps the task and the outcome and retries the UPDATE in the
    ///   background with capped backoff until it lands
    ///   ([`WorkerEvent::OutcomeWritten`]); [`FinishReceipt::Queued`]. The
    ///   row keeps the time of this call as `finished_at`.
    /// - A permanent storage failure: the task and the outcome come back in
    ///   [`FinishError::Storage`] ([`FinishError::into_parts`]), as from
    ///   [`Task::finish`].
    /// - The row is no longer this worker's running task:
    ///   [`FinishError::Refused`].
    pub fn finish(
        &self,
        task: Task<Running>,
        outcome: Outcome,
    ) -> Result<FinishReceipt, FinishError> {
        let finished_at = self.shared.clock.now();
        let status = outcome.status();
        let receipt = match task.finish_at(outcome, finished_at, self.shared.storage.as_ref()) {
            Ok(finished) => Ok(FinishReceipt::Written(Box::new(finished))),
            Err(FinishError::Storage {
                error,
                task,
                outcome,
            }) if error.is_transient() => {
                let pending = self
                    .shared
                    .queue_finish(*task, *outcome, finished_at, error);
                self.wakeup.wake();
                Ok(FinishReceipt::Queued(pending))
            }
            Err(error) => Err(error),
        };
        match &receipt {
            Ok(FinishReceipt::Written(finished)) => crate::events::finished(finished),
            Err(FinishError::Refused { id, refusal }) => {
                crate::events::finish_refused(*id, status, refusal)
            }
            _ => {}
        }
        self.shared
            .running
            .finished(&receipt, &self.shared.registered);
        receipt
    }

    /// The outcomes waiting for their UPDATE after a transient failure,
    /// oldest first.
    pub fn pending_outcomes(&self) -> Vec<PendingOutcome> {
        let queued = self.shared.queued();
        let mut pending: Vec<PendingOutcome> = queued
            .waiting
            .iter()
            .map(|q| q.pending.clone())
            .chain(queued.attempting.iter().cloned())
            .collect();
        pending.sort_by_key(|p| (p.finished_at, p.id));
        pending
    }

    /// Runs what is due now by the worker's clock: interrupts abandoned
    /// tasks, heartbeats if a heartbeat interval has passed, sweeps if a
    /// sweep interval has passed (or the boot sweep is still owed). A
    /// heartbeat, sweep or retry scheduled further ahead than its interval
    /// means the clock stepped back since: it is due now. The
    /// background thread calls this; call it yourself only with
    /// [`WorkerBuilder::without_background_thread`].
    pub fn tick(&self) {
        self.shared.tick();
    }

    /// Stops the worker: stops the background thread, writes the queued
    /// outcomes, interrupts abandoned tasks and every task still in flight
    /// (reason [`STOPPED_REASON`], sessions invalidated), then deregisters.
    /// Writes the store refuses for now are retried with backoff until the
    /// stop deadline ([`WorkerBuilder::stop_deadline`]); what could not be
    /// written by then is named in [`StopError::unwritten`] (with the status
    /// each outcome would have written) and stays `running` for the next
    /// sweep. A worker declared dead writes nothing (its rows were already
    /// interrupted by the sweep that declared it dead).
    pub fn stop(mut self) -> Result<StopReport, StopError> {
        let deadline = self.stop_deadline;
        self.shutdown(deadline)
    }

    fn shutdown(&mut self, deadline: std::time::Duration) -> Result<StopReport, StopError> {
        if self.stopped {
            return Ok(StopReport::default());
        }
        self.stopped = true;
        self.wakeup.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let shared = &self.shared;
        let mut report = StopReport::default();
        if shared.declared_dead.load(Ordering::SeqCst) {
            shared.upkeep().stopped = true;
            return Ok(report);
        }
        let give_up_at = Instant::now() + deadline;
        let reason = InterruptReason::new(STOPPED_REASON)
            .expect("the stop reason is a valid interrupt reason");
        let mut failures = 0;
        loop {
            let (written, queued_error) = shared.write_queued_outcomes(true);
            report.written.extend(written);
            let abandoned = shared
                .registered
                .interrupt_abandoned(shared.storage.as_ref());
            crate::metrics::recovered(&abandoned.recovered);
            for task in &abandoned.recovered {
                shared.deliver(task);
            }
            report.recovered.extend(abandoned.recovered);
            let keep: Vec<TaskId> = self
                .pending_outcomes()
                .into_iter()
                .map(|pending| pending.id)
                .collect();
            let (interrupted, in_flight_error) = shared.registered.interrupt_in_flight_except(
                shared.storage.as_ref(),
                &reason,
                &keep,
            );
            crate::metrics::interrupted_at_stop(interrupted.len());
            report.interrupted.extend(interrupted);
            let error = match (queued_error.or(abandoned.error), in_flight_error) {
                (_, Some(error)) | (Some(error), None) => Some(error),
                (None, None) => shared
                    .storage
                    .deregister_worker(shared.registered.id(), shared.clock.now())
                    .err(),
            };
            let Some(error) = error else {
                shared.upkeep().stopped = true;
                return Ok(report);
            };
            let now = Instant::now();
            if now >= give_up_at || shared.declared_dead.load(Ordering::SeqCst) {
                shared.upkeep().stopped = true;
                let mut unwritten: Vec<UnwrittenOutcome> = self
                    .pending_outcomes()
                    .into_iter()
                    .map(|pending| UnwrittenOutcome {
                        id: pending.id,
                        status: pending.status,
                    })
                    .collect();
                let still_running: Vec<TaskId> = shared
                    .registered
                    .in_flight()
                    .into_iter()
                    .chain(shared.registered.abandoned())
                    .filter(|id| unwritten.iter().all(|u| u.id != *id))
                    .collect();
                unwritten.extend(still_running.into_iter().map(|id| UnwrittenOutcome {
                    id,
                    status: TaskStatus::Interrupted,
                }));
                return Err(StopError {
                    error,
                    unwritten,
                    report: Box::new(report),
                });
            }
            failures += 1;
            shared.emit(WorkerEvent::UpkeepFailed {
                upkeep: Upkeep::Stop,
                error,
            });
            let pause = shared
                .backoff
                .pause(failures, shared.backoff.cap)
                .to_std()
                .unwrap_or_default()
                .min(give_up_at.saturating_duration_since(now));
            std::thread::sleep(pause);
        }
    }
}

impl Drop for Worker {
    /// A worker dropped without [`Worker::stop`] stops the same way, best
    /// effort and without waiting out a store outage (one attempt, no stop
    /// deadline): errors cannot be returned from `drop`, so the rows it
    /// could not write are left to the next sweep.
    fn drop(&mut self) {
        let _ = self.shutdown(std::time::Duration::ZERO);
    }
}

/// Runs the sweep now, outside any worker (the `tasktrail recover`
/// command). The sweep is attributed to a fresh id that is never
/// registered: `interrupted_by` names that operator sweep. Each report
/// counts as delivered once its `tasktrail::recovery` tracing event is out
/// (the caller prints the returned tasks); use [`recover_now_noticing`]
/// to confirm only what was delivered.
pub fn recover_now<S: Storage + ?Sized>(
    storage: &S,
    clock: &dyn Clock,
    probe: &dyn ProcessProbe,
    policy: &LivenessPolicy,
    mode: SweepMode,
) -> Result<Vec<RecoveredTask>, StorageError> {
    recover_now_noticing(storage, clock, probe, policy, mode, &|_| Ok(())).map(|sweep| {
        let mut reported = sweep.taken_over;
        reported.extend(sweep.recovered);
        reported
    })
}

/// What an operator sweep did and what it left alone worth reporting.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct OperatorSweep {
    /// The reports it took over from reporters that died (or an earlier
    /// operator sweep that could not deliver them) and delivered again.
    pub taken_over: Vec<RecoveredTask>,
    /// The tasks it marked `interrupted` (a dry run: would mark).
    pub recovered: Vec<RecoveredTask>,
    /// The owners it left alone but an operator should hear about: stalled,
    /// or with a free lock that does not prove death yet.
    pub noticed: Vec<NoticedOwner>,
    /// How many reports `reporter` refused: they stay owed, and a later
    /// sweep delivers them.
    pub undelivered: usize,
}

/// [`recover_now`], handing each report to `reporter` and confirming in the
/// store only those it took, and also telling which owners were left alone
/// as stalled or not yet provably dead. With [`SweepMode::Apply`] it first
/// takes over the reports nobody alive will deliver (its own id is new, so
/// those owed by an earlier operator sweep move once they are a lease old).
/// A dry run hands `reporter` what it would recover and writes nothing.
///
/// A one-shot sweep on Postgres has just connected, so it never reads a
/// free lock as death (it reports those owners as
/// [`tasktrail_core::Unproven::JudgeWatchedTooBriefly`]) unless the pid probe
/// applies; running workers' sweeps find them.
pub fn recover_now_noticing<S: Storage + ?Sized>(
    storage: &S,
    clock: &dyn Clock,
    probe: &dyn ProcessProbe,
    policy: &LivenessPolicy,
    mode: SweepMode,
    reporter: &dyn Fn(&RecoveredTask) -> std::io::Result<()>,
) -> Result<OperatorSweep, StorageError> {
    let now = clock.now();
    let sweeper = WorkerId::new_random();
    let taken_over = match mode {
        SweepMode::Apply => storage.claim_unreported_recoveries(
            &ReportClaim {
                claimant: sweeper,
                now,
                unregistered_owed_before: now - policy.lease,
            },
            &PolicyJudge { policy, probe },
        )?,
        SweepMode::DryRun => Vec::new(),
    };
    let judge = NoticingJudge::new(PolicyJudge { policy, probe });
    let recovered = storage.recover_orphans(
        &RecoveryRequest {
            recovering_worker: sweeper,
            now,
            mode,
        },
        &judge,
    )?;
    let mut delivered = Vec::new();
    let mut undelivered = 0;
    for task in taken_over.iter().chain(&recovered) {
        if mode == SweepMode::Apply {
            crate::events::recovered(task);
        }
        match reporter(task) {
            Ok(()) => delivered.push(task.task.id),
            Err(error) => {
                undelivered += 1;
                crate::events::report_undelivered(task, &error);
            }
        }
    }
    if mode == SweepMode::Apply && !delivered.is_empty() {
        storage.confirm_reports(sweeper, &delivered, clock.now())?;
    }
    Ok(OperatorSweep {
        taken_over,
        recovered,
        noticed: judge.into_noticed(),
        undelivered,
    })
}
