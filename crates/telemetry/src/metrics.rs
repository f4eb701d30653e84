//! The Prometheus metrics every SPM service exposes on `/metrics`.
//!
//! One process-wide registry; shared plumbing (consumer loop, outbox relay, gRPC layer)
//! records into the families below, and a service can register its own families with
//! [`register`].

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

pub type Labels = Vec<(&'static str, String)>;

/// The shared metric families.
pub struct Metrics {
    pub events_consumed: Family<Labels, Counter>,
    pub events_duplicate: Family<Labels, Counter>,
    pub events_failed: Family<Labels, Counter>,
    pub events_dead_lettered: Family<Labels, Counter>,
    pub consumer_lag: Family<Labels, Gauge>,
    pub consumer_rejoins: Family<Labels, Counter>,
    pub processing_seconds: Family<Labels, Histogram>,
    pub event_age_seconds: Family<Labels, Histogram>,
    pub records_published: Family<Labels, Counter>,
    pub outbox_backlog: Gauge,
    pub outbox_oldest_age_seconds: Gauge,
    pub grpc_requests: Family<Labels, Counter>,
    pub grpc_request_seconds: Family<Labels, Histogram>,
    pub http_requests: Family<Labels, Counter>,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

struct Global {
    metrics: Metrics,
    registry: Mutex<Registry>,
}

fn global_state() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| {
        let mut r = Registry::with_prefix("spm");
        let m = Metrics {
            events_consumed: Family::default(),
            events_duplicate: Family::default(),
            events_failed: Family::default(),
            events_dead_lettered: Family::default(),
            consumer_lag: Family::default(),
            consumer_rejoins: Family::default(),
            processing_seconds: Family::new_with_constructor(latency_buckets),
            event_age_seconds: Family::new_with_constructor(latency_buckets),
            records_published: Family::default(),
            outbox_backlog: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            grpc_requests: Family::default(),
            grpc_request_seconds: Family::new_with_constructor(latency_buckets),
            http_requests: Family::default(),
        };
        r.register(
            "events_consumed",
            "Kafka records applied, by topic and group",
            m.events_consumed.clone(),
        );
        r.register(
            "events_duplicate",
            "Kafka records skipped because their event id was already applied",
            m.events_duplicate.clone(),
        );
        r.register(
            "events_failed",
            "Kafka record processing failures, by kind",
            m.events_failed.clone(),
        );
        r.register(
            "events_dead_lettered",
            "Kafka records sent to the DLQ",
            m.events_dead_lettered.clone(),
        );
        r.register(
            "consumer_lag",
            "Messages behind the partition end, per partition",
            m.consumer_lag.clone(),
        );
        r.register(
            "consumer_rejoins",
            "Times a consumer loop left and rejoined its group because no member consumed a partition with unread records",
            m.consumer_rejoins.clone(),
        );
        r.register(
            "processing_seconds",
            "Wall time of one consumer batch transaction",
            m.processing_seconds.clone(),
        );
        r.register(
            "event_age_seconds",
            "Time from an event's recording at ingest to its application here",
            m.event_age_seconds.clone(),
        );
        r.register(
            "records_published",
            "Kafka records published, by topic",
            m.records_published.clone(),
        );
        r.register(
            "outbox_backlog",
            "Outbox rows not yet published",
            m.outbox_backlog.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row",
            m.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            m.grpc_requests.clone(),
        );
        r.register(
            "grpc_request_seconds",
            "gRPC request latency by method",
            m.grpc_request_seconds.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            m.http_requests.clone(),
        );
        Global {
            metrics: m,
            registry: Mutex::new(r),
        }
    })
}

/// The shared families.
pub fn global() -> &'static Metrics {
    &global_state().metrics
}

/// Registers a service-specific family (call once, at start).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    global_state()
        .registry
        .lock()
        .expect("metrics registry lock")
        .register(name, help, metric);
}

/// A fresh histogram with SPM's latency buckets (seconds).
pub fn latency_histogram() -> Histogram {
    latency_buckets()
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> String {
    let mut out = String::new();
    let reg = global_state()
        .registry
        .lock()
        .expect("metrics registry lock");
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Builds a label set.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        global()
            .events_consumed
            .get_or_create(&labels([("topic", "t"), ("group", "g")]))
            .inc();
        let text = render();
        assert!(
            text.contains("spm_events_consumed_total{topic=\"t\",group=\"g\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
