//! A WebSocket client that follows a group's stream the way the TypeScript
//! client does: it keeps the last offset and epoch it emitted, re-joins
//! with `since` / `epoch` after every reconnect, reorders by offset, and
//! fills a gap that outlasts a short window with `recover`. What it emits is
//! what an application would see.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How long a follower that dropped its connection stays away.
const OFFLINE: Duration = Duration::from_millis(100);

/// How long a gap waits for the late message before `recover`.
const REORDER_WINDOW: Duration = Duration::from_millis(500);

/// What the application saw.
#[derive(Debug, Default, Clone)]
pub struct Follower {
    /// The epoch followed.
    pub epoch: String,
    /// The last offset emitted.
    pub offset: u64,
    held: BTreeMap<u64, Value>,
    /// Every message emitted, in the order emitted: `(offset, data)`.
    pub emitted: Vec<(u64, Value)>,
    /// Every epoch seen on a message.
    pub epochs: BTreeSet<String>,
    /// Answers with `recovered: false`.
    pub resets: Vec<Value>,
    /// Frames received again (live and recovered overlap; not emitted).
    pub duplicates: usize,
    /// Messages that came in a `join` / `recover` answer, not live.
    pub recovered: usize,
}

impl Follower {
    /// A `message` frame (live, or inside a recovery answer).
    pub fn on_message(&mut self, frame: &Value) {
        let offset = frame["offset"]
            .as_u64()
            .expect("a history frame has an offset");
        let epoch = frame["epoch"].as_str().expect("epoch");
        self.epochs.insert(epoch.to_owned());
        if self.epoch.is_empty() {
            self.epoch = epoch.to_owned();
        }
        if offset <= self.offset || self.held.contains_key(&offset) {
            self.duplicates += 1;
            return;
        }
        self.held.insert(offset, frame["data"].clone());
        while let Some(data) = self.held.remove(&(self.offset + 1)) {
            self.offset += 1;
            self.emitted.push((self.offset, data));
        }
    }

    /// The `data` of a `join` / `recover` answer.
    pub fn on_answer(&mut self, data: &Value) {
        match data["recovered"].as_bool() {
            // A plain join: where to follow from.
            None => {
                if self.epoch.is_empty() {
                    self.epoch = data["epoch"].as_str().unwrap_or_default().to_owned();
                    self.offset = data["offset"].as_u64().unwrap_or(0);
                }
            }
            Some(true) => {
                for frame in data["messages"].as_array().expect("messages") {
                    let before = self.duplicates;
                    self.on_message(frame);
                    self.recovered += usize::from(self.duplicates == before);
                }
            }
            Some(false) => {
                self.resets.push(data.clone());
                self.epoch = data["epoch"].as_str().unwrap_or_default().to_owned();
                self.offset = data["offset"].as_u64().unwrap_or(0);
                let offset = self.offset;
                self.held.retain(|o, _| *o > offset);
            }
        }
    }

    /// Whether a gap is open.
    pub fn waiting(&self) -> bool {
        !self.held.is_empty()
    }
}

/// What a running follower shares with the test.
#[derive(Debug, Default)]
pub struct Handle {
    /// The current connection id.
    pub connection_id: Mutex<String>,
    /// Whether the first join was answered.
    pub joined: AtomicBool,
    /// Connections opened after the first.
    pub reconnects: AtomicU32,
}

impl Handle {
    /// The current connection id.
    pub fn connection_id(&self) -> String {
        self.connection_id.lock().expect("lock").clone()
    }
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The gateway's WebSocket URL (the test may change it, e.g. after a
    /// restart).
    pub url: Arc<Mutex<String>>,
    /// The client token.
    pub token: String,
    /// The group to join.
    pub group: String,
    /// Stop once this offset is emitted.
    pub until: u64,
    /// Close the connection from this side once, this long after the start.
    pub drop_after: Option<Duration>,
    /// Give up after this long.
    pub deadline: Duration,
}

async fn send(ws: &mut crate::ws::Ws, frame: Value) -> bool {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .is_ok()
}

/// Runs a follower until it has emitted `plan.until`, reconnecting whenever
/// its connection drops; returns what it emitted.
pub async fn follow(plan: Plan, handle: Arc<Handle>) -> Follower {
    let started = Instant::now();
    let deadline = started + plan.deadline;
    let mut follower = Follower::default();
    let mut dropped = plan.drop_after.is_none();
    let mut first = true;
    let mut asks = 0u64;
    while follower.offset < plan.until {
        assert!(
            Instant::now() < deadline,
            "the follower did not finish in {:?}: at {} of {}",
            plan.deadline,
            follower.offset,
            plan.until
        );
        let url = format!(
            "{}?token={}",
            plan.url.lock().expect("lock").clone(),
            plan.token
        );
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !first {
            handle.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if !send(&mut ws, json!({"id": "who", "action": "whoami"})).await {
            continue;
        }
        let join = if first {
            json!({"group": plan.group})
        } else {
            json!({"group": plan.group, "since": follower.offset, "epoch": follower.epoch})
        };
        first = false;
        if !send(
            &mut ws,
            json!({"id": "join", "action": "join", "payload": join}),
        )
        .await
        {
            continue;
        }
        let mut gap_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while follower.offset < plan.until {
            let drop_at = plan
                .drop_after
                .filter(|_| !dropped)
                .map(|after| started + after);
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text).expect("json frame");
                        match (frame["type"].as_str(), frame["request_id"].as_str()) {
                            (Some("message"), _) => follower.on_message(&frame),
                            (Some("response"), Some("who")) => {
                                *handle.connection_id.lock().expect("lock") =
                                    frame["data"]["connection_id"].as_str().unwrap_or_default().to_owned();
                            }
                            (Some("response"), Some("join")) => {
                                follower.on_answer(&frame["data"]);
                                handle.joined.store(true, Ordering::Relaxed);
                            }
                            (Some("response"), _) => follower.on_answer(&frame["data"]),
                            (Some("pong"), _) => {}
                            _ => panic!("unexpected frame: {frame}"),
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                () = tokio::time::sleep_until(drop_at.unwrap_or(deadline)), if drop_at.is_some() => {
                    dropped = true;
                    let _ = ws.close(None).await;
                    // Offline a moment, as a phone changing networks is.
                    tokio::time::sleep(OFFLINE).await;
                    break;
                }
                _ = tick.tick() => {
                    if !follower.waiting() {
                        gap_since = None;
                    } else if gap_since.is_some_and(|t| t.elapsed() >= REORDER_WINDOW) {
                        asks += 1;
                        let recover = json!({
                            "id": format!("recover-{asks}"),
                            "action": "recover",
                            "payload": {"stream": format!("group:{}", plan.group), "since": follower.offset, "epoch": follower.epoch},
                        });
                        if !send(&mut ws, recover).await {
                            break;
                        }
                        gap_since = Some(Instant::now());
                    } else if gap_since.is_none() {
                        gap_since = Some(Instant::now());
                    }
                }
            }
        }
    }
    follower
}
