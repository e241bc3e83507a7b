//! `streamer-client`: a typed Rust client for the Streamer server API, for
//! internal services that broadcast to WebSocket clients and query who is
//! connected; the processor SDK ([`processor`]); and a WebSocket client of
//! the client protocol ([`socket`]), chunking messages past the gateway's
//! limits both ways.
//!
//! ```no_run
//! # async fn demo() -> Result<(), streamer_client::Error> {
//! use streamer_client::Client;
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?.with_token("my-service-token")?;
//! let report = client.send().to_tenant("acme").topic("news").json(&serde_json::json!({"hello": "world"})).await?;
//! println!("delivered to {} of {}", report.delivered, report.targeted);
//! let online = client.count_connections("acme", None).await?;
//! # let _ = online;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod processor;
mod send;
pub mod socket;
pub mod token;

pub use send::{Send, Sent};
pub use streamer_proto::tls::ClientTls;

use std::future::Future;

use futures_util::{Stream, TryStreamExt, stream};
use streamer_proto::{
    auth::BearerToken,
    v1::{
        self, broadcast_service_client::BroadcastServiceClient,
        connection_service_client::ConnectionServiceClient,
        group_service_client::GroupServiceClient, history_service_client::HistoryServiceClient,
        request_service_client::RequestServiceClient,
    },
};
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// The settings a TLS error names (`streamerctl`'s flags and variables).
pub const TLS_SETTINGS: (&str, &str, &str) = (
    "--ca / STREAMER_CA",
    "--cert / STREAMER_CLIENT_CERT",
    "--key / STREAMER_CLIENT_KEY",
);

/// The endpoint for `addr` (`host:port` is `http://`), over TLS for
/// `https://`; TLS settings with a plaintext address are an error, never a
/// silent plaintext call.
pub(crate) fn endpoint(addr: &str, tls: &ClientTls) -> Result<Endpoint, Error> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    if Endpoint::from_shared(uri.clone()).is_err() {
        return Err(Error::Address(addr.to_owned()));
    }
    streamer_proto::tls::endpoint(&uri, tls, TLS_SETTINGS).map_err(|e| Error::Tls(e.0))
}

pub use streamer_proto::v1::{
    Connection, DeliveryReport, HistoryMessage, ReadHistoryResponse, Request as RequestInfo,
    RequestStatus, StreamPosition,
};

/// Everything a call can fail with; server errors keep their gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a URI.
    #[error("invalid address {0:?}")]
    Address(String),
    /// The control plane could not be reached.
    #[error("cannot reach the control plane: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The token cannot be sent as metadata.
    #[error("the token is not valid header text")]
    Token,
    /// The TLS settings cannot be used (the message names the setting).
    #[error("{0}")]
    Tls(String),
    /// The server answered with an error.
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The payload could not be serialised as JSON.
    #[error("payload is not serialisable as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The gRPC code of a server error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Adds the bearer token, when there is one.
#[derive(Debug, Clone, Default)]
pub struct Auth(Option<BearerToken>);

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

type Authed = InterceptedService<Channel, Auth>;

/// A connection to the control plane's server API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    connections: ConnectionServiceClient<Authed>,
    broadcast: BroadcastServiceClient<Authed>,
    groups: GroupServiceClient<Authed>,
    requests: RequestServiceClient<Authed>,
    history: HistoryServiceClient<Authed>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    channel: Channel,
}

impl Client {
    /// Connects to `addr` (`http://host:port`, `https://host:port` trusting
    /// the platform's roots, or `host:port`).
    pub async fn connect(addr: &str) -> Result<Self, Error> {
        Self::connect_with(addr, &ClientTls::default()).await
    }

    /// Connects to `addr`; an `https://` address over TLS as `tls` says
    /// (the CA to trust, a client certificate for mutual TLS).
    pub async fn connect_with(addr: &str, tls: &ClientTls) -> Result<Self, Error> {
        let channel = endpoint(addr, tls)?
            .connect()
            .await
            .map_err(Error::Connect)?;
        Ok(Self::from_channel(channel, Auth::default()))
    }

