//! Aggregation: schema unification, ordering, rolling, empty inputs, error files.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow_array::{
    Array, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use common::{col, dir_names, items, read_parquet, row_group_rows, write_raw};
use orch_data::{
    ColumnSchema, DataError, ItemError, MergeOptions, ResultRow, merge_errors, merge_results,
    read_errors_parquet, sha256_file, write_errors_parquet, write_results_parquet,
};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, rows: &[(u64, Value)]) -> PathBuf {
    let path = dir.join(name);
    let rows: Vec<ResultRow> = rows
        .iter()
        .map(|(item, value)| ResultRow {
            item: *item,
            value: value.clone(),
        })
        .collect();
    write_results_parquet(&path, &rows).unwrap();
    path
}

fn cs(name: &str, ty: &str, nullable: bool) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        r#type: ty.into(),
        nullable,
    }
}

fn strings(a: &StringArray) -> Vec<Option<String>> {
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_owned()))
        .collect()
}

#[test]
fn unifies_schemas_and_keeps_order() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    // a: int | float | int -> float; b: string | missing | int -> string;
    // c: missing | int | string -> string; d: only in the middle file, int.
    let f1 = write(
        &inputs,
        "1.parquet",
        &[
            (0, json!({"a": 1, "b": "x"})),
            (1, json!({"a": 2, "b": "y"})),
        ],
    );
    let f2 = write(
        &inputs,
        "2.parquet",
        &[
            (2, json!({"a": 2.5, "c": 7, "d": 1})),
            (3, json!({"a": 3, "c": 8})),
        ],
    );
    let f3 = write(
        &inputs,
        "3.parquet",
        &[(4, json!({"a": 4, "b": 5, "c": "s"}))],
    );
    let out = tmp.path().join("out");
    let merged = merge_results(&[f1, f2, f3], &out, &MergeOptions::default()).unwrap();

    assert_eq!(merged.rows, 5);
    assert_eq!(
        merged.schema,
        vec![
            cs("_item", "uint64", false),
            cs("a", "float64", true),
            cs("b", "string", true),
            cs("c", "string", true),
            cs("d", "int64", true),
        ]
    );
    assert_eq!(merged.files.len(), 1);
    let (name, info) = &merged.files[0];
    assert_eq!(name, "part-00000.parquet");
    let path = out.join(name);
    assert_eq!(info.rows, 5);
    assert_eq!(
        (info.bytes, info.sha256.clone()),
        sha256_file(&path).unwrap()
    );
    assert_eq!(dir_names(&out), vec!["part-00000.parquet"]);

    let batch = read_parquet(&path);
    assert_eq!(items(&batch), vec![0, 1, 2, 3, 4]);
    let a = col::<Float64Array>(&batch, "a");
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        vec![Some(1.0), Some(2.0), Some(2.5), Some(3.0), Some(4.0)]
    );
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        strings(col::<StringArray>(&batch, "b")),
        vec![s("x"), s("y"), None, None, s("5")]
    );
    assert_eq!(
        strings(col::<StringArray>(&batch, "c")),
        vec![None, None, s("7"), s("8"), s("s")]
    );
    let d = col::<Int64Array>(&batch, "d");
    assert_eq!(
        d.iter().collect::<Vec<_>>(),
        vec![None, None, Some(1), None, None]
    );
}

#[test]
fn bool_with_other_types_becomes_text_and_null_only_columns_take_other_types() {
    let tmp = tempfile::tempdir().unwrap();
    let f1 = write(
        tmp.path(),
        "1.parquet",
        &[(0, json!({"flag": true, "n": null}))],
    );
    let f2 = write(
        tmp.path(),
        "2.parquet",
        &[(1, json!({"flag": 1, "n": null}))],
    );
    let f3 = write(tmp.path(), "3.parquet", &[(2, json!({"n": 1.5}))]);
    let out = tmp.path().join("out");
    let merged = merge_results(&[f1, f2, f3], &out, &MergeOptions::default()).unwrap();
    // `n` is stored as text nulls by the first two tasks, but marked null-only, so the third
    // task's float wins instead of everything turning into text.
    assert_eq!(
        merged.schema,
        vec![
            cs("_item", "uint64", false),
            cs("flag", "string", true),
            cs("n", "float64", true),
        ]
    );
    let batch = read_parquet(&out.join("part-00000.parquet"));
    assert_eq!(
        strings(col::<StringArray>(&batch, "flag")),
        vec![Some("true".into()), Some("1".into()), None]
    );
    assert_eq!(
        col::<Float64Array>(&batch, "n").iter().collect::<Vec<_>>(),
        vec![None, None, Some(1.5)]
    );
}

