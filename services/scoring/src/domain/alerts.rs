//! Process management (过程管理): a rep whose activity run-rate in the current week lags
//! the pace its goal needs gets an alert (to the rep's manager).

use rust_decimal::Decimal;

use super::round;

/// Per-tenant alert settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Alert when actual < threshold_share x expected.
    pub threshold_share: Decimal,
    /// Stay quiet until this share of the window has elapsed.
    pub min_elapsed: Decimal,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold_share: Decimal::new(7, 1),
            min_elapsed: Decimal::new(3, 1),
        }
    }
}

/// The count the goal's pace needs by now in the window: the goal target spread evenly
/// over the goal period, times the part of the window (within the period) elapsed.
/// `window_elapsed_secs` and `period_secs` are seconds.
pub fn expected(target: Decimal, window_elapsed_secs: i64, period_secs: i64) -> Decimal {
    if period_secs <= 0 {
        return Decimal::ZERO;
    }
    round(
        target * Decimal::from(window_elapsed_secs.max(0)) / Decimal::from(period_secs),
        4,
    )
}

/// Whether to alert.
pub fn lagging(
    actual: Decimal,
    expected: Decimal,
    window_elapsed_share: Decimal,
    s: Settings,
) -> bool {
    window_elapsed_share >= s.min_elapsed
        && expected > Decimal::ZERO
        && actual < s.threshold_share * expected
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    #[test]
    fn pace_known_answers() {
        // 40 visits a 30-day month; 3.5 days into the week -> 40 x 3.5/30 = 4.6667.
        let e = expected(dec!(40), 302_400, 2_592_000);
        assert_eq!(e, dec!(4.6667));
        let s = Settings::default();
        assert!(lagging(dec!(3), e, dec!(0.5), s)); // 3 < 0.7 x 4.67 = 3.27
        assert!(!lagging(dec!(4), e, dec!(0.5), s));
        // Too early in the week to say.
        assert!(!lagging(dec!(0), e, dec!(0.2), s));
    }
}
