//! The operators' dashboard: server-rendered HTML pages at `/` and under
//! `/ui/` ([`router`]), read through the same [`Storage`] queries as the
//! JSON API (no SQL of its own), with a little inline JavaScript and no
//! build step, fonts or CDNs.
//!
//! - `/` and `/ui/tasks`: the task list, newest first, [`PAGE_SIZE`] rows a
//!   page, filtered by `status` and `repo` in the URL (`?status=running&
//!   repo=acme/widgets&page=2`), with the count of every status at the
//!   top ([`counts`]: a shared snapshot refreshed in the background, never
//!   counted per view, with its age on the page); the page fetches
//!   `/ui/tasks/live` (the same query, the counts, table and pager only)
//!   every few seconds and swaps it in.
//! - `/ui/tasks/{id}`: one task, every column, its sessions and whether
//!   each is still resumable, the recovery reason, and a Cancel button
//!   while it runs (it posts to the API's `POST /tasks/{id}/cancel`).
//! - `/ui/workers`: every worker, its state, host, pid, heartbeat age,
//!   in-flight rows, the liveness verdict for the ones still `alive`, and
//!   how death was proven for the dead ones.
//! - `/ui/outcomes`: final rows per hour over the last 24 hours as a
//!   stacked bar chart ([`chart`]), server-rendered SVG.
//! - `GET /ui/login`: the form that trades the token for the session
//!   cookie ([`crate::guard`]'s `POST /ui/login`).
//!
//! Who may see them is the guard's business ([`crate::guarded`]): with a
//! token, the pages need the session cookie or the bearer header like
//! every route, and the Cancel button's POST passes the guard's
//! same-origin check because the page sends it from its own origin.

pub mod chart;
pub mod counts;
mod pages;

use std::sync::Arc;
use std::time::Duration;
use tasktrail::backend::{OwnerFacts, OwnerLock};
use tasktrail::Liveness;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_FRAME_OPTIONS};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tasktrail::prelude::*;
use tasktrail::{
    InterruptCause, LivenessPolicy, OutcomeBucket, SessionKey, SessionRecord, Timestamp, WorkerId,
    WorkerRecord, WorkerState,
};

use crate::dispatch::Dispatcher;
use crate::guard::LOGIN_PATH;
use counts::{CountsSnapshots, CountsView, DEFAULT_COUNTS_MAX_AGE};

/// How many tasks one page of the list shows.
pub const PAGE_SIZE: u32 = 50;

/// How often the task list fetches its rows again, in milliseconds.
pub const REFRESH_MILLISECONDS: u32 = 3_000;

/// The highest page number a URL may ask for (so the offset fits).
const MAX_PAGE: u32 = u32::MAX / PAGE_SIZE;

/// How many of the newest `interrupted` rows the workers page reads to
/// find how each dead worker's death was proven.
const PROOF_ROWS: u32 = 1_000;

/// What the pages share.
#[derive(Debug)]
struct Ui {
    dispatcher: Arc<Dispatcher>,
    /// Whether the server has a token: the pages then offer a log-out.
    token_required: bool,
    /// The task list's status counts.
    counts: Arc<CountsSnapshots>,
}

/// How the dashboard is served.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Whether the server has a token: only decides whether the pages show
    /// a log-out button; the guard ([`crate::guarded`]) decides who gets in.
    pub token_required: bool,
    /// How old the task list's status counts may get before a page view
    /// starts a new count in the background (`--dashboard-counts-max-age`).
    pub counts_max_age: Duration,
    /// The clock the counts' age is read on.
    pub clock: Arc<dyn tasktrail::Clock>,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        Self {
            token_required: false,
            counts_max_age: DEFAULT_COUNTS_MAX_AGE,
            clock: Arc::new(tasktrail::SystemClock),
        }
    }
}

/// The dashboard's routes over the dispatcher's store, with the default
/// options but `token_required` (see [`router_with`]).
pub fn router(dispatcher: Arc<Dispatcher>, token_required: bool) -> Router {
    router_with(
        dispatcher,
        DashboardOptions {
            token_required,
            ..DashboardOptions::default()
        },
    )
}

