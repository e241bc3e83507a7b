//! The history contract as executable checks, run against the embedded
//! backend in unit tests and against DynamoDB (moto) in
//! `control-plane/tests/stores/`.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use super::{History, Retention};

/// Makes a backend with the given retention (on DynamoDB: another client of
/// the same table, as another replica or a restarted process would be).
pub type Factory<'a> = &'a (dyn Fn(Retention) -> Arc<dyn History> + Sync);

const T0: i64 = 1_800_000_000_000;

fn retention(size: u64) -> Retention {
    Retention {
        size,
        ttl: Duration::from_secs(60),
    }
}

/// Runs every check; `prefix` keeps runs against a shared store apart.
pub async fn run_all(make: Factory<'_>, prefix: &str) {
    an_empty_stream_is_at_zero(make, prefix).await;
    offsets_are_gapless_and_read_back_in_order(make, prefix).await;
    tenants_and_streams_are_separate(make, prefix).await;
    retention_by_count(make, prefix).await;
    retention_by_age(make, prefix).await;
    concurrent_appenders_share_one_sequence(make, prefix).await;
}

/// A stream nothing was sent to: offset 0, nothing to read, nothing missed.
pub async fn an_empty_stream_is_at_zero(make: Factory<'_>, prefix: &str) {
    let history = make(retention(10));
    let tenant = format!("{prefix}empty");
    let position = history.position(&tenant, "tenant").await.expect("position");
    assert_eq!(position.offset, 0);
    let read = history
        .read(&tenant, "tenant", 0, 10, T0)
        .await
        .expect("read");
    assert!(read.messages.is_empty());
    assert!(read.complete);
}

/// Offsets 1, 2, 3 in one epoch; data and topic intact; `since` and
/// `limit` respected.
pub async fn offsets_are_gapless_and_read_back_in_order(make: Factory<'_>, prefix: &str) {
    let history = make(retention(10));
    let tenant = format!("{prefix}order");
    let mut epochs = Vec::new();
    for i in 1..=3u64 {
        let data = json!({"i": i, "text": "héllo \"quoted\"", "nested": [1, {"x": null}]});
        let topic = (i == 2).then_some("chat");
        let position = history
            .append(&tenant, "group:room", &data, topic, T0 + i as i64, None)
            .await
            .expect("append");
        assert_eq!(position.offset, i);
        epochs.push(position.epoch);
    }
    assert!(epochs.iter().all(|e| e == &epochs[0] && !e.is_empty()));
    let read = history
        .read(&tenant, "group:room", 0, 10, T0 + 10)
        .await
        .expect("read");
    assert!(read.complete);
    assert_eq!(read.position.offset, 3);
    assert_eq!(read.position.epoch, epochs[0]);
    let offsets: Vec<u64> = read.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(read.messages[1].topic.as_deref(), Some("chat"));
    assert_eq!(read.messages[0].topic, None);
    assert_eq!(
        read.messages[2].data["nested"][1]["x"],
        serde_json::Value::Null
    );
    assert_eq!(read.messages[2].data["text"], "héllo \"quoted\"");
    assert_eq!(read.messages[0].at_ms, T0 + 1);

    let read = history
        .read(&tenant, "group:room", 2, 10, T0 + 10)
        .await
        .expect("read");
    assert_eq!(read.messages.len(), 1);
    assert_eq!(read.messages[0].offset, 3);
    assert!(read.complete);
    let read = history
        .read(&tenant, "group:room", 0, 2, T0 + 10)
        .await
        .expect("read");
    assert_eq!(
        read.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [1, 2]
    );
    let read = history
        .read(&tenant, "group:room", 3, 10, T0 + 10)
        .await
        .expect("read");
    assert!(read.messages.is_empty() && read.complete);
    assert_eq!(
        history
            .position(&tenant, "group:room")
            .await
            .expect("position")
            .offset,
        3
    );
}

