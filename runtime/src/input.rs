//! The job's input as the partitioner sees it: one or many files (a directory, an S3 prefix or
//! a glob, read as one dataset, ordinals running on from file to file in path order), each cut
//! into batches that are byte ranges of the file. Compressed files (`.gz`, `.zst`) cannot be
//! read by range, so they are decompressed — streaming, in bounded memory — into an object of
//! the job's storage while they are cut, and batches are ranges of that object.
//!
//! Planning runs in the process that drives the job, which for the operator is shared by every
//! tenant's jobs, so one job's input must never take it down:
//! - the reading, decompressing and cutting run on tokio's blocking pool, never on the async
//!   workers that serve the other jobs, the watches and the leader lease; listing and uploads
//!   stay async;
//! - S3 objects are read by ranged GETs through a bounded buffer (a few chunks in flight),
//!   and nothing of the input is written to the local scratch directory;
//! - a [`PlanBudget`] bounds the input's size, what it decompresses to and its batches, and
//!   passing a limit fails this job alone, before anything is published;
//! - errors name files, counts, offsets and digests, never the input's content.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use orch_core::ErrorCategory;
use orch_core::backend::{BackendError, BackendResult, ByteSource, ObjectStore};
use orch_core::csv_input::{self, CsvOptions};
use orch_core::load::input_sources;
use orch_core::model::Batch;
use orch_core::partition::{
    self, ASSUMED_COMPRESSION_RATIO, BatchSize, OverBudget, PartitionOptions, PartitionPlan,
    PlanBudget,
};
use orch_core::platform::{Backends, Locations};
use orch_core::spec::{InputFormat, JobSpec};
use orch_core::uri::Location;
use sha2::Digest;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// The first ranged GET of a file: small, so that reading a CSV header costs little.
const FIRST_CHUNK: u64 = 64 << 10;
/// The largest ranged GET; chunks double up to it. With one chunk queued, one in flight and
/// one being cut, a remote file holds at most three of these in memory.
const MAX_CHUNK: u64 = 4 << 20;
/// Decompressed bytes sent to the storage upload at a time.
const UPLOAD_CHUNK: usize = 1 << 20;

/// The partitioned input: batches, and the column names of CSV input.
#[derive(Clone)]
pub struct InputPlan {
    pub batches: PartitionPlan,
    pub columns: Option<Vec<String>>,
}

impl std::fmt::Debug for InputPlan {
    // Column names are input content: only their count shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputPlan")
            .field("batches", &self.batches.batches.len())
            .field("items", &self.batches.items)
            .field("bytes", &self.batches.bytes)
            .field("columns", &self.columns.as_ref().map(Vec::len))
            .finish()
    }
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
        // Walking a directory or a glob reads the filesystem: not on the async workers.
        let files = blocking("listing the input", move || {
            input_sources(&path).map_err(Error::Invalid)
        })
        .await?;
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

#[derive(Debug, Clone, Copy)]
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

/// Where a planned job keeps what partitioning produces for the workers.
pub struct PlanTarget<'a> {
    pub backends: &'a Backends,
    /// The storage URI workers are given (objects of `backends.objects` are `<uri>/<key>`).
    pub storage_uri: &'a str,
    pub job: &'a str,
}

/// The key prefix under which a job's decompressed input files are stored.
pub fn decompressed_prefix(job: &str) -> String {
    format!("{}input/", orch_core::layout::job_prefix(job))
}

