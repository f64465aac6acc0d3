//! A MySQL sweep, claim and confirmation of more orphans than one MySQL
//! statement can bind ids (65,535 placeholders, error 1390): one dead
//! owner with 70,000 running rows, each with a session, on a fresh
//! database on the `TASKTRAIL_TEST_MYSQL_URL` server (a visible skip
//! without it, a failure under CI).
#![cfg(all(feature = "mysql", feature = "testing"))]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use tasktrail_core::backend::{PolicyJudge, RecoveryRequest, ReportClaim, SweepMode};
use tasktrail_core::{Clock, LivenessPolicy, ProcessProbe, Storage, SystemClock, WorkerId};
use tasktrail_diesel::{MysqlStorage, ScratchMysqlDatabase};

/// More than 65,535: one id list of this many cannot be one statement.
const ORPHANS: usize = 70_000;
const DEAD_OWNER: &str = "00000000-0000-7000-8000-00000000dead";

struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn count(store: &MysqlStorage, sql: &str) -> i64 {
    store
        .with_connection(|connection| {
            diesel::sql_query(sql)
                .get_result::<Count>(connection)
                .expect("count")
                .count
        })
        .expect("a connection")
}

/// `ORPHANS` running rows of one owner that registered by hand an hour ago
/// and fell silent (no named lock: the lease decides), a session each.
fn seed(store: &MysqlStorage) {
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                  UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    store
        .with_connection(|connection| {
            connection.batch_execute(&format!(
                "INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state) \
                   VALUES ('{DEAD_OWNER}', 'gone', 1, 'boot:1', UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, \
                           UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, 'alive'); \
                 INSERT INTO task_history (id, repo, issue_number, `user`, agent, agent_type, model, provider, status, started_at, worker_id) \
                   SELECT CONCAT(SUBSTR(t.hex, 1, 8), '-', SUBSTR(t.hex, 9, 4), '-7', SUBSTR(t.random, 1, 3), \
                                 '-a', SUBSTR(t.random, 4, 3), '-', SUBSTR(t.random, 7, 12)), \
                          'acme/widgets', t.i, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'running', \
                          UTC_TIMESTAMP(6) - INTERVAL 90 MINUTE + INTERVAL t.i MICROSECOND, '{DEAD_OWNER}' \
                   FROM (SELECT n.i, LOWER(LPAD(HEX(1778511600000 + n.i), 12, '0')) AS hex, MD5(n.i) AS random \
                         FROM (SELECT d0.d + 10 * d1.d + 100 * d2.d + 1000 * d3.d + 10000 * d4.d + 1 AS i \
                               FROM {digits} AS d0, {digits} AS d1, {digits} AS d2, {digits} AS d3, {digits} AS d4) AS n \
                         WHERE n.i <= {ORPHANS}) AS t; \
                 INSERT INTO claude_sdk_sessions (session_id, task_id, repo, issue_number, agent, created_at) \
                   SELECT CONCAT('sess_', id), id, repo, issue_number, agent, started_at FROM task_history;"
            ))
        })
        .expect("a connection")
        .expect("seed");
}

fn request(sweeper: WorkerId, mode: SweepMode) -> RecoveryRequest {
    RecoveryRequest {
        recovering_worker: sweeper,
        now: SystemClock.now(),
        mode,
    }
}

#[test]
fn a_sweep_claim_and_confirmation_of_more_ids_than_one_statement_binds() {
    let Some(database) = ScratchMysqlDatabase::create() else {
        return;
    };
    let store = MysqlStorage::open(database.url()).expect("open");
    seed(&store);
    let policy = LivenessPolicy::new(None);
    let judge = PolicyJudge {
        policy: &policy,
        probe: &NoProcesses,
    };
    // An operator's one-shot sweep: its id names no registered worker.
    let sweeper = WorkerId::new_random();

    let dry = store
        .recover_orphans(&request(sweeper, SweepMode::DryRun), &judge)
        .expect("dry run");
    assert_eq!(dry.len(), ORPHANS);
    assert!(dry.iter().all(|task| task.sessions_invalidated == 1));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) AS count FROM task_history WHERE status = 'running'"
        ),
        ORPHANS as i64,
        "a dry run changes nothing"
    );

    let recovered = store
        .recover_orphans(&request(sweeper, SweepMode::Apply), &judge)
        .expect("sweep");
    assert_eq!(recovered.len(), ORPHANS);
    assert!(recovered.iter().all(|task| task.sessions_invalidated == 1));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) AS count FROM task_history WHERE status = 'interrupted'"
        ),
        ORPHANS as i64
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) AS count FROM claude_sdk_sessions WHERE invalidated_at IS NOT NULL"
        ),
        ORPHANS as i64
    );

    // The sweeper never confirms: a worker takes its reports over and
    // confirms every one.
    let claimant = WorkerId::new_random();
    let now = SystemClock.now();
    let claimed = store
        .claim_unreported_recoveries(
            &ReportClaim {
                claimant,
                now,
                unregistered_owed_before: now + chrono::Duration::seconds(1),
            },
            &judge,
        )
        .expect("claim");
    assert_eq!(claimed.len(), ORPHANS);
    let tasks: Vec<_> = claimed.iter().map(|task| task.task.id).collect();
    let confirmed = store
        .confirm_reports(claimant, &tasks, SystemClock.now())
        .expect("confirm");
    assert_eq!(confirmed, ORPHANS as u64);
}
