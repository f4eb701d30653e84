//! Goal calibration (目标设定): are the goals of a set plausible? Each goal's attainment
//! is projected to the period end from its run-rate; a set where implausibly few goals are
//! on track has targets too high, implausibly many too low.

use rust_decimal::Decimal;

use super::goals::projected;
use super::round;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Plausible,
    TooHigh,
    TooLow,
    TooEarly,
    NoGoals,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub goal_id: String,
    pub subject_id: String,
    pub value: Decimal,
    pub target: Decimal,
    pub projected: Decimal,
    pub on_track: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calibration {
    pub verdict: Verdict,
    pub on_track: usize,
    pub on_track_share: Decimal,
    pub median: Option<Decimal>,
    /// (from %, to %, goals); the last bucket is open-ended (to = 0).
    pub distribution: Vec<(u32, u32, u32)>,
    pub projections: Vec<Projection>,
    pub explanation: String,
}

/// Bucket edges in percent of target.
pub const BUCKETS: [u32; 7] = [0, 50, 75, 100, 125, 150, 200];

/// Minimum share of the period elapsed before projections mean anything.
pub const MIN_ELAPSED: Decimal = Decimal::from_parts(1, 0, 0, false, 1); // 0.1

/// Calibrates goals `(goal_id, subject, value, target)` at `elapsed` of the period.
pub fn calibrate(
    goals: &[(String, String, Decimal, Decimal)],
    elapsed: Decimal,
    low: Decimal,
    high: Decimal,
) -> Calibration {
    let mut out = Calibration {
        verdict: Verdict::NoGoals,
        on_track: 0,
        on_track_share: Decimal::ZERO,
        median: None,
        distribution: Vec::new(),
        projections: Vec::new(),
        explanation: String::new(),
    };
    if goals.is_empty() {
        out.explanation = "no goals for this metric and period".into();
        return out;
    }
    if elapsed < MIN_ELAPSED {
        out.verdict = Verdict::TooEarly;
        out.explanation = format!(
            "only {}% of the period has elapsed; projections need 10%",
            round(elapsed * Decimal::ONE_HUNDRED, 1)
        );
        return out;
    }
    let mut projections: Vec<Projection> = goals
        .iter()
        .filter_map(|(id, subject, value, target)| {
            let p = projected(*value, *target, elapsed)?;
            Some(Projection {
                goal_id: id.clone(),
                subject_id: subject.clone(),
                value: *value,
                target: *target,
                projected: p,
                on_track: p >= Decimal::ONE,
            })
        })
        .collect();
    projections.sort_by(|a, b| {
        a.projected
            .cmp(&b.projected)
            .then_with(|| a.subject_id.cmp(&b.subject_id))
    });
    let n = projections.len();
    if n == 0 {
        out.explanation = "every goal has a zero target".into();
        return out;
    }
    out.on_track = projections.iter().filter(|p| p.on_track).count();
    out.on_track_share = round(Decimal::from(out.on_track) / Decimal::from(n), 4);
    out.median = Some(if n % 2 == 1 {
        projections[n / 2].projected
    } else {
        round(
            (projections[n / 2 - 1].projected + projections[n / 2].projected) / Decimal::TWO,
            4,
        )
    });
    for (i, from) in BUCKETS.iter().enumerate() {
        let to = BUCKETS.get(i + 1).copied().unwrap_or(0);
        let count = projections
            .iter()
            .filter(|p| {
                let pct = p.projected * Decimal::ONE_HUNDRED;
                pct >= Decimal::from(*from) && (to == 0 || pct < Decimal::from(to))
            })
            .count();
        out.distribution
            .push((*from, to, u32::try_from(count).unwrap_or(u32::MAX)));
    }
    let pct = |d: Decimal| round(d * Decimal::ONE_HUNDRED, 1);
    out.verdict = if out.on_track_share < low {
        Verdict::TooHigh
    } else if out.on_track_share > high {
        Verdict::TooLow
    } else {
        Verdict::Plausible
    };
    out.explanation = format!(
        "{} of {n} goals ({}%) are on track to reach 100% at the current run-rate; median projection {}%; plausible band {}%..{}%",
        out.on_track,
        pct(out.on_track_share),
        pct(out.median.unwrap_or_default()),
        pct(low),
        pct(high)
    );
    out.projections = projections;
    out
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    fn goals(values: &[i64]) -> Vec<(String, String, Decimal, Decimal)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    format!("g{i}"),
                    format!("rep-{i}"),
                    Decimal::from(*v),
                    dec!(100),
                )
            })
            .collect()
    }

    #[test]
    fn too_high_when_nobody_is_on_track() {
        // Half the period gone; everyone at 20..40% of target: projections 40..80%.
        let c = calibrate(
            &goals(&[20, 25, 30, 35, 40]),
            dec!(0.5),
            dec!(0.2),
            dec!(0.8),
        );
        assert_eq!(c.verdict, Verdict::TooHigh);
        assert_eq!(c.on_track, 0);
        assert_eq!(c.median, Some(dec!(0.6)));
        // Projections 0.4 | 0.5 0.6 0.7 | 0.8: 50% exactly opens the second bucket.
        assert_eq!(c.distribution[0], (0, 50, 1));
        assert_eq!(c.distribution[1], (50, 75, 3));
        assert_eq!(c.distribution[2], (75, 100, 1));
    }

    #[test]
    fn too_low_when_everybody_is_on_track() {
        let c = calibrate(&goals(&[60, 70, 80, 90]), dec!(0.5), dec!(0.2), dec!(0.8));
        assert_eq!(c.verdict, Verdict::TooLow);
        assert_eq!(c.on_track_share, dec!(1));
        assert_eq!(c.median, Some(dec!(1.5)));
    }

    #[test]
    fn plausible_mix_and_edge_cases() {
        // Projections 0.6, 0.9, 1.0, 1.2, 0.4: two of five on track.
        let c = calibrate(
            &goals(&[30, 45, 50, 60, 20]),
            dec!(0.5),
            dec!(0.2),
            dec!(0.8),
        );
        assert_eq!(c.verdict, Verdict::Plausible);
        assert_eq!(c.on_track, 2);
        assert_eq!(c.on_track_share, dec!(0.4));
        assert_eq!(
            calibrate(&goals(&[50]), dec!(0.05), dec!(0.2), dec!(0.8)).verdict,
            Verdict::TooEarly
        );
        assert_eq!(
            calibrate(&[], dec!(0.5), dec!(0.2), dec!(0.8)).verdict,
            Verdict::NoGoals
        );
    }
}
