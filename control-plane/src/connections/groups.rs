//! Group membership: joining and leaving, for a client's own `join` /
//! `leave` and for the server API alike, each change announced to the
//! group's members when the group has presence.

use std::sync::Arc;

use crate::{
    config::GroupsConfig,
    delivery::presence::{Event, Presence},
    error::{Fault, RegistryError},
    registry::{Connection, Registry, Scope, collect_all},
};

/// Who a server-side membership change is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member<'a> {
    /// One connection of the tenant.
    Connection(&'a str),
    /// Every current connection of a user of the tenant.
    User(&'a str),
}

/// Joins and leaves, with presence.
pub struct Groups {
    registry: Arc<dyn Registry>,
    presence: Arc<Presence>,
    config: GroupsConfig,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    /// Membership over `registry`, announced through `presence`.
    pub fn new(registry: Arc<dyn Registry>, presence: Arc<Presence>, config: GroupsConfig) -> Self {
        Self {
            registry,
            presence,
            config,
        }
    }

    /// The permission a token needs to `join` `group` itself.
    pub fn join_permission(&self, group: &str) -> String {
        self.config.join_permission_for(group)
    }

    /// Adds `connection` to `group`; `true` when it joined (and presence was
    /// announced), `false` when it was a member already.
    pub async fn join(&self, connection: &Connection, group: &str) -> Result<bool, RegistryError> {
        let joined = self
            .registry
            .join(
                &connection.connection_id,
                group,
                self.config.max_per_connection,
            )
            .await?;
        if joined {
            self.presence.announce(group, Event::Join, connection).await;
        }
        Ok(joined)
    }

    /// Removes `connection` from `group`; `true` when it was a member.
    pub async fn leave(&self, connection: &Connection, group: &str) -> Result<bool, RegistryError> {
        let left = self
            .registry
            .leave(&connection.connection_id, group)
            .await?;
        if left {
            self.presence
                .announce(group, Event::Leave, connection)
                .await;
        }
        Ok(left)
    }

    /// The connections a server-side change applies to: one connection of
    /// the tenant (`NOT_FOUND` outside it), or a user's connections.
    async fn members(&self, tenant_id: &str, member: Member<'_>) -> Result<Vec<Connection>, Fault> {
        match member {
            Member::Connection(id) => match self.registry.get(id).await? {
                Some(c) if *c.tenant_id == *tenant_id => Ok(vec![c]),
                _ => Err(Fault::not_found("connection")),
            },
            Member::User(user_id) => Ok(collect_all(
                self.registry.as_ref(),
                &Scope::User {
                    tenant_id: tenant_id.to_owned(),
                    user_id: user_id.to_owned(),
                },
            )
            .await?),
        }
    }

    /// Adds `member` of `tenant_id` to `group`; how many connections joined.
    pub async fn add(
        &self,
        tenant_id: &str,
        group: &str,
        member: Member<'_>,
    ) -> Result<u32, Fault> {
        let mut added = 0;
        for connection in self.members(tenant_id, member).await? {
            added += u32::from(self.join(&connection, group).await?);
        }
        Ok(added)
    }

    /// Removes `member` of `tenant_id` from `group`; how many connections left.
    pub async fn remove(
        &self,
        tenant_id: &str,
        group: &str,
        member: Member<'_>,
    ) -> Result<u32, Fault> {
        let mut removed = 0;
        for connection in self.members(tenant_id, member).await? {
            removed += u32::from(self.leave(&connection, group).await?);
        }
        Ok(removed)
    }
}
