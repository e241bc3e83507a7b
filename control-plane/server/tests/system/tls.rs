//! Encrypted in transit, tried against the real processes: `serve` with
//! `STREAMER_TLS_CERT`/`_KEY` serves TLS only and picks up a replaced
//! certificate, mutual TLS refuses clients without a certificate from the
//! CA, `dev --tls` carries a WebSocket client's echo with the emulator's
//! edge calls over mutual TLS and no edge token, bad certificate material
//! stops the process naming its setting, and the edge token rotates
//! through Secrets Manager (current → previous + new) with connects
//! flowing throughout.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde_json::json;
use streamer_client::ClientTls;
use streamer_listener::pki::{Ca, Leaf, write};
use streamer_proto::v1;
use streamer_test_kit::{
    fleet::gateway_with,
    moto::{aws_env, endpoint as moto_endpoint, unique},
    prelude::*,
};
use tonic::transport::Channel;

/// A channel to `addr` over TLS trusting `ca`, presenting `identity`.
fn tls_channel(addr: &str, ca: &str, identity: Option<&Leaf>) -> Channel {
    let tls = ClientTls {
        ca: Some(ca.to_owned()),
        identity: identity.map(|leaf| (leaf.cert_pem.clone(), leaf.key_pem.clone())),
    };
    streamer_proto::tls::endpoint(&format!("https://{addr}"), &tls, ("ca", "cert", "key"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// A server-API read with the admin token: `Ok` when the call was served.
async fn served(channel: Channel) -> Result<(), tonic::Status> {
    tokio::time::timeout(
        DEADLINE,
        connections(channel, ADMIN_TOKEN).count_connections(v1::CountConnectionsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("an answer in time")
    .map(|_| ())
}

/// Writes `leaf` as `cert.pem` / `key.pem` in `dir`; the paths.
fn files(dir: &Path, leaf: &Leaf) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    write(&cert, &leaf.cert_pem).expect("cert");
    write(&key, &leaf.key_pem).expect("key");
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_a_client_that_trusts_the_ca_refuses_plaintext_and_picks_up_a_new_certificate() {
    let dir = TempDir::new("tls");
    let ca = Ca::new("test CA", 1).expect("ca");
    let (cert, key) = files(&dir.0, &ca.issue(&["127.0.0.1"], 1).expect("leaf"));
    let serve = Serve::start(&[
        ("STREAMER_TLS_CERT", &cert),
        ("STREAMER_TLS_KEY", &key),
        ("STREAMER_METRICS_ADDR", "127.0.0.1:0"),
    ])
    .await;
    let addr = serve.grpc.to_string();
    served(tls_channel(&addr, ca.pem(), None))
        .await
        .expect("a client trusting the CA is served");
    let plaintext = served(channel(serve.grpc)).await;
    assert!(plaintext.is_err(), "a plaintext client is refused");
    let stranger = Ca::new("another CA", 1).expect("ca");
    assert!(
        served(tls_channel(&addr, stranger.pem(), None))
            .await
            .is_err(),
        "a client that does not trust the server's CA refuses it"
    );

    // Renewal: new files in place (another CA, so the test can tell which
    // certificate is served); the next new connection gets the new one.
    let renewed = Ca::new("renewed CA", 1).expect("ca");
    files(&dir.0, &renewed.issue(&["127.0.0.1"], 1).expect("leaf"));
    eventually("the replaced certificate is served", || {
        let channel = tls_channel(&addr, renewed.pem(), None);
        async move { served(channel).await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_from_the_ca() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new("test CA", 1).expect("ca");
    let (cert, key) = files(&dir.0, &ca.issue(&["127.0.0.1"], 1).expect("leaf"));
    let ca_file = dir.0.join("client-ca.pem");
    write(&ca_file, ca.pem()).expect("ca file");
    let serve = Serve::start(&[
        ("STREAMER_TLS_CERT", &cert),
        ("STREAMER_TLS_KEY", &key),
        ("STREAMER_TLS_CLIENT_CA", &ca_file.to_string_lossy()),
    ])
    .await;
    let addr = serve.grpc.to_string();
    let client = ca.issue(&["streamer-operator"], 1).expect("client");
    served(tls_channel(&addr, ca.pem(), Some(&client)))
        .await
        .expect("a client certificate from the CA is served");
    assert!(
        served(tls_channel(&addr, ca.pem(), None)).await.is_err(),
        "no client certificate: refused"
    );
    let stranger = Ca::new("another CA", 1).expect("ca");
    let forged = stranger.issue(&["streamer-edge"], 1).expect("leaf");
    assert!(
        served(tls_channel(&addr, ca.pem(), Some(&forged)))
            .await
            .is_err(),
        "a client certificate from another CA: refused"
    );
    // The edge's certificate is the edge role, no token; the operator's
    // certificate without a token is nobody.
    let edge_cert = ca.issue(&["streamer-edge"], 1).expect("edge");
    let connect = |channel: Channel| async move {
        let mut edge = v1::edge_service_client::EdgeServiceClient::new(channel);
        edge.connect(v1::ConnectRequest {
            connection_id: "TlsEdge000000A=".into(),
            endpoint: "http://127.0.0.1:9/local".into(),
            query: [("token".to_owned(), token("alice", "acme", &[]))]
                .into_iter()
                .collect(),
            source_ip: "198.51.100.7".into(),
            ..Default::default()
        })
        .await
    };
    let by_certificate = connect(tls_channel(&addr, ca.pem(), Some(&edge_cert))).await;
    assert!(
        by_certificate.is_ok(),
        "the edge certificate is the edge role: {by_certificate:?}"
    );
    let operator = connect(tls_channel(&addr, ca.pem(), Some(&client))).await;
    assert_eq!(
        operator.expect_err("not the edge").code(),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_carries_a_websocket_echo_with_the_edge_on_mutual_tls_and_no_edge_token() {
    let dev = Dev::start(&[("STREAMER_DEV_TLS", "true"), ("STREAMER_EDGE_TOKEN", "")]).await;
    let tls = &dev.ready["tls"];
    assert_eq!(tls["mutual"], json!(true), "{}", dev.ready);
    let read = |key: &str| std::fs::read_to_string(tls[key].as_str().expect(key)).expect(key);
    let (ca, cert, key) = (read("ca"), read("client_cert"), read("client_key"));
    let client = Leaf {
        cert_pem: cert,
        key_pem: key,
    };
    let addr = dev.grpc.to_string();
    served(tls_channel(&addr, &ca, Some(&client)))
        .await
        .expect("the banner's client certificate is served");
    assert!(
        served(channel(dev.grpc)).await.is_err(),
        "plaintext refused"
    );
    assert!(
        served(tls_channel(&addr, &ca, None)).await.is_err(),
        "no certificate refused"
    );
    // The emulator's edge reaches the gRPC port over mutual TLS: $connect,
    // the echo and the demo processor's async work all go through it.
    let mut ws = dev.connect(&token("alice", "acme", &["*"])).await;
    send_json(
        &mut ws,
        &json!({"id": "1", "action": "echo", "payload": {"over": "tls"}}),
    )
    .await;
    let echo = recv(&mut ws).await;
    assert_eq!(echo["data"], json!({"over": "tls"}), "{echo}");
}

#[tokio::test]
async fn bad_certificate_material_stops_serve_naming_the_setting() {
    let dir = TempDir::new("badtls");
    let ca = Ca::new("test CA", 1).expect("ca");
    let good = ca.issue(&["127.0.0.1"], 1).expect("leaf");
    let other = ca.issue(&["127.0.0.1"], 1).expect("leaf");
    let path = |name: &str, contents: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, contents).expect("write");
        p.to_string_lossy().into_owned()
    };
    let cert = path("cert.pem", &good.cert_pem);
    let key = path("key.pem", &good.key_pem);
    let not_pem = path("not.pem", "this is not a certificate\n");
    let other_key = path("other-key.pem", &other.key_pem);
    let expired = ca
        .issue_until(
            &["127.0.0.1"],
            SystemTime::now() - Duration::from_secs(86_400),
        )
        .expect("expired");
    let expired_cert = path("expired.pem", &expired.cert_pem);
    let expired_key = path("expired-key.pem", &expired.key_pem);
    for (what, env, setting) in [
        (
            "a certificate that is not PEM",
            vec![("STREAMER_TLS_CERT", &not_pem), ("STREAMER_TLS_KEY", &key)],
            "STREAMER_TLS_CERT",
        ),
        (
            "a key that does not match",
            vec![
                ("STREAMER_TLS_CERT", &cert),
                ("STREAMER_TLS_KEY", &other_key),
            ],
            "STREAMER_TLS_KEY",
        ),
        (
            "an expired certificate",
            vec![
                ("STREAMER_TLS_CERT", &expired_cert),
                ("STREAMER_TLS_KEY", &expired_key),
            ],
            "STREAMER_TLS_CERT",
        ),
        (
            "a client CA that is not PEM",
            vec![
                ("STREAMER_TLS_CERT", &cert),
                ("STREAMER_TLS_KEY", &key),
                ("STREAMER_TLS_CLIENT_CA", &not_pem),
            ],
            "STREAMER_TLS_CLIENT_CA",
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, stderr) = Serve::refused(&env).await;
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(stderr.contains(setting), "{what} names {setting}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

/// Puts `value` as the secret's new AWSCURRENT (the old one becomes
/// AWSPREVIOUS), as a rotation does.
async fn rotate(client: &aws_sdk_secretsmanager::Client, arn: &str, value: &str) {
    client
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .expect("put secret value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_token_rotation_through_secrets_manager_refuses_no_connect() {
    let moto = moto_endpoint();
    let config = aws_sdk_secretsmanager::config::Builder::new()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(&moto)
        .build();
    let secrets = aws_sdk_secretsmanager::Client::from_conf(config);
    let (old, new, newer) = (
        "edge-token-old-0123456789",
        "edge-token-new-0123456789",
        "edge-token-newer-0123456789",
    );
    let arn = secrets
        .create_secret()
        .name(unique("edge"))
        .secret_string(old)
        .send()
        .await
        .expect("create secret")
        .arn()
        .expect("arn")
        .to_owned();

    let mut aws: Vec<(&str, String)> = aws_env(&moto);
    aws.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.clone()));
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    };
    // Both edges' Management API endpoints are the deployment's own.
    let (gateway_addr, new_addr) = (free(), free());
    let management = format!("http://{gateway_addr}/local,http://{new_addr}/local");
    let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("STREAMER_EDGE_TOKEN", ""),
        ("STREAMER_EDGE_TOKEN_SECRET_ARN", arn.as_str()),
        ("STREAMER_MANAGEMENT_ENDPOINTS", management.as_str()),
        ("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "1000000"),
    ]);
    let mut serve = Serve::start(&env).await;
    let url = format!("http://{}", serve.grpc);
    // The edge that cold-started before the rotation holds the old token.
    let (_old_edge, old_ws) =
        gateway_with(&url, gateway_addr, &[("STREAMER_EDGE_TOKEN", old)]).await;

    // Clients connect throughout; none may be refused.
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let connecting = {
        let (stop, accepted, refused, ws) = (
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            old_ws.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let url = format!("{ws}?token={}", token(&format!("u{i}"), "acme", &[]));
                match tokio_tungstenite::connect_async(&url).await {
                    Ok((mut socket, _)) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let _ = socket.close(None).await;
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    eventually("connects flow", || {
        let accepted = accepted.clone();
        async move { accepted.load(Ordering::SeqCst) > 5 }
    })
    .await;

    // Rotate: the secret's current value is the new token, the old one is
    // its AWSPREVIOUS; the control plane reads both on SIGHUP.
    rotate(&secrets, &arn, new).await;
    let reloads = |serve: &Serve| {
        serve
            .logs()
            .iter()
            .filter(|l| l["message"] == "tokens read again (SIGHUP)")
            .count()
    };
    streamer_test_kit::dev::signal(&serve.child, "-HUP");
    eventually("the tokens are read again", || {
        let n = reloads(&serve);
        async move { n == 1 }
    })
    .await;
    // An edge that cold-starts now reads the new token from the secret.
    let mut gateway_env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    gateway_env.extend([
        ("STREAMER_EDGE_TOKEN", ""),
        ("STREAMER_EDGE_TOKEN_SECRET_ARN", arn.as_str()),
    ]);
    let (_new_edge, new_ws) = gateway_with(&url, new_addr, &gateway_env).await;
    let mut fresh = connect_ws(&format!("{new_ws}?token={}", token("n1", "acme", &[]))).await;
    assert!(
        !whoami(&mut fresh).await.is_empty(),
        "connected through the new edge"
    );
    let before = accepted.load(Ordering::SeqCst);
    eventually("the old edge keeps connecting after the rotation", || {
        let accepted = accepted.clone();
        async move { accepted.load(Ordering::SeqCst) > before + 5 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    connecting.await.expect("connecting task");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "no connect refused during the rotation ({} accepted)",
        accepted.load(Ordering::SeqCst)
    );

    // The next rotation retires the old token: its holder is refused.
    rotate(&secrets, &arn, newer).await;
    streamer_test_kit::dev::signal(&serve.child, "-HUP");
    eventually("the tokens are read again", || {
        let n = reloads(&serve);
        async move { n == 2 }
    })
    .await;
    let url = format!("{old_ws}?token={}", token("late", "acme", &[]));
    assert!(
        tokio_tungstenite::connect_async(&url).await.is_err(),
        "a token two rotations old is refused"
    );
    let _ = serve.child.start_kill();
}

#[test]
fn the_template_encrypts_every_hop_and_keeps_the_edge_token_out_of_settings() {
    let template = include_str!("../../../../deploy/template.yaml");
    let globals = &template[template.find("Globals:").expect("globals")
        ..template.find("Resources:").expect("resources")];
    assert!(
        globals.contains("STREAMER_CONTROL_PLANE_URL: !Sub \"https://"),
        "the Lambdas call the control plane over TLS"
    );
    assert!(
        !globals.contains("STREAMER_EDGE_TOKEN:") && !globals.contains("resolve:secretsmanager"),
        "no token in the Lambdas' settings"
    );
    assert!(globals.contains("STREAMER_EDGE_TOKEN_SECRET_ARN: !Ref EdgeTokenSecret"));
    let listener = &template[template.find("  ControlPlaneListener:").expect("listener")..];
    let listener = &listener[..listener.find("\n  ControlPlaneZone:").expect("next")];
    for needle in [
        "Protocol: TLS",
        "CertificateArn: !Ref ControlPlaneCertificateArn",
        "AlpnPolicy: [HTTP2Only]",
    ] {
        assert!(listener.contains(needle), "listener: {needle}");
    }
    assert!(template.contains("      Protocol: TLS\n      Port: 50051\n      TargetType: ip"));
    assert!(template.contains("{ Name: STREAMER_TLS_CERT, Value: self-signed }"));
    // Each edge function may read that one secret and nothing else of
    // Secrets Manager.
    assert_eq!(
        template
            .matches("- AWSSecretsManagerGetSecretValuePolicy:\n            SecretArn: !Ref EdgeTokenSecret")
            .count(),
        3
    );
    assert!(template.contains("\"sourceIp\":\"$context.identity.sourceIp\""));
}

#[tokio::test]
async fn serve_with_a_self_signed_certificate_serves_tls_only() {
    let serve = Serve::start(&[("STREAMER_TLS_CERT", "self-signed")]).await;
    assert!(
        served(channel(serve.grpc)).await.is_err(),
        "plaintext refused"
    );
    // The certificate is the task's own: a client that checks it against
    // a CA refuses it at the handshake (the load balancer does not check).
    let stranger = Ca::new("another CA", 1).expect("ca");
    let refused = served(tls_channel(&serve.grpc.to_string(), stranger.pem(), None)).await;
    let message = format!("{refused:?}");
    assert!(
        refused.is_err() && !message.contains("h2 protocol error"),
        "{message}"
    );
}
