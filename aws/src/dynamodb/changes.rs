//! `list_tasks_since` on the table without a change column: what a coordinator reads per tick
//! is the job item, the job's active tasks (the `by-state` index) and the few rows that left
//! them, never the job's whole partition (docs/aws.md, "What a coordinator reads per tick").
//!
//! Who writes which task rows makes that enough. The driver writes every row outside the
//! active set, through its own store: this instance remembers those writes. Workers write only
//! active rows, which are in the index or in the set the last refresh saw active. Anyone else
//! (`orch retry` from another process) writes the job item after its task writes, so a changed
//! job item sends the next refresh back to a full read. Only an instance that drives the job
//! ([`DynamoStateStore::drive`], taken with the job's lease) can rely on the first rule; any
//! other reads everything, as the trait's default does.
//!
//! Each cursor handed out names a tracker: the job item's stamp (`version`, `writeId`) the
//! refresh started from, the ids it saw active, and the rows this instance wrote since. A
//! tracker remembers at most [`DIRTY_CAP`] rows (past that, its next refresh reads everything)
//! and lives [`TRACKER_IDLE`] unused at most (a cache that was dropped never comes back).
//!
//! The rows that left the active set are read with `BatchGetItem`; a role that lacks it (a
//! deployment older than the permission, docs/aws.md) gets them with `GetItem`s instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::KeysAndAttributes;
use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, StateStore, TaskChanges};
use orch_core::model::TaskRecord;

use super::batch::retry_unprocessed;
use super::item::{
    INCOMPLETE, Item, JOB_SK, VERSION, WRITE_ID, build_error, decode_task, get_s, indexed, key,
    task_sk, version_of,
};
use super::{DynamoStateStore, READ_CONCURRENCY, SERVICE};
use crate::error::{AwsError, sdk_error};

/// Trackers kept per job: one per cache that reads the job (the operator's driver and status
/// share one), a refresh in flight, and a spare; the oldest goes first.
const TRACKERS_PER_JOB: usize = 4;
/// DynamoDB's limit of keys per `BatchGetItem`.
const BATCH_GET_MAX: usize = 100;
/// Rows a tracker remembers as written; past that it forgets them all and its refresh reads
/// everything (a cursor nobody uses any more must not keep a copy of every row the driver
/// writes for the life of the job).
pub(super) const DIRTY_CAP: usize = 10_000;
/// A tracker not used this long goes: its cache was dropped (a restarted driver, a stopped
/// status), and a cursor that comes back after it only costs a full read.
pub(super) const TRACKER_IDLE: Duration = Duration::from_secs(600);

/// What tells one write of a job item from every other: its version and the `writeId` the
/// write stored (a job deleted and created again starts its versions anew, never its ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobStamp {
    version: u64,
    write_id: Option<String>,
}

impl JobStamp {
    /// The stamp of a job item as read; `None` for no item, or one still being created or
    /// deleted.
    pub(super) fn of(item: Option<&Item>) -> Option<JobStamp> {
        let item = item?;
        if item.contains_key(INCOMPLETE) {
            return None;
        }
        Some(JobStamp {
            version: version_of("job", item).ok()?,
            write_id: get_s(item, WRITE_ID).map(str::to_string),
        })
    }

    pub(super) fn new(version: u64, write_id: Option<&str>) -> JobStamp {
        JobStamp {
            version,
            write_id: write_id.map(str::to_string),
        }
    }
}

/// What one cursor stands for.
#[derive(Debug)]
struct Tracker {
    cursor: u64,
    /// Taken when the tracker was made, after its stamp was read: a later observation of the
    /// job item ([`JobTracking::observed`]) was read after that stamp.
    made: u64,
    stamp: JobStamp,
    /// The tasks dispatched or running as of the refresh that made it.
    active: HashSet<u32>,
    /// Rows this instance wrote since the tracker was made: as written, or `None` when the
    /// write's outcome is unknown (an error after the request left, a lost condition), to be
    /// read.
    dirty: HashMap<u32, Option<TaskRecord>>,
    /// More than [`DIRTY_CAP`] rows were written since: `dirty` was dropped, and the refresh
    /// from this tracker reads everything.
    overflowed: bool,
    /// When it was made: a tracker is used once, by the refresh that starts from its cursor.
    born: Instant,
}

