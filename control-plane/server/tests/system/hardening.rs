//! The holes an attacker found, each closed and kept closed: ids that widen
//! an audience, sockets held open forever, tonic's refusals with the wrong
//! codes, processors' bad reports dropped silently, and a duplicate request
//! id that told another user about someone else's request.

use std::time::Duration;

use serde_json::json;
use streamer_proto::v1::{self, processor_service_client::ProcessorServiceClient};
use streamer_test_kit::{grpc::raw_unary, prelude::*};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_stream::wrappers::ReceiverStream;

fn user_target(tenant: &str, user: &str) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::User(v1::UserTarget {
            tenant_id: tenant.into(),
            user_id: user.into(),
        })),
        payload: Some(v1::send_request::Payload::DataJson("1".into())),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_empty_or_blank_id_is_refused_never_widened() {
    let dev = Dev::start(&[]).await;
    let mut alice = dev.connect(&token("alice", "acme", &[])).await;
    let mut bob = dev.connect(&token("bob", "acme", &[])).await;
    for caller in [ADMIN_TOKEN, SERVICE_A_TOKEN] {
        let mut client = broadcast(dev.grpc_channel(), caller);
        for user in ["", " ", "\t", " alice", &"u".repeat(129)] {
            let status = client
                .send(user_target("acme", user))
                .await
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{user:?}");
            assert!(status.message().contains("user_id"), "{}", status.message());
        }
        let mut bad = user_target("acme", "alice");
        bad.exclude_connection_ids = vec!["../x".into()];
        assert_eq!(
            client.send(bad).await.expect_err("bad exclude").code(),
            tonic::Code::InvalidArgument
        );
        let mut bad = user_target("acme", "alice");
        bad.topic = "a\nb".into();
        assert_eq!(
            client.send(bad).await.expect_err("bad topic").code(),
            tonic::Code::InvalidArgument
        );
        for target in [
            v1::send_request::Target::ConnectionId(String::new()),
            v1::send_request::Target::TenantId(" ".into()),
            v1::send_request::Target::Group(v1::GroupTarget {
                tenant_id: "acme".into(),
                group: String::new(),
            }),
        ] {
            let request = v1::SendRequest {
                target: Some(target.clone()),
                payload: Some(v1::send_request::Payload::DataJson("1".into())),
                ..Default::default()
            };
            assert_eq!(
                client.send(request).await.expect_err("refused").code(),
                tonic::Code::InvalidArgument,
                "{target:?}"
            );
        }
    }
    // Nobody received anything.
    nothing_pending(&mut alice).await;
    nothing_pending(&mut bob).await;

    let mut queries = connections(dev.grpc_channel(), ADMIN_TOKEN);
    let status = queries
        .list_connections(v1::ListConnectionsRequest {
            tenant_id: "acme".into(),
            user_id: " ".into(),
            ..Default::default()
        })
        .await
        .expect_err("blank user");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = groups(dev.grpc_channel(), ADMIN_TOKEN)
        .add_to_group(v1::AddToGroupRequest {
            tenant_id: "acme".into(),
            group: "room".into(),
            member: Some(v1::add_to_group_request::Member::UserId(String::new())),
        })
        .await
        .expect_err("empty member");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// Reads until the server closes the connection; true when it did.
async fn closed_by_server(mut socket: TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    read.is_ok()
}

#[tokio::test]
async fn half_handshakes_and_idle_connections_are_closed() {
    let dev = Dev::start(&[
        ("STREAMER_GRPC_HANDSHAKE_TIMEOUT_MS", "300"),
        ("STREAMER_GRPC_IDLE_TIMEOUT_SECS", "1"),
    ])
    .await;
    let silent = TcpStream::connect(dev.grpc).await.expect("connect");
    let mut partial = TcpStream::connect(dev.grpc).await.expect("connect");
    partial
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("half a preface");
    let mut idle = TcpStream::connect(dev.grpc).await.expect("connect");
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    idle.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("empty SETTINGS");
    let started = std::time::Instant::now();
    let (silent, partial, idle) = tokio::join!(
        closed_by_server(silent),
        closed_by_server(partial),
        closed_by_server(idle)
    );
    assert!(silent, "a silent socket is closed");
    assert!(partial, "half a preface is closed");
    assert!(idle, "an idle HTTP/2 connection is closed");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A connection that keeps calling is not idle.
    let mut client = connections(dev.grpc_channel(), ADMIN_TOKEN);
    for _ in 0..3 {
        client
            .count_connections(v1::CountConnectionsRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            })
            .await
            .expect("served");
    }
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_the_conventional_codes() {
    let dev = Dev::start(&[]).await;
    let garbage = raw_unary(
        dev.grpc_channel(),
        ADMIN_TOKEN,
        "/streamer.v1.BroadcastService/Send",
        bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]),
    )
    .await
    .expect_err("not protobuf");
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    let huge = raw_unary(
        dev.grpc_channel(),
        ADMIN_TOKEN,
        "/streamer.v1.BroadcastService/Send",
        bytes::Bytes::from(vec![0u8; 5 * 1024 * 1024]),
    )
    .await
    .expect_err("too large");
    assert_eq!(huge.code(), tonic::Code::ResourceExhausted, "{huge:?}");
}

async fn next_work(stream: &mut tonic::Streaming<v1::WorkResponse>) -> v1::work_response::Message {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("message")
        .message
        .expect("set")
}

fn work(message: v1::work_request::Message) -> v1::WorkRequest {
    v1::WorkRequest {
        message: Some(message),
    }
}

