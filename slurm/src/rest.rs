//! slurmrestd as a [`SlurmApi`]: for an operator outside the cluster.
//!
//! [`RestApi`] talks JSON over HTTP(S) to slurmrestd, authenticated with a JWT
//! (`X-SLURM-USER-NAME` / `X-SLURM-USER-TOKEN`). The token comes from a file, read again
//! whenever its modification time or size changes (so a rotated token is picked up without a
//! restart), or from `SLURM_JWT`. The token is never logged, never put in an error message and
//! never shown by `Debug`. A missing or empty token, or one whose JWT `exp` has passed, is
//! [`SlurmError::Invalid`] in [`RestApi::new`], before anything is sent; a token file that
//! expires later is a transient error until a fresh token is written (slurmctld itself reports
//! a refused token through slurmrestd 22.05 only as "Unspecified error" or a dropped
//! connection). HTTP 401/403 are [`SlurmError::Invalid`] saying the token was refused.
//!
//! # API versions
//!
//! slurmrestd serves its API under `/slurm/v0.0.NN/`, and each Slurm release offers a few
//! versions. [`RestApi`] supports two shapes:
//!
//! * **v0.0.38** (Slurm 22.05 – 23.11): the submit body is `{script, job}` with `environment`
//!   as a map and sbatch-like option names (`signal: "TERM@60"`, `gres`, `exclusive`);
//!   answers carry plain numbers, `job_state` as a string and `exit_code` as the raw wait
//!   status.
//! * **v0.0.40, v0.0.41, v0.0.42** (Slurm 23.11 to 25.11, each release serving two or three
//!   of them): the script goes inside `job`,
//!   `environment` is a list of `K=V`, numbers are `{set, infinite, number}` objects,
//!   `job_state` is a list of a base state plus flags, `exit_code` is
//!   `{status, return_code, signal: {id, name}}`, and `--signal` becomes
//!   `kill_warning_signal` / `kill_warning_delay` / `kill_warning_flags`.
//!
//! On first use the client reads slurmrestd's OpenAPI description (`/openapi/v3`, else
//! `/openapi`) and picks the newest supported version it offers; if neither answers it pings
//! `/slurm/v0.0.NN/ping/` from the newest supported version down. [`RestApi::with_version`]
//! skips the negotiation. (v0.0.39, Slurm 23.02, is not used: that release also serves
//! v0.0.38.) Answers are decoded leniently: a number may come plain or as an object, a state as
//! a string or a list, so a field that changed shape between versions still reads.
//!
//! # What the REST transport cannot do
//!
//! * `MaxArraySize` is not exposed by slurmrestd (no configuration endpoint in the `slurm`
//!   API of any supported version): [`RestApi::with_max_array_size`] sets it, default 1001
//!   (Slurm's default). Set it to the cluster's value: a larger one makes submissions with
//!   high indices fail, a smaller one only cuts jobs into more arrays.
//! * v0.0.40+ partitions carry no flags, so no partition is known to be the default one there
//!   (the time-limit check then needs `spec.resources.partition`).
//! * Slurm's library in slurmrestd shortens the index list of a still-collapsed pending array
//!   record to 64 characters (`0,3,7,...`) unless slurmrestd runs with `SLURM_BITSTR_LEN=0`;
//!   indices past the cut are then not reported (a warning says so). Arrays orch submits are
//!   mostly contiguous ranges (`0-999`), which never get cut.
//! * `--signal=B:…` on v0.0.38: slurmrestd parses the option as a program other than sbatch,
//!   which does not know `B:`, so the checkpoint signal can only be sent to the job's steps,
//!   not to the batch shell the worker runs in; the worker then sees SIGTERM only at the time
//!   limit (`KillWait` before SIGKILL). A warning says so at the first submission. v0.0.40+
//!   have `kill_warning_flags: [BATCH_JOB]`.
//! * Pending tasks cancelled while still collapsed into the array's pending record just
//!   disappear from slurmctld (no CANCELLED record), as with `scancel`; only tasks that had
//!   started show up as CANCELLED.
//! * Extra sbatch options: every allow-listed one maps to a v0.0.38 field; `--hint` has no
//!   v0.0.40+ field and is refused there (use the CLI transport).
//!
//! # Requests
//!
//! Every request has a timeout (30 s). GETs are retried on transient failures (3 attempts,
//! backoff 0.5 s then 1 s); POSTs and DELETEs are sent once — the executor's submit is
//! idempotent by the array's comment, so a failed submit surfaces as a transient error and the
//! engine tries again after looking the array up. Cancelling a whole array is one
//! `DELETE /slurm/v0.0.NN/job/<id>`. Cancelling some tasks is, on v0.0.38, one
//! `DELETE /slurm/v0.0.38/job/<id>_<first>-<last>` per run of consecutive indices (slurmctld
//! takes a range, but slurmrestd 22.05 refuses `,` in the path), and on v0.0.40+ a single
//! `DELETE /slurm/v0.0.NN/jobs/` with the task ids in the body (the single-job `DELETE` there
//! ignores the task id before Slurm 24.11 and would cancel the whole array). Hold and release
//! are one `POST /slurm/v0.0.NN/job/<id>` with `{"hold": true|false}` (priority 0, then
//! recomputed, as `scontrol hold`/`release` do); tasks already running go on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::api::{ArrayJob, ArrayTask, ClusterInfo, PartitionInfo, SlurmApi};
use crate::error::{Result, SlurmError};
use crate::submission::{ArraySubmission, array_spec};

/// Slurm's default `MaxArraySize`, used unless [`RestApi::with_max_array_size`] says otherwise.
pub const DEFAULT_MAX_ARRAY_SIZE: u32 = 1001;
/// The timeout of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_ATTEMPTS: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// `PATH` of the tasks when the submission sets none: slurmrestd passes only the environment
/// it is given, and v0.0.38 refuses an empty one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The slurmrestd API versions [`RestApi`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiVersion {
    V0_0_38,
    V0_0_40,
    V0_0_41,
    V0_0_42,
}

impl ApiVersion {
    /// Oldest first.
    pub const SUPPORTED: [ApiVersion; 4] = [
        ApiVersion::V0_0_38,
        ApiVersion::V0_0_40,
        ApiVersion::V0_0_41,
        ApiVersion::V0_0_42,
    ];

    /// `v0.0.41`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V0_0_38 => "v0.0.38",
            ApiVersion::V0_0_40 => "v0.0.40",
            ApiVersion::V0_0_41 => "v0.0.41",
            ApiVersion::V0_0_42 => "v0.0.42",
        }
    }

    fn from_minor(minor: u32) -> Option<Self> {
        ApiVersion::SUPPORTED
            .into_iter()
            .find(|v| v.as_str().strip_prefix("v0.0.") == Some(&minor.to_string()))
    }

    /// v0.0.40 and later: numbers as objects, `environment` as a list, the script in `job`.
    fn modern(self) -> bool {
        self != ApiVersion::V0_0_38
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApiVersion {
    type Err = SlurmError;

    fn from_str(s: &str) -> Result<Self> {
        s.strip_prefix("v0.0.")
            .and_then(|m| m.parse().ok())
            .and_then(ApiVersion::from_minor)
            .ok_or_else(|| {
                SlurmError::invalid(
                    "slurmrestd API version",
                    format!("`{s}` is not one orch speaks (v0.0.38, v0.0.40, v0.0.41, v0.0.42)"),
                )
            })
    }
}

/// Where the JWT comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token (`spec.executor.slurm.tokenFile`), read again when it changes.
    File(PathBuf),
    /// The `SLURM_JWT` environment variable, read once.
    Env,
}

impl TokenSource {
    /// The setting an error about the token points at.
    fn field(&self) -> &'static str {
        match self {
            TokenSource::File(_) => "spec.executor.slurm.tokenFile",
            TokenSource::Env => "SLURM_JWT",
        }
    }
}

/// A token; its `Debug` shows nothing of it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Base64url (or standard base64), padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Seconds since a JWT's `exp` claim passed; `None` when it has not, or the token is not a
/// JWT with an `exp` (then slurmctld decides).
fn expired_since(token: &Secret) -> Option<i64> {
    let payload = token.0.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&base64_decode(payload)?).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let ago = i64::try_from(now).ok()? - exp;
    (ago >= 0).then_some(ago)
}

struct Loaded {
    /// Modification time and size of the file it was read from.
    stamp: Option<(Option<SystemTime>, u64)>,
    token: Secret,
}

struct TokenCache {
    source: TokenSource,
    loaded: Mutex<Option<Loaded>>,
}

impl TokenCache {
    fn new(source: TokenSource) -> Result<Self> {
        let cache = TokenCache {
            source,
            loaded: Mutex::new(None),
        };
        let token = cache.current()?;
        if let Some(ago) = expired_since(&token) {
            return Err(SlurmError::invalid(
                cache.source.field(),
                format!(
                    "the slurmrestd token expired {ago} s ago; make a fresh one \
                     (`scontrol token lifespan=…`)"
                ),
            ));
        }
        Ok(cache)
    }

    /// The token for a request: an expired one is refused here rather than by slurmctld
    /// (which slurmrestd 22.05 reports only as "Unspecified error" or a dropped connection).
    /// With a token file that is a transient error: a fresh token may be written any moment.
    fn for_request(&self) -> Result<Secret> {
        let token = self.current()?;
        match (expired_since(&token), &self.source) {
            (None, _) => Ok(token),
            (Some(ago), TokenSource::File(path)) => Err(SlurmError::Slurm {
                operation: "authenticate to slurmrestd".into(),
                message: format!(
                    "the token in {} expired {ago} s ago; waiting for a fresh one \
                     (`scontrol token lifespan=…`)",
                    path.display()
                ),
                transient: true,
            }),
            (Some(ago), TokenSource::Env) => Err(SlurmError::invalid(
                "SLURM_JWT",
                format!("the slurmrestd token expired {ago} s ago"),
            )),
        }
    }

