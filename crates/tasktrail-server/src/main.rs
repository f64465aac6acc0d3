//! `tasktrail-server [--db URL] [--listen ADDR] [--log-format text|json]
//! [--token-file PATH] [--public-read] [--request-timeout DURATION]
//! [--max-concurrent-dispatches N] [--dashboard-counts-max-age DURATION]`: see the library docs and README.md
//! ("Use it from an async server"), and docs/operations.md ("Logs and
//! metrics", "Running the server with a token", "The dashboard").

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tasktrail::async_worker::AsyncWorker;
use tasktrail::logging::LogFormat;
use tasktrail::prelude::*;
use tasktrail::{AnyStorage, BootError, DatabaseUrlError, OpenError};
use tasktrail_server::agent::SimulatedAgent;
use tasktrail_server::guard::{Guard, Token, TOKEN_VARIABLE};
use tasktrail_server::{
    guarded, install_prometheus, metrics, router, router_with_metrics, ui, Dispatcher,
    DEFAULT_MAX_CONCURRENT_DISPATCHES, SERVER_STOPPED_REASON,
};

/// How long the server waits, after SIGTERM, for open requests and for its
/// running tasks' interrupted UPDATEs, each.
const DRAIN_DEADLINE: Duration = Duration::from_secs(4);

/// A dispatch server on tasktrail.
#[derive(Debug, Parser)]
#[command(name = "tasktrail-server", version)]
struct Args {
    /// The database: a SQLite path, sqlite://PATH, postgres://...,
    /// mysql://..., or memory: (in-memory, gone when the server exits).
    #[arg(long, default_value = "tasktrail.db")]
    db: String,
    /// Postgres behind a transaction pooler (`?tasktrail_pooler=transaction`):
    /// a URL reaching the same server directly, for the one liveness
    /// connection that holds the server's advisory lock. Without it, the
    /// server behind a transaction pooler is judged by its lease.
    #[arg(long, env = "TASKTRAIL_LIVENESS_URL", hide_env_values = true)]
    liveness_url: Option<String>,
    /// Where to listen (port 0 picks a free port; the `listening on` line
    /// names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// On SIGTERM, how long the worker keeps retrying the outcomes an
    /// unreachable store refuses before it names each one on stderr
    /// (`unwritten <id> <status>`) and exits 1: 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_deadline: Duration,
    /// How log lines are written on stderr: text, or json (one object per
    /// line). Which events: the TASKTRAIL_LOG filter (default info; off
    /// silences them). Stdout is the same either way.
    #[arg(long, default_value = "text", value_parser = parse_log_format)]
    log_format: LogFormat,
    /// A file holding the token every route but GET /healthz then needs
    /// (`Authorization: Bearer <token>`); one trailing newline is trimmed.
    /// Or set TASKTRAIL_SERVER_TOKEN to the token (not both). Without a
    /// token the server listens on loopback addresses only.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Let GET requests (the task list, a task, /metrics) through without
    /// the token; dispatch and cancel still need it.
    #[arg(long)]
    public_read: bool,
    /// How long a request may take before it is answered 503 (with
    /// Retry-After): 30s, 500ms, 1m.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    request_timeout: Duration,
    /// How many dispatches may be in flight at once (starting or running);
    /// one more is answered 503 with Retry-After, never queued.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_DISPATCHES, value_parser = parse_cap)]
    max_concurrent_dispatches: usize,
    /// How old the task list's status counts may get (they are counted in
    /// the background, shared by every view, never per page view): a view
    /// of older counts starts one new count and shows the old ones
    /// meanwhile. 5s, 500ms, 1m; 0s counts again after every view.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    dashboard_counts_max_age: Duration,
}

fn parse_cap(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("must be a whole number from 1, not {text:?}")),
        Ok(cap) => Ok(cap),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    text.parse()
        .map_err(|error: tasktrail::logging::LogFormatError| error.to_string())
}

/// The target of the server's own log events.
const LOG_TARGET: &str = "tasktrail_server";

/// Whether stderr carries JSON log lines: the server's warnings then go out
/// as log events, so every line parses.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// A warning: `tasktrail-server: ...` on stderr, or a `warn` log event with
/// `--log-format json`.
fn warn(message: impl std::fmt::Display) {
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::warn!(target: LOG_TARGET, "{message}");
    } else {
        eprintln!("tasktrail-server: {message}");
    }
}

