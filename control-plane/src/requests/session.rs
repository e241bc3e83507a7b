//! A connected processor: the actions it serves, its capacity, the leases it
//! holds, and the channel its assignments go out on. The transport (the
//! `ProcessorService.Work` stream) turns each [`Assignment`] into its wire
//! message; nothing here knows about gRPC.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use serde_json::Value;
use tokio::sync::{Notify, mpsc};

/// A request leased to a processor.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The tenant.
    pub tenant_id: String,
    /// The client's request id.
    pub request_id: String,
    /// The action.
    pub action: String,
    /// The validated payload.
    pub payload: Value,
    /// Who asked.
    pub user_id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

/// What the control plane tells a processor.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// Work on this request.
    Lease(Lease),
    /// Stop working on this request: it was cancelled.
    Cancelled {
        /// The tenant.
        tenant_id: String,
        /// The request.
        request_id: String,
    },
    /// A report about this request was refused (bad values, or the
    /// processor no longer holds it); `reason` says why.
    Refused {
        /// The tenant.
        tenant_id: String,
        /// The request.
        request_id: String,
        /// Why, for the processor's logs.
        reason: String,
    },
}

/// A connected processor.
pub struct Session {
    /// The lease owner id of this session.
    pub id: String,
    pub(super) name: String,
    pub(super) actions: Vec<String>,
    pub(super) tenant: Option<String>,
    pub(super) concurrency: usize,
    pub(super) in_flight: AtomicUsize,
    pub(super) draining: AtomicBool,
    pub(super) closed: AtomicBool,
    pub(super) leases: Mutex<HashSet<(String, String)>>,
    pub(super) changed: Notify,
    pub(super) tx: mpsc::Sender<Assignment>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(super) fn new(
        name: &str,
        actions: Vec<String>,
        tenant: Option<String>,
        concurrency: usize,
        tx: mpsc::Sender<Assignment>,
    ) -> Self {
        Self {
            id: format!("proc-{}", uuid::Uuid::new_v4()),
            name: name.to_owned(),
            actions,
            tenant,
            concurrency: concurrency.max(1),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            leases: Mutex::new(HashSet::new()),
            changed: Notify::new(),
            tx,
        }
    }

    /// The processor's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The actions it serves.
    pub fn actions(&self) -> &[String] {
        &self.actions
    }

    /// The tenant it is bound to, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Most requests it works on at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Requests it is working on.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn take(&self, tenant_id: &str, request_id: &str) {
        if let Ok(mut leases) = self.leases.lock()
            && leases.insert((tenant_id.to_owned(), request_id.to_owned()))
        {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(super) fn release(&self, tenant_id: &str, request_id: &str) {
        if let Ok(mut leases) = self.leases.lock()
            && leases.remove(&(tenant_id.to_owned(), request_id.to_owned()))
        {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.changed.notify_one();
    }

    pub(super) fn holds(&self, tenant_id: &str, request_id: &str) -> bool {
        self.leases
            .lock()
            .is_ok_and(|l| l.contains(&(tenant_id.to_owned(), request_id.to_owned())))
    }

    pub(super) fn held(&self) -> Vec<(String, String)> {
        self.leases
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops taking new leases; the ones held finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Tells the processor a report about a request was refused.
    pub async fn refuse(&self, tenant_id: &str, request_id: &str, reason: impl Into<String>) {
        let _ = self
            .tx
            .send(Assignment::Refused {
                tenant_id: tenant_id.to_owned(),
                request_id: request_id.to_owned(),
                reason: reason.into(),
            })
            .await;
    }

    /// Tells the processor to stop working on a request, and frees its slot.
    pub async fn cancel(&self, tenant_id: &str, request_id: &str) {
        let _ = self
            .tx
            .send(Assignment::Cancelled {
                tenant_id: tenant_id.to_owned(),
                request_id: request_id.to_owned(),
            })
            .await;
        self.release(tenant_id, request_id);
    }
}
