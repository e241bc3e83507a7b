//! `recover` and `join` with `since`: what was missed, to whom may read it,
//! retention, and refused payloads.

use std::time::Duration;

use serde_json::{Value, json};
use streamer_test_kit::token::token;

use super::{Setup, input, route, setup};
use crate::{connections::ControlPlane, delivery::broadcast::Broadcaster, registry::Scope};

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
            once: None,
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