impl Tracker {
    fn new(cursor: u64) -> Tracker {
        Tracker {
            cursor,
            made: cursor,
            stamp: JobStamp::new(0, None),
            active: HashSet::new(),
            dirty: HashMap::new(),
            overflowed: false,
            born: Instant::now(),
        }
    }

    /// Remembers a write of row `id` (see [`Changes::wrote_task`]), within [`DIRTY_CAP`].
    fn wrote(&mut self, id: u32, row: Option<&TaskRecord>, cap: usize) {
        if self.overflowed {
            return;
        }
        if self.dirty.len() >= cap && !self.dirty.contains_key(&id) {
            self.overflowed = true;
            self.dirty = HashMap::new();
            return;
        }
        let slot = self.dirty.entry(id).or_insert(None);
        // A newer row only (two writes of this instance may answer out of order).
        *slot = match (slot.take(), row) {
            (Some(had), Some(new)) if had.version > new.version => Some(had),
            (_, new) => new.cloned(),
        };
    }
}

#[derive(Debug, Default)]
struct JobTracking {
    /// Live [`Driving`] guards of the job.
    drivers: usize,
    trackers: VecDeque<Tracker>,
    /// The job item's latest stamp read or written by this instance, with the ticket taken
    /// before the request left (`None`: no job, or an incomplete one).
    observed: Option<(u64, Option<JobStamp>)>,
}

#[derive(Debug)]
struct State {
    every_job: bool,
    /// Tickets and cursors, from one counter.
    next: u64,
    jobs: HashMap<String, JobTracking>,
    /// [`DIRTY_CAP`] and [`TRACKER_IDLE`] (smaller in tests).
    dirty_cap: usize,
    idle: Duration,
}

impl Default for State {
    fn default() -> State {
        State {
            every_job: false,
            next: 0,
            jobs: HashMap::new(),
            dirty_cap: DIRTY_CAP,
            idle: TRACKER_IDLE,
        }
    }
}

impl JobTracking {
    /// Drops the trackers unused for `idle`.
    fn evict(&mut self, idle: Duration) {
        self.trackers.retain(|t| t.born.elapsed() < idle);
    }
}

impl State {
    fn ticket(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn tracked(&mut self, job: &str) -> Option<&mut JobTracking> {
        if self.every_job {
            return Some(self.jobs.entry(job.to_string()).or_default());
        }
        self.jobs.get_mut(job).filter(|j| j.drivers > 0)
    }
}

/// The change tracking of one store, shared by its clones.
#[derive(Debug, Clone, Default)]
pub(super) struct Changes(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// `BatchGetItem` was refused (the role lacks `dynamodb:BatchGetItem`): rows are read
    /// with `GetItem` from then on.
    batch_get_denied: AtomicBool,
}

/// How a refresh goes.
enum Start {
    /// Every row: no tracker for the cursor, or the job item changed since.
    Full { cursor: u64 },
    /// The active set and the rows written since.
    Since {
        cursor: u64,
        active: HashSet<u32>,
        dirty: HashMap<u32, Option<TaskRecord>>,
    },
}

impl Changes {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a cache of what refreshes may skip: a panic while it was held leaves
        // at worst a tracker that forces a full read.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `BatchGetItem` was refused once already.
    fn batch_get_denied(&self) -> bool {
        self.0.batch_get_denied.load(Ordering::Relaxed)
    }

    /// Remembers that `BatchGetItem` is refused; `true` the first time (to warn once).
    fn deny_batch_get(&self) -> bool {
        !self.0.batch_get_denied.swap(true, Ordering::Relaxed)
    }

