//! Guards of single statements, on every backend, each written to fail
//! when one term of one statement is dropped (see the mutants list in
//! docs/testing.md).

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use tasktrail::*;

mod common;
use common::Backend;

fn spec() -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 77,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn key() -> SessionKey {
    SessionKey {
        repo: "acme/widgets".into(),
        issue_number: 77,
        agent: "fixer".into(),
    }
}

fn completed(status: TaskStatus) -> Outcome {
    let report = RunReport {
        input_tokens: 10,
        output_tokens: 20,
        cost_usd: CostUsd::new(0.01).expect("cost"),
        turns: 1,
        artifacts: vec![],
    };
    match status {
        TaskStatus::Success => Outcome::Success(report),
        TaskStatus::Failure => Outcome::Failure(report),
        TaskStatus::Cancelled => Outcome::Cancelled(report),
        TaskStatus::AbortedNoSkill => Outcome::AbortedNoSkill(report),
        other => panic!("{other:?} is not a completed status"),
    }
}

fn offered<B: Backend>(store: &B) -> Option<String> {
    store
        .resumable_session(&key())
        .expect("resumable")
        .map(|session| session.session_id.as_str().to_owned())
}

/// The status filter alone hides every invalidated session in the other
/// tests (only an interrupted task's sessions are invalidated by the
/// library). A session invalidated by hand while its task is *completed*
/// must never be offered: kills `resumable_session` losing its
/// `invalidated_at IS NULL` term. For each completed status: two runs of
/// one key, the newer offered; invalidate it, the older is offered;
/// invalidate that, none is.
fn a_completed_tasks_session_invalidated_by_hand_is_never_resumed<B: Backend>() {
    for status in [
        TaskStatus::Success,
        TaskStatus::Failure,
        TaskStatus::Cancelled,
        TaskStatus::AbortedNoSkill,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(store) = B::fresh(dir.path()) else {
            return;
        };
        let clock = Arc::new(ManualClock::starting_at(
            Utc.with_ymd_and_hms(2026, 5, 11, 12, 0, 0)
                .single()
                .expect("time"),
        ));
        let worker = RegisteredWorker::register(
            &store,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid: 4242,
                process_start_marker: "boot:4242".into(),
                started_at: clock.now(),
                host_identity: None,
            },
            clock.clone(),
        )
        .expect("register");
        for session in ["sess_older", "sess_newer"] {
            clock.advance(Duration::minutes(1));
            let task = Task::queue(spec()).start(&worker, &store).expect("start");
            task.record_session(SessionId::parse(session).expect("id"), &store)
                .expect("record");
            task.finish(completed(status), &store).expect("finish");
        }
        assert_eq!(offered(&store).as_deref(), Some("sess_newer"), "{status:?}");

        store.invalidate_session_by_hand(&SessionId::parse("sess_newer").expect("id"), clock.now());
        assert_eq!(
            offered(&store).as_deref(),
            Some("sess_older"),
            "{status:?}: an invalidated session is never resumed"
        );
        store.invalidate_session_by_hand(&SessionId::parse("sess_older").expect("id"), clock.now());
        assert_eq!(offered(&store), None, "{status:?}");
    }
}

#[test]
fn memory_never_resumes_a_session_invalidated_by_hand() {
    a_completed_tasks_session_invalidated_by_hand_is_never_resumed::<MemoryStorage>();
}

#[test]
fn sqlite_never_resumes_a_session_invalidated_by_hand() {
    a_completed_tasks_session_invalidated_by_hand_is_never_resumed::<SqliteStorage>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_never_resumes_a_session_invalidated_by_hand() {
    a_completed_tasks_session_invalidated_by_hand_is_never_resumed::<common::PostgresBackend>();
}

/// Declares the listed workers dead (`ProcessGone`) and every other owner
/// alive.
struct DeadOnly(Vec<WorkerId>);

impl tasktrail::backend::LivenessJudge for DeadOnly {
    fn judge(&self, owner: Option<&tasktrail::backend::OwnerFacts>) -> Liveness {
        match owner {
            Some(facts) if self.0.contains(&facts.record.id) => {
                Liveness::Dead(DeathCause::ProcessGone {
                    host: facts.record.host.clone(),
                    pid: facts.record.pid,
                })
            }
            _ => Liveness::Alive,
        }
    }
}

struct World<B: Backend> {
    store: B,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl<B: Backend> World<B> {
    fn new() -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = B::fresh(dir.path())?;
        let clock = Arc::new(ManualClock::starting_at(
            Utc.with_ymd_and_hms(2026, 5, 11, 12, 0, 0)
                .single()
                .expect("time"),
        ));
        Some(Self {
            store,
            clock,
            _dir: dir,
        })
    }

    fn worker(&self, pid: u32) -> RegisteredWorker {
        RegisteredWorker::register(
            &self.store,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                started_at: self.clock.now(),
                host_identity: None,
            },
            self.clock.clone(),
        )
        .expect("register")
    }

    fn record(&self, worker: WorkerId) -> WorkerRecord {
        self.store
            .list_workers()
            .expect("workers")
            .into_iter()
            .find(|record| record.id == worker)
            .expect("the worker has a row")
    }

    fn sweep(&self, by: &RegisteredWorker, dead: &[WorkerId]) -> Vec<RecoveredTask> {
        self.store
            .recover_orphans(
                &tasktrail::backend::RecoveryRequest {
                    recovering_worker: by.id(),
                    now: self.clock.now(),
                    mode: tasktrail::backend::SweepMode::Apply,
                },
                &DeadOnly(dead.to_vec()),
            )
            .expect("sweep")
    }
}

