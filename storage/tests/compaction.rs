//! Compaction (design.md §3) against a model of every record appended: what it keeps, what it
//! drops, that offsets and values never change, bounded passes, tombstone expiry, readers
//! during and across swaps, and a swap interrupted at each of its steps, then reopened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use sluice_storage::config::Clock;
use sluice_storage::format::{BatchBuilder, Batches};
use sluice_storage::{
    CompactionLimits, CompactionReport, Durability, FaultOp, Faults, Log, LogConfig, Store,
    StoreConfig,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;
const DAY: Duration = Duration::from_secs(86_400);
const DAY_MS: i64 = 86_400_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 64,
        max_batch_bytes: 4096,
        durability: Durability::Never,
        retention_age: None,
        ..LogConfig::default()
    }
}

fn limits(max_map_entries: usize, min_dirty_percent: u8) -> CompactionLimits {
    CompactionLimits {
        max_map_entries,
        min_dirty_percent,
    }
}

/// A record as read back (or as appended, in the model).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

struct Opened {
    store: Store,
    log: Arc<Log>,
    clock: Arc<AtomicI64>,
}

fn open_with(dir: &Path, faults: Faults, max_open_segments: usize, now_ms: i64) -> Opened {
    let (clock, handle) = Clock::manual(now_ms);
    let store = Store::open(
        dir,
        StoreConfig {
            clock,
            faults,
            max_open_segments,
        },
    )
    .unwrap();
    let log = store.open_log("p", config()).unwrap();
    Opened {
        store,
        log,
        clock: handle,
    }
}

fn open(dir: &Path) -> Opened {
    open_with(dir, Faults::default(), 64, START_MS)
}

/// splitmix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What a workload appends.
#[derive(Debug, Clone, Copy)]
struct Workload {
    seed: u64,
    batches: u32,
    keys: u64,
    /// One record in this many is a tombstone.
    tombstone_every: u64,
    /// One record in this many has no key.
    keyless_every: u64,
}

/// Appends `workload` (1–5 records a batch, values naming their record), one ms of the log's
/// clock a batch; records what it appended in `model`. Returns each batch's base offset.
fn append(opened: &Opened, workload: Workload, model: &mut Vec<Rec>) -> Vec<u64> {
    let mut bases = Vec::new();
    for b in 0..workload.batches {
        let r = mix(workload.seed ^ u64::from(b));
        let count = 1 + r % 5;
        let mut builder = BatchBuilder::new();
        let mut records = Vec::new();
        for i in 0..count {
            let x = mix(r ^ (i + 1));
            let key = (!x.is_multiple_of(workload.keyless_every))
                .then(|| format!("k{}", (x >> 8) % workload.keys).into_bytes());
            let value = (key.is_none() || !(x >> 24).is_multiple_of(workload.tombstone_every))
                .then(|| {
                    let mut value = format!("s{}b{b}r{i}:", workload.seed).into_bytes();
                    value.resize(value.len() + (x >> 40) as usize % 60, b'.');
                    value
                });
            builder
                .push(START_MS, key.as_deref(), value.as_deref(), &[])
                .unwrap();
            records.push((key, value));
        }
        let mut batch = builder.finish().unwrap();
        opened.clock.fetch_add(1, Ordering::Relaxed);
        let info = opened.log.append(&mut batch).unwrap();
        bases.push(info.base_offset);
        for (i, (key, value)) in records.into_iter().enumerate() {
            model.push(Rec {
                offset: info.base_offset + i as u64,
                key,
                value,
            });
        }
    }
    bases
}

/// Every record from the earliest offset to the high watermark, each batch checked in full
/// as a stored batch; offsets strictly increase.
fn read_all(log: &Log) -> Vec<Rec> {
    let high_watermark = log.high_watermark();
    let mut offset = log.earliest_offset();
    let mut out: Vec<Rec> = Vec::new();
    while offset < high_watermark {
        let read = log.read(offset, 1 << 20).unwrap();
        assert!(
            !read.batches.is_empty(),
            "nothing at {offset} below {high_watermark}"
        );
        for framed in Batches::new(&read.batches) {
            let framed = framed.unwrap();
            let view = framed.stored().unwrap();
            for record in view.records() {
                if record.offset < offset {
                    continue;
                }
                if let Some(last) = out.last() {
                    assert!(
                        record.offset > last.offset,
                        "offsets go back at {}",
                        record.offset
                    );
                }
                out.push(Rec {
                    offset: record.offset,
                    key: record.key.map(<[u8]>::to_vec),
                    value: record.value.map(<[u8]>::to_vec),
                });
            }
            offset = offset.max(framed.prefix.next_offset());
        }
    }
    out
}

