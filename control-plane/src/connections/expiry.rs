//! A token's end is its connection's end. The replica that accepts a
//! connection (or renews it with `refresh`) watches its token's `exp`:
//! `STREAMER_TOKEN_EXPIRY_WARNING_SECS` before it the client gets
//! `{"type":"token_expiring","expires_at":"…"}`, and at it the connection
//! is closed (`DeleteConnection`; `$disconnect` follows as usual) — unless
//! the row, read again each time, says a `refresh` moved the end (the
//! replica that renewed it watches the new one).
//!
//! A watch lives in its replica: when that replica stops (a deploy, a
//! crash) before the end, the connection is closed instead by whoever sees
//! it first past the end (plus `TOKEN_END_GRACE`): the route of its next
//! frame ([`ControlPlane::close_ended`], the frame answered `UNAUTHORIZED`)
//! or the reconcile pass, for an idle one.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use streamer_proto::client;

use super::ControlPlane;
use crate::{
    delivery::{Delivery, PreparedFrame, fanout::Fanout},
    registry::{Connection, Registry},
};

/// The row of `id` while it is still this token's connection (gone, or
/// renewed to another end: `None`, the watch stops).
async fn current(registry: &dyn Registry, id: &str, end: i64) -> Option<Connection> {
    match registry.get(id).await {
        Ok(Some(row)) if row.token_expires_ms == end => Some(row),
        Ok(_) => None,
        Err(err) => {
            tracing::warn!(connection_id = %id, error = %err, "cannot read a connection to check its token's end");
            None
        }
    }
}

/// The warning before the end: `token_expiring` to the client.
async fn at_warning(registry: &dyn Registry, fanout: &Arc<Fanout>, id: &str, end: i64) {
    let Some(row) = current(registry, id, end).await else {
        return;
    };
    let frame = json!({
        "type": "token_expiring",
        "expires_at": client::timestamp_ms(end),
    })
    .to_string();
    fanout.send_one(&row, &PreparedFrame::new(frame)).await;
}

/// The end: the connection is closed and its row removed.
async fn at_end(registry: &dyn Registry, delivery: &dyn Delivery, id: &str, end: i64) {
    let Some(row) = current(registry, id, end).await else {
        return;
    };
    match delivery.delete(&row.endpoint, &row.connection_id).await {
        Ok(_) => {
            tracing::info!(connection_id = %id, tenant_id = %row.tenant_id, "closed at its token's end");
            if let Err(err) = registry.remove(id).await {
                tracing::warn!(connection_id = %id, error = %err, "cannot remove a connection closed at its token's end (reconcile will)");
            }
        }
        Err(err) => {
            tracing::warn!(connection_id = %id, error = %err, "cannot close a connection at its token's end");
        }
    }
}

impl ControlPlane {
    /// Watches `connection`'s token end (nothing when it has none).
    pub(super) fn watch_token(&self, connection: &Connection) {
        let end = connection.token_expires_ms;
        if end <= 0 {
            return;
        }
        let (registry, fanout, delivery, clock) = (
            self.registry.clone(),
            self.fanout.clone(),
            self.delivery.clone(),
            self.clock,
        );
        let warning = crate::clock::ms(self.token_warning);
        let id = connection.connection_id.clone();
        let key = id.clone();
        let until = move |at_ms: i64| {
            let left = at_ms - clock.now_ms();
            tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
        };
        // The task waits for hours holding only its captures and a timer:
        // what it does at the warning and at the end is boxed, so those
        // futures' state is not part of every idle connection's task (it
        // made a connection cost ~2.3 KB of control-plane heap, not ~0.5).
        let task = tokio::spawn(async move {
            until(end - warning).await;
            Box::pin(at_warning(&*registry, &fanout, &id, end)).await;
            until(end).await;
            Box::pin(at_end(&*registry, &*delivery, &id, end)).await;
        });
        // One watcher per connection: a renewal replaces the one before.
        if let Some(previous) = self.watchers.insert(key, task.abort_handle()) {
            previous.abort();
        }
    }

    /// Closes `connection`, whose token ended with no watcher closing it
    /// (the replica that watched it stopped), in the background.
    pub(super) fn close_ended(&self, connection: &Connection) {
        let (registry, delivery) = (self.registry.clone(), self.delivery.clone());
        let (endpoint, id, tenant) = (
            connection.endpoint.clone(),
            connection.connection_id.clone(),
            connection.tenant_id.clone(),
        );
        tokio::spawn(async move {
            match delivery.delete(&endpoint, &id).await {
                Ok(_) => {
                    tracing::info!(connection_id = %id, tenant_id = %tenant, "closed a connection found past its token's end");
                    if let Err(err) = registry.remove(&id).await {
                        tracing::warn!(connection_id = %id, error = %err, "cannot remove a connection past its token's end (reconcile will)");
                    }
                }
                Err(err) => {
                    tracing::warn!(connection_id = %id, error = %err, "cannot close a connection past its token's end (reconcile will)");
                }
            }
        });
    }

    /// Forgets the watchers whose tasks have ended (the app calls it with
    /// the rest of its upkeep).
    pub fn forget_finished_watchers(&self) {
        self.watchers.retain(|_, watcher| !watcher.is_finished());
    }
}
