//! Server reflection from real clients: grpcio's reflection client in Python (the
//! `grpc.reflection.v1alpha` service that grpcurl 1.8 and many tools still use) and tonic's
//! own `grpc.reflection.v1` client.
//!
//! The Python half needs `grpcio` and `grpcio-reflection` (`.ci/run` installs them). Where
//! they are missing it is skipped with a note, unless `CI` is set: in CI it must run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_tests::{TestBroker, create_topic};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/reflection_check.py");

fn python_has_grpc() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[tokio::test]
async fn grpcio_reflection_v1alpha_lists_resolves_and_calls() {
    if !python_has_grpc() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install grpcio and grpcio-reflection (see .ci/run)"
        );
        eprintln!("skipped: python3 with grpcio and grpcio-reflection is not installed");
        return;
    }
    let broker = TestBroker::start().await;
    create_topic(&broker, "reflected", 1, pb::TopicConfig::default()).await;
    let output = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .arg(broker.addr.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the reflection client finishes within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("topics: reflected"), "{stdout}");
    broker.stop().await;
}

#[tokio::test]
async fn tonic_reflection_v1_lists_the_services() {
    let broker = TestBroker::start().await;
    let mut client = ServerReflectionClient::new(broker.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["sluice.v1.Log", "sluice.v1.Admin", "sluice.v1.Groups"] {
        assert!(names.iter().any(|n| n == wanted), "{names:?}");
    }
    broker.stop().await;
}
