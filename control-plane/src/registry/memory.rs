//! The embedded registry: sharded concurrent maps with tenant and user
//! indexes. Nothing to install; one process only.
//!
//! Memory per idle connection stays small because everything that repeats
//! across connections (tenant, endpoint, permission sets, user agents) is
//! interned and shared, and the indexes hold the same `Arc<str>` id as the
//! main map.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Bound,
    sync::Arc,
};

use async_trait::async_trait;
use dashmap::{DashMap, DashSet};

use super::{Connection, Page, Registry, RegistryError, Scope, Ttl};
use crate::clock::Clock;

/// Distinct strings kept by an interner before it stops interning (new
/// strings then get their own allocation), so hostile input cannot grow it
/// without bound.
const INTERN_LIMIT: usize = 100_000;

#[derive(Default)]
struct Interner {
    strings: DashSet<Arc<str>>,
    permission_sets: DashMap<Box<str>, Arc<[Arc<str>]>>,
}

impl Interner {
    fn string(&self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return found.clone();
        }
        let arc: Arc<str> = Arc::from(s);
        if self.strings.len() < INTERN_LIMIT {
            self.strings.insert(arc.clone());
        }
        arc
    }

    fn string_set(&self, permissions: &[Arc<str>]) -> Arc<[Arc<str>]> {
        let key: String = permissions
            .iter()
            .map(|p| &**p)
            .collect::<Vec<_>>()
            .join("\u{1f}");
        if let Some(found) = self.permission_sets.get(key.as_str()) {
            return found.clone();
        }
        let set: Arc<[Arc<str>]> = permissions.iter().map(|p| self.string(p)).collect();
        if self.permission_sets.len() < INTERN_LIMIT {
            self.permission_sets
                .insert(key.into_boxed_str(), set.clone());
        }
        set
    }
}

#[derive(Default)]
struct TenantIndex {
    all: BTreeSet<Arc<str>>,
    users: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
}

/// The embedded, in-process registry.
#[derive(Default)]
pub struct MemoryRegistry {
    connections: DashMap<Arc<str>, Connection>,
    tenants: DashMap<Arc<str>, TenantIndex>,
    /// Members by `tenant \0 group`.
    groups: DashMap<Box<str>, BTreeSet<Arc<str>>>,
    interner: Interner,
    ttl: Ttl,
    clock: Clock,
}

fn group_key(tenant_id: &str, group: &str) -> String {
    format!("{tenant_id}\0{group}")
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("connections", &self.connections.len())
            .finish()
    }
}

impl MemoryRegistry {
    /// An empty registry with the default expiry policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry with the given expiry policy, on `clock`.
    pub fn with_ttl(ttl: Ttl, clock: Clock) -> Self {
        Self {
            ttl,
            clock,
            ..Self::default()
        }
    }

    fn drop_member(&self, tenant_id: &str, group: &str, connection_id: &str) {
        let key = group_key(tenant_id, group);
        if let Some(mut members) = self.groups.get_mut(key.as_str()) {
            members.remove(connection_id);
        }
        self.groups
            .remove_if(key.as_str(), |_, members| members.is_empty());
    }

    fn live(&self, id: &str, now: i64) -> Option<Connection> {
        self.connections
            .get(id)
            .map(|c| c.clone())
            .filter(|c| !c.expired(now))
    }

