//! SQLite under faults and foreign data: rows the crate did not write, a full
//! disk, a read-only database, a lock held longer than the busy timeout, a
//! file deleted under a running store, a migration failing halfway. Each gets
//! a typed error, nothing is written, and `PRAGMA integrity_check` passes.
#![cfg(feature = "sqlite")]

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::MigrationHarness;
use tasktrail_core::backend::*;
use tasktrail_core::*;
use tasktrail_diesel::{SqliteOptions, SqliteStorage, SQLITE_MIGRATIONS};

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

fn spec(issue: i64) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: issue,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

/// The boot and PID namespace of the made-up workers and of the judge.
fn made_up_identity() -> HostIdentity {
    HostIdentity {
        boot_id: "dev-boot".into(),
        pid_namespace: 4_026_531_836,
    }
}

fn worker(store: &SqliteStorage, pid: u32) -> RegisteredWorker {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = RegisteredWorker::register(
        store,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid,
            process_start_marker: format!("boot:{pid}"),
            host_identity: Some(made_up_identity()),
            started_at: clock.now(),
        },
        clock,
    )
    .expect("register");
    // A made-up process: nothing holds its liveness lock, and the probe
    // (no processes at all) decides.
    store.release_worker_lock(worker.id());
    worker
}

fn sweep(store: &SqliteStorage) -> Result<Vec<RecoveredTask>, StorageError> {
    let policy = LivenessPolicy::new(Some(made_up_identity()));
    let now = SystemClock.now();
    store.recover_orphans(
        &RecoveryRequest {
            recovering_worker: WorkerId::new_random(),
            now,
            mode: SweepMode::Apply,
        },
        &PolicyJudge {
            policy: &policy,
            probe: &NoProcesses,
        },
    )
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = Text)]
    integrity_check: String,
}

fn integrity_ok(store: &SqliteStorage) -> bool {
    store
        .with_connection(|c| diesel::sql_query("PRAGMA integrity_check").load::<Check>(c))
        .map(|rows| rows.len() == 1 && rows[0].integrity_check == "ok")
        .unwrap_or(false)
}

fn raw(store: &SqliteStorage, sql: &str) {
    store
        .with_connection(|c| c.batch_execute(sql))
        .expect("raw sql");
}

const FOREIGN_ROW: &str = "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, artifacts) VALUES";

#[test]
fn a_row_with_an_unknown_status_reads_as_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    raw(
        &store,
        &format!(
            "PRAGMA ignore_check_constraints = ON; {FOREIGN_ROW} ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01', 'a/b', 1, 'u', 'a', 't', 'm', 'p', 'paused', '2026-05-11T00:00:00.000000Z', NULL); PRAGMA ignore_check_constraints = OFF;"
        ),
    );
    let id: TaskId = "0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01".parse().expect("id");
    assert!(matches!(
        store.get_task(id),
        Err(StorageError::CorruptRow { .. })
    ));
    assert!(matches!(
        store.list_tasks(&TaskFilter::default()),
        Err(StorageError::CorruptRow { .. })
    ));
}

#[test]
fn artifacts_that_are_not_json_read_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    raw(
        &store,
        &format!("{FOREIGN_ROW} ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02', 'a/b', 1, 'u', 'a', 't', 'm', 'p', 'success', '2026-05-11T00:00:00.000000Z', '{{not json');"),
    );
    let id: TaskId = "0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02".parse().expect("id");
    assert!(matches!(
        store.get_task(id),
        Err(StorageError::CorruptRow { .. })
    ));
}

#[test]
fn a_running_row_with_no_worker_is_recovered_as_an_orphan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    raw(
        &store,
        &format!("{FOREIGN_ROW} ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e03', 'a/b', 7, 'u', 'a', 't', 'm', 'p', 'running', '2026-05-11T00:00:00.000000Z', NULL);"),
    );
    let recovered = sweep(&store).expect("sweep");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].dead_worker, None);
    assert_eq!(recovered[0].cause, DeathCause::UnknownWorker);
    assert!(
        recovered[0].hint().contains("worker=none"),
        "{}",
        recovered[0].hint()
    );
    assert_eq!(recovered[0].task.status, TaskStatus::Interrupted);
}

