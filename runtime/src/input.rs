//! The job's input as the partitioner sees it: one or many files (a directory, an S3 prefix or
//! a glob, read as one dataset, ordinals running on from file to file in path order), each cut
//! into batches that are byte ranges of the file. Compressed files (`.gz`, `.zst`) cannot be
//! read by range, so they are first decompressed — streaming, in bounded memory — into an
//! object of the job's storage, and batches are ranges of that object.
//!
//! Objects on S3 are downloaded once into the driver's scratch directory to be partitioned
//! (partitioning reads every byte anyway); the batches keep the object's URI, and each worker
//! then reads only its range of it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orch_core::backend::ObjectStore;
use orch_core::csv_input;
use orch_core::load::input_sources;
use orch_core::model::Batch;
use orch_core::partition::{self, PartitionOptions, PartitionPlan};
use orch_core::platform::{Backends, Locations};
use orch_core::spec::{InputFormat, JobSpec};
use orch_core::uri::Location;

use crate::error::{Error, Result};

/// The partitioned input: batches, and the column names of CSV input.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub batches: PartitionPlan,
    pub columns: Option<Vec<String>>,
}

/// One file of the input.
#[derive(Clone)]
pub enum Source {
    Local(PathBuf),
    /// An object of a remote store (S3), with its size from the listing.
    Remote {
        uri: String,
        store: Arc<dyn ObjectStore>,
        key: String,
        size: u64,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Local(path) => path.display().to_string(),
            Source::Remote { uri, .. } => uri.clone(),
        }
    }

    /// The file name, for the compression suffix and the name of a local copy.
    fn file_name(&self) -> String {
        match self {
            Source::Local(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Source::Remote { key, .. } => key.rsplit('/').next().unwrap_or_default().to_string(),
        }
    }
}

/// The files of the spec's input, in ordinal order.
pub async fn sources(spec: &JobSpec, locations: &dyn Locations) -> Result<Vec<Source>> {
    let uri = &spec.input.uri;
    let Some((store, key)) = locations.open(uri)? else {
        let path = Location::local_path(uri).map_err(Error::Invalid)?;
        let files = input_sources(&path).map_err(Error::Invalid)?;
        return Ok(files.into_iter().map(Source::Local).collect());
    };
    let base = uri.strip_suffix(key.as_str()).unwrap_or(uri).to_string();
    let remote = |key: String, size: u64| Source::Remote {
        uri: format!("{base}{key}"),
        store: store.clone(),
        key,
        size,
    };
    let visible =
        |k: &str| !k.ends_with('/') && !k.rsplit('/').next().unwrap_or_default().starts_with('.');
    let mut found: Vec<(String, u64)> = if let Some(at) = key.find(['*', '?', '[']) {
        let pattern = glob::Pattern::new(&key)
            .map_err(|e| Error::Invalid(format!("`{uri}` is not a valid glob: {e}")))?;
        let prefix = &key[..key[..at].rfind('/').map(|i| i + 1).unwrap_or(0)];
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        store
            .list(prefix)
            .await?
            .into_iter()
            .filter(|o| visible(&o.key) && pattern.matches_with(&o.key, options))
            .map(|o| (o.key, o.size))
            .collect()
    } else {
        let listed = store.list(&key).await?;
        match listed.iter().find(|o| o.key == key) {
            // The object itself (a listing of its key also finds siblings that share it as
            // a prefix).
            Some(o) if !key.is_empty() && !key.ends_with('/') => vec![(o.key.clone(), o.size)],
            _ => {
                // A "directory": the objects right under `key/`, like the files of a local
                // directory (a glob reaches deeper: `data/*/*.jsonl`).
                let dir = if key.is_empty() || key.ends_with('/') {
                    key.clone()
                } else {
                    format!("{key}/")
                };
                listed
                    .into_iter()
                    .filter(|o| {
                        o.key
                            .strip_prefix(&dir)
                            .is_some_and(|name| !name.contains('/'))
                            && visible(&o.key)
                    })
                    .map(|o| (o.key, o.size))
                    .collect()
            }
        }
    };
    found.sort();
    if found.is_empty() {
        return Err(Error::Invalid(format!(
            "spec.input.uri: `{uri}` matches no object"
        )));
    }
    Ok(found.into_iter().map(|(k, size)| remote(k, size)).collect())
}

