//! The JSON API over HTTP. Every answer is JSON; every error is
//! `{"error": "..."}` naming what was wrong, and a refused request writes
//! nothing: a body that is not a JSON object is `400`, a field that is
//! missing, mistyped, unknown or out of bounds `422` naming it, a body over
//! [`MAX_BODY_BYTES`] `413`, a dispatch past the cap `503` (every `503`
//! carries `Retry-After`).
//!
//! Each handler's `#[utoipa::path]` says what it answers; the routes are
//! registered from those annotations ([`documented_routes`]), and the
//! bodies are the types of [`crate::contract`], so `GET /openapi.json`
//! describes exactly what is served.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde_json::Value;
use tasktrail::prelude::*;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::agent::SimulatedEnd;
use crate::contract::{
    ApiDocument, DispatchTaskRequest, DispatchedTask, ErrorBody, HealthBody, ListTasksQuery,
    TaskBody,
};
use crate::dispatch::{CancelAnswer, DispatchError, Dispatcher};

/// The largest request body accepted (`413` past it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every `503`'s `Retry-After` says, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

/// The longest simulated run a request may ask for.
pub const MAX_DURATION_MS: u64 = 3_600_000;

/// How long a simulated task runs when the request does not say.
pub const DEFAULT_DURATION_MS: u64 = 1_000;

/// Where the API's OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The routes with their documentation: each handler is registered from
/// its `#[utoipa::path]`, which writes both the axum route and the
/// document's path, so neither exists without the other.
pub(crate) fn documented_routes() -> OpenApiRouter<Arc<Dispatcher>> {
    OpenApiRouter::with_openapi(ApiDocument::openapi())
        .routes(routes!(dispatch_task, list_tasks))
        .routes(routes!(show_task))
        .routes(routes!(cancel_task))
        .routes(routes!(health))
        .routes(routes!(openapi_document))
}

/// The document's JSON, served as is.
#[derive(Debug, Clone)]
struct OpenApiJson(Arc<str>);

/// The server's routes over a dispatcher.
pub fn router(dispatcher: Arc<Dispatcher>) -> Router {
    let (routes, document) = documented_routes().split_for_parts();
    let document = document
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    routes
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(Extension(OpenApiJson(document.into())))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(dispatcher)
}

/// An answer that is not a success: its status and an [`ErrorBody`].
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Retrying later may work (the store failed, or the dispatch cap is
    /// reached): `503` with `Retry-After`.
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
            DispatchError::Busy { .. } => Self::unavailable(error.to_string()),
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
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

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

/// Parses a `POST /tasks` body into a [`DispatchTaskRequest`], then checks
/// it; the error names the field.
fn parse_dispatch(body: &[u8]) -> Result<DispatchRequest, BadBody> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| BadBody::Syntax(format!("body is not JSON: {error}")))?;
    if !value.is_object() {
        return Err(BadBody::Syntax("body must be a JSON object".to_owned()));
    }
    let request: DispatchTaskRequest =
        serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            BadBody::Field(if path == "." {
                inner.to_string()
            } else {
                format!("field `{path}`: {inner}")
            })
        })?;
    check_request(request).map_err(BadBody::Field)
}

/// The bounds the types do not hold: every string field as
/// [`TaskSpec::validate`] checks it (at most [`TaskSpec::MAX_FIELD_LEN`]
/// bytes, no control characters...), `duration_ms` up to
/// [`MAX_DURATION_MS`].
fn check_request(request: DispatchTaskRequest) -> Result<DispatchRequest, String> {
    let DispatchTaskRequest {
        repo,
        issue_number,
        user,
        agent,
        agent_type,
        model,
        provider,
        duration_ms,
        outcome,
    } = request;
    let spec = TaskSpec::validate(TaskSpecInput {
        repo,
        issue_number,
        user,
        agent,
        agent_type,
        model,
        provider,
    })
    .map_err(|error| error.to_string())?;
    let duration_ms = match duration_ms {
        None => DEFAULT_DURATION_MS,
        Some(ms) if ms <= MAX_DURATION_MS => ms,
        Some(_) => {
            return Err(format!(
                "field `duration_ms` must be an integer from 0 to {MAX_DURATION_MS}"
            ))
        }
    };
    Ok(DispatchRequest {
        spec,
        duration: Duration::from_millis(duration_ms),
        end: outcome.map_or(SimulatedEnd::Success, SimulatedEnd::from),
    })
}

/// Start a task: `201` once its `running` row is committed.
#[utoipa::path(
    post,
    path = "/tasks",
    operation_id = "dispatch_task",
    request_body(content = DispatchTaskRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The task's `running` row is committed; the agent runs.", body = DispatchedTask),
        (status = 400, description = "The body is not a JSON object.", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one.", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tasktrail\"`"))),
        (status = 413, description = "The body is larger than 64 KiB.", body = ErrorBody),
        (status = 422, description = "A field is missing, mistyped, unknown or out of bounds; the error names it.", body = ErrorBody),
        (status = 503, description = "--max-concurrent-dispatches dispatches are in flight, the store failed, or the request took too long. Nothing was written.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = [])),
)]
async fn dispatch_task(
    State(dispatcher): State<Arc<Dispatcher>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DispatchedTask>), ApiError> {
    let request = parse_dispatch(&body?)?;
    let id = dispatcher
        .dispatch(request.spec, request.duration, request.end)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DispatchedTask { id: id.to_string() }),
    ))
}

