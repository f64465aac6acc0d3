//! The Postgres recovery sweep of many orphans (default 100,000;
//! `TASKTRAIL_BENCH_SWEEP_ORPHANS`) on a direct connection beside the same
//! sweep through PgBouncer in transaction mode, same run, same database:
//! runs when `TASKTRAIL_TEST_POSTGRES_URL` and `TASKTRAIL_BENCH_PGBOUNCER`
//! (`postgres://user@host:port` of a PgBouncer in front of the same server,
//! no database) are both set. Setup (not measured) puts the orphans back
//! each time. Figures in docs/performance.md.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use diesel::connection::SimpleConnection;
use tasktrail::backend::{PolicyJudge, RecoveryRequest, SweepMode};
use tasktrail::prelude::*;
use tasktrail::testing::ScratchDatabase;
use tasktrail::{Clock, LivenessPolicy, PostgresStorage, ProcessProbe, SystemClock};

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

const DEAD_WORKER: &str = "00000000-0000-7000-8000-00000000dead";
const JUDGE: &str = "00000000-0000-7000-8000-0000000000aa";

fn orphans() -> u64 {
    std::env::var("TASKTRAIL_BENCH_SWEEP_ORPHANS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

fn seed(store: &PostgresStorage, orphans: u64) {
    store
        .with_connection(|connection| {
            connection.batch_execute(&format!(
                "INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state) \
                   VALUES ('{DEAD_WORKER}', 'gone', 1, 'boot:1', now() - interval '1 hour', now() - interval '1 hour', 'alive'), \
                          ('{JUDGE}', 'judge', 2, 'boot:2', now(), now() + interval '1 day', 'alive'); \
                 INSERT INTO task_history (id, repo, issue_number, \"user\", agent, agent_type, model, provider, status, started_at, worker_id) \
                   SELECT uuid_in(overlay(overlay(md5(i::text) placing '7' from 13) placing '8' from 17)::cstring), \
                          'acme/widgets', i, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'running', \
                          now() - interval '2 hours' + i * interval '1 millisecond', '{DEAD_WORKER}' \
                   FROM generate_series(1, {orphans}) AS i; \
                 ANALYZE;"
            ))
        })
        .expect("a connection")
        .expect("seed");
}

fn reset(store: &PostgresStorage) {
    store
        .with_connection(|connection| {
            connection.batch_execute(&format!(
                "DELETE FROM recovery_reports; \
                 UPDATE task_history SET status = 'running', interrupted_at = NULL, interrupt_reason = NULL, interrupted_by = NULL \
                   WHERE worker_id = '{DEAD_WORKER}'; \
                 UPDATE workers SET state = 'alive', stopped_at = NULL, heartbeat_at = now() - interval '1 hour' WHERE id = '{DEAD_WORKER}'; \
                 UPDATE workers SET heartbeat_at = now() + interval '1 day' WHERE id = '{JUDGE}';"
            ))
        })
        .expect("a connection")
        .expect("reset");
}

fn sweep(store: &PostgresStorage) -> usize {
    let policy = LivenessPolicy::new(None);
    store
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
        .expect("sweep")
        .len()
}

fn pooled_sweep(c: &mut Criterion) {
    let Ok(bouncer) = std::env::var("TASKTRAIL_BENCH_PGBOUNCER") else {
        eprintln!("skipped: TASKTRAIL_BENCH_PGBOUNCER is not set");
        return;
    };
    let Some(database) = ScratchDatabase::create() else {
        return;
    };
    let orphans = orphans();
    let direct = PostgresStorage::open(database.url()).expect("open");
    let pooled = PostgresStorage::open(&format!(
        "{}/{}?tasktrail_pooler=transaction",
        bouncer.trim_end_matches('/'),
        database.name()
    ))
    .expect("open through PgBouncer");
    seed(&direct, orphans);
    let mut group = c.benchmark_group(format!("postgres_sweep_{orphans}_orphans"));
    for (name, store) in [("direct", &direct), ("through_pgbouncer", &pooled)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || reset(&direct),
                |()| assert_eq!(sweep(store) as u64, orphans),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(20));
    targets = pooled_sweep
}
criterion_main!(benches);
