//! Extra output formats, read back independently: SQLite, JSON lines and CSV through Python's
//! standard library (`sqlite3`, `json`, `csv`), not through the code that wrote them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Date32Array, Float32Array, Int32Array, LargeStringArray, RecordBatch, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use common::{dir_names, write_raw};
use orch_data::{
    ExtraFormat, FileInfo, ItemError, MergeOptions, ResultRow, merge_results, sha256_file,
    write_errors_parquet, write_format, write_results_parquet,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

fn write_task(dir: &Path, name: &str, rows: &[(u64, Value)]) -> PathBuf {
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

/// Merges task files into final parts in `out`, one part per task file.
fn merge(out: &Path, tasks: &[PathBuf]) -> Vec<PathBuf> {
    let opts = MergeOptions {
        target_file_bytes: 1,
        ..MergeOptions::default()
    };
    let merged = merge_results(tasks, out, &opts).unwrap();
    merged
        .files
        .iter()
        .map(|(name, _)| out.join(name))
        .collect()
}

/// Runs a Python script with the given arguments and parses what it prints as JSON.
fn python(script: &str, args: &[&Path]) -> Value {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed to read the outputs back independently");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What Python's `sqlite3` sees: columns, indexes, meta, and every row of both tables with
/// the storage class of each value.
const READ_SQLITE: &str = r#"
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
q = lambda name: '"' + name.replace('"', '""') + '"'
info = list(con.execute('PRAGMA table_info(results)'))
cols = [r[1] for r in info]
out = {
    'integrity': con.execute('PRAGMA integrity_check').fetchone()[0],
    'tables': sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")),
    'columns': [[r[1], r[2], r[3]] for r in info],
    'errors_columns': [[r[1], r[2], r[3]] for r in con.execute('PRAGMA table_info(errors)')],
    'count': con.execute('SELECT count(*) FROM results').fetchone()[0],
    'rows': [list(r) for r in con.execute('SELECT * FROM results ORDER BY rowid')],
    'types': [list(r) for r in con.execute(
        'SELECT ' + ', '.join('typeof(' + q(c) + ')' for c in cols) + ' FROM results ORDER BY rowid')],
    'errors': [list(r) for r in con.execute('SELECT * FROM errors ORDER BY rowid')],
    'meta': dict(con.execute('SELECT key, value FROM orch_meta')),
    'indexes': {},
}
for t in ('results', 'errors'):
    for idx in con.execute('PRAGMA index_list(' + t + ')'):
        out['indexes'][idx[1]] = [t] + [r[2] for r in con.execute('PRAGMA index_info(' + q(idx[1]) + ')')]
plan = con.execute('EXPLAIN QUERY PLAN SELECT * FROM results WHERE _item = 3').fetchall()
out['plan'] = ' '.join(r[-1] for r in plan)
print(json.dumps(out))
"#;

/// Every line of a JSON-lines file as `[[key, value], ...]` plus the Python type of each value.
const READ_JSONL: &str = r#"
import json, sys
with open(sys.argv[1], 'rb') as f:
    data = f.read()
lines = data.decode('utf-8').split('\n')
assert lines[-1] == '', 'file must end with a newline or be empty'
objs = [json.loads(l) for l in lines[:-1]]
print(json.dumps({
    'pairs': [list(o.items()) for o in objs],
    'types': [[type(v).__name__ for v in o.values()] for o in objs],
}))
"#;

/// Every record of a CSV file, as Python's `csv` module parses it.
const READ_CSV: &str = r#"
import csv, json, sys
with open(sys.argv[1], newline='', encoding='utf-8') as f:
    print(json.dumps(list(csv.reader(f))))
"#;

fn assert_file_info(path: &Path, info: &FileInfo, rows: u64) {
    let (bytes, sha256) = sha256_file(path).unwrap();
    assert_eq!(info.bytes, bytes, "{}", path.display());
    assert_eq!(info.sha256, sha256, "{}", path.display());
    assert_eq!(info.rows, rows, "{}", path.display());
}

fn write_all_formats(parts: &[PathBuf], errors: &Path, out: &Path, rows: u64) {
    for format in ExtraFormat::ALL {
        let (name, info) = write_format(format, parts, errors, out).unwrap();
        assert_eq!(name, format.file_name());
        assert_file_info(&out.join(&name), &info, rows);
    }
}

fn temporaries(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The main fixture: mixed types, nulls, awkward names and text, two parts.

const WEIRD: &str = "we\"ird col";
const COLUMNS: [&str; 8] = ["_item", "n", "f", "b", "s", WEIRD, "nested", "uni"];
const MULTILINE: &str = "comma, \"quoted\"\nnew line\r\nand crlf";
const UNICODE: &str = "héllo ✓ 日本 🎉";

/// Writes the fixture's final output (two parts and `errors.parquet`) into `out`; returns the
/// parts, the errors file, and the expected rows (JSON values in column order).
fn fixture(tmp: &Path, out: &Path) -> (Vec<PathBuf>, PathBuf, Vec<Vec<Value>>) {
    let t1 = write_task(
        tmp,
        "t1.parquet",
        &[
            (
                0,
                json!({"n": 1, "f": 1.5, "b": true, "s": "plain", WEIRD: "q",
                       "nested": {"k": [1, 2]}, "uni": UNICODE}),
            ),
            (
                1,
                json!({"n": null, "f": 2, "b": false, "s": MULTILINE, WEIRD: null,
                       "nested": [1, "x"], "uni": ""}),
            ),
            (2, json!({"n": i64::MIN, "f": 1e300, "s": "", "uni": null})),
        ],
    );
    let t2 = write_task(
        tmp,
        "t2.parquet",
        &[
            (
                3,
                json!({"n": i64::MAX, "f": -0.25, "b": true, "s": "  spaced  ", WEIRD: "x,y",
                       "nested": {}, "uni": "tab\there"}),
            ),
            (4, json!({"n": 7, "s": "123"})),
        ],
    );
    let parts = merge(out, &[t1, t2]);
    assert_eq!(parts.len(), 2);
    let errors = out.join("errors.parquet");
    write_errors_parquet(
        &errors,
        &[
            ItemError {
                item: 5,
                kind: "permanent".into(),
                message: "bad \"input\"\nline 2".into(),
                attempts: 3,
            },
            ItemError {
                item: 6,
                kind: "transient".into(),
                message: "timeout".into(),
                attempts: 1,
            },
        ],
    )
    .unwrap();
    let expected = vec![
        vec![
            json!(0),
            json!(1),
            json!(1.5),
            json!(true),
            json!("plain"),
            json!("q"),
            json!(r#"{"k":[1,2]}"#),
            json!(UNICODE),
        ],
        vec![
            json!(1),
            Value::Null,
            json!(2.0),
            json!(false),
            json!(MULTILINE),
            Value::Null,
            json!(r#"[1,"x"]"#),
            json!(""),
        ],
        vec![
            json!(2),
            json!(i64::MIN),
            json!(1e300),
            Value::Null,
            json!(""),
            Value::Null,
            Value::Null,
            Value::Null,
        ],
        vec![
            json!(3),
            json!(i64::MAX),
            json!(-0.25),
            json!(true),
            json!("  spaced  "),
            json!("x,y"),
            json!("{}"),
            json!("tab\there"),
        ],
        vec![
            json!(4),
            json!(7),
            Value::Null,
            Value::Null,
            json!("123"),
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    ];
    (parts, errors, expected)
}

#[test]
fn all_formats_hold_every_row_and_leave_no_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (parts, errors, expected) = fixture(tmp.path(), &out);
    write_all_formats(&parts, &errors, &out, expected.len() as u64);
    assert_eq!(
        dir_names(&out),
        [
            "errors.parquet",
            "output.csv",
            "output.jsonl",
            "output.sqlite",
            "part-00000.parquet",
            "part-00001.parquet",
        ]
    );
}

#[test]
fn sqlite_reads_back_with_types_indexes_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (parts, errors, expected) = fixture(tmp.path(), &out);
    let (_, info) = write_format(ExtraFormat::Sqlite, &parts, &errors, &out).unwrap();
    assert_file_info(&out.join("output.sqlite"), &info, 5);
    let got = python(READ_SQLITE, &[&out.join("output.sqlite")]);

    assert_eq!(got["integrity"], "ok");
    assert_eq!(got["tables"], json!(["errors", "orch_meta", "results"]));
    assert_eq!(
        got["columns"],
        json!([
            ["_item", "INTEGER", 1],
            ["n", "INTEGER", 0],
            ["f", "REAL", 0],
            ["b", "INTEGER", 0],
            ["s", "TEXT", 0],
            [WEIRD, "TEXT", 0],
            ["nested", "TEXT", 0],
            ["uni", "TEXT", 0],
        ])
    );
    assert_eq!(got["count"], 5);
    // Booleans are 0/1; everything else as in the Parquet file.
    let sqlite_rows: Vec<Vec<Value>> = expected
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Bool(b) => json!(i64::from(*b)),
                    other => other.clone(),
                })
                .collect()
        })
        .collect();
    assert_eq!(got["rows"], json!(sqlite_rows));
    let types: Vec<Vec<&str>> = expected
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Null => "null",
                    Value::Bool(_) => "integer",
                    Value::Number(n) if n.is_f64() => "real",
                    Value::Number(_) => "integer",
                    _ => "text",
                })
                .collect()
        })
        .collect();
    // In particular: `"123"` stays text, `2` in a float column is real, JSON text is text.
    assert_eq!(got["types"], json!(types));

    assert_eq!(
        got["errors_columns"],
        json!([
            ["_item", "INTEGER", 1],
            ["kind", "TEXT", 1],
            ["message", "TEXT", 1],
            ["attempts", "INTEGER", 1],
        ])
    );
    assert_eq!(
        got["errors"],
        json!([
            [5, "permanent", "bad \"input\"\nline 2", 3],
            [6, "transient", "timeout", 1],
        ])
    );
    let indexes = got["indexes"].as_object().unwrap();
    let on: Vec<&Value> = indexes.values().collect();
    assert!(on.contains(&&json!(["results", "_item"])), "{indexes:?}");
    assert!(on.contains(&&json!(["errors", "_item"])), "{indexes:?}");
    assert!(
        got["plan"].as_str().unwrap().contains("USING INDEX"),
        "{}",
        got["plan"]
    );
    assert_eq!(got["meta"]["schema_version"], "1");
    let columns: Value = serde_json::from_str(got["meta"]["columns"].as_str().unwrap()).unwrap();
    assert_eq!(
        columns[5],
        json!({"name": WEIRD, "column": WEIRD, "type": "string"})
    );
    assert_eq!(columns[2]["type"], "float64");
    assert_eq!(columns.as_array().unwrap().len(), COLUMNS.len());

    // And through rusqlite: the file is a plain database, no journal or lock left over.
    let conn = rusqlite::Connection::open(out.join("output.sqlite")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let s: String = conn
        .query_row("SELECT s FROM results WHERE _item = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(s, MULTILINE);
}

#[test]
fn jsonl_reads_back_with_key_order_types_and_nulls() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (parts, errors, expected) = fixture(tmp.path(), &out);
    let (_, info) = write_format(ExtraFormat::Jsonl, &parts, &errors, &out).unwrap();
    assert_file_info(&out.join("output.jsonl"), &info, 5);
    let got = python(READ_JSONL, &[&out.join("output.jsonl")]);

    let pairs: Vec<Vec<Value>> = expected
        .iter()
        .map(|row| {
            COLUMNS
                .iter()
                .zip(row)
                .map(|(k, v)| json!([k, v]))
                .collect()
        })
        .collect();
    assert_eq!(got["pairs"], json!(pairs));
    let types: Vec<Vec<&str>> = expected
        .iter()
        .map(|row| {
            row.iter()
                .map(|v| match v {
                    Value::Null => "NoneType",
                    Value::Bool(_) => "bool",
                    Value::Number(n) if n.is_f64() => "float",
                    Value::Number(_) => "int",
                    _ => "str",
                })
                .collect()
        })
        .collect();
    // `2` in a float column reads back as a float, nested JSON as a string.
    assert_eq!(got["types"], json!(types));

    let text = std::fs::read_to_string(out.join("output.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert_eq!(
        text.lines().nth(2).unwrap(),
        r#"{"_item":2,"n":-9223372036854775808,"f":1e+300,"b":null,"s":"","we\"ird col":null,"nested":null,"uni":null}"#
    );
    assert!(!text.contains("permanent"), "errors stay out of jsonl");
}

#[test]
fn csv_reads_back_with_quotes_newlines_and_empty_nulls() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (parts, errors, expected) = fixture(tmp.path(), &out);
    let (_, info) = write_format(ExtraFormat::Csv, &parts, &errors, &out).unwrap();
    assert_file_info(&out.join("output.csv"), &info, 5);
    let got = python(READ_CSV, &[&out.join("output.csv")]);

    let records = got.as_array().unwrap();
    assert_eq!(records[0], json!(COLUMNS));
    assert_eq!(records.len(), expected.len() + 1);
    for (record, row) in records[1..].iter().zip(&expected) {
        let fields = record.as_array().unwrap();
        assert_eq!(fields.len(), COLUMNS.len());
        for (field, value) in fields.iter().zip(row) {
            let field = field.as_str().unwrap();
            match value {
                Value::Null => assert_eq!(field, ""),
                Value::String(s) => assert_eq!(field, s),
                Value::Bool(b) => assert_eq!(field, b.to_string()),
                Value::Number(n) if n.is_f64() => {
                    assert_eq!(field.parse::<f64>().unwrap(), n.as_f64().unwrap());
                }
                Value::Number(n) => assert_eq!(field, n.to_string()),
                other => panic!("unexpected {other}"),
            }
        }
    }

    // What Python cannot show: CRLF records, `""` for the empty string but nothing for null,
    // and floats that say they are floats.
    let text = std::fs::read_to_string(out.join("output.csv")).unwrap();
    assert!(text.starts_with("_item,n,f,b,s,\"we\"\"ird col\",nested,uni\r\n"));
    assert!(
        text.contains("\r\n2,-9223372036854775808,1e+300,,\"\",,,\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\n1,,2.0,false,\"comma, \"\"quoted\"\"\nnew line\r\nand crlf\","));
    assert!(text.ends_with("\r\n4,7,,,123,,,\r\n"));
    assert!(!text.contains("permanent"), "errors stay out of csv");
}

