//! One `streamer-control-plane serve` process on a free loopback port with
//! the embedded store, its JSON log kept for the test to read (the audit
//! trail, refusals), or its exit when the settings are refused.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{
    DEADLINE,
    dev::{ADMIN_TOKEN, EDGE_TOKEN, binary},
    token,
};

/// A running `serve`.
#[derive(Debug)]
pub struct Serve {
    /// The process.
    pub child: Child,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
}

fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary("streamer-control-plane"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("STREAMER_LOG_FORMAT", "json")
        .env("STREAMER_GRPC_ADDR", "127.0.0.1:0")
        .env("STREAMER_JWT_PUBLIC_KEY", &token::keys().public_pem)
        .env("STREAMER_JWT_ISSUER", token::ISSUER)
        .env("STREAMER_JWT_AUDIENCE", token::AUDIENCE)
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("AWS_ACCESS_KEY_ID", "streamer-local")
        .env("AWS_SECRET_ACCESS_KEY", "streamer-local-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    // An empty value unsets a setting (the server reads empty as unset).
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

impl Serve {
    /// Starts `serve`; `env` adds or overrides settings.
    pub async fn start(env: &[(&str, &str)]) -> Serve {
        let mut child = command(env)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let grpc = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("log line") {
                let Ok(json) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("serve: {line}");
                    continue;
                };
                let listening = json["message"] == "grpc server listening";
                let addr = json["addr"].as_str().map(str::to_owned);
                logs.lock().expect("logs").push(json);
                if listening {
                    return addr.expect("addr").parse::<SocketAddr>().expect("addr");
                }
            }
            panic!("serve exited before listening");
        })
        .await
        .expect("serve listening in time");
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(json) = serde_json::from_str::<Value>(&line) {
                    kept.lock().expect("logs").push(json);
                }
            }
        });
        Serve { child, grpc, logs }
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().expect("logs").clone()
    }

    /// The records on the log target `streamer::audit` so far.
    pub fn audit(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["target"] == "streamer::audit")
            .collect()
    }

    /// Runs `serve` with `env` expecting it to refuse to start: its exit
    /// code and its standard error.
    pub async fn refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
        let output = command(env).stderr(Stdio::piped()).output();
        let output = tokio::time::timeout(DEADLINE, output)
            .await
            .expect("serve exits in time")
            .expect("serve runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}
