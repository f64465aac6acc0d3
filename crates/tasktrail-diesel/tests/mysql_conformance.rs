//! The MySQL/MariaDB backend in the shared behaviour suite: one `#[test]`
//! per case (`conformance::<case>`), each on a fresh database of its own on
//! the server named by `TASKTRAIL_TEST_MYSQL_URL` (a visible skip without
//! it, a failure under CI), INSERTs counted from Diesel's statement
//! instrumentation.
#![cfg(all(feature = "mysql", feature = "testing"))]

use chrono::Duration;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use tasktrail_core::conformance::{LockChange, Subject};
use tasktrail_core::WorkerId;
use tasktrail_diesel::{MysqlOptions, MysqlStorage, ScratchMysqlDatabase, StatementLog};

/// Moves `worker`'s heartbeat `by` into the past (the suite's
/// `age_heartbeats` hook): the suite's manual clock cannot move the
/// server's, which writes the heartbeats.
fn age_heartbeat(store: &MysqlStorage, worker: WorkerId, by: Duration) {
    let updated = store
        .with_connection(|connection| {
            diesel::sql_query(
                "UPDATE workers SET heartbeat_at = heartbeat_at - INTERVAL ? MICROSECOND WHERE id = ?",
            )
            .bind::<BigInt, _>(by.num_microseconds().expect("a test's age fits"))
            .bind::<Text, _>(worker.to_string())
            .execute(connection)
            .expect("age the heartbeat")
        })
        .expect("a connection");
    assert_eq!(updated, 1);
}

/// Plays a lock change (the suite's `change_worker_lock` hook): a dying
/// worker's session ends and the server frees its named lock; a
/// registration older than the locks has no `liveness_lock`.
fn change_worker_lock(store: &MysqlStorage, worker: WorkerId, change: LockChange) {
    match change {
        LockChange::ReleasedByDeath => {
            assert!(store.release_worker_lock(worker), "the store held it");
        }
        _ => {
            let updated = store
                .with_connection(|connection| {
                    diesel::sql_query("UPDATE workers SET liveness_lock = NULL WHERE id = ?")
                        .bind::<Text, _>(worker.to_string())
                        .execute(connection)
                        .expect("forget the lock")
                })
                .expect("a connection");
            assert_eq!(updated, 1);
        }
    }
}

/// The MySQL backend as the suite's subject, on a fresh database that
/// lives as long as the subject (the store is dropped first).
fn mysql_subject() -> Option<Subject<MysqlStorage>> {
    let database = ScratchMysqlDatabase::create()?;
    Some(Subject {
        name: "mysql",
        fresh_store: Box::new(move || {
            MysqlStorage::open_with(
                database.url(),
                MysqlOptions {
                    pool_size: 2,
                    ..MysqlOptions::default()
                }
                .with_statement_log(StatementLog::new()),
            )
            .expect("open")
        }),
        task_insert_statements: Box::new(|store: &MysqlStorage, id| {
            store
                .statement_log()
                .map_or(0, |log| log.task_insert_statements(id))
        }),
        age_heartbeats: Box::new(age_heartbeat),
        change_worker_lock: Box::new(change_worker_lock),
    })
}

mod conformance {
    use super::mysql_subject;

    tasktrail_core::conformance_tests!(skippable: mysql_subject());
}
