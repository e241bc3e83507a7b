//! The DynamoDB backend against a real DynamoDB-compatible server over HTTP
//! (moto, started by `scripts/test.sh`): the registry conformance suite,
//! paging thousands of rows, the quota across replicas, the shared rate
//! limit, `tables create`, and `dev` on DynamoDB end to end.

mod support;

use std::{sync::Arc, time::Duration};

use aws_sdk_dynamodb::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::AttributeValue,
};
use futures_util::{StreamExt, stream};
use serde_json::json;
use streamer_control_plane::{
    config::LimitsConfig,
    registry::{
        Registry, RegistryError, Scope, Ttl, collect_all, conformance,
        dynamo::{self, DynamoRegistry},
    },
    shared_limit::{self, SharedCheck, SharedMessageLimiter},
};
use streamer_proto::v1;
use support::*;

fn endpoint() -> String {
    std::env::var("STREAMER_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "STREAMER_TEST_DYNAMODB_ENDPOINT is not set: run `bash scripts/test.sh`, which starts a \
             DynamoDB-compatible server (moto) for these tests"
        )
    })
}

fn client() -> Client {
    let config = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint())
        .build();
    Client::from_conf(config)
}

/// The AWS environment a control-plane process needs to reach the server.
fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint()),
    ]
}

fn unique(tag: &str) -> String {
    format!("streamer-test-{tag}-{:x}", rand::random::<u32>())
}

async fn registry(tag: &str) -> (DynamoRegistry, String) {
    let table = unique(tag);
    dynamo::create_table(&client(), &table)
        .await
        .expect("create table");
    (DynamoRegistry::new(client(), &table, Ttl::default()), table)
}

#[tokio::test]
async fn conformance_suite_on_dynamodb() {
    let (registry, _) = registry("conformance").await;
    conformance::run_all(&registry, "").await;
}

#[tokio::test]
async fn create_table_is_idempotent_and_sets_indexes_and_ttl() {
    let table = unique("create");
    dynamo::create_table(&client(), &table)
        .await
        .expect("create");
    dynamo::create_table(&client(), &table)
        .await
        .expect("create again");
    let described = client()
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .expect("describe");
    let t = described.table().expect("table");
    let mut indexes: Vec<_> = t
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name())
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        vec![
            dynamo::GROUP_INDEX,
            dynamo::TENANT_INDEX,
            dynamo::USER_INDEX
        ]
    );
    let ttl = client()
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("ttl");
    let ttl = ttl.time_to_live_description().expect("ttl description");
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
}

#[tokio::test]
async fn paging_a_tenant_with_thousands_of_connections() {
    let (registry, _) = registry("thousands").await;
    let registry = Arc::new(registry);
    const N: usize = 2100;
    let inserted = stream::iter(0..N)
        .map(|i| {
            let registry = registry.clone();
            async move {
                let user = format!("user-{}", i % 7);
                registry
                    .insert(conformance::sample(&format!("c{i:05}"), "big", &user), 0)
                    .await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let failed: Vec<_> = inserted.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let scope = Scope::Tenant("big".into());
    let mut pages = 0;
    let mut seen = 0;
    let mut after: Option<String> = None;
    let mut last: Option<String> = None;
    loop {
        let page = registry
            .list(&scope, after.as_deref(), 1000)
            .await
            .expect("list");
        pages += 1;
        for c in &page.items {
            assert!(
                last.as_deref() < Some(&*c.connection_id),
                "ordered, no repeats"
            );
            last = Some(c.connection_id.to_string());
        }
        seen += page.items.len();
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, N);
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(registry.count(&scope).await.expect("count"), N as u64);
    let user = Scope::User {
        tenant_id: "big".into(),
        user_id: "user-3".into(),
    };
    assert_eq!(
        collect_all(registry.as_ref(), &user)
            .await
            .expect("user")
            .len(),
        N / 7
    );
}

#[tokio::test]
async fn quota_holds_across_replicas_sharing_the_table() {
    let table = unique("quota");
    dynamo::create_table(&client(), &table)
        .await
        .expect("create");
    // Two registries with their own clients: two control-plane replicas.
    let replicas = [
        Arc::new(DynamoRegistry::new(client(), &table, Ttl::default())),
        Arc::new(DynamoRegistry::new(client(), &table, Ttl::default())),
    ];
    let results = stream::iter(0..40)
        .map(|i| {
            let registry = replicas[i % 2].clone();
            async move {
                registry
                    .insert(conformance::sample(&format!("q{i}"), "quota", "u"), 15)
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(RegistryError::QuotaExceeded { limit: 15 })))
        .count();
    assert_eq!((accepted, refused), (15, 25), "{results:?}");
    assert_eq!(
        replicas[0]
            .count(&Scope::Tenant("quota".into()))
            .await
            .expect("count"),
        15
    );
    // A removal on one replica frees a slot for the other.
    let member = collect_all(replicas[0].as_ref(), &Scope::Tenant("quota".into()))
        .await
        .expect("list");
    replicas[0]
        .remove(&member[0].connection_id)
        .await
        .expect("remove");
    replicas[1]
        .insert(conformance::sample("q-late", "quota", "u"), 15)
        .await
        .expect("slot freed");
    assert!(matches!(
        replicas[0]
            .insert(conformance::sample("q-over", "quota", "u"), 15)
            .await,
        Err(RegistryError::QuotaExceeded { .. })
    ));
}

#[tokio::test]
async fn shared_message_limit_spans_replicas() {
    let table = unique("limits");
    shared_limit::create_table(&client(), &table)
        .await
        .expect("create");
    let limits = LimitsConfig {
        max_message_bytes: 1024,
        // One cell a minute: however slow the server, no cell refills
        // during the test.
        messages_per_minute: 1,
        message_burst: 5,
        connects_per_minute_per_ip: 10,
        max_connections_per_tenant: 0,
    };
    let a = SharedMessageLimiter::new(client(), &table, &limits);
    let b = SharedMessageLimiter::new(client(), &table, &limits);
    let mut allowed = 0;
    let mut wait = None;
    for i in 0..10 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter.check("conn-1").await.expect("check") {
            SharedCheck::Allowed => allowed += 1,
            SharedCheck::Limited(w) => {
                wait = Some(w);
            }
        }
    }
    assert_eq!(allowed, 5, "the burst is shared, not per replica");
    assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(60)));
    assert_eq!(
        a.check("conn-2").await.expect("check"),
        SharedCheck::Allowed,
        "per connection"
    );
}

async fn tables_create(table: &str, limits_table: &str) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamer-control-plane"))
        .args(["tables", "create"])
        .env_clear()
        .envs(aws_env())
        .env("STREAMER_CONNECTIONS_TABLE", table)
        .env("STREAMER_REQUESTS_TABLE", format!("{table}-requests"))
        .env("STREAMER_RATE_LIMITS_TABLE", limits_table)
        .output()
        .await
        .expect("run tables create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("table {table} is ready")));
}

async fn dynamo_dev(table: &str, extra: &[(&str, &str)]) -> Dev {
    let env = aws_env();
    let requests = format!("{table}-requests");
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("STREAMER_REQUESTS_TABLE", &requests));
    vars.push(("STREAMER_STORE", "dynamodb"));
    vars.push(("STREAMER_CONNECTIONS_TABLE", table));
    vars.extend_from_slice(extra);
    Dev::start(&vars).await
}

