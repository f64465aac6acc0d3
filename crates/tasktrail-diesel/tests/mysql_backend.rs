//! The MySQL/MariaDB backend against a real server, on what the shared
//! conformance suite cannot see: exactly-once recovery when several stores
//! sweep at once, a start racing the sweep that declares its worker dead,
//! the found-rows flag, rows written by the `mariadb` command-line client,
//! the server's CHECK constraints, migration compatibility, error kinds,
//! and liveness through named locks.
//!
//! Every test works in its own fresh database (`ScratchMysqlDatabase`),
//! dropped when the test ends. Point the tests at a server with
//! `TASKTRAIL_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test` (the user
//! must be allowed to create databases); without it each test writes a
//! visible `skipped:` line and passes, unless `CI` is set: then it fails.
#![cfg(all(feature = "mysql", feature = "testing"))]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDate};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Nullable, Text};
use support::{register, report, spec, test_policy, NoProcesses, SlowJudge, TEST_GRACE};
use tasktrail_core::backend::{
    FinishRow, FinishWrite, LivenessJudge, NewRunningRow, NoticingJudge, OwnerFacts, PolicyJudge,
    RecoveryRequest, SweepMode,
};
use tasktrail_core::{
    Clock, DeathCause, FinishRefusal, InterruptReason, Liveness, NoticedOwner, Outcome,
    RecoveredTask, RegisteredWorker, SessionId, Storage, StorageError, SystemClock, Task,
    TaskFilter, TaskId, TaskStatus, Timestamp, Unproven, WorkerId, WorkerState,
};
use tasktrail_diesel::{MysqlConnection, MysqlOptions, MysqlStorage, ScratchMysqlDatabase};

/// A database of its own for one test, with the openers these tests use.
struct TestDatabase {
    scratch: ScratchMysqlDatabase,
}

impl TestDatabase {
    fn url(&self) -> &str {
        self.scratch.url()
    }

    fn open(&self) -> MysqlStorage {
        MysqlStorage::open_with(
            self.url(),
            MysqlOptions {
                pool_size: 2,
                ..MysqlOptions::default()
            },
        )
        .expect("open the test database")
    }

    /// A plain connection of the test's own (no session settings but the
    /// server's defaults), as an operator's tool would have.
    fn connect(&self) -> MysqlConnection {
        MysqlConnection::establish(self.url()).expect("connect to the test database")
    }

    /// Runs `sql` in this database through the `mariadb` command-line
    /// client, as users' other tools write rows: whether the server
    /// accepted it.
    fn run_in_mariadb_client(&self, sql: &str) -> bool {
        let login = ClientLogin::of(self.url());
        let mut command = std::process::Command::new("mariadb");
        command
            .args(["-h", &login.host, "-P", &login.port, "-u", &login.user])
            .arg(self.scratch.name())
            .args(["-e", sql]);
        if let Some(password) = &login.password {
            command.env("MYSQL_PWD", password);
        }
        let output = command.output().expect("run the mariadb client");
        output.status.success()
    }
}

/// The parts of a `mysql://user[:password]@host[:port]/db` URL the
/// command-line client takes as options.
struct ClientLogin {
    user: String,
    password: Option<String>,
    host: String,
    port: String,
}

impl ClientLogin {
    fn of(url: &str) -> Self {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let (credentials, address) = authority.rsplit_once('@').unwrap_or(("root", authority));
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user.to_owned(), Some(password.to_owned())),
            None => (credentials.to_owned(), None),
        };
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "3306"));
        Self {
            user,
            password,
            host: host.to_owned(),
            port: port.to_owned(),
        }
    }

    /// The URL of database `database` on the same server, logging in with
    /// `password` instead.
    fn url_with(&self, password: &str, port: &str, database: &str) -> String {
        format!(
            "mysql://{}:{password}@{}:{port}/{database}",
            self.user, self.host
        )
    }
}

macro_rules! database_or_skip {
    () => {
        match ScratchMysqlDatabase::create() {
            Some(scratch) => TestDatabase { scratch },
            None => return,
        }
    };
}

/// Starts a task and lets go of its handle without a finish, as a worker
/// that dies mid-task does: its row stays `running`.
fn start_and_forget(worker: &RegisteredWorker, store: &MysqlStorage, issue: i64) -> TaskId {
    let running = Task::queue(spec(issue))
        .start(worker, store)
        .expect("start");
    let id = running.id();
    std::mem::forget(running);
    id
}

/// Waits a grace after `store` was opened: its liveness session (the
/// judge's watch) is then older than the grace.
fn let_the_judge_watch_a_grace() {
    std::thread::sleep(TEST_GRACE + StdDuration::from_millis(300));
}

fn sweep_with(
    store: &MysqlStorage,
    sweeper: WorkerId,
    judge: &dyn LivenessJudge,
) -> Vec<RecoveredTask> {
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper,
                now: SystemClock.now(),
                mode: SweepMode::Apply,
            },
            judge,
        )
        .expect("sweep")
}

/// A sweep with the tests' policy that also says which owners it left
/// alone (stalled, not yet provably dead).
fn noticing_sweep(
    store: &MysqlStorage,
    sweeper: WorkerId,
) -> (Vec<RecoveredTask>, Vec<NoticedOwner>) {
    let policy = test_policy();
    let judge = NoticingJudge::new(PolicyJudge {
        policy: &policy,
        probe: &NoProcesses,
    });
    let recovered = sweep_with(store, sweeper, &judge);
    (recovered, judge.into_noticed())
}

/// Sets `worker`'s heartbeat to the server's clock plus `seconds` (negative:
/// silent for that long).
fn set_heartbeat(connection: &mut MysqlConnection, worker: WorkerId, seconds: i64) {
    let updated = diesel::sql_query(
        "UPDATE workers SET heartbeat_at = UTC_TIMESTAMP(6) + INTERVAL ? SECOND WHERE id = ?",
    )
    .bind::<BigInt, _>(seconds)
    .bind::<Text, _>(worker.to_string())
    .execute(connection)
    .expect("set the heartbeat");
    assert_eq!(updated, 1, "worker {worker} has a row");
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Nullable<BigInt>)]
    holder: Option<i64>,
}

