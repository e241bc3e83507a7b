//! The tonic service implementations: decode, call the domain, map errors.

use std::{collections::HashSet, sync::Arc};

use streamer_proto::{
    client, ids,
    v1::{
        self, admin_service_server::AdminService, broadcast_service_server::BroadcastService,
        connection_service_server::ConnectionService, edge_service_server::EdgeService,
        group_service_server::GroupService,
    },
};
use tonic::{Request, Response, Status};

use crate::{
    broadcast::{Broadcaster, DeliveryReport, Target},
    control::{ConnectInput, ControlPlane},
    error::ApiError,
    grpc_auth::Caller,
    pagetoken::PageTokens,
    presence::Event,
    reconcile::{ReconcileReport, Reconciler},
    registry::{Connection, Scope, collect_all},
};

/// Default and largest page sizes of list RPCs.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// The edge protocol.
#[derive(Debug, Clone)]
pub struct EdgeApi {
    control: Arc<ControlPlane>,
}

impl EdgeApi {
    /// Serves the edge protocol with `control`.
    pub fn new(control: Arc<ControlPlane>) -> Self {
        Self { control }
    }
}

#[tonic::async_trait]
impl EdgeService for EdgeApi {
    async fn connect(
        &self,
        request: Request<v1::ConnectRequest>,
    ) -> Result<Response<v1::ConnectResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("connection_id", r.connection_id.as_str());
        let decision = self
            .control
            .connect(ConnectInput {
                connection_id: r.connection_id,
                endpoint: r.endpoint,
                query: r.query,
                headers: r.headers,
                source_ip: r.source_ip,
                user_agent: r.user_agent,
            })
            .await;
        Ok(Response::new(v1::ConnectResponse {
            accepted: decision.accepted(),
            status_code: u32::from(decision.status),
            body: decision.body,
            headers: decision.headers,
        }))
    }

    async fn disconnect(
        &self,
        request: Request<v1::DisconnectRequest>,
    ) -> Result<Response<v1::DisconnectResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("connection_id", r.connection_id.as_str());
        let removed = self
            .control
            .disconnect(&r.connection_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::DisconnectResponse { removed }))
    }

    async fn route(
        &self,
        request: Request<v1::RouteRequest>,
    ) -> Result<Response<v1::RouteResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("connection_id", r.connection_id.as_str());
        let reply = self
            .control
            .route(&r.connection_id, &r.body, r.is_base64_encoded)
            .await;
        Ok(Response::new(v1::RouteResponse { reply }))
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn to_proto(c: &Connection) -> v1::Connection {
    v1::Connection {
        connection_id: c.connection_id.to_string(),
        tenant_id: c.tenant_id.to_string(),
        user_id: c.user_id.to_string(),
        endpoint: c.endpoint.to_string(),
        connected_at: Some(timestamp(c.connected_at_ms)),
        last_seen: Some(timestamp(c.last_seen_ms)),
        permissions: c.permissions.iter().map(|p| p.to_string()).collect(),
        source_ip: c.source_ip.to_string(),
        user_agent: c.user_agent.to_string(),
    }
}

fn scope(tenant_id: &str, user_id: &str) -> Result<Scope, ApiError> {
    if !ids::valid_tenant_id(tenant_id) {
        return Err(ApiError::InvalidArgument(
            "tenant_id is required: [A-Za-z0-9._:-], 1 to 128 chars".into(),
        ));
    }
    if user_id.is_empty() {
        return Ok(Scope::Tenant(tenant_id.to_owned()));
    }
    if !ids::valid_user_id(user_id) {
        return Err(ApiError::InvalidArgument("invalid user_id".into()));
    }
    Ok(Scope::User {
        tenant_id: tenant_id.to_owned(),
        user_id: user_id.to_owned(),
    })
}

fn group_scope(tenant_id: &str, group: &str) -> Result<Scope, ApiError> {
    let Scope::Tenant(tenant_id) = scope(tenant_id, "")? else {
        unreachable!("an empty user id gives a tenant scope")
    };
    if !ids::valid_group(group) {
        return Err(ApiError::InvalidArgument(
            "group is required: [A-Za-z0-9._:-], 1 to 128 chars".into(),
        ));
    }
    Ok(Scope::Group {
        tenant_id,
        group: group.to_owned(),
    })
}

/// A list RPC's page size: 0 means the default, larger values are capped.
pub(crate) fn page_size(requested: i32) -> Result<usize, ApiError> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err(ApiError::InvalidArgument(
            "page_size must not be negative".into(),
        )),
    }
}

