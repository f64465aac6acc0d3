//! `tasktrail`: the operator CLI. See `tasktrail --help` and README.md.
// clap turns these doc comments into help text, where `[recovery]` is the
// literal line prefix, not a rustdoc link.
#![allow(rustdoc::broken_intra_doc_links)]

mod demo;
mod output;
mod simulate;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use tasktrail::backend::SweepMode;
use tasktrail::host::{probe_identity, ProcfsProbe};
use tasktrail::logging::LogFormat;
use tasktrail::runtime::recover_now_noticing;
use tasktrail::{
    AnyStorage, Clock, DatabaseUrl, LivenessPolicy, OpenOptions, SystemClock, TaskFilter, TaskId,
    TaskStatus,
};

/// The task audit trail of an agent-dispatch server: inspect it, recover it
/// after a restart, or simulate a worker.
#[derive(Debug, Parser)]
#[command(name = "tasktrail", version, about, long_about = None)]
struct Cli {
    /// Database: a file path, sqlite://PATH, postgres://USER@HOST/DB, or
    /// mysql://USER@HOST/DB.
    #[arg(
        long,
        global = true,
        env = "TASKTRAIL_DB",
        default_value = "tasktrail.db",
        hide_env_values = true
    )]
    db: String,

    /// Postgres behind a transaction pooler (--db ...?tasktrail_pooler=transaction):
    /// a URL that reaches the same server directly, for the one liveness
    /// connection per worker process that holds its advisory lock. Without
    /// it, workers behind a transaction pooler are judged by their lease.
    #[arg(
        long,
        global = true,
        env = "TASKTRAIL_LIVENESS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    liveness_url: Option<String>,

    /// How log lines are written on stderr: text, or json (one object per
    /// line). Which events: the TASKTRAIL_LOG filter (default info; off
    /// silences them). Stdout is the same either way.
    #[arg(long, global = true, default_value = "text", value_parser = parse_log_format)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations (idempotent).
    Migrate {
        /// Adopt a database whose task_history was written before tasktrail
        /// (no migration record): check its shape, record the baseline,
        /// apply the fix with every row kept (SQLite and Postgres).
        #[arg(long)]
        adopt: bool,
    },
    /// Run a simulated agent worker: boot (recovery sweep), then run tasks.
    Worker(simulate::WorkerArgs),
    /// Run the recovery sweep now and print the [recovery] hints.
    Recover {
        /// Print what would be recovered; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long a worker's liveness lock must stay free, with the worker
        /// silent, before it proves death (the workers' is three heartbeat
        /// intervals).
        #[arg(long, default_value = "15s")]
        grace: String,
        /// How long a worker whose lock cannot be checked (registered before
        /// liveness locks) may stay silent before it counts as dead, and one
        /// holding its lock before it is reported stalled.
        #[arg(long, default_value = "15s")]
        lease: String,
    },
    /// List task_history rows, newest first.
    List {
        /// Only rows with this status (running, success, failure, cancelled,
        /// interrupted, aborted_no_skill).
        #[arg(long)]
        status: Option<String>,
        /// Only rows of this owner/name.
        #[arg(long)]
        repo: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// JSON (an array of objects keyed by column name).
        #[arg(long)]
        json: bool,
    },
    /// Show one task_history row.
    Show {
        /// The task id (a UUID).
        id: String,
        /// JSON (an object keyed by column name).
        #[arg(long)]
        json: bool,
    },
    /// List claude_sdk_sessions rows, newest first.
    Sessions {
        /// JSON (an array of objects keyed by column name).
        #[arg(long)]
        json: bool,
    },
    /// Figures about the trail: rows by status, running rows per worker
    /// with the age of its oldest, interrupted rows of the last 24 h by
    /// cause, median and p95 task duration by status. Reads only.
    Stats {
        /// The duration window: durations of final rows that ended within
        /// it (`7d`, `12h`, `90m`, `1w`, or seconds).
        #[arg(long, default_value = "7d", value_name = "DUR", value_parser = since_window)]
        since: chrono::Duration,
        /// JSON (one object; see docs/operations.md).
        #[arg(long)]
        json: bool,
    },
    /// Retention: delete final rows that ended longer ago than --older-than,
    /// with their sessions, and stopped/dead workers no row names. Never a
    /// running row.
    Prune {
        /// How old a row must be to go: `30d`, `12h`, `90m`, `1w`, or seconds.
        #[arg(long)]
        older_than: String,
        /// Only rows with this status (repeatable); default every final one.
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Count what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
    },
    /// Reproduce the incident on a temporary database: start a worker, SIGKILL
    /// it mid-task, boot a new one, print the hints and the table.
    Demo,
}

