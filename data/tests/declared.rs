//! Declared output schema: conversion rules, the task file written under it (failures left out
//! and reported), and the merge keeping exactly the declared schema.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow_schema::DataType;
use common::{col, items, read_parquet, row_group_rows};
use orch_core::spec::{ColumnType, OutputColumn, OutputSpec, Quantity};
use orch_data::declared::{Converted, convert};
use orch_data::{
    ColumnSchema, DataError, DeclaredSchema, MergeOptions, ResultRow, SCHEMA_ERROR_KIND,
    merge_results, write_results_parquet, write_results_parquet_declared,
};
use serde_json::{Value, json};

fn column(name: &str, ty: ColumnType, nullable: bool) -> OutputColumn {
    OutputColumn {
        name: name.into(),
        r#type: ty,
        nullable,
    }
}

fn rows(values: &[(u64, Value)]) -> Vec<ResultRow> {
    values
        .iter()
        .map(|(item, value)| ResultRow {
            item: *item,
            value: value.clone(),
        })
        .collect()
}

/// label string, score float64 (required), n int64, ok bool, extra json.
fn schema() -> DeclaredSchema {
    DeclaredSchema::new(&[
        column("label", ColumnType::String, true),
        column("score", ColumnType::Float64, false),
        column("n", ColumnType::Int64, true),
        column("ok", ColumnType::Bool, true),
        column("extra", ColumnType::Json, true),
    ])
    .unwrap()
}

