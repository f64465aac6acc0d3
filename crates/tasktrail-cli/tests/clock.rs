//! The real binary under a wrong wall clock, with Debian's `faketime`
//! (libfaketime preloaded): every command under a clock set before 1970,
//! and running workers whose clock steps back an hour, a day, then to 1969
//! while their tasks run (a spec file re-read at every call,
//! `FAKETIME_TIMESTAMP_FILE` with `FAKETIME_NO_CACHE=1`; the monotonic clock
//! is left alone, as a real step of the wall clock leaves it).
//!
//! They run with the namespace tests, when `TASKTRAIL_TEST_NAMESPACES=1`
//! (`.ci/run` sets it and installs `faketime`), and print one `skipped:`
//! line otherwise. With the variable set, a missing `faketime` fails them.
//! The Postgres variant also needs `TASKTRAIL_TEST_POSTGRES_URL`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GATE: &str = "TASKTRAIL_TEST_NAMESPACES";

fn enabled(test: &str) -> bool {
    if std::env::var(GATE).is_ok_and(|value| value.trim() == "1") {
        return true;
    }
    eprintln!("skipped: {test} needs faketime; set {GATE}=1");
    false
}

/// libfaketime, as the `faketime` wrapper preloads it (the multi-threaded
/// build). Fails the test when `faketime` is not installed.
fn libfaketime() -> String {
    let output = Command::new("faketime")
        .args(["-m", "-f", "+0", "sh", "-c", "printf %s \"$LD_PRELOAD\""])
        .output()
        .unwrap_or_else(|error| {
            panic!("{GATE}=1 but faketime cannot run ({error}): apt-get install faketime")
        });
    assert!(output.status.success(), "faketime: {output:?}");
    let library = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        library.contains("libfaketime"),
        "faketime preloads {library:?}"
    );
    library
}

fn tasktrail(db: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasktrail"));
    command
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("TASKTRAIL_DB")
        .env("RUST_BACKTRACE", "0");
    command
}

/// `tasktrail` under a clock that follows `spec_file` (re-read at every
/// call); the monotonic clock stays real.
fn under_faketime(mut command: Command, library: &str, spec_file: &Path) -> Command {
    command
        .env("LD_PRELOAD", library)
        .env("FAKETIME_TIMESTAMP_FILE", spec_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env_remove("FAKETIME");
    command
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file in `dir` with its length and a hash of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = if path.is_file() {
                std::fs::read(&path).expect("read")
            } else {
                Vec::new()
            };
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            (path, (bytes.len(), hasher.finish()))
        })
        .collect()
}

/// Every row of the trail (tasks, sessions, workers), read through the
/// library without writing.
fn content(db: &str) -> String {
    let url = tasktrail::DatabaseUrl::parse(db).expect("url");
    let storage = tasktrail::AnyStorage::open_read_only(&url).expect("open read-only");
    let storage = storage.as_storage();
    format!(
        "{:?}\n{:?}\n{:?}",
        storage
            .list_tasks(&tasktrail::TaskFilter::default())
            .expect("tasks"),
        storage.list_sessions().expect("sessions"),
        storage.list_workers().expect("workers"),
    )
}

fn rows(db: &str, status: &str) -> Vec<serde_json::Value> {
    let output = tasktrail(
        db,
        &["list", "--status", status, "--json", "--limit", "1000"],
    )
    .output()
    .expect("list");
    assert!(output.status.success(), "{output:?}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    rows.as_array().expect("an array").clone()
}

#[test]
fn every_command_under_a_clock_before_1970_works_or_refuses_in_one_line_and_writes_nothing() {
    if !enabled(
        "every_command_under_a_clock_before_1970_works_or_refuses_in_one_line_and_writes_nothing",
    ) {
        return;
    }
    let library = libfaketime();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("faketime.spec");
    std::fs::write(&spec, "@1969-12-01 00:00:00\n").expect("spec");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let db = data.join("trail.db").to_str().expect("utf-8").to_owned();
    // A trail written at the right time: two finished tasks.
    let output = tasktrail(
        &db,
        &[
            "worker",
            "--tasks",
            "2",
            "--task-duration",
            "50ms",
            "--fail-rate",
            "0",
        ],
    )
    .output()
    .expect("worker");
    assert!(output.status.success(), "{output:?}");
    let id = rows(&db, "success")[0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let mut before = snapshot(&data);
    let rows_before = content(&db);

    let refused: &[&[&str]] = &[
        &["worker", "--tasks", "1", "--task-duration", "50ms"],
        &["worker", "--tasks", "0"],
        &["recover"],
        &["recover", "--dry-run"],
        &["prune", "--older-than", "1d"],
        &["prune", "--older-than", "1d", "--dry-run"],
        &["demo"],
    ];
    let working: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["show", &id],
        &["sessions"],
    ];
    let migrate: &[&[&str]] = &[&["migrate"]];
    for args in migrate.iter().chain(refused).chain(working) {
        let output = under_faketime(tasktrail(&db, args), &library, &spec)
            .output()
            .expect("run tasktrail");
        let stderr = stderr_of(&output);
        let code = output.status.code();
        assert_ne!(code, Some(101), "{args:?} panicked: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if refused.contains(args) {
            assert_eq!(code, Some(1), "{args:?}: {output:?}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr:?}");
            assert!(
                stderr.starts_with("tasktrail: error: the system clock reads 1969-12-01T00:00:0")
                    && stderr.contains("before 1970: set the clock"),
                "{args:?}: {stderr:?}"
            );
            assert!(
                !String::from_utf8_lossy(&output.stdout).contains("[recovery]"),
                "{args:?}: {output:?}"
            );
        } else {
            assert_eq!(code, Some(0), "{args:?}: {output:?}");
            assert!(stderr.is_empty(), "{args:?}: {stderr:?}");
        }
        if refused.contains(args) {
            // Refused before the database is opened: not a byte changes.
            assert_eq!(snapshot(&data), before, "{args:?} touched the database");
        }
        if args == &["migrate"] {
            assert!(
                String::from_utf8_lossy(&output.stdout).contains("schema is up to date"),
                "{output:?}"
            );
        }
        // (SQLite itself may checkpoint its log or make its shared-memory
        // file when a command opens the file, whatever the clock.)
        assert_eq!(content(&db), rows_before, "{args:?} changed a row");
        before = snapshot(&data);
    }
    // A worker refused on a database that does not exist yet creates none.
    let fresh = data.join("fresh.db").to_str().expect("utf-8").to_owned();
    let output = under_faketime(tasktrail(&fresh, &["worker"]), &library, &spec)
        .output()
        .expect("worker");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        !Path::new(&fresh).exists(),
        "the refused worker created {fresh}"
    );
}

