//! The job spec: the `OrchJob` resource a user writes in YAML (docs/job-spec.md).
//!
//! The same types feed `orch validate`, `orch run` and (later) the CRD schema, so the schema is
//! derived from them with `schemars` and every rule lives in one place. Loading a file goes
//! through [`crate::load`], which resolves `extends`, checks the schema (all errors at once, with
//! field paths) and then the rules a schema cannot express.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` of every orch resource.
pub const API_VERSION: &str = "orch.dev/v1alpha1";
/// `kind` of a job file.
pub const KIND: &str = "OrchJob";

/// A job file: an `OrchJob` custom resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchJobFile {
    /// Always `orch.dev/v1alpha1`.
    pub api_version: String,
    /// Always `OrchJob`.
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
}

/// The subset of Kubernetes object metadata a job file may carry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Job name: lowercase letters, digits and `-`, at most 50 characters.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What to run, over what, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    pub input: InputSpec,
    #[serde(default)]
    pub batch: BatchSpec,
    pub handler: HandlerSpec,
    #[serde(default)]
    pub resources: ResourcesSpec,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default)]
    pub tolerance: ToleranceSpec,
    /// Throttle the handler through one or more `RateLimit`s (docs/rate-limits.md): every
    /// item takes `tokensPerItem` from each before the handler is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitRefs>,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub executor: ExecutorSpec,
    #[serde(default)]
    pub storage: StorageSpec,
    /// Alerts on the job's health (a stalled job, too many failed items, a failed task…),
    /// sent to Slack, a webhook or email, and by the operator as Kubernetes Events
    /// (docs/observability.md, "Alerts"). Absent: the built-in rules, logged only (and Events
    /// under the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
    /// Pause: no new tasks are dispatched while true.
    #[serde(default)]
    pub suspend: bool,
}

/// The input dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputSpec {
    /// `file:///abs/path`, a path relative to the job file, or `s3://bucket/key`.
    #[schemars(length(min = 1))]
    pub uri: String,
    /// Inferred from the file extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<InputFormat>,
    /// How CSV input is read (format `csv` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSpec>,
}

/// CSV dialect of the input. Each record reaches the handler as a JSON object keyed by the
/// header's column names, every value a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSpec {
    /// One character; `\t` for tabs.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// One character.
    #[serde(default = "default_quote")]
    pub quote: String,
    /// The first record names the columns; without it columns are named c0, c1, ….
    #[serde(default = "default_true")]
    pub header: bool,
}

impl Default for CsvSpec {
    fn default() -> Self {
        Self {
            delimiter: default_delimiter(),
            quote: default_quote(),
            header: true,
        }
    }
}

impl CsvSpec {
    /// The dialect for the CSV reader (validation has checked both characters).
    pub fn options(&self) -> crate::csv_input::CsvOptions {
        crate::csv_input::CsvOptions {
            delimiter: csv_byte(&self.delimiter).unwrap_or(b','),
            quote: csv_byte(&self.quote).unwrap_or(b'"'),
            has_header: self.header,
        }
    }
}

fn default_delimiter() -> String {
    ",".into()
}
fn default_quote() -> String {
    "\"".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Jsonl,
    Csv,
    Parquet,
}

/// How the input is cut into batches (one batch = one task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSpec {
    /// Items per batch; default: sized from the input, about four batches per worker of the
    /// executor (at least 64 KiB of input, at most `maxBytes` and 100,000 items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub size: Option<u64>,
    /// Upper bound of a batch's bytes, so that skewed records do not make huge batches.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Quantity,
    /// Largest record accepted; a bigger one stops partitioning with an error naming it.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: Quantity,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            size: None,
            max_bytes: default_max_bytes(),
            max_record_bytes: default_max_record_bytes(),
        }
    }
}

fn default_max_bytes() -> Quantity {
    Quantity::from("64Mi")
}
fn default_max_record_bytes() -> Quantity {
    Quantity::from("100Mi")
}

