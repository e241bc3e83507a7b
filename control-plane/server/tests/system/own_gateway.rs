//! `streamer-gateway` hardened for the internet, tried as the processes it
//! ships as: TLS on the clients' listener, the Management API on a
//! listener of its own (TLS from a private CA the control plane trusts
//! with `STREAMER_GATEWAY_CA`) and absent from the public one, the PROXY
//! protocol header a Network Load Balancer puts before each connection
//! naming the client every per-address limit counts, and those limits:
//! sockets open per address and upgrades per second per address.

use std::{net::SocketAddr, sync::Arc};

use rustls::pki_types::pem::PemObject;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use streamer_listener::pki::{Ca, write};
use streamer_test_kit::{fleet::gateway_ready, prelude::*};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use super::batch::{PAIR_SECRET, tenant_send};

const PAIR: [(&str, &str); 2] = [
    ("STREAMER_GATEWAY_ACCESS_KEY_ID", "streamer-gateways"),
    ("STREAMER_GATEWAY_SECRET_ACCESS_KEY", PAIR_SECRET),
];

const SIGNING: [(&str, &str); 2] = [
    (
        "STREAMER_GATEWAY_SIGNING_ACCESS_KEY_ID",
        "streamer-gateways",
    ),
    ("STREAMER_GATEWAY_SIGNING_SECRET_ACCESS_KEY", PAIR_SECRET),
];

fn addr(ready: &Value, key: &str) -> SocketAddr {
    ready[key].as_str().expect(key).parse().expect("addr")
}

/// A TLS connection to `addr` trusting `ca` only.
async fn tls(addr: SocketAddr, ca: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("pem")).expect("ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .expect("tls handshake")
}

/// The next JSON text frame of `ws`, within the deadline.
async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("json");
        }
    }
}

