//! The `sluice` binary's client commands against a real broker on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_server::testing::{TestBroker, run_cli};
use sluice_server::{Clock, Env};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::Command;

/// Runs `sluice ARGS` with `stdin` against `broker`; returns (success, stdout, stderr).
async fn sluice(broker: &TestBroker, args: &[&str], stdin: &str) -> (bool, String, String) {
    run_cli(env!("CARGO_BIN_EXE_sluice"), broker, args, stdin).await
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

/// Runs `sluice ARGS` without the broker in the environment (flags only).
async fn sluice_bare(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_BROKER")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
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
async fn the_cli_as_a_newcomer_meets_it() {
    let broker = TestBroker::start().await;
    let addr = broker.addr.to_string();
    // --broker is global: before or after the subcommand.
    let (ok, _, err) = sluice_bare(&[
        "topic",
        "create",
        "news",
        "--partitions",
        "2",
        "--broker",
        &addr,
    ])
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = sluice_bare(&["--broker", &addr, "topic", "list"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "news\t2");

    // One record is one record.
    let (ok, _, err) = sluice(&broker, &["produce", "news", "--partition", "0"], "solo\n").await;
    assert!(ok, "{err}");
    assert!(err.contains("produced 1 record to news"), "{err}");
    let lines: String = (0..5).map(|i| format!("p1-{i}\n")).collect();
    let (ok, _, err) = sluice(&broker, &["produce", "news", "--partition", "1"], &lines).await;
    assert!(ok, "{err}");
    assert!(err.contains("produced 5 records"), "{err}");

    // A bare offset past one partition's end starts that partition at its end, and says so.
    let (ok, out, err) = sluice(&broker, &["consume", "news", "--from", "3"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "p1-3\np1-4\n");
    assert!(
        err.contains("partition 0 ends at offset 1: starting there instead of 3"),
        "{err}"
    );
    // -N: the last N records of each partition (not a flag).
    let (ok, out, err) = sluice(
        &broker,
        &["consume", "news", "--from", "-1", "--partition", "1"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "p1-4\n");
    // A date is midnight UTC: one in the past replays everything, one far ahead nothing.
    let (ok, out, err) = sluice(&broker, &["consume", "news", "--from", "2001-01-01"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 6, "{out}");
    let (ok, out, err) = sluice(&broker, &["consume", "news", "--from", "2999-01-01"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "");

    // Messages carry values, not Rust's Debug formatting; a missing topic reads the same from
    // produce and consume.
    let (ok, _, err) = sluice(&broker, &["consume", "news", "--partition", "7"], "").await;
    assert!(!ok);
    assert!(err.contains("has no partition 7 (it has 2)"), "{err}");
    assert!(!err.contains("Some("), "{err}");
    let (ok, _, produce_err) = sluice(&broker, &["produce", "nowhere"], "x\n").await;
    assert!(!ok);
    let (ok, _, consume_err) = sluice(&broker, &["consume", "nowhere"], "").await;
    assert!(!ok);
    let wording =
        "describe topic nowhere failed after 1 attempt(s): NotFound: unknown topic \"nowhere\"";
    assert!(produce_err.contains(wording), "{produce_err}");
    assert!(consume_err.contains(wording), "{consume_err}");

    // `| head`: the reader goes away; sluice exits quietly, successfully, without a panic.
    let many: String = (0..20_000).map(|i| format!("line-{i}\n")).collect();
    let (ok, _, err) = sluice(&broker, &["produce", "news", "--partition", "1"], &many).await;
    assert!(ok, "{err}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["consume", "news"])
        .env("SLUICE_BROKER", &addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut first)
        .await
        .unwrap();
    drop(stdout);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sluice finishes within 60 s")
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    broker.stop().await;
}

#[tokio::test]
async fn serve_prints_its_config_in_the_config_file_format() {
    let (ok, out, err) = sluice_bare(&["serve", "--print-config", "--max-connections", "77"]).await;
    assert!(ok, "{err}");
    let config = sluice_server::Config::from_toml(&out).expect("the printed config parses back");
    assert_eq!(config.max_connections, 77);
    assert_eq!(
        config,
        sluice_server::Config {
            max_connections: 77,
            ..Default::default()
        }
    );
    assert!(out.contains("handshake_timeout_ms = 10000"), "{out}");
}

#[tokio::test]
async fn consumers_in_a_group_share_a_topic_and_the_group_can_be_inspected_and_replayed() {
    let broker = TestBroker::start_with(|c| c.group_heartbeat_interval_ms = 100).await;
    let addr = broker.addr.to_string();
    let (ok, _, err) = sluice(
        &broker,
        &["topic", "create", "shared", "--partitions", "4"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let lines: String = (0..40).map(|i| format!("v{i}\n")).collect();
    let (ok, _, err) = sluice(&broker, &["produce", "shared"], &lines).await;
    assert!(ok, "{err}");

    // Two members follow the topic; the broker gives each its share.
    let spawn_member = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["consume", "shared", "--group", "g", "--follow"])
            .env("SLUICE_BROKER", &addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let first = spawn_member();
    let second = spawn_member();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = sluice(&broker, &["group", "describe", "g"], "").await;
        // Settled: two members, and every partition owned by one of them.
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("shared"))
            .collect();
        let settled = ok
            && out.contains("members 2")
            && rows.len() == 4
            && rows.iter().all(|l| !l.ends_with(" -"));
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group never settled:\n{out}{err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each member prints what it reads; once the two together printed every record, SIGTERM:
    // each commits and leaves, exiting successfully.
    let (lines_sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut members = Vec::new();
    for mut child in [first, second] {
        let stdout = child.stdout.take().unwrap();
        let sender = lines_sender.clone();
        let reader = tokio::spawn(async move {
            let mut stdout = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let _ = sender.send(line);
            }
        });
        members.push((child, reader));
    }
    drop(lines_sender);
    let read_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut values = Vec::new();
    while values.len() < 40 {
        let line = tokio::time::timeout_at(read_deadline, lines.recv())
            .await
            .expect("the members read every record within 60 s")
            .expect("a member exited early");
        values.push(line);
    }
    for (mut child, reader) in members {
        let pid = child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let exited = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("a member exits after SIGTERM")
            .unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert!(exited.success(), "{stderr}");
        reader.await.unwrap();
    }
    // Nothing is read twice, before or after the signal.
    while let Ok(line) = lines.try_recv() {
        values.push(line);
    }
    values.sort_unstable();
    let mut expected: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
    expected.sort_unstable();
    assert_eq!(values, expected, "each record read once, by one of the two");

    let (ok, out, err) = sluice(&broker, &["group", "list"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "g\t0");
    let (ok, out, err) = sluice(&broker, &["group", "describe", "g"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("members 0"), "{out}");
    let lags: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("shared"))
        .collect();
    assert_eq!(lags.len(), 4, "{out}");
    assert!(
        lags.iter()
            .all(|l| l.split_whitespace().nth(4) == Some("0")),
        "{out}"
    );

    // Replay: move the group back to the start and read everything again as a member.
    let (ok, out, err) = sluice(
        &broker,
        &[
            "group", "reset", "g", "--topic", "shared", "--to", "earliest",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let (ok, out, err) = sluice(&broker, &["consume", "shared", "--group", "g"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 40, "{out}");
    let (ok, _, err) = sluice(&broker, &["group", "delete", "g"], "").await;
    assert!(ok, "{err}");
    let (ok, out, _) = sluice(&broker, &["group", "list"], "").await;
    assert!(ok);
    assert_eq!(out.trim(), "");
    let (ok, _, err) = sluice(&broker, &["group", "describe", "g"], "").await;
    assert!(!ok);
    assert!(err.contains("unknown group \"g\""), "{err}");
    broker.stop().await;
}

#[tokio::test]
async fn compacted_topics_from_the_command_line() {
    let broker = TestBroker::start().await;
    let (ok, out, err) = sluice(
        &broker,
        &[
            "topic",
            "create",
            "state",
            "--cleanup",
            "compact",
            "--delete-retention-ms",
            "60000",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("cleanup compact  delete_retention_ms 60000"),
        "{out}"
    );
    let (ok, out, _) = sluice(&broker, &["topic", "describe", "state"], "").await;
    assert!(ok);
    assert!(out.contains("cleanup compact "), "{out}");
    // A plain topic shows its default.
    let (ok, out, _) = sluice(&broker, &["topic", "create", "plain"], "").await;
    assert!(ok);
    assert!(
        out.contains("cleanup delete  delete_retention_ms 86400000"),
        "{out}"
    );
    let (ok, out, _) = sluice(
        &broker,
        &["topic", "create", "both", "--cleanup", "compact,delete"],
        "",
    )
    .await;
    assert!(ok);
    assert!(out.contains("cleanup compact,delete"), "{out}");

    // Keyed records go in; a line without a key is refused, naming the record.
    let (ok, _, err) = sluice(
        &broker,
        &["produce", "state", "--key-sep", ":"],
        "a:1\na:2\n",
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = sluice(
        &broker,
        &["produce", "state", "--key-sep", ":"],
        "b:1\nno key\n",
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("record 1 has no key") && err.contains("\"state\""),
        "{err}"
    );

    let (ok, _, err) = sluice(&broker, &["topic", "create", "x", "--cleanup", "shred"], "").await;
    assert!(!ok);
    assert!(err.contains("\"shred\" is not a cleanup policy"), "{err}");
    broker.stop().await;
}
