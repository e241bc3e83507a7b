//! Idempotency keys of Send on DynamoDB (moto): one conditional write per
//! key holds across replicas; an unanswered claim is a lease that its Send
//! renews while it runs, and that the next try takes over once it ran out
//! (the replica holding it was killed). Time passing is a replica whose
//! clock reads later, as another process's would.

use std::time::Duration;

use streamer_control_plane::{
    clock::Clock,
    delivery::idempotency::{CLAIM_LEASE, Claim, DynamoKeys, KeyStore},
    store::dynamo::{TableSpec, string},
};
use streamer_test_kit::moto::client;

use crate::support;

const WINDOW: Duration = Duration::from_secs(300);

async fn table() -> String {
    support::fresh_table(
        "keys",
        TableSpec {
            hash: string("limiter_key"),
            range: None,
            indexes: Vec::new(),
            ttl: Some("expires_at"),
        },
    )
    .await
}

/// A replica whose clock reads `later` past `start`.
fn replica(table: &str, start: i64, later: Duration) -> DynamoKeys {
    let ms = i64::try_from(later.as_millis()).expect("ms");
    DynamoKeys::new(client(), table, Clock::starting_at(start + ms))
}

#[tokio::test]
async fn a_claim_holds_across_replicas_while_renewed_and_is_taken_over_when_its_send_died() {
    let table = table().await;
    let start = chrono::Utc::now().timestamp_millis();
    let first = replica(&table, start, Duration::ZERO);
    let key = "pay/abandoned";
    assert_eq!(
        first.claim(key, [1; 32], WINDOW).await.expect("claim"),
        Claim::Mine
    );
    // Another request under the key, on another replica: refused by its
    // fingerprint; the same request: taken, waiting for the answer.
    let other = replica(&table, start, Duration::from_secs(1));
    match other.claim(key, [2; 32], WINDOW).await.expect("claim") {
        Claim::Taken(record) => assert_eq!(record.fingerprint, [1; 32]),
        Claim::Mine => panic!("a held key was claimed again"),
    }
    // Renewed 20 s in: still held 31 s in.
    replica(&table, start, Duration::from_secs(20))
        .renew(key)
        .await
        .expect("renew");
    let at_31 = replica(&table, start, Duration::from_secs(31));
    assert!(matches!(
        at_31.claim(key, [1; 32], WINDOW).await.expect("claim"),
        Claim::Taken(_)
    ));
    // No renewal for a whole lease after that (its replica was killed):
    // the next try holds the key.
    let later = Duration::from_secs(20) + CLAIM_LEASE + Duration::from_secs(2);
    let taker = replica(&table, start, later);
    // Another request under the key never takes it over.
    match taker.claim(key, [2; 32], WINDOW).await.expect("claim") {
        Claim::Taken(record) => assert_eq!(record.fingerprint, [1; 32]),
        Claim::Mine => panic!("another request took over an abandoned key"),
    }
    assert_eq!(
        taker.claim(key, [1; 32], WINDOW).await.expect("claim"),
        Claim::Mine
    );
    // Answered: a replay on any replica, never taken over inside the window.
    taker.complete(key, vec![42]).await.expect("complete");
    let much_later = replica(&table, start, Duration::from_secs(200));
    match much_later.claim(key, [1; 32], WINDOW).await.expect("claim") {
        Claim::Taken(record) => assert_eq!(record.response, Some(vec![42])),
        Claim::Mine => panic!("an answered key was taken over"),
    }
    // A renewal of an answered key changes nothing.
    much_later.renew(key).await.expect("renew");
    // Given back (refused before anything happened): free at once.
    much_later.release(key).await.expect("release");
    assert_eq!(
        much_later.claim(key, [3; 32], WINDOW).await.expect("claim"),
        Claim::Mine
    );
}
