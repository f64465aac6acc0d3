//! The SQLite backend's single entry into the shared behaviour suite: every
//! case on a fresh database file, INSERTs counted from Diesel's statement
//! instrumentation.
#![cfg(feature = "sqlite")]

use chrono::{Duration, SecondsFormat};
use diesel::prelude::*;
use diesel::sql_types::Text;
use tasktrail_core::conformance::{run_conformance_suite, LockChange, Subject};
use tasktrail_core::{Storage, WorkerId};
use tasktrail_diesel::{SqliteOptions, SqliteStorage, StatementLog};

/// Moves `worker`'s heartbeat `by` into the past (the suite's
/// `age_heartbeats` hook). SQLite stores RFC 3339 text, written with the
/// callers' clock.
fn age_heartbeat(store: &SqliteStorage, worker: WorkerId, by: Duration) {
    let record = store
        .list_workers()
        .expect("workers")
        .into_iter()
        .find(|record| record.id == worker)
        .expect("the worker has a row");
    let aged = (record.heartbeat_at - by).to_rfc3339_opts(SecondsFormat::Micros, true);
    let updated = store.with_connection(|connection| {
        diesel::sql_query("UPDATE workers SET heartbeat_at = ? WHERE id = ?")
            .bind::<Text, _>(aged)
            .bind::<Text, _>(worker.to_string())
            .execute(connection)
            .expect("age the heartbeat")
    });
    assert_eq!(updated, 1);
}

/// Plays a lock change (the suite's `change_worker_lock` hook): a dying
/// process's kernel releases its `flock`; a registration older than the
/// locks has no `liveness_lock`.
fn change_worker_lock(store: &SqliteStorage, worker: WorkerId, change: LockChange) {
    match change {
        LockChange::ReleasedByDeath => {
            assert!(store.release_worker_lock(worker), "the store held it");
        }
        _ => {
            let updated = store.with_connection(|connection| {
                diesel::sql_query("UPDATE workers SET liveness_lock = NULL WHERE id = ?")
                    .bind::<Text, _>(worker.to_string())
                    .execute(connection)
                    .expect("forget the lock")
            });
            assert_eq!(updated, 1);
        }
    }
}

#[test]
fn sqlite_storage_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let mut next = 0;
    run_conformance_suite(Subject {
        name: "sqlite",
        fresh_store: Box::new(move || {
            next += 1;
            SqliteStorage::open_with(
                root.join(format!("case-{next}.db")),
                SqliteOptions {
                    statement_log: Some(StatementLog::new()),
                    ..SqliteOptions::default()
                },
            )
            .expect("open")
        }),
        task_insert_statements: Box::new(|store: &SqliteStorage, id| {
            store
                .statement_log()
                .map_or(0, |log| log.task_insert_statements(id))
        }),
        age_heartbeats: Box::new(age_heartbeat),
        change_worker_lock: Box::new(change_worker_lock),
    });
}
