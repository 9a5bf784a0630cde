//! `sluice.v1.Groups`: committed offsets.

use crate::Broker;
use crate::error::{Error, blocking};
use sluice_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Groups service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    broker: Arc<Broker>,
}

impl GroupsService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl pb::groups_server::Groups for GroupsService {
    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group, topic = %request.get_ref().topic))]
    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let request = request.into_inner();
        crate::groups::validate_group(&request.group)?;
        let topic = self.broker.topics.get(&request.topic)?;
        let mut offsets = Vec::with_capacity(request.offsets.len());
        let mut seen = std::collections::HashSet::with_capacity(request.offsets.len());
        for commit in request.offsets {
            let partition = topic.partition(commit.partition)?;
            if !seen.insert(commit.partition) {
                return Err(Error::invalid(
                    "offsets",
                    format!("partition {} twice", commit.partition),
                    "each partition may be committed once per request",
                )
                .into());
            }
            // Committing past the high watermark would skip data never read.
            let latest = partition.log.high_watermark();
            if commit.offset > latest {
                return Err(Error::Storage(sluice_storage::Error::OffsetOutOfRange {
                    offset: commit.offset,
                    earliest: partition.log.earliest_offset(),
                    latest,
                })
                .into());
            }
            offsets.push((commit.partition, commit.offset, commit.metadata));
        }
        let broker = Arc::clone(&self.broker);
        blocking(move || {
            broker
                .offsets
                .commit(&request.group, &request.topic, &offsets)
        })
        .await?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let request = request.into_inner();
        crate::groups::validate_group(&request.group)?;
        let topic = self.broker.topics.get(&request.topic)?;
        let partitions: Vec<u32> = if request.partitions.is_empty() {
            (0..topic.partitions.len() as u32).collect()
        } else {
            request.partitions
        };
        let mut offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            topic.partition(partition)?;
            let committed = self
                .broker
                .offsets
                .fetch(&request.group, &request.topic, partition);
            offsets.push(pb::CommittedOffset {
                partition,
                offset: committed.as_ref().map(|c| c.offset),
                metadata: committed.map(|c| c.metadata).unwrap_or_default(),
            });
        }
        Ok(Response::new(pb::FetchOffsetsResponse { offsets }))
    }
}
