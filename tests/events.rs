//! The library's `tracing` events (issue 13, item 1), captured with a test
//! subscriber on every backend: each kind once, on its stable target, with
//! its fields. The `[recovery]` event's message is the hint line exactly.
//! Workers run without their background thread, so every event happens on
//! the test thread, where the capturing subscriber is the default.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use chrono::{TimeZone, Utc};
use tasktrail::backend::SweepMode;
use tasktrail::testing::{InterceptedStorage, StorageCall};
use tasktrail::*;
use tracing_subscriber::layer::SubscriberExt;

mod common;
use common::{dev_identity, Backend, LockChange};

/// One captured event.
#[derive(Debug, Clone)]
struct Captured {
    target: String,
    level: tracing::Level,
    message: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Captured {
                target: event.metadata().target().to_owned(),
                level: *event.metadata().level(),
                message,
                fields,
            });
    }
}

impl Capture {
    /// The events on `target` whose message starts with `message` and whose
    /// `field` is `value`.
    fn find(&self, target: &str, message: &str, field: &str, value: &str) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|event| {
                event.target == target
                    && event.message.starts_with(message)
                    && event.fields.get(field).map(String::as_str) == Some(value)
            })
            .cloned()
            .collect()
    }

    /// Exactly one such event, which carries every one of `fields`.
    fn one(
        &self,
        (target, message): (&str, &str),
        (field, value): (&str, &str),
        fields: &[&str],
    ) -> Captured {
        let found = self.find(target, message, field, value);
        assert_eq!(
            found.len(),
            1,
            "one {target} {message:?} event with {field}={value}: {:#?}",
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        );
        let event = found.into_iter().next().expect("one");
        for name in fields {
            assert!(
                event.fields.contains_key(*name),
                "{target} {message:?} lacks {name}: {event:#?}"
            );
        }
        event
    }
}

/// The process table: pids alive on the "dev" host.
#[derive(Clone, Default)]
struct ProcessTable(Arc<Mutex<HashSet<u32>>>);

impl ProcessProbe for ProcessTable {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        let alive = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        alive.contains(&pid).then(|| format!("boot:{pid}"))
    }
}

fn spec(issue: u32) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: i64::from(issue),
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
        input_tokens: 1200,
        output_tokens: 345,
        cost_usd: CostUsd::new(0.4275).expect("cost"),
        turns: 7,
        artifacts: vec![],
    }
}

const HEARTBEAT: StdDuration = StdDuration::from_secs(5);

