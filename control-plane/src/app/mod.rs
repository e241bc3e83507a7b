//! Assembling the control plane from its configuration and serving it:
//! [`App::build`] checks everything that can be wrong before any port is
//! bound and wires every room to what it needs; [`App::serve`] runs until
//! its shutdown future resolves, then drains in-flight calls for a bounded
//! time.

pub mod stores;

use std::{future::Future, sync::Arc, time::Duration};

use streamer_proto::v1::{
    admin_service_server::AdminServiceServer, broadcast_service_server::BroadcastServiceServer,
    connection_service_server::ConnectionServiceServer, edge_service_server::EdgeServiceServer,
    group_service_server::GroupServiceServer, history_service_server::HistoryServiceServer,
    processor_service_server::ProcessorServiceServer, request_service_server::RequestServiceServer,
};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::{
    actions::{Actions, ActionsError},
    api::{
        AdminApi, BroadcastApi, ConnectionApi, EdgeApi, GroupApi, HistoryApi, ProcessorApi,
        RequestApi,
        audit::Audit,
        auth::{self as token_auth, Audience, TokenTable, Tokens, interceptor},
        pagetoken::PageTokens,
        transport,
    },
    clock::Clock,
    config::{Config, JwtConfig, ReconcileConfig, TransportConfig},
    connections::{
        ControlPlane, Parts,
        auth::{JwtVerifier, KeyError},
        groups::Groups,
        limits::{LocalLimits, RateLimiter},
        shared_limits::SharedLimits,
    },
    delivery::{
        Delivery, broadcast::Broadcaster, fanout::Fanout, presence::Presence, reconcile::Reconciler,
    },
    registry::Registry,
    requests::{Jobs, JobsParts},
    store::lease::DynamoLease,
    streams::Streams,
};

/// Why the control plane could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "no JWT public key configured: set STREAMER_JWT_PUBLIC_KEY or STREAMER_JWT_PUBLIC_KEY_FILE"
    )]
    NoJwtKey,
    #[error(transparent)]
    Jwt(#[from] KeyError),
    #[error(transparent)]
    Actions(#[from] ActionsError),
    #[error(
        "no gRPC tokens configured: set STREAMER_EDGE_TOKEN and STREAMER_ADMIN_TOKEN (or service tokens)"
    )]
    NoTokens,
    #[error("reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    Tls(#[from] streamer_listener::tls::TlsError),
    #[error(transparent)]
    Tokens(#[from] token_auth::TokenError),
}

impl BuildError {
    /// Whether the settings are at fault (a certificate, a key, a secret
    /// that cannot be read): the process exits 2, as for any bad setting.
    pub fn is_settings(&self) -> bool {
        matches!(self, BuildError::Tls(_) | BuildError::Tokens(_))
    }
}

/// Where and how to serve the web console.
pub struct Console {
    /// Its listener (`STREAMER_CONSOLE_ADDR`).
    pub listener: TcpListener,
    /// `dev`'s helpers for the client panel; `None` in production.
    pub dev: Option<Arc<dyn crate::console::DevClients>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("listener", &self.listener.local_addr().ok())
            .field("dev", &self.dev.is_some())
            .finish()
    }
}