#[tokio::test]
async fn dev_on_dynamodb_end_to_end() {
    let table = unique("dev");
    let limits_table = unique("dev-limits");
    tables_create(&table, &limits_table).await;
    tables_create(&table, &limits_table).await;
    let dev = dynamo_dev(
        &table,
        &[
            ("STREAMER_RATE_LIMITS_TABLE", &limits_table),
            ("STREAMER_SHARED_RATE_LIMITS", "true"),
        ],
    )
    .await;
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
        .expect("send")
        .into_inner()
        .report
        .expect("report");
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
    let table = unique("two");
    tables_create(&table, &unique("two-limits")).await;
    let quota = [("STREAMER_MAX_CONNECTIONS_PER_TENANT", "3")];
    let first = dynamo_dev(&table, &quota).await;
    let second = dynamo_dev(&table, &quota).await;
    let _a = first.connect(&token("u1", "shared", &[])).await;
    let _b = second.connect(&token("u2", "shared", &[])).await;
    let _c = first.connect(&token("u3", "shared", &[])).await;
    for dev in [&second, &first] {
        let (status, body) = refused(&format!(
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
    let table = unique("gone");
    tables_create(&table, &unique("gone-limits")).await;
    let dev = dynamo_dev(
        &table,
        &[
            ("STREAMER_RECONCILE_IDLE_SECS", "0"),
            ("STREAMER_MAX_CONNECTIONS_PER_TENANT", "10"),
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
        .expect("send")
        .into_inner()
        .report
        .expect("report");
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
        .expect("reconcile")
        .into_inner()
        .report
        .expect("report");
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
    let (status, body) = refused(&format!(
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
async fn request_queue_conformance_on_dynamodb() {
    let table = unique("requests");
    streamer_control_plane::queue::dynamo::create_table(&client(), &table)
        .await
        .expect("create");
    streamer_control_plane::queue::dynamo::create_table(&client(), &table)
        .await
        .expect("create again");
    let queue = streamer_control_plane::queue::dynamo::DynamoQueue::new(client(), &table);
    streamer_control_plane::queue::conformance::run_all(&queue, "").await;
}

#[tokio::test]
async fn a_control_plane_restart_on_dynamodb_loses_no_accepted_request() {
    use streamer_client::processor::{ActionSpec, Processor};
    let table = unique("restart");
    tables_create(&table, &unique("restart-limits")).await;
    let no_demo = [("STREAMER_DEMO_PROCESSOR", "false")];
    let mut first = dynamo_dev(&table, &no_demo).await;
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
    let pid = first.child.id().expect("pid");
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let exit = tokio::time::timeout(DEADLINE, first.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(exit.success());

    let second = dynamo_dev(&table, &no_demo).await;
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
