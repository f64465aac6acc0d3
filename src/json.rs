//! JSON for scripts and HTTP clients (feature `json`): a row as an object
//! keyed by its column names, times in RFC 3339 with microseconds (UTC).
//! The CLI's `--json` output and `tasktrail-server`'s answers both use it,
//! so a script reads the same keys from either.

use serde_json::{json, Value};
use tasktrail_core::{SessionRecord, TaskRecord, TaskStats, Timestamp};

/// A time as RFC 3339 text with microseconds, or `null`.
pub fn time(at: Option<Timestamp>) -> Value {
    at.map_or(Value::Null, |at| {
        Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    })
}

/// A `task_history` row as a JSON object keyed by column name.
pub fn task_json(row: &TaskRecord) -> Value {
    json!({
        "id": row.id.to_string(),
        "repo": row.repo,
        "issue_number": row.issue_number,
        "user": row.user,
        "agent": row.agent,
        "agent_type": row.agent_type,
        "model": row.model,
        "provider": row.provider,
        "status": row.status.as_str(),
        "worker_id": row.worker_id.map(|id| id.to_string()),
        "started_at": time(Some(row.started_at)),
        "finished_at": time(row.finished_at),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": row.cost_usd,
        "turns": row.turns,
        "artifacts": row.artifacts,
        "interrupted_at": time(row.interrupted_at),
        "interrupt_reason": row.interrupt_reason,
        "interrupted_by": row.interrupted_by.map(|id| id.to_string()),
    })
}

/// A `claude_sdk_sessions` row as a JSON object keyed by column name.
pub fn session_json(row: &SessionRecord) -> Value {
    json!({
        "session_id": row.session_id.as_str(),
        "task_id": row.task_id.to_string(),
        "repo": row.repo,
        "issue_number": row.issue_number,
        "agent": row.agent,
        "created_at": time(Some(row.created_at)),
        "invalidated_at": time(row.invalidated_at),
        "invalidation_reason": row.invalidation_reason,
    })
}

fn millis(duration: Option<chrono::Duration>) -> Value {
    duration.map_or(Value::Null, |duration| json!(duration.num_milliseconds()))
}

/// The operator's figures (`tasktrail stats --json`): `now`;
/// `rows_by_status` (every status, zeros included); `running` (one object
/// per owner of running rows, oldest row first: `worker_id`, `host`, `pid`,
/// `state`, `rows`, `oldest_started_at`, `oldest_age_ms`); `interrupted`
/// (`since`, and `by_cause`: every cause, zeros included); `durations`
/// (`since`, `window_seconds`, and `by_status`: each final status's `rows`,
/// `median_ms`, `p95_ms`, `null` without rows).
pub fn stats_json(stats: &TaskStats) -> Value {
    let now = stats.request.now;
    let by_status: serde_json::Map<String, Value> = stats
        .by_status
        .iter()
        .map(|(status, rows)| (status.as_str().to_owned(), json!(rows)))
        .collect();
    let running: Vec<Value> = stats
        .running
        .iter()
        .map(|owner| {
            json!({
                "worker_id": owner.worker.map(|id| id.to_string()),
                "host": owner.host,
                "pid": owner.pid,
                "state": owner.state.map(|state| state.as_str()),
                "rows": owner.rows,
                "oldest_started_at": time(owner.oldest_started_at),
                "oldest_age_ms": millis(owner.oldest_age(now)),
            })
        })
        .collect();
    let by_cause: serde_json::Map<String, Value> = stats
        .interrupted
        .iter()
        .map(|(cause, rows)| (cause.as_str().to_owned(), json!(rows)))
        .collect();
    let durations: serde_json::Map<String, Value> = stats
        .durations
        .iter()
        .map(|figures| {
            (
                figures.status.as_str().to_owned(),
                json!({
                    "rows": figures.rows,
                    "median_ms": millis(figures.median),
                    "p95_ms": millis(figures.p95),
                }),
            )
        })
        .collect();
    json!({
        "now": time(Some(now)),
        "rows_by_status": by_status,
        "running": running,
        "interrupted": {
            "since": time(Some(stats.request.interrupted_start())),
            "by_cause": by_cause,
        },
        "durations": {
            "since": time(Some(stats.request.window_start())),
            "window_seconds": stats.request.since.num_seconds(),
            "by_status": durations,
        },
    })
}
