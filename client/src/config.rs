//! The client's configs: [`ConnectionConfig`], [`ProducerConfig`], [`ConsumerConfig`].
//!
//! Each is a builder: `Default` is the production setting, `#[must_use]` setters change one
//! field, and `validate()` rejects a value out of its documented bounds, naming the field and the
//! value (style.md: never clamp, never "0 = unlimited"). Fields are public to read; the structs
//! are `#[non_exhaustive]`, so they are built from `Default`/`new()` and the setters. The
//! producer and consumer validate their config when they connect.

use std::time::Duration;

use crate::connection::RetryPolicy;
use crate::consumer::OffsetReset;
use crate::error::{Error, Result};
use crate::partitioner::Partitioner;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The broker's default and largest batch a topic accepts unless configured otherwise
/// (`TopicConfig.max_batch_bytes`, 4 MiB).
pub const BROKER_MAX_BATCH_BYTES: usize = 4 * MIB;

/// Where the broker is and how the HTTP/2 connection to it is tuned (design.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// `host:port` of the broker (or a full `http://host:port` URI). Default `127.0.0.1:7070`.
    pub address: String,
    /// How long connecting may take. Default 5 s; 1 ms ..= 5 min.
    pub connect_timeout: Duration,
    /// HTTP/2 per-stream flow-control window. Default 8 MiB; 64 KiB ..= 1 GiB.
    pub stream_window_bytes: u32,
    /// HTTP/2 connection flow-control window. Default 16 MiB; `stream_window_bytes` ..= 1 GiB.
    pub connection_window_bytes: u32,
    /// Largest gRPC message sent or accepted. Default 16 MiB + 64 KiB (a 16 MiB batch plus
    /// framing); 64 KiB ..= 1 GiB.
    pub max_message_bytes: usize,
    /// Largest HTTP/2 frame the broker may send us; `None` keeps h2's 16 KiB. Default 1 MiB:
    /// fetching 1 MiB batches over loopback took 0.42 ms with it against 0.93 ms with 16 KiB
    /// frames (benches/benches/e2e.rs, one run); 16 KiB ..= 16 MiB − 1.
    pub max_frame_bytes: Option<u32>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:7070".to_owned(),
            connect_timeout: Duration::from_secs(5),
            stream_window_bytes: (8 * MIB) as u32,
            connection_window_bytes: (16 * MIB) as u32,
            max_message_bytes: 16 * MIB + 64 * KIB,
            max_frame_bytes: Some(MIB as u32),
        }
    }
}

impl ConnectionConfig {
    /// The default config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`address`](Self::address).
    #[must_use]
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`stream_window_bytes`](Self::stream_window_bytes).
    #[must_use]
    pub fn stream_window_bytes(mut self, bytes: u32) -> Self {
        self.stream_window_bytes = bytes;
        self
    }

    /// Sets [`connection_window_bytes`](Self::connection_window_bytes).
    #[must_use]
    pub fn connection_window_bytes(mut self, bytes: u32) -> Self {
        self.connection_window_bytes = bytes;
        self
    }

    /// Sets [`max_message_bytes`](Self::max_message_bytes).
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets [`max_frame_bytes`](Self::max_frame_bytes).
    #[must_use]
    pub fn max_frame_bytes(mut self, bytes: Option<u32>) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Rejects values out of their documented bounds.
    pub fn validate(&self) -> Result<()> {
        const GIB: u32 = 1 << 30;
        if self.address.trim().is_empty() {
            return Err(invalid("address", &self.address, "must be host:port"));
        }
        check_duration(
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
        )?;
        if !(64 * KIB as u32..=GIB).contains(&self.stream_window_bytes) {
            return Err(invalid(
                "stream_window_bytes",
                self.stream_window_bytes,
                "must be 64 KiB ..= 1 GiB",
            ));
        }
        if !(self.stream_window_bytes..=GIB).contains(&self.connection_window_bytes) {
            return Err(invalid(
                "connection_window_bytes",
                self.connection_window_bytes,
                "must be stream_window_bytes ..= 1 GiB",
            ));
        }
        if !(64 * KIB..=GIB as usize).contains(&self.max_message_bytes) {
            return Err(invalid(
                "max_message_bytes",
                self.max_message_bytes,
                "must be 64 KiB ..= 1 GiB",
            ));
        }
        if let Some(frame) = self.max_frame_bytes
            && !(16 * KIB as u32..(1 << 24)).contains(&frame)
        {
            return Err(invalid(
                "max_frame_bytes",
                frame,
                "must be 16 KiB ..= 16 MiB - 1 (HTTP/2 bounds)",
            ));
        }
        Ok(())
    }
}

