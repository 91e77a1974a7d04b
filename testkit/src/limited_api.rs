//! A rate-limited HTTP API for tests: it enforces its own token bucket, answers 429 with
//! `Retry-After` when a request exceeds it, and records when every accepted request arrived,
//! so that a test can check the rate a client (the `http` handler, a rate limiter) really
//! achieved (docs/testing.md).
//!
//! Why its own server instead of a mock: rate limiting is judged by an observer that counts
//! arrivals on a clock, as the real API would; the bucket here is the referee, so its
//! arithmetic is unit-tested below. It runs in a test (`LimitedApi::start`) or as a separate
//! process (`limited-api`, `src/bin/limited-api.rs`) driven over HTTP.
//!
//! Routes (every route but `/_*` goes through the bucket):
//! - `GET|POST|PUT|PATCH|DELETE /items/{id}`: 200, `{"id", "method", "query", "body"}` echoing
//!   the request (the body parsed as JSON, else as text, `null` when empty);
//! - `ANY /status/{code}[?retry_after=S]`: answers `code`, the body echoing the request's
//!   headers (to prove a client keeps such echoes of its secrets out of its errors);
//! - `ANY /slow/{ms}`: waits `ms`, then answers like `/items/slow`;
//! - `ANY /text/{id}`: 200 with a plain-text body;
//! - `GET /_stats`: [`Stats`] as JSON; `POST /_limit` `{"rate", "burst", "retryAfter"}`:
//!   changes the limit; `POST /_reset`: forgets the counts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

/// Tokens the bucket may lack and still admit: rounding, not rate.
const EPSILON: f64 = 1e-9;
/// The longest wait the bucket reports (a rate of 0 never refills).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// The server's limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens per second (requests per second in the long run); `f64::INFINITY`: no limit.
    pub rate: f64,
    /// Bucket size: requests that may come at once after a quiet spell.
    pub burst: f64,
    /// What 429 answers send as `Retry-After`; `None`: the time until the next token, rounded
    /// up to whole seconds (as the header's standard form has it).
    pub retry_after: Option<Duration>,
}

impl Limit {
    pub fn new(rate: f64, burst: f64) -> Limit {
        Limit {
            rate,
            burst,
            retry_after: None,
        }
    }

    pub fn unlimited() -> Limit {
        Limit::new(f64::INFINITY, 1.0)
    }
}

/// A token bucket: `burst` tokens at most, `rate` added per second, one taken per request.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        let burst = burst.max(0.0);
        Bucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // Time never runs backwards for the bucket: a caller's older `now` adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if elapsed > 0.0 {
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
            self.last = now;
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate.is_infinite() {
            return Ok(());
        }
        self.refill(now);
        // Refills add up many small floating-point steps: a token that is there on paper must
        // not be refused for a rounding error (it would make the referee stricter than its
        // own rate).
        if self.tokens >= 1.0 - EPSILON {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        if self.rate <= 0.0 || self.burst < 1.0 {
            return Err(LONGEST_WAIT);
        }
        Err(Duration::from_secs_f64(missing / self.rate).min(LONGEST_WAIT))
    }

    /// A new rate and size from `now` on; the tokens already earned stay, up to the new size.
    pub fn set(&mut self, rate: f64, burst: f64, now: Instant) {
        if !self.rate.is_infinite() {
            self.refill(now);
        } else {
            self.tokens = burst.max(0.0);
        }
        self.last = now;
        self.rate = rate.max(0.0);
        self.burst = burst.max(0.0);
        self.tokens = self.tokens.min(self.burst);
    }

    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }
}

/// What the server saw.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub accepted: u64,
    /// Requests answered 429 (violations of the bucket).
    pub rejected: u64,
    /// When each accepted request arrived, in seconds since the server started (or was
    /// reset), in arrival order.
    pub arrivals: Vec<f64>,
    /// Accepted requests per whole second since the start: `per_second[i]` arrived in
    /// `[i, i+1)`.
    pub per_second: Vec<u64>,
    /// The `{id}` of every accepted `/items/{id}` request, in arrival order.
    pub ids: Vec<String>,
}

impl Stats {
    /// The most accepted requests within any window of length `window` (a sliding window, its
    /// start on an arrival).
    pub fn max_in_window(&self, window: Duration) -> usize {
        let w = window.as_secs_f64();
        let mut best = 0;
        let mut start = 0;
        for (end, at) in self.arrivals.iter().enumerate() {
            while self.arrivals[start] + w <= *at {
                start += 1;
            }
            best = best.max(end + 1 - start);
        }
        best
    }

