//! `GET /metrics`: the library's metrics ([`tasktrail::metrics`]) in the
//! Prometheus text format, through `metrics-exporter-prometheus`.
//!
//! The recorder is process-wide: the binary installs it once
//! ([`install_prometheus`]) and hands its handle to [`router_with_metrics`].

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// The buckets of `tasktrail_task_duration_seconds`: agent tasks run from
/// seconds to hours.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// How often the recorder's upkeep runs (it drains histogram samples so
/// they do not pile up between scrapes).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process's Prometheus recorder (task durations as a
/// histogram with [`DURATION_BUCKETS`]) and describes the library's
/// metrics. Fails if a recorder is already installed.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(tasktrail::metrics::TASK_DURATION.to_owned()),
            &DURATION_BUCKETS,
        )?
        .install_recorder()?;
    tasktrail::metrics::describe();
    Ok(handle)
}

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] on the current
/// tokio runtime, until the runtime ends.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}

/// `router`, plus `GET /metrics` answering `handle`'s metrics as
/// `text/plain; version=0.0.4`.
pub fn router_with_metrics(router: Router, handle: PrometheusHandle) -> Router {
    router.route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}
