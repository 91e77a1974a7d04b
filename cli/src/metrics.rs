//! `orch run --metrics-addr`: the job's metrics on `/metrics` for Prometheus while it runs;
//! `--metrics-emf`: its figures as CloudWatch EMF lines. The figures themselves are
//! `orch_runtime::metrics`; this is only where they go. See docs/observability.md ("Metrics").

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use orch_runtime::metrics::{EmfLines, JobMetrics};
use prometheus_client::registry::Registry;

use crate::Failure;

/// Binds `addr` and serves `/metrics` until the runtime ends; the job's series go into what
/// this returns.
pub async fn serve(addr: SocketAddr) -> Result<JobMetrics, Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::usage(format!("--metrics-addr {addr}: cannot listen there: {e}")))?;
    let mut registry = Registry::default();
    let metrics = JobMetrics::register(&mut registry);
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(Arc::new(registry));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(metrics)
}

async fn metrics_text(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut out = String::new();
    // Writing into a String cannot fail.
    prometheus_client::encoding::text::encode(&mut out, &registry).ok();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

/// EMF lines appended to `path`, or written to stdout for `-`.
pub fn emf_lines(path: &std::path::Path) -> Result<EmfLines, Failure> {
    EmfLines::open(path).map_err(|e| {
        Failure::usage(format!(
            "--metrics-emf {}: cannot open it: {e}",
            path.display()
        ))
    })
}
