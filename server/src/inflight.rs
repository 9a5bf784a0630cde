//! Back pressure: bounded produce bytes in flight per partition, per connection and for the
//! whole broker (design.md §4). A produce takes its batch's bytes from all three with
//! `try_acquire` — never waiting — and holds them until it is acknowledged; when any bound is
//! full the answer is `RESOURCE_EXHAUSTED` at once, with a retry hint. So the memory held for
//! accepted produce requests never exceeds `max_inflight_bytes`.

use crate::error::Error;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections tracked before idle entries (nothing in flight) are pruned.
const PRUNE_CONNECTIONS_ABOVE: usize = 1024;

/// The broker-wide and per-connection bounds; per-partition semaphores live with partitions.
#[derive(Debug)]
pub struct Limiter {
    global: Arc<Semaphore>,
    global_limit: u32,
    connections: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
    connection_limit: u32,
    partition_limit: u32,
    retry_after_ms: u32,
}

/// Bytes held until the produce they belong to is answered.
#[derive(Debug)]
pub struct Permit {
    _permits: [OwnedSemaphorePermit; 3],
}

impl Limiter {
    /// Bounds in bytes; `retry_after_ms` is the hint given when one is full.
    pub fn new(global: u32, connection: u32, partition: u32, retry_after_ms: u32) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global as usize)),
            global_limit: global,
            connections: Mutex::new(HashMap::new()),
            connection_limit: connection,
            partition_limit: partition,
            retry_after_ms,
        }
    }

    /// The retry hint, ms.
    pub fn retry_after_ms(&self) -> u32 {
        self.retry_after_ms
    }

    /// The per-partition bound, bytes (each partition keeps its own semaphore of this size).
    pub fn partition_limit(&self) -> u32 {
        self.partition_limit
    }

    fn connection(&self, peer: Option<SocketAddr>) -> Arc<Semaphore> {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if connections.len() > PRUNE_CONNECTIONS_ABOVE {
            let idle = self.connection_limit as usize;
            connections.retain(|_, s| s.available_permits() < idle || Arc::strong_count(s) > 1);
        }
        // Without a peer address (not TCP), all such requests share one bound.
        let key = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Arc::clone(
            connections
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.connection_limit as usize))),
        )
    }

    /// Takes `bytes` from the partition's, the connection's and the broker's bounds, or says
    /// which one is full.
    pub fn try_acquire(
        &self,
        partition_name: impl FnOnce() -> String,
        partition: &Arc<Semaphore>,
        peer: Option<SocketAddr>,
        bytes: u32,
    ) -> Result<Permit, Error> {
        let busy = |scope: String, semaphore: &Semaphore, limit: u32| Error::Busy {
            scope,
            inflight: u64::from(limit).saturating_sub(semaphore.available_permits() as u64),
            limit: u64::from(limit),
            retry_after_ms: self.retry_after_ms,
        };
        let partition_permit = Arc::clone(partition)
            .try_acquire_many_owned(bytes)
            .map_err(|_| {
                busy(
                    format!("partition {}", partition_name()),
                    partition,
                    self.partition_limit,
                )
            })?;
        let connection = self.connection(peer);
        let connection_permit = Arc::clone(&connection)
            .try_acquire_many_owned(bytes)
            .map_err(|_| {
                let scope =
                    peer.map_or_else(|| "connection".to_owned(), |p| format!("connection {p}"));
                busy(scope, &connection, self.connection_limit)
            })?;
        let global_permit = Arc::clone(&self.global)
            .try_acquire_many_owned(bytes)
            .map_err(|_| busy("broker".to_owned(), &self.global, self.global_limit))?;
        Ok(Permit {
            _permits: [partition_permit, connection_permit, global_permit],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_refuses_at_once_and_frees_on_drop() {
        let limiter = Limiter::new(300, 200, 100, 25);
        let partition = Arc::new(Semaphore::new(100));
        let peer = Some(SocketAddr::from(([127, 0, 0, 1], 4000)));
        let first = limiter.try_acquire(|| "t/0".into(), &partition, peer, 80);
        assert!(first.is_ok());
        match limiter.try_acquire(|| "t/0".into(), &partition, peer, 30) {
            Err(Error::Busy {
                scope,
                inflight,
                limit,
                retry_after_ms,
            }) => {
                assert_eq!(scope, "partition t/0");
                assert_eq!((inflight, limit, retry_after_ms), (80, 100, 25));
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        // Another partition on the same connection hits the connection bound.
        let other = Arc::new(Semaphore::new(100));
        let second = limiter.try_acquire(|| "t/1".into(), &other, peer, 100);
        assert!(second.is_ok());
        let third = Arc::new(Semaphore::new(100));
        assert!(matches!(
            limiter.try_acquire(|| "t/2".into(), &third, peer, 30),
            Err(Error::Busy { ref scope, .. }) if scope.starts_with("connection")
        ));
        // A second connection hits the broker bound.
        let peer2 = Some(SocketAddr::from(([127, 0, 0, 1], 4001)));
        let fourth = limiter.try_acquire(|| "t/2".into(), &third, peer2, 100);
        assert!(fourth.is_ok());
        let fifth = Arc::new(Semaphore::new(100));
        assert!(matches!(
            limiter.try_acquire(|| "t/3".into(), &fifth, peer2, 30),
            Err(Error::Busy { ref scope, .. }) if scope == "broker"
        ));
        drop((first, second));
        assert!(
            limiter
                .try_acquire(|| "t/0".into(), &partition, peer, 100)
                .is_ok()
        );
    }
}
