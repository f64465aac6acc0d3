//! The Postgres backend against a real server: the upgrade path, the
//! lifecycle, fencing, liveness on the database's clock and advisory locks,
//! and exactly-once recovery when several workers boot at the same moment.
//!
//! Every test works in its own fresh database (`tasktrail_test_<random>`),
//! dropped when the test ends. Point the tests at a server with
//! `TASKTRAIL_TEST_POSTGRES_URL=postgres://user[:password]@host:port/db`
//! (the user must be allowed to create databases); without it each test
//! writes `skipped: <test>: TASKTRAIL_TEST_POSTGRES_URL is not set` to
//! stderr (shown by `cargo test`) and passes, unless `CI` is set: then it
//! fails (`tasktrail_diesel::test_postgres_url`).
#![cfg(feature = "postgres")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

/// How many migrations a current schema has.
const MIGRATIONS: usize = 5;

use chrono::{Duration, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_migrations::MigrationHarness;
use support::{
    register, registration, report, spec, test_policy, NoProcesses, SlowJudge, TEST_GRACE,
};
use tasktrail_core::backend::{
    FinishRow, FinishWrite, NewRunningRow, NoticingJudge, OwnerLock, PolicyJudge, RecoveryRequest,
    SweepMode,
};
use tasktrail_core::{
    Clock, DeathCause, FinishRefusal, InterruptReason, Liveness, LivenessPolicy, Outcome,
    RecoveredTask, RegisteredWorker, SessionId, SessionKey, Storage, StorageError, StorageExt,
    SystemClock, Task, TaskFilter, TaskId, TaskStatus, Timestamp, Unproven, WorkerId, WorkerState,
};
use tasktrail_diesel::{
    PostgresOptions, PostgresStorage, ScratchDatabase, StatementLog, POSTGRES_MIGRATIONS,
};

/// A database of its own for one test (the crate's [`ScratchDatabase`]),
/// with the openers these tests use.
struct TestDatabase {
    scratch: ScratchDatabase,
    url: String,
}

impl TestDatabase {
    /// A fresh database, or `None` (after printing the skip line) when the
    /// variable is not set. A set variable whose server cannot be reached
    /// fails the test: CI must never skip silently.
    fn create() -> Option<Self> {
        let scratch = ScratchDatabase::create()?;
        let url = scratch.url().to_owned();
        Some(Self { scratch, url })
    }

    fn open(&self) -> PostgresStorage {
        PostgresStorage::open(&self.url).expect("open the test database")
    }

    fn open_with(&self, options: PostgresOptions) -> PostgresStorage {
        PostgresStorage::open_with(&self.url, options).expect("open the test database")
    }

    fn connect(&self) -> PgConnection {
        PgConnection::establish(self.scratch.url()).expect("connect to the test database")
    }
}

macro_rules! database_or_skip {
    () => {
        match TestDatabase::create() {
            Some(database) => database,
            None => return,
        }
    };
}

/// Opens `store`'s pooled connection and waits a grace, so its sweeps have
/// watched locks for longer than the grace (a judge that just connected
/// reads no free lock as death).
fn let_the_judge_watch_a_grace(store: &PostgresStorage) {
    store
        .with_connection(|connection| connection.batch_execute("SELECT 1"))
        .expect("a connection")
        .expect("select");
    std::thread::sleep(TEST_GRACE + std::time::Duration::from_millis(300));
}

/// The boot-time sweep of a worker (`_host` is its name, for people only),
/// with the tests' policy.
fn sweep_as(
    store: &PostgresStorage,
    worker: WorkerId,
    _host: &str,
    now: Timestamp,
) -> Vec<RecoveredTask> {
    let policy = test_policy();
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: worker,
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

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// Whether another session could take `worker`'s advisory lock right now
/// (it takes and releases it).
fn lock_is_free(connection: &mut PgConnection, worker: WorkerId) -> bool {
    let key = PostgresStorage::worker_lock_key(worker);
    let free = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(connection)
        .expect("try lock")
        .flag;
    if free {
        diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
            .bind::<BigInt, _>(key)
            .get_result::<Flag>(connection)
            .expect("unlock");
    }
    free
}

/// Moves `worker`'s heartbeat `by` into the past (the conformance suite's
/// `age_heartbeats` hook).
fn age_heartbeat(connection: &mut PgConnection, worker: WorkerId, by: Duration) {
    let updated = diesel::sql_query(
        "UPDATE workers SET heartbeat_at = heartbeat_at - make_interval(secs => $2) WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
    .bind::<diesel::sql_types::Double, _>(
        by.num_microseconds().expect("a short duration") as f64 / 1e6,
    )
    .execute(connection)
    .expect("age the heartbeat");
    assert_eq!(updated, 1, "worker {worker} has a row");
}

fn set_heartbeat_back(connection: &mut PgConnection, worker: WorkerId, by: &str) {
    connection
        .batch_execute(&format!(
            "UPDATE workers SET heartbeat_at = now() - interval '{by}' WHERE id = '{worker}'"
        ))
        .expect("age the heartbeat");
}

// ---------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------

const PRE_FIX_ROWS: &str = r#"
INSERT INTO task_history (id, repo, issue_number, "user", agent, agent_type, model, provider, status, started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts) VALUES
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01', 'acme/widgets', 994, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success', '2026-05-10T10:00:00Z', '2026-05-10T10:05:00Z', 1200, 300, 0.42, 7, '["pr/17"]'),
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02', 'acme/widgets', 957, 'bob', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted', '2026-05-10T11:00:00Z', '2026-05-10T11:30:00Z', NULL, NULL, NULL, NULL, NULL),
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e03', 'acme/gears', 1018, 'carol', 'triager', 'claude_sdk', 'claude-haiku', 'anthropic', 'failure', '2026-05-10T12:00:00Z', '2026-05-10T12:01:00Z', 10, 20, 0.01, 1, '[]'),
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e04', 'acme/gears', 1033, 'dave', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'aborted_no_skill', '2026-05-10T13:00:00Z', '2026-05-10T13:00:01Z', 0, 0, 0.0, 0, NULL);
"#;

#[derive(Debug, PartialEq, QueryableByName)]
struct PreFixRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    finished_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    artifacts: Option<String>,
    #[diesel(sql_type = Text)]
    everything_else: String,
}

const SELECT_PRE_FIX_COLUMNS: &str = r#"SELECT id::text AS id, status, finished_at::text AS finished_at, artifacts::text AS artifacts,
    concat_ws('|', repo, issue_number, "user", agent, agent_type, model, provider, started_at,
        COALESCE(input_tokens::text, 'NULL'), COALESCE(output_tokens::text, 'NULL'),
        COALESCE(cost_usd::text, 'NULL'), COALESCE(turns::text, 'NULL')) AS everything_else
    FROM task_history ORDER BY id"#;

fn rows(store: &PostgresStorage) -> Vec<PreFixRow> {
    store
        .with_connection(|c| diesel::sql_query(SELECT_PRE_FIX_COLUMNS).load::<PreFixRow>(c))
        .expect("connection")
        .expect("rows load")
}

fn store_at_pre_fix_schema(database: &TestDatabase) -> PostgresStorage {
    let store =
        PostgresStorage::open_unmigrated(&database.url, &PostgresOptions::default()).expect("open");
    store
        .with_connection(|c| c.run_next_migration(POSTGRES_MIGRATIONS).map(drop))
        .expect("connection")
        .expect("first migration");
    store
        .with_connection(|c| c.batch_execute(PRE_FIX_ROWS))
        .expect("connection")
        .expect("pre-fix rows");
    store
}

#[test]
fn pre_fix_schema_does_not_permit_running_rows() {
    let database = database_or_skip!();
    let store = store_at_pre_fix_schema(&database);
    let inserted = store
        .with_connection(|c| {
            c.batch_execute(
                r#"INSERT INTO task_history (id, repo, issue_number, "user", agent, agent_type, model, provider, status, started_at)
                   VALUES ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e09', 'a/b', 1, 'u', 'a', 't', 'm', 'p', 'running', now())"#,
            )
        })
        .expect("connection");
    assert!(
        inserted.is_err(),
        "the pre-fix CHECK must reject status='running'"
    );
}

#[test]
fn a_database_filled_at_the_pre_fix_schema_upgrades_with_every_row_intact() {
    let database = database_or_skip!();
    let before = rows(&store_at_pre_fix_schema(&database));
    assert_eq!(before.len(), 4);

    let store = database.open();
    assert_eq!(
        store.applied_migrations().expect("versions").len(),
        MIGRATIONS
    );
    let after = rows(&store);
    assert_eq!(after.len(), before.len(), "every row is kept");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.id, new.id);
        assert_eq!(old.status, new.status);
        assert_eq!(old.artifacts, new.artifacts);
        assert_eq!(old.everything_else, new.everything_else);
        if old.status == "interrupted" {
            assert_eq!(
                new.finished_at, None,
                "interrupted rows get finished_at = NULL"
            );
        } else {
            assert_eq!(old.finished_at, new.finished_at);
        }
    }
    let interrupted: TaskId = "0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02".parse().expect("id");
    let record = store.get_task(interrupted).expect("read").expect("row");
    assert_eq!(record.status, TaskStatus::Interrupted);
    assert_eq!(record.finished_at, None);
    assert_eq!(
        record.interrupted_at,
        Some(
            Utc.with_ymd_and_hms(2026, 5, 10, 11, 30, 0)
                .single()
                .expect("time")
        )
    );
    assert_eq!(record.worker_id, None);
    let success: TaskId = "0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01".parse().expect("id");
    let record = store.get_task(success).expect("read").expect("row");
    assert_eq!(record.artifacts, Some(vec!["pr/17".to_owned()]));
    assert_eq!(record.cost_usd, Some(0.42));
    assert_eq!(
        store
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .len(),
        4
    );

    // The upgraded schema permits running rows, and a pre-fix interrupted row
    // is picked up by nobody's sweep (it is not running).
    let worker = register(&store, "dev", 1);
    let running = Task::queue(spec(1104))
        .start(&worker, &store)
        .expect("start");
    assert_eq!(store.running_tasks().expect("running").len(), 1);
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
}

