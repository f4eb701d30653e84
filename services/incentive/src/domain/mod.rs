//! Pure rules of incentive (no I/O): plans and their validation, the earnings a rep-period
//! should have under a plan (commission tiers, gates, caps, payout on collection, SPIFFs,
//! clawbacks, bonuses), the ledger difference to post, and recognition awards.

pub mod awards;
pub mod chain;
pub mod compute;
pub mod ledger;
pub mod lifecycle;
pub mod plan;

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds a ratio for display (4 decimals, half-even).
pub fn ratio(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(4, RoundingStrategy::MidpointNearestEven)
        .normalize()
}
