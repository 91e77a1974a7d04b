//! The items of orch's table: the attribute names and keys of docs/aws.md ("DynamoDB: one
//! table"), a [`JobRecord`] or [`TaskRecord`] encoded as an item and decoded back, and the
//! `writeId` that tells a retried write from a lost one. As in the SQLite store, `body` holds the
//! whole record and the `version` attribute is authoritative (the two are always written
//! together and agree).

use std::collections::HashMap;

use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::types::AttributeValue;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult};
use orch_core::history::AttemptRecord;
use orch_core::model::{JobRecord, TaskRecord, TaskState};

use crate::error::AwsError;

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// The GSI of the active tasks of one job (hash `gsi1pk`, range `gsi1sk`, projection ALL).
/// Sparse: only the states of [`indexed`] have the key attributes, all in one partition per
/// job, so a task costs one index write when dispatched, one when claimed (its key stays) and
/// one when it leaves.
pub const INDEX_BY_STATE: &str = "by-state";

/// Whether tasks in `state` are in the `by-state` index: the states read through it (the
/// lease checks of running tasks, dispatched ones), not those a task passes through on its
/// way (pending, retrying) or ends in.
pub(super) fn indexed(state: TaskState) -> bool {
    matches!(state, TaskState::Dispatched | TaskState::Running)
}
/// The GSI of the job list, newest last (hash `gsi2pk`, range `gsi2sk`, projection KEYS_ONLY).
pub const INDEX_JOBS: &str = "jobs";

pub(super) const PK: &str = "pk";
pub(super) const SK: &str = "sk";
pub(super) const VERSION: &str = "version";
pub(super) const PHASE: &str = "phase";
pub(super) const STATE: &str = "state";
pub(super) const BODY: &str = "body";
pub(super) const GSI1PK: &str = "gsi1pk";
pub(super) const GSI1SK: &str = "gsi1sk";
pub(super) const GSI2PK: &str = "gsi2pk";
pub(super) const GSI2SK: &str = "gsi2sk";
pub(super) const LEASE_EXPIRY: &str = "leaseExpiry";
/// A task item's group (`TaskRecord::group`), for the condition of a claim.
pub(super) const GROUP: &str = "grp";
/// A claim written without rewriting the body (`StateStore::claim_task`): the worker and the
/// time, which with `state` and `leaseExpiry` say what the claim changed. The next full write
/// of the item folds them into the body and removes them.
pub(super) const CLAIM_OWNER: &str = "claimOwner";
pub(super) const CLAIMED_AT: &str = "claimedAt";
/// The id of the conditional write that left the item as it is (see [`is_own_write`]).
pub(super) const WRITE_ID: &str = "writeId";
/// Marks a job item whose creation or deletion has not finished (see `state_store`).
pub(super) const INCOMPLETE: &str = "incomplete";
pub(super) const CREATING: &str = "creating";
pub(super) const DELETING: &str = "deleting";

/// `sk` of a job item.
pub(super) const JOB_SK: &str = "JOB";
/// Prefix of the `sk` of task items.
pub(super) const TASK_SK_PREFIX: &str = "TASK#";
/// Prefix of the `sk` of attempt records.
pub(super) const ATTEMPT_SK_PREFIX: &str = "ATTEMPT#";
/// `1` on an attempt record whose attempt has ended (see `StateStore::put_attempt`).
pub(super) const ENDED: &str = "ended";

/// The partition keys of one storage's items. Each begins with the storage's bucket and key
/// prefix (`<bucket>/<prefix>`, as in its `s3://` URI), so the jobs of two storages never share
/// a partition, the job list of one storage holds only its own jobs, and an IAM condition on
/// `dynamodb:LeadingKeys` (`<bucket>/<prefix>*`) holds a tenant's workers to the items of the
/// tenant's storage, as an S3 prefix condition holds them to its objects (docs/aws.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of the storage `s3://bucket/prefix/`.
    pub fn for_storage(storage_uri: &str) -> Result<Keys, AwsError> {
        let (bucket, prefix) = crate::s3::parse_s3_uri(storage_uri)?;
        Ok(Keys {
            prefix: format!("{bucket}/{prefix}"),
        })
    }

    /// What every partition key of the storage begins with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `pk` of a job's items: the job, its tasks and its lock.
    pub fn job_pk(&self, job: &str) -> String {
        format!("{}JOB#{job}", self.prefix)
    }

    /// `gsi1pk` of a job's active tasks (the states of [`indexed`]).
    pub(super) fn active_pk(&self, job: &str) -> String {
        format!("{}JOB#{job}#active", self.prefix)
    }

    /// `gsi2pk` of the storage's job items: its partition of the `jobs` index.
    pub(super) fn jobs_partition(&self) -> String {
        format!("{}JOBS", self.prefix)
    }

    /// The job of a `pk` built by [`Keys::job_pk`].
    pub(super) fn job_of<'a>(&self, pk: &'a str) -> Option<&'a str> {
        pk.strip_prefix(self.prefix.as_str())?.strip_prefix("JOB#")
    }
}

