//! The SQLite backend in the shared behaviour suite: one `#[test]` per case
//! (`conformance::<case>`), each on a fresh database file of its own,
//! INSERTs counted from Diesel's statement instrumentation.
#![cfg(feature = "sqlite")]

use chrono::{Duration, SecondsFormat};
use diesel::prelude::*;
use diesel::sql_types::Text;
use tasktrail_core::conformance::{LockChange, Subject};
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

/// The SQLite backend as the suite's subject: a fresh file in a temporary
/// directory that lives as long as the subject (the store is dropped
/// first).
fn sqlite_subject() -> Subject<SqliteStorage> {
    let dir = tempfile::tempdir().expect("tempdir");
    Subject {
        name: "sqlite",
        fresh_store: Box::new(move || {
            SqliteStorage::open_with(
                dir.path().join("case.db"),
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
    }
}

mod conformance {
    use super::sqlite_subject;

    tasktrail_core::conformance_tests!(sqlite_subject());
}
