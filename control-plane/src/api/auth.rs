//! Authentication of gRPC callers: `authorization: Bearer <token>` metadata
//! mapped to a role. Tokens are compared by SHA-256 digest, so lookup time
//! says nothing about how much of a guessed token was right.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use super::audit;
use crate::{config::TokenConfig, error::Fault};

pub use crate::config::OperatorRole;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The edge Lambdas (edge protocol only).
    Edge,
    /// A named operator (`STREAMER_ADMIN_TOKEN` is the admin named
    /// `admin`): the whole server API, or only its reads.
    Operator {
        /// The operator's name from the config file.
        name: String,
        /// What they may do.
        role: OperatorRole,
    },
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
        audit::note_tenant(tenant_id);
        match self {
            Caller::Operator { .. }
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

    /// Who this is, as the audit trail names them (never the token).
    pub fn principal(&self) -> &str {
        match self {
            Caller::Edge => "edge",
            Caller::Operator { name, .. } | Caller::Service { name, .. } => name,
        }
    }

    /// The role, as the audit trail names it.
    pub fn role(&self) -> &'static str {
        match self {
            Caller::Edge => "edge",
            Caller::Operator { role, .. } => role.as_str(),
            Caller::Service { .. } => "service",
        }
    }

    /// Whether this caller may call the gRPC method at `path`
    /// (`/package.Service/Method`): a `read` operator only reads.
    pub fn may_call(&self, path: &str) -> bool {
        match self {
            Caller::Operator {
                role: OperatorRole::Read,
                ..
            } => reads_only(path),
            _ => true,
        }
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

/// Whether the gRPC method at `path` only reads: health, reflection,
/// and the `Get…`, `List…`, `Count…` and `Read…` methods. Anything else,
/// including methods added later, is a change.
pub fn reads_only(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    service == "grpc.health.v1.Health"
        || service.starts_with("grpc.reflection.")
        || ["Get", "List", "Count", "Read"]
            .iter()
            .any(|prefix| method.starts_with(prefix))
}

/// Token digests to callers.
#[derive(Debug, Default)]
pub struct TokenTable {
    callers: HashMap<[u8; 32], Caller>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The tokens in use, replaced whole when they are read again (SIGHUP):
/// every interceptor, the console and the audit layer share one.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<RwLock<Arc<TokenTable>>>);

impl Tokens {
    /// Tokens starting with `table`.
    pub fn new(table: TokenTable) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The table now.
    pub fn current(&self) -> Arc<TokenTable> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `table` in use for every later call.
    pub fn replace(&self, table: TokenTable) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
    }
}

/// Why the tokens cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// Reads one stage of a Secrets Manager secret; `None` when the stage does
/// not exist (a secret never rotated has no AWSPREVIOUS).
async fn secret_stage(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
    stage: &str,
) -> Result<Option<String>, TokenError> {
    match client
        .get_secret_value()
        .secret_id(arn)
        .version_stage(stage)
        .send()
        .await
    {
        Ok(secret) => Ok(secret
            .secret_string()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())),
        Err(err)
            if stage != "AWSCURRENT"
                && err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(err) => Err(TokenError(format!(
            "cannot read secret {arn} ({stage}): {}",
            aws_sdk_secretsmanager::error::DisplayErrorContext(&err)
        ))),
    }
}

/// `tokens` with every secret ARN read into its token (the edge's
/// AWSPREVIOUS value as its previous token), checked again.
pub async fn resolve(tokens: &TokenConfig) -> Result<TokenConfig, TokenError> {
    let arns = tokens.edge_secret_arn.is_some()
        || tokens.admin_secret_arn.is_some()
        || tokens.services.iter().any(|s| s.token_secret_arn.is_some())
        || tokens
            .operators
            .iter()
            .any(|o| o.token_secret_arn.is_some());
    if !arns {
        return Ok(tokens.clone());
    }
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let current = |arn: String| {
        let client = client.clone();
        async move {
            secret_stage(&client, &arn, "AWSCURRENT")
                .await?
                .ok_or_else(|| TokenError(format!("secret {arn} has no string value")))
        }
    };
    let mut out = tokens.clone();
    if let Some(arn) = out.edge_secret_arn.take() {
        out.edge = Some(current(arn.clone()).await?);
        if out.edge_previous.is_none() {
            out.edge_previous = secret_stage(&client, &arn, "AWSPREVIOUS").await?;
        }
    }
    if let Some(arn) = out.admin_secret_arn.take() {
        out.admin = Some(current(arn).await?);
    }
    for service in &mut out.services {
        if let Some(arn) = service.token_secret_arn.take() {
            service.token = current(arn).await?;
        }
    }
    for operator in &mut out.operators {
        if let Some(arn) = operator.token_secret_arn.take() {
            operator.token = current(arn).await?;
        }
    }
    // A previous value equal to the current one (a rotation not yet
    // begun) is the same credential, not a second one.
    if out.edge_previous == out.edge {
        out.edge_previous = None;
    }
    match out.problems().first() {
        Some(problem) => Err(TokenError(problem.clone())),
        None => Ok(out),
    }
}

