//! Ingest's own counters (on top of the shared gRPC and pipeline metrics).

use std::sync::OnceLock;

use spm_telemetry::metrics::{Counter, Family, Gauge, Histogram};

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
    set_parked(&[]);
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

/// Events parked by a batch, and parked events it released.
pub fn parked(parked: usize, released: usize) {
    let f = events();
    if parked > 0 {
        f.get_or_create(&vec![("outcome", "parked".to_owned())])
            .inc_by(parked as u64);
    }
    if released > 0 {
        f.get_or_create(&vec![("outcome", "released".to_owned())])
            .inc_by(released as u64);
    }
}

/// A parked event that could not be applied when its referents arrived.
pub fn parked_failed() {
    events()
        .get_or_create(&vec![("outcome", "release_failed".to_owned())])
        .inc();
}

fn parked_gauges() -> &'static (Family<Labels, Gauge>, Family<Labels, Gauge>) {
    static G: OnceLock<(Family<Labels, Gauge>, Family<Labels, Gauge>)> = OnceLock::new();
    G.get_or_init(|| {
        let (count, age) = (Family::default(), Family::default());
        spm_telemetry::metrics::register(
            "ingest_parked_events",
            "Accepted events waiting for a rep or deal not known yet (state waiting), or that could not be applied when it arrived (state failed)",
            count.clone(),
        );
        spm_telemetry::metrics::register(
            "ingest_parked_oldest_age_seconds",
            "Age of the oldest parked event that needs attention",
            age.clone(),
        );
        (count, age)
    })
}

/// Sets the parked gauges from (state, waiting on, count, oldest age in seconds); every
/// series not named is set to zero.
pub fn set_parked(rows: &[(String, String, i64, i64)]) {
    let (count, age) = parked_gauges();
    for (state, on) in [("waiting", "rep"), ("waiting", "deal"), ("failed", "")] {
        let labels = vec![("state", state.to_owned()), ("waiting_on", on.to_owned())];
        let row = rows.iter().find(|r| r.0 == state && r.1 == on);
        count.get_or_create(&labels).set(row.map_or(0, |r| r.2));
        age.get_or_create(&labels).set(row.map_or(0, |r| r.3));
    }
}

pub fn rejected() {
    events()
        .get_or_create(&vec![("outcome", "rejected".to_owned())])
        .inc();
}
