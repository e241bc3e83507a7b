//! `ConnectionService`: who is connected, and closing a connection.

use std::sync::Arc;

use streamer_proto::v1::{self, connection_service_server::ConnectionService};
use tonic::{Request, Response, Status};

use super::{auth::Caller, convert, pagetoken::PageTokens};
use crate::{connections::ControlPlane, registry::Registry};

/// Connection queries.
#[derive(Clone)]
pub struct ConnectionApi {
    control: Arc<ControlPlane>,
    registry: Arc<dyn Registry>,
    page_tokens: PageTokens,
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
        }
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
}
