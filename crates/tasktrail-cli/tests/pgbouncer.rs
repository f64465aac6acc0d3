//! The real binary through PgBouncer 1.18 in transaction mode
//! (`?tasktrail_pooler=transaction`) in front of a throwaway cluster with
//! `max_connections = 40`: the operator commands, a SIGKILLed worker behind
//! the pooler found dead by its lease, and a fleet of worker processes far
//! larger than `max_connections`.
//!
//! External (root, `initdb`/`pg_ctl` as `postgres`, Debian's `pgbouncer`,
//! `unshare`): they run only with `TASKTRAIL_OUTAGE_TESTS=1` (`.ci/run` sets
//! it and installs PgBouncer); otherwise each prints one `skipped:` line.
//! Every figure measured is printed (run with `--nocapture`).
//! `TASKTRAIL_FLEET_SIZE` changes the fleet's size (default 100).

#[path = "support/throwaway_cluster.rs"]
mod throwaway_cluster;

#[path = "support/pgbouncer.rs"]
mod pgbouncer;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgbouncer::{BouncerSettings, PgBouncer};
use throwaway_cluster::ThrowawayCluster;

const ENABLE_VARIABLE: &str = "TASKTRAIL_OUTAGE_TESTS";

fn enabled(test: &str) -> bool {
    let on = std::env::var(ENABLE_VARIABLE).is_ok_and(|value| value.trim() == "1");
    if !on {
        eprintln!("skipped: {test} needs {ENABLE_VARIABLE}=1 (root, Postgres server binaries, pgbouncer, unshare)");
    }
    on
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A cluster with `max_connections = 40`, PgBouncer in front, one database.
struct Setup {
    bouncer: PgBouncer,
    cluster: ThrowawayCluster,
    database: &'static str,
}

impl Setup {
    fn start(settings: &BouncerSettings) -> Self {
        let cluster = ThrowawayCluster::start_with(&["max_connections=40"]);
        cluster.create_database("trail");
        let bouncer = PgBouncer::start(cluster.port(), settings);
        Self {
            bouncer,
            cluster,
            database: "trail",
        }
    }

    /// Through the pooler, declared.
    fn pooled(&self) -> String {
        self.bouncer.url(self.database)
    }

    /// Straight to the cluster.
    fn direct(&self) -> String {
        self.cluster.url(self.database)
    }

    fn psql(&self, sql: &str) -> String {
        self.cluster.psql(self.database, sql)
    }

    /// Every row: id -> (status, worker id, interrupted_at as epoch seconds).
    fn rows(&self) -> BTreeMap<String, (String, String, Option<f64>)> {
        self.psql(
            "SELECT id, status, coalesce(worker_id::text, ''), \
             coalesce(extract(epoch FROM interrupted_at)::text, '') FROM task_history",
        )
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            (
                fields[0].to_owned(),
                (
                    fields[1].to_owned(),
                    fields[2].to_owned(),
                    fields[3].parse().ok(),
                ),
            )
        })
        .collect()
    }
}

fn tasktrail(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("TASKTRAIL_DB")
        .env_remove("TASKTRAIL_LIVENESS_URL")
        .output()
        .expect("run tasktrail")
}