/// The function run on every item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandlerSpec {
    /// A long-lived process speaking JSON lines on stdin/stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecSpec>,
    /// A handler built into the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinSpec>,
    /// Items in flight per worker.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: u32,
    /// Time limit for one item.
    #[serde(default = "default_timeout")]
    pub timeout: Quantity,
}

impl HandlerSpec {
    /// The Secret keys the handler reads (`secretRef` headers of the `http` builtin,
    /// `valueFrom.secretKeyRef` variables of `exec`), each with the environment variable it
    /// reaches the worker as ([`secret_env_var`]); each key once.
    pub fn secret_env(&self) -> Vec<(String, SecretKeyRef)> {
        let headers = self
            .builtin
            .iter()
            .filter_map(|b| b.http.as_ref())
            .flat_map(|http| http.headers.values())
            .filter_map(|h| h.secret_ref.as_ref());
        let exec = self
            .exec
            .iter()
            .flat_map(|e| e.env.values())
            .filter_map(EnvValue::secret_key_ref);
        let mut out: Vec<(String, SecretKeyRef)> = Vec::new();
        for r in headers.chain(exec) {
            let pair = (secret_env_var(r), r.clone());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }

    /// The variables of the worker's own environment the handler reads: the names of `fromEnv`
    /// (of `exec.env` and of `http` headers) and the variables of [`Self::secret_env`]. An
    /// executor whose workers do not inherit the submitter's environment passes these on by
    /// name (Slurm). Sorted, each once.
    pub fn env_passed_from_worker(&self) -> Vec<String> {
        let headers = self
            .builtin
            .iter()
            .filter_map(|b| b.http.as_ref())
            .flat_map(|http| http.headers.values())
            .filter_map(|h| h.from_env.clone());
        let exec = self
            .exec
            .iter()
            .flat_map(|e| e.env.values())
            .filter_map(|v| v.from_env().map(str::to_string));
        let secrets = self.secret_env().into_iter().map(|(variable, _)| variable);
        let names: std::collections::BTreeSet<String> =
            headers.chain(exec).chain(secrets).collect();
        names.into_iter().collect()
    }
}

fn default_concurrency() -> u32 {
    4
}
fn default_timeout() -> Quantity {
    Quantity::from("60s")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up in `PATH` or relative to `workdir`.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Extra environment variables of the handler process: a literal string (never a secret:
    /// it is part of the job file), `{fromEnv: NAME}` (a variable of the worker's environment)
    /// or `{valueFrom: {secretKeyRef: {name, key}}}` (a key of a Kubernetes Secret, with the
    /// Kubernetes executor).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    /// Working directory, relative to the job file; default: the job file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The longest answer line the worker reads from the handler (`64Mi`, bytes); a longer one
    /// is thrown away and fails its item. Default 64Mi.
    // Absent stays absent when written back, so that existing job files keep their job ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answer_bytes: Option<Quantity>,
}

impl ExecSpec {
    /// `maxAnswerBytes` when set, else the default: 64 MiB.
    pub fn max_answer_bytes(&self) -> Result<u64, String> {
        match &self.max_answer_bytes {
            Some(q) => q.as_bytes(),
            None => Ok(DEFAULT_MAX_ANSWER_BYTES),
        }
    }
}

/// The default of `handler.exec.maxAnswerBytes`: 64 MiB.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// The value of one `exec.env` variable: a literal string, `{fromEnv: NAME}` or
/// `{valueFrom: {secretKeyRef: {name, key}}}`.
// Untagged, so that a plain string stays a literal as it always was (and serializes the same:
// job ids do not change); the CRD keeps the value as written and the rules check it, like
// `spec.rateLimit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvValue {
    /// The value itself (not for secrets: it is part of the job file).
    Literal(String),
    /// The value read, when the handler starts, from the worker's environment or a Secret.
    Ref(EnvRef),
}

impl EnvValue {
    /// The worker's variable this value is read from (`fromEnv`), if any.
    pub fn from_env(&self) -> Option<&str> {
        match self {
            EnvValue::Ref(r) => r.from_env.as_deref(),
            EnvValue::Literal(_) => None,
        }
    }

