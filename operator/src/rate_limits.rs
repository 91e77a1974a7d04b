//! `RateLimit`s in the cluster: the controller that keeps each one's bucket in the operator's
//! storage at the object's rate and burst and reports how the bucket is used, and the lookup
//! of the RateLimits an `OrchJob` names (docs/rate-limits.md, docs/operator.md).
//!
//! Why the operator writes buckets at all: workers only lease from a bucket; somebody must
//! create it and carry an edited rate into it. Drivers do the same for `orch run`, so the two
//! paths meet in one function (`orch_runtime::rate_limits`).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use orch_core::model::now_ms;
use orch_core::ratelimit::parse_rate;
use orch_core::spec::{ObjectMeta, RateLimitFile, RateLimitScope};
use orch_crd::{OrchJob, RateLimit, RateLimitStatus};
use serde_json::json;
use tracing::{info, warn};

use crate::controller::{Context, MANAGER, now_rfc3339};
use crate::error::{Error, Result};

/// How often a RateLimit's status is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(15);
/// "Throttled" means a worker waited for tokens this recently.
const THROTTLED_WITHIN_MS: u64 = 60_000;
/// The namespace of an object that names none.
const DEFAULT_NAMESPACE: &str = "default";

/// The RateLimits `job` names, from its namespace, as job-file documents; and the names not
/// found there.
pub async fn for_job(ctx: &Context, job: &OrchJob) -> Result<(Vec<RateLimitFile>, Vec<String>)> {
    let Some(refs) = &job.spec.rate_limit else {
        return Ok((Vec::new(), Vec::new()));
    };
    let namespace = job.namespace().unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let api: Api<RateLimit> = Api::namespaced(ctx.client.clone(), &namespace);
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for r in refs.as_slice() {
        match api.get_opt(&r.name).await? {
            Some(rl) => found.push(as_document(&rl)),
            None => missing.push(r.name.clone()),
        }
    }
    Ok((found, missing))
}

fn as_document(rl: &RateLimit) -> RateLimitFile {
    RateLimitFile {
        api_version: orch_core::spec::API_VERSION.into(),
        kind: orch_core::spec::RATE_LIMIT_KIND.into(),
        metadata: ObjectMeta {
            name: rl.name_any(),
            namespace: rl.namespace(),
            ..Default::default()
        },
        spec: rl.spec.0.clone(),
    }
}

/// Keeps one RateLimit's bucket configured and its status current. A `job`-scoped limit has a
/// bucket per job, made by each job's driver: only the status is written for it.
pub async fn reconcile(rl: Arc<RateLimit>, ctx: Arc<Context>) -> Result<Action> {
    let name = rl.name_any();
    let namespace = rl.namespace().unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let Some(storage) = ctx.config.storage_uri.clone() else {
        warn!(%name, "no default storage (ORCH_STORAGE_URI): the RateLimit's bucket is made by the first job that names it");
        return Ok(Action::await_change());
    };
    let rate = parse_rate(&rl.spec.rate).map_err(|e| Error::Invalid(format!("spec.rate: {e}")))?;
    let store = ctx
        .platforms
        .get(&storage)
        .await?
        .backends()
        .rate_limits
        .clone();
    let scope = rl.spec.scope;
    let bucket = if scope == RateLimitScope::Job {
        None
    } else {
        let key = scope.bucket_key(&name, &namespace, "");
        Some(orch_runtime::rate_limits::configure(store.as_ref(), &key, rate, rl.spec.burst).await?)
    };
    let now = now_ms();
    let now_text = now_rfc3339();
    let previous = rl.status.as_ref();
    let mut status = RateLimitStatus {
        observed_generation: rl.meta().generation,
        effective_rate: Some(rate),
        ..RateLimitStatus::default()
    };
    if let Some(b) = &bucket {
        status.effective_rate = Some(round(b.current_rate(now)));
        status.throttled = now.saturating_sub(b.throttled_at) < THROTTLED_WITHIN_MS;
        let mut jobs: Vec<String> = b.live(now).map(|l| l.job.clone()).collect();
        jobs.sort();
        jobs.dedup();
        status.jobs = jobs;
        status.used_tokens = Some(b.used);
        status.sampled_at = Some(now_text.clone());
        status.usage = usage(previous, b.used, &now_text);
    }
    if previous.map(without_sample) != Some(without_sample(&status)) || previous.is_none() {
        let api: Api<RateLimit> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": orch_crd::API_VERSION,
            "kind": "RateLimit",
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        info!(%name, effective = ?status.effective_rate, jobs = status.jobs.len(), "rate limit status");
    }
    Ok(Action::requeue(STATUS_INTERVAL))
}

/// The status without its sampling fields, to tell a change worth writing.
fn without_sample(s: &RateLimitStatus) -> RateLimitStatus {
    RateLimitStatus {
        used_tokens: None,
        sampled_at: None,
        ..s.clone()
    }
}

/// Tokens per second between the previous status's sample and this one.
fn usage(previous: Option<&RateLimitStatus>, used: u64, now: &str) -> Option<f64> {
    let p = previous?;
    let (before, at) = (p.used_tokens?, p.sampled_at.as_deref()?);
    let secs = seconds_between(at, now)?;
    (secs > 0.0).then(|| round(used.saturating_sub(before) as f64 / secs))
}

fn seconds_between(from: &str, to: &str) -> Option<f64> {
    let from: k8s_openapi::jiff::Timestamp = from.parse().ok()?;
    let to: k8s_openapi::jiff::Timestamp = to.parse().ok()?;
    Some((to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn error_policy(rl: Arc<RateLimit>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(name = %rl.name_any(), %error, "rate limit reconcile failed");
    Action::requeue(STATUS_INTERVAL)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_tokens_per_second_between_samples() {
        let previous = RateLimitStatus {
            used_tokens: Some(1_000),
            sampled_at: Some("2026-12-06T10:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            usage(Some(&previous), 1_600, "2026-12-06T10:00:15Z"),
            Some(40.0)
        );
        assert_eq!(usage(None, 1_600, "2026-12-06T10:00:15Z"), None);
        // A bucket made again from scratch counts from zero: no negative usage.
        assert_eq!(
            usage(Some(&previous), 10, "2026-12-06T10:00:15Z"),
            Some(0.0)
        );
    }
}