/// Partitions every input file within `budget`. With a `target`, compressed files are
/// decompressed into the job's storage, so that workers can read ranges; without one (a dry
/// run), they are partitioned straight from the decompressing stream and nothing is written.
/// Nothing is written to the local scratch directory either way.
///
/// A limit of the budget that the input passes is an [`Error::Invalid`] naming it; objects
/// already stored for earlier files stay (the caller removes them, [`decompressed_prefix`]).
pub async fn plan(
    spec: &JobSpec,
    sources: &[Source],
    target: Option<PlanTarget<'_>>,
    budget: &PlanBudget,
) -> Result<InputPlan> {
    let format = match spec.input.format {
        Some(InputFormat::Parquet) => Format::Parquet,
        Some(InputFormat::Csv) => Format::Csv(spec.input.csv.clone().unwrap_or_default().options()),
        _ => Format::Jsonl,
    };
    let sizes = sizes(sources).await?;
    if let Some(max) = budget.max_input_bytes {
        let total = sizes.iter().fold(0u64, |sum, s| sum.saturating_add(*s));
        if total > max {
            return Err(over(OverBudget::InputBytes { total, max }));
        }
    }
    let max_bytes = spec.batch.max_bytes.as_bytes().map_err(Error::Invalid)?;
    let batch_size = BatchSize::choose(
        spec.batch.size,
        estimated_bytes(sources, &sizes),
        spec.executor.parallelism(),
        max_bytes,
    );
    let hard_limit = spec
        .batch
        .max_record_bytes
        .as_bytes()
        .map_err(Error::Invalid)?;
    let opts = batch_size.text_options(max_bytes, hard_limit);
    let handle = Handle::current();
    // Stops the blocking work of a plan whose caller went away (Ctrl-C, the operator
    // stopping the job), instead of letting it read on.
    let trip = Trip::default();
    let _stop = trip.stop_on_drop();
    let mut total = PartitionPlan::default();
    // The first file's header, and that file's name, for CSV input.
    let mut first_header: Option<Arc<FirstHeader>> = None;
    let mut decompressed = 0u64;
    for (index, (source, size)) in sources.iter().zip(sizes).enumerate() {
        let name = source.name();
        let file_name = source.file_name();
        let compression = compression(&file_name);
        let opts = PartitionOptions {
            max_batches: budget
                .max_batches
                .map(|max| max.saturating_sub(total.batches.len() as u64)),
            ..opts
        };
        let limit = match (compression, budget.max_decompressed_bytes) {
            (Some(_), Some(max)) => Some(Limit {
                remaining: max.saturating_sub(decompressed),
                max,
            }),
            _ => None,
        };
        let raw = match source {
            Source::Local(path) => Raw::Local(path.clone()),
            Source::Remote { store, key, .. } => Raw::Remote {
                store: store.clone(),
                key: key.clone(),
                size,
                handle: handle.clone(),
            },
        };
        let input = Input {
            name: name.clone(),
            raw,
            compression,
            limit,
            first_header: first_header.clone(),
            trip: trip.clone(),
        };
        let file = File {
            index,
            source,
            file_name: &file_name,
            batch_size,
        };
        let cut = cut_file(input, file, &format, opts, target.as_ref(), &handle)
            .await
            .map_err(|e| of_the_job(e, budget))?;
        decompressed = decompressed.saturating_add(cut.decompressed);
        if let (None, Some(names)) = (&first_header, cut.columns) {
            first_header = Some(Arc::new(FirstHeader { names, file: name }));
        }
        append(&mut total, cut.plan);
    }
    Ok(InputPlan {
        batches: total,
        columns: first_header.map(|first| first.names.clone()),
    })
}

/// The bytes the input is cut from, as far as is known before reading it: compressed files
/// count as [`ASSUMED_COMPRESSION_RATIO`] times their size.
fn estimated_bytes(sources: &[Source], sizes: &[u64]) -> u64 {
    sources.iter().zip(sizes).fold(0u64, |sum, (source, size)| {
        let ratio = match compression(&source.file_name()) {
            Some(_) => ASSUMED_COMPRESSION_RATIO,
            None => 1,
        };
        sum.saturating_add(size.saturating_mul(ratio))
    })
}

/// The header of the first CSV file, which every other file of the input must repeat.
struct FirstHeader {
    names: Vec<String>,
    /// The file's path or URI.
    file: String,
}

impl FirstHeader {
    /// Refuses the header `names` of `file` unless it is the first file's: checked before the
    /// file is cut, so that a mismatch costs one header.
    fn check(&self, file: &str, names: &[String]) -> Result<()> {
        if self.names == names {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{file} has {} columns (header digest {}), but the first input file, {}, has {} \
             (header digest {}); all files of one input must share a header",
            names.len(),
            header_digest(names),
            self.file,
            self.names.len(),
            header_digest(&self.names)
        )))
    }
}

