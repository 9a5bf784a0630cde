//! `sluice.v1.Queue`: leases, acks, nacks, extends, releases, describe and redrive.

use crate::Broker;
use crate::queue::{LeaseRequest, NackOutcome, PolicyChange, RetryPolicy};
use crate::topics::multiplier_milli;
use sluice_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Queue service.
#[derive(Debug, Clone)]
pub struct QueueService {
    broker: Arc<Broker>,
}

impl QueueService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl pb::queue_server::Queue for QueueService {
    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, group = %request.get_ref().group))]
    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let request = request.into_inner();
        let lease = LeaseRequest {
            topic: request.topic.clone(),
            group: request.group.clone(),
            max_messages: request.max_messages,
            visibility_timeout_ms: request.visibility_timeout_ms,
            max_wait_ms: request.max_wait_ms,
        };
        let (leased, acked) = self
            .broker
            .queues
            .lease(
                &self.broker.topics,
                &lease,
                self.broker.config.max_fetch_wait_ms,
                &request.ack_lease_tokens,
            )
            .await?;
        let messages = leased
            .into_iter()
            .map(|m| pb::LeasedMessage {
                partition: m.partition,
                offset: m.offset,
                key: m.key,
                value: m.value,
                headers: m
                    .headers
                    .into_iter()
                    .map(|(key, value)| pb::QueueHeader { key, value })
                    .collect(),
                attempt: m.attempt,
                lease_token: m.token,
                timestamp_ms: m.timestamp_ms,
                lease_deadline_ms: m.deadline_ms,
            })
            .collect();
        Ok(Response::new(pb::LeaseResponse {
            messages,
            ack_results: ack_results(request.ack_lease_tokens, acked),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, group = %request.get_ref().group))]
    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let request = request.into_inner();
        let outcomes = self
            .broker
            .queues
            .ack(
                &self.broker.topics,
                &request.topic,
                &request.group,
                &request.lease_tokens,
            )
            .await?;
        Ok(Response::new(pb::AckResponse {
            results: ack_results(request.lease_tokens, outcomes),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, group = %request.get_ref().group))]
    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let request = request.into_inner();
        // A nack may dead-letter (several appends): it runs to the end even if the caller
        // goes away, so no message is left half dead-lettered.
        let broker = Arc::clone(&self.broker);
        let outcome = tokio::spawn(async move {
            broker
                .queues
                .nack(
                    &broker,
                    &request.topic,
                    &request.group,
                    &request.lease_token,
                    request.delay_ms,
                    &request.reason,
                )
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("nack task failed: {e}")))??;
        Ok(Response::new(match outcome {
            NackOutcome::Retry(at) => pb::NackResponse {
                dead_lettered: false,
                available_at_ms: Some(at),
            },
            NackOutcome::DeadLettered => pb::NackResponse {
                dead_lettered: true,
                available_at_ms: None,
            },
        }))
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let request = request.into_inner();
        let deadline = self
            .broker
            .queues
            .extend(
                &self.broker.topics,
                &request.topic,
                &request.group,
                &request.lease_token,
                request.visibility_timeout_ms,
            )
            .await?;
        Ok(Response::new(pb::ExtendResponse {
            lease_deadline_ms: deadline,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let request = request.into_inner();
        self.broker
            .queues
            .release(
                &self.broker.topics,
                &request.topic,
                &request.group,
                &request.lease_token,
            )
            .await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn describe_queue(
        &self,
        request: Request<pb::DescribeQueueRequest>,
    ) -> Result<Response<pb::DescribeQueueResponse>, Status> {
        let request = request.into_inner();
        let (partitions, policy, own) = self
            .broker
            .queues
            .describe(&self.broker.topics, &request.topic, &request.group)
            .await?;
        Ok(Response::new(pb::DescribeQueueResponse {
            topic: request.topic,
            group: request.group,
            partitions: partitions
                .into_iter()
                .map(|p| pb::QueuePartition {
                    partition: p.partition,
                    done_below: p.done_below,
                    ready: p.ready,
                    delayed: p.delayed,
                    in_flight: p.in_flight,
                    done: p.done,
                    dead_lettered: p.dead_lettered,
                    log_end_offset: p.log_end,
                    oldest_ready_age_ms: p.oldest_ready_age_ms,
                })
                .collect(),
            max_attempts: policy.max_attempts,
            policy: Some(retry_policy(&policy, own)),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, group = %request.get_ref().group))]
    async fn delete_queue_group(
        &self,
        request: Request<pb::DeleteQueueGroupRequest>,
    ) -> Result<Response<pb::DeleteQueueGroupResponse>, Status> {
        let request = request.into_inner();
        self.broker
            .queues
            .delete_group(&self.broker.topics, &request.topic, &request.group)
            .await?;
        Ok(Response::new(pb::DeleteQueueGroupResponse {}))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic, group = %request.get_ref().group))]
    async fn configure_group(
        &self,
        request: Request<pb::ConfigureGroupRequest>,
    ) -> Result<Response<pb::ConfigureGroupResponse>, Status> {
        let request = request.into_inner();
        let any_set = request.max_attempts.is_some()
            || request.backoff_initial_ms.is_some()
            || request.backoff_multiplier.is_some()
            || request.backoff_max_ms.is_some();
        let change = match (request.follow_topic, any_set) {
            (true, true) => {
                return Err(Status::invalid_argument(
                    "invalid follow_topic: true drops the group's policy, so the policy fields must be unset",
                ));
            }
            (true, false) => PolicyChange::FollowTopic,
            (false, _) => PolicyChange::Set {
                max_attempts: request.max_attempts,
                backoff_initial_ms: request.backoff_initial_ms,
                backoff_multiplier_milli: request.backoff_multiplier.map(multiplier_milli),
                backoff_max_ms: request.backoff_max_ms,
            },
        };
        let (policy, own) = self
            .broker
            .queues
            .configure(&self.broker.topics, &request.topic, &request.group, change)
            .await?;
        Ok(Response::new(pb::ConfigureGroupResponse {
            policy: Some(retry_policy(&policy, own)),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic))]
    async fn redrive(
        &self,
        request: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::RedriveResponse>, Status> {
        let request = request.into_inner();
        let (from, to) = match (request.all, request.from_offset, request.to_offset) {
            (true, None, None) => (0, u64::MAX),
            (false, Some(from), Some(to)) => (from, to),
            _ => {
                return Err(Status::invalid_argument(
                    "invalid redrive range: give from_offset and to_offset, or all = true (not both)",
                ));
            }
        };
        // Runs to the end even if the caller goes away: each dead letter's intent, append and
        // done stay together.
        let broker = Arc::clone(&self.broker);
        let (redriven, already_redriven) = tokio::spawn(async move {
            broker
                .queues
                .redrive(&broker.topics, &request.topic, from, to)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("redrive task failed: {e}")))??;
        Ok(Response::new(pb::RedriveResponse {
            redriven,
            already_redriven,
        }))
    }
}

/// Each token with its outcome, as the wire answers an ack.
fn ack_results(tokens: Vec<String>, outcomes: Vec<crate::Result<()>>) -> Vec<pb::AckResult> {
    tokens
        .into_iter()
        .zip(outcomes)
        .map(|(lease_token, outcome)| match outcome {
            Ok(()) => pb::AckResult {
                lease_token,
                code: 0,
                message: String::new(),
            },
            Err(error) => {
                let status = Status::from(error);
                pb::AckResult {
                    lease_token,
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                }
            }
        })
        .collect()
}

/// A retry policy for the wire.
fn retry_policy(policy: &RetryPolicy, group_own: bool) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: policy.max_attempts,
        backoff_initial_ms: policy.backoff_initial_ms,
        backoff_multiplier: f64::from(policy.backoff_multiplier_milli) / 1000.0,
        backoff_max_ms: policy.backoff_max_ms,
        group_own,
    }
}
