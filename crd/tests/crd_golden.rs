//! The CRDs are generated from the Rust types and checked in under `crds/`, so a change to a
//! resource shows up in review as a CRD diff. Regenerate with
//! `ORCH_UPDATE_GOLDEN=1 cargo test -p orch-crd --test crd_golden`.
//!
//! Also checked here: the OrchJob CRD accepts the same spec as `orch validate` (its spec schema
//! has the same shape as core's JSON schema, and the example jobs pass both), every schema is
//! structural (the API server refuses others), and the names, printer columns and status
//! subresources are as docs/operator.md says.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use orch_crd::{Crd, OrchJob, RateLimit, TaskGroup, all_crds};
use serde::Deserialize;
use serde_json::{Value, json};

const FILES: [&str; 4] = [
    "orch.dev_orchjobs.yaml",
    "orch.dev_taskgroups.yaml",
    "orch.dev_ratelimits.yaml",
    "orch.dev_orchpolicies.yaml",
];

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn crd_named(name: &str) -> Crd {
    all_crds()
        .unwrap()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap()
}

/// The `openAPIV3Schema` of a CRD's only version, as JSON.
fn schema_of(name: &str) -> Value {
    let crd = serde_json::to_value(crd_named(name)).unwrap();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .unwrap()
        .clone()
}

#[test]
fn checked_in_crds_match_the_types() {
    let crds = all_crds().unwrap();
    assert_eq!(crds.len(), FILES.len());
    let mut stale = Vec::new();
    for (crd, file) in crds.iter().zip(FILES) {
        let (plural, group) = crd
            .metadata
            .name
            .as_deref()
            .unwrap()
            .split_once('.')
            .unwrap();
        assert_eq!(format!("{group}_{plural}.yaml"), file);
        let path = repo().join("crds").join(file);
        let generated = orch_crd::crd_yaml(crd).unwrap();
        if std::env::var_os("ORCH_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != generated {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/{stale:?} out of date: run ORCH_UPDATE_GOLDEN=1 cargo test -p orch-crd --test crd_golden"
    );
    // crdgen prints exactly the three files, in order.
    let all: String = FILES
        .iter()
        .map(|f| std::fs::read_to_string(repo().join("crds").join(f)).unwrap())
        .collect();
    assert_eq!(orch_crd::crds_yaml().unwrap(), all);
}

/// `kubectl apply -f crds/` (and Helm, for the chart's copy) reads every `.yaml`, `.yml` and
/// `.json` file of the directory as Kubernetes objects and stops at the first that is none, so
/// those directories hold CRDs and nothing else: every file under `crds/`, and every file of
/// the chart's `crds/` that kubectl would read (its README is not read).
#[test]
fn every_file_under_crds_is_a_crd_object() {
    for (dir, only_manifests) in [("crds", false), ("charts/orch-operator/crds", true)] {
        let mut seen = 0;
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let manifest = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if only_manifests && !manifest {
                continue;
            }
            let shown = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            let text = std::fs::read_to_string(&path).unwrap();
            let mut documents = 0;
            // serde_yaml reads JSON too (YAML is a superset), as kubectl does.
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(document)
                    .unwrap_or_else(|e| panic!("{shown} is not YAML or JSON: {e}"));
                if value.is_null() {
                    continue; // an empty document, e.g. after a leading `---`
                }
                documents += 1;
                assert_eq!(
                    (value["apiVersion"].as_str(), value["kind"].as_str()),
                    (
                        Some("apiextensions.k8s.io/v1"),
                        Some("CustomResourceDefinition")
                    ),
                    "{shown} holds something else than a CRD; move it out of {dir}/, which \
                     `kubectl apply -f {dir}/` reads whole"
                );
            }
            assert!(documents > 0, "{shown} holds no object");
            seen += 1;
        }
        assert_eq!(
            seen,
            FILES.len(),
            "{dir}/ should hold the {} CRDs",
            FILES.len()
        );
    }
}

/// Walks every schema node reachable through `properties`, `items` and `additionalProperties`.
fn walk<'a>(node: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), node));
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, format!("{path}[]"), out);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(ap, format!("{path}{{}}"), out);
    }
}

