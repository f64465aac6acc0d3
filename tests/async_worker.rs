//! The async face of the Worker (feature `async`): cancel safety of each
//! method, a stopped worker refusing work, and no runtime thread blocked.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tasktrail::async_worker::AsyncWorker;
use tasktrail::prelude::*;
use tasktrail::testing::{InterceptedStorage, StorageCall};

fn spec() -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 1104,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

/// A runtime whose blocking pool has exactly one thread, so a test can
/// hold it and decide when queued blocking work runs.
fn one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `future` once while the test holds the only blocking thread, so
/// its blocking half is queued and has not run; drops the future; then lets
/// the queued half run to its end.
async fn drop_before_its_blocking_half_runs<F: std::future::Future>(future: F) {
    let (release, held) = mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || held.recv());
    let mut future = Box::pin(future);
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut future)
            .await
            .is_err(),
        "it waits for the blocking pool"
    );
    drop(future);
    release.send(()).expect("release");
    holder.await.expect("holder").expect("released");
    // One thread: by the time this runs, the queued half has.
    tokio::task::spawn_blocking(|| ()).await.expect("drained");
}

/// Boots on `storage` with no background thread: upkeep runs at `tick`.
async fn boot(storage: Arc<dyn Storage>) -> AsyncWorker {
    AsyncWorker::boot(Worker::builder(storage).without_background_thread())
        .await
        .expect("boot")
}

#[test]
fn a_start_dropped_before_its_insert_began_stores_nothing() {
    let runtime = one_blocking_thread();
    let store = Arc::new(MemoryStorage::new());
    runtime.block_on(async {
        let worker = boot(store.clone()).await;
        let task = Task::queue(spec());
        let id = task.id();
        drop_before_its_blocking_half_runs(worker.start(task)).await;
        assert_eq!(store.get_task(id).expect("read"), None);
        assert_eq!(store.task_insert_statements(id), 0, "no INSERT issued");
        worker.stop().await.expect("stop");
    });
}

#[test]
fn a_start_dropped_after_its_insert_began_is_interrupted_as_abandoned() {
    let runtime = one_blocking_thread();
    // The INSERT waits until the test lets it go.
    let (inside, inside_insert) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let gate = Mutex::new((inside, released));
    let store = Arc::new(InterceptedStorage::new(MemoryStorage::new(), move |call| {
        if call == StorageCall::InsertRunning {
            let gate = gate.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = gate.0.send(());
            let _ = gate.1.recv();
        }
        Ok(())
    }));
    let recovered = Arc::new(Mutex::new(Vec::new()));
    runtime.block_on(async {
        let events = Arc::clone(&recovered);
        let worker = AsyncWorker::boot(
            Worker::builder(store.clone())
                .without_background_thread()
                .on_event(move |event| {
                    if let WorkerEvent::Recovered(task) = event {
                        events.lock().expect("events").push(task.task.id);
                    }
                }),
        )
        .await
        .expect("boot");
        let task = Task::queue(spec());
        let id = task.id();
        let mut start = Box::pin(worker.start(task));
        assert!(tokio::time::timeout(Duration::ZERO, &mut start)
            .await
            .is_err());
        // Wait here, not on the (occupied) blocking pool: the INSERT holds
        // its only thread.
        inside_insert.recv().expect("the INSERT began");
        drop(start);
        release.send(()).expect("release");
        // The INSERT commits; the Task<Running> nobody received is dropped
        // on the blocking thread, which abandons it.
        tokio::task::spawn_blocking(|| ()).await.expect("drained");
        let row = store.inner().get_task(id).expect("read").expect("a row");
        assert_eq!(row.status, TaskStatus::Running);
        worker.tick().await;
        let row = store.inner().get_task(id).expect("read").expect("a row");
        assert_eq!(row.status, TaskStatus::Interrupted);
        assert_eq!(
            row.interrupt_reason.as_deref(),
            Some(tasktrail::ABANDONED_REASON)
        );
        assert_eq!(store.inner().task_insert_statements(id), 1);
        assert_eq!(
            *recovered.lock().expect("events"),
            vec![id],
            "reported once"
        );
        worker.stop().await.expect("stop");
    });
}