/// A short digest of a CSV header, to tell two headers apart in a message without quoting them.
fn header_digest(names: &[String]) -> String {
    let mut h = sha2::Sha256::new();
    for name in names {
        h.update(name.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..4])
}

/// A Parquet input whose footer the reader refuses (truncated, another format under a
/// `.parquet` name) is the job's input at fault, not the machine: the job is refused, naming
/// the file, instead of failing as if a store had. I/O trouble stays what it is.
fn refused_input(e: orch_data::DataError) -> Error {
    match e.category() {
        ErrorCategory::Permanent => Error::Invalid(format!("spec.input.uri: {e}")),
        _ => e.into(),
    }
}

/// A budget error as the driver reports it: a refused job (the operator does not retry it).
fn over(limit: OverBudget) -> Error {
    Error::Invalid(limit.to_string())
}

/// The size of each input file: listed for objects, from the filesystem for local files.
async fn sizes(sources: &[Source]) -> Result<Vec<u64>> {
    let local: Vec<(usize, PathBuf)> = sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Source::Local(path) => Some((i, path.clone())),
            Source::Remote { .. } => None,
        })
        .collect();
    let local = blocking("sizing the input", move || {
        local
            .into_iter()
            .map(|(i, path)| match std::fs::metadata(&path) {
                Ok(meta) => Ok((i, meta.len())),
                Err(source) => Err(orch_core::Error::Read { path, source }.into()),
            })
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    let mut sizes: Vec<u64> = sources
        .iter()
        .map(|s| match s {
            Source::Remote { size, .. } => *size,
            Source::Local(_) => 0,
        })
        .collect();
    for (i, size) in local {
        sizes[i] = size;
    }
    Ok(sizes)
}

/// Runs blocking planning work on tokio's blocking pool. A panic there fails the plan; its
/// payload is not shown, as it may hold input content.
async fn blocking<T, F>(what: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let how = if e.is_panic() {
            "panicked"
        } else {
            "was cancelled"
        };
        Error::Backend(BackendError::message(
            ErrorCategory::Infrastructure,
            format!("{what} {how}"),
        ))
    })?
}

/// Decompresses `input` into the object `key` of `objects` while cutting it: the decoder's
/// output goes to the partitioner and, a chunk at a time, to an upload running alongside.
async fn decompress_and_cut(
    input: Input,
    format: &Format,
    opts: PartitionOptions,
    batch_size: BatchSize,
    uri: &str,
    objects: Arc<dyn ObjectStore>,
    key: &str,
) -> Result<Cut> {
    let (tx, rx) = mpsc::channel(2);
    let stopped = Arc::new(AtomicBool::new(false));
    let upload = Upload {
        tx,
        buf: Vec::with_capacity(UPLOAD_CHUNK),
        stopped: stopped.clone(),
    };
    let mut chunks = Chunks(rx);
    let format = format.clone();
    let uri = uri.to_string();
    // Parquet is only decompressed here (its footer is read after); the others are cut too.
    let work = blocking("planning the input", move || {
        input.cut(&format, opts, batch_size, &uri, Some(upload))
    });
    let (cut, uploaded) = tokio::join!(work, objects.put_stream(key, &mut chunks));
    match (cut, uploaded) {
        (Ok(cut), Ok(())) => Ok(cut),
        (Ok(_), Err(e)) => Err(e.into()),
        // The upload failed first, and the planner stopped because of it.
        (Err(_), Err(e)) if stopped.load(Ordering::SeqCst) => Err(e.into()),
        (Err(e), _) => Err(e),
    }
}

/// The input formats, as the planner cuts them.
#[derive(Clone, PartialEq)]
enum Format {
    Jsonl,
    Csv(CsvOptions),
    Parquet,
}

/// What cutting one file gave.
struct Cut {
    plan: PartitionPlan,
    /// The header of a CSV file.
    columns: Option<Vec<String>>,
    /// The bytes a compressed file decompressed to (0 for others).
    decompressed: u64,
}

