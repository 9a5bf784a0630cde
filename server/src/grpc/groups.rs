//! `sluice.v1.Groups`: committed offsets.

use crate::Broker;
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
        let topic = self.broker.topics.get(&request.topic)?;
        let offsets = request
            .offsets
            .into_iter()
            .map(|c| (c.partition, c.offset, c.metadata))
            .collect();
        self.broker
            .offsets
            .commit(&request.group, &topic, offsets)
            .await?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let request = request.into_inner();
        let topic = self.broker.topics.get(&request.topic)?;
        let offsets = self
            .broker
            .offsets
            .fetch(&request.group, &topic, &request.partitions)?
            .into_iter()
            .map(|(partition, committed)| pb::CommittedOffset {
                partition,
                offset: committed.as_ref().map(|c| c.offset),
                metadata: committed.map(|c| c.metadata).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::FetchOffsetsResponse { offsets }))
    }
}
