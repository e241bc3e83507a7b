//! Connect and route against in-memory parts: the embedded registry and
//! queue, a fake gateway, the local limiter, paused time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{Value, json};
use streamer_test_kit::token::{keys, token};

use super::{
    Parts,
    connect::{ConnectDecision, ConnectInput},
    *,
};
use crate::{
    config::{GroupsConfig, JobsConfig, JwtConfig},
    delivery::{broadcast::Broadcaster, fake::FakeGateway, presence::Presence},
    registry::{Scope, Ttl, memory::MemoryRegistry},
    requests::{JobsParts, queue::memory::MemoryQueue},
};

struct Setup {
    control: ControlPlane,
    registry: Arc<MemoryRegistry>,
    gateway: Arc<FakeGateway>,
    broadcaster: Arc<Broadcaster>,
    presence: Arc<Presence>,
}

/// 2 connects per IP per minute, a burst of 5 messages, 2 connections per
/// tenant.
pub(super) fn limits() -> LimitsConfig {
    LimitsConfig {
        max_message_bytes: 1024,
        messages_per_minute: 60,
        message_burst: 5,
        connects_per_minute_per_ip: 2,
        loopback_connects_unlimited: None,
        max_connections_per_tenant: 2,
        chunked_max_bytes: 4096,
        chunked_max_chunks: 8,
        chunked_timeout: Duration::from_secs(30),
        chunked_held_max_bytes: 1 << 20,
        chunked_held_max_bytes_per_tenant: 1 << 20,
        chunked_held_max_bytes_per_connection: 4096,
    }
}

fn setup(loopback_unlimited: bool) -> Setup {
    let clock = Clock::new();
    let registry = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), clock));
    let gateway = Arc::new(FakeGateway::new());
    let actions = Arc::new(Actions::new(&[]).expect("actions"));
    let fanout = Arc::new(crate::delivery::fanout::Fanout::new(
        gateway.clone(),
        crate::config::DeliveryConfig::default(),
    ));
    let streams = crate::streams::Streams::new(
        Arc::new(crate::streams::memory::MemoryHistory::new(
            crate::streams::Retention {
                size: 5,
                ttl: Duration::from_secs(60),
            },
        )),
        crate::config::Patterns::new(["group:hist-*", "user:*", "tenant"]),
        3,
    );
    let broadcaster = Arc::new(Broadcaster::new(
        registry.clone(),
        fanout.clone(),
        streams.clone(),
        clock,
    ));
    let groups_config = GroupsConfig {
        join_permission: "group:join:{group}".into(),
        presence: crate::config::Patterns::new(["room-*"]),
        ..GroupsConfig::default()
    };
    let presence = Arc::new(Presence::new(broadcaster.clone(), groups_config.clone()));
    let jobs = Arc::new(Jobs::new(JobsParts {
        queue: Arc::new(MemoryQueue::new()),
        registry: registry.clone(),
        fanout: fanout.clone(),
        actions: actions.clone(),
        config: JobsConfig::default(),
        clock,
    }));
    let verifier = JwtVerifier::new(&JwtConfig {
        public_key_pem: keys().public_pem.clone(),
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
        max_lifetime: None,
        jwks_url: None,
        jwks_refresh: Duration::from_secs(300),
        any_issuer: false,
        any_audience: false,
    })
    .expect("verifier");
    let control = ControlPlane::new(Parts {
        registry: registry.clone(),
        verifier,
        limiter: Arc::new(limits::LocalLimits::new(&limits())),
        limits: limits(),
        loopback_unlimited,
        actions,
        jobs,
        groups: Arc::new(Groups::new(
            registry.clone(),
            presence.clone(),
            groups_config,
        )),
        streams,
        delivery: gateway.clone(),
        fanout,
        chunks: Arc::new(super::chunks::MemoryChunks::new(
            super::chunks::ChunkLimits {
                max_bytes: 4096,
                max_chunks: 8,
                timeout: Duration::from_secs(30),
                max_held_bytes: 1 << 20,
                max_held_bytes_per_tenant: 1 << 20,
                max_held_bytes_per_connection: 4096,
            },
        )),
        clock,
        touch_interval: Duration::from_secs(60),
        endpoints: crate::config::ManagementEndpoints::Unset,
        token_warning: Duration::from_secs(60),
    });
    Setup {
        control,
        registry,
        gateway,
        broadcaster,
        presence,
    }
}

fn input(id: &str, ip: &str, token: &str) -> ConnectInput {
    ConnectInput {
        connection_id: id.into(),
        endpoint: "https://gw/prod".into(),
        query: HashMap::from([("token".to_owned(), token.to_owned())]),
        source_ip: ip.into(),
        ..ConnectInput::default()
    }
}

