//! The behaviour suite every [`Storage`] backend must pass, written once
//! against the trait, in the manner of object_store's shared integration
//! tests: one public function per behaviour (each takes a [`Subject`], makes
//! one fresh store with it and runs that case on it), and the
//! [`conformance_tests!`](crate::conformance_tests) macro, which a backend's
//! test file expands into one `#[test]` per case. Every case then runs,
//! whatever another one does, and a failure names its case (the test's name
//! and the panic: ``backend `sqlite` failed conformance case `…` ``). The
//! macro is the one list of cases ([`CASE_NAMES`]): a case added to it runs
//! on every backend that expands it, and a case body left out of it is dead
//! code, which the workspace's lints refuse. A server that writes its own
//! backend runs the same suite (enable the `testing` feature).
//!
//! ```
//! use tasktrail_core::conformance::{LockChange, Subject};
//! use tasktrail_core::backend::{LockWatch, OwnerLock};
//! use tasktrail_core::MemoryStorage;
//!
//! fn memory_subject() -> Subject<MemoryStorage> {
//!     Subject {
//!         name: "memory",
//!         fresh_store: Box::new(MemoryStorage::new),
//!         task_insert_statements: Box::new(|store: &MemoryStorage, id| store.task_insert_statements(id)),
//!         age_heartbeats: Box::new(|store: &MemoryStorage, worker, by| store.age_heartbeat(worker, by)),
//!         change_worker_lock: Box::new(|store: &MemoryStorage, worker, change| {
//!             store.set_worker_lock(worker, match change {
//!                 LockChange::ReleasedByDeath => OwnerLock::Free { watched_for: LockWatch::Continuous },
//!                 _ => OwnerLock::NotCheckable, // LockChange::RegisteredBeforeLocks
//!             })
//!         }),
//!     }
//! }
//!
//! // In a test file: one `#[test]` per case, each on a subject of its own.
//! tasktrail_core::conformance_tests!(memory_subject());
//!
//! // One case by hand:
//! tasktrail_core::conformance::finish_of_an_id_with_no_row_never_inserts(memory_subject());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};

use crate::backend::{
    FinishRow, FinishWrite, NoticingJudge, PolicyJudge, RecoveryRequest, ReportClaim, SweepMode,
};
use crate::{
    Clock, CostUsd, DeathCause, FinishError, FinishRefusal, HostIdentity, InterruptReason,
    Liveness, LivenessPolicy, ManualClock, NoticedOwner, Outcome, ProcessProbe, RecoveredTask,
    RegisteredWorker, RunReport, SessionId, SessionKey, Storage, StorageError, Task, TaskFilter,
    TaskId, TaskRecord, TaskSpec, TaskSpecInput, TaskStatus, Unproven, WorkerId,
    WorkerRegistration, WorkerState,
};

/// Counts the INSERT statements into `task_history` a store issued for an id.
pub type InsertCounter<S> = Box<dyn Fn(&S, TaskId) -> usize>;

/// Moves a worker's `heartbeat_at` back by a duration, in the store.
pub type HeartbeatAger<S> = Box<dyn Fn(&S, WorkerId, Duration)>;

/// What happens to a worker's liveness lock, played by
/// [`Subject::change_worker_lock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockChange {
    /// The worker's process died: the kernel (or the database, ending its
    /// session) released its lock. Its row stays `alive` until a sweep.
    ReleasedByDeath,
    /// The worker registered the way workers did before liveness locks
    /// existed: no lock can be checked for it (the lease decides).
    RegisteredBeforeLocks,
}

/// Plays a [`LockChange`] on a worker's lock, in the store.
pub type LockChanger<S> = Box<dyn Fn(&S, WorkerId, LockChange)>;

/// What a backend hands the suite.
pub struct Subject<S: Storage> {
    /// The backend's name, for failure messages.
    pub name: &'static str,
    /// Makes a fresh, empty, migrated store; called once per case.
    pub fresh_store: Box<dyn FnMut() -> S>,
    /// The INSERT statements into `task_history` the backend really issued
    /// for an id (from its statement log, not inferred from rows).
    pub task_insert_statements: InsertCounter<S>,
    /// A test hook: moves the worker's last heartbeat back by the duration,
    /// as if it had been silent that long. The suite ages heartbeats this
    /// way rather than with its clock, so each backend runs in its
    /// production configuration, whatever clock it measures silence on (the
    /// database's, on Postgres). It must not touch anything else.
    pub age_heartbeats: HeartbeatAger<S>,
    /// A test hook: plays a [`LockChange`] on the worker's liveness lock
    /// (release it as a dying process's kernel or database session would, or
    /// make the worker look registered before locks existed). It must not
    /// touch anything else; the worker's row stays as it is.
    pub change_worker_lock: LockChanger<S>,
}

