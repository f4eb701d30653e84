//! The connector's metrics (prefix `spm_connect_`): CRM events in, SPM events submitted by
//! ingest's answer, records not submitted by reason, checkpoint age, retries.

use std::sync::OnceLock;
use std::time::Duration;

use spm_telemetry::metrics::{Counter, Family, Gauge, Histogram, Labels, labels, register};

struct M {
    events_in: Family<Labels, Counter>,
    submitted: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    webhooks: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    checkpoint_age: Family<Labels, Gauge>,
    pending: Family<Labels, Gauge>,
    ack_latency: Family<Labels, Histogram, fn() -> Histogram>,
}

fn m() -> &'static M {
    static M_: OnceLock<M> = OnceLock::new();
    M_.get_or_init(|| {
        let m = M {
            events_in: Family::default(),
            submitted: Family::default(),
            rejected: Family::default(),
            webhooks: Family::default(),
            retries: Family::default(),
            checkpoint_age: Family::default(),
            pending: Family::default(),
            ack_latency: Family::new_with_constructor(spm_telemetry::metrics::latency_histogram),
        };
        register(
            "connect_events_in",
            "CRM events received, by source",
            m.events_in.clone(),
        );
        register(
            "connect_submitted",
            "SPM events submitted to ingest, by source and ingest's answer",
            m.submitted.clone(),
        );
        register(
            "connect_rejected",
            "CRM records not submitted (mapping problems, ingest refusals), by source and reason",
            m.rejected.clone(),
        );
        register(
            "connect_webhooks",
            "HubSpot webhook requests, by result (accepted, bad_signature, stale_timestamp, ...)",
            m.webhooks.clone(),
        );
        register(
            "connect_retries",
            "Retries: ingest unavailable, CRM API rate limits (429) and failures, by what",
            m.retries.clone(),
        );
        register(
            "connect_checkpoint_age_seconds",
            "Seconds since each stream's checkpoint last moved (or its oldest pending webhook)",
            m.checkpoint_age.clone(),
        );
        register(
            "connect_pending",
            "HubSpot webhooks acknowledged and not yet submitted",
            m.pending.clone(),
        );
        register(
            "connect_ack_latency_seconds",
            "From handing events to ingest to its durable acknowledgement",
            m.ack_latency.clone(),
        );
        m
    })
}

pub fn init() {
    let _ = m();
}

pub fn events_in(source: &str, n: usize) {
    m().events_in
        .get_or_create(&labels([("source", source)]))
        .inc_by(n as u64);
}

pub fn submitted(source: &str, status: &str) {
    m().submitted
        .get_or_create(&labels([("source", source), ("status", status)]))
        .inc();
}

pub fn rejected(source: &str, reason: &str) {
    m().rejected
        .get_or_create(&labels([("source", source), ("reason", reason)]))
        .inc();
}

pub fn webhook(result: &str) {
    m().webhooks
        .get_or_create(&labels([("result", result)]))
        .inc();
}

pub fn ingest_retry(source: &str) {
    m().retries
        .get_or_create(&labels([("source", source), ("what", "ingest")]))
        .inc();
}

pub fn crm_retry(source: &str, what: &str) {
    m().retries
        .get_or_create(&labels([("source", source), ("what", what)]))
        .inc();
}

pub fn checkpoint_age(tenant: &str, source: &str, stream: &str, secs: i64) {
    m().checkpoint_age
        .get_or_create(&labels([
            ("tenant", tenant),
            ("source", source),
            ("stream", stream),
        ]))
        .set(secs);
}

pub fn pending(tenant: &str, n: i64) {
    m().pending
        .get_or_create(&labels([("tenant", tenant)]))
        .set(n);
}

pub fn ack_latency(source: &str, d: Duration) {
    m().ack_latency
        .get_or_create(&labels([("source", source)]))
        .observe(d.as_secs_f64());
}
