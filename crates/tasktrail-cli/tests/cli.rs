//! The real `tasktrail` binary, end to end, on temporary databases.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tasktrail(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("TASKTRAIL_DB")
        .stdin(Stdio::null())
        .output()
        .expect("run tasktrail")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit code 1, exactly one line on stderr, naming the problem.
fn assert_one_line_error(output: &Output, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {} stderr: {}",
        stdout(output),
        stderr(output)
    );
    let err = stderr(output);
    assert_eq!(err.lines().count(), 1, "one line expected, got: {err:?}");
    assert!(err.starts_with("tasktrail: error: "), "{err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err:?}");
}

fn list_json(db: &Path) -> Vec<serde_json::Value> {
    let output = tasktrail(db, &["list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).expect("json array")
}

/// Spawns a worker and waits until it printed `starting` `count` times.
fn worker_with_started_tasks(db: &Path, count: usize) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .arg("--db")
        .arg(db)
        .args([
            "worker",
            "--tasks",
            &count.to_string(),
            "--concurrency",
            &count.to_string(),
            "--task-duration",
            "5m",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < count && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(id) = line.strip_prefix("starting ") {
                    ids.push(id.to_owned());
                }
            }
            _ => break,
        }
    }
    assert_eq!(ids.len(), count, "the worker did not start its tasks");
    // Keep the pipe open so the worker never blocks or dies on SIGPIPE.
    std::mem::forget(lines);
    (child, ids)
}

#[test]
fn migrate_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let first = tasktrail(&db, &["migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = tasktrail(&db, &["migrate"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("up to date"),
        "{}",
        stdout(&second)
    );
}

#[test]
fn a_worker_runs_tasks_and_every_row_ends_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let output = tasktrail(
        &db,
        &[
            "worker",
            "--tasks",
            "3",
            "--concurrency",
            "2",
            "--task-duration",
            "10ms",
            "--fail-rate",
            "0.5",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let starting: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("starting "))
        .collect();
    let finished: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("finished "))
        .collect();
    assert_eq!(starting.len(), 3, "{text}");
    assert_eq!(finished.len(), 3, "{text}");
    for id in &starting {
        assert!(
            finished
                .iter()
                .any(|l| l.contains(id) && (l.ends_with(" success") || l.ends_with(" failure"))),
            "{text}"
        );
    }
    let rows = list_json(&db);
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let status = row["status"].as_str().expect("status");
        assert!(status == "success" || status == "failure", "{row}");
        assert!(
            row["finished_at"].is_string() && row["cost_usd"].is_number(),
            "{row}"
        );
        for column in [
            "id",
            "repo",
            "issue_number",
            "user",
            "agent",
            "agent_type",
            "model",
            "provider",
            "worker_id",
            "started_at",
            "input_tokens",
            "output_tokens",
            "turns",
            "artifacts",
            "interrupted_at",
            "interrupt_reason",
            "interrupted_by",
        ] {
            assert!(
                row.get(column).is_some(),
                "column {column} missing in {row}"
            );
        }
    }
    let id = rows[0]["id"].as_str().expect("id");
    let show = tasktrail(&db, &["show", id, "--json"]);
    assert!(show.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(shown, rows[0]);
    let sessions = tasktrail(&db, &["sessions", "--json"]);
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&sessions.stdout).expect("json");
    assert_eq!(sessions.len(), 3);
}