/// The dashboard's routes over the dispatcher's store.
pub fn router_with(dispatcher: Arc<Dispatcher>, options: DashboardOptions) -> Router {
    Router::new()
        .route("/", get(tasks_page))
        .route("/ui", get(tasks_page))
        .route("/ui/tasks", get(tasks_page))
        .route("/ui/tasks/live", get(tasks_fragment))
        .route("/ui/tasks/{id}", get(task_page))
        .route("/ui/workers", get(workers_page))
        .route("/ui/outcomes", get(outcomes_page))
        .route(LOGIN_PATH, get(login_page))
        .with_state(Arc::new(Ui {
            dispatcher,
            token_required: options.token_required,
            counts: Arc::new(CountsSnapshots::new(options.counts_max_age, options.clock)),
        }))
}

/// The task list's filters and page, as the URL spells them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskListQuery {
    /// `status=`: only rows with this status.
    pub status: Option<TaskStatus>,
    /// `repo=`: only rows of this `owner/name`.
    pub repo: Option<String>,
    /// `page=`: which page, from 1.
    pub page: u32,
}

/// A query parameter the task list refuses, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// `status` is not a status.
    #[error("parameter `status`: {0}")]
    Status(String),
    /// `page` is not a whole number from 1 to the largest page.
    #[error("parameter `page` must be a whole number from 1 to {MAX_PAGE}, not {0:?}")]
    Page(String),
    /// A parameter the list does not know.
    #[error("unknown parameter `{0}`")]
    Unknown(String),
    /// The query string itself could not be read.
    #[error("{0}")]
    Malformed(String),
}

impl TaskListQuery {
    /// Parses `status`, `repo` and `page`; an empty `status` or `repo`
    /// means any (what the filter form sends for "all").
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, QueryError> {
        let mut query = TaskListQuery {
            page: 1,
            ..TaskListQuery::default()
        };
        for (name, value) in pairs {
            match name.as_str() {
                "status" if value.is_empty() => query.status = None,
                "status" => {
                    query.status = Some(
                        value
                            .parse::<TaskStatus>()
                            .map_err(|error| QueryError::Status(error.to_string()))?,
                    );
                }
                "repo" if value.is_empty() => query.repo = None,
                "repo" => query.repo = Some(value),
                "page" => {
                    query.page = match value.parse::<u32>() {
                        Ok(page) if (1..=MAX_PAGE).contains(&page) => page,
                        _ => return Err(QueryError::Page(value.chars().take(32).collect())),
                    };
                }
                other => return Err(QueryError::Unknown(other.chars().take(64).collect())),
            }
        }
        Ok(query)
    }

    /// The storage filter of this page: one row more than a page, so the
    /// page knows whether an older one exists.
    pub fn filter(&self) -> TaskFilter {
        TaskFilter {
            status: self.status,
            repo: self.repo.clone(),
            limit: Some(PAGE_SIZE + 1),
            offset: Some((self.page - 1) * PAGE_SIZE),
        }
    }

