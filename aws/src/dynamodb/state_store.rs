//! The [`StateStore`] contract on the table. Every write of a record is conditional on
//! `version` and increments it; a lost condition is a [`BackendError::Conflict`], unless the
//! item carries this write's own `writeId` (the SDK retried a write whose answer was lost).
//! Workers may only `GetItem`, `UpdateItem` and `Query` (IAM, docs/aws.md), so updates are
//! `UpdateItem`s, never `PutItem`s.
//!
//! Creating and deleting a job take many requests, so the job item carries `incomplete`
//! (`creating` or `deleting`) meanwhile: `create_job` writes the job item first, conditional
//! on its absence (a second `create_job` of the id is a `Conflict` before it touches any
//! task), then the tasks, then removes the mark; `delete_job` marks the job, deletes the tasks,
//! then the job item. A marked job is invisible (`get_job` reads `None`, `list_jobs` skips it,
//! `update_job` is `NotFound`) until [`DynamoStateStore::list_incomplete_jobs`] finds it and
//! `delete_job` removes it.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use orch_core::ErrorCategory;
use orch_core::backend::{
    BackendError, BackendResult, Claimed, StateStore, TaskChanges, TaskClaim, check_tasks_of,
    claim_by_rewrite, next_version,
};
use orch_core::history::AttemptRecord;
use orch_core::model::{JobRecord, TaskRecord, TaskState};

use super::batch::{delete_request, put_request};
use super::changes::JobStamp;
use super::item::{
    ATTEMPT_SK_PREFIX, BODY, CLAIM_OWNER, CLAIMED_AT, CREATING, DELETING, ENDED, GROUP, GSI1PK,
    GSI1SK, GSI2PK, GSI2SK, INCOMPLETE, JOB_SK, LEASE_EXPIRY, PHASE, PK, SK, STATE, VERSION,
    WRITE_ID, attempt_sk, attempt_sk_of_task, check_job_id, decode_attempt, decode_job,
    decode_task, encode, get_s, indexed, is_own_write, job_item, jobs_sk, key, n, new_write_id, s,
    task_item, task_sk,
};
use super::{DynamoStateStore, SERVICE};
use crate::error::sdk_error;

impl DynamoStateStore {
    /// Deletes the given tasks of `job`, best effort, after a creation lost its job: logs
    /// rather than fails, the caller already has an error to report.
    async fn discard_tasks(&self, job: &str, tasks: &[TaskRecord]) {
        let requests = tasks
            .iter()
            .map(|t| delete_request(key(self.keys.job_pk(job), task_sk(t.id))))
            .collect::<BackendResult<Vec<_>>>();
        let result = match requests {
            Ok(requests) => self.write_batches(requests).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(job, error = %e, "cannot remove the tasks of a job whose creation failed");
        }
    }
}

#[async_trait]
impl StateStore for DynamoStateStore {
    async fn create_job(&self, job: &JobRecord, tasks: &[TaskRecord]) -> BackendResult<()> {
        check_job_id(&job.id)?;
        check_tasks_of(&job.id, tasks)?;
        let mut seen = HashSet::with_capacity(tasks.len());
        for task in tasks {
            if !seen.insert(task.id) {
                return Err(BackendError::message(
                    ErrorCategory::Invalid,
                    format!("job {}: task id {} given twice", job.id, task.id),
                ));
            }
        }
        // Whatever this instance knew of a job of this id is void.
        self.changes.forget(&job.id);
        // Encode everything before the first write, so a bad record cannot leave a half job.
        let requests = tasks
            .iter()
            .map(|t| task_item(&self.keys, t).and_then(put_request))
            .collect::<BackendResult<Vec<_>>>()?;
        let pk = self.keys.job_pk(&job.id);
        let resource = format!("{} {pk}", self.table);

        // 1. The job item, marked `creating`, only if the id is free.
        let write_id = new_write_id();
        let item = job_item(&self.keys, job, Some(CREATING), &write_id)?;
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        if let Err(e) = put {
            let lost_to = match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => Some(c.item()),
                _ => None,
            };
            match lost_to {
                // Our own put, retried: carry on.
                Some(Some(existing))
                    if get_s(existing, INCOMPLETE) == Some(CREATING)
                        && is_own_write(existing, &write_id, job.version) => {}
                Some(existing) => {
                    let how = match existing.and_then(|i| get_s(i, INCOMPLETE)) {
                        Some(mark) => format!(
                            "job {} (its {mark} did not finish; delete_job removes it)",
                            job.id
                        ),
                        None => format!("job {} (it exists)", job.id),
                    };
                    return Err(BackendError::Conflict(how));
                }
                None => return Err(sdk_error(SERVICE, "PutItem", resource, e).into()),
            }
        }

