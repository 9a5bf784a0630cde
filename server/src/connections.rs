//! Client connections: bounded, and never held by a peer that does not speak.
//!
//! Every connection costs memory even when idle (HTTP/2 state, buffers, up to a connection
//! window of received frames), so:
//! - **a cap for the broker and one per source address** (`max_connections`,
//!   `max_connections_per_ip`): a connection takes a permit of each at accept and holds them
//!   until it closes, so one host cannot take every slot;
//! - **over a cap, an answer at once**: the connection is still accepted (a client left in the
//!   listen queue just times out) and served by a tiny HTTP/2 endpoint that answers every
//!   request `RESOURCE_EXHAUSTED` with a `retry-after-ms` hint, then closes. At most
//!   [`REFUSALS`] are served at once; beyond that a connection is closed at once;
//! - **a handshake deadline** (`handshake_timeout_ms`): a connection that has not sent the
//!   HTTP/2 preface and a first frame header within it is closed, so sockets that connect and
//!   say nothing do not hold slots;
//! - after the handshake, HTTP/2 keepalive pings (in `lib.rs`) close peers that stop
//!   answering (half-open connections).
//!
//! `TCP_NODELAY` is set on each connection (without it every response waits for Nagle
//! against delayed ACK, design.md §4).

use crate::grpc::status::busy_status;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Over-cap connections answered `RESOURCE_EXHAUSTED` at once; more are closed unanswered.
pub const REFUSALS: usize = 64;
/// How long an over-cap connection is kept to answer its requests.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// The client preface (24 bytes) and the header of its first frame (9): what a connection must
/// have sent before the handshake deadline.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// The bounds on connections (from the broker's config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once, whole broker.
    pub max_connections: usize,
    /// Connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send its HTTP/2 preface and first frame header.
    pub handshake_timeout: Duration,
    /// The retry hint sent with a refusal, ms.
    pub retry_after_ms: u32,
}

/// An accepted connection holding its permits until it closes.
pub struct Limited {
    stream: TcpStream,
    /// Bytes still expected before the handshake deadline stops applying.
    handshake_left: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
    _per_ip: IpSlot,
}

impl std::fmt::Debug for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited")
            .field("peer", &self.stream.peer_addr().ok())
            .field("handshake_left", &self.handshake_left)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if let Poll::Ready(Ok(())) = read {
                let got = buf.filled().len() - before;
                this.handshake_left = this.handshake_left.saturating_sub(got);
                if this.handshake_left == 0 || got == 0 {
                    // Handshake far enough along (or the peer closed): the deadline is done.
                    this.deadline = None;
                }
                return read;
            }
            if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 handshake within the handshake timeout",
                )));
            }
        }
        read
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// Connections open per source address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's count, given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `ip`, unless it already holds `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections from `listener` within `limits` until `stop` turns true, handing each
/// admitted one to the gRPC server and answering the others as the module doc says.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Limited>> {
    let (sender, receiver) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let per_ip = Arc::new(PerIp::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted: keep
                    // serving the others, and do not spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                refuse(stream, &refusals, limits, "broker", limits.max_connections);
                continue;
            };
            let Some(slot) = per_ip.take(peer.ip(), limits.max_connections_per_ip) else {
                refuse(
                    stream,
                    &refusals,
                    limits,
                    "address",
                    limits.max_connections_per_ip,
                );
                continue;
            };
            let connection = Limited {
                stream,
                handshake_left: HANDSHAKE_BYTES,
                deadline: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
                _permit: permit,
                _per_ip: slot,
            };
            if sender.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// Answers an over-cap connection's requests `RESOURCE_EXHAUSTED` for a moment, then closes
/// it; closes it at once when [`REFUSALS`] are already being answered.
fn refuse(
    stream: TcpStream,
    refusals: &Arc<Semaphore>,
    limits: Limits,
    scope: &'static str,
    limit: usize,
) {
    let peer = stream.peer_addr().ok();
    tracing::warn!(?peer, scope, limit, "connection over the cap refused");
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        return;
    };
    let status = busy_status(
        format!(
            "the broker is at its {scope} connection limit ({limit}): retry after {} ms",
            limits.retry_after_ms
        ),
        limits.retry_after_ms,
    );
    tokio::spawn(async move {
        let _permit = permit;
        let service = hyper::service::service_fn(move |_request| {
            let response = status.clone().into_http::<tonic::body::Body>();
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let connection =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let _ = tokio::time::timeout(REFUSAL_LINGER, connection).await;
    });
}
