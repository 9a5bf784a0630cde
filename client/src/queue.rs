//! [`Queue`]: the queue-mode calls — lease, ack, nack, extend, release, describe, redrive —
//! through the same connection settings and retry policy as the other clients.
//!
//! Most programs use a [`Worker`](crate::Worker) on top of it; this is for those who want the
//! calls themselves (and for the `sluice` CLI).

use std::time::Duration;

use sluice_proto::v1::{
    AckRequest, ConfigureGroupRequest, DeleteQueueGroupRequest, DescribeQueueRequest,
    ExtendRequest, LeaseRequest, NackRequest, RedriveRequest, ReleaseRequest,
    queue_client::QueueClient,
};
use tonic::transport::Channel;

pub use sluice_proto::v1::{
    AckResult, DescribeQueueResponse as QueueDescription, LeasedMessage as Job, NackResponse,
    QueueHeader, QueuePartition, RedriveResponse, RetryPolicy as QueuePolicy,
};

use crate::config::ConnectionConfig;
use crate::connection::{self, Idempotency, RetryPolicy};
use crate::error::{Error, Result};

/// Which dead letters a redrive brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedriveRange {
    /// Every dead letter.
    All,
    /// Dead-letter offsets `from..=to`, in every partition of the DLQ.
    Offsets {
        /// First offset.
        from: u64,
        /// Last offset (inclusive).
        to: u64,
    },
}

/// A change to a queue group's retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum QueuePolicyChange {
    /// Drop the group's own policy: it follows its topic's.
    FollowTopic,
    /// The group's own policy: the fields given, the rest as in force now.
    Set {
        /// Deliveries before dead-lettering.
        max_attempts: Option<u32>,
        /// Backoff before the second delivery (full jitter below it).
        backoff_initial: Option<Duration>,
        /// Growth per attempt.
        backoff_multiplier: Option<f64>,
        /// Longest backoff.
        backoff_max: Option<Duration>,
    },
}