    pub(super) fn track_every_job(&self) {
        self.lock().every_job = true;
    }

    pub(super) fn ticket(&self) -> u64 {
        self.lock().ticket()
    }

    fn tracking(&self, job: &str) -> bool {
        self.lock().tracked(job).is_some()
    }

    /// The job item's stamp as read (or written) with `ticket`.
    pub(super) fn observed(&self, job: &str, ticket: u64, stamp: Option<JobStamp>) {
        let mut state = self.lock();
        if let Some(j) = state.tracked(job)
            && j.observed.as_ref().is_none_or(|(t, _)| *t < ticket)
        {
            j.observed = Some((ticket, stamp));
        }
    }

    /// This instance moved the job item from `old` to `new` (an `update_job` it made): a
    /// tracker that knew `old` knows `new`, since nobody else wrote in between.
    pub(super) fn wrote_job(&self, job: &str, ticket: u64, old: Option<JobStamp>, new: JobStamp) {
        let mut state = self.lock();
        let Some(j) = state.tracked(job) else {
            return;
        };
        if let Some(old) = old {
            for t in j.trackers.iter_mut().filter(|t| t.stamp == old) {
                t.stamp = new.clone();
            }
        }
        if j.observed.as_ref().is_none_or(|(t, _)| *t < ticket) {
            j.observed = Some((ticket, Some(new)));
        }
    }

    /// This instance wrote task `id` of `job`: `row` as stored, `None` when the outcome is
    /// unknown or the row is someone else's (a write that lost its condition): the next
    /// refresh reads it.
    pub(super) fn wrote_task(&self, job: &str, id: u32, row: Option<&TaskRecord>) {
        let mut state = self.lock();
        let (cap, idle) = (state.dirty_cap, state.idle);
        let Some(j) = state.tracked(job) else {
            return;
        };
        j.evict(idle);
        for t in j.trackers.iter_mut() {
            t.wrote(id, row, cap);
        }
    }

    /// The job was created or deleted through this instance: every tracker of it is void.
    pub(super) fn forget(&self, job: &str) {
        if let Some(j) = self.lock().jobs.get_mut(job) {
            j.trackers.clear();
            j.observed = None;
        }
    }

    /// The stamp to compare with `cursor`'s tracker, if this instance observed the job item
    /// after that tracker was made: then no read is needed.
    fn fresh_stamp(&self, job: &str, cursor: Option<u64>) -> Option<Option<JobStamp>> {
        let mut state = self.lock();
        let j = state.tracked(job)?;
        let made = j.trackers.iter().find(|t| Some(t.cursor) == cursor)?.made;
        match &j.observed {
            Some((ticket, stamp)) if *ticket > made => Some(stamp.clone()),
            _ => None,
        }
    }

    /// Makes the tracker of the refresh that starts from `cursor` with the job item at `stamp`
    /// (it collects this instance's writes from now on), and says what to read.
    fn start(&self, job: &str, cursor: Option<u64>, stamp: JobStamp) -> Option<Start> {
        let mut state = self.lock();
        let made = state.ticket();
        let idle = state.idle;
        let j = state.tracked(job)?;
        j.evict(idle);
        let from = j
            .trackers
            .iter()
            .find(|t| Some(t.cursor) == cursor && t.stamp == stamp && !t.overflowed)
            .map(|t| (t.active.clone(), t.dirty.clone()));
        if j.trackers.len() >= TRACKERS_PER_JOB {
            j.trackers.pop_front();
        }
        j.trackers.push_back(Tracker {
            stamp,
            ..Tracker::new(made)
        });
        Some(match from {
            Some((active, dirty)) => Start::Since {
                cursor: made,
                active,
                dirty,
            },
            None => Start::Full { cursor: made },
        })
    }