// ---------------------------------------------------------------------------------------------
// Names, types and sizes beyond the fixture

#[test]
fn sqlite_keeps_columns_that_differ_only_in_ascii_case() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let task = write_task(
        tmp.path(),
        "t.parquet",
        &[(
            0,
            json!({"a": 1, "A": 2, "_ITEM": 3, "a_2": 4, "É": 5, "é": 6, "": 7}),
        )],
    );
    let parts = merge(&out, &[task]);
    let errors = out.join("errors.parquet");
    write_errors_parquet(&errors, &[]).unwrap();
    write_all_formats(&parts, &errors, &out, 1);

    let got = python(READ_SQLITE, &[&out.join("output.sqlite")]);
    let names: Vec<&str> = got["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["_item", "a", "A_2", "_ITEM_2", "a_2_2", "É", "é", ""]
    );
    assert_eq!(got["rows"], json!([[0, 1, 2, 3, 4, 5, 6, 7]]));
    let columns: Value = serde_json::from_str(got["meta"]["columns"].as_str().unwrap()).unwrap();
    assert_eq!(
        columns[2],
        json!({"name": "A", "column": "A_2", "type": "int64"})
    );

    // The text formats keep the original names.
    let csv = python(READ_CSV, &[&out.join("output.csv")]);
    assert_eq!(
        csv[0],
        json!(["_item", "a", "A", "_ITEM", "a_2", "É", "é", ""])
    );
    let jsonl = python(READ_JSONL, &[&out.join("output.jsonl")]);
    assert_eq!(jsonl["pairs"][0][2], json!(["A", 2]));
}

