//! Lifecycle throughput with 1, 2, 4 and 8 workers on one SQLite file, each
//! worker a thread with its own connection (as separate worker processes
//! would have), all writing the same `task_history`.
//!
//! Run: `cargo bench --bench concurrency`. Results: docs/performance.md.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tasktrail::*;
#[cfg(feature = "postgres")]
use tasktrail_diesel::ScratchDatabase;

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

struct Worker<S> {
    store: S,
    worker: RegisteredWorker,
}

fn sqlite_worker(path: &Path, durability: SqliteDurability) -> Worker<SqliteStorage> {
    let store = SqliteStorage::open_with(
        path,
        SqliteOptions {
            durability,
            ..SqliteOptions::default()
        },
    )
    .expect("open");
    worker(store)
}

fn worker<S: Storage>(store: S) -> Worker<S> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let worker = RegisteredWorker::register(
        &store,
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
    .expect("register");
    Worker { store, worker }
}

/// Runs `total` lifecycles split across the workers; returns the wall time.
fn run<S: Storage + 'static>(workers: &[Arc<Worker<S>>], total: u64) -> Duration {
    let per_worker = total.div_ceil(workers.len() as u64);
    let barrier = Arc::new(Barrier::new(workers.len() + 1));
    let threads: Vec<_> = workers
        .iter()
        .map(|w| {
            let w = Arc::clone(w);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_worker {
                    let running = Task::queue(spec())
                        .start(&w.worker, &w.store)
                        .expect("start");
                    running
                        .finish(Outcome::Success(RunReport::empty()), &w.store)
                        .expect("finish");
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for thread in threads {
        thread.join().expect("worker thread");
    }
    started.elapsed()
}

fn concurrency(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrency");
    group.sample_size(10);
    for durability in [SqliteDurability::Normal, SqliteDurability::Full] {
        for count in [1usize, 2, 4, 8] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("shared.db");
            let workers: Vec<Arc<Worker<SqliteStorage>>> = (0..count)
                .map(|_| Arc::new(sqlite_worker(&path, durability)))
                .collect();
            group.throughput(Throughput::Elements(1));
            group.bench_function(
                BenchmarkId::new(format!("sqlite/{durability:?}"), count),
                |b| b.iter_custom(|iters| run(&workers, iters)),
            );
        }
    }
    #[cfg(feature = "postgres")]
    if let Some(database) = ScratchDatabase::create() {
        for count in [1usize, 2, 4, 8] {
            let workers: Vec<Arc<Worker<PostgresStorage>>> = (0..count)
                .map(|_| Arc::new(worker(PostgresStorage::open(database.url()).expect("open"))))
                .collect();
            group.bench_function(BenchmarkId::new("postgres", count), |b| {
                b.iter_custom(|iters| run(&workers, iters))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, concurrency);
criterion_main!(benches);
