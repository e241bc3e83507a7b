//! Every request/response HTTP listener of Streamer (the web console,
//! `/metrics`) is served by [`serve`], so each one has the same defences
//! and the next listener cannot forget one:
//!
//! - a cap on connections at once, and a lower one per client address, so
//!   one address cannot take every slot;
//! - a deadline for the request head, and a floor rate for the body after
//!   a grace period (a body dripped a byte at a time is cut);
//! - a connection with no request in flight for the idle timeout is
//!   closed (HTTP/2: GOAWAY), and HTTP/2 PINGs find dead peers;
//! - a declared `Content-Length` over the route's limit is answered 413 at
//!   once, before any of the body is read ([`limit_body`]);
//! - TLS when configured ([`tls`]), with the handshake under the same
//!   deadline and certificates re-read when their files change.
//!
//! The gRPC port has its own transport (tonic's), with the same rules
//! (`control-plane/src/api/transport.rs`). The gateway's listeners have
//! their own accept loop (`streamer_edge::gateway`: an upgraded WebSocket
//! outlives its HTTP connection, and its limits are per socket), with this
//! crate's [`tls`] and the same head deadline.

#![forbid(unsafe_code)]

pub mod body;
pub mod pki;
pub mod tls;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    time::Instant,
};
use tower::ServiceExt;

pub use body::limit_body;

/// The limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// What the listener is, for logs.
    pub name: &'static str,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address (below `max_connections`).
    pub max_connections_per_ip: usize,
    /// The request head (and the TLS handshake) must arrive within this.
    pub header_timeout: Duration,
    /// After `body_grace`, a request body must average at least this many
    /// bytes a second, or it is cut.
    pub body_min_bytes_per_sec: u64,
    /// How long a body may take before the floor rate applies.
    pub body_grace: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
}

impl Limits {
    /// The defaults for a listener named `name`: 256 connections, 16 per
    /// address, 10 s for the head, 1 KiB/s after 10 s for a body, 60 s
    /// idle, PINGs every 30 s answered within 10 s.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            max_connections: 256,
            max_connections_per_ip: 16,
            header_timeout: Duration::from_secs(10),
            body_min_bytes_per_sec: 1024,
            body_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// How many connections each address holds now.
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// A connection's place in [`PerIp`], given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut held = self.0.lock().ok()?;
        let count = held.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.table.0.lock()
            && let Some(count) = held.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// What a connection is doing: requests in flight, and since when it has
/// had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    quiet_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            quiet_since: Mutex::new(Instant::now()),
        })
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.quiet_since
            .lock()
            .ok()
            .map(|since| now.saturating_duration_since(*since))
    }
}

/// A request in flight on a connection; the connection is quiet again when
/// the last one ends (its response written).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && let Ok(mut since) = self.0.quiet_since.lock()
        {
            *since = Instant::now();
        }
    }
}

/// Serves `router` on `listener` with `limits` (and TLS when `tls` is
/// given) until `shutdown` resolves; open connections then get a few
/// seconds to finish. Each request carries `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(
        listener = limits.name,
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        "listening"
    );
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.keepalive_interval))
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let open = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let limits = Arc::new(limits);
    let acceptor = tls.map(|t| t.acceptor());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.as_mut() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(listener = limits.name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let Some(ip_slot) = per_ip.take(peer.ip(), limits.max_connections_per_ip) else {
            tracing::info!(listener = limits.name, peer = %peer, "connection refused: this address holds its share of the listener's connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let limits = limits.clone();
        let router = router.clone();
        let acceptor = acceptor.clone();
        let stopping = stopping.clone();
        open.spawn(async move {
            let _held = (slot, ip_slot);
            match acceptor {
                None => connection(stream, peer, router, &builder, &limits, stopping).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            connection(tls, peer, router, &builder, &limits, stopping).await;
                        }
                        Ok(Err(err)) => {
                            tracing::info!(listener = limits.name, peer = %peer, error = %err, "tls handshake refused");
                        }
                        Err(_) => {
                            tracing::info!(listener = limits.name, peer = %peer, "tls handshake not finished in time");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    open.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), open.wait()).await;
    Ok(())
}

/// Serves one connection: requests counted for the idle rule, bodies under
/// the floor rate, closed gracefully when idle or when the server stops.
async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    limits: &Limits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let body_limits = (limits.body_min_bytes_per_sec, limits.body_grace);
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let in_flight = InFlight::start(&in_service);
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let request = request.map(|incoming| {
                axum::body::Body::new(body::MinRate::new(incoming, body_limits.0, body_limits.1))
            });
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            // The request counts until its response body is written.
            Ok::<_, Infallible>(
                response.map(|b| axum::body::Body::new(body::Held::new(b, in_flight))),
            )
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    let check = limits
        .idle_timeout
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(100));
    let mut closing = false;
    // A peer that does not finish after a graceful close (a GOAWAY it
    // ignores, a handshake it never completes) is cut off after this.
    let cut_off = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(cut_off);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = cut_off.as_mut(), if closing => {
                tracing::debug!(listener = limits.name, peer = %peer, "connection cut off after its graceful close");
                return;
            }
            () = tokio::time::sleep(check), if !closing => {
                if activity.idle_for(Instant::now()).is_some_and(|idle| idle >= limits.idle_timeout) {
                    tracing::debug!(listener = limits.name, peer = %peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    cut_off.as_mut().reset(Instant::now() + limits.header_timeout);
                }
            }
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    cut_off.as_mut().reset(Instant::now() + limits.header_timeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share() {
        let table = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let a = table.take(ip, 2).expect("first");
        let _b = table.take(ip, 2).expect("second");
        assert!(table.take(ip, 2).is_none(), "third from the same address");
        assert!(table.take(other, 2).is_some(), "another address");
        drop(a);
        assert!(table.take(ip, 2).is_some(), "a place given back");
    }
}
