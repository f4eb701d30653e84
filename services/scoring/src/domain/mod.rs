//! Pure rules of scoring (no I/O): facts and the metric cells they contribute to, metric
//! definitions, scorecards and curves, goals and milestones, calibration, ranking and
//! process-pace alerts. Unit and property tests live here.

pub mod alerts;
pub mod calibration;
pub mod facts;
pub mod goals;
pub mod metrics;
pub mod rank;
pub mod scorecard;

/// Rounds to `dp` decimals, half to even.
pub fn round(d: rust_decimal::Decimal, dp: u32) -> rust_decimal::Decimal {
    d.round_dp_with_strategy(dp, rust_decimal::RoundingStrategy::MidpointNearestEven)
        .normalize()
}