        // 2. The tasks. A failure removes what was written (while the mark keeps the job
        // invisible); if even that fails, the mark tells `list_incomplete_jobs` about it.
        if let Err(e) = self.write_batches(requests).await {
            if let Err(cleanup) = self.delete_job(&job.id).await {
                tracing::warn!(
                    job = %job.id,
                    error = %cleanup,
                    "cannot remove a half-created job; it stays marked incomplete"
                );
            }
            return Err(e);
        }

        // 3. Visible: remove the mark. Not a change of the record, so the version stays.
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), JOB_SK.into())))
            .update_expression("REMOVE #inc")
            .condition_expression("#inc = :creating AND #v = :v")
            .expression_attribute_names("#inc", INCOMPLETE)
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_values(":creating", s(CREATING))
            .expression_attribute_values(":v", n(job.version))
            .send()
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) => {
                let conflict = matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                );
                if !conflict {
                    return Err(sdk_error(SERVICE, "UpdateItem", resource, e).into());
                }
                // Our own update, retried after its answer was lost, finds the mark gone: the
                // job is there and unmarked (and may even have been updated since by someone
                // who saw it). Only a missing or `deleting` job means a delete_job won.
                match self.job_item_raw(&job.id).await? {
                    Some(item) if !item.contains_key(INCOMPLETE) => return Ok(()),
                    Some(item) if get_s(&item, INCOMPLETE) == Some(CREATING) => {
                        return Err(BackendError::message(
                            ErrorCategory::Transient,
                            format!("job {}: could not mark its creation finished", job.id),
                        ));
                    }
                    _ => {}
                }
                // A delete_job ran meanwhile; it may have queried the tasks before these were
                // all written, so remove ours rather than leave them behind.
                self.discard_tasks(&job.id, tasks).await;
                Err(BackendError::Conflict(format!(
                    "job {} was deleted while it was being created",
                    job.id
                )))
            }
        }
    }

    async fn add_tasks(&self, job: &str, tasks: &[TaskRecord]) -> BackendResult<()> {
        check_job_id(job)?;
        check_tasks_of(job, tasks)?;
        let items = tasks
            .iter()
            .map(|t| task_item(&self.keys, t))
            .collect::<BackendResult<Vec<_>>>()?;
        if self.get_job(job).await?.is_none() {
            return Err(BackendError::NotFound(format!("job {job}")));
        }
        let resource = format!("{} {}", self.table, self.keys.job_pk(job));
        // One conditional put per row: a row that exists (an earlier, interrupted call) is
        // left as it is. Aggregation adds a few rows per thousand tasks, so no batching.
        for (task, item) in tasks.iter().zip(items) {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .send()
                .await;
            match put {
                Ok(_) => self.changes.wrote_task(job, task.id, Some(task)),
                // The row as it was, unknown here.
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(PutItemError::ConditionalCheckFailedException(_))
                    ) =>
                {
                    self.changes.wrote_task(job, task.id, None)
                }
                Err(e) => {
                    self.changes.wrote_task(job, task.id, None);
                    return Err(sdk_error(SERVICE, "PutItem", resource.clone(), e).into());
                }
            }
        }
        Ok(())
    }

    async fn get_job(&self, job: &str) -> BackendResult<Option<JobRecord>> {
        // The driver reads the job every tick: `list_tasks_since` compares what it read.
        let ticket = self.changes.ticket();
        let item = self.job_item_raw(job).await?;
        self.changes
            .observed(job, ticket, JobStamp::of(item.as_ref()));
        match item {
            Some(item) if !item.contains_key(INCOMPLETE) => decode_job(&item).map(Some),
            _ => Ok(None),
        }
    }

    async fn list_jobs(&self) -> BackendResult<Vec<JobRecord>> {
        self.job_items()
            .await?
            .iter()
            .filter(|item| !item.contains_key(INCOMPLETE))
            .map(decode_job)
            .collect()
    }

    async fn update_job(&self, job: &JobRecord) -> BackendResult<JobRecord> {
        let mut stored = job.clone();
        stored.version = next_version(&format!("job {}", job.id), job.version)?;
        let pk = self.keys.job_pk(&job.id);
        let body = encode("job", &stored)?;
        let write_id = new_write_id();
        let ticket = self.changes.ticket();
        let written = JobStamp::new(stored.version, Some(&write_id));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), JOB_SK.into())))
            .update_expression(
                "SET #body = :body, #v = :next, #phase = :phase, #g2pk = :g2pk, #g2sk = :g2sk, \
                 #w = :w",
            )
            .condition_expression("#v = :expected AND attribute_not_exists(#inc)")
            .expression_attribute_names("#body", BODY)
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_names("#phase", PHASE)
            .expression_attribute_names("#g2pk", GSI2PK)
            .expression_attribute_names("#g2sk", GSI2SK)
            .expression_attribute_names("#inc", INCOMPLETE)
            .expression_attribute_names("#w", WRITE_ID)
            .expression_attribute_values(":w", s(&write_id))
            .expression_attribute_values(":body", s(body))
            .expression_attribute_values(":next", n(stored.version))
            .expression_attribute_values(":phase", s(stored.phase.as_str()))
            .expression_attribute_values(":g2pk", s(self.keys.jobs_partition()))
            .expression_attribute_values(":g2sk", s(jobs_sk(&stored)))
            .expression_attribute_values(":expected", n(job.version))
            // The `writeId` it replaced, so that `list_tasks_since` knows this write for ours.
            .return_values(ReturnValue::UpdatedOld)
            // The item as it was, when the condition fails: Conflict or NotFound without
            // another read.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let before = out.attributes().and_then(|old| get_s(old, WRITE_ID));
                let before = JobStamp::new(job.version, before);
                self.changes
                    .wrote_job(&job.id, ticket, Some(before), written);
                Ok(stored)
            }
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    return match c.item() {
                        Some(item) if is_own_write(item, &write_id, stored.version) => {
                            // Which write it replaced is lost with the first answer.
                            self.changes.wrote_job(&job.id, ticket, None, written);
                            Ok(stored)
                        }
                        Some(item) if !item.contains_key(INCOMPLETE) => {
                            Err(BackendError::Conflict(format!(
                                "job {} at version {}",
                                job.id, job.version
                            )))
                        }
                        _ => Err(BackendError::NotFound(format!("job {}", job.id))),
                    };
                }
                Err(sdk_error(SERVICE, "UpdateItem", format!("{} {pk}", self.table), e).into())
            }
        }
    }

    async fn list_tasks(&self, job: &str) -> BackendResult<Vec<TaskRecord>> {
        let items = self.task_items(job, false).await?;
        let mut tasks = items
            .iter()
            .map(decode_task)
            .collect::<BackendResult<Vec<_>>>()?;
        // The key order is the id order only below a million (see `task_sk`).
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    /// Reads only what changed when this instance drives the job (see `changes`).
    async fn list_tasks_since(&self, job: &str, cursor: Option<u64>) -> BackendResult<TaskChanges> {
        self.tasks_since(job, cursor).await
    }

    async fn get_task(&self, job: &str, task: u32) -> BackendResult<Option<TaskRecord>> {
        let pk = self.keys.job_pk(job);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), task_sk(task))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "GetItem", format!("{} {pk}", self.table), e))?;
        out.item.as_ref().map(decode_task).transpose()
    }

    async fn update_task(&self, task: &TaskRecord) -> BackendResult<TaskRecord> {
        let name = format!("task {}/{}", task.job, task.id);
        let mut stored = task.clone();
        stored.version = next_version(&name, task.version)?;
        let pk = self.keys.job_pk(&task.job);
        // `leaseExpiry` follows the record on every write, so an expired lease can be found
        // with the `by-state` index and a filter (see `expired_leases`).
        let body = encode("task", &stored)?;
        let write_id = new_write_id();
        // A claim written on its own is folded into the body now: its attributes go.
        let mut set = vec!["#body = :body", "#v = :next", "#state = :state", "#w = :w"];
        let mut remove = vec!["#co", "#ca"];
        // The `by-state` index is sparse: a task leaves it by losing its key.
        let in_index = indexed(stored.state);
        if in_index {
            set.extend(["#g1pk = :g1pk", "#g1sk = :g1sk"]);
        } else {
            remove.extend(["#g1pk", "#g1sk"]);
        }
        match stored.lease_expiry {
            Some(_) => set.push("#le = :le"),
            None => remove.push("#le"),
        }
        match stored.group {
            Some(_) => set.push("#grp = :grp"),
            None => remove.push("#grp"),
        }
        let expression = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), task_sk(task.id))))
            .update_expression(expression)
            // A missing item has no version, so this also refuses to create one.
            .condition_expression("#v = :expected")
            .expression_attribute_names("#body", BODY)
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_names("#state", STATE)
            .expression_attribute_names("#g1pk", GSI1PK)
            .expression_attribute_names("#g1sk", GSI1SK)
            .expression_attribute_names("#le", LEASE_EXPIRY)
            .expression_attribute_names("#w", WRITE_ID)
            .expression_attribute_names("#grp", GROUP)
            .expression_attribute_names("#co", CLAIM_OWNER)
            .expression_attribute_names("#ca", CLAIMED_AT)
            .expression_attribute_values(":w", s(&write_id))
            .expression_attribute_values(":body", s(body))
            .expression_attribute_values(":next", n(stored.version))
            .expression_attribute_values(":state", s(stored.state.as_str()))
            .expression_attribute_values(":expected", n(task.version))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(expiry) = stored.lease_expiry {
            request = request.expression_attribute_values(":le", n(expiry));
        }
        if let Some(group) = stored.group {
            request = request.expression_attribute_values(":grp", n(u64::from(group)));
        }
        if in_index {
            request = request
                .expression_attribute_values(":g1pk", s(self.keys.active_pk(&stored.job)))
                .expression_attribute_values(":g1sk", s(task_sk(stored.id)));
        }
        let answer = request.send().await;
        match answer {
            Ok(_) => {
                self.changes.wrote_task(&task.job, task.id, Some(&stored));
                Ok(stored)
            }
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    return match c.item() {
                        Some(item) if is_own_write(item, &write_id, stored.version) => {
                            self.changes.wrote_task(&task.job, task.id, Some(&stored));
                            Ok(stored)
                        }
                        Some(_) => {
                            // Another writer's row (a worker, the previous driver): the next
                            // refresh reads it, since the caller may drop the conflict.
                            self.changes.wrote_task(&task.job, task.id, None);
                            Err(BackendError::Conflict(format!(
                                "{name} at version {}",
                                task.version
                            )))
                        }
                        None => Err(BackendError::NotFound(name)),
                    };
                }
                // The write may have landed.
                self.changes.wrote_task(&task.job, task.id, None);
                Err(sdk_error(SERVICE, "UpdateItem", format!("{} {pk}", self.table), e).into())
            }
        }
    }

    /// One conditional `UpdateItem`, without reading the row first: the claim's facts go into
    /// attributes of their own beside the body (see `item::CLAIM_OWNER`), and the item as the
    /// claim left it comes back with the answer.
    async fn claim_task(&self, claim: &TaskClaim<'_>) -> BackendResult<Claimed> {
        let pk = self.keys.job_pk(claim.job);
        let write_id = new_write_id();
        let answer = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), task_sk(claim.task))))
            .update_expression(
                "SET #state = :running, #g1pk = :g1pk, #g1sk = :g1sk, #le = :le, #co = :owner, \
                 #ca = :now, #v = #v + :one, #w = :w",
            )
            .condition_expression("#state = :dispatched AND #grp = :grp")
            .expression_attribute_names("#state", STATE)
            .expression_attribute_names("#g1pk", GSI1PK)
            .expression_attribute_names("#g1sk", GSI1SK)
            .expression_attribute_names("#le", LEASE_EXPIRY)
            .expression_attribute_names("#co", CLAIM_OWNER)
            .expression_attribute_names("#ca", CLAIMED_AT)
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_names("#w", WRITE_ID)
            .expression_attribute_names("#grp", GROUP)
            .expression_attribute_values(":running", s(TaskState::Running.as_str()))
            .expression_attribute_values(":dispatched", s(TaskState::Dispatched.as_str()))
            .expression_attribute_values(":g1pk", s(self.keys.active_pk(claim.job)))
            .expression_attribute_values(":g1sk", s(task_sk(claim.task)))
            .expression_attribute_values(":le", n(claim.lease_expiry))
            .expression_attribute_values(":owner", s(claim.worker))
            .expression_attribute_values(":now", n(claim.now))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(&write_id))
            .expression_attribute_values(":grp", n(u64::from(claim.group)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match answer {
            Ok(out) => {
                let row = out.attributes().map(decode_task).transpose();
                self.changes.wrote_task(
                    claim.job,
                    claim.task,
                    row.as_ref().ok().and_then(Option::as_ref),
                );
                match row? {
                    Some(row) => Ok(Claimed::Yes(row)),
                    None => Err(corrupt_answer(claim)),
                }
            }
            Err(e) => {
                let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                else {
                    self.changes.wrote_task(claim.job, claim.task, None);
                    return Err(sdk_error(
                        SERVICE,
                        "UpdateItem",
                        format!("{} {pk}", self.table),
                        e,
                    )
                    .into());
                };
                let Some(item) = c.item() else {
                    return Ok(Claimed::No(None));
                };
                let row = decode_task(item)?;
                if row.state == TaskState::Running
                    && row.lease_owner.as_deref() == Some(claim.worker)
                    && row.started_at == Some(claim.now)
                {
                    // The SDK retried this very claim, whose answer was lost (another write
                    // may have come since, so its `writeId` cannot tell).
                    self.changes.wrote_task(claim.job, claim.task, Some(&row));
                    return Ok(Claimed::Yes(row));
                }
                if claim.applies_to(&row) {
                    // Claimable, but written before items carried their group: the long way.
                    return claim_by_rewrite(self, claim).await;
                }
                // Another writer's row: the next refresh reads it.
                self.changes.wrote_task(claim.job, claim.task, None);
                Ok(Claimed::No(Some(row)))
            }
        }
    }

    async fn delete_job(&self, job: &str) -> BackendResult<()> {
        let pk = self.keys.job_pk(job);
        let resource = format!("{} {pk}", self.table);
        // Whatever this instance knew of the job is void.
        self.changes.forget(job);
        // 1. Mark the job, so that it disappears at once and a death half-way is detectable.
        let marked = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), JOB_SK.into())))
            .update_expression("SET #inc = :deleting")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#inc", INCOMPLETE)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":deleting", s(DELETING))
            .send()
            .await;
        if let Err(e) = marked {
            if matches!(
                e.as_service_error(),
                Some(UpdateItemError::ConditionalCheckFailedException(_))
            ) {
                // No job item: nothing to delete. Task items never outlive their job item
                // (it is written first and deleted last), and touching tasks here could
                // remove those of a creation that starts right now.
                return Ok(());
            }
            return Err(sdk_error(SERVICE, "UpdateItem", resource, e).into());
        }
        // 2. The tasks and the attempt records.
        let mut keys = self.task_items(job, true).await?;
        keys.extend(self.partition_items(job, ATTEMPT_SK_PREFIX, true).await?);
        let requests = keys
            .into_iter()
            .filter_map(|item| {
                let pk = item.get(PK)?.clone();
                let sk = item.get(SK)?.clone();
                Some(HashMap::from([(PK.to_string(), pk), (SK.to_string(), sk)]))
            })
            .map(delete_request)
            .collect::<BackendResult<Vec<_>>>()?;
        self.write_batches(requests).await?;
        // 3. The job item, unless another delete_job finished first (and the id was reused).
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, JOB_SK.into())))
            .condition_expression("#inc = :deleting")
            .expression_attribute_names("#inc", INCOMPLETE)
            .expression_attribute_values(":deleting", s(DELETING))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error(SERVICE, "DeleteItem", resource, e).into()),
        }
    }

    async fn put_attempt(&self, record: &AttemptRecord) -> BackendResult<()> {
        check_job_id(&record.job)?;
        let pk = self.keys.job_pk(&record.job);
        let ended = record.outcome.has_ended();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                pk.clone(),
                attempt_sk(record.task, record.attempt),
            )))
            .update_expression("SET #body = :body, #ended = :ended")
            .expression_attribute_names("#body", BODY)
            .expression_attribute_names("#ended", ENDED)
            .expression_attribute_values(":body", s(encode("attempt", record)?))
            .expression_attribute_values(":ended", n(u64::from(ended)));
        if !ended {
            request =
                request.condition_expression("attribute_not_exists(#ended) OR #ended = :ended");
        }
        match request.send().await {
            Ok(_) => Ok(()),
            // The attempt has ended meanwhile: that record stays (see the trait).
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => {
                Err(sdk_error(SERVICE, "UpdateItem", format!("{} {pk}", self.table), e).into())
            }
        }
    }

    async fn list_attempts(
        &self,
        job: &str,
        task: Option<u32>,
    ) -> BackendResult<Vec<AttemptRecord>> {
        let prefix = match task {
            Some(task) => attempt_sk_of_task(task),
            None => ATTEMPT_SK_PREFIX.to_string(),
        };
        let mut records = self
            .partition_items(job, &prefix, false)
            .await?
            .iter()
            .map(decode_attempt)
            .collect::<BackendResult<Vec<_>>>()?;
        // The key order is the numeric order only below a million (see `attempt_sk`).
        records.sort_by_key(|r| (r.task, r.attempt));
        Ok(records)
    }

    async fn list_tasks_in_state(
        &self,
        job: &str,
        state: TaskState,
    ) -> BackendResult<Vec<TaskRecord>> {
        if !indexed(state) {
            // Not in the sparse index: the job's rows, filtered.
            let mut tasks = self.list_tasks(job).await?;
            tasks.retain(|t| t.state == state);
            return Ok(tasks);
        }
        let pk = self.keys.active_pk(job);
        let items = self
            .query_all("Query by-state", &pk, false, || self.active_query(&pk))
            .await?;
        let mut tasks = items
            .iter()
            .map(decode_task)
            .collect::<BackendResult<Vec<_>>>()?;
        // The projection is the item as the index saw it: its body matches its partition.
        tasks.retain(|t| t.state == state);
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }
}

/// A claim's answer without the item it must return.
fn corrupt_answer(claim: &TaskClaim<'_>) -> BackendError {
    BackendError::message(
        ErrorCategory::Infrastructure,
        format!(
            "the claim of task {}/{} returned no item",
            claim.job, claim.task
        ),
    )
}
