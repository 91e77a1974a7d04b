//! The cluster admin's policy for the jobs of a namespace (the spec of the cluster-scoped
//! `OrchPolicy` resource), and the one decision made from it: may this tenant's job run, and
//! with what the admin chose for it (docs/security.md).
//!
//! Under the operator a job spec never chooses where things run or as whom: the slurmrestd
//! endpoint, its token and Slurm user, the job storage and local paths come from the policy
//! (or the operator's own defaults), and what the spec may choose — partitions, accounts,
//! QOS, sbatch options, images, service accounts, Secrets, node labels, the S3 prefixes it
//! reads and writes — is allowed only when the policy lists it. Anything the policy does not
//! allow is refused, every problem at once, each with its field and the rule.
//!
//! Pure: the operator reads the policies and Secrets; this module decides, so every rule is
//! tested without a cluster.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::partition::PlanBudget;
use crate::spec::{JobSpec, Quantity, SecretKeyRef, SlurmTransport};

/// The reason of a job's `Failed` condition and Event when its namespace's policy refuses it.
pub const POLICY_DENIED: &str = "PolicyDenied";

/// What the cluster admin allows the jobs of some namespaces, and chooses for them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The namespaces this policy governs (exact names). A namespace no policy names runs no
    /// job; one that two policies name runs none either, until one of them lets it go.
    #[schemars(length(min = 1))]
    pub namespaces: Vec<String>,
    /// Where the jobs keep their state and may read and write data.
    #[serde(default)]
    pub storage: StoragePolicy,
    /// Slurm for these namespaces; without it, `executor.slurm` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmPolicy>,
    /// Kubernetes worker pods for these namespaces; without it, `executor.kubernetes` is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesPolicy>,
    /// Bounds on each job, and on the namespace's jobs together.
    #[serde(default)]
    pub limits: LimitsPolicy,
}

/// Storage and data prefixes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoragePolicy {
    /// The job storage (state, manifests, results) of these namespaces' jobs; default: the
    /// operator's storage followed by `<namespace>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The `s3://` prefix under which jobs read input and write output; default:
    /// `s3://<bucket of the storage>/<namespace>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_prefix: Option<String>,
    /// More `s3://` prefixes jobs may read input from (shared datasets), never write to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_prefixes: Vec<String>,
}

/// How these namespaces reach Slurm, as whom, and what they may ask of it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlurmPolicy {
    /// `rest` (default): slurmrestd, as `user`. `cli`: the Slurm commands on the operator's own
    /// host, as the operator's own Unix user (an operator on a login node, one tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<SlurmTransport>,
    /// slurmrestd's base URL (`https://slurm-head:6820`); default: the operator's
    /// (`--slurm-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The key of a Secret in the operator's namespace that holds the JWT for `user`; default:
    /// the operator's token file (`--slurm-token-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// The Slurm user the jobs run as (`X-SLURM-USER-NAME`); required with `rest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Partitions a job may name; a job that names none gets the first. Empty: a job may
    /// name none, and runs in the cluster's default partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
    /// Accounts a job may name; a job that names none gets the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// QOS a job may name; a job that names none gets the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos: Vec<String>,
    /// sbatch options a job may add in `extraOptions`, by name (`--exclusive`, `--nice`,
    /// `--reservation`); any value is allowed for a listed name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_options: Vec<String>,
}

/// What worker pods may be.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesPolicy {
    /// Images a job may name: exact references, or prefixes ending in `*`
    /// (`registry.example/team-a/*`). A job that names none gets the operator's worker image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Service accounts worker pods may run as; a job that names none runs as the namespace's
    /// `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Secrets of the namespace a job may pass to its pods (`envFromSecrets`, `secretRef`,
    /// `valueFrom.secretKeyRef`), and that the operator may read for its alert channels
    /// (`spec.alerts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Node labels a job may select on, and the values allowed for each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, Vec<String>>,
}

