//! Queue mode under SIGKILL: the real `sluice` binary is killed with `kill -9` while workers
//! lease, ack and nack, several times. Across the cycles no acknowledged job is delivered
//! again, every job is done in the end (none lost), and a job's attempts keep counting across
//! restarts (20 kills, 4000 jobs). And a failpoint that aborts the broker between a dead letter's append and its
//! "done" record shows the dead letter is neither lost nor written twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::testing::ChildBroker;
use sluice_storage::format::{BatchBuilder, Batches};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TOPIC: &str = "jobs";
const JOBS: u64 = 4000;
const CYCLES: usize = 20;
/// Acks per cycle before the kill.
const ACKS_PER_CYCLE: usize = 150;
/// Hang guard for the whole test (not a performance threshold).
const HANG_GUARD: Duration = Duration::from_secs(300);
const VISIBILITY_MS: u64 = 1000;

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

type Queue = pb::queue_client::QueueClient<Channel>;

/// What the workers saw, across all cycles.
#[derive(Default)]
struct Journal {
    /// Jobs whose ack the broker confirmed.
    acked: HashSet<u64>,
    /// Attempts each job was delivered with, in order.
    attempts: HashMap<u64, Vec<u32>>,
    /// Acked jobs delivered again (must stay empty).
    redelivered_after_ack: Vec<(u64, u32)>,
}

async fn create_topic(broker: &ChildBroker, config: pb::TopicConfig) {
    pb::admin_client::AdminClient::new(broker.channel().await)
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 2,
            config: Some(config),
        })
        .await
        .unwrap();
}

async fn enqueue(broker: &ChildBroker, partition: u32, values: impl Iterator<Item = String>) {
    let mut builder = BatchBuilder::new();
    for value in values {
        builder.push(0, None, Some(value.as_bytes()), &[]).unwrap();
    }
    broker
        .log_client()
        .await
        .produce(pb::ProduceRequest {
            topic: TOPIC.into(),
            partition,
            batch: builder.finish().unwrap().freeze(),
        })
        .await
        .unwrap();
}

/// A worker: lease, note, nack every 7th job's first attempt, ack the rest, until the broker
/// goes away (any error).
async fn work(mut queue: Queue, journal: Arc<Mutex<Journal>>) {
    loop {
        let leased = queue
            .lease(pb::LeaseRequest {
                topic: TOPIC.into(),
                group: "g".into(),
                max_messages: 16,
                visibility_timeout_ms: VISIBILITY_MS,
                max_wait_ms: 200,
                ack_lease_tokens: Vec::new(),
            })
            .await;
        let Ok(leased) = leased else { return };
        let mut tokens = Vec::new();
        let mut jobs = Vec::new();
        for m in leased.into_inner().messages {
            let job: u64 = std::str::from_utf8(&m.value).unwrap().parse().unwrap();
            {
                let mut journal = journal.lock().unwrap();
                if journal.acked.contains(&job) {
                    journal.redelivered_after_ack.push((job, m.attempt));
                }
                journal.attempts.entry(job).or_default().push(m.attempt);
            }
            if job.is_multiple_of(7) && m.attempt == 1 {
                let nacked = queue
                    .nack(pb::NackRequest {
                        topic: TOPIC.into(),
                        group: "g".into(),
                        lease_token: m.lease_token,
                        delay_ms: Some(0),
                        reason: "first try fails".into(),
                    })
                    .await;
                if nacked.is_err() {
                    return;
                }
                continue;
            }
            tokens.push(m.lease_token);
            jobs.push(job);
        }
        if tokens.is_empty() {
            continue;
        }
        let Ok(results) = queue
            .ack(pb::AckRequest {
                topic: TOPIC.into(),
                group: "g".into(),
                lease_tokens: tokens,
            })
            .await
        else {
            return;
        };
        let mut journal = journal.lock().unwrap();
        for (job, result) in jobs.into_iter().zip(results.into_inner().results) {
            if result.code == 0 {
                journal.acked.insert(job);
            }
        }
    }
}