#[test]
fn null_only_columns_survive_merges_of_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(
        tmp.path(),
        "a.parquet",
        &[(0, json!({"n": null, "s": "x"}))],
    );
    let level1 = tmp.path().join("l1");
    let m1 = merge_results(&[a], &level1, &MergeOptions::default()).unwrap();
    assert_eq!(m1.schema[1], cs("n", "string", true));
    let b = write(tmp.path(), "b.parquet", &[(1, json!({"n": 7}))]);
    let level2 = tmp.path().join("l2");
    let m2 = merge_results(
        &[level1.join("part-00000.parquet"), b],
        &level2,
        &MergeOptions::default(),
    )
    .unwrap();
    assert_eq!(m2.schema[1], cs("n", "int64", true));
    let batch = read_parquet(&level2.join("part-00000.parquet"));
    assert_eq!(
        col::<Int64Array>(&batch, "n").iter().collect::<Vec<_>>(),
        vec![None, Some(7)]
    );
}

#[test]
fn foreign_types_are_widened() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("_item", DataType::UInt64, false),
        Field::new("small", DataType::Int32, false),
        Field::new("f32", DataType::Float32, true),
        Field::new("big", DataType::LargeUtf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from(vec![0, 1])),
            Arc::new(Int32Array::from(vec![-3, 4])),
            Arc::new(Float32Array::from(vec![Some(0.5), None])),
            Arc::new(LargeStringArray::from(vec![Some("p"), Some("q")])),
        ],
    )
    .unwrap();
    let raw = tmp.path().join("raw.parquet");
    write_raw(&raw, schema, &[batch]);
    let ours = write(
        tmp.path(),
        "ours.parquet",
        &[(2, json!({"small": 10, "f32": 2}))],
    );
    let out = tmp.path().join("out");
    let merged = merge_results(&[raw, ours], &out, &MergeOptions::default()).unwrap();
    assert_eq!(
        merged.schema,
        vec![
            cs("_item", "uint64", false),
            cs("small", "int64", true),
            cs("f32", "float64", true),
            cs("big", "string", true),
        ]
    );
    let batch = read_parquet(&out.join("part-00000.parquet"));
    assert_eq!(items(&batch), vec![0, 1, 2]);
    assert_eq!(
        col::<Int64Array>(&batch, "small")
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(-3), Some(4), Some(10)]
    );
    assert_eq!(
        col::<Float64Array>(&batch, "f32")
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(0.5), None, Some(2.0)]
    );
    assert_eq!(
        strings(col::<StringArray>(&batch, "big")),
        vec![Some("p".into()), Some("q".into()), None]
    );
}

#[test]
fn rolls_to_new_files_at_the_size_target() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    let mut next = 0u64;
    for f in 0..6 {
        let rows: Vec<(u64, Value)> = (0..50)
            .map(|_| {
                next += 1;
                (
                    next - 1,
                    json!({"k": next, "text": format!("file {f} row {next}")}),
                )
            })
            .collect();
        inputs.push(write(tmp.path(), &format!("{f}.parquet"), &rows));
    }
    let out = tmp.path().join("out");
    let opts = MergeOptions {
        target_file_bytes: 1,
        row_group_rows: 20,
        ..MergeOptions::default()
    };
    let merged = merge_results(&inputs, &out, &opts).unwrap();

    // Every input is one batch, and every batch fills a 1-byte target.
    assert_eq!(merged.files.len(), 6);
    assert_eq!(merged.rows, 300);
    assert_eq!(merged.files.iter().map(|(_, i)| i.rows).sum::<u64>(), 300);
    let names: Vec<String> = merged.files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        (0..6)
            .map(|i| format!("part-{i:05}.parquet"))
            .collect::<Vec<_>>()
    );
    assert_eq!(dir_names(&out), names);

    let mut all = Vec::new();
    for (name, info) in &merged.files {
        let path = out.join(name);
        let batch = read_parquet(&path);
        assert_eq!(batch.num_rows() as u64, info.rows);
        assert_eq!(sha256_file(&path).unwrap().1, info.sha256);
        // row_group_rows is honoured inside each file.
        assert_eq!(row_group_rows(&path), vec![20, 20, 10]);
        all.extend(items(&batch));
    }
    assert_eq!(all, (0..300).collect::<Vec<_>>());
}

