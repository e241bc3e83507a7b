//! Every failure of the control plane and its one mapping to what callers
//! see: a [`Fault`] carries both the client protocol's error code and the
//! gRPC status code, so a domain error reads the same through a WebSocket
//! frame and through the server API. The domain's error types live here,
//! at the bottom of the house, so every room can return them and this module
//! imports nothing from the rooms. This is the only module that builds a
//! `tonic::Status`.

use std::time::Duration;

use serde_json::{Value, json};
use streamer_proto::client::{ClientError, ErrorCode};

/// The gRPC code of a [`Fault`] (the small set the design allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    /// `INVALID_ARGUMENT`
    InvalidArgument,
    /// `NOT_FOUND`
    NotFound,
    /// `ALREADY_EXISTS`
    AlreadyExists,
    /// `PERMISSION_DENIED`
    PermissionDenied,
    /// `UNAUTHENTICATED`
    Unauthenticated,
    /// `RESOURCE_EXHAUSTED`
    ResourceExhausted,
    /// `FAILED_PRECONDITION`
    FailedPrecondition,
    /// `UNAVAILABLE`
    Unavailable,
    /// `DEADLINE_EXCEEDED`
    DeadlineExceeded,
    /// `INTERNAL`
    Internal,
}

/// A failure as callers see it: a message written for them (never internal
/// detail), a client error code and a gRPC code.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    code: ErrorCode,
    grpc: GrpcCode,
    message: String,
    details: Option<Value>,
    retry_after: Option<Duration>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Fault {}

impl Fault {
    fn new(code: ErrorCode, grpc: GrpcCode, message: impl Into<String>) -> Self {
        Self {
            code,
            grpc,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// Bad input: `VALIDATION_ERROR` / `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ValidationError,
            GrpcCode::InvalidArgument,
            message,
        )
    }

    /// An action nobody declared: `INVALID_ACTION` / `INVALID_ARGUMENT`.
    pub fn invalid_action(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidAction, GrpcCode::InvalidArgument, message)
    }

    /// `NOT_FOUND`: "{what} not found".
    pub fn not_found(what: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            GrpcCode::NotFound,
            format!("{what} not found"),
        )
    }

    /// A request id in use: `DUPLICATE_REQUEST` / `ALREADY_EXISTS`.
    pub fn duplicate(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::DuplicateRequest,
            GrpcCode::AlreadyExists,
            message,
        )
    }

    /// Not allowed: `FORBIDDEN` / `PERMISSION_DENIED`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, GrpcCode::PermissionDenied, message)
    }

    /// Unknown caller: `UNAUTHORIZED` / `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, GrpcCode::Unauthenticated, message)
    }

    /// Slow down: `RATE_LIMITED` (with when to retry) / `RESOURCE_EXHAUSTED`.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, GrpcCode::ResourceExhausted, message)
        }
    }

    /// Over a size limit: `PAYLOAD_TOO_LARGE` / `RESOURCE_EXHAUSTED`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            GrpcCode::ResourceExhausted,
            message,
        )
    }

    /// The target is not in a state that allows this: `VALIDATION_ERROR` /
    /// `FAILED_PRECONDITION`.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ValidationError,
            GrpcCode::FailedPrecondition,
            message,
        )
    }

    /// Try again later: `SERVICE_UNAVAILABLE` / `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ServiceUnavailable,
            GrpcCode::Unavailable,
            message,
        )
    }

    /// A bug or an unexpected state: logged with `detail`, reported as
    /// "internal error" and nothing more.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::InternalError,
            GrpcCode::Internal,
            "internal error",
        )
    }

    /// A long-running request's own failure code (from a processor or the
    /// retry policy): codes outside the protocol become `PROCESSING_FAILED`.
    pub fn request_failure(code: &str, message: impl Into<String>) -> Self {
        let code = code.parse().unwrap_or(ErrorCode::ProcessingFailed);
        let grpc = match code {
            ErrorCode::Cancelled => GrpcCode::FailedPrecondition,
            ErrorCode::Timeout => GrpcCode::DeadlineExceeded,
            _ => GrpcCode::Internal,
        };
        Self::new(code, grpc, message)
    }

    /// The same fault with structured detail for the client.
    pub fn with_details(self, details: Value) -> Self {
        Self {
            details: Some(details),
            ..self
        }
    }

    /// The client error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The gRPC code.
    pub fn grpc_code(&self) -> GrpcCode {
        self.grpc
    }

    /// The message callers see.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The fault as the client protocol reports it.
    pub fn client(&self) -> ClientError {
        ClientError {
            code: self.code,
            message: self.message.clone(),
            details: self.details.clone(),
            retry_after: self.retry_after,
        }
    }
}

