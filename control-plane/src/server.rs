//! Assembling the control plane from its configuration and serving it:
//! `App::build` checks everything that can be wrong before any port is bound;
//! `App::serve(listener, shutdown)` runs until `shutdown` resolves.

use std::{future::Future, sync::Arc, time::Duration};

use streamer_proto::v1::{
    admin_service_server::AdminServiceServer, broadcast_service_server::BroadcastServiceServer,
    connection_service_server::ConnectionServiceServer, edge_service_server::EdgeServiceServer,
    group_service_server::GroupServiceServer, processor_service_server::ProcessorServiceServer,
    request_service_server::RequestServiceServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

use crate::{
    actions::{Actions, ActionsError},
    broadcast::Broadcaster,
    config::{Config, JwtConfig, ReconcileConfig},
    control::{ControlPlane, Parts},
    delivery::ManagementApi,
    grpc::{AdminApi, BroadcastApi, ConnectionApi, EdgeApi, GroupApi},
    grpc_auth::{Audience, TokenTable, interceptor},
    grpc_requests::{ProcessorApi, RequestApi},
    jobs::Jobs,
    jwt::{JwtVerifier, KeyError},
    pagetoken::PageTokens,
    presence::Presence,
    reconcile::Reconciler,
};

/// Why the control plane could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "no JWT public key configured: set STREAMER_JWT_PUBLIC_KEY or STREAMER_JWT_PUBLIC_KEY_FILE"
    )]
    NoJwtKey,
    #[error("jwt: {0}")]
    Jwt(#[from] KeyError),
    #[error("actions: {0}")]
    Actions(#[from] ActionsError),
    #[error(
        "no gRPC tokens configured: set STREAMER_EDGE_TOKEN and STREAMER_ADMIN_TOKEN (or service tokens)"
    )]
    NoTokens,
    #[error("reflection: {0}")]
    Reflection(String),
}

/// A fully assembled control plane, ready to serve.
#[derive(Debug, Clone)]
pub struct App {
    control: Arc<ControlPlane>,
    broadcaster: Arc<Broadcaster>,
    reconciler: Arc<Reconciler>,
    reconcile: ReconcileConfig,
    presence: Arc<Presence>,
    departures: Arc<
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::registry::Connection>>>,
    >,
    tokens: Arc<TokenTable>,
    page_tokens: PageTokens,
}

impl App {
    /// Builds the control plane on the configured store. `jwt` overrides
    /// the configured key (used by `dev` for its ephemeral key); `sdk` is
    /// the AWS configuration for the Management API.
    pub async fn build(
        config: &Config,
        jwt: Option<&JwtConfig>,
        sdk: aws_config::SdkConfig,
    ) -> Result<Self, BuildError> {
        let jwt = jwt.or(config.jwt.as_ref()).ok_or(BuildError::NoJwtKey)?;
        let verifier = JwtVerifier::new(jwt)?;
        let actions = Actions::new(&config.actions)?;
        if config.tokens.edge.is_none()
            && config.tokens.admin.is_none()
            && config.tokens.services.is_empty()
        {
            return Err(BuildError::NoTokens);
        }
        let stores = crate::store::open(config).await;
        let registry = stores.registry;
        let api = Arc::new(ManagementApi::new(sdk, config.delivery.clone()));
        let broadcaster = Arc::new(Broadcaster::new(registry.clone(), api.clone()));
        let presence = Arc::new(Presence::new(broadcaster.clone(), config.groups.clone()));
        let actions = Arc::new(actions);
        let jobs = Arc::new(Jobs::new(
            stores.queue,
            registry.clone(),
            api.clone(),
            actions.clone(),
            config.jobs.clone(),
        ));
        let control = Arc::new(ControlPlane::new(Parts {
            registry: registry.clone(),
            verifier,
            limits: config.limits.clone(),
            actions,
            jobs,
            shared_limiter: stores.shared_limiter,
            touch_interval: config.store.touch_interval,
            presence: presence.clone(),
        }));
        Ok(Self {
            control,
            reconciler: Arc::new(Reconciler::new(
                registry,
                api,
                config.reconcile.idle_threshold,
            )),
            reconcile: config.reconcile.clone(),
            broadcaster,
            presence,
            departures: Arc::new(std::sync::Mutex::new(Some(stores.departures))),
            tokens: Arc::new(TokenTable::new(&config.tokens)),
            page_tokens: PageTokens::new(config.page_token_secret.as_deref()),
        })
    }

