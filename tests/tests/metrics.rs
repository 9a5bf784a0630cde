//! `/metrics` against a real broker on loopback: the text parses as OpenMetrics, and the
//! figures move with what a test does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_tests::{TestBroker, batch, create_topic, produce_request};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over HTTP/1.1: (status line, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

/// Parses the OpenMetrics text exposition strictly enough to catch a malformed answer: every
/// family has `# HELP` and `# TYPE` before its samples, every sample is `name{labels} value`
/// with a known family as its prefix and a numeric value, and the text ends with `# EOF`.
/// Answers sample name with labels → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut ended = false;
    for line in text.lines() {
        assert!(!ended, "text after # EOF: {line:?}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "unknown"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{name}"
        );
        let declared = types.iter().any(|(family, kind)| {
            let suffix = name.strip_prefix(family.as_str());
            match kind.as_str() {
                "counter" => suffix == Some("_total") || suffix == Some("_created"),
                "histogram" => {
                    matches!(suffix, Some("_bucket" | "_count" | "_sum" | "_created"))
                }
                _ => suffix == Some(""),
            }
        });
        assert!(declared, "sample {name} of no declared family");
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{series}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (key, quoted) = pair.split_once('=').expect("label=value");
                assert!(!key.is_empty() && quoted.starts_with('"') && quoted.ends_with('"'));
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    assert!(ended, "the text ends with # EOF");
    samples
}

#[tokio::test]
async fn metrics_parse_and_move_with_produce() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "orders", 2, pb::TopicConfig::default()).await;
    let (status, content_type, before) = get(broker.http_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let before = parse(&before);
    let records = r#"sluice_partition_produced_records_total{topic="orders",partition="1"}"#;
    assert_eq!(before[records], 0.0);

    let mut log = broker.log().await;
    for tag in ["a", "b"] {
        log.produce(produce_request("orders", 1, batch(tag, 5, 100, 1_000)))
            .await
            .unwrap();
    }
    let after = parse(&get(broker.http_addr, "/metrics").await.2);
    assert_eq!(after[records], 10.0);
    assert_eq!(
        after[r#"sluice_partition_produced_batches_total{topic="orders",partition="1"}"#],
        2.0
    );
    assert_eq!(
        after[r#"sluice_partition_log_end_offset{topic="orders",partition="1"}"#],
        10.0
    );
    assert_eq!(
        after[r#"sluice_partition_produced_records_total{topic="orders",partition="0"}"#],
        0.0
    );
    assert!(after[r#"sluice_partition_size_bytes{topic="orders",partition="1"}"#] > 1000.0);
    assert!(after["sluice_process_resident_memory_bytes"] > 1_000_000.0);
    assert!(after["sluice_topics"] >= 1.0);
    // Every request is timed, per method.
    let produce_count =
        r#"sluice_grpc_request_duration_seconds_count{method="/sluice.v1.Log/Produce"}"#;
    assert_eq!(after[produce_count], 2.0);
    assert_eq!(
        after[r#"sluice_grpc_request_duration_seconds_bucket{le="+Inf",method="/sluice.v1.Log/Produce"}"#],
        2.0
    );
    // A refused batch counts as rejected, and nothing else moves.
    let mut bad = batch("c", 1, 10, 1_000).to_vec();
    bad[30] ^= 0xff;
    log.produce(produce_request("orders", 1, bad))
        .await
        .unwrap_err();
    let refused = parse(&get(broker.http_addr, "/metrics").await.2);
    assert_eq!(
        refused[r#"sluice_partition_rejected_batches_total{topic="orders",partition="1"}"#],
        1.0
    );
    assert_eq!(refused[records], 10.0);
    assert_eq!(refused[produce_count], 3.0);

    // A method the broker does not serve is timed as `unknown`: clients cannot grow the labels.
    let mut grpc = tonic::client::Grpc::new(sluice_tests::connect(broker.addr).await);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<pb::ListTopicsRequest, pb::ListTopicsResponse> =
        tonic_prost::ProstCodec::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/sluice.v1.Nope/Invented");
    let status = grpc
        .unary(tonic::Request::new(pb::ListTopicsRequest {}), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let unknown = parse(&get(broker.http_addr, "/metrics").await.2);
    assert_eq!(
        unknown[r#"sluice_grpc_request_duration_seconds_count{method="unknown"}"#],
        1.0
    );
    assert!(!unknown.keys().any(|k| k.contains("Invented")));
    broker.stop().await;
}
