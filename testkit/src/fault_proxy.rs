//! A fault-injecting HTTP proxy for the AWS and slurmrestd tests: the real clients talk to moto
//! (or slurmrestd) through it and meet what a service does now and then — 503 `SlowDown` / 500
//! `InternalError` answers, connections reset before an answer, slow answers, answers lost
//! after the server acted, and response bodies cut off mid-stream — so the tests show that
//! retries (the SDK's and orch's own) keep results correct.
//!
//! Decisions come from one seeded generator, drawn in the order requests arrive, so a run's
//! fault pattern is reproducible up to the interleaving of concurrent requests. Every
//! connection carries one request: responses go out with `Connection: close`, which keeps the
//! proxy a simple read-request / write-response loop without HTTP/1.1 pipelining concerns.
//!
//! Use: `let proxy = FaultProxy::start(&common::moto().endpoint, Faults::default()).await;` and
//! point an SDK config at `proxy.endpoint` (`common::sdk_config_for`). `proxy.stats()` tells
//! how many faults were injected, so a test can check that it was not lucky.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Which faults to inject, as probabilities per request (they add up; the rest is forwarded
/// untouched).
#[derive(Debug, Clone)]
pub struct Faults {
    pub seed: u64,
    /// Answer 503 `SlowDown` or 500 `InternalError` (half each) without forwarding.
    pub error_rate: f64,
    /// Reset the connection without forwarding.
    pub reset_rate: f64,
    /// Forward, let the server act, then reset instead of answering: the client retries a
    /// request that already took effect (tests idempotency; leave at 0 for non-idempotent
    /// calls whose retry would legitimately fail).
    pub drop_response_rate: f64,
    /// Forward, then cut the response body in half and reset: only GET responses with a body
    /// (object downloads, where the caller sees a broken stream rather than an SDK retry).
    pub truncate_rate: f64,
    /// Hold the request this long (a random share of it) before going on, on top of any
    /// other fault: a slow network or an overloaded server.
    pub latency_rate: f64,
    pub max_latency: std::time::Duration,
    /// Answer every request whose request line contains this text with this status and a
    /// non-retryable error, without forwarding (to make one step of a sequence fail for good).
    pub fail_matching: Option<(String, u16)>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            seed: 0x5eed,
            error_rate: 0.05,
            reset_rate: 0.03,
            drop_response_rate: 0.0,
            truncate_rate: 0.0,
            latency_rate: 0.05,
            max_latency: std::time::Duration::from_millis(300),
            fail_matching: None,
        }
    }
}

impl Faults {
    /// No random faults: a transparent proxy (byte counting, `fail_matching`).
    pub fn none() -> Self {
        Faults {
            error_rate: 0.0,
            reset_rate: 0.0,
            latency_rate: 0.0,
            ..Faults::default()
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub requests: u64,
    pub forwarded: u64,
    pub errors: u64,
    pub resets: u64,
    pub dropped_responses: u64,
    pub truncated: u64,
    pub failed_matching: u64,
    /// Requests held back for a while (`latency_rate`).
    pub delayed: u64,
    /// Response bytes (heads and bodies) sent to clients.
    pub bytes_to_client: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    errors: AtomicU64,
    resets: AtomicU64,
    dropped_responses: AtomicU64,
    truncated: AtomicU64,
    failed_matching: AtomicU64,
    delayed: AtomicU64,
    bytes_to_client: AtomicU64,
}

struct State {
    /// While set, every connection is closed at once, unanswered (an outage).
    outage: std::sync::atomic::AtomicBool,
    upstream: String,
    faults: Faults,
    rng: Mutex<fastrand::Rng>,
    counters: Counters,
}

pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for an SDK endpoint override.
    pub endpoint: String,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Error503,
    Error500,
    Reset,
    DropResponse,
    Truncate,
}

impl FaultProxy {
    /// Starts a proxy on a free local port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("the upstream is a plain http:// endpoint")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            outage: std::sync::atomic::AtomicBool::new(false),
            upstream,
            rng: Mutex::new(fastrand::Rng::with_seed(faults.seed)),
            faults,
            counters: Counters::default(),
        });
        let accept = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        // A client that goes away mid-request is not our business.
                        let _ = handle(stream, &state).await;
                    });
                }
            }
        });
        FaultProxy {
            endpoint,
            state,
            accept,
        }
    }

    /// Starts or ends an outage: meanwhile every connection is closed unanswered.
    pub fn set_outage(&self, on: bool) {
        self.state.outage.store(on, Ordering::Relaxed);
    }

    pub fn stats(&self) -> FaultStats {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultStats {
            requests: get(&c.requests),
            forwarded: get(&c.forwarded),
            errors: get(&c.errors),
            resets: get(&c.resets),
            dropped_responses: get(&c.dropped_responses),
            truncated: get(&c.truncated),
            failed_matching: get(&c.failed_matching),
            delayed: get(&c.delayed),
            bytes_to_client: get(&c.bytes_to_client),
        }
    }
}

