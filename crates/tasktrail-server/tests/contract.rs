//! `GET /openapi.json` against what the server does: the real binary, with
//! a token, answers a scripted run of every documented operation, and every
//! answer is checked against the document (its status documented for that
//! operation, its content type, its body valid against the documented
//! schema, `Retry-After` on every `503` that documents it, `WWW-Authenticate`
//! on every `401`). Every documented operation must be exercised, every
//! undocumented method on a documented path must answer `405`, and request
//! bodies the document's schema accepts must be the ones the server
//! accepts (and those it refuses, refused).

mod common;

use std::collections::BTreeSet;

use common::{eventually, Answer, ServerProcess};
use serde_json::{json, Value};
use tasktrail::prelude::*;

const TOKEN: &str = "contract-test-token-0123456789";
const BEARER: &str = "Bearer contract-test-token-0123456789";

fn start(db: &str, args: &[&str]) -> ServerProcess {
    ServerProcess::start_with(db, args, &[("TASKTRAIL_SERVER_TOKEN", TOKEN)], "off")
}

/// The document, and which operations a run exercised.
struct Contract {
    document: Value,
    exercised: BTreeSet<(String, String)>,
}

/// One schema of the document as a validator: the schema with the
/// document's components beside it, so `#/components/...` resolves.
fn validator(document: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    if let (Some(object), Some(components)) = (root.as_object_mut(), document.get("components")) {
        object.insert("components".to_owned(), components.clone());
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|error| panic!("the document's schema does not compile: {error}: {root}"))
}

fn errors_of(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect()
}

impl Contract {
    fn new(document: Value) -> Self {
        Self {
            document,
            exercised: BTreeSet::new(),
        }
    }

    /// The documented path template `path` matches (`/tasks/{id}`...).
    fn template_of(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        self.document["paths"]
            .as_object()?
            .keys()
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(part, segment)| part.starts_with('{') || part == segment)
            })
            .cloned()
    }

    /// Why `answer` to `method path` is not what the document says (none:
    /// it is).
    fn divergence(&mut self, method: &str, path: &str, answer: &Answer) -> Vec<String> {
        let Some(template) = self.template_of(path) else {
            return vec![format!("{path} is not a documented path")];
        };
        let method = method.to_ascii_lowercase();
        let Some(operation) = self.document["paths"][&template].get(&method).cloned() else {
            return vec![format!("{method} {template} is not documented")];
        };
        self.exercised.insert((template.clone(), method.clone()));
        let status = answer.status.to_string();
        let Some(response) = operation["responses"]
            .get(&status)
            .or_else(|| operation["responses"].get("default"))
        else {
            return vec![format!(
                "{method} {template} answered {status}, which it does not document: {}",
                answer.body
            )];
        };
        let mut problems = Vec::new();
        match response.get("content").and_then(Value::as_object) {
            Some(content) => {
                let content_type = answer
                    .header("content-type")
                    .unwrap_or("")
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                match content.get(&content_type) {
                    None => problems.push(format!(
                        "{method} {template} {status}: content type {content_type:?} is not documented"
                    )),
                    Some(media) => {
                        let body: Value = match serde_json::from_str(&answer.body) {
                            Ok(body) => body,
                            Err(error) => {
                                problems.push(format!("{method} {template} {status}: not JSON: {error}"));
                                Value::Null
                            }
                        };
                        let schema = validator(&self.document, &media["schema"]);
                        for error in errors_of(&schema, &body) {
                            problems.push(format!(
                                "{method} {template} {status}: the body does not match the schema: {error}: {body}"
                            ));
                        }
                    }
                }
            }
            None if !answer.body.is_empty() => problems.push(format!(
                "{method} {template} {status}: a body where none is documented"
            )),
            None => {}
        }
        let documented_headers = response["headers"].as_object().cloned().unwrap_or_default();
        // Retry-After on a 503, WWW-Authenticate on a 401: documented, and
        // always sent.
        for (name, documented_on) in [("retry-after", "503"), ("www-authenticate", "401")] {
            let documented = documented_headers
                .keys()
                .any(|key| key.eq_ignore_ascii_case(name));
            if status == documented_on && !documented {
                problems.push(format!(
                    "{method} {template} {status}: {name} is not documented"
                ));
            }
            if status == documented_on && documented && answer.header(name).is_none() {
                problems.push(format!("{method} {template} {status}: no {name} header"));
            }
        }
        problems
    }

    /// The documented operations, `(path, method)`.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in self.document["paths"].as_object().expect("paths") {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    operations.insert((path.clone(), method.to_owned()));
                }
            }
        }
        operations
    }
}

