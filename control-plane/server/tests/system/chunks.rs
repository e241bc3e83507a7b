//! Payloads past API Gateway's limits, end to end through the real `dev`
//! (control plane and emulator, which closes 1009 on a frame over 32 KB or
//! a message over 128 KB as API Gateway does): a 2 MB report and a 500 KB
//! client message arrive whole through the Rust socket client; the edges of
//! both limits; a client that refuses chunks; and the abuse cases.

use serde_json::{Value, json};
use streamer_client::socket::{Socket, SocketOptions};
use streamer_proto::client::Frame;
use streamer_test_kit::prelude::*;

/// A message burst of 5: a 1 MiB chunked message (33 frames) must still
/// pass, since only the piece that starts a message is charged.
async fn dev() -> Dev {
    Dev::start(&[
        ("STREAMER_DEMO_DURATION_MS", "200"),
        ("STREAMER_MESSAGE_BURST", "5"),
        ("STREAMER_MESSAGES_PER_MINUTE", "60"),
    ])
    .await
}

async fn socket(dev: &Dev, user: &str) -> Socket {
    Socket::connect(&dev.ws_url(), &token(user, "acme", &[]))
        .await
        .expect("connect")
}

/// The frame that settles request `id` (response, complete or error).
async fn settled(socket: &mut Socket, id: &str) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, socket.recv())
            .await
            .expect("a frame in time")
            .expect("the connection stays open");
        let done = matches!(
            frame["type"].as_str(),
            Some("response" | "complete" | "error")
        );
        if done && frame["request_id"] == id {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_2_mb_report_and_a_500_kb_message_arrive_whole() {
    let dev = dev().await;
    processor_serving(dev.grpc_channel(), ADMIN_TOKEN, "generate_report").await;
    let mut alice = socket(&dev, "alice").await;

    let payload = json!({
        "start_date": "2019-01-01", "end_date": "2025-12-31",
        "format": "csv", "report_type": "annual", "include_data": true
    });
    let id = alice
        .request("generate_report", payload)
        .await
        .expect("send");
    let done = settled(&mut alice, &id).await;
    assert_eq!(
        done["type"],
        "complete",
        "{}",
        &done.to_string()[..200.min(done.to_string().len())]
    );
    let start = chrono::NaiveDate::from_ymd_opt(2019, 1, 1).expect("date");
    let days = done["result"]["days"].as_i64().expect("days");
    let data = done["result"]["data"].as_str().expect("data");
    assert!(
        data.len() > 2_000_000,
        "a 2 MB report: {} bytes",
        data.len()
    );
    assert_eq!(
        data,
        streamer_server::demo::report_rows(start, days),
        "every byte, in order"
    );

    // 500 KB from the client: 16 chunk frames up, joined by the control
    // plane; echoed back as chunk frames down, joined by the client.
    let blob: String = (0..500_000u32)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).expect("letter")))
        .collect();
    let id = alice
        .request("echo", json!({ "blob": blob, "quote": "\"é漢🎉\\" }))
        .await
        .expect("send");
    let echoed = settled(&mut alice, &id).await;
    assert_eq!(echoed["type"], "response", "{}", echoed["error"]);
    assert_eq!(echoed["data"]["blob"].as_str(), Some(blob.as_str()));
    assert_eq!(echoed["data"]["quote"], "\"é漢🎉\\");

    // A 1 MiB message (33 chunks) under a burst of 5: one message charged.
    let big = "z".repeat(1_000_000);
    let id = alice
        .request("echo", json!({ "big": big }))
        .await
        .expect("send");
    let echoed = settled(&mut alice, &id).await;
    assert_eq!(
        echoed["data"]["big"].as_str().map(str::len),
        Some(1_000_000)
    );
    alice.close().await;
}

/// The `message` frame a broadcast of `data` makes, as the server writes it
/// (a plain broadcast's id is `m-` and 32 hex digits).
fn message_len(data: &Value) -> usize {
    let mut frame = Frame::message(data.clone(), None, None);
    if let Frame::Message { id, .. } = &mut frame {
        *id = format!("m-{:032x}", 0);
    }
    frame.to_json().len()
}

