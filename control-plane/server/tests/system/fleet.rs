//! A fleet on one machine (test-kit `Fleet`): replicas of
//! `streamer-control-plane serve` on one DynamoDB (moto) behind one gateway
//! that sends each event to the next replica. Every guarantee holds
//! whichever replica an event, a call or a processor lands on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use streamer_client::processor::{ActionSpec, Processor};
use streamer_proto::v1;
use streamer_test_kit::{
    fleet::Fleet,
    prelude::*,
    ws::{connect_many, count_messages},
};
use tokio::sync::mpsc;

fn processor_on(fleet: &Fleet, i: usize) -> Processor {
    Processor::new(
        &format!("http://{}", fleet.replicas[i].as_ref().expect("alive").addr),
        ADMIN_TOKEN,
    )
}

#[tokio::test]
async fn a_cancel_on_another_replica_reaches_the_processor_and_frees_its_slot() {
    let fleet = Fleet::start(2, &[]).await;
    // The processor serves replica 1, one request at a time.
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel::<(String, Instant)>();
    let processor = processor_on(&fleet, 1).concurrency(1).handle(
        ActionSpec::new("long_job"),
        move |mut job, progress| {
            let (started_tx, cancelled_tx) = (started_tx.clone(), cancelled_tx.clone());
            async move {
                let _ = started_tx.send(job.request_id.clone());
                progress.report(10, "working", None).await;
                job.cancelled().await;
                let _ = cancelled_tx.send((job.request_id.clone(), Instant::now()));
                Ok(Value::Null)
            }
        },
    );
    let _processor = tokio::spawn(processor.run(std::future::pending()));
    let mut ws = connect_ws(&fleet.url(&token("alice", "acme", &[]))).await;
    eventually("the processor registered", || async {
        let mut client = requests(fleet.channel(1), ADMIN_TOKEN);
        client
            .list_processors(v1::ListProcessorsRequest::default())
            .await
            .is_ok_and(|r| !r.into_inner().processors.is_empty())
    })
    .await;
    assert!(submit(&mut ws, "first", "long_job", json!({})).await);
    let got = tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("started");
    assert_eq!(got.as_deref(), Some("first"));

    // Cancelled through replica 0, which does not serve the processor.
    let sent = Instant::now();
    requests(fleet.channel(0), ADMIN_TOKEN)
        .cancel_request(v1::CancelRequestRequest {
            tenant_id: "acme".into(),
            request_id: "first".into(),
        })
        .await
        .expect("cancel");
    let (which, told) = tokio::time::timeout(DEADLINE, cancelled.recv())
        .await
        .expect("the processor is told")
        .expect("told");
    assert_eq!(which, "first");
    let took = told - sent;
    println!("a cancel through the other replica reached the processor in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Its one slot is free: the next request starts.
    assert!(submit(&mut ws, "second", "long_job", json!({})).await);
    let got = tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("started");
    assert_eq!(got.as_deref(), Some("second"));
}

#[tokio::test]
async fn fan_out_quota_subscribe_and_history_hold_across_replicas() {
    let fleet = Fleet::start(
        2,
        &[
            ("STREAMER_MAX_CONNECTIONS_PER_TENANT", "30"),
            ("STREAMER_HISTORY", "group:room-*"),
            ("STREAMER_LOOPBACK_CONNECTS_UNLIMITED", "true"),
        ],
    )
    .await;
    // 30 connects, spread over both replicas by the gateway.
    let url = fleet.url(&token("crowd", "acme", &[]));
    let sockets = connect_many(&url, 30, 8).await;
    let (received, _readers) = count_messages(sockets, json!("to all"));
    let (status, body, _) = refused(&url).await;
    assert_eq!(
        status, 429,
        "the tenant quota holds across replicas: {body}"
    );
    // A send through either replica reaches every connection once.
    let report = broadcast(fleet.channel(1), ADMIN_TOKEN)
        .send(tenant_target("acme", json!("to all")))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered), (30, 30));
    eventually("everyone has it", || {
        let received = received.clone();
        async move { received.count() == 30 }
    })
    .await;
    assert_eq!(received.duplicates(), 0);

    // Messages to one stream sent alternately through both replicas: one
    // sequence, one epoch.
    let mut offsets = Vec::new();
    let mut epochs = std::collections::BTreeSet::new();
    for i in 0..40 {
        let position = broadcast(fleet.channel(i % 2), ADMIN_TOKEN)
            .send(v1::SendRequest {
                target: Some(v1::send_request::Target::Group(v1::GroupTarget {
                    tenant_id: "acme".into(),
                    group: "room-shared".into(),
                })),
                payload: Some(v1::send_request::Payload::DataJson(json!(i).to_string())),
                ..Default::default()
            })
            .await
            .expect("send")
            .into_inner()
            .position
            .expect("position");
        offsets.push(position.offset);
        epochs.insert(position.epoch);
    }
    assert_eq!(offsets, (1..=40).collect::<Vec<u64>>());
    assert_eq!(epochs.len(), 1);
}