    /// The Secret key this value is read from (`valueFrom.secretKeyRef`), if any.
    pub fn secret_key_ref(&self) -> Option<&SecretKeyRef> {
        match self {
            EnvValue::Ref(r) => r.value_from.as_ref().map(|v| &v.secret_key_ref),
            EnvValue::Literal(_) => None,
        }
    }
}

impl From<&str> for EnvValue {
    fn from(value: &str) -> Self {
        EnvValue::Literal(value.to_string())
    }
}

/// Where an `exec.env` value comes from: exactly one of the fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvRef {
    /// The name of a variable of the worker's own environment holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_env: Option<String>,
    /// A key of a Kubernetes Secret (the Kubernetes shape); the Kubernetes executor only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvValueSource>,
}

/// The source of an `exec.env` value held in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvValueSource {
    /// The Secret key; the worker reads it from the variable `ORCH_SECRET_<NAME>_<KEY>` (see
    /// [`secret_env_var`]), which the operator sets by reference.
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuiltinSpec {
    pub name: BuiltinName,
    /// `sleep`: how long each item takes (default 1ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Quantity>,
    /// `http`: the request made for each item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinName {
    /// Returns every item unchanged.
    Identity,
    /// Waits `duration`, then returns the item (benchmarks).
    Sleep,
    /// One HTTP request per item, from the template in `http` (docs/job-spec.md, "Handlers").
    Http,
}

/// The request the `http` builtin makes for each item. `{field}` in `url` and in the string
/// values of `body` is replaced by the item's top-level field (`{{` and `}}` are literal
/// braces; see [`crate::template`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSpec {
    /// GET (default), POST, PUT, PATCH or DELETE.
    #[serde(default)]
    pub method: HttpMethod,
    /// `http://` or `https://` URL; `{field}` placeholders are filled percent-encoded.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Request headers by name: a literal `value`, or a secret read from the worker's
    /// environment (`fromEnv`, `secretRef`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HttpHeaderSpec>,
    /// A JSON body template (sent as `application/json`): a string that is exactly
    /// `"{field}"` becomes the field's value with its JSON type; other strings are
    /// interpolated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub body: Option<serde_json::Value>,
    /// JSON pointer (RFC 6901) to the part of the JSON answer that is the result; default the
    /// whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_pointer: Option<String>,
}

/// Any JSON value, kept as written (`x-kubernetes-preserve-unknown-fields` in the CRD).
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Any JSON value.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// Where a header's value comes from: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderSpec {
    /// The value itself (not for secrets: it is part of the job file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The name of an environment variable of the worker holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_env: Option<String>,
    /// A key of a Kubernetes Secret; the worker reads it from the environment variable
    /// `ORCH_SECRET_<NAME>_<KEY>` (see [`secret_env_var`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The environment variable that carries a Secret key (a `secretRef` header value, an
/// `exec.env` `valueFrom.secretKeyRef`) into a worker:
/// `ORCH_SECRET_<NAME>_<KEY>`, upper-cased, every character other than an ASCII letter or
/// digit replaced by `_` (`{name: openai-creds, key: api.key}` → `ORCH_SECRET_OPENAI_CREDS_API_KEY`).
/// On Kubernetes the operator sets it from the Secret; elsewhere, export it for the worker.
pub fn secret_env_var(secret: &SecretKeyRef) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("ORCH_SECRET_{}_{}", clean(&secret.name), clean(&secret.key))
}

/// Resources of one worker (mapped to Slurm or Kubernetes requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default = "default_cpus")]
    #[schemars(range(min = 1))]
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory: Quantity,
    /// Wall-time limit of one task.
    #[serde(default = "default_time")]
    pub time: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// Generic resources, as Slurm writes them (`gpu:1`, `gpu:a100:2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gres: Option<String>,
    /// Node features the task needs (Slurm `--constraint`, e.g. `avx512&ib`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            cpus: default_cpus(),
            memory: default_memory(),
            time: default_time(),
            partition: None,
            account: None,
            qos: None,
            gres: None,
            constraint: None,
        }
    }
}

fn default_cpus() -> u32 {
    1
}
fn default_memory() -> Quantity {
    Quantity::from("2Gi")
}
fn default_time() -> Quantity {
    Quantity::from("30m")
}

