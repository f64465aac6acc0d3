//! Lifecycle throughput: start + finish of one task, each its own commit,
//! next to raw baselines that issue the same two statements through the
//! same driver on the same kind of file with nothing around them: once as
//! the issue asks (Diesel `sql_query`, prepared anew on every call) and once
//! prepared a single time and reused. Every variant writes the same kind of
//! task id the crate does (time-ordered, v7), so only the code differs.
//!
//! Run: `cargo bench --bench lifecycle`. Results: docs/performance.md.
//! MySQL/MariaDB (feature `mysql`) runs when `TASKTRAIL_TEST_MYSQL_URL` names
//! a server: `cargo bench --features mysql --bench lifecycle -- mysql`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use tasktrail::*;
#[cfg(feature = "postgres")]
use tasktrail_diesel::ScratchDatabase;
#[cfg(feature = "mysql")]
use tasktrail_diesel::{MysqlConnection, MysqlStorage, ScratchMysqlDatabase};

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
    .expect("valid spec")
}

fn worker<S: Storage>(storage: &S) -> RegisteredWorker {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    RegisteredWorker::register(
        storage,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: "bench".into(),
            pid: std::process::id(),
            process_start_marker: "bench".into(),
            host_identity: None,
            started_at: clock.now(),
        },
        clock,
    )
    .expect("register")
}

fn report() -> RunReport {
    RunReport {
        input_tokens: 1200,
        output_tokens: 300,
        cost_usd: CostUsd::new(0.42).expect("cost"),
        turns: 7,
        artifacts: vec!["pr/17".into()],
    }
}

fn one_lifecycle<S: Storage>(worker: &RegisteredWorker, storage: &S) {
    let running = Task::queue(spec()).start(worker, storage).expect("start");
    black_box(
        running
            .finish(Outcome::Success(report()), storage)
            .expect("finish"),
    );
}

/// The same two statements, autocommit each, through Diesel's `sql_query`.
fn raw_lifecycle(connection: &mut SqliteConnection, worker: &str) {
    use diesel::sql_types::{BigInt, Double, Text};
    let id = TaskId::new_time_ordered().to_string();
    let now = || {
        SystemClock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    diesel::sql_query(RAW_INSERT_RUNNING)
        .bind::<Text, _>(&id)
        .bind::<Text, _>("acme/widgets")
        .bind::<BigInt, _>(1104_i64)
        .bind::<Text, _>("alice")
        .bind::<Text, _>("fixer")
        .bind::<Text, _>("claude_sdk")
        .bind::<Text, _>("claude-opus")
        .bind::<Text, _>("anthropic")
        .bind::<Text, _>(now())
        .bind::<Text, _>(worker)
        .execute(connection)
        .expect("raw insert");
    diesel::sql_query(RAW_FINISH)
        .bind::<Text, _>(now())
        .bind::<BigInt, _>(1200_i64)
        .bind::<BigInt, _>(300_i64)
        .bind::<Double, _>(0.42)
        .bind::<BigInt, _>(7_i64)
        .bind::<Text, _>("[\"pr/17\"]")
        .bind::<Text, _>(&id)
        .bind::<Text, _>(worker)
        .execute(connection)
        .expect("raw update");
}

const RAW_INSERT_RUNNING: &str = "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, worker_id) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)";
const RAW_FINISH: &str = "UPDATE task_history SET status = 'success', finished_at = ?, input_tokens = ?, output_tokens = ?, cost_usd = ?, turns = ?, artifacts = ? \
     WHERE id = ? AND status = 'running' AND worker_id = ?";

/// The same two statements, autocommit each, prepared once and reused
/// (rusqlite's statement cache on the same bundled SQLite): the fastest
/// anything can issue them.
fn raw_prepared_lifecycle(connection: &rusqlite::Connection, worker: &str) {
    let id = TaskId::new_time_ordered().to_string();
    let now = || {
        SystemClock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    connection
        .prepare_cached(RAW_INSERT_RUNNING)
        .expect("prepare insert")
        .execute(rusqlite::params![
            id,
            "acme/widgets",
            1104_i64,
            "alice",
            "fixer",
            "claude_sdk",
            "claude-opus",
            "anthropic",
            now(),
            worker
        ])
        .expect("raw insert");
    connection
        .prepare_cached(RAW_FINISH)
        .expect("prepare finish")
        .execute(rusqlite::params![
            now(),
            1200_i64,
            300_i64,
            0.42_f64,
            7_i64,
            "[\"pr/17\"]",
            id,
            worker
        ])
        .expect("raw update");
}

fn lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(1));

    let memory = MemoryStorage::new();
    let memory_worker = worker(&memory);
    group.bench_function("memory/tasktrail", |b| {
        b.iter(|| one_lifecycle(&memory_worker, &memory))
    });

    for durability in [SqliteDurability::Full, SqliteDurability::Normal] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = || SqliteOptions {
            durability,
            ..SqliteOptions::default()
        };
        let store = SqliteStorage::open_with(dir.path().join("crate.db"), options()).expect("open");
        let store_worker = worker(&store);
        group.bench_function(
            BenchmarkId::new("sqlite/tasktrail", format!("{durability:?}")),
            |b| b.iter(|| one_lifecycle(&store_worker, &store)),
        );

        let raw_store =
            SqliteStorage::open_with(dir.path().join("raw.db"), options()).expect("open");
        let raw_worker = worker(&raw_store).id().to_string();
        raw_store.with_connection(|connection| {
            connection.batch_execute("SELECT 1").expect("ready");
            group.bench_function(
                BenchmarkId::new("sqlite/raw_sql_baseline", format!("{durability:?}")),
                |b| b.iter(|| raw_lifecycle(connection, &raw_worker)),
            );
        });

        let prepared_path = dir.path().join("raw-prepared.db");
        let prepared_store = SqliteStorage::open_with(&prepared_path, options()).expect("open");
        let prepared_worker = worker(&prepared_store).id().to_string();
        let prepared = rusqlite::Connection::open(&prepared_path).expect("rusqlite open");
        prepared
            .execute_batch(match durability {
                SqliteDurability::Full => "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;",
                SqliteDurability::Normal => {
                    "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;"
                }
            })
            .expect("pragmas");
        group.bench_function(
            BenchmarkId::new("sqlite/raw_prepared_baseline", format!("{durability:?}")),
            |b| b.iter(|| raw_prepared_lifecycle(&prepared, &prepared_worker)),
        );
    }
    #[cfg(feature = "postgres")]
    postgres_lifecycle(&mut group);
    #[cfg(feature = "mysql")]
    mysql_lifecycle(&mut group);
    group.finish();
}

