//! The boot-time recovery sweep (session invalidation and hint building
//! included), next to a raw single UPDATE of the same rows in the same run,
//! and the sweep's cost with few orphans in a small and a large history.
//!
//! Run: `cargo bench --bench recovery`. Results: docs/performance.md.

use std::hint::black_box;
use std::sync::Arc;

use chrono::Duration;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use diesel::connection::SimpleConnection;
use tasktrail::*;

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

/// A database with `finished` finished rows and `orphans` running rows of one
/// dead worker (each with a session), built with one SQL script per table.
fn seeded_database(dir: &std::path::Path, finished: usize, orphans: usize) -> std::path::PathBuf {
    let path = dir.join(format!("seed-{finished}-{orphans}.db"));
    let store = SqliteStorage::open_with(
        &path,
        SqliteOptions {
            durability: SqliteDurability::Normal,
            ..SqliteOptions::default()
        },
    )
    .expect("open");
    let dead = WorkerId::new_random();
    store
        .with_connection(|c| {
            c.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state)
                 VALUES ('{dead}', 'bench', 1, 'gone', '2026-05-11T14:00:00.000000Z', '2026-05-11T14:00:00.000000Z', 'alive');
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {finished})
                 INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, finished_at, worker_id)
                 SELECT lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2) || '-a' || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
                        'acme/widgets', i, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success',
                        '2026-05-10T00:00:00.000000Z', '2026-05-10T00:01:00.000000Z', '{dead}' FROM n WHERE {finished} > 0;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {orphans})
                 INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, worker_id)
                 SELECT lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2) || '-a' || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
                        'acme/gears', i, 'bob', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'running',
                        '2026-05-11T15:00:00.000000Z', '{dead}' FROM n WHERE {orphans} > 0;
                 INSERT INTO claude_sdk_sessions (session_id, task_id, repo, issue_number, agent, created_at)
                 SELECT 'sess_' || id, id, repo, issue_number, agent, started_at FROM task_history WHERE status = 'running';
                 COMMIT;"
            ))
        })
        .expect("seed");
    path
}

fn copy_of(path: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let copy = dir.join(format!("run-{}.db", TaskId::new_random()));
    std::fs::copy(path, &copy).expect("copy");
    copy
}

fn sweep(path: &std::path::Path) -> usize {
    let store = SqliteStorage::open_with(
        path,
        SqliteOptions {
            durability: SqliteDurability::Normal,
            ..SqliteOptions::default()
        },
    )
    .expect("open");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let policy = LivenessPolicy::for_host("bench");
    let recovered = store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: WorkerId::new_random(),
                now: clock.now(),
                mode: SweepMode::Apply,
            },
            &PolicyJudge {
                policy: &policy,
                probe: &NoProcesses,
                now: clock.now() + Duration::zero(),
            },
        )
        .expect("sweep");
    let hints: usize = recovered.iter().map(|task| task.hint().len()).sum();
    black_box(hints);
    recovered.len()
}

fn raw_update(path: &std::path::Path) -> usize {
    let store = SqliteStorage::open_with(
        path,
        SqliteOptions {
            durability: SqliteDurability::Normal,
            ..SqliteOptions::default()
        },
    )
    .expect("open");
    store.with_connection(|c| {
        use diesel::RunQueryDsl;
        diesel::sql_query(
            "UPDATE task_history SET status = 'interrupted', interrupted_at = '2026-05-11T16:00:00.000000Z' WHERE status = 'running'",
        )
        .execute(c)
        .expect("raw update")
    })
}

fn recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    for orphans in [1_000, 10_000] {
        let seed = seeded_database(dir.path(), 0, orphans);
        group.bench_function(BenchmarkId::new("sweep_orphans/tasktrail", orphans), |b| {
            b.iter_batched(
                || copy_of(&seed, dir.path()),
                |db| sweep(&db),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(
            BenchmarkId::new("sweep_orphans/raw_single_update", orphans),
            |b| {
                b.iter_batched(
                    || copy_of(&seed, dir.path()),
                    |db| raw_update(&db),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    for finished in [10_000, 100_000] {
        let seed = seeded_database(dir.path(), finished, 10);
        group.bench_function(
            BenchmarkId::new("ten_orphans_among_finished_rows", finished),
            |b| {
                b.iter_batched(
                    || copy_of(&seed, dir.path()),
                    |db| sweep(&db),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
