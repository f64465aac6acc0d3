//! `tasktrail worker`: a simulated agent worker that uses the library the way
//! the dispatch server does.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tasktrail::{
    CostUsd, FinishError, FinishReceipt, InterruptReason, Outcome, RunReport, SessionId, StopError,
    Storage, Task, TaskSpec, TaskSpecInput, Worker, WorkerEvent,
};

use crate::CliResult;

/// Arguments of `tasktrail worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// How many tasks to run (0: boot, recover, stop).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    tasks: u32,
    /// How many tasks run at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    concurrency: u32,
    /// How long each task works: 250ms, 2s, 1m, 1h, or plain seconds.
    #[arg(long, default_value = "2s")]
    task_duration: String,
    /// Probability in [0, 1] that a task ends in failure.
    #[arg(long, default_value_t = 0.1)]
    fail_rate: f64,
    /// Probability in [0, 1] that a task's simulated work panics. The worker
    /// keeps running the rest; a panicked task's row becomes `interrupted`
    /// (abandoned) with one `[recovery]` line.
    #[arg(long, default_value_t = 0.0)]
    panic_rate: f64,
    /// How often the worker heartbeats and handles abandoned tasks.
    #[arg(long, default_value = "5s")]
    heartbeat_interval: String,
    /// How often the worker sweeps other workers' dead rows while it runs.
    #[arg(long, default_value = "30s")]
    sweep_interval: String,
    /// On SIGTERM or SIGINT (or when its tasks are done), how long the
    /// worker keeps retrying the outcomes an unreachable store refuses
    /// before it names them (`unwritten <id> <status>` on stderr) and
    /// exits 1.
    #[arg(long, default_value = "10s")]
    stop_deadline: String,
}

/// Validated worker arguments.
#[derive(Debug)]
pub(crate) struct Plan {
    tasks: u32,
    concurrency: u32,
    task_duration: Duration,
    fail_rate: f64,
    panic_rate: f64,
    heartbeat_interval: Duration,
    sweep_interval: Duration,
    stop_deadline: Duration,
}

fn probability(flag: &str, value: f64) -> CliResult<f64> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("--{flag} must be between 0 and 1, got {value}").into())
    }
}

fn interval(flag: &str, text: &str) -> CliResult<Duration> {
    let duration = parse_duration(flag, text)?;
    if duration.is_zero() {
        return Err(format!("--{flag} must be more than zero").into());
    }
    Ok(duration)
}

impl Plan {
    /// How many tasks run at once.
    pub(crate) fn concurrency(&self) -> u32 {
        self.concurrency
    }
}

impl WorkerArgs {
    pub(crate) fn validate(self) -> CliResult<Plan> {
        Ok(Plan {
            tasks: self.tasks,
            concurrency: self.concurrency.min(self.tasks.max(1)),
            task_duration: parse_duration("task-duration", &self.task_duration)?,
            fail_rate: probability("fail-rate", self.fail_rate)?,
            panic_rate: probability("panic-rate", self.panic_rate)?,
            heartbeat_interval: interval("heartbeat-interval", &self.heartbeat_interval)?,
            sweep_interval: interval("sweep-interval", &self.sweep_interval)?,
            stop_deadline: parse_duration("stop-deadline", &self.stop_deadline)?,
        })
    }
}

/// `250ms`, `2s`, `1m`, `1h`, or a plain number of seconds (fractions
/// allowed); at most a day.
pub(crate) fn parse_duration(flag: &str, text: &str) -> CliResult<Duration> {
    let duration = crate::parse_duration_text(flag, text)?;
    if duration > Duration::from_secs(86_400) {
        return Err(format!("--{flag} {:?} is longer than a day", text.trim()).into());
    }
    Ok(duration)
}

/// The made-up work's randomness (fastrand: no cryptographic strength
/// needed).
struct Dice(fastrand::Rng);