/// How a [`Producer`](crate::Producer) batches, buffers, partitions and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// The broker connection.
    pub connection: ConnectionConfig,
    /// How long a partition's batch waits for more records before it is sent, unless it fills
    /// first. Default 5 ms; 0 ..= 10 s (0 sends as soon as the partition's task sees a record).
    pub linger: Duration,
    /// Size at which a batch is sent without waiting for `linger`. A record larger than this
    /// goes alone in its own batch. Default 1 MiB; 1 KiB ..= 4 MiB (the broker's default
    /// `max_batch_bytes`).
    pub batch_bytes: usize,
    /// Bytes of records buffered (waiting, batched or in flight) across all partitions; when
    /// full, `send` waits for acknowledgements to free space. Default 64 MiB;
    /// `batch_bytes` ..= 4 GiB − 1.
    pub buffer_bytes: usize,
    /// Longest a `send` waits for buffer space before failing with
    /// [`Error::BufferFull`]. Default 60 s; 1 ms ..= 1 h.
    pub max_block: Duration,
    /// Records queued per partition ahead of its task (the bounded channel's capacity).
    /// Default 1024; 1 ..= 1 048 576.
    pub partition_queue_records: usize,
    /// How records without an explicit partition are spread. Default
    /// [`Partitioner::KeyHash`].
    pub partitioner: Partitioner,
    /// Retries of a batch on retriable errors.
    pub retry: RetryPolicy,
    /// Time one produce attempt may take, sent as its gRPC deadline. Default 30 s;
    /// 1 ms ..= 10 min.
    pub request_timeout: Duration,
    /// Idempotent delivery (design.md §5): the producer takes an id from the broker and
    /// numbers its batches per partition, so a retry (after a lost connection, a timeout, a
    /// broker restart) is appended once and order holds with several requests in flight.
    /// Default true.
    pub idempotence: bool,
    /// Produce requests in flight per partition. Default 5; 1 ..= 5 (the broker remembers a
    /// producer's last 5 batches per partition, so a retry is always one it knows). Without
    /// idempotence, more than 1 lets a retried batch land after a later one.
    pub max_in_flight: usize,
    /// Names the producer across restarts: a new instance with the same id gets a higher
    /// epoch and fences the older one (its batches are refused). Requires idempotence.
    /// Default none; 1 ..= 249 bytes.
    pub transactional_id: Option<String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::default(),
            linger: Duration::from_millis(5),
            batch_bytes: MIB,
            buffer_bytes: 64 * MIB,
            max_block: Duration::from_secs(60),
            partition_queue_records: 1024,
            partitioner: Partitioner::KeyHash,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            idempotence: true,
            max_in_flight: MAX_IN_FLIGHT,
            transactional_id: None,
        }
    }
}

/// Most produce requests in flight per partition (the broker keeps a producer's last 5
/// batches per partition).
pub const MAX_IN_FLIGHT: usize = 5;

impl ProducerConfig {
    /// The default config (broker at `127.0.0.1:7070`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the broker address ([`ConnectionConfig::address`]).
    #[must_use]
    pub fn broker(mut self, address: impl Into<String>) -> Self {
        self.connection.address = address.into();
        self
    }

