//! Store outages ridden out by the real `tasktrail worker` (issue 16, "Store
//! outages are ridden out"): a Postgres restart under two live workers on a
//! throwaway cluster, a database whose `idle_session_timeout` is shorter
//! than the tasks, every connection of a live worker terminated by the
//! server, a full disk under SQLite, and SIGTERM while the store is
//! unreachable.
//!
//! Slow and external (they mount tmpfs, run `initdb`/`pg_ctl` as the
//! `postgres` user, and need root): they run only with
//! `TASKTRAIL_OUTAGE_TESTS=1` (`.ci/run` sets it), and the ones on the
//! shared server also need `TASKTRAIL_TEST_POSTGRES_URL`. Otherwise each
//! prints one `skipped:` line. Every figure measured is printed (run with
//! `--nocapture`).

#[path = "support/throwaway_cluster.rs"]
mod throwaway_cluster;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tasktrail::{SqliteStorage, Storage, TaskFilter, TaskId, TaskRecord, TaskStatus};

const ENABLE_VARIABLE: &str = "TASKTRAIL_OUTAGE_TESTS";

fn enabled(test: &str) -> bool {
    let on = std::env::var(ENABLE_VARIABLE).is_ok_and(|value| value.trim() == "1");
    if !on {
        tasktrail::testing::report_skipped_test(&format!(
            "skipped: {test} needs {ENABLE_VARIABLE}=1 (root, tmpfs, Postgres server binaries)"
        ));
    }
    on
}

// ---------------------------------------------------------------------------
// The real binary.

