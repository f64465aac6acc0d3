//! The real binary with a token: where the token comes from (a file or
//! `TASKTRAIL_SERVER_TOKEN`, not both; an empty or unreadable file is one
//! line and exit 2), no non-loopback listener without one, `/metrics`
//! behind it unless `--public-read`, and the token never printed or
//! answered, whatever the requests and the log level.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{dispatch_body, eventually, Answer, ServerProcess};

const TOKEN: &str = "Zq81-the-server-token-nobody-may-see";

/// Runs the binary to its exit; one still running after 10 s (it started
/// when it should not have) is killed and the test fails.
fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasktrail-server"))
        .args(["--db", "memory:"])
        .args(args)
        .env_remove("TASKTRAIL_SERVER_TOKEN")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let exited = eventually(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        let output = child.wait_with_output().expect("wait");
        panic!(
            "{args:?} kept running: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    child.wait_with_output().expect("wait")
}

/// Exit 2, one line on stderr that says `needle`, nothing listening, and
/// no token in it.
fn assert_refused(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tasktrail-server: "), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(!stderr.contains(TOKEN) && !stdout.contains(TOKEN));
}

#[test]
fn bad_token_sources_and_an_open_public_listener_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
    let path = file.to_str().expect("utf-8");
    assert_refused(
        &run(
            &["--token-file", path, "--listen", "127.0.0.1:0"],
            &[("TASKTRAIL_SERVER_TOKEN", TOKEN)],
        ),
        "not both",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    assert_refused(
        &run(
            &[
                "--token-file",
                empty.to_str().expect("utf-8"),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        ),
        "is empty",
    );
    let absent = dir.path().join("absent");
    assert_refused(
        &run(
            &[
                "--token-file",
                absent.to_str().expect("utf-8"),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        ),
        "cannot read the token file",
    );
    assert_refused(
        &run(
            &["--listen", "127.0.0.1:0"],
            &[("TASKTRAIL_SERVER_TOKEN", "")],
        ),
        "TASKTRAIL_SERVER_TOKEN is empty",
    );
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        assert_refused(&run(&["--listen", listen], &[]), "without a token");
        assert_refused(
            &run(&["--listen", listen, "--public-read"], &[]),
            "without a token",
        );
    }
    for bad in [
        ["--max-concurrent-dispatches", "0"],
        ["--request-timeout", "0s"],
    ] {
        let output = run(&[bad[0], bad[1], "--listen", "127.0.0.1:0"], &[]);
        assert_refused(&output, bad[0]);
    }
}

#[test]
fn with_a_token_everything_but_healthz_needs_it_and_it_is_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\r\n")).expect("write");
    let from_file = ServerProcess::start_with(
        "memory:",
        &["--token-file", file.to_str().expect("utf-8")],
        &[],
        "trace",
    );
    let from_env = ServerProcess::start_with(
        "memory:",
        &["--log-format", "json", "--max-concurrent-dispatches", "2"],
        &[("TASKTRAIL_SERVER_TOKEN", TOKEN)],
        "trace",
    );
    let auth = format!("Bearer {TOKEN}");
    let mut answers: Vec<Answer> = Vec::new();
    for server in [&from_file, &from_env] {
        let origin = format!("http://{}", server.address);
        let mut ask = |method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>| {
            let answer = server.exchange(method, path, headers, body);
            answers.push(answer.clone());
            answer
        };
        assert_eq!(ask("GET", "/healthz", &[], None).status, 200);
        for path in ["/tasks", "/metrics", "/nowhere"] {
            let answer = ask("GET", path, &[], None);
            assert_eq!(answer.status, 401, "{path}: {answer:?}");
            assert!(answer.header("www-authenticate").is_some());
            let wrong = format!("Bearer {}", TOKEN.to_lowercase());
            assert_eq!(
                ask("GET", path, &[("Authorization", &wrong)], None).status,
                401
            );
        }
        let body = dispatch_body(1, 60_000, "success");
        assert_eq!(ask("POST", "/tasks", &[], Some(&body)).status, 401);
        let created = ask("POST", "/tasks", &[("Authorization", &auth)], Some(&body));
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.json()["id"].as_str().expect("id").to_owned();
        let metrics = ask("GET", "/metrics", &[("Authorization", &auth)], None);
        assert_eq!(metrics.status, 200);
        assert!(metrics.body.contains("tasktrail_tasks_started_total"));
        // Every other kind of answer, for the search below.
        let login = ask(
            "POST",
            "/ui/login",
            &[
                ("Origin", &origin),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(&format!("token={TOKEN}")),
        );
        assert_eq!(login.status, 204);
        let cookie = login
            .header("set-cookie")
            .and_then(|cookie| cookie.split(';').next())
            .expect("a cookie")
            .to_owned();
        assert_eq!(
            ask("GET", "/tasks", &[("Cookie", &cookie)], None).status,
            200
        );
        assert_eq!(
            ask("POST", "/tasks", &[("Cookie", &cookie)], Some(&body)).status,
            403
        );
        let huge = "x".repeat(100 * 1024);
        assert_eq!(
            ask("POST", "/tasks", &[("Authorization", &auth)], Some(&huge)).status,
            413
        );
        assert_eq!(
            ask(
                "POST",
                "/tasks",
                &[("Authorization", &auth)],
                Some(&dispatch_body(1, 1 << 40, "success"))
            )
            .status,
            422
        );
        let cancelled = ask(
            "POST",
            &format!("/tasks/{id}/cancel"),
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(cancelled.status, 200, "{cancelled:?}");
    }
    // The cap of the second server (2): a third long dispatch is 503.
    for issue in 10..12 {
        let answer = from_env.exchange(
            "POST",
            "/tasks",
            &[("Authorization", &auth)],
            Some(&dispatch_body(issue, 60_000, "success")),
        );
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    let busy = from_env.exchange(
        "POST",
        "/tasks",
        &[("Authorization", &auth)],
        Some(&dispatch_body(12, 60_000, "success")),
    );
    assert_eq!(busy.status, 503, "{busy:?}");
    assert_eq!(busy.header("retry-after"), Some("1"));
    answers.push(busy);
    for mut server in [from_file, from_env] {
        server.signal(15);
        assert!(server.child.wait().expect("wait").success());
        // The pipes drain on their threads.
        let _ = eventually(Duration::from_millis(500), || false);
        let mut printed = server.lines();
        printed.extend(server.stderr_lines());
        assert!(!printed.is_empty());
        for line in printed {
            assert!(!line.contains(TOKEN), "printed: {line}");
        }
    }
    for answer in &answers {
        assert!(!answer.text().contains(TOKEN), "answered: {answer:?}");
    }
}

#[test]
fn public_read_opens_the_gets_and_metrics_only() {
    let server = ServerProcess::start_with(
        "memory:",
        &["--public-read"],
        &[("TASKTRAIL_SERVER_TOKEN", TOKEN)],
        "off",
    );
    assert_eq!(server.exchange("GET", "/tasks", &[], None).status, 200);
    assert_eq!(server.exchange("GET", "/metrics", &[], None).status, 200);
    let body = dispatch_body(1, 0, "success");
    let refused = server.exchange("POST", "/tasks", &[], Some(&body));
    assert_eq!(refused.status, 401);
    let answer = server.exchange("GET", "/tasks", &[], None);
    assert_eq!(
        answer.json().as_array().map(Vec::len),
        Some(0),
        "nothing written"
    );
}