/// Bounds on the jobs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsPolicy {
    /// Most tasks (batches) one job may be cut into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tasks: Option<u64>,
    /// Most bytes of input one job may read (compressed files count as stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<Quantity>,
    /// Most bytes compressed input may expand to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decompressed_bytes: Option<Quantity>,
    /// Jobs of one namespace running at once; more wait, `Pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_jobs: Option<u32>,
}

/// What the operator itself supplies where a policy leaves a choice open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorDefaults {
    /// The operator's storage (`ORCH_STORAGE_URI`).
    pub storage_uri: Option<String>,
    /// The operator's slurmrestd (`--slurm-url`).
    pub slurm_url: Option<String>,
    /// The operator's token file (`--slurm-token-file`).
    pub slurm_token_file: Option<String>,
}

/// Where the JWT for slurmrestd comes from, when the policy names one.
#[derive(Debug, Clone, PartialEq)]
pub enum SlurmToken {
    /// A key of a Secret in the operator's namespace.
    Secret(SecretKeyRef),
}

/// Numbers a job is held to (bytes resolved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobLimits {
    pub max_tasks: Option<u64>,
    pub max_input_bytes: Option<u64>,
    pub max_decompressed_bytes: Option<u64>,
    pub max_concurrent_jobs: Option<u32>,
}

impl JobLimits {
    /// What planning the job may cost: its input, what that decompresses to, its tasks.
    pub fn plan_budget(&self) -> PlanBudget {
        PlanBudget {
            max_input_bytes: self.max_input_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_batches: self.max_tasks,
        }
    }
}

/// A job its namespace's policy lets run: the spec completed with the admin's choices.
#[derive(Debug, Clone, PartialEq)]
pub struct Governed {
    /// The policy's name.
    pub policy: String,
    pub spec: JobSpec,
    /// Set when the policy names a token Secret; the spec's `tokenFile` is then unset.
    pub slurm_token: Option<SlurmToken>,
    pub limits: JobLimits,
}

