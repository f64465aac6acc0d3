//! Real crash tests (issue 3, "Real crash tests"): the real `tasktrail worker`
//! SIGKILLed at random moments on a SQLite file (and, with the `mysql`
//! feature, on a MariaDB/MySQL database named by `TASKTRAIL_TEST_MYSQL_URL`),
//! several workers on one file at once, and a late finish racing a recovery
//! sweep.
//!
//! Every check reads the database itself through the library.
//! `TASKTRAIL_CRASH_ITERATIONS` (default 12) sets how many kills the first
//! test does; `TASKTRAIL_CRASH_SEED` replays a run's random choices (the seed
//! is printed at the start of each run; run with `--nocapture` to see it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tasktrail::backend::{PolicyJudge, RecoveryRequest, SweepMode};
use tasktrail::{
    Clock, CostUsd, FinishError, FinishRefusal, HostIdentity, LivenessPolicy, Outcome,
    ProcessProbe, RegisteredWorker, RunReport, SessionId, SqliteStorage, Storage, StorageExt,
    SystemClock, Task, TaskFilter, TaskId, TaskRecord, TaskSpec, TaskSpecInput, TaskStatus,
    WorkerId, WorkerRegistration, WorkerState,
};

// ---------------------------------------------------------------------------
// Randomness: a replayable xorshift.

struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-enough in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The seed from `TASKTRAIL_CRASH_SEED`, or the clock; printed so a failure
/// can be replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("TASKTRAIL_CRASH_SEED")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with TASKTRAIL_CRASH_SEED={seed})");
    seed
}

fn iterations() -> u32 {
    std::env::var("TASKTRAIL_CRASH_ITERATIONS")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(12)
}

// ---------------------------------------------------------------------------
// Driving the real binary.

/// A `tasktrail worker` child whose stdout lines arrive on a channel as they
/// are printed (complete lines only: a line cut by the kill is dropped) and
/// whose stderr is collected.
struct Worker {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stdout_reader: JoinHandle<()>,
    stderr_reader: JoinHandle<String>,
}

/// Everything a worker printed, parsed.
#[derive(Debug, Default)]
struct Printed {
    /// `worker <id> booted ...`: printed after every `[recovery]` line.
    booted: Option<WorkerId>,
    /// The ids named by `[recovery] task <id> ...` lines, in order.
    recovered: Vec<TaskId>,
    starting: Vec<TaskId>,
    finished: Vec<(TaskId, TaskStatus)>,
    lines: Vec<String>,
}

impl Printed {
    fn parse(lines: Vec<String>) -> Self {
        let mut printed = Printed::default();
        for line in &lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let id = |index: usize| -> TaskId {
                words
                    .get(index)
                    .and_then(|word| word.parse().ok())
                    .unwrap_or_else(|| panic!("no task id in {line:?}"))
            };
            if line.starts_with("[recovery] ") {
                assert_eq!(words.get(1), Some(&"task"), "{line:?}");
                printed.recovered.push(id(2));
            } else if line.starts_with("starting ") {
                printed.starting.push(id(1));
            } else if line.starts_with("finished ") {
                let status: TaskStatus = words
                    .get(2)
                    .and_then(|word| word.parse().ok())
                    .unwrap_or_else(|| panic!("no status in {line:?}"));
                printed.finished.push((id(1), status));
            } else if line.starts_with("worker ") && line.contains(" booted ") {
                printed.booted = Some(
                    words[1]
                        .parse()
                        .unwrap_or_else(|_| panic!("no worker id in {line:?}")),
                );
            } else {
                panic!("unexpected worker output line {line:?}");
            }
        }
        printed.lines = lines;
        printed
    }
}

impl Worker {
    fn spawn(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
            .arg("--db")
            .arg(db)
            .arg("worker")
            .args(args)
            .env_remove("TASKTRAIL_DB")
            // The library's log events (task started, finished...) would go
            // to stderr, which these tests keep for what went wrong: only
            // warnings and errors.
            .env("TASKTRAIL_LOG", "warn,tasktrail::recovery=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tasktrail worker");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.ends_with('\n') => {
                        let _ = send.send(line.trim_end().to_owned());
                    }
                    // A line without its newline: the kill cut it short.
                    Ok(_) => return,
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
            stdout_reader,
            stderr_reader,
        }
    }

    /// Waits until the worker printed `starting` `count` times.
    fn wait_for_starts(&mut self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .seen
            .iter()
            .filter(|line| line.starts_with("starting "))
            .count()
            < count
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {count} starts within 30 s: {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("worker ended before {count} starts: {:?}", self.seen)
                }
            }
        }
    }

    /// SIGKILL (`Child::kill` sends SIGKILL on Unix), then reap.
    fn sigkill(mut self) -> (ExitStatus, Printed, String) {
        // An already exited (unreaped) child is a zombie: the kill succeeds.
        self.child.kill().expect("SIGKILL");
        self.reap()
    }

    /// Waits for the worker to exit on its own (killing it after `limit`).
    fn wait(mut self, limit: Duration) -> (ExitStatus, Printed, String) {
        let deadline = Instant::now() + limit;
        while self.child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let (_, printed, stderr) = self.reap();
                panic!("worker did not exit within {limit:?}: {printed:?} {stderr}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.reap()
    }

    fn reap(mut self) -> (ExitStatus, Printed, String) {
        let status = self.child.wait().expect("wait");
        self.stdout_reader.join().expect("stdout reader");
        let stderr = self.stderr_reader.join().expect("stderr reader");
        self.seen.extend(self.lines.try_iter());
        (status, Printed::parse(self.seen), stderr)
    }
}

