//! The JSON merge patches (RFC 7386) of `pause`, `resume`, `retry`, `cancel` and `purge`:
//! each touches one field and nothing else, so it never undoes what someone else changed.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// `pause` (true) and `resume` (false): `spec.suspend`.
pub fn suspend(suspend: bool) -> Value {
    json!({"spec": {"suspend": suspend}})
}

/// Sets one annotation, leaving the others as they are.
pub fn annotation(key: &str, value: &str) -> Value {
    json!({"metadata": {"annotations": {key: value}}})
}

/// A new value for the retry annotation: the time in RFC 3339 with nanoseconds, so that each
/// `orch retry` is a request of its own (the operator acts on a value it has not handled yet).
pub fn retry_value(now: Timestamp) -> String {
    format!("{now:.9}")
}
