//! `sluice.v1.Groups`: membership (join, heartbeat, leave) and committed offsets.

use crate::Broker;
use crate::grpc::convert;
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
    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group))]
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let join = convert::join(request.into_inner());
        let view = self.broker.groups.join(&self.broker.topics, join).await?;
        Ok(Response::new(pb::JoinResponse {
            heartbeat_interval_ms: self
                .broker
                .groups
                .heartbeat_interval_ms(view.session_timeout_ms),
            member_id: view.member_id,
            generation: view.generation,
            assignment: convert::topic_partitions(&view.assignment),
        }))
    }

    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group, member = %request.get_ref().member_id))]
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let owned = convert::partition_set(&request.owned);
        let view = self
            .broker
            .groups
            .heartbeat(
                &request.group,
                &request.member_id,
                request.generation,
                owned,
            )
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            generation: view.generation,
            assignment: convert::topic_partitions(&view.assignment),
            heartbeat_interval_ms: self
                .broker
                .groups
                .heartbeat_interval_ms(view.session_timeout_ms),
        }))
    }

    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group, member = %request.get_ref().member_id))]
    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let request = request.into_inner();
        self.broker
            .groups
            .leave(&self.broker.topics, &request.group, &request.member_id)
            .await?;
        Ok(Response::new(pb::LeaveResponse {}))
    }

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
            .groups
            .commit(
                &request.group,
                &request.member_id,
                request.generation,
                &topic,
                offsets,
            )
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
            .groups
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