impl<S: Storage> fmt::Debug for Subject<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One case's world: a store, a clock, a process table, and helpers.
struct World<'a, S: Storage> {
    store: &'a S,
    inserts: &'a dyn Fn(&S, TaskId) -> usize,
    age: &'a dyn Fn(&S, WorkerId, Duration),
    change_lock: &'a dyn Fn(&S, WorkerId, LockChange),
    clock: ManualClock,
    processes: FakeProcesses,
    /// The worker each local pid belongs to.
    workers_by_pid: HashMap<u32, WorkerId>,
    next_pid: u32,
    next_issue: u32,
}

#[derive(Clone, Default)]
struct FakeProcesses(Arc<std::sync::Mutex<Vec<(u32, String)>>>);

impl FakeProcesses {
    fn spawn(&self, pid: u32) {
        self.lock().push((pid, format!("boot:{pid}")));
    }
    fn kill(&self, pid: u32) {
        self.lock().retain(|(p, _)| *p != pid);
    }
    fn reuse(&self, pid: u32) {
        self.kill(pid);
        self.lock().push((pid, format!("boot:{pid}:reused")));
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, String)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ProcessProbe for FakeProcesses {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        self.lock()
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, m)| m.clone())
    }
}

const LOCAL_HOST: &str = "local";

/// The judge's boot and PID namespace: only workers registered with it are
/// judged by the (fake) process table.
fn local_identity() -> HostIdentity {
    HostIdentity {
        boot_id: "boot-local".into(),
        pid_namespace: 4_026_531_836,
    }
}

/// Where a conformance worker runs, seen from the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The judge's boot and PID namespace: its pid is in the process table.
    Local,
    /// Another machine that shares the judge's host name (another boot id).
    LookAlikeHost,
    /// The judge's boot, another PID namespace (a container).
    OtherPidNamespace,
    /// Another machine with its own name.
    Elsewhere,
}

/// The grace of the suite's policy: short, so that a case can wait it out
/// on a backend whose judge must have watched a lock for a grace
/// (Postgres).
const SUITE_GRACE: Duration = Duration::seconds(1);

