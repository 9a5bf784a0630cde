//! Consumer groups against a real broker on loopback: members share a topic's partitions with
//! no overlap, rebalances move partitions when a member leaves or freezes, commits of fenced
//! members are refused, and membership and offsets survive a broker restart.
//!
//! The broker's clock follows tokio's paused time, so session timeouts and heartbeat intervals
//! pass without sleeping; waits on work done by real threads (appends, fsyncs) are bounded in
//! real time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_client::{Consumer, ConsumerConfig, Rebalance};
use sluice_proto::v1 as pb;
use sluice_server::{Clock, Env};
use sluice_tests::{TestBroker, batch, create_topic, expect_status, produce_request};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::Code;

const TOPIC: &str = "jobs";
const PARTITIONS: u32 = 6;
const START_MS: i64 = 1_767_225_600_000;

/// Who consumed what, and every assignment change, in the order they happened.
#[derive(Default)]
struct Journal {
    consumed: Vec<(u32, u64, usize)>,
    events: Vec<(usize, Rebalance)>,
}

type Shared = Arc<Mutex<Journal>>;

async fn paused_broker() -> TestBroker {
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    TestBroker::start_env(None, env, |c| c.group_heartbeat_interval_ms = 200).await
}

async fn produce_round(broker: &TestBroker, round: u32, per_partition: u32) {
    let mut log = broker.log().await;
    for partition in 0..PARTITIONS {
        log.produce(produce_request(
            TOPIC,
            partition,
            batch(&format!("r{round}p{partition}"), per_partition, 8, START_MS),
        ))
        .await
        .unwrap();
    }
}

/// A consumer in the group that records what it reads and its rebalances, polling until told
/// to stop, then closing (commit and leave).
fn member(
    broker: &TestBroker,
    id: usize,
    journal: Shared,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let config = ConsumerConfig::new()
        .broker(broker.addr.to_string())
        .group("workers")
        .client_id(format!("c{id}"))
        .session_timeout(Duration::from_secs(5))
        .auto_commit(Some(Duration::from_millis(100)))
        .max_wait(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut consumer = Consumer::connect(config).await.unwrap();
        let events = Arc::clone(&journal);
        consumer.on_rebalance(move |event| events.lock().unwrap().events.push((id, event.clone())));
        consumer.subscribe(&[TOPIC]).await.unwrap();
        while !*stop.borrow() {
            tokio::select! {
                polled = consumer.poll() => {
                    let records = polled.unwrap();
                    let mut journal = journal.lock().unwrap();
                    for record in records {
                        journal.consumed.push((record.partition, record.offset, id));
                    }
                }
                _ = stop.changed() => {}
            }
        }
        consumer.close().await.unwrap();
    })
}

/// Replays the assignment events: no partition is ever held by two consumers at once.
fn check_no_overlap(events: &[(usize, Rebalance)]) -> BTreeMap<u32, usize> {
    let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
    for (id, event) in events {
        match event {
            Rebalance::Assigned(partitions) => {
                for (_, partition) in partitions {
                    if let Some(other) = owner.insert(*partition, *id) {
                        panic!("partition {partition} given to c{id} while c{other} held it");
                    }
                }
            }
            Rebalance::Revoked(partitions) => {
                for (_, partition) in partitions {
                    assert_eq!(
                        owner.remove(partition),
                        Some(*id),
                        "c{id} revoked {partition}"
                    );
                }
            }
            _ => panic!("unknown event {event:?}"),
        }
    }
    owner
}

