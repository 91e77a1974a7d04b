//! Loading a job file: YAML → `extends` resolution (deep merge) → schema check → typed spec →
//! semantic rules → optional preflight against the filesystem.
//!
//! Every stage reports all of its problems at once, each with the field path, so a user fixes a
//! job file in one round trip. Nothing here panics on bad input.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, FieldError, Result};
use crate::spec::{self, InputFormat, OrchJobFile};
use crate::uri::Location;

/// Longest job name: leaves room for the `-<uid>` suffix within Kubernetes' 63 characters.
pub const MAX_NAME_LEN: usize = 50;

/// A job file that passed the schema and the semantic rules, with its paths made absolute.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub file: OrchJobFile,
    /// The job file itself.
    pub path: PathBuf,
}

/// Reads, merges, checks and resolves a job file. Does not touch the input or the handler;
/// see [`preflight`] for that.
pub fn load(path: &Path) -> Result<LoadedJob> {
    let value = read_with_extends(path, &mut Vec::new())?;
    let file = check(path, &value)?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = std::path::absolute(&base).map_err(|e| Error::io(&base, e))?;
    let file = resolve(file, &base).map_err(|errors| invalid(path, errors))?;
    Ok(LoadedJob {
        file,
        path: path.to_path_buf(),
    })
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

fn read_with_extends(path: &Path, chain: &mut Vec<PathBuf>) -> Result<Value> {
    let canonical = std::fs::canonicalize(path).map_err(|source| Error::Read {
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
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut value: Value = serde_yaml::from_str(&text).map_err(|e| Error::Yaml {
        file: path.to_path_buf(),
        location: e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default(),
        message: e.to_string(),
    })?;
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut merged = Value::Object(serde_json::Map::new());
    for base in bases {
        let base_value = read_with_extends(&dir.join(&base), chain)?;
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
        let others: Vec<&Vec<jsonschema::ValidationError<'static>>> =
            context.iter().filter(|b| !only_null_refused(b)).collect();
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

fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let got = e.instance();
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
        _ => e.to_string(),
    }
}

/// Rules the schema cannot express (semantic validation of a parsed job file, what
/// `orch validate` checks beyond the schema). Pure: no filesystem access.
pub fn rules(file: &OrchJobFile) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(FieldError {
            path: path.into(),
            message,
        })
    };
    if file.api_version != spec::API_VERSION {
        err(
            "apiVersion",
            format!(
                "must be `{}`, got `{}`",
                spec::API_VERSION,
                file.api_version
            ),
        );
    }
    if file.kind != spec::KIND {
        err(
            "kind",
            format!("must be `{}`, got `{}`", spec::KIND, file.kind),
        );
    }
    let name = &file.metadata.name;
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !name_ok {
        err(
            "metadata.name",
            format!(
                "must be 1–{MAX_NAME_LEN} lowercase letters, digits or `-`, starting and ending with a letter or digit; got `{name}`"
            ),
        );
    }
    let s = &file.spec;
    if s.input.uri.trim().is_empty() {
        err("spec.input.uri", "must not be empty".into());
    } else if let Err(e) = Location::parse(&s.input.uri, Path::new("/")) {
        err("spec.input.uri", e);
    } else if s.input.format.is_none() && infer_format(&s.input.uri).is_none() {
        err(
            "spec.input.format",
            format!(
                "cannot infer the format from `{}`; set it to jsonl, csv or parquet",
                s.input.uri
            ),
        );
    }
    let format = s.input.format.or_else(|| infer_format(&s.input.uri));
    if let Some(csv) = &s.input.csv {
        if format != Some(InputFormat::Csv) {
            err(
                "spec.input.csv",
                "applies to csv input only; set `format: csv` or remove it".into(),
            );
        }
        for (field, value) in [("delimiter", &csv.delimiter), ("quote", &csv.quote)] {
            if spec::csv_byte(value).is_none() {
                err(
                    &format!("spec.input.csv.{field}"),
                    format!("must be one ASCII character (or \\t), got `{value}`"),
                );
            }
        }
    }
    for (path, q) in [
        ("spec.batch.maxBytes", &s.batch.max_bytes),
        ("spec.batch.maxRecordBytes", &s.batch.max_record_bytes),
        ("spec.output.targetFileSize", &s.output.target_file_size),
    ] {
        match q.as_bytes() {
            Ok(0) => err(path, "must be ≥ 1 byte".into()),
            Ok(_) => {}
            Err(e) => err(path, e),
        }
    }
    match (&s.handler.exec, &s.handler.builtin) {
        (None, None) => err(
            "spec.handler",
            "set exactly one of `exec` (your program) or `builtin` (identity, sleep)".into(),
        ),
        (Some(_), Some(_)) => err(
            "spec.handler",
            "set only one of `exec` and `builtin`, not both".into(),
        ),
        (Some(exec), None) => {
            if exec.command.first().is_none_or(|c| c.trim().is_empty()) {
                err("spec.handler.exec.command", "must name a program".into());
            }
        }
        (None, Some(builtin)) => {
            if let Some(d) = &builtin.duration
                && let Err(e) = d.as_duration()
            {
                err("spec.handler.builtin.duration", e);
            }
        }
    }
    duration_rule(&mut err, "spec.handler.timeout", &s.handler.timeout, true);
    duration_rule(&mut err, "spec.resources.time", &s.resources.time, true);
    if let Err(e) = s.resources.memory.as_bytes() {
        err("spec.resources.memory", e);
    }
    duration_rule(
        &mut err,
        "spec.retry.backoff.initial",
        &s.retry.backoff.initial,
        false,
    );
    duration_rule(
        &mut err,
        "spec.retry.backoff.max",
        &s.retry.backoff.max,
        false,
    );
    if s.rate_limit.is_some() {
        err(
            "spec.rateLimit",
            "rate limiting needs the RateLimit resource, which this build does not have yet; remove the field".into(),
        );
    }
    if let Some(uri) = &s.output.uri
        && let Err(e) = Location::parse(uri, Path::new("/"))
    {
        err("spec.output.uri", e);
    }
    if let Some(columns) = &s.output.schema {
        output_schema_rules(&mut err, columns);
    }
    if s.output.formats.is_empty() {
        err(
            "spec.output.formats",
            "must name at least one format".into(),
        );
    }
    if !s.output.formats.contains(&spec::OutputFormat::Parquet) {
        err(
            "spec.output.formats",
            "must include parquet (the other formats are written from it)".into(),
        );
    }
    let e = &s.executor;
    let chosen = [e.local.is_some(), e.slurm.is_some(), e.kubernetes.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if chosen != 1 {
        err(
            "spec.executor",
            "set exactly one of `local`, `slurm` or `kubernetes`".into(),
        );
    }
    if let Some(kube) = &e.kubernetes {
        kubernetes_rules(&mut err, kube, &s.resources);
    }
    if let Some(slurm) = &e.slurm {
        // A `rest` transport without `url` is a valid spec: the URL is the runner's to supply
        // (the operator fills in its `--slurm-url`), so the file gets the same verdict from
        // `orch validate`, `orch submit` and the operator. `orch run`, which has no such
        // default, refuses it before starting (`standalone_gaps`).
        if slurm.transport == spec::SlurmTransport::Cli
            && (slurm.url.is_some() || slurm.token_file.is_some())
        {
            err(
                "spec.executor.slurm",
                "`url` and `tokenFile` belong to the `rest` transport; set `transport: rest`"
                    .into(),
            );
        }
        if let Err(e) = slurm.checkpoint_grace.as_duration() {
            err("spec.executor.slurm.checkpointGrace", e);
        }
    }
    if let Some(uri) = &s.storage.uri
        && let Err(e) = Location::parse(uri, Path::new("/"))
    {
        err("spec.storage.uri", e);
    }
    errors
}

/// Fields a valid spec may leave unset for whoever runs it to fill in, that are unset here:
/// today `spec.executor.slurm.url` of the `rest` transport, which the operator fills in from
/// its `--slurm-url`. Each entry names the field and what becomes of it.
///
/// The rules accept such a spec (the operator runs it), so these are notes for `orch validate`
/// and `orch submit`, and [`standalone_gaps`] makes them errors for `orch run`.
pub fn filled_by_operator(file: &OrchJobFile) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(slurm) = &file.spec.executor.slurm
        && slurm.transport == spec::SlurmTransport::Rest
        && slurm.url.is_none()
    {
        out.push(field(
            "spec.executor.slurm.url",
            "not set: the `rest` transport needs slurmrestd's URL (http://host:6820); the \
             operator fills in its own (--slurm-url), `orch run` has none"
                .into(),
        ));
    }
    out
}

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

/// The rules of `spec.executor.kubernetes`: names Kubernetes would refuse are refused here,
/// naming the field, instead of at the first submission. Of `spec.resources`, `partition`,
/// `account` and `qos` are Slurm's and ignored; `constraint` has no Kubernetes meaning and is
/// refused (a task needing a node feature must not land anywhere), as is any `gres` but GPUs.
fn kubernetes_rules(
    err: &mut impl FnMut(&str, String),
    kube: &spec::KubernetesExecutorSpec,
    resources: &spec::ResourcesSpec,
) {
    const PATH: &str = "spec.executor.kubernetes";
    if let Some(image) = &kube.image
        && (image.trim().is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        err(
            &format!("{PATH}.image"),
            format!("must be an image reference without spaces, got `{image}`"),
        );
    }
    if let Some(account) = &kube.service_account_name
        && let Err(why) = dns_subdomain(account)
    {
        err(&format!("{PATH}.serviceAccountName"), why);
    }
    for (i, secret) in kube.env_from_secrets.iter().enumerate() {
        if let Err(why) = dns_subdomain(secret) {
            err(&format!("{PATH}.envFromSecrets[{i}]"), why);
        }
    }
    for (key, value) in &kube.node_selector {
        let path = format!("{PATH}.nodeSelector.{key}");
        if let Err(why) = label_key(key) {
            err(&path, why);
        }
        if let Err(why) = label_value(value) {
            err(&path, why);
        }
    }
    if let Some(deadline) = &kube.active_deadline {
        duration_rule(err, &format!("{PATH}.activeDeadline"), deadline, true);
    }
    if let Err(why) = spec::KubernetesExecutorSpec::gpus(resources) {
        err("spec.resources.gres", why);
    }
    if let Some(constraint) = &resources.constraint {
        err(
            "spec.resources.constraint",
            format!(
                "`{constraint}` is a Slurm node constraint; with the Kubernetes executor use spec.executor.kubernetes.nodeSelector"
            ),
        );
    }
}

/// A DNS-1123 subdomain (what Kubernetes accepts as most object names).
fn dns_subdomain(name: &str) -> std::result::Result<(), String> {
    if crate::k8s_name::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(format!(
            "must be a Kubernetes name (at most 253 lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit), got `{name}`"
        ))
    }
}