fn open(db: &Path) -> SqliteStorage {
    SqliteStorage::open(db).expect("open the database")
}

/// A store the trials read back, with the two questions asked of its
/// tables directly (the same SQL on every backend: [`duplicates_on`],
/// [`owed_on`]).
trait Trail: Storage {
    /// `task_history` ids that occur more than once.
    fn duplicated_ids(&self) -> Vec<(String, i64)>;
    /// The tasks whose `[recovery]` report is still owed.
    fn owed_reports(&self) -> BTreeSet<TaskId>;
}

impl Trail for SqliteStorage {
    fn duplicated_ids(&self) -> Vec<(String, i64)> {
        self.with_connection(duplicates_on)
    }
    fn owed_reports(&self) -> BTreeSet<TaskId> {
        self.with_connection(owed_on)
    }
}

#[cfg(feature = "mysql")]
impl Trail for tasktrail::MysqlStorage {
    fn duplicated_ids(&self) -> Vec<(String, i64)> {
        self.with_connection(duplicates_on).expect("a connection")
    }
    fn owed_reports(&self) -> BTreeSet<TaskId> {
        self.with_connection(owed_on).expect("a connection")
    }
}

/// Every row, by id, after checking ids are unique both ways.
fn all_rows(storage: &impl Trail) -> BTreeMap<TaskId, TaskRecord> {
    let rows = storage
        .list_tasks(&TaskFilter::default())
        .expect("list_tasks");
    let count = rows.len();
    let by_id: BTreeMap<TaskId, TaskRecord> = rows.into_iter().map(|row| (row.id, row)).collect();
    assert_eq!(by_id.len(), count, "list_tasks returned a duplicated id");
    assert!(
        storage.duplicated_ids().is_empty(),
        "duplicate ids in task_history: {:?}",
        storage.duplicated_ids()
    );
    by_id
}

#[derive(QueryableByName, Debug)]
struct Duplicate {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    copies: i64,
}

/// `task_history` ids that occur more than once, asked of the database
/// directly (the primary key should make this impossible; the test does
/// not trust it).
fn duplicates_on<C: diesel::Connection>(connection: &mut C) -> Vec<(String, i64)>
where
    for<'a> diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'a, C, Duplicate>,
{
    diesel::sql_query(
        "SELECT id, COUNT(*) AS copies FROM task_history GROUP BY id HAVING COUNT(*) > 1",
    )
    .load::<Duplicate>(connection)
    .expect("duplicate query")
    .into_iter()
    .map(|d| (d.id, d.copies))
    .collect()
}

#[derive(QueryableByName)]
struct Owed {
    #[diesel(sql_type = diesel::sql_types::Text)]
    task_id: String,
}

/// The tasks whose `[recovery]` report is still owed (its sweeper has not
/// confirmed it), asked of the database directly.
fn owed_on<C: diesel::Connection>(connection: &mut C) -> BTreeSet<TaskId>
where
    for<'a> diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'a, C, Owed>,
{
    diesel::sql_query("SELECT task_id FROM recovery_reports WHERE reported_at IS NULL")
        .load::<Owed>(connection)
        .expect("owed reports query")
        .into_iter()
        .map(|owed| owed.task_id.parse().expect("a task id"))
        .collect()
}

/// Interrupted rows carry no run data and name who interrupted them; other
/// final rows carry their run data.
fn assert_row_shape(row: &TaskRecord) {
    match row.status {
        TaskStatus::Running => {}
        TaskStatus::Interrupted => {
            assert!(
                row.finished_at.is_none()
                    && row.input_tokens.is_none()
                    && row.output_tokens.is_none()
                    && row.cost_usd.is_none()
                    && row.turns.is_none()
                    && row.artifacts.is_none(),
                "an interrupted row carries run data: {row:?}"
            );
            assert!(
                row.interrupted_at.is_some()
                    && row.interrupted_by.is_some()
                    && row.interrupt_reason.is_some(),
                "an interrupted row does not say when, why and by whom: {row:?}"
            );
        }
        _ => assert!(
            row.finished_at.is_some() && row.cost_usd.is_some() && row.interrupted_at.is_none(),
            "a finished row is incomplete: {row:?}"
        ),
    }
}

