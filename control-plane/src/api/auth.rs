//! Authentication of gRPC callers: `authorization: Bearer <token>` metadata
//! mapped to a role. Tokens are compared by SHA-256 digest, so lookup time
//! says nothing about how much of a guessed token was right.

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::{config::TokenConfig, error::Fault};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The edge Lambdas (edge protocol only).
    Edge,
    /// An operator: the whole server API.
    Admin,
    /// An internal service, optionally bound to one tenant.
    Service {
        /// The token's name from the config file.
        name: String,
        /// The only tenant this caller may reach, if bound.
        tenant_id: Option<String>,
    },
}

impl Caller {
    /// Whether this caller may read or reach `tenant_id`.
    pub fn check_tenant(&self, tenant_id: &str) -> Result<(), Fault> {
        match self {
            Caller::Admin
            | Caller::Service {
                tenant_id: None, ..
            } => Ok(()),
            Caller::Service {
                tenant_id: Some(bound),
                ..
            } if bound == tenant_id => Ok(()),
            _ => Err(Fault::forbidden("this token may not reach that tenant")),
        }
    }

    /// The tenant a bound caller is restricted to (`None` = any tenant).
    pub fn tenant_filter(&self) -> Option<&str> {
        match self {
            Caller::Service { tenant_id, .. } => tenant_id.as_deref(),
            _ => None,
        }
    }

    /// The caller stored by the interceptor.
    pub fn of<T>(request: &Request<T>) -> Result<&Caller, Fault> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Fault::unauthenticated("missing caller"))
    }

    /// The caller's tenant filter as an owned value (for domain calls).
    pub fn visible_to(&self) -> Option<String> {
        self.tenant_filter().map(str::to_owned)
    }
}

/// Which roles an API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The edge protocol.
    Edge,
    /// The server API (admin and service tokens).
    Server,
    /// Operator-only APIs (admin token).
    Admin,
    /// Any valid token (reflection).
    Any,
}

/// Token digests to callers.
#[derive(Debug, Default)]
pub struct TokenTable {
    callers: HashMap<[u8; 32], Caller>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenTable {
    /// The table for the configured tokens.
    pub fn new(tokens: &TokenConfig) -> Self {
        let mut callers = HashMap::new();
        if let Some(edge) = &tokens.edge {
            callers.insert(digest(edge), Caller::Edge);
        }
        if let Some(admin) = &tokens.admin {
            callers.insert(digest(admin), Caller::Admin);
        }
        for service in &tokens.services {
            callers.insert(
                digest(&service.token),
                Caller::Service {
                    name: service.name.clone(),
                    tenant_id: service.tenant_id.clone(),
                },
            );
        }
        Self { callers }
    }

    /// Authenticates a request's metadata for `audience`.
    pub fn authenticate<T>(
        &self,
        request: &Request<T>,
        audience: Audience,
    ) -> Result<Caller, Fault> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Fault::unauthenticated("missing authorization metadata"))?;
        let header = header
            .to_str()
            .map_err(|_| Fault::unauthenticated("invalid authorization metadata"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Fault::unauthenticated("authorization must be a Bearer token"))?;
        let caller = self
            .callers
            .get(&digest(token.trim()))
            .ok_or_else(|| Fault::unauthenticated("invalid token"))?;
        let allowed = match audience {
            Audience::Any => true,
            Audience::Edge => matches!(caller, Caller::Edge),
            Audience::Server => matches!(caller, Caller::Admin | Caller::Service { .. }),
            Audience::Admin => matches!(caller, Caller::Admin),
        };
        if !allowed {
            return Err(Fault::forbidden(
                "this token's role may not call this service",
            ));
        }
        Ok(caller.clone())
    }
}

/// A tonic interceptor that authenticates for one audience and stores the
/// [`Caller`] in the request extensions.
pub fn interceptor(
    table: Arc<TokenTable>,
    audience: Audience,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = table
            .authenticate(&request, audience)
            .map_err(Status::from)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
