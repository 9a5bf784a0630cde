//! Restarting the real `sluice` binary with many partitions: 10,000 mostly idle partitions,
//! stopped with SIGKILL (no clean-shutdown markers), must come back fast — recovered in
//! parallel, with no sync, truncation or index rewrite for a partition whose tail is already
//! whole — and with every acknowledged batch. The restart time is printed for the notes
//! (`cargo test -p sluice-server --test restart -- --nocapture`), never asserted: targets live
//! in notes and benches, not in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::testing::{ChildBroker, batch, decode, endpoint, now_ms};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 10_000;
/// Partitions that get a batch before the kill (the others stay empty).
const WRITTEN_EVERY: u32 = 250;
const HANG_GUARD: Duration = Duration::from_secs(600);

fn sluice_bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
}

#[tokio::test]
async fn ten_thousand_idle_partitions_restart_quickly_after_sigkill() {
    tokio::time::timeout(HANG_GUARD, ten_thousand_partitions())
        .await
        .expect("test finished within the hang guard");
}

async fn ten_thousand_partitions() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    let created = Instant::now();
    let mut admin = pb::admin_client::AdminClient::new(broker.channel().await);
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "many".into(),
            partitions: PARTITIONS,
            config: None,
        })
        .await
        .unwrap();
    let created = created.elapsed();
    let mut log = broker.log_client().await;
    let mut acked = Vec::new();
    for partition in (0..PARTITIONS).step_by(WRITTEN_EVERY as usize) {
        let sent = batch(&format!("p{partition}"), 3, 16, now_ms()).freeze();
        let ack = log
            .produce(pb::ProduceRequest {
                topic: "many".into(),
                partition,
                batch: sent,
            })
            .await
            .unwrap()
            .into_inner();
        acked.push((partition, ack.base_offset));
    }
    broker.kill_hard();
    drop(broker);

    let restarted = Instant::now();
    let broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    let restart = restarted.elapsed();
    let summary = broker
        .log_text()
        .lines()
        .find(|line| line.contains("opened partitions"))
        .map(str::to_owned)
        .unwrap_or_default();
    println!(
        "{PARTITIONS} partitions: created in {created:?}; unclean restart to serving in {restart:?}\n{summary}"
    );
    let total = field(&summary, "partitions");
    assert!(total > u64::from(PARTITIONS), "{summary}");
    assert_eq!(
        field(&summary, "recovered"),
        total,
        "every partition was recovered (no clean markers): {summary}"
    );

    // Every acknowledged batch is there, and the partitions take writes again.
    let mut log = pb::log_client::LogClient::new(endpoint(broker.addr).connect().await.unwrap());
    for &(partition, base) in &acked {
        let fetched = log
            .fetch(pb::FetchRequest {
                topic: "many".into(),
                partition,
                offset: base,
                max_bytes: 0,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let records = decode(&fetched.batches);
        assert_eq!(records.len(), 3, "partition {partition}");
        let mut first = format!("p{partition}-0").into_bytes();
        first.resize(16, b'.');
        assert_eq!(records[0], (base, first), "partition {partition}");
        let again = log
            .produce(pb::ProduceRequest {
                topic: "many".into(),
                partition,
                batch: batch("again", 1, 8, now_ms()).freeze(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.base_offset, base + 3);
    }

    // A graceful stop closes every partition (synced, clean markers); the next start skips
    // recovery.
    let mut broker = broker;
    let stopping = Instant::now();
    let status = broker.terminate().await;
    let stop = stopping.elapsed();
    assert!(status.success(), "{}", broker.log_text());
    drop(broker);
    let restarted = Instant::now();
    let broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    let clean_restart = restarted.elapsed();
    let summary = broker
        .log_text()
        .lines()
        .find(|line| line.contains("opened partitions"))
        .map(str::to_owned)
        .unwrap_or_default();
    println!("graceful stop in {stop:?}; clean restart to serving in {clean_restart:?}\n{summary}");
    assert_eq!(
        field(&summary, "clean"),
        field(&summary, "partitions"),
        "every partition was closed cleanly: {summary}"
    );
}

/// The number after `name=` in a log line (0 if absent).
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}
