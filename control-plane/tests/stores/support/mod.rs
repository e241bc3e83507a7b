//! What the DynamoDB test files share.

use streamer_control_plane::store::dynamo::TableSpec;
use streamer_test_kit::moto::{client, unique};

/// A new table made from `spec` on moto, with a name no other test uses.
pub async fn fresh_table(tag: &str, spec: TableSpec) -> String {
    let table = unique(tag);
    spec.create(&client(), &table).await.expect("create table");
    table
}
