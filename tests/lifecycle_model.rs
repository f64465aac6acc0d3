//! Model-based property tests: random sequences of worker and task events run
//! against a reference model and a real backend (in-memory and SQLite), with
//! several workers. After every step the store must agree with the model and
//! the lifecycle invariants must hold:
//!
//! - every task whose start returned Ok has exactly one row from then on;
//! - no id is ever INSERTed twice (counted from the backend's own statement
//!   log, not inferred from rows);
//! - a finished row never changes again;
//! - after a boot, no `running` row belongs to a dead worker, and every
//!   interrupted task was reported exactly once;
//! - interrupted rows keep `finished_at`, tokens and cost NULL, and their
//!   sessions are invalidated and never offered for resume;
//! - no `running` row outlives its handle by more than one tick of its
//!   worker (a dropped handle or a panic inside a task is interrupted and
//!   reported by its own worker at its next tick);
//! - a refused finish (an interrupted one included) changes no row and no
//!   session, whoever issues it: on a recovered, a finished or another
//!   worker's row.
//!
//! Steps cover boots (two at once, one reusing a dead worker's pid), starts,
//! finishes of every kind, dropped handles, panics inside tasks, kills,
//! ticks, heartbeats, periodic sweeps (two sweepers at once), deregistration,
//! sessions and resume questions.
//!
//! CI runs a small number of cases; `PROPTEST_CASES=2000 cargo test --test
//! lifecycle_model` runs the long version (docs/testing.md). Failures shrink
//! and are kept under `tests/proptest-regressions/`.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use tasktrail::backend::*;
use tasktrail::*;

mod common;
use common::{Backend, LockChange};

/// Where a worker runs: a boot (machine), a PID namespace in it, and a host
/// name. Each ranges over two values, so collisions are common: two
/// machines with one name (look-alike hosts), one machine with two PID
/// namespaces (containers) whose workers are both pid 1, one name across
/// everything. Only the boot and the namespace together say which pids a
/// judge's process table shows; the name says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Place {
    boot: u8,
    pid_namespace: u8,
    name: u8,
}

impl Place {
    fn strategy() -> impl Strategy<Value = Place> {
        (0..2u8, 0..2u8, 0..2u8).prop_map(|(boot, pid_namespace, name)| Place {
            boot,
            pid_namespace,
            name,
        })
    }

    /// Whether a judge here sees the pids of a worker there.
    fn shares_pids_with(self, other: Place) -> bool {
        self.boot == other.boot && self.pid_namespace == other.pid_namespace
    }

    fn identity(self) -> HostIdentity {
        HostIdentity {
            boot_id: format!("boot-{}", self.boot),
            pid_namespace: 4_026_531_836 + u64::from(self.pid_namespace),
        }
    }

    fn host_name(self) -> String {
        format!("host-{}", self.name)
    }
}
const LEASE_SECONDS: i64 = 15;

/// How much silence one model second is in the store. Time passes for the
/// store only through [`Backend::age_heartbeat`] (Postgres measures silence
/// on the database's clock, which a manual clock cannot move), and on
/// Postgres that clock also counts the real time the test takes. So the
/// store sees each model second as a minute and judges with a lease half a
/// minute longer than the model's: `n` model seconds of silence are dead for
/// both exactly when `n > LEASE_SECONDS`, as long as a case runs for less
/// than half a minute.
const STORE_SECONDS_PER_MODEL_SECOND: i64 = 60;

/// The lease the system under test judges with.
fn store_lease() -> Duration {
    Duration::seconds(LEASE_SECONDS * STORE_SECONDS_PER_MODEL_SECOND)
        + Duration::seconds(STORE_SECONDS_PER_MODEL_SECOND / 2)
}

// ---------------------------------------------------------------- the model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelWorkerState {
    Alive,
    Dead,
    Stopped,
}

