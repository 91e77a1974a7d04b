//! What the operator shows about itself: Prometheus metrics, and the `/healthz`, `/readyz` and
//! `/metrics` endpoints the chart's probes and ServiceMonitor use.
//!
//! `/readyz` answers 200 once the operator has reached the API server, also on a replica that
//! waits for the leader Lease: a standby is healthy, and failing its probe would only make
//! Kubernetes restart it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Labels of a reconcile's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, or the error category (`invalid`, `transient`, `permanent`, `infrastructure`).
    pub outcome: String,
}

/// Labels of the jobs gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// The series of every job this replica drives (`orch_job_*`, as `orch run` serves them).
    pub jobs_driven: orch_runtime::metrics::JobMetrics,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub jobs: Family<PhaseLabels, Gauge>,
    pub drivers: Gauge,
    pub leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let jobs_driven = orch_runtime::metrics::JobMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("orch_operator");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "OrchJob reconciles by outcome",
            reconciles.clone(),
        );
        let reconcile_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one OrchJob reconcile",
            reconcile_seconds.clone(),
        );
        let jobs = Family::<PhaseLabels, Gauge>::default();
        registry.register("jobs", "OrchJobs seen, by phase", jobs.clone());
        let drivers = Gauge::default();
        registry.register(
            "drivers",
            "Job drivers running in this process",
            drivers.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry: root,
            jobs_driven,
            reconciles,
            reconcile_seconds,
            jobs,
            drivers,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Marks the operator ready (it reached the API server).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).ok();
        out
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet",
        )
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
