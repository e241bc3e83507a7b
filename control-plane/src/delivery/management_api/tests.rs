//! The lean `PostToConnection` against the SDK's, for the same request and
//! time: same method, same path encoding of awkward connection ids, same
//! canonical request (so the same signature over the same headers), and the
//! same values for the headers both send.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use aws_credential_types::Credentials;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// One request as it crossed the wire.
#[derive(Debug)]
struct Captured {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Accepts one connection, reads one request, answers 200.
async fn capture_one(listener: tokio::net::TcpListener) -> Captured {
    let (mut socket, _) = listener.accept().await.expect("accept");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.expect("read");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().expect("request line").split(' ');
        let method = first.next().expect("method").to_owned();
        let path = first.next().expect("path").to_owned();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while raw.len() < end + 4 + length {
            let n = socket.read(&mut buf).await.expect("read body");
            raw.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("answer");
        return Captured {
            method,
            path,
            headers,
            body: raw[end + 4..end + 4 + length].to_vec(),
        };
    }
}

fn sdk_config(time: SystemTime) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                Some("session-token-for-temporary-credentials".into()),
                None,
                "test",
            )),
        )
        .time_source(aws_smithy_async::time::StaticTimeSource::new(time))
        .build()
}

#[tokio::test]
async fn the_lean_request_is_the_sdks_request() {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let body = br#"{"type":"message","data":{"hello":"world"}}"#;
    for connection_id in ["L0SM9cOFvHcCIhw=", "a+b/c=d_e-f", "plain"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}/prod", listener.local_addr().expect("addr"));
        let captured = tokio::spawn(capture_one(listener));
        let client = Client::from_conf(
            aws_sdk_apigatewaymanagement::config::Builder::from(&sdk_config(time))
                .endpoint_url(&endpoint)
                .retry_config(RetryConfig::disabled())
                .build(),
        );
        client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(body.to_vec()))
            .send()
            .await
            .expect("sdk call");
        let sdk = captured.await.expect("captured");

        let api = ManagementApi::new(sdk_config(time), DeliveryConfig::default());
        let parsed = Endpoint::parse(&endpoint).expect("endpoint");
        let frame = PreparedFrame::new(body.to_vec());
        let lean = api
            .post_request(&parsed, connection_id, &frame, time)
            .await
            .expect("lean request");

        // Method and path (the encoding of the connection id) are the SDK's.
        assert_eq!(lean.method().as_str(), sdk.method, "{connection_id}");
        assert_eq!(
            lean.uri().path_and_query().map(|p| p.as_str()),
            Some(sdk.path.as_str()),
            "{connection_id}"
        );
        assert_eq!(sdk.body, body);
        // Every header both send has the SDK's value.
        for name in [
            "host",
            "content-type",
            "content-length",
            "x-amz-date",
            "x-amz-security-token",
        ] {
            assert_eq!(
                lean.headers().get(name).and_then(|v| v.to_str().ok()),
                sdk.headers.get(name).map(String::as_str),
                "{name} for {connection_id}"
            );
        }
        // Over the SDK's own signed headers, the lean signer computes the
        // SDK's signature, byte for byte.
        let authorization = &sdk.headers["authorization"];
        let signed = authorization
            .split("SignedHeaders=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("signed headers");
        let headers: Vec<(&str, &str)> = signed
            .split(';')
            .filter(|n| *n != "x-amz-date" && *n != "x-amz-security-token")
            .map(|n| (n, sdk.headers[n].as_str()))
            .collect();
        let credentials = api.signer.credentials().await.expect("credentials");
        let ours = api
            .signer
            .sign(&credentials, time, "POST", &sdk.path, &headers, &frame.hash);
        assert_eq!(&ours.authorization, authorization, "{connection_id}");
    }
}

#[test]
fn answers_are_classified_like_the_sdk_does() {
    assert_eq!(classify(200, None), Attempt::Done(Outcome::Delivered));
    assert_eq!(
        classify(410, Some("GoneException")),
        Attempt::Done(Outcome::Gone)
    );
    assert_eq!(classify(413, None), Attempt::Done(Outcome::TooLarge));
    assert_eq!(
        classify(429, Some("LimitExceededException")),
        Attempt::Throttled
    );
    assert_eq!(
        classify(400, Some("LimitExceededException")),
        Attempt::Throttled
    );
    assert_eq!(classify(503, None), Attempt::Retryable);
    assert_eq!(
        classify(403, Some("ForbiddenException")),
        Attempt::Done(Outcome::Failed)
    );
}
