//! Broadcast: store the message in its stream's history when the stream
//! keeps one (so it has an offset before anyone can receive it), resolve the
//! targets from the registry in one paginated pass, fan the frame out
//! through the gateway with bounded concurrency, remove connections the
//! gateway reports gone, and report what happened.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::Value;
use streamer_proto::client::{Frame, StreamPosition, timestamp_ms};

use super::{
    PreparedFrame,
    fanout::{Fanout, Recipient},
};
use crate::{
    clock::Clock,
    error::Fault,
    metrics::{OutcomeLabel, metrics},
    registry::{Connection, Registry, Scope, collect_all},
    streams::{Position, Stream, Streams},
};

/// How long a stored message's recipients are looked for while the store
/// refuses to list them (a DynamoDB outage is seconds).
const RESOLVE_STORED_FOR: Duration = Duration::from_secs(30);

/// Who receives a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One connection.
    Connection(String),
    /// A user's connections, a group's members, or a whole tenant's.
    Scope(Scope),
}

/// One application message to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// Who receives it.
    pub target: Target,
    /// The body (the frame's `data`).
    pub data: Value,
    /// The topic copied into the frame.
    pub topic: Option<String>,
    /// Connections that must not receive it.
    pub exclude: HashSet<String>,
    /// The only tenant the sender may reach (`None`: any). A connection
    /// target outside it resolves to nothing, as if absent.
    pub visible_to: Option<String>,
    /// A keyed Send's tenant-scoped idempotency key: its stream stores the
    /// message at most once whatever happens to the tries
    /// ([`crate::streams::History::append`]).
    pub once: Option<(String, std::time::Duration)>,
}

/// Counts of what happened to each recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Recipients after exclusions.
    pub targeted: u32,
    /// Accepted by the gateway.
    pub delivered: u32,
    /// Gone (410); removed from the registry.
    pub gone: u32,
    /// Throttled after every retry.
    pub throttled: u32,
    /// Over the gateway's size limit.
    pub too_large: u32,
    /// Failed otherwise.
    pub failed: u32,
}

/// What a send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// What happened to each recipient.
    pub report: DeliveryReport,
    /// The stream and the message's position in it, when the stream keeps
    /// history.
    pub position: Option<(String, Position)>,
}

/// Resolves targets and fans out.
pub struct Broadcaster {
    registry: Arc<dyn Registry>,
    fanout: Arc<Fanout>,
    streams: Streams,
    clock: Clock,
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster").finish_non_exhaustive()
    }
}

impl Broadcaster {
    /// A broadcaster over `registry` delivering through `fanout`, keeping
    /// history in `streams`.
    pub fn new(
        registry: Arc<dyn Registry>,
        fanout: Arc<Fanout>,
        streams: Streams,
        clock: Clock,
    ) -> Self {
        Self {
            registry,
            fanout,
            streams,
            clock,
        }
    }

    /// The streams and their history.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Sends one application message and reports what happened. A message
    /// to a stream that keeps history is stored first: if that fails, nobody
    /// receives it and the caller gets the error (a message is never
    /// delivered without its offset).
    pub async fn send(&self, message: Message) -> Result<Sent, Fault> {
        let now_ms = self.clock.now_ms();
        let position = match &message.target {
            Target::Scope(scope) => {
                let stream = Stream::of_scope(scope).name();
                self.streams
                    .record(
                        scope.tenant_id(),
                        &stream,
                        &message.data,
                        message.topic.as_deref(),
                        now_ms,
                        message
                            .once
                            .as_ref()
                            .map(|(key, window)| (key.as_str(), *window)),
                    )
                    .await?
                    .map(|position| (stream, position))
            }
            Target::Connection(_) => None,
        };
        let targets = match self
            .resolve(
                &message.target,
                &message.exclude,
                message.visible_to.as_deref(),
            )
            .await
        {
            Ok(targets) => targets,
            // Nothing stored, nothing sent: refused as it stands (a keyed
            // Send gives its key back).
            Err(err) if position.is_none() => return Err(err),
            // The message is in its stream: the Send is accepted whatever
            // the store says now (refusing it would have a retry store it
            // twice). Listing its recipients is tried again for a while;
            // past that, the report targets nobody and clients following
            // the stream get the message by recovery (their next message
            // shows the gap).
            Err(err) => self.resolve_stored(&message, err).await,
        };
        // The same frame, timestamp included, as `recover` gives back.
        let placed = position.as_ref().map(|(stream, p)| StreamPosition {
            stream: stream.clone(),
            offset: p.offset,
            epoch: p.epoch.clone(),
        });
        let frame = Frame::Message {
            // A stream's message is named by its place, so a recovered copy
            // has the live frame's id; a plain one gets an id of its own.
            id: placed.as_ref().map_or_else(
                || format!("m-{:032x}", rand::random::<u128>()),
                StreamPosition::message_id,
            ),
            data: message.data,
            topic: message.topic,
            position: placed,
            timestamp: timestamp_ms(now_ms),
        };
        let report = self.deliver(targets, Bytes::from(frame.to_json())).await;
        tracing::info!(
            targeted = report.targeted,
            delivered = report.delivered,
            gone = report.gone,
            throttled = report.throttled,
            too_large = report.too_large,
            failed = report.failed,
            "broadcast"
        );
        Ok(Sent { report, position })
    }

