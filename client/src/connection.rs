//! The connection to the broker and the retry policy every request goes through.
//!
//! [`connect`] opens one HTTP/2 channel tuned per design.md §4's transport facts: `TCP_NODELAY`
//! (without it each response waits for Nagle against delayed ACK, ~44 ms a call), 8 MiB stream and
//! 16 MiB connection windows, no adaptive window (it stalled the measured echo). A tonic
//! `Channel` reconnects by itself; calls made while the broker is down fail with `UNAVAILABLE`,
//! which [`RetryPolicy`] retries.
//!
//! [`RetryPolicy`] is exponential backoff with full jitter: retry `n` (from 0) sleeps a uniform
//! time in `[0, min(max_backoff, initial_backoff · 2ⁿ)]`, and never less than the broker's
//! `retry-after-ms` hint. [`is_retriable`] says which statuses are worth another attempt.

use std::future::Future;
use std::time::Duration;

use sluice_proto::v1::{
    admin_client::AdminClient, groups_client::GroupsClient, log_client::LogClient,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::config::ConnectionConfig;
use crate::error::{Error, Result};

/// Metadata key of the broker's back-pressure hint on `RESOURCE_EXHAUSTED`: ASCII decimal ms.
pub use sluice_proto::RETRY_AFTER_MS;

/// The longest `retry-after-ms` hint honoured: a larger one (a confused broker) waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Opens a channel to `config.address` (`host:port`, or a full `http://` URI).
///
/// Connects eagerly, so a wrong address or a broker that is down fails here, within the
/// connect timeout, rather than on the first request.
pub async fn connect(config: &ConnectionConfig) -> Result<Channel> {
    config.validate()?;
    let endpoint = endpoint(config)?;
    endpoint.connect().await.map_err(|source| Error::Connect {
        address: config.address.clone(),
        source: source.into(),
    })
}

/// The endpoint [`connect`] dials, with every transport setting applied.
fn endpoint(config: &ConnectionConfig) -> Result<Endpoint> {
    let address = config.address.as_str();
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| Error::InvalidAddress {
        address: address.to_owned(),
        source: source.into(),
    })?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(config.connect_timeout)
        .initial_stream_window_size(config.stream_window_bytes)
        .initial_connection_window_size(config.connection_window_bytes)
        .max_frame_size(config.max_frame_bytes)
        .http2_adaptive_window(false))
}

/// A `Log` client on `channel` that sends and accepts messages up to the configured size.
pub(crate) fn log_client(channel: Channel, config: &ConnectionConfig) -> LogClient<Channel> {
    let limit = config.max_message_bytes;
    LogClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// An `Admin` client on `channel`.
pub(crate) fn admin_client(channel: Channel, config: &ConnectionConfig) -> AdminClient<Channel> {
    let limit = config.max_message_bytes;
    AdminClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// A `Groups` client on `channel`.
pub(crate) fn groups_client(channel: Channel, config: &ConnectionConfig) -> GroupsClient<Channel> {
    let limit = config.max_message_bytes;
    GroupsClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// Whether repeating a request can do harm if the first attempt took effect unseen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads and commits of the same values: safe to repeat after a timeout.
    Idempotent,
    /// Produce: a request that timed out may have been appended, so a timeout is not retried
    /// (an `UNAVAILABLE` still is: at-least-once, until the idempotent producer exists).
    NonIdempotent,
}

/// Whether `status` is worth another attempt: `UNAVAILABLE` (broker down, connection lost,
/// partition closing), `RESOURCE_EXHAUSTED` (back pressure), `ABORTED`, and for idempotent
/// requests only `DEADLINE_EXCEEDED`, `UNKNOWN` and `CANCELLED` (what tonic answers when the
/// connection broke mid-request: the broker never sends them, and the outcome is unknown,
/// which only an idempotent request may retry).
pub fn is_retriable(status: &Status, idempotency: Idempotency) -> bool {
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted => true,
        Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            idempotency == Idempotency::Idempotent
        }
        _ => false,
    }
}

