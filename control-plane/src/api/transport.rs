//! The gRPC port's own defences and conventions, below the services:
//!
//! - every accepted TCP connection is [`Guarded`]: one that has not sent the
//!   HTTP/2 preface and its first frame within the handshake timeout is
//!   closed, and so is one with no call in flight for the idle timeout
//!   (HTTP/2 keepalive PINGs, configured on the server, catch dead peers);
//! - the [`Conventions`] layer counts calls per connection for the idle
//!   rule, and reports tonic's own refusals with the conventional codes: a
//!   message that does not decode is `INVALID_ARGUMENT` (tonic says
//!   `INTERNAL`), one over the size limit `RESOURCE_EXHAUSTED` (tonic says
//!   `OUT_OF_RANGE`).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tonic::transport::server::Connected;

use crate::config::TransportConfig;

/// HTTP/2's client preface plus the header of its first frame (SETTINGS).
const HANDSHAKE_BYTES: usize = 24 + 9;

/// What a connection has been doing, shared between its IO and its calls.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    calls: AtomicUsize,
    /// Milliseconds after `born` of the last call start or end.
    last_change_ms: AtomicI64,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            calls: AtomicUsize::new(0),
            last_change_ms: AtomicI64::new(0),
        }
    }

    fn touch(&self) {
        let ms = crate::clock::ms(self.born.elapsed());
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_since(&self) -> Instant {
        let ms = self.last_change_ms.load(Ordering::Relaxed);
        self.born + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

/// The connection info every call of a guarded connection carries.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer.
    pub remote: Option<SocketAddr>,
    /// The DNS names of the client certificate the peer presented (mutual
    /// TLS; verified against the client CA at the handshake).
    pub client_names: Arc<[String]>,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The connection info tonic stores in a request's extensions.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&ConnInfo> {
        request.extensions().get::<ConnInfo>()
    }
}

/// A TCP connection with handshake and idle deadlines.
pub struct Guarded {
    inner: TcpStream,
    info: ConnInfo,
    config: TransportConfig,
    read: usize,
    timer: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("remote", &self.info.remote)
            .finish_non_exhaustive()
    }
}

impl Guarded {
    /// Guards `stream` with `config`'s deadlines.
    pub fn new(stream: TcpStream, config: TransportConfig) -> Self {
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            remote: stream.peer_addr().ok(),
            client_names: Arc::from(Vec::new()),
            activity: Arc::new(Activity::new()),
        };
        let first = Instant::now() + config.handshake_timeout;
        Self {
            inner: stream,
            info,
            config,
            read: 0,
            timer: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// The next moment a rule may close the connection, or why it must close now.
    fn next_deadline(&self, now: Instant) -> Result<Option<Instant>, &'static str> {
        if self.read < HANDSHAKE_BYTES {
            let deadline = self.info.activity.born + self.config.handshake_timeout;
            return if now >= deadline {
                Err("no HTTP/2 handshake within the handshake timeout")
            } else {
                Ok(Some(deadline))
            };
        }
        let Some(idle) = self.config.idle_timeout else {
            return Ok(None);
        };
        if self.info.activity.calls.load(Ordering::Relaxed) > 0 {
            return Ok(Some(now + idle));
        }
        let deadline = self.info.activity.quiet_since() + idle;
        if now >= deadline {
            Err("idle timeout")
        } else {
            Ok(Some(deadline))
        }
    }

