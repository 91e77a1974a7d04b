//! Hierarchical merge: levels, ordering, determinism, resume after a crash, invalidation.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use arrow_array::Array;
use common::{items, read_parquet};
use orch_data::{
    DataError, HierarchyStats, MergeOptions, ResultRow, merge_hierarchical, merge_results,
    sha256_file, write_results_parquet,
};
use serde_json::json;

const INPUTS: usize = 37;
const ROWS_PER_FILE: u64 = 3;

/// `n` result files with items `0..n*3` in order, and schemas that differ across files:
/// int vs float `a`, `b` only in some files, a null-only column in others, one empty file.
fn write_inputs(dir: &Path, n: usize) -> (Vec<PathBuf>, Vec<u64>) {
    let mut paths = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        let path = dir.join(format!("task-{i:04}.parquet"));
        let rows: Vec<ResultRow> = if i == 7 {
            Vec::new()
        } else {
            (0..ROWS_PER_FILE)
                .map(|r| {
                    let item = i as u64 * ROWS_PER_FILE + r;
                    let value = match i % 3 {
                        0 => json!({"a": item, "b": format!("s{item}")}),
                        1 => json!({"a": item as f64 + 0.5}),
                        _ => json!({"a": item, "n": null, "c": i % 2 == 0}),
                    };
                    ResultRow { item, value }
                })
                .collect()
        };
        expected.extend(rows.iter().map(|r| r.item));
        write_results_parquet(&path, &rows).unwrap();
        paths.push(path);
    }
    (paths, expected)
}

/// Final merge of what the hierarchy returned; returns the output file's SHA-256.
fn final_merge(files: &[PathBuf], out_dir: &Path) -> (PathBuf, String) {
    let out = merge_results(files, out_dir, &MergeOptions::default()).unwrap();
    assert_eq!(out.files.len(), 1);
    let path = out_dir.join(&out.files[0].0);
    let (_, sha) = sha256_file(&path).unwrap();
    assert_eq!(sha, out.files[0].1.sha256);
    (path, sha)
}

fn no_progress() -> impl FnMut(u32, usize, usize) {
    |_, _, _| {}
}

fn group_dir(work: &Path, level: u32, group: usize) -> PathBuf {
    work.join(level.to_string()).join(format!("{group:06}"))
}

fn dir_count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn many_inputs_merge_in_levels_and_keep_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, expected) = write_inputs(&tmp.path().join("in"), INPUTS);
    let work = tmp.path().join("work");
    let mut calls = Vec::new();
    let (files, stats) =
        merge_hierarchical(&inputs, &work, 4, &mut |l, d, t| calls.push((l, d, t))).unwrap();

    // 37 -> 10 -> 3.
    assert_eq!(
        stats,
        HierarchyStats {
            merged: 13,
            skipped: 0,
            levels: 2
        }
    );
    assert_eq!(files.len(), 3);
    for (g, f) in files.iter().enumerate() {
        assert_eq!(f, &group_dir(&work, 2, g).join("part-00000.parquet"));
    }
    let mut want: Vec<(u32, usize, usize)> = (1..=10).map(|d| (1, d, 10)).collect();
    want.extend((1..=3).map(|d| (2, d, 3)));
    assert_eq!(calls, want);
    assert_eq!(dir_count(&work.join("1")), 10);
    assert_eq!(dir_count(&work.join("2")), 3);
    for g in 0..10 {
        let dir = group_dir(&work, 1, g);
        let done: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("_DONE")).unwrap()).unwrap();
        let (bytes, sha) = sha256_file(&dir.join("part-00000.parquet")).unwrap();
        assert_eq!(done["output"]["bytes"], bytes);
        assert_eq!(done["output"]["sha256"], sha.as_str());
        // Exactly the output and the marker: no temporaries left behind.
        assert_eq!(dir_count(&dir), 2);
    }

    let (out, _) = final_merge(&files, &tmp.path().join("out"));
    let batch = read_parquet(&out);
    assert_eq!(items(&batch), expected);
    assert_eq!(expected.len() as u64, (INPUTS as u64 - 1) * ROWS_PER_FILE);
    // Schemas unified across levels: int + float -> float; b, c, n carried through.
    let schema = batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for col in ["_item", "a", "b", "c", "n"] {
        assert!(names.contains(&col), "{col} missing from {names:?}");
    }
}

