//! Stream history on DynamoDB (moto, started by `scripts/test.sh`): the
//! conformance suite the embedded history also passes, with every appender
//! its own client as separate replicas are; the epoch outliving a restart;
//! and the table as `tables create` makes it.

use std::sync::Arc;

use serde_json::json;
use streamer_control_plane::{
    config::Patterns,
    streams::{
        History, Retention, Streams, conformance,
        dynamo::{DynamoHistory, table_spec},
    },
};
use streamer_test_kit::moto::client;

use crate::support;

async fn table(tag: &str) -> String {
    support::fresh_table(tag, table_spec()).await
}

#[tokio::test]
async fn history_conformance_suite_on_dynamodb() {
    let table = table("history").await;
    let make = |retention: Retention| -> Arc<dyn History> {
        Arc::new(DynamoHistory::new(client(), &table, retention))
    };
    conformance::run_all(&make, "").await;
}

#[tokio::test]
async fn the_epoch_and_the_sequence_outlive_a_restart() {
    let table = table("history-restart").await;
    let before = DynamoHistory::new(client(), &table, Retention::default());
    let now = chrono::Utc::now().timestamp_millis();
    let mut positions = Vec::new();
    for i in 0..3 {
        positions.push(
            before
                .append("acme", "group:room-1", &json!(i), None, now, None)
                .await
                .expect("append"),
        );
    }
    drop(before);
    // A new process: nothing cached, the head read back from the table.
    let after = Arc::new(DynamoHistory::new(client(), &table, Retention::default()));
    let next = after
        .append("acme", "group:room-1", &json!(3), None, now + 1, None)
        .await
        .expect("append");
    assert_eq!(next.offset, 4);
    assert_eq!(next.epoch, positions[0].epoch);
    let streams = Streams::new(after, Patterns::new(["group:*"]), 100);
    let recovery = streams
        .recover(
            "acme",
            "group:room-1",
            Some((2, &positions[1].epoch)),
            now + 2,
            |_, _| async {},
        )
        .await
        .expect("recover");
    assert!(recovery.recovered);
    assert_eq!(
        recovery
            .messages
            .iter()
            .map(|m| m.offset)
            .collect::<Vec<_>>(),
        [3, 4]
    );
}

#[tokio::test]
async fn the_history_table_has_the_stream_key_the_offset_and_a_ttl() {
    let table = table("history-table").await;
    table_spec()
        .create(&client(), &table)
        .await
        .expect("create again");
    let described = client()
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .expect("describe");
    let keys: Vec<_> = described
        .table()
        .expect("table")
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("stream_key".to_owned(), "HASH".to_owned()),
            ("offset".to_owned(), "RANGE".to_owned())
        ]
    );
    let ttl = client()
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("ttl");
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expires_at")
    );
}

/// A keyed Send's message is stored once per stream, whichever of its
/// tries lands: the retry of an append whose answer was lost (it landed)
/// answers the first's position; another replica's try too; another key is
/// another message; past the key's window the key stores again. Found by
/// `streamer-bench slo`: under a DynamoDB outage, an append that timed out
/// but landed later was stored a second time by the Send's retry.
#[tokio::test]
async fn a_keyed_append_is_stored_once_whatever_its_tries_do() {
    let table = table("history-once").await;
    let first = DynamoHistory::new(client(), &table, Retention::default());
    let other_replica = DynamoHistory::new(client(), &table, Retention::default());
    let now = chrono::Utc::now().timestamp_millis();
    let window = std::time::Duration::from_secs(300);
    let once = Some(("t/acme/pay_1", window));
    let stored = first
        .append("acme", "tenant", &json!({"pay": 1}), None, now, once)
        .await
        .expect("append");
    for history in [&first, &other_replica] {
        let again = history
            .append("acme", "tenant", &json!({"pay": 1}), None, now + 50, once)
            .await
            .expect("retry");
        assert_eq!(again, stored, "a retry answers the first's position");
    }
    let next = first
        .append(
            "acme",
            "tenant",
            &json!({"pay": 2}),
            None,
            now + 100,
            Some(("t/acme/pay_2", window)),
        )
        .await
        .expect("another key");
    assert_eq!(next.offset, stored.offset + 1);
    let read = first
        .read("acme", "tenant", 0, 100, now + 200)
        .await
        .expect("read");
    let offsets: Vec<u64> = read.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![stored.offset, next.offset], "one copy each");
    // Past its window the key is a new message.
    let later = now + 301_000;
    let reused = other_replica
        .append("acme", "tenant", &json!({"pay": 1}), None, later, once)
        .await
        .expect("reuse");
    assert_eq!(reused.offset, next.offset + 1);
}