    /// [`Broadcaster::resolve`] for a message already stored, after `first`
    /// failed: tried again with backoff for up to [`RESOLVE_STORED_FOR`];
    /// nobody if the store stays down.
    async fn resolve_stored(&self, message: &Message, first: Fault) -> Vec<Connection> {
        let deadline = tokio::time::Instant::now() + RESOLVE_STORED_FOR;
        let mut pause = Duration::from_millis(200);
        let mut last = first;
        while tokio::time::Instant::now() + pause < deadline {
            tokio::time::sleep(pause).await;
            match self
                .resolve(
                    &message.target,
                    &message.exclude,
                    message.visible_to.as_deref(),
                )
                .await
            {
                Ok(targets) => return targets,
                Err(err) => last = err,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        tracing::warn!(
            error = %last.message(),
            "a stored message's recipients could not be listed; it reaches them by recovery"
        );
        Vec::new()
    }

    /// The connections `target` covers, minus `exclude`. A connection target
    /// outside `tenant_filter` resolves to nothing (it is treated as absent).
    pub async fn resolve(
        &self,
        target: &Target,
        exclude: &HashSet<String>,
        tenant_filter: Option<&str>,
    ) -> Result<Vec<Connection>, Fault> {
        let mut targets = match target {
            Target::Connection(id) => match self.registry.get(id).await? {
                Some(connection) if tenant_filter.is_none_or(|t| *connection.tenant_id == *t) => {
                    vec![connection]
                }
                _ => Vec::new(),
            },
            Target::Scope(scope) => collect_all(self.registry.as_ref(), scope).await?,
        };
        if !exclude.is_empty() {
            targets.retain(|c| !exclude.contains(&*c.connection_id));
        }
        Ok(targets)
    }

    /// Sends `frame` to every target and reports the outcome: one span per
    /// broadcast carrying the counts, never one per recipient.
    #[tracing::instrument(
        name = "control.broadcast.fan_out",
        skip_all,
        fields(targeted = targets.len(), delivered, gone, throttled, too_large, failed)
    )]
    pub async fn deliver(&self, targets: Vec<Connection>, frame: Bytes) -> DeliveryReport {
        let mut report = DeliveryReport {
            targeted: u32::try_from(targets.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // A 410 for a connection still inside its `$connect` proves nothing.
        let now = self.clock.now_ms();
        let connecting: HashSet<Arc<str>> = targets
            .iter()
            .filter(|c| {
                !super::gone_for_good(c.connected_at_ms, now, self.fanout.connecting_grace())
            })
            .map(|c| c.connection_id.clone())
            .collect();
        let recipients = targets.into_iter().map(|c| Recipient::of(&c)).collect();
        let sent = self
            .fanout
            .send(recipients, &PreparedFrame::new(frame))
            .await;
        report.delivered = sent.delivered;
        report.gone = u32::try_from(sent.gone.len()).unwrap_or(u32::MAX);
        report.throttled = sent.throttled;
        report.too_large = sent.too_large;
        report.failed = sent.failed;
        let gone = sent.gone;
        let span = tracing::Span::current();
        let m = metrics();
        m.broadcasts.inc();
        for (outcome, count) in [
            ("delivered", report.delivered),
            ("gone", report.gone),
            ("throttled", report.throttled),
            ("too_large", report.too_large),
            ("failed", report.failed),
        ] {
            span.record(outcome, count);
            if count > 0 {
                m.broadcast_recipients
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(u64::from(count));
            }
        }
        for connection_id in gone {
            if connecting.contains(&connection_id) {
                tracing::info!(connection_id = %connection_id, "410 for a connection still connecting; kept");
                continue;
            }
            match self.registry.remove(&connection_id).await {
                Ok(_) => {
                    tracing::info!(connection_id = %connection_id, "removed connection the gateway reports gone")
                }
                Err(err) => {
                    tracing::warn!(connection_id = %connection_id, error = %err, "cannot remove gone connection")
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        clock::Clock,
        config::DeliveryConfig,
        delivery::fake::FakeGateway,
        registry::{Ttl, conformance::sample, memory::MemoryRegistry},
    };

    async fn setup() -> (Arc<MemoryRegistry>, Arc<FakeGateway>, Broadcaster) {
        let registry = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), Clock::new()));
        let gateway = Arc::new(FakeGateway::new());
        for (id, tenant, user) in [
            ("c1", "acme", "alice"),
            ("c2", "acme", "alice"),
            ("c3", "acme", "bob"),
            ("c4", "other", "alice"),
        ] {
            registry
                .insert(sample(id, tenant, user), 0)
                .await
                .expect("insert");
            gateway.open(id);
        }
        let fanout = Arc::new(Fanout::new(gateway.clone(), DeliveryConfig::default()));
        let broadcaster = Broadcaster::new(
            registry.clone(),
            fanout,
            Streams::without_history(),
            Clock::new(),
        );
        (registry, gateway, broadcaster)
    }

    fn to(target: Target) -> Message {
        Message {
            target,
            data: json!({"hello": "world"}),
            topic: Some("news".into()),
            exclude: HashSet::new(),
            visible_to: None,
            once: None,
        }
    }

    #[tokio::test]
    async fn a_user_target_reaches_only_that_users_connections() {
        let (_, gateway, broadcaster) = setup().await;
        let report = broadcaster
            .send(to(Target::Scope(Scope::User {
                tenant_id: "acme".into(),
                user_id: "alice".into(),
            })))
            .await
            .expect("send")
            .report;
        assert_eq!((report.targeted, report.delivered), (2, 2));
        assert_eq!(gateway.received("c3").len(), 0);
        assert_eq!(gateway.received("c4").len(), 0, "another tenant's alice");
        let frame: Value = serde_json::from_str(&gateway.received("c1")[0]).expect("json");
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["topic"], "news");
        assert_eq!(frame["data"], json!({"hello": "world"}));
    }

    #[tokio::test(start_paused = true)]
    async fn exclusions_tenant_filters_and_gone_connections() {
        let (registry, gateway, broadcaster) = setup().await;
        let mut message = to(Target::Scope(Scope::Tenant("acme".into())));
        message.exclude.insert("c2".into());
        gateway.forget("c3");
        let report = broadcaster
            .send(message.clone())
            .await
            .expect("send")
            .report;
        assert_eq!((report.targeted, report.delivered, report.gone), (2, 1, 1));
        assert!(
            registry.get("c3").await.expect("get").is_some(),
            "a 410 within the connecting grace proves nothing: API Gateway answers it while $connect runs"
        );
        tokio::time::advance(
            DeliveryConfig::default().connecting_grace + std::time::Duration::from_secs(1),
        )
        .await;
        let report = broadcaster.send(message).await.expect("send").report;
        assert_eq!((report.targeted, report.delivered, report.gone), (2, 1, 1));
        assert!(
            registry.get("c3").await.expect("get").is_none(),
            "gone is removed"
        );

        let mut foreign = to(Target::Connection("c4".into()));
        foreign.visible_to = Some("acme".into());
        let report = broadcaster.send(foreign).await.expect("send").report;
        assert_eq!(
            report.targeted, 0,
            "another tenant's connection is invisible"
        );
    }
}