    /// This query as a URL query string (`?status=...`), with `page` and
    /// `status` replaced; empty parts left out.
    fn href(&self, status: Option<TaskStatus>, page: u32) -> String {
        let mut parts = Vec::new();
        if let Some(status) = status {
            parts.push(format!("status={}", status.as_str()));
        }
        if let Some(repo) = &self.repo {
            parts.push(format!("repo={}", percent_encode(repo)));
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        if parts.is_empty() {
            "?".to_owned()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One page of the task list, read from the store.
#[derive(Debug)]
pub struct TaskListView {
    /// What was asked for.
    pub query: TaskListQuery,
    /// The page's rows, newest first; an unreadable row is its error.
    pub rows: Vec<Result<TaskRecord, StorageError>>,
    /// Whether an older page exists.
    pub has_older: bool,
    /// Rows of every status (of the repo, when filtered by one), as last
    /// counted.
    pub counts: CountsView,
    /// When it was read (running rows' ages are measured to it).
    pub now: Timestamp,
}

impl TaskListView {
    /// Reads a page: the same `list_task_rows` the JSON API's `GET /tasks`
    /// runs; the counts come from the snapshot ([`counts`]).
    pub fn load(
        storage: &dyn Storage,
        query: TaskListQuery,
        counts: CountsView,
        now: Timestamp,
    ) -> Result<Self, StorageError> {
        let mut rows = storage.list_task_rows(&query.filter())?;
        let has_older = rows.len() > PAGE_SIZE as usize;
        rows.truncate(PAGE_SIZE as usize);
        Ok(Self {
            query,
            rows,
            has_older,
            counts,
            now,
        })
    }
}

/// The task-list page (`GET /`) as HTML: what the handler answers.
pub fn render_task_list_page(view: &TaskListView, token_required: bool) -> String {
    pages::task_list_page(view, token_required).into_string()
}

/// One session of a task and whether it may still be resumed.
#[derive(Debug)]
struct SessionView {
    session: SessionRecord,
    resumable: Resumable,
}

#[derive(Debug, PartialEq, Eq)]
enum Resumable {
    Yes,
    NotWhileRunning,
    Invalidated,
    Superseded,
}

#[derive(Debug)]
struct TaskView {
    task: TaskRecord,
    sessions: Vec<SessionView>,
    cause: Option<InterruptCause>,
    now: Timestamp,
}

fn load_task(
    storage: &dyn Storage,
    id: TaskId,
    now: Timestamp,
) -> Result<Option<TaskView>, StorageError> {
    let Some(task) = storage.get_task(id)? else {
        return Ok(None);
    };
    let mut sessions = Vec::new();
    for session in storage.list_task_sessions(id)? {
        let resumable = if session.invalidated_at.is_some() {
            Resumable::Invalidated
        } else if task.status == TaskStatus::Running {
            Resumable::NotWhileRunning
        } else {
            let key = SessionKey {
                repo: session.repo.clone(),
                issue_number: session.issue_number,
                agent: session.agent.clone(),
            };
            match storage.resumable_session(&key)? {
                Some(offered) if offered.session_id == session.session_id => Resumable::Yes,
                _ => Resumable::Superseded,
            }
        };
        sessions.push(SessionView { session, resumable });
    }
    let cause = (task.status == TaskStatus::Interrupted).then(|| {
        InterruptCause::classify(
            task.interrupt_reason.as_deref(),
            task.interrupted_by == task.worker_id,
        )
    });
    Ok(Some(TaskView {
        task,
        sessions,
        cause,
        now,
    }))
}

/// One worker on the workers page.
#[derive(Debug)]
struct WorkerView {
    worker: WorkerRecord,
    in_flight: usize,
    /// For an `alive` row: what the liveness judge says of it now.
    verdict: Option<Liveness>,
    /// For a `dead` row: the sweep's proof, from a row it recovered.
    proof: Option<String>,
    this_server: bool,
}

fn load_workers(
    storage: &dyn Storage,
    this_worker: WorkerId,
    now: Timestamp,
) -> Result<Vec<WorkerView>, StorageError> {
    let mut workers = storage.list_workers()?;
    workers.sort_by_key(|worker| {
        (
            match worker.state {
                WorkerState::Alive => 0,
                WorkerState::Dead => 1,
                WorkerState::Stopped => 2,
            },
            std::cmp::Reverse(worker.heartbeat_at),
        )
    });
    let running = storage.list_tasks(&TaskFilter {
        status: Some(TaskStatus::Running),
        ..TaskFilter::default()
    })?;
    let any_dead = workers
        .iter()
        .any(|worker| worker.state == WorkerState::Dead);
    let recovered = if any_dead {
        storage.list_tasks(&TaskFilter {
            status: Some(TaskStatus::Interrupted),
            limit: Some(PROOF_ROWS),
            ..TaskFilter::default()
        })?
    } else {
        Vec::new()
    };
    let policy = LivenessPolicy::new(tasktrail::host::probe_identity());
    Ok(workers
        .into_iter()
        .map(|worker| {
            let in_flight = running
                .iter()
                .filter(|task| task.worker_id == Some(worker.id))
                .count();
            let verdict = (worker.state == WorkerState::Alive).then(|| {
                let facts = OwnerFacts::observed_at(worker.clone(), now, OwnerLock::NotCheckable);
                policy.judge(&facts, &tasktrail::host::ProcfsProbe)
            });
            let proof = (worker.state == WorkerState::Dead)
                .then(|| death_proof(&recovered, worker.id))
                .flatten();
            WorkerView {
                this_server: worker.id == this_worker,
                worker,
                in_flight,
                verdict,
                proof,
            }
        })
        .collect())
}

/// How a sweep proved `worker` dead: the cause its recovery reason names
/// (`recovered at boot: worker <id> died (<cause>)`), from the newest row
/// of it that another worker recovered.
fn death_proof(recovered: &[TaskRecord], worker: WorkerId) -> Option<String> {
    let reason = recovered
        .iter()
        .filter(|task| task.worker_id == Some(worker) && task.interrupted_by != task.worker_id)
        .find_map(|task| task.interrupt_reason.as_deref())?;
    let marker = " died (";
    let cause = match reason.find(marker) {
        Some(at) => reason[at + marker.len()..]
            .strip_suffix(')')
            .unwrap_or(&reason[at + marker.len()..]),
        None => reason,
    };
    Some(cause.to_owned())
}

/// An answer that is not a page: its status and one line, as HTML.
#[derive(Debug)]
struct PageError {
    status: StatusCode,
    message: String,
}

impl From<StorageError> for PageError {
    fn from(error: StorageError) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: error.to_string(),
        }
    }
}

impl From<QueryError> for PageError {
    fn from(error: QueryError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Html(pages::error_page(self.status, &self.message).into_string()),
        )
            .into_response();
        secure_headers(&mut response);
        response
    }
}

/// No caching of live figures; no framing (the Cancel button cannot be
/// clicked through someone else's page); scripts and styles only inline
/// ones from this server, nothing fetched from elsewhere.
fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

fn page(html: String) -> Response {
    let mut response = Html(html).into_response();
    secure_headers(&mut response);
    response
}

/// Runs a storage read on the blocking pool.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, PageError> {
    match tokio::task::spawn_blocking(read).await {
        Ok(result) => Ok(result?),
        Err(join) => Err(PageError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: join.to_string(),
        }),
    }
}