impl State {
    fn decide(&self) -> Fault {
        let r = self.rng.lock().unwrap().f64();
        let f = &self.faults;
        let mut edge = f.error_rate / 2.0;
        if r < edge {
            return Fault::Error503;
        }
        edge += f.error_rate / 2.0;
        if r < edge {
            return Fault::Error500;
        }
        edge += f.reset_rate;
        if r < edge {
            return Fault::Reset;
        }
        edge += f.drop_response_rate;
        if r < edge {
            return Fault::DropResponse;
        }
        edge += f.truncate_rate;
        if r < edge {
            return Fault::Truncate;
        }
        Fault::None
    }

    /// How long to hold a request back: zero for most.
    fn delay(&self) -> std::time::Duration {
        let mut rng = self.rng.lock().unwrap();
        if rng.f64() < self.faults.latency_rate {
            self.faults.max_latency.mul_f64(rng.f64())
        } else {
            std::time::Duration::ZERO
        }
    }

    fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64) {
        counter(&self.counters).fetch_add(1, Ordering::Relaxed);
    }
}

/// A request as read from the client, ready to forward.
struct Request {
    method: String,
    request_line: String,
    /// Whether the client speaks a JSON protocol (DynamoDB, SQS): error bodies follow suit.
    json: bool,
    /// Head (rewritten: `Connection: close`, no `Expect`) and body, as sent upstream.
    bytes: Vec<u8>,
}