#[tokio::test]
async fn the_edges_of_both_limits() {
    let dev = dev().await;
    let mut raw = dev.connect(&token("bob", "acme", &[])).await;
    let client = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    // Server → client: 128,000 bytes go whole, 128,001 as chunks.
    let overhead = message_len(&json!(""));
    for (len, kind) in [(128_000, "message"), (128_001, "chunk")] {
        let data = json!("y".repeat(len - overhead));
        assert_eq!(message_len(&data), len);
        let report = client
            .clone()
            .send(tenant_target("acme", data))
            .await
            .reported();
        assert_eq!(report.delivered, 1);
        let frame = recv(&mut raw).await;
        assert_eq!(frame["type"], kind, "a {len}-byte frame");
        if kind == "chunk" {
            assert_eq!(frame["count"], 2);
            assert_eq!(recv(&mut raw).await["index"], 1);
        }
    }
    // Client → server: a 32,000-byte message goes whole (the emulator
    // takes frames up to 32 KB), a larger one as chunks; over 32 KB in
    // one frame the gateway closes 1009, as API Gateway does.
    let mut carol = socket(&dev, "carol").await;
    for len in [32_000, 32_001, 40_000] {
        let frame_of = |n: usize| json!({ "id": format!("edge-{len}"), "action": "echo", "payload": "x".repeat(n) });
        let message = frame_of(len - frame_of(0).to_string().len());
        assert_eq!(message.to_string().len(), len);
        carol.send(&message).await.expect("send");
        let reply = settled(&mut carol, &format!("edge-{len}")).await;
        assert_eq!(reply["type"], "response", "a {len}-byte message");
    }
    let mut whole = dev.connect(&token("dave", "acme", &[])).await;
    send(&mut whole, &"x".repeat(33_000)).await;
    assert_eq!(
        closed(&mut whole).await.map(|c| u16::from(c.code)),
        Some(1009),
        "one frame over 32 KB"
    );
}

#[tokio::test]
async fn a_client_that_refuses_chunks_gets_payload_too_large() {
    let dev = dev().await;
    let options = SocketOptions {
        chunks: false,
        ..SocketOptions::default()
    };
    let mut erin = Socket::connect_with(&dev.ws_url(), &token("erin", "acme", &[]), options)
        .await
        .expect("connect");
    let id = erin
        .request("echo", json!({ "small": true }))
        .await
        .expect("send");
    assert_eq!(settled(&mut erin, &id).await["type"], "response");
    let client = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = client
        .clone()
        .send(tenant_target("acme", json!("w".repeat(200_000))))
        .await
        .reported();
    assert_eq!(
        (report.targeted, report.too_large, report.delivered),
        (1, 1, 0)
    );
    let frame = tokio::time::timeout(DEADLINE, erin.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["error"]["code"], "PAYLOAD_TOO_LARGE");
    let message = frame["error"]["message"].as_str().expect("message");
    assert!(message.contains("chunks"), "{message}");
}

/// A raw chunk frame.
fn piece(id: &str, chunk_id: &str, index: u32, count: u32, data: &str) -> Value {
    json!({ "id": id, "action": "chunk", "payload": { "chunk_id": chunk_id, "index": index, "count": count, "data": data } })
}

async fn answer(ws: &mut Ws, frame: &Value) -> Value {
    send_json(ws, frame).await;
    recv(ws).await
}