/// A failure to report as one line.
pub(crate) type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    text.parse()
        .map_err(|error: tasktrail::logging::LogFormatError| error.to_string())
}

/// Whether stderr carries JSON log lines (`--log-format json`): the
/// worker's warnings then go out as log events, so every line parses.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// The target of the CLI's own log events.
pub(crate) const LOG_TARGET: &str = "tasktrail_cli::worker";

/// A warning: `tasktrail: warning: ...` on stderr, or a `warn` log event
/// with `--log-format json`.
pub(crate) fn warn(message: impl std::fmt::Display) {
    let message = one_line(&message.to_string());
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::warn!(target: LOG_TARGET, "{message}");
    } else {
        report(&format!("tasktrail: warning: {message}"));
    }
}

/// A notice: `tasktrail: ...` on stderr, or an `info` log event with
/// `--log-format json`.
pub(crate) fn note(message: impl std::fmt::Display) {
    note_at(tracing::Level::INFO, message);
}

/// A notice: `tasktrail: ...` on stderr, or a log event at `level` with
/// `--log-format json`.
pub(crate) fn note_at(level: tracing::Level, message: impl std::fmt::Display) {
    let message = one_line(&message.to_string());
    if !JSON_LOGS.load(Ordering::Relaxed) {
        report(&format!("tasktrail: {message}"));
    } else if level == tracing::Level::WARN {
        tracing::warn!(target: LOG_TARGET, "{message}");
    } else {
        tracing::info!(target: LOG_TARGET, "{message}");
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            // clap echoes the offending argument; a URL given in the wrong
            // place must not print its password.
            let mut text = error.to_string();
            for argument in std::env::args().skip(1) {
                text = tasktrail::database::Secrets::of(&argument).scrub(&text);
            }
            let first = text.lines().next().unwrap_or("invalid arguments");
            report(&format!("tasktrail: {}", one_line(first)));
            return ExitCode::from(2);
        }
    };
    // Logging before anything else: a bad TASKTRAIL_LOG is one line and
    // exit 2, like a bad flag, and nothing was touched.
    if let Err(error) = tasktrail::logging::install(cli.log_format) {
        report(&format!("tasktrail: {}", one_line(&error.to_string())));
        return ExitCode::from(2);
    }
    JSON_LOGS.store(cli.log_format == LogFormat::Json, Ordering::Relaxed);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            report(&format!(
                "tasktrail: error: {}",
                one_line(&error_chain(error.as_ref()))
            ));
            ExitCode::FAILURE
        }
    }
}

/// A duration as people write it (`250ms`, `2s`, `1h 30m`, `30d`, `1w`:
/// humantime's forms) or bare seconds (`3`, `0.5`).
pub(crate) fn parse_duration_text(flag: &str, text: &str) -> CliResult<std::time::Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 && seconds <= u32::MAX as f64 {
            return Ok(std::time::Duration::from_secs_f64(seconds));
        }
        return Err(format!("--{flag} {text:?} is not a duration").into());
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("--{flag} {text:?} is not a duration ({error})").into())
}

/// Writes a line on stderr. A closed or failing stderr (`2>&1 | head -1`)
/// loses the line instead of panicking: the exit code still says it.
pub(crate) fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes a line on stdout; a closed stdout is an error (exit 1), never a
/// panic.
pub(crate) fn say(line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}")
}

/// The error and its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A `--flag` duration (see [`simulate::parse_duration`]), more than zero.
fn cli_duration(flag: &str, text: &str) -> CliResult<chrono::Duration> {
    let duration = simulate::parse_duration(flag, text)?;
    if duration.is_zero() {
        return Err(format!("--{flag} must be more than zero").into());
    }
    Ok(chrono::Duration::from_std(duration)?)
}

