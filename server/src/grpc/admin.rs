//! `sluice.v1.Admin`: topics.

use crate::Broker;
use crate::error::blocking;
use crate::grpc::convert;
use sluice_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let settings = convert::topic_settings(request.config.as_ref())?;
        let broker = Arc::clone(&self.broker);
        let topic = blocking(move || {
            broker
                .topics
                .create(&request.name, request.partitions, settings, false)
        })
        .await?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(convert::topic_description(&topic)),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        crate::topics::validate_name(&name, false)?;
        let broker = Arc::clone(&self.broker);
        let deleted = name.clone();
        blocking(move || broker.topics.delete(&deleted)).await?;
        self.broker.queues.forget_topic(&name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self
            .broker
            .topics
            .list()
            .iter()
            .filter(|t| !t.name.starts_with("__"))
            .map(|t| pb::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let groups = self
            .broker
            .groups
            .list()
            .into_iter()
            .map(|(group, members)| pb::GroupSummary {
                group,
                members: members as u32,
            })
            .collect();
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let group = request.into_inner().group;
        let description = self.broker.groups.describe(&self.broker.topics, &group)?;
        Ok(Response::new(convert::group_description(
            &group,
            description,
        )))
    }

    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group, topic = %request.get_ref().topic))]
    async fn reset_group_offsets(
        &self,
        request: Request<pb::ResetGroupOffsetsRequest>,
    ) -> Result<Response<pb::ResetGroupOffsetsResponse>, Status> {
        let request = request.into_inner();
        let to = convert::reset_to(request.to)?;
        let topic = self.broker.topics.get(&request.topic)?;
        let offsets = self
            .broker
            .groups
            .reset(&request.group, &topic, to)
            .await?
            .into_iter()
            .map(|(partition, offset)| pb::PartitionOffset {
                partition,
                offset,
                metadata: String::new(),
            })
            .collect();
        Ok(Response::new(pb::ResetGroupOffsetsResponse { offsets }))
    }

    #[tracing::instrument(skip_all, fields(group = %request.get_ref().group))]
    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        self.broker
            .groups
            .delete(&request.into_inner().group)
            .await?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn alter_topic(
        &self,
        request: Request<pb::AlterTopicRequest>,
    ) -> Result<Response<pb::AlterTopicResponse>, Status> {
        let request = request.into_inner();
        let config = request.config.unwrap_or_default();
        if let Some(field) = convert::unalterable(&config) {
            return Err(Status::invalid_argument(format!(
                "invalid config.{field}: cannot be altered; only max_attempts and backoff_* can"
            )));
        }
        let topic = self.broker.topics.get(&request.name)?;
        let retry = convert::retry_policy(&config, topic.settings.retry)?;
        let broker = Arc::clone(&self.broker);
        let name = request.name;
        let topic = blocking(move || broker.topics.alter_retry(&name, retry)).await?;
        Ok(Response::new(pb::AlterTopicResponse {
            topic: Some(convert::topic_description(&topic)),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let topic = self.broker.topics.get(&request.get_ref().name)?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(convert::topic_description(&topic)),
        }))
    }
}
