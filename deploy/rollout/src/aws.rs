//! The controller's hands: the trigger alarms from CloudWatch, the two
//! weighted records in Route 53, and its state in DynamoDB.

use std::{collections::HashMap, time::Duration};

use aws_sdk_cloudwatch::types::StateValue;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use crate::{AlarmState, Command, Plan, Refused, Rollout, command, decide};

/// What the controller works on (from the environment in the Lambda).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The rollout's name (the state item's key).
    pub name: String,
    /// The hosted zone of the clients' host name.
    pub hosted_zone_id: String,
    /// The clients' host name (`ws.example.com`).
    pub record_name: String,
    /// The Go system's API domain (the `go` record's CNAME target).
    pub go_target: String,
    /// Streamer's API domain (the `streamer` record's target).
    pub streamer_target: String,
    /// The records' TTL (s): how soon a new weight reaches clients.
    pub record_ttl: i64,
    /// The trigger alarms (error rate, latency, connection failures).
    pub alarms: Vec<String>,
    /// The DynamoDB table of the state.
    pub table: String,
    /// The steps and holds.
    pub plan: Plan,
}

/// The environment variables of [`Settings::from_env`].
pub const ENV: [&str; 9] = [
    "STREAMER_ROLLOUT_HOSTED_ZONE_ID",
    "STREAMER_ROLLOUT_RECORD_NAME",
    "STREAMER_ROLLOUT_GO_TARGET",
    "STREAMER_ROLLOUT_STREAMER_TARGET",
    "STREAMER_ROLLOUT_ALARMS",
    "STREAMER_ROLLOUT_TABLE",
    "STREAMER_ROLLOUT_STEPS",
    "STREAMER_ROLLOUT_HOLDS_SECS",
    "STREAMER_ROLLOUT_RECORD_TTL",
];

impl Settings {
    /// Reads `STREAMER_ROLLOUT_*` through `var`; every problem at once.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut required = |name: &str| {
            var(name).filter(|v| !v.is_empty()).unwrap_or_else(|| {
                problems.push(format!("missing setting {name}"));
                String::new()
            })
        };
        let hosted_zone_id = required(ENV[0]);
        let record_name = required(ENV[1]);
        let go_target = required(ENV[2]);
        let streamer_target = required(ENV[3]);
        let alarms: Vec<String> = required(ENV[4])
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let table = required(ENV[5]);
        let steps: Result<Vec<u8>, _> = var(ENV[6])
            .unwrap_or_else(|| "5,25,50,100".into())
            .split(',')
            .map(|s| s.trim().parse::<u8>())
            .collect();
        let holds: Result<Vec<Duration>, _> = var(ENV[7])
            .unwrap_or_else(|| "86400,172800,172800".into())
            .split(',')
            .map(|s| s.trim().parse::<u64>().map(Duration::from_secs))
            .collect();
        let plan = match (steps, holds) {
            (Ok(steps), Ok(holds)) => Plan::new(steps, holds)
                .map_err(|e| {
                    problems.push(format!("invalid value for {} / {}: {e}", ENV[6], ENV[7]))
                })
                .ok(),
            _ => {
                problems.push(format!(
                    "invalid value for {} / {}: comma-separated whole numbers",
                    ENV[6], ENV[7]
                ));
                None
            }
        };
        let record_ttl = match var(ENV[8]).map(|v| v.parse::<i64>()) {
            None => 60,
            Some(Ok(ttl)) if ttl > 0 => ttl,
            Some(_) => {
                problems.push(format!("invalid value for {}: seconds above 0", ENV[8]));
                60
            }
        };
        match plan {
            Some(plan) if problems.is_empty() => Ok(Self {
                name: "streamer".into(),
                hosted_zone_id,
                record_name,
                go_target,
                streamer_target,
                record_ttl,
                alarms,
                table,
                plan,
            }),
            _ => Err(problems),
        }
    }
}

/// What a controller call may fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command does not apply now.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Another tick or command changed the state first; try again.
    #[error("the state changed meanwhile; try again")]
    Conflict,
    /// An AWS call failed.
    #[error("{0}")]
    Aws(String),
}

fn aws(what: &str, err: impl std::fmt::Debug) -> Error {
    Error::Aws(format!("{what}: {err:?}").chars().take(400).collect())
}

/// The controller on AWS.
#[derive(Debug, Clone)]
pub struct Aws {
    route53: aws_sdk_route53::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    settings: Settings,
}

impl Aws {
    /// The controller with these clients.
    pub fn new(
        route53: aws_sdk_route53::Client,
        cloudwatch: aws_sdk_cloudwatch::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        settings: Settings,
    ) -> Self {
        Self {
            route53,
            cloudwatch,
            dynamodb,
            settings,
        }
    }