impl<S: Storage> World<'_, S> {
    fn worker_at(&mut self, place: Place) -> (RegisteredWorker, u32) {
        self.next_pid += 1;
        let pid = self.next_pid;
        let local = local_identity();
        let (host, identity) = match place {
            Place::Local => (LOCAL_HOST, local),
            Place::LookAlikeHost => (
                LOCAL_HOST,
                HostIdentity {
                    boot_id: "boot-look-alike".into(),
                    ..local
                },
            ),
            Place::OtherPidNamespace => (
                LOCAL_HOST,
                HostIdentity {
                    pid_namespace: 4_026_532_178,
                    ..local
                },
            ),
            Place::Elsewhere => (
                "elsewhere",
                HostIdentity {
                    boot_id: "boot-elsewhere".into(),
                    ..local
                },
            ),
        };
        if place == Place::Local {
            self.processes.spawn(pid);
        }
        let worker = RegisteredWorker::register(
            self.store,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: host.to_owned(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                host_identity: Some(identity),
                started_at: self.clock.now(),
            },
            Arc::new(self.clock.clone()),
        )
        .expect("register worker");
        if place == Place::Local {
            self.workers_by_pid.insert(pid, worker.id());
        }
        (worker, pid)
    }

    fn worker_on(&mut self, host: &str) -> (RegisteredWorker, u32) {
        self.worker_at(if host == LOCAL_HOST {
            Place::Local
        } else {
            Place::Elsewhere
        })
    }

    fn local_worker(&mut self) -> (RegisteredWorker, u32) {
        self.worker_at(Place::Local)
    }

    /// The local process `pid` dies (SIGKILL): gone from the process table,
    /// its lock released.
    fn kill(&self, pid: u32) {
        self.processes.kill(pid);
        if let Some(worker) = self.workers_by_pid.get(&pid) {
            self.change_lock(*worker, LockChange::ReleasedByDeath);
        }
    }

    /// The local process `pid` dies and another process takes its pid.
    fn reuse_pid(&self, pid: u32) {
        self.kill(pid);
        self.processes.reuse(pid);
    }

    fn change_lock(&self, worker: WorkerId, change: LockChange) {
        (self.change_lock)(self.store, worker, change);
    }

    fn spec(&mut self, repo: &str) -> TaskSpec {
        self.next_issue += 1;
        TaskSpec::validate(TaskSpecInput {
            repo: repo.to_owned(),
            issue_number: i64::from(self.next_issue),
            user: "alice".into(),
            agent: "fixer".into(),
            agent_type: "claude_sdk".into(),
            model: "claude-opus".into(),
            provider: "anthropic".into(),
        })
        .expect("valid spec")
    }

    fn start(&mut self, worker: &RegisteredWorker) -> Task<crate::Running> {
        let spec = self.spec("acme/widgets");
        Task::queue(spec).start(worker, self.store).expect("start")
    }

    fn row(&self, id: TaskId) -> TaskRecord {
        self.store
            .get_task(id)
            .expect("get_task")
            .expect("row exists")
    }

    fn inserts(&self, id: TaskId) -> usize {
        (self.inserts)(self.store, id)
    }

    /// `worker` has been silent `by` longer, on the store's clock.
    fn age_heartbeat(&self, worker: &RegisteredWorker, by: Duration) {
        (self.age)(self.store, worker.id(), by);
    }

    fn policy() -> LivenessPolicy {
        LivenessPolicy {
            grace: SUITE_GRACE,
            ..LivenessPolicy::new(Some(local_identity()))
        }
    }

    fn sweep(&self, by: &RegisteredWorker, mode: SweepMode) -> Vec<RecoveredTask> {
        self.sweep_noticing(by, mode).0
    }

    /// A sweep that also says which owners it left alone as stalled or not
    /// yet provably dead.
    fn sweep_noticing(
        &self,
        by: &RegisteredWorker,
        mode: SweepMode,
    ) -> (Vec<RecoveredTask>, Vec<NoticedOwner>) {
        let policy = Self::policy();
        let judge = NoticingJudge::new(PolicyJudge {
            policy: &policy,
            probe: &self.processes,
        });
        let recovered = self
            .store
            .recover_orphans(
                &RecoveryRequest {
                    recovering_worker: by.id(),
                    now: self.clock.now(),
                    mode,
                },
                &judge,
            )
            .expect("sweep");
        (recovered, judge.into_noticed())
    }

    /// `claimant` claims the reports nobody alive will deliver; reports
    /// owed by ids naming no worker move if owed since before
    /// `unregistered_owed_before`.
    fn claim(
        &self,
        claimant: WorkerId,
        unregistered_owed_before: crate::Timestamp,
    ) -> Vec<RecoveredTask> {
        let policy = Self::policy();
        self.store
            .claim_unreported_recoveries(
                &ReportClaim {
                    claimant,
                    now: self.clock.now(),
                    unregistered_owed_before,
                },
                &PolicyJudge {
                    policy: &policy,
                    probe: &self.processes,
                },
            )
            .expect("claim")
    }

    fn confirm(&self, reporter: WorkerId, reports: &[RecoveredTask]) -> u64 {
        let ids: Vec<TaskId> = reports.iter().map(|r| r.task.id).collect();
        self.store
            .confirm_reports(reporter, &ids, self.clock.now())
            .expect("confirm")
    }
}

fn report() -> RunReport {
    RunReport {
        input_tokens: 1200,
        output_tokens: 345,
        cost_usd: CostUsd::new(0.4275).expect("cost"),
        turns: 7,
        artifacts: vec!["pr/17".into(), "notes/summary.md".into()],
    }
}

fn interrupted(reason: &str) -> Outcome {
    Outcome::Interrupted(InterruptReason::new(reason).expect("reason"))
}

/// Runs `case` on one fresh store made by `subject`; panics naming the
/// backend and the case when the case fails.
fn run_case<S: Storage>(mut subject: Subject<S>, name: &str, case: fn(&mut World<'_, S>)) {
    let store = (subject.fresh_store)();
    let mut world = World {
        store: &store,
        inserts: subject.task_insert_statements.as_ref(),
        age: subject.age_heartbeats.as_ref(),
        change_lock: subject.change_worker_lock.as_ref(),
        clock: ManualClock::starting_at(
            Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 2)
                .single()
                .expect("time")
                + Duration::microseconds(123_456),
        ),
        processes: FakeProcesses::default(),
        workers_by_pid: HashMap::new(),
        next_pid: 100,
        next_issue: 1000,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut world)));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!(
            "backend `{}` failed conformance case `{name}`: {message}",
            subject.name
        );
    }
}