#[derive(Debug, Clone)]
struct ModelWorker {
    place: Place,
    /// The pid it registered in its PID namespace (reused after a kill).
    pid: u32,
    process_alive: bool,
    last_heartbeat: i64,
    state: ModelWorkerState,
    /// How many ticks its upkeep has run.
    ticks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelTask {
    owner: usize,
    status: TaskStatus,
    /// The owner still holds the `Task<Running>` (it has not finished it).
    handle_held: bool,
    /// The handle was dropped without a finish, at the owner's tick count.
    abandoned_at_tick: Option<u32>,
    /// Reported with a `[recovery]` line (by a sweep, or by its own worker
    /// as abandoned).
    recovered: bool,
    /// Interrupted by a sweep (a finish of it is then refused as
    /// `InterruptedByRecovery`).
    swept: bool,
    has_session: bool,
}

#[derive(Debug, Clone, Default)]
struct Model {
    now: i64,
    workers: Vec<ModelWorker>,
    tasks: Vec<ModelTask>,
}

#[derive(Debug, Clone, Copy)]
enum FinishKind {
    Success,
    Failure,
    Cancelled,
    AbortedNoSkill,
    Interrupted,
}

impl FinishKind {
    fn status(self) -> TaskStatus {
        match self {
            FinishKind::Success => TaskStatus::Success,
            FinishKind::Failure => TaskStatus::Failure,
            FinishKind::Cancelled => TaskStatus::Cancelled,
            FinishKind::AbortedNoSkill => TaskStatus::AbortedNoSkill,
            FinishKind::Interrupted => TaskStatus::Interrupted,
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A worker process boots (registers, then sweeps).
    Boot { place: Place },
    /// Two workers boot back to back (as at once, serialised by the store).
    TwoBoots { first: Place, second: Place },
    /// An alive worker dispatches and starts a task.
    Start { worker: usize },
    /// The owner finishes a task it holds.
    Finish { task: usize, kind: FinishKind },
    /// A second finish (of any kind, interrupted included) of a finished
    /// or recovered task, issued directly.
    DuplicateFinish { task: usize, kind: FinishKind },
    /// A finish (of any kind) by a worker that does not own the row, issued
    /// directly.
    WrongWorkerFinish {
        task: usize,
        worker: usize,
        kind: FinishKind,
    },
    /// The owner drops a running handle without finishing it (early return,
    /// cancelled future).
    DropHandle { task: usize },
    /// The task's work panics while it owns the handle.
    PanicInTask { task: usize },
    /// The worker's upkeep runs once: abandoned tasks, then the heartbeat.
    Tick { worker: usize },
    /// A live worker's periodic sweep.
    Sweep { worker: usize },
    /// Two live workers sweep at the same moment (on two threads).
    TwoSweepers { first: usize, second: usize },
    /// A worker boots in the PID namespace of a killed one, with its pid.
    BootReusingPid { dead: usize },
    /// A worker stops cleanly: interrupts what it still runs, deregisters,
    /// exits.
    Deregister { worker: usize },
    /// The worker's process dies without finishing anything.
    Kill { worker: usize },
    /// Time passes (heartbeats may go stale).
    Advance { seconds: i64 },
    /// A worker heartbeats.
    Heartbeat { worker: usize },
    /// A running task records its SDK session.
    RecordSession { task: usize },
    /// A dispatcher asks which session (repo, issue, agent) may resume.
    AskResume { task: usize },
    /// The store restarts (or fails over): every liveness lock it held is
    /// free at once and every judge has only just reconnected. Live workers
    /// take their locks back at their next heartbeat.
    StoreRestart,
}

impl Model {
    fn acting(&self, worker: usize) -> bool {
        self.workers.get(worker).is_some_and(|w| w.process_alive)
    }

    fn is_dead_for(&self, sweeper: usize, worker: usize) -> bool {
        let w = &self.workers[worker];
        if w.state != ModelWorkerState::Alive {
            return true;
        }
        // It holds its liveness lock while its process lives: alive,
        // however silent. Once dead, a judge in its boot and PID namespace
        // sees it at once (the pid probe); any other judge once its lock has
        // been free and its heartbeat silent past the grace.
        !w.process_alive
            && (self.workers[sweeper].place.shares_pids_with(w.place)
                || self.now - w.last_heartbeat > LEASE_SECONDS)
    }

    /// The tasks a sweep by `sweeper` recovers, oldest first.
    fn sweep(&mut self, sweeper: usize) -> Vec<usize> {
        let dead: Vec<bool> = (0..self.workers.len())
            .map(|w| w != sweeper && self.is_dead_for(sweeper, w))
            .collect();
        let mut recovered = Vec::new();
        let mut owners = HashSet::new();
        for (index, task) in self.tasks.iter_mut().enumerate() {
            if task.status == TaskStatus::Running && task.owner != sweeper && dead[task.owner] {
                task.status = TaskStatus::Interrupted;
                task.recovered = true;
                task.swept = true;
                recovered.push(index);
                owners.insert(task.owner);
            }
        }
        for owner in owners {
            self.workers[owner].state = ModelWorkerState::Dead;
        }
        recovered
    }

    /// A fresh pid in `place`'s PID namespace: 1, 2, … per namespace, so
    /// workers of different namespaces share pids (two pid-1 workers).
    fn next_pid(&self, place: Place) -> u32 {
        1 + self
            .workers
            .iter()
            .filter(|w| w.place.shares_pids_with(place))
            .count() as u32
    }

    fn boot(&mut self, place: Place) -> usize {
        let pid = self.next_pid(place);
        self.boot_with_pid(place, pid)
    }

    fn boot_with_pid(&mut self, place: Place, pid: u32) -> usize {
        self.workers.push(ModelWorker {
            place,
            pid,
            process_alive: true,
            last_heartbeat: self.now,
            state: ModelWorkerState::Alive,
            ticks: 0,
        });
        let index = self.workers.len() - 1;
        self.sweep(index);
        index
    }

    /// The worker's abandoned running tasks become interrupted (reported by
    /// the worker itself).
    fn interrupt_abandoned(&mut self, worker: usize) {
        for task in &mut self.tasks {
            if task.owner == worker
                && task.abandoned_at_tick.is_some()
                && task.status == TaskStatus::Running
            {
                task.status = TaskStatus::Interrupted;
                task.recovered = true;
            }
        }
    }

    fn heartbeat(&mut self, worker: usize) {
        if self.workers[worker].state == ModelWorkerState::Alive {
            self.workers[worker].last_heartbeat = self.now;
        }
    }

    fn holds_handle(&self, task: usize) -> bool {
        self.tasks
            .get(task)
            .is_some_and(|t| t.handle_held && self.acting(t.owner))
    }
}

struct LifecycleModel;

impl ReferenceStateMachine for LifecycleModel {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        let workers = state.workers.len().max(1);
        let tasks = state.tasks.len().max(1);
        let kind = prop_oneof![
            Just(FinishKind::Success),
            Just(FinishKind::Failure),
            Just(FinishKind::Cancelled),
            Just(FinishKind::AbortedNoSkill),
            Just(FinishKind::Interrupted),
        ];
        prop_oneof![
            2 => Place::strategy().prop_map(|place| Step::Boot { place }),
            1 => (Place::strategy(), Place::strategy()).prop_map(|(first, second)| Step::TwoBoots { first, second }),
            6 => (0..workers).prop_map(|worker| Step::Start { worker }),
            5 => (0..tasks, kind.clone()).prop_map(|(task, kind)| Step::Finish { task, kind }),
            3 => (0..tasks, kind.clone()).prop_map(|(task, kind)| Step::DuplicateFinish { task, kind }),
            2 => (0..tasks, 0..workers, kind).prop_map(|(task, worker, kind)| Step::WrongWorkerFinish { task, worker, kind }),
            1 => (0..tasks).prop_map(|task| Step::DropHandle { task }),
            1 => (0..tasks).prop_map(|task| Step::PanicInTask { task }),
            3 => (0..workers).prop_map(|worker| Step::Tick { worker }),
            1 => (0..workers).prop_map(|worker| Step::Sweep { worker }),
            1 => (0..workers, 0..workers).prop_map(|(first, second)| Step::TwoSweepers { first, second }),
            1 => (0..workers).prop_map(|dead| Step::BootReusingPid { dead }),
            1 => (0..workers).prop_map(|worker| Step::Deregister { worker }),
            2 => (0..workers).prop_map(|worker| Step::Kill { worker }),
            2 => (1..30i64).prop_map(|seconds| Step::Advance { seconds }),
            3 => (0..workers).prop_map(|worker| Step::Heartbeat { worker }),
            3 => (0..tasks).prop_map(|task| Step::RecordSession { task }),
            1 => (0..tasks).prop_map(|task| Step::AskResume { task }),
            1 => Just(Step::StoreRestart),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            Step::Boot { .. }
            | Step::TwoBoots { .. }
            | Step::Advance { .. }
            | Step::StoreRestart => true,
            Step::Start { worker }
            | Step::Kill { worker }
            | Step::Heartbeat { worker }
            | Step::Tick { worker }
            | Step::Sweep { worker } => state.acting(*worker),
            Step::TwoSweepers { first, second } => {
                first != second && state.acting(*first) && state.acting(*second)
            }
            Step::Deregister { worker } => {
                state.acting(*worker) && state.workers[*worker].state == ModelWorkerState::Alive
            }
            Step::BootReusingPid { dead } => state.workers.get(*dead).is_some_and(|w| {
                !w.process_alive
                    && !state.workers.iter().any(|other| {
                        other.process_alive
                            && other.pid == w.pid
                            && other.place.shares_pids_with(w.place)
                    })
            }),
            Step::Finish { task, .. } | Step::DropHandle { task } | Step::PanicInTask { task } => {
                state.holds_handle(*task)
            }
            Step::DuplicateFinish { task, .. } => {
                state.tasks.get(*task).is_some_and(|t| t.status.is_final())
            }
            Step::WrongWorkerFinish { task, worker, .. } => state
                .tasks
                .get(*task)
                .is_some_and(|t| t.owner != *worker && *worker < state.workers.len()),
            Step::RecordSession { task } => state
                .tasks
                .get(*task)
                .is_some_and(|t| t.handle_held && !t.has_session && state.acting(t.owner)),
            Step::AskResume { task } => *task < state.tasks.len(),
        }
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        match *step {
            Step::Boot { place } => {
                state.boot(place);
            }
            Step::TwoBoots { first, second } => {
                state.boot(first);
                state.boot(second);
            }
            Step::Start { worker } => {
                if state.workers[worker].state == ModelWorkerState::Alive {
                    state.tasks.push(ModelTask {
                        owner: worker,
                        status: TaskStatus::Running,
                        handle_held: true,
                        abandoned_at_tick: None,
                        recovered: false,
                        swept: false,
                        has_session: false,
                    });
                }
            }
            Step::Finish { task, kind } => {
                let task = &mut state.tasks[task];
                task.handle_held = false;
                if task.status == TaskStatus::Running {
                    task.status = kind.status();
                }
            }
            // Nothing a worker is changes: a live one stays alive.
            Step::DuplicateFinish { .. }
            | Step::WrongWorkerFinish { .. }
            | Step::AskResume { .. }
            | Step::StoreRestart => {}
            Step::DropHandle { task } | Step::PanicInTask { task } => {
                let owner = state.tasks[task].owner;
                let ticks = state.workers[owner].ticks;
                let task = &mut state.tasks[task];
                task.handle_held = false;
                task.abandoned_at_tick = Some(ticks);
            }
            Step::Tick { worker } => {
                state.interrupt_abandoned(worker);
                state.heartbeat(worker);
                state.workers[worker].ticks += 1;
            }
            Step::Sweep { worker } => {
                state.sweep(worker);
            }
            Step::TwoSweepers { first, second } => {
                // Run at once; the store serialises them, and what they
                // recover together does not depend on the order.
                state.sweep(first);
                state.sweep(second);
            }
            Step::BootReusingPid { dead } => {
                let (place, pid) = (state.workers[dead].place, state.workers[dead].pid);
                state.boot_with_pid(place, pid);
            }
            Step::Deregister { worker } => {
                state.interrupt_abandoned(worker);
                for task in &mut state.tasks {
                    if task.owner == worker && task.handle_held {
                        task.handle_held = false;
                        if task.status == TaskStatus::Running {
                            task.status = TaskStatus::Interrupted;
                        }
                    }
                }
                state.workers[worker].state = ModelWorkerState::Stopped;
                state.workers[worker].process_alive = false;
            }
            Step::Kill { worker } => state.workers[worker].process_alive = false,
            Step::Advance { seconds } => state.now += seconds,
            Step::Heartbeat { worker } => state.heartbeat(worker),
            Step::RecordSession { task } => {
                let owner = state.tasks[task].owner;
                if state.tasks[task].status == TaskStatus::Running
                    && state.workers[owner].state == ModelWorkerState::Alive
                {
                    state.tasks[task].has_session = true;
                }
            }
        }
        state
    }
}

// ------------------------------------------------------- the system under test

/// Every process table: (boot, PID namespace, pid) → the start marker of
/// the process that has the pid there now.
#[derive(Clone, Default)]
struct FakeProcesses(Arc<Mutex<ProcessTables>>);

/// (boot, PID namespace, pid) → start marker.
type ProcessTables = HashMap<(u8, u8, u32), String>;

impl FakeProcesses {
    fn table(&self) -> std::sync::MutexGuard<'_, ProcessTables> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(place: Place, pid: u32) -> (u8, u8, u32) {
        (place.boot, place.pid_namespace, pid)
    }
}

/// The process table a judge at `place` sees through its own `/proc`.
struct ProcessesSeenFrom<'a> {
    processes: &'a FakeProcesses,
    place: Place,
}

