//! The DynamoDB backends against a real DynamoDB-compatible server over HTTP
//! (moto, started by `scripts/test.sh`): the registry and queue conformance
//! suites, paging thousands of rows, the quota across replicas, the shared
//! rate limits, and the repair of a drifted counter and orphaned
//! memberships.

use std::{sync::Arc, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::{StreamExt, stream};
use streamer_control_plane::{
    app::stores::registry_stack,
    clock::Clock,
    config::LimitsConfig,
    connections::{limits::RateLimiter, shared_limits::SharedLimits},
    registry::{
        Registry, RegistryError, Scope, Ttl, collect_all, conformance,
        dynamo::{self, DynamoRegistry},
        legacy,
    },
    store::dynamo::{TableSpec, string},
};
use streamer_test_kit::moto::{client, unique};

async fn registry(tag: &str) -> (DynamoRegistry, String) {
    let table = unique(tag);
    dynamo::create_table(&client(), &table)
        .await
        .expect("create table");
    (
        DynamoRegistry::new(client(), &table, Ttl::default(), Clock::new()),
        table,
    )
}

/// The registry as the app assembles it on DynamoDB (`app::stores`):
/// instrumented, over the legacy mirror when `mirrored`, over the backend.
async fn assembled(tag: &str, mirrored: bool) -> (Arc<dyn Registry>, String) {
    let (backend, table) = registry(tag).await;
    let legacy = if mirrored {
        let legacy = unique(&format!("{tag}-legacy"));
        legacy::table_spec(legacy::Shape::Classic)
            .create(&client(), &legacy)
            .await
            .expect("create the legacy table");
        Some(legacy)
    } else {
        None
    };
    let stack = registry_stack(
        Arc::new(backend),
        legacy
            .as_deref()
            .map(|legacy| (client(), legacy, legacy::Shape::Classic)),
        None,
    );
    (stack, table)
}

#[tokio::test]
async fn conformance_suite_on_dynamodb() {
    let (registry, _) = registry("conformance").await;
    conformance::run_all(&registry, "").await;
}

#[tokio::test]
async fn conformance_suite_on_dynamodb_as_the_app_assembles_it() {
    let (registry, _) = assembled("conformance-app", false).await;
    conformance::run_all(registry.as_ref(), "").await;
    let (mirrored, _) = assembled("conformance-mirror", true).await;
    conformance::run_all(mirrored.as_ref(), "").await;
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
        Arc::new(DynamoRegistry::new(
            client(),
            &table,
            Ttl::default(),
            Clock::new(),
        )),
        Arc::new(DynamoRegistry::new(
            client(),
            &table,
            Ttl::default(),
            Clock::new(),
        )),
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

fn limits_table() -> TableSpec {
    TableSpec {
        hash: string("limiter_key"),
        range: None,
        indexes: Vec::new(),
        ttl: Some("expires_at"),
    }
}

#[tokio::test]
async fn shared_limits_span_replicas() {
    let table = unique("limits");
    limits_table()
        .create(&client(), &table)
        .await
        .expect("create");
    let limits = LimitsConfig {
        max_message_bytes: 1024,
        // One cell a minute: however slow the server, no cell refills
        // during the test.
        messages_per_minute: 1,
        message_burst: 5,
        connects_per_minute_per_ip: 3,
        loopback_connects_unlimited: None,
        max_connections_per_tenant: 0,
        chunked_max_bytes: 1024,
        chunked_max_chunks: 4,
        chunked_timeout: std::time::Duration::from_secs(30),
        chunked_held_max_bytes: 1 << 20,
        chunked_held_max_bytes_per_tenant: 1 << 20,
        chunked_held_max_bytes_per_connection: 1024,
    };
    let a = SharedLimits::new(client(), &table, &limits, Clock::new());
    let b = SharedLimits::new(client(), &table, &limits, Clock::new());
    let mut allowed = 0;
    let mut wait = None;
    for i in 0..10 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter.check_message("conn-1").await {
            Ok(()) => allowed += 1,
            Err(w) => wait = Some(w),
        }
    }
    assert_eq!(allowed, 5, "the burst is shared, not per replica");
    assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(60)));
    assert_eq!(a.check_message("conn-2").await, Ok(()), "per connection");

    // The per-IP connect limit is shared the same way.
    let mut connects = 0;
    for i in 0..8 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        connects += usize::from(limiter.check_connect("198.51.100.9").await.is_ok());
    }
    assert_eq!(connects, 3, "one IP's connects across two replicas");
}

