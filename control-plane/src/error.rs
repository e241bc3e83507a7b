//! Server API errors and their one mapping to gRPC status codes.

use crate::{pagetoken::InvalidPageToken, registry::RegistryError};

/// Everything a server API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::AlreadyExists => {
                ApiError::AlreadyExists("connection already registered".into())
            }
            RegistryError::QuotaExceeded { limit } => {
                ApiError::ResourceExhausted(format!("tenant connection quota of {limit} reached"))
            }
            RegistryError::NotFound => ApiError::NotFound("connection"),
            RegistryError::GroupLimit { limit } => ApiError::FailedPrecondition(format!(
                "a connection may be in at most {limit} groups"
            )),
            RegistryError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "registry unavailable");
                ApiError::Unavailable("registry unavailable, retry later".into())
            }
        }
    }
}

impl From<InvalidPageToken> for ApiError {
    fn from(_: InvalidPageToken) -> Self {
        ApiError::InvalidArgument(
            "invalid page_token: pass the next_page_token of the same query".into(),
        )
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        use tonic::Status;
        match err {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
