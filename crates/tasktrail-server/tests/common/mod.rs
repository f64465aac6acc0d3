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
use tasktrail_server::{router, Dispatcher};

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
            let dispatcher = Dispatcher::new(worker, Arc::new(SimulatedAgent));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let app = router(Arc::clone(&dispatcher));
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
        Self::spawn(db, &[], None)
    }

    /// With `args` (e.g. `--log-format json`) and `TASKTRAIL_LOG` set to
    /// `filter`; its stderr collected.
    pub fn start_logging(db: &str, args: &[&str], filter: &str) -> Self {
        Self::spawn(db, args, Some(filter))
    }

    fn spawn(db: &str, args: &[&str], filter: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tasktrail-server"));
        command
            .args(["--db", db, "--listen", "127.0.0.1:0"])
            .args(args)
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
