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
        Ok((response.report.unwrap_or_default(), response.position))
    }
}
