//! [`Worker`]: a pool that takes jobs of a queue group and runs a handler on each
//! (design.md §5).
//!
//! - at most `concurrency` handlers run at once; the worker leases only as many jobs as it has
//!   free slots, so no job waits in the worker while its lease runs down;
//! - a handler's `Ok` acknowledges the job, its `Err` nacks it with the error's text as the
//!   reason (the broker retries it after the topic's backoff, or dead-letters it);
//! - while a handler runs, its lease is extended every third of the visibility timeout;
//! - acks ride on the next Lease (one call per cycle); those no Lease takes within
//!   `ack_linger` go in an Ack of up to `ack_batch` tokens;
//! - shutdown (the future given to [`Worker::run_until`]): stop leasing, release jobs leased
//!   but not started, wait for running handlers up to `shutdown_timeout`, release the jobs of
//!   those still running (their handlers are dropped), flush the acks.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::queue::{Job, Queue};

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    /// Jobs whose handler returned `Ok`.
    pub succeeded: u64,
    /// Jobs whose handler returned `Err` (nacked).
    pub failed: u64,
    /// Acks the broker refused (the lease had expired and the job may run again).
    pub acks_refused: u64,
    /// Jobs given back at shutdown (not started, or stopped at the deadline).
    pub released: u64,
}

#[derive(Debug, Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    acks_refused: AtomicU64,
    released: AtomicU64,
}

/// A pool of handlers on one queue group. Build with the setters, start with
/// [`run`](Self::run) or [`run_until`](Self::run_until).
///
/// ```no_run
/// # async fn example() -> sluice_client::Result<()> {
/// use sluice_client::{ConnectionConfig, Queue, Worker};
/// let queue = Queue::connect(ConnectionConfig::new().address("127.0.0.1:7070")).await?;
/// Worker::new(queue, "emails", "senders")
///     .concurrency(16)
///     .run(|job| async move {
///         println!("sending {:?}", job.value);
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    queue: Queue,
    topic: String,
    group: String,
    concurrency: usize,
    visibility: Duration,
    max_wait: Duration,
    ack_batch: usize,
    ack_linger: Duration,
    shutdown_timeout: Duration,
}

