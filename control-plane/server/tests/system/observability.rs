//! Observability end to end: traces exported over OTLP to a real receiver
//! (a tonic server implementing the published OTLP trace service) and
//! Prometheus metrics scraped after real traffic.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use serde_json::json;
use streamer_test_kit::prelude::*;

#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    service: String,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        service: service.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn one_message_is_one_trace_from_the_edge_through_the_control_plane() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let endpoint = format!("http://{addr}");
    let dev = Dev::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await;
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    send(&mut ws, r#"{"id":"traced-1","action":"echo","payload":1}"#).await;
    assert_eq!(recv(&mut ws).await["request_id"], "traced-1");

    let mut found = None;
    eventually("the message's spans reach the receiver", || {
        let spans = receiver.spans.lock().expect("lock").clone();
        let edge = spans.iter().find(|s| s.name == "edge.message").cloned();
        let hit = edge.and_then(|edge| {
            let route = spans
                .iter()
                .find(|s| {
                    s.name == "/streamer.v1.EdgeService/Route" && s.trace_id == edge.trace_id
                })?
                .clone();
            let store = spans
                .iter()
                .find(|s| s.name == "store" && s.trace_id == edge.trace_id)?
                .clone();
            Some((edge, route, store))
        });
        let done = hit.is_some();
        found = hit;
        async move { done }
    })
    .await;
    let (edge, route, store) = found.expect("spans");
    assert_eq!(
        route.parent_span_id, edge.span_id,
        "the control plane's span is the edge span's child"
    );
    assert_eq!(
        store.parent_span_id, route.span_id,
        "the store call is inside the Route span"
    );
    assert!(
        route.service.contains("streamer-control-plane"),
        "{}",
        route.service
    );
    // One message, one trace: every Route span with this trace id is this one.
    let spans = receiver.spans.lock().expect("lock").clone();
    let routes = spans
        .iter()
        .filter(|s| s.name == "/streamer.v1.EdgeService/Route")
        .count();
    assert_eq!(routes, 1);
    let traces: std::collections::HashSet<_> = spans
        .iter()
        .filter(|s| s.name == "edge.message")
        .map(|s| s.trace_id.clone())
        .collect();
    assert_eq!(traces.len(), 1);
}

fn value(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_by_the_right_amounts() {
    let dev = Dev::start(&[
        ("STREAMER_METRICS_ADDR", "127.0.0.1:0"),
        ("STREAMER_METRICS_TENANT_LABELS", "true"),
    ])
    .await;
    let before = dev.metrics_now().await;
    assert_eq!(
        value(&before, r#"streamer_connects_total{outcome="accepted"}"#),
        0.0
    );

    let mut a = dev.connect(&token("alice", "obs", &[])).await;
    let mut b = dev.connect(&token("bob", "obs", &[])).await;
    let (status, _, _) = refused(&format!("{}?token=garbage", dev.ws_url())).await;
    assert_eq!(status, 401);
    for i in 0..3 {
        send_json(&mut a, &json!({"id": format!("m{i}"), "action": "echo"})).await;
        assert_eq!(recv(&mut a).await["type"], "response");
    }
    send(&mut a, r#"{"id":"x","action":"no_such_thing"}"#).await;
    assert_eq!(recv(&mut a).await["error"]["code"], "INVALID_ACTION");
    send(&mut a, "{not json").await;
    assert_eq!(recv(&mut a).await["error"]["code"], "VALIDATION_ERROR");
    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = broadcast
        .send(tenant_target("obs", json!(1)))
        .await
        .reported();
    assert_eq!(report.delivered, 2);
    recv(&mut a).await;
    recv(&mut b).await;

    let after = dev.metrics_now().await;
    let delta = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(delta(r#"streamer_connects_total{outcome="accepted"}"#), 2.0);
    assert_eq!(
        delta(r#"streamer_connects_total{outcome="unauthorized"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"streamer_auth_failures_total{reason="malformed"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"streamer_connections_active{tenant="obs"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"streamer_messages_total{action="echo",outcome="ok"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"streamer_messages_total{action="_unknown",outcome="invalid_action"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"streamer_messages_total{action="_invalid",outcome="validation_error"}"#),
        1.0
    );
    assert_eq!(delta("streamer_broadcasts_total"), 1.0);
    assert_eq!(
        delta(r#"streamer_broadcast_recipients_total{outcome="delivered"}"#),
        2.0
    );
    assert_eq!(
        delta(
            r#"streamer_management_api_request_duration_seconds_count{operation="post_to_connection"}"#
        ),
        2.0
    );
    assert!(delta(r#"streamer_store_request_duration_seconds_count{operation="get"}"#) >= 5.0);

    b.close(None).await.expect("close");
    let dev_ref = &dev;
    eventually("disconnect counted", || async move {
        let now = dev_ref.metrics_now().await;
        value(&now, "streamer_disconnects_total") == 1.0
            && value(&now, r#"streamer_connections_active{tenant="obs"}"#) == 1.0
    })
    .await;

    // Message floods are counted as rate limited.
    let mut flooded = false;
    for i in 0..40 {
        send_json(&mut a, &json!({"id": format!("f{i}"), "action": "echo"})).await;
        if recv(&mut a).await["error"]["code"] == "RATE_LIMITED" {
            flooded = true;
            break;
        }
    }
    assert!(flooded);
    let last = dev.metrics_now().await;
    assert_eq!(
        value(&last, r#"streamer_rate_limited_total{limit="message"}"#),
        1.0
    );
}
