//! Tenants cannot reach each other's work or data, nor spend what every
//! tenant shares, tried from outside with one tenant's (or the edge's)
//! credentials against the real processes: Management API endpoints that
//! are not the deployment's own, action definitions scoped to their
//! tenant, fair and bounded queues, presence that costs deliveries per
//! interval, and metrics that name no tenant.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use streamer_proto::v1;
use streamer_test_kit::{
    moto::{Tables, as_vars, client, unique},
    prelude::*,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener standing for someone else's host: counts the connections
/// and keeps the requests it is sent.
struct Foreign {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Foreign {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, kept) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    if let Ok(n) = socket.read(&mut buf).await {
                        kept.lock()
                            .expect("lock")
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/evil", self.addr)
    }

    fn reached(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// `$connect` as the edge reports it, naming `endpoint`.
fn connect_naming(endpoint: &str, connection_id: &str, tenant: &str) -> v1::ConnectRequest {
    v1::ConnectRequest {
        connection_id: connection_id.into(),
        endpoint: endpoint.into(),
        query: [("token".to_owned(), token("mallory", tenant, &["*"]))].into(),
        source_ip: "203.0.113.9".into(),
        ..Default::default()
    }
}

/// A `$connect` that names another host's endpoint is refused 403 and
/// counted, and a broadcast to its tenant sends that host nothing (once,
/// it was registered, and every broadcast to the tenant went there, signed
/// with the deployment's credentials).
#[tokio::test]
async fn a_connect_naming_a_foreign_endpoint_is_refused_and_nothing_is_sent_there() {
    let foreign = Foreign::start().await;
    let dev = Dev::start(&[("STREAMER_METRICS_ADDR", "127.0.0.1:0")]).await;
    let mut live = dev.connect(&token("alice", "victim", &[])).await;
    let answer = edge(dev.grpc_channel(), EDGE_TOKEN)
        .connect(connect_naming(
            &foreign.endpoint(),
            "Evil0000000000A=",
            "victim",
        ))
        .await
        .expect("connect answered")
        .into_inner();
    println!(
        "injected: a $connect naming {}; answered {} {}",
        foreign.endpoint(),
        answer.status_code,
        answer.body
    );
    assert!(!answer.accepted);
    assert_eq!(answer.status_code, 403);
    assert!(answer.body.contains("FORBIDDEN"), "{}", answer.body);
    let counted = dev
        .metrics_now()
        .await
        .get(r#"streamer_foreign_endpoints_total{operation="connect"}"#)
        .copied()
        .unwrap_or(0.0);
    assert_eq!(counted, 1.0);
    let report = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(tenant_target("victim", json!({"card": "4111"})))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered), (1, 1), "{report:?}");
    assert_eq!(
        recv_type(&mut live, "message").await["data"]["card"],
        "4111"
    );
    assert_eq!(foreign.reached(), 0, "{:?}", foreign.requests.lock());
    println!("checked: refused 403, counted; the tenant's broadcast reached only its own client");
}

/// A row written before the list existed (or straight into the table)
/// names a foreign endpoint: delivery never calls it, the send counts it
/// failed, and `migrate legacy-connections` skips such a row.
#[tokio::test]
async fn rows_naming_a_foreign_endpoint_are_never_called_and_never_imported() {
    use streamer_control_plane::registry::{
        Registry, Ttl, conformance::sample, dynamo::DynamoRegistry, legacy,
    };
    let foreign = Foreign::start().await;
    let tables = Tables::new("foreign");
    tables.create().await;
    let env = tables.env();
    let vars = as_vars(&env);
    let dev = Dev::start(&vars).await;
    let registry = DynamoRegistry::new(
        client(),
        &tables.connections,
        Ttl::default(),
        streamer_control_plane::clock::Clock::new(),
    );
    let mut planted = sample("Planted000000A=", "victim", "mallory");
    planted.endpoint = foreign.endpoint().into();
    registry.insert(planted, 0).await.expect("plant a row");
    let mut live = dev.connect(&token("alice", "victim", &[])).await;
    let report = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(tenant_target("victim", json!("secret")))
        .await
        .reported();
    println!("a broadcast to a tenant with a planted row: {report:?}");
    assert_eq!(
        (report.targeted, report.delivered, report.failed),
        (2, 1, 1)
    );
    assert_eq!(recv_type(&mut live, "message").await["data"], "secret");
    assert_eq!(foreign.reached(), 0, "{:?}", foreign.requests.lock());

    // The Go system's table holds one row of ours and one naming the
    // foreign host: the import takes the first and skips the second.
    let go_table = unique("go-foreign");
    legacy::table_spec(legacy::Shape::Classic)
        .create(&client(), &go_table)
        .await
        .expect("the Go system's table");
    let ours = dev.ready["gateway"].as_str().expect("gateway").to_owned();
    let mut own = sample("GoOwn00000000A=", "victim", "bob");
    own.endpoint = format!("http://{ours}/{}", dev.stage).into();
    let mut theirs = sample("GoEvil0000000A=", "victim", "eve");
    theirs.endpoint = foreign.endpoint().into();
    for row in [&own, &theirs] {
        client()
            .put_item()
            .table_name(&go_table)
            .set_item(Some(legacy::item_of(row, legacy::Shape::Classic)))
            .send()
            .await
            .expect("put");
    }
    let output =
        tokio::process::Command::new(streamer_test_kit::dev::binary("streamer-control-plane"))
            .args(["migrate", "legacy-connections", "--from-table", &go_table])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(tables.env())
            .env(
                "STREAMER_MANAGEMENT_ENDPOINTS",
                format!("http://{ours}/{}", dev.stage),
            )
            .output()
            .await
            .expect("migrate");
    let said = String::from_utf8_lossy(&output.stdout);
    println!("migrate: {said}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        said.contains("imported 1,") && said.contains("foreign endpoint 1"),
        "{said}"
    );
    assert!(
        registry
            .get("GoEvil0000000A=")
            .await
            .expect("get")
            .is_none()
    );
}

/// `serve` on DynamoDB names the missing setting and exits 2 before it
/// binds or looks anything up in AWS; `any` says it on purpose.
#[tokio::test]
async fn serve_on_dynamodb_refuses_to_start_without_its_endpoints() {
    let run = |endpoints: Option<&str>| {
        let mut command =
            tokio::process::Command::new(streamer_test_kit::dev::binary("streamer-control-plane"));
        command
            .arg("serve")
            .env_clear()
            .env("STREAMER_STORE", "dynamodb")
            .env("STREAMER_JWT_PUBLIC_KEY", &keys().public_pem)
            .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
            .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STREAMER_GRPC_ADDR", "127.0.0.1:0");
        if let Some(endpoints) = endpoints {
            command.env("STREAMER_MANAGEMENT_ENDPOINTS", endpoints);
        }
        command.kill_on_drop(true).output()
    };
    let output = tokio::time::timeout(DEADLINE, run(None))
        .await
        .expect("exits")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("STREAMER_MANAGEMENT_ENDPOINTS"), "{stderr}");
    let output = tokio::time::timeout(DEADLINE, run(Some("ftp://nope")))
        .await
        .expect("exits")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not an https://"), "{stderr}");
}

/// `GET /metrics` with an optional `Authorization` header: status and body.
async fn scrape(addr: std::net::SocketAddr, authorization: Option<&str>) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let header = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    socket
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{header}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// Whoever reaches `/metrics` learns no tenant's name by default (once it
/// listed every tenant with its connection count), and with a token set,
/// nothing at all without it.
#[tokio::test]
async fn metrics_name_no_tenant_by_default_and_take_a_token() {
    let dev = Dev::start(&[
        ("STREAMER_METRICS_ADDR", "127.0.0.1:0"),
        ("STREAMER_METRICS_TOKEN", "metrics-token-0123456789"),
    ])
    .await;
    let _a = dev.connect(&token("alice", "tenant-secret-a", &[])).await;
    let _b = dev.connect(&token("bob", "tenant-secret-b", &[])).await;
    let addr = dev.metrics.expect("metrics");
    let (status, body) = scrape(addr, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("streamer_"), "{body}");
    let (status, _) = scrape(addr, Some("Bearer wrong-token-0123456789")).await;
    assert_eq!(status, 401);
    let (status, body) = scrape(addr, Some("Bearer metrics-token-0123456789")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#"streamer_connections_active{tenant="_all"} 2"#),
        "{body}"
    );
    assert!(!body.contains("tenant-secret"), "no tenant id in /metrics");
}
