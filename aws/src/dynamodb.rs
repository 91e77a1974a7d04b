//! The DynamoDB [`StateStore`]: job and task rows in orch's single table (docs/aws.md).
//!
//! In a cluster the coordinator and every worker share the job's state through one table, so
//! the layout is fixed by docs/aws.md (and the Terraform in `infra/` relies on it):
//! - a job is the item `pk = JOB#<job>`, `sk = JOB` with `version`, `phase`, `body` (the JSON
//!   [`JobRecord`]) and `gsi2pk = JOBS`, `gsi2sk = <createdAt:013>#<job>` for the `jobs` index;
//! - a task is the item `pk = JOB#<job>`, `sk = TASK#<task:06>` with `version`, `state`, `body`
//!   (the JSON [`TaskRecord`]), `gsi1pk = JOB#<job>#<state>`, `gsi1sk = TASK#<task:06>` for the
//!   `by-state` index, and `leaseExpiry` (ms) while the record has a lease.
//!
//! As in the SQLite store, `body` holds the whole record and the `version` attribute is
//! authoritative (the two are always written together and agree). Every write of a record is
//! conditional on `version` and increments it; a lost condition is a
//! [`BackendError::Conflict`]. Workers may only `GetItem`, `UpdateItem` and `Query` (IAM,
//! docs/aws.md), so updates are `UpdateItem`s, never `PutItem`s.
//!
//! **A retried write must not conflict with itself.** The SDK retries a request whose answer
//! was lost (connection reset, timeout) even if the server applied it; the retry then fails
//! its condition against its own result. A caller told `Conflict` would think it lost when it
//! won (the coordinator would never submit a task it had marked dispatched). So every
//! conditional write also stores a random `writeId`, and a failed condition asks for the item
//! as it is (`ReturnValuesOnConditionCheckFailure = ALL_OLD`): if it carries our `writeId` at
//! the version we wrote, the write was ours and succeeded. Besides `incomplete` (below) this is
//! the one attribute docs/aws.md does not list; neither is a key or indexed.
//!
//! **Creating and deleting a job take many requests** (the job item, then the tasks 25 per
//! `BatchWriteItem`), so a process may die half-way. The job item carries the attribute
//! `incomplete` (`creating` or `deleting`) while that happens:
//! - [`StateStore::create_job`] writes the job item first, conditional on its absence and marked
//!   `creating`, then the tasks, then removes the mark. A second `create_job` of the same id is
//!   a `Conflict` at the first step, before it can touch any task of the existing job.
//! - [`StateStore::delete_job`] marks the job `deleting`, deletes the tasks, then the job item.
//! - A marked job is invisible: `get_job` reads `None`, `list_jobs` skips it, `update_job` is
//!   `NotFound`, and `create_job` of its id is a `Conflict` that says what happened.
//!   [`DynamoStateStore::list_incomplete_jobs`] finds such jobs and `delete_job` removes one
//!   (it finishes a deletion, or cleans up a creation that died), after which the id is free.
//!
//! Reads of single items and of a job's partition are strongly consistent (`ConsistentRead`),
//! so a writer reads its own writes as the contract asks. The two indexes cannot be: `list_jobs`
//! and `list_tasks_in_state` may lag a moment behind the table on AWS (the bodies `list_jobs`
//! returns are read from the table, so they are current; which jobs it lists is from the index).
//! Every query is paginated and nothing ever scans the table.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    IndexStatus, KeySchemaElement, KeyType, PointInTimeRecoverySpecification, Projection,
    ProjectionType, PutRequest, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    SseSpecification, SseType, TableStatus, WriteRequest,
};
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, StateStore, next_version};
use orch_core::backoff::Backoff;
use orch_core::model::{JobRecord, Millis, TaskRecord, TaskState};

use crate::error::{AwsError, sdk_error};

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

const SERVICE: &str = "DynamoDB";

/// The GSI of the tasks of one job in one state (hash `gsi1pk`, range `gsi1sk`, projection ALL).
pub const INDEX_BY_STATE: &str = "by-state";
/// The GSI of the job list, newest last (hash `gsi2pk`, range `gsi2sk`, projection KEYS_ONLY).
pub const INDEX_JOBS: &str = "jobs";

