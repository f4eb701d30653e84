//! Small conveniences on generated types.

use chrono::{DateTime, Utc};

use crate::events::v1::{EventEnvelope, event_envelope::Payload};

/// Schema version carried in the `spm-schema-version` header of every record.
pub const SCHEMA_VERSION: &str = "1";

impl Payload {
    /// The event type name carried in the `spm-event-type` header.
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::ActivityLogged(_) => "ActivityLogged",
            Payload::SatisfactionRecorded(_) => "SatisfactionRecorded",
            Payload::DealCredited(_) => "DealCredited",
            Payload::PaymentCredited(_) => "PaymentCredited",
            Payload::DealReversalCredited(_) => "DealReversalCredited",
            Payload::RepUpserted(_) => "RepUpserted",
            Payload::TeamUpserted(_) => "TeamUpserted",
            Payload::ScoreChanged(_) => "ScoreChanged",
            Payload::GoalMilestoneReached(_) => "GoalMilestoneReached",
            Payload::ProcessAlertRaised(_) => "ProcessAlertRaised",
            Payload::EarningPosted(_) => "EarningPosted",
            Payload::EarningAdjusted(_) => "EarningAdjusted",
            Payload::AwardGranted(_) => "AwardGranted",
            Payload::DisputeOpened(_) => "DisputeOpened",
            Payload::DisputeResolved(_) => "DisputeResolved",
            Payload::LedgerSealed(_) => "LedgerSealed",
            Payload::TenantUpserted(_) => "TenantUpserted",
            Payload::ApiKeyIssued(_) => "ApiKeyIssued",
            Payload::ApiKeyRevoked(_) => "ApiKeyRevoked",
            Payload::IdentityProviderSet(_) => "IdentityProviderSet",
            Payload::PersonUpserted(_) => "PersonUpserted",
        }
    }
}

/// An earning kind's short name ("commission", "spiff"...), as people read it; empty for
/// an unknown value.
pub fn earning_kind_name(k: i32) -> String {
    crate::events::v1::EarningKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EARNING_KIND_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// An earning status's short name ("earned", "payable"...); empty for an unknown value.
pub fn earning_status_name(s: i32) -> String {
    crate::events::v1::EarningStatus::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("EARNING_STATUS_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

impl EventEnvelope {
    /// The event type name, or "Unknown" for an envelope without payload.
    pub fn event_type(&self) -> &'static str {
        self.payload.as_ref().map_or("Unknown", Payload::event_type)
    }
}

/// Converts an instant to a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to an instant; `None` when out of range.
pub fn datetime(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}
