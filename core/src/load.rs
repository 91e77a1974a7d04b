//! Loading a job file: YAML → `extends` resolution (deep merge) → schema check → typed spec →
//! the semantic rules (`rules`) → paths made absolute; `preflight` then checks the result
//! against the filesystem. docs/job-spec.md ("Reusing a base file", "Validation") describes
//! what a user sees.
//!
//! Every stage reports all of its problems at once, each with the field path, so a user fixes a
//! job file in one round trip. Nothing here panics on bad input.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, FieldError, Result};
use crate::spec::{self, InputFormat, OrchJobFile};
use crate::uri::Location;

mod preflight;
mod rules;
mod strict;

pub use preflight::{find_program, input_sources, preflight};
pub use rules::{MAX_NAME_LEN, filled_by_operator, rules};

/// Refuses, for `orch run` (which has no operator defaults), a job that leaves a field to the
/// operator (see [`filled_by_operator`]), with the same field paths as the other rules.
pub fn standalone_gaps(job: &LoadedJob) -> Result<()> {
    let gaps = filled_by_operator(&job.file);
    if gaps.is_empty() {
        Ok(())
    } else {
        Err(invalid(&job.path, gaps))
    }
}

/// A job file that passed the schema and the semantic rules, with its paths made absolute.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub file: OrchJobFile,
    /// The job file itself.
    pub path: PathBuf,
    /// `RateLimit` documents that stood beside the job in its file (or, under the operator,
    /// the cluster's objects the job names).
    pub rate_limits: Vec<spec::RateLimitFile>,
}

/// Reads, merges, checks and resolves a job file. Does not touch the input or the handler;
/// see [`preflight()`] for that.
pub fn load(path: &Path) -> Result<LoadedJob> {
    load_text(path, &read_text(path)?, &read_text)
}

/// [`load`] of a job file whose text is already in memory: `path` names it in errors and is
/// where its relative paths (and the files it `extends`) are taken from, and `read` reads the
/// files it `extends` ([`load`] reads them from disk). The job file loader's fuzz target
/// (fuzz/) comes in here, so that it runs exactly what `orch validate` and `orch run` run on
/// the text, without a file per input and without reading whatever an `extends` names.
#[doc(hidden)]
pub fn load_text(
    path: &Path,
    text: &str,
    read: &dyn Fn(&Path) -> Result<String>,
) -> Result<LoadedJob> {
    let (value, others) = documents(path, text)?;
    let value = resolve_extends(path, value, &mut Vec::new(), read)?;
    let file = check(path, &value)?;
    let rate_limits = check_rate_limits(path, others)?;
    let base = base_dir(path);
    let base = std::path::absolute(&base).map_err(|e| Error::io(&base, e))?;
    let file = resolve(file, &base).map_err(|errors| invalid(path, errors))?;
    Ok(LoadedJob {
        file,
        path: path.to_path_buf(),
        rate_limits,
    })
}

/// The documents of a job file as they are sent to a cluster: the `OrchJob` with the files it
/// `extends` merged under it, and the `RateLimit` documents beside it, unchanged.
pub fn read_merged(path: &Path) -> Result<(Value, Vec<Value>)> {
    let (job, others) = documents(path, &read_text(path)?)?;
    let job = resolve_extends(path, job, &mut Vec::new(), &read_text)?;
    Ok((job, others.into_iter().map(|(_, v)| v).collect()))
}

/// The documents of a job file's text: the one `OrchJob` (any document that is not a
/// `RateLimit`), and the `RateLimit`s beside it with their 1-based positions.
fn documents(path: &Path, text: &str) -> Result<(Value, Vec<(usize, Value)>)> {
    let mut job = None;
    let mut others = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <strict::StrictValue as serde::Deserialize>::deserialize(document)
            .map_err(|e| yaml_error(path, e))?
            .0;
        if value.get("kind").and_then(Value::as_str) == Some(spec::RATE_LIMIT_KIND) {
            others.push((i + 1, value));
        } else if job.is_none() {
            job = Some(value);
        } else {
            return Err(invalid(
                path,
                vec![FieldError {
                    path: format!("(document {})", i + 1),
                    message: "a job file holds one OrchJob; other documents must be RateLimits"
                        .into(),
                }],
            ));
        }
    }
    let job = job.ok_or_else(|| {
        invalid(
            path,
            vec![FieldError {
                path: "(document)".into(),
                message: "no OrchJob in the file".into(),
            }],
        )
    })?;
    Ok((job, others))
}