/// The policy that governs `namespace` among `policies` (name, spec): exactly one must.
pub fn select<'a>(
    policies: impl IntoIterator<Item = (&'a str, &'a PolicySpec)>,
    namespace: &str,
) -> Result<(&'a str, &'a PolicySpec), FieldError> {
    let matching: Vec<_> = policies
        .into_iter()
        .filter(|(_, p)| p.namespaces.iter().any(|n| n == namespace))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(FieldError {
            path: "metadata.namespace".into(),
            message: format!(
                "no OrchPolicy governs namespace `{namespace}`, so its jobs may not run; \
                 a cluster admin must list it in one (docs/security.md)"
            ),
        }),
        many => Err(FieldError {
            path: "metadata.namespace".into(),
            message: format!(
                "namespace `{namespace}` is listed by more than one OrchPolicy ({}); \
                 a cluster admin must leave it in one",
                many.iter()
                    .map(|(n, _)| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The job storage of `namespace`'s jobs: the policy's, else the operator's followed by
/// `<namespace>/`, so each tenant's artifacts live under a prefix of their own.
pub fn storage_uri(
    namespace: &str,
    policy: &PolicySpec,
    defaults: &OperatorDefaults,
) -> Option<String> {
    policy.storage.uri.clone().or_else(|| {
        defaults
            .storage_uri
            .as_deref()
            .map(|base| format!("{}/{namespace}/", base.trim_end_matches('/')))
    })
}

/// Decides whether the job `spec` of `namespace` may run under the policy `name`, and
/// completes it with the admin's choices: the storage, the Slurm endpoint, user and token,
/// default partition, account and QOS. Every refusal is returned at once, each naming the
/// field and the rule.
pub fn govern(
    spec: &JobSpec,
    namespace: &str,
    name: &str,
    policy: &PolicySpec,
    defaults: &OperatorDefaults,
) -> Result<Governed, Vec<FieldError>> {
    let mut check = Check {
        policy: name,
        errors: Vec::new(),
    };
    let mut spec = spec.clone();

    // The storage: the admin's, never the spec's.
    if spec.storage.uri.is_some() {
        check.deny(
            "spec.storage.uri",
            "the job storage is chosen by the cluster admin; leave it out",
        );
    }
    let storage = storage_uri(namespace, policy, defaults);
    match &storage {
        Some(uri) => spec.storage.uri = Some(uri.clone()),
        None => check.deny(
            "spec.storage.uri",
            "neither the policy (storage.uri) nor the operator (ORCH_STORAGE_URI) names a storage",
        ),
    }

    // Data: s3:// only, under the namespace's prefixes.
    let data_prefix = policy.storage.data_prefix.clone().or_else(|| {
        storage
            .as_deref()
            .and_then(s3_bucket)
            .map(|bucket| format!("s3://{bucket}/{namespace}/"))
    });
    let writable: Vec<String> = data_prefix.iter().map(|p| as_prefix(p)).collect();
    let readable: Vec<String> = writable
        .iter()
        .cloned()
        .chain(policy.storage.read_prefixes.iter().map(|p| as_prefix(p)))
        .collect();
    check.uri_under("spec.input.uri", &spec.input.uri, &readable, "read");
    if let Some(out) = &spec.output.uri {
        check.uri_under("spec.output.uri", out, &writable, "written");
    }

    // Where workers run.
    let executor = &mut spec.executor;
    if executor.local.is_some() {
        check.deny(
            "spec.executor.local",
            "local workers would run inside the operator; use executor.slurm or executor.kubernetes",
        );
    }
    let mut slurm_token = None;
    if let Some(slurm) = executor.slurm.as_mut() {
        match &policy.slurm {
            None => check.deny("spec.executor.slurm", "this namespace may not use Slurm"),
            Some(allowed) => {
                for (field, set) in [
                    ("url", slurm.url.is_some()),
                    ("tokenFile", slurm.token_file.is_some()),
                    ("user", slurm.user.is_some()),
                    ("worker", slurm.worker.is_some()),
                    ("logDir", slurm.log_dir.is_some()),
                ] {
                    if set {
                        check.deny(
                            &format!("spec.executor.slurm.{field}"),
                            "chosen by the cluster admin, never by a job; leave it out",
                        );
                    }
                }
                let transport = allowed.transport.unwrap_or(SlurmTransport::Rest);
                if slurm.transport.is_some_and(|t| t != transport) {
                    check.deny(
                        "spec.executor.slurm.transport",
                        &format!(
                            "this namespace reaches Slurm through `{}` only",
                            transport_name(transport)
                        ),
                    );
                }
                slurm.transport = Some(transport);
                slurm.worker = None;
                slurm.log_dir = None;
                slurm.url = None;
                slurm.token_file = None;
                slurm.user = None;
                if transport == SlurmTransport::Rest {
                    match allowed.url.clone().or_else(|| defaults.slurm_url.clone()) {
                        Some(url) => slurm.url = Some(url),
                        None => check.deny(
                            "spec.executor.slurm.url",
                            "neither the policy (slurm.url) nor the operator (--slurm-url) names slurmrestd",
                        ),
                    }
                    match allowed.user.as_deref().filter(|u| !u.trim().is_empty()) {
                        Some(user) => slurm.user = Some(user.to_string()),
                        None => check.deny(
                            "spec.executor.slurm.user",
                            "the policy names no Slurm user (slurm.user), and orch never falls back to one",
                        ),
                    }
                    match &allowed.token_secret {
                        Some(secret) => slurm_token = Some(SlurmToken::Secret(secret.clone())),
                        None => slurm.token_file = defaults.slurm_token_file.clone(),
                    }
                }
                for bad in disallowed_options(&slurm.extra_options, &allowed.extra_options) {
                    check.deny(
                        "spec.executor.slurm.extraOptions",
                        &format!("`{bad}` is not among the sbatch options this namespace may add"),
                    );
                }
                let resources = &mut spec.resources;
                for (field, value, allowed) in [
                    ("partition", &mut resources.partition, &allowed.partitions),
                    ("account", &mut resources.account, &allowed.accounts),
                    ("qos", &mut resources.qos, &allowed.qos),
                ] {
                    match value {
                        Some(v) if !allowed.contains(v) => check.deny(
                            &format!("spec.resources.{field}"),
                            &format!("`{v}` is not among the {}", allowed_list(field, allowed)),
                        ),
                        Some(_) => {}
                        None => *value = allowed.first().cloned(),
                    }
                }
            }
        }
    }
    if let Some(kube) = &spec.executor.kubernetes {
        match &policy.kubernetes {
            None => check.deny(
                "spec.executor.kubernetes",
                "this namespace may not start worker pods",
            ),
            Some(allowed) => {
                if let Some(image) = &kube.image
                    && !allowed.images.iter().any(|p| image_matches(p, image))
                {
                    check.deny(
                        "spec.executor.kubernetes.image",
                        &format!("`{image}` matches none of the images this namespace may run"),
                    );
                }
                if let Some(account) = &kube.service_account_name
                    && !allowed.service_accounts.contains(account)
                {
                    check.deny(
                        "spec.executor.kubernetes.serviceAccountName",
                        &format!("`{account}` is not among the service accounts this namespace's pods may use"),
                    );
                }
                for secret in &kube.env_from_secrets {
                    if !allowed.secrets.contains(secret) {
                        check.deny(
                            "spec.executor.kubernetes.envFromSecrets",
                            &format!("Secret `{secret}` is not among those this namespace's pods may read"),
                        );
                    }
                }
                for (label, value) in &kube.node_selector {
                    if !allowed
                        .node_selector
                        .get(label)
                        .is_some_and(|values| values.contains(value))
                    {
                        check.deny(
                            "spec.executor.kubernetes.nodeSelector",
                            &format!(
                                "`{label}={value}` is not a node label this namespace may select"
                            ),
                        );
                    }
                }
            }
        }
    }
    // Secret references of the handler reach pods only; a policy must allow each.
    let allowed_secrets = policy
        .kubernetes
        .as_ref()
        .map(|k| k.secrets.as_slice())
        .unwrap_or_default();
    for (_, secret) in spec.handler.secret_env() {
        if !allowed_secrets.contains(&secret.name) {
            check.deny(
                "spec.handler",
                &format!(
                    "Secret `{}` is not among those this namespace's pods may read",
                    secret.name
                ),
            );
        }
    }

    // Alert channels: the operator reads their secrets itself, so only from the Secrets the
    // policy lists — never from its own environment or files, which hold its credentials.
    for (path, value) in alert_secrets(&spec) {
        if value.env.is_some() || value.file.is_some() {
            check.deny(
                &path,
                "the operator reads no variable or file of its own for a job; use \
                 `secretKeyRef` (a Secret of the job's namespace that the policy lists)",
            );
        }
        if let Some(r) = &value.secret_key_ref
            && !allowed_secrets.contains(&r.name)
        {
            check.deny(
                &path,
                &format!(
                    "Secret `{}` is not among those this namespace's jobs may read",
                    r.name
                ),
            );
        }
    }

    let limits = check.limits(&policy.limits);
    if check.errors.is_empty() {
        Ok(Governed {
            policy: name.to_string(),
            spec,
            slurm_token,
            limits,
        })
    } else {
        Err(check.errors)
    }
}

/// Every secret reference of `spec.alerts.channels`, with its field path.
pub fn alert_secrets(spec: &JobSpec) -> Vec<(String, &crate::spec::SecretValueSpec)> {
    let mut out = Vec::new();
    for (i, c) in spec.alerts.iter().flat_map(|a| &a.channels).enumerate() {
        let at = format!("spec.alerts.channels[{i}]");
        if let Some(slack) = &c.slack {
            out.push((format!("{at}.slack.url"), &slack.url));
        }
        if let Some(hook) = &c.webhook {
            out.push((format!("{at}.webhook.url"), &hook.url));
        }
        if let Some(password) = c.email.as_ref().and_then(|e| e.smtp.password.as_ref()) {
            out.push((format!("{at}.email.smtp.password"), password));
        }
    }
    out
}

struct Check<'a> {
    policy: &'a str,
    errors: Vec<FieldError>,
}

impl Check<'_> {
    fn deny(&mut self, path: &str, rule: &str) {
        self.errors.push(FieldError {
            path: path.to_string(),
            message: format!("refused by OrchPolicy `{}`: {rule}", self.policy),
        });
    }

    /// `uri` must be an `s3://` URI under one of `prefixes`, with no `.`/`..` segment.
    fn uri_under(&mut self, path: &str, uri: &str, prefixes: &[String], verb: &str) {
        if !uri.starts_with("s3://") {
            self.deny(
                path,
                "only s3:// URIs: the operator reads no file of its own host",
            );
            return;
        }
        let rest = &uri["s3://".len()..];
        if rest
            .split('/')
            .skip(1)
            .any(|segment| segment == "." || segment == "..")
        {
            self.deny(path, "`.` and `..` are not allowed in a URI");
            return;
        }
        if !prefixes.iter().any(|p| uri.starts_with(p.as_str())) {
            let rule = if prefixes.is_empty() {
                format!("no prefix may be {verb} by this namespace's jobs")
            } else {
                format!(
                    "not under {} (where this namespace's jobs may be {verb})",
                    prefixes
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            };
            self.deny(path, &rule);
        }
    }

    fn limits(&mut self, limits: &LimitsPolicy) -> JobLimits {
        let mut bytes = |field: &str, q: &Option<Quantity>| match q.as_ref().map(Quantity::as_bytes)
        {
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => {
                self.deny(
                    &format!("limits.{field}"),
                    &format!("the policy's own limit is not a size: {e}"),
                );
                None
            }
            None => None,
        };
        JobLimits {
            max_tasks: limits.max_tasks,
            max_input_bytes: bytes("maxInputBytes", &limits.max_input_bytes),
            max_decompressed_bytes: bytes("maxDecompressedBytes", &limits.max_decompressed_bytes),
            max_concurrent_jobs: limits.max_concurrent_jobs,
        }
    }
}

fn transport_name(t: SlurmTransport) -> &'static str {
    match t {
        SlurmTransport::Cli => "cli",
        SlurmTransport::Rest => "rest",
    }
}

fn allowed_list(field: &str, allowed: &[String]) -> String {
    let what = match field {
        "partition" => "partitions",
        "account" => "accounts",
        _ => "QOS",
    };
    if allowed.is_empty() {
        format!("{what} this namespace may name (none: leave it out)")
    } else {
        format!("{what} this namespace may name ({})", allowed.join(", "))
    }
}

/// The bucket of an `s3://bucket/…` URI.
fn s3_bucket(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("s3://")?;
    let bucket = rest.split('/').next().unwrap_or_default();
    (!bucket.is_empty()).then_some(bucket)
}

/// A prefix as compared: ending in `/`, so `s3://b/team-a` does not admit `s3://b/team-ab/`.
fn as_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// The options of `options` whose name (`--name` of `--name=value`) `allowed` does not list.
fn disallowed_options<'a>(options: &'a [String], allowed: &[String]) -> Vec<&'a str> {
    options
        .iter()
        .map(String::as_str)
        .filter(|o| {
            let name = o.split('=').next().unwrap_or_default();
            !allowed.iter().any(|a| a == name)
        })
        .collect()
}

/// Whether `image` is `pattern`, or starts with it when it ends in `*`.
fn image_matches(pattern: &str, image: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => image == pattern,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