/// A heartbeat never moves `heartbeat_at` back (a clock stepping back, a
/// late heartbeat): kills the heartbeat UPDATE losing its `heartbeat_at <
/// ?` term (SQLite) or its `GREATEST` (Postgres).
fn a_heartbeat_never_moves_back<B: Backend>() {
    let Some(w) = World::<B>::new() else {
        return;
    };
    let worker = w.worker(10);
    // Its last heartbeat is ten minutes ahead of every clock.
    w.store.age_heartbeat(worker.id(), -Duration::minutes(10));
    let ahead = w.record(worker.id()).heartbeat_at;
    w.store
        .heartbeat_worker(worker.id(), w.clock.now())
        .expect("heartbeat");
    assert_eq!(
        w.record(worker.id()).heartbeat_at,
        ahead,
        "a heartbeat never moves heartbeat_at back"
    );
}

/// Deregistering a worker a sweep declared dead keeps it `dead` (and its
/// `stopped_at`): kills the deregistration losing its `state = 'alive'`
/// term.
fn deregistering_a_worker_declared_dead_keeps_it_dead<B: Backend>() {
    let Some(w) = World::<B>::new() else {
        return;
    };
    let victim = w.worker(10);
    let rescuer = w.worker(11);
    let orphan = Task::queue(spec()).start(&victim, &w.store).expect("start");
    assert_eq!(w.sweep(&rescuer, &[victim.id()]).len(), 1);
    let dead = w.record(victim.id());
    assert_eq!(dead.state, WorkerState::Dead);
    w.clock.advance(Duration::minutes(1));
    w.store
        .deregister_worker(victim.id(), w.clock.now())
        .expect("deregister");
    assert_eq!(w.record(victim.id()), dead, "a dead worker stays dead");
    drop(orphan);
}

/// A sweep that recovers a deregistered worker's leftover rows leaves the
/// worker `stopped` (with its `stopped_at`): kills the sweep's `workers`
/// UPDATE losing its `state = 'alive'` term.
fn a_sweep_leaves_a_stopped_owner_stopped<B: Backend>() {
    let Some(w) = World::<B>::new() else {
        return;
    };
    let owner = w.worker(10);
    let rescuer = w.worker(11);
    let leftover = Task::queue(spec()).start(&owner, &w.store).expect("start");
    w.store
        .deregister_worker(owner.id(), w.clock.now())
        .expect("deregister");
    let stopped = w.record(owner.id());
    assert_eq!(stopped.state, WorkerState::Stopped);
    w.clock.advance(Duration::minutes(1));
    assert_eq!(w.sweep(&rescuer, &[owner.id()]).len(), 1);
    assert_eq!(
        w.record(owner.id()),
        stopped,
        "a stopped worker stays stopped"
    );
    drop(leftover);
}

