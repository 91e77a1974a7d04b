//! The `http` builtin handler: one HTTP request per item, built from the template in
//! `spec.handler.builtin.http` (docs/job-spec.md, "Handlers").
//!
//! Why a builtin: calling a web API per record is the most common job there is, and a
//! handler process in between only adds a hop, a language runtime and a place for secrets to
//! leak. The status of the answer decides the item's fate (429 → `rate_limited` with the
//! server's `Retry-After`, 5xx and network trouble → `transient`, other 4xx → `permanent`), so
//! the worker's retries and the rate limiter see what the API meant.
//!
//! Secrets: header values read from the environment are never logged, never put in an error
//! message (an API that echoes them in an error body gets them replaced by `***`) and marked
//! sensitive for the HTTP stack; redirects are followed to the same origin only, so a header
//! never travels to another host.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use orch_core::spec::{HttpHeaderSpec, HttpMethod, HttpSpec, secret_env_var};
use orch_core::template::{Segment, Template};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::{Answer, Handler, HandlerError, ItemFailure, Outcome};

/// What a field value may keep unencoded in a URL: RFC 3986's unreserved characters. `/`, `?`,
/// `&`, `#` and `%` in an item's field are data, never URL structure.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Longest excerpt of an error answer's body in an item's error message.
const EXCERPT_CHARS: usize = 200;
/// Redirects followed (to the same origin) before giving up.
const MAX_REDIRECTS: usize = 5;
/// The longest wait a `Retry-After` is taken for; a day is already a misconfigured server.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Parts of a secret header value shorter than this are not redacted on their own (`Bearer`).
const MIN_SECRET_PART: usize = 8;

/// How to run an `http` handler.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub spec: HttpSpec,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Time limit for one request (connecting, sending, reading the answer).
    pub timeout: Duration,
}

/// The `http` builtin; see the module docs.
pub struct HttpHandler {
    client: reqwest::Client,
    method: reqwest::Method,
    url: Template,
    body: Option<Body>,
    result_pointer: Option<String>,
    /// Whether any template needs the item's fields (else the item is not even parsed).
    needs_fields: bool,
    /// Header values from the environment, and their long parts: redacted from error messages.
    secrets: Arc<[String]>,
    permits: Semaphore,
    timeout: Duration,
}

impl std::fmt::Debug for HttpHandler {
    // Headers are left out: they may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandler")
            .field("method", &self.method)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A body template, parsed once.
#[derive(Debug, Clone)]
enum Body {
    /// No placeholder anywhere below: sent as written.
    Literal(Value),
    /// `"{field}"`: the field's value, with its JSON type.
    Field(String),
    /// A string with placeholders and text: interpolated.
    Text(Template),
    Array(Vec<Body>),
    Object(Vec<(String, Body)>),
}

impl Body {
    fn parse(value: &Value) -> Result<Body, String> {
        Ok(match value {
            Value::String(text) => {
                let template = Template::parse(text)?;
                match template.sole_field() {
                    Some(field) => Body::Field(field.to_string()),
                    None if template.is_literal() => Body::Literal(value.clone()),
                    None => Body::Text(template),
                }
            }
            Value::Array(values) => {
                let parts = values
                    .iter()
                    .map(Body::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|p| matches!(p, Body::Literal(_))) {
                    Body::Literal(value.clone())
                } else {
                    Body::Array(parts)
                }
            }
            Value::Object(map) => {
                let parts = map
                    .iter()
                    .map(|(k, v)| Body::parse(v).map(|b| (k.clone(), b)))
                    .collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|(_, p)| matches!(p, Body::Literal(_))) {
                    Body::Literal(value.clone())
                } else {
                    Body::Object(parts)
                }
            }
            other => Body::Literal(other.clone()),
        })
    }

    fn has_fields(&self) -> bool {
        !matches!(self, Body::Literal(_))
    }

