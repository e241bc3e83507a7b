//! The embedded request queue: one ordered map behind a mutex (held only
//! for in-memory work, never across an await), with indexes of the queued
//! requests by action and by tenant and action, so a lease takes the
//! oldest request it may serve at once however many other tenants have
//! waiting; and counts of each user's and tenant's open requests, so a
//! flood is refused at the bound. Nothing survives a restart; use DynamoDB
//! for durability. Finished requests stay readable (`GetRequest`,
//! `subscribe`, duplicate detection) until [`MAX_FINISHED`] newer ones have
//! finished; DynamoDB keeps them for 7 days by TTL.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Mutex,
};

use async_trait::async_trait;
use serde_json::Value;

use super::{Failure, ProgressState, QueueError, QueueLimits, Request, RequestQueue, Status};

type Key = (String, String);
/// A queued request's place: when it may be leased, when it was accepted,
/// and its key.
type Place = (i64, i64, Key);

/// How many finished requests the embedded queue keeps (the most recently
/// finished); without a bound a long-running `dev` or embedded deployment
/// grows by every request it ever served (found by the 10-minute soak).
pub const MAX_FINISHED: usize = 10_000;

/// The requests and their indexes.
#[derive(Debug, Default)]
struct State {
    requests: BTreeMap<Key, Request>,
    /// Queued requests of fleet-wide actions, by action (unbound
    /// processors lease from here).
    fleet: HashMap<String, BTreeSet<Place>>,
    /// Every queued request, by tenant and action (bound processors lease
    /// from here; expiry reads it).
    tenant: HashMap<(String, String), BTreeSet<Place>>,
    /// Open (queued or running) requests per tenant and per user.
    open_tenant: HashMap<String, u64>,
    open_user: HashMap<Key, u64>,
}

fn place(r: &Request) -> Place {
    (
        r.ready_at_ms(),
        r.created_ms,
        (r.tenant_id.clone(), r.request_id.clone()),
    )
}

fn is_open(status: Status) -> bool {
    matches!(status, Status::Queued | Status::Running)
}

impl State {
    /// Takes `r` out of the indexes and counts it kept.
    fn unindex(&mut self, r: &Request) {
        if r.status == Status::Queued {
            let at = place(r);
            if !r.scoped
                && let Some(set) = self.fleet.get_mut(&r.action)
            {
                set.remove(&at);
                if set.is_empty() {
                    self.fleet.remove(&r.action);
                }
            }
            let key = (r.tenant_id.clone(), r.action.clone());
            if let Some(set) = self.tenant.get_mut(&key) {
                set.remove(&at);
                if set.is_empty() {
                    self.tenant.remove(&key);
                }
            }
        }
        if is_open(r.status) {
            let user = (r.tenant_id.clone(), r.user_id.clone());
            for count in [
                self.open_tenant.get_mut(&r.tenant_id),
                self.open_user.get_mut(&user),
            ]
            .into_iter()
            .flatten()
            {
                *count = count.saturating_sub(1);
            }
            if self.open_tenant.get(&r.tenant_id) == Some(&0) {
                self.open_tenant.remove(&r.tenant_id);
            }
            if self.open_user.get(&user) == Some(&0) {
                self.open_user.remove(&user);
            }
        }
    }

    /// Puts `r` into the indexes and counts.
    fn index(&mut self, r: &Request) {
        if r.status == Status::Queued {
            let at = place(r);
            if !r.scoped {
                self.fleet
                    .entry(r.action.clone())
                    .or_default()
                    .insert(at.clone());
            }
            self.tenant
                .entry((r.tenant_id.clone(), r.action.clone()))
                .or_default()
                .insert(at);
        }
        if is_open(r.status) {
            *self.open_tenant.entry(r.tenant_id.clone()).or_default() += 1;
            *self
                .open_user
                .entry((r.tenant_id.clone(), r.user_id.clone()))
                .or_default() += 1;
        }
    }

    /// Changes the request at `key` with `change` (which says whether it
    /// applied), keeping the indexes: the request after, and whether it
    /// finished now.
    fn change(
        &mut self,
        key: &Key,
        change: impl FnOnce(&mut Request) -> bool,
    ) -> Result<(Request, bool), QueueError> {
        let Some(mut request) = self.requests.remove(key) else {
            return Err(QueueError::NotFound);
        };
        let before = request.clone();
        let was_final = request.status.is_final();
        if !change(&mut request) {
            let status = request.status.as_str();
            self.requests.insert(key.clone(), before);
            return Err(QueueError::Conflict { status });
        }
        self.unindex(&before);
        self.index(&request);
        let finished_now = !was_final && request.status.is_final();
        self.requests.insert(key.clone(), request.clone());
        Ok((request, finished_now))
    }
}

