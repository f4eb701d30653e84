//! The metric names SPM computes (scoring defines them; incentive gates and bonuses read
//! them from score events).

/// Every metric name, in display order.
pub const NAMES: &[&str] = &[
    "revenue",
    "deals_won",
    "avg_deal_size",
    "amount_due",
    "collected",
    "collection_rate",
    "amount_collected",
    "csat_avg",
    "nps",
    "visits",
    "calls",
    "meetings",
    "emails",
    "demos",
    "contracts_signed",
    "after_sales_resolved",
    "trainings_completed",
];

pub fn is_metric(name: &str) -> bool {
    NAMES.contains(&name)
}