/// `TASK#<task:06>`. Ids of a million and more have more digits and so no longer sort by
/// number in the key; [`DynamoStateStore::list_tasks`] sorts by id itself.
pub(super) fn task_sk(task: u32) -> String {
    format!("{TASK_SK_PREFIX}{task:06}")
}

/// `ATTEMPT#<task:06>#<attempt:06>`, in the job's partition: `delete_job` finds them with the
/// job's other items, and a worker's IAM condition on its storage covers them.
pub(super) fn attempt_sk(task: u32, attempt: u32) -> String {
    format!("{ATTEMPT_SK_PREFIX}{task:06}#{attempt:06}")
}

/// `ATTEMPT#<task:06>#`: the records of one task.
pub(super) fn attempt_sk_of_task(task: u32) -> String {
    format!("{ATTEMPT_SK_PREFIX}{task:06}#")
}

pub(super) fn jobs_sk(job: &JobRecord) -> String {
    format!("{:013}#{}", job.created_at, job.id)
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(super) fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
}

/// The name of an item for messages: its keys, never its contents.
pub(super) fn item_name(item: &Item) -> String {
    format!(
        "{}/{}",
        get_s(item, PK).unwrap_or("?"),
        get_s(item, SK).unwrap_or("?")
    )
}

pub(super) fn corrupt(what: &str, why: impl std::fmt::Display) -> BackendError {
    BackendError::message(
        ErrorCategory::Permanent,
        format!("corrupt state item {what}: {why}"),
    )
}

pub(super) fn build_error(what: &str, e: BuildError) -> BackendError {
    AwsError::invalid(what, e.to_string()).into()
}

pub(super) fn encode<T: serde::Serialize>(what: &str, record: &T) -> BackendResult<String> {
    serde_json::to_string(record).map_err(|e| {
        BackendError::other(ErrorCategory::Permanent, format!("cannot encode {what}"), e)
    })
}

pub(super) fn version_of(what: &str, item: &Item) -> BackendResult<u64> {
    let raw = item
        .get(VERSION)
        .and_then(|v| v.as_n().ok())
        .ok_or_else(|| corrupt(what, "no numeric version"))?;
    raw.parse()
        .map_err(|_| corrupt(what, format!("version {raw:?} is not a count")))
}

/// Decodes a job item; the `version` attribute is authoritative.
pub(super) fn decode_job(item: &Item) -> BackendResult<JobRecord> {
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

pub(super) fn decode_task(item: &Item) -> BackendResult<TaskRecord> {
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
    if let Some(worker) = get_s(item, CLAIM_OWNER) {
        // A claim not yet folded into the body: apply it as the claim did, to the body it was
        // made on (dispatched in the claim's group, `state` now running). Any other body was
        // written after the claim by a writer that did not know of it: the body is newer.
        let number = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| corrupt(&what, format!("a claim without {name}")))
        };
        let job = task.job.clone();
        let claim = orch_core::backend::TaskClaim {
            job: &job,
            task: task.id,
            group: number(GROUP)? as u32,
            worker,
            now: number(CLAIMED_AT)?,
            lease_expiry: number(LEASE_EXPIRY)?,
        };
        if claim.applies_to(&task) && get_s(item, STATE) == Some(TaskState::Running.as_str()) {
            claim.apply(&mut task)?;
        }
    }
    Ok(task)
}

pub(super) fn decode_attempt(item: &Item) -> BackendResult<AttemptRecord> {
    let what = item_name(item);
    let body = get_s(item, BODY).ok_or_else(|| corrupt(&what, "no body"))?;
    orch_core::model::decode_versioned(&what, body.as_bytes()).map_err(|e| {
        BackendError::other(
            ErrorCategory::Permanent,
            format!("corrupt state item {what}"),
            e,
        )
    })
}

/// A fresh `writeId`: 128 random bits, so no two writes share one.
pub(super) fn new_write_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Whether a write that lost its condition lost it to itself: the SDK retries a request whose
/// answer was lost (a reset connection, a timeout) although the server applied it, and the
/// retry then finds the item as this very write left it. Comparing bodies would not do: two
/// writers that both add 1 to the same count write the same bytes, and only one may win.
pub(super) fn is_own_write(item: &Item, write_id: &str, version: u64) -> bool {
    get_s(item, WRITE_ID) == Some(write_id) && version_of("item", item).ok() == Some(version)
}

/// The complete item of a job, marked `incomplete` when given.
pub(super) fn job_item(
    keys: &Keys,
    job: &JobRecord,
    incomplete: Option<&str>,
    write_id: &str,
) -> BackendResult<Item> {
    let mut item = key(keys.job_pk(&job.id), JOB_SK.to_string());
    item.insert(WRITE_ID.into(), s(write_id));
    item.insert(VERSION.into(), n(job.version));
    item.insert(PHASE.into(), s(job.phase.as_str()));
    item.insert(BODY.into(), s(encode("job", job)?));
    item.insert(GSI2PK.into(), s(keys.jobs_partition()));
    item.insert(GSI2SK.into(), s(jobs_sk(job)));
    if let Some(mark) = incomplete {
        item.insert(INCOMPLETE.into(), s(mark));
    }
    Ok(item)
}

