//! Storage benches: Sluice's log against the physical reference for the same bytes.
//!
//! - `append`: [`Log::append`] of 16 KiB and 1 MiB batches of 1 KiB records under
//!   [`Durability::Never`] (page cache only), against `write_all` of the same bytes to a plain
//!   file (`raw_write`).
//! - `append_durable`: append then [`Log::flush`] (fdatasync) per 64 KiB batch under
//!   [`Durability::Always`], against `write_all` + `sync_data` per 64 KiB (`raw_write_fdatasync`).
//! - `read`: [`Log::read`] of 1 MiB of whole batches from a warm segment, each batch checked
//!   with [`BatchView::with_checksum`] (header and CRC: the consumer's check of a batch the
//!   broker validated in full on produce) and every record's key and value touched
//!   (`sluice_scan`), against copying 1 MiB between two preallocated buffers (`memcpy`).
//! - `compaction`: [`Log::compact`] of one sealed 16 MiB segment of 1 KiB records in which
//!   every key appears twice (half the records superseded), as a pass does it — validate and
//!   map every record, rewrite the kept half, fsync the new files, swap them in, write the
//!   checkpoint — against `std::fs::copy` of the same segment file plus `fsync`
//!   (`copy_fsync`): the physical cost of rewriting the segment at all.
//!
//! All files live in one temporary directory under the system temp directory, removed at exit.
//!
//! How writes stay bounded and fair: each timed run (`iter_custom`) writes into a fresh
//! directory — a new store and log, or a new file — and, after [`FILE_CAP_BYTES`], stops the
//! clock, drops and deletes it and starts another. Both sides of a comparison therefore do the
//! same work: the same bytes, written sequentially from position 0 of a new file into newly
//! allocated page-cache pages, never more than [`FILE_CAP_BYTES`] per file (so the log never
//! rolls: segments are 1 GiB), and the dirty pages are discarded by the unlink rather than
//! written back, so background writeback does not land in one side's samples and not the
//! other's. Opening and deleting (Sluice: store and segment creation, raw: `File::create`) is
//! outside the clock on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use sluice_benches::{batch_of, pseudo_random_bytes};
use sluice_storage::format::{BatchBuilder, Batches};
use sluice_storage::{CompactionLimits, Durability, Log, LogConfig, Store, StoreConfig};
use std::cell::Cell;
use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of each record in every batch (key, value and record framing).
const RECORD_BYTES: usize = 1024;

/// Segment size of every bench log: larger than [`FILE_CAP_BYTES`], so no bench rolls.
const SEGMENT_BYTES: u64 = 1 << 30;

/// Bytes written to one log or file before the bench swaps it for a fresh one, off the clock.
const FILE_CAP_BYTES: u64 = 256 << 20;

/// Bytes one scan reads (`max_bytes` of [`Log::read`]).
const READ_BYTES: u64 = 1 << 20;

/// Bytes of the log the read bench fills before it scans.
const READ_LOG_BYTES: usize = 4 << 20;

/// Size of the batches the read bench appends (and so scans).
const READ_BATCH_BYTES: usize = 16 << 10;

/// The temporary directory every bench writes under, and a counter for fresh subdirectories.
struct Scratch {
    root: tempfile::TempDir,
    next: Cell<u64>,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("sluice-bench-storage-")
            .tempdir()
            .expect("create a temporary directory");
        Self {
            root,
            next: Cell::new(0),
        }
    }

    /// A path under the root that no earlier call returned (not yet created).
    fn fresh_dir(&self) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        self.root.path().join(format!("{n:06}"))
    }
}

fn log_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        durability,
        ..LogConfig::default()
    }
}

/// What a write bench appends to.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A Sluice log; under [`Durability::Always`] each append is followed by a flush.
    Sluice(Durability),
    /// A plain file; with `sync`, each write is followed by `sync_data` (fdatasync).
    Raw { sync: bool },
}

/// An open log or file that batches are appended to.
enum Sink {
    Sluice {
        log: Arc<Log>,
        // Lives as long as the log; dropping both (off the clock) closes the segment's files
        // and maps before its directory is deleted.
        _store: Store,
        flush: bool,
    },
    Raw {
        file: File,
        sync: bool,
    },
}

impl Sink {
    /// Creates a new log or file in `dir`, which must not exist yet.
    fn open(target: Target, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create bench directory");
        match target {
            Target::Sluice(durability) => {
                let store = Store::open(dir, StoreConfig::default()).expect("open store");
                let log = store
                    .open_log("bench/0", log_config(durability))
                    .expect("open log");
                Self::Sluice {
                    log,
                    _store: store,
                    flush: durability == Durability::Always,
                }
            }
            Target::Raw { sync } => {
                // A new, empty file, written from its start on: the same growth as the log's
                // active segment (which is a sparse 1 GiB file filled in order).
                let file = File::create(dir.join("raw.log")).expect("create raw file");
                Self::Raw { file, sync }
            }
        }
    }