#[derive(Debug, thiserror::Error)]
enum ServerError {
    #[error("{0}")]
    Url(#[from] DatabaseUrlError),
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("{0}")]
    Boot(#[from] BootError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Stop(#[from] StopError),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            let text = error.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("tasktrail-server: {first}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = tasktrail::logging::install(args.log_format) {
        eprintln!("tasktrail-server: {error}");
        return ExitCode::from(2);
    }
    JSON_LOGS.store(args.log_format == LogFormat::Json, Ordering::Relaxed);
    let token =
        match Token::from_sources(args.token_file.as_deref(), std::env::var_os(TOKEN_VARIABLE)) {
            Ok(token) => token,
            Err(error) => {
                eprintln!("tasktrail-server: {error}");
                return ExitCode::from(2);
            }
        };
    if token.is_none() && !args.listen.ip().is_loopback() {
        eprintln!(
            "tasktrail-server: refusing to listen on {} without a token: give --token-file \
             or {TOKEN_VARIABLE}, or listen on a loopback address",
            args.listen
        );
        return ExitCode::from(2);
    }
    let guard = Guard {
        token,
        public_read: args.public_read,
        request_timeout: args.request_timeout,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tasktrail-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, guard)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tasktrail-server: {error}");
            ExitCode::FAILURE
        }
    }
}

fn open(db: &str, liveness_url: Option<String>) -> Result<Arc<dyn Storage>, ServerError> {
    if db == "memory:" {
        return Ok(Arc::new(MemoryStorage::new()));
    }
    let url = DatabaseUrl::parse(db)?;
    let options = tasktrail::OpenOptions::default().with_liveness_url(liveness_url);
    Ok(AnyStorage::open_with(&url, &options)?.into_shared())
}

fn print_event(event: &WorkerEvent) {
    match event {
        // Delivered by the recovery reporter (stdout), confirmed there.
        WorkerEvent::Recovered(_) => {}
        WorkerEvent::UpkeepFailed { upkeep, error } => warn(format!("{upkeep:?} failed: {error}")),
        WorkerEvent::DeclaredDead => warn(
            "this worker was declared dead by another worker's sweep; \
             dispatch is refused (healthz answers 503): restart the server",
        ),
        other => warn(format!("{other:?}")),
    }
}

async fn serve(args: Args, guard: Guard) -> Result<(), ServerError> {
    let prometheus = install_prometheus()?;
    metrics::spawn_upkeep(prometheus.clone());
    let storage = open(&args.db, args.liveness_url.clone())?;
    let worker = AsyncWorker::boot(
        Worker::builder(storage)
            .stop_deadline(args.stop_deadline)
            .recovery_reporter(|task| {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", task.hint())?;
                out.flush()
            })
            .on_event(print_event),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServerError::Listen {
            address: args.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(ServerError::Serve)?;
    println!("listening on {address}");
    tracing::info!(target: LOG_TARGET, %address, "listening on {address}");
    let dispatcher = Dispatcher::with_limit(
        worker.clone(),
        Arc::new(SimulatedAgent),
        args.max_concurrent_dispatches,
    );
    let (stopping, stop_requested) = tokio::sync::watch::channel(false);
    // The JSON API, the dashboard's pages and /metrics, behind the guard.
    let routes = router(Arc::clone(&dispatcher)).merge(ui::router_with(
        Arc::clone(&dispatcher),
        ui::DashboardOptions {
            token_required: guard.token.is_some(),
            counts_max_age: args.dashboard_counts_max_age,
            ..ui::DashboardOptions::default()
        },
    ));
    let server = tokio::spawn(
        axum::serve(
            listener,
            guarded(router_with_metrics(routes, prometheus), guard),
        )
        .with_graceful_shutdown(async move {
            let mut stop_requested = stop_requested;
            let _ = stop_requested.wait_for(|stop| *stop).await;
        })
        .into_future(),
    );
    stop_signal().await;
    let _ = stopping.send(true);
    // Stop accepting; give open requests a moment to answer.
    match tokio::time::timeout(DRAIN_DEADLINE, server).await {
        Ok(Ok(Err(error))) => warn(error),
        Ok(_) => {}
        Err(_) => warn("open requests did not end in time"),
    }
    let reason = InterruptReason::new(SERVER_STOPPED_REASON)
        .expect("the server's stop reason is a valid interrupt reason");
    dispatcher.interrupt_all(&reason, DRAIN_DEADLINE).await;
    if let Err(error) = worker.stop().await {
        // The store stayed unreachable past the stop deadline: name each
        // outcome not written (its row stays `running` for the next sweep).
        for unwritten in &error.unwritten {
            eprintln!("unwritten {} {}", unwritten.id, unwritten.status);
        }
        return Err(error.into());
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server can only be killed; run on.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
