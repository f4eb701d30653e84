//! Kafka topic names (DESIGN §2/§3).

/// CRM activities and satisfaction surveys, keyed by tenant/rep.
pub const ACTIVITIES: &str = "spm.crm.activities.v1";
/// Deal credits, payment credits and reversal credits, keyed by tenant/rep.
pub const DEALS: &str = "spm.crm.deals.v1";
/// Reps and teams (compacted), keyed by tenant/rep or tenant/team:<id>.
pub const ORG: &str = "spm.org.v1";
/// Tenants and their API keys (compacted), keyed by tenant or tenant/key:<id>.
pub const TENANTS: &str = "spm.tenants.v1";
/// Score changes, goal milestones and process alerts, keyed by tenant/rep.
pub const SCORES: &str = "spm.scoring.scores.v1";
/// Earnings, adjustments, awards and disputes, keyed by tenant/rep.
pub const EARNINGS: &str = "spm.incentive.earnings.v1";
/// Records that could not be processed, with the original coordinates in headers.
pub const DLQ: &str = "spm.dlq.v1";

/// Every topic SPM uses, with whether it is compacted.
pub const ALL: &[(&str, bool)] = &[
    (ACTIVITIES, false),
    (DEALS, false),
    (ORG, true),
    (TENANTS, true),
    (SCORES, false),
    (EARNINGS, false),
    (DLQ, false),
];