/// A fully assembled control plane, ready to serve.
#[derive(Clone)]
pub struct App {
    control: Arc<ControlPlane>,
    registry: Arc<dyn Registry>,
    broadcaster: Arc<Broadcaster>,
    idempotency_keys: Arc<dyn crate::delivery::idempotency::KeyStore>,
    idempotency_window: Duration,
    groups: Arc<Groups>,
    jobs: Arc<Jobs>,
    actions: Arc<Actions>,
    reconciler: Arc<Reconciler>,
    reconcile: ReconcileConfig,
    transport: TransportConfig,
    presence: Arc<Presence>,
    fanout: Arc<Fanout>,
    departures: Arc<
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::registry::Connection>>>,
    >,
    tokens: Tokens,
    /// The tokens as configured (with any `dev` made up), the base a
    /// SIGHUP reads the config and secrets again over.
    base_tokens: crate::config::TokenConfig,
    config_file: Option<std::path::PathBuf>,
    page_tokens: PageTokens,
    streams: Streams,
    clock: Clock,
    http: crate::config::HttpConfig,
    tls: Option<streamer_listener::tls::ServerTls>,
    grpc_tls: Option<streamer_listener::tls::ServerTls>,
    edge_identity: Option<String>,
    metrics_token: Option<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// Builds the control plane on the configured store. `jwt` overrides
    /// the configured key (used by `dev` for its own key); `delivery` is the
    /// Management API.
    pub async fn build(
        config: &Config,
        jwt: Option<&JwtConfig>,
        delivery: Arc<dyn Delivery>,
    ) -> Result<Self, BuildError> {
        let jwt = jwt.or(config.jwt.as_ref()).ok_or(BuildError::NoJwtKey)?;
        let verifier = JwtVerifier::new(jwt)?;
        // The key set is fetched before the first connect, then on its
        // interval; a failure leaves it empty (or as last fetched) and
        // connects naming an unknown kid fetch it again, once a minute.
        if let Some(jwks) = verifier.jwks() {
            jwks.refresh().await;
            jwks.refresh_every(jwt.jwks_refresh);
        }
        let actions = Arc::new(Actions::new(&config.actions)?);
        if !config.tokens.has_edge_token() && !config.tokens.has_server_tokens() {
            return Err(BuildError::NoTokens);
        }
        let resolved_tokens = token_auth::resolve(&config.tokens).await?;
        // TLS material is checked before anything is opened: a bad file is
        // a startup error naming its setting.
        let files = |client_ca: Option<std::path::PathBuf>| {
            config
                .server
                .tls
                .as_ref()
                .map(|tls| streamer_listener::tls::ServerFiles {
                    cert: tls.cert.clone(),
                    key: tls.key.clone(),
                    client_ca,
                    settings: (
                        crate::config::settings::TLS_CERT.name(),
                        crate::config::settings::TLS_KEY.name(),
                        crate::config::settings::TLS_CLIENT_CA.name(),
                    ),
                })
        };
        // The HTTP ports serve TLS without client certificates; the gRPC
        // port asks for one when a client CA is set (mutual TLS).
        let tls = files(None)
            .map(|files| streamer_listener::tls::ServerTls::load(&files, &[b"h2", b"http/1.1"]))
            .transpose()?;
        let client_ca = config.server.tls.as_ref().and_then(|t| t.client_ca.clone());
        let grpc_tls = files(client_ca.clone())
            .map(|files| streamer_listener::tls::ServerTls::load(&files, &[b"h2"]))
            .transpose()?;
        let edge_identity =
            client_ca.and(config.server.tls.as_ref().map(|t| t.edge_identity.clone()));
        let clock = Clock::new();
        // Every call to a Management API endpoint goes through the list.
        let delivery: Arc<dyn Delivery> =
            Arc::new(crate::delivery::own_endpoints::OwnEndpoints::new(
                delivery,
                config.delivery.endpoints.clone(),
            ));
        let stores = stores::open(config, clock).await;
        let registry = stores.registry;
        let limiter: Arc<dyn RateLimiter> =
            match (&stores.dynamodb, config.store.shared_rate_limits) {
                (Some(client), true) => Arc::new(SharedLimits::new(
                    client.clone(),
                    &config.store.rate_limits_table,
                    &config.limits,
                    clock,
                )),
                _ => Arc::new(LocalLimits::new(&config.limits)),
            };
        // Idempotency keys of Send: in DynamoDB (one conditional write,
        // every replica) on that store, else in this process.
        let idempotency_keys: Arc<dyn crate::delivery::idempotency::KeyStore> =
            match &stores.dynamodb {
                Some(client) => Arc::new(crate::delivery::idempotency::DynamoKeys::new(
                    client.clone(),
                    &config.store.rate_limits_table,
                    clock,
                )),
                None => Arc::new(crate::delivery::idempotency::MemoryKeys::new(clock)),
            };
        let fanout = Arc::new(Fanout::new(delivery.clone(), config.delivery.clone()));
        let streams = Streams::with_budget(
            stores.history,
            config.history.streams.clone(),
            config.history.recover_max,
            config.history.recover_max_inflight_bytes,
        );
        let broadcaster = Arc::new(Broadcaster::new(
            registry.clone(),
            fanout.clone(),
            streams.clone(),
            clock,
        ));
        let presence = Arc::new(Presence::new(broadcaster.clone(), config.groups.clone()));
        let groups = Arc::new(Groups::new(
            registry.clone(),
            presence.clone(),
            config.groups.clone(),
        ));
        let jobs = Arc::new(Jobs::new(JobsParts {
            queue: stores.queue,
            registry: registry.clone(),
            fanout: fanout.clone(),
            actions: actions.clone(),
            config: config.jobs.clone(),
            clock,
        }));
        let control = Arc::new(ControlPlane::new(Parts {
            registry: registry.clone(),
            verifier,
            limiter,
            limits: config.limits.clone(),
            loopback_unlimited: config.limits.loopback_connects_unlimited.unwrap_or(false),
            actions: actions.clone(),
            jobs: jobs.clone(),
            groups: groups.clone(),
            streams: streams.clone(),
            delivery: delivery.clone(),
            fanout: fanout.clone(),
            chunks: stores.chunks,
            clock,
            touch_interval: config.store.touch_interval,
            endpoints: config.delivery.endpoints.clone(),
            token_warning: config.delivery.token_expiry_warning,
        }));
        Ok(Self {
            control,
            reconciler: Arc::new({
                let reconciler = Reconciler::new(
                    registry.clone(),
                    delivery,
                    clock,
                    config.reconcile.idle_threshold,
                    config.delivery.connecting_grace,
                )
                .with_unreachable_after(config.reconcile.unreachable_after);
                match &stores.dynamodb {
                    Some(client) => reconciler.with_lease(Arc::new(DynamoLease::new(
                        client.clone(),
                        &config.store.rate_limits_table,
                        "reconcile",
                        &uuid::Uuid::new_v4().simple().to_string(),
                    ))),
                    None => reconciler,
                }
            }),
            registry,
            broadcaster,
            idempotency_keys,
            idempotency_window: config.delivery.idempotency_window,
            groups,
            jobs,
            actions,
            reconcile: config.reconcile.clone(),
            transport: config.server.transport.clone(),
            presence,
            fanout,
            departures: Arc::new(std::sync::Mutex::new(Some(stores.departures))),
            tokens: Tokens::new(TokenTable::new(&resolved_tokens)),
            base_tokens: config.tokens.clone(),
            config_file: config.file.clone(),
            page_tokens: PageTokens::new(config.server.page_token_secret.as_deref()),
            streams,
            clock,
            http: config.server.http.clone(),
            tls,
            grpc_tls,
            edge_identity,
            metrics_token: config.server.metrics_token.clone(),
        })
    }