#[test]
fn bad_input_gets_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    assert!(tasktrail(&db, &["migrate"]).status.success());
    assert_one_line_error(
        &tasktrail(&db, &["list", "--status", "bogus"]),
        "unknown task status",
    );
    assert_one_line_error(&tasktrail(&db, &["show", "not-a-uuid"]), "is not a UUID");
    assert_one_line_error(
        &tasktrail(&db, &["show", "ca432f8f-d29e-4cab-8d42-22db730c9419"]),
        "no task_history row",
    );
    assert_one_line_error(
        &tasktrail(&db, &["worker", "--fail-rate", "1.5"]),
        "--fail-rate",
    );
    assert_one_line_error(
        &tasktrail(&db, &["worker", "--task-duration", "soon"]),
        "--task-duration",
    );
    assert_one_line_error(
        &tasktrail(&db, &["worker", "--panic-rate", "2"]),
        "--panic-rate",
    );
    assert_one_line_error(
        &tasktrail(&db, &["worker", "--sweep-interval", "0s"]),
        "--sweep-interval",
    );
    assert_one_line_error(
        &tasktrail(&db, &["worker", "--heartbeat-interval", "soon"]),
        "--heartbeat-interval",
    );
    assert_one_line_error(
        &tasktrail(&db, &["worker", "--stop-deadline", "whenever"]),
        "--stop-deadline",
    );
    assert!(list_json(&db).is_empty(), "nothing was written");

    let usage = tasktrail(&db, &["list", "--limit", "0"]);
    assert_eq!(usage.status.code(), Some(2));
    assert_eq!(stderr(&usage).lines().count(), 1, "{}", stderr(&usage));
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notes = dir.path().join("notes.txt");
    let content = "not a database\n".repeat(300);
    std::fs::write(&notes, &content).expect("write");
    assert_one_line_error(
        &tasktrail(&notes, &["list"]),
        "not a usable SQLite database",
    );
    assert_eq!(std::fs::read_to_string(&notes).expect("read"), content);
    assert_one_line_error(
        &tasktrail(Path::new("oracle://scott@db/x"), &["list"]),
        "unsupported scheme",
    );
}

#[test]
fn a_password_in_the_url_never_shows() {
    // Every form a password takes, against a server that is not there
    // (port 1) and one that refuses (no such role or database).
    let forms = [
        "mysql://app:secretpw@127.0.0.1:1/trail",
        "mysql://app:secretpw@127.0.0.1:3306/no_such_db",
        "mariadb://app:secr%65tpw@127.0.0.1:1/trail",
        "postgres://app:secretpw@127.0.0.1:1/trail",
        "postgres://app:secretpw@127.0.0.1:5432/no_such_db",
        "postgresql://app:secr%65tpw@127.0.0.1:1/trail",
        "postgres://127.0.0.1:5432/no_such_db?user=app&password=secretpw",
        "postgres://127.0.0.1:1/trail?user=app&pass%77ord=secretpw",
        "host=127.0.0.1 port=1 user=app password=secretpw dbname=trail",
        "host=127.0.0.1 port=5432 user=app password = 'secretpw' dbname=no_such_db",
    ];
    let commands: [&[&str]; 5] = [
        &["migrate"],
        &["list"],
        &["recover"],
        &["worker", "--tasks", "1"],
        &["show", "01890a5d-ac96-774b-bcce-b302099a8057"],
    ];
    // A URL given where an argument is not expected: the usage error
    // does not echo its password either.
    for form in forms {
        let misplaced = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
            .args(["list", form])
            .env_remove("TASKTRAIL_DB")
            .output()
            .expect("run");
        assert_eq!(misplaced.status.code(), Some(2), "{form}");
        assert!(
            !stderr(&misplaced).contains("secr"),
            "{form}: {}",
            stderr(&misplaced)
        );
    }
    for form in forms {
        for command in commands {
            let output = tasktrail(Path::new(form), command);
            assert_ne!(output.status.code(), Some(0), "{form} {command:?}");
            for text in [stderr(&output), stdout(&output)] {
                assert!(!text.contains("secretpw"), "{form} {command:?}: {text}");
                assert!(!text.contains("secr%65tpw"), "{form} {command:?}: {text}");
            }
            assert_eq!(stderr(&output).lines().count(), 1, "{form} {command:?}");
        }
    }
    let help = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .arg("--help")
        .env("TASKTRAIL_DB", "postgres://app:secretpw@127.0.0.1:1/trail")
        .output()
        .expect("help");
    assert!(help.status.success());
    assert!(!stdout(&help).contains("secretpw"), "{}", stdout(&help));
}

#[test]
fn sigterm_finishes_in_flight_tasks_as_interrupted_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let (mut child, ids) = worker_with_started_tasks(&db, 2);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    let rows = list_json(&db);
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(ids.contains(&row["id"].as_str().expect("id").to_owned()));
        assert_eq!(row["status"], "interrupted", "{row}");
        assert_eq!(row["interrupt_reason"], "worker received SIGTERM");
        assert!(
            row["finished_at"].is_null() && row["cost_usd"].is_null(),
            "{row}"
        );
    }
}

