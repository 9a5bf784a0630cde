//! Time-dependent broker behaviour on tokio's paused time (design.md §4 "One clock"): the
//! broker runs with a clock that follows tokio's, so an hour of retention or a 10-second long
//! poll takes no wall time, and nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::{Clock, Env};
use sluice_tests::{TestBroker, batch, create_topic, produce_request as produce};
use std::time::Duration;

/// Wall-clock start of the tests' clock: 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;

async fn paused_broker(tweak: impl FnOnce(&mut sluice_server::Config)) -> TestBroker {
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    TestBroker::start_env(None, env, tweak).await
}

#[tokio::test(start_paused = true)]
async fn retention_by_age_follows_the_broker_clock() {
    let broker = paused_broker(|c| c.retention_check_interval_ms = 60_000).await;
    create_topic(
        &broker,
        "events",
        1,
        pb::TopicConfig {
            retention_ms: Some(3_600_000),
            segment_bytes: Some(4096),
            max_batch_bytes: Some(4096),
            ..Default::default()
        },
    )
    .await;
    let mut log = broker.log().await;
    for i in 0..20 {
        log.produce(produce(
            "events",
            0,
            batch(&format!("b{i}"), 4, 200, START_MS),
        ))
        .await
        .unwrap();
    }
    let mut admin = broker.admin().await;
    let describe = |admin: &mut pb::admin_client::AdminClient<_>| {
        let mut admin = admin.clone();
        async move {
            admin
                .describe_topic(pb::DescribeTopicRequest {
                    name: "events".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .topic
                .unwrap()
                .partitions[0]
        }
    };
    let before = describe(&mut admin).await;
    assert!(before.segments >= 4, "{before:?}");
    assert_eq!(before.earliest_offset, 0);

    // Half an hour on: several retention passes ran, nothing is old enough.
    tokio::time::advance(Duration::from_secs(1800)).await;
    tokio::task::yield_now().await;
    assert_eq!(describe(&mut admin).await.earliest_offset, 0);

    // Past the hour: the next pass deletes every sealed segment.
    tokio::time::advance(Duration::from_secs(1800 + 120)).await;
    // The pass itself runs on real threads (the blocking pool): bound the wait in real time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = describe(&mut admin).await;
        if now.segments == 1 {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "{now:?}");
        tokio::time::advance(Duration::from_secs(60)).await;
    };
    // Only the active segment is left; everything before it went.
    assert!(after.earliest_offset > 0, "{after:?}");
    assert!(after.earliest_offset <= after.log_end_offset, "{after:?}");
    assert_eq!(after.log_end_offset, 80);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_waits_its_full_time_on_the_broker_clock() {
    let broker = paused_broker(|_| {}).await;
    create_topic(&broker, "quiet", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let started = tokio::time::Instant::now();
    let fetched = log
        .fetch(pb::FetchRequest {
            topic: "quiet".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.batches.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
    broker.stop().await;
}
