//! The pages' HTML ([`maud`] templates): one layout, one stylesheet and a
//! few lines of script inline, nothing fetched from anywhere else.

use axum::http::StatusCode;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use tasktrail::prelude::*;
use tasktrail::{Liveness, OutcomeBucket, Timestamp, WorkerState};

use super::chart::{outcomes_svg, status_colour, CHART_HOURS};
use super::counts::CountsView;
use super::{Resumable, TaskListView, TaskView, WorkerView, PAGE_SIZE, REFRESH_MILLISECONDS};
use crate::guard::{LOGIN_PATH, LOGOUT_PATH};

const STYLE: &str = r#"
:root { color-scheme: light; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: .5rem 1rem; display: flex; flex-wrap: wrap; gap: .25rem 1rem; align-items: center; }
header a { color: #fff; text-decoration: none; padding: .25rem .1rem; }
header a.here { border-bottom: 2px solid #fff; }
header .brand { font-weight: 700; margin-right: .5rem; }
header form { margin-left: auto; }
main { padding: 1rem; max-width: 72rem; margin: 0 auto; }
h1 { font-size: 1.3rem; margin: .2rem 0 .8rem; }
h2 { font-size: 1.05rem; margin: 1.2rem 0 .5rem; }
a { color: #0969da; }
.counts { display: flex; flex-wrap: wrap; gap: .4rem; margin: 0 0 .8rem; padding: 0; list-style: none; }
.counts a { display: inline-block; padding: .2rem .6rem; border: 1px solid var(--line); border-radius: 1rem; background: #fff; text-decoration: none; color: inherit; }
.counts a.here { outline: 2px solid #0969da; }
.counts b { margin-left: .3rem; }
.badge { display: inline-block; padding: 0 .45rem; border-radius: .6rem; color: #fff; font-size: .85em; white-space: nowrap; }
.scroll { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: .4rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: .85em; color: var(--muted); font-weight: 600; white-space: nowrap; }
td.when { white-space: nowrap; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.reason { font-size: .88em; color: #953800; }
td .reason { min-width: 14rem; }
.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: .8rem; }
.filters label { display: flex; flex-direction: column; font-size: .85em; color: var(--muted); }
input, select, button { font: inherit; padding: .3rem .5rem; border: 1px solid var(--line); border-radius: .3rem; background: #fff; }
button { cursor: pointer; }
button.danger { background: #cf222e; color: #fff; border-color: #a40e26; }
.pager { display: flex; gap: 1rem; align-items: center; margin-top: .6rem; }
.status-line { font-size: .85em; color: var(--muted); margin-top: .4rem; }
.counts-age { font-size: .85em; color: var(--muted); margin: -.4rem 0 .8rem; }
.counts-age.stale { color: #953800; }
dl.columns { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; background: #fff; border: 1px solid var(--line); border-radius: .4rem; padding: .6rem .8rem; margin: 0; }
dl.columns dt { color: var(--muted); }
dl.columns dd { margin: 0; overflow-wrap: anywhere; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: .4rem; padding: .5rem .8rem; }
.chart { width: 100%; height: auto; background: #fff; border: 1px solid var(--line); border-radius: .4rem; }
.legend { display: flex; flex-wrap: wrap; gap: .8rem; list-style: none; padding: 0; }
.legend span { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; vertical-align: -1px; }
code { font-size: .9em; overflow-wrap: anywhere; }
@media (max-width: 40rem) { .wide { display: none; } main { padding: .6rem; } }
"#;

/// Logs out (drops the session cookie) and goes to the login page.
const LOGOUT_SCRIPT: &str = r#"
document.querySelectorAll('form.logout').forEach(function (form) {
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    fetch(form.action, { method: 'POST', credentials: 'same-origin' })
      .then(function () { location.href = form.dataset.login; });
  });
});
"#;

fn time(at: Timestamp) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn optional_time(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "—".to_owned(), time)
}

/// `3h 05m`, `4m 09s`, `12s`: a running row's age, a heartbeat's.
pub(super) fn age(from: Timestamp, to: Timestamp) -> String {
    let seconds = (to - from).num_seconds().max(0);
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours >= 48 {
        format!("{}d {:02}h", hours / 24, hours % 24)
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

fn badge(status: TaskStatus) -> Markup {
    html! {
        span class="badge" data-status=(status.as_str()) style={ "background:" (status_colour(status)) } {
            (status.as_str())
        }
    }
}

fn layout(title: &str, here: &str, token_required: bool, body: Markup) -> Markup {
    let nav = [
        ("/", "Tasks", "tasks"),
        ("/ui/workers", "Workers", "workers"),
        ("/ui/outcomes", "Outcomes", "outcomes"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tasktrail" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span class="brand" { "tasktrail" }
                    @for (href, label, key) in nav {
                        a href=(href) class=[(key == here).then_some("here")] { (label) }
                    }
                    @if token_required {
                        form class="logout" method="post" action=(LOGOUT_PATH) data-login=(LOGIN_PATH) {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
                script { (PreEscaped(LOGOUT_SCRIPT)) }
            }
        }
    }
}

/// The task list's live part: the counts, the table and the pager (what
/// `/ui/tasks/live` answers and the page swaps in).
pub(super) fn task_list_live(view: &TaskListView) -> Markup {
    let query = &view.query;
    let counts = &view.counts;
    let shown: &[(TaskStatus, u64)] = counts
        .counted
        .as_ref()
        .map_or(&[], |counted| counted.counts.as_slice());
    let total: u64 = shown.iter().map(|(_, rows)| rows).sum();
    html! {
        ul class="counts" id="counts" {
            li { a href=(query.href(None, 1)) class=[query.status.is_none().then_some("here")] data-count="all" {
                "all" @if counts.counted.is_some() { b { (total) } }
            } }
            @for (status, rows) in shown {
                li { a href=(query.href(Some(*status), 1))
                       class=[(query.status == Some(*status)).then_some("here")]
                       data-count=(status.as_str()) {
                    (badge(*status)) b { (rows) }
                } }
            }
        }
        (counts_age(counts))
        div class="scroll" {
            table id="tasks" {
                thead { tr {
                    th { "Started (UTC)" } th { "Status" } th { "Task" } th class="wide" { "Agent" }
                    th class="wide" { "Model" } th class="wide" { "User" } th { "Ran" }
                } }
                tbody {
                    @if view.rows.is_empty() {
                        tr { td colspan="7" class="muted" { "No tasks match." } }
                    }
                    @for row in &view.rows {
                        @match row {
                            Ok(task) => { (task_row(task, view.now)) }
                            Err(error) => {
                                tr class="unreadable" { td colspan="7" class="reason" { "unreadable row: " (error) } }
                            }
                        }
                    }
                }
            }
        }
        nav class="pager" {
            @if query.page > 1 {
                a href=(query.href(query.status, query.page - 1)) rel="prev" { "← Newer" }
            }
            span class="muted" { "Page " (query.page) " · " (PAGE_SIZE) " a page" }
            @if view.has_older {
                a href=(query.href(query.status, query.page + 1)) rel="next" { "Older →" }
            }
        }
        p class="status-line" { "Read at " (time(view.now)) }
    }
}

/// How old the counts are (`counted 3s ago at …`), and whether they are
/// stale (the last count failed) or missing (the first one failed).
fn counts_age(counts: &CountsView) -> Markup {
    html! {
        @match &counts.counted {
            Some(counted) => {
                p class=(if counts.is_stale() { "counts-age stale" } else { "counts-age" }) id="counts-age"
                  data-counted-at=(counted.counted_at.to_rfc3339())
                  data-stale=(counts.is_stale()) {
                    "Counts as of " (time(counted.counted_at)) ", counted "
                    (age(counted.counted_at, counts.shown_at)) " ago"
                    @if let Some(failure) = &counts.failure {
                        " · stale: the last count failed: " (failure)
                    }
                }
            }
            None => {
                p class="counts-age stale" id="counts-age" data-stale="true" {
                    "Not counted: "
                    (counts.failure.as_deref().unwrap_or("no count has finished yet"))
                }
            }
        }
    }
}

fn task_row(task: &TaskRecord, now: Timestamp) -> Markup {
    html! {
        tr data-id=(task.id) data-status=(task.status.as_str()) {
            td class="when" { (time(task.started_at)) }
            td {
                (badge(task.status))
                @if task.status == TaskStatus::Interrupted {
                    @if let Some(reason) = &task.interrupt_reason {
                        div class="reason" { (reason) }
                    }
                }
            }
            td { a href={ "/ui/tasks/" (task.id) } { (task.repo) "#" (task.issue_number) } }
            td class="wide" { (task.agent) }
            td class="wide" { (task.model) }
            td class="wide" { (task.user) }
            td class="when" {
                @if task.status == TaskStatus::Running {
                    span class="running-for" { "running " (age(task.started_at, now)) }
                } @else {
                    (age(task.started_at, task.ended_at()))
                }
            }
        }
    }
}

const LIST_SCRIPT: &str = r#"
(function () {
  var live = document.getElementById('live');
  var note = document.getElementById('refresh-note');
  function refresh() {
    if (document.hidden) { return; }
    fetch(live.dataset.src, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (response) {
        if (!response.ok) { throw new Error('HTTP ' + response.status); }
        return response.text();
      })
      .then(function (html) { live.innerHTML = html; note.textContent = ''; })
      .catch(function (error) { note.textContent = 'Not refreshed: ' + error.message; });
  }
  setInterval(refresh, Number(live.dataset.every));
})();
"#;

pub(super) fn task_list_page(view: &TaskListView, token_required: bool) -> Markup {
    let query = &view.query;
    let live_src = format!("/ui/tasks/live{}", query.href(query.status, query.page));
    let title = match (&query.status, &query.repo) {
        (None, None) => "Tasks".to_owned(),
        (status, repo) => format!(
            "Tasks{}{}",
            status.map(|s| format!(" · {s}")).unwrap_or_default(),
            repo.as_ref().map(|r| format!(" · {r}")).unwrap_or_default()
        ),
    };
    layout(
        &title,
        "tasks",
        token_required,
        html! {
            h1 { (title) }
            form class="filters" method="get" action="/" {
                label { "Status"
                    select name="status" {
                        option value="" selected[query.status.is_none()] { "all" }
                        @for status in TaskStatus::ALL {
                            option value=(status.as_str()) selected[query.status == Some(status)] { (status.as_str()) }
                        }
                    }
                }
                label { "Repo"
                    input type="text" name="repo" placeholder="owner/name" value=[query.repo.as_deref()];
                }
                button type="submit" { "Filter" }
                @if query.status.is_some() || query.repo.is_some() {
                    a href="/" { "Clear" }
                }
            }
            div id="live" data-src=(live_src) data-every=(REFRESH_MILLISECONDS) {
                (task_list_live(view))
            }
            p class="status-line" { "Refreshes every " (REFRESH_MILLISECONDS / 1000) " s. " span id="refresh-note" {} }
            script { (PreEscaped(LIST_SCRIPT)) }
        },
    )
}

const CANCEL_SCRIPT: &str = r#"
(function () {
  var button = document.getElementById('cancel');
  if (!button) { return; }
  var message = document.getElementById('cancel-message');
  button.addEventListener('click', function () {
    if (!confirm('Cancel task ' + button.dataset.task + '?')) { return; }
    button.disabled = true;
    fetch('/tasks/' + button.dataset.task + '/cancel', { method: 'POST', credentials: 'same-origin' })
      .then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      })
      .then(function (answer) {
        if (!answer.ok) { throw new Error(answer.body.error || 'refused'); }
        var status = document.getElementById('status');
        status.textContent = answer.body.status;
        status.dataset.status = answer.body.status;
        status.style.background = button.dataset[answer.body.status] || '#6e7781';
        document.getElementById('finished-at').textContent = answer.body.finished_at || '—';
        button.remove();
        message.textContent = 'Cancelled.';
      })
      .catch(function (error) { button.disabled = false; message.textContent = 'Not cancelled: ' + error.message; });
  });
})();
"#;

pub(super) fn task_page(view: &TaskView, cancellable: bool, token_required: bool) -> Markup {
    let task = &view.task;
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "—".to_owned());
    let columns: Vec<(&str, String)> = vec![
        ("id", task.id.to_string()),
        ("repo", task.repo.clone()),
        ("issue_number", task.issue_number.to_string()),
        ("user", task.user.clone()),
        ("agent", task.agent.clone()),
        ("agent_type", task.agent_type.clone()),
        ("model", task.model.clone()),
        ("provider", task.provider.clone()),
        (
            "worker_id",
            or_dash(task.worker_id.map(|id| id.to_string())),
        ),
        ("started_at", time(task.started_at)),
        (
            "input_tokens",
            or_dash(task.input_tokens.map(|n| n.to_string())),
        ),
        (
            "output_tokens",
            or_dash(task.output_tokens.map(|n| n.to_string())),
        ),
        (
            "cost_usd",
            or_dash(task.cost_usd.map(|n| format!("{n:.4}"))),
        ),
        ("turns", or_dash(task.turns.map(|n| n.to_string()))),
        (
            "artifacts",
            or_dash(task.artifacts.as_ref().map(|a| a.join(", "))),
        ),
        ("interrupted_at", optional_time(task.interrupted_at)),
        ("interrupt_reason", or_dash(task.interrupt_reason.clone())),
        (
            "interrupted_by",
            or_dash(task.interrupted_by.map(|id| id.to_string())),
        ),
    ];
    layout(
        &format!("{}#{}", task.repo, task.issue_number),
        "tasks",
        token_required,
        html! {
            h1 { (task.repo) "#" (task.issue_number) " " span class="muted" { (task.agent) } }
            @if let Some(cause) = view.cause {
                p class="note" id="recovery" {
                    @if cause.is_recovery() { "Recovered by a sweep: " } @else { "Interrupted: " }
                    (task.interrupt_reason.as_deref().unwrap_or("no reason recorded"))
                    " " span class="muted" { "(" (cause) ")" }
                }
            }
            dl class="columns" {
                dt { "status" }
                dd {
                    span class="badge" id="status" data-status=(task.status.as_str())
                        style={ "background:" (status_colour(task.status)) } { (task.status.as_str()) }
                    @if task.status == TaskStatus::Running {
                        " " span class="muted running-for" { "running " (super::pages::age(task.started_at, view.now)) }
                    }
                }
                dt { "finished_at" }
                dd id="finished-at" { (optional_time(task.finished_at)) }
                @for (name, value) in &columns {
                    dt { (name) }
                    dd { code { (value) } }
                }
            }
            @if cancellable {
                p {
                    button type="button" class="danger" id="cancel" data-task=(task.id)
                        data-cancelled=(status_colour(TaskStatus::Cancelled)) { "Cancel" }
                    " " span id="cancel-message" class="muted" {}
                }
            } @else if task.status == TaskStatus::Running {
                p class="muted" { "Running on another worker: cancel it through that worker's server." }
            }
            h2 { "Sessions" }
            @if view.sessions.is_empty() {
                p class="muted" { "No session recorded." }
            } @else {
                div class="scroll" { table id="sessions" {
                    thead { tr { th { "Session" } th { "Created (UTC)" } th { "Resumable" } } }
                    tbody {
                        @for entry in &view.sessions {
                            tr data-resumable=(matches!(entry.resumable, Resumable::Yes)) {
                                td { code { (entry.session.session_id.as_str()) } }
                                td class="when" { (time(entry.session.created_at)) }
                                td {
                                    @match entry.resumable {
                                        Resumable::Yes => { "yes: the session offered for " (entry.session.repo) "#" (entry.session.issue_number) " / " (entry.session.agent) }
                                        Resumable::NotWhileRunning => { "not yet: its task is running" }
                                        Resumable::Superseded => { "no: a newer session of the same issue and agent is offered" }
                                        Resumable::Invalidated => {
                                            "no: invalidated " (optional_time(entry.session.invalidated_at))
                                            @if let Some(reason) = &entry.session.invalidation_reason {
                                                div class="reason" { (reason) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
            p { a href="/" { "← All tasks" } }
            script { (PreEscaped(CANCEL_SCRIPT)) }
        },
    )
}

pub(super) fn workers_page(workers: &[WorkerView], now: Timestamp, token_required: bool) -> Markup {
    layout(
        "Workers",
        "workers",
        token_required,
        html! {
            h1 { "Workers" }
            div class="scroll" { table id="workers" {
                thead { tr {
                    th { "State" } th { "Host" } th { "PID" } th { "Heartbeat" } th { "In flight" }
                    th { "Liveness" } th class="wide" { "Worker" }
                } }
                tbody {
                    @if workers.is_empty() { tr { td colspan="7" class="muted" { "No worker has registered." } } }
                    @for view in workers {
                        @let worker = &view.worker;
                        tr data-worker=(worker.id) data-state=(worker.state.as_str()) {
                            td { (worker.state.as_str()) @if view.this_server { " " span class="muted" { "(this server)" } } }
                            td { (worker.host) }
                            td { (worker.pid) }
                            td class="when" { (age(worker.heartbeat_at, now)) " ago" }
                            td { (view.in_flight) }
                            td class="proof" {
                                @match (&worker.state, &view.verdict, &view.proof) {
                                    (WorkerState::Stopped, _, _) => {
                                        "stopped cleanly " (optional_time(worker.stopped_at))
                                    }
                                    (WorkerState::Dead, _, Some(proof)) => { "dead: " (proof) }
                                    (WorkerState::Dead, _, None) => {
                                        "dead: declared by a recovery sweep (no row it recovered is among the newest interrupted ones)"
                                    }
                                    (WorkerState::Alive, Some(Liveness::Dead(cause)), _) => {
                                        "dead, not yet swept: " (cause)
                                    }
                                    (WorkerState::Alive, Some(Liveness::Stalled { silence }), _) => {
                                        "stalled: holds its lock, silent for " (silence.num_seconds()) "s"
                                    }
                                    (WorkerState::Alive, Some(Liveness::NotYetProvable(why)), _) => {
                                        "not yet provable: " (format!("{why:?}"))
                                    }
                                    (WorkerState::Alive, _, _) => { "alive" }
                                }
                            }
                            td class="wide" { code { (worker.id) } }
                        }
                    }
                }
            } }
            p class="status-line" {
                "Death is proven, never guessed: a dead worker's proof is the cause its sweep recorded; "
                "an alive row is judged here by the pid probe (same host) or its lease."
            }
        },
    )
}

pub(super) fn outcomes_page(
    buckets: &[OutcomeBucket],
    now: Timestamp,
    token_required: bool,
) -> Markup {
    let mut totals: Vec<(TaskStatus, u64)> = TaskStatus::ALL
        .iter()
        .filter(|status| status.is_final())
        .map(|status| (*status, 0))
        .collect();
    for bucket in buckets {
        if let Some(total) = totals
            .iter_mut()
            .find(|(status, _)| *status == bucket.status)
        {
            total.1 += bucket.rows;
        }
    }
    layout(
        "Outcomes",
        "outcomes",
        token_required,
        html! {
            h1 { "Outcomes per hour, last " (CHART_HOURS) " hours" }
            (PreEscaped(outcomes_svg(buckets, now)))
            ul class="legend" {
                @for (status, rows) in &totals {
                    li { span style={ "background:" (status_colour(*status)) } {} (status.as_str()) " " b { (rows) } }
                }
            }
            p class="status-line" { "Hours in UTC, by when each task ended. Read at " (time(now)) }
        },
    )
}

const LOGIN_SCRIPT: &str = r#"
(function () {
  var form = document.getElementById('login');
  var message = document.getElementById('login-message');
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    fetch(form.action, { method: 'POST', credentials: 'same-origin', body: new URLSearchParams(new FormData(form)) })
      .then(function (response) {
        if (response.status === 204) { location.href = form.dataset.next; return; }
        message.textContent = response.status === 401 ? 'That is not the token.' : 'Refused (HTTP ' + response.status + ').';
      })
      .catch(function (error) { message.textContent = error.message; });
  });
})();
"#;

pub(super) fn login_page(next: &str, token_required: bool) -> Markup {
    layout(
        "Log in",
        "",
        false,
        html! {
            h1 { "Log in" }
            @if token_required {
                form id="login" method="post" action=(LOGIN_PATH) data-next=(next) class="filters" {
                    label { "Token"
                        input type="password" name="token" autocomplete="current-password" required autofocus;
                    }
                    button type="submit" { "Log in" }
                }
                p id="login-message" class="reason" {}
                p class="muted" { "The token is kept in an HttpOnly cookie for this browser session." }
                script { (PreEscaped(LOGIN_SCRIPT)) }
            } @else {
                p { "This server has no token: " a href=(next) { "go on" } "." }
            }
        },
    )
}

pub(super) fn error_page(status: StatusCode, message: &str) -> Markup {
    layout(
        status.as_str(),
        "",
        false,
        html! {
            h1 { (status) }
            p class="reason" { (message) }
            p { a href="/" { "← All tasks" } }
        },
    )
}
