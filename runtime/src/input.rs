//! The job's input as the partitioner sees it: one or many files (a directory or a glob read
//! as one dataset, ordinals running on from file to file in path order), each cut into
//! batches that are byte ranges of the file. Compressed files (`.gz`, `.zst`) cannot be read
//! by range, so they are first decompressed — streaming, in bounded memory — into an object of
//! the job's storage, and batches are ranges of that object.

use std::io::Read;
use std::path::{Path, PathBuf};

use orch_core::csv_input;
use orch_core::load::input_sources;
use orch_core::model::Batch;
use orch_core::partition::{self, PartitionOptions, PartitionPlan};
use orch_core::spec::{InputFormat, JobSpec};
use orch_core::uri::Location;

use crate::error::{Error, Result};

/// The partitioned input: batches, and the column names of CSV input.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub batches: PartitionPlan,
    pub columns: Option<Vec<String>>,
}

/// The files of the spec's input, in ordinal order.
pub fn sources(spec: &JobSpec) -> Result<Vec<PathBuf>> {
    let path = Location::local_path(&spec.input.uri).map_err(Error::Invalid)?;
    input_sources(&path).map_err(Error::Invalid)
}

/// A cheap fingerprint of the input files: paths, sizes and modification times.
pub fn fingerprint(spec: &JobSpec) -> Result<String> {
    let mut parts = Vec::new();
    for path in sources(spec)? {
        let meta = std::fs::metadata(&path).map_err(|source| orch_core::Error::Read {
            path: path.clone(),
            source,
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        parts.push(format!("{}:{}:{mtime}", path.display(), meta.len()));
    }
    Ok(parts.join("|"))
}

enum Compression {
    Gzip,
    Zstd,
}

fn compression(path: &Path) -> Option<Compression> {
    match path.extension()?.to_str()? {
        "gz" => Some(Compression::Gzip),
        "zst" => Some(Compression::Zstd),
        _ => None,
    }
}

fn open(path: &Path) -> Result<std::fs::File> {
    Ok(
        std::fs::File::open(path).map_err(|source| orch_core::Error::Read {
            path: path.to_path_buf(),
            source,
        })?,
    )
}

fn decoder(path: &Path, c: &Compression) -> Result<Box<dyn Read>> {
    let file = std::io::BufReader::new(open(path)?);
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| {
                Error::Invalid(format!("cannot read {} as zstd: {e}", path.display()))
            })?)
        }
    })
}

/// Decompresses `path` into `dir` (temp file, then rename), returning the new file.
fn materialize(path: &Path, c: &Compression, index: usize, dir: &Path) -> Result<PathBuf> {
    let io = |source| orch_core::Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let target = dir.join(format!("{index:05}-{stem}"));
    let temp = dir.join(format!(".{index:05}-{stem}.tmp"));
    let mut out = std::fs::File::create(&temp).map_err(io)?;
    std::io::copy(&mut decoder(path, c)?, &mut out)
        .map_err(|e| Error::Invalid(format!("cannot decompress {}: {e}", path.display())))?;
    out.sync_all().map_err(io)?;
    std::fs::rename(&temp, &target).map_err(io)?;
    Ok(target)
}

/// Partitions every input file. With `materialize_into`, compressed files are decompressed
/// there first so that workers can read ranges; without it (a dry run), they are partitioned
/// straight from the decompressing stream and nothing is written.
pub fn plan(spec: &JobSpec, materialize_into: Option<&Path>) -> Result<InputPlan> {
    let opts = PartitionOptions {
        batch_size: spec.batch.size,
        max_bytes: spec.batch.max_bytes.as_bytes().map_err(Error::Invalid)?,
        hard_limit: spec
            .batch
            .max_record_bytes
            .as_bytes()
            .map_err(Error::Invalid)?,
    };
    let csv = (spec.input.format == Some(InputFormat::Csv))
        .then(|| spec.input.csv.clone().unwrap_or_default().options());
    let mut total = PartitionPlan::default();
    let mut columns: Option<Vec<String>> = None;
    for (index, original) in sources(spec)?.into_iter().enumerate() {
        let compressed = compression(&original);
        let path = match (&compressed, materialize_into) {
            (Some(c), Some(dir)) => materialize(&original, c, index, dir)?,
            _ => original.clone(),
        };
        // A dry run partitions compressed input from the decompressing stream.
        let reader = || -> Result<Box<dyn Read>> {
            match (&compressed, materialize_into) {
                (Some(c), None) => decoder(&original, c),
                _ => Ok(Box::new(std::io::BufReader::new(open(&path)?))),
            }
        };
        let source = Location::Local(path.clone()).to_uri();
        if spec.input.format == Some(InputFormat::Parquet) {
            // Row-group batches: the ranges are rows, read through the Parquet reader.
            append(
                &mut total,
                orch_data::partition_parquet(&path, &source, spec.batch.size)?,
            );
            continue;
        }
        let part = match &csv {
            Some(csv) => {
                let (names, data_start) = csv_input::read_header(reader()?, csv)?;
                match &columns {
                    None => columns = Some(names),
                    Some(first) if *first != names => {
                        return Err(Error::Invalid(format!(
                            "{} has columns {names:?}, but the first input file has {first:?}; \
                             all files of one input must share a header",
                            original.display()
                        )));
                    }
                    Some(_) => {}
                }
                csv_input::partition_csv(reader()?, &source, data_start, opts, csv)?
            }
            None => partition::partition_jsonl(reader()?, &source, opts)?,
        };
        append(&mut total, part);
    }
    Ok(InputPlan {
        batches: total,
        columns,
    })
}

/// Adds one file's batches after the others: ids and ordinals continue where they stopped.
fn append(total: &mut PartitionPlan, part: PartitionPlan) {
    let first_id = total.batches.len() as u32;
    let first_item = total.items;
    total
        .batches
        .extend(part.batches.into_iter().map(|b| Batch {
            id: b.id + first_id,
            first_item: b.first_item + first_item,
            ..b
        }));
    total.items += part.items;
    total.bytes += part.bytes;
}
