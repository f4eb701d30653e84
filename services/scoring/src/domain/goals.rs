//! Goals: attainment, milestones, projections and the checks on setting one.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use spm_core::period::{Period, PeriodKind};

use super::round;

/// The milestones a goal announces, in percent of its target.
pub const MILESTONES: [u32; 4] = [50, 75, 100, 150];

/// value / target (4 decimals), or None for a zero target.
pub fn attainment(value: Decimal, target: Decimal) -> Option<Decimal> {
    (target > Decimal::ZERO).then(|| round(value / target, 4))
}

/// Milestones newly reached when attainment is `now` and the highest announced so far is
/// `announced` (0 for none).
pub fn crossed(announced: u32, now: Decimal) -> Vec<u32> {
    let pct = now * Decimal::ONE_HUNDRED;
    MILESTONES
        .into_iter()
        .filter(|m| *m > announced && pct >= Decimal::from(*m))
        .collect()
}

/// Attainment projected to the period's end from the run-rate so far; None too early.
pub fn projected(value: Decimal, target: Decimal, elapsed: Decimal) -> Option<Decimal> {
    if target <= Decimal::ZERO || elapsed <= Decimal::ZERO {
        return None;
    }
    Some(round(value / elapsed / target, 4))
}

/// Goal periods are months, quarters or years.
pub fn goal_period_kind_ok(kind: PeriodKind) -> bool {
    matches!(
        kind,
        PeriodKind::Month | PeriodKind::Quarter | PeriodKind::Year
    )
}

/// Two goal periods of different kinds for the same subject and metric overlap when their
/// intervals intersect (a monthly and a quarterly revenue goal covering November would
/// count November twice). Same-kind same-key is an update, not an overlap.
pub fn overlaps(a: &Period, b: &Period) -> bool {
    a.kind != b.kind && a.start < b.end && b.start < a.end
}

/// Whether `effective_from` is acceptable for a goal of `period`: not after its end.
pub fn effective_ok(period: &Period, effective_from: DateTime<Utc>) -> bool {
    effective_from < period.end
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;
    use spm_core::period::Calendar;

    use super::*;

    #[test]
    fn milestones_cross_once_in_order() {
        assert_eq!(crossed(0, dec!(0.49)), Vec::<u32>::new());
        assert_eq!(crossed(0, dec!(0.8)), vec![50, 75]);
        assert_eq!(crossed(75, dec!(1.6)), vec![100, 150]);
        assert_eq!(crossed(150, dec!(3)), Vec::<u32>::new());
        // Falling back (a reversal) announces nothing.
        assert_eq!(crossed(100, dec!(0.6)), Vec::<u32>::new());
    }

    #[test]
    fn attainment_and_projection() {
        assert_eq!(attainment(dec!(7500), dec!(10000)), Some(dec!(0.75)));
        assert_eq!(attainment(dec!(1), dec!(0)), None);
        // Half the period gone, 40% of target: on pace for 80%.
        assert_eq!(
            projected(dec!(4000), dec!(10000), dec!(0.5)),
            Some(dec!(0.8))
        );
        assert_eq!(projected(dec!(4000), dec!(10000), dec!(0)), None);
    }

    #[test]
    fn overlapping_periods() {
        let cal = Calendar::default();
        let nov = cal.parse_key(PeriodKind::Month, "2026-11").unwrap();
        let q4 = cal.parse_key(PeriodKind::Quarter, "FY2026-Q4").unwrap();
        let q1 = cal.parse_key(PeriodKind::Quarter, "FY2027-Q1").unwrap();
        assert!(overlaps(&nov, &q4));
        assert!(!overlaps(&nov, &q1));
        assert!(!overlaps(&nov, &nov));
    }
}