/// Each file is cut with what is left of the budget: a limit it passes is reported as the
/// job's, and as a refusal of the job.
fn of_the_job(e: Error, budget: &PlanBudget) -> Error {
    let limit = match &e {
        Error::Core(orch_core::Error::OverBudget(limit)) => *limit,
        Error::Data(orch_data::DataError::OverBudget(limit)) => *limit,
        _ => return e,
    };
    over(match (limit, budget.max_batches) {
        (OverBudget::Batches { .. }, Some(max)) => OverBudget::Batches { max },
        (other, _) => other,
    })
}

/// Which file of the input [`cut_file`] cuts.
struct File<'a> {
    index: usize,
    source: &'a Source,
    file_name: &'a str,
    batch_size: BatchSize,
}

/// Cuts one file off the async workers; a compressed one is first (or, JSONL and CSV, at the
/// same time) decompressed into the job's storage when there is a `target`.
async fn cut_file(
    input: Input,
    file: File<'_>,
    format: &Format,
    opts: PartitionOptions,
    target: Option<&PlanTarget<'_>>,
    handle: &Handle,
) -> Result<Cut> {
    let batch_size = file.batch_size;
    match (input.compression, target) {
        (Some(_), Some(target)) => {
            let stem = file
                .file_name
                .rsplit_once('.')
                .map(|(s, _)| s)
                .unwrap_or(file.file_name);
            let key = format!(
                "{}{:05}-{stem}",
                decompressed_prefix(target.job),
                file.index
            );
            let objects = target.backends.objects.clone();
            let uri = match objects.local_path(&key) {
                Some(path) => Location::Local(path).to_uri(),
                None => format!("{}/{key}", target.storage_uri.trim_end_matches('/')),
            };
            let (name, trip) = (input.name.clone(), input.trip.clone());
            let cut =
                decompress_and_cut(input, format, opts, batch_size, &uri, objects.clone(), &key)
                    .await?;
            if *format != Format::Parquet {
                return Ok(cut);
            }
            // The footer is at the end of the decompressed bytes: read it from the stored
            // object, by range, once that is complete.
            let stored = Input {
                name,
                raw: Raw::Remote {
                    store: objects,
                    key,
                    size: cut.decompressed,
                    handle: handle.clone(),
                },
                compression: None,
                limit: None,
                first_header: None,
                trip,
            };
            let plan = blocking("planning the input", move || {
                stored.cut_parquet(&uri, batch_size, opts.max_batches)
            })
            .await?;
            Ok(Cut { plan, ..cut })
        }
        (Some(_), None) if *format == Format::Parquet => Err(Error::Invalid(format!(
            "{}: a dry run cannot plan compressed Parquet input, whose footer is at the end of \
             the decompressed data",
            input.name
        ))),
        _ => {
            let uri = match file.source {
                Source::Local(path) => Location::Local(path.clone()).to_uri(),
                Source::Remote { uri, .. } => uri.clone(),
            };
            let format = format.clone();
            blocking("planning the input", move || {
                input.cut(&format, opts, batch_size, &uri, None)
            })
            .await
        }
    }
}

/// A limit on decompressed bytes: what is left of the job's budget, and the budget.
#[derive(Debug, Clone, Copy)]
struct Limit {
    remaining: u64,
    max: u64,
}

/// One input file as the blocking planner reads it.
struct Input {
    /// The file's path or URI, for messages.
    name: String,
    raw: Raw,
    compression: Option<Compression>,
    /// Set for compressed files when the budget bounds decompressed bytes.
    limit: Option<Limit>,
    /// For CSV files after the first.
    first_header: Option<Arc<FirstHeader>>,
    trip: Trip,
}

