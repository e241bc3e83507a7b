//! The migration's rollout controller: moves clients from the Go system to
//! Streamer as the migration plan promised — 5% → 25% → 50% → 100%, each
//! step held (24 h, 48 h, 48 h by default) and taken only while the trigger
//! alarms are OK — and returns every client to the Go system, recording
//! why, the moment a trigger alarm fires.
//!
//! API Gateway WebSocket APIs have no stage canaries, so the shift happens
//! in DNS: the clients' host name has two Route 53 weighted records, one
//! per API (`go` and `streamer`), and the controller sets their weights
//! (deploy/README.md says why and how to set it up). It runs as a Lambda
//! every minute (EventBridge) and on operators' commands (`start`, `pause`,
//! `resume`, `abort`, `status`); its state is one DynamoDB item, written
//! conditionally so a tick and a command never both act on the same state.
//!
//! [`decide`] is the whole policy, pure (time comes in as an argument);
//! [`aws::Aws`] reads the alarms, writes the weights and keeps the state.

pub mod aws;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The steps and their holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Streamer's share at each step, in percent, ending at 100.
    pub steps: Vec<u8>,
    /// How long each step but the last is held before the next.
    pub holds: Vec<Duration>,
}

impl Default for Plan {
    /// The migration plan's: 5, 25, 50, 100, held 24 h, 48 h, 48 h.
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Self {
            steps: vec![5, 25, 50, 100],
            holds: vec![hours(24), hours(48), hours(48)],
        }
    }
}

impl Plan {
    /// A plan from `steps` (percent) and `holds`; says what is wrong.
    pub fn new(steps: Vec<u8>, holds: Vec<Duration>) -> Result<Self, String> {
        if steps.is_empty() || steps.last() != Some(&100) {
            return Err("the steps must end at 100".into());
        }
        if steps.windows(2).any(|w| w[0] >= w[1]) || steps[0] == 0 {
            return Err("the steps must rise from above 0".into());
        }
        if holds.len() != steps.len() - 1 {
            return Err(format!(
                "{} steps need {} holds, got {}",
                steps.len(),
                steps.len() - 1,
                holds.len()
            ));
        }
        Ok(Self { steps, holds })
    }
}

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never started: every client on the Go system.
    Idle,
    /// Holding a step, moving on when its hold is over and the alarms OK.
    Running,
    /// Holding a step until `resume` (alarms still roll back).
    Paused,
    /// At 100%.
    Completed,
    /// A trigger alarm fired: every client back on the Go system.
    RolledBack,
    /// An operator aborted: every client back on the Go system.
    Aborted,
}

/// A trigger alarm's state, as CloudWatch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmState {
    /// Within its threshold.
    Ok,
    /// Past its threshold: roll back.
    Alarm,
    /// Not enough data to say: hold, neither move on nor roll back.
    InsufficientData,
}

/// One decision, kept in the state's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Streamer's share after it.
    pub weight: u8,
    /// What happened and why.
    pub what: String,
}

/// The rollout's state (one DynamoDB item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Where it is.
    pub status: Status,
    /// The step being held (an index into [`Plan::steps`]).
    pub step: usize,
    /// Streamer's share now, in percent.
    pub weight: u8,
    /// When the current step's hold began, moved forward by pauses (ms).
    pub step_started_ms: i64,
    /// When it was paused, while paused (ms).
    pub paused_at_ms: Option<i64>,
    /// Why it stopped (rolled back or aborted), or why it waits.
    pub reason: Option<String>,
    /// The decisions, oldest first (the last [`LOG_LEN`]).
    pub log: Vec<Entry>,
}

/// Decisions kept in the state.
pub const LOG_LEN: usize = 100;

impl Default for Rollout {
    fn default() -> Self {
        Self {
            status: Status::Idle,
            step: 0,
            weight: 0,
            step_started_ms: 0,
            paused_at_ms: None,
            reason: None,
            log: Vec::new(),
        }
    }
}

impl Rollout {
    fn record(&mut self, at_ms: i64, what: String) {
        self.log.push(Entry {
            at_ms,
            weight: self.weight,
            what,
        });
        if self.log.len() > LOG_LEN {
            self.log.remove(0);
        }
    }

