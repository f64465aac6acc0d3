//! The plug-in point for agents: what runs a dispatched task.
//!
//! The server ships [`SimulatedAgent`] (sleeps, then succeeds or fails). A
//! real deployment implements [`Agent`] for its agent runtime (the Claude
//! SDK, a subprocess, a remote runner) and hands it to
//! [`Dispatcher::new`](crate::Dispatcher::new); nothing else changes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tasktrail::prelude::*;

/// A boxed future an [`Agent`] returns.
pub type AgentFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// How a simulated task ends (the request's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulatedEnd {
    /// `success`.
    Success,
    /// `failure`.
    Failure,
}

/// What the dispatcher asks an agent to run.
#[derive(Debug, Clone)]
pub struct AgentJob {
    /// The task's id (its `task_history` row exists and is `running`).
    pub task: TaskId,
    /// What to work on.
    pub spec: TaskSpec,
    /// The simulator's knobs (a real agent ignores them): how long to run.
    pub duration: Duration,
    /// The simulator's knobs: how to end.
    pub end: SimulatedEnd,
}

/// Runs a task's agent to its end and returns its outcome (with the tokens,
/// cost and artifacts it reports). The future is dropped when the task is
/// cancelled or the server stops: the dispatcher then writes the
/// `cancelled` or `interrupted` outcome itself.
pub trait Agent: Send + Sync + 'static {
    /// Starts the agent on `job`.
    fn run(&self, job: AgentJob) -> AgentFuture;
}

/// The simulated agent: sleeps `duration`, then ends as asked, reporting
/// tokens and cost that grow with the time it ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedAgent;

impl Agent for SimulatedAgent {
    fn run(&self, job: AgentJob) -> AgentFuture {
        Box::pin(async move {
            tokio::time::sleep(job.duration).await;
            let millis = u32::try_from(job.duration.as_millis()).unwrap_or(u32::MAX);
            let report = RunReport {
                input_tokens: 1000u32.saturating_add(millis),
                output_tokens: 200u32.saturating_add(millis / 4),
                cost_usd: CostUsd::new(0.01 + f64::from(millis) / 100_000.0)
                    .unwrap_or(RunReport::empty().cost_usd),
                turns: 1 + millis / 1000,
                artifacts: vec![format!("{}#{}", job.spec.repo(), job.spec.issue_number())],
            };
            match job.end {
                SimulatedEnd::Success => Outcome::Success(report),
                SimulatedEnd::Failure => Outcome::Failure(report),
            }
        })
    }
}
