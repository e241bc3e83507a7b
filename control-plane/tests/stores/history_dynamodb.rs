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
                .append("acme", "group:room-1", &json!(i), None, now)
                .await
                .expect("append"),
        );
    }
    drop(before);
    // A new process: nothing cached, the head read back from the table.
    let after = Arc::new(DynamoHistory::new(client(), &table, Retention::default()));
    let next = after
        .append("acme", "group:room-1", &json!(3), None, now + 1)
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
