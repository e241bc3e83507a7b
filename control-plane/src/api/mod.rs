//! The gRPC adapters: one file per service, each only decoding, calling the
//! domain and mapping errors (through [`crate::error::Fault`]); caller
//! authentication ([`auth`]); shared validation and conversions
//! ([`convert`]); page tokens ([`pagetoken`]); and the port's transport
//! rules ([`transport`]).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod broadcast;
pub mod connections;
pub mod convert;
pub mod edge;
pub mod groups;
pub mod history;
pub mod pagetoken;
pub mod processors;
pub mod requests;
pub mod transport;

pub use self::{
    admin::AdminApi, broadcast::BroadcastApi, connections::ConnectionApi, edge::EdgeApi,
    groups::GroupApi, history::HistoryApi, processors::ProcessorApi, requests::RequestApi,
};