const PK: &str = "pk";
const SK: &str = "sk";
const VERSION: &str = "version";
const PHASE: &str = "phase";
const STATE: &str = "state";
const BODY: &str = "body";
const GSI1PK: &str = "gsi1pk";
const GSI1SK: &str = "gsi1sk";
const GSI2PK: &str = "gsi2pk";
const GSI2SK: &str = "gsi2sk";
const LEASE_EXPIRY: &str = "leaseExpiry";
/// The id of the conditional write that left the item as it is (see [`is_own_write`]).
const WRITE_ID: &str = "writeId";
/// Marks a job item whose creation or deletion has not finished (see the module docs).
const INCOMPLETE: &str = "incomplete";
const CREATING: &str = "creating";
const DELETING: &str = "deleting";

/// `sk` of a job item.
const JOB_SK: &str = "JOB";
/// `gsi2pk` of every job item: the one partition of the `jobs` index.
const JOBS_PARTITION: &str = "JOBS";
/// Prefix of the `sk` of task items.
const TASK_SK_PREFIX: &str = "TASK#";

/// DynamoDB's limit per `BatchWriteItem`.
const BATCH_WRITE_MAX: usize = 25;
/// `GetItem`s in flight at once while listing jobs.
const READ_CONCURRENCY: usize = 8;
/// `BatchWriteItem` requests in flight at once while creating or deleting a job: enough to
/// write 100k tasks in tens of seconds rather than minutes, few enough not to trip the
/// per-partition write limit (all tasks of a job share one partition key).
const WRITE_CONCURRENCY: usize = 4;

fn job_pk(job: &str) -> String {
    format!("JOB#{job}")
}

/// `TASK#<task:06>`. Ids of a million and more have more digits and so no longer sort by
/// number in the key; [`DynamoStateStore::list_tasks`] sorts by id itself.
fn task_sk(task: u32) -> String {
    format!("{TASK_SK_PREFIX}{task:06}")
}

fn state_pk(job: &str, state: TaskState) -> String {
    format!("JOB#{job}#{}", state.as_str())
}

fn jobs_sk(job: &JobRecord) -> String {
    format!("{:013}#{}", job.created_at, job.id)
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
}

/// The name of an item for messages: its keys, never its contents.
fn item_name(item: &Item) -> String {
    format!(
        "{}/{}",
        get_s(item, PK).unwrap_or("?"),
        get_s(item, SK).unwrap_or("?")
    )
}

fn corrupt(what: &str, why: impl std::fmt::Display) -> BackendError {
    BackendError::message(
        ErrorCategory::Permanent,
        format!("corrupt state item {what}: {why}"),
    )
}

fn build_error(what: &str, e: BuildError) -> BackendError {
    AwsError::invalid(what, e.to_string()).into()
}

fn encode<T: serde::Serialize>(what: &str, record: &T) -> BackendResult<String> {
    serde_json::to_string(record).map_err(|e| {
        BackendError::other(ErrorCategory::Permanent, format!("cannot encode {what}"), e)
    })
}

fn version_of(what: &str, item: &Item) -> BackendResult<u64> {
    let raw = item
        .get(VERSION)
        .and_then(|v| v.as_n().ok())
        .ok_or_else(|| corrupt(what, "no numeric version"))?;
    raw.parse()
        .map_err(|_| corrupt(what, format!("version {raw:?} is not a count")))
}

/// Decodes a job item; the `version` attribute is authoritative.
fn decode_job(item: &Item) -> BackendResult<JobRecord> {
    let what = item_name(item);
    let body = get_s(item, BODY).ok_or_else(|| corrupt(&what, "no body"))?;
    let mut job: JobRecord =
        orch_core::model::decode_versioned(&what, body.as_bytes()).map_err(|e| {
            BackendError::other(
                ErrorCategory::Permanent,
                format!("corrupt state item {what}"),
                e,
            )
        })?;
    job.version = version_of(&what, item)?;
    Ok(job)
}

fn decode_task(item: &Item) -> BackendResult<TaskRecord> {
    let what = item_name(item);
    let body = get_s(item, BODY).ok_or_else(|| corrupt(&what, "no body"))?;
    let mut task: TaskRecord = serde_json::from_str(body).map_err(|e| {
        BackendError::other(
            ErrorCategory::Permanent,
            format!("corrupt state item {what}"),
            e,
        )
    })?;
    task.version = version_of(&what, item)?;
    Ok(task)
}