#[test]
fn sigkill_leaves_running_rows_that_the_next_boot_recovers_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let (mut child, ids) = worker_with_started_tasks(&db, 2);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let rows = list_json(&db);
    assert!(
        rows.iter().all(|row| row["status"] == "running"),
        "rows survive a SIGKILL as running"
    );

    let boot = tasktrail(&db, &["worker", "--tasks", "0"]);
    assert!(boot.status.success(), "{}", stderr(&boot));
    let text = stdout(&boot);
    let hints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[recovery] "))
        .collect();
    assert_eq!(hints.len(), ids.len(), "{text}");
    for id in &ids {
        assert_eq!(
            hints.iter().filter(|h| h.contains(id.as_str())).count(),
            1,
            "{text}"
        );
    }
    assert!(list_json(&db)
        .iter()
        .all(|row| row["status"] == "interrupted"));

    let again = tasktrail(&db, &["worker", "--tasks", "0"]);
    assert!(
        !stdout(&again).contains("[recovery]"),
        "reported once: {}",
        stdout(&again)
    );
}

/// `processes` `tasktrail recover` processes started at once over the
/// orphans of three SIGKILLed workers: every one exits 0, each orphan's
/// `[recovery]` line is printed by exactly one of them, their counts add up
/// to the orphans, and every row ends `interrupted`. Kills the SQLite sweep
/// losing `BEGIN IMMEDIATE` (a deferred transaction fails the later writer,
/// `database is locked`).
/// Repeated: a sweep is short, and the processes must overlap inside
/// their transactions for a broken sweep to show.
fn concurrent_recover_processes_report_each_orphan_exactly_once(processes: usize) {
    for _ in 0..10 {
        concurrent_recover_round(processes);
    }
}

fn concurrent_recover_round(processes: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    // All three run before any is killed: a worker's boot sweep would
    // recover an earlier one's rows.
    let mut orphans = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (child, ids) = worker_with_started_tasks(&db, 3);
        workers.push(child);
        orphans.extend(ids);
    }
    for mut child in workers {
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }
    let children: Vec<Child> = (0..processes)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_tasktrail"))
                .arg("--db")
                .arg(&db)
                .arg("recover")
                .env_remove("TASKTRAIL_DB")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn recover")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().expect("recover"))
        .collect();
    let mut marked = 0;
    for output in &outputs {
        assert!(
            output.status.success(),
            "every recover succeeds: {}",
            stderr(output)
        );
        let text = stdout(output);
        let count = text
            .lines()
            .find_map(|line| line.strip_suffix(" task(s) marked interrupted"))
            .unwrap_or_else(|| panic!("no count line: {text}"));
        marked += count.parse::<usize>().expect("a count");
    }
    assert_eq!(marked, orphans.len(), "the counts add up to the orphans");
    for id in &orphans {
        let printed_by = outputs
            .iter()
            .filter(|output| {
                stdout(output)
                    .lines()
                    .any(|line| line.contains("[recovery]") && line.contains(id.as_str()))
            })
            .count();
        assert_eq!(printed_by, 1, "{id} reported by exactly one process");
    }
    let rows = list_json(&db);
    assert_eq!(rows.len(), orphans.len());
    assert!(rows.iter().all(|row| row["status"] == "interrupted"));
}

#[test]
fn two_concurrent_recover_processes_report_each_orphan_exactly_once() {
    concurrent_recover_processes_report_each_orphan_exactly_once(2);
}

#[test]
fn four_concurrent_recover_processes_report_each_orphan_exactly_once() {
    concurrent_recover_processes_report_each_orphan_exactly_once(4);
}