#[test]
fn foreign_types_are_widened_or_rendered_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("_item", DataType::UInt64, false),
        Field::new("small", DataType::Int32, true),
        Field::new("f32", DataType::Float32, true),
        Field::new("big", DataType::UInt64, true),
        Field::new("large", DataType::LargeUtf8, true),
        Field::new("day", DataType::Date32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![0, 1])),
        Arc::new(Int32Array::from(vec![Some(-5), None])),
        Arc::new(Float32Array::from(vec![Some(0.5), Some(f32::NAN)])),
        Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(1)])),
        Arc::new(LargeStringArray::from(vec![Some("l"), None])),
        Arc::new(Date32Array::from(vec![Some(19_723), None])),
    ];
    let part = out.join("part-00000.parquet");
    write_raw(
        &part,
        schema.clone(),
        &[RecordBatch::try_new(schema, columns).unwrap()],
    );
    let errors = out.join("errors.parquet");
    write_errors_parquet(&errors, &[]).unwrap();
    write_all_formats(std::slice::from_ref(&part), &errors, &out, 2);

    let got = python(READ_SQLITE, &[&out.join("output.sqlite")]);
    assert_eq!(
        got["columns"],
        json!([
            ["_item", "INTEGER", 1],
            ["small", "INTEGER", 0],
            ["f32", "REAL", 0],
            ["big", "INTEGER", 0],
            ["large", "TEXT", 0],
            ["day", "TEXT", 0],
        ])
    );
    // u64::MAX does not fit SQLite's integers: the nearest REAL. NaN is NULL.
    assert_eq!(
        got["rows"],
        json!([
            [0, -5, 0.5, u64::MAX as f64, "l", "2024-01-01"],
            [1, null, null, 1, null, null],
        ])
    );
    let jsonl = python(READ_JSONL, &[&out.join("output.jsonl")]);
    assert_eq!(
        jsonl["pairs"][0],
        json!([
            ["_item", 0],
            ["small", -5],
            ["f32", 0.5],
            ["big", u64::MAX],
            ["large", "l"],
            ["day", "2024-01-01"],
        ])
    );
    assert_eq!(jsonl["pairs"][1][2], json!(["f32", null]));
    let csv = std::fs::read_to_string(out.join("output.csv")).unwrap();
    assert_eq!(
        csv,
        "_item,small,f32,big,large,day\r\n0,-5,0.5,18446744073709551615,l,2024-01-01\r\n1,,,1,,\r\n"
    );
}

