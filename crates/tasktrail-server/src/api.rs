//! The JSON API over HTTP. Every answer is JSON; every error is
//! `{"error": "..."}` naming what was wrong, and a refused request writes
//! nothing: a body that is not a JSON object is `400`, a field that is
//! missing, mistyped, unknown or out of bounds `422` naming it, a body over
//! [`MAX_BODY_BYTES`] `413`, a dispatch past the cap `503` with
//! `Retry-After`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tasktrail::json::task_json;
use tasktrail::prelude::*;

use crate::agent::SimulatedEnd;
use crate::dispatch::{CancelAnswer, DispatchError, Dispatcher};

/// The largest request body accepted (`413` past it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What a refused dispatch's `Retry-After` says, in seconds.
const BUSY_RETRY_AFTER_SECONDS: &str = "1";

/// The longest simulated run a request may ask for.
pub const MAX_DURATION_MS: u64 = 3_600_000;

/// How long a simulated task runs when the request does not say.
pub const DEFAULT_DURATION_MS: u64 = 1_000;

const STRING_FIELDS: [&str; 6] = ["repo", "user", "agent", "agent_type", "model", "provider"];
const KNOWN_FIELDS: [&str; 9] = [
    "repo",
    "issue_number",
    "user",
    "agent",
    "agent_type",
    "model",
    "provider",
    "duration_ms",
    "outcome",
];

/// The server's routes over a dispatcher.
pub fn router(dispatcher: Arc<Dispatcher>) -> Router {
    Router::new()
        .route("/tasks", post(dispatch_task).get(list_tasks))
        .route("/tasks/{id}", get(show_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/healthz", get(health))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(dispatcher)
}

/// An answer that is not a success: its status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The store failed: retrying later may work.
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        Self::unavailable(error.to_string())
    }
}

impl From<BadBody> for ApiError {
    fn from(error: BadBody) -> Self {
        match error {
            BadBody::Syntax(message) => Self::bad_request(message),
            BadBody::Field(message) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, message),
        }
    }
}

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Busy { .. } => Self {
                retry_after: Some(BUSY_RETRY_AFTER_SECONDS),
                ..Self::unavailable(error.to_string())
            },
            DispatchError::Start(start) => Self::from(start.error),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            Self::new(status, rejection.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

type Answer = Result<Response, ApiError>;

/// A dispatch request, checked field by field.
#[derive(Debug)]
struct DispatchRequest {
    spec: TaskSpec,
    duration: Duration,
    end: SimulatedEnd,
}

/// Why a `POST /tasks` body was refused.
#[derive(Debug, PartialEq, Eq)]
enum BadBody {
    /// Not a JSON object (`400`).
    Syntax(String),
    /// A field missing, mistyped, unknown or out of bounds (`422`), named.
    Field(String),
}

impl std::fmt::Display for BadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadBody::Syntax(message) | BadBody::Field(message) => f.write_str(message),
        }
    }
}

/// Parses a `POST /tasks` body; the error names the field.
fn parse_dispatch(body: &[u8]) -> Result<DispatchRequest, BadBody> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| BadBody::Syntax(format!("body is not JSON: {error}")))?;
    let Value::Object(object) = value else {
        return Err(BadBody::Syntax("body must be a JSON object".to_owned()));
    };
    parse_fields(&object).map_err(BadBody::Field)
}

/// The fields of a `POST /tasks` body: every string field as
/// [`TaskSpec::validate`] checks it (at most [`TaskSpec::MAX_FIELD_LEN`]
/// bytes, no control characters...), `duration_ms` up to
/// [`MAX_DURATION_MS`].
fn parse_fields(object: &Map<String, Value>) -> Result<DispatchRequest, String> {
    if let Some(unknown) = object
        .keys()
        .find(|key| !KNOWN_FIELDS.contains(&key.as_str()))
    {
        return Err(format!("unknown field `{unknown}`"));
    }
    let text = |name: &str| -> Result<String, String> {
        match object.get(name) {
            None | Some(Value::Null) => Err(format!("missing field `{name}`")),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(format!("field `{name}` must be a string")),
        }
    };
    let mut strings = HashMap::new();
    for name in STRING_FIELDS {
        strings.insert(name, text(name)?);
    }
    let issue_number = match object.get("issue_number") {
        None | Some(Value::Null) => return Err("missing field `issue_number`".to_owned()),
        Some(number) => number
            .as_i64()
            .ok_or_else(|| "field `issue_number` must be an integer".to_owned())?,
    };
    let mut take = |name: &str| strings.remove(name).unwrap_or_default();
    let spec = TaskSpec::validate(TaskSpecInput {
        repo: take("repo"),
        issue_number,
        user: take("user"),
        agent: take("agent"),
        agent_type: take("agent_type"),
        model: take("model"),
        provider: take("provider"),
    })
    .map_err(|error| error.to_string())?;
    let duration_ms = optional_duration(object)?;
    let end = match object.get("outcome") {
        None | Some(Value::Null) => SimulatedEnd::Success,
        Some(Value::String(text)) if text == "success" => SimulatedEnd::Success,
        Some(Value::String(text)) if text == "failure" => SimulatedEnd::Failure,
        Some(_) => return Err("field `outcome` must be \"success\" or \"failure\"".to_owned()),
    };
    Ok(DispatchRequest {
        spec,
        duration: Duration::from_millis(duration_ms),
        end,
    })
}

