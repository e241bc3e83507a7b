//! `streamer-bench slo`: the seed's business targets, measured on the real
//! processes under the seed's chaos.
//!
//! A fleet of `streamer-control-plane serve` replicas on DynamoDB (moto)
//! behind one `streamer-gateway`, with a fault-injecting proxy on every
//! hop between them: gateway → each replica (the edge's gRPC calls), the
//! replicas → DynamoDB, the replicas → the gateway's Management API. Four
//! workloads run throughout, as users and services would:
//!
//! - **history followers**: clients of a group whose stream keeps history,
//!   re-joining with `since` / `epoch` after every reconnect and filling a
//!   gap with `recover`, as the TypeScript client does; a service publishes
//!   to the group with an idempotency key and retries until it is answered;
//! - **plain broadcasts** to a tenant of 1,000 connections every 2 s;
//! - **async requests** with progress, worked by a processor on each
//!   replica;
//! - **connect / echo / disconnect churn**.
//!
//! The run is cut into eight equal windows: calm, edge latency, edge resets
//! and timeouts, DynamoDB throttling (30%), a 10 s DynamoDB outage, a
//! Management API 429 storm (half the calls), a replica SIGKILLed and
//! restarted, calm again. It prints each window's figures, the whole run's,
//! and a verdict against the seed's targets; it exits 1 when a target is
//! missed.

use std::{
    collections::{BTreeMap, HashMap},
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use streamer_client::{
    ClientTls,
    processor::{ActionSpec, Processor},
    token::generate_rsa_key_pair,
};
use streamer_proto::{auth::BearerToken, v1};
use streamer_test_kit::faults::{HttpFaults, HttpMode, Injected, TcpFaults, TcpMode};
use tokio::{
    process::{Child, Command},
    sync::watch,
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::Message;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    ADMIN_TOKEN, EDGE_TOKEN, Ws,
    keys::dynamodb_env,
    processes::{free_port, healthy, ready_line, sibling},
    report::percentiles,
    token_with,
};

/// The seed's targets.
const RELIABILITY: f64 = 0.9999;
const DELIVERY: f64 = 0.9995;
const BROADCAST_P50_MS: f64 = 100.0;
const ERROR_RATE: f64 = 0.001;

/// The history followers' group, its stream and tenant.
const FEED: &str = "news-feed";
const FEED_STREAM: &str = "group:news-feed";
const FEED_TENANT: &str = "slo-feed";
const AUDIENCE_TENANT: &str = "slo-audience";
const REQUEST_TENANT: &str = "slo-requests";
const CHURN_TENANT: &str = "slo-churn";
/// A message to the feed every 200 ms; a broadcast to the audience every 2 s.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
const BROADCAST_EVERY: Duration = Duration::from_secs(2);
/// The longest a client waits for one answer before it counts an error.
const ANSWER: Duration = Duration::from_secs(15);

/// What `slo` is asked.
#[derive(clap::Args, Debug, Clone)]
pub struct SloArgs {
    /// How long to run, in minutes (eight equal fault windows).
    #[arg(long, default_value_t = 15.0)]
    pub minutes: f64,
    /// Control-plane replicas.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Clients following a history stream.
    #[arg(long, default_value_t = 50)]
    pub followers: usize,
    /// Connections each plain broadcast reaches.
    #[arg(long, default_value_t = 1000)]
    pub recipients: usize,
    /// Clients making async requests.
    #[arg(long, default_value_t = 8)]
    pub requesters: usize,
    /// The DynamoDB-compatible server (moto) the fleet uses.
    #[arg(long, env = "STREAMER_BENCH_DYNAMODB_ENDPOINT")]
    pub dynamodb: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Fail only on a missed correctness guarantee (exactly once, nothing
    /// dropped, reports exact); speed targets are printed, not enforced (a
    /// debug build, a loaded machine).
    #[arg(long)]
    pub correctness_only: bool,
}

impl SloArgs {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.minutes.max(0.5) * 60.0)
    }
}

/// The eight parts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Calm,
    EdgeLatency,
    EdgeFailures,
    StoreThrottling,
    StoreOutage,
    ManagementStorm,
    ReplicaKilled,
    Recovery,
}

const WINDOWS: [Window; 8] = [
    Window::Calm,
    Window::EdgeLatency,
    Window::EdgeFailures,
    Window::StoreThrottling,
    Window::StoreOutage,
    Window::ManagementStorm,
    Window::ReplicaKilled,
    Window::Recovery,
];

impl Window {
    fn name(self) -> &'static str {
        match self {
            Self::Calm => "calm",
            Self::EdgeLatency => "edge latency",
            Self::EdgeFailures => "edge resets + timeouts",
            Self::StoreThrottling => "DynamoDB throttling",
            Self::StoreOutage => "DynamoDB outage",
            Self::ManagementStorm => "429 storm",
            Self::ReplicaKilled => "replica SIGKILL",
            Self::Recovery => "calm again",
        }
    }

    fn fault(self) -> &'static str {
        match self {
            Self::Calm | Self::Recovery => "none",
            Self::EdgeLatency => "+150 ms on every chunk between the gateway and each replica",
            Self::EdgeFailures => {
                "replica 1's edge link reset for a third of the window, then every edge link blackholed 3 s"
            }
            Self::StoreThrottling => "30% of DynamoDB calls answered ThrottlingException",
            Self::StoreOutage => "DynamoDB answers nothing for 10 s (or 2/3 of a short window)",
            Self::ManagementStorm => "half the Management API calls answered 429",
            Self::ReplicaKilled => "replica 1 SIGKILLed, restarted 5 s later on its port",
        }
    }

    fn is_fault(self) -> bool {
        !matches!(self, Self::Calm | Self::Recovery)
    }
}

/// What happened in one window.
#[derive(Debug, Default, Clone)]
struct Tally {
    connects: u64,
    connects_ok: u64,
    drops: u64,
    operations: u64,
    errors: u64,
    published: u64,
    publish_failed: u64,
    publish_retries: u64,
    broadcasts: u64,
    broadcasts_failed: u64,
    /// Client-visible errors by kind.
    kinds: BTreeMap<String, u64>,
}

/// The run's shared state: the window now, and each window's tally.
struct Board {
    window: AtomicUsize,
    tallies: Mutex<Vec<Tally>>,
}

impl Board {
    fn now(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }

    fn add(&self, window: usize, f: impl FnOnce(&mut Tally)) {
        if let Ok(mut tallies) = self.tallies.lock() {
            f(&mut tallies[window]);
        }
    }

