//! `sluice.v1.Admin`: topics.

use crate::Broker;
use crate::error::blocking;
use crate::topics::{Topic, TopicSettings};
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

pub(crate) fn describe(topic: &Topic) -> pb::TopicDescription {
    pb::TopicDescription {
        name: topic.name.clone(),
        config: Some(topic.settings.to_proto()),
        partitions: topic
            .partitions
            .iter()
            .map(|p| pb::PartitionDescription {
                partition: p.id,
                earliest_offset: p.log.earliest_offset(),
                latest_offset: p.log.high_watermark(),
                log_end_offset: p.log.log_end_offset(),
                size_bytes: p.log.size_bytes(),
                segments: p.log.segment_count() as u32,
            })
            .collect(),
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
        let settings = TopicSettings::from_proto(request.config.as_ref())?;
        let broker = Arc::clone(&self.broker);
        let topic = blocking(move || {
            broker
                .topics
                .create(&request.name, request.partitions, settings, false)
        })
        .await?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(describe(&topic)),
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
        blocking(move || broker.topics.delete(&name)).await?;
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

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let topic = self.broker.topics.get(&request.get_ref().name)?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }
}
