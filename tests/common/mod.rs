//! Shared by the integration tests: the backends under test and a fake
//! process table.
#![allow(dead_code, unreachable_pub)]

use tasktrail::backend::*;
pub use tasktrail::testing::conformance::LockChange;
use tasktrail::*;
#[cfg(feature = "postgres")]
use tasktrail_diesel::ScratchDatabase;
use tasktrail_diesel::StatementLog;

/// A backend under test, with its INSERT counter.
pub trait Backend: Storage + Sized {
    /// A fresh, empty store; `None` when the backend's server is not
    /// configured (Postgres without `TASKTRAIL_TEST_POSTGRES_URL`).
    fn fresh(dir: &std::path::Path) -> Option<Self>;
    fn task_insert_statements(&self, id: TaskId) -> usize;
    /// Test hook: moves `worker`'s last heartbeat `by` into the past, on the
    /// clock the store measures silence on (the database's, on Postgres).
    fn age_heartbeat(&self, worker: WorkerId, by: chrono::Duration);
    /// Test hook: plays a change of `worker`'s liveness lock (its process
    /// died and the kernel or the database freed it; or it looks registered
    /// before liveness locks existed).
    fn change_worker_lock(&self, worker: WorkerId, change: LockChange);
    /// The backend's retention call.
    fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError>;
    /// The backend's operator figures.
    fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError>;
    /// Test hook: the store restarts under these live workers: every lock
    /// it held is free, and whoever judges has only just reconnected. A
    /// backend whose locks the store does not hold (SQLite: the kernel
    /// holds them) loses nothing.
    fn restart_under(&self, live_workers: &[WorkerId]);
    /// Test hook: invalidates one session by hand, whatever its task's
    /// status (an operator's `UPDATE claude_sdk_sessions SET invalidated_at
    /// = …`).
    fn invalidate_session_by_hand(&self, session: &SessionId, at: Timestamp);
}

impl Backend for MemoryStorage {
    fn invalidate_session_by_hand(&self, session: &SessionId, at: Timestamp) {
        assert!(MemoryStorage::invalidate_session_by_hand(
            self,
            session,
            at,
            "invalidated by hand"
        ));
    }
    fn restart_under(&self, live_workers: &[WorkerId]) {
        for worker in live_workers {
            self.set_worker_lock(
                *worker,
                OwnerLock::Free {
                    watched_for: LockWatch::For(chrono::Duration::zero()),
                },
            );
        }
    }
    fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        MemoryStorage::prune(self, request)
    }
    fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        MemoryStorage::stats(self, request)
    }
    fn fresh(_dir: &std::path::Path) -> Option<Self> {
        Some(MemoryStorage::new())
    }
    fn task_insert_statements(&self, id: TaskId) -> usize {
        MemoryStorage::task_insert_statements(self, id)
    }
    fn age_heartbeat(&self, worker: WorkerId, by: chrono::Duration) {
        MemoryStorage::age_heartbeat(self, worker, by);
    }
    fn change_worker_lock(&self, worker: WorkerId, change: LockChange) {
        self.set_worker_lock(
            worker,
            match change {
                LockChange::ReleasedByDeath => OwnerLock::Free {
                    watched_for: LockWatch::Continuous,
                },
                _ => OwnerLock::NotCheckable,
            },
        );
    }
}

impl Backend for SqliteStorage {
    fn invalidate_session_by_hand(&self, session: &SessionId, at: Timestamp) {
        use diesel::prelude::*;
        use diesel::sql_types::Text;
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let updated = self.with_connection(|connection| {
            diesel::sql_query(
                "UPDATE claude_sdk_sessions SET invalidated_at = ?, \
                 invalidation_reason = 'invalidated by hand' WHERE session_id = ?",
            )
            .bind::<Text, _>(at)
            .bind::<Text, _>(session.as_str())
            .execute(connection)
            .expect("invalidate the session")
        });
        assert_eq!(updated, 1);
    }
    // There is no server to restart: each worker's flock is the kernel's.
    fn restart_under(&self, _live_workers: &[WorkerId]) {}
    fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        SqliteStorage::prune(self, request)
    }
    fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        SqliteStorage::stats(self, request)
    }
    fn fresh(dir: &std::path::Path) -> Option<Self> {
        let store = SqliteStorage::open_with(
            dir.join("trail.db"),
            SqliteOptions {
                statement_log: Some(StatementLog::new()),
                ..SqliteOptions::default()
            },
        )
        .expect("open sqlite");
        Some(store)
    }
    fn task_insert_statements(&self, id: TaskId) -> usize {
        self.statement_log()
            .map_or(0, |log| log.task_insert_statements(id))
    }
    fn age_heartbeat(&self, worker: WorkerId, by: chrono::Duration) {
        use diesel::prelude::*;
        use diesel::sql_types::Text;
        let record = self
            .list_workers()
            .expect("workers")
            .into_iter()
            .find(|record| record.id == worker)
            .expect("the worker has a row");
        // SQLite stores RFC 3339 text, written with the callers' clock.
        let aged = (record.heartbeat_at - by).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let updated = self.with_connection(|connection| {
            diesel::sql_query("UPDATE workers SET heartbeat_at = ? WHERE id = ?")
                .bind::<Text, _>(aged)
                .bind::<Text, _>(worker.to_string())
                .execute(connection)
                .expect("age the heartbeat")
        });
        assert_eq!(updated, 1);
    }
    fn change_worker_lock(&self, worker: WorkerId, change: LockChange) {
        match change {
            // Idempotent, as the kernel: a lock already let go stays free.
            LockChange::ReleasedByDeath => {
                self.release_worker_lock(worker);
            }
            _ => {
                use diesel::prelude::*;
                let updated = self.with_connection(|connection| {
                    diesel::sql_query("UPDATE workers SET liveness_lock = NULL WHERE id = ?")
                        .bind::<diesel::sql_types::Text, _>(worker.to_string())
                        .execute(connection)
                        .expect("forget the lock")
                });
                assert_eq!(updated, 1);
            }
        }
    }
}

