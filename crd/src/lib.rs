//! `orch-crd`: orch's custom resources — `OrchJob`, `TaskGroup` and `RateLimit` (group
//! `orch.dev`, version `v1alpha1`) — their CRDs, and the annotations through which the CLI
//! steers the operator. Both `orch` (cluster mode) and `orch-operator` use this crate; neither
//! links the other. The `crdgen` binary prints the CRDs; `crds/` holds them, checked by a golden
//! test.
//!
//! An `OrchJob`'s spec IS core's [`JobSpec`], so `kubectl apply -f job.yaml` and
//! `orch validate job.yaml` accept the same documents. Statuses hold counts, never per-task
//! lists, so they stay a few KB at any job size. See docs/operator.md.

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use orch_core::spec::JobSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every orch resource.
pub const GROUP: &str = "orch.dev";
/// API version of every orch resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every orch resource.
pub const API_VERSION: &str = "orch.dev/v1alpha1";

/// Annotation that asks the operator to run a job's failed tasks again (`orch retry`). Each new
/// value is one request; the operator records the value it handled in `status.retried`.
pub const RETRY_ANNOTATION: &str = "orch.dev/retry";
/// Annotation read with a new [`RETRY_ANNOTATION`] value: the request runs again only failed
/// items (`orch retry --items`) — `"*"` for all of them, or a comma-separated list of error
/// kinds (`transient,rate_limited`). Without it, failed tasks run again whole.
pub const RETRY_ITEMS_ANNOTATION: &str = "orch.dev/retry-items";
/// The value of [`RETRY_ITEMS_ANNOTATION`] that selects every failed item.
pub const RETRY_ALL_ITEMS: &str = "*";
/// Annotation that cancels a job (`orch cancel`): value `"true"`. Running tasks are stopped,
/// nothing new starts, the job ends `Failed` with reason `Cancelled`; the object stays.
pub const CANCEL_ANNOTATION: &str = "orch.dev/cancel";
/// Annotation that makes deleting the `OrchJob` also delete the job's artifacts (manifests,
/// batches, results and state rows; never the final output): value `"true"` (`orch purge`).
pub const PURGE_ANNOTATION: &str = "orch.dev/purge-on-delete";
/// Finalizer the operator puts on every `OrchJob`: deleting one cancels its executor tasks
/// (and purges, with [`PURGE_ANNOTATION`]) before the object goes.
pub const FINALIZER: &str = "orch.dev/cleanup";

/// What to run, over what, and how: the job spec of `orch run` (core's `JobSpec`).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "orch.dev",
    version = "v1alpha1",
    kind = "OrchJob",
    doc = "A batch job: an input dataset, a handler, and how to run it.",
    namespaced,
    shortname = "oj",
    category = "orch",
    status = "OrchJobStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Pending, Running, Suspended, Succeeded or Failed."}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.tasks.succeeded","description":"Tasks succeeded."}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.tasks.total","description":"Tasks in the job."}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.items.failed","description":"Items failed for good."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct OrchJobSpec(pub JobSpec);

impl From<JobSpec> for OrchJobSpec {
    fn from(spec: JobSpec) -> Self {
        OrchJobSpec(spec)
    }
}

impl std::ops::Deref for OrchJobSpec {
    type Target = JobSpec;
    fn deref(&self) -> &JobSpec {
        &self.0
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    #[default]
    Pending,
    Running,
    Suspended,
    Succeeded,
    Failed,
}

/// Observed state of an `OrchJob`: counts only, a few KB at any job size.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrchJobStatus {
    /// Pending, Running, Suspended, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Progressing, Suspended, Complete and Failed, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<JobCondition>,
    /// Tasks (batches) per state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskCounts>,
    /// Input items by outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,
    /// Attempts of the tasks: how often work ran again. `orch status JOB --task N` shows one
    /// task's attempts with why each ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<AttemptCounts>,
    /// When the first task was dispatched (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub start_time: Option<String>,
    /// When the job succeeded or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub completion_time: Option<String>,
    /// Where the final output files are, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The engine's id of the job in the state store (name plus a hash of the object's uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The last value of the `orch.dev/retry` annotation the operator acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried: Option<String>,
}