impl Input {
    /// Cuts the file (after decompressing it), sending the decompressed bytes to `upload` when
    /// given. Parquet is only decompressed, and only when compressed: its batches come from
    /// its footer (see [`Input::cut_parquet`]).
    fn cut(
        &self,
        format: &Format,
        opts: PartitionOptions,
        batch_size: BatchSize,
        uri: &str,
        upload: Option<Upload>,
    ) -> Result<Cut> {
        let decompressed = |plan: &PartitionPlan| {
            if self.compression.is_some() {
                plan.bytes
            } else {
                0
            }
        };
        match format {
            Format::Parquet if self.compression.is_none() => Ok(Cut {
                plan: self.cut_parquet(uri, batch_size, opts.max_batches)?,
                columns: None,
                decompressed: 0,
            }),
            Format::Parquet => {
                let mut reader = Tee::new(self.open()?, upload);
                let copied = std::io::copy(&mut reader, &mut std::io::sink());
                let copied = self.settle(copied.map_err(|e| orch_core::Error::Io {
                    path: PathBuf::from(&self.name),
                    source: e,
                }))?;
                reader.finish().map_err(|e| self.io_failure(e))?;
                Ok(Cut {
                    plan: PartitionPlan::default(),
                    columns: None,
                    decompressed: copied,
                })
            }
            Format::Jsonl => {
                let mut reader = Tee::new(self.open()?, upload);
                let plan = self.settle(partition::partition_jsonl(&mut reader, uri, opts))?;
                reader.finish().map_err(|e| self.io_failure(e))?;
                Ok(Cut {
                    decompressed: decompressed(&plan),
                    plan,
                    columns: None,
                })
            }
            Format::Csv(csv) => {
                // The header is read on its own (the start of the file, read again below):
                // the cut needs to know where the data starts.
                let (names, start) = self.settle(csv_input::read_header(self.open()?, csv))?;
                if let Some(first) = &self.first_header {
                    first.check(&self.name, &names)?;
                }
                let mut reader = Tee::new(self.open()?, upload);
                let plan =
                    self.settle(csv_input::partition_csv(&mut reader, uri, start, opts, csv))?;
                reader.finish().map_err(|e| self.io_failure(e))?;
                Ok(Cut {
                    decompressed: decompressed(&plan),
                    plan,
                    columns: Some(names),
                })
            }
        }
    }

    /// The batches of an (uncompressed) Parquet file, from its footer read by range.
    fn cut_parquet(
        &self,
        uri: &str,
        batch_size: BatchSize,
        max_batches: Option<u64>,
    ) -> Result<PartitionPlan> {
        let size = self.raw.size()?;
        let mut read = |range: Range<u64>| self.raw.range(range, &self.trip);
        let plan = orch_data::partition_parquet_ranges(
            Path::new(&self.name),
            size,
            &mut read,
            uri,
            batch_size,
            max_batches,
        );
        match plan {
            Err(e) => Err(self.trip.take().unwrap_or_else(|| refused_input(e))),
            Ok(plan) => Ok(plan),
        }
    }

    /// The file's bytes from the start, decompressed when compressed, within the budget.
    fn open(&self) -> Result<Box<dyn Read + Send>> {
        let raw = self.raw.stream(&self.name, &self.trip)?;
        let Some(compression) = self.compression else {
            return Ok(raw);
        };
        let decoder: Box<dyn Read + Send> = match compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(raw).map_err(|e| {
                    Error::Invalid(format!("cannot read {} as zstd: {e}", self.name))
                })?)
            }
        };
        Ok(Box::new(Decoded {
            inner: decoder,
            name: self.name.clone(),
            limit: self.limit,
            read: 0,
            trip: self.trip.clone(),
        }))
    }

    /// The partitioner's result, or the failure under it that made it fail: the partitioner
    /// sees only an `io::Error` where the budget, the decoder or the store failed.
    fn settle<T>(&self, result: orch_core::Result<T>) -> Result<T> {
        match result {
            Ok(value) => Ok(value),
            Err(e) => Err(self.trip.take().unwrap_or(e.into())),
        }
    }

    fn io_failure(&self, e: std::io::Error) -> Error {
        self.trip.take().unwrap_or_else(|| {
            orch_core::Error::Io {
                path: PathBuf::from(&self.name),
                source: e,
            }
            .into()
        })
    }
}

/// Where the bytes of a file come from.
enum Raw {
    Local(PathBuf),
    /// An object, read by ranged GETs; `size` as listed.
    Remote {
        store: Arc<dyn ObjectStore>,
        key: String,
        size: u64,
        handle: Handle,
    },
}

