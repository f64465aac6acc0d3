//! The JSON API's request and response types, and the OpenAPI document
//! built from them (`GET /openapi.json`).
//!
//! Every body the API reads or writes is one of these types: the handlers in
//! `api.rs` deserialize [`DispatchTaskRequest`] and serialize [`TaskBody`],
//! [`DispatchedTask`], [`HealthBody`] and [`ErrorBody`], and the same types
//! derive `utoipa::ToSchema`, so the document's schemas are the handlers'
//! own. The routes are registered through `utoipa_axum` from the handlers'
//! `#[utoipa::path]` annotations, which also write the document's paths: a
//! route cannot be served without being documented. [`openapi`] is that
//! document; [`ApiDocument`] adds what the annotations cannot say (the
//! bearer security scheme, the title and description).
//!
//! What the document leaves out: `GET /metrics` (the Prometheus text
//! format, added by the binary), the dashboard's pages and its `POST
//! /ui/login` / `POST /ui/logout` (forms, not JSON).

use serde::{Deserialize, Serialize};
use tasktrail::prelude::*;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use crate::agent::SimulatedEnd;

/// The name of the bearer-token security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

/// The document's title, description and security scheme; the paths and
/// schemas come from the routes (see [`openapi`]).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "tasktrail-server",
        description = "A dispatch server on tasktrail. With a token set \
            (--token-file or TASKTRAIL_SERVER_TOKEN), every operation but \
            GET /healthz needs `Authorization: Bearer <token>` and answers 401 \
            with `WWW-Authenticate` without it; with --public-read the GET \
            operations (this document included) are open too. Every operation \
            may answer 503 with Retry-After when it takes longer than \
            --request-timeout. Every error body is {\"error\": \"...\"}."
    ),
    modifiers(&BearerSecurity)
)]
pub struct ApiDocument;

/// Adds the `bearer` HTTP security scheme the operations name.
#[derive(Debug)]
struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's token (--token-file or TASKTRAIL_SERVER_TOKEN). \
                         Without a token configured, nothing is checked.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The API's OpenAPI 3 document, as `GET /openapi.json` serves it: the
/// paths and schemas of the routes [`router`](crate::router) serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::api::documented_routes().into_openapi()
}

/// A task status by its stored name (`running`, `success`...). Its schema
/// lists [`TaskStatus::ALL`], so the document names every status there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusName(pub TaskStatus);

impl Serialize for StatusName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl PartialSchema for StatusName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .description(Some("A task's status."))
            .enum_values(Some(TaskStatus::ALL.iter().map(|status| status.as_str())))
            .into()
    }
}

impl ToSchema for StatusName {
    fn name() -> std::borrow::Cow<'static, str> {
        "TaskStatus".into()
    }
}

/// How a simulated agent ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SimulatedOutcome {
    /// The row ends `success`.
    Success,
    /// The row ends `failure`.
    Failure,
}

impl From<SimulatedOutcome> for SimulatedEnd {
    fn from(outcome: SimulatedOutcome) -> Self {
        match outcome {
            SimulatedOutcome::Success => SimulatedEnd::Success,
            SimulatedOutcome::Failure => SimulatedEnd::Failure,
        }
    }
}

/// `POST /tasks`: the task to start. Unknown fields are refused (`422`).
///
/// The schema says what the server checks: a text field holds
/// no control character (U+0000-U+001F, U+007F-U+009F) and no whitespace at
/// either end, and at most 200 bytes of UTF-8 (the schema's `maxLength`
/// counts characters, so it cannot say bytes); `repo` is `owner/name`, each
/// part ASCII letters, digits, `-`, `_` and `.`, neither part `.` nor `..`.
/// The contract test holds the schema and the server to the same answers.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchTaskRequest {
    /// The repository, `owner/name`.
    #[schema(
        min_length = 3,
        max_length = 200,
        pattern = r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)$",
        example = "acme/widgets"
    )]
    pub repo: String,
    /// The issue number.
    #[schema(minimum = 1, maximum = 2147483647, example = 1104)]
    pub issue_number: i64,
    /// Who asked for the task.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
        example = "alice"
    )]
    pub user: String,
    /// The agent's name.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
        example = "fixer"
    )]
    pub agent: String,
    /// The agent's kind.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
        example = "claude_sdk"
    )]
    pub agent_type: String,
    /// The model.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
        example = "claude-opus"
    )]
    pub model: String,
    /// The provider.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
        example = "anthropic"
    )]
    pub provider: String,
    /// How long the simulated agent runs, in milliseconds (default 1000).
    #[schema(minimum = 0, maximum = 3600000, example = 1000)]
    pub duration_ms: Option<u64>,
    /// How the simulated agent ends (default `success`).
    pub outcome: Option<SimulatedOutcome>,
}