fn contains_key_anywhere(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => {
            map.contains_key(key) || map.values().any(|v| contains_key_anywhere(v, key))
        }
        Value::Array(items) => items.iter().any(|v| contains_key_anywhere(v, key)),
        _ => false,
    }
}

#[test]
fn schemas_are_structural() {
    for name in [
        "orchjobs.orch.dev",
        "taskgroups.orch.dev",
        "ratelimits.orch.dev",
    ] {
        let schema = schema_of(name);
        for key in [
            "$ref",
            "$defs",
            "definitions",
            "$schema",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
        ] {
            assert!(
                !contains_key_anywhere(&schema, key),
                "{name}: `{key}` in the schema"
            );
        }
        let mut nodes = Vec::new();
        walk(&schema, name.to_string(), &mut nodes);
        assert!(nodes.len() > 5, "{name}: walked only {} nodes", nodes.len());
        for (path, node) in nodes {
            let typed = node.get("type").is_some_and(Value::is_string)
                || node.get("x-kubernetes-int-or-string") == Some(&json!(true))
                || node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            assert!(typed, "{path}: no type: {node}");
            let ap = node.get("additionalProperties");
            assert!(
                !matches!(ap, Some(Value::Bool(_))),
                "{path}: boolean additionalProperties"
            );
            assert!(
                !(ap.is_some() && node.get("properties").is_some()),
                "{path}: both properties and additionalProperties"
            );
            if node.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                assert!(
                    node.get("type").is_none(),
                    "{path}: int-or-string with a type"
                );
            }
        }
    }
}

// ---- the OrchJob spec schema against core's JSON schema ----

/// A core schema node with `$ref`s followed and `Option`'s null branch taken off.
struct Core<'a> {
    node: Value,
    nullable: bool,
    defs: &'a serde_json::Map<String, Value>,
}

fn resolve<'a>(node: &Value, defs: &'a serde_json::Map<String, Value>) -> Core<'a> {
    let mut node = node.clone();
    let mut nullable = false;
    loop {
        let obj = node.as_object().unwrap().clone();
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let target = defs[r.trim_start_matches("#/$defs/")].clone();
            // Keywords next to the $ref (description, default) stay with the node.
            let mut merged = target.as_object().unwrap().clone();
            for (k, v) in obj {
                if k != "$ref" {
                    merged.insert(k, v);
                }
            }
            node = Value::Object(merged);
            continue;
        }
        if let Some(any) = obj.get("anyOf").and_then(Value::as_array)
            && any.iter().any(|b| b == &json!({"type": "null"}))
        {
            nullable = true;
            let other: Vec<_> = any
                .iter()
                .filter(|b| *b != &json!({"type": "null"}))
                .collect();
            assert_eq!(other.len(), 1);
            let mut merged = other[0].as_object().unwrap().clone();
            for (k, v) in obj {
                if k != "anyOf" {
                    merged.insert(k, v);
                }
            }
            node = Value::Object(merged);
            continue;
        }
        if let Some(types) = obj.get("type").and_then(Value::as_array) {
            nullable |= types.contains(&json!("null"));
            let rest: Vec<_> = types.iter().filter(|t| *t != "null").cloned().collect();
            assert_eq!(rest.len(), 1, "{node}");
            node.as_object_mut()
                .unwrap()
                .insert("type".into(), rest[0].clone());
        }
        break;
    }
    Core {
        node,
        nullable,
        defs,
    }
}

fn key_set(node: &Value, key: &str) -> BTreeSet<String> {
    match node.get(key) {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn enum_values(node: &Value) -> Option<BTreeSet<String>> {
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(|v| v.to_string()).collect());
    }
    let one_of = node.get("oneOf").and_then(Value::as_array)?;
    Some(one_of.iter().map(|b| b["const"].to_string()).collect())
}