    /// Accepted requests per second between the first and the last arrival (0 with fewer
    /// than two).
    pub fn mean_rate(&self) -> f64 {
        match (self.arrivals.first(), self.arrivals.last()) {
            (Some(first), Some(last)) if last > first => {
                (self.arrivals.len() - 1) as f64 / (last - first)
            }
            _ => 0.0,
        }
    }
}

struct Shared {
    state: Mutex<ServerState>,
}

struct ServerState {
    bucket: Bucket,
    limit: Limit,
    started: Instant,
    stats: Stats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one request, recording it; the wait to send with a 429 otherwise.
    fn admit(&self, id: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        match s.bucket.try_take(now) {
            Ok(()) => {
                let at = now.saturating_duration_since(s.started).as_secs_f64();
                s.stats.accepted += 1;
                s.stats.arrivals.push(at);
                let second = at as usize;
                if s.stats.per_second.len() <= second {
                    s.stats.per_second.resize(second + 1, 0);
                }
                s.stats.per_second[second] += 1;
                if let Some(id) = id {
                    s.stats.ids.push(id.to_string());
                }
                Ok(())
            }
            Err(wait) => {
                s.stats.rejected += 1;
                Err(s.limit.retry_after.unwrap_or_else(|| {
                    Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64)
                }))
            }
        }
    }

    fn set_limit(&self, limit: Limit) {
        let mut s = self.lock();
        s.bucket.set(limit.rate, limit.burst, Instant::now());
        s.limit = limit;
    }

    fn reset(&self) {
        let mut s = self.lock();
        s.stats = Stats::default();
        s.started = Instant::now();
    }
}

/// A running rate-limited API; stops when dropped.
pub struct LimitedApi {
    url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's own runtime thread (`start_background`).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LimitedApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedApi")
            .field("url", &self.url)
            .finish()
    }
}

impl LimitedApi {
    /// Starts the server on 127.0.0.1 (a free port) on the current Tokio runtime.
    pub async fn start(limit: Limit) -> LimitedApi {
        Self::start_on(limit, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the server on `addr` on the current Tokio runtime.
    pub async fn start_on(limit: Limit, addr: SocketAddr) -> LimitedApi {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (shared, stop, url, _server) = serve(limit, listener);
        LimitedApi {
            url,
            shared,
            stop: Some(stop),
            thread: None,
        }
    }

    /// Starts the server on a runtime of its own, on a thread: for tests that are not async
    /// (an end-to-end test running the `orch` binary).
    pub fn start_background(limit: Limit) -> LimitedApi {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .unwrap();
                let (shared, stop, url, server) = serve(limit, listener);
                tx.send((shared, stop, url)).unwrap();
                // The runtime lives as long as the server, which stops when the handle drops.
                let _ = server.await;
            });
        });
        let (shared, stop, url) = rx.recv().unwrap();
        LimitedApi {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Changes the limit from now on (tokens already earned stay, up to the new burst).
    pub fn set_limit(&self, rate: f64, burst: f64, retry_after: Option<Duration>) {
        self.shared.set_limit(Limit {
            rate,
            burst,
            retry_after,
        });
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Forgets the counts and restarts the clock of `arrivals`.
    pub fn reset_stats(&self) {
        self.shared.reset();
    }
}

impl Drop for LimitedApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The background runtime ends once the server has stopped; not waited for, so that a
        // dropped handle never blocks a test.
        drop(self.thread.take());
    }
}

type Started = (
    Arc<Shared>,
    tokio::sync::oneshot::Sender<()>,
    String,
    tokio::task::JoinHandle<()>,
);

fn serve(limit: Limit, listener: tokio::net::TcpListener) -> Started {
    let addr = listener.local_addr().unwrap();
    let now = Instant::now();
    let shared = Arc::new(Shared {
        state: Mutex::new(ServerState {
            bucket: Bucket::new(limit.rate, limit.burst, now),
            limit,
            started: now,
            stats: Stats::default(),
        }),
    });
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (shared, stop, format!("http://{addr}"), server)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(value.to_string()))
        .unwrap()
}