impl ProcessProbe for ProcessesSeenFrom<'_> {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        self.processes
            .table()
            .get(&FakeProcesses::key(self.place, pid))
            .cloned()
    }
}

/// A task's work that panics while it owns the handle. `resume_unwind`
/// unwinds without running the panic hook, so the test output stays quiet.
fn panic_inside_task(running: Task<Running>) {
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _owned_by_the_work = running;
        std::panic::resume_unwind(Box::new("simulated panic inside a task"));
    }));
    assert!(unwound.is_err());
}

struct System<B: Backend> {
    store: B,
    clock: Arc<ManualClock>,
    processes: FakeProcesses,
    workers: Vec<RegisteredWorker>,
    /// Where each worker runs.
    places: Vec<Place>,
    task_ids: Vec<TaskId>,
    handles: HashMap<usize, Task<Running>>,
    final_rows: HashMap<TaskId, TaskRecord>,
    reported: HashSet<TaskId>,
    _dir: tempfile::TempDir,
}

/// A judge that has watched every lock forever. Time passes for the store
/// only through aged heartbeats (a model second is a store minute), while a
/// Postgres judge's watch is its connection's real age: the model leaves
/// that to `postgres_backend::a_judge_that_just_connected_waits_a_grace_…`
/// and judges every free lock as watched long enough, except one the store
/// reports as watched for no time at all: the `StoreRestart` step's, where
/// every judge has only just reconnected.
struct WatchedForever<'a>(PolicyJudge<'a>);