/// The same stream name in two tenants, and two streams of one tenant,
/// have their own sequences.
pub async fn tenants_and_streams_are_separate(make: Factory<'_>, prefix: &str) {
    let history = make(retention(10));
    let a = format!("{prefix}sep-a");
    let b = format!("{prefix}sep-b");
    for _ in 0..3 {
        history
            .append(&a, "tenant", &json!("a"), None, T0, None)
            .await
            .expect("append");
    }
    let first_b = history
        .append(&b, "tenant", &json!("b"), None, T0, None)
        .await
        .expect("append");
    assert_eq!(first_b.offset, 1);
    let user = history
        .append(&a, "user:alice", &json!("u"), None, T0, None)
        .await
        .expect("append");
    assert_eq!(user.offset, 1);
    let read = history.read(&b, "tenant", 0, 10, T0).await.expect("read");
    assert_eq!(read.messages.len(), 1);
    assert_eq!(read.messages[0].data, json!("b"));
}

/// Past `size` messages, the oldest are gone and a read from before them is
/// not complete.
pub async fn retention_by_count(make: Factory<'_>, prefix: &str) {
    let history = make(retention(5));
    let tenant = format!("{prefix}count");
    for i in 1..=12i64 {
        history
            .append(&tenant, "tenant", &json!(i), None, T0 + i, None)
            .await
            .expect("append");
    }
    let read = history
        .read(&tenant, "tenant", 0, 100, T0 + 20)
        .await
        .expect("read");
    assert!(!read.complete);
    assert_eq!(
        read.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [8, 9, 10, 11, 12]
    );
    let read = history
        .read(&tenant, "tenant", 7, 100, T0 + 20)
        .await
        .expect("read");
    assert!(read.complete);
    assert_eq!(read.messages.len(), 5);
    let read = history
        .read(&tenant, "tenant", 6, 100, T0 + 20)
        .await
        .expect("read");
    assert!(!read.complete);
}

/// Past the TTL, messages are gone (even before the store deletes them)
/// and a read from before them is not complete; the offset carries on.
pub async fn retention_by_age(make: Factory<'_>, prefix: &str) {
    let history = make(retention(100));
    let tenant = format!("{prefix}age");
    for i in 1..=3i64 {
        history
            .append(&tenant, "tenant", &json!(i), None, T0 + i * 1000, None)
            .await
            .expect("append");
    }
    // 60 s after the second message: only the third remains.
    let later = T0 + 2000 + 60_000;
    let read = history
        .read(&tenant, "tenant", 0, 100, later)
        .await
        .expect("read");
    assert_eq!(
        read.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [3]
    );
    assert!(!read.complete);
    let read = history
        .read(&tenant, "tenant", 2, 100, later)
        .await
        .expect("read");
    assert!(read.complete);
    let much_later = T0 + 3_600_000;
    let read = history
        .read(&tenant, "tenant", 1, 100, much_later)
        .await
        .expect("read");
    assert!(read.messages.is_empty() && !read.complete);
    let read = history
        .read(&tenant, "tenant", 3, 100, much_later)
        .await
        .expect("read");
    assert!(read.complete, "nothing was missed after 3");
    let next = history
        .append(&tenant, "tenant", &json!(4), None, much_later, None)
        .await
        .expect("append");
    assert_eq!(next.offset, 4);
}

/// Several appenders (on DynamoDB: several clients, as replicas are) on one
/// stream: every offset from 1 to n given exactly once, every message
/// stored at its offset.
pub async fn concurrent_appenders_share_one_sequence(make: Factory<'_>, prefix: &str) {
    const WRITERS: u64 = 4;
    const EACH: u64 = 15;
    let tenant = format!("{prefix}race");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let history = make(retention(1000));
            let tenant = tenant.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..EACH {
                    let position = history
                        .append(
                            &tenant,
                            "group:hot",
                            &json!({"w": w, "i": i}),
                            None,
                            T0,
                            None,
                        )
                        .await
                        .expect("append");
                    mine.push((position.offset, w, i));
                }
                mine
            })
        })
        .collect();
    let mut given = Vec::new();
    for task in tasks {
        given.extend(task.await.expect("join"));
    }
    given.sort_unstable();
    let offsets: Vec<u64> = given.iter().map(|g| g.0).collect();
    assert_eq!(offsets, (1..=WRITERS * EACH).collect::<Vec<_>>());
    let read = make(retention(1000))
        .read(&tenant, "group:hot", 0, 1000, T0)
        .await
        .expect("read");
    assert!(read.complete);
    assert_eq!(read.messages.len() as u64, WRITERS * EACH);
    for (message, (offset, w, i)) in read.messages.iter().zip(&given) {
        assert_eq!(message.offset, *offset);
        assert_eq!(message.data, json!({"w": w, "i": i}));
    }
}
