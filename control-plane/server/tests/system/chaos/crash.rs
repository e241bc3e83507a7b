//! Crashes and stops: the control plane killed with SIGKILL in the middle
//! of 100 long-running requests and a broadcast (DynamoDB backend), and
//! SIGTERM while a broadcast is in flight. (A processor killed mid-request
//! hands its work over: `requests.rs`,
//! `a_killed_processor_hands_over_and_attempts_run_out_with_one_error`.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use streamer_client::processor::{ActionSpec, Processor};
use streamer_proto::v1;
use streamer_test_kit::{
    moto::{Tables, as_vars},
    prelude::*,
    ws::{connect_many, count_messages},
};

/// A processor for `chaos_job` against `dev`, counting how often each
/// request ran.
fn worker(dev: &Dev, runs: Arc<Mutex<HashMap<String, u32>>>) -> Processor {
    Processor::new(&format!("http://{}", dev.grpc), ADMIN_TOKEN)
        .concurrency(8)
        .handle(
            ActionSpec::new("chaos_job").lease_timeout(Duration::from_secs(2)),
            move |job, _progress| {
                let runs = runs.clone();
                async move {
                    *runs
                        .lock()
                        .expect("lock")
                        .entry(job.request_id.clone())
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(json!({ "doubled": job.payload["n"].as_i64().unwrap_or(0) * 2 }))
                }
            },
        )
}

#[tokio::test]
async fn chaos_sigkill_mid_work_on_dynamodb_loses_no_accepted_request_and_completes_none_twice() {
    let tables = Tables::new("chaos-kill");
    tables.create().await;
    let mut env = tables.env();
    env.push(("STREAMER_DEMO_PROCESSOR", "false".into()));
    env.push(("STREAMER_MESSAGES_PER_MINUTE", "100000".into()));
    env.push(("STREAMER_MESSAGE_BURST", "10000".into()));
    env.push(("STREAMER_RETRY_BASE_MS", "50".into()));
    let vars = as_vars(&env);

    let first = Dev::start(&vars).await;
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let processor = tokio::spawn(worker(&first, runs.clone()).run(std::future::pending()));
    let mut ws = first.connect(&token("alice", "acme", &[])).await;
    let audience = connect_many(
        &format!("{}?token={}", first.ws_url(), token("crowd", "acme", &[])),
        50,
        16,
    )
    .await;
    let (_received, _readers) = count_messages(audience, json!("mid-crash"));

    // 100 requests; the control plane dies once about half are accepted,
    // with a broadcast in flight.
    let mut accepted = Vec::new();
    for n in 0..=50 {
        let id = format!("job-{n:03}");
        if submit(&mut ws, &id, "chaos_job", json!({"n": n})).await {
            accepted.push((id, n));
        }
    }
    let sending = tokio::spawn({
        let channel = first.grpc_channel();
        async move {
            broadcast(channel, ADMIN_TOKEN)
                .send(tenant_target("acme", json!("mid-crash")))
                .await
        }
    });
    streamer_test_kit::dev::signal(&first.child, "-KILL");
    let killed_at = Instant::now();
    let _ = sending.await;
    processor.abort();
    drop(ws);
    drop(first);
    let started_before = runs.lock().expect("lock").len();
    println!(
        "injected: SIGKILL with {} requests accepted ({started_before} had started) and a broadcast in flight",
        accepted.len(),
    );

    // A new instance on the same tables, and the rest of the requests.
    let second = Dev::start(&vars).await;
    let processor = tokio::spawn(worker(&second, runs.clone()).run(std::future::pending()));
    let mut ws = second.connect(&token("alice", "acme", &[])).await;
    for n in 51..100 {
        let id = format!("job-{n:03}");
        assert!(
            submit(&mut ws, &id, "chaos_job", json!({"n": n})).await,
            "{id} accepted"
        );
        accepted.push((id, n));
    }
    let requests_api = requests(second.grpc_channel(), ADMIN_TOKEN);
    let status_of = |id: String| {
        let mut api = requests_api.clone();
        async move {
            api.get_request(v1::GetRequestRequest {
                tenant_id: "acme".into(),
                request_id: id,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().request)
        }
    };
    for (id, _) in &accepted {
        eventually(&format!("{id} completes"), || {
            let id = id.clone();
            let status_of = &status_of;
            async move {
                status_of(id)
                    .await
                    .is_some_and(|r| r.status == v1::RequestStatus::Completed as i32)
            }
        })
        .await;
    }
    processor.abort();
    let runs = runs.lock().expect("lock").clone();
    let mut twice = 0;
    for (id, n) in &accepted {
        let stored = status_of(id.clone()).await.expect("stored");
        let result: Value = serde_json::from_str(&stored.result_json).expect("result");
        assert_eq!(result["doubled"], n * 2, "{id}");
        let ran = runs.get(id).copied().unwrap_or(0);
        assert!(ran >= 1, "{id} ran");
        twice += u32::from(ran > 1);
    }
    println!(
        "checked: all {} accepted requests Completed once, with their own result, {:?} after the kill; {twice} of them ran a second time (leased again after the crash: at-least-once work, exactly-once completion)",
        accepted.len(),
        killed_at.elapsed()
    );
}

/// Starts `streamer-control-plane serve` (embedded store) on a free port.
async fn serve(extra: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamer-control-plane"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STREAMER_GRPC_ADDR", &addr)
        .env("STREAMER_JWT_PUBLIC_KEY", &keys().public_pem)
        .env("STREAMER_JWT_ISSUER", streamer_test_kit::token::ISSUER)
        .env("STREAMER_JWT_AUDIENCE", streamer_test_kit::token::AUDIENCE)
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STREAMER_LOOPBACK_CONNECTS_UNLIMITED", "true")
        .env("AWS_ACCESS_KEY_ID", "streamer-local")
        .env("AWS_SECRET_ACCESS_KEY", "streamer-local-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(extra.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .expect("serve");
    let url = format!("http://{addr}");
    eventually("the control plane serves", || async {
        tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .is_ok()
    })
    .await;
    (child, url)
}

#[tokio::test]
async fn chaos_sigterm_lets_a_broadcast_in_flight_finish_then_exits_within_the_drain_timeout() {
    // 1,500 recipients at 500 calls/s: the broadcast takes about 3 s.
    let (mut control_plane, url) = serve(&[
        ("STREAMER_DELIVERY_MAX_RPS", "500"),
        ("STREAMER_DRAIN_TIMEOUT_SECS", "8"),
    ])
    .await;
    let (_gateway, ws_url) = streamer_test_kit::fleet::gateway(&url).await;
    let sockets = connect_many(
        &format!("{ws_url}?token={}", token("u", "drain", &[])),
        1500,
        64,
    )
    .await;
    let data = json!({"drain": true});
    let (received, _readers) = count_messages(sockets, data.clone());
    let channel = channel(url.trim_start_matches("http://").parse().expect("addr"));
    let started = Instant::now();
    let sending = tokio::spawn({
        let data = data.clone();
        async move {
            broadcast(channel, ADMIN_TOKEN)
                .send(tenant_target("drain", data))
                .await
        }
    });
    eventually("the broadcast is under way", || {
        let received = received.clone();
        async move { received.count() > 100 }
    })
    .await;
    streamer_test_kit::dev::sigterm(&control_plane);
    let signalled = started.elapsed();
    let report = sending.await.expect("join").reported();
    let exit = tokio::time::timeout(Duration::from_secs(15), control_plane.wait())
        .await
        .expect("exits within the drain timeout")
        .expect("wait");
    let exited = started.elapsed();
    println!(
        "injected: SIGTERM {signalled:?} into a 1,500-recipient broadcast; the send finished ({} delivered) and the process exited ({exit}) at {exited:?}",
        report.delivered
    );
    assert!(exit.success(), "{exit}");
    assert_eq!(report.delivered, 1500, "{report:?}");
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 1500 }
    })
    .await;
    assert!(exited < signalled + Duration::from_secs(10));
    println!(
        "checked: the broadcast in flight delivered all 1,500 after SIGTERM; exit 0 within the 8 s drain timeout"
    );
}

