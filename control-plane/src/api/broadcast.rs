//! `BroadcastService`: application messages to a connection, a user, a
//! group or a tenant. Every target and id is validated: an empty user id is
//! an error, never "the whole tenant".

use std::{collections::HashSet, sync::Arc, time::Duration};

use prost::Message as _;
use sha2::{Digest, Sha256};

use streamer_proto::{
    ids,
    v1::{self, broadcast_service_server::BroadcastService},
};
use tonic::{Request, Response, Status};

use super::{auth::Caller, convert};
use crate::{
    delivery::{
        broadcast::{Broadcaster, Message, Target},
        idempotency::{CLAIM_LEASE, Claim, KeyStore},
    },
    error::Fault,
};

/// Most connection ids one send may exclude.
const MAX_EXCLUDED: usize = 1000;

/// Longest idempotency key.
const MAX_KEY_LEN: usize = 128;
/// How often a repeat polls for the first Send's answer.
const REPLAY_POLL: Duration = Duration::from_millis(25);

/// Broadcast.
#[derive(Clone)]
pub struct BroadcastApi {
    broadcaster: Arc<Broadcaster>,
    keys: Arc<dyn KeyStore>,
    window: Duration,
}

impl std::fmt::Debug for BroadcastApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastApi").finish_non_exhaustive()
    }
}

impl BroadcastApi {
    /// Serves broadcast, with idempotency keys in `keys` for `window`.
    pub fn new(broadcaster: Arc<Broadcaster>, keys: Arc<dyn KeyStore>, window: Duration) -> Self {
        Self {
            broadcaster,
            keys,
            window,
        }
    }

    /// Runs `message` to its end in its own task (a caller that gives up
    /// no longer stops the fan-out half-way); the response, or the fault
    /// that refused it before anything happened. Under a `key`, the same
    /// task stores the answer (or gives the key back when refused), so a
    /// caller that went away leaves nothing half-done.
    async fn run(
        &self,
        mut message: Message,
        key: Option<String>,
    ) -> Result<v1::SendResponse, Fault> {
        message.once = key.clone().map(|key| (key, self.window));
        let broadcaster = self.broadcaster.clone();
        let keys = self.keys.clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Under a key, the claim's lease is renewed while the Send runs,
            // so only a Send that died leaves its key to be taken over.
            let renewer = key.clone().map(|key| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(CLAIM_LEASE / 3).await;
                        if let Err(err) = keys.renew(&key).await {
                            tracing::warn!(error = %err.message(), "cannot renew an idempotency key's claim");
                        }
                    }
                })
            });
            let sent = broadcaster.send(message).await;
            if let Some(renewer) = renewer {
                renewer.abort();
            }
            let sent = sent.map(|sent| v1::SendResponse {
                report: Some(convert::report_proto(sent.report)),
                position: sent.position.map(|(stream, p)| v1::StreamPosition {
                    stream,
                    offset: p.offset,
                    epoch: p.epoch,
                }),
                replayed: false,
            });
            match (&key, &sent) {
                (Some(key), Ok(response)) => {
                    let encoded = response.encode_to_vec();
                    if let Err(err) = keys.complete(key, encoded.clone()).await {
                        tracing::warn!(error = %err.message(), "cannot store a send's answer under its idempotency key; trying again");
                        keep_answer(keys.clone(), key.clone(), encoded);
                    }
                }
                (Some(key), Err(_)) => give_back(keys, key.clone()),
                (None, _) => {}
            }
            if let Err(Ok(response)) = done.send(sent) {
                let report = response.report.unwrap_or_default();
                tracing::info!(
                    targeted = report.targeted,
                    delivered = report.delivered,
                    gone = report.gone,
                    failed = report.failed,
                    "a send finished after its caller went away"
                );
            }
        });
        outcome
            .await
            .map_err(|_| Fault::internal("the send task ended without an answer"))?
    }

    /// A Send under an idempotency key: the first runs and its answer is
    /// kept; a repeat with the same request gets that answer (waiting for
    /// it while the first runs); another request under the key is refused.
    async fn run_once(
        &self,
        key: String,
        fingerprint: [u8; 32],
        message: Message,
    ) -> Result<v1::SendResponse, Fault> {
        loop {
            match self.keys.claim(&key, fingerprint, self.window).await? {
                Claim::Mine => break,
                Claim::Taken(record) if record.fingerprint != fingerprint => {
                    return Err(conflict());
                }
                Claim::Taken(_) => {}
            }
            // Taken by the same request: wait for its answer; if the first
            // gave the key back (refused), claim it again; every second,
            // claim again anyway, which takes over a claim whose Send died
            // (its lease ran out unrenewed).
            for _ in 0..(Duration::from_secs(1).as_millis() / REPLAY_POLL.as_millis()) {
                match self.keys.get(&key).await? {
                    Some(record) if record.fingerprint != fingerprint => return Err(conflict()),
                    Some(record) => {
                        if let Some(bytes) = record.response {
                            let mut response = v1::SendResponse::decode(bytes.as_slice())
                                .map_err(|e| Fault::internal(format!("stored response: {e}")))?;
                            response.replayed = true;
                            return Ok(response);
                        }
                        tokio::time::sleep(REPLAY_POLL).await;
                    }
                    None => break,
                }
            }
        }
        self.run(message, Some(key)).await
    }
}

