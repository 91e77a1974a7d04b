//! slurmrestd as a [`SlurmApi`]: the transport of a coordinator outside the cluster (the
//! operator), JSON over HTTPS (plain HTTP only to this machine, where allowed) authenticated
//! with a JWT. docs/slurm.md ("Transports") says
//! what it does, which API versions it speaks and what it cannot do.
//!
//! This file is the client, [`RestApi`]: requests, retries, negotiation and the jobs cache.
//! The rest is pure and tested without a server: the token (`token`), the API versions
//! (`version`), the answers as they come over the wire (`wire`) and what they mean
//! (`interpret`, `decode`), and the request bodies (`request`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::api::{ArrayJob, ClusterInfo, SlurmApi};
use crate::error::{Result, SlurmError};
use crate::submission::ArraySubmission;

mod decode;
mod interpret;
mod request;
mod token;
mod version;
mod wire;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use decode::{arrays_from_jobs, partitions};
use interpret::{HOLD_IGNORED, Refused, interpret, is_gone, is_transient, kill_failures};
use request::{cancel_requests, submit_body};
use token::TokenCache;
pub use token::{SharedToken, TokenSource};
pub use version::ApiVersion;
use version::offered_versions;
use wire::{
    Answer, Generic, JobPostResponse, JobsResponse, KillJobsResponse, OpenApiDoc,
    PartitionsResponse, RawJob, RawNum, SubmitResponse,
};

/// What slurmrestd's answer `body` with HTTP `status` decodes to, through the same functions
/// [`RestApi`] uses, read as each kind of answer it can be (jobs, partitions, a submission, a
/// cancel, an update, the API description, a ping); for the fuzz target (fuzz/), which feeds
/// arbitrary bytes. Returns the `Debug` text of each outcome.
#[doc(hidden)]
pub fn decode_answers(name: &str, status: u16, body: &[u8]) -> Vec<String> {
    let Ok(status) = StatusCode::from_u16(status) else {
        return Vec::new();
    };
    let refused = Refused {
        field: "spec.executor.slurm.tokenFile",
        user: "user",
        url: "http://slurmrestd",
    };
    let op = "fuzz";
    vec![
        format!(
            "{:?}",
            interpret::<JobsResponse>(op, status, body, &refused)
                .map(|a| arrays_from_jobs(name, &a.jobs))
        ),
        format!(
            "{:?}",
            interpret::<PartitionsResponse>(op, status, body, &refused).map(|a| partitions(&a))
        ),
        format!(
            "{:?}",
            interpret::<SubmitResponse>(op, status, body, &refused)
                .map(|a| a.job_id.as_ref().and_then(RawNum::value))
        ),
        format!(
            "{:?}",
            interpret::<KillJobsResponse>(op, status, body, &refused)
                .and_then(|a| kill_failures(&a))
        ),
        format!(
            "{:?}",
            interpret::<JobPostResponse>(op, status, body, &refused).map(|a| a.results.len())
        ),
        format!(
            "{:?}",
            interpret::<OpenApiDoc>(op, status, body, &refused)
                .map(|a| offered_versions(a.paths.keys().map(String::as_str)))
        ),
        format!(
            "{:?}",
            interpret::<Generic>(op, status, body, &refused).map(|_| ())
        ),
    ]
}

/// Slurm's default `MaxArraySize`, used unless [`RestApi::with_max_array_size`] says otherwise.
pub const DEFAULT_MAX_ARRAY_SIZE: u32 = 1001;
/// The timeout of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_ATTEMPTS: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// The last answer to the jobs query on v0.0.40+, reused while slurmctld reports no change
/// since its `last_update`.
struct JobsCache {
    last_update: i64,
    jobs: Vec<RawJob>,
}

/// slurmrestd as a [`SlurmApi`].
///
/// Every request has a timeout (30 s). GETs are retried on transient failures (3 attempts,
/// backoff 0.5 s then 1 s); POSTs and DELETEs are sent once — the executor's submit is
/// idempotent by the array's comment, so a failed submit surfaces as a transient error and the
/// engine tries again after looking the array up. HTTP 401/403 are [`SlurmError::Invalid`]
/// saying the token was refused. Redirects are not followed: a 3xx answer is
/// [`SlurmError::Invalid`] naming its status and the host it points to.
pub struct RestApi {
    base: String,
    user: String,
    token: TokenCache,
    client: reqwest::Client,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
    max_array_size: u32,
    version: OnceCell<ApiVersion>,
    jobs_cache: tokio::sync::Mutex<Option<JobsCache>>,
    /// Whether the v0.0.38 `--signal=B:` warning was given.
    signal_warned: AtomicBool,
}

