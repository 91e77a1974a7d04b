//! Aggregation: many task result files into a few large `part-NNNNN.parquet` files.
//!
//! A job ends with thousands of small per-task files; users want a handful of large ones
//! (docs/job-spec.md, "Storage layout": large row groups, files of 100 MB and more). The merge must run in bounded
//! memory whatever the number of inputs (docs/benchmarks.md: 10,000 files within 512 MiB), so it reads
//! every footer first to fix the unified schema (see [`crate::schema`]), then streams one input
//! record batch at a time into the current output file, rolling to the next file once the
//! current one reaches the size target.
//!
//! With a declared output schema ([`MergeOptions::schema`]) nothing is unified: every input
//! must already have exactly that schema (the worker wrote it so), and an input that does not
//! is refused rather than widened, so the output's schema is the declared one.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_cast::cast;
use arrow_schema::{Schema, SchemaRef};

use crate::Result;
use crate::checksum::FileInfo;
use crate::declared::DeclaredSchema;
use crate::error::DataError;
use crate::parquet_io::{DEFAULT_ROW_GROUP_ROWS, ParquetSink, open_builder};
use crate::schema::{ColumnSchema, SchemaUnifier, is_null_only, type_name};

/// Row bounds on the input batch size, whatever the estimate says.
const MAX_BATCH_ROWS: usize = 64 * 1024;

/// How merged output is cut into files and row groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOptions {
    /// Start a new output file once the current one reaches this many bytes (estimated while
    /// writing; a file overshoots by at most one input batch). Default 128 MiB.
    pub target_file_bytes: u64,
    /// Maximum rows per row group. Default 1,000,000; a file that reaches its size target
    /// first ends its row group early.
    pub row_group_rows: usize,
    /// The declared output schema (`spec.output.schema`): when set, every input must have
    /// exactly this schema and the output has it; when `None`, the inputs' schemas are unified.
    pub schema: Option<DeclaredSchema>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            target_file_bytes: 128 << 20,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            schema: None,
        }
    }
}

impl MergeOptions {
    /// The options a job's `spec.output` asks for: `targetFileSize`, `rowGroupRows` and the
    /// declared `schema`. The one place that maps the spec, so every caller merges alike.
    pub fn from_output_spec(spec: &orch_core::spec::OutputSpec) -> Result<Self> {
        let invalid = |field: &str, reason: String| DataError::InvalidSpec {
            field: format!("spec.output.{field}"),
            reason,
        };
        let target_file_bytes = match spec.target_file_size.as_bytes() {
            Ok(0) => return Err(invalid("targetFileSize", "must be ≥ 1 byte".into())),
            Ok(n) => n,
            Err(e) => return Err(invalid("targetFileSize", e)),
        };
        let min = orch_core::spec::MIN_ROW_GROUP_ROWS;
        let row_group_rows = usize::try_from(spec.row_group_rows)
            .ok()
            .filter(|_| spec.row_group_rows >= min)
            .ok_or_else(|| {
                invalid(
                    "rowGroupRows",
                    format!("must be ≥ {min}, got {}", spec.row_group_rows),
                )
            })?;
        let schema = spec
            .schema
            .as_deref()
            .map(DeclaredSchema::new)
            .transpose()?;
        Ok(MergeOptions {
            target_file_bytes,
            row_group_rows,
            schema,
        })
    }
}

/// What a merge produced; the caller records it in `_SUCCESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutput {
    /// Output files in order: file name (relative to `out_dir`) and its checksum.
    pub files: Vec<(String, FileInfo)>,
    /// Total rows over all output files.
    pub rows: u64,
    /// The unified schema, `_item` first.
    pub schema: Vec<ColumnSchema>,
}

