//! The job-file schema is generated from the Rust types and checked in as
//! `schema/orchjob.schema.json`, so a change to the spec shows up in review as a schema diff.
//! Regenerate with `ORCH_UPDATE_GOLDEN=1 cargo test -p orch-core --test schema_golden`.
//!
//! It lives outside `crds/` on purpose: `kubectl apply -f crds/` reads every `.json` and `.yaml`
//! file there as a Kubernetes object, and a JSON schema is none.
#![allow(clippy::unwrap_used)]

#[test]
fn checked_in_schema_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/orchjob.schema.json");
    let generated =
        serde_json::to_string_pretty(&orch_core::spec::job_file_schema()).unwrap() + "\n";
    if std::env::var_os("ORCH_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "schema/orchjob.schema.json is out of date: run ORCH_UPDATE_GOLDEN=1 cargo test -p orch-core --test schema_golden"
    );
}
