//! Ingest's own counters (on top of the shared gRPC and pipeline metrics).

use std::sync::OnceLock;

use spm_telemetry::metrics::{Counter, Family};

type Labels = Vec<(&'static str, String)>;

fn events() -> &'static Family<Labels, Counter> {
    static F: OnceLock<Family<Labels, Counter>> = OnceLock::new();
    F.get_or_init(|| {
        let f = Family::default();
        spm_telemetry::metrics::register("ingest_events", "Client events by outcome", f.clone());
        f
    })
}

/// Registers the families (call at start so they show before the first event).
pub fn init() {
    let _ = events();
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