    /// The token now: the file is read again when its modification time or size changed.
    fn current(&self) -> Result<Secret> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match &self.source {
            TokenSource::Env => {
                if let Some(l) = loaded.as_ref() {
                    return Ok(l.token.clone());
                }
                let token = std::env::var("SLURM_JWT").unwrap_or_default();
                let token = token.trim();
                if token.is_empty() {
                    return Err(SlurmError::invalid(
                        "SLURM_JWT",
                        "no slurmrestd token: SLURM_JWT is not set (or empty) and \
                         spec.executor.slurm.tokenFile names no file",
                    ));
                }
                let token = Secret(token.to_string());
                *loaded = Some(Loaded {
                    stamp: None,
                    token: token.clone(),
                });
                Ok(token)
            }
            TokenSource::File(path) => {
                let unreadable = |e: std::io::Error| {
                    SlurmError::invalid(
                        "spec.executor.slurm.tokenFile",
                        format!(
                            "cannot read the slurmrestd token file {}: {e}",
                            path.display()
                        ),
                    )
                };
                let meta = std::fs::metadata(path).map_err(unreadable)?;
                let stamp = (meta.modified().ok(), meta.len());
                if let Some(l) = loaded.as_ref()
                    && l.stamp == Some(stamp)
                {
                    return Ok(l.token.clone());
                }
                let text = std::fs::read_to_string(path).map_err(unreadable)?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(SlurmError::invalid(
                        "spec.executor.slurm.tokenFile",
                        format!("the slurmrestd token file {} is empty", path.display()),
                    ));
                }
                if loaded.is_some() {
                    info!(file = %path.display(), "slurmrestd token file changed; using the new token");
                }
                let token = Secret(token.to_string());
                *loaded = Some(Loaded {
                    stamp: Some(stamp),
                    token: token.clone(),
                });
                Ok(token)
            }
        }
    }
}

/// The last answer to the jobs query on v0.0.40+, reused while slurmctld reports no change
/// since its `last_update`.
struct JobsCache {
    last_update: i64,
    jobs: Vec<RawJob>,
}

/// slurmrestd as a [`SlurmApi`]; see the module documentation.
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

/// The user REST calls act as when none is configured: `$USER`, `$LOGNAME`, else `root`.
fn default_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "root".to_string())
}

fn build_client(certificate: Option<reqwest::Certificate>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("orch-slurm/", env!("CARGO_PKG_VERSION")));
    if let Some(c) = certificate {
        builder = builder.add_root_certificate(c);
    }
    builder.build().map_err(|e| {
        SlurmError::invalid(
            "spec.executor.slurm.url",
            format!("cannot set up an HTTP client: {e}"),
        )
    })
}

impl RestApi {
    /// A client of the slurmrestd at `url` (`http://host:6820`), acting as `user` (default
    /// `$USER`, `$LOGNAME`, else `root`). Reads the token now: a missing or empty one is
    /// [`SlurmError::Invalid`] before anything is sent.
    pub fn new(url: impl Into<String>, user: Option<String>, token: TokenSource) -> Result<Self> {
        let url = url.into();
        let base = url.trim().trim_end_matches('/').to_string();
        let host = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .unwrap_or_default();
        if host.is_empty() || host.starts_with('/') || base.chars().any(char::is_whitespace) {
            return Err(SlurmError::invalid(
                "spec.executor.slurm.url",
                format!("`{url}` is not an http:// or https:// URL of slurmrestd"),
            ));
        }
        let user = user
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(default_user);
        if HeaderValue::from_str(&user).is_err() {
            return Err(SlurmError::invalid(
                "spec.executor.slurm.user",
                format!("`{user}` cannot be sent in an HTTP header"),
            ));
        }
        Ok(RestApi {
            base,
            user,
            token: TokenCache::new(token)?,
            client: build_client(None)?,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_array_size: DEFAULT_MAX_ARRAY_SIZE,
            version: OnceCell::new(),
            jobs_cache: tokio::sync::Mutex::new(None),
            signal_warned: AtomicBool::new(false),
        })
    }

    /// The cluster's `MaxArraySize` (slurmrestd does not tell it); default 1001.
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
        let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
            SlurmError::invalid(
                "spec.executor.slurm.url",
                format!("not a PEM certificate: {e}"),
            )
        })?;
        self.client = build_client(Some(cert))?;
        Ok(self)
    }

    /// The API version in use, negotiating it on first use.
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
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        let answer = interpret::<T>(op, status, &bytes, &self.refused_context())?;
        Ok((status, answer))
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

/// `v0.0.NN` minors named by the paths of an OpenAPI description, ascending.
fn offered_versions<'a>(paths: impl Iterator<Item = &'a str>) -> BTreeSet<u32> {
    paths
        .filter_map(|p| {
            let rest = p.strip_prefix("/slurm/v0.0.")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
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

// ---- errors -------------------------------------------------------------------------------

/// `ESLURM_ALREADY_DONE`, `ESLURM_INVALID_JOB_ID`: a task to cancel that already ended.
const GONE: [i64; 2] = [2021, 2017];
/// Error numbers of a hold/release that only hit tasks past pending.
const HOLD_IGNORED: [i64; 6] = [2021, 2073, 2083, 2084, 2085, 2086];

fn is_transient(e: &SlurmError) -> bool {
    matches!(
        e,
        SlurmError::Unreachable { .. }
            | SlurmError::Slurm {
                transient: true,
                ..
            }
    )
}

fn is_gone(e: &SlurmError) -> bool {
    match e {
        SlurmError::Slurm { message, .. } => GONE
            .iter()
            .any(|c| message.contains(&format!("Slurm error {c}"))),
        _ => false,
    }
}

/// Slurm error numbers worth trying again: the controller unreachable or busy.
fn transient_number(n: i64) -> bool {
    matches!(n,
        11 /* EAGAIN */ | 110 /* ETIMEDOUT */ | 111 /* ECONNREFUSED */
        | 1001..=1004 /* SLURM_COMMUNICATIONS_* */
        | 1800..=1803 /* SLURMCTLD_COMMUNICATIONS_* */
        | 2007 /* ESLURM_ERROR_ON_DESC_TO_RECORD_COPY: try again */
        | 2027 /* ESLURM_IN_STANDBY_MODE */
        | 5000..=5005 /* SLURM_PROTOCOL_SOCKET_IMPL_* */
        | 7000 /* ESLURM_DB_CONNECTION */)
}

/// Slurm error numbers meaning the credential was refused.
fn auth_number(n: i64) -> bool {
    n == 1007 /* SLURM_PROTOCOL_AUTHENTICATION_ERROR */ || (6000..=6099).contains(&n)
}

fn transient_text(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "unable to contact slurm controller",
        "connection refused",
        "timed out",
        "try again",
        "communication connection failure",
        "slurmctld is not responding",
    ]
    .iter()
    .any(|p| t.contains(p))
}

struct Refused<'a> {
    field: &'static str,
    user: &'a str,
    url: &'a str,
}

impl Refused<'_> {
    fn error(&self, detail: &str) -> SlurmError {
        SlurmError::invalid(
            self.field,
            format!(
                "slurmrestd at {} refused the token for user `{}` ({detail}); renew it \
                 (`scontrol token`) or check the user",
                self.url, self.user
            ),
        )
    }
}

/// The answer to a request, or the error it means: 401/403 → the token was refused; errors in
/// the body → [`SlurmError::Slurm`], transient when the controller was unreachable or busy or
/// the server failed (5xx, 429) without naming a lasting cause; a body that does not parse →
/// [`SlurmError::Decode`].
fn interpret<T: Answer>(
    op: &str,
    status: StatusCode,
    body: &[u8],
    refused: &Refused<'_>,
) -> Result<T> {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(refused.error(&format!("HTTP {}", status.as_u16())));
    }
    let text = String::from_utf8_lossy(body);
    let parsed: Option<std::result::Result<T, serde_json::Error>> = if text.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_slice(body))
    };
    let retry_status = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error();
    match parsed {
        Some(Ok(answer)) => {
            let errors: Vec<&RawError> = answer
                .errors()
                .iter()
                .filter(|e| e.real() && !T::ignorable(e))
                .collect();
            if status.is_success() && errors.is_empty() {
                return Ok(answer);
            }
            if status.is_success() && answer.done_despite_errors() {
                warn!(op, errors = %messages(&errors), "Slurm accepted the request with errors");
                return Ok(answer);
            }
            if errors.iter().any(|e| e.number().is_some_and(auth_number)) {
                return Err(refused.error(&messages(&errors)));
            }
            let named_transient = errors
                .iter()
                .any(|e| e.number().is_some_and(transient_number) || transient_text(&e.text()));
            let all_lasting = !errors.is_empty()
                && errors
                    .iter()
                    .all(|e| e.number().is_some_and(|n| n > 0 && !transient_number(n)));
            let transient = named_transient
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::BAD_GATEWAY
                || status == StatusCode::GATEWAY_TIMEOUT
                || (retry_status && !all_lasting);
            let mut message = if errors.is_empty() {
                format!("HTTP {status}")
            } else if status.is_success() {
                messages(&errors)
            } else {
                format!("HTTP {}: {}", status.as_u16(), messages(&errors))
            };
            if errors.iter().any(|e| e.number() == Some(-1)) {
                message.push_str(
                    " — slurmctld gave no reason; slurmrestd 22.05 answers this way when \
                     slurmctld refused the token",
                );
            }
            Err(SlurmError::Slurm {
                operation: op.to_string(),
                message,
                transient,
            })
        }
        Some(Err(e)) if status.is_success() => Err(SlurmError::Decode {
            operation: op.to_string(),
            message: e.to_string(),
        }),
        Some(Err(_)) => Err(SlurmError::Slurm {
            operation: op.to_string(),
            message: format!("HTTP {status}: {}", snippet(&text)),
            transient: retry_status || transient_text(&text),
        }),
        None if status.is_success() || status == StatusCode::NOT_MODIFIED => Ok(T::default()),
        None => Err(SlurmError::Slurm {
            operation: op.to_string(),
            message: format!("HTTP {status} with an empty body"),
            transient: retry_status,
        }),
    }
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn messages(errors: &[&RawError]) -> String {
    errors
        .iter()
        .map(|e| e.text())
        .collect::<Vec<_>>()
        .join("; ")
}

