//! Relaying a request's frames to its subscribed connections: one relay
//! task per request delivers in order and throttles progress to at most one
//! frame per interval (10/s by default) while always delivering the first,
//! the last and 100%. A request's first frames go out no earlier than
//! [`ACK_HEAD_START`] after it was accepted, so they follow its
//! acknowledgment (the route's answer, which travels through the edge)
//! instead of racing it. Time is tokio's, so tests drive the throttle with
//! paused time.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::{Value, json};
use streamer_proto::client::Frame;
use tokio::{sync::mpsc, time::Instant};

use super::queue::{Failure, ProgressState, Request, Status};
use crate::{
    delivery::{Outcome, PreparedFrame, fanout::Fanout},
    error::Fault,
    registry::Registry,
};

/// How long after a request is accepted its first frames may go out.
pub const ACK_HEAD_START: Duration = Duration::from_millis(100);

/// Per-request progress throttle: the first frame and 100% go at once;
/// others at most once per interval, the latest waiting replaces older ones
/// and goes when the interval ends (or before the final frame).
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: Option<Bytes>,
}

impl Throttle {
    /// A throttle letting one frame through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: None,
        }
    }

    /// Offers a frame at `now`; returns it when it may go now.
    pub fn offer(&mut self, now: Instant, frame: Bytes, force: bool) -> Option<Bytes> {
        let ready = force
            || self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= self.interval);
        if ready {
            self.pending = None;
            self.last_sent = Some(now);
            Some(frame)
        } else {
            self.pending = Some(frame);
            None
        }
    }

    /// When the waiting frame may go.
    pub fn due(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .and(self.last_sent.map(|t| t + self.interval))
    }

    /// The waiting frame, if its time has come.
    pub fn take_due(&mut self, now: Instant) -> Option<Bytes> {
        if self.due().is_some_and(|due| due <= now) {
            self.last_sent = Some(now);
            return self.pending.take();
        }
        None
    }

    /// The waiting frame, whatever the time (before a final frame).
    pub fn flush(&mut self) -> Option<Bytes> {
        self.pending.take()
    }
}

/// A `progress` frame.
pub fn progress_frame(request_id: &str, progress: &ProgressState) -> Bytes {
    Frame::progress(
        request_id,
        progress.percentage,
        &progress.message,
        progress.details.clone(),
    )
    .to_json()
    .into()
}

/// A `complete` frame.
pub fn complete_frame(request_id: &str, result: &Value) -> Bytes {
    Frame::complete(request_id, result.clone()).to_json().into()
}

/// The final `error` frame of a failed or cancelled request; codes outside
/// the protocol's set become `PROCESSING_FAILED`.
pub fn failure_frame(request: &Request) -> Bytes {
    let failure = request.error.clone().unwrap_or(Failure {
        code: "PROCESSING_FAILED".into(),
        message: "request failed".into(),
    });
    let mut fault = Fault::request_failure(&failure.code, failure.message);
    if matches!(request.status, Status::Cancelled | Status::Expired) {
        fault = fault.with_details(json!({"status": request.status.as_str()}));
    }
    Frame::error(Some(&request.request_id), &fault.client())
        .to_json()
        .into()
}

/// A request's state as clients and `subscribe` see it.
pub fn view(request: &Request) -> Value {
    let mut view = json!({
        "request_id": request.request_id,
        "action": request.action,
        "status": request.status.as_str(),
        "attempts": request.attempts,
    });
    if let Some(p) = &request.progress {
        view["progress"] =
            json!({ "percentage": p.percentage, "message": p.message, "details": p.details });
    }
    if let Some(result) = &request.result {
        view["result"] = result.clone();
    }
    if let Some(error) = &request.error {
        view["error"] = json!({ "code": error.code, "message": error.message });
    }
    view
}

/// What a relay is asked to deliver.
pub enum Outgoing {
    /// A progress frame (throttled unless `force`).
    Progress {
        /// The frame.
        frame: Bytes,
        /// Never held back (100%).
        force: bool,
        /// Who gets it.
        subscribers: Vec<String>,
    },
    /// The last frame of the request; the relay ends after it.
    Final {
        /// The frame.
        frame: Bytes,
        /// Who gets it.
        subscribers: Vec<String>,
    },
}

