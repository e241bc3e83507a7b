//! The rollout controller's decisions against a real AWS API emulator
//! (moto, started by `scripts/test.sh`): Route 53 weighted records, the
//! trigger alarms' states set with `SetAlarmState`, the state in DynamoDB.
//! Time is compressed: holds of 10 s, and every tick is given its time, so
//! nothing waits for real.

use std::time::Duration;

use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use streamer_rollout::{
    Command, Plan, Status,
    aws::{Aws, Error, Settings},
};
use streamer_test_kit::moto;

const ALARMS: [&str; 3] = ["error-rate", "latency", "connect-failures"];
const HOLD_MS: i64 = 10_000;

fn region() -> aws_sdk_route53::config::Region {
    aws_sdk_route53::config::Region::new("us-east-1")
}

fn route53() -> aws_sdk_route53::Client {
    aws_sdk_route53::Client::from_conf(
        aws_sdk_route53::config::Builder::new()
            .behavior_version(aws_sdk_route53::config::BehaviorVersion::latest())
            .region(region())
            .credentials_provider(aws_sdk_route53::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(moto::endpoint())
            .build(),
    )
}

fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::from_conf(
        aws_sdk_cloudwatch::config::Builder::new()
            .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(moto::endpoint())
            .build(),
    )
}

/// A fresh zone, alarms (all OK) and state table; the controller on them.
struct Setup {
    controller: Aws,
    alarms: Vec<String>,
}

async fn setup() -> Setup {
    let tag = moto::unique("rollout");
    let zone = route53()
        .create_hosted_zone()
        .name(format!("{tag}.test"))
        .caller_reference(&tag)
        .send()
        .await
        .expect("hosted zone")
        .hosted_zone
        .expect("zone")
        .id;
    let alarms: Vec<String> = ALARMS.iter().map(|a| format!("{tag}-{a}")).collect();
    for alarm in &alarms {
        cloudwatch()
            .put_metric_alarm()
            .alarm_name(alarm)
            .namespace("Streamer")
            .metric_name("Trigger")
            .statistic(Statistic::Average)
            .period(60)
            .evaluation_periods(1)
            .threshold(1.0)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .send()
            .await
            .expect("alarm");
        set_alarm(alarm, StateValue::Ok).await;
    }
    moto::client()
        .create_table()
        .table_name(&tag)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("name")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("name")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("state table");
    let settings = Settings {
        name: "streamer".into(),
        hosted_zone_id: zone,
        record_name: format!("ws.{tag}.test"),
        go_target: "d-go.execute-api.us-east-1.amazonaws.com".into(),
        streamer_target: "d-streamer.execute-api.us-east-1.amazonaws.com".into(),
        record_ttl: 60,
        alarms: alarms.clone(),
        table: tag,
        plan: Plan::new(
            vec![5, 25, 50, 100],
            vec![Duration::from_millis(u64::try_from(HOLD_MS).expect("hold")); 3],
        )
        .expect("plan"),
    };
    Setup {
        controller: Aws::new(route53(), cloudwatch(), moto::client(), settings),
        alarms,
    }
}

async fn set_alarm(alarm: &str, state: StateValue) {
    cloudwatch()
        .set_alarm_state()
        .alarm_name(alarm)
        .state_value(state)
        .state_reason("set by the test")
        .send()
        .await
        .expect("SetAlarmState");
}

/// Route 53's weights: (go, streamer).
async fn weights(controller: &Aws) -> (Option<i64>, Option<i64>) {
    controller.weights().await.expect("weights")
}

/// Starts at `t0` and climbs to step `step` (0: 5%, 1: 25%, 2: 50%).
async fn climb(controller: &Aws, step: usize, t0: i64) -> i64 {
    let started = controller.run(Command::Start, t0).await.expect("start");
    assert_eq!((started.status, started.weight), (Status::Running, 5));
    let mut now = t0;
    for _ in 0..step {
        now += HOLD_MS;
        controller.tick(now).await.expect("tick");
    }
    now
}

