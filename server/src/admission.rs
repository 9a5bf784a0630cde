//! Admission of produce requests before their bodies are read.
//!
//! The in-flight byte bounds (`inflight.rs`) see a produce only once tonic has received and
//! decoded it whole, so on their own they leave the memory of requests still being received
//! unbounded: each HTTP/2 stream may carry up to `max_message_bytes`. This tower layer runs
//! on the request headers: a `Produce` takes one of `max_produce_requests` permits before its
//! body is read, or is answered `RESOURCE_EXHAUSTED` at once (its stream is reset, its bytes
//! never buffered). The permit rides in the request's extensions and is released when the
//! handler has the decoded batch, whose bytes the in-flight bounds then cover. So the memory
//! held for produce requests is at most `max_produce_requests × max_message_bytes` being
//! received plus `max_inflight_bytes` accepted.

use crate::grpc::status::busy_status;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// gRPC path of the one request admission applies to.
pub const PRODUCE_PATH: &str = "/sluice.v1.Log/Produce";

/// A permit held by a produce request while its body is received and decoded.
#[derive(Debug, Clone)]
pub struct Admitted {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The layer: one semaphore shared by every connection.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    retry_after_ms: u32,
}

impl AdmissionLayer {
    /// Admits at most `limit` produce requests being received at once.
    pub fn new(limit: usize, retry_after_ms: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            retry_after_ms,
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path() == PRODUCE_PATH {
            match Arc::clone(&self.layer.permits).try_acquire_owned() {
                Ok(permit) => {
                    request.extensions_mut().insert(Admitted {
                        _permit: Arc::new(permit),
                    });
                }
                Err(_) => {
                    let status = busy_status(
                        format!(
                            "broker is receiving {} produce requests, limit {}: retry after {} ms",
                            self.layer.limit, self.layer.limit, self.layer.retry_after_ms
                        ),
                        self.layer.retry_after_ms,
                    );
                    let response = status.into_http();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}
