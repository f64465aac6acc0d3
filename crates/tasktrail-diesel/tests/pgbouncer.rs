//! The Postgres backend through PgBouncer 1.18 in transaction mode
//! (`?tasktrail_pooler=transaction`), in front of a throwaway cluster with
//! `max_connections = 40`: the conformance suite (liveness on a direct
//! liveness URL), the lease mode (no liveness URL: no lock is taken through
//! the pooler, a lock someone takes through it is never trusted), no named
//! prepared statement kept across transactions, concurrent migrations
//! serialised by a transaction-scoped lock.
//!
//! External (root, `initdb`/`pg_ctl` as `postgres`, Debian's `pgbouncer`):
//! they run only with `TASKTRAIL_OUTAGE_TESTS=1` (`.ci/run` sets it and
//! installs PgBouncer); otherwise each prints one `skipped:` line.
#![cfg(feature = "postgres")]

#[path = "../../tasktrail-cli/tests/support/throwaway_cluster.rs"]
mod throwaway_cluster;

#[path = "../../tasktrail-cli/tests/support/pgbouncer.rs"]
mod pgbouncer;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use tasktrail_core::backend::{PolicyJudge, RecoveryRequest, SweepMode};
use tasktrail_core::{
    Clock, DeathCause, LivenessPolicy, Outcome, ProcessProbe, RecoveredTask, RegisteredWorker,
    RunReport, Storage, SystemClock, Task, TaskSpec, TaskSpecInput, TaskStatus, Timestamp,
    WorkerId, WorkerRegistration,
};
use tasktrail_diesel::{
    LivenessMode, Pooler, PostgresOptions, PostgresStorage, ScratchDatabase, StatementLog,
    POSTGRES_MIGRATIONS,
};

use pgbouncer::{BouncerSettings, PgBouncer};
use throwaway_cluster::ThrowawayCluster;

const ENABLE_VARIABLE: &str = "TASKTRAIL_OUTAGE_TESTS";

fn enabled(test: &str) -> bool {
    let on = std::env::var(ENABLE_VARIABLE).is_ok_and(|value| value.trim() == "1");
    if !on {
        tasktrail_diesel::report_skipped_test(&format!(
            "skipped: {test} needs {ENABLE_VARIABLE}=1 (root, Postgres server binaries, pgbouncer)"
        ));
    }
    on
}

/// A throwaway cluster (`max_connections = 40`) with PgBouncer in front.
/// The pooler is dropped first.
struct Pooled {
    bouncer: PgBouncer,
    cluster: ThrowawayCluster,
}

impl Pooled {
    fn start(settings: &BouncerSettings) -> Self {
        let cluster = ThrowawayCluster::start_with(&["max_connections=40"]);
        let bouncer = PgBouncer::start(cluster.port(), settings);
        Self { bouncer, cluster }
    }

    /// A fresh database, made and dropped directly on the cluster.
    fn scratch(&self) -> Scratch {
        let database = ScratchDatabase::create_on(&self.cluster.url("postgres"));
        Scratch {
            pooled: self.bouncer.url(database.name()),
            undeclared: self.bouncer.undeclared_url(database.name()),
            direct: database.url().to_owned(),
            _database: database,
        }
    }
}

struct Scratch {
    /// Through the pooler, declared (`?tasktrail_pooler=transaction`).
    pooled: String,
    /// Through the pooler, not declared.
    undeclared: String,
    /// Straight to the cluster.
    direct: String,
    _database: ScratchDatabase,
}

impl Scratch {
    /// Through the pooler; liveness on the direct URL.
    fn open_with_liveness_url(&self) -> PostgresStorage {
        PostgresStorage::open_with(
            &self.pooled,
            PostgresOptions {
                liveness_url: Some(self.direct.clone()),
                pool_size: 2,
                statement_log: Some(StatementLog::new()),
                ..PostgresOptions::default()
            },
        )
        .expect("open through the pooler")
    }

    /// Through the pooler, no liveness URL: the lease.
    fn open_leased(&self) -> PostgresStorage {
        PostgresStorage::open_with(
            &self.pooled,
            PostgresOptions {
                pool_size: 4,
                ..PostgresOptions::default()
            },
        )
        .expect("open through the pooler")
    }