    /// The refresh that made `cursor` read `rows`; `from`, the cursor it started from, is used
    /// up.
    fn finish(&self, job: &str, from: Option<u64>, cursor: u64, rows: &[TaskRecord]) {
        let mut state = self.lock();
        let Some(j) = state.tracked(job) else {
            return;
        };
        j.trackers.retain(|t| Some(t.cursor) != from);
        if let Some(t) = j.trackers.iter_mut().find(|t| t.cursor == cursor) {
            t.active = rows
                .iter()
                .filter(|r| indexed(r.state))
                .map(|r| r.id)
                .collect();
        }
    }

    /// A refresh that failed: its tracker goes.
    fn abandon(&self, job: &str, cursor: u64) {
        if let Some(j) = self.lock().jobs.get_mut(job) {
            j.trackers.retain(|t| t.cursor != cursor);
        }
    }
}

/// While it lives, its store takes itself for the one driver of the job (see the module docs):
/// [`DynamoStateStore::drive`].
#[derive(Debug)]
pub struct Driving {
    changes: Changes,
    job: String,
}

impl Drop for Driving {
    fn drop(&mut self) {
        let mut state = self.changes.lock();
        if let Some(j) = state.jobs.get_mut(&self.job) {
            j.drivers = j.drivers.saturating_sub(1);
            if j.drivers == 0 {
                state.jobs.remove(&self.job);
            }
        }
    }
}

impl DynamoStateStore {
    /// Declares this instance (and its clones) the driver of `job` until the guard is
    /// dropped: every write of the job's rows outside its active tasks goes through it, apart
    /// from writers that write the job item after them (`orch retry`). `list_tasks_since`
    /// then reads only what changed; without it, every row. The AWS platform takes it with
    /// the job's lease.
    pub fn drive(&self, job: &str) -> Driving {
        let mut state = self.changes.lock();
        let j = state.jobs.entry(job.to_string()).or_default();
        j.drivers += 1;
        Driving {
            changes: self.changes.clone(),
            job: job.to_string(),
        }
    }

    /// Takes this instance for the driver of every job (tests, and tools that drive every job
    /// they read); see [`DynamoStateStore::drive`].
    pub fn driving_every_job(self) -> Self {
        self.changes.track_every_job();
        self
    }

    /// `StateStore::list_tasks_since` (see the module docs).
    pub(super) async fn tasks_since(
        &self,
        job: &str,
        cursor: Option<u64>,
    ) -> BackendResult<TaskChanges> {
        if !self.changes.tracking(job) {
            return self.all_tasks(job).await;
        }
        let stamp = match self.changes.fresh_stamp(job, cursor) {
            Some(stamp) => stamp,
            None => self.job_stamp(job).await?,
        };
        // No job, or one half created or deleted: nothing to track.
        let Some(stamp) = stamp else {
            return self.all_tasks(job).await;
        };
        let Some(start) = self.changes.start(job, cursor, stamp) else {
            return self.all_tasks(job).await;
        };
        let (next, full) = match &start {
            Start::Full { cursor } => (*cursor, true),
            Start::Since { cursor, .. } => (*cursor, false),
        };
        let rows = match start {
            Start::Full { .. } => self.list_tasks(job).await,
            Start::Since { active, dirty, .. } => self.changed_rows(job, active, dirty).await,
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.changes.abandon(job, next);
                return Err(e);
            }
        };
        self.changes.finish(job, cursor, next, &rows);
        Ok(TaskChanges {
            tasks: rows,
            full,
            cursor: Some(next),
        })
    }

    async fn all_tasks(&self, job: &str) -> BackendResult<TaskChanges> {
        Ok(TaskChanges {
            tasks: self.list_tasks(job).await?,
            full: true,
            cursor: None,
        })
    }