/// `2`, `0.25`: seconds as `Retry-After` (whole seconds are the standard form; fractions are
/// for fast tests, and the orch `http` handler reads them).
pub fn retry_after_header(wait: Duration) -> String {
    if wait.subsec_nanos() == 0 {
        wait.as_secs().to_string()
    } else {
        format!("{:.3}", wait.as_secs_f64())
            .trim_end_matches('0')
            .to_string()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/');
    let mut parts = path.splitn(2, '/');
    let (route, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (route, &method) {
        ("_stats", &Method::GET) => {
            return json_response(StatusCode::OK, &json!(shared.lock().stats));
        }
        ("_limit", &Method::POST) => {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return json_response(StatusCode::BAD_REQUEST, &json!({"error": "not JSON"}));
            };
            let rate = v["rate"].as_f64().unwrap_or(f64::INFINITY);
            let burst = v["burst"].as_f64().unwrap_or(1.0);
            let retry_after = v["retryAfter"].as_f64().map(Duration::from_secs_f64);
            shared.set_limit(Limit {
                rate,
                burst,
                retry_after,
            });
            return json_response(StatusCode::OK, &json!({"ok": true}));
        }
        ("_reset", &Method::POST) => {
            shared.reset();
            return json_response(StatusCode::OK, &json!({"ok": true}));
        }
        _ if route.starts_with('_') => {
            return json_response(StatusCode::NOT_FOUND, &json!({"error": "no such route"}));
        }
        _ => {}
    }
    let id = (route == "items").then_some(arg);
    if let Err(wait) = shared.admit(id) {
        return Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header(header::RETRY_AFTER, retry_after_header(wait))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"error":"rate limit exceeded"}"#))
            .unwrap();
    }
    let echo = |id: &str| {
        let body_value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        json!({"id": id, "method": method.as_str(), "query": uri.query(), "body": body_value})
    };
    match route {
        "items" if !arg.is_empty() => json_response(StatusCode::OK, &echo(arg)),
        "status" => {
            let code = arg
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            let seen: Vec<String> = headers
                .iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                .collect();
            let mut response = Response::builder().status(code);
            if let Some(wait) = uri
                .query()
                .and_then(|q| q.strip_prefix("retry_after="))
                .and_then(|s| s.parse::<f64>().ok())
            {
                response = response.header(
                    header::RETRY_AFTER,
                    retry_after_header(Duration::from_secs_f64(wait)),
                );
            }
            response
                .body(Body::from(format!(
                    "status {code}\nyou sent:\n{}\n",
                    seen.join("\n")
                )))
                .unwrap()
        }
        "slow" => {
            let ms = arg.parse::<u64>().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(StatusCode::OK, &echo("slow"))
        }
        "text" => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(format!("hello {arg}")))
            .unwrap(),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "no such route"})),
    }
}

/// The `limited-api` binary in the target directory of the running test (`target/debug/`),
/// where `cargo test --workspace` builds it (`cargo build -p orch-testkit --bin limited-api`
/// builds it alone).
pub fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // Test executables live in `target/debug/deps/`, binaries one level up.
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let path = dir.join("limited-api");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, or build it with \
         `cargo build -p orch-testkit --bin limited-api`",
        path.display()
    );
    path
}

/// A `limited-api` process; killed when dropped.
#[derive(Debug)]
pub struct LimitedApiProcess {
    child: std::process::Child,
    url: String,
}

impl LimitedApiProcess {
    /// Starts `program` (see [`binary`]) with `args` (`--rate 10 --burst 5`) and reads the URL it
    /// prints.
    pub fn spawn(program: &std::path::Path, args: &[&str]) -> LimitedApiProcess {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        LimitedApiProcess {
            child,
            url: line.trim().to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LimitedApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_full_bucket_admits_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert_eq!(b.try_take(t0), Ok(()));
        }
        // Empty: the next token is 100 ms away.
        assert_eq!(b.try_take(t0), Err(Duration::from_millis(100)));
        assert_eq!(b.try_take(at(t0, 40)), Err(Duration::from_millis(60)));
        assert_eq!(b.try_take(at(t0, 100)), Ok(()));
        assert!(b.try_take(at(t0, 100)).is_err());
        // A long quiet spell refills to `burst`, not beyond.
        assert!((b.tokens(at(t0, 10_000)) - 5.0).abs() < 1e-9);
        for _ in 0..5 {
            assert_eq!(b.try_take(at(t0, 10_000)), Ok(()));
        }
        assert!(b.try_take(at(t0, 10_000)).is_err());
    }

    #[test]
    fn a_steady_client_gets_rate_times_time_plus_burst() {
        // A client trying every millisecond for 3 s at 20/s with burst 4: 4 + 20 * 3 = 64.
        let t0 = Instant::now();
        let mut b = Bucket::new(20.0, 4.0, t0);
        let admitted = (0..=3000)
            .filter(|ms| b.try_take(at(t0, *ms)).is_ok())
            .count();
        assert_eq!(admitted, 64);
        // Fractional tokens accumulate across refills (no rounding loss): 7 per second, for
        // 10 s, on top of a burst of 2 (with room above 1 token, a client arriving a
        // millisecond late loses nothing).
        let mut b = Bucket::new(7.0, 2.0, t0);
        let admitted = (0..=10_000)
            .filter(|ms| b.try_take(at(t0, *ms)).is_ok())
            .count();
        assert_eq!(admitted, 72);
        // With a bucket of 1, what is earned while it is full is lost (the bucket's point):
        // fewer.
        let mut b = Bucket::new(7.0, 1.0, t0);
        let admitted = (0..=10_000)
            .filter(|ms| b.try_take(at(t0, *ms)).is_ok())
            .count();
        assert!((65..=71).contains(&admitted), "{admitted}");
    }

