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
    watched: Mutex<Watching>,
    /// Answer only requests addressed to this machine by a loopback name (see
    /// [`Dashboard::loopback_only`]).
    loopback_only: bool,
}

struct Watching {
    jobs: HashMap<String, Arc<tokio::sync::Mutex<api::Watched>>>,
    swept: Instant,
}

impl Dashboard {
    /// The dashboard of one storage.
    pub fn new(backends: Backends, actions: bool, local_logs: Option<PathBuf>) -> Self {
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
    ) -> Self {
        Dashboard {
            sources,
            actions,
            local_logs,
            watched: Mutex::new(Watching {
                jobs: HashMap::new(),
                swept: Instant::now(),
            }),
            loopback_only: false,
        }
    }

    /// Refuses requests whose `Host` is not a loopback name or address: a page of another
    /// site whose name was made to point at 127.0.0.1 (DNS rebinding) would otherwise be
    /// same-origin with a dashboard on a loopback port, and could read and act.
    pub fn loopback_only(mut self) -> Self {
        self.loopback_only = true;
        self
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
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                check_host,
            ))
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

async fn check_host(
    axum::extract::State(d): axum::extract::State<Arc<Dashboard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if d.loopback_only && !is_loopback_host(host) {
        return DashboardError::Refused(
            "this dashboard answers only to localhost or a loopback address".into(),
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` header (a name or address, with or without a port) names this machine.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn serve(
    dashboard: Dashboard,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, Arc::new(dashboard).router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Jobs not looked at for this long are forgotten (their rows and curve).
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// How often the jobs not looked at lately are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Dashboard {
    /// What the server remembers of the job `key` (a storage's label and the job's id).
    fn watched(&self, key: &str) -> Arc<tokio::sync::Mutex<api::Watched>> {
        let mut watching = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(watching.swept) > SWEEP_EVERY {
            watching.swept = now;
            watching.jobs.retain(|_, w| {
                w.try_lock()
                    .map_or(true, |w| now.duration_since(w.seen) < FORGET_AFTER)
            });
        }
        watching
            .jobs
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(api::Watched::new(now))))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_and_addresses_are_this_machine() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:9",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
