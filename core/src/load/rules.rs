//! The rules a job file must follow that its schema cannot express: one executor and one
//! handler kind, durations and sizes that parse, names and labels Kubernetes accepts, declared
//! output columns that do not clash. What `orch validate` checks beyond the schema, and what
//! the operator checks on an `OrchJob` (docs/job-spec.md, "Validation"). Pure: no filesystem
//! access.

use std::path::Path;

use super::infer_format;
use crate::error::FieldError;
use crate::spec::{self, InputFormat, OrchJobFile};
use crate::template::{Template, is_header_name, json_pointer};
use crate::uri::Location;

/// Longest job name: leaves room for the `-<uid>` suffix within Kubernetes' 63 characters.
pub const MAX_NAME_LEN: usize = 50;

/// Most items one batch may hold: a task of more would run for days, and sizes near
/// `u64::MAX` overflow the arithmetic of offsets and counts.
pub const MAX_BATCH_SIZE: u64 = 100_000_000;

/// Rules the schema cannot express (semantic validation of a parsed job file, what
/// `orch validate` checks beyond the schema). Pure: no filesystem access.
/// Fields a valid spec may leave unset for whoever runs it to fill in, that are unset here:
/// today `spec.executor.slurm.url` of the `rest` transport, which the operator fills in from
/// its `--slurm-url`. Each entry names the field and what becomes of it.
///
/// The rules accept such a spec (the operator runs it), so these are notes for `orch validate`
/// and `orch submit`, and `standalone_gaps` makes them errors for `orch run`.
pub fn filled_by_operator(file: &OrchJobFile) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(slurm) = &file.spec.executor.slurm
        && slurm.transport == Some(spec::SlurmTransport::Rest)
        && slurm.url.is_none()
    {
        out.push(FieldError {
            path: "spec.executor.slurm.url".into(),
            message: "not set: the `rest` transport needs slurmrestd's URL (http://host:6820); \
                      the operator fills in its own (--slurm-url), `orch run` has none"
                .into(),
        });
    }
    out
}

/// The rules of a `RateLimit` document (the schema has checked its shape); paths are
/// prefixed with `at` (e.g. `(document 2)`).
pub fn rate_limit_rules(doc: &spec::RateLimitFile, at: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(FieldError {
            path: format!("{at}{path}"),
            message,
        })
    };
    if doc.api_version != spec::API_VERSION {
        err(
            "apiVersion",
            format!("must be `{}`, got `{}`", spec::API_VERSION, doc.api_version),
        );
    }
    if !crate::k8s_name::is_dns_subdomain(&doc.metadata.name) {
        err(
            "metadata.name",
            format!(
                "`{}` is not a RateLimit name (lowercase letters, digits, `-` and `.`)",
                doc.metadata.name
            ),
        );
    }
    if let Err(e) = crate::ratelimit::parse_rate(&doc.spec.rate) {
        err("spec.rate", e);
    }
    if doc.spec.burst < 1 {
        err("spec.burst", format!("must be ≥ 1, got {}", doc.spec.burst));
    }
    errors
}

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
            "set exactly one of `exec` (your program) or `builtin` (identity, sleep, http)".into(),
        ),
        (Some(_), Some(_)) => err(
            "spec.handler",
            "set only one of `exec` and `builtin`, not both".into(),
        ),
        (Some(exec), None) => {
            if exec.command.first().is_none_or(|c| c.trim().is_empty()) {
                err("spec.handler.exec.command", "must name a program".into());
            }
            exec_env_rules(&mut err, exec, s.executor.kubernetes.is_some());
            match exec.max_answer_bytes() {
                Ok(0) => err(
                    "spec.handler.exec.maxAnswerBytes",
                    "must be ≥ 1 byte".into(),
                ),
                // The worker holds one answer line in memory: more than this is a mistake.
                Ok(n) if n > MAX_ANSWER_BYTES_LIMIT => err(
                    "spec.handler.exec.maxAnswerBytes",
                    "must be at most 4Gi (the worker holds one answer in memory)".into(),
                ),
                Ok(_) => {}
                Err(e) => err("spec.handler.exec.maxAnswerBytes", e),
            }
        }
        (None, Some(builtin)) => {
            if let Some(d) = &builtin.duration
                && let Err(e) = d.as_duration()
            {
                err("spec.handler.builtin.duration", e);
            }
            match (builtin.name, &builtin.http) {
                (spec::BuiltinName::Http, Some(http)) => http_rules(&mut err, http),
                (spec::BuiltinName::Http, None) => err(
                    "spec.handler.builtin.http",
                    "the http builtin needs an `http:` section with at least `url`".into(),
                ),
                (_, Some(_)) => err(
                    "spec.handler.builtin.http",
                    "applies to the http builtin only; set `name: http` or remove it".into(),
                ),
                (_, None) => {}
            }
        }
    }
    secret_variable_rule(&mut err, &s.handler);
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
    let backoff = &s.retry.backoff;
    if let (Ok(initial), Ok(max)) = (backoff.initial.as_duration(), backoff.max.as_duration())
        && max < initial
    {
        err(
            "spec.retry.backoff.max",
            format!(
                "`{}` is shorter than backoff.initial (`{}`): the first delay would already pass the cap",
                backoff.max, backoff.initial
            ),
        );
    }
    if let Some(size) = s.batch.size
        && size > MAX_BATCH_SIZE
    {
        err(
            "spec.batch.size",
            format!("{size} items per batch is more than the {MAX_BATCH_SIZE} a task may hold"),
        );
    }
    if let Some(limits) = &s.rate_limit {
        let many = matches!(limits, spec::RateLimitRefs::Many(_));
        let mut seen = std::collections::BTreeSet::new();
        for (i, limit) in limits.as_slice().iter().enumerate() {
            let at = if many {
                format!("spec.rateLimit[{i}]")
            } else {
                "spec.rateLimit".to_string()
            };
            if !crate::k8s_name::is_dns_subdomain(&limit.name) {
                err(
                    &format!("{at}.name"),
                    format!(
                        "`{}` is not a RateLimit name (lowercase letters, digits, `-` and `.`)",
                        limit.name
                    ),
                );
            } else if !seen.insert(limit.name.as_str()) {
                err(
                    &format!("{at}.name"),
                    format!("`{}` is named twice", limit.name),
                );
            }
        }
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
        if slurm.effective_transport() == spec::SlurmTransport::Cli
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
    if let Some(alerts) = &s.alerts {
        alert_rules(&mut err, alerts);
    }
    errors
}

