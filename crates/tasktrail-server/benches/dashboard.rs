//! What the dashboard's task list costs on a large table: `GET /` as served
//! (a page of rows, the status counts from the warm snapshot, the HTML)
//! beside the same query through the JSON API (`GET /tasks?limit=50`), in
//! the same run, over 1,000,000 rows on SQLite and (with the `postgres`
//! feature and `TASKTRAIL_TEST_POSTGRES_URL`) Postgres; unfiltered and
//! filtered by a status and by a repo. Both go through the server's router
//! in process (no socket), so the difference is the page's own work. The
//! snapshot's max age is longer than the run, so no refresh lands inside a
//! page's measurement; the refresh itself (`count_tasks_by_status`, the
//! work moved off the request path onto the blocking pool) has its own
//! lines, `background_count_*`. The rows are seeded with one
//! `INSERT ... SELECT` (a recursive CTE on SQLite, `generate_series` on
//! Postgres). `TASKTRAIL_BENCH_DASHBOARD_ROWS` changes the row count.
//! Figures in docs/performance.md.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use diesel::connection::SimpleConnection;
use tasktrail::async_worker::AsyncWorker;
use tasktrail::prelude::*;
use tasktrail_server::agent::SimulatedAgent;
use tasktrail_server::{router, ui, Dispatcher};
use tower::ServiceExt;
use ui::DashboardOptions;

fn rows() -> u64 {
    std::env::var("TASKTRAIL_BENCH_DASHBOARD_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// Final rows only (no sweep has anything to do at boot): 70% success,
/// 10% each failure, cancelled and interrupted (with a sweep's reason),
/// one a second going back from now, over 20 repos.
fn sqlite_seed(rows: u64) -> String {
    format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
         INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, \
                                   status, started_at, finished_at, interrupted_at, interrupt_reason) \
         SELECT printf('%08x-0000-7000-8000-%012x', i, i), 'acme/repo' || (i % 20), i, 'alice', \
                'fixer', 'claude_sdk', 'claude-opus', 'anthropic', \
                CASE i % 10 WHEN 0 THEN 'failure' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'interrupted' \
                            ELSE 'success' END, \
                strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || i || ' seconds') || '.000000Z', \
                CASE WHEN i % 10 = 2 THEN NULL \
                     ELSE strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || (i - 30) || ' seconds') || '.000000Z' END, \
                CASE WHEN i % 10 = 2 \
                     THEN strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || (i - 30) || ' seconds') || '.000000Z' END, \
                CASE WHEN i % 10 = 2 THEN 'recovered at boot: process 1 on gone is gone' END \
         FROM n; \
         ANALYZE;"
    )
}

#[cfg(feature = "postgres")]
fn postgres_seed(rows: u64) -> String {
    format!(
        "INSERT INTO task_history (id, repo, issue_number, \"user\", agent, agent_type, model, provider, \
                                   status, started_at, finished_at, interrupted_at, interrupt_reason) \
         SELECT uuid_in(overlay(overlay(md5(i::text) placing '7' from 13) placing '8' from 17)::cstring), \
                'acme/repo' || (i % 20), i, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', \
                CASE i % 10 WHEN 0 THEN 'failure' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'interrupted' \
                            ELSE 'success' END, \
                now() - i * interval '1 second', \
                CASE WHEN i % 10 = 2 THEN NULL ELSE now() - (i - 30) * interval '1 second' END, \
                CASE WHEN i % 10 = 2 THEN now() - (i - 30) * interval '1 second' END, \
                CASE WHEN i % 10 = 2 THEN 'recovered at boot: process 1 on gone is gone' END \
         FROM generate_series(1, {rows}) AS i"
    )
}

struct Backend {
    name: &'static str,
    storage: Arc<dyn Storage>,
    /// Keeps the SQLite file's directory or the scratch Postgres database
    /// until the bench ends (then removes it).
    _keep: Option<Box<dyn std::any::Any>>,
}

