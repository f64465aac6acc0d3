//! The SQLite backend's single entry into the shared behaviour suite: every
//! case on a fresh database file, INSERTs counted from Diesel's statement
//! instrumentation.
#![cfg(feature = "sqlite")]

use tasktrail_core::conformance::{run_conformance_suite, Subject};
use tasktrail_diesel::{SqliteOptions, SqliteStorage, StatementLog};

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
    });
}