/// Retries of tasks (by the engine) and of items (inside the worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per task, and per item for transient item errors.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: BackoffSpec,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff: BackoffSpec::default(),
        }
    }
}

fn default_max_attempts() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(default = "default_initial")]
    pub initial: Quantity,
    #[serde(default = "default_factor")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub factor: f64,
    #[serde(default = "default_backoff_max")]
    pub max: Quantity,
    /// Spread retries randomly over 50–100 % of the delay.
    #[serde(default = "default_true")]
    pub jitter: bool,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            factor: default_factor(),
            max: default_backoff_max(),
            jitter: true,
        }
    }
}

fn default_initial() -> Quantity {
    Quantity::from("10s")
}
fn default_factor() -> f64 {
    2.0
}
fn default_backoff_max() -> Quantity {
    Quantity::from("10m")
}
fn default_true() -> bool {
    true
}

/// When a job with failed items still counts as a success.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToleranceSpec {
    /// The job fails when more than this percentage of input items failed.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_failed_items_percent: f64,
}

/// One `RateLimit` by name, or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RateLimitRefs {
    One(RateLimitRef),
    Many(Vec<RateLimitRef>),
}

impl RateLimitRefs {
    /// The references, in the order written.
    pub fn as_slice(&self) -> &[RateLimitRef] {
        match self {
            RateLimitRefs::One(one) => std::slice::from_ref(one),
            RateLimitRefs::Many(many) => many,
        }
    }
}

/// A job's use of one `RateLimit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRef {
    /// The `RateLimit`'s `metadata.name`.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Tokens every item takes before its call (post-paid `usage` comes on top).
    #[serde(default = "default_tokens_per_item")]
    #[schemars(range(min = 1))]
    pub tokens_per_item: u32,
    /// This job's weight against other jobs on the same bucket (default 1).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `kind` of a rate limit document.
pub const RATE_LIMIT_KIND: &str = "RateLimit";

/// A `RateLimit` document, as it stands beside an `OrchJob` in a job file (or as the cluster
/// object of the same shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitFile {
    /// Always `orch.dev/v1alpha1`.
    pub api_version: String,
    /// Always `RateLimit`.
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RateLimitSpec,
}

/// A token bucket that jobs share to throttle calls to an external API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Tokens added per period: a number, `/`, and `s`, `m` or `h`, e.g. `10/s`, `600/m`,
    /// `0.5/s`.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?)/(s|m|h)$"))]
    pub rate: String,
    /// Most tokens the bucket holds: how many calls may go at once after a quiet spell.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1))]
    pub burst: u32,
    /// Who shares the bucket: every job in the cluster, in the namespace, or each job alone.
    #[serde(default)]
    pub scope: RateLimitScope,
}

fn default_burst() -> u32 {
    1
}

/// Who shares a rate limit's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    Cluster,
    #[default]
    Namespace,
    Job,
}

impl RateLimitScope {
    /// The key of the bucket of limit `name` for a job `job` in `namespace`: one bucket per
    /// cluster (storage), per namespace, or per job.
    pub fn bucket_key(self, name: &str, namespace: &str, job: &str) -> String {
        match self {
            RateLimitScope::Cluster => format!("cluster/{name}"),
            RateLimitScope::Namespace => format!("ns/{namespace}/{name}"),
            RateLimitScope::Job => format!("job/{job}/{name}"),
        }
    }
}

fn default_tokens_per_item() -> u32 {
    1
}