/// The same two statements on Postgres, autocommit each, on one pooled
/// connection.
#[cfg(feature = "postgres")]
fn raw_postgres_lifecycle(connection: &mut diesel::pg::PgConnection, worker: uuid::Uuid) {
    use diesel::sql_types::{BigInt, Double, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
    let id = uuid::Uuid::now_v7();
    diesel::sql_query(
        "INSERT INTO task_history (id, repo, issue_number, \"user\", agent, agent_type, model, provider, status, started_at, worker_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, $10)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>("acme/widgets")
    .bind::<BigInt, _>(1104_i64)
    .bind::<Text, _>("alice")
    .bind::<Text, _>("fixer")
    .bind::<Text, _>("claude_sdk")
    .bind::<Text, _>("claude-opus")
    .bind::<Text, _>("anthropic")
    .bind::<Timestamptz, _>(SystemClock.now())
    .bind::<SqlUuid, _>(worker)
    .execute(connection)
    .expect("raw insert");
    diesel::sql_query(
        "UPDATE task_history SET status = 'success', finished_at = $1, input_tokens = $2, output_tokens = $3, cost_usd = $4, turns = $5, artifacts = $6 \
         WHERE id = $7 AND status = 'running' AND worker_id = $8",
    )
    .bind::<Timestamptz, _>(SystemClock.now())
    .bind::<BigInt, _>(1200_i64)
    .bind::<BigInt, _>(300_i64)
    .bind::<Double, _>(0.42)
    .bind::<BigInt, _>(7_i64)
    .bind::<Jsonb, _>(serde_json::json!(["pr/17"]))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(worker)
    .execute(connection)
    .expect("raw update");
}

#[cfg(feature = "postgres")]
fn postgres_lifecycle(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let Some(database) = ScratchDatabase::create() else {
        return;
    };
    let store = PostgresStorage::open(database.url()).expect("open");
    let store_worker = worker(&store);
    group.bench_function("postgres/tasktrail", |b| {
        b.iter(|| one_lifecycle(&store_worker, &store))
    });
    let raw_worker = *worker(&store).id().as_uuid();
    store
        .with_connection(|connection| {
            group.bench_function("postgres/raw_sql_baseline", |b| {
                b.iter(|| raw_postgres_lifecycle(connection, raw_worker))
            });
        })
        .expect("connection");
    // Through PgBouncer in transaction mode in front of the same server
    // (`TASKTRAIL_BENCH_PGBOUNCER=postgres://user@host:port`, no database:
    // the scratch database's name is added): statements unprepared, no
    // liveness lock (the lease), the same start + finish.
    if let Ok(bouncer) = std::env::var("TASKTRAIL_BENCH_PGBOUNCER") {
        let pooled = PostgresStorage::open(&format!(
            "{}/{}?tasktrail_pooler=transaction",
            bouncer.trim_end_matches('/'),
            database.name()
        ))
        .expect("open through PgBouncer");
        let pooled_worker = worker(&pooled);
        group.bench_function("postgres/tasktrail_through_pgbouncer", |b| {
            b.iter(|| one_lifecycle(&pooled_worker, &pooled))
        });
    }
}

/// The running row's INSERT on MySQL, as the raw baselines send it.
#[cfg(feature = "mysql")]
const MYSQL_RAW_INSERT_RUNNING: &str = "INSERT INTO task_history (id, repo, issue_number, `user`, agent, agent_type, model, provider, status, started_at, worker_id) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)";

/// The fenced finish on MySQL, as the raw baselines send it.
#[cfg(feature = "mysql")]
const MYSQL_RAW_FINISH: &str = "UPDATE task_history SET status = 'success', finished_at = ?, input_tokens = ?, output_tokens = ?, cost_usd = ?, turns = ?, artifacts = ? \
     WHERE id = ? AND status = 'running' AND worker_id = ?";

/// The INSERT of the running row through Diesel's `sql_query` (a macro,
/// not a function: the same query value goes to Diesel's and to
/// diesel-async's `execute`, whose bounds differ).
#[cfg(feature = "mysql")]
macro_rules! mysql_raw_insert_query {
    ($id:expr, $worker:expr) => {{
        use diesel::sql_types::{BigInt, Datetime, Text};
        diesel::sql_query(MYSQL_RAW_INSERT_RUNNING)
            .bind::<Text, _>($id)
            .bind::<Text, _>("acme/widgets")
            .bind::<BigInt, _>(1104_i64)
            .bind::<Text, _>("alice")
            .bind::<Text, _>("fixer")
            .bind::<Text, _>("claude_sdk")
            .bind::<Text, _>("claude-opus")
            .bind::<Text, _>("anthropic")
            .bind::<Datetime, _>(SystemClock.now().naive_utc())
            .bind::<Text, _>($worker)
    }};
}

/// The fenced finish through Diesel's `sql_query`.
#[cfg(feature = "mysql")]
macro_rules! mysql_raw_finish_query {
    ($id:expr, $worker:expr) => {{
        use diesel::sql_types::{BigInt, Datetime, Double, Text};
        diesel::sql_query(MYSQL_RAW_FINISH)
            .bind::<Datetime, _>(SystemClock.now().naive_utc())
            .bind::<BigInt, _>(1200_i64)
            .bind::<BigInt, _>(300_i64)
            .bind::<Double, _>(0.42)
            .bind::<BigInt, _>(7_i64)
            .bind::<Text, _>("[\"pr/17\"]")
            .bind::<Text, _>($id)
            .bind::<Text, _>($worker)
    }};
}

/// The same two statements on MySQL, autocommit each, through Diesel's
/// `sql_query` on one of the store's pooled connections: the crate's own
/// driver stack (diesel-async's `AsyncConnectionWrapper` over
/// `mysql_async`), which prepares such a statement, runs it, and closes it.
#[cfg(feature = "mysql")]
fn raw_mysql_lifecycle(connection: &mut MysqlConnection, worker: &str) {
    let id = TaskId::new_time_ordered().to_string();
    mysql_raw_insert_query!(&id, worker)
        .execute(connection)
        .expect("raw insert");
    mysql_raw_finish_query!(&id, worker)
        .execute(connection)
        .expect("raw update");
}

/// The same `sql_query` statements through diesel-async directly, on the
/// bench's own current-thread runtime: the previous baseline without the
/// `AsyncConnectionWrapper` (which does the same `block_on` per statement).
#[cfg(feature = "mysql")]
fn raw_mysql_lifecycle_without_wrapper(
    runtime: &tokio::runtime::Runtime,
    connection: &mut diesel_async::AsyncMysqlConnection,
    worker: &str,
) {
    let id = TaskId::new_time_ordered().to_string();
    runtime.block_on(async {
        diesel_async::RunQueryDsl::execute(mysql_raw_insert_query!(&id, worker), connection)
            .await
            .expect("raw insert");
        diesel_async::RunQueryDsl::execute(mysql_raw_finish_query!(&id, worker), connection)
            .await
            .expect("raw update");
    });
}

/// A time as the MySQL protocol sends a `DATETIME(6)`.
#[cfg(feature = "mysql")]
fn mysql_datetime(at: Timestamp) -> mysql_async::Value {
    use chrono::{Datelike, Timelike};
    mysql_async::Value::Date(
        u16::try_from(at.year()).expect("a four-digit year"),
        at.month() as u8,
        at.day() as u8,
        at.hour() as u8,
        at.minute() as u8,
        at.second() as u8,
        at.timestamp_subsec_micros(),
    )
}

/// The same two statements through `mysql_async` itself, prepared once per
/// connection (its statement cache) and then only executed: the fastest
/// this driver can issue them.
#[cfg(feature = "mysql")]
fn raw_prepared_mysql_lifecycle(
    runtime: &tokio::runtime::Runtime,
    connection: &mut mysql_async::Conn,
    worker: &str,
) {
    use mysql_async::prelude::Queryable;
    let id = TaskId::new_time_ordered().to_string();
    runtime.block_on(async {
        connection
            .exec_drop(
                MYSQL_RAW_INSERT_RUNNING,
                (
                    id.as_str(),
                    "acme/widgets",
                    1104_i64,
                    "alice",
                    "fixer",
                    "claude_sdk",
                    "claude-opus",
                    "anthropic",
                    mysql_datetime(SystemClock.now()),
                    worker,
                ),
            )
            .await
            .expect("raw insert");
        connection
            .exec_drop(
                MYSQL_RAW_FINISH,
                (
                    mysql_datetime(SystemClock.now()),
                    1200_i64,
                    300_i64,
                    0.42_f64,
                    7_i64,
                    "[\"pr/17\"]",
                    id.as_str(),
                    worker,
                ),
            )
            .await
            .expect("raw update");
    });
}

/// MySQL/MariaDB: the crate beside the same two statements through the
/// same driver stack, all in one fresh database on the
/// `TASKTRAIL_TEST_MYSQL_URL` server (skipped, visibly, without it).
#[cfg(feature = "mysql")]
fn mysql_lifecycle(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use diesel_async::AsyncConnection;
    let Some(database) = ScratchMysqlDatabase::create() else {
        return;
    };
    let store = MysqlStorage::open(database.url()).expect("open");
    let store_worker = worker(&store);
    group.bench_function("mysql/tasktrail", |b| {
        b.iter(|| one_lifecycle(&store_worker, &store))
    });
    let raw_worker = worker(&store).id().to_string();
    store
        .with_connection(|connection| {
            group.bench_function("mysql/raw_sql_baseline", |b| {
                b.iter(|| raw_mysql_lifecycle(connection, &raw_worker))
            });
        })
        .expect("connection");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let unwrapped_worker = worker(&store).id().to_string();
    let mut unwrapped = runtime
        .block_on(diesel_async::AsyncMysqlConnection::establish(
            database.url(),
        ))
        .expect("diesel-async connection");
    group.bench_function("mysql/raw_sql_baseline_without_wrapper", |b| {
        b.iter(|| raw_mysql_lifecycle_without_wrapper(&runtime, &mut unwrapped, &unwrapped_worker))
    });
    let prepared_worker = worker(&store).id().to_string();
    let mut prepared = runtime
        .block_on(mysql_async::Conn::from_url(database.url()))
        .expect("mysql_async connection");
    group.bench_function("mysql/raw_prepared_baseline", |b| {
        b.iter(|| raw_prepared_mysql_lifecycle(&runtime, &mut prepared, &prepared_worker))
    });
    runtime.block_on(async {
        drop(unwrapped);
        prepared.disconnect().await.expect("disconnect");
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(5));
    targets = lifecycle
}
criterion_main!(benches);