    /// Sets [`connection`](Self::connection).
    #[must_use]
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`linger`](Self::linger).
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`batch_bytes`](Self::batch_bytes).
    #[must_use]
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }

    /// Sets [`buffer_bytes`](Self::buffer_bytes).
    #[must_use]
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes;
        self
    }

    /// Sets [`max_block`](Self::max_block).
    #[must_use]
    pub fn max_block(mut self, max_block: Duration) -> Self {
        self.max_block = max_block;
        self
    }

    /// Sets [`partition_queue_records`](Self::partition_queue_records).
    #[must_use]
    pub fn partition_queue_records(mut self, records: usize) -> Self {
        self.partition_queue_records = records;
        self
    }

    /// Sets [`partitioner`](Self::partitioner).
    #[must_use]
    pub fn partitioner(mut self, partitioner: Partitioner) -> Self {
        self.partitioner = partitioner;
        self
    }

    /// Sets [`retry`](Self::retry).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`idempotence`](Self::idempotence).
    #[must_use]
    pub fn idempotence(mut self, on: bool) -> Self {
        self.idempotence = on;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    #[must_use]
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    /// Sets [`transactional_id`](Self::transactional_id).
    #[must_use]
    pub fn transactional_id(mut self, id: impl Into<String>) -> Self {
        self.transactional_id = Some(id.into());
        self
    }

    /// Rejects values out of their documented bounds, naming the field and the value.
    pub fn validate(&self) -> Result<()> {
        self.connection.validate()?;
        self.retry.validate()?;
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(invalid(
                "max_in_flight",
                self.max_in_flight,
                "must be 1 ..= 5",
            ));
        }
        if let Some(id) = &self.transactional_id {
            if !self.idempotence {
                return Err(invalid(
                    "transactional_id",
                    id,
                    "needs idempotence (a transactional id names an idempotent producer)",
                ));
            }
            if id.is_empty() || id.len() > 249 || id.contains('\0') {
                return Err(invalid(
                    "transactional_id",
                    id,
                    "must be 1 ..= 249 bytes without NUL",
                ));
            }
        }
        check_duration(
            "linger",
            self.linger,
            Duration::ZERO,
            Duration::from_secs(10),
        )?;
        if !(KIB..=BROKER_MAX_BATCH_BYTES).contains(&self.batch_bytes) {
            return Err(invalid(
                "batch_bytes",
                self.batch_bytes,
                "must be 1 KiB ..= 4 MiB (the broker's max_batch_bytes)",
            ));
        }
        if self.batch_bytes + 64 * KIB > self.connection.max_message_bytes {
            return Err(invalid(
                "batch_bytes",
                self.batch_bytes,
                "must leave 64 KiB under connection.max_message_bytes",
            ));
        }
        if !(self.batch_bytes..=u32::MAX as usize).contains(&self.buffer_bytes) {
            return Err(invalid(
                "buffer_bytes",
                self.buffer_bytes,
                "must be batch_bytes ..= 4 GiB - 1",
            ));
        }
        check_duration(
            "max_block",
            self.max_block,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
        if !(1..=1 << 20).contains(&self.partition_queue_records) {
            return Err(invalid(
                "partition_queue_records",
                self.partition_queue_records,
                "must be 1 ..= 1048576",
            ));
        }
        check_duration(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(1),
            Duration::from_secs(600),
        )
    }
}

/// How a [`Consumer`](crate::Consumer) fetches, and the group it commits offsets for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The broker connection.
    pub connection: ConnectionConfig,
    /// The consumer group whose offsets `commit` and `committed` use. Default none;
    /// 1 ..= 249 bytes of UTF-8 without NUL (as the broker counts).
    pub group: Option<String>,
    /// Most bytes one fetch of one partition returns (a batch larger than this still comes
    /// whole). Default 1 MiB; 1 KiB ..= `connection.max_message_bytes` − 64 KiB.
    pub max_bytes: usize,
    /// Longest a fetch waits at the end of a partition for new records (the long poll).
    /// Default 500 ms; 0 ..= `request_timeout` / 2.
    pub max_wait: Duration,
    /// Most bytes one `poll` gathers across partitions: once reached, the remaining
    /// partitions wait for the next poll. Default 16 MiB; `max_bytes` ..= 1 GiB.
    pub max_poll_bytes: usize,
    /// Fetches in flight at once during a poll. Default 64; 1 ..= 1024.
    pub max_concurrent_fetches: usize,
    /// Retries of fetches, offset look-ups and commits.
    pub retry: RetryPolicy,
    /// Time one request may take, the long poll included. Default 30 s; 1 ms ..= 10 min.
    pub request_timeout: Duration,
    /// With `subscribe`: the broker removes the member if no heartbeat arrives for this long
    /// (heartbeats run in the background). Default 30 s; 1 s ..= 5 min.
    pub session_timeout: Duration,
    /// With `subscribe`: commit positions this often during `poll` (and on revocation and
    /// close). `None`: only when the application calls `commit`. Default 5 s; 10 ms ..= 1 h.
    pub auto_commit: Option<Duration>,
    /// With `subscribe`: where a newly assigned partition starts when the group never
    /// committed it. Default earliest.
    pub reset: OffsetReset,
    /// A name for this client, shown by `sluice group describe`. Default `sluice-client`;
    /// at most 249 bytes.
    pub client_id: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::default(),
            group: None,
            max_bytes: MIB,
            max_wait: Duration::from_millis(500),
            max_poll_bytes: 16 * MIB,
            max_concurrent_fetches: 64,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(30),
            auto_commit: Some(Duration::from_secs(5)),
            reset: OffsetReset::Earliest,
            client_id: "sluice-client".to_owned(),
        }
    }
}

