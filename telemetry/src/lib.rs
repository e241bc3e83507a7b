//! Logs and traces for every Streamer process (the Lambdas, the emulator,
//! the control plane): a crate of its own so that every crate can reach
//! trace propagation without linking any of the others.
//!
//! Logs: JSON lines (CloudWatch) or compact text, filtered by `RUST_LOG`
//! (default `info`), each line carrying the fields of its spans (connection
//! id, tenant, request id). Traces: exported with OTLP over gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, configured by the standard `OTEL_*` variables; W3C trace context
//! travels in gRPC metadata ([`inject`] / [`extract`]).

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Compact human-readable text.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: use json or pretty")),
        }
    }
}

/// Keeps the trace exporter alive; flushes it on [`Telemetry::shutdown`].
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports finished spans now (a Lambda calls this before it is frozen).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown: {err}");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()))
}

/// Installs the global subscriber (once per process; later calls only
/// return an inert handle) and, when OTLP is configured, the exporter.
pub fn init(format: LogFormat, service_name: &str) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The audit trail is a record, not a diagnostic: `RUST_LOG` quietening
    // the rest does not silence it; only naming the target does
    // (`RUST_LOG=warn,streamer::audit=off`).
    let names_audit = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("streamer::audit"));
    let filter = match "streamer::audit=info".parse() {
        Ok(directive) if !names_audit => filter.add_directive(directive),
        _ => filter,
    };
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut telemetry = Telemetry::default();
    let otel = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let mut resource = Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name(service_name.to_owned());
                }
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build();
                let tracer = provider.tracer("streamer");
                telemetry.provider = Some(provider);
                // Only Streamer's own spans: one per edge call, RPC, broadcast
                // and store call, never one per SDK request.
                let targets = Targets::new()
                    .with_target("streamer_edge", tracing::Level::INFO)
                    .with_target("streamer_telemetry", tracing::Level::INFO)
                    .with_target("streamer_control_plane", tracing::Level::INFO);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(targets),
                )
            }
            Err(err) => {
                eprintln!("cannot start the OTLP trace exporter: {err}");
                None
            }
        }
    } else {
        None
    };
    if tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_err()
    {
        // A subscriber was installed already (tests, or dev's second init).
        return Telemetry::default();
    }
    telemetry
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|kv| match kv {
                KeyAndValueRef::Ascii(key, _) => Some(key.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}

/// Wraps `message` in a request carrying the current span's trace context
/// (`traceparent`) as gRPC metadata.
pub fn inject<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
    request
}

/// Makes `span` a child of the trace context a caller sent in `metadata`
/// (no-op when there is none).
pub fn extract(span: &tracing::Span, metadata: &MetadataMap) {
    let parent = global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    });
    let _ = span.set_parent(parent);
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one incoming gRPC call, named after the RPC and a child of
/// the caller's trace context (W3C `traceparent` metadata). Handlers record
/// `connection_id`, `tenant_id` and `request_id` on it, so every log line of
/// the call carries them.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = path,
        otel.kind = "server",
        rpc = path,
        connection_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
    );
    let parent = global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}
