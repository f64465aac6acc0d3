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

use chrono::Duration;
use tasktrail_core::backend::{NoticingJudge, PolicyJudge, RecoveryRequest, SweepMode};
use tasktrail_core::{
    Clock, FinishError, Finished, HostIdentity, InterruptReason, Liveness, LivenessPolicy,
    NoticedOwner, Outcome, ProcessProbe, Queued, RecoveredTask, RegisteredWorker, Running,
    SessionId, StartError, Storage, StorageError, SystemClock, Task, TaskId, Timestamp, WorkerId,
    WorkerRegistration,
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
}

impl fmt::Display for Upkeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Upkeep::Heartbeat => "heartbeat",
            Upkeep::Sweep => "recovery sweep",
            Upkeep::AbandonedTasks => "interrupting abandoned tasks",
            Upkeep::Stop => "stop",
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
}

type EventHook = Box<dyn Fn(&WorkerEvent) + Send + Sync>;

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
    background: bool,
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
            declared_dead: AtomicBool::new(false),
            upkeep: Mutex::new(UpkeepState {
                last_heartbeat: now,
                last_tick: now,
                last_sweep: None,
                failures: Vec::new(),
                stopped: false,
                stalled_neighbours: Vec::new(),
            }),
        });
        let recovered_at_boot = shared.sweep_now();
        let mut worker = Worker {
            shared,
            wakeup,
            thread: None,
            recovered_at_boot,
            stopped: false,
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
                    let _ = worker.shutdown();
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
    declared_dead: AtomicBool,
    upkeep: Mutex<UpkeepState>,
}

