//! Logs, traces and metrics: `tracing` subscriber set-up (with OpenTelemetry export, `otel`)
//! and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub mod otel;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the global `tracing` subscriber; `filter` uses `RUST_LOG` syntax. With an
/// `otlp` endpoint (`--otlp-endpoint`, e.g. `http://127.0.0.1:4318`), spans are also exported
/// as OpenTelemetry traces over OTLP/HTTP (JSON) to `{endpoint}/v1/traces`, batched.
pub fn init(filter: &str, format: LogFormat, otlp: Option<&str>) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let otel = match otlp.filter(|e| !e.is_empty()) {
        Some(endpoint) => Some(otel::layer(endpoint)?),
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(())
}

/// Installs the global subscriber without trace export.
pub fn init_logging(filter: &str, format: LogFormat) {
    let _ = init(filter, format, None);
}

/// Sends the spans not exported yet (at shutdown; tests call it before reading what the
/// collector received).
pub fn flush_traces() {
    otel::flush();
}

/// The Prometheus recorder, installed once per process (tests build many apps in one process).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .expect("static bucket list is non-empty");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed already: keep a detached one so /metrics works.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
