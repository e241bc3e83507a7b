//! The processor SDK: serve async actions from any Rust service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), streamer_client::Error> {
//! use streamer_client::processor::{ActionSpec, JobError, Processor};
//!
//! Processor::new("http://127.0.0.1:50051", "service-token")
//!     .concurrency(4)
//!     .handle(ActionSpec::new("resize_image"), |job, progress| async move {
//!         progress.report(50, "resizing", None).await;
//!         if job.payload.get("url").is_none() {
//!             return Err(JobError::fatal("VALIDATION_ERROR", "url is required"));
//!         }
//!         Ok(serde_json::json!({ "done": true }))
//!     })
//!     .run(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```
//!
//! It connects, registers its actions, runs one task per leased request (up
//! to the concurrency), reconnects with exponential backoff and jitter when
//! the stream breaks, and on shutdown drains: it takes no new work and
//! finishes what it holds before closing.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use serde_json::Value;
use streamer_proto::{auth::BearerToken, v1, v1::processor_service_client::ProcessorServiceClient};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;

use crate::Error;

/// An async action this processor serves.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    name: String,
    schema: Option<Value>,
    permission: Option<String>,
    lease_timeout: Duration,
    max_attempts: u32,
}

impl ActionSpec {
    /// An action with no schema, no permission, a 30 s lease and 3 attempts.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            schema: None,
            permission: None,
            lease_timeout: Duration::from_secs(30),
            max_attempts: 3,
        }
    }

    /// The JSON Schema the control plane checks payloads against before
    /// queueing.
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The permission the client's token must grant.
    pub fn permission(mut self, permission: &str) -> Self {
        self.permission = Some(permission.to_owned());
        self
    }

    /// How long a lease lasts without progress.
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    /// Attempts before the request fails.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    fn to_proto(&self) -> v1::ActionSpec {
        v1::ActionSpec {
            name: self.name.clone(),
            schema_json: self
                .schema
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            permission: self.permission.clone().unwrap_or_default(),
            lease_timeout_ms: u32::try_from(self.lease_timeout.as_millis()).unwrap_or(u32::MAX),
            max_attempts: self.max_attempts,
        }
    }
}

/// A leased request.
#[derive(Debug, Clone)]
pub struct Job {
    /// The tenant.
    pub tenant_id: String,
    /// The client's request id.
    pub request_id: String,
    /// The action.
    pub action: String,
    /// The validated payload.
    pub payload: Value,
    /// The user who asked.
    pub user_id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    cancelled: watch::Receiver<bool>,
}

impl Job {
    /// Whether the request was cancelled (stop working; nothing more is sent).
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when the request is cancelled.
    pub async fn cancelled(&mut self) {
        let _ = self.cancelled.wait_for(|c| *c).await;
    }
}

/// Reports progress on one job (it also renews the lease).
#[derive(Debug, Clone)]
pub struct Progress {
    tx: mpsc::Sender<v1::WorkRequest>,
    tenant_id: String,
    request_id: String,
    cancelled: watch::Receiver<bool>,
}

impl Progress {
    /// Sends a progress report: 0..=100, a step message, optional detail.
    pub async fn report(&self, percentage: u32, message: &str, details: Option<Value>) {
        if *self.cancelled.borrow() {
            return;
        }
        let report = v1::ReportProgress {
            tenant_id: self.tenant_id.clone(),
            request_id: self.request_id.clone(),
            progress: Some(v1::Progress {
                percentage: percentage.min(100),
                message: message.to_owned(),
                details_json: details.as_ref().map(Value::to_string).unwrap_or_default(),
            }),
        };
        let _ = self
            .tx
            .send(v1::WorkRequest {
                message: Some(v1::work_request::Message::Progress(report)),
            })
            .await;
    }
}

/// How a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Another attempt may succeed (after a backoff, while attempts remain).
    Retryable(String),
    /// It will never succeed: the client gets this code and message.
    Fatal {
        /// A client error code, e.g. `VALIDATION_ERROR`.
        code: String,
        /// A message for the client.
        message: String,
    },
}

