//! Telemetry for every SPM binary: `tracing` logs (JSON or pretty), OpenTelemetry spans
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the W3C trace-context
//! propagator, and the Prometheus metrics registry.

pub mod metrics;
pub mod propagation;

use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with the span fields (tenant, trace_id) of the event.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(format!("expected json or pretty, got {other:?}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("tracing subscriber already installed: {0}")]
    Subscriber(String),
}

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] to flush spans on exit.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the span exporter. Blocking: run it off the async runtime.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        })
        .await;
    }
}

/// Installs the global subscriber, tracer provider and propagator for `service`.
///
/// Spans always get OpenTelemetry ids (so trace context propagates through Kafka headers
/// even with no collector); they are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
/// `RUST_LOG` filters logs (default `info`).
pub fn init(service: &str, format: LogFormat) -> Result<Telemetry, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| Error::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service.to_owned());
    opentelemetry::global::set_tracer_provider(provider.clone());

    // Logs follow RUST_LOG; traces have their own filter (SPM_TRACE_FILTER, default info),
    // so quiet logs never cost the traces.
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let traces =
        EnvFilter::try_from_env("SPM_TRACE_FILTER").unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(traces);
    let registry = tracing_subscriber::registry().with(otel);
    let res = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .try_init(),
    };
    res.map_err(|e| Error::Subscriber(e.to_string()))?;
    Ok(Telemetry { provider })
}
