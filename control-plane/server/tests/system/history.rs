//! Gapless delivery end to end (real `dev`, real WebSocket clients): five
//! followers of a history group, 500 messages from two concurrent senders,
//! every follower dropped twice (once by itself, once by the server); each
//! ends with all 500 exactly once, in offset order, data intact. On the
//! embedded store a restart changes the epoch and followers are told so;
//! the same scenario on DynamoDB with a restart in the middle is in
//! `control-plane/tests/stores/history_dynamodb.rs`. Also: the limits of `recover` over a real socket,
//! and the history read by services (gRPC, `streamerctl`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use rand::Rng;
use serde_json::{Value, json};
use streamer_proto::v1;
use streamer_test_kit::{
    history::{Follower, Handle, Plan, follow},
    prelude::*,
};
use tokio::sync::RwLock;

/// History on rooms, users and the tenant stream.
pub const HISTORY: (&str, &str) = ("STREAMER_HISTORY", "group:room-*,user:*,tenant");

/// The scenario, on whatever `dev` `url` points at: `followers` join
/// `group`, two senders send `total` messages at about 200/s in all, every
/// follower drops once itself and is disconnected once by the server, and
/// `midway` runs once half the messages are out (with the senders paused).
/// Returns what each follower saw and what the senders were told.
pub struct Scenario {
    pub url: Arc<Mutex<String>>,
    pub grpc: Arc<Mutex<tonic::transport::Channel>>,
    pub tenant: String,
    pub group: String,
    pub followers: usize,
    pub total: u64,
    /// How long the whole scenario may take (moto is slower than memory,
    /// and shares the machine with the other tests).
    pub deadline: Duration,
}

/// What the senders were told: offset → (epoch, data).
pub type Sent = BTreeMap<u64, (String, Value)>;

impl Scenario {
    pub async fn run<F, Fut>(&self, midway: F) -> (Vec<Follower>, Sent)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut rng = rand::rng();
        let handles: Vec<Arc<Handle>> = (0..self.followers)
            .map(|_| Arc::new(Handle::default()))
            .collect();
        let tasks: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                let plan = Plan {
                    url: self.url.clone(),
                    token: token(&format!("user-{i}"), &self.tenant, &["group:join:room-*"]),
                    group: self.group.clone(),
                    until: self.total,
                    drop_after: Some(Duration::from_millis(rng.random_range(200..2200))),
                    deadline: self.deadline,
                };
                tokio::spawn(follow(plan, handle.clone()))
            })
            .collect();
        eventually("every follower joined", || {
            let handles = handles.clone();
            async move { handles.iter().all(|h| h.joined.load(Ordering::Relaxed)) }
        })
        .await;

        let pause = Arc::new(RwLock::new(()));
        let sent = Arc::new(Mutex::new(Sent::new()));
        let senders: Vec<_> = (0..2u64)
            .map(|sender| {
                let (pause, sent, grpc) = (pause.clone(), sent.clone(), self.grpc.clone());
                let (tenant, group, each) = (self.tenant.clone(), self.group.clone(), self.total / 2);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    for seq in 0..each {
                        tick.tick().await;
                        let data = json!({"sender": sender, "seq": seq, "text": format!("m-{sender}-{seq} ünïcode \"q\"")});
                        let _running = pause.read().await;
                        let channel = grpc.lock().expect("lock").clone();
                        let response = broadcast(channel, ADMIN_TOKEN)
                            .send(group_target(&tenant, &group, &data))
                            .await
                            .expect("send")
                            .into_inner();
                        let position = response.position.expect("a history stream has a position");
                        let previous = sent
                            .lock()
                            .expect("lock")
                            .insert(position.offset, (position.epoch, data));
                        assert!(previous.is_none(), "offset {} given twice", position.offset);
                    }
                })
            })
            .collect();
        // The server drops every follower once, at a random moment.
        let disconnects: Vec<_> = handles
            .iter()
            .map(|handle| {
                let (handle, grpc) = (handle.clone(), self.grpc.clone());
                let after = Duration::from_millis(rng.random_range(200..2200));
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let channel = grpc.lock().expect("lock").clone();
                    let _ = connections(channel, ADMIN_TOKEN)
                        .disconnect_connection(v1::DisconnectConnectionRequest {
                            connection_id: handle.connection_id(),
                        })
                        .await;
                })
            })
            .collect();
        let half_by = tokio::time::Instant::now() + self.deadline;
        while (sent.lock().expect("lock").len() as u64) < self.total / 2 {
            assert!(
                tokio::time::Instant::now() < half_by,
                "half the messages were not out within {:?}",
                self.deadline
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        {
            let _paused = pause.write().await;
            midway().await;
        }
        for task in senders.into_iter().chain(disconnects) {
            task.await.expect("task");
        }
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.expect("follower"));
        }
        for handle in &handles {
            assert!(
                handle.reconnects.load(Ordering::Relaxed) >= 1,
                "every follower reconnected"
            );
        }
        let sent = std::mem::take(&mut *sent.lock().expect("lock"));
        (seen, sent)
    }
}