/// One pre-fix row per status, with and without a `finished_at` (the
/// pre-fix schema allowed it NULL), and with every run column NULL.
const EVERY_STATUS_ROWS: &str = r#"
INSERT INTO task_history (id, repo, issue_number, "user", agent, agent_type, model, provider, status, started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts) VALUES
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01', 'acme/widgets', 1, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success', '2026-05-10T10:00:00Z', '2026-05-10T10:05:00Z', 1200, 300, 0.42, 7, '["pr/17"]'),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02', 'acme/widgets', 2, 'bob', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'failure', '2026-05-10T11:00:00Z', '2026-05-10T11:06:00Z', 10, 20, 0.01, 1, '[]'),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e03', 'acme/gears', 3, 'carol', 'triager', 'claude_sdk', 'claude-haiku', 'anthropic', 'cancelled', '2026-05-10T12:00:00Z', '2026-05-10T12:07:00Z', 5, 6, 0.002, 2, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e04', 'acme/gears', 4, 'dave', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted', '2026-05-10T13:00:00Z', '2026-05-10T13:08:00Z', NULL, NULL, NULL, NULL, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e05', 'acme/gears', 5, 'erin', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'aborted_no_skill', '2026-05-10T14:00:00Z', '2026-05-10T14:09:00Z', 0, 0, 0.0, 0, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e06', 'acme/gears', 6, 'frank', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'failure', '2026-05-10T15:00:00Z', NULL, NULL, NULL, NULL, NULL, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e07', 'acme/gears', 7, 'grace', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted', '2026-05-10T16:00:00Z', NULL, NULL, NULL, NULL, NULL, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e08', 'acme/gears', 8, 'heidi', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'cancelled', '2026-05-10T17:00:00Z', NULL, NULL, NULL, NULL, NULL, '[]');
"#;

/// The columns the upgrade adds to `task_history`, NULL on every old row
/// except `interrupted_at` (an interrupted row's old `finished_at`).
const NEW_TASK_COLUMNS: [&str; 4] = [
    "worker_id",
    "interrupted_at",
    "interrupt_reason",
    "interrupted_by",
];

#[derive(QueryableByName)]
struct Cell {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Text>)]
    value: Option<String>,
}

type Cells = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// Every column of every `task_history` row, whatever the schema (the row
/// as JSON, one key per column): id -> column -> value as text.
fn every_cell(store: &PostgresStorage) -> Cells {
    let cells: Vec<Cell> = store
        .with_connection(|c| {
            diesel::sql_query(
                "SELECT t.id::text AS id, e.key AS name, e.value AS value \
                 FROM task_history t, jsonb_each_text(to_jsonb(t)) e",
            )
            .load(c)
        })
        .expect("connection")
        .expect("cells");
    let mut rows = Cells::new();
    for cell in cells {
        rows.entry(cell.id)
            .or_default()
            .insert(cell.name, cell.value);
    }
    rows
}

/// The upgrade compares every column of every row, for every status, the
/// columns it adds included: an old column keeps its value (an interrupted
/// row's `finished_at` moves to `interrupted_at`), a new one is NULL. Kills
/// a migration that fills `interrupted_at` (or clears `finished_at`) for
/// rows that are not `interrupted`.
#[test]
fn the_upgrade_keeps_every_column_of_every_row_of_every_status() {
    let database = database_or_skip!();
    let old = store_at_pre_fix_schema(&database);
    old.with_connection(|c| c.batch_execute(EVERY_STATUS_ROWS))
        .expect("connection")
        .expect("rows of every status");
    let before = every_cell(&old);
    drop(old);
    assert_eq!(before.len(), 12);
    let statuses: BTreeSet<Option<&str>> = before
        .values()
        .map(|row| row["status"].as_deref())
        .collect();
    assert_eq!(statuses.len(), 5, "every pre-fix status: {statuses:?}");

    let store = database.open();
    let after = every_cell(&store);
    let mut expected = before.clone();
    for row in expected.values_mut() {
        for column in NEW_TASK_COLUMNS {
            assert!(!row.contains_key(column), "{column} is new");
            row.insert(column.to_owned(), None);
        }
        if row["status"].as_deref() == Some("interrupted") {
            let finished_at = row.insert("finished_at".to_owned(), None);
            row.insert("interrupted_at".to_owned(), finished_at.expect("column"));
        }
    }
    assert_eq!(after, expected, "every column of every row");
    assert_eq!(
        store
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .len(),
        12
    );
}

#[test]
fn the_fix_migration_round_trips_down_and_up() {
    let database = database_or_skip!();
    let original = rows(&store_at_pre_fix_schema(&database));
    let store = database.open();
    let upgraded = rows(&store);

    // Down through the dashboard indexes, recovery reports and host identity migrations,
    // then the fix.
    for _ in 0..MIGRATIONS - 1 {
        store
            .with_connection(|c| c.revert_last_migration(POSTGRES_MIGRATIONS).map(drop))
            .expect("connection")
            .expect("down");
    }
    assert_eq!(
        rows(&store),
        original,
        "down restores the pre-fix rows exactly"
    );
    assert_eq!(store.applied_migrations().expect("versions").len(), 1);

    assert_eq!(store.migrate().expect("up again").len(), MIGRATIONS - 1);
    assert_eq!(
        rows(&store),
        upgraded,
        "up again gives the same upgraded rows"
    );

    // All the way down leaves an empty database, and up again works.
    store
        .with_connection(|c| c.revert_all_migrations(POSTGRES_MIGRATIONS).map(drop))
        .expect("connection")
        .expect("all down");
    assert!(store.applied_migrations().expect("versions").is_empty());
    assert_eq!(store.migrate().expect("up").len(), MIGRATIONS);
}

#[test]
fn concurrent_opens_migrate_once_and_migrate_is_idempotent() {
    let database = database_or_skip!();
    let barrier = Arc::new(Barrier::new(4));
    let applied: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let url = database.url.clone();
                scope.spawn(move || {
                    let store = PostgresStorage::open_unmigrated(&url, &PostgresOptions::default())
                        .expect("open");
                    barrier.wait();
                    store.migrate().expect("migrate")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        applied.iter().map(Vec::len).sum::<usize>(),
        MIGRATIONS,
        "{applied:?}"
    );
    let store = database.open();
    assert_eq!(
        store.applied_migrations().expect("versions").len(),
        MIGRATIONS
    );
    assert!(store.migrate().expect("again").is_empty());
}

#[test]
fn a_database_that_is_not_ours_is_refused_and_left_alone() {
    let database = database_or_skip!();
    database
        .connect()
        .batch_execute("CREATE TABLE invoices (id integer PRIMARY KEY, total double precision)")
        .expect("create");
    let error = PostgresStorage::open(&database.url).expect_err("must refuse");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let tables: Vec<String> = diesel::sql_query(
        "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = current_schema()",
    )
    .load::<Name>(&mut database.connect())
    .expect("tables")
    .into_iter()
    .map(|n| n.name)
    .collect();
    assert_eq!(tables, vec!["invoices".to_owned()], "nothing was created");
}

/// A reader never migrates: on an empty database `open_read_only` is
/// refused, naming a migration it would need, and creates nothing; once
/// migrated, the database opens for reading.
#[test]
fn open_read_only_refuses_an_unmigrated_database_naming_the_migration() {
    let database = database_or_skip!();
    let error = PostgresStorage::open_read_only(&database.url, &PostgresOptions::default())
        .expect_err("refused");
    let StorageError::Incompatible { detail } = &error else {
        panic!("{error:?}");
    };
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let tables: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM information_schema.tables \
         WHERE table_schema = current_schema()",
    )
    .get_result(&mut database.connect())
    .expect("count");
    assert_eq!(tables.count, 0, "a reader runs no DDL");
    let versions = database.open().applied_migrations().expect("versions");
    assert!(
        detail.contains(&versions[0]),
        "the refusal names {}: {detail}",
        versions[0]
    );
    PostgresStorage::open_read_only(&database.url, &PostgresOptions::default())
        .expect("a current database opens for reading");
}

#[test]
fn a_database_migrated_by_a_newer_tasktrail_is_refused() {
    let database = database_or_skip!();
    drop(database.open());
    database
        .connect()
        .batch_execute("INSERT INTO __diesel_schema_migrations (version) VALUES ('20990101000000')")
        .expect("pretend newer");
    let error = PostgresStorage::open(&database.url).expect_err("must refuse");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
}