fn every_event_kind_is_emitted_once_with_its_fields<B: Backend + 'static>() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(backend) = B::fresh(dir.path()) else {
        eprintln!("skipped: TASKTRAIL_TEST_POSTGRES_URL is not set");
        return;
    };
    let capture = Capture::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let backend = Arc::new(backend);
    let heartbeats_fail = Arc::new(AtomicBool::new(false));
    let failing = Arc::clone(&heartbeats_fail);
    let inner = Arc::clone(&backend);
    let storage: Arc<dyn Storage> = Arc::new(InterceptedStorage::new(inner, move |call| {
        if call == StorageCall::HeartbeatWorker && failing.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable {
                source: "connection refused (test)".into(),
            });
        }
        Ok(())
    }));
    let clock = Arc::new(ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
            .single()
            .expect("time"),
    ));
    let processes = ProcessTable::default();
    let boot = |pid: u32, lines: Option<Arc<Mutex<Vec<String>>>>| {
        processes
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid);
        let mut builder = Worker::builder(Arc::clone(&storage))
            .heartbeat_interval(HEARTBEAT)
            .lease(HEARTBEAT * 3)
            .grace(HEARTBEAT * 3)
            .clock(clock.clone())
            .probe(Arc::new(processes.clone()))
            .probe_identity(Some(dev_identity()))
            .registration(WorkerRegistration {
                id: WorkerId::new_random(),
                host: "dev".into(),
                pid,
                process_start_marker: format!("boot:{pid}"),
                host_identity: Some(dev_identity()),
                started_at: clock.now(),
            })
            .without_background_thread();
        if let Some(lines) = lines {
            builder = builder.recovery_reporter(move |task| {
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(task.hint());
                Ok(())
            });
        }
        builder.boot().expect("boot")
    };

    // A worker dies (SIGKILL) with a task running.
    let victim = boot(7, None);
    let orphan = victim.start(Task::queue(spec(1))).expect("start");
    let orphan_id = orphan.id();
    let victim_id = victim.id();
    std::mem::forget(orphan);
    std::mem::forget(victim);
    processes
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&7);
    backend.change_worker_lock(victim_id, LockChange::ReleasedByDeath);

    // The next boot recovers it: the [recovery] event, and the sweep's
    // summary.
    let printed = Arc::new(Mutex::new(Vec::new()));
    let worker = boot(8, Some(Arc::clone(&printed)));
    let id = orphan_id.to_string();
    let recovered = capture.one(
        ("tasktrail::recovery", "[recovery] "),
        ("task_id", &id),
        &[
            "repo",
            "issue_number",
            "agent",
            "model",
            "dead_worker",
            "started_at",
            "ran_for",
            "cause",
            "cause_kind",
            "sessions_invalidated",
            "recovered_by",
        ],
    );
    assert_eq!(recovered.level, tracing::Level::WARN);
    assert_eq!(
        vec![recovered.message.clone()],
        *printed.lock().unwrap_or_else(PoisonError::into_inner),
        "the event's message is the [recovery] line exactly"
    );
    assert_eq!(recovered.fields["dead_worker"], victim_id.to_string());
    assert_eq!(recovered.fields["cause_kind"], "process_gone");
    let worker_id = worker.id().to_string();
    let summary = capture.one(
        ("tasktrail::worker", "recovery sweep"),
        ("worker", &worker_id),
        &["recovered", "taken_over", "failed"],
    );
    assert_eq!(summary.fields["recovered"], "1");

    // Started and finished, with status, duration, tokens and cost.
    let done = worker.start(Task::queue(spec(2))).expect("start");
    let done_id = done.id().to_string();
    clock.advance(chrono::Duration::seconds(90));
    assert!(matches!(
        worker.finish(done, Outcome::Success(report())),
        Ok(FinishReceipt::Written(_))
    ));
    capture.one(
        ("tasktrail::task", "task started"),
        ("task_id", &done_id),
        &["repo", "issue_number", "agent", "model", "worker"],
    );
    let finished = capture.one(
        ("tasktrail::task", "task finished"),
        ("task_id", &done_id),
        &[
            "status",
            "duration_seconds",
            "input_tokens",
            "output_tokens",
            "cost_usd",
        ],
    );
    assert_eq!(finished.fields["status"], "success");
    assert_eq!(finished.fields["duration_seconds"], "90.0");
    assert_eq!(finished.fields["input_tokens"], "1200");
    assert_eq!(finished.fields["cost_usd"], "0.4275");

    // An abandoned handle: its own event, and a [recovery] one.
    let dropped = worker.start(Task::queue(spec(3))).expect("start");
    let dropped_id = dropped.id().to_string();
    drop(dropped);
    worker.tick();
    capture.one(
        ("tasktrail::task", "task abandoned"),
        ("task_id", &dropped_id),
        &["worker"],
    );
    let abandoned = capture.one(
        ("tasktrail::recovery", "[recovery] "),
        ("task_id", &dropped_id),
        &["cause_kind"],
    );
    assert_eq!(abandoned.fields["cause_kind"], "handle_abandoned");

    // A heartbeat that fails: warn, upkeep = heartbeat.
    heartbeats_fail.store(true, Ordering::SeqCst);
    clock.advance(chrono::Duration::from_std(HEARTBEAT).expect("duration"));
    worker.tick();
    heartbeats_fail.store(false, Ordering::SeqCst);
    let failed = capture.one(
        ("tasktrail::worker", "heartbeat failed"),
        ("worker", &worker_id),
        &["upkeep", "error", "transient"],
    );
    assert_eq!(failed.level, tracing::Level::WARN);

    // Behind the worker's back its registration ends and an operator's
    // sweep recovers its row: the finish is refused, and the next
    // heartbeat learns the worker was declared dead.
    let late = worker.start(Task::queue(spec(4))).expect("start");
    let late_id = late.id().to_string();
    storage
        .deregister_worker(worker.id(), clock.now())
        .expect("deregister");
    runtime::recover_now(
        storage.as_ref(),
        clock.as_ref(),
        &processes,
        &LivenessPolicy::new(Some(dev_identity())),
        SweepMode::Apply,
    )
    .expect("operator sweep");
    assert!(matches!(
        worker.finish(late, Outcome::Success(report())),
        Err(FinishError::Refused { .. })
    ));
    let refused = capture.one(
        ("tasktrail::task", "finish refused"),
        ("task_id", &late_id),
        &["status", "reason"],
    );
    assert_eq!(refused.level, tracing::Level::WARN);
    assert_eq!(refused.fields["reason"], "interrupted_by_recovery");
    clock.advance(chrono::Duration::from_std(HEARTBEAT * 2).expect("duration"));
    worker.tick();
    let dead = capture.one(
        ("tasktrail::worker", "this worker was declared dead"),
        ("worker", &worker_id),
        &[],
    );
    assert_eq!(dead.level, tracing::Level::ERROR);
}

#[test]
fn memory_emits_every_event_kind_once_with_its_fields() {
    every_event_kind_is_emitted_once_with_its_fields::<MemoryStorage>();
}

#[test]
fn sqlite_emits_every_event_kind_once_with_its_fields() {
    every_event_kind_is_emitted_once_with_its_fields::<SqliteStorage>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_emits_every_event_kind_once_with_its_fields() {
    every_event_kind_is_emitted_once_with_its_fields::<common::PostgresBackend>();
}