/// The broker's `retry-after-ms` hint on `status`, if it sent a well-formed one, capped at
/// [`MAX_RETRY_AFTER`].
pub fn retry_after(status: &Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_AFTER_MS)?.to_str().ok()?;
    let ms: u64 = value.trim().parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter, and how many attempts a request gets.
///
/// Defaults: `initial_backoff` 25 ms, `max_backoff` 1 s, `max_attempts` 10 (so a request that
/// keeps failing gives up after roughly 5 s of backoff plus its attempts' own time). Build with
/// the setters; [`validate`](Self::validate) checks the bounds each field documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Upper bound of the first retry's sleep. Default 25 ms; 1 ms ..= `max_backoff`.
    pub initial_backoff: Duration,
    /// Largest sleep between two attempts (the broker's hint aside). Default 1 s; at most 5 min.
    pub max_backoff: Duration,
    /// Attempts a request gets, the first included. Default 10; 1 ..= 1000.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that never retries: one attempt.
    pub fn no_retries() -> Self {
        Self::default().max_attempts(1)
    }

    /// Sets [`initial_backoff`](Self::initial_backoff).
    #[must_use]
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    #[must_use]
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Rejects bounds that make no sense, naming the field and value.
    pub fn validate(&self) -> Result<()> {
        if self.initial_backoff < Duration::from_millis(1) {
            return Err(invalid(
                "retry.initial_backoff",
                format!("{:?}", self.initial_backoff),
                "must be at least 1 ms",
            ));
        }
        if self.max_backoff < self.initial_backoff || self.max_backoff > Duration::from_secs(300) {
            return Err(invalid(
                "retry.max_backoff",
                format!("{:?}", self.max_backoff),
                "must be between initial_backoff and 5 min",
            ));
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(invalid(
                "retry.max_attempts",
                self.max_attempts.to_string(),
                "must be 1 ..= 1000",
            ));
        }
        Ok(())
    }

    /// The upper bound of the sleep before retry `retry` (0 for the sleep after the first
    /// failed attempt): `min(max_backoff, initial_backoff · 2^retry)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// A sleep drawn uniformly from `[0, backoff_cap(retry)]` (full jitter).
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::random_range(0..=cap_us))
    }

    /// The sleep before retry `retry` after `status`: the jittered backoff, but at least the
    /// broker's `retry-after-ms` hint.
    pub fn delay(&self, retry: u32, status: &Status) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after(status) {
            Some(hint) => backoff.max(hint),
            None => backoff,
        }
    }
}

/// A request that failed for good: the last status and the attempts made.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) attempts: u32,
}

/// Runs `call` until it succeeds, fails with a status that is not retriable, or `policy` runs
/// out of attempts. Each attempt gets `timeout`, enforced here (an expired attempt is
/// `DEADLINE_EXCEEDED`) and sent to the broker as the gRPC deadline by the caller.
pub(crate) async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    timeout: Duration,
    call: F,
) -> std::result::Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    with_retry_counted(policy, idempotency, timeout, call)
        .await
        .map(|(answer, _attempts)| answer)
}