/// A fresh `writeId`: 128 random bits, so no two writes share one.
fn new_write_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Whether a write that lost its condition lost it to itself: the SDK retries a request whose
/// answer was lost (a reset connection, a timeout) although the server applied it, and the
/// retry then finds the item as this very write left it. Comparing bodies would not do: two
/// writers that both add 1 to the same count write the same bytes, and only one may win.
fn is_own_write(item: &Item, write_id: &str, version: u64) -> bool {
    get_s(item, WRITE_ID) == Some(write_id) && version_of("item", item).ok() == Some(version)
}

/// The complete item of a job, marked `incomplete` when given.
fn job_item(job: &JobRecord, incomplete: Option<&str>, write_id: &str) -> BackendResult<Item> {
    let mut item = key(job_pk(&job.id), JOB_SK.to_string());
    item.insert(WRITE_ID.into(), s(write_id));
    item.insert(VERSION.into(), n(job.version));
    item.insert(PHASE.into(), s(job.phase.as_str()));
    item.insert(BODY.into(), s(encode("job", job)?));
    item.insert(GSI2PK.into(), s(JOBS_PARTITION));
    item.insert(GSI2SK.into(), s(jobs_sk(job)));
    if let Some(mark) = incomplete {
        item.insert(INCOMPLETE.into(), s(mark));
    }
    Ok(item)
}

/// The complete item of a task.
fn task_item(task: &TaskRecord) -> BackendResult<Item> {
    let mut item = key(job_pk(&task.job), task_sk(task.id));
    item.insert(VERSION.into(), n(task.version));
    item.insert(STATE.into(), s(task.state.as_str()));
    item.insert(BODY.into(), s(encode("task", task)?));
    item.insert(GSI1PK.into(), s(state_pk(&task.job, task.state)));
    item.insert(GSI1SK.into(), s(task_sk(task.id)));
    if let Some(expiry) = task.lease_expiry {
        item.insert(LEASE_EXPIRY.into(), n(expiry));
    }
    Ok(item)
}

/// Job ids become parts of keys joined by `#`; one containing `#` could collide with another
/// job's state partition (`JOB#a#running`).
fn check_job_id(job: &str) -> BackendResult<()> {
    if job.is_empty() || job.contains('#') {
        return Err(BackendError::message(
            ErrorCategory::Invalid,
            format!("job id {job:?} must be non-empty and must not contain '#'"),
        ));
    }
    Ok(())
}

/// A job whose creation or deletion did not finish (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteJob {
    pub id: String,
    /// `true`: deleting; `false`: creating.
    pub deleting: bool,
}

/// Exponential backoff with jitter for the items a batch call leaves unprocessed (the SDK
/// retries whole failed calls itself; partial success is ours to handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRetry {
    /// The first wait; each further round waits up to twice as long.
    pub base: Duration,
    /// No single wait exceeds this.
    pub cap: Duration,
    /// Calls in all, the first included, before giving up with a transient error.
    pub max_calls: u32,
}

impl Default for BatchRetry {
    /// About a minute of patience in all: throttling of a hot partition clears in seconds.
    fn default() -> Self {
        BatchRetry {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(10),
            max_calls: 12,
        }
    }
}

impl BatchRetry {
    /// The wait before call `round + 1` (round 1 = the first retry): doubling from `base` up
    /// to `cap`, with equal jitter, so waits grow but concurrent writers spread out.
    pub fn delay(&self, round: u32) -> Duration {
        Backoff::doubling(self.base, self.cap).delay_jittered(round, fastrand::f64())
    }
}

/// Calls `call` with `items` until it leaves none unprocessed, waiting per `backoff` between
/// rounds; collects what the calls return. `call` answers with its results and the items it
/// did not process.
pub async fn retry_unprocessed<T, R, F, Fut>(
    what: &str,
    mut items: Vec<T>,
    backoff: BatchRetry,
    mut call: F,
) -> BackendResult<Vec<R>>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = BackendResult<(Vec<R>, Vec<T>)>>,
{
    let mut results = Vec::new();
    let mut calls = 0u32;
    while !items.is_empty() {
        if calls > 0 {
            if calls >= backoff.max_calls {
                return Err(BackendError::message(
                    ErrorCategory::Transient,
                    format!(
                        "{what}: {} items still unprocessed after {calls} calls",
                        items.len()
                    ),
                ));
            }
            tokio::time::sleep(backoff.delay(calls)).await;
        }
        calls += 1;
        let (mut got, rest) = call(items).await?;
        results.append(&mut got);
        items = rest;
    }
    Ok(results)
}

