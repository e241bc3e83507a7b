//! TLS for the gRPC clients of the control plane (the edge, the Rust
//! client, the processor SDK, `streamerctl`): an `https://` address is
//! reached over TLS, trusting a CA of the operator's (PEM) or the
//! platform's roots, and presenting a client certificate where the control
//! plane asks for one (mutual TLS). A plaintext `http://` address stays
//! plaintext; there is never a fallback from one to the other.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// What a client trusts and presents. Each value is a PEM file's path or
/// the PEM text itself (as a secret or an environment variable holds it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the control plane's certificate; `None`: the
    /// platform's roots.
    pub ca: Option<String>,
    /// A client certificate and its key, for mutual TLS.
    pub identity: Option<(String, String)>,
}

/// Why the TLS settings cannot be used; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsSettingError(pub String);

/// The PEM a setting names: its text when it is PEM, else the file at the
/// path it holds.
pub fn pem(value: &str, setting: &str) -> Result<Vec<u8>, TlsSettingError> {
    let bytes = if value.trim_start().starts_with("-----BEGIN") {
        value.as_bytes().to_vec()
    } else {
        std::fs::read(value)
            .map_err(|e| TlsSettingError(format!("{setting}: cannot read {value}: {e}")))?
    };
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
        return Err(TlsSettingError(format!("{setting}: not PEM")));
    }
    Ok(bytes)
}

impl ClientTls {
    /// From settings looked up by name: `{prefix}_CA`, and
    /// `{cert}` / `{key}` for the client certificate.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        ca: &str,
        cert: &str,
        key: &str,
    ) -> Result<Self, TlsSettingError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let identity = match (get(cert), get(key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsSettingError(format!("{cert} is set; set {key} too")));
            }
            (None, Some(_)) => {
                return Err(TlsSettingError(format!("{key} is set; set {cert} too")));
            }
        };
        Ok(Self {
            ca: get(ca),
            identity,
        })
    }

    /// tonic's TLS configuration; `settings` names (CA, certificate, key)
    /// for errors.
    pub fn config(&self, settings: (&str, &str, &str)) -> Result<ClientTlsConfig, TlsSettingError> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(pem(ca, settings.0)?)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(
                pem(cert, settings.1)?,
                pem(key, settings.2)?,
            ));
        }
        Ok(config)
    }
}

/// An endpoint for `url`: TLS (with `tls`) for `https://`, plaintext for
/// `http://`.
pub fn endpoint(
    url: &str,
    tls: &ClientTls,
    settings: (&str, &str, &str),
) -> Result<Endpoint, TlsSettingError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|_| TlsSettingError(format!("invalid address {url:?}")))?;
    if url.starts_with("https://") {
        endpoint
            .tls_config(tls.config(settings)?)
            .map_err(|e| TlsSettingError(format!("tls for {url}: {e}")))
    } else if tls.ca.is_some() || tls.identity.is_some() {
        Err(TlsSettingError(format!(
            "{url} is not https:// but TLS settings are given ({}); use https://",
            settings.0
        )))
    } else {
        Ok(endpoint)
    }
}