impl From<Fault> for tonic::Status {
    fn from(fault: Fault) -> Self {
        use tonic::Code;
        let code = match fault.grpc {
            GrpcCode::InvalidArgument => Code::InvalidArgument,
            GrpcCode::NotFound => Code::NotFound,
            GrpcCode::AlreadyExists => Code::AlreadyExists,
            GrpcCode::PermissionDenied => Code::PermissionDenied,
            GrpcCode::Unauthenticated => Code::Unauthenticated,
            GrpcCode::ResourceExhausted => Code::ResourceExhausted,
            GrpcCode::FailedPrecondition => Code::FailedPrecondition,
            GrpcCode::Unavailable => Code::Unavailable,
            GrpcCode::DeadlineExceeded => Code::DeadlineExceeded,
            GrpcCode::Internal => Code::Internal,
        };
        tonic::Status::new(code, fault.message)
    }
}

/// Registry failures. `Unavailable` is retryable; the others are answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("connection already registered")]
    AlreadyExists,
    #[error("tenant connection quota of {limit} reached")]
    QuotaExceeded { limit: u64 },
    #[error("connection not registered")]
    NotFound,
    #[error("a connection may be in at most {limit} groups")]
    GroupLimit { limit: usize },
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

impl From<RegistryError> for Fault {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::AlreadyExists => Fault::new(
                ErrorCode::ValidationError,
                GrpcCode::AlreadyExists,
                "connection already registered",
            ),
            RegistryError::QuotaExceeded { limit } => Fault::new(
                ErrorCode::RateLimited,
                GrpcCode::ResourceExhausted,
                format!("tenant connection quota of {limit} reached"),
            ),
            RegistryError::NotFound => Fault::not_found("connection"),
            RegistryError::GroupLimit { limit } => {
                Fault::precondition(format!("a connection may be in at most {limit} groups"))
            }
            RegistryError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "registry unavailable");
                Fault::unavailable("service temporarily unavailable, retry later")
            }
        }
    }
}

/// Request queue failures. `Unavailable` is retryable; the rest are answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The tenant already used this request id; `user_id` is who owns it.
    #[error("a request with this id exists")]
    Duplicate {
        /// The existing request's status.
        status: &'static str,
        /// Who owns the existing request.
        user_id: String,
    },
    #[error("no such request")]
    NotFound,
    /// The request is in a state that does not allow the transition.
    #[error("the request is {status}")]
    Conflict {
        /// The request's current status.
        status: &'static str,
    },
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The user or the tenant has as many open requests as it may.
    #[error("too many open requests for this {who} (at most {max})")]
    Full {
        /// `user` or `tenant`.
        who: &'static str,
        /// The bound.
        max: u64,
    },
    /// A payload or result over what the store keeps.
    #[error("the {what} is {bytes} bytes; the request store keeps at most {max}")]
    TooLarge {
        /// `payload` or `result`.
        what: &'static str,
        /// Its size (JSON bytes).
        bytes: usize,
        /// The store's limit.
        max: usize,
    },
}