/// Sends `method path` (with the token unless `bearer` is false) and checks
/// the answer against the document; returns it.
fn call(
    server: &ServerProcess,
    contract: &mut Contract,
    problems: &mut Vec<String>,
    (method, path): (&str, &str),
    body: Option<&str>,
    bearer: bool,
) -> Answer {
    let headers: &[(&str, &str)] = if bearer {
        &[("Authorization", BEARER)]
    } else {
        &[]
    };
    let answer = server.exchange(method, path, headers, body);
    problems.extend(contract.divergence(method, path, &answer));
    answer
}

/// A request that must be refused: method and path, body, whether it
/// carries the token, the status expected.
type Refusal = ((&'static str, String), Option<String>, bool, u16);

fn dispatch(duration_ms: u64) -> String {
    json!({
        "repo": "acme/widgets", "issue_number": 18, "user": "alice", "agent": "fixer",
        "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
        "duration_ms": duration_ms, "outcome": "success",
    })
    .to_string()
}

#[test]
fn every_answer_of_the_real_server_is_what_its_document_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");
    let server = start(db.to_str().expect("utf-8"), &[]);
    // The document as served (with the token) is the library's document.
    let served = server.exchange("GET", "/openapi.json", &[("Authorization", BEARER)], None);
    assert_eq!(served.status, 200, "{}", served.body);
    let document: Value = serde_json::from_str(&served.body).expect("the document is JSON");
    assert_eq!(
        document,
        serde_json::to_value(tasktrail_server::openapi()).expect("serializes")
    );
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    let mut contract = Contract::new(document);
    let mut problems = Vec::new();
    let mut run = |request: (&str, &str), body: Option<&str>, bearer: bool| {
        call(&server, &mut contract, &mut problems, request, body, bearer)
    };

    // The document itself, /healthz (open without the token), and the
    // document without the token (refused like every other GET).
    assert_eq!(run(("GET", "/openapi.json"), None, true).status, 200);
    assert_eq!(run(("GET", "/openapi.json"), None, false).status, 401);
    assert_eq!(run(("GET", "/healthz"), None, false).status, 200);

    // A dispatch, then the row read back, listed, cancelled.
    let created = run(("POST", "/tasks"), Some(&dispatch(60_000)), true);
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        run(("GET", &format!("/tasks/{id}")), None, true).status,
        200
    );
    let listed = run(
        ("GET", "/tasks?status=running&repo=acme/widgets&limit=5"),
        None,
        true,
    );
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().as_array().map(Vec::len), Some(1));
    assert_eq!(run(("GET", "/tasks"), None, true).status, 200);
    let cancelled = run(("POST", &format!("/tasks/{id}/cancel")), None, true);
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(
        run(("POST", &format!("/tasks/{id}/cancel")), None, true).status,
        409
    );

    // A task that runs to its end: every column filled in.
    let quick = run(("POST", "/tasks"), Some(&dispatch(0)), true);
    assert_eq!(quick.status, 201, "{}", quick.body);
    let quick = quick.json()["id"].as_str().expect("an id").to_owned();
    assert!(eventually(std::time::Duration::from_secs(20), || {
        server
            .exchange(
                "GET",
                &format!("/tasks/{quick}"),
                &[("Authorization", BEARER)],
                None,
            )
            .json()["status"]
            == "success"
    }));
    let done = run(("GET", &format!("/tasks/{quick}")), None, true);
    assert!(done.json()["input_tokens"].is_u64(), "{}", done.body);

    // What is refused, and how.
    let unknown = TaskId::new_time_ordered();
    let refusals: Vec<Refusal> = vec![
        (
            ("POST", "/tasks".into()),
            Some("{not json".into()),
            true,
            400,
        ),
        (("POST", "/tasks".into()), Some("[1, 2]".into()), true, 400),
        (("POST", "/tasks".into()), Some("{}".into()), true, 422),
        (
            ("POST", "/tasks".into()),
            Some(dispatch(0).replace("\"user\"", "\"colour\": 1, \"user\"")),
            true,
            422,
        ),
        (
            ("POST", "/tasks".into()),
            Some(format!("{{\"repo\": \"{}\"}}", "x".repeat(70 * 1024))),
            true,
            413,
        ),
        (("POST", "/tasks".into()), Some(dispatch(0)), false, 401),
        (("GET", "/tasks".into()), None, false, 401),
        (("GET", "/tasks?colour=red".into()), None, true, 400),
        (("GET", "/tasks?limit=-1".into()), None, true, 400),
        (("GET", "/tasks?status=sleeping".into()), None, true, 400),
        (("GET", format!("/tasks/{unknown}")), None, true, 404),
        (("GET", "/tasks/not-a-uuid".into()), None, true, 400),
        (("GET", format!("/tasks/{unknown}")), None, false, 401),
        (
            ("POST", format!("/tasks/{unknown}/cancel")),
            None,
            true,
            404,
        ),
        (("POST", "/tasks/not-a-uuid/cancel".into()), None, true, 400),
        (
            ("POST", format!("/tasks/{unknown}/cancel")),
            None,
            false,
            401,
        ),
    ];
    for ((method, path), body, bearer, expected) in &refusals {
        let answer = run((method, path), body.as_deref(), *bearer);
        assert_eq!(answer.status, *expected, "{method} {path}: {}", answer.body);
    }

    // A dispatch past the cap: 503 with Retry-After, documented.
    let capped_dir = tempfile::tempdir().expect("tempdir");
    let capped_db = capped_dir.path().join("capped.db");
    let capped = start(
        capped_db.to_str().expect("utf-8"),
        &["--max-concurrent-dispatches", "1"],
    );
    let first = call(
        &capped,
        &mut contract,
        &mut problems,
        ("POST", "/tasks"),
        Some(&dispatch(60_000)),
        true,
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let busy = call(
        &capped,
        &mut contract,
        &mut problems,
        ("POST", "/tasks"),
        Some(&dispatch(0)),
        true,
    );
    assert_eq!(busy.status, 503, "{}", busy.body);

    assert!(
        problems.is_empty(),
        "the server and its document diverge:\n{}",
        problems.join("\n")
    );
    // Every documented operation was exercised (a new one needs a line
    // here), and every undocumented method on a documented path is 405.
    assert_eq!(contract.exercised, contract.operations());
    for (path, item) in contract.document["paths"].as_object().expect("paths") {
        let concrete = path.replace("{id}", &unknown.to_string());
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if item.get(method.to_ascii_lowercase()).is_none() {
                let answer =
                    server.exchange(method, &concrete, &[("Authorization", BEARER)], Some(""));
                assert_eq!(
                    answer.status, 405,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
}

#[test]
fn the_request_schema_accepts_exactly_the_bodies_the_server_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("trail.db");
    let server = start(db.to_str().expect("utf-8"), &[]);
    let document = serde_json::to_value(tasktrail_server::openapi()).expect("serializes");
    let request_schema = &document["paths"]["/tasks"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    let schema = validator(&document, request_schema);
    let valid = json!({
        "repo": "acme/widgets", "issue_number": 3, "user": "alice", "agent": "fixer",
        "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
        "duration_ms": 0,
    });
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().expect("object").remove(field);
        body
    };
    let bodies = vec![
        valid.clone(),
        with("outcome", json!("failure")),
        with("outcome", json!(null)),
        with("outcome", json!("maybe")),
        with("duration_ms", json!(null)),
        with("duration_ms", json!(3_600_000)),
        with("duration_ms", json!(3_600_001)),
        with("duration_ms", json!(-1)),
        with("duration_ms", json!(1.5)),
        with("issue_number", json!(1)),
        with("issue_number", json!(0)),
        with("issue_number", json!(2_147_483_647)),
        with("issue_number", json!(2_147_483_648i64)),
        with("issue_number", json!("3")),
        with("repo", json!("no-slash")),
        with("repo", json!("a/b/c")),
        with("repo", json!("./widgets")),
        with("repo", json!("../widgets")),
        with("repo", json!(".../widgets")),
        with("repo", json!(".x/.y")),
        with("repo", json!("acme/wid gets")),
        with("repo", json!(format!("a/{}", "b".repeat(198)))),
        with("repo", json!(format!("a/{}", "b".repeat(199)))),
        with("user", json!("")),
        with("user", json!(" ")),
        with("user", json!(" alice")),
        with("user", json!("alice\u{00a0}")),
        with("user", json!("al ice")),
        with("user", json!("ålice")),
        with("user", json!("al\u{0007}ice")),
        with("user", json!("al\u{0085}ice")),
        with("user", json!("al\u{3000}ice")),
        with("user", json!("a")),
        with("model", json!("m".repeat(200))),
        with("model", json!("m".repeat(201))),
        with("provider", json!(7)),
        with("agent", json!(null)),
        with("surprise", json!(1)),
        without("agent_type"),
        without("duration_ms"),
    ];
    let mut disagreements = Vec::new();
    for body in bodies {
        let schema_accepts = schema.is_valid(&body);
        let answer = server.exchange(
            "POST",
            "/tasks",
            &[("Authorization", BEARER)],
            Some(&body.to_string()),
        );
        let server_accepts = answer.status == 201;
        if schema_accepts != server_accepts || !(server_accepts || answer.status == 422) {
            disagreements.push(format!(
                "{body}: the schema {} it, the server answered {} {}",
                if schema_accepts { "accepts" } else { "refuses" },
                answer.status,
                answer.body
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
