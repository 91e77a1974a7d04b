//! What `orch submit` sends: the job file checked by core's loader (the same schema and rules,
//! and field paths, as `orch validate`), with its `extends` merged in and nothing else changed.
//!
//! Not the loader's resolved job: that one has paths made absolute for this machine and
//! `storage.uri` defaulted to `./.orch`, where in a cluster the operator decides.
//! Nor is the preflight of `orch validate` run: the input and the handler program are looked
//! for where the workers run, not here.

use std::path::Path;

use orch_core::load;
use orch_core::uri::Location;
use serde_json::Value;

use crate::Failure;

/// A job file ready to be applied.
#[derive(Debug)]
pub struct Document {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when the file sets one.
    pub namespace: Option<String>,
    /// The merged document: apiVersion, kind, metadata and spec.
    pub value: Value,
    /// `RateLimit` documents beside the job in its file, applied with it.
    pub rate_limits: Vec<Value>,
    /// Things worth knowing before the job runs elsewhere.
    pub warnings: Vec<String>,
    /// Fields the file leaves to the operator (`field: what happens`), as `orch validate` notes
    /// them: expected in a cluster, so not warnings.
    pub notes: Vec<String>,
}

/// Loads and checks `path` (exit 2 with every field error at once, as `orch validate`), then
/// reads the document to send.
pub fn document(path: &Path) -> Result<Document, Failure> {
    let job = load::load(path)?;
    let (value, rate_limits) = load::read_merged(path)?;
    Ok(Document {
        rate_limits,
        name: job.file.metadata.name.clone(),
        namespace: job.file.metadata.namespace.clone(),
        warnings: relative_paths(&value),
        notes: load::filled_by_operator(&job.file)
            .iter()
            .map(ToString::to_string)
            .collect(),
        value,
    })
}

/// The server-side apply body: the document in `namespace`.
pub fn apply_body(mut doc: Value, namespace: &str) -> Value {
    if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("namespace".into(), Value::String(namespace.to_string()));
    }
    doc
}

/// Relative paths mean something else in the cluster: the workers resolve them, not this
/// machine. One warning per field that has one.
fn relative_paths(doc: &Value) -> Vec<String> {
    let fields = [
        ("spec.input.uri", "/spec/input/uri"),
        ("spec.output.uri", "/spec/output/uri"),
        ("spec.storage.uri", "/spec/storage/uri"),
        ("spec.handler.exec.workdir", "/spec/handler/exec/workdir"),
    ];
    fields
        .iter()
        .filter_map(|(field, pointer)| {
            let text = doc.pointer(pointer)?.as_str()?;
            let relative = matches!(
                Location::parse(text, Path::new("/")),
                Ok(Location::Local(_))
            ) && !text.starts_with('/')
                && !text.starts_with("file://");
            relative.then(|| {
                format!(
                    "{field} `{text}` is relative: in the cluster it is resolved where the \
                     operator and its workers run, not here (use s3:// or a shared absolute path)"
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_body_sets_the_namespace_and_keeps_the_rest() {
        let doc = json!({"apiVersion": "orch.dev/v1alpha1", "kind": "OrchJob",
            "metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"suspend": false}});
        let body = apply_body(doc.clone(), "team-a");
        assert_eq!(body["metadata"]["namespace"], "team-a");
        assert_eq!(body["metadata"]["labels"], doc["metadata"]["labels"]);
        assert_eq!(body["spec"], doc["spec"]);
    }

    #[test]
    fn relative_paths_are_pointed_out() {
        let doc = json!({"spec": {"input": {"uri": "data.jsonl"}, "output": {"uri": "s3://b/o/"},
            "storage": {"uri": "/shared/orch"}, "handler": {"exec": {"workdir": "."}}}});
        let w = relative_paths(&doc);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("spec.input.uri `data.jsonl`"), "{w:?}");
        assert!(w[1].starts_with("spec.handler.exec.workdir `.`"), "{w:?}");
    }

    #[test]
    fn extends_is_merged_like_the_loader_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("base.yaml"),
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {labels: {team: a}}\n\
             spec: {batch: {size: 10}, resources: {partition: short, cpus: 2}}\n",
        )
        .expect("write");
        let job = dir.path().join("job.yaml");
        std::fs::write(
            &job,
            "extends: base.yaml\nmetadata: {name: j}\n\
             spec: {input: {uri: s3://b/in.jsonl}, handler: {builtin: {name: identity}},\n\
             resources: {partition: null}}\n",
        )
        .expect("write");
        let doc = document(&job).map_err(|f| f.message).expect("valid");
        assert_eq!(doc.name, "j");
        assert!(doc.value.get("extends").is_none());
        assert_eq!(doc.value["metadata"]["labels"]["team"], "a");
        assert_eq!(doc.value["spec"]["batch"]["size"], 10);
        assert_eq!(doc.value["spec"]["resources"], json!({"cpus": 2}));
        // Sent as written: no absolute paths, no storage default.
        assert_eq!(doc.value["spec"]["input"]["uri"], "s3://b/in.jsonl");
        assert!(doc.value["spec"].get("storage").is_none());
    }

    #[test]
    fn a_slurm_url_left_to_the_operator_is_accepted_with_a_note() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = dir.path().join("job.yaml");
        std::fs::write(
            &job,
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {name: j}\n\
             spec: {input: {uri: s3://b/in.jsonl}, handler: {builtin: {name: identity}},\n\
             executor: {slurm: {transport: rest}}}\n",
        )
        .expect("write");
        let doc = document(&job).map_err(|f| f.message).expect("valid");
        assert!(doc.warnings.is_empty(), "{:?}", doc.warnings);
        assert_eq!(doc.notes.len(), 1, "{:?}", doc.notes);
        assert!(
            doc.notes[0].starts_with("spec.executor.slurm.url: not set"),
            "{:?}",
            doc.notes
        );
        // Sent as written: the operator fills the URL in.
        assert_eq!(
            doc.value["spec"]["executor"],
            json!({"slurm": {"transport": "rest"}})
        );
    }

    #[test]
    fn an_invalid_file_fails_with_field_paths_and_exit_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = dir.path().join("job.yaml");
        std::fs::write(
            &job,
            "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {name: j}\n\
             spec: {input: {uri: s3://b/in.jsonl}, batch: {size: 0},\n\
             handler: {builtin: {name: identity}}}\n",
        )
        .expect("write");
        let err = document(&job).expect_err("invalid");
        assert_eq!(err.code, 2);
        assert!(err.message.contains("spec.batch.size"), "{}", err.message);
    }
}