#[test]
fn many_rows_cross_batches_and_parts_in_order() {
    const N: u64 = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let tasks: Vec<PathBuf> = (0..3u64)
        .map(|t| {
            let rows: Vec<(u64, Value)> = (0..N)
                .filter(|i| i % 3 == t)
                .map(|i| (i, json!({"i": i, "text": format!("row,{i}\n\"x\"")})))
                .collect();
            write_task(tmp.path(), &format!("t{t}.parquet"), &rows)
        })
        .collect();
    let parts = merge(&out, &tasks);
    assert_eq!(parts.len(), 3);
    let errors = out.join("errors.parquet");
    write_errors_parquet(&errors, &[]).unwrap();
    write_all_formats(&parts, &errors, &out, N);

    // Parts are in task order, so items come 0, 3, 6, ..., 1, 4, ...: check the exact order.
    let order: Vec<u64> = (0..3u64)
        .flat_map(|t| (0..N).filter(move |i| i % 3 == t))
        .collect();
    let script = r#"
import csv, json, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
sql = [r[0] for r in con.execute('SELECT _item FROM results ORDER BY rowid')]
ok_sql = all(t == 'row,%d\n"x"' % i for i, t in con.execute('SELECT i, text FROM results'))
with open(sys.argv[2], encoding='utf-8') as f:
    objs = [json.loads(l) for l in f]
with open(sys.argv[3], newline='', encoding='utf-8') as f:
    recs = list(csv.reader(f))[1:]
print(json.dumps({
    'sqlite': sql, 'sqlite_text_ok': ok_sql,
    'jsonl': [o['_item'] for o in objs],
    'jsonl_text_ok': all(o['text'] == 'row,%d\n"x"' % o['i'] for o in objs),
    'csv': [int(r[0]) for r in recs],
    'csv_text_ok': all(r[2] == 'row,%s\n"x"' % r[1] for r in recs),
}))
"#;
    let got = python(
        script,
        &[
            &out.join("output.sqlite"),
            &out.join("output.jsonl"),
            &out.join("output.csv"),
        ],
    );
    for format in ["sqlite", "jsonl", "csv"] {
        assert_eq!(got[format], json!(order), "{format}");
        assert_eq!(got[format.to_owned() + "_text_ok"], true, "{format}");
    }
}