impl LivenessJudge for WatchedForever<'_> {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        let owner = owner.cloned().map(|mut facts| {
            if let OwnerLock::Free { watched_for } = &mut facts.lock {
                if *watched_for != LockWatch::For(Duration::zero()) {
                    *watched_for = LockWatch::Continuous;
                }
            }
            facts
        });
        self.0.judge(owner.as_ref())
    }
}

/// One sweep by `sweeper` at `place`, judged as that worker would judge
/// (its boot and PID namespace, the process table its `/proc` shows, the
/// store's lease and grace).
fn sweep_as<B: Backend>(
    store: &B,
    processes: &FakeProcesses,
    sweeper: &RegisteredWorker,
    place: Place,
    now: Timestamp,
) -> Vec<RecoveredTask> {
    let policy = LivenessPolicy {
        local_identity: Some(place.identity()),
        lease: store_lease(),
        grace: store_lease(),
    };
    let processes = ProcessesSeenFrom { processes, place };
    let judge = WatchedForever(PolicyJudge {
        policy: &policy,
        probe: &processes,
    });
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper.id(),
                now,
                mode: SweepMode::Apply,
            },
            &judge,
        )
        .expect("sweep")
}

impl<B: Backend> System<B> {
    /// The next worker the model booted (its place and pid): registers,
    /// then sweeps as it.
    fn boot(&mut self, model_after: &Model) {
        let booted = &model_after.workers[self.workers.len()];
        let (place, pid) = (booted.place, booted.pid);
        // Each process that takes a pid has its own start marker, so a
        // reused pid never looks like the process that registered it first.
        let marker = format!("boot:{pid}:process-{}", self.workers.len());
        self.processes
            .table()
            .insert(FakeProcesses::key(place, pid), marker.clone());
        let registration = WorkerRegistration {
            id: WorkerId::new_random(),
            host: place.host_name(),
            pid,
            process_start_marker: marker,
            host_identity: Some(place.identity()),
            started_at: self.clock.now(),
        };
        let clock: Arc<dyn Clock> = self.clock.clone();
        // A boot: register, then sweep as the new worker.
        let worker =
            RegisteredWorker::register(&self.store, registration, clock).expect("register");
        self.places.push(place);
        let recovered = sweep_as(
            &self.store,
            &self.processes,
            &worker,
            place,
            self.clock.now(),
        );
        self.report(&recovered);
        self.workers.push(worker);
        // Every task the model says this boot recovers was reported by it.
        let reported_now: HashSet<TaskId> = recovered.iter().map(|t| t.task.id).collect();
        let newly_recovered: HashSet<TaskId> = model_after
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.recovered)
            .map(|(i, _)| self.task_ids[i])
            .filter(|id| !self.reported.contains(id) || reported_now.contains(id))
            .collect();
        assert!(
            reported_now.is_subset(&newly_recovered),
            "a boot reported a task the model did not recover"
        );
    }

    /// Records what a sweep or a worker reported; a task reported twice
    /// fails the test.
    fn report(&mut self, recovered: &[RecoveredTask]) {
        for task in recovered {
            assert!(
                self.reported.insert(task.task.id),
                "task {} reported twice",
                task.task.id
            );
            assert!(task.hint().starts_with("[recovery] "));
        }
    }

    fn sessions_of(&self, id: TaskId) -> Vec<SessionRecord> {
        let mut sessions: Vec<SessionRecord> = self
            .store
            .list_sessions()
            .expect("sessions")
            .into_iter()
            .filter(|session| session.task_id == id)
            .collect();
        sessions.sort_by(|a, b| a.session_id.as_str().cmp(b.session_id.as_str()));
        sessions
    }

    /// A finish issued directly on the store must be refused and change
    /// neither the row nor its sessions.
    fn refused_finish_changes_nothing(
        &self,
        task: usize,
        worker: WorkerId,
        kind: FinishKind,
    ) -> FinishWrite {
        let before = self.row(task);
        let sessions_before = self.sessions_of(before.id);
        let write = self
            .store
            .finish_running(&FinishRow {
                id: before.id,
                worker,
                outcome: outcome(kind),
                at: self.clock.now(),
            })
            .expect("finish");
        assert!(matches!(write, FinishWrite::Refused(_)), "{write:?}");
        assert_eq!(self.row(task), before, "a refused finish changes no row");
        assert_eq!(
            self.sessions_of(before.id),
            sessions_before,
            "a refused finish changes no session"
        );
        write
    }

    fn row(&self, index: usize) -> TaskRecord {
        self.store
            .get_task(self.task_ids[index])
            .expect("read")
            .expect("every started task has a row")
    }
}

