//! Presence: members of opted-in groups hear when someone joins, leaves or
//! disconnects. Departures the registry learns of late (a 410 during a
//! broadcast, the reconcile job, TTL) are announced too, because every
//! removal reports its groups here.

use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use streamer_proto::client::Frame;
pub use streamer_proto::client::PresenceEvent as Event;
use tokio::sync::mpsc;

use super::broadcast::{Broadcaster, Target};
use crate::{
    config::GroupsConfig,
    registry::{Connection, Scope},
};

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
        let frame =
            Bytes::from(Frame::presence(group, event, &who.user_id, &who.connection_id).to_json());
        let broadcaster = self.broadcaster.clone();
        let group = group.to_owned();
        tokio::spawn(async move {
            let report = broadcaster.deliver(members, frame).await;
            tracing::debug!(
                group,
                event = event.as_str(),
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
