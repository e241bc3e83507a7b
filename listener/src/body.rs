//! Request and response bodies under the listener's rules: a request body
//! that arrives slower than a floor rate is cut ([`MinRate`]); a declared
//! length over a route's limit is refused before a byte is read
//! ([`limit_body`]); a response body keeps its request counted as in
//! flight until it is written ([`Held`]).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body arrived slower than the listener's floor rate")
    }
}

impl std::error::Error for TooSlow {}

/// A request body that must average `min_bytes_per_sec` once `grace` has
/// passed since it started; otherwise it ends with [`TooSlow`] (the
/// connection is then closed by the server). A timer checks even when no
/// bytes come at all.
pub struct MinRate<B> {
    inner: B,
    started: Instant,
    received: u64,
    min_bytes_per_sec: u64,
    grace: Duration,
    check: Pin<Box<Sleep>>,
    done: bool,
}

impl<B> MinRate<B> {
    /// `inner` under the floor rate.
    pub fn new(inner: B, min_bytes_per_sec: u64, grace: Duration) -> Self {
        let started = Instant::now();
        Self {
            inner,
            started,
            received: 0,
            min_bytes_per_sec,
            grace,
            check: Box::pin(tokio::time::sleep_until(started + grace)),
            done: false,
        }
    }

    fn too_slow(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < self.grace || self.min_bytes_per_sec == 0 {
            return false;
        }
        let owed = u128::from(self.min_bytes_per_sec) * elapsed.as_millis() / 1000;
        u128::from(self.received) < owed
    }
}

impl<B> HttpBody for MinRate<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let now = Instant::now();
                if self.too_slow(now) {
                    self.done = true;
                    return Poll::Ready(Some(Err(Box::new(TooSlow))));
                }
                // Look again in a second (or when the grace ends).
                let next = (now + Duration::from_secs(1)).max(self.started + self.grace);
                self.check.as_mut().reset(next);
                let _ = self.check.as_mut().poll(cx);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds `guard` until it is written.
pub struct Held<G> {
    inner: Body,
    _guard: G,
}

impl<G> Held<G> {
    /// `inner`, holding `guard`.
    pub fn new(inner: Body, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> HttpBody for Held<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `router` with request bodies limited to `max_bytes`: a declared
/// `Content-Length` over it is answered 413 at once, before any of the
/// body is read; a body without a declared length is cut at the limit.
pub fn limit_body(router: Router, max_bytes: usize) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request<Body>, next: Next| async move {
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|len| len > max_bytes as u64) {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    [(header::CONNECTION, "close")],
                    format!("request body over {max_bytes} bytes\n"),
                )
                    .into_response();
            }
            let request =
                request.map(|body| Body::new(http_body_util::Limited::new(body, max_bytes)));
            let response: Response = next.run(request).await;
            response
        },
    ))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_dripping_body_is_cut_after_the_grace() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
        let stream = http_body_util::StreamBody::new(tokio_stream_like(rx));
        let mut body = MinRate::new(stream, 1024, Duration::from_secs(10));
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .expect("send");
        assert!(body.frame().await.expect("a frame").is_ok());
        let started = Instant::now();
        let cut = body.frame().await.expect("an end").expect_err("too slow");
        assert!(cut.to_string().contains("floor rate"));
        assert!(started.elapsed() <= Duration::from_secs(11));
        drop(tx);
    }

    /// An mpsc receiver as a stream of frames.
    fn tokio_stream_like(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    ) -> impl futures_like::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
        futures_like::poll_fn(move |cx| rx.poll_recv(cx))
    }

    mod futures_like {
        pub use futures_util::stream::{Stream, poll_fn};
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_the_body() {
        let router = limit_body(
            Router::new().route("/", axum::routing::post(|body: String| async move { body })),
            16,
        );
        let request = Request::post("/")
            .header(header::CONTENT_LENGTH, "1000000000000")
            .body(Body::empty())
            .expect("request");
        let response = tower::ServiceExt::oneshot(router.clone(), request)
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let request = Request::post("/")
            .body(Body::from("small"))
            .expect("request");
        let response = tower::ServiceExt::oneshot(router, request)
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