fn optional_duration(object: &Map<String, Value>) -> Result<u64, String> {
    match object.get("duration_ms") {
        None | Some(Value::Null) => Ok(DEFAULT_DURATION_MS),
        Some(value) => match value.as_u64() {
            Some(ms) if ms <= MAX_DURATION_MS => Ok(ms),
            _ => Err(format!(
                "field `duration_ms` must be an integer from 0 to {MAX_DURATION_MS}"
            )),
        },
    }
}

async fn dispatch_task(
    State(dispatcher): State<Arc<Dispatcher>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request = parse_dispatch(&body?)?;
    let id = dispatcher
        .dispatch(request.spec, request.duration, request.end)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id.to_string() }))).into_response())
}

/// Parses `status`, `repo` and `limit`; the error names the parameter.
fn parse_filter(pairs: Vec<(String, String)>) -> Result<TaskFilter, String> {
    let mut filter = TaskFilter::default();
    for (name, value) in pairs {
        match name.as_str() {
            "status" => {
                filter.status = Some(
                    value
                        .parse::<TaskStatus>()
                        .map_err(|error| format!("parameter `status`: {error}"))?,
                );
            }
            "repo" => filter.repo = Some(value),
            "limit" => {
                filter.limit = Some(value.parse::<u32>().map_err(|_| {
                    format!("parameter `limit` must be a non-negative integer, not {value:?}")
                })?);
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok(filter)
}

async fn list_tasks(
    State(dispatcher): State<Arc<Dispatcher>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let filter = query
        .map_err(|rejection| rejection.body_text())
        .and_then(|Query(pairs)| parse_filter(pairs))
        .map_err(ApiError::bad_request)?;
    let storage = Arc::clone(dispatcher.worker().storage());
    // A row that cannot be read never hides the others: the readable rows
    // are answered, and each unreadable one is named in a header and on
    // the server's stderr.
    let rows = blocking(move || storage.list_task_rows(&filter)).await?;
    let mut readable = Vec::with_capacity(rows.len());
    let mut unreadable = 0usize;
    for row in rows {
        match row {
            Ok(row) => readable.push(task_json(&row)),
            Err(error) => {
                unreadable += 1;
                eprintln!("tasktrail-server: {error}");
            }
        }
    }
    let mut response = Json(Value::Array(readable)).into_response();
    if unreadable > 0 {
        response.headers_mut().insert(
            "x-tasktrail-unreadable-rows",
            axum::http::HeaderValue::from(unreadable),
        );
    }
    Ok(response)
}

/// Runs a storage read on the blocking pool.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(read).await {
        Ok(result) => Ok(result?),
        Err(join) => Err(ApiError::unavailable(join.to_string())),
    }
}

fn parse_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse::<TaskId>()
        .map_err(|_| ApiError::bad_request(format!("task id {text:?} is not a UUID")))
}

async fn read_row(dispatcher: &Dispatcher, id: TaskId) -> Result<TaskRecord, ApiError> {
    let storage = Arc::clone(dispatcher.worker().storage());
    blocking(move || storage.get_task(id))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no task {id}")))
}

async fn show_task(State(dispatcher): State<Arc<Dispatcher>>, Path(id): Path<String>) -> Answer {
    let row = read_row(&dispatcher, parse_id(&id)?).await?;
    Ok(Json(task_json(&row)).into_response())
}

