//! Logs and traces. Logs go through `tracing` to stderr, filtered by `PHOTOQ_LOG` (or
//! `RUST_LOG`), default `info`. Traces are exported by OTLP over HTTP when
//! `telemetry.otlp_endpoint` is set (off by default): one trace per photo, from its
//! acceptance by the API through the stream (the W3C `traceparent` travels in the stream
//! entry and on the photo's row) to each attempt's stages and commit in a worker. Every log
//! line of a job's work carries its `photo_id` and `trace_id`, exported or not.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider};
use opentelemetry::{SpanId, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The W3C Trace Context header (and stream entry field) name.
const TRACEPARENT: &str = "traceparent";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Logs to stderr and, with `traces` whose `otlp_endpoint` is set, exports spans by
/// OTLP/HTTP (`http://host:4318`; spans go to `/v1/traces`), batched and sent from a thread
/// of their own.
pub fn init(traces: Option<&TelemetryConfig>) -> Result<(), TelemetryError> {
    let filter = std::env::var("PHOTOQ_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let endpoint = traces
        .map(|t| t.otlp_endpoint.trim().trim_end_matches('/'))
        .filter(|e| !e.is_empty());
    let tracer = match (traces, endpoint) {
        (Some(config), Some(endpoint)) => Some(tracer(config, endpoint)?),
        _ => None,
    };
    let installed = tracing_subscriber::registry()
        .with(tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t)))
        .with(EnvFilter::new(filter))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a terminal only: a log file or collector gets plain text.
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .try_init();
    if let (Ok(()), Some(endpoint)) = (installed, endpoint) {
        tracing::info!(endpoint, "exporting traces by OTLP");
    }
    Ok(())
}

fn tracer(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<opentelemetry_sdk::trace::Tracer, TelemetryError> {
    crate::fetch::install_tls_provider();
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .build();
    let tracer = provider.tracer("photoq");
    let _ = PROVIDER.set(provider);
    Ok(tracer)
}

/// Sends the spans not yet exported and stops exporting (on shutdown). Blocks: call it
/// outside the async runtime's threads, e.g. in `spawn_blocking`.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.force_flush() {
            eprintln!("traces not all exported: {e}");
        }
        let _ = provider.shutdown();
    }
}

/// Opens (and closes) the root span of a photo's trace as the API or an import accepts the
/// photo; returns its traceparent, for the photo's row and its first stream entry.
pub fn accepted(photo_id: uuid::Uuid, batch_id: uuid::Uuid) -> String {
    let span = tracing::info_span!(
        parent: None,
        "photo.accepted",
        %photo_id,
        %batch_id,
        trace_id = tracing::field::Empty
    );
    let traceparent = traceparent(&span);
    if let Some(sc) = parse_traceparent(&traceparent) {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
    traceparent
}

/// The W3C `traceparent` that continues `span`: its own context when traces are exported,
/// otherwise fresh random ids (so that logs still tie a photo's work together).
pub fn traceparent(span: &tracing::Span) -> String {
    let context = span.context();
    let sc = context.span().span_context().clone();
    let sc = if sc.is_valid() {
        sc
    } else {
        SpanContext::new(
            TraceId::from(rand::random::<u128>().max(1)),
            SpanId::from(rand::random::<u64>().max(1)),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    };
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(
        &opentelemetry::Context::new().with_remote_span_context(sc),
        &mut carrier,
    );
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` a child of the remote span `traceparent` names (when traces are exported)
/// and records its trace id in the span's `trace_id` field (for the logs). A malformed
/// `traceparent` is ignored.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let Some(sc) = parse_traceparent(traceparent) else {
        return;
    };
    span.record("trace_id", tracing::field::display(sc.trace_id()));
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}

/// The span context a W3C `traceparent` names, read by OpenTelemetry's own propagator;
/// `None` when it is malformed.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let sc = context.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_or_are_refused() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_traceparent_without_exporting_is_fresh_and_well_formed() {
        let span = tracing::info_span!("photo");
        let a = traceparent(&span);
        let b = traceparent(&span);
        assert!(parse_traceparent(&a).is_some(), "{a}");
        assert_ne!(a, b);
    }
}