/// A label key: `name` or `prefix/name`, the prefix a DNS subdomain.
fn label_key(key: &str) -> std::result::Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && dns_subdomain(prefix).is_err()
    {
        return Err(format!(
            "label key `{key}`: the prefix before `/` must be a DNS subdomain such as `node.kubernetes.io`"
        ));
    }
    if !crate::k8s_name::is_label_name(name) {
        return Err(format!(
            "label key `{key}`: the name must be 1–63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or like a label key's name.
fn label_value(value: &str) -> std::result::Result<(), String> {
    if value.is_empty() || crate::k8s_name::is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value `{value}` must be at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
        ))
    }
}

/// Names of declared output columns: they become Parquet, SQLite and CSV column names next to
/// orch's own `_item`, so they must be non-empty and unique, and the `_` prefix stays reserved
/// for columns orch may add later.
fn output_schema_rules(err: &mut impl FnMut(&str, String), columns: &[spec::OutputColumn]) {
    let mut seen = std::collections::HashSet::new();
    for (i, column) in columns.iter().enumerate() {
        let path = format!("spec.output.schema[{i}].name");
        let name = column.name.as_str();
        if name.trim().is_empty() {
            err(&path, "must not be empty".into());
        } else if name == "_item" {
            err(
                &path,
                format!(
                    "`{name}` is the input ordinal orch adds to every row; it cannot be declared"
                ),
            );
        } else if name.starts_with('_') {
            err(
                &path,
                format!("names starting with `_` are reserved for orch, got `{name}`"),
            );
        } else if !seen.insert(name) {
            err(&path, format!("duplicate column \"{name}\""));
        }
    }
}