fn body(decision: &ConnectDecision) -> Value {
    serde_json::from_str(&decision.body).expect("json body")
}

async fn route(control: &ControlPlane, id: &str, frame: Value) -> Value {
    let reply = control
        .route(id, &frame.to_string(), false)
        .await
        .expect("reply");
    serde_json::from_str(&reply).expect("json reply")
}

#[tokio::test(start_paused = true)]
async fn connect_limits_quota_and_no_detail_in_refusals() {
    let Setup {
        control, registry, ..
    } = setup(false);
    let alice = token("alice", "acme", &[]);
    assert!(
        control
            .connect(input("c1", "198.51.100.1", &alice))
            .await
            .accepted()
    );
    // A redelivered $connect is accepted again for the same identity only.
    let again = control.connect(input("c1", "198.51.100.2", &alice)).await;
    assert_eq!((again.status, again.outcome), (200, "redelivered"));
    let refused = control
        .connect(input("c1", "198.51.100.2", &token("mallory", "acme", &[])))
        .await;
    assert_eq!(refused.status, 403);

    // The per-IP limit (2 a minute) is spent for .2; body and Retry-After agree.
    let limited = control.connect(input("c2", "198.51.100.2", &alice)).await;
    assert_eq!(limited.status, 429);
    let after = body(&limited)["error"]["retry"]["after"]
        .as_u64()
        .expect("after");
    assert_eq!(limited.headers["retry-after"], after.to_string());

    // The tenant quota of 2.
    assert!(
        control
            .connect(input("c3", "198.51.100.3", &alice))
            .await
            .accepted()
    );
    let quota = control.connect(input("c4", "198.51.100.4", &alice)).await;
    assert_eq!((quota.status, quota.outcome), (429, "quota_exceeded"));
    assert_eq!(
        registry
            .count(&Scope::Tenant("acme".into()))
            .await
            .expect("count"),
        2
    );

    let bad = control
        .connect(input("c5", "198.51.100.5", "not-a-jwt"))
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        body(&bad)["error"],
        json!({"code":"UNAUTHORIZED","message":"missing or invalid token"})
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let later = control.connect(input("c6", "198.51.100.2", &alice)).await;
    assert_eq!(later.outcome, "quota_exceeded", "the IP limit refilled");
}

#[tokio::test(start_paused = true)]
async fn loopback_clients_skip_the_connect_limit_when_allowed() {
    let Setup { control, .. } = setup(true);
    for i in 0..5 {
        let token = token(&format!("u{i}"), &format!("t{i}"), &[]);
        let decision = control
            .connect(input(&format!("c{i}"), "127.0.0.1", &token))
            .await;
        assert!(decision.accepted(), "{decision:?}");
    }
    let Setup { control, .. } = setup(false);
    let token = token("u", "t", &[]);
    control.connect(input("a", "::1", &token)).await;
    control.connect(input("b", "::1", &token)).await;
    assert_eq!(control.connect(input("c", "::1", &token)).await.status, 429);
}

#[tokio::test(start_paused = true)]
async fn routing_answers_builtins_and_refuses_bad_frames() {
    let Setup { control, .. } = setup(false);
    let alice = token("alice", "acme", &["group:join:room-*"]);
    assert!(
        control
            .connect(input("c1", "198.51.100.1", &alice))
            .await
            .accepted()
    );

    let echo = route(
        &control,
        "c1",
        json!({"id":"1","action":"echo","payload":{"a":1}}),
    )
    .await;
    assert_eq!(
        echo,
        json!({"type":"response","request_id":"1","success":true,"data":{"a":1}})
    );
    let who = route(&control, "c1", json!({"id":"2","action":"whoami"})).await;
    assert_eq!(who["data"]["tenant_id"], "acme");

    let dup = control
        .route(
            "c1",
            r#"{"id":"3","action":"echo","action":"whoami"}"#,
            false,
        )
        .await
        .expect("reply");
    let dup: Value = serde_json::from_str(&dup).expect("json");
    assert_eq!(dup["error"]["code"], "VALIDATION_ERROR");

    let unknown = route(&control, "c1", json!({"id":"4","action":"nope"})).await;
    assert_eq!(
        (
            unknown["request_id"].as_str(),
            unknown["error"]["code"].as_str()
        ),
        (Some("4"), Some("INVALID_ACTION"))
    );
    let pong = route(&control, "c1", json!({"id":"5","action":"ping"})).await;
    assert_eq!(pong["type"], "pong");
    // The burst of 5 is spent: the sixth frame in a row is rate limited.
    let limited = route(&control, "c1", json!({"id":"5","action":"ping"})).await;
    assert_eq!(limited["error"]["code"], "RATE_LIMITED");
    assert_eq!(limited["request_id"], "5");

    let gone = route(&control, "nobody", json!({"id":"6","action":"ping"})).await;
    assert_eq!(gone["error"]["code"], "UNAUTHORIZED");
}