struct LifecycleTest<B>(PhantomData<B>);

fn spec_for(index: usize) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: index as i64 + 1,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn report() -> RunReport {
    RunReport {
        input_tokens: 10,
        output_tokens: 20,
        cost_usd: CostUsd::new(0.5).expect("cost"),
        turns: 3,
        artifacts: vec!["pr/1".into()],
    }
}

fn outcome(kind: FinishKind) -> Outcome {
    match kind {
        FinishKind::Success => Outcome::Success(report()),
        FinishKind::Failure => Outcome::Failure(report()),
        FinishKind::Cancelled => Outcome::Cancelled(report()),
        FinishKind::AbortedNoSkill => Outcome::AbortedNoSkill(report()),
        FinishKind::Interrupted => {
            Outcome::Interrupted(InterruptReason::new("worker received SIGTERM").expect("reason"))
        }
    }
}

impl<B: Backend> StateMachineTest for LifecycleTest<B> {
    type SystemUnderTest = System<B>;
    type Reference = LifecycleModel;

    fn init_test(_model: &Model) -> System<B> {
        let dir = tempfile::tempdir().expect("tempdir");
        System {
            store: B::fresh(dir.path()).expect("the backend is configured"),
            clock: Arc::new(ManualClock::starting_at(
                Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
                    .single()
                    .expect("time"),
            )),
            processes: FakeProcesses::default(),
            workers: Vec::new(),
            places: Vec::new(),
            task_ids: Vec::new(),
            handles: HashMap::new(),
            final_rows: HashMap::new(),
            reported: HashSet::new(),
            _dir: dir,
        }
    }

