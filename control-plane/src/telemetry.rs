//! Logs and traces for the control plane: the shared setup in
//! [`streamer_edge::telemetry`], with the configured log format.

use streamer_edge::telemetry::{self, Telemetry};

use crate::config::LogFormat;

/// Installs logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP
/// trace export; keep the handle and call `shutdown` on exit to flush.
pub fn init(format: LogFormat) -> Telemetry {
    let format = match format {
        LogFormat::Json => telemetry::LogFormat::Json,
        LogFormat::Pretty => telemetry::LogFormat::Pretty,
    };
    telemetry::init(format, "streamer-control-plane")
}