/// The one list of conformance cases. Calls
/// `$crate::$callback! { $arguments case, case, … }`; the callbacks are this
/// crate's (the public case functions below, and
/// [`conformance_tests!`](crate::conformance_tests)'s tests).
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_conformance_case {
    ($callback:ident ! $arguments:tt) => {
        $crate::$callback! { $arguments
            start_inserts_one_running_row_with_every_seed_column,
            finish_with_each_outcome_updates_the_same_row,
            timestamps_round_trip_to_the_microsecond,
            starting_the_same_id_twice_is_refused_and_hands_the_task_back,
            finishing_twice_is_refused_and_changes_nothing,
            finish_by_a_worker_that_does_not_own_the_row_is_refused,
            finish_of_an_id_with_no_row_never_inserts,
            finish_after_recovery_interrupted_the_row_is_refused,
            an_interrupted_finish_is_fenced_like_a_completed_one,
            recovery_interrupts_a_dead_same_host_workers_rows_and_fences_it,
            recovery_treats_a_reused_pid_as_dead,
            recovery_leaves_live_workers_rows_alone,
            recovery_of_workers_registered_before_locks_follows_the_heartbeat_lease,
            a_held_lock_keeps_a_silent_worker_alive_and_reports_it_stalled,
            a_held_lock_wins_over_a_process_probe_that_says_gone,
            a_free_lock_proves_death_only_once_the_owner_is_silent_past_the_grace,
            look_alike_hosts_and_other_pid_namespaces_are_never_judged_by_pid,
            recovery_with_no_orphans_is_a_no_op,
            every_recovered_task_is_reported_once,
            dry_run_reports_the_same_tasks_and_changes_nothing,
            sessions_are_resumable_only_after_a_completed_run,
            sessions_of_interrupted_tasks_are_invalidated_and_never_resumed,
            session_writes_are_checked,
            a_deregistered_workers_leftover_rows_are_orphans,
            listing_filters_orders_and_limits,
            status_counts_and_hourly_outcomes_count_the_rows,
            an_abandoned_handle_is_interrupted_once_with_its_sessions,
            a_finished_handle_is_never_treated_as_abandoned,
            an_abandoned_handle_whose_row_a_sweep_recovered_is_not_reported_again,
            a_live_workers_sweep_recovers_a_dead_workers_rows_and_keeps_its_own,
            a_recovered_rows_report_is_owed_until_its_reporter_confirms_it,
            a_dead_reporters_unconfirmed_reports_are_taken_over_once,
            an_operator_sweeps_reports_move_only_once_they_are_older_than_the_cut_off,
            listing_row_by_row_reads_what_listing_reads,
            interrupting_a_task_invalidates_its_own_sessions_only,
        }
    };
}

/// Makes, from the list, one public function per case, [`CASE_NAMES`] and
/// [`every_case`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_public_cases {
    ({} $($case:ident,)*) => {
        $(
            #[doc = concat!(
                "Conformance case `", stringify!($case), "`: runs it on one fresh ",
                "store made by `subject`.\n\n# Panics\n\nWhen the backend fails the ",
                "case; the message names the backend and the case.",
            )]
            pub fn $case<S: Storage>(subject: Subject<S>) {
                run_case(subject, stringify!($case), cases::$case::<S>);
            }
        )*

        /// The name of every conformance case, in the order of the list;
        /// each is a public function of this module and a `#[test]` of every
        /// backend that expands [`conformance_tests!`](crate::conformance_tests).
        pub const CASE_NAMES: &[&str] = &[$(stringify!($case)),*];

        /// Every conformance case with its name, for a test that runs the
        /// suite in a loop (one that proves the suite fails a broken
        /// backend, say). A backend's own tests use
        /// [`conformance_tests!`](crate::conformance_tests) instead.
        pub fn every_case<S: Storage>() -> Vec<(&'static str, fn(Subject<S>))> {
            vec![$((stringify!($case), $case::<S> as fn(Subject<S>))),*]
        }
    };
}

for_each_conformance_case!(__conformance_public_cases! {});

/// Expands into one `#[test]` per conformance case, each named after its
/// case and running it on a subject of its own.
///
/// `conformance_tests!(make_subject())` evaluates the expression (a
/// [`Subject`]) once in each test. `conformance_tests!(skippable:
/// make_subject())` takes an `Option<Subject<_>>` instead, and a test whose
/// expression is `None` passes without running its case (a Postgres backend
/// whose test server is not configured: the expression should say so
/// visibly, as `tasktrail_diesel::test_postgres_url` does). Expand it inside
/// a module of its own when the file has other tests
/// (`mod conformance { use super::*; tasktrail_core::conformance_tests!(…); }`).
#[macro_export]
macro_rules! conformance_tests {
    (skippable: $make_subject:expr $(,)?) => {
        $crate::for_each_conformance_case!(__conformance_tests! { skippable $make_subject });
    };
    ($make_subject:expr $(,)?) => {
        $crate::for_each_conformance_case!(__conformance_tests! { always $make_subject });
    };
}

/// [`conformance_tests!`](crate::conformance_tests)'s callback: the tests.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ({ always $make_subject:expr } $($case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::$case($make_subject);
            }
        )*
    };
    ({ skippable $make_subject:expr } $($case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                let subject: ::core::option::Option<$crate::conformance::Subject<_>> =
                    $make_subject;
                if let ::core::option::Option::Some(subject) = subject {
                    $crate::conformance::$case(subject);
                }
            }
        )*
    };
}

mod cases;