/// The name of the `index`-th output file.
pub fn part_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// Whether `name` looks like one of our output files (`part-` + at least five digits).
fn is_part_file_name(name: &str) -> bool {
    name.strip_prefix("part-")
        .and_then(|rest| rest.strip_suffix(".parquet"))
        .is_some_and(|digits| digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// How to read one input, decided from its footer.
struct InputPlan {
    /// For each unified column, the input column index it comes from, if any.
    sources: Vec<Option<usize>>,
    batch_rows: usize,
    rows: u64,
}

/// Reshapes an input batch onto the unified schema: reorder, cast, null-fill.
fn conform(
    batch: &RecordBatch,
    plan: &InputPlan,
    schema: &SchemaRef,
    path: &Path,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, source) in schema.fields().iter().zip(&plan.sources) {
        let column = match source {
            Some(i) => {
                let column = batch.column(*i);
                if column.data_type() == field.data_type() {
                    column.clone()
                } else {
                    cast(column, field.data_type()).map_err(|e| DataError::arrow(path, e))?
                }
            }
            None => new_null_array(field.data_type(), batch.num_rows()),
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| DataError::arrow(path, e))
}

/// Output files being produced: the open one and those already published.
struct PartWriter<'a> {
    out_dir: &'a Path,
    schema: SchemaRef,
    opts: &'a MergeOptions,
    current: Option<ParquetSink>,
    files: Vec<(String, FileInfo)>,
}

impl PartWriter<'_> {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let sink = match &mut self.current {
            Some(sink) => sink,
            slot => {
                let path = self.out_dir.join(part_file_name(self.files.len()));
                slot.insert(ParquetSink::create(
                    &path,
                    self.schema.clone(),
                    self.opts.row_group_rows,
                )?)
            }
        };
        sink.write(batch)?;
        if sink.estimated_bytes() >= self.opts.target_file_bytes {
            self.close_current()?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(sink) = self.current.take() {
            let name = part_file_name(self.files.len());
            let info = sink.finish()?;
            tracing::debug!(file = %name, rows = info.rows, bytes = info.bytes, "wrote merged part");
            self.files.push((name, info));
        }
        Ok(())
    }
}

/// Streams result Parquet files, in the given order, into `out_dir/part-00000.parquet`,
/// `part-00001.parquet`, ... under the unified schema of all inputs.
///
/// Memory holds one input record batch plus the writer's buffers for the open row group.
/// Every output file is written atomically. With no rows at all a single `part-00000.parquet`
/// carrying the unified schema (just `_item` when there are no inputs) is still written, so
/// consumers always find a readable file. `part-NNNNN.parquet` files in `out_dir` left over
/// from an earlier merge and not rewritten by this one are removed afterwards, so the
/// directory holds exactly this merge's output.
pub fn merge_results(
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &MergeOptions,
) -> Result<MergeOutput> {
    // Pass one: footers only.
    let mut unifier = SchemaUnifier::default();
    let mut footers = Vec::with_capacity(inputs.len());
    for input in inputs {
        let builder = open_builder(input)?;
        match &opts.schema {
            Some(declared) => check_declared(declared.arrow_schema(), builder.schema(), input)?,
            None => unifier.add(builder.schema(), input)?,
        }
        let metadata = builder.metadata();
        let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0);
        // Keep only the input's schema and sizing, not its whole footer: with ten thousand
        // inputs the footers would dominate memory.
        footers.push((
            builder.schema().clone(),
            crate::parquet_io::batch_rows_for(metadata, MAX_BATCH_ROWS),
            rows,
        ));
    }
    let schema: SchemaRef = match &opts.schema {
        Some(declared) => declared.arrow_schema().clone(),
        None => Arc::new(unifier.finish()),
    };

    let mut parts = PartWriter {
        out_dir,
        schema: schema.clone(),
        opts,
        current: None,
        files: Vec::new(),
    };
    let mut total_rows = 0u64;
    for (input, (input_schema, batch_rows, rows)) in inputs.iter().zip(footers) {
        let plan = InputPlan {
            sources: plan_sources(&schema, &input_schema),
            batch_rows,
            rows,
        };
        let reader = open_builder(input)?
            .with_batch_size(plan.batch_rows)
            .build()
            .map_err(|e| DataError::parquet(input, e))?;
        let mut read = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| DataError::arrow(input, e))?;
            if batch.num_rows() == 0 {
                continue;
            }
            read += batch.num_rows() as u64;
            parts.write(&conform(&batch, &plan, &schema, input)?)?;
        }
        if read != plan.rows {
            return Err(DataError::invalid(
                input,
                format!("footer promises {} rows, read {read}", plan.rows),
            ));
        }
        total_rows += read;
    }
    parts.close_current()?;
    if parts.files.is_empty() {
        let path = out_dir.join(part_file_name(0));
        let info = ParquetSink::create(&path, schema.clone(), opts.row_group_rows)?.finish()?;
        parts.files.push((part_file_name(0), info));
    }
    remove_stale_parts(out_dir, &parts.files)?;

    Ok(MergeOutput {
        schema: schema
            .fields()
            .iter()
            .map(|f| ColumnSchema::from_field(f))
            .collect(),
        files: parts.files,
        rows: total_rows,
    })
}