    fn here(&self, f: impl FnOnce(&mut Tally)) {
        self.add(self.now(), f);
    }

    fn connect(&self, failure: Option<String>) {
        self.here(|t| {
            t.connects += 1;
            match failure {
                None => t.connects_ok += 1,
                Some(kind) => *t.kinds.entry(format!("connect: {kind}")).or_default() += 1,
            }
        });
    }

    fn ok(&self) {
        self.here(|t| t.operations += 1);
    }

    fn fail(&self, kind: impl Into<String>) {
        let kind = kind.into();
        self.here(|t| {
            t.operations += 1;
            t.errors += 1;
            *t.kinds.entry(kind).or_default() += 1;
        });
    }
}

/// Outcomes the workloads record for the end of the run.
#[derive(Default)]
struct Outcomes {
    /// Published feed messages: seq → the window its first try began in.
    published: BTreeMap<u64, usize>,
    /// What each follower emitted, in order (seqs).
    followers: Vec<Arc<Mutex<Vec<u64>>>>,
    /// Broadcasts: id → (window, sent at, its delivery report).
    broadcasts: BTreeMap<u64, (usize, Instant, v1::DeliveryReport)>,
    /// Accepted requests: id → window.
    accepted: HashMap<String, usize>,
    /// `complete` frames received per request id (or a `subscribe` answer
    /// saying it completed, when its frame was lost).
    completed: HashMap<String, u32>,
    /// Completions learnt from `subscribe`, not a `complete` frame (a
    /// frame that comes later still is late, not a second completion).
    asked: u64,
    learnt: std::collections::HashSet<String>,
}

/// Arrivals of each plain broadcast: id → (frames, last arrival).
type Arrivals = Arc<Mutex<HashMap<u64, (u64, Instant)>>>;

/// The processes and proxies of a run.
struct SloFleet {
    env: Vec<(String, String)>,
    replicas: Vec<Option<Child>>,
    ports: Vec<u16>,
    edges: Vec<TcpFaults>,
    store: HttpFaults,
    management: HttpFaults,
    gateway: Child,
    ws: String,
    logs: PathBuf,
}