    fn connect_direct(&self) -> PgConnection {
        PgConnection::establish(&self.direct).expect("connect to the cluster")
    }
}

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

fn spec(issue_number: i64) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn register(store: &PostgresStorage, host: &str, pid: u32) -> RegisteredWorker {
    RegisteredWorker::register(
        store,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: host.into(),
            pid,
            process_start_marker: format!("boot:{pid}"),
            host_identity: None,
            started_at: SystemClock.now(),
        },
        Arc::new(SystemClock),
    )
    .expect("register")
}

fn report() -> RunReport {
    RunReport {
        input_tokens: 10,
        output_tokens: 20,
        cost_usd: tasktrail_core::CostUsd::new(0.01).expect("cost"),
        turns: 1,
        artifacts: vec![],
    }
}

/// The default policy without a pid probe: a judge on another host.
fn remote_policy() -> LivenessPolicy {
    LivenessPolicy::new(None)
}

fn sweep(store: &PostgresStorage, judge_worker: WorkerId, now: Timestamp) -> Vec<RecoveredTask> {
    let policy = remote_policy();
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: judge_worker,
                now,
                mode: SweepMode::Apply,
            },
            &PolicyJudge {
                policy: &policy,
                probe: &NoProcesses,
            },
        )
        .expect("sweep")
}