/// One page of `scope` for a list RPC: resumes after `page_token` (which
/// must have been minted for this very scope) and mints the next one.
async fn page_of(
    registry: &dyn crate::registry::Registry,
    tokens: &PageTokens,
    scope: &Scope,
    page_token: &str,
    requested_size: i32,
) -> Result<(Vec<v1::Connection>, String), ApiError> {
    let size = page_size(requested_size)?;
    let key = scope_key(scope);
    let after = match page_token {
        "" => None,
        token => Some(tokens.decode(&key, token)?),
    };
    let page = registry.list(scope, after.as_deref(), size).await?;
    let next = page
        .next_after
        .map(|after| tokens.encode(&key, &after))
        .unwrap_or_default();
    Ok((page.items.iter().map(to_proto).collect(), next))
}

/// A connection the caller may see, or NOT_FOUND (a tenant-bound caller
/// cannot learn whether another tenant's connection exists).
async fn visible(
    registry: &dyn crate::registry::Registry,
    caller: &Caller,
    connection_id: &str,
) -> Result<Connection, ApiError> {
    if !ids::valid_connection_id(connection_id) {
        return Err(ApiError::InvalidArgument("invalid connection_id".into()));
    }
    match registry.get(connection_id).await? {
        Some(c) if caller.tenant_filter().is_none_or(|t| *c.tenant_id == *t) => Ok(c),
        _ => Err(ApiError::NotFound("connection")),
    }
}

fn scope_key(scope: &Scope) -> String {
    match scope {
        Scope::Tenant(t) => format!("tenant\0{t}"),
        Scope::User { tenant_id, user_id } => format!("user\0{tenant_id}\0{user_id}"),
        Scope::Group { tenant_id, group } => format!("group\0{tenant_id}\0{group}"),
    }
}

/// Connection queries.
#[derive(Debug, Clone)]
pub struct ConnectionApi {
    control: Arc<ControlPlane>,
    broadcaster: Arc<Broadcaster>,
    page_tokens: PageTokens,
}

impl ConnectionApi {
    /// Serves connection queries.
    pub fn new(
        control: Arc<ControlPlane>,
        broadcaster: Arc<Broadcaster>,
        page_tokens: PageTokens,
    ) -> Self {
        Self {
            control,
            broadcaster,
            page_tokens,
        }
    }

    async fn visible(&self, caller: &Caller, connection_id: &str) -> Result<Connection, ApiError> {
        visible(self.control.registry().as_ref(), caller, connection_id).await
    }
}

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn get_connection(
        &self,
        request: Request<v1::GetConnectionRequest>,
    ) -> Result<Response<v1::GetConnectionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let connection = self
            .visible(caller, &request.get_ref().connection_id)
            .await?;
        Ok(Response::new(v1::GetConnectionResponse {
            connection: Some(to_proto(&connection)),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<v1::ListConnectionsRequest>,
    ) -> Result<Response<v1::ListConnectionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = scope(&r.tenant_id, &r.user_id)?;
        caller.check_tenant(scope.tenant_id())?;
        let (connections, next_page_token) = page_of(
            self.control.registry().as_ref(),
            &self.page_tokens,
            &scope,
            &r.page_token,
            r.page_size,
        )
        .await?;
        Ok(Response::new(v1::ListConnectionsResponse {
            connections,
            next_page_token,
        }))
    }

    async fn count_connections(
        &self,
        request: Request<v1::CountConnectionsRequest>,
    ) -> Result<Response<v1::CountConnectionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = scope(&r.tenant_id, &r.user_id)?;
        caller.check_tenant(scope.tenant_id())?;
        let count = self
            .control
            .registry()
            .count(&scope)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::CountConnectionsResponse { count }))
    }

    async fn disconnect_connection(
        &self,
        request: Request<v1::DisconnectConnectionRequest>,
    ) -> Result<Response<v1::DisconnectConnectionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let connection = self
            .visible(caller, &request.get_ref().connection_id)
            .await?;
        let closed = self
            .broadcaster
            .api()
            .delete(&connection.endpoint, &connection.connection_id)
            .await
            .map_err(|err| {
                ApiError::Unavailable(format!("gateway did not close the connection: {err}"))
            })?;
        self.control
            .registry()
            .remove(&connection.connection_id)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(connection_id = %connection.connection_id, closed, "disconnected by the server api");
        Ok(Response::new(v1::DisconnectConnectionResponse { closed }))
    }
}

/// Broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastApi {
    broadcaster: Arc<Broadcaster>,
}

impl BroadcastApi {
    /// Serves broadcast.
    pub fn new(broadcaster: Arc<Broadcaster>) -> Self {
        Self { broadcaster }
    }
}

/// A protobuf `Value` as JSON.
pub fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(list)) => list.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
    }
}

fn report(r: DeliveryReport) -> v1::DeliveryReport {
    v1::DeliveryReport {
        targeted: r.targeted,
        delivered: r.delivered,
        gone: r.gone,
        throttled: r.throttled,
        too_large: r.too_large,
        failed: r.failed,
    }
}