/// Whether some session holds `worker`'s named lock (asked, not taken).
fn named_lock_is_held(connection: &mut MysqlConnection, worker: WorkerId) -> bool {
    diesel::sql_query("SELECT IS_USED_LOCK(?) AS holder")
        .bind::<Text, _>(MysqlStorage::worker_lock_name(worker))
        .get_result::<Holder>(connection)
        .expect("IS_USED_LOCK")
        .holder
        .is_some()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn count(connection: &mut MysqlConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(connection)
        .expect("count")
        .count
}

#[derive(QueryableByName)]
struct OwedReport {
    #[diesel(sql_type = Text)]
    task_id: String,
    #[diesel(sql_type = Text)]
    owed_by: String,
}

fn worker_states(store: &MysqlStorage) -> BTreeMap<WorkerId, WorkerState> {
    store
        .list_workers()
        .expect("workers")
        .into_iter()
        .map(|worker| (worker.id, worker.state))
        .collect()
}

fn running_rows(store: &MysqlStorage) -> Vec<TaskId> {
    store
        .list_tasks(&TaskFilter {
            status: Some(TaskStatus::Running),
            ..TaskFilter::default()
        })
        .expect("list")
        .into_iter()
        .map(|task| task.id)
        .collect()
}

// ---------------------------------------------------------------------------
// Exactly-once recovery
// ---------------------------------------------------------------------------

type Span = (std::time::Instant, std::time::Instant);

/// Several dead workers' orphans (some with sessions), rows that name no
/// worker, and a live worker's running rows; `sweepers` stores on the same
/// database sweep at the same moment, each from its own thread. Each orphan
/// is interrupted and reported by exactly one sweep, which the row names;
/// its sessions are invalidated at the same instant (one transaction); its
/// report is owed by that sweep; the live worker's rows stay `running`.
fn concurrent_sweeps_recover_every_orphan_exactly_once(sweepers: usize) {
    const DEAD_WORKERS: usize = 4;
    const ORPHANS_PER_WORKER: usize = 12;
    const OWNERLESS_ORPHANS: usize = 20;
    let database = database_or_skip!();

    let survivor_store = database.open();
    let survivor = register(&survivor_store, "survivor-host", 99);
    let survivor_rows: BTreeSet<TaskId> = (0..5)
        .map(|i| start_and_forget(&survivor, &survivor_store, 5000 + i))
        .collect();
    // The survivor has been silent a long while, but holds its lock.
    set_heartbeat(&mut database.connect(), survivor.id(), -3600);

    let mut orphans: BTreeSet<TaskId> = BTreeSet::new();
    let mut sessions = 0;
    let mut dead_workers = Vec::new();
    {
        // A host that goes away: its store's liveness session ends, so the
        // server frees every named lock it held.
        let doomed = database.open();
        for w in 0..DEAD_WORKERS {
            let worker = register(&doomed, "lost-host", 100 + w as u32);
            for t in 0..ORPHANS_PER_WORKER {
                let running = Task::queue(spec(1 + (w * 100 + t) as i64))
                    .start(&worker, &doomed)
                    .expect("start");
                if t % 3 == 0 {
                    running
                        .record_session(
                            SessionId::parse(&format!("sess_{w}_{t}")).expect("session"),
                            &doomed,
                        )
                        .expect("session");
                    sessions += 1;
                }
                orphans.insert(running.id());
                std::mem::forget(running);
            }
            dead_workers.push(worker.id());
        }
    }
    let mut admin = database.connect();
    for worker in &dead_workers {
        set_heartbeat(&mut admin, *worker, -3600);
    }
    for i in 0..OWNERLESS_ORPHANS {
        let id = TaskId::new_random();
        diesel::sql_query(
            "INSERT INTO task_history (id, repo, issue_number, `user`, agent, agent_type, model, \
               provider, status, started_at) \
             VALUES (?, 'acme/legacy', ?, 'u', 'a', 't', 'm', 'p', 'running', \
               UTC_TIMESTAMP(6) - INTERVAL 1 DAY)",
        )
        .bind::<Text, _>(id.to_string())
        .bind::<BigInt, _>(9000 + i as i64)
        .execute(&mut admin)
        .expect("an ownerless row");
        orphans.insert(id);
    }

    let barrier = Barrier::new(sweepers);
    let reports: Vec<(WorkerId, Vec<RecoveredTask>, Span)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..sweepers)
            .map(|i| {
                let barrier = &barrier;
                let database = &database;
                scope.spawn(move || {
                    let store = database.open();
                    let worker = register(&store, &format!("sweeper-{i}"), 1000 + i as u32);
                    let_the_judge_watch_a_grace();
                    let policy = test_policy();
                    let judge = SlowJudge(PolicyJudge {
                        policy: &policy,
                        probe: &NoProcesses,
                    });
                    barrier.wait();
                    let started = std::time::Instant::now();
                    let recovered = sweep_with(&store, worker.id(), &judge);
                    (worker.id(), recovered, (started, std::time::Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("sweeper thread"))
            .collect()
    });

    let first_end = reports
        .iter()
        .map(|(_, _, (_, end))| *end)
        .min()
        .expect("sweeps");
    assert!(
        reports.iter().all(|(_, _, (start, _))| *start < first_end),
        "the sweeps did not overlap"
    );
    let mut reported_by: BTreeMap<TaskId, WorkerId> = BTreeMap::new();
    let mut invalidated = 0;
    for (sweeper, recovered, _) in &reports {
        for task in recovered {
            assert_eq!(task.recovered_by, *sweeper);
            invalidated += task.sessions_invalidated as usize;
            assert!(
                reported_by.insert(task.task.id, *sweeper).is_none(),
                "task {} reported twice",
                task.task.id
            );
        }
    }
    assert_eq!(
        reported_by.keys().copied().collect::<BTreeSet<_>>(),
        orphans,
        "every orphan is reported exactly once"
    );
    assert_eq!(invalidated, sessions, "every session is invalidated once");

    let store = database.open();
    for (id, sweeper) in &reported_by {
        let row = store.get_task(*id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted);
        assert_eq!(
            row.interrupted_by,
            Some(*sweeper),
            "the row names its sweep"
        );
        assert_eq!(row.finished_at, None);
        for session in store.list_task_sessions(*id).expect("sessions") {
            assert_eq!(
                session.invalidated_at, row.interrupted_at,
                "a session is invalidated in the transaction that interrupted its task"
            );
        }
    }
    let owed: BTreeMap<TaskId, WorkerId> =
        diesel::sql_query("SELECT task_id, owed_by FROM recovery_reports")
            .load::<OwedReport>(&mut admin)
            .expect("reports")
            .into_iter()
            .map(|report| {
                (
                    report.task_id.parse().expect("task id"),
                    report.owed_by.parse().expect("worker id"),
                )
            })
            .collect();
    assert_eq!(
        owed, reported_by,
        "each report is owed by the sweep that made it"
    );
    assert!(store
        .list_sessions()
        .expect("sessions")
        .iter()
        .all(|session| session.invalidated_at.is_some()));
    let states = worker_states(&store);
    for worker in &dead_workers {
        assert_eq!(states[worker], WorkerState::Dead);
    }
    assert_eq!(states[&survivor.id()], WorkerState::Alive);
    assert_eq!(
        running_rows(&store).into_iter().collect::<BTreeSet<_>>(),
        survivor_rows,
        "the live worker's rows are untouched"
    );
}

#[test]
fn two_stores_sweeping_at_once_recover_every_orphan_exactly_once() {
    concurrent_sweeps_recover_every_orphan_exactly_once(2);
}

#[test]
fn four_stores_sweeping_at_once_recover_every_orphan_exactly_once() {
    concurrent_sweeps_recover_every_orphan_exactly_once(4);
}

// ---------------------------------------------------------------------------
// A start racing the sweep that declares its worker dead
// ---------------------------------------------------------------------------

/// Declares every registered owner dead, after `delay`.
struct EveryOwnerIsDead {
    delay: StdDuration,
}

impl LivenessJudge for EveryOwnerIsDead {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        let owner = owner.expect("a registered owner");
        std::thread::sleep(self.delay);
        Liveness::Dead(DeathCause::ProcessGone {
            host: owner.record.host.clone(),
            pid: owner.record.pid,
        })
    }
}

/// Holds the sweep inside its transaction, after it locked the owner's
/// row, until the test lets it go (or 60 s passed).
struct GatedJudge {
    judging: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl LivenessJudge for GatedJudge {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        self.judging.send(()).expect("tell the test");
        // Bounded: a test that failed before letting the sweep go must not
        // leave it waiting (its scope would wait for it forever).
        let _released = self
            .release
            .lock()
            .expect("release")
            .recv_timeout(StdDuration::from_secs(60));
        EveryOwnerIsDead {
            delay: StdDuration::ZERO,
        }
        .judge(owner)
    }
}

/// Whether a statement of this database waits for a row lock.
fn a_statement_waits_for_a_lock(connection: &mut MysqlConnection) -> bool {
    count(
        connection,
        "SELECT COUNT(*) AS count FROM information_schema.INNODB_TRX t \
         JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
         WHERE p.DB = DATABASE() AND t.trx_state = 'LOCK WAIT'",
    ) > 0
}

/// What each session of this database is doing, one line each (for a
/// failure message).
fn what_the_sessions_do(connection: &mut MysqlConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Doing {
        #[diesel(sql_type = Text)]
        doing: String,
    }
    diesel::sql_query(
        "SELECT CONCAT_WS(' | ', ID, COMMAND, TIME, COALESCE(STATE, ''), \
         COALESCE(LEFT(INFO, 100), '')) AS doing \
         FROM information_schema.PROCESSLIST WHERE DB = DATABASE()",
    )
    .load::<Doing>(connection)
    .map(|rows| rows.into_iter().map(|row| row.doing).collect())
    .unwrap_or_else(|error| vec![format!("(the process list: {error})")])
}

/// The start's `INSERT … SELECT … FROM workers … LOCK IN SHARE MODE` waits
/// for the sweep holding its worker's row, then reads the worker `dead`:
/// it writes nothing and says `WorkerNotAlive`. Kills the start losing
/// `LOCK IN SHARE MODE` (under `READ COMMITTED` its SELECT then reads the
/// last committed `alive` without waiting, and commits a row the sweep
/// never sees).
#[test]
fn a_start_waiting_on_the_sweep_that_declares_its_worker_dead_inserts_nothing() {
    let database = database_or_skip!();
    let doomed_store = database.open();
    let doomed = register(&doomed_store, "host-a", 10);
    let orphan = start_and_forget(&doomed, &doomed_store, 1);
    let sweeper_store = database.open();
    let sweeper = register(&sweeper_store, "host-b", 20);
    let (judging_tx, judging) = std::sync::mpsc::sync_channel(1);
    let (release, release_rx) = std::sync::mpsc::channel();
    let judge = GatedJudge {
        judging: judging_tx,
        release: std::sync::Mutex::new(release_rx),
    };
    let late = TaskId::new_random();
    std::thread::scope(|scope| {
        let sweep = scope.spawn(|| sweep_with(&sweeper_store, sweeper.id(), &judge));
        judging.recv().expect("the sweep judges the doomed worker");
        let (started_tx, started) = std::sync::mpsc::channel();
        let doomed_store = &doomed_store;
        let doomed_id = doomed.id();
        scope.spawn(move || {
            let result = doomed_store.insert_running(&NewRunningRow {
                id: late,
                spec: spec(2),
                worker: doomed_id,
                started_at: SystemClock.now(),
            });
            started_tx.send(result).expect("report");
        });
        // Until the start has returned or waits on the worker's row.
        let mut watcher = database.connect();
        // Well inside the judge's own 60 s: a loaded machine is slow, but
        // the start cannot be this slow to reach the lock.
        let deadline = std::time::Instant::now() + StdDuration::from_secs(45);
        let mut early = None;
        loop {
            if let Ok(result) = started.try_recv() {
                early = Some(result);
                break;
            }
            if a_statement_waits_for_a_lock(&mut watcher) {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "the start neither returned nor waited; the sessions: {:#?}",
                    what_the_sessions_do(&mut watcher)
                );
            }
            std::thread::sleep(StdDuration::from_millis(10));
        }
        release.send(()).expect("release the sweep");
        let recovered = sweep.join().expect("sweep thread");
        let start = early.unwrap_or_else(|| started.recv().expect("the start returns"));
        assert!(
            matches!(start, Err(StorageError::WorkerNotAlive { id }) if id == doomed.id()),
            "a start racing the sweep that declares its worker dead must insert nothing: {start:?}"
        );
        assert_eq!(
            recovered.iter().map(|r| r.task.id).collect::<Vec<_>>(),
            vec![orphan]
        );
    });
    assert_eq!(doomed_store.get_task(late).expect("get"), None);
    assert!(running_rows(&doomed_store).is_empty());
}

/// The same race left to the scheduler, many times: a start and a sweep
/// that declares the starting worker dead, let go together. Either the
/// start lands first and the sweep interrupts and reports its row, or it
/// is refused with `WorkerNotAlive` and writes nothing; never is a
/// `running` row of a dead worker left behind.
#[test]
fn a_start_racing_a_sweep_either_lands_and_is_interrupted_or_is_refused() {
    const ROUNDS: usize = 40;
    let database = database_or_skip!();
    let doomed_store = database.open();
    let sweeper_store = database.open();
    let sweeper = register(&sweeper_store, "host-b", 20);
    let mut outcomes = BTreeMap::new();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(60);
    for round in 0..ROUNDS {
        if std::time::Instant::now() > deadline {
            break;
        }
        let doomed = register(&doomed_store, "host-a", 100 + round as u32);
        let orphan = start_and_forget(&doomed, &doomed_store, 1);
        let late = TaskId::new_random();
        let barrier = Barrier::new(2);
        // Spread the start over the sweep's transaction.
        let judge = EveryOwnerIsDead {
            delay: StdDuration::from_millis((round % 8) as u64 * 2),
        };
        let (recovered, start) = std::thread::scope(|scope| {
            let sweep = scope.spawn(|| {
                barrier.wait();
                sweep_with(&sweeper_store, sweeper.id(), &judge)
            });
            let start = scope.spawn(|| {
                barrier.wait();
                std::thread::sleep(StdDuration::from_micros((round % 5) as u64 * 500));
                doomed_store.insert_running(&NewRunningRow {
                    id: late,
                    spec: spec(2),
                    worker: doomed.id(),
                    started_at: SystemClock.now(),
                })
            });
            (
                sweep.join().expect("sweep thread"),
                start.join().expect("start thread"),
            )
        });
        let recovered: BTreeSet<TaskId> = recovered.iter().map(|r| r.task.id).collect();
        assert!(recovered.contains(&orphan), "round {round}: {recovered:?}");
        match start {
            Ok(()) => {
                assert!(
                    recovered.contains(&late),
                    "round {round}: a start that landed first is interrupted by the sweep"
                );
                let row = doomed_store.get_task(late).expect("get").expect("row");
                assert_eq!(row.status, TaskStatus::Interrupted, "round {round}");
                *outcomes.entry("landed, then interrupted").or_insert(0) += 1;
            }
            Err(StorageError::WorkerNotAlive { id }) if id == doomed.id() => {
                assert_eq!(doomed_store.get_task(late).expect("get"), None);
                *outcomes.entry("refused").or_insert(0) += 1;
            }
            Err(error) => panic!("round {round}: {error:?}"),
        }
        assert!(
            running_rows(&doomed_store).is_empty(),
            "round {round}: a running row of a dead worker was left behind"
        );
    }
    eprintln!("start racing a sweep: {outcomes:?}");
}

// ---------------------------------------------------------------------------
// The found-rows flag
// ---------------------------------------------------------------------------

/// Every connection reports the rows an UPDATE matched, changed or not: a
/// heartbeat whose `GREATEST` keeps the stored time (a heartbeat already
/// ahead, or two in one microsecond) changes nothing and still succeeds,
/// on the worker's liveness session and on a pooled connection; an UPDATE
/// of a finished row or of invalidated sessions to the values they hold
/// counts the rows it matched. Kills a connection without
/// `CLIENT_FOUND_ROWS` (the heartbeat would read 0 rows as
/// `WorkerNotAlive`).
#[test]
fn updates_count_the_rows_they_matched_even_when_nothing_changes() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    let mut admin = database.connect();
    set_heartbeat(&mut admin, worker.id(), 3600);
    let ahead = worker_heartbeat(&store, worker.id());
    worker
        .heartbeat(&store)
        .expect("a heartbeat that changes nothing");
    // A store the worker did not register through beats on a pooled
    // connection.
    let other_store = database.open();
    other_store
        .heartbeat_worker(worker.id(), SystemClock.now())
        .expect("a pooled heartbeat that changes nothing");
    assert_eq!(
        worker_heartbeat(&store, worker.id()),
        ahead,
        "GREATEST kept it"
    );

    let running = Task::queue(spec(1)).start(&worker, &store).expect("start");
    running
        .record_session(SessionId::parse("sess_1").expect("session"), &store)
        .expect("session");
    running
        .record_session(SessionId::parse("sess_2").expect("session"), &store)
        .expect("session");
    let id = running.id();
    std::mem::forget(running);
    assert_eq!(
        store
            .finish_running(&FinishRow {
                id,
                worker: worker.id(),
                outcome: Outcome::Interrupted(InterruptReason::new("stopped").expect("reason")),
                at: SystemClock.now(),
            })
            .expect("finish"),
        FinishWrite::Updated {
            sessions_invalidated: 2
        }
    );
    let rewrite = |sql: &str| {
        store
            .with_connection(|connection| {
                diesel::sql_query(sql)
                    .bind::<Text, _>(id.to_string())
                    .execute(connection)
                    .expect("update")
            })
            .expect("a connection")
    };
    for _ in 0..2 {
        assert_eq!(
            rewrite(
                "UPDATE task_history SET status = status, interrupted_at = interrupted_at \
                 WHERE id = ?"
            ),
            1,
            "a row rewritten with its own values is counted"
        );
        assert_eq!(
            rewrite(
                "UPDATE claude_sdk_sessions SET invalidated_at = invalidated_at, \
                 invalidation_reason = invalidation_reason WHERE task_id = ?"
            ),
            2,
            "an invalidation repeated with the same values counts both sessions"
        );
    }
}