    fn fill(&self, fields: &Map<String, Value>) -> Result<Value, ItemFailure> {
        Ok(match self {
            Body::Literal(value) => value.clone(),
            Body::Field(name) => field(fields, name)?.clone(),
            Body::Text(template) => Value::String(fill(template, fields, |s, out| {
                out.push_str(s);
            })?),
            Body::Array(parts) => Value::Array(
                parts
                    .iter()
                    .map(|p| p.fill(fields))
                    .collect::<Result<_, _>>()?,
            ),
            Body::Object(parts) => Value::Object(
                parts
                    .iter()
                    .map(|(k, p)| p.fill(fields).map(|v| (k.clone(), v)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ItemFailure> {
    fields.get(name).ok_or_else(|| {
        ItemFailure::permanent(format!(
            "the item has no field `{name}` (used in the http request template)"
        ))
    })
}

/// The template with every placeholder replaced by its field: a string as is, anything else as
/// its JSON text; `push` writes a value (percent-encoding it, for URLs).
fn fill(
    template: &Template,
    fields: &Map<String, Value>,
    push: impl Fn(&str, &mut String),
) -> Result<String, ItemFailure> {
    let mut out = String::new();
    for segment in template.segments() {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Field(name) => match field(fields, name)? {
                Value::String(text) => push(text, &mut out),
                other => push(&other.to_string(), &mut out),
            },
        }
    }
    Ok(out)
}

impl HttpHandler {
    /// Builds the client and reads the header values from the environment. Must be called
    /// inside a Tokio runtime.
    ///
    /// Fails on a template `orch validate` would refuse, and when a header's environment
    /// variable is not set (named, its value never shown).
    pub fn start(cfg: HttpConfig) -> Result<HttpHandler, HandlerError> {
        Self::start_with_env(cfg, |name| std::env::var_os(name))
    }

    /// [`HttpHandler::start`] reading variables through `env` (tests).
    pub fn start_with_env(
        cfg: HttpConfig,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<HttpHandler, HandlerError> {
        if cfg.concurrency == 0 {
            return Err(HandlerError::ZeroConcurrency);
        }
        let spec = &cfg.spec;
        let bad = |what: String| HandlerError::HttpSpec(what);
        let url = Template::parse(&spec.url).map_err(|why| bad(format!("url: {why}")))?;
        let body = spec
            .body
            .as_ref()
            .map(Body::parse)
            .transpose()
            .map_err(|why| bad(format!("body: {why}")))?;
        if let Some(pointer) = &spec.result_pointer {
            orch_core::template::json_pointer(pointer)
                .map_err(|why| bad(format!("resultPointer: {why}")))?;
        }
        let (headers, secrets) = headers(&spec.headers, &env)?;
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| HandlerError::HttpClient(e.to_string()))?;
        let needs_fields = !url.is_literal() || body.as_ref().is_some_and(Body::has_fields);
        info!(
            method = spec.method.as_str(),
            url = %spec.url,
            headers = spec.headers.len(),
            concurrency = cfg.concurrency,
            "http handler ready"
        );
        Ok(HttpHandler {
            client,
            method: method(spec.method),
            url,
            body,
            result_pointer: spec.result_pointer.clone().filter(|p| !p.is_empty()),
            needs_fields,
            secrets: secrets.into(),
            permits: Semaphore::new(cfg.concurrency),
            timeout: cfg.timeout,
        })
    }

    async fn run(&self, item: &RawValue) -> Result<Box<RawValue>, ItemFailure> {
        let fields = if self.needs_fields {
            serde_json::from_str::<Map<String, Value>>(item.get()).map_err(|_| {
                ItemFailure::permanent(
                    "the item is not a JSON object: the http request template takes `{field}` \
                     from its top-level fields",
                )
            })?
        } else {
            Map::new()
        };
        let url = fill(&self.url, &fields, |value, out| {
            out.extend(utf8_percent_encode(value, URL_VALUE));
        })?;
        let url = reqwest::Url::parse(&url).map_err(|e| {
            ItemFailure::permanent(format!("the request URL is not valid once filled: {e}"))
        })?;
        let mut request = self.client.request(self.method.clone(), url);
        if let Some(body) = &self.body {
            let body = body.fill(&fields)?;
            let bytes = serde_json::to_vec(&body).map_err(|e| {
                ItemFailure::permanent(format!("cannot encode the request body: {e}"))
            })?;
            request = request.header(CONTENT_TYPE, "application/json").body(bytes);
        }
        let response = request.send().await.map_err(|e| self.request_failure(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.request_failure(&e))?;
        if !status.is_success() {
            let failure = status_failure(status, &self.error_excerpt(&bytes));
            debug!(
                status = status.as_u16(),
                kind = failure.kind.as_str(),
                "http request failed"
            );
            return Err(failure.with_retry_after(retry_after));
        }
        result(&bytes, self.result_pointer.as_deref())
    }

    /// A failure to get an answer at all: always worth another try.
    fn request_failure(&self, e: &reqwest::Error) -> ItemFailure {
        let what = if e.is_timeout() {
            format!("timed out after {:?}", self.timeout)
        } else if e.is_connect() {
            format!("cannot connect: {}", cause(e))
        } else if e.is_redirect() {
            // Too many redirects: the same will happen again.
            return ItemFailure::permanent(self.redact(&format!("http request: {}", cause(e))));
        } else {
            format!("http request failed: {}", cause(e))
        };
        ItemFailure::transient(self.redact(&what))
    }

    /// The excerpt of an error answer for its message: redacted first, then cut, so that a
    /// secret straddling the cut cannot leave a piece behind.
    fn error_excerpt(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        excerpt(self.redact(&text).as_bytes())
    }

    /// `text` with every secret header value (and each long part of one) replaced by `***`.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// The innermost cause of a client error: what went wrong (refused, reset, TLS), without the
/// URL reqwest's own message carries (it is the item's business, and long).
fn cause(e: &reqwest::Error) -> String {
    let mut text = None;
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text = Some(inner.to_string());
        source = inner.source();
    }
    text.unwrap_or_else(|| e.to_string())
}

fn method(method: HttpMethod) -> reqwest::Method {
    match method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    }
}

/// The request headers, and the secret values among them (to redact). Errors name the header
/// and the variable, never a value.
fn headers(
    specs: &std::collections::BTreeMap<String, HttpHeaderSpec>,
    env: &impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(HeaderMap, Vec<String>), HandlerError> {
    let mut map = HeaderMap::new();
    let mut secrets = Vec::new();
    for (name, spec) in specs {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HandlerError::HttpSpec(format!("`{name}` is not an HTTP header name")))?;
        let variable = match (&spec.value, &spec.from_env, &spec.secret_ref) {
            (Some(_), None, None) => None,
            (None, Some(var), None) => Some(var.clone()),
            (None, None, Some(secret)) => Some(secret_env_var(secret)),
            _ => {
                return Err(HandlerError::HttpSpec(format!(
                    "header `{name}`: set exactly one of `value`, `fromEnv` or `secretRef`"
                )));
            }
        };
        let value = match (&spec.value, variable) {
            (Some(literal), _) => HeaderValue::from_str(literal).map_err(|_| {
                HandlerError::HttpSpec(format!(
                    "header `{name}`: the value is not a valid header value"
                ))
            })?,
            (None, Some(variable)) => {
                let Some(raw) = env(&variable) else {
                    return Err(HandlerError::MissingEnv {
                        header: name.clone(),
                        variable,
                    });
                };
                let text = raw.into_string().map_err(|_| {
                    HandlerError::HttpSpec(format!(
                        "header `{name}`: the environment variable `{variable}` is not UTF-8"
                    ))
                })?;
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    HandlerError::HttpSpec(format!(
                        "header `{name}`: the environment variable `{variable}` holds no valid \
                         header value (a line break?)"
                    ))
                })?;
                value.set_sensitive(true);
                secret_parts(&text, &mut secrets);
                value
            }
            (None, None) => continue,
        };
        map.insert(header, value);
    }
    // Longest first, so that a whole value is redacted before any of its parts.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    Ok((map, secrets))
}

/// A secret value and its long whitespace-separated parts (`Bearer sk-…` is echoed by some APIs
/// as just `sk-…`).
fn secret_parts(value: &str, out: &mut Vec<String>) {
    if value.is_empty() {
        return;
    }
    out.push(value.to_string());
    for part in value.split_whitespace() {
        if part.len() >= MIN_SECRET_PART && part != value {
            out.push(part.to_string());
        }
    }
}

/// Redirects to the same scheme, host and port only: a header (a secret) never goes to
/// another origin, however the API redirects.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if same {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// The item failure for a non-2xx answer. `excerpt` is already redacted.
fn status_failure(status: StatusCode, excerpt: &str) -> ItemFailure {
    let message = if excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {excerpt}")
    };
    match status.as_u16() {
        429 => ItemFailure::rate_limited(message),
        // 408: the server gave up waiting for the request; another try may well succeed.
        408 | 500..=599 => ItemFailure::transient(message),
        // Other 4xx, and a redirect to another origin that was not followed.
        _ => ItemFailure::permanent(message),
    }
}

/// At most [`EXCERPT_CHARS`] characters of a body, on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut count = 0;
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
            count += 1;
        }
        for c in word.chars() {
            if count >= EXCERPT_CHARS {
                out.push('…');
                return out;
            }
            out.push(if c.is_control() { ' ' } else { c });
            count += 1;
        }
    }
    out
}