impl SloFleet {
    async fn start(args: &SloArgs, public_pem: &str) -> anyhow::Result<Self> {
        let moto: std::net::SocketAddr = args
            .dynamodb
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("{} is not http://host:port", args.dynamodb))?;
        let store = HttpFaults::start(Some(moto)).await;
        let management = HttpFaults::start(None).await;
        let endpoint = format!("{}/local", management.url());
        let mut env = dynamodb_env(&args.dynamodb, "slo").await?;
        env.extend(
            [
                ("AWS_ENDPOINT_URL_DYNAMODB", store.url()),
                // The gateway checks Management API signatures made with
                // its local credentials (moto takes any).
                ("AWS_ACCESS_KEY_ID", "streamer-local".into()),
                ("AWS_SECRET_ACCESS_KEY", "streamer-local-secret".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
                ("STREAMER_MANAGEMENT_ENDPOINTS", endpoint.clone()),
                ("STREAMER_JWT_PUBLIC_KEY", public_pem.to_owned()),
                ("STREAMER_JWT_ISSUER", "any".into()),
                ("STREAMER_JWT_AUDIENCE", "any".into()),
                ("STREAMER_EDGE_TOKEN", EDGE_TOKEN.into()),
                ("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN.into()),
                (
                    "STREAMER_PAGE_TOKEN_SECRET",
                    "slo-page-token-secret-0123456789".into(),
                ),
                ("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000000".into()),
                // Every client of the run comes from 127.0.0.1: the shared
                // per-address limiter would be one item every connect
                // writes, a hot key production's many addresses do not
                // have (and moto, one Python process, cannot serve).
                ("STREAMER_SHARED_RATE_LIMITS", "false".into()),
                ("STREAMER_MESSAGES_PER_MINUTE", "100000000".into()),
                ("STREAMER_MESSAGE_BURST", "1000000".into()),
                ("STREAMER_HISTORY", FEED_STREAM.into()),
                ("STREAMER_METRICS_ADDR", "127.0.0.1:0".into()),
                ("STREAMER_GRPC_IDLE_TIMEOUT_SECS", "0".into()),
                (
                    "RUST_LOG",
                    std::env::var("STREAMER_SLO_LOG")
                        .unwrap_or_else(|_| "warn,streamer::audit=off".into()),
                ),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let logs = std::env::temp_dir().join(format!("streamer-slo-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;
        let mut fleet = Self {
            env,
            replicas: Vec::new(),
            ports: Vec::new(),
            edges: Vec::new(),
            store,
            management,
            gateway: Command::new("true").spawn()?,
            ws: String::new(),
            logs,
        };
        for i in 0..args.replicas.max(1) {
            let port = free_port()?;
            fleet.ports.push(port);
            fleet.replicas.push(Some(fleet.spawn(i).await?));
            let edge = TcpFaults::start(Some(([127, 0, 0, 1], port).into())).await;
            fleet.edges.push(edge);
        }
        let urls: Vec<String> = fleet
            .edges
            .iter()
            .map(|e| format!("http://{}", e.addr()))
            .collect();
        let mut gateway = Command::new(sibling("streamer-gateway")?)
            .env_clear()
            .env("STREAMER_CONTROL_PLANE_URL", urls.join(","))
            .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
            .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
            .env("STREAMER_STAGE", "local")
            .env("STREAMER_GATEWAY_PUBLIC_ENDPOINT", &endpoint)
            // The account's throttles are not what is measured: the storm
            // is injected on purpose.
            .env("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "0")
            .env("STREAMER_GATEWAY_MANAGEMENT_RPS", "0")
            .envs(crate::processes::ONE_ADDRESS)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file(&fleet.logs.join("gateway.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("start the gateway")?;
        let ready = ready_line(&mut gateway, "STREAMER_GATEWAY_READY ").await?;
        let addr: std::net::SocketAddr =
            ready["gateway"].as_str().context("gateway addr")?.parse()?;
        fleet.management.set_target(addr);
        fleet.ws = format!("ws://{addr}/local");
        fleet.gateway = gateway;
        Ok(fleet)
    }

    /// Starts replica `i` on its port; waits until it is healthy.
    async fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let port = self.ports[i];
        let child = Command::new(sibling("streamer-control-plane")?)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STREAMER_GRPC_ADDR", format!("127.0.0.1:{port}"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log_file(&self.logs.join(format!("replica-{}.log", i + 1)))?)
            .kill_on_drop(true)
            .spawn()
            .context("start a replica")?;
        healthy(&format!("http://127.0.0.1:{port}"), &ClientTls::default()).await?;
        Ok(child)
    }

    fn replica_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn calm(&self) {
        for edge in &self.edges {
            edge.set(TcpMode::Pass);
        }
        self.store.set(HttpMode::Pass);
        self.management.set(HttpMode::Pass);
    }
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

type Broadcaster =
    v1::broadcast_service_client::BroadcastServiceClient<InterceptedService<Channel, BearerToken>>;

/// A service's Send client on every replica: a failed try moves to the next.
struct Services {
    clients: Vec<Broadcaster>,
    next: AtomicUsize,
}

impl Services {
    fn new(urls: &[String]) -> anyhow::Result<Self> {
        let clients = urls
            .iter()
            .map(|url| {
                let channel = Channel::from_shared(url.clone())?
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy();
                Ok(
                    v1::broadcast_service_client::BroadcastServiceClient::with_interceptor(
                        channel,
                        BearerToken::new(ADMIN_TOKEN)?,
                    ),
                )
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    async fn send(
        &self,
        request: &v1::SendRequest,
        timeout: Duration,
    ) -> Result<v1::SendResponse, tonic::Status> {
        let i = self.next.load(Ordering::Relaxed) % self.clients.len();
        let mut client = self.clients[i].clone();
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(timeout);
        let answer = match tokio::time::timeout(timeout, client.send(call)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
        };
        if answer.is_err() {
            self.next.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }
}

/// Resolves once the run is over.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A tick every period until the run is over (a late tick is delayed, not
/// bunched up).
struct Ticks {
    tick: tokio::time::Interval,
    stop: watch::Receiver<bool>,
}

impl Ticks {
    fn new(period: Duration, stop: watch::Receiver<bool>) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, stop }
    }

    /// Waits for the next tick; false once the run is over.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            () = stopped(&mut self.stop) => false,
        }
    }
}

/// Opens a WebSocket, counting the attempt.
async fn open(board: &Board, url: &str) -> Option<Ws> {
    let opened = tokio::time::timeout(ANSWER, tokio_tungstenite::connect_async(url)).await;
    match opened {
        Ok(Ok((ws, _))) => {
            board.connect(None);
            Some(ws)
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            board.connect(Some(format!("HTTP {}", response.status().as_u16())));
            None
        }
        Ok(Err(err)) => {
            board.connect(Some(err.to_string()));
            None
        }
        Err(_) => {
            board.connect(Some("no answer in 15 s".into()));
            None
        }
    }
}

async fn send_frame(ws: &mut Ws, frame: &Value) -> bool {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .is_ok()
}

/// One history follower: follows the feed across reconnects; emits each
/// message's `seq` once, in offset order, as an application would see it.
async fn follow(
    board: Arc<Board>,
    url: String,
    emitted: Arc<Mutex<Vec<u64>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut epoch: Option<String> = None;
    let mut last: u64 = 0;
    let mut held: BTreeMap<u64, Value> = BTreeMap::new();
    // A stream with no message yet has no epoch (""): the first message's
    // is the one followed.
    let adopt = |epoch: &mut Option<String>, frame: &Value| {
        if epoch.as_deref().is_none_or(str::is_empty)
            && let Some(e) = frame["epoch"].as_str()
        {
            *epoch = Some(e.to_owned());
        }
    };
    let emit = |last: &mut u64, held: &mut BTreeMap<u64, Value>, frame: &Value| {
        let Some(offset) = frame["offset"].as_u64() else {
            return;
        };
        if offset <= *last {
            return;
        }
        held.insert(offset, frame.clone());
        while let Some(next) = held.remove(&(*last + 1)) {
            *last += 1;
            if let (Ok(mut out), Some(seq)) = (emitted.lock(), next["data"]["seq"].as_u64()) {
                out.push(seq);
            }
        }
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(mut ws) = open(&board, &url).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let join = |last: u64, epoch: &Option<String>| match epoch {
            Some(epoch) if !epoch.is_empty() => json!({"request_id": "j", "action": "join",
                "payload": {"group": FEED, "since": last, "epoch": epoch}}),
            _ => {
                json!({"request_id": "j", "action": "join", "payload": {"group": FEED, "since": 0}})
            }
        };
        let recover = |last: u64, epoch: &Option<String>| {
            json!({"request_id": "r", "action": "recover",
                "payload": {"stream": FEED_STREAM, "since": last, "epoch": epoch.clone().unwrap_or_default()}})
        };
        if !send_frame(&mut ws, &join(last, &epoch)).await {
            board.here(|t| t.drops += 1);
            continue;
        }
        let mut pending = Some((join(last, &epoch), Instant::now()));
        let mut finishing: Option<Instant> = None;
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = stopped(&mut stop), if finishing.is_none() => {
                    // The run is over: one last recover, as a client does
                    // on a timer, so a lost last message is still found.
                    finishing = Some(Instant::now() + ANSWER);
                    if pending.is_none() {
                        let r = recover(last, &epoch);
                        let _ = send_frame(&mut ws, &r).await;
                        pending = Some((r, Instant::now()));
                    }
                    continue;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if finishing.is_some_and(|end| Instant::now() > end) {
                        let _ = ws.close(None).await;
                        return;
                    }
                    // An answer that never came is an error; ask again.
                    if let Some((request, at)) = &pending
                        && at.elapsed() > ANSWER
                    {
                        board.fail("join/recover unanswered in 15 s");
                        let request = request.clone();
                        let _ = send_frame(&mut ws, &request).await;
                        pending = Some((request, Instant::now()));
                    }
                    continue;
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    board.here(|t| t.drops += 1);
                    break;
                }
                Some(Ok(_)) => continue,
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                board.fail("a frame that is not JSON");
                continue;
            };
            match frame["type"].as_str() {
                Some("message") if frame["stream"] == FEED_STREAM => {
                    let offset = frame["offset"].as_u64().unwrap_or(0);
                    let gap = offset > last + 1;
                    adopt(&mut epoch, &frame);
                    emit(&mut last, &mut held, &frame);
                    if gap && pending.is_none() {
                        let r = recover(last, &epoch);
                        let _ = send_frame(&mut ws, &r).await;
                        pending = Some((r, Instant::now()));
                    }
                }
                Some("response") if matches!(frame["request_id"].as_str(), Some("j" | "r")) => {
                    board.ok();
                    pending = None;
                    let data = &frame["data"];
                    let current = data["epoch"].as_str().map(str::to_owned);
                    if data["recovered"] == false
                        && epoch.as_deref().is_some_and(|e| !e.is_empty())
                        && current != epoch
                    {
                        // A new epoch (or a first join): start from its position.
                        if epoch.is_some() {
                            eprintln!(
                                "slo: follower's stream reset (epoch {epoch:?} → {current:?}): {frame}"
                            );
                        }
                        epoch = current;
                        last = data["offset"].as_u64().unwrap_or(0);
                        held.retain(|&offset, _| offset > last);
                    } else if epoch.as_deref().is_none_or(str::is_empty) {
                        epoch = current.filter(|e| !e.is_empty());
                    }
                    for message in data["messages"].as_array().into_iter().flatten() {
                        adopt(&mut epoch, message);
                        emit(&mut last, &mut held, message);
                    }
                    if finishing.is_some() && frame["request_id"] == "r" {
                        let _ = ws.close(None).await;
                        return;
                    }
                    if held.keys().next().is_some_and(|&first| first > last + 1) {
                        let r = recover(last, &epoch);
                        let _ = send_frame(&mut ws, &r).await;
                        pending = Some((r, Instant::now()));
                    }
                }
                Some("error") => {
                    board.fail(format!(
                        "follower: {} {}",
                        frame["request_id"].as_str().unwrap_or("-"),
                        frame["error"]["code"].as_str().unwrap_or("?")
                    ));
                    if matches!(frame["request_id"].as_str(), Some("j" | "r"))
                        && let Some((request, _)) = pending.take()
                    {
                        // Asked again after a pause (a rate limit says how long).
                        let after = frame["error"]["retry"]["after"].as_f64().unwrap_or(0.5);
                        tokio::time::sleep(Duration::from_secs_f64(after.clamp(0.1, 5.0))).await;
                        let _ = send_frame(&mut ws, &request).await;
                        pending = Some((request, Instant::now()));
                    }
                }
                _ => {}
            }
        }
    }
}

/// The feed's publisher: a message every 200 ms, each under its own
/// idempotency key, retried until answered (at most a minute).
async fn publish(
    board: Arc<Board>,
    services: Arc<Services>,
    outcomes: Arc<Mutex<Outcomes>>,
    run: u32,
    stop: watch::Receiver<bool>,
) {
    let mut seq = 0u64;
    let mut ticks = Ticks::new(PUBLISH_EVERY, stop);
    while ticks.next().await {
        seq += 1;
        let window = board.now();
        let request = v1::SendRequest {
            target: Some(v1::send_request::Target::Group(v1::GroupTarget {
                tenant_id: FEED_TENANT.into(),
                group: FEED.into(),
            })),
            payload: Some(v1::send_request::Payload::DataJson(
                json!({"seq": seq}).to_string(),
            )),
            idempotency_key: format!("slo-{run:x}-{seq}"),
            ..Default::default()
        };
        let given_up = Instant::now() + Duration::from_secs(60);
        loop {
            match services.send(&request, Duration::from_secs(5)).await {
                Ok(_) => {
                    board.add(window, |t| t.published += 1);
                    if let Ok(mut o) = outcomes.lock() {
                        o.published.insert(seq, window);
                    }
                    break;
                }
                Err(_) if Instant::now() < given_up => {
                    board.here(|t| t.publish_retries += 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => {
                    eprintln!("slo: message {seq} was never accepted: {status:?}");
                    board.add(window, |t| t.publish_failed += 1);
                    break;
                }
            }
        }
    }
}

/// One member of the plain broadcasts' audience: counts each broadcast's
/// frames and when the last came; reconnects when dropped.
async fn listen(
    board: Arc<Board>,
    url: String,
    arrivals: Arrivals,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(mut ws) = open(&board, &url).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = stopped(&mut stop) => {
                    let _ = ws.close(None).await;
                    return;
                }
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let at = Instant::now();
                    if let Ok(frame) = serde_json::from_str::<Value>(&text)
                        && let Some(id) = frame["data"]["b"].as_u64()
                        && let Ok(mut arrivals) = arrivals.lock()
                    {
                        let entry = arrivals.entry(id).or_insert((0, at));
                        entry.0 += 1;
                        entry.1 = entry.1.max(at);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    board.here(|t| t.drops += 1);
                    break;
                }
            }
        }
    }
}

/// A broadcast to the audience's tenant every 2 s.
async fn broadcast(
    board: Arc<Board>,
    services: Arc<Services>,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: watch::Receiver<bool>,
) {
    let mut id = 0u64;
    let mut ticks = Ticks::new(BROADCAST_EVERY, stop);
    while ticks.next().await {
        id += 1;
        let window = board.now();
        let request = v1::SendRequest {
            target: Some(v1::send_request::Target::TenantId(AUDIENCE_TENANT.into())),
            payload: Some(v1::send_request::Payload::DataJson(
                json!({"b": id}).to_string(),
            )),
            ..Default::default()
        };
        let sent = Instant::now();
        match services.send(&request, Duration::from_secs(10)).await {
            Ok(answer) => {
                let report = answer.report.unwrap_or_default();
                board.add(window, |t| t.broadcasts += 1);
                if let Ok(mut o) = outcomes.lock() {
                    o.broadcasts.insert(id, (window, sent, report));
                }
            }
            Err(status) => {
                eprintln!("slo: broadcast {id} failed: {status:?}");
                board.add(window, |t| t.broadcasts_failed += 1);
            }
        }
    }
}

/// A client making async requests one after another, each waited for to
/// its `complete` frame.
async fn request(
    board: Arc<Board>,
    url: String,
    who: usize,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    'connection: loop {
        if *stop.borrow() {
            return;
        }
        let Some(mut ws) = open(&board, &url).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        loop {
            if *stop.borrow() {
                let _ = ws.close(None).await;
                return;
            }
            n += 1;
            let id = format!("q-{who}-{n}");
            let window = board.now();
            let frame = json!({"request_id": id, "action": "slo_job", "payload": {"n": n}});
            if !send_frame(&mut ws, &frame).await {
                board.here(|t| t.drops += 1);
                continue 'connection;
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut accepted = false;
            // A `complete` frame the delivery lost is asked for, as a client
            // does after a quiet spell: `subscribe` answers the state.
            let mut ask_at = Instant::now() + Duration::from_secs(20);
            let subscription = format!("sub-{id}");
            loop {
                let next = tokio::time::timeout_at(deadline.min(ask_at).into(), ws.next()).await;
                let text = match next {
                    Err(_) if Instant::now() < deadline => {
                        let ask = json!({"request_id": subscription, "action": "subscribe",
                            "payload": {"request_id": id}});
                        let _ = send_frame(&mut ws, &ask).await;
                        ask_at = Instant::now() + Duration::from_secs(10);
                        continue;
                    }
                    Err(_) => {
                        board.fail("request: no complete in 60 s");
                        break;
                    }
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(_))) => continue,
                    Ok(_) => {
                        board.here(|t| t.drops += 1);
                        continue 'connection;
                    }
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(about) = frame["request_id"].as_str() else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("acknowledgment") if about == id => {
                        accepted = true;
                        if let Ok(mut o) = outcomes.lock() {
                            o.accepted.insert(id.clone(), window);
                        }
                    }
                    Some("complete") => {
                        if let Ok(mut o) = outcomes.lock() {
                            *o.completed.entry(about.to_owned()).or_default() += 1;
                        }
                        if about == id {
                            board.ok();
                            break;
                        }
                    }
                    Some("response") if about == subscription => {
                        match frame["data"]["status"].as_str() {
                            Some("completed") => {
                                if let Ok(mut o) = outcomes.lock() {
                                    o.asked += 1;
                                    o.learnt.insert(id.clone());
                                }
                                board.ok();
                                break;
                            }
                            Some(status @ ("failed" | "cancelled" | "expired")) => {
                                board.fail(format!("request: {status}"));
                                break;
                            }
                            _ => {}
                        }
                    }
                    // A refused `subscribe` (the store or the edge down) is
                    // asked again a little later, as a client does, until
                    // the request's deadline.
                    Some("error") if about == subscription => {
                        board.fail(format!(
                            "subscribe: {}",
                            frame["error"]["code"].as_str().unwrap_or("?")
                        ));
                        ask_at = Instant::now() + Duration::from_secs(2);
                    }
                    Some("error") if about == id => {
                        board.fail(format!(
                            "request: {}",
                            frame["error"]["code"].as_str().unwrap_or("?")
                        ));
                        if !accepted {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Connect, echo, leave, again and again.
async fn churn(board: Arc<Board>, url: String, stop: watch::Receiver<bool>) {
    let mut ticks = Ticks::new(Duration::from_millis(100), stop);
    while ticks.next().await {
        let Some(mut ws) = open(&board, &url).await else {
            continue;
        };
        let echoed = async {
            if !send_frame(
                &mut ws,
                &json!({"request_id": "e", "action": "echo", "payload": 1}),
            )
            .await
            {
                return false;
            }
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message
                    && let Ok(frame) = serde_json::from_str::<Value>(&text)
                    && frame["request_id"] == "e"
                {
                    return frame["type"] == "response";
                }
            }
            false
        };
        if tokio::time::timeout(ANSWER, echoed).await.unwrap_or(false) {
            board.ok();
        } else {
            board.fail("echo: no response");
        }
        let _ = ws.close(None).await;
    }
}

/// Runs the fault schedule, one window after another.
async fn inject(fleet: &mut SloFleet, board: &Board, window: Duration) -> anyhow::Result<()> {
    for (i, kind) in WINDOWS.iter().enumerate() {
        board.window.store(i, Ordering::Relaxed);
        let end = tokio::time::Instant::now() + window;
        eprintln!(
            "slo: window {}/8: {} — {}",
            i + 1,
            kind.name(),
            kind.fault()
        );
        let part = window / 3;
        match kind {
            Window::Calm | Window::Recovery => {}
            Window::EdgeLatency => {
                for edge in &fleet.edges {
                    edge.set(TcpMode::Delay(Duration::from_millis(150)));
                }
            }
            Window::EdgeFailures => {
                fleet.edges[0].set(TcpMode::Reset);
                tokio::time::sleep(part).await;
                fleet.edges[0].set(TcpMode::Pass);
                for edge in &fleet.edges {
                    edge.set(TcpMode::Blackhole);
                }
                tokio::time::sleep(Duration::from_secs(3).min(part)).await;
                for edge in &fleet.edges {
                    edge.set(TcpMode::Pass);
                }
            }
            Window::StoreThrottling => fleet.store.set(HttpMode::Fail {
                percent: 30,
                answer: Injected::dynamodb_throttling(),
            }),
            Window::StoreOutage => {
                fleet.store.set(HttpMode::Blackhole);
                tokio::time::sleep(Duration::from_secs(10).min(part * 2)).await;
                fleet.store.set(HttpMode::Pass);
            }
            Window::ManagementStorm => fleet.management.set(HttpMode::Fail {
                percent: 50,
                answer: Injected::limit_exceeded(),
            }),
            Window::ReplicaKilled => {
                if let Some(mut child) = fleet.replicas[0].take() {
                    child.start_kill()?;
                    let _ = child.wait().await;
                }
                tokio::time::sleep(Duration::from_secs(5).min(part)).await;
                fleet.replicas[0] = Some(fleet.spawn(0).await?);
            }
        }
        tokio::time::sleep_until(end).await;
        fleet.calm();
    }
    Ok(())
}

/// One window's figures (or the whole run's).
#[derive(Debug, Default, Serialize)]
struct Row {
    window: String,
    fault: String,
    connects: u64,
    connect_success: f64,
    dropped_by_server: u64,
    history_published: u64,
    history_publish_retries: u64,
    history_never_accepted: u64,
    history_expected: u64,
    history_once_in_order: u64,
    history_duplicates: u64,
    history_delivery: f64,
    broadcasts: u64,
    broadcasts_failed: u64,
    broadcast_targeted: u64,
    broadcast_received: u64,
    broadcast_reported_delivered: u64,
    broadcast_delivery: f64,
    broadcast_last_frame_p50_ms: f64,
    broadcast_last_frame_p99_ms: f64,
    requests_accepted: u64,
    requests_completed_once: u64,
    requests_completed_twice: u64,
    requests_not_completed: u64,
    client_operations: u64,
    client_errors: u64,
    error_rate: f64,
    errors_by_kind: BTreeMap<String, u64>,
    /// The broadcasts' reports: recipients gone, throttled to the end, failed.
    broadcast_gone: u64,
    broadcast_throttled: u64,
    broadcast_failed: u64,
    #[serde(skip)]
    last_frames: Vec<Duration>,
}

/// A target, the figure against it and whether it holds.
#[derive(Debug, Serialize)]
struct Verdict {
    target: String,
    figure: String,
    holds: bool,
    /// A guarantee that holds whatever the machine's speed (exactly once,
    /// nothing dropped, reports exact), not a speed or availability target.
    correctness: bool,
    during_faults: String,
}

/// The whole run.
#[derive(Debug, Serialize)]
struct SloReport {
    minutes: f64,
    replicas: usize,
    followers: usize,
    recipients: usize,
    windows: Vec<Row>,
    outside_faults: Row,
    overall: Row,
    verdicts: Vec<Verdict>,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// Sums rows and recomputes their ratios and percentiles.
fn total(name: &str, rows: &[&Row]) -> Row {
    let mut out = Row {
        window: name.into(),
        fault: String::new(),
        ..Row::default()
    };
    for r in rows {
        out.connects += r.connects;
        out.dropped_by_server += r.dropped_by_server;
        out.history_published += r.history_published;
        out.history_publish_retries += r.history_publish_retries;
        out.history_never_accepted += r.history_never_accepted;
        out.history_expected += r.history_expected;
        out.history_once_in_order += r.history_once_in_order;
        out.history_duplicates += r.history_duplicates;
        out.broadcasts += r.broadcasts;
        out.broadcasts_failed += r.broadcasts_failed;
        out.broadcast_targeted += r.broadcast_targeted;
        out.broadcast_received += r.broadcast_received;
        out.broadcast_reported_delivered += r.broadcast_reported_delivered;
        out.requests_accepted += r.requests_accepted;
        out.requests_completed_once += r.requests_completed_once;
        out.requests_completed_twice += r.requests_completed_twice;
        out.requests_not_completed += r.requests_not_completed;
        out.client_operations += r.client_operations;
        out.client_errors += r.client_errors;
        for (kind, n) in &r.errors_by_kind {
            *out.errors_by_kind.entry(kind.clone()).or_default() += n;
        }
        out.broadcast_gone += r.broadcast_gone;
        out.broadcast_throttled += r.broadcast_throttled;
        out.broadcast_failed += r.broadcast_failed;
        out.last_frames.extend(r.last_frames.iter().copied());
        // Successful connects, kept as a count until the ratio below.
        out.connect_success += r.connect_success * r.connects as f64;
    }
    out.connect_success = if out.connects == 0 {
        1.0
    } else {
        out.connect_success / out.connects as f64
    };
    finish(&mut out);
    out
}

fn finish(row: &mut Row) {
    row.history_delivery = ratio(row.history_once_in_order, row.history_expected);
    row.broadcast_delivery = ratio(row.broadcast_received, row.broadcast_targeted);
    row.error_rate = 1.0
        - ratio(
            row.client_operations - row.client_errors,
            row.client_operations,
        );
    let p = percentiles(&mut row.last_frames);
    row.broadcast_last_frame_p50_ms = p.p50_ms;
    row.broadcast_last_frame_p99_ms = p.p99_ms;
}

fn rows(
    tallies: &[Tally],
    outcomes: &Outcomes,
    arrivals: &HashMap<u64, (u64, Instant)>,
) -> Vec<Row> {
    let mut rows: Vec<Row> = WINDOWS
        .iter()
        .zip(tallies)
        .map(|(kind, t)| Row {
            window: kind.name().into(),
            fault: kind.fault().into(),
            connects: t.connects,
            connect_success: ratio(t.connects_ok, t.connects),
            dropped_by_server: t.drops,
            history_published: t.published,
            history_publish_retries: t.publish_retries,
            history_never_accepted: t.publish_failed,
            broadcasts: t.broadcasts,
            broadcasts_failed: t.broadcasts_failed,
            errors_by_kind: t.kinds.clone(),
            client_operations: t.operations + t.connects,
            client_errors: t.errors + (t.connects - t.connects_ok),
            ..Row::default()
        })
        .collect();
    // History: each published message, once per follower, in order.
    for emitted in &outcomes.followers {
        let Ok(emitted) = emitted.lock() else {
            continue;
        };
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let mut out_of_order: std::collections::HashSet<u64> = Default::default();
        let mut highest = 0;
        for &seq in emitted.iter() {
            *seen.entry(seq).or_default() += 1;
            if seq <= highest {
                out_of_order.insert(seq);
            }
            highest = highest.max(seq);
        }
        for (&seq, &window) in &outcomes.published {
            let row = &mut rows[window];
            row.history_expected += 1;
            match seen.get(&seq) {
                Some(1) if !out_of_order.contains(&seq) => row.history_once_in_order += 1,
                Some(&n) if n > 1 => row.history_duplicates += u64::from(n - 1),
                _ => {}
            }
        }
    }
    // Plain broadcasts: frames received against the report's targets.
    for (id, (window, sent, report)) in &outcomes.broadcasts {
        let (sent, row) = (*sent, &mut rows[*window]);
        row.broadcast_targeted += u64::from(report.targeted);
        row.broadcast_reported_delivered += u64::from(report.delivered);
        row.broadcast_gone += u64::from(report.gone);
        row.broadcast_throttled += u64::from(report.throttled);
        row.broadcast_failed += u64::from(report.failed);
        if let Some(&(count, last)) = arrivals.get(id) {
            row.broadcast_received += count;
            row.last_frames.push(last.saturating_duration_since(sent));
        }
    }
    // Requests: each accepted one completed exactly once.
    for (id, &window) in &outcomes.accepted {
        let row = &mut rows[window];
        row.requests_accepted += 1;
        let frames = outcomes.completed.get(id).copied().unwrap_or(0);
        match frames + u32::from(frames == 0 && outcomes.learnt.contains(id)) {
            0 => row.requests_not_completed += 1,
            1 => row.requests_completed_once += 1,
            _ => row.requests_completed_twice += 1,
        }
    }
    for row in &mut rows {
        finish(row);
    }
    rows
}

fn verdicts(
    windows: &[Row],
    outside: &Row,
    overall: &Row,
    asked: u64,
    recipients: usize,
) -> Vec<Verdict> {
    let faults: Vec<(&Row, Window)> = windows
        .iter()
        .zip(WINDOWS)
        .filter(|(_, w)| w.is_fault())
        .collect();
    let during = |figure: &dyn Fn(&Row) -> f64, holds: &dyn Fn(f64) -> bool, unit: &str| {
        let missed: Vec<String> = faults
            .iter()
            .filter(|(row, _)| !holds(figure(row)))
            .map(|(row, w)| {
                let why = row
                    .errors_by_kind
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(kind, n)| format!(" (most often: {kind} ×{n})"))
                    .unwrap_or_default();
                format!("{}: {:.3}{unit}{why}", w.name(), figure(row))
            })
            .collect();
        if missed.is_empty() {
            "holds in every fault window".to_owned()
        } else {
            format!("missed in {}", missed.join(", "))
        }
    };
    // Connections the server kept: API Gateway's own rules (10 min idle,
    // 2 h) do not come into a run, so every close the client did not ask
    // for counts against it.
    let reliability = |r: &Row| {
        let opened = r.connects as f64 * r.connect_success;
        100.0 * (1.0 - r.dropped_by_server as f64 / opened.max(1.0))
    };
    let connects = |r: &Row| 100.0 * r.connect_success;
    let delivery = |r: &Row| 100.0 * r.history_delivery;
    let p50 = |r: &Row| r.broadcast_last_frame_p50_ms;
    let errors = |r: &Row| 100.0 * r.error_rate;
    vec![
        Verdict {
            target:
                "connection reliability ≥ 99.99% (connections the server did not drop), whole run"
                    .into(),
            figure: format!(
                "{:.3}% ({} dropped)",
                reliability(overall),
                overall.dropped_by_server
            ),
            holds: reliability(overall) >= 100.0 * RELIABILITY,
            correctness: true,
            during_faults: during(&reliability, &|v| v >= 100.0 * RELIABILITY, "%"),
        },
        Verdict {
            target: "connects that succeed ≥ 99.99% outside fault windows".into(),
            figure: format!("{:.3}% of {}", connects(outside), outside.connects),
            holds: connects(outside) >= 100.0 * RELIABILITY,
            correctness: false,
            during_faults: during(&connects, &|v| v >= 100.0 * RELIABILITY, "%"),
        },
        Verdict {
            target:
                "history delivery ≥ 99.95% (each published message once, in order, after recovery)"
                    .into(),
            figure: format!("{:.3}% overall", delivery(overall)),
            holds: delivery(overall) >= 100.0 * DELIVERY,
            correctness: true,
            during_faults: during(&delivery, &|v| v >= 100.0 * DELIVERY, "%"),
        },
        Verdict {
            target: format!(
                "broadcast p50 < 100 ms at {recipients} recipients outside fault windows"
            ),
            figure: format!("{:.1} ms", p50(outside)),
            holds: p50(outside) < BROADCAST_P50_MS,
            correctness: false,
            during_faults: during(&p50, &|v| v < BROADCAST_P50_MS, " ms"),
        },
        Verdict {
            target: "client-visible error rate < 0.1% outside fault windows".into(),
            figure: format!("{:.3}%", errors(outside)),
            holds: errors(outside) < 100.0 * ERROR_RATE,
            correctness: false,
            during_faults: during(&errors, &|v| v < 100.0 * ERROR_RATE, "%"),
        },
        Verdict {
            target: "accepted requests completed exactly once".into(),
            figure: format!(
                "{} of {} (twice: {}, not: {}; learnt from subscribe after a lost frame: {})",
                overall.requests_completed_once,
                overall.requests_accepted,
                overall.requests_completed_twice,
                overall.requests_not_completed,
                asked
            ),
            holds: overall.requests_completed_once == overall.requests_accepted,
            correctness: true,
            during_faults: String::new(),
        },
        Verdict {
            target: "delivery reports exact (frames clients received = the reports' delivered)"
                .into(),
            figure: format!(
                "{} received, {} reported",
                overall.broadcast_received, overall.broadcast_reported_delivered
            ),
            holds: overall.broadcast_received == overall.broadcast_reported_delivered,
            correctness: true,
            during_faults: String::new(),
        },
    ]
}

/// Runs `slo`; the error says which target was missed.
pub async fn run(args: &SloArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let keys = generate_rsa_key_pair()?;
    let mut fleet = SloFleet::start(args, &keys.public_pem).await?;
    eprintln!(
        "slo: {} replicas on {} behind one gateway; logs in {}",
        fleet.replicas.len(),
        args.dynamodb,
        fleet.logs.display()
    );
    let board = Arc::new(Board {
        window: AtomicUsize::new(0),
        tallies: Mutex::new(vec![Tally::default(); WINDOWS.len()]),
    });
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let services = Arc::new(Services::new(&fleet.replica_urls())?);
    let (stop_tx, stop) = watch::channel(false);
    let url = |user: &str, tenant: &str, permissions: &[&str]| -> anyhow::Result<String> {
        Ok(format!(
            "{}?token={}",
            fleet.ws,
            token_with(&keys.private_pem, user, tenant, permissions)?
        ))
    };

    // A processor on every replica.
    let runs = Arc::new(AtomicU64::new(0));
    let mut processors = JoinSet::new();
    let (processors_stop, processors_stopped) = watch::channel(false);
    for replica in fleet.replica_urls() {
        let runs = runs.clone();
        let mut halt = processors_stopped.clone();
        let processor = Processor::new(&replica, ADMIN_TOKEN)
            .concurrency(16)
            .handle(
                ActionSpec::new("slo_job").lease_timeout(Duration::from_secs(5)),
                move |_job, progress| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::Relaxed);
                        progress.report(50, "half way", None).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(json!({"done": true}))
                    }
                },
            );
        processors.spawn(async move {
            let _ = processor.run(async move { stopped(&mut halt).await }).await;
        });
    }

    // The workloads, connected before the first window starts. The
    // followers end before the other clients leave: a thousand
    // disconnects at once are the harness's, not the workload's.
    let mut tasks = JoinSet::new();
    let mut followers = JoinSet::new();
    let (followers_stop, followers_stopped) = watch::channel(false);
    for i in 0..args.followers {
        let emitted = Arc::new(Mutex::new(Vec::new()));
        if let Ok(mut o) = outcomes.lock() {
            o.followers.push(emitted.clone());
        }
        followers.spawn(follow(
            board.clone(),
            url(&format!("f{i}"), FEED_TENANT, &["group:join:*"])?,
            emitted,
            followers_stopped.clone(),
        ));
    }
    let audience = url("listener", AUDIENCE_TENANT, &[])?;
    // About 100 connects a second: each is a few store writes, and moto,
    // one Python process, is the slowest part of this machine's fleet.
    for chunk in 0..args.recipients.div_ceil(10) {
        for _ in (chunk * 10)..((chunk + 1) * 10).min(args.recipients) {
            tasks.spawn(listen(
                board.clone(),
                audience.clone(),
                arrivals.clone(),
                stop.clone(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..args.requesters {
        tasks.spawn(request(
            board.clone(),
            url(&format!("r{i}"), REQUEST_TENANT, &[])?,
            i,
            outcomes.clone(),
            stop.clone(),
        ));
    }
    let churners = url("churn", CHURN_TENANT, &[])?;
    for _ in 0..2 {
        tasks.spawn(churn(board.clone(), churners.clone(), stop.clone()));
    }
    // Wait (at most a minute) until the audience is all connected.
    let mut count = v1::connection_service_client::ConnectionServiceClient::with_interceptor(
        Channel::from_shared(fleet.replica_urls()[0].clone())?.connect_lazy(),
        BearerToken::new(ADMIN_TOKEN)?,
    );
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let live = count
            .count_connections(v1::CountConnectionsRequest {
                tenant_id: AUDIENCE_TENANT.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().count)
            .unwrap_or(0);
        if live >= args.recipients as u64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < ready_by,
            "only {live} of {} audience connections after a minute",
            args.recipients
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing before the first window counts.
    if let Ok(mut tallies) = board.tallies.lock() {
        tallies[0] = Tally::default();
    }
    // The services stop first; the clients get what is in flight.
    let (senders_stop, senders_stopped) = watch::channel(false);
    let mut senders = JoinSet::new();
    senders.spawn(publish(
        board.clone(),
        services.clone(),
        outcomes.clone(),
        rand::random(),
        senders_stopped.clone(),
    ));
    senders.spawn(broadcast(
        board.clone(),
        services.clone(),
        outcomes.clone(),
        senders_stopped,
    ));
    let started = Instant::now();
    inject(&mut fleet, &board, args.duration() / WINDOWS.len() as u32).await?;
    // The end: the services finish what they started (a message is
    // retried for at most a minute), the last frames get 3 s to land, then
    // followers make a last recover and every client leaves.
    let _ = senders_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(75), async {
        while senders.join_next().await.is_some() {}
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = followers_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while followers.join_next().await.is_some() {}
    })
    .await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "slo: some clients had not finished a minute after the run; counted as they stood"
        );
        tasks.abort_all();
    }
    let _ = processors_stop.send(true);
    processors.abort_all();
    eprintln!(
        "slo: ran {:.1} min; the processors ran slo_job {} times",
        started.elapsed().as_secs_f64() / 60.0,
        runs.load(Ordering::Relaxed)
    );

    let tallies = board.tallies.lock().map(|t| t.clone()).unwrap_or_default();
    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let windows = {
        let outcomes = outcomes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        rows(&tallies, &outcomes, &arrivals)
    };
    let outside = total(
        "outside fault windows",
        &windows
            .iter()
            .zip(WINDOWS)
            .filter(|(_, w)| !w.is_fault())
            .map(|(r, _)| r)
            .collect::<Vec<_>>(),
    );
    let overall = total("overall", &windows.iter().collect::<Vec<_>>());
    let asked = outcomes.lock().map(|o| o.asked).unwrap_or(0);
    // What the control plane says of each accepted request no `complete`
    // frame (or `subscribe` answer) reached.
    let unfinished: Vec<String> = outcomes
        .lock()
        .map(|o| {
            o.accepted
                .keys()
                .filter(|id| !o.completed.contains_key(*id) && !o.learnt.contains(*id))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut requests = v1::request_service_client::RequestServiceClient::with_interceptor(
        Channel::from_shared(fleet.replica_urls()[1 % fleet.ports.len()].clone())?.connect_lazy(),
        BearerToken::new(ADMIN_TOKEN)?,
    );
    for id in unfinished {
        let state = requests
            .get_request(v1::GetRequestRequest {
                tenant_id: REQUEST_TENANT.into(),
                request_id: id.clone(),
            })
            .await
            .map(|r| format!("{:?}", r.into_inner().request))
            .unwrap_or_else(|status| format!("{status:?}"));
        eprintln!(
            "slo: accepted request {id} never reached its client as completed; the control plane says {state}"
        );
    }
    let verdicts = verdicts(&windows, &outside, &overall, asked, args.recipients);
    let report = SloReport {
        minutes: args.duration().as_secs_f64() / 60.0,
        replicas: args.replicas,
        followers: args.followers,
        recipients: args.recipients,
        windows,
        outside_faults: outside,
        overall,
        verdicts,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    for mut child in fleet.replicas.into_iter().flatten() {
        let _ = child.kill().await;
    }
    let _ = fleet.gateway.kill().await;
    let missed: Vec<&str> = report
        .verdicts
        .iter()
        .filter(|v| !v.holds && (v.correctness || !args.correctness_only))
        .map(|v| v.target.as_str())
        .collect();
    anyhow::ensure!(missed.is_empty(), "missed: {}", missed.join("; "));
    Ok(())
}

fn print(report: &SloReport) {
    println!(
        "streamer-bench slo: {:.1} min, {} replicas on DynamoDB (moto), {} history followers, {} broadcast recipients",
        report.minutes, report.replicas, report.followers, report.recipients
    );
    println!();
    println!(
        "| window | connects ok | dropped | history once / expected | dup | broadcast recv / targeted (reported) | last frame p50 / p99 ms | requests once / accepted | errors / ops |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in report
        .windows
        .iter()
        .chain([&report.outside_faults, &report.overall])
    {
        println!(
            "| {} | {:.3}% of {} | {} | {} / {} ({:.3}%) | {} | {} / {} ({}) {:.3}% | {:.1} / {:.1} | {} / {} | {} / {} ({:.3}%) |",
            row.window,
            100.0 * row.connect_success,
            row.connects,
            row.dropped_by_server,
            row.history_once_in_order,
            row.history_expected,
            100.0 * row.history_delivery,
            row.history_duplicates,
            row.broadcast_received,
            row.broadcast_targeted,
            row.broadcast_reported_delivered,
            100.0 * row.broadcast_delivery,
            row.broadcast_last_frame_p50_ms,
            row.broadcast_last_frame_p99_ms,
            row.requests_completed_once,
            row.requests_accepted,
            row.client_errors,
            row.client_operations,
            100.0 * row.error_rate,
        );
    }
    println!();
    for (row, kind) in report.windows.iter().zip(WINDOWS) {
        let errors: Vec<String> = row
            .errors_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} ×{n}"))
            .collect();
        println!(
            "{}: {}; publish retries {}, never accepted {}; broadcasts failed {}, recipients gone {} / throttled {} / failed {}; client errors: {}",
            kind.name(),
            kind.fault(),
            row.history_publish_retries,
            row.history_never_accepted,
            row.broadcasts_failed,
            row.broadcast_gone,
            row.broadcast_throttled,
            row.broadcast_failed,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            }
        );
    }
    println!();
    for v in &report.verdicts {
        println!(
            "{} {}: {}{}",
            if v.holds { "HOLDS" } else { "MISSED" },
            v.target,
            v.figure,
            if v.during_faults.is_empty() {
                String::new()
            } else {
                format!(" — during faults: {}", v.during_faults)
            }
        );
    }
}
