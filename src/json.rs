//! JSON for scripts and HTTP clients (feature `json`): a row as an object
//! keyed by its column names, times in RFC 3339 with microseconds (UTC).
//! The CLI's `--json` output and `tasktrail-server`'s answers both use it,
//! so a script reads the same keys from either.

use serde_json::{json, Value};
use tasktrail_core::{SessionRecord, TaskRecord, Timestamp};

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
