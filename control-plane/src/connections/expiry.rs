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

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::json;
use streamer_proto::client;
use tokio::sync::mpsc;
use tokio_util::time::{DelayQueue, delay_queue};

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

/// Every token end this replica watches, in one timer queue driven by one
/// task: a connection costs a queue entry (about 100 B), not a task of its
/// own (about 450 B, which put an idle connection over 1 KiB of heap).
#[derive(Default)]
pub(super) struct Watches {
    tx: std::sync::OnceLock<mpsc::UnboundedSender<Watch>>,
}

enum Watch {
    /// Watch `id`'s token, ending at `end` (replacing any watch before).
    Start { id: Arc<str>, end: i64 },
    /// The connection went: stop watching it.
    Stop(Arc<str>),
}

/// What a queue entry is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The warning before the end.
    Warning,
    /// The end.
    End,
}

impl Watches {
    /// Stops watching `id` (its connection went).
    pub(super) fn stop(&self, id: &Arc<str>) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(Watch::Stop(id.clone()));
        }
    }
}

/// What the watching task acts with.
struct Watcher {
    registry: Arc<dyn Registry>,
    fanout: Arc<Fanout>,
    delivery: Arc<dyn Delivery>,
    clock: crate::clock::Clock,
    warning: i64,
}

impl Watcher {
    fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(at_ms - self.clock.now_ms()).unwrap_or(0))
    }

    /// The queue: starts and stops from the replica, the warning and the
    /// end of each token as they come due (their work in tasks of their
    /// own, so a slow delete holds up no other end).
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Watch>) {
        let mut queue: DelayQueue<(Arc<str>, i64, Phase)> = DelayQueue::new();
        let mut keys: HashMap<Arc<str>, delay_queue::Key> = HashMap::new();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Watch::Start { id, end }) => {
                        if let Some(key) = keys.remove(&id) {
                            queue.remove(&key);
                        }
                        // A token that ends inside the warning window is
                        // warned at once (`until` is zero for a time past).
                        let key = queue.insert((id.clone(), end, Phase::Warning), self.until(end - self.warning));
                        keys.insert(id, key);
                    }
                    Some(Watch::Stop(id)) => {
                        if let Some(key) = keys.remove(&id) {
                            queue.remove(&key);
                        }
                    }
                },
                Some(due) = std::future::poll_fn(|cx| queue.poll_expired(cx)) => {
                    let (id, end, phase) = due.into_inner();
                    match phase {
                        Phase::Warning => {
                            let (registry, fanout, id2) = (self.registry.clone(), self.fanout.clone(), id.clone());
                            tokio::spawn(async move { at_warning(&*registry, &fanout, &id2, end).await });
                            let key = queue.insert((id.clone(), end, Phase::End), self.until(end));
                            keys.insert(id, key);
                        }
                        Phase::End => {
                            keys.remove(&id);
                            let (registry, delivery) = (self.registry.clone(), self.delivery.clone());
                            tokio::spawn(async move { at_end(&*registry, &*delivery, &id, end).await });
                        }
                    }
                }
            }
            // Space the map and the queue no longer need, given back after
            // a wave of connections has gone.
            if keys.capacity() > 1024 && keys.len() < keys.capacity() / 4 {
                keys.shrink_to_fit();
                queue.shrink_to_fit();
            }
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
        let tx = self.watches.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let watcher = Watcher {
                registry: self.registry.clone(),
                fanout: self.fanout.clone(),
                delivery: self.delivery.clone(),
                clock: self.clock,
                warning: crate::clock::ms(self.token_warning),
            };
            tokio::spawn(watcher.run(rx));
            tx
        });
        let _ = tx.send(Watch::Start {
            id: connection.connection_id.clone(),
            end,
        });
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
}
