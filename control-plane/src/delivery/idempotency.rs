//! Idempotency keys of `BroadcastService.Send`: within a window, the same
//! key (per tenant) with the same request answers the first Send's
//! response and delivers nothing again; with another request it is
//! refused. A Send refused before it delivered or stored anything gives
//! its key back.
//!
//! Two stores, each stating every method: this process's memory (the
//! embedded store, one process), and DynamoDB (one conditional write per
//! key on the rate-limits table, whose `expires_at` TTL drops it), so a
//! retry that reaches another replica is still a replay.
//!
//! A claim is a lease: the Send holding it renews it every
//! [`CLAIM_LEASE`]` / 3` while it runs. A claim left unanswered past its
//! lease — its replica was killed, or its caller went away between the
//! claim and the Send starting — is taken over by the next try, so a
//! retry waits at most [`CLAIM_LEASE`], not the whole window.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_dynamodb::{Client, primitives::Blob, types::AttributeValue};

use crate::{
    clock::Clock,
    error::Fault,
    store::dynamo::{Item, condition_failed, describe, n, number, s},
};

/// How long an unanswered claim holds without being renewed.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// A key's record: what request claimed it, and its answer once there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// SHA-256 of the request (without its key).
    pub fingerprint: [u8; 32],
    /// The first Send's response (encoded), once it finished.
    pub response: Option<Vec<u8>>,
    /// When the claim was made or last renewed (seconds since the epoch,
    /// on the control plane's clock).
    pub claimed_at: i64,
}

impl Record {
    /// An unanswered claim whose lease ran out at `now`, that a try of
    /// the same request (`fingerprint`) may take over; another request
    /// under the key stays refused for the whole window.
    pub fn abandoned_to(&self, fingerprint: [u8; 32], now: i64) -> bool {
        self.fingerprint == fingerprint
            && self.response.is_none()
            && self.claimed_at + lease_secs() < now
    }
}

fn lease_secs() -> i64 {
    i64::try_from(CLAIM_LEASE.as_secs()).unwrap_or(30)
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: this Send is the first.
    Mine,
    /// Another Send holds the key (running, or finished with a response).
    Taken(Record),
}

/// Where keys are kept.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint` for `window`.
    async fn claim(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        window: Duration,
    ) -> Result<Claim, Fault>;
    /// The key's record, if it is held.
    async fn get(&self, key: &str) -> Result<Option<Record>, Fault>;
    /// Stores the first Send's response under its key.
    async fn complete(&self, key: &str, response: Vec<u8>) -> Result<(), Fault>;
    /// Gives the key back (the Send was refused before anything happened).
    async fn release(&self, key: &str) -> Result<(), Fault>;
    /// Renews an unanswered claim's lease (the Send holding it still runs).
    async fn renew(&self, key: &str) -> Result<(), Fault>;
}

/// Whole seconds since the epoch on the control plane's clock (the one
/// its TTLs and leases read, pausable in tests).
fn now_secs(clock: &Clock) -> i64 {
    clock.now_ms().div_euclid(1000)
}

/// Keys in this process's memory (the embedded store).
#[derive(Debug)]
pub struct MemoryKeys {
    keys: Mutex<HashMap<String, (Record, i64)>>,
    clock: Clock,
}

impl MemoryKeys {
    /// No keys yet; windows measured on `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            clock,
        }
    }
}

/// Most keys held in memory at once; past it, the expired ones are dropped
/// and, if it is still full, a new key is refused as unavailable.
const MAX_MEMORY_KEYS: usize = 1_000_000;