#[test]
fn unreachable_servers_are_unavailable_unknown_databases_refused_and_never_show_the_password() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let secret = "hunter2-Sup3rSecret";
    let mut cases = vec![
        // Nothing listens on port 1.
        format!("postgres://tasktrail:{secret}@127.0.0.1:1/tasktrail"),
        // An unescaped '@' in the password: libpq reads the tail as a host.
        format!("postgres://tasktrail:pa@{secret}@127.0.0.1:1/tasktrail"),
        // A '/' in the password: libpq reads the head as a port.
        format!("postgres://tasktrail:{secret}/x@127.0.0.1:1/tasktrail"),
    ];
    // The right server, a database that does not exist.
    let unknown = database
        .url
        .replace(database.scratch.name(), "tasktrail_no_such_database");
    let separator = if unknown.contains('?') { '&' } else { '?' };
    let unknown_database = format!("{unknown}{separator}password={secret}");
    cases.push(unknown_database.clone());
    for url in cases {
        let options = PostgresOptions {
            connection_timeout: std::time::Duration::from_secs(2),
            ..PostgresOptions::default()
        };
        let error = PostgresStorage::open_with(&url, options).expect_err("must fail");
        let shown = format!(
            "{error} / {error:?} / {:?}",
            std::error::Error::source(&error).map(ToString::to_string)
        );
        assert!(
            !shown.contains(secret) && !shown.contains("Sup3r"),
            "{shown}"
        );
        if url == unknown_database {
            // Permanent: retrying cannot make the database exist.
            assert!(
                matches!(error, StorageError::AccessDenied { .. }) && !error.is_transient(),
                "{url}: {shown}"
            );
        } else {
            // Transient: the server may be restarting.
            assert!(
                matches!(error, StorageError::Unavailable { .. }) && error.is_transient(),
                "{url}: {shown}"
            );
        }
    }
    // Behind a transaction pooler the liveness session has a URL of its
    // own: its password is hidden too, even where libpq's message quotes
    // it (an unescaped '@' makes its tail the host name).
    let separator = if database.url.contains('?') { '&' } else { '?' };
    let options = PostgresOptions {
        connection_timeout: std::time::Duration::from_secs(2),
        liveness_url: Some(format!(
            "postgres://tasktrail:pa@{secret}@127.0.0.1:1/tasktrail"
        )),
        ..PostgresOptions::default()
    };
    let error = PostgresStorage::open_with(
        &format!("{}{separator}tasktrail_pooler=transaction", database.url),
        options,
    )
    .expect_err("the liveness server is unreachable");
    let shown = format!(
        "{error} / {error:?} / {:?}",
        std::error::Error::source(&error).map(ToString::to_string)
    );
    assert!(!shown.contains("Sup3r"), "{shown}");
    assert!(matches!(error, StorageError::Unavailable { .. }), "{shown}");
    let store = database.open();
    let shown = format!("{store:?}");
    assert!(
        shown.starts_with("PostgresStorage") && shown.contains(store.redacted_url()),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

// ---------------------------------------------------------------------------
// The lifecycle
// ---------------------------------------------------------------------------

#[test]
fn a_task_lifecycle_is_one_insert_then_one_update() {
    let database = database_or_skip!();
    let log = StatementLog::new();
    let store = database.open_with(PostgresOptions {
        statement_log: Some(log.clone()),
        pool_size: 2,
        ..PostgresOptions::default()
    });
    let worker = register(&store, "dev", 10);
    let running = Task::queue(spec(1104))
        .start(&worker, &store)
        .expect("start");
    let id = running.id();
    let row = store.get_task(id).expect("read").expect("row");
    assert_eq!(row.status, TaskStatus::Running);
    assert_eq!(row.worker_id, Some(worker.id()));
    assert_eq!(
        (row.repo.as_str(), row.issue_number, row.user.as_str()),
        ("acme/widgets", 1104, "alice")
    );
    assert_eq!(row.started_at, running.started_at());
    assert_eq!(
        (row.finished_at, row.cost_usd, row.artifacts.clone()),
        (None, None, None)
    );

    running
        .record_session(SessionId::parse("sess_1").expect("session"), &store)
        .expect("record session");
    let key = SessionKey {
        repo: "acme/widgets".into(),
        issue_number: 1104,
        agent: "fixer".into(),
    };
    assert_eq!(
        store.resumable_session(&key).expect("resumable"),
        None,
        "running tasks are not resumable"
    );

    let finished = running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
    let row = store.get_task(id).expect("read").expect("row");
    assert_eq!(row.status, TaskStatus::Success);
    assert_eq!(row.finished_at, Some(finished.finished_at()));
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.turns),
        (Some(1200), Some(300), Some(7))
    );
    assert_eq!(row.cost_usd, Some(0.42));
    assert_eq!(row.artifacts, Some(report().artifacts));
    assert_eq!(
        store
            .resumable_session(&key)
            .expect("resumable")
            .map(|s| s.session_id.to_string()),
        Some("sess_1".to_owned())
    );
    assert_eq!(
        log.task_insert_statements(id),
        1,
        "{:?}",
        log.task_history_inserts()
    );
    assert_eq!(
        store
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .len(),
        1
    );

    // An interrupted finish invalidates the task's sessions.
    let running = Task::queue(spec(1105))
        .start(&worker, &store)
        .expect("start");
    running
        .record_session(SessionId::parse("sess_2").expect("session"), &store)
        .expect("record session");
    let reason = InterruptReason::new("worker received SIGTERM").expect("reason");
    let interrupted = running
        .finish(Outcome::Interrupted(reason), &store)
        .expect("finish");
    let row = store
        .get_task(interrupted.id())
        .expect("read")
        .expect("row");
    assert_eq!(
        (row.status, row.finished_at),
        (TaskStatus::Interrupted, None)
    );
    assert_eq!(row.interrupted_by, Some(worker.id()));
    let sessions = store.list_sessions().expect("sessions");
    assert_eq!(sessions.len(), 2);
    assert!(sessions
        .iter()
        .any(|s| s.session_id.as_str() == "sess_2" && s.invalidated_at.is_some()));
    assert!(sessions
        .iter()
        .any(|s| s.session_id.as_str() == "sess_1" && s.invalidated_at.is_none()));

    worker.deregister(&store).expect("deregister");
    let workers = store.list_workers().expect("workers");
    assert_eq!(workers[0].state, WorkerState::Stopped);
}

/// The start's INSERT and a completed finish's UPDATE are named prepared
/// statements on each pooled connection: parsed and planned once, then only
/// executed (Diesel sends `sql_query` and its own UPDATEs unprepared).
#[test]
fn start_and_completed_finish_are_prepared_once_per_connection_and_reused() {
    let database = database_or_skip!();
    let log = StatementLog::new();
    let store = database.open_with(PostgresOptions {
        statement_log: Some(log.clone()),
        pool_size: 1,
        ..PostgresOptions::default()
    });
    let worker = register(&store, "dev", 10);
    support::five_lifecycles_prepare_the_hot_path_once(&store, &worker, &log);
}

#[test]
fn a_duplicate_start_is_refused_and_writes_nothing() {
    let database = database_or_skip!();
    let log = StatementLog::new();
    let store = database.open_with(PostgresOptions {
        statement_log: Some(log.clone()),
        ..PostgresOptions::default()
    });
    let worker = register(&store, "dev", 10);
    let id = TaskId::new_random();
    let running = Task::queue_with_id(id, spec(1))
        .start(&worker, &store)
        .expect("start");
    let error = Task::queue_with_id(id, spec(2))
        .start(&worker, &store)
        .expect_err("duplicate");
    assert!(
        matches!(error.error, StorageError::DuplicateTask { id: dup } if dup == id),
        "{error:?}"
    );
    let row = store.get_task(id).expect("read").expect("row");
    assert_eq!(row.issue_number, 1, "the first row is untouched");
    assert_eq!(
        log.task_insert_statements(id),
        2,
        "the duplicate was one INSERT, refused"
    );
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");

    // A registered worker id cannot be registered again, on this store or
    // another one.
    let again = registration("dev", 11);
    store.register_worker(&again).expect("first");
    assert!(matches!(
        store.register_worker(&again),
        Err(StorageError::DuplicateWorker { .. })
    ));
    let other = database.open();
    assert!(matches!(
        other.register_worker(&again),
        Err(StorageError::DuplicateWorker { .. })
    ));
    // A start by an unknown worker writes nothing.
    let stranger = NewRunningRow {
        id: TaskId::new_random(),
        spec: spec(3),
        worker: WorkerId::new_random(),
        started_at: SystemClock.now(),
    };
    assert!(matches!(
        store.insert_running(&stranger),
        Err(StorageError::UnknownWorker { .. })
    ));
}

#[test]
fn a_finish_is_fenced_to_the_owner_of_a_running_row() {
    let database = database_or_skip!();
    let store = database.open();
    let owner = register(&store, "dev", 10);
    let intruder = register(&store, "dev", 11);
    let running = Task::queue(spec(7)).start(&owner, &store).expect("start");
    let id = running.id();
    let finish = |worker: WorkerId| FinishRow {
        id,
        worker,
        outcome: Outcome::Success(report()),
        at: SystemClock.now(),
    };
    assert_eq!(
        store
            .finish_running(&finish(intruder.id()))
            .expect("finish"),
        FinishWrite::Refused(FinishRefusal::OwnedByAnotherWorker {
            owner: Some(owner.id())
        })
    );
    assert_eq!(
        store.get_task(id).expect("read").map(|r| r.status),
        Some(TaskStatus::Running)
    );
    running
        .finish(Outcome::Failure(report()), &store)
        .expect("finish");
    assert_eq!(
        store.finish_running(&finish(owner.id())).expect("finish"),
        FinishWrite::Refused(FinishRefusal::AlreadyFinished {
            status: TaskStatus::Failure
        })
    );
    let missing = FinishRow {
        id: TaskId::new_random(),
        ..finish(owner.id())
    };
    assert_eq!(
        store.finish_running(&missing).expect("finish"),
        FinishWrite::Refused(FinishRefusal::Missing)
    );
}

// ---------------------------------------------------------------------------
// Liveness and recovery
// ---------------------------------------------------------------------------

