//! Connections that cannot lock anyone out: sockets that never speak are closed after the
//! handshake timeout, a connection over a cap is answered `RESOURCE_EXHAUSTED` at once (not
//! left to hang), and one host cannot take every slot. Counts and waits are bounded; every
//! socket is on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_tests::{TestBroker, endpoint, expect_status};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;

/// A raw TCP connection from `from` that sends nothing.
async fn silent(addr: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// One ListTopics on a fresh connection from `from`, bounded in time: a hang is a failure.
async fn list_topics(addr: SocketAddr, from: Ipv4Addr) -> Result<(), tonic::Status> {
    let attempt = async {
        let channel = endpoint(addr)
            .local_address(Some(IpAddr::V4(from)))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        pb::admin_client::AdminClient::new(channel)
            .list_topics(pb::ListTopicsRequest {})
            .await
            .map(|_| ())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("answered within 10 s, not left hanging")
}

/// Waits (bounded) until the broker closes `socket`, reading what it sends meanwhile (its
/// HTTP/2 settings; a handful of bytes).
async fn closed_by_broker(socket: &mut TcpStream) {
    let drained = async {
        let mut buf = [0u8; 1024];
        let mut received = 0;
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received += n,
            }
            assert!(received < 64 << 10, "a silent socket got {received} bytes");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .expect("the broker closes a silent socket");
}

const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

#[tokio::test]
async fn silent_sockets_are_closed_and_over_the_cap_clients_are_refused_at_once() {
    let broker = TestBroker::start_with(|c| {
        c.max_connections = 16;
        c.max_connections_per_ip = 16;
        c.handshake_timeout_ms = 500;
    })
    .await;
    // A flood of sockets that connect and never send a byte: 16 take every slot.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(silent(broker.addr, LOOPBACK).await);
    }
    // While they hold the slots, a client is refused at once, told when to retry.
    let refused = list_topics(broker.addr, LOOPBACK).await.unwrap_err();
    expect_status(&refused, Code::ResourceExhausted, "connection limit (16)");
    assert!(
        refused
            .metadata()
            .get(sluice_proto::RETRY_AFTER_MS)
            .is_some(),
        "{refused:?}"
    );
    // The broker closes every silent socket (the first 16 at the handshake deadline, the rest
    // as over-cap refusals), and then serves clients again.
    for socket in &mut flood {
        closed_by_broker(socket).await;
    }
    list_topics(broker.addr, LOOPBACK)
        .await
        .expect("served once the silent sockets are gone");
    broker.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let broker = TestBroker::start_with(|c| {
        c.max_connections = 64;
        c.max_connections_per_ip = 4;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(silent(broker.addr, LOOPBACK).await);
    }
    let refused = list_topics(broker.addr, LOOPBACK).await.unwrap_err();
    expect_status(
        &refused,
        Code::ResourceExhausted,
        "address connection limit (4)",
    );
    // Another address on the same host (all of 127/8 is loopback) still gets in.
    list_topics(broker.addr, Ipv4Addr::new(127, 0, 0, 2))
        .await
        .expect("another address is served");
    drop(held);
    broker.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    use tokio::io::AsyncWriteExt;
    // Pings every second, a second to answer; the handshake deadline is out of the way.
    let broker = TestBroker::start_with(|c| {
        c.keepalive_interval_ms = 1000;
        c.keepalive_timeout_ms = 1000;
        c.handshake_timeout_ms = 600_000;
    })
    .await;
    // A peer that completes the HTTP/2 handshake (preface and an empty SETTINGS frame), then
    // goes quiet as a frozen or vanished client would: it never acknowledges anything.
    let mut socket = silent(broker.addr, LOOPBACK).await;
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    closed_by_broker(&mut socket).await;
    // Not the handshake deadline (10 minutes here): the unanswered keepalive closed it.
    assert!(started.elapsed() < Duration::from_secs(60));
    broker.stop().await;
}
