//! The Lambda entry point shared by the three route binaries: build the
//! control-plane client once at cold start, then hand each event to
//! [`EdgeHandler`].

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use lambda_runtime::{Error, LambdaEvent, service_fn};

use streamer_telemetry::{self as telemetry, LogFormat};

use crate::{
    client::{ClientError, edge_client},
    handler::{EdgeHandler, Route},
};

/// Builds the handler from the Lambda's environment:
/// `STREAMER_CONTROL_PLANE_URL`, `STREAMER_EDGE_TOKEN` and the optional
/// `STREAMER_MANAGEMENT_ENDPOINT`.
pub fn handler_from_env(
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<EdgeHandler, ClientError> {
    let url = lookup("STREAMER_CONTROL_PLANE_URL")
        .ok_or(ClientError::MissingEnv("STREAMER_CONTROL_PLANE_URL"))?;
    let token =
        lookup("STREAMER_EDGE_TOKEN").ok_or(ClientError::MissingEnv("STREAMER_EDGE_TOKEN"))?;
    let endpoint = lookup("STREAMER_MANAGEMENT_ENDPOINT").filter(|e| !e.is_empty());
    Ok(EdgeHandler::new(edge_client(&url, &token)?, endpoint))
}

/// Runs the Lambda for `route` until the runtime stops it.
pub async fn run(route: Route) -> Result<(), Error> {
    let telemetry = std::sync::Arc::new(telemetry::init(LogFormat::Json, "streamer-edge"));
    let handler = handler_from_env(&|name| std::env::var(name).ok())?;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let handler = handler.clone();
            let telemetry = telemetry.clone();
            async move {
                let actual = Route::of(&event.payload);
                if actual != Some(route) {
                    tracing::warn!(
                        ?route,
                        ?actual,
                        "event for another route; handling it anyway"
                    );
                }
                let response = handler.handle(event.payload).await;
                // The runtime may freeze the process right after the response.
                telemetry.flush();
                Ok::<ApiGatewayProxyResponse, Error>(response)
            }
        },
    ))
    .await
}