fn assert_sessions_of_interrupted_tasks_invalidated(
    storage: &impl Storage,
    rows: &BTreeMap<TaskId, TaskRecord>,
) {
    for session in storage.list_sessions().expect("list_sessions") {
        let task = rows
            .get(&session.task_id)
            .unwrap_or_else(|| panic!("session of a task with no row: {session:?}"));
        if task.status == TaskStatus::Interrupted {
            assert!(
                session.invalidated_at.is_some(),
                "session of interrupted task still valid: {session:?}"
            );
        }
    }
}

fn killed_or_clean(status: ExitStatus) -> bool {
    status.signal() == Some(9) || status.code() == Some(0)
}

// ---------------------------------------------------------------------------
// 1. SIGKILL at random moments.

/// Where a kill landed, judged from what the victim printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Landing {
    BeforeBootLine,
    BootedBeforeFirstStart,
    WhileTasksRan,
    AfterCleanExit,
}

#[test]
fn sigkill_at_random_moments_never_loses_or_duplicates_a_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.db");
    sigkill_trials("sigkill_at_random_moments", db.as_os_str(), || open(&db));
}

/// The same trials on MariaDB/MySQL: the victims, the orphaners and the
/// booting worker are the real binary on a fresh database of the server
/// `TASKTRAIL_TEST_MYSQL_URL` names (a visible skip without it, a failure
/// under CI).
#[cfg(feature = "mysql")]
#[test]
fn sigkill_at_random_moments_never_loses_or_duplicates_a_row_on_mysql() {
    let Some(database) = tasktrail::testing::ScratchMysqlDatabase::create() else {
        return;
    };
    let url = database.url().to_owned();
    sigkill_trials("sigkill_at_random_moments_on_mysql", url.as_ref(), || {
        tasktrail::MysqlStorage::open(&url).expect("open the database")
    });
}