/// Delivers one request's frames in order, throttling progress.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    registry: Arc<dyn Registry>,
    fanout: Arc<Fanout>,
    interval: Duration,
    not_before: Instant,
) {
    // The acknowledgment is the route's answer and travels another path;
    // a head start keeps a fast processor's first frames behind it.
    tokio::time::sleep_until(not_before).await;
    let mut throttle = Throttle::new(interval);
    let mut subscribers: Vec<String> = Vec::new();
    loop {
        let due = throttle.due();
        let out = tokio::select! {
            out = rx.recv() => out,
            () = async { if let Some(due) = due { tokio::time::sleep_until(due).await } else { std::future::pending().await } } => {
                if let Some(frame) = throttle.take_due(Instant::now()) {
                    send(&registry, &fanout, &subscribers, frame).await;
                }
                continue;
            }
        };
        match out {
            None => return,
            Some(Outgoing::Progress {
                frame,
                force,
                subscribers: subs,
            }) => {
                subscribers = subs;
                if let Some(frame) = throttle.offer(Instant::now(), frame, force) {
                    send(&registry, &fanout, &subscribers, frame).await;
                }
            }
            Some(Outgoing::Final {
                frame,
                subscribers: subs,
            }) => {
                if let Some(last) = throttle.flush() {
                    send(&registry, &fanout, &subs, last).await;
                }
                send(&registry, &fanout, &subs, frame).await;
                return;
            }
        }
    }
}

async fn send(
    registry: &Arc<dyn Registry>,
    fanout: &Arc<Fanout>,
    subscribers: &[String],
    frame: Bytes,
) {
    let frame = PreparedFrame::new(frame);
    for subscriber in subscribers {
        // The store refusing a read (throttled, down) is no reason to drop
        // the frame — a request's `complete` among them: asked again with
        // backoff for a few seconds. Found by `streamer-bench slo`, which
        // saw 25 of 1,272 `complete` frames lost under store faults.
        let mut pause = Duration::from_millis(100);
        let mut found = registry.get(subscriber).await;
        for _ in 0..5 {
            if found.is_ok() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            found = registry.get(subscriber).await;
        }
        let connection = match found {
            Ok(Some(connection)) => connection,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "a request's frame was not sent: its subscriber could not be read");
                continue;
            }
        };
        let sent = fanout.send_one(&connection, &frame).await;
        if sent.outcome() == Outcome::Gone
            && crate::delivery::gone_for_good(
                connection.connected_at_ms,
                chrono::Utc::now().timestamp_millis(),
                fanout.connecting_grace(),
            )
        {
            let _ = registry.remove(subscriber).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_keeps_first_last_and_hundred() {
        let mut t = Throttle::new(Duration::from_millis(100));
        let start = Instant::now();
        assert_eq!(
            t.offer(start, b("p1"), false),
            Some(b("p1")),
            "the first goes at once"
        );
        assert_eq!(
            t.offer(start + Duration::from_millis(10), b("p2"), false),
            None
        );
        assert_eq!(
            t.offer(start + Duration::from_millis(20), b("p3"), false),
            None,
            "p3 replaces p2"
        );
        assert_eq!(t.due(), Some(start + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(t.take_due(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            t.take_due(Instant::now()),
            Some(b("p3")),
            "the latest waiting frame goes when due"
        );
        let now = Instant::now();
        assert_eq!(t.offer(now, b("p4"), false), None);
        assert_eq!(
            t.offer(now, b("100%"), true),
            Some(b("100%")),
            "100% is never held back"
        );
        assert_eq!(
            t.offer(now + Duration::from_millis(1), b("p5"), false),
            None
        );
        assert_eq!(
            t.flush(),
            Some(b("p5")),
            "the last is flushed before the final frame"
        );
        // At most one frame per interval otherwise: 1,000 offers in 1 s.
        let mut t = Throttle::new(Duration::from_millis(100));
        let mut sent = 0;
        for i in 0..1000u64 {
            let now = start + Duration::from_millis(i);
            sent += usize::from(t.take_due(now).is_some());
            sent += usize::from(t.offer(now, b(&format!("p{i}")), false).is_some());
        }
        assert!((10..=11).contains(&sent), "{sent} frames in one second");
    }
}
