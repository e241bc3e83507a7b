//! The fan-out at the account's Management API quota, with the emulator
//! throttling as API Gateway does (429 LimitExceededException above its
//! rate): a broadcast paced by the request budget delivers everything and
//! leaves room for a small send, and without a budget the adaptive
//! concurrency backs off and retries until everyone has the frame.

use std::time::Instant;

use serde_json::json;
use streamer_proto::v1;
use streamer_test_kit::{
    prelude::*,
    ws::{connect_many, count_messages},
};

fn send_to(target: v1::send_request::Target, data: &serde_json::Value) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(target),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_budgeted_broadcast_under_the_gateways_throttle_delivers_all_and_lets_a_small_send_through()
 {
    let dev = Dev::start(&[
        ("STREAMER_GATEWAY_MANAGEMENT_RPS", "2000"),
        ("STREAMER_GATEWAY_MANAGEMENT_BURST", "2000"),
        ("STREAMER_DELIVERY_MAX_RPS", "2000"),
        ("STREAMER_DELIVERY_BURST", "1"),
    ])
    .await;
    let url = format!("{}?token={}", dev.ws_url(), token("crowd", "big", &[]));
    let sockets = connect_many(&url, 5000, 64).await;
    let data = json!({"big": true});
    let (received, _readers) = count_messages(sockets, data.clone());
    let mut lone = dev.connect(&token("lone", "small", &[])).await;
    let lone_id = whoami(&mut lone).await;

    let mut client = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let started = Instant::now();
    let big = tokio::spawn({
        let mut client = client.clone();
        let request = send_to(v1::send_request::Target::TenantId("big".into()), &data);
        async move {
            let report = client.send(request).await.expect("big send").into_inner();
            (report.report.expect("report"), started.elapsed())
        }
    });
    // Once the big broadcast is under way, a send to one connection.
    eventually("the big broadcast is under way", || {
        let received = received.clone();
        async move { received.count() > 500 }
    })
    .await;
    let small_started = Instant::now();
    let small = client
        .send(send_to(
            v1::send_request::Target::ConnectionId(lone_id),
            &json!("just you"),
        ))
        .await
        .reported();
    let small_took = small_started.elapsed();
    assert_eq!(small.delivered, 1);
    assert_eq!(recv_type(&mut lone, "message").await["data"], "just you");
    let (report, big_took) = big.await.expect("join");
    assert!(
        small_took < big_took / 2,
        "the small send ({small_took:?}) did not wait for the big one ({big_took:?})"
    );
    assert_eq!(
        (
            report.targeted,
            report.delivered,
            report.throttled,
            report.failed
        ),
        (5000, 5000, 0, 0),
        "{report:?}"
    );
    // Paced by the budget: 5,000 calls at 2,000/s take about 2.5 s.
    assert!(big_took.as_secs_f64() > 2.0, "{big_took:?}");
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 5000 }
    })
    .await;
    assert_eq!(received.duplicates(), 0);
}

#[tokio::test]
async fn without_a_budget_the_fanout_backs_off_on_429_and_still_delivers_all() {
    let dev = Dev::start(&[
        // Well below what this build delivers, so the gateway throttles.
        ("STREAMER_GATEWAY_MANAGEMENT_RPS", "400"),
        ("STREAMER_GATEWAY_MANAGEMENT_BURST", "20"),
    ])
    .await;
    let url = format!("{}?token={}", dev.ws_url(), token("crowd", "aimd", &[]));
    let sockets = connect_many(&url, 2000, 64).await;
    let data = json!({"aimd": true});
    let (received, _readers) = count_messages(sockets, data.clone());
    let report = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(send_to(
            v1::send_request::Target::TenantId("aimd".into()),
            &data,
        ))
        .await
        .reported();
    assert_eq!(
        (report.delivered, report.throttled, report.failed),
        (2000, 0, 0),
        "{report:?}"
    );
    eventually("every client has the frame exactly once", || {
        let received = received.clone();
        async move { received.count() == 2000 }
    })
    .await;
    assert_eq!(received.duplicates(), 0, "nothing delivered twice");
    let stats: serde_json::Value = serde_json::from_str(
        &reqwest_free_get(&format!("{}/@local/stats", dev.management_endpoint())).await,
    )
    .expect("stats");
    assert!(
        stats["throttled"].as_u64().is_some_and(|t| t > 0),
        "the gateway did throttle: {stats}"
    );
}

/// A GET without a client library: the stats endpoint is plain HTTP/1.1.
async fn reqwest_free_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    socket
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_send_whose_caller_gives_up_still_reaches_every_client_once() {
    let dev = Dev::start(&[
        // Paced, so the fan-out is still running when the caller gives up.
        ("STREAMER_DELIVERY_MAX_RPS", "1000"),
        ("STREAMER_DELIVERY_BURST", "1"),
    ])
    .await;
    let url = format!("{}?token={}", dev.ws_url(), token("crowd", "patient", &[]));
    let sockets = connect_many(&url, 1000, 64).await;
    let data = json!({"payment": "succeeded"});
    let (received, _readers) = count_messages(sockets, data.clone());
    let mut request = tonic::Request::new(send_to(
        v1::send_request::Target::TenantId("patient".into()),
        &data,
    ));
    request.set_timeout(std::time::Duration::from_millis(50));
    let gave_up = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(request)
        .await
        .expect_err("the caller's deadline passes first");
    assert!(
        matches!(
            gave_up.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{gave_up:?}"
    );
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 1000 }
    })
    .await;
    assert_eq!(received.duplicates(), 0, "nothing delivered twice");
}
