//! The broker's one clock (design.md §4): everything time-dependent — append times, retention,
//! session timeouts, leases, delays, backoff — reads `now` from the [`Clock`] given to
//! [`run`](crate::run), never from the system directly.
//!
//! Two readings, one source:
//! - [`Clock::now`]: a monotonic `tokio::time::Instant`, for deadlines and timers;
//! - [`Clock::now_ms`]: wall-clock milliseconds since the Unix epoch, for timestamps stored in
//!   the log and for ages.
//!
//! [`Clock::system`] is production: the system's wall clock and tokio's monotonic clock.
//! [`Clock::follow_tokio`] derives wall time from tokio's clock, so under
//! `tokio::time::pause()` both readings stand still until the test calls `advance`, and a test
//! of an hour of retention or a day of delays runs in milliseconds without sleeping. Pure state
//! machines (membership, leases) take `now` as an argument instead of holding a clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The broker's time source; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    kind: Kind,
}

#[derive(Debug, Clone, Default)]
enum Kind {
    #[default]
    System,
    /// Wall time is `start_ms` plus the tokio time elapsed since `start`.
    FollowTokio { start_ms: i64, start: Instant },
    /// Wall time moves only when a test sets it.
    Manual(Arc<AtomicI64>),
}

/// The handle a test moves a [`Clock::manual`] with.
#[derive(Debug, Clone)]
pub struct ManualTime(Arc<AtomicI64>);

impl ManualTime {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(millis(by), Ordering::AcqRel);
    }

    /// The clock's wall time now, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Clock {
    /// The system's wall clock and tokio's monotonic clock.
    pub fn system() -> Self {
        Self { kind: Kind::System }
    }

    /// A clock whose wall time starts at `start_ms` and moves with tokio's clock, so tests on
    /// paused time move it with `tokio::time::advance`. Call it inside the runtime whose clock
    /// it follows; read it from that runtime's threads (its workers and blocking pool), where
    /// tokio's clock is that runtime's.
    pub fn follow_tokio(start_ms: i64) -> Self {
        Self {
            kind: Kind::FollowTokio {
                start_ms,
                start: Instant::now(),
            },
        }
    }

    /// A clock whose wall time is `start_ms` until the returned handle moves it (monotonic time
    /// stays tokio's): for tests of stored times (append times, replay by time) across
    /// processes, where tokio's paused time cannot reach.
    pub fn manual(start_ms: i64) -> (Self, ManualTime) {
        let now = Arc::new(AtomicI64::new(start_ms));
        let clock = Self {
            kind: Kind::Manual(Arc::clone(&now)),
        };
        (clock, ManualTime(now))
    }

    /// Monotonic now, for deadlines and timers (`tokio::time::sleep_until`).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Wall-clock now, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.kind {
            Kind::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, millis),
            Kind::FollowTokio { start_ms, start } => {
                start_ms.saturating_add(millis(Instant::now().duration_since(*start)))
            }
            Kind::Manual(now) => now.load(Ordering::Acquire),
        }
    }

    /// The same clock as the storage engine takes it (append times, segment age, retention).
    pub fn storage(&self) -> sluice_storage::Clock {
        match self.kind {
            Kind::System => sluice_storage::Clock::System,
            Kind::FollowTokio { .. } | Kind::Manual(_) => {
                sluice_storage::Clock::Source(Arc::new(self.clone()))
            }
        }
    }
}

impl sluice_storage::TimeSource for Clock {
    fn now_ms(&self) -> i64 {
        Clock::now_ms(self)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_following_paused_tokio_time_moves_only_when_advanced() {
        let clock = Clock::follow_tokio(1_000_000);
        let storage = clock.storage();
        assert_eq!(clock.now_ms(), 1_000_000);
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ms(), 1_000_000 + 3_600_000);
        assert_eq!(storage.now_ms(), clock.now_ms());
        assert_eq!(clock.now() - before, Duration::from_secs(3600));
    }

    #[test]
    fn a_manual_clock_moves_when_told() {
        let (clock, time) = Clock::manual(5_000);
        let storage = clock.storage();
        assert_eq!(clock.now_ms(), 5_000);
        time.advance(Duration::from_secs(2));
        assert_eq!(
            (clock.now_ms(), storage.now_ms(), time.now_ms()),
            (7_000, 7_000, 7_000)
        );
    }

    #[test]
    fn the_system_clock_is_wall_time() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis);
        assert!((Clock::system().now_ms() - now).abs() < 60_000);
    }
}