fn tasktrail(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("TASKTRAIL_DB")
        .output()
        .expect("run tasktrail")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tasktrail recover`: how many tasks it marked interrupted.
fn recover(db: &str) -> usize {
    let output = tasktrail(db, &["recover"]);
    assert!(
        output.status.success(),
        "recover failed: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    last.strip_suffix(" task(s) marked interrupted")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected recover output {stdout:?}"))
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// A `tasktrail worker` whose stdout and stderr lines arrive as printed.
struct RunningWorker {
    child: Child,
    lines: Receiver<(Stream, String)>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// What a worker printed and how it ended.
#[derive(Debug)]
struct Ended {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Ended {
    fn ids_after(&self, prefix: &str) -> Vec<TaskId> {
        self.stdout
            .iter()
            .filter_map(|line| line.strip_prefix(prefix))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("no task id after {prefix:?} in {rest:?}"))
            })
            .collect()
    }

    fn recovery_lines(&self) -> Vec<&String> {
        self.stdout
            .iter()
            .filter(|line| line.starts_with("[recovery] "))
            .collect()
    }

    /// The `ms after the task ended` figure of each queued outcome that
    /// landed.
    fn landing_delays_ms(&self) -> Vec<u64> {
        self.stderr
            .iter()
            .filter_map(|line| {
                let (head, _) = line.split_once(" ms after the task ended")?;
                head.rsplit(' ').next()?.parse().ok()
            })
            .collect()
    }

    fn queued_outcome_warnings(&self) -> usize {
        self.stderr
            .iter()
            .filter(|line| line.contains("is queued until the store answers"))
            .count()
    }
}

impl RunningWorker {
    fn spawn(db: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
            .arg("--db")
            .arg(db)
            .arg("worker")
            .args(args)
            .env_remove("TASKTRAIL_DB")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tasktrail worker");
        let (send, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let send_err = send.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = send.send((Stream::Out, line));
            }
        });
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = send_err.send((Stream::Err, line));
            }
        });
        Self {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes lines until `done` holds (panics after `limit`).
    fn wait_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((Stream::Out, line)) => self.stdout.push(line),
                Ok((Stream::Err, line)) => self.stderr.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {what} within {limit:?}: {:?} {:?}",
                    self.stdout, self.stderr
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "worker ended before {what}: {:?} {:?}",
                        self.stdout, self.stderr
                    )
                }
            }
        }
    }

    /// The task ids of the stdout lines seen so far that start with `prefix`.
    fn stdout_ids(&self, prefix: &str) -> Vec<TaskId> {
        self.stdout
            .iter()
            .filter_map(|line| line.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Takes whatever lines arrive during `period`.
    fn take_lines_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((Stream::Out, line)) => self.stdout.push(line),
                Ok((Stream::Err, line)) => self.stderr.push(line),
                Err(_) => return,
            }
        }
    }

    fn wait_for_starts(&mut self, count: usize) {
        self.wait_until("task starts", Duration::from_secs(60), |worker| {
            worker
                .stdout
                .iter()
                .filter(|line| line.starts_with("starting "))
                .count()
                >= count
        });
    }

    fn wait_for_queued_outcomes(&mut self, count: usize, limit: Duration) {
        self.wait_until("queued outcomes", limit, |worker| {
            worker
                .stderr
                .iter()
                .filter(|line| line.contains("is queued until the store answers"))
                .count()
                >= count
        });
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
    }

    /// Waits for the worker to exit by itself within `limit`.
    fn wait(mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stdout.extend(
                    self.lines
                        .try_iter()
                        .filter(|(s, _)| *s == Stream::Out)
                        .map(|(_, l)| l),
                );
                panic!(
                    "worker did not exit within {limit:?}: {:?} {:?}",
                    self.stdout, self.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The readers end with the pipes.
        while let Ok((stream, line)) = self.lines.recv_timeout(Duration::from_secs(5)) {
            match stream {
                Stream::Out => self.stdout.push(line),
                Stream::Err => self.stderr.push(line),
            }
        }
        Ended {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
        }
    }
}

impl Drop for RunningWorker {
    /// A test that fails half way kills its worker (SIGKILL) rather than
    /// leave it running (and holding a tmpfs busy).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tasktrail worker` arguments: `tasks` tasks, two at a time, each lasting
/// `task_duration`, none failing, heartbeats every `heartbeat_interval`,
/// no periodic sweep during the test unless `extra` sets one, then `extra`.
fn worker_args<'a>(
    tasks: &'a str,
    task_duration: &'a str,
    heartbeat_interval: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "--tasks",
        tasks,
        "--concurrency",
        "2",
        "--task-duration",
        task_duration,
        "--fail-rate",
        "0",
        "--heartbeat-interval",
        heartbeat_interval,
    ];
    if !extra.contains(&"--sweep-interval") {
        args.extend_from_slice(&["--sweep-interval", "1h"]);
    }
    args.extend_from_slice(extra);
    args
}

/// Checks what every outage test expects of a worker that rode one out:
/// exit 0, a `finished` line for every `starting` one, no `[recovery]`
/// line, and every row finished with its outcome (none `running` or
/// `interrupted`).
fn assert_every_outcome_landed(ended: &Ended, rows: &[TaskRecord]) {
    assert_eq!(
        ended.status.code(),
        Some(0),
        "the worker exited early: {ended:?}"
    );
    assert!(ended.recovery_lines().is_empty(), "{ended:?}");
    let mut started = ended.ids_after("starting ");
    let mut finished = ended.ids_after("finished ");
    started.sort();
    finished.sort();
    assert!(!started.is_empty());
    assert_eq!(started, finished, "every started task printed its finish");
    for id in &started {
        let row = rows
            .iter()
            .find(|row| row.id == *id)
            .unwrap_or_else(|| panic!("no row for {id}"));
        assert!(
            matches!(row.status, TaskStatus::Success | TaskStatus::Failure)
                && row.finished_at.is_some()
                && row.cost_usd.is_some(),
            "the outcome of {id} was lost: {row:?}"
        );
    }
}

