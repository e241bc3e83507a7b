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
}