/// A running `tasktrail worker` whose stdout lines arrive as printed.
struct WorkerProcess {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
}

impl WorkerProcess {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the worker");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Waits (at most `within`) for a printed line that `wanted` accepts.
    fn wait_for(&mut self, what: &str, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|line| wanted(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(error) => panic!("no {what} within {within:?} ({error:?}): {:?}", self.seen),
            }
        }
    }

    /// Waits (at most 60 s) for the exit: success, stdout lines, stderr.
    fn wait(mut self) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within 60 s: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        self.seen.extend(self.lines.try_iter());
        let stderr = self
            .stderr_reader
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default();
        (status.success(), std::mem::take(&mut self.seen), stderr)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two workers on one host clock; the clock steps back an hour, then a
/// day, then to 1969 while their tasks run. One worker is SIGKILLed after
/// the first step: the other's periodic sweep recovers its task within
/// seconds (before the fix its sweeps waited for the clock to catch up
/// with the time they were scheduled for: an hour). The survivor finishes
/// every task with one UPDATE each, exits 0, nothing panics, nobody is
/// declared dead or reported stalled, and no row is left `running`.
fn a_clock_stepping_back_under_running_workers_is_ridden_out(db: &str, dir: &Path) {
    let library = libfaketime();
    let spec = dir.join("faketime.spec");
    std::fs::write(&spec, "+0\n").expect("spec");
    let worker = |tasks: &str, duration: &str| {
        under_faketime(
            tasktrail(
                db,
                &[
                    "worker",
                    "--tasks",
                    tasks,
                    "--concurrency",
                    "1",
                    "--task-duration",
                    duration,
                    "--fail-rate",
                    "0",
                    "--heartbeat-interval",
                    "200ms",
                    "--sweep-interval",
                    "400ms",
                ],
            ),
            &library,
            &spec,
        )
    };
    let mut survivor = WorkerProcess::spawn(worker("5", "1500ms"));
    survivor.wait_for("a start", Duration::from_secs(30), |line| {
        line.starts_with("starting ")
    });
    let mut victim = WorkerProcess::spawn(worker("1", "60s"));
    let victim_task = victim
        .wait_for("a start", Duration::from_secs(30), |line| {
            line.starts_with("starting ")
        })
        .trim_start_matches("starting ")
        .to_owned();

    std::fs::write(&spec, "-1h\n").expect("step back an hour");
    std::thread::sleep(Duration::from_millis(800));
    victim.child.kill().expect("SIGKILL the victim");
    let _ = victim.child.wait();
    let line = survivor.wait_for(
        "the victim's [recovery] line after the step back",
        Duration::from_secs(10),
        |line| line.starts_with("[recovery] ") && line.contains(&victim_task),
    );
    assert!(line.contains(" is gone"), "proven by its pid: {line}");

    std::fs::write(&spec, "-1d\n").expect("step back a day");
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&spec, "@1969-12-01 00:00:00\n").expect("step back to 1969");

    let (success, lines, stderr) = survivor.wait();
    assert!(success, "{lines:?} {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let finished: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("finished "))
        .collect();
    assert_eq!(finished.len(), 5, "{lines:?}");
    assert!(finished.iter().all(|line| line.ends_with(" success")));
    let recovery: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("[recovery] "))
        .collect();
    assert_eq!(recovery.len(), 1, "only the victim's task: {lines:?}");
    drop(victim);

    assert!(rows(db, "running").is_empty(), "no row left running");
    assert_eq!(rows(db, "success").len(), 5);
    let interrupted = rows(db, "interrupted");
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0]["id"], victim_task.as_str());
    for row in rows(db, "success") {
        let started = row["started_at"].as_str().expect("started_at");
        let finished = row["finished_at"].as_str().expect("finished_at");
        let (started, finished) = (
            chrono::DateTime::parse_from_rfc3339(started).expect("time"),
            chrono::DateTime::parse_from_rfc3339(finished).expect("time"),
        );
        assert!(finished >= started, "finished before it started: {row}");
    }
}

#[test]
fn sqlite_a_clock_stepping_back_under_running_workers_is_ridden_out() {
    if !enabled("sqlite_a_clock_stepping_back_under_running_workers_is_ridden_out") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");
    a_clock_stepping_back_under_running_workers_is_ridden_out(
        db.to_str().expect("utf-8"),
        dir.path(),
    );
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_a_clock_stepping_back_under_running_workers_is_ridden_out() {
    if !enabled("postgres_a_clock_stepping_back_under_running_workers_is_ridden_out") {
        return;
    }
    let Some(database) = tasktrail::testing::ScratchDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    a_clock_stepping_back_under_running_workers_is_ridden_out(database.url(), dir.path());
}