    /// The domain logic (for in-process callers and tests).
    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    /// Serves gRPC on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), anyhow::Error> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<EdgeServiceServer<EdgeApi>>()
            .await;
        health_reporter
            .set_serving::<ConnectionServiceServer<ConnectionApi>>()
            .await;
        health_reporter
            .set_serving::<BroadcastServiceServer<BroadcastApi>>()
            .await;
        health_reporter
            .set_serving::<AdminServiceServer<AdminApi>>()
            .await;
        health_reporter
            .set_serving::<GroupServiceServer<GroupApi>>()
            .await;
        health_reporter
            .set_serving::<RequestServiceServer<RequestApi>>()
            .await;
        health_reporter
            .set_serving::<ProcessorServiceServer<ProcessorApi>>()
            .await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(streamer_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| BuildError::Reflection(e.to_string()))?;
        // grpcurl releases before 1.8.8 only speak v1alpha reflection.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(streamer_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| BuildError::Reflection(e.to_string()))?;

        let edge = EdgeServiceServer::new(EdgeApi::new(self.control.clone()));
        let connections = ConnectionServiceServer::new(ConnectionApi::new(
            self.control.clone(),
            self.broadcaster.clone(),
            self.page_tokens.clone(),
        ));
        let broadcast = BroadcastServiceServer::new(BroadcastApi::new(self.broadcaster.clone()));
        let admin = AdminServiceServer::new(AdminApi::new(
            self.reconciler.clone(),
            self.reconcile.interval,
            self.reconcile.idle_threshold,
        ));
        let jobs = self.control.jobs().clone();
        let processors = ProcessorServiceServer::new(ProcessorApi::new(jobs.clone()));
        let requests =
            RequestServiceServer::new(RequestApi::new(jobs.clone(), self.page_tokens.clone()));
        let sweeper = tokio::spawn(jobs.run_sweeper());
        let groups = GroupServiceServer::new(GroupApi::new(
            self.control.clone(),
            self.page_tokens.clone(),
        ));
        let tokens = &self.tokens;

        let departures = self.departures.lock().ok().and_then(|mut rx| rx.take());
        let presence = departures.map(|rx| tokio::spawn(self.presence.clone().run_departures(rx)));
        let reconcile = (!self.reconcile.interval.is_zero()).then(|| {
            let reconciler = self.reconciler.clone();
            let interval = self.reconcile.interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(err) = reconciler.run_once().await {
                        tracing::warn!(error = %err, "reconcile run failed");
                    }
                }
            })
        });

        let housekeeping = tokio::spawn({
            let control = self.control.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    control.rate_limits().retain_recent();
                }
            }
        });

        tracing::info!(addr = %listener.local_addr()?, "grpc server listening");
        let result = tonic::transport::Server::builder()
            .trace_fn(streamer_edge::telemetry::grpc_server_span)
            .add_service(health_service)
            .add_service(InterceptedService::new(
                reflection_v1,
                interceptor(tokens.clone(), Audience::Any),
            ))
            .add_service(InterceptedService::new(
                reflection_v1alpha,
                interceptor(tokens.clone(), Audience::Any),
            ))
            .add_service(InterceptedService::new(
                edge,
                interceptor(tokens.clone(), Audience::Edge),
            ))
            .add_service(InterceptedService::new(
                connections,
                interceptor(tokens.clone(), Audience::Server),
            ))
            .add_service(InterceptedService::new(
                broadcast,
                interceptor(tokens.clone(), Audience::Server),
            ))
            .add_service(InterceptedService::new(
                processors,
                interceptor(tokens.clone(), Audience::Server),
            ))
            .add_service(InterceptedService::new(
                requests,
                interceptor(tokens.clone(), Audience::Server),
            ))
            .add_service(InterceptedService::new(
                groups,
                interceptor(tokens.clone(), Audience::Server),
            ))
            .add_service(InterceptedService::new(
                admin,
                interceptor(tokens.clone(), Audience::Admin),
            ))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await;
        housekeeping.abort();
        if let Some(reconcile) = reconcile {
            reconcile.abort();
        }
        if let Some(presence) = presence {
            presence.abort();
        }
        sweeper.abort();
        result?;
        tracing::info!("grpc server stopped");
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Raises the soft open-file limit to the hard limit: each WebSocket and each
/// pooled Management API connection is a file descriptor.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open file limit"),
    }
}
