//! A retried Send is delivered once, tried as a payments service would:
//! a first try whose caller gives up, then retries under the same
//! idempotency key, on `dev`, on two replicas sharing moto, and with the
//! store down under the first try.

use serde_json::json;
use streamer_proto::v1;
use streamer_test_kit::{
    faults::{HttpFaults, HttpMode, Injected},
    fleet::Fleet,
    moto::{Tables, as_vars},
    prelude::*,
    ws::{connect_many, count_messages},
};

fn keyed(tenant: &str, data: &serde_json::Value, key: &str) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::TenantId(tenant.into())),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// Sends `request` until a try answers (each try waits up to 20 s).
async fn retried(
    client: &mut v1::broadcast_service_client::BroadcastServiceClient<Authed>,
    request: &v1::SendRequest,
) -> v1::SendResponse {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match client.send(request.clone()).await {
            Ok(response) => return response.into_inner(),
            Err(status) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no try answered: {status:?}"
                );
                assert_ne!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_short_then_retried_with_its_key_reaches_every_client_once() {
    let dev = Dev::start(&[
        ("STREAMER_HISTORY", "tenant"),
        // Paced, so the first try is still running when its caller gives up.
        ("STREAMER_DELIVERY_MAX_RPS", "2000"),
        ("STREAMER_DELIVERY_BURST", "1"),
    ])
    .await;
    let url = format!("{}?token={}", dev.ws_url(), token("crowd", "pay", &[]));
    let sockets = connect_many(&url, 2000, 64).await;
    let data = json!({"payment": "succeeded", "id": "pay_1"});
    let (received, _readers) = count_messages(sockets, data.clone());
    let mut client = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let first = keyed("pay", &data, "pay_1-succeeded");
    let mut cut = tonic::Request::new(first.clone());
    cut.set_timeout(std::time::Duration::from_millis(50));
    assert!(client.send(cut).await.is_err(), "the first try gives up");
    // The retry waits for the first's answer and delivers nothing again.
    let replay = retried(&mut client, &first).await;
    assert!(replay.replayed, "{replay:?}");
    let report = replay.report.expect("report");
    assert_eq!(
        (report.targeted, report.delivered),
        (2000, 2000),
        "{report:?}"
    );
    let position = replay.position.expect("position");
    let again = retried(&mut client, &first).await;
    assert!(again.replayed);
    assert_eq!(again.position.expect("position").offset, position.offset);
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 2000 }
    })
    .await;
    // The stream is one message longer, not two: the next send is next.
    let next = client
        .send(keyed("pay", &json!({"payment": "next"}), ""))
        .await
        .expect("next")
        .into_inner();
    assert_eq!(next.position.expect("position").offset, position.offset + 1);
    assert_eq!(received.duplicates(), 0, "nobody got the frame twice");
    assert_eq!(received.count(), 2000);

    // The same key with another body: refused, nothing delivered.
    let mut lone = dev.connect(&token("lone", "pay", &[])).await;
    let other = client
        .send(keyed(
            "pay",
            &json!({"payment": "refunded"}),
            "pay_1-succeeded",
        ))
        .await
        .expect_err("another request under the key");
    assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");
    assert!(other.message().contains("idempotency key"), "{other:?}");
    nothing_pending(&mut lone).await;
    // A bad key is refused before anything happens.
    let bad = client
        .send(keyed("pay", &json!(1), "has space"))
        .await
        .expect_err("bad key");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_replica_is_still_a_replay() {
    let fleet = Fleet::start(2, &[("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000")]).await;
    let url = fleet.url(&token("crowd", "pay2", &[]));
    let sockets = connect_many(&url, 50, 16).await;
    let data = json!({"payment": "captured"});
    let (received, _readers) = count_messages(sockets, data.clone());
    let request = keyed("pay2", &data, "capture-7");
    let first = broadcast(fleet.channel(0), ADMIN_TOKEN)
        .send(request.clone())
        .await
        .expect("first")
        .into_inner();
    assert!(!first.replayed);
    let retry = broadcast(fleet.channel(1), ADMIN_TOKEN)
        .send(request)
        .await
        .expect("retry")
        .into_inner();
    assert!(retry.replayed, "{retry:?}");
    assert_eq!(retry.report, first.report);
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 50 }
    })
    .await;
    assert_eq!(received.duplicates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_try_the_store_refused_is_usable_again() {
    let proxy = HttpFaults::before_moto().await;
    let tables = Tables::new("idem");
    tables.create().await;
    let mut env = tables.env_at(&proxy.url());
    env.push(("STREAMER_HISTORY", "tenant".into()));
    let dev = Dev::start(&as_vars(&env)).await;
    let mut ws = dev.connect(&token("payee", "pay3", &[])).await;
    let mut client = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let request = keyed("pay3", &json!({"payment": "settled"}), "settle-1");
    proxy.set(HttpMode::Fail {
        percent: 100,
        answer: Injected::internal_error(),
    });
    let refused = client
        .send(request.clone())
        .await
        .expect_err("the store is down");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    proxy.set(HttpMode::Pass);
    let sent = retried(&mut client, &request).await;
    assert!(!sent.replayed, "the key was given back: {sent:?}");
    assert_eq!(sent.report.expect("report").delivered, 1);
    let frame = recv_type(&mut ws, "message").await;
    assert_eq!(frame["data"], json!({"payment": "settled"}));
    nothing_pending(&mut ws).await;
}
