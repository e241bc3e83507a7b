//! gRPC clients of the control plane, authenticated with a bearer token.

use std::net::SocketAddr;

use streamer_proto::{
    auth::BearerToken,
    v1::{
        self, admin_service_client::AdminServiceClient,
        broadcast_service_client::BroadcastServiceClient,
        connection_service_client::ConnectionServiceClient, edge_service_client::EdgeServiceClient,
        group_service_client::GroupServiceClient, request_service_client::RequestServiceClient,
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