#[test]
fn large_target_keeps_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> = (0..4)
        .map(|f| {
            let rows: Vec<(u64, Value)> = (0..25).map(|i| (f * 25 + i, json!({"i": i}))).collect();
            write(tmp.path(), &format!("{f}.parquet"), &rows)
        })
        .collect();
    let out = tmp.path().join("out");
    let merged = merge_results(&inputs, &out, &MergeOptions::default()).unwrap();
    assert_eq!(merged.files.len(), 1);
    assert_eq!(row_group_rows(&out.join("part-00000.parquet")), vec![100]);
}

#[test]
fn zero_inputs_give_one_item_only_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let merged = merge_results(&[], &out, &MergeOptions::default()).unwrap();
    assert_eq!(merged.rows, 0);
    assert_eq!(merged.schema, vec![cs("_item", "uint64", false)]);
    assert_eq!(merged.files.len(), 1);
    assert_eq!(merged.files[0].0, "part-00000.parquet");
    assert_eq!(merged.files[0].1.rows, 0);
    let batch = read_parquet(&out.join("part-00000.parquet"));
    assert_eq!(batch.num_rows(), 0);
    assert_eq!(batch.schema().fields().len(), 1);
}

#[test]
fn inputs_without_rows_still_contribute_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = write(tmp.path(), "empty.parquet", &[]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("_item", DataType::UInt64, false),
        Field::new("z", DataType::Int64, true),
    ]));
    let typed = tmp.path().join("typed.parquet");
    write_raw(&typed, schema, &[]);
    let out = tmp.path().join("out");
    let merged = merge_results(&[empty, typed], &out, &MergeOptions::default()).unwrap();
    assert_eq!(merged.rows, 0);
    assert_eq!(
        merged.schema,
        vec![cs("_item", "uint64", false), cs("z", "int64", true)]
    );
    assert_eq!(merged.files.len(), 1);
    let batch = read_parquet(&out.join("part-00000.parquet"));
    assert_eq!(batch.num_rows(), 0);
    assert_eq!(batch.schema().field(1).name(), "z");
}

#[test]
fn stale_parts_from_an_earlier_merge_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "1.parquet", &[(0, json!({"a": 1}))]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("part-00003.parquet"), b"old").unwrap();
    std::fs::write(out.join("keep-me.txt"), b"unrelated").unwrap();
    merge_results(&[f], &out, &MergeOptions::default()).unwrap();
    assert_eq!(dir_names(&out), vec!["keep-me.txt", "part-00000.parquet"]);
}

#[test]
fn bad_inputs_are_rejected_and_nothing_is_published() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write(tmp.path(), "good.parquet", &[(0, json!({"a": 1}))]);
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
    let no_item = tmp.path().join("no_item.parquet");
    write_raw(&no_item, schema, &[]);
    let garbage = tmp.path().join("garbage.parquet");
    std::fs::write(&garbage, b"garbage").unwrap();
    let out = tmp.path().join("out");

    let err = merge_results(&[good.clone(), no_item], &out, &MergeOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::InvalidFile { .. }), "{err}");
    let err = merge_results(&[good, garbage], &out, &MergeOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Parquet { .. }), "{err}");
    assert_eq!(err.category(), orch_data::ErrorCategory::Permanent);
    // Footers are checked before any output is created.
    assert!(!out.exists());
}

#[test]
fn merge_errors_concatenates_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let e = |item: u64, kind: &str| ItemError {
        item,
        kind: kind.into(),
        message: format!("item {item} failed"),
        attempts: (item % 4) as u32,
    };
    let a = tmp.path().join("a/errors.parquet");
    let b = tmp.path().join("b/errors.parquet");
    let c = tmp.path().join("c/errors.parquet");
    write_errors_parquet(&a, &[e(1, "permanent"), e(5, "transient")]).unwrap();
    write_errors_parquet(&b, &[]).unwrap();
    write_errors_parquet(&c, &[e(9, "infrastructure")]).unwrap();
    let out = tmp.path().join("out/errors.parquet");
    let info = merge_errors(&[a, b, c], &out).unwrap();
    assert_eq!(info.rows, 3);
    assert_eq!(info.sha256, sha256_file(&out).unwrap().1);
    assert_eq!(
        read_errors_parquet(&out).unwrap(),
        vec![e(1, "permanent"), e(5, "transient"), e(9, "infrastructure")]
    );
    assert_eq!(dir_names(&tmp.path().join("out")), vec!["errors.parquet"]);

    let none = tmp.path().join("none/errors.parquet");
    let info = merge_errors(&[], &none).unwrap();
    assert_eq!(info.rows, 0);
    assert!(read_errors_parquet(&none).unwrap().is_empty());
}