/// Where the final files go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// A directory (relative to the job file) or `s3://bucket/prefix/`; default `out/<name>`
    /// next to the job file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
    /// Result files merged at once; more task results than this are merged level by level
    /// (resumable), so memory and open files stay bounded at any job size.
    #[serde(default = "default_fan_in")]
    #[schemars(range(min = 2, max = 10000))]
    pub fan_in: u32,
    /// Size at which a final `part-NNNNN.parquet` is closed and the next one started.
    #[serde(default = "default_target_file_size")]
    pub target_file_size: Quantity,
    /// Most rows in one row group of a final part file (a file that reaches its size target
    /// first ends its row group early).
    // Left out of the serialized spec while it has its default, so that job ids (a hash of
    // the serialized spec) of existing job files do not change with this field's arrival.
    #[serde(
        default = "default_row_group_rows",
        skip_serializing_if = "is_default_row_group_rows"
    )]
    #[schemars(range(min = 1000), extend("default" = 1_000_000))]
    pub row_group_rows: u64,
    /// The output columns, in order (after `_item`). Absent: inferred from the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub schema: Option<Vec<OutputColumn>>,
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            uri: None,
            formats: default_formats(),
            fan_in: default_fan_in(),
            target_file_size: default_target_file_size(),
            row_group_rows: default_row_group_rows(),
            schema: None,
        }
    }
}

/// Default of `output.rowGroupRows`; the same as the data layer's default row group.
pub const DEFAULT_ROW_GROUP_ROWS: u64 = 1_000_000;
/// Smallest `output.rowGroupRows`: tinier row groups make files slow to scan and footers big.
pub const MIN_ROW_GROUP_ROWS: u64 = 1_000;

fn default_row_group_rows() -> u64 {
    DEFAULT_ROW_GROUP_ROWS
}
fn is_default_row_group_rows(n: &u64) -> bool {
    *n == DEFAULT_ROW_GROUP_ROWS
}

/// One declared output column (`spec.output.schema[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputColumn {
    /// The result field this column holds; not empty, unique, not starting with `_`.
    pub name: String,
    #[serde(rename = "type")]
    pub r#type: ColumnType,
    /// When false, an item whose result lacks the field (or has `null`) fails with kind
    /// `schema`.
    #[serde(default = "default_true")]
    pub nullable: bool,
}

/// Type of a declared output column: `string` (numbers and booleans are stored as their JSON
/// text), `int64` (floats without a fraction and integer strings convert), `float64` (integers
/// and numeric strings convert), `bool` (also the strings "true" and "false") or `json` (any
/// value, stored as its compact JSON text: for nested values).
// The variants carry no doc comments of their own: with them schemars writes a `oneOf` of
// constants, whose validation message is far less helpful than an `enum`'s "must be one of".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Bool,
    Json,
}

impl ColumnType {
    /// The name used in job files and in `_SUCCESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Json => "json",
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_fan_in() -> u32 {
    64
}
fn default_target_file_size() -> Quantity {
    Quantity::from("128Mi")
}

fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat::Parquet]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Parquet,
    Sqlite,
    Jsonl,
    Csv,
}

/// Where workers run. Exactly one of the fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalExecutorSpec>,
    /// Slurm job arrays (docs/slurm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmExecutorSpec>,
    /// Kubernetes Indexed Jobs, started by the operator (docs/kubernetes-executor.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesExecutorSpec>,
}

/// Array tasks a Slurm executor is assumed to run at once when `maxRunning` does not say: the
/// cluster's free room is not known when the job is planned.
pub const SLURM_ASSUMED_PARALLELISM: u32 = 64;

impl ExecutorSpec {
    /// Tasks the chosen executor runs at once, as far as the spec tells: what unsized batches
    /// are shared out over.
    pub fn parallelism(&self) -> u32 {
        if let Some(kubernetes) = &self.kubernetes {
            kubernetes.parallelism
        } else if let Some(slurm) = &self.slurm {
            slurm.max_running.unwrap_or(SLURM_ASSUMED_PARALLELISM)
        } else {
            self.local
                .clone()
                .unwrap_or_default()
                .effective_parallelism()
        }
    }
}

impl Default for ExecutorSpec {
    fn default() -> Self {
        Self {
            local: Some(LocalExecutorSpec::default()),
            slurm: None,
            kubernetes: None,
        }
    }
}

/// How orch reaches Slurm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SlurmTransport {
    /// The Slurm commands (`sbatch`, `squeue`, `sacct`, `scancel`, `scontrol`) on this host: a
    /// login node.
    #[default]
    Cli,
    /// The Slurm REST API (slurmrestd) with a JWT: an operator outside the cluster.
    Rest,
}

