//! Storage shared by every backed room: the DynamoDB client, attribute
//! helpers, error descriptions, table creation, and fleet-wide leases. The registry, the request
//! queue and the shared rate limits each keep their own items; opening the
//! configured store is the assembly's job ([`crate::app`]).

pub mod dynamo;
pub mod lease;

#[cfg(test)]
mod contracts;