#[async_trait]
impl KeyStore for MemoryKeys {
    async fn claim(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        window: Duration,
    ) -> Result<Claim, Fault> {
        let now = now_secs(&self.clock);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_MEMORY_KEYS {
            keys.retain(|_, (_, until)| *until > now);
            if keys.len() >= MAX_MEMORY_KEYS {
                return Err(Fault::unavailable("too many idempotency keys held"));
            }
        }
        match keys.get(key) {
            Some((record, until)) if *until > now && !record.abandoned_to(fingerprint, now) => {
                Ok(Claim::Taken(record.clone()))
            }
            _ => {
                let until = now + i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2);
                keys.insert(
                    key.to_owned(),
                    (
                        Record {
                            fingerprint,
                            response: None,
                            claimed_at: now,
                        },
                        until,
                    ),
                );
                Ok(Claim::Mine)
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, Fault> {
        let now = now_secs(&self.clock);
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        Ok(keys
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(record, _)| record.clone()))
    }

    async fn complete(&self, key: &str, response: Vec<u8>) -> Result<(), Fault> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((record, _)) = keys.get_mut(key) {
            record.response = Some(response);
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), Fault> {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(())
    }

    async fn renew(&self, key: &str) -> Result<(), Fault> {
        let now = now_secs(&self.clock);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((record, _)) = keys.get_mut(key)
            && record.response.is_none()
        {
            record.claimed_at = now;
        }
        Ok(())
    }
}

/// Keys in DynamoDB, on the rate-limits table (`limiter_key`, TTL
/// `expires_at`): one conditional write claims a key for every replica.
#[derive(Debug, Clone)]
pub struct DynamoKeys {
    client: Client,
    table: Arc<str>,
    clock: Clock,
}

impl DynamoKeys {
    /// Keys on `table`, windows measured on `clock`.
    pub fn new(client: Client, table: &str, clock: Clock) -> Self {
        Self {
            client,
            table: Arc::from(table),
            clock,
        }
    }