#[test]
fn a_full_disk_fails_with_unavailable_and_keeps_every_earlier_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let worker = worker(&store, 10);
    // Freeze the file at its current size: the next pages cannot be added.
    raw(&store, "PRAGMA wal_checkpoint(TRUNCATE);");
    let pages: i64 = store
        .with_connection(|c| {
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                page_count: i64,
            }
            diesel::sql_query("PRAGMA page_count").get_result::<Count>(c)
        })
        .expect("page count")
        .page_count;
    raw(&store, &format!("PRAGMA max_page_count = {pages};"));
    let mut started = Vec::new();
    let mut failure = None;
    for issue in 1..=5_000 {
        match Task::queue(spec(issue)).start(&worker, &store) {
            Ok(running) => started.push(running.id()),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let error = failure.expect("the disk fills up");
    assert!(
        matches!(error.error, StorageError::Unavailable { .. }),
        "{:?}",
        error.error
    );
    let refused = error.into_task().id();
    assert_eq!(
        store.get_task(refused).expect("read"),
        None,
        "nothing written"
    );
    let rows = store.list_tasks(&TaskFilter::default()).expect("rows");
    assert_eq!(rows.len(), started.len(), "every earlier row is intact");
    assert!(integrity_ok(&store));
}

#[test]
fn a_sweep_that_fails_on_a_full_disk_leaves_every_row_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let victim = worker(&store, 10);
    for issue in 1..=400 {
        let running = Task::queue(spec(issue))
            .start(&victim, &store)
            .expect("start");
        running
            .record_session(
                SessionId::parse(&format!("sess_{}", running.id())).expect("id"),
                &store,
            )
            .expect("session");
    }
    raw(&store, "PRAGMA wal_checkpoint(TRUNCATE);");
    let before = store.list_tasks(&TaskFilter::default()).expect("rows");
    let sessions_before = store.list_sessions().expect("sessions");
    // No room for the sweep's new pages (its longer rows, the WAL frames).
    raw(&store, "PRAGMA max_page_count = 1;");
    let result = sweep(&store);
    assert!(
        matches!(result, Err(StorageError::Unavailable { .. })),
        "{result:?}"
    );
    assert_eq!(
        store.list_tasks(&TaskFilter::default()).expect("rows"),
        before
    );
    assert_eq!(store.list_sessions().expect("sessions"), sessions_before);
    assert!(integrity_ok(&store));
    raw(&store, "PRAGMA max_page_count = 1073741823;");
    assert_eq!(
        sweep(&store).expect("sweep").len(),
        400,
        "nothing lost: all recovered later"
    );
}

#[test]
fn a_read_only_database_refuses_writes_with_a_clear_kind() {
    // Tests run as root, which ignores file modes; SQLite's own read-only
    // switch stands in for a read-only file.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let worker = worker(&store, 10);
    raw(&store, "PRAGMA query_only = ON;");
    let error = Task::queue(spec(1))
        .start(&worker, &store)
        .expect_err("read-only");
    // Permanent: retrying does not help until the file is made writable.
    assert!(
        matches!(error.error, StorageError::AccessDenied { .. }) && !error.error.is_transient(),
        "{:?}",
        error.error
    );
    raw(&store, "PRAGMA query_only = OFF;");
    assert!(store
        .list_tasks(&TaskFilter::default())
        .expect("rows")
        .is_empty());
    assert!(integrity_ok(&store));
}

#[test]
fn a_lock_held_longer_than_the_busy_timeout_fails_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let store = SqliteStorage::open_with(
        &path,
        SqliteOptions {
            busy_timeout: Duration::from_millis(200),
            ..SqliteOptions::default()
        },
    )
    .expect("open");
    let worker = worker(&store, 10);
    let mut holder =
        SqliteConnection::establish(path.to_str().expect("utf-8")).expect("second connection");
    holder
        .batch_execute("BEGIN IMMEDIATE;")
        .expect("hold the write lock");
    let queued = Task::queue(spec(1));
    let id = queued.id();
    let error = queued.start(&worker, &store).expect_err("locked");
    assert!(
        matches!(error.error, StorageError::Unavailable { .. }),
        "{:?}",
        error.error
    );
    holder.batch_execute("COMMIT;").expect("release");
    assert_eq!(store.get_task(id).expect("read"), None, "nothing written");
    let running = error
        .into_task()
        .start(&worker, &store)
        .expect("retry after release");
    assert_eq!(running.id(), id);
}