#[test]
fn conversion_rules() {
    use ColumnType::*;
    let ok = |v: Value, ty: ColumnType| -> std::string::String {
        match convert(&v, ty) {
            Ok(c) => format!("{c:?}"),
            Err(m) => panic!("{v} as {ty} failed: {m}"),
        }
    };
    // int64: integers, integral floats, integer strings.
    assert_eq!(ok(json!(7), Int64), "Int(7)");
    assert_eq!(ok(json!(-3.0), Int64), "Int(-3)");
    assert_eq!(ok(json!("42"), Int64), "Int(42)");
    assert_eq!(ok(json!(i64::MAX), Int64), "Int(9223372036854775807)");
    // float64: any number, numeric strings.
    assert_eq!(ok(json!(2), Float64), "Float(2.0)");
    assert_eq!(ok(json!(2.5), Float64), "Float(2.5)");
    assert_eq!(ok(json!("1e3"), Float64), "Float(1000.0)");
    // bool: booleans and their two strings.
    assert_eq!(ok(json!(true), Bool), "Bool(true)");
    assert_eq!(ok(json!("false"), Bool), "Bool(false)");
    // string: strings as they are, numbers and booleans as JSON text.
    assert_eq!(convert(&json!("x"), String), Ok(Converted::Str("x")));
    let five = json!(5);
    assert_eq!(
        convert(&five, String).map(|c| c.to_string()),
        Ok("5".into())
    );
    assert_eq!(
        convert(&json!(false), String).map(|c| c.to_string()),
        Ok("false".into())
    );
    // json: any value as compact JSON text; a string keeps its quotes.
    for (v, text) in [
        (json!({"a": [1, 2]}), r#"{"a":[1,2]}"#),
        (json!("abc"), r#""abc""#),
        (json!(1.5), "1.5"),
    ] {
        assert_eq!(convert(&v, Json).map(|c| c.to_string()), Ok(text.into()));
    }
    // null is null for every type.
    for ty in [String, Int64, Float64, Bool, Json] {
        assert_eq!(convert(&Value::Null, ty), Ok(Converted::Null));
    }

    let fails = |v: Value, ty: ColumnType| -> std::string::String {
        match convert(&v, ty) {
            Ok(c) => panic!("{v} as {ty} converted to {c:?}"),
            Err(m) => m.to_string(),
        }
    };
    assert_eq!(
        fails(json!("abc"), Int64),
        "cannot convert a JSON string to int64 (not an integer)"
    );
    assert_eq!(
        fails(json!(2.5), Int64),
        "cannot convert a JSON number to int64 (it has a fraction)"
    );
    assert_eq!(
        fails(json!(u64::MAX), Int64),
        "cannot convert a JSON number to int64 (out of the int64 range)"
    );
    assert_eq!(
        fails(json!(1e19), Int64),
        "cannot convert a JSON number to int64 (out of the int64 range)"
    );
    assert_eq!(
        fails(json!(true), Int64),
        "cannot convert a JSON boolean to int64"
    );
    assert_eq!(
        fails(json!("3.0"), Int64),
        "cannot convert a JSON string to int64 (not an integer)"
    );
    assert_eq!(
        fails(json!([1]), Float64),
        "cannot convert a JSON array to float64"
    );
    assert_eq!(
        fails(json!("NaN"), Float64),
        "cannot convert a JSON string to float64 (not a finite number)"
    );
    assert_eq!(
        fails(json!(1), Bool),
        "cannot convert a JSON number to bool"
    );
    assert!(fails(json!("yes"), Bool).starts_with("cannot convert a JSON string to bool"));
    assert!(
        fails(json!({"a": 1}), String)
            .starts_with("cannot convert a JSON object to string (declare the column as json")
    );
}

#[test]
fn file_has_exactly_the_declared_columns_and_failures_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("part.parquet");
    let secret = "s3cr3t-value-that-must-not-leak";
    let input = rows(&[
        // Fine; `z` and `a` are not declared; `n` comes as an integral float.
        (
            0,
            json!({"z": 1, "score": 1, "label": "x", "n": 3.0, "a": true}),
        ),
        // `n` has a fraction.
        (1, json!({"score": 0.5, "n": 1.5})),
        // Missing nullable fields are null; `extra` keeps nested JSON.
        (2, json!({"score": "2.25", "extra": {"k": [1, null]}})),
        // Required `score` missing.
        (3, json!({"label": "no score"})),
        // Required `score` null.
        (4, json!({"score": null})),
        // Two rows of one item: the second does not fit, so neither is kept.
        (5, json!({"score": 1})),
        (5, json!({"score": secret})),
        // A non-object result is the field `value`, which is not declared.
        (6, json!(17)),
        // Label from a number, ok from a string.
        (7, json!({"score": -1, "label": 12, "ok": "true"})),
    ]);
    let w = write_results_parquet_declared(&path, &input, &schema()).unwrap();

    let failed: Vec<(u64, &str)> = w
        .failures
        .iter()
        .map(|f| (f.item, f.column.as_str()))
        .collect();
    assert_eq!(
        failed,
        vec![
            (1, "n"),
            (3, "score"),
            (4, "score"),
            (5, "score"),
            (6, "score")
        ]
    );
    let messages: Vec<&str> = w.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(
        messages[0],
        "column \"n\": cannot convert a JSON number to int64 (it has a fraction)"
    );
    assert_eq!(
        messages[1],
        "column \"score\" is declared nullable: false but the result has no such field"
    );
    assert_eq!(
        messages[2],
        "column \"score\" is declared nullable: false but its value is null"
    );
    assert_eq!(
        messages[3],
        "column \"score\": cannot convert a JSON string to float64 (not a finite number)"
    );
    assert!(messages.iter().all(|m| !m.contains(secret)));
    let e = w.failures[0].clone().into_item_error();
    assert_eq!(
        (e.item, e.kind.as_str(), e.attempts),
        (1, SCHEMA_ERROR_KIND, 1)
    );
    assert_eq!(w.dropped_fields, vec!["z", "a", "value"]);

    let batch = read_parquet(&path);
    assert_eq!(w.file.rows, 3);
    assert_eq!(items(&batch), vec![0, 2, 7]);
    let fields: Vec<(String, DataType, bool)> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("_item".into(), DataType::UInt64, false),
            ("label".into(), DataType::Utf8, true),
            ("score".into(), DataType::Float64, false),
            ("n".into(), DataType::Int64, true),
            ("ok".into(), DataType::Boolean, true),
            ("extra".into(), DataType::Utf8, true),
        ]
    );
    let label = col::<StringArray>(&batch, "label");
    assert_eq!(
        (0..3)
            .map(|i| label.is_valid(i).then(|| label.value(i)))
            .collect::<Vec<_>>(),
        vec![Some("x"), None, Some("12")]
    );
    assert_eq!(
        col::<Float64Array>(&batch, "score").values().to_vec(),
        vec![1.0, 2.25, -1.0]
    );
    let n = col::<Int64Array>(&batch, "n");
    assert_eq!((n.value(0), n.is_null(1), n.is_null(2)), (3, true, true));
    let ok = col::<BooleanArray>(&batch, "ok");
    assert_eq!((ok.is_null(0), ok.value(2)), (true, true));
    let extra = col::<StringArray>(&batch, "extra");
    assert_eq!(extra.value(1), r#"{"k":[1,null]}"#);
    assert_eq!(
        batch
            .schema()
            .field(5)
            .metadata()
            .get("orch:type")
            .map(String::as_str),
        Some("json")
    );
}

