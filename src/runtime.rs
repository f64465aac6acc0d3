//! The worker boundary a server calls: boot (register, then sweep the rows of
//! dead workers), heartbeat while running, and an operator's sweep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;

use chrono::Duration;
use tasktrail_core::{
    Clock, LivenessPolicy, PolicyJudge, ProcessProbe, RecoveredTask, RecoveryRequest,
    RegisteredWorker, Storage, StorageError, SweepMode, WorkerId, WorkerRegistration,
};

/// How a worker heartbeats and judges others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOptions {
    /// How often the [`Heartbeat`] writes. Default 5 s.
    pub heartbeat_interval: Duration,
    /// How old another host's heartbeat may be before its worker counts as
    /// dead. Default 15 s (three intervals).
    pub lease: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: LivenessPolicy::DEFAULT_HEARTBEAT_INTERVAL,
            lease: LivenessPolicy::DEFAULT_LEASE,
        }
    }
}

/// What a boot did.
#[derive(Debug)]
pub struct BootReport {
    /// The registered worker: the proof needed to start tasks.
    pub worker: RegisteredWorker,
    /// The tasks this boot's sweep marked `interrupted`, each reported here
    /// once (and by no other boot).
    pub recovered: Vec<RecoveredTask>,
}

/// Boots a worker: registers it, then runs the recovery sweep in one
/// transaction. Each recovered task's [`RecoveredTask::hint`] is the
/// `[recovery]` line to log; the caller logs it (the `tasktrail worker`
/// command prints it to stdout).
pub fn boot<S: Storage + ?Sized>(
    storage: &S,
    registration: WorkerRegistration,
    clock: Arc<dyn Clock>,
    probe: &dyn ProcessProbe,
    options: &WorkerOptions,
) -> Result<BootReport, StorageError> {
    let policy = LivenessPolicy {
        local_host: registration.host.clone(),
        lease: options.lease,
    };
    let worker = RegisteredWorker::register(storage, registration, Arc::clone(&clock))?;
    let now = clock.now();
    let recovered = storage.recover_orphans(
        &RecoveryRequest {
            recovering_worker: worker.id(),
            now,
            mode: SweepMode::Apply,
        },
        &PolicyJudge {
            policy: &policy,
            probe,
        },
    )?;
    Ok(BootReport { worker, recovered })
}

/// Runs the sweep now, outside any worker boot (the `tasktrail recover`
/// command). The sweep is attributed to a fresh id that is never registered:
/// `interrupted_by` names that operator sweep.
pub fn recover_now<S: Storage + ?Sized>(
    storage: &S,
    clock: &dyn Clock,
    probe: &dyn ProcessProbe,
    policy: &LivenessPolicy,
    mode: SweepMode,
) -> Result<Vec<RecoveredTask>, StorageError> {
    let now = clock.now();
    storage.recover_orphans(
        &RecoveryRequest {
            recovering_worker: WorkerId::new_random(),
            now,
            mode,
        },
        &PolicyJudge { policy, probe },
    )
}