    fn back_to_go(&mut self, status: Status, at_ms: i64, reason: String) {
        self.status = status;
        self.weight = 0;
        self.paused_at_ms = None;
        self.record(at_ms, reason.clone());
        self.reason = Some(reason);
    }
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Begin at the first step (from idle, rolled back or aborted).
    Start,
    /// Hold the current step until `resume`.
    Pause,
    /// Go on holding where the pause began.
    Resume,
    /// Every client back to the Go system now.
    Abort,
    /// Nothing; answers the state.
    Status,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not in a state the command applies to.
    #[error("cannot {command:?} a rollout that is {status:?}")]
    State {
        /// The command.
        command: Command,
        /// The state it found.
        status: Status,
    },
    /// A trigger alarm is firing: starting now would roll back at once.
    #[error("alarm {0} is in ALARM; start when it is OK")]
    Alarm(String),
}

/// The first alarm in ALARM, if any.
fn firing(alarms: &[(String, AlarmState)]) -> Option<&str> {
    alarms
        .iter()
        .find(|(_, state)| *state == AlarmState::Alarm)
        .map(|(name, _)| name.as_str())
}

/// One tick: the state after it (the weight in it is what Route 53 must
/// say). A firing alarm rolls back a running or paused rollout; a running
/// one moves to its next step once the step's hold is over and every alarm
/// is OK.
pub fn decide(
    plan: &Plan,
    mut rollout: Rollout,
    alarms: &[(String, AlarmState)],
    now_ms: i64,
) -> Rollout {
    if !matches!(rollout.status, Status::Running | Status::Paused) {
        return rollout;
    }
    if let Some(alarm) = firing(alarms) {
        let reason = format!(
            "rolled back: alarm {alarm} in ALARM at {}% (step {} of {})",
            rollout.weight,
            rollout.step + 1,
            plan.steps.len()
        );
        rollout.back_to_go(Status::RolledBack, now_ms, reason);
        return rollout;
    }
    if rollout.status == Status::Paused {
        return rollout;
    }
    let hold = plan
        .holds
        .get(rollout.step)
        .copied()
        .unwrap_or(Duration::ZERO);
    let held = now_ms.saturating_sub(rollout.step_started_ms);
    if held < i64::try_from(hold.as_millis()).unwrap_or(i64::MAX) {
        return rollout;
    }
    if let Some((name, _)) = alarms.iter().find(|(_, s)| *s != AlarmState::Ok) {
        let waiting = format!("waiting: alarm {name} has insufficient data");
        if rollout.reason.as_deref() != Some(&waiting) {
            rollout.record(now_ms, waiting.clone());
            rollout.reason = Some(waiting);
        }
        return rollout;
    }
    rollout.step += 1;
    rollout.weight = plan.steps[rollout.step];
    rollout.step_started_ms = now_ms;
    rollout.reason = None;
    if rollout.step + 1 == plan.steps.len() {
        rollout.status = Status::Completed;
        rollout.record(now_ms, "completed: every client on Streamer".into());
    } else {
        rollout.record(
            now_ms,
            format!(
                "step {} of {}: {}% on Streamer",
                rollout.step + 1,
                plan.steps.len(),
                rollout.weight
            ),
        );
    }
    rollout
}

