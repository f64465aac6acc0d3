//! The dispatcher: starts a task (its `running` row committed first), runs
//! its agent on a tokio task, and finishes it with one UPDATE: with the
//! agent's outcome, or `cancelled` on request, or `interrupted` when the
//! server stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tasktrail::async_worker::AsyncWorker;
use tasktrail::prelude::*;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::agent::{Agent, AgentJob, SimulatedEnd};

/// The reason written on the rows a stopping server interrupts.
pub const SERVER_STOPPED_REASON: &str = "tasktrail-server stopped before the task finished";

/// How often a finish that hit a storage failure is tried again before the
/// task is left to the worker (dropping it abandons it: interrupted).
const FINISH_ATTEMPTS: u32 = 5;

/// How many dispatches may be in flight at once (their INSERT, then their
/// agent's run until the finish landed) when not configured otherwise
/// (`--max-concurrent-dispatches`).
pub const DEFAULT_MAX_CONCURRENT_DISPATCHES: usize = 256;

/// Why a dispatch did not start. Nothing was written either way.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// `limit` dispatches are already in flight: try again later (the API
    /// answers `503` with `Retry-After`).
    #[error("{limit} dispatches are already in flight; try again later")]
    Busy {
        /// The cap (`--max-concurrent-dispatches`).
        limit: usize,
    },
    /// The `running` row could not be written.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// What ends a running task early.
enum Control {
    /// `POST /tasks/{id}/cancel`.
    Cancel(oneshot::Sender<Result<(), String>>),
    /// The server is stopping.
    Interrupt(InterruptReason, oneshot::Sender<Result<(), String>>),
}

/// The answer to a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelAnswer {
    /// The row is now `cancelled`.
    Cancelled,
    /// No task with this id is running on this server (it finished, or it
    /// never ran here).
    NotRunningHere,
    /// The `cancelled` UPDATE could not be written.
    Failed(String),
}

