use std::time::Duration;

use serde_json::json;

use super::{queue::memory::MemoryQueue, *};
use crate::{
    actions::AsyncAction,
    delivery::fake::FakeGateway,
    registry::{Ttl, conformance::sample, memory::MemoryRegistry},
};

struct Setup {
    jobs: Arc<Jobs>,
    queue: Arc<MemoryQueue>,
    registry: Arc<MemoryRegistry>,
    gateway: Arc<FakeGateway>,
}

fn setup(retry: Duration) -> Setup {
    let clock = Clock::new();
    let queue = Arc::new(MemoryQueue::new());
    let registry = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), clock));
    let gateway = Arc::new(FakeGateway::new());
    let actions = Arc::new(Actions::new(&[]).expect("actions"));
    actions
        .register(
            &crate::actions::Scope::Fleet,
            AsyncAction::new("work", None, None, Some(1_000), Some(2)).expect("action"),
            0,
        )
        .expect("register");
    let jobs = Arc::new(Jobs::new(JobsParts {
        queue: queue.clone(),
        registry: registry.clone(),
        fanout: Arc::new(crate::delivery::fanout::Fanout::new(
            gateway.clone(),
            crate::config::DeliveryConfig::default(),
        )),
        actions,
        config: JobsConfig {
            retry_base: retry,
            retry_max: retry,
            ..JobsConfig::default()
        },
        clock,
    }));
    Setup {
        jobs,
        queue,
        registry,
        gateway,
    }
}

fn request(jobs: &Jobs, id: &str) -> Request {
    Request::queued(
        "t",
        id,
        "work",
        json!({}),
        "u",
        "c1",
        2,
        1_000,
        jobs.now_ms(),
    )
}

async fn next(rx: &mut mpsc::Receiver<Assignment>) -> Assignment {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(assignment)) => assignment,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

