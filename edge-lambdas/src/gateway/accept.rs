//! How a connection becomes an HTTP connection on the gateway's listeners:
//! the PROXY protocol header a load balancer puts first (version 2, the
//! binary one a Network Load Balancer sends), then TLS when the listener
//! has a certificate — both within the request-head deadline, off the
//! accept loop, so a slow client holds up no other.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};

/// The PROXY protocol v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block accepted (addresses plus the TLVs a load balancer
/// adds; NLB's are a few dozen bytes).
const MAX_BLOCK: usize = 512;

/// What is wrong with a PROXY header.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection ended or failed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY v2 header (a client reaching the port around the load
    /// balancer, or a v1 text header).
    #[error("no PROXY protocol v2 header")]
    Missing,
    /// A header this gateway does not accept.
    #[error("PROXY header: {0}")]
    Invalid(&'static str),
}

/// Reads a PROXY protocol v2 header from `io` and nothing past it: the
/// client's address it names, or `peer` for a `LOCAL` header (the load
/// balancer's own health checks) and for address families other than
/// TCP over IPv4 / IPv6.
pub async fn read_proxy_header<IO: AsyncRead + Unpin>(
    io: &mut IO,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let mut head = [0u8; 16];
    io.read_exact(&mut head).await?;
    if head[..12] != SIGNATURE {
        return Err(ProxyError::Missing);
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Invalid("version is not 2"));
    }
    let family = head[13];
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_BLOCK {
        return Err(ProxyError::Invalid("address block too long"));
    }
    let mut block = vec![0u8; len];
    io.read_exact(&mut block).await?;
    match command {
        0x0 => return Ok(peer),
        0x1 => {}
        _ => return Err(ProxyError::Invalid("unknown command")),
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port(8)))
        }
        // TCP over IPv6.
        0x21 if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(32),
            ))
        }
        0x11 | 0x21 => Err(ProxyError::Invalid("address block too short")),
        // UNSPEC, UDP, unix sockets: nothing usable; the peer stands.
        _ => Ok(peer),
    }
}

/// Either side of a listener's connection: plain TCP or TLS over it.
pub enum Stream {
    /// No certificate on the listener.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How one listener takes its connections.
#[derive(Clone, Default)]
pub struct Handshake {
    /// TLS with this listener's certificate.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Every connection starts with a PROXY v2 header naming the client.
    pub proxy_protocol: bool,
}

impl Handshake {
    /// The PROXY header (when required), then TLS (when configured), both
    /// within `deadline`: the stream and the client's address.
    pub async fn run(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        deadline: Duration,
    ) -> Option<(Stream, SocketAddr)> {
        let work = async {
            let client = if self.proxy_protocol {
                match read_proxy_header(&mut stream, peer).await {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::info!(peer = %peer, error = %err, "connection refused: PROXY header");
                        return None;
                    }
                }
            } else {
                peer
            };
            let stream = match &self.tls {
                None => Stream::Plain(stream),
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => Stream::Tls(Box::new(tls)),
                    Err(err) => {
                        tracing::info!(peer = %client, error = %err, "tls handshake refused");
                        return None;
                    }
                },
            };
            Some((stream, client))
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(done) => done,
            Err(_) => {
                tracing::info!(peer = %peer, "handshake not finished in time");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).expect("short").to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn peer() -> SocketAddr {
        "10.0.0.9:4000".parse().expect("addr")
    }

    #[tokio::test]
    async fn a_v4_header_names_the_client_and_nothing_past_it_is_read() {
        let mut block = vec![203, 0, 113, 7, 10, 0, 0, 5];
        block.extend_from_slice(&51_000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a TLV, skipped
        let mut input = header(1, 0x11, &block);
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut reader = input.as_slice();
        let client = read_proxy_header(&mut reader, peer())
            .await
            .expect("header");
        assert_eq!(client, "203.0.113.7:51000".parse().expect("addr"));
        assert_eq!(
            reader, b"GET / HTTP/1.1\r\n",
            "the request is left for HTTP"
        );
    }

    #[tokio::test]
    async fn a_v6_header_and_a_local_one() {
        let mut block = "2001:db8::7"
            .parse::<Ipv6Addr>()
            .expect("ip")
            .octets()
            .to_vec();
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0xc3, 0x50, 0x01, 0xbb]);
        let input = header(1, 0x21, &block);
        let client = read_proxy_header(&mut input.as_slice(), peer())
            .await
            .expect("header");
        assert_eq!(client, "[2001:db8::7]:50000".parse().expect("addr"));
        let local = header(0, 0x00, &[]);
        let client = read_proxy_header(&mut local.as_slice(), peer())
            .await
            .expect("local");
        assert_eq!(client, peer(), "a health check names no client");
    }

    #[tokio::test]
    async fn what_is_not_a_v2_header_is_refused() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.5 51000 443\r\n".to_vec();
        assert!(matches!(
            read_proxy_header(&mut v1.as_slice(), peer()).await,
            Err(ProxyError::Missing)
        ));
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(matches!(
            read_proxy_header(&mut http.as_slice(), peer()).await,
            Err(ProxyError::Missing)
        ));
        let short = header(1, 0x11, &[1, 2, 3]);
        assert!(matches!(
            read_proxy_header(&mut short.as_slice(), peer()).await,
            Err(ProxyError::Invalid(_))
        ));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_proxy_header(&mut long.as_slice(), peer()).await,
            Err(ProxyError::Invalid(_))
        ));
        let truncated = header(1, 0x11, &[0; 12]);
        assert!(matches!(
            read_proxy_header(&mut &truncated[..20], peer()).await,
            Err(ProxyError::Io(_))
        ));
    }
}
