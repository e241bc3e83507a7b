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
            .env("STREAMER_JWT_ISSUER", streamer_test_kit::token::ISSUER)
            .env("STREAMER_JWT_AUDIENCE", streamer_test_kit::token::AUDIENCE)
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

/// The test stack's config, plus two service tokens bound to tenants
/// `ta` and `tb` and a fleet-wide async action nobody serves.
fn two_tenants_config() -> String {
    format!(
        "{CONFIG_TOML}\n[[tokens.services]]\nname = \"ta-processor\"\ntoken = \"{TA}\"\ntenant_id = \"ta\"\n\n[[tokens.services]]\nname = \"tb-processor\"\ntoken = \"{TB}\"\ntenant_id = \"tb\"\n\n[[actions]]\nname = \"shared_job\"\nmode = \"async\"\n"
    )
}
const TA: &str = "tenant-a-service-token-0123456789";
const TB: &str = "tenant-b-service-token-0123456789";

/// A `ProcessorService.Work` stream opened with `token` that registers
/// `actions` (name, permission, max_attempts): its first answer.
async fn register(
    dev: &Dev,
    token: &str,
    actions: &[(&str, &str, u32)],
) -> (
    Result<tonic::Streaming<v1::WorkResponse>, tonic::Status>,
    tokio::sync::mpsc::Sender<v1::WorkRequest>,
) {
    let mut client = v1::processor_service_client::ProcessorServiceClient::with_interceptor(
        dev.grpc_channel(),
        streamer_proto::auth::BearerToken::new(token).expect("token"),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::WorkRequest {
        message: Some(v1::work_request::Message::Register(v1::Register {
            actions: actions
                .iter()
                .map(|(name, permission, attempts)| v1::ActionSpec {
                    name: (*name).into(),
                    permission: (*permission).into(),
                    max_attempts: *attempts,
                    lease_timeout_ms: 30_000,
                    ..Default::default()
                })
                .collect(),
            concurrency: 1,
            name: "tenancy".into(),
        })),
    })
    .await
    .expect("register");
    let answer = client
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (answer, tx)
}

/// Tenant `ta`'s processor defines `payments.refund` with no permission;
/// tenant `tb`'s defines it requiring `payments:refund`. A `tb` client
/// without that permission is refused `FORBIDDEN` (once, `ta`'s definition
/// was global and the request was queued), a `ta` client is served, and a
/// third tenant has no such action.
#[tokio::test]
async fn a_tenants_action_definitions_reach_only_its_own_clients() {
    let dev = Dev::start_with(&[], &two_tenants_config()).await;
    let (ta_stream, _ta) = register(&dev, TA, &[("payments.refund", "", 3)]).await;
    let _ta_stream = ta_stream.expect("ta defines it");
    let (tb_stream, _tb) = register(&dev, TB, &[("payments.refund", "payments:refund", 3)]).await;
    let _tb_stream = tb_stream.expect("tb defines its own");
    let refund = r#"{"request_id":"r1","action":"payments.refund","payload":{}}"#;

    let mut tb_client = dev.connect(&token("bob", "tb", &["echo"])).await;
    send(&mut tb_client, refund).await;
    let answer = recv(&mut tb_client).await;
    println!("tb client without payments:refund: {answer}");
    assert_eq!(answer["error"]["code"], "FORBIDDEN", "{answer}");
    assert_eq!(answer["request_id"], "r1");

    let mut ta_client = dev.connect(&token("alice", "ta", &[])).await;
    send(&mut ta_client, refund).await;
    assert_eq!(recv(&mut ta_client).await["type"], "acknowledgment");

    let mut tc_client = dev.connect(&token("carol", "tc", &["*"])).await;
    send(&mut tc_client, refund).await;
    assert_eq!(
        recv(&mut tc_client).await["error"]["code"],
        "INVALID_ACTION"
    );

    // A second processor of tb that disagrees is refused, naming why.
    let (second, _keep) = register(&dev, TB, &[("payments.refund", "", 3)]).await;
    let refused = second.expect_err("a different definition in tb's scope");
    println!("a second tb definition: {refused:?}");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("permission"),
        "{}",
        refused.message()
    );
}