impl fmt::Debug for RestApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestApi")
            .field("url", &self.base)
            .field("user", &self.user)
            .field("token", &self.token.source)
            .field("version", &self.version.get())
            .field("max_array_size", &self.max_array_size)
            .finish_non_exhaustive()
    }
}

/// Whether slurmrestd may be reached over plain `http://`. The token travels in a header of
/// every request, so anywhere but this machine it must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// `https://` only: what a coordinator whose job specs come from others (the operator)
    /// uses unless its administrator allows loopback http.
    #[default]
    Refused,
    /// `http://` too when the host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`):
    /// the token does not leave the machine. Other hosts still need `https://`.
    Loopback,
}

const URL_FIELD: &str = "spec.executor.slurm.url";

/// `url` without trailing slashes, if orch may send a token there under `plain_http`.
fn checked_base(url: &str, plain_http: PlainHttp) -> Result<String> {
    let base = url.trim().trim_end_matches('/').to_string();
    let not_a_url = || {
        SlurmError::invalid(
            URL_FIELD,
            format!("`{url}` is not an https:// URL of slurmrestd"),
        )
    };
    let host = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .unwrap_or_default();
    if host.is_empty() || host.starts_with('/') || base.chars().any(char::is_whitespace) {
        return Err(not_a_url());
    }
    let parsed = reqwest::Url::parse(&base).map_err(|_| not_a_url())?;
    if parsed.scheme() == "https" {
        return Ok(base);
    }
    match (plain_http, is_loopback(&parsed)) {
        (PlainHttp::Loopback, true) => Ok(base),
        (PlainHttp::Refused, true) => Err(SlurmError::invalid(
            URL_FIELD,
            format!(
                "`{base}` is plain http: orch sends the slurmrestd token over https only. Use \
                 an https:// URL; http to a loopback address needs the administrator's flag \
                 allowing it"
            ),
        )),
        (_, false) => Err(SlurmError::invalid(
            URL_FIELD,
            format!(
                "`{base}` is plain http to another machine: the slurmrestd token would cross \
                 the network unencrypted. Use an https:// URL (plain http is allowed only to \
                 a loopback address, and only where the administrator allows it)"
            ),
        )),
    }
}

/// Whether `url` names this machine: `127.0.0.0/8`, `::1` or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    // The URL parser has normalised the host: lower case, IPv4 in dotted form (`127.1` is
    // `127.0.0.1`), IPv6 in brackets.
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The user REST calls act as: the one given, else `$USER`, else `$LOGNAME` (`env` looks them
/// up). Never a default like `root`: slurmrestd would run the jobs as whoever the token allows.
fn resolve_user(given: Option<String>, env: impl Fn(&str) -> Option<String>) -> Result<String> {
    given
        .into_iter()
        .chain(["USER", "LOGNAME"].iter().filter_map(|v| env(v)))
        .find(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            SlurmError::invalid(
                "spec.executor.slurm.user",
                "no user to act as on slurmrestd: set spec.executor.slurm.user (neither USER \
                 nor LOGNAME is set where orch runs)",
            )
        })
}

/// The HTTP client of `base`. It follows no redirect: one would carry the token to wherever the
/// Location points. Plain http (loopback only) goes direct: through a proxy named by
/// `http_proxy` the token would leave the machine unencrypted after all.
fn build_client(base: &str, certificate: Option<reqwest::Certificate>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("orch-slurm/", env!("CARGO_PKG_VERSION")));
    if base.starts_with("http://") {
        builder = builder.no_proxy();
    }
    if let Some(c) = certificate {
        builder = builder.add_root_certificate(c);
    }
    builder
        .build()
        .map_err(|e| SlurmError::invalid(URL_FIELD, format!("cannot set up an HTTP client: {e}")))
}

impl RestApi {
    /// A client of the slurmrestd at `url` (`https://host:6820`), acting as `user` (default
    /// `$USER`, else `$LOGNAME`; neither is [`SlurmError::Invalid`]). `http://` is accepted
    /// only to a loopback host and only with [`PlainHttp::Loopback`]. Reads the token now: a
    /// missing, empty or expired one is [`SlurmError::Invalid`] before anything is sent.
    pub fn new(
        url: impl Into<String>,
        user: Option<String>,
        token: TokenSource,
        plain_http: PlainHttp,
    ) -> Result<Self> {
        let base = checked_base(&url.into(), plain_http)?;
        let user = resolve_user(user, |k| std::env::var(k).ok())?;
        if HeaderValue::from_str(&user).is_err() {
            return Err(SlurmError::invalid(
                "spec.executor.slurm.user",
                format!("`{user}` cannot be sent in an HTTP header"),
            ));
        }
        let client = build_client(&base, None)?;
        Ok(RestApi {
            base,
            user,
            token: TokenCache::new(token)?,
            client,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_array_size: DEFAULT_MAX_ARRAY_SIZE,
            version: OnceCell::new(),
            jobs_cache: tokio::sync::Mutex::new(None),
            signal_warned: AtomicBool::new(false),
        })
    }

