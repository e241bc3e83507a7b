//! Exit codes scripts rely on: 0 done; 1 the server refused for another
//! reason; 2 bad usage or input; 3 control plane unreachable or
//! unavailable; 4 missing, bad or insufficient token; 5 not found.

use streamer_client::Error;

/// A failure with its exit code.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::Address(_) | Error::Json(_) | Error::Tls(_) => 2,
            Error::Connect(_) => 3,
            Error::Token => 4,
            Error::Status { code, .. } => match code {
                Code::Unavailable | Code::DeadlineExceeded => 3,
                Code::Unauthenticated | Code::PermissionDenied => 4,
                Code::NotFound => 5,
                Code::InvalidArgument => 2,
                _ => 1,
            },
        };
        let message = match &err {
            Error::Connect(source) => {
                // The cause names a refused TLS handshake (an untrusted
                // certificate, a missing client certificate) apart from a
                // control plane that is not there.
                let mut why = String::new();
                let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(source);
                while let Some(c) = cause {
                    why = c.to_string();
                    cause = c.source();
                }
                let why = if why.is_empty() {
                    source.to_string()
                } else {
                    why
                };
                format!(
                    "cannot reach the control plane: {why} (is it running? check --addr / STREAMER_ADDR, and --ca / --cert / --key for TLS)"
                )
            }
            Error::Status {
                code: tonic::Code::Unauthenticated,
                message,
            } => {
                format!("not authenticated: {message} (check --token / STREAMER_TOKEN)")
            }
            Error::Status {
                code: tonic::Code::NotFound,
                message,
            } => format!("not found: {message}"),
            other => other.to_string(),
        };
        Failure { code, message }
    }
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}
