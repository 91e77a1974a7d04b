//! A [`StateStore`] whose attempt history is out of order: every `put_attempt` and
//! `list_attempts` fails, everything else goes to the store it wraps. The history is best
//! effort, so a task must run, commit and be retried exactly as well over it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use orch_core::ErrorCategory;
use orch_core::backend::{
    BackendError, BackendResult, Claimed, StateStore, TaskChanges, TaskClaim,
};
use orch_core::history::AttemptRecord;
use orch_core::model::{JobRecord, TaskRecord, TaskState};

pub struct NoHistory {
    pub inner: Arc<dyn StateStore>,
    /// History calls refused so far.
    pub refused: AtomicU64,
}

impl NoHistory {
    pub fn new(inner: Arc<dyn StateStore>) -> Self {
        NoHistory {
            inner,
            refused: AtomicU64::new(0),
        }
    }

    fn refuse(&self) -> BackendError {
        self.refused.fetch_add(1, Ordering::SeqCst);
        BackendError::message(ErrorCategory::Infrastructure, "the history is out of order")
    }
}

#[async_trait]
impl StateStore for NoHistory {
    async fn create_job(&self, job: &JobRecord, tasks: &[TaskRecord]) -> BackendResult<()> {
        self.inner.create_job(job, tasks).await
    }
    async fn get_job(&self, job: &str) -> BackendResult<Option<JobRecord>> {
        self.inner.get_job(job).await
    }
    async fn add_tasks(&self, job: &str, tasks: &[TaskRecord]) -> BackendResult<()> {
        self.inner.add_tasks(job, tasks).await
    }
    async fn list_jobs(&self) -> BackendResult<Vec<JobRecord>> {
        self.inner.list_jobs().await
    }
    async fn update_job(&self, job: &JobRecord) -> BackendResult<JobRecord> {
        self.inner.update_job(job).await
    }
    async fn list_tasks(&self, job: &str) -> BackendResult<Vec<TaskRecord>> {
        self.inner.list_tasks(job).await
    }
    async fn list_tasks_since(&self, job: &str, cursor: Option<u64>) -> BackendResult<TaskChanges> {
        self.inner.list_tasks_since(job, cursor).await
    }
    async fn get_task(&self, job: &str, task: u32) -> BackendResult<Option<TaskRecord>> {
        self.inner.get_task(job, task).await
    }
    async fn update_task(&self, task: &TaskRecord) -> BackendResult<TaskRecord> {
        self.inner.update_task(task).await
    }
    async fn claim_task(&self, claim: &TaskClaim<'_>) -> BackendResult<Claimed> {
        self.inner.claim_task(claim).await
    }
    async fn delete_job(&self, job: &str) -> BackendResult<()> {
        self.inner.delete_job(job).await
    }
    async fn list_tasks_in_state(
        &self,
        job: &str,
        state: TaskState,
    ) -> BackendResult<Vec<TaskRecord>> {
        self.inner.list_tasks_in_state(job, state).await
    }
    async fn put_attempt(&self, _record: &AttemptRecord) -> BackendResult<()> {
        Err(self.refuse())
    }
    async fn list_attempts(
        &self,
        _job: &str,
        _task: Option<u32>,
    ) -> BackendResult<Vec<AttemptRecord>> {
        Err(self.refuse())
    }
}