/// A cheap fingerprint of the input files: paths, sizes and (local files) modification times.
pub fn fingerprint(sources: &[Source]) -> Result<String> {
    let mut parts = Vec::new();
    for source in sources {
        match source {
            Source::Local(path) => {
                let meta = std::fs::metadata(path).map_err(|source| orch_core::Error::Read {
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
            Source::Remote { uri, size, .. } => parts.push(format!("{uri}:{size}")),
        }
    }
    Ok(parts.join("|"))
}

enum Compression {
    Gzip,
    Zstd,
}

fn compression(name: &str) -> Option<Compression> {
    match name.rsplit_once('.')?.1 {
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

fn decoder(path: &Path, c: &Compression, name: &str) -> Result<Box<dyn Read>> {
    let file = std::io::BufReader::new(open(path)?);
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(file)
                .map_err(|e| Error::Invalid(format!("cannot read {name} as zstd: {e}")))?,
        ),
    })
}

/// Decompresses `path` into `target` (temp file, then rename).
fn decompress(path: &Path, c: &Compression, name: &str, target: &Path) -> Result<()> {
    let io = |source| orch_core::Error::Io {
        path: target.to_path_buf(),
        source,
    };
    let temp = target.with_extension("tmp");
    let mut out = std::fs::File::create(&temp).map_err(io)?;
    std::io::copy(&mut decoder(path, c, name)?, &mut out)
        .map_err(|e| Error::Invalid(format!("cannot decompress {name}: {e}")))?;
    out.sync_all().map_err(io)?;
    std::fs::rename(&temp, target).map_err(io)?;
    Ok(())
}

/// Where a planned job keeps what partitioning produces for the workers.
pub struct PlanTarget<'a> {
    pub backends: &'a Backends,
    /// The storage URI workers are given (objects of `backends.objects` are `<uri>/<key>`).
    pub storage_uri: &'a str,
    pub job: &'a str,
}

/// Partitions every input file. Remote files are downloaded into `scratch` first (and removed
/// after). With a `target`, compressed files are decompressed into the job's storage so that
/// workers can read ranges; without one (a dry run), they are partitioned straight from the
/// decompressing stream and nothing is written.
pub async fn plan(
    spec: &JobSpec,
    sources: &[Source],
    scratch: &Path,
    target: Option<PlanTarget<'_>>,
) -> Result<InputPlan> {
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
    let downloads = scratch.join("input");
    let mut total = PartitionPlan::default();
    let mut columns: Option<Vec<String>> = None;
    for (index, source) in sources.iter().enumerate() {
        let name = source.name();
        let file_name = source.file_name();
        // A readable local file: the input itself, or a downloaded copy.
        let (original, downloaded) = match source {
            Source::Local(path) => (path.clone(), false),
            Source::Remote { store, key, .. } => {
                let path = downloads.join(format!("{index:05}-{file_name}"));
                std::fs::create_dir_all(&downloads).map_err(|source| orch_core::Error::Io {
                    path: downloads.clone(),
                    source,
                })?;
                if !store.get_to_file(key, &path).await? {
                    return Err(Error::Invalid(format!("{name} disappeared while planning")));
                }
                (path, true)
            }
        };
        let compressed = compression(&file_name);
        let (path, source_uri) = match (&compressed, &target) {
            (Some(c), Some(target)) => {
                let stem = file_name
                    .rsplit_once('.')
                    .map(|(s, _)| s)
                    .unwrap_or(&file_name);
                let key = format!(
                    "{}input/{index:05}-{stem}",
                    orch_core::layout::job_prefix(target.job)
                );
                let (path, remote) = target.backends.local_file(&key)?;
                decompress(&original, c, &name, &path)?;
                target.backends.publish(&key, &path, remote).await?;
                let uri = if remote {
                    format!("{}/{key}", target.storage_uri.trim_end_matches('/'))
                } else {
                    Location::Local(path.clone()).to_uri()
                };
                (path, uri)
            }
            _ => {
                let uri = match source {
                    Source::Local(path) => Location::Local(path.clone()).to_uri(),
                    Source::Remote { uri, .. } => uri.clone(),
                };
                (original.clone(), uri)
            }
        };
        // A dry run partitions compressed input from the decompressing stream.
        let reader = || -> Result<Box<dyn Read>> {
            match (&compressed, &target) {
                (Some(c), None) => decoder(&original, c, &name),
                _ => Ok(Box::new(std::io::BufReader::new(open(&path)?))),
            }
        };
        let part = if spec.input.format == Some(InputFormat::Parquet) {
            // Row-group batches: the ranges are rows, read through the Parquet reader.
            orch_data::partition_parquet(&path, &source_uri, spec.batch.size)?
        } else if let Some(csv) = &csv {
            let (names, data_start) = csv_input::read_header(reader()?, csv)?;
            match &columns {
                None => columns = Some(names),
                Some(first) if *first != names => {
                    return Err(Error::Invalid(format!(
                        "{name} has columns {names:?}, but the first input file has {first:?}; \
                         all files of one input must share a header"
                    )));
                }
                Some(_) => {}
            }
            csv_input::partition_csv(reader()?, &source_uri, data_start, opts, csv)?
        } else {
            partition::partition_jsonl(reader()?, &source_uri, opts)?
        };
        append(&mut total, part);
        if downloaded && let Err(e) = std::fs::remove_file(&original) {
            tracing::warn!(file = %original.display(), error = %e, "cannot remove a downloaded input copy");
        }
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
