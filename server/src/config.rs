//! The broker's configuration: defaults, an optional TOML file, `SLUICE_*` environment
//! variables and flags, in rising precedence (design.md §4). Every field documents its default
//! and bounds; [`Config::validate`] rejects values out of bounds, naming field and value.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `sluice serve` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory (locked while the broker runs). Default `./sluice-data`.
    pub data_dir: PathBuf,
    /// gRPC listen address. Default `127.0.0.1:7070`.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (`/healthz`). Default `127.0.0.1:7071`.
    pub http_addr: SocketAddr,
    /// Segment files and maps open at once across all partitions. Default 1024; ≥ 2.
    pub max_open_segments: usize,
    /// Largest gRPC message accepted or sent, bytes. Default 16 MiB; 1 MiB ..= 256 MiB.
    pub max_message_bytes: usize,
    /// Produce bytes accepted but not yet acknowledged, per partition. Default 64 MiB;
    /// 64 KiB ..= 4 GiB − 1 (and at least the largest batch a topic accepts).
    pub max_inflight_bytes_per_partition: u32,
    /// Produce bytes accepted but not yet acknowledged, per client connection. Default 64 MiB;
    /// 64 KiB ..= 4 GiB − 1.
    pub max_inflight_bytes_per_connection: u32,
    /// Produce bytes accepted but not yet acknowledged, whole broker: the bound on memory held
    /// for produce requests. Default 256 MiB; 64 KiB ..= 4 GiB − 1.
    pub max_inflight_bytes: u32,
    /// Client connections at once; beyond it a new connection is answered
    /// `RESOURCE_EXHAUSTED` (with the retry hint) and closed. Default 1024; 1 ..= 1000000.
    pub max_connections: usize,
    /// Client connections at once from one IP address, so one host cannot take every slot
    /// (the broker-wide cap applies too). Default 256; 1 ..= 1000000.
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send its HTTP/2 preface and first frame header before it
    /// is closed, ms (sockets that connect and say nothing must not hold slots). Default
    /// 10000; 100 ..= 600000.
    pub handshake_timeout_ms: u64,
    /// Interval of the HTTP/2 keepalive pings the broker sends, ms. Default 30000;
    /// 1000 ..= 3600000.
    pub keepalive_interval_ms: u64,
    /// Time a peer has to answer a keepalive ping before its connection is closed (a dead or
    /// half-open peer), ms. Default 20000; 1000 ..= 600000.
    pub keepalive_timeout_ms: u64,
    /// Concurrent requests (HTTP/2 streams) per connection. Default 256; 1 ..= 65536.
    pub max_concurrent_streams: u32,
    /// Produce requests being received at once, whole broker; beyond it a produce is refused
    /// before its body is read (so at most this × `max_message_bytes` is buffered for
    /// requests not yet accepted). Default 64; 1 ..= 65536.
    pub max_produce_requests: usize,
    /// The retry hint sent with `RESOURCE_EXHAUSTED`, ms. Default 50; 1 ..= 60000.
    pub retry_after_ms: u32,
    /// Longest long poll a Fetch may ask for, ms. Default 30000; 0 ..= 300000.
    pub max_fetch_wait_ms: u32,
    /// How often retention runs over all partitions, ms. Default 30000; 100 ..= 86400000.
    pub retention_check_interval_ms: u64,
    /// Segment size of the internal `__consumer_offsets` and `__consumer_groups` topics when
    /// they are created. They are compacted topics: only sealed segments are compacted, so
    /// each holds up to one segment of commits not yet compacted. Default 64 MiB;
    /// 4 KiB ..= 1 GiB.
    pub offsets_segment_bytes: u64,
    /// How often group members are told to heartbeat (at most a third of their session
    /// timeout), ms: a rebalance reaches members within about two of these. Default 3000;
    /// 10 ..= 60000.
    pub group_heartbeat_interval_ms: u32,
    /// How often the compactor visits every partition of every compacted topic (`cleanup =
    /// compact` or `compact,delete`) and runs one pass on each that has one due, ms. Passes
    /// run one partition at a time on the blocking pool. Default 15000; 100 ..= 86400000.
    pub compaction_check_interval_ms: u64,
    /// Most distinct keys one compaction pass maps: the compactor's memory bound (about 32
    /// bytes a key, up to twice that while its map grows; one pass at a time, so ~32–64 MiB
    /// at the default). A partition with more keys to compact takes several passes. Default
    /// 1000000; 1 ..= 100000000.
    pub compaction_max_map_entries: usize,
    /// Share of a partition's compactable bytes that must be new (not yet compacted) before a
    /// pass rewrites it, percent; an expired tombstone makes a pass due anyway. Lower
    /// compacts sooner and rewrites more. Default 50; 0 ..= 100.
    pub compaction_min_dirty_percent: u8,
    /// Queue mode: messages per (partition, queue group) delivered and not yet done (leased,
    /// waiting for a retry, or acknowledged above an older unfinished one), like Kafka share
    /// groups' record-lock limit. Past it the group gets nothing new from the partition until
    /// its oldest message is done, so queue memory stays bounded under any backlog (about 64
    /// bytes a message, plus its last error). Default 2000; 1 ..= 1000000.
    pub queue_max_inflight_per_partition: u32,
    /// An idempotent producer not heard from for this long is forgotten by each partition
    /// (its next batch is then accepted at whatever sequence it has), ms. Default 604800000
    /// (7 days); 1000 ..= 2592000000.
    pub producer_idle_ms: u64,
    /// Most idempotent producers a partition keeps state for (about 300 bytes each); past it
    /// the longest idle is forgotten. Default 10000; 1 ..= 1000000.
    pub max_producers_per_partition: usize,
    /// How long a batch of an idempotent producer that is ahead of the sequence its partition
    /// expects waits for the batches before it (pipelined requests can overtake each other)
    /// before it is refused as out of order, ms. Default 2000; 0 ..= 60000.
    pub producer_reorder_wait_ms: u64,
    /// Segment size of the internal `__producer_ids` topic when it is created (compacted: it
    /// holds the next producer id and one record per transactional id). Default 1 MiB;
    /// 4 KiB ..= 1 GiB.
    pub producer_ids_segment_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sluice-data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7071)),
            max_open_segments: 1024,
            max_message_bytes: 16 << 20,
            max_inflight_bytes_per_partition: 64 << 20,
            max_inflight_bytes_per_connection: 64 << 20,
            max_inflight_bytes: 256 << 20,
            max_connections: 1024,
            max_connections_per_ip: 256,
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 20_000,
            max_concurrent_streams: 256,
            max_produce_requests: 64,
            retry_after_ms: 50,
            max_fetch_wait_ms: 30_000,
            retention_check_interval_ms: 30_000,
            offsets_segment_bytes: 64 << 20,
            group_heartbeat_interval_ms: 3000,
            compaction_check_interval_ms: 15_000,
            compaction_max_map_entries: 1_000_000,
            compaction_min_dirty_percent: 50,
            queue_max_inflight_per_partition: 2000,
            producer_idle_ms: 7 * 24 * 3_600_000,
            max_producers_per_partition: 10_000,
            producer_reorder_wait_ms: 2000,
            producer_ids_segment_bytes: 1 << 20,
        }
    }
}