fn compare(core: Core<'_>, crd: &Value, path: &str, errors: &mut Vec<String>) {
    let c = &core.node;
    let mut err = |what: String| errors.push(format!("{path}: {what}"));
    let crd_nullable = crd.get("nullable") == Some(&json!(true));
    if core.nullable != crd_nullable {
        err(format!(
            "nullable: core {} CRD {crd_nullable}",
            core.nullable
        ));
    }
    for key in [
        "default",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
    ] {
        let (a, b) = (c.get(key), crd.get(key));
        let same = match (a, b) {
            (Some(x), Some(y)) => x == y || x.as_f64() == y.as_f64(),
            (None, None) => true,
            _ => false,
        };
        // The int-or-string branches' `minimum` does not survive (see make_structural).
        let int_or_string_minimum =
            key == "minimum" && crd.get("x-kubernetes-int-or-string").is_some();
        if !same && !int_or_string_minimum {
            err(format!("{key}: core {a:?} CRD {b:?}"));
        }
    }
    if c.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        if crd.get("x-kubernetes-int-or-string") != Some(&json!(true)) {
            err("core is int-or-string, the CRD is not".into());
        }
        return;
    }
    // Several shapes in core, kept as written by the API server (see make_structural).
    if c.get("anyOf").is_some()
        && crd.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
    {
        return;
    }
    // Any JSON value (the `http` handler's body template): no type, kept as written.
    if c.get("type").is_none()
        && c.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
    {
        if crd.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true)) {
            err("any JSON in core, not preserved in the CRD".into());
        }
        return;
    }
    if let Some(values) = enum_values(c) {
        // A nullable enum lists `null` among its values in the CRD (core: a `null` branch).
        let crd_values = enum_values(crd).map(|mut v| {
            v.remove("null");
            v
        });
        if crd_values != Some(values.clone()) {
            err(format!("enum: core {values:?} CRD {crd_values:?}"));
        }
        return;
    }
    let ty = c.get("type").and_then(Value::as_str).unwrap_or_default();
    if crd.get("type").and_then(Value::as_str) != Some(ty) {
        err(format!("type: core {ty} CRD {:?}", crd.get("type")));
        return;
    }
    match ty {
        "object" => {
            let (cp, kp) = (key_set(c, "properties"), key_set(crd, "properties"));
            if cp != kp {
                err(format!("properties: core {cp:?} CRD {kp:?}"));
            }
            let (cr, kr) = (key_set(c, "required"), key_set(crd, "required"));
            if cr != kr {
                err(format!("required: core {cr:?} CRD {kr:?}"));
            }
            match c.get("additionalProperties") {
                Some(Value::Object(ap)) if !ap.is_empty() => {
                    match crd.get("additionalProperties") {
                        Some(k) => compare(
                            resolve(&Value::Object(ap.clone()), core.defs),
                            k,
                            &format!("{path}{{}}"),
                            errors,
                        ),
                        None => errors.push(format!("{path}: a map in core, not in the CRD")),
                    }
                }
                Some(Value::Bool(true))
                    if crd.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true)) =>
                {
                    errors.push(format!(
                        "{path}: free-form in core, not preserved in the CRD"
                    ));
                }
                _ => {}
            }
            for name in cp.intersection(&kp) {
                compare(
                    resolve(&c["properties"][name], core.defs),
                    &crd["properties"][name],
                    &format!("{path}.{name}"),
                    errors,
                );
            }
        }
        "array" => compare(
            resolve(&c["items"], core.defs),
            &crd["items"],
            &format!("{path}[]"),
            errors,
        ),
        _ => {}
    }
}

#[test]
fn orchjob_spec_schema_has_the_shape_of_cores() {
    let core_schema = orch_core::spec::job_file_schema();
    let defs = core_schema["$defs"].as_object().unwrap();
    let crd_spec = schema_of("orchjobs.orch.dev")["properties"]["spec"].clone();
    let mut errors = Vec::new();
    let mut core = resolve(&core_schema["properties"]["spec"], defs);
    // The CRD's top-level spec carries its own doc comment; compare the structure only.
    core.node.as_object_mut().unwrap().remove("description");
    compare(core, &crd_spec, "spec", &mut errors);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The comparison did reach deep nodes.
    for pointer in [
        "/properties/handler/properties/exec/properties/command",
        "/properties/output/properties/schema/items/properties/type",
        "/properties/retry/properties/backoff/properties/initial",
    ] {
        assert!(crd_spec.pointer(pointer).is_some(), "{pointer}");
    }
}