    /// The cluster's `MaxArraySize` (slurmrestd does not tell it); default 1001. Set it to the
    /// cluster's value: a larger one makes submissions with high indices fail, a smaller one
    /// only cuts jobs into more arrays.
    pub fn with_max_array_size(mut self, n: u32) -> Self {
        self.max_array_size = n.max(1);
        self
    }

    /// Uses this API version without asking the server.
    pub fn with_version(mut self, version: ApiVersion) -> Self {
        self.version = OnceCell::new_with(Some(version));
        self
    }

    /// The timeout of each request (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a GET is tried on transient failures, and the first pause between tries
    /// (doubled each time). Default: 3 attempts, 0.5 s.
    pub fn with_retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Trusts this CA (PEM) for `https://` besides the public roots, for a site CA.
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Result<Self> {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| SlurmError::invalid(URL_FIELD, format!("not a PEM certificate: {e}")))?;
        self.client = build_client(&self.base, Some(cert))?;
        Ok(self)
    }

    /// The API version in use, negotiating it on first use: the newest supported version that
    /// slurmrestd's OpenAPI description (`/openapi/v3`, else `/openapi`) offers; if neither
    /// answers, a ping of `/slurm/v0.0.NN/ping/` from the newest supported version down.
    /// [`RestApi::with_version`] skips the negotiation.
    pub async fn version(&self) -> Result<ApiVersion> {
        self.version
            .get_or_try_init(|| self.negotiate())
            .await
            .copied()
    }

    fn path(&self, version: ApiVersion, rest: &str) -> String {
        format!("/slurm/{}/{rest}", version.as_str())
    }

    async fn negotiate(&self) -> Result<ApiVersion> {
        for doc in ["/openapi/v3", "/openapi"] {
            match self
                .exchange::<OpenApiDoc>("read the API description", Method::GET, doc, &[], None)
                .await
            {
                Ok((_, spec)) => {
                    let offered = offered_versions(spec.paths.keys().map(String::as_str));
                    if offered.is_empty() {
                        continue;
                    }
                    return match offered
                        .iter()
                        .rev()
                        .find_map(|m| ApiVersion::from_minor(*m))
                    {
                        Some(v) => {
                            info!(url = %self.base, version = %v, "slurmrestd API version chosen");
                            Ok(v)
                        }
                        None => Err(SlurmError::Slurm {
                            operation: "choose the slurmrestd API version".into(),
                            message: format!(
                                "slurmrestd at {} offers {}; orch speaks v0.0.38, v0.0.40, v0.0.41 and v0.0.42",
                                self.base,
                                offered
                                    .iter()
                                    .map(|m| format!("v0.0.{m}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            transient: false,
                        }),
                    };
                }
                Err(e @ (SlurmError::Invalid { .. } | SlurmError::Unreachable { .. })) => {
                    return Err(e);
                }
                Err(e) => debug!(doc, error = %e, "no usable API description"),
            }
        }
        for version in ApiVersion::SUPPORTED.into_iter().rev() {
            let path = self.path(version, "ping/");
            match self
                .exchange::<Generic>("ping slurmrestd", Method::GET, &path, &[], None)
                .await
            {
                Ok(_) => {
                    info!(url = %self.base, %version, "slurmrestd API version chosen by ping");
                    return Ok(version);
                }
                Err(e @ (SlurmError::Invalid { .. } | SlurmError::Unreachable { .. })) => {
                    return Err(e);
                }
                Err(e) => debug!(%version, error = %e, "ping failed"),
            }
        }
        Err(SlurmError::Slurm {
            operation: "choose the slurmrestd API version".into(),
            message: format!(
                "slurmrestd at {} answers neither /openapi/v3 nor a ping of v0.0.38, v0.0.40, \
                 v0.0.41 or v0.0.42",
                self.base
            ),
            transient: false,
        })
    }

    /// One request, retried on transient failures when it is a GET.
    async fn exchange<T: Answer>(
        &self,
        op: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, T)> {
        let attempts = if method == Method::GET {
            self.attempts
        } else {
            1
        };
        let mut attempt = 1;
        loop {
            match self.once::<T>(op, method.clone(), path, query, body).await {
                Err(e) if attempt < attempts && is_transient(&e) => {
                    let pause =
                        orch_core::backoff::Backoff::doubling(self.backoff, self.backoff * 8)
                            .delay(attempt);
                    debug!(op, attempt, error = %e, "transient failure; trying again");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once<T: Answer>(
        &self,
        op: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, T)> {
        let token = self.token.for_request()?;
        let mut token_header = HeaderValue::from_str(&token.0).map_err(|_| {
            SlurmError::invalid(
                self.token.source.field(),
                "the slurmrestd token has characters an HTTP header cannot carry",
            )
        })?;
        token_header.set_sensitive(true);
        let url = format!("{}{path}", self.base);
        let mut request = self
            .client
            .request(method, &url)
            .timeout(self.timeout)
            .header(ACCEPT, "application/json")
            .header("X-SLURM-USER-NAME", self.user.as_str())
            .header("X-SLURM-USER-TOKEN", token_header);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        let status = response.status();
        // 304 answers a conditional jobs query; every other 3xx is a redirect, not followed.
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok());
            return Err(self.redirected(&url, status, location));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        let answer = interpret::<T>(op, status, &bytes, &self.refused_context())?;
        Ok((status, answer))
    }

    /// The error of a redirect: its status and the host it points to, nothing more of the
    /// Location (which may carry anything).
    fn redirected(&self, url: &str, status: StatusCode, location: Option<&str>) -> SlurmError {
        let target = location
            .and_then(|l| reqwest::Url::parse(url).ok()?.join(l).ok())
            .and_then(|l| l.host_str().map(str::to_string))
            .map(|host| format!(" to host `{host}`"))
            .unwrap_or_default();
        SlurmError::invalid(
            URL_FIELD,
            format!(
                "slurmrestd at {} answered HTTP {} (a redirect{target}); orch does not follow \
                 redirects, which would carry the token elsewhere: set the url to where \
                 slurmrestd itself answers",
                self.base,
                status.as_u16()
            ),
        )
    }

    fn refused_context(&self) -> Refused<'_> {
        Refused {
            field: self.token.source.field(),
            user: &self.user,
            url: &self.base,
        }
    }

    fn transport_error(&self, op: &str, e: reqwest::Error) -> SlurmError {
        let message = if e.is_timeout() {
            format!(
                "{} did not answer within {} s",
                self.base,
                self.timeout.as_secs_f64()
            )
        } else {
            let e = e.without_url();
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            format!("{}: {text}", self.base)
        };
        SlurmError::Unreachable {
            operation: op.to_string(),
            message,
        }
    }

    /// Every job slurmctld knows, as raw records (v0.0.40+: the last answer again when nothing
    /// changed since).
    async fn jobs(&self, version: ApiVersion) -> Result<Vec<RawJob>> {
        let path = self.path(version, "jobs/");
        let op = "list Slurm jobs";
        if !version.modern() {
            let (_, answer) = self
                .exchange::<JobsResponse>(op, Method::GET, &path, &[], None)
                .await?;
            return Ok(answer.jobs);
        }
        let mut cache = self.jobs_cache.lock().await;
        let since = cache.as_ref().map(|c| c.last_update);
        let query: Vec<(&str, String)> = since
            .map(|t| vec![("update_time", t.to_string())])
            .unwrap_or_default();
        let (status, mut answer) = self
            .exchange::<JobsResponse>(op, Method::GET, &path, &query, None)
            .await?;
        if since.is_some() && answer.jobs.is_empty() {
            let last_update = answer.last_update.as_ref().and_then(RawNum::value);
            let unchanged = status == StatusCode::NOT_MODIFIED
                || last_update.is_none_or(|t| t <= 0)
                || answer
                    .warnings
                    .iter()
                    .any(|w| w.text().to_ascii_lowercase().contains("no job changes"));
            if unchanged && let Some(c) = cache.as_ref() {
                return Ok(c.jobs.clone());
            }
            // An empty list that does not say "unchanged": make sure with a full listing
            // rather than report every array gone.
            answer = self
                .exchange::<JobsResponse>(op, Method::GET, &path, &[], None)
                .await?
                .1;
        }
        *cache = answer
            .last_update
            .as_ref()
            .and_then(RawNum::value)
            .filter(|t| *t > 0)
            .map(|t| JobsCache {
                last_update: t,
                jobs: answer.jobs.clone(),
            });
        Ok(answer.jobs)
    }
}

#[async_trait]
impl SlurmApi for RestApi {
    async fn cluster_info(&self) -> Result<ClusterInfo> {
        let version = self.version().await?;
        let (_, answer) = self
            .exchange::<PartitionsResponse>(
                "list Slurm partitions",
                Method::GET,
                &self.path(version, "partitions/"),
                &[],
                None,
            )
            .await?;
        Ok(ClusterInfo {
            max_array_size: self.max_array_size,
            partitions: partitions(&answer),
        })
    }

    async fn submit(&self, array: &ArraySubmission) -> Result<u64> {
        let version = self.version().await?;
        let body = submit_body(version, array)?;
        if !version.modern()
            && array.signal.starts_with("B:")
            && !self.signal_warned.swap(true, Ordering::Relaxed)
        {
            warn!(
                signal = %array.signal,
                "slurmrestd v0.0.38 cannot signal the batch shell (--signal=B:): tasks get \
                 SIGTERM only at their time limit, KillWait before SIGKILL; use the CLI \
                 transport or Slurm 23.11+ for the checkpoint signal"
            );
        }
        let (_, answer) = self
            .exchange::<SubmitResponse>(
                "submit a Slurm array",
                Method::POST,
                &self.path(version, "job/submit"),
                &[],
                Some(&body),
            )
            .await?;
        if let Some(msg) = answer.job_submit_user_msg.as_deref()
            && !msg.trim().is_empty()
        {
            info!(message = msg, "Slurm's job_submit plugin says");
        }
        answer
            .job_id
            .as_ref()
            .and_then(|n| n.value())
            .filter(|id| *id > 0)
            .and_then(|id| u64::try_from(id).ok())
            .ok_or_else(|| SlurmError::Decode {
                operation: "submit a Slurm array".into(),
                message: "the answer has no job_id".into(),
            })
    }

    async fn arrays(&self, name: &str) -> Result<Vec<ArrayJob>> {
        let version = self.version().await?;
        let jobs = self.jobs(version).await?;
        Ok(arrays_from_jobs(name, &jobs))
    }

    async fn cancel(&self, array_job_id: u64, indices: &[u32]) -> Result<()> {
        let version = self.version().await?;
        let op = "cancel Slurm array tasks";
        for request in cancel_requests(version, array_job_id, indices) {
            let path = self.path(version, &request.path);
            let result = if version.modern() {
                self.exchange::<KillJobsResponse>(
                    op,
                    Method::DELETE,
                    &path,
                    &[],
                    request.body.as_ref(),
                )
                .await
                .and_then(|(_, answer)| kill_failures(&answer))
            } else {
                self.exchange::<Generic>(op, Method::DELETE, &path, &[], None)
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {
                    debug!(array = array_job_id, error = %e, "tasks already gone");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn hold(&self, array_job_id: u64) -> Result<()> {
        self.set_hold(array_job_id, true).await
    }

    async fn release(&self, array_job_id: u64) -> Result<()> {
        self.set_hold(array_job_id, false).await
    }
}

impl RestApi {
    /// Hold or release: one `POST /slurm/v0.0.NN/job/<id>` with `{"hold": true|false}`
    /// (priority 0, then recomputed, as `scontrol hold`/`release` do); tasks already running
    /// go on.
    async fn set_hold(&self, array_job_id: u64, hold: bool) -> Result<()> {
        let version = self.version().await?;
        let op = if hold {
            "hold a Slurm array"
        } else {
            "release a Slurm array"
        };
        let body = json!({ "hold": hold });
        let result = self
            .exchange::<JobPostResponse>(
                op,
                Method::POST,
                &self.path(version, &format!("job/{array_job_id}")),
                &[],
                Some(&body),
            )
            .await;
        match result {
            Ok((_, answer)) => {
                let failed: Vec<String> = answer
                    .results
                    .iter()
                    .filter_map(|r| {
                        let code = r.code()?;
                        (!HOLD_IGNORED.contains(&code)).then(|| r.text())
                    })
                    .collect();
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err(SlurmError::Slurm {
                        operation: op.into(),
                        message: failed.join("; "),
                        transient: false,
                    })
                }
            }
            // Tasks that already run or ended are not held: the pending ones are.
            Err(SlurmError::Slurm { message, .. })
                if HOLD_IGNORED
                    .iter()
                    .any(|c| message.contains(&format!("Slurm error {c}"))) =>
            {
                debug!(array = array_job_id, %message, "some tasks were past pending");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