/// Tasks as Slurm job arrays (docs/slurm.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlurmExecutorSpec {
    /// How orch reaches Slurm; default: `rest` when a `url` is given (or the operator supplies
    /// its own), else `cli`. An explicit value is never changed by whoever runs the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<SlurmTransport>,
    /// slurmrestd's base URL (`rest`), e.g. `https://slurm-head:6820`; plain `http://` only to
    /// a loopback address, where allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the JWT for `rest` (reread when it changes); default: the `SLURM_JWT`
    /// variable. Never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// The user REST calls act as (`X-SLURM-USER-NAME`); default: `$USER`, else `$LOGNAME`
    /// where orch runs (none set: an error, never `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Array tasks of one array running at once (`--array=…%N`); default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_running: Option<u32>,
    /// Further sbatch options, from an allow-list (docs/slurm.md), e.g. `--exclusive`,
    /// `--mail-type=END`, `--reservation=r1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_options: Vec<String>,
    /// The worker program as the compute nodes see it; default: the `orch-worker` next to
    /// `orch` (a shared filesystem is assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Directory for each array task's log on the shared filesystem; default:
    /// `.orch/logs/<job>` under the directory `orch run` was started in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    /// How long before its time limit a task is sent SIGTERM to checkpoint (`--signal`).
    #[serde(default = "default_grace")]
    pub checkpoint_grace: Quantity,
}

fn default_grace() -> Quantity {
    Quantity::from("60s")
}

impl SlurmExecutorSpec {
    /// The transport this spec runs on: the one written, else `rest` when there is a URL to
    /// reach, else the commands on this host.
    pub fn effective_transport(&self) -> SlurmTransport {
        self.transport.unwrap_or(if self.url.is_some() {
            SlurmTransport::Rest
        } else {
            SlurmTransport::Cli
        })
    }
}

impl Default for SlurmExecutorSpec {
    fn default() -> Self {
        SlurmExecutorSpec {
            transport: None,
            url: None,
            token_file: None,
            user: None,
            max_running: None,
            extra_options: Vec::new(),
            worker: None,
            log_dir: None,
            checkpoint_grace: default_grace(),
        }
    }
}

/// Tasks as Kubernetes Indexed Jobs started by the operator, one Job per task group (per run
/// of consecutive task ids in it; docs/kubernetes-executor.md). Each pod gets the resources of
/// `spec.resources`: `cpus` and `memory` as requests and limits, `gres: gpu:N` as
/// `nvidia.com/gpu`, `time` as the pod's deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesExecutorSpec {
    /// Container image of the worker pods; default: the operator's worker image
    /// (`ORCH_WORKER_IMAGE`). It must hold `orch-worker` and whatever the handler runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pods of one Kubernetes Job (one task group) running at once.
    #[serde(default = "default_kubernetes_parallelism")]
    #[schemars(range(min = 1, max = 100000))]
    pub parallelism: u32,
    /// Service account of the worker pods, e.g. one bound to a cloud role that may read and
    /// write the job's storage; default: the namespace's `default` account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// When the node pulls the image; default: Kubernetes' own (`Always` for `:latest`, else
    /// `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Node labels a worker pod's node must carry (the pod's `nodeSelector`), e.g. a node pool
    /// or a GPU model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Longest time one Kubernetes Job (a task group, all its pods) may stay active; its tasks
    /// still running or waiting then fail as past their time limit and are retried. Default:
    /// no limit (each task still has `spec.resources.time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline: Option<Quantity>,
    /// Secrets (in the job's namespace) whose keys become environment variables of the worker
    /// (`envFrom`), e.g. AWS credentials where pods have no cloud role. Secrets are named, never
    /// copied: their values appear in no job spec, status or log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from_secrets: Vec<String>,
}

fn default_kubernetes_parallelism() -> u32 {
    10
}

impl Default for KubernetesExecutorSpec {
    fn default() -> Self {
        KubernetesExecutorSpec {
            image: None,
            parallelism: default_kubernetes_parallelism(),
            service_account_name: None,
            image_pull_policy: None,
            node_selector: BTreeMap::new(),
            active_deadline: None,
            env_from_secrets: Vec::new(),
        }
    }
}

