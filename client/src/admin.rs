//! [`Admin`]: topics — create, delete, list, describe — through the same connection settings
//! and retry policy as the producer and consumer.
//!
//! The descriptions it returns are the wire's own messages (re-exported here), as Kafka's
//! admin client returns its `TopicDescription`: they are the contract, with nothing to add.

use std::time::Duration;

use sluice_proto::v1::{
    AlterTopicRequest, CreateTopicRequest, DeleteGroupRequest, DeleteTopicRequest,
    DescribeGroupRequest, DescribeTopicRequest, ListGroupsRequest, ListTopicsRequest,
    ResetGroupOffsetsRequest, admin_client::AdminClient, reset_group_offsets_request,
};
use tonic::transport::Channel;

pub use sluice_proto::v1::{
    CleanupPolicy, DescribeGroupResponse as GroupDescription, FsyncPolicy, GroupMember,
    GroupPartition, GroupSummary, PartitionDescription, PartitionOffset, TopicConfig,
    TopicDescription, TopicPartitions, TopicSummary,
};

/// Where [`Admin::reset_group_offsets`] moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetTo {
    /// Each partition's earliest offset (replay everything retained).
    Earliest,
    /// Each partition's end (skip everything so far).
    Latest,
    /// This offset, clamped to each partition's range.
    Offset(u64),
    /// The first offset appended at or after this time, ms since the Unix epoch.
    Timestamp(i64),
}

use crate::config::ConnectionConfig;
use crate::connection::{self, Idempotency, RetryPolicy};
use crate::error::{Error, Result};

/// Topic administration; cheap to clone.
///
/// ```no_run
/// # async fn example() -> sluice_client::Result<()> {
/// use sluice_client::{Admin, ConnectionConfig, admin::TopicConfig};
/// let admin = Admin::connect(ConnectionConfig::new().address("127.0.0.1:7070")).await?;
/// let created = admin.create_topic("orders", 3, TopicConfig::default()).await?;
/// assert_eq!(created.partitions.len(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl Admin {
    /// Connects to the broker (validating `config`), with the default retry policy and a 30 s
    /// request timeout.
    pub async fn connect(config: ConnectionConfig) -> Result<Self> {
        let channel = connection::connect(&config).await?;
        Ok(Self {
            client: connection::admin_client(channel, &config),
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

    /// Creates `name` with `partitions` partitions and `config` (unset fields take the
    /// broker's defaults); returns its description. Not retried after a timeout: a create
    /// that took effect unseen would be `ALREADY_EXISTS` the second time.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription> {
        let request = CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            config: Some(config),
        };
        let response = self
            .call(
                "create topic",
                name,
                Idempotency::NonIdempotent,
                |mut client, request| async move { client.create_topic(request).await },
                request,
            )
            .await?;
        response.topic.ok_or_else(|| Error::UnexpectedResponse {
            operation: "create topic",
            topic: name.to_owned(),
            what: "no topic description".to_owned(),
        })
    }

    /// Deletes `name` and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicRequest {
            name: name.to_owned(),
        };
        self.call(
            "delete topic",
            name,
            Idempotency::NonIdempotent,
            |mut client, request| async move { client.delete_topic(request).await },
            request,
        )
        .await?;
        Ok(())
    }

    /// Every topic (internal ones aside), by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let response = self
            .call(
                "list topics",
                "",
                Idempotency::Idempotent,
                |mut client, request| async move { client.list_topics(request).await },
                ListTopicsRequest {},
            )
            .await?;
        Ok(response.topics)
    }

    /// `name`'s config and per-partition offsets and sizes.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let request = DescribeTopicRequest {
            name: name.to_owned(),
        };
        let response = self
            .call(
                "describe topic",
                name,
                Idempotency::Idempotent,
                |mut client, request| async move { client.describe_topic(request).await },
                request,
            )
            .await?;
        response.topic.ok_or_else(|| Error::UnexpectedResponse {
            operation: "describe topic",
            topic: name.to_owned(),
            what: "no topic description".to_owned(),
        })
    }

    /// Changes `name`'s queue settings (`max_attempts`, `backoff_*`; the other fields of
    /// `config` must be unset); returns its description.
    pub async fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<TopicDescription> {
        let request = AlterTopicRequest {
            name: name.to_owned(),
            config: Some(config),
        };
        let response = self
            .call(
                "alter topic",
                name,
                Idempotency::Idempotent,
                |mut client, request| async move { client.alter_topic(request).await },
                request,
            )
            .await?;
        response.topic.ok_or_else(|| Error::UnexpectedResponse {
            operation: "alter topic",
            topic: name.to_owned(),
            what: "no topic description".to_owned(),
        })
    }

    /// Groups with members or committed offsets, with their live member counts.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let response = self
            .call(
                "list groups",
                "",
                Idempotency::Idempotent,
                |mut client, request| async move { client.list_groups(request).await },
                ListGroupsRequest {},
            )
            .await?;
        Ok(response.groups)
    }

    /// A group's members, assignments, and committed offset, log end and lag per partition.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let request = DescribeGroupRequest {
            group: group.to_owned(),
        };
        self.call(
            "describe group",
            group,
            Idempotency::Idempotent,
            |mut client, request| async move { client.describe_group(request).await },
            request,
        )
        .await
    }

    /// Moves `group`'s committed offsets on `topic` (refused while the group has live
    /// members); returns the offsets set.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<PartitionOffset>> {
        use reset_group_offsets_request::To;
        let to = match to {
            ResetTo::Earliest => To::Earliest(true),
            ResetTo::Latest => To::Latest(true),
            ResetTo::Offset(offset) => To::Offset(offset),
            ResetTo::Timestamp(ms) => To::TimestampMs(ms),
        };
        let request = ResetGroupOffsetsRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            to: Some(to),
        };
        let response = self
            .call(
                "reset offsets of group",
                group,
                Idempotency::Idempotent,
                |mut client, request| async move { client.reset_group_offsets(request).await },
                request,
            )
            .await?;
        Ok(response.offsets)
    }

    /// Deletes `group`'s committed offsets and membership (refused while it has live members).
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let request = DeleteGroupRequest {
            group: group.to_owned(),
        };
        self.call(
            "delete group",
            group,
            Idempotency::NonIdempotent,
            |mut client, request| async move { client.delete_group(request).await },
            request,
        )
        .await?;
        Ok(())
    }

    /// Sends `request` with the retry policy and timeout; a failure names `operation` and
    /// `topic`.
    async fn call<Req, Resp, F, Fut>(
        &self,
        operation: &'static str,
        topic: &str,
        idempotency: Idempotency,
        send: F,
        request: Req,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        connection::call(
            &self.client,
            &self.retry,
            idempotency,
            self.request_timeout,
            operation,
            topic,
            send,
            request,
        )
        .await
    }
}
