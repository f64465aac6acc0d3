//! Real PID namespaces, look-alike hosts and stopped workers, with the real
//! binary: `tasktrail worker` and `tasktrail recover` run on the host, as
//! pid 1 of their own PID namespace (`unshare --pid --fork --mount-proc`), or
//! on a look-alike host (same host name, another boot id: a mount namespace
//! binds another file over `/proc/sys/kernel/random/boot_id`). No live task
//! is ever interrupted, and a worker killed inside a namespace is still found
//! dead within grace + sweep interval (+ one heartbeat).
//!
//! They need root and `unshare`: they run when `TASKTRAIL_TEST_NAMESPACES=1`
//! (`.ci/run` sets it; CI runs as root) and print one `skipped:` line
//! otherwise. With the variable set, a missing `unshare` or privilege fails
//! the test. The Postgres variants also need `TASKTRAIL_TEST_POSTGRES_URL`
//! (each test on a scratch database of its own).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The variable that turns these tests on.
const NAMESPACES_VARIABLE: &str = "TASKTRAIL_TEST_NAMESPACES";

/// The workers' heartbeat interval; their lease and grace are three of them.
const HEARTBEAT: Duration = Duration::from_millis(300);
const GRACE: Duration = Duration::from_millis(900);
const SWEEP: Duration = Duration::from_millis(500);
/// `--heartbeat-interval` / `--sweep-interval` / `--grace` / `--lease`.
const HEARTBEAT_FLAG: &str = "300ms";
const SWEEP_FLAG: &str = "500ms";
const GRACE_FLAG: &str = "900ms";

fn enabled(test: &str) -> bool {
    if std::env::var(NAMESPACES_VARIABLE).is_ok_and(|value| value.trim() == "1") {
        return true;
    }
    tasktrail::testing::report_skipped_test(&format!(
        "skipped: {test} needs root and unshare; set {NAMESPACES_VARIABLE}=1"
    ));
    false
}

/// Where a process runs.
#[derive(Debug, Clone)]
enum Place {
    /// This host, this PID namespace.
    Host,
    /// Pid 1 of a PID namespace of its own, with its own `/proc`.
    OwnPidNamespace,
    /// Another machine with this host's name (a cloned VM): another boot id,
    /// bound over `/proc/sys/kernel/random/boot_id` in a mount namespace, in
    /// this very PID namespace, so its pid and this host's `/proc` look
    /// comparable and are not.
    LookAlikeHost {
        /// The file holding its boot id.
        boot_id_file: PathBuf,
    },
    /// This host and PID namespace, in the UTS namespace (host name) at
    /// `ns` (`/proc/<pid>/ns/uts` of a process in it): `nsenter` joins it
    /// and execs the binary (the child is `tasktrail` itself).
    UtsNamespace {
        /// The namespace's link.
        ns: PathBuf,
    },
}

impl Place {
    fn look_alike(dir: &Path) -> Self {
        let boot_id_file = dir.join("look-alike-boot-id");
        std::fs::write(&boot_id_file, "0b00b1e5-0000-4000-8000-000000000001\n")
            .expect("write the look-alike boot id");
        Place::LookAlikeHost { boot_id_file }
    }

    /// `tasktrail --db <db> <args>` run here. In a namespace `unshare` is
    /// the parent (`--kill-child`: killing it kills the namespace's pid 1).
    fn command(&self, db: &str, args: &[&str]) -> Command {
        let binary = env!("CARGO_BIN_EXE_tasktrail");
        let mut command = match self {
            Place::Host => Command::new(binary),
            Place::OwnPidNamespace => {
                let mut command = Command::new("unshare");
                command.args(["--pid", "--fork", "--mount-proc", "--kill-child", binary]);
                command
            }
            Place::LookAlikeHost { boot_id_file } => {
                let mut command = Command::new("unshare");
                command
                    .args([
                        "--mount",
                        "--fork",
                        "--kill-child",
                        "sh",
                        "-c",
                        r#"mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@""#,
                    ])
                    .arg(boot_id_file)
                    .arg(binary);
                command
            }
            Place::UtsNamespace { ns } => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--uts={}", ns.display())).arg(binary);
                command
            }
        };
        command
            .arg("--db")
            .arg(db)
            .args(args)
            .env_remove("TASKTRAIL_DB");
        command
    }
}