#[test]
fn recover_dry_run_changes_nothing_and_recover_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let (mut child, ids) = worker_with_started_tasks(&db, 1);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let dry = tasktrail(&db, &["recover", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains(&ids[0]) && stdout(&dry).contains("nothing changed"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(list_json(&db)[0]["status"], "running");
    let applied = tasktrail(&db, &["recover"]);
    assert!(
        stdout(&applied).contains("1 task(s) marked interrupted"),
        "{}",
        stdout(&applied)
    );
    assert_eq!(list_json(&db)[0]["status"], "interrupted");
}

#[test]
fn demo_shows_the_incident_and_its_recovery() {
    let output = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .arg("demo")
        .env_remove("TASKTRAIL_DB")
        .output()
        .expect("demo");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(
        text.lines().filter(|l| l.contains("| [recovery] ")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("interrupted"), "{text}");
}

/// Runs raw SQL on a SQLite file, as another program writing the table.
fn sqlite_exec(db: &Path, sql: &str) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut connection =
        diesel::SqliteConnection::establish(db.to_str().expect("utf-8 path")).expect("open");
    connection.batch_execute(sql).expect("sql");
}

#[test]
fn rows_written_with_sqlite_s_own_time_format_are_listed_shown_and_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    // A finished row and a running one, then their times rewritten the way
    // SQLite's datetime() / CURRENT_TIMESTAMP (and Diesel's SQLite text)
    // write them: no `T`, no zone, with and without a fraction.
    let (mut child, ids) = worker_with_started_tasks(&db, 2);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    sqlite_exec(
        &db,
        &format!(
            "UPDATE task_history SET started_at = '2026-05-11 15:13:00' WHERE id = '{}';
             UPDATE task_history SET started_at = '2026-05-11 15:14:00.250' WHERE id = '{}';",
            ids[0], ids[1]
        ),
    );
    let rows = list_json(&db);
    assert_eq!(rows.len(), 2);
    let started: Vec<&str> = rows
        .iter()
        .map(|row| row["started_at"].as_str().expect("a time"))
        .collect();
    assert!(
        started.contains(&"2026-05-11T15:13:00.000000Z"),
        "{started:?}"
    );
    assert!(
        started.contains(&"2026-05-11T15:14:00.250000Z"),
        "{started:?}"
    );
    let show = tasktrail(&db, &["show", &ids[0]]);
    assert!(show.status.success(), "{}", stderr(&show));
    // The next boot recovers them like any other row.
    let boot = tasktrail(&db, &["worker", "--tasks", "0"]);
    assert!(boot.status.success(), "{}", stderr(&boot));
    let hints = stdout(&boot);
    assert_eq!(
        hints
            .lines()
            .filter(|l| l.starts_with("[recovery] "))
            .count(),
        2,
        "{hints}"
    );
    assert!(list_json(&db)
        .iter()
        .all(|row| row["status"] == "interrupted"));
}

#[test]
fn list_prints_every_readable_row_and_names_each_unreadable_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    assert!(tasktrail(&db, &["migrate"]).status.success());
    // 100 finished rows written by another program, one of them with a
    // time nobody can read.
    let mut sql = String::new();
    for n in 0..100 {
        let started = if n == 42 {
            "the day before yesterday".to_owned()
        } else {
            format!("2026-05-11T15:{:02}:{:02}.000000Z", n / 60, n % 60)
        };
        sql.push_str(&format!(
            "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, \
             provider, status, started_at, finished_at) VALUES ('00000000-0000-7000-8000-{n:012}', \
             'acme/widgets', {}, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', \
             'success', '{started}', '2026-05-11T16:00:00.000000Z');\n",
            n + 1
        ));
    }
    sqlite_exec(&db, &sql);
    for json in [false, true] {
        let mut args = vec!["list", "--limit", "200"];
        if json {
            args.push("--json");
        }
        let output = tasktrail(&db, &args);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("00000000-0000-7000-8000-000000000042"),
            "{err}"
        );
        assert!(err.contains("started_at"), "{err}");
        let out = stdout(&output);
        if json {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
            assert_eq!(rows.len(), 99);
        } else {
            assert_eq!(out.lines().count(), 100, "a header and 99 rows: {out}");
        }
    }
}

