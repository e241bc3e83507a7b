//! `HistoryService`: a stream's retained messages and its position, for
//! services and operators.

use streamer_proto::v1::{self, history_service_server::HistoryService};
use tonic::{Request, Response, Status};

use super::{auth::Caller, convert};
use crate::{
    clock::Clock,
    error::Fault,
    streams::{Position, Stream, Streams},
};

/// Messages one page returns when the caller names no limit.
const DEFAULT_LIMIT: u32 = 100;
/// Most messages one page returns.
const MAX_LIMIT: u32 = 1000;

/// History reads.
#[derive(Debug, Clone)]
pub struct HistoryApi {
    streams: Streams,
    clock: Clock,
}

impl HistoryApi {
    /// Serves history reads of `streams`.
    pub fn new(streams: Streams, clock: Clock) -> Self {
        Self { streams, clock }
    }
}

/// The tenant and stream of a call, validated and checked against the
/// caller's tenant.
fn stream<'a>(
    caller: &Caller,
    tenant_id: &'a str,
    stream: &str,
) -> Result<(&'a str, String), Fault> {
    let tenant = convert::tenant(tenant_id)?;
    caller.check_tenant(tenant)?;
    let stream = Stream::parse(stream)
        .ok_or_else(|| Fault::invalid("stream must be tenant, user:<user_id> or group:<name>"))?;
    Ok((tenant, stream.name()))
}

fn position_proto(stream: &str, position: Position) -> v1::StreamPosition {
    v1::StreamPosition {
        stream: stream.to_owned(),
        offset: position.offset,
        epoch: position.epoch,
    }
}

#[tonic::async_trait]
impl HistoryService for HistoryApi {
    async fn read_history(
        &self,
        request: Request<v1::ReadHistoryRequest>,
    ) -> Result<Response<v1::ReadHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (tenant, name) = stream(caller, &r.tenant_id, &r.stream)?;
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            _ => {
                return Err(Fault::invalid(format!("limit must be 1 to {MAX_LIMIT}")).into());
            }
        };
        let read = self
            .streams
            .read(tenant, &name, r.since, limit as usize, self.clock.now_ms())
            .await?;
        let last = read.messages.last().map(|m| m.offset);
        let next_since = match last {
            Some(last) if last < read.position.offset => last,
            _ => 0,
        };
        Ok(Response::new(v1::ReadHistoryResponse {
            messages: read
                .messages
                .into_iter()
                .map(|m| v1::HistoryMessage {
                    offset: m.offset,
                    data_json: m.data.to_string(),
                    topic: m.topic.unwrap_or_default(),
                    sent_at: Some(convert::timestamp(m.at_ms)),
                })
                .collect(),
            position: Some(position_proto(&name, read.position)),
            complete: read.complete,
            next_since,
        }))
    }

    async fn get_stream_position(
        &self,
        request: Request<v1::GetStreamPositionRequest>,
    ) -> Result<Response<v1::GetStreamPositionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (tenant, name) = stream(caller, &r.tenant_id, &r.stream)?;
        let position = self.streams.position(tenant, &name).await?;
        Ok(Response::new(v1::GetStreamPositionResponse {
            position: Some(position_proto(&name, position)),
        }))
    }
}