/// The latest value of each key, replaying `records` in order (a tombstone deletes).
fn fold(records: &[Rec]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    for record in records {
        if let Some(key) = &record.key {
            match &record.value {
                Some(value) => map.insert(key.clone(), value.clone()),
                None => map.remove(key),
            };
        }
    }
    map
}

/// Compaction passes until one does nothing or everything cleanable is clean (at most 1000).
fn compact_fully(
    log: &Log,
    now_ms: i64,
    limits: CompactionLimits,
) -> (CompactionReport, Vec<CompactionReport>) {
    let mut reports = Vec::new();
    for _ in 0..1000 {
        let report = log.compact(now_ms, DAY, &limits).unwrap();
        reports.push(report);
        if !report.ran || report.cleaned_to >= report.cleanable_end {
            return (report, reports);
        }
    }
    panic!(
        "compaction did not finish in 1000 passes: {:?}",
        reports.last()
    );
}

/// Checks records read back after compaction against every record appended: the same latest
/// value per key; only appended records, unchanged, at their offsets; every keyless record;
/// below `cleaned_to` at most one record per key, the latest one there (unless a later one
/// past it took its place), and no tombstone if they all expired.
fn check(read: &[Rec], model: &[Rec], cleaned_to: u64, tombstones_expired: bool) {
    assert_eq!(fold(read), fold(model), "latest value per key");
    let by_offset: HashMap<u64, &Rec> = model.iter().map(|r| (r.offset, r)).collect();
    for record in read {
        assert_eq!(
            Some(&record),
            by_offset.get(&record.offset),
            "record at {}",
            record.offset
        );
    }
    let keyless = |records: &[Rec]| records.iter().filter(|r| r.key.is_none()).count();
    assert_eq!(keyless(read), keyless(model), "keyless records");
    // The latest record of each key below cleaned_to, and whether a later one follows.
    let mut latest_below: HashMap<&[u8], &Rec> = HashMap::new();
    let mut later: HashMap<&[u8], bool> = HashMap::new();
    for record in model {
        let Some(key) = record.key.as_deref() else {
            continue;
        };
        if record.offset < cleaned_to {
            latest_below.insert(key, record);
        } else {
            later.insert(key, true);
        }
    }
    let mut seen_below: HashMap<&[u8], u64> = HashMap::new();
    for record in read.iter().filter(|r| r.offset < cleaned_to) {
        let Some(key) = record.key.as_deref() else {
            continue;
        };
        assert!(
            seen_below.insert(key, record.offset).is_none(),
            "key {key:?} twice below {cleaned_to}"
        );
        assert_eq!(
            latest_below.get(key),
            Some(&record),
            "not the latest of its key"
        );
        if tombstones_expired {
            assert!(
                record.value.is_some(),
                "an expired tombstone at {}",
                record.offset
            );
        }
    }
    for (key, record) in latest_below {
        let expected = record.value.is_some() || !tombstones_expired;
        if expected && !later.contains_key(key) {
            assert!(
                seen_below.contains_key(key),
                "key {key:?} lost below {cleaned_to}"
            );
        }
    }
}

/// Closes the store cleanly, its log with it (a log dropped first would not be closed: that
/// is a crash).
fn close(opened: Opened) {
    let Opened { store, log, .. } = opened;
    store.close().unwrap();
    assert!(log.is_closed());
}