    fn from_channel(channel: Channel, auth: Auth) -> Self {
        Self {
            connections: ConnectionServiceClient::with_interceptor(channel.clone(), auth.clone()),
            broadcast: BroadcastServiceClient::with_interceptor(channel.clone(), auth.clone()),
            groups: GroupServiceClient::with_interceptor(channel.clone(), auth.clone()),
            requests: RequestServiceClient::with_interceptor(channel.clone(), auth.clone()),
            history: HistoryServiceClient::with_interceptor(channel.clone(), auth),
            health: tonic_health::pb::health_client::HealthClient::new(channel.clone()),
            channel,
        }
    }

    /// The same connection, authenticating every call with `token`.
    pub fn with_token(self, token: &str) -> Result<Self, Error> {
        let auth = Auth(Some(BearerToken::new(token).map_err(|_| Error::Token)?));
        Ok(Self::from_channel(self.channel, auth))
    }

    /// Starts a broadcast; pick a target, then send with [`Send::json`].
    pub fn send(&self) -> Send<'_> {
        Send {
            client: self,
            request: v1::SendRequest::default(),
        }
    }

    /// One connection by id.
    pub async fn connection(&self, connection_id: &str) -> Result<Connection, Error> {
        let request = v1::GetConnectionRequest {
            connection_id: connection_id.to_owned(),
        };
        let response = self
            .connections
            .clone()
            .get_connection(request)
            .await?
            .into_inner();
        response.connection.ok_or_else(|| Error::Status {
            code: tonic::Code::Internal,
            message: "server sent no connection".into(),
        })
    }

    /// How many connections a tenant (or one of its users) has.
    pub async fn count_connections(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
    ) -> Result<u64, Error> {
        let request = v1::CountConnectionsRequest {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.unwrap_or_default().to_owned(),
        };
        Ok(self
            .connections
            .clone()
            .count_connections(request)
            .await?
            .into_inner()
            .count)
    }

    /// The tenants with connections and how many each has (a tenant-bound
    /// token: its own).
    pub async fn tenants(&self) -> Result<Vec<(String, u64)>, Error> {
        let response = self
            .connections
            .clone()
            .list_tenants(v1::ListTenantsRequest {})
            .await?
            .into_inner();
        Ok(response
            .tenants
            .into_iter()
            .map(|t| (t.tenant_id, t.connections))
            .collect())
    }

    /// A tenant's groups with their member counts, and whether the server
    /// stopped walking the tenant's connections before the end.
    pub async fn groups(&self, tenant_id: &str) -> Result<(Vec<(String, u64)>, bool), Error> {
        let response = self
            .groups
            .clone()
            .list_groups(v1::ListGroupsRequest {
                tenant_id: tenant_id.to_owned(),
            })
            .await?
            .into_inner();
        let groups = response
            .groups
            .into_iter()
            .map(|g| (g.group, g.members))
            .collect();
        Ok((groups, response.truncated))
    }

    /// Every connection of a tenant (or one of its users), fetched page by
    /// page as the stream is consumed.
    pub fn list_connections(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
    ) -> impl Stream<Item = Result<Connection, Error>> + use<> {
        let client = self.connections.clone();
        let first = v1::ListConnectionsRequest {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.unwrap_or_default().to_owned(),
            page_size: 500,
            page_token: String::new(),
        };
        paged(
            first,
            move |request| {
                let mut client = client.clone();
                async move {
                    let page = client.list_connections(request).await?.into_inner();
                    Ok((page.connections, page.next_page_token))
                }
            },
            |request, token| request.page_token = token,
        )
    }

    /// Whether the control plane reports itself serving.
    pub async fn health(&self) -> Result<bool, Error> {
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let status = self
            .health
            .clone()
            .check(request)
            .await?
            .into_inner()
            .status;
        Ok(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    }

    /// One long-running request.
    pub async fn request(&self, tenant_id: &str, request_id: &str) -> Result<RequestInfo, Error> {
        let request = v1::GetRequestRequest {
            tenant_id: tenant_id.to_owned(),
            request_id: request_id.to_owned(),
        };
        self.requests
            .clone()
            .get_request(request)
            .await?
            .into_inner()
            .request
            .ok_or_else(|| Error::Status {
                code: tonic::Code::Internal,
                message: "server sent no request".into(),
            })
    }

    /// A tenant's long-running requests (of one status, if given), page by page.
    pub fn list_requests(
        &self,
        tenant_id: &str,
        status: Option<RequestStatus>,
    ) -> impl Stream<Item = Result<RequestInfo, Error>> + use<> {
        let client = self.requests.clone();
        let first = v1::ListRequestsRequest {
            tenant_id: tenant_id.to_owned(),
            status: status.unwrap_or(RequestStatus::Unspecified) as i32,
            page_size: 500,
            page_token: String::new(),
        };
        paged(
            first,
            move |request| {
                let mut client = client.clone();
                async move {
                    let page = client.list_requests(request).await?.into_inner();
                    Ok((page.requests, page.next_page_token))
                }
            },
            |request, token| request.page_token = token,
        )
    }

    /// Cancels a queued or running request.
    pub async fn cancel_request(
        &self,
        tenant_id: &str,
        request_id: &str,
    ) -> Result<RequestInfo, Error> {
        let request = v1::CancelRequestRequest {
            tenant_id: tenant_id.to_owned(),
            request_id: request_id.to_owned(),
        };
        self.requests
            .clone()
            .cancel_request(request)
            .await?
            .into_inner()
            .request
            .ok_or_else(|| Error::Status {
                code: tonic::Code::Internal,
                message: "server sent no request".into(),
            })
    }

    /// Adds a connection (or every connection of a user) to a group;
    /// returns how many joined.
    pub async fn group_add(
        &self,
        tenant_id: &str,
        group: &str,
        member: Member<'_>,
    ) -> Result<u32, Error> {
        let request = v1::AddToGroupRequest {
            tenant_id: tenant_id.to_owned(),
            group: group.to_owned(),
            member: Some(match member {
                Member::Connection(id) => {
                    v1::add_to_group_request::Member::ConnectionId(id.to_owned())
                }
                Member::User(id) => v1::add_to_group_request::Member::UserId(id.to_owned()),
            }),
        };
        Ok(self
            .groups
            .clone()
            .add_to_group(request)
            .await?
            .into_inner()
            .added)
    }

    /// Removes a connection (or every connection of a user) from a group;
    /// returns how many left.
    pub async fn group_remove(
        &self,
        tenant_id: &str,
        group: &str,
        member: Member<'_>,
    ) -> Result<u32, Error> {
        let request = v1::RemoveFromGroupRequest {
            tenant_id: tenant_id.to_owned(),
            group: group.to_owned(),
            member: Some(match member {
                Member::Connection(id) => {
                    v1::remove_from_group_request::Member::ConnectionId(id.to_owned())
                }
                Member::User(id) => v1::remove_from_group_request::Member::UserId(id.to_owned()),
            }),
        };
        Ok(self
            .groups
            .clone()
            .remove_from_group(request)
            .await?
            .into_inner()
            .removed)
    }

    /// How many members a group has.
    pub async fn group_count(&self, tenant_id: &str, group: &str) -> Result<u64, Error> {
        let request = v1::CountGroupMembersRequest {
            tenant_id: tenant_id.to_owned(),
            group: group.to_owned(),
        };
        Ok(self
            .groups
            .clone()
            .count_group_members(request)
            .await?
            .into_inner()
            .count)
    }

    /// A group's members, page by page.
    pub fn group_members(
        &self,
        tenant_id: &str,
        group: &str,
    ) -> impl Stream<Item = Result<Connection, Error>> + use<> {
        let client = self.groups.clone();
        let first = v1::ListGroupMembersRequest {
            tenant_id: tenant_id.to_owned(),
            group: group.to_owned(),
            page_size: 500,
            page_token: String::new(),
        };
        paged(
            first,
            move |request| {
                let mut client = client.clone();
                async move {
                    let page = client.list_group_members(request).await?.into_inner();
                    Ok((page.connections, page.next_page_token))
                }
            },
            |request, token| request.page_token = token,
        )
    }

    /// A stream's latest offset and epoch (`stream`: `tenant`,
    /// `user:<id>` or `group:<name>`; it must keep history).
    pub async fn stream_position(
        &self,
        tenant_id: &str,
        stream: &str,
    ) -> Result<StreamPosition, Error> {
        let request = v1::GetStreamPositionRequest {
            tenant_id: tenant_id.to_owned(),
            stream: stream.to_owned(),
        };
        Ok(self
            .history
            .clone()
            .get_stream_position(request)
            .await?
            .into_inner()
            .position
            .unwrap_or_default())
    }

    /// One page of a stream's history: up to `limit` retained messages after
    /// `since` (0: from the oldest), whether nothing after `since` was lost,
    /// and where the next page starts.
    pub async fn read_history(
        &self,
        tenant_id: &str,
        stream: &str,
        since: u64,
        limit: u32,
    ) -> Result<ReadHistoryResponse, Error> {
        let request = v1::ReadHistoryRequest {
            tenant_id: tenant_id.to_owned(),
            stream: stream.to_owned(),
            since,
            limit,
        };
        Ok(self
            .history
            .clone()
            .read_history(request)
            .await?
            .into_inner())
    }

    /// Every retained message of a stream after `since`, page by page.
    pub fn history(
        &self,
        tenant_id: &str,
        stream: &str,
        since: u64,
    ) -> impl Stream<Item = Result<HistoryMessage, Error>> + use<> {
        let client = self.clone();
        let (tenant_id, stream) = (tenant_id.to_owned(), stream.to_owned());
        let pages = stream::try_unfold(Some(since), move |next| {
            let (client, tenant_id, stream) = (client.clone(), tenant_id.clone(), stream.clone());
            async move {
                let Some(since) = next else {
                    return Ok(None);
                };
                let page = client
                    .read_history(&tenant_id, &stream, since, 1000)
                    .await?;
                let next = (page.next_since != 0).then_some(page.next_since);
                Ok::<_, Error>(Some((
                    stream::iter(page.messages.into_iter().map(Ok)),
                    next,
                )))
            }
        });
        pages.try_flatten()
    }

    /// Closes a connection at the gateway and forgets it; `false` when the
    /// gateway had already dropped it.
    pub async fn disconnect(&self, connection_id: &str) -> Result<bool, Error> {
        let request = v1::DisconnectConnectionRequest {
            connection_id: connection_id.to_owned(),
        };
        Ok(self
            .connections
            .clone()
            .disconnect_connection(request)
            .await?
            .into_inner()
            .closed)
    }
}

/// Who a group change is for.
#[derive(Debug, Clone, Copy)]
pub enum Member<'a> {
    /// One connection.
    Connection(&'a str),
    /// Every connection of a user.
    User(&'a str),
}

/// Pages through a list RPC lazily: `fetch` returns a page and the next
/// token; `set_token` puts the token into the next request.
fn paged<Req, Item, F, Fut>(
    first: Req,
    fetch: F,
    set_token: fn(&mut Req, String),
) -> impl Stream<Item = Result<Item, Error>>
where
    Req: Clone,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Result<(Vec<Item>, String), Error>>,
{
    struct State<Req, Item> {
        request: Req,
        buffer: std::vec::IntoIter<Item>,
        done: bool,
    }
    let state = State {
        request: first,
        buffer: Vec::new().into_iter(),
        done: false,
    };
    stream::try_unfold((state, fetch), move |(mut state, fetch)| async move {
        loop {
            if let Some(item) = state.buffer.next() {
                return Ok(Some((item, (state, fetch))));
            }
            if state.done {
                return Ok(None);
            }
            let (items, next) = fetch(state.request.clone()).await?;
            state.done = next.is_empty();
            set_token(&mut state.request, next);
            state.buffer = items.into_iter();
        }
    })
}