#[tokio::test]
async fn a_full_promotion_takes_every_step_after_its_hold() {
    let Setup { controller, .. } = setup().await;
    let t0 = 1_800_000_000_000;
    assert_eq!(
        controller.tick(t0).await.expect("idle tick").status,
        Status::Idle
    );
    assert_eq!(
        weights(&controller).await,
        (None, None),
        "idle: nothing written"
    );
    controller.run(Command::Start, t0).await.expect("start");
    assert_eq!(weights(&controller).await, (Some(95), Some(5)));
    let mut now = t0;
    let mut before = 5;
    for (go, streamer) in [(75, 25), (50, 50), (0, 100)] {
        // Just before the hold ends: nothing moves.
        let held = controller.tick(now + HOLD_MS - 1).await.expect("tick");
        assert_eq!(i64::from(held.weight), before);
        assert_eq!(weights(&controller).await.1, Some(before));
        before = streamer;
        now += HOLD_MS;
        let moved = controller.tick(now).await.expect("tick");
        assert_eq!(i64::from(moved.weight), streamer);
        assert_eq!(weights(&controller).await, (Some(go), Some(streamer)));
    }
    let done = controller.run(Command::Status, now).await.expect("status");
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        done.log.iter().map(|e| e.weight).collect::<Vec<_>>(),
        vec![5, 25, 50, 100]
    );
}

#[tokio::test]
async fn each_trigger_alarm_rolls_back_at_each_step() {
    for step in 0..3 {
        for which in 0..ALARMS.len() {
            let Setup { controller, alarms } = setup().await;
            let t0 = 1_800_000_000_000;
            let now = climb(&controller, step, t0).await;
            let weight = [5, 25, 50][step];
            assert_eq!(weights(&controller).await.1, Some(weight));
            set_alarm(&alarms[which], StateValue::Alarm).await;
            let rolled = controller.tick(now + 1).await.expect("tick");
            assert_eq!(
                (rolled.status, rolled.weight),
                (Status::RolledBack, 0),
                "step {step}, alarm {}",
                alarms[which]
            );
            let reason = rolled.reason.expect("reason");
            assert!(
                reason.contains(&alarms[which]) && reason.contains(&format!("{weight}%")),
                "{reason}"
            );
            assert_eq!(
                weights(&controller).await,
                (Some(100), Some(0)),
                "every client on the Go system"
            );
            // Later ticks leave it rolled back, even once the alarm clears.
            set_alarm(&alarms[which], StateValue::Ok).await;
            let later = controller.tick(now + 10 * HOLD_MS).await.expect("tick");
            assert_eq!((later.status, later.weight), (Status::RolledBack, 0));
        }
    }
}

#[tokio::test]
async fn pause_resume_abort_and_insufficient_data() {
    let Setup { controller, alarms } = setup().await;
    let t0 = 1_800_000_000_000;
    controller.run(Command::Start, t0).await.expect("start");
    controller
        .run(Command::Pause, t0 + 2_000)
        .await
        .expect("pause");
    let paused = controller.tick(t0 + 5 * HOLD_MS).await.expect("tick");
    assert_eq!(
        (paused.status, paused.weight),
        (Status::Paused, 5),
        "a pause holds"
    );
    let resumed = controller
        .run(Command::Resume, t0 + 5 * HOLD_MS)
        .await
        .expect("resume");
    assert_eq!(resumed.status, Status::Running);
    // 2 s of the hold were spent before the pause: 8 s remain.
    let resume_at = t0 + 5 * HOLD_MS;
    assert_eq!(
        controller
            .tick(resume_at + 7_999)
            .await
            .expect("tick")
            .weight,
        5
    );
    // Insufficient data holds the step without rolling back.
    set_alarm(&alarms[1], StateValue::InsufficientData).await;
    let waiting = controller.tick(resume_at + 8_000).await.expect("tick");
    assert_eq!((waiting.status, waiting.weight), (Status::Running, 5));
    assert!(
        waiting
            .reason
            .as_deref()
            .is_some_and(|r| r.contains(&alarms[1]))
    );
    set_alarm(&alarms[1], StateValue::Ok).await;
    assert_eq!(
        controller
            .tick(resume_at + 8_001)
            .await
            .expect("tick")
            .weight,
        25
    );
    assert_eq!(weights(&controller).await, (Some(75), Some(25)));

    // Commands that do not apply are refused and change nothing.
    assert!(matches!(
        controller.run(Command::Resume, resume_at + 9_000).await,
        Err(Error::Refused(_))
    ));
    let aborted = controller
        .run(Command::Abort, resume_at + 9_000)
        .await
        .expect("abort");
    assert_eq!((aborted.status, aborted.weight), (Status::Aborted, 0));
    assert!(
        aborted
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("aborted by an operator at 25%"))
    );
    assert_eq!(weights(&controller).await, (Some(100), Some(0)));
    // A start while an alarm fires is refused.
    set_alarm(&alarms[0], StateValue::Alarm).await;
    assert!(matches!(
        controller.run(Command::Start, resume_at + 10_000).await,
        Err(Error::Refused(_))
    ));
}