fn age_heartbeat(connection: &mut PgConnection, worker: WorkerId, by: Duration) {
    let updated = diesel::sql_query(
        "UPDATE workers SET heartbeat_at = heartbeat_at - make_interval(secs => $2) WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
    .bind::<diesel::sql_types::Double, _>(by.num_milliseconds() as f64 / 1000.0)
    .execute(connection)
    .expect("age the heartbeat");
    assert_eq!(updated, 1);
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// Advisory locks granted anywhere in the cluster's current database.
fn advisory_locks(connection: &mut PgConnection) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS count FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .get_result::<Count>(connection)
    .expect("pg_locks")
    .count
}

fn liveness_lock_column(connection: &mut PgConnection, worker: WorkerId) -> Option<String> {
    #[derive(QueryableByName)]
    struct Lock {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        liveness_lock: Option<String>,
    }
    diesel::sql_query("SELECT liveness_lock FROM workers WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
        .get_result::<Lock>(connection)
        .expect("the worker's row")
        .liveness_lock
}

// ---------------------------------------------------------------------------

/// A fresh database on a pooled cluster of its own, for one conformance
/// case. Dropped in field order: the database first, then the pooler and
/// the cluster; on the way it fails the case if the pooler logged a
/// prepared-statement error.
struct PooledCase {
    scratch: Scratch,
    pooled: Pooled,
}

impl Drop for PooledCase {
    fn drop(&mut self) {
        let log = self.pooled.bouncer.log();
        if !std::thread::panicking() {
            assert!(
                !log.contains("prepared statement"),
                "the pooler saw prepared-statement errors:\n{log}"
            );
        }
    }
}

/// Postgres through PgBouncer in transaction mode as the suite's subject:
/// a throwaway cluster and a pooler of their own for each case (the cases
/// run in parallel), the liveness session on the direct URL (the suite
/// plays lock releases and stalls, which need a lock). `None`, after the
/// `skipped:` line, without `TASKTRAIL_OUTAGE_TESTS=1`.
fn pooled_subject() -> Option<tasktrail_core::conformance::Subject<PostgresStorage>> {
    use tasktrail_core::conformance::{LockChange, Subject};

    let test = std::thread::current()
        .name()
        .unwrap_or("a conformance case through pgbouncer")
        .to_owned();
    if !enabled(&test) {
        return None;
    }
    let pooled = Pooled::start(&BouncerSettings::default());
    let case = PooledCase {
        scratch: pooled.scratch(),
        pooled,
    };
    Some(Subject {
        name: "postgres through pgbouncer (transaction mode)",
        fresh_store: Box::new(move || {
            let store = case.scratch.open_with_liveness_url();
            assert_eq!(store.pooler(), Pooler::Transaction);
            assert_eq!(
                store.liveness_mode(),
                LivenessMode::AdvisoryLockOnLivenessUrl
            );
            store
        }),
        task_insert_statements: Box::new(|store: &PostgresStorage, id| {
            store
                .statement_log()
                .map_or(0, |log| log.task_insert_statements(id))
        }),
        age_heartbeats: Box::new(|store: &PostgresStorage, worker, by| {
            store
                .with_connection(|connection| age_heartbeat(connection, worker, by))
                .expect("a connection");
        }),
        change_worker_lock: Box::new(|store: &PostgresStorage, worker, change| match change {
            LockChange::ReleasedByDeath => {
                assert!(store.release_worker_lock(worker), "the store held it");
            }
            _ => {
                store
                    .with_connection(|connection| {
                        diesel::sql_query("UPDATE workers SET liveness_lock = NULL WHERE id = $1")
                            .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
                            .execute(connection)
                            .expect("forget the lock")
                    })
                    .expect("a connection");
            }
        }),
    })
}

/// One `#[test]` per conformance case through PgBouncer
/// (`conformance::<case>`).
mod conformance {
    use super::pooled_subject;

    tasktrail_core::conformance_tests!(skippable: pooled_subject());
}

/// Without a liveness URL the store takes no lock at all (none through the
/// pooler, none anywhere), registers its workers with `liveness_lock =
/// NULL`, and a sweep judges them by the lease on the database's clock:
/// alive within it, dead past it, recovered exactly once.
#[test]
fn without_a_liveness_url_workers_are_judged_by_the_lease() {
    if !enabled("without_a_liveness_url_workers_are_judged_by_the_lease") {
        return;
    }
    let pooled = Pooled::start(&BouncerSettings::default());
    let scratch = pooled.scratch();
    let store = scratch.open_leased();
    assert_eq!(store.liveness_mode(), LivenessMode::Lease);
    let mut direct = scratch.connect_direct();

    let doomed = register(&store, "gone-host", 41);
    let judge = register(&store, "judge-host", 42);
    assert_eq!(advisory_locks(&mut direct), 0, "no lock is taken");
    assert_eq!(liveness_lock_column(&mut direct, doomed.id()), None);

    Task::queue(spec(1))
        .start(&doomed, &store)
        .expect("start")
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
    let orphan = Task::queue(spec(2)).start(&doomed, &store).expect("start");
    let orphan_id = orphan.id();
    std::mem::forget(orphan);
    store
        .heartbeat_worker(doomed.id(), SystemClock.now())
        .expect("heartbeat through the pooler");

    // Within the lease: alive, left alone.
    assert!(sweep(&store, judge.id(), SystemClock.now()).is_empty());
    // Past the lease (15 s) on the database's clock: dead, once.
    age_heartbeat(&mut direct, doomed.id(), Duration::seconds(16));
    let recovered = sweep(&store, judge.id(), SystemClock.now());
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].task.id, orphan_id);
    assert!(
        matches!(recovered[0].cause, DeathCause::LeaseExpired { .. }),
        "{:?}",
        recovered[0].cause
    );
    assert!(sweep(&store, judge.id(), SystemClock.now()).is_empty());
    let row = store.get_task(orphan_id).expect("read").expect("row");
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(advisory_locks(&mut direct), 0, "still no lock");
}