    /// The limits of an HTTP listener named `name` (console, metrics).
    pub fn http_limits(&self, name: &'static str) -> streamer_listener::Limits {
        streamer_listener::Limits {
            max_connections: self.http.max_connections,
            max_connections_per_ip: self
                .http
                .max_connections_per_ip
                .min(self.http.max_connections),
            header_timeout: self.http.header_timeout,
            body_min_bytes_per_sec: self.http.body_min_bytes_per_sec,
            body_grace: self.http.body_grace,
            idle_timeout: self.http.idle_timeout,
            ..streamer_listener::Limits::new(name)
        }
    }

    /// Serves `/metrics` on `listener` (its token, limits and TLS) until
    /// `shutdown` resolves.
    pub fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        tokio::spawn(crate::metrics::serve(
            listener,
            self.metrics_token.clone(),
            self.http_limits("metrics"),
            self.tls.clone(),
            shutdown,
        ))
    }

    /// Waits, at most `timeout`, for the sends in flight (broadcasts,
    /// results, presence) to finish: a process that owns the gateway
    /// (`dev`) calls it before closing the sockets they deliver to.
    pub async fn drain_sends(&self, timeout: Duration) -> bool {
        self.fanout.drain(timeout).await
    }

    /// The processor sessions connected now (for readiness checks).
    pub fn processor_count(&self) -> usize {
        self.jobs.sessions().len()
    }

    /// Serves gRPC on `listener` until `shutdown` resolves; in-flight calls
    /// then get the configured drain timeout
    /// (`STREAMER_DRAIN_TIMEOUT_SECS`) to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), anyhow::Error> {
        self.serve_with(listener, None, shutdown).await
    }

    /// [`App::serve`], plus the web console on its own listener when given
    /// (it stops with the gRPC server).
    pub async fn serve_with(
        self,
        listener: TcpListener,
        console: Option<Console>,
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
        health_reporter
            .set_serving::<HistoryServiceServer<HistoryApi>>()
            .await;

        let reflection = |builder: tonic_reflection::server::Builder<'static>| {
            builder
                .register_encoded_file_descriptor_set(streamer_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .map_err(|e| BuildError::Reflection(e.to_string()))?;
        // grpcurl releases before 1.8.8 only speak v1alpha reflection.
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .map_err(|e| BuildError::Reflection(e.to_string()))?;

        let edge = EdgeServiceServer::new(EdgeApi::new(self.control.clone()));
        let connections = ConnectionServiceServer::new(ConnectionApi::new(
            self.control.clone(),
            self.registry.clone(),
            self.page_tokens.clone(),
        ));
        let broadcast = BroadcastServiceServer::new(BroadcastApi::new(
            self.broadcaster.clone(),
            self.idempotency_keys.clone(),
            self.idempotency_window,
        ));
        let admin = AdminServiceServer::new(AdminApi::new(
            self.reconciler.clone(),
            self.reconcile.interval,
            self.reconcile.idle_threshold,
        ));
        let processors =
            ProcessorServiceServer::new(ProcessorApi::new(self.jobs.clone(), self.actions.clone()));
        let requests =
            RequestServiceServer::new(RequestApi::new(self.jobs.clone(), self.page_tokens.clone()));
        let groups = GroupServiceServer::new(GroupApi::new(
            self.groups.clone(),
            self.control.clone(),
            self.registry.clone(),
            self.page_tokens.clone(),
        ));

        let history = HistoryServiceServer::new(HistoryApi::new(self.streams.clone(), self.clock));

        let mut background = tokio::task::JoinSet::new();
        background.spawn(self.jobs.clone().run_sweeper());
        background.spawn(self.jobs.clone().run_cancel_watch());
        if let Some(rx) = self.departures.lock().ok().and_then(|mut rx| rx.take()) {
            background.spawn(self.presence.clone().run_departures(rx));
        }
        background.spawn(self.presence.clone().run());
        if !self.reconcile.interval.is_zero() {
            let reconciler = self.reconciler.clone();
            let interval = self.reconcile.interval;
            background.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(err) = reconciler.run_once().await {
                        tracing::warn!(error = %err, "reconcile run failed");
                    }
                }
            });
        }
        let control = self.control.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                control.expire_chunks().await;
            }
        });
        let control = self.control.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                control.housekeeping();
            }
        });

        let tokens = &self.tokens;
        background.spawn(self.clone().reload_tokens_on_sighup());
        let transport = &self.transport;
        let mut routes = tonic::service::RoutesBuilder::default();
        routes
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
                history,
                interceptor(tokens.clone(), Audience::Server),
            ))
            .add_service(InterceptedService::new(
                admin,
                interceptor(tokens.clone(), Audience::Admin),
            ));
        let routes = routes.routes();
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(transport.keepalive_interval)
            .http2_keepalive_timeout(Some(transport.keepalive_timeout))
            // Without a cap, a burst of thousands of small calls on one
            // connection (a gateway's $disconnects when many clients drop)
            // exhausts h2's small-DATA-frame budget and the server closes
            // the connection with every call on it.
            .max_concurrent_streams(transport.max_concurrent_streams)
            .trace_fn(streamer_telemetry::grpc_server_span)
            .layer(transport::Conventions)
            .layer(Audit::new(tokens.clone(), "grpc"));
        if let Some(age) = transport.max_connection_age {
            server = server
                .max_connection_age(age)
                .max_connection_age_grace(transport.drain_timeout);
        }
        tracing::info!(addr = %listener.local_addr()?, "grpc server listening");
        let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        };
        // The console serves the same routes (the same services, with the
        // same interceptors) to browsers through gRPC-Web.
        if let Some(console) = console {
            let router = crate::console::router(routes.clone(), tokens.clone(), console.dev);
            let limits = self.http_limits("console");
            let tls = self.tls.clone();
            let mut stopping = stopping_rx.clone();
            background.spawn(async move {
                let stopped = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                if let Err(err) =
                    crate::console::serve(console.listener, router, limits, tls, stopped).await
                {
                    tracing::error!(error = %err, "console server failed");
                }
            });
        }
        let serving = server.add_routes(routes).serve_with_incoming_shutdown(
            transport::incoming(
                listener,
                transport.clone(),
                self.grpc_tls.clone(),
                self.edge_identity.iter().cloned().collect(),
            ),
            shutdown,
        );
        tokio::pin!(serving);
        let drain_timeout = self.transport.drain_timeout;
        let mut stopping = stopping_rx;
        let drained = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain_timeout).await;
        };
        let result = tokio::select! {
            result = &mut serving => result,
            () = drained => {
                tracing::warn!(timeout = ?drain_timeout, "calls still in flight after the drain timeout; stopping anyway");
                Ok(())
            }
        };
        background.abort_all();
        result?;
        tracing::info!("grpc server stopped");
        Ok(())
    }
}