/// The same under `dev`, whose own gateway holds the clients' sockets: on
/// SIGTERM the broadcast in flight finishes before the gateway closes
/// them, so every client holds the frame and the report says so (once,
/// the sockets closed first: 29 delivered, 786 failed).
#[tokio::test]
async fn chaos_sigterm_under_dev_lets_a_broadcast_in_flight_reach_every_client_before_the_sockets_close()
 {
    // 1,000 recipients at 500 calls/s: the broadcast takes about 2 s.
    let mut dev = Dev::start(&[
        ("STREAMER_DELIVERY_MAX_RPS", "500"),
        ("STREAMER_DRAIN_TIMEOUT_SECS", "8"),
    ])
    .await;
    let sockets = connect_many(
        &format!("{}?token={}", dev.ws_url(), token("u", "drain", &[])),
        1000,
        64,
    )
    .await;
    let data = json!({"drain": "dev"});
    let (received, _readers) = count_messages(sockets, data.clone());
    let channel = dev.grpc_channel();
    let started = Instant::now();
    let sending = tokio::spawn({
        let data = data.clone();
        async move {
            broadcast(channel, ADMIN_TOKEN)
                .send(tenant_target("drain", data))
                .await
        }
    });
    eventually("the broadcast is under way", || {
        let received = received.clone();
        async move { received.count() > 100 }
    })
    .await;
    let under_way = received.count();
    streamer_test_kit::dev::sigterm(&dev.child);
    let report = sending.await.expect("join").reported();
    let exit = tokio::time::timeout(Duration::from_secs(15), dev.child.wait())
        .await
        .expect("dev exits within the drain timeout")
        .expect("wait");
    let exited = started.elapsed();
    println!(
        "injected: SIGTERM into dev {under_way} frames into a 1,000-recipient broadcast; the report: {} delivered, {} failed; dev exited ({exit}) at {exited:?}",
        report.delivered, report.failed
    );
    assert!(exit.success(), "{exit}");
    assert_eq!((report.delivered, report.failed), (1000, 0), "{report:?}");
    eventually("every client has the frame", || {
        let received = received.clone();
        async move { received.count() == 1000 }
    })
    .await;
    println!("checked: every client holds the frame, as the report says");
}
