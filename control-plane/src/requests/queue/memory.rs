//! The embedded request queue: one ordered map behind a mutex (held only
//! for in-memory work, never across an await). Nothing survives a restart;
//! use DynamoDB for durability. Finished requests stay readable (`GetRequest`,
//! `subscribe`, duplicate detection) until [`MAX_FINISHED`] newer ones have
//! finished; DynamoDB keeps them for 7 days by TTL.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
};

use async_trait::async_trait;
use serde_json::Value;

use super::{Failure, ProgressState, QueueError, Request, RequestQueue, Status};

type Key = (String, String);

/// How many finished requests the embedded queue keeps (the most recently
/// finished); without a bound a long-running `dev` or embedded deployment
/// grows by every request it ever served (found by the 10-minute soak).
pub const MAX_FINISHED: usize = 10_000;

/// The embedded queue.
#[derive(Debug)]
pub struct MemoryQueue {
    requests: Mutex<BTreeMap<Key, Request>>,
    /// Finished requests, oldest first.
    finished: Mutex<VecDeque<Key>>,
    max_finished: usize,
    /// Published actions: name → (spec, until ms).
    published: Mutex<std::collections::HashMap<String, (Value, i64)>>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::keeping(MAX_FINISHED)
    }
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty queue that keeps `max_finished` finished requests.
    pub fn keeping(max_finished: usize) -> Self {
        Self {
            requests: Mutex::default(),
            finished: Mutex::default(),
            max_finished,
            published: Mutex::default(),
        }
    }

    /// Records that `key` has just finished, and forgets the oldest finished
    /// requests past the bound.
    fn retire(&self, key: Key) {
        let Ok(mut finished) = self.finished.lock() else {
            return;
        };
        finished.push_back(key);
        let excess = finished.len().saturating_sub(self.max_finished);
        let evicted: Vec<Key> = finished.drain(..excess).collect();
        drop(finished);
        if !evicted.is_empty() {
            let _ = self.with(|requests| {
                for key in evicted {
                    if requests.get(&key).is_some_and(|r| r.status.is_final()) {
                        requests.remove(&key);
                    }
                }
            });
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<Key, Request>) -> T) -> Result<T, QueueError> {
        let mut requests = self
            .requests
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?;
        Ok(f(&mut requests))
    }

    fn update(
        &self,
        tenant_id: &str,
        request_id: &str,
        change: impl FnOnce(&mut Request) -> bool,
    ) -> Result<Request, QueueError> {
        let key = (tenant_id.to_owned(), request_id.to_owned());
        let (request, finished_now) = self.with(|requests| {
            let Some(request) = requests.get_mut(&key) else {
                return Err(QueueError::NotFound);
            };
            let was_final = request.status.is_final();
            if change(request) {
                Ok((request.clone(), !was_final && request.status.is_final()))
            } else {
                Err(QueueError::Conflict {
                    status: request.status.as_str(),
                })
            }
        })??;
        if finished_now {
            self.retire(key);
        }
        Ok(request)
    }
}

fn owned_by(request: &Request, owner: Option<&str>) -> bool {
    request.status == Status::Running
        && owner.is_none_or(|o| request.lease_owner.as_deref() == Some(o))
}

#[async_trait]
impl RequestQueue for MemoryQueue {
    /// Memory holds what the message limits let in.
    fn max_value_bytes(&self) -> Option<usize> {
        None
    }

    async fn create(&self, request: Request) -> Result<(), QueueError> {
        self.with(|requests| {
            let key = (request.tenant_id.clone(), request.request_id.clone());
            if let Some(existing) = requests.get(&key) {
                return Err(QueueError::Duplicate {
                    status: existing.status.as_str(),
                    user_id: existing.user_id.clone(),
                });
            }
            requests.insert(key, request);
            Ok(())
        })?
    }

    async fn get(&self, tenant_id: &str, request_id: &str) -> Result<Option<Request>, QueueError> {
        self.with(|requests| {
            requests
                .get(&(tenant_id.to_owned(), request_id.to_owned()))
                .cloned()
        })
    }

    async fn list(
        &self,
        tenant_id: &str,
        status: Option<Status>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Request>, Option<String>), QueueError> {
        let limit = limit.max(1);
        self.with(|requests| {
            let start = (
                tenant_id.to_owned(),
                after.map(|a| format!("{a}\0")).unwrap_or_default(),
            );
            let page: Vec<Request> = requests
                .range(start..)
                .take_while(|((tenant, _), _)| tenant == tenant_id)
                .map(|(_, r)| r)
                .filter(|r| status.is_none_or(|s| r.status == s))
                .take(limit)
                .cloned()
                .collect();
            let next = (page.len() == limit).then(|| page[limit - 1].request_id.clone());
            (page, next)
        })
    }

