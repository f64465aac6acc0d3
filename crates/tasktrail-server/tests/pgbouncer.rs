//! The real `tasktrail-server` through PgBouncer 1.18 in transaction mode
//! (`?tasktrail_pooler=transaction`, liveness by lease) in front of a
//! throwaway cluster: dispatched tasks land, SIGTERM interrupts what runs
//! and exits 0, nothing is left `running`. Runs with
//! `TASKTRAIL_OUTAGE_TESTS=1` (root, the server binaries, `pgbouncer`).

mod common;

#[path = "../../tasktrail-cli/tests/support/throwaway_cluster.rs"]
mod throwaway_cluster;

#[path = "../../tasktrail-cli/tests/support/pgbouncer.rs"]
mod pgbouncer;

use std::time::Duration;

use common::{dispatch_body, dispatched_id, eventually, ServerProcess};

#[test]
fn the_server_runs_through_pgbouncer_in_transaction_mode() {
    if std::env::var("TASKTRAIL_OUTAGE_TESTS").map_or(true, |value| value.trim() != "1") {
        tasktrail_diesel::report_skipped_test(
            "skipped: needs TASKTRAIL_OUTAGE_TESTS=1 (root, Postgres server binaries, pgbouncer)",
        );
        return;
    }
    let cluster = throwaway_cluster::ThrowawayCluster::start_with(&["max_connections=40"]);
    cluster.create_database("trail");
    let bouncer = pgbouncer::PgBouncer::start(
        cluster.port(),
        &pgbouncer::BouncerSettings {
            server_connections: 2,
            ..pgbouncer::BouncerSettings::default()
        },
    );
    let status_of = |id: &str| {
        cluster.psql(
            "trail",
            &format!("SELECT status FROM task_history WHERE id = '{id}'"),
        )
    };
    let mut server = ServerProcess::start(&bouncer.url("trail"));
    let done: Vec<String> = (1..=5)
        .map(|issue| {
            dispatched_id(&server.request(
                "POST",
                "/tasks",
                Some(&dispatch_body(issue, 0, "success")),
            ))
            .to_string()
        })
        .collect();
    let long = dispatched_id(&server.request(
        "POST",
        "/tasks",
        Some(&dispatch_body(9, 60_000, "success")),
    ))
    .to_string();
    assert!(eventually(Duration::from_secs(20), || done
        .iter()
        .all(|id| status_of(id) == "success")));
    assert_eq!(status_of(&long), "running");
    server.signal(15);
    assert!(server.child.wait().expect("wait").success());
    assert_eq!(status_of(&long), "interrupted");
    assert_eq!(
        cluster.psql(
            "trail",
            "SELECT count(*) FROM task_history WHERE status = 'running'"
        ),
        "0"
    );
    assert_eq!(
        cluster.psql(
            "trail",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ),
        "0",
        "no lock through the pooler"
    );
    let log = bouncer.log();
    assert!(!log.contains("prepared statement"), "{log}");
}