/// Every follower emitted every message once, in offset order, as sent.
pub fn assert_gapless(followers: &[Follower], sent: &Sent, total: u64) {
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "the senders were given every offset from 1 to {total}, once each"
    );
    for (i, follower) in followers.iter().enumerate() {
        assert!(
            follower.resets.is_empty(),
            "follower {i}: {:?}",
            follower.resets
        );
        assert!(
            follower.recovered > 0,
            "follower {i} missed messages while away and recovered them"
        );
        let offsets: Vec<u64> = follower.emitted.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=total).collect::<Vec<_>>(), "follower {i}");
        for (offset, data) in &follower.emitted {
            assert_eq!(data, &sent[offset].1, "follower {i}, offset {offset}");
        }
    }
}

#[tokio::test]
async fn five_followers_dropped_twice_each_get_all_500_once_in_order() {
    let dev = Dev::start(&[HISTORY]).await;
    let scenario = Scenario {
        url: Arc::new(Mutex::new(dev.ws_url())),
        grpc: Arc::new(Mutex::new(dev.grpc_channel())),
        tenant: "acme".into(),
        group: "room-gapless".into(),
        followers: 5,
        total: 500,
        deadline: Duration::from_secs(60),
    };
    let (followers, sent) = scenario.run(|| async {}).await;
    assert_gapless(&followers, &sent, 500);
    let epochs: std::collections::BTreeSet<&String> = sent.values().map(|(e, _)| e).collect();
    assert_eq!(epochs.len(), 1, "one epoch throughout");
}

#[tokio::test]
async fn on_the_embedded_store_a_restart_is_a_new_epoch_and_followers_are_told() {
    let dev = Dev::start(&[HISTORY]).await;
    let mut ws = dev
        .connect(&token("alice", "acme", &["group:join:room-*"]))
        .await;
    send_json(
        &mut ws,
        &json!({"id":"j","action":"join","payload":{"group":"room-epoch"}}),
    )
    .await;
    let joined = recv(&mut ws).await;
    assert_eq!(joined["data"]["offset"], 0, "{joined}");
    let sent = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(group_target("acme", "room-epoch", &json!("before")))
        .await
        .expect("send")
        .into_inner()
        .position
        .expect("position");
    assert_eq!(sent.offset, 1);
    let live = recv_type(&mut ws, "message").await;
    assert_eq!(live["epoch"], sent.epoch.as_str());
    drop(ws);
    let status = dev.terminate().await;
    assert!(status.success());

    let dev = Dev::start(&[HISTORY]).await;
    let mut ws = dev
        .connect(&token("alice", "acme", &["group:join:room-*"]))
        .await;
    send_json(
        &mut ws,
        &json!({"id":"j","action":"join","payload":{"group":"room-epoch","since":1,"epoch":sent.epoch}}),
    )
    .await;
    let answer = recv(&mut ws).await;
    assert_eq!(answer["data"]["recovered"], false, "{answer}");
    assert_ne!(answer["data"]["epoch"], sent.epoch.as_str());
    assert_eq!(answer["data"]["offset"], 0);
    assert_eq!(answer["data"]["joined"], true, "joined all the same");
}

#[tokio::test]
async fn recover_over_a_real_socket_refuses_bad_payloads_and_foreign_streams() {
    let dev = Dev::start(&[HISTORY]).await;
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    let long = "x".repeat(10_000);
    for (payload, code) in [
        (
            json!({"stream": format!("group:{long}")}),
            "VALIDATION_ERROR",
        ),
        (
            json!({"stream": "tenant", "since": -1, "epoch": "e"}),
            "VALIDATION_ERROR",
        ),
        (
            json!({"stream": "tenant", "since": "1", "epoch": "e"}),
            "VALIDATION_ERROR",
        ),
        (json!({"stream": "topic:x"}), "VALIDATION_ERROR"),
        (json!({"stream": "user:bob"}), "FORBIDDEN"),
        (json!({"stream": "group:room-1"}), "FORBIDDEN"),
    ] {
        send_json(
            &mut ws,
            &json!({"id":"r","action":"recover","payload":payload}),
        )
        .await;
        let answer = recv(&mut ws).await;
        assert_eq!(answer["error"]["code"], code, "{payload}: {answer}");
        assert!(!answer.to_string().contains(&long));
    }
    send_json(
        &mut ws,
        &json!({"id":"r","action":"recover","payload":{"stream":"user:alice"}}),
    )
    .await;
    let own = recv(&mut ws).await;
    assert_eq!(own["data"]["stream"], "user:alice", "{own}");
    nothing_pending(&mut ws).await;
}

