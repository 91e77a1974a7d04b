//! Property: whatever rows tasks produce and however the merge cuts its output, every input
//! row comes out exactly once, in order, with the same values present.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use arrow_array::Array;
use common::{items, read_parquet};
use orch_data::{
    MergeOptions, ResultRow, ResultRows, merge_results, write_result_rows, write_results_parquet,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(|u| json!(u)),
        (-1e9..1e9f64).prop_map(|f| json!(f)),
        "[a-z ]{0,8}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(|v| json!(v)),
    ]
}

fn result_value() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec!["a", "b", "c", "value", "ñ"]);
    prop_oneof![
        8 => prop::collection::btree_map(key, scalar(), 0..5).prop_map(|m| {
            Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
        }),
        2 => scalar(),
    ]
}

/// Non-null values each column should end up with, by output column name.
fn expected_non_null(rows: &[ResultRow]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        match &row.value {
            Value::Object(m) => {
                for (k, v) in m {
                    *counts.entry(k.clone()).or_insert(0) += usize::from(!v.is_null());
                }
            }
            v => *counts.entry("value".to_owned()).or_insert(0) += usize::from(!v.is_null()),
        }
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A worker builds its rows straight from the results' JSON text (compact or not); the file
    /// must be the one the same results parsed as `Value`s give.
    #[test]
    fn rows_from_json_text_are_rows_from_values(
        results in prop::collection::vec(
            prop_oneof![
                4 => result_value(),
                1 => prop::collection::vec(result_value(), 0..3).prop_map(Value::Array),
            ],
            1..40,
        ),
        pretty in any::<bool>(),
    ) {
        let texts: Vec<String> = results
            .iter()
            .map(|v| if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) })
            .collect::<Result<_, _>>()
            .unwrap();
        let mut values = Vec::new();
        let mut cells = ResultRows::new();
        for (item, (value, text)) in results.iter().zip(&texts).enumerate() {
            let item = item as u64;
            match value {
                Value::Array(elements) => values.extend(
                    elements.iter().map(|value| ResultRow { item, value: value.clone() }),
                ),
                value => values.push(ResultRow { item, value: value.clone() }),
            }
            cells.push_json(item, text).unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a.parquet"), tmp.path().join("b.parquet"));
        let want = write_results_parquet(&a, &values).unwrap();
        let got = write_result_rows(&b, &cells).unwrap();
        prop_assert_eq!(got.rows, want.rows);
        let (want, got) = (read_parquet(&a), read_parquet(&b));
        prop_assert_eq!(got.schema(), want.schema());
        prop_assert_eq!(got, want);
    }

    #[test]
    fn merge_preserves_every_item(
        rows in prop::collection::vec((0u64..40, result_value()), 0..80),
        cuts in prop::collection::vec(0usize..80, 0..5),
        target in prop_oneof![1u64..4096, Just(128u64 << 20)],
        row_group_rows in 1usize..30,
    ) {
        let rows: Vec<ResultRow> = rows
            .into_iter()
            .map(|(item, value)| ResultRow { item, value })
            .collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(rows.len())).collect();
        cuts.push(0);
        cuts.push(rows.len());
        cuts.sort_unstable();

        let tmp = tempfile::tempdir().unwrap();
        let mut inputs = Vec::new();
        for (i, w) in cuts.windows(2).enumerate() {
            let path = tmp.path().join(format!("task-{i}/part.parquet"));
            let info = write_results_parquet(&path, &rows[w[0]..w[1]]).unwrap();
            prop_assert_eq!(info.rows as usize, w[1] - w[0]);
            inputs.push(path);
        }

        let out = tmp.path().join("out");
        let opts = MergeOptions { target_file_bytes: target, row_group_rows, ..MergeOptions::default() };
        let merged = merge_results(&inputs, &out, &opts).unwrap();
        prop_assert_eq!(merged.rows as usize, rows.len());
        prop_assert!(!merged.files.is_empty());

        let mut got_items = Vec::new();
        let mut got_non_null: BTreeMap<String, usize> = BTreeMap::new();
        for (name, info) in &merged.files {
            let batch = read_parquet(&out.join(name));
            prop_assert_eq!(batch.num_rows() as u64, info.rows);
            got_items.extend(items(&batch));
            let schema = batch.schema();
            for (field, column) in schema.fields().iter().zip(batch.columns()).skip(1) {
                *got_non_null.entry(field.name().clone()).or_insert(0) +=
                    column.len() - column.null_count();
            }
        }
        let want_items: Vec<u64> = rows.iter().map(|r| r.item).collect();
        prop_assert_eq!(got_items, want_items);
        prop_assert_eq!(got_non_null, expected_non_null(&rows));
    }
}