// ---- answers ------------------------------------------------------------------------------

/// `null` as the type's default (slurmrestd writes `null` for unset lists and strings).
fn nullable<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A decoded answer, with the errors and warnings every slurmrestd answer may carry.
trait Answer: DeserializeOwned + Default {
    fn errors(&self) -> &[RawError];

    /// An error entry that reports nothing wrong.
    fn ignorable(_error: &RawError) -> bool {
        false
    }

    /// Whether the request took effect although errors came with it.
    fn done_despite_errors(&self) -> bool {
        false
    }
}

macro_rules! answer {
    ($t:ty) => {
        impl Answer for $t {
            fn errors(&self) -> &[RawError] {
                &self.errors
            }
        }
    };
}

#[derive(Debug, Default, Deserialize)]
struct RawError {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    error_number: Option<RawNum>,
    #[serde(default)]
    error_code: Option<RawNum>,
    /// v0.0.38 partitions.
    #[serde(default)]
    errno: Option<RawNum>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl RawError {
    fn number(&self) -> Option<i64> {
        self.error_number
            .as_ref()
            .or(self.error_code.as_ref())
            .or(self.errno.as_ref())
            .and_then(RawNum::value)
    }

    /// An entry with error number 0 reports success (v0.0.38 adds one after some updates).
    fn real(&self) -> bool {
        self.number() != Some(0)
    }

    fn text(&self) -> String {
        let error = match &self.error {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = self.description.as_deref().filter(|d| !d.is_empty()) {
            parts.push(d.to_string());
        }
        if !error.is_empty() && !parts.iter().any(|p| p == &error) {
            parts.push(error);
        }
        let mut text = if parts.is_empty() {
            "unspecified error".to_string()
        } else {
            parts.join(": ")
        };
        if let Some(n) = self.number() {
            text.push_str(&format!(" (Slurm error {n})"));
        }
        if let Some(s) = self.source.as_deref().filter(|s| !s.is_empty()) {
            text.push_str(&format!(" [{s}]"));
        }
        text
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
struct RawWarning {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl RawWarning {
    fn text(&self) -> String {
        format!(
            "{} {}",
            self.description.as_deref().unwrap_or_default(),
            self.source.as_deref().unwrap_or_default()
        )
    }
}

/// A number as any version writes it: plain, `{set, infinite, number}`, or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawNum {
    Int(i64),
    UInt(u64),
    Float(f64),
    Object {
        #[serde(default)]
        set: Option<bool>,
        #[serde(default)]
        infinite: Option<bool>,
        #[serde(default)]
        number: Option<Value>,
    },
    Text(String),
}

impl RawNum {
    /// The value when set and finite.
    fn value(&self) -> Option<i64> {
        match self {
            RawNum::Int(n) => Some(*n),
            RawNum::UInt(n) => i64::try_from(*n).ok(),
            RawNum::Float(f) => Some(*f as i64),
            RawNum::Object {
                set,
                infinite,
                number,
            } => {
                if *infinite == Some(true) || *set == Some(false) {
                    return None;
                }
                number.as_ref().and_then(Value::as_i64)
            }
            RawNum::Text(s) => s.trim().parse().ok(),
        }
    }

    fn infinite(&self) -> bool {
        match self {
            RawNum::Object { infinite, .. } => *infinite == Some(true),
            RawNum::Text(s) => {
                let s = s.trim().to_ascii_lowercase();
                s == "infinity" || s == "infinite" || s == "unlimited"
            }
            _ => false,
        }
    }
}

/// A state as a string (v0.0.38) or a list of a base state and flags (v0.0.40+).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawStates {
    One(String),
    Many(Vec<String>),
}

impl RawStates {
    fn list(&self) -> Vec<String> {
        match self {
            RawStates::One(s) => vec![s.clone()],
            RawStates::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawSignal {
    #[serde(default)]
    id: Option<RawNum>,
}

/// An exit code: the raw wait status (v0.0.38) or `{status, return_code, signal}` (v0.0.40+).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawExit {
    Status(i64),
    Verbose {
        #[serde(default)]
        status: Option<RawStates>,
        #[serde(default)]
        return_code: Option<RawNum>,
        #[serde(default)]
        signal: Option<RawSignal>,
    },
}

impl RawExit {
    /// (exit code, signal).
    fn decode(&self) -> (Option<i32>, Option<i32>) {
        match self {
            RawExit::Status(status) => wait_status(*status),
            RawExit::Verbose {
                status,
                return_code,
                signal,
            } => {
                let flags = status.as_ref().map(RawStates::list).unwrap_or_default();
                if flags.iter().any(|f| f.eq_ignore_ascii_case("PENDING")) {
                    return (None, None);
                }
                let code = return_code
                    .as_ref()
                    .and_then(RawNum::value)
                    .and_then(|c| i32::try_from(c).ok());
                let signal = signal
                    .as_ref()
                    .and_then(|s| s.id.as_ref())
                    .and_then(RawNum::value)
                    .and_then(|c| i32::try_from(c).ok())
                    .filter(|s| *s > 0);
                (if signal.is_some() { None } else { code }, signal)
            }
        }
    }
}

/// A wait status as `waitpid` gives it: exit code in bits 8–15, else the signal in bits 0–6.
fn wait_status(status: i64) -> (Option<i32>, Option<i32>) {
    if !(0..0xffff_fffe).contains(&status) {
        return (None, None);
    }
    let signal = (status & 0x7f) as i32;
    if signal == 0 {
        (Some(((status >> 8) & 0xff) as i32), None)
    } else {
        (None, Some(signal))
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
struct RawJob {
    #[serde(default)]
    array_job_id: Option<RawNum>,
    #[serde(default)]
    array_task_id: Option<RawNum>,
    #[serde(default)]
    array_task_string: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    job_state: Option<RawStates>,
    #[serde(default)]
    exit_code: Option<RawExit>,
    #[serde(default)]
    state_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Generic {
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
}
answer!(Generic);

#[derive(Debug, Default, Deserialize)]
struct OpenApiDoc {
    #[serde(default, deserialize_with = "nullable")]
    paths: BTreeMap<String, IgnoredAny>,
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
}
answer!(OpenApiDoc);

#[derive(Debug, Default, Deserialize)]
struct JobsResponse {
    #[serde(default, deserialize_with = "nullable")]
    jobs: Vec<RawJob>,
    #[serde(default)]
    last_update: Option<RawNum>,
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
    #[serde(default, deserialize_with = "nullable")]
    warnings: Vec<RawWarning>,
}
answer!(JobsResponse);

#[derive(Debug, Default, Deserialize)]
struct RawMaximums {
    #[serde(default)]
    time: Option<RawNum>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPartition {
    #[serde(default)]
    name: Option<String>,
    /// v0.0.38: minutes, -1 when unlimited.
    #[serde(default)]
    max_time_limit: Option<RawNum>,
    /// v0.0.40+: `maximums.time`.
    #[serde(default)]
    maximums: Option<RawMaximums>,
    /// v0.0.38: includes `default`; absent in v0.0.40+.
    #[serde(default, deserialize_with = "nullable")]
    flags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PartitionsResponse {
    #[serde(default, deserialize_with = "nullable")]
    partitions: Vec<RawPartition>,
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
}
answer!(PartitionsResponse);

#[derive(Debug, Default, Deserialize)]
struct SubmitResponse {
    #[serde(default)]
    job_id: Option<RawNum>,
    #[serde(default)]
    job_submit_user_msg: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
}

impl Answer for SubmitResponse {
    fn errors(&self) -> &[RawError] {
        &self.errors
    }

    /// A job id with errors: slurmctld queued the job and said why it may wait (e.g.
    /// "Requested partition configuration not available now"), as sbatch reports it.
    fn done_despite_errors(&self) -> bool {
        self.job_id
            .as_ref()
            .and_then(RawNum::value)
            .is_some_and(|id| id > 0)
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawKillError {
    #[serde(default)]
    string: Option<String>,
    #[serde(default)]
    code: Option<RawNum>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawKillStatus {
    #[serde(default)]
    error: Option<RawKillError>,
    #[serde(default)]
    step_id: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct KillJobsResponse {
    #[serde(default, deserialize_with = "nullable")]
    status: Vec<RawKillStatus>,
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
}
answer!(KillJobsResponse);

#[derive(Debug, Default, Deserialize)]
struct RawPostResult {
    #[serde(default)]
    job_id: Option<RawNum>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    error_code: Option<RawNum>,
    #[serde(default)]
    why: Option<String>,
}

impl RawPostResult {
    fn code(&self) -> Option<i64> {
        self.error_code
            .as_ref()
            .and_then(RawNum::value)
            .filter(|c| *c != 0)
    }

    fn text(&self) -> String {
        let id = self
            .job_id
            .as_ref()
            .and_then(RawNum::value)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let error = match &self.error {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        format!(
            "job {id}: {error} {} (Slurm error {})",
            self.why.as_deref().unwrap_or_default(),
            self.code().unwrap_or_default()
        )
    }
}

#[derive(Debug, Default, Deserialize)]
struct JobPostResponse {
    #[serde(default, deserialize_with = "nullable")]
    results: Vec<RawPostResult>,
    #[serde(default, deserialize_with = "nullable")]
    errors: Vec<RawError>,
}

impl Answer for JobPostResponse {
    fn errors(&self) -> &[RawError] {
        &self.errors
    }

    /// slurmrestd 22.05 answers every successful update of an array with an error entry
    /// without a number, "job array update from … failed".
    fn ignorable(error: &RawError) -> bool {
        error.number().is_none()
            && error
                .description
                .as_deref()
                .is_some_and(|d| d.starts_with("job array update from"))
    }
}

/// Per-task failures of a v0.0.40+ bulk cancel, except tasks that had already ended.
fn kill_failures(answer: &KillJobsResponse) -> Result<()> {
    let failed: Vec<String> = answer
        .status
        .iter()
        .filter_map(|s| {
            let e = s.error.as_ref()?;
            let code = e.code.as_ref().and_then(RawNum::value).unwrap_or(0);
            if code == 0 || GONE.contains(&code) {
                return None;
            }
            let id = match &s.step_id {
                Some(Value::String(id)) => id.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            Some(format!(
                "{id}: {} (Slurm error {code})",
                e.message
                    .as_deref()
                    .or(e.string.as_deref())
                    .unwrap_or("failed")
            ))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SlurmError::Slurm {
            operation: "cancel Slurm array tasks".into(),
            message: failed.join("; "),
            transient: false,
        })
    }
}

// ---- answers → orch's types ---------------------------------------------------------------

const NO_VAL: i64 = 0xffff_fffe;

fn partitions(answer: &PartitionsResponse) -> Vec<PartitionInfo> {
    answer
        .partitions
        .iter()
        .filter_map(|p| {
            let name = p.name.clone().filter(|n| !n.is_empty())?;
            let time = p
                .maximums
                .as_ref()
                .and_then(|m| m.time.as_ref())
                .or(p.max_time_limit.as_ref());
            let max_time_minutes = match time {
                Some(t) if t.infinite() => None,
                Some(t) => t
                    .value()
                    .filter(|m| (0..NO_VAL).contains(m))
                    .and_then(|m| u64::try_from(m).ok()),
                None => None,
            };
            Some(PartitionInfo {
                name,
                max_time_minutes,
                default: p.flags.iter().any(|f| f.eq_ignore_ascii_case("default")),
            })
        })
        .collect()
}

/// Base job states; anything else in a v0.0.40+ state list is a flag.
const BASE_STATES: [&str; 12] = [
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
];

/// The state of a record: the string (v0.0.38) or the first base state in the list.
fn job_state(states: Option<&RawStates>) -> String {
    let list = states.map(RawStates::list).unwrap_or_default();
    let upper: Vec<String> = list.iter().map(|s| s.trim().to_ascii_uppercase()).collect();
    upper
        .iter()
        .find(|s| BASE_STATES.contains(&s.as_str()))
        .or(upper.first())
        .cloned()
        .unwrap_or_else(|| "UNKNOWN".to_string())
}

/// States in which a task has not ended (its exit code means nothing yet).
fn not_ended(state: &str) -> bool {
    matches!(
        state.split([' ', '+']).next().unwrap_or_default(),
        "PENDING"
            | "RUNNING"
            | "SUSPENDED"
            | "CONFIGURING"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESV_DEL_HOLD"
            | "POWER_UP_NODE"
            | "SIGNALING"
            | "STOPPED"
            | "RESIZING"
    )
}

/// Array indices Slurm's task string names (`3-9%2`, `1,3,5-7`, `0-30:10`); `true` when
/// Slurm cut it short (`...`), in which case indices past the cut are missing.
pub(crate) fn expand_task_string(s: &str) -> (Vec<u32>, bool) {
    let s = s.split('%').next().unwrap_or_default().trim();
    let truncated = s.ends_with("...");
    let s = s.trim_end_matches('.');
    let mut tokens: Vec<&str> = s
        .split(',')
        .map(|t| t.trim().trim_start_matches('[').trim_end_matches(']'))
        .filter(|t| !t.is_empty())
        .collect();
    if truncated {
        // The last token may itself be cut (`12-1` of `12-15`).
        tokens.pop();
    }
    let mut out = Vec::new();
    for token in tokens {
        let (range, step) = match token.split_once(':') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)),
            None => (token, Some(1)),
        };
        let Some(step) = step else { continue };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (range.parse::<u32>(), range.parse::<u32>()),
        };
        let (Ok(first), Ok(last)) = (first, last) else {
            continue;
        };
        // MaxArraySize is at most 4000001.
        if last < first || last > 4_000_000 {
            continue;
        }
        out.extend((first..=last).step_by(step as usize));
    }
    (out, truncated)
}

/// The arrays named `name` in a jobs listing: records grouped by `array_job_id`, a record
/// with `array_task_id` being one task, a still-collapsed pending record expanded to one task
/// per index of its `array_task_string`.
fn arrays_from_jobs(name: &str, jobs: &[RawJob]) -> Vec<ArrayJob> {
    struct Building {
        comment: String,
        tasks: BTreeMap<u32, (bool, ArrayTask)>,
    }
    let mut arrays: BTreeMap<u64, Building> = BTreeMap::new();
    for job in jobs {
        if job.name.as_deref() != Some(name) {
            continue;
        }
        let Some(array_id) = job
            .array_job_id
            .as_ref()
            .and_then(RawNum::value)
            .filter(|id| *id > 0 && *id < NO_VAL)
            .and_then(|id| u64::try_from(id).ok())
        else {
            continue;
        };
        let state = job_state(job.job_state.as_ref());
        let (exit_code, signal) = if not_ended(&state) {
            (None, None)
        } else {
            job.exit_code
                .as_ref()
                .map(RawExit::decode)
                .unwrap_or_default()
        };
        let reason = job
            .state_reason
            .clone()
            .filter(|r| !r.is_empty() && r != "None");
        let task = |index: u32| ArrayTask {
            index,
            state: state.clone(),
            exit_code,
            signal,
            reason: reason.clone(),
        };
        let building = arrays.entry(array_id).or_insert_with(|| Building {
            comment: String::new(),
            tasks: BTreeMap::new(),
        });
        if building.comment.is_empty()
            && let Some(c) = job.comment.as_deref()
        {
            building.comment = c.to_string();
        }
        let task_id = job
            .array_task_id
            .as_ref()
            .and_then(RawNum::value)
            .filter(|i| (0..NO_VAL).contains(i))
            .and_then(|i| u32::try_from(i).ok());
        if let Some(index) = task_id {
            building.tasks.insert(index, (true, task(index)));
        } else if let Some(s) = job.array_task_string.as_deref().filter(|s| !s.is_empty()) {
            let (indices, truncated) = expand_task_string(s);
            if truncated {
                warn!(
                    array = array_id,
                    tasks = s,
                    "slurmrestd cut the list of pending array tasks short; tasks past the cut are \
                     not reported (run slurmrestd with SLURM_BITSTR_LEN=0 to get the whole list)"
                );
            }
            for index in indices {
                building
                    .tasks
                    .entry(index)
                    .or_insert_with(|| (false, task(index)));
            }
        }
    }
    arrays
        .into_iter()
        .map(|(array_job_id, b)| ArrayJob {
            array_job_id,
            name: name.to_string(),
            comment: b.comment,
            tasks: b.tasks.into_values().map(|(_, t)| t).collect(),
        })
        .collect()
}

// ---- requests -----------------------------------------------------------------------------

/// A `--signal` value: `[B:]SIG[@seconds]`.
fn parse_signal(spec: &str) -> Result<(bool, String, u32)> {
    let bad = || {
        SlurmError::invalid(
            "spec.executor.slurm.checkpointGrace",
            format!("`--signal={spec}` cannot be expressed through slurmrestd"),
        )
    };
    let (batch, rest) = match spec.split_once(':') {
        Some(("B", rest)) => (true, rest),
        Some(_) => return Err(bad()),
        None => (false, spec),
    };
    let (signal, delay) = match rest.split_once('@') {
        Some((s, d)) => (s, d.parse::<u32>().map_err(|_| bad())?),
        None => (rest, 60),
    };
    if signal.is_empty() || !signal.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Ok((batch, signal.to_string(), delay))
}

/// `{set, infinite, number}` as v0.0.40+ take numbers.
fn no_val(n: u64) -> Value {
    json!({ "set": true, "infinite": false, "number": n })
}

/// A size in MB from `--tmp`'s syntax (`500`, `10G`, `2048M`).
fn megabytes(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" => 1,
        "K" | "KB" => return Some(n.div_ceil(1024)),
        "G" | "GB" => 1024,
        "T" | "TB" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// sbatch's `--mail-type` names as v0.0.40+ flags.
fn mail_flags(value: &str) -> Option<Vec<&'static str>> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in value.split(',') {
        let names: &[&'static str] = match t.trim().to_ascii_uppercase().as_str() {
            "NONE" => &[],
            "BEGIN" => &["BEGIN"],
            "END" => &["END"],
            "FAIL" => &["FAIL"],
            "REQUEUE" => &["REQUEUE"],
            "STAGE_OUT" => &["STAGE_OUT"],
            "ARRAY_TASKS" => &["ARRAY_TASKS"],
            "INVALID_DEPEND" => &["INVALID_DEPENDENCY"],
            "TIME_LIMIT" => &["TIME=100%"],
            "TIME_LIMIT_90" => &["TIME=90%"],
            "TIME_LIMIT_80" => &["TIME=80%"],
            "TIME_LIMIT_50" => &["TIME=50%"],
            "ALL" => &[
                "BEGIN",
                "END",
                "FAIL",
                "REQUEUE",
                "STAGE_OUT",
                "INVALID_DEPENDENCY",
            ],
            _ => return None,
        };
        for n in names {
            if !out.contains(n) {
                out.push(n);
            }
        }
    }
    Some(out)
}

/// The fields for the extra sbatch options, or which one the REST API cannot express.
fn extra_fields(version: ApiVersion, extra: &[String], job: &mut Map<String, Value>) -> Result<()> {
    for (i, option) in extra.iter().enumerate() {
        let field = format!("spec.executor.slurm.extraOptions[{i}]");
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option.as_str(), None),
        };
        let cannot = |why: &str| {
            SlurmError::invalid(
                field.clone(),
                format!(
                    "`{option}` cannot be sent through slurmrestd {version}{why}; use \
                     spec.executor.slurm.transport: cli, or drop it"
                ),
            )
        };
        let needs = || cannot(": it needs a value");
        if value.is_some_and(str::is_empty) {
            return Err(needs());
        }
        let modern = version.modern();
        let (key, v): (&str, Value) = match (name, value) {
            ("--exclusive", None) if modern => ("shared", json!(["none"])),
            ("--exclusive", None) => ("exclusive", json!("exclusive")),
            ("--requeue", None) => ("requeue", json!(true)),
            ("--no-requeue", None) if modern => ("requeue", json!(false)),
            ("--no-requeue", None) => ("no_requeue", json!(true)),
            ("--mail-type", Some(v)) if modern => (
                "mail_type",
                json!(mail_flags(v).ok_or_else(|| cannot(": unknown mail type"))?),
            ),
            ("--mail-type", Some(v)) => ("mail_type", json!(v)),
            ("--mail-user", Some(v)) => ("mail_user", json!(v)),
            ("--reservation", Some(v)) => ("reservation", json!(v)),
            ("--nice", Some(v)) => (
                "nice",
                json!(
                    v.parse::<i64>()
                        .map_err(|_| cannot(": --nice takes a number"))?
                ),
            ),
            ("--licenses", Some(v)) => ("licenses", json!(v)),
            ("--hint", Some(_)) if modern => {
                return Err(cannot(": v0.0.40+ has no field for --hint"));
            }
            ("--hint", Some(v)) => ("cpu_binding_hint", json!(v)),
            ("--cpu-freq", Some(v)) => ("cpu_frequency", json!(v)),
            ("--tmp", Some(v)) if modern => (
                "temporary_disk_per_node",
                json!(megabytes(v).ok_or_else(|| cannot(": --tmp takes a size like 10G"))?),
            ),
            ("--tmp", Some(v)) => ("temporary_disk_per_node", json!(v)),
            ("--nodelist", Some(v)) if modern => ("required_nodes", json!(v)),
            ("--nodelist", Some(v)) => ("nodelist", json!(v)),
            ("--exclude", Some(v)) if modern => ("excluded_nodes", json!(v)),
            ("--exclude", Some(v)) => ("exclude_nodes", json!(v)),
            ("--cluster-constraint", Some(v)) => ("cluster_constraint", json!(v)),
            (
                "--mail-type"
                | "--mail-user"
                | "--reservation"
                | "--nice"
                | "--licenses"
                | "--hint"
                | "--cpu-freq"
                | "--tmp"
                | "--nodelist"
                | "--exclude"
                | "--cluster-constraint",
                None,
            ) => return Err(needs()),
            _ => return Err(cannot("")),
        };
        job.insert(key.to_string(), v);
    }
    Ok(())
}

/// `--gres` as v0.0.40+'s `tres_per_node`: `gpu:2,mps:10` → `gres/gpu:2,gres/mps:10`.
fn tres_per_node(gres: &str) -> String {
    gres.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| {
            if let Some(rest) = g.strip_prefix("gres:") {
                format!("gres/{rest}")
            } else if g.starts_with("gres/") {
                g.to_string()
            } else {
                format!("gres/{g}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The body of `POST /slurm/<version>/job/submit` for one array.
pub(crate) fn submit_body(version: ApiVersion, a: &ArraySubmission) -> Result<Value> {
    let mut job = Map::new();
    let mut put = |k: &str, v: Value| {
        job.insert(k.to_string(), v);
    };
    put("name", json!(a.name));
    put("comment", json!(a.comment));
    put("array", json!(a.array_spec()));
    put("cpus_per_task", json!(a.cpus_per_task));
    put(
        "current_working_directory",
        json!(a.workdir.display().to_string()),
    );
    put("standard_output", json!(a.output));
    put("standard_error", json!(a.output));
    for (key, value) in [
        ("partition", &a.partition),
        ("account", &a.account),
        ("qos", &a.qos),
        ("constraints", &a.constraint),
    ] {
        if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
            put(key, json!(v));
        }
    }
    let mut environment: Vec<(String, String)> = a.environment.clone();
    if !environment.iter().any(|(k, _)| k == "PATH") {
        environment.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if version.modern() {
        put("script", json!(a.script));
        put("memory_per_node", no_val(a.memory_mb));
        put("time_limit", no_val(a.time_minutes));
        if let Some(g) = a.gres.as_deref().filter(|g| !g.is_empty()) {
            put("tres_per_node", json!(tres_per_node(g)));
        }
        let (batch, signal, delay) = parse_signal(&a.signal)?;
        put("kill_warning_signal", json!(signal));
        put("kill_warning_delay", no_val(u64::from(delay)));
        if batch {
            put("kill_warning_flags", json!(["BATCH_JOB"]));
        }
        put(
            "environment",
            Value::Array(
                environment
                    .iter()
                    .map(|(k, v)| Value::String(format!("{k}={v}")))
                    .collect(),
            ),
        );
    } else {
        put("memory_per_node", json!(a.memory_mb));
        put("time_limit", json!(a.time_minutes));
        if let Some(g) = a.gres.as_deref().filter(|g| !g.is_empty()) {
            put("gres", json!(g));
        }
        // slurmrestd 22.05 parses `--signal` as a daemon that is not sbatch, which ignores
        // `B:` and then fails on it: the signal can only go to the job's steps.
        let (_, signal, delay) = parse_signal(&a.signal)?;
        put("signal", json!(format!("{signal}@{delay}")));
        put(
            "environment",
            Value::Object(
                environment
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    extra_fields(version, &a.extra, &mut job)?;
    Ok(if version.modern() {
        json!({ "job": job })
    } else {
        json!({ "script": a.script, "job": job })
    })
}

/// One cancel request: a path under `/slurm/<version>/` and maybe a body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CancelRequest {
    pub path: String,
    pub body: Option<Value>,
}

/// The requests that cancel these tasks of an array (all of them when `indices` is empty).
pub(crate) fn cancel_requests(
    version: ApiVersion,
    array_job_id: u64,
    indices: &[u32],
) -> Vec<CancelRequest> {
    let mut indices = indices.to_vec();
    indices.sort_unstable();
    indices.dedup();
    if indices.is_empty() {
        return vec![CancelRequest {
            path: format!("job/{array_job_id}"),
            body: None,
        }];
    }
    if version.modern() {
        let jobs: Vec<String> = indices
            .iter()
            .map(|i| format!("{array_job_id}_{i}"))
            .collect();
        return vec![CancelRequest {
            path: "jobs/".into(),
            body: Some(json!({ "jobs": jobs, "signal": "KILL" })),
        }];
    }
    // One request per run of indices (`12_0-3`, `12_7`): slurmctld takes a range after the
    // `_`, but slurmrestd 22.05 refuses a `,` (or an encoded `[`) in the path.
    array_spec(&indices, None)
        .split(',')
        .map(|range| CancelRequest {
            path: format!("job/{array_job_id}_{range}"),
            body: None,
        })
        .collect()
}

/// Request bodies and answer decoding against recorded (v0.0.38, `tests/fixtures/v0.0.38/rest_*`
/// from the 22.05 test cluster) and schema-written (v0.0.40, v0.0.41) answers. The HTTP tests
/// run against a *fake* slurmrestd — a thread answering canned responses on 127.0.0.1 — used
/// only for version negotiation, headers, retries and the mapping of status codes to errors;
/// `tests/rest_live.rs` talks to the real one.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::Arc;

    use orch_core::ErrorCategory;

    use super::*;

    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl";

    fn fixture(version: &str, name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(version)
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn submission() -> ArraySubmission {
        ArraySubmission {
            name: "reviews-1a2b".into(),
            comment: "orch:work:g3:b1001:0123456789ab".into(),
            indices: vec![0, 1, 2, 3, 7, 9, 10],
            max_running: Some(4),
            script: "#!/bin/sh\nexec orch-worker run\n".into(),
            cpus_per_task: 2,
            memory_mb: 1500,
            time_minutes: 20,
            partition: Some("debug".into()),
            account: Some("orch".into()),
            qos: None,
            gres: Some("gpu:1".into()),
            constraint: Some("avx2".into()),
            output: "/shared/logs/task-b1001-%A_%a.log".into(),
            signal: "B:TERM@60".into(),
            extra: vec![],
            environment: vec![("ORCH_LOG".into(), "info".into())],
            workdir: PathBuf::from("/shared/work"),
        }
    }

    #[test]
    fn versions_parse_and_negotiation_picks_the_newest_supported() {
        assert_eq!(
            "v0.0.41".parse::<ApiVersion>().unwrap(),
            ApiVersion::V0_0_41
        );
        assert!("v0.0.39".parse::<ApiVersion>().is_err());
        let doc: OpenApiDoc =
            serde_json::from_str(&fixture("v0.0.38", "rest_openapi_v3_paths.json")).unwrap();
        let offered = offered_versions(doc.paths.keys().map(String::as_str));
        assert_eq!(offered.into_iter().collect::<Vec<_>>(), [38]);
        let doc: OpenApiDoc =
            serde_json::from_str(&fixture("v0.0.41", "openapi_v3_paths.json")).unwrap();
        let offered = offered_versions(doc.paths.keys().map(String::as_str));
        assert_eq!(offered.iter().copied().collect::<Vec<_>>(), [39, 40, 41]);
        let best = offered
            .iter()
            .rev()
            .find_map(|m| ApiVersion::from_minor(*m));
        assert_eq!(best, Some(ApiVersion::V0_0_41));
    }

    #[test]
    fn submit_body_v0_0_38() {
        let body = submit_body(ApiVersion::V0_0_38, &submission()).unwrap();
        assert_eq!(
            body,
            json!({
                "script": "#!/bin/sh\nexec orch-worker run\n",
                "job": {
                    "name": "reviews-1a2b",
                    "comment": "orch:work:g3:b1001:0123456789ab",
                    "array": "0-3,7,9-10%4",
                    "cpus_per_task": 2,
                    "current_working_directory": "/shared/work",
                    "standard_output": "/shared/logs/task-b1001-%A_%a.log",
                    "standard_error": "/shared/logs/task-b1001-%A_%a.log",
                    "partition": "debug",
                    "account": "orch",
                    "constraints": "avx2",
                    "memory_per_node": 1500,
                    "time_limit": 20,
                    "gres": "gpu:1",
                    "signal": "TERM@60",
                    "environment": {"ORCH_LOG": "info", "PATH": DEFAULT_PATH},
                }
            })
        );
    }

    #[test]
    fn submit_body_v0_0_40_and_later() {
        let mut sub = submission();
        sub.environment
            .push(("PATH".into(), "/opt/orch/bin:/usr/bin".into()));
        for version in [
            ApiVersion::V0_0_40,
            ApiVersion::V0_0_41,
            ApiVersion::V0_0_42,
        ] {
            let body = submit_body(version, &sub).unwrap();
            assert!(
                body.get("script").is_none(),
                "{version}: the script goes in job"
            );
            let job = &body["job"];
            assert_eq!(job["script"], json!("#!/bin/sh\nexec orch-worker run\n"));
            assert_eq!(job["array"], json!("0-3,7,9-10%4"));
            assert_eq!(
                job["memory_per_node"],
                json!({"set": true, "infinite": false, "number": 1500})
            );
            assert_eq!(
                job["time_limit"],
                json!({"set": true, "infinite": false, "number": 20})
            );
            assert_eq!(job["tres_per_node"], json!("gres/gpu:1"));
            assert!(job.get("gres").is_none());
            assert_eq!(job["kill_warning_signal"], json!("TERM"));
            assert_eq!(
                job["kill_warning_delay"],
                json!({"set": true, "infinite": false, "number": 60})
            );
            assert_eq!(job["kill_warning_flags"], json!(["BATCH_JOB"]));
            assert_eq!(
                job["environment"],
                json!(["ORCH_LOG=info", "PATH=/opt/orch/bin:/usr/bin"])
            );
            assert_eq!(job["constraints"], json!("avx2"));
            assert!(job.get("qos").is_none());
        }
        assert_eq!(
            tres_per_node("gpu:a100:2, mps:10,gres:shard:1"),
            "gres/gpu:a100:2,gres/mps:10,gres/shard:1"
        );
    }

    #[test]
    fn extra_options_map_to_fields_or_are_refused() {
        let mut sub = submission();
        sub.extra = vec![
            "--exclusive".into(),
            "--no-requeue".into(),
            "--mail-type=END,TIME_LIMIT_90".into(),
            "--mail-user=ops@example.invalid".into(),
            "--reservation=r1".into(),
            "--nice=10".into(),
            "--licenses=matlab:1".into(),
            "--cpu-freq=high".into(),
            "--tmp=10G".into(),
            "--nodelist=n[1-2]".into(),
            "--exclude=n3".into(),
            "--cluster-constraint=fast".into(),
        ];
        let old = submit_body(ApiVersion::V0_0_38, &sub).unwrap();
        let job = &old["job"];
        assert_eq!(job["exclusive"], json!("exclusive"));
        assert_eq!(job["no_requeue"], json!(true));
        assert_eq!(job["mail_type"], json!("END,TIME_LIMIT_90"));
        assert_eq!(job["nice"], json!(10));
        assert_eq!(job["temporary_disk_per_node"], json!("10G"));
        assert_eq!(job["nodelist"], json!("n[1-2]"));
        assert_eq!(job["exclude_nodes"], json!("n3"));
        let new = submit_body(ApiVersion::V0_0_41, &sub).unwrap();
        let job = &new["job"];
        assert_eq!(job["shared"], json!(["none"]));
        assert_eq!(job["requeue"], json!(false));
        assert_eq!(job["mail_type"], json!(["END", "TIME=90%"]));
        assert_eq!(job["mail_user"], json!("ops@example.invalid"));
        assert_eq!(job["reservation"], json!("r1"));
        assert_eq!(job["licenses"], json!("matlab:1"));
        assert_eq!(job["cpu_frequency"], json!("high"));
        assert_eq!(job["temporary_disk_per_node"], json!(10240));
        assert_eq!(job["required_nodes"], json!("n[1-2]"));
        assert_eq!(job["excluded_nodes"], json!("n3"));
        assert_eq!(job["cluster_constraint"], json!("fast"));

        sub.extra = vec!["--exclusive".into(), "--hint=nomultithread".into()];
        assert_eq!(
            submit_body(ApiVersion::V0_0_38, &sub).unwrap()["job"]["cpu_binding_hint"],
            json!("nomultithread")
        );
        match submit_body(ApiVersion::V0_0_40, &sub).unwrap_err() {
            SlurmError::Invalid { field, reason } => {
                assert_eq!(field, "spec.executor.slurm.extraOptions[1]");
                assert!(
                    reason.contains("--hint") && reason.contains("v0.0.40"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        sub.extra = vec!["--uid=0".into()];
        assert!(matches!(
            submit_body(ApiVersion::V0_0_38, &sub),
            Err(SlurmError::Invalid { .. })
        ));
        sub.extra = vec!["--mail-type=SOMETIMES".into()];
        assert!(submit_body(ApiVersion::V0_0_42, &sub).is_err());
    }

    #[test]
    fn v0_0_38_answers_recorded_from_slurm_22_05() {
        let answer: PartitionsResponse =
            serde_json::from_str(&fixture("v0.0.38", "rest_partitions.json")).unwrap();
        assert_eq!(
            partitions(&answer),
            [
                PartitionInfo {
                    name: "debug".into(),
                    max_time_minutes: Some(30),
                    default: true
                },
                PartitionInfo {
                    name: "short".into(),
                    max_time_minutes: Some(5),
                    default: false
                },
            ]
        );
        let answer: SubmitResponse =
            serde_json::from_str(&fixture("v0.0.38", "rest_job_submit.json")).unwrap();
        assert_eq!(answer.job_id.and_then(|n| n.value()), Some(31));

        let jobs: JobsResponse =
            serde_json::from_str(&fixture("v0.0.38", "rest_jobs.json")).unwrap();
        let arrays = arrays_from_jobs("reviews-1a2b", &jobs.jobs);
        assert_eq!(arrays.len(), 2);
        let done = &arrays[0];
        assert_eq!(done.array_job_id, 31);
        assert_eq!(done.comment, "orch:work:g0:b0:0123456789ab");
        let summary: Vec<(u32, &str, Option<i32>, Option<i32>)> = done
            .tasks
            .iter()
            .map(|t| (t.index, t.state.as_str(), t.exit_code, t.signal))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "COMPLETED", Some(0), None),
                (1, "FAILED", Some(1), None),
                (2, "COMPLETED", Some(0), None),
                (3, "FAILED", Some(1), None),
                (4, "COMPLETED", Some(0), None),
                (5, "FAILED", None, Some(15)),
            ]
        );
        assert_eq!(done.tasks[1].reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(done.tasks[0].reason, None);
        let mixed = &arrays[1];
        assert_eq!(mixed.array_job_id, 53);
        let summary: Vec<(u32, &str)> = mixed
            .tasks
            .iter()
            .map(|t| (t.index, t.state.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "RUNNING"),
                (1, "PENDING"),
                (2, "PENDING"),
                (3, "PENDING"),
                (7, "PENDING"),
                (9, "PENDING"),
                (10, "PENDING"),
                (11, "PENDING"),
                (12, "PENDING"),
            ]
        );
        assert!(mixed.tasks.iter().all(|t| t.exit_code.is_none()));
        assert_eq!(mixed.tasks[1].reason.as_deref(), Some("Resources"));
        assert!(arrays_from_jobs("nobody", &jobs.jobs).is_empty());
    }

    /// The recordings of `tests/slurm/README.md` (another test's arrays, same cluster).
    #[test]
    fn v0_0_38_answers_recorded_for_the_cli_and_rest_demos() {
        let summary = |a: &ArrayJob| -> Vec<(u32, String, Option<i32>, Option<i32>)> {
            a.tasks
                .iter()
                .map(|t| (t.index, t.state.clone(), t.exit_code, t.signal))
                .collect()
        };
        let s = |state: &str| state.to_string();
        let jobs: JobsResponse =
            serde_json::from_str(&fixture("v0.0.38", "jobs_array.json")).unwrap();
        let rest = arrays_from_jobs("orch-rest-demo", &jobs.jobs);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].comment, "orch run=rest-demo batch=0");
        assert_eq!(
            summary(&rest[0]),
            [
                (0, s("COMPLETED"), Some(0), None),
                (1, s("FAILED"), Some(3), None),
                (2, s("RUNNING"), None, None),
                (3, s("PENDING"), None, None),
                (4, s("PENDING"), None, None),
                (5, s("PENDING"), None, None),
            ]
        );
        // A whole pending array cancelled leaves one CANCELLED record for the rest.
        let demo = arrays_from_jobs("orch-demo", &jobs.jobs);
        assert_eq!(demo.len(), 2);
        assert_eq!(demo[0].tasks.len(), 10);
        assert!(demo[0].tasks[2..].iter().all(|t| t.state == "CANCELLED"));
        assert_eq!(demo[1].tasks.len(), 9);
        assert_eq!(demo[1].tasks[7].exit_code, Some(3));
        let canc = arrays_from_jobs("canc", &jobs.jobs);
        let indices: Vec<u32> = canc[0].tasks.iter().map(|t| t.index).collect();
        assert_eq!(indices, [0, 1, 2, 3, 5]);
        assert_eq!(canc[0].tasks[0].signal, Some(15));
        assert!(
            arrays_from_jobs("oom", &jobs.jobs).is_empty(),
            "not an array"
        );

        let jobs: JobsResponse =
            serde_json::from_str(&fixture("v0.0.38", "job_array_cancelled.json")).unwrap();
        let cli = arrays_from_jobs("orch-cli-demo", &jobs.jobs);
        assert_eq!(
            summary(&cli[0]),
            [
                (0, s("COMPLETED"), Some(0), None),
                (1, s("FAILED"), Some(3), None),
                (2, s("CANCELLED"), None, Some(15)),
                (3, s("RUNNING"), None, None),
                (4, s("RUNNING"), None, None),
                (5, s("PENDING"), None, None),
                (7, s("PENDING"), None, None),
            ],
            "task 6, cancelled while pending, is gone"
        );

        let parts: PartitionsResponse =
            serde_json::from_str(&fixture("v0.0.38", "partitions.json")).unwrap();
        assert_eq!(partitions(&parts).len(), 2);
        // Queued although slurmctld says it may wait: the job id counts.
        let queued = interpret::<SubmitResponse>(
            "submit",
            StatusCode::OK,
            fixture("v0.0.38", "job_submit_partition_time_limit.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
        assert_eq!(queued.job_id.and_then(|n| n.value()), Some(27));
        let e = interpret::<SubmitResponse>(
            "submit",
            StatusCode::BAD_REQUEST,
            fixture("v0.0.38", "job_submit_error_environment.json").as_bytes(),
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        assert!(e.to_string().contains("environment must be set"), "{e}");
        interpret::<Generic>(
            "cancel",
            StatusCode::OK,
            fixture("v0.0.38", "job_delete_response.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
    }

    #[test]
    fn v0_0_40_and_v0_0_41_answers_written_from_the_schema() {
        for version in ["v0.0.40", "v0.0.41"] {
            let answer: PartitionsResponse =
                serde_json::from_str(&fixture(version, "partitions.json")).unwrap();
            let parts = partitions(&answer);
            let summary: Vec<(&str, Option<u64>, bool)> = parts
                .iter()
                .map(|p| (p.name.as_str(), p.max_time_minutes, p.default))
                .collect();
            assert_eq!(
                summary,
                [
                    ("debug", Some(30), false),
                    ("short", Some(5), false),
                    ("long", None, false)
                ],
                "{version}"
            );
            let answer: SubmitResponse =
                serde_json::from_str(&fixture(version, "job_submit.json")).unwrap();
            assert_eq!(answer.job_id.and_then(|n| n.value()), Some(160));

            let jobs: JobsResponse = serde_json::from_str(&fixture(version, "jobs.json")).unwrap();
            assert_eq!(
                jobs.last_update.as_ref().and_then(RawNum::value),
                Some(1735725641)
            );
            let arrays = arrays_from_jobs("reviews-1a2b", &jobs.jobs);
            let ids: Vec<u64> = arrays.iter().map(|a| a.array_job_id).collect();
            assert_eq!(
                ids,
                [120, 130],
                "{version}: the non-array job is not an array"
            );
            let first: Vec<(u32, &str, Option<i32>, Option<i32>)> = arrays[0]
                .tasks
                .iter()
                .map(|t| (t.index, t.state.as_str(), t.exit_code, t.signal))
                .collect();
            assert_eq!(
                first,
                [
                    (0, "COMPLETED", Some(0), None),
                    (1, "FAILED", Some(1), None),
                    (2, "CANCELLED", None, Some(9)),
                    (3, "RUNNING", None, None),
                    (4, "PENDING", None, None),
                    (5, "PENDING", None, None),
                    (6, "PENDING", None, None),
                    (7, "PENDING", None, None),
                    (8, "PENDING", None, None),
                    (9, "PENDING", None, None),
                ],
                "{version}"
            );
            assert_eq!(
                arrays[0].tasks[4].reason.as_deref(),
                Some("JobArrayTaskLimit")
            );
            let second: Vec<(u32, &str, Option<i32>)> = arrays[1]
                .tasks
                .iter()
                .map(|t| (t.index, t.state.as_str(), t.exit_code))
                .collect();
            assert_eq!(
                second,
                [(0, "COMPLETED", Some(0)), (1, "OUT_OF_MEMORY", Some(137))]
            );

            let unchanged: JobsResponse =
                serde_json::from_str(&fixture(version, "jobs_unchanged.json")).unwrap();
            assert!(unchanged.jobs.is_empty());
            assert!(
                unchanged.warnings[0]
                    .text()
                    .to_ascii_lowercase()
                    .contains("no job changes")
            );

            let kill: KillJobsResponse =
                serde_json::from_str(&fixture(version, "kill_jobs.json")).unwrap();
            let e = kill_failures(&kill).unwrap_err().to_string();
            assert!(
                e.contains("120_5") && e.contains("2002") && !e.contains("120_0"),
                "{e}"
            );

            let refused = interpret::<SubmitResponse>(
                "submit",
                StatusCode::INTERNAL_SERVER_ERROR,
                fixture(version, "job_submit_error.json").as_bytes(),
                &REFUSED,
            )
            .unwrap_err();
            assert_eq!(refused.category(), ErrorCategory::Permanent, "{refused}");
            assert!(
                refused.to_string().contains("Invalid partition"),
                "{refused}"
            );

            let update: JobPostResponse =
                serde_json::from_str(&fixture(version, "job_update.json")).unwrap();
            assert!(
                update
                    .results
                    .iter()
                    .filter_map(RawPostResult::code)
                    .all(|c| HOLD_IGNORED.contains(&c))
            );
        }
    }

    const REFUSED: Refused<'static> = Refused {
        field: "spec.executor.slurm.tokenFile",
        user: "alice",
        url: "http://slurm:6820",
    };

    #[test]
    fn v0_0_38_error_answers() {
        let e = interpret::<SubmitResponse>(
            "submit",
            StatusCode::INTERNAL_SERVER_ERROR,
            fixture("v0.0.38", "rest_job_submit_error.json").as_bytes(),
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        assert!(
            e.to_string()
                .contains("Invalid partition name specified (Slurm error 2000)"),
            "{e}"
        );
        // A successful hold of an array: slurmrestd 22.05 adds an error without a number.
        interpret::<JobPostResponse>(
            "hold",
            StatusCode::OK,
            fixture("v0.0.38", "rest_job_update_hold.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
        interpret::<Generic>(
            "cancel",
            StatusCode::OK,
            fixture("v0.0.38", "rest_job_cancel.json").as_bytes(),
            &REFUSED,
        )
        .unwrap();
        // The controller unreachable: worth trying again.
        let down = br#"{"errors": [{"description": "Failed while looking for jobs",
            "error_number": 1800, "error": "Unable to contact slurm controller (connect failure)",
            "source": "slurm_load_jobs"}]}"#;
        let e =
            interpret::<JobsResponse>("list", StatusCode::INTERNAL_SERVER_ERROR, down, &REFUSED)
                .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        // A credential slurmctld refused.
        let auth =
            br#"{"errors": [{"error_number": 1007, "error": "Protocol authentication error"}]}"#;
        let e =
            interpret::<JobsResponse>("list", StatusCode::INTERNAL_SERVER_ERROR, auth, &REFUSED)
                .unwrap_err();
        assert!(
            matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.tokenFile"),
            "{e}"
        );
        let e = interpret::<JobsResponse>("list", StatusCode::OK, b"<html>", &REFUSED).unwrap_err();
        assert!(matches!(e, SlurmError::Decode { .. }), "{e}");
        let e = interpret::<JobsResponse>(
            "list",
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        let e = interpret::<JobsResponse>(
            "list",
            StatusCode::NOT_FOUND,
            b"Unable to find query",
            &REFUSED,
        )
        .unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
    }

    #[test]
    fn task_strings_and_wait_statuses() {
        assert_eq!(expand_task_string("3-9%2"), ((3..=9).collect(), false));
        assert_eq!(expand_task_string("1,3,5-7"), (vec![1, 3, 5, 6, 7], false));
        assert_eq!(expand_task_string("0-30:10"), (vec![0, 10, 20, 30], false));
        assert_eq!(expand_task_string("[4-5]"), (vec![4, 5], false));
        // Cut by slurmrestd at 64 characters (SLURM_BITSTR_LEN): the partial last entry is dropped.
        let (indices, truncated) =
            expand_task_string("1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31,33,35,37,39,41,...");
        assert!(truncated);
        assert_eq!(indices.last(), Some(&39));
        assert_eq!(wait_status(256), (Some(1), None));
        assert_eq!(wait_status(0), (Some(0), None));
        assert_eq!(wait_status(15), (None, Some(15)));
        assert_eq!(wait_status(0xffff_fffe), (None, None));
        assert_eq!(
            job_state(Some(&RawStates::Many(vec![
                "COMPLETING".into(),
                "COMPLETED".into()
            ]))),
            "COMPLETED"
        );
        assert_eq!(
            job_state(Some(&RawStates::One("pending".into()))),
            "PENDING"
        );
        assert_eq!(job_state(None), "UNKNOWN");
    }

    #[test]
    fn cancel_requests_per_version() {
        assert_eq!(
            cancel_requests(ApiVersion::V0_0_38, 53, &[]),
            [CancelRequest {
                path: "job/53".into(),
                body: None
            }]
        );
        let paths: Vec<String> =
            cancel_requests(ApiVersion::V0_0_38, 53, &[12, 0, 1, 2, 3, 7, 9, 10, 11, 3])
                .into_iter()
                .map(|r| r.path)
                .collect();
        assert_eq!(paths, ["job/53_0-3", "job/53_7", "job/53_9-12"]);
        assert_eq!(
            cancel_requests(ApiVersion::V0_0_41, 53, &[7, 1]),
            [CancelRequest {
                path: "jobs/".into(),
                body: Some(json!({"jobs": ["53_1", "53_7"], "signal": "KILL"}))
            }]
        );
    }

    // ---- token ----------------------------------------------------------------------------

    #[test]
    fn a_missing_token_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("jwt");
        match RestApi::new("http://127.0.0.1:9", None, TokenSource::File(missing)) {
            Err(SlurmError::Invalid { field, reason }) => {
                assert_eq!(field, "spec.executor.slurm.tokenFile");
                assert!(reason.contains("cannot read"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(
            RestApi::new("http://127.0.0.1:9", None, TokenSource::File(empty)),
            Err(SlurmError::Invalid { .. })
        ));
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        assert!(matches!(
            RestApi::new("ftp://slurm", None, TokenSource::File(token)),
            Err(SlurmError::Invalid { field, .. }) if field == "spec.executor.slurm.url"
        ));
    }

    #[test]
    fn the_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, "first-token\n").unwrap();
        let cache = TokenCache::new(TokenSource::File(path.clone())).unwrap();
        assert_eq!(cache.current().unwrap().0, "first-token");
        std::fs::write(&path, "second-token-longer\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(cache.current().unwrap().0, "second-token-longer");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(cache.current(), Err(SlurmError::Invalid { .. })));
    }

    /// A JWT-shaped token with this `exp` (not signed: only orch's expiry check reads it).
    fn jwt(exp: i64) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let payload = format!(r#"{{"exp":{exp},"iat":1,"sun":"alice"}}"#);
        let mut encoded = String::new();
        for chunk in payload.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                encoded.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{encoded}.c2ln")
    }

    #[test]
    fn an_expired_token_is_caught_before_slurmctld_sees_it() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(expired_since(&Secret(jwt(now + 3600))), None);
        assert!(expired_since(&Secret(jwt(now - 100))).is_some_and(|ago| ago >= 100));
        assert_eq!(expired_since(&Secret("not-a-jwt".into())), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, jwt(now - 100)).unwrap();
        match RestApi::new("http://slurm:6820", None, TokenSource::File(path.clone())) {
            Err(SlurmError::Invalid { field, reason }) => {
                assert_eq!(field, "spec.executor.slurm.tokenFile");
                assert!(reason.contains("expired"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Expiring while in use: transient, until a fresh token is written.
        std::fs::write(&path, jwt(now + 3600)).unwrap();
        let cache = TokenCache::new(TokenSource::File(path.clone())).unwrap();
        std::fs::write(&path, jwt(now - 5)).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        let e = cache.for_request().unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert!(!e.to_string().contains("eyJ"), "{e}");
    }

    #[test]
    fn the_token_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, TOKEN).unwrap();
        let api = RestApi::new(
            "http://slurm:6820/",
            Some("alice".into()),
            TokenSource::File(path),
        )
        .unwrap();
        let debug = format!("{api:?}");
        assert!(
            !debug.contains(TOKEN) && !debug.contains("c2VjcmV0"),
            "{debug}"
        );
        assert!(
            debug.contains("http://slurm:6820") && debug.contains("alice"),
            "{debug}"
        );
        assert_eq!(format!("{:?}", Secret(TOKEN.into())), "<redacted>");
    }

    // ---- a fake slurmrestd ----------------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

    /// A fake slurmrestd: answers at most `limit` requests with `handler`, records them.
    fn fake(limit: usize, handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(limit) {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let request = Seen {
                    method,
                    target,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let (status, answer) = handler(&request);
                log.lock().unwrap().push(request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (url, seen)
    }

    fn api(url: &str, dir: &Path) -> RestApi {
        let token = dir.join("jwt");
        std::fs::write(&token, TOKEN).unwrap();
        RestApi::new(url, Some("alice".into()), TokenSource::File(token))
            .unwrap()
            .with_retries(3, Duration::from_millis(10))
            .with_timeout(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn negotiation_reads_the_api_description_then_falls_back_to_ping() {
        let dir = tempfile::tempdir().unwrap();
        let doc = fixture("v0.0.41", "openapi_v3_paths.json");
        let (url, seen) = fake(
            8,
            Box::new(move |r| match r.target.as_str() {
                "/openapi/v3" => (200, doc.clone()),
                _ => (404, String::new()),
            }),
        );
        let rest = api(&url, dir.path());
        assert_eq!(rest.version().await.unwrap(), ApiVersion::V0_0_41);
        assert_eq!(rest.version().await.unwrap(), ApiVersion::V0_0_41);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "negotiated once");
        assert_eq!(seen[0].header("x-slurm-user-name"), Some("alice"));
        assert_eq!(seen[0].header("x-slurm-user-token"), Some(TOKEN));

        let (url, seen) = fake(
            16,
            Box::new(|r| match r.target.as_str() {
                "/slurm/v0.0.40/ping/" => (200, r#"{"pings": [], "errors": []}"#.into()),
                _ => (404, "Unable to find requested URL".into()),
            }),
        );
        let rest = api(&url, dir.path()).with_retries(1, Duration::ZERO);
        assert_eq!(rest.version().await.unwrap(), ApiVersion::V0_0_40);
        let targets: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect();
        assert_eq!(
            targets,
            [
                "/openapi/v3",
                "/openapi",
                "/slurm/v0.0.42/ping/",
                "/slurm/v0.0.41/ping/",
                "/slurm/v0.0.40/ping/"
            ]
        );
    }

    #[tokio::test]
    async fn status_codes_map_to_error_categories() {
        let dir = tempfile::tempdir().unwrap();
        // 401: the token was refused; the message names the setting, never the token.
        let (url, seen) = fake(4, Box::new(|_| (401, "Authentication failure".into())));
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
        let e = rest.arrays("j").await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(
            matches!(&e, SlurmError::Invalid { field, .. } if field == "spec.executor.slurm.tokenFile"),
            "{text}"
        );
        assert!(
            text.contains("refused the token") && !text.contains(TOKEN),
            "{text}"
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a refused token is not retried"
        );

        // 503 on a GET: retried, then transient.
        let (url, seen) = fake(8, Box::new(|_| (503, "busy".into())));
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
        let e = rest.cluster_info().await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        assert_eq!(seen.lock().unwrap().len(), 3, "three attempts");

        // 429 then success: the retry succeeds.
        let partitions = fixture("v0.0.38", "rest_partitions.json");
        let (url, seen) = fake(
            8,
            Box::new(move |_| {
                static CALLS: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                    (429, String::new())
                } else {
                    (200, partitions.clone())
                }
            }),
        );
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
        let info = rest.cluster_info().await.unwrap();
        assert_eq!(info.max_array_size, DEFAULT_MAX_ARRAY_SIZE);
        assert_eq!(info.partitions.len(), 2);
        assert_eq!(seen.lock().unwrap().len(), 2);

        // A failed submit is sent once: the executor looks the array up before trying again.
        let (url, seen) = fake(
            4,
            Box::new(|_| {
                (500, r#"{"errors": [{"error_number": 1800, "error": "Unable to contact slurm controller (connect failure)"}]}"#.into())
            }),
        );
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_41);
        let e = rest.submit(&submission()).await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Transient, "{e}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("POST", "/slurm/v0.0.41/job/submit")
        );
        let body: Value = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(body["job"]["name"], json!("reviews-1a2b"));

        // 200 with a body that is not JSON: a decode error.
        let (url, _) = fake(4, Box::new(|_| (200, "<html>".into())));
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_38);
        assert!(matches!(
            rest.arrays("j").await,
            Err(SlurmError::Decode { .. })
        ));

        // Nobody listening: unreachable (transient).
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let rest = api(&url, dir.path()).with_retries(2, Duration::from_millis(1));
        let e = rest.cluster_info().await.unwrap_err();
        assert!(matches!(e, SlurmError::Unreachable { .. }), "{e}");
        assert!(!e.to_string().contains(TOKEN));
    }

    #[tokio::test]
    async fn an_empty_answer_to_update_time_is_checked_with_a_full_listing() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = fixture("v0.0.40", "jobs.json");
        let (url, seen) = fake(
            8,
            Box::new(move |r| {
                if r.target.contains("update_time=") {
                    (
                        200,
                        r#"{"jobs": [], "last_update": {"set": true, "infinite": false, "number": 1735725700}, "errors": [], "warnings": []}"#.into(),
                    )
                } else {
                    (200, jobs.clone())
                }
            }),
        );
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_40);
        let first = rest.arrays("reviews-1a2b").await.unwrap();
        let again = rest.arrays("reviews-1a2b").await.unwrap();
        assert_eq!(first, again);
        let targets: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect();
        assert_eq!(
            targets,
            [
                "/slurm/v0.0.40/jobs/",
                "/slurm/v0.0.40/jobs/?update_time=1735725641",
                "/slurm/v0.0.40/jobs/"
            ]
        );
    }

    #[tokio::test]
    async fn requests_on_the_wire() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = fixture("v0.0.41", "jobs.json");
        let unchanged = fixture("v0.0.41", "jobs_unchanged.json");
        let submitted = fixture("v0.0.41", "job_submit.json");
        let update = fixture("v0.0.41", "job_update.json");
        let (url, seen) = fake(
            16,
            Box::new(move |r| match (r.method.as_str(), r.target.as_str()) {
                ("GET", "/slurm/v0.0.41/jobs/") => (200, jobs.clone()),
                ("GET", t) if t.starts_with("/slurm/v0.0.41/jobs/?update_time=") => {
                    (200, unchanged.clone())
                }
                ("POST", "/slurm/v0.0.41/job/submit") => (200, submitted.clone()),
                ("POST", "/slurm/v0.0.41/job/120") => (200, update.clone()),
                ("DELETE", _) => (
                    200,
                    r#"{"status": [], "errors": [], "warnings": []}"#.into(),
                ),
                _ => (404, String::new()),
            }),
        );
        let rest = api(&url, dir.path()).with_version(ApiVersion::V0_0_41);
        let first = rest.arrays("reviews-1a2b").await.unwrap();
        let again = rest.arrays("reviews-1a2b").await.unwrap();
        assert_eq!(
            first, again,
            "no change since last_update: the cached answer"
        );
        assert_eq!(first.len(), 2);
        assert_eq!(rest.submit(&submission()).await.unwrap(), 160);
        rest.hold(120).await.unwrap();
        rest.release(120).await.unwrap();
        rest.cancel(120, &[4, 5]).await.unwrap();
        rest.cancel(120, &[]).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let calls: Vec<(String, String)> = seen
            .iter()
            .map(|s| (s.method.clone(), s.target.clone()))
            .collect();
        assert_eq!(
            calls,
            [
                ("GET".into(), "/slurm/v0.0.41/jobs/".into()),
                (
                    "GET".into(),
                    "/slurm/v0.0.41/jobs/?update_time=1735725641".into()
                ),
                ("POST".into(), "/slurm/v0.0.41/job/submit".into()),
                ("POST".into(), "/slurm/v0.0.41/job/120".into()),
                ("POST".into(), "/slurm/v0.0.41/job/120".into()),
                ("DELETE".into(), "/slurm/v0.0.41/jobs/".into()),
                ("DELETE".into(), "/slurm/v0.0.41/job/120".into()),
            ]
        );
        assert_eq!(
            serde_json::from_str::<Value>(&seen[3].body).unwrap(),
            json!({"hold": true})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&seen[4].body).unwrap(),
            json!({"hold": false})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&seen[5].body).unwrap(),
            json!({"jobs": ["120_4", "120_5"], "signal": "KILL"})
        );
        assert!(
            seen.iter()
                .all(|s| s.header("x-slurm-user-token") == Some(TOKEN))
        );
    }
}