/// `Retry-After`: delta-seconds (decimals accepted: some APIs send them) or an HTTP-date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(LONGEST_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(LONGEST_RETRY_AFTER),
    )
}

/// The result of a 2xx answer: its JSON (at `pointer`), as one row (an object) or several (a
/// list of objects); anything else is wrapped as `{"value": ...}`. A body that is not JSON is
/// `{"body": "<text>"}`; an empty one is `{}`.
fn result(body: &[u8], pointer: Option<&str>) -> Result<Box<RawValue>, ItemFailure> {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        match pointer {
            None => Value::Object(Map::new()),
            Some(_) => {
                return Err(ItemFailure::permanent(
                    "the answer is empty, so resultPointer matches nothing",
                ));
            }
        }
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => value,
            Err(_) if pointer.is_none() => {
                let mut row = Map::new();
                row.insert(
                    "body".into(),
                    Value::String(String::from_utf8_lossy(body).into_owned()),
                );
                Value::Object(row)
            }
            Err(_) => {
                return Err(ItemFailure::permanent(
                    "the answer is not JSON, so resultPointer cannot apply",
                ));
            }
        }
    };
    let value = match pointer {
        None => value,
        Some(pointer) => match value.pointer(pointer) {
            Some(part) => part.clone(),
            None => {
                return Err(ItemFailure::permanent(format!(
                    "resultPointer `{pointer}` matches nothing in the answer"
                )));
            }
        },
    };
    let row = match value {
        Value::Object(_) => value,
        Value::Array(ref rows) if rows.iter().all(Value::is_object) => value,
        other => {
            let mut row = Map::new();
            row.insert("value".into(), other);
            Value::Object(row)
        }
    };
    serde_json::value::to_raw_value(&row)
        .map_err(|e| ItemFailure::permanent(format!("cannot encode the result: {e}")))
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn call(&self, item: &RawValue) -> Answer {
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::Err(ItemFailure::infrastructure("handler was shut down")).into();
        };
        match self.run(item).await {
            Ok(result) => Outcome::Ok(result).into(),
            Err(failure) => Outcome::Err(failure).into(),
        }
    }

    async fn shutdown(&self) {
        self.permits.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use orch_core::model::ErrorKind;
    use orch_core::spec::SecretKeyRef;
    use orch_testkit::limited_api::{Limit, LimitedApi};
    use serde_json::json;

    use super::*;

    fn raw(value: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    fn spec(value: Value) -> HttpSpec {
        serde_json::from_value(value).unwrap()
    }

    fn handler(spec_value: Value) -> HttpHandler {
        handler_with_env(spec_value, &[])
    }

    fn handler_with_env(spec_value: Value, vars: &[(&str, &str)]) -> HttpHandler {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HttpHandler::start_with_env(
            HttpConfig {
                spec: spec(spec_value),
                concurrency: 4,
                timeout: Duration::from_secs(5),
            },
            |name| vars.get(name).map(Into::into),
        )
        .unwrap()
    }

    async fn ok(h: &HttpHandler, item: Value) -> Value {
        match h.call(&raw(item)).await.outcome {
            Outcome::Ok(result) => serde_json::from_str(result.get()).unwrap(),
            Outcome::Err(f) => panic!("expected a result, got {f:?}"),
        }
    }

    async fn err(h: &HttpHandler, item: Value) -> ItemFailure {
        match h.call(&raw(item)).await.outcome {
            Outcome::Err(f) => f,
            Outcome::Ok(result) => panic!("expected a failure, got {}", result.get()),
        }
    }

    #[test]
    fn templates_fill_from_the_item() {
        let fields: Map<String, Value> = serde_json::from_value(json!({
            "id": 7, "name": "a b/c?d&e#f%", "ok": true, "tags": ["x"], "none": null
        }))
        .unwrap();
        let url = Template::parse("http://h/{id}/{name}?ok={ok}&t={tags}").unwrap();
        let filled = fill(&url, &fields, |v, out| {
            out.extend(utf8_percent_encode(v, URL_VALUE));
        })
        .unwrap();
        assert_eq!(
            filled,
            "http://h/7/a%20b%2Fc%3Fd%26e%23f%25?ok=true&t=%5B%22x%22%5D"
        );
        let body = Body::parse(&json!({
            "id": "{id}",
            "text": "{name}",
            "label": "item {id}: {name} {{literal}}",
            "all": ["{tags}", "{none}", 1, "plain"],
            "fixed": {"a": [1, "two"]},
        }))
        .unwrap();
        assert_eq!(
            body.fill(&fields).unwrap(),
            json!({
                "id": 7,
                "text": "a b/c?d&e#f%",
                "label": "item 7: a b/c?d&e#f% {literal}",
                "all": [["x"], null, 1, "plain"],
                "fixed": {"a": [1, "two"]},
            })
        );
        assert!(!Body::parse(&json!({"a": ["b", 1]})).unwrap().has_fields());
        let missing = body.fill(&Map::new()).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::Permanent);
        assert!(
            missing.message.contains("no field `id`"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn results_take_the_shape_of_rows() {
        let r = |body: &str, pointer: Option<&str>| -> Result<Value, ItemFailure> {
            result(body.as_bytes(), pointer).map(|raw| serde_json::from_str(raw.get()).unwrap())
        };
        assert_eq!(r(r#"{"a":1}"#, None).unwrap(), json!({"a": 1}));
        assert_eq!(
            r(r#"[{"a":1},{"a":2}]"#, None).unwrap(),
            json!([{"a": 1}, {"a": 2}])
        );
        assert_eq!(r(r#"[1,2]"#, None).unwrap(), json!({"value": [1, 2]}));
        assert_eq!(r("42", None).unwrap(), json!({"value": 42}));
        assert_eq!(r("null", None).unwrap(), json!({"value": null}));
        assert_eq!(r("hello\n", None).unwrap(), json!({"body": "hello\n"}));
        assert_eq!(r("", None).unwrap(), json!({}));
        assert_eq!(
            r(r#"{"data":[{"x":1}],"n":3}"#, Some("/data/0")).unwrap(),
            json!({"x": 1})
        );
        assert_eq!(r(r#"{"n":3}"#, Some("/n")).unwrap(), json!({"value": 3}));
        let e = r(r#"{"n":3}"#, Some("/data")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(
            e.message.contains("`/data` matches nothing"),
            "{}",
            e.message
        );
        assert_eq!(
            r("text", Some("/a")).unwrap_err().kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |code: u16| status_failure(StatusCode::from_u16(code).unwrap(), "x").kind;
        assert_eq!(kind(429), ErrorKind::RateLimited);
        for code in [500, 502, 503, 504, 408] {
            assert_eq!(kind(code), ErrorKind::Transient, "{code}");
        }
        for code in [400, 401, 403, 404, 422, 302] {
            assert_eq!(kind(code), ErrorKind::Permanent, "{code}");
        }
        assert_eq!(
            status_failure(StatusCode::NOT_FOUND, "").message,
            "HTTP 404 Not Found"
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 0.25 ", now),
            Some(Duration::from_millis(250))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        // A date in the past: no wait.
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(
            parse_retry_after("99999999", now),
            Some(LONGEST_RETRY_AFTER)
        );
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        assert_eq!(excerpt(b"  not\n found \r\n\t here "), "not found here");
        let long = "é".repeat(500);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(b"a\x07b"), "a b");
    }

    #[test]
    fn missing_header_variables_are_named_and_never_valued() {
        let cfg = HttpConfig {
            spec: spec(json!({
                "url": "http://127.0.0.1:9/",
                "headers": {"Authorization": {"secretRef": {"name": "api-creds", "key": "token"}}},
            })),
            concurrency: 1,
            timeout: Duration::from_secs(1),
        };
        let e = HttpHandler::start_with_env(cfg.clone(), |_| None).unwrap_err();
        assert!(matches!(e, HandlerError::MissingEnv { .. }));
        let text = e.to_string();
        assert!(
            text.contains("`Authorization`") && text.contains("ORCH_SECRET_API_CREDS_TOKEN"),
            "{text}"
        );
        // A value the header cannot carry is refused without showing it.
        let e = HttpHandler::start_with_env(cfg, |_| Some("sk-secret\nInjected: 1".into()))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sk-secret"), "{e}");
        assert!(e.contains("ORCH_SECRET_API_CREDS_TOKEN"), "{e}");
        assert_eq!(
            secret_env_var(&SecretKeyRef {
                name: "a".into(),
                key: "b".into()
            }),
            "ORCH_SECRET_A_B"
        );
    }

    #[tokio::test]
    async fn answers_map_to_results_and_failures() {
        let api = LimitedApi::start(Limit::unlimited()).await;
        let base = api.url();
        // 200: the echo of the request, filled from the item.
        let h = handler(json!({
            "method": "POST",
            "url": format!("{base}/items/{{id}}?q={{q}}"),
            "body": {"text": "{text}", "n": "{id}"},
        }));
        let got = ok(&h, json!({"id": 3, "q": "a&b", "text": "hi"})).await;
        assert_eq!(
            got,
            json!({"id": "3", "method": "POST", "query": "q=a%26b", "body": {"text": "hi", "n": 3}})
        );
        let missing = err(&h, json!({"id": 3, "q": "x"})).await;
        assert_eq!(missing.kind, ErrorKind::Permanent);
        assert!(missing.message.contains("`text`"), "{}", missing.message);
        let not_object = err(&h, json!([1])).await;
        assert_eq!(not_object.kind, ErrorKind::Permanent);

        // 500 → transient, honouring Retry-After; 404 → permanent with an excerpt.
        let h = handler(json!({"url": format!("{base}/status/{{code}}?retry_after=3")}));
        let f = err(&h, json!({"code": 500})).await;
        assert_eq!(f.kind, ErrorKind::Transient);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
        let f = err(&h, json!({"code": 404})).await;
        assert_eq!(f.kind, ErrorKind::Permanent);
        assert!(
            f.message
                .starts_with("HTTP 404 Not Found: status 404 Not Found you sent:"),
            "{}",
            f.message
        );
        assert!(!f.message.contains('\n'));
        assert!(f.message.chars().count() <= 230, "{}", f.message);

        // A plain-text answer.
        let h = handler(json!({"url": format!("{base}/text/{{id}}")}));
        assert_eq!(ok(&h, json!({"id": "x"})).await, json!({"body": "hello x"}));
        let stats = api.stats();
        assert_eq!(stats.rejected, 0);
        assert_eq!(stats.ids, ["3"], "the item without `text` sent no request");
    }

    #[tokio::test]
    async fn too_many_requests_is_rate_limited_with_the_servers_wait() {
        let api = LimitedApi::start(Limit {
            rate: 0.0,
            burst: 1.0,
            retry_after: Some(Duration::from_millis(2500)),
        })
        .await;
        let h = handler(json!({"url": format!("{}/items/{{id}}", api.url())}));
        assert_eq!(ok(&h, json!({"id": 1})).await["id"], "1");
        let f = err(&h, json!({"id": 2})).await;
        assert_eq!(f.kind, ErrorKind::RateLimited);
        assert_eq!(f.retry_after, Some(Duration::from_millis(2500)));
        assert!(
            f.message.starts_with("HTTP 429 Too Many Requests"),
            "{}",
            f.message
        );
        assert_eq!((api.stats().accepted, api.stats().rejected), (1, 1));
    }

    #[tokio::test]
    async fn timeouts_and_refused_connections_are_transient() {
        let api = LimitedApi::start(Limit::unlimited()).await;
        let h = HttpHandler::start_with_env(
            HttpConfig {
                spec: spec(json!({"url": format!("{}/slow/{{ms}}", api.url())})),
                concurrency: 1,
                timeout: Duration::from_millis(200),
            },
            |_| None,
        )
        .unwrap();
        let f = err(&h, json!({"ms": 2000})).await;
        assert_eq!(f.kind, ErrorKind::Transient);
        assert!(f.message.contains("timed out"), "{}", f.message);
        assert_eq!(ok(&h, json!({"ms": 1})).await["id"], "slow");

        // Nothing listens on a port just freed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let h = handler(json!({"url": format!("http://127.0.0.1:{port}/items/1")}));
        let f = err(&h, json!({})).await;
        assert_eq!(f.kind, ErrorKind::Transient, "{f:?}");
        assert!(!f.message.contains("127.0.0.1"), "no URL: {}", f.message);
    }

    #[tokio::test]
    async fn header_secrets_never_appear_in_errors() {
        let api = LimitedApi::start(Limit::unlimited()).await;
        let token = "Bearer sk-very-secret-token-123";
        let key = "k3y-from-a-secret-ref";
        let h = handler_with_env(
            json!({
                "url": format!("{}/status/{{code}}", api.url()),
                "headers": {
                    "Authorization": {"fromEnv": "API_TOKEN"},
                    "X-Api-Key": {"secretRef": {"name": "api", "key": "key"}},
                    "X-Plain": {"value": "visible"},
                },
            }),
            &[("API_TOKEN", token), ("ORCH_SECRET_API_KEY", key)],
        );
        assert!(!format!("{h:?}").contains("sk-very"));
        // The server echoes every header it got in its 401 body.
        let f = err(&h, json!({"code": 401})).await;
        assert_eq!(f.kind, ErrorKind::Permanent);
        assert!(
            f.message.contains("x-plain: visible"),
            "headers were sent: {}",
            f.message
        );
        assert!(f.message.contains("authorization: ***"), "{}", f.message);
        assert!(!f.message.contains("sk-very-secret"), "{}", f.message);
        assert!(!f.message.contains(key), "{}", f.message);
        // The token alone, without its `Bearer `, is redacted too.
        let redacted = h.redact("bad token sk-very-secret-token-123!");
        assert_eq!(redacted, "bad token ***!");
        // A secret where the excerpt is cut leaves no piece behind.
        for pad in 185..200 {
            let body = format!("{} sk-very-secret-token-123 and more", "x".repeat(pad));
            let e = h.error_excerpt(body.as_bytes());
            assert!(!e.contains("sk-"), "{pad}: {e}");
        }
    }
}