/// Job and task rows in orch's DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStateStore {
    client: Client,
    table: String,
    page_size: Option<i32>,
    backoff: BatchRetry,
}

impl DynamoStateStore {
    /// The store over an existing table (see [`create_table`]).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStateStore {
            client,
            table: table.into(),
            page_size: None,
            backoff: BatchRetry::default(),
        }
    }

    /// Caps every query page at `items` (DynamoDB's own cap is 1 MB of items). Tests use it
    /// to exercise pagination with few items.
    pub fn with_page_size(mut self, items: u32) -> Self {
        self.page_size = Some(i32::try_from(items.max(1)).unwrap_or(i32::MAX));
        self
    }

    /// How batch calls retry the items DynamoDB leaves unprocessed.
    pub fn with_backoff(mut self, backoff: BatchRetry) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Jobs whose creation or deletion did not finish (a process died half-way): invisible to
    /// `get_job` and `list_jobs`, removed by `delete_job`.
    pub async fn list_incomplete_jobs(&self) -> BackendResult<Vec<IncompleteJob>> {
        Ok(self
            .job_items()
            .await?
            .iter()
            .filter_map(|item| {
                let mark = get_s(item, INCOMPLETE)?;
                let id = get_s(item, PK)?.strip_prefix("JOB#")?;
                Some(IncompleteJob {
                    id: id.to_string(),
                    deleting: mark == DELETING,
                })
            })
            .collect())
    }

    /// The running tasks of `job` whose lease expired before `now`: a query of the `by-state`
    /// index with a filter on `leaseExpiry`, so only running tasks are read.
    pub async fn expired_leases(&self, job: &str, now: Millis) -> BackendResult<Vec<TaskRecord>> {
        let pk = state_pk(job, TaskState::Running);
        let items = self
            .query_all("Query by-state", &pk, false, || {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_BY_STATE)
                    .key_condition_expression("#pk = :pk")
                    .filter_expression("#le < :now")
                    .expression_attribute_names("#pk", GSI1PK)
                    .expression_attribute_names("#le", LEASE_EXPIRY)
                    .expression_attribute_values(":pk", s(&pk))
                    .expression_attribute_values(":now", n(now))
            })
            .await?;
        let mut tasks = items
            .iter()
            .map(decode_task)
            .collect::<BackendResult<Vec<_>>>()?;
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    /// Every page of a query. `resource` names it in errors; `consistent` asks for a strongly
    /// consistent read (not possible on an index).
    async fn query_all(
        &self,
        operation: &'static str,
        resource: &str,
        consistent: bool,
        query: impl Fn() -> QueryFluentBuilder,
    ) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = query()
                .consistent_read(consistent)
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    sdk_error(SERVICE, operation, format!("{} {resource}", self.table), e)
                })?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(items),
            }
        }
    }

    /// The task items of a job's partition (strongly consistent), all attributes or only the
    /// keys.
    async fn task_items(&self, job: &str, keys_only: bool) -> BackendResult<Vec<Item>> {
        let pk = job_pk(job);
        self.query_all("Query", &pk, true, || {
            let q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :task)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":task", s(TASK_SK_PREFIX));
            if keys_only {
                q.projection_expression("#pk, #sk")
            } else {
                q
            }
        })
        .await
    }

    /// Every job item, complete or not, in the order of the `jobs` index (oldest first): the
    /// index gives the keys, `GetItem`s (a few in flight) the current items. Not
    /// `BatchGetItem`: the IAM roles of docs/aws.md do not grant it, and a job list is short.
    async fn job_items(&self) -> BackendResult<Vec<Item>> {
        let keys = self
            .query_all("Query jobs", INDEX_JOBS, false, || {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_JOBS)
                    .key_condition_expression("#pk = :pk")
                    .expression_attribute_names("#pk", GSI2PK)
                    .expression_attribute_values(":pk", s(JOBS_PARTITION))
            })
            .await?;
        let ids: Vec<String> = keys
            .iter()
            .filter_map(|k| get_s(k, PK)?.strip_prefix("JOB#").map(str::to_string))
            .collect();
        let mut found: Vec<Option<Item>> = vec![None; ids.len()];
        let mut next = ids.iter().enumerate();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < READ_CONCURRENCY {
                let Some((i, id)) = next.next() else { break };
                let store = self.clone();
                let id = id.clone();
                running.spawn(async move { (i, store.job_item_raw(&id).await) });
            }
            match running.join_next().await {
                None => break,
                Some(Ok((i, item))) => {
                    // A job deleted between the index query and the read is simply absent.
                    if let Some(slot) = found.get_mut(i) {
                        *slot = item?;
                    }
                }
                Some(Err(e)) => {
                    return Err(BackendError::other(
                        ErrorCategory::Infrastructure,
                        "a GetItem task did not complete",
                        e,
                    ));
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// Writes (puts or deletes) in `BatchWriteItem`s of 25, a few in flight at once, each
    /// retrying its unprocessed items. After the first failure no new batch starts, but those
    /// in flight are waited for rather than aborted: an aborted request may still land on the
    /// server later, after a cleanup that ran in the meantime, and leave items behind.
    async fn write_batches(&self, requests: Vec<WriteRequest>) -> BackendResult<()> {
        let mut chunks = requests.into_iter().peekable();
        let mut running = tokio::task::JoinSet::new();
        let mut first_error: Option<BackendError> = None;
        loop {
            while first_error.is_none()
                && running.len() < WRITE_CONCURRENCY
                && chunks.peek().is_some()
            {
                let chunk: Vec<WriteRequest> = chunks.by_ref().take(BATCH_WRITE_MAX).collect();
                let client = self.client.clone();
                let table = self.table.clone();
                let backoff = self.backoff;
                running.spawn(async move { batch_write(&client, &table, chunk, backoff).await });
            }
            let error = match running.join_next().await {
                None => return first_error.map_or(Ok(()), Err),
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => e,
                Some(Err(e)) => BackendError::other(
                    ErrorCategory::Infrastructure,
                    "a BatchWriteItem task did not complete",
                    e,
                ),
            };
            first_error.get_or_insert(error);
        }
    }

    /// The job item as stored (strongly consistent), marked or not.
    async fn job_item_raw(&self, job: &str) -> BackendResult<Option<Item>> {
        let pk = job_pk(job);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), JOB_SK.into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "GetItem", format!("{} {pk}", self.table), e))?;
        Ok(out.item)
    }

    /// Deletes the given tasks of `job`, best effort, after a creation lost its job: logs
    /// rather than fails, the caller already has an error to report.
    async fn discard_tasks(&self, job: &str, tasks: &[TaskRecord]) {
        let requests = tasks
            .iter()
            .map(|t| delete_request(key(job_pk(job), task_sk(t.id))))
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

fn put_request(item: Item) -> BackendResult<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| build_error("PutRequest", e))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

