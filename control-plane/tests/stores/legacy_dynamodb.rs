//! The migration's data paths on DynamoDB (moto, started by
//! `scripts/test.sh`), in both of the Go system's item shapes: the importer
//! (idempotent, skipping what cannot be used) and the dual write (rows read
//! back in the legacy shape, refreshed and removed with the connection).

use std::{collections::HashMap, sync::Arc};

use aws_sdk_dynamodb::types::AttributeValue;
use streamer_control_plane::{
    clock::Clock,
    config::ManagementEndpoints,
    registry::{
        Registry, Scope, Ttl,
        conformance::sample,
        legacy::{self, LegacyMirror, Shape, import, item_of, table_spec},
        memory::MemoryRegistry,
    },
    store::dynamo::Item,
};
use streamer_test_kit::moto::{client, unique};

use crate::support;

async fn legacy_table(shape: Shape) -> String {
    support::fresh_table("legacy", table_spec(shape)).await
}

async fn put(table: &str, item: Item) {
    client()
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("put");
}

async fn get(table: &str, key: Item) -> Option<Item> {
    client()
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn the_importer_reads_both_shapes_once_and_skips_what_it_cannot_use() {
    for shape in [Shape::Classic, Shape::DynamOrm] {
        let table = legacy_table(shape).await;
        let now = now_ms();
        for user in ["u1", "u2"] {
            let connection = sample(&format!("{user}-conn"), "legacy-tenant", user);
            put(&table, item_of(&connection, shape)).await;
        }
        // Expired by the Go system's own TTL.
        let mut expired = item_of(&sample("old-conn", "legacy-tenant", "u3"), shape);
        let ttl_name = if shape == Shape::Classic {
            "TTL"
        } else {
            "ttl"
        };
        expired.insert(
            ttl_name.into(),
            AttributeValue::N((now / 1000 - 10).to_string()),
        );
        put(&table, expired).await;
        // A tenant id Streamer refuses.
        put(
            &table,
            item_of(&sample("bad-conn", "has spaces", "u4"), shape),
        )
        .await;
        // Not a connection item (in the classic table every item has the
        // key `ConnectionID`, so one without the rest counts as invalid).
        let other: Item = match shape {
            Shape::Classic => HashMap::from([
                ("ConnectionID".into(), AttributeValue::S("sub-x".into())),
                ("Kind".into(), AttributeValue::S("something else".into())),
            ]),
            Shape::DynamOrm => HashMap::from([
                ("pk".into(), AttributeValue::S("REQ#r1".into())),
                ("sk".into(), AttributeValue::S("STATUS#PENDING".into())),
            ]),
        };
        put(&table, other).await;
        // A row naming a Management API endpoint that is not this
        // deployment's: importing it would send the tenant's broadcasts
        // there.
        let mut foreign = sample("evil-conn", "legacy-tenant", "u5");
        foreign.endpoint = "https://evil.example/prod".into();
        put(&table, item_of(&foreign, shape)).await;
        let endpoints = ManagementEndpoints::Only(vec![
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod".into(),
        ]);

        let registry = MemoryRegistry::with_ttl(Ttl::default(), Clock::new());
        let dry = import(
            &client(),
            &table,
            &registry,
            &endpoints,
            Ttl::default(),
            now,
            true,
        )
        .await
        .expect("dry run");
        assert_eq!(
            (dry.scanned, dry.imported, dry.foreign),
            (6, 2, 1),
            "{shape:?}: {dry}"
        );
        assert_eq!(
            registry
                .count(&Scope::Tenant("legacy-tenant".into()))
                .await
                .expect("count"),
            0,
            "a dry run writes nothing"
        );
        let first = import(
            &client(),
            &table,
            &registry,
            &endpoints,
            Ttl::default(),
            now,
            false,
        )
        .await
        .expect("import");
        let (invalid, other) = match shape {
            Shape::Classic => (2, 0),
            Shape::DynamOrm => (1, 1),
        };
        assert_eq!(
            (
                first.imported,
                first.present,
                first.expired,
                first.invalid,
                first.other,
                first.foreign
            ),
            (2, 0, 1, invalid, other, 1),
            "{shape:?}: {first}"
        );
        let row = registry
            .get("u1-conn")
            .await
            .expect("get")
            .expect("imported");
        assert_eq!(
            (&*row.tenant_id, &*row.user_id, &*row.endpoint),
            (
                "legacy-tenant",
                "u1",
                "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
            )
        );
        assert_eq!(
            row.permissions.iter().map(|p| &**p).collect::<Vec<_>>(),
            ["echo", "reports:*"]
        );
        let second = import(
            &client(),
            &table,
            &registry,
            &endpoints,
            Ttl::default(),
            now,
            false,
        )
        .await
        .expect("again");
        assert_eq!(
            (second.imported, second.present),
            (0, 2),
            "{shape:?}: a second import changes nothing"
        );
    }
}

#[tokio::test]
async fn the_dual_write_mirrors_connections_in_the_legacy_shape() {
    for shape in [Shape::Classic, Shape::DynamOrm] {
        let table = legacy_table(shape).await;
        let inner: Arc<dyn Registry> =
            Arc::new(MemoryRegistry::with_ttl(Ttl::default(), Clock::new()));
        let mirror = LegacyMirror::new(inner, client(), &table, shape);
        let connection = sample("mirrored-conn", "acme", "alice");
        mirror.insert(connection.clone(), 0).await.expect("insert");
        let item = get(&table, shape.key("mirrored-conn"))
            .await
            .expect("mirrored in the legacy table");
        assert_eq!(Shape::of(&item), Some(shape));
        let (id, endpoint) = match shape {
            Shape::Classic => ("ConnectionID", "Endpoint"),
            Shape::DynamOrm => ("connection_id", "endpoint"),
        };
        assert_eq!(
            item[id].as_s().ok().map(String::as_str),
            Some("mirrored-conn")
        );
        assert_eq!(
            item[endpoint].as_s().ok().map(String::as_str),
            Some("abc123.execute-api.eu-west-1.amazonaws.com/prod"),
            "the Go system's domain/stage"
        );
        let read_back = legacy::connection_of(&item, Ttl::default(), now_ms()).expect("readable");
        assert_eq!(
            (
                &*read_back.tenant_id,
                &*read_back.user_id,
                &read_back.permissions
            ),
            ("acme", "alice", &connection.permissions)
        );

        // A refresh moves the legacy last-ping; a removal deletes the item.
        let later = now_ms() + 60_000;
        assert!(mirror.touch("mirrored-conn", later).await.expect("touch"));
        let item = get(&table, shape.key("mirrored-conn"))
            .await
            .expect("still there");
        let ping = legacy::connection_of(&item, Ttl::default(), now_ms())
            .expect("readable")
            .last_seen_ms;
        assert_eq!(ping, later);
        mirror.remove("mirrored-conn").await.expect("remove");
        assert!(get(&table, shape.key("mirrored-conn")).await.is_none());
    }
}

#[tokio::test]
async fn a_failed_dual_write_leaves_the_registry_the_truth_and_is_counted() {
    let inner: Arc<dyn Registry> = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), Clock::new()));
    // The Go system's table is not there (deleted, wrong name, no access).
    let missing = unique("no-such-legacy-table");
    let mirror = LegacyMirror::new(inner.clone(), client(), &missing, Shape::Classic);
    let failures = || {
        streamer_control_plane::metrics::metrics()
            .legacy_mirror_failures
            .get()
    };
    let before = failures();
    mirror
        .insert(sample("unmirrored", "acme", "alice"), 0)
        .await
        .expect("the connection registers all the same");
    assert!(inner.get("unmirrored").await.expect("get").is_some());
    assert!(mirror.touch("unmirrored", now_ms()).await.expect("touch"));
    assert!(mirror.remove("unmirrored").await.expect("remove").is_some());
    assert!(inner.get("unmirrored").await.expect("get").is_none());
    assert!(
        failures() >= before + 3,
        "each failed mirror write is counted: {} -> {}",
        before,
        failures()
    );
    let counted = inner
        .count(&Scope::Tenant("acme".into()))
        .await
        .expect("count");
    assert_eq!(counted, 0);
}