#[tonic::async_trait]
impl BroadcastService for BroadcastApi {
    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let target = match r.target {
            Some(v1::send_request::Target::ConnectionId(id)) => {
                if !ids::valid_connection_id(&id) {
                    return Err(ApiError::InvalidArgument("invalid connection_id".into()).into());
                }
                Target::Connection(id)
            }
            Some(v1::send_request::Target::User(user)) => {
                Target::Scope(scope(&user.tenant_id, &user.user_id)?)
            }
            Some(v1::send_request::Target::TenantId(tenant)) => Target::Scope(scope(&tenant, "")?),
            Some(v1::send_request::Target::Group(group)) => {
                Target::Scope(group_scope(&group.tenant_id, &group.group)?)
            }
            None => return Err(ApiError::InvalidArgument("a target is required".into()).into()),
        };
        if let Target::Scope(scope) = &target {
            if matches!(scope, Scope::User { user_id, .. } if user_id.is_empty()) {
                return Err(ApiError::InvalidArgument("user target needs user_id".into()).into());
            }
            caller.check_tenant(scope.tenant_id())?;
        }
        let data = match r.payload {
            Some(v1::send_request::Payload::Data(value)) => value_to_json(value),
            Some(v1::send_request::Payload::DataJson(text)) => serde_json::from_str(&text)
                .map_err(|_| ApiError::InvalidArgument("data_json is not valid JSON".into()))?,
            None => {
                return Err(
                    ApiError::InvalidArgument("data or data_json is required".into()).into(),
                );
            }
        };
        let topic = (!r.topic.is_empty()).then_some(r.topic.as_str());
        let frame = client::message_frame(&data, topic);
        let exclude: HashSet<String> = r.exclude_connection_ids.into_iter().collect();
        let targets = self
            .broadcaster
            .resolve(&target, &exclude, caller.tenant_filter())
            .await?;
        let result = self.broadcaster.deliver(targets, &frame).await;
        tracing::info!(
            targeted = result.targeted,
            delivered = result.delivered,
            gone = result.gone,
            throttled = result.throttled,
            too_large = result.too_large,
            failed = result.failed,
            "broadcast"
        );
        Ok(Response::new(v1::SendResponse {
            report: Some(report(result)),
        }))
    }
}

/// Operator-only maintenance.
#[derive(Debug, Clone)]
pub struct AdminApi {
    reconciler: Arc<Reconciler>,
    interval: std::time::Duration,
    idle_threshold: std::time::Duration,
}

impl AdminApi {
    /// Serves the admin API.
    pub fn new(
        reconciler: Arc<Reconciler>,
        interval: std::time::Duration,
        idle_threshold: std::time::Duration,
    ) -> Self {
        Self {
            reconciler,
            interval,
            idle_threshold,
        }
    }
}