fn size(log: &Log) -> u64 {
    log.size_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn compaction_keeps_the_latest_record_per_key_as_the_model_says(
        seed in any::<u64>(),
        batches in 100_u32..400,
        keys in 1_u64..80,
        tombstone_every in 2_u64..12,
        keyless_every in 3_u64..30,
        max_map_entries in 1_usize..120,
        min_dirty_percent in prop_oneof![Just(0_u8), Just(50_u8)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(dir.path());
        let workload = Workload { seed, batches, keys, tombstone_every, keyless_every };
        let limits = limits(max_map_entries, min_dirty_percent);
        let mut model = Vec::new();
        append(&opened, workload, &mut model);
        let before = size(&opened.log);
        let now = opened.clock.load(Ordering::Relaxed);
        let (last, _) = compact_fully(&opened.log, now, limits);
        check(&read_all(&opened.log), &model, last.cleaned_to, false);
        prop_assert!(size(&opened.log) <= before);

        // More appends, then compaction again.
        append(&opened, Workload { seed: seed ^ 1, ..workload }, &mut model);
        let now = opened.clock.load(Ordering::Relaxed);
        let (last, _) = compact_fully(&opened.log, now, limits);
        check(&read_all(&opened.log), &model, last.cleaned_to, false);

        // Two days on, every tombstone expired: a pass is due and drops them.
        let later = now + 2 * DAY_MS;
        let (last, _) = compact_fully(&opened.log, later, limits);
        let read = read_all(&opened.log);
        check(&read, &model, last.cleaned_to, true);

        // A clean close and a crash keep it all.
        close(opened);
        let opened = open(dir.path());
        prop_assert_eq!(&read_all(&opened.log), &read);
        drop(opened);
        let opened = open(dir.path());
        prop_assert_eq!(&read_all(&opened.log), &read);
        // Nothing left to do: the checkpoint says it is all clean.
        let report = opened.log.compact(later, DAY, &limits).unwrap();
        prop_assert!(!report.ran || report.segments_replaced == 0, "{:?}", report);
    }
}

#[test]
fn a_full_map_compacts_in_bounded_passes_down_to_inside_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opened = open(dir.path());
    let mut model = Vec::new();
    // 120 distinct keys, a few updates each: more keys in a segment than the map holds.
    let workload = Workload {
        seed: 7,
        batches: 250,
        keys: 120,
        tombstone_every: 9,
        keyless_every: 11,
    };
    append(&opened, workload, &mut model);
    let now = opened.clock.load(Ordering::Relaxed);
    let (last, reports) = compact_fully(&opened.log, now, limits(10, 0));
    assert!(reports.len() > 10, "{} passes", reports.len());
    // Each pass makes progress, some ending inside a segment.
    let mut cleaned_to = 0;
    for report in &reports {
        assert!(report.ran);
        assert!(report.keys_mapped <= 10);
        assert!(report.cleaned_to > cleaned_to, "{report:?}");
        cleaned_to = report.cleaned_to;
    }
    let bases = opened.log.segment_bases();
    assert!(
        reports.iter().any(|r| !bases.contains(&r.cleaned_to)),
        "no pass ended inside a segment"
    );
    check(&read_all(&opened.log), &model, last.cleaned_to, false);

    // The same as one pass with a map that holds every key.
    let other = tempfile::tempdir().unwrap();
    let again = open(other.path());
    let mut same = Vec::new();
    append(&again, workload, &mut same);
    compact_fully(&again.log, now, limits(1_000, 0));
    assert_eq!(read_all(&again.log), read_all(&opened.log));
}

/// A record's key and value.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Appends one batch of `(key, value)` records at the log's clock, then moves it by `ms`.
fn put(opened: &Opened, records: &[(Option<&str>, Option<&str>)], ms: i64, model: &mut Vec<Rec>) {
    let mut builder = BatchBuilder::new();
    for (key, value) in records {
        builder
            .push(
                START_MS,
                key.map(str::as_bytes),
                value.map(str::as_bytes),
                &[],
            )
            .unwrap();
    }
    let info = opened.log.append(&mut builder.finish().unwrap()).unwrap();
    for (i, (key, value)) in records.iter().enumerate() {
        model.push(Rec {
            offset: info.base_offset + i as u64,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
        });
    }
    opened.clock.fetch_add(ms, Ordering::Relaxed);
}

/// Fills the active segment with keyless filler until it rolls.
fn roll(opened: &Opened, model: &mut Vec<Rec>) {
    let segments = opened.log.segment_count();
    while opened.log.segment_count() == segments {
        let filler = "f".repeat(500);
        put(opened, &[(None, Some(filler.as_str()))], 0, model);
    }
}

