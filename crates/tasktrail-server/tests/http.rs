//! The JSON API over real HTTP on 127.0.0.1 (an ephemeral port), against
//! the in-memory store, SQLite, MySQL/MariaDB (with `TASKTRAIL_TEST_MYSQL_URL`) and Postgres (with
//! `TASKTRAIL_TEST_POSTGRES_URL`). The server runs in this process so each
//! store's own INSERT counter can be read.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{dispatch_body, dispatched_id, eventually, InProcessServer};
use serde_json::json;
use tasktrail::prelude::*;
use tasktrail_core::intercept::{InterceptedStorage, StorageCall};
use tasktrail_diesel::StatementLog;

/// A store under test, with its INSERT counter.
struct Subject {
    name: &'static str,
    storage: Arc<dyn Storage>,
    inserts: Box<dyn Fn(TaskId) -> usize>,
    _keep: Box<dyn std::any::Any>,
}

fn memory() -> Subject {
    let store = Arc::new(MemoryStorage::new());
    let counter = Arc::clone(&store);
    Subject {
        name: "memory",
        storage: store,
        inserts: Box::new(move |id| counter.task_insert_statements(id)),
        _keep: Box::new(()),
    }
}

fn sqlite() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = StatementLog::new();
    let store = SqliteStorage::open_with(
        dir.path().join("trail.db"),
        tasktrail::SqliteOptions {
            statement_log: Some(log.clone()),
            ..tasktrail::SqliteOptions::default()
        },
    )
    .expect("open sqlite");
    Subject {
        name: "sqlite",
        storage: Arc::new(store),
        inserts: Box::new(move |id| log.task_insert_statements(id)),
        _keep: Box::new(dir),
    }
}

#[cfg(feature = "postgres")]
fn postgres() -> Option<Subject> {
    let database = tasktrail_diesel::ScratchDatabase::create()?;
    let log = StatementLog::new();
    let store = tasktrail::PostgresStorage::open_with(
        database.url(),
        tasktrail::PostgresOptions {
            statement_log: Some(log.clone()),
            pool_size: 8,
            ..tasktrail::PostgresOptions::default()
        },
    )
    .expect("open postgres");
    Some(Subject {
        name: "postgres",
        storage: Arc::new(store),
        inserts: Box::new(move |id| log.task_insert_statements(id)),
        _keep: Box::new(database),
    })
}

#[cfg(feature = "mysql")]
fn mysql() -> Option<Subject> {
    let database = tasktrail_diesel::ScratchMysqlDatabase::create()?;
    let log = StatementLog::new();
    let store = tasktrail::MysqlStorage::open_with(
        database.url(),
        tasktrail::MysqlOptions {
            pool_size: 8,
            ..tasktrail::MysqlOptions::default()
        }
        .with_statement_log(log.clone()),
    )
    .expect("open mysql");
    Some(Subject {
        name: "mysql",
        storage: Arc::new(store),
        inserts: Box::new(move |id| log.task_insert_statements(id)),
        _keep: Box::new(database),
    })
}

/// Runs `test` on every configured store.
fn on_every_store(test: impl Fn(Subject)) {
    test(memory());
    test(sqlite());
    #[cfg(feature = "postgres")]
    match postgres() {
        Some(subject) => test(subject),
        None => tasktrail_diesel::report_skipped_test(&format!(
            "postgres skipped: {} is not set",
            tasktrail_diesel::TEST_POSTGRES_URL_VARIABLE
        )),
    }
    // ScratchMysqlDatabase::create writes its own visible skip line.
    #[cfg(feature = "mysql")]
    if let Some(subject) = mysql() {
        test(subject);
    }
}

fn all_final(server: &InProcessServer) -> bool {
    server.rows().iter().all(|row| row.status.is_final())
}