fn reconcile_report(r: ReconcileReport) -> v1::ReconcileReport {
    v1::ReconcileReport {
        checked: r.checked,
        removed: r.removed,
        alive: r.alive,
        errors: r.errors,
        started_at: Some(timestamp(r.started_at_ms)),
        duration_ms: r.duration_ms,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn run_reconcile(
        &self,
        _request: Request<v1::RunReconcileRequest>,
    ) -> Result<Response<v1::RunReconcileResponse>, Status> {
        let report = self.reconciler.run_once().await.map_err(ApiError::from)?;
        Ok(Response::new(v1::RunReconcileResponse {
            report: Some(reconcile_report(report)),
        }))
    }

    async fn get_reconcile_status(
        &self,
        _request: Request<v1::GetReconcileStatusRequest>,
    ) -> Result<Response<v1::GetReconcileStatusResponse>, Status> {
        Ok(Response::new(v1::GetReconcileStatusResponse {
            last_run: self.reconciler.last().await.map(reconcile_report),
            interval_secs: self.interval.as_secs(),
            idle_threshold_secs: self.idle_threshold.as_secs(),
        }))
    }
}

/// Group membership from the server side.
#[derive(Debug, Clone)]
pub struct GroupApi {
    control: Arc<ControlPlane>,
    page_tokens: PageTokens,
}

impl GroupApi {
    /// Serves the group API.
    pub fn new(control: Arc<ControlPlane>, page_tokens: PageTokens) -> Self {
        Self {
            control,
            page_tokens,
        }
    }

    /// The connections a membership change applies to: one connection of
    /// the tenant, or every connection of a user in it.
    async fn members(
        &self,
        tenant_id: &str,
        member: Option<MemberRef>,
    ) -> Result<Vec<Connection>, ApiError> {
        match member {
            Some(MemberRef::Connection(id)) => {
                if !ids::valid_connection_id(&id) {
                    return Err(ApiError::InvalidArgument("invalid connection_id".into()));
                }
                match self.control.registry().get(&id).await? {
                    Some(c) if *c.tenant_id == *tenant_id => Ok(vec![c]),
                    _ => Err(ApiError::NotFound("connection")),
                }
            }
            Some(MemberRef::User(user)) => {
                let scope = scope(tenant_id, &user)?;
                if user.is_empty() {
                    return Err(ApiError::InvalidArgument("user_id is empty".into()));
                }
                Ok(collect_all(self.control.registry().as_ref(), &scope).await?)
            }
            None => Err(ApiError::InvalidArgument(
                "connection_id or user_id is required".into(),
            )),
        }
    }
}

/// Who a membership change is for.
enum MemberRef {
    Connection(String),
    User(String),
}

impl From<v1::add_to_group_request::Member> for MemberRef {
    fn from(m: v1::add_to_group_request::Member) -> Self {
        match m {
            v1::add_to_group_request::Member::ConnectionId(id) => MemberRef::Connection(id),
            v1::add_to_group_request::Member::UserId(user) => MemberRef::User(user),
        }
    }
}

impl From<v1::remove_from_group_request::Member> for MemberRef {
    fn from(m: v1::remove_from_group_request::Member) -> Self {
        match m {
            v1::remove_from_group_request::Member::ConnectionId(id) => MemberRef::Connection(id),
            v1::remove_from_group_request::Member::UserId(user) => MemberRef::User(user),
        }
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    async fn add_to_group(
        &self,
        request: Request<v1::AddToGroupRequest>,
    ) -> Result<Response<v1::AddToGroupResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let Scope::Group { tenant_id, group } = group_scope(&r.tenant_id, &r.group)? else {
            unreachable!("group_scope gives a group scope")
        };
        caller.check_tenant(&tenant_id)?;
        let mut added = 0;
        let presence = self.control.presence();
        let max = presence.config().max_per_connection;
        for member in self
            .members(&tenant_id, r.member.map(MemberRef::from))
            .await?
        {
            if self
                .control
                .registry()
                .join(&member.connection_id, &group, max)
                .await
                .map_err(ApiError::from)?
            {
                added += 1;
                presence.announce(&group, Event::Join, &member).await;
            }
        }
        Ok(Response::new(v1::AddToGroupResponse { added }))
    }

    async fn remove_from_group(
        &self,
        request: Request<v1::RemoveFromGroupRequest>,
    ) -> Result<Response<v1::RemoveFromGroupResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let r = request.into_inner();
        let Scope::Group { tenant_id, group } = group_scope(&r.tenant_id, &r.group)? else {
            unreachable!("group_scope gives a group scope")
        };
        caller.check_tenant(&tenant_id)?;
        let mut removed = 0;
        let presence = self.control.presence();
        for member in self
            .members(&tenant_id, r.member.map(MemberRef::from))
            .await?
        {
            if self
                .control
                .registry()
                .leave(&member.connection_id, &group)
                .await
                .map_err(ApiError::from)?
            {
                removed += 1;
                presence.announce(&group, Event::Leave, &member).await;
            }
        }
        Ok(Response::new(v1::RemoveFromGroupResponse { removed }))
    }

    async fn list_group_members(
        &self,
        request: Request<v1::ListGroupMembersRequest>,
    ) -> Result<Response<v1::ListGroupMembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = group_scope(&r.tenant_id, &r.group)?;
        caller.check_tenant(scope.tenant_id())?;
        let (connections, next_page_token) = page_of(
            self.control.registry().as_ref(),
            &self.page_tokens,
            &scope,
            &r.page_token,
            r.page_size,
        )
        .await?;
        Ok(Response::new(v1::ListGroupMembersResponse {
            connections,
            next_page_token,
        }))
    }

    async fn count_group_members(
        &self,
        request: Request<v1::CountGroupMembersRequest>,
    ) -> Result<Response<v1::CountGroupMembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = group_scope(&r.tenant_id, &r.group)?;
        caller.check_tenant(scope.tenant_id())?;
        let count = self
            .control
            .registry()
            .count(&scope)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::CountGroupMembersResponse { count }))
    }

    async fn list_connection_groups(
        &self,
        request: Request<v1::ListConnectionGroupsRequest>,
    ) -> Result<Response<v1::ListConnectionGroupsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let connection = visible(
            self.control.registry().as_ref(),
            caller,
            &request.get_ref().connection_id,
        )
        .await?;
        let mut groups: Vec<String> = connection.groups.iter().map(|g| g.to_string()).collect();
        groups.sort();
        Ok(Response::new(v1::ListConnectionGroupsResponse { groups }))
    }
}
