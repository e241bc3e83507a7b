//! A small certificate authority for local use: `dev --tls` makes one in
//! its state folder (a CA, the server's certificate for loopback, the
//! edge's and a tool's client certificates), and the tests make their own
//! (expired ones, ones from another CA). Never used for a deployment, whose
//! certificates come from ACM or the operator's own PKI.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

use crate::tls::TlsError;

/// A CA that signs leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("cannot make {what}: {e}"))
}

fn offset(at: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at)
}

impl Ca {
    /// A new CA named `name`, valid for `days`.
    pub fn new(name: &str, days: u64) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(|e| err("a CA key", e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("a CA", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(3600));
        params.not_after = offset(now + Duration::from_secs(days * 86_400));
        let cert = params.self_signed(&key).map_err(|e| err("a CA", e))?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate, PEM (what a client or server trusts).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` (DNS names, or IP addresses as IP SANs), valid
    /// from an hour ago until `not_after`.
    pub fn issue_until(&self, names: &[&str], not_after: SystemTime) -> Result<Leaf, TlsError> {
        let key = KeyPair::generate().map_err(|e| err("a key", e))?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .map_err(|e| err("a certificate", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("streamer"),
        );
        params.distinguished_name = dn;
        let now = SystemTime::now();
        params.not_before = offset(now.min(not_after) - Duration::from_secs(3600));
        params.not_after = offset(not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err("a certificate", e))?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A leaf for `names` valid for `days`.
    pub fn issue(&self, names: &[&str], days: u64) -> Result<Leaf, TlsError> {
        self.issue_until(
            names,
            SystemTime::now() + Duration::from_secs(days * 86_400),
        )
    }
}

/// The names the local server certificate is valid for.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files of a local PKI (`dev --tls`).
#[derive(Debug, Clone)]
pub struct LocalPki {
    /// The CA certificate (trust it: `--ca`, `STREAMER_CA`, grpcurl
    /// `-cacert`).
    pub ca: PathBuf,
    /// The server certificate and key (loopback names).
    pub server: (PathBuf, PathBuf),
    /// The edge's client certificate and key (DNS SAN: the edge identity).
    pub edge: (PathBuf, PathBuf),
    /// A client certificate for tools (`streamerctl`, grpcurl, processors).
    pub client: (PathBuf, PathBuf),
}

/// How long local certificates are made for, and how close to their end
/// they are made again.
const LOCAL_DAYS: u64 = 90;
const RENEW_WITHIN: Duration = Duration::from_secs(7 * 86_400);

impl LocalPki {
    /// The PKI in `dir`: the files there when they are all present and not
    /// near their end, else a new CA and certificates (written owner-only).
    pub fn open(dir: &Path, edge_identity: &str) -> Result<Self, TlsError> {
        let pki = Self {
            ca: dir.join("ca.pem"),
            server: (dir.join("server.pem"), dir.join("server-key.pem")),
            edge: (dir.join("edge.pem"), dir.join("edge-key.pem")),
            client: (dir.join("client.pem"), dir.join("client-key.pem")),
        };
        let fresh = [&pki.server.0, &pki.edge.0, &pki.client.0]
            .into_iter()
            .chain([&pki.ca])
            .all(|path| {
                crate::tls::read_certs(path, "local PKI")
                    .ok()
                    .and_then(|certs| certs.first().and_then(crate::tls::not_after))
                    .is_some_and(|end| end > SystemTime::now() + RENEW_WITHIN)
            })
            && [&pki.server.1, &pki.edge.1, &pki.client.1]
                .iter()
                .all(|p| p.exists());
        if fresh {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
        let ca = Ca::new("Streamer local CA", LOCAL_DAYS)?;
        write(&pki.ca, ca.pem())?;
        for ((cert, key), names) in [
            (&pki.server, &LOOPBACK_NAMES[..]),
            (&pki.edge, &[edge_identity][..]),
            (&pki.client, &["streamer-operator"][..]),
        ] {
            let leaf = ca.issue(names, LOCAL_DAYS)?;
            write(cert, &leaf.cert_pem)?;
            write(key, &leaf.key_pem)?;
        }
        Ok(pki)
    }
}

/// Writes `contents` to `path`, readable by its owner only.
pub fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_pki_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("streamer-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = LocalPki::open(&dir, "streamer-edge").expect("made");
        let ca = std::fs::read_to_string(&first.ca).expect("ca");
        let again = LocalPki::open(&dir, "streamer-edge").expect("kept");
        assert_eq!(std::fs::read_to_string(&again.ca).expect("ca"), ca);
        // Each leaf chains to the CA, for the names it is made for.
        let files = crate::tls::ServerFiles {
            cert: first.server.0.clone(),
            key: first.server.1.clone(),
            client_ca: Some(first.ca.clone()),
            settings: ("cert", "key", "ca"),
        };
        crate::tls::ServerTls::load(&files, &[b"h2"]).expect("server material loads");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