async fn next_lease(rx: &mut mpsc::Receiver<Assignment>) -> session::Lease {
    match next(rx).await {
        Assignment::Lease(lease) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn expired_leases_are_retried_after_a_backoff_then_fail() {
    let Setup { jobs, queue, .. } = setup(Duration::from_secs(2));
    jobs.submit(request(&jobs, "r1")).await.expect("submit");
    tokio::time::advance(Duration::from_secs(4)).await;
    jobs.sample_queue().await;
    assert_eq!(metrics().requests_queued.get(), 1);
    let age = metrics().requests_queued_oldest_age.get();
    assert!((age - 4.0).abs() < 0.01, "age follows the clock: {age}");
    let (tx, mut rx) = mpsc::channel(8);
    let session = jobs.open_session("test", vec!["work".into()], None, 1, tx);
    tokio::spawn(jobs.clone().dispatch(session.clone()));

    assert_eq!(next_lease(&mut rx).await.attempt, 1);
    // The processor goes silent: no progress renews the lease.
    tokio::time::advance(Duration::from_millis(999)).await;
    jobs.sweep_expired_leases().await;
    assert_eq!(
        queue.get("t", "r1").await.expect("get").expect("r").status,
        Status::Running,
        "not expired yet"
    );
    tokio::time::advance(Duration::from_millis(2)).await;
    jobs.sweep_expired_leases().await;
    let requeued = queue.get("t", "r1").await.expect("get").expect("r");
    assert_eq!((requeued.status, requeued.attempts), (Status::Queued, 1));
    let wait = requeued.not_before_ms - jobs.now_ms();
    assert!(
        (1_000..=2_000).contains(&wait),
        "backoff with jitter: {wait} ms"
    );
    // Leased again only after the backoff.
    assert_eq!(next_lease(&mut rx).await.attempt, 2);
    assert!(jobs.now_ms() >= requeued.not_before_ms);
    tokio::time::advance(Duration::from_millis(1_001)).await;
    jobs.sweep_expired_leases().await;
    let failed = queue.get("t", "r1").await.expect("get").expect("r");
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.error.map(|e| e.code).as_deref(),
        Some("PROCESSING_FAILED")
    );
}

#[tokio::test(start_paused = true)]
async fn bad_reports_are_refused_on_the_stream_and_change_nothing() {
    let Setup {
        jobs,
        queue,
        registry,
        gateway,
    } = setup(Duration::from_secs(1));
    registry
        .insert(sample("c1", "t", "u"), 0)
        .await
        .expect("insert");
    gateway.open("c1");
    jobs.submit(request(&jobs, "r1")).await.expect("submit");
    let (tx, mut rx) = mpsc::channel(8);
    let session = jobs.open_session("test", vec!["work".into()], None, 1, tx);
    tokio::spawn(jobs.clone().dispatch(session.clone()));
    next_lease(&mut rx).await;

    let over = Report::Progress(ProgressState {
        percentage: 150,
        message: "too far".into(),
        details: None,
    });
    let err = jobs
        .report(&session, "t", "r1", over)
        .await
        .expect_err("refused");
    assert!(matches!(err, JobError::Invalid(_)), "{err:?}");
    match next(&mut rx).await {
        Assignment::Refused { reason, .. } => assert!(reason.contains("percentage"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let stored = queue.get("t", "r1").await.expect("get").expect("r");
    assert_eq!(stored.progress, None, "nothing recorded");
    assert!(gateway.received("c1").is_empty(), "nothing relayed");

    let err = jobs
        .report(&session, "t", "other", Report::Complete(json!(1)))
        .await
        .expect_err("not held");
    assert_eq!(err, JobError::NotHeld);
    assert!(matches!(next(&mut rx).await, Assignment::Refused { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_report_for_a_cancelled_request_is_answered_with_the_cancellation() {
    let Setup { jobs, queue, .. } = setup(Duration::from_secs(1));
    jobs.submit(request(&jobs, "r1")).await.expect("submit");
    let (tx, mut rx) = mpsc::channel(8);
    let session = jobs.open_session("test", vec!["work".into()], None, 1, tx);
    tokio::spawn(jobs.clone().dispatch(session.clone()));
    next_lease(&mut rx).await;
    assert_eq!(session.in_flight(), 1);
    // Cancelled behind this session's back (another replica did it).
    queue
        .cancel("t", "r1", Some(&session.id), jobs.now_ms())
        .await
        .expect("cancel");
    let progress = Report::Progress(ProgressState {
        percentage: 10,
        message: "working".into(),
        details: None,
    });
    let err = jobs
        .report(&session, "t", "r1", progress)
        .await
        .expect_err("cancelled");
    assert_eq!(err, JobError::Cancelled);
    assert!(matches!(
        next(&mut rx).await,
        Assignment::Cancelled { request_id, .. } if request_id == "r1"
    ));
    assert_eq!(session.in_flight(), 0, "the slot is free again");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_received_by_another_replica_reaches_the_processor_within_the_poll() {
    let Setup { jobs, queue, .. } = setup(Duration::from_secs(1));
    jobs.submit(request(&jobs, "r1")).await.expect("submit");
    let (tx, mut rx) = mpsc::channel(8);
    let session = jobs.open_session("test", vec!["work".into()], None, 1, tx);
    tokio::spawn(jobs.clone().dispatch(session.clone()));
    tokio::spawn(jobs.clone().run_cancel_watch());
    next_lease(&mut rx).await;
    // Another replica cancels: only the store knows.
    let started = tokio::time::Instant::now();
    queue
        .cancel("t", "r1", Some(&session.id), jobs.now_ms())
        .await
        .expect("cancel");
    assert!(matches!(
        next(&mut rx).await,
        Assignment::Cancelled { request_id, .. } if request_id == "r1"
    ));
    assert!(
        started.elapsed() <= super::CANCEL_POLL,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(session.in_flight(), 0, "the slot is free again");
    assert!(
        queue
            .cancels_for(&session.id)
            .await
            .expect("cancels")
            .is_empty(),
        "told once"
    );
}
