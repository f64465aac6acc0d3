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
//!
//! MySQL/MariaDB (feature `mysql`): the sweep of 100,000 orphans
//! (`TASKTRAIL_BENCH_SWEEP_ORPHANS`) beside the writes every orphan requires
//! done by hand, when `TASKTRAIL_TEST_MYSQL_URL` names a server:
//! `cargo bench --features mysql --bench recovery -- mysql`.

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

#[cfg(feature = "mysql")]
mod mysql {
    //! The sweep on MySQL/MariaDB: one dead owner with every orphan, each
    //! orphan with a session, in a fresh database on the
    //! `TASKTRAIL_TEST_MYSQL_URL` server. Setup (not measured) puts the
    //! orphans back each time.

    use std::time::Duration;

    use criterion::{BatchSize, Criterion, SamplingMode};
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, RunQueryDsl};
    use tasktrail::backend::*;
    use tasktrail::*;
    use tasktrail_diesel::{MysqlStorage, ScratchMysqlDatabase};

    use super::NoProcesses;

    const DEAD_WORKER: &str = "00000000-0000-7000-8000-00000000dead";
    const JUDGE: &str = "00000000-0000-7000-8000-0000000000aa";

    fn orphans() -> u64 {
        std::env::var("TASKTRAIL_BENCH_SWEEP_ORPHANS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100_000)
    }

    /// The numbers 1..=`n` (up to 1,000,000) as a derived table `n(i)`:
    /// MySQL 8 has no sequence engine and caps recursive CTEs at 1,000
    /// rows by default, so six digits cross-joined.
    fn numbers_up_to(n: u64) -> String {
        let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                      UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
        format!(
            "(SELECT i FROM (SELECT d0.d + 10 * d1.d + 100 * d2.d + 1000 * d3.d + 10000 * d4.d + 100000 * d5.d + 1 AS i \
               FROM {digits} AS d0, {digits} AS d1, {digits} AS d2, {digits} AS d3, {digits} AS d4, {digits} AS d5) AS all_numbers \
             WHERE i <= {n}) AS n"
        )
    }

    /// `orphans` running rows of one dead owner (time-ordered v7 ids and
    /// start times, as the crate writes them), a session each, and the
    /// judge that sweeps them.
    fn seed(store: &MysqlStorage, orphans: u64) {
        // 2026-05-11T15:00Z, one millisecond per row.
        let base_ms: u64 = 1_778_511_600_000;
        let numbers = numbers_up_to(orphans);
        store
            .with_connection(|connection| {
                connection.batch_execute(&format!(
                    "INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state) \
                       VALUES ('{DEAD_WORKER}', 'gone', 1, 'boot:1', UTC_TIMESTAMP(6) - INTERVAL 3 HOUR, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, 'alive'), \
                              ('{JUDGE}', 'judge', 2, 'boot:2', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 DAY, 'alive'); \
                     INSERT INTO task_history (id, repo, issue_number, `user`, agent, agent_type, model, provider, status, started_at, worker_id) \
                       SELECT CONCAT(SUBSTR(t.hex, 1, 8), '-', SUBSTR(t.hex, 9, 4), '-7', SUBSTR(t.random, 1, 3), \
                                     '-a', SUBSTR(t.random, 4, 3), '-', SUBSTR(t.random, 7, 12)), \
                              'acme/widgets', t.i, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'running', \
                              UTC_TIMESTAMP(6) - INTERVAL 2 HOUR + INTERVAL t.i * 1000 MICROSECOND, '{DEAD_WORKER}' \
                       FROM (SELECT n.i, LOWER(LPAD(HEX({base_ms} + n.i), 12, '0')) AS hex, MD5(n.i) AS random FROM {numbers}) AS t \
                       ORDER BY t.i; \
                     INSERT INTO claude_sdk_sessions (session_id, task_id, repo, issue_number, agent, created_at) \
                       SELECT CONCAT('sess_', id), id, repo, issue_number, agent, started_at FROM task_history \
                       WHERE worker_id = '{DEAD_WORKER}'; \
                     ANALYZE TABLE task_history, claude_sdk_sessions, workers;"
                ))
            })
            .expect("a connection")
            .expect("seed");
    }

    /// Makes the orphans orphans again: `running`, sessions valid, no
    /// reports, their owner `alive` but silent for an hour. Not measured.
    fn reset(store: &MysqlStorage) {
        store
            .with_connection(|connection| {
                connection.batch_execute(&format!(
                    "DELETE FROM recovery_reports; \
                     UPDATE task_history SET status = 'running', interrupted_at = NULL, interrupt_reason = NULL, interrupted_by = NULL \
                       WHERE worker_id = '{DEAD_WORKER}'; \
                     UPDATE claude_sdk_sessions SET invalidated_at = NULL, invalidation_reason = NULL WHERE invalidated_at IS NOT NULL; \
                     UPDATE workers SET state = 'alive', stopped_at = NULL, heartbeat_at = UTC_TIMESTAMP(6) - INTERVAL 1 HOUR \
                       WHERE id = '{DEAD_WORKER}'; \
                     UPDATE workers SET heartbeat_at = UTC_TIMESTAMP(6) + INTERVAL 1 DAY WHERE id = '{JUDGE}';"
                ))
            })
            .expect("a connection")
            .expect("reset");
    }

    fn sweep(store: &MysqlStorage) -> usize {
        // The owner registered without a lock or host identity (raw SQL):
        // the lease decides, and its heartbeat is an hour past it.
        let policy = LivenessPolicy::new(None);
        let recovered = store
            .recover_orphans(
                &RecoveryRequest {
                    recovering_worker: JUDGE.parse().expect("id"),
                    now: SystemClock.now(),
                    mode: SweepMode::Apply,
                },
                &PolicyJudge {
                    policy: &policy,
                    probe: &NoProcesses,
                },
            )
            .expect("sweep");
        let hints: usize = recovered.iter().map(|task| task.hint().len()).sum();
        std::hint::black_box(hints);
        recovered.len()
    }

    /// The rows' UPDATE, as the SQLite floor's last statement.
    fn rows_update(connection: &mut tasktrail_diesel::MysqlConnection) -> usize {
        diesel::sql_query(format!(
            "UPDATE task_history SET status = 'interrupted', interrupted_at = UTC_TIMESTAMP(6), \
               interrupt_reason = 'recovered', interrupted_by = '{JUDGE}' \
             WHERE status = 'running' AND worker_id = '{DEAD_WORKER}'"
        ))
        .execute(connection)
        .expect("raw rows update")
    }

    /// The sessions' UPDATE.
    fn sessions_update(connection: &mut tasktrail_diesel::MysqlConnection) -> usize {
        diesel::sql_query(format!(
            "UPDATE claude_sdk_sessions AS s JOIN task_history AS t ON t.id = s.task_id \
               SET s.invalidated_at = UTC_TIMESTAMP(6), s.invalidation_reason = 'recovered' \
             WHERE t.status = 'running' AND t.worker_id = '{DEAD_WORKER}' AND s.invalidated_at IS NULL"
        ))
        .execute(connection)
        .expect("raw sessions update")
    }

    /// The reports' INSERT: the report each orphan owes.
    fn reports_insert(connection: &mut tasktrail_diesel::MysqlConnection) -> usize {
        diesel::sql_query(format!(
            "INSERT INTO recovery_reports (task_id, cause_kind, cause_host, cause_pid, cause_last_heartbeat, \
               cause_lease_ms, sessions_invalidated, owed_by, owed_since) \
             SELECT id, 'lease_expired', 'gone', 1, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, 30000, 1, '{JUDGE}', UTC_TIMESTAMP(6) \
             FROM task_history WHERE status = 'running' AND worker_id = '{DEAD_WORKER}'"
        ))
        .execute(connection)
        .expect("raw reports insert")
    }

    /// The sessions' UPDATE, the reports' INSERT if `with_reports`, and the
    /// rows' UPDATE, by hand, in one transaction, reading nothing back.
    fn raw_writes_in_one_transaction(store: &MysqlStorage, with_reports: bool) -> usize {
        store
            .with_connection(|connection| {
                connection.transaction(|connection| {
                    sessions_update(connection);
                    if with_reports {
                        reports_insert(connection);
                    }
                    diesel::QueryResult::Ok(rows_update(connection))
                })
            })
            .expect("a connection")
            .expect("raw transaction")
    }

    /// The floor: only the writes every orphan requires (its session
    /// invalidated, its report owed, the row interrupted), set-wise.
    fn raw_mandatory_writes(store: &MysqlStorage) -> usize {
        raw_writes_in_one_transaction(store, true)
    }

    /// The SQLite table's floor: the sessions' and the rows' UPDATE (no
    /// reports).
    fn raw_rows_and_sessions_update(store: &MysqlStorage) -> usize {
        raw_writes_in_one_transaction(store, false)
    }

    /// One UPDATE of the rows, nothing else.
    fn raw_single_update(store: &MysqlStorage) -> usize {
        store.with_connection(rows_update).expect("a connection")
    }

    /// One measured thing: what it changes, given the orphans, and how
    /// many rows it interrupted.
    type Variant = fn(&MysqlStorage) -> usize;

    pub(super) fn recovery(c: &mut Criterion) {
        let Some(database) = ScratchMysqlDatabase::create() else {
            return;
        };
        let orphans = orphans();
        let store = MysqlStorage::open(database.url()).expect("open");
        seed(&store, orphans);
        let mut group = c.benchmark_group(format!("mysql_sweep_{orphans}_orphans"));
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(20));
        let variants: [(&str, Variant); 4] = [
            ("tasktrail", sweep),
            ("raw_mandatory_writes", raw_mandatory_writes),
            ("raw_rows_and_sessions_update", raw_rows_and_sessions_update),
            ("raw_single_update", raw_single_update),
        ];
        for (name, run) in variants {
            group.bench_function(name, |b| {
                b.iter_batched(
                    || reset(&store),
                    |()| assert_eq!(run(&store) as u64, orphans),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

#[cfg(feature = "mysql")]
criterion_group!(benches, recovery, mysql::recovery);
#[cfg(not(feature = "mysql"))]
criterion_group!(benches, recovery);
criterion_main!(benches);
