//! Client fleets spread over processes: one `streamer-bench agent` per
//! gateway holds its WebSockets (a process holds at most ~19,000 sockets
//! here) and reports, per broadcast, how many frames arrived and when the
//! first and the last did (wall-clock microseconds, comparable across
//! processes of one machine).

use std::{
    collections::HashMap,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{DEADLINE, processes::sibling};

/// Wall-clock microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What an agent reports once connected.
#[derive(Debug, Serialize, Deserialize)]
pub struct Connected {
    /// Connect latencies, microseconds.
    pub latencies_us: Vec<u64>,
    /// How long connecting them all took, microseconds.
    pub elapsed_us: u64,
}

/// What an agent reports per broadcast, once all its connections got it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Arrived {
    /// The broadcast.
    pub seq: u64,
    /// Frames received.
    pub count: usize,
    /// First arrival, wall-clock µs.
    pub first_us: u64,
    /// Last arrival, wall-clock µs.
    pub last_us: u64,
}

/// The agent: opens the connections, then reports arrivals until its stdin
/// closes.
pub async fn agent(url: &str, connections: usize, concurrency: usize) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let started = Instant::now();
    let opened: Vec<anyhow::Result<(crate::Ws, u64)>> = stream::iter(0..connections)
        .map(|_| async move {
            let t = Instant::now();
            let (ws, _) =
                tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url)).await??;
            Ok((
                ws,
                u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
            ))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, u64)>();
    let mut latencies_us = Vec::with_capacity(connections);
    let mut closers = Vec::with_capacity(connections);
    for result in opened {
        let (mut ws, latency) = result?;
        latencies_us.push(latency);
        let tx = tx.clone();
        let (close_tx, mut close_rx) = mpsc::channel::<()>(1);
        closers.push(close_tx);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            let at = now_us();
                            if let Ok(value) = serde_json::from_str::<Value>(&text)
                                && let Some(seq) = value["data"]["seq"].as_u64()
                            {
                                let _ = tx.send((seq, at));
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = close_rx.recv() => {
                        let _ = ws.close(None).await;
                        break;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut out = tokio::io::stdout();
    let line = format!(
        "CONNECTED {}\n",
        serde_json::to_string(&Connected {
            latencies_us,
            elapsed_us
        })?
    );
    out.write_all(line.as_bytes()).await?;
    out.flush().await?;
    let mut seen: HashMap<u64, Arrived> = HashMap::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            arrival = rx.recv() => {
                let Some((seq, at)) = arrival else { break };
                let entry = seen.entry(seq).or_insert(Arrived { seq, count: 0, first_us: at, last_us: at });
                entry.count += 1;
                entry.first_us = entry.first_us.min(at);
                entry.last_us = entry.last_us.max(at);
                if entry.count == connections {
                    let line = format!("ARRIVED {}\n", serde_json::to_string(entry)?);
                    out.write_all(line.as_bytes()).await?;
                    out.flush().await?;
                }
            }
            line = stdin.next_line() => match line {
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
    for closer in closers {
        let _ = closer.send(()).await;
    }
    Ok(())
}

/// One agent process, seen from the bench.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    connections: usize,
}

/// Every agent of one fleet.
pub struct Fleet {
    agents: Vec<Agent>,
    arrivals: mpsc::UnboundedReceiver<Arrived>,
    /// Connect latencies of every connection.
    pub latencies: Vec<Duration>,
    /// The slowest agent's time to connect all of its connections.
    pub elapsed: Duration,
}

impl Fleet {
    /// Opens `n` connections with `token`, spread over `urls` (one agent per
    /// gateway URL, each with at most `per_agent`).
    pub async fn open(
        urls: &[String],
        token: &str,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let agents_needed = n
            .div_ceil(crate::processes::PER_PROCESS)
            .max(1)
            .min(urls.len());
        let (tx, arrivals) = mpsc::unbounded_channel();
        let mut agents = Vec::new();
        let mut latencies = Vec::new();
        let mut elapsed = Duration::ZERO;
        let mut pending = Vec::new();
        for (i, url) in urls.iter().take(agents_needed).enumerate() {
            let share = n / agents_needed + usize::from(i < n % agents_needed);
            let mut child = Command::new(sibling("streamer-bench")?)
                .args([
                    "agent",
                    "--url",
                    &format!("{url}?token={token}"),
                    "--connections",
                    &share.to_string(),
                    "--concurrency",
                    &(concurrency / agents_needed).max(1).to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("start an agent")?;
            let stdout = child.stdout.take().context("stdout")?;
            let stdin = child.stdin.take();
            let tx = tx.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<Connected>>();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut ready = Some(ready_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(json) = line.strip_prefix("CONNECTED ")
                        && let Some(ready) = ready.take()
                    {
                        let _ = ready.send(serde_json::from_str(json).map_err(Into::into));
                    } else if let Some(json) = line.strip_prefix("ARRIVED ")
                        && let Ok(arrived) = serde_json::from_str::<Arrived>(json)
                    {
                        let _ = tx.send(arrived);
                    }
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(anyhow::anyhow!("an agent exited before it connected")));
                }
            });
            pending.push(ready_rx);
            agents.push(Agent {
                child,
                stdin,
                connections: share,
            });
        }
        for ready in pending {
            let connected = tokio::time::timeout(DEADLINE * 4, ready).await???;
            latencies.extend(
                connected
                    .latencies_us
                    .iter()
                    .map(|us| Duration::from_micros(*us)),
            );
            elapsed = elapsed.max(Duration::from_micros(connected.elapsed_us));
        }
        Ok(Self {
            agents,
            arrivals,
            latencies,
            elapsed,
        })
    }

    /// Connections in the fleet.
    pub fn size(&self) -> usize {
        self.agents.iter().map(|a| a.connections).sum()
    }

    /// Waits until every connection got broadcast `seq`; first and last
    /// arrival after `t0_us`.
    pub async fn collect(&mut self, seq: u64, t0_us: u64) -> anyhow::Result<(Duration, Duration)> {
        let mut reported = 0;
        let (mut first, mut last) = (u64::MAX, 0u64);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while reported < self.agents.len() {
            match tokio::time::timeout_at(deadline, self.arrivals.recv()).await {
                Ok(Some(arrived)) if arrived.seq == seq => {
                    reported += 1;
                    first = first.min(arrived.first_us);
                    last = last.max(arrived.last_us);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => bail!("broadcast {seq} did not reach every connection"),
            }
        }
        Ok((
            Duration::from_micros(first.saturating_sub(t0_us)),
            Duration::from_micros(last.saturating_sub(t0_us)),
        ))
    }

    /// Closes every connection and ends the agents.
    pub async fn close(mut self) {
        for agent in &mut self.agents {
            drop(agent.stdin.take());
        }
        for mut agent in self.agents {
            let _ = tokio::time::timeout(DEADLINE, agent.child.wait()).await;
        }
    }
}

/// Sends `{"type":"message"...}`-shaped frames with `seq`, as the bench
/// broadcasts them.
pub fn payload(seq: u64, bytes: usize) -> Value {
    serde_json::json!({ "seq": seq, "pad": "x".repeat(bytes) })
}