#[test]
fn a_dispatch_answers_201_after_the_running_row_committed_and_ends_with_one_update() {
    on_every_store(|subject| {
        let server = InProcessServer::start(Arc::clone(&subject.storage));
        let answer = server.request("POST", "/tasks", Some(&dispatch_body(1104, 400, "success")));
        let id = dispatched_id(&answer);
        // The row was committed before the answer left: read it straight
        // from the store, not through the server.
        let row = subject.storage.get_task(id).expect("read").expect("a row");
        assert_eq!(row.status, TaskStatus::Running, "{}", subject.name);
        assert!(eventually(Duration::from_secs(20), || all_final(&server)));
        let (status, row) = server.request("GET", &format!("/tasks/{id}"), None);
        assert_eq!(status, 200);
        assert_eq!(row["status"], "success", "{}", subject.name);
        assert!(row["input_tokens"]
            .as_u64()
            .is_some_and(|tokens| tokens > 0));
        assert_eq!((subject.inserts)(id), 1, "{}: one INSERT", subject.name);
        assert_eq!(server.rows().len(), 1);
        // A failure ends as `failure`, the same way.
        let failed = dispatched_id(&server.request(
            "POST",
            "/tasks",
            Some(&dispatch_body(1105, 0, "failure")),
        ));
        assert!(eventually(Duration::from_secs(20), || all_final(&server)));
        let row = subject
            .storage
            .get_task(failed)
            .expect("read")
            .expect("row");
        assert_eq!(row.status, TaskStatus::Failure, "{}", subject.name);
        assert_eq!((subject.inserts)(failed), 1);
    });
}

#[test]
fn two_hundred_concurrent_dispatches_make_two_hundred_rows_and_all_end() {
    on_every_store(|subject| {
        let server = InProcessServer::start(Arc::clone(&subject.storage));
        let address = server.address;
        let clients: Vec<_> = (0..200u32)
            .map(|issue| {
                thread::spawn(move || {
                    dispatched_id(&common::request(
                        address,
                        "POST",
                        "/tasks",
                        Some(&dispatch_body(issue + 1, 50, "success")),
                    ))
                })
            })
            .collect();
        let mut ids: Vec<TaskId> = clients
            .into_iter()
            .map(|client| client.join().expect("client"))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "{}: 200 distinct ids", subject.name);
        assert!(eventually(Duration::from_secs(60), || all_final(&server)));
        let rows = server.rows();
        assert_eq!(rows.len(), 200, "{}: 200 rows", subject.name);
        assert!(rows.iter().all(|row| row.status == TaskStatus::Success));
        for id in ids {
            assert_eq!(
                (subject.inserts)(id),
                1,
                "{}: one INSERT for {id}",
                subject.name
            );
        }
    });
}

#[test]
fn cancel_writes_cancelled_once_and_refuses_what_is_not_running_here() {
    on_every_store(|subject| {
        let server = InProcessServer::start(Arc::clone(&subject.storage));
        let id = dispatched_id(&server.request(
            "POST",
            "/tasks",
            Some(&dispatch_body(7, 60_000, "success")),
        ));
        let (status, row) = server.request("POST", &format!("/tasks/{id}/cancel"), None);
        assert_eq!(status, 200, "{}: {row}", subject.name);
        assert_eq!(row["status"], "cancelled");
        let stored = subject.storage.get_task(id).expect("read").expect("row");
        assert_eq!(stored.status, TaskStatus::Cancelled);
        // Twice: 409, and the row does not change.
        let (status, body) = server.request("POST", &format!("/tasks/{id}/cancel"), None);
        assert_eq!(status, 409, "{body}");
        assert!(body["error"].is_string());
        assert_eq!(
            subject.storage.get_task(id).expect("read").expect("row"),
            stored
        );
        // Unknown: 404; not a UUID: 400.
        let unknown = TaskId::new_time_ordered();
        let (status, _) = server.request("POST", &format!("/tasks/{unknown}/cancel"), None);
        assert_eq!(status, 404);
        let (status, _) = server.request("POST", "/tasks/not-a-uuid/cancel", None);
        assert_eq!(status, 400);
        let (status, _) = server.request("GET", &format!("/tasks/{unknown}"), None);
        assert_eq!(status, 404);
        assert_eq!((subject.inserts)(id), 1);
    });
}

#[test]
fn bad_input_gets_a_4xx_naming_the_field_and_writes_nothing() {
    let valid = json!({
        "repo": "acme/widgets", "issue_number": 3, "user": "alice", "agent": "fixer",
        "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
    });
    let with = |field: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        body[field] = value;
        body.to_string()
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().expect("object").remove(field);
        body.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "JSON"),
        ("[1, 2]".into(), "object"),
        (without("repo"), "repo"),
        (without("issue_number"), "issue_number"),
        (with("issue_number", json!(-4)), "issue_number"),
        (with("issue_number", json!("4")), "issue_number"),
        (with("repo", json!("no-slash")), "repo"),
        (with("model", json!("")), "model"),
        (with("outcome", json!("maybe")), "outcome"),
        (with("duration_ms", json!(-5)), "duration_ms"),
        (with("surprise", json!(1)), "surprise"),
    ];
    on_every_store(|subject| {
        let server = InProcessServer::start(Arc::clone(&subject.storage));
        for (body, field) in &cases {
            let (status, answer) = server.request("POST", "/tasks", Some(body));
            assert!(
                (400..500).contains(&status),
                "{}: {body} answered {status}",
                subject.name
            );
            let message = answer["error"].as_str().expect("an error message");
            assert!(message.contains(field), "{body}: {message}");
        }
        for query in ["status=sleeping", "limit=-1", "limit=x", "colour=red"] {
            let (status, answer) = server.request("GET", &format!("/tasks?{query}"), None);
            assert_eq!(status, 400, "{query}: {answer}");
        }
        assert!(
            server.rows().is_empty(),
            "{}: nothing written",
            subject.name
        );
    });
}