fn now() -> Timestamp {
    tasktrail::Clock::now(&tasktrail::SystemClock)
}

async fn task_list(
    ui: &Ui,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<TaskListView, PageError> {
    let pairs = query
        .map_err(|rejection| QueryError::Malformed(rejection.body_text()))?
        .0;
    let query = TaskListQuery::parse(pairs)?;
    let storage = Arc::clone(ui.dispatcher.worker().storage());
    let counts = ui.counts.view(&storage, query.repo.as_deref()).await;
    blocking(move || TaskListView::load(storage.as_ref(), query, counts, now())).await
}

async fn tasks_page(
    State(ui): State<Arc<Ui>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let view = task_list(&ui, query).await?;
    Ok(page(render_task_list_page(&view, ui.token_required)))
}

async fn tasks_fragment(
    State(ui): State<Arc<Ui>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let view = task_list(&ui, query).await?;
    Ok(page(pages::task_list_live(&view).into_string()))
}

async fn task_page(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let Ok(id) = id.parse::<TaskId>() else {
        return Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "task id {:?} is not a UUID",
                id.chars().take(64).collect::<String>()
            ),
        });
    };
    let storage = Arc::clone(ui.dispatcher.worker().storage());
    let this_worker = ui.dispatcher.worker().id();
    let view = blocking(move || load_task(storage.as_ref(), id, now()))
        .await?
        .ok_or_else(|| PageError {
            status: StatusCode::NOT_FOUND,
            message: format!("no task {id}"),
        })?;
    let cancellable =
        view.task.status == TaskStatus::Running && view.task.worker_id == Some(this_worker);
    Ok(page(
        pages::task_page(&view, cancellable, ui.token_required).into_string(),
    ))
}

async fn workers_page(State(ui): State<Arc<Ui>>) -> Result<Response, PageError> {
    let storage = Arc::clone(ui.dispatcher.worker().storage());
    let this_worker = ui.dispatcher.worker().id();
    let at = now();
    let workers = blocking(move || load_workers(storage.as_ref(), this_worker, at)).await?;
    Ok(page(
        pages::workers_page(&workers, at, ui.token_required).into_string(),
    ))
}