#[test]
fn a_database_file_deleted_under_a_running_store_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let store = SqliteStorage::open(&path).expect("open");
    let worker = worker(&store, 10);
    let first = Task::queue(spec(1)).start(&worker, &store).expect("start");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // The open connection keeps the unlinked inode: writes either go on
    // there or fail with a typed error. Neither panics.
    let finished = first.finish(Outcome::Success(RunReport::empty()), &store);
    if let Err(error) = &finished {
        assert!(matches!(error, FinishError::Storage { .. }), "{error:?}");
    }
    let _ = store.list_tasks(&TaskFilter::default());
    drop(store);
    // A fresh open makes a new, empty, migrated database.
    let reopened = SqliteStorage::open(&path).expect("reopen");
    assert!(reopened
        .list_tasks(&TaskFilter::default())
        .expect("rows")
        .is_empty());
    assert!(integrity_ok(&reopened));
}

#[test]
fn a_migration_that_fails_halfway_leaves_the_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let store = SqliteStorage::open_unmigrated(&path, &SqliteOptions::default()).expect("open");
    store
        .with_connection(|c| c.run_next_migration(SQLITE_MIGRATIONS).map(drop))
        .expect("first migration");
    raw(
        &store,
        "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, finished_at) \
         VALUES ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e05', 'a/b', 1, 'u', 'a', 't', 'm', 'p', 'interrupted', '2026-05-10T00:00:00.000000Z', '2026-05-10T00:10:00.000000Z');
         CREATE TABLE claude_sdk_sessions (oops INTEGER);",
    );
    // The fix migration rebuilds task_history, then fails creating a table
    // that is already there: the whole migration must roll back.
    assert!(store.migrate().is_err());
    assert_eq!(store.applied_migrations().expect("versions").len(), 1);
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        finished_at: Option<String>,
    }
    let rows: Vec<Row> = store
        .with_connection(|c| {
            diesel::sql_query("SELECT status, finished_at FROM task_history").load(c)
        })
        .expect("pre-fix rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "interrupted");
    assert_eq!(
        rows[0].finished_at.as_deref(),
        Some("2026-05-10T00:10:00.000000Z"),
        "the backfill rolled back too"
    );
    raw(&store, "DROP TABLE claude_sdk_sessions;");
    let shipped = MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE_MIGRATIONS)
        .expect("the embedded migrations")
        .len();
    assert_eq!(
        store
            .migrate()
            .expect("now it and the later ones apply")
            .len(),
        shipped - 1,
        "every migration after the first"
    );
    assert!(integrity_ok(&store));
}

#[test]
fn hostile_text_round_trips_as_data_and_hints_carry_no_artifacts_or_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let victim = worker(&store, 10);
    let hostile = "fixer'); DROP TABLE task_history; --";
    let spec = TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 9,
        user: "alice".into(),
        agent: hostile.into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("no control characters: accepted as data");
    let running = Task::queue(spec).start(&victim, &store).expect("start");
    running
        .record_session(
            SessionId::parse("sess_secret_conversation_42").expect("id"),
            &store,
        )
        .expect("session");
    assert_eq!(
        store
            .get_task(running.id())
            .expect("read")
            .expect("row")
            .agent,
        hostile
    );
    let recovered = sweep(&store).expect("sweep");
    let hint = recovered[0].hint();
    assert!(
        hint.contains(hostile),
        "names are shown as they are: {hint}"
    );
    assert!(
        !hint.contains("sess_secret_conversation_42"),
        "no session ids in hints: {hint}"
    );
    assert_eq!(
        store
            .list_tasks(&TaskFilter::default())
            .expect("the table is still there")
            .len(),
        1
    );
}

