//! The real `tasktrail-server` binary: SIGKILL with tasks in flight and a
//! restart on the same SQLite file (every in-flight task `interrupted`,
//! reported by exactly one `[recovery]` line), and SIGTERM (none left
//! `running`, exit 0 within 10 s); both again on MariaDB/MySQL with the
//! `mysql` feature (a fresh database on the `TASKTRAIL_TEST_MYSQL_URL`
//! server).

mod common;

use std::time::{Duration, Instant};

use common::{dispatch_body, dispatched_id, eventually, ServerProcess};
use tasktrail::prelude::*;

fn open(path: &std::path::Path) -> SqliteStorage {
    SqliteStorage::open(path).expect("open sqlite")
}

/// A fresh MySQL database's URL and a way to open it, or `None` after a
/// visible skip.
#[cfg(feature = "mysql")]
fn mysql() -> Option<(
    tasktrail_diesel::ScratchMysqlDatabase,
    impl Fn() -> MysqlStorage,
)> {
    let database = tasktrail_diesel::ScratchMysqlDatabase::create()?;
    let url = database.url().to_owned();
    Some((database, move || {
        MysqlStorage::open(&url).expect("open mysql")
    }))
}

#[test]
fn a_sigkilled_server_s_tasks_are_recovered_once_by_the_next_boot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trail.db");
    sigkilled_server_then_restart(path.to_str().expect("utf-8 path"), || open(&path));
}

#[cfg(feature = "mysql")]
#[test]
fn a_sigkilled_server_s_tasks_are_recovered_once_by_the_next_boot_on_mysql() {
    let Some((database, open)) = mysql() else {
        return;
    };
    sigkilled_server_then_restart(database.url(), open);
}

fn sigkilled_server_then_restart<S: Storage>(db: &str, open: impl Fn() -> S) {
    let mut first = ServerProcess::start(db);
    let in_flight: Vec<TaskId> = (1..=3)
        .map(|issue| {
            dispatched_id(&first.request(
                "POST",
                "/tasks",
                Some(&dispatch_body(issue, 60_000, "success")),
            ))
        })
        .collect();
    let done =
        dispatched_id(&first.request("POST", "/tasks", Some(&dispatch_body(9, 0, "success"))));
    assert!(eventually(Duration::from_secs(20), || {
        open().get_task(done).expect("read").map(|row| row.status) == Some(TaskStatus::Success)
    }));
    first.signal(9);
    first.child.wait().expect("wait");
    for id in &in_flight {
        let row = open().get_task(*id).expect("read").expect("row");
        assert_eq!(
            row.status,
            TaskStatus::Running,
            "a SIGKILL leaves the row running"
        );
    }

    let mut second = ServerProcess::start(db);
    for id in &in_flight {
        let row = open().get_task(*id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted, "{id}");
        let lines: Vec<String> = second
            .lines()
            .into_iter()
            .filter(|line| line.starts_with("[recovery] ") && line.contains(&id.to_string()))
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
    }
    assert!(!second
        .lines()
        .iter()
        .any(|line| line.contains(&done.to_string())));
    second.signal(15);
    assert!(second.child.wait().expect("wait").success());
}

#[test]
fn sigterm_interrupts_what_runs_and_exits_zero_within_ten_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trail.db");
    sigterm_with_tasks_running(path.to_str().expect("utf-8 path"), || open(&path));
}

/// On MySQL the server's own store is dropped inside its async `main`
/// (its connections' runtimes too): it still exits 0, without a panic.
#[cfg(feature = "mysql")]
#[test]
fn sigterm_interrupts_what_runs_and_exits_zero_within_ten_seconds_on_mysql() {
    let Some((database, open)) = mysql() else {
        return;
    };
    sigterm_with_tasks_running(database.url(), open);
}

fn sigterm_with_tasks_running<S: Storage>(db: &str, open: impl Fn() -> S) {
    let mut server = ServerProcess::start(db);
    let ids: Vec<TaskId> = (1..=3)
        .map(|issue| {
            dispatched_id(&server.request(
                "POST",
                "/tasks",
                Some(&dispatch_body(issue, 60_000, "success")),
            ))
        })
        .collect();
    let asked = Instant::now();
    server.signal(15);
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    let store = open();
    for id in ids {
        let row = store.get_task(id).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted);
        assert_eq!(
            row.interrupt_reason.as_deref(),
            Some(tasktrail_server::SERVER_STOPPED_REASON)
        );
    }
    assert!(store.running_tasks().expect("running").is_empty());
    let workers = store.list_workers().expect("workers");
    assert!(workers
        .iter()
        .all(|worker| worker.state == tasktrail::WorkerState::Stopped));
}

#[test]
fn the_in_memory_store_serves_and_bad_arguments_get_one_line_and_a_non_zero_exit() {
    let mut server = ServerProcess::start("memory:");
    let id =
        dispatched_id(&server.request("POST", "/tasks", Some(&dispatch_body(5, 0, "success"))));
    assert!(eventually(Duration::from_secs(20), || {
        server.request("GET", &format!("/tasks/{id}"), None).1["status"] == "success"
    }));
    server.signal(15);
    assert!(server.child.wait().expect("wait").success());

    // A database URL it cannot use: one line on stderr, exit 1, nothing
    // listens.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tasktrail-server"))
        .args(["--db", "oracle://nowhere/db", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tasktrail-server: "), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"));
}
