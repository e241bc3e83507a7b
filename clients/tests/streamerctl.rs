//! `streamerctl` against a real control plane and gateway (started
//! in-process on free ports) with real WebSocket clients: JSON output parsed
//! back, human tables, and the exit codes scripts rely on.

use std::{collections::HashMap, process::Output, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use streamer_control_plane::{
    config::{Config, JwtConfig},
    dev::{self, DevStack},
    jwt::{Claims, JwtVerifier, RsaKeyPair, generate_rsa_key_pair, mint_rs256, now_secs},
};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "ctl-test-admin-token-0000";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn stack(keys: &RsaKeyPair) -> DevStack {
    let vars: HashMap<String, String> = [
        ("STREAMER_JWT_PUBLIC_KEY", keys.public_pem.as_str()),
        ("STREAMER_ADMIN_TOKEN", ADMIN),
        ("STREAMER_GRPC_ADDR", "127.0.0.1:0"),
        ("STREAMER_GATEWAY_ADDR", "127.0.0.1:0"),
        ("STREAMER_DEMO_DURATION_MS", "100"),
        // Waiting for the demo processor sends retries; keep them clear of
        // the message rate limit on a slow machine.
        ("STREAMER_MESSAGES_PER_MINUTE", "100000"),
        ("STREAMER_MESSAGE_BURST", "10000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::load(None, &move |name| vars.get(name).cloned()).expect("config");
    dev::start(config).await.expect("stack")
}

fn token(keys: &RsaKeyPair, sub: &str, tenant: &str, permissions: &[&str]) -> String {
    let claims = Claims {
        sub: sub.into(),
        tenant_id: tenant.into(),
        exp: now_secs() + 600,
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        iss: None,
        aud: None,
    };
    mint_rs256(&keys.private_pem, &claims).expect("token")
}

async fn connect(stack: &DevStack, token: &str) -> Ws {
    let url = format!(
        "ws://{}/{}?token={token}",
        stack.ready.gateway, stack.ready.stage
    );
    tokio_tungstenite::connect_async(url).await.expect("ws").0
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn ctl(stack: &DevStack, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamerctl"));
    command
        .args(args)
        .env_clear()
        .env("STREAMER_ADDR", format!("http://{}", stack.ready.grpc))
        .env("STREAMER_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn streamerctl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits")
        .expect("output")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json output")
}

#[tokio::test]
async fn streamerctl_queries_sends_and_fails_with_meaningful_codes() {
    let keys = generate_rsa_key_pair().expect("keys");
    let stack = stack(&keys).await;
    let mut alice = connect(&stack, &token(&keys, "alice", "acme", &[])).await;
    let mut bob = connect(&stack, &token(&keys, "bob", "acme", &[])).await;

    let health = json_of(&ctl(&stack, ADMIN, &["health", "--output", "json"], None).await);
    assert_eq!(health["status"], "serving");

    let count = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "connections",
                "count",
                "--tenant",
                "acme",
                "--output",
                "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(count["count"], 2);
    let only_alice = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "connections",
                "count",
                "--tenant",
                "acme",
                "--user",
                "alice",
                "--output",
                "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(only_alice["count"], 1);
    let listed = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "connections",
                "list",
                "--tenant",
                "acme",
                "--output",
                "json",
            ],
            None,
        )
        .await,
    );
    let listed = listed.as_array().expect("array").clone();
    assert_eq!(listed.len(), 2);
    let alice_id = listed
        .iter()
        .find(|c| c["user_id"] == "alice")
        .expect("alice")["connection_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let got = json_of(
        &ctl(
            &stack,
            ADMIN,
            &["connections", "get", &alice_id, "--output", "json"],
            None,
        )
        .await,
    );
    assert_eq!(
        (got["tenant_id"].clone(), got["user_id"].clone()),
        (json!("acme"), json!("alice"))
    );

    // A human table by default.
    let table = ctl(
        &stack,
        ADMIN,
        &["connections", "list", "--tenant", "acme"],
        None,
    )
    .await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines()
            .next()
            .is_some_and(|h| h.starts_with("CONNECTION_ID")),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3);

    // Send: to the tenant (--data), to one connection (stdin).
    let report = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "send",
                "--tenant",
                "acme",
                "--data",
                r#"{"x":1}"#,
                "--output",
                "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(
        (report["targeted"].clone(), report["delivered"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(next_json(&mut alice).await["data"], json!({"x": 1}));
    assert_eq!(next_json(&mut bob).await["data"], json!({"x": 1}));
    let report = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "send",
                "--connection",
                &alice_id,
                "--topic",
                "t",
                "--output",
                "json",
            ],
            Some("[1,2]"),
        )
        .await,
    );
    assert_eq!(report["delivered"], 1);
    let frame = next_json(&mut alice).await;
    assert_eq!(
        (frame["data"].clone(), frame["topic"].clone()),
        (json!([1, 2]), json!("t"))
    );
    let bad = ctl(
        &stack,
        ADMIN,
        &["send", "--tenant", "acme", "--data", "{nope"],
        None,
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));

    // Groups.
    let added = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "groups", "add", "--tenant", "acme", "room", "--user", "bob", "--output", "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(added["added"], 1);
    let members = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "groups", "count", "--tenant", "acme", "room", "--output", "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(members["count"], 1);
    let report = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "send", "--tenant", "acme", "--group", "room", "--data", "3", "--output", "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(report["delivered"], 1);
    assert_eq!(next_json(&mut bob).await["data"], 3);

    // Requests (the dev demo processor serves echo_async).
    let mut delay = Duration::from_millis(10);
    loop {
        alice
            .send(Message::Text(
                r#"{"request_id":"job-1","action":"echo_async","payload":{"v":1}}"#.into(),
            ))
            .await
            .expect("send");
        let reply = next_json(&mut alice).await;
        if reply["type"] == "acknowledgment" {
            break;
        }
        assert_eq!(reply["error"]["code"], "INVALID_ACTION", "{reply}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
    loop {
        if next_json(&mut alice).await["type"] == "complete" {
            break;
        }
    }
    let request = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "requests", "get", "--tenant", "acme", "job-1", "--output", "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(
        (request["status"].clone(), request["result"].clone()),
        (json!("completed"), json!({"v": 1}))
    );
    let requests = json_of(
        &ctl(
            &stack,
            ADMIN,
            &[
                "requests",
                "list",
                "--tenant",
                "acme",
                "--status",
                "completed",
                "--output",
                "json",
            ],
            None,
        )
        .await,
    );
    assert_eq!(requests.as_array().map(Vec::len), Some(1));
    let cancel = ctl(
        &stack,
        ADMIN,
        &["requests", "cancel", "--tenant", "acme", "job-1"],
        None,
    )
    .await;
    assert_eq!(
        cancel.status.code(),
        Some(1),
        "a finished request cannot be cancelled"
    );

    // Exit codes.
    let missing = ctl(
        &stack,
        ADMIN,
        &["connections", "get", "NoSuchConn00000="],
        None,
    )
    .await;
    assert_eq!(missing.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let bad_token = ctl(
        &stack,
        "wrong-token-0123456789",
        &["connections", "count", "--tenant", "acme"],
        None,
    )
    .await;
    assert_eq!(bad_token.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&bad_token.stderr).contains("not authenticated"));
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamerctl"))
        .args(["--addr", &format!("http://{free}"), "health"])
        .env_clear()
        .output()
        .await
        .expect("run");
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
    let usage = ctl(&stack, ADMIN, &["connections", "count"], None).await;
    assert_eq!(usage.status.code(), Some(2));

    // Disconnect closes the socket.
    let closed = json_of(
        &ctl(
            &stack,
            ADMIN,
            &["connections", "disconnect", &alice_id, "--output", "json"],
            None,
        )
        .await,
    );
    assert_eq!(closed["closed"], true);
    stack.stop().await.expect("stop");
}

#[tokio::test]
async fn streamerctl_mints_tokens_the_control_plane_accepts() {
    let keys = generate_rsa_key_pair().expect("keys");
    let dir = std::env::temp_dir().join(format!(
        "streamerctl-key-{}-{:x}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_path = dir.join("private.pem");
    std::fs::write(&key_path, &keys.private_pem).expect("write key");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamerctl"))
        .args(["token", "--private-key"])
        .arg(&key_path)
        .args([
            "--sub",
            "carol",
            "--tenant",
            "acme",
            "--permission",
            "reports:*",
            "--expires-in",
            "600",
        ])
        .env_clear()
        .output()
        .await
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let verifier = JwtVerifier::new(&JwtConfig {
        public_key_pem: keys.public_pem.clone(),
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        issuer: None,
        audience: None,
        leeway: Duration::ZERO,
    })
    .expect("verifier");
    let identity = verifier.verify(&token).expect("valid token");
    assert_eq!(
        (identity.user_id.as_str(), identity.tenant_id.as_str()),
        ("carol", "acme")
    );
    assert_eq!(identity.permissions, vec!["reports:*".to_owned()]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