impl JobError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError::Retryable(message.into())
    }

    /// A final failure with a client error code.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        JobError::Fatal {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

type Handler =
    Arc<dyn Fn(Job, Progress) -> BoxFuture<'static, Result<Value, JobError>> + Send + Sync>;

/// A report the control plane refused (bad values, or a request this
/// processor no longer holds): nothing of it was recorded or relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The tenant of the request.
    pub tenant_id: String,
    /// The request the report was about.
    pub request_id: String,
    /// Why.
    pub reason: String,
}

type RefusalHook = Arc<dyn Fn(Refusal) + Send + Sync>;

/// A processor: actions and their handlers, and how to reach the control plane.
pub struct Processor {
    addr: String,
    token: String,
    tls: crate::ClientTls,
    name: String,
    concurrency: u32,
    handlers: HashMap<String, (ActionSpec, Handler)>,
    on_refused: Option<RefusalHook>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

enum End {
    Shutdown,
    Disconnected,
}

impl Processor {
    /// A processor for the control plane at `addr`, authenticated with a
    /// service (or admin) token.
    pub fn new(addr: &str, token: &str) -> Self {
        let addr = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        Self {
            addr,
            token: token.to_owned(),
            tls: crate::ClientTls::default(),
            name: "processor".into(),
            concurrency: 4,
            handlers: HashMap::new(),
            on_refused: None,
        }
    }

    /// TLS for an `https://` control plane: the CA it trusts and, for
    /// mutual TLS, its client certificate.
    pub fn tls(mut self, tls: crate::ClientTls) -> Self {
        self.tls = tls;
        self
    }

    /// A name for the control plane's logs.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Requests worked on at once.
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Called with every report the control plane refuses (each is also
    /// logged as a warning).
    pub fn on_refused(mut self, hook: impl Fn(Refusal) + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Arc::new(hook));
        self
    }

