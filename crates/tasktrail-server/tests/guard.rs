//! Nobody gets in who does not belong, and no request takes more than its
//! share: the token (bearer header, session cookie and its cross-site
//! check, `--public-read`), the body limit, field bounds, the dispatch cap
//! and the request timeout, over real HTTP against the server in this
//! process (so the rows can be counted in the store).

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{dispatch_body, eventually, exchange, Answer, InProcessServer};
use serde_json::json;
use tasktrail::prelude::*;
use tasktrail_core::intercept::{InterceptedStorage, StorageCall};
use tasktrail_server::guard::{LOGIN_PATH, SESSION_COOKIE};
use tasktrail_server::{Guard, Token, MAX_BODY_BYTES};

const TOKEN: &str = "k7Jq2-correct-horse-battery-staple";

fn guard(public_read: bool) -> Guard {
    Guard {
        token: Some(Token::new(TOKEN).expect("token")),
        public_read,
        ..Guard::default()
    }
}

fn server(public_read: bool) -> InProcessServer {
    InProcessServer::start_guarded(
        Arc::new(MemoryStorage::new()),
        Some(guard(public_read)),
        256,
    )
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn assert_unauthorized(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {answer:?}");
    assert!(
        answer
            .header("www-authenticate")
            .is_some_and(|value| value.starts_with("Bearer")),
        "{what}: {answer:?}"
    );
    assert!(!answer.text().contains(TOKEN), "{what}: {answer:?}");
}

/// Logs in the way the dashboard's page does; the session cookie's
/// `name=value`.
fn log_in(server: &InProcessServer) -> String {
    let origin = format!("http://{}", server.address);
    let answer = server.exchange(
        "POST",
        LOGIN_PATH,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &origin),
        ],
        Some(&format!("token={TOKEN}")),
    );
    assert_eq!(answer.status, 204, "{answer:?}");
    let cookie = answer.header("set-cookie").expect("a cookie").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    assert!(pair.starts_with(&format!("{SESSION_COOKIE}=")), "{pair}");
    pair
}

#[test]
fn without_the_right_token_nothing_is_read_or_written() {
    let server = server(false);
    let body = dispatch_body(1, 60_000, "success");
    let same_length = "x".repeat(TOKEN.len());
    let wrong = [
        ("no header", None),
        (
            "a wrong token of the same length",
            Some(format!("Bearer {same_length}")),
        ),
        (
            "a shorter token",
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ),
        ("a longer token", Some(format!("Bearer {TOKEN}x"))),
        ("an empty token", Some("Bearer ".to_owned())),
        ("another scheme", Some(format!("Basic {TOKEN}"))),
        ("the bare token", Some(TOKEN.to_owned())),
    ];
    let running = server.exchange(
        "POST",
        "/tasks",
        &[("Authorization", &bearer())],
        Some(&body),
    );
    assert_eq!(running.status, 201, "the right token passes: {running:?}");
    let id = running.json()["id"].as_str().expect("id").to_owned();
    for (what, header) in &wrong {
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        for (method, path, body) in [
            ("POST", "/tasks".to_owned(), Some(body.as_str())),
            ("POST", format!("/tasks/{id}/cancel"), None),
            ("GET", "/tasks".to_owned(), None),
            ("GET", format!("/tasks/{id}"), None),
            ("GET", "/no/such/route".to_owned(), None),
        ] {
            let answer = server.exchange(method, &path, &headers, body);
            assert_unauthorized(&answer, &format!("{what}: {method} {path}"));
        }
    }
    // Nothing written: the one row is the right token's, still running.
    let rows = server.rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, TaskStatus::Running);
    // /healthz is open; everything else passes with the token.
    assert_eq!(server.exchange("GET", "/healthz", &[], None).status, 200);
    let auth = [("Authorization", bearer())];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(server.exchange("GET", "/tasks", &auth, None).status, 200);
    assert_eq!(
        server
            .exchange("GET", &format!("/tasks/{id}"), &auth, None)
            .status,
        200
    );
    let cancelled = server.exchange("POST", &format!("/tasks/{id}/cancel"), &auth, None);
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.json()["status"], "cancelled");
}

