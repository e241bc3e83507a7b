//! The request-queue contract as executable checks, run against every
//! backend (embedded in unit tests, DynamoDB against a real server).

use serde_json::json;

use super::{Failure, ProgressState, QueueError, Request, RequestQueue, Status};

const NOW: i64 = 1_800_000_000_000;

fn request(tenant: &str, id: &str, action: &str, created: i64) -> Request {
    Request::queued(
        tenant,
        id,
        action,
        json!({"n": 1}),
        "alice",
        "conn-1",
        3,
        30_000,
        created,
    )
}

fn failure() -> Failure {
    Failure {
        code: "PROCESSING_FAILED".into(),
        message: "boom".into(),
    }
}

/// Runs every check; `prefix` keeps runs against a shared store apart.
pub async fn run_all(queue: &dyn RequestQueue, prefix: &str) {
    create_get_and_duplicates(queue, prefix).await;
    lease_progress_complete(queue, prefix).await;
    retries_and_final_failure(queue, prefix).await;
    cancel_and_subscribe(queue, prefix).await;
    listing_pages_by_status(queue, prefix).await;
    a_backlog_of_one_tenant_hides_nothing_from_another(queue, prefix, 60).await;
    a_tenants_own_actions_are_leased_only_by_its_processors(queue, prefix).await;
    requests_that_wait_too_long_expire(queue, prefix).await;
    one_definition_per_action_and_scope(queue, prefix).await;
}

/// A processor bound to a tenant leases that tenant's oldest request at
/// once, however many of another tenant's wait before it; an unbound one
/// takes the oldest of all (first come, first served across tenants).
pub async fn a_backlog_of_one_tenant_hides_nothing_from_another(
    queue: &dyn RequestQueue,
    prefix: &str,
    backlog: usize,
) {
    let (ta, tb) = (format!("{prefix}q-fair-a"), format!("{prefix}q-fair-b"));
    let action = format!("{prefix}shared");
    for i in 0..backlog {
        queue
            .create(request(&ta, &format!("a{i:05}"), &action, NOW + i as i64))
            .await
            .expect("backlog");
    }
    queue
        .create(request(&tb, "b1", &action, NOW + backlog as i64 + 1))
        .await
        .expect("the other tenant's");
    let now = NOW + backlog as i64 + 10;
    let leased = queue
        .lease(std::slice::from_ref(&action), Some(&tb), "p-b", now)
        .await
        .expect("lease")
        .expect("tb's request, not hidden behind ta's");
    assert_eq!(
        (leased.tenant_id.as_str(), leased.request_id.as_str()),
        (tb.as_str(), "b1")
    );
    let first = queue
        .lease(std::slice::from_ref(&action), None, "p-any", now)
        .await
        .expect("lease")
        .expect("the oldest of all");
    assert_eq!(
        (first.tenant_id.as_str(), first.request_id.as_str()),
        (ta.as_str(), "a00000")
    );
    assert!(
        queue
            .lease(std::slice::from_ref(&action), Some(&tb), "p-b", now)
            .await
            .expect("lease")
            .is_none(),
        "tb has nothing left"
    );
}

/// A request of a tenant's own action is leased by a processor bound to
/// that tenant, never by an unbound one.
pub async fn a_tenants_own_actions_are_leased_only_by_its_processors(
    queue: &dyn RequestQueue,
    prefix: &str,
) {
    let tenant = format!("{prefix}q-scoped");
    let action = format!("{prefix}own-action");
    queue
        .create(request(&tenant, "s1", &action, NOW).scoped(true))
        .await
        .expect("create");
    assert!(
        queue
            .lease(std::slice::from_ref(&action), None, "p-any", NOW + 1)
            .await
            .expect("lease")
            .is_none(),
        "an unbound processor does not see it"
    );
    assert!(
        queue
            .lease(
                std::slice::from_ref(&action),
                Some("someone-else"),
                "p-x",
                NOW + 1
            )
            .await
            .expect("lease")
            .is_none()
    );
    let leased = queue
        .lease(
            std::slice::from_ref(&action),
            Some(&tenant),
            "p-own",
            NOW + 1,
        )
        .await
        .expect("lease")
        .expect("its tenant's processor leases it");
    assert!(leased.scoped);
    assert_eq!(leased.request_id, "s1");
}