// ---------------------------------------------------------------------------------------------
// Empty inputs, replacement and failures

#[test]
fn no_parts_give_valid_empty_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let errors = tmp.path().join("errors.parquet");
    write_errors_parquet(&errors, &[]).unwrap();
    write_all_formats(&[], &errors, &out, 0);

    let got = python(READ_SQLITE, &[&out.join("output.sqlite")]);
    assert_eq!(got["tables"], json!(["errors", "orch_meta", "results"]));
    assert_eq!(got["columns"], json!([["_item", "INTEGER", 1]]));
    assert_eq!(got["count"], 0);
    assert_eq!(got["errors"], json!([]));
    assert_eq!(std::fs::read(out.join("output.jsonl")).unwrap(), b"");
    assert_eq!(
        std::fs::read_to_string(out.join("output.csv")).unwrap(),
        "_item\r\n"
    );
    assert!(temporaries(&out).is_empty());
}

#[test]
fn parts_without_rows_still_give_their_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("_item", DataType::UInt64, false),
        Field::new("a", DataType::Int64, true),
        Field::new("b c", DataType::Utf8, true),
    ]));
    let part = out.join("part-00000.parquet");
    write_raw(&part, schema, &[]);
    // Only errors: every item failed.
    let errors = out.join("errors.parquet");
    write_errors_parquet(
        &errors,
        &[ItemError {
            item: 0,
            kind: "permanent".into(),
            message: "no".into(),
            attempts: 1,
        }],
    )
    .unwrap();
    write_all_formats(&[part], &errors, &out, 0);

    let got = python(READ_SQLITE, &[&out.join("output.sqlite")]);
    assert_eq!(
        got["columns"],
        json!([
            ["_item", "INTEGER", 1],
            ["a", "INTEGER", 0],
            ["b c", "TEXT", 0]
        ])
    );
    assert_eq!(got["count"], 0);
    assert_eq!(got["errors"], json!([[0, "permanent", "no", 1]]));
    assert_eq!(std::fs::read(out.join("output.jsonl")).unwrap(), b"");
    assert_eq!(
        std::fs::read_to_string(out.join("output.csv")).unwrap(),
        "_item,a,b c\r\n"
    );
}