/// Checks the `RateLimit` documents of a job file: each on its own (shape and rules), no name
/// twice. Which of them the job uses is the driver's business: a file may carry more.
fn check_rate_limits(
    path: &Path,
    documents: Vec<(usize, Value)>,
) -> Result<Vec<spec::RateLimitFile>> {
    let mut errors = Vec::new();
    let mut out: Vec<spec::RateLimitFile> = Vec::new();
    for (n, value) in documents {
        let at = format!("(document {n}) ");
        match serde_path_to_error::deserialize::<_, spec::RateLimitFile>(&value) {
            Ok(doc) => {
                errors.extend(rules::rate_limit_rules(&doc, &at));
                if out.iter().any(|d| d.metadata.name == doc.metadata.name) {
                    errors.push(FieldError {
                        path: format!("{at}metadata.name"),
                        message: format!(
                            "a RateLimit `{}` is already in the file",
                            doc.metadata.name
                        ),
                    });
                }
                out.push(doc);
            }
            Err(e) => errors.push(FieldError {
                path: format!("{at}{}", e.path()),
                message: e.inner().to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(invalid(path, errors))
    }
}

/// Checks a merged document against the schema and the semantic rules.
pub fn check(path: &Path, value: &Value) -> Result<OrchJobFile> {
    let mut errors = schema_errors(value);
    if !errors.is_empty() {
        return Err(invalid(path, errors));
    }
    let file: OrchJobFile =
        serde_path_to_error::deserialize(value).map_err(|e: serde_path_to_error::Error<_>| {
            invalid(
                path,
                vec![FieldError {
                    path: e.path().to_string(),
                    message: e.inner().to_string(),
                }],
            )
        })?;
    errors.extend(rules(&file));
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(invalid(path, errors))
    }
}

fn invalid(path: &Path, errors: Vec<FieldError>) -> Error {
    Error::Invalid {
        file: path.to_path_buf(),
        count: errors.len(),
        errors,
    }
}

/// Largest job file read. Kubernetes keeps objects under 1.5 MiB, so anything near this is a
/// mistake, and a pipe that never ends (`orch run <(yes)`) is refused instead of filling memory.
const MAX_JOB_FILE_BYTES: u64 = 4 << 20;

/// Reads a job file: a regular file or a pipe (`orch run /dev/stdin < job.yaml`), never a
/// device (a terminal would wait for typing, `/dev/zero` would never end).
fn read_text(path: &Path) -> Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt;
    let error = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(error)?;
    let kind = file.metadata().map_err(error)?.file_type();
    if kind.is_char_device() || kind.is_block_device() {
        return Err(error(std::io::Error::other(
            "a device, not a job file (a regular file or a pipe is read)",
        )));
    }
    let mut text = String::new();
    file.take(MAX_JOB_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(error)?;
    if text.len() as u64 > MAX_JOB_FILE_BYTES {
        return Err(error(std::io::Error::other(format!(
            "over {} MiB: not a job file",
            MAX_JOB_FILE_BYTES >> 20
        ))));
    }
    // Some editors start UTF-8 files with a byte order mark, which YAML does not expect.
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        text = rest.to_string();
    }
    Ok(text)
}

/// The directory the relative paths of a job file are taken from: the file's own directory,
/// or the working directory for a job file that is a pipe (its directory is `/dev` or
/// `/proc`, which holds none of the user's files).
fn base_dir(path: &Path) -> PathBuf {
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    match path.parent() {
        Some(p) if regular && !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn yaml_error(path: &Path, e: serde_yaml::Error) -> Error {
    Error::Yaml {
        file: path.to_path_buf(),
        location: e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default(),
        message: e.to_string(),
    }
}

/// The files a job file `extends` are read by this: [`read_text`], or what [`load_text`] got.
type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String>;

fn read_with_extends(path: &Path, chain: &mut Vec<PathBuf>, read: ReadFile<'_>) -> Result<Value> {
    let text = read(path)?;
    let value = serde_yaml::from_str::<strict::StrictValue>(&text)
        .map_err(|e| yaml_error(path, e))?
        .0;
    resolve_extends(path, value, chain, read)
}

/// Merges the bases a document `extends` (files relative to `path`) under it.
fn resolve_extends(
    path: &Path,
    mut value: Value,
    chain: &mut Vec<PathBuf>,
    read: ReadFile<'_>,
) -> Result<Value> {
    // A pipe (`/dev/stdin` is `/proc/self/fd/0`, a link to `pipe:[…]`) has no canonical path;
    // it can be in no cycle either, as nothing can extend it.
    let canonical = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if chain.contains(&canonical) {
        return Err(invalid(
            path,
            vec![FieldError {
                path: "extends".into(),
                message: format!("`{}` extends itself (cycle)", path.display()),
            }],
        ));
    }
    chain.push(canonical);
    if !value.is_object() {
        return Err(invalid(
            path,
            vec![FieldError {
                path: "(document)".into(),
                message: "a job file is a YAML mapping with apiVersion, kind, metadata and spec"
                    .into(),
            }],
        ));
    }
    let extends = value
        .as_object_mut()
        .and_then(|o| o.remove("extends"))
        .unwrap_or(Value::Null);
    let bases: Vec<String> = match extends {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(other),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|other| {
                invalid(
                    path,
                    vec![FieldError {
                        path: "extends".into(),
                        message: format!("must be a file name or a list of them, got {other}"),
                    }],
                )
            })?,
        other => {
            return Err(invalid(
                path,
                vec![FieldError {
                    path: "extends".into(),
                    message: format!("must be a file name or a list of them, got {other}"),
                }],
            ));
        }
    };
    let dir = base_dir(path);
    let mut merged = Value::Object(serde_json::Map::new());
    for base in bases {
        let base_value = read_with_extends(&dir.join(&base), chain, read)?;
        deep_merge(&mut merged, base_value);
    }
    deep_merge(&mut merged, value);
    chain.pop();
    Ok(merged)
}

/// Merges `overlay` into `base`: mappings merge key by key, anything else is replaced, and an
/// explicit `null` removes the key (so a job can drop a field its base sets).
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                } else if let Some(slot) = base.get_mut(&key) {
                    deep_merge(slot, value);
                } else {
                    base.insert(key, value);
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

fn schema_errors(value: &Value) -> Vec<FieldError> {
    let schema = spec::job_file_schema();
    let validator = match jsonschema::validator_for(&schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![FieldError {
                path: "(schema)".into(),
                message: format!("internal error: the job schema does not compile: {e}"),
            }];
        }
    };
    let mut errors = Vec::new();
    for e in validator.iter_errors(value) {
        field_errors(value, &e, &mut errors);
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    errors.dedup();
    errors
}

/// The problems one schema error stands for. An optional field's schema is `anyOf` its type
/// and `null`; a value that fails it fails inside the type (`parallelism: 0` in an optional
/// section), so the errors of the non-null branch are reported, at their own paths, instead of
/// one vague error at the section.
fn field_errors(document: &Value, e: &jsonschema::ValidationError<'_>, out: &mut Vec<FieldError>) {
    use jsonschema::error::ValidationErrorKind as K;
    if let K::AnyOf { context } = e.kind()
        && !e.instance().is_null()
    {
        let here = e.instance_path().as_str();
        let only_null_refused = |branch: &Vec<jsonschema::ValidationError<'static>>| {
            matches!(branch.as_slice(), [b] if b.instance_path().as_str() == here
                && matches!(b.kind(), K::Type { kind } if format!("{kind:?}").contains("Null")))
        };
        // A mapping given where one shape of several is a mapping (an `exec.env` reference,
        // one `rateLimit`): the other shapes refuse it for its type alone, so the mapping's own
        // problems (an unknown field) are the ones to report.
        let only_type_refused = |branch: &Vec<jsonschema::ValidationError<'static>>| {
            e.instance().is_object()
                && matches!(branch.as_slice(), [b] if b.instance_path().as_str() == here
                    && matches!(b.kind(), K::Type { .. }))
        };
        let others: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
            .iter()
            .filter(|b| !only_null_refused(b) && !only_type_refused(b))
            .collect();
        if others.len() == 1 && others.len() < context.len() {
            for inner in others[0] {
                field_errors(document, inner, out);
            }
            return;
        }
    }
    out.push(FieldError {
        path: pointer_to_path(document, e.instance_path().as_str()),
        message: describe(e),
    });
}

