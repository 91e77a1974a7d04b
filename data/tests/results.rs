//! Per-task files: result inference round trips, checksums, atomicity, error files.
#![allow(clippy::unwrap_used)]

mod common;

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow_schema::DataType;
use common::{col, dir_names, items, read_parquet, row_group_rows};
use orch_data::schema::NULL_ONLY_METADATA_KEY;
use orch_data::{
    DataError, ErrorCategory, ItemError, ResultRow, read_errors_parquet, sha256_file, verify_file,
    write_errors_parquet, write_results_parquet,
};
use serde_json::json;

fn row(item: u64, value: serde_json::Value) -> ResultRow {
    ResultRow { item, value }
}

fn strings(a: &StringArray) -> Vec<Option<&str>> {
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect()
}

#[test]
fn mixed_types_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results/0001/0/part.parquet");
    let rows = vec![
        row(
            10,
            json!({"a": 1, "b": 1, "c": "x", "d": {"k": [1, 2]}, "e": null, "f": true}),
        ),
        row(
            11,
            json!({"a": 2, "b": 2.5, "c": 3, "d": [1, "two"], "f": false}),
        ),
        row(12, json!(42)),
        row(13, json!({"a": null, "c": true, "g": u64::MAX})),
        row(14, json!("scalar")),
        row(15, json!([1, 2])),
    ];
    let info = write_results_parquet(&path, &rows).unwrap();
    assert_eq!(info.rows, 6);

    let batch = read_parquet(&path);
    let schema = batch.schema();
    let described: Vec<(String, DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(
        described,
        vec![
            ("_item".into(), DataType::UInt64, false),
            ("a".into(), DataType::Int64, true),
            ("b".into(), DataType::Float64, true),
            ("c".into(), DataType::Utf8, true),
            ("d".into(), DataType::Utf8, true),
            ("e".into(), DataType::Utf8, true),
            ("f".into(), DataType::Boolean, true),
            ("value".into(), DataType::Utf8, true),
            ("g".into(), DataType::Float64, true),
        ]
    );
    assert_eq!(items(&batch), vec![10, 11, 12, 13, 14, 15]);

    let a = col::<Int64Array>(&batch, "a");
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        vec![Some(1), Some(2), None, None, None, None]
    );
    // int + float widens to float.
    let b = col::<Float64Array>(&batch, "b");
    assert_eq!(
        b.iter().collect::<Vec<_>>(),
        vec![Some(1.0), Some(2.5), None, None, None, None]
    );
    // string + int + bool: strings as-is, the rest as JSON text.
    assert_eq!(
        strings(col::<StringArray>(&batch, "c")),
        vec![Some("x"), Some("3"), None, Some("true"), None, None]
    );
    // nested values as compact JSON text.
    assert_eq!(
        strings(col::<StringArray>(&batch, "d")),
        vec![
            Some(r#"{"k":[1,2]}"#),
            Some(r#"[1,"two"]"#),
            None,
            None,
            None,
            None
        ]
    );
    // null-only column: string nulls, marked as untyped for the merge.
    assert_eq!(col::<StringArray>(&batch, "e").null_count(), 6);
    assert_eq!(
        schema
            .field_with_name("e")
            .unwrap()
            .metadata()
            .get(NULL_ONLY_METADATA_KEY),
        Some(&"true".to_string())
    );
    assert!(schema.field_with_name("c").unwrap().metadata().is_empty());
    let f = col::<BooleanArray>(&batch, "f");
    assert_eq!(
        f.iter().collect::<Vec<_>>(),
        vec![Some(true), Some(false), None, None, None, None]
    );
    // non-object results share one `value` column; int + string + array => string.
    assert_eq!(
        strings(col::<StringArray>(&batch, "value")),
        vec![None, None, Some("42"), None, Some("scalar"), Some("[1,2]")]
    );
    // u64 above i64::MAX becomes float.
    let g = col::<Float64Array>(&batch, "g");
    assert_eq!(g.value(3), u64::MAX as f64);
    assert_eq!(g.null_count(), 5);
}

#[test]
fn unusual_keys_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    let rows = vec![
        row(0, json!({"": 1, "a.b": "dot", "ñ ü": true, "value": 2})),
        row(1, json!(3)),
    ];
    write_results_parquet(&path, &rows).unwrap();
    let batch = read_parquet(&path);
    assert_eq!(col::<Int64Array>(&batch, "").value(0), 1);
    assert_eq!(col::<StringArray>(&batch, "a.b").value(0), "dot");
    assert!(col::<BooleanArray>(&batch, "ñ ü").value(0));
    // An object key `value` and a non-object result share the column.
    let v = col::<Int64Array>(&batch, "value");
    assert_eq!(v.iter().collect::<Vec<_>>(), vec![Some(2), Some(3)]);
}