    fn ids_in(&self, scope: &Scope, after: Option<&str>, limit: usize) -> Vec<Arc<str>> {
        let lower = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        if let Scope::Group { tenant_id, group } = scope {
            let Some(members) = self.groups.get(group_key(tenant_id, group).as_str()) else {
                return Vec::new();
            };
            return members
                .range::<str, _>((lower, Bound::Unbounded))
                .take(limit)
                .cloned()
                .collect();
        }
        let Some(index) = self.tenants.get(scope.tenant_id()) else {
            return Vec::new();
        };
        let set = match scope {
            Scope::Tenant(_) => Some(&index.all),
            Scope::User { user_id, .. } => index.users.get(user_id.as_str()),
            Scope::Group { .. } => None,
        };
        let Some(set) = set else {
            return Vec::new();
        };
        set.range::<str, _>((lower, Bound::Unbounded))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn insert(
        &self,
        connection: Connection,
        max_per_tenant: u64,
    ) -> Result<(), RegistryError> {
        let connection = Connection {
            tenant_id: self.interner.string(&connection.tenant_id),
            endpoint: self.interner.string(&connection.endpoint),
            user_agent: self.interner.string(&connection.user_agent),
            permissions: self.interner.string_set(&connection.permissions),
            groups: self.interner.string_set(&connection.groups),
            expires_at_ms: self
                .ttl
                .expires_at_ms(connection.connected_at_ms, connection.last_seen_ms),
            ..connection
        };
        // Lock order: tenant index, then connection map (remove takes them one
        // at a time, so there is no cycle).
        let mut index = self
            .tenants
            .entry(connection.tenant_id.clone())
            .or_default();
        if max_per_tenant > 0 && index.all.len() as u64 >= max_per_tenant {
            return Err(RegistryError::QuotaExceeded {
                limit: max_per_tenant,
            });
        }
        let id = connection.connection_id.clone();
        match self.connections.entry(id.clone()) {
            dashmap::Entry::Occupied(_) => return Err(RegistryError::AlreadyExists),
            dashmap::Entry::Vacant(slot) => {
                let user = connection.user_id.clone();
                slot.insert(connection);
                index.all.insert(id.clone());
                let user = match index.users.get_key_value(&*user) {
                    Some((shared, _)) => shared.clone(),
                    None => user,
                };
                index.users.entry(user).or_default().insert(id);
            }
        }
        Ok(())
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        Ok(self.live(connection_id, self.clock.now_ms()))
    }

    async fn remove(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        let Some((_, connection)) = self.connections.remove(connection_id) else {
            return Ok(None);
        };
        if let Some(mut index) = self.tenants.get_mut(&connection.tenant_id) {
            index.all.remove(connection_id);
            if let Some(set) = index.users.get_mut(&*connection.user_id) {
                set.remove(connection_id);
                if set.is_empty() {
                    index.users.remove(&*connection.user_id);
                }
            }
        }
        self.tenants
            .remove_if(&connection.tenant_id, |_, index| index.all.is_empty());
        for group in connection.groups.iter() {
            self.drop_member(&connection.tenant_id, group, connection_id);
        }
        Ok(Some(connection))
    }

    async fn join(
        &self,
        connection_id: &str,
        group: &str,
        max_groups: usize,
    ) -> Result<bool, RegistryError> {
        let Some(mut row) = self.connections.get_mut(connection_id) else {
            return Err(RegistryError::NotFound);
        };
        if row.expired(self.clock.now_ms()) {
            return Err(RegistryError::NotFound);
        }
        if row.groups.iter().any(|g| &**g == group) {
            return Ok(false);
        }
        if row.groups.len() >= max_groups {
            return Err(RegistryError::GroupLimit { limit: max_groups });
        }
        let name = self.interner.string(group);
        let mut groups: Vec<Arc<str>> = row.groups.to_vec();
        groups.push(name);
        row.groups = groups.into();
        // Indexed while the row is still locked, so a concurrent remove sees
        // the membership in the row and cleans the index after us.
        self.groups
            .entry(group_key(&row.tenant_id, group).into_boxed_str())
            .or_default()
            .insert(row.connection_id.clone());
        Ok(true)
    }

    async fn leave(&self, connection_id: &str, group: &str) -> Result<bool, RegistryError> {
        let Some(mut row) = self.connections.get_mut(connection_id) else {
            return Ok(false);
        };
        if !row.groups.iter().any(|g| &**g == group) {
            return Ok(false);
        }
        row.groups = row
            .groups
            .iter()
            .filter(|g| &***g != group)
            .cloned()
            .collect();
        let tenant = row.tenant_id.clone();
        self.drop_member(&tenant, group, connection_id);
        Ok(true)
    }

    async fn list(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        let limit = limit.max(1);
        let now = self.clock.now_ms();
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut after = after.map(str::to_owned);
        // Expired rows are skipped, so a page may take more than one pass.
        loop {
            let want = limit - items.len();
            let ids = self.ids_in(scope, after.as_deref(), want);
            let exhausted = ids.len() < want;
            after = ids.last().map(|id| id.to_string());
            items.extend(ids.iter().filter_map(|id| self.live(id, now)));
            if exhausted {
                return Ok(Page {
                    items,
                    next_after: None,
                });
            }
            if items.len() == limit {
                return Ok(Page {
                    items,
                    next_after: after,
                });
            }
        }
    }

    async fn count(&self, scope: &Scope) -> Result<u64, RegistryError> {
        let now = self.clock.now_ms();
        let ids = self.ids_in(scope, None, usize::MAX);
        Ok(ids.iter().filter(|id| self.live(id, now).is_some()).count() as u64)
    }

    async fn tenants(&self, limit: usize) -> Result<Vec<(String, u64)>, RegistryError> {
        let now = self.clock.now_ms();
        let mut tenants: Vec<(String, u64)> = self
            .tenants
            .iter()
            .map(|entry| {
                let live = entry
                    .value()
                    .all
                    .iter()
                    .filter(|id| self.live(id, now).is_some())
                    .count();
                (entry.key().to_string(), live as u64)
            })
            .filter(|(_, live)| *live > 0)
            .collect();
        tenants.sort_unstable();
        tenants.truncate(limit);
        Ok(tenants)
    }

    async fn touch(&self, connection_id: &str, now_ms: i64) -> Result<bool, RegistryError> {
        let Some(mut row) = self.connections.get_mut(connection_id) else {
            return Ok(false);
        };
        row.last_seen_ms = row.last_seen_ms.max(now_ms);
        row.expires_at_ms = self
            .ttl
            .expires_at_ms(row.connected_at_ms, row.last_seen_ms);
        Ok(true)
    }

    async fn renew(
        &self,
        connection_id: &str,
        permissions: Arc<[Arc<str>]>,
        token_expires_ms: i64,
    ) -> Result<bool, RegistryError> {
        let Some(mut row) = self.connections.get_mut(connection_id) else {
            return Ok(false);
        };
        row.permissions = permissions;
        row.token_expires_ms = token_expires_ms;
        Ok(true)
    }

    async fn idle(
        &self,
        last_seen_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Connection>, RegistryError> {
        Ok(self
            .connections
            .iter()
            .filter(|c| c.last_seen_ms < last_seen_before_ms)
            .take(limit)
            .map(|c| c.clone())
            .collect())
    }

    /// Counters and memberships are derived from the rows on every read
    /// here, so nothing can drift: nothing to repair.
    async fn repair(&self) -> Result<super::Repair, RegistryError> {
        Ok(super::Repair::default())
    }
}
