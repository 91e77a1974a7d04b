//! A job's task rows as last read, kept up to date by reading only the rows written since.
//!
//! The driver looks at every task on every tick, and the operator's status at every refresh.
//! Reading and decoding every row each time made the coordinator's cost grow with the job's
//! size times its duration; with a store that tracks changes
//! ([`StateStore::list_tasks_since`]) a refresh costs what changed instead: SQLite by a change
//! sequence, DynamoDB (for the process that holds the job's lease) by the job's active tasks
//! and the rows the store wrote itself (docs/aws.md, "What a coordinator reads per tick").

use orch_core::backend::{BackendResult, StateStore};
use orch_core::model::TaskRecord;

/// A cache shared by the tasks that read one job's rows (the operator's driver and status).
pub type SharedTaskCache = std::sync::Arc<tokio::sync::Mutex<TaskCache>>;

/// The rows of one job, sorted by id.
#[derive(Debug, Default)]
pub struct TaskCache {
    rows: Vec<TaskRecord>,
    cursor: Option<u64>,
}

impl TaskCache {
    /// Reads what changed since the last refresh (everything, the first time) and returns the
    /// rows as they are now.
    pub async fn refresh(
        &mut self,
        state: &dyn StateStore,
        job: &str,
    ) -> BackendResult<&[TaskRecord]> {
        let changes = state.list_tasks_since(job, self.cursor).await?;
        self.cursor = changes.cursor;
        changes.apply_to(&mut self.rows);
        Ok(&self.rows)
    }

    /// The rows as of the last refresh.
    pub fn rows(&self) -> &[TaskRecord] {
        &self.rows
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::model::TaskState;

    use super::*;
    use orch_embedded::SqliteStateStore;
    use orch_testkit::contract::sample_job;

    #[tokio::test]
    async fn a_refresh_sees_every_write_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(&dir.path().join("s.sqlite")).unwrap();
        let tasks: Vec<TaskRecord> = (0..4).map(|i| TaskRecord::new("j", i, 10, 1)).collect();
        store.create_job(&sample_job("j", 4), &tasks).await.unwrap();

        let mut cache = TaskCache::default();
        assert_eq!(cache.refresh(&store, "j").await.unwrap(), tasks.as_slice());

        let mut two = store.get_task("j", 2).await.unwrap().unwrap();
        two.transition(TaskState::Dispatched, 2).unwrap();
        let two = store.update_task(&two).await.unwrap();
        let rows = cache.refresh(&store, "j").await.unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[2], two);
        assert_eq!(rows[..2], tasks[..2]);
        assert_eq!(rows[3], tasks[3]);
        // Nothing written since: the same rows.
        let again = cache.refresh(&store, "j").await.unwrap().to_vec();
        assert_eq!(again, cache.rows());
        assert_eq!(again[2].state, TaskState::Dispatched);
    }
}