    /// The controller from one SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, settings: Settings) -> Self {
        Self::new(
            aws_sdk_route53::Client::new(sdk),
            aws_sdk_cloudwatch::Client::new(sdk),
            aws_sdk_dynamodb::Client::new(sdk),
            settings,
        )
    }

    /// The trigger alarms' states; an alarm CloudWatch does not know counts
    /// as insufficient data (it holds the rollout, never advances it).
    pub async fn alarms(&self) -> Result<Vec<(String, AlarmState)>, Error> {
        let mut states: HashMap<String, AlarmState> = HashMap::new();
        for names in self.settings.alarms.chunks(100) {
            let out = self
                .cloudwatch
                .describe_alarms()
                .set_alarm_names(Some(names.to_vec()))
                .send()
                .await
                .map_err(|e| aws("DescribeAlarms", e))?;
            for alarm in out.metric_alarms() {
                let state = match alarm.state_value() {
                    Some(StateValue::Ok) => AlarmState::Ok,
                    Some(StateValue::Alarm) => AlarmState::Alarm,
                    _ => AlarmState::InsufficientData,
                };
                states.insert(alarm.alarm_name().unwrap_or_default().to_owned(), state);
            }
        }
        Ok(self
            .settings
            .alarms
            .iter()
            .map(|name| {
                let state = states
                    .get(name)
                    .copied()
                    .unwrap_or(AlarmState::InsufficientData);
                (name.clone(), state)
            })
            .collect())
    }

    fn record(&self, identifier: &str, target: &str, weight: u8) -> Result<Change, Error> {
        let set = ResourceRecordSet::builder()
            .name(&self.settings.record_name)
            .r#type(RrType::Cname)
            .set_identifier(identifier)
            .weight(i64::from(weight))
            .ttl(self.settings.record_ttl)
            .resource_records(
                ResourceRecord::builder()
                    .value(target)
                    .build()
                    .map_err(|e| aws("record", e))?,
            )
            .build()
            .map_err(|e| aws("record set", e))?;
        Change::builder()
            .action(ChangeAction::Upsert)
            .resource_record_set(set)
            .build()
            .map_err(|e| aws("change", e))
    }

    /// Gives Streamer `weight`% of new connections and the Go system the
    /// rest, in one atomic change of both records.
    pub async fn set_weight(&self, weight: u8) -> Result<(), Error> {
        let batch = ChangeBatch::builder()
            .comment(format!("streamer rollout: {weight}% on Streamer"))
            .changes(self.record("go", &self.settings.go_target, 100 - weight.min(100))?)
            .changes(self.record("streamer", &self.settings.streamer_target, weight)?)
            .build()
            .map_err(|e| aws("change batch", e))?;
        self.route53
            .change_resource_record_sets()
            .hosted_zone_id(&self.settings.hosted_zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| aws("ChangeResourceRecordSets", e))?;
        Ok(())
    }

    /// The weights Route 53 holds now: (go, streamer).
    pub async fn weights(&self) -> Result<(Option<i64>, Option<i64>), Error> {
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(&self.settings.hosted_zone_id)
            .start_record_name(&self.settings.record_name)
            .start_record_type(RrType::Cname)
            .send()
            .await
            .map_err(|e| aws("ListResourceRecordSets", e))?;
        let want = self.settings.record_name.trim_end_matches('.');
        let weight = |id: &str| {
            out.resource_record_sets()
                .iter()
                .find(|r| r.name().trim_end_matches('.') == want && r.set_identifier() == Some(id))
                .and_then(ResourceRecordSet::weight)
        };
        Ok((weight("go"), weight("streamer")))
    }

    /// The state and its version (0: none stored yet).
    pub async fn load(&self) -> Result<(Rollout, i64), Error> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.settings.table)
            .key("name", AttributeValue::S(self.settings.name.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws("GetItem", e))?;
        let Some(item) = out.item() else {
            return Ok((Rollout::default(), 0));
        };
        let state = item
            .get("state")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| Error::Aws("the state item has no state".into()))?;
        let version = item
            .get("version")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let rollout = serde_json::from_str(state)
            .map_err(|e| Error::Aws(format!("the stored state does not parse: {e}")))?;
        Ok((rollout, version))
    }

    /// Stores `rollout` if the stored version is still `version`.
    async fn save(&self, rollout: &Rollout, version: i64) -> Result<(), Error> {
        let state = serde_json::to_string(rollout).map_err(|e| Error::Aws(e.to_string()))?;
        let put = self
            .dynamodb
            .put_item()
            .table_name(&self.settings.table)
            .item("name", AttributeValue::S(self.settings.name.clone()))
            .item("state", AttributeValue::S(state))
            .item("version", AttributeValue::N((version + 1).to_string()));
        let put = if version == 0 {
            put.condition_expression("attribute_not_exists(#name)")
                .expression_attribute_names("#name", "name")
        } else {
            put.condition_expression("version = :v")
                .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
        };
        match put.send().await {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(Error::Conflict)
            }
            Err(err) => Err(aws("PutItem", err)),
        }
    }

    /// Stores the new state, then makes Route 53 say its weight (when it
    /// changed). The state is written first: if the weight change fails,
    /// the next tick finds the records out of step and writes them again.
    async fn apply(
        &self,
        before: &Rollout,
        after: Rollout,
        version: i64,
    ) -> Result<Rollout, Error> {
        if *before != after {
            self.save(&after, version).await?;
        }
        let (go, streamer) = self.weights().await?;
        let want = i64::from(after.weight);
        let expected_go = 100 - want;
        if after.status != crate::Status::Idle
            && (streamer != Some(want) || go != Some(expected_go))
        {
            self.set_weight(after.weight).await?;
            tracing::info!(weight = after.weight, status = ?after.status, "weights set");
        }
        Ok(after)
    }

    /// One scheduled tick at `now_ms`.
    pub async fn tick(&self, now_ms: i64) -> Result<Rollout, Error> {
        let (rollout, version) = self.load().await?;
        let alarms = self.alarms().await?;
        let after = decide(&self.settings.plan, rollout.clone(), &alarms, now_ms);
        self.apply(&rollout, after, version).await
    }

    /// An operator's command at `now_ms`.
    pub async fn run(&self, cmd: Command, now_ms: i64) -> Result<Rollout, Error> {
        let (rollout, version) = self.load().await?;
        let alarms = self.alarms().await?;
        let after = command(&self.settings.plan, rollout.clone(), cmd, &alarms, now_ms)?;
        self.apply(&rollout, after, version).await
    }
}