#[test]
fn a_crashed_workers_row_is_recovered_once_its_lock_stayed_free_past_the_grace() {
    let database = database_or_skip!();
    let (crashed, id) = {
        let doomed = database.open();
        let worker = register(&doomed, "host-a", 10);
        let running = Task::queue(spec(1104))
            .start(&worker, &doomed)
            .expect("start");
        running
            .record_session(SessionId::parse("sess_1104").expect("session"), &doomed)
            .expect("session");
        (worker.id(), running.id())
        // The store is dropped without finishing: its session ends and the
        // server releases the worker's advisory lock.
    };
    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    let_the_judge_watch_a_grace(&store);
    // The heartbeat is younger than the grace: the worker may be taking its
    // lock back after a dropped connection. Not yet provable.
    set_heartbeat_back(&mut database.connect(), crashed, "0 seconds");
    assert!(sweep_as(&store, sweeper.id(), "host-b", SystemClock.now()).is_empty());
    // Silent past the grace, its lock free all along: dead.
    set_heartbeat_back(&mut database.connect(), crashed, "2 seconds");
    let recovered = sweep_as(&store, sweeper.id(), "host-b", SystemClock.now());
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let hint = recovered[0].hint();
    assert!(
        hint.starts_with("[recovery] ") && hint.contains(&id.to_string()),
        "{hint}"
    );
    assert_eq!(recovered[0].dead_worker, Some(crashed));
    assert_eq!(recovered[0].sessions_invalidated, 1);
    assert!(
        matches!(&recovered[0].cause, DeathCause::LockReleased { host, pid: 10, .. } if host == "host-a"),
        "{:?}",
        recovered[0].cause
    );

    let row = store.get_task(id).expect("read").expect("row");
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(
        (row.finished_at, row.cost_usd, row.turns),
        (None, None, None)
    );
    assert_eq!(row.interrupted_by, Some(sweeper.id()));
    assert_eq!(row.interrupted_at, Some(recovered[0].recovered_at));
    assert!(store.list_sessions().expect("sessions")[0]
        .invalidated_at
        .is_some());
    let states: BTreeMap<WorkerId, WorkerState> = store
        .list_workers()
        .expect("workers")
        .into_iter()
        .map(|w| (w.id, w.state))
        .collect();
    assert_eq!(states[&crashed], WorkerState::Dead);
    assert_eq!(states[&sweeper.id()], WorkerState::Alive);

    // Reported once; and the dead owner's late finish is refused.
    assert!(sweep_as(&store, sweeper.id(), "host-b", SystemClock.now()).is_empty());
    let late = FinishRow {
        id,
        worker: crashed,
        outcome: Outcome::Success(report()),
        at: SystemClock.now(),
    };
    assert_eq!(
        store.finish_running(&late).expect("finish"),
        FinishWrite::Refused(FinishRefusal::InterruptedByRecovery {
            recovered_by: Some(sweeper.id())
        })
    );
    // The judge never took the lock it tested.
    assert!(lock_is_free(&mut database.connect(), crashed));
}

/// A judge whose connection is younger than the grace (it just booted or
/// reconnected, as after a restart or a failover, when every lock is free
/// until its owner reconnects) reads no free lock as death, however old
/// the heartbeat.
#[test]
fn a_judge_that_just_connected_waits_a_grace_before_reading_a_free_lock_as_death() {
    let database = database_or_skip!();
    let crashed = {
        let doomed = database.open();
        let worker = register(&doomed, "host-a", 10);
        let running = Task::queue(spec(31))
            .start(&worker, &doomed)
            .expect("start");
        std::mem::forget(running);
        worker.id()
    };
    set_heartbeat_back(&mut database.connect(), crashed, "1 hour");
    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    let policy = LivenessPolicy::new(None);
    let (recovered, noticed) = noticing_sweep(&store, sweeper.id(), &policy);
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(noticed.len(), 1);
    assert_eq!(noticed[0].record.id, crashed);
    assert_eq!(
        noticed[0].verdict,
        Liveness::NotYetProvable(Unproven::JudgeWatchedTooBriefly)
    );
    // Once it has watched a grace, the same free lock is proof.
    let_the_judge_watch_a_grace(&store);
    let recovered = sweep_as(&store, sweeper.id(), "host-b", SystemClock.now());
    assert_eq!(recovered.len(), 1);
    assert!(matches!(
        recovered[0].cause,
        DeathCause::LockReleased { pid: 10, .. }
    ));
    assert!(lock_is_free(&mut database.connect(), crashed));
}

/// A sweep that also says which owners it left alone as stalled or not yet
/// provably dead.
fn noticing_sweep(
    store: &PostgresStorage,
    sweeper: WorkerId,
    policy: &LivenessPolicy,
) -> (Vec<RecoveredTask>, Vec<tasktrail_core::NoticedOwner>) {
    let judge = NoticingJudge::new(PolicyJudge {
        policy,
        probe: &NoProcesses,
    });
    let recovered = store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper,
                now: SystemClock.now(),
                mode: SweepMode::Apply,
            },
            &judge,
        )
        .expect("sweep");
    (recovered, judge.into_noticed())
}

/// What a sweep hands the judge about one owner's lock.
fn lock_fact(store: &PostgresStorage, sweeper: WorkerId) -> OwnerLock {
    struct Recording(std::sync::Mutex<Vec<OwnerLock>>);
    impl tasktrail_core::backend::LivenessJudge for Recording {
        fn judge(
            &self,
            owner: Option<&tasktrail_core::backend::OwnerFacts>,
        ) -> tasktrail_core::Liveness {
            if let Some(facts) = owner {
                self.0.lock().expect("facts").push(facts.lock);
            }
            tasktrail_core::Liveness::Alive
        }
    }
    let judge = Recording(std::sync::Mutex::new(Vec::new()));
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper,
                now: SystemClock.now(),
                mode: SweepMode::DryRun,
            },
            &judge,
        )
        .expect("sweep");
    let facts = judge.0.into_inner().expect("facts");
    assert_eq!(facts.len(), 1, "one owner");
    facts[0]
}

