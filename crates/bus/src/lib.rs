//! Kafka and Postgres plumbing shared by every SPM service. It knows the broker, the
//! database and the envelope; it knows no business rule.
//!
//! - [`producer`]: the idempotent producer; batches are sent concurrently, never one
//!   awaited send at a time.
//! - [`consumer`]: the at-least-once loop: a batch of records is applied in ONE Postgres
//!   transaction that records event ids in the inbox (duplicates skipped) and writes output
//!   events to the outbox; offsets are stored only after the commit.
//! - [`outbox`]: the relay publishing outbox rows.
//! - [`dlq`]: records that cannot be processed, with their coordinates in headers.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod outbox;
pub mod producer;
pub mod schema;

pub use config::{DEFAULT_SESSION_TIMEOUT_MS, KafkaConfig};
pub use consumer::{Handler, HandlerError, Incoming, Outbox};
pub use producer::{Producer, Record};

/// Header names SPM puts on every record.
pub mod headers {
    pub const EVENT_TYPE: &str = "spm-event-type";
    pub const SCHEMA_VERSION: &str = "spm-schema-version";
    pub const TENANT: &str = "spm-tenant";
    pub const EVENT_ID: &str = "spm-event-id";
    pub const DLQ_TOPIC: &str = "spm-dlq-topic";
    pub const DLQ_PARTITION: &str = "spm-dlq-partition";
    pub const DLQ_OFFSET: &str = "spm-dlq-offset";
    pub const DLQ_ERROR: &str = "spm-dlq-error";
    pub const DLQ_GROUP: &str = "spm-dlq-group";
}

/// The trace-context headers of `span`, to put on records.
pub fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    spm_telemetry::propagation::inject_span(span)
}

/// Builds the record for an envelope: key, encoded payload and the standard headers
/// (event type, schema version, tenant, event id, and the trace context of `span`).
pub fn envelope_record(
    topic: String,
    key: String,
    envelope: &spm_proto::events::v1::EventEnvelope,
    span: &tracing::Span,
) -> Record {
    envelope_record_with(topic, key, envelope, &trace_headers(span))
}

/// Like [`envelope_record`] with trace headers computed once for many records.
pub fn envelope_record_with(
    topic: String,
    key: String,
    envelope: &spm_proto::events::v1::EventEnvelope,
    trace: &[(String, String)],
) -> Record {
    let mut headers = Vec::with_capacity(trace.len() + 4);
    headers.extend_from_slice(trace);
    headers.push((headers::EVENT_TYPE.into(), envelope.event_type().into()));
    headers.push((
        headers::SCHEMA_VERSION.into(),
        spm_proto::ext::SCHEMA_VERSION.into(),
    ));
    headers.push((headers::TENANT.into(), envelope.tenant_id.clone()));
    headers.push((headers::EVENT_ID.into(), envelope.event_id.clone()));
    Record {
        topic,
        key,
        payload: prost::Message::encode_to_vec(envelope),
        headers,
    }
}