#[test]
fn rewriting_replaces_the_whole_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (parts, errors, _) = fixture(tmp.path(), &out);
    write_all_formats(&parts, &errors, &out, 5);
    // Again from the first part only: fewer rows, and nothing of the old files survives.
    write_all_formats(&parts[..1], &errors, &out, 3);
    let got = python(READ_SQLITE, &[&out.join("output.sqlite")]);
    assert_eq!(got["count"], 3);
    let jsonl = python(READ_JSONL, &[&out.join("output.jsonl")]);
    assert_eq!(jsonl["pairs"].as_array().unwrap().len(), 3);
    let csv = python(READ_CSV, &[&out.join("output.csv")]);
    assert_eq!(csv.as_array().unwrap().len(), 4);
    assert!(temporaries(&out).is_empty());
}

#[test]
fn failures_publish_nothing_and_leave_no_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (parts, errors, _) = fixture(tmp.path(), &out);
    // A part of another merge: its columns differ from the first part's.
    let other = write_task(tmp.path(), "other.parquet", &[(9, json!({"zzz": 1}))]);
    let mixed = vec![parts[0].clone(), other];
    let before = dir_names(&out);
    for format in ExtraFormat::ALL {
        let err = write_format(format, &mixed, &errors, &out).unwrap_err();
        assert!(err.to_string().contains("columns differ"), "{err}");
        assert_eq!(dir_names(&out), before, "{format:?}");
    }
    // A missing errors file fails the SQLite build (it is the only format that reads it).
    let missing = tmp.path().join("nope.parquet");
    let err = write_format(ExtraFormat::Sqlite, &parts, &missing, &out).unwrap_err();
    assert!(err.to_string().contains("nope.parquet"), "{err}");
    assert_eq!(dir_names(&out), before);
    // A file that is not a result part.
    let foreign = tmp.path().join("foreign.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
    write_raw(&foreign, schema, &[]);
    let err = write_format(ExtraFormat::Csv, &[foreign], &errors, &out).unwrap_err();
    assert!(err.to_string().contains("_item"), "{err}");
    assert_eq!(dir_names(&out), before);
}