/// `pg_locks` is read, not the lock taken, and only a granted exclusive
/// session lock on the worker's own `bigint` key in this database counts:
/// a shared holder, a session waiting for it, the same two halves taken as
/// two `int4` keys, or the key held in another database prove nothing.
#[test]
fn only_a_granted_exclusive_lock_on_the_workers_key_in_this_database_counts_as_held() {
    let database = database_or_skip!();
    let store = database.open();
    let owner = register(&store, "host-a", 10);
    let running = Task::queue(spec(41)).start(&owner, &store).expect("start");
    let sweeper_store = database.open();
    let sweeper = register(&sweeper_store, "host-b", 20);
    assert_eq!(lock_fact(&sweeper_store, sweeper.id()), OwnerLock::Held);
    assert!(store.release_worker_lock(owner.id()), "the store held it");
    let free = |lock: OwnerLock| matches!(lock, OwnerLock::Free { .. });
    assert!(free(lock_fact(&sweeper_store, sweeper.id())));

    let key = PostgresStorage::worker_lock_key(owner.id());
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let (high, low) = ((bits >> 32) as u32 as i32, bits as u32 as i32);
    // The same halves as a two-int4 key (objsubid 2).
    let mut two_keys = database.connect();
    two_keys
        .batch_execute(&format!("SELECT pg_advisory_lock({high}, {low})"))
        .expect("lock two int4 keys");
    assert!(free(lock_fact(&sweeper_store, sweeper.id())), "objsubid 2");
    drop(two_keys);
    // The key held in another database of the same server.
    if let Some(elsewhere) = TestDatabase::create() {
        let mut other = elsewhere.connect();
        other
            .batch_execute(&format!("SELECT pg_advisory_lock({key})"))
            .expect("lock elsewhere");
        assert!(
            free(lock_fact(&sweeper_store, sweeper.id())),
            "another database"
        );
    }
    // A shared holder is not the worker...
    let mut shared = database.connect();
    shared
        .batch_execute(&format!("SELECT pg_advisory_lock_shared({key})"))
        .expect("lock shared");
    assert!(free(lock_fact(&sweeper_store, sweeper.id())), "shared mode");
    // ...and a session waiting for the exclusive lock holds nothing.
    let url = database.url.clone();
    let waiter = std::thread::spawn(move || {
        let mut waiting = PgConnection::establish(&url).expect("connect");
        waiting
            .batch_execute(&format!(
                "SET lock_timeout = '3s'; SELECT pg_advisory_lock({key})"
            ))
            .is_ok()
    });
    let mut admin = database.connect();
    let mut waiting_seen = false;
    for _ in 0..100 {
        let waiting: i64 = diesel::sql_query(format!(
            "SELECT count(*) AS count FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND classid = {}::bigint::oid AND objid = {}::bigint::oid",
            bits >> 32,
            bits & 0xffff_ffff
        ))
        .get_result::<Count>(&mut admin)
        .expect("count")
        .count;
        if waiting == 1 {
            waiting_seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(waiting_seen, "the waiter queued");
    assert!(
        free(lock_fact(&sweeper_store, sweeper.id())),
        "a waiting session"
    );
    drop(shared);
    assert!(waiter.join().expect("waiter"), "the waiter got the lock");
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// The judge reads `pg_locks` and never takes the lock, so a worker that
/// takes its lock back while a sweep judges it is never blocked by it.
#[test]
fn the_judge_never_holds_a_workers_lock_while_it_judges() {
    let database = database_or_skip!();
    let store = database.open();
    let owner = register(&store, "host-a", 10);
    let running = Task::queue(spec(42)).start(&owner, &store).expect("start");
    assert!(store.release_worker_lock(owner.id()));
    let sweeper_store = database.open();
    let sweeper = register(&sweeper_store, "host-b", 20);
    struct TakesTheLockMidSweep {
        url: String,
        key: i64,
        taken: std::sync::Mutex<Option<bool>>,
    }
    impl tasktrail_core::backend::LivenessJudge for TakesTheLockMidSweep {
        fn judge(
            &self,
            _owner: Option<&tasktrail_core::backend::OwnerFacts>,
        ) -> tasktrail_core::Liveness {
            let mut other = PgConnection::establish(&self.url).expect("connect");
            let taken = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
                .bind::<BigInt, _>(self.key)
                .get_result::<Flag>(&mut other)
                .expect("try lock")
                .flag;
            *self.taken.lock().expect("taken") = Some(taken);
            tasktrail_core::Liveness::Alive
        }
    }
    let judge = TakesTheLockMidSweep {
        url: database.url.clone(),
        key: PostgresStorage::worker_lock_key(owner.id()),
        taken: std::sync::Mutex::new(None),
    };
    sweeper_store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper.id(),
                now: SystemClock.now(),
                mode: SweepMode::Apply,
            },
            &judge,
        )
        .expect("sweep");
    assert_eq!(
        *judge.taken.lock().expect("taken"),
        Some(true),
        "another session took the free lock in the middle of the sweep"
    );
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
}

/// A judge that, for the owner it is told about, says it is sweeping
/// (the sweep then holds that owner's `workers` row `FOR UPDATE`), waits
/// until the test lets it go, and declares the owner dead.
struct GatedJudge {
    sweeping: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl tasktrail_core::backend::LivenessJudge for GatedJudge {
    fn judge(&self, owner: Option<&tasktrail_core::backend::OwnerFacts>) -> Liveness {
        let owner = owner.expect("a registered owner");
        self.sweeping.send(()).expect("tell the test");
        self.release
            .lock()
            .expect("release")
            .recv()
            .expect("released");
        Liveness::Dead(DeathCause::ProcessGone {
            host: owner.record.host.clone(),
            pid: owner.record.pid,
        })
    }
}

/// A start racing a sweep that is declaring its worker dead: the start's
/// `INSERT … SELECT … FROM workers … FOR SHARE` waits for the sweep and
/// then reads the worker `dead`, so it writes nothing and says
/// `WorkerNotAlive`; no `running` row of a dead worker is ever committed.
/// Kills the start losing `FOR SHARE` (its INSERT then reads the worker
/// `alive` in its snapshot and commits a row the sweep never sees).
#[test]
fn a_start_racing_a_sweep_that_declares_its_worker_dead_inserts_nothing() {
    let database = database_or_skip!();
    let doomed_store = database.open();
    let doomed = register(&doomed_store, "host-a", 10);
    let orphan = Task::queue(spec(1))
        .start(&doomed, &doomed_store)
        .expect("start");
    let orphan_id = orphan.id();
    let sweeper_store = database.open();
    let sweeper = register(&sweeper_store, "host-b", 20);

    let (sweeping_tx, sweeping) = std::sync::mpsc::sync_channel(1);
    let (release, release_rx) = std::sync::mpsc::channel();
    let judge = GatedJudge {
        sweeping: sweeping_tx,
        release: std::sync::Mutex::new(release_rx),
    };
    let late_id = TaskId::new_random();
    std::thread::scope(|scope| {
        let sweep = scope.spawn(|| {
            sweeper_store
                .recover_orphans(
                    &RecoveryRequest {
                        recovering_worker: sweeper.id(),
                        now: SystemClock.now(),
                        mode: SweepMode::Apply,
                    },
                    &judge,
                )
                .expect("sweep")
        });
        sweeping.recv().expect("the sweep judges the doomed worker");
        let (started_tx, started) = std::sync::mpsc::channel();
        let doomed_id = doomed.id();
        let doomed_store = &doomed_store;
        scope.spawn(move || {
            let result = doomed_store.insert_running(&NewRunningRow {
                id: late_id,
                spec: spec(2),
                worker: doomed_id,
                started_at: SystemClock.now(),
            });
            started_tx.send(result).expect("report");
        });
        // Until the start has either returned or is waiting on the
        // worker's row lock: then let the sweep commit.
        let mut watcher = database.connect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut early = None;
        loop {
            if let Ok(result) = started.try_recv() {
                early = Some(result);
                break;
            }
            let waiting = diesel::sql_query(
                "SELECT count(*) AS count FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE 'INSERT INTO task_history%'",
            )
            .get_result::<Count>(&mut watcher)
            .expect("pg_stat_activity")
            .count;
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the start neither returned nor waited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
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
            vec![orphan_id]
        );
    });
    assert_eq!(doomed_store.get_task(late_id).expect("get"), None);
    assert!(doomed_store
        .list_tasks(&TaskFilter::default())
        .expect("list")
        .iter()
        .all(|task| task.status != TaskStatus::Running));
    drop(orphan);
}

/// Declares every registered owner dead (`ProcessGone`).
struct EveryOwnerIsDead;

impl tasktrail_core::backend::LivenessJudge for EveryOwnerIsDead {
    fn judge(&self, owner: Option<&tasktrail_core::backend::OwnerFacts>) -> Liveness {
        let owner = owner.expect("a registered owner");
        Liveness::Dead(DeathCause::ProcessGone {
            host: owner.record.host.clone(),
            pid: owner.record.pid,
        })
    }
}

/// A fault injected *inside* the sweep's transaction, after its first
/// write: a trigger fails its UPDATE of the sessions (after the rows were
/// interrupted), of `workers` (after the sessions) or its INSERT of the
/// owed reports (after everything else). Each time the whole sweep rolls
/// back: every row, session and worker is as it was and no report is owed;
/// once the fault is gone the next sweep recovers everything. Kills the
/// sweep running outside one transaction.
#[test]
fn a_sweep_failing_after_its_first_write_rolls_back_every_one() {
    let database = database_or_skip!();
    for (table, event) in [
        ("claude_sdk_sessions", "UPDATE"),
        ("workers", "UPDATE"),
        ("recovery_reports", "INSERT"),
    ] {
        let store = database.open();
        for pid in [10, 11] {
            let victim = register(&store, "host-a", pid);
            for issue in 1..=3 {
                let running = Task::queue(spec(i64::from(pid) * 10 + issue))
                    .start(&victim, &store)
                    .expect("start");
                running
                    .record_session(
                        SessionId::parse(&format!("sess_{}", running.id())).expect("id"),
                        &store,
                    )
                    .expect("session");
            }
        }
        let sweeper = register(&store, "host-b", 20);
        let snapshot = |store: &PostgresStorage| {
            (
                store.list_tasks(&TaskFilter::default()).expect("rows"),
                store.list_sessions().expect("sessions"),
                store.list_workers().expect("workers"),
            )
        };
        let before = snapshot(&store);
        let mut connection = database.connect();
        connection
            .batch_execute(&format!(
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
                 CREATE TRIGGER injected_fault BEFORE {event} ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION injected_fault();"
            ))
            .expect("inject the fault");
        let sweep = |store: &PostgresStorage| {
            store.recover_orphans(
                &RecoveryRequest {
                    recovering_worker: sweeper.id(),
                    now: SystemClock.now(),
                    mode: SweepMode::Apply,
                },
                &EveryOwnerIsDead,
            )
        };
        let result = sweep(&store);
        assert!(result.is_err(), "{event} {table}: {result:?}");
        assert_eq!(
            snapshot(&store),
            before,
            "a fault at the {event} of {table} rolls back"
        );
        let owed = diesel::sql_query("SELECT count(*) AS count FROM recovery_reports")
            .get_result::<Count>(&mut connection)
            .expect("count")
            .count;
        assert_eq!(owed, 0);
        connection
            .batch_execute(&format!(
                "DROP TRIGGER injected_fault ON {table}; DROP FUNCTION injected_fault();"
            ))
            .expect("remove the fault");
        let recovered = sweep(&store).expect("sweep");
        assert_eq!(
            recovered.len(),
            6,
            "nothing lost: all recovered once the fault is gone"
        );
        assert!(recovered.iter().all(|r| r.sessions_invalidated == 1));
        // The next round starts from an empty history.
        connection
            .batch_execute(
                "DELETE FROM recovery_reports; DELETE FROM claude_sdk_sessions; \
                 DELETE FROM task_history; DELETE FROM workers;",
            )
            .expect("clean");
    }
}

#[test]
fn a_dry_run_reports_and_writes_nothing() {
    let database = database_or_skip!();
    let id = {
        let doomed = database.open();
        let worker = register(&doomed, "host-a", 10);
        Task::queue(spec(5))
            .start(&worker, &doomed)
            .expect("start")
            .id()
    };
    let worker = database.open().list_workers().expect("workers")[0].id;
    set_heartbeat_back(&mut database.connect(), worker, "1 hour");
    let store = database.open();
    let_the_judge_watch_a_grace(&store);
    let policy = test_policy();
    let now = SystemClock.now();
    let preview = store
        .preview_recovery(
            WorkerId::new_random(),
            now,
            &PolicyJudge {
                policy: &policy,
                probe: &NoProcesses,
            },
        )
        .expect("preview");
    assert_eq!(preview.len(), 1);
    assert_eq!(preview[0].task.id, id);
    assert_eq!(
        store.get_task(id).expect("read").map(|r| r.status),
        Some(TaskStatus::Running)
    );
    assert!(store
        .list_workers()
        .expect("workers")
        .iter()
        .all(|w| w.state == WorkerState::Alive));
}

#[test]
fn a_live_remote_worker_is_safe_from_a_sweeper_whose_clock_runs_ahead() {
    let database = database_or_skip!();
    let remote_store = database.open();
    let remote = register(&remote_store, "host-a", 10);
    let running = Task::queue(spec(9))
        .start(&remote, &remote_store)
        .expect("start");

    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    // host-b's clock is two hours ahead: by its own clock host-a's heartbeat
    // is far older than the lease. The database's clock says otherwise.
    let skewed_now = SystemClock.now() + Duration::hours(2);
    assert!(sweep_as(&store, sweeper.id(), "host-b", skewed_now).is_empty());
    assert_eq!(
        store
            .get_task(running.id())
            .expect("read")
            .map(|r| r.status),
        Some(TaskStatus::Running)
    );
    running
        .finish(Outcome::Success(report()), &remote_store)
        .expect("the owner still finishes");
}

#[test]
fn heartbeats_are_written_with_the_database_clock() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    let long_ago = Utc
        .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let far_ahead = Utc
        .with_ymd_and_hms(2100, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let first = store.list_workers().expect("workers")[0].heartbeat_at;
    store
        .heartbeat_worker(worker.id(), far_ahead)
        .expect("heartbeat");
    store
        .heartbeat_worker(worker.id(), long_ago)
        .expect("heartbeat");
    let beat = store.list_workers().expect("workers")[0].heartbeat_at;
    assert!(beat >= first, "never backwards");
    let now = SystemClock.now();
    assert!(
        (now - beat).num_seconds().abs() < 60,
        "{beat} is the database's now, not the caller's"
    );
}

/// A worker that holds its lock but stopped heartbeating an hour ago (hung,
/// or stopped with SIGSTOP) is alive: reported stalled, never interrupted,
/// and it finishes its task when it wakes up.
#[test]
fn a_hung_worker_holding_its_lock_is_stalled_never_recovered() {
    let database = database_or_skip!();
    let hung_store = database.open();
    let hung = register(&hung_store, "host-a", 10);
    let running = Task::queue(spec(11))
        .start(&hung, &hung_store)
        .expect("start");
    let id = running.id();
    let mut admin = database.connect();
    set_heartbeat_back(&mut admin, hung.id(), "1 hour");
    assert!(!lock_is_free(&mut admin, hung.id()));

    let store = database.open();
    let sweeper = register(&store, "host-b", 20);
    let_the_judge_watch_a_grace(&store);
    let policy = test_policy();
    let (recovered, noticed) = noticing_sweep(&store, sweeper.id(), &policy);
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(noticed.len(), 1);
    assert_eq!(noticed[0].record.id, hung.id());
    assert!(
        matches!(noticed[0].verdict, Liveness::Stalled { silence } if silence >= Duration::minutes(59)),
        "{:?}",
        noticed[0].verdict
    );
    assert_eq!(
        store.get_task(id).expect("read").map(|r| r.status),
        Some(TaskStatus::Running)
    );
    // It wakes up: its writes go through.
    hung.heartbeat(&hung_store).expect("heartbeat");
    running
        .finish(Outcome::Success(report()), &hung_store)
        .expect("finish");
    assert_eq!(
        store.get_task(id).expect("read").map(|r| r.status),
        Some(TaskStatus::Success)
    );
}

#[test]
fn the_advisory_lock_lives_with_the_store_and_deregistering_releases_it() {
    let database = database_or_skip!();
    let mut admin = database.connect();
    let store = database.open();
    let worker = register(&store, "dev", 10);
    assert!(
        !lock_is_free(&mut admin, worker.id()),
        "held while the store lives"
    );
    let kept = register(&store, "dev", 11);
    let gone = worker.id();
    worker.deregister(&store).expect("deregister");
    assert!(
        lock_is_free(&mut admin, gone),
        "deregistering released its lock"
    );
    assert!(!lock_is_free(&mut admin, kept.id()));
    drop(store);
    // Dropping the store ends its session: the server releases the lock.
    let mut released = false;
    for _ in 0..100 {
        if lock_is_free(&mut admin, kept.id()) {
            released = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(released);
}

fn terminate_liveness_sessions(admin: &mut PgConnection) {
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'tasktrail-liveness' AND pid <> pg_backend_pid()",
        )
        .expect("terminate");
}

/// Heartbeats until one gives a verdict other than `Unavailable` (the first
/// after a lost session may report the loss).
fn heartbeat_until_settled(
    store: &PostgresStorage,
    worker: &RegisteredWorker,
) -> Result<(), StorageError> {
    for _ in 0..50 {
        match worker.heartbeat(store) {
            Err(StorageError::Unavailable { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => return other,
        }
    }
    worker.heartbeat(store)
}

#[test]
fn a_worker_whose_session_was_lost_takes_its_lock_back_if_nobody_declared_it_dead() {
    let database = database_or_skip!();
    let mut admin = database.connect();
    let store = database.open();
    let worker = register(&store, "host-a", 10);
    let running = Task::queue(spec(13)).start(&worker, &store).expect("start");
    terminate_liveness_sessions(&mut admin);
    heartbeat_until_settled(&store, &worker).expect("heartbeat after reconnecting");
    assert!(
        !lock_is_free(&mut admin, worker.id()),
        "the lock is held again"
    );
    let other = database.open();
    let sweeper = register(&other, "host-b", 20);
    assert!(sweep_as(&other, sweeper.id(), "host-b", SystemClock.now()).is_empty());
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
}

#[test]
fn a_worker_declared_dead_while_its_session_was_lost_stops_writing() {
    let database = database_or_skip!();
    let mut admin = database.connect();
    let store = database.open();
    let worker = register(&store, "host-a", 10);
    let running = Task::queue(spec(14)).start(&worker, &store).expect("start");
    terminate_liveness_sessions(&mut admin);
    // A partition longer than the grace: before the worker reconnects,
    // another host's sweep finds its lock free and its heartbeat old.
    set_heartbeat_back(&mut admin, worker.id(), "1 hour");
    let other = database.open();
    let sweeper = register(&other, "host-b", 20);
    let_the_judge_watch_a_grace(&other);
    let mut recovered = Vec::new();
    for _ in 0..100 {
        recovered = sweep_as(&other, sweeper.id(), "host-b", SystemClock.now());
        if !recovered.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(recovered.len(), 1);
    assert!(matches!(
        heartbeat_until_settled(&store, &worker),
        Err(StorageError::WorkerNotAlive { .. })
    ));
    assert!(running.finish(Outcome::Success(report()), &store).is_err());
    let error = Task::queue(spec(15))
        .start(&worker, &store)
        .expect_err("refused");
    assert!(matches!(error.error, StorageError::WorkerNotAlive { .. }));
}

/// 200 orphans of eight dead workers (four crashed, four hung), 20 rows that
/// name no worker, and a live worker's rows; four workers boot at once.
#[test]
fn concurrent_boots_recover_every_orphan_exactly_once() {
    for _round in 0..3 {
        if !concurrent_boots_round(8, 25, 20) {
            return;
        }
    }
}

/// Only rows that name no worker: there is no owner row to queue on, so the
/// sweeps meet on the rows themselves, where `SKIP LOCKED` leaves each row to
/// the one sweep that locked it.
#[test]
fn concurrent_boots_share_ownerless_orphans_exactly_once() {
    for _round in 0..3 {
        if !concurrent_boots_round(0, 0, 400) {
            return;
        }
    }
}

type Span = (std::time::Instant, std::time::Instant);

fn slow_sweep_as(store: &PostgresStorage, worker: WorkerId, _host: &str) -> Vec<RecoveredTask> {
    let policy = test_policy();
    let now = SystemClock.now();
    store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: worker,
                now,
                mode: SweepMode::Apply,
            },
            &SlowJudge(PolicyJudge {
                policy: &policy,
                probe: &NoProcesses,
            }),
        )
        .expect("sweep")
}

/// One round; false when skipped.
fn concurrent_boots_round(
    dead_worker_count: usize,
    orphans_per_worker: usize,
    legacy_orphans: usize,
) -> bool {
    const SWEEPERS: usize = 4;
    let Some(database) = TestDatabase::create() else {
        return false;
    };
    let setup = database.open();

    // A survivor on another host whose rows must not be touched.
    let survivor_store = database.open();
    let survivor = register(&survivor_store, "survivor-host", 99);
    let survivor_rows: Vec<TaskId> = (0..10)
        .map(|i| {
            let running = Task::queue(spec(5000 + i))
                .start(&survivor, &survivor_store)
                .expect("start");
            let id = running.id();
            std::mem::forget(running);
            id
        })
        .collect();

    // Eight workers on a host that goes away: their sessions end (the
    // store is dropped) and their heartbeats are past the grace.
    let mut orphans: BTreeSet<TaskId> = BTreeSet::new();
    let mut sessions = 0usize;
    let mut dead_workers = Vec::new();
    {
        let doomed = database.open();
        for w in 0..dead_worker_count {
            let worker = register(&doomed, "lost-host", 100 + w as u32);
            for t in 0..orphans_per_worker {
                let running = Task::queue(spec(1 + (w * 100 + t) as i64))
                    .start(&worker, &doomed)
                    .expect("start");
                if t % 5 == 0 {
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
            // Past the grace: half long ago, half just past it.
            let silence = if w % 2 == 1 { "1 hour" } else { "2 seconds" };
            set_heartbeat_back(&mut database.connect(), worker.id(), silence);
            dead_workers.push(worker.id());
        }
    }
    let mut admin = database.connect();
    for i in 0..legacy_orphans {
        let id = TaskId::new_random();
        admin
            .batch_execute(&format!(
                r#"INSERT INTO task_history (id, repo, issue_number, "user", agent, agent_type, model, provider, status, started_at)
                   VALUES ('{id}', 'acme/legacy', {}, 'u', 'a', 't', 'm', 'p', 'running', now() - interval '1 day')"#,
                9000 + i
            ))
            .expect("legacy row");
        orphans.insert(id);
    }
    drop(setup);

    // Four workers boot at the same moment, each with its own store.
    let barrier = Arc::new(Barrier::new(SWEEPERS));
    let reports: Vec<(WorkerId, Vec<RecoveredTask>, Span)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SWEEPERS)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let url = database.url.clone();
                scope.spawn(move || {
                    let store = PostgresStorage::open_with(
                        &url,
                        PostgresOptions {
                            pool_size: 2,
                            ..PostgresOptions::default()
                        },
                    )
                    .expect("open");
                    let host = format!("sweeper-{i}");
                    let registration = registration(&host, 1000 + i as u32);
                    let_the_judge_watch_a_grace(&store);
                    barrier.wait();
                    let worker =
                        RegisteredWorker::register(&store, registration, Arc::new(SystemClock))
                            .expect("register");
                    let started = std::time::Instant::now();
                    let recovered = slow_sweep_as(&store, worker.id(), &host);
                    (worker.id(), recovered, (started, std::time::Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sweeper thread"))
            .collect()
    });

    eprintln!(
        "orphans reported per sweep: {:?}",
        reports
            .iter()
            .map(|(_, recovered, _)| recovered.len())
            .collect::<Vec<_>>()
    );
    // The sweeps really ran at the same time: every one started before the
    // first one to finish had finished.
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
    let mut total = 0;
    let mut invalidated = 0;
    for (sweeper, recovered, _) in &reports {
        for task in recovered {
            total += 1;
            invalidated += task.sessions_invalidated as usize;
            assert_eq!(task.recovered_by, *sweeper);
            assert!(
                reported_by.insert(task.task.id, *sweeper).is_none(),
                "task {} reported twice",
                task.task.id
            );
        }
    }
    assert_eq!(
        total,
        orphans.len(),
        "every orphan is reported exactly once"
    );
    assert_eq!(
        reported_by.keys().copied().collect::<BTreeSet<_>>(),
        orphans
    );
    assert_eq!(invalidated, sessions, "every session is invalidated once");

    let store = database.open();
    for (id, sweeper) in &reported_by {
        let row = store.get_task(*id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted);
        assert_eq!(
            row.interrupted_by,
            Some(*sweeper),
            "the row names the sweep that reported it"
        );
        assert_eq!(row.finished_at, None);
    }
    for id in &survivor_rows {
        assert_eq!(
            store.get_task(*id).expect("read").map(|r| r.status),
            Some(TaskStatus::Running)
        );
    }
    assert!(store
        .list_sessions()
        .expect("sessions")
        .iter()
        .all(|s| s.invalidated_at.is_some()));
    let states: BTreeMap<WorkerId, WorkerState> = store
        .list_workers()
        .expect("workers")
        .into_iter()
        .map(|w| (w.id, w.state))
        .collect();
    for worker in &dead_workers {
        assert_eq!(states[worker], WorkerState::Dead);
        assert!(lock_is_free(&mut admin, *worker), "no sweep kept a lock");
    }
    assert_eq!(states[&survivor.id()], WorkerState::Alive);
    assert_eq!(
        store.running_tasks().expect("running").len(),
        survivor_rows.len()
    );
    true
}

// ---------------------------------------------------------------------------
// The shared behaviour suite
// ---------------------------------------------------------------------------

/// The Postgres backend as the suite's subject, in the production
/// configuration (heartbeats and the lease on the database's clock), on a
/// fresh database of its own that lives as long as the subject (the store
/// is dropped first); `None`, after the visible `skipped:` line, without
/// `TASKTRAIL_TEST_POSTGRES_URL` (a failure under CI). The suite's manual
/// clock cannot move the database's, so where a case needs a heartbeat to
/// grow old it moves `heartbeat_at` back with an UPDATE (the
/// `age_heartbeats` hook).
fn postgres_subject() -> Option<tasktrail_core::conformance::Subject<PostgresStorage>> {
    use tasktrail_core::conformance::{LockChange, Subject};

    let database = TestDatabase::create()?;
    Some(Subject {
        name: "postgres",
        fresh_store: Box::new(move || {
            database.open_with(PostgresOptions {
                statement_log: Some(StatementLog::new()),
                pool_size: 2,
                ..PostgresOptions::default()
            })
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
        // A dying worker's session ends and the server frees its lock; a
        // registration older than the locks has no `liveness_lock`.
        change_worker_lock: Box::new(|store: &PostgresStorage, worker, change| match change {
            LockChange::ReleasedByDeath => {
                assert!(store.release_worker_lock(worker), "the store held it");
            }
            _ => {
                let updated = store
                    .with_connection(|connection| {
                        diesel::sql_query("UPDATE workers SET liveness_lock = NULL WHERE id = $1")
                            .bind::<diesel::sql_types::Uuid, _>(*worker.as_uuid())
                            .execute(connection)
                            .expect("forget the lock")
                    })
                    .expect("a connection");
                assert_eq!(updated, 1);
            }
        }),
    })
}

/// One `#[test]` per conformance case (`conformance::<case>`), each on a
/// database of its own; they run in parallel.
mod conformance {
    use super::postgres_subject;

    tasktrail_core::conformance_tests!(skippable: postgres_subject());
}

/// Scratch databases are made from `template0`: one is made while another
/// session is connected to `template1`, which makes a copy of `template1`
/// fail ("source database \"template1\" is being accessed by other users").
#[test]
fn a_scratch_database_is_made_while_someone_is_connected_to_template1() {
    let Some(url) = tasktrail_diesel::test_postgres_url() else {
        return;
    };
    let on_template1 = {
        let (base, _) = url.split_once('?').unwrap_or((url.as_str(), ""));
        let (server, _) = base.rsplit_once('/').expect("a database in the URL");
        format!("{server}/template1")
    };
    let mut connected = PgConnection::establish(&on_template1).expect("connect to template1");
    diesel::sql_query("SELECT 1")
        .execute(&mut connected)
        .expect("a session on template1");
    let database = TestDatabase::create().expect("the variable is set");
    drop(connected);
    let store = database.open();
    assert!(store
        .list_tasks(&TaskFilter::default())
        .expect("list")
        .is_empty());
}

/// A pre-fix `task_history` as a server wrote it before tasktrail, by plain
/// SQL: text ids, narrower integers, `timestamp` without zone, `numeric`
/// cost, `json` artifacts, no named CHECK; an unrelated table beside it.
const FOREIGN_PRE_FIX_SCHEMA: &str = r#"
    CREATE TABLE task_history (
        id text PRIMARY KEY,
        repo varchar(200) NOT NULL,
        issue_number integer NOT NULL,
        "user" text NOT NULL,
        agent text NOT NULL,
        agent_type text NOT NULL,
        model text NOT NULL,
        provider text NOT NULL,
        status text NOT NULL,
        started_at timestamp NOT NULL,
        finished_at timestamp,
        input_tokens integer,
        output_tokens integer,
        cost_usd numeric(10, 4),
        turns smallint,
        artifacts json
    );
    CREATE TABLE notes (id serial PRIMARY KEY, body text);
    INSERT INTO notes (body) VALUES ('kept as it is');
"#;

fn foreign_rows() -> String {
    let rows = [
        ("success", "2026-05-11 15:13:00", "'2026-05-11 15:49:00'"),
        ("failure", "2026-05-11 15:13:00.5", "'2026-05-11 15:20:00'"),
        ("cancelled", "2026-05-11 15:13:00", "'2026-05-11 15:14:00'"),
        (
            "interrupted",
            "2026-05-11 15:13:00",
            "'2026-05-11 15:30:00'",
        ),
        ("aborted_no_skill", "2026-05-11 15:13:00", "NULL"),
    ];
    rows.iter()
        .enumerate()
        .map(|(n, (status, started, finished))| {
            let n = n + 1;
            format!(
                r#"INSERT INTO task_history VALUES ('01890a5d-ac96-774b-bcce-{n:012}', 'acme/widgets',
                   {n}, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', '{status}',
                   '{started}', {finished}, {}, 20, 0.5, 3, '["pr/{n}"]');"#,
                100 + n
            )
        })
        .collect()
}

#[test]
fn a_pre_fix_database_written_by_plain_sql_is_adopted_with_every_row_kept() {
    let database = database_or_skip!();
    database
        .connect()
        .batch_execute(&format!("{FOREIGN_PRE_FIX_SCHEMA}{}", foreign_rows()))
        .expect("their schema");
    // Sessions of this database default to a zone that is not UTC: the
    // adopted times must still be read as UTC (the conversion names UTC
    // itself rather than trusting any session's zone).
    database
        .connect()
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', \
             current_database(), 'America/New_York'); END $$;",
        )
        .expect("zone");
    match PostgresStorage::open(&database.url) {
        Err(StorageError::Incompatible { detail }) => {
            assert!(detail.contains("--adopt"), "{detail}")
        }
        other => panic!("expected Incompatible, got {:?}", other.err()),
    }
    let recorded = PostgresStorage::adopt(&database.url).expect("adopt");
    // The baseline (migration 1), then every later migration, in order.
    assert_eq!(recorded[0], "20260501000000", "{recorded:?}");
    assert_eq!(recorded.len(), MIGRATIONS, "{recorded:?}");
    assert!(recorded.windows(2).all(|pair| pair[0] < pair[1]));

    let store = database.open();
    let time = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    };
    let statuses = [
        "success",
        "failure",
        "cancelled",
        "interrupted",
        "aborted_no_skill",
    ];
    for (index, status) in statuses.iter().enumerate() {
        let n = index as u32 + 1;
        let id: TaskId = format!("01890a5d-ac96-774b-bcce-{n:012}")
            .parse()
            .expect("id");
        let row = store.get_task(id).expect("read").expect("kept");
        assert_eq!(row.status.as_str(), *status);
        assert_eq!(
            (
                row.repo.as_str(),
                row.issue_number,
                row.user.as_str(),
                row.agent.as_str(),
                row.agent_type.as_str(),
                row.model.as_str(),
                row.provider.as_str(),
            ),
            (
                "acme/widgets",
                n,
                "alice",
                "fixer",
                "claude_sdk",
                "claude-opus",
                "anthropic"
            )
        );
        assert_eq!(
            (row.input_tokens, row.output_tokens, row.turns, row.cost_usd),
            (Some(100 + n), Some(20), Some(3), Some(0.5))
        );
        assert_eq!(row.artifacts, Some(vec![format!("pr/{n}")]));
        let expected_start = if n == 2 {
            "2026-05-11T15:13:00.5Z"
        } else {
            "2026-05-11T15:13:00Z"
        };
        assert_eq!(
            row.started_at,
            time(expected_start),
            "zone-less times are UTC"
        );
    }
    let interrupted = store
        .get_task("01890a5d-ac96-774b-bcce-000000000004".parse().expect("id"))
        .expect("read")
        .expect("row");
    assert_eq!(interrupted.finished_at, None);
    assert_eq!(
        interrupted.interrupted_at,
        Some(time("2026-05-11T15:30:00Z"))
    );
    let success = store
        .get_task("01890a5d-ac96-774b-bcce-000000000001".parse().expect("id"))
        .expect("read")
        .expect("row");
    assert_eq!(success.finished_at, Some(time("2026-05-11T15:49:00Z")));
    #[derive(QueryableByName)]
    struct Body {
        #[diesel(sql_type = Text)]
        body: String,
    }
    let notes: Vec<Body> = diesel::sql_query("SELECT body FROM notes")
        .load(&mut database.connect())
        .expect("notes");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].body, "kept as it is");
    // The adopted database works: a worker starts and finishes a task.
    let worker = register(&store, "adopter", 1);
    let running = Task::queue(spec(7)).start(&worker, &store).expect("start");
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
    assert!(matches!(
        PostgresStorage::adopt(&database.url),
        Err(StorageError::NotAdoptable { .. })
    ));
}

/// Sessions of the test's database waiting for a lock.
fn sessions_waiting_for_a_lock(connection: &mut PgConnection) -> i64 {
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = BigInt)]
        waiting: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS waiting FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .get_result::<Waiting>(connection)
    .expect("pg_stat_activity")
    .waiting
}

/// Two adoptions at once (two operators, or a deploy script run twice):
/// `LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE` makes them one at a
/// time, so the second checks the table the first adopted and refuses it;
/// every row is kept. A reader holding the table in `SHARE` mode lines the
/// two up: both read the catalogs, then wait. Without the lock clause both
/// check the pre-fix table, and the second fails halfway through an
/// upgrade the first already made.
#[test]
fn two_adoptions_at_once_adopt_the_table_once_and_refuse_the_other() {
    let database = database_or_skip!();
    database
        .connect()
        .batch_execute(&format!("{FOREIGN_PRE_FIX_SCHEMA}{}", foreign_rows()))
        .expect("their schema");
    let mut reader = database.connect();
    reader
        .batch_execute("BEGIN; LOCK TABLE task_history IN SHARE MODE;")
        .expect("hold the table");
    let adopters: Vec<_> = (0..2)
        .map(|_| {
            let url = database.url.clone();
            std::thread::spawn(move || PostgresStorage::adopt(&url))
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sessions_waiting_for_a_lock(&mut database.connect()) < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    reader.batch_execute("COMMIT").expect("let go of the table");
    let results: Vec<Result<Vec<String>, StorageError>> = adopters
        .into_iter()
        .map(|adopter| adopter.join().expect("the adopter did not panic"))
        .collect();
    assert_eq!(
        results.iter().filter(|result| result.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|result| matches!(result, Err(StorageError::NotAdoptable { .. }))),
        "{results:?}"
    );
    let rows = database
        .open()
        .list_tasks(&TaskFilter::default())
        .expect("list");
    assert_eq!(rows.len(), 5, "every row kept");
}

#[test]
fn a_postgres_table_of_another_shape_is_refused_with_every_difference_and_nothing_changes() {
    let database = database_or_skip!();
    let mut connection = database.connect();
    let schema = FOREIGN_PRE_FIX_SCHEMA
        .replace("provider text NOT NULL,", "")
        .replace("artifacts json", "artifacts json, priority integer")
        .replace(
            "issue_number integer NOT NULL",
            "issue_number text NOT NULL",
        );
    connection
        .batch_execute(&format!("{schema} CREATE TABLE workers (name text);"))
        .expect("their schema");
    #[derive(QueryableByName, PartialEq, Debug)]
    struct ColumnType {
        #[diesel(sql_type = Text)]
        column: String,
    }
    let shape = |connection: &mut PgConnection| -> Vec<ColumnType> {
        diesel::sql_query(
            "SELECT table_name::text || '.' || column_name::text || ' ' || data_type::text AS column \
             FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1",
        )
        .load(connection)
        .expect("shape")
    };
    let before = shape(&mut connection);
    let Err(StorageError::NotAdoptable { differences }) = PostgresStorage::adopt(&database.url)
    else {
        panic!("expected NotAdoptable");
    };
    let all = differences.join("\n");
    for expected in ["workers", "provider is missing", "issue_number", "priority"] {
        assert!(all.contains(expected), "{expected}: {all}");
    }
    assert_eq!(shape(&mut connection), before, "nothing changed");
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let migration_tables: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = '__diesel_schema_migrations'",
    )
    .get_result(&mut connection)
    .expect("count");
    assert_eq!(migration_tables.count, 0, "no baseline recorded");
}

#[test]
fn an_unreadable_row_is_shown_as_the_database_holds_it() {
    let database = database_or_skip!();
    let store = database.open();
    let worker = register(&store, "h", 1);
    let running = Task::queue(spec(9)).start(&worker, &store).expect("start");
    let id = running.id();
    running
        .finish(Outcome::Success(report()), &store)
        .expect("finish");
    database
        .connect()
        .batch_execute("UPDATE task_history SET input_tokens = -5")
        .expect("corrupt");
    assert!(matches!(
        store.get_task(id),
        Err(StorageError::CorruptRow { .. })
    ));
    let columns = store.raw_task_columns(id).expect("raw").expect("a row");
    let value = |name: &str| support::column_value(&columns, name);
    assert_eq!(value("input_tokens").as_deref(), Some("-5"));
    assert_eq!(value("status").as_deref(), Some("success"));
    assert_eq!(value("interrupted_at"), None);
    assert_eq!(columns.len(), 20);
    assert!(store
        .raw_task_columns(TaskId::new_time_ordered())
        .expect("raw")
        .is_none());
    // The listing names it and keeps the others readable.
    let rows = store
        .list_task_rows(&TaskFilter::default())
        .expect("the query works");
    assert!(
        matches!(&rows[..], [Err(StorageError::CorruptRow { detail })] if detail.contains(&id.to_string()))
    );
}

#[test]
fn a_select_only_role_reads_and_a_dml_only_role_runs_workers_on_a_current_schema() {
    let database = database_or_skip!();
    drop(database.open()); // migrated, as an operator's `migrate` would
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let reader = format!("tt_reader_{}", &suffix[..12]);
    let writer = format!("tt_writer_{}", &suffix[..12]);
    let mut admin = database.connect();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {reader} LOGIN; CREATE ROLE {writer} LOGIN;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO {reader}, {writer};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {writer};"
        ))
        .expect("roles");
    let as_role = |role: &str| database.url.replacen("postgres@", &format!("{role}@"), 1);
    let outcome = std::panic::catch_unwind(|| {
        // The reader lists (no DDL at open), and cannot write.
        let read_only =
            PostgresStorage::open_read_only(&as_role(&reader), &PostgresOptions::default())
                .expect("a SELECT-only role opens for reading");
        read_only
            .list_tasks(&TaskFilter::default())
            .expect("and lists");
        // The writer opens as a worker does (migrate: nothing pending, no
        // DDL) and runs a task.
        let store = PostgresStorage::open(&as_role(&writer)).expect("a DML-only role opens");
        let worker = register(&store, "dml", 1);
        Task::queue(spec(3))
            .start(&worker, &store)
            .expect("start")
            .finish(Outcome::Success(report()), &store)
            .expect("finish");
    });
    drop(admin);
    let url = database.url.clone();
    drop(database);
    if let Ok(mut server) = PgConnection::establish(
        &url.rsplit_once('/')
            .map(|(base, _)| format!("{base}/test"))
            .unwrap_or(url),
    ) {
        let _ = server.batch_execute(&format!(
            "DROP ROLE IF EXISTS {reader}; DROP ROLE IF EXISTS {writer};"
        ));
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A judge's watch is its store's long-lived liveness session, not the
/// pooled connection its sweep happens to run on: a server that closes idle
/// connections (`idle_session_timeout`, a pooler, a NAT) keeps every pooled
/// connection young, and a watch measured on those would never prove a
/// death.
/// The server closes `store`'s (only) pooled connection, as an idle
/// timeout would, and it then sits idle past the pool's test threshold:
/// the next statement finds it closed and gets a brand-new one.
fn close_the_pooled_connection_and_let_it_sit_idle(
    database: &TestDatabase,
    store: &PostgresStorage,
) {
    let pooled_pid: i32 = store
        .with_connection(|connection| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "pg_backend_pid()",
            ))
            .get_result(connection)
        })
        .expect("a connection")
        .expect("pid");
    database
        .connect()
        .batch_execute(&format!("SELECT pg_terminate_backend({pooled_pid})"))
        .expect("terminate");
    std::thread::sleep(std::time::Duration::from_millis(1200));
}

