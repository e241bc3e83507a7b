//! The action table: built-in actions plus those declared in configuration,
//! each with a mode, an optional required permission and an optional JSON
//! Schema for the payload (compiled once at start); and the async actions
//! processors define while they are connected, each in a [`Scope`]: a
//! processor holding a tenant-bound token defines actions for its tenant
//! only, so no tenant decides what another tenant's clients may ask for.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};

use streamer_proto::{client::chunk::CHUNK_ACTION, ids};

use crate::{
    config::{ActionConfig, ActionMode},
    error::Fault,
};

/// The built-in handlers a sync action can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Returns the payload.
    Echo,
    /// Reports that the service is up.
    Health,
    /// Answers with a `pong` frame.
    Ping,
    /// Returns the caller's connection id, user, tenant, permissions and
    /// connect time.
    Whoami,
    /// Joins the group in `payload.group` (permission per group).
    Join,
    /// Leaves the group in `payload.group`.
    Leave,
    /// Cancels the caller's request `payload.request_id`.
    Cancel,
    /// Subscribes to the caller's request `payload.request_id`: its state
    /// now, its frames from now on.
    Subscribe,
    /// The messages of `payload.stream` after `payload.since` (history).
    Recover,
    /// A new token (`payload.token`) of the same user and tenant: extends
    /// the connection past its token's end and replaces its permissions.
    Refresh,
}

impl Builtin {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "echo" => Self::Echo,
            "health" => Self::Health,
            "ping" => Self::Ping,
            "whoami" => Self::Whoami,
            "join" => Self::Join,
            "leave" => Self::Leave,
            "cancel" => Self::Cancel,
            "subscribe" => Self::Subscribe,
            "recover" => Self::Recover,
            "refresh" => Self::Refresh,
            _ => return None,
        })
    }
}

/// One action clients may call.
pub struct Action {
    /// The name clients send.
    pub name: String,
    /// The built-in that answers it.
    pub handler: Builtin,
    /// The permission the token must grant, if any.
    pub permission: Option<String>,
    schema: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Action")
            .field("name", &self.name)
            .field("handler", &self.handler)
            .field("permission", &self.permission)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

/// Most schema violations reported back in one error.
const MAX_REPORTED_VIOLATIONS: usize = 10;

impl Action {
    /// Checks `payload` against the action's schema.
    pub fn validate(&self, payload: &Value) -> Result<(), Fault> {
        check_schema(self.schema.as_ref(), payload)
    }
}

/// An action whose work is queued for a processor.
pub struct AsyncAction {
    /// The name clients send.
    pub name: String,
    /// The permission the token must grant, if any.
    pub permission: Option<String>,
    /// A lease lasts this long without progress.
    pub lease_timeout_ms: u64,
    /// Attempts before the request fails.
    pub max_attempts: u32,
    schema: Option<jsonschema::Validator>,
    schema_json: Option<Value>,
}

impl std::fmt::Debug for AsyncAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncAction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Default lease of async actions.
pub const DEFAULT_LEASE_TIMEOUT_MS: u64 = 30_000;
/// Default attempts of async actions.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl AsyncAction {
    /// Compiles an async action's definition.
    pub fn new(
        name: &str,
        permission: Option<String>,
        schema: Option<&Value>,
        lease_timeout_ms: Option<u64>,
        max_attempts: Option<u32>,
    ) -> Result<Self, ActionsError> {
        if !ids::valid_action(name) {
            return Err(ActionsError::Name(name.to_owned()));
        }
        if name == CHUNK_ACTION {
            return Err(ActionsError::Reserved(name.to_owned()));
        }
        let schema_source = schema;
        let schema = schema
            .map(|schema| {
                jsonschema::validator_for(schema).map_err(|e| ActionsError::Schema {
                    name: name.to_owned(),
                    message: e.to_string(),
                })
            })
            .transpose()?;
        Ok(Self {
            name: name.to_owned(),
            permission: permission.filter(|p| !p.is_empty()),
            lease_timeout_ms: lease_timeout_ms
                .filter(|l| *l > 0)
                .unwrap_or(DEFAULT_LEASE_TIMEOUT_MS),
            max_attempts: max_attempts
                .filter(|m| *m > 0)
                .unwrap_or(DEFAULT_MAX_ATTEMPTS),
            schema,
            schema_json: schema_source.cloned(),
        })
    }

