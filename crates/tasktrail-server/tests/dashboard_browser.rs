//! The dashboard as a person uses it, in a real browser: Debian's headless
//! `chromium` driven through `chromedriver` (WebDriver on an ephemeral
//! loopback port) by `fantoccini`. Runs when `TASKTRAIL_BROWSER_TESTS=1`
//! (`.ci/run` sets it and installs both packages); under `CI` a missing
//! browser or driver fails the test instead of skipping it.
//!
//! One scenario, in order: the server binary starts with a token; the
//! browser is sent to the login form, logs in with the token, and lands on
//! the task list; a task dispatched through the JSON API appears as
//! `running` without a reload; the task's page cancels it (confirm, POST
//! through the API's cancel) and shows `cancelled` without a reload; the
//! server is SIGKILLed with two tasks running and restarted, and the list
//! shows them `interrupted` with their `[recovery]` reason; the status
//! filter lives in the URL. A screenshot of every page is saved under
//! `target/screenshots/` (`$CARGO_TARGET_DIR/screenshots/` when set).

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{dispatch_body, dispatched_id, eventually, exchange, ServerProcess};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tasktrail::prelude::*;

const GATE: &str = "TASKTRAIL_BROWSER_TESTS";
const TOKEN: &str = "browser-test-token-5f2a9c";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the browser may take to show something (not a timing
/// assertion: a bound on polling, far past what a slow machine needs).
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether to run: the gate is set, or `CI` is (then it must run). With
/// the gate set, a missing browser or driver fails.
fn enabled() -> bool {
    let gate = std::env::var(GATE).is_ok_and(|value| value == "1");
    let ci = std::env::var_os("CI").is_some();
    if !gate && !ci {
        tasktrail_diesel::report_skipped_test(&format!(
            "skipped: set {GATE}=1 to run the browser tests (needs chromium and chromium-driver)"
        ));
        return false;
    }
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
        );
    }
    true
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let address = format!("127.0.0.1:{port}");
        assert!(
            eventually(PATIENCE, || std::net::TcpStream::connect(&address).is_ok()),
            "chromedriver never listened on {address}"
        );
        Self {
            child,
            url: format!("http://{address}"),
        }
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--hide-scrollbars"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Polls `script` (a JS expression) until it is `true`; panics naming
/// `what` past [`PATIENCE`].
async fn until(client: &Client, what: &str, script: &str) {
    let start = Instant::now();
    loop {
        let value = client
            .execute(&format!("return Boolean({script});"), vec![])
            .await
            .expect("execute");
        if value == Value::Bool(true) {
            return;
        }
        if start.elapsed() > PATIENCE {
            let url = client.current_url().await.map(|u| u.to_string());
            panic!("the page never showed {what} ({script}) at {url:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// The page has not been reloaded since `mark` set the marker.
async fn mark(client: &Client) {
    client
        .execute(
            "window.__tasktrailMarker = 'not reloaded'; return null;",
            vec![],
        )
        .await
        .expect("mark");
}

async fn assert_not_reloaded(client: &Client, what: &str) {
    let marker = client
        .execute("return window.__tasktrailMarker || null;", vec![])
        .await
        .expect("marker");
    assert_eq!(
        marker,
        json!("not reloaded"),
        "{what}: the page was reloaded"
    );
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn dispatch(server: &ServerProcess, issue: u32) -> TaskId {
    let body = dispatch_body(issue, 600_000, "success");
    let answer = exchange(
        server.address,
        "POST",
        "/tasks",
        &[("Authorization", &bearer())],
        Some(body.as_bytes()),
    );
    let value: Value = serde_json::from_str(&answer.body).expect("json");
    dispatched_id(&(answer.status, value))
}

fn row_status(server: &ServerProcess, id: TaskId) -> String {
    let answer = exchange(
        server.address,
        "GET",
        &format!("/tasks/{id}"),
        &[("Authorization", &bearer())],
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["status"].as_str().expect("status").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_cancels_and_sees_what_a_crash_interrupted() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("dashboard.db").display().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let token_arg = token_file.display().to_string();
    let args = ["--token-file", token_arg.as_str()];
    let server = ServerProcess::start_with(&db, &args, &[], "warn");
    let base = format!("http://{}", server.address);
    let driver = Driver::start();
    let client = browser(&driver).await;

    // Without the cookie, the page sends the browser to the login form.
    client.goto(&format!("{base}/")).await.expect("goto");
    let form = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("form#login"))
        .await
        .expect("the login form");
    screenshot(&client, "login").await;
    let field = client
        .find(Locator::Css("input[name=token]"))
        .await
        .expect("token field");
    field.send_keys("not-the-token").await.expect("type");
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    until(
        &client,
        "the refusal",
        "document.getElementById('login-message').textContent.length > 0",
    )
    .await;
    assert!(
        client.find(Locator::Css("table#tasks")).await.is_err(),
        "a wrong token let the browser in"
    );
    field.clear().await.expect("clear");
    field.send_keys(TOKEN).await.expect("type");
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("table#tasks"))
        .await
        .expect("the task list after logging in");
    let source = client.source().await.expect("source");
    assert!(!source.contains(TOKEN), "the token is never on a page");

    // A dispatch through the API shows up as running, without a reload.
    mark(&client).await;
    let watched = dispatch(&server, 101);
    until(
        &client,
        "the dispatched task as running",
        &format!("document.querySelector('tr[data-id=\"{watched}\"][data-status=\"running\"] .running-for')"),
    )
    .await;
    assert_not_reloaded(&client, "the list refreshed itself").await;
    // The counts are a snapshot up to --dashboard-counts-max-age (5 s)
    // old: they catch up by themselves, through the page's own refresh,
    // and say when they were counted.
    until(
        &client,
        "the running task in the counts",
        "(document.querySelector('[data-count=running] b') || {}).textContent === '1'",
    )
    .await;
    assert_not_reloaded(&client, "the counts refreshed themselves").await;
    assert!(text_of(&client, "#counts-age").await.contains("counted "));
    screenshot(&client, "tasks").await;

    // Cancel from the task's page: confirm, then `cancelled` in place.
    client
        .goto(&format!("{base}/ui/tasks/{watched}"))
        .await
        .expect("goto task");
    let cancel = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("button#cancel"))
        .await
        .expect("a Cancel button on a running task");
    assert_eq!(text_of(&client, "#status").await, "running");
    screenshot(&client, "task-running").await;
    mark(&client).await;
    cancel.click().await.expect("click cancel");
    client.accept_alert().await.expect("the confirmation");
    until(
        &client,
        "the task as cancelled",
        "document.getElementById('status').textContent === 'cancelled'",
    )
    .await;
    assert_not_reloaded(&client, "the cancel").await;
    assert!(
        client.find(Locator::Css("button#cancel")).await.is_err(),
        "no Cancel once cancelled"
    );
    assert_eq!(
        row_status(&server, watched),
        "cancelled",
        "the row itself says cancelled"
    );
    screenshot(&client, "task-cancelled").await;

    // Two tasks in flight when the server is killed.
    let orphans = [dispatch(&server, 201), dispatch(&server, 202)];
    let mut server = server;
    server.signal(9);
    let _ = server.child.wait();
    drop(server);
    let server = ServerProcess::start_with(&db, &args, &[], "warn");
    let base = format!("http://{}", server.address);
    for orphan in orphans {
        assert_eq!(row_status(&server, orphan), "interrupted");
    }

    // The status filter lives in the URL; the interrupted rows show why.
    client
        .goto(&format!("{base}/?status=interrupted"))
        .await
        .expect("goto filtered");
    let interrupted = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("table#tasks"))
        .await
        .expect("the filtered list (the cookie still holds)");
    drop(interrupted);
    for orphan in orphans {
        let reason = text_of(&client, &format!("tr[data-id=\"{orphan}\"] .reason")).await;
        assert!(reason.starts_with("recovered at boot: "), "{reason}");
        assert!(reason.contains("died ("), "{reason}");
    }
    let shown = client
        .execute("return Array.from(document.querySelectorAll('#tasks tbody tr')).map(function (r) { return r.dataset.status; });", vec![])
        .await
        .expect("rows");
    assert_eq!(
        shown,
        json!(["interrupted", "interrupted"]),
        "only the filtered status"
    );
    assert_eq!(
        client
            .find(Locator::Css("select[name=status]"))
            .await
            .expect("select")
            .prop("value")
            .await
            .expect("value")
            .as_deref(),
        Some("interrupted"),
        "the form shows the URL's filter"
    );
    assert_eq!(text_of(&client, "[data-count=interrupted] b").await, "2");
    assert_eq!(text_of(&client, "[data-count=cancelled] b").await, "1");
    screenshot(&client, "tasks-interrupted").await;
    client
        .goto(&format!("{base}/?status=cancelled"))
        .await
        .expect("goto filtered");
    until(&client, "the cancelled row alone", &format!(
        "document.querySelectorAll('#tasks tbody tr').length === 1 && document.querySelector('tr[data-id=\"{watched}\"]')"
    ))
    .await;

    // The recovered task's page names the recovery.
    client
        .goto(&format!("{base}/ui/tasks/{}", orphans[0]))
        .await
        .expect("goto orphan");
    let note = text_of(&client, "#recovery").await;
    assert!(note.contains("recovered at boot"), "{note}");
    assert!(client.find(Locator::Css("button#cancel")).await.is_err());
    screenshot(&client, "task-interrupted").await;

    // The killed server's worker is dead, with its proof.
    client
        .goto(&format!("{base}/ui/workers"))
        .await
        .expect("goto workers");
    let proof = text_of(&client, "tr[data-state=dead] td.proof").await;
    assert!(proof.starts_with("dead: "), "{proof}");
    assert!(
        proof.contains("process"),
        "proven by the pid probe: {proof}"
    );
    assert_eq!(
        text_of(&client, "tr[data-state=alive] td:nth-child(5)").await,
        "0"
    );
    screenshot(&client, "workers").await;

    // The chart shows the hour's interrupted and cancelled rows.
    client
        .goto(&format!("{base}/ui/outcomes"))
        .await
        .expect("goto outcomes");
    until(
        &client,
        "an interrupted band",
        "document.querySelector('svg.chart rect[data-status=interrupted][data-rows=\"2\"]')",
    )
    .await;
    screenshot(&client, "outcomes").await;

    // A phone-sized window still shows the list.
    client.set_window_size(390, 844).await.expect("resize");
    client.goto(&format!("{base}/")).await.expect("goto");
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("table#tasks"))
        .await
        .expect("the list on a phone");
    screenshot(&client, "tasks-phone").await;

    client.close().await.expect("close the browser");
    drop(server);
}