#[test]
fn listing_filters_by_status_and_repo_and_limits() {
    let server = InProcessServer::start(memory().storage);
    let long = dispatched_id(&server.request(
        "POST",
        "/tasks",
        Some(&dispatch_body(1, 60_000, "success")),
    ));
    dispatched_id(&server.request("POST", "/tasks", Some(&dispatch_body(2, 0, "success"))));
    assert!(eventually(Duration::from_secs(20), || {
        server.rows().iter().filter(|r| r.status.is_final()).count() == 1
    }));
    let (status, running) = server.request("GET", "/tasks?status=running", None);
    assert_eq!(status, 200);
    let running = running.as_array().expect("a list");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["id"], long.to_string());
    for key in [
        "id",
        "status",
        "repo",
        "issue_number",
        "started_at",
        "finished_at",
    ] {
        assert!(running[0].get(key).is_some(), "{key}");
    }
    let (_, limited) = server.request("GET", "/tasks?limit=1&repo=acme/widgets", None);
    assert_eq!(limited.as_array().map(Vec::len), Some(1));
    let (_, other_repo) = server.request("GET", "/tasks?repo=acme/gadgets", None);
    assert_eq!(other_repo.as_array().map(Vec::len), Some(0));
}

#[test]
fn healthz_is_200_while_the_worker_is_alive_and_503_once_it_stopped() {
    let server = InProcessServer::start(memory().storage);
    let (status, body) = server.request("GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    let stop = server.runtime.block_on(server.dispatcher.worker().stop());
    stop.expect("stop");
    let (status, body) = server.request("GET", "/healthz", None);
    assert_eq!(status, 503, "{body}");
    // A stopped worker dispatches nothing.
    let (status, _) = server.request("POST", "/tasks", Some(&dispatch_body(1, 0, "success")));
    assert_eq!(status, 503);
    assert!(server.rows().is_empty());
}

#[test]
fn a_client_that_disconnects_mid_dispatch_leaves_no_running_row() {
    // INSERTs take a while, and say when they begin: each client goes away
    // while its INSERT is under way (on a busy machine a client that left
    // before the handler ran would test nothing).
    let (insert_began, inserts_beginning) = std::sync::mpsc::channel::<()>();
    let insert_began = std::sync::Mutex::new(insert_began);
    let slow_inserts = InterceptedStorage::new(MemoryStorage::new(), move |call| {
        if call == StorageCall::InsertRunning {
            let _ = insert_began
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(());
            thread::sleep(Duration::from_millis(150));
        }
        Ok(())
    });
    let server = InProcessServer::start(Arc::new(slow_inserts));
    for issue in 1..=20u32 {
        let body = dispatch_body(issue, 0, "success");
        let mut stream = TcpStream::connect(server.address).expect("connect");
        write!(
            stream,
            "POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        // Gone while the INSERT (150 ms) is under way.
        inserts_beginning
            .recv_timeout(Duration::from_secs(20))
            .expect("the dispatch reached its INSERT");
        stream
            .shutdown(std::net::Shutdown::Both)
            .expect("disconnect");
        drop(stream);
    }
    // Whatever each request got to do, no row is left `running`: a task
    // whose request was dropped after its INSERT is abandoned and
    // interrupted by the worker, one that ran ends on its own.
    assert!(
        eventually(Duration::from_secs(20), || all_final(&server)
            && server.dispatcher.running() == 0),
        "{:?}",
        server.rows()
    );
    thread::sleep(Duration::from_millis(500));
    let rows = server.rows();
    assert!(rows.iter().all(|row| row.status.is_final()), "{rows:?}");
    // The requests really went away mid-dispatch: hyper dropped their
    // futures after the INSERT, and the worker interrupted what they left.
    assert!(
        rows.iter()
            .any(|row| row.interrupt_reason.as_deref() == Some(tasktrail::ABANDONED_REASON)),
        "{rows:?}"
    );
}