/// Starts tasks, runs their agents, finishes them. Cheap to share (`Arc`).
pub struct Dispatcher {
    worker: AsyncWorker,
    agent: Arc<dyn Agent>,
    running: Mutex<HashMap<TaskId, oneshot::Sender<Control>>>,
    /// One permit per dispatch in flight; never waited for.
    slots: Arc<Semaphore>,
    limit: usize,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("worker", &self.worker)
            .field("running", &self.lock().len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher that runs `agent` under `worker`, at most
    /// [`DEFAULT_MAX_CONCURRENT_DISPATCHES`] at once.
    pub fn new(worker: AsyncWorker, agent: Arc<dyn Agent>) -> Arc<Self> {
        Self::with_limit(worker, agent, DEFAULT_MAX_CONCURRENT_DISPATCHES)
    }

    /// A dispatcher that runs `agent` under `worker`, at most `limit`
    /// dispatches in flight at once (at least 1): one more is refused
    /// ([`DispatchError::Busy`]), never queued.
    pub fn with_limit(worker: AsyncWorker, agent: Arc<dyn Agent>, limit: usize) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            worker,
            agent,
            running: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        })
    }

    /// How many dispatches may be in flight at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The worker it dispatches under.
    pub fn worker(&self) -> &AsyncWorker {
        &self.worker
    }

    /// Starts a task and returns its id once its `running` row is
    /// committed; the agent then runs on its own tokio task. With
    /// [`limit`](Self::limit) dispatches already in flight (starting, or
    /// running until their finish landed) it writes nothing and answers
    /// [`DispatchError::Busy`] at once.
    ///
    /// Cancel safety: as [`AsyncWorker::start`]; a request dropped after the
    /// INSERT leaves an abandoned task that the worker interrupts at once.
    pub async fn dispatch(
        self: &Arc<Self>,
        spec: TaskSpec,
        duration: Duration,
        end: SimulatedEnd,
    ) -> Result<TaskId, DispatchError> {
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| DispatchError::Busy { limit: self.limit })?;
        let running = self.worker.start(Task::queue(spec.clone())).await?;
        let id = running.id();
        let (control, controlled) = oneshot::channel();
        self.lock().insert(id, control);
        let job = AgentJob {
            task: id,
            spec,
            duration,
            end,
        };
        tokio::spawn(Arc::clone(self).run(running, job, controlled, slot));
        Ok(id)
    }

    /// Runs the agent and finishes the task; `_slot` is given back once
    /// the finish is done.
    async fn run(
        self: Arc<Self>,
        running: Task<Running>,
        job: AgentJob,
        mut controlled: oneshot::Receiver<Control>,
        _slot: OwnedSemaphorePermit,
    ) {
        let id = running.id();
        let agent = self.agent.run(job);
        let (outcome, reply) = tokio::select! {
            outcome = agent => (outcome, None),
            Ok(control) = &mut controlled => match control {
                Control::Cancel(reply) => (Outcome::Cancelled(RunReport::empty()), Some(reply)),
                Control::Interrupt(reason, reply) => (Outcome::Interrupted(reason), Some(reply)),
            },
        };
        self.lock().remove(&id);
        let written = self.finish(running, outcome).await;
        if let Some(reply) = reply {
            let _ = reply.send(written);
        }
    }

    /// The one UPDATE. A transient storage failure is the worker's to
    /// ride out: it keeps the outcome and retries until it lands
    /// (`FinishReceipt::Queued`). A permanent one is tried again a few
    /// times; if it never lands, the task is dropped: abandoned, so the
    /// worker writes `interrupted` (or, if the store stays down, the next
    /// sweep does).
    async fn finish(&self, running: Task<Running>, outcome: Outcome) -> Result<(), String> {
        let mut attempt = (running, outcome);
        let mut backoff = Duration::from_millis(50);
        for tries in 1..=FINISH_ATTEMPTS {
            let (running, outcome) = attempt;
            match self.worker.finish(running, outcome).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    let message = error.to_string();
                    match error.into_parts() {
                        Some(parts) if tries < FINISH_ATTEMPTS => {
                            eprintln!("tasktrail-server: {message}; retrying");
                            attempt = parts;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                        _ => {
                            eprintln!("tasktrail-server: {message}");
                            return Err(message);
                        }
                    }
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Cancels a task running here: its row becomes `cancelled` (one
    /// UPDATE) before this returns.
    pub async fn cancel(&self, id: TaskId) -> CancelAnswer {
        let Some(control) = self.lock().remove(&id) else {
            return CancelAnswer::NotRunningHere;
        };
        let (reply, answer) = oneshot::channel();
        if control.send(Control::Cancel(reply)).is_err() {
            return CancelAnswer::NotRunningHere;
        }
        match answer.await {
            Ok(Ok(())) => CancelAnswer::Cancelled,
            Ok(Err(error)) => CancelAnswer::Failed(error),
            // The agent ended first: the task finished on its own.
            Err(_) => CancelAnswer::NotRunningHere,
        }
    }

    /// Interrupts every task still running here with `reason` (one UPDATE
    /// each), waiting at most `deadline` for them; returns how many were
    /// written. What is left is interrupted by [`AsyncWorker::stop`].
    pub async fn interrupt_all(&self, reason: &InterruptReason, deadline: Duration) -> usize {
        let controls: Vec<_> = self.lock().drain().collect();
        let mut answers = Vec::new();
        for (_, control) in controls {
            let (reply, answer) = oneshot::channel();
            if control
                .send(Control::Interrupt(reason.clone(), reply))
                .is_ok()
            {
                answers.push(answer);
            }
        }
        let wait_for_all = async {
            let mut written = 0;
            for answer in answers {
                if let Ok(Ok(())) = answer.await {
                    written += 1;
                }
            }
            written
        };
        tokio::time::timeout(deadline, wait_for_all)
            .await
            .unwrap_or(0)
    }

    /// How many tasks are running here.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, oneshot::Sender<Control>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