    #[test]
    fn limits_change_at_runtime() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 10.0, t0);
        for _ in 0..10 {
            b.try_take(t0).unwrap();
        }
        // 500 ms at 10/s earn 5 tokens; the new, smaller bucket keeps only 2 of them.
        b.set(1.0, 2.0, at(t0, 500));
        assert!((b.tokens(at(t0, 500)) - 2.0).abs() < 1e-9);
        b.try_take(at(t0, 500)).unwrap();
        b.try_take(at(t0, 500)).unwrap();
        assert_eq!(b.try_take(at(t0, 500)), Err(Duration::from_secs(1)));
        // Rate 0: nothing more, ever (the longest wait).
        b.set(0.0, 2.0, at(t0, 600));
        assert_eq!(b.try_take(at(t0, 60_000)).unwrap_err(), LONGEST_WAIT);
        // Unlimited.
        b.set(f64::INFINITY, 1.0, at(t0, 700));
        for _ in 0..1000 {
            b.try_take(at(t0, 700)).unwrap();
        }
        // From unlimited back to a limit: a full bucket of the new size.
        b.set(1.0, 3.0, at(t0, 800));
        assert_eq!(
            (0..5).filter(|_| b.try_take(at(t0, 800)).is_ok()).count(),
            3
        );
    }

    #[test]
    fn windows_count_arrivals() {
        // Binary fractions, so that the sums below are exact. Windows are half-open:
        // [start, start + window).
        let stats = Stats {
            arrivals: vec![0.0, 0.125, 0.25, 1.0625, 1.125, 1.1875, 1.25, 3.0],
            ..Stats::default()
        };
        assert_eq!(stats.max_in_window(Duration::from_secs(1)), 4);
        assert_eq!(stats.max_in_window(Duration::from_millis(125)), 2);
        assert_eq!(stats.max_in_window(Duration::from_millis(250)), 4);
        assert_eq!(stats.max_in_window(Duration::from_secs(3)), 7);
        assert_eq!(stats.max_in_window(Duration::from_secs(4)), 8);
        assert!((stats.mean_rate() - 7.0 / 3.0).abs() < 1e-9);
        assert_eq!(Stats::default().max_in_window(Duration::from_secs(1)), 0);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(retry_after_header(Duration::from_secs(2)), "2");
        assert_eq!(retry_after_header(Duration::from_millis(250)), "0.25");
        assert_eq!(retry_after_header(Duration::from_millis(1500)), "1.5");
    }

    async fn get(url: &str) -> (u16, Option<String>, String) {
        // A bare HTTP/1.1 client: the test kit has no HTTP client of its own.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let retry_after = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .map(str::to_string);
        (status, retry_after, body.to_string())
    }

    #[tokio::test]
    async fn the_server_enforces_its_bucket_and_counts() {
        let api = LimitedApi::start(Limit::new(1.0, 2.0)).await;
        let (status, _, body) = get(&format!("{}/items/7?x=1", api.url())).await;
        assert_eq!(status, 200);
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            echo,
            json!({"id": "7", "method": "GET", "query": "x=1", "body": null})
        );
        assert_eq!(get(&format!("{}/items/8", api.url())).await.0, 200);
        let (status, retry_after, _) = get(&format!("{}/items/9", api.url())).await;
        assert_eq!(status, 429);
        assert_eq!(
            retry_after.as_deref(),
            Some("1"),
            "the wait, in whole seconds"
        );
        api.set_limit(0.0, 0.0, Some(Duration::from_millis(250)));
        let (status, retry_after, _) = get(&format!("{}/items/10", api.url())).await;
        assert_eq!((status, retry_after.as_deref()), (429, Some("0.25")));
        // The control routes are not limited.
        let (status, _, body) = get(&format!("{}/_stats", api.url())).await;
        assert_eq!(status, 200);
        let stats: Stats = serde_json::from_str(&body).unwrap();
        assert_eq!(stats, api.stats());
        assert_eq!((stats.accepted, stats.rejected), (2, 2));
        assert_eq!(stats.ids, ["7", "8"]);
        assert_eq!(stats.per_second.iter().sum::<u64>(), 2);
        api.set_limit(f64::INFINITY, 1.0, None);
        let (status, _, body) = get(&format!("{}/status/503?retry_after=2", api.url())).await;
        assert_eq!(status, 503);
        assert!(body.contains("host: 127.0.0.1"), "{body}");
        api.reset_stats();
        assert_eq!(api.stats(), Stats::default());
    }
}
