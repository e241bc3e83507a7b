//! Building a broadcast: a target, a topic, exclusions, then the data.

use serde::Serialize;
use streamer_proto::v1;

use crate::{Client, DeliveryReport, Error, StreamPosition};

/// A broadcast being built.
#[derive(Debug)]
pub struct Send<'a> {
    pub(crate) client: &'a Client,
    pub(crate) request: v1::SendRequest,
}

impl Send<'_> {
    /// Every member of a group.
    pub fn to_group(mut self, tenant_id: &str, group: &str) -> Self {
        self.request.target = Some(v1::send_request::Target::Group(v1::GroupTarget {
            tenant_id: tenant_id.to_owned(),
            group: group.to_owned(),
        }));
        self
    }

    /// Every connection of `tenant_id`.
    pub fn to_tenant(mut self, tenant_id: &str) -> Self {
        self.request.target = Some(v1::send_request::Target::TenantId(tenant_id.to_owned()));
        self
    }

    /// Every connection of one user of a tenant.
    pub fn to_user(mut self, tenant_id: &str, user_id: &str) -> Self {
        self.request.target = Some(v1::send_request::Target::User(v1::UserTarget {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
        }));
        self
    }

    /// One connection.
    pub fn to_connection(mut self, connection_id: &str) -> Self {
        self.request.target = Some(v1::send_request::Target::ConnectionId(
            connection_id.to_owned(),
        ));
        self
    }

    /// A topic for the frame.
    pub fn topic(mut self, topic: &str) -> Self {
        self.request.topic = topic.to_owned();
        self
    }

    /// Connections that must not receive the message.
    pub fn exclude<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        connection_ids: I,
    ) -> Self {
        self.request
            .exclude_connection_ids
            .extend(connection_ids.into_iter().map(Into::into));
        self
    }

    /// An idempotency key (1-128 printable ASCII): a retry with the same
    /// key and the same message within the server's window (300 s by
    /// default) answers the first send's report and delivers nothing again
    /// ([`Sent::replayed`]). Use one key per logical message, e.g. the
    /// event id, and keep it across retries.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.request.idempotency_key = key.to_owned();
        self
    }

    /// Sends `data` and returns the whole answer: the report, the position
    /// and whether it was a replay of an earlier send under the same key.
    pub async fn json_sent<T: Serialize + ?Sized>(self, data: &T) -> Result<Sent, Error> {
        let mut request = self.request;
        request.payload = Some(v1::send_request::Payload::DataJson(serde_json::to_string(
            data,
        )?));
        let response = self
            .client
            .broadcast
            .clone()
            .send(request)
            .await?
            .into_inner();
        Ok(Sent {
            report: response.report.unwrap_or_default(),
            position: response.position,
            replayed: response.replayed,
        })
    }

    /// Sends `data` (serialised as JSON) and returns the delivery report.
    pub async fn json<T: Serialize + ?Sized>(self, data: &T) -> Result<DeliveryReport, Error> {
        Ok(self.json_positioned(data).await?.0)
    }

    /// Sends `data` and returns the delivery report with the message's
    /// position in its stream (when the stream keeps history).
    pub async fn json_positioned<T: Serialize + ?Sized>(
        self,
        data: &T,
    ) -> Result<(DeliveryReport, Option<StreamPosition>), Error> {
        let sent = self.json_sent(data).await?;
        Ok((sent.report, sent.position))
    }
}

/// What a send answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// What happened to each targeted connection (the first send's, for a
    /// replay).
    pub report: DeliveryReport,
    /// Where the message sits in its stream, when it keeps history.
    pub position: Option<StreamPosition>,
    /// An earlier send under the same idempotency key answered this one:
    /// nothing was delivered this time.
    pub replayed: bool,
}
