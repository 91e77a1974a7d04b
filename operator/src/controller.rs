//! The `OrchJob` controller: turns each resource into a running job and its status.
//!
//! A reconcile is short and idempotent; everything it decides from is in the stores or on the
//! object, so any replica can pick up where another stopped:
//! 1. an object the operator cannot read is reported (Event) and skipped (`DeserializeGuard`);
//! 2. the finalizer goes on first; on delete, the job is cancelled (its Slurm arrays or pods
//!    stopped) and, with `orch.dev/purge-on-delete`, its artifacts deleted before it goes;
//! 3. core's rules check the spec; a spec the schema accepted but the rules refuse ends
//!    `Failed` with reason `InvalidSpec` and an Event — unless the job has started: then the
//!    refused edit gets a `SpecChangeRefused` Event and the job runs on with the spec it
//!    started with (recorded in its state store), as it does after any edit but `suspend`;
//! 4. `spec.suspend`, `orch.dev/cancel` and `orch.dev/retry` are written into the job's record,
//!    where its driver reads them on its next tick (`orch_runtime::control`);
//! 5. a supervisor runs the job's driver (the engine of `orch run`) unless the job ended;
//! 6. the status (server-side apply on the status subresource), the `TaskGroup` children and
//!    Events follow from the stored job and tasks — from the rows the job's driver holds in
//!    memory, refreshed with only what was written since;
//! 7. a running job is reconciled once a status interval: the watch events of the operator's
//!    own writes wait for it, changes of what a reconcile acts on do not (`Context::too_soon`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use orch_core::ErrorCategory;
use orch_core::FieldError;
use orch_core::backend::AuditLog;
use orch_core::backend::Executor;
use orch_core::load::LoadedJob;
use orch_core::model::AuditEntry;
use orch_core::model::JobRecord;
use orch_core::partition::PlanBudget;
use orch_core::platform::Platform;
use orch_core::policy::SlurmToken;
use orch_executors::{PlainHttp, SharedToken, TokenSource};
use orch_runtime::control::{self, RetryChoice};
use orch_runtime::task_cache::SharedTaskCache;
use serde_json::json;
use sha2::Digest;
use tracing::{error, info, warn};

use crate::Watched;
use crate::config::{
    OperatorConfig, Platforms, PreparedJob, Refusal, governing, job_path, namespace_storage,
    prepare_job,
};
use crate::error::{Error, Result};
use crate::kube_executor::{self, KubeExecutor, KubeExecutorError, KubeLaunch};
use crate::rate_limits;
use crate::status::{
    job_status, policy_denial, rejection, validation_failure, waiting_for_quota,
    waiting_for_rate_limits,
};
use crate::supervisor::{Launch, RunState, Supervisors};
use crate::taskgroups;
use crate::telemetry::{Metrics, OutcomeLabels, PhaseLabels};
use kube::runtime::reflector::Store;
use orch_core::policy::PolicySpec;
use orch_crd::{
    CANCEL_ANNOTATION, FINALIZER, JobPhase, OrchJob, OrchJobStatus, OrchPolicy, PURGE_ANNOTATION,
    RETRY_ALL_ITEMS, RETRY_ANNOTATION, RETRY_ITEMS_ANNOTATION, TaskGroup, TaskGroupStatus,
};
use orch_executors::Executors;

/// How long a policy's slurmrestd token is used before its Secret is read again.
const TOKEN_REFRESH: Duration = Duration::from_secs(60);