    fn apply(mut sut: System<B>, model: &Model, step: Step) -> System<B> {
        snapshot_final_rows(&mut sut);
        match step {
            Step::Boot { .. } => sut.boot(model),
            Step::TwoBoots { .. } => {
                sut.boot(model);
                sut.boot(model);
            }
            Step::Start { worker } => {
                let index = sut.task_ids.len();
                let result = Task::queue(spec_for(index)).start(&sut.workers[worker], &sut.store);
                let model_started = model.tasks.len() > index;
                match result {
                    Ok(running) => {
                        assert!(
                            model_started,
                            "start succeeded for a worker the model says is dead"
                        );
                        sut.task_ids.push(running.id());
                        sut.handles.insert(index, running);
                    }
                    Err(error) => {
                        assert!(!model_started, "start failed: {error}");
                        assert!(
                            matches!(error.error, StorageError::WorkerNotAlive { .. }),
                            "{error}"
                        );
                        let id = error.into_task().id();
                        assert_eq!(
                            sut.store.get_task(id).expect("read"),
                            None,
                            "a failed start leaves no row"
                        );
                    }
                }
            }
            Step::Finish { task, kind } => {
                let running = sut.handles.remove(&task).expect("handle held");
                let result = running.finish(outcome(kind), &sut.store);
                let expected = model.tasks[task].status;
                match result {
                    Ok(finished) => assert_eq!(finished.outcome().status(), expected),
                    Err(FinishError::Refused { refusal, .. }) => {
                        assert!(
                            model.tasks[task].swept,
                            "refused but not recovered: {refusal:?}"
                        );
                        assert!(
                            matches!(refusal, FinishRefusal::InterruptedByRecovery { .. }),
                            "{refusal:?}"
                        );
                    }
                    Err(error) => panic!("storage failed: {error}"),
                }
            }
            Step::DuplicateFinish { task, kind } => {
                let before = sut.row(task);
                let owner = before.worker_id.expect("owner");
                let write = sut.refused_finish_changes_nothing(task, owner, kind);
                let expected = if model.tasks[task].swept {
                    FinishRefusal::InterruptedByRecovery {
                        recovered_by: before.interrupted_by,
                    }
                } else {
                    FinishRefusal::AlreadyFinished {
                        status: before.status,
                    }
                };
                assert_eq!(write, FinishWrite::Refused(expected));
            }
            Step::WrongWorkerFinish { task, worker, kind } => {
                let foreign = sut.workers[worker].id();
                sut.refused_finish_changes_nothing(task, foreign, kind);
            }
            Step::DropHandle { task } => {
                drop(sut.handles.remove(&task).expect("handle held"));
            }
            Step::PanicInTask { task } => {
                panic_inside_task(sut.handles.remove(&task).expect("handle held"));
            }
            Step::Tick { worker } => {
                let sweep = sut.workers[worker].interrupt_abandoned(&sut.store);
                assert!(sweep.error.is_none(), "{:?}", sweep.error);
                for task in &sweep.recovered {
                    assert_eq!(task.cause, DeathCause::HandleAbandoned);
                    assert_eq!(task.dead_worker, Some(sut.workers[worker].id()));
                    assert!(task.task.interrupt_reason.as_deref() == Some(ABANDONED_REASON));
                }
                sut.report(&sweep.recovered);
                let result = sut.workers[worker].heartbeat(&sut.store);
                expect_heartbeat(result, model.workers[worker].state);
            }
            Step::Sweep { worker } => {
                let recovered = sweep_as(
                    &sut.store,
                    &sut.processes,
                    &sut.workers[worker],
                    sut.places[worker],
                    sut.clock.now(),
                );
                sut.report(&recovered);
            }
            Step::TwoSweepers { first, second } => {
                let now = sut.clock.now();
                let sweep = |who: usize| {
                    sweep_as(
                        &sut.store,
                        &sut.processes,
                        &sut.workers[who],
                        sut.places[who],
                        now,
                    )
                };
                let (a, b) = std::thread::scope(|scope| {
                    let a = scope.spawn(|| sweep(first));
                    let b = scope.spawn(|| sweep(second));
                    (
                        a.join().expect("first sweeper"),
                        b.join().expect("second sweeper"),
                    )
                });
                sut.report(&a);
                sut.report(&b);
            }
            Step::BootReusingPid { .. } => sut.boot(model),
            Step::Deregister { worker } => {
                // As `Worker::stop` does: abandoned first (reported), then
                // what is still in flight, then the workers row.
                let sweep = sut.workers[worker].interrupt_abandoned(&sut.store);
                assert!(sweep.error.is_none(), "{:?}", sweep.error);
                sut.report(&sweep.recovered);
                let reason = InterruptReason::new("worker stopped").expect("reason");
                let (_, error) = sut.workers[worker].interrupt_in_flight(&sut.store, &reason);
                assert!(error.is_none(), "{error:?}");
                let id = sut.workers[worker].id();
                sut.store
                    .deregister_worker(id, sut.clock.now())
                    .expect("deregister");
                let owned: Vec<usize> = model
                    .tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.owner == worker)
                    .map(|(index, _)| index)
                    .collect();
                // The process exits: its handles go with it, and none of
                // them is reported abandoned (they were interrupted).
                for index in owned {
                    sut.handles.remove(&index);
                }
                assert!(sut.workers[worker].abandoned().is_empty());
                let pid = sut.workers[worker].registration().pid;
                sut.processes
                    .table()
                    .remove(&FakeProcesses::key(sut.places[worker], pid));
            }
            Step::Kill { worker } => {
                let pid = sut.workers[worker].registration().pid;
                sut.processes
                    .table()
                    .remove(&FakeProcesses::key(sut.places[worker], pid));
                // The kernel frees a dead process's lock.
                sut.store
                    .change_worker_lock(sut.workers[worker].id(), LockChange::ReleasedByDeath);
            }
            // Every heartbeat grows older; the clock the rows' timestamps
            // come from stays put (no invariant depends on them).
            Step::Advance { seconds } => {
                let silence = Duration::seconds(seconds * STORE_SECONDS_PER_MODEL_SECOND);
                for worker in &sut.workers {
                    sut.store.age_heartbeat(worker.id(), silence);
                }
            }
            Step::Heartbeat { worker } => {
                let result = sut.workers[worker].heartbeat(&sut.store);
                expect_heartbeat(result, model.workers[worker].state);
            }
            Step::StoreRestart => {
                let live: Vec<WorkerId> = model
                    .workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.process_alive && w.state == ModelWorkerState::Alive)
                    .map(|(index, _)| sut.workers[index].id())
                    .collect();
                sut.store.restart_under(&live);
            }
            Step::RecordSession { task } => {
                let session = SessionId::parse(&format!("sess_{task}")).expect("session");
                let result = sut.handles[&task].record_session(session, &sut.store);
                if model.tasks[task].has_session {
                    result.expect("record session");
                } else {
                    assert!(
                        result.is_err(),
                        "recording a session for a task that is no longer running must fail"
                    );
                }
            }
            Step::AskResume { task } => {
                let key = SessionKey {
                    repo: "acme/widgets".into(),
                    issue_number: task as u32 + 1,
                    agent: "fixer".into(),
                };
                let offered = sut.store.resumable_session(&key).expect("resume");
                let t = &model.tasks[task];
                let resumable =
                    t.has_session && t.status.is_final() && t.status != TaskStatus::Interrupted;
                assert_eq!(offered.is_some(), resumable, "resume offer for {t:?}");
            }
        }
        sut
    }

    fn check_invariants(sut: &System<B>, model: &Model) {
        let rows = sut.store.list_tasks(&TaskFilter::default()).expect("list");
        assert_eq!(
            rows.len(),
            model.tasks.len(),
            "one row per started task, no more"
        );
        let sessions = sut.store.list_sessions().expect("sessions");
        for (index, expected) in model.tasks.iter().enumerate() {
            let id = sut.task_ids[index];
            let row = sut.row(index);
            // No live worker's row is ever interrupted by anyone but itself,
            // whatever namespaces, boots and names the workers share and
            // however long they stay silent.
            let owner = &model.workers[expected.owner];
            if row.status == TaskStatus::Interrupted
                && row.interrupted_by != Some(sut.workers[expected.owner].id())
            {
                assert!(
                    !owner.process_alive,
                    "task #{index} of a live worker at {:?} was interrupted by a sweep: {:?}",
                    owner.place, row.interrupt_reason
                );
            }
            assert_eq!(row.status, expected.status, "task #{index} status");
            assert_eq!(
                sut.store.task_insert_statements(id),
                1,
                "task #{index}: exactly one INSERT"
            );
            if let Some(before) = sut.final_rows.get(&id) {
                assert_eq!(&row, before, "a finished row never changes again");
            }
            if row.status == TaskStatus::Interrupted {
                assert_eq!(
                    (
                        row.finished_at,
                        row.cost_usd,
                        row.input_tokens,
                        row.output_tokens
                    ),
                    (None, None, None, None)
                );
                for session in sessions.iter().filter(|s| s.task_id == id) {
                    assert!(
                        session.invalidated_at.is_some(),
                        "sessions of interrupted tasks are invalidated"
                    );
                }
            }
            assert_eq!(
                expected.recovered,
                sut.reported.contains(&id),
                "task #{index} reported iff recovered"
            );
            // No running row belongs to a worker that a boot declared dead.
            if row.status == TaskStatus::Running {
                assert_eq!(model.workers[expected.owner].state, ModelWorkerState::Alive);
                // No running row outlives its handle by more than one tick
                // of its (living) worker.
                if let Some(at_tick) = expected.abandoned_at_tick {
                    let owner = &model.workers[expected.owner];
                    assert!(
                        !owner.process_alive || owner.ticks <= at_tick,
                        "task #{index}: running {} ticks after its handle was dropped",
                        owner.ticks - at_tick
                    );
                }
            }
        }
    }
}