#[test]
fn tombstones_outlive_what_they_delete_by_delete_retention_of_broker_time() {
    let dir = tempfile::tempdir().unwrap();
    let opened = open(dir.path());
    let mut model = Vec::new();
    let hour = Duration::from_secs(3600);
    let hour_ms = 3_600_000;
    put(
        &opened,
        &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
        10,
        &mut model,
    );
    put(&opened, &[(None, Some("no key"))], 10, &mut model);
    put(&opened, &[(Some("a"), None)], 0, &mut model);
    let tombstone_ms = opened.clock.load(Ordering::Relaxed);
    roll(&opened, &mut model);
    let limits = limits(1_000, 0);
    let compact = |now_ms: i64| opened.log.compact(now_ms, hour, &limits).unwrap();
    let keys = |log: &Log| -> Vec<KeyValue> {
        read_all(log)
            .into_iter()
            .filter(|r| r.value.as_deref().is_none_or(|v| !v.starts_with(b"f")))
            .map(|r| (r.key, r.value))
            .collect()
    };
    let b = |s: &str| Some(s.as_bytes().to_vec());

    // The tombstone replaced a's value; it stays, with the record without a key.
    let report = compact(tombstone_ms);
    assert!(report.ran);
    assert_eq!(report.records_superseded, 1);
    assert_eq!(report.tombstones_expired, 0);
    let expected = vec![(b("b"), b("1")), (None, b("no key")), (b("a"), None)];
    assert_eq!(keys(&opened.log), expected);
    // A ms short of an hour after its append: still there, and no pass is due.
    let report = compact(tombstone_ms + hour_ms - 1);
    assert!(!report.ran, "{report:?}");
    assert_eq!(keys(&opened.log), expected);
    // An hour after its append, by the log's (broker's) clock: gone.
    let report = compact(tombstone_ms + hour_ms);
    assert!(report.ran);
    assert_eq!(report.tombstones_expired, 1);
    assert_eq!(
        keys(&opened.log),
        vec![(b("b"), b("1")), (None, b("no key"))]
    );
    assert_eq!(fold(&read_all(&opened.log)), fold(&model));
}

#[test]
fn readers_keep_their_slices_and_reads_during_compaction_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    // Two open segments at most: readers miss the cache all the time and reopen segments
    // while compaction swaps them.
    let opened = open_with(dir.path(), Faults::default(), 2, START_MS);
    let mut model = Vec::new();
    let workload = Workload {
        seed: 3,
        batches: 300,
        keys: 40,
        tombstone_every: 7,
        keyless_every: 13,
    };
    append(&opened, workload, &mut model);
    let held = opened.log.read(0, 1 << 20).unwrap().batches;
    let held_copy = held.to_vec();
    let expected = fold(&model);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        let read = read_all(&opened.log);
                        assert_eq!(fold(&read), expected);
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let now = opened.clock.load(Ordering::Relaxed);
        // A small map: many passes, many swaps.
        compact_fully(&opened.log, now, limits(8, 0));
        compact_fully(&opened.log, now + 2 * DAY_MS, limits(8, 0));
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
    });
    // The slice read before compaction still holds the bytes it had: its segment's map
    // outlives the segment.
    assert_eq!(&held[..], &held_copy[..]);
    assert_ne!(
        &opened.log.read(0, 1 << 20).unwrap().batches[..],
        &held_copy[..]
    );
    assert!(opened.log.stats().compacted_segments > 0);
}

/// Copies the flat files of `from/p` (and the store's root files) to `to`.
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("p")).unwrap();
    for sub in ["", "p"] {
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
}