/// What a hostile tenant-bound processor tries at registration: a
/// built-in, `chunk`, a configured action with another definition, and
/// more actions than its tenant may define. Each is refused with the
/// reason; nothing it asked for is defined.
#[tokio::test]
async fn a_tenant_bound_processor_cannot_take_reserved_configured_or_unbounded_names() {
    let dev = Dev::start_with(&[], &two_tenants_config()).await;
    for (name, attempts, code, why) in [
        ("echo", 3, tonic::Code::InvalidArgument, "sync action"),
        ("chunk", 3, tonic::Code::InvalidArgument, "reserved"),
        (
            "durable_job",
            9,
            tonic::Code::FailedPrecondition,
            "configuration",
        ),
    ] {
        let (answer, _keep) = register(&dev, TA, &[(name, "", attempts)]).await;
        let refused = answer.expect_err(name);
        println!("{name}: {refused:?}");
        assert_eq!(refused.code(), code, "{name}");
        assert!(
            refused.message().contains(why),
            "{name}: {}",
            refused.message()
        );
    }
    // 256 actions in one registration are the tenant's limit...
    let names: Vec<String> = (0..256).map(|i| format!("mine.{i}")).collect();
    let many: Vec<(&str, &str, u32)> = names.iter().map(|n| (n.as_str(), "", 3)).collect();
    let (answer, _keep) = register(&dev, TA, &many).await;
    let _stream = answer.expect("256 actions");
    // ...so a 257th from another processor of the tenant is refused, and
    // another tenant is not affected.
    let (answer, _keep2) = register(&dev, TA, &[("mine.more", "", 3)]).await;
    let refused = answer.expect_err("over the tenant's limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let (answer, _keep3) = register(&dev, TB, &[("mine.more", "", 3)]).await;
    answer.expect("tb has its own allowance");
    // 10,000 in one message: refused whole.
    let flood: Vec<String> = (0..10_000).map(|i| format!("flood.{i}")).collect();
    let flood: Vec<(&str, &str, u32)> = flood.iter().map(|n| (n.as_str(), "", 3)).collect();
    let (answer, _keep4) = register(&dev, TB, &flood).await;
    assert_eq!(
        answer.expect_err("10,000").code(),
        tonic::Code::InvalidArgument
    );
}

/// Waiting and running requests are bounded per user and per tenant: a
/// flood past either is refused `RATE_LIMITED` with the request id and
/// which bound it hit.
#[tokio::test]
async fn a_queue_flood_stops_at_the_user_and_tenant_bounds() {
    let dev = Dev::start(&[
        ("STREAMER_QUEUE_MAX_PER_USER", "3"),
        ("STREAMER_QUEUE_MAX_PER_TENANT", "5"),
        ("STREAMER_MESSAGE_BURST", "1000"),
    ])
    .await;
    let mut alice = dev.connect(&token("alice", "flood", &[])).await;
    let mut bob = dev.connect(&token("bob", "flood", &[])).await;
    let job = |id: &str| json!({"request_id": id, "action": "durable_job", "payload": {"n": 1}});
    for i in 0..3 {
        send_json(&mut alice, &job(&format!("a{i}"))).await;
        assert_eq!(recv(&mut alice).await["type"], "acknowledgment");
    }
    send_json(&mut alice, &job("a3")).await;
    let refused = recv(&mut alice).await;
    println!("alice's 4th: {refused}");
    assert_eq!(refused["error"]["code"], "RATE_LIMITED", "{refused}");
    assert_eq!(refused["request_id"], "a3");
    assert_eq!(refused["error"]["details"]["limit"], "user");
    assert!(
        refused["error"]["retry"]["after"].as_u64().is_some(),
        "{refused}"
    );
    for i in 0..2 {
        send_json(&mut bob, &job(&format!("b{i}"))).await;
        assert_eq!(recv(&mut bob).await["type"], "acknowledgment");
    }
    send_json(&mut bob, &job("b2")).await;
    let refused = recv(&mut bob).await;
    assert_eq!(refused["error"]["code"], "RATE_LIMITED", "{refused}");
    assert_eq!(refused["error"]["details"]["limit"], "tenant");
    let mut other = dev.connect(&token("carol", "calm", &[])).await;
    send_json(&mut other, &job("c0")).await;
    assert_eq!(
        recv(&mut other).await["type"],
        "acknowledgment",
        "another tenant is not affected"
    );
}

/// A request no processor leases within the wait TTL ends `expired`: its
/// subscriber gets a `TIMEOUT` error frame and `GetRequest` says so; on
/// DynamoDB its item gets a TTL.
async fn waiting_requests_expire(dev: &Dev, tenant: &str) -> v1::Request {
    let mut ws = dev.connect(&token("waiter", tenant, &[])).await;
    send(
        &mut ws,
        r#"{"request_id":"w1","action":"shared_job","payload":{}}"#,
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "acknowledgment");
    let started = std::time::Instant::now();
    let frame = recv_type(&mut ws, "error").await;
    println!("after {:?}: {frame}", started.elapsed());
    assert_eq!(frame["request_id"], "w1");
    assert_eq!(frame["error"]["code"], "TIMEOUT", "{frame}");
    assert_eq!(frame["error"]["details"]["status"], "expired");
    requests(dev.grpc_channel(), ADMIN_TOKEN)
        .get_request(v1::GetRequestRequest {
            tenant_id: tenant.into(),
            request_id: "w1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .request
        .expect("request")
}

#[tokio::test]
async fn waiting_requests_expire_on_the_embedded_store() {
    let dev = Dev::start_with(
        &[("STREAMER_QUEUE_WAIT_TTL_SECS", "2")],
        &two_tenants_config(),
    )
    .await;
    let request = waiting_requests_expire(&dev, "patient").await;
    assert_eq!(request.status, v1::RequestStatus::Expired as i32);
}

#[tokio::test]
async fn waiting_requests_expire_on_dynamodb() {
    let tables = Tables::new("expire");
    tables.create().await;
    let mut env = tables.env();
    env.push(("STREAMER_QUEUE_WAIT_TTL_SECS", "2".into()));
    let vars = as_vars(&env);
    let dev = Dev::start_with(&vars, &two_tenants_config()).await;
    let request = waiting_requests_expire(&dev, "patient").await;
    assert_eq!(request.status, v1::RequestStatus::Expired as i32);
    let item = client()
        .get_item()
        .table_name(format!("{}-requests", tables.connections))
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("patient#w1".into()),
        )
        .send()
        .await
        .expect("get item");
    let item = item.item().expect("the item");
    assert!(
        item.contains_key("expires_at"),
        "the item expires by TTL: {item:?}"
    );
    assert!(!item.contains_key("wait_shard") && !item.contains_key("tenant_queue_key"));
}

/// On DynamoDB, a processor bound to `tb` leases `tb`'s request within a
/// second behind 2,000 waiting requests of `ta` for the same action (once
/// it leased nothing in 10 s behind 15: its lease query read one page of
/// the action's queue and filtered by tenant after the read).
#[tokio::test]
async fn a_backlog_of_another_tenant_does_not_starve_a_processor_on_dynamodb() {
    const BACKLOG: usize = 2_000;
    let tables = Tables::new("starve");
    tables.create().await;
    let mut env = tables.env();
    env.push(("STREAMER_QUEUE_MAX_PER_USER", "0".into()));
    env.push(("STREAMER_QUEUE_MAX_PER_TENANT", "0".into()));
    env.push(("STREAMER_MESSAGE_BURST", "100000".into()));
    let vars = as_vars(&env);
    let dev = Dev::start_with(&vars, &two_tenants_config()).await;
    // The backlog: ta's requests for the fleet-wide `shared_job`, which no
    // ta processor serves, written as the control plane writes them (its
    // own queue code; one WebSocket message each takes moto ~25 ms).
    let queue = streamer_control_plane::requests::queue::dynamo::DynamoQueue::new(
        client(),
        &format!("{}-requests", tables.connections),
    );
    let started = std::time::Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    use futures_util::StreamExt;
    let created: Vec<_> = futures_util::stream::iter(0..BACKLOG)
        .map(|i| {
            let queue = &queue;
            async move {
                use streamer_control_plane::requests::queue::{Request, RequestQueue};
                queue
                    .create(Request::queued(
                        "ta",
                        &format!("ta-{i:05}"),
                        "shared_job",
                        json!({}),
                        "alice",
                        "conn-a",
                        3,
                        30_000,
                        now - 60_000 + i as i64,
                    ))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(created.iter().all(Result::is_ok), "the backlog is queued");
    println!("{BACKLOG} ta requests queued in {:?}", started.elapsed());
    let (stream, _tx) = register(&dev, TB, &[("shared_job", "", 3)]).await;
    let mut stream = stream.expect("tb serves the fleet's shared_job for its tenant");
    let mut tb = dev.connect(&token("bob", "tb", &[])).await;
    let sent = std::time::Instant::now();
    send(
        &mut tb,
        r#"{"request_id":"tb-1","action":"shared_job","payload":{}}"#,
    )
    .await;
    assert_eq!(recv(&mut tb).await["type"], "acknowledgment");
    let leased = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("a lease in time")
        .expect("stream")
        .expect("message");
    let waited = sent.elapsed();
    println!("tb's request leased {waited:?} after it was sent, behind {BACKLOG} of ta's");
    match leased.message {
        Some(v1::work_response::Message::Lease(lease)) => {
            assert_eq!(
                (lease.tenant_id.as_str(), lease.request_id.as_str()),
                ("tb", "tb-1")
            );
        }
        other => panic!("expected a lease, got {other:?}"),
    }
    assert!(waited < std::time::Duration::from_secs(1), "{waited:?}");
}

/// One client toggling join/leave 100 times in a group of 50 costs
/// deliveries per interval, not per event: the members hear every change,
/// in a few frames (once, each event read the whole group and sent a
/// frame to every member: 100 × 49 Management API calls).
#[tokio::test]
async fn a_presence_flood_costs_deliveries_per_interval_not_per_event() {
    const MEMBERS: usize = 50;
    const TOGGLES: usize = 100;
    let dev = Dev::start(&[
        ("STREAMER_PRESENCE_GROUPS", "room-*"),
        ("STREAMER_PRESENCE_INTERVAL_MS", "500"),
        ("STREAMER_MESSAGE_BURST", "1000"),
        ("STREAMER_METRICS_ADDR", "127.0.0.1:0"),
    ])
    .await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let mut ws = dev
            .connect(&token(&format!("m{i}"), "busy", &["group:join:*"]))
            .await;
        send(
            &mut ws,
            r#"{"id":"j","action":"join","payload":{"group":"room-flood"}}"#,
        )
        .await;
        assert_eq!(recv_type(&mut ws, "response").await["success"], true);
        members.push(ws);
    }
    // Let the members' own joins go out, then count from a quiet start.
    let posts = || async {
        dev.metrics_now()
            .await
            .get(r#"streamer_management_api_request_duration_seconds_count{operation="post_to_connection"}"#)
            .copied()
            .unwrap_or(0.0)
    };
    let mut last = posts().await;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let now = posts().await;
        if now == last {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "presence settles");
        last = now;
    }
    let mut flooder = dev
        .connect(&token("flooder", "busy", &["group:join:*"]))
        .await;
    let before = posts().await;
    let started = std::time::Instant::now();
    for i in 0..TOGGLES {
        let action = if i % 2 == 0 { "join" } else { "leave" };
        send_json(
            &mut flooder,
            &json!({"id": format!("t{i}"), "action": action, "payload": {"group": "room-flood"}}),
        )
        .await;
        recv_type(&mut flooder, "response").await;
    }
    let flood = started.elapsed();
    // Every member hears all 100 changes.
    let mut heard = 0;
    let mut frames = 0;
    while heard < TOGGLES {
        let frame = recv_type(&mut members[0], "presence").await;
        let flooded = frame["changes"].as_array().map_or(0, |changes| {
            changes.iter().filter(|c| c["user_id"] == "flooder").count()
        });
        if flooded > 0 {
            frames += 1;
            heard += flooded;
        }
    }
    assert_eq!(heard, TOGGLES);
    eventually("every member got its frames", || async {
        posts().await >= before + (MEMBERS * frames) as f64
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let calls = posts().await - before;
    let intervals = (flood.as_millis() / 500 + 2) as f64;
    println!(
        "a {TOGGLES}-toggle flood over {flood:?} in a {MEMBERS}-member group: {calls} Management API calls in {frames} frames per member (at most {} allowed; {} before coalescing)",
        intervals * MEMBERS as f64,
        TOGGLES * MEMBERS
    );
    assert!(calls <= intervals * MEMBERS as f64, "{calls}");
}
