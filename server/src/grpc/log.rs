//! `sluice.v1.Log`: produce, fetch (long poll), subscribe (server stream), list offsets.
//!
//! Produce takes its bytes from the in-flight bounds at once or answers `RESOURCE_EXHAUSTED`,
//! then appends (and under `fsync = always` group-commits) on the blocking pool. Fetch and
//! Subscribe wait on the partition's high-watermark watch, never by polling, and stop when the
//! broker shuts down.

use crate::Broker;
use crate::error::{Error, blocking};
use crate::topics::{Fsync, Partition};
use bytes::{Bytes, BytesMut};
use sluice_proto::v1 as pb;
use sluice_storage::format::{BatchPrefix, FormatError};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes a fetch returns when the request says 0.
const DEFAULT_FETCH_BYTES: u32 = 1 << 20;
/// Streamed responses buffered per subscription (each at most the fetch size).
const SUBSCRIBE_BUFFER: usize = 4;

/// The Log service.
#[derive(Debug, Clone)]
pub struct LogService {
    broker: Arc<Broker>,
}

impl LogService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, Error> {
        Ok(Arc::clone(
            self.broker.topics.get(topic)?.partition(partition)?,
        ))
    }

    /// The fetch size: the request's, or the default, kept under the message bound.
    fn fetch_bytes(&self, asked: u32) -> u64 {
        let asked = if asked == 0 {
            DEFAULT_FETCH_BYTES
        } else {
            asked
        };
        // Room for the response's other fields and framing.
        let cap = self.broker.config.max_message_bytes.saturating_sub(4096) as u64;
        u64::from(asked).min(cap)
    }
}

/// One past the last offset in a run of whole batches.
fn next_offset(mut batches: &[u8]) -> Option<u64> {
    let mut next = None;
    while let Some(prefix) = BatchPrefix::parse(batches) {
        next = Some(prefix.next_offset());
        batches = batches.get(prefix.total_len as usize..).unwrap_or_default();
    }
    next
}

/// Reads from a partition on the blocking pool: a read is mostly a slice of a mapped segment,
/// but a segment not in the store's cache is opened and mapped first (and its index checked
/// or rebuilt), which is file I/O that must not run on an async worker.
async fn read_blocking(
    partition: &Arc<Partition>,
    offset: u64,
    max_bytes: u64,
) -> Result<sluice_storage::ReadResult, Error> {
    let partition = Arc::clone(partition);
    blocking(move || Ok(partition.log.read(offset, max_bytes)?)).await
}

/// Completes when the high watermark passes `offset` (true) or the partition is gone (false).
async fn advanced(mut watermark: watch::Receiver<u64>, offset: u64) -> bool {
    watermark.wait_for(|hw| *hw > offset).await.is_ok()
}

/// Completes when the broker starts shutting down.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn fetch_response(partition: &Partition, batches: Bytes, high_watermark: u64) -> pb::FetchResponse {
    pb::FetchResponse {
        batches,
        high_watermark,
        earliest_offset: partition.log.earliest_offset(),
    }
}