impl ConsumerConfig {
    /// The default config (broker at `127.0.0.1:7070`, no group).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the broker address ([`ConnectionConfig::address`]).
    #[must_use]
    pub fn broker(mut self, address: impl Into<String>) -> Self {
        self.connection.address = address.into();
        self
    }

    /// Sets [`connection`](Self::connection).
    #[must_use]
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`group`](Self::group).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes).
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets [`max_wait`](Self::max_wait).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Sets [`max_poll_bytes`](Self::max_poll_bytes).
    #[must_use]
    pub fn max_poll_bytes(mut self, bytes: usize) -> Self {
        self.max_poll_bytes = bytes;
        self
    }

    /// Sets [`max_concurrent_fetches`](Self::max_concurrent_fetches).
    #[must_use]
    pub fn max_concurrent_fetches(mut self, fetches: usize) -> Self {
        self.max_concurrent_fetches = fetches;
        self
    }

    /// Sets [`retry`](Self::retry).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`session_timeout`](Self::session_timeout).
    #[must_use]
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets [`auto_commit`](Self::auto_commit).
    #[must_use]
    pub fn auto_commit(mut self, every: Option<Duration>) -> Self {
        self.auto_commit = every;
        self
    }

    /// Sets [`reset`](Self::reset).
    #[must_use]
    pub fn reset(mut self, reset: OffsetReset) -> Self {
        self.reset = reset;
        self
    }

    /// Sets [`client_id`](Self::client_id).
    #[must_use]
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Rejects values out of their documented bounds, naming the field and the value.
    pub fn validate(&self) -> Result<()> {
        self.connection.validate()?;
        self.retry.validate()?;
        check_duration(
            "session_timeout",
            self.session_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        )?;
        if let Some(every) = self.auto_commit {
            check_duration(
                "auto_commit",
                every,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            )?;
        }
        if self.client_id.len() > 249 {
            return Err(invalid(
                "client_id",
                &self.client_id,
                "must be at most 249 bytes",
            ));
        }
        if let Some(group) = &self.group
            && let Some(reason) = sluice_proto::limits::group_problem(group)
        {
            return Err(invalid("group", group, reason));
        }
        let max_fetch = self.connection.max_message_bytes.saturating_sub(64 * KIB);
        if !(KIB..=max_fetch).contains(&self.max_bytes) || self.max_bytes > u32::MAX as usize {
            return Err(invalid(
                "max_bytes",
                self.max_bytes,
                "must be 1 KiB ..= connection.max_message_bytes - 64 KiB",
            ));
        }
        check_duration(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(1),
            Duration::from_secs(600),
        )?;
        check_duration(
            "max_wait",
            self.max_wait,
            Duration::ZERO,
            self.request_timeout / 2,
        )?;
        if !(self.max_bytes..=1 << 30).contains(&self.max_poll_bytes) {
            return Err(invalid(
                "max_poll_bytes",
                self.max_poll_bytes,
                "must be max_bytes ..= 1 GiB",
            ));
        }
        if !(1..=1024).contains(&self.max_concurrent_fetches) {
            return Err(invalid(
                "max_concurrent_fetches",
                self.max_concurrent_fetches,
                "must be 1 ..= 1024",
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, value: impl std::fmt::Debug, reason: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value: format!("{value:?}"),
        reason,
    }
}

fn check_duration(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<()> {
    if value < min || value > max {
        return Err(Error::InvalidConfig {
            field,
            value: format!("{value:?}"),
            reason: "out of bounds (see the field's documentation)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(result: Result<()>, field: &str) -> bool {
        matches!(result, Err(Error::InvalidConfig { field: f, .. }) if f == field)
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let producer = ProducerConfig::default();
        assert!(producer.validate().is_ok());
        assert_eq!(producer.linger, Duration::from_millis(5));
        assert_eq!(producer.batch_bytes, MIB);
        assert_eq!(producer.buffer_bytes, 64 * MIB);
        assert_eq!(producer.partitioner, Partitioner::KeyHash);
        assert_eq!(producer.request_timeout, Duration::from_secs(30));
        let consumer = ConsumerConfig::default();
        assert!(consumer.validate().is_ok());
        assert_eq!(consumer.max_bytes, MIB);
        assert_eq!(consumer.max_wait, Duration::from_millis(500));
        assert_eq!(consumer.group, None);
        let connection = ConnectionConfig::default();
        assert_eq!(connection.stream_window_bytes, 8 << 20);
        assert_eq!(connection.connection_window_bytes, 16 << 20);
        assert!(connection.max_message_bytes >= 16 << 20);
    }

    #[test]
    fn producer_bounds() {
        let base = ProducerConfig::new().broker("localhost:1");
        assert_eq!(base.connection.address, "localhost:1");
        assert!(base.clone().linger(Duration::ZERO).validate().is_ok());
        assert!(rejected(
            base.clone().linger(Duration::from_secs(11)).validate(),
            "linger"
        ));
        assert!(base.clone().batch_bytes(4 * MIB).validate().is_ok());
        assert!(rejected(
            base.clone().batch_bytes(4 * MIB + 1).validate(),
            "batch_bytes"
        ));
        assert!(rejected(
            base.clone().batch_bytes(100).validate(),
            "batch_bytes"
        ));
        let tight = ConnectionConfig::new().max_message_bytes(MIB);
        assert!(rejected(
            base.clone().connection(tight).validate(),
            "batch_bytes"
        ));
        assert!(rejected(
            base.clone().buffer_bytes(MIB - 1).validate(),
            "buffer_bytes"
        ));
        assert!(rejected(
            base.clone().buffer_bytes(1 << 32).validate(),
            "buffer_bytes"
        ));
        assert!(rejected(
            base.clone().max_block(Duration::ZERO).validate(),
            "max_block"
        ));
        assert!(rejected(
            base.clone().partition_queue_records(0).validate(),
            "partition_queue_records"
        ));
        assert!(rejected(
            base.clone().request_timeout(Duration::ZERO).validate(),
            "request_timeout"
        ));
        assert!(rejected(
            base.clone()
                .retry(RetryPolicy::new().max_attempts(0))
                .validate(),
            "retry.max_attempts"
        ));
        // The message names the field and the value.
        let error = base.batch_bytes(5 * MIB).validate().err();
        let text = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("batch_bytes = 5242880"), "{text}");
    }

    #[test]
    fn consumer_bounds() {
        let base = ConsumerConfig::new().broker("localhost:1").group("g");
        assert!(base.validate().is_ok());
        assert!(rejected(base.clone().group("").validate(), "group"));
        assert!(rejected(
            base.clone().group("x".repeat(250)).validate(),
            "group"
        ));
        assert!(rejected(base.clone().max_bytes(10).validate(), "max_bytes"));
        assert!(rejected(
            base.clone().max_bytes(17 * MIB).validate(),
            "max_bytes"
        ));
        assert!(base.clone().max_wait(Duration::ZERO).validate().is_ok());
        assert!(rejected(
            base.clone().max_wait(Duration::from_secs(16)).validate(),
            "max_wait"
        ));
        assert!(rejected(
            base.clone().max_poll_bytes(KIB).validate(),
            "max_poll_bytes"
        ));
        assert!(rejected(
            base.clone().max_concurrent_fetches(0).validate(),
            "max_concurrent_fetches"
        ));
    }

    #[test]
    fn connection_bounds() {
        let base = ConnectionConfig::new();
        assert!(rejected(base.clone().address(" ").validate(), "address"));
        assert!(rejected(
            base.clone().connect_timeout(Duration::ZERO).validate(),
            "connect_timeout"
        ));
        assert!(rejected(
            base.clone().stream_window_bytes(1024).validate(),
            "stream_window_bytes"
        ));
        assert!(rejected(
            base.clone().connection_window_bytes(MIB as u32).validate(),
            "connection_window_bytes"
        ));
        assert!(rejected(
            base.clone().max_message_bytes(0).validate(),
            "max_message_bytes"
        ));
        assert!(
            base.clone()
                .max_frame_bytes(Some(MIB as u32))
                .validate()
                .is_ok()
        );
        assert!(rejected(
            base.clone().max_frame_bytes(Some(1 << 24)).validate(),
            "max_frame_bytes"
        ));
    }
}