fn worker_heartbeat(store: &MysqlStorage, worker: WorkerId) -> Timestamp {
    store
        .list_workers()
        .expect("workers")
        .into_iter()
        .find(|record| record.id == worker)
        .expect("the worker's row")
        .heartbeat_at
}

// ---------------------------------------------------------------------------
// Interrupted finishes
// ---------------------------------------------------------------------------

/// The conformance suite refuses interrupted finishes on foreign,
/// finished and recovered rows; here, an interrupted finish of an id with
/// no row is refused as `Missing` and inserts nothing (the backend has no
/// upsert to fall back on).
#[test]
fn an_interrupted_finish_of_an_id_with_no_row_is_refused_and_inserts_nothing() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    let id = TaskId::new_random();
    assert_eq!(
        store
            .finish_running(&FinishRow {
                id,
                worker: worker.id(),
                outcome: Outcome::Interrupted(InterruptReason::new("late").expect("reason")),
                at: SystemClock.now(),
            })
            .expect("finish"),
        FinishWrite::Refused(FinishRefusal::Missing)
    );
    assert_eq!(store.get_task(id).expect("get"), None);
    assert!(store
        .list_tasks(&TaskFilter::default())
        .expect("list")
        .is_empty());
}

// ---------------------------------------------------------------------------
// Rows as other tools write them; the server's constraints
// ---------------------------------------------------------------------------