impl App {
    /// Reads the tokens again (the config file, the environment and the
    /// secrets they name) on every SIGHUP and puts them in use for the next
    /// call; a failure keeps the tokens in use and says why. Tokens `dev`
    /// made up stay when the config names none for that role.
    async fn reload_tokens_on_sighup(self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; tokens are read at start only");
                return;
            };
            while hangups.recv().await.is_some() {
                match self.read_tokens_again().await {
                    Ok((edge, operators, services)) => {
                        tracing::info!(edge, operators, services, "tokens read again (SIGHUP)")
                    }
                    Err(err) => tracing::error!(
                        error = %err,
                        "cannot read the tokens again (SIGHUP); keeping the ones in use"
                    ),
                }
            }
        }
    }

    async fn read_tokens_again(&self) -> Result<(usize, usize, usize), String> {
        let config =
            Config::from_process_env(self.config_file.clone(), false).map_err(|e| e.to_string())?;
        let mut tokens = config.tokens;
        let base = &self.base_tokens;
        if !tokens.has_edge_token() {
            tokens.edge.clone_from(&base.edge);
        }
        if tokens.admin.is_none() && tokens.admin_secret_arn.is_none() {
            tokens.admin.clone_from(&base.admin);
        }
        let resolved = token_auth::resolve(&tokens)
            .await
            .map_err(|e| e.to_string())?;
        let table = TokenTable::new(&resolved);
        let counts = table.counts();
        self.tokens.replace(table);
        Ok(counts)
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
