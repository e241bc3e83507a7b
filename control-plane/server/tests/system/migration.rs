//! Migrating from the Go system, end to end on moto: connections the Go
//! system holds (rows in its table, sockets open at the gateway) are
//! imported with `streamer-control-plane migrate legacy-connections` and
//! then found by tenant and user queries and reached by broadcasts; a second
//! import changes nothing; the dual write mirrors Streamer's own
//! connections into the Go system's table; and the Go system's demo client
//! frames (pay-theory/streamer `demo/client.js`) work unchanged.

use serde_json::{Value, json};
use streamer_control_plane::registry::{
    conformance::sample,
    legacy::{Shape, item_of, table_spec},
};
use streamer_proto::v1;
use streamer_test_kit::{fleet::Fleet, moto, prelude::*};

/// `migrate legacy-connections --from-table table` against the fleet's
/// tables; its report line.
async fn migrate(fleet: &Fleet, table: &str) -> String {
    let tables = moto::Tables {
        connections: fleet.table.clone(),
    };
    let output =
        tokio::process::Command::new(streamer_test_kit::dev::binary("streamer-control-plane"))
            .args(["migrate", "legacy-connections", "--from-table", table])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(tables.env())
            .env("STREAMER_MANAGEMENT_ENDPOINTS", &fleet.management_endpoint)
            .output()
            .await
            .expect("run migrate");
    assert!(
        output.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn legacy_connections_are_imported_reached_and_mirrored() {
    let mirror = moto::unique("go-connections");
    table_spec(Shape::Classic)
        .create(&moto::client(), &mirror)
        .await
        .expect("the Go system's table");
    let other_shape = moto::unique("go-dynamorm");
    table_spec(Shape::DynamOrm)
        .create(&moto::client(), &other_shape)
        .await
        .expect("the Go system's later table");
    let fleet = Fleet::start(1, &[("STREAMER_LEGACY_MIRROR_TABLE", &mirror)]).await;
    let management = fleet.ws.replacen("ws://", "http://", 1);

    // Two users of the Go system: their sockets are open at the gateway,
    // but Streamer's registry does not know them (their rows are dropped
    // here, as if the Go system had taken the connects).
    let mut sockets = Vec::new();
    let mut edge = edge(fleet.channel(0), EDGE_TOKEN);
    for (user, shape, table) in [
        ("go-user-1", Shape::Classic, &mirror),
        ("go-user-2", Shape::DynamOrm, &other_shape),
    ] {
        let mut ws = connect_ws(&fleet.url(&token(user, "legacy", &["read"]))).await;
        let id = whoami(&mut ws).await;
        edge.disconnect(v1::DisconnectRequest {
            connection_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("forget the row");
        let mut connection = sample(&id, "legacy", user);
        connection.endpoint = management.as_str().into();
        moto::client()
            .put_item()
            .table_name(table)
            .set_item(Some(item_of(&connection, shape)))
            .send()
            .await
            .expect("the Go system's row");
        sockets.push((ws, id));
    }
    let mut connections = connections(fleet.channel(0), ADMIN_TOKEN);
    let count = |user: &str| v1::CountConnectionsRequest {
        tenant_id: "legacy".into(),
        user_id: user.into(),
    };
    assert_eq!(
        connections
            .count_connections(count(""))
            .await
            .expect("count")
            .into_inner()
            .count,
        0
    );

    // The import: both shapes, then again (nothing changes).
    let first = migrate(&fleet, &mirror).await;
    assert!(first.contains("imported 1, already present 0"), "{first}");
    let first = migrate(&fleet, &other_shape).await;
    assert!(first.contains("imported 1, already present 0"), "{first}");
    let again = migrate(&fleet, &mirror).await;
    assert!(again.contains("imported 0, already present 1"), "{again}");
    for user in ["go-user-1", "go-user-2"] {
        assert_eq!(
            connections
                .count_connections(count(user))
                .await
                .expect("count")
                .into_inner()
                .count,
            1,
            "{user} found by a user query"
        );
    }

    // A broadcast to the tenant reaches both legacy sockets.
    let report = broadcast(fleet.channel(0), ADMIN_TOKEN)
        .send(tenant_target("legacy", json!({"from": "streamer"})))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered), (2, 2), "{report:?}");
    for (ws, _) in &mut sockets {
        let frame = recv(ws).await;
        assert_eq!(
            (frame["type"].clone(), frame["data"].clone()),
            (json!("message"), json!({"from": "streamer"}))
        );
    }

    // The dual write: a connection made through Streamer appears in the Go
    // system's table in its shape, and leaves it on disconnect.
    let mut fresh = connect_ws(&fleet.url(&token("new-user", "legacy", &["read"]))).await;
    let id = whoami(&mut fresh).await;
    let mirrored = || async {
        moto::client()
            .get_item()
            .table_name(&mirror)
            .set_key(Some(Shape::Classic.key(&id)))
            .consistent_read(true)
            .send()
            .await
            .expect("get")
            .item
    };
    let item = mirrored().await.expect("mirrored");
    let field = |name: &str| {
        item[name]
            .as_s()
            .map(String::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        (field("UserID"), field("TenantID"), field("Endpoint")),
        (
            "new-user".to_owned(),
            "legacy".to_owned(),
            management.clone()
        )
    );
    drop(fresh);
    eventually("the mirrored row leaves with the connection", || async {
        mirrored().await.is_none()
    })
    .await;
}

/// The frame `demo/client.js` sends (`sendRequest`), byte for byte in shape:
/// `action`, its own `connection_id`, `request_id`, `payload`.
fn go_request(action: &str, request_id: &str, payload: Value) -> Value {
    json!({
        "action": action,
        "connection_id": "demo-conn-12345678",
        "request_id": request_id,
        "payload": payload,
    })
}

/// What `demo/client.js` does with a frame: `progress` draws
/// `percentage` and `message`, `complete` prints `result`, `error` prints
/// `error.message`, anything else is printed whole. Returns what it would
/// show, or panics where the demo client would break.
fn demo_client_reads(frame: &Value) -> String {
    match frame["type"].as_str() {
        Some("progress") => {
            let percentage = frame["percentage"]
                .as_f64()
                .expect("percentage is a number");
            let message = frame["message"].as_str().expect("message is a string");
            format!("progress {percentage} {message}")
        }
        Some("complete") => format!("completed {}", frame["result"]),
        Some("error") => format!(
            "error {}",
            frame["error"]["message"].as_str().expect("error.message")
        ),
        _ => format!("message {frame}"),
    }
}

#[tokio::test]
async fn the_go_demo_clients_frames_work_unchanged() {
    let dev = Dev::start(&[("STREAMER_DEMO_DURATION_MS", "300")]).await;
    processor_serving(dev.grpc_channel(), ADMIN_TOKEN, "generate_report").await;
    // The demo client's token as demo/generate_jwt.go mints it (sub,
    // tenant_id, permissions "read,write"), sent as the Go connect handler
    // read it: the `Authorization` query parameter.
    let jwt = token("demo-user", "demo-tenant", &["read", "write"]);
    let mut ws = connect_ws(&format!("{}?Authorization={jwt}", dev.ws_url())).await;

    // `echo <message>`: a sync echo answered with a response.
    send_json(
        &mut ws,
        &go_request("echo", "req-1", json!({"message": "Hello, World!"})),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(demo_client_reads(&reply), format!("message {reply}"));
    assert_eq!(
        (
            reply["type"].clone(),
            reply["request_id"].clone(),
            reply["success"].clone()
        ),
        (json!("response"), json!("req-1"), json!(true))
    );
    assert_eq!(reply["data"], json!({"message": "Hello, World!"}));

    // `report`: acknowledged, progress to 100, then complete.
    let report = json!({"start_date": "2024-01-01", "end_date": "2024-01-31", "format": "pdf", "report_type": "monthly"});
    send_json(&mut ws, &go_request("generate_report", "req-2", report)).await;
    let mut shown = Vec::new();
    loop {
        let frame = recv(&mut ws).await;
        assert_eq!(frame["request_id"], "req-2", "{frame}");
        shown.push(demo_client_reads(&frame));
        if frame["type"] == "complete" {
            assert_eq!(frame["result"]["days"], 31);
            break;
        }
    }
    assert!(shown[0].contains("acknowledgment"), "{shown:?}");
    assert!(
        shown.iter().any(|s| s.starts_with("progress 100")),
        "{shown:?}"
    );

    // `echo_async <msg>`: the same with the payload echoed.
    send_json(
        &mut ws,
        &go_request(
            "echo_async",
            "req-3",
            json!({"message": "Testing async echo", "timestamp": "2026-11-29T09:00:00.000Z"}),
        ),
    )
    .await;
    let done = loop {
        let frame = recv(&mut ws).await;
        demo_client_reads(&frame);
        if frame["type"] == "complete" {
            break frame;
        }
    };
    assert_eq!(done["result"]["message"], "Testing async echo");

    // `data`: no processor serves process_data here; the demo client shows
    // the error's message (as it did when the Go processor refused the
    // payload it sends).
    send_json(
        &mut ws,
        &go_request(
            "process_data",
            "req-4",
            json!({"dataset_id": "demo-dataset-123", "operation": "transform"}),
        ),
    )
    .await;
    let refused = recv(&mut ws).await;
    assert_eq!(
        (refused["type"].clone(), refused["request_id"].clone()),
        (json!("error"), json!("req-4"))
    );
    assert!(
        demo_client_reads(&refused).starts_with("error "),
        "{refused}"
    );
}

/// The Go system's table refuses every dual write (here: it does not
/// exist): clients connect, talk, receive broadcasts and leave as usual,
/// Streamer's registry stays the truth, and each failed write is counted.
#[tokio::test]
async fn a_refused_dual_write_changes_nothing_for_clients_and_is_counted() {
    let tables = moto::Tables::new("mirror-refused");
    tables.create().await;
    let mut env = tables.env();
    env.push((
        "STREAMER_LEGACY_MIRROR_TABLE",
        moto::unique("no-such-go-table"),
    ));
    env.push(("STREAMER_METRICS_ADDR", "127.0.0.1:0".into()));
    let vars = moto::as_vars(&env);
    let dev = Dev::start(&vars).await;
    let failures = || async {
        dev.metrics_now()
            .await
            .get("streamer_legacy_mirror_failures_total")
            .copied()
            .unwrap_or(0.0)
    };
    let mut ws = dev.connect(&token("go-user", "mirror", &[])).await;
    send(&mut ws, r#"{"id":"e","action":"echo","payload":"fine"}"#).await;
    assert_eq!(recv(&mut ws).await["data"], "fine");
    let report = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(tenant_target("mirror", json!("still reached")))
        .await
        .reported();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(recv_type(&mut ws, "message").await["data"], "still reached");
    let counted = connections(dev.grpc_channel(), ADMIN_TOKEN)
        .count_connections(v1::CountConnectionsRequest {
            tenant_id: "mirror".into(),
            ..Default::default()
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(counted, 1, "the registry is the truth");
    let after_connect = failures().await;
    println!("checked: the refused dual write at connect counted {after_connect}");
    assert!(after_connect >= 1.0);
    drop(ws);
    eventually(
        "the refused delete at disconnect is counted too",
        || async { failures().await > after_connect },
    )
    .await;
}