fn utc(date: (i32, u32, u32), time: (u32, u32, u32), micros: u32) -> Timestamp {
    NaiveDate::from_ymd_opt(date.0, date.1, date.2)
        .and_then(|day| day.and_hms_micro_opt(time.0, time.1, time.2, micros))
        .expect("a valid time")
        .and_utc()
}

/// Rows inserted by the `mariadb` command-line client (the text protocol,
/// the server's default session settings) read back as written: each
/// status, times to the microsecond, NULL columns as `None`, newest start
/// first and, at the same start, the greater id first.
#[test]
fn rows_inserted_by_the_mariadb_client_are_listed_as_written() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    let success = "00000000-0000-4000-8000-000000000001";
    let interrupted = "00000000-0000-4000-8000-000000000002";
    let tie_low = "00000000-0000-4000-8000-00000000000a";
    let tie_high = "00000000-0000-4000-8000-00000000000b";
    let running = "00000000-0000-4000-8000-000000000003";
    let inserted = database.run_in_mariadb_client(&format!(
        "INSERT INTO task_history (id, repo, issue_number, `user`, agent, agent_type, model, \
           provider, status, started_at, finished_at, input_tokens, output_tokens, cost_usd, \
           turns, artifacts, worker_id, interrupted_at, interrupt_reason, interrupted_by) VALUES \
         ('{success}', 'acme/widgets', 994, 'alice', 'fixer', 'claude_sdk', 'claude-opus', \
           'anthropic', 'success', '2026-05-10 10:00:00.123456', '2026-05-10 10:05:00.000001', \
           1200, 300, 0.42, 7, '[\"pr/17\"]', NULL, NULL, NULL, NULL), \
         ('{interrupted}', 'acme/widgets', 957, 'bob', 'fixer', 'claude_sdk', 'claude-opus', \
           'anthropic', 'interrupted', '2026-05-10 11:00:00.000001', NULL, NULL, NULL, NULL, \
           NULL, NULL, '{worker}', '2026-05-10 11:30:00.999999', 'host rebooted', '{worker}'), \
         ('{tie_low}', 'acme/gears', 1, 'carol', 'triager', 'claude_sdk', 'claude-haiku', \
           'anthropic', 'failure', '2026-05-10 12:00:00.500000', '2026-05-10 12:01:00', 10, 20, \
           0.01, 1, '[]', NULL, NULL, NULL, NULL), \
         ('{tie_high}', 'acme/gears', 2, 'carol', 'triager', 'claude_sdk', 'claude-haiku', \
           'anthropic', 'cancelled', '2026-05-10 12:00:00.500000', '2026-05-10 12:00:30', 0, 0, \
           0, 0, NULL, NULL, NULL, NULL, NULL), \
         ('{running}', 'acme/gears', 3, 'dave', 'fixer', 'claude_sdk', 'claude-opus', \
           'anthropic', 'running', '2026-05-10 09:59:59.999999', NULL, NULL, NULL, NULL, NULL, \
           NULL, '{worker}', NULL, NULL, NULL)",
        worker = worker.id()
    ));
    assert!(
        inserted,
        "the server accepts rows of every shape tasktrail writes"
    );
    let rows = store.list_tasks(&TaskFilter::default()).expect("list");
    let ids: Vec<String> = rows.iter().map(|row| row.id.to_string()).collect();
    assert_eq!(ids, [tie_high, tie_low, interrupted, success, running]);
    let by_id: BTreeMap<String, _> = rows
        .into_iter()
        .map(|row| (row.id.to_string(), row))
        .collect();

    let row = &by_id[success];
    assert_eq!(row.status, TaskStatus::Success);
    assert_eq!(row.started_at, utc((2026, 5, 10), (10, 0, 0), 123_456));
    assert_eq!(row.finished_at, Some(utc((2026, 5, 10), (10, 5, 0), 1)));
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.turns),
        (Some(1200), Some(300), Some(7))
    );
    assert_eq!(row.cost_usd, Some(0.42));
    assert_eq!(row.artifacts, Some(vec!["pr/17".to_owned()]));
    assert_eq!(
        (row.worker_id, row.interrupted_at, row.interrupted_by),
        (None, None, None)
    );

    let row = &by_id[interrupted];
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(row.started_at, utc((2026, 5, 10), (11, 0, 0), 1));
    assert_eq!(
        row.interrupted_at,
        Some(utc((2026, 5, 10), (11, 30, 0), 999_999))
    );
    assert_eq!(row.interrupt_reason.as_deref(), Some("host rebooted"));
    assert_eq!(row.interrupted_by, Some(worker.id()));
    assert_eq!(
        (
            row.finished_at,
            row.input_tokens,
            row.cost_usd,
            row.artifacts.clone()
        ),
        (None, None, None, None)
    );

    assert_eq!(by_id[tie_high].status, TaskStatus::Cancelled);
    assert_eq!(by_id[tie_high].artifacts, None);
    assert_eq!(by_id[tie_low].artifacts, Some(Vec::new()));
    let row = &by_id[running];
    assert_eq!(row.status, TaskStatus::Running);
    assert_eq!(row.started_at, utc((2026, 5, 10), (9, 59, 59), 999_999));
    assert_eq!(row.worker_id, Some(worker.id()));

    // The worker finishes the row the other tool started for it.
    assert_eq!(
        store
            .finish_running(&FinishRow {
                id: running.parse().expect("id"),
                worker: worker.id(),
                outcome: Outcome::Success(report()),
                at: SystemClock.now(),
            })
            .expect("finish"),
        FinishWrite::Updated {
            sessions_invalidated: 0
        }
    );
}

