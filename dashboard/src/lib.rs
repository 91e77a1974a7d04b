//! The orch web dashboard: one page that shows every job of a storage — progress, throughput,
//! tasks by state, error kinds with sample failed items, rate-limit use, each task's attempts
//! and logs — read from the job's own stores, so that it looks the same for a laptop run
//! (`orch dashboard`) and in a cluster (served by the operator).
//!
//! The server is a JSON API over the stores ([`api`]) and three files embedded in the binary
//! (`assets/`: plain HTML, CSS and JavaScript, no build step). The page polls the API and
//! updates in place. Actions (pause, resume, cancel, retry) write the same records as the
//! `orch` commands, and only when the server was started with them allowed.
//! See docs/observability.md ("Dashboard").

mod api;
mod error;
pub mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use orch_core::platform::Backends;

pub use error::DashboardError;

/// A storage whose jobs the dashboard shows, and what names it on the page (a namespace).
pub struct Source {
    pub label: Option<String>,
    pub backends: Backends,
}

/// Where the jobs are: one storage (`orch dashboard`), or the storages of the operator's
/// namespaces, which follow its policies.
#[async_trait::async_trait]
pub trait Sources: Send + Sync {
    /// The storages to read now.
    async fn current(&self) -> Vec<Arc<Source>>;
}

/// One storage, always the same.
struct OneStorage(Arc<Source>);

#[async_trait::async_trait]
impl Sources for OneStorage {
    async fn current(&self) -> Vec<Arc<Source>> {
        vec![self.0.clone()]
    }
}

/// What the dashboard reads, and what it may do.
pub struct Dashboard {
    sources: Arc<dyn Sources>,
    /// Whether pause, resume, cancel and retry are offered.
    actions: bool,
    /// Where the logs of jobs whose storage is remote were written on this machine (each job
    /// under its id), when the server runs where those jobs ran.
    local_logs: Option<PathBuf>,
    /// The jobs the pages looked at lately: their rows as last read and their progress over
    /// time, as this server saw it.
    watched: Mutex<HashMap<String, Arc<tokio::sync::Mutex<api::Watched>>>>,
}

impl Dashboard {
    /// The dashboard of one storage.
    pub fn new(backends: Backends, actions: bool, local_logs: Option<PathBuf>) -> Arc<Self> {
        let one = OneStorage(Arc::new(Source {
            label: None,
            backends,
        }));
        Self::of_sources(Arc::new(one), actions, local_logs)
    }

    /// The dashboard of storages that may change while it runs.
    pub fn of_sources(
        sources: Arc<dyn Sources>,
        actions: bool,
        local_logs: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Dashboard {
            sources,
            actions,
            local_logs,
            watched: Mutex::new(HashMap::new()),
        })
    }

    /// The pages and the API, to serve at the root of an address.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
            .route(
                "/app.js",
                get(|| asset("text/javascript; charset=utf-8", APP_JS)),
            )
            .route(
                "/app.css",
                get(|| asset("text/css; charset=utf-8", APP_CSS)),
            )
            .route("/api/jobs", get(api::jobs))
            .route("/api/jobs/{job}", get(api::job))
            .route("/api/jobs/{job}/errors", get(api::errors))
            .route("/api/jobs/{job}/tasks/{task}", get(api::task))
            .route("/api/jobs/{job}/tasks/{task}/log", get(api::log))
            .route("/api/jobs/{job}/actions/{action}", post(api::act))
            .with_state(self.clone())
    }
}

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The page loads nothing from elsewhere: a script injected through a job's data (an error
/// message is user data) could not load or send anything either.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn serve(
    dashboard: Arc<Dashboard>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, dashboard.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Jobs not looked at for this long are forgotten (their rows and curve).
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl Dashboard {
    /// What the server remembers of the job `key` (a storage's label and the job's id).
    fn watched(&self, key: &str) -> Arc<tokio::sync::Mutex<api::Watched>> {
        let mut all = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        all.retain(|_, w| {
            w.try_lock()
                .map_or(true, |w| now.duration_since(w.seen) < FORGET_AFTER)
        });
        all.entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(api::Watched::new(now))))
            .clone()
    }
}