#[tokio::test]
async fn connect_and_message_limits_hold_across_replicas() {
    let fleet = Fleet::start(
        2,
        &[
            ("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "10"),
            ("STREAMER_MESSAGES_PER_MINUTE", "60"),
            ("STREAMER_MESSAGE_BURST", "20"),
        ],
    )
    .await;
    let url = fleet.url(&token("alice", "limits", &["echo"]));
    let mut accepted = Vec::new();
    let mut refused_429 = 0;
    for _ in 0..20 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => accepted.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
                refused_429 += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    println!(
        "20 connects from one IP over 2 replicas, limit 10: {} accepted, {refused_429} refused",
        accepted.len()
    );
    assert_eq!((accepted.len(), refused_429), (10, 10));

    // One connection's messages alternate between replicas: the burst of 20
    // holds for the connection, not per replica.
    let ws = &mut accepted[0];
    let mut answered = 0;
    let mut limited = 0;
    let began = std::time::Instant::now();
    for i in 0..40 {
        send_json(ws, &json!({"id": format!("m{i}"), "action": "echo"})).await;
        let frame = recv(ws).await;
        match frame["type"].as_str() {
            Some("response") => answered += 1,
            _ if frame["error"]["code"] == "RATE_LIMITED" => limited += 1,
            _ => panic!("{frame}"),
        }
    }
    println!(
        "40 messages on one connection over 2 replicas, burst 20: {answered} answered, {limited} limited, in {:?}",
        began.elapsed()
    );
    // The burst, plus what the rate (one a second) refilled meanwhile: per
    // replica it would be 40.
    let refilled = began.elapsed().as_secs() as usize + 1;
    assert!(
        answered <= 20 + refilled,
        "{answered} in {:?}",
        began.elapsed()
    );
    assert!(limited >= 20 - refilled, "{limited}");
}

#[tokio::test]
async fn a_chunked_message_joins_across_replicas() {
    let fleet = Fleet::start(2, &[]).await;
    let url = fleet.url(&token("alice", "chunks", &[]));
    let (base, token) = url.split_once("?token=").expect("token in the url");
    let mut socket = streamer_client::socket::Socket::connect(base, token)
        .await
        .expect("connect");
    // 300 KB: 10 chunk frames, each `$default` event on the next replica;
    // the echo (over 128 KB) comes back as chunk frames.
    let blob: String = (0..300_000u32)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).expect("letter")))
        .collect();
    for round in 0..2 {
        let id = socket
            .request("echo", json!({ "round": round, "blob": blob }))
            .await
            .expect("send");
        let reply = loop {
            let frame = tokio::time::timeout(DEADLINE, socket.recv())
                .await
                .expect("in time")
                .expect("open");
            if frame["request_id"] == id.as_str() {
                break frame;
            }
        };
        assert_eq!(reply["type"], "response", "{}", reply["error"]);
        assert_eq!(reply["data"]["round"], round);
        assert_eq!(reply["data"]["blob"].as_str(), Some(blob.as_str()));
    }
    socket.close().await;
}

