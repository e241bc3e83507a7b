//! Presence: members of opted-in groups hear when someone joins, leaves or
//! disconnects. Departures the registry learns of late (a 410 during a
//! broadcast, the reconcile job, TTL) are announced too, because every
//! removal reports its groups here.

use std::{collections::HashSet, sync::Arc};

use serde_json::json;
use streamer_proto::client;
use tokio::sync::mpsc;

use crate::{
    broadcast::{Broadcaster, Target},
    config::GroupsConfig,
    registry::{Connection, Scope},
};

/// Join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Someone joined.
    Join,
    /// Someone left or disconnected.
    Leave,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Join => "join",
            Event::Leave => "leave",
        }
    }
}

/// Announces joins and leaves to the other members.
pub struct Presence {
    broadcaster: Arc<Broadcaster>,
    config: GroupsConfig,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("groups", &self.config.presence)
            .finish()
    }
}

/// The `presence` frame.
pub fn presence_frame(group: &str, event: Event, user_id: &str, connection_id: &str) -> String {
    json!({
        "type": "presence",
        "group": group,
        "event": event.name(),
        "user_id": user_id,
        "connection_id": connection_id,
        "timestamp": client::timestamp_now(),
    })
    .to_string()
}

impl Presence {
    /// Presence for the groups `config` opts in.
    pub fn new(broadcaster: Arc<Broadcaster>, config: GroupsConfig) -> Self {
        Self {
            broadcaster,
            config,
        }
    }

    /// The group settings.
    pub fn config(&self) -> &GroupsConfig {
        &self.config
    }

    /// Tells the other members of `group` (if it announces presence) that
    /// `who` joined or left. The audience is the membership at this moment
    /// (resolved before returning); delivery runs in the background.
    pub async fn announce(self: &Arc<Self>, group: &str, event: Event, who: &Connection) {
        if !self.config.presence_enabled(group) {
            return;
        }
        let scope = Scope::Group {
            tenant_id: who.tenant_id.to_string(),
            group: group.to_owned(),
        };
        let exclude: HashSet<String> = [who.connection_id.to_string()].into_iter().collect();
        let members = match self
            .broadcaster
            .resolve(&Target::Scope(scope), &exclude, None)
            .await
        {
            Ok(members) => members,
            Err(err) => {
                tracing::warn!(group, error = %err, "cannot announce presence");
                return;
            }
        };
        let frame = presence_frame(group, event, &who.user_id, &who.connection_id);
        let broadcaster = self.broadcaster.clone();
        let group = group.to_owned();
        tokio::spawn(async move {
            let report = broadcaster.deliver(members, &frame).await;
            tracing::debug!(
                group,
                event = event.name(),
                delivered = report.delivered,
                "presence"
            );
        });
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
