//! Shared by the server's tests: a minimal HTTP/1.1 client over a real TCP
//! socket, the in-process server on an ephemeral port, and the real binary.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tasktrail::async_worker::AsyncWorker;
use tasktrail::prelude::*;
use tasktrail_server::agent::SimulatedAgent;
use tasktrail_server::{guarded, router, Dispatcher, Guard, DEFAULT_MAX_CONCURRENT_DISPATCHES};

/// One HTTP exchange: `Connection: close`, the whole answer read.
pub fn request(address: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, payload) = request_text(address, method, path, body);
    let value = if payload.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&payload).unwrap_or_else(|e| panic!("not JSON ({e}): {payload:?}"))
    };
    (status, value)
}

/// One HTTP exchange, the answer's status and body as text.
pub fn request_text(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let (_, payload) = answer.split_once("\r\n\r\n").expect("headers end");
    (status, payload.to_owned())
}

/// An answer with its headers: status, headers (names lowercased, in
/// order), body text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The whole answer as text (to search it for what must not be there).
    pub fn text(&self) -> String {
        let mut text = format!("{}\n", self.status);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push_str(&self.body);
        text
    }
}

/// One HTTP exchange with extra request `headers` (`Connection: close`, the
/// whole answer read; `Content-Type` is JSON unless `headers` name one).
pub fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = body.unwrap_or(b"");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).expect("send");
    // A server that answers before reading all of a large body may close
    // the connection under the rest: its answer is still read.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let answer = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: payload.to_owned(),
    }
}

/// A dispatch body.
pub fn dispatch_body(issue: u32, duration_ms: u64, outcome: &str) -> String {
    serde_json::json!({
        "repo": "acme/widgets", "issue_number": issue, "user": "alice", "agent": "fixer",
        "agent_type": "claude_sdk", "model": "claude-opus", "provider": "anthropic",
        "duration_ms": duration_ms, "outcome": outcome,
    })
    .to_string()
}

/// The id in a `201` answer.
pub fn dispatched_id(answer: &(u16, Value)) -> TaskId {
    assert_eq!(answer.0, 201, "{answer:?}");
    answer.1["id"]
        .as_str()
        .expect("an id")
        .parse()
        .expect("a task id")
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The server in this process, on its own runtime, on an ephemeral port of
/// 127.0.0.1, over `storage`.
pub struct InProcessServer {
    pub address: SocketAddr,
    pub dispatcher: Arc<Dispatcher>,
    pub runtime: tokio::runtime::Runtime,
}

impl InProcessServer {
    pub fn start(storage: Arc<dyn Storage>) -> Self {
        Self::start_guarded(storage, None, DEFAULT_MAX_CONCURRENT_DISPATCHES)
    }

    /// Behind `guard` (when given), at most `limit` dispatches in flight.
    pub fn start_guarded(storage: Arc<dyn Storage>, guard: Option<Guard>, limit: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (address, dispatcher) = runtime.block_on(async {
            let worker = AsyncWorker::boot(
                Worker::builder(storage).heartbeat_interval(Duration::from_millis(200)),
            )
            .await
            .expect("boot");
            let dispatcher = Dispatcher::with_limit(worker, Arc::new(SimulatedAgent), limit);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let app = match guard {
                Some(guard) => guarded(router(Arc::clone(&dispatcher)), guard),
                None => router(Arc::clone(&dispatcher)),
            };
            tokio::spawn(async move { axum::serve(listener, app).await });
            (address, dispatcher)
        });
        Self {
            address,
            dispatcher,
            runtime,
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        self.dispatcher.worker().storage()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        request(self.address, method, path, body)
    }

    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        exchange(self.address, method, path, headers, body.map(str::as_bytes))
    }

    pub fn rows(&self) -> Vec<TaskRecord> {
        self.storage()
            .list_tasks(&TaskFilter::default())
            .expect("list")
    }
}

/// The real `tasktrail-server` binary, its stdout collected line by line.
pub struct ServerProcess {
    pub child: Child,
    pub address: SocketAddr,
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Its stderr, line by line, when started with
    /// [`start_logging`](Self::start_logging).
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Collects `stream`'s lines on a thread.
fn collect_lines(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collected = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            collected
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
    lines
}

/// A test that fails half-way leaves no server behind (it would hold the
/// test's output pipes open).
impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ServerProcess {
    pub fn start(db: &str) -> Self {
        Self::spawn(db, &[], &[], None)
    }

    /// With `args` (e.g. `--log-format json`) and `TASKTRAIL_LOG` set to
    /// `filter`; its stderr collected.
    pub fn start_logging(db: &str, args: &[&str], filter: &str) -> Self {
        Self::spawn(db, args, &[], Some(filter))
    }

    /// With `args`, the environment `env` and `TASKTRAIL_LOG` set to
    /// `filter`; its stderr collected.
    pub fn start_with(db: &str, args: &[&str], env: &[(&str, &str)], filter: &str) -> Self {
        Self::spawn(db, args, env, Some(filter))
    }

    fn spawn(db: &str, args: &[&str], env: &[(&str, &str)], filter: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tasktrail-server"));
        command
            .args(["--db", db, "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TASKTRAIL_SERVER_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        match filter {
            Some(filter) => {
                command.env("TASKTRAIL_LOG", filter).stderr(Stdio::piped());
            }
            None => {
                command.stderr(Stdio::inherit());
            }
        }
        let mut child = command.spawn().expect("spawn tasktrail-server");
        let lines = collect_lines(child.stdout.take().expect("stdout"));
        let stderr = match child.stderr.take() {
            Some(stream) => collect_lines(stream),
            None => Arc::default(),
        };
        let mut address = None;
        let found = eventually(Duration::from_secs(30), || {
            address = lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find_map(|line| line.strip_prefix("listening on "))
                .map(|text| text.parse().expect("an address"));
            address.is_some()
        });
        assert!(found, "the server never printed `listening on`");
        Self {
            child,
            address: address.expect("found"),
            stdout: lines,
            stderr,
        }
    }

    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        exchange(self.address, method, path, headers, body.map(str::as_bytes))
    }

    pub fn get_text(&self, path: &str) -> (u16, String) {
        request_text(self.address, "GET", path, None)
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        request(self.address, method, path, body)
    }

    pub fn lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // The workspace denies unsafe code: the `kill` binary sends it.
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}
