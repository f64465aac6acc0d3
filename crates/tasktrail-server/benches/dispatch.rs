//! What the HTTP layer costs: starting a task through `tasktrail-server`
//! (POST /tasks until the `201`) beside the same start through the library
//! directly (`Worker::start`) and through its async face
//! (`AsyncWorker::start`), in the same run, on SQLite and (with
//! `TASKTRAIL_TEST_POSTGRES_URL`) Postgres. Latency: one client. Throughput:
//! 8 concurrent clients. Figures in docs/performance.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tasktrail::async_worker::AsyncWorker;
use tasktrail::prelude::*;
use tasktrail_server::agent::SimulatedAgent;
use tasktrail_server::{router, Dispatcher};

const CLIENTS: usize = 8;

fn spec() -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 1104,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

const BODY: &str = r#"{"repo":"acme/widgets","issue_number":1104,"user":"alice","agent":"fixer","agent_type":"claude_sdk","model":"claude-opus","provider":"anthropic","duration_ms":0}"#;

/// One POST /tasks over a fresh connection; panics unless `201`.
fn post_task(address: SocketAddr) {
    let mut stream = TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "POST /tasks HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

struct Stores {
    name: &'static str,
    open: Box<dyn Fn() -> Arc<dyn Storage>>,
}

fn stores() -> Vec<Stores> {
    let mut stores = vec![Stores {
        name: "sqlite",
        open: Box::new(|| {
            let dir = tempfile::tempdir().expect("tempdir").keep();
            Arc::new(SqliteStorage::open(dir.join("trail.db")).expect("open"))
        }),
    }];
    #[cfg(feature = "postgres")]
    if std::env::var_os(tasktrail_diesel::TEST_POSTGRES_URL_VARIABLE).is_some() {
        stores.push(Stores {
            name: "postgres",
            open: Box::new(|| {
                let database = tasktrail_diesel::ScratchDatabase::create().expect("scratch");
                let store = tasktrail::PostgresStorage::open(database.url()).expect("open");
                // The database lives as long as the bench process.
                std::mem::forget(database);
                Arc::new(store)
            }),
        });
    }
    stores
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn dispatch(c: &mut Criterion) {
    for store in stores() {
        let mut latency = c.benchmark_group(format!("dispatch_latency/{}", store.name));
        latency.measurement_time(Duration::from_secs(5));

        let worker = Worker::builder((store.open)()).boot().expect("boot");
        latency.bench_function("library_start", |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let begun = Instant::now();
                    let running = worker.start(Task::queue(spec())).expect("start");
                    spent += begun.elapsed();
                    worker
                        .finish(running, Outcome::Success(RunReport::empty()))
                        .expect("finish");
                }
                spent
            })
        });
        worker.stop().expect("stop");

        let rt = runtime();
        let worker = rt
            .block_on(AsyncWorker::boot(Worker::builder((store.open)())))
            .expect("boot");
        latency.bench_function("async_start", |b| {
            b.iter_custom(|iterations| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        let begun = Instant::now();
                        let running = worker.start(Task::queue(spec())).await.expect("start");
                        spent += begun.elapsed();
                        worker
                            .finish(running, Outcome::Success(RunReport::empty()))
                            .await
                            .expect("finish");
                    }
                    spent
                })
            })
        });
        rt.block_on(worker.stop()).expect("stop");

        let (rt, address, worker) = server((store.open)());
        latency.bench_function("http_dispatch", |b| b.iter(|| post_task(address)));
        latency.finish();

        let mut throughput = c.benchmark_group(format!("dispatch_throughput/{}", store.name));
        throughput.measurement_time(Duration::from_secs(5));
        throughput.sample_size(10);
        let per_client = 16;
        throughput.throughput(Throughput::Elements((CLIENTS * per_client) as u64));
        throughput.bench_with_input(
            BenchmarkId::new("http_dispatch", format!("{CLIENTS}_clients")),
            &address,
            |b, &address| {
                b.iter(|| {
                    std::thread::scope(|scope| {
                        for _ in 0..CLIENTS {
                            scope.spawn(|| (0..per_client).for_each(|_| post_task(address)));
                        }
                    })
                })
            },
        );
        rt.block_on(worker.stop()).expect("stop");

        let worker = Worker::builder((store.open)()).boot().expect("boot");
        throughput.bench_function(
            BenchmarkId::new("library_start_finish", format!("{CLIENTS}_threads")),
            |b| {
                b.iter(|| {
                    std::thread::scope(|scope| {
                        for _ in 0..CLIENTS {
                            scope.spawn(|| {
                                for _ in 0..per_client {
                                    let running = worker.start(Task::queue(spec())).expect("start");
                                    worker
                                        .finish(running, Outcome::Success(RunReport::empty()))
                                        .expect("finish");
                                }
                            });
                        }
                    })
                })
            },
        );
        throughput.finish();
        worker.stop().expect("stop");
    }
}

/// The server on its own runtime, on an ephemeral port.
fn server(storage: Arc<dyn Storage>) -> (tokio::runtime::Runtime, SocketAddr, AsyncWorker) {
    let rt = runtime();
    let (address, worker) = rt.block_on(async {
        let worker = AsyncWorker::boot(Worker::builder(storage))
            .await
            .expect("boot");
        let dispatcher = Dispatcher::new(worker.clone(), Arc::new(SimulatedAgent));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router(dispatcher)).await });
        (address, worker)
    });
    (rt, address, worker)
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