/// The rules of `spec.alerts`: one kind per channel, secrets by reference only (exactly one
/// place each), addresses an SMTP server takes, durations and shares that make sense.
/// Messages name the field and where a value is held, never a value.
fn alert_rules(err: &mut impl FnMut(&str, String), alerts: &spec::AlertsSpec) {
    for (i, channel) in alerts.channels.iter().enumerate() {
        let at = format!("spec.alerts.channels[{i}]");
        let kinds = [
            channel.slack.is_some(),
            channel.webhook.is_some(),
            channel.email.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            err(
                &at,
                "set exactly one of `slack`, `webhook` or `email` per channel".into(),
            );
        }
        if let Some(slack) = &channel.slack {
            secret_value_rules(err, &format!("{at}.slack.url"), &slack.url);
        }
        if let Some(hook) = &channel.webhook {
            secret_value_rules(err, &format!("{at}.webhook.url"), &hook.url);
        }
        if let Some(email) = &channel.email {
            let at = format!("{at}.email");
            if let Err(why) = mailbox(&email.from) {
                err(&format!("{at}.from"), why);
            }
            if email.to.is_empty() {
                err(&format!("{at}.to"), "name at least one recipient".into());
            }
            for (j, to) in email.to.iter().enumerate() {
                if let Err(why) = mailbox(to) {
                    err(&format!("{at}.to[{j}]"), why);
                }
            }
            let smtp = &email.smtp;
            if smtp.host.trim().is_empty()
                || smtp
                    .host
                    .chars()
                    .any(|c| c.is_whitespace() || c == '/' || c == '@')
            {
                err(
                    &format!("{at}.smtp.host"),
                    format!("`{}` is not a host name or address", smtp.host),
                );
            }
            if smtp.port == Some(0) {
                err(&format!("{at}.smtp.port"), "must be 1–65535".into());
            }
            if let Some(password) = &smtp.password {
                secret_value_rules(err, &format!("{at}.smtp.password"), password);
                if smtp.username.is_none() {
                    err(
                        &format!("{at}.smtp.password"),
                        "a password needs a `username` to log in as".into(),
                    );
                }
                if smtp.security == spec::SmtpSecurity::None {
                    err(
                        &format!("{at}.smtp.security"),
                        "`none` would send the password in clear text; use `starttls` or `tls`"
                            .into(),
                    );
                }
            }
        }
    }
    let r = &alerts.rules;
    if let Some(stalled) = &r.stalled
        && let Some(after) = &stalled.after
    {
        duration_rule(err, "spec.alerts.rules.stalled.after", after, true);
    }
    if let Some(rate) = &r.error_rate
        && let Some(p) = rate.percent
    {
        percent_rule(err, "spec.alerts.rules.errorRate.percent", p);
    }
    if let Some(rate) = &r.error_rate
        && rate.min_items == Some(0)
    {
        err(
            "spec.alerts.rules.errorRate.minItems",
            "must be ≥ 1: a rate of no items says nothing".into(),
        );
    }
    if let Some(saturated) = &r.rate_limit_saturated {
        if let Some(p) = saturated.percent {
            percent_rule(err, "spec.alerts.rules.rateLimitSaturated.percent", p);
        }
        if let Some(window) = &saturated.window {
            duration_rule(
                err,
                "spec.alerts.rules.rateLimitSaturated.window",
                window,
                true,
            );
        }
    }
    if let Some(throttle) = &alerts.throttle {
        if throttle.max == 0 {
            err(
                "spec.alerts.throttle.max",
                "must be ≥ 1 (turn rules off to send nothing)".into(),
            );
        }
        if let Some(per) = &throttle.per {
            duration_rule(err, "spec.alerts.throttle.per", per, true);
        }
    }
}

/// A threshold in percent: a number from 0 to 100.
fn percent_rule(err: &mut impl FnMut(&str, String), path: &str, value: f64) {
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        err(
            path,
            format!("{value} is not a percentage: write a number from 0 to 100 (10 means 10 %)"),
        );
    }
}