fn backends(rows: u64) -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStorage::open(dir.path().join("trail.db")).expect("open");
    sqlite
        .with_connection(|connection| connection.batch_execute(&sqlite_seed(rows)).expect("seed"));
    let mut backends = vec![Backend {
        name: "sqlite",
        storage: Arc::new(sqlite),
        _keep: Some(Box::new(dir)),
    }];
    #[cfg(feature = "postgres")]
    if std::env::var_os(tasktrail_diesel::TEST_POSTGRES_URL_VARIABLE).is_some() {
        let database = tasktrail_diesel::ScratchDatabase::create().expect("scratch");
        let store = tasktrail::PostgresStorage::open(database.url()).expect("open");
        store
            .with_connection(|connection| {
                connection.batch_execute(&postgres_seed(rows))?;
                // Its own statement: VACUUM cannot run in a transaction. It
                // sets the visibility map, so counts can be index-only scans.
                connection.batch_execute("VACUUM ANALYZE task_history")
            })
            .expect("a connection")
            .expect("seed");
        backends.push(Backend {
            name: "postgres",
            storage: Arc::new(store),
            _keep: Some(Box::new(database)),
        });
    }
    backends
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One GET through the router; the whole body read. Panics unless `200`.
async fn get(app: &Router, uri: &str) -> usize {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .len()
}

fn dashboard(c: &mut Criterion) {
    let rows = rows();
    let runtime = runtime();
    for backend in backends(rows) {
        let worker = runtime
            .block_on(AsyncWorker::boot(Worker::builder(Arc::clone(
                &backend.storage,
            ))))
            .expect("boot");
        let dispatcher = Dispatcher::new(worker.clone(), Arc::new(SimulatedAgent));
        let app = router(Arc::clone(&dispatcher)).merge(ui::router_with(
            dispatcher,
            DashboardOptions {
                counts_max_age: Duration::from_secs(3_600),
                ..DashboardOptions::default()
            },
        ));
        // The page really shows the counts of every row.
        let counts = backend.storage.count_tasks_by_status(None).expect("counts");
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), rows);

        let mut group =
            c.benchmark_group(format!("dashboard_task_list/{}/{rows}_rows", backend.name));
        group.sample_size(30);
        group.measurement_time(Duration::from_secs(4));
        group.warm_up_time(Duration::from_secs(1));
        for (name, uri) in [
            ("api_newest_50", "/tasks?limit=50".to_owned()),
            ("page_newest_50_with_counts", "/".to_owned()),
            (
                "api_interrupted_50",
                "/tasks?status=interrupted&limit=50".to_owned(),
            ),
            (
                "page_interrupted_50_with_counts",
                "/?status=interrupted".to_owned(),
            ),
            ("api_repo_50", "/tasks?repo=acme/repo7&limit=50".to_owned()),
            ("page_repo_50_with_counts", "/?repo=acme/repo7".to_owned()),
        ] {
            // Warm: the first view of a key waits for its count.
            runtime.block_on(get(&app, &uri));
            group.bench_function(name, |b| b.iter(|| runtime.block_on(get(&app, &uri))));
        }
        group.finish();
        // What a refresh costs, off the request path: once per max age and
        // key, not once per view.
        let mut group = c.benchmark_group(format!(
            "dashboard_counts_refresh/{}/{rows}_rows",
            backend.name
        ));
        group.sample_size(10);
        group.sampling_mode(criterion::SamplingMode::Flat);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(4));
        for (name, repo) in [
            ("background_count_all", None),
            ("background_count_repo", Some("acme/repo7")),
        ] {
            group.bench_function(name, |b| {
                b.iter(|| backend.storage.count_tasks_by_status(repo).expect("count"))
            });
        }
        group.finish();
        runtime.block_on(worker.stop()).expect("stop");
    }
}

criterion_group!(benches, dashboard);
criterion_main!(benches);