    /// The definition as JSON, for other replicas ([`AsyncAction::from_spec`]).
    pub fn spec(&self) -> Value {
        json!({
            "name": self.name,
            "permission": self.permission,
            "schema": self.schema_json,
            "lease_timeout_ms": self.lease_timeout_ms,
            "max_attempts": self.max_attempts,
        })
    }

    /// An action from its [`AsyncAction::spec`].
    pub fn from_spec(spec: &Value) -> Result<Self, ActionsError> {
        let name = spec["name"].as_str().unwrap_or_default();
        Self::new(
            name,
            spec["permission"].as_str().map(str::to_owned),
            Some(&spec["schema"]).filter(|s| !s.is_null()),
            spec["lease_timeout_ms"].as_u64(),
            spec["max_attempts"]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok()),
        )
    }

    /// Checks `payload` against the action's schema.
    pub fn validate(&self, payload: &Value) -> Result<(), Fault> {
        check_schema(self.schema.as_ref(), payload)
    }

    /// How `other` differs from this definition (permission, schema, lease,
    /// attempts), in words; `None` when they are the same.
    pub fn difference(&self, other: &AsyncAction) -> Option<String> {
        let mut parts = Vec::new();
        if self.permission != other.permission {
            parts.push(format!(
                "permission {:?} here, {:?} there",
                other.permission.as_deref().unwrap_or(""),
                self.permission.as_deref().unwrap_or("")
            ));
        }
        if self.schema_json != other.schema_json {
            parts.push("the payload schema".to_owned());
        }
        if self.lease_timeout_ms != other.lease_timeout_ms {
            parts.push(format!(
                "lease_timeout_ms {} here, {} there",
                other.lease_timeout_ms, self.lease_timeout_ms
            ));
        }
        if self.max_attempts != other.max_attempts {
            parts.push(format!(
                "max_attempts {} here, {} there",
                other.max_attempts, self.max_attempts
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn check_schema(schema: Option<&jsonschema::Validator>, payload: &Value) -> Result<(), Fault> {
    {
        let Some(schema) = schema else {
            return Ok(());
        };
        let violations: Vec<Value> = schema
            .iter_errors(payload)
            .take(MAX_REPORTED_VIOLATIONS)
            .map(|e| json!({ "path": e.instance_path().as_str(), "message": e.masked().to_string() }))
            .collect();
        if violations.is_empty() {
            return Ok(());
        }
        Err(Fault::invalid("payload does not match the action's schema")
            .with_details(json!({ "violations": violations })))
    }
}

/// Why the action table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error("action {0:?}: invalid name")]
    Name(String),
    #[error("action {0:?}: the name is reserved by the protocol (chunked messages)")]
    Reserved(String),
    #[error("action {0:?} is declared twice")]
    Duplicate(String),
    #[error(
        "action {name:?}: unknown handler {handler:?} (use echo, health, ping, whoami, join, leave, cancel, subscribe or recover)"
    )]
    Handler { name: String, handler: String },
    #[error("action {name:?}: invalid JSON Schema: {message}")]
    Schema { name: String, message: String },
    #[error("action {0:?} is a sync action; it cannot also be async")]
    NotAsync(String),
    #[error(
        "action {name:?} is defined by {by}; this processor's definition differs ({difference})"
    )]
    Differs {
        name: String,
        by: &'static str,
        difference: String,
    },
    #[error("a tenant defines at most {max} actions; this one would be more")]
    TooMany { max: usize },
}

/// What an action name resolves to.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// Answered at once.
    Sync(Arc<Action>),
    /// Queued for a processor; `scoped` when the definition is the
    /// client's tenant's own (only processors bound to that tenant lease
    /// its requests).
    Async {
        /// The definition.
        action: Arc<AsyncAction>,
        /// Defined by the tenant's own processors.
        scoped: bool,
    },
}

/// Whose an async action's definition is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every tenant's: from configuration, or from a processor holding an
    /// unbound token.
    Fleet,
    /// One tenant's: from processors holding a token bound to it.
    Tenant(String),
}

