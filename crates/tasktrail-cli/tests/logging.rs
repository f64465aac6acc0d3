//! `--log-format` and `TASKTRAIL_LOG` on the real binary: logs go to
//! stderr (one JSON object per line with `--log-format json`), stdout is
//! the same as without any logging flag, `off` silences the logs, and a
//! bad format or filter is one line and exit 2 with nothing touched.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn command(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasktrail"));
    command
        .arg("--db")
        .arg(db)
        .env_remove("TASKTRAIL_DB")
        .env_remove("TASKTRAIL_LOG")
        .stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A database holding the row of a worker that was SIGKILLed mid-task, so
/// the next boot prints a `[recovery]` line.
fn database_with_a_dead_worker(dir: &Path, name: &str) -> std::path::PathBuf {
    let db = dir.join(name);
    let mut child = command(&db)
        .args(["worker", "--tasks", "1", "--task-duration", "1h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        if line.expect("line").starts_with("starting ") {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    db
}

/// Runs three tasks one after the other on `db`.
fn run_worker(db: &Path, logging: &[&str], filter: Option<&str>) -> Output {
    let mut command = command(db);
    command.args(logging).args([
        "worker",
        "--tasks",
        "3",
        "--concurrency",
        "1",
        "--task-duration",
        "20ms",
        "--fail-rate",
        "0",
        "--heartbeat-interval",
        "100ms",
    ]);
    if let Some(filter) = filter {
        command.env("TASKTRAIL_LOG", filter);
    }
    command.output().expect("run")
}

/// Stdout with what differs from run to run made uniform: every id, every
/// run of digits, the made-up task's `(repo#issue)` and each `key=value`'s
/// value.
fn shape(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|line| {
            let mut shaped = String::new();
            let mut previous_digit = false;
            for word in line.split(' ') {
                if !shaped.is_empty() {
                    shaped.push(' ');
                }
                if word.len() >= 32 && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    shaped.push_str("<id>");
                    continue;
                }
                if word.starts_with('(') && word.contains('#') {
                    shaped.push_str("(<task>)");
                    continue;
                }
                if let Some((key, _)) = word.split_once('=') {
                    shaped.push_str(key);
                    shaped.push_str("=<value>");
                    continue;
                }
                for c in word.chars() {
                    if c.is_ascii_digit() {
                        if !previous_digit {
                            shaped.push('N');
                        }
                        previous_digit = true;
                    } else {
                        shaped.push(c);
                        previous_digit = false;
                    }
                }
                previous_digit = false;
            }
            shaped
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_per_stderr_line_and_stdout_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain_db = database_with_a_dead_worker(dir.path(), "plain.db");
    let json_db = database_with_a_dead_worker(dir.path(), "json.db");

    let plain = run_worker(&plain_db, &[], None);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    // The most verbose filter: whatever the library logs, none of it may
    // reach stdout.
    let json = run_worker(&json_db, &["--log-format", "json"], Some("trace"));
    assert!(json.status.success(), "{}", text(&json.stderr));

    let plain_stdout = text(&plain.stdout);
    let json_stdout = text(&json.stdout);
    assert_eq!(shape(&plain_stdout), shape(&json_stdout));
    let lines: Vec<&str> = json_stdout.lines().collect();
    assert!(lines[0].starts_with("[recovery] "), "{json_stdout}");
    assert!(lines[1].starts_with("worker "), "{json_stdout}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("starting ")).count(),
        3
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("finished ") && l.ends_with(" success"))
            .count(),
        3
    );

    let stderr = text(&json.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for event in &events {
        assert!(event.is_object(), "{event}");
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(event.get(key).is_some(), "{key} missing in {event}");
        }
        assert!(event["fields"].is_object(), "{event}");
    }
    let booted = events
        .iter()
        .find(|event| event["fields"]["message"] == "worker booted")
        .unwrap_or_else(|| panic!("no `worker booted` event in {stderr}"));
    assert_eq!(booted["level"], "INFO");
    assert_eq!(booted["target"], "tasktrail_cli::worker");
    assert_eq!(booted["fields"]["recovered"], 1);
    let worker_id = lines[1].split(' ').nth(1).expect("worker id");
    assert_eq!(booted["fields"]["worker_id"], worker_id);
}

#[test]
fn text_logs_go_to_stderr_and_off_silences_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");
    let logged = run_worker(&db, &["--log-format", "text"], Some("info"));
    assert!(logged.status.success(), "{}", text(&logged.stderr));
    let stderr = text(&logged.stderr);
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("INFO") && line.contains("worker booted")),
        "{stderr}"
    );
    assert!(!text(&logged.stdout).contains("worker booted worker_id"));

    for format in ["text", "json"] {
        let silent = run_worker(&db, &["--log-format", format], Some("off"));
        assert!(silent.status.success(), "{}", text(&silent.stderr));
        assert_eq!(text(&silent.stderr), "", "{format}");
        assert_eq!(
            text(&silent.stdout)
                .lines()
                .filter(|l| l.starts_with("finished "))
                .count(),
            3
        );
    }
    // `warn` leaves the info event out.
    let quiet = run_worker(&db, &[], Some("warn"));
    assert!(quiet.status.success());
    assert!(!text(&quiet.stderr).contains("worker booted"));
}

#[test]
fn a_bad_log_format_or_filter_is_one_line_and_exit_2_touching_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");

    let output = command(&db)
        .args(["--log-format", "xml", "migrate"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--log-format"), "{stderr}");
    assert!(stderr.contains("text or json"), "{stderr}");
    assert!(!db.exists());

    for filter in ["tasktrail=loud", "info,["] {
        let output = command(&db)
            .arg("migrate")
            .env("TASKTRAIL_LOG", filter)
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{filter}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("tasktrail: TASKTRAIL_LOG="), "{stderr}");
        assert!(text(&output.stdout).is_empty());
        assert!(!db.exists(), "{filter}: nothing touched");
    }

    // The flag is global: after the subcommand too.
    let output = command(&db)
        .args(["migrate", "--log-format", "json"])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
}