#[tokio::test]
async fn services_read_history_and_position_within_their_tenant() {
    let dev = Dev::start(&[HISTORY]).await;
    let mut client = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    for i in 1..=5 {
        client
            .send(v1::SendRequest {
                target: Some(v1::send_request::Target::TenantId("acme".into())),
                payload: Some(v1::send_request::Payload::DataJson(
                    json!({"i": i}).to_string(),
                )),
                topic: "news".into(),
                ..Default::default()
            })
            .await
            .expect("send");
    }
    let mut history = streamer_test_kit::grpc::history(dev.grpc_channel(), ADMIN_TOKEN);
    let page = history
        .read_history(v1::ReadHistoryRequest {
            tenant_id: "acme".into(),
            stream: "tenant".into(),
            since: 1,
            limit: 2,
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(
        page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(page.next_since, 3);
    assert!(page.complete);
    assert_eq!(page.messages[0].topic, "news");
    assert_eq!(
        serde_json::from_str::<Value>(&page.messages[0].data_json).expect("json"),
        json!({"i": 2})
    );
    let position = history
        .get_stream_position(v1::GetStreamPositionRequest {
            tenant_id: "acme".into(),
            stream: "tenant".into(),
        })
        .await
        .expect("position")
        .into_inner()
        .position
        .expect("position");
    assert_eq!(position.offset, 5);

    // A token bound to acme reads acme's streams and no other tenant's.
    let mut bound = streamer_test_kit::grpc::history(dev.grpc_channel(), SERVICE_A_TOKEN);
    let own = bound
        .get_stream_position(v1::GetStreamPositionRequest {
            tenant_id: "acme".into(),
            stream: "tenant".into(),
        })
        .await
        .expect("its own tenant")
        .into_inner();
    assert_eq!(own.position.map(|p| p.offset), Some(5));
    let refused = bound
        .get_stream_position(v1::GetStreamPositionRequest {
            tenant_id: "beta".into(),
            stream: "tenant".into(),
        })
        .await
        .expect_err("another tenant");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let invalid = history
        .read_history(v1::ReadHistoryRequest {
            tenant_id: "acme".into(),
            stream: "group:not kept".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad stream");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);

    // The same through streamerctl.
    let output = tokio::process::Command::new(streamer_test_kit::dev::binary("streamerctl"))
        .args([
            "history", "read", "--tenant", "acme", "tenant", "--since", "3", "--output", "json",
        ])
        .env("STREAMER_ADDR", format!("http://{}", dev.grpc))
        .env("STREAMER_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .expect("streamerctl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows[0]["offset"], 4);
    assert_eq!(rows[1]["data"], json!({"i": 5}));
}

#[tokio::test]
async fn on_dynamodb_a_restart_midway_keeps_every_offset_and_the_epoch() {
    use streamer_test_kit::moto::{Tables, as_vars};
    let tables = Tables::new("history-e2e");
    tables.create().await;
    let mut env = tables.env();
    env.push((HISTORY.0, HISTORY.1.into()));
    let vars = as_vars(&env);

    let dev = Dev::start(&vars).await;
    let scenario = Scenario {
        url: Arc::new(Mutex::new(dev.ws_url())),
        grpc: Arc::new(Mutex::new(dev.grpc_channel())),
        tenant: "acme".into(),
        group: "room-durable".into(),
        followers: 5,
        total: 500,
        deadline: Duration::from_secs(240),
    };
    let running = Arc::new(tokio::sync::Mutex::new(Some(dev)));
    let restart = {
        let (running, url, grpc, vars) = (
            running.clone(),
            scenario.url.clone(),
            scenario.grpc.clone(),
            vars.clone(),
        );
        || async move {
            let old = running.lock().await.take().expect("running");
            assert!(old.terminate().await.success());
            let new = Dev::start(&vars).await;
            *url.lock().expect("lock") = new.ws_url();
            *grpc.lock().expect("lock") = new.grpc_channel();
            *running.lock().await = Some(new);
        }
    };
    let (followers, sent) = scenario.run(restart).await;
    assert_gapless(&followers, &sent, 500);
    let epochs: std::collections::BTreeSet<&String> = sent.values().map(|(e, _)| e).collect();
    assert_eq!(
        epochs.len(),
        1,
        "the epoch survived the restart: {epochs:?}"
    );
    for follower in &followers {
        assert_eq!(follower.epochs.len(), 1);
    }
}

/// `clients` clients join a group recovering its 20 messages of about 1 MB
/// each (`join` with `since`, which recovers as `recover` does), at once. The
/// messages go out a page at a time under the recovery budget
/// (`STREAMER_HISTORY_RECOVER_MAX_INFLIGHT_BYTES`, 32 MiB here), so the
/// heap never holds the whole answer for every client (once: 8 clients
/// took the heap from 76 to 703 MiB). Each client recovers everything, or
/// is told to retry. Returns the heap's peak above its baseline.
async fn many_recover_large_messages_at_once(clients: usize, messages: usize) -> f64 {
    use streamer_client::socket::Socket;
    let dev = Dev::start(&[
        ("STREAMER_HISTORY", "group:big"),
        ("STREAMER_METRICS_ADDR", "127.0.0.1:0"),
        ("STREAMER_MESSAGE_BURST", "1000"),
    ])
    .await;
    let big = "y".repeat(1_000_000);
    let mut sender = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    for i in 0..messages {
        sender
            .send(group_target("acme", "big", &json!({"n": i, "blob": big})))
            .await
            .expect("send");
    }
    let heap = || async {
        dev.metrics_now()
            .await
            .get("streamer_heap_bytes")
            .copied()
            .expect("heap")
    };
    let baseline = heap().await;
    let mut sockets = Vec::new();
    for i in 0..clients {
        sockets.push(
            Socket::connect(
                &dev.ws_url(),
                &token(&format!("r{i}"), "acme", &["group:join:*"]),
            )
            .await
            .expect("connect"),
        );
    }
    let peak = Arc::new(Mutex::new(baseline));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let metrics = dev.metrics.expect("metrics");
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok(text) = streamer_test_kit::dev::scrape(metrics).await
                    && let Some(now) = text.get("streamer_heap_bytes")
                {
                    let mut peak = peak.lock().expect("lock");
                    *peak = peak.max(*now);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let recoveries = sockets.into_iter().enumerate().map(|(i, mut socket)| async move {
        let id = format!("rec-{i}");
        socket
            .send(&json!({"id": id, "action": "join", "payload": {"group": "big", "since": 0, "epoch": ""}}))
            .await
            .expect("send");
        let mut offsets = Vec::new();
        loop {
            let frame = tokio::time::timeout(DEADLINE * 3, socket.recv())
                .await
                .expect("a frame in time")
                .expect("open");
            match frame["type"].as_str() {
                Some("message") => {
                    assert_eq!(frame["data"]["blob"].as_str().map(str::len), Some(1_000_000));
                    offsets.push(frame["offset"].as_u64().expect("offset"));
                }
                Some("response") if frame["request_id"] == id.as_str() => {
                    assert_eq!(frame["data"]["recovered"], true, "{}", frame["data"]["recovered"]);
                    return (offsets, false);
                }
                // Told to retry: the budget was full for too long, or (on a
                // loaded machine) the whole answer outlasted a frame's budget.
                Some("error")
                    if frame["error"]["code"] == "RATE_LIMITED"
                        || frame["error"]["code"] == "SERVICE_UNAVAILABLE" =>
                {
                    return (offsets, true);
                }
                _ => {}
            }
        }
    });
    let results = futures_util::future::join_all(recoveries).await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let told_to_retry = results.iter().filter(|(_, retry)| *retry).count();
    for (offsets, retry) in &results {
        if !retry {
            assert_eq!(
                offsets,
                &(1..=messages as u64).collect::<Vec<_>>(),
                "all 20, in order"
            );
        }
    }
    let peak = *peak.lock().expect("lock") - baseline;
    println!(
        "{clients} clients recovered {messages} × 1 MB at once ({} told to retry): heap peak {:.1} MiB above the baseline of {:.1} MiB",
        told_to_retry,
        peak / 1048576.0,
        baseline / 1048576.0
    );
    assert!(told_to_retry < clients, "most recover");
    peak
}

#[tokio::test]
async fn eight_clients_recovering_large_messages_stay_within_the_memory_budget() {
    let peak = many_recover_large_messages_at_once(8, 20).await;
    assert!(peak < 2.0 * 32.0 * 1048576.0, "{peak}");
}

#[tokio::test]
async fn thirty_two_clients_recovering_large_messages_stay_within_the_memory_budget() {
    // 32 clients of 8 messages: 256 MB to send, eight times the budget,
    // in a time a loaded two-core CI machine keeps to.
    let peak = many_recover_large_messages_at_once(32, 8).await;
    assert!(peak < 2.0 * 32.0 * 1048576.0, "{peak}");
}
