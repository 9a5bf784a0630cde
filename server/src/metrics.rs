//! `/metrics` on the HTTP port: the broker's state in the OpenMetrics text format, which
//! Prometheus scrapes (design.md §4 observability; the first slice of the metrics issue).
//!
//! Everything is read at scrape time from what the broker keeps anyway — the write path's
//! atomic counters and each log's offsets and sizes — by one [`Collector`], so the hot path
//! gains no lock and no allocation, and a partition's series come and go with its topic.
//! Labels are bounded: topic and partition, group for group gauges; never a key or a member.

use crate::Broker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/metrics` answers: the registry with the broker's collector.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics of `broker`, with the request latencies `timing` records.
    pub fn new(broker: Arc<Broker>, timing: &RequestTiming) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "sluice_grpc_request_duration_seconds",
            "Time from a gRPC request's headers to its response's headers (a stream: until it starts), per method; refused and unknown methods included.",
            timing.family.clone(),
        );
        registry.register_collector(Box::new(BrokerCollector { broker }));
        Self { registry }
    }

    /// The current metrics, encoded.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[derive(Debug)]
struct BrokerCollector {
    broker: Arc<Broker>,
}

/// One partition as the families see it.
struct Row {
    topic: String,
    partition: String,
    partition_ref: Arc<crate::partition::Partition>,
}

type Read = fn(&crate::partition::Partition) -> u64;

fn counter(atomic: &AtomicU64) -> u64 {
    atomic.load(Ordering::Relaxed)
}

/// Per-partition counters of the write path: name, help, reader.
const COUNTERS: &[(&str, &str, Read)] = &[
    (
        "sluice_partition_produced_records",
        "Records appended for producers.",
        |p| counter(&p.counters().produced_records),
    ),
    (
        "sluice_partition_produced_bytes",
        "Bytes of batches appended for producers.",
        |p| counter(&p.counters().produced_bytes),
    ),
    (
        "sluice_partition_produced_batches",
        "Batches appended for producers.",
        |p| counter(&p.counters().produced_batches),
    ),
    (
        "sluice_partition_internal_batches",
        "Batches the broker appended for its own state.",
        |p| counter(&p.counters().internal_batches),
    ),
    (
        "sluice_partition_rejected_batches",
        "Batches refused by validation or their pre-append check (bad batch, sequence, fenced).",
        |p| counter(&p.counters().rejected),
    ),
    (
        "sluice_partition_busy_refusals",
        "Produce requests refused by the in-flight bounds (RESOURCE_EXHAUSTED).",
        |p| counter(&p.counters().refused_busy),
    ),
    (
        "sluice_partition_duplicate_batches",
        "Retries of an idempotent producer's batch answered without appending again.",
        |p| counter(&p.counters().duplicates),
    ),
];

/// Per-partition gauges of the log: name, help, reader.
const GAUGES: &[(&str, &str, Read)] = &[
    (
        "sluice_partition_log_end_offset",
        "One past the last offset written.",
        |p| p.log_end_offset(),
    ),
    (
        "sluice_partition_high_watermark",
        "One past the last offset readable (acknowledged).",
        |p| p.high_watermark(),
    ),
    (
        "sluice_partition_earliest_offset",
        "First offset retained.",
        |p| p.earliest_offset(),
    ),
    (
        "sluice_partition_size_bytes",
        "Bytes of the partition's segments.",
        |p| p.size_bytes(),
    ),
    (
        "sluice_partition_segments",
        "Segments of the partition.",
        |p| p.segment_count() as u64,
    ),
    (
        "sluice_partition_idempotent_producers",
        "Idempotent producers the partition keeps sequence state for.",
        |p| p.producer_count() as u64,
    ),
];

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let topics = self.broker.topics.list();
        let rows: Vec<Row> = topics
            .iter()
            .flat_map(|topic| {
                topic.partitions.iter().map(|partition| Row {
                    topic: topic.name.clone(),
                    partition: partition.id().to_string(),
                    partition_ref: Arc::clone(partition),
                })
            })
            .collect();
        for &(name, help, read) in COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in &rows {
                let labels = [
                    ("topic", row.topic.as_str()),
                    ("partition", row.partition.as_str()),
                ];
                ConstCounter::new(read(&row.partition_ref))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        for &(name, help, read) in GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in &rows {
                let labels = [
                    ("topic", row.topic.as_str()),
                    ("partition", row.partition.as_str()),
                ];
                ConstGauge::new(gauge_value(read(&row.partition_ref)))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let family = encoder.encode_descriptor(
            "sluice_topics",
            "Topics, internal ones included.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(gauge_value(topics.len() as u64)).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "sluice_group_members",
            "Live members of each consumer group.",
            None,
            MetricType::Gauge,
        )?;
        for (group, members) in self.broker.groups.list() {
            ConstGauge::new(gauge_value(members as u64))
                .encode(family.encode_family(&[("group", group.as_str())])?)?;
        }
        if let Some(rss) = resident_bytes() {
            let family = encoder.encode_descriptor(
                "sluice_process_resident_memory_bytes",
                "Resident set size of the broker process.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(gauge_value(rss)).encode(family)?;
        }
        Ok(())
    }
}

/// The process's resident set size, from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Label values of the request histogram: the gRPC method path.
type MethodLabels = Vec<(&'static str, String)>;

fn request_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// A tower layer timing every gRPC request per method, into one histogram family. Paths the
/// broker does not serve (answered `UNIMPLEMENTED`) share the label `unknown`, so a client
/// cannot grow the label set.
#[derive(Debug, Clone)]
pub struct RequestTiming {
    family: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for RequestTiming {
    fn default() -> Self {
        Self {
            family: Family::new_with_constructor(request_histogram),
        }
    }
}

impl<S> tower::Layer<S> for RequestTiming {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            family: self.family.clone(),
        }
    }
}

/// The service [`RequestTiming`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct Timed<S> {
    inner: S,
    family: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

/// `grpc-status` of a method the server does not have.
const UNIMPLEMENTED: &str = "12";

impl<S, B, R> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().to_owned();
        let family = self.family.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            if let Ok(response) = &response {
                let unknown = response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|status| status == UNIMPLEMENTED);
                let method = if unknown {
                    "unknown".to_owned()
                } else {
                    method
                };
                family
                    .get_or_create(&vec![("method", method)])
                    .observe(started.elapsed().as_secs_f64());
            }
            response
        })
    }
}
