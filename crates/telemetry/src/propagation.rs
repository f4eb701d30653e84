//! W3C trace-context propagation across gRPC metadata and Kafka headers.
//!
//! Kafka plumbing converts its headers to and from `(name, value)` pairs so that this crate
//! knows no Kafka client.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Trace-context headers of `span` as `(name, value)` pairs (`traceparent`, `tracestate`).
pub fn inject_span(span: &tracing::Span) -> Vec<(String, String)> {
    inject_context(&span.context())
}

/// Trace-context headers of an OpenTelemetry context.
pub fn inject_context(cx: &Context) -> Vec<(String, String)> {
    let mut map = PairInjector(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut map));
    map.0
}

/// The context carried by `(name, value)` header pairs; an empty context when none.
pub fn extract_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let map: HashMap<String, String> = pairs
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HashMapExtractor(&map)))
}

/// The context carried by HTTP/2 (gRPC) request headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's context into outgoing HTTP/2 (gRPC) headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Makes `cx` the parent of `span` (when `cx` carries a remote span).
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Parents a batch span: the records' span when they all belong to one trace; otherwise
/// a span of its own linked to each record's span (OpenTelemetry messaging conventions
/// for a batch that mixes traces).
pub fn batch_parent(span: &tracing::Span, records: &[&tracing::Span]) {
    let contexts: Vec<opentelemetry::trace::SpanContext> = records
        .iter()
        .map(|r| r.context().span().span_context().clone())
        .filter(opentelemetry::trace::SpanContext::is_valid)
        .collect();
    let Some(first) = contexts.first() else {
        return;
    };
    if contexts.iter().all(|c| c.trace_id() == first.trace_id()) {
        let _ = span.set_parent(records[0].context());
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for c in contexts {
        if seen.insert(c.span_id()) {
            span.add_link(c);
        }
    }
}

/// The trace id of `span` as 32 lower-case hex digits, when it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id in a `traceparent` header value.
pub fn trace_id_of_traceparent(tp: &str) -> Option<&str> {
    let mut it = tp.split('-');
    let (_version, trace) = (it.next()?, it.next()?);
    (trace.len() == 32).then_some(trace)
}

struct PairInjector(Vec<(String, String)>);

impl Injector for PairInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

struct HashMapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for HashMapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
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

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(val)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, val);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of_traceparent(tp),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of_traceparent("garbage"), None);
    }

    #[test]
    fn pairs_round_trip_a_remote_context() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract_pairs([("Traceparent", tp)]);
        assert!(cx.span().span_context().is_valid());
        let back = inject_context(&cx);
        assert!(back.iter().any(|(k, v)| k == "traceparent" && v == tp));
    }
}