struct UpkeepState {
    last_heartbeat: Timestamp,
    /// When the last tick ran (a gap longer than the lease: the process was
    /// stopped or hung).
    last_tick: Timestamp,
    /// `None` until the boot sweep succeeded.
    last_sweep: Option<Timestamp>,
    /// The upkeeps whose last attempt failed: what, why, since when.
    failures: Vec<(Upkeep, String, Timestamp)>,
    stopped: bool,
    /// The stalled workers the last successful sweep found.
    stalled_neighbours: Vec<NoticedOwner>,
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
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }

    fn upkeep(&self) -> MutexGuard<'_, UpkeepState> {
        self.upkeep.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn until_next_due(&self) -> std::time::Duration {
        let now = self.clock.now();
        let upkeep = self.upkeep();
        let heartbeat_due = upkeep.last_heartbeat + self.heartbeat_interval;
        let sweep_due = match upkeep.last_sweep {
            Some(at) => at + self.sweep_interval,
            // The boot sweep failed: retry it with the heartbeat.
            None => heartbeat_due,
        };
        let due = heartbeat_due.min(sweep_due);
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

    /// Runs what is due at the clock's `now`.
    fn tick(&self) {
        if self.declared_dead.load(Ordering::SeqCst) || self.upkeep().stopped {
            return;
        }
        self.interrupt_abandoned();
        let now = self.clock.now();
        let (heartbeat_due, sweep_due) = {
            let upkeep = self.upkeep();
            (
                now - upkeep.last_heartbeat >= self.heartbeat_interval,
                upkeep
                    .last_sweep
                    .is_none_or(|at| now - at >= self.sweep_interval),
            )
        };
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
        if heartbeat_due {
            let beat = self.registered.heartbeat(self.storage.as_ref());
            if beat.is_ok() {
                self.upkeep().last_heartbeat = now;
            }
            self.record(Upkeep::Heartbeat, beat);
        }
        if sweep_due && !self.declared_dead.load(Ordering::SeqCst) {
            self.sweep_now();
        }
    }

    fn interrupt_abandoned(&self) -> Vec<RecoveredTask> {
        let sweep = self.registered.interrupt_abandoned(self.storage.as_ref());
        for task in &sweep.recovered {
            self.emit(WorkerEvent::Recovered(Box::new(task.clone())));
        }
        self.record(Upkeep::AbandonedTasks, sweep.error.map_or(Ok(()), Err));
        sweep.recovered
    }

    /// One recovery sweep of other workers' dead rows, attributed to this
    /// worker. Returns what it recovered (each also given to the hook).
    fn sweep_now(&self) -> Vec<RecoveredTask> {
        let now = self.clock.now();
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
        match swept {
            Ok(recovered) => {
                let stalled: Vec<NoticedOwner> = noticed
                    .iter()
                    .filter(|owner| matches!(owner.verdict, Liveness::Stalled { .. }))
                    .cloned()
                    .collect();
                {
                    let mut upkeep = self.upkeep();
                    upkeep.last_sweep = Some(now);
                    upkeep.stalled_neighbours = stalled;
                }
                self.record(Upkeep::Sweep, Ok(()));
                for owner in noticed {
                    self.emit(match owner.verdict {
                        Liveness::Stalled { .. } => WorkerEvent::StalledWorker(Box::new(owner)),
                        _ => WorkerEvent::DeathNotYetProvable(Box::new(owner)),
                    });
                }
                for task in &recovered {
                    self.emit(WorkerEvent::Recovered(Box::new(task.clone())));
                }
                recovered
            }
            Err(error) => {
                self.record(Upkeep::Sweep, Err(error));
                Vec::new()
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
            background: true,
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
        task.start(&self.shared.registered, self.shared.storage.as_ref())
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

    /// Finishes a task with its one guarded UPDATE. On a storage failure
    /// the task and the outcome come back in the error (retry with
    /// [`FinishError::into_parts`]). See [`Task::finish`].
    pub fn finish(
        &self,
        task: Task<Running>,
        outcome: Outcome,
    ) -> Result<Task<Finished>, FinishError> {
        task.finish(outcome, self.shared.storage.as_ref())
    }

    /// Runs what is due now by the worker's clock: interrupts abandoned
    /// tasks, heartbeats if a heartbeat interval has passed, sweeps if a
    /// sweep interval has passed (or the boot sweep is still owed). The
    /// background thread calls this; call it yourself only with
    /// [`WorkerBuilder::without_background_thread`].
    pub fn tick(&self) {
        self.shared.tick();
    }

    /// Stops the worker: stops the background thread, interrupts abandoned
    /// tasks and every task still in flight (reason [`STOPPED_REASON`],
    /// sessions invalidated), then deregisters. A worker declared dead
    /// writes nothing. On a storage failure the rows it could not write
    /// stay `running` for the next sweep, and the error is returned.
    pub fn stop(mut self) -> Result<StopReport, StorageError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<StopReport, StorageError> {
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
        if !shared.declared_dead.load(Ordering::SeqCst) {
            report.recovered = shared.interrupt_abandoned();
            let reason = InterruptReason::new(STOPPED_REASON)
                .expect("the stop reason is a valid interrupt reason");
            let (interrupted, error) = shared
                .registered
                .interrupt_in_flight(shared.storage.as_ref(), &reason);
            report.interrupted = interrupted;
            let result = match error {
                Some(error) => Err(error),
                None => shared
                    .storage
                    .deregister_worker(shared.registered.id(), shared.clock.now()),
            };
            if let Err(error) = result {
                shared.upkeep().stopped = true;
                return Err(error);
            }
        }
        shared.upkeep().stopped = true;
        Ok(report)
    }
}

impl Drop for Worker {
    /// A worker dropped without [`Worker::stop`] stops the same way, best
    /// effort: errors cannot be returned from `drop`, so the rows it could
    /// not write are left to the next sweep.
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs the sweep now, outside any worker (the `tasktrail recover`
/// command). The sweep is attributed to a fresh id that is never
/// registered: `interrupted_by` names that operator sweep.
pub fn recover_now<S: Storage + ?Sized>(
    storage: &S,
    clock: &dyn Clock,
    probe: &dyn ProcessProbe,
    policy: &LivenessPolicy,
    mode: SweepMode,
) -> Result<Vec<RecoveredTask>, StorageError> {
    recover_now_noticing(storage, clock, probe, policy, mode).map(|sweep| sweep.recovered)
}

/// What an operator sweep did and what it left alone worth reporting.
#[derive(Debug, Default)]
pub struct OperatorSweep {
    /// The tasks it marked `interrupted` (a dry run: would mark).
    pub recovered: Vec<RecoveredTask>,
    /// The owners it left alone but an operator should hear about: stalled,
    /// or with a free lock that does not prove death yet.
    pub noticed: Vec<NoticedOwner>,
}

/// [`recover_now`], also telling which owners were left alone as stalled or
/// not yet provably dead. A one-shot sweep on Postgres has just connected,
/// so it never reads a free lock as death (it reports those owners as
/// [`tasktrail_core::Unproven::JudgeWatchedTooBriefly`]) unless the pid probe
/// applies; running workers' sweeps find them.
pub fn recover_now_noticing<S: Storage + ?Sized>(
    storage: &S,
    clock: &dyn Clock,
    probe: &dyn ProcessProbe,
    policy: &LivenessPolicy,
    mode: SweepMode,
) -> Result<OperatorSweep, StorageError> {
    let now = clock.now();
    let judge = NoticingJudge::new(PolicyJudge { policy, probe });
    let recovered = storage.recover_orphans(
        &RecoveryRequest {
            recovering_worker: WorkerId::new_random(),
            now,
            mode,
        },
        &judge,
    )?;
    Ok(OperatorSweep {
        recovered,
        noticed: judge.into_noticed(),
    })
}
