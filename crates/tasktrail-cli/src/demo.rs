//! `tasktrail demo`: the seed issue's incident, end to end, on a temporary
//! database. A worker process starts tasks, is SIGKILLed mid-task (as `just
//! restart` did to #1104), and the next worker's boot recovers them.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tasktrail::{SqliteStorage, Storage, TaskFilter};

use crate::output::{session_table, task_table, write_table, SESSION_HEADER, TASK_HEADER};
use crate::CliResult;

const TASKS: usize = 3;

pub(crate) fn run() -> CliResult<ExitCode> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("trail.db");
    let exe = std::env::current_exe()?;
    let mut out = std::io::stdout().lock();

    writeln!(
        out,
        "== 1. a worker starts {TASKS} long tasks on a fresh database ({})",
        db.display()
    )?;
    let mut first = Command::new(&exe)
        .arg("--db")
        .arg(&db)
        .args([
            "worker",
            "--tasks",
            "3",
            "--concurrency",
            "3",
            "--task-duration",
            "10m",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = first
        .stdout
        .take()
        .ok_or("the worker's stdout is not captured")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut started = 0;
    while started < TASKS {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(out, "   worker 1 | {line}")?;
                out.flush()?;
                if line.starts_with("starting ") {
                    started += 1;
                }
            }
            Err(_) => {
                let _ = first.kill();
                let _ = first.wait();
                return Err(format!(
                    "the first worker started {started} of {TASKS} tasks before the demo gave up"
                )
                .into());
            }
        }
    }

    // Let the tasks run a little, so the hints have something to say.
    std::thread::sleep(Duration::from_secs(2));
    writeln!(
        out,
        "== 2. SIGKILL the worker mid-task (pid {}), as a restart would",
        first.id()
    )?;
    first.kill()?;
    first.wait()?;
    writeln!(
        out,
        "   the rows are there, still `running`: nothing was lost"
    )?;
    print_tables(&mut out, &db, false)?;

    writeln!(
        out,
        "== 3. a new worker boots; its recovery sweep finds the dead worker's rows"
    )?;
    let second = Command::new(&exe)
        .arg("--db")
        .arg(&db)
        .args(["worker", "--tasks", "0"])
        .stdin(Stdio::null())
        .output()?;
    for line in String::from_utf8_lossy(&second.stdout).lines() {
        writeln!(out, "   worker 2 | {line}")?;
    }
    if !second.status.success() {
        return Err(format!(
            "the second worker failed: {}",
            String::from_utf8_lossy(&second.stderr).trim()
        )
        .into());
    }

    writeln!(
        out,
        "== 4. task_history after recovery: interrupted, finished_at NULL; sessions invalidated"
    )?;
    print_tables(&mut out, &db, true)?;
    Ok(ExitCode::SUCCESS)
}

fn print_tables(out: &mut dyn Write, db: &Path, with_sessions: bool) -> CliResult<()> {
    let store = SqliteStorage::open(db)?;
    let rows = store.list_tasks(&TaskFilter::default())?;
    write_table(out, &TASK_HEADER, &task_table(&rows))?;
    if with_sessions {
        writeln!(out)?;
        write_table(
            out,
            &SESSION_HEADER,
            &session_table(&store.list_sessions()?),
        )?;
    }
    Ok(())
}
