//! gRPC clients of the control plane, authenticated with a bearer token.

use std::net::SocketAddr;

use streamer_proto::{
    auth::BearerToken,
    v1::{
        self, admin_service_client::AdminServiceClient,
        broadcast_service_client::BroadcastServiceClient,
        connection_service_client::ConnectionServiceClient, edge_service_client::EdgeServiceClient,
        group_service_client::GroupServiceClient, history_service_client::HistoryServiceClient,
        request_service_client::RequestServiceClient,
    },
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// A lazily connected channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

/// A channel with a bearer token.
pub type Authed = InterceptedService<Channel, BearerToken>;

fn bearer(token: &str) -> BearerToken {
    BearerToken::new(token).expect("token")
}

/// `ConnectionService`.
pub fn connections(channel: Channel, token: &str) -> ConnectionServiceClient<Authed> {
    ConnectionServiceClient::with_interceptor(channel, bearer(token))
}

/// `BroadcastService`.
pub fn broadcast(channel: Channel, token: &str) -> BroadcastServiceClient<Authed> {
    BroadcastServiceClient::with_interceptor(channel, bearer(token))
}

/// `EdgeService`.
pub fn edge(channel: Channel, token: &str) -> EdgeServiceClient<Authed> {
    EdgeServiceClient::with_interceptor(channel, bearer(token))
}

/// `GroupService`.
pub fn groups(channel: Channel, token: &str) -> GroupServiceClient<Authed> {
    GroupServiceClient::with_interceptor(channel, bearer(token))
}

/// `RequestService`.
pub fn requests(channel: Channel, token: &str) -> RequestServiceClient<Authed> {
    RequestServiceClient::with_interceptor(channel, bearer(token))
}

/// `HistoryService`.
pub fn history(channel: Channel, token: &str) -> HistoryServiceClient<Authed> {
    HistoryServiceClient::with_interceptor(channel, bearer(token))
}

/// `AdminService`.
pub fn admin(channel: Channel, token: &str) -> AdminServiceClient<Authed> {
    AdminServiceClient::with_interceptor(channel, bearer(token))
}

/// A Send of `data` (as JSON text) to every connection of `tenant`.
pub fn tenant_target(tenant: &str, data: serde_json::Value) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::TenantId(tenant.into())),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        ..Default::default()
    }
}

/// A Send of `data` (as JSON text) to every member of `group` in `tenant`.
pub fn group_target(tenant: &str, group: &str, data: &serde_json::Value) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::Group(v1::GroupTarget {
            tenant_id: tenant.into(),
            group: group.into(),
        })),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        ..Default::default()
    }
}

/// The report inside the answer of a call that must succeed:
/// `broadcast.send(r).await.reported()`.
pub trait Reported {
    /// What the call reports.
    type Report;
    /// The report; panics on an error status or a missing report.
    fn reported(self) -> Self::Report;
}

impl Reported for Result<tonic::Response<v1::SendResponse>, tonic::Status> {
    type Report = v1::DeliveryReport;
    fn reported(self) -> v1::DeliveryReport {
        self.expect("send")
            .into_inner()
            .report
            .expect("a delivery report")
    }
}

impl Reported for Result<tonic::Response<v1::RunReconcileResponse>, tonic::Status> {
    type Report = v1::ReconcileReport;
    fn reported(self) -> v1::ReconcileReport {
        self.expect("reconcile")
            .into_inner()
            .report
            .expect("a reconcile report")
    }
}

/// A codec that sends and receives raw message bytes, for feeding the
/// server what no generated client would send.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// The encoder and decoder of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Calls unary `path` (`/streamer.v1.BroadcastService/Send`) with `body` as
/// the message bytes, authenticated with `token`.
pub async fn raw_unary(
    channel: Channel,
    token: &str,
    path: &'static str,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Waits (with the deadline) until a processor serving `action` is
/// connected to the control plane at `channel`.
pub async fn processor_serving(channel: Channel, token: &str, action: &str) {
    let client = requests(channel, token);
    crate::eventually(&format!("a processor serving {action}"), || {
        let mut client = client.clone();
        async move {
            client
                .list_processors(v1::ListProcessorsRequest::default())
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .processors
                        .iter()
                        .any(|p| p.actions.iter().any(|a| a == action))
                })
        }
    })
    .await;
}