/// Checks the stderr of a worker stopped while its store was unreachable:
/// one `unwritten <id> <status>` line (exactly two words after the prefix)
/// per task it started, each `interrupted` (the outcome a stop writes).
fn assert_every_started_task_is_named_unwritten(ended: &Ended) {
    let mut unwritten: Vec<(TaskId, TaskStatus)> = ended
        .stderr
        .iter()
        .filter_map(|line| line.strip_prefix("unwritten "))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let id = words.next().and_then(|w| w.parse().ok());
            let status = words.next().and_then(|w| w.parse().ok());
            assert_eq!(words.next(), None, "one id and one status: {rest:?}");
            (id.expect("an id"), status.expect("a status"))
        })
        .collect();
    unwritten.sort();
    let mut started: Vec<(TaskId, TaskStatus)> = ended
        .ids_after("starting ")
        .into_iter()
        .map(|id| (id, TaskStatus::Interrupted))
        .collect();
    started.sort();
    assert!(!started.is_empty());
    assert_eq!(unwritten, started, "{:?}", ended.stderr);
}

/// Prints the figures of one run.
fn report(test: &str, figure: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{test}: {figure}");
}

// ---------------------------------------------------------------------------
// A full disk: SQLite on a small tmpfs.

/// A tmpfs mounted on a temp dir, unmounted when dropped (also when the
/// test fails).
struct SmallDisk {
    dir: tempfile::TempDir,
    ballast: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(mounted.success(), "mount tmpfs (needs root)");
        let ballast = dir.path().join("ballast");
        Self { dir, ballast }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a ballast file until the disk is full.
    fn fill(&self) {
        let mut file = std::fs::File::create(&self.ballast).expect("ballast");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // Fill the last partial chunk too.
        while file.write_all(&[0x5a]).is_ok() {}
        let _ = file.sync_all();
    }

    fn empty(&self) {
        std::fs::remove_file(&self.ballast).expect("remove the ballast");
    }
}

