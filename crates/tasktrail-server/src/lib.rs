#![warn(missing_docs)]
//! `tasktrail-server`: a dispatch server built on tasktrail as its domain
//! layer.
//!
//! It holds one [`AsyncWorker`](tasktrail::async_worker::AsyncWorker) and
//! serves a JSON API ([`router`]): `POST /tasks` answers `201` only after the
//! task's `running` row committed; the agent ([`agent::Agent`], simulated
//! here) runs on a tokio task and its end is the row's one UPDATE;
//! `POST /tasks/{id}/cancel` writes `cancelled`; `GET /tasks`, `GET
//! /tasks/{id}` read rows; `GET /healthz` is the worker's health; `GET
//! /openapi.json` the API's OpenAPI 3 document, generated from the
//! handlers' own types ([`contract`], [`openapi`]); `GET
//! /metrics` the metrics in the Prometheus text format ([`metrics`], when the
//! binary installed the recorder). [`ui::router`] serves the operators'
//! dashboard (HTML pages at `/` and under `/ui/`) over the same store. [`guarded`] puts the routes behind a
//! token ([`guard`]) and a request timeout; bodies are capped at
//! [`MAX_BODY_BYTES`] and dispatches in flight at
//! [`Dispatcher::limit`]. On SIGTERM
//! the binary stops accepting, interrupts what is still running (reason
//! [`SERVER_STOPPED_REASON`]), deregisters and exits 0.

pub mod agent;
mod api;
pub mod contract;
mod dispatch;
pub mod guard;
pub mod metrics;
pub mod ui;

pub use api::{router, DEFAULT_DURATION_MS, MAX_BODY_BYTES, MAX_DURATION_MS, OPENAPI_PATH};
pub use contract::openapi;
pub use dispatch::{
    CancelAnswer, DispatchError, Dispatcher, DEFAULT_MAX_CONCURRENT_DISPATCHES,
    SERVER_STOPPED_REASON,
};
pub use guard::{guarded, Guard, Token};
pub use metrics::{install_prometheus, router_with_metrics};
