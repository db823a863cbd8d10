//! OpenTelemetry traces: `tracing` spans exported over OTLP/HTTP (JSON) by the SDK's batch
//! processor, and the W3C `traceparent` a request arrives with (its trace continues here) and
//! leaves with (the server span's id). Off unless `--otlp-endpoint` is given.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The layer that turns spans into OpenTelemetry spans exported to `endpoint`.
pub fn layer<S>(endpoint: &str) -> Result<OpenTelemetryLayer<S, SdkTracer>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "the OTLP exporter needs the tokio runtime".to_string())?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client = TokioHttp {
        client: reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("OTLP client: {e}"))?,
        handle,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("agp-rerank")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("agp-rerank");
    let _ = PROVIDER.set(provider);
    tracing::info!(%url, "exporting traces over OTLP/HTTP");
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Exports what is buffered now.
pub fn flush() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.force_flush()
    {
        tracing::warn!(error = %e, "could not flush traces");
    }
}

/// Continues the caller's trace: makes the W3C `traceparent` in `headers` (if valid) the
/// parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if headers.get("traceparent").is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of `span` (`None` when traces are not exported).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The exporter's HTTP client: the SDK's batch processor exports from its own thread, so a
/// request is sent on the process's tokio runtime and awaited from there.
#[derive(Debug)]
struct TokioHttp {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for TokioHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let sent = self.handle.spawn(async move {
            let resp = client.execute(request).await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        Ok(Response::builder().status(status).body(body)?)
    }
}