/// `iterations()` rounds of: maybe leave orphans, start a victim, SIGKILL it
/// at a random moment, check the database, boot a new worker, check it
/// recovered and reported exactly what it had to.
fn sigkill_trials<S: Trail>(test: &str, db: &std::ffi::OsStr, open: impl Fn() -> S) {
    let began = Instant::now();
    let mut rng = XorShift::new(seed(test));

    // How many `[recovery]` lines named each id, over every worker, ever.
    let mut reports: HashMap<TaskId, u32> = HashMap::new();
    // Workers whose every `[recovery]` line was printed (they printed their
    // `booted` line, which comes after them).
    let mut fully_reported: HashMap<WorkerId, BTreeSet<TaskId>> = HashMap::new();
    let mut landings: BTreeMap<Landing, u32> = BTreeMap::new();
    let mut victim_sweeps_interrupted = 0usize;
    // Rows whose line a killed process printed: the next boot may say them
    // again (the kill can land between the print and its confirmation).
    let mut printed_by_a_killed_process: BTreeSet<TaskId> = BTreeSet::new();
    let mut reports_taken_over = 0usize;
    let mut previous: BTreeMap<TaskId, TaskRecord> = BTreeMap::new();

    for iteration in 0..iterations() {
        let mut printed_starts: BTreeSet<TaskId> = BTreeSet::new();
        let mut outputs: Vec<Printed> = Vec::new();

        // Every other iteration, leave three orphans first so the victim's
        // own boot sweep has work to be killed in.
        let prelude = iteration % 2 == 1;
        if prelude {
            let mut orphaner = Worker::spawn(
                db,
                &[
                    "--tasks",
                    "3",
                    "--concurrency",
                    "3",
                    "--task-duration",
                    "10m",
                ],
            );
            orphaner.wait_for_starts(3);
            let (status, printed, stderr) = orphaner.sigkill();
            assert_eq!(status.signal(), Some(9), "{printed:?} {stderr}");
            assert!(stderr.is_empty(), "orphaner stderr: {stderr}");
            outputs.push(printed);
        }

        let duration_ms = rng.below(41);
        // A victim lives roughly its start-up plus two rounds of tasks; kill
        // within that span (at most 150 ms), and sometimes just after it.
        let kill_after_ms = rng.below((2 * duration_ms + 45).min(150) + 1);
        let victim = Worker::spawn(
            db,
            &[
                "--tasks",
                "6",
                "--concurrency",
                "3",
                "--task-duration",
                &format!("{duration_ms}ms"),
                "--fail-rate",
                "0.3",
            ],
        );
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        let (status, victim_printed, stderr) = victim.sigkill();
        let context = format!(
            "iteration {iteration}: prelude={prelude} task-duration={duration_ms}ms kill after {kill_after_ms}ms; victim printed {:#?}; stderr {stderr:?}",
            victim_printed.lines
        );
        assert!(killed_or_clean(status), "{status:?}: {context}");
        assert!(stderr.is_empty(), "victim wrote to stderr: {context}");
        let landing = if status.code() == Some(0) {
            Landing::AfterCleanExit
        } else if victim_printed.booted.is_none() {
            Landing::BeforeBootLine
        } else if victim_printed.starting.is_empty() {
            Landing::BootedBeforeFirstStart
        } else {
            Landing::WhileTasksRan
        };
        *landings.entry(landing).or_default() += 1;
        outputs.push(victim_printed);

        // The database as the next boot finds it.
        let storage = open();
        let before = all_rows(&storage);
        for printed in &outputs {
            for id in &printed.recovered {
                *reports.entry(*id).or_default() += 1;
                printed_by_a_killed_process.insert(*id);
            }
            if let Some(worker) = printed.booted {
                fully_reported.insert(worker, printed.recovered.iter().copied().collect());
            }
            for id in &printed.starting {
                assert!(
                    before.contains_key(id),
                    "printed `starting {id}` but there is no row: {context}"
                );
                printed_starts.insert(*id);
            }
            for (id, status) in &printed.finished {
                assert_eq!(
                    before.get(id).map(|row| row.status),
                    Some(*status),
                    "printed `finished {id} {status}`: {context}"
                );
            }
            for id in &printed.recovered {
                let row = &before[id];
                assert_eq!(row.status, TaskStatus::Interrupted, "{row:?}: {context}");
                if let Some(worker) = printed.booted {
                    assert_eq!(row.interrupted_by, Some(worker), "{row:?}: {context}");
                }
            }
            if !printed.recovered.is_empty() {
                victim_sweeps_interrupted += printed.recovered.len();
            }
        }
        // Earlier rows are all still there; final ones are unchanged, and at
        // most one start per task thread (3) committed without being printed.
        for (id, row) in &previous {
            assert_eq!(before.get(id), Some(row), "an old row changed: {context}");
        }
        let unprinted: Vec<&TaskId> = before
            .keys()
            .filter(|id| !previous.contains_key(id) && !printed_starts.contains(id))
            .collect();
        assert!(
            unprinted.len() <= 3,
            "rows nobody printed `starting` for: {unprinted:?}: {context}"
        );

        // Reports a killed sweeper committed and never confirmed.
        let owed_before = storage.owed_reports();

        // Boot a new worker: it must recover every running row, once, and
        // deliver every report the killed workers still owed.
        let (status, boot, stderr) =
            Worker::spawn(db, &["--tasks", "0"]).wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "boot failed: {stderr}: {context}");
        assert!(
            stderr.is_empty(),
            "boot wrote to stderr: {stderr}: {context}"
        );
        let booted = boot.booted.expect("the boot printed its worker id");
        for id in &boot.recovered {
            *reports.entry(*id).or_default() += 1;
        }
        fully_reported.insert(booted, boot.recovered.iter().copied().collect());

        let after = all_rows(&storage);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "the boot added or removed rows: {context}"
        );
        let was_running: BTreeSet<TaskId> = before
            .values()
            .filter(|row| row.status == TaskStatus::Running)
            .map(|row| row.id)
            .collect();
        let reported: BTreeSet<TaskId> = boot.recovered.iter().copied().collect();
        assert_eq!(
            reported.len(),
            boot.recovered.len(),
            "a row was reported twice by one boot: {:?}: {context}",
            boot.lines
        );
        let expected: BTreeSet<TaskId> = was_running.union(&owed_before).copied().collect();
        assert_eq!(
            reported, expected,
            "the boot must report exactly the rows that were running and the reports still owed ({owed_before:?}): {:?}: {context}",
            boot.lines
        );
        reports_taken_over += owed_before.len();
        assert!(
            storage.owed_reports().is_empty(),
            "the boot confirmed every report it printed: {context}"
        );
        for (id, row) in &after {
            assert_row_shape(row);
            assert_ne!(row.status, TaskStatus::Running, "left running: {context}");
            if was_running.contains(id) {
                assert_eq!(row.status, TaskStatus::Interrupted, "{row:?}: {context}");
                assert_eq!(row.interrupted_by, Some(booted), "{row:?}: {context}");
            } else {
                assert_eq!(
                    Some(row),
                    before.get(id),
                    "a final row changed at boot: {context}"
                );
            }
        }
        assert_sessions_of_interrupted_tasks_invalidated(&storage, &after);
        for (id, count) in &reports {
            let most = if printed_by_a_killed_process.contains(id) {
                2
            } else {
                1
            };
            assert!(
                *count <= most,
                "task {id} was reported {count} times: {context}"
            );
        }
        eprintln!(
            "iteration {iteration}: prelude={prelude} duration={duration_ms}ms kill={kill_after_ms}ms -> {landing:?}; rows {} (+{}), recovered at boot {}",
            after.len(),
            after.len() - previous.len(),
            reported.len()
        );
        previous = after;
    }

    // Over the whole history: every row a sweep interrupted was reported by
    // at least one `[recovery]` line, and by exactly one unless a killed
    // process printed it before it could confirm it.
    let mut never_reported = 0usize;
    let mut reported_twice = 0usize;
    for row in previous.values() {
        if row.status != TaskStatus::Interrupted || row.interrupted_by == row.worker_id {
            continue;
        }
        let count = reports.get(&row.id).copied().unwrap_or(0);
        if count == 0 {
            never_reported += 1;
        }
        if count > 1 {
            reported_twice += 1;
            assert!(printed_by_a_killed_process.contains(&row.id), "{row:?}");
        }
        if let Some(ids) = row.interrupted_by.and_then(|by| fully_reported.get(&by)) {
            assert!(ids.contains(&row.id), "{row:?}");
        }
    }
    eprintln!(
        "{test}: {} iterations, {} rows, landings {landings:?}, {victim_sweeps_interrupted} row(s) recovered by a victim's own sweep, {reports_taken_over} report(s) taken over from a killed sweeper, {reported_twice} said twice (printed, then killed before confirming), {never_reported} never reported, {:.1?}",
        iterations(),
        previous.len(),
        began.elapsed()
    );
    assert_eq!(never_reported, 0, "every recovered row is reported");
}