impl Drop for SmallDisk {
    /// Unmounts, lazily if something still holds a file open on it (the
    /// mount then goes away as soon as that closes).
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Waits until `count` sessions are recorded: the tasks are past their
/// start and at work.
fn wait_for_sqlite_sessions(db: &Path, count: usize) {
    let store = SqliteStorage::open(db).expect("open");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.list_sessions().expect("sessions").len() < count {
        assert!(Instant::now() < deadline, "no {count} sessions recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sqlite_rows(db: &Path) -> Vec<TaskRecord> {
    SqliteStorage::open(db)
        .expect("open")
        .list_tasks(&TaskFilter::default())
        .expect("rows")
}

#[test]
fn a_full_disk_while_tasks_finish_loses_no_outcome() {
    const TEST: &str = "a_full_disk_while_tasks_finish_loses_no_outcome";
    if !enabled(TEST) {
        return;
    }
    let disk = SmallDisk::mount("8m");
    let db = disk.path().join("trail.db");
    let db_text = db.to_str().expect("utf-8").to_owned();
    // Three tasks of 3 s, two at a time: the first two end while the disk
    // is full; the third starts once it is emptied, and the queued outcomes
    // must land while it runs (the background retry, not the final stop).
    let mut worker = RunningWorker::spawn(&db_text, &worker_args("3", "3s", "200ms", &[]));
    worker.wait_for_starts(2);
    wait_for_sqlite_sessions(&db, 2);
    disk.fill();
    // Both tasks end while the disk is full: their finishes fail and are
    // queued, and the worker goes on.
    worker.wait_for_queued_outcomes(2, Duration::from_secs(30));
    assert!(worker.still_running(), "the worker stopped on a full disk");
    std::thread::sleep(Duration::from_secs(2));
    assert!(worker.still_running(), "the worker stopped on a full disk");
    let freed_at = Instant::now();
    disk.empty();
    let queued: Vec<TaskId> = worker.stdout_ids("starting ");
    worker.wait_until(
        "the queued outcomes landing while the third task runs",
        Duration::from_secs(30),
        |worker| worker.stdout_ids("finished ").len() >= 2,
    );
    let landed_after_free = freed_at.elapsed();
    let mut landed = worker.stdout_ids("finished ");
    landed.sort();
    let mut expected = queued;
    expected.sort();
    assert_eq!(
        landed, expected,
        "the first two landed before the third ended"
    );
    assert!(
        worker.still_running(),
        "they landed while the worker ran, not at its stop"
    );
    let ended = worker.wait(Duration::from_secs(60));
    assert_every_outcome_landed(&ended, &sqlite_rows(&db));
    assert_eq!(ended.queued_outcome_warnings(), 2);
    report(
        TEST,
        &format!(
            "queued outcomes landed {:?} ms after their tasks ended, {landed_after_free:?} after the disk was emptied",
            ended.landing_delays_ms()
        ),
    );
}

#[test]
fn sigterm_while_the_disk_is_full_names_the_unwritten_outcomes_after_the_deadline() {
    const TEST: &str =
        "sigterm_while_the_disk_is_full_names_the_unwritten_outcomes_after_the_deadline";
    if !enabled(TEST) {
        return;
    }
    let disk = SmallDisk::mount("8m");
    let db = disk.path().join("trail.db");
    let db_text = db.to_str().expect("utf-8").to_owned();
    let mut worker = RunningWorker::spawn(
        &db_text,
        &worker_args("2", "10m", "200ms", &["--stop-deadline", "2s"]),
    );
    worker.wait_for_starts(2);
    wait_for_sqlite_sessions(&db, 2);
    disk.fill();
    let signalled_at = Instant::now();
    worker.sigterm();
    let ended = worker.wait(Duration::from_secs(60));
    let stop_took = signalled_at.elapsed();
    assert_eq!(ended.status.code(), Some(1), "{ended:?}");
    assert!(
        stop_took >= Duration::from_secs(2),
        "it kept retrying until the deadline: {stop_took:?}"
    );
    assert_every_started_task_is_named_unwritten(&ended);

    disk.empty();
    let rows = sqlite_rows(&db);
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|row| row.status == TaskStatus::Running),
        "the unwritten rows stay running: {rows:?}"
    );
    assert_eq!(recover(&db_text), 2, "the next sweep recovers them");
    assert!(sqlite_rows(&db)
        .iter()
        .all(|row| row.status == TaskStatus::Interrupted));
    report(
        TEST,
        &format!("SIGTERM to exit: {stop_took:?} (stop deadline 2 s)"),
    );
}

// ---------------------------------------------------------------------------
// Postgres.

#[cfg(feature = "postgres")]
mod postgres {
    use super::throwaway_cluster::ThrowawayCluster;
    use super::*;
    use tasktrail::testing::{ScratchDatabase, TEST_POSTGRES_URL_VARIABLE};
    use tasktrail::PostgresStorage;

    fn postgres_rows(url: &str) -> Vec<TaskRecord> {
        PostgresStorage::open(url)
            .expect("open")
            .list_tasks(&TaskFilter::default())
            .expect("rows")
    }