/// One condition of a job, in the usual Kubernetes shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCondition {
    /// Progressing, Suspended, Complete or Failed.
    #[serde(rename = "type")]
    pub r#type: JobConditionType,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase reason for the last transition, for machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence about the last transition, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Type of a job condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JobConditionType {
    Progressing,
    Suspended,
    Complete,
    Failed,
}

/// Status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Tasks per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCounts {
    /// All tasks.
    #[serde(default)]
    pub total: u32,
    /// Not dispatched yet.
    #[serde(default)]
    pub pending: u32,
    /// Handed to the executor, not running yet.
    #[serde(default)]
    pub dispatched: u32,
    /// Running now.
    #[serde(default)]
    pub running: u32,
    /// Failed an attempt, waiting for the next one.
    #[serde(default)]
    pub retrying: u32,
    /// Finished with their results committed.
    #[serde(default)]
    pub succeeded: u32,
    /// Failed for good (out of attempts).
    #[serde(default)]
    pub failed: u32,
    /// Stopped by a cancel.
    #[serde(default)]
    pub cancelled: u32,
}

/// Input items by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemCounts {
    /// Items in the input.
    #[serde(default)]
    pub total: u64,
    /// Items the handler processed successfully.
    #[serde(default)]
    pub ok: u64,
    /// Items that failed for good.
    #[serde(default)]
    pub failed: u64,
    /// Items that failed and will be tried again.
    #[serde(default)]
    pub retrying: u64,
}

/// Attempts of a job's tasks (every run of a task is an attempt), from the task rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptCounts {
    /// Attempts started, all tasks together.
    #[serde(default)]
    pub total: u32,
    /// Attempts after a task's first: retries after a failure, and runs again after a
    /// preemption, a requeue or an eviction.
    #[serde(default)]
    pub again: u32,
    /// Of those, the runs again that cost none of `retry.maxAttempts` (preemption, requeue,
    /// eviction).
    #[serde(default)]
    pub not_counted: u32,
}

/// A group of a job's tasks handed to one executor submission (a Slurm array, an Indexed Job).
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "orch.dev",
    version = "v1alpha1",
    kind = "TaskGroup",
    doc = "A group of a job's tasks submitted to the executor together.",
    namespaced,
    shortname = "tg",
    category = "orch",
    status = "TaskGroupStatus",
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".spec.job","description":"The OrchJob."}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind","description":"work, merge or final."}"#,
    printcolumn = r#"{"name":"Tasks","type":"integer","jsonPath":".spec.tasks","description":"Tasks in the group."}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.tasks.succeeded","description":"Tasks succeeded."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.kind == 'merge' || !has(self.level)").message("level is set only for kind merge"))]
#[x_kube(validation = Rule::new("!(has(self.executorIds) && has(self.executorRange))").message("give executorIds or executorRange, not both"))]
pub struct TaskGroupSpec {
    /// Name of the `OrchJob` (same namespace) the tasks belong to.
    #[schemars(length(min = 1, max = 253))]
    pub job: String,
    /// The group's id within the job, e.g. `work-0`, `merge-1-3`, `final`.
    #[schemars(length(min = 1, max = 63))]
    pub group: String,
    /// What the tasks do: process input batches, merge result files, or write the final output.
    pub kind: TaskGroupKind,
    /// Merge level (kind `merge` only): 1 merges task results, 2 merges level-1 outputs, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub level: Option<u32>,
    /// Tasks in the group.
    #[schemars(range(min = 1))]
    pub tasks: u32,
    /// The executor's ids of the tasks (Slurm job ids, pod names), when listed one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_ids: Option<Vec<String>>,
    /// The executor's ids of the tasks as a prefix and an index range (a Slurm array
    /// `1234_0`…`1234_99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_range: Option<ExecutorRange>,
}

/// What a task group's tasks do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskGroupKind {
    Work,
    Merge,
    Final,
}

/// Executor ids `<prefix><first>` … `<prefix><last>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.first <= self.last").message("first must not exceed last"))]
pub struct ExecutorRange {
    /// Common prefix of the ids, e.g. `1234_` for a Slurm array.
    pub prefix: String,
    /// First index.
    pub first: u32,
    /// Last index (inclusive).
    pub last: u32,
}

