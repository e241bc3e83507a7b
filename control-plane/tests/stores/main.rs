//! The DynamoDB backends of the control plane against moto, the
//! DynamoDB-compatible server the test command starts. One test binary for
//! the crate: a module per store.

mod chunks_dynamodb;
mod dynamodb;
mod history_dynamodb;
mod keys_dynamodb;
mod legacy_dynamodb;
mod support;
