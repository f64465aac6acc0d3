//! The boot-time recovery sweep (session invalidation and hint building
//! included), next to a raw single UPDATE of the same rows in the same run;
//! and the sweep's cost with 10 orphans in a small and a large history.
//!
//! Each iteration's setup (not measured) puts the orphans back: it marks the
//! same rows `running` again under a fresh dead worker and re-validates their
//! sessions, so no file is copied and the history stays the same size.
//!
//! Run: `cargo bench --bench recovery`. Results: docs/performance.md.
//! `TASKTRAIL_BENCH_LARGE=1` adds 100k orphans and 10 orphans among 1M rows.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use diesel::connection::SimpleConnection;
use diesel::RunQueryDsl;
use tasktrail::backend::*;
use tasktrail::*;

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

/// A time-ordered (v7) task id as SQL, for row `i` of a seed started at
/// `base_ms`: the ids the crate writes ([`TaskId::new_time_ordered`]), so
/// the seeded history sits on disk as a real one does.
fn v7_id_expr(base_ms: u64) -> String {
    format!(
        "printf('%08x-%04x', ({base_ms} + i) >> 16, ({base_ms} + i) & 65535) || '-7' || substr(lower(hex(randomblob(2))), 2) || '-a' || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
    )
}

fn open(path: &Path) -> SqliteStorage {
    SqliteStorage::open_with(
        path,
        SqliteOptions {
            durability: SqliteDurability::Normal,
            ..SqliteOptions::default()
        },
    )
    .expect("open")
}

/// `finished` finished rows and `orphans` orphan rows, each orphan with a
/// session; the orphans' issue numbers are negative-free but marked by
/// repo `acme/orphans` so setup can find them again.
fn seeded(dir: &Path, finished: u64, orphans: u64) -> SqliteStorage {
    let store = open(&dir.join(format!("seed-{finished}-{orphans}.db")));
    // 2026-05-10T00:00Z and 2026-05-11T15:00Z, one millisecond per row.
    let finished_id = v7_id_expr(1_778_371_200_000);
    let orphan_id = v7_id_expr(1_778_511_600_000);
    store
        .with_connection(|c| {
            c.batch_execute(&format!(
                "BEGIN;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {finished})
                 INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, finished_at, worker_id)
                 SELECT {finished_id}, 'acme/widgets', i, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success',
                        '2026-05-10T00:00:00.000000Z', '2026-05-10T00:01:00.000000Z', 'finished-worker' FROM n WHERE {finished} > 0;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {orphans})
                 INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, interrupted_at, worker_id)
                 SELECT {orphan_id}, 'acme/orphans', i, 'bob', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted',
                        '2026-05-11T15:00:00.000000Z', '2026-05-11T15:30:00.000000Z', 'placeholder' FROM n WHERE {orphans} > 0;
                 INSERT INTO claude_sdk_sessions (session_id, task_id, repo, issue_number, agent, created_at)
                 SELECT 'sess_' || id, id, repo, issue_number, agent, started_at FROM task_history WHERE repo = 'acme/orphans';
                 COMMIT;"
            ))
        })
        .expect("seed");
    store
}

/// Makes the orphans orphans again: `running` under a fresh, dead worker,
/// sessions valid. Not measured.
fn reset_orphans(store: &SqliteStorage) {
    let dead = WorkerId::new_random();
    store
        .with_connection(|c| {
            c.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state)
                 VALUES ('{dead}', 'bench', 1, 'gone', '2026-05-11T14:00:00.000000Z', '2026-05-11T14:00:00.000000Z', 'alive');
                 UPDATE task_history SET status = 'running', interrupted_at = NULL, interrupt_reason = NULL, interrupted_by = NULL, worker_id = '{dead}'
                 WHERE repo = 'acme/orphans';
                 UPDATE claude_sdk_sessions SET invalidated_at = NULL, invalidation_reason = NULL WHERE repo = 'acme/orphans';
                 COMMIT;"
            ))
        })
        .expect("reset");
}

fn sweep(store: &SqliteStorage) -> usize {
    let now = SystemClock.now();
    // The orphans' owner registered without a lock or host identity (raw
    // SQL): the lease decides, and its heartbeat is long past it.
    let policy = LivenessPolicy::new(None);
    let recovered = store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: WorkerId::new_random(),
                now,
                mode: SweepMode::Apply,
            },
            &PolicyJudge {
                policy: &policy,
                probe: &NoProcesses,
            },
        )
        .expect("sweep");
    let hints: usize = recovered.iter().map(|task| task.hint().len()).sum();
    black_box(hints);
    recovered.len()
}

/// The floor: one UPDATE of the same rows, nothing else.
fn raw_update(store: &SqliteStorage) -> usize {
    store.with_connection(|c| {
        diesel::sql_query(
            "UPDATE task_history SET status = 'interrupted', interrupted_at = '2026-05-11T16:00:00.000000Z' WHERE status = 'running'",
        )
        .execute(c)
        .expect("raw update")
    })
}

/// The floor of what the sweep must write: the sessions' UPDATE and the
/// rows' UPDATE, two statements, nothing read back.
fn raw_update_with_sessions(store: &SqliteStorage) -> usize {
    store.with_connection(|c| {
        diesel::sql_query(
            "UPDATE claude_sdk_sessions SET invalidated_at = '2026-05-11T16:00:00.000000Z', invalidation_reason = 'recovered' \
             WHERE invalidated_at IS NULL AND task_id IN (SELECT id FROM task_history WHERE status = 'running')",
        )
        .execute(c)
        .expect("raw sessions update");
        diesel::sql_query(
            "UPDATE task_history SET status = 'interrupted', interrupted_at = '2026-05-11T16:00:00.000000Z' WHERE status = 'running'",
        )
        .execute(c)
        .expect("raw update")
    })
}

fn recovery(c: &mut Criterion) {
    let large = std::env::var_os("TASKTRAIL_BENCH_LARGE").is_some();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);

    let mut orphan_counts = vec![1_000u64, 10_000];
    if large {
        orphan_counts.push(100_000);
    }
    for orphans in orphan_counts {
        let store = seeded(dir.path(), 0, orphans);
        group.bench_function(BenchmarkId::new("sweep_orphans/tasktrail", orphans), |b| {
            b.iter_batched(
                || reset_orphans(&store),
                |()| assert_eq!(sweep(&store) as u64, orphans),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(
            BenchmarkId::new("sweep_orphans/raw_rows_and_sessions_update", orphans),
            |b| {
                b.iter_batched(
                    || reset_orphans(&store),
                    |()| assert_eq!(raw_update_with_sessions(&store) as u64, orphans),
                    BatchSize::PerIteration,
                )
            },
        );
        group.bench_function(
            BenchmarkId::new("sweep_orphans/raw_single_update", orphans),
            |b| {
                b.iter_batched(
                    || reset_orphans(&store),
                    |()| assert_eq!(raw_update(&store) as u64, orphans),
                    BatchSize::PerIteration,
                )
            },
        );
    }

    let mut histories = vec![10_000u64, 100_000];
    if large {
        histories.push(1_000_000);
    }
    for finished in histories {
        let store = seeded(dir.path(), finished, 10);
        group.bench_function(
            BenchmarkId::new("ten_orphans_among_finished_rows", finished),
            |b| {
                b.iter_batched(
                    || reset_orphans(&store),
                    |()| assert_eq!(sweep(&store), 10),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