#[test]
fn migrate_names_adopt_for_a_pre_fix_database_and_adopt_upgrades_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("theirs.db");
    sqlite_exec(
        &db,
        "CREATE TABLE task_history (id TEXT PRIMARY KEY NOT NULL, repo TEXT NOT NULL,
            issue_number INTEGER NOT NULL, user TEXT NOT NULL, agent TEXT NOT NULL,
            agent_type TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
            status TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
            input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, turns INTEGER,
            artifacts TEXT);
         INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model,
            provider, status, started_at, finished_at) VALUES
            ('01890a5d-ac96-774b-bcce-b302099a8057', 'acme/widgets', 1104, 'alice', 'fixer',
             'claude_sdk', 'claude-opus', 'anthropic', 'success', '2026-05-11 15:13:00',
             '2026-05-11 15:49:00');",
    );
    let refused = tasktrail(&db, &["migrate"]);
    assert_one_line_error(&refused, "--adopt");
    let listed = tasktrail(&db, &["list"]);
    assert_one_line_error(&listed, "--adopt");

    let adopted = tasktrail(&db, &["migrate", "--adopt"]);
    assert!(adopted.status.success(), "{}", stderr(&adopted));
    assert!(stdout(&adopted).contains("adopted"), "{}", stdout(&adopted));
    let rows = list_json(&db);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["started_at"], "2026-05-11T15:13:00.000000Z");
    assert_eq!(rows[0]["status"], "success");
    // A second adoption is refused; a plain migrate has nothing to do.
    let again = tasktrail(&db, &["migrate", "--adopt"]);
    assert_one_line_error(&again, "already");
    assert!(tasktrail(&db, &["migrate"]).status.success());
}

#[test]
fn show_of_an_unreadable_row_prints_what_the_database_holds_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    assert!(tasktrail(&db, &["migrate"]).status.success());
    let id = "00000000-0000-7000-8000-000000000042";
    sqlite_exec(
        &db,
        &format!(
            "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, \
             provider, status, started_at, finished_at) VALUES ('{id}', 'acme/widgets', 42, \
             'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success', \
             'the day before yesterday', NULL);"
        ),
    );
    let output = tasktrail(&db, &["show", id]);
    assert_one_line_error(&output, "started_at");
    let out = stdout(&output);
    assert!(out.contains("the day before yesterday"), "{out}");
    assert!(out.contains("acme/widgets"), "{out}");
    assert!(out.contains("finished_at: NULL"), "{out}");
    let json = tasktrail(&db, &["show", id, "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["started_at"], "the day before yesterday");
    assert_eq!(value["issue_number"], "42");
}

#[test]
fn a_closed_output_pipe_ends_a_command_with_exit_1_and_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    assert!(tasktrail(&db, &["migrate"]).status.success());
    // Far more output than a pipe buffer (64 KiB) holds, in either form,
    // so the writer is still writing when `head` is gone.
    let mut sql = String::new();
    for n in 0..3000 {
        sql.push_str(&format!(
            "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, \
             provider, status, started_at, finished_at) VALUES ('00000000-0000-7000-8000-{n:012}', \
             'acme/widgets', {}, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', \
             'success', '2026-05-11T15:13:00.000000Z', '2026-05-11T16:00:00.000000Z');\n",
            n + 1
        ));
    }
    sqlite_exec(&db, &sql);
    for args in ["list --limit 5000 --json", "list --limit 5000"] {
        let script = format!(
            "'{}' --db '{}' {args} 2>&1 | head -1 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_tasktrail"),
            db.display()
        );
        let output = Command::new("bash")
            .args(["-c", &script])
            .output()
            .expect("bash");
        assert_eq!(stdout(&output).trim(), "1", "{args}: {}", stderr(&output));
    }
}