    /// Closes the connection when a deadline passed; otherwise arms the timer.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            match self.next_deadline(Instant::now()) {
                Err(why) => {
                    tracing::debug!(remote = ?self.info.remote, why, "closing grpc connection");
                    return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                }
                Ok(Some(deadline)) => self.timer.as_mut().reset(deadline),
                Ok(None) => {
                    // No rule applies any more: park the timer far away.
                    self.timer
                        .as_mut()
                        .reset(Instant::now() + Duration::from_secs(86_400));
                }
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(err) = this.check(cx) {
            return Poll::Ready(Err(err));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.read = this.read.saturating_add(buf.filled().len() - before);
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// A connection of the gRPC port: plain, or TLS over a guarded one.
pub enum Conn {
    /// Plain TCP.
    Plain(Guarded),
    /// TLS.
    Tls(Box<tokio_rustls::server::TlsStream<Guarded>>, ConnInfo),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Plain(g) => g.fmt(f),
            Conn::Tls(_, info) => f.debug_struct("Tls").field("remote", &info.remote).finish(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_read(cx, buf),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_write(cx, buf),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_flush(cx),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(g) => Pin::new(g).poll_shutdown(cx),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Conn::Plain(g) => g.info.clone(),
            Conn::Tls(_, info) => info.clone(),
        }
    }
}

/// The DNS names (subject alternative names) of a verified certificate.
fn dns_names(cert: &rustls::pki_types::CertificateDer<'_>, wanted: &[&str]) -> Vec<String> {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    wanted
        .iter()
        .filter(|name| {
            rustls::pki_types::ServerName::try_from(**name)
                .is_ok_and(|server| end_entity.verify_is_valid_for_subject_name(&server).is_ok())
        })
        .map(|name| (*name).to_owned())
        .collect()
}

/// Accepted connections from `listener`, each guarded, and with `tls`
/// (when given) each through its TLS handshake, within the handshake
/// timeout; handshakes run side by side, so a slow one holds up no other.
/// `names` are the certificate names the port cares about (the edge's).
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: TransportConfig,
    tls: Option<streamer_listener::tls::ServerTls>,
    names: Vec<String>,
) -> impl futures_util::Stream<Item = io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    let names: Arc<[String]> = Arc::from(names);
    tokio::spawn(async move {
        let acceptor = tls
            .as_ref()
            .map(streamer_listener::tls::ServerTls::acceptor);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::debug!(error = %err, "grpc accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let guarded = Guarded::new(stream, config.clone());
            let Some(acceptor) = acceptor.clone() else {
                if tx.send(Ok(Conn::Plain(guarded))).await.is_err() {
                    return;
                }
                continue;
            };
            let (tx, names, timeout) = (tx.clone(), names.clone(), config.handshake_timeout);
            tokio::spawn(async move {
                let mut info = guarded.info.clone();
                match tokio::time::timeout(timeout, acceptor.accept(guarded)).await {
                    Ok(Ok(tls)) => {
                        if let Some(cert) =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                        {
                            let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
                            info.client_names = Arc::from(dns_names(cert, &wanted));
                        }
                        let _ = tx.send(Ok(Conn::Tls(Box::new(tls), info))).await;
                    }
                    Ok(Err(err)) => {
                        tracing::info!(remote = ?info.remote, error = %err, "grpc tls handshake refused");
                    }
                    Err(_) => {
                        tracing::info!(remote = ?info.remote, "grpc tls handshake not finished in time");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Ends a call: one fewer in flight on its connection.
struct CallGuard(Option<Arc<Activity>>);

impl CallGuard {
    fn start(activity: Option<Arc<Activity>>) -> Self {
        if let Some(activity) = &activity {
            activity.calls.fetch_add(1, Ordering::Relaxed);
            activity.touch();
        }
        Self(activity)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(activity) = &self.0 {
            activity.calls.fetch_sub(1, Ordering::Relaxed);
            activity.touch();
        }
    }
}

/// A response body that keeps its call counted until it is done.
pub struct TrackedBody<B> {
    inner: B,
    _guard: CallGuard,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The layer: call counting and conventional status codes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conventions;

impl<S> tower::Layer<S> for Conventions {
    type Service = ConventionsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConventionsService { inner }
    }
}

/// The service of [`Conventions`].
#[derive(Debug, Clone)]
pub struct ConventionsService<S> {
    inner: S,
}

/// tonic's refusal statuses mapped to the conventional codes.
fn conventional(status: &str, message: &str) -> Option<&'static str> {
    match status {
        // INTERNAL for a message that does not decode: INVALID_ARGUMENT.
        "13" if message.starts_with("failed+to+decode")
            || message.starts_with("failed%20to%20decode")
            || message.starts_with("failed to decode") =>
        {
            Some("3")
        }
        // OUT_OF_RANGE for a message over the limit: RESOURCE_EXHAUSTED.
        "11" if message.contains("too%20large")
            || message.contains("too+large")
            || message.contains("too large") =>
        {
            Some("8")
        }
        _ => None,
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<tonic::body::Body>> for ConventionsService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let guard = CallGuard::start(
            request
                .extensions()
                .get::<ConnInfo>()
                .map(|info| info.activity.clone()),
        );
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            let headers = response.headers_mut();
            let mapped = match (headers.get("grpc-status"), headers.get("grpc-message")) {
                (Some(status), message) => conventional(
                    status.to_str().unwrap_or_default(),
                    message.and_then(|m| m.to_str().ok()).unwrap_or_default(),
                ),
                _ => None,
            };
            if let Some(code) = mapped {
                headers.insert("grpc-status", http::HeaderValue::from_static(code));
            }
            Ok(response.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_refusals_get_the_conventional_codes() {
        assert_eq!(
            conventional("13", "failed%20to%20decode%20Protobuf%20message"),
            Some("3")
        );
        assert_eq!(
            conventional("11", "Error,%20decoded%20message%20length%20too%20large"),
            Some("8")
        );
        assert_eq!(conventional("13", "internal error"), None);
        assert_eq!(conventional("3", "bad"), None);
    }
}