impl Worker {
    /// A worker on `group` of `topic`. Defaults: concurrency 1, visibility 30 s, long polls of
    /// 1 s, acks batched by 256 or 5 ms, 30 s to finish at shutdown.
    pub fn new(queue: Queue, topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            queue,
            topic: topic.into(),
            group: group.into(),
            concurrency: 1,
            visibility: Duration::from_secs(30),
            max_wait: Duration::from_secs(1),
            ack_batch: 256,
            ack_linger: Duration::from_millis(5),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// Handlers running at once. 1 ..= 10000.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Lease length; handlers running longer are extended by this much every third of it.
    /// 100 ms ..= 12 h.
    #[must_use]
    pub fn visibility_timeout(mut self, visibility: Duration) -> Self {
        self.visibility = visibility;
        self
    }

    /// Longest wait of one lease call while no job is available (shutdown is noticed between
    /// calls). 0 ..= 30 s.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Tokens per Ack, and how long a token may wait for others. 1 ..= 1000.
    #[must_use]
    pub fn ack_batching(mut self, batch: usize, linger: Duration) -> Self {
        self.ack_batch = batch;
        self.ack_linger = linger;
        self
    }

    /// How long shutdown waits for running handlers.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    fn validate(&self) -> Result<()> {
        let invalid = |field, value: String, reason| Error::InvalidConfig {
            field,
            value,
            reason,
        };
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(invalid(
                "concurrency",
                self.concurrency.to_string(),
                "must be 1 ..= 10000",
            ));
        }
        if self.visibility < Duration::from_millis(100)
            || self.visibility > Duration::from_secs(43_200)
        {
            return Err(invalid(
                "visibility_timeout",
                format!("{:?}", self.visibility),
                "must be 100 ms ..= 12 h",
            ));
        }
        if self.max_wait > Duration::from_secs(30) {
            return Err(invalid(
                "max_wait",
                format!("{:?}", self.max_wait),
                "must be at most 30 s",
            ));
        }
        if !(1..=1000).contains(&self.ack_batch) {
            return Err(invalid(
                "ack_batch",
                self.ack_batch.to_string(),
                "must be 1 ..= 1000",
            ));
        }
        Ok(())
    }

    /// Runs `handler` on jobs until an error that is not retriable (the topic deleted, say).
    pub async fn run<H, Fut, E>(self, handler: H) -> Result<WorkerStats>
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.run_until(handler, std::future::pending()).await
    }

    /// Runs `handler` on jobs until `shutdown` completes, then drains (see the module doc).
    pub async fn run_until<H, Fut, E>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerStats>
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.validate()?;
        let handler = Arc::new(handler);
        let counters = Arc::new(Counters::default());
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let acks = Arc::new(PendingAcks::default());
        let acker = tokio::spawn(ack_loop(
            self.queue.clone(),
            self.topic.clone(),
            self.group.clone(),
            Arc::clone(&acks),
            self.ack_batch,
            self.ack_linger,
            Arc::clone(&counters),
        ));
        // Tokens of jobs whose handlers run, to release them if shutdown cuts them off.
        let running: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut next_id = 0u64;
        tokio::pin!(shutdown);
        let mut stopping = false;
        let mut failure = None;
        while !stopping {
            // Wait for a free slot (or shutdown).
            let free = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => { drop(permit); slots.available_permits() }
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            while tasks.try_join_next().is_some() {}
            // A lease in flight is not abandoned at shutdown (its jobs would wait out their
            // visibility): it finishes, and what it brought is released.
            // Acks of jobs finished since the last lease ride on this one.
            let lease = self.queue.lease_and_ack(
                &self.topic,
                &self.group,
                free.min(1000) as u32,
                self.visibility,
                self.max_wait,
                acks.take(1000),
            );
            tokio::pin!(lease);
            let leased = tokio::select! {
                leased = &mut lease => leased,
                _ = &mut shutdown => {
                    stopping = true;
                    lease.await
                }
            };
            let jobs = match leased {
                Ok((jobs, results)) => {
                    count_refused(&results, &counters);
                    jobs
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            };
            if stopping {
                for job in jobs {
                    self.release(&job.lease_token, &counters).await;
                }
                break;
            }
            for job in jobs {
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    // Never happens (no more jobs than free slots were asked for); give it
                    // back rather than run more handlers than allowed.
                    self.release(&job.lease_token, &counters).await;
                    continue;
                };
                let id = next_id;
                next_id += 1;
                lock(&running).insert(id, job.lease_token.clone());
                let this = self.clone();
                let handler = Arc::clone(&handler);
                let acks = Arc::clone(&acks);
                let counters = Arc::clone(&counters);
                let running = Arc::clone(&running);
                tasks.spawn(async move {
                    let token = job.lease_token.clone();
                    let outcome = this.run_one(&*handler, job).await;
                    lock(&running).remove(&id);
                    match outcome {
                        Ok(()) => {
                            counters.succeeded.fetch_add(1, Ordering::Relaxed);
                            acks.push(token);
                        }
                        Err(reason) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            if let Err(error) = this
                                .queue
                                .nack(&this.topic, &this.group, &token, None, &reason)
                                .await
                            {
                                tracing::warn!(%error, "nack failed; the job runs again after its lease");
                            }
                        }
                    }
                    drop(permit);
                });
            }
        }
        // Drain: running handlers get up to the deadline; the rest are released.
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let cut: Vec<String> = lock(&running).drain().map(|(_, token)| token).collect();
            for token in cut {
                self.release(&token, &counters).await;
            }
        }
        acks.close();
        let _ = acker.await;
        match failure {
            Some(error) => Err(error),
            None => Ok(WorkerStats {
                succeeded: counters.succeeded.load(Ordering::Relaxed),
                failed: counters.failed.load(Ordering::Relaxed),
                acks_refused: counters.acks_refused.load(Ordering::Relaxed),
                released: counters.released.load(Ordering::Relaxed),
            }),
        }
    }

    /// Runs the handler on `job`, extending its lease while it runs; the error's text if it
    /// failed.
    async fn run_one<H, Fut, E>(&self, handler: &H, job: Job) -> std::result::Result<(), String>
    where
        H: Fn(Job) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        let token = job.lease_token.clone();
        let work = handler(job);
        tokio::pin!(work);
        let every = self.visibility / 3;
        loop {
            tokio::select! {
                outcome = &mut work => return outcome.map_err(|e| e.to_string()),
                _ = tokio::time::sleep(every) => {
                    if let Err(error) = self.queue.extend(&self.topic, &self.group, &token, self.visibility).await {
                        tracing::warn!(%error, "extending a lease failed; the job may run again elsewhere");
                    }
                }
            }
        }
    }

    async fn release(&self, token: &str, counters: &Counters) {
        match self.queue.release(&self.topic, &self.group, token).await {
            Ok(()) => {
                counters.released.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, "releasing a job failed; it runs again after its lease")
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tokens of finished jobs waiting for their ack: the next Lease carries them, or the acker
/// sends them in an Ack `ack_linger` after they came (at once when `ack_batch` are waiting).
#[derive(Debug, Default)]
struct PendingAcks {
    tokens: Mutex<Vec<String>>,
    /// Wakes the acker: tokens came, or the worker is stopping.
    ready: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl PendingAcks {
    fn push(&self, token: String) {
        lock(&self.tokens).push(token);
        self.ready.notify_one();
    }

    /// Up to `max` tokens, oldest first.
    fn take(&self, max: usize) -> Vec<String> {
        let mut tokens = lock(&self.tokens);
        if tokens.len() <= max {
            std::mem::take(&mut *tokens)
        } else {
            tokens.drain(..max).collect()
        }
    }

    fn len(&self) -> usize {
        lock(&self.tokens).len()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

fn count_refused(results: &[crate::queue::AckResult], counters: &Counters) {
    for result in results.iter().filter(|r| r.code != 0) {
        counters.acks_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(message = %result.message, "ack refused; the job may run again");
    }
}

/// Sends the tokens no Lease took: in Acks of up to `batch`, `linger` after they came, and
/// all of them once the worker stops.
async fn ack_loop(
    queue: Queue,
    topic: String,
    group: String,
    pending: Arc<PendingAcks>,
    batch: usize,
    linger: Duration,
    counters: Arc<Counters>,
) {
    loop {
        pending.ready.notified().await;
        if !pending.is_closed() && pending.len() < batch {
            tokio::time::sleep(linger).await;
        }
        loop {
            let sent = pending.take(batch);
            if sent.is_empty() {
                break;
            }
            match queue.ack(&topic, &group, sent).await {
                Ok(results) => count_refused(&results, &counters),
                Err(error) => {
                    tracing::warn!(%error, "ack failed; the jobs run again after their leases");
                }
            }
            if !pending.is_closed() && pending.len() < batch {
                break;
            }
        }
        if pending.is_closed() && pending.len() == 0 {
            return;
        }
    }
}
