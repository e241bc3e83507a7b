//! The DynamoDB-compatible server (moto) that the test command starts on a
//! free loopback port and names in `STREAMER_TEST_DYNAMODB_ENDPOINT`.

use aws_sdk_dynamodb::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
};

/// The server's URL. A missing server is a loud failure, never a skip.
pub fn endpoint() -> String {
    std::env::var("STREAMER_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "STREAMER_TEST_DYNAMODB_ENDPOINT is not set: run `bash scripts/test.sh`, which starts a \
             DynamoDB-compatible server (moto) for these tests"
        )
    })
}

/// A client for the server at `endpoint` (another address: through a fault
/// proxy).
pub fn client_at(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(config)
}

/// A client for the server.
pub fn client() -> Client {
    client_at(&endpoint())
}

/// The AWS environment a control-plane process needs to reach `endpoint`.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.to_owned()),
    ]
}

/// A table name no other test uses.
pub fn unique(tag: &str) -> String {
    format!("streamer-test-{tag}-{:x}", rand::random::<u32>())
}

/// Fresh tables for one test: their names, the settings that name them, and
/// `tables create` run as an operator would.
#[derive(Debug, Clone)]
pub struct Tables {
    /// The connections table; the others are named after it.
    pub connections: String,
}

impl Tables {
    /// Names no other test uses.
    pub fn new(tag: &str) -> Self {
        Self {
            connections: unique(tag),
        }
    }

    /// The settings naming every table.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let t = &self.connections;
        vec![
            ("STREAMER_CONNECTIONS_TABLE", t.clone()),
            ("STREAMER_REQUESTS_TABLE", format!("{t}-requests")),
            ("STREAMER_RATE_LIMITS_TABLE", format!("{t}-limits")),
            ("STREAMER_HISTORY_TABLE", format!("{t}-history")),
            ("STREAMER_CHUNKS_TABLE", format!("{t}-chunks")),
        ]
    }

    /// What a control plane on these tables needs, reaching the store at
    /// `endpoint` (the server, or a fault proxy in front of it).
    pub fn env_at(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        let mut env = aws_env(endpoint);
        env.extend(self.settings());
        env.push(("STREAMER_STORE", "dynamodb".into()));
        env
    }

    /// [`Tables::env_at`] the server itself.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_at(&endpoint())
    }

    /// Runs `streamer-control-plane tables create` (idempotent); panics with
    /// its output when it fails.
    pub async fn create(&self) {
        let output = tokio::process::Command::new(crate::dev::binary("streamer-control-plane"))
            .args(["tables", "create"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(aws_env(&endpoint()))
            .envs(self.settings())
            .output()
            .await
            .expect("run tables create");
        assert!(
            output.status.success(),
            "tables create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout)
                .contains(&format!("table {} is ready", self.connections)),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

/// `(name, value)` pairs as the `&str` pairs `Dev::start` takes.
pub fn as_vars<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