#[test]
fn no_rows_still_give_the_declared_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("part.parquet");
    let w = write_results_parquet_declared(&path, &[], &schema()).unwrap();
    assert_eq!(w.file.rows, 0);
    assert!(w.failures.is_empty());
    let batch = read_parquet(&path);
    let schema = batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["_item", "label", "score", "n", "ok", "extra"]);
}

#[test]
fn declared_schemas_refuse_reserved_and_duplicate_names() {
    for (columns, field) in [
        (
            vec![
                column("a", ColumnType::Int64, true),
                column("a", ColumnType::Bool, true),
            ],
            "spec.output.schema[1].name",
        ),
        (
            vec![column("_item", ColumnType::Int64, true)],
            "spec.output.schema[0].name",
        ),
        (
            vec![column("", ColumnType::Int64, true)],
            "spec.output.schema[0].name",
        ),
    ] {
        match DeclaredSchema::new(&columns) {
            Err(DataError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }
}

fn write_declared(dir: &Path, name: &str, values: &[(u64, Value)], s: &DeclaredSchema) -> PathBuf {
    let path = dir.join(name);
    let w = write_results_parquet_declared(&path, &rows(values), s).unwrap();
    assert!(w.failures.is_empty(), "{:?}", w.failures);
    path
}

fn output_spec(columns: Vec<OutputColumn>, row_group_rows: u64) -> OutputSpec {
    OutputSpec {
        schema: Some(columns),
        row_group_rows,
        target_file_size: Quantity::from("1Gi"),
        ..OutputSpec::default()
    }
}

#[test]
fn merge_keeps_the_declared_schema_without_widening() {
    let tmp = tempfile::tempdir().unwrap();
    let columns = vec![
        column("score", ColumnType::Float64, false),
        column("n", ColumnType::Int64, true),
        column("tags", ColumnType::Json, true),
    ];
    let opts = MergeOptions::from_output_spec(&output_spec(columns.clone(), 1000)).unwrap();
    let declared = opts.schema.clone().unwrap();
    assert_eq!(opts.row_group_rows, 1000);
    assert_eq!(opts.target_file_bytes, 1 << 30);

    // Inferred, these would widen: `score` int in one task and float in the other, `n` null
    // throughout the first (inferred as null-only text), `tags` a list then a string.
    let a = write_declared(
        tmp.path(),
        "a.parquet",
        &(0..3000u64)
            .map(|i| (i, json!({"score": i, "tags": ["x"]})))
            .collect::<Vec<_>>(),
        &declared,
    );
    let b = write_declared(
        tmp.path(),
        "b.parquet",
        &[(3000, json!({"score": 0.5, "n": 7, "tags": "t"}))],
        &declared,
    );
    let empty = write_declared(tmp.path(), "c.parquet", &[], &declared);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let merged = merge_results(&[a.clone(), empty, b], &out, &opts).unwrap();

    let cs = |name: &str, ty: &str, nullable: bool| ColumnSchema {
        name: name.into(),
        r#type: ty.into(),
        nullable,
    };
    let want = vec![
        cs("_item", "uint64", false),
        cs("score", "float64", false),
        cs("n", "int64", true),
        cs("tags", "json", true),
    ];
    assert_eq!(merged.schema, want);
    assert_eq!(declared.column_schemas(), want);
    assert_eq!(merged.rows, 3001);
    let [(name, _)] = merged.files.as_slice() else {
        panic!("{:?}", merged.files)
    };
    let part = out.join(name);
    let groups = row_group_rows(&part);
    assert_eq!(groups.iter().sum::<i64>(), 3001);
    assert!(groups.iter().all(|&n| n <= 1000), "{groups:?}");
    let batch = read_parquet(&part);
    assert_eq!(batch.schema().as_ref(), declared.arrow_schema().as_ref());
    assert_eq!(items(&batch), (0..3001).collect::<Vec<_>>());
    assert_eq!(col::<Int64Array>(&batch, "n").value(3000), 7);
    assert_eq!(col::<StringArray>(&batch, "tags").value(0), r#"["x"]"#);
    assert_eq!(col::<StringArray>(&batch, "tags").value(3000), r#""t""#);

    // A file written by inference (here `score` as int64, `n` missing) is refused, not widened.
    let inferred = tmp.path().join("inferred.parquet");
    write_results_parquet(&inferred, &rows(&[(9, json!({"score": 1, "tags": "[]"}))])).unwrap();
    match merge_results(&[a, inferred], &out, &opts) {
        Err(DataError::SchemaConflict { column, detail, .. }) => {
            assert_eq!(column, "score");
            assert!(detail.contains("declared as float64"), "{detail}");
        }
        other => panic!("expected a schema conflict, got {other:?}"),
    }
}

#[test]
fn options_from_the_output_spec() {
    let default = MergeOptions::from_output_spec(&OutputSpec::default()).unwrap();
    assert_eq!(default, MergeOptions::default());
    assert_eq!(default.row_group_rows, orch_data::DEFAULT_ROW_GROUP_ROWS);
    assert_eq!(default.row_group_rows, 1_000_000);

    let spec = OutputSpec {
        row_group_rows: 999,
        ..OutputSpec::default()
    };
    match MergeOptions::from_output_spec(&spec) {
        Err(e @ DataError::InvalidSpec { .. }) => {
            assert_eq!(
                e.to_string(),
                "spec.output.rowGroupRows: must be ≥ 1000, got 999"
            );
        }
        other => panic!("{other:?}"),
    }
    let spec = OutputSpec {
        target_file_size: Quantity::from("lots"),
        ..OutputSpec::default()
    };
    assert!(matches!(
        MergeOptions::from_output_spec(&spec),
        Err(DataError::InvalidSpec { field, .. }) if field == "spec.output.targetFileSize"
    ));
}

#[test]
fn merge_refuses_nulls_in_a_required_column() {
    use arrow_array::{ArrayRef, RecordBatch, UInt64Array};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let opts = MergeOptions::from_output_spec(&output_spec(
        vec![column("score", ColumnType::Float64, false)],
        1000,
    ))
    .unwrap();
    // Same types as declared, but nullable and holding a null: not something the worker
    // writes, and the merge must not let it through as a null in a non-nullable column.
    let schema = Arc::new(Schema::new(vec![
        Field::new("_item", DataType::UInt64, false),
        Field::new("score", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![0, 1])),
        Arc::new(Float64Array::from(vec![Some(1.0), None])),
    ];
    let path = tmp.path().join("raw.parquet");
    common::write_raw(
        &path,
        schema.clone(),
        &[RecordBatch::try_new(schema, columns).unwrap()],
    );
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let err = merge_results(&[path], &out, &opts).unwrap_err();
    assert!(err.to_string().contains("non-nullable"), "{err}");
}