/// The schema's CHECK constraints are the server's, whoever writes: an
/// unknown status, a `running` row with a finish time, an `interrupted`
/// row with one, artifacts that are not JSON, an unknown worker state, are
/// each refused by the server (from the command-line client and from a
/// Diesel connection), and nothing is written.
#[test]
fn the_servers_check_constraints_refuse_rows_tasktrail_never_writes() {
    let database = database_or_skip!();
    let store = database.open();
    let columns = "INSERT INTO task_history (id, repo, issue_number, `user`, agent, agent_type, \
                   model, provider, status, started_at, finished_at, artifacts) VALUES ";
    let refused = [
        "('00000000-0000-4000-8000-000000000001', 'r', 1, 'u', 'a', 't', 'm', 'p', 'exploded', \
          '2026-05-10 10:00:00', NULL, NULL)",
        "('00000000-0000-4000-8000-000000000002', 'r', 1, 'u', 'a', 't', 'm', 'p', 'running', \
          '2026-05-10 10:00:00', '2026-05-10 10:01:00', NULL)",
        "('00000000-0000-4000-8000-000000000003', 'r', 1, 'u', 'a', 't', 'm', 'p', \
          'interrupted', '2026-05-10 10:00:00', '2026-05-10 10:01:00', NULL)",
        "('00000000-0000-4000-8000-000000000004', 'r', 1, 'u', 'a', 't', 'm', 'p', 'success', \
          '2026-05-10 10:00:00', '2026-05-10 10:01:00', 'not json')",
    ];
    for values in refused {
        let sql = format!("{columns}{values}");
        assert!(
            !database.run_in_mariadb_client(&sql),
            "the client's INSERT is refused: {values}"
        );
        let error = diesel::sql_query(&sql)
            .execute(&mut database.connect())
            .expect_err("refused");
        assert!(
            matches!(error, DieselError::DatabaseError(..)),
            "{values}: {error:?}"
        );
    }
    assert!(!database.run_in_mariadb_client(
        "INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state) \
         VALUES ('00000000-0000-4000-8000-000000000009', 'h', 1, 'm', UTC_TIMESTAMP(6), \
         UTC_TIMESTAMP(6), 'zombie')"
    ));
    assert!(store
        .list_tasks(&TaskFilter::default())
        .expect("list")
        .is_empty());
    assert!(store.list_workers().expect("workers").is_empty());
}

/// Times written through the store keep their microseconds, and rows that
/// start in the same microsecond list by id, greater first (as on every
/// backend).
#[test]
fn times_keep_their_microseconds_and_equal_starts_list_by_id() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    let started_at = utc((2026, 5, 11), (14, 37, 2), 123_457);
    let mut ids: Vec<TaskId> = (0..4).map(|_| TaskId::new_random()).collect();
    for (i, id) in ids.iter().enumerate() {
        store
            .insert_running(&NewRunningRow {
                id: *id,
                spec: spec(1 + i as i64),
                worker: worker.id(),
                started_at,
            })
            .expect("start");
    }
    let earlier = TaskId::new_random();
    store
        .insert_running(&NewRunningRow {
            id: earlier,
            spec: spec(9),
            worker: worker.id(),
            started_at: started_at - Duration::microseconds(1),
        })
        .expect("start");
    let rows = store.list_tasks(&TaskFilter::default()).expect("list");
    ids.sort_by_key(|id| std::cmp::Reverse(id.to_string()));
    ids.push(earlier);
    assert_eq!(rows.iter().map(|row| row.id).collect::<Vec<_>>(), ids);
    assert!(rows[..4].iter().all(|row| row.started_at == started_at));
    assert_eq!(rows[4].started_at, started_at - Duration::microseconds(1));
    let finished_at = started_at + Duration::microseconds(999_999);
    assert_eq!(
        store
            .finish_running(&FinishRow {
                id: earlier,
                worker: worker.id(),
                outcome: Outcome::Failure(report()),
                at: finished_at,
            })
            .expect("finish"),
        FinishWrite::Updated {
            sessions_invalidated: 0
        }
    );
    assert_eq!(
        store
            .get_task(earlier)
            .expect("get")
            .and_then(|row| row.finished_at),
        Some(finished_at)
    );
}

// ---------------------------------------------------------------------------
// Compatibility and migrations
// ---------------------------------------------------------------------------

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = Text)]
    name: String,
}

fn tables(database: &TestDatabase) -> Vec<String> {
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables \
         WHERE table_schema = DATABASE()",
    )
    .load::<TableName>(&mut database.connect())
    .expect("tables")
    .into_iter()
    .map(|table| table.name)
    .collect();
    names.sort();
    names
}

/// A database holding another program's tables is refused, by every
/// opener, and left as it was.
#[test]
fn a_database_holding_other_tables_is_refused_and_left_alone() {
    let database = database_or_skip!();
    assert!(
        database.run_in_mariadb_client("CREATE TABLE invoices (id INT PRIMARY KEY, total DOUBLE)")
    );
    let options = MysqlOptions::default();
    for error in [
        MysqlStorage::open(database.url()).expect_err("refused"),
        MysqlStorage::open_unmigrated(database.url(), &options).expect_err("refused"),
        MysqlStorage::open_read_only(database.url(), &options).expect_err("refused"),
    ] {
        assert!(
            matches!(error, StorageError::Incompatible { .. }),
            "{error:?}"
        );
    }
    assert_eq!(tables(&database), ["invoices"], "nothing was created");
}

/// A migration version this binary does not know (a newer tasktrail's) is
/// refused by every opener.
#[test]
fn a_database_with_an_unknown_migration_is_refused() {
    let database = database_or_skip!();
    drop(database.open());
    assert!(database.run_in_mariadb_client(
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('20990101000000')"
    ));
    let options = MysqlOptions::default();
    for error in [
        MysqlStorage::open(database.url()).expect_err("refused"),
        MysqlStorage::open_read_only(database.url(), &options).expect_err("refused"),
    ] {
        assert!(
            matches!(error, StorageError::Incompatible { .. }),
            "{error:?}"
        );
    }
}