fn expect_heartbeat(result: Result<(), StorageError>, state: ModelWorkerState) {
    match state {
        ModelWorkerState::Alive => result.expect("heartbeat"),
        ModelWorkerState::Dead | ModelWorkerState::Stopped => {
            assert!(
                matches!(result, Err(StorageError::WorkerNotAlive { .. })),
                "{result:?}"
            )
        }
    }
}

/// Remembers final rows so `check_invariants` can prove they never change.
fn snapshot_final_rows<B: Backend>(sut: &mut System<B>) {
    for (index, id) in sut.task_ids.clone().into_iter().enumerate() {
        let row = sut.row(index);
        if row.status.is_final() {
            sut.final_rows.entry(id).or_insert(row);
        }
    }
}

fn config(default_cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

prop_state_machine! {
    #![proptest_config(config(96))]
    #[test]
    fn memory_backend_agrees_with_the_model(sequential 1..40 => LifecycleTest<MemoryStorage>);
}

prop_state_machine! {
    #![proptest_config(config(24))]
    #[test]
    fn sqlite_backend_agrees_with_the_model(sequential 1..40 => LifecycleTest<SqliteStorage>);
}

/// Postgres runs the same model with a fresh database per case (fewer cases:
/// each creates and drops a database), when `TASKTRAIL_TEST_POSTGRES_URL` is
/// set.
#[cfg(feature = "postgres")]
#[test]
fn postgres_backend_agrees_with_the_model() {
    // Skips visibly, or fails under CI.
    if tasktrail_diesel::test_postgres_url().is_none() {
        return;
    }
    run_the_model_on_fresh_databases::<common::PostgresBackend>();
}

/// MySQL/MariaDB runs the same model with a fresh database per case, when
/// `TASKTRAIL_TEST_MYSQL_URL` is set.
#[cfg(feature = "mysql")]
#[test]
fn mysql_backend_agrees_with_the_model() {
    // Skips visibly, or fails under CI.
    if tasktrail_diesel::test_mysql_url().is_none() {
        return;
    }
    run_the_model_on_fresh_databases::<common::MysqlBackend>();
}

/// Runs the model's sequential cases (fewer than on the embedded backends:
/// each creates and drops a database) on `B`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn run_the_model_on_fresh_databases<B: Backend>() {
    use proptest::test_runner::TestRunner;
    let mut config = config(8);
    config.source_file = Some(file!());
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &LifecycleModel::sequential_strategy(1..30),
        |(initial, transitions, seen)| {
            LifecycleTest::<B>::test_sequential(config.clone(), initial, transitions, seen);
            Ok(())
        },
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[cfg(feature = "postgres")]
#[path = "../crates/tasktrail-cli/tests/support/throwaway_cluster.rs"]
mod throwaway_cluster;

#[cfg(feature = "postgres")]
#[path = "../crates/tasktrail-cli/tests/support/pgbouncer.rs"]
mod pgbouncer;

/// The same model through PgBouncer 1.18 in transaction mode
/// (`?tasktrail_pooler=transaction`, the liveness session on a direct URL)
/// in front of a throwaway cluster with `max_connections = 40`, a fresh
/// database per case. External (root, the server binaries, `pgbouncer`):
/// runs with `TASKTRAIL_OUTAGE_TESTS=1`, as `.ci/run` sets.
#[cfg(feature = "postgres")]
#[test]
fn postgres_through_pgbouncer_agrees_with_the_model() {
    use proptest::test_runner::TestRunner;
    if std::env::var("TASKTRAIL_OUTAGE_TESTS").map_or(true, |value| value.trim() != "1") {
        tasktrail_diesel::report_skipped_test(
            "skipped: needs TASKTRAIL_OUTAGE_TESTS=1 (root, Postgres server binaries, pgbouncer)",
        );
        return;
    }
    let cluster = throwaway_cluster::ThrowawayCluster::start_with(&["max_connections=40"]);
    let bouncer =
        pgbouncer::PgBouncer::start(cluster.port(), &pgbouncer::BouncerSettings::default());
    let pooler = common::ThroughPooler {
        admin_url: cluster.url("postgres"),
        bouncer_port: bouncer.port(),
    };
    let mut config = config(8);
    config.source_file = Some(file!());
    let mut runner = TestRunner::new(config.clone());
    let result = common::through_pooler(pooler, || {
        runner.run(
            &LifecycleModel::sequential_strategy(1..30),
            |(initial, transitions, seen)| {
                LifecycleTest::<common::PostgresBackend>::test_sequential(
                    config.clone(),
                    initial,
                    transitions,
                    seen,
                );
                Ok(())
            },
        )
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    drop(bouncer);
}