impl QueueError {
    /// The fault as `user_id` may see it: the status of someone else's
    /// request is never revealed.
    pub fn seen_by(self, user_id: &str) -> Fault {
        match self {
            QueueError::Duplicate {
                status,
                user_id: owner,
            } if owner == user_id => Fault::duplicate("a request with this id exists")
                .with_details(json!({ "status": status })),
            other => other.into(),
        }
    }
}

impl From<QueueError> for Fault {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::NotFound => Fault::not_found("request"),
            QueueError::Duplicate { .. } => Fault::duplicate("a request with this id exists"),
            QueueError::Conflict { status } => {
                Fault::precondition(format!("the request is {status}"))
                    .with_details(json!({ "status": status }))
            }
            QueueError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "request queue unavailable");
                Fault::unavailable("service temporarily unavailable, retry later")
            }
            QueueError::Full { who, max } => Fault::rate_limited(
                format!(
                    "this {who} has {max} requests waiting or running, the most it may; send again when some have finished"
                ),
                std::time::Duration::from_secs(5),
            )
            .with_details(json!({ "limit": who, "max": max })),
            QueueError::TooLarge { what, bytes, max } => Fault::too_large(format!(
                "the {what} is {bytes} bytes; the request store keeps at most {max}"
            )),
        }
    }
}

/// Why a processor's report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("this processor does not hold that request")]
    NotHeld,
    #[error("the request was cancelled")]
    Cancelled,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<JobError> for Fault {
    fn from(err: JobError) -> Self {
        match err {
            JobError::NotHeld => Fault::precondition("this processor does not hold that request"),
            JobError::Cancelled => Fault::request_failure("CANCELLED", "the request was cancelled"),
            JobError::Invalid(message) => Fault::invalid(message),
            JobError::Queue(err) => err.into(),
        }
    }
}

/// A Management API call that did not get an answer about the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("management api call failed: {0}")]
pub struct DeliveryError(pub String);

impl From<DeliveryError> for Fault {
    fn from(err: DeliveryError) -> Self {
        tracing::warn!(error = %err, "gateway call failed");
        Fault::unavailable("the gateway did not answer, retry later")
    }
}

/// A page token that was not minted for this query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid page token")]
pub struct InvalidPageToken;

impl From<InvalidPageToken> for Fault {
    fn from(_: InvalidPageToken) -> Self {
        Fault::invalid("invalid page_token: pass the next_page_token of the same query")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fault_reads_the_same_through_both_doors() {
        let fault = Fault::rate_limited("slow down", Duration::from_millis(1_500));
        let status = tonic::Status::from(fault.clone());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "slow down");
        let client = fault.client();
        assert_eq!(client.code, ErrorCode::RateLimited);
        assert_eq!(client.retry_after_secs(), Some(2));

        let status = tonic::Status::from(Fault::from(RegistryError::Unavailable(
            "dynamodb: secret detail".into(),
        )));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("secret"), "{}", status.message());
        let internal = Fault::internal("stack trace");
        assert_eq!(internal.message(), "internal error");
    }

    #[test]
    fn someone_elses_duplicate_reveals_nothing() {
        let dup = || QueueError::Duplicate {
            status: "running",
            user_id: "alice".into(),
        };
        assert_eq!(
            dup().seen_by("alice").client().details,
            Some(json!({"status": "running"}))
        );
        let seen = dup().seen_by("mallory").client();
        assert_eq!(seen.code, ErrorCode::DuplicateRequest);
        assert_eq!(seen.details, None);
    }

    #[test]
    fn request_failure_codes_outside_the_protocol_are_processing_failed() {
        assert_eq!(
            Fault::request_failure("NOPE", "x").code(),
            ErrorCode::ProcessingFailed
        );
        assert_eq!(
            Fault::request_failure("VALIDATION_ERROR", "x").code(),
            ErrorCode::ValidationError
        );
        assert_eq!(
            Fault::request_failure("CANCELLED", "x").code(),
            ErrorCode::Cancelled
        );
    }
}