/// A running `tasktrail worker` whose stdout lines arrive as printed.
struct WorkerProcess {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
}

/// What a worker printed by the time it exited.
#[derive(Debug)]
struct Exited {
    success: bool,
    lines: Vec<String>,
    stderr: String,
}

impl Exited {
    fn finished(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|line| line.starts_with("finished "))
            .map(String::as_str)
            .collect()
    }
}

impl WorkerProcess {
    /// `tasktrail worker` at `place`: `tasks` tasks of `duration`, all at
    /// once, short heartbeat and sweep intervals, no failures or panics.
    fn spawn(place: &Place, db: &str, tasks: u32, duration: &str) -> Self {
        let tasks = tasks.to_string();
        let mut child = place
            .command(
                db,
                &[
                    "worker",
                    "--tasks",
                    &tasks,
                    "--concurrency",
                    &tasks,
                    "--task-duration",
                    duration,
                    "--fail-rate",
                    "0",
                    "--heartbeat-interval",
                    HEARTBEAT_FLAG,
                    "--sweep-interval",
                    SWEEP_FLAG,
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the worker (is unshare installed?)");
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

    /// Waits (at most 30 s) for a printed line that `wanted` accepts.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|line| wanted(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within 30 s: {:?}", self.seen),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the worker ended before {what}: {:?}", self.seen)
                }
            }
        }
    }

    /// Waits until the worker printed `count` `starting` lines; returns
    /// the task ids.
    fn wait_for_starts(&mut self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.starts().len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(error) => panic!("no {count} starts ({error:?}): {:?}", self.seen),
            }
        }
        self.starts()
    }

    fn starts(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|line| line.strip_prefix("starting "))
            .map(str::to_owned)
            .collect()
    }

    /// The pid of the `tasktrail` process itself (in a namespace: the child
    /// of `unshare`).
    fn tasktrail_pid(&self) -> u32 {
        let parent = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .unwrap_or_default();
            let found = children
                .split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok())
                .find(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/exe"))
                        .is_ok_and(|exe| exe.ends_with("tasktrail"))
                });
            match found {
                Some(pid) => return pid,
                None if std::fs::read_link(format!("/proc/{parent}/exe"))
                    .is_ok_and(|exe| exe.ends_with("tasktrail")) =>
                {
                    return parent
                }
                None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                None => panic!("no tasktrail process under pid {parent}"),
            }
        }
    }

    fn signal(&self, pid: u32, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Waits (at most 60 s) for the worker to exit.
    fn wait(mut self) -> Exited {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within 60 s: {:?}", self.seen);
            }
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
        Exited {
            success: status.success(),
            lines: std::mem::take(&mut self.seen),
            stderr,
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `tasktrail recover` printed.
#[derive(Debug)]
struct Recovery {
    interrupted: usize,
    stalled: Vec<String>,
    stdout: String,
}

fn recover_output(output: &Output) -> Recovery {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "recover failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let interrupted = stdout
        .lines()
        .find_map(|line| line.strip_suffix(" task(s) marked interrupted"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    let stalled = stdout
        .lines()
        .filter(|line| line.starts_with("[stalled] "))
        .map(str::to_owned)
        .collect();
    Recovery {
        interrupted,
        stalled,
        stdout,
    }
}

/// `tasktrail recover` at `place`, with the workers' grace and lease.
fn recover(place: &Place, db: &str) -> Recovery {
    let output = place
        .command(
            db,
            &["recover", "--grace", GRACE_FLAG, "--lease", GRACE_FLAG],
        )
        .output()
        .expect("run recover");
    recover_output(&output)
}

/// How many rows have `status`.
fn rows_with_status(db: &str, status: &str) -> usize {
    let output = Place::Host
        .command(
            db,
            &["list", "--status", status, "--json", "--limit", "1000"],
        )
        .output()
        .expect("list");
    assert!(output.status.success(), "{output:?}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    rows.as_array().expect("an array").len()
}

/// A database for one test: a SQLite file in `dir`, or a scratch Postgres
/// database (kept alive by the returned guard).
enum Database {
    Sqlite(String),
    #[cfg(feature = "postgres")]
    Postgres(tasktrail::testing::ScratchDatabase),
}

impl Database {
    fn url(&self) -> &str {
        match self {
            Database::Sqlite(path) => path,
            #[cfg(feature = "postgres")]
            Database::Postgres(scratch) => scratch.url(),
        }
    }
}

fn sqlite(dir: &Path) -> Database {
    Database::Sqlite(dir.join("trail.db").to_str().expect("utf-8").to_owned())
}

#[cfg(feature = "postgres")]
fn postgres(test: &str) -> Option<Database> {
    let database = tasktrail::testing::ScratchDatabase::create();
    if database.is_none() {
        tasktrail::testing::report_skipped_test(&format!(
            "skipped: {test} on postgres: {} is not set",
            tasktrail::testing::TEST_POSTGRES_URL_VARIABLE
        ));
    }
    database.map(Database::Postgres)
}

/// Runs `recover` at `place` every 300 ms for `during`; every one of them
/// must interrupt nothing.
fn recover_repeatedly_interrupts_nothing(place: &Place, db: &str, during: Duration) -> usize {
    let until = Instant::now() + during;
    let mut runs = 0;
    while Instant::now() < until {
        let recovery = recover(place, db);
        assert_eq!(
            recovery.interrupted, 0,
            "recover at {place:?} interrupted a live worker's task: {}",
            recovery.stdout
        );
        runs += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    runs
}

/// A live worker at `worker_at`, `recover` run again and again at
/// `recover_at` for longer than the grace and the lease: nothing is
/// interrupted, the worker finishes its tasks and exits 0.
fn live_worker_survives_recover(db: &Database, worker_at: &Place, recover_at: &Place) {
    let mut worker = WorkerProcess::spawn(worker_at, db.url(), 2, "4s");
    worker.wait_for_starts(2);
    let runs = recover_repeatedly_interrupts_nothing(recover_at, db.url(), GRACE * 3);
    assert!(runs >= 2, "{runs} recover runs");
    let exited = worker.wait();
    assert!(exited.success, "{exited:?}");
    assert_eq!(exited.finished().len(), 2, "{exited:?}");
    assert!(
        exited
            .finished()
            .iter()
            .all(|line| line.ends_with(" success")),
        "{exited:?}"
    );
    assert_eq!(rows_with_status(db.url(), "interrupted"), 0);
    assert_eq!(rows_with_status(db.url(), "success"), 2);
}

/// Two workers, each pid 1 of its own PID namespace, sweeping every 500 ms
/// for seconds: neither interrupts the other.
fn two_pid_one_workers_leave_each_other_alone(db: &Database) {
    let mut first = WorkerProcess::spawn(&Place::OwnPidNamespace, db.url(), 2, "4s");
    first.wait_for_starts(2);
    let mut second = WorkerProcess::spawn(&Place::OwnPidNamespace, db.url(), 2, "3s");
    second.wait_for_starts(2);
    for exited in [first.wait(), second.wait()] {
        assert!(exited.success, "{exited:?}");
        assert!(
            exited.lines.iter().any(|line| line.contains("(pid 1)")),
            "a pid-1 worker: {exited:?}"
        );
        assert_eq!(exited.finished().len(), 2, "{exited:?}");
        assert!(
            !exited
                .lines
                .iter()
                .any(|line| line.starts_with("[recovery]")),
            "{exited:?}"
        );
    }
    assert_eq!(rows_with_status(db.url(), "interrupted"), 0);
}

/// A worker at `victim_at` is SIGKILLed (the whole namespace goes with its
/// pid 1) while a live worker on the host sweeps: the host worker interrupts
/// its task within heartbeat + grace + sweep interval (plus slack for a
/// loaded machine), with the lock as the proof.
fn a_killed_worker_is_found_dead_within_the_bound(db: &Database, victim_at: &Place) {
    let mut victim = WorkerProcess::spawn(victim_at, db.url(), 1, "60s");
    let task = victim.wait_for_starts(1).remove(0);
    let mut rescuer = WorkerProcess::spawn(&Place::Host, db.url(), 1, "20s");
    rescuer.wait_for_starts(1);
    // A rescuer whose connection just opened waits a grace before reading a
    // free lock as death: let it settle first (it is part of the bound).
    std::thread::sleep(GRACE);
    let killed_at = Instant::now();
    victim.signal(victim.child.id(), "KILL");
    #[cfg(feature = "postgres")]
    if let Database::Postgres(_) = db {
        // A one-shot `recover` has just connected: it cannot prove the free
        // lock yet, says so, and leaves the row to the running workers.
        let recovery = recover(&Place::Host, db.url());
        assert_eq!(recovery.interrupted, 0, "{}", recovery.stdout);
        assert!(
            recovery.stdout.contains("[not yet provable]")
                && recovery.stdout.contains("connected less than a grace ago"),
            "{}",
            recovery.stdout
        );
    }
    let line = rescuer.wait_for("the victim's [recovery] line", |line| {
        line.starts_with("[recovery] ") && line.contains(&task)
    });
    let took = killed_at.elapsed();
    let bound = HEARTBEAT + GRACE + SWEEP;
    let slack = Duration::from_secs(3);
    assert!(
        took <= bound + slack,
        "found dead after {took:?}; the bound is {bound:?} (+{slack:?} slack)"
    );
    assert!(
        line.contains("liveness lock") && line.contains("is free"),
        "proven by its free lock, never by a pid: {line}"
    );
    drop(victim);
    drop(rescuer);
    assert_eq!(rows_with_status(db.url(), "interrupted"), 1);
}

/// A host name holding a newline and a forged `[recovery]` line: a
/// container's UTS name is whatever its owner set, and the kernel takes any
/// bytes (sethostname(2) checks only the length).
const FORGED_HOST_NAME: &str = "vm\n[recovery] fake";

/// A UTS namespace of its own, made by `unshare --uts` and kept by a
/// sleeping holder (killed on drop), named [`FORGED_HOST_NAME`] with
/// sethostname(2): neither `hostname` (it validates) nor a write to
/// `/proc/sys/kernel/hostname` (the kernel stops at the newline) can set
/// such a name, so a thread of this test joins the namespace and sets it.
struct ForgedHostName {
    holder: Child,
    ns: PathBuf,
}

impl ForgedHostName {
    fn create() -> Self {
        let holder = Command::new("unshare")
            .args(["--uts", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn `unshare --uts` (is util-linux installed? are we root?)");
        let ns = PathBuf::from(format!("/proc/{}/ns/uts", holder.id()));
        let own = std::fs::read_link("/proc/self/ns/uts").expect("this process's UTS namespace");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_link(&ns).is_ok_and(|link| link != own) {
            assert!(
                Instant::now() < deadline,
                "`unshare --uts` made no namespace within 10 s (are we root?)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let link = ns.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            use std::os::fd::AsFd;
            // setns(2) moves this thread only; the thread then ends.
            let namespace = std::fs::File::open(&link)?;
            rustix::thread::move_into_link_name_space(
                namespace.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::HostNameAndNISDomainName),
            )?;
            rustix::system::sethostname(FORGED_HOST_NAME.as_bytes())?;
            Ok(())
        })
        .join()
        .expect("the namespace thread")
        .expect("join the UTS namespace and set its host name (needs root)");
        let seen = Command::new("nsenter")
            .arg(format!("--uts={}", ns.display()))
            .args(["cat", "/proc/sys/kernel/hostname"])
            .output()
            .expect("nsenter (util-linux)");
        assert_eq!(
            String::from_utf8_lossy(&seen.stdout),
            format!("{FORGED_HOST_NAME}\n"),
            "the kernel's host name in the namespace: {seen:?}"
        );
        Self { holder, ns }
    }
}

impl Drop for ForgedHostName {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A worker whose host name holds a newline and a forged `[recovery]` line
/// is SIGKILLed with two tasks running; `recover` on the host interrupts
/// both and prints exactly one `[recovery]` line per task, the newline
/// shown as `\n`; no stored `interrupt_reason` holds a control character.
fn a_newline_host_name_cannot_forge_a_recovery_line(db: &Database) {
    let forged = ForgedHostName::create();
    let place = Place::UtsNamespace {
        ns: forged.ns.clone(),
    };
    let mut worker = WorkerProcess::spawn(&place, db.url(), 2, "60s");
    let mut tasks = worker.wait_for_starts(2);
    tasks.sort();
    let pid = worker.tasktrail_pid();
    worker.signal(pid, "KILL");
    let exited = worker.wait();
    assert!(!exited.success, "killed: {exited:?}");
    // Postgres frees the lock once it has noticed the session is gone:
    // `recover` again until it has (SQLite: the kernel, at once).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines: Vec<String> = Vec::new();
    let mut interrupted = 0;
    while interrupted < 2 && Instant::now() < deadline {
        let recovery = recover(&Place::Host, db.url());
        interrupted += recovery.interrupted;
        lines.extend(
            recovery
                .stdout
                .lines()
                .filter(|line| !line.ends_with(" task(s) marked interrupted"))
                .filter(|line| !line.starts_with("[not yet provable] "))
                .map(str::to_owned),
        );
        if interrupted < 2 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(interrupted, 2, "{lines:#?}");
    assert_eq!(
        lines.len(),
        2,
        "one line per task, nothing else: {lines:#?}"
    );
    let mut reported: Vec<String> = Vec::new();
    for line in &lines {
        assert!(line.starts_with("[recovery] task "), "{line:?}");
        assert!(
            line.contains(r"on vm\n[recovery] fake is gone"),
            "the newline shown escaped: {line:?}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let id = line["[recovery] task ".len()..]
            .split_whitespace()
            .next()
            .expect("an id");
        reported.push(id.to_owned());
    }
    reported.sort();
    assert_eq!(reported, tasks);
    let output = Place::Host
        .command(db.url(), &["list", "--status", "interrupted", "--json"])
        .output()
        .expect("list");
    assert!(output.status.success(), "{output:?}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 2);
    for row in rows {
        let reason = row["interrupt_reason"].as_str().expect("a reason");
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.contains(r"vm\n[recovery] fake"), "{reason:?}");
    }
    // The table `list` prints keeps each row on its line too.
    let table = Place::Host
        .command(db.url(), &["list"])
        .output()
        .expect("list");
    assert!(
        !String::from_utf8_lossy(&table.stdout)
            .lines()
            .any(|line| line.trim_start().starts_with("[recovery] fake")),
        "{table:?}"
    );
}

// ----------------------------------------------------------------- SQLite

#[test]
fn sqlite_a_newline_host_name_cannot_forge_a_recovery_line() {
    if !enabled("sqlite_a_newline_host_name_cannot_forge_a_recovery_line") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    a_newline_host_name_cannot_forge_a_recovery_line(&sqlite(dir.path()));
}

#[test]
fn sqlite_a_live_worker_in_its_own_pid_namespace_survives_recover_on_the_host() {
    if !enabled("sqlite_a_live_worker_in_its_own_pid_namespace_survives_recover_on_the_host") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    live_worker_survives_recover(&sqlite(dir.path()), &Place::OwnPidNamespace, &Place::Host);
}

#[test]
fn sqlite_a_live_worker_on_the_host_survives_recover_in_a_pid_namespace() {
    if !enabled("sqlite_a_live_worker_on_the_host_survives_recover_in_a_pid_namespace") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    live_worker_survives_recover(&sqlite(dir.path()), &Place::Host, &Place::OwnPidNamespace);
}

#[test]
fn sqlite_two_pid_one_workers_in_two_namespaces_leave_each_other_alone() {
    if !enabled("sqlite_two_pid_one_workers_in_two_namespaces_leave_each_other_alone") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    two_pid_one_workers_leave_each_other_alone(&sqlite(dir.path()));
}

#[test]
fn sqlite_a_worker_killed_in_a_pid_namespace_is_found_dead_within_the_bound() {
    if !enabled("sqlite_a_worker_killed_in_a_pid_namespace_is_found_dead_within_the_bound") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    a_killed_worker_is_found_dead_within_the_bound(&sqlite(dir.path()), &Place::OwnPidNamespace);
}

/// SIGSTOP for longer than the lease: `recover` and a live worker's sweep
/// report the worker stalled and interrupt nothing; after SIGCONT it
/// finishes its tasks with their outcomes and says it was stalled.
#[test]
fn sqlite_a_stopped_worker_is_reported_stalled_never_interrupted_and_finishes_after_sigcont() {
    if !enabled("sqlite_a_stopped_worker_is_reported_stalled_never_interrupted") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(dir.path());
    let mut stopped = WorkerProcess::spawn(&Place::OwnPidNamespace, db.url(), 2, "3s");
    stopped.wait_for_starts(2);
    let pid = stopped.tasktrail_pid();
    let mut watcher = WorkerProcess::spawn(&Place::Host, db.url(), 1, "6s");
    watcher.wait_for_starts(1);
    let mut stalled_seen = None;
    // SIGSTOP can catch the worker inside a write transaction (a few
    // milliseconds of each heartbeat), which holds SQLite's write lock until
    // SIGCONT: then `recover` waits, and the attempt is repeated.
    for _attempt in 0..3 {
        stopped.signal(pid, "STOP");
        std::thread::sleep(GRACE * 2);
        let db_url = db.url().to_owned();
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            let output = Place::Host
                .command(
                    &db_url,
                    &["recover", "--grace", GRACE_FLAG, "--lease", GRACE_FLAG],
                )
                .output()
                .expect("recover");
            let _ = send.send(output);
        });
        let answered = receive.recv_timeout(Duration::from_secs(3));
        std::thread::sleep(GRACE);
        stopped.signal(pid, "CONT");
        let output = match answered {
            Ok(output) => output,
            Err(_) => {
                let _ = receive.recv_timeout(Duration::from_secs(40));
                continue;
            }
        };
        let recovery = recover_output(&output);
        assert_eq!(recovery.interrupted, 0, "{}", recovery.stdout);
        stalled_seen = Some(recovery);
        break;
    }
    let recovery = stalled_seen.expect("recover answered while the worker was stopped");
    assert_eq!(recovery.stalled.len(), 1, "{}", recovery.stdout);
    assert!(recovery.stalled[0].contains("(pid 1 on"), "{recovery:?}");
    let exited = stopped.wait();
    assert!(exited.success, "{exited:?}");
    assert_eq!(exited.finished().len(), 2, "{exited:?}");
    assert!(
        exited.stderr.contains("did not run for"),
        "it says it was stalled: {}",
        exited.stderr
    );
    let watcher = watcher.wait();
    assert!(watcher.success, "{watcher:?}");
    assert!(
        watcher.stderr.contains("[stalled] "),
        "the live worker's sweep warned: {}",
        watcher.stderr
    );
    assert!(
        !watcher
            .lines
            .iter()
            .any(|line| line.starts_with("[recovery]")),
        "{watcher:?}"
    );
    assert_eq!(rows_with_status(db.url(), "interrupted"), 0);
    assert_eq!(rows_with_status(db.url(), "success"), 3);
}

// --------------------------------------------------------------- Postgres

#[cfg(feature = "postgres")]
#[test]
fn postgres_a_newline_host_name_cannot_forge_a_recovery_line() {
    let test = "postgres_a_newline_host_name_cannot_forge_a_recovery_line";
    let Some(db) = enabled(test).then(|| postgres(test)).flatten() else {
        return;
    };
    a_newline_host_name_cannot_forge_a_recovery_line(&db);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_a_live_worker_in_its_own_pid_namespace_survives_recover_on_the_host() {
    let test = "postgres_a_live_worker_in_its_own_pid_namespace_survives_recover_on_the_host";
    let Some(db) = enabled(test).then(|| postgres(test)).flatten() else {
        return;
    };
    live_worker_survives_recover(&db, &Place::OwnPidNamespace, &Place::Host);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_a_live_worker_on_the_host_survives_recover_in_a_pid_namespace() {
    let test = "postgres_a_live_worker_on_the_host_survives_recover_in_a_pid_namespace";
    let Some(db) = enabled(test).then(|| postgres(test)).flatten() else {
        return;
    };
    live_worker_survives_recover(&db, &Place::Host, &Place::OwnPidNamespace);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_two_pid_one_workers_in_two_namespaces_leave_each_other_alone() {
    let test = "postgres_two_pid_one_workers_in_two_namespaces_leave_each_other_alone";
    let Some(db) = enabled(test).then(|| postgres(test)).flatten() else {
        return;
    };
    two_pid_one_workers_leave_each_other_alone(&db);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_a_worker_killed_in_a_pid_namespace_is_found_dead_within_the_bound() {
    let test = "postgres_a_worker_killed_in_a_pid_namespace_is_found_dead_within_the_bound";
    let Some(db) = enabled(test).then(|| postgres(test)).flatten() else {
        return;
    };
    a_killed_worker_is_found_dead_within_the_bound(&db, &Place::OwnPidNamespace);
}

/// Same host name, same PID namespace, another boot id: `recover` on the
/// host never declares it dead while it runs, not even right after the
/// server cut its liveness session (its lock is free until it reconnects,
/// and its pid, probed here, would look reused); once killed, a live worker
/// finds it dead by its free lock.
#[cfg(feature = "postgres")]
#[test]
fn postgres_a_look_alike_host_is_never_declared_dead_while_it_runs_and_found_dead_once_killed() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let test = "postgres_a_look_alike_host_is_never_declared_dead_while_it_runs";
    let Some(db) = enabled(test).then(|| postgres(test)).flatten() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let look_alike = Place::look_alike(dir.path());
    live_worker_survives_recover(&db, &look_alike, &Place::Host);

    let mut worker = WorkerProcess::spawn(&look_alike, db.url(), 2, "4s");
    worker.wait_for_starts(2);
    let mut admin = diesel::PgConnection::establish(db.url()).expect("connect");
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'tasktrail-liveness'",
        )
        .expect("terminate the liveness session");
    recover_repeatedly_interrupts_nothing(&Place::Host, db.url(), GRACE);
    let exited = worker.wait();
    assert!(exited.success, "{exited:?}");
    assert_eq!(exited.finished().len(), 2, "{exited:?}");
    assert_eq!(rows_with_status(db.url(), "interrupted"), 0);

    a_killed_worker_is_found_dead_within_the_bound(&db, &look_alike);
}