/// An operator's command: the state after it.
pub fn command(
    plan: &Plan,
    mut rollout: Rollout,
    command: Command,
    alarms: &[(String, AlarmState)],
    now_ms: i64,
) -> Result<Rollout, Refused> {
    let refused = |status| Refused::State { command, status };
    match (command, rollout.status) {
        (Command::Status, _) => Ok(rollout),
        (Command::Start, Status::Idle | Status::RolledBack | Status::Aborted) => {
            if let Some(alarm) = firing(alarms) {
                return Err(Refused::Alarm(alarm.to_owned()));
            }
            rollout.status = Status::Running;
            rollout.step = 0;
            rollout.weight = plan.steps[0];
            rollout.step_started_ms = now_ms;
            rollout.paused_at_ms = None;
            rollout.reason = None;
            rollout.record(
                now_ms,
                format!(
                    "started: step 1 of {}: {}% on Streamer",
                    plan.steps.len(),
                    rollout.weight
                ),
            );
            Ok(rollout)
        }
        (Command::Pause, Status::Running) => {
            rollout.status = Status::Paused;
            rollout.paused_at_ms = Some(now_ms);
            rollout.record(now_ms, "paused by an operator".into());
            Ok(rollout)
        }
        (Command::Resume, Status::Paused) => {
            let paused = now_ms.saturating_sub(rollout.paused_at_ms.unwrap_or(now_ms));
            rollout.step_started_ms = rollout.step_started_ms.saturating_add(paused);
            rollout.status = Status::Running;
            rollout.paused_at_ms = None;
            rollout.record(now_ms, "resumed by an operator".into());
            Ok(rollout)
        }
        (Command::Abort, Status::Running | Status::Paused | Status::Completed) => {
            let reason = format!("aborted by an operator at {}%", rollout.weight);
            rollout.back_to_go(Status::Aborted, now_ms, reason);
            Ok(rollout)
        }
        (_, status) => Err(refused(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Vec<(String, AlarmState)> {
        ["errors", "latency", "connects"]
            .map(|n| (n.to_owned(), AlarmState::Ok))
            .to_vec()
    }

    fn plan() -> Plan {
        Plan::new(vec![5, 25, 50, 100], vec![Duration::from_secs(10); 3]).expect("plan")
    }

    #[test]
    fn plans_must_make_sense() {
        assert!(Plan::new(vec![5, 25], vec![Duration::ZERO]).is_err());
        assert!(Plan::new(vec![50, 25, 100], vec![Duration::ZERO; 2]).is_err());
        assert!(Plan::new(vec![5, 100], vec![]).is_err());
        assert_eq!(Plan::default().holds[1], Duration::from_secs(48 * 3600));
    }

    #[test]
    fn a_rollout_climbs_only_after_each_hold_and_with_every_alarm_ok() {
        let plan = plan();
        let r = command(&plan, Rollout::default(), Command::Start, &ok(), 0).expect("start");
        assert_eq!((r.status, r.weight), (Status::Running, 5));
        let r = decide(&plan, r, &ok(), 9_999);
        assert_eq!(r.weight, 5, "held");
        let mut waiting = ok();
        waiting[1].1 = AlarmState::InsufficientData;
        let r = decide(&plan, r, &waiting, 10_000);
        assert_eq!(
            (r.status, r.weight),
            (Status::Running, 5),
            "insufficient data holds"
        );
        assert!(r.reason.as_deref().is_some_and(|w| w.contains("latency")));
        let r = decide(&plan, r, &ok(), 10_500);
        assert_eq!(r.weight, 25);
        let r = decide(&plan, r, &ok(), 20_500);
        let r = decide(&plan, r, &ok(), 30_500);
        assert_eq!((r.status, r.weight), (Status::Completed, 100));
        let mut firing = ok();
        firing[0].1 = AlarmState::Alarm;
        assert_eq!(
            decide(&plan, r.clone(), &firing, 40_000),
            r,
            "completed is final"
        );
    }

    #[test]
    fn pauses_do_not_count_as_hold_and_alarms_still_roll_back() {
        let plan = plan();
        let r = command(&plan, Rollout::default(), Command::Start, &ok(), 0).expect("start");
        let r = command(&plan, r, Command::Pause, &ok(), 4_000).expect("pause");
        let r = decide(&plan, r, &ok(), 60_000);
        assert_eq!(r.weight, 5);
        let r = command(&plan, r, Command::Resume, &ok(), 60_000).expect("resume");
        assert_eq!(
            decide(&plan, r.clone(), &ok(), 65_999).weight,
            5,
            "6 s of hold left"
        );
        assert_eq!(decide(&plan, r.clone(), &ok(), 66_000).weight, 25);
        let r = command(&plan, r, Command::Pause, &ok(), 61_000).expect("pause");
        let mut firing = ok();
        firing[2].1 = AlarmState::Alarm;
        let r = decide(&plan, r, &firing, 62_000);
        assert_eq!((r.status, r.weight), (Status::RolledBack, 0));
        assert!(r.reason.as_deref().is_some_and(|w| w.contains("connects")));
    }

    #[test]
    fn commands_apply_only_where_they_make_sense() {
        let plan = plan();
        let idle = Rollout::default();
        assert!(command(&plan, idle.clone(), Command::Pause, &ok(), 0).is_err());
        assert!(command(&plan, idle.clone(), Command::Abort, &ok(), 0).is_err());
        let mut firing = ok();
        firing[0].1 = AlarmState::Alarm;
        assert_eq!(
            command(&plan, idle.clone(), Command::Start, &firing, 0),
            Err(Refused::Alarm("errors".into()))
        );
        let r = command(&plan, idle, Command::Start, &ok(), 0).expect("start");
        assert!(command(&plan, r.clone(), Command::Start, &ok(), 0).is_err());
        let r = command(&plan, r, Command::Abort, &ok(), 1).expect("abort");
        assert_eq!((r.status, r.weight), (Status::Aborted, 0));
        let r = command(&plan, r, Command::Start, &ok(), 2).expect("start again");
        assert_eq!(
            (r.status, r.weight, r.step_started_ms),
            (Status::Running, 5, 2)
        );
        assert_eq!(r.log.len(), 3);
    }
}