async fn outcomes_page(State(ui): State<Arc<Ui>>) -> Result<Response, PageError> {
    let storage = Arc::clone(ui.dispatcher.worker().storage());
    let at = now();
    let since = chart::chart_start(at);
    let buckets: Vec<OutcomeBucket> =
        blocking(move || storage.count_outcomes_by_hour(since)).await?;
    Ok(page(
        pages::outcomes_page(&buckets, at, ui.token_required).into_string(),
    ))
}

async fn login_page(
    State(ui): State<Arc<Ui>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    // Only a path on this server: never an open redirect.
    let next = pairs
        .into_iter()
        .find(|(name, _)| name == "next")
        .map(|(_, value)| value)
        .filter(|next| next.starts_with('/') && !next.starts_with("//") && !next.contains('\\'))
        .unwrap_or_else(|| "/".to_owned());
    page(pages::login_page(&next, ui.token_required).into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn the_query_parses_and_bad_parameters_are_named() {
        let query = TaskListQuery::parse(pairs(&[
            ("status", "interrupted"),
            ("repo", "acme/widgets"),
            ("page", "3"),
        ]))
        .expect("valid");
        assert_eq!(query.status, Some(TaskStatus::Interrupted));
        assert_eq!(query.repo.as_deref(), Some("acme/widgets"));
        let filter = query.filter();
        assert_eq!(filter.limit, Some(PAGE_SIZE + 1));
        assert_eq!(filter.offset, Some(2 * PAGE_SIZE));
        assert_eq!(
            query.href(query.status, 4),
            "?status=interrupted&repo=acme/widgets&page=4"
        );
        let all = TaskListQuery::parse(pairs(&[("status", ""), ("repo", "")])).expect("valid");
        assert_eq!((all.status, all.repo.as_deref(), all.page), (None, None, 1));
        assert_eq!(all.filter().offset, Some(0));
        assert!(matches!(
            TaskListQuery::parse(pairs(&[("status", "sleeping")])),
            Err(QueryError::Status(_))
        ));
        for page in ["0", "-1", "x", &(MAX_PAGE as u64 + 1).to_string()] {
            assert!(
                matches!(
                    TaskListQuery::parse(pairs(&[("page", page)])),
                    Err(QueryError::Page(_))
                ),
                "{page}"
            );
        }
        assert!(matches!(
            TaskListQuery::parse(pairs(&[("colour", "red")])),
            Err(QueryError::Unknown(_))
        ));
    }

    #[test]
    fn a_repo_is_percent_encoded_in_links() {
        let query = TaskListQuery {
            repo: Some("a b/c&d=e".to_owned()),
            ..TaskListQuery::default()
        };
        assert_eq!(query.href(None, 1), "?repo=a%20b/c%26d%3De");
    }

    #[test]
    fn the_proof_of_death_is_the_cause_a_sweep_recorded() {
        let dead = WorkerId::new_random();
        let sweeper = WorkerId::new_random();
        let at = now();
        let row = |worker, by, reason: &str| TaskRecord {
            id: TaskId::new_random(),
            repo: "acme/widgets".into(),
            issue_number: 1,
            user: "u".into(),
            agent: "a".into(),
            agent_type: "t".into(),
            model: "m".into(),
            provider: "p".into(),
            status: TaskStatus::Interrupted,
            worker_id: Some(worker),
            started_at: at,
            finished_at: None,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            turns: None,
            artifacts: None,
            interrupted_at: Some(at),
            interrupt_reason: Some(reason.to_owned()),
            interrupted_by: Some(by),
        };
        let rows = vec![
            // Its own interrupt (a SIGTERM) proves nothing about its death.
            row(dead, dead, "server stopped"),
            row(
                dead,
                sweeper,
                &format!("recovered at boot: worker {dead} died (process 42 on h is gone)"),
            ),
        ];
        assert_eq!(
            death_proof(&rows, dead).as_deref(),
            Some("process 42 on h is gone")
        );
        assert_eq!(death_proof(&rows, sweeper), None);
    }
}