fn delete_request(key: Item) -> BackendResult<WriteRequest> {
    let delete = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(|e| build_error("DeleteRequest", e))?;
    Ok(WriteRequest::builder().delete_request(delete).build())
}

/// One `BatchWriteItem` of at most 25 requests, with its unprocessed items retried.
async fn batch_write(
    client: &Client,
    table: &str,
    requests: Vec<WriteRequest>,
    backoff: BatchRetry,
) -> BackendResult<()> {
    retry_unprocessed("BatchWriteItem", requests, backoff, |requests| async move {
        let mut out = client
            .batch_write_item()
            .request_items(table, requests)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "BatchWriteItem", table, e))?;
        let rest = out
            .unprocessed_items
            .as_mut()
            .and_then(|u| u.remove(table))
            .unwrap_or_default();
        Ok((Vec::<()>::new(), rest))
    })
    .await?;
    Ok(())
}

#[async_trait]
impl StateStore for DynamoStateStore {
    async fn create_job(&self, job: &JobRecord, tasks: &[TaskRecord]) -> BackendResult<()> {
        check_job_id(&job.id)?;
        let mut seen = HashSet::with_capacity(tasks.len());
        for task in tasks {
            if task.job != job.id {
                return Err(BackendError::message(
                    ErrorCategory::Invalid,
                    format!(
                        "task {} belongs to job {}, not {}",
                        task.id, task.job, job.id
                    ),
                ));
            }
            if !seen.insert(task.id) {
                return Err(BackendError::message(
                    ErrorCategory::Invalid,
                    format!("job {}: task id {} given twice", job.id, task.id),
                ));
            }
        }
        // Encode everything before the first write, so a bad record cannot leave a half job.
        let requests = tasks
            .iter()
            .map(|t| task_item(t).and_then(put_request))
            .collect::<BackendResult<Vec<_>>>()?;
        let pk = job_pk(&job.id);
        let resource = format!("{} {pk}", self.table);

        // 1. The job item, marked `creating`, only if the id is free.
        let write_id = new_write_id();
        let item = job_item(job, Some(CREATING), &write_id)?;
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
        if let Some(task) = tasks.iter().find(|t| t.job != job) {
            return Err(BackendError::message(
                ErrorCategory::Invalid,
                format!("task {} belongs to job {}, not {job}", task.id, task.job),
            ));
        }
        let items = tasks
            .iter()
            .map(task_item)
            .collect::<BackendResult<Vec<_>>>()?;
        if self.get_job(job).await?.is_none() {
            return Err(BackendError::NotFound(format!("job {job}")));
        }
        let resource = format!("{} {}", self.table, job_pk(job));
        // One conditional put per row: a row that exists (an earlier, interrupted call) is
        // left as it is. Aggregation adds a few rows per thousand tasks, so no batching.
        for item in items {
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
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(PutItemError::ConditionalCheckFailedException(_))
                    ) => {}
                Err(e) => return Err(sdk_error(SERVICE, "PutItem", resource.clone(), e).into()),
            }
        }
        Ok(())
    }

    async fn get_job(&self, job: &str) -> BackendResult<Option<JobRecord>> {
        match self.job_item_raw(job).await? {
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
        let pk = job_pk(&job.id);
        let body = encode("job", &stored)?;
        let write_id = new_write_id();
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
            .expression_attribute_values(":g2pk", s(JOBS_PARTITION))
            .expression_attribute_values(":g2sk", s(jobs_sk(&stored)))
            .expression_attribute_values(":expected", n(job.version))
            // The item as it was, when the condition fails: Conflict or NotFound without
            // another read.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(stored),
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    return match c.item() {
                        Some(item) if is_own_write(item, &write_id, stored.version) => Ok(stored),
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

    async fn get_task(&self, job: &str, task: u32) -> BackendResult<Option<TaskRecord>> {
        let pk = job_pk(job);
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
        let pk = job_pk(&task.job);
        // `leaseExpiry` follows the record on every write, so an expired lease can be found
        // with the `by-state` index and a filter (see `expired_leases`).
        let body = encode("task", &stored)?;
        let write_id = new_write_id();
        let expression = match stored.lease_expiry {
            Some(_) => {
                "SET #body = :body, #v = :next, #state = :state, #g1pk = :g1pk, #g1sk = :g1sk, \
                 #w = :w, #le = :le"
            }
            None => {
                "SET #body = :body, #v = :next, #state = :state, #g1pk = :g1pk, #g1sk = :g1sk, \
                 #w = :w REMOVE #le"
            }
        };
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
            .expression_attribute_values(":w", s(&write_id))
            .expression_attribute_values(":body", s(body))
            .expression_attribute_values(":next", n(stored.version))
            .expression_attribute_values(":state", s(stored.state.as_str()))
            .expression_attribute_values(":g1pk", s(state_pk(&stored.job, stored.state)))
            .expression_attribute_values(":g1sk", s(task_sk(stored.id)))
            .expression_attribute_values(":expected", n(task.version))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(expiry) = stored.lease_expiry {
            request = request.expression_attribute_values(":le", n(expiry));
        }
        match request.send().await {
            Ok(_) => Ok(stored),
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    return match c.item() {
                        Some(item) if is_own_write(item, &write_id, stored.version) => Ok(stored),
                        Some(_) => Err(BackendError::Conflict(format!(
                            "{name} at version {}",
                            task.version
                        ))),
                        None => Err(BackendError::NotFound(name)),
                    };
                }
                Err(sdk_error(SERVICE, "UpdateItem", format!("{} {pk}", self.table), e).into())
            }
        }
    }

    async fn delete_job(&self, job: &str) -> BackendResult<()> {
        let pk = job_pk(job);
        let resource = format!("{} {pk}", self.table);
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
        // 2. The tasks.
        let requests = self
            .task_items(job, true)
            .await?
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

    async fn list_tasks_in_state(
        &self,
        job: &str,
        state: TaskState,
    ) -> BackendResult<Vec<TaskRecord>> {
        let pk = state_pk(job, state);
        let items = self
            .query_all("Query by-state", &pk, false, || {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_BY_STATE)
                    .key_condition_expression("#pk = :pk")
                    .expression_attribute_names("#pk", GSI1PK)
                    .expression_attribute_values(":pk", s(&pk))
            })
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

/// How [`create_table_with`] sets up the table beyond its keys and indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// Server-side encryption with this KMS key (ARN, id or alias); `None`: DynamoDB's
    /// AWS-managed key. docs/aws.md asks for the orch key, which Terraform passes.
    pub kms_key: Option<String>,
    /// Point-in-time recovery (docs/aws.md: on).
    pub point_in_time_recovery: bool,
    /// How long to wait for the table and its indexes to become ACTIVE.
    pub timeout: Duration,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            kms_key: None,
            point_in_time_recovery: true,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Creates orch's table exactly as docs/aws.md describes it (on-demand billing, keys `pk`/`sk`,
/// GSIs `by-state` and `jobs`, encryption, point-in-time recovery) and waits until it and its
/// indexes are ACTIVE. An existing table with the same keys and indexes is accepted, so
/// `orch init` can run twice.
pub async fn create_table(client: &Client, name: &str) -> crate::Result<()> {
    create_table_with(client, name, &TableOptions::default()).await
}

/// [`create_table`] with options.
pub async fn create_table_with(
    client: &Client,
    name: &str,
    options: &TableOptions,
) -> crate::Result<()> {
    let invalid = |e: BuildError| AwsError::invalid(format!("table {name}"), e.to_string());
    let attribute = |attr: &str| {
        AttributeDefinition::builder()
            .attribute_name(attr)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(invalid)
    };
    let key_element = |attr: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(attr)
            .key_type(key_type)
            .build()
            .map_err(invalid)
    };
    let index = |index: &str, hash: &str, range: &str, projection: ProjectionType| {
        GlobalSecondaryIndex::builder()
            .index_name(index)
            .key_schema(key_element(hash, KeyType::Hash)?)
            .key_schema(key_element(range, KeyType::Range)?)
            .projection(Projection::builder().projection_type(projection).build())
            .build()
            .map_err(invalid)
    };
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            [PK, SK, GSI1PK, GSI1SK, GSI2PK, GSI2SK]
                .into_iter()
                .map(attribute)
                .collect::<crate::Result<Vec<_>>>()?,
        ))
        .key_schema(key_element(PK, KeyType::Hash)?)
        .key_schema(key_element(SK, KeyType::Range)?)
        .global_secondary_indexes(index(INDEX_BY_STATE, GSI1PK, GSI1SK, ProjectionType::All)?)
        .global_secondary_indexes(index(INDEX_JOBS, GSI2PK, GSI2SK, ProjectionType::KeysOnly)?)
        .sse_specification(
            SseSpecification::builder()
                .enabled(true)
                .sse_type(SseType::Kms)
                .set_kms_master_key_id(options.kms_key.clone())
                .build(),
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_in_use_exception()) =>
        {
            check_existing_table(client, name).await?;
        }
        Err(e) => return Err(sdk_error(SERVICE, "CreateTable", name, e)),
    }
    wait_until_active(client, name, options.timeout).await?;
    if options.point_in_time_recovery {
        let spec = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(invalid)?;
        client
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(spec)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "UpdateContinuousBackups", name, e))?;
    }
    Ok(())
}

