//! Topics: names, settings and the partition logs they own.
//!
//! Each topic lives in `DATA_DIR/topics/<name>/`: `topic.json` (name, partition count,
//! settings; written to a temporary file, fsynced and renamed) and one log per partition in
//! `<partition>/`. The registry is a `RwLock<HashMap>` read on every request for a lookup and
//! written only to insert or remove a topic, never held across disk work or an `.await`.

use crate::error::{Error, Result};
use crate::inflight::Limiter;
use crate::partition::Partition;
use crate::producers::Sequencing;
use crate::queue::RetryPolicy;
use serde::{Deserialize, Serialize};
use sluice_proto::limits::{MAX_PARTITIONS, topic_name_problem};
use sluice_storage::{CompactionLimits, Log, Store};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Directory under the data directory that holds topics.
const TOPICS_DIR: &str = "topics";
/// The topic's metadata file.
const META_FILE: &str = "topic.json";
/// Prefix of the temporary directory a topic is made in (`~` is in no topic name).
const CREATING_PREFIX: &str = "~creating~";
/// Threads that open (and recover) or close partitions.
const PARTITION_THREADS: usize = 8;
/// Partitions between two progress lines while opening.
const PROGRESS_EVERY: usize = 1000;

mod settings;

use settings::StoredSettings;
pub use settings::{
    Cleanup, DEFAULT_DELETE_RETENTION_MS, DEFAULT_FSYNC_INTERVAL_MS, DEFAULT_RETENTION_MS,
    TopicSettings, multiplier_milli,
};

/// `topic.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicMeta {
    name: String,
    partitions: u32,
    settings: StoredSettings,
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// The name.
    pub name: String,
    /// Effective settings.
    pub settings: TopicSettings,
    /// Partitions, index = partition number.
    pub partitions: Vec<Arc<Partition>>,
    dir: PathBuf,
}

impl Topic {
    /// The partition, or `NOT_FOUND` naming topic and partition.
    pub fn partition(&self, partition: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| Error::UnknownPartition {
                topic: self.name.clone(),
                partition,
                partitions: self.partitions.len() as u32,
            })
    }
}

