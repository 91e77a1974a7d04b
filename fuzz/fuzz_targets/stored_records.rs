//! What orch reads back from its own storage: `job.json` (`decode_manifest`), `_DONE` markers
//! and job records (`decode_versioned`), task records (serde_json, as the stores read them). A damaged or foreign file must be refused
//! with a typed error, and what decodes must encode and decode to the same value (the
//! driver, workers and the aggregator pass these records between them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_core::model::{
    DoneMarker, JobManifest, JobRecord, TaskRecord, decode_manifest, decode_versioned,
    manifest_sha256,
};

fn round_trip<T>(what: &str, bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = decode_versioned::<T>(what, bytes) else {
        return;
    };
    let again = serde_json::to_vec(&value).expect("a decoded record encodes");
    let back: T = decode_versioned(what, &again).expect("an encoded record decodes");
    assert_eq!(back, value, "{what} changed through encoding");
}

fuzz_target!(|data: &[u8]| {
    // With the digest given, as a worker checks the bytes the driver wrote.
    if let Ok(manifest) = decode_manifest("j", data, Some(&manifest_sha256(data))) {
        let again = serde_json::to_vec(&manifest).expect("a manifest encodes");
        let back: JobManifest =
            decode_manifest("j", &again, None).expect("an encoded manifest decodes");
        assert_eq!(back, manifest, "job.json changed through encoding");
    }
    round_trip::<DoneMarker>("_DONE", data);
    round_trip::<JobRecord>("job record", data);
    // Task rows carry no schema version: the stores decode them with serde_json directly.
    if let Ok(task) = serde_json::from_slice::<TaskRecord>(data) {
        let again = serde_json::to_vec(&task).expect("a task record encodes");
        let back: TaskRecord = serde_json::from_slice(&again).expect("a task record decodes");
        assert_eq!(back, task, "task record changed through encoding");
    }
});