/// A configuration value out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config {field} = {value}: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// The bound it broke.
    pub reason: &'static str,
}

fn check<T: PartialOrd + ToString>(
    field: &'static str,
    value: T,
    low: T,
    high: T,
    reason: &'static str,
) -> Result<(), ConfigError> {
    if value < low || value > high {
        return Err(ConfigError {
            field,
            value: value.to_string(),
            reason,
        });
    }
    Ok(())
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const KIB64: u32 = 64 << 10;
        check(
            "max_open_segments",
            self.max_open_segments,
            2,
            usize::MAX,
            "must be at least 2",
        )?;
        check(
            "max_message_bytes",
            self.max_message_bytes,
            1 << 20,
            256 << 20,
            "must be within 1 MiB..=256 MiB",
        )?;
        for (field, value) in [
            (
                "max_inflight_bytes_per_partition",
                self.max_inflight_bytes_per_partition,
            ),
            (
                "max_inflight_bytes_per_connection",
                self.max_inflight_bytes_per_connection,
            ),
            ("max_inflight_bytes", self.max_inflight_bytes),
        ] {
            check(field, value, KIB64, u32::MAX, "must be at least 64 KiB")?;
        }
        check(
            "max_connections",
            self.max_connections,
            1,
            1_000_000,
            "must be within 1..=1000000",
        )?;
        check(
            "max_connections_per_ip",
            self.max_connections_per_ip,
            1,
            1_000_000,
            "must be within 1..=1000000",
        )?;
        check(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
            600_000,
            "must be within 100..=600000",
        )?;
        check(
            "keepalive_interval_ms",
            self.keepalive_interval_ms,
            1000,
            3_600_000,
            "must be within 1000..=3600000",
        )?;
        check(
            "keepalive_timeout_ms",
            self.keepalive_timeout_ms,
            1000,
            600_000,
            "must be within 1000..=600000",
        )?;
        check(
            "max_concurrent_streams",
            self.max_concurrent_streams,
            1,
            65_536,
            "must be within 1..=65536",
        )?;
        check(
            "retry_after_ms",
            self.retry_after_ms,
            1,
            60_000,
            "must be within 1..=60000",
        )?;
        check(
            "queue_max_inflight_per_partition",
            self.queue_max_inflight_per_partition,
            1,
            1_000_000,
            "must be within 1..=1000000",
        )?;
        check(
            "max_fetch_wait_ms",
            self.max_fetch_wait_ms,
            0,
            300_000,
            "must be within 0..=300000",
        )?;
        check(
            "retention_check_interval_ms",
            self.retention_check_interval_ms,
            100,
            86_400_000,
            "must be within 100..=86400000",
        )?;
        check(
            "group_heartbeat_interval_ms",
            self.group_heartbeat_interval_ms,
            10,
            60_000,
            "must be within 10..=60000",
        )?;
        check(
            "offsets_segment_bytes",
            self.offsets_segment_bytes,
            4096,
            1 << 30,
            "must be within 4 KiB..=1 GiB",
        )?;
        check(
            "compaction_check_interval_ms",
            self.compaction_check_interval_ms,
            100,
            86_400_000,
            "must be within 100..=86400000",
        )?;
        check(
            "compaction_max_map_entries",
            self.compaction_max_map_entries,
            1,
            100_000_000,
            "must be within 1..=100000000",
        )?;
        check(
            "compaction_min_dirty_percent",
            self.compaction_min_dirty_percent,
            0,
            100,
            "must be within 0..=100",
        )?;
        check(
            "producer_idle_ms",
            self.producer_idle_ms,
            1000,
            30 * 24 * 3_600_000,
            "must be within 1000..=2592000000",
        )?;
        check(
            "max_producers_per_partition",
            self.max_producers_per_partition,
            1,
            1_000_000,
            "must be within 1..=1000000",
        )?;
        check(
            "producer_reorder_wait_ms",
            self.producer_reorder_wait_ms,
            0,
            60_000,
            "must be within 0..=60000",
        )?;
        check(
            "producer_ids_segment_bytes",
            self.producer_ids_segment_bytes,
            4096,
            1 << 30,
            "must be within 4 KiB..=1 GiB",
        )?;
        Ok(())
    }

    /// The bounds of one compaction pass.
    pub fn compaction_limits(&self) -> sluice_storage::CompactionLimits {
        sluice_storage::CompactionLimits {
            max_map_entries: self.compaction_max_map_entries,
            min_dirty_percent: self.compaction_min_dirty_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_toml_overrides_them() {
        assert_eq!(Config::default().validate(), Ok(()));
        let config = Config::from_toml(
            "data_dir = \"/tmp/x\"\ngrpc_addr = \"127.0.0.1:9000\"\nmax_inflight_bytes = 1048576\n",
        )
        .map_err(|e| e.to_string());
        let config = match config {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.grpc_addr.port(), 9000);
        assert_eq!(config.max_inflight_bytes, 1 << 20);
        assert_eq!(config.http_addr, Config::default().http_addr);
        assert!(Config::from_toml("no_such_field = 1").is_err());
    }

    #[test]
    fn rejects_out_of_bounds_naming_the_field() {
        let config = Config {
            max_inflight_bytes: 10,
            ..Config::default()
        };
        let error = config.validate().err();
        assert_eq!(error.map(|e| e.field), Some("max_inflight_bytes"));
        for (config, field) in [
            (
                Config {
                    compaction_check_interval_ms: 99,
                    ..Config::default()
                },
                "compaction_check_interval_ms",
            ),
            (
                Config {
                    compaction_max_map_entries: 0,
                    ..Config::default()
                },
                "compaction_max_map_entries",
            ),
            (
                Config {
                    compaction_min_dirty_percent: 101,
                    ..Config::default()
                },
                "compaction_min_dirty_percent",
            ),
        ] {
            assert_eq!(config.validate().err().map(|e| e.field), Some(field));
        }
        // The broker's limits are the storage engine's, and valid there.
        assert!(Config::default().compaction_limits().validate().is_ok());
    }
}