impl TokenTable {
    /// The table for the configured tokens (secrets already read: see
    /// [`resolve`]).
    pub fn new(tokens: &TokenConfig) -> Self {
        let mut callers = HashMap::new();
        for edge in [&tokens.edge, &tokens.edge_previous].into_iter().flatten() {
            callers.insert(digest(edge), Caller::Edge);
        }
        if let Some(admin) = &tokens.admin {
            callers.insert(
                digest(admin),
                Caller::Operator {
                    name: "admin".into(),
                    role: OperatorRole::Admin,
                },
            );
        }
        for operator in tokens.operators.iter().filter(|o| !o.token.is_empty()) {
            callers.insert(
                digest(&operator.token),
                Caller::Operator {
                    name: operator.name.clone(),
                    role: operator.role,
                },
            );
        }
        for service in tokens.services.iter().filter(|s| !s.token.is_empty()) {
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

    /// How many principals of each kind (edge tokens, operators,
    /// services), for the log line of a reload.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.callers
            .values()
            .fold((0, 0, 0), |(e, o, s), caller| match caller {
                Caller::Edge => (e + 1, o, s),
                Caller::Operator { .. } => (e, o + 1, s),
                Caller::Service { .. } => (e, o, s + 1),
            })
    }

    /// Who a call's `authorization` header (or, with none, a client
    /// certificate naming the edge identity) says is calling, whatever the
    /// service.
    pub fn identify(
        &self,
        authorization: Option<&http::HeaderValue>,
        edge_certificate: bool,
    ) -> Result<Caller, Fault> {
        // A client certificate naming the edge identity (mutual TLS,
        // verified at the handshake) is the edge role, no token needed.
        let Some(header) = authorization else {
            return if edge_certificate {
                Ok(Caller::Edge)
            } else {
                Err(Fault::unauthenticated("missing authorization metadata"))
            };
        };
        let header = header
            .to_str()
            .map_err(|_| Fault::unauthenticated("invalid authorization metadata"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Fault::unauthenticated("authorization must be a Bearer token"))?;
        self.callers
            .get(&digest(token.trim()))
            .cloned()
            .ok_or_else(|| Fault::unauthenticated("invalid token"))
    }

    /// Authenticates a request's metadata for `audience`.
    pub fn authenticate<T>(
        &self,
        request: &Request<T>,
        audience: Audience,
    ) -> Result<Caller, Fault> {
        let edge_certificate =
            super::transport::ConnInfo::of(request).is_some_and(|c| !c.client_names.is_empty());
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok());
        let caller = self.identify(authorization.as_ref(), edge_certificate)?;
        let allowed = match audience {
            Audience::Any => true,
            Audience::Edge => matches!(caller, Caller::Edge),
            Audience::Server => matches!(caller, Caller::Operator { .. } | Caller::Service { .. }),
            Audience::Admin => matches!(caller, Caller::Operator { .. }),
        };
        if !allowed {
            return Err(Fault::forbidden(
                "this token's role may not call this service",
            ));
        }
        Ok(caller)
    }
}

/// A tonic interceptor that authenticates for one audience and stores the
/// [`Caller`] in the request extensions.
pub fn interceptor(
    tokens: Tokens,
    audience: Audience,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = tokens
            .current()
            .authenticate(&request, audience)
            .map_err(Status::from)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