#[tokio::test]
async fn request_queue_conformance_on_dynamodb() {
    let table = unique("requests");
    use streamer_control_plane::requests::queue::{conformance, dynamo};
    dynamo::create_table(&client(), &table)
        .await
        .expect("create");
    dynamo::create_table(&client(), &table)
        .await
        .expect("create again");
    let queue = dynamo::DynamoQueue::new(client(), &table);
    conformance::run_all(&queue, "").await;
}

#[tokio::test]
async fn request_queue_bounds_open_requests_on_dynamodb() {
    use streamer_control_plane::requests::queue::{
        QueueLimits, conformance as queue_conformance,
        dynamo::{self as queue_dynamo, DynamoQueue},
    };
    let table = unique("queue-caps");
    queue_dynamo::create_table(&client(), &table)
        .await
        .expect("create table");
    let queue = DynamoQueue::new(client(), &table).with_limits(QueueLimits {
        max_per_user: 2,
        max_per_tenant: 3,
    });
    queue_conformance::open_requests_are_bounded_per_user_and_tenant(&queue, "").await;
}

/// The counter item of `tenant`.
async fn counter(table: &str, tenant: &str) -> Option<i64> {
    let out = client()
        .get_item()
        .table_name(table)
        .key(
            "connection_id",
            AttributeValue::S(format!("tenant#{tenant}")),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("get counter");
    out.item()
        .and_then(|i| i.get("active"))
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

/// The repair through the stack the app serves (instrumented, mirrored):
/// every decorator forwards it to DynamoDB's recount.
#[tokio::test]
async fn repair_recounts_the_counter_and_cleans_memberships() {
    let (registry, table) = assembled("repair", true).await;
    for i in 0..5 {
        registry
            .insert(conformance::sample(&format!("r{i}"), "drift", "u"), 100)
            .await
            .expect("insert");
    }
    registry.join("r0", "room", 8).await.expect("join");
    registry.join("r1", "room", 8).await.expect("join");
    assert_eq!(counter(&table, "drift").await, Some(5));

    // What an outage leaves behind: applied writes whose answers were lost.
    // A counter that counts slots nobody holds...
    client()
        .update_item()
        .table_name(&table)
        .key("connection_id", AttributeValue::S("tenant#drift".into()))
        .update_expression("SET active = :n")
        .expression_attribute_values(":n", AttributeValue::N("12".into()))
        .send()
        .await
        .expect("drift the counter");
    // ...membership items of connections that are gone, or left...
    let orphan = |key: &str, member: &str| {
        client()
            .put_item()
            .table_name(&table)
            .item("connection_id", AttributeValue::S(key.into()))
            .item("member_id", AttributeValue::S(member.into()))
            .item("m_tenant", AttributeValue::S("drift".into()))
            .item("group_key", AttributeValue::S("drift#room".into()))
            .item("group", AttributeValue::S("room".into()))
            .item("user_id", AttributeValue::S("u".into()))
            .send()
    };
    orphan("member#gone-1#room", "gone-1")
        .await
        .expect("orphan");
    orphan("member#gone-2#room", "gone-2")
        .await
        .expect("orphan");
    orphan("member#r2#room", "r2")
        .await
        .expect("left but listed");
    // ...and a join whose index item never got written.
    client()
        .delete_item()
        .table_name(&table)
        .key("connection_id", AttributeValue::S("member#r1#room".into()))
        .send()
        .await
        .expect("lose an index item");
    let members = |registry: &Arc<dyn Registry>| {
        let registry = registry.clone();
        async move {
            let mut ids: Vec<String> = collect_all(
                registry.as_ref(),
                &Scope::Group {
                    tenant_id: "drift".into(),
                    group: "room".into(),
                },
            )
            .await
            .expect("members")
            .iter()
            .map(|c| c.connection_id.to_string())
            .collect();
            ids.sort();
            ids
        }
    };
    assert_ne!(members(&registry).await, vec!["r0", "r1"]);

    let repair = registry.repair().await.expect("repair");
    assert_eq!(
        (
            repair.counters_fixed,
            repair.orphans_removed,
            repair.memberships_restored
        ),
        (1, 3, 1),
        "{repair:?}"
    );
    assert_eq!(counter(&table, "drift").await, Some(5), "counter = rows");
    assert_eq!(members(&registry).await, vec!["r0", "r1"]);
    let again = registry.repair().await.expect("repair");
    assert_eq!(again, Default::default(), "nothing left to repair");

    // The quota holds again at the right count.
    for i in 5..100 {
        registry
            .insert(conformance::sample(&format!("r{i}"), "drift", "u"), 100)
            .await
            .expect("room below the quota");
    }
    assert!(matches!(
        registry
            .insert(conformance::sample("r-over", "drift", "u"), 100)
            .await,
        Err(RegistryError::QuotaExceeded { .. })
    ));
}