    fn psql(url: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .args(["-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout).trim().to_owned()
    }

    fn migrate(url: &str) {
        let output = tasktrail(url, &["migrate"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
    }

    /// The backend pid and start of the worker's liveness session(s).
    fn liveness_sessions(url: &str) -> String {
        psql(
            url,
            "SELECT string_agg(pid || '@' || backend_start, ',' ORDER BY pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'tasktrail-liveness'",
        )
    }

    /// How many advisory locks liveness sessions of this database hold.
    fn liveness_locks_held(url: &str) -> usize {
        psql(
            url,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() \
             AND a.application_name = 'tasktrail-liveness'",
        )
        .parse()
        .expect("a count")
    }

    fn shared_server_scratch(test: &str) -> Option<(ScratchDatabase, String)> {
        if !enabled(test) {
            return None;
        }
        let admin = std::env::var(TEST_POSTGRES_URL_VARIABLE).ok();
        let scratch = ScratchDatabase::create()?;
        Some((scratch, admin.expect("set")))
    }

    #[test]
    fn two_workers_ride_out_a_postgres_restart_and_every_outcome_lands() {
        const TEST: &str = "two_workers_ride_out_a_postgres_restart_and_every_outcome_lands";
        if !enabled(TEST) {
            return;
        }
        let cluster = ThrowawayCluster::start();
        cluster.create_database("trail");
        let url = cluster.url("trail");
        migrate(&url);
        // Each worker sweeps every second, during the restart too: a sweep
        // that reconnects before its neighbour has taken its lock back must
        // not read that free lock as death.
        let args = worker_args(
            "6",
            "2s",
            "250ms",
            &["--stop-deadline", "30s", "--sweep-interval", "1s"],
        );
        let mut first = RunningWorker::spawn(&url, &args);
        let mut second = RunningWorker::spawn(&url, &args);
        first.wait_for_starts(2);
        second.wait_for_starts(2);
        // Fast shutdown (every session ended), back 5 s later: the tasks in
        // flight end during the outage.
        cluster.stop();
        std::thread::sleep(Duration::from_secs(5));
        assert!(first.still_running() && second.still_running());
        cluster.start_again();
        let back_at = Instant::now();
        let first = first.wait(Duration::from_secs(120));
        let second = second.wait(Duration::from_secs(120));
        let done_after = back_at.elapsed();
        let rows = postgres_rows(&url);
        assert_eq!(rows.len(), 12, "{rows:?}");
        assert_every_outcome_landed(&first, &rows);
        assert_every_outcome_landed(&second, &rows);
        let outage_warnings = |ended: &Ended| {
            ended
                .stderr
                .iter()
                .filter(|line| line.contains("(retrying)") || line.contains("is queued"))
                .count()
        };
        assert!(
            outage_warnings(&first) >= 1 && outage_warnings(&second) >= 1,
            "both workers saw the outage: {:?} {:?}",
            first.stderr,
            second.stderr
        );
        report(
            TEST,
            &format!(
                "queued outcomes landed {:?} / {:?} ms after their tasks ended (outage 5 s); both workers done {done_after:?} after the server was back",
                first.landing_delays_ms(),
                second.landing_delays_ms()
            ),
        );
    }

    #[test]
    fn sigterm_while_postgres_is_down_names_the_unwritten_outcomes_after_the_deadline() {
        const TEST: &str =
            "sigterm_while_postgres_is_down_names_the_unwritten_outcomes_after_the_deadline";
        if !enabled(TEST) {
            return;
        }
        let cluster = ThrowawayCluster::start();
        cluster.create_database("trail");
        let url = cluster.url("trail");
        migrate(&url);
        let mut worker = RunningWorker::spawn(
            &url,
            &worker_args("2", "10m", "200ms", &["--stop-deadline", "2s"]),
        );
        worker.wait_for_starts(2);
        // Both sessions recorded: the tasks are at work.
        let deadline = Instant::now() + Duration::from_secs(30);
        while psql(&url, "SELECT count(*) FROM claude_sdk_sessions") != "2" {
            assert!(Instant::now() < deadline, "no sessions recorded");
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.stop();
        // The worker notices at its next heartbeat.
        worker.wait_until("a failed heartbeat", Duration::from_secs(30), |worker| {
            worker
                .stderr
                .iter()
                .any(|line| line.contains("heartbeat failed"))
        });
        let signalled_at = Instant::now();
        worker.sigterm();
        let ended = worker.wait(Duration::from_secs(60));
        let stop_took = signalled_at.elapsed();
        assert_eq!(ended.status.code(), Some(1), "{ended:?}");
        // It keeps to its deadline (plus a last attempt, which fails within
        // a second once the server is known to be down), not to the 10 s
        // connection timeout. A generous bound: only a stop that waits out
        // whole connection timeouts fails it.
        assert!(
            stop_took >= Duration::from_secs(2) && stop_took < Duration::from_secs(8),
            "{stop_took:?}"
        );
        assert_every_started_task_is_named_unwritten(&ended);

        cluster.start_again();
        let rows = postgres_rows(&url);
        assert!(
            rows.iter().all(|row| row.status == TaskStatus::Running),
            "the unwritten rows stay running: {rows:?}"
        );
        assert_eq!(recover(&url), 2, "the next sweep recovers them");
        report(
            TEST,
            &format!("SIGTERM to exit with the server down: {stop_took:?} (stop deadline 2 s)"),
        );
    }

    #[test]
    fn an_idle_session_timeout_shorter_than_the_tasks_stops_nothing() {
        const TEST: &str = "an_idle_session_timeout_shorter_than_the_tasks_stops_nothing";
        let Some((scratch, admin)) = shared_server_scratch(TEST) else {
            return;
        };
        // Per database: the shared server's configuration is not touched.
        psql(
            &admin,
            &format!(
                "ALTER DATABASE {} SET idle_session_timeout = '2s'",
                scratch.name()
            ),
        );
        let url = scratch.url().to_owned();
        migrate(&url);
        // Tasks of 3 s leave pooled connections idle past the timeout, and a
        // heartbeat every 2.5 s leaves the liveness session idle past it.
        let mut worker = RunningWorker::spawn(&url, &worker_args("4", "3s", "2500ms", &[]));
        worker.wait_for_starts(2);
        let liveness_at_start = liveness_sessions(&url);
        assert!(!liveness_at_start.is_empty());
        let mut recovers = 0;
        let mut liveness_checks = 0;
        while worker.still_running() {
            assert_eq!(recover(&url), 0, "a recover saw the live worker dead");
            recovers += 1;
            let liveness_now = liveness_sessions(&url);
            if liveness_now.is_empty() && !worker.still_running() {
                break; // it deregistered and ended between the two reads
            }
            assert_eq!(
                liveness_now, liveness_at_start,
                "the liveness session was cut and replaced"
            );
            liveness_checks += 1;
            worker.take_lines_for(Duration::from_millis(500));
        }
        assert!(
            recovers >= 3 && liveness_checks >= 3,
            "{recovers} {liveness_checks}"
        );
        let ended = worker.wait(Duration::from_secs(60));
        assert_every_outcome_landed(&ended, &postgres_rows(&url));
        // Not one statement failed: the connections the server closed while
        // idle were replaced before use.
        let warnings: Vec<&String> = ended
            .stderr
            .iter()
            .filter(|line| line.contains("warning"))
            .collect();
        assert!(warnings.is_empty(), "{warnings:?}");
        report(
            TEST,
            &format!("{recovers} recover runs during the tasks saw nobody dead"),
        );
    }

    #[test]
    fn a_worker_whose_connections_are_all_terminated_keeps_its_tasks() {
        const TEST: &str = "a_worker_whose_connections_are_all_terminated_keeps_its_tasks";
        let Some((scratch, _admin)) = shared_server_scratch(TEST) else {
            return;
        };
        let url = scratch.url().to_owned();
        migrate(&url);
        let mut worker = RunningWorker::spawn(&url, &worker_args("4", "3s", "200ms", &[]));
        worker.wait_for_starts(2);
        assert_eq!(liveness_locks_held(&url), 1);
        let terminated: usize = psql(
            &url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .parse()
        .expect("a count");
        let terminated_at = Instant::now();
        assert!(
            terminated >= 2,
            "the liveness session and pooled connections: {terminated}"
        );
        // Right afterwards, before the worker can have taken its lock back:
        // the free lock of a live worker is no proof of death.
        assert_eq!(recover(&url), 0, "recover interrupted a live worker's task");
        // The worker takes its lock back by itself, at its next heartbeat.
        while liveness_locks_held(&url) == 0 {
            assert!(
                terminated_at.elapsed() < Duration::from_secs(10),
                "the worker never took its lock back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let lock_back_after = terminated_at.elapsed();
        assert_eq!(recover(&url), 0, "recover interrupted a live worker's task");
        let ended = worker.wait(Duration::from_secs(60));
        assert_every_outcome_landed(&ended, &postgres_rows(&url));
        report(
            TEST,
            &format!("{terminated} backends terminated; lock taken back after {lock_back_after:?}"),
        );
    }
}