/// All topics of the broker.
#[derive(Debug)]
pub struct Topics {
    /// The data directory's store; taken (and so unlocked) by `close_all`, even while
    /// requests still hold the registry.
    store: RwLock<Option<Store>>,
    /// The data directory.
    root: PathBuf,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Names being created (reserved while their partitions are made, outside `topics`' lock).
    creating: Mutex<HashSet<String>>,
    /// Per-partition in-flight bound, bytes.
    partition_inflight_bytes: u32,
    /// The broker-wide and per-connection in-flight bounds every partition shares.
    limiter: Arc<Limiter>,
    /// What every partition's idempotent-producer check shares.
    sequencing: Arc<Sequencing>,
    /// How many topics are compacted, so the compactor sleeps (with no timer armed) while
    /// none is.
    compacted: watch::Sender<usize>,
}

/// Checks a topic name: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`; names starting with `__`
/// are internal unless `internal` is set.
pub fn validate_name(name: &str, internal: bool) -> Result<()> {
    match topic_name_problem(name, internal) {
        Some(reason) => Err(Error::invalid("topic", name, reason)),
        None => Ok(()),
    }
}

impl Topics {
    /// Opens every topic found under the data directory (blocking: run it off the runtime),
    /// recovering their partitions in parallel on a bounded pool of threads and logging
    /// progress. Leftovers of topic creations that did not finish are removed.
    pub fn open(store: Store, limiter: Arc<Limiter>, sequencing: Arc<Sequencing>) -> Result<Self> {
        let topics = Self {
            root: store.root().to_path_buf(),
            store: RwLock::new(Some(store)),
            topics: RwLock::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            partition_inflight_bytes: limiter.partition_limit(),
            limiter,
            sequencing,
            compacted: watch::Sender::new(0),
        };
        let root = topics.root.join(TOPICS_DIR);
        if !root.exists() {
            return Ok(topics);
        }
        let mut metas = Vec::new();
        let entries = std::fs::read_dir(&root).map_err(|e| Error::io("list", &root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &root, e))?;
            let path = entry.path();
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(CREATING_PREFIX))
            {
                tracing::warn!(dir = %path.display(), "removing an unfinished topic creation");
                std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
                continue;
            }
            let meta_path = path.join(META_FILE);
            if !meta_path.exists() {
                // A deletion in progress when the broker stopped.
                continue;
            }
            let text = std::fs::read_to_string(&meta_path)
                .map_err(|e| Error::io("read", &meta_path, e))?;
            let meta: TopicMeta = serde_json::from_str(&text).map_err(|e| Error::BadMetadata {
                path: meta_path.clone(),
                reason: e.to_string(),
            })?;
            metas.push(meta);
        }
        let opened = topics.open_topics(&metas)?;
        let mut registry = topics.write();
        for topic in opened {
            registry.insert(topic.name.clone(), Arc::new(topic));
        }
        topics.count_compacted(&registry);
        drop(registry);
        Ok(topics)
    }

    /// Publishes how many of `registry`'s topics are compacted.
    fn count_compacted(&self, registry: &HashMap<String, Arc<Topic>>) {
        let count = registry
            .values()
            .filter(|t| t.settings.cleanup.compacts())
            .count();
        self.compacted.send_replace(count);
    }

    /// Watches how many topics are compacted (the compactor waits for one).
    pub fn watch_compacted(&self) -> watch::Receiver<usize> {
        self.compacted.subscribe()
    }

    /// Opens the partitions of `metas` on [`PARTITION_THREADS`] threads (recovery is mostly
    /// waiting on the disk), logging progress every [`PROGRESS_EVERY`] partitions.
    fn open_topics(&self, metas: &[TopicMeta]) -> Result<Vec<Topic>> {
        let mut settings = Vec::with_capacity(metas.len());
        for meta in metas {
            let path = self.topic_dir(&meta.name).join(META_FILE);
            let topic_settings = meta
                .settings
                .settings()
                .map_err(|reason| Error::BadMetadata { path, reason })?;
            let config = topic_settings.log_config()?;
            settings.push((topic_settings, config));
        }
        let jobs: Vec<(usize, u32)> = metas
            .iter()
            .enumerate()
            .flat_map(|(t, meta)| (0..meta.partitions).map(move |p| (t, p)))
            .collect();
        let total = jobs.len();
        let slots: Vec<Mutex<Option<Arc<Log>>>> = (0..total).map(|_| Mutex::new(None)).collect();
        let done = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let store = self.store.read().unwrap_or_else(|p| p.into_inner());
        let store = store.as_ref().ok_or_else(|| {
            Error::Storage(sluice_storage::Error::Closed {
                dir: self.root.clone(),
            })
        })?;
        in_parallel(total, |job| {
            let (t, partition) = jobs[job];
            let name = format!("{TOPICS_DIR}/{}/{partition}", metas[t].name);
            let log = store.open_log(&name, settings[t].1.clone())?;
            *slots[job].lock().unwrap_or_else(|p| p.into_inner()) = Some(log);
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            if finished.is_multiple_of(PROGRESS_EVERY) && finished < total {
                tracing::info!(
                    opened = finished,
                    total,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "opening partitions"
                );
            }
            Ok(())
        })?;
        let logs: Vec<Option<Arc<Log>>> = slots
            .into_iter()
            .map(|slot| slot.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let reports: Vec<_> = logs.iter().flatten().map(|log| log.recovery()).collect();
        let mut logs = logs.into_iter();
        let mut opened = Vec::with_capacity(metas.len());
        for (meta, (topic_settings, _)) in metas.iter().zip(settings) {
            let name: Arc<str> = Arc::from(meta.name.as_str());
            let mut partitions = Vec::with_capacity(meta.partitions as usize);
            for id in 0..meta.partitions {
                let log = logs.next().flatten().ok_or_else(|| {
                    Error::Task(format!("partition {}/{id} was not opened", meta.name))
                })?;
                partitions.push(Arc::new(Partition::new(
                    Arc::clone(&name),
                    id,
                    topic_settings.cleanup,
                    log,
                    Arc::clone(&self.limiter),
                    self.partition_inflight_bytes,
                    Arc::clone(&self.sequencing),
                )));
            }
            tracing::info!(topic = %meta.name, partitions = meta.partitions, "opened topic");
            opened.push(Topic {
                name: meta.name.clone(),
                settings: topic_settings,
                partitions,
                dir: self.topic_dir(&meta.name),
            });
        }
        if total > 0 {
            let count = |f: fn(&sluice_storage::RecoveryReport) -> bool| {
                reports.iter().filter(|r| f(r)).count()
            };
            tracing::info!(
                topics = metas.len(),
                partitions = total,
                clean = count(|r| r.clean),
                recovered = count(|r| !r.clean),
                tails_cut = count(|r| r.cut_bytes > 0),
                bytes_cut = reports.iter().map(|r| r.cut_bytes).sum::<u64>(),
                synced = count(|r| r.synced),
                indexes_rebuilt = count(|r| r.index_rewritten),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "opened partitions"
            );
        }
        Ok(opened)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.root.join(TOPICS_DIR).join(name)
    }

    /// The topic, or `NOT_FOUND` naming it.
    pub fn get(&self, name: &str) -> Result<Arc<Topic>> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown_topic(name))
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.read().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// Creates a topic (blocking). `internal` allows `__` names.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
        internal: bool,
    ) -> Result<Arc<Topic>> {
        validate_name(name, internal)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(Error::invalid(
                "partitions",
                partitions,
                "must be within 1..=10000",
            ));
        }
        if settings.max_batch_bytes > self.partition_inflight_bytes {
            return Err(Error::invalid(
                "max_batch_bytes",
                settings.max_batch_bytes,
                "exceeds the broker's max_inflight_bytes_per_partition",
            ));
        }
        // Reserve the name, then create without the registry lock: creating thousands of
        // partitions takes fsyncs, and lookups (on async workers) must not wait for them.
        {
            let topics = self.read();
            let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
            if topics.contains_key(name) || !creating.insert(name.to_owned()) {
                return Err(Error::TopicExists {
                    topic: name.to_owned(),
                });
            }
        }
        let created = self.create_reserved(name, partitions, settings);
        self.creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        created
    }

    fn create_reserved(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>> {
        let meta = TopicMeta {
            name: name.to_owned(),
            partitions,
            settings: StoredSettings::new(&settings),
        };
        let topics_dir = self.root.join(TOPICS_DIR);
        let dir = self.topic_dir(name);
        if dir.exists() {
            // A directory without metadata: a deletion that did not finish.
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
        }
        // The topic's directory appears whole, with its metadata, or not at all: it is made
        // under a temporary name that no topic can have and renamed into place.
        let temp = topics_dir.join(format!("{CREATING_PREFIX}{name}"));
        let prepared = prepare_topic_dir(&temp, &dir, &meta);
        if let Err(error) = prepared {
            if let Err(cleanup) = remove_if_present(&temp) {
                tracing::warn!(dir = %temp.display(), %cleanup, "cannot remove a failed topic creation");
            }
            return Err(error);
        }
        // Open the partitions; if one fails (a full disk), nothing of the topic remains.
        match self.open_topics(std::slice::from_ref(&meta)) {
            Ok(mut opened) => {
                let topic = Arc::new(opened.remove(0));
                let mut registry = self.write();
                registry.insert(name.to_owned(), Arc::clone(&topic));
                self.count_compacted(&registry);
                drop(registry);
                tracing::info!(topic = name, partitions, "created topic");
                Ok(topic)
            }
            Err(error) => {
                // Metadata first, so a crash half-way leaves a directory that is not a topic.
                let cleaned =
                    remove_if_present(&dir.join(META_FILE)).and_then(|()| remove_if_present(&dir));
                if let Err(cleanup) = cleaned {
                    tracing::warn!(dir = %dir.display(), %cleanup, "cannot remove a failed topic creation");
                }
                Err(error)
            }
        }
    }

    /// Deletes a topic and its data (blocking). In-flight reads keep their maps until done.
    pub fn delete(&self, name: &str) -> Result<()> {
        let topic = {
            let mut registry = self.write();
            let topic = registry
                .remove(name)
                .ok_or_else(|| Error::unknown_topic(name))?;
            self.count_compacted(&registry);
            topic
        };
        // Waiters (long polls, subscriptions) end with NOT_FOUND.
        for partition in &topic.partitions {
            partition.mark_deleted();
        }
        // Drop the metadata first: a crash half-way leaves a directory that is not a topic.
        let meta = topic.dir.join(META_FILE);
        std::fs::remove_file(&meta).map_err(|e| Error::io("unlink", &meta, e))?;
        // Its data is going: stop the logs without spending syncs on them.
        for partition in &topic.partitions {
            partition.discard();
        }
        std::fs::remove_dir_all(&topic.dir).map_err(|e| Error::io("remove", &topic.dir, e))?;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Switches internal topic `name` to `cleanup = compact` (blocking): its `topic.json` is
    /// rewritten atomically and the registry shows the new settings, over the same open
    /// partitions. For internal topics made before they were compacted; only the broker writes
    /// them, so the producers' key rule a partition enforces does not apply.
    pub fn compact_internal(&self, name: &str) -> Result<Arc<Topic>> {
        if !name.starts_with("__") {
            return Err(Error::invalid(
                "topic",
                crate::error::echo(name),
                "only internal topics are switched to compaction",
            ));
        }
        let topic = self.replace_settings(name, |old| TopicSettings {
            cleanup: Cleanup::Compact,
            ..old.clone()
        })?;
        self.count_compacted(&self.read());
        Ok(topic)
    }

    /// Rewrites topic `name`'s settings to `change(old)` (blocking): its `topic.json` is
    /// rewritten atomically and the registry shows the new settings over the same open
    /// partitions.
    fn replace_settings(
        &self,
        name: &str,
        change: impl FnOnce(&TopicSettings) -> TopicSettings,
    ) -> Result<Arc<Topic>> {
        let mut registry = self.write();
        let old = registry
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown_topic(name))?;
        let settings = change(&old.settings);
        let meta = TopicMeta {
            name: name.to_owned(),
            partitions: old.partitions.len() as u32,
            settings: StoredSettings::new(&settings),
        };
        let path = old.dir.join(META_FILE);
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        sluice_storage::io::write_atomically(&path, &bytes)?;
        let topic = Arc::new(Topic {
            name: old.name.clone(),
            settings,
            partitions: old.partitions.clone(),
            dir: old.dir.clone(),
        });
        registry.insert(name.to_owned(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Sets topic `name`'s queue retry policy (blocking): its `topic.json` is rewritten
    /// atomically and the registry shows the new settings, over the same open partitions.
    pub fn alter_retry(&self, name: &str, retry: RetryPolicy) -> Result<Arc<Topic>> {
        if let Some((field, value, reason)) = retry.problem() {
            return Err(Error::invalid(field, value, reason));
        }
        let topic = self.replace_settings(name, |old| TopicSettings {
            retry,
            ..old.clone()
        })?;
        tracing::info!(topic = name, ?retry, "altered queue retry policy");
        Ok(topic)
    }

    /// Runs one compaction pass, if one is due, on every partition of every compacted topic
    /// (blocking), tombstones judged against `now_ms` (the broker's clock); returns the
    /// passes that ran. One pass a partition: its work is bounded by `limits`. Stops between
    /// partitions once `stopping()` says so.
    pub fn compact(
        &self,
        now_ms: i64,
        limits: &CompactionLimits,
        stopping: impl Fn() -> bool,
    ) -> usize {
        let mut ran = 0;
        for topic in self.list() {
            if !topic.settings.cleanup.compacts() {
                continue;
            }
            let delete_retention = Duration::from_millis(topic.settings.delete_retention_ms);
            for partition in &topic.partitions {
                if stopping() {
                    return ran;
                }
                match partition.compact(now_ms, delete_retention, limits) {
                    Ok(report) if report.segments_replaced > 0 => {
                        ran += 1;
                        tracing::info!(
                            partition = %partition.name(),
                            cleaned_to = report.cleaned_to,
                            segments_replaced = report.segments_replaced,
                            bytes_before = report.bytes_before,
                            bytes_after = report.bytes_after,
                            superseded = report.records_superseded,
                            tombstones_expired = report.tombstones_expired,
                            "compacted partition"
                        );
                    }
                    Ok(report) => ran += usize::from(report.ran),
                    // Deleted or stopping meanwhile.
                    Err(Error::Storage(sluice_storage::Error::Closed { .. })) => {}
                    Err(error) => {
                        tracing::warn!(partition = %partition.name(), %error, "compaction failed");
                    }
                }
            }
        }
        ran
    }

    /// Runs retention on every partition (blocking).
    pub fn enforce_retention(&self) {
        for topic in self.list() {
            for partition in &topic.partitions {
                if let Err(error) = partition.enforce_retention() {
                    tracing::warn!(topic = %topic.name, partition = partition.id(), %error, "retention failed");
                }
            }
        }
    }

    /// Expires idle producers and snapshots changed producer state on every partition
    /// (blocking).
    pub fn maintain_producers(&self) {
        for topic in self.list() {
            for partition in &topic.partitions {
                if let Err(error) = partition.maintain_producers() {
                    tracing::warn!(partition = %partition.name(), %error, "producer state snapshot failed");
                }
            }
        }
    }

    /// Closes every partition cleanly (blocking): synced, files cut to length, clean-shutdown
    /// markers written. The registry empties and the store is dropped, which unlocks the data
    /// directory for the next broker even if a connection task still holds this registry.
    pub fn close_all(&self) {
        let topics: Vec<Arc<Topic>> = self.write().drain().map(|(_, topic)| topic).collect();
        let partitions: Vec<&Arc<Partition>> =
            topics.iter().flat_map(|t| t.partitions.iter()).collect();
        let started = std::time::Instant::now();
        // Each close syncs; in parallel, the file system batches them.
        let _ = in_parallel(partitions.len(), |i| {
            let partition = partitions[i];
            if let Err(error) = partition.close() {
                tracing::error!(partition = %partition.name(), %error, "closing partition failed");
            }
            Ok(())
        });
        if !partitions.is_empty() {
            tracing::info!(
                partitions = partitions.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "closed partitions"
            );
        }
        drop(self.store.write().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// Runs `job(0..total)` on up to [`PARTITION_THREADS`] threads (opening and closing
/// partitions is mostly waiting on the disk). Stops handing out jobs after the first error,
/// which it returns.
fn in_parallel(total: usize, job: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PARTITION_THREADS.min(total) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
                    if let Err(error) = job(i) {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(error);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Makes `temp` hold the topic's metadata and one empty directory per partition, durably,
/// then renames it to `dir`.
fn prepare_topic_dir(temp: &Path, dir: &Path, meta: &TopicMeta) -> Result<()> {
    remove_if_present(temp)?;
    std::fs::create_dir_all(temp).map_err(|e| Error::io("create directory", temp, e))?;
    for id in 0..meta.partitions {
        let partition = temp.join(id.to_string());
        std::fs::create_dir(&partition)
            .map_err(|e| Error::io("create directory", &partition, e))?;
    }
    let meta_path = temp.join(META_FILE);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::BadMetadata {
        path: meta_path.clone(),
        reason: e.to_string(),
    })?;
    sluice_storage::io::write_atomically(&meta_path, &bytes)?;
    std::fs::rename(temp, dir).map_err(|e| Error::io("rename", temp, e))?;
    if let Some(parent) = dir.parent() {
        sluice_storage::io::sync_dir(parent)?;
    }
    Ok(())
}

/// Removes a file or a directory tree; one that is not there is not an error.
fn remove_if_present(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Origin;
    use sluice_storage::format::{BatchBuilder, Batches};
    use sluice_storage::{Durability, StoreConfig};

    #[test]
    fn names_are_checked() {
        assert!(validate_name("orders", false).is_ok());
        assert!(validate_name("__consumer_offsets", false).is_err());
        assert!(validate_name("__consumer_offsets", true).is_ok());
    }

    #[test]
    fn stored_settings_round_trip_and_bad_values_name_the_field() {
        for durability in [
            Durability::Always,
            Durability::Never,
            Durability::Interval(Duration::from_millis(250)),
        ] {
            let settings = TopicSettings {
                durability,
                ..TopicSettings::default()
            };
            assert_eq!(StoredSettings::new(&settings).settings(), Ok(settings));
        }
        let bad = TopicSettings {
            segment_bytes: 10,
            ..TopicSettings::default()
        };
        match bad.log_config() {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "segment_bytes"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        // The file format of the first release still reads; what it lacks takes defaults.
        let text = r#"{"retention_bytes":null,"retention_ms":604800000,"segment_bytes":1073741824,
            "fsync":"interval","fsync_interval_ms":100,"max_batch_bytes":4194304}"#;
        let stored: StoredSettings = serde_json::from_str(text)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let read = stored.settings();
        assert_eq!(
            read.as_ref().map(|s| s.durability),
            Ok(Durability::Interval(Duration::from_millis(100)))
        );
        assert_eq!(
            read.map(|s| (s.cleanup, s.delete_retention_ms)),
            Ok((Cleanup::Delete, DEFAULT_DELETE_RETENTION_MS))
        );
    }

    #[test]
    fn cleanup_round_trips_and_compact_turns_retention_off() {
        for cleanup in [Cleanup::Delete, Cleanup::Compact, Cleanup::CompactDelete] {
            assert_eq!(Cleanup::parse(cleanup.as_str()), Some(cleanup));
            let settings = TopicSettings {
                cleanup,
                delete_retention_ms: 5,
                retention_bytes: Some(1 << 20),
                ..TopicSettings::default()
            };
            assert_eq!(
                StoredSettings::new(&settings).settings(),
                Ok(settings.clone())
            );
            let config = settings.log_config().map_err(|e| e.to_string());
            let retention = config.map(|c| (c.retention_bytes, c.retention_age));
            let expected = if cleanup.deletes() {
                (
                    Some(1 << 20),
                    Some(Duration::from_millis(DEFAULT_RETENTION_MS)),
                )
            } else {
                (None, None)
            };
            assert_eq!(retention, Ok(expected), "{cleanup:?}");
        }
        assert_eq!(
            Cleanup::parse("delete,compact"),
            Some(Cleanup::CompactDelete)
        );
        assert_eq!(Cleanup::parse("compacted"), None);
        let text = r#"{"retention_bytes":null,"retention_ms":null,"segment_bytes":1073741824,
            "fsync":"always","fsync_interval_ms":1000,"max_batch_bytes":4194304,
            "cleanup":"shred","delete_retention_ms":1}"#;
        let stored: StoredSettings = serde_json::from_str(text)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(stored.settings().is_err_and(|e| e.contains("shred")));
    }

    /// One batch of `(key, value)` records.
    fn batch(records: &[(Option<&str>, &str)]) -> bytes::Bytes {
        let mut builder = BatchBuilder::new();
        for (key, value) in records {
            let pushed = builder.push(0, key.map(str::as_bytes), Some(value.as_bytes()), &[]);
            assert!(pushed.is_ok());
        }
        match builder.finish() {
            Ok(batch) => batch.freeze(),
            Err(error) => panic!("{error}"),
        }
    }

    #[tokio::test]
    async fn internal_topics_can_be_compacted_and_the_broker_writes_them() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let dir = dir.unwrap_or_else(|e| panic!("{e}"));
        let opened = Store::open(dir.path(), StoreConfig::default())
            .map_err(Error::from)
            .and_then(|store| {
                Topics::open(
                    store,
                    Arc::new(Limiter::new(64 << 20, 64 << 20, 64 << 20, 50)),
                    Arc::new(Sequencing::new(
                        60_000,
                        100,
                        std::time::Duration::from_millis(100),
                        crate::clock::Clock::default(),
                    )),
                )
            });
        let topics = opened.unwrap_or_else(|e| panic!("{e}"));
        let settings = TopicSettings {
            cleanup: Cleanup::Compact,
            segment_bytes: 4096,
            max_batch_bytes: 4096,
            durability: Durability::Never,
            ..TopicSettings::default()
        };
        let topic = topics
            .create("__state", 1, settings, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let partition = Arc::clone(&topic.partitions[0]);
        assert_eq!(partition.cleanup(), Cleanup::Compact);
        // The broker's own records may lack keys; producers may not write here at all.
        let value = "v".repeat(300);
        for i in 0..40 {
            let key = format!("k{}", i % 4);
            let records = [(Some(key.as_str()), value.as_str()), (None, "broker note")];
            let appended = partition.append(batch(&records), Origin::Broker).await;
            assert!(appended.is_ok(), "{appended:?}");
        }
        let produced = partition
            .append(batch(&[(Some("k"), "v")]), Origin::Producer { peer: None })
            .await;
        assert!(matches!(produced, Err(Error::InvalidArgument { .. })));
        assert!(partition.segment_count() > 2);
        let limits = CompactionLimits {
            max_map_entries: 100,
            min_dirty_percent: 0,
        };
        assert_eq!(topics.compact(0, &limits, || false), 1);
        // Stopping: no partition is visited.
        assert_eq!(topics.compact(0, &limits, || true), 0);
        let read = partition
            .read(0, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut keys = Vec::new();
        for framed in Batches::new(&read.batches) {
            let view = framed
                .and_then(|f| f.stored())
                .unwrap_or_else(|e| panic!("{e}"));
            keys.extend(view.records().map(|r| r.key.map(<[u8]>::to_vec)));
        }
        // In the first (compacted) segment: each key at most once, every keyless note kept.
        assert!(keys.iter().filter(|k| k.is_none()).count() > 1);
        let keyed: Vec<_> = keys.iter().flatten().collect();
        let unique: HashSet<_> = keyed.iter().collect();
        assert_eq!(keyed.len(), unique.len(), "{keys:?}");
        topics.close_all();
    }
}