    fn item_key(key: &str) -> AttributeValue {
        s(&format!("idem#{key}"))
    }
}

fn record(item: &Item) -> Option<Record> {
    let fingerprint = item
        .get("fingerprint")
        .and_then(|v| v.as_b().ok())
        .and_then(|b| <[u8; 32]>::try_from(b.as_ref()).ok())?;
    let response = item
        .get("response")
        .and_then(|v| v.as_b().ok())
        .map(|b| b.as_ref().to_vec());
    Some(Record {
        fingerprint,
        response,
        claimed_at: number(item, "claimed_at").unwrap_or(0),
    })
}

fn unavailable(err: impl std::fmt::Display) -> Fault {
    tracing::warn!(error = %err, "idempotency store call failed");
    Fault::unavailable("the idempotency store is unavailable; retry with the same key")
}

#[async_trait]
impl KeyStore for DynamoKeys {
    async fn claim(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        window: Duration,
    ) -> Result<Claim, Fault> {
        let now = now_secs(&self.clock);
        for _ in 0..3 {
            let item = Item::from([
                ("limiter_key".to_owned(), Self::item_key(key)),
                (
                    "fingerprint".to_owned(),
                    AttributeValue::B(Blob::new(fingerprint.to_vec())),
                ),
                (
                    "expires_at".to_owned(),
                    n(now + i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2)),
                ),
                ("claimed_at".to_owned(), n(now)),
            ]);
            let put = self
                .client
                .put_item()
                .table_name(&*self.table)
                .set_item(Some(item))
                // Free, held past its window (TTL deletes lazily), or
                // claimed by a Send that stopped renewing it unanswered.
                .condition_expression(
                    "attribute_not_exists(limiter_key) OR expires_at < :now \
                     OR (attribute_not_exists(#r) AND claimed_at < :stale AND fingerprint = :fp)",
                )
                .expression_attribute_names("#r", "response")
                .expression_attribute_values(
                    ":fp",
                    AttributeValue::B(Blob::new(fingerprint.to_vec())),
                )
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":stale", n(now - lease_secs()))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(Claim::Mine),
                Err(err) if condition_failed(&err) => match self.get(key).await? {
                    Some(record) if !record.abandoned_to(fingerprint, now) => {
                        return Ok(Claim::Taken(record));
                    }
                    // Abandoned between the two calls: try again.
                    Some(_) => continue,
                    // Released or expired between the two calls: try again.
                    None => continue,
                },
                Err(err) => return Err(unavailable(describe(&err))),
            }
        }
        Err(Fault::unavailable(
            "the idempotency key is contended; retry with the same key",
        ))
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, Fault> {
        let found = self
            .client
            .get_item()
            .table_name(&*self.table)
            .key("limiter_key", Self::item_key(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        let now = now_secs(&self.clock);
        Ok(found
            .item()
            .filter(|item| number(item, "expires_at").is_some_and(|until| until >= now))
            .and_then(record))
    }

    async fn complete(&self, key: &str, response: Vec<u8>) -> Result<(), Fault> {
        self.client
            .update_item()
            .table_name(&*self.table)
            .key("limiter_key", Self::item_key(key))
            .update_expression("SET #r = :r")
            .condition_expression("attribute_exists(limiter_key)")
            .expression_attribute_names("#r", "response")
            .expression_attribute_values(":r", AttributeValue::B(Blob::new(response)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(describe(&e)))
    }

    async fn release(&self, key: &str) -> Result<(), Fault> {
        self.client
            .delete_item()
            .table_name(&*self.table)
            .key("limiter_key", Self::item_key(key))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(describe(&e)))
    }

    async fn renew(&self, key: &str) -> Result<(), Fault> {
        let renewed = self
            .client
            .update_item()
            .table_name(&*self.table)
            .key("limiter_key", Self::item_key(key))
            .update_expression("SET claimed_at = :now")
            .condition_expression("attribute_exists(limiter_key) AND attribute_not_exists(#r)")
            .expression_attribute_names("#r", "response")
            .expression_attribute_values(":now", n(now_secs(&self.clock)))
            .send()
            .await;
        match renewed {
            // Answered or released meanwhile: nothing to renew.
            Err(err) if condition_failed(&err) => Ok(()),
            other => other.map(|_| ()).map_err(|e| unavailable(describe(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_keys_claim_replay_and_release() {
        let keys = MemoryKeys::new(Clock::new());
        let window = Duration::from_secs(60);
        assert!(matches!(
            keys.claim("t/k", [1; 32], window).await,
            Ok(Claim::Mine)
        ));
        let taken = keys.claim("t/k", [2; 32], window).await.expect("claim");
        assert_eq!(
            taken,
            Claim::Taken(Record {
                fingerprint: [1; 32],
                response: None,
                claimed_at: now_secs(&Clock::new()),
            })
        );
        keys.complete("t/k", vec![7]).await.expect("complete");
        assert_eq!(
            keys.get("t/k").await.expect("get").and_then(|r| r.response),
            Some(vec![7])
        );
        keys.release("t/k").await.expect("release");
        assert!(matches!(
            keys.claim("t/k", [2; 32], window).await,
            Ok(Claim::Mine)
        ));
        // A window of nothing: the key is free again at once.
        assert!(matches!(
            keys.claim("t/other", [1; 32], Duration::ZERO).await,
            Ok(Claim::Mine)
        ));
        assert!(matches!(
            keys.claim("t/other", [2; 32], window).await,
            Ok(Claim::Mine)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_free_again_when_its_window_has_passed_on_the_clock() {
        let keys = MemoryKeys::new(Clock::new());
        let window = Duration::from_secs(300);
        assert!(matches!(
            keys.claim("t/k", [1; 32], window).await,
            Ok(Claim::Mine)
        ));
        keys.complete("t/k", vec![1]).await.expect("complete");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(matches!(
            keys.claim("t/k", [2; 32], window).await,
            Ok(Claim::Taken(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            keys.claim("t/k", [2; 32], window).await,
            Ok(Claim::Mine)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_claim_is_taken_over_once_its_lease_runs_out_unless_renewed() {
        let keys = MemoryKeys::new(Clock::new());
        let window = Duration::from_secs(300);
        assert!(matches!(
            keys.claim("t/k", [1; 32], window).await,
            Ok(Claim::Mine)
        ));
        // Renewed while it runs: held past one lease.
        for _ in 0..3 {
            tokio::time::advance(CLAIM_LEASE / 3).await;
            keys.renew("t/k").await.expect("renew");
        }
        assert!(matches!(
            keys.claim("t/k", [1; 32], window).await,
            Ok(Claim::Taken(_))
        ));
        // Its Send died: one lease later another request under the key is
        // still refused, and the next try of the same request holds it.
        tokio::time::advance(CLAIM_LEASE + Duration::from_secs(2)).await;
        assert!(matches!(
            keys.claim("t/k", [2; 32], window).await,
            Ok(Claim::Taken(record)) if record.fingerprint == [1; 32]
        ));
        assert!(matches!(
            keys.claim("t/k", [1; 32], window).await,
            Ok(Claim::Mine)
        ));
        // An answered claim is never taken over inside its window.
        keys.complete("t/k", vec![9]).await.expect("complete");
        tokio::time::advance(CLAIM_LEASE * 4).await;
        assert!(matches!(
            keys.claim("t/k", [1; 32], window).await,
            Ok(Claim::Taken(Record {
                response: Some(_),
                ..
            }))
        ));
    }
}
