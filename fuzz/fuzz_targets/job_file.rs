//! The job file loader (`orch validate`, `orch run`): YAML text → `extends` → schema → typed
//! spec → rules → resolved paths. Any text must give a job or a typed error, and a job that
//! loads must survive the trip through `job.json` (the spec is stored there for every worker).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orch_core::load::load_text;
use orch_core::spec::OrchJobFile;

/// What `extends: base.yaml` finds: a valid base, so that the merge is exercised too. Any
/// other name is missing (the fuzz input never reaches the disk).
const BASE: &str = "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {name: base}\n\
    spec:\n  input: {uri: in.jsonl}\n  handler: {builtin: {name: identity}}\n  \
    retry: {maxAttempts: 2}\n";

fn read(path: &Path) -> orch_core::Result<String> {
    if path.file_name().is_some_and(|n| n == "base.yaml") {
        Ok(BASE.to_string())
    } else {
        Err(orch_core::Error::Read {
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: nothing relative to the job file is found on disk.
    let path = Path::new("/nonexistent-orch-fuzz/job.yaml");
    let Ok(job) = load_text(path, text, &read) else {
        return;
    };
    // The spec goes into job.json as JSON and every worker decodes it from there.
    let json = serde_json::to_vec(&job.file).expect("a loaded spec encodes");
    let back: OrchJobFile = serde_json::from_slice(&json).expect("a stored spec decodes");
    assert_eq!(back, job.file, "the spec changed through job.json");
});