/// A reader never migrates: on an empty database `open_read_only` is
/// refused, naming the migration it lacks, and creates nothing.
#[test]
fn open_read_only_refuses_an_unmigrated_database_naming_the_migration() {
    let database = database_or_skip!();
    let error = MysqlStorage::open_read_only(database.url(), &MysqlOptions::default())
        .expect_err("refused");
    let StorageError::Incompatible { detail } = &error else {
        panic!("{error:?}");
    };
    assert!(tables(&database).is_empty(), "a reader runs no DDL");
    let versions = database.open().applied_migrations().expect("versions");
    assert_eq!(versions.len(), 1);
    assert!(
        detail.contains(&versions[0]),
        "the refusal names {}: {detail}",
        versions[0]
    );
    MysqlStorage::open_read_only(database.url(), &MysqlOptions::default())
        .expect("a current database opens for reading");
}

/// Stores opened unmigrated on one empty database migrate from four threads
/// at once: one applies the migration, the others wait and find it applied;
/// `migrate` again applies nothing.
#[test]
fn concurrent_migrates_apply_each_migration_once_and_migrate_is_idempotent() {
    let database = database_or_skip!();
    let barrier = Barrier::new(4);
    let applied: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let store =
                        MysqlStorage::open_unmigrated(database.url(), &MysqlOptions::default())
                            .expect("open");
                    barrier.wait();
                    store.migrate().expect("migrate")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        applied.iter().map(Vec::len).sum::<usize>(),
        1,
        "{applied:?}"
    );
    let store = database.open();
    assert_eq!(store.applied_migrations().expect("versions").len(), 1);
    assert!(store.migrate().expect("again").is_empty());
    assert!(store.migrate().expect("and again").is_empty());
}

// ---------------------------------------------------------------------------
// Error kinds
// ---------------------------------------------------------------------------

/// A wrong password and an unknown database are permanent refusals
/// (`AccessDenied`), a port where nothing listens is transient
/// (`Unavailable`); no error shows the password.
#[test]
fn logins_refused_are_access_denied_servers_down_unavailable_and_the_password_never_shown() {
    let database = database_or_skip!();
    let login = ClientLogin::of(database.url());
    let secret = "hunter2-Sup3rSecret";
    let cases = [
        (
            login.url_with(secret, &login.port, database.scratch.name()),
            true,
        ),
        (
            login.url_with(
                login.password.as_deref().unwrap_or(""),
                &login.port,
                "tasktrail_no_such_database",
            ),
            true,
        ),
        (login.url_with(secret, "1", "tasktrail"), false),
    ];
    for (url, refused) in cases {
        let options = MysqlOptions {
            connection_timeout: StdDuration::from_secs(2),
            ..MysqlOptions::default()
        };
        let error = MysqlStorage::open_with(&url, options).expect_err("must fail");
        let shown = format!(
            "{error} / {error:?} / {:?}",
            std::error::Error::source(&error).map(ToString::to_string)
        );
        assert!(
            !shown.contains(secret) && !shown.contains("Sup3r"),
            "{shown}"
        );
        if refused {
            assert!(
                matches!(error, StorageError::AccessDenied { .. }) && !error.is_transient(),
                "{url}: {shown}"
            );
        } else {
            assert!(
                matches!(error, StorageError::Unavailable { .. }) && error.is_transient(),
                "{url}: {shown}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Liveness through named locks
// ---------------------------------------------------------------------------

/// A worker whose store is dropped (its process died: the liveness
/// session's socket closes) loses its named lock at once; a sweep leaves
/// its rows alone while its silence is within the grace, and recovers them
/// (`LockReleased`) once it is past.
#[test]
fn a_worker_whose_store_is_dropped_loses_its_lock_and_is_recovered_after_the_grace() {
    let database = database_or_skip!();
    let mut admin = database.connect();
    let (crashed, orphan) = {
        let doomed = database.open();
        let worker = register(&doomed, "host-a", 10);
        let orphan = start_and_forget(&worker, &doomed, 1);
        assert!(named_lock_is_held(&mut admin, worker.id()));
        (worker.id(), orphan)
    };
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while named_lock_is_held(&mut admin, crashed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server keeps a dropped store's lock"
        );
        std::thread::sleep(StdDuration::from_millis(20));
    }
    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    let_the_judge_watch_a_grace();
    set_heartbeat(&mut admin, crashed, 0);
    let (recovered, noticed) = noticing_sweep(&store, sweeper.id());
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(noticed.len(), 1);
    assert_eq!(
        noticed[0].verdict,
        Liveness::NotYetProvable(Unproven::WithinGrace)
    );
    set_heartbeat(&mut admin, crashed, -2);
    let (recovered, _) = noticing_sweep(&store, sweeper.id());
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].task.id, orphan);
    assert!(
        matches!(&recovered[0].cause, DeathCause::LockReleased { host, pid: 10, .. } if host == "host-a"),
        "{:?}",
        recovered[0].cause
    );
    assert_eq!(worker_states(&store)[&crashed], WorkerState::Dead);
    assert!(
        !named_lock_is_held(&mut admin, crashed),
        "the judge took no lock"
    );
}

/// A worker whose store lives holds its lock: however old its heartbeat,
/// sweep after sweep reads it `Stalled` and leaves its rows `running`;
/// when it wakes up its writes go through.
#[test]
fn a_worker_holding_its_lock_is_never_recovered_however_old_its_heartbeat() {
    let database = database_or_skip!();
    let hung_store = database.open();
    let hung = register(&hung_store, "host-a", 10);
    let running = Task::queue(spec(1))
        .start(&hung, &hung_store)
        .expect("start");
    let id = running.id();
    let mut admin = database.connect();
    set_heartbeat(&mut admin, hung.id(), -30 * 24 * 3600);
    assert!(named_lock_is_held(&mut admin, hung.id()));
    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    let_the_judge_watch_a_grace();
    for _ in 0..3 {
        let (recovered, noticed) = noticing_sweep(&store, sweeper.id());
        assert!(recovered.is_empty(), "{recovered:?}");
        assert_eq!(noticed.len(), 1);
        assert!(
            matches!(noticed[0].verdict, Liveness::Stalled { silence } if silence >= Duration::days(29)),
            "{:?}",
            noticed[0].verdict
        );
    }
    assert_eq!(worker_states(&store)[&hung.id()], WorkerState::Alive);
    hung.heartbeat(&hung_store).expect("heartbeat");
    running
        .finish(Outcome::Success(report()), &hung_store)
        .expect("finish");
    assert_eq!(
        store.get_task(id).expect("get").map(|row| row.status),
        Some(TaskStatus::Success)
    );
}

/// Ends the session holding `worker`'s named lock (`KILL CONNECTION`), as
/// a server restart or a network reset ends every session: the server
/// frees the lock, and the store that held it learns of it only when it
/// next uses that session.
fn kill_the_session_holding(connection: &mut MysqlConnection, worker: WorkerId) {
    let holder = diesel::sql_query("SELECT IS_USED_LOCK(?) AS holder")
        .bind::<Text, _>(MysqlStorage::worker_lock_name(worker))
        .get_result::<Holder>(connection)
        .expect("IS_USED_LOCK")
        .holder
        .expect("a session holds the lock");
    diesel::sql_query("KILL CONNECTION ?")
        .bind::<BigInt, _>(holder)
        .execute(connection)
        .expect("kill the session");
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while named_lock_is_held(connection, worker) {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock outlived its session"
        );
        std::thread::sleep(StdDuration::from_millis(20));
    }
}

