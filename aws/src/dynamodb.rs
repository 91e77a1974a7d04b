//! The DynamoDB [`StateStore`]: job and task rows in orch's single table, shared by the
//! coordinator and every worker of a cluster run. The table's keys and indexes and the rules
//! every write follows are fixed by docs/aws.md ("DynamoDB: one table"), and the Terraform in
//! `infra/` relies on them.
//!
//! This file is the store and its reads. Reads of single items and of a job's partition are
//! strongly consistent (`ConsistentRead`), so a writer reads its own writes as the contract
//! asks. The two indexes cannot be: `list_jobs` and `list_tasks_in_state` may lag a moment
//! behind the table on AWS (the bodies `list_jobs` returns are read from the table, so they are
//! current; which jobs it lists is from the index). Every query is paginated and nothing ever
//! scans the table. The items are in `item`, the writes of the contract in `state_store`, batch
//! writes in `batch`, the table itself in `table`, and in `changes` how the driver's refresh
//! reads only the rows that changed (docs/aws.md, "What a coordinator reads per tick").

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult};
use orch_core::model::{Millis, TaskRecord, TaskState};

use crate::error::sdk_error;

mod audit;
mod batch;
mod changes;
mod item;
mod ratelimit;
mod state_store;
mod table;

pub use batch::{BatchRetry, retry_unprocessed};
pub use changes::Driving;
use item::{
    DELETING, GSI1PK, GSI2PK, INCOMPLETE, JOB_SK, LEASE_EXPIRY, PK, SK, STATE, TASK_SK_PREFIX,
    decode_task, get_s, key, n, s,
};
pub use item::{INDEX_BY_STATE, INDEX_JOBS, Item, Keys};
pub use table::{TableOptions, create_table, create_table_with};

const SERVICE: &str = "DynamoDB";

/// `GetItem`s in flight at once while listing jobs.
const READ_CONCURRENCY: usize = 8;

/// A job whose creation or deletion did not finish (see `state_store`, and docs/aws.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteJob {
    pub id: String,
    /// `true`: deleting; `false`: creating.
    pub deleting: bool,
}

/// Job and task rows in orch's DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStateStore {
    client: Client,
    table: String,
    keys: Keys,
    page_size: Option<i32>,
    backoff: BatchRetry,
    /// What `list_tasks_since` needs to read only what changed (`changes`), shared by clones.
    changes: changes::Changes,
}

impl DynamoStateStore {
    /// The store of one storage's jobs (its [`Keys`]) over an existing table (see
    /// [`create_table`]). Rate-limit buckets and the audit log are the table's, whatever the
    /// keys.
    pub fn new(client: Client, table: impl Into<String>, keys: Keys) -> Self {
        DynamoStateStore {
            client,
            table: table.into(),
            keys,
            page_size: None,
            backoff: BatchRetry::default(),
            changes: changes::Changes::default(),
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
                let id = self.keys.job_of(get_s(item, PK)?)?;
                Some(IncompleteJob {
                    id: id.to_string(),
                    deleting: mark == DELETING,
                })
            })
            .collect())
    }

    /// The running tasks of `job` whose lease expired before `now`: a query of the job's active
    /// tasks in the `by-state` index with a filter on `state` and `leaseExpiry`, so only the
    /// tasks in flight are read.
    pub async fn expired_leases(&self, job: &str, now: Millis) -> BackendResult<Vec<TaskRecord>> {
        let pk = self.keys.active_pk(job);
        let items = self
            .query_all("Query by-state", &pk, false, || {
                self.active_query(&pk)
                    .filter_expression("#state = :running AND #le < :now")
                    .expression_attribute_names("#state", STATE)
                    .expression_attribute_values(":running", s(TaskState::Running.as_str()))
                    .expression_attribute_names("#le", LEASE_EXPIRY)
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
    /// The query of the tasks in `active_pk`, a job's partition of the `by-state` index (its
    /// dispatched and running tasks).
    fn active_query(&self, active_pk: &str) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .index_name(INDEX_BY_STATE)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", GSI1PK)
            .expression_attribute_values(":pk", s(active_pk))
    }

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
        self.partition_items(job, TASK_SK_PREFIX, keys_only).await
    }

    /// The items of a job's partition whose `sk` begins with `sk_prefix` (strongly
    /// consistent), all attributes or only the keys.
    async fn partition_items(
        &self,
        job: &str,
        sk_prefix: &str,
        keys_only: bool,
    ) -> BackendResult<Vec<Item>> {
        let pk = self.keys.job_pk(job);
        self.query_all("Query", &pk, true, || {
            let q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":prefix", s(sk_prefix));
            if keys_only {
                q.projection_expression("#pk, #sk")
            } else {
                q
            }
        })
        .await
    }

    /// Every job item, complete or not, in the order of the `jobs` index (oldest first).
    async fn job_items(&self) -> BackendResult<Vec<Item>> {
        self.index_partition_items("Query jobs", &self.keys.jobs_partition())
            .await
    }

    /// The current items of one partition of the `jobs` index (jobs, or rate-limit buckets), in
    /// index order: the index gives the keys (KEYS_ONLY), `GetItem`s (a few in flight) the
    /// items. Not `BatchGetItem`: the workers' IAM role (docs/aws.md) does not grant it, and
    /// these lists are short. An item deleted between the query and its read is simply absent.
    async fn index_partition_items(
        &self,
        operation: &'static str,
        partition: &str,
    ) -> BackendResult<Vec<Item>> {
        let keys = self
            .query_all(operation, INDEX_JOBS, false, || {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(INDEX_JOBS)
                    .key_condition_expression("#pk = :pk")
                    .expression_attribute_names("#pk", GSI2PK)
                    .expression_attribute_values(":pk", s(partition))
            })
            .await?;
        let keys: Vec<(String, String)> = keys
            .iter()
            .filter_map(|k| Some((get_s(k, PK)?.to_string(), get_s(k, SK)?.to_string())))
            .collect();
        let mut found: Vec<Option<Item>> = vec![None; keys.len()];
        let mut next = keys.into_iter().enumerate();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < READ_CONCURRENCY {
                let Some((i, (pk, sk))) = next.next() else {
                    break;
                };
                let store = self.clone();
                running.spawn(async move { (i, store.item(pk, &sk).await) });
            }
            match running.join_next().await {
                None => break,
                Some(Ok((i, item))) => {
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

    /// The job item as stored (strongly consistent), marked or not.
    async fn job_item_raw(&self, job: &str) -> BackendResult<Option<Item>> {
        self.item(self.keys.job_pk(job), JOB_SK).await
    }

    /// One item, read strongly consistent.
    async fn item(&self, pk: String, sk: &str) -> BackendResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), sk.into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "GetItem", format!("{} {pk}", self.table), e))?;
        Ok(out.item)
    }
}
