//! Bearer-token authentication for gRPC clients of the control plane.

use tonic::{Request, Status, metadata::MetadataValue};

/// The token cannot be sent as gRPC metadata (it is not visible ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token is not valid header text")
    }
}

impl std::error::Error for InvalidToken {}

/// Adds `authorization: Bearer <token>` to every call (nothing, for a
/// client that proves who it is with its TLS certificate instead).
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// The metadata value for `token`.
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| InvalidToken)?;
        Ok(Self(Some(value)))
    }

    /// No token: the client's certificate says who it is.
    pub fn none() -> Self {
        Self(None)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
