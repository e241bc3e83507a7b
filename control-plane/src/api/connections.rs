//! `ConnectionService`: who is connected, and closing a connection.

use std::{sync::Arc, time::Duration};

use streamer_proto::v1::{self, connection_service_server::ConnectionService};
use tonic::{Request, Response, Status};

use super::{auth::Caller, convert, pagetoken::PageTokens};
use tokio::time::Instant;

use crate::{
    connections::ControlPlane,
    error::Fault,
    registry::{Registry, Scope},
};

/// How long `ListTenants` keeps the registry's answer: on DynamoDB each
/// fresh answer is a Scan of the table, so any number of open consoles cost
/// at most one Scan per replica in this time.
pub const TENANTS_FRESH_FOR: Duration = Duration::from_secs(5);
/// At most this many tenants in `ListTenants`.
const MAX_TENANTS: usize = 1000;

/// The last `ListTenants` answer and when it was read.
type TenantCache = Arc<tokio::sync::Mutex<Option<(Instant, Arc<[v1::TenantSummary]>)>>>;

/// Connection queries.
#[derive(Clone)]
pub struct ConnectionApi {
    control: Arc<ControlPlane>,
    registry: Arc<dyn Registry>,
    page_tokens: PageTokens,
    tenants: TenantCache,
}

impl std::fmt::Debug for ConnectionApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionApi").finish_non_exhaustive()
    }
}

impl ConnectionApi {
    /// Serves connection queries.
    pub fn new(
        control: Arc<ControlPlane>,
        registry: Arc<dyn Registry>,
        page_tokens: PageTokens,
    ) -> Self {
        Self {
            control,
            registry,
            page_tokens,
            tenants: TenantCache::default(),
        }
    }

    /// Every tenant, from the cache while it is fresh. The lock is held
    /// across the read, so concurrent callers wait for one read.
    async fn all_tenants(&self) -> Result<Arc<[v1::TenantSummary]>, Fault> {
        let mut cached = self.tenants.lock().await;
        if let Some((at, tenants)) = cached.as_ref()
            && at.elapsed() < TENANTS_FRESH_FOR
        {
            return Ok(tenants.clone());
        }
        let tenants: Arc<[v1::TenantSummary]> = self
            .registry
            .tenants(MAX_TENANTS)
            .await?
            .into_iter()
            .map(|(tenant_id, connections)| v1::TenantSummary {
                tenant_id,
                connections,
            })
            .collect();
        *cached = Some((Instant::now(), tenants.clone()));
        Ok(tenants)
    }
}

impl ConnectionApi {
    fn listing(&self) -> convert::Listing {
        convert::Listing {
            registry: self.registry.clone(),
            tokens: self.page_tokens.clone(),
        }
    }
}

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn get_connection(
        &self,
        request: Request<v1::GetConnectionRequest>,
    ) -> Result<Response<v1::GetConnectionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = convert::connection(&request.get_ref().connection_id)?;
        let connection = self.control.visible(id, caller.tenant_filter()).await?;
        Ok(Response::new(v1::GetConnectionResponse {
            connection: Some(convert::connection_proto(&connection)),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<v1::ListConnectionsRequest>,
    ) -> Result<Response<v1::ListConnectionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = convert::tenant_or_user(&r.tenant_id, &r.user_id)?;
        let (connections, next_page_token) = self
            .listing()
            .page(caller, &scope, &r.page_token, r.page_size)
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
        let scope = convert::tenant_or_user(&r.tenant_id, &r.user_id)?;
        let count = self.listing().count(caller, &scope).await?;
        Ok(Response::new(v1::CountConnectionsResponse { count }))
    }

    async fn disconnect_connection(
        &self,
        request: Request<v1::DisconnectConnectionRequest>,
    ) -> Result<Response<v1::DisconnectConnectionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = convert::connection(&request.get_ref().connection_id)?;
        let closed = self
            .control
            .force_disconnect(id, caller.tenant_filter())
            .await?;
        Ok(Response::new(v1::DisconnectConnectionResponse { closed }))
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let tenants = match caller.tenant_filter() {
            // A bound token sees its own tenant, counted now.
            Some(tenant_id) => {
                let scope = Scope::Tenant(tenant_id.to_owned());
                let connections = self.listing().count(caller, &scope).await?;
                vec![v1::TenantSummary {
                    tenant_id: tenant_id.to_owned(),
                    connections,
                }]
            }
            None => self.all_tenants().await?.to_vec(),
        };
        Ok(Response::new(v1::ListTenantsResponse { tenants }))
    }
}