impl Dice {
    fn new() -> Self {
        Self(fastrand::Rng::new())
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(0..n.max(1))
    }
    /// True with probability `p` (never for 0, always for 1).
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.0.f64() < p
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn made_up_spec(dice: &mut Dice) -> CliResult<TaskSpec> {
    Ok(TaskSpec::validate(TaskSpecInput {
        repo: dice
            .pick(&["acme/widgets", "acme/gears", "initech/tps-reports"])
            .to_owned(),
        issue_number: 1 + dice.below(2000) as i64,
        user: "operator".into(),
        agent: dice.pick(&["fixer", "triager"]).to_owned(),
        agent_type: "claude_sdk".into(),
        model: dice.pick(&["claude-opus", "claude-sonnet"]).to_owned(),
        provider: "anthropic".into(),
    })?)
}

/// Prints whole lines to stdout and flushes each, so a reader (or the crash
/// tests) sees `starting <id>` the moment the row is committed.
#[derive(Clone)]
struct Lines(Arc<Mutex<()>>);

impl Lines {
    fn say(&self, line: &str) {
        let _ = self.try_say(line);
    }

    /// The line out, or why not (a `[recovery]` report that could not be
    /// written stays owed in the store).
    fn try_say(&self, line: &str) -> std::io::Result<()> {
        let _guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    }
}

struct Signals {
    term: Arc<AtomicBool>,
    int: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> CliResult<Self> {
        let term = Arc::new(AtomicBool::new(false));
        let int = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&int))?;
        Ok(Self { term, int })
    }
    fn received(&self) -> Option<&'static str> {
        if self.term.load(Ordering::SeqCst) {
            Some("SIGTERM")
        } else if self.int.load(Ordering::SeqCst) {
            Some("SIGINT")
        } else {
            None
        }
    }
}

