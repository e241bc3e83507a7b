//! The gateway's batch call (`POST /{stage}/@batch`), Streamer's own
//! addition beside the Management API: one frame to many connections,
//! signed as every Management API call; and what it refuses whole.

use std::{sync::Arc, time::SystemTime};

use aws_credential_types::{Credentials, provider::SharedCredentialsProvider};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use streamer_control_plane::{
    config::DeliveryConfig,
    delivery::{
        Attempt, BatchAttempt, Delivery, Endpoint, Outcome, PreparedFrame,
        management_api::ManagementApi, signer::payload_hash,
    },
};
use streamer_test_kit::prelude::*;

fn api(secret: &str) -> ManagementApi {
    let sdk = aws_config::SdkConfig::builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "streamer-local",
            secret,
            None,
            None,
            "test",
        )))
        .region(aws_config::Region::new("us-east-1"))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    ManagementApi::new(sdk, DeliveryConfig::default())
}

/// A signed batch call carrying `body` as it is: the status and error type.
async fn raw(api: &ManagementApi, endpoint: &Endpoint, body: Vec<u8>) -> (u16, String) {
    let body = Bytes::from(body);
    let request = api
        .signed(
            endpoint,
            "POST",
            &format!("{}/@batch", endpoint.base_path),
            "application/x-streamer-batch",
            body.clone(),
            &payload_hash(&body),
            SystemTime::now(),
        )
        .await
        .expect("sign");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.expect("call");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let _ = response.into_body().collect().await;
    (status, kind)
}