/// A SQL backend whose rows a test may rewrite the way another program
/// (or a hand-run UPDATE) would.
pub trait RawRows: Backend {
    /// Sets an interrupted row's `interrupt_reason` and `interrupted_by`.
    fn rewrite_interrupt(&self, task: TaskId, reason: Option<&str>, by: Option<WorkerId>);
}

impl RawRows for SqliteStorage {
    fn rewrite_interrupt(&self, task: TaskId, reason: Option<&str>, by: Option<WorkerId>) {
        use diesel::prelude::*;
        use diesel::sql_types::{Nullable, Text};
        let updated = self.with_connection(|connection| {
            diesel::sql_query(
                "UPDATE task_history SET interrupt_reason = ?, interrupted_by = ? WHERE id = ?",
            )
            .bind::<Nullable<Text>, _>(reason)
            .bind::<Nullable<Text>, _>(by.map(|id| id.to_string()))
            .bind::<Text, _>(task.to_string())
            .execute(connection)
            .expect("rewrite the row")
        });
        assert_eq!(updated, 1);
    }
}

#[cfg(feature = "postgres")]
impl RawRows for PostgresBackend {
    fn rewrite_interrupt(&self, task: TaskId, reason: Option<&str>, by: Option<WorkerId>) {
        use diesel::prelude::*;
        use diesel::sql_types::{Nullable, Text, Uuid};
        let updated = self
            .store
            .with_connection(|connection| {
                diesel::sql_query(
                    "UPDATE task_history SET interrupt_reason = $1, interrupted_by = $2 WHERE id = $3",
                )
                .bind::<Nullable<Text>, _>(reason)
                .bind::<Nullable<Uuid>, _>(by.map(|id| *id.as_uuid()))
                .bind::<Uuid, _>(*task.as_uuid())
                .execute(connection)
                .expect("rewrite the row")
            })
            .expect("a connection");
        assert_eq!(updated, 1);
    }
}

/// The boot and PID namespace of the tests' "dev" host: its workers
/// register with it and its judges probe pids in it.
pub fn dev_identity() -> HostIdentity {
    HostIdentity {
        boot_id: "dev-boot".into(),
        pid_namespace: 4_026_531_836,
    }
}

/// The local process table as a test wants it.
pub struct Processes(pub Vec<u32>);

impl ProcessProbe for Processes {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        self.0.contains(&pid).then(|| format!("boot:{pid}"))
    }
}

/// A server behind PgBouncer in transaction mode: while set (on this
/// thread), [`PostgresBackend::fresh`] makes its database there and opens
/// it through the pooler, the liveness session on the direct URL.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct ThroughPooler {
    /// A direct superuser URL of the server (databases are made there).
    pub admin_url: String,
    /// PgBouncer's port on 127.0.0.1.
    pub bouncer_port: u16,
}

