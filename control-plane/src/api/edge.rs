//! `EdgeService`: the edge Lambdas' calls, one per API Gateway event.

use std::sync::Arc;

use streamer_proto::v1::{self, edge_service_server::EdgeService};
use tonic::{Request, Response, Status};

use crate::connections::{ControlPlane, connect::ConnectInput};

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
        let edge_peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
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
                deadline_ms: i64::try_from(r.deadline_unix_ms).unwrap_or(i64::MAX),
                edge_peer,
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
            .map_err(crate::error::Fault::from)?;
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