    async fn lease(
        &self,
        actions: &[String],
        tenant: Option<&str>,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<Request>, QueueError> {
        self.with(|requests| {
            let candidate = requests
                .values_mut()
                .filter(|r| {
                    r.status == Status::Queued
                        && r.not_before_ms <= now_ms
                        && actions.contains(&r.action)
                        && tenant.is_none_or(|t| r.tenant_id == t)
                })
                .min_by_key(|r| (r.not_before_ms.max(r.created_ms), r.created_ms))?;
            candidate.status = Status::Running;
            candidate.attempts += 1;
            candidate.lease_owner = Some(owner.to_owned());
            candidate.lease_expires_ms =
                now_ms + i64::try_from(candidate.lease_timeout_ms).unwrap_or(i64::MAX / 2);
            candidate.updated_ms = now_ms;
            Some(candidate.clone())
        })
    }

    async fn progress(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
        progress: ProgressState,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        self.update(tenant_id, request_id, |r| {
            if !owned_by(r, Some(owner)) {
                return false;
            }
            r.progress = Some(progress);
            r.lease_expires_ms = now_ms + i64::try_from(r.lease_timeout_ms).unwrap_or(i64::MAX / 2);
            r.updated_ms = now_ms;
            true
        })
    }

    async fn complete(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
        result: Value,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        self.update(tenant_id, request_id, |r| {
            if !owned_by(r, Some(owner)) {
                return false;
            }
            r.status = Status::Completed;
            r.result = Some(result);
            r.lease_owner = None;
            r.updated_ms = now_ms;
            true
        })
    }

    async fn fail(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: Option<&str>,
        failure: Failure,
        retry_at: Option<i64>,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        self.update(tenant_id, request_id, |r| {
            if !owned_by(r, owner) {
                return false;
            }
            r.lease_owner = None;
            r.updated_ms = now_ms;
            match retry_at {
                Some(at) => {
                    r.status = Status::Queued;
                    r.not_before_ms = at;
                }
                None => {
                    r.status = Status::Failed;
                    r.error = Some(failure);
                }
            }
            true
        })
    }

    async fn cancel(
        &self,
        tenant_id: &str,
        request_id: &str,
        holder: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        self.update(tenant_id, request_id, |r| {
            if r.status.is_final() || r.lease_owner.as_deref() != holder {
                return false;
            }
            r.status = Status::Cancelled;
            r.cancel_owner = r.lease_owner.take();
            r.error = Some(Failure {
                code: "CANCELLED".into(),
                message: "request cancelled".into(),
            });
            r.updated_ms = now_ms;
            true
        })
    }

    async fn publish_action(
        &self,
        name: &str,
        spec: &Value,
        until_ms: i64,
    ) -> Result<(), QueueError> {
        self.published
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .insert(name.to_owned(), (spec.clone(), until_ms));
        Ok(())
    }

    async fn published_action(&self, name: &str, now_ms: i64) -> Result<Option<Value>, QueueError> {
        Ok(self
            .published
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .get(name)
            .filter(|(_, until)| *until > now_ms)
            .map(|(spec, _)| spec.clone()))
    }

    async fn cancels_for(&self, owner: &str) -> Result<Vec<(String, String)>, QueueError> {
        self.with(|requests| {
            requests
                .values()
                .filter(|r| r.cancel_owner.as_deref() == Some(owner))
                .map(|r| (r.tenant_id.clone(), r.request_id.clone()))
                .collect()
        })
    }

    async fn cancel_told(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
    ) -> Result<(), QueueError> {
        self.with(|requests| {
            if let Some(r) = requests.get_mut(&(tenant_id.to_owned(), request_id.to_owned()))
                && r.cancel_owner.as_deref() == Some(owner)
            {
                r.cancel_owner = None;
            }
        })
    }

    async fn subscribe(
        &self,
        tenant_id: &str,
        request_id: &str,
        connection_id: &str,
    ) -> Result<Request, QueueError> {
        self.update(tenant_id, request_id, |r| {
            if !r.subscribers.iter().any(|s| s == connection_id) {
                r.subscribers.push(connection_id.to_owned());
            }
            true
        })
    }

    async fn expired_leases(&self, now_ms: i64, limit: usize) -> Result<Vec<Request>, QueueError> {
        self.with(|requests| {
            requests
                .values()
                .filter(|r| r.status == Status::Running && r.lease_expires_ms < now_ms)
                .take(limit)
                .cloned()
                .collect()
        })
    }

    async fn queued_stats(&self, actions: &[String]) -> Result<(u64, Option<i64>), QueueError> {
        self.with(|requests| {
            let queued = requests
                .values()
                .filter(|r| r.status == Status::Queued && actions.contains(&r.action));
            queued.fold((0u64, None), |(n, oldest): (u64, Option<i64>), r| {
                (
                    n + 1,
                    Some(oldest.map_or(r.created_ms, |o| o.min(r.created_ms))),
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_most_recently_finished_requests_are_kept() {
        let queue = MemoryQueue::keeping(2);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let now = i64::try_from(i).expect("small");
            queue
                .create(Request::queued(
                    "t",
                    id,
                    "job",
                    Value::Null,
                    "u",
                    "c",
                    3,
                    1000,
                    now,
                ))
                .await
                .expect("create");
        }
        // A request still queued or running is never forgotten.
        queue.cancel("t", "b", None, 10).await.expect("cancel b");
        queue.cancel("t", "c", None, 11).await.expect("cancel c");
        assert!(queue.get("t", "a").await.expect("get").is_some());
        queue.cancel("t", "a", None, 12).await.expect("cancel a");
        // Three finished, two kept: the first to finish is gone.
        assert!(queue.get("t", "b").await.expect("get").is_none());
        assert!(queue.get("t", "c").await.expect("get").is_some());
        assert!(queue.get("t", "a").await.expect("get").is_some());
        // A finished request's id is free again once it is forgotten.
        queue
            .create(Request::queued(
                "t",
                "b",
                "job",
                Value::Null,
                "u",
                "c",
                3,
                1000,
                13,
            ))
            .await
            .expect("b again");
    }
}