/// Field manager of every write the operator makes.
pub const MANAGER: &str = "orch-operator";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub platforms: Platforms,
    pub supervisors: Supervisors,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The cluster's `OrchPolicy` objects, kept current by a watch.
    pub policies: Store<OrchPolicy>,
    /// The slurmrestd tokens of policies' Secrets (name, key), and when each was read.
    tokens: Mutex<HashMap<(String, String), (SharedToken, Instant)>>,
    /// Phase of each job last seen, for the jobs gauge.
    phases: Mutex<HashMap<String, JobPhase>>,
    /// The driver failure last reported per job, so one failure makes one Event.
    reported_errors: Mutex<HashMap<String, String>>,
    /// Each job's task rows, shared by its driver and its status refresh: one copy, and a
    /// refresh reads only the rows written since the last one (a lock per job: jobs refresh
    /// concurrently).
    task_caches: Mutex<HashMap<String, SharedTaskCache>>,
    /// Per job: what of the object a reconcile acts on (see [`intent`]) and when the last
    /// complete reconcile ended, to leave out the reconciles our own writes trigger.
    last_reconciled: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        supervisors: Supervisors,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        policies: Store<OrchPolicy>,
    ) -> Self {
        Context {
            client,
            platforms: Platforms::new(config.clone()),
            config,
            supervisors,
            recorder,
            metrics,
            policies,
            tokens: Mutex::new(HashMap::new()),
            phases: Mutex::new(HashMap::new()),
            reported_errors: Mutex::new(HashMap::new()),
            task_caches: Mutex::new(HashMap::new()),
            last_reconciled: Mutex::new(HashMap::new()),
        }
    }

    /// How long to wait before reconciling `job` again, when nothing it acts on changed since
    /// the last reconcile and that was less than a status interval ago. Each status or
    /// TaskGroup write comes back as a watch event: without this, a running job would be
    /// reconciled back to back (its progress changes every time) instead of once an interval.
    fn too_soon(&self, job: &OrchJob) -> Option<Duration> {
        let uid = job.uid().unwrap_or_default();
        let last = self
            .last_reconciled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (seen, at) = last.get(&uid)?;
        (*seen == intent(job))
            .then(|| self.config.status_interval.checked_sub(at.elapsed()))
            .flatten()
            .filter(|wait| !wait.is_zero())
    }

    fn reconciled(&self, job: &OrchJob) {
        let mut last = self
            .last_reconciled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.insert(job.uid().unwrap_or_default(), (intent(job), Instant::now()));
    }

    /// The slurmrestd token of the policy that allowed `prepared`, when it names a Secret: one
    /// handle per Secret key, shared by every job that uses it, read again from the operator's
    /// namespace when a minute old (a rotated token reaches running jobs). The value is never
    /// logged; a missing Secret or key is said by name.
    async fn slurm_token(&self, prepared: &PreparedJob) -> Result<Option<TokenSource>> {
        let Some(SlurmToken::Secret(secret)) = &prepared.slurm_token else {
            return Ok(None);
        };
        let key = (secret.name.clone(), secret.key.clone());
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some((token, read)) = &cached
            && read.elapsed() < TOKEN_REFRESH
        {
            return Ok(Some(TokenSource::Shared(token.clone())));
        }
        let namespace = &self.config.namespace;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let where_ = format!(
            "the Secret {namespace}/{} that OrchPolicy `{}` names as its slurmrestd token",
            secret.name, prepared.policy
        );
        let object = api
            .get_opt(&secret.name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{where_} does not exist")))?;
        let value = object
            .data
            .as_ref()
            .and_then(|d| d.get(&secret.key))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::Invalid(format!("{where_} has no key `{}`", secret.key)))?;
        let token = match cached {
            Some((token, _)) => {
                token.set(value);
                token
            }
            None => SharedToken::new(value),
        };
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (token.clone(), Instant::now()));
        Ok(Some(TokenSource::Shared(token)))
    }

    /// The policies as last seen, by name.
    pub(crate) fn policy_list(&self) -> Vec<(String, PolicySpec)> {
        self.policies
            .state()
            .iter()
            .map(|p| (p.name_any(), p.spec.0.clone()))
            .collect()
    }

    fn task_cache(&self, uid: &str) -> SharedTaskCache {
        let mut caches = self.task_caches.lock().unwrap_or_else(|e| e.into_inner());
        caches.entry(uid.to_string()).or_default().clone()
    }

    fn forget(&self, uid: &str) {
        let mut caches = self.task_caches.lock().unwrap_or_else(|e| e.into_inner());
        caches.remove(uid);
        drop(caches);
        let mut last = self
            .last_reconciled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.remove(uid);
    }

    fn note_phase(&self, uid: &str, phase: Option<JobPhase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Some(p) => phases.insert(uid.to_string(), p),
            None => phases.remove(uid),
        };
        let mut counts: HashMap<JobPhase, i64> = HashMap::new();
        for p in phases.values() {
            *counts.entry(*p).or_default() += 1;
        }
        for p in [
            JobPhase::Pending,
            JobPhase::Running,
            JobPhase::Suspended,
            JobPhase::Succeeded,
            JobPhase::Failed,
        ] {
            self.metrics
                .jobs
                .get_or_create(&PhaseLabels {
                    phase: format!("{p:?}"),
                })
                .set(counts.get(&p).copied().unwrap_or(0));
        }
    }
}

/// A hash of what a reconcile acts on besides the status: the spec (through the generation),
/// the annotations (cancel, retry, purge) and the finalizers.
fn intent(job: &OrchJob) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    job.metadata.generation.hash(&mut h);
    job.metadata.annotations.hash(&mut h);
    job.metadata.finalizers.hash(&mut h);
    h.finish()
}

