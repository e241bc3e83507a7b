//! The emulator behaves as API Gateway where clients and the control plane
//! can tell: each test names the AWS behaviour it reproduces (API Gateway
//! quotas, the Management API reference, RFC 6455 close codes).

use aws_sdk_apigatewaymanagement::primitives::Blob;
use serde_json::Value;
use streamer_test_kit::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A WebSocket opened by hand, so frames can be written that no client
/// library would send.
async fn raw_socket(dev: &Dev, token: &str) -> TcpStream {
    let mut socket = TcpStream::connect(dev.gateway).await.expect("connect");
    let request = format!(
        "GET /{}?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        dev.stage, dev.gateway
    );
    socket
        .write_all(request.as_bytes())
        .await
        .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// One frame: FIN + `first` flags/opcode, masked unless `unmasked`.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [1u8, 2, 3, 4];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The close code the server sends (None: it closed without one).
async fn close_code(socket: &mut TcpStream) -> Option<u16> {
    let read = tokio::time::timeout(DEADLINE, async {
        let mut header = [0u8; 2];
        loop {
            if socket.read_exact(&mut header).await.is_err() {
                return None;
            }
            let len = match header[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    socket.read_exact(&mut n).await.ok()?;
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    socket.read_exact(&mut n).await.ok()?;
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            socket.read_exact(&mut payload).await.ok()?;
            if header[0] & 0x0f == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    })
    .await;
    read.expect("closed in time")
}

#[tokio::test]
async fn frames_messages_and_protocol_errors_get_api_gateways_close_codes() {
    let dev = Dev::start(&[]).await;
    let token = token("bob", "acme", &[]);
    let text = |n: usize| {
        let mut body = br#"{"action":"echo","payload":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', n));
        body.extend_from_slice(br#""}"#);
        body
    };
    // A frame up to 32 KB is fine (one frame is what a browser sends).
    let mut socket = raw_socket(&dev, &token).await;
    socket
        .write_all(&frame(0x81, &text(30 * 1024), true))
        .await
        .expect("frame");
    // API Gateway: "WebSocket frame size: 32 KB" (a larger frame closes 1009).
    socket
        .write_all(&frame(0x81, &text(33 * 1024), true))
        .await
        .expect("frame");
    assert_eq!(close_code(&mut socket).await, Some(1009), "33 KB frame");
    for size in [256 * 1024, 1024 * 1024] {
        let mut socket = raw_socket(&dev, &token).await;
        let _ = socket.write_all(&frame(0x81, &text(size), true)).await;
        assert_eq!(
            close_code(&mut socket).await,
            Some(1009),
            "{size} byte frame"
        );
    }
    // API Gateway: "Message payload size: 128 KB" across fragments.
    let mut socket = raw_socket(&dev, &token).await;
    let message = text(200 * 1024);
    let chunks: Vec<&[u8]> = message.chunks(30 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { 0x1 } else { 0x0 };
        let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
        if socket
            .write_all(&frame(fin | opcode, chunk, true))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(
        close_code(&mut socket).await,
        Some(1009),
        "200 KB fragmented"
    );

    // RFC 6455 §7.4.1: 1007 for text that is not UTF-8, 1002 for protocol errors.
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("invalid utf-8", frame(0x81, &[0xc3, 0x28], true), 1007),
        ("reserved bits", frame(0x81 | 0x40, b"{}", true), 1002),
        ("unmasked client frame", frame(0x81, b"{}", false), 1002),
        ("unknown opcode", frame(0x83, b"{}", true), 1002),
    ];
    for (case, bytes, code) in cases {
        let mut socket = raw_socket(&dev, &token).await;
        socket.write_all(&bytes).await.expect("frame");
        assert_eq!(close_code(&mut socket).await, Some(code), "{case}");
    }
}

#[tokio::test]
async fn a_slow_upgrade_request_is_dropped() {
    let dev = Dev::start(&[("STREAMER_GATEWAY_HEADER_TIMEOUT_MS", "300")]).await;
    let mut socket = TcpStream::connect(dev.gateway).await.expect("connect");
    socket
        .write_all(b"GET /local HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the half-sent upgrade is dropped");
}

#[tokio::test]
async fn new_connections_per_second_are_throttled() {
    // API Gateway: "New connections per second: 500" per account (429 above).
    let dev = Dev::start(&[("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "3")]).await;
    let url = format!("{}?token={}", dev.ws_url(), token("dan", "acme", &[]));
    let mut accepted = Vec::new();
    let mut refused_status = None;
    for _ in 0..6 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => accepted.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                refused_status = Some(response.status().as_u16());
                break;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted.len(), 3, "the burst");
    assert_eq!(refused_status, Some(429));
}

fn sdk_client(dev: &Dev, access_key: &str, secret: &str) -> aws_sdk_apigatewaymanagement::Client {
    let config = aws_sdk_apigatewaymanagement::config::Builder::new()
        .behavior_version(aws_sdk_apigatewaymanagement::config::BehaviorVersion::latest())
        .region(aws_sdk_apigatewaymanagement::config::Region::new(
            "us-east-1",
        ))
        .credentials_provider(aws_sdk_apigatewaymanagement::config::Credentials::new(
            access_key, secret, None, None, "test",
        ))
        .retry_config(aws_sdk_apigatewaymanagement::config::retry::RetryConfig::disabled())
        .endpoint_url(dev.management_endpoint())
        .build();
    aws_sdk_apigatewaymanagement::Client::from_conf(config)
}

#[tokio::test]
async fn management_api_calls_must_carry_a_valid_signature() {
    use aws_sdk_apigatewaymanagement::error::ProvideErrorMetadata;
    let dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token("erin", "acme", &[])).await;
    let id = whoami(&mut ws).await;
    // Signed with the local credentials, as the control plane does: accepted.
    let good = sdk_client(&dev, "streamer-local", "streamer-local-secret");
    good.post_to_connection()
        .connection_id(&id)
        .data(Blob::new(&b"\"signed\""[..]))
        .send()
        .await
        .expect("a signed call");
    let frame: Value = recv(&mut ws).await;
    assert_eq!(frame, Value::from("signed"));
    // A forged signature (the right key id, the wrong secret): refused as AWS
    // refuses it, and nothing reaches the connection.
    let forged = sdk_client(&dev, "streamer-local", "not-the-secret");
    for (what, result) in [
        (
            "post",
            forged
                .post_to_connection()
                .connection_id(&id)
                .data(Blob::new(&b"\"forged\""[..]))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().code().map(str::to_owned)),
        ),
        (
            "get",
            forged
                .get_connection()
                .connection_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().code().map(str::to_owned)),
        ),
        (
            "delete",
            forged
                .delete_connection()
                .connection_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().code().map(str::to_owned)),
        ),
    ] {
        assert_eq!(
            result,
            Err(Some("InvalidSignatureException".to_owned())),
            "{what}"
        );
    }
    let unknown_key = sdk_client(&dev, "AKIDSOMEONEELSE", "streamer-local-secret");
    let err = unknown_key
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect_err("unknown key")
        .into_service_error();
    assert_eq!(err.code(), Some("UnrecognizedClientException"));
    nothing_pending(&mut ws).await;
}

#[tokio::test]
async fn management_api_requests_per_second_are_throttled() {
    // API Gateway: account-level request rate, 429 LimitExceededException.
    let dev = Dev::start(&[
        ("STREAMER_GATEWAY_MANAGEMENT_RPS", "1"),
        ("STREAMER_GATEWAY_MANAGEMENT_BURST", "2"),
    ])
    .await;
    let mut ws = dev.connect(&token("fay", "acme", &[])).await;
    let id = whoami(&mut ws).await;
    let client = sdk_client(&dev, "streamer-local", "streamer-local-secret");
    let mut codes = Vec::new();
    for _ in 0..4 {
        let result = client.get_connection().connection_id(&id).send().await;
        codes.push(match result {
            Ok(_) => 200,
            Err(err) => err.raw_response().map_or(0, |r| r.status().as_u16()),
        });
    }
    assert_eq!(&codes[..2], &[200, 200], "{codes:?}");
    assert!(codes[2..].contains(&429), "{codes:?}");
    eventually("the budget refills", || {
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .get_connection()
                .connection_id(&id)
                .send()
                .await
                .is_ok()
        }
    })
    .await;
}