/// The status line's code of a raw HTTP/1.1 request over `io`.
async fn status_of<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, request: &str) -> u16 {
    io.write_all(request.as_bytes()).await.expect("write");
    let mut head = vec![0u8; 12];
    tokio::time::timeout(DEADLINE, io.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_gateway_serves_clients_over_tls_and_its_management_api_only_on_its_own_tls_listener()
 {
    let dir = TempDir::new("own-gateway-tls");
    // The public certificate (in production a load balancer's or a
    // public CA's) and the private CA of the management listeners.
    let public_ca = Ca::new("public CA", 1).expect("ca");
    let public = public_ca.issue(&["127.0.0.1"], 1).expect("leaf");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    write(&cert, &public.cert_pem).expect("cert");
    write(&key, &public.key_pem).expect("key");
    let private_ca = Ca::new("gateways' private CA", 1).expect("ca");
    let management = private_ca.issue(&["127.0.0.1"], 1).expect("leaf");
    // The control plane trusts the private CA, given as PEM text (as ECS
    // injects a secret); the gateway's management pair likewise.
    let mut env = SIGNING.to_vec();
    env.push(("STREAMER_GATEWAY_CA", private_ca.pem()));
    let serve = Serve::start(&env).await;
    let mut gateway_env = PAIR.to_vec();
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    gateway_env.extend([
        ("STREAMER_GATEWAY_TLS_CERT", cert.as_ref()),
        ("STREAMER_GATEWAY_TLS_KEY", key.as_ref()),
        ("STREAMER_GATEWAY_MANAGEMENT_ADDR", "127.0.0.1:0"),
        (
            "STREAMER_GATEWAY_MANAGEMENT_TLS_CERT",
            management.cert_pem.as_str(),
        ),
        (
            "STREAMER_GATEWAY_MANAGEMENT_TLS_KEY",
            management.key_pem.as_str(),
        ),
    ]);
    let (_gateway, ready) = gateway_ready(
        &format!("http://{}", serve.grpc),
        "127.0.0.1:0".parse().expect("addr"),
        &gateway_env,
    )
    .await;
    let (public_addr, api_addr) = (addr(&ready, "gateway"), addr(&ready, "management"));
    assert_ne!(public_addr, api_addr);
    assert_eq!(
        ready["endpoint"],
        format!("https://{api_addr}/local"),
        "the control plane is told the management listener's https address"
    );

    // A client over TLS: connected, and a broadcast reaches it (the
    // control plane called the management listener over TLS it verified
    // against the private CA, signed with the pair, batched).
    let stream = tls(public_addr, public_ca.pem()).await;
    let url = format!(
        "wss://{public_addr}/local?token={}",
        token("t1", "own-tls", &[])
    );
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("in time")
        .expect("upgraded over tls");
    ws.send(Message::Text(r#"{"id":"who","action":"whoami"}"#.into()))
        .await
        .expect("send");
    let who = next_json(&mut ws).await;
    assert_eq!(who["type"], "response", "{who}");
    let report = tenant_send(&serve, "own-tls").await;
    assert_eq!((report.delivered, report.failed), (1, 0), "{report:?}");
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["data"]["to"], "all", "{frame}");

    // The public listener speaks TLS only, and has no Management API.
    let mut stream = tls(public_addr, public_ca.pem()).await;
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    assert_eq!(
        status_of(&mut stream, &request("/local/@capabilities")).await,
        404
    );
    let mut stream = tls(public_addr, public_ca.pem()).await;
    assert_eq!(
        status_of(&mut stream, &request("/local/@connections/abc")).await,
        404
    );
    let mut plain = TcpStream::connect(public_addr).await.expect("tcp");
    plain
        .write_all(request("/local").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext gets no HTTP answer"
    );
    // The management listener answers an unsigned call as API Gateway
    // does (403), over TLS from the private CA only.
    let mut stream = tls(api_addr, private_ca.pem()).await;
    assert_eq!(
        status_of(&mut stream, &request("/local/@capabilities")).await,
        403
    );
}

/// A PROXY protocol v2 header naming `client` (TCP over IPv4).
fn proxy_header(client: [u8; 4]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    out.extend_from_slice(&client);
    out.extend_from_slice(&[10, 0, 0, 5]);
    out.extend_from_slice(&40_000u16.to_be_bytes());
    out.extend_from_slice(&443u16.to_be_bytes());
    out
}

/// An upgrade through "the load balancer" for `client`: the socket, or the
/// refusal's status.
async fn through_lb(
    gateway: SocketAddr,
    client: [u8; 4],
    user: &str,
) -> Result<WebSocketStream<TcpStream>, u16> {
    let mut tcp = TcpStream::connect(gateway).await.expect("tcp");
    tcp.write_all(&proxy_header(client)).await.expect("header");
    let url = format!("ws://{gateway}/local?token={}", token(user, "own-lb", &[]));
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("an answer in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_load_balancer_each_client_address_gets_its_own_share_and_rate() {
    let serve = Serve::start(&[]).await;
    let grpc = format!("http://{}", serve.grpc);
    // One socket per address: the PROXY header's address counts, not the
    // load balancer's (every connection here comes from 127.0.0.1).
    let (_gateway, ready) = gateway_ready(
        &grpc,
        "127.0.0.1:0".parse().expect("addr"),
        &[
            ("STREAMER_GATEWAY_PROXY_PROTOCOL", "true"),
            ("STREAMER_GATEWAY_MAX_CONNECTIONS_PER_IP", "1"),
            ("STREAMER_GATEWAY_CONNECTS_PER_IP_PER_SECOND", "0"),
        ],
    )
    .await;
    let gateway = addr(&ready, "gateway");
    let first = through_lb(gateway, [203, 0, 113, 7], "p1")
        .await
        .expect("the address's first socket");
    assert_eq!(
        through_lb(gateway, [203, 0, 113, 7], "p2").await.err(),
        Some(429),
        "the same address's second socket is refused"
    );
    let _other = through_lb(gateway, [203, 0, 113, 8], "p3")
        .await
        .expect("another address has its own share");
    // A connection around the load balancer (no header) gets nothing.
    let mut bare = TcpStream::connect(gateway).await.expect("tcp");
    bare.write_all(b"GET /local HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, bare.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(answer.is_empty(), "no header, no answer");
    // The first address's place comes back when its socket closes.
    drop(first);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match through_lb(gateway, [203, 0, 113, 7], "p4").await {
            Ok(_) => break,
            Err(429) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the address never got its place back: {status}"),
        }
    }

    // Upgrades per second per address: a burst of 2 at 1 a second. Ten
    // back-to-back attempts from one address take far less than the 8 s
    // that would refill enough for all; another address is untouched.
    let (_gateway, ready) = gateway_ready(
        &grpc,
        "127.0.0.1:0".parse().expect("addr"),
        &[
            ("STREAMER_GATEWAY_PROXY_PROTOCOL", "true"),
            ("STREAMER_GATEWAY_CONNECTS_PER_IP_PER_SECOND", "1"),
            ("STREAMER_GATEWAY_CONNECTS_PER_IP_BURST", "2"),
        ],
    )
    .await;
    let gateway = addr(&ready, "gateway");
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        match through_lb(gateway, [198, 51, 100, 1], &format!("r{i}")).await {
            Ok(ws) => held.push(ws),
            Err(429) => refused += 1,
            Err(status) => panic!("unexpected status {status}"),
        }
    }
    let took = started.elapsed().as_secs_f64();
    assert!(
        held.len() as f64 <= 2.0 + took.ceil(),
        "{} accepted in {took:.2} s",
        held.len()
    );
    assert!(refused > 0, "none refused in {took:.2} s");
    through_lb(gateway, [198, 51, 100, 2], "r-other")
        .await
        .expect("another address has its own rate");
}

/// A one-answer stand-in for ECS's task metadata endpoint (what ECS serves
/// every container at `ECS_CONTAINER_METADATA_URI_V4`): `/task` answers
/// this task's ARN.
async fn task_metadata(task_arn: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = serde_json::json!({ "TaskARN": task_arn, "Family": "gateways" }).to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let found = String::from_utf8_lossy(&head).starts_with("GET /v4/container-1/task ");
                let answer = if found {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/v4/container-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_task_names_itself_by_its_task_id_and_reports_its_connections_for_scaling() {
    use tokio::io::AsyncBufReadExt;
    let metadata = task_metadata(
        "arn:aws:ecs:eu-west-1:123456789012:task/streamer/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    )
    .await;
    // The control plane admits any one label of the gateways' zone.
    let serve = Serve::start(&[(
        "STREAMER_MANAGEMENT_ENDPOINTS",
        "https://*.gateways.streamer.internal:8443/local",
    )])
    .await;
    let mut child =
        tokio::process::Command::new(streamer_test_kit::dev::binary("streamer-gateway"))
            .env_clear()
            .env("RUST_LOG", "warn")
            .env(
                "STREAMER_CONTROL_PLANE_URL",
                format!("http://{}", serve.grpc),
            )
            .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
            .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
            .env("ECS_CONTAINER_METADATA_URI_V4", &metadata)
            .env(
                "STREAMER_GATEWAY_PUBLIC_ENDPOINT",
                "https://{ecs_task_id}.gateways.streamer.internal:8443/local",
            )
            .env("STREAMER_GATEWAY_EMF_NAMESPACE", "Streamer/Gateways")
            .env("STREAMER_GATEWAY_EMF_SERVICE", "stack-gateways")
            .env("STREAMER_GATEWAY_EMF_INTERVAL_SECS", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("gateway");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("the gateway is running")
    };
    let ready: Value = loop {
        let line = next_line().await;
        if let Some(json) = line.strip_prefix("STREAMER_GATEWAY_READY ") {
            break serde_json::from_str(json).expect("json");
        }
    };
    assert_eq!(
        ready["endpoint"],
        "https://0f1e2d3c4b5a69788796a5b4c3d2e1f0.gateways.streamer.internal:8443/local",
        "the endpoint names this task"
    );
    // The control plane accepts that name (one label of the allowed zone).
    let gateway = addr(&ready, "gateway");
    let mut ws = streamer_test_kit::ws::connect(&format!(
        "ws://{gateway}/local?token={}",
        token("e1", "ecs", &[])
    ))
    .await;
    whoami(&mut ws).await;
    // Embedded-metric lines until one counts the connection.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let line = next_line().await;
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let metric = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(metric["Namespace"], "Streamer/Gateways", "{line}");
        assert_eq!(metric["Dimensions"][0][0], "Service", "{line}");
        assert_eq!(metric["Metrics"][0]["Name"], "Connections", "{line}");
        assert_eq!(record["Service"], "stack-gateways", "{line}");
        assert!(record["_aws"]["Timestamp"].as_i64().is_some(), "{line}");
        if record["Connections"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never counted: {line}"
        );
    }
}

#[tokio::test]
async fn a_gateway_naming_its_task_outside_ecs_refuses_to_start() {
    let output = tokio::process::Command::new(streamer_test_kit::dev::binary("streamer-gateway"))
        .env_clear()
        .env("STREAMER_CONTROL_PLANE_URL", "http://127.0.0.1:9")
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
        .env(
            "STREAMER_GATEWAY_PUBLIC_ENDPOINT",
            "https://{ecs_task_id}.gateways.streamer.internal:8443/local",
        )
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ECS_CONTAINER_METADATA_URI_V4"), "{stderr}");
}

/// The resource `name` of the template, as text: its lines up to the next
/// key indented two spaces.
fn resource(template: &str, name: &str) -> String {
    let mut lines = template
        .lines()
        .skip_while(|line| *line != format!("  {name}:"));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("{name} in the template"));
    let body = lines.take_while(|line| {
        let top = line.starts_with("  ") && !line.starts_with("   ") && !line.starts_with("  #");
        // A top-level section (`Outputs:`) ends it too.
        let section = !line.is_empty() && !line.starts_with(' ');
        !top && !section
    });
    std::iter::once(first)
        .chain(body)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_templates_own_gateways_wire_tls_the_proxy_header_private_names_and_scaling_together() {
    let template = include_str!("../../../../deploy/template.yaml");
    let targets = resource(template, "GatewayTargets");
    assert!(targets.contains("{ Key: proxy_protocol_v2.enabled, Value: \"true\" }"));
    let listener = resource(template, "GatewayListener");
    for needle in [
        "Protocol: TLS",
        "Port: 443",
        "CertificateArn: !Ref GatewayCertificateArn",
    ] {
        assert!(listener.contains(needle), "listener: {needle}");
    }
    let task = resource(template, "GatewayTask");
    for needle in [
        "{ Name: STREAMER_GATEWAY_PROXY_PROTOCOL, Value: \"true\" }",
        "{ Name: STREAMER_GATEWAY_MANAGEMENT_ADDR, Value: \"0.0.0.0:8443\" }",
        "https://{ecs_task_id}.gateways.${GatewayNamespaceName}:8443/${StageName}",
        "{ Name: STREAMER_GATEWAY_EMF_NAMESPACE, Value: Streamer/Gateways }",
        "{ Name: STREAMER_GATEWAY_EMF_SERVICE, Value: !Sub \"${AWS::StackName}-gateways\" }",
        "{ Name: STREAMER_CONTROL_PLANE_URL, Value: !Sub \"https://",
    ] {
        assert!(task.contains(needle), "task: {needle}");
    }
    // Secrets come from Secrets Manager, never as plain settings.
    let environment =
        &task[task.find("Environment:").expect("env")..task.find("Secrets:").expect("secrets")];
    for secret in [
        "STREAMER_GATEWAY_SECRET_ACCESS_KEY",
        "STREAMER_GATEWAY_MANAGEMENT_TLS_KEY",
        "STREAMER_EDGE_TOKEN:",
    ] {
        assert!(!environment.contains(secret), "{secret} in the environment");
    }
    // The management port is open to the control plane only.
    let group = resource(template, "GatewaySecurityGroup");
    let management = &group[group.find("FromPort: 8443").expect("8443")..];
    assert!(
        management[..management.find("Description").expect("desc")]
            .contains("SourceSecurityGroupId: !Ref ControlPlaneSecurityGroup")
    );
    // Scaled on the metric each task writes, under the name it writes it.
    let scaling = resource(template, "GatewayScaling");
    for needle in [
        "Namespace: Streamer/Gateways",
        "MetricName: Connections",
        "{ Name: Service, Value: !Sub \"${AWS::StackName}-gateways\" }",
        "TargetValue: !Ref GatewayConnectionsPerTask",
    ] {
        assert!(scaling.contains(needle), "scaling: {needle}");
    }
    // Each task's name is the one the control plane admits.
    assert!(template.contains(
        "!If [OwnGatewaysOn, !Sub \"https://*.gateways.${GatewayNamespaceName}:8443/${StageName}\", !Ref AWS::NoValue]"
    ));
    let discovery = resource(template, "GatewayDiscovery");
    assert!(discovery.contains("{ Type: SRV, TTL: 10 }"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_gateway_pings_idle_clients_under_a_load_balancers_idle_limit() {
    let serve = Serve::start(&[]).await;
    let (_gateway, ready) = gateway_ready(
        &format!("http://{}", serve.grpc),
        "127.0.0.1:0".parse().expect("addr"),
        &[("STREAMER_GATEWAY_PING_SECS", "1")],
    )
    .await;
    let gateway = addr(&ready, "gateway");
    let mut ws = streamer_test_kit::ws::connect(&format!(
        "ws://{gateway}/local?token={}",
        token("idle", "pings", &[])
    ))
    .await;
    // Two pings arrive without the client sending anything (its library
    // answers each with a pong).
    for _ in 0..2 {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a ping in time")
            .expect("open")
            .expect("frame");
        assert!(matches!(frame, Message::Ping(_)), "{frame:?}");
    }
    whoami(&mut ws).await;
}

/// A round-robin TCP load balancer on one loopback port in front of
/// `targets`: each connection goes to the next target that accepts it (a
/// stopped one is skipped, as a load balancer's health check would), its
/// bytes copied both ways.
async fn load_balancer(targets: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let start = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let targets = targets.clone();
            tokio::spawn(async move {
                for k in 0..targets.len() {
                    let target = targets[(start + k) % targets.len()];
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn user_target(tenant: &str, user: &str, data: &Value) -> streamer_proto::v1::SendRequest {
    streamer_proto::v1::SendRequest {
        target: Some(streamer_proto::v1::send_request::Target::User(
            streamer_proto::v1::UserTarget {
                tenant_id: tenant.into(),
                user_id: user.into(),
            },
        )),
        payload: Some(streamer_proto::v1::send_request::Payload::DataJson(
            data.to_string(),
        )),
        ..Default::default()
    }
}

/// The `data` of the next `message` frame (a chunked one joined).
async fn next_data(ws: &mut streamer_test_kit::ws::Ws) -> Value {
    loop {
        let frame = recv(ws).await;
        match frame["type"].as_str() {
            Some("message") => return frame["data"].clone(),
            Some("chunk") => {
                let count = frame["count"].as_u64().expect("count");
                let mut text = frame["data"].as_str().expect("piece").to_owned();
                for _ in 1..count {
                    let piece = recv_type(ws, "chunk").await;
                    text.push_str(piece["data"].as_str().expect("piece"));
                }
                let joined: Value = serde_json::from_str(&text).expect("a joined message");
                assert_eq!(joined["type"], "message", "{joined}");
                return joined["data"].clone();
            }
            _ => {}
        }
    }
}

/// Joins `room` (recovering after `since` when given): the answer's data.
async fn join(ws: &mut streamer_test_kit::ws::Ws, room: &str, since: Option<(u64, &str)>) -> Value {
    let mut payload = serde_json::json!({ "group": room });
    if let Some((offset, epoch)) = since {
        payload["since"] = offset.into();
        payload["epoch"] = epoch.into();
    }
    send_json(
        ws,
        &serde_json::json!({"id":"j","action":"join","payload":payload}),
    )
    .await;
    let answer = recv_type(ws, "response").await;
    assert_eq!(answer["success"], true, "{answer}");
    answer["data"].clone()
}

/// An echo through `ws`: answered (frames before the answer are skipped),
/// or how the socket ended (its close code; `None` for a socket that died
/// without one).
async fn probe(ws: &mut streamer_test_kit::ws::Ws) -> Result<(), Option<u16>> {
    let _ = ws
        .send(Message::Text(r#"{"id":"probe","action":"echo"}"#.into()))
        .await;
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("an answer or an end in time")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                if frame["request_id"] == "probe" {
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_own_gateways_behind_one_address_carry_every_kind_of_send_through_a_drain_and_a_kill()
 {
    const TENANT: &str = "own-fleet";
    let mut env = SIGNING.to_vec();
    env.push(super::history::HISTORY);
    let serve = Serve::start(&env).await;
    let grpc = format!("http://{}", serve.grpc);
    let mut gateways = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..3 {
        let (child, ready) =
            gateway_ready(&grpc, "127.0.0.1:0".parse().expect("addr"), &PAIR).await;
        targets.push(addr(&ready, "gateway"));
        gateways.push(child);
    }
    let lb = load_balancer(targets).await;
    let url = |user: &str| {
        format!(
            "ws://{lb}/local?token={}",
            token(user, TENANT, &["group:join:room-*"])
        )
    };
    let sender = broadcast(channel(serve.grpc), ADMIN_TOKEN);
    // One client on each gateway (the balancer takes turns).
    let mut clients = Vec::new();
    for user in ["ann", "ben", "cat"] {
        let mut ws = streamer_test_kit::ws::connect(&url(user)).await;
        whoami(&mut ws).await;
        clients.push(ws);
    }
    let [ann, ben, cat] = &mut clients[..] else {
        unreachable!()
    };
    let at = join(ann, "room-1", None).await;
    join(ben, "room-1", None).await;

    // Tenant, user and group sends, each through every gateway it needs
    // (batched: the gateways announce the batch call).
    let report = sender
        .clone()
        .send(tenant_target(TENANT, serde_json::json!("to all")))
        .await
        .reported();
    assert_eq!((report.delivered, report.failed), (3, 0), "{report:?}");
    for ws in [&mut *ann, &mut *ben, &mut *cat] {
        assert_eq!(next_data(ws).await, "to all");
    }
    let report = sender
        .clone()
        .send(user_target(TENANT, "ben", &serde_json::json!("to ben")))
        .await
        .reported();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(next_data(ben).await, "to ben");
    let report = sender
        .clone()
        .send(group_target(
            TENANT,
            "room-1",
            &serde_json::json!("to room-1"),
        ))
        .await
        .reported();
    assert_eq!(report.delivered, 2, "{report:?}");
    assert_eq!(next_data(ann).await, "to room-1");
    assert_eq!(next_data(ben).await, "to room-1");
    // A frame past 128 KB goes as chunks, each piece batched.
    let large = serde_json::json!("z".repeat(200_000));
    let report = sender
        .clone()
        .send(user_target(TENANT, "cat", &large))
        .await
        .reported();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(next_data(cat).await, large);
    nothing_pending(ann).await;
    nothing_pending(cat).await;

    // Ann leaves; the room hears two more; she comes back (through
    // whichever gateway the balancer picks) and recovers both.
    let epoch = at["epoch"].as_str().expect("epoch").to_owned();
    let seen = 1u64;
    drop(clients.remove(0));
    for text in ["missed 1", "missed 2"] {
        sender
            .clone()
            .send(group_target(TENANT, "room-1", &serde_json::json!(text)))
            .await
            .reported();
    }
    let mut ann = streamer_test_kit::ws::connect(&url("ann")).await;
    let back = join(&mut ann, "room-1", Some((seen, &epoch))).await;
    assert_eq!(back["recovered"], true, "{back}");
    let missed: Vec<&Value> = back["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(missed, ["missed 1", "missed 2"], "{back}");

    // Gateway 0 drained (SIGTERM): its clients are told to go (1001) and
    // come back through the balancer to the others.
    streamer_test_kit::dev::sigterm(&gateways[0]);
    let status = gateways[0].wait().await.expect("drained");
    assert!(status.success(), "a drain ends cleanly: {status:?}");
    // It has sent its close frames and run each `$disconnect` by now: a
    // probe finds its clients told to go (1001), the others answered.
    let mut survivors = vec![ann];
    survivors.append(&mut clients);
    let users = ["ann", "ben", "cat"];
    let mut moved = 0;
    for (i, ws) in survivors.iter_mut().enumerate() {
        match probe(ws).await {
            Ok(()) => {}
            Err(code) => {
                assert_eq!(code, Some(1001), "going away");
                *ws = streamer_test_kit::ws::connect(&url(users[i])).await;
                whoami(ws).await;
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "the drained gateway held a client");
    // Gateway 1 killed outright: its clients' sockets die with no close
    // frame; they reconnect. Its rows are the control plane's to write off.
    gateways[1].start_kill().expect("kill");
    let _ = gateways[1].wait().await;
    for (i, ws) in survivors.iter_mut().enumerate() {
        if probe(ws).await.is_err() {
            *ws = streamer_test_kit::ws::connect(&url(users[i])).await;
            whoami(ws).await;
        }
    }
    // Everyone is on gateway 2 now; a tenant send reaches each once (the
    // killed gateway's leftover rows count failed or gone, never delivered).
    let report = sender
        .clone()
        .send(tenant_target(TENANT, serde_json::json!("after")))
        .await
        .reported();
    assert_eq!(report.delivered, 3, "{report:?}");
    for ws in &mut survivors {
        assert_eq!(next_data(ws).await, "after");
        nothing_pending(ws).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_mid_rotation_takes_the_new_pair_and_the_previous_one_and_nothing_else() {
    const NEW: &str = "new-gateway-secret-0123456789abcdef-0123";
    const OLD: &str = "old-gateway-secret-0123456789abcdef-0123";
    let signer = |id: &'static str, secret: &'static str| {
        [
            ("STREAMER_GATEWAY_SIGNING_ACCESS_KEY_ID", id),
            ("STREAMER_GATEWAY_SIGNING_SECRET_ACCESS_KEY", secret),
        ]
    };
    // Control planes before the rotation, after it, and a stranger.
    let before = Serve::start(&signer("gateways-1", OLD)).await;
    let after = Serve::start(&signer("gateways-2", NEW)).await;
    let stranger = Serve::start(&signer("gateways-2", PAIR_SECRET)).await;
    for (serve, delivered) in [(&before, 1), (&after, 1), (&stranger, 0)] {
        let (_gateway, ready) = gateway_ready(
            &format!("http://{}", serve.grpc),
            "127.0.0.1:0".parse().expect("addr"),
            &[
                ("STREAMER_GATEWAY_ACCESS_KEY_ID", "gateways-2"),
                ("STREAMER_GATEWAY_SECRET_ACCESS_KEY", NEW),
                ("STREAMER_GATEWAY_PREVIOUS_ACCESS_KEY_ID", "gateways-1"),
                ("STREAMER_GATEWAY_PREVIOUS_SECRET_ACCESS_KEY", OLD),
            ],
        )
        .await;
        let mut ws = streamer_test_kit::ws::connect(&format!(
            "ws://{}/local?token={}",
            addr(&ready, "gateway"),
            token("r", "rotation", &[])
        ))
        .await;
        whoami(&mut ws).await;
        let report = tenant_send(serve, "rotation").await;
        assert_eq!(
            (report.delivered, report.failed),
            (delivered, 1 - delivered),
            "{report:?}"
        );
        if delivered == 1 {
            assert_eq!(recv_type(&mut ws, "message").await["data"]["to"], "all");
        }
        nothing_pending(&mut ws).await;
    }
}