/// `201` to `POST /tasks`: the task's `running` row is committed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DispatchedTask {
    /// The task's id.
    #[schema(format = Uuid)]
    pub id: String,
}

/// A `task_history` row, keyed by column name (the same keys as the CLI's
/// `--json`). Times are RFC 3339 in UTC with microseconds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskBody {
    /// The task's id.
    #[schema(format = Uuid)]
    pub id: String,
    /// `owner/name`.
    pub repo: String,
    /// The issue number.
    pub issue_number: u32,
    /// Who asked for the task.
    pub user: String,
    /// The agent's name.
    pub agent: String,
    /// The agent's kind.
    pub agent_type: String,
    /// The model.
    pub model: String,
    /// The provider.
    pub provider: String,
    /// The task's status.
    pub status: StatusName,
    /// The worker that started the task (null on rows written before it was
    /// recorded).
    #[schema(format = Uuid, required = true)]
    pub worker_id: Option<String>,
    /// When the task started.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// When the task finished (null while running and on interrupted rows).
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
    /// Input tokens the agent used.
    #[schema(required = true)]
    pub input_tokens: Option<u32>,
    /// Output tokens the agent used.
    #[schema(required = true)]
    pub output_tokens: Option<u32>,
    /// What the run cost.
    #[schema(required = true)]
    pub cost_usd: Option<f64>,
    /// The agent's turns.
    #[schema(required = true)]
    pub turns: Option<u32>,
    /// What the agent produced.
    #[schema(required = true)]
    pub artifacts: Option<Vec<String>>,
    /// When the row became `interrupted`.
    #[schema(format = DateTime, required = true)]
    pub interrupted_at: Option<String>,
    /// Why it was interrupted (the `[recovery]` reason).
    #[schema(required = true)]
    pub interrupt_reason: Option<String>,
    /// The worker that marked it interrupted.
    #[schema(format = Uuid, required = true)]
    pub interrupted_by: Option<String>,
}

fn rfc3339(at: Option<tasktrail::Timestamp>) -> Option<String> {
    match tasktrail::json::time(at) {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    }
}

impl From<&TaskRecord> for TaskBody {
    fn from(row: &TaskRecord) -> Self {
        Self {
            id: row.id.to_string(),
            repo: row.repo.clone(),
            issue_number: row.issue_number,
            user: row.user.clone(),
            agent: row.agent.clone(),
            agent_type: row.agent_type.clone(),
            model: row.model.clone(),
            provider: row.provider.clone(),
            status: StatusName(row.status),
            worker_id: row.worker_id.map(|id| id.to_string()),
            started_at: rfc3339(Some(row.started_at)).unwrap_or_default(),
            finished_at: rfc3339(row.finished_at),
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_usd: row.cost_usd,
            turns: row.turns,
            artifacts: row.artifacts.clone(),
            interrupted_at: rfc3339(row.interrupted_at),
            interrupt_reason: row.interrupt_reason.clone(),
            interrupted_by: row.interrupted_by.map(|id| id.to_string()),
        }
    }
}

/// Every answer that is not a success.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong; a refused field or parameter is named in it.
    pub error: String,
}

/// The worker's state in `GET /healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every upkeep succeeded at its last attempt (`200`).
    Healthy,
    /// Some upkeep is failing and being retried (`503`).
    Degraded,
    /// Another worker's sweep declared this one dead (`503`): restart it.
    DeclaredDead,
    /// The worker stopped (`503`).
    Stopped,
}

/// `GET /healthz`: the worker's health.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthBody {
    /// The worker's state.
    pub status: HealthStatus,
    /// The worker's id (when healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub worker_id: Option<String>,
    /// How many tasks run here (when healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// What is failing (when degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when (when degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub since: Option<String>,
}

impl HealthBody {
    /// The body for `health` of a worker with `worker_id` running `running`
    /// tasks here.
    pub fn new(health: WorkerHealth, worker_id: tasktrail::WorkerId, running: usize) -> Self {
        let only = |status| Self {
            status,
            worker_id: None,
            running: None,
            reason: None,
            since: None,
        };
        match health {
            WorkerHealth::Healthy => Self {
                worker_id: Some(worker_id.to_string()),
                running: Some(u64::try_from(running).unwrap_or(u64::MAX)),
                ..only(HealthStatus::Healthy)
            },
            WorkerHealth::Degraded { reason, since } => Self {
                reason: Some(reason),
                since: rfc3339(Some(since)),
                ..only(HealthStatus::Degraded)
            },
            WorkerHealth::DeclaredDead => only(HealthStatus::DeclaredDead),
            _ => only(HealthStatus::Stopped),
        }
    }