#[test]
fn the_shape_comparison_notices_differences() {
    let core_schema = orch_core::spec::job_file_schema();
    let defs = core_schema["$defs"].as_object().unwrap();
    let spec = schema_of("orchjobs.orch.dev")["properties"]["spec"].clone();
    let mut tampered = Vec::new();
    let mut t = spec.clone();
    t["required"] = json!(["input"]);
    tampered.push(t);
    let mut t = spec.clone();
    t["properties"]["batch"]["properties"]["size"]["default"] = json!(10);
    tampered.push(t);
    let mut t = spec.clone();
    t["properties"]["handler"]["properties"]["exec"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("env");
    tampered.push(t);
    let mut t = spec.clone();
    t["properties"]["output"]["properties"]["schema"]["items"]["properties"]["type"]["enum"] =
        json!(["string"]);
    tampered.push(t);
    let mut t = spec;
    t["properties"]["resources"]["properties"]["partition"]
        .as_object_mut()
        .unwrap()
        .remove("nullable");
    tampered.push(t);
    for (i, t) in tampered.iter().enumerate() {
        let mut core = resolve(&core_schema["properties"]["spec"], defs);
        core.node.as_object_mut().unwrap().remove("description");
        let mut errors = Vec::new();
        compare(core, t, "spec", &mut errors);
        assert!(!errors.is_empty(), "tampering {i} went unnoticed");
    }
}

fn read_yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn example_jobs_are_orchjob_resources_that_both_schemas_accept() {
    let crd_spec = schema_of("orchjobs.orch.dev")["properties"]["spec"].clone();
    let crd_validator = jsonschema::validator_for(&crd_spec).unwrap();
    // reviews-sentiment as written; identity-bench uses `extends`, which only `orch` resolves:
    // it goes in as the merged document `orch run` saves.
    let reviews = repo().join("examples/reviews-sentiment/job.yaml");
    let bench = repo().join("examples/identity-bench/job.yaml");
    let merged = orch_core::load::load(&bench).unwrap().file;
    let documents = [
        (reviews.clone(), read_yaml(&reviews)),
        (bench, serde_json::to_value(&merged).unwrap()),
    ];
    for (path, value) in documents {
        let resource: OrchJob = serde_json::from_value(value.clone()).unwrap();
        let file = orch_core::load::check(&path, &value).unwrap();
        assert_eq!(resource.spec.0, file.spec, "{}", path.display());
        assert_eq!(
            resource.metadata.name.as_deref(),
            Some(file.metadata.name.as_str())
        );
        let errors: Vec<String> = crd_validator
            .iter_errors(&value["spec"])
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        // Serializing the resource gives back a spec both sides read the same way.
        let again = serde_json::to_value(&resource).unwrap();
        assert_eq!(again["apiVersion"], "orch.dev/v1alpha1");
        assert_eq!(again["kind"], "OrchJob");
        assert!(crd_validator.is_valid(&again["spec"]));
    }
    // What core refuses, the CRD refuses too (a schema rule, not a semantic one).
    let mut bad = read_yaml(&repo().join("examples/reviews-sentiment/job.yaml"));
    bad["spec"]["batch"]["size"] = json!(0);
    assert!(!crd_validator.is_valid(&bad["spec"]));
    assert!(orch_core::load::check(Path::new("bad.yaml"), &bad).is_err());
    bad["spec"]["batch"]["size"] = json!(10);
    bad["spec"]["bogus"] = json!(true);
    assert!(serde_json::from_value::<OrchJob>(bad).is_err());
}

fn printer_columns(name: &str) -> Vec<(String, String)> {
    crd_named(name).spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.json_path))
        .collect()
}

fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn names_printer_columns_and_status_subresources() {
    for (name, kind, short) in [
        ("orchjobs.orch.dev", "OrchJob", "oj"),
        ("taskgroups.orch.dev", "TaskGroup", "tg"),
        ("ratelimits.orch.dev", "RateLimit", "rl"),
    ] {
        let crd = crd_named(name);
        assert_eq!(crd.spec.group, "orch.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["orch".to_string()]));
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref().unwrap();
        assert!(
            subresources.status.is_some(),
            "{name}: no status subresource"
        );
        assert!(subresources.scale.is_none());
    }
    let age = ("Age", ".metadata.creationTimestamp");
    assert_eq!(
        printer_columns("orchjobs.orch.dev"),
        cols(&[
            ("Phase", ".status.phase"),
            ("Done", ".status.tasks.succeeded"),
            ("Total", ".status.tasks.total"),
            ("Failed", ".status.items.failed"),
            age,
        ])
    );
    assert_eq!(
        printer_columns("taskgroups.orch.dev"),
        cols(&[
            ("Job", ".spec.job"),
            ("Kind", ".spec.kind"),
            ("Tasks", ".spec.tasks"),
            ("Done", ".status.tasks.succeeded"),
            age,
        ])
    );
    assert_eq!(
        printer_columns("ratelimits.orch.dev"),
        cols(&[
            ("Rate", ".spec.rate"),
            ("Burst", ".spec.burst"),
            ("Scope", ".spec.scope"),
            ("Effective", ".status.effectiveRate"),
            ("Usage", ".status.usage"),
            ("Throttled", ".status.throttled"),
            age,
        ])
    );
    // Every column's path exists in the schema.
    for name in [
        "orchjobs.orch.dev",
        "taskgroups.orch.dev",
        "ratelimits.orch.dev",
    ] {
        let schema = schema_of(name);
        for (col, path) in printer_columns(name) {
            if path.starts_with(".metadata.") {
                continue;
            }
            let pointer: String = path
                .split('.')
                .skip(1)
                .map(|p| format!("/properties/{p}"))
                .collect();
            assert!(
                schema.pointer(&pointer).is_some(),
                "{name}: column {col} reads {path}, not in the schema"
            );
        }
    }
}

#[test]
fn own_fields_all_have_descriptions() {
    let mut missing = Vec::new();
    for (name, parts) in [
        ("orchjobs.orch.dev", &["status"][..]),
        ("taskgroups.orch.dev", &["spec", "status"][..]),
        ("ratelimits.orch.dev", &["spec", "status"][..]),
    ] {
        let schema = schema_of(name);
        assert!(schema.get("description").is_some(), "{name}");
        for part in parts {
            let mut nodes = Vec::new();
            walk(
                &schema["properties"][part],
                format!("{name}.{part}"),
                &mut nodes,
            );
            for (path, node) in nodes.into_iter().skip(1) {
                // Array items and map values are described by their field.
                if !path.ends_with("[]")
                    && !path.ends_with('}')
                    && node.get("description").is_none()
                {
                    missing.push(path);
                }
            }
        }
    }
    assert!(missing.is_empty(), "no description: {missing:?}");
}

#[test]
fn ratelimit_and_taskgroup_validation() {
    let schema = schema_of("ratelimits.orch.dev");
    let spec = jsonschema::validator_for(&schema["properties"]["spec"]).unwrap();
    for ok in [
        json!({"rate": "10/s", "burst": 20, "scope": "cluster"}),
        json!({"rate": "0.5/s"}),
        json!({"rate": "600/m", "scope": "job"}),
        json!({"rate": "1000/h", "burst": 1, "scope": "namespace"}),
    ] {
        assert!(spec.is_valid(&ok), "{ok}");
        let typed: orch_crd::RateLimitSpec = serde_json::from_value(ok).unwrap();
        assert!(typed.burst >= 1);
    }
    for bad in [
        json!({"rate": "10"}),
        json!({"rate": "10 per second"}),
        json!({"rate": "/s"}),
        json!({"rate": "10/d"}),
        json!({"rate": "10/s", "burst": 0}),
        json!({"rate": "10/s", "scope": "world"}),
        json!({"burst": 3}),
    ] {
        assert!(!spec.is_valid(&bad), "{bad}");
    }
    let burst = &schema["properties"]["spec"]["properties"]["burst"];
    assert_eq!(burst["minimum"].as_f64(), Some(1.0), "{burst}");

    let tg = schema_of("taskgroups.orch.dev");
    let rules: Vec<&str> = tg["properties"]["spec"]["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 2);
    let spec = jsonschema::validator_for(&tg["properties"]["spec"]).unwrap();
    let ok = json!({"job": "enrich", "group": "merge-1-0", "kind": "merge", "level": 1,
                    "tasks": 100, "executorRange": {"prefix": "1234_", "first": 0, "last": 99}});
    assert!(spec.is_valid(&ok));
    let typed: orch_crd::TaskGroupSpec = serde_json::from_value(ok).unwrap();
    assert_eq!(typed.tasks, 100);
    assert!(!spec.is_valid(&json!({"job": "j", "group": "g", "kind": "work", "tasks": 0})));
    assert!(!spec.is_valid(&json!({"job": "j", "group": "g", "kind": "other", "tasks": 1})));
}

#[test]
fn statuses_round_trip_and_stay_small() {
    use orch_crd::{
        AttemptCounts, ConditionStatus, ItemCounts, JobCondition, JobConditionType, JobPhase,
        OrchJobStatus, TaskCounts,
    };
    let status = OrchJobStatus {
        phase: Some(JobPhase::Running),
        conditions: vec![JobCondition {
            r#type: JobConditionType::Progressing,
            status: ConditionStatus::True,
            reason: Some("TasksRunning".into()),
            message: Some("4000 of 100000 tasks done".into()),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
            observed_generation: Some(1),
        }],
        tasks: Some(TaskCounts {
            total: 100_000,
            pending: 90_000,
            running: 6_000,
            succeeded: 4_000,
            ..TaskCounts::default()
        }),
        items: Some(ItemCounts {
            total: 5_000_000,
            ok: 200_000,
            ..ItemCounts::default()
        }),
        attempts: Some(AttemptCounts {
            total: 10_200,
            again: 200,
            not_counted: 150,
        }),
        start_time: Some("2026-01-01T00:00:00Z".into()),
        completion_time: None,
        output: None,
        observed_generation: Some(1),
        job_id: Some("reviews-1a2b3c4d".into()),
        retried: Some("2026-11-26T10:00:00Z".into()),
    };
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["phase"], "Running");
    assert_eq!(json["conditions"][0]["type"], "Progressing");
    assert_eq!(
        json["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(json["tasks"]["succeeded"], 4000);
    assert_eq!(json["attempts"]["notCounted"], 150);
    assert!(json.to_string().len() < 4096);
    let back: OrchJobStatus = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, status);
    let schema = schema_of("orchjobs.orch.dev");
    let validator = jsonschema::validator_for(&schema["properties"]["status"]).unwrap();
    assert!(validator.is_valid(&json));

    let tg: TaskGroup = serde_json::from_value(json!({
        "apiVersion": "orch.dev/v1alpha1", "kind": "TaskGroup",
        "metadata": {"name": "enrich-work-0", "namespace": "default"},
        "spec": {"job": "enrich", "group": "work-0", "kind": "work", "tasks": 3,
                 "executorIds": ["a", "b", "c"]},
        "status": {"tasks": {"total": 3, "succeeded": 1}}
    }))
    .unwrap();
    assert_eq!(tg.status.unwrap().tasks.unwrap().succeeded, 1);
    let rl: RateLimit = serde_json::from_value(json!({
        "apiVersion": "orch.dev/v1alpha1", "kind": "RateLimit",
        "metadata": {"name": "openai"}, "spec": {"rate": "10/s"}
    }))
    .unwrap();
    assert_eq!(rl.spec.burst, 1);
    assert_eq!(rl.spec.scope, orch_crd::RateLimitScope::Namespace);
}

/// The CEL rules of the OrchJob CRD, evaluated as the API server does (with the cel-rust
/// interpreter; the emulator of the end-to-end tests runs no CEL): a tenant's choices that
/// belong to the admin are refused, an ordinary job passes.
#[test]
fn orchjob_cel_rules_refuse_what_the_admin_chooses() {
    use cel_interpreter::{Context, Program, Value as Cel};
    let rules = schema_of("orchjobs.orch.dev")
        .pointer("/properties/spec/x-kubernetes-validations")
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rules.len(), orch_crd::ORCHJOB_SPEC_RULES.len());
    // The message of each rule that refuses `spec` (a rule that cannot be evaluated refuses, as
    // on the API server).
    let refusals = |spec: Value| -> Vec<String> {
        rules
            .iter()
            .filter_map(|r| {
                let program = Program::compile(r["rule"].as_str().unwrap()).unwrap();
                let mut context = Context::default();
                context.add_variable("self", spec.clone()).unwrap();
                match program.execute(&context) {
                    Ok(Cel::Bool(true)) => None,
                    _ => Some(r["fieldPath"].as_str().unwrap().to_string()),
                }
            })
            .collect()
    };
    let good = json!({
        "input": {"uri": "s3://data/team-a/in.jsonl"},
        "handler": {"builtin": {"name": "identity"}},
        "executor": {"slurm": {"maxRunning": 4}},
        "output": {"uri": "s3://data/team-a/out/"},
    });
    assert_eq!(refusals(good.clone()), Vec::<String>::new());
    let mut pods = good.clone();
    pods["executor"] = json!({"kubernetes": {"image": "worker:1"}});
    assert_eq!(refusals(pods), Vec::<String>::new());
    // Alert channels whose secrets are Secrets of the namespace pass.
    let mut alerting = good.clone();
    alerting["alerts"] = json!({
        "channels": [
            {"slack": {"url": {"secretKeyRef": {"name": "hook", "key": "url"}}}},
            {"email": {"from": "a@b.c", "to": ["d@e.f"], "smtp": {"host": "smtp.example.com",
                "username": "u", "password": {"secretKeyRef": {"name": "smtp", "key": "pw"}}}}},
            {"email": {"from": "a@b.c", "to": ["d@e.f"], "smtp": {"host": "relay", "security": "none"}}},
        ],
        "rules": {"stalled": {"after": "5m"}},
    });
    assert_eq!(refusals(alerting), Vec::<String>::new());
    for (field, value, refused_at) in [
        ("/executor", json!({"local": {}}), ".executor"),
        (
            "/executor",
            json!({"slurm": {"url": "https://attacker"}}),
            ".executor.slurm",
        ),
        (
            "/executor",
            json!({"slurm": {"tokenFile": "/var/run/secrets/x"}}),
            ".executor.slurm",
        ),
        (
            "/executor",
            json!({"slurm": {"user": "root"}}),
            ".executor.slurm",
        ),
        (
            "/executor",
            json!({"slurm": {"worker": "/tmp/w"}}),
            ".executor.slurm",
        ),
        (
            "/executor",
            json!({"slurm": {"logDir": "/etc"}}),
            ".executor.slurm",
        ),
        ("/storage", json!({"uri": "s3://other/"}), ".storage.uri"),
        (
            "/input",
            json!({"uri": "file:///var/run/secrets/token"}),
            ".input.uri",
        ),
        ("/input", json!({"uri": "/dev/zero"}), ".input.uri"),
        ("/output", json!({"uri": "/tmp/out"}), ".output.uri"),
        (
            "/alerts",
            json!({"channels": [{"slack": {"url": {"env": "AWS_SECRET_ACCESS_KEY"}}}]}),
            ".alerts.channels",
        ),
        (
            "/alerts",
            json!({"channels": [
                {"webhook": {"url": {"secretKeyRef": {"name": "hook", "key": "url"}}}},
                {"webhook": {"url": {"file": "/var/run/secrets/kubernetes.io/serviceaccount/token"}}},
            ]}),
            ".alerts.channels",
        ),
        (
            "/alerts",
            json!({"channels": [{"email": {"from": "a@b.c", "to": ["d@e.f"],
                "smtp": {"host": "smtp.evil", "username": "u", "password": {"env": "SLURM_JWT"}}}}]}),
            ".alerts.channels",
        ),
    ] {
        let mut spec = good.clone();
        spec[&field[1..]] = value.clone();
        assert_eq!(refusals(spec), [refused_at], "{field} = {value}");
    }
}
