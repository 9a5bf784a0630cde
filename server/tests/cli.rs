//! The `sluice` binary's client commands against a real broker on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_server::testing::TestBroker;
use sluice_server::{Clock, Env};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `sluice ARGS` with `stdin`, bounded in time; returns (success, stdout, stderr).
async fn sluice(broker: &TestBroker, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_BROKER", broker.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sluice finishes within 60 s")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn topic_produce_consume_replay_and_bench() {
    // The broker's clock moves only when the test moves it: replay by time needs no sleep.
    let (clock, time) = Clock::manual(1_700_000_000_000);
    let env = Env {
        clock,
        ..Env::default()
    };
    let broker = TestBroker::start_env(None, env, |_| {}).await;
    let (ok, out, err) = sluice(
        &broker,
        &["topic", "create", "demo", "--partitions", "2"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("topic demo"), "{out}");
    let (ok, out, _) = sluice(&broker, &["topic", "list"], "").await;
    assert!(ok);
    assert_eq!(out.trim(), "demo\t2");

    let (ok, _, err) = sluice(
        &broker,
        &["produce", "demo", "--key-sep", ":", "--partition", "0"],
        "a:one\nb:two\nthree\n",
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("produced 3 records"), "{err}");
    let (ok, out, err) = sluice(&broker, &["consume", "demo"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo\nthree\n");
    let (ok, out, _) = sluice(
        &broker,
        &["consume", "demo", "--verbose", "--count", "2"],
        "",
    )
    .await;
    assert!(ok);
    assert_eq!(out, "0/0 a one\n0/1 b two\n");

    // Replay from a time: only what was appended after it.
    time.advance(Duration::from_secs(1800));
    let since = std::time::UNIX_EPOCH + Duration::from_millis(time.now_ms() as u64);
    let since = humantime::format_rfc3339_millis(since).to_string();
    time.advance(Duration::from_secs(1800));
    let (ok, _, err) = sluice(&broker, &["produce", "demo", "--partition", "1"], "later\n").await;
    assert!(ok, "{err}");
    let (ok, out, err) = sluice(&broker, &["consume", "demo", "--from", &since], "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "later\n");

    // A group commits where it stopped and resumes there.
    let (ok, out, _) = sluice(&broker, &["consume", "demo", "--group", "g"], "").await;
    assert!(ok);
    assert_eq!(out.lines().count(), 4);
    let (ok, out, _) = sluice(&broker, &["consume", "demo", "--group", "g"], "").await;
    assert!(ok);
    assert_eq!(out, "");

    // Errors name the problem and exit non-zero.
    let (ok, _, err) = sluice(&broker, &["consume", "nope"], "").await;
    assert!(!ok);
    assert!(err.contains("unknown topic \"nope\""), "{err}");
    let (ok, _, err) = sluice(&broker, &["consume", "demo", "--from", "yesterday"], "").await;
    assert!(!ok);
    assert!(err.contains("--from"), "{err}");

    // The load generator's summary as JSON.
    let (ok, out, err) = sluice(
        &broker,
        &[
            "bench",
            "--topic",
            "b",
            "--count",
            "5000",
            "--record-size",
            "100",
            "--producers",
            "2",
            "--fsync",
            "never",
            "--json",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["records"], 5000);
    assert_eq!(summary["consumed"], 5000);
    assert!(summary["produce_ack_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(summary["end_to_end_ms"]["p50"].as_f64().unwrap() > 0.0);

    let (ok, _, err) = sluice(&broker, &["topic", "delete", "demo"], "").await;
    assert!(ok, "{err}");
    let (ok, out, _) = sluice(&broker, &["topic", "list"], "").await;
    assert!(ok);
    assert_eq!(out.trim(), "b\t4");

    broker.stop().await;
}
