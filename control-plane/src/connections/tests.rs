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
}

/// 2 connects per IP per minute, a burst of 5 messages, 2 connections per
/// tenant.
fn limits() -> LimitsConfig {
    LimitsConfig {
        max_message_bytes: 1024,
        messages_per_minute: 60,
        message_burst: 5,
        connects_per_minute_per_ip: 2,
        loopback_connects_unlimited: None,
        max_connections_per_tenant: 2,
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
        fanout,
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
        groups: Arc::new(Groups::new(registry.clone(), presence, groups_config)),
        streams,
        delivery: gateway.clone(),
        clock,
        touch_interval: Duration::from_secs(60),
    });
    Setup {
        control,
        registry,
        gateway,
        broadcaster,
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
        control, gateway, ..
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
    // Presence goes out in the background: poll (bounded) until it lands.
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

/// Sends `data` to a scope through the broadcaster; the offset it got.
async fn publish(broadcaster: &Broadcaster, scope: Scope, data: Value) -> u64 {
    use crate::delivery::broadcast::{Message, Target};
    broadcaster
        .send(Message {
            target: Target::Scope(scope),
            data,
            topic: None,
            exclude: Default::default(),
            visible_to: None,
        })
        .await
        .expect("send")
        .position
        .expect("a history stream")
        .1
        .offset
}

/// A frame from a client that keeps within its rate limit (1 a second):
/// paused time moves on 1.1 s first.
async fn ask(control: &ControlPlane, id: &str, frame: Value) -> Value {
    tokio::time::advance(Duration::from_millis(1100)).await;
    route(control, id, frame).await
}

fn offsets(frame: &Value) -> Vec<u64> {
    frame["data"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn recover_returns_what_was_missed_to_whom_may_read_it() {
    let Setup {
        control,
        gateway,
        broadcaster,
        ..
    } = setup(true);
    let alice = token("alice", "acme", &["group:join:*"]);
    let bob = token("bob", "acme", &[]);
    for (id, token) in [("a1", &alice), ("b1", &bob)] {
        assert!(
            control
                .connect(input(id, "127.0.0.1", token))
                .await
                .accepted()
        );
        gateway.open(id);
    }
    let tenant = || Scope::Tenant("acme".into());
    let position = ask(
        &control,
        "a1",
        json!({"id":"p","action":"recover","payload":{"stream":"tenant"}}),
    )
    .await;
    assert_eq!(position["data"]["offset"], 0);
    assert_eq!(position["data"]["recovered"], true);
    for i in 1..=3 {
        assert_eq!(publish(&broadcaster, tenant(), json!({"n": i})).await, i);
    }
    // The live frame carries its position.
    let live: Value = serde_json::from_str(&gateway.received("a1")[0]).expect("json");
    assert_eq!(
        (live["stream"].as_str(), live["offset"].as_u64()),
        (Some("tenant"), Some(1))
    );
    let epoch = live["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(live["data"], json!({"n": 1}));

    let missed = ask(
        &control,
        "b1",
        json!({"id":"r","action":"recover","payload":{"stream":"tenant","since":1,"epoch":epoch}}),
    )
    .await;
    assert_eq!(missed["type"], "response", "{missed}");
    assert_eq!(missed["data"]["recovered"], true);
    assert_eq!(missed["data"]["offset"], 3);
    assert_eq!(offsets(&missed), [2, 3]);
    let message = &missed["data"]["messages"][0];
    assert_eq!(message["type"], "message");
    assert_eq!(message["data"], json!({"n": 2}));
    assert_eq!(message["stream"], "tenant");
    assert_eq!(message["epoch"], epoch.as_str());

    // Another epoch: the client is told to start over.
    let stale = ask(
        &control,
        "b1",
        json!({"id":"s","action":"recover","payload":{"stream":"tenant","since":1,"epoch":"old"}}),
    )
    .await;
    assert_eq!(stale["data"]["recovered"], false);
    assert_eq!(stale["data"]["offset"], 3);
    assert_eq!(offsets(&stale), Vec::<u64>::new());

    // A user's stream: only that user's connections.
    publish(
        &broadcaster,
        Scope::User {
            tenant_id: "acme".into(),
            user_id: "bob".into(),
        },
        json!("for bob"),
    )
    .await;
    let own = ask(
        &control,
        "b1",
        json!({"id":"u","action":"recover","payload":{"stream":"user:bob","since":0}}),
    )
    .await;
    assert_eq!(offsets(&own), [1]);
    let other = ask(
        &control,
        "a1",
        json!({"id":"u","action":"recover","payload":{"stream":"user:bob","since":0}}),
    )
    .await;
    assert_eq!(other["error"]["code"], "FORBIDDEN");

    // A group's stream: only members; join answers the position, and with
    // `since` what was missed.
    let group = || Scope::Group {
        tenant_id: "acme".into(),
        group: "hist-a".into(),
    };
    publish(&broadcaster, group(), json!("before anyone joined")).await;
    let outsider = ask(
        &control,
        "a1",
        json!({"id":"g","action":"recover","payload":{"stream":"group:hist-a","since":0}}),
    )
    .await;
    assert_eq!(outsider["error"]["code"], "FORBIDDEN");
    let joined = ask(
        &control,
        "a1",
        json!({"id":"j","action":"join","payload":{"group":"hist-a"}}),
    )
    .await;
    assert_eq!(joined["data"]["joined"], true);
    assert_eq!(joined["data"]["stream"], "group:hist-a");
    assert_eq!(joined["data"]["offset"], 1);
    assert!(
        joined["data"].get("messages").is_none(),
        "a plain join: {joined}"
    );
    let group_epoch = joined["data"]["epoch"].clone();
    publish(&broadcaster, group(), json!("after")).await;
    let rejoined = ask(
        &control,
        "a1",
        json!({"id":"k","action":"join","payload":{"group":"hist-a","since":0,"epoch":group_epoch}}),
    )
    .await;
    assert_eq!(rejoined["data"]["joined"], false);
    assert_eq!(rejoined["data"]["recovered"], true);
    assert_eq!(offsets(&rejoined), [1, 2]);
    let member = ask(&control, "a1", json!({"id":"g","action":"recover","payload":{"stream":"group:hist-a","since":1,"epoch":group_epoch}})).await;
    assert_eq!(offsets(&member), [2]);
}

#[tokio::test(start_paused = true)]
async fn recover_tells_when_history_is_gone_and_refuses_bad_payloads() {
    let Setup {
        control,
        gateway,
        broadcaster,
        ..
    } = setup(true);
    let alice = token("alice", "acme", &["group:join:*"]);
    assert!(
        control
            .connect(input("a1", "127.0.0.1", &alice))
            .await
            .accepted()
    );
    gateway.open("a1");
    let tenant = || Scope::Tenant("acme".into());
    for i in 1..=10 {
        publish(&broadcaster, tenant(), json!(i)).await;
    }
    let epoch = ask(
        &control,
        "a1",
        json!({"id":"p","action":"recover","payload":{"stream":"tenant"}}),
    )
    .await["data"]["epoch"]
        .clone();
    let recover = |since: u64| json!({"id":"r","action":"recover","payload":{"stream":"tenant","since":since,"epoch":epoch}});
    // Retention keeps 5 (6..=10); one recovery returns at most 3.
    let gone = ask(&control, "a1", recover(2)).await;
    assert_eq!(gone["data"]["recovered"], false);
    assert_eq!(gone["data"]["offset"], 10);
    let too_many = ask(&control, "a1", recover(6)).await;
    assert_eq!(too_many["data"]["recovered"], false);
    let fits = ask(&control, "a1", recover(7)).await;
    assert_eq!(
        (fits["data"]["recovered"].clone(), offsets(&fits)),
        (json!(true), vec![8, 9, 10])
    );
    let ahead = ask(&control, "a1", recover(11)).await;
    assert_eq!(
        ahead["data"]["recovered"], false,
        "an offset never given out"
    );

    // Past the TTL (60 s) everything is gone; a client that had seen it all
    // missed nothing.
    tokio::time::advance(Duration::from_secs(61)).await;
    let expired = ask(&control, "a1", recover(8)).await;
    assert_eq!(expired["data"]["recovered"], false);
    let current = ask(&control, "a1", recover(10)).await;
    assert_eq!(current["data"]["recovered"], true);

    ask(
        &control,
        "a1",
        json!({"id":"j","action":"join","payload":{"group":"plain"}}),
    )
    .await;
    // The test limit on a client message is 1 KB; the e2e test sends 10 KB.
    let long = "x".repeat(900);
    for (payload, why) in [
        (
            json!({"stream":"tenant","since":-1,"epoch":"e"}),
            "negative since",
        ),
        (
            json!({"stream":"tenant","since":"4","epoch":"e"}),
            "since as text",
        ),
        (
            json!({"stream":"tenant","since":1.5,"epoch":"e"}),
            "fractional since",
        ),
        (json!({"stream":"tenant","since":4}), "since without epoch"),
        (
            json!({"stream":"tenant","since":4,"epoch":"e".repeat(65)}),
            "long epoch",
        ),
        (
            json!({"stream":format!("group:{long}")}),
            "a 900-character stream name",
        ),
        (json!({"stream":"channel:x"}), "unknown kind"),
        (json!({"stream":42}), "stream not a string"),
        (json!({}), "no stream"),
        (json!({"stream":"group:plain"}), "a stream without history"),
    ] {
        let refused = ask(
            &control,
            "a1",
            json!({"id":"v","action":"recover","payload":payload}),
        )
        .await;
        assert_eq!(
            refused["error"]["code"], "VALIDATION_ERROR",
            "{why}: {refused}"
        );
        assert_eq!(refused["request_id"], "v");
        let message = refused["error"]["message"].as_str().expect("message");
        assert!(
            !message.contains(&long),
            "{why}: the bad value is not echoed"
        );
    }
    let bad_join = ask(
        &control,
        "a1",
        json!({"id":"b","action":"join","payload":{"group":"hist-b","since":-3}}),
    )
    .await;
    assert_eq!(bad_join["error"]["code"], "VALIDATION_ERROR");
    let groups = ask(&control, "a1", json!({"id":"w","action":"whoami"})).await;
    assert_eq!(groups["type"], "response", "still connected");
}