#[test]
fn the_session_cookie_reads_but_writes_only_from_the_same_origin() {
    let server = server(false);
    let origin = format!("http://{}", server.address);
    // The login refuses a wrong token, a missing field and a cross-site
    // form post, and sets no cookie.
    for (headers, form, status) in [
        (
            vec![("Origin", origin.as_str())],
            "token=wrong".to_owned(),
            401,
        ),
        (vec![("Origin", origin.as_str())], "other=1".to_owned(), 422),
        (
            vec![("Origin", "http://evil.example")],
            format!("token={TOKEN}"),
            403,
        ),
        (vec![], format!("token={TOKEN}"), 403),
    ] {
        let mut headers = headers;
        headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        let answer = server.exchange("POST", LOGIN_PATH, &headers, Some(&form));
        assert_eq!(answer.status, status, "{headers:?} {form}: {answer:?}");
        assert!(answer.header("set-cookie").is_none(), "{answer:?}");
        assert!(!answer.text().contains(TOKEN));
    }
    let cookie = log_in(&server);
    let answer = server.exchange("GET", "/tasks", &[("Cookie", &cookie)], None);
    assert_eq!(answer.status, 200, "a read with the cookie: {answer:?}");
    // A running task to try to cancel.
    let auth = bearer();
    let id = server
        .exchange(
            "POST",
            "/tasks",
            &[("Authorization", &auth)],
            Some(&dispatch_body(1, 60_000, "success")),
        )
        .json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A cross-site form post carrying the cookie (as a browser would send
    // it were it not SameSite=Strict): refused, nothing written.
    let body = dispatch_body(2, 0, "success");
    for extra in [
        vec![],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", origin.as_str()),
        ],
        vec![("Content-Type", "application/x-www-form-urlencoded")],
    ] {
        let mut headers = vec![("Cookie", cookie.as_str())];
        headers.extend(extra.iter().copied());
        let answer = server.exchange("POST", "/tasks", &headers, Some(&body));
        assert_eq!(answer.status, 403, "{headers:?}: {answer:?}");
        let answer = server.exchange("POST", &format!("/tasks/{id}/cancel"), &headers, None);
        assert_eq!(answer.status, 403, "{headers:?}: {answer:?}");
    }
    let rows = server.rows();
    assert_eq!(rows.len(), 1, "nothing written: {rows:?}");
    assert_eq!(rows[0].status, TaskStatus::Running, "not cancelled");
    // A forged cookie is no cookie.
    let forged = format!("{SESSION_COOKIE}={TOKEN}");
    assert_unauthorized(
        &server.exchange("GET", "/tasks", &[("Cookie", &forged)], None),
        "the token as the cookie",
    );
    // From the page itself: passes.
    for same_origin in [
        vec![("Sec-Fetch-Site", "same-origin")],
        vec![("Origin", origin.as_str())],
    ] {
        let mut headers = vec![("Cookie", cookie.as_str())];
        headers.extend(same_origin.iter().copied());
        let answer = server.exchange("POST", "/tasks", &headers, Some(&body));
        assert_eq!(answer.status, 201, "{headers:?}: {answer:?}");
    }
    let answer = server.exchange(
        "POST",
        &format!("/tasks/{id}/cancel"),
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-origin")],
        None,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(server.rows().len(), 3);
    // The logout drops the cookie.
    let answer = server.exchange("POST", "/ui/logout", &[], None);
    assert_eq!(answer.status, 204);
    assert!(answer
        .header("set-cookie")
        .is_some_and(|cookie| cookie.contains("Max-Age=0")));
}

#[test]
fn public_read_opens_the_gets_only() {
    let server = server(true);
    let id = server
        .exchange(
            "POST",
            "/tasks",
            &[("Authorization", &bearer())],
            Some(&dispatch_body(1, 60_000, "success")),
        )
        .json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let answer = server.exchange("GET", "/tasks", &[], None);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json().as_array().map(Vec::len), Some(1));
    assert_eq!(
        server
            .exchange("GET", &format!("/tasks/{id}"), &[], None)
            .status,
        200
    );
    assert_unauthorized(
        &server.exchange("POST", "/tasks", &[], Some(&dispatch_body(2, 0, "success"))),
        "a dispatch",
    );
    assert_unauthorized(
        &server.exchange("POST", &format!("/tasks/{id}/cancel"), &[], None),
        "a cancel",
    );
    let rows = server.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, TaskStatus::Running);
}