async fn handle(stream: TcpStream, state: &State) -> std::io::Result<()> {
    if state.outage.load(Ordering::Relaxed) {
        state.count(|c| &c.resets);
        return Ok(());
    }
    let mut reader = BufReader::new(stream);
    let Some(request) = read_request(&mut reader).await? else {
        return Ok(());
    };
    // One request per connection: nothing the client sent is left in the buffer.
    let mut client = reader.into_inner();
    state.count(|c| &c.requests);
    if let Some((pattern, status)) = &state.faults.fail_matching
        && request.request_line.contains(pattern.as_str())
    {
        state.count(|c| &c.failed_matching);
        let code = if *status == 403 {
            "AccessDenied"
        } else {
            "InvalidRequest"
        };
        return respond_error(&mut client, state, &request, *status, code).await;
    }
    let delay = state.delay();
    if !delay.is_zero() {
        state.count(|c| &c.delayed);
        tokio::time::sleep(delay).await;
    }
    let fault = state.decide();
    match fault {
        Fault::Error503 => {
            state.count(|c| &c.errors);
            return respond_error(&mut client, state, &request, 503, "SlowDown").await;
        }
        Fault::Error500 => {
            state.count(|c| &c.errors);
            return respond_error(&mut client, state, &request, 500, "InternalError").await;
        }
        Fault::Reset => {
            state.count(|c| &c.resets);
            return reset(client);
        }
        Fault::None | Fault::DropResponse | Fault::Truncate => {}
    }
    let mut upstream = TcpStream::connect(&state.upstream).await?;
    upstream.write_all(&request.bytes).await?;
    state.count(|c| &c.forwarded);
    let mut upstream = BufReader::new(upstream);
    let head = read_head(&mut upstream).await?;
    if fault == Fault::DropResponse {
        state.count(|c| &c.dropped_responses);
        return reset(client);
    }
    let (status_line, headers) = parse_head(&head);
    let content_length = header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    let mut out_head = format!("{status_line}\r\n");
    for (name, value) in &headers {
        if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
            out_head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out_head.push_str("Connection: close\r\n\r\n");
    client.write_all(out_head.as_bytes()).await?;
    add(state, out_head.len() as u64);
    let has_body = request.method != "HEAD"
        && !status_line.contains(" 204 ")
        && !status_line.contains(" 304 ");
    if !has_body {
        client.flush().await?;
        return Ok(());
    }
    let truncate_at = match (fault, content_length) {
        (Fault::Truncate, Some(len)) if request.method == "GET" && len >= 2 => Some(len / 2),
        _ => None,
    };
    if let Some(limit) = truncate_at {
        state.count(|c| &c.truncated);
        let mut part = (&mut upstream).take(limit);
        let sent = tokio::io::copy(&mut part, &mut client).await?;
        add(state, sent);
        client.flush().await?;
        return reset(client);
    }
    let sent = match content_length {
        Some(len) => tokio::io::copy(&mut (&mut upstream).take(len), &mut client).await?,
        // Chunked or until-close: the body ends when the server closes (we asked it to).
        None => tokio::io::copy(&mut upstream, &mut client).await?,
    };
    add(state, sent);
    client.flush().await?;
    client.shutdown().await?;
    Ok(())
}

fn add(state: &State, bytes: u64) {
    state
        .counters
        .bytes_to_client
        .fetch_add(bytes, Ordering::Relaxed);
}

/// Ends a connection with a TCP reset (not a clean close), as a failing load balancer does.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}

async fn respond_error(
    client: &mut TcpStream,
    state: &State,
    request: &Request,
    status: u16,
    code: &str,
) -> std::io::Result<()> {
    let reason = match status {
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        403 => "Forbidden",
        _ => "Bad Request",
    };
    let (content_type, body) = if request.json {
        (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"{code}","message":"injected by the fault proxy"}}"#),
        )
    } else {
        (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected by the fault proxy</Message>\
                 <RequestId>fault-proxy</RequestId></Error>"
            ),
        )
    };
    // A HEAD answer has no body (the client would not read it).
    let body = if request.method == "HEAD" {
        String::new()
    } else {
        body
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nx-amz-request-id: fault-proxy\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    add(state, response.len() as u64);
    client.flush().await?;
    client.shutdown().await?;
    Ok(())
}

/// Reads a request head and its body (by `Content-Length` or chunked); `None` when the client
/// closed without sending one.
async fn read_request(client: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let head = read_head(client).await?;
    if head.is_empty() {
        return Ok(None);
    }
    let (request_line, headers) = parse_head(&head);
    let method = request_line
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let json = header(&headers, "x-amz-target").is_some()
        || header(&headers, "content-type").is_some_and(|v| v.contains("json"));
    let mut bytes = format!("{request_line}\r\n").into_bytes();
    for (name, value) in &headers {
        // No `Expect: 100-continue`: the body follows at once, and an interim `100` answer
        // would only complicate reading the response.
        if name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("expect")
        {
            continue;
        }
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"Connection: close\r\n\r\n");
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        read_chunked(client, &mut bytes).await?;
    } else if let Some(len) =
        header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok())
    {
        let start = bytes.len();
        bytes.resize(start + len, 0);
        client.read_exact(&mut bytes[start..]).await?;
    }
    Ok(Some(Request {
        method,
        request_line,
        json,
        bytes,
    }))
}

/// Copies a chunked body verbatim (sizes, data, trailers) into `out`.
async fn read_chunked(client: &mut BufReader<TcpStream>, out: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let mut line = String::new();
        client.read_line(&mut line).await?;
        out.extend_from_slice(line.as_bytes());
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let mut trailer = String::new();
                client.read_line(&mut trailer).await?;
                out.extend_from_slice(trailer.as_bytes());
                if trailer == "\r\n" || trailer.is_empty() {
                    return Ok(());
                }
            }
        }
        let start = out.len();
        out.resize(start + size + 2, 0);
        client.read_exact(&mut out[start..]).await?;
    }
}

/// Reads up to and including the empty line that ends a head; empty at EOF before any byte.
async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await?;
        if n == 0 {
            if head.is_empty() {
                return Ok(head);
            }
            return Err(std::io::Error::other("connection closed inside a head"));
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Ok(head);
        }
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("head too long"));
        }
    }
}

fn parse_head(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (first, headers)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}