/// Where a secret is held: exactly one place, each one usable.
fn secret_value_rules(err: &mut impl FnMut(&str, String), path: &str, v: &spec::SecretValueSpec) {
    let places = [
        v.env.is_some(),
        v.file.is_some(),
        v.secret_key_ref.is_some(),
    ];
    if places.iter().filter(|p| **p).count() != 1 {
        err(
            path,
            "set exactly one of `env`, `file` or `secretKeyRef`: the value itself never goes in \
             the job file"
                .into(),
        );
    }
    if let Some(name) = &v.env
        && !is_variable_name(name)
    {
        err(
            &format!("{path}.env"),
            format!("`{name}` is not an environment variable name"),
        );
    }
    if let Some(file) = &v.file
        && file.trim().is_empty()
    {
        err(&format!("{path}.file"), "must name a file".into());
    }
    if let Some(r) = &v.secret_key_ref {
        secret_key_ref_rules(err, &format!("{path}.secretKeyRef"), r);
    }
}

/// An address an SMTP server takes: `user@host` or `Name <user@host>`, on one line.
fn mailbox(text: &str) -> Result<(), String> {
    let address = match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => &text[open + 1..close],
        _ => text,
    };
    let ok = !text.contains(['\r', '\n'])
        && address.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !host.contains('@')
        })
        && !address.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not an email address (user@host or `Name <user@host>`)"
        ))
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
fn dns_subdomain(name: &str) -> Result<(), String> {
    if crate::k8s_name::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(format!(
            "must be a Kubernetes name (at most 253 lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit), got `{name}`"
        ))
    }
}

/// A label key: `name` or `prefix/name`, the prefix a DNS subdomain.
fn label_key(key: &str) -> Result<(), String> {
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
fn label_value(value: &str) -> Result<(), String> {
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

/// The rules of the `http` builtin's request template: placeholders the worker can fill, an
/// http(s) URL, header names HTTP accepts with exactly one source each, a valid JSON pointer.
fn http_rules(err: &mut impl FnMut(&str, String), http: &spec::HttpSpec) {
    const PATH: &str = "spec.handler.builtin.http";
    match Template::parse(&http.url) {
        Err(why) => err(&format!("{PATH}.url"), why),
        Ok(url) => {
            let prefix = url.prefix().to_ascii_lowercase();
            let scheme_ok = ["http://", "https://"]
                .iter()
                .any(|scheme| prefix.starts_with(scheme) && prefix.len() > scheme.len());
            if !scheme_ok {
                err(
                    &format!("{PATH}.url"),
                    format!(
                        "must start with `http://` or `https://` and a host (no placeholder before it), got `{}`",
                        http.url
                    ),
                );
            }
        }
    }
    for (name, header) in &http.headers {
        let path = format!("{PATH}.headers.{name}");
        if !is_header_name(name) {
            err(
                &path,
                format!(
                    "`{name}` is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            );
        }
        let sources = [
            header.value.is_some(),
            header.from_env.is_some(),
            header.secret_ref.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if sources != 1 {
            err(
                &path,
                "set exactly one of `value`, `fromEnv` or `secretRef`".into(),
            );
        }
        if let Some(var) = &header.from_env
            && !is_variable_name(var)
        {
            err(
                &format!("{path}.fromEnv"),
                format!("`{var}` is not an environment variable name"),
            );
        }
        if header.value.is_some() && looks_like_secret_header(name) {
            err(
                &format!("{path}.value"),
                format!(
                    "`{name}` carries credentials, which a job file must not hold by value; {SECRET_HINT}"
                ),
            );
        }
        // Literal values are checked here (they would fail every request); values read from
        // the environment are checked by the worker at start, which never shows them.
        if let Some(value) = &header.value
            && value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            err(
                &format!("{path}.value"),
                "a header value must not hold control characters (line breaks)".into(),
            );
        }
    }
    if let Some(body) = &http.body {
        body_rules(err, &format!("{PATH}.body"), body);
    }
    if let Some(pointer) = &http.result_pointer
        && let Err(why) = json_pointer(pointer)
    {
        err(&format!("{PATH}.resultPointer"), why);
    }
}

/// How a secret reaches a handler instead (the end of every error about a secret by value).
const SECRET_HINT: &str = "use `fromEnv: VARIABLE` (a variable of the worker's environment) or, \
     with the Kubernetes executor, a Secret (`valueFrom.secretKeyRef` in `exec.env`, `secretRef` \
     in a header)";

/// Words in an `exec.env` name (upper-cased) that mark its value as a secret. `TOKEN` is
/// matched apart (see [`looks_like_secret_env`]).
const SECRET_ENV_WORDS: &[&str] = &[
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "ACCESS_KEY",
];

/// Whether an `exec.env` variable's name says it holds a secret: it contains one of
/// [`SECRET_ENV_WORDS`] or `TOKEN`, case-insensitively. `TOKENS` and `TOKENIZER` are not
/// `TOKEN`: they name counts and tokenizers (`MAX_TOKENS`, `TOKENIZERS_PARALLELISM`), which
/// handlers calling language models set all the time.
fn looks_like_secret_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_ENV_WORDS.iter().any(|w| upper.contains(w))
        || upper.match_indices("TOKEN").any(|(at, word)| {
            let rest = &upper[at + word.len()..];
            !(rest.starts_with('S') || rest.starts_with("IZ"))
        })
}

/// Whether a request header carries credentials: `Authorization`, `Proxy-Authorization`,
/// `Cookie`, or a name containing `token`, `api-key`, `apikey` or `secret` (any case).
fn looks_like_secret_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str())
        || ["token", "api-key", "apikey", "secret"]
            .iter()
            .any(|w| lower.contains(w))
}

/// A name the worker can look up in, or give to, a process environment.
fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// The rules of `spec.handler.exec.env`: names a process environment takes, exactly one
/// source per reference, Secrets with the Kubernetes executor only (nothing else sets the
/// variable from a Secret), and no secret by value. Messages name the variable, never a value.
fn exec_env_rules(err: &mut impl FnMut(&str, String), exec: &spec::ExecSpec, kubernetes: bool) {
    for (name, value) in &exec.env {
        let path = format!("spec.handler.exec.env.{name}");
        if !is_variable_name(name) {
            err(
                &path,
                format!("`{name}` is not an environment variable name (empty, `=` or NUL)"),
            );
        }
        match value {
            spec::EnvValue::Literal(text) => {
                if looks_like_secret_env(name) {
                    err(
                        &path,
                        format!(
                            "`{name}` looks like a secret, which a job file must not hold by value; {SECRET_HINT}"
                        ),
                    );
                }
                if text.contains('\0') {
                    err(&path, "a value must not hold a NUL character".into());
                }
            }
            spec::EnvValue::Ref(r) => match (&r.from_env, &r.value_from) {
                (Some(var), None) => {
                    if !is_variable_name(var) {
                        err(
                            &format!("{path}.fromEnv"),
                            format!("`{var}` is not an environment variable name"),
                        );
                    }
                }
                (None, Some(source)) => {
                    if kubernetes {
                        secret_key_ref_rules(
                            err,
                            &format!("{path}.valueFrom.secretKeyRef"),
                            &source.secret_key_ref,
                        );
                    } else {
                        err(
                            &format!("{path}.valueFrom"),
                            "a Secret reaches the handler with the Kubernetes executor only \
                             (spec.executor.kubernetes); elsewhere use `fromEnv: VARIABLE`"
                                .into(),
                        );
                    }
                }
                _ => err(
                    &path,
                    "set a string, or exactly one of `fromEnv` and `valueFrom`".into(),
                ),
            },
        }
    }
}

/// A Secret key reference Kubernetes accepts: the Secret's name a DNS subdomain, the key
/// letters, digits, `-`, `_` and `.` (at most 253).
fn secret_key_ref_rules(err: &mut impl FnMut(&str, String), path: &str, r: &spec::SecretKeyRef) {
    if let Err(why) = dns_subdomain(&r.name) {
        err(&format!("{path}.name"), why);
    }
    let key_ok = !r.key.is_empty()
        && r.key.len() <= 253
        && r.key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !key_ok {
        err(
            &format!("{path}.key"),
            format!(
                "`{}` is not a Secret key (at most 253 letters, digits, `-`, `_` and `.`)",
                r.key
            ),
        );
    }
}

/// Two different Secret keys must not reach the worker through one variable
/// (`{name: a-b, key: c}` and `{name: a, key: b-c}` are both `ORCH_SECRET_A_B_C`): one of
/// them would silently be read for the other.
fn secret_variable_rule(err: &mut impl FnMut(&str, String), handler: &spec::HandlerSpec) {
    let secrets = handler.secret_env();
    for (i, (variable, a)) in secrets.iter().enumerate() {
        if let Some((_, b)) = secrets[..i].iter().find(|(v, _)| v == variable) {
            err(
                "spec.handler",
                format!(
                    "Secret keys `{}/{}` and `{}/{}` both reach the worker as `{variable}`; rename one",
                    b.name, b.key, a.name, a.key
                ),
            );
        }
    }
}

/// Every string of a body template parses as a template; paths name the string.
fn body_rules(err: &mut impl FnMut(&str, String), path: &str, value: &serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            if let Err(why) = Template::parse(text) {
                err(path, why);
            }
        }
        serde_json::Value::Array(values) => {
            for (i, v) in values.iter().enumerate() {
                body_rules(err, &format!("{path}[{i}]"), v);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                body_rules(err, &format!("{path}.{key}"), v);
            }
        }
        _ => {}
    }
}