/// What a sweep hands its judge about the one owner of running rows.
fn lock_fact(store: &SqliteStorage) -> OwnerLock {
    struct Recording(std::sync::Mutex<Vec<OwnerLock>>);
    impl LivenessJudge for Recording {
        fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
            if let Some(facts) = owner {
                self.0.lock().expect("facts").push(facts.lock);
            }
            Liveness::Alive
        }
    }
    let judge = Recording(std::sync::Mutex::new(Vec::new()));
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: WorkerId::new_random(),
                now: SystemClock.now(),
                mode: SweepMode::Apply,
            },
            &judge,
        )
        .expect("sweep");
    let facts = judge.0.into_inner().expect("facts");
    assert_eq!(facts.len(), 1, "one owner");
    facts[0]
}

/// A live worker holds an exclusive flock on its lock file; the judge
/// opens it without creating it, tries a shared lock and lets go, and never
/// writes into it. A lock file removed under a live worker is not checkable
/// (never "free"), and the judge does not create it again.
#[test]
fn the_judge_reads_lock_files_without_creating_or_writing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let owner = RegisteredWorker::register(
        &store,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid: 10,
            process_start_marker: "boot:10".into(),
            host_identity: None,
            started_at: clock.now(),
        },
        clock,
    )
    .expect("register");
    let running = Task::queue(spec(1)).start(&owner, &store).expect("start");
    let lock_file = store.worker_lock_path(owner.id());
    assert_eq!(
        lock_file,
        dir.path()
            .join("t.db.workers")
            .join(format!("{}.lock", owner.id()))
    );
    let before = std::fs::metadata(&lock_file).expect("the lock file exists");
    assert_eq!(lock_fact(&store), OwnerLock::Held);
    // Another open file description cannot take it either.
    let other = std::fs::File::open(&lock_file).expect("open");
    assert!(matches!(
        other.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    let after = std::fs::metadata(&lock_file).expect("still there");
    assert_eq!(after.len(), before.len(), "nothing written into it");
    assert_eq!(after.modified().ok(), before.modified().ok());

    std::fs::remove_file(&lock_file).expect("remove the lock file");
    assert_eq!(lock_fact(&store), OwnerLock::NotCheckable);
    assert!(!lock_file.exists(), "the judge never creates a lock file");

    assert!(store.release_worker_lock(owner.id()));
    running
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect("finish");
}

/// Deregistering releases the lock and removes the lock file; the lock
/// file of a worker a sweep found dead with its lock free is removed too.
#[test]
fn lock_files_go_with_their_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let stopping = worker(&store, 10);
    let path = store.worker_lock_path(stopping.id());
    assert!(path.exists());
    let id = stopping.id();
    stopping.deregister(&store).expect("deregister");
    assert!(!store.worker_lock_path(id).exists());

    let crashed = worker(&store, 11); // its lock already let go (made up)
    let running = Task::queue(spec(2)).start(&crashed, &store).expect("start");
    std::mem::forget(running);
    let path = store.worker_lock_path(crashed.id());
    assert!(path.exists());
    assert!(matches!(lock_fact(&store), OwnerLock::Free { .. }));
    assert_eq!(sweep(&store).expect("sweep").len(), 1);
    assert!(!path.exists(), "removed once its owner was declared dead");
}

#[test]
fn an_unreadable_row_is_reported_on_its_own_and_hides_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let worker = worker(&store, 1);
    let ids: Vec<TaskId> = (1..=5)
        .map(|issue| {
            let running = Task::queue(spec(issue))
                .start(&worker, &store)
                .expect("start");
            running
                .finish(Outcome::Success(RunReport::empty()), &store)
                .expect("finish")
                .id()
        })
        .collect();
    let bad = ids[2];
    store.with_connection(|connection| {
        diesel::sql_query("UPDATE task_history SET finished_at = 'soon' WHERE id = ?")
            .bind::<Text, _>(bad.to_string())
            .execute(connection)
            .expect("corrupt one row")
    });
    let rows = store
        .list_task_rows(&TaskFilter::default())
        .expect("the query itself works");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows.iter().filter(|row| row.is_ok()).count(), 4);
    let Some(Err(StorageError::CorruptRow { detail })) = rows.iter().find(|row| row.is_err())
    else {
        panic!("one CorruptRow expected: {rows:?}");
    };
    assert!(detail.contains(&bad.to_string()), "{detail}");
    assert!(detail.contains("finished_at"), "{detail}");
    // The strict listing still refuses the page as a whole.
    assert!(matches!(
        store.list_tasks(&TaskFilter::default()),
        Err(StorageError::CorruptRow { .. })
    ));
    // `show` prints the row as the database holds it.
    let columns = store.raw_task_columns(bad).expect("raw").expect("a row");
    let value = |name: &str| {
        columns
            .iter()
            .find(|(column, _)| *column == name)
            .and_then(|(_, text)| text.clone())
    };
    assert_eq!(value("finished_at").as_deref(), Some("soon"));
    assert_eq!(value("status").as_deref(), Some("success"));
    assert_eq!(columns.len(), 20);
    assert!(store
        .raw_task_columns(TaskId::new_time_ordered())
        .expect("raw")
        .is_none());
}

