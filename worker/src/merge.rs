//! One aggregation task (`orch-worker aggregate`): claim its row like a work task, merge its
//! group — or run the final merge — as the job's aggregation plan says, renewing the lease
//! meanwhile, and commit. A merge task is retried, paused and cancelled by the engine exactly
//! like a work task. See docs/architecture.md ("Aggregate").

use orch_core::model::{TaskKind, TaskRecord};
use orch_core::owner::this_process;
use orch_core::platform::Backends;
use tracing::info;

use crate::checkpoint::Tally;
use crate::error::{Error, Result};
use crate::run::{HEARTBEAT, WorkerArgs, claim, commit, heartbeat, record_failure};

/// Runs aggregation task `args.task`, which the executor started as a `expected` task; returns
/// the committed row.
pub async fn run(backends: &Backends, args: &WorkerArgs, expected: TaskKind) -> Result<TaskRecord> {
    let state = backends.state.as_ref();
    let mut row = claim(state, args, &this_process()).await?;
    let result = async {
        if row.kind != expected {
            return Err(Error::Setup(format!(
                "task {} is a {} task, not a {expected} task",
                args.task, row.kind
            )));
        }
        info!(stage = %row.kind, "claimed");
        let merge = orch_runtime::aggregate::run_task(
            backends,
            &args.job,
            args.task,
            args.manifest_sha256.as_deref(),
            args.manifest_cache.as_deref(),
        );
        tokio::pin!(merge);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            tokio::select! {
                done = &mut merge => {
                    done?;
                    break;
                }
                _ = beat.tick() => heartbeat(state, &mut row, &Tally::default()).await?,
            }
        }
        commit(state, &mut row, &Tally::default()).await
    }
    .await;
    if let Err(e) = &result
        && !matches!(e, Error::LostLease { .. })
    {
        record_failure(state, args, e).await;
    }
    result
}