async fn cancel_task(State(dispatcher): State<Arc<Dispatcher>>, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    match dispatcher.cancel(id).await {
        CancelAnswer::Cancelled => {
            Ok(Json(task_json(&read_row(&dispatcher, id).await?)).into_response())
        }
        CancelAnswer::Failed(message) => Err(ApiError::unavailable(message)),
        CancelAnswer::NotRunningHere => {
            let row = read_row(&dispatcher, id).await?;
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("task {id} is not running here (it is {})", row.status),
            ))
        }
    }
}

async fn health(State(dispatcher): State<Arc<Dispatcher>>) -> Response {
    let worker = dispatcher.worker();
    match worker.health() {
        WorkerHealth::Healthy => Json(json!({
            "status": "healthy",
            "worker_id": worker.id().to_string(),
            "running": dispatcher.running(),
        }))
        .into_response(),
        WorkerHealth::Degraded { reason, since } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "degraded",
                "reason": reason,
                "since": tasktrail::json::time(Some(since)),
            })),
        )
            .into_response(),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": format!("{other:?}").to_lowercase() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("json")
    }

    fn valid() -> Value {
        json!({
            "repo": "acme/widgets", "issue_number": 1104, "user": "alice", "agent": "fixer",
            "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
        })
    }

    #[test]
    fn a_valid_body_parses_with_defaults() {
        let request = parse_dispatch(&body(valid())).expect("valid");
        assert_eq!(request.spec.issue_number(), 1104);
        assert_eq!(request.duration, Duration::from_millis(DEFAULT_DURATION_MS));
        assert_eq!(request.end, SimulatedEnd::Success);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(Value, &str)> = vec![
            (json!("not an object"), "object"),
            (json!({"issue_number": 1}), "`repo`"),
            (
                {
                    let mut v = valid();
                    v["repo"] = json!(7);
                    v
                },
                "`repo`",
            ),
            (
                {
                    let mut v = valid();
                    v.as_object_mut().unwrap().remove("issue_number");
                    v
                },
                "`issue_number`",
            ),
            (
                {
                    let mut v = valid();
                    v["issue_number"] = json!("12");
                    v
                },
                "`issue_number`",
            ),
            (
                {
                    let mut v = valid();
                    v["issue_number"] = json!(-3);
                    v
                },
                "issue_number",
            ),
            (
                {
                    let mut v = valid();
                    v["repo"] = json!("no-slash");
                    v
                },
                "repo",
            ),
            (
                {
                    let mut v = valid();
                    v["outcome"] = json!("maybe");
                    v
                },
                "`outcome`",
            ),
            (
                {
                    let mut v = valid();
                    v["duration_ms"] = json!(-1);
                    v
                },
                "`duration_ms`",
            ),
            (
                {
                    let mut v = valid();
                    v["duration_ms"] = json!(MAX_DURATION_MS + 1);
                    v
                },
                "`duration_ms`",
            ),
            (
                {
                    let mut v = valid();
                    v["colour"] = json!("red");
                    v
                },
                "`colour`",
            ),
        ];
        for (value, field) in cases {
            let message = parse_dispatch(&body(value.clone()))
                .expect_err("refused")
                .to_string();
            assert!(message.contains(field), "{value}: {message}");
        }
        let refused = parse_dispatch(b"{not json").expect_err("refused");
        assert!(matches!(&refused, BadBody::Syntax(m) if m.contains("not JSON")));
        let long = {
            let mut v = valid();
            v["user"] = json!("u".repeat(TaskSpec::MAX_FIELD_LEN + 1));
            v
        };
        let refused = parse_dispatch(&body(long)).expect_err("too long");
        assert!(
            matches!(&refused, BadBody::Field(m) if m.contains("`user`")),
            "{refused}"
        );
    }

    #[test]
    fn filters_parse_and_bad_parameters_are_named() {
        let filter = parse_filter(vec![
            ("status".into(), "running".into()),
            ("repo".into(), "acme/widgets".into()),
            ("limit".into(), "5".into()),
        ])
        .expect("valid");
        assert_eq!(filter.status, Some(TaskStatus::Running));
        assert_eq!(filter.repo.as_deref(), Some("acme/widgets"));
        assert_eq!(filter.limit, Some(5));
        for (name, value) in [("status", "sleeping"), ("limit", "-1"), ("colour", "red")] {
            let message = parse_filter(vec![(name.into(), value.into())]).expect_err("refused");
            assert!(message.contains(name), "{message}");
        }
    }
}