/// Observed state of a `TaskGroup`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskGroupStatus {
    /// The group's tasks per state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskCounts>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A token bucket that jobs share to throttle calls to an external API.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "orch.dev",
    version = "v1alpha1",
    kind = "RateLimit",
    doc = "A token bucket shared by jobs that call the same external API.",
    namespaced,
    shortname = "rl",
    category = "orch",
    status = "RateLimitStatus",
    printcolumn = r#"{"name":"Rate","type":"string","jsonPath":".spec.rate"}"#,
    printcolumn = r#"{"name":"Burst","type":"integer","jsonPath":".spec.burst"}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope"}"#,
    printcolumn = r#"{"name":"Effective","type":"number","jsonPath":".status.effectiveRate","description":"Tokens per second shared now."}"#,
    printcolumn = r#"{"name":"Usage","type":"number","jsonPath":".status.usage","description":"Tokens per second taken lately."}"#,
    printcolumn = r#"{"name":"Throttled","type":"boolean","jsonPath":".status.throttled"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct RateLimitSpec(pub orch_core::spec::RateLimitSpec);

impl std::ops::Deref for RateLimitSpec {
    type Target = orch_core::spec::RateLimitSpec;
    fn deref(&self) -> &orch_core::spec::RateLimitSpec {
        &self.0
    }
}

pub use orch_core::spec::RateLimitScope;

/// Observed state of a `RateLimit`: its bucket as the workers leave it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStatus {
    /// Tokens taken per second since the previous status (as reported by the workers when
    /// they renew their leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<f64>,
    /// Whether workers waited for tokens in the last minute.
    #[serde(default)]
    pub throttled: bool,
    /// The rate shared now, tokens per second: the spec rate, or less while the API pushes
    /// back (it recovers step by step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_rate: Option<f64>,
    /// Jobs holding a share of the bucket now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Tokens taken in all, as of `sampledAt`: where the next `usage` is computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_tokens: Option<u64>,
    /// When `usedTokens` was read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub sampled_at: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The cluster admin's policy for the jobs of some namespaces: where they keep their data, how
/// they reach Slurm and as whom, what they may ask of it and of Kubernetes, and their limits.
/// Cluster-scoped, so only a cluster admin writes it; a namespace no policy names runs no job
/// (docs/security.md).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "orch.dev",
    version = "v1alpha1",
    kind = "OrchPolicy",
    doc = "What the jobs of some namespaces may do, and what the cluster admin chooses for them.",
    shortname = "opol",
    category = "orch",
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces","description":"The namespaces governed."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct OrchPolicySpec(pub orch_core::policy::PolicySpec);

impl std::ops::Deref for OrchPolicySpec {
    type Target = orch_core::policy::PolicySpec;
    fn deref(&self) -> &orch_core::policy::PolicySpec {
        &self.0
    }
}

/// What the API server itself refuses in an `OrchJob` (CEL rules of its CRD), whatever the
/// namespace's policy: the choices that belong to the cluster admin. The operator checks the
/// same (`orch_core::policy::govern`) for servers that do not run CEL.
pub const ORCHJOB_SPEC_RULES: &[(&str, &str, &str)] = &[
    (
        "!has(self.storage) || !has(self.storage.uri)",
        "the job storage is chosen by the cluster admin (OrchPolicy); leave storage.uri out",
        ".storage.uri",
    ),
    (
        "!has(self.executor) || !has(self.executor.local)",
        "executor.local would run workers inside the operator; use executor.slurm or executor.kubernetes",
        ".executor",
    ),
    (
        "!has(self.executor) || !has(self.executor.slurm) || (!has(self.executor.slurm.url) && !has(self.executor.slurm.tokenFile) && !has(self.executor.slurm.user) && !has(self.executor.slurm.worker) && !has(self.executor.slurm.logDir))",
        "executor.slurm url, tokenFile, user, worker and logDir are chosen by the cluster admin (OrchPolicy); leave them out",
        ".executor.slurm",
    ),
    (
        "self.input.uri.startsWith('s3://')",
        "input.uri: only s3:// URIs (the operator reads no file of its own host)",
        ".input.uri",
    ),
    (
        "!has(self.output) || !has(self.output.uri) || self.output.uri.startsWith('s3://')",
        "output.uri: only s3:// URIs",
        ".output.uri",
    ),
    (
        "!has(self.alerts) || !has(self.alerts.channels) || self.alerts.channels.all(c, \
         (!has(c.slack) || has(c.slack.url.secretKeyRef)) && \
         (!has(c.webhook) || has(c.webhook.url.secretKeyRef)) && \
         (!has(c.email) || !has(c.email.smtp.password) || has(c.email.smtp.password.secretKeyRef)))",
        "alerts.channels: secrets only by secretKeyRef (a Secret of the namespace); env and file would be read from the operator's own environment and host",
        ".alerts.channels",
    ),
];