#[test]
fn file_info_matches_file_and_no_temporaries_remain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    let rows: Vec<ResultRow> = (0..1000)
        .map(|i| row(i, json!({"n": i, "s": format!("row {i}")})))
        .collect();
    let info = write_results_parquet(&path, &rows).unwrap();
    let (bytes, sha) = sha256_file(&path).unwrap();
    assert_eq!(info.bytes, bytes);
    assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(info.sha256, sha);
    assert_eq!(info.sha256.len(), 64);
    assert!(
        info.sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(info.rows, 1000);
    verify_file(&path, &info).unwrap();
    assert_eq!(dir_names(dir.path()), vec!["part.parquet"]);

    // Rewriting replaces the file atomically, again leaving nothing else behind.
    let info2 = write_results_parquet(&path, &rows[..10]).unwrap();
    assert_eq!(info2.rows, 10);
    assert_ne!(info2.sha256, info.sha256);
    assert_eq!(dir_names(dir.path()), vec!["part.parquet"]);
    assert_eq!(read_parquet(&path).num_rows(), 10);
}

#[test]
fn zero_rows_give_item_only_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    let info = write_results_parquet(&path, &[]).unwrap();
    assert_eq!(info.rows, 0);
    let batch = read_parquet(&path);
    assert_eq!(batch.num_rows(), 0);
    assert_eq!(batch.schema().fields().len(), 1);
    assert_eq!(batch.schema().field(0).name(), "_item");
}

#[test]
fn reserved_item_key_is_rejected_without_leaving_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    let rows = vec![row(0, json!({"x": 1})), row(7, json!({"_item": 3}))];
    let err = write_results_parquet(&path, &rows).unwrap_err();
    match &err {
        DataError::ReservedColumn { item, column } => {
            assert_eq!(*item, 7);
            assert_eq!(column, "_item");
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(err.category(), ErrorCategory::Permanent);
    assert!(dir_names(dir.path()).is_empty());
}

#[test]
fn columns_first_seen_late_are_null_filled_across_chunks() {
    // More rows than one internal build chunk (64Ki), with a key that only the last row has
    // and a type change (int -> float) far from the start.
    let n = 140_000u64;
    let rows: Vec<ResultRow> = (0..n)
        .map(|i| match i {
            i if i == n - 1 => row(i, json!({"x": i, "late": "yes"})),
            100_000 => row(i, json!({"x": 0.5})),
            i => row(i, json!({"x": i})),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    let info = write_results_parquet(&path, &rows).unwrap();
    assert_eq!(info.rows, n);
    let batch = read_parquet(&path);
    assert_eq!(items(&batch), (0..n).collect::<Vec<_>>());
    let x = col::<Float64Array>(&batch, "x");
    assert_eq!(x.null_count(), 0);
    assert_eq!(x.value(100_000), 0.5);
    assert_eq!(x.value(99_999), 99_999.0);
    let late = col::<StringArray>(&batch, "late");
    assert_eq!(late.null_count() as u64, n - 1);
    assert_eq!(late.value((n - 1) as usize), "yes");
    // Well under the 1M-row limit: one row group.
    assert_eq!(row_group_rows(&path), vec![n as i64]);
}

#[test]
fn errors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errors.parquet");
    let errors = vec![
        ItemError {
            item: 3,
            kind: "permanent".into(),
            message: "bad input: ünïcødé".into(),
            attempts: 1,
        },
        ItemError {
            item: 9,
            kind: "transient".into(),
            message: String::new(),
            attempts: 3,
        },
    ];
    let info = write_errors_parquet(&path, &errors).unwrap();
    assert_eq!(info.rows, 2);
    assert_eq!(info.sha256, sha256_file(&path).unwrap().1);
    assert_eq!(read_errors_parquet(&path).unwrap(), errors);

    let batch = read_parquet(&path);
    let types: Vec<DataType> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        vec![
            DataType::UInt64,
            DataType::Utf8,
            DataType::Utf8,
            DataType::UInt32
        ]
    );
    assert_eq!(dir_names(dir.path()), vec!["errors.parquet"]);
}

#[test]
fn empty_errors_file_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errors.parquet");
    let info = write_errors_parquet(&path, &[]).unwrap();
    assert_eq!(info.rows, 0);
    assert!(read_errors_parquet(&path).unwrap().is_empty());
    let batch = read_parquet(&path);
    assert_eq!(batch.schema().fields().len(), 4);
}

#[test]
fn reading_a_results_file_as_errors_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    write_results_parquet(&path, &[row(0, json!({"a": 1}))]).unwrap();
    let err = read_errors_parquet(&path).unwrap_err();
    assert!(matches!(err, DataError::InvalidFile { .. }), "{err}");
    assert_eq!(err.category(), ErrorCategory::Permanent);
}

#[test]
fn corrupt_file_is_a_permanent_parquet_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errors.parquet");
    std::fs::write(&path, b"definitely not parquet").unwrap();
    let err = read_errors_parquet(&path).unwrap_err();
    assert!(matches!(err, DataError::Parquet { .. }), "{err}");
    assert_eq!(err.category(), ErrorCategory::Permanent);
}
