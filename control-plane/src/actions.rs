//! The action table: built-in actions plus those declared in configuration,
//! each with a mode, an optional required permission and an optional JSON
//! Schema for the payload (compiled once at start).

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
}

/// What an action name resolves to.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// Answered at once.
    Sync(Arc<Action>),
    /// Queued for a processor.
    Async(Arc<AsyncAction>),
}

/// The action table: sync actions fixed at start, async ones from the config
/// file plus those processors register while they are connected.
#[derive(Debug)]
pub struct Actions {
    by_name: HashMap<String, Arc<Action>>,
    asyncs: std::sync::RwLock<HashMap<String, Arc<AsyncAction>>>,
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
                asyncs.insert(name, Arc::new(action));
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
        if let Some(clash) = asyncs.keys().find(|name| by_name.contains_key(*name)) {
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

    /// Resolves any action, sync or async; `INVALID_ACTION` when unknown.
    pub fn resolve(&self, name: &str) -> Result<Resolved, Fault> {
        if let Some(action) = self.by_name.get(name) {
            return Ok(Resolved::Sync(action.clone()));
        }
        let asyncs = self.asyncs.read().map_err(Fault::internal)?;
        asyncs
            .get(name)
            .cloned()
            .map(Resolved::Async)
            .ok_or_else(|| Fault::invalid_action(format!("unknown action {name:?}")))
    }

    /// The names of every async action known now.
    pub fn async_names(&self) -> Vec<String> {
        self.asyncs
            .read()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds an async action a processor serves. One already declared (in the
    /// config file or by another processor) keeps its definition; a sync
    /// action's name is refused.
    pub fn register_async(&self, action: AsyncAction) -> Result<(), ActionsError> {
        if self.by_name.contains_key(&action.name) {
            return Err(ActionsError::NotAsync(action.name));
        }
        if let Ok(mut asyncs) = self.asyncs.write() {
            asyncs
                .entry(action.name.clone())
                .or_insert_with(|| Arc::new(action));
        }
        Ok(())
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
        assert!(matches!(actions.resolve("report"), Ok(Resolved::Async(_))));
        assert!(matches!(actions.resolve("echo"), Ok(Resolved::Sync(_))));
        let served = AsyncAction::new("whoami", None, None, None, None).expect("compiles");
        assert!(matches!(
            actions.register_async(served),
            Err(ActionsError::NotAsync(_))
        ));
    }
}