/// Queue-mode calls on one connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    client: QueueClient<Channel>,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl Queue {
    /// Connects to the broker (validating `config`), with the default retry policy and a 30 s
    /// request timeout (plus the long-poll wait, for leases).
    pub async fn connect(config: ConnectionConfig) -> Result<Self> {
        let channel = connection::connect(&config).await?;
        let limit = config.max_message_bytes;
        Ok(Self {
            client: QueueClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
        })
    }

    /// Uses `retry` for every request from now on.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Leases up to `max_messages` jobs of `topic` for `group` (created on its first lease),
    /// each for `visibility`, waiting up to `wait` while none is available.
    pub async fn lease(
        &self,
        topic: &str,
        group: &str,
        max_messages: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Job>> {
        let (jobs, _) = self
            .lease_and_ack(topic, group, max_messages, visibility, wait, Vec::new())
            .await?;
        Ok(jobs)
    }

    /// [`lease`](Self::lease), acknowledging `acks` first in the same call (and the same
    /// durable write on the broker): one round trip per worker cycle. One result per ack
    /// token (code 0: acknowledged). A retry after a lost answer is safe: an ack already made
    /// answers that the job is done.
    pub async fn lease_and_ack(
        &self,
        topic: &str,
        group: &str,
        max_messages: u32,
        visibility: Duration,
        wait: Duration,
        acks: Vec<String>,
    ) -> Result<(Vec<Job>, Vec<AckResult>)> {
        let request = LeaseRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            max_messages,
            visibility_timeout_ms: millis(visibility),
            max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            ack_lease_tokens: acks,
        };
        // A lease that timed out unseen only delays its jobs until their visibility ends.
        let response = self
            .call(
                "lease from",
                topic,
                Idempotency::Idempotent,
                self.request_timeout + wait,
                |mut client, request| async move { client.lease(request).await },
                request,
            )
            .await?;
        Ok((response.messages, response.ack_results))
    }

    /// Acknowledges jobs by their lease tokens; one result per token (code 0: acknowledged).
    pub async fn ack(
        &self,
        topic: &str,
        group: &str,
        tokens: Vec<String>,
    ) -> Result<Vec<AckResult>> {
        let request = AckRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            lease_tokens: tokens,
        };
        let response = self
            .call(
                "ack on",
                topic,
                Idempotency::Idempotent,
                self.request_timeout,
                |mut client, request| async move { client.ack(request).await },
                request,
            )
            .await?;
        Ok(response.results)
    }

    /// Fails a job: retried after `delay` (or the topic's backoff), or dead-lettered after
    /// its last attempt.
    pub async fn nack(
        &self,
        topic: &str,
        group: &str,
        token: &str,
        delay: Option<Duration>,
        reason: &str,
    ) -> Result<NackResponse> {
        let request = NackRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            lease_token: token.to_owned(),
            delay_ms: delay.map(millis),
            reason: reason.to_owned(),
        };
        self.call(
            "nack on",
            topic,
            Idempotency::Idempotent,
            self.request_timeout,
            |mut client, request| async move { client.nack(request).await },
            request,
        )
        .await
    }

    /// Extends a job's lease to now + `visibility`; returns the new deadline (ms since the
    /// epoch, broker clock).
    pub async fn extend(
        &self,
        topic: &str,
        group: &str,
        token: &str,
        visibility: Duration,
    ) -> Result<i64> {
        let request = ExtendRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            lease_token: token.to_owned(),
            visibility_timeout_ms: millis(visibility),
        };
        let response = self
            .call(
                "extend on",
                topic,
                Idempotency::Idempotent,
                self.request_timeout,
                |mut client, request| async move { client.extend(request).await },
                request,
            )
            .await?;
        Ok(response.lease_deadline_ms)
    }

    /// Gives a job back without counting the attempt.
    pub async fn release(&self, topic: &str, group: &str, token: &str) -> Result<()> {
        let request = ReleaseRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            lease_token: token.to_owned(),
        };
        self.call(
            "release on",
            topic,
            Idempotency::Idempotent,
            self.request_timeout,
            |mut client, request| async move { client.release(request).await },
            request,
        )
        .await?;
        Ok(())
    }

    /// A queue group's counts per partition.
    pub async fn describe(&self, topic: &str, group: &str) -> Result<QueueDescription> {
        let request = DescribeQueueRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
        };
        self.call(
            "describe queue of",
            topic,
            Idempotency::Idempotent,
            self.request_timeout,
            |mut client, request| async move { client.describe_queue(request).await },
            request,
        )
        .await
    }

    /// Re-enqueues dead letters of `<topic>.dlq` into `topic`, each at most once ever.
    /// Retrying is safe: a dead letter already redriven counts as `already_redriven`.
    pub async fn redrive(&self, topic: &str, range: RedriveRange) -> Result<RedriveResponse> {
        let (from_offset, to_offset, all) = match range {
            RedriveRange::All => (None, None, true),
            RedriveRange::Offsets { from, to } => (Some(from), Some(to), false),
        };
        let request = RedriveRequest {
            topic: topic.to_owned(),
            from_offset,
            to_offset,
            all,
        };
        self.call(
            "redrive to",
            topic,
            Idempotency::Idempotent,
            self.request_timeout * 10,
            |mut client, request| async move { client.redrive(request).await },
            request,
        )
        .await
    }

    /// Gives `group` its own retry policy (unset fields keep the values in force; the group is
    /// created if new), or with `follow_topic` drops it; returns the policy now in force.
    pub async fn configure_group(
        &self,
        topic: &str,
        group: &str,
        policy: QueuePolicyChange,
    ) -> Result<QueuePolicy> {
        let request = match policy {
            QueuePolicyChange::FollowTopic => ConfigureGroupRequest {
                topic: topic.to_owned(),
                group: group.to_owned(),
                follow_topic: true,
                ..ConfigureGroupRequest::default()
            },
            QueuePolicyChange::Set {
                max_attempts,
                backoff_initial,
                backoff_multiplier,
                backoff_max,
            } => ConfigureGroupRequest {
                topic: topic.to_owned(),
                group: group.to_owned(),
                max_attempts,
                backoff_initial_ms: backoff_initial.map(millis),
                backoff_multiplier,
                backoff_max_ms: backoff_max.map(millis),
                follow_topic: false,
            },
        };
        let response = self
            .call(
                "configure queue group of",
                topic,
                Idempotency::Idempotent,
                self.request_timeout,
                |mut client, request| async move { client.configure_group(request).await },
                request,
            )
            .await?;
        response.policy.ok_or_else(|| Error::UnexpectedResponse {
            operation: "configure queue group of",
            topic: topic.to_owned(),
            what: "no policy".to_owned(),
        })
    }

    /// Deletes queue group `group` of `topic` (its progress, leases and policy).
    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let request = DeleteQueueGroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
        };
        self.call(
            "delete queue group of",
            topic,
            Idempotency::NonIdempotent,
            self.request_timeout,
            |mut client, request| async move { client.delete_queue_group(request).await },
            request,
        )
        .await?;
        Ok(())
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        operation: &'static str,
        topic: &str,
        idempotency: Idempotency,
        timeout: Duration,
        send: F,
        request: Req,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(QueueClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        connection::call(
            &self.client,
            &self.retry,
            idempotency,
            timeout,
            operation,
            topic,
            send,
            request,
        )
        .await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