// ---------------------------------------------------------------------------
// 2. Several workers on one file.

#[test]
fn several_workers_on_one_sqlite_file_never_see_database_is_locked() {
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("shared.db");
    let mut expected_rows = 0;
    // Round 1 starts on a file that does not exist yet (all four create and
    // migrate it at once); round 2 on the file round 1 left.
    for round in 1..=2 {
        let workers: Vec<Worker> = (0..4)
            .map(|_| {
                Worker::spawn(
                    &db,
                    &[
                        "--tasks",
                        "15",
                        "--concurrency",
                        "2",
                        "--task-duration",
                        "5ms",
                    ],
                )
            })
            .collect();
        let results: Vec<(ExitStatus, Printed, String)> = workers
            .into_iter()
            .map(|worker| worker.wait(Duration::from_secs(60)))
            .collect();
        for (status, printed, stderr) in &results {
            let lowered = stderr.to_ascii_lowercase();
            assert!(
                !lowered.contains("locked") && !lowered.contains("busy"),
                "round {round}: {stderr}"
            );
            assert!(stderr.is_empty(), "round {round}: stderr {stderr:?}");
            assert_eq!(status.code(), Some(0), "round {round}: {printed:?}");
            assert!(
                printed.recovered.is_empty(),
                "round {round}: a live worker's rows were recovered: {:?}",
                printed.lines
            );
            assert_eq!(printed.starting.len(), 15, "{:?}", printed.lines);
            assert_eq!(printed.finished.len(), 15, "{:?}", printed.lines);
        }
        expected_rows += 60;

        let storage = open(&db);
        let rows = all_rows(&storage);
        assert_eq!(rows.len(), expected_rows, "round {round}");
        let mut starts: HashMap<TaskId, u32> = HashMap::new();
        let mut finishes: HashMap<TaskId, u32> = HashMap::new();
        for (_, printed, _) in &results {
            let worker = printed.booted.expect("booted line");
            for id in &printed.starting {
                *starts.entry(*id).or_default() += 1;
                assert_eq!(rows[id].worker_id, Some(worker), "round {round}");
            }
            for (id, status) in &printed.finished {
                *finishes.entry(*id).or_default() += 1;
                assert_eq!(rows[id].status, *status, "round {round}");
            }
        }
        assert_eq!(starts.len(), 60, "round {round}: 60 distinct ids started");
        assert!(
            starts.values().all(|n| *n == 1),
            "round {round}: {starts:?}"
        );
        assert_eq!(
            finishes.keys().collect::<BTreeSet<_>>(),
            starts.keys().collect::<BTreeSet<_>>(),
            "round {round}"
        );
        assert!(finishes.values().all(|n| *n == 1), "round {round}");
        for row in rows.values() {
            assert!(
                matches!(row.status, TaskStatus::Success | TaskStatus::Failure),
                "round {round}: {row:?}"
            );
            assert_row_shape(row);
        }
        let workers = storage.list_workers().expect("list_workers");
        assert_eq!(workers.len(), 4 * round, "round {round}");
        assert!(
            workers.iter().all(|w| w.state == WorkerState::Stopped),
            "round {round}: every worker stopped cleanly, none declared dead: {workers:?}"
        );
    }
    eprintln!(
        "several workers: 2 rounds of 4 x 15 tasks in {:.1?}",
        began.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 3. A late finish races a recovery sweep.

/// Every pid is gone.
struct NoProcesses;

impl ProcessProbe for NoProcesses {
    fn process_start_marker(&self, _pid: u32) -> Option<String> {
        None
    }
}

const RACE_HOST: &str = "crash-test-host";

/// The boot and PID namespace of the race's (made-up) workers and judge: the
/// probe applies, and says every pid is gone.
fn race_identity() -> HostIdentity {
    HostIdentity {
        boot_id: "race-boot".into(),
        pid_namespace: 1,
    }
}

fn race_spec(issue: u32) -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: i64::from(issue),
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

/// Burns `micros` microseconds without yielding the core.
fn spin(micros: u64) {
    let until = Instant::now() + Duration::from_micros(micros);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[test]
fn a_late_finish_races_a_recovery_sweep_and_exactly_one_wins() {
    const TASKS: u32 = 50;
    let began = Instant::now();
    let mut rng = XorShift::new(seed("late_finish_race"));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("race.db");
    // Two stores, two connections: like two processes on one file.
    let store_a = open(&db);
    let store_b = open(&db);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let policy = LivenessPolicy::new(Some(race_identity()));
    let (mut finish_won, mut sweep_won) = (0u32, 0u32);

    for i in 0..TASKS {
        // A fresh worker A each time: a sweep that wins marks A dead.
        let worker = RegisteredWorker::register(
            &store_a,
            WorkerRegistration {
                id: WorkerId::new_random(),
                host: RACE_HOST.into(),
                pid: 4_000_000 + i,
                process_start_marker: "gone".into(),
                host_identity: Some(race_identity()),
                started_at: clock.now(),
            },
            Arc::clone(&clock),
        )
        .expect("register A");
        // Its process is gone: the kernel released its lock.
        assert!(store_a.release_worker_lock(worker.id()));
        let running = Task::queue(race_spec(i + 1))
            .start(&worker, &store_a)
            .expect("start");
        let id = running.id();
        running
            .record_session(
                SessionId::parse(&format!("sess_race_{i}")).expect("session id"),
                &store_a,
            )
            .expect("record session");
        let sweeper = WorkerId::new_random();
        let (finish_delay, sweep_delay) = (rng.below(200), rng.below(200));
        let report = RunReport {
            input_tokens: 1200,
            output_tokens: 300,
            cost_usd: CostUsd::new(0.42).expect("cost"),
            turns: 7,
            artifacts: vec![format!("pr/{i}")],
        };
        let barrier = Barrier::new(2);
        let (finished, swept) = std::thread::scope(|scope| {
            let (barrier, store_a, store_b, clock, policy) =
                (&barrier, &store_a, &store_b, &clock, &policy);
            let finisher = scope.spawn(move || {
                barrier.wait();
                spin(finish_delay);
                running.finish(Outcome::Success(report), store_a)
            });
            let sweep = scope.spawn(move || {
                barrier.wait();
                spin(sweep_delay);
                let now = clock.now();
                store_b.recover_orphans(
                    &RecoveryRequest {
                        recovering_worker: sweeper,
                        now,
                        mode: SweepMode::Apply,
                    },
                    &PolicyJudge {
                        policy,
                        probe: &NoProcesses,
                    },
                )
            });
            (
                finisher.join().expect("finish thread"),
                sweep.join().expect("sweep thread"),
            )
        });
        let swept = swept.unwrap_or_else(|error| panic!("task {i}: the sweep failed: {error}"));
        assert!(
            swept.iter().all(|task| task.task.id == id),
            "task {i}: the sweep touched another row: {swept:?}"
        );
        let row = store_a.get_task(id).expect("get_task").expect("the row");
        assert_row_shape(&row);
        match finished {
            Ok(done) => {
                finish_won += 1;
                assert_eq!(done.id(), id);
                assert!(swept.is_empty(), "task {i}: both won: {swept:?}");
                assert_eq!(row.status, TaskStatus::Success, "task {i}: {row:?}");
                assert_eq!(row.cost_usd, Some(0.42), "task {i}: {row:?}");
                worker.deregister(&store_a).expect("deregister");
            }
            Err(FinishError::Refused {
                id: refused,
                refusal: FinishRefusal::InterruptedByRecovery { recovered_by },
            }) => {
                sweep_won += 1;
                assert_eq!(refused, id);
                assert_eq!(recovered_by, Some(sweeper), "task {i}");
                assert_eq!(swept.len(), 1, "task {i}: the winning sweep reports it");
                assert_eq!(swept[0].task.status, TaskStatus::Interrupted);
                assert_eq!(swept[0].dead_worker, Some(worker.id()));
                assert_eq!(swept[0].sessions_invalidated, 1, "task {i}");
                assert_eq!(row.status, TaskStatus::Interrupted, "task {i}: {row:?}");
                assert_eq!(row.interrupted_by, Some(sweeper), "task {i}: {row:?}");
            }
            Err(error) => panic!("task {i}: the finish lost with the wrong error: {error:?}"),
        }
    }

    // Every race left exactly one final row; no session of an interrupted
    // task is valid; nothing is running.
    let rows = all_rows(&store_b);
    assert_eq!(rows.len(), TASKS as usize);
    assert!(rows.values().all(|row| row.status != TaskStatus::Running));
    assert_eq!(
        rows.values()
            .filter(|row| row.status == TaskStatus::Interrupted)
            .count(),
        sweep_won as usize
    );
    assert_sessions_of_interrupted_tasks_invalidated(&store_b, &rows);
    eprintln!(
        "late finish race: {TASKS} races, finish won {finish_won}, sweep won {sweep_won}, {:.1?}",
        began.elapsed()
    );
    assert!(
        finish_won > 0 && sweep_won > 0,
        "each side should win some races (finish {finish_won}, sweep {sweep_won})"
    );
}

// ---------------------------------------------------------------------------
// The worker runtime in a real process: abandoned tasks and periodic sweeps.

impl Worker {
    /// Reads lines until one satisfies `wanted`, or panics after `limit`.
    fn wait_for_line(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        while !self.seen.iter().any(|line| wanted(line)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no such line within {limit:?}: {:?}", self.seen),
            }
        }
    }

    fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
    }
}

#[test]
fn a_worker_whose_tasks_panic_goes_on_and_leaves_no_running_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");
    let worker = Worker::spawn(
        &db,
        &[
            "--tasks",
            "16",
            "--concurrency",
            "4",
            "--task-duration",
            "20ms",
            "--fail-rate",
            "0",
            "--panic-rate",
            "0.5",
        ],
    );
    let (status, printed, stderr) = worker.wait(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert_eq!(printed.starting.len(), 16, "{:?}", printed.lines);
    let finished: BTreeSet<TaskId> = printed.finished.iter().map(|(id, _)| *id).collect();
    let recovered: BTreeSet<TaskId> = printed.recovered.iter().copied().collect();
    assert_eq!(
        recovered.len(),
        printed.recovered.len(),
        "one line per task"
    );
    assert!(!recovered.is_empty(), "with p=0.5 some of 16 tasks panic");
    assert!(
        finished.is_disjoint(&recovered),
        "no finished line for a panicked task"
    );
    let started: BTreeSet<TaskId> = printed.starting.iter().copied().collect();
    assert_eq!(
        &finished | &recovered,
        started,
        "every task either finished or was reported abandoned"
    );
    let rows = all_rows(&open(&db));
    for (id, row) in &rows {
        assert_ne!(row.status, TaskStatus::Running, "task {id} left running");
        if recovered.contains(id) {
            assert_eq!(row.status, TaskStatus::Interrupted);
            assert_eq!(
                row.interrupt_reason.as_deref(),
                Some(tasktrail::ABANDONED_REASON)
            );
        }
    }
}

#[test]
fn a_live_workers_periodic_sweep_recovers_a_sigkilled_neighbour_without_any_boot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");
    let mut survivor = Worker::spawn(
        &db,
        &[
            "--tasks",
            "1",
            "--task-duration",
            "60s",
            "--heartbeat-interval",
            "100ms",
            "--sweep-interval",
            "200ms",
        ],
    );
    survivor.wait_for_starts(1);
    let mut victim = Worker::spawn(
        &db,
        &[
            "--tasks",
            "2",
            "--concurrency",
            "2",
            "--task-duration",
            "60s",
        ],
    );
    victim.wait_for_starts(2);
    let (_, victim_printed, _) = victim.sigkill();
    let orphans: BTreeSet<TaskId> = victim_printed.starting.iter().copied().collect();
    assert_eq!(orphans.len(), 2);

    // No worker boots from here on: only the survivor's periodic sweep runs.
    for orphan in &orphans {
        let needle = format!("[recovery] task {orphan} ");
        survivor.wait_for_line(Duration::from_secs(30), |line| line.starts_with(&needle));
    }
    let storage = open(&db);
    for orphan in &orphans {
        let row = storage.get_task(*orphan).expect("read").expect("row");
        assert_eq!(row.status, TaskStatus::Interrupted);
    }
    survivor.sigterm();
    let (status, printed, stderr) = survivor.wait(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {stderr}");
    let recovered: BTreeSet<TaskId> = printed.recovered.iter().copied().collect();
    assert_eq!(
        recovered, orphans,
        "each orphan reported once, by the survivor"
    );
    assert_eq!(printed.recovered.len(), 2);
    assert!(storage.running_tasks().expect("running").is_empty());
}

// ---------------------------------------------------------------------------
// A fleet on MariaDB/MySQL: two workers killed, one alive, three operators'
// `recover`s at once.

/// The task ids of the `starting` lines a worker printed so far.
fn started_ids(worker: &Worker) -> BTreeSet<TaskId> {
    Printed::parse(worker.seen.clone())
        .starting
        .into_iter()
        .collect()
}

#[cfg(feature = "mysql")]
#[test]
fn on_mysql_three_concurrent_recovers_report_each_orphan_once_and_leave_the_live_worker_alone() {
    let Some(database) = tasktrail::testing::ScratchMysqlDatabase::create() else {
        return;
    };
    let url = database.url().to_owned();
    let long_tasks = [
        "--tasks",
        "3",
        "--concurrency",
        "3",
        "--task-duration",
        "10m",
    ];
    let mut survivor = Worker::spawn(&url, &long_tasks);
    survivor.wait_for_starts(3);
    let survivor_rows = started_ids(&survivor);
    // Both victims run before either is killed: no victim's boot sweep
    // finds the other's orphans.
    let mut victims: Vec<Worker> = (0..2).map(|_| Worker::spawn(&url, &long_tasks)).collect();
    for victim in &mut victims {
        victim.wait_for_starts(3);
    }
    let mut orphans = BTreeSet::new();
    for victim in victims {
        let (status, printed, stderr) = victim.sigkill();
        assert_eq!(status.signal(), Some(9), "{printed:?} {stderr}");
        assert!(printed.recovered.is_empty(), "{printed:?}");
        orphans.extend(printed.starting);
    }
    assert_eq!(orphans.len(), 6);

    let barrier = Arc::new(Barrier::new(3));
    let recovers: Vec<JoinHandle<(ExitStatus, String, String)>> = (0..3)
        .map(|_| {
            let url = url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let output = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
                    .args(["--db", &url, "recover"])
                    .env_remove("TASKTRAIL_DB")
                    .env("TASKTRAIL_LOG", "off")
                    .output()
                    .expect("run tasktrail recover");
                (
                    output.status,
                    String::from_utf8_lossy(&output.stdout).into_owned(),
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                )
            })
        })
        .collect();
    let mut reported: HashMap<TaskId, u32> = HashMap::new();
    for recover in recovers {
        let (status, stdout, stderr) = recover.join().expect("a recover thread");
        assert_eq!(status.code(), Some(0), "recover failed: {stdout} {stderr}");
        for line in stdout
            .lines()
            .filter(|line| line.starts_with("[recovery] task "))
        {
            let id: TaskId = line
                .split_whitespace()
                .nth(2)
                .and_then(|word| word.parse().ok())
                .unwrap_or_else(|| panic!("no task id in {line:?}"));
            *reported.entry(id).or_default() += 1;
        }
    }
    assert_eq!(
        reported.keys().copied().collect::<BTreeSet<_>>(),
        orphans,
        "every orphan is reported, and nothing else"
    );
    assert!(
        reported.values().all(|count| *count == 1),
        "an orphan was reported by two recovers: {reported:?}"
    );

    let storage = tasktrail::MysqlStorage::open(&url).expect("open the database");
    let rows = all_rows(&storage);
    for id in &orphans {
        assert_eq!(rows[id].status, TaskStatus::Interrupted, "{:?}", rows[id]);
        assert_row_shape(&rows[id]);
    }
    for id in &survivor_rows {
        assert_eq!(
            rows[id].status,
            TaskStatus::Running,
            "the live worker's row was touched: {:?}",
            rows[id]
        );
    }
    assert_sessions_of_interrupted_tasks_invalidated(&storage, &rows);
    assert!(storage.owed_reports().is_empty(), "every report confirmed");
    let (status, _, stderr) = survivor.sigkill();
    assert_eq!(status.signal(), Some(9), "{stderr}");
}