impl Raw {
    fn size(&self) -> Result<u64> {
        match self {
            Raw::Local(path) => Ok(std::fs::metadata(path)
                .map_err(|source| orch_core::Error::Read {
                    path: path.clone(),
                    source,
                })?
                .len()),
            Raw::Remote { size, .. } => Ok(*size),
        }
    }

    /// The bytes from the start. Remote: a task fetches chunks ahead of the reader, a bounded
    /// channel apart.
    fn stream(&self, name: &str, trip: &Trip) -> Result<Box<dyn Read + Send>> {
        match self {
            Raw::Local(path) => {
                let file = std::fs::File::open(path).map_err(|source| orch_core::Error::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(Box::new(Watched {
                    inner: std::io::BufReader::with_capacity(256 << 10, file),
                    trip: trip.clone(),
                }))
            }
            Raw::Remote {
                store,
                key,
                size,
                handle,
            } => {
                let (tx, rx) = mpsc::channel(1);
                handle.spawn(fetch_ahead(
                    store.clone(),
                    key.clone(),
                    name.to_string(),
                    *size,
                    tx,
                ));
                Ok(Box::new(Ranged {
                    rx,
                    chunk: Vec::new(),
                    at: 0,
                    received: 0,
                    size: *size,
                    name: name.to_string(),
                    trip: trip.clone(),
                }))
            }
        }
    }

    /// One range (for a Parquet footer).
    fn range(&self, range: Range<u64>, trip: &Trip) -> std::io::Result<Vec<u8>> {
        if trip.is_stopped() {
            return Err(trip.fail(stopped()));
        }
        match self {
            Raw::Local(path) => {
                let mut file = std::fs::File::open(path)?;
                file.seek(SeekFrom::Start(range.start))?;
                let mut out = Vec::new();
                file.take(range.end.saturating_sub(range.start))
                    .read_to_end(&mut out)?;
                Ok(out)
            }
            Raw::Remote {
                store, key, handle, ..
            } => handle
                .block_on(store.get_range(key, range))
                .map_err(|e| trip.fail(e.into())),
        }
    }
}

fn stopped() -> Error {
    Error::Interrupted
}

/// Reads `size` bytes of `key` in chunks growing from [`FIRST_CHUNK`] to [`MAX_CHUNK`] and
/// sends them in order; stops when the reader is gone.
async fn fetch_ahead(
    store: Arc<dyn ObjectStore>,
    key: String,
    name: String,
    size: u64,
    tx: mpsc::Sender<BackendResult<Vec<u8>>>,
) {
    let mut at = 0u64;
    let mut chunk = FIRST_CHUNK;
    while at < size {
        let end = size.min(at.saturating_add(chunk));
        let read = match store.get_range(&key, at..end).await {
            Ok(bytes) if bytes.len() as u64 == end - at => Ok(bytes),
            // A shorter object than listed: it changed since; planning again lists it again.
            Ok(bytes) => Err(BackendError::message(
                ErrorCategory::Transient,
                format!(
                    "{name} changed while it was planned: listed at {size} bytes, it ends at \
                     byte {}",
                    at + bytes.len() as u64
                ),
            )),
            Err(e) => Err(e),
        };
        let failed = read.is_err();
        if tx.send(read).await.is_err() || failed {
            return;
        }
        at = end;
        chunk = (chunk * 2).min(MAX_CHUNK);
    }
}

/// The reading end of [`fetch_ahead`].
struct Ranged {
    rx: mpsc::Receiver<BackendResult<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    received: u64,
    size: u64,
    name: String,
    trip: Trip,
}

impl Read for Ranged {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.trip.is_stopped() {
                return Err(self.trip.fail(stopped()));
            }
            if self.at < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.at);
                buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.received >= self.size {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    self.chunk = chunk;
                    self.at = 0;
                }
                Some(Err(e)) => return Err(self.trip.fail(e.into())),
                None => {
                    return Err(self.trip.fail(Error::Backend(BackendError::message(
                        ErrorCategory::Infrastructure,
                        format!(
                            "the read of {} stopped at byte {} of {}",
                            self.name, self.received, self.size
                        ),
                    ))));
                }
            }
        }
    }
}