/// Renders a JSON pointer as the field path users see: `spec.output.schema[1].type`. Walks the
/// document alongside, so that a list index gets brackets but a numeric mapping key
/// (`env: {"1": …}`) does not.
fn pointer_to_path(document: &Value, pointer: &str) -> String {
    if pointer.is_empty() {
        return "(document)".into();
    }
    let mut path = String::new();
    let mut current = Some(document);
    for raw in pointer.trim_start_matches('/').split('/') {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match current {
            Some(Value::Array(items)) => {
                current = segment.parse::<usize>().ok().and_then(|i| items.get(i));
                path.push('[');
                path.push_str(&segment);
                path.push(']');
            }
            other => {
                current = other.and_then(|v| v.get(segment.as_str()));
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&segment);
            }
        }
    }
    path
}

/// Where a job file may hold a secret's neighbour (a handler's environment, request headers):
/// a schema error there describes the value by its type only.
const SENSITIVE: &[&str] = &[
    EXEC_ENV,
    "/spec/handler/builtin/http/headers/",
    ALERT_CHANNELS,
];
const EXEC_ENV: &str = "/spec/handler/exec/env/";
/// Alert channels: a webhook URL (a credential for Slack) or a password written by value.
const ALERT_CHANNELS: &str = "/spec/alerts/channels/";

fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let pointer = e.instance_path().as_str();
    let sensitive = SENSITIVE.iter().any(|p| pointer.starts_with(p));
    let got: &dyn std::fmt::Display = if sensitive {
        &json_type(e.instance())
    } else {
        e.instance()
    };
    if pointer.starts_with(EXEC_ENV) && matches!(e.kind(), K::AnyOf { .. }) {
        return format!(
            "must be a string, {{fromEnv: VARIABLE}} or {{valueFrom: {{secretKeyRef: {{name, key}}}}}}, got {got}"
        );
    }
    if pointer.starts_with(ALERT_CHANNELS)
        && (pointer.ends_with("/url") || pointer.ends_with("/password"))
        && matches!(e.kind(), K::Type { .. })
    {
        return format!(
            "must say where the value is held — {{env: VARIABLE}}, {{file: PATH}} or \
             {{secretKeyRef: {{name, key}}}} — never the value itself; got {got}"
        );
    }
    match e.kind() {
        K::AdditionalProperties { unexpected } => {
            let fields = unexpected
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("unknown field {fields}")
        }
        K::Required { property } => format!("missing required field {property}"),
        K::Minimum { limit } => format!("must be ≥ {limit}, got {got}"),
        K::Maximum { limit } => format!("must be ≤ {limit}, got {got}"),
        K::MinLength { .. } => "must not be empty".into(),
        K::MinItems { .. } => "must not be empty".into(),
        K::Enum { options } => format!("must be one of {options}, got {got}"),
        K::Type { kind } => {
            let expected = format!("{kind:?}")
                .replace("Single(", "")
                .replace(')', "")
                .to_lowercase();
            format!("wrong type: expected {expected}, got {got}")
        }
        K::AnyOf { .. } => {
            format!("expected a duration/size string such as 30s or 64Mi, got {got}")
        }
        _ if sensitive => format!("{got} does not fit here"),
        _ => e.to_string(),
    }
}

/// A value's JSON type, for messages that must not show the value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The input format named by the extension of `uri`.
pub fn infer_format(uri: &str) -> Option<InputFormat> {
    let lower = uri.to_ascii_lowercase();
    let lower = lower
        .strip_suffix(".gz")
        .or_else(|| lower.strip_suffix(".zst"))
        .unwrap_or(&lower);
    if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        Some(InputFormat::Jsonl)
    } else if lower.ends_with(".csv") {
        Some(InputFormat::Csv)
    } else if lower.ends_with(".parquet") {
        Some(InputFormat::Parquet)
    } else {
        None
    }
}