/// A request ready for longer than the wait TTL and still not leased ends
/// `expired` with a `TIMEOUT`, once; a running one does not.
pub async fn requests_that_wait_too_long_expire(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-expire");
    let action = format!("{prefix}never-served");
    for id in ["old-1", "old-2", "young"] {
        let created = if id == "young" { NOW + 10_000 } else { NOW };
        queue
            .create(request(&tenant, id, &action, created))
            .await
            .expect("create");
    }
    let mut expired = Vec::new();
    for _ in 0..3 {
        expired.extend(
            queue
                .expire_waiting(NOW + 1, NOW + 5_000, 100)
                .await
                .expect("expire")
                .into_iter()
                .filter(|r| r.tenant_id == tenant),
        );
    }
    let mut ids: Vec<&str> = expired.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["old-1", "old-2"], "each once, the young one waits on");
    for r in &expired {
        assert_eq!(r.status, Status::Expired);
        assert_eq!(r.error.as_ref().map(|e| e.code.as_str()), Some("TIMEOUT"));
    }
    let read = queue
        .get(&tenant, "old-1")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(read.status, Status::Expired);
    assert!(
        queue
            .lease(
                std::slice::from_ref(&action),
                Some(&tenant),
                "p",
                NOW + 20_000
            )
            .await
            .expect("lease")
            .is_some_and(|r| r.request_id == "young"),
        "only the young one is left to lease"
    );
}

/// One definition of an action per scope is published: the same one
/// refreshes it, another is answered with the one in place (until it
/// lapses); other scopes are apart.
pub async fn one_definition_per_action_and_scope(queue: &dyn RequestQueue, prefix: &str) {
    let name = format!("{prefix}defined");
    let scope = format!("{prefix}tenant-x");
    let one = json!({"name": name, "permission": null});
    let two = json!({"name": name, "permission": "admin"});
    assert_eq!(
        queue
            .claim_action(&scope, &name, &one, NOW + 100, NOW)
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        queue
            .claim_action(&scope, &name, &one, NOW + 200, NOW + 1)
            .await
            .expect("refresh"),
        None
    );
    assert_eq!(
        queue
            .claim_action(&scope, &name, &two, NOW + 200, NOW + 2)
            .await
            .expect("claim"),
        Some(one.clone()),
        "the definition in place wins"
    );
    assert_eq!(
        queue
            .claim_action("", &name, &two, NOW + 200, NOW + 2)
            .await
            .expect("fleet"),
        None,
        "scopes are apart"
    );
    assert_eq!(
        queue
            .published_action(&scope, &name, NOW + 3)
            .await
            .expect("read"),
        Some(one)
    );
    assert_eq!(
        queue
            .claim_action(&scope, &name, &two, NOW + 900, NOW + 300)
            .await
            .expect("after it lapsed"),
        None
    );
}

/// Open requests are bounded per user and per tenant (run on a queue
/// made with `max_per_user` 2 and `max_per_tenant` 3); a finished one
/// frees its place.
pub async fn open_requests_are_bounded_per_user_and_tenant(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-caps");
    let by = |user: &str, id: &str| {
        Request::queued(&tenant, id, "work", json!({}), user, "c", 3, 30_000, NOW)
    };
    queue.create(by("alice", "a1")).await.expect("1st");
    queue.create(by("alice", "a2")).await.expect("2nd");
    assert!(matches!(
        queue.create(by("alice", "a3")).await,
        Err(QueueError::Full {
            who: "user",
            max: 2
        })
    ));
    queue.create(by("bob", "b1")).await.expect("bob's 1st");
    assert!(matches!(
        queue.create(by("bob", "b2")).await,
        Err(QueueError::Full {
            who: "tenant",
            max: 3
        })
    ));
    assert!(
        queue.get(&tenant, "b2").await.expect("get").is_none(),
        "nothing stored"
    );
    queue
        .cancel(&tenant, "a1", None, NOW + 1)
        .await
        .expect("cancel");
    queue
        .create(by("bob", "b2"))
        .await
        .expect("a place is free again");
    // Expiry frees places too.
    let expired = queue
        .expire_waiting(NOW + 10, NOW + 20, 100)
        .await
        .expect("expire");
    assert!(expired.iter().filter(|r| r.tenant_id == tenant).count() >= 3);
    queue.create(by("alice", "a4")).await.expect("free again");
}