impl Scope {
    /// The scope of a processor whose token is bound to `tenant` (`None`:
    /// unbound).
    pub fn of(tenant: Option<&str>) -> Self {
        tenant.map_or(Scope::Fleet, |t| Scope::Tenant(t.to_owned()))
    }

    /// The scope as the store keys it: empty for the fleet.
    pub fn key(&self) -> &str {
        match self {
            Scope::Fleet => "",
            Scope::Tenant(t) => t,
        }
    }
}

/// Most actions one tenant's processors may define (all of them together).
pub const MAX_ACTIONS_PER_TENANT: usize = 256;
/// Most actions unbound processors may define.
pub const MAX_FLEET_ACTIONS: usize = 4096;
/// How long a processor's definition outlives its last processor here: a
/// processor that reconnects (a deploy, a network blip) finds it, and
/// requests for it are still accepted meanwhile.
pub const UNSERVED_GRACE_MS: i64 = 180_000;

/// A definition and who serves it here.
#[derive(Debug)]
struct Defined {
    action: Arc<AsyncAction>,
    /// From the configuration file (never dropped, never redefined).
    configured: bool,
    /// Processor sessions here serving it.
    serving: usize,
    /// When the last of them left (for processor definitions).
    unserved_since_ms: Option<i64>,
}

/// The action table: sync actions fixed at start, async ones from the config
/// file plus those processors define while they are connected, per scope.
#[derive(Debug)]
pub struct Actions {
    by_name: HashMap<String, Arc<Action>>,
    asyncs: std::sync::RwLock<HashMap<(Scope, String), Defined>>,
}

