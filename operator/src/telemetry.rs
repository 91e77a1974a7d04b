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
    /// Where the driven jobs' figures also go as CloudWatch EMF lines (`--metrics-emf`).
    pub emf: Option<orch_runtime::metrics::EmfLines>,
    ready: AtomicBool,
}

impl Metrics {
    /// The same, with the driven jobs' figures also written as EMF lines to `emf`.
    pub fn with_emf(self, emf: Option<orch_runtime::metrics::EmfLines>) -> Self {
        Metrics { emf, ..self }
    }
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
            emf: None,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The names `# TYPE` declares in the operator's `/metrics`, with the suffixes Prometheus
    /// adds to their samples (`_total`, `_bucket`, `_sum`, `_count`).
    fn exported() -> std::collections::BTreeSet<String> {
        use orch_core::model::{ErrorKind, TaskRecord, TaskState};
        let metrics = Metrics::default();
        // A family shows in the text only once it has a sample: one of each.
        metrics
            .reconciles
            .get_or_create(&OutcomeLabels {
                outcome: "ok".into(),
            })
            .inc();
        metrics
            .jobs
            .get_or_create(&PhaseLabels {
                phase: "Running".into(),
            })
            .set(1);
        let mut meter = metrics.jobs_driven.job("j", None);
        let mut row = TaskRecord::new("j", 0, 10, 0);
        row.attempt = 1;
        row.state = TaskState::Dispatched;
        meter.dispatched(std::slice::from_ref(&row));
        let progress = orch_runtime::driver::Progress::default();
        row.items_failed_by_kind = [("permanent".to_string(), 1)].into();
        row.rate_limit_tokens = 1;
        row.rate_limit_wait_ms = 1;
        for state in [TaskState::Running, TaskState::Succeeded] {
            row.state = state;
            meter.observe(std::slice::from_ref(&row), &progress);
        }
        meter.lost(ErrorKind::Transient, true);
        meter.submitted(std::time::Duration::ZERO, true);
        let mut names = std::collections::BTreeSet::new();
        for line in metrics.encode().lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
        names
    }

    #[test]
    fn the_grafana_dashboard_queries_only_series_orch_exports() {
        let exported = exported();
        assert!(exported.contains("orch_job_tasks"), "{exported:?}");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/orch-operator/dashboards/orch.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                // Metric names, not the `orch_job` label of a matcher (`orch_job=~"…"`).
                let names = expr
                    .match_indices("orch_")
                    .filter(|(i, _)| {
                        *i == 0
                            || !expr.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && expr.as_bytes()[i - 1] != b'_'
                    })
                    .map(|(i, _)| {
                        let word: String = expr[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        let rest = expr[i + word.len()..].trim_start();
                        (word, rest.starts_with(['=', '!']))
                    })
                    .filter(|(_, is_label)| !is_label)
                    .map(|(word, _)| word);
                for name in names {
                    queried += 1;
                    assert!(
                        exported.contains(&name),
                        "panel {:?} queries {name}, which orch does not export",
                        panel["title"]
                    );
                }
            }
        }
        assert!(queried > 20, "{queried}");
    }
}
