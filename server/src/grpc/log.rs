//! `sluice.v1.Log`: produce, fetch (long poll), subscribe (server stream), list offsets.
//!
//! Translation only: Produce hands the batch to the partition's write path
//! (`Partition::produce`, which owns limits, durability and counters); Fetch and Subscribe read
//! through the partition and wait on its high-watermark watch, never by polling, and stop when
//! the broker shuts down.

use crate::Broker;
use crate::error::Error;
use crate::partition::Partition;
use sluice_proto::v1 as pb;
use sluice_storage::format::Batches;
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

/// Completes when the broker starts shutting down.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn fetch_response(
    partition: &Partition,
    batches: bytes::Bytes,
    high_watermark: u64,
) -> pb::FetchResponse {
    pb::FetchResponse {
        batches,
        high_watermark,
        earliest_offset: partition.earliest_offset(),
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
        let partition = self.partition(&request.topic, request.partition)?;
        let produced = partition.produce(request.batch, peer).await?;
        Ok(Response::new(pb::ProduceResponse {
            base_offset: produced.ack.base_offset,
            last_offset: produced.ack.last_offset,
            append_time_ms: produced.ack.append_time_ms,
            duplicate: produced.duplicate,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn init_producer(
        &self,
        request: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let request = request.into_inner();
        let identity = self
            .broker
            .producer_ids
            .init(request.transactional_id.as_deref())
            .await?;
        Ok(Response::new(pb::InitProducerResponse {
            producer_id: identity.producer_id,
            producer_epoch: i32::from(identity.epoch),
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
        let mut read = partition.read(request.offset, max_bytes).await?;
        if read.batches.is_empty() && wait > 0 {
            // The wait checks the watermark first, so an append since the read is not missed.
            let waited = tokio::select! {
                waited = tokio::time::timeout(
                    Duration::from_millis(u64::from(wait)),
                    partition.wait_past(request.offset),
                ) => waited,
                () = stopped(self.broker.shutdown.clone()) => Ok(Ok(())),
            };
            if let Ok(Err(deleted)) = waited {
                return Err(deleted.into());
            }
            read = partition.read(request.offset, max_bytes).await?;
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
        partition.read(request.offset, 0).await?;
        let (sender, receiver) = mpsc::channel(SUBSCRIBE_BUFFER);
        let shutdown = self.broker.shutdown.clone();
        tokio::spawn(async move {
            let mut offset = request.offset;
            loop {
                let read = match partition.read(offset, max_bytes).await {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                if let Some(next) = Batches::next_offset(&read.batches) {
                    offset = next;
                    let response = fetch_response(&partition, read.batches, read.high_watermark);
                    tokio::select! {
                        sent = sender.send(Ok(response)) => if sent.is_err() { return },
                        () = stopped(shutdown.clone()) => return,
                    }
                    continue;
                }
                tokio::select! {
                    waited = partition.wait_past(offset) => {
                        if let Err(deleted) = waited {
                            let _ = sender.send(Err(deleted.into())).await;
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
        let offset = match pb::OffsetSpec::try_from(request.spec) {
            Ok(pb::OffsetSpec::Earliest) => Some(partition.earliest_offset()),
            Ok(pb::OffsetSpec::Latest) => Some(partition.high_watermark()),
            Ok(pb::OffsetSpec::Timestamp) => {
                partition.offset_for_time(request.timestamp_ms).await?
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
            high_watermark: partition.high_watermark(),
            earliest_offset: partition.earliest_offset(),
        }))
    }
}