/// The complete item of a task.
pub(super) fn task_item(keys: &Keys, task: &TaskRecord) -> BackendResult<Item> {
    let mut item = key(keys.job_pk(&task.job), task_sk(task.id));
    item.insert(VERSION.into(), n(task.version));
    item.insert(STATE.into(), s(task.state.as_str()));
    item.insert(BODY.into(), s(encode("task", task)?));
    if indexed(task.state) {
        item.insert(GSI1PK.into(), s(keys.active_pk(&task.job)));
        item.insert(GSI1SK.into(), s(task_sk(task.id)));
    }
    if let Some(group) = task.group {
        item.insert(GROUP.into(), n(u64::from(group)));
    }
    if let Some(expiry) = task.lease_expiry {
        item.insert(LEASE_EXPIRY.into(), n(expiry));
    }
    Ok(item)
}

/// Job ids become parts of keys joined by `#`; one containing `#` could collide with another
/// job's state partition (`JOB#a#running`).
pub(super) fn check_job_id(job: &str) -> BackendResult<()> {
    if job.is_empty() || job.contains('#') {
        return Err(BackendError::message(
            ErrorCategory::Invalid,
            format!("job id {job:?} must be non-empty and must not contain '#'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A claim's attributes apply to the body they were written on; a body written after them
    /// by a writer that did not know of them (an older binary's cancel) is the row.
    #[test]
    fn a_claim_overlays_only_the_dispatched_body_it_was_made_on() {
        let keys = Keys::for_storage("s3://bucket/orch/").unwrap();
        let mut task = TaskRecord::new("j-1", 3, 10, 5);
        task.state = TaskState::Dispatched;
        task.group = Some(4);
        let mut item = task_item(&keys, &task).unwrap();
        item.insert(STATE.into(), s("running"));
        item.insert(CLAIM_OWNER.into(), s("node:7"));
        item.insert(CLAIMED_AT.into(), n(900));
        item.insert(LEASE_EXPIRY.into(), n(30_900));
        item.insert(VERSION.into(), n(1));
        let claimed = decode_task(&item).unwrap();
        assert_eq!(
            (
                claimed.state,
                claimed.worker.as_deref(),
                claimed.started_at,
                claimed.lease_expiry
            ),
            (TaskState::Running, Some("node:7"), Some(900), Some(30_900))
        );
        assert_eq!(claimed.version, 1);
        task.state = TaskState::Cancelled;
        item.insert(BODY.into(), s(encode("task", &task).unwrap()));
        assert_eq!(decode_task(&item).unwrap().state, TaskState::Cancelled);
    }

    #[test]
    fn keys_follow_docs_aws_md() {
        let mut task = TaskRecord::new("j-1", 7, 10, 5);
        let keys = Keys::for_storage("s3://bucket/orch/team-a").unwrap();
        // A pending task is not in the sparse `by-state` index.
        let pending = task_item(&keys, &task).unwrap();
        assert_eq!(get_s(&pending, GSI1PK), None);
        assert_eq!(get_s(&pending, GSI1SK), None);
        task.state = TaskState::Running;
        task.lease_expiry = Some(1234);
        let item = task_item(&keys, &task).unwrap();
        assert_eq!(get_s(&item, PK), Some("bucket/orch/team-a/JOB#j-1"));
        assert_eq!(get_s(&item, SK), Some("TASK#000007"));
        assert_eq!(
            get_s(&item, GSI1PK),
            Some("bucket/orch/team-a/JOB#j-1#active")
        );
        assert_eq!(get_s(&item, GSI1SK), Some("TASK#000007"));
        assert_eq!(get_s(&item, STATE), Some("running"));
        assert_eq!(
            item.get(LEASE_EXPIRY).and_then(|v| v.as_n().ok()).unwrap(),
            "1234"
        );
        assert_eq!(decode_task(&item).unwrap(), task);
        assert!(check_job_id("a#b").is_err());
        assert!(check_job_id("").is_err());
        assert_eq!(task_sk(1_234_567), "TASK#1234567");
        assert_eq!(attempt_sk(7, 2), "ATTEMPT#000007#000002");
        assert!(attempt_sk(7, 2).starts_with(&attempt_sk_of_task(7)));
        assert!(!attempt_sk(70, 2).starts_with(&attempt_sk_of_task(7)));
        assert_eq!(keys.job_of("bucket/orch/team-a/JOB#j-1"), Some("j-1"));
        assert_eq!(keys.job_of("bucket/orch/team-b/JOB#j-1"), None);
        let root = Keys::for_storage("s3://bucket").unwrap();
        assert_eq!(root.jobs_partition(), "bucket/JOBS");
    }
}