/// A prune keeps a row it cannot read, and the stopped worker that row
/// names (the driver cannot read the name: the DELETE of `workers` keeps
/// every worker a row names); a stopped worker no row names goes.
#[test]
fn a_prune_keeps_an_unreadable_row_and_the_stopped_worker_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let named = worker(&store, 1);
    let named_id = named.id();
    let id = Task::queue(spec(1))
        .start(&named, &store)
        .expect("start")
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect("finish")
        .id();
    named.deregister(&store).expect("deregister");
    let unnamed = worker(&store, 2);
    unnamed.deregister(&store).expect("deregister");
    store.with_connection(|connection| {
        diesel::sql_query("UPDATE task_history SET finished_at = 'soon' WHERE id = ?")
            .bind::<Text, _>(id.to_string())
            .execute(connection)
            .expect("corrupt the row")
    });
    let report = store
        .prune(&PruneRequest {
            cut_off: SystemClock.now() + chrono::Duration::days(1),
            statuses: vec![],
            dry_run: false,
            batch_size: 10,
        })
        .expect("prune");
    assert_eq!((report.tasks, report.workers), (0, 1), "{report:?}");
    let workers: Vec<WorkerId> = store
        .list_workers()
        .expect("workers")
        .iter()
        .map(|worker| worker.id)
        .collect();
    assert_eq!(workers, vec![named_id]);
    assert_eq!(
        store
            .list_task_rows(&TaskFilter::default())
            .expect("rows")
            .len(),
        1
    );
}

/// An interrupted finish changes the row and invalidates its sessions in
/// one transaction: when the sessions' UPDATE fails, the row is still
/// `running`, the task is handed back, and its retry does both.
#[test]
fn an_interrupted_finish_failing_at_its_sessions_leaves_the_row_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let worker = worker(&store, 10);
    let running = Task::queue(spec(1)).start(&worker, &store).expect("start");
    let id = running.id();
    running
        .record_session(SessionId::parse("sess_one").expect("id"), &store)
        .expect("session");
    raw(
        &store,
        "CREATE TRIGGER injected_fault BEFORE UPDATE ON claude_sdk_sessions \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    );
    let reason = InterruptReason::new("stopped").expect("reason");
    let error = running
        .finish(Outcome::Interrupted(reason), &store)
        .expect_err("the sessions' UPDATE fails");
    let Some((running, outcome)) = error.into_parts() else {
        panic!("a storage failure hands the task back");
    };
    let row = store.get_task(id).expect("read").expect("the row");
    assert_eq!(row.status, TaskStatus::Running, "{row:?}");
    assert!(store
        .list_sessions()
        .expect("sessions")
        .iter()
        .all(|session| session.invalidated_at.is_none()));
    raw(&store, "DROP TRIGGER injected_fault;");
    running.finish(outcome, &store).expect("the retry");
    assert_eq!(
        store.get_task(id).expect("read").expect("the row").status,
        TaskStatus::Interrupted
    );
    assert!(store
        .list_sessions()
        .expect("sessions")
        .iter()
        .all(|session| session.invalidated_at.is_some()));
}

/// Recording a session that fails for another reason than a second
/// INSERT of its id is that failure, never `DuplicateSession`.
#[test]
fn a_session_insert_failing_otherwise_is_not_called_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    let worker = worker(&store, 10);
    let running = Task::queue(spec(1)).start(&worker, &store).expect("start");
    raw(
        &store,
        "CREATE TRIGGER injected_fault BEFORE INSERT ON claude_sdk_sessions \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    );
    let error = running
        .record_session(SessionId::parse("sess_one").expect("id"), &store)
        .expect_err("the INSERT fails");
    assert!(
        !matches!(error, StorageError::DuplicateSession),
        "{error:?}"
    );
    assert!(store.list_sessions().expect("sessions").is_empty());
    drop(running);
}

