//! `dev` on DynamoDB (moto, started by `scripts/test.sh`) end to end:
//! `tables create`, two control planes on one table, gone connections
//! removed by broadcast and reconcile, a store that is down, and a restart
//! that loses no accepted request.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use streamer_control_plane::registry::dynamo;
use streamer_proto::v1;
use streamer_test_kit::{
    moto::{Tables, as_vars, client},
    prelude::*,
};

/// `dev` on `tables` (made with `tables create`), plus `extra`.
async fn dynamo_dev(tables: &Tables, extra: &[(&str, &str)]) -> Dev {
    let env = tables.env();
    let mut vars = as_vars(&env);
    vars.extend_from_slice(extra);
    Dev::start(&vars).await
}

#[tokio::test]
async fn dev_on_dynamodb_end_to_end() {
    let tables = Tables::new("dev");
    tables.create().await;
    tables.create().await;
    let table = tables.connections.clone();
    let dev = dynamo_dev(&tables, &[("STREAMER_SHARED_RATE_LIMITS", "true")]).await;
    let mut ws = dev.connect(&token("alice", "acme", &["echo"])).await;
    send(
        &mut ws,
        r#"{"id":"1","action":"echo","payload":{"on":"dynamodb"}}"#,
    )
    .await;
    assert_eq!(recv(&mut ws).await["data"], json!({"on": "dynamodb"}));
    let id = whoami(&mut ws).await;

    // The rows are plain DynamoDB items, queryable on both GSIs.
    let by_tenant = client()
        .query()
        .table_name(&table)
        .index_name(dynamo::TENANT_INDEX)
        .key_condition_expression("tenant_id = :t")
        .expression_attribute_values(":t", AttributeValue::S("acme".into()))
        .send()
        .await
        .expect("query tenant gsi");
    assert_eq!(by_tenant.count(), 1);
    let item = &by_tenant.items()[0];
    assert_eq!(item["connection_id"].as_s().expect("s"), &id);
    assert_eq!(item["user_id"].as_s().expect("s"), "alice");
    assert!(item["expires_at"].as_n().is_ok());
    let by_user = client()
        .query()
        .table_name(&table)
        .index_name(dynamo::USER_INDEX)
        .key_condition_expression("user_key = :u")
        .expression_attribute_values(":u", AttributeValue::S("acme#alice".into()))
        .send()
        .await
        .expect("query user gsi");
    assert_eq!(by_user.count(), 1);

    // The shared message limit applies (burst 20 by default).
    let mut limited = false;
    for i in 0..30 {
        send_json(&mut ws, &json!({"id": format!("m{i}"), "action": "echo"})).await;
        if recv(&mut ws).await["error"]["code"] == "RATE_LIMITED" {
            limited = true;
            break;
        }
    }
    assert!(limited, "flood limited through the shared limiter");

    // Broadcast reaches it; closing removes the row.
    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = broadcast
        .send(tenant_target("acme", json!(1)))
        .await
        .reported();
    assert_eq!(report.delivered, 1);
    ws.close(None).await.expect("close");
    eventually("row removed on $disconnect", || async {
        let item = client()
            .get_item()
            .table_name(&table)
            .key("connection_id", AttributeValue::S(id.clone()))
            .consistent_read(true)
            .send()
            .await
            .expect("get");
        item.item().is_none()
    })
    .await;
}

#[tokio::test]
async fn tenant_quota_with_two_control_planes_on_one_table() {
    let tables = Tables::new("two");
    tables.create().await;
    let quota = [("STREAMER_MAX_CONNECTIONS_PER_TENANT", "3")];
    let first = dynamo_dev(&tables, &quota).await;
    let second = dynamo_dev(&tables, &quota).await;
    let _a = first.connect(&token("u1", "shared", &[])).await;
    let _b = second.connect(&token("u2", "shared", &[])).await;
    let _c = first.connect(&token("u3", "shared", &[])).await;
    for dev in [&second, &first] {
        let (status, body, _) = refused(&format!(
            "{}?token={}",
            dev.ws_url(),
            token("u4", "shared", &[])
        ))
        .await;
        assert_eq!(status, 429);
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
    }
}