#[tokio::test]
async fn one_batch_call_reaches_every_named_connection_and_names_the_gone() {
    let dev = Dev::start(&[("STREAMER_GATEWAY_BATCH", "true")]).await;
    let endpoint = Endpoint::parse(&dev.management_endpoint()).expect("endpoint");
    let (mut a, mut b, mut c) = (
        dev.connect(&token("ann", "acme", &[])).await,
        dev.connect(&token("ben", "acme", &[])).await,
        dev.connect(&token("cat", "acme", &[])).await,
    );
    let (ida, idb) = (whoami(&mut a).await, whoami(&mut b).await);
    let api = api("streamer-local-secret");
    assert_eq!(
        api.batch_limit(&endpoint).await,
        1000,
        "the gateway announces its batch call"
    );

    let ids: Vec<Arc<str>> = vec![
        Arc::from(ida.as_str()),
        Arc::from("not-a-connection"),
        Arc::from(idb.as_str()),
        Arc::from(ida.as_str()),
    ];
    let answer = api
        .post_batch(&endpoint, &ids, &PreparedFrame::new(r#"{"hello":"batch"}"#))
        .await;
    assert_eq!(
        answer,
        BatchAttempt::Answered {
            gone: vec!["not-a-connection".to_owned()]
        }
    );
    for ws in [&mut a, &mut b] {
        let frame: Value = recv(ws).await;
        assert_eq!(frame["hello"], "batch");
        // Named twice, written once.
        nothing_pending(ws).await;
    }
    nothing_pending(&mut c).await;

    // Signed with the wrong secret: refused whole, nothing delivered.
    let forged = api_forged(&endpoint, &ids).await;
    assert_eq!(forged, BatchAttempt::Whole(Attempt::Done(Outcome::Failed)));
    nothing_pending(&mut a).await;

    // Bad input, each refused whole with AWS's shape of answer.
    let id_lines = |n: usize| {
        let mut body = String::new();
        for i in 0..n {
            body.push_str(&format!("id{i}\n"));
        }
        body
    };
    for (what, body, expected) in [
        (
            "no empty line between the ids and the frame",
            format!("{ida}\n{{}}").into_bytes(),
            (400, "BadRequestException"),
        ),
        ("no ids", b"\n\n{}".to_vec(), (400, "BadRequestException")),
        (
            "no frame",
            format!("{ida}\n\n").into_bytes(),
            (400, "BadRequestException"),
        ),
        (
            "1,001 ids",
            format!("{}\n{{}}", id_lines(1001)).into_bytes(),
            (413, "BatchTooLargeException"),
        ),
        (
            "a frame over the 128 KB message limit",
            format!("{ida}\n\n\"{}\"", "x".repeat(128 * 1024)).into_bytes(),
            (413, "PayloadTooLargeException"),
        ),
    ] {
        let (status, kind) = raw(&api, &endpoint, body).await;
        assert_eq!((status, kind.as_str()), expected, "{what}");
    }
    nothing_pending(&mut a).await;
}

async fn api_forged(endpoint: &Endpoint, ids: &[Arc<str>]) -> BatchAttempt {
    api("not-the-secret")
        .post_batch(endpoint, ids, &PreparedFrame::new(r#"{"forged":true}"#))
        .await
}

pub(crate) const PAIR_SECRET: &str = "gateway-secret-0123456789abcdef-0123";

pub(crate) async fn tenant_send(serve: &Serve, tenant: &str) -> streamer_proto::v1::DeliveryReport {
    broadcast(channel(serve.grpc), ADMIN_TOKEN)
        .send(streamer_proto::v1::SendRequest {
            target: Some(streamer_proto::v1::send_request::Target::TenantId(
                tenant.into(),
            )),
            payload: Some(streamer_proto::v1::send_request::Payload::DataJson(
                r#"{"to":"all"}"#.into(),
            )),
            ..Default::default()
        })
        .await
        .reported()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_gateways_take_only_calls_signed_with_their_pair_and_batch_them() {
    let gateway_pair = [
        ("STREAMER_GATEWAY_ACCESS_KEY_ID", "streamer-gateways"),
        ("STREAMER_GATEWAY_SECRET_ACCESS_KEY", PAIR_SECRET),
    ];
    // The control plane holds the pair: its broadcasts reach every client,
    // through the batch call (the gateway binary serves it by default).
    let serve = Serve::start(&[
        (
            "STREAMER_GATEWAY_SIGNING_ACCESS_KEY_ID",
            "streamer-gateways",
        ),
        ("STREAMER_GATEWAY_SIGNING_SECRET_ACCESS_KEY", PAIR_SECRET),
    ])
    .await;
    let (_gateway, ws) = streamer_test_kit::fleet::gateway_with(
        &format!("http://{}", serve.grpc),
        "127.0.0.1:0".parse().expect("addr"),
        &gateway_pair,
    )
    .await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let (mut client, _) =
            tokio_tungstenite::connect_async(format!("{ws}?token={}", token(user, "own", &[])))
                .await
                .expect("connect");
        whoami(&mut client).await;
        clients.push(client);
    }
    let report = tenant_send(&serve, "own").await;
    assert_eq!((report.delivered, report.failed), (3, 0), "{report:?}");
    for client in &mut clients {
        let frame: Value = recv(client).await;
        assert_eq!(frame["data"]["to"], "all");
    }

    // A control plane signing with anything else (here the AWS chain's
    // keys) is refused by the gateway: nothing reaches its clients.
    let stranger = Serve::start(&[]).await;
    let (_other, ws) = streamer_test_kit::fleet::gateway_with(
        &format!("http://{}", stranger.grpc),
        "127.0.0.1:0".parse().expect("addr"),
        &gateway_pair,
    )
    .await;
    let (mut client, _) =
        tokio_tungstenite::connect_async(format!("{ws}?token={}", token("u4", "own", &[])))
            .await
            .expect("connect");
    whoami(&mut client).await;
    let report = tenant_send(&stranger, "own").await;
    assert_eq!((report.delivered, report.failed), (0, 1), "{report:?}");
    nothing_pending(&mut client).await;
}

#[tokio::test]
async fn a_gateway_off_loopback_without_a_pair_refuses_to_start() {
    let output = tokio::process::Command::new(streamer_test_kit::dev::binary("streamer-gateway"))
        .env_clear()
        .env("STREAMER_CONTROL_PLANE_URL", "http://127.0.0.1:9")
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_GATEWAY_ADDR", "0.0.0.0:0")
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("STREAMER_GATEWAY_ACCESS_KEY_ID"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_by_sigterm_sends_its_clients_elsewhere_and_disconnects_each() {
    let serve = Serve::start(&[]).await;
    let (gateway, ws) = streamer_test_kit::fleet::gateway(&format!("http://{}", serve.grpc)).await;
    let mut clients = Vec::new();
    for user in ["d1", "d2", "d3"] {
        let (mut client, _) =
            tokio_tungstenite::connect_async(format!("{ws}?token={}", token(user, "drain", &[])))
                .await
                .expect("connect");
        whoami(&mut client).await;
        clients.push(client);
    }
    streamer_test_kit::dev::sigterm(&gateway);
    for client in &mut clients {
        let frame = closed(client).await.expect("a close frame");
        assert_eq!(
            u16::from(frame.code),
            1001,
            "Going away: reconnect elsewhere"
        );
    }
    let admin = connections(channel(serve.grpc), ADMIN_TOKEN);
    eventually("every $disconnect reached the control plane", || {
        let mut admin = admin.clone();
        async move {
            admin
                .count_connections(streamer_proto::v1::CountConnectionsRequest {
                    tenant_id: "drain".into(),
                    user_id: String::new(),
                })
                .await
                .expect("count")
                .into_inner()
                .count
                == 0
        }
    })
    .await;
}

/// One series' value in a Prometheus text exposition.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_own_metrics_count_connects_calls_and_frames_on_their_own_port() {
    let serve = Serve::start(&[]).await;
    let (_gateway, ready) = streamer_test_kit::fleet::gateway_ready(
        &format!("http://{}", serve.grpc),
        "127.0.0.1:0".parse().expect("addr"),
        &[("STREAMER_GATEWAY_METRICS_ADDR", "127.0.0.1:0")],
    )
    .await;
    let ws = format!(
        "ws://{}/{}",
        ready["gateway"].as_str().expect("gateway"),
        ready["stage"].as_str().expect("stage")
    );
    let metrics = format!(
        "http://{}/metrics",
        ready["metrics"].as_str().expect("metrics")
    );
    let mut clients = Vec::new();
    for user in ["m1", "m2"] {
        let (mut client, _) =
            tokio_tungstenite::connect_async(format!("{ws}?token={}", token(user, "watched", &[])))
                .await
                .expect("connect");
        whoami(&mut client).await;
        clients.push(client);
    }
    assert!(
        tokio_tungstenite::connect_async(format!("{ws}?token=not-a-token"))
            .await
            .is_err(),
        "a bad token is refused"
    );
    let report = tenant_send(&serve, "watched").await;
    assert_eq!(report.delivered, 2);
    for client in &mut clients {
        let _: Value = recv(client).await;
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let response = client
        .get(metrics.parse().expect("uri"))
        .await
        .expect("scrape");
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf-8");
    assert_eq!(series(&text, "streamer_gateway_connections"), 2.0);
    assert_eq!(
        series(
            &text,
            r#"streamer_gateway_connects_total{outcome="accepted"}"#
        ),
        2.0
    );
    assert_eq!(
        series(
            &text,
            r#"streamer_gateway_connects_total{outcome="refused"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            r#"streamer_gateway_management_calls_total{call="batch"}"#
        ),
        1.0
    );
    // Two broadcast frames plus the whoami replies, which are the
    // `$default` route's own answers, not Management API calls.
    assert_eq!(series(&text, "streamer_gateway_frames_total"), 2.0);
    assert!(series(&text, "streamer_gateway_heap_bytes") > 0.0);
    // The public listener does not serve them.
    let public = client
        .get(
            format!(
                "http://{}/metrics",
                ready["gateway"].as_str().expect("gateway")
            )
            .parse()
            .expect("uri"),
        )
        .await
        .expect("public");
    assert_ne!(public.status().as_u16(), 200);
}