#[test]
fn a_second_name_of_the_database_file_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("t.db");
    let store = SqliteStorage::open(&first).expect("open");
    let worker = worker(&store, 1);
    let id = Task::queue(spec(1))
        .start(&worker, &store)
        .expect("start")
        .finish(Outcome::Success(RunReport::empty()), &store)
        .expect("finish")
        .id();
    drop(worker);
    drop(store);
    let second = dir.path().join("hard.db");
    std::fs::hard_link(&first, &second).expect("hard link");
    for (opened, other) in [(&second, "t.db"), (&first, "hard.db")] {
        match SqliteStorage::open(opened) {
            Err(StorageError::Incompatible { detail }) => {
                assert!(detail.contains(other), "{detail}");
                assert!(detail.contains("hard link"), "{detail}");
            }
            other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
        }
    }
    // With one name again it opens, every row there.
    std::fs::remove_file(&second).expect("unlink");
    let store = SqliteStorage::open(&first).expect("one name");
    assert!(store.get_task(id).expect("read").is_some());
    // A symbolic link names the same path for SQLite (it resolves links):
    // one write-ahead log, nothing refused.
    let symbolic = dir.path().join("sym.db");
    std::os::unix::fs::symlink(&first, &symbolic).expect("symlink");
    drop(store);
    assert!(SqliteStorage::open(&symbolic).is_ok());
}

#[derive(QueryableByName)]
struct Owed {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// A fault injected *inside* the sweep's transaction, after its first
/// writes: a trigger fails the sweep's UPDATE of `task_history` (after the
/// sessions were invalidated), its UPDATE of `workers` (after the rows were
/// interrupted) or its INSERT of the owed reports (after everything else).
/// Each time the whole sweep rolls back: every row, session and worker is
/// as it was and no report is owed; once the fault is gone the next sweep
/// recovers everything. Kills the sweep running outside one transaction
/// (or committing before its last write).
#[test]
fn a_sweep_failing_after_its_first_writes_rolls_back_every_one() {
    let faults = [
        ("task_history", "UPDATE"),
        ("workers", "UPDATE"),
        ("recovery_reports", "INSERT"),
    ];
    for (table, event) in faults {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
        let victims = [worker(&store, 10), worker(&store, 11)];
        for (n, victim) in victims.iter().enumerate() {
            for issue in 0..3 {
                let running = Task::queue(spec(n as i64 * 10 + issue + 1))
                    .start(victim, &store)
                    .expect("start");
                running
                    .record_session(
                        SessionId::parse(&format!("sess_{}", running.id())).expect("id"),
                        &store,
                    )
                    .expect("session");
            }
        }
        let before = (
            store.list_tasks(&TaskFilter::default()).expect("rows"),
            store.list_sessions().expect("sessions"),
            store.list_workers().expect("workers"),
        );
        raw(
            &store,
            &format!(
                "CREATE TRIGGER injected_fault BEFORE {event} ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            ),
        );
        let result = sweep(&store);
        assert!(result.is_err(), "{event} {table}: {result:?}");
        let after = (
            store.list_tasks(&TaskFilter::default()).expect("rows"),
            store.list_sessions().expect("sessions"),
            store.list_workers().expect("workers"),
        );
        assert_eq!(
            after, before,
            "a fault at the {event} of {table} rolls back"
        );
        let owed = store
            .with_connection(|c| {
                diesel::sql_query("SELECT count(*) AS count FROM recovery_reports")
                    .get_result::<Owed>(c)
            })
            .expect("count")
            .count;
        assert_eq!(owed, 0);
        assert!(integrity_ok(&store));
        raw(&store, "DROP TRIGGER injected_fault;");
        let recovered = sweep(&store).expect("sweep");
        assert_eq!(
            recovered.len(),
            6,
            "nothing lost: all recovered once the fault is gone"
        );
        assert!(recovered.iter().all(|r| r.sessions_invalidated == 1));
    }
}