#[test]
fn same_inputs_give_byte_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, _) = write_inputs(&tmp.path().join("in"), INPUTS);
    let run = |name: &str| {
        let work = tmp.path().join(name);
        let (files, _) = merge_hierarchical(&inputs, &work, 4, &mut no_progress()).unwrap();
        let (_, sha) = final_merge(&files, &tmp.path().join(format!("{name}-out")));
        (work, sha)
    };
    let (w1, sha1) = run("a");
    let (w2, sha2) = run("b");
    assert_eq!(sha1, sha2);
    for (level, groups) in [(1, 10), (2, 3)] {
        for g in 0..groups {
            let rel = Path::new(&level.to_string())
                .join(format!("{g:06}"))
                .join("part-00000.parquet");
            assert_eq!(
                fs::read(w1.join(&rel)).unwrap(),
                fs::read(w2.join(&rel)).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
}

#[test]
fn resumes_after_crash_and_redoes_only_damaged_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, expected) = write_inputs(&tmp.path().join("in"), INPUTS);

    // Reference: one uninterrupted run.
    let (files, _) =
        merge_hierarchical(&inputs, &tmp.path().join("ref"), 4, &mut no_progress()).unwrap();
    let (_, reference_sha) = final_merge(&files, &tmp.path().join("ref-out"));

    // Crash after five level-1 groups.
    let work = tmp.path().join("work");
    let mut done = 0usize;
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        merge_hierarchical(&inputs, &work, 4, &mut |_, _, _| {
            done += 1;
            if done == 5 {
                panic!("simulated crash after 5 groups");
            }
        })
    }));
    assert!(crashed.is_err());
    assert_eq!(dir_count(&work.join("1")), 5);
    assert!(!work.join("2").exists());

    // Damage: flip a byte in group 1's output, delete group 3's marker.
    let damaged = group_dir(&work, 1, 1).join("part-00000.parquet");
    let mut bytes = fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&damaged, &bytes).unwrap();
    fs::remove_file(group_dir(&work, 1, 3).join("_DONE")).unwrap();

    let mtime = |g: usize| -> SystemTime {
        fs::metadata(group_dir(&work, 1, g).join("part-00000.parquet"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let intact_before: Vec<SystemTime> = [0, 2, 4].iter().map(|&g| mtime(g)).collect();

    let (files, stats) = merge_hierarchical(&inputs, &work, 4, &mut no_progress()).unwrap();
    // Level 1: groups 0, 2, 4 skipped; 1 and 3 redone; 5..9 new. Level 2: all 3 new.
    assert_eq!(
        stats,
        HierarchyStats {
            merged: 10,
            skipped: 3,
            levels: 2
        }
    );
    let intact_after: Vec<SystemTime> = [0, 2, 4].iter().map(|&g| mtime(g)).collect();
    assert_eq!(intact_before, intact_after);

    let (out, sha) = final_merge(&files, &tmp.path().join("out"));
    assert_eq!(sha, reference_sha);
    assert_eq!(items(&read_parquet(&out)), expected);

    // A third run finds everything done.
    let (again, stats) = merge_hierarchical(&inputs, &work, 4, &mut no_progress()).unwrap();
    assert_eq!(again, files);
    assert_eq!(
        stats,
        HierarchyStats {
            merged: 0,
            skipped: 13,
            levels: 2
        }
    );
}

#[test]
fn changed_input_invalidates_its_group_and_those_above() {
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, _) = write_inputs(&tmp.path().join("in"), INPUTS);
    let work = tmp.path().join("work");
    merge_hierarchical(&inputs, &work, 4, &mut no_progress()).unwrap();

    // Input 5 (items 15..18; level-1 group 1, level-2 group 0) gets new values.
    let rows: Vec<ResultRow> = (15..18)
        .map(|item| ResultRow {
            item,
            value: json!({"a": item as f64, "extra": "changed"}),
        })
        .collect();
    write_results_parquet(&inputs[5], &rows).unwrap();

    let (files, stats) = merge_hierarchical(&inputs, &work, 4, &mut no_progress()).unwrap();
    assert_eq!(
        stats,
        HierarchyStats {
            merged: 2,
            skipped: 11,
            levels: 2
        }
    );
    let (out, _) = final_merge(&files, &tmp.path().join("out"));
    let batch = read_parquet(&out);
    let extra = batch.column_by_name("extra").unwrap();
    assert_eq!(extra.len() - extra.null_count(), 3);

    // A shorter input list (35 -> 9 -> 3 groups): level-1 group 8 now holds 3 inputs instead
    // of 4, and level-2 group 2 one input instead of two; both are redone, the rest skipped.
    let (_, stats) = merge_hierarchical(&inputs[..35], &work, 4, &mut no_progress()).unwrap();
    assert_eq!(
        stats,
        HierarchyStats {
            merged: 2,
            skipped: 10,
            levels: 2
        }
    );
}

#[test]
fn fan_in_below_two_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, _) = write_inputs(&tmp.path().join("in"), 3);
    let work = tmp.path().join("work");
    for fan_in in [0, 1] {
        let err = merge_hierarchical(&inputs, &work, fan_in, &mut no_progress()).unwrap_err();
        assert!(matches!(err, DataError::InvalidFile { .. }), "{err}");
        assert!(err.to_string().contains("fan-in"), "{err}");
    }
    assert!(!work.exists());
}

#[test]
fn few_inputs_are_returned_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (inputs, _) = write_inputs(&tmp.path().join("in"), 4);
    let work = tmp.path().join("work");
    let mut calls = 0;
    for n in [0, 1, 4] {
        let (files, stats) =
            merge_hierarchical(&inputs[..n], &work, 4, &mut |_, _, _| calls += 1).unwrap();
        assert_eq!(files, inputs[..n].to_vec());
        assert_eq!(stats, HierarchyStats::default());
    }
    assert_eq!(calls, 0);
    assert!(!work.exists());

    // Five inputs with fan-in 4: one level of two groups (4 + 1).
    let (more, _) = write_inputs(&tmp.path().join("in5"), 5);
    let (files, stats) = merge_hierarchical(&more, &work, 4, &mut no_progress()).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(stats.levels, 1);
}

#[test]
fn a_moved_job_directory_keeps_its_finished_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("a/job");
    let (inputs, _) = write_inputs(&first.join("in"), INPUTS);
    let (_, done) =
        merge_hierarchical(&inputs, &first.join("work"), 4, &mut no_progress()).unwrap();
    assert!(done.merged > 0);
    // The whole job directory moves (a restored backup, a merge from a scratch copy).
    let moved = tmp.path().join("b/elsewhere/job");
    fs::create_dir_all(moved.parent().unwrap()).unwrap();
    fs::rename(&first, &moved).unwrap();
    let inputs: Vec<PathBuf> = (0..INPUTS)
        .map(|i| moved.join("in").join(format!("task-{i:04}.parquet")))
        .collect();
    let (_, again) =
        merge_hierarchical(&inputs, &moved.join("work"), 4, &mut no_progress()).unwrap();
    assert_eq!(again.merged, 0, "{again:?}");
    assert_eq!(again.skipped, done.merged);
}