#[cfg(feature = "postgres")]
thread_local! {
    static THROUGH_POOLER: std::cell::RefCell<Option<ThroughPooler>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with every fresh [`PostgresBackend`] of this thread opened
/// through `pooler`.
#[cfg(feature = "postgres")]
pub fn through_pooler<R>(pooler: ThroughPooler, f: impl FnOnce() -> R) -> R {
    THROUGH_POOLER.with(|cell| *cell.borrow_mut() = Some(pooler));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    THROUGH_POOLER.with(|cell| *cell.borrow_mut() = None);
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Postgres on a fresh database of its own, dropped with the backend, in its
/// production configuration: heartbeats and the lease on the database's
/// clock, which the tests' manual clock cannot move; tests age heartbeats
/// with [`Backend::age_heartbeat`] instead.
#[cfg(feature = "postgres")]
pub struct PostgresBackend {
    store: PostgresStorage,
    _database: ScratchDatabase,
}

#[cfg(feature = "postgres")]
impl Backend for PostgresBackend {
    fn invalidate_session_by_hand(&self, session: &SessionId, at: Timestamp) {
        use diesel::prelude::*;
        use diesel::sql_types::{Text, Timestamptz};
        let updated = self
            .store
            .with_connection(|connection| {
                diesel::sql_query(
                    "UPDATE claude_sdk_sessions SET invalidated_at = $1, \
                     invalidation_reason = 'invalidated by hand' WHERE session_id = $2",
                )
                .bind::<Timestamptz, _>(at)
                .bind::<Text, _>(session.as_str())
                .execute(connection)
                .expect("invalidate the session")
            })
            .expect("a connection");
        assert_eq!(updated, 1);
    }
    // A real restart needs a server of its own: the outage tests restart a
    // throwaway cluster under live worker processes
    // (crates/tasktrail-cli/tests/outage.rs). Here the step changes nothing.
    fn restart_under(&self, _live_workers: &[WorkerId]) {}
    fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        self.store.prune(request)
    }
    fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        self.store.stats(request)
    }
    fn fresh(_dir: &std::path::Path) -> Option<Self> {
        if let Some(pooler) = THROUGH_POOLER.with(|cell| cell.borrow().clone()) {
            let database = ScratchDatabase::create_on(&pooler.admin_url);
            let store = PostgresStorage::open_with(
                &format!(
                    "postgres://postgres@127.0.0.1:{}/{}?tasktrail_pooler=transaction",
                    pooler.bouncer_port,
                    database.name()
                ),
                PostgresOptions {
                    statement_log: Some(StatementLog::new()),
                    pool_size: 2,
                    liveness_url: Some(database.url().to_owned()),
                    ..PostgresOptions::default()
                },
            )
            .expect("open postgres through the pooler");
            return Some(Self {
                store,
                _database: database,
            });
        }
        let database = ScratchDatabase::create()?;
        let store = PostgresStorage::open_with(
            database.url(),
            PostgresOptions {
                statement_log: Some(StatementLog::new()),
                pool_size: 2,
                ..PostgresOptions::default()
            },
        )
        .expect("open postgres");
        Some(Self {
            store,
            _database: database,
        })
    }
    fn task_insert_statements(&self, id: TaskId) -> usize {
        self.store
            .statement_log()
            .map_or(0, |log| log.task_insert_statements(id))
    }
    fn age_heartbeat(&self, worker: WorkerId, by: chrono::Duration) {
        use diesel::prelude::*;
        let seconds = by.num_microseconds().expect("a short duration") as f64 / 1e6;
        let updated = self
            .store
            .with_connection(|connection| {
                diesel::sql_query(
                    "UPDATE workers SET heartbeat_at = heartbeat_at - make_interval(secs => $2) WHERE id = $1",
                )
                .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
                .bind::<diesel::sql_types::Double, _>(seconds)
                .execute(connection)
                .expect("age the heartbeat")
            })
            .expect("a connection");
        assert_eq!(updated, 1);
    }
    fn change_worker_lock(&self, worker: WorkerId, change: LockChange) {
        use diesel::prelude::*;
        match change {
            // Idempotent, as the server: a lock already let go stays free.
            LockChange::ReleasedByDeath => {
                self.store.release_worker_lock(worker);
            }
            _ => {
                let updated = self
                    .store
                    .with_connection(|connection| {
                        diesel::sql_query("UPDATE workers SET liveness_lock = NULL WHERE id = $1")
                            .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
                            .execute(connection)
                            .expect("forget the lock")
                    })
                    .expect("a connection");
                assert_eq!(updated, 1);
            }
        }
    }
}