#[test]
fn prune_deletes_old_final_rows_keeps_running_ones_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let (mut child, running) = worker_with_started_tasks(&db, 1);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // Three finished rows: two ended long ago, one yesterday; the running
    // row started long ago.
    let mut sql = String::new();
    for (n, ended) in [
        "2025-01-01T00:00:00.000000Z",
        "2025-02-01T00:00:00.000000Z",
        "2099-01-01T00:00:00.000000Z",
    ]
    .iter()
    .enumerate()
    {
        sql.push_str(&format!(
            "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, \
             provider, status, started_at, finished_at) VALUES ('00000000-0000-7000-8000-{n:012}', \
             'acme/widgets', {}, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', \
             'success', '2025-01-01T00:00:00.000000Z', '{ended}');\n",
            n + 1
        ));
    }
    sql.push_str(&format!(
        "UPDATE task_history SET started_at = '2020-01-01T00:00:00.000000Z' WHERE id = '{}';",
        running[0]
    ));
    sqlite_exec(&db, &sql);
    for bad in [
        &["prune", "--older-than", "soon"][..],
        &["prune", "--older-than", "30d", "--status", "running"],
        &["prune", "--older-than", "30d", "--status", "sleeping"],
        &["prune", "--older-than", "30d", "--batch-size", "0"],
    ] {
        let output = tasktrail(&db, bad);
        assert_one_line_error(&output, "");
        assert_eq!(list_json(&db).len(), 4, "{bad:?} wrote nothing");
    }
    let dry = tasktrail(&db, &["prune", "--older-than", "30d", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("would delete 2 task(s)"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(list_json(&db).len(), 4, "a dry run deletes nothing");
    let pruned = tasktrail(&db, &["prune", "--older-than", "30d", "--batch-size", "1"]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    let left: Vec<String> = list_json(&db)
        .iter()
        .map(|row| row["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&running[0]), "the running row stays");
}

#[test]
fn read_only_commands_create_nothing_migrate_nothing_and_work_on_a_read_only_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A mistyped path: refused, and no file appears.
    let typo = dir.path().join("typo.db");
    for args in [
        &["show", "01890a5d-ac96-774b-bcce-b302099a8057"][..],
        &["list"],
        &["sessions"],
        &["recover", "--dry-run"],
        &["stats"],
        &["stats", "--json"],
    ] {
        let output = tasktrail(&typo, args);
        assert_one_line_error(&output, "no database file");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // A database one migration behind: refused, named, and left as it was.
    let old = dir.path().join("old.db");
    sqlite_exec(
        &old,
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL,
            run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
         INSERT INTO __diesel_schema_migrations (version) VALUES ('20260501000000');
         CREATE TABLE task_history (id TEXT PRIMARY KEY NOT NULL, repo TEXT NOT NULL,
            issue_number INTEGER NOT NULL, user TEXT NOT NULL, agent TEXT NOT NULL,
            agent_type TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
            status TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
            input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, turns INTEGER,
            artifacts TEXT);",
    );
    let before = std::fs::read(&old).expect("read");
    for args in [
        &["list"][..],
        &["recover", "--dry-run"],
        &["stats", "--json"],
    ] {
        let output = tasktrail(&old, args);
        assert_one_line_error(&output, "needs migration");
        assert_eq!(
            std::fs::read(&old).expect("read"),
            before,
            "{args:?} changed it"
        );
    }
    // A WAL database on a read-only bind mount (root only, as in CI).
    let live = dir.path().join("live");
    std::fs::create_dir(&live).expect("dir");
    let db = live.join("t.db");
    let (mut child, ids) = worker_with_started_tasks(&db, 1);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let mount = dir.path().join("ro");
    std::fs::create_dir(&mount).expect("dir");
    let bound = Command::new("mount")
        .args(["--bind"])
        .arg(&live)
        .arg(&mount)
        .status()
        .expect("mount");
    if !bound.success() {
        // CI runs as root and sets the namespaces variable: there, this part
        // must run.
        assert!(
            std::env::var_os("TASKTRAIL_TEST_NAMESPACES").is_none(),
            "mount --bind failed where root is promised"
        );
        eprintln!("skipped the read-only mount: mount --bind needs root");
        return;
    }
    let remounted = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&mount)
        .status()
        .expect("remount");
    let read_only_db = mount.join("t.db");
    let output = tasktrail(&read_only_db, &["list", "--json"]);
    let show = tasktrail(&read_only_db, &["show", &ids[0]]);
    let stats = tasktrail(&read_only_db, &["stats", "--json"]);
    let _ = Command::new("umount").arg(&mount).status();
    assert!(remounted.success());
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows.len(), 1);
    assert!(show.status.success(), "{}", stderr(&show));
    assert!(stats.status.success(), "{}", stderr(&stats));
}

/// One number from the database, by SQL the binary never runs.
fn sqlite_count(db: &Path, sql: &str) -> u64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut connection =
        diesel::SqliteConnection::establish(db.to_str().expect("utf-8 path")).expect("open");
    diesel::sql_query(sql)
        .get_result::<Count>(&mut connection)
        .expect("count")
        .n as u64
}

#[test]
fn stats_figures_equal_counts_taken_with_sql_in_json_and_in_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    // A worker killed with a task running, then one that runs tasks of
    // which some fail and some panic (abandoned), and whose boot sweeps the
    // first one's row.
    let (mut child, running) = worker_with_started_tasks(&db, 1);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let output = tasktrail(
        &db,
        &[
            "worker",
            "--tasks",
            "12",
            "--concurrency",
            "4",
            "--task-duration",
            "10ms",
            "--fail-rate",
            "0.4",
            "--panic-rate",
            "0.3",
            "--heartbeat-interval",
            "100ms",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // One more killed worker whose row stays running.
    let (mut child, still_running) = worker_with_started_tasks(&db, 2);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    let output = tasktrail(&db, &["stats", "--json", "--since", "1h"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let object = stats.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "durations",
            "interrupted",
            "now",
            "rows_by_status",
            "running"
        ]
    );
    for status in [
        "running",
        "success",
        "failure",
        "cancelled",
        "interrupted",
        "aborted_no_skill",
    ] {
        assert_eq!(
            stats["rows_by_status"][status].as_u64(),
            Some(sqlite_count(
                &db,
                &format!("SELECT COUNT(*) AS n FROM task_history WHERE status = '{status}'")
            )),
            "{status}"
        );
        if status != "running" {
            let figures = &stats["durations"]["by_status"][status];
            assert_eq!(
                figures["rows"].as_u64(),
                Some(sqlite_count(
                    &db,
                    &format!(
                        "SELECT COUNT(*) AS n FROM task_history WHERE status = '{status}' \
                         AND COALESCE(finished_at, interrupted_at) IS NOT NULL"
                    )
                )),
                "{status}"
            );
            assert_eq!(figures["median_ms"].is_null(), figures["rows"] == 0);
            assert_eq!(figures["p95_ms"].is_null(), figures["rows"] == 0);
            if let (Some(median), Some(p95)) =
                (figures["median_ms"].as_i64(), figures["p95_ms"].as_i64())
            {
                assert!(0 <= median && median <= p95, "{figures}");
            }
        }
    }
    assert_eq!(stats["durations"]["window_seconds"], 3600);
    // Running rows: the second killed worker's two.
    let owners = stats["running"].as_array().expect("array");
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0]["rows"], 2);
    assert_eq!(owners[0]["state"], "alive");
    let owner = owners[0]["worker_id"].as_str().expect("worker id");
    assert_eq!(
        sqlite_count(
            &db,
            &format!(
                "SELECT COUNT(*) AS n FROM task_history WHERE status = 'running' \
                 AND worker_id = '{owner}' AND id IN ('{}', '{}')",
                still_running[0], still_running[1]
            )
        ),
        2
    );
    assert!(owners[0]["oldest_age_ms"].as_i64().expect("age") >= 0);
    // Causes: every cause a key; the sweep's, the abandoned rows', in all
    // what SQL counts.
    let causes = stats["interrupted"]["by_cause"]
        .as_object()
        .expect("causes");
    assert_eq!(causes.len(), 12, "{causes:?}");
    let total: u64 = causes.values().map(|n| n.as_u64().expect("count")).sum();
    assert_eq!(
        total,
        sqlite_count(
            &db,
            "SELECT COUNT(*) AS n FROM task_history WHERE status = 'interrupted'"
        )
    );
    assert_eq!(
        causes["abandoned"].as_u64(),
        Some(sqlite_count(
            &db,
            "SELECT COUNT(*) AS n FROM task_history WHERE status = 'interrupted' \
             AND interrupted_by = worker_id AND interrupt_reason LIKE 'abandoned:%'"
        ))
    );
    assert_eq!(
        sqlite_count(
            &db,
            &format!(
                "SELECT COUNT(*) AS n FROM task_history WHERE id = '{}' \
                 AND status = 'interrupted' AND interrupted_by <> worker_id",
                running[0]
            )
        ),
        1,
        "the first killed worker's row was swept"
    );
    assert_eq!(
        causes["process_gone"].as_u64().expect("count")
            + causes["lock_released"].as_u64().expect("count"),
        1,
        "{causes:?}"
    );

    let text = tasktrail(&db, &["stats"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let out = stdout(&text);
    for heading in [
        "rows by status",
        "running rows by worker (oldest first)",
        "interrupted in the last 24h",
        "durations of rows that ended in the last 7days",
    ] {
        assert!(out.contains(heading), "{heading}: {out}");
    }
    assert!(out.contains(owner), "{out}");
}

#[test]
fn stats_refuses_a_bad_since_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    for since in ["soon", "0", "-1", "200years", ""] {
        let output = tasktrail(&db, &["stats", &format!("--since={since}")]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{since}: {}",
            stderr(&output)
        );
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{since}: {err:?}");
        assert!(err.starts_with("tasktrail: error: "), "{err:?}");
        assert!(err.contains("--since"), "{err:?}");
        assert!(stdout(&output).is_empty());
        assert!(!db.exists(), "{since}: nothing was opened");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn stats_on_postgres_counts_what_list_shows() {
    let Some(scratch) = tasktrail::testing::ScratchDatabase::create() else {
        return;
    };
    let url = Path::new(scratch.url());
    let output = tasktrail(
        url,
        &[
            "worker",
            "--tasks",
            "8",
            "--concurrency",
            "4",
            "--task-duration",
            "10ms",
            "--fail-rate",
            "0.5",
            "--panic-rate",
            "0.25",
            "--heartbeat-interval",
            "100ms",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = tasktrail(url, &["stats", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let rows = list_json(url);
    assert_eq!(rows.len(), 8);
    for status in ["success", "failure", "interrupted", "running"] {
        let listed = rows.iter().filter(|row| row["status"] == status).count() as u64;
        assert_eq!(
            stats["rows_by_status"][status].as_u64(),
            Some(listed),
            "{status}"
        );
        if status != "running" {
            assert_eq!(
                stats["durations"]["by_status"][status]["rows"].as_u64(),
                Some(listed),
                "{status}"
            );
        }
    }
    let interrupted = rows
        .iter()
        .filter(|row| row["status"] == "interrupted")
        .count() as u64;
    assert_eq!(
        stats["interrupted"]["by_cause"]["abandoned"].as_u64(),
        Some(interrupted),
        "every interrupted row here is a panicked (abandoned) task"
    );
}

#[test]
fn a_recovery_line_that_cannot_be_written_stays_owed_and_a_later_recover_prints_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let (mut child, ids) = worker_with_started_tasks(&db, 1);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // stdout on a full device: the sweep commits, its line cannot be
    // written.
    let script = format!(
        "'{}' --db '{}' recover --lease 1s >/dev/full; echo \"exit=$?\" >&2",
        env!("CARGO_BIN_EXE_tasktrail"),
        db.display()
    );
    let closed = Command::new("bash")
        .args(["-c", &script])
        .env("TASKTRAIL_LOG", "off")
        .output()
        .expect("bash");
    let text = stderr(&closed);
    assert!(text.contains("exit=1"), "{text}");
    assert!(text.contains("stay owed"), "{text}");
    assert_eq!(list_json(&db)[0]["status"], "interrupted");
    // Its sweep may still be printing: not taken over while younger than
    // the lease.
    let early = tasktrail(&db, &["recover", "--lease", "1s"]);
    assert!(early.status.success(), "{}", stderr(&early));
    assert!(
        !stdout(&early).contains("[recovery] "),
        "{}",
        stdout(&early)
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let later = tasktrail(&db, &["recover", "--lease", "1s"]);
    assert!(later.status.success(), "{}", stderr(&later));
    let printed = stdout(&later);
    let lines: Vec<&str> = printed
        .lines()
        .filter(|line| line.starts_with("[recovery] "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", stdout(&later));
    assert!(lines[0].contains(&ids[0]), "{}", lines[0]);
    let again = tasktrail(&db, &["recover", "--lease", "1s"]);
    assert!(!stdout(&again).contains("[recovery] "), "printed once");
}

/// A database named relative to the working directory (`--db t.db`, no
/// directory part) that has a second name beside it is refused like any
/// other: the check looks in the working directory.
#[test]
fn a_relative_database_name_with_a_hard_link_beside_it_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let migrated = tasktrail(&dir.path().join("t.db"), &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    std::fs::hard_link(dir.path().join("t.db"), dir.path().join("hard.db")).expect("hard link");
    let output = Command::new(env!("CARGO_BIN_EXE_tasktrail"))
        .args(["--db", "t.db", "list"])
        .current_dir(dir.path())
        .env_remove("TASKTRAIL_DB")
        .stdin(Stdio::null())
        .output()
        .expect("run tasktrail");
    assert_one_line_error(&output, "hard link");
}