impl KubernetesExecutorSpec {
    /// GPUs per pod from `spec.resources.gres`: `gpu:N` (or `gpu`, one) becomes `N`
    /// `nvidia.com/gpu`. Other generic resources, and typed GPUs (`gpu:a100:2`, whose model
    /// Kubernetes selects by node label: `nodeSelector`), are refused.
    pub fn gpus(resources: &ResourcesSpec) -> Result<Option<u32>, String> {
        let Some(gres) = resources.gres.as_deref() else {
            return Ok(None);
        };
        let mut parts = gres.trim().split(':');
        let count = match (parts.next(), parts.next(), parts.next()) {
            (Some("gpu"), None, None) => Some(1),
            (Some("gpu"), Some(n), None) => n.parse::<u32>().ok().filter(|n| *n > 0),
            (Some("gpu"), Some(_), Some(_)) => {
                return Err(format!(
                    "`{gres}`: Kubernetes has no GPU types in requests; write `gpu:N` and pick the model with spec.executor.kubernetes.nodeSelector"
                ));
            }
            _ => None,
        };
        count.map(Some).ok_or_else(|| {
            format!("`{gres}`: the Kubernetes executor knows GPUs only, as `gpu:N` (N ≥ 1)")
        })
    }
}

/// When a node pulls a container image (Kubernetes' `imagePullPolicy`).
// No doc comments on the variants: schemars would write a `oneOf` instead of an `enum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalExecutorSpec {
    /// Worker processes at once; default: the number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: Option<u32>,
}

impl LocalExecutorSpec {
    /// `parallelism`, else the CPUs this process may use.
    pub fn effective_parallelism(&self) -> u32 {
        self.parallelism.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Manifests, batches, results and checkpoints; default `./.orch/` (standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// `spec.alerts`: which rules watch the job and where their notices go (docs/observability.md,
/// "Alerts"). Every rule has a built-in default; a rule written here overrides it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertsSpec {
    /// Where notices go, each to every channel: `slack`, `webhook` or `email` (one per entry),
    /// at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub channels: Vec<AlertChannelSpec>,
    /// The rules, each tuned or turned off here; absent ones keep their defaults.
    #[serde(default, skip_serializing_if = "AlertRulesSpec::is_empty")]
    pub rules: AlertRulesSpec,
    /// Most notifications sent for the job per period (default 20 per hour); more are dropped
    /// and counted in the next one sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<AlertThrottleSpec>,
}

/// One place notices go: exactly one of the fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertChannelSpec {
    /// A Slack incoming webhook (or any service taking Slack's `{"text": …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<WebhookChannelSpec>,
    /// Any HTTP endpoint: each notice is POSTed as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookChannelSpec>,
    /// Email through an SMTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailChannelSpec>,
}

/// A webhook channel. Its URL is a credential (Slack's carries the token), so the job file
/// names where it is held, never the URL itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookChannelSpec {
    /// Where the `http://` or `https://` URL is held.
    pub url: SecretValueSpec,
}

/// An email channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailChannelSpec {
    /// The sender, e.g. `orch@example.com` or `orch <orch@example.com>`.
    #[schemars(length(min = 1))]
    pub from: String,
    /// The recipients.
    #[schemars(length(min = 1))]
    pub to: Vec<String>,
    pub smtp: SmtpSpec,
}

/// The SMTP server an email channel sends through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpSpec {
    /// Host name or address.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Default: 465 with `tls`, 587 with `starttls`, 25 with `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (TLS from the first byte) or `none` (plain text: a relay
    /// on the same host or network, never with a password).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// The user to log in as; without one, no login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Where the password is held (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretValueSpec>,
}

/// How the SMTP connection is secured.
// No doc comments on the variants: schemars would write a `oneOf` instead of an `enum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    #[default]
    Starttls,
    Tls,
    None,
}

