//! The async face of the [`Worker`] (feature `async`, tokio).
//!
//! [`AsyncWorker`] is what an async server (tokio, axum) holds: the same
//! worker, with `boot`, `start`, `record_session`, `finish` and `stop` as
//! `async fn`s that never block the runtime. Every storage call runs on
//! tokio's blocking pool (`spawn_blocking`); the heartbeat, the periodic
//! sweep and the abandoned-task upkeep stay on the worker's own background
//! thread, so they keep running however busy (or blocked) the async
//! runtime is, and a server needs no task of its own to keep its worker
//! alive. The Diesel backends are synchronous; `diesel-async` would only
//! serve Postgres, and the blocking pool already keeps every runtime thread
//! free (docs/performance.md measures what the hop costs).
//!
//! It is cheap to clone (an `Arc`): hand a clone to every request handler.
//!
//! # Cancel safety
//!
//! A request future may be dropped at any `.await` (the client went away, a
//! timeout fired). Each method says what happens then; in short, nothing is
//! lost and nothing is left `running`:
//!
//! - [`start`](AsyncWorker::start) dropped before its INSERT began: nothing
//!   is stored. Dropped after: the row commits, and the `Task<Running>`
//!   nobody received is dropped, which abandons it: the worker interrupts
//!   it (reason [`ABANDONED_REASON`](crate::ABANDONED_REASON), sessions
//!   invalidated, one `[recovery]` line as a [`WorkerEvent::Recovered`](crate::runtime::WorkerEvent::Recovered)) at
//!   once, on its background thread.
//! - [`finish`](AsyncWorker::finish) dropped: the UPDATE still runs to its
//!   end on the blocking pool, with the outcome it was given. If it fails,
//!   the handed-back task is dropped and so abandoned, as above.
//! - [`record_session`](AsyncWorker::record_session) dropped: the session
//!   write still runs; the task it held is dropped and so abandoned.
//! - [`stop`](AsyncWorker::stop) dropped: the stop still completes.
//!
//! No method panics on cancellation. A panic inside a storage call is
//! resumed in the caller, as the blocking API would panic. If the runtime
//! shuts down before a call ran, its future never resolves (the runtime is
//! dropping it anyway).
//!
//! # Example: an axum handler that dispatches a task
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
//! use tasktrail::async_worker::AsyncWorker;
//! use tasktrail::prelude::*;
//!
//! async fn dispatch(
//!     State(worker): State<AsyncWorker>,
//!     Json(input): Json<serde_json::Value>,
//! ) -> Result<(StatusCode, String), (StatusCode, String)> {
//!     let field = |name: &str| input[name].as_str().unwrap_or_default().to_owned();
//!     let spec = TaskSpec::validate(TaskSpecInput {
//!         repo: field("repo"),
//!         issue_number: input["issue_number"].as_i64().unwrap_or(-1),
//!         user: field("user"),
//!         agent: field("agent"),
//!         agent_type: field("agent_type"),
//!         model: field("model"),
//!         provider: field("provider"),
//!     })
//!     .map_err(|error| (StatusCode::UNPROCESSABLE_ENTITY, error.to_string()))?;
//!     // The `running` row is committed before the answer leaves.
//!     let running = worker
//!         .start(Task::queue(spec))
//!         .await
//!         .map_err(|error| (StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
//!     let id = running.id();
//!     // The agent runs after the answer; its finish is the one UPDATE.
//!     tokio::spawn(async move {
//!         let report = RunReport::empty(); // the agent's real tokens and cost
//!         // A transient store failure is queued inside the worker and
//!         // retried until it lands; only a permanent one comes back here.
//!         if let Err(error) = worker.finish(running, Outcome::Success(report)).await {
//!             eprintln!("{error}"); // dropping the handed-back task abandons it
//!         }
//!     });
//!     Ok((StatusCode::CREATED, id.to_string()))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let storage = Arc::new(SqliteStorage::open("tasktrail.db")?);
//!     let worker = AsyncWorker::boot(Worker::builder(storage)).await?;
//!     let app = Router::new()
//!         .route("/tasks", post(dispatch))
//!         .with_state(worker.clone());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     worker.stop().await?;
//!     Ok(())
//! }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tasktrail_core::{
    FinishError, Outcome, Queued, RecoveredTask, Running, SessionId, StartError, Storage,
    StorageError, Task, WorkerId, WorkerRegistration,
};