/// The name of the header that counts the rows `GET /tasks` could not
/// read.
const UNREADABLE_ROWS_HEADER: &str = "x-tasktrail-unreadable-rows";

/// List tasks, newest first.
#[utoipa::path(
    get,
    path = "/tasks",
    operation_id = "list_tasks",
    params(ListTasksQuery),
    responses(
        (status = 200, description = "The rows, newest first. A row that cannot be read is left out and counted in a header.", body = Vec<TaskBody>,
            headers(("x-tasktrail-unreadable-rows" = u64, description = "How many rows could not be read (absent when none)."))),
        (status = 400, description = "A parameter is unknown or malformed; the error names it.", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one (without --public-read).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tasktrail\"`"))),
        (status = 503, description = "The store failed, or the request took too long.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = [])),
)]
async fn list_tasks(
    State(dispatcher): State<Arc<Dispatcher>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = query
        .map_err(|rejection| rejection.body_text())
        .and_then(|Query(pairs)| ListTasksQuery::parse(pairs))
        .map_err(ApiError::bad_request)?
        .filter();
    let storage = Arc::clone(dispatcher.worker().storage());
    // A row that cannot be read never hides the others: the readable rows
    // are answered, and each unreadable one is named in a header and on
    // the server's stderr.
    let rows = blocking(move || storage.list_task_rows(&filter)).await?;
    let mut readable: Vec<TaskBody> = Vec::with_capacity(rows.len());
    let mut unreadable = 0usize;
    for row in rows {
        match row {
            Ok(row) => readable.push(TaskBody::from(&row)),
            Err(error) => {
                unreadable += 1;
                eprintln!("tasktrail-server: {error}");
            }
        }
    }
    let mut response = Json(readable).into_response();
    if unreadable > 0 {
        response.headers_mut().insert(
            UNREADABLE_ROWS_HEADER,
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

/// One task.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "show_task",
    params(("id" = String, Path, format = Uuid, description = "The task's id (a UUID).")),
    responses(
        (status = 200, description = "The row.", body = TaskBody),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one (without --public-read).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tasktrail\"`"))),
        (status = 404, description = "No task has this id.", body = ErrorBody),
        (status = 503, description = "The store failed, or the request took too long.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = [])),
)]
async fn show_task(
    State(dispatcher): State<Arc<Dispatcher>>,
    Path(id): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    let row = read_row(&dispatcher, parse_id(&id)?).await?;
    Ok(Json(TaskBody::from(&row)))
}

/// Cancel a task running on this server: its row is `cancelled` (one
/// UPDATE) before the answer.
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    operation_id = "cancel_task",
    params(("id" = String, Path, format = Uuid, description = "The task's id (a UUID).")),
    responses(
        (status = 200, description = "The row, now `cancelled`.", body = TaskBody),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one.", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tasktrail\"`"))),
        (status = 404, description = "No task has this id.", body = ErrorBody),
        (status = 409, description = "The task is not running on this server (it ended, or it ran elsewhere).", body = ErrorBody),
        (status = 503, description = "The `cancelled` UPDATE could not be written, the store failed, or the request took too long.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = [])),
)]
async fn cancel_task(
    State(dispatcher): State<Arc<Dispatcher>>,
    Path(id): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    let id = parse_id(&id)?;
    match dispatcher.cancel(id).await {
        CancelAnswer::Cancelled => Ok(Json(TaskBody::from(&read_row(&dispatcher, id).await?))),
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

/// The worker's health; never needs the token.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    responses(
        (status = 200, description = "The worker is healthy.", body = HealthBody),
        (status = 503, description = "The worker is degraded, declared dead or stopped (no Retry-After: the probe decides what to do).", body = HealthBody),
    ),
    security(()),
)]
async fn health(State(dispatcher): State<Arc<Dispatcher>>) -> (StatusCode, Json<HealthBody>) {
    let worker = dispatcher.worker();
    let body = HealthBody::new(worker.health(), worker.id(), dispatcher.running());
    let status = if body.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// This document: the API's OpenAPI 3 description, generated from the
/// handlers' own types.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_document",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json"),
        (status = 401, description = "No token, or a wrong one (without --public-read).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tasktrail\"`"))),
        (status = 503, description = "The request took too long.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = [])),
)]
async fn openapi_document(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let filter = ListTasksQuery::parse(vec![
            ("status".into(), "running".into()),
            ("repo".into(), "acme/widgets".into()),
            ("limit".into(), "5".into()),
        ])
        .expect("valid")
        .filter();
        assert_eq!(filter.status, Some(TaskStatus::Running));
        assert_eq!(filter.repo.as_deref(), Some("acme/widgets"));
        assert_eq!(filter.limit, Some(5));
        for (name, value) in [("status", "sleeping"), ("limit", "-1"), ("colour", "red")] {
            let message =
                ListTasksQuery::parse(vec![(name.into(), value.into())]).expect_err("refused");
            assert!(message.contains(name), "{message}");
        }
    }
}