#[test]
fn a_swap_interrupted_at_each_step_leaves_the_old_or_the_new_segments() {
    // A log compacted once (small segments) and appended to: the next pass merges segments,
    // so its swaps unlink replaced segments too.
    let base = tempfile::tempdir().unwrap();
    let mut model = Vec::new();
    let now = {
        let opened = open(base.path());
        let workload = Workload {
            seed: 11,
            batches: 300,
            keys: 30,
            tombstone_every: 5,
            keyless_every: 17,
        };
        append(&opened, workload, &mut model);
        let now = opened.clock.load(Ordering::Relaxed);
        compact_fully(&opened.log, now, limits(1_000, 0));
        append(
            &opened,
            Workload {
                seed: 12,
                ..workload
            },
            &mut model,
        );
        let now = opened.clock.load(Ordering::Relaxed);
        close(opened);
        now
    };
    let later = now + 2 * DAY_MS;
    let full = limits(1_000, 0);
    let old = read_all(&open(base.path()).log);
    let new = {
        let copy = tempfile::tempdir().unwrap();
        copy_log(base.path(), copy.path());
        let opened = open(copy.path());
        let (_, reports) = compact_fully(&opened.log, later, full);
        assert!(
            reports[0].segments_replaced > reports[0].segments_written,
            "{reports:?}"
        );
        read_all(&opened.log)
    };
    assert_ne!(old, new);
    assert_eq!(fold(&old), fold(&new));
    // Every record of the new log, none that is not in the old, each offset once.
    let between = |read: &[Rec], when: &str| {
        let olds: HashMap<u64, &Rec> = old.iter().map(|r| (r.offset, r)).collect();
        for record in read {
            assert_eq!(olds.get(&record.offset), Some(&record), "{when}");
        }
        let offsets: std::collections::HashSet<u64> = read.iter().map(|r| r.offset).collect();
        for record in &new {
            assert!(
                offsets.contains(&record.offset),
                "{when}: {} lost",
                record.offset
            );
        }
        assert_eq!(fold(read), fold(&new), "{when}");
    };

    // (operation, path pattern, whether the swap has committed when it fails)
    let steps = [
        (FaultOp::Write, ".log.cleaned", false),
        (FaultOp::Sync, ".log.cleaned", false),
        (FaultOp::Sync, ".timeindex.cleaned", false),
        (FaultOp::Rename, ".swap", false),
        (FaultOp::Unlink, ".index", true),
        (FaultOp::Unlink, ".log", true),
        (FaultOp::Rename, ".timeindex", true),
        (FaultOp::Rename, ".log", true),
    ];
    for (op, pattern, committed) in steps {
        let when = format!("{op:?} {pattern}");
        let dir = tempfile::tempdir().unwrap();
        copy_log(base.path(), dir.path());
        let faults = Faults::armed();
        let opened = open_with(dir.path(), faults.clone(), 64, now);
        faults.fail(op, pattern, 1);
        let failed = opened.log.compact(later, DAY, &full);
        assert!(failed.is_err(), "{when}: {failed:?}");
        assert_eq!(opened.log.is_poisoned(), committed, "{when}");
        if !committed {
            // Nothing changed for readers, and the next pass works.
            between(&read_all(&opened.log), &when);
        }
        // Crash.
        drop(opened);
        let opened = open(dir.path());
        between(&read_all(&opened.log), &when);
        compact_fully(&opened.log, later, full);
        assert_eq!(read_all(&opened.log), new, "{when}");
        let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("p"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".cleaned") || name.ends_with(".swap"))
            .collect();
        assert!(leftovers.is_empty(), "{when}: {leftovers:?}");
    }
}