/// Heartbeats as a worker does, retrying a transient failure (at most
/// twice).
fn heartbeat_until_it_lands(worker: &RegisteredWorker, store: &MysqlStorage) {
    for _ in 0..2 {
        match worker.heartbeat(store) {
            Ok(()) => return,
            Err(error) => assert!(error.is_transient(), "{error:?}"),
        }
    }
    worker.heartbeat(store).expect("heartbeat");
}

/// Every session ends at once (a server restart, a network reset): the
/// judge's own liveness session with them, and every lock is free until
/// its owner's next heartbeat takes it back. A sweep right after, by a
/// store that has not yet used its session since, must not read the free
/// lock of a live worker silent past the grace (the outage) as death: its
/// watch ended with its session. Once the worker's heartbeat took its lock
/// back, nothing is recovered either.
#[test]
fn a_sweep_after_every_session_ended_reads_no_free_lock_as_death() {
    let database = database_or_skip!();
    let live_store = database.open();
    let live = register(&live_store, "host-a", 10);
    let task = start_and_forget(&live, &live_store, 1);
    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    let_the_judge_watch_a_grace();
    let mut admin = database.connect();
    kill_the_session_holding(&mut admin, live.id());
    kill_the_session_holding(&mut admin, sweeper.id());
    // The outage lasted longer than the grace.
    set_heartbeat(&mut admin, live.id(), -5);
    let (recovered, noticed) = noticing_sweep(&store, sweeper.id());
    assert!(
        recovered.is_empty(),
        "a sweep whose watch ended read a live worker's free lock as death: {recovered:?}"
    );
    assert_eq!(noticed.len(), 1);
    assert!(
        matches!(noticed[0].verdict, Liveness::NotYetProvable(_)),
        "{:?}",
        noticed[0].verdict
    );
    // The live worker's heartbeats reconnect and take its lock back (the
    // first finds its session gone: a transient failure, retried).
    heartbeat_until_it_lands(&live, &live_store);
    assert!(named_lock_is_held(&mut admin, live.id()));
    set_heartbeat(&mut admin, live.id(), -5);
    heartbeat_until_it_lands(&sweeper, &store);
    let_the_judge_watch_a_grace();
    let (recovered, _) = noticing_sweep(&store, sweeper.id());
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(
        store.get_task(task).expect("get").map(|row| row.status),
        Some(TaskStatus::Running)
    );
    assert_eq!(worker_states(&store)[&live.id()], WorkerState::Alive);
}

#[derive(QueryableByName)]
struct ConnectionId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Ends every session of this database but `connection`'s own, as a
/// server restart or a network reset does.
fn kill_every_other_session(connection: &mut MysqlConnection) -> usize {
    let sessions: Vec<ConnectionId> = diesel::sql_query(
        "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
         WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    )
    .load(connection)
    .expect("the sessions");
    for session in &sessions {
        diesel::sql_query("KILL CONNECTION ?")
            .bind::<BigInt, _>(session.id)
            .execute(connection)
            .expect("kill a session");
    }
    sessions.len()
}

/// After the server ended every session of a store (its pooled
/// connections and its liveness session), each dead connection fails at
/// most one statement, transiently, and is replaced: the store works
/// again at once, without a restart. Kills a pool that hands a dead
/// connection back out after its failed statement (each checkout of it
/// then fails for as long as the pool keeps it).
#[test]
fn a_store_whose_sessions_the_server_ended_fails_each_at_most_once_and_recovers() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    // Two pooled connections, both made and handed back.
    store
        .with_connection(|_| store.with_connection(|_| ()).expect("a second connection"))
        .expect("a connection");
    // Two pooled connections and the liveness session, at least (r2d2 may
    // have opened one more in the background).
    let killed = kill_every_other_session(&mut database.connect());
    assert!(killed >= 3, "killed {killed} sessions");
    let mut failures = 0;
    let listed = loop {
        match store.list_tasks(&TaskFilter::default()) {
            Ok(rows) => break rows,
            Err(error) => {
                assert!(error.is_transient(), "{error:?}");
                failures += 1;
                // Each dead pooled connection fails at most once (the
                // liveness session is one of the killed sessions).
                assert!(
                    failures < killed,
                    "a dead connection failed twice: {error:?}"
                );
            }
        }
    };
    assert!(listed.is_empty());
    heartbeat_until_it_lands(&worker, &store);
    for issue in 1..=5 {
        let running = Task::queue(spec(issue))
            .start(&worker, &store)
            .expect("a start after the outage");
        running
            .finish(Outcome::Success(report()), &store)
            .expect("a finish after the outage");
    }
}

/// The two statements on every task's hot path are prepared once per
/// connection and reused (static query ids: diesel-async caches only
/// those), not prepared, executed and closed on every call.
#[test]
fn start_and_completed_finish_are_prepared_once_per_connection_and_reused() {
    let database = database_or_skip!();
    let log = tasktrail_diesel::StatementLog::new();
    let store = MysqlStorage::open_with(
        database.url(),
        MysqlOptions {
            pool_size: 1,
            ..MysqlOptions::default()
        }
        .with_statement_log(log.clone()),
    )
    .expect("open");
    let worker = register(&store, "dev", 10);
    support::five_lifecycles_prepare_the_hot_path_once(&store, &worker, &log);
}

/// Sets `worker`'s state with an operator's UPDATE.
fn set_state(connection: &mut MysqlConnection, worker: WorkerId, state: &str) {
    let updated = diesel::sql_query("UPDATE workers SET state = ? WHERE id = ?")
        .bind::<Text, _>(state)
        .bind::<Text, _>(worker.to_string())
        .execute(connection)
        .expect("set the state");
    assert_eq!(updated, 1, "worker {worker} has a row");
}

/// Asserts `worker`'s named lock stays held for a while (a session the
/// store dropped is ended by the server within milliseconds).
fn assert_lock_stays_held(connection: &mut MysqlConnection, worker: WorkerId) {
    let until = std::time::Instant::now() + StdDuration::from_millis(500);
    while std::time::Instant::now() < until {
        assert!(
            named_lock_is_held(connection, worker),
            "worker {worker}'s lock was let go of"
        );
        std::thread::sleep(StdDuration::from_millis(20));
    }
}

/// A heartbeat refused on a liveness session that still answers (its
/// worker was declared dead) keeps the session: the other workers
/// registered through the store keep their locks (a session dropped after
/// every failed statement would free them, and a sweep could then read a
/// live worker's free lock as death). The refused worker lets go of its
/// own lock and is no longer tracked.
#[test]
fn a_refused_heartbeat_keeps_the_liveness_session_and_the_other_workers_locks() {
    let database = database_or_skip!();
    let store = database.open();
    let declared_dead = register(&store, "host-a", 10);
    let live = register(&store, "host-a", 11);
    let mut admin = database.connect();
    set_state(&mut admin, declared_dead.id(), "dead");
    let refused = declared_dead
        .heartbeat(&store)
        .expect_err("a dead worker's heartbeat");
    assert!(
        matches!(refused, StorageError::WorkerNotAlive { id } if id == declared_dead.id()),
        "{refused:?}"
    );
    assert!(!named_lock_is_held(&mut admin, declared_dead.id()));
    assert_lock_stays_held(&mut admin, live.id());
    assert!(
        !store.release_worker_lock(declared_dead.id()),
        "a refused worker is no longer tracked"
    );
    live.heartbeat(&store).expect("the live worker's heartbeat");
    assert!(named_lock_is_held(&mut admin, live.id()));
}