impl Actions {
    /// The built-ins, overridden or extended by `declared`.
    pub fn new(declared: &[ActionConfig]) -> Result<Self, ActionsError> {
        let mut by_name: HashMap<String, Arc<Action>> = [
            "echo",
            "health",
            "ping",
            "whoami",
            "join",
            "leave",
            "cancel",
            "subscribe",
            "recover",
            "refresh",
        ]
        .into_iter()
        .filter_map(|name| {
            let handler = Builtin::parse(name)?;
            Some((
                name.to_owned(),
                Arc::new(Action {
                    name: name.to_owned(),
                    handler,
                    permission: None,
                    schema: None,
                }),
            ))
        })
        .collect();
        let mut seen = std::collections::HashSet::new();
        let mut asyncs = HashMap::new();
        for config in declared {
            let name = config.name.clone();
            if !ids::valid_action(&name) {
                return Err(ActionsError::Name(name));
            }
            if name == CHUNK_ACTION {
                return Err(ActionsError::Reserved(name));
            }
            if !seen.insert(name.clone()) {
                return Err(ActionsError::Duplicate(name));
            }
            if config.mode == ActionMode::Async {
                let action = AsyncAction::new(
                    &name,
                    config.permission.clone(),
                    config.schema.as_ref(),
                    config.lease_timeout_ms,
                    config.max_attempts,
                )?;
                asyncs.insert(
                    (Scope::Fleet, name),
                    Defined {
                        action: Arc::new(action),
                        configured: true,
                        serving: 0,
                        unserved_since_ms: None,
                    },
                );
                continue;
            }
            let handler_name = config.handler.clone().unwrap_or_else(|| name.clone());
            let handler = Builtin::parse(&handler_name).ok_or_else(|| ActionsError::Handler {
                name: name.clone(),
                handler: handler_name,
            })?;
            let schema =
                match &config.schema {
                    None => None,
                    Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                        ActionsError::Schema {
                            name: name.clone(),
                            message: e.to_string(),
                        }
                    })?),
                };
            by_name.insert(
                name.clone(),
                Arc::new(Action {
                    name,
                    handler,
                    permission: config.permission.clone(),
                    schema,
                }),
            );
        }
        if let Some((_, clash)) = asyncs.keys().find(|(_, name)| by_name.contains_key(name)) {
            return Err(ActionsError::NotAsync(clash.clone()));
        }
        Ok(Self {
            by_name,
            asyncs: std::sync::RwLock::new(asyncs),
        })
    }

    /// Looks a sync action up; `INVALID_ACTION` when there is none.
    pub fn get(&self, name: &str) -> Result<&Arc<Action>, Fault> {
        self.by_name
            .get(name)
            .ok_or_else(|| Fault::invalid_action(format!("unknown action {name:?}")))
    }

    /// Resolves any action a client of `tenant` sends: a sync action, its
    /// tenant's own definition, or the fleet's; `INVALID_ACTION` when none.
    pub fn resolve(&self, name: &str, tenant: &str) -> Result<Resolved, Fault> {
        if let Some(action) = self.by_name.get(name) {
            return Ok(Resolved::Sync(action.clone()));
        }
        let asyncs = self.asyncs.read().map_err(Fault::internal)?;
        if let Some(defined) = asyncs.get(&(Scope::Tenant(tenant.to_owned()), name.to_owned())) {
            return Ok(Resolved::Async {
                action: defined.action.clone(),
                scoped: true,
            });
        }
        asyncs
            .get(&(Scope::Fleet, name.to_owned()))
            .map(|defined| Resolved::Async {
                action: defined.action.clone(),
                scoped: false,
            })
            .ok_or_else(|| Fault::invalid_action(format!("unknown action {name:?}")))
    }

    /// Whether `name` is a sync action or a fleet-wide async one (a name
    /// that may become a metric label; tenants' own names never do).
    pub fn is_fleet_wide(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
            || self
                .asyncs
                .read()
                .is_ok_and(|a| a.contains_key(&(Scope::Fleet, name.to_owned())))
    }

    /// The names of every async action known now, in every scope.
    pub fn async_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .asyncs
            .read()
            .map(|a| a.keys().map(|(_, name)| name.clone()).collect())
            .unwrap_or_default();
        names.sort();
        names.dedup();
        names
    }

    /// A processor of `scope` serves `action` here. A tenant's processors
    /// define their tenant's actions; a name defined for every tenant
    /// (configuration, or an unbound processor) they may serve only as it
    /// is defined. Two definitions of one name in one scope must agree:
    /// the second is refused, naming the difference (no last writer
    /// wins). An unbound processor serving a configured action serves
    /// the configuration's definition. Sync names, `chunk` and more than
    /// [`MAX_ACTIONS_PER_TENANT`] per tenant are refused. Returns the
    /// definition served and the scope it is defined in (the fleet's, for
    /// a tenant's processor serving a fleet-wide action); every successful
    /// call is paired with a [`Actions::release`] of that scope.
    pub fn register(
        &self,
        scope: &Scope,
        action: AsyncAction,
        now_ms: i64,
    ) -> Result<(Arc<AsyncAction>, Scope), ActionsError> {
        if self.by_name.contains_key(&action.name) {
            return Err(ActionsError::NotAsync(action.name));
        }
        let mut asyncs = self
            .asyncs
            .write()
            .map_err(|_| ActionsError::Reserved(action.name.clone()))?;
        // Definitions nobody has served for a while are forgotten first.
        asyncs.retain(|_, d| {
            d.configured
                || d.serving > 0
                || d.unserved_since_ms
                    .is_none_or(|since| now_ms.saturating_sub(since) < UNSERVED_GRACE_MS)
        });
        let fleet_key = (Scope::Fleet, action.name.clone());
        if let Some(fleet) = asyncs.get_mut(&fleet_key) {
            let by = if fleet.configured {
                "configuration"
            } else {
                "a processor for every tenant"
            };
            match scope {
                // Unbound processors serve the configuration's definition.
                Scope::Fleet if fleet.configured => {}
                _ => {
                    if let Some(difference) = fleet.action.difference(&action) {
                        return Err(ActionsError::Differs {
                            name: action.name,
                            by,
                            difference,
                        });
                    }
                }
            }
            // Served as defined for every tenant (a tenant's processor
            // leases only its tenant's requests of it).
            fleet.serving += 1;
            fleet.unserved_since_ms = None;
            return Ok((fleet.action.clone(), Scope::Fleet));
        }
        let key = (scope.clone(), action.name.clone());
        if let Some(defined) = asyncs.get_mut(&key) {
            if let Some(difference) = defined.action.difference(&action) {
                return Err(ActionsError::Differs {
                    name: action.name,
                    by: "another processor of this tenant",
                    difference,
                });
            }
            defined.serving += 1;
            defined.unserved_since_ms = None;
            return Ok((defined.action.clone(), scope.clone()));
        }
        let (max, defined_here) = match scope {
            Scope::Fleet => (
                MAX_FLEET_ACTIONS,
                asyncs.keys().filter(|(s, _)| *s == Scope::Fleet).count(),
            ),
            Scope::Tenant(_) => (
                MAX_ACTIONS_PER_TENANT,
                asyncs.keys().filter(|(s, _)| s == scope).count(),
            ),
        };
        if defined_here >= max {
            return Err(ActionsError::TooMany { max });
        }
        let action = Arc::new(action);
        asyncs.insert(
            key,
            Defined {
                action: action.clone(),
                configured: false,
                serving: 1,
                unserved_since_ms: None,
            },
        );
        Ok((action, scope.clone()))
    }

    /// A processor of `scope` no longer serves `name` here.
    pub fn release(&self, scope: &Scope, name: &str, now_ms: i64) {
        if let Ok(mut asyncs) = self.asyncs.write()
            && let Some(defined) = asyncs.get_mut(&(scope.clone(), name.to_owned()))
        {
            defined.serving = defined.serving.saturating_sub(1);
            if defined.serving == 0 && !defined.configured {
                defined.unserved_since_ms = Some(now_ms);
            }
        }
    }

    /// Takes in a definition another replica's processors serve (read from
    /// the store), unless this replica has one of its own for the name.
    pub fn adopt(&self, scope: &Scope, action: AsyncAction, now_ms: i64) -> bool {
        if self.by_name.contains_key(&action.name) {
            return false;
        }
        let Ok(mut asyncs) = self.asyncs.write() else {
            return false;
        };
        let key = (scope.clone(), action.name.clone());
        if asyncs.contains_key(&key) {
            return true;
        }
        asyncs.insert(
            key,
            Defined {
                action: Arc::new(action),
                configured: false,
                serving: 0,
                unserved_since_ms: Some(now_ms),
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use streamer_proto::client::ErrorCode;

    use super::*;

    fn declared(name: &str, handler: Option<&str>, schema: Option<Value>) -> ActionConfig {
        ActionConfig {
            name: name.into(),
            mode: ActionMode::Sync,
            handler: handler.map(str::to_owned),
            permission: Some("admin".into()),
            schema,
            lease_timeout_ms: None,
            max_attempts: None,
        }
    }

    #[test]
    fn builtins_and_declared_actions() {
        let actions = Actions::new(&[declared(
            "admin.echo",
            Some("echo"),
            Some(json!({"type":"object","required":["text"],"properties":{"text":{"type":"string"}}})),
        )])
        .expect("table");
        assert_eq!(actions.get("echo").expect("builtin").handler, Builtin::Echo);
        let admin = actions.get("admin.echo").expect("declared");
        assert_eq!(admin.permission.as_deref(), Some("admin"));
        admin.validate(&json!({"text":"hi"})).expect("valid");
        let err = admin
            .validate(&json!({"text": 5}))
            .expect_err("invalid")
            .client();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert_eq!(
            err.details.expect("details")["violations"][0]["path"],
            "/text"
        );
        assert_eq!(
            actions.get("nope").expect_err("unknown").code(),
            ErrorCode::InvalidAction
        );
    }

    #[test]
    fn bad_declarations_are_refused() {
        assert!(matches!(
            Actions::new(&[declared("x", Some("shell"), None)]),
            Err(ActionsError::Handler { .. })
        ));
        assert!(matches!(
            Actions::new(&[declared("x", Some("echo"), Some(json!({"type": 12})))]),
            Err(ActionsError::Schema { .. })
        ));
        assert!(matches!(
            Actions::new(&[declared("a b", Some("echo"), None)]),
            Err(ActionsError::Name(_))
        ));
        let mut async_action = declared("echo", None, None);
        async_action.mode = ActionMode::Async;
        assert!(matches!(
            Actions::new(&[async_action]),
            Err(ActionsError::NotAsync(_))
        ));
        let mut report = declared("report", None, Some(json!({"type": "object"})));
        report.mode = ActionMode::Async;
        let actions = Actions::new(&[report]).expect("async action");
        assert!(matches!(
            actions.resolve("report", "t"),
            Ok(Resolved::Async { scoped: false, .. })
        ));
        assert!(matches!(
            actions.resolve("echo", "t"),
            Ok(Resolved::Sync(_))
        ));
        let served = AsyncAction::new("whoami", None, None, None, None).expect("compiles");
        assert!(matches!(
            actions.register(&Scope::Fleet, served, 0),
            Err(ActionsError::NotAsync(_))
        ));
    }

    fn refund(permission: Option<&str>) -> AsyncAction {
        AsyncAction::new(
            "payments.refund",
            permission.map(str::to_owned),
            None,
            None,
            None,
        )
        .expect("action")
    }

    #[test]
    fn a_tenants_definitions_are_its_own() {
        let actions = Actions::new(&[]).expect("table");
        let ta = Scope::Tenant("ta".into());
        let tb = Scope::Tenant("tb".into());
        actions
            .register(&ta, refund(None), 0)
            .expect("ta defines it");
        actions
            .register(&tb, refund(Some("payments:refund")), 0)
            .expect("tb defines its own");
        let permission = |tenant: &str| match actions.resolve("payments.refund", tenant) {
            Ok(Resolved::Async { action, scoped }) => {
                assert!(scoped);
                action.permission.clone()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(permission("ta"), None);
        assert_eq!(permission("tb").as_deref(), Some("payments:refund"));
        assert!(
            actions.resolve("payments.refund", "tc").is_err(),
            "no one else's"
        );
        // A second processor of tb that disagrees is refused, naming why.
        let err = actions
            .register(&tb, refund(None), 0)
            .expect_err("disagrees");
        assert!(err.to_string().contains("permission"), "{err}");
        assert!(
            actions
                .register(&tb, refund(Some("payments:refund")), 0)
                .is_ok()
        );
    }

    #[test]
    fn configured_and_fleet_definitions_cannot_be_changed_by_a_tenant() {
        let mut configured = declared("billing.charge", None, None);
        configured.mode = ActionMode::Async;
        configured.permission = Some("billing".into());
        let actions = Actions::new(&[configured]).expect("table");
        let ta = Scope::Tenant("ta".into());
        let charge = |permission: Option<&str>| {
            AsyncAction::new(
                "billing.charge",
                permission.map(str::to_owned),
                None,
                None,
                None,
            )
            .expect("action")
        };
        let err = actions
            .register(&ta, charge(None), 0)
            .expect_err("changes it");
        assert!(err.to_string().contains("configuration"), "{err}");
        assert!(
            actions.register(&ta, charge(Some("billing")), 0).is_ok(),
            "serves it as is"
        );
        // An unbound processor serves the configured definition.
        assert!(actions.register(&Scope::Fleet, charge(None), 0).is_ok());
        assert!(matches!(
            actions.resolve("billing.charge", "ta"),
            Ok(Resolved::Async { scoped: false, action }) if action.permission.as_deref() == Some("billing")
        ));
        for reserved in ["echo", "join"] {
            let builtin = AsyncAction::new(reserved, None, None, None, None).expect("compiles");
            assert!(matches!(
                actions.register(&ta, builtin, 0),
                Err(ActionsError::NotAsync(_))
            ));
        }
        assert!(matches!(
            AsyncAction::new("chunk", None, None, None, None),
            Err(ActionsError::Reserved(_))
        ));
    }

    #[test]
    fn a_tenant_defines_a_bounded_number_and_unserved_ones_are_forgotten() {
        let actions = Actions::new(&[]).expect("table");
        let ta = Scope::Tenant("ta".into());
        for i in 0..MAX_ACTIONS_PER_TENANT {
            let action = AsyncAction::new(&format!("a{i}"), None, None, None, None).expect("a");
            actions.register(&ta, action, 0).expect("within the bound");
        }
        let one_more = || AsyncAction::new("one.more", None, None, None, None).expect("a");
        assert!(matches!(
            actions.register(&ta, one_more(), 0),
            Err(ActionsError::TooMany { .. })
        ));
        for i in 0..MAX_ACTIONS_PER_TENANT {
            actions.release(&ta, &format!("a{i}"), 1);
        }
        assert!(
            actions.register(&ta, one_more(), 2).is_err(),
            "within the grace"
        );
        assert!(
            actions
                .register(&ta, one_more(), UNSERVED_GRACE_MS + 2)
                .is_ok(),
            "forgotten after it"
        );
    }
}
