//! TLS for Streamer's listeners and its clients, with rustls (aws-lc).
//!
//! A server's certificate and key are PEM files; they are checked at start
//! (readable, PEM, the key matching the certificate, the certificate not
//! expired: each a clear error naming the setting) and re-read when their
//! files change, so a renewal needs no restart: the next handshake after
//! the files are replaced (checked at most once a second) is served the
//! new certificate. A client CA makes the server require a client
//! certificate chaining to it (mutual TLS), refused at the handshake
//! otherwise.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

/// What is wrong with a TLS setting; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// Where a server's TLS material is, and the names of the settings that
/// said so (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    /// Client certificates must chain to these (PEM): mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// The settings' names: certificate, key, client CA.
    pub settings: (&'static str, &'static str, &'static str),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads a PEM certificate chain; `setting` names it in errors.
pub fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{setting}: cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{setting}: {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{setting}: {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The certificate's end of validity, read from its DER (RFC 5280:
/// tbsCertificate.validity.notAfter).
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    der::not_after(cert.as_ref())
}

/// Loads and checks a certificate with its key.
pub fn load_certified(
    cert: &Path,
    key: &Path,
    (cert_setting, key_setting): (&str, &str),
) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert, cert_setting)?;
    if let Some(end) = not_after(&certs[0])
        && end < SystemTime::now()
    {
        let when = chrono_like(end);
        return Err(TlsError(format!(
            "{cert_setting}: the certificate in {} expired ({when})",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError(format!(
            "{key_setting}: {} holds no PEM private key: {e}",
            key.display()
        ))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError(format!("{key_setting}: unusable private key: {e}")))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| {
        TlsError(format!(
            "{key_setting}: the key does not match the certificate in {cert_setting}"
        ))
    })?;
    Ok(certified)
}

fn chrono_like(t: SystemTime) -> String {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("{} s after the Unix epoch", d.as_secs()),
        Err(_) => "before 1970".to_owned(),
    }
}

/// Roots from a PEM file of CA certificates.
pub fn read_roots(path: &Path, setting: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, setting)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{setting}: not a CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Roots from a setting that is a PEM file's path or the PEM text itself
/// (as ECS puts a Secrets Manager secret into the environment).
pub fn roots_from_setting(value: &str, setting: &str) -> Result<RootCertStore, TlsError> {
    if !value.trim_start().starts_with("-----BEGIN") {
        return read_roots(Path::new(value), setting);
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(value.as_bytes()) {
        let cert = cert.map_err(|e| TlsError(format!("{setting}: not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{setting}: not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError(format!("{setting}: holds no PEM certificate")));
    }
    Ok(roots)
}

/// How often a server looks at its certificate files.
const RECHECK: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(1)
};

/// The certificate a server presents, re-read when its files change.
#[derive(Debug)]
struct Reloading {
    files: ServerFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// When the files were last looked at, and their times then.
    seen: Mutex<(Instant, Option<SystemTime>, Option<SystemTime>)>,
}

impl Reloading {
    fn maybe_reload(&self) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.0.elapsed() < RECHECK {
            return;
        }
        seen.0 = Instant::now();
        let (cert_time, key_time) = (modified(&self.files.cert), modified(&self.files.key));
        if (cert_time, key_time) == (seen.1, seen.2) {
            return;
        }
        match load_certified(
            &self.files.cert,
            &self.files.key,
            (self.files.settings.0, self.files.settings.1),
        ) {
            Ok(certified) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(certified);
                }
                *seen = (seen.0, cert_time, key_time);
                tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded");
            }
            // A half-written pair: keep serving the old one, look again.
            Err(err) => {
                tracing::warn!(error = %err, "tls certificate not reloaded; still serving the previous one")
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        self.current.read().ok().map(|c| c.clone())
    }
}

/// A server's TLS: its rustls configuration.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// Whether clients must present a certificate.
    pub mutual: bool,
}

impl ServerTls {
    /// Loads and checks `files`; the configuration offers `alpn`.
    pub fn load(files: &ServerFiles, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let certified = load_certified(
            &files.cert,
            &files.key,
            (files.settings.0, files.settings.1),
        )?;
        let resolver = Arc::new(Reloading {
            files: files.clone(),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new((Instant::now(), modified(&files.cert), modified(&files.key))),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("tls: {e}")))?;
        let mut config = match &files.client_ca {
            Some(ca) => {
                let roots = read_roots(ca, files.settings.2)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError(format!("{}: {e}", files.settings.2)))?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(resolver)
            }
            None => builder.with_no_client_auth().with_cert_resolver(resolver),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            mutual: files.client_ca.is_some(),
        })
    }

    /// The rustls configuration (for tonic's port).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// An acceptor for the listeners.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// What a client trusts and presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// Trust these CAs (PEM); `None`: the platform's roots.
    pub ca: Option<PathBuf>,
    /// Present this certificate and key (PEM) where the server asks.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The settings' names: CA, certificate, key.
    pub settings: (&'static str, &'static str, &'static str),
}

/// A client's rustls configuration from `files`, offering `alpn`.
pub fn client_config(
    files: &ClientFiles,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match &files.ca {
        Some(ca) => read_roots(ca, files.settings.0)?,
        None => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("tls: {e}")))?
        .with_root_certificates(roots);
    let mut config = match &files.identity {
        Some((cert, key)) => {
            let certified = load_certified(cert, key, (files.settings.1, files.settings.2))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| TlsError(format!("{}: {e}", files.settings.2)))?;
            builder
                .with_client_auth_cert(certified.cert.clone(), key_der)
                .map_err(|e| TlsError(format!("{}: {e}", files.settings.2)))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Just enough DER to find a certificate's notAfter.
mod der {
    use std::time::{Duration, SystemTime};

    /// (tag, content, rest) of the first element of `bytes`.
    fn element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    pub(super) fn not_after(cert: &[u8]) -> Option<SystemTime> {
        let (_, certificate, _) = element(cert)?;
        let (_, tbs, _) = element(certificate)?;
        let mut rest = tbs;
        // [0] version (optional), serialNumber, signature, issuer.
        let (tag, _, after) = element(rest)?;
        if tag == 0xa0 {
            rest = after;
        }
        for _ in 0..3 {
            rest = element(rest)?.2;
        }
        let (_, validity, _) = element(rest)?;
        let (_, _, after_not_before) = element(validity)?;
        let (tag, time, _) = element(after_not_before)?;
        parse_time(tag, std::str::from_utf8(time).ok()?)
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ).
    fn parse_time(tag: u8, text: &str) -> Option<SystemTime> {
        let digits = text.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 => {
                let yy: i64 = digits.get(..2)?.parse().ok()?;
                (
                    if yy >= 50 { 1900 + yy } else { 2000 + yy },
                    digits.get(2..)?,
                )
            }
            0x18 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
            _ => return None,
        };
        let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
        let (month, day, hour, minute, second) =
            (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
        let secs = u64::try_from(secs).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn times_parse() {
            let t = parse_time(0x17, "300101000000Z").expect("utc");
            assert_eq!(
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after")
                    .as_secs(),
                1_893_456_000
            );
            let g = parse_time(0x18, "20300101000000Z").expect("generalized");
            assert_eq!(t, g);
            assert!(parse_time(0x17, "garbage").is_none());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA, and a leaf it signed for `127.0.0.1` valid `days` from now
    /// (negative: expired), written as PEM files in `dir`: (ca, cert, key).
    pub(crate) fn write_certs(dir: &Path, name: &str, days: i64) -> (PathBuf, PathBuf, PathBuf) {
        let ca = crate::pki::Ca::new("test CA", 30).expect("ca");
        let span = std::time::Duration::from_secs(days.unsigned_abs() * 86_400);
        let now = SystemTime::now();
        let end = if days >= 0 { now + span } else { now - span };
        let leaf = ca.issue_until(&["127.0.0.1"], end).expect("leaf");
        let paths = (
            dir.join(format!("{name}-ca.pem")),
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&paths.0, ca.pem()).expect("write");
        std::fs::write(&paths.1, leaf.cert_pem).expect("write");
        std::fs::write(&paths.2, leaf.key_pem).expect("write");
        paths
    }

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("streamer-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    const NAMES: (&str, &str, &str) = (
        "STREAMER_TLS_CERT",
        "STREAMER_TLS_KEY",
        "STREAMER_TLS_CLIENT_CA",
    );

    #[test]
    fn bad_material_is_a_clear_error_naming_the_setting() {
        let dir = dir("bad");
        let (ca, cert, key) = write_certs(&dir, "good", 30);
        let (_, other_cert, _) = write_certs(&dir, "other", 30);
        let (_, old_cert, old_key) = write_certs(&dir, "old", -1);
        let files = |cert: &Path, key: &Path, ca: Option<&Path>| ServerFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: ca.map(Path::to_owned),
            settings: NAMES,
        };
        assert!(ServerTls::load(&files(&cert, &key, Some(&ca)), &[]).is_ok());
        let err = |f: ServerFiles| ServerTls::load(&f, &[]).expect_err("refused").0;
        let mismatch = err(files(&other_cert, &key, None));
        assert!(
            mismatch.contains("STREAMER_TLS_KEY") && mismatch.contains("does not match"),
            "{mismatch}"
        );
        let expired = err(files(&old_cert, &old_key, None));
        assert!(
            expired.contains("STREAMER_TLS_CERT") && expired.contains("expired"),
            "{expired}"
        );
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "this is not PEM").expect("write");
        let ca_err = err(files(&cert, &key, Some(&not_pem)));
        assert!(ca_err.contains("STREAMER_TLS_CLIENT_CA"), "{ca_err}");
        let missing = err(files(&dir.join("nope.pem"), &key, None));
        assert!(missing.contains("STREAMER_TLS_CERT"), "{missing}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_replaced_certificate_is_served_to_the_next_handshake() {
        let dir = dir("reload");
        let (_, cert, key) = write_certs(&dir, "first", 30);
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
            settings: NAMES,
        };
        let first = read_certs(&cert, "c").expect("first")[0].clone();
        let resolver = Reloading {
            files: files.clone(),
            current: RwLock::new(Arc::new(
                load_certified(&cert, &key, ("c", "k")).expect("load"),
            )),
            seen: Mutex::new((Instant::now(), modified(&cert), modified(&key))),
        };
        let (_, cert2, key2) = write_certs(&dir, "second", 30);
        let second = read_certs(&cert2, "c").expect("second")[0].clone();
        // Replaced as a renewal job does: new files moved into place (the
        // times move on even within one second of the first write).
        std::fs::copy(&cert2, &cert).expect("copy");
        std::fs::copy(&key2, &key).expect("copy");
        let later = SystemTime::now() + Duration::from_secs(5);
        for path in [&cert, &key] {
            std::fs::File::options()
                .append(true)
                .open(path)
                .and_then(|f| f.set_modified(later))
                .expect("touch");
        }
        assert_ne!(first, second);
        resolver.maybe_reload();
        let served = resolver.current.read().expect("lock").cert[0].clone();
        assert_eq!(served, second, "the new certificate is served");
        assert!(not_after(&second).is_some_and(|t| t > SystemTime::now()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