/// The largest `handler.exec.maxAnswerBytes`.
const MAX_ANSWER_BYTES_LIMIT: u64 = 4 * 1024 * 1024 * 1024;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use crate::load::check;
    use crate::load::tests::{doc, job_with, problems};
    use crate::spec;

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
    fn the_answer_size_limit_is_a_positive_size() {
        let with = |limit: serde_json::Value| {
            let mut d = doc(json!({}));
            d["spec"]["handler"] =
                json!({"exec": {"command": ["python3", "h.py"], "maxAnswerBytes": limit}});
            d
        };
        for good in [json!("1Mi"), json!(4096), json!("4Gi")] {
            assert_eq!(problems(&with(good.clone())), Vec::new(), "{good}");
        }
        let file = check(Path::new("job.yaml"), &with(json!("2Mi"))).unwrap();
        let exec = file.spec.handler.exec.unwrap();
        assert_eq!(exec.max_answer_bytes(), Ok(2 * 1024 * 1024));
        for (bad, says) in [
            (json!(0), "≥ 1 byte"),
            (json!("5Gi"), "at most 4Gi"),
            (json!("lots"), "lots"),
        ] {
            let got = problems(&with(bad.clone()));
            assert_eq!(got.len(), 1, "{bad}: {got:?}");
            assert_eq!(got[0].0, "spec.handler.exec.maxAnswerBytes", "{bad}");
            assert!(got[0].1.contains(says), "{bad}: {}", got[0].1);
        }
        // Unset: the default, and nothing written back.
        let mut d = doc(json!({}));
        d["spec"]["handler"] = json!({"exec": {"command": ["python3", "h.py"]}});
        let exec = check(Path::new("job.yaml"), &d)
            .unwrap()
            .spec
            .handler
            .exec
            .unwrap();
        assert_eq!(exec.max_answer_bytes(), Ok(spec::DEFAULT_MAX_ANSWER_BYTES));
        assert!(
            !serde_json::to_string(&exec)
                .unwrap()
                .contains("maxAnswerBytes")
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
    fn a_rest_transport_may_leave_its_url_to_the_operator() {
        // One verdict for `orch validate`, `orch submit` and the operator: accepted.
        let no_url = job_with(json!({"slurm": {"transport": "rest"}}), json!({}));
        assert_eq!(problems(&no_url), Vec::<(String, String)>::new());
        let file = check(Path::new("job.yaml"), &no_url).unwrap();
        let gaps = super::filled_by_operator(&file);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].path, "spec.executor.slurm.url");
        assert!(
            gaps[0].message.contains("--slurm-url"),
            "{}",
            gaps[0].message
        );
        // `orch run` has no operator to fill it in: refused there, naming the field.
        let job = crate::load::LoadedJob {
            file,
            path: std::path::PathBuf::from("job.yaml"),
            rate_limits: Vec::new(),
        };
        let e = crate::load::standalone_gaps(&job).unwrap_err();
        assert_eq!(e.category(), crate::ErrorCategory::Invalid);
        assert!(
            e.to_string()
                .contains("spec.executor.slurm.url: not set: the `rest` transport needs"),
            "{e}"
        );

        // Nothing left to fill in: with a URL, or with the commands transport.
        for executor in [
            json!({"slurm": {"transport": "rest", "url": "http://slurm:6820"}}),
            json!({"slurm": {"url": "http://slurm:6820"}}),
            json!({"slurm": {"transport": "cli"}}),
            json!({"slurm": {}}),
            json!({"local": {}}),
        ] {
            let file = check(
                Path::new("job.yaml"),
                &job_with(executor.clone(), json!({})),
            )
            .unwrap_or_else(|e| panic!("{executor}: {e}"));
            assert!(super::filled_by_operator(&file).is_empty(), "{executor}");
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
    fn the_transport_follows_the_url_unless_written() {
        use crate::spec::{SlurmExecutorSpec, SlurmTransport};
        let with = |transport, url: Option<&str>| SlurmExecutorSpec {
            transport,
            url: url.map(str::to_string),
            ..Default::default()
        };
        let url = Some("http://slurm:6820");
        assert_eq!(with(None, None).effective_transport(), SlurmTransport::Cli);
        assert_eq!(with(None, url).effective_transport(), SlurmTransport::Rest);
        let rest = Some(SlurmTransport::Rest);
        assert_eq!(with(rest, None).effective_transport(), SlurmTransport::Rest);
        let cli = Some(SlurmTransport::Cli);
        assert_eq!(with(cli, None).effective_transport(), SlurmTransport::Cli);
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

    /// A job with the given `spec.handler`.
    fn with_handler(handler: serde_json::Value) -> serde_json::Value {
        let mut job = job_with(json!({"local": {}}), json!({}));
        job["spec"]["handler"] = handler;
        job
    }

    #[test]
    fn http_templates_are_checked_with_field_paths() {
        let good = with_handler(json!({"builtin": {"name": "http", "http": {
            "method": "POST",
            "url": "https://api.example/v1/{kind}/items/{id}?x={{literal}}",
            "headers": {
                "Authorization": {"secretRef": {"name": "openai-creds", "key": "token"}},
                "X-Api-Key": {"fromEnv": "API_KEY"},
                "Accept": {"value": "application/json"},
            },
            "body": {"text": "{text}", "nested": ["{id}", "item {id} of {kind}"], "n": 3},
            "resultPointer": "/data/0",
        }}}));
        assert_eq!(problems(&good), Vec::<(String, String)>::new());

        let got = problems(&with_handler(json!({"builtin": {"name": "http", "http": {
            "url": "{host}/items/{id",
            "headers": {
                "Bad Header": {"value": "x"},
                "X-Two": {"value": "a", "fromEnv": "B"},
                "X-None": {},
                "X-Break": {"value": "a\r\nInjected: yes"},
            },
            "body": {"a": ["ok", "{oops"], "b": "}"},
            "resultPointer": "data",
        }}})));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.handler.builtin.http.url",
                "spec.handler.builtin.http.headers.Bad Header",
                "spec.handler.builtin.http.headers.X-Break.value",
                "spec.handler.builtin.http.headers.X-None",
                "spec.handler.builtin.http.headers.X-Two",
                "spec.handler.builtin.http.body.a[1]",
                "spec.handler.builtin.http.body.b",
                "spec.handler.builtin.http.resultPointer",
            ],
            "{got:?}"
        );
        assert!(got[0].1.contains("not closed"), "{got:?}");
        assert!(got[1].1.contains("not an HTTP header name"), "{got:?}");
        assert!(got[3].1.contains("exactly one of"), "{got:?}");
        assert!(got[7].1.contains("start with `/`"), "{got:?}");

        // A URL whose host comes from the item, or without a scheme, is refused.
        for url in [
            "{base}/x",
            "ftp://host/{id}",
            "api.example/{id}",
            "https://",
        ] {
            let got = problems(&with_handler(
                json!({"builtin": {"name": "http", "http": {"url": url}}}),
            ));
            assert_eq!(got.len(), 1, "{url}: {got:?}");
            assert_eq!(got[0].0, "spec.handler.builtin.http.url");
            assert!(got[0].1.contains("http://"), "{got:?}");
        }
        assert_eq!(
            problems(&with_handler(json!({"builtin": {"name": "http", "http": {
                "url": "http://api/{id}", "resultPointer": "/a~2b"
            }}})))[0]
                .1,
            "`/a~2b` is not a JSON pointer: `~` must be followed by 0 or 1"
        );
    }

    #[test]
    fn http_section_and_name_go_together() {
        let got = problems(&with_handler(json!({"builtin": {"name": "http"}})));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.handler.builtin.http");
        assert!(got[0].1.contains("needs an `http:` section"), "{got:?}");
        let got = problems(&with_handler(
            json!({"builtin": {"name": "identity", "http": {"url": "http://x/"}}}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].1.contains("http builtin only"), "{got:?}");
        // Schema errors: a method HTTP has but orch does not send, an unknown field.
        let got = problems(&with_handler(
            json!({"builtin": {"name": "http", "http": {"url": "http://x/", "method": "HEAD"}}}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.handler.builtin.http.method", "{got:?}");
        let got = problems(&with_handler(
            json!({"builtin": {"name": "http", "http": {"url": "http://x/", "verb": "GET"}}}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].1.contains("verb"), "{got:?}");
    }

    #[test]
    fn secret_refs_map_to_one_environment_variable() {
        let r = spec::SecretKeyRef {
            name: "openai-creds".into(),
            key: "api.key".into(),
        };
        assert_eq!(spec::secret_env_var(&r), "ORCH_SECRET_OPENAI_CREDS_API_KEY");
        let file = check(
            Path::new("job.yaml"),
            &with_handler(json!({"builtin": {"name": "http", "http": {
                "url": "http://api/{id}",
                "headers": {
                    "A": {"secretRef": {"name": "openai-creds", "key": "api.key"}},
                    "B": {"fromEnv": "B"},
                }
            }}})),
        )
        .unwrap();
        assert_eq!(
            file.spec.handler.secret_env(),
            vec![("ORCH_SECRET_OPENAI_CREDS_API_KEY".to_string(), r)]
        );
    }

    /// A job whose `exec` handler has this `env`, on this executor.
    fn with_env(env: serde_json::Value, executor: serde_json::Value) -> serde_json::Value {
        let mut job = job_with(executor, json!({}));
        job["spec"]["handler"] = json!({"exec": {"command": ["python3", "h.py"], "env": env}});
        job
    }

    /// A value no message may show.
    const SECRET: &str = "sk-live-0123456789abcdef";

    #[test]
    fn exec_env_takes_literals_and_references() {
        let env = json!({
            "MODEL": "small",
            "MAX_TOKENS": "512",
            "TOKENIZERS_PARALLELISM": "false",
            "OPENAI_API_KEY": {"fromEnv": "OPENAI_KEY"},
            "DB_PASSWORD": {"valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}},
        });
        let job = with_env(env.clone(), json!({"kubernetes": {}}));
        let file = check(Path::new("job.yaml"), &job).unwrap();
        let exec = file.spec.handler.exec.as_ref().unwrap();
        let db = spec::SecretKeyRef {
            name: "db-creds".into(),
            key: "password".into(),
        };
        assert_eq!(exec.env["MODEL"], spec::EnvValue::from("small"));
        assert_eq!(exec.env["OPENAI_API_KEY"].from_env(), Some("OPENAI_KEY"));
        assert_eq!(exec.env["OPENAI_API_KEY"].secret_key_ref(), None);
        assert_eq!(exec.env["DB_PASSWORD"].secret_key_ref(), Some(&db));
        assert_eq!(exec.env["DB_PASSWORD"].from_env(), None);
        // Written back as read (a literal stays a plain string, so job ids do not change),
        // and what is written back passes the schema again.
        let back = serde_json::to_value(&file).unwrap();
        assert_eq!(back["spec"]["handler"]["exec"]["env"], env);
        assert_eq!(problems(&back), Vec::<(String, String)>::new());
        // The Secret reaches the pod by reference; the worker's own variables pass by name.
        assert_eq!(
            file.spec.handler.secret_env(),
            vec![("ORCH_SECRET_DB_CREDS_PASSWORD".to_string(), db)]
        );
        assert_eq!(
            file.spec.handler.env_passed_from_worker(),
            ["OPENAI_KEY", "ORCH_SECRET_DB_CREDS_PASSWORD"]
        );
        // fromEnv works with every executor.
        for executor in [json!({"local": {}}), json!({"slurm": {}})] {
            let job = with_env(json!({"TOKEN": {"fromEnv": "HF_TOKEN"}}), executor.clone());
            assert_eq!(problems(&job), Vec::<(String, String)>::new(), "{executor}");
        }
    }

    #[test]
    fn the_worker_passes_on_what_headers_and_env_read() {
        let mut job = with_handler(json!({"builtin": {"name": "http", "http": {
            "url": "http://api/{id}",
            "headers": {
                "Authorization": {"fromEnv": "API_TOKEN"},
                "X-Key": {"secretRef": {"name": "creds", "key": "key"}},
                "X-Again": {"fromEnv": "API_TOKEN"},
                "Accept": {"value": "application/json"},
            }
        }}}));
        let file = check(Path::new("job.yaml"), &job).unwrap();
        assert_eq!(
            file.spec.handler.env_passed_from_worker(),
            ["API_TOKEN", "ORCH_SECRET_CREDS_KEY"]
        );
        job["spec"]["handler"] = json!({"exec": {"command": ["h"], "env": {"A": "plain"}}});
        let file = check(Path::new("job.yaml"), &job).unwrap();
        assert!(file.spec.handler.env_passed_from_worker().is_empty());
    }

    #[test]
    fn backoff_max_below_initial_and_giant_batches_are_refused() {
        let mut job = doc(json!({"uri": "out"}));
        job["spec"]["retry"] = json!({"backoff": {"initial": "10s", "max": "1s"}});
        job["spec"]["batch"] = json!({"size": u64::MAX});
        let got = problems(&job);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.retry.backoff.max", "spec.batch.size"],
            "{got:?}"
        );
        assert!(got[0].1.contains("shorter than backoff.initial"), "{got:?}");
        job["spec"]["retry"] = json!({"backoff": {"initial": "1s", "max": "1s"}});
        job["spec"]["batch"] = json!({"size": super::MAX_BATCH_SIZE});
        assert!(problems(&job).is_empty());
    }

    fn with_alerts(alerts: serde_json::Value) -> serde_json::Value {
        let mut job = doc(json!({"uri": "out"}));
        job["spec"]["alerts"] = alerts;
        job
    }

    #[test]
    fn alerts_take_tuned_rules_and_channels_by_reference() {
        let job = with_alerts(json!({
            "channels": [
                {"slack": {"url": {"env": "SLACK_URL"}}},
                {"webhook": {"url": {"file": "/etc/orch/hook"}}},
                {"email": {
                    "from": "orch <orch@example.com>",
                    "to": ["oncall@example.com"],
                    "smtp": {"host": "smtp.example.com", "username": "orch",
                             "password": {"secretKeyRef": {"name": "smtp", "key": "password"}}},
                }},
            ],
            "rules": {
                "stalled": {"after": "5m"},
                "errorRate": {"percent": 2.5, "minItems": 1000},
                "finished": {"enabled": true},
                "rateLimitSaturated": {"enabled": true, "percent": 80, "window": "15m"},
            },
            "throttle": {"max": 5, "per": "30m"},
        }));
        assert_eq!(problems(&job), Vec::<(String, String)>::new());
    }

    #[test]
    fn a_bad_threshold_is_explained_with_its_field() {
        for (rules, path, why) in [
            (
                json!({"errorRate": {"percent": 150}}),
                "spec.alerts.rules.errorRate.percent",
                "100",
            ),
            (
                json!({"errorRate": {"percent": -1}}),
                "spec.alerts.rules.errorRate.percent",
                "0",
            ),
            (
                json!({"rateLimitSaturated": {"percent": 101}}),
                "spec.alerts.rules.rateLimitSaturated.percent",
                "100",
            ),
            (
                json!({"errorRate": {"minItems": 0}}),
                "spec.alerts.rules.errorRate.minItems",
                "1",
            ),
            (
                json!({"stalled": {"after": "0s"}}),
                "spec.alerts.rules.stalled.after",
                "longer than 0s",
            ),
            (
                json!({"stalled": {"after": "soon"}}),
                "spec.alerts.rules.stalled.after",
                "soon",
            ),
            (
                json!({"stalled": {"afterr": "1m"}}),
                "spec.alerts.rules.stalled",
                "afterr",
            ),
        ] {
            let got = problems(&with_alerts(json!({"rules": rules})));
            assert_eq!(got.len(), 1, "{rules}: {got:?}");
            assert!(got[0].0.starts_with(path), "{rules}: {got:?}");
            assert!(got[0].1.contains(why), "{rules}: {got:?}");
        }
    }

    #[test]
    fn alert_channels_hold_secrets_by_reference_only() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET";
        let got = problems(&with_alerts(json!({"channels": [{"slack": {"url": url}}]})));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.alerts.channels[0].slack.url");
        assert!(got[0].1.contains("{env: VARIABLE}"), "{got:?}");
        assert!(
            !got[0].1.contains("XXXXSECRET"),
            "the URL is never repeated: {got:?}"
        );
        let got = problems(&with_alerts(json!({"channels": [
            {"webhook": {"url": {"env": "A", "file": "/b"}}},
            {"slack": {"url": {"env": "A"}}, "webhook": {"url": {"env": "A"}}},
            {"email": {"from": "orch", "to": ["a@b\r\nBcc: x@y"],
                       "smtp": {"host": "smtp.example.com", "security": "none",
                                "password": {"env": "P"}}}},
            {"webhook": {"url": {"secretKeyRef": {"name": "Not_A_Name", "key": "url"}}}},
        ]})));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        for expected in [
            "spec.alerts.channels[0].webhook.url",
            "spec.alerts.channels[1]",
            "spec.alerts.channels[2].email.from",
            "spec.alerts.channels[2].email.to[0]",
            "spec.alerts.channels[2].email.smtp.password",
            "spec.alerts.channels[2].email.smtp.security",
            "spec.alerts.channels[3].webhook.url.secretKeyRef.name",
        ] {
            assert!(paths.contains(&expected), "{expected}: {got:?}");
        }
    }

    #[test]
    fn env_names_a_process_cannot_take_are_refused() {
        for name in ["A=B", ""] {
            let got = problems(&with_env(json!({name: "x"}), json!({"local": {}})));
            assert_eq!(got.len(), 1, "{name:?}: {got:?}");
            assert!(
                got[0].1.contains("not an environment variable name"),
                "{got:?}"
            );
        }
    }

    #[test]
    fn secret_looking_literals_are_refused_without_their_value() {
        for name in [
            "CLIENT_SECRET",
            "hf_token",
            "TOKEN",
            "DB_PASSWORD",
            "Passwd",
            "OPENAI_API_KEY",
            "SERVICE_APIKEY",
            "SSH_PRIVATE_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "AWS_ACCESS_KEY_ID",
            "TOKEN_TOKENS",
        ] {
            let job = with_env(
                json!({name: SECRET, "MODEL": "small"}),
                json!({"local": {}}),
            );
            let got = problems(&job);
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            assert_eq!(got[0].0, format!("spec.handler.exec.env.{name}"));
            assert!(got[0].1.contains("looks like a secret"), "{got:?}");
            assert!(
                got[0].1.contains("fromEnv") && got[0].1.contains("valueFrom.secretKeyRef"),
                "{got:?}"
            );
            // Not in the rendered error either (what `orch validate` prints).
            let shown = check(Path::new("job.yaml"), &job).unwrap_err().to_string();
            assert!(!shown.contains(SECRET), "{shown}");
        }
        for name in ["MODEL", "MAX_TOKENS", "TOKENIZERS_PARALLELISM", "KEY_FIELD"] {
            let job = with_env(json!({name: "x"}), json!({"local": {}}));
            assert_eq!(problems(&job), Vec::<(String, String)>::new(), "{name}");
        }

        for header in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "X-Auth-Token",
            "X-Api-Key",
            "x-apikey",
            "X-Client-Secret",
        ] {
            let job = with_handler(json!({"builtin": {"name": "http", "http": {
                "url": "http://api/{id}",
                "headers": {header: {"value": SECRET}, "Accept": {"value": "text/plain"}},
            }}}));
            let got = problems(&job);
            assert_eq!(got.len(), 1, "{header}: {got:?}");
            assert_eq!(
                got[0].0,
                format!("spec.handler.builtin.http.headers.{header}.value")
            );
            assert!(got[0].1.contains("fromEnv"), "{got:?}");
            let shown = check(Path::new("job.yaml"), &job).unwrap_err().to_string();
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }

    #[test]
    fn secret_refs_need_the_kubernetes_executor_and_one_source() {
        let secret = json!({"valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}});
        for executor in [json!({"local": {}}), json!({"slurm": {}})] {
            let got = problems(&with_env(json!({"API_KEY": secret}), executor.clone()));
            assert_eq!(got.len(), 1, "{executor}: {got:?}");
            assert_eq!(got[0].0, "spec.handler.exec.env.API_KEY.valueFrom");
            assert!(got[0].1.contains("Kubernetes executor"), "{got:?}");
        }
        let got = problems(&with_env(
            json!({
                "NONE": {},
                "BOTH": {"fromEnv": "B", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}},
                "BAD_VAR": {"fromEnv": "A=B"},
                "BAD_REF": {"valueFrom": {"secretKeyRef": {"name": "Not_A_Name", "key": "a/b"}}},
            }),
            json!({"kubernetes": {}}),
        ));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.handler.exec.env.BAD_REF.valueFrom.secretKeyRef.name",
                "spec.handler.exec.env.BAD_REF.valueFrom.secretKeyRef.key",
                "spec.handler.exec.env.BAD_VAR.fromEnv",
                "spec.handler.exec.env.BOTH",
                "spec.handler.exec.env.NONE",
            ],
            "{got:?}"
        );
        assert!(got[3].1.contains("exactly one of"), "{got:?}");
        // Two Secret keys behind one variable would read one for the other.
        let got = problems(&with_env(
            json!({
                "A": {"valueFrom": {"secretKeyRef": {"name": "a-b", "key": "c"}}},
                "B": {"valueFrom": {"secretKeyRef": {"name": "a", "key": "b-c"}}},
                "C": {"valueFrom": {"secretKeyRef": {"name": "a", "key": "b-c"}}},
            }),
            json!({"kubernetes": {}}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.handler");
        assert!(got[0].1.contains("ORCH_SECRET_A_B_C"), "{got:?}");
    }

    #[test]
    fn env_shapes_the_schema_refuses_are_named_without_the_value() {
        let got = problems(&with_env(
            json!({"A": {"fromEnv": "X", "bogus": 1}}),
            json!({"local": {}}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.handler.exec.env.A");
        assert!(got[0].1.contains("unknown field `bogus`"), "{got:?}");
        for value in [json!(7_654_321), json!(["sk-in-a-list"]), json!(true)] {
            let got = problems(&with_env(json!({"A": value}), json!({"local": {}})));
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].0, "spec.handler.exec.env.A");
            assert!(got[0].1.contains("fromEnv"), "{got:?}");
            assert!(
                !got[0].1.contains("7654321") && !got[0].1.contains("sk-in"),
                "{got:?}"
            );
        }
        let got = problems(&with_handler(json!({"builtin": {"name": "http", "http": {
            "url": "http://api/{id}", "headers": {"X-Id": {"value": 7_654_321}},
        }}})));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.handler.builtin.http.headers.X-Id.value");
        assert!(!got[0].1.contains("7654321"), "{got:?}");
    }

    #[test]
    fn exactly_one_executor() {
        let got = problems(&job_with(json!({"local": {}, "kubernetes": {}}), json!({})));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "spec.executor");
    }
}