#[tokio::test]
async fn a_killed_replica_hands_its_work_over_exactly_once() {
    let mut fleet = Fleet::start(2, &[]).await;
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let worker = |i: usize, fleet: &Fleet, runs: Arc<Mutex<HashMap<String, u32>>>| {
        processor_on(fleet, i).concurrency(4).handle(
            ActionSpec::new("fleet_job").lease_timeout(Duration::from_secs(2)),
            move |job, _progress| {
                let runs = runs.clone();
                async move {
                    *runs
                        .lock()
                        .expect("lock")
                        .entry(job.request_id.clone())
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    Ok(json!({"done": job.request_id}))
                }
            },
        )
    };
    let on_one = tokio::spawn(worker(1, &fleet, runs.clone()).run(std::future::pending()));
    let mut ws = connect_ws(&fleet.url(&token("alice", "acme", &[]))).await;
    eventually("the processor registered", || async {
        requests(fleet.channel(1), ADMIN_TOKEN)
            .list_processors(v1::ListProcessorsRequest::default())
            .await
            .is_ok_and(|r| !r.into_inner().processors.is_empty())
    })
    .await;
    for i in 0..8 {
        assert!(submit(&mut ws, &format!("job-{i}"), "fleet_job", json!({})).await);
    }
    eventually("work started on replica 1", || {
        let runs = runs.clone();
        async move { !runs.lock().expect("lock").is_empty() }
    })
    .await;
    fleet.kill(1).await;
    on_one.abort();
    println!("injected: replica 1 killed (SIGKILL) with its processor's work in flight");
    let _on_zero = tokio::spawn(worker(0, &fleet, runs.clone()).run(std::future::pending()));
    for i in 0..8 {
        let id = format!("job-{i}");
        eventually(&format!("{id} completes"), || {
            let id = id.clone();
            let mut api = requests(fleet.channel(0), ADMIN_TOKEN);
            async move {
                api.get_request(v1::GetRequestRequest {
                    tenant_id: "acme".into(),
                    request_id: id,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().request)
                .is_some_and(|r| r.status == v1::RequestStatus::Completed as i32)
            }
        })
        .await;
    }
    // The client's events keep flowing through the live replica.
    send_json(
        &mut ws,
        &json!({"id": "after", "action": "echo", "payload": 1}),
    )
    .await;
    loop {
        let frame = recv(&mut ws).await;
        if frame["request_id"] == "after" {
            assert_eq!(frame["type"], "response", "{frame}");
            break;
        }
    }
    println!(
        "checked: all 8 requests completed through replica 0; runs {:?}",
        runs.lock().expect("lock")
    );
}

#[tokio::test]
async fn reconcile_runs_once_across_the_fleet_and_removes_rows_of_an_unreachable_endpoint() {
    // Rows whose endpoint refuses connections (nothing listens there); it
    // is one of the deployment's endpoints (a gateway that went away).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}/local", dead.local_addr().expect("addr"));
    drop(dead);
    let fleet = Fleet::start(
        2,
        &[
            ("STREAMER_MANAGEMENT_ENDPOINTS", endpoint.as_str()),
            ("STREAMER_RECONCILE_IDLE_SECS", "0"),
            ("STREAMER_RECONCILE_INTERVAL_SECS", "0"),
            ("STREAMER_RECONCILE_UNREACHABLE_SECS", "1"),
            ("STREAMER_DELIVERY_CONNECTING_GRACE_MS", "0"),
        ],
    )
    .await;
    for i in 0..3 {
        let reply = edge(fleet.channel(0), EDGE_TOKEN)
            .connect(v1::ConnectRequest {
                connection_id: format!("Unreachable{i:04}="),
                endpoint: endpoint.clone(),
                query: [("token".to_owned(), token("ghost", "stranded", &[]))].into(),
                source_ip: "198.51.100.9".into(),
                ..Default::default()
            })
            .await
            .expect("connect")
            .into_inner();
        assert!(reply.accepted);
    }
    let run = |i: usize| {
        let channel = fleet.channel(i);
        async move {
            admin(channel, ADMIN_TOKEN)
                .run_reconcile(v1::RunReconcileRequest {})
                .await
                .reported()
        }
    };
    let first = run(0).await;
    assert_eq!(
        (first.errors, first.removed),
        (3, 0),
        "kept while it may come back: {first:?}"
    );
    eventually(
        "the endpoint has been unreachable past the limit",
        || async {
            let (a, b) = tokio::join!(run(0), run(1));
            let removed = a.removed + b.removed;
            assert!(
                a.skipped || b.skipped || removed == 0 || removed == 3,
                "one run at a time: {a:?} {b:?}"
            );
            removed == 3
        },
    )
    .await;
    let count = connections(fleet.channel(1), ADMIN_TOKEN)
        .count_connections(v1::CountConnectionsRequest {
            tenant_id: "stranded".into(),
            ..Default::default()
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(count, 0, "the stranded rows are gone");
}