/// The group "workers" as the broker describes it.
async fn describe_workers(broker: &TestBroker) -> pb::DescribeGroupResponse {
    broker
        .admin()
        .await
        .describe_group(pb::DescribeGroupRequest {
            group: "workers".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits (advancing paused time, bounded in real time) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn consumed_once(journal: &Journal, expected: usize) -> bool {
    let distinct: BTreeSet<(u32, u64)> =
        journal.consumed.iter().map(|(p, o, _)| (*p, *o)).collect();
    distinct.len() >= expected
}

#[tokio::test(start_paused = true)]
async fn members_share_partitions_rebalance_without_overlap_and_fence_the_frozen() {
    let broker = paused_broker().await;
    create_topic(&broker, TOPIC, PARTITIONS, pb::TopicConfig::default()).await;
    produce_round(&broker, 0, 50).await;
    let journal: Shared = Arc::default();
    let (stop_all, stopped) = watch::channel(false);
    let (stop_third, third_stopped) = watch::channel(false);
    let c0 = member(&broker, 0, Arc::clone(&journal), stopped.clone());
    let c1 = member(&broker, 1, Arc::clone(&journal), stopped.clone());
    let c2 = member(&broker, 2, Arc::clone(&journal), third_stopped);
    until("all 300 records", || {
        consumed_once(&journal.lock().unwrap(), 300)
    })
    .await;
    until("an even spread", || {
        let owners = check_no_overlap(&journal.lock().unwrap().events);
        let mut counts = BTreeMap::new();
        for id in owners.values() {
            *counts.entry(*id).or_insert(0) += 1;
        }
        owners.len() == 6 && counts.len() == 3 && counts.values().all(|&n| n == 2)
    })
    .await;

    // c2 leaves (commit, leave): its partitions move, and what it committed is not read again.
    stop_third.send(true).unwrap();
    c2.await.unwrap();
    produce_round(&broker, 1, 50).await;
    until("all 600 records", || {
        consumed_once(&journal.lock().unwrap(), 600)
    })
    .await;
    until("two members own everything", || {
        let owners = check_no_overlap(&journal.lock().unwrap().events);
        owners.len() == 6 && owners.values().all(|&id| id < 2)
    })
    .await;
    {
        let journal = journal.lock().unwrap();
        let mut seen = BTreeSet::new();
        for (partition, offset, id) in &journal.consumed {
            assert!(
                seen.insert((partition, offset)),
                "{partition}/{offset} consumed twice (second time by c{id})"
            );
        }
    }

    // A member that joins, takes its share, then freezes: its session expires, its partitions
    // move back, and its late commit is fenced.
    let mut groups = broker.groups().await;
    let joined = groups
        .join(pb::JoinRequest {
            group: "workers".into(),
            member_id: String::new(),
            topics: vec![TOPIC.into()],
            session_timeout_ms: 2_000,
            client_id: "frozen".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut frozen = (joined.generation, joined.assignment);
    // It heartbeats until it owns its share (reporting it owns what it was given)...
    let deadline = Instant::now() + Duration::from_secs(60);
    while frozen.1.iter().map(|tp| tp.partitions.len()).sum::<usize>() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let beat = groups
            .heartbeat(pb::HeartbeatRequest {
                group: "workers".into(),
                member_id: joined.member_id.clone(),
                generation: frozen.0,
                owned: frozen.1.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        frozen = (beat.generation, beat.assignment);
    }
    let frozen_partition = frozen.1[0].partitions[0];
    // It stops heartbeating; two session timeouts later it is gone and its partitions moved.
    tokio::time::sleep(Duration::from_secs(4)).await;
    until("the survivors own everything again", || {
        let owners = check_no_overlap(&journal.lock().unwrap().events);
        owners.len() == 6 && owners.values().all(|&id| id < 2)
    })
    .await;
    let late = groups
        .commit_offsets(pb::CommitOffsetsRequest {
            group: "workers".into(),
            topic: TOPIC.into(),
            offsets: vec![pb::PartitionOffset {
                partition: frozen_partition,
                offset: 1,
                metadata: String::new(),
            }],
            member_id: joined.member_id.clone(),
            generation: frozen.0,
        })
        .await
        .unwrap_err();
    expect_status(
        &late,
        Code::FailedPrecondition,
        "is not in group \"workers\"",
    );

    // How long rebalances take, by the broker clock (printed for the notes).
    let described = describe_workers(&broker).await;
    println!("last rebalance: {:?} ms", described.last_rebalance_ms);
    assert_eq!(described.members.len(), 2);
    stop_all.send(true).unwrap();
    c0.await.unwrap();
    c1.await.unwrap();
    // After everyone left, the committed offsets cover everything read.
    let described = describe_workers(&broker).await;
    assert!(described.members.is_empty());
    for partition in &described.partitions {
        assert_eq!(partition.lag, 0, "{partition:?}");
    }
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn membership_assignments_and_offsets_survive_a_broker_restart() {
    let broker = paused_broker().await;
    create_topic(&broker, TOPIC, PARTITIONS, pb::TopicConfig::default()).await;
    produce_round(&broker, 0, 20).await;
    let journal: Shared = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let c0 = member(&broker, 0, Arc::clone(&journal), stopped.clone());
    let c1 = member(&broker, 1, Arc::clone(&journal), stopped.clone());
    until("all 120 records", || {
        consumed_once(&journal.lock().unwrap(), 120)
    })
    .await;
    until("two members with three each", || {
        let owners = check_no_overlap(&journal.lock().unwrap().events);
        owners.len() == 6 && owners.values().filter(|&&id| id == 0).count() == 3
    })
    .await;
    // Let auto-commit run, then restart the broker on the same addresses.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = describe_workers(&broker).await;
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    let broker = broker
        .restart(env, |c| c.group_heartbeat_interval_ms = 200)
        .await;
    let after = describe_workers(&broker).await;
    let members = |d: &pb::DescribeGroupResponse| {
        d.members
            .iter()
            .map(|m| (m.member_id.clone(), m.assignment.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        members(&after),
        members(&before),
        "members and assignments survive"
    );
    let committed = |d: &pb::DescribeGroupResponse| {
        d.partitions
            .iter()
            .map(|p| (p.partition, p.committed_offset))
            .collect::<Vec<_>>()
    };
    assert_eq!(committed(&after), committed(&before), "offsets survive");
    // The members carry on: new records are read once, with no rebalance.
    let events_before = journal.lock().unwrap().events.len();
    produce_round(&broker, 1, 20).await;
    until("all 240 records", || {
        consumed_once(&journal.lock().unwrap(), 240)
    })
    .await;
    assert_eq!(
        journal.lock().unwrap().events.len(),
        events_before,
        "no rebalance"
    );
    let consumed = journal.lock().unwrap().consumed.len();
    assert_eq!(consumed, 240, "nothing read twice");
    stop.send(true).unwrap();
    c0.await.unwrap();
    c1.await.unwrap();
    broker.stop().await;
}

/// The internal membership topic's partition, checked to be compacted.
async fn membership_log_bytes(broker: &TestBroker) -> pb::PartitionDescription {
    let described = broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest {
            name: "__consumer_groups".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(
        described.config.as_ref().map(|c| c.cleanup()),
        Some(pb::CleanupPolicy::Compact)
    );
    described.partitions[0]
}

#[tokio::test(start_paused = true)]
async fn membership_churn_is_compacted_away_and_the_group_survives_a_restart() {
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    let tweak = |c: &mut sluice_server::Config| {
        c.offsets_segment_bytes = 4096;
        c.compaction_check_interval_ms = 1000;
        c.compaction_min_dirty_percent = 0;
    };
    let broker = TestBroker::start_env(None, env, tweak).await;
    create_topic(&broker, TOPIC, PARTITIONS, pb::TopicConfig::default()).await;
    let mut groups = broker.groups().await;
    // 100 short-lived members: a member record and a tombstone each, and a generation record
    // per join and per leave, over several 4 KiB segments.
    for i in 0..100 {
        let joined = groups
            .join(pb::JoinRequest {
                group: "workers".into(),
                member_id: String::new(),
                topics: vec![TOPIC.into()],
                session_timeout_ms: 10_000,
                client_id: format!("short-lived-{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        groups
            .leave(pb::LeaveRequest {
                group: "workers".into(),
                member_id: joined.member_id,
            })
            .await
            .unwrap();
    }
    let churned = membership_log_bytes(&broker).await;
    assert!(churned.size_bytes > 3 * 4096, "{churned:?}");
    let generation = describe_workers(&broker).await.generation;
    assert!(generation >= 200, "{generation}");

    // Compaction keeps one generation record and the members' tombstones; a day later (the
    // tombstones' delete_retention_ms, by the broker's clock) those go too.
    tokio::time::advance(Duration::from_secs(86_400 + 60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = membership_log_bytes(&broker).await;
        if now.size_bytes <= 4096 {
            break;
        }
        assert!(Instant::now() < deadline, "never compacted: {now:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    let broker = broker.restart(env, tweak).await;
    let after = describe_workers(&broker).await;
    assert_eq!(after.generation, generation, "the generation survives");
    assert!(after.members.is_empty(), "{after:?}");
    broker.stop().await;
}

#[tokio::test]
async fn group_requests_that_cannot_be_honoured_get_statuses_naming_why() {
    let broker = TestBroker::start().await;
    create_topic(&broker, TOPIC, 2, pb::TopicConfig::default()).await;
    let mut groups = broker.groups().await;
    let joined = groups
        .join(pb::JoinRequest {
            group: "g".into(),
            member_id: String::new(),
            topics: vec![TOPIC.into()],
            session_timeout_ms: 0,
            client_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        joined
            .assignment
            .iter()
            .map(|tp| tp.partitions.len())
            .sum::<usize>(),
        2
    );
    let commit = |member_id: &str, generation: u32| pb::CommitOffsetsRequest {
        group: "g".into(),
        topic: TOPIC.into(),
        offsets: vec![pb::PartitionOffset {
            partition: 0,
            offset: 0,
            metadata: String::new(),
        }],
        member_id: member_id.into(),
        generation,
    };
    groups
        .commit_offsets(commit(&joined.member_id, joined.generation))
        .await
        .unwrap();
    let stale = groups
        .commit_offsets(commit(&joined.member_id, joined.generation + 7))
        .await
        .unwrap_err();
    expect_status(&stale, Code::FailedPrecondition, "stale generation");
    let outsider = groups.commit_offsets(commit("", 0)).await.unwrap_err();
    expect_status(&outsider, Code::FailedPrecondition, "1 live members");
    let unknown = groups
        .heartbeat(pb::HeartbeatRequest {
            group: "g".into(),
            member_id: "nobody".into(),
            generation: 1,
            owned: vec![],
        })
        .await
        .unwrap_err();
    expect_status(&unknown, Code::NotFound, "unknown member \"nobody\"");
    let no_topic = groups
        .join(pb::JoinRequest {
            group: "g".into(),
            member_id: String::new(),
            topics: vec!["missing".into()],
            session_timeout_ms: 0,
            client_id: String::new(),
        })
        .await
        .unwrap_err();
    expect_status(&no_topic, Code::NotFound, "unknown topic \"missing\"");
    let bad_timeout = groups
        .join(pb::JoinRequest {
            group: "g".into(),
            member_id: String::new(),
            topics: vec![TOPIC.into()],
            session_timeout_ms: 5,
            client_id: String::new(),
        })
        .await
        .unwrap_err();
    expect_status(&bad_timeout, Code::InvalidArgument, "session_timeout_ms");
    let mut admin = broker.admin().await;
    let reset = admin
        .reset_group_offsets(pb::ResetGroupOffsetsRequest {
            group: "g".into(),
            topic: TOPIC.into(),
            to: Some(pb::reset_group_offsets_request::To::Earliest(true)),
        })
        .await
        .unwrap_err();
    expect_status(&reset, Code::FailedPrecondition, &joined.member_id);
    let delete = admin
        .delete_group(pb::DeleteGroupRequest { group: "g".into() })
        .await
        .unwrap_err();
    expect_status(&delete, Code::FailedPrecondition, "live members");
    // Once the member leaves: reset and delete work, and the group is gone.
    groups
        .leave(pb::LeaveRequest {
            group: "g".into(),
            member_id: joined.member_id.clone(),
        })
        .await
        .unwrap();
    let set = admin
        .reset_group_offsets(pb::ResetGroupOffsetsRequest {
            group: "g".into(),
            topic: TOPIC.into(),
            to: Some(pb::reset_group_offsets_request::To::Latest(true)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.offsets.len(), 2);
    admin
        .delete_group(pb::DeleteGroupRequest { group: "g".into() })
        .await
        .unwrap();
    let gone = admin
        .describe_group(pb::DescribeGroupRequest { group: "g".into() })
        .await
        .unwrap_err();
    expect_status(&gone, Code::NotFound, "unknown group \"g\"");
    broker.stop().await;
}

/// Ten rounds of a third member joining then leaving a group of two on six partitions: each
/// rebalance completes (two members own all six again), and the time from the leave to the
/// end of the rebalance, by the broker's clock, is printed (p50) for the notes.
#[tokio::test(start_paused = true)]
async fn three_to_two_rebalances_complete_and_are_timed() {
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    // The default heartbeat interval (3 s): the figure is what a deployment sees.
    let broker = TestBroker::start_env(None, env, |_| {}).await;
    create_topic(&broker, TOPIC, PARTITIONS, pb::TopicConfig::default()).await;
    let journal: Shared = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let c0 = member(&broker, 0, Arc::clone(&journal), stopped.clone());
    let c1 = member(&broker, 1, Arc::clone(&journal), stopped.clone());
    let two_own_all = |journal: &Shared| {
        let owners = check_no_overlap(&journal.lock().unwrap().events);
        owners.len() == 6 && owners.values().all(|&id| id < 2)
    };
    until("two members own everything", || two_own_all(&journal)).await;
    let mut times = Vec::new();
    for round in 0..10 {
        let (leave, left) = watch::channel(false);
        let third = member(&broker, 2, Arc::clone(&journal), left);
        until("the third member gets its share", || {
            let owners = check_no_overlap(&journal.lock().unwrap().events);
            owners.values().filter(|&&id| id == 2).count() == 2
        })
        .await;
        leave.send(true).unwrap();
        third.await.unwrap();
        until("two members own everything again", || two_own_all(&journal)).await;
        let described = describe_workers(&broker).await;
        let took = described.last_rebalance_ms.expect("a completed rebalance");
        assert!(took >= 0, "round {round}: {took}");
        times.push(took);
    }
    times.sort_unstable();
    println!(
        "3 -> 2 members on 6 partitions, heartbeat 3 s: rebalance p50 {} ms (min {}, max {}) by the broker clock",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    stop.send(true).unwrap();
    c0.await.unwrap();
    c1.await.unwrap();
    broker.stop().await;
}