/// Sends `request` through a clone of `client` with the retry policy, each attempt bounded by
/// `timeout`; a failure names `operation` and `topic` (the one shape of the Admin and Queue
/// calls).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call<C, Req, Resp, F, Fut>(
    client: &C,
    retry: &RetryPolicy,
    idempotency: Idempotency,
    timeout: Duration,
    operation: &'static str,
    topic: &str,
    send: F,
    request: Req,
) -> Result<Resp>
where
    C: Clone,
    Req: Clone,
    F: Fn(C, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
{
    with_retry(retry, idempotency, timeout, || {
        send(client.clone(), self::request(request.clone(), timeout))
    })
    .await
    .map_err(|f| Error::broker(operation, topic, None, &f.status, f.attempts))
}

/// [`with_retry`], also answering how many attempts the success took.
pub(crate) async fn with_retry_counted<T, F, Fut>(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    timeout: Duration,
    mut call: F,
) -> std::result::Result<(T, u32), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let status = match tokio::time::timeout(timeout, call()).await {
            Ok(Ok(response)) => return Ok((response.into_inner(), attempts)),
            Ok(Err(status)) => status,
            Err(_elapsed) => {
                Status::deadline_exceeded(format!("no answer within {}ms", timeout.as_millis()))
            }
        };
        if attempts >= policy.max_attempts || !is_retriable(&status, idempotency) {
            return Err(Failure { status, attempts });
        }
        let delay = policy.delay(attempts - 1, &status);
        tracing::debug!(
            code = ?status.code(),
            message = status.message(),
            attempts,
            delay_ms = delay.as_millis() as u64,
            "request failed, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// A request carrying `message` with `timeout` as its gRPC deadline.
pub(crate) fn request<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn invalid(field: &'static str, value: String, reason: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn exhausted(hint: &str) -> Status {
        let mut status = Status::resource_exhausted("partition busy");
        if let Ok(value) = hint.parse::<MetadataValue<_>>() {
            status.metadata_mut().insert(RETRY_AFTER_MS, value);
        }
        status
    }

    #[test]
    fn backoff_cap_doubles_then_saturates() {
        let policy = RetryPolicy::new()
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(300));
        let caps: Vec<u128> = (0..8).map(|r| policy.backoff_cap(r).as_millis()).collect();
        assert_eq!(caps, [10, 20, 40, 80, 160, 300, 300, 300]);
        // Huge retry numbers neither overflow nor exceed the maximum.
        assert_eq!(policy.backoff_cap(31), Duration::from_millis(300));
        assert_eq!(policy.backoff_cap(u32::MAX), Duration::from_millis(300));
        let big = RetryPolicy::new()
            .initial_backoff(Duration::from_secs(200))
            .max_backoff(Duration::from_secs(300));
        assert_eq!(big.backoff_cap(40), Duration::from_secs(300));
    }

    #[test]
    fn backoff_is_jittered_within_bounds() {
        let policy = RetryPolicy::new()
            .initial_backoff(Duration::from_millis(8))
            .max_backoff(Duration::from_millis(100));
        for retry in 0..10 {
            let cap = policy.backoff_cap(retry);
            let draws: Vec<Duration> = (0..200).map(|_| policy.backoff(retry)).collect();
            assert!(
                draws.iter().all(|d| *d <= cap),
                "retry {retry}: above {cap:?}"
            );
            // Full jitter: the draws spread over the range, not all at the cap.
            let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
            assert!(
                distinct.len() > 50,
                "retry {retry}: {} distinct",
                distinct.len()
            );
            assert!(draws.iter().any(|d| *d < cap / 2));
        }
    }

    #[test]
    fn delay_honours_retry_after() {
        let policy = RetryPolicy::new()
            .initial_backoff(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(5));
        let status = exhausted("250");
        assert_eq!(retry_after(&status), Some(Duration::from_millis(250)));
        for retry in 0..20 {
            let delay = policy.delay(retry, &status);
            assert!(delay >= Duration::from_millis(250), "{delay:?}");
            assert!(delay <= Duration::from_millis(250));
        }
        // Malformed and absent hints are ignored; huge ones are capped.
        assert_eq!(retry_after(&exhausted("soon")), None);
        assert_eq!(retry_after(&exhausted("-5")), None);
        assert_eq!(retry_after(&Status::resource_exhausted("busy")), None);
        assert_eq!(
            retry_after(&exhausted("99999999999")),
            Some(MAX_RETRY_AFTER)
        );
        assert!(policy.delay(0, &Status::unavailable("down")) <= Duration::from_millis(1));
    }

    #[test]
    fn classification() {
        use Idempotency::{Idempotent, NonIdempotent};
        for code in [Code::Unavailable, Code::ResourceExhausted, Code::Aborted] {
            let status = Status::new(code, "x");
            assert!(is_retriable(&status, Idempotent), "{code:?}");
            assert!(is_retriable(&status, NonIdempotent), "{code:?}");
        }
        let deadline = Status::deadline_exceeded("slow");
        assert!(is_retriable(&deadline, Idempotent));
        assert!(!is_retriable(&deadline, NonIdempotent));
        // A connection broken mid-request: the outcome is unknown.
        for code in [Code::Unknown, Code::Cancelled] {
            let status = Status::new(code, "transport error");
            assert!(is_retriable(&status, Idempotent), "{code:?}");
            assert!(!is_retriable(&status, NonIdempotent), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::OutOfRange,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            Code::DataLoss,
            Code::Unimplemented,
        ] {
            let status = Status::new(code, "x");
            assert!(!is_retriable(&status, Idempotent), "{code:?}");
            assert!(!is_retriable(&status, NonIdempotent), "{code:?}");
        }
    }

    #[test]
    fn retry_policy_validation() {
        assert!(RetryPolicy::default().validate().is_ok());
        assert!(RetryPolicy::no_retries().validate().is_ok());
        let bad = [
            RetryPolicy::new().initial_backoff(Duration::ZERO),
            RetryPolicy::new()
                .initial_backoff(Duration::from_secs(2))
                .max_backoff(Duration::from_secs(1)),
            RetryPolicy::new().max_backoff(Duration::from_secs(301)),
            RetryPolicy::new().max_attempts(0),
            RetryPolicy::new().max_attempts(1001),
        ];
        for policy in bad {
            let error = policy.validate().err();
            assert!(
                matches!(error, Some(Error::InvalidConfig { .. })),
                "{policy:?} accepted"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_retry_stops_on_success_and_on_fatal_codes() {
        let policy = RetryPolicy::new().max_attempts(5);
        let mut calls = 0;
        let result = with_retry(
            &policy,
            Idempotency::NonIdempotent,
            Duration::from_secs(1),
            || {
                calls += 1;
                let answer = if calls < 3 {
                    Err(exhausted("40"))
                } else {
                    Ok(tonic::Response::new(calls))
                };
                async move { answer }
            },
        )
        .await;
        assert!(matches!(result, Ok(3)));

        let mut calls = 0;
        let result: std::result::Result<(), _> = with_retry(
            &policy,
            Idempotency::NonIdempotent,
            Duration::from_secs(1),
            || {
                calls += 1;
                async { Err(Status::invalid_argument("bad batch")) }
            },
        )
        .await;
        assert!(matches!(result, Err(Failure { attempts: 1, .. })));
        assert_eq!(calls, 1);

        let result: std::result::Result<(), _> = with_retry(
            &policy,
            Idempotency::Idempotent,
            Duration::from_secs(1),
            || async { Err(Status::unavailable("down")) },
        )
        .await;
        match result {
            Err(failure) => {
                assert_eq!(failure.attempts, 5);
                assert_eq!(failure.status.code(), Code::Unavailable);
            }
            Ok(()) => panic!("an always-failing call succeeded"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_retry_times_out_attempts() {
        let policy = RetryPolicy::new().max_attempts(3);
        let mut calls = 0;
        let result: std::result::Result<(), _> = with_retry(
            &policy,
            Idempotency::NonIdempotent,
            Duration::from_millis(50),
            || {
                calls += 1;
                std::future::pending()
            },
        )
        .await;
        // A produce that timed out may have been appended: not retried.
        assert!(matches!(&result, Err(f) if f.status.code() == Code::DeadlineExceeded));
        assert_eq!(calls, 1);
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let result: std::result::Result<(), _> = with_retry(
            &policy,
            Idempotency::Idempotent,
            Duration::from_millis(50),
            || {
                calls += 1;
                std::future::pending()
            },
        )
        .await;
        assert!(matches!(&result, Err(f) if f.attempts == 3));
        assert_eq!(calls, 3);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn endpoint_accepts_host_port_and_uri() {
        let config = ConnectionConfig::new().address("127.0.0.1:7070");
        assert!(endpoint(&config).is_ok());
        let config = ConnectionConfig::new().address("http://localhost:7070");
        let endpoint = endpoint(&config);
        assert!(matches!(&endpoint, Ok(e) if e.get_tcp_nodelay()));
        let config = ConnectionConfig::new().address("not a host");
        assert!(matches!(
            super::endpoint(&config),
            Err(Error::InvalidAddress { .. })
        ));
    }
}