#[test]
fn a_body_too_large_is_413_and_bad_fields_are_422_naming_them() {
    let server = server(false);
    let auth = bearer();
    let headers = [("Authorization", auth.as_str())];
    // Valid JSON, just too long: padding in a field.
    let mut large = json!({
        "repo": "acme/widgets", "issue_number": 1, "user": "alice", "agent": "fixer",
        "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
    });
    large["user"] = json!("u".repeat(MAX_BODY_BYTES));
    let large = large.to_string();
    let answer = server.exchange("POST", "/tasks", &headers, Some(&large));
    assert_eq!(answer.status, 413, "{}", answer.status);
    assert!(answer.json()["error"].is_string(), "{answer:?}");
    let larger = "x".repeat(4 * MAX_BODY_BYTES);
    assert_eq!(
        server
            .exchange("POST", "/tasks", &headers, Some(&larger))
            .status,
        413
    );
    let mut valid = json!({
        "repo": "acme/widgets", "issue_number": 1, "user": "alice", "agent": "fixer",
        "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
    });
    let long = "m".repeat(TaskSpec::MAX_FIELD_LEN + 1);
    for (field, value) in [
        ("model", json!(long)),
        ("repo", json!(format!("acme/{long}"))),
        ("user", json!("tab\there")),
        ("duration_ms", json!(tasktrail_server::MAX_DURATION_MS + 1)),
        ("duration_ms", json!(u64::MAX)),
        ("duration_ms", json!(1.5)),
        ("issue_number", json!(i64::from(i32::MAX) + 1)),
    ] {
        let mut body = valid.clone();
        body[field] = value;
        let answer = server.exchange("POST", "/tasks", &headers, Some(&body.to_string()));
        assert_eq!(answer.status, 422, "{field}: {answer:?}");
        let message = answer.json()["error"].as_str().expect("error").to_owned();
        assert!(message.contains(field), "{field}: {message}");
    }
    // Not JSON at all: 400.
    assert_eq!(
        server
            .exchange("POST", "/tasks", &headers, Some("{not json"))
            .status,
        400
    );
    assert!(server.rows().is_empty(), "nothing written");
    // The longest field that is allowed passes.
    valid["model"] = json!("m".repeat(TaskSpec::MAX_FIELD_LEN));
    let answer = server.exchange("POST", "/tasks", &headers, Some(&valid.to_string()));
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[test]
fn past_the_dispatch_cap_a_burst_gets_503_with_retry_after_and_no_row() {
    const CAP: usize = 4;
    const BURST: u32 = 16;
    let server = InProcessServer::start_guarded(Arc::new(MemoryStorage::new()), None, CAP);
    let address = server.address;
    let started = Instant::now();
    let clients: Vec<_> = (1..=BURST)
        .map(|issue| {
            thread::spawn(move || {
                exchange(
                    address,
                    "POST",
                    "/tasks",
                    &[],
                    Some(dispatch_body(issue, 60_000, "success").as_bytes()),
                )
            })
        })
        .collect();
    let answers: Vec<Answer> = clients
        .into_iter()
        .map(|client| client.join().expect("client"))
        .collect();
    assert!(started.elapsed() < Duration::from_secs(20), "not queued");
    let created: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(created.len(), CAP, "{answers:?}");
    assert_eq!(busy.len(), BURST as usize - CAP, "{answers:?}");
    for answer in &busy {
        assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");
        assert!(answer.json()["error"].is_string());
    }
    assert_eq!(
        server.rows().len(),
        CAP,
        "a refused dispatch writes nothing"
    );
    // A slot comes back once a task ends: cancel one, dispatch again.
    let id = created[0].json()["id"].as_str().expect("id").to_owned();
    assert_eq!(
        server
            .request("POST", &format!("/tasks/{id}/cancel"), None)
            .0,
        200
    );
    let again = server.exchange(
        "POST",
        "/tasks",
        &[],
        Some(&dispatch_body(99, 60_000, "success")),
    );
    assert_eq!(again.status, 201, "{again:?}");
    let full = server.exchange(
        "POST",
        "/tasks",
        &[],
        Some(&dispatch_body(100, 60_000, "success")),
    );
    assert_eq!(full.status, 503, "{full:?}");
    assert_eq!(server.rows().len(), CAP + 1);
}

#[test]
fn a_request_past_the_timeout_is_503_and_leaves_no_running_row() {
    let slow_inserts = InterceptedStorage::new(MemoryStorage::new(), |call| {
        if call == StorageCall::InsertRunning {
            thread::sleep(Duration::from_millis(1_500));
        }
        Ok(())
    });
    let server = InProcessServer::start_guarded(
        Arc::new(slow_inserts),
        Some(Guard {
            request_timeout: Duration::from_millis(300),
            ..Guard::default()
        }),
        256,
    );
    let started = Instant::now();
    let answer = server.exchange("POST", "/tasks", &[], Some(&dispatch_body(1, 0, "success")));
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(answer.json()["error"]
        .as_str()
        .is_some_and(|message| message.contains("longer than")));
    // Whatever the INSERT did after the answer, no row is left running:
    // a task started for a request that timed out is abandoned and the
    // worker interrupts it.
    thread::sleep(Duration::from_millis(1_500));
    assert!(
        eventually(Duration::from_secs(20), || {
            let rows = server.rows();
            rows.len() <= 1
                && rows.iter().all(|row| row.status.is_final())
                && server.dispatcher.running() == 0
        }),
        "{:?}",
        server.rows()
    );
}