/// Stores a finished send's answer under `key` after the first try
/// failed (the store is down): tried again, renewing the claim meanwhile,
/// so a retry replays the answer instead of taking an unanswered key over
/// and sending again.
fn keep_answer(keys: Arc<dyn KeyStore>, key: String, answer: Vec<u8>) {
    tokio::spawn(async move {
        // The first try has just failed.
        tokio::time::sleep(FIRST_PAUSE).await;
        let kept = keep_trying(|| async {
            if keys.complete(&key, answer.clone()).await.is_ok() {
                return true;
            }
            let _ = keys.renew(&key).await;
            false
        })
        .await;
        if !kept {
            tracing::warn!(
                "cannot store a send's answer under its idempotency key; a retry after its lease sends again"
            );
        }
    });
}

/// Gives `key` back after a refused send; the store may be what refused
/// it, so this keeps trying for a while, letting a retry use the key.
fn give_back(keys: Arc<dyn KeyStore>, key: String) {
    tokio::spawn(async move {
        if !keep_trying(|| async { keys.release(&key).await.is_ok() }).await {
            tracing::warn!(
                "cannot give back an idempotency key; it frees itself at the end of its window"
            );
        }
    });
}

/// The pause after a key store call failed, doubled after each failure.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Calls `op` until it succeeds, 12 times at most with doubling pauses
/// (capped at 5 s: about 40 s in all); whether it did.
async fn keep_trying<F, Fut>(mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut pause = FIRST_PAUSE;
    for _ in 0..12 {
        if op().await {
            return true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    false
}

fn conflict() -> Fault {
    Fault::duplicate(
        "this idempotency key was used for another request (target, payload, topic or exclusions) within the window",
    )
}

/// The idempotency key of a request, checked: 1-128 printable ASCII.
fn idempotency_key(key: &str) -> Result<Option<&str>, Fault> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_KEY_LEN || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Fault::invalid(
            "idempotency_key must be 1-128 printable ASCII characters without spaces",
        ));
    }
    Ok(Some(key))
}

/// The target of a send, validated.
fn target(target: Option<v1::send_request::Target>) -> Result<Target, Fault> {
    use v1::send_request::Target as T;
    Ok(match target {
        Some(T::ConnectionId(id)) => Target::Connection(convert::connection(&id)?.to_owned()),
        Some(T::User(user)) => Target::Scope(convert::user_scope(&user.tenant_id, &user.user_id)?),
        Some(T::TenantId(tenant)) => Target::Scope(convert::tenant_or_user(&tenant, "")?),
        Some(T::Group(group)) => {
            Target::Scope(convert::group_scope(&group.tenant_id, &group.group)?)
        }
        None => return Err(Fault::invalid("a target is required")),
    })
}

/// The message of a send, validated.
fn message(caller: &Caller, r: v1::SendRequest) -> Result<Message, Fault> {
    let target = target(r.target)?;
    if let Target::Scope(scope) = &target {
        caller.check_tenant(scope.tenant_id())?;
    }
    let data = match r.payload {
        Some(v1::send_request::Payload::Data(value)) => convert::value_to_json(value),
        Some(v1::send_request::Payload::DataJson(text)) => {
            streamer_proto::client::strict_json(&text)
                .map_err(|_| Fault::invalid("data_json is not valid JSON"))?
        }
        None => return Err(Fault::invalid("data or data_json is required")),
    };
    if !ids::valid_topic(&r.topic) {
        return Err(Fault::invalid(
            "topic must be at most 128 characters without control characters",
        ));
    }
    if r.exclude_connection_ids.len() > MAX_EXCLUDED {
        return Err(Fault::invalid(format!(
            "exclude at most {MAX_EXCLUDED} connection ids"
        )));
    }
    let mut exclude = HashSet::with_capacity(r.exclude_connection_ids.len());
    for id in r.exclude_connection_ids {
        convert::connection(&id)
            .map_err(|_| Fault::invalid("exclude_connection_ids holds an invalid connection id"))?;
        exclude.insert(id);
    }
    Ok(Message {
        target,
        data,
        topic: (!r.topic.is_empty()).then_some(r.topic),
        exclude,
        visible_to: caller.visible_to(),
        // Set by a keyed Send (`run`).
        once: None,
    })
}

#[tonic::async_trait]
impl BroadcastService for BroadcastApi {
    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let mut request = request.into_inner();
        let key = idempotency_key(&request.idempotency_key)?.map(str::to_owned);
        request.idempotency_key.clear();
        let fingerprint: [u8; 32] = Sha256::digest(request.encode_to_vec()).into();
        let message = message(&caller, request)?;
        let Some(key) = key else {
            return Ok(Response::new(self.run(message, None).await?));
        };
        // Keys are per tenant (a connection target: per caller).
        let namespace = match &message.target {
            Target::Scope(scope) => format!("t/{}", scope.tenant_id()),
            Target::Connection(_) => format!("c/{}", caller.principal()),
        };
        let key = format!("{namespace}/{key}");
        Ok(Response::new(
            self.run_once(key, fingerprint, message).await?,
        ))
    }
}
