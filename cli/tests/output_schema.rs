//! `spec.output.schema` and `spec.output.rowGroupRows` end to end: the real `orch` and
//! `orch-worker` binaries, output read back with pyarrow.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Scratch, SeenColumn, parquet_file, part_files, read_output, text};

fn job_yaml(name: &str, batch: u64, output: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {{name: {name}}}
spec:
  input: {{uri: in.jsonl}}
  batch: {{size: {batch}}}
  handler: {{builtin: {{name: identity}}}}
  output:
    uri: out
{output}
  executor: {{local: {{parallelism: 2}}}}
{extra}"#
    )
}

/// Runs a Python snippet over the output directory and parses what it prints as JSON.
fn pyarrow(script: &str, dir: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "python failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn column(name: &str, ty: &str, nullable: bool) -> SeenColumn {
    SeenColumn {
        name: name.into(),
        r#type: ty.into(),
        nullable,
    }
}

/// The logs of the job's item tasks (`<task>.<attempt>.log`, not the merge tasks'), by name.
fn worker_logs(s: &Scratch) -> Vec<(String, String)> {
    let mut logs = Vec::new();
    for job in std::fs::read_dir(s.path(".orch/jobs")).unwrap() {
        for log in std::fs::read_dir(job.unwrap().path().join("logs")).unwrap() {
            let path = log.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(|c: char| c.is_ascii_digit()) {
                logs.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    logs.sort();
    logs
}

#[test]
fn a_declared_schema_shapes_the_output_and_misfits_are_schema_errors() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    // 1,000 items in 4 tasks: `score` is an int for even items, a float for odd ones (both fit
    // float64) and a string for item 7 (does not); `meta` is nested; `junk` is not declared.
    let mut input = String::new();
    for i in 0..1_000u64 {
        let score = match i {
            7 => "\"abc-secret\"".to_string(),
            i if i % 2 == 0 => format!("{i}"),
            i => format!("{i}.5"),
        };
        input.push_str(&format!(
            "{{\"id\": {i}, \"label\": \"item {i}\", \"score\": {score}, \"meta\": {{\"k\": [{i}]}}, \"junk\": true}}\n"
        ));
    }
    s.write("in.jsonl", &input);
    let output = r#"    schema:
      - {name: label, type: string}
      - {name: score, type: float64, nullable: false}
      - {name: id, type: int64}
      - {name: meta, type: json}
      - {name: missing, type: bool}"#;
    let job = s.write(
        "job.yaml",
        &job_yaml(
            "declared",
            250,
            output,
            "  tolerance: {maxFailedItemsPercent: 1}\n",
        ),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let seen = read_output(&s.path("out"));
    assert_eq!(seen.error_items, vec![7]);
    assert_eq!(seen.error_kinds.get("schema"), Some(&1));
    assert_eq!(seen.error_kinds.len(), 1);
    assert_eq!(
        seen.items,
        (0..1_000).filter(|&i| i != 7).collect::<Vec<u64>>()
    );
    assert_eq!(seen.duplicates, 0);
    assert_eq!(
        seen.columns,
        vec!["_item", "label", "score", "id", "meta", "missing"]
    );

    let parts = part_files(&s.path("out"));
    assert!(!parts.is_empty());
    for part in &parts {
        assert_eq!(
            parquet_file(part).columns,
            vec![
                column("_item", "uint64", false),
                column("label", "string", true),
                column("score", "double", false),
                column("id", "int64", true),
                column("meta", "string", true),
                column("missing", "bool", true),
            ],
            "{}",
            part.display()
        );
    }

    let got = pyarrow(
        r#"
import glob, json, sys
import pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
t = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(d + "/part-*.parquet"))])
rows = {r["_item"]: r for r in t.to_pylist()}
e = pq.read_table(d + "/errors.parquet").to_pylist()
print(json.dumps({"r0": rows[0], "r3": rows[3], "errors": e}))
"#,
        &s.path("out"),
    );
    assert_eq!(
        got["r0"],
        serde_json::json!({"_item": 0, "label": "item 0", "score": 0.0, "id": 0,
                           "meta": "{\"k\":[0]}", "missing": null})
    );
    assert_eq!(got["r3"]["score"], 3.5);
    let error = &got["errors"][0];
    assert_eq!(error["kind"], "schema");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("column \"score\"") && message.contains("JSON string"),
        "{message}"
    );
    assert!(!message.contains("abc-secret"), "{message}");

    // The task's item counts include the schema error.
    let status = s.orch(&["status", "-o", "json", job.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["items"]["ok"], 999, "{report}");
    assert_eq!(report["items"]["failed"], 1, "{report}");

    // Each task's log names the dropped field once.
    let logs = worker_logs(&s);
    assert_eq!(logs.len(), 4, "{logs:?}");
    for (name, log) in &logs {
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("not in spec.output.schema"))
            .collect();
        assert_eq!(warnings.len(), 1, "{name}: {log}");
        assert!(warnings[0].contains("junk"), "{name}: {}", warnings[0]);
    }

    // The final schema in _SUCCESS is the declared one.
    let success: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("out/_SUCCESS")).unwrap()).unwrap();
    let schema: Vec<(String, String, bool)> = success["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
                c["nullable"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, bool)> = [
        ("_item", "uint64", false),
        ("label", "string", true),
        ("score", "float64", false),
        ("id", "int64", true),
        ("meta", "json", true),
        ("missing", "bool", true),
    ]
    .iter()
    .map(|(n, t, z)| (n.to_string(), t.to_string(), *z))
    .collect();
    assert_eq!(schema, want);
}

#[test]
fn row_group_rows_bounds_the_row_groups_of_the_final_parts() {
    if !orch_testkit::components::python_module("pyarrow") {
        return;
    }
    let s = Scratch::new();
    s.jsonl("in.jsonl", 5_000);
    let job = s.write(
        "job.yaml",
        &job_yaml("rowgroups", 2_500, "    rowGroupRows: 1000", ""),
    );
    let out = s.orch(&["run", "--no-progress", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = read_output(&s.path("out"));
    assert_eq!(seen.rows, 5_000);
    let mut groups = Vec::new();
    for part in part_files(&s.path("out")) {
        groups.extend(parquet_file(&part).row_groups);
    }
    assert_eq!(groups.iter().sum::<u64>(), 5_000);
    assert!(groups.iter().all(|&n| n <= 1_000), "{groups:?}");
    assert!(groups.len() >= 5, "{groups:?}");
}

#[test]
fn validate_reports_declared_schema_problems_with_field_paths() {
    let s = Scratch::new();
    s.jsonl("in.jsonl", 1);
    let output = r#"    rowGroupRows: 10
    schema:
      - {name: score, type: float64}
      - {name: score, type: int64}
      - {name: _item, type: int64}
      - {name: n, type: integer}"#;
    let job = s.write("job.yaml", &job_yaml("bad-schema", 10, output, ""));
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    // The schema stage reports first; fix it and the rules stage reports the names.
    assert!(
        all.contains("spec.output.rowGroupRows: must be ≥ 1000, got 10"),
        "{all}"
    );
    assert!(
        all.contains("spec.output.schema[3].type: must be one of"),
        "{all}"
    );
    let output = r#"    schema:
      - {name: score, type: float64}
      - {name: score, type: int64}
      - {name: _item, type: int64}"#;
    let job = s.write("job.yaml", &job_yaml("bad-schema", 10, output, ""));
    let out = s.orch(&["validate", job.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("spec.output.schema[1].name: duplicate column \"score\""),
        "{all}"
    );
    assert!(all.contains("spec.output.schema[2].name:"), "{all}");
}