/// A background thread that heartbeats a worker every interval until it is
/// stopped or dropped. If a sweep declared the worker dead, the heartbeat
/// fails with [`StorageError::WorkerNotAlive`], the thread ends and
/// [`Heartbeat::declared_dead`] turns true: the worker must stop writing.
#[derive(Debug)]
pub struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    declared_dead: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Starts heartbeating `worker` into `storage`.
    pub fn start<S: Storage + ?Sized + 'static>(
        storage: Arc<S>,
        worker: RegisteredWorker,
        interval: Duration,
    ) -> Self {
        let interval = interval
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(5));
        let (stop, stopped) = mpsc::channel::<()>();
        let declared_dead = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&declared_dead);
        let thread = std::thread::Builder::new()
            .name(format!("tasktrail-heartbeat-{}", worker.id()))
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                match worker.heartbeat(storage.as_ref()) {
                    Ok(()) => {}
                    Err(StorageError::WorkerNotAlive { .. }) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A transient failure (a lock held too long, a dropped
                    // connection) is retried at the next tick; the lease
                    // allows three missed beats.
                    Err(_) => {}
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
            declared_dead,
        }
    }

    /// Whether a sweep declared this worker dead.
    pub fn declared_dead(&self) -> bool {
        self.declared_dead.load(Ordering::SeqCst)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tasktrail_core::{
        ManualClock, MemoryStorage, SystemClock, Task, TaskSpec, TaskSpecInput, TaskStatus,
    };

    struct Processes(Vec<(u32, &'static str)>);

    impl ProcessProbe for Processes {
        fn process_start_marker(&self, pid: u32) -> Option<String> {
            self.0
                .iter()
                .find(|(p, _)| *p == pid)
                .map(|(_, m)| (*m).to_owned())
        }
    }

    fn registration(clock: &dyn Clock, pid: u32) -> WorkerRegistration {
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid,
            process_start_marker: format!("boot:{pid}"),
            started_at: clock.now(),
        }
    }

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

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::starting_at(
            chrono::Utc
                .with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
                .single()
                .expect("time"),
        ))
    }

    #[test]
    fn booting_on_an_empty_store_recovers_nothing() {
        let storage = MemoryStorage::new();
        let clock = clock();
        let report = boot(
            &storage,
            registration(clock.as_ref(), 10),
            clock,
            &Processes(vec![]),
            &WorkerOptions::default(),
        )
        .expect("boot");
        assert!(report.recovered.is_empty());
    }

    #[test]
    fn a_killed_workers_running_row_is_interrupted_at_the_next_boot_exactly_once() {
        let storage = MemoryStorage::new();
        let clock = clock();
        let first = boot(
            &storage,
            registration(clock.as_ref(), 10),
            clock.clone(),
            &Processes(vec![(10, "boot:10")]),
            &WorkerOptions::default(),
        )
        .expect("first boot");
        let running = Task::queue(spec())
            .start(&first.worker, &storage)
            .expect("start");
        let id = running.id();
        std::mem::forget(running); // SIGKILL: the task never finishes.
        clock.advance(Duration::minutes(36));

        // pid 10 is gone; the new worker is pid 11.
        let alive = Processes(vec![(11, "boot:11")]);
        let second = boot(
            &storage,
            registration(clock.as_ref(), 11),
            clock.clone(),
            &alive,
            &WorkerOptions::default(),
        )
        .expect("second boot");
        assert_eq!(second.recovered.len(), 1);
        assert_eq!(second.recovered[0].task.id, id);
        let hint = second.recovered[0].hint();
        assert!(hint.starts_with("[recovery] "), "{hint}");
        assert!(
            hint.contains(&id.to_string()) && hint.contains("ran_for=36m00s"),
            "{hint}"
        );
        assert_eq!(
            storage.get_task(id).expect("read").map(|t| t.status),
            Some(TaskStatus::Interrupted)
        );

        let third = boot(
            &storage,
            registration(clock.as_ref(), 12),
            clock,
            &Processes(vec![(11, "boot:11"), (12, "boot:12")]),
            &WorkerOptions::default(),
        )
        .expect("third boot");
        assert!(third.recovered.is_empty(), "reported once");
    }

    #[test]
    fn a_live_workers_rows_are_untouched_by_another_boot() {
        let storage = MemoryStorage::new();
        let clock = clock();
        let both = Processes(vec![(10, "boot:10"), (11, "boot:11")]);
        let first = boot(
            &storage,
            registration(clock.as_ref(), 10),
            clock.clone(),
            &both,
            &WorkerOptions::default(),
        )
        .expect("boot");
        let running = Task::queue(spec())
            .start(&first.worker, &storage)
            .expect("start");
        clock.advance(Duration::hours(2));
        let second = boot(
            &storage,
            registration(clock.as_ref(), 11),
            clock,
            &both,
            &WorkerOptions::default(),
        )
        .expect("boot");
        assert!(second.recovered.is_empty());
        assert_eq!(
            storage
                .get_task(running.id())
                .expect("read")
                .map(|t| t.status),
            Some(TaskStatus::Running)
        );
    }

    fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        for _ in 0..400 {
            if condition() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_heartbeat_thread_moves_heartbeat_at() {
        let storage = Arc::new(MemoryStorage::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let report = boot(
            storage.as_ref(),
            registration(clock.as_ref(), 10),
            clock.clone(),
            &Processes(vec![]),
            &WorkerOptions::default(),
        )
        .expect("boot");
        let id = report.worker.id();
        let first_beat = storage.list_workers().expect("workers")[0].heartbeat_at;
        let heartbeat = Heartbeat::start(
            Arc::clone(&storage),
            report.worker,
            Duration::milliseconds(20),
        );
        assert!(wait_until(|| storage
            .list_workers()
            .expect("workers")
            .iter()
            .any(|w| w.id == id && w.heartbeat_at > first_beat)));
        assert!(!heartbeat.declared_dead());
        heartbeat.stop();
    }

    #[test]
    fn a_worker_declared_dead_learns_it_from_its_heartbeat() {
        let storage = Arc::new(MemoryStorage::new());
        let clock = clock();
        let victim = boot(
            storage.as_ref(),
            registration(clock.as_ref(), 10),
            clock.clone(),
            &Processes(vec![]),
            &WorkerOptions::default(),
        )
        .expect("boot");
        let _row = Task::queue(spec())
            .start(&victim.worker, storage.as_ref())
            .expect("start");
        let heartbeat = Heartbeat::start(
            Arc::clone(&storage),
            victim.worker,
            Duration::milliseconds(20),
        );
        // Another boot on the same host sees no process 10: declared dead.
        let other = boot(
            storage.as_ref(),
            registration(clock.as_ref(), 11),
            clock,
            &Processes(vec![(11, "boot:11")]),
            &WorkerOptions::default(),
        )
        .expect("boot");
        assert_eq!(other.recovered.len(), 1);
        assert!(wait_until(|| heartbeat.declared_dead()));
    }
}
