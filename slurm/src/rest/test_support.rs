//! What the tests of the REST transport share: the recorded and schema-written answers
//! (v0.0.38: `tests/fixtures/v0.0.38/rest_*` from the 22.05 test cluster; v0.0.40, v0.0.41:
//! written from the published schema), a submission, and the context of a refused token.

use std::path::{Path, PathBuf};

use super::interpret::Refused;
use crate::submission::ArraySubmission;

/// A fixture of `tests/fixtures/<version>/`.
pub(super) fn fixture(version: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version)
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An array of seven tasks with every option set.
pub(super) fn submission() -> ArraySubmission {
    ArraySubmission {
        name: "reviews-1a2b".into(),
        comment: "orch:work:g3:b1001:0123456789ab".into(),
        indices: vec![0, 1, 2, 3, 7, 9, 10],
        max_running: Some(4),
        script: "#!/bin/sh\nexec orch-worker run\n".into(),
        cpus_per_task: 2,
        memory_mb: 1500,
        time_minutes: 20,
        partition: Some("debug".into()),
        account: Some("orch".into()),
        qos: None,
        gres: Some("gpu:1".into()),
        constraint: Some("avx2".into()),
        output: "/shared/logs/task-b1001-%A_%a.log".into(),
        signal: "B:TERM@60".into(),
        extra: vec![],
        environment: vec![("ORCH_LOG".into(), "info".into())],
        workdir: PathBuf::from("/shared/work"),
    }
}

/// The context of a token refused for `alice`.
pub(super) const REFUSED: Refused<'static> = Refused {
    field: "spec.executor.slurm.tokenFile",
    user: "alice",
    url: "http://slurm:6820",
};