/// A local file's reader that stops when the plan was given up.
struct Watched<R> {
    inner: R,
    trip: Trip,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.trip.is_stopped() {
            return Err(self.trip.fail(stopped()));
        }
        self.inner.read(buf)
    }
}

/// A decoder's output, counted against the budget: reading stops as soon as the count passes
/// the limit, and a decoder error is reported as a corrupt file.
struct Decoded {
    inner: Box<dyn Read + Send>,
    name: String,
    limit: Option<Limit>,
    read: u64,
    trip: Trip,
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Asking for at most one byte past the limit finds it passed without decoding more.
        let want = match self.limit {
            Some(limit) => {
                let left = limit.remaining.saturating_sub(self.read).saturating_add(1);
                buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => buf.len(),
        };
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if self.trip.is_set() => return Err(e),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                return Err(self.trip.fail(Error::Invalid(format!(
                    "cannot decompress {} (at decompressed byte {}): {e}",
                    self.name, self.read
                ))));
            }
        };
        self.read += n as u64;
        if let Some(limit) = self.limit
            && self.read > limit.remaining
        {
            return Err(self
                .trip
                .fail(over(OverBudget::DecompressedBytes { max: limit.max })));
        }
        Ok(n)
    }
}

/// Passes what it reads on to an upload, when there is one.
struct Tee<R> {
    inner: R,
    upload: Option<Upload>,
}

impl<R: Read> Tee<R> {
    fn new(inner: R, upload: Option<Upload>) -> Self {
        Tee { inner, upload }
    }

    /// Ends the upload: the object appears with every byte read.
    fn finish(self) -> std::io::Result<()> {
        match self.upload {
            Some(upload) => upload.finish(),
            None => Ok(()),
        }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(upload) = &mut self.upload {
            upload.write(&buf[..n])?;
        }
        Ok(n)
    }
}

/// What the planner sends to the upload: bytes, then the end. A channel closed without the
/// end means the planner failed, and the upload is abandoned.
enum Chunk {
    Data(Vec<u8>),
    End,
}

/// The planner's end of an upload to the job's storage.
struct Upload {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
    /// Set when the upload went away first (it failed): its error is the one to report.
    stopped: Arc<AtomicBool>,
}

impl Upload {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= UPLOAD_CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(UPLOAD_CHUNK));
            self.send(Chunk::Data(chunk))?;
        }
        Ok(())
    }

    fn send(&self, chunk: Chunk) -> std::io::Result<()> {
        self.tx.blocking_send(chunk).map_err(|_| {
            self.stopped.store(true, Ordering::SeqCst);
            std::io::Error::other("the upload of the decompressed input stopped")
        })
    }

    fn finish(mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.send(Chunk::Data(chunk))?;
        }
        self.send(Chunk::End)
    }
}

/// The store's end of an upload.
struct Chunks(mpsc::Receiver<Chunk>);

#[async_trait::async_trait]
impl ByteSource for Chunks {
    async fn next_chunk(&mut self) -> BackendResult<Option<Vec<u8>>> {
        match self.0.recv().await {
            Some(Chunk::Data(bytes)) => Ok(Some(bytes)),
            Some(Chunk::End) => Ok(None),
            None => Err(BackendError::message(
                ErrorCategory::Transient,
                "planning stopped before the end of the input",
            )),
        }
    }
}

/// The first typed failure under the partitioner (which sees only `io::Error`s), and whether
/// the plan was given up.
#[derive(Clone, Default)]
struct Trip(Arc<TripState>);

#[derive(Default)]
struct TripState {
    first: Mutex<Option<Error>>,
    stopped: AtomicBool,
}

impl Trip {
    /// Keeps `e` (unless an earlier failure is kept) and returns the `io::Error` to pass up.
    fn fail(&self, e: Error) -> std::io::Error {
        let message = e.to_string();
        let mut first = self.0.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        std::io::Error::other(message)
    }

    fn is_set(&self) -> bool {
        self.0
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn take(&self) -> Option<Error> {
        self.0
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// A guard that gives the plan up when dropped: when the plan ends, or its future is
    /// dropped half-way.
    fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }
}

struct StopOnDrop(Trip);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.0.stopped.store(true, Ordering::SeqCst);
    }
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
