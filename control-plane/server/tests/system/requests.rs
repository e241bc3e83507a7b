//! Long-running requests end to end: the real `dev` binary, real WebSocket
//! clients, and processors built with the SDK talking over real gRPC.

use std::sync::Arc;

use serde_json::{Value, json};
use streamer_client::processor::{ActionSpec, JobError, Processor};
use streamer_proto::{
    auth::BearerToken,
    v1::{self, request_service_client::RequestServiceClient},
};
use streamer_test_kit::prelude::*;
use tokio::sync::{Notify, mpsc, oneshot};

async fn request(ws: &mut Ws, frame: Value) -> Value {
    send_json(ws, &frame).await;
    recv(ws).await
}

/// Sends an async request once a processor serves its action, and returns
/// the acknowledgment.
async fn submit(dev: &Dev, ws: &mut Ws, frame: Value) -> Value {
    let action = frame["action"].as_str().expect("action");
    processor_serving(dev.grpc_channel(), ADMIN_TOKEN, action).await;
    let reply = request(ws, frame).await;
    assert_eq!(reply["type"], "acknowledgment", "{reply}");
    reply
}

/// Frames of one request until its final frame (complete or error).
async fn until_final(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = recv(ws).await;
        let done = frame["type"] == "complete" || frame["type"] == "error";
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn requests_client(dev: &Dev, token: &str) -> RequestServiceClient<Authed> {
    RequestServiceClient::with_interceptor(
        dev.grpc_channel(),
        BearerToken::new(token).expect("token"),
    )
}

/// Tests send many frames from one connection; keep them clear of the
/// message rate limit.
const GENEROUS_LIMITS: [(&str, &str); 2] = [
    ("STREAMER_MESSAGES_PER_MINUTE", "100000"),
    ("STREAMER_MESSAGE_BURST", "10000"),
];

async fn dev_without_demo() -> Dev {
    let mut env = vec![
        ("STREAMER_DEMO_PROCESSOR", "false"),
        ("STREAMER_RETRY_BASE_MS", "50"),
        ("STREAMER_RETRY_MAX_MS", "200"),
    ];
    env.extend(GENEROUS_LIMITS);
    Dev::start(&env).await
}

fn processor_for(dev: &Dev) -> Processor {
    Processor::new(&format!("http://{}", dev.grpc), ADMIN_TOKEN)
}

#[tokio::test]
async fn the_demo_report_flow_from_a_websocket_client() {
    let mut env = vec![("STREAMER_DEMO_DURATION_MS", "400")];
    env.extend(GENEROUS_LIMITS);
    let dev = Dev::start(&env).await;
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    let payload = json!({"start_date": "2024-01-01", "end_date": "2024-01-31", "format": "pdf", "report_type": "monthly"});
    let ack = submit(
        &dev,
        &mut ws,
        json!({"request_id": "rep-1", "action": "generate_report", "payload": payload}),
    )
    .await;
    assert_eq!(
        (ack["request_id"].clone(), ack["status"].clone()),
        (json!("rep-1"), json!("queued"))
    );
    let frames = until_final(&mut ws).await;
    let (last, progress) = frames.split_last().expect("frames");
    assert_eq!(last["type"], "complete", "{frames:?}");
    assert_eq!(last["request_id"], "rep-1");
    assert_eq!(last["result"]["report_type"], "monthly");
    assert_eq!(last["result"]["days"], 31);
    assert!(progress.len() >= 2, "several progress frames: {progress:?}");
    let percentages: Vec<u64> = progress
        .iter()
        .map(|f| f["percentage"].as_u64().expect("percentage"))
        .collect();
    assert!(
        percentages.windows(2).all(|w| w[0] <= w[1]),
        "in order: {percentages:?}"
    );
    assert_eq!(percentages.last(), Some(&100), "100% is always delivered");
    assert!(
        progress
            .iter()
            .all(|f| f["type"] == "progress" && f["request_id"] == "rep-1")
    );

    // A schema violation is refused before anything is queued.
    let bad = request(
        &mut ws,
        json!({"request_id": "rep-2", "action": "generate_report", "payload": {"format": "docx"}}),
    )
    .await;
    assert_eq!(
        (bad["error"]["code"].clone(), bad["request_id"].clone()),
        (json!("VALIDATION_ERROR"), json!("rep-2"))
    );
    let err = requests_client(&dev, ADMIN_TOKEN)
        .get_request(v1::GetRequestRequest {
            tenant_id: "acme".into(),
            request_id: "rep-2".into(),
        })
        .await
        .expect_err("never queued");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // An id is used once per tenant.
    let dup = request(
        &mut ws,
        json!({"request_id": "rep-1", "action": "echo_async", "payload": 1}),
    )
    .await;
    assert_eq!(dup["error"]["code"], "DUPLICATE_REQUEST");
    assert_eq!(dup["error"]["details"]["status"], "completed");

    // The processor's own validation fails the request once, for good.
    let reversed = json!({"start_date": "2024-02-01", "end_date": "2024-01-01", "format": "csv", "report_type": "monthly"});
    let ack = request(
        &mut ws,
        json!({"request_id": "rep-3", "action": "generate_report", "payload": reversed}),
    )
    .await;
    assert_eq!(ack["type"], "acknowledgment");
    let frames = until_final(&mut ws).await;
    let last = frames.last().expect("final");
    assert_eq!(
        (last["type"].clone(), last["error"]["code"].clone()),
        (json!("error"), json!("VALIDATION_ERROR"))
    );

    // echo_async answers with the payload.
    request(
        &mut ws,
        json!({"request_id": "e-1", "action": "echo_async", "payload": {"x": [1, 2]}}),
    )
    .await;
    let frames = until_final(&mut ws).await;
    assert_eq!(
        frames.last().expect("final")["result"],
        json!({"x": [1, 2]})
    );
}

#[tokio::test]
async fn a_killed_processor_hands_over_and_attempts_run_out_with_one_error() {
    let dev = dev_without_demo().await;
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;

    // Processor A starts the work and dies.
    let (started_tx, mut started) = mpsc::unbounded_channel::<u32>();
    let a =
        processor_for(&dev)
            .name("a")
            .handle(ActionSpec::new("slow_job"), move |job, progress| {
                let started_tx = started_tx.clone();
                async move {
                    progress.report(10, "started", None).await;
                    let _ = started_tx.send(job.attempt);
                    std::future::pending::<()>().await;
                    Ok(Value::Null)
                }
            });
    let a_task = tokio::spawn(a.run(std::future::pending()));
    submit(
        &dev,
        &mut ws,
        json!({"id": "s-1", "action": "slow_job", "payload": {}}),
    )
    .await;
    assert_eq!(
        tokio::time::timeout(DEADLINE, started.recv())
            .await
            .expect("started"),
        Some(1)
    );
    assert_eq!(recv(&mut ws).await["percentage"], 10);
    a_task.abort();

    // Processor B picks it up on the next attempt and finishes it.
    let b = processor_for(&dev).name("b").handle(
        ActionSpec::new("slow_job"),
        |job, progress| async move {
            progress.report(100, "done", None).await;
            Ok(json!({ "attempt": job.attempt }))
        },
    );
    let b_task = tokio::spawn(b.run(std::future::pending()));
    let frames = until_final(&mut ws).await;
    let last = frames.last().expect("final");
    assert_eq!(last["type"], "complete", "{frames:?}");
    assert_eq!(last["result"]["attempt"], 2);
    b_task.abort();

    // A request whose every attempt fails ends FAILED with one error frame.
    let c = processor_for(&dev).name("c").handle(
        ActionSpec::new("always_fails").max_attempts(3),
        |_job, _progress| async { Err(JobError::retryable("backend down")) },
    );
    let _c_task = tokio::spawn(c.run(std::future::pending()));
    submit(
        &dev,
        &mut ws,
        json!({"id": "f-1", "action": "always_fails", "payload": null}),
    )
    .await;
    let error = recv(&mut ws).await;
    assert_eq!(
        (error["type"].clone(), error["request_id"].clone()),
        (json!("error"), json!("f-1"))
    );
    assert_eq!(error["error"]["code"], "PROCESSING_FAILED");
    let echo = request(&mut ws, json!({"id": "probe", "action": "echo"})).await;
    assert_eq!(echo["request_id"], "probe", "exactly one error frame");
    let stored = requests_client(&dev, ADMIN_TOKEN)
        .get_request(v1::GetRequestRequest {
            tenant_id: "acme".into(),
            request_id: "f-1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(stored.status, v1::RequestStatus::Failed as i32);
    assert_eq!(stored.attempts, 3);
}

#[tokio::test]
async fn cancel_reaches_the_processor_and_subscribe_resumes_after_a_reconnect() {
    let dev = dev_without_demo().await;
    let (seen_tx, mut seen_cancel) = mpsc::unbounded_channel::<String>();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let processor = processor_for(&dev)
        .handle(ActionSpec::new("cancellable"), move |mut job, progress| {
            let seen_tx = seen_tx.clone();
            async move {
                progress.report(5, "waiting", None).await;
                job.cancelled().await;
                let _ = seen_tx.send(job.request_id.clone());
                Ok(Value::Null)
            }
        })
        .handle(ActionSpec::new("stepper"), move |_job, progress| {
            let gate = gate.clone();
            async move {
                progress.report(10, "first step", None).await;
                gate.notified().await;
                progress.report(60, "second step", None).await;
                Ok(json!("finished"))
            }
        });
    let _task = tokio::spawn(processor.run(std::future::pending()));
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    submit(
        &dev,
        &mut ws,
        json!({"id": "c-1", "action": "cancellable", "payload": {}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["percentage"], 5);
    let cancelled = request(
        &mut ws,
        json!({"id": "x", "action": "cancel", "payload": {"request_id": "c-1"}}),
    )
    .await;
    assert_eq!(
        (
            cancelled["request_id"].clone(),
            cancelled["data"]["status"].clone()
        ),
        (json!("x"), json!("cancelled"))
    );
    assert_eq!(
        tokio::time::timeout(DEADLINE, seen_cancel.recv())
            .await
            .expect("processor told"),
        Some("c-1".into())
    );
    let again = request(
        &mut ws,
        json!({"id": "y", "action": "cancel", "payload": {"request_id": "c-1"}}),
    )
    .await;
    assert_eq!(again["error"]["code"], "VALIDATION_ERROR");
    // Another user cannot touch it.
    let mut mallory = dev.connect(&token("mallory", "acme", &[])).await;
    let refused = request(
        &mut mallory,
        json!({"id": "m", "action": "subscribe", "payload": {"request_id": "c-1"}}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "NOT_FOUND");

    // Start a request, drop the connection, resume on a new one.
    let ack = request(
        &mut ws,
        json!({"id": "st-1", "action": "stepper", "payload": {}}),
    )
    .await;
    assert_eq!(ack["type"], "acknowledgment");
    assert_eq!(recv(&mut ws).await["percentage"], 10);
    drop(ws);
    let mut again = dev.connect(&token("alice", "acme", &[])).await;
    let state = request(
        &mut again,
        json!({"id": "sub", "action": "subscribe", "payload": {"request_id": "st-1"}}),
    )
    .await;
    assert_eq!(state["data"]["status"], "running");
    assert_eq!(state["data"]["progress"]["percentage"], 10);
    release.notify_one();
    let frames = until_final(&mut again).await;
    let last = frames.last().expect("final");
    assert_eq!(
        (last["type"].clone(), last["result"].clone()),
        (json!("complete"), json!("finished"))
    );
    assert!(frames.iter().any(|f| f["percentage"] == 60), "{frames:?}");

    // RequestService: list and get, tenant-bound.
    let mut admin = requests_client(&dev, ADMIN_TOKEN);
    let listed = admin
        .list_requests(v1::ListRequestsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .requests;
    let ids: Vec<_> = listed.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, vec!["c-1", "st-1"]);
    let cancelled_only = admin
        .list_requests(v1::ListRequestsRequest {
            tenant_id: "acme".into(),
            status: v1::RequestStatus::Cancelled as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .requests;
    assert_eq!(cancelled_only.len(), 1);
    let mut service = requests_client(&dev, SERVICE_A_TOKEN);
    assert!(
        service
            .get_request(v1::GetRequestRequest {
                tenant_id: "acme".into(),
                request_id: "st-1".into()
            })
            .await
            .is_ok()
    );
    let err = service
        .list_requests(v1::ListRequestsRequest {
            tenant_id: "globex".into(),
            ..Default::default()
        })
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_service_cancels_through_the_request_api() {
    let dev = dev_without_demo().await;
    let (seen_tx, seen) = oneshot::channel::<()>();
    let seen_tx = Arc::new(std::sync::Mutex::new(Some(seen_tx)));
    let processor =
        processor_for(&dev).handle(ActionSpec::new("long"), move |mut job, _progress| {
            let seen_tx = seen_tx.clone();
            async move {
                job.cancelled().await;
                if let Some(tx) = seen_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(());
                }
                Ok(Value::Null)
            }
        });
    let _task = tokio::spawn(processor.run(std::future::pending()));
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    submit(
        &dev,
        &mut ws,
        json!({"id": "l-1", "action": "long", "payload": {}}),
    )
    .await;
    let mut admin = requests_client(&dev, ADMIN_TOKEN);
    eventually("leased", || {
        let mut admin = admin.clone();
        async move {
            admin
                .get_request(v1::GetRequestRequest {
                    tenant_id: "acme".into(),
                    request_id: "l-1".into(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .request
                        .is_some_and(|r| r.status == v1::RequestStatus::Running as i32)
                })
        }
    })
    .await;
    let cancelled = admin
        .cancel_request(v1::CancelRequestRequest {
            tenant_id: "acme".into(),
            request_id: "l-1".into(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(cancelled.status, v1::RequestStatus::Cancelled as i32);
    tokio::time::timeout(DEADLINE, seen)
        .await
        .expect("processor told")
        .expect("sent");
    // The client hears the request ended.
    let frame = recv(&mut ws).await;
    assert_eq!(
        (
            frame["type"].clone(),
            frame["error"]["details"]["status"].clone()
        ),
        (json!("error"), json!("cancelled"))
    );
}
