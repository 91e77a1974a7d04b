//! Slurm's job states as orch's executor states. What ended a task decides how the engine
//! treats it: an exit code is the worker's own verdict (a handler or worker failure); the
//! cluster ending a task (memory, time, node, preemption, cancel) is named as such, so that
//! `orch status` says "out of memory" rather than "exit 137".

use orch_core::backend::{ExecFailure, ExecState};

use crate::api::ArrayTask;

/// The executor state of one array task.
pub fn exec_state(task: &ArrayTask) -> ExecState {
    let failed = |reason: ExecFailure, what: &str| ExecState::Failed {
        reason,
        message: match &task.reason {
            Some(r) if !r.is_empty() && r != "None" => format!("{what} (Slurm: {r})"),
            _ => what.to_string(),
        },
    };
    // Flags such as `CANCELLED by 0` or `RUNNING+COMPLETING` carry the state first.
    let state = task
        .state
        .split([' ', '+'])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match state.as_str() {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD"
        | "SPECIAL_EXIT" | "CONFIGURING" | "POWER_UP_NODE" => ExecState::Queued,
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT"
        | "RESIZING" => ExecState::Running,
        "COMPLETED" => ExecState::Exited {
            code: Some(task.exit_code.unwrap_or(0)),
            signal: None,
        },
        "FAILED" => ExecState::Exited {
            code: task.exit_code,
            signal: task.signal,
        },
        "OUT_OF_MEMORY" => failed(
            ExecFailure::OutOfMemory,
            "out of memory: the task used more than spec.resources.memory",
        ),
        "TIMEOUT" => failed(
            ExecFailure::TimeLimit,
            "time limit: the task ran longer than spec.resources.time",
        ),
        "DEADLINE" => failed(ExecFailure::TimeLimit, "the job's Slurm deadline passed"),
        "NODE_FAIL" => failed(ExecFailure::NodeFailure, "its node failed"),
        "BOOT_FAIL" => failed(ExecFailure::NodeFailure, "its node failed to boot"),
        "PREEMPTED" => failed(ExecFailure::Preempted, "preempted by Slurm"),
        "CANCELLED" | "REVOKED" => failed(ExecFailure::Cancelled, "cancelled in Slurm"),
        other => failed(ExecFailure::Other, &format!("Slurm state {other}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task(state: &str, exit_code: Option<i32>) -> ArrayTask {
        ArrayTask {
            index: 0,
            state: state.into(),
            exit_code,
            signal: None,
            reason: None,
        }
    }

    #[test]
    fn every_documented_state_maps() {
        assert_eq!(exec_state(&task("PENDING", None)), ExecState::Queued);
        assert_eq!(exec_state(&task("RUNNING", None)), ExecState::Running);
        assert_eq!(
            exec_state(&task("COMPLETED", Some(0))),
            ExecState::Exited {
                code: Some(0),
                signal: None
            }
        );
        assert_eq!(
            exec_state(&task("FAILED", Some(3))),
            ExecState::Exited {
                code: Some(3),
                signal: None
            }
        );
        for (state, reason) in [
            ("OUT_OF_MEMORY", ExecFailure::OutOfMemory),
            ("TIMEOUT", ExecFailure::TimeLimit),
            ("DEADLINE", ExecFailure::TimeLimit),
            ("NODE_FAIL", ExecFailure::NodeFailure),
            ("BOOT_FAIL", ExecFailure::NodeFailure),
            ("PREEMPTED", ExecFailure::Preempted),
            ("CANCELLED by 0", ExecFailure::Cancelled),
            ("MYSTERY", ExecFailure::Other),
        ] {
            match exec_state(&task(state, None)) {
                ExecState::Failed { reason: r, message } => {
                    assert_eq!(r, reason, "{state}");
                    assert!(!message.is_empty());
                }
                other => panic!("{state}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_reason_is_kept_in_the_message() {
        let mut t = task("NODE_FAIL", None);
        t.reason = Some("NodeDown".into());
        match exec_state(&t) {
            ExecState::Failed { message, .. } => assert!(message.contains("NodeDown"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