/// After the store's liveness session was lost, a heartbeat takes the
/// worker's lock back first. While another session holds it (the lost one
/// the server has not ended yet), the heartbeat of an `alive` worker fails
/// transiently and the worker stays tracked; once the worker was declared
/// dead, it fails with `WorkerNotAlive` and the store stops taking the lock
/// back. When the lock is free again, a tracked alive worker's heartbeat
/// takes it.
#[test]
fn a_heartbeat_after_a_reconnect_waits_for_a_lock_another_session_holds() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "host-a", 10);
    let other = register(&store, "host-a", 11);
    let mut admin = database.connect();
    kill_the_session_holding(&mut admin, worker.id());
    // A session that is not the store's holds the worker's lock.
    let mut holder = database.connect();
    assert_eq!(
        diesel::sql_query("SELECT GET_LOCK(?, 0) AS holder")
            .bind::<Text, _>(MysqlStorage::worker_lock_name(worker.id()))
            .get_result::<Holder>(&mut holder)
            .expect("GET_LOCK")
            .holder,
        Some(1)
    );
    // The first heartbeat may find the session gone; the next reconnects.
    let mut held_elsewhere = None;
    for _ in 0..3 {
        match worker.heartbeat(&store) {
            Ok(()) => panic!("a heartbeat without the worker's lock succeeded"),
            Err(error) => {
                assert!(error.is_transient(), "{error:?}");
                if error.to_string().contains("held by another session")
                    || format!("{error:?}").contains("held by another session")
                {
                    held_elsewhere = Some(error);
                    break;
                }
            }
        }
    }
    assert!(held_elsewhere.is_some(), "the heartbeat never said why");
    // Still tracked: once the lock is free, the next heartbeat takes it.
    diesel::sql_query("SELECT RELEASE_LOCK(?) AS holder")
        .bind::<Text, _>(MysqlStorage::worker_lock_name(worker.id()))
        .get_result::<Holder>(&mut holder)
        .expect("RELEASE_LOCK");
    worker
        .heartbeat(&store)
        .expect("the heartbeat takes the lock back");
    assert!(named_lock_is_held(&mut admin, worker.id()));
    // The other worker, declared dead while another session holds its lock:
    // refused as not alive, and no longer tracked.
    heartbeat_until_it_lands(&other, &store);
    kill_the_session_holding(&mut admin, other.id());
    assert_eq!(
        diesel::sql_query("SELECT GET_LOCK(?, 0) AS holder")
            .bind::<Text, _>(MysqlStorage::worker_lock_name(other.id()))
            .get_result::<Holder>(&mut holder)
            .expect("GET_LOCK")
            .holder,
        Some(1)
    );
    set_state(&mut admin, other.id(), "dead");
    let mut refused = None;
    for _ in 0..3 {
        match other.heartbeat(&store) {
            Ok(()) => panic!("a dead worker's heartbeat succeeded"),
            Err(StorageError::WorkerNotAlive { id }) => {
                refused = Some(id);
                break;
            }
            Err(error) => assert!(error.is_transient(), "{error:?}"),
        }
    }
    assert_eq!(refused, Some(other.id()));
    assert!(
        !store.release_worker_lock(other.id()),
        "a worker found dead is no longer tracked"
    );
}

/// A full lifecycle on `store`: a worker registers, starts and finishes a
/// task, and the store lists it. Whether it reached the end is the
/// caller's assertion.
fn one_lifecycle(store: &MysqlStorage) -> Vec<TaskStatus> {
    let worker = register(store, "host-a", 10);
    let running = Task::queue(spec(1)).start(&worker, store).expect("start");
    running
        .finish(Outcome::Success(report()), store)
        .expect("finish");
    store
        .list_tasks(&TaskFilter::default())
        .expect("list")
        .into_iter()
        .map(|row| row.status)
        .collect()
}

/// A tokio server opens its store inside a task on its multi-thread
/// runtime, uses it there and drops it at shutdown. Each connection's own
/// runtime leaves the caller's worker thread for the call
/// (`block_in_place`: calling `block_on` from a worker panics, "Cannot
/// start a runtime from within a runtime") and is shut down without
/// waiting when dropped (a runtime dropped the usual way inside async code
/// panics too).
#[test]
fn a_store_is_opened_used_and_dropped_on_a_multi_thread_runtimes_worker() {
    let database = database_or_skip!();
    let url = database.url().to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let statuses = runtime
        .block_on(async move {
            tokio::spawn(async move {
                let store = MysqlStorage::open(&url).expect("open inside async code");
                let statuses = one_lifecycle(&store);
                drop(store);
                statuses
            })
            .await
        })
        .expect("the task neither panicked nor was cancelled");
    assert_eq!(statuses, [TaskStatus::Success]);
}

/// The async `Worker`'s way on a current-thread runtime: the sync store
/// opened and used through `spawn_blocking` works end to end. (A usage
/// check, not a guard: whether a connection's runtime is entered directly
/// or through `block_in_place` here, both work on a blocking thread; the
/// multi-thread test above is the one that fails when the choice is
/// wrong.)
#[test]
fn a_store_is_used_through_spawn_blocking_on_a_current_thread_runtime() {
    let database = database_or_skip!();
    let url = database.url().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let statuses = runtime
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                let store = MysqlStorage::open(&url).expect("open on a blocking thread");
                one_lifecycle(&store)
            })
            .await
        })
        .expect("the blocking task did not panic");
    assert_eq!(statuses, [TaskStatus::Success]);
}

/// Deregistering a worker lets go of its named lock at once; the other
/// workers of the store keep theirs.
#[test]
fn deregistering_a_worker_releases_its_named_lock_and_no_other() {
    let database = database_or_skip!();
    let mut admin = database.connect();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    let kept = register(&store, "dev", 11);
    let gone = worker.id();
    assert!(
        named_lock_is_held(&mut admin, gone),
        "held while registered"
    );
    worker.deregister(&store).expect("deregister");
    assert!(
        !named_lock_is_held(&mut admin, gone),
        "deregistering released its lock"
    );
    assert!(named_lock_is_held(&mut admin, kept.id()));
}

/// `show` of a row prints every column as the database holds it (for a
/// row that cannot be read as a record): the row's twenty columns as
/// text, `None` for NULL; no row for an id the table does not hold.
#[test]
fn a_row_is_shown_column_by_column_as_the_database_holds_it() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "h", 1);
    let running = Task::queue(spec(9)).start(&worker, &store).expect("start");
    let id = running.id();
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
    let columns = store.raw_task_columns(id).expect("raw").expect("a row");
    let value = |name: &str| support::column_value(&columns, name);
    assert_eq!(columns.len(), 20);
    assert_eq!(value("id"), Some(id.to_string()));
    assert_eq!(value("status").as_deref(), Some("success"));
    assert_eq!(value("worker_id"), Some(worker.id().to_string()));
    assert_eq!(value("interrupted_at"), None);
    assert!(store
        .raw_task_columns(TaskId::new_random())
        .expect("raw")
        .is_none());
}

/// There is no pre-fix MySQL schema to adopt: `adopt` refuses, saying so,
/// and writes nothing.
#[test]
fn adoption_is_refused_on_mysql_and_writes_nothing() {
    let database = database_or_skip!();
    let error = MysqlStorage::adopt(database.url()).expect_err("refused");
    let StorageError::NotAdoptable { differences } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert!(tables(&database).is_empty(), "nothing written");
}