/// Where a secret value (a webhook URL, a password) is held: exactly one of the fields. The
/// value itself never appears in a job file, a status, an Event or a log line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretValueSpec {
    /// A variable of the environment of whoever drives the job (`orch run`); not under the
    /// operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file holding the value (surrounding whitespace is dropped); not under the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A key of a Kubernetes Secret of the job's namespace, read by the operator (the policy
    /// must list the Secret); `orch run` reads it from the variable
    /// `ORCH_SECRET_<NAME>_<KEY>`, as workers do (see [`secret_env_var`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

impl SecretValueSpec {
    /// Where the value is held, for messages: `env FOO`, `file /x`, `Secret a/b` (never the
    /// value).
    pub fn describe(&self) -> String {
        match (&self.env, &self.file, &self.secret_key_ref) {
            (Some(name), _, _) => format!("env {name}"),
            (_, Some(path), _) => format!("file {path}"),
            (_, _, Some(r)) => format!("Secret {}/{}", r.name, r.key),
            _ => "nothing".into(),
        }
    }
}

/// The rules of `spec.alerts.rules`; each absent one keeps its default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertRulesSpec {
    /// No item finished for `after` (default on, 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<StalledRuleSpec>,
    /// More than `percent` of the finished items failed, once `minItems` finished (default
    /// on, 10 % of at least 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateRuleSpec>,
    /// A task failed its last attempt (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_failed: Option<RuleToggleSpec>,
    /// Items spent more than `percent` of their time waiting for rate-limit tokens over
    /// `window` (default off; 90 % over 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_saturated: Option<RateLimitSaturatedRuleSpec>,
    /// Work will not be tried again on its own: failed tasks or failed items (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<RuleToggleSpec>,
    /// A task was stopped by its memory or time limit (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_hit: Option<RuleToggleSpec>,
    /// The job ended, however it ended (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<RuleToggleSpec>,
}

impl AlertRulesSpec {
    pub fn is_empty(&self) -> bool {
        *self == AlertRulesSpec::default()
    }
}

/// A rule with no parameters: on or off.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleToggleSpec {
    /// Default: the rule's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StalledRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long without an item finishing (or a task ending) makes the job stalled; default
    /// 15m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Quantity>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorRateRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failed items as a percentage of finished items above which the rule fires; default
    /// 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Finished items needed before the rate counts; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_items: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSaturatedRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Share of the items' time spent waiting for tokens above which the rule fires, in
    /// percent; default 90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// The period the share is measured over; default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Quantity>,
}

/// A cap on the notifications of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertThrottleSpec {
    /// Most notifications per period.
    #[schemars(range(min = 1, max = 10000))]
    pub max: u32,
    /// The period; default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Quantity>,
}

/// A duration (`30s`) or size (`64Mi`) written as a string, or a plain integer (seconds or
/// bytes), like Kubernetes' int-or-string quantities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Int(u64),
    Text(String),
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity::Text(s.to_string())
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantity::Int(n) => write!(f, "{n}"),
            Quantity::Text(s) => f.write_str(s),
        }
    }
}

impl Quantity {
    pub fn as_duration(&self) -> Result<std::time::Duration, String> {
        match self {
            Quantity::Int(n) => Ok(std::time::Duration::from_secs(*n)),
            Quantity::Text(s) => crate::quantity::parse_duration(s),
        }
    }

    pub fn as_bytes(&self) -> Result<u64, String> {
        match self {
            Quantity::Int(n) => Ok(*n),
            Quantity::Text(s) => crate::quantity::parse_bytes(s),
        }
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration such as 30s or 10m, or a size such as 64Mi; a plain integer means seconds or bytes.",
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
            "x-kubernetes-int-or-string": true
        })
    }
}

/// The byte of a one-character CSV setting (`,`, `;`, `\t`, …), if it is one.
pub fn csv_byte(text: &str) -> Option<u8> {
    match text {
        "\\t" | "\t" => Some(b'\t'),
        t if t.len() == 1 && t.is_ascii() => t.bytes().next(),
        _ => None,
    }
}

/// The JSON schema of a job file, as used by `orch validate` and the CRD.
pub fn job_file_schema() -> serde_json::Value {
    serde_json::Value::from(schemars::schema_for!(OrchJobFile))
}