/// Makes every path of the spec absolute (relative paths are relative to the job file's
/// directory, except `storage.uri`, which is relative to the working directory),
/// and fills in the output default.
fn resolve(
    mut file: OrchJobFile,
    base: &Path,
) -> std::result::Result<OrchJobFile, Vec<FieldError>> {
    let mut errors = Vec::new();
    let s = &mut file.spec;
    match Location::parse(&s.input.uri, base) {
        Ok(l) => s.input.uri = l.to_uri(),
        Err(e) => errors.push(field("spec.input.uri", e)),
    }
    if s.input.format.is_none() {
        s.input.format = infer_format(&s.input.uri);
    }
    let out = s
        .output
        .uri
        .clone()
        .unwrap_or_else(|| format!("out/{}", file.metadata.name));
    match Location::parse(&out, base) {
        Ok(l) => s.output.uri = Some(l.to_uri()),
        Err(e) => errors.push(field("spec.output.uri", e)),
    }
    if let Some(exec) = &mut s.handler.exec {
        let dir = base.join(exec.workdir.as_deref().unwrap_or("."));
        exec.workdir = Some(dir.display().to_string());
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let storage = s.storage.uri.clone().unwrap_or_else(|| ".orch".into());
    match Location::parse(&storage, &cwd) {
        Ok(l) => s.storage.uri = Some(l.to_uri()),
        Err(e) => errors.push(field("spec.storage.uri", e)),
    }
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(errors)
    }
}