#[tonic::async_trait]
impl pb::log_server::Log for LogService {
    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, partition = request.get_ref().partition, bytes = request.get_ref().batch.len()))]
    async fn produce(
        &self,
        mut request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let peer = request.remote_addr();
        // The admission permit (admission.rs) covered receiving the body; the in-flight
        // bounds take over from here.
        drop(
            request
                .extensions_mut()
                .remove::<crate::admission::Admitted>(),
        );
        let request = request.into_inner();
        let topic = self.broker.topics.get(&request.topic)?;
        if topic.name.starts_with("__") {
            // Internal topics (committed offsets) are written by the broker alone.
            return Err(Error::invalid(
                "topic",
                &topic.name,
                "internal topics are written by the broker only",
            )
            .into());
        }
        let partition = Arc::clone(topic.partition(request.partition)?);
        let len = request.batch.len();
        let max = topic.settings.max_batch_bytes;
        if len > max as usize {
            return Err(Error::Storage(sluice_storage::Error::InvalidBatch(
                FormatError::TooLarge {
                    len: len as u64,
                    max: u64::from(max),
                },
            ))
            .into());
        }
        let permit = self.broker.limiter.try_acquire(
            || format!("{}/{}", topic.name, partition.id),
            &partition.inflight,
            peer,
            len as u32,
        )?;
        let always = topic.settings.fsync == Fsync::Always;
        let appended = blocking(move || {
            let _permit = permit;
            // The broker stamps the base offset in place: the batch must be ours to change.
            // `From<Bytes>` reuses the buffer when no one else holds it and copies otherwise.
            let mut batch = BytesMut::from(request.batch);
            let appended = partition.log.append(&mut batch)?;
            if always {
                partition.log.flush()?;
            }
            Ok(appended)
        })
        .await?;
        Ok(Response::new(pb::ProduceResponse {
            base_offset: appended.base_offset,
            last_offset: appended.last_offset,
            append_time_ms: appended.append_time_ms,
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, partition = request.get_ref().partition, offset = request.get_ref().offset))]
    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let request = request.into_inner();
        let partition = self.partition(&request.topic, request.partition)?;
        let max_bytes = self.fetch_bytes(request.max_bytes);
        let wait = request
            .max_wait_ms
            .min(self.broker.config.max_fetch_wait_ms);
        // Subscribe to the watermark before reading, so no advance is missed in between.
        let watermark = partition.high_watermark.clone();
        let mut read = read_blocking(&partition, request.offset, max_bytes).await?;
        if read.batches.is_empty() && wait > 0 {
            let offset = request.offset;
            tokio::select! {
                _ = tokio::time::timeout(
                    Duration::from_millis(u64::from(wait)),
                    advanced(watermark, offset),
                ) => {}
                () = stopped(self.broker.shutdown.clone()) => {}
            }
            read = read_blocking(&partition, request.offset, max_bytes).await?;
        }
        Ok(Response::new(fetch_response(
            &partition,
            read.batches,
            read.high_watermark,
        )))
    }

    type SubscribeStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, partition = request.get_ref().partition, offset = request.get_ref().offset))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let partition = self.partition(&request.topic, request.partition)?;
        let max_bytes = self.fetch_bytes(request.max_bytes);
        // Refuse a bad start at once rather than in the stream.
        read_blocking(&partition, request.offset, 0).await?;
        let (sender, receiver) = mpsc::channel(SUBSCRIBE_BUFFER);
        let shutdown = self.broker.shutdown.clone();
        let watermark = partition.high_watermark.clone();
        tokio::spawn(async move {
            let mut offset = request.offset;
            loop {
                let read = match read_blocking(&partition, offset, max_bytes).await {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                if let Some(next) = next_offset(&read.batches) {
                    offset = next;
                    let response = fetch_response(&partition, read.batches, read.high_watermark);
                    tokio::select! {
                        sent = sender.send(Ok(response)) => if sent.is_err() { return },
                        () = stopped(shutdown.clone()) => return,
                    }
                    continue;
                }
                tokio::select! {
                        alive = advanced(watermark.clone(), offset) => {
                        if !alive {
                            // The partition went away (topic deleted).
                            let _ = sender
                                .send(Err(Status::unavailable("partition closed: topic deleted")))
                                .await;
                            return;
                        }
                    }
                    // The client went away: stop at once, costing nothing further.
                    _ = sender.closed() => return,
                    () = stopped(shutdown.clone()) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let partition = self.partition(&request.topic, request.partition)?;
        let log = Arc::clone(&partition.log);
        let offset = match pb::OffsetSpec::try_from(request.spec) {
            Ok(pb::OffsetSpec::Earliest) => Some(log.earliest_offset()),
            Ok(pb::OffsetSpec::Latest) => Some(log.high_watermark()),
            Ok(pb::OffsetSpec::Timestamp) => {
                let time = request.timestamp_ms;
                blocking(move || Ok(log.offset_for_time(time)?)).await?
            }
            Ok(pb::OffsetSpec::Unspecified) | Err(_) => {
                return Err(Error::invalid(
                    "spec",
                    request.spec,
                    "must be EARLIEST, LATEST or TIMESTAMP",
                )
                .into());
            }
        };
        Ok(Response::new(pb::ListOffsetsResponse {
            offset,
            high_watermark: partition.log.high_watermark(),
            earliest_offset: partition.log.earliest_offset(),
        }))
    }
}
