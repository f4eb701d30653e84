//! Ingest's own counters (on top of the shared gRPC and pipeline metrics).

use std::sync::OnceLock;

use spm_telemetry::metrics::{Counter, Family, Histogram};

type Labels = Vec<(&'static str, String)>;

fn events() -> &'static Family<Labels, Counter> {
    static F: OnceLock<Family<Labels, Counter>> = OnceLock::new();
    F.get_or_init(|| {
        let f = Family::default();
        spm_telemetry::metrics::register("ingest_events", "Client events by outcome", f.clone());
        f
    })
}

fn batches() -> &'static (Histogram, Histogram) {
    static H: OnceLock<(Histogram, Histogram)> = OnceLock::new();
    H.get_or_init(|| {
        let buckets = || Histogram::new([1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0]);
        let (events, requests) = (buckets(), buckets());
        spm_telemetry::metrics::register(
            "ingest_batch_events",
            "Events per accept transaction (requests are combined under load)",
            events.clone(),
        );
        spm_telemetry::metrics::register(
            "ingest_batch_requests",
            "Requests combined into one accept transaction",
            requests.clone(),
        );
        (events, requests)
    })
}

/// Registers the families (call at start so they show before the first event).
pub fn init() {
    let _ = events();
    let _ = batches();
}

/// One accept transaction of `events` events from `requests` requests.
#[allow(clippy::cast_precision_loss)]
pub fn batch(events: usize, requests: usize) {
    let (e, r) = batches();
    e.observe(events as f64);
    r.observe(requests as f64);
}

pub fn accepted(events_n: usize, records: usize) {
    let f = events();
    f.get_or_create(&vec![("outcome", "accepted".to_owned())])
        .inc_by(events_n as u64);
    f.get_or_create(&vec![("outcome", "records_published".to_owned())])
        .inc_by(records as u64);
}

pub fn rejected() {
    events()
        .get_or_create(&vec![("outcome", "rejected".to_owned())])
        .inc();
}
