//! Queue mode against a real broker on loopback: leases, fenced acks, retries with backoff,
//! dead letters and redrive, restarts, many workers, and bad input.
//!
//! Tests of timeouts and backoff run on paused tokio time with the broker's clock following
//! it, so an expiry takes no real time and no test sleeps; waits on real work (appends,
//! fsyncs) are bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::{Clock, Env};
use sluice_storage::format::BatchBuilder;
use sluice_tests::{TestBroker, create_topic, expect_status, fetch_request, produce_request};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const START_MS: i64 = 1_767_225_600_000;
type Queue = pb::queue_client::QueueClient<Channel>;

fn paused_env() -> Env {
    Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    }
}

fn queue_config(max_attempts: u32, initial_ms: u64, max_ms: u64) -> pb::TopicConfig {
    pb::TopicConfig {
        max_attempts: Some(max_attempts),
        backoff_initial_ms: Some(initial_ms),
        backoff_max_ms: Some(max_ms),
        ..pb::TopicConfig::default()
    }
}

/// Enqueues `values` to `partition` of `topic`, one batch.
async fn enqueue(broker: &TestBroker, topic: &str, partition: u32, values: &[String]) {
    let mut builder = BatchBuilder::new();
    for value in values {
        builder
            .push(START_MS, None, Some(value.as_bytes()), &[])
            .unwrap();
    }
    broker
        .log()
        .await
        .produce(produce_request(topic, partition, builder.finish().unwrap()))
        .await
        .unwrap();
}

fn lease_request(
    topic: &str,
    group: &str,
    max: u32,
    visibility_ms: u64,
    wait_ms: u32,
) -> pb::LeaseRequest {
    pb::LeaseRequest {
        topic: topic.into(),
        group: group.into(),
        max_messages: max,
        visibility_timeout_ms: visibility_ms,
        max_wait_ms: wait_ms,
        ack_lease_tokens: Vec::new(),
    }
}

async fn lease(
    queue: &mut Queue,
    topic: &str,
    group: &str,
    max: u32,
    visibility_ms: u64,
    wait_ms: u32,
) -> Vec<pb::LeasedMessage> {
    queue
        .lease(lease_request(topic, group, max, visibility_ms, wait_ms))
        .await
        .unwrap()
        .into_inner()
        .messages
}

async fn ack(
    queue: &mut Queue,
    topic: &str,
    group: &str,
    tokens: Vec<String>,
) -> Vec<pb::AckResult> {
    queue
        .ack(pb::AckRequest {
            topic: topic.into(),
            group: group.into(),
            lease_tokens: tokens,
        })
        .await
        .unwrap()
        .into_inner()
        .results
}

