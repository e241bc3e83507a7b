//! Presence: members of opted-in groups hear when someone joins, leaves or
//! disconnects. Departures the registry learns of late (a 410 during a
//! broadcast, the reconcile job, TTL) are announced too, because every
//! removal reports its groups here.
//!
//! Changes are coalesced: each group's joins and leaves wait for the next
//! tick (`STREAMER_PRESENCE_INTERVAL_MS`) and go out together in one frame
//! to the members at that moment, through the same fan-out (and request
//! budget) as any send. A client toggling join/leave at its message limit
//! costs one delivery per group per interval, not one per event; once,
//! each event read the whole group and delivered to every member.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
pub use streamer_proto::client::PresenceEvent as Event;
use streamer_proto::client::{Frame, PresenceChange, timestamp_now};
use tokio::sync::mpsc;

use super::broadcast::{Broadcaster, Target};
use crate::{
    config::GroupsConfig,
    registry::{Connection, Scope},
};

/// Most changes one presence frame carries; past it the oldest are left
/// out and the frame says `truncated`.
pub const MAX_CHANGES_PER_FRAME: usize = 500;

/// A group's changes since its last frame.
#[derive(Debug, Default)]
struct Pending {
    changes: Vec<PresenceChange>,
    truncated: bool,
}

/// Announces joins and leaves to the other members.
pub struct Presence {
    broadcaster: Arc<Broadcaster>,
    config: GroupsConfig,
    pending: Mutex<HashMap<(String, String), Pending>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("groups", &self.config.presence)
            .finish()
    }
}

impl Presence {
    /// Presence for the groups `config` opts in.
    pub fn new(broadcaster: Arc<Broadcaster>, config: GroupsConfig) -> Self {
        Self {
            broadcaster,
            config,
            pending: Mutex::default(),
        }
    }

    /// The group settings.
    pub fn config(&self) -> &GroupsConfig {
        &self.config
    }

    /// Records that `who` joined or left `group` (if it announces
    /// presence); the group's members hear of it at the next tick.
    pub async fn announce(self: &Arc<Self>, group: &str, event: Event, who: &Connection) {
        if !self.config.presence_enabled(group) {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let entry = pending
            .entry((who.tenant_id.to_string(), group.to_owned()))
            .or_default();
        if entry.changes.len() >= MAX_CHANGES_PER_FRAME {
            entry.changes.remove(0);
            entry.truncated = true;
        }
        entry.changes.push(PresenceChange {
            event,
            user_id: who.user_id.to_string(),
            connection_id: who.connection_id.to_string(),
            timestamp: timestamp_now(),
        });
    }

    /// Sends each group's pending changes to its members now: one frame
    /// per group, to the members at this moment (but a member whose own
    /// change is all the frame says: it knows).
    pub async fn flush(self: &Arc<Self>) {
        let due: Vec<((String, String), Pending)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        for ((tenant_id, group), pending) in due {
            let scope = Scope::Group {
                tenant_id,
                group: group.clone(),
            };
            let changers: HashSet<String> = pending
                .changes
                .iter()
                .map(|c| c.connection_id.clone())
                .collect();
            let members = match self
                .broadcaster
                .resolve(&Target::Scope(scope), &HashSet::new(), None)
                .await
            {
                Ok(members) => members,
                Err(err) => {
                    tracing::warn!(group, error = %err, "cannot announce presence");
                    continue;
                }
            };
            // Every member gets at most one frame: the group's changes,
            // without its own (a member never hears of its own join or
            // leave).
            let (changing, others): (Vec<_>, Vec<_>) = members
                .into_iter()
                .partition(|m| changers.contains(&*m.connection_id));
            let mut sends = Vec::new();
            if !others.is_empty() {
                let frame =
                    Frame::presence_changes(&group, pending.changes.clone(), pending.truncated);
                sends.push((others, Bytes::from(frame.to_json())));
            }
            for member in changing {
                // A member that joined in this batch hears what came after
                // its join (it was not there for what came before), never
                // its own changes.
                let joined_at = pending
                    .changes
                    .iter()
                    .position(|c| {
                        *c.connection_id == *member.connection_id && c.event == Event::Join
                    })
                    .unwrap_or(0);
                let theirs: Vec<PresenceChange> = pending
                    .changes
                    .iter()
                    .skip(joined_at)
                    .filter(|c| *c.connection_id != *member.connection_id)
                    .cloned()
                    .collect();
                if !theirs.is_empty() {
                    let frame = Frame::presence_changes(&group, theirs, pending.truncated);
                    sends.push((vec![member], Bytes::from(frame.to_json())));
                }
            }
            let changes = pending.changes.len();
            let broadcaster = self.broadcaster.clone();
            let group = group.clone();
            tokio::spawn(async move {
                let mut delivered = 0;
                for (recipients, frame) in sends {
                    delivered += broadcaster.deliver(recipients, frame).await.delivered;
                }
                tracing::debug!(group, changes, delivered, "presence");
            });
        }
    }

    /// Flushes the pending changes every interval, until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.presence_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }

    /// Announces every departure the registry reports (removals of
    /// connections that were in groups), until the channel closes.
    pub async fn run_departures(
        self: Arc<Self>,
        mut departures: mpsc::UnboundedReceiver<Connection>,
    ) {
        while let Some(gone) = departures.recv().await {
            for group in gone.groups.iter() {
                self.announce(group, Event::Leave, &gone).await;
            }
        }
    }
}