    /// The job item's stamp, read strongly consistent (and remembered as observed).
    async fn job_stamp(&self, job: &str) -> BackendResult<Option<JobStamp>> {
        let ticket = self.changes.ticket();
        let pk = self.keys.job_pk(job);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), JOB_SK.into())))
            .projection_expression("#v, #w, #inc")
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_names("#w", WRITE_ID)
            .expression_attribute_names("#inc", INCOMPLETE)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(SERVICE, "GetItem", format!("{} {pk}", self.table), e))?;
        let stamp = JobStamp::of(out.item.as_ref());
        self.changes.observed(job, ticket, stamp.clone());
        Ok(stamp)
    }

    /// The active rows (the index, which may lag), the rows this instance wrote (as written),
    /// and, read strongly consistent, those that were active or written with an unknown
    /// outcome and are no longer in the index; sorted by id, the newest of two copies kept.
    async fn changed_rows(
        &self,
        job: &str,
        active: HashSet<u32>,
        dirty: HashMap<u32, Option<TaskRecord>>,
    ) -> BackendResult<Vec<TaskRecord>> {
        let mut rows: HashMap<u32, TaskRecord> = HashMap::new();
        // The newer of two copies of a row (the index may lag).
        fn keep(rows: &mut HashMap<u32, TaskRecord>, row: TaskRecord) {
            match rows.get(&row.id) {
                Some(had) if had.version >= row.version => {}
                _ => {
                    rows.insert(row.id, row);
                }
            }
        }
        let pk = self.keys.active_pk(job);
        let indexed_items = self
            .query_all("Query by-state", &pk, false, || self.active_query(&pk))
            .await?;
        for item in &indexed_items {
            keep(&mut rows, decode_task(item)?);
        }
        let in_index: HashSet<u32> = rows.keys().copied().collect();
        let mut read = Vec::new();
        for (id, written) in &dirty {
            match written {
                // What this instance wrote is the row: only the driver and writers that mark
                // the job item write it outside the active set, and a worker's later write
                // of an active one shows in the index or in the next refresh's reads.
                Some(row) => keep(&mut rows, row.clone()),
                None if !in_index.contains(id) => read.push(*id),
                None => {}
            }
        }
        read.extend(
            active
                .iter()
                .filter(|id| !in_index.contains(id) && !dirty.contains_key(id)),
        );
        read.sort_unstable();
        read.dedup();
        for row in self.task_rows(job, &read).await? {
            keep(&mut rows, row);
        }
        let mut rows: Vec<TaskRecord> = rows.into_values().collect();
        rows.sort_by_key(|t| t.id);
        Ok(rows)
    }

    /// The rows of the given tasks, read strongly consistent; a missing row is absent. With
    /// `BatchGetItem`s, or `GetItem`s once the role turned out not to allow it.
    async fn task_rows(&self, job: &str, ids: &[u32]) -> BackendResult<Vec<TaskRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if !self.changes.batch_get_denied() {
            match self.batch_task_rows(job, ids).await {
                Err(_) if self.changes.batch_get_denied() => {}
                other => return other,
            }
        }
        self.task_rows_one_by_one(job, ids).await
    }

    /// [`DynamoStateStore::task_rows`] with `BatchGetItem`s of 100 (the keys DynamoDB leaves
    /// unprocessed asked again). A refusal for want of the permission is remembered.
    async fn batch_task_rows(&self, job: &str, ids: &[u32]) -> BackendResult<Vec<TaskRecord>> {
        let pk = self.keys.job_pk(job);
        let resource = format!("{} {pk}", self.table);
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_GET_MAX) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|id| key(pk.clone(), task_sk(*id)))
                .collect();
            let resource = &resource;
            let items = retry_unprocessed("BatchGetItem", keys, self.backoff, |keys| async move {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| build_error("KeysAndAttributes", e))?;
                let answer = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| sdk_error(SERVICE, "BatchGetItem", resource.as_str(), e));
                let mut out = match answer {
                    Ok(out) => out,
                    Err(e) => {
                        if is_access_denied(&e) && self.changes.deny_batch_get() {
                            tracing::warn!(
                                table = %self.table,
                                error = %e,
                                "the coordinator's role lacks dynamodb:BatchGetItem on the table \
                                 (infra/modules/iam/main.tf grants it; apply the Terraform again): \
                                 reading the rows that changed with GetItem instead"
                            );
                        }
                        return Err(e.into());
                    }
                };
                let got = out
                    .responses
                    .as_mut()
                    .and_then(|r| r.remove(&self.table))
                    .unwrap_or_default();
                let rest = out
                    .unprocessed_keys
                    .as_mut()
                    .and_then(|u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                Ok((got, rest))
            })
            .await?;
            for item in &items {
                rows.push(decode_task(item)?);
            }
        }
        Ok(rows)
    }

    /// [`DynamoStateStore::task_rows`] with one `GetItem` a row, a few in flight (as
    /// `index_partition_items` reads), for a role without `BatchGetItem`.
    async fn task_rows_one_by_one(&self, job: &str, ids: &[u32]) -> BackendResult<Vec<TaskRecord>> {
        let pk = self.keys.job_pk(job);
        let mut next = ids.iter().copied();
        let mut running = tokio::task::JoinSet::new();
        let mut rows = Vec::with_capacity(ids.len());
        loop {
            while running.len() < READ_CONCURRENCY {
                let Some(id) = next.next() else {
                    break;
                };
                let store = self.clone();
                let pk = pk.clone();
                running.spawn(async move { store.item(pk, &task_sk(id)).await });
            }
            match running.join_next().await {
                None => break,
                Some(Ok(item)) => {
                    if let Some(item) = item? {
                        rows.push(decode_task(&item)?);
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
        Ok(rows)
    }
}

/// Whether a request was refused for want of a permission (IAM's `AccessDeniedException`):
/// what a role without `dynamodb:BatchGetItem` answers.
pub(super) fn is_access_denied(e: &AwsError) -> bool {
    matches!(e, AwsError::Service { code, .. } if code == "AccessDeniedException" || code == "AccessDenied")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const JOB: &str = "j";

    fn stamp() -> JobStamp {
        JobStamp::new(3, Some("w"))
    }

    /// Tracking every job, with `dirty_cap` and `idle` for its limits.
    fn changes(dirty_cap: usize, idle: Duration) -> Changes {
        let changes = Changes::default();
        changes.track_every_job();
        {
            let mut state = changes.lock();
            state.dirty_cap = dirty_cap;
            state.idle = idle;
        }
        changes
    }

    /// A first refresh (full), finished: its cursor.
    fn first(changes: &Changes) -> u64 {
        let Some(Start::Full { cursor }) = changes.start(JOB, None, stamp()) else {
            panic!("a first refresh reads everything");
        };
        changes.finish(JOB, None, cursor, &[]);
        cursor
    }

    fn row(id: u32) -> TaskRecord {
        TaskRecord::new(JOB, id, 10, 1)
    }

    fn remembered(changes: &Changes) -> Vec<usize> {
        let mut state = changes.lock();
        let j = state.tracked(JOB).unwrap();
        j.trackers.iter().map(|t| t.dirty.len()).collect()
    }

    #[test]
    fn a_tracker_remembers_writes_up_to_its_cap() {
        let changes = changes(3, TRACKER_IDLE);
        let cursor = first(&changes);
        for id in 0..3 {
            changes.wrote_task(JOB, id, Some(&row(id)));
        }
        // The same row again is no new one.
        changes.wrote_task(JOB, 2, None);
        assert_eq!(remembered(&changes), [3]);
        match changes.start(JOB, Some(cursor), stamp()) {
            Some(Start::Since { dirty, .. }) => {
                assert_eq!(dirty.len(), 3);
                assert_eq!(dirty[&2], None, "the unknown outcome, the latest");
            }
            _ => panic!("within the cap, a refresh reads what changed"),
        }
    }

    #[test]
    fn a_tracker_past_its_cap_forgets_its_writes_and_reads_everything() {
        let changes = changes(3, TRACKER_IDLE);
        let cursor = first(&changes);
        for id in 0..10 {
            changes.wrote_task(JOB, id, Some(&row(id)));
        }
        // Nothing kept past the cap, however many more writes come.
        assert_eq!(remembered(&changes), [0]);
        {
            let mut state = changes.lock();
            assert!(state.tracked(JOB).unwrap().trackers[0].overflowed);
        }
        let Some(Start::Full { cursor: next }) = changes.start(JOB, Some(cursor), stamp()) else {
            panic!("past the cap, a refresh reads everything");
        };
        changes.finish(JOB, Some(cursor), next, &[]);
        // The tracker made by that refresh starts afresh.
        changes.wrote_task(JOB, 1, Some(&row(1)));
        assert!(matches!(
            changes.start(JOB, Some(next), stamp()),
            Some(Start::Since { .. })
        ));
    }

    #[test]
    fn trackers_unused_for_a_while_go() {
        // Idle at once: the next write evicts the tracker, and its cursor reads everything.
        let changes = changes(DIRTY_CAP, Duration::ZERO);
        let cursor = first(&changes);
        changes.wrote_task(JOB, 1, Some(&row(1)));
        assert_eq!(remembered(&changes), Vec::<usize>::new());
        assert!(matches!(
            changes.start(JOB, Some(cursor), stamp()),
            Some(Start::Full { .. })
        ));

        // Not idle yet: kept.
        let changes = self::changes(DIRTY_CAP, TRACKER_IDLE);
        let cursor = first(&changes);
        changes.wrote_task(JOB, 1, Some(&row(1)));
        assert_eq!(remembered(&changes), [1]);
        assert!(matches!(
            changes.start(JOB, Some(cursor), stamp()),
            Some(Start::Since { .. })
        ));
    }

    #[test]
    fn orphaned_cursors_keep_nothing_once_idle() {
        // A driver that restarts with a new cache leaves its cursor behind: it goes with
        // time, not only when newer trackers push it out.
        let changes = changes(DIRTY_CAP, Duration::from_millis(50));
        let _orphan = first(&changes);
        std::thread::sleep(Duration::from_millis(60));
        let Some(Start::Full { cursor }) = changes.start(JOB, None, stamp()) else {
            panic!("a new cache reads everything");
        };
        changes.finish(JOB, None, cursor, &[]);
        changes.wrote_task(JOB, 1, Some(&row(1)));
        assert_eq!(remembered(&changes), [1], "only the live tracker");
    }

    /// The error a role without `dynamodb:BatchGetItem` gets, through the one conversion of
    /// SDK errors, is what sends the reads to `GetItem`; other refusals are not.
    #[test]
    fn an_access_denied_answer_is_recognised() {
        use aws_sdk_dynamodb::config::http::HttpResponse;
        use aws_sdk_dynamodb::error::{ErrorMetadata, SdkError};
        use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemError;

        let answer = |code: &str, status: u16| {
            let err = BatchGetItemError::generic(
                ErrorMetadata::builder()
                    .code(code)
                    .message("not authorized to perform: dynamodb:BatchGetItem")
                    .build(),
            );
            let response = HttpResponse::new(status.try_into().unwrap(), "".into());
            sdk_error(
                SERVICE,
                "BatchGetItem",
                "t",
                SdkError::service_error(err, response),
            )
        };
        let denied = answer("AccessDeniedException", 400);
        assert!(is_access_denied(&denied));
        // Classed a configuration error: the driver would stop on it, hence the fallback.
        assert_eq!(denied.category(), ErrorCategory::Invalid);
        assert!(!is_access_denied(&answer("ThrottlingException", 400)));
        assert!(!is_access_denied(&answer("ValidationException", 400)));
        assert!(!is_access_denied(&answer("ResourceNotFoundException", 400)));
    }

    #[test]
    fn a_denial_is_remembered_and_reported_once() {
        let changes = Changes::default();
        assert!(!changes.batch_get_denied());
        assert!(changes.deny_batch_get(), "the first denial warns");
        assert!(!changes.deny_batch_get(), "the next ones do not");
        assert!(changes.clone().batch_get_denied(), "shared by clones");
    }
}