    /// Appends `batch`; returns once it is acknowledged (for durable targets: synced).
    fn write(&mut self, batch: &mut [u8]) {
        match self {
            Self::Sluice { log, flush, .. } => {
                // `append` validates (CRC, record walk) and stamps the base offset in place, so
                // the same buffer can be appended again and again.
                black_box(log.append(batch).expect("append"));
                if *flush {
                    black_box(log.flush().expect("flush"));
                }
            }
            Self::Raw { file, sync } => {
                file.write_all(batch).expect("write");
                if *sync {
                    file.sync_data().expect("fdatasync");
                }
            }
        }
    }
}

/// Appends `batch` `iters` times to `target` and returns the time spent appending only: a
/// fresh log or file every [`FILE_CAP_BYTES`], created and deleted off the clock.
fn timed_appends(scratch: &Scratch, target: Target, batch: &mut [u8], iters: u64) -> Duration {
    let per_file = (FILE_CAP_BYTES / batch.len() as u64).max(1);
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_file);
        let dir = scratch.fresh_dir();
        let mut sink = Sink::open(target, &dir);
        let start = Instant::now();
        for _ in 0..n {
            sink.write(batch);
        }
        elapsed += start.elapsed();
        drop(sink);
        std::fs::remove_dir_all(&dir).expect("remove bench directory");
        left -= n;
    }
    elapsed
}

/// Registers `sluice/{label}` and `{raw_name}/{label}` appending `batch_bytes` batches.
fn append_pair(
    group: &mut BenchmarkGroup<'_, WallTime>,
    scratch: &Scratch,
    label: &str,
    batch_bytes: usize,
    durability: Durability,
    raw_name: &str,
) {
    // Built once; both sides write these very bytes.
    let mut batch = batch_of(batch_bytes, RECORD_BYTES).expect("build batch");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    let sync = durability == Durability::Always;
    group.bench_function(BenchmarkId::new("sluice", label), |b| {
        b.iter_custom(|iters| {
            timed_appends(scratch, Target::Sluice(durability), &mut batch, iters)
        });
    });
    group.bench_function(BenchmarkId::new(raw_name, label), |b| {
        b.iter_custom(|iters| timed_appends(scratch, Target::Raw { sync }, &mut batch, iters));
    });
}

fn append(c: &mut Criterion) {
    let scratch = Scratch::new();
    let mut group = c.benchmark_group("append");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    append_pair(
        &mut group,
        &scratch,
        "16KiB",
        16 << 10,
        Durability::Never,
        "raw_write",
    );
    append_pair(
        &mut group,
        &scratch,
        "1MiB",
        1 << 20,
        Durability::Never,
        "raw_write",
    );
    group.finish();
}

fn append_durable(c: &mut Criterion) {
    let scratch = Scratch::new();
    let mut group = c.benchmark_group("append_durable");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    append_pair(
        &mut group,
        &scratch,
        "64KiB",
        64 << 10,
        Durability::Always,
        "raw_write_fdatasync",
    );
    group.finish();
}

/// Validates every batch of `batches` and touches every record's key and value; returns the
/// records and key + value bytes seen.
fn scan(batches: &[u8]) -> (u64, u64) {
    let mut records = 0u64;
    let mut bytes = 0u64;
    for framed in Batches::new(batches) {
        let view = framed.and_then(|f| f.checked()).expect("a valid batch");
        let mut iter = view.records();
        for record in &mut iter {
            records += 1;
            bytes += record.key.map_or(0, |k| k.len() as u64)
                + record.value.map_or(0, |v| v.len() as u64);
        }
        assert!(iter.error().is_none(), "a malformed record");
    }
    (records, bytes)
}

fn read(c: &mut Criterion) {
    let scratch = Scratch::new();
    let dir = scratch.fresh_dir();
    let store = Store::open(&dir, StoreConfig::default()).expect("open store");
    let log = store
        .open_log("bench/0", log_config(Durability::Never))
        .expect("open log");
    let mut batch = batch_of(READ_BATCH_BYTES, RECORD_BYTES).expect("build batch");
    let mut appended = Vec::new();
    for _ in 0..READ_LOG_BYTES / batch.len() {
        appended.push(log.append(&mut batch).expect("append"));
    }
    // Scan from the start of the log's second MiB: an index lookup and a short walk find it.
    // The same 1 MiB every iteration: warm in the page cache, mapped, and (like memcpy's two
    // buffers) in the CPU caches as far as they hold it.
    let batches_per_read = (READ_BYTES / batch.len() as u64) as usize;
    let offset = appended[batches_per_read].base_offset;
    let first = log.read(offset, READ_BYTES).expect("read");
    let read_len = first.batches.len();
    assert!(read_len as u64 <= READ_BYTES && read_len > READ_BYTES as usize / 2);
    let (records, _) = scan(&first.batches);
    assert_eq!(records, appended[1].base_offset * batches_per_read as u64);
    drop(first);

    let mut group = c.benchmark_group("read");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(read_len as u64));
    group.bench_function(BenchmarkId::new("sluice_scan", "1MiB"), |b| {
        b.iter(|| {
            let read = log.read(black_box(offset), READ_BYTES).expect("read");
            black_box(scan(&read.batches))
        });
    });
    let src = pseudo_random_bytes(read_len, 0x00c0_ffee);
    let mut dst = vec![0u8; read_len];
    group.bench_function(BenchmarkId::new("memcpy", "1MiB"), |b| {
        b.iter(|| {
            black_box(&mut dst[..]).copy_from_slice(black_box(&src[..]));
            black_box(&dst);
        });
    });
    group.finish();
    drop(log);
    drop(store);
}

