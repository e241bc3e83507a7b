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
    activity: Arc<Activity>,
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

/// Accepted connections from `listener`, each guarded.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: TransportConfig,
) -> impl futures_util::Stream<Item = io::Result<Guarded>> {
    futures_util::stream::unfold(listener, move |listener| {
        let config = config.clone();
        async move {
            let accepted = listener.accept().await;
            Some((accepted.map(|(s, _)| Guarded::new(s, config)), listener))
        }
    })
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
