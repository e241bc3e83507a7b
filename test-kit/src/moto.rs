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
