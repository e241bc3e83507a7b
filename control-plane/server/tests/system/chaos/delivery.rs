//! Management API storms: throttling on half the calls, and a gateway that
//! answers nothing.

use std::time::{Duration, Instant};

use serde_json::json;
use streamer_proto::v1;
use streamer_test_kit::{
    faults::{HttpFaults, HttpMode, Injected},
    prelude::*,
    ws::{connect_many, count_messages},
};

fn to_tenant(tenant: &str, data: &serde_json::Value) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::TenantId(tenant.into())),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        ..Default::default()
    }
}

/// `dev` whose connections name `proxy` as their Management API.
async fn behind(proxy: &HttpFaults, extra: &[(&str, &str)]) -> Dev {
    let endpoint = format!("{}/local", proxy.url());
    let mut env = vec![
        ("STREAMER_STAGE", "local"),
        ("STREAMER_GATEWAY_MANAGEMENT_ENDPOINT", endpoint.as_str()),
    ];
    env.extend_from_slice(extra);
    let dev = Dev::start(&env).await;
    proxy.set_target(dev.gateway);
    dev
}

#[tokio::test]
async fn chaos_a_429_storm_on_half_the_calls_delivers_each_frame_once_and_reports_exactly() {
    let proxy = HttpFaults::start(None).await;
    let dev = behind(&proxy, &[]).await;
    let url = format!("{}?token={}", dev.ws_url(), token("u", "storm", &[]));
    let sockets = connect_many(&url, 1000, 64).await;
    let data = json!({"storm": true});
    let (received, _readers) = count_messages(sockets, data.clone());

    proxy.set(HttpMode::Fail {
        percent: 50,
        answer: Injected::limit_exceeded(),
    });
    let started = Instant::now();
    let report = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(to_tenant("storm", &data))
        .await
        .reported();
    let took = started.elapsed();
    println!(
        "injected: 429 LimitExceededException on 50% of Management API calls ({} injected, {} forwarded); broadcast to 1000 took {took:?}",
        proxy.injected(),
        proxy.forwarded()
    );
    assert!(proxy.injected() > 300, "the storm happened");
    assert_eq!(
        (
            report.targeted,
            report.delivered,
            report.throttled,
            report.failed,
            report.gone
        ),
        (1000, 1000, 0, 0, 0),
        "{report:?}"
    );
    eventually("every client holds the frame", || {
        let received = received.clone();
        async move { received.count() == 1000 }
    })
    .await;
    assert_eq!(received.duplicates(), 0);
    println!(
        "checked: report exact (1000 of 1000 delivered), every client got the frame exactly once"
    );
}

#[tokio::test]
async fn chaos_a_blackholed_gateway_ends_the_broadcast_within_its_deadline() {
    let proxy = HttpFaults::start(None).await;
    let dev = behind(
        &proxy,
        &[
            ("STREAMER_DELIVERY_DEADLINE_MS", "3000"),
            ("STREAMER_DELIVERY_CALL_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let url = format!("{}?token={}", dev.ws_url(), token("u", "hole", &[]));
    let sockets = connect_many(&url, 50, 16).await;
    let (received, _readers) = count_messages(sockets, json!("after"));

    proxy.set(HttpMode::Blackhole);
    let started = Instant::now();
    let report = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(to_tenant("hole", &json!("into the hole")))
        .await
        .reported();
    let took = started.elapsed();
    println!(
        "injected: Management API blackholed (requests held unanswered); broadcast to 50 took {took:?}: {report:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the broadcast ends near its 3 s deadline, not never: {took:?}"
    );
    assert_eq!(report.delivered, 0);
    assert_eq!(report.failed + report.throttled, 50, "{report:?}");

    // Once the gateway answers again, sends go through as soon as the
    // endpoint's circuit lets a call through (it stays open 5 s).
    proxy.set(HttpMode::Pass);
    let back = Instant::now();
    eventually("a send delivers to all 50 again", || async {
        broadcast(dev.grpc_channel(), ADMIN_TOKEN)
            .send(to_tenant("hole", &json!("after")))
            .await
            .ok()
            .and_then(|r| r.into_inner().report)
            .is_some_and(|r| r.delivered == 50)
    })
    .await;
    let recovered = back.elapsed();
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 50 }
    })
    .await;
    println!(
        "checked: the broadcast ended in {took:?} with all 50 counted failed; sends delivered to all 50 again {recovered:?} after the gateway came back"
    );
    assert!(recovered < Duration::from_secs(10), "{recovered:?}");
}
