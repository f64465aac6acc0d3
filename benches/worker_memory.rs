//! Memory of a worker with 1,000 tasks in flight: the **peak** of what the
//! process allocates while it starts 1,000 tasks (each holding its
//! `Task<Running>` and a recorded session), next to a baseline that inserts
//! the same 1,000 rows with raw SQL and holds only their ids. Peak = the
//! high-water mark of Rust's heap (a counting allocator) plus SQLite's own
//! allocator high-water mark (page cache, statements), both reset before
//! each phase; resident memory before and after is printed too. Also times
//! both with criterion.
//!
//! Run: `cargo bench --bench worker_memory`. Results: docs/performance.md.

// A global allocator and SQLite's memory counters need `unsafe`; this file
// is a measurement harness, not library code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use diesel::RunQueryDsl;
use tasktrail::*;

/// Counts the bytes Rust code holds, and their high-water mark.
struct CountingAllocator;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = HELD.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Starts a phase: both high-water marks restart from what is held now.
fn reset_peaks() -> (usize, i64) {
    let held = HELD.load(Ordering::Relaxed);
    PEAK.store(held, Ordering::Relaxed);
    // SAFETY: plain FFI calls into the bundled SQLite; `1` resets the mark.
    let sqlite_held = unsafe {
        libsqlite3_sys::sqlite3_memory_highwater(1);
        libsqlite3_sys::sqlite3_memory_used()
    };
    (held, sqlite_held)
}

/// Bytes the phase added at its peak: Rust heap + SQLite's allocator.
fn peak_since((held, sqlite_held): (usize, i64)) -> (usize, usize) {
    let rust = PEAK.load(Ordering::Relaxed).saturating_sub(held);
    // SAFETY: as above; `0` reads without resetting.
    let sqlite_peak = unsafe { libsqlite3_sys::sqlite3_memory_highwater(0) };
    let sqlite = usize::try_from(sqlite_peak.saturating_sub(sqlite_held)).unwrap_or(0);
    (rust, sqlite)
}

const IN_FLIGHT: usize = 1_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn spec(i: usize) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: i as i64 + 1,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn store(dir: &std::path::Path, name: &str) -> (SqliteStorage, RegisteredWorker) {
    let store = SqliteStorage::open_with(
        dir.join(name),
        SqliteOptions {
            durability: SqliteDurability::Normal,
            ..SqliteOptions::default()
        },
    )
    .expect("open");
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
    (store, worker)
}

fn start_in_flight(store: &SqliteStorage, worker: &RegisteredWorker) -> Vec<Task<Running>> {
    (0..IN_FLIGHT)
        .map(|i| {
            let running = Task::queue(spec(i)).start(worker, store).expect("start");
            running
                .record_session(
                    SessionId::parse(&format!("sess_{}", running.id())).expect("id"),
                    store,
                )
                .expect("session");
            running
        })
        .collect()
}

fn raw_in_flight(store: &SqliteStorage, worker: WorkerId) -> Vec<String> {
    store.with_connection(|c| {
        (0..IN_FLIGHT)
            .map(|i| {
                let id = TaskId::new_time_ordered().to_string();
                diesel::sql_query(
                    "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, worker_id) \
                     VALUES (?, 'acme/widgets', ?, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'running', '2026-05-11T14:00:00.000000Z', ?)",
                )
                .bind::<diesel::sql_types::Text, _>(&id)
                .bind::<diesel::sql_types::BigInt, _>(i as i64 + 1)
                .bind::<diesel::sql_types::Text, _>(worker.to_string())
                .execute(c)
                .expect("raw insert");
                id
            })
            .collect()
    })
}

fn report_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raw_store, raw_worker) = store(dir.path(), "raw.db");
    let before = resident_bytes();
    let marks = reset_peaks();
    let ids = raw_in_flight(&raw_store, raw_worker.id());
    let (raw_rust, raw_sqlite) = peak_since(marks);
    let raw_delta = resident_bytes().saturating_sub(before);
    drop(ids);

    let (crate_store, worker) = store(dir.path(), "crate.db");
    let before = resident_bytes();
    let marks = reset_peaks();
    let tasks = start_in_flight(&crate_store, &worker);
    let (crate_rust, crate_sqlite) = peak_since(marks);
    let crate_delta = resident_bytes().saturating_sub(before);
    let held = tasks.len() * std::mem::size_of::<Task<Running>>();
    eprintln!(
        "worker_memory: {IN_FLIGHT} in flight: tasktrail peak +{} KiB (Rust heap {} KiB, SQLite {} KiB; Task<Running> values {} KiB inline), RSS +{} KiB; \
         raw SQL baseline peak +{} KiB (Rust heap {} KiB, SQLite {} KiB), RSS +{} KiB",
        (crate_rust + crate_sqlite) / 1024,
        crate_rust / 1024,
        crate_sqlite / 1024,
        held / 1024,
        crate_delta / 1024,
        (raw_rust + raw_sqlite) / 1024,
        raw_rust / 1024,
        raw_sqlite / 1024,
        raw_delta / 1024
    );
    drop(tasks);
}

fn worker_memory(c: &mut Criterion) {
    report_memory();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("in_flight_1000");
    group.sample_size(10);
    let (crate_store, worker) = store(dir.path(), "crate.db");
    group.bench_function("tasktrail_start_and_record_session", |b| {
        b.iter_batched(
            || (),
            |()| start_in_flight(&crate_store, &worker),
            BatchSize::PerIteration,
        )
    });
    let (raw_store, raw_worker) = store(dir.path(), "raw.db");
    group.bench_function("raw_sql_insert_baseline", |b| {
        b.iter_batched(
            || (),
            |()| raw_in_flight(&raw_store, raw_worker.id()),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, worker_memory);
criterion_main!(benches);