#[tokio::test]
async fn gone_connections_are_removed_by_broadcast_and_by_reconcile() {
    let tables = Tables::new("gone");
    tables.create().await;
    let table = tables.connections.clone();
    let dev = dynamo_dev(
        &tables,
        &[
            ("STREAMER_RECONCILE_IDLE_SECS", "0"),
            ("STREAMER_MAX_CONNECTIONS_PER_TENANT", "10"),
            TRUST_410_AT_ONCE,
        ],
    )
    .await;
    let mut live = dev.connect(&token("alice", "acme", &[])).await;
    let live_id = whoami(&mut live).await;

    // 410 on broadcast.
    dev.register_ghost("GhostA000000000=", "ghost", "acme")
        .await;
    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = broadcast
        .send(tenant_target("acme", json!("x")))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered, report.gone), (2, 1, 1));
    let row = client()
        .get_item()
        .table_name(&table)
        .key(
            "connection_id",
            AttributeValue::S("GhostA000000000=".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("get");
    assert!(row.item().is_none(), "the 410 removed the row");

    // The reconcile job asks the gateway about idle rows.
    dev.register_ghost("GhostB000000000=", "ghost", "acme")
        .await;
    dev.register_ghost("GhostC000000000=", "ghost", "acme")
        .await;
    let mut admin = streamer_proto::v1::admin_service_client::AdminServiceClient::with_interceptor(
        dev.grpc_channel(),
        streamer_proto::auth::BearerToken::new(ADMIN_TOKEN).expect("token"),
    );
    let report = admin
        .run_reconcile(v1::RunReconcileRequest {})
        .await
        .reported();
    assert_eq!(
        (report.checked, report.removed, report.alive, report.errors),
        (3, 2, 1, 0)
    );
    let status = admin
        .get_reconcile_status(v1::GetReconcileStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.last_run.expect("last run").removed, 2);
    let mut connections = connections(dev.grpc_channel(), ADMIN_TOKEN);
    let count = connections
        .count_connections(v1::CountConnectionsRequest {
            tenant_id: "acme".into(),
            user_id: String::new(),
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(count, 1);
    assert!(
        connections
            .get_connection(v1::GetConnectionRequest {
                connection_id: live_id
            })
            .await
            .is_ok()
    );

    // The counter was kept right: the quota of 10 has 9 free slots.
    let counter = client()
        .get_item()
        .table_name(&table)
        .key("connection_id", AttributeValue::S("tenant#acme".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get counter");
    assert_eq!(
        counter.item().expect("counter")["active"]
            .as_n()
            .expect("n"),
        "1"
    );

    // Service tokens cannot run maintenance.
    let mut service =
        streamer_proto::v1::admin_service_client::AdminServiceClient::with_interceptor(
            dev.grpc_channel(),
            streamer_proto::auth::BearerToken::new(SERVICE_A_TOKEN).expect("token"),
        );
    let err = service
        .run_reconcile(v1::RunReconcileRequest {})
        .await
        .expect_err("admin only");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_store_that_is_down_is_a_prompt_503() {
    // A port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dead = format!("http://{dead}");
    let dev = Dev::start(&[
        ("STREAMER_STORE", "dynamodb"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_DYNAMODB", &dead),
    ])
    .await;
    let started = std::time::Instant::now();
    let (status, body, _) = refused(&format!(
        "{}?token={}",
        dev.ws_url(),
        token("alice", "acme", &[])
    ))
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert!(
        !body.to_string().contains("dynamodb"),
        "no internal detail: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn a_control_plane_restart_on_dynamodb_loses_no_accepted_request() {
    use streamer_client::processor::{ActionSpec, Processor};
    let tables = Tables::new("restart");
    tables.create().await;
    let no_demo = [("STREAMER_DEMO_PROCESSOR", "false")];
    let mut first = dynamo_dev(&tables, &no_demo).await;
    let mut ws = first.connect(&token("alice", "acme", &[])).await;
    // Accepted while no processor is connected at all.
    send(
        &mut ws,
        r#"{"request_id":"keep-me","action":"durable_job","payload":{"n":7}}"#,
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].clone(), ack["status"].clone()),
        (json!("acknowledgment"), json!("queued")),
        "{ack}"
    );
    streamer_test_kit::dev::sigterm(&first.child);
    let exit = tokio::time::timeout(DEADLINE, first.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(exit.success());

    let second = dynamo_dev(&tables, &no_demo).await;
    let processor = Processor::new(&format!("http://{}", second.grpc), ADMIN_TOKEN).handle(
        ActionSpec::new("durable_job"),
        |job, _progress| async move {
            Ok(json!({ "doubled": job.payload["n"].as_i64().unwrap_or(0) * 2 }))
        },
    );
    let _task = tokio::spawn(processor.run(std::future::pending()));
    let mut requests =
        streamer_proto::v1::request_service_client::RequestServiceClient::with_interceptor(
            second.grpc_channel(),
            streamer_proto::auth::BearerToken::new(ADMIN_TOKEN).expect("token"),
        );
    eventually("the request accepted before the restart completes", || {
        let mut requests = requests.clone();
        async move {
            requests
                .get_request(v1::GetRequestRequest {
                    tenant_id: "acme".into(),
                    request_id: "keep-me".into(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .request
                        .is_some_and(|r| r.status == v1::RequestStatus::Completed as i32)
                })
        }
    })
    .await;
    let stored = requests
        .get_request(v1::GetRequestRequest {
            tenant_id: "acme".into(),
            request_id: "keep-me".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored.result_json).expect("json"),
        json!({"doubled": 14})
    );
    // The client, reconnected to the new instance, reads the result.
    let mut again = second.connect(&token("alice", "acme", &[])).await;
    send(
        &mut again,
        r#"{"id":"s","action":"subscribe","payload":{"request_id":"keep-me"}}"#,
    )
    .await;
    let state = recv(&mut again).await;
    assert_eq!(state["data"]["status"], "completed");
    assert_eq!(state["data"]["result"], json!({"doubled": 14}));
}

#[tokio::test]
async fn requests_past_what_a_dynamodb_item_keeps_fail_with_the_reason() {
    let tables = Tables::new("big-requests");
    tables.create().await;
    let dev = dynamo_dev(
        &tables,
        &[
            ("STREAMER_DEMO_DURATION_MS", "100"),
            ("STREAMER_MESSAGE_BURST", "100"),
        ],
    )
    .await;
    processor_serving(dev.grpc_channel(), ADMIN_TOKEN, "generate_report").await;
    let mut socket =
        streamer_client::socket::Socket::connect(&dev.ws_url(), &token("alice", "acme", &[]))
            .await
            .expect("connect");
    // A 2-year report renders about 700 KB of rows: more than one item keeps.
    let id = socket
        .request(
            "generate_report",
            json!({"start_date": "2023-01-01", "end_date": "2024-12-31", "format": "csv", "report_type": "annual", "include_data": true}),
        )
        .await
        .expect("send");
    let failed = loop {
        let frame = socket.recv().await.expect("open");
        if frame["request_id"] == id.as_str()
            && matches!(frame["type"].as_str(), Some("complete" | "error"))
        {
            break frame;
        }
    };
    assert_eq!(failed["error"]["code"], "PROCESSING_FAILED", "{failed}");
    let message = failed["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("the request store keeps at most 170000"),
        "{message}"
    );

    // A 300 KB payload (sent as chunks) is refused before it is queued.
    let id = socket
        .request(
            "generate_report",
            json!({"start_date": "2023-01-01", "end_date": "2023-01-02", "format": "csv", "report_type": "annual", "note": "n".repeat(300_000)}),
        )
        .await
        .expect("send");
    let refused = loop {
        let frame = socket.recv().await.expect("open");
        if frame["request_id"] == id.as_str() {
            break frame;
        }
    };
    assert_eq!(refused["error"]["code"], "PAYLOAD_TOO_LARGE", "{refused}");
}