/// A session advisory lock taken *through* the transaction pooler stays
/// with whichever server connection ran it, after its client is gone: it
/// proves nothing. A worker behind the pooler whose key is locked that way
/// is still found dead by its lease.
#[test]
fn a_lock_taken_through_the_pooler_is_never_trusted() {
    if !enabled("a_lock_taken_through_the_pooler_is_never_trusted") {
        return;
    }
    let pooled = Pooled::start(&BouncerSettings::default());
    let scratch = pooled.scratch();
    let store = scratch.open_leased();
    let mut direct = scratch.connect_direct();
    let dead = register(&store, "gone-host", 51);
    let running = Task::queue(spec(1)).start(&dead, &store).expect("start");
    let running_id = running.id();
    std::mem::forget(running);

    // Some client takes the dead worker's lock through the pooler, then
    // goes away: the server connection it ran on keeps the lock.
    {
        let mut through_pooler =
            PgConnection::establish(&scratch.undeclared).expect("connect through the pooler");
        let taken = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
            .bind::<BigInt, _>(PostgresStorage::worker_lock_key(dead.id()))
            .get_result::<Flag>(&mut through_pooler)
            .expect("lock")
            .flag;
        assert!(taken);
    }
    std::thread::sleep(StdDuration::from_millis(200));
    assert_eq!(
        advisory_locks(&mut direct),
        1,
        "the lock outlived its client on a pooled server connection"
    );

    // Past the lease, another store's sweep finds the worker dead all the
    // same: its row records no lock, so none is consulted.
    age_heartbeat(&mut direct, dead.id(), Duration::seconds(16));
    let judge_store = scratch.open_leased();
    let judge = register(&judge_store, "judge-host", 52);
    let recovered = sweep(&judge_store, judge.id(), SystemClock.now());
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].task.id, running_id);
    assert!(
        matches!(recovered[0].cause, DeathCause::LeaseExpired { .. }),
        "{:?}",
        recovered[0].cause
    );
    assert!(sweep(&judge_store, judge.id(), SystemClock.now()).is_empty());
}

/// No named prepared statement is kept across transactions: two stores,
/// eight threads, a pooler with two server connections, and hundreds of
/// starts and finishes (the hot path Diesel keeps prepared on direct
/// connections) all land.
#[test]
fn no_named_prepared_statement_is_relied_on_through_the_pooler() {
    if !enabled("no_named_prepared_statement_is_relied_on_through_the_pooler") {
        return;
    }
    let pooled = Pooled::start(&BouncerSettings {
        server_connections: 2,
        ..BouncerSettings::default()
    });
    let scratch = pooled.scratch();
    let stores = [
        Arc::new(scratch.open_leased()),
        Arc::new(scratch.open_leased()),
    ];
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let store = Arc::clone(&stores[thread % 2]);
            std::thread::spawn(move || {
                let worker = register(&store, "pooled-host", 100 + thread as u32);
                for issue in 1..=40 {
                    let task = Task::queue(spec(issue))
                        .start(&worker, &*store)
                        .unwrap_or_else(|error| panic!("start: {error}"));
                    task.finish(Outcome::Success(report()), &*store)
                        .unwrap_or_else(|error| panic!("finish: {}", error));
                }
                worker.deregister(&*store).expect("deregister");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a thread failed");
    }
    let rows = stores[0]
        .list_tasks(&tasktrail_core::TaskFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(rows.len(), 8 * 40);
    assert!(rows.iter().all(|row| row.status == TaskStatus::Success));
}

/// Concurrent first opens through the pooler migrate once: the migration
/// lock is transaction-scoped, so it cannot stay behind on a pooled server
/// connection and hang the next migrator.
#[test]
fn concurrent_migrations_through_the_pooler_apply_once() {
    if !enabled("concurrent_migrations_through_the_pooler_apply_once") {
        return;
    }
    let pooled = Pooled::start(&BouncerSettings {
        server_connections: 3,
        ..BouncerSettings::default()
    });
    let scratch = pooled.scratch();
    let (sent, received) = mpsc::channel();
    for _ in 0..6 {
        let url = scratch.pooled.clone();
        let sent = sent.clone();
        std::thread::spawn(move || {
            let applied = PostgresStorage::open_unmigrated(&url, &PostgresOptions::default())
                .and_then(|store| store.migrate());
            let _ = sent.send(applied.map(|applied| applied.len()));
        });
    }
    let mut applied = 0;
    for _ in 0..6 {
        match received.recv_timeout(StdDuration::from_secs(60)) {
            Ok(Ok(count)) => applied += count,
            Ok(Err(error)) => panic!("a migration failed: {error}"),
            Err(_) => {
                panic!("a migration hung (a migration lock left on a pooled server connection?)")
            }
        }
    }
    let shipped = MigrationSource::<Pg>::migrations(&POSTGRES_MIGRATIONS)
        .expect("the embedded migrations")
        .len();
    assert_eq!(applied, shipped, "every migration applied once");
    let mut direct = scratch.connect_direct();
    assert_eq!(
        advisory_locks(&mut direct),
        0,
        "no migration lock is left behind on a pooled server connection"
    );
}