#[test]
fn a_sweep_on_a_fresh_pooled_connection_still_proves_a_death_its_store_watched() {
    let database = database_or_skip!();
    let crashed = {
        let doomed = database.open();
        let worker = register(&doomed, "host-a", 10);
        let running = Task::queue(spec(41))
            .start(&worker, &doomed)
            .expect("start");
        std::mem::forget(running);
        worker.id()
    };
    set_heartbeat_back(&mut database.connect(), crashed, "1 hour");
    let store = database.open_with(PostgresOptions {
        pool_size: 1,
        ..PostgresOptions::default()
    });
    let sweeper = register(&store, "host-b", 20);
    let_the_judge_watch_a_grace(&store);
    // The server closes the pooled connection, as an idle timeout would:
    // the sweep gets a brand-new one.
    close_the_pooled_connection_and_let_it_sit_idle(&database, &store);
    let recovered = sweep_as(&store, sweeper.id(), "host-b", SystemClock.now());
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(matches!(
        recovered[0].cause,
        DeathCause::LockReleased { pid: 10, .. }
    ));
}

/// With the server reachable, a statement waits for a connection of a
/// busy pool up to the connection timeout (only while the server is known
/// to be down does a checkout give up after a second, so a stopping
/// worker is not held past its deadline), and so it does again once a
/// connection the server closed has been replaced.
#[test]
fn a_statement_waits_for_a_busy_pool_while_the_server_is_reachable() {
    let database = database_or_skip!();
    let store = database.open_with(PostgresOptions {
        pool_size: 1,
        connection_timeout: std::time::Duration::from_secs(20),
        ..PostgresOptions::default()
    });
    // The server closes the pooled connection; once it has sat idle past
    // the test threshold, the next statement finds it closed (the server
    // seems down for a moment) and gets a new one (reached again).
    close_the_pooled_connection_and_let_it_sit_idle(&database, &store);
    store
        .list_tasks(&TaskFilter::default())
        .expect("a new connection");
    let (held_tx, held) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            store.with_connection(|_connection| {
                held_tx.send(()).expect("say it is held");
                std::thread::sleep(std::time::Duration::from_millis(2500));
            })
        });
        held.recv().expect("the pool's only connection is held");
        store
            .list_tasks(&TaskFilter::default())
            .expect("the statement waited for the connection");
    });
}