async fn nack(
    queue: &mut Queue,
    topic: &str,
    group: &str,
    token: &str,
    reason: &str,
) -> pb::NackResponse {
    queue
        .nack(pb::NackRequest {
            topic: topic.into(),
            group: group.into(),
            lease_token: token.into(),
            delay_ms: None,
            reason: reason.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn describe(queue: &mut Queue, topic: &str, group: &str) -> pb::DescribeQueueResponse {
    queue
        .describe_queue(pb::DescribeQueueRequest {
            topic: topic.into(),
            group: group.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Sums of (in_flight, done, dead_lettered, ready, delayed) over partitions.
fn totals(d: &pb::DescribeQueueResponse) -> (u64, u64, u64, u64, u64) {
    d.partitions.iter().fold((0, 0, 0, 0, 0), |t, p| {
        (
            t.0 + p.in_flight,
            t.1 + p.done,
            t.2 + p.dead_lettered,
            t.3 + p.ready,
            t.4 + p.delayed,
        )
    })
}

fn value(m: &pb::LeasedMessage) -> String {
    String::from_utf8(m.value.to_vec()).unwrap()
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

#[tokio::test(start_paused = true)]
async fn acked_jobs_stay_done_across_a_restart_and_leased_ones_come_back_with_their_attempts() {
    let env = paused_env();
    let broker = TestBroker::start_env(None, env.clone(), |_| {}).await;
    create_topic(&broker, "jobs", 2, queue_config(5, 100, 100)).await;
    for p in 0..2 {
        let values: Vec<String> = (0..10).map(|i| format!("p{p}-{i}")).collect();
        enqueue(&broker, "jobs", p, &values).await;
    }
    let mut queue = broker.queue().await;
    let leased = lease(&mut queue, "jobs", "w", 100, 30_000, 0).await;
    assert_eq!(leased.len(), 20);
    assert!(leased.iter().all(|m| m.attempt == 1));
    // Nothing is handed out twice while leased.
    assert!(
        lease(&mut queue, "jobs", "w", 100, 30_000, 0)
            .await
            .is_empty()
    );
    let (acked, kept): (Vec<_>, Vec<_>) = leased.iter().partition(|m| m.offset % 3 != 1);
    let results = ack(
        &mut queue,
        "jobs",
        "w",
        acked.iter().map(|m| m.lease_token.clone()).collect(),
    )
    .await;
    assert!(results.iter().all(|r| r.code == 0), "{results:?}");
    let before = totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!(before.0, kept.len() as u64);
    assert_eq!(before.1, acked.len() as u64);

    let broker = broker.restart(env, |_| {}).await;
    let mut queue = broker.queue().await;
    let after = totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!(after, before, "in flight and done survive the restart");
    // Still leased after the restart: nothing to hand out until the leases run out.
    assert!(
        lease(&mut queue, "jobs", "w", 100, 30_000, 0)
            .await
            .is_empty()
    );
    tokio::time::advance(Duration::from_millis(30_200)).await;
    let mut again = lease(&mut queue, "jobs", "w", 100, 30_000, 5_000).await;
    // Expired leases wait for a backoff of up to 100 ms: a long poll collects them all.
    while again.len() < kept.len() {
        let more = lease(&mut queue, "jobs", "w", 100, 30_000, 5_000).await;
        assert!(
            !more.is_empty(),
            "redelivery stalled at {} of {}",
            again.len(),
            kept.len()
        );
        again.extend(more);
    }
    let mut got: Vec<(u32, u64, u32)> = again
        .iter()
        .map(|m| (m.partition, m.offset, m.attempt))
        .collect();
    got.sort_unstable();
    let mut want: Vec<(u32, u64, u32)> = kept.iter().map(|m| (m.partition, m.offset, 2)).collect();
    want.sort_unstable();
    assert_eq!(got, want, "exactly the leased ones come back, as attempt 2");
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_ack_after_redelivery_is_fenced_and_changes_nothing() {
    let broker = TestBroker::start_env(None, paused_env(), |_| {}).await;
    create_topic(&broker, "jobs", 1, queue_config(5, 100, 100)).await;
    enqueue(&broker, "jobs", 0, &["slow".into()]).await;
    let mut queue = broker.queue().await;
    let first = lease(&mut queue, "jobs", "w", 1, 1_000, 0).await.remove(0);
    assert_eq!(first.attempt, 1);
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let second = lease(&mut queue, "jobs", "w", 1, 1_000, 5_000)
        .await
        .remove(0);
    assert_eq!((second.offset, second.attempt), (0, 2));
    let before = describe(&mut queue, "jobs", "w").await;
    // The slow worker's late ack: refused per token, naming the current attempt.
    let results = ack(&mut queue, "jobs", "w", vec![first.lease_token.clone()]).await;
    assert_eq!(
        results[0].code,
        Code::FailedPrecondition as i32,
        "{results:?}"
    );
    assert!(
        results[0].message.contains("expired"),
        "{}",
        results[0].message
    );
    assert!(
        results[0].message.contains("current attempt is 2"),
        "{}",
        results[0].message
    );
    // Nack, extend and release with the stale token: refused too.
    let status = queue
        .nack(pb::NackRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: first.lease_token.clone(),
            delay_ms: None,
            reason: "late".into(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::FailedPrecondition, "current attempt is 2");
    let status = queue
        .extend(pb::ExtendRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: first.lease_token.clone(),
            visibility_timeout_ms: 60_000,
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::FailedPrecondition, "expired");
    let status = queue
        .release(pb::ReleaseRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: first.lease_token.clone(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::FailedPrecondition, "expired");
    assert_eq!(
        describe(&mut queue, "jobs", "w").await,
        before,
        "nothing changed"
    );
    // The current lease acks fine, once.
    let results = ack(&mut queue, "jobs", "w", vec![second.lease_token.clone()]).await;
    assert_eq!(results[0].code, 0);
    let results = ack(&mut queue, "jobs", "w", vec![second.lease_token]).await;
    expect_code_message(&results[0], Code::FailedPrecondition, "done");
    assert_eq!(totals(&describe(&mut queue, "jobs", "w").await).1, 1);
    broker.stop().await;
}

fn expect_code_message(result: &pb::AckResult, code: Code, needle: &str) {
    assert_eq!(result.code, code as i32, "{result:?}");
    assert!(result.message.contains(needle), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn nacks_back_off_and_extend_and_release_keep_a_job() {
    let broker = TestBroker::start_env(None, paused_env(), |_| {}).await;
    create_topic(&broker, "jobs", 1, queue_config(10, 1_000, 8_000)).await;
    enqueue(&broker, "jobs", 0, &["job".into()]).await;
    let mut queue = broker.queue().await;
    // Each nack's wait is at most the attempt's cap: 1 s, 2 s, 4 s, 8 s, 8 s.
    for attempt in 1..=5u32 {
        let m = lease(&mut queue, "jobs", "w", 1, 60_000, 30_000)
            .await
            .remove(0);
        assert_eq!(m.attempt, attempt);
        // The broker's clock when it leased (paused time stands still meanwhile).
        let now = m.lease_deadline_ms - 60_000;
        let response = nack(&mut queue, "jobs", "w", &m.lease_token, "try later").await;
        assert!(!response.dead_lettered);
        let at = response.available_at_ms.unwrap();
        let cap = [1_000, 2_000, 4_000, 8_000, 8_000][attempt as usize - 1];
        assert!(
            (now..=now + cap).contains(&at),
            "attempt {attempt}: waits {} ms, cap {cap}",
            at - now
        );
        let d = totals(&describe(&mut queue, "jobs", "w").await);
        if at > now {
            assert_eq!((d.3, d.4), (0, 1), "delayed, not ready");
        }
    }
    // Extend keeps a lease past its first deadline.
    let m = lease(&mut queue, "jobs", "w", 1, 1_000, 30_000)
        .await
        .remove(0);
    tokio::time::advance(Duration::from_millis(900)).await;
    let extended = queue
        .extend(pb::ExtendRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: m.lease_token.clone(),
            visibility_timeout_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::advance(Duration::from_millis(5_000)).await;
    assert!(
        lease(&mut queue, "jobs", "w", 1, 1_000, 0).await.is_empty(),
        "still leased"
    );
    assert!(extended.lease_deadline_ms > m.lease_deadline_ms);
    // Release gives it back at once, not counting the attempt.
    queue
        .release(pb::ReleaseRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: m.lease_token.clone(),
        })
        .await
        .unwrap();
    let again = lease(&mut queue, "jobs", "w", 1, 1_000, 0).await.remove(0);
    assert_eq!(again.attempt, m.attempt);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_job_that_always_fails_is_dead_lettered_with_headers_and_redriven_once() {
    let broker = TestBroker::start_env(None, paused_env(), |_| {}).await;
    create_topic(&broker, "jobs", 1, queue_config(3, 100, 100)).await;
    enqueue(&broker, "jobs", 0, &["ok".into(), "poison".into()]).await;
    let mut queue = broker.queue().await;
    let mut dead = None;
    for attempt in 1..=3u32 {
        let leased = lease(&mut queue, "jobs", "w", 2, 60_000, 30_000).await;
        for m in leased {
            if value(&m) == "ok" {
                assert_eq!(
                    ack(&mut queue, "jobs", "w", vec![m.lease_token]).await[0].code,
                    0
                );
                continue;
            }
            assert_eq!(m.attempt, attempt);
            let response = nack(
                &mut queue,
                "jobs",
                "w",
                &m.lease_token,
                &format!("boom {attempt}"),
            )
            .await;
            assert_eq!(response.dead_lettered, attempt == 3);
            if response.dead_lettered {
                dead = Some(m.offset);
            }
        }
    }
    assert_eq!(dead, Some(1));
    let (in_flight, done, dead_lettered, ready, delayed) =
        totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!(
        (in_flight, done, dead_lettered, ready, delayed),
        (0, 2, 1, 0, 0)
    );
    // The dead letter: an ordinary topic's record, with its origin and story in headers.
    let fetched = broker
        .log()
        .await
        .fetch(fetch_request("jobs.dlq", 0, 0))
        .await
        .unwrap()
        .into_inner();
    let letters = decode_with_headers(&fetched.batches);
    assert_eq!(letters.len(), 1);
    let (offset, letter, headers) = &letters[0];
    assert_eq!((*offset, letter.as_slice()), (0, &b"poison"[..]));
    assert_eq!(header(headers, "sluice.origin.topic"), Some("jobs"));
    assert_eq!(header(headers, "sluice.origin.partition"), Some("0"));
    assert_eq!(header(headers, "sluice.origin.offset"), Some("1"));
    assert_eq!(header(headers, "sluice.origin.group"), Some("w"));
    assert_eq!(header(headers, "sluice.dlq.attempts"), Some("3"));
    assert_eq!(header(headers, "sluice.dlq.last_error"), Some("boom 3"));
    assert!(
        header(headers, "sluice.dlq.time_ms")
            .is_some_and(|t| t.parse::<i64>().unwrap() >= START_MS)
    );
    // Redrive brings it back once, as a new job whose attempts start over.
    let redrive = |all: bool| pb::RedriveRequest {
        topic: "jobs".into(),
        from_offset: (!all).then_some(0),
        to_offset: (!all).then_some(0),
        all,
    };
    let first = queue.redrive(redrive(true)).await.unwrap().into_inner();
    assert_eq!((first.redriven, first.already_redriven), (1, 0));
    let second = queue.redrive(redrive(false)).await.unwrap().into_inner();
    assert_eq!((second.redriven, second.already_redriven), (0, 1));
    let back = lease(&mut queue, "jobs", "w", 10, 60_000, 0).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].offset, back[0].attempt, value(&back[0]).as_str()),
        (2, 1, "poison")
    );
    let headers: Vec<(String, Vec<u8>)> = back[0]
        .headers
        .iter()
        .map(|h| (h.key.clone(), h.value.to_vec()))
        .collect();
    assert_eq!(header(&headers, "sluice.redriven_from"), Some("0:0"));
    assert_eq!(
        header(&headers, "sluice.origin.offset"),
        Some("1"),
        "origin kept"
    );
    // And the redrive record survives a restart: still once.
    let broker = broker.restart(paused_env(), |_| {}).await;
    let mut queue = broker.queue().await;
    let third = queue.redrive(redrive(true)).await.unwrap().into_inner();
    assert_eq!((third.redriven, third.already_redriven), (0, 1));
    broker.stop().await;
}

/// A record as a test reads it: offset, value, headers.
type Letter = (u64, Vec<u8>, Vec<(String, Vec<u8>)>);

/// (offset, value, headers) of every record of a fetch.
fn decode_with_headers(batches: &[u8]) -> Vec<Letter> {
    let mut out = Vec::new();
    for framed in sluice_storage::format::Batches::new(batches) {
        let view = framed.and_then(|f| f.stored()).unwrap();
        for record in view.records() {
            out.push((
                record.offset,
                record.value.unwrap_or_default().to_vec(),
                record
                    .headers()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn bad_input_gets_statuses_naming_the_problem() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "jobs", 1, pb::TopicConfig::default()).await;
    enqueue(&broker, "jobs", 0, &["a".into()]).await;
    let mut queue = broker.queue().await;
    let status = queue
        .lease(lease_request("nope", "w", 1, 1000, 0))
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "unknown topic \"nope\"");
    let status = queue
        .lease(lease_request("jobs", "", 1, 1000, 0))
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "group");
    for visibility in [0, 99, 1_000_000_000_000] {
        let status = queue
            .lease(lease_request("jobs", "w", 1, visibility, 0))
            .await
            .unwrap_err();
        expect_status(&status, Code::InvalidArgument, "visibility_timeout_ms");
    }
    for max in [0, 1_000_000_000] {
        let status = queue
            .lease(lease_request("jobs", "w", max, 1000, 0))
            .await
            .unwrap_err();
        expect_status(&status, Code::InvalidArgument, "max_messages");
    }
    let status = queue
        .lease(lease_request("jobs", "w", 1, 1000, u32::MAX))
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "max_wait_ms");
    // Unknown group.
    let status = queue
        .ack(pb::AckRequest {
            topic: "jobs".into(),
            group: "ghost".into(),
            lease_tokens: vec![],
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "unknown group \"ghost");
    let status = queue
        .describe_queue(pb::DescribeQueueRequest {
            topic: "jobs".into(),
            group: "ghost".into(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "ghost");
    let m = lease(&mut queue, "jobs", "w", 1, 10_000, 0).await.remove(0);
    // Garbage, another group's, another partition's tokens: each answered on its own.
    create_topic(&broker, "other", 1, pb::TopicConfig::default()).await;
    enqueue(&broker, "other", 0, &["b".into()]).await;
    let foreign = lease(&mut queue, "other", "w", 1, 10_000, 0)
        .await
        .remove(0);
    let forged = m.lease_token.replacen("v1.0.", "v1.7.", 1);
    let results = ack(
        &mut queue,
        "jobs",
        "w",
        vec![
            "garbage".into(),
            foreign.lease_token.clone(),
            forged,
            "x".repeat(10_000),
        ],
    )
    .await;
    expect_code_message(&results[0], Code::InvalidArgument, "not a lease token");
    expect_code_message(
        &results[1],
        Code::InvalidArgument,
        "another topic or queue group",
    );
    expect_code_message(&results[2], Code::NotFound, "unknown partition 7");
    expect_code_message(&results[3], Code::InvalidArgument, "not a lease token");
    assert!(
        results[3].message.len() < 400,
        "long input is not echoed whole"
    );
    let status = queue
        .nack(pb::NackRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: "v1.0.0.1".into(),
            delay_ms: None,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "not a lease token");
    let status = queue
        .nack(pb::NackRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: m.lease_token.clone(),
            delay_ms: Some(u64::MAX),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "delay_ms");
    let status = queue
        .extend(pb::ExtendRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_token: m.lease_token.clone(),
            visibility_timeout_ms: 0,
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "visibility_timeout_ms");
    let status = queue
        .ack(pb::AckRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_tokens: vec![String::new(); 1001],
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "lease_tokens");
    // Redrive without a range, or of a topic with no dead letters.
    let status = queue
        .redrive(pb::RedriveRequest {
            topic: "jobs".into(),
            from_offset: Some(3),
            to_offset: None,
            all: false,
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "redrive range");
    let status = queue
        .redrive(pb::RedriveRequest {
            topic: "jobs".into(),
            from_offset: None,
            to_offset: None,
            all: true,
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "jobs.dlq");
    // Retry settings: checked on create and alter, naming the field.
    let mut admin = broker.admin().await;
    let status = admin
        .create_topic(pb::CreateTopicRequest {
            name: "bad".into(),
            partitions: 1,
            config: Some(queue_config(0, 100, 100)),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "max_attempts");
    let status = admin
        .alter_topic(pb::AlterTopicRequest {
            name: "jobs".into(),
            config: Some(queue_config(3, 1_000, 10)),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "backoff_max_ms");
    let status = admin
        .alter_topic(pb::AlterTopicRequest {
            name: "jobs".into(),
            config: Some(pb::TopicConfig {
                segment_bytes: Some(1 << 20),
                ..pb::TopicConfig::default()
            }),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "segment_bytes");
    let altered = admin
        .alter_topic(pb::AlterTopicRequest {
            name: "jobs".into(),
            config: Some(pb::TopicConfig {
                max_attempts: Some(7),
                ..pb::TopicConfig::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let config = altered.topic.unwrap().config.unwrap();
    assert_eq!(config.max_attempts, Some(7));
    assert_eq!(config.backoff_initial_ms, Some(1_000), "the rest unchanged");
    broker.stop().await;
}

/// 20 workers take jobs from a 4-partition topic; a tenth of the jobs (picked at random)
/// fail on their first attempt. Every job succeeds exactly once, the failing ones on their
/// second attempt, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_workers_run_every_job_once_with_a_tenth_failing_once() {
    const JOBS: usize = 100_000;
    const PARTITIONS: u32 = 4;
    let broker = TestBroker::start().await;
    create_topic(&broker, "jobs", PARTITIONS, queue_config(5, 10, 50)).await;
    let failing: std::collections::HashSet<usize> = {
        use rand_like::Lcg;
        let mut rng = Lcg(0x5eed);
        (0..JOBS)
            .filter(|_| rng.next().is_multiple_of(10))
            .collect()
    };
    for chunk_start in (0..JOBS).step_by(1000) {
        let values: Vec<String> = (chunk_start..(chunk_start + 1000).min(JOBS))
            .map(|i| format!("job-{i}"))
            .collect();
        enqueue(
            &broker,
            "jobs",
            (chunk_start / 1000) as u32 % PARTITIONS,
            &values,
        )
        .await;
    }
    let succeeded: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let failed_once: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..20 {
        let mut queue = broker.queue().await;
        let failing = failing.clone();
        let succeeded = Arc::clone(&succeeded);
        let failed_once = Arc::clone(&failed_once);
        // Half the workers ack on their next Lease, half with Ack calls.
        let piggyback = w % 2 == 1;
        workers.push(tokio::spawn(async move {
            let mut unacked: Vec<String> = Vec::new();
            loop {
                if succeeded.lock().unwrap().len() >= JOBS && unacked.is_empty() {
                    return;
                }
                let mut request = lease_request("jobs", "w", 32, 60_000, 100);
                request.ack_lease_tokens = std::mem::take(&mut unacked);
                let response = queue.lease(request).await.unwrap().into_inner();
                assert!(
                    response.ack_results.iter().all(|r| r.code == 0),
                    "{:?}",
                    response.ack_results
                );
                let leased = response.messages;
                let mut tokens = Vec::new();
                for m in leased {
                    let job: usize = value(&m)["job-".len()..].parse().unwrap();
                    if failing.contains(&job) && m.attempt == 1 {
                        *failed_once.lock().unwrap().entry(job).or_default() += 1;
                        let response = nack(&mut queue, "jobs", "w", &m.lease_token, "flaky").await;
                        assert!(!response.dead_lettered);
                        continue;
                    }
                    *succeeded.lock().unwrap().entry(job).or_default() += 1;
                    tokens.push(m.lease_token);
                }
                if piggyback {
                    unacked = tokens;
                } else if !tokens.is_empty() {
                    let results = ack(&mut queue, "jobs", "w", tokens).await;
                    assert!(results.iter().all(|r| r.code == 0), "{results:?}");
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    let all = async {
        for worker in workers {
            worker.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(600), all)
        .await
        .expect("every job done within 10 minutes");
    let elapsed = started.elapsed();
    let succeeded = succeeded.lock().unwrap().clone();
    assert_eq!(succeeded.len(), JOBS, "none lost");
    let twice: BTreeMap<_, _> = succeeded.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "jobs that succeeded more than once: {twice:?}"
    );
    let failed_once = failed_once.lock().unwrap().clone();
    assert_eq!(failed_once.len(), failing.len());
    assert!(failed_once.values().all(|n| *n == 1));
    let mut queue = broker.queue().await;
    let (in_flight, done, dead, _, _) = totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!((in_flight, done, dead), (0, JOBS as u64, 0));
    println!(
        "{JOBS} jobs ({} failing once), 20 workers: {:.1} s, {:.0} jobs/s (debug build)",
        failing.len(),
        elapsed.as_secs_f64(),
        JOBS as f64 / elapsed.as_secs_f64()
    );
    broker.stop().await;
}

/// A small deterministic generator, so the failing tenth is random but reproducible.
mod rand_like {
    pub struct Lcg(pub u64);
    impl Lcg {
        pub fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }
}

async fn client_queue(broker: &TestBroker) -> sluice_client::Queue {
    sluice_client::Queue::connect(
        sluice_client::ConnectionConfig::new().address(broker.addr.to_string()),
    )
    .await
    .unwrap()
}

/// A Worker acks what its handler finished, nacks what failed (retried, then done), keeps
/// extending a job that runs for many visibility timeouts, and drains on shutdown.
#[tokio::test(start_paused = true)]
async fn a_worker_acks_nacks_and_extends_long_jobs() {
    let broker = TestBroker::start_env(None, paused_env(), |_| {}).await;
    create_topic(&broker, "jobs", 2, queue_config(3, 10, 10)).await;
    let mut values: Vec<String> = (0..100).map(|i| format!("job-{i}")).collect();
    values.push("slow".into());
    enqueue(&broker, "jobs", 0, &values[..50]).await;
    enqueue(&broker, "jobs", 1, &values[50..]).await;
    let runs: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = sluice_client::Worker::new(client_queue(&broker).await, "jobs", "w")
        .concurrency(8)
        .visibility_timeout(Duration::from_secs(3))
        .max_wait(Duration::from_millis(200));
    let handler_runs = Arc::clone(&runs);
    let running = tokio::spawn(worker.run_until(
        move |job: sluice_client::Job| {
            let runs = Arc::clone(&handler_runs);
            async move {
                let name = String::from_utf8(job.value.to_vec()).unwrap();
                runs.lock()
                    .unwrap()
                    .entry(name.clone())
                    .or_default()
                    .push(job.attempt);
                if name == "slow" {
                    // Ten visibility timeouts: only extensions keep it from running twice.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return Ok(());
                }
                let n: usize = name["job-".len()..].parse().unwrap();
                if n.is_multiple_of(10) && job.attempt == 1 {
                    return Err(format!("job {n} is flaky"));
                }
                Ok(())
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut queue = broker.queue().await;
    for _ in 0..10_000 {
        let (in_flight, done, ..) = totals(&describe(&mut queue, "jobs", "w").await);
        if done == 101 && in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let stats = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(stats.succeeded, 101);
    assert_eq!(stats.failed, 10);
    assert_eq!(stats.acks_refused, 0);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 101);
    assert_eq!(runs["slow"], vec![1], "extended, never redelivered");
    for (name, attempts) in &runs {
        let flaky = name
            .strip_prefix("job-")
            .is_some_and(|n| n.parse::<usize>().unwrap().is_multiple_of(10));
        let want = if flaky { vec![1, 2] } else { vec![1] };
        assert_eq!(attempts, &want, "{name}");
    }
    let (in_flight, done, dead, ..) = totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!((in_flight, done, dead), (0, 101, 0));
    broker.stop().await;
}

/// Shutdown stops leasing, lets running handlers finish until the deadline, and releases
/// those it cuts off: the job comes back at the same attempt.
#[tokio::test(start_paused = true)]
async fn a_worker_shutdown_releases_what_it_cuts_off() {
    let broker = TestBroker::start_env(None, paused_env(), |_| {}).await;
    create_topic(&broker, "jobs", 1, queue_config(3, 10, 10)).await;
    enqueue(&broker, "jobs", 0, &["quick".into(), "stuck".into()]).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(tokio::sync::Notify::new());
    let worker = sluice_client::Worker::new(client_queue(&broker).await, "jobs", "w")
        .concurrency(2)
        .visibility_timeout(Duration::from_secs(60))
        .max_wait(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(5));
    let notify = Arc::clone(&started);
    let running = tokio::spawn(worker.run_until(
        move |job: sluice_client::Job| {
            let notify = Arc::clone(&notify);
            async move {
                if &job.value[..] == b"stuck" {
                    notify.notify_one();
                    std::future::pending::<()>().await;
                }
                Ok::<(), String>(())
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    started.notified().await;
    let _ = stop.send(());
    let stats = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.succeeded, stats.released), (1, 1));
    let mut queue = broker.queue().await;
    let back = lease(&mut queue, "jobs", "w", 10, 60_000, 0).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (value(&back[0]).as_str(), back[0].attempt),
        ("stuck", 1),
        "a release does not count"
    );
    broker.stop().await;
}

/// Deleting a topic takes its queue groups along: a topic made again under the name is worked
/// from its first offset, and a restart does not bring the old state back.
#[tokio::test]
async fn a_deleted_topic_takes_its_queue_state_along() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "jobs", 1, pb::TopicConfig::default()).await;
    enqueue(&broker, "jobs", 0, &["a".into(), "b".into(), "c".into()]).await;
    let mut queue = broker.queue().await;
    let leased = lease(&mut queue, "jobs", "w", 10, 10_000, 0).await;
    let results = ack(
        &mut queue,
        "jobs",
        "w",
        leased.into_iter().map(|m| m.lease_token).collect(),
    )
    .await;
    assert!(results.iter().all(|r| r.code == 0));
    let mut admin = broker.admin().await;
    admin
        .delete_topic(pb::DeleteTopicRequest {
            name: "jobs".into(),
        })
        .await
        .unwrap();
    let status = queue
        .describe_queue(pb::DescribeQueueRequest {
            topic: "jobs".into(),
            group: "w".into(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "jobs");
    create_topic(&broker, "jobs", 1, pb::TopicConfig::default()).await;
    enqueue(&broker, "jobs", 0, &["new-0".into(), "new-1".into()]).await;
    let fresh = lease(&mut queue, "jobs", "w", 10, 10_000, 0).await;
    assert_eq!(
        fresh
            .iter()
            .map(|m| (m.offset, m.attempt, value(m)))
            .collect::<Vec<_>>(),
        vec![(0, 1, "new-0".to_owned()), (1, 1, "new-1".to_owned())]
    );
    let broker = broker.restart(Env::default(), |_| {}).await;
    let mut queue = broker.queue().await;
    let (in_flight, done, ..) = totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!((in_flight, done), (2, 0));
    broker.stop().await;
}

/// Acks carried by the next Lease: answered per token (a stale one refused, the rest acked),
/// durable with the new leases, and still done after a restart.
#[tokio::test(start_paused = true)]
async fn acks_ride_on_the_next_lease() {
    let env = paused_env();
    let broker = TestBroker::start_env(None, env.clone(), |_| {}).await;
    create_topic(&broker, "jobs", 1, queue_config(5, 100, 100)).await;
    let values: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    enqueue(&broker, "jobs", 0, &values).await;
    let mut queue = broker.queue().await;
    let first = lease(&mut queue, "jobs", "w", 2, 1_000, 0).await;
    let mut request = lease_request("jobs", "w", 2, 60_000, 0);
    request.ack_lease_tokens = first.iter().map(|m| m.lease_token.clone()).collect();
    request.ack_lease_tokens.push("garbage".into());
    let response = queue.lease(request).await.unwrap().into_inner();
    assert_eq!(response.ack_results.len(), 3);
    assert!(
        response.ack_results[..2].iter().all(|r| r.code == 0),
        "{:?}",
        response.ack_results
    );
    expect_code_message(
        &response.ack_results[2],
        Code::InvalidArgument,
        "not a lease token",
    );
    assert_eq!(
        response
            .messages
            .iter()
            .map(|m| m.offset)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    // A stale token rides along too: refused, changing nothing.
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let mut request = lease_request("jobs", "w", 10, 60_000, 0);
    request.ack_lease_tokens = vec![first[0].lease_token.clone()];
    let response = queue.lease(request).await.unwrap().into_inner();
    expect_code_message(&response.ack_results[0], Code::FailedPrecondition, "done");
    assert_eq!(response.messages.len(), 2, "offsets 4 and 5");
    // With nothing to lease, a Lease carrying acks answers once they are durable, without
    // long-polling.
    let mut request = lease_request("jobs", "w", 10, 60_000, 30_000);
    request.ack_lease_tokens = response
        .messages
        .iter()
        .map(|m| m.lease_token.clone())
        .collect();
    let last = queue.lease(request).await.unwrap().into_inner();
    assert!(last.messages.is_empty());
    assert!(last.ack_results.iter().all(|r| r.code == 0));
    let broker = broker.restart(env, |_| {}).await;
    let mut queue = broker.queue().await;
    let (in_flight, done, ..) = totals(&describe(&mut queue, "jobs", "w").await);
    assert_eq!((in_flight, done), (2, 4), "offsets 2 and 3 still leased");
    broker.stop().await;
}

/// A long poll on an empty queue wakes when a job is enqueued (if it did not, it would
/// answer empty at the end of its wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_a_new_job() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "jobs", 3, pb::TopicConfig::default()).await;
    let mut queue = broker.queue().await;
    // The group exists and has seen the empty topic.
    assert!(
        lease(&mut queue, "jobs", "w", 1, 10_000, 0)
            .await
            .is_empty()
    );
    let waiting =
        tokio::spawn(async move { lease(&mut queue, "jobs", "w", 1, 10_000, 30_000).await });
    enqueue(&broker, "jobs", 2, &["late".into()]).await;
    let got = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "the long poll answered empty: it missed the arrival"
    );
    assert_eq!((got[0].partition, value(&got[0]).as_str()), (2, "late"));
    broker.stop().await;
}

/// The in-flight window bounds what a group holds per partition: past it nothing new is
/// delivered until the oldest job is done.
#[tokio::test]
async fn the_window_bounds_jobs_in_flight_per_partition() {
    let broker = TestBroker::start_with(|c| c.queue_max_inflight_per_partition = 3).await;
    create_topic(&broker, "jobs", 1, pb::TopicConfig::default()).await;
    let values: Vec<String> = (0..10).map(|i| format!("j{i}")).collect();
    enqueue(&broker, "jobs", 0, &values).await;
    let mut queue = broker.queue().await;
    let leased = lease(&mut queue, "jobs", "w", 100, 60_000, 0).await;
    assert_eq!(
        leased.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        lease(&mut queue, "jobs", "w", 100, 60_000, 0)
            .await
            .is_empty()
    );
    // Acking a later one frees nothing (the window starts at the oldest unfinished job)...
    ack(&mut queue, "jobs", "w", vec![leased[2].lease_token.clone()]).await;
    assert!(
        lease(&mut queue, "jobs", "w", 100, 60_000, 0)
            .await
            .is_empty()
    );
    // ...acking the oldest frees its slot; acking the next frees two (its own, and that of
    // the job acked ahead of it).
    ack(&mut queue, "jobs", "w", vec![leased[0].lease_token.clone()]).await;
    let more = lease(&mut queue, "jobs", "w", 100, 60_000, 0).await;
    assert_eq!(more.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![3]);
    ack(&mut queue, "jobs", "w", vec![leased[1].lease_token.clone()]).await;
    let more = lease(&mut queue, "jobs", "w", 100, 60_000, 0).await;
    assert_eq!(
        more.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let d = describe(&mut queue, "jobs", "w").await;
    assert_eq!(
        (
            d.partitions[0].done_below,
            d.partitions[0].in_flight,
            d.partitions[0].ready
        ),
        (3, 3, 4)
    );
    broker.stop().await;
}

/// A group's own retry policy overrides its topic's (one group dead-letters on the first
/// failure while another retries), survives a restart, and can be dropped again.
#[tokio::test]
async fn a_group_policy_overrides_the_topic_and_survives_a_restart() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "jobs", 1, queue_config(5, 10, 10)).await;
    enqueue(&broker, "jobs", 0, &["job".into()]).await;
    let mut queue = broker.queue().await;
    let configure =
        |group: &str, max_attempts: Option<u32>, follow: bool| pb::ConfigureGroupRequest {
            topic: "jobs".into(),
            group: group.into(),
            max_attempts,
            follow_topic: follow,
            ..pb::ConfigureGroupRequest::default()
        };
    let set = queue
        .configure_group(configure("strict", Some(1), false))
        .await
        .unwrap()
        .into_inner();
    let policy = set.policy.unwrap();
    assert_eq!(
        (
            policy.max_attempts,
            policy.backoff_initial_ms,
            policy.group_own
        ),
        (1, 10, true)
    );
    for group in ["strict", "lenient"] {
        let m = lease(&mut queue, "jobs", group, 1, 60_000, 0)
            .await
            .remove(0);
        let nacked = nack(&mut queue, "jobs", group, &m.lease_token, "no").await;
        assert_eq!(nacked.dead_lettered, group == "strict", "{group}");
    }
    let status = queue
        .configure_group(configure("strict", Some(0), false))
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "max_attempts");
    let status = queue
        .configure_group(configure("strict", Some(3), true))
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "follow_topic");
    let broker = broker.restart(Env::default(), |_| {}).await;
    let mut queue = broker.queue().await;
    let policy = describe(&mut queue, "jobs", "strict").await.policy.unwrap();
    assert_eq!(
        (policy.max_attempts, policy.group_own),
        (1, true),
        "kept across a restart"
    );
    let lenient = describe(&mut queue, "jobs", "lenient")
        .await
        .policy
        .unwrap();
    assert_eq!((lenient.max_attempts, lenient.group_own), (5, false));
    let back = queue
        .configure_group(configure("strict", None, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        back.policy.map(|p| (p.max_attempts, p.group_own)),
        Some((5, false))
    );
    broker.stop().await;
}

/// The queue state topic stays bounded: once compaction has dropped the slots acked jobs left
/// behind (and their tombstones), it holds about the cursor and the window, and a restart
/// rebuilds the same state from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_queue_state_replays_to_the_same_state() {
    let (clock, time) = Clock::manual(START_MS);
    let env = Env {
        clock,
        ..Env::default()
    };
    let tweak = |c: &mut sluice_server::Config| {
        c.offsets_segment_bytes = 16 << 10;
        c.compaction_check_interval_ms = 100;
        c.compaction_min_dirty_percent = 0;
    };
    let broker = TestBroker::start_env(None, env.clone(), tweak).await;
    create_topic(&broker, "jobs", 1, pb::TopicConfig::default()).await;
    for chunk in 0..3 {
        let values: Vec<String> = (0..1000).map(|i| format!("{chunk}-{i}")).collect();
        enqueue(&broker, "jobs", 0, &values).await;
    }
    let mut queue = broker.queue().await;
    let mut kept = Vec::new();
    let mut tokens = Vec::new();
    loop {
        let mut request = lease_request("jobs", "w", 100, 600_000, 0);
        request.ack_lease_tokens = std::mem::take(&mut tokens);
        let response = queue.lease(request).await.unwrap().into_inner();
        assert!(response.ack_results.iter().all(|r| r.code == 0));
        if response.messages.is_empty() {
            break;
        }
        for m in response.messages {
            // The last few jobs stay leased (so the cursor passes all the others).
            if m.offset >= 2995 {
                kept.push(m.offset);
            } else {
                tokens.push(m.lease_token);
            }
        }
    }
    let before = describe(&mut queue, "jobs", "w").await;
    let state_size = || async {
        let described = broker
            .admin()
            .await
            .describe_topic(pb::DescribeTopicRequest {
                name: "__queue_state".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let p = &described.topic.unwrap().partitions[0];
        p.size_bytes
    };
    let grown = state_size().await;
    // Tombstones may go once they are older than the topic's delete retention (a minute).
    time.advance(Duration::from_secs(120));
    let started = std::time::Instant::now();
    loop {
        let now = state_size().await;
        if now * 4 < grown {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "hang guard: the state topic stayed at {now} of {grown} bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broker = broker.restart(env, tweak).await;
    let mut queue = broker.queue().await;
    let after = describe(&mut queue, "jobs", "w").await;
    assert_eq!(
        after.partitions, before.partitions,
        "the same state after compaction"
    );
    let (in_flight, done, ..) = totals(&after);
    assert_eq!(
        (in_flight, done),
        (kept.len() as u64, 3000 - kept.len() as u64)
    );
    // The leases kept are still leased, and come back as attempt 2 once they run out.
    time.advance(Duration::from_secs(601));
    let mut again = Vec::new();
    for _ in 0..100 {
        again.extend(lease(&mut queue, "jobs", "w", 100, 600_000, 0).await);
        if again.len() >= kept.len() {
            break;
        }
        time.advance(Duration::from_secs(2));
    }
    let mut got: Vec<(u64, u32)> = again.iter().map(|m| (m.offset, m.attempt)).collect();
    got.sort_unstable();
    assert_eq!(got, kept.iter().map(|&o| (o, 2)).collect::<Vec<_>>());
    broker.stop().await;
}

/// Deleting a queue group drops its progress: its old leases are refused, a new group under
/// the name starts from the beginning, and a restart agrees.
#[tokio::test]
async fn a_deleted_queue_group_starts_over() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "jobs", 2, queue_config(1, 10, 10)).await;
    enqueue(&broker, "jobs", 0, &["a".into(), "b".into()]).await;
    enqueue(&broker, "jobs", 1, &["c".into()]).await;
    let mut queue = broker.queue().await;
    let leased = lease(&mut queue, "jobs", "w", 10, 60_000, 0).await;
    assert_eq!(leased.len(), 3);
    assert_eq!(
        ack(&mut queue, "jobs", "w", vec![leased[0].lease_token.clone()]).await[0].code,
        0
    );
    queue
        .configure_group(pb::ConfigureGroupRequest {
            topic: "jobs".into(),
            group: "w".into(),
            max_attempts: Some(3),
            ..pb::ConfigureGroupRequest::default()
        })
        .await
        .unwrap();
    let delete = || pb::DeleteQueueGroupRequest {
        topic: "jobs".into(),
        group: "w".into(),
    };
    queue.delete_queue_group(delete()).await.unwrap();
    let status = queue.delete_queue_group(delete()).await.unwrap_err();
    expect_status(&status, Code::NotFound, "unknown group");
    let status = queue
        .ack(pb::AckRequest {
            topic: "jobs".into(),
            group: "w".into(),
            lease_tokens: vec![leased[1].lease_token.clone()],
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "unknown group");
    let broker = broker.restart(Env::default(), |_| {}).await;
    let mut queue = broker.queue().await;
    let status = queue
        .describe_queue(pb::DescribeQueueRequest {
            topic: "jobs".into(),
            group: "w".into(),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "unknown group");
    let again = lease(&mut queue, "jobs", "w", 10, 60_000, 0).await;
    assert_eq!(again.len(), 3, "every job again");
    assert!(again.iter().all(|m| m.attempt == 1));
    let policy = describe(&mut queue, "jobs", "w").await.policy.unwrap();
    assert_eq!(
        (policy.max_attempts, policy.group_own),
        (1, false),
        "the policy went too"
    );
    broker.stop().await;
}