fn field(path: &str, message: String) -> FieldError {
    FieldError {
        path: path.into(),
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A job file with this `spec.output` (and the defaults for the rest).
    pub(super) fn doc(output: Value) -> Value {
        json!({
            "apiVersion": spec::API_VERSION,
            "kind": spec::KIND,
            "metadata": {"name": "t"},
            "spec": {
                "input": {"uri": "in.jsonl"},
                "handler": {"builtin": {"name": "identity"}},
                "output": output,
            }
        })
    }

    /// The `(path, message)` pairs a document is refused with; empty when it is accepted.
    pub(super) fn problems(value: &Value) -> Vec<(String, String)> {
        match check(Path::new("job.yaml"), value) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid { errors, .. }) => {
                errors.into_iter().map(|e| (e.path, e.message)).collect()
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    const JOB_WITH_LIMIT: &str = "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\n\
        metadata: {name: t}\nspec:\n  input: {uri: in.jsonl}\n  \
        handler: {builtin: {name: identity}}\n  rateLimit: {name: api, tokensPerItem: 2}\n";

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn field_errors(e: Error) -> Vec<(String, String)> {
        match e {
            Error::Invalid { errors, .. } => {
                errors.into_iter().map(|e| (e.path, e.message)).collect()
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    const MINIMAL_JOB: &str = "apiVersion: orch.dev/v1alpha1\nkind: OrchJob\nmetadata: {name: t}\n\
        spec:\n  input: {uri: in.jsonl}\n  handler: {builtin: {name: identity}}\n";

    #[test]
    fn a_byte_order_mark_is_skipped_and_a_repeated_key_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let bom = write(&dir, &format!("\u{feff}{MINIMAL_JOB}"));
        assert_eq!(load(&bom).unwrap().file.metadata.name, "t");
        let twice = write(
            &dir,
            &format!("{MINIMAL_JOB}  handler: {{builtin: {{name: sleep}}}}\n"),
        );
        match load(&twice) {
            Err(Error::Yaml {
                location, message, ..
            }) => {
                assert!(
                    message.contains("the key `handler` is given twice"),
                    "{message}"
                );
                // Where the mapping that holds it twice starts (`spec:`'s value).
                assert!(location.contains("line 5"), "{location}");
            }
            other => panic!("expected a YAML error, got {other:?}"),
        }
    }

    #[test]
    fn rate_limit_documents_stand_beside_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "apiVersion: orch.dev/v1alpha1\nkind: RateLimit\nmetadata: {{name: api}}\n\
             spec: {{rate: 600/m, burst: 5, scope: cluster}}\n---\n{JOB_WITH_LIMIT}"
        );
        let job = load(&write(&dir, &text)).unwrap();
        assert_eq!(job.rate_limits.len(), 1);
        let limit = &job.rate_limits[0];
        assert_eq!(limit.metadata.name, "api");
        assert_eq!(limit.spec.burst, 5);
        assert_eq!(limit.spec.scope, spec::RateLimitScope::Cluster);
        let refs = job.file.spec.rate_limit.as_ref().unwrap().as_slice();
        assert_eq!(
            (
                refs[0].name.as_str(),
                refs[0].tokens_per_item,
                refs[0].weight
            ),
            ("api", 2, 1)
        );
        // What `orch submit` sends: the job and the RateLimit, each as written.
        let (sent, limits) = read_merged(&write(&dir, &text)).unwrap();
        assert_eq!(sent["kind"], "OrchJob");
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0]["spec"]["rate"], "600/m");
    }

    #[test]
    fn bad_rate_limit_documents_are_refused_with_their_position() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{JOB_WITH_LIMIT}---\napiVersion: orch.dev/v1alpha1\nkind: RateLimit\n\
             metadata: {{name: api}}\nspec: {{rate: 10/d, burst: 0}}\n---\n\
             apiVersion: orch.dev/v1alpha1\nkind: RateLimit\nmetadata: {{name: x}}\n\
             spec: {{rate: 1/s, color: red}}\n"
        );
        let got = field_errors(load(&write(&dir, &text)).unwrap_err());
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "(document 2) spec.rate",
                "(document 2) spec.burst",
                "(document 3) spec.color"
            ],
            "{got:?}"
        );
        assert!(got[2].1.contains("color"), "{got:?}");
        // Two jobs in one file.
        let two = format!("{JOB_WITH_LIMIT}---\n{JOB_WITH_LIMIT}");
        let got = field_errors(load(&write(&dir, &two)).unwrap_err());
        assert_eq!(got[0].0, "(document 2)", "{got:?}");
    }

    #[test]
    fn rate_limit_references_are_checked() {
        let job = |limits: Value| {
            let mut d = doc(json!({}));
            d["spec"]["rateLimit"] = limits;
            problems(&d)
        };
        assert!(job(json!({"name": "api"})).is_empty());
        assert!(
            job(json!([{"name": "api"}, {"name": "tokens", "tokensPerItem": 500, "weight": 3}]))
                .is_empty()
        );
        let got = job(json!([{"name": "api"}, {"name": "api"}]));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.rateLimit[1].name");
        let got = job(json!({"name": "Not_A_Name"}));
        assert_eq!(got[0].0, "spec.rateLimit.name", "{got:?}");
        assert!(!job(json!({"name": "api", "tokensPerItem": 0})).is_empty());
        assert!(!job(json!("api")).is_empty());
    }

    #[test]
    fn a_declared_schema_is_parsed_with_defaults() {
        let file = check(
            Path::new("job.yaml"),
            &doc(json!({"schema": [
                {"name": "label", "type": "string"},
                {"name": "score", "type": "float64", "nullable": false},
                {"name": "raw", "type": "json"},
            ]})),
        )
        .unwrap();
        let columns = file.spec.output.schema.unwrap();
        let got: Vec<(&str, spec::ColumnType, bool)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.r#type, c.nullable))
            .collect();
        assert_eq!(
            got,
            vec![
                ("label", spec::ColumnType::String, true),
                ("score", spec::ColumnType::Float64, false),
                ("raw", spec::ColumnType::Json, true),
            ]
        );
        assert_eq!(
            file.spec.output.row_group_rows,
            spec::DEFAULT_ROW_GROUP_ROWS
        );
    }

    #[test]
    fn declared_column_types_and_fields_are_schema_checked() {
        let got = problems(&doc(json!({"schema": [
            {"name": "a", "type": "integer"},
            {"name": "b", "type": "int64", "default": 0},
            {"name": "c"},
        ]})));
        let find = |path: &str| {
            got.iter()
                .find(|(p, _)| p == path)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| panic!("no problem at {path}: {got:?}"))
        };
        assert!(
            find("spec.output.schema[0].type").contains("must be one of"),
            "{got:?}"
        );
        assert!(find("spec.output.schema[1]").contains("unknown field `default`"));
        assert!(find("spec.output.schema[2]").contains("missing required field"));
        assert_eq!(
            problems(&doc(json!({"schema": []}))),
            vec![(
                "spec.output.schema".to_string(),
                "must not be empty".to_string()
            )]
        );
    }

    #[test]
    fn row_group_rows_has_a_minimum() {
        assert_eq!(
            problems(&doc(json!({"rowGroupRows": 999}))),
            vec![(
                "spec.output.rowGroupRows".to_string(),
                "must be ≥ 1000, got 999".to_string()
            )]
        );
        let file = check(Path::new("job.yaml"), &doc(json!({"rowGroupRows": 1000}))).unwrap();
        assert_eq!(file.spec.output.row_group_rows, 1000);
        assert!(!problems(&doc(json!({"rowGroupRows": "many"}))).is_empty());
    }

    /// A job with the given executor and resources (and the defaults for the rest).
    pub(super) fn job_with(executor: Value, resources: Value) -> Value {
        let mut d = doc(json!({}));
        d["spec"]["executor"] = executor;
        d["spec"]["resources"] = resources;
        d
    }

    #[test]
    fn the_kubernetes_executor_is_typed_with_defaults() {
        let file = check(
            Path::new("job.yaml"),
            &job_with(json!({"kubernetes": {}}), json!({})),
        )
        .unwrap();
        let kube = file.spec.executor.kubernetes.unwrap();
        assert_eq!(kube, spec::KubernetesExecutorSpec::default());
        assert_eq!(kube.parallelism, 10);
        let file = check(
            Path::new("job.yaml"),
            &job_with(
                json!({"kubernetes": {
                    "image": "registry.example/orch-worker:1.2",
                    "parallelism": 50,
                    "serviceAccountName": "orch-worker",
                    "imagePullPolicy": "IfNotPresent",
                    "nodeSelector": {"node.kubernetes.io/instance-type": "g5.xlarge", "pool": ""},
                    "activeDeadline": "6h",
                }}),
                json!({"cpus": 2, "memory": "4Gi", "gres": "gpu:1", "partition": "short"}),
            ),
        )
        .unwrap();
        let kube = file.spec.executor.kubernetes.unwrap();
        assert_eq!(kube.parallelism, 50);
        assert_eq!(
            kube.image_pull_policy,
            Some(spec::ImagePullPolicy::IfNotPresent)
        );
        assert_eq!(kube.node_selector.len(), 2);
        assert_eq!(
            spec::KubernetesExecutorSpec::gpus(&file.spec.resources),
            Ok(Some(1))
        );
    }

    #[test]
    fn kubernetes_parallelism_zero_is_refused_with_its_path() {
        let got = problems(&job_with(
            json!({"kubernetes": {"parallelism": 0}}),
            json!({}),
        ));
        assert_eq!(
            got,
            vec![(
                "spec.executor.kubernetes.parallelism".to_string(),
                "must be ≥ 1, got 0".to_string()
            )]
        );
        // As `orch validate` prints it.
        let e = check(
            Path::new("job.yaml"),
            &job_with(json!({"kubernetes": {"parallelism": 0}}), json!({})),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.executor.kubernetes.parallelism: must be ≥ 1, got 0"),
            "{e}"
        );
    }

    #[test]
    fn list_indices_get_brackets_and_numeric_keys_do_not() {
        let document = json!({"a": [{"b": {"1": 0}}]});
        assert_eq!(pointer_to_path(&document, "/a/0/b/1"), "a[0].b.1");
        assert_eq!(pointer_to_path(&document, ""), "(document)");
        assert_eq!(pointer_to_path(&document, "/x~1y/0"), "x/y.0");
    }

    #[test]
    fn the_default_row_group_size_is_not_serialized() {
        // Job ids hash the serialized spec; a default-valued new field must not change them.
        let text = serde_json::to_string(&spec::OutputSpec::default()).unwrap();
        assert!(!text.contains("rowGroupRows"), "{text}");
        assert!(!text.contains("schema"), "{text}");
        let spec = spec::OutputSpec {
            row_group_rows: 5000,
            ..spec::OutputSpec::default()
        };
        assert!(
            serde_json::to_string(&spec)
                .unwrap()
                .contains("\"rowGroupRows\":5000")
        );
        // The schema still documents the default (it is written by hand there).
        let schema = spec::job_file_schema();
        assert_eq!(
            schema.pointer("/$defs/OutputSpec/properties/rowGroupRows/default"),
            Some(&json!(spec::DEFAULT_ROW_GROUP_ROWS))
        );
    }

    #[test]
    fn a_job_file_may_be_a_pipe_but_not_a_device() {
        let e = load(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.category(), crate::ErrorCategory::Invalid);
        assert!(e.to_string().contains("a device, not a job file"), "{e}");

        // A pipe is read; its relative paths are the working directory's, as it has no
        // directory of its own.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("job.yaml");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, JOB_WITH_LIMIT).unwrap())
        };
        let job = load(&fifo).unwrap();
        writer.join().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            job.file.spec.input.uri,
            Location::Local(cwd.join("in.jsonl")).to_uri()
        );

        // An input that is not a regular file is refused before anything runs, naming the field.
        let mut job = job;
        job.file.spec.input.uri = "file:///dev/zero".into();
        let got = field_errors(preflight(&job).unwrap_err());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.input.uri");
        assert!(got[0].1.contains("`/dev/zero` is a device"), "{got:?}");
    }
}