/// `impl Storage for $backend`: every call handed to its `store`.
macro_rules! storage_through_the_store {
    ($backend:ty) => {
        impl Storage for $backend {
            fn register_worker(
                &self,
                registration: &WorkerRegistration,
            ) -> Result<(), StorageError> {
                self.store.register_worker(registration)
            }
            fn heartbeat_worker(
                &self,
                worker: WorkerId,
                at: Timestamp,
            ) -> Result<(), StorageError> {
                self.store.heartbeat_worker(worker, at)
            }
            fn deregister_worker(
                &self,
                worker: WorkerId,
                at: Timestamp,
            ) -> Result<(), StorageError> {
                self.store.deregister_worker(worker, at)
            }
            fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
                self.store.list_workers()
            }
            fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
                self.store.insert_running(row)
            }
            fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
                self.store.finish_running(row)
            }
            fn recover_orphans(
                &self,
                request: &RecoveryRequest,
                judge: &dyn LivenessJudge,
            ) -> Result<Vec<RecoveredTask>, StorageError> {
                self.store.recover_orphans(request, judge)
            }
            fn claim_unreported_recoveries(
                &self,
                claim: &ReportClaim,
                judge: &dyn LivenessJudge,
            ) -> Result<Vec<RecoveredTask>, StorageError> {
                self.store.claim_unreported_recoveries(claim, judge)
            }
            fn confirm_reports(
                &self,
                reporter: WorkerId,
                tasks: &[TaskId],
                at: Timestamp,
            ) -> Result<u64, StorageError> {
                self.store.confirm_reports(reporter, tasks, at)
            }
            fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
                self.store.record_session(session)
            }
            fn resumable_session(
                &self,
                key: &SessionKey,
            ) -> Result<Option<SessionRecord>, StorageError> {
                self.store.resumable_session(key)
            }
            fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
                self.store.list_sessions()
            }
            fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
                self.store.get_task(id)
            }
            fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
                self.store.list_tasks(filter)
            }
        }
    };
}

#[cfg(feature = "postgres")]
storage_through_the_store!(PostgresBackend);

/// MySQL/MariaDB on a fresh database of its own, dropped with the backend,
/// in its production configuration: heartbeats on the server's clock
/// (`UTC_TIMESTAMP(6)`), which the tests' manual clock cannot move; tests
/// age heartbeats with [`Backend::age_heartbeat`] instead.
#[cfg(feature = "mysql")]
pub struct MysqlBackend {
    store: tasktrail_diesel::MysqlStorage,
    _database: tasktrail_diesel::ScratchMysqlDatabase,
}

#[cfg(feature = "mysql")]
impl MysqlBackend {
    /// Runs one UPDATE, `binds` bound as text in order, on a pooled
    /// connection and checks that it matched one row.
    fn update_one_row(&self, sql: &str, binds: &[&str]) {
        use diesel::prelude::*;
        use diesel::sql_types::Text;
        let updated = self
            .store
            .with_connection(|connection| {
                let mut query = diesel::sql_query(sql).into_boxed();
                for bind in binds {
                    query = query.bind::<Text, _>(bind.to_string());
                }
                query.execute(connection).expect(sql)
            })
            .expect("a connection");
        assert_eq!(updated, 1, "{sql}");
    }
}

#[cfg(feature = "mysql")]
impl Backend for MysqlBackend {
    fn invalidate_session_by_hand(&self, session: &SessionId, at: Timestamp) {
        let at = at.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        self.update_one_row(
            "UPDATE claude_sdk_sessions SET invalidated_at = ?, \
             invalidation_reason = 'invalidated by hand' WHERE session_id = ?",
            &[&at, session.as_str()],
        );
    }
    // As for Postgres: restarting the shared server is not a test's to do
    // (mysql_backend's tests end every session with KILL instead).
    fn restart_under(&self, _live_workers: &[WorkerId]) {}
    fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        self.store.prune(request)
    }
    fn stats(&self, request: &StatsRequest) -> Result<TaskStats, StorageError> {
        self.store.stats(request)
    }
    fn fresh(_dir: &std::path::Path) -> Option<Self> {
        let database = tasktrail_diesel::ScratchMysqlDatabase::create()?;
        let store = tasktrail_diesel::MysqlStorage::open_with(
            database.url(),
            tasktrail_diesel::MysqlOptions {
                statement_log: Some(StatementLog::new()),
                pool_size: 2,
                ..tasktrail_diesel::MysqlOptions::default()
            },
        )
        .expect("open mysql");
        Some(Self {
            store,
            _database: database,
        })
    }
    fn task_insert_statements(&self, id: TaskId) -> usize {
        self.store
            .statement_log()
            .map_or(0, |log| log.task_insert_statements(id))
    }
    fn age_heartbeat(&self, worker: WorkerId, by: chrono::Duration) {
        let micros = by.num_microseconds().expect("a short duration").to_string();
        self.update_one_row(
            "UPDATE workers SET heartbeat_at = heartbeat_at - INTERVAL ? MICROSECOND WHERE id = ?",
            &[&micros, &worker.to_string()],
        );
    }
    fn change_worker_lock(&self, worker: WorkerId, change: LockChange) {
        match change {
            // Idempotent, as the server: a lock already let go stays free.
            LockChange::ReleasedByDeath => {
                self.store.release_worker_lock(worker);
            }
            _ => self.update_one_row(
                "UPDATE workers SET liveness_lock = NULL WHERE id = ?",
                &[&worker.to_string()],
            ),
        }
    }
}

#[cfg(feature = "mysql")]
storage_through_the_store!(MysqlBackend);