async fn describe(broker: &ChildBroker) -> pb::DescribeQueueResponse {
    pb::queue_client::QueueClient::new(broker.channel().await)
        .describe_queue(pb::DescribeQueueRequest {
            topic: TOPIC.into(),
            group: "g".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_nothing_and_redelivers_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let started = Instant::now();
    let journal: Arc<Mutex<Journal>> = Arc::default();
    let mut broker = ChildBroker::start(sluice_bin(), &data, &logs, &[], &[]).await;
    create_topic(
        &broker,
        pb::TopicConfig {
            max_attempts: Some(100),
            backoff_initial_ms: Some(10),
            backoff_max_ms: Some(50),
            ..pb::TopicConfig::default()
        },
    )
    .await;
    for p in 0..2u32 {
        let values = (0..JOBS)
            .filter(|j| j % 2 == u64::from(p))
            .map(|j| j.to_string());
        enqueue(&broker, p, values).await;
    }
    for cycle in 0..=CYCLES {
        assert!(
            started.elapsed() < HANG_GUARD,
            "hang guard at cycle {cycle}"
        );
        let before = journal.lock().unwrap().acked.len();
        let mut workers = Vec::new();
        for _ in 0..8 {
            let queue = pb::queue_client::QueueClient::new(broker.channel().await);
            workers.push(tokio::spawn(work(queue, Arc::clone(&journal))));
        }
        if cycle < CYCLES {
            // Mid-load: once this cycle acked enough, kill -9 with everything in flight.
            loop {
                let acked = journal.lock().unwrap().acked.len();
                if acked >= before + ACKS_PER_CYCLE || acked as u64 >= JOBS {
                    break;
                }
                assert!(
                    started.elapsed() < HANG_GUARD,
                    "hang guard in cycle {cycle}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            broker.kill_hard();
            for worker in workers {
                worker.await.unwrap();
            }
            broker = ChildBroker::start(sluice_bin(), &data, &logs, &[], &[]).await;
        } else {
            // The last cycle runs to the end: every job done.
            loop {
                let d = describe(&broker).await;
                let done: u64 = d.partitions.iter().map(|p| p.done).sum();
                let in_flight: u64 = d.partitions.iter().map(|p| p.in_flight).sum();
                if done == JOBS && in_flight == 0 {
                    break;
                }
                assert!(started.elapsed() < HANG_GUARD, "hang guard: {d:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            broker.kill_hard();
            for worker in workers {
                worker.await.unwrap();
            }
        }
    }
    {
        let journal = journal.lock().unwrap();
        assert!(
            journal.redelivered_after_ack.is_empty(),
            "acked jobs delivered again: {:?}",
            journal.redelivered_after_ack
        );
        assert_eq!(journal.attempts.len() as u64, JOBS, "every job delivered");
        for (job, attempts) in &journal.attempts {
            assert!(
                attempts.windows(2).all(|w| w[0] < w[1]),
                "job {job}'s attempts do not keep counting: {attempts:?}"
            );
        }
        let redelivered = journal.attempts.values().filter(|a| a.len() > 1).count();
        let across_kills = journal
            .attempts
            .iter()
            .filter(|(job, a)| !job.is_multiple_of(7) && a.len() > 1)
            .count();
        assert!(across_kills > 0, "some jobs in flight at a kill came back");
        println!(
            "{CYCLES} kills: {JOBS} jobs done, {redelivered} delivered more than once ({across_kills} of them by a kill), none acked twice, {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // After everything: the state replays as done.
    let broker = ChildBroker::start(sluice_bin(), &data, &logs, &[], &[]).await;
    let d = describe(&broker).await;
    assert_eq!(d.partitions.iter().map(|p| p.done).sum::<u64>(), JOBS);
}

/// Values of `topic`/0 from offset 0.
async fn values(broker: &ChildBroker, topic: &str) -> Vec<Vec<u8>> {
    let fetched = broker
        .log_client()
        .await
        .fetch(pb::FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    for framed in Batches::new(&fetched.batches) {
        for record in framed.and_then(|f| f.stored()).unwrap().records() {
            out.push(record.value.unwrap_or_default().to_vec());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_dead_letter_append_and_its_record_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let failpoint = [("SLUICE_FAILPOINT", "abort-after-dead-letter-append")];
    let mut broker = ChildBroker::start(sluice_bin(), &data, &logs, &[], &failpoint).await;
    create_topic(
        &broker,
        pb::TopicConfig {
            max_attempts: Some(1),
            ..pb::TopicConfig::default()
        },
    )
    .await;
    enqueue(&broker, 0, ["poison".to_owned()].into_iter()).await;
    let mut queue = pb::queue_client::QueueClient::new(broker.channel().await);
    let leased = queue
        .lease(pb::LeaseRequest {
            topic: TOPIC.into(),
            group: "g".into(),
            max_messages: 1,
            visibility_timeout_ms: 60_000,
            max_wait_ms: 0,
            ack_lease_tokens: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    // The nack dead-letters (last attempt): the broker aborts after the DLQ append.
    let nacked = queue
        .nack(pb::NackRequest {
            topic: TOPIC.into(),
            group: "g".into(),
            lease_token: leased[0].lease_token.clone(),
            delay_ms: None,
            reason: "always fails".into(),
        })
        .await;
    assert!(nacked.is_err(), "the broker died answering: {nacked:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the failpoint did not abort the broker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.exited = broker.child.try_wait().unwrap();
    assert!(
        broker
            .log_text()
            .contains("failpoint abort-after-dead-letter-append")
    );
    // Restarted without the failpoint: the interrupted dead letter is finished, once.
    for restart in 0..2 {
        let broker = ChildBroker::start(sluice_bin(), &data, &logs, &[], &[]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = describe(&broker).await;
            if d.partitions[0].dead_lettered == 1 {
                assert_eq!(d.partitions[0].done, 1);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restart {restart}: not finished: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            values(&broker, "jobs.dlq").await,
            vec![b"poison".to_vec()],
            "restart {restart}"
        );
        let mut queue = pb::queue_client::QueueClient::new(broker.channel().await);
        let again = queue
            .lease(pb::LeaseRequest {
                topic: TOPIC.into(),
                group: "g".into(),
                max_messages: 1,
                visibility_timeout_ms: 60_000,
                max_wait_ms: 0,
                ack_lease_tokens: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        assert!(again.is_empty(), "a dead letter is done");
        if restart == 0 {
            assert!(
                broker.log_text().contains("already_appended=true"),
                "{}",
                broker.log_text()
            );
        }
    }
}