/// Ids are per tenant; a duplicate returns the existing request.
pub async fn create_get_and_duplicates(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-dup");
    queue
        .create(request(&tenant, "r1", "work", NOW))
        .await
        .expect("create");
    match queue.create(request(&tenant, "r1", "other", NOW + 1)).await {
        Err(QueueError::Duplicate { status, user_id }) => {
            assert_eq!((status, user_id.as_str()), ("queued", "alice"))
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
    queue
        .create(request(&format!("{prefix}q-dup-2"), "r1", "work", NOW))
        .await
        .expect("same id, other tenant");
    let got = queue
        .get(&tenant, "r1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (got.status, got.attempts, got.subscribers.clone()),
        (Status::Queued, 0, vec!["conn-1".to_owned()])
    );
    assert_eq!(got.payload, json!({"n": 1}));
    assert_eq!(queue.get(&tenant, "nope").await.expect("get"), None);
}

/// A lease goes to one owner; progress renews it; completion happens once.
pub async fn lease_progress_complete(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-lease");
    let action = format!("{prefix}lease-work");
    queue
        .create(request(&tenant, "a", &action, NOW))
        .await
        .expect("create");
    queue
        .create(request(&tenant, "b", &action, NOW + 5))
        .await
        .expect("create");
    queue
        .create(request(&tenant, "c", "unserved", NOW))
        .await
        .expect("create");
    let actions = vec![action.clone()];
    assert_eq!(
        queue
            .lease(&actions, Some("someone-else"), "p1", NOW + 10)
            .await
            .expect("lease"),
        None
    );
    let first = queue
        .lease(&actions, Some(&tenant), "p1", NOW + 10)
        .await
        .expect("lease")
        .expect("work");
    assert_eq!(
        (first.request_id.as_str(), first.status, first.attempts),
        ("a", Status::Running, 1)
    );
    assert_eq!(first.lease_expires_ms, NOW + 10 + 30_000);
    let second = queue
        .lease(&actions, None, "p2", NOW + 10)
        .await
        .expect("lease")
        .expect("work");
    assert_eq!(second.request_id, "b");
    assert_eq!(
        queue
            .lease(&actions, None, "p3", NOW + 10)
            .await
            .expect("lease"),
        None
    );

    let progress = ProgressState {
        percentage: 40,
        message: "halfway".into(),
        details: Some(json!({"rows": 10})),
    };
    let renewed = queue
        .progress(&tenant, "a", "p1", progress.clone(), NOW + 1_000)
        .await
        .expect("progress");
    assert_eq!(renewed.progress, Some(progress.clone()));
    assert_eq!(renewed.lease_expires_ms, NOW + 1_000 + 30_000);
    assert!(matches!(
        queue.progress(&tenant, "a", "p2", progress, NOW).await,
        Err(QueueError::Conflict { .. })
    ));

    let done = queue
        .complete(&tenant, "a", "p1", json!({"ok": true}), NOW + 2_000)
        .await
        .expect("complete");
    assert_eq!(
        (done.status, done.result.clone()),
        (Status::Completed, Some(json!({"ok": true})))
    );
    assert!(matches!(
        queue.complete(&tenant, "a", "p1", json!(1), NOW).await,
        Err(QueueError::Conflict { .. })
    ));
    assert!(matches!(
        queue
            .complete(&tenant, "missing", "p1", json!(1), NOW)
            .await,
        Err(QueueError::NotFound)
    ));
}

/// A failed attempt goes back to the queue after its backoff; the last one
/// fails for good; expired leases are found.
pub async fn retries_and_final_failure(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-retry");
    let action = format!("{prefix}retry-work");
    let actions = vec![action.clone()];
    queue
        .create(request(&tenant, "r", &action, NOW))
        .await
        .expect("create");
    queue
        .lease(&actions, None, "p1", NOW)
        .await
        .expect("lease")
        .expect("work");
    let expired = queue
        .expired_leases(NOW + 30_001, 100)
        .await
        .expect("expired");
    assert!(
        expired
            .iter()
            .any(|r| r.tenant_id == tenant && r.request_id == "r")
    );
    assert!(
        !queue
            .expired_leases(NOW + 29_999, 100)
            .await
            .expect("not yet")
            .iter()
            .any(|r| r.tenant_id == tenant)
    );

    let requeued = queue
        .fail(
            &tenant,
            "r",
            None,
            failure(),
            Some(NOW + 5_000),
            NOW + 30_001,
        )
        .await
        .expect("requeue");
    assert_eq!(
        (requeued.status, requeued.not_before_ms),
        (Status::Queued, NOW + 5_000)
    );
    assert_eq!(
        queue
            .lease(&actions, None, "p2", NOW + 4_999)
            .await
            .expect("lease"),
        None,
        "backoff not over"
    );
    let again = queue
        .lease(&actions, None, "p2", NOW + 5_000)
        .await
        .expect("lease")
        .expect("work");
    assert_eq!(again.attempts, 2);
    assert!(matches!(
        queue
            .fail(&tenant, "r", Some("p1"), failure(), None, NOW)
            .await,
        Err(QueueError::Conflict { .. })
    ));
    let failed = queue
        .fail(&tenant, "r", Some("p2"), failure(), None, NOW + 6_000)
        .await
        .expect("fail");
    assert_eq!(
        (failed.status, failed.error.clone()),
        (Status::Failed, Some(failure()))
    );
    assert!(matches!(
        queue.fail(&tenant, "r", None, failure(), None, NOW).await,
        Err(QueueError::Conflict { .. })
    ));
}

/// Cancellation ends queued or running requests once; subscribers are a set.
pub async fn cancel_and_subscribe(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-cancel");
    let action = format!("{prefix}cancel-work");
    queue
        .create(request(&tenant, "queued", &action, NOW))
        .await
        .expect("create");
    queue
        .create(request(&tenant, "running", &action, NOW + 1))
        .await
        .expect("create");
    let cancelled = queue
        .cancel(&tenant, "queued", None, NOW + 2)
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(cancelled.cancel_owner, None, "nobody held it");
    assert!(matches!(
        queue.cancel(&tenant, "queued", None, NOW + 3).await,
        Err(QueueError::Conflict { .. })
    ));
    let leased = queue
        .lease(std::slice::from_ref(&action), None, "p1", NOW + 3)
        .await
        .expect("lease")
        .expect("work");
    assert_eq!(
        leased.request_id, "running",
        "a cancelled request is never leased"
    );
    assert!(
        matches!(
            queue.cancel(&tenant, "running", None, NOW + 4).await,
            Err(QueueError::Conflict { .. })
        ),
        "a cancel names the holder it read"
    );
    assert!(matches!(
        queue.cancel(&tenant, "running", Some("p2"), NOW + 4).await,
        Err(QueueError::Conflict { .. })
    ));
    let cancelled = queue
        .cancel(&tenant, "running", Some("p1"), NOW + 4)
        .await
        .expect("cancel running");
    assert_eq!(cancelled.cancel_owner.as_deref(), Some("p1"));
    assert_eq!(
        queue.cancels_for("p1").await.expect("cancels"),
        vec![(tenant.clone(), "running".to_owned())],
        "the holder's replica finds the cancel"
    );
    assert!(queue.cancels_for("p2").await.expect("cancels").is_empty());
    queue
        .cancel_told(&tenant, "running", "p1")
        .await
        .expect("told");
    assert!(queue.cancels_for("p1").await.expect("cancels").is_empty());
    assert!(matches!(
        queue
            .complete(&tenant, "running", "p1", json!(1), NOW + 5)
            .await,
        Err(QueueError::Conflict { .. })
    ));

    let s = queue
        .subscribe(&tenant, "queued", "conn-2")
        .await
        .expect("subscribe");
    let s2 = queue
        .subscribe(&tenant, "queued", "conn-2")
        .await
        .expect("subscribe again");
    assert_eq!(
        s.subscribers,
        vec!["conn-1".to_owned(), "conn-2".to_owned()]
    );
    assert_eq!(s2.subscribers, s.subscribers);
    assert!(matches!(
        queue.subscribe(&tenant, "missing", "c").await,
        Err(QueueError::NotFound)
    ));
}

/// Listing pages through a tenant, optionally by status.
pub async fn listing_pages_by_status(queue: &dyn RequestQueue, prefix: &str) {
    let tenant = format!("{prefix}q-list");
    let action = format!("{prefix}list-work");
    for i in 0..9 {
        queue
            .create(request(&tenant, &format!("r{i}"), &action, NOW + i))
            .await
            .expect("create");
    }
    queue
        .create(request(
            &format!("{prefix}q-list-other"),
            "r0",
            &action,
            NOW,
        ))
        .await
        .expect("other tenant");
    for _ in 0..3 {
        queue
            .lease(std::slice::from_ref(&action), Some(&tenant), "p", NOW + 100)
            .await
            .expect("lease")
            .expect("work");
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let (page, next) = queue
            .list(&tenant, None, after.as_deref(), 4)
            .await
            .expect("list");
        pages += 1;
        all.extend(page.into_iter().map(|r| r.request_id));
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(pages >= 3);
    assert_eq!(all, (0..9).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let (running, _) = queue
        .list(&tenant, Some(Status::Running), None, 100)
        .await
        .expect("list running");
    assert_eq!(running.len(), 3);
    let (queued, _) = queue
        .list(&tenant, Some(Status::Queued), None, 100)
        .await
        .expect("list queued");
    assert_eq!(queued.len(), 6);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_queue_keeps_the_contract() {
        super::run_all(&super::super::memory::MemoryQueue::new(), "").await;
    }

    #[tokio::test]
    async fn memory_queue_bounds_open_requests() {
        let queue =
            super::super::memory::MemoryQueue::new().with_limits(super::super::QueueLimits {
                max_per_user: 2,
                max_per_tenant: 3,
            });
        super::open_requests_are_bounded_per_user_and_tenant(&queue, "").await;
    }

    /// The embedded queue leases past a backlog of 100,000 at once.
    #[tokio::test]
    async fn memory_queue_leases_past_a_large_backlog() {
        let queue = super::super::memory::MemoryQueue::new();
        super::a_backlog_of_one_tenant_hides_nothing_from_another(&queue, "", 100_000).await;
    }
}
