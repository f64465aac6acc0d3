//! What a prune costs the workers that run meanwhile: the latency of a
//! task's start (its INSERT) with no prune running, beside the same while a
//! prune deletes 1M old rows in batches on another thread, same run, SQLite
//! and (with `TASKTRAIL_TEST_POSTGRES_URL`) Postgres. Criterion shows the
//! medians; each side also prints the worst start it saw. Rows:
//! `TASKTRAIL_BENCH_PRUNE_ROWS` (default 1,000,000). Figures in
//! docs/performance.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use diesel::connection::SimpleConnection;
use tasktrail::prelude::*;
use tasktrail::PruneRequest;

fn rows() -> u64 {
    std::env::var("TASKTRAIL_BENCH_PRUNE_ROWS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000)
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

/// Old finished rows, written in one statement.
const SQLITE_FILL: &str = "
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
    INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider,
        status, started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts)
    SELECT printf('00000000-0000-7000-8000-%012d', i), 'acme/widgets', 1 + i % 5000, 'alice',
        'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success',
        '2025-01-01T00:00:00.000000Z', '2025-01-01T00:10:00.000000Z', 1000, 200, 0.5, 3, '[]'
    FROM n;";

const POSTGRES_FILL: &str = r#"
    INSERT INTO task_history (id, repo, issue_number, "user", agent, agent_type, model, provider,
        status, started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts)
    SELECT ('00000000-0000-7000-8000-' || lpad(i::text, 12, '0'))::uuid, 'acme/widgets',
        1 + i % 5000, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success',
        '2025-01-01T00:00:00Z', '2025-01-01T00:10:00Z', 1000, 200, 0.5, 3, '[]'::jsonb
    FROM generate_series(0, {last}) AS i;"#;

/// A start's latency, measured on `worker`, `iterations` times; the worst
/// goes into `worst` (microseconds).
fn starts(worker: &Worker, iterations: u64, worst: &AtomicU64) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iterations {
        let begun = Instant::now();
        let running = worker.start(Task::queue(spec())).expect("start");
        let took = begun.elapsed();
        spent += took;
        worst.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        worker
            .finish(running, Outcome::Success(RunReport::empty()))
            .expect("finish")
            .written()
            .expect("written at once");
    }
    spent
}

fn measure(
    c: &mut Criterion,
    name: &str,
    storage: Arc<dyn Storage>,
    prune: impl Fn() + Send + 'static,
) {
    let mut group = c.benchmark_group(format!("start_latency_{name}"));
    group.measurement_time(Duration::from_secs(8));
    group.warm_up_time(Duration::from_secs(1));
    let worker = Worker::builder(storage).boot().expect("boot");
    let idle_worst = AtomicU64::new(0);
    group.bench_function("no_prune", |b| {
        b.iter_custom(|iterations| starts(&worker, iterations, &idle_worst))
    });
    let pruning = Arc::new(AtomicBool::new(true));
    let still_pruning = Arc::clone(&pruning);
    let began = Instant::now();
    let pruner = thread::spawn(move || {
        prune();
        still_pruning.store(false, Ordering::SeqCst);
    });
    let busy_worst = AtomicU64::new(0);
    let mut measured_while_pruning = true;
    group.bench_function("during_prune", |b| {
        b.iter_custom(|iterations| {
            measured_while_pruning &= pruning.load(Ordering::SeqCst);
            starts(&worker, iterations, &busy_worst)
        })
    });
    group.finish();
    eprintln!(
        "{name}: worst start {} µs with no prune, {} µs during the prune{}",
        idle_worst.load(Ordering::Relaxed),
        busy_worst.load(Ordering::Relaxed),
        if measured_while_pruning {
            ""
        } else {
            " (the prune ended before the measurement did: raise TASKTRAIL_BENCH_PRUNE_ROWS)"
        }
    );
    pruner.join().expect("pruner");
    eprintln!("{name}: the prune took {:?}", began.elapsed());
    worker.stop().expect("stop");
}

fn request() -> PruneRequest {
    PruneRequest {
        cut_off: chrono::Utc::now() - chrono::Duration::days(30),
        statuses: Vec::new(),
        dry_run: false,
        batch_size: 500,
    }
}

fn prune_while_starting(c: &mut Criterion) {
    let last = rows().saturating_sub(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trail.db");
    let store = SqliteStorage::open(&path).expect("open");
    store.with_connection(|connection| {
        connection
            .batch_execute(&SQLITE_FILL.replace("{last}", &last.to_string()))
            .expect("fill")
    });
    let pruner = SqliteStorage::open(&path).expect("open");
    measure(c, "sqlite", Arc::new(store), move || {
        pruner.prune(&request()).expect("prune");
    });

    #[cfg(feature = "postgres")]
    if let Some(database) = tasktrail_diesel::ScratchDatabase::create() {
        let store = Arc::new(PostgresStorage::open(database.url()).expect("open"));
        store
            .with_connection(|connection| {
                connection
                    .batch_execute(&POSTGRES_FILL.replace("{last}", &last.to_string()))
                    .expect("fill")
            })
            .expect("connection");
        let pruner = Arc::clone(&store);
        measure(c, "postgres", store, move || {
            pruner.prune(&request()).expect("prune");
        });
        drop(database);
    }
}

criterion_group!(benches, prune_while_starting);
criterion_main!(benches);
