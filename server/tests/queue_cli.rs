//! Queue mode through the `sluice` binary: topic settings, enqueue, work (a command per job),
//! queue describe, and dlq list/peek/redrive, against a real broker on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_server::testing::{TestBroker, run_cli};

/// Runs `sluice ARGS` with `stdin` against `broker`; returns (success, stdout, stderr).
async fn sluice(broker: &TestBroker, args: &[&str], stdin: &str) -> (bool, String, String) {
    run_cli(env!("CARGO_BIN_EXE_sluice"), broker, args, stdin).await
}

const SCRIPT: &str = r#"read v; case "$v" in fail*) echo "bad $v attempt $SLUICE_ATTEMPT" >&2; exit 3;; esac; echo "done $v $SLUICE_ATTEMPT $SLUICE_TOPIC""#;

#[tokio::test]
async fn enqueue_work_describe_and_dead_letters_from_the_command_line() {
    let broker = TestBroker::start().await;
    let (ok, out, err) = sluice(
        &broker,
        &[
            "topic",
            "create",
            "jobs",
            "--partitions",
            "2",
            "--max-attempts",
            "2",
            "--backoff-initial",
            "10ms",
            "--backoff-max",
            "20ms",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("max_attempts 2  backoff_initial_ms 10"),
        "{out}"
    );
    let jobs: String = (1..=10)
        .map(|i| format!("ok-{i}\n"))
        .chain(["fail-1\n".to_owned()])
        .collect();
    let (ok, _, err) = sluice(&broker, &["enqueue", "jobs"], &jobs).await;
    assert!(ok, "{err}");
    assert!(err.contains("produced 11 records"), "{err}");

    // 10 successes, and the failing job twice (max attempts 2): 12 runs.
    let (ok, out, err) = sluice(
        &broker,
        &[
            "work",
            "jobs",
            "--group",
            "g",
            "--concurrency",
            "4",
            "--max-jobs",
            "12",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    for i in 1..=10 {
        assert!(
            out.contains(&format!("done ok-{i} 1 jobs\n")),
            "ok-{i}: {out}"
        );
    }
    assert!(
        err.contains("bad fail-1 attempt 1") && err.contains("bad fail-1 attempt 2"),
        "{err}"
    );
    assert!(err.contains("10 succeeded, 2 failed"), "{err}");

    let (ok, out, err) = sluice(&broker, &["queue", "describe", "jobs", "--group", "g"], "").await;
    assert!(ok, "{err}");
    assert!(
        out.contains("queue group g on jobs (max_attempts 2)"),
        "{out}"
    );
    assert!(out.contains("policy (topic's) max_attempts 2"), "{out}");
    let rows: Vec<Vec<u64>> = out
        .lines()
        .skip(3)
        .map(|l| {
            l.split_whitespace()
                .take(7)
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    let sum = |column: usize| rows.iter().map(|r| r[column]).sum::<u64>();
    // partition ready delayed in_flight done dead_letter log_end
    assert_eq!(
        (sum(1), sum(2), sum(3), sum(4), sum(5), sum(6)),
        (0, 0, 0, 11, 1, 11),
        "{out}"
    );

    let (ok, out, err) = sluice(&broker, &["dlq", "list", "jobs"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("group g attempts 2"), "{out}");
    assert!(
        out.contains("exit status: 3: bad fail-1 attempt 2"),
        "{out}"
    );
    let (ok, out, err) = sluice(&broker, &["dlq", "peek", "jobs"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("sluice.origin.topic: jobs"), "{out}");
    assert!(out.contains("value: fail-1"), "{out}");

    let (ok, out, err) = sluice(&broker, &["dlq", "redrive", "jobs", "--all"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("redrove 1 dead letters"), "{out}");
    let (ok, out, err) = sluice(
        &broker,
        &["dlq", "redrive", "jobs", "--from", "0", "--to", "0"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("redrove 0 dead letters to jobs (1 were redriven before)"),
        "{out}"
    );
    let (ok, _, err) = sluice(&broker, &["dlq", "redrive", "jobs"], "").await;
    assert!(!ok, "a redrive needs a range or --all");
    assert!(err.contains("--all") || err.contains("--from"), "{err}");

    // More attempts now; the redriven job runs again from attempt 1 and succeeds this time.
    let (ok, out, err) = sluice(
        &broker,
        &["topic", "alter", "jobs", "--max-attempts", "4"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("max_attempts 4"), "{out}");
    let (ok, out, err) = sluice(
        &broker,
        &[
            "work",
            "jobs",
            "--group",
            "g",
            "--max-jobs",
            "1",
            "--",
            "sh",
            "-c",
            "cat; echo \" attempt $SLUICE_ATTEMPT\"",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "fail-1 attempt 1\n");

    // A group's own policy, then back to the topic's.
    let (ok, out, err) = sluice(
        &broker,
        &[
            "queue",
            "config",
            "jobs",
            "--group",
            "g",
            "--max-attempts",
            "9",
            "--backoff-max",
            "5s",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("policy (group's own) max_attempts 9"), "{out}");
    assert!(out.contains("backoff_max_ms 5000"), "{out}");
    let (ok, out, err) = sluice(
        &broker,
        &["queue", "config", "jobs", "--group", "g", "--follow-topic"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("policy (topic's) max_attempts 4"), "{out}");

    // The queue bench, small: every job acked once.
    let (ok, out, err) = sluice(
        &broker,
        &[
            "bench",
            "--mode",
            "queue",
            "--count",
            "500",
            "--record-size",
            "100",
            "--workers",
            "2",
            "--concurrency",
            "16",
            "--json",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["jobs"], 500, "{out}");

    let (ok, out, err) = sluice(&broker, &["queue", "delete", "jobs", "--group", "g"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("deleted queue group g of jobs"), "{out}");

    // Bad input names the problem.
    let (ok, _, err) = sluice(
        &broker,
        &["queue", "describe", "jobs", "--group", "nobody"],
        "",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("unknown group \"nobody"), "{err}");
    let (ok, _, err) = sluice(
        &broker,
        &["topic", "alter", "jobs", "--backoff-initial", "soon"],
        "",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("not a duration"), "{err}");
    broker.stop().await;
}