    /// Serves `spec` with `handler`, an async closure getting the job and a
    /// progress reporter and returning the result or a [`JobError`].
    pub fn handle<F, Fut>(mut self, spec: ActionSpec, handler: F) -> Self
    where
        F: Fn(Job, Progress) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job, progress| Box::pin(handler(job, progress)));
        self.handlers.insert(spec.name.clone(), (spec, handler));
        self
    }

    /// Serves until `shutdown` resolves, reconnecting with exponential
    /// backoff and jitter; then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.session(shutdown.as_mut()).await {
                Ok(End::Shutdown) => return Ok(()),
                Ok(End::Disconnected) => {
                    tracing::warn!(processor = %self.name, "work stream ended; reconnecting");
                    delay = Duration::from_millis(100);
                }
                Err(err) => {
                    tracing::warn!(processor = %self.name, error = %err, "cannot reach the control plane")
                }
            }
            let jitter = Duration::from_millis(rand::random_range(
                0..=u64::try_from(delay.as_millis() / 2).unwrap_or(0),
            ));
            tokio::select! {
                () = shutdown.as_mut() => return Ok(()),
                () = tokio::time::sleep(delay / 2 + jitter) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn session(
        &self,
        mut shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<End, Error> {
        let endpoint = crate::endpoint(&self.addr, &self.tls)?;
        let channel = endpoint.connect().await.map_err(Error::Connect)?;
        let bearer = BearerToken::new(&self.token).map_err(|_| Error::Token)?;
        let mut client = ProcessorServiceClient::with_interceptor(channel, bearer);
        let (tx, rx) = mpsc::channel(64);
        let register = v1::Register {
            actions: self
                .handlers
                .values()
                .map(|(spec, _)| spec.to_proto())
                .collect(),
            concurrency: self.concurrency,
            name: self.name.clone(),
        };
        let _ = tx
            .send(v1::WorkRequest {
                message: Some(v1::work_request::Message::Register(register)),
            })
            .await;
        let mut inbound = client.work(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(processor = %self.name, "registered");

        let mut running = JoinSet::new();
        let mut cancels: HashMap<(String, String), watch::Sender<bool>> = HashMap::new();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(v1::WorkResponse { message: Some(v1::work_response::Message::Lease(lease)) })) => {
                        let key = (lease.tenant_id.clone(), lease.request_id.clone());
                        let (cancel_tx, cancel_rx) = watch::channel(false);
                        cancels.insert(key, cancel_tx);
                        self.start(&mut running, &tx, lease, cancel_rx);
                    }
                    Ok(Some(v1::WorkResponse { message: Some(v1::work_response::Message::Cancelled(c)) })) => {
                        if let Some(cancel) = cancels.get(&(c.tenant_id, c.request_id)) {
                            let _ = cancel.send(true);
                        }
                    }
                    Ok(Some(v1::WorkResponse { message: Some(v1::work_response::Message::Refused(r)) })) => {
                        tracing::warn!(processor = %self.name, tenant_id = %r.tenant_id, request_id = %r.request_id, reason = %r.reason, "the control plane refused a report");
                        if let Some(hook) = &self.on_refused {
                            hook(Refusal { tenant_id: r.tenant_id, request_id: r.request_id, reason: r.reason });
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return Ok(End::Disconnected),
                },
                Some(done) = running.join_next() => {
                    if let Ok(key) = done {
                        cancels.remove(&key);
                    }
                }
                () = shutdown.as_mut() => {
                    let _ = tx.send(v1::WorkRequest { message: Some(v1::work_request::Message::Drain(true)) }).await;
                    while running.join_next().await.is_some() {}
                    return Ok(End::Shutdown);
                }
            }
        }
    }

    fn start(
        &self,
        running: &mut JoinSet<(String, String)>,
        tx: &mpsc::Sender<v1::WorkRequest>,
        lease: v1::Lease,
        cancelled: watch::Receiver<bool>,
    ) {
        let key = (lease.tenant_id.clone(), lease.request_id.clone());
        let Some((_, handler)) = self.handlers.get(&lease.action) else {
            let fail = v1::ReportFailure {
                tenant_id: lease.tenant_id,
                request_id: lease.request_id,
                code: "PROCESSING_FAILED".into(),
                message: "no handler for this action".into(),
                retryable: true,
            };
            let tx = tx.clone();
            running.spawn(async move {
                let _ = tx
                    .send(v1::WorkRequest {
                        message: Some(v1::work_request::Message::Fail(fail)),
                    })
                    .await;
                key
            });
            return;
        };
        let payload = serde_json::from_str(&lease.payload_json).unwrap_or(Value::Null);
        let job = Job {
            tenant_id: lease.tenant_id.clone(),
            request_id: lease.request_id.clone(),
            action: lease.action,
            payload,
            user_id: lease.user_id,
            attempt: lease.attempt,
            cancelled: cancelled.clone(),
        };
        let progress = Progress {
            tx: tx.clone(),
            tenant_id: lease.tenant_id.clone(),
            request_id: lease.request_id.clone(),
            cancelled: cancelled.clone(),
        };
        let handler = handler.clone();
        let tx = tx.clone();
        running.spawn(async move {
            let outcome = handler(job, progress).await;
            if *cancelled.borrow() {
                return key;
            }
            let message = match outcome {
                Ok(result) => v1::work_request::Message::Complete(v1::ReportComplete {
                    tenant_id: key.0.clone(),
                    request_id: key.1.clone(),
                    result_json: result.to_string(),
                }),
                Err(JobError::Retryable(message)) => {
                    v1::work_request::Message::Fail(v1::ReportFailure {
                        tenant_id: key.0.clone(),
                        request_id: key.1.clone(),
                        code: "PROCESSING_FAILED".into(),
                        message,
                        retryable: true,
                    })
                }
                Err(JobError::Fatal { code, message }) => {
                    v1::work_request::Message::Fail(v1::ReportFailure {
                        tenant_id: key.0.clone(),
                        request_id: key.1.clone(),
                        code,
                        message,
                        retryable: false,
                    })
                }
            };
            let _ = tx
                .send(v1::WorkRequest {
                    message: Some(message),
                })
                .await;
            key
        });
    }
}