/// A CustomResourceDefinition.
pub type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// All CRDs, in the order `crdgen` prints them, as the API server is to get them: kube's derived
/// CRDs with the fixes of [`make_structural`] applied.
pub fn all_crds() -> Result<Vec<Crd>, serde_json::Error> {
    [
        OrchJob::crd(),
        TaskGroup::crd(),
        RateLimit::crd(),
        OrchPolicy::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let is_job = crd.spec.names.kind == "OrchJob";
        let mut value = serde_json::to_value(crd)?;
            if let Some(versions) = value
                .pointer_mut("/spec/versions")
                .and_then(|v| v.as_array_mut())
            {
                for version in versions {
                    if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                        make_structural(schema);
                        if is_job && let Some(spec) = schema.pointer_mut("/properties/spec") {
                            spec["x-kubernetes-validations"] = ORCHJOB_SPEC_RULES
                                .iter()
                                .map(|(rule, message, path)| {
                                    serde_json::json!({"rule": rule, "message": message, "fieldPath": path})
                                })
                                .collect();
                        }
                    }
                }
            }
            serde_json::from_value(value)
        })
        .collect()
}

/// What kube's schema rewriting leaves for the API server to reject or to read differently
/// from `orch validate`, fixed in place (recursively):
/// - a free-form map (`additionalProperties: true`, e.g. `spec.executor.kubernetes`) becomes
///   `x-kubernetes-preserve-unknown-fields: true`, so that its content is neither refused nor
///   pruned;
/// - an int-or-string node (core's `Quantity`) drops the `anyOf` kube leaves behind (its branches
///   have lost their types, so it constrains nothing), and drops `nullable` when it has a
///   default: core refuses `null` there, while a non-nullable field's `null` is pruned and
///   defaulted by the API server;
/// - any other node of several shapes (`anyOf`) is kept as written
///   (`x-kubernetes-preserve-unknown-fields`) and left to orch's own validation.
pub fn make_structural(node: &mut serde_json::Value) {
    let Some(obj) = node.as_object_mut() else {
        return;
    };
    if obj.get("additionalProperties") == Some(&serde_json::Value::Bool(true)) {
        obj.remove("additionalProperties");
        obj.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            serde_json::Value::Bool(true),
        );
    }
    if obj.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true)) {
        obj.remove("anyOf");
        if obj.contains_key("default") {
            obj.remove("nullable");
        }
    } else if obj.remove("anyOf").is_some() {
        // One of several shapes (`rateLimit`: one reference or a list): a structural schema
        // cannot say so, so the API server keeps the value as written and orch's own
        // validation (the same rules as `orch validate`) checks it.
        for key in ["type", "properties", "required", "items"] {
            obj.remove(key);
        }
        obj.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            serde_json::Value::Bool(true),
        );
    }
    if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for child in props.values_mut() {
            make_structural(child);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get_mut(key) {
            make_structural(child);
        }
    }
}

/// All CRDs as one multi-document YAML stream (what `crdgen` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, Box<dyn std::error::Error>> {
    let mut out = String::new();
    for crd in all_crds()? {
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// One CRD as a YAML document (starting with `---`), as checked in under `crds/`.
pub fn crd_yaml(crd: &Crd) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}