    /// `200` when healthy, `503` otherwise.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }
}

/// `GET /tasks`: which rows, newest first. An unknown parameter is refused
/// (`400`).
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// Only rows with this status.
    pub status: Option<StatusName>,
    /// Only rows of this repository (`owner/name`).
    pub repo: Option<String>,
    /// At most this many rows.
    #[param(minimum = 0, maximum = 4294967295u32, format = Int64)]
    pub limit: Option<u32>,
}

impl ListTasksQuery {
    /// The names of its parameters (what `GET /tasks` accepts).
    pub const PARAMETERS: [&'static str; 3] = ["status", "repo", "limit"];

    /// Parses `status`, `repo` and `limit` (the last of each wins); the
    /// error names the parameter.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let mut query = Self::default();
        for (name, value) in pairs {
            match name.as_str() {
                "status" => {
                    query.status = Some(StatusName(
                        value
                            .parse::<TaskStatus>()
                            .map_err(|error| format!("parameter `status`: {error}"))?,
                    ));
                }
                "repo" => query.repo = Some(value),
                "limit" => {
                    query.limit = Some(value.parse::<u32>().map_err(|_| {
                        format!("parameter `limit` must be a non-negative integer, not {value:?}")
                    })?);
                }
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        Ok(query)
    }

    /// The storage filter it asks for.
    pub fn filter(self) -> TaskFilter {
        TaskFilter {
            status: self.status.map(|StatusName(status)| status),
            repo: self.repo,
            limit: self.limit,
            offset: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasktrail::json::task_json;

    fn row(status: TaskStatus) -> TaskRecord {
        let storage = MemoryStorage::new();
        let spec = TaskSpec::validate(TaskSpecInput {
            repo: "acme/widgets".into(),
            issue_number: 18,
            user: "alice".into(),
            agent: "fixer".into(),
            agent_type: "claude_sdk".into(),
            model: "claude-opus".into(),
            provider: "anthropic".into(),
        })
        .expect("valid");
        let worker = Worker::builder(std::sync::Arc::new(storage))
            .boot()
            .expect("boot");
        let running = worker.start(Task::queue(spec)).expect("start");
        let id = running.id();
        if status != TaskStatus::Running {
            let report = RunReport::empty();
            let outcome = match status {
                TaskStatus::Failure => Outcome::Failure(report),
                TaskStatus::Cancelled => Outcome::Cancelled(report),
                _ => Outcome::Success(report),
            };
            let _receipt = worker.finish(running, outcome).expect("finish");
        }
        worker.storage().get_task(id).expect("read").expect("row")
    }

    /// The API's task body is the CLI's `--json` row, key for key.
    #[test]
    fn a_task_body_is_the_rows_json_object() {
        for status in [
            TaskStatus::Running,
            TaskStatus::Success,
            TaskStatus::Failure,
        ] {
            let row = row(status);
            assert_eq!(
                serde_json::to_value(TaskBody::from(&row)).expect("serializes"),
                task_json(&row)
            );
        }
    }

    /// What the document says of `GET /tasks`'s parameters is what
    /// [`ListTasksQuery::parse`] accepts, and it serves itself where the
    /// constant says.
    #[test]
    fn the_document_names_the_list_parameters_and_its_own_path() {
        let document = serde_json::to_value(openapi()).expect("serializes");
        let names: Vec<&str> = document["paths"]["/tasks"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(|parameter| parameter["name"].as_str().expect("a name"))
            .collect();
        assert_eq!(names, ListTasksQuery::PARAMETERS);
        for name in ListTasksQuery::PARAMETERS {
            let value = if name == "status" { "running" } else { "5" };
            ListTasksQuery::parse(vec![(name.to_owned(), value.to_owned())])
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        }
        assert!(document["paths"][crate::OPENAPI_PATH]["get"].is_object());
    }

    #[test]
    fn the_status_schema_names_every_status() {
        let schema = serde_json::to_value(StatusName::schema()).expect("serializes");
        let names: Vec<&str> = TaskStatus::ALL
            .iter()
            .map(|status| status.as_str())
            .collect();
        assert_eq!(schema["enum"], serde_json::json!(names));
        for status in TaskStatus::ALL {
            assert_eq!(
                serde_json::to_value(StatusName(status)).expect("serializes"),
                status.as_str()
            );
        }
    }
}
