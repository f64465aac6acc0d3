//! A fleet booting together: eight worker processes opening one fresh
//! database at once (every rolling deployment's first start), fifty rounds,
//! on SQLite and on Postgres (with `TASKTRAIL_TEST_POSTGRES_URL`). Every
//! process must boot, migrate or find the schema migrated, and exit 0.

use std::path::Path;
use std::process::{Child, Command, Stdio};

const PROCESSES: usize = 8;
const ROUNDS: usize = 50;

fn boot(db: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .args(["--db", db, "worker", "--tasks", "0"])
        .env_remove("TASKTRAIL_DB")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tasktrail")
}

/// One round: `PROCESSES` boots of a fresh database at once; the failures.
fn round(db: &str) -> Vec<String> {
    let children: Vec<Child> = (0..PROCESSES).map(|_| boot(db)).collect();
    children
        .into_iter()
        .filter_map(|child| {
            let output = child.wait_with_output().expect("wait");
            (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
        })
        .collect()
}

fn sqlite_database(dir: &Path, round: usize) -> String {
    dir.join(format!("fleet-{round}.db"))
        .to_str()
        .expect("utf-8")
        .to_owned()
}

#[test]
fn eight_processes_booting_on_a_fresh_sqlite_file_all_succeed_fifty_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for round_number in 0..ROUNDS {
        failures.extend(round(&sqlite_database(dir.path(), round_number)));
    }
    assert!(
        failures.is_empty(),
        "{} failed boots: {failures:?}",
        failures.len()
    );
}

#[cfg(feature = "postgres")]
#[test]
fn eight_processes_booting_on_a_fresh_postgres_database_all_succeed_fifty_times() {
    let mut failures = Vec::new();
    for _ in 0..ROUNDS {
        let Some(database) = tasktrail::testing::ScratchDatabase::create() else {
            tasktrail::testing::report_skipped_test(&format!(
                "skipped: {} is not set",
                tasktrail::testing::TEST_POSTGRES_URL_VARIABLE
            ));
            return;
        };
        failures.extend(round(database.url()));
    }
    assert!(
        failures.is_empty(),
        "{} failed boots: {failures:?}",
        failures.len()
    );
}