/// Refuses an input whose schema is not exactly the declared one: same columns (in any order)
/// with the same types. Nullability is left to the data: a null in a non-nullable declared
/// column fails when the batch is built.
fn check_declared(declared: &Schema, input: &Schema, path: &Path) -> Result<()> {
    let conflict = |column: &str, detail: String| DataError::SchemaConflict {
        path: path.to_path_buf(),
        column: column.to_owned(),
        detail,
    };
    for field in input.fields() {
        match declared.field_with_name(field.name()) {
            Ok(d) if d.data_type() == field.data_type() => {}
            Ok(d) => {
                return Err(conflict(
                    field.name(),
                    format!(
                        "declared as {}, but the file has {}",
                        type_name(d.data_type()),
                        type_name(field.data_type())
                    ),
                ));
            }
            Err(_) => {
                return Err(conflict(
                    field.name(),
                    "the file has a column that is not in the declared output schema".into(),
                ));
            }
        }
    }
    if let Some(missing) = declared
        .fields()
        .iter()
        .find(|d| input.field_with_name(d.name()).is_err())
    {
        return Err(conflict(
            missing.name(),
            "a declared column is missing from the file".into(),
        ));
    }
    Ok(())
}

/// Where each unified column comes from in one input; `None` means null-fill, which is also
/// the cheapest way to carry over a null-only column.
fn plan_sources(unified: &Schema, input: &Schema) -> Vec<Option<usize>> {
    unified
        .fields()
        .iter()
        .map(|f| {
            input
                .index_of(f.name())
                .ok()
                .filter(|&i| !is_null_only(input.field(i)))
        })
        .collect()
}

fn remove_stale_parts(out_dir: &Path, written: &[(String, FileInfo)]) -> Result<()> {
    let keep: HashSet<&str> = written.iter().map(|(name, _)| name.as_str()).collect();
    let entries = fs::read_dir(out_dir).map_err(|e| DataError::io("list", out_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io("list", out_dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_part_file_name(name) && !keep.contains(name) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing part file left over from an earlier merge");
            fs::remove_file(&path).map_err(|e| DataError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names() {
        assert_eq!(part_file_name(0), "part-00000.parquet");
        assert_eq!(part_file_name(123_456), "part-123456.parquet");
        assert!(is_part_file_name("part-00007.parquet"));
        assert!(is_part_file_name("part-123456.parquet"));
        assert!(!is_part_file_name("part-0007.parquet"));
        assert!(!is_part_file_name(".part-00000.parquet.tmp-1-2"));
        assert!(!is_part_file_name("part-0000a.parquet"));
        assert!(!is_part_file_name("errors.parquet"));
    }
}