/// The engine's id of the job an `OrchJob` stands for: its name plus a hash of its uid, so a
/// job deleted and applied again is a new job, and edits to a running job's spec do not
/// fork it.
pub fn job_id(job: &OrchJob) -> String {
    let uid = job.metadata.uid.as_deref().unwrap_or("");
    let hash = hex::encode(&sha2::Sha256::digest(uid.as_bytes())[..4]);
    format!("{}-{hash}", job.name_any())
}

/// Reconciles one `OrchJob` (see the module docs), recording metrics.
pub async fn reconcile(object: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_object(&object, &ctx).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => category_name(e.category()).to_string(),
    };
    ctx.metrics
        .reconciles
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    ctx.metrics.drivers.set(ctx.supervisors.running() as i64);
    result
}

/// When to try a failed reconcile again: soon for what may pass, later for the rest.
pub fn error_policy(object: Arc<Watched>, error: &Error, _ctx: Arc<Context>) -> Action {
    let name = object.meta().name.clone().unwrap_or_default();
    warn!(%name, error = %error, category = ?error.category(), "reconcile failed");
    Action::requeue(match error.category() {
        ErrorCategory::Transient => Duration::from_secs(5),
        ErrorCategory::Infrastructure => Duration::from_secs(15),
        ErrorCategory::Permanent => Duration::from_secs(60),
        ErrorCategory::Invalid => Duration::from_secs(300),
    })
}

fn category_name(c: ErrorCategory) -> &'static str {
    match c {
        ErrorCategory::Invalid => "invalid",
        ErrorCategory::Transient => "transient",
        ErrorCategory::Permanent => "permanent",
        ErrorCategory::Infrastructure => "infrastructure",
    }
}