/// An existing table is fine only if it has orch's keys and indexes: anything else would fail
/// later, on the first query, with a less helpful message.
async fn check_existing_table(client: &Client, name: &str) -> crate::Result<()> {
    let out = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .map_err(|e| sdk_error(SERVICE, "DescribeTable", name, e))?;
    let Some(table) = out.table else {
        return Err(AwsError::invalid(
            format!("table {name}"),
            "DescribeTable returned no table",
        ));
    };
    let keys = |schema: &[KeySchemaElement]| -> Vec<(String, String)> {
        schema
            .iter()
            .map(|k| (k.attribute_name.clone(), k.key_type.as_str().to_string()))
            .collect()
    };
    let want = |hash: &str, range: &str| {
        vec![
            (hash.to_string(), "HASH".to_string()),
            (range.to_string(), "RANGE".to_string()),
        ]
    };
    let index_keys = |index: &str| {
        table
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(index))
            .map(|i| keys(i.key_schema()))
    };
    let fits = keys(table.key_schema()) == want(PK, SK)
        && index_keys(INDEX_BY_STATE) == Some(want(GSI1PK, GSI1SK))
        && index_keys(INDEX_JOBS) == Some(want(GSI2PK, GSI2SK));
    if fits {
        Ok(())
    } else {
        Err(AwsError::invalid(
            format!("table {name}"),
            "exists without the keys and indexes of docs/aws.md (pk/sk, by-state, jobs)",
        ))
    }
}

