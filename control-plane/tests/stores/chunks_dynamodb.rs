//! Chunked client messages on DynamoDB (moto, started by `scripts/test.sh`):
//! the conformance suite the embedded store also passes, and one message
//! whose pieces reach several replicas at once.

use std::sync::Arc;

use streamer_control_plane::connections::chunks::{
    Chunks, conformance,
    dynamo::{DynamoChunks, table_spec},
};
use streamer_test_kit::moto::client;

use crate::support;

async fn table(tag: &str) -> String {
    support::fresh_table(tag, table_spec()).await
}

#[tokio::test]
async fn chunks_conformance_suite_on_dynamodb() {
    let table = table("chunks").await;
    conformance::run(|limits| {
        let table = table.clone();
        async move { DynamoChunks::new(client(), &table, limits) }
    })
    .await;
}

#[tokio::test]
async fn pieces_reaching_different_replicas_at_once_join_exactly_once() {
    let table = table("chunks-replicas").await;
    let limits = conformance::limits();
    let limits = streamer_control_plane::connections::chunks::ChunkLimits {
        max_bytes: 10_000,
        ..limits
    };
    // Three replicas, each with its own client, as separate processes are.
    let replicas: Vec<Arc<DynamoChunks>> = (0..3)
        .map(|_| Arc::new(DynamoChunks::new(client(), &table, limits)))
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    for round in 0..5 {
        let pieces = ["alpha-", "beta-", "gamma-", "delta"];
        let mut tasks = tokio::task::JoinSet::new();
        for (index, data) in pieces.iter().enumerate() {
            let replica = replicas[index % replicas.len()].clone();
            let piece = conformance::piece(
                &format!("m{round}"),
                u32::try_from(index).expect("index"),
                4,
                data,
            );
            tasks.spawn(async move { replica.add("conn-1", "t", piece, now).await });
        }
        let mut joined = Vec::new();
        let mut started = 0;
        while let Some(added) = tasks.join_next().await {
            let added = added.expect("task").expect("add");
            started += usize::from(added.started);
            joined.extend(added.joined);
        }
        assert_eq!(started, 1, "round {round}: one piece starts the message");
        assert_eq!(
            joined,
            vec!["alpha-beta-gamma-delta".to_owned()],
            "round {round}: joined exactly once, in order"
        );
    }
}