/// Size of the sealed segment the compaction bench compacts.
const COMPACT_SEGMENT_BYTES: u64 = 16 << 20;

/// Records per batch in the compaction bench's segment.
const COMPACT_BATCH_RECORDS: u64 = 16;

/// Copies the flat files of `from` and its subdirectories (a store's data directory) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A data directory holding log `bench/0` with one sealed segment of about
/// [`COMPACT_SEGMENT_BYTES`] in which every key appears twice; returns the segment's path.
fn compaction_source(dir: &Path) -> PathBuf {
    let store = Store::open(dir, StoreConfig::default()).expect("open store");
    let config = LogConfig {
        segment_bytes: COMPACT_SEGMENT_BYTES,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let log = store.open_log("bench/0", config).expect("open log");
    let values = pseudo_random_bytes(2 * RECORD_BYTES, 0x00c0_ffee);
    // Records of a 16 MiB segment, each key twice: the second copy supersedes the first.
    let records = COMPACT_SEGMENT_BYTES / RECORD_BYTES as u64;
    let keys = records / 2;
    let mut index = 0u64;
    while log.segment_count() == 1 {
        let mut builder = BatchBuilder::new();
        for _ in 0..COMPACT_BATCH_RECORDS {
            let key = format!("key-{:012}", index % keys);
            let start = (index as usize * 7) % RECORD_BYTES;
            let value = &values[start..start + RECORD_BYTES - 64];
            builder
                .push(
                    sluice_benches::BENCH_TIMESTAMP_MS,
                    Some(key.as_bytes()),
                    Some(value),
                    &[],
                )
                .expect("push");
            index += 1;
        }
        log.append(&mut builder.finish().expect("finish"))
            .expect("append");
    }
    drop(log);
    store.close().expect("close store");
    dir.join("bench/0/00000000000000000000.log")
}

fn compaction(c: &mut Criterion) {
    let scratch = Scratch::new();
    let source = scratch.fresh_dir();
    let segment = compaction_source(&source);
    let segment_len = std::fs::metadata(&segment).expect("stat").len();
    let limits = CompactionLimits {
        min_dirty_percent: 0,
        ..CompactionLimits::default()
    };
    let day = Duration::from_secs(86_400);
    let mut group = c.benchmark_group("compaction");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(segment_len));
    group.bench_function(BenchmarkId::new("sluice_compact", "16MiB"), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                // A fresh copy of the log each time, off the clock (its pages stay cached, as
                // the copy's source does).
                let dir = scratch.fresh_dir();
                copy_tree(&source, &dir);
                let store = Store::open(&dir, StoreConfig::default()).expect("open store");
                let config = LogConfig {
                    segment_bytes: COMPACT_SEGMENT_BYTES,
                    durability: Durability::Never,
                    ..LogConfig::default()
                };
                let log = store.open_log("bench/0", config).expect("open log");
                let now_ms = sluice_storage::Clock::System.now_ms();
                let start = Instant::now();
                let report = log.compact(now_ms, day, &limits).expect("compact");
                elapsed += start.elapsed();
                assert!(report.records_superseded > 0 && report.segments_replaced == 1);
                drop(log);
                drop(store);
                std::fs::remove_dir_all(&dir).expect("remove bench directory");
            }
            elapsed
        });
    });
    group.bench_function(BenchmarkId::new("copy_fsync", "16MiB"), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let dir = scratch.fresh_dir();
                std::fs::create_dir_all(&dir).expect("create bench directory");
                let target = dir.join("copy.log");
                let start = Instant::now();
                std::fs::copy(&segment, &target).expect("copy");
                File::open(&target)
                    .and_then(|file| file.sync_all())
                    .expect("fsync");
                elapsed += start.elapsed();
                std::fs::remove_dir_all(&dir).expect("remove bench directory");
            }
            elapsed
        });
    });
    group.finish();
}

criterion_group!(benches, append, append_durable, read, compaction);
criterion_main!(benches);
