//! Binding a job to its rate-limit buckets when it starts: each `spec.rateLimit` entry is
//! resolved to the bucket its `RateLimit`'s scope names, and the bucket is created or given the
//! document's current rate and burst. Workers then read the bindings from the job's manifest
//! (docs/rate-limits.md). A paused job is marked in its buckets the same way.

use orch_core::backend::{RateLimitStore, update_bucket};
use orch_core::load::LoadedJob;
use orch_core::model::{LimitBinding, now_ms};
use orch_core::ratelimit::{Bucket, parse_rate};
use orch_core::spec::RateLimitScope;
use tracing::info;

use crate::error::{Error, Result};

/// The namespace of a job that names none (as in Kubernetes).
const DEFAULT_NAMESPACE: &str = "default";

/// Every bucket key the job's `spec.rateLimit` entries may have been bound to (one per
/// scope each: which one was taken depends on the `RateLimit` document, not the job).
pub fn possible_keys(job: &orch_core::spec::OrchJobFile, job_id: &str) -> Vec<String> {
    let namespace = job
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let Some(refs) = &job.spec.rate_limit else {
        return Vec::new();
    };
    refs.as_slice()
        .iter()
        .flat_map(|r| {
            [
                RateLimitScope::Cluster,
                RateLimitScope::Namespace,
                RateLimitScope::Job,
            ]
            .map(|scope| scope.bucket_key(&r.name, namespace, job_id))
        })
        .collect()
}

/// Resolves the job's `spec.rateLimit` to buckets, creating or updating those whose
/// `RateLimit` the caller has (beside the job in its file, or the cluster's object). A name
/// with no document must name a bucket that already exists on the storage (made by another
/// job file or by the operator).
pub async fn bind(
    job: &LoadedJob,
    job_id: &str,
    store: &dyn RateLimitStore,
) -> Result<Vec<LimitBinding>> {
    let Some(refs) = &job.file.spec.rate_limit else {
        return Ok(Vec::new());
    };
    let namespace = job
        .file
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let mut out = Vec::new();
    for r in refs.as_slice() {
        let key = match job.rate_limits.iter().find(|d| d.metadata.name == r.name) {
            Some(doc) => {
                let key = doc.spec.scope.bucket_key(&r.name, namespace, job_id);
                let rate = parse_rate(&doc.spec.rate).map_err(Error::Invalid)?;
                configure(store, &key, rate, doc.spec.burst).await?;
                key
            }
            None => existing(store, &r.name, namespace, job_id).await?,
        };
        out.push(LimitBinding {
            name: r.name.clone(),
            key,
            tokens_per_item: r.tokens_per_item,
            weight: r.weight,
        });
    }
    Ok(out)
}

/// Creates the bucket, or gives it a new rate and burst; writes nothing when they are current.
/// Returns the bucket as stored.
pub async fn configure(
    store: &dyn RateLimitStore,
    key: &str,
    rate: f64,
    burst: u32,
) -> Result<Bucket> {
    if let Some(b) = store.get_bucket(key).await?
        && b.rate == rate
        && b.burst == burst
    {
        return Ok(b);
    }
    let now = now_ms();
    let create = || Bucket::new(key, rate, burst, now);
    let (stored, ()) = update_bucket(store, key, Some(&create), |b| {
        if b.version > 0 {
            b.configure(rate, burst, now);
        }
    })
    .await?;
    info!(bucket = key, rate, burst, "rate limit configured");
    Ok(stored)
}

/// The bucket of a `RateLimit` the job file does not carry: the namespace's, else the
/// cluster's, else the job's own.
async fn existing(
    store: &dyn RateLimitStore,
    name: &str,
    namespace: &str,
    job_id: &str,
) -> Result<String> {
    for scope in [
        RateLimitScope::Namespace,
        RateLimitScope::Cluster,
        RateLimitScope::Job,
    ] {
        let key = scope.bucket_key(name, namespace, job_id);
        if store.get_bucket(&key).await?.is_some() {
            return Ok(key);
        }
    }
    Err(Error::Invalid(format!(
        "spec.rateLimit: no RateLimit `{name}`: put a RateLimit document beside the job in its \
         file (separated by `---`), or apply one to the cluster"
    )))
}

/// Marks the job paused (or not) in each of its buckets, so that its workers give their
/// shares back and take no tokens until it resumes. Writes only the buckets that change.
pub async fn set_paused(
    store: &dyn RateLimitStore,
    bindings: &[LimitBinding],
    job_id: &str,
    paused: bool,
) -> Result<()> {
    for b in bindings {
        let current = store.get_bucket(&b.key).await?;
        if current.is_none_or(|bucket| bucket.is_paused(job_id) == paused) {
            continue;
        }
        update_bucket(store, &b.key, None, |bucket| {
            bucket.set_paused(job_id, paused)
        })
        .await?;
    }
    Ok(())
}