/// A session is recorded only by the task's own worker and only while the
/// task runs: kills `record_session` losing its owner or its `running`
/// term.
fn a_session_is_recorded_only_by_the_owner_of_a_running_task<B: Backend>() {
    let Some(w) = World::<B>::new() else {
        return;
    };
    let owner = w.worker(10);
    let other = w.worker(11);
    let task = Task::queue(spec()).start(&owner, &w.store).expect("start");
    let session = |id: &str, worker: WorkerId| tasktrail::backend::NewSession {
        session_id: SessionId::parse(id).expect("id"),
        task_id: task.id(),
        worker,
        repo: "acme/widgets".into(),
        issue_number: 77,
        agent: "fixer".into(),
        created_at: w.clock.now(),
    };
    let foreign = w.store.record_session(&session("sess_foreign", other.id()));
    assert!(
        matches!(foreign, Err(StorageError::TaskNotRunning { .. })),
        "another worker's task: {foreign:?}"
    );
    assert_eq!(w.store.list_sessions().expect("sessions"), vec![]);
    let id = task.id();
    let session = |id_text: &str, worker: WorkerId| tasktrail::backend::NewSession {
        session_id: SessionId::parse(id_text).expect("id"),
        task_id: id,
        worker,
        repo: "acme/widgets".into(),
        issue_number: 77,
        agent: "fixer".into(),
        created_at: w.clock.now(),
    };
    task.finish(completed(TaskStatus::Success), &w.store)
        .expect("finish");
    let late = w.store.record_session(&session("sess_late", owner.id()));
    assert!(
        matches!(late, Err(StorageError::TaskNotRunning { .. })),
        "a finished task: {late:?}"
    );
    assert_eq!(w.store.list_sessions().expect("sessions"), vec![]);
}

/// A sweep invalidates only sessions still valid: one invalidated by hand
/// earlier keeps its time and reason and is not counted. Kills the sweep's
/// session UPDATE losing its `invalidated_at IS NULL` term.
fn a_sweep_leaves_a_session_invalidated_earlier_alone<B: Backend>() {
    let Some(w) = World::<B>::new() else {
        return;
    };
    let victim = w.worker(10);
    let rescuer = w.worker(11);
    let orphan = Task::queue(spec()).start(&victim, &w.store).expect("start");
    for id in ["sess_earlier", "sess_valid"] {
        orphan
            .record_session(SessionId::parse(id).expect("id"), &w.store)
            .expect("record");
    }
    w.store.invalidate_session_by_hand(
        &SessionId::parse("sess_earlier").expect("id"),
        w.clock.now(),
    );
    let earlier = |w: &World<B>| {
        w.store
            .list_sessions()
            .expect("sessions")
            .into_iter()
            .find(|s| s.session_id.as_str() == "sess_earlier")
            .expect("session")
    };
    let before = earlier(&w);
    w.clock.advance(Duration::minutes(1));
    let recovered = w.sweep(&rescuer, &[victim.id()]);
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].sessions_invalidated, 1, "only the valid one");
    assert_eq!(earlier(&w), before, "an earlier invalidation is kept");
    drop(orphan);
}

/// An interrupted finish invalidates only the task's sessions still valid:
/// one invalidated by hand earlier keeps its time and reason. Kills the
/// finish's session UPDATE (`invalidate_sessions_of_task`) losing its
/// `invalidated_at IS NULL` term.
fn an_interrupted_finish_leaves_a_session_invalidated_earlier_alone<B: Backend>() {
    let Some(w) = World::<B>::new() else {
        return;
    };
    let owner = w.worker(10);
    let task = Task::queue(spec()).start(&owner, &w.store).expect("start");
    for id in ["sess_earlier", "sess_valid"] {
        task.record_session(SessionId::parse(id).expect("id"), &w.store)
            .expect("record");
    }
    w.store.invalidate_session_by_hand(
        &SessionId::parse("sess_earlier").expect("id"),
        w.clock.now(),
    );
    let session = |w: &World<B>, id: &str| {
        w.store
            .list_sessions()
            .expect("sessions")
            .into_iter()
            .find(|s| s.session_id.as_str() == id)
            .expect("session")
    };
    let before = session(&w, "sess_earlier");
    w.clock.advance(Duration::minutes(1));
    task.finish(
        Outcome::Interrupted(InterruptReason::new("worker received SIGTERM").expect("reason")),
        &w.store,
    )
    .expect("finish");
    assert_eq!(
        session(&w, "sess_earlier"),
        before,
        "an earlier invalidation is kept"
    );
    assert!(
        session(&w, "sess_valid").invalidated_at.is_some(),
        "the valid one is invalidated"
    );
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $case() { super::$case::<tasktrail::MemoryStorage>(); })*
        }
        mod sqlite {
            $(#[test] fn $case() { super::$case::<tasktrail::SqliteStorage>(); })*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test] fn $case() { super::$case::<super::common::PostgresBackend>(); })*
        }
    };
}

on_every_backend!(
    a_heartbeat_never_moves_back,
    deregistering_a_worker_declared_dead_keeps_it_dead,
    a_sweep_leaves_a_stopped_owner_stopped,
    a_session_is_recorded_only_by_the_owner_of_a_running_task,
    a_sweep_leaves_a_session_invalidated_earlier_alone,
    an_interrupted_finish_leaves_a_session_invalidated_earlier_alone,
);
