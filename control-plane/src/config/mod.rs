//! Configuration, parsed once at start into typed sections.
//!
//! Sources, later ones winning: the declared defaults, a TOML file (path
//! from `STREAMER_CONFIG` or `--config`), then `STREAMER_*` environment
//! variables. Every setting is declared once in [`settings`]; a bad
//! configuration is reported whole (every bad or missing setting, each
//! named) before anything else happens. This module depends on nothing in
//! the domain: each section's type lives here and its owner imports it.

mod domain;
mod process;
pub mod settings;
mod source;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use domain::*;
pub use process::*;
use settings as s;
pub use source::Source;

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "not an ip:port address (e.g. 127.0.0.1:50051)".to_owned())
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n  "))]
pub struct ConfigError {
    /// Each problem, naming its setting.
    pub problems: Vec<String>,
}

impl ConfigError {
    /// A single problem.
    pub fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// The whole control-plane configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gRPC server: address, transport limits, logs, metrics.
    pub server: ServerConfig,
    /// The local API Gateway emulator (used by `dev` only).
    pub gateway: GatewayConfig,
    /// Client token verification; `None` means "not configured" (only `dev`
    /// accepts that, and makes a key).
    pub jwt: Option<JwtConfig>,
    /// Tokens for gRPC callers.
    pub tokens: TokenConfig,
    /// Message size and rate limits.
    pub limits: LimitsConfig,
    /// Management API fan-out settings.
    pub delivery: DeliveryConfig,
    /// Actions declared in the config file (on top of the built-ins).
    pub actions: Vec<ActionConfig>,
    /// Where state lives.
    pub store: StoreConfig,
    /// Stale-connection cleanup.
    pub reconcile: ReconcileConfig,
    /// Groups (rooms).
    pub groups: GroupsConfig,
    /// Long-running requests.
    pub jobs: JobsConfig,
    /// Stream history.
    pub history: HistoryConfig,
    /// `dev` only.
    pub dev: DevConfig,
    /// The config file these settings were read from, if any (read again
    /// on SIGHUP).
    pub file: Option<PathBuf>,
}

impl Config {
    /// Loads the configuration from `config_file` (or `STREAMER_CONFIG`) and
    /// the environment seen through `lookup`.
    pub fn load(
        config_file: Option<PathBuf>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::load_for(config_file, lookup, false)
    }

    /// Like [`Config::load`]; with `production`, what production needs
    /// (see [`Config::require_production`]) is checked too, and every
    /// problem of both kinds is reported at once.
    pub fn load_for(
        config_file: Option<PathBuf>,
        lookup: &dyn Fn(&str) -> Option<String>,
        production: bool,
    ) -> Result<Self, ConfigError> {
        let path = config_file.or_else(|| {
            s::CONFIG
                .env
                .and_then(lookup)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let mut src = Source::new(path.as_deref(), lookup);
        let config = Config {
            server: ServerConfig::resolve(&mut src),
            gateway: GatewayConfig::resolve(&mut src),
            jwt: JwtConfig::resolve(&mut src),
            tokens: TokenConfig::resolve(&mut src),
            limits: LimitsConfig::resolve(&mut src),
            delivery: DeliveryConfig::resolve(&mut src),
            actions: ActionConfig::resolve(&mut src),
            store: StoreConfig::resolve(&mut src),
            reconcile: ReconcileConfig::resolve(&mut src),
            groups: GroupsConfig::resolve(&mut src),
            jobs: JobsConfig::resolve(&mut src),
            history: HistoryConfig::resolve(&mut src),
            dev: DevConfig::resolve(&mut src),
            file: path.clone(),
        };
        let mut problems = src.into_problems();
        if production && let Err(missing) = config.require_production() {
            problems.extend(missing.problems);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Loads from the real process environment (`production`: see
    /// [`Config::load_for`]).
    pub fn from_process_env(
        config_file: Option<PathBuf>,
        production: bool,
    ) -> Result<Self, ConfigError> {
        Self::load_for(config_file, &|name| std::env::var(name).ok(), production)
    }

    /// What production (`serve`) needs on top of what `dev` makes up: a JWT
    /// key and gRPC tokens. Every missing setting is named at once.
    pub fn require_production(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.jwt.is_none() {
            problems.push(format!(
                "missing setting {} (or {}): the PEM public key that verifies client tokens",
                s::JWT_PUBLIC_KEY.name(),
                s::JWT_PUBLIC_KEY_FILE.name()
            ));
        }
        if let Some(jwt) = &self.jwt {
            if jwt.issuer.is_none() && !jwt.any_issuer {
                problems.push(format!(
                    "missing setting {}: the issuer client tokens must name (`any` to accept every issuer, on purpose)",
                    s::JWT_ISSUER.name()
                ));
            }
            if jwt.audience.is_none() && !jwt.any_audience {
                problems.push(format!(
                    "missing setting {}: the audience client tokens must name (`any` to accept every audience, on purpose)",
                    s::JWT_AUDIENCE.name()
                ));
            }
        }
        let edge_by_certificate = self
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
        if !self.tokens.has_edge_token() && !edge_by_certificate {
            problems.push(format!(
                "missing setting {} (or mutual TLS with {}): how the edge Lambdas prove who they are",
                s::EDGE_TOKEN.name(),
                s::TLS_CLIENT_CA.name()
            ));
        }
        if !self.tokens.has_server_tokens() {
            problems.push(format!(
                "missing setting {} (or {}, [[tokens.operators]], [[tokens.services]]): a token for the server API",
                s::ADMIN_TOKEN.name(),
                s::ADMIN_TOKEN_SECRET_ARN.name()
            ));
        }
        if self.store.kind == StoreKind::DynamoDb
            && self.delivery.endpoints == ManagementEndpoints::Unset
        {
            problems.push(Self::missing_endpoints());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The problem of a deployment on DynamoDB that names no Management API
    /// endpoints (a client's `$connect` would choose where broadcasts go).
    pub fn missing_endpoints() -> String {
        format!(
            "missing setting {}: the Management API endpoints this deployment may call (https://{{host}}/{{stage}}, comma separated), or `any` to allow every endpoint",
            s::MANAGEMENT_ENDPOINTS.name()
        )
    }
}

#[cfg(test)]
mod tests;