async fn reconcile_object(object: &Watched, ctx: &Context) -> Result<Action> {
    let job = match &object.0 {
        Ok(job) => job,
        Err(invalid) => {
            // Stored by the API server but unreadable here (written under another schema):
            // say so on the object and leave the rest of the jobs alone.
            let meta = &invalid.metadata;
            warn!(name = ?meta.name, namespace = ?meta.namespace, error = %invalid, "cannot read an OrchJob");
            let reference = ObjectReference {
                api_version: Some(orch_crd::API_VERSION.to_string()),
                kind: Some("OrchJob".into()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..ObjectReference::default()
            };
            publish(
                ctx,
                &reference,
                EventType::Warning,
                "Unreadable",
                &format!("the operator cannot read this OrchJob: {invalid}"),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let namespace = job
        .namespace()
        .ok_or_else(|| Error::Invalid("an OrchJob without a namespace".into()))?;
    let api: Api<OrchJob> = Api::namespaced(ctx.client.clone(), &namespace);
    if job.metadata.deletion_timestamp.is_some() {
        return cleanup(job, &api, ctx).await;
    }
    if !job.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = job.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        set_finalizers(&api, job, finalizers).await?;
    }
    if let Some(wait) = ctx.too_soon(job) {
        return Ok(Action::requeue(wait));
    }
    let action = apply(job, &api, ctx).await?;
    ctx.reconciled(job);
    Ok(action)
}

/// Everything but deletion.
async fn apply(job: &OrchJob, api: &Api<OrchJob>, ctx: &Context) -> Result<Action> {
    let uid = job.uid().unwrap_or_default();
    let name = job.name_any();
    let generation = job.metadata.generation.unwrap_or(0);
    let previous = job.status.as_ref();
    let reference = job.object_ref(&());
    let now = now_rfc3339();

    let prepared = match prepare(job, ctx).await? {
        Prepared::Accepted(prepared) => prepared,
        Prepared::EditRefused(prepared, refusal) => {
            // Once per generation: the status written below records it as observed.
            if previous.and_then(|s| s.observed_generation) != Some(generation) {
                let problems: Vec<String> =
                    refusal.errors().iter().map(ToString::to_string).collect();
                let note = format!(
                    "generation {generation} refused ({}); the job runs on with the spec it started with",
                    problems.join("; ")
                );
                warn!(%name, %note, "spec change refused");
                let reason = match refusal {
                    Refusal::Invalid(_) => "SpecChangeRefused",
                    Refusal::Denied(_) => orch_core::policy::POLICY_DENIED,
                };
                publish(ctx, &reference, EventType::Warning, reason, &note).await;
            }
            prepared
        }
        Prepared::Refused(refusal) => return refuse(job, api, ctx, &refusal).await,
    };
    let concurrency = prepared.limits.max_concurrent_jobs;
    let policy = prepared.policy.clone();
    let mut loaded = prepared.loaded.clone();
    let storage = loaded.file.spec.storage.uri.clone().unwrap_or_default();
    let platform = ctx.platforms.get(&storage).await?;
    let state = platform.backends().state.clone();
    let id = job_id(job);
    // The RateLimits it names: a job that has not started waits for missing ones.
    let (documents, missing) = rate_limits::for_job(ctx, job).await?;
    loaded.rate_limits = documents;
    if !missing.is_empty() && state.get_job(&id).await?.is_none() {
        let namespace = job.namespace().unwrap_or_else(|| "default".into());
        let mut status = waiting_for_rate_limits(&missing, &namespace, generation, previous, &now);
        status.job_id = Some(id);
        write_status(api, &name, previous, status, ctx, &uid).await?;
        return Ok(Action::requeue(ctx.config.status_interval));
    }
    let slurm_token = ctx.slurm_token(&prepared).await?;
    let budget = prepared.limits.plan_budget();
    let launch = match launch(job, loaded, slurm_token, budget, &id, platform.clone(), ctx) {
        Ok(launch) => launch,
        Err(error) => return refuse(job, api, ctx, &Refusal::Invalid(vec![error])).await,
    };
    let mut record = state.get_job(&id).await?;

    // Spec and annotations into the record, where the driver reads them.
    if let Some(r) = &record {
        let suspend = job.spec.suspend;
        if control::set_suspend(state.as_ref(), r, suspend).await? {
            let (reason, note) = if suspend {
                (
                    "Paused",
                    "spec.suspend is true: tasks not started are held, nothing new starts",
                )
            } else {
                ("Resumed", "spec.suspend is false: dispatching again")
            };
            let audit = platform.backends().audit.clone();
            act(
                ctx,
                audit.as_ref(),
                job,
                &policy,
                EventType::Normal,
                reason,
                note,
            )
            .await;
            record = state.get_job(&id).await?;
        }
    }
    let cancel = annotation(job, CANCEL_ANNOTATION) == Some("true");
    if cancel
        && let Some(r) = &record
        && control::request_cancel(state.as_ref(), r).await?
    {
        act(
            ctx,
            platform.backends().audit.as_ref(),
            job,
            &policy,
            EventType::Normal,
            "Cancelling",
            "orch.dev/cancel is true: stopping the job's tasks",
        )
        .await;
        record = state.get_job(&id).await?;
    }
    let mut retried = previous.and_then(|p| p.retried.clone());
    if let Some(request) = annotation(job, RETRY_ANNOTATION)
        && retried.as_deref() != Some(request)
    {
        let (kind, reason, note) = match &record {
            Some(r) if r.phase.is_terminal() => {
                let choice = retry_choice(annotation(job, RETRY_ITEMS_ANNOTATION));
                let n = control::retry(platform.backends(), r, &choice).await?;
                match (&choice, n.tasks) {
                    (_, 0) => (
                        EventType::Normal,
                        "NothingToRetry",
                        match choice {
                            RetryChoice::Tasks => "no failed task to run again".to_string(),
                            RetryChoice::Items { .. } => {
                                "no failed item of that choice to run again".to_string()
                            }
                        },
                    ),
                    (RetryChoice::Tasks, _) => (
                        EventType::Normal,
                        "Retrying",
                        format!("{} failed task(s) run again", n.tasks),
                    ),
                    (RetryChoice::Items { .. }, _) => (
                        EventType::Normal,
                        "Retrying",
                        format!(
                            "{} failed item(s) of {} task(s) run again",
                            n.items, n.tasks
                        ),
                    ),
                }
            }
            Some(_) => (
                EventType::Warning,
                "RetryIgnored",
                "the job is still running; the engine retries failed tasks itself".to_string(),
            ),
            None => (
                EventType::Warning,
                "RetryIgnored",
                "the job has not started".to_string(),
            ),
        };
        if reason == "Retrying" {
            let audit = platform.backends().audit.clone();
            act(ctx, audit.as_ref(), job, &policy, kind, reason, &note).await;
        } else {
            publish(ctx, &reference, kind, reason, &note).await;
        }
        retried = Some(request.to_string());
        record = state.get_job(&id).await?;
    }

    // The driver.
    let terminal = record.as_ref().is_some_and(|r| r.phase.is_terminal());
    let snapshot = ctx.supervisors.snapshot(&uid);
    let rejected = snapshot.as_ref().and_then(|s| match &s.state {
        RunState::Rejected(message) if s.generation == generation => Some(message.clone()),
        _ => None,
    });
    if !terminal && rejected.is_none() {
        // A job that has not started waits while its namespace runs as many as its policy
        // allows; a started one always runs on (it holds work in the executor).
        let namespace = job.namespace().unwrap_or_default();
        let limit = match (&record, concurrency) {
            (None, Some(max)) => Some((namespace.as_str(), max)),
            _ => None,
        };
        if let Err(running) = ctx
            .supervisors
            .ensure_within(&uid, &object_key(job), limit, || launch)
        {
            let mut status = waiting_for_quota(running, &policy, generation, previous, &now);
            status.job_id = Some(id);
            write_status(api, &name, previous, status, ctx, &uid).await?;
            return Ok(Action::requeue(ctx.config.status_interval));
        }
    }
    if let Some(error) = snapshot.and_then(|s| s.last_error) {
        report_driver_error(ctx, &uid, &reference, &error).await;
    }

    // Status, children, events: computed from the rows under the cache's lock, written after
    // it is released (the driver waits for that lock on its next tick).
    let cache = ctx.task_cache(&uid);
    let mut rows = cache.lock().await;
    let tasks = match &record {
        Some(_) => rows.refresh(state.as_ref(), &id).await?,
        None => &[],
    };
    let groups = taskgroups::desired(job, tasks);
    let mut status = match &rejected {
        Some(message) => validation_failure(generation, &now, &[rejection(message)]),
        None => job_status(record.as_ref(), tasks, generation, previous, &now),
    };
    drop(rows);
    status.job_id = Some(id.clone());
    status.retried = retried;
    transition_events(
        ctx,
        &reference,
        previous,
        &status,
        record.as_ref(),
        rejected.is_some(),
    )
    .await;
    write_status(api, &name, previous, status, ctx, &uid).await?;
    // TaskGroups are a view of the job's tasks: one the API server refuses must not hold back
    // the job itself (a failed reconcile waits up to minutes before the next), so it is said
    // and written again at the next status interval.
    let groups_written = match sync_task_groups(
        job,
        groups,
        ctx,
        platform.backends().audit.as_ref(),
        &policy,
    )
    .await
    {
        Ok(()) => true,
        Err(e) => {
            warn!(%name, error = %e, category = ?e.category(), "cannot write the job's TaskGroups");
            false
        }
    };

    Ok(if (terminal || rejected.is_some()) && groups_written {
        Action::await_change()
    } else {
        Action::requeue(ctx.config.status_interval)
    })
}

/// What runs for an object.
enum Prepared {
    /// The rules and the namespace's policy accept its spec.
    Accepted(PreparedJob),
    /// The rules or the policy refuse a job that has started (an edit, or a policy changed
    /// since): it runs on with the spec recorded when it started.
    EditRefused(PreparedJob, Refusal),
    /// The rules or the policy refuse a job that never started.
    Refused(Refusal),
}

async fn prepare(job: &OrchJob, ctx: &Context) -> Result<Prepared> {
    let policies = ctx.policy_list();
    let refusal = match prepare_job(job, &ctx.config, &policies) {
        Ok(prepared) => return Ok(Prepared::Accepted(prepared)),
        Err(refusal) => refusal,
    };
    Ok(match recorded_job(job, ctx, &policies).await? {
        Some(prepared) => Prepared::EditRefused(prepared, refusal),
        None => Prepared::Refused(refusal),
    })
}

/// The job as recorded when it started, if it did: looked up in its namespace's storage. A
/// store that cannot be reached is an error, not "never started": refusing a running job
/// would orphan its tasks. Its Slurm token comes from its namespace's policy as it is now.
async fn recorded_job(
    job: &OrchJob,
    ctx: &Context,
    policies: &[(String, PolicySpec)],
) -> Result<Option<PreparedJob>> {
    let Some(storage) = namespace_storage(job, &ctx.config, policies) else {
        return Ok(None);
    };
    let platform = match ctx.platforms.get(&storage).await {
        Ok(platform) => platform,
        Err(e) if e.category() == ErrorCategory::Invalid => return Ok(None),
        Err(e) => return Err(e),
    };
    let record = platform.backends().state.get_job(&job_id(job)).await?;
    let policy = governing(job, policies).ok();
    Ok(record.map(|r| PreparedJob {
        loaded: LoadedJob {
            file: r.spec,
            path: job_path(job),
            rate_limits: Vec::new(),
        },
        policy: policy.map(|(n, _)| n.to_string()).unwrap_or_default(),
        slurm_token: policy
            .and_then(|(_, p)| p.slurm.as_ref()?.token_secret.clone())
            .map(SlurmToken::Secret),
        limits: Default::default(),
    }))
}

/// A spec that cannot run: `Failed` with reason `InvalidSpec` or `PolicyDenied` and the
/// problems, and one Event — once per generation (the status of an unchanged refused spec is
/// left as written).
async fn refuse(
    job: &OrchJob,
    api: &Api<OrchJob>,
    ctx: &Context,
    refusal: &Refusal,
) -> Result<Action> {
    let uid = job.uid().unwrap_or_default();
    let generation = job.metadata.generation.unwrap_or(0);
    ctx.supervisors.stop(&uid).await;
    let previous = job.status.as_ref();
    if already_failed_for(previous, generation) {
        ctx.note_phase(&uid, Some(JobPhase::Failed));
        return Ok(Action::await_change());
    }
    let (status, reason) = match refusal {
        Refusal::Invalid(errors) => (
            validation_failure(generation, &now_rfc3339(), errors),
            "InvalidSpec",
        ),
        Refusal::Denied(errors) => (
            policy_denial(generation, &now_rfc3339(), errors),
            orch_core::policy::POLICY_DENIED,
        ),
    };
    let message = failed_message(&status);
    warn!(name = %job.name_any(), reason, %message, "job refused");
    // A denial is an action of the operator's: audited. An invalid spec is the user's own.
    let audit = match refusal {
        Refusal::Denied(_) => denial_audit(job, ctx).await?,
        Refusal::Invalid(_) => None,
    };
    match audit {
        Some((log, policy)) => {
            act(
                ctx,
                log.as_ref(),
                job,
                &policy,
                EventType::Warning,
                reason,
                &message,
            )
            .await
        }
        None => {
            publish(
                ctx,
                &job.object_ref(&()),
                EventType::Warning,
                reason,
                &message,
            )
            .await
        }
    }
    write_status(api, &job.name_any(), previous, status, ctx, &uid).await?;
    Ok(Action::await_change())
}

/// Where a policy denial of `job` is audited, and the policy that denied it: the namespace's
/// storage, or the operator's own when no policy names the namespace.
async fn denial_audit(job: &OrchJob, ctx: &Context) -> Result<Option<(Arc<dyn AuditLog>, String)>> {
    let policies = ctx.policy_list();
    let policy = governing(job, &policies)
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let Some(storage) =
        namespace_storage(job, &ctx.config, &policies).or_else(|| ctx.config.storage_uri.clone())
    else {
        error!(name = %job.name_any(), "no storage for the audit log of a policy denial");
        return Ok(None);
    };
    let platform = ctx.platforms.get(&storage).await?;
    Ok(Some((platform.backends().audit.clone(), policy)))
}

/// Deletion: cancel what runs, purge when asked, then let the object go.
async fn cleanup(job: &OrchJob, api: &Api<OrchJob>, ctx: &Context) -> Result<Action> {
    let uid = job.uid().unwrap_or_default();
    if !job.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.supervisors.stop(&uid).await;
        return Ok(Action::await_change());
    }
    // A spec the rules refuse that never ran: nothing to clean up.
    if let Prepared::Accepted(prepared) | Prepared::EditRefused(prepared, _) =
        prepare(job, ctx).await?
    {
        let loaded = prepared.loaded.clone();
        let storage = loaded.file.spec.storage.uri.clone().unwrap_or_default();
        let platform = ctx.platforms.get(&storage).await?;
        let state = platform.backends().state.clone();
        let id = job_id(job);
        let record = state.get_job(&id).await?;
        if let Some(r) = record.as_ref().filter(|r| !r.phase.is_terminal()) {
            // The driver stops the tasks (scancel, pod deletion) and ends the job.
            if control::request_cancel(state.as_ref(), r).await? {
                act(
                    ctx,
                    platform.backends().audit.as_ref(),
                    job,
                    &prepared.policy,
                    EventType::Normal,
                    "Cancelling",
                    "the OrchJob is being deleted: stopping its tasks first",
                )
                .await;
            }
            let slurm_token = ctx.slurm_token(&prepared).await?;
            let budget = prepared.limits.plan_budget();
            if let Ok(launch) = launch(job, loaded, slurm_token, budget, &id, platform.clone(), ctx)
            {
                ctx.supervisors.ensure(&uid, &object_key(job), || launch);
            }
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        ctx.supervisors.stop(&uid).await;
        if record.is_some() && annotation(job, PURGE_ANNOTATION) == Some("true") {
            control::purge(state.as_ref(), platform.backends().objects.as_ref(), &id).await?;
            act(
                ctx,
                platform.backends().audit.as_ref(),
                job,
                &prepared.policy,
                EventType::Normal,
                "Purged",
                "the job's manifests, batches, results and state were deleted",
            )
            .await;
        }
    } else {
        ctx.supervisors.stop(&uid).await;
    }
    let finalizers = job
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, job, finalizers).await?;
    ctx.note_phase(&uid, None);
    ctx.forget(&uid);
    info!(name = %job.name_any(), "OrchJob deleted");
    Ok(Action::await_change())
}

/// What a supervisor needs to run `job`: with `executor.kubernetes`, its Indexed Jobs executor
/// (built without a request; a spec no pod can have is refused here, as `InvalidSpec`).
fn launch(
    job: &OrchJob,
    loaded: LoadedJob,
    slurm_token: Option<TokenSource>,
    budget: PlanBudget,
    id: &str,
    platform: Arc<dyn Platform>,
    ctx: &Context,
) -> Result<Launch, FieldError> {
    let executor: Option<Arc<dyn Executor>> = match &loaded.file.spec.executor.kubernetes {
        Some(spec) => {
            let kube = KubeLaunch {
                namespace: job.namespace().unwrap_or_default(),
                owner: kube_executor::owner_reference(job),
                orch_job_name: job.name_any(),
                job_id: id.to_string(),
                storage: platform.storage_uri(),
                default_image: ctx.config.worker_image.clone().unwrap_or_default(),
                worker_command: ctx.config.pod_worker_command.clone(),
                resources: loaded.file.spec.resources.clone(),
                scratch_bytes: ctx.config.worker_scratch_bytes,
                spec: spec.clone(),
                environment: kube_executor::worker_environment(),
                secrets: loaded.file.spec.handler.secret_env(),
            };
            match KubeExecutor::new(ctx.client.clone(), kube) {
                Ok(executor) => Some(Arc::new(executor)),
                Err(KubeExecutorError::Invalid { field, reason }) => {
                    return Err(FieldError {
                        path: field,
                        message: reason,
                    });
                }
                Err(e) => {
                    return Err(FieldError {
                        path: "spec.executor.kubernetes".into(),
                        message: e.to_string(),
                    });
                }
            }
        }
        None => None,
    };
    Ok(Launch {
        job: loaded,
        job_id: id.to_string(),
        generation: job.metadata.generation.unwrap_or(0),
        platform,
        executors: Arc::new(Executors {
            worker_command: ctx.config.worker_command.clone(),
            kubernetes: executor,
            // The operator's environment is its own, not the tenant's.
            pass_handler_environment: false,
            slurm_plain_http: if ctx.config.slurm_allow_http_loopback {
                PlainHttp::Loopback
            } else {
                PlainHttp::Refused
            },
            slurm_token,
        }),
        tick: ctx.config.tick,
        task_cache: ctx.task_cache(&job.uid().unwrap_or_default()),
        budget,
        metrics: ctx.metrics.jobs_driven.clone(),
        emf: ctx.metrics.emf.clone(),
        alerts: crate::alerts::options(
            ctx.client.clone(),
            ctx.recorder.clone(),
            job.object_ref(&()),
            job.namespace().unwrap_or_default(),
        ),
    })
}

/// `namespace/name`, for logs.
fn object_key(job: &OrchJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// What a retry request runs again, from its `orch.dev/retry-items` annotation.
fn retry_choice(items: Option<&str>) -> RetryChoice {
    match items.map(str::trim) {
        None | Some("") => RetryChoice::Tasks,
        Some(RETRY_ALL_ITEMS) => RetryChoice::Items { kinds: Vec::new() },
        Some(kinds) => RetryChoice::Items {
            kinds: kinds
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect(),
        },
    }
}

fn annotation<'a>(job: &'a OrchJob, key: &str) -> Option<&'a str> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Replaces the finalizer list, on the version read (a conflict retries the reconcile).
async fn set_finalizers(api: &Api<OrchJob>, job: &OrchJob, finalizers: Vec<String>) -> Result<()> {
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": job.resource_version(),
        }
    });
    api.patch(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Writes the status with server-side apply on the status subresource, unless unchanged.
async fn write_status(
    api: &Api<OrchJob>,
    name: &str,
    previous: Option<&OrchJobStatus>,
    status: OrchJobStatus,
    ctx: &Context,
    uid: &str,
) -> Result<()> {
    ctx.note_phase(uid, status.phase);
    if previous == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": orch_crd::API_VERSION,
        "kind": "OrchJob",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Applies the job's `TaskGroup`s whose spec or status changed. A group seen for the first
/// time is a submission made on the tenant's behalf: it is audited (`Submitted`).
async fn sync_task_groups(
    job: &OrchJob,
    groups: Vec<(TaskGroup, TaskGroupStatus)>,
    ctx: &Context,
    audit: &dyn AuditLog,
    policy: &str,
) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let namespace = job.namespace().unwrap_or_default();
    let api: Api<TaskGroup> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing: HashMap<String, TaskGroup> = api
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            taskgroups::JOB_LABEL,
            job.name_any()
        )))
        .await?
        .items
        .into_iter()
        .map(|tg| (tg.name_any(), tg))
        .collect();
    let params = PatchParams::apply(MANAGER).force();
    for (group, status) in groups {
        let name = group.name_any();
        let current = existing.get(&name);
        if current.map(|c| &c.spec) != Some(&group.spec) {
            api.patch(&name, &params, &Patch::Apply(&group)).await?;
            if current.is_none() {
                let ids = match (&group.spec.executor_ids, &group.spec.executor_range) {
                    (Some(ids), _) => ids.join(", "),
                    (None, Some(r)) => format!("{}[{}-{}]", r.prefix, r.first, r.last),
                    (None, None) => "not known yet".into(),
                };
                let note = format!(
                    "task group {} submitted: {} task(s), executor ids {ids}",
                    group.spec.group, group.spec.tasks
                );
                act(
                    ctx,
                    audit,
                    job,
                    policy,
                    EventType::Normal,
                    "Submitted",
                    &note,
                )
                .await;
            }
        }
        if current.and_then(|c| c.status.as_ref()) != Some(&status) {
            let patch = json!({
                "apiVersion": orch_crd::API_VERSION,
                "kind": "TaskGroup",
                "status": status,
            });
            api.patch_status(&name, &params, &Patch::Apply(&patch))
                .await?;
        }
    }
    Ok(())
}

