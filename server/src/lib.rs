//! The Sluice broker: gRPC services over the storage engine (design.md §4).
//!
//! [`run`] takes its listeners and a shutdown future from the caller, so the binary binds the
//! configured addresses and tests bind port 0 on loopback (mini-redis's `run`). On shutdown it
//! stops accepting, lets requests in flight finish, ends subscriptions and long polls, and
//! closes every partition cleanly (synced, clean-shutdown marker written).
#![forbid(unsafe_code)]

pub mod admission;
pub mod clock;
pub mod compactor;
pub mod config;
pub mod connections;
pub mod error;
pub mod groups;
pub mod grpc;
pub mod inflight;
pub mod metrics;
pub mod oversize;
pub mod partition;
pub mod producers;
pub mod queue;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;

pub use clock::{Clock, ManualTime};
pub use config::Config;
pub use error::{Error, Result};
pub use sluice_storage::{FaultOp, Faults};

use axum::response::IntoResponse;
use sluice_proto::v1::{
    admin_server::AdminServer, groups_server::GroupsServer, log_server::LogServer,
    queue_server::QueueServer,
};
use sluice_storage::{Store, StoreConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;

/// What the services share.
#[derive(Debug)]
pub struct Broker {
    /// Topics and their partitions.
    pub topics: topics::Topics,
    /// Consumer groups: membership and committed offsets.
    pub groups: groups::Groups,
    /// Queue groups: leases, acks, retries, dead letters.
    pub queues: queue::Queues,
    /// Issues idempotent producers' ids.
    pub producer_ids: producers::ProducerIds,
    /// The configuration.
    pub config: Config,
    /// The broker's clock.
    pub clock: Clock,
    /// Turns true when the broker is shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// What a broker takes from where it runs rather than from its configuration: the clock every
/// time-dependent part reads, and (in tests) injected I/O failures. `Env::default()` is
/// production: the system clock, no faults.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// The broker's one clock.
    pub clock: Clock,
    /// I/O failures to inject into the storage engine (inert by default).
    pub faults: Faults,
    /// A crash point for crash tests (none by default).
    pub failpoint: Option<queue::Failpoint>,
}

/// Serves gRPC on `grpc` and HTTP (`/healthz`) on `http` until `shutdown` completes, then
/// closes the data directory cleanly.
pub async fn run(
    config: Config,
    env: Env,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config
        .validate()
        .map_err(|e| Error::invalid(e.field, e.value, e.reason))?;
    let (stop_sender, stop) = watch::channel(false);
    let broker = {
        let config = config.clone();
        let stop = stop.clone();
        let Env {
            clock,
            faults,
            failpoint,
        } = env;
        error::blocking(move || {
            let store = Store::open(
                &config.data_dir,
                StoreConfig {
                    max_open_segments: config.max_open_segments,
                    clock: clock.storage(),
                    faults,
                },
            )?;
            let limiter = Arc::new(inflight::Limiter::new(
                config.max_inflight_bytes,
                config.max_inflight_bytes_per_connection,
                config.max_inflight_bytes_per_partition,
                config.retry_after_ms,
            ));
            let sequencing = Arc::new(producers::Sequencing::new(
                i64::try_from(config.producer_idle_ms).unwrap_or(i64::MAX),
                config.max_producers_per_partition,
                Duration::from_millis(config.producer_reorder_wait_ms),
                clock.clone(),
            ));
            let topics = topics::Topics::open(store, limiter, Arc::clone(&sequencing))?;
            let producer_ids = producers::ProducerIds::open(
                &topics,
                config.producer_ids_segment_bytes,
                sequencing,
            )?;
            let groups = groups::Groups::open(
                &topics,
                config.offsets_segment_bytes,
                config.group_heartbeat_interval_ms,
                clock.clone(),
            )?;
            let queues = queue::Queues::open(
                &topics,
                config.offsets_segment_bytes,
                config.queue_max_inflight_per_partition as usize,
                clock.clone(),
                failpoint,
            )?;
            Ok(Arc::new(Broker {
                topics,
                groups,
                queues,
                producer_ids,
                config,
                clock,
                shutdown: stop,
            }))
        })
        .await?
    };
    let address = |listener: &TcpListener| {
        listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
    };
    tracing::info!(
        grpc_addr = %address(&grpc),
        http_addr = %address(&http),
        data_dir = %config.data_dir.display(),
        "sluice broker serving"
    );

    // One signal fans out to the gRPC server, the HTTP server, long polls and subscriptions.
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });
    let on_stop = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };

    let retention = tokio::spawn(run_retention(Arc::clone(&broker), stop.clone()));
    let expiry = tokio::spawn({
        let broker = Arc::clone(&broker);
        let stop = stop.clone();
        async move { broker.groups.run_expiry(&broker.topics, stop).await }
    });
    let compaction = tokio::spawn(compactor::run(Arc::clone(&broker), stop.clone()));
    let queue_timers = tokio::spawn({
        let broker = Arc::clone(&broker);
        let stop = stop.clone();
        async move { broker.queues.run_timers(&broker, stop).await }
    });
    let timing = metrics::RequestTiming::default();
    let http_server = tokio::spawn({
        let metrics = Arc::new(metrics::Metrics::new(Arc::clone(&broker), &timing));
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        match metrics.encode() {
                            Ok(text) => {
                                ([(http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
                                    .into_response()
                            }
                            Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                        }
                    }
                }),
            );
        let stop = stop.clone();
        async move {
            axum::serve(http, router)
                .with_graceful_shutdown(on_stop(stop))
                .await
        }
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<LogServer<grpc::log::LogService>>()
        .await;
    health
        .set_serving::<AdminServer<grpc::admin::AdminService>>()
        .await;
    health
        .set_serving::<GroupsServer<grpc::groups::GroupsService>>()
        .await;
    health
        .set_serving::<QueueServer<grpc::queue::QueueService>>()
        .await;
    // Reflection in both versions: grpcurl 1.8 and many tools still ask for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Task(format!("reflection service: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Task(format!("reflection service: {e}")))?;

    let limit = config.max_message_bytes;
    let log = LogServer::new(grpc::log::LogService::new(Arc::clone(&broker)))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let admin = AdminServer::new(grpc::admin::AdminService::new(Arc::clone(&broker)))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let groups = GroupsServer::new(grpc::groups::GroupsService::new(Arc::clone(&broker)))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let queue = QueueServer::new(grpc::queue::QueueService::new(Arc::clone(&broker)))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // serve_with_incoming ignores Server::tcp_nodelay; connections.rs sets it on each one.
    let limits = connections::Limits {
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        retry_after_ms: config.retry_after_ms,
    };
    let incoming = connections::incoming(grpc, limits, stop.clone());
    let served = Server::builder()
        .layer(timing)
        .layer(oversize::OversizeLayer)
        .layer(admission::AdmissionLayer::new(
            config.max_produce_requests,
            config.retry_after_ms,
        ))
        .max_frame_size(1 << 20)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_millis(config.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(config.keepalive_timeout_ms)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(log)
        .add_service(admin)
        .add_service(groups)
        .add_service(queue)
        .serve_with_incoming_shutdown(incoming, on_stop(stop.clone()))
        .await;
    if let Err(error) = &served {
        tracing::error!(%error, "gRPC server failed");
    }
    let _ = http_server.await;
    let _ = retention.await;
    let _ = expiry.await;
    let _ = compaction.await;
    let _ = queue_timers.await;

    tracing::info!("closing partitions");
    let closed = error::blocking(move || {
        broker.topics.close_all();
        Ok(())
    })
    .await;
    tracing::info!("sluice broker stopped");
    served.map_err(|e| Error::Task(format!("gRPC server: {e}")))?;
    closed
}

/// Runs retention over every partition on the configured interval until shutdown, and with
/// it the idempotent producers' expiry and snapshots.
async fn run_retention(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(broker.config.retention_check_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let retention = Arc::clone(&broker);
        if let Err(error) = error::blocking(move || {
            retention.topics.enforce_retention();
            retention.topics.maintain_producers();
            Ok(())
        })
        .await
        {
            tracing::warn!(%error, "retention pass failed");
        }
    }
}