fn duration_rule(
    err: &mut impl FnMut(&str, String),
    path: &str,
    value: &spec::Quantity,
    nonzero: bool,
) {
    match value.as_duration() {
        Ok(d) if nonzero && d.is_zero() => err(path, "must be longer than 0s".into()),
        Ok(_) => {}
        Err(e) => err(path, e),
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
/// directory, except `storage.uri`, which is relative to the working directory as in DESIGN §3),
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

/// Checks that need the filesystem: the input is readable and the handler program exists.
/// Run by `orch validate` and before `orch run` starts anything.
pub fn preflight(job: &LoadedJob) -> Result<()> {
    let mut errors = Vec::new();
    let s = &job.file.spec;
    if let Ok(Location::Local(p)) = Location::parse(&s.input.uri, Path::new("/")) {
        match input_sources(&p) {
            Ok(files) => {
                for f in files {
                    if let Err(e) = std::fs::File::open(&f) {
                        errors.push(field(
                            "spec.input.uri",
                            format!("cannot read `{}`: {e}", f.display()),
                        ));
                    }
                }
            }
            Err(e) => errors.push(field("spec.input.uri", e)),
        }
    }
    if let Some(exec) = &s.handler.exec
        && let Some(program) = exec.command.first()
    {
        let workdir = PathBuf::from(exec.workdir.as_deref().unwrap_or("."));
        if !workdir.is_dir() {
            errors.push(field(
                "spec.handler.exec.workdir",
                format!("`{}` is not a directory", workdir.display()),
            ));
        } else if find_program(program, &workdir).is_none() {
            errors.push(field(
                "spec.handler.exec.command[0]",
                format!(
                    "program `{program}` not found in PATH or in `{}`",
                    workdir.display()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(&job.path, errors))
    }
}

/// The files of a local input, in the order their items are numbered: the file itself, every
/// file of a directory (hidden ones skipped), or the matches of a glob (`data/part-*.jsonl`),
/// sorted by path so ordinals are stable from run to run.
pub fn input_sources(path: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let text = path.to_string_lossy();
    let mut files: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
        let matches =
            glob::glob(&text).map_err(|e| format!("`{text}` is not a valid glob: {e}"))?;
        matches
            .filter_map(|m| m.ok())
            .filter(|p| p.is_file())
            .collect()
    } else if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    } else if path.exists() {
        vec![path.to_path_buf()]
    } else {
        return Err(format!("cannot read `{}`: no such file", path.display()));
    };
    files.sort();
    if files.is_empty() {
        return Err(format!("`{}` matches no file", path.display()));
    }
    Ok(files)
}

/// Resolves a program the way the worker will start it: a name with a `/` is relative to
/// `workdir`, a bare name is looked up in `PATH`.
pub fn find_program(program: &str, workdir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = workdir.join(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| executable(p))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(output: Value) -> Value {
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
    fn problems(value: &Value) -> Vec<(String, String)> {
        match check(Path::new("job.yaml"), value) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid { errors, .. }) => {
                errors.into_iter().map(|e| (e.path, e.message)).collect()
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
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
    fn declared_column_names_are_checked_with_field_paths() {
        let got = problems(&doc(json!({"schema": [
            {"name": "score", "type": "float64"},
            {"name": "score", "type": "int64"},
            {"name": "", "type": "string"},
            {"name": "_item", "type": "int64"},
            {"name": "_private", "type": "bool"},
            {"name": "ok", "type": "bool"},
        ]})));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.output.schema[1].name",
                "spec.output.schema[2].name",
                "spec.output.schema[3].name",
                "spec.output.schema[4].name",
            ],
            "{got:?}"
        );
        assert_eq!(got[0].1, "duplicate column \"score\"");
        assert_eq!(got[1].1, "must not be empty");
        assert!(got[2].1.contains("`_item`"), "{}", got[2].1);
        assert!(got[3].1.contains("reserved"), "{}", got[3].1);
        // The rendering users see.
        let err = check(
            Path::new("job.yaml"),
            &doc(json!({"schema": [{"name": "a", "type": "bool"}, {"name": "a", "type": "bool"}]})),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.output.schema[1].name: duplicate column \"a\""),
            "{err}"
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
    fn job_with(executor: Value, resources: Value) -> Value {
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
    fn kubernetes_secrets_are_named_by_valid_names() {
        let got = problems(&job_with(
            json!({"kubernetes": {"envFromSecrets": ["orch-aws", "Not_A_Name"]}}),
            json!({}),
        ));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["spec.executor.kubernetes.envFromSecrets[1]"]);
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
    fn kubernetes_fields_are_checked_with_field_paths() {
        let got = problems(&job_with(
            json!({"kubernetes": {
                "image": "two words",
                "serviceAccountName": "Orch_Worker",
                "imagePullPolicy": "always",
                "nodeSelector": {"-bad": "ok", "good": "not ok!"},
                "activeDeadline": "soon",
                "workers": 3,
            }}),
            json!({}),
        ));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        // Schema problems first (the rules wait for a document that parses).
        assert_eq!(
            paths,
            vec![
                "spec.executor.kubernetes",
                "spec.executor.kubernetes.imagePullPolicy"
            ],
            "{got:?}"
        );
        assert!(got[0].1.contains("unknown field `workers`"), "{got:?}");
        assert!(got[1].1.contains("must be one of"), "{got:?}");
        let got = problems(&job_with(
            json!({"kubernetes": {
                "image": "two words",
                "serviceAccountName": "Orch_Worker",
                "nodeSelector": {"-bad": "ok", "good": "not ok!", "bad prefix/x": "y"},
                "activeDeadline": "soon",
            }}),
            json!({"constraint": "avx512", "gres": "gpu:a100:2"}),
        ));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.executor.kubernetes.image",
                "spec.executor.kubernetes.serviceAccountName",
                "spec.executor.kubernetes.nodeSelector.-bad",
                "spec.executor.kubernetes.nodeSelector.bad prefix/x",
                "spec.executor.kubernetes.nodeSelector.good",
                "spec.executor.kubernetes.activeDeadline",
                "spec.resources.gres",
                "spec.resources.constraint",
            ],
            "{got:?}"
        );
        assert!(got[6].1.contains("nodeSelector"), "{got:?}");
        assert!(got[7].1.contains("nodeSelector"), "{got:?}");
        for (gres, expect) in [
            ("gpu", Ok(Some(1))),
            ("gpu:4", Ok(Some(4))),
            ("gpu:0", Err(())),
            ("license:matlab:1", Err(())),
        ] {
            let r = spec::ResourcesSpec {
                gres: Some(gres.into()),
                ..spec::ResourcesSpec::default()
            };
            assert_eq!(
                spec::KubernetesExecutorSpec::gpus(&r).map_err(|_| ()),
                expect,
                "{gres}"
            );
        }
    }

    #[test]
    fn a_rest_transport_may_leave_its_url_to_the_operator() {
        // One verdict for `orch validate`, `orch submit` and the operator: accepted.
        let no_url = job_with(json!({"slurm": {"transport": "rest"}}), json!({}));
        assert_eq!(problems(&no_url), Vec::<(String, String)>::new());
        let file = check(Path::new("job.yaml"), &no_url).unwrap();
        let gaps = filled_by_operator(&file);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].path, "spec.executor.slurm.url");
        assert!(
            gaps[0].message.contains("--slurm-url"),
            "{}",
            gaps[0].message
        );
        // `orch run` has no operator to fill it in: refused there, naming the field.
        let job = LoadedJob {
            file,
            path: PathBuf::from("job.yaml"),
        };
        let e = standalone_gaps(&job).unwrap_err();
        assert_eq!(e.category(), crate::ErrorCategory::Invalid);
        assert!(
            e.to_string()
                .contains("spec.executor.slurm.url: not set: the `rest` transport needs"),
            "{e}"
        );

        // Nothing left to fill in: with a URL, or with the commands transport.
        for executor in [
            json!({"slurm": {"transport": "rest", "url": "http://slurm:6820"}}),
            json!({"slurm": {"transport": "cli"}}),
            json!({"slurm": {}}),
            json!({"local": {}}),
        ] {
            let file = check(
                Path::new("job.yaml"),
                &job_with(executor.clone(), json!({})),
            )
            .unwrap_or_else(|e| panic!("{executor}: {e}"));
            assert!(filled_by_operator(&file).is_empty(), "{executor}");
        }
        // What belongs to `rest` stays refused on the commands transport, everywhere.
        let got = problems(&job_with(
            json!({"slurm": {"transport": "cli", "tokenFile": "/run/jwt"}}),
            json!({}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.executor.slurm");
    }

    #[test]
    fn exactly_one_executor() {
        let got = problems(&job_with(json!({"local": {}, "kubernetes": {}}), json!({})));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.executor");
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
}
