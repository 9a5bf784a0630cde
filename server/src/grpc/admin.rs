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
            topic: Some(convert::topic_description(&topic)),
        }))
    }
}