pub(crate) fn run_worker(
    storage: Arc<dyn Storage>,
    plan: Plan,
    connection: &str,
) -> CliResult<ExitCode> {
    let signals = Signals::install()?;
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().is::<SimulatedPanic>() {
            crate::note_at(tracing::Level::WARN, "a task panicked (--panic-rate)");
        } else {
            previous_hook(info);
        }
    }));
    let lines = Lines(Arc::new(Mutex::new(())));
    let hook_lines = lines.clone();
    let report_lines = lines.clone();
    // The lease and the grace stay three heartbeats, as the defaults.
    let lease = plan.heartbeat_interval.saturating_mul(3);
    let worker = Worker::builder(storage)
        .heartbeat_interval(plan.heartbeat_interval)
        .sweep_interval(plan.sweep_interval)
        .lease(lease)
        .grace(lease)
        .stop_deadline(plan.stop_deadline)
        .recovery_reporter(move |task| report_lines.try_say(&task.hint()))
        .on_event(move |event| match event {
            WorkerEvent::UpkeepFailed { upkeep, error } => {
                warn(format!("{upkeep} failed (retrying): {error}"));
            }
            WorkerEvent::DeclaredDead => {
                warn("this worker was declared dead; stopping");
            }
            WorkerEvent::OutcomeQueued { pending, error } => {
                warn(format!("the outcome of task {} ({}) is queued until the store answers: {error}",
                    pending.id, pending.status
                ));
            }
            // A queued outcome landed: the same line as a direct finish.
            WorkerEvent::OutcomeWritten { pending, waited } => {
                hook_lines.say(&format!("finished {} {}", pending.id, pending.status));
                note(format!("the queued outcome of task {} landed after {} attempt(s), {} ms after the task ended",
                    pending.id,
                    pending.attempts,
                    waited.as_millis()
                ));
            }
            WorkerEvent::OutcomeRefused { pending, refusal } => {
                warn(format!("the queued outcome of task {} ({}) was refused: {refusal:?}",
                    pending.id, pending.status
                ));
            }
            WorkerEvent::StalledWorker(owner) => {
                warn(crate::output::noticed_owner_line(owner));
            }
            WorkerEvent::ResumedAfterStall { silent_for } => {
                warn(format!(
                    "this worker did not run for {} (stopped or hung); \
                     its liveness lock kept its tasks",
                    tasktrail::backend::human_duration(*silent_for)
                ));
            }
            _ => {}
        })
        .boot()?;
    lines.say(&format!(
        "worker {} booted (pid {}); recovered {} task(s); {connection}",
        worker.id(),
        worker.registration().pid,
        worker.recovered_at_boot().len()
    ));
    tracing::info!(
        target: crate::LOG_TARGET,
        worker_id = %worker.id(),
        pid = worker.registration().pid,
        recovered = worker.recovered_at_boot().len(),
        connection,
        "worker booted"
    );
    let worker = Arc::new(worker);

    let remaining = Arc::new(AtomicU32::new(plan.tasks));
    let signals = Arc::new(signals);
    let threads: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let ctx = TaskLoop {
                worker: Arc::clone(&worker),
                remaining: Arc::clone(&remaining),
                signals: Arc::clone(&signals),
                lines: lines.clone(),
                task_duration: plan.task_duration,
                fail_rate: plan.fail_rate,
                panic_rate: plan.panic_rate,
            };
            std::thread::spawn(move || ctx.run())
        })
        .collect();
    let mut first_error = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert_with(|| "a task thread panicked".to_owned());
            }
        }
    }
    let worker = Arc::into_inner(worker).ok_or("a task thread still holds the worker")?;
    let id = worker.id();
    if worker.is_declared_dead() {
        drop(worker);
        return Err(format!(
            "worker {id} was declared dead by another worker's recovery sweep; it stopped writing"
        )
        .into());
    }
    if let Err(error) = worker.stop() {
        report_unwritten(&error);
        return Err(error.into());
    }
    if let Some(error) = first_error {
        return Err(error.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// One warning line on stderr (or a log event with `--log-format json`),
/// whatever line breaks the error's text holds (libpq's messages span
/// several).
fn warn(message: impl std::fmt::Display) {
    crate::warn(message);
}

/// The queued outcome that landed, on one line of stderr (or a log event).
fn note(message: impl std::fmt::Display) {
    crate::note(message);
}

/// One `unwritten <id> <status>` line on stderr per task whose outcome the
/// stop could not write before its deadline (its row stays `running` for
/// the next sweep).
fn report_unwritten(error: &StopError) {
    let mut err = std::io::stderr().lock();
    for unwritten in &error.unwritten {
        let _ = writeln!(err, "unwritten {} {}", unwritten.id, unwritten.status);
    }
    let _ = err.flush();
}

struct TaskLoop {
    worker: Arc<Worker>,
    remaining: Arc<AtomicU32>,
    signals: Arc<Signals>,
    lines: Lines,
    task_duration: Duration,
    fail_rate: f64,
    panic_rate: f64,
}

/// The panic a simulated task raises with `--panic-rate`.
struct SimulatedPanic;

impl TaskLoop {
    fn should_stop(&self) -> bool {
        self.signals.received().is_some() || self.worker.is_declared_dead()
    }

    fn take_task(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn run(self) -> Result<(), String> {
        let mut dice = Dice::new();
        while !self.should_stop() && self.take_task() {
            let task =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.one_task(&mut dice)));
            match task {
                Ok(result) => result.map_err(|error| error.to_string())?,
                // The task's handle was dropped while unwinding: the worker
                // interrupts its row and prints its `[recovery]` line.
                Err(payload) if payload.is::<SimulatedPanic>() => {}
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        Ok(())
    }

    /// Waits `pause` (cut short by a stop signal) and returns the next,
    /// doubled pause, at most 2 s: how a dispatcher waits out a store
    /// outage before it tries again.
    fn back_off(&self, pause: Duration) -> Duration {
        let until = Instant::now() + pause;
        while Instant::now() < until && !self.should_stop() {
            std::thread::sleep(Duration::from_millis(10).min(pause));
        }
        (pause * 2).min(Duration::from_secs(2))
    }

    fn one_task(&self, dice: &mut Dice) -> CliResult<()> {
        let spec = made_up_spec(dice)?;
        // A start that fails transiently wrote nothing: wait and start the
        // same queued task again (a store outage never stops the worker).
        let mut queued = Task::queue(spec);
        let mut pause = Duration::from_millis(100);
        let running = loop {
            match self.worker.start(queued) {
                Ok(running) => break running,
                Err(error) if error.error.is_transient() && !self.should_stop() => {
                    warn(format!("could not start a task yet (retrying): {error}"));
                    pause = self.back_off(pause);
                    queued = error.into_task();
                }
                // Stopping while the store is down: nothing was started.
                Err(error) if error.error.is_transient() => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        };
        let id = running.id();
        self.lines.say(&format!("starting {id}"));
        let session = SessionId::parse(&format!("sess_{}", uuid::Uuid::new_v4().simple()))?;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.worker.record_session(&running, session.clone()) {
                Ok(()) => break,
                Err(error) if error.is_transient() && !self.should_stop() => {
                    warn(format!(
                        "could not record the session of task {id} yet (retrying): {error}"
                    ));
                    pause = self.back_off(pause);
                }
                // Stopping while the store is down: go on without it.
                Err(error) if error.is_transient() => break,
                Err(error) => return Err(error.into()),
            }
        }

        let deadline = Instant::now() + self.task_duration;
        while Instant::now() < deadline && !self.should_stop() {
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
        if self.worker.is_declared_dead() {
            // Declared dead: our rows are no longer ours. Write nothing (a
            // worker declared dead does not act on abandoned handles).
            drop(running);
            return Ok(());
        }
        if dice.chance(self.panic_rate) {
            std::panic::panic_any(SimulatedPanic);
        }
        let outcome = match self.signals.received() {
            Some(signal) => {
                Outcome::Interrupted(InterruptReason::new(format!("worker received {signal}"))?)
            }
            None => {
                let report = RunReport {
                    input_tokens: 500 + dice.below(20_000) as u32,
                    output_tokens: 100 + dice.below(4_000) as u32,
                    cost_usd: CostUsd::new(dice.below(300) as f64 / 100.0)?,
                    turns: 1 + dice.below(30) as u32,
                    artifacts: vec![format!("pr/{}", 1 + dice.below(500))],
                };
                if dice.chance(self.fail_rate) {
                    Outcome::Failure(report)
                } else {
                    Outcome::Success(report)
                }
            }
        };
        let status = outcome.status();
        match self.worker.finish(running, outcome) {
            Ok(FinishReceipt::Written(_)) => self.lines.say(&format!("finished {id} {status}")),
            // The worker retries it; `finished` is printed when it lands.
            Ok(FinishReceipt::Queued(_)) => {}
            Err(FinishError::Refused { id, refusal }) => {
                let error = FinishError::Refused { id, refusal };
                warn(error);
            }
            Err(error @ FinishError::Storage { .. }) => return Err(error.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_garbage_is_refused() {
        let parse = |text| parse_duration("task-duration", text).ok();
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("0.5"), Some(Duration::from_millis(500)));
        for bad in ["", "-1s", "soon", "2d", "NaNs", "100000h", "inf"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert!(interval("sweep-interval", "0s").is_err());
        assert!(probability("panic-rate", 1.5).is_err());
        assert!(probability("panic-rate", f64::NAN).is_err());
        assert_eq!(probability("panic-rate", 0.25).ok(), Some(0.25));
    }

    #[test]
    fn dice_chance_respects_the_extremes() {
        let mut dice = Dice::new();
        assert!((0..1000).all(|_| !dice.chance(0.0)));
        assert!((0..1000).all(|_| dice.chance(1.0)));
    }
}