#[tokio::test]
async fn chunk_abuse_gets_clear_errors_and_loses_nothing() {
    let dev = Dev::start(&[
        ("STREAMER_CHUNKED_MESSAGE_MAX_BYTES", "100000"),
        ("STREAMER_CHUNKED_MESSAGE_MAX_CHUNKS", "8"),
        ("STREAMER_MESSAGE_BURST", "1000"),
    ])
    .await;
    let mut ws = dev.connect(&token("mallory", "acme", &[])).await;
    let code = |frame: &Value| {
        frame["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Too many chunks, and a message over the total.
    let reply = answer(&mut ws, &piece("a", "many", 0, 9, "x")).await;
    assert_eq!(code(&reply), "PAYLOAD_TOO_LARGE", "{reply}");
    assert_eq!(reply["request_id"], "a");
    let over = "x".repeat(30_000);
    for index in 0..3 {
        send_json(&mut ws, &piece("b", "total", index, 8, &over)).await;
    }
    nothing_pending(&mut ws).await;
    let reply = answer(&mut ws, &piece("b", "total", 3, 8, &over)).await;
    assert_eq!(code(&reply), "PAYLOAD_TOO_LARGE", "{reply}");

    // Interleaved messages: the second is refused, the first completes.
    send_json(
        &mut ws,
        &piece("c", "first", 0, 2, r#"{"id":"c","action":"echo","#),
    )
    .await;
    let reply = answer(&mut ws, &piece("d", "second", 0, 2, "{")).await;
    assert_eq!(code(&reply), "VALIDATION_ERROR", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("one chunked message at a time")
    );
    let reply = answer(
        &mut ws,
        &piece("c", "first", 1, 2, r#""payload":{"ok":1}}"#),
    )
    .await;
    assert_eq!(
        (reply["type"].as_str(), reply["data"]["ok"].as_i64()),
        (Some("response"), Some(1)),
        "{reply}"
    );

    // Malformed pieces, a repeated index, a count that changes.
    for (frame, expected) in [
        (
            json!({"id":"e","action":"chunk","payload":{"chunk_id":"m"}}),
            "VALIDATION_ERROR",
        ),
        (piece("e", "bad id!", 0, 2, "x"), "VALIDATION_ERROR"),
        (piece("e", "m", 2, 2, "x"), "VALIDATION_ERROR"),
        (piece("e", "m", 0, 1, "x"), "VALIDATION_ERROR"),
    ] {
        let reply = answer(&mut ws, &frame).await;
        assert_eq!(code(&reply), expected, "{frame} → {reply}");
    }
    send_json(&mut ws, &piece("f", "rep", 0, 3, r#"{"id":"f","#)).await;
    let reply = answer(&mut ws, &piece("f", "rep", 0, 3, "again")).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already received"),
        "{reply}"
    );
    let reply = answer(&mut ws, &piece("f", "rep", 1, 4, "x")).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("count differs"),
        "{reply}"
    );
    send_json(&mut ws, &piece("f", "rep", 1, 3, r#""action":"#)).await;
    let reply = answer(&mut ws, &piece("f", "rep", 2, 3, r#""ping"}"#)).await;
    assert_eq!(reply["type"], "pong", "{reply}");

    // A joined message that is not a valid message, or is itself a chunk.
    send_json(&mut ws, &piece("g", "junk", 0, 2, "not ")).await;
    let reply = answer(&mut ws, &piece("g", "junk", 1, 2, "json")).await;
    assert_eq!(code(&reply), "VALIDATION_ERROR", "{reply}");
    let nested = piece("h", "inner", 0, 2, "x").to_string();
    let (head, tail) = nested.split_at(nested.len() / 2);
    send_json(&mut ws, &piece("h", "outer", 0, 2, head)).await;
    let reply = answer(&mut ws, &piece("h", "outer", 1, 2, tail)).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot itself be a chunk"),
        "{reply}"
    );

    // The connection is still good.
    let reply = answer(
        &mut ws,
        &json!({"id": "z", "action": "echo", "payload": "still here"}),
    )
    .await;
    assert_eq!(reply["data"], "still here");
}

/// Sends the first `pieces` of a message of `count` pieces, each `bytes`
/// long, and returns the answers to those that were answered (a piece
/// that is held gets no answer; a refused one gets an error).
async fn hold(ws: &mut Ws, chunk_id: &str, pieces: u32, count: u32, bytes: usize) -> Vec<Value> {
    let data = "x".repeat(bytes);
    let mut refusals = Vec::new();
    for index in 0..pieces {
        send_json(ws, &piece(chunk_id, chunk_id, index, count, &data)).await;
        // An echo round trip tells a held piece (no answer) from a refused one.
        send_json(ws, &json!({"id": "probe", "action": "echo", "payload": 0})).await;
        loop {
            let frame = recv(ws).await;
            if frame["request_id"] == "probe" {
                break;
            }
            refusals.push(frame);
        }
        if !refusals.is_empty() {
            break;
        }
    }
    refusals
}

/// A whole 4-piece, 80 KB chunked echo; the reply frame.
async fn chunked_echo(ws: &mut Ws, id: &str) -> Value {
    let message = json!({"id": id, "action": "echo", "payload": "y".repeat(80_000)}).to_string();
    let quarter = message.len().div_ceil(4);
    let parts: Vec<&str> = message
        .as_bytes()
        .chunks(quarter)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    for (index, part) in parts.iter().enumerate() {
        send_json(ws, &piece(id, id, index as u32, 4, part)).await;
    }
    loop {
        let frame = recv(ws).await;
        if frame["request_id"] == id || frame["type"] == "chunk" {
            return frame;
        }
    }
}

/// One tenant cannot take the chunk budget the others need: its
/// connections together hold at most their tenant's share (a quarter of
/// the server's by default), the refusal names that share, and another
/// tenant's chunked message goes through while the first keeps its share
/// full, also after the timer frees the flood and it is sent again. (Once,
/// 36 connections of one tenant held the whole server budget and every
/// other tenant's chunked message was refused `SERVICE_UNAVAILABLE`.)
#[tokio::test]
async fn one_tenant_flooding_the_chunk_budget_leaves_room_for_another() {
    let dev = Dev::start(&[
        ("STREAMER_CHUNKED_MESSAGES_HELD_MAX_BYTES", "4000000"),
        ("STREAMER_CHUNKED_MESSAGE_TIMEOUT_SECS", "2"),
        ("STREAMER_MESSAGE_BURST", "1000"),
    ])
    .await;
    let mut evil = Vec::new();
    for i in 0..8 {
        evil.push(dev.connect(&token(&format!("evil-{i}"), "evil", &[])).await);
    }
    let mut other = dev.connect(&token("alice", "other", &[])).await;
    for round in 0..2 {
        // Each evil connection tries to hold 600 KB (20 pieces of 30 KB):
        // 4.8 MB together, over the server's 4 MB.
        let mut refused = Vec::new();
        for (i, ws) in evil.iter_mut().enumerate() {
            let chunk_id = format!("flood-{round}-{i}");
            refused.extend(hold(ws, &chunk_id, 20, 30, 30_000).await);
        }
        println!(
            "round {round}: {} of 8 flooding connections refused: {:?}",
            refused.len(),
            refused.first().map(|r| r["error"]["message"].clone())
        );
        assert!(!refused.is_empty(), "the tenant's share stops the flood");
        for refusal in &refused {
            assert_eq!(refusal["error"]["code"], "SERVICE_UNAVAILABLE", "{refusal}");
            let message = refusal["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("tenant"), "names the share: {message}");
        }
        let reply = chunked_echo(&mut other, &format!("mine-{round}")).await;
        assert_eq!(
            reply["type"], "response",
            "another tenant's message passes: {reply}"
        );
        if round == 0 {
            // The flood is freed at its timeout, with no further piece of
            // it: a refused connection gets room again.
            let ws = evil.last_mut().expect("an evil connection");
            let deadline = std::time::Instant::now() + DEADLINE;
            for attempt in 0.. {
                let chunk_id = format!("probe-{attempt}");
                if hold(ws, &chunk_id, 1, 2, 10).await.is_empty() {
                    // Finish the probe so it holds nothing.
                    send_json(ws, &piece(&chunk_id, &chunk_id, 1, 2, "x")).await;
                    recv(ws).await;
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the flood is freed at its timeout"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Partial messages are freed by a timer at their timeout, with no other
/// traffic: the heap comes back to its baseline (once, they stayed until
/// another piece arrived).
#[tokio::test]
async fn partial_messages_are_freed_at_their_timeout_with_no_further_traffic() {
    const TIMEOUT_SECS: u64 = 4;
    let dev = Dev::start(&[
        ("STREAMER_CHUNKED_MESSAGE_TIMEOUT_SECS", "4"),
        ("STREAMER_MESSAGE_BURST", "1000"),
        ("STREAMER_METRICS_ADDR", "127.0.0.1:0"),
    ])
    .await;
    let heap = || async {
        dev.metrics_now()
            .await
            .get("streamer_heap_bytes")
            .copied()
            .expect("streamer_heap_bytes")
    };
    let mut sockets = Vec::new();
    for i in 0..8 {
        let tenant = format!("fill-{}", i % 4);
        sockets.push(dev.connect(&token(&format!("u{i}"), &tenant, &[])).await);
    }
    // The baseline is these clients after one message of the fill's
    // pieces each (the gateway's buffers for 30 KB frames are there to
    // stay; the joined text is no message, so each gets an error).
    let data = "x".repeat(30_000);
    for (i, ws) in sockets.iter_mut().enumerate() {
        let chunk_id = format!("warm-{i}");
        send_json(ws, &piece(&chunk_id, &chunk_id, 0, 2, &data)).await;
        send_json(ws, &piece(&chunk_id, &chunk_id, 1, 2, &data)).await;
        assert_eq!(recv(ws).await["error"]["code"], "VALIDATION_ERROR");
    }
    let baseline = heap().await;
    let started = std::time::Instant::now();
    for (i, ws) in sockets.iter_mut().enumerate() {
        let chunk_id = format!("fill-{i}");
        for index in 0..30 {
            send_json(ws, &piece(&chunk_id, &chunk_id, index, 40, &data)).await;
        }
    }
    // 8 × 900 KB held.
    eventually("the fill is held", || async {
        heap().await > baseline + 6_000_000.0
    })
    .await;
    let filled = heap().await;
    eventually("the heap is back within 10% of its baseline", || async {
        heap().await <= baseline * 1.1
    })
    .await;
    let freed = started.elapsed();
    println!(
        "heap: baseline {baseline}, filled {filled}, back within 10% {freed:?} after the fill began (timeout {TIMEOUT_SECS} s)"
    );
    assert!(
        freed <= std::time::Duration::from_secs(TIMEOUT_SECS + 2),
        "{freed:?}"
    );
    for ws in sockets.iter_mut() {
        nothing_pending(ws).await;
    }
}