/// Events for the job's visible changes: started, suspended, succeeded, failed.
async fn transition_events(
    ctx: &Context,
    reference: &ObjectReference,
    previous: Option<&OrchJobStatus>,
    status: &OrchJobStatus,
    record: Option<&JobRecord>,
    rejected: bool,
) {
    let before = previous.and_then(|p| p.phase);
    let after = status.phase;
    if before == after {
        return;
    }
    let (kind, reason, note) = match after {
        Some(JobPhase::Running) if before == Some(JobPhase::Suspended) => return,
        Some(JobPhase::Running) => (
            EventType::Normal,
            "Started",
            record.map_or_else(String::new, |r| {
                format!(
                    "job {} planned: {} tasks over {} items",
                    r.id, r.total_tasks, r.total_items
                )
            }),
        ),
        Some(JobPhase::Succeeded) => (
            EventType::Normal,
            "Completed",
            match &status.output {
                Some(out) => format!("the job succeeded; output at {out}"),
                None => "the job succeeded".to_string(),
            },
        ),
        Some(JobPhase::Failed) => (
            EventType::Warning,
            if rejected { "InvalidSpec" } else { "Failed" },
            failed_message(status),
        ),
        _ => return,
    };
    publish(ctx, reference, kind, reason, &note).await;
}