use crate::runtime::{
    BootError, FinishReceipt, StopError, StopReport, Worker, WorkerBuilder, WorkerHealth,
};

/// A [`Worker`] for async servers: every storage call on tokio's blocking
/// pool, never on a runtime thread. Clone it into each handler. See the
/// [module docs](self) for cancel safety.
#[derive(Clone)]
pub struct AsyncWorker {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` once stopped. Calls hold the read lock for the length of
    /// their storage call; `stop` takes the write lock, so it waits for
    /// the calls under way and no call starts on a stopped worker.
    worker: RwLock<Option<Worker>>,
    id: WorkerId,
    registration: WorkerRegistration,
    storage: Arc<dyn Storage>,
    recovered_at_boot: Vec<RecoveredTask>,
}

impl fmt::Debug for AsyncWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWorker")
            .field("id", &self.shared.id)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

/// Runs `work` on the blocking pool and waits for it without blocking the
/// runtime. A panic in `work` is resumed here; if the runtime shuts down
/// before `work` ran, the returned future never resolves (it is being
/// dropped).
async fn on_blocking_pool<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => std::future::pending().await,
        },
    }
}

/// Set when the future that owns it is dropped, so the blocking half of a
/// start that has not begun yet knows nobody waits for it.
struct DroppedFlag(Arc<AtomicBool>);

impl Drop for DroppedFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl AsyncWorker {
    /// Boots the worker ([`WorkerBuilder::boot`]: register, sweep, start
    /// the background thread) on the blocking pool.
    ///
    /// Cancel safety: dropped before it finished, the boot still completes
    /// on the blocking pool and the worker it made is stopped at once
    /// (dropping a [`Worker`] stops it): nothing stays registered as alive.
    pub async fn boot(builder: WorkerBuilder) -> Result<Self, BootError> {
        let worker = on_blocking_pool(move || builder.boot()).await?;
        Ok(Self::from_worker(worker))
    }

    /// Wraps a worker booted with the blocking API.
    pub fn from_worker(worker: Worker) -> Self {
        Self {
            shared: Arc::new(Shared {
                id: worker.id(),
                registration: worker.registration().clone(),
                storage: Arc::clone(worker.storage()),
                recovered_at_boot: worker.recovered_at_boot().to_vec(),
                worker: RwLock::new(Some(worker)),
            }),
        }
    }

    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.shared.id
    }

    /// What the worker registered.
    pub fn registration(&self) -> &WorkerRegistration {
        &self.shared.registration
    }

    /// The store it writes to (for reads: `get_task`, `list_tasks`; call
    /// them on the blocking pool too, they do IO).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// The tasks its boot sweep recovered.
    pub fn recovered_at_boot(&self) -> &[RecoveredTask] {
        &self.shared.recovered_at_boot
    }

    /// The worker's health ([`Worker::health`]); `Stopped` once stopped.
    /// Reads memory only: safe to call on a runtime thread.
    pub fn health(&self) -> WorkerHealth {
        // Never waits: while a stop holds the worker (up to its deadline),
        // the worker is stopping, so it reads as stopped.
        match self.shared.worker.try_read() {
            Ok(worker) => match worker.as_ref() {
                Some(worker) => worker.health(),
                None => WorkerHealth::Stopped,
            },
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                match poisoned.into_inner().as_ref() {
                    Some(worker) => worker.health(),
                    None => WorkerHealth::Stopped,
                }
            }
            Err(std::sync::TryLockError::WouldBlock) => WorkerHealth::Stopped,
        }
    }

    /// Starts a task ([`Worker::start`]): returns once its `running` row
    /// is committed.
    ///
    /// Cancel safety: dropped before the INSERT began, nothing is stored
    /// and the queued task is dropped. Dropped after, the row commits and
    /// the running task nobody received is abandoned: the worker interrupts
    /// it at once (see the [module docs](self)). Either way no row stays
    /// `running`.
    ///
    /// On a stopped worker it fails with [`StorageError::WorkerNotAlive`]
    /// and hands the task back.
    pub async fn start(&self, task: Task<Queued>) -> Result<Task<Running>, StartError> {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DroppedFlag(Arc::clone(&dropped));
        let shared = Arc::clone(&self.shared);
        let result = on_blocking_pool(move || {
            if dropped.load(Ordering::SeqCst) {
                // Nobody waits: store nothing.
                return None;
            }
            let worker = shared.read();
            Some(match worker.as_ref() {
                Some(worker) => worker.start(task),
                None => Err(StartError::new(shared.not_alive(), task)),
            })
        })
        .await;
        drop(flag);
        match result {
            Some(result) => result,
            // The flag is set only once this future is dropped, so a
            // future still polled never sees `None`.
            None => unreachable!("a start skipped while its caller still waits"),
        }
    }

    /// Records the SDK session a running task runs under
    /// ([`Worker::record_session`]). The task moves to the blocking pool
    /// and comes back with the result.
    ///
    /// Cancel safety: dropped, the write still runs, and the task it held
    /// is dropped, which abandons it (see the [module docs](self)).
    pub async fn record_session(
        &self,
        task: Task<Running>,
        session_id: SessionId,
    ) -> (Task<Running>, Result<(), StorageError>) {
        let shared = Arc::clone(&self.shared);
        on_blocking_pool(move || {
            let result = match shared.read().as_ref() {
                Some(worker) => worker.record_session(&task, session_id),
                None => Err(shared.not_alive()),
            };
            (task, result)
        })
        .await
    }

    /// Finishes a task with its one guarded UPDATE ([`Worker::finish`]): a
    /// transient storage failure queues the outcome inside the worker, which
    /// retries it until it lands ([`FinishReceipt::Queued`]); on a permanent
    /// one the task and its outcome come back in the error
    /// ([`FinishError::into_parts`]).
    ///
    /// Cancel safety: dropped, the UPDATE still runs to its end with the
    /// outcome it was given; if it fails, the handed-back task is dropped
    /// and so abandoned (see the [module docs](self)).
    ///
    /// On a stopped worker it fails with [`StorageError::WorkerNotAlive`]
    /// and hands the task and outcome back (a stop already interrupted
    /// the row).
    pub async fn finish(
        &self,
        task: Task<Running>,
        outcome: Outcome,
    ) -> Result<FinishReceipt, FinishError> {
        let shared = Arc::clone(&self.shared);
        on_blocking_pool(move || match shared.read().as_ref() {
            Some(worker) => worker.finish(task, outcome),
            None => Err(FinishError::Storage {
                error: shared.not_alive(),
                task: Box::new(task),
                outcome: Box::new(outcome),
            }),
        })
        .await
    }

    /// Runs the worker's due upkeep now ([`Worker::tick`]); only needed
    /// with [`WorkerBuilder::without_background_thread`].
    pub async fn tick(&self) {
        let shared = Arc::clone(&self.shared);
        on_blocking_pool(move || {
            if let Some(worker) = shared.read().as_ref() {
                worker.tick();
            }
        })
        .await;
    }

    /// Stops the worker ([`Worker::stop`]): waits for the calls under way,
    /// writes the queued outcomes, interrupts what is still in flight,
    /// deregisters; if the store stays unreachable past the stop deadline,
    /// [`StopError::unwritten`] names what was not written. Later calls on
    /// any clone fail with [`StorageError::WorkerNotAlive`]; a second stop
    /// returns an empty report.
    ///
    /// Cancel safety: dropped, the stop still completes on the blocking
    /// pool.
    pub async fn stop(&self) -> Result<StopReport, StopError> {
        let shared = Arc::clone(&self.shared);
        on_blocking_pool(move || {
            let worker = shared
                .worker
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match worker {
                Some(worker) => worker.stop(),
                None => Ok(StopReport::default()),
            }
        })
        .await
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Worker>> {
        self.worker.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn not_alive(&self) -> StorageError {
        StorageError::WorkerNotAlive { id: self.id }
    }
}