/// `--since`: a duration as [`parse_duration_text`] reads it, more than
/// zero, at most 100 years. A bad one is a usage error (exit 2).
fn since_window(text: &str) -> Result<chrono::Duration, String> {
    let duration = parse_duration_text("since", text).map_err(|error| error.to_string())?;
    if duration.is_zero() {
        return Err("--since must be more than zero".to_owned());
    }
    chrono::Duration::from_std(duration)
        .ok()
        .filter(|window| *window <= chrono::Duration::days(36_525))
        .ok_or_else(|| format!("--since {:?} is longer than 100 years", text.trim()))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn open(db: &str, options: &OpenOptions) -> CliResult<AnyStorage> {
    let url = DatabaseUrl::parse(db)?;
    let storage = AnyStorage::open_with(&url, options)?;
    if let Some(warning) = storage.connection_warning() {
        warn(warning);
    }
    Ok(storage)
}

/// For commands that only read: no file created, no migration, no DDL.
fn open_read_only(db: &str, options: &OpenOptions) -> CliResult<AnyStorage> {
    let url = DatabaseUrl::parse(db)?;
    Ok(AnyStorage::open_read_only_with(&url, options)?)
}

fn run(cli: Cli) -> CliResult<ExitCode> {
    // Validate arguments before touching the database: bad input writes
    // nothing. The commands that write or judge with the time (a worker's
    // rows, a sweep's verdicts, a prune's cut-off) refuse a clock before
    // 1970 before they open anything; the others never read the clock.
    if matches!(
        cli.command,
        Command::Worker(_) | Command::Recover { .. } | Command::Prune { .. } | Command::Demo
    ) {
        tasktrail::now_after_epoch(&SystemClock)?;
    }
    let options = OpenOptions::default().with_liveness_url(cli.liveness_url.clone());
    match cli.command {
        Command::Migrate { adopt: true } => {
            let url = DatabaseUrl::parse(&cli.db)?;
            let recorded = AnyStorage::adopt(&url)?;
            say(&format!(
                "{url}: adopted at baseline {}; applied {}",
                recorded.first().map_or("-", String::as_str),
                if recorded.len() > 1 {
                    recorded[1..].join(", ")
                } else {
                    "nothing more".to_owned()
                }
            ))?;
        }
        Command::Migrate { adopt: false } => {
            let url = DatabaseUrl::parse(&cli.db)?;
            let storage = AnyStorage::open_unmigrated_with(&url, &options)?;
            let applied = storage.migrate()?;
            if applied.is_empty() {
                say(&format!("{url}: schema is up to date"))?;
            } else {
                say(&format!("{url}: applied {}", applied.join(", ")))?;
            }
        }
        Command::Worker(args) => {
            let plan = args.validate()?;
            // Connections as a budget: one per task thread plus one for
            // the heartbeat and sweeps, opened only when used.
            let storage = open(
                &cli.db,
                &options.with_pool_size(Some(plan.concurrency() + 1)),
            )?;
            let summary = storage.connection_summary();
            return simulate::run_worker(storage.into_shared(), plan, &summary);
        }
        Command::Recover {
            dry_run,
            grace,
            lease,
        } => {
            let policy = LivenessPolicy {
                local_identity: probe_identity(),
                grace: cli_duration("grace", &grace)?,
                lease: cli_duration("lease", &lease)?,
            };
            let storage = if dry_run {
                open_read_only(&cli.db, &options)?
            } else {
                open(&cli.db, &options)?
            };
            let mode = if dry_run {
                SweepMode::DryRun
            } else {
                SweepMode::Apply
            };
            // Each report is confirmed in the store only once its line is
            // out: a line that could not be written stays owed.
            let sweep = recover_now_noticing(
                storage.as_storage(),
                &SystemClock,
                &ProcfsProbe,
                &policy,
                mode,
                &|task| {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", task.hint())?;
                    out.flush()
                },
            )?;
            if sweep.undelivered > 0 {
                return Err(format!(
                    "{} [recovery] line(s) could not be written; they stay owed and the next sweep reports them",
                    sweep.undelivered
                )
                .into());
            }
            let recovered = sweep.recovered;
            let mut out = std::io::stdout().lock();
            for owner in &sweep.noticed {
                writeln!(out, "{}", output::noticed_owner_line(owner))?;
            }
            if dry_run {
                writeln!(
                    out,
                    "dry run: {} task(s) would be marked interrupted; nothing changed",
                    recovered.len()
                )?;
            } else {
                writeln!(out, "{} task(s) marked interrupted", recovered.len())?;
            }
        }
        Command::List {
            status,
            repo,
            limit,
            json,
        } => {
            let status = status.map(|s| s.parse::<TaskStatus>()).transpose()?;
            let storage = open_read_only(&cli.db, &options)?;
            // A row that cannot be read never hides the others: print
            // every good row, then one line per bad row, and fail.
            let (rows, unreadable): (Vec<_>, Vec<_>) = storage
                .as_storage()
                .list_task_rows(&TaskFilter {
                    status,
                    repo,
                    limit: Some(limit),
                    offset: None,
                })?
                .into_iter()
                .partition(Result::is_ok);
            let rows: Vec<tasktrail::TaskRecord> =
                rows.into_iter().filter_map(Result::ok).collect();
            output::print_tasks(&rows, json)?;
            if !unreadable.is_empty() {
                for error in unreadable.into_iter().filter_map(Result::err) {
                    report(&format!(
                        "tasktrail: error: {}",
                        one_line(&error.to_string())
                    ));
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Show { id, json } => {
            let id: TaskId = id.trim().parse()?;
            let storage = open_read_only(&cli.db, &options)?;
            let row = match storage.as_storage().get_task(id) {
                Ok(row) => row,
                // A row that cannot be read: show what the database holds,
                // then the problem, and fail.
                Err(error @ tasktrail::StorageError::CorruptRow { .. }) => {
                    if let Some(columns) = storage.raw_task_columns(id)? {
                        output::print_raw_task(&columns, json)?;
                    }
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            };
            let Some(row) = row else {
                return Err(format!("no task_history row with id {id}").into());
            };
            output::print_task(&row, json)?;
        }
        Command::Sessions { json } => {
            let storage = open_read_only(&cli.db, &options)?;
            output::print_sessions(&storage.as_storage().list_sessions()?, json)?;
        }
        Command::Stats { since, json } => {
            let storage = open_read_only(&cli.db, &options)?;
            let stats = storage.stats(&tasktrail::StatsRequest {
                now: SystemClock.now(),
                since,
            })?;
            output::print_stats(&stats, json)?;
        }
        Command::Prune {
            older_than,
            statuses,
            dry_run,
            batch_size,
        } => {
            let age = parse_duration_text("older-than", &older_than)?;
            let statuses = statuses
                .iter()
                .map(|status| {
                    let status: TaskStatus = status.parse()?;
                    if status.is_final() {
                        Ok(status)
                    } else {
                        Err(format!("--status {status}: prune never deletes running rows").into())
                    }
                })
                .collect::<CliResult<Vec<_>>>()?;
            if batch_size == 0 {
                return Err("--batch-size must be at least 1".into());
            }
            let age = chrono::Duration::from_std(age)
                .map_err(|_| "--older-than is too long".to_owned())?;
            let cut_off = SystemClock
                .now()
                .checked_sub_signed(age)
                .ok_or_else(|| "--older-than reaches before any time".to_owned())?;
            let storage = open(&cli.db, &options)?;
            let report = storage.prune(&tasktrail::PruneRequest {
                cut_off,
                statuses,
                dry_run,
                batch_size,
            })?;
            say(&format!(
                "{}{} task(s), {} session(s), {} worker(s) that ended before {} ({} batch(es))",
                if dry_run {
                    "dry run: would delete "
                } else {
                    "deleted "
                },
                report.tasks,
                report.sessions,
                report.workers,
                cut_off.format("%Y-%m-%d %H:%M:%S UTC"),
                report.batches
            ))?;
        }
        Command::Demo => return demo::run(),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_on_one_line_with_their_causes() {
        let error: Box<dyn std::error::Error> = "first\nsecond".into();
        assert_eq!(one_line(&error_chain(error.as_ref())), "first second");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
