//! The real `tasktrail-server` binary's logs and metrics: `GET /metrics`
//! in the Prometheus text format with the counters of what it ran;
//! `--log-format json` puts one JSON object per stderr line and leaves
//! stdout alone; `TASKTRAIL_LOG=off` silences the logs; a bad format or
//! filter is one line and exit 2.

mod common;

use std::time::Duration;

use common::{dispatch_body, dispatched_id, eventually, ServerProcess};

/// The value of the sample `series` (`name` or `name{labels}`) in a
/// Prometheus text answer.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
}

#[test]
fn metrics_count_what_the_server_ran() {
    let mut server = ServerProcess::start("memory:");
    let success =
        dispatched_id(&server.request("POST", "/tasks", Some(&dispatch_body(1, 0, "success"))));
    let failure =
        dispatched_id(&server.request("POST", "/tasks", Some(&dispatch_body(2, 0, "failure"))));
    let long = dispatched_id(&server.request(
        "POST",
        "/tasks",
        Some(&dispatch_body(3, 60_000, "success")),
    ));
    for (id, status) in [(success, "success"), (failure, "failure")] {
        assert!(
            eventually(Duration::from_secs(20), || {
                server.request("GET", &format!("/tasks/{id}"), None).1["status"] == status
            }),
            "{id} never became {status}"
        );
    }
    let (code, text) = server.get_text("/metrics");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        sample(&text, "tasktrail_tasks_started_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"tasktrail_tasks_finished_total{status="success"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"tasktrail_tasks_finished_total{status="failure"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tasktrail_tasks_running"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tasktrail_task_duration_seconds_count{status="success"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tasktrail_task_duration_seconds_bucket{status="failure",le="+Inf"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE tasktrail_tasks_started_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# HELP tasktrail_tasks_running "),
        "described: {text}"
    );

    // Cancelling the long one finishes it as `cancelled`.
    let (code, _) = server.request("POST", &format!("/tasks/{long}/cancel"), None);
    assert_eq!(code, 200);
    let (_, text) = server.get_text("/metrics");
    assert_eq!(
        sample(
            &text,
            r#"tasktrail_tasks_finished_total{status="cancelled"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tasktrail_tasks_running"),
        Some(0.0),
        "{text}"
    );
    server.signal(15);
    assert!(server.child.wait().expect("wait").success());
}

#[test]
fn json_logs_are_one_object_per_stderr_line_and_stdout_keeps_its_lines() {
    let mut server = ServerProcess::start_logging("memory:", &["--log-format", "json"], "trace");
    let id =
        dispatched_id(&server.request("POST", "/tasks", Some(&dispatch_body(4, 0, "success"))));
    assert!(eventually(Duration::from_secs(20), || {
        server.request("GET", &format!("/tasks/{id}"), None).1["status"] == "success"
    }));
    server.signal(15);
    assert!(server.child.wait().expect("wait").success());
    // The reader threads finish once the pipes close.
    assert!(eventually(Duration::from_secs(5), || {
        !server.stderr_lines().is_empty()
    }));

    let stdout = server.lines();
    assert_eq!(
        stdout,
        vec![format!("listening on {}", server.address)],
        "stdout holds its own lines only"
    );
    let stderr = server.stderr_lines();
    let events: Vec<serde_json::Value> = stderr
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for event in &events {
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(event.get(key).is_some(), "{key} missing in {event}");
        }
    }
    let listening = events
        .iter()
        .find(|event| event["target"] == "tasktrail_server")
        .unwrap_or_else(|| panic!("no server event in {stderr:?}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        listening["fields"]["address"],
        server.address.to_string(),
        "{listening}"
    );
}

#[test]
fn off_silences_the_logs() {
    for format in ["text", "json"] {
        let mut server = ServerProcess::start_logging("memory:", &["--log-format", format], "off");
        server.signal(15);
        assert!(server.child.wait().expect("wait").success());
        std::thread::sleep(Duration::from_millis(100));
        assert!(server.stderr_lines().is_empty(), "{format}");
    }
    // And text logs by default name the address.
    let mut server = ServerProcess::start_logging("memory:", &[], "info");
    assert!(eventually(Duration::from_secs(5), || {
        server
            .stderr_lines()
            .iter()
            .any(|line| line.contains("INFO") && line.contains("listening on"))
    }));
    server.signal(15);
    assert!(server.child.wait().expect("wait").success());
}

#[test]
fn a_bad_log_format_or_filter_is_one_line_and_exit_2() {
    let run = |args: &[&str], filter: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tasktrail-server"));
        command
            .args(["--db", "memory:", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TASKTRAIL_LOG");
        if let Some(filter) = filter {
            command.env("TASKTRAIL_LOG", filter);
        }
        command.output().expect("run")
    };
    for (args, filter, needle) in [
        (&["--log-format", "xml"][..], None, "text or json"),
        (&[][..], Some("tasktrail=loud"), "TASKTRAIL_LOG="),
    ] {
        let output = run(args, filter);
        assert_eq!(output.status.code(), Some(2), "{args:?} {filter:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("tasktrail-server: "), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing listened: {:?}",
            output.stdout
        );
    }
}