#[tokio::test]
async fn bad_processor_reports_are_refused_on_the_stream() {
    let dev = Dev::start(&[]).await;
    let mut processor = ProcessorServiceClient::with_interceptor(
        dev.grpc_channel(),
        streamer_proto::auth::BearerToken::new(ADMIN_TOKEN).expect("token"),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(work(v1::work_request::Message::Register(v1::Register {
        actions: vec![v1::ActionSpec {
            name: "hard_job".into(),
            max_attempts: 1,
            lease_timeout_ms: 30_000,
            ..Default::default()
        }],
        concurrency: 1,
        name: "hostile".into(),
    })))
    .await
    .expect("register");
    let mut stream = processor
        .work(ReceiverStream::new(rx))
        .await
        .expect("work")
        .into_inner();

    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    send(
        &mut ws,
        r#"{"request_id":"h1","action":"hard_job","payload":{}}"#,
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "acknowledgment");
    let v1::work_response::Message::Lease(lease) = next_work(&mut stream).await else {
        panic!("expected a lease");
    };

    let progress = |percentage: u32, details_json: &str| {
        work(v1::work_request::Message::Progress(v1::ReportProgress {
            tenant_id: lease.tenant_id.clone(),
            request_id: lease.request_id.clone(),
            progress: Some(v1::Progress {
                percentage,
                message: "step".into(),
                details_json: details_json.into(),
            }),
        }))
    };
    let complete = |result_json: &str| {
        work(v1::work_request::Message::Complete(v1::ReportComplete {
            tenant_id: lease.tenant_id.clone(),
            request_id: lease.request_id.clone(),
            result_json: result_json.into(),
        }))
    };
    for (report, why) in [
        (progress(150, ""), "percentage"),
        (progress(10, "{not json"), "details_json"),
        (complete("nope"), "result_json"),
    ] {
        tx.send(report).await.expect("report");
        match next_work(&mut stream).await {
            v1::work_response::Message::Refused(refused) => {
                assert_eq!(refused.request_id, "h1");
                assert!(refused.reason.contains(why), "{}", refused.reason);
            }
            other => panic!("expected a refusal about {why}, got {other:?}"),
        }
    }
    // Nothing of the refused reports reached the client; a good report does.
    tx.send(progress(50, r#"{"ok":true}"#))
        .await
        .expect("report");
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["type"].clone(), frame["percentage"].clone()),
        (json!("progress"), json!(50))
    );
    tx.send(complete(r#"{"done":1}"#)).await.expect("complete");
    let frame = recv_type(&mut ws, "complete").await;
    assert_eq!(frame["result"], json!({"done": 1}));
}

#[tokio::test]
async fn another_users_duplicate_request_reveals_nothing() {
    let dev = Dev::start(&[]).await;
    let mut alice = dev.connect(&token("alice", "acme", &[])).await;
    let mut mallory = dev.connect(&token("mallory", "acme", &[])).await;
    let job = json!({"request_id":"mine","action":"durable_job","payload":{"n":1}});
    send_json(&mut alice, &job).await;
    assert_eq!(recv(&mut alice).await["type"], "acknowledgment");

    send_json(&mut mallory, &job).await;
    let reply = recv(&mut mallory).await;
    assert_eq!(reply["error"]["code"], "DUPLICATE_REQUEST", "{reply}");
    assert!(
        reply["error"].get("details").is_none(),
        "no status of someone else's request: {reply}"
    );
    send_json(&mut alice, &job).await;
    let reply = recv(&mut alice).await;
    assert_eq!(reply["error"]["code"], "DUPLICATE_REQUEST");
    assert_eq!(reply["error"]["details"]["status"], "queued", "{reply}");
}

#[tokio::test]
async fn the_sdk_surfaces_a_refused_report() {
    use streamer_client::processor::{ActionSpec, Processor, Refusal};
    let dev = Dev::start(&[]).await;
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::unbounded_channel::<Refusal>();
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    let processor = Processor::new(&dev.grpc.to_string(), ADMIN_TOKEN)
        .on_refused(move |refusal| {
            let _ = refused_tx.send(refusal);
        })
        .handle(
            ActionSpec::new("slow_job")
                .lease_timeout(Duration::from_millis(300))
                .max_attempts(1),
            move |_job, _progress| {
                let mut lost = lost_rx.clone();
                async move {
                    // Work past the lease without a word, then report.
                    let _ = lost.wait_for(|l| *l).await;
                    Ok(json!("too late"))
                }
            },
        );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(processor.run(async {
        let _ = stop_rx.await;
    }));
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    let mut requests = requests(dev.grpc_channel(), ADMIN_TOKEN);
    processor_serving(dev.grpc_channel(), ADMIN_TOKEN, "slow_job").await;
    send(
        &mut ws,
        r#"{"request_id":"late","action":"slow_job","payload":{}}"#,
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "acknowledgment");
    // The lease runs out and, with one attempt, the request fails.
    let failed = recv_type(&mut ws, "error").await;
    assert_eq!(failed["request_id"], "late");
    lost_tx.send(true).expect("finish the work");
    let refusal = tokio::time::timeout(DEADLINE, refused_rx.recv())
        .await
        .expect("in time")
        .expect("a refusal");
    assert_eq!(refusal.request_id, "late");
    assert!(
        refusal.reason.contains("does not hold"),
        "{}",
        refusal.reason
    );
    let status = requests
        .get_request(v1::GetRequestRequest {
            tenant_id: "acme".into(),
            request_id: "late".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .request
        .expect("request")
        .status;
    assert_eq!(
        status,
        v1::RequestStatus::Failed as i32,
        "the late result changed nothing"
    );
    let _ = stop_tx.send(());
    running.await.expect("join").expect("processor");
}