fn succeeded(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// No pooler or server error a user should never see.
fn assert_no_connection_errors(stderr: &str, who: &str) {
    for needle in [
        "too many clients",
        "no more connections allowed",
        "prepared statement",
        "timed out waiting for connection",
    ] {
        assert!(
            !stderr.contains(needle),
            "{who} printed {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn the_operator_commands_work_through_pgbouncer() {
    if !enabled("the_operator_commands_work_through_pgbouncer") {
        return;
    }
    let setup = Setup::start(&BouncerSettings {
        server_connections: 4,
        ..BouncerSettings::default()
    });
    let db = setup.pooled();
    let migrated = succeeded(&tasktrail(&db, &["migrate"]), "migrate");
    assert!(migrated.contains("applied"), "{migrated}");
    let again = succeeded(&tasktrail(&db, &["migrate"]), "migrate again");
    assert!(again.contains("schema is up to date"), "{again}");

    // Lease mode: no liveness URL.
    let worker = tasktrail(
        &db,
        &[
            "worker",
            "--tasks",
            "12",
            "--concurrency",
            "3",
            "--task-duration",
            "100ms",
        ],
    );
    let stdout = succeeded(&worker, "worker");
    assert_no_connection_errors(&text(&worker.stderr), "worker");
    let boot = stdout.lines().next().unwrap_or_default();
    assert!(
        boot.ends_with(
            "postgres through a transaction pooler, liveness by lease on the database's clock"
        ),
        "{boot}"
    );
    assert_eq!(stdout.matches("\nfinished ").count(), 12, "{stdout}");

    // With a direct liveness URL: the lock is held on that session only.
    let with_liveness = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .args(["--db", &db, "--liveness-url", &setup.direct()])
        .args(["worker", "--tasks", "4", "--task-duration", "100ms"])
        .env_remove("TASKTRAIL_DB")
        .output()
        .expect("run tasktrail");
    let stdout = succeeded(&with_liveness, "worker --liveness-url");
    assert!(
        stdout.lines().next().unwrap_or_default().ends_with(
            "postgres through a transaction pooler, liveness by advisory lock on the liveness URL"
        ),
        "{stdout}"
    );
    // The same through the variable.
    let with_variable = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .args([
            "--db",
            &db,
            "worker",
            "--tasks",
            "1",
            "--task-duration",
            "10ms",
        ])
        .env("TASKTRAIL_LIVENESS_URL", setup.direct())
        .env_remove("TASKTRAIL_DB")
        .output()
        .expect("run tasktrail");
    assert!(
        succeeded(&with_variable, "worker with TASKTRAIL_LIVENESS_URL")
            .contains("liveness by advisory lock on the liveness URL")
    );

    let list = succeeded(&tasktrail(&db, &["list", "--limit", "100"]), "list");
    assert_eq!(list.lines().count(), 1 + 17, "{list}");
    let json = succeeded(&tasktrail(&db, &["list", "--json"]), "list --json");
    assert!(json.trim_start().starts_with('['), "{json}");
    let id = list
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .expect("an id");
    succeeded(&tasktrail(&db, &["show", id]), "show");
    succeeded(&tasktrail(&db, &["sessions"]), "sessions");
    succeeded(&tasktrail(&db, &["stats"]), "stats");
    let recovered = succeeded(&tasktrail(&db, &["recover"]), "recover");
    assert!(
        recovered.ends_with("0 task(s) marked interrupted\n"),
        "{recovered}"
    );
    succeeded(
        &tasktrail(&db, &["recover", "--dry-run"]),
        "recover --dry-run",
    );
    // Undeclared, the pooler cannot be proven, but the port mismatch is
    // worth a warning; declared (as any kind, `none` too: the operator's
    // word is taken) or direct, there is none.
    let undeclared = tasktrail(&setup.bouncer.undeclared_url(setup.database), &["recover"]);
    assert!(
        text(&undeclared.stderr).contains("declare it with ?tasktrail_pooler=transaction"),
        "{}",
        text(&undeclared.stderr)
    );
    let declared = |kind: &str| {
        format!(
            "{}?tasktrail_pooler={kind}",
            setup.bouncer.undeclared_url(setup.database)
        )
    };
    for quiet in [
        db.clone(),
        declared("session"),
        declared("none"),
        setup.direct(),
    ] {
        let recovered = tasktrail(&quiet, &["recover"]);
        assert!(
            !text(&recovered.stderr).contains("warning"),
            "{}",
            text(&recovered.stderr)
        );
    }
    assert_eq!(
        setup.psql("SELECT count(*) FROM task_history WHERE status = 'running'"),
        "0"
    );
    let log = setup.bouncer.log();
    assert!(!log.contains("prepared statement"), "{log}");
}

/// Starts `tasktrail worker` in a PID namespace of its own (`unshare`), so
/// no other process's judge can probe its pid: it is judged by its lease,
/// as a worker on another host. Its output goes to files in `dir`.
fn spawn_isolated_worker(
    dir: &Path,
    name: &str,
    db: &str,
    args: &[&str],
) -> (Child, PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let err = dir.join(format!("{name}.err"));
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(env!("CARGO_BIN_EXE_tasktrail"))
        .args(["--db", db, "worker"])
        .args(args)
        .env_remove("TASKTRAIL_DB")
        .env_remove("TASKTRAIL_LIVENESS_URL")
        .env("TASKTRAIL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("unshare tasktrail worker");
    (child, out, err)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn ids_after(stdout: &str, prefix: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// SIGKILLs `child` (the `unshare` process; `--kill-child` takes the worker
/// down with it) and reaps it.
fn sigkill(child: &mut Child) {
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = child.wait();
}

/// Waits until `stdout` holds `count` `starting` lines.
fn wait_for_starts(stdout: &Path, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while ids_after(&read(stdout), "starting ").len() < count {
        assert!(
            Instant::now() < deadline,
            "no {count} starts in {within:?}: {}",
            read(stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A SIGKILLed worker behind the pooler holds no lock anywhere (it took
/// none through the pooler); `tasktrail recover` from another PID namespace
/// finds it dead by its lease, once.
#[test]
fn a_sigkilled_worker_behind_the_pooler_is_found_dead_by_its_lease() {
    if !enabled("a_sigkilled_worker_behind_the_pooler_is_found_dead_by_its_lease") {
        return;
    }
    let setup = Setup::start(&BouncerSettings::default());
    let db = setup.pooled();
    succeeded(&tasktrail(&db, &["migrate"]), "migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut victim, out, _) = spawn_isolated_worker(
        dir.path(),
        "victim",
        &db,
        &[
            "--tasks",
            "2",
            "--concurrency",
            "2",
            "--task-duration",
            "1h",
            "--heartbeat-interval",
            "1s",
        ],
    );
    wait_for_starts(&out, 2, Duration::from_secs(30));
    let started = ids_after(&read(&out), "starting ");
    sigkill(&mut victim);
    assert_eq!(
        setup.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "0",
        "a worker behind a transaction pooler takes no advisory lock"
    );
    // Within the lease (3 s): alive.
    let early = succeeded(&tasktrail(&db, &["recover", "--lease", "3s"]), "recover");
    assert!(early.ends_with("0 task(s) marked interrupted\n"), "{early}");
    std::thread::sleep(Duration::from_secs(4));
    let recovered = succeeded(&tasktrail(&db, &["recover", "--lease", "3s"]), "recover");
    let lines: Vec<&str> = recovered
        .lines()
        .filter(|l| l.starts_with("[recovery] "))
        .collect();
    assert_eq!(lines.len(), 2, "{recovered}");
    for id in &started {
        assert_eq!(
            lines
                .iter()
                .filter(|line| line.contains(id.as_str()))
                .count(),
            1
        );
    }
    assert!(
        lines.iter().all(|line| line.contains("lease")),
        "{recovered}"
    );
    let again = succeeded(&tasktrail(&db, &["recover", "--lease", "3s"]), "recover");
    assert!(again.ends_with("0 task(s) marked interrupted\n"), "{again}");
}

/// A fleet far larger than `max_connections = 40`: by default 100 worker
/// processes through PgBouncer (at most 20 server connections), each in a
/// PID namespace of its own so every judgement is by lease: every task
/// ends with its outcome, no worker exits early, no connection error
/// reaches a user; 5 SIGKILLed mid-run have their tasks recovered exactly
/// once within lease + sweep interval, while a long-running live worker's
/// tasks are never touched.
#[test]
fn a_fleet_larger_than_max_connections_runs_through_pgbouncer() {
    if !enabled("a_fleet_larger_than_max_connections_runs_through_pgbouncer") {
        return;
    }
    let fleet_size: usize = std::env::var("TASKTRAIL_FLEET_SIZE")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(100);
    assert!(fleet_size >= 10, "TASKTRAIL_FLEET_SIZE must be at least 10");
    const VICTIMS: usize = 5;
    const FLEET_TASKS: usize = 30;
    // The documented defaults: heartbeat 5 s, lease 15 s; sweeps every 5 s.
    const LEASE: f64 = 15.0;
    const SWEEP: f64 = 5.0;
    let setup = Setup::start(&BouncerSettings {
        max_client_conn: 2000,
        server_connections: 20,
        ..BouncerSettings::default()
    });
    let db = setup.pooled();
    succeeded(&tasktrail(&db, &["migrate"]), "migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    let common = [
        "--heartbeat-interval",
        "5s",
        "--sweep-interval",
        "5s",
        "--stop-deadline",
        "60s",
    ];

    let started_at = Instant::now();
    // The long-running live worker, the victims, then the short workers.
    let (mut sentinel, sentinel_out, sentinel_err) = spawn_isolated_worker(
        dir.path(),
        "sentinel",
        &db,
        &[
            &[
                "--tasks",
                "2",
                "--concurrency",
                "2",
                "--task-duration",
                "50s",
                "--fail-rate",
                "0",
            ][..],
            &common[..],
        ]
        .concat(),
    );
    let mut victims: Vec<(Child, PathBuf)> = (0..VICTIMS)
        .map(|n| {
            let (child, out, _) = spawn_isolated_worker(
                dir.path(),
                &format!("victim-{n}"),
                &db,
                &[
                    &[
                        "--tasks",
                        "4",
                        "--concurrency",
                        "2",
                        "--task-duration",
                        "1h",
                    ][..],
                    &common[..],
                ]
                .concat(),
            );
            (child, out)
        })
        .collect();
    let short_workers = fleet_size - VICTIMS - 1;
    let mut fleet: Vec<(Child, PathBuf, PathBuf)> = (0..short_workers)
        .map(|n| {
            spawn_isolated_worker(
                dir.path(),
                &format!("fleet-{n}"),
                &db,
                &[
                    &[
                        "--tasks",
                        &FLEET_TASKS.to_string(),
                        "--concurrency",
                        "2",
                        "--task-duration",
                        "1s",
                    ][..],
                    &common[..],
                ]
                .concat(),
            )
        })
        .collect();
    let spawned_in = started_at.elapsed();

    // Kill the victims mid-run: each has two tasks running.
    let mut victim_tasks: BTreeSet<String> = BTreeSet::new();
    let mut killed_at: BTreeMap<String, f64> = BTreeMap::new();
    for (child, out) in &mut victims {
        wait_for_starts(out, 2, Duration::from_secs(120));
        sigkill(child);
        let at = epoch_now();
        for id in ids_after(&read(out), "starting ") {
            killed_at.insert(id.clone(), at);
            victim_tasks.insert(id);
        }
    }
    assert_eq!(victim_tasks.len(), 2 * VICTIMS);

    // Every short worker ends on its own, successfully.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut fleet_done_at = Duration::ZERO;
    let mut fleet_finished: BTreeSet<String> = BTreeSet::new();
    let mut fleet_started: BTreeSet<String> = BTreeSet::new();
    let mut all_stdout = String::new();
    let mut retried_upkeep = 0;
    for (n, (child, out, err)) in fleet.iter_mut().enumerate() {
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "fleet worker {n} still running after 300 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = read(out);
        let stderr = read(err);
        assert!(
            status.success(),
            "fleet worker {n} exited {status}: {stdout}\n{stderr}"
        );
        assert_no_connection_errors(&stderr, &format!("fleet worker {n}"));
        retried_upkeep += stderr.matches("failed (retrying)").count();
        assert_eq!(
            ids_after(&stdout, "starting ").len(),
            FLEET_TASKS,
            "{stdout}"
        );
        fleet_started.extend(ids_after(&stdout, "starting "));
        fleet_finished.extend(ids_after(&stdout, "finished "));
        all_stdout.push_str(&stdout);
        fleet_done_at = fleet_done_at.max(started_at.elapsed());
    }
    assert_eq!(
        fleet_started, fleet_finished,
        "every fleet task ended with its outcome"
    );

    // The victims' tasks: interrupted within lease + sweep interval of the
    // kill (a slack of 5 s for a sweep on a loaded machine).
    let bound = LEASE + SWEEP + 5.0;
    let recovery_deadline = Instant::now() + Duration::from_secs_f64(bound + 30.0);
    loop {
        let rows = setup.rows();
        if victim_tasks
            .iter()
            .all(|id| rows.get(id).is_some_and(|row| row.0 == "interrupted"))
        {
            break;
        }
        assert!(
            Instant::now() < recovery_deadline,
            "the victims' tasks were not all recovered: {:?}",
            victim_tasks
                .iter()
                .map(|id| rows.get(id))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The sentinel ends with both tasks its own.
    let status = sentinel.wait().expect("sentinel");
    let sentinel_stdout = read(&sentinel_out);
    let sentinel_stderr = read(&sentinel_err);
    assert!(
        status.success(),
        "the sentinel exited {status}: {sentinel_stdout}\n{sentinel_stderr}"
    );
    assert_no_connection_errors(&sentinel_stderr, "the sentinel");
    all_stdout.push_str(&sentinel_stdout);
    let sentinel_tasks = ids_after(&sentinel_stdout, "starting ");
    assert_eq!(sentinel_tasks.len(), 2);
    assert_eq!(
        ids_after(&sentinel_stdout, "finished ").len(),
        2,
        "{sentinel_stdout}\n{sentinel_stderr}"
    );

    let rows = setup.rows();
    for id in &sentinel_tasks {
        assert_eq!(
            rows[id].0, "success",
            "the live worker's task {id} was touched"
        );
    }
    for id in &fleet_started {
        assert_ne!(
            rows[id].0, "interrupted",
            "a live worker's task {id} was interrupted"
        );
        assert_ne!(rows[id].0, "running", "task {id} was left running");
    }
    let mut worst = 0.0_f64;
    for id in &victim_tasks {
        let row = &rows[id];
        assert_eq!(row.0, "interrupted");
        let waited = row.2.expect("interrupted_at") - killed_at[id];
        worst = worst.max(waited);
    }
    // Exactly one [recovery] line per victim task, across every worker.
    for id in &victim_tasks {
        let reports = all_stdout
            .lines()
            .filter(|line| line.starts_with("[recovery] ") && line.contains(id.as_str()))
            .count();
        assert_eq!(reports, 1, "task {id} reported {reports} time(s)");
    }
    assert_eq!(
        all_stdout
            .lines()
            .filter(|line| line.starts_with("[recovery] "))
            .count(),
        victim_tasks.len(),
        "only the victims' tasks were recovered"
    );
    let interrupted = rows.values().filter(|row| row.0 == "interrupted").count();
    assert_eq!(interrupted, victim_tasks.len());
    let running = rows.values().filter(|row| row.0 == "running").count();
    assert_eq!(running, 0);
    assert!(
        worst <= bound,
        "a victim's task was recovered {worst:.1} s after the kill (bound {bound} s)"
    );
    let server_connections =
        setup.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'");
    let fleet_tasks = fleet_started.len();
    println!(
        "fleet: {fleet_size} worker processes ({short_workers} short, {VICTIMS} SIGKILLed, 1 long-running) through PgBouncer \
         (max_connections 40, at most 20 server connections): spawned in {:.1} s; {fleet_tasks} short tasks (1 s each, 2 at a time per worker, {FLEET_TASKS} per worker) \
         done in {:.1} s = {:.1} tasks/s; victims' tasks recovered at most {worst:.1} s after the kill (bound {bound} s = lease {LEASE} s + sweep {SWEEP} s + 5 s); \
         {retried_upkeep} upkeep retries; {server_connections} client backends on the server at the end",
        spawned_in.as_secs_f64(),
        fleet_done_at.as_secs_f64(),
        fleet_tasks as f64 / fleet_done_at.as_secs_f64(),
    );
}