/// The embedded queue.
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<State>,
    /// Finished requests, oldest first.
    finished: Mutex<VecDeque<Key>>,
    max_finished: usize,
    limits: QueueLimits,
    /// Published actions: (scope, name) → (spec, until ms).
    published: Mutex<HashMap<(String, String), (Value, i64)>>,
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
            state: Mutex::default(),
            finished: Mutex::default(),
            max_finished,
            limits: QueueLimits::default(),
            published: Mutex::default(),
        }
    }

    /// The same queue, bounding open requests per user and tenant.
    pub fn with_limits(self, limits: QueueLimits) -> Self {
        Self { limits, ..self }
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
            let _ = self.with(|state| {
                for key in evicted {
                    if state
                        .requests
                        .get(&key)
                        .is_some_and(|r| r.status.is_final())
                    {
                        state.requests.remove(&key);
                    }
                }
            });
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, QueueError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?;
        Ok(f(&mut state))
    }

    fn update(
        &self,
        tenant_id: &str,
        request_id: &str,
        change: impl FnOnce(&mut Request) -> bool,
    ) -> Result<Request, QueueError> {
        let key = (tenant_id.to_owned(), request_id.to_owned());
        let (request, finished_now) = self.with(|state| state.change(&key, change))??;
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
        let limits = self.limits;
        self.with(|state| {
            let key = (request.tenant_id.clone(), request.request_id.clone());
            if let Some(existing) = state.requests.get(&key) {
                return Err(QueueError::Duplicate {
                    status: existing.status.as_str(),
                    user_id: existing.user_id.clone(),
                });
            }
            let open = |count: Option<&u64>| count.copied().unwrap_or(0);
            if limits.max_per_user > 0
                && open(
                    state
                        .open_user
                        .get(&(request.tenant_id.clone(), request.user_id.clone())),
                ) >= limits.max_per_user
            {
                return Err(QueueError::Full {
                    who: "user",
                    max: limits.max_per_user,
                });
            }
            if limits.max_per_tenant > 0
                && open(state.open_tenant.get(&request.tenant_id)) >= limits.max_per_tenant
            {
                return Err(QueueError::Full {
                    who: "tenant",
                    max: limits.max_per_tenant,
                });
            }
            state.index(&request);
            state.requests.insert(key, request);
            Ok(())
        })?
    }

    async fn get(&self, tenant_id: &str, request_id: &str) -> Result<Option<Request>, QueueError> {
        self.with(|state| {
            state
                .requests
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
        self.with(|state| {
            let start = (
                tenant_id.to_owned(),
                after.map(|a| format!("{a}\0")).unwrap_or_default(),
            );
            let page: Vec<Request> = state
                .requests
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
        self.with(|state| {
            let oldest = actions
                .iter()
                .filter_map(|action| {
                    let queued = match tenant {
                        Some(t) => state.tenant.get(&(t.to_owned(), action.clone())),
                        None => state.fleet.get(action),
                    };
                    queued.and_then(|set| set.first()).cloned()
                })
                .filter(|(ready, _, _)| *ready <= now_ms)
                .min()?;
            let (_, _, key) = oldest;
            state
                .change(&key, |r| {
                    r.status = Status::Running;
                    r.attempts += 1;
                    r.lease_owner = Some(owner.to_owned());
                    r.lease_expires_ms =
                        now_ms + i64::try_from(r.lease_timeout_ms).unwrap_or(i64::MAX / 2);
                    r.updated_ms = now_ms;
                    true
                })
                .ok()
                .map(|(request, _)| request)
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

    async fn claim_action(
        &self,
        scope: &str,
        name: &str,
        spec: &Value,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Value>, QueueError> {
        let mut published = self
            .published
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?;
        let key = (scope.to_owned(), name.to_owned());
        if let Some((existing, until)) = published.get(&key)
            && *until > now_ms
            && existing != spec
        {
            return Ok(Some(existing.clone()));
        }
        published.insert(key, (spec.clone(), until_ms));
        Ok(None)
    }

    async fn published_action(
        &self,
        scope: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<Value>, QueueError> {
        Ok(self
            .published
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .get(&(scope.to_owned(), name.to_owned()))
            .filter(|(_, until)| *until > now_ms)
            .map(|(spec, _)| spec.clone()))
    }

    async fn expire_waiting(
        &self,
        ready_before_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Request>, QueueError> {
        let expired = self.with(|state| {
            let mut due: Vec<Key> = state
                .tenant
                .values()
                .flat_map(|set| {
                    set.iter()
                        .take_while(|(ready, _, _)| *ready <= ready_before_ms)
                        .map(|(_, _, key)| key.clone())
                })
                .collect();
            due.sort();
            due.truncate(limit);
            due.into_iter()
                .filter_map(|key| {
                    state
                        .change(&key, |r| {
                            if r.status != Status::Queued || r.ready_at_ms() > ready_before_ms {
                                return false;
                            }
                            r.status = Status::Expired;
                            r.error = Some(Failure {
                                code: "TIMEOUT".into(),
                                message: "the request waited too long for a processor".into(),
                            });
                            r.updated_ms = now_ms;
                            true
                        })
                        .ok()
                        .map(|(request, _)| request)
                })
                .collect::<Vec<_>>()
        })?;
        for request in &expired {
            self.retire((request.tenant_id.clone(), request.request_id.clone()));
        }
        Ok(expired)
    }

    async fn cancels_for(&self, owner: &str) -> Result<Vec<(String, String)>, QueueError> {
        self.with(|state| {
            state
                .requests
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
        self.with(|state| {
            if let Some(r) = state
                .requests
                .get_mut(&(tenant_id.to_owned(), request_id.to_owned()))
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
        self.with(|state| {
            state
                .requests
                .values()
                .filter(|r| r.status == Status::Running && r.lease_expires_ms < now_ms)
                .take(limit)
                .cloned()
                .collect()
        })
    }

    async fn queued_stats(&self, actions: &[String]) -> Result<(u64, Option<i64>), QueueError> {
        self.with(|state| {
            state
                .tenant
                .iter()
                .filter(|((_, action), _)| actions.contains(action))
                .flat_map(|(_, set)| set.iter())
                .fold(
                    (0u64, None),
                    |(n, oldest): (u64, Option<i64>), (_, created, _)| {
                        (n + 1, Some(oldest.map_or(*created, |o| o.min(*created))))
                    },
                )
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