#[test]
fn the_active_segment_and_unreadable_data_are_never_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let opened = open(dir.path());
    let mut model = Vec::new();
    for i in 0..20 {
        put(
            &opened,
            &[(Some("k"), Some(&format!("v{i}")))],
            1,
            &mut model,
        );
    }
    // One segment, the active one: nothing to do.
    let report = opened
        .log
        .compact(START_MS + DAY_MS, DAY, &limits(10, 0))
        .unwrap();
    assert!(!report.ran);
    assert_eq!(read_all(&opened.log), model);
    drop(opened);

    // Under fsync=always the high watermark waits for a sync: a sealed segment past it waits
    // too.
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = Clock::manual(START_MS);
    let store = Store::open(
        dir.path(),
        StoreConfig {
            clock,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let log = store
        .open_log(
            "p",
            LogConfig {
                durability: Durability::Always,
                ..config()
            },
        )
        .unwrap();
    let value = "v".repeat(1000);
    for _ in 0..10 {
        let mut builder = BatchBuilder::new();
        builder
            .push(START_MS, Some(b"k"), Some(value.as_bytes()), &[])
            .unwrap();
        log.append(&mut builder.finish().unwrap()).unwrap();
    }
    assert!(log.segment_count() > 1);
    assert_eq!(log.high_watermark(), 0);
    let report = log.compact(START_MS, DAY, &limits(10, 0)).unwrap();
    assert!(!report.ran);
    log.flush().unwrap();
    let report = log.compact(START_MS, DAY, &limits(10, 0)).unwrap();
    assert!(report.ran && report.records_superseded > 0, "{report:?}");
}

#[test]
fn a_damaged_sealed_segment_is_reported_and_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Vec::new();
    let opened = open(dir.path());
    let workload = Workload {
        seed: 5,
        batches: 150,
        keys: 20,
        tombstone_every: 9,
        keyless_every: 9,
    };
    append(&opened, workload, &mut model);
    close(opened);
    // One bit of a record in the first segment, the CRC left as it was.
    let segment = dir.path().join("p/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[200] ^= 0x04;
    std::fs::write(&segment, &bytes).unwrap();
    let opened = open(dir.path());
    let before = opened.log.segment_bases();
    match opened
        .log
        .compact(START_MS + 2 * DAY_MS, DAY, &limits(1_000, 0))
    {
        Err(sluice_storage::Error::Corrupt { path, .. }) => assert_eq!(path, segment),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was swapped, nothing is left behind, and the log still takes writes.
    assert_eq!(opened.log.segment_bases(), before);
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
    assert!(!opened.log.is_poisoned());
    let leftovers = std::fs::read_dir(dir.path().join("p"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".cleaned")
        })
        .count();
    assert_eq!(leftovers, 0);
    append(
        &opened,
        Workload {
            seed: 6,
            ..workload
        },
        &mut model,
    );
}

// ---------------------------------------------------------------------------------------------
// Fixtures: a log written before compaction existed, and one compacted by version 1.

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The workload both fixtures hold.
fn fixture_workload() -> Workload {
    Workload {
        seed: 2026,
        batches: 120,
        keys: 12,
        tombstone_every: 6,
        keyless_every: 9,
    }
}

/// Writes the fixtures: `plain` (closed cleanly after the workload) and `compacted` (the same,
/// then compacted with every tombstone expired).
#[test]
#[ignore = "writes into the source tree; run by hand to regenerate the fixtures"]
fn regenerate_fixtures() {
    for name in ["plain", "compacted"] {
        let dir = fixtures().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let opened = open(&dir);
        let mut model = Vec::new();
        append(&opened, fixture_workload(), &mut model);
        if name == "compacted" {
            let later = opened.clock.load(Ordering::Relaxed) + 2 * DAY_MS;
            compact_fully(&opened.log, later, limits(1_000, 0));
        }
        close(opened);
        std::fs::remove_file(dir.join("LOCK")).unwrap();
    }
}

/// A log written by the code before compaction (the append path is unchanged by it; see
/// `regenerate_fixtures`) opens, reads every record and compacts; a log compacted by format
/// version 1 reads back exactly what that compaction kept.
#[test]
fn fixtures_of_earlier_logs_read_back() {
    let mut model = Vec::new();
    let bases = {
        let scratch = tempfile::tempdir().unwrap();
        append(&open(scratch.path()), fixture_workload(), &mut model)
    };
    let plain = tempfile::tempdir().unwrap();
    copy_log(&fixtures().join("plain"), plain.path());
    let opened = open(plain.path());
    assert!(opened.log.recovery().clean);
    assert_eq!(read_all(&opened.log), model);
    let later = START_MS + 2 * DAY_MS;
    let (last, _) = compact_fully(&opened.log, later, limits(1_000, 0));
    let compacted_now = read_all(&opened.log);
    check(&compacted_now, &model, last.cleaned_to, true);

    let compacted = tempfile::tempdir().unwrap();
    copy_log(&fixtures().join("compacted"), compacted.path());
    let opened = open(compacted.path());
    assert_eq!(read_all(&opened.log), compacted_now);
    // Its time index kept the append times (batch b was appended at START_MS + b + 1): a
    // search for batch 60's time lands past the start and no later than the first record
    // kept from batch 60 on.
    let first_kept = compacted_now
        .iter()
        .find(|r| r.offset >= bases[60])
        .map(|r| r.offset)
        .unwrap();
    let found = opened.log.offset_for_time(START_MS + 61).unwrap().unwrap();
    assert!(found > 0 && found <= first_kept, "{found} vs {first_kept}");
}
