//! A job's task rows as last read, kept up to date by reading only the rows written since.
//!
//! The driver looks at every task on every tick, and the operator's status at every refresh.
//! Reading and decoding every row each time made the coordinator's cost grow with the job's
//! size times its duration; with a store that tracks changes
//! ([`StateStore::list_tasks_since`]: SQLite does) a refresh costs what changed instead. With
//! a store that does not (DynamoDB), a refresh is a full read, as before.

use orch_core::backend::{BackendResult, StateStore};
use orch_core::model::TaskRecord;

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
        if changes.full {
            self.rows = changes.tasks;
        } else {
            for row in changes.tasks {
                match self.rows.binary_search_by_key(&row.id, |r| r.id) {
                    // A newer row only: an older one may arrive from a store whose reads lag.
                    Ok(i) if row.version >= self.rows[i].version => self.rows[i] = row,
                    Ok(_) => {}
                    Err(i) => self.rows.insert(i, row),
                }
            }
        }
        self.cursor = changes.cursor;
        Ok(&self.rows)
    }

    /// The rows as of the last refresh.
    pub fn rows(&self) -> &[TaskRecord] {
        &self.rows
    }
}
