//! Notification's own metrics: deliveries by channel and outcome, and their latency.

use std::sync::OnceLock;

use spm_telemetry::metrics::{Counter, Family, Histogram};

type Labels = Vec<(&'static str, String)>;

struct M {
    deliveries: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
}

fn m() -> &'static M {
    static F: OnceLock<M> = OnceLock::new();
    F.get_or_init(|| {
        let deliveries = Family::default();
        let latency = Family::new_with_constructor(
            spm_telemetry::metrics::latency_histogram as fn() -> Histogram,
        );
        spm_telemetry::metrics::register(
            "webhook_deliveries",
            "Delivery attempts by channel and outcome",
            deliveries.clone(),
        );
        spm_telemetry::metrics::register(
            "delivery_latency_seconds",
            "From notification to successful delivery, by channel",
            latency.clone(),
        );
        M {
            deliveries,
            latency,
        }
    })
}

pub fn init() {
    let _ = m();
}

#[allow(clippy::cast_precision_loss)]
pub fn delivery(channel: &str, outcome: &str, latency_ms: i64) {
    let m = m();
    m.deliveries
        .get_or_create(&vec![
            ("channel", channel.to_owned()),
            ("outcome", outcome.to_owned()),
        ])
        .inc();
    if outcome == "delivered" {
        m.latency
            .get_or_create(&vec![("channel", channel.to_owned())])
            .observe(latency_ms.max(0) as f64 / 1000.0);
    }
}