#[test]
fn a_dropped_finish_still_writes_its_outcome() {
    let runtime = one_blocking_thread();
    let store = Arc::new(MemoryStorage::new());
    runtime.block_on(async {
        let worker = boot(store.clone()).await;
        let running = worker.start(Task::queue(spec())).await.expect("start");
        let id = running.id();
        drop_before_its_blocking_half_runs(
            worker.finish(running, Outcome::Success(RunReport::empty())),
        )
        .await;
        let row = store.get_task(id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Success);
        worker.stop().await.expect("stop");
    });
}

#[test]
fn the_whole_lifecycle_runs_on_the_async_face_and_a_stopped_worker_refuses_work() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = Arc::new(MemoryStorage::new());
    runtime.block_on(async {
        let worker = AsyncWorker::boot(Worker::builder(store.clone()))
            .await
            .expect("boot");
        assert_eq!(worker.health(), WorkerHealth::Healthy);
        let running = worker.start(Task::queue(spec())).await.expect("start");
        let session = SessionId::parse("sess_async").expect("session");
        let (running, recorded) = worker.record_session(running, session).await;
        recorded.expect("record");
        let finished = worker
            .finish(running, Outcome::Success(RunReport::empty()))
            .await
            .expect("finish")
            .written()
            .expect("written at once");
        assert_eq!(finished.outcome().status(), TaskStatus::Success);

        let in_flight = worker.start(Task::queue(spec())).await.expect("start");
        let report = worker.stop().await.expect("stop");
        assert_eq!(report.interrupted, vec![in_flight.id()]);
        assert_eq!(worker.health(), WorkerHealth::Stopped);
        // Every clone sees the stop: starts and finishes are refused with
        // the values handed back.
        let refused = worker
            .clone()
            .start(Task::queue(spec()))
            .await
            .expect_err("stopped");
        assert!(matches!(refused.error, StorageError::WorkerNotAlive { .. }));
        let late = worker
            .finish(in_flight, Outcome::Success(RunReport::empty()))
            .await
            .expect_err("stopped");
        assert!(late.into_parts().is_some(), "task and outcome handed back");
        assert!(worker
            .stop()
            .await
            .expect("second stop")
            .interrupted
            .is_empty());
        assert!(store.running_tasks().expect("running").is_empty());
    });
}

#[test]
fn a_dropped_record_session_still_writes_it_and_its_task_is_abandoned_not_lost() {
    let runtime = one_blocking_thread();
    let store = Arc::new(MemoryStorage::new());
    runtime.block_on(async {
        let worker = boot(store.clone()).await;
        let running = worker.start(Task::queue(spec())).await.expect("start");
        let id = running.id();
        let session = SessionId::parse("sess_dropped").expect("session");
        drop_before_its_blocking_half_runs(worker.record_session(running, session)).await;
        // The session was written; the task nobody got back is abandoned
        // and interrupted at the next tick, its session invalidated.
        let sessions = store.list_sessions().expect("sessions");
        assert_eq!(sessions.len(), 1);
        worker.tick().await;
        let row = store.get_task(id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted);
        assert!(store.list_sessions().expect("sessions")[0]
            .invalidated_at
            .is_some());
        worker.stop().await.expect("stop");
    });
}

#[test]
fn a_dropped_stop_and_a_dropped_boot_still_complete() {
    let runtime = one_blocking_thread();
    let store = Arc::new(MemoryStorage::new());
    runtime.block_on(async {
        let worker = boot(store.clone()).await;
        let running = worker.start(Task::queue(spec())).await.expect("start");
        let id = running.id();
        drop_before_its_blocking_half_runs(worker.stop()).await;
        assert_eq!(worker.health(), WorkerHealth::Stopped);
        let row = store.get_task(id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted, "the stop ran");
        drop(running);

        // A boot dropped before it ran: the boot still completes on the
        // blocking pool, and the worker it made is stopped (dropping a
        // Worker stops it): nothing stays registered as alive.
        let storage: Arc<dyn Storage> = store.clone();
        drop_before_its_blocking_half_runs(AsyncWorker::boot(
            Worker::builder(storage).without_background_thread(),
        ))
        .await;
        let workers = store.list_workers().expect("workers");
        assert_eq!(workers.len(), 2, "{workers:?}");
        assert!(
            workers
                .iter()
                .all(|w| w.state != tasktrail::WorkerState::Alive),
            "{workers:?}"
        );
    });
}
