//! What every DynamoDB-backed store shares: the client (standard AWS
//! configuration, bounded retries and timeouts), attribute helpers, how an
//! SDK error is described without leaking it to callers, and idempotent
//! table creation from a declarative spec.

use std::{collections::HashMap, time::Duration};

use aws_sdk_dynamodb::{
    Client,
    config::{retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    types::{
        AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
        KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus,
        TimeToLiveSpecification,
    },
};

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

/// A number attribute.
pub fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A string attribute of `item`.
pub fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// A whole-number attribute of `item`.
pub fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether a call failed only because its condition did not hold (an
/// answer, not an outage).
pub fn condition_failed(err: &impl ProvideErrorMetadata) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// An SDK failure described for logs (error code and message, "timeout",
/// "cannot reach dynamodb"); never for clients.
pub fn describe<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    err: &SdkError<E, R>,
) -> String {
    match err {
        SdkError::ServiceError(service) => format!(
            "{}: {}",
            service.err().code().unwrap_or("service error"),
            service.err().message().unwrap_or_default()
        ),
        SdkError::TimeoutError(_) => "timeout".to_owned(),
        SdkError::DispatchFailure(failure) => {
            let cause = if failure.is_timeout() {
                "timeout"
            } else if failure.is_io() {
                "connection failed"
            } else {
                "dispatch failure"
            };
            format!("cannot reach dynamodb ({cause})")
        }
        other => format!("{other:?}").chars().take(200).collect(),
    }
}

/// Deletes the items keyed `keys` from `table`, 25 to a `BatchWriteItem`,
/// sending again what DynamoDB leaves unprocessed, at most `attempts` times
/// per batch. Best effort for what has a TTL behind it: a batch whose call
/// fails is left (the next batches are still tried) and the first failure
/// is returned, described for logs.
pub async fn batch_delete(
    client: &Client,
    table: &str,
    keys: impl IntoIterator<Item = Item>,
    attempts: usize,
) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
    let requests: Vec<WriteRequest> = keys
        .into_iter()
        .filter_map(|key| {
            let delete = DeleteRequest::builder().set_key(Some(key)).build().ok()?;
            Some(WriteRequest::builder().delete_request(delete).build())
        })
        .collect();
    let mut first_failure = None;
    for batch in requests.chunks(25) {
        let mut pending = batch.to_vec();
        for _ in 0..attempts {
            if pending.is_empty() {
                break;
            }
            match client
                .batch_write_item()
                .request_items(table, pending.clone())
                .send()
                .await
            {
                Ok(out) => {
                    pending = out
                        .unprocessed_items()
                        .and_then(|items| items.get(table))
                        .cloned()
                        .unwrap_or_default();
                }
                Err(err) => {
                    first_failure.get_or_insert_with(|| describe(&err));
                    break;
                }
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// The attempts, backoff and timeouts of every DynamoDB call: a store that
/// is down is an error within seconds, never a hang.
pub fn client_config(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Config {
    aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build()
}

/// A client from the standard AWS configuration (`AWS_REGION`,
/// `AWS_ENDPOINT_URL_DYNAMODB`, credentials, ...).
pub async fn client() -> Client {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Client::from_conf(client_config(&sdk))
}

/// An attribute's name and whether it is a number (else a string).
#[derive(Debug, Clone, Copy)]
pub struct Attr(pub &'static str, pub bool);

impl Attr {
    fn kind(self) -> ScalarAttributeType {
        if self.1 {
            ScalarAttributeType::N
        } else {
            ScalarAttributeType::S
        }
    }
}

/// A string attribute.
pub const fn string(name: &'static str) -> Attr {
    Attr(name, false)
}

/// A number attribute.
pub const fn numeric(name: &'static str) -> Attr {
    Attr(name, true)
}

/// A table as `tables create` makes it: on-demand billing, a hash key, an
/// optional range key, GSIs projecting every attribute, an optional TTL
/// attribute.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The hash key.
    pub hash: Attr,
    /// The range key, if any.
    pub range: Option<Attr>,
    /// GSIs: name, hash key, range key.
    pub indexes: Vec<(&'static str, Attr, Attr)>,
    /// The TTL attribute (seconds since the epoch), if any.
    pub ttl: Option<&'static str>,
}

fn build_err(err: aws_sdk_dynamodb::error::BuildError) -> String {
    err.to_string()
}

fn key(attr: Attr, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(attr.0)
        .key_type(kind)
        .build()
        .map_err(build_err)
}

impl TableSpec {
    /// Creates `table` (nothing happens when it exists), waits until it is
    /// active and turns its TTL on.
    pub async fn create(&self, client: &Client, table: &str) -> Result<(), String> {
        let mut attrs: Vec<Attr> = vec![self.hash];
        attrs.extend(self.range);
        for (_, hash, range) in &self.indexes {
            attrs.extend([*hash, *range]);
        }
        let mut request = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(self.hash, KeyType::Hash)?);
        if let Some(range) = self.range {
            request = request.key_schema(key(range, KeyType::Range)?);
        }
        let mut seen = Vec::new();
        for attr in attrs {
            if seen.contains(&attr.0) {
                continue;
            }
            seen.push(attr.0);
            request = request.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr.0)
                    .attribute_type(attr.kind())
                    .build()
                    .map_err(build_err)?,
            );
        }
        for (name, hash, range) in &self.indexes {
            request = request.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(*name)
                    .key_schema(key(*hash, KeyType::Hash)?)
                    .key_schema(key(*range, KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(build_err)?,
            );
        }
        match request.send().await {
            Ok(_) => {}
            Err(err) if err.code() == Some("ResourceInUseException") => {}
            Err(err) => return Err(describe(&err)),
        }
        wait_active(client, table).await?;
        match self.ttl {
            Some(attribute) => enable_ttl(client, table, attribute).await,
            None => Ok(()),
        }
    }
}

/// Waits (bounded) until a table is ACTIVE.
pub async fn wait_active(client: &Client, table: &str) -> Result<(), String> {
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("table {table} did not become active"))
}

/// Turns TTL on for `attribute` (idempotent).
pub async fn enable_ttl(client: &Client, table: &str, attribute: &str) -> Result<(), String> {
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(build_err)?;
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already enabled.
        Err(err) if err.code() == Some("ValidationException") => Ok(()),
        Err(err) => Err(describe(&err)),
    }
}