/// Polls `DescribeTable` until the table and every index are ACTIVE.
async fn wait_until_active(client: &Client, name: &str, timeout: Duration) -> crate::Result<()> {
    const TABLE_POLL: Backoff =
        Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut polls = 1;
    loop {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "DescribeTable", name, e))?;
        if let Some(table) = out.table {
            let indexes_active = table
                .global_secondary_indexes()
                .iter()
                .all(|i| i.index_status() == Some(&IndexStatus::Active));
            if table.table_status() == Some(&TableStatus::Active) && indexes_active {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AwsError::Service {
                service: SERVICE,
                operation: "DescribeTable",
                resource: name.to_string(),
                code: "Timeout".into(),
                message: format!("the table did not become ACTIVE within {timeout:?}"),
                category: ErrorCategory::Transient,
                conflict: false,
            });
        }
        tokio::time::sleep(TABLE_POLL.delay(polls)).await;
        polls += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> BatchRetry {
        BatchRetry {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_calls: 5,
        }
    }

    #[tokio::test]
    async fn unprocessed_items_are_retried_until_done() {
        let calls = AtomicU32::new(0);
        let got = retry_unprocessed("test", (0..10).collect(), quick(), |items: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // Process the first half of what is asked each time (as a throttled table does).
                let (done, rest) = items.split_at(items.len().div_ceil(2));
                Ok((done.to_vec(), rest.to_vec()))
            }
        })
        .await
        .unwrap();
        let mut got = got;
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        // 10 → 5 → 2 → 1 → 0 left.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_calls_with_a_transient_error() {
        let calls = AtomicU32::new(0);
        let err = retry_unprocessed("stuck", vec![1, 2, 3], quick(), |items: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok((Vec::<()>::new(), items)) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(err.category(), ErrorCategory::Transient);
        assert!(
            err.to_string().contains("3 items still unprocessed"),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_its_cap() {
        let b = BatchRetry {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_calls: 10,
        };
        for _ in 0..100 {
            let first = b.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = b.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = b.delay(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }

    #[test]
    fn keys_follow_docs_aws_md() {
        let mut task = TaskRecord::new("j-1", 7, 10, 5);
        task.lease_expiry = Some(1234);
        let item = task_item(&task).unwrap();
        assert_eq!(get_s(&item, PK), Some("JOB#j-1"));
        assert_eq!(get_s(&item, SK), Some("TASK#000007"));
        assert_eq!(get_s(&item, GSI1PK), Some("JOB#j-1#pending"));
        assert_eq!(get_s(&item, GSI1SK), Some("TASK#000007"));
        assert_eq!(get_s(&item, STATE), Some("pending"));
        assert_eq!(
            item.get(LEASE_EXPIRY).and_then(|v| v.as_n().ok()).unwrap(),
            "1234"
        );
        assert_eq!(decode_task(&item).unwrap(), task);
        assert!(check_job_id("a#b").is_err());
        assert!(check_job_id("").is_err());
        assert_eq!(task_sk(1_234_567), "TASK#1234567");
    }
}