async fn report_driver_error(ctx: &Context, uid: &str, reference: &ObjectReference, error: &str) {
    {
        let mut reported = ctx
            .reported_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if reported.get(uid).map(String::as_str) == Some(error) {
            return;
        }
        reported.insert(uid.to_string(), error.to_string());
    }
    publish(
        ctx,
        reference,
        EventType::Warning,
        "DriverError",
        &format!("the job's driver failed and is run again: {error}"),
    )
    .await;
}

fn already_failed_for(previous: Option<&OrchJobStatus>, generation: i64) -> bool {
    previous.is_some_and(|p| {
        p.phase == Some(JobPhase::Failed) && p.observed_generation == Some(generation)
    })
}

fn failed_message(status: &OrchJobStatus) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.r#type == orch_crd::JobConditionType::Failed)
        .and_then(|c| c.message.clone())
        .unwrap_or_else(|| "the job failed".to_string())
}

/// An action taken on the tenant's behalf: appended to the audit log of the job's storage,
/// with the policy that allowed it, and published as an Event with the same reason. A failed
/// append is logged as an error (the action has been taken; the reconcile goes on).
async fn act(
    ctx: &Context,
    audit: &dyn AuditLog,
    job: &OrchJob,
    policy: &str,
    kind: EventType,
    reason: &str,
    note: &str,
) {
    let entry = AuditEntry {
        at: orch_core::model::now_ms(),
        namespace: job.namespace().unwrap_or_default(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        job: job_id(job),
        policy: policy.to_string(),
        action: reason.to_string(),
        detail: note.chars().take(1000).collect(),
    };
    if let Err(e) = audit.append(&entry).await {
        error!(error = %e, action = reason, name = %entry.name, "could not append to the audit log");
    }
    publish(ctx, &job.object_ref(&()), kind, reason, note).await;
}

/// Publishes an Event; a failure to do so is logged, never fails the reconcile.
async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    kind: EventType,
    reason: &str,
    note: &str,
) {
    // The API server caps an Event's note at 1 KB.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_: kind,
        reason: reason.to_string(),
        note: Some(note),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        warn!(error = %e, reason, "could not publish an Event");
    }
}

/// Now in RFC 3339, to the second.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
