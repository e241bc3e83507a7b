//! `streamerctl` against the real `dev` binary (on free ports) with real
//! WebSocket clients: JSON output parsed
//! back, human tables, and the exit codes scripts rely on.

use std::{process::Output, time::Duration};

use serde_json::{Value, json};
use streamer_test_kit::prelude::*;

async fn ctl(dev: &Dev, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamerctl"));
    command
        .args(args)
        .env_clear()
        .env("STREAMER_ADDR", format!("http://{}", dev.grpc))
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

/// `streamerctl <words> --output json` as the admin, parsed (`words` split
/// on white space).
async fn admin_json(dev: &Dev, words: &str) -> Value {
    let mut args: Vec<&str> = words.split_whitespace().collect();
    args.extend(["--output", "json"]);
    json_of(&ctl(dev, ADMIN_TOKEN, &args, None).await)
}

/// `streamerctl <words>` as `token`, for its exit code and output.
async fn run(dev: &Dev, token: &str, words: &str) -> Output {
    let args: Vec<&str> = words.split_whitespace().collect();
    ctl(dev, token, &args, None).await
}

#[tokio::test]
async fn streamerctl_queries_sends_and_fails_with_meaningful_codes() {
    let stack = Dev::start(&[
        ("STREAMER_DEMO_DURATION_MS", "100"),
        ("STREAMER_MESSAGES_PER_MINUTE", "100000"),
        ("STREAMER_MESSAGE_BURST", "10000"),
    ])
    .await;
    let mut alice = stack.connect(&token("alice", "acme", &[])).await;
    let mut bob = stack.connect(&token("bob", "acme", &[])).await;

    let health = admin_json(&stack, "health").await;
    assert_eq!(health["status"], "serving");

    let count = admin_json(&stack, "connections count --tenant acme").await;
    assert_eq!(count["count"], 2);
    let only_alice = admin_json(&stack, "connections count --tenant acme --user alice").await;
    assert_eq!(only_alice["count"], 1);
    // API Gateway ids may start with '-': an id, not a flag (found when a
    // CI run drew one).
    let hyphen = run(&stack, ADMIN_TOKEN, "connections get -9pDdRS3OTTFV1o=").await;
    assert_eq!(hyphen.status.code(), Some(5), "{hyphen:?}");
    let tenants = admin_json(&stack, "connections tenants").await;
    assert_eq!(tenants, json!([{"tenant_id": "acme", "connections": 2}]));
    let listed = admin_json(&stack, "connections list --tenant acme").await;
    let listed = listed.as_array().expect("array").clone();
    assert_eq!(listed.len(), 2);
    let alice_id = listed
        .iter()
        .find(|c| c["user_id"] == "alice")
        .expect("alice")["connection_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let got = admin_json(&stack, &format!("connections get {alice_id}")).await;
    assert_eq!(
        (got["tenant_id"].clone(), got["user_id"].clone()),
        (json!("acme"), json!("alice"))
    );

    // A human table by default.
    let table = run(&stack, ADMIN_TOKEN, "connections list --tenant acme").await;
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
    let report = admin_json(&stack, r#"send --tenant acme --data {"x":1}"#).await;
    assert_eq!(
        (report["targeted"].clone(), report["delivered"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(recv(&mut alice).await["data"], json!({"x": 1}));
    assert_eq!(recv(&mut bob).await["data"], json!({"x": 1}));
    // Each send gets a key of its own unless given one; a retry with the
    // printed key is a replay and delivers nothing again.
    assert_eq!(report["replayed"], json!(false));
    let key = report["idempotency_key"]
        .as_str()
        .expect("a key")
        .to_owned();
    let again = admin_json(
        &stack,
        &format!(r#"send --tenant acme --data {{"x":1}} --idempotency-key {key}"#),
    )
    .await;
    assert_eq!(
        (again["replayed"].clone(), again["delivered"].clone()),
        (json!(true), json!(2))
    );
    nothing_pending(&mut alice).await;
    nothing_pending(&mut bob).await;
    let report = json_of(
        &ctl(
            &stack,
            ADMIN_TOKEN,
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
    let frame = recv(&mut alice).await;
    assert_eq!(
        (frame["data"].clone(), frame["topic"].clone()),
        (json!([1, 2]), json!("t"))
    );
    let bad = run(&stack, ADMIN_TOKEN, "send --tenant acme --data {nope").await;
    assert_eq!(bad.status.code(), Some(2));

    // Groups.
    let added = admin_json(&stack, "groups add --tenant acme room --user bob").await;
    assert_eq!(added["added"], 1);
    let members = admin_json(&stack, "groups count --tenant acme room").await;
    assert_eq!(members["count"], 1);
    let groups = admin_json(&stack, "groups list --tenant acme").await;
    assert_eq!(groups, json!([{"group": "room", "members": 1}]));
    let report = admin_json(&stack, "send --tenant acme --group room --data 3").await;
    assert_eq!(report["delivered"], 1);
    assert_eq!(recv(&mut bob).await["data"], 3);

    // Requests (the dev demo processor serves echo_async; dev is ready
    // only once it has registered).
    send(
        &mut alice,
        r#"{"request_id":"job-1","action":"echo_async","payload":{"v":1}}"#,
    )
    .await;
    // The acknowledgment is the route's answer and progress goes through
    // the Management API: either may arrive first (as on API Gateway).
    let (mut acknowledged, mut completed) = (false, false);
    while !(acknowledged && completed) {
        match recv(&mut alice).await["type"].as_str() {
            Some("acknowledgment") => acknowledged = true,
            Some("complete") => completed = true,
            _ => {}
        }
    }
    let request = admin_json(&stack, "requests get --tenant acme job-1").await;
    assert_eq!(
        (request["status"].clone(), request["result"].clone()),
        (json!("completed"), json!({"v": 1}))
    );
    let requests = admin_json(&stack, "requests list --tenant acme --status completed").await;
    assert_eq!(requests.as_array().map(Vec::len), Some(1));
    let cancel = run(&stack, ADMIN_TOKEN, "requests cancel --tenant acme job-1").await;
    assert_eq!(
        cancel.status.code(),
        Some(1),
        "a finished request cannot be cancelled"
    );

    // Exit codes.
    let missing = run(&stack, ADMIN_TOKEN, "connections get NoSuchConn00000=").await;
    assert_eq!(missing.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let bad_token = run(
        &stack,
        "wrong-token-0123456789",
        "connections count --tenant acme",
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
    let usage = run(&stack, ADMIN_TOKEN, "connections count").await;
    assert_eq!(usage.status.code(), Some(2));

    // Disconnect closes the socket.
    let closed = admin_json(&stack, &format!("connections disconnect {alice_id}")).await;
    assert_eq!(closed["closed"], true);
}

#[tokio::test]
async fn streamerctl_mints_tokens_the_control_plane_accepts() {
    let dir = TempDir::new("streamerctl-key");
    let key_path = dir.0.join("private.pem");
    std::fs::write(&key_path, &keys().private_pem).expect("write key");
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
    // The control plane itself accepts it, with its claims.
    let dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token).await;
    send(&mut ws, r#"{"id":"w","action":"whoami"}"#).await;
    let who = recv(&mut ws).await;
    assert_eq!(
        (
            who["data"]["user_id"].clone(),
            who["data"]["tenant_id"].clone()
        ),
        (json!("carol"), json!("acme"))
    );
    assert_eq!(who["data"]["permissions"], json!(["reports:*"]));
}