#[tokio::test(start_paused = true)]
async fn joining_needs_the_permission_and_announces_presence() {
    let Setup {
        control,
        gateway,
        presence,
        ..
    } = setup(false);
    let member = token("alice", "acme", &["group:join:room-*"]);
    assert!(
        control
            .connect(input("c1", "198.51.100.1", &member))
            .await
            .accepted()
    );
    let member_b = token("carol", "beta", &["group:join:room-*"]);
    let outsider_b = token("dan", "beta", &[]);
    assert!(
        control
            .connect(input("c2", "198.51.100.2", &member))
            .await
            .accepted()
    );
    assert!(
        control
            .connect(input("b1", "198.51.100.3", &member_b))
            .await
            .accepted()
    );
    assert!(
        control
            .connect(input("b2", "198.51.100.4", &outsider_b))
            .await
            .accepted()
    );
    gateway.open("c1");
    gateway.open("c2");

    let joined = route(
        &control,
        "c1",
        json!({"id":"1","action":"join","payload":{"group":"room-1"}}),
    )
    .await;
    assert_eq!(joined["data"], json!({"group":"room-1","joined":true}));
    let forbidden = route(
        &control,
        "b2",
        json!({"id":"2","action":"join","payload":{"group":"room-1"}}),
    )
    .await;
    assert_eq!(forbidden["error"]["code"], "FORBIDDEN");
    let bad = route(
        &control,
        "c2",
        json!({"id":"3","action":"join","payload":{"group":"a b"}}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "VALIDATION_ERROR");

    route(
        &control,
        "c2",
        json!({"id":"4","action":"join","payload":{"group":"room-1"}}),
    )
    .await;
    // Presence goes out at the next tick, in the background: flush now,
    // then poll (bounded) until it lands.
    presence.flush().await;
    let heard_join = || {
        gateway.received("c1").iter().any(|f| {
            let f: Value = serde_json::from_str(f).expect("json");
            f["type"] == "presence" && f["event"] == "join" && f["connection_id"] == "c2"
        })
    };
    for _ in 0..1000 {
        if heard_join() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(heard_join(), "{:?}", gateway.received("c1"));
}

#[tokio::test(start_paused = true)]
async fn force_disconnect_closes_at_the_gateway_and_forgets_the_row() {
    let Setup {
        control,
        registry,
        gateway,
        ..
    } = setup(false);
    let alice = token("alice", "acme", &[]);
    assert!(
        control
            .connect(input("c1", "198.51.100.1", &alice))
            .await
            .accepted()
    );
    gateway.open("c1");
    assert_eq!(
        control
            .force_disconnect("c1", Some("other"))
            .await
            .expect_err("another tenant")
            .code(),
        streamer_proto::client::ErrorCode::NotFound
    );
    assert!(
        control
            .force_disconnect("c1", Some("acme"))
            .await
            .expect("closed")
    );
    assert_eq!(gateway.deleted(), vec!["c1".to_owned()]);
    assert!(registry.get("c1").await.expect("get").is_none());
}

mod history;

#[tokio::test(start_paused = true)]
async fn a_frame_from_a_connection_past_its_tokens_end_with_no_watcher_closes_it() {
    let Setup {
        control,
        registry,
        gateway,
        ..
    } = setup(false);
    // Registered by a replica that stopped before the token's end: no one
    // here watches it.
    let mut row = crate::registry::conformance::sample("orphan", "acme", "alice");
    row.token_expires_ms = control.clock.now_ms() + 1_000;
    registry.insert(row, 0).await.expect("insert");
    gateway.open("orphan");
    let answer = route(
        &control,
        "orphan",
        json!({"id": "r1", "action": "echo", "payload": 1}),
    )
    .await;
    assert_eq!(
        answer["type"], "response",
        "still inside its token: {answer}"
    );

    tokio::time::advance(Duration::from_secs(7)).await;
    let answer = route(
        &control,
        "orphan",
        json!({"id": "r2", "action": "echo", "payload": 2}),
    )
    .await;
    assert_eq!(answer["error"]["code"], "UNAUTHORIZED", "{answer}");
    assert_eq!(answer["request_id"], "r2");
    for _ in 0..100 {
        if registry.get("orphan").await.expect("get").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        registry.get("orphan").await.expect("get").is_none(),
        "forgotten"
    );
    assert_eq!(
        gateway.deleted(),
        vec!["orphan".to_owned()],
        "its socket closed"
    );
}
