//! Recognition (精神奖励): badges and promotion eligibility by rule. Awards are granted
//! once (per rep and code, and per period for per-period badges) and never revoked.

use rust_decimal::Decimal;

use super::plan::{BadgeKind, Plan};
use super::ratio;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwardKind {
    Badge,
    Promotion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    pub code: String,
    pub title: String,
    pub kind: AwardKind,
    /// The period it was earned in; empty for once-in-a-career badges.
    pub period_key: String,
    pub reason: String,
}

/// One period's result for a rep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodResult {
    pub period_key: String,
    pub attainment: Option<Decimal>,
    pub score: Option<Decimal>,
}

/// Whether the plan has badges that [`during`] can grant (first deal, attainment club).
pub fn any_during(plan: &Plan) -> bool {
    plan.badges
        .iter()
        .any(|b| matches!(b.kind, BadgeKind::FirstDeal | BadgeKind::AttainmentClub))
}

/// Awards earned as the period progresses: first deal, attainment clubs.
pub fn during(plan: &Plan, has_deal: bool, current: &PeriodResult) -> Vec<Award> {
    let mut out = Vec::new();
    for b in &plan.badges {
        match b.kind {
            BadgeKind::FirstDeal if has_deal => out.push(Award {
                code: b.code.clone(),
                title: title(b.title.as_str(), "First deal"),
                kind: AwardKind::Badge,
                period_key: String::new(),
                reason: format!("first deal closed, in {}", current.period_key),
            }),
            BadgeKind::AttainmentClub => {
                if let Some(a) = current.attainment
                    && a >= b.threshold
                {
                    out.push(Award {
                        code: b.code.clone(),
                        title: title(
                            &b.title,
                            &format!("{}% club", b.threshold * Decimal::ONE_HUNDRED),
                        ),
                        kind: AwardKind::Badge,
                        period_key: current.period_key.clone(),
                        reason: format!("attainment {} reached {}", ratio(a), b.threshold),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Awards settled at period close from the closed periods up to and including the current
/// one (`history`, consecutive, oldest first): streaks and promotion eligibility.
pub fn at_close(plan: &Plan, history: &[PeriodResult]) -> Vec<Award> {
    let Some(current) = history.last() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in plan.badges.iter().filter(|b| b.kind == BadgeKind::Streak) {
        let n = b.periods as usize;
        if history.len() >= n
            && history[history.len() - n..]
                .iter()
                .all(|p| p.attainment.is_some_and(|a| a >= b.threshold))
        {
            out.push(Award {
                code: b.code.clone(),
                title: title(
                    &b.title,
                    &format!(
                        "{n} periods in a row at {}%",
                        b.threshold * Decimal::ONE_HUNDRED
                    ),
                ),
                kind: AwardKind::Badge,
                period_key: current.period_key.clone(),
                reason: format!(
                    "{n} consecutive periods at attainment >= {}: {}",
                    b.threshold,
                    history[history.len() - n..]
                        .iter()
                        .map(|p| p.period_key.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    if let Some(pr) = &plan.promotion {
        let n = pr.periods as usize;
        if history.len() >= n
            && history[history.len() - n..].iter().all(|p| {
                p.attainment.is_some_and(|a| a >= pr.min_attainment)
                    && p.score.is_some_and(|s| s >= pr.min_score)
            })
        {
            out.push(Award {
                code: "promotion".into(),
                title: "Eligible for promotion".into(),
                kind: AwardKind::Promotion,
                period_key: current.period_key.clone(),
                reason: format!(
                    "{n} consecutive periods at attainment >= {} with score >= {}",
                    pr.min_attainment, pr.min_score
                ),
            });
        }
    }
    out
}

fn title(given: &str, default: &str) -> String {
    if given.is_empty() {
        default.to_owned()
    } else {
        given.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;
    use spm_proto::incentive::v1 as pb;

    use super::*;
    use crate::domain::plan::{from_proto, tests::proto_plan};

    fn plan() -> Plan {
        let mut p = proto_plan();
        p.badges = vec![
            pb::BadgeRule {
                code: "first".into(),
                title: String::new(),
                kind: pb::BadgeKind::FirstDeal as i32,
                threshold: String::new(),
                periods: 0,
            },
            pb::BadgeRule {
                code: "club-120".into(),
                title: String::new(),
                kind: pb::BadgeKind::AttainmentClub as i32,
                threshold: "1.2".into(),
                periods: 0,
            },
            pb::BadgeRule {
                code: "streak-3".into(),
                title: String::new(),
                kind: pb::BadgeKind::Streak as i32,
                threshold: "1".into(),
                periods: 3,
            },
        ];
        p.promotion = Some(pb::PromotionRule {
            periods: 2,
            min_attainment: "1.1".into(),
            min_score: "90".into(),
        });
        from_proto(&p).unwrap()
    }

    fn r(key: &str, a: Decimal, s: Decimal) -> PeriodResult {
        PeriodResult {
            period_key: key.into(),
            attainment: Some(a),
            score: Some(s),
        }
    }

    #[test]
    fn first_deal_and_club() {
        let got: Vec<String> = during(&plan(), true, &r("2026-11", dec!(1.25), dec!(80)))
            .into_iter()
            .map(|a| a.code)
            .collect();
        assert_eq!(got, ["first", "club-120"]);
        assert!(during(&plan(), false, &r("2026-11", dec!(1.1), dec!(80))).is_empty());
    }

    #[test]
    fn only_first_deal_and_club_badges_are_granted_during_a_period() {
        let mut p = plan();
        assert!(any_during(&p));
        // A streak is settled at close: a plan with only streaks grants nothing during.
        p.badges.retain(|b| b.kind == BadgeKind::Streak);
        assert!(!any_during(&p));
        assert!(during(&p, true, &r("2026-11", dec!(2), dec!(100))).is_empty());
        p.badges.clear();
        assert!(!any_during(&p));
    }

    #[test]
    fn streak_and_promotion_need_consecutive_periods() {
        let h = [
            r("2026-09", dec!(1.0), dec!(95)),
            r("2026-10", dec!(1.15), dec!(92)),
            r("2026-11", dec!(1.3), dec!(91)),
        ];
        let got: Vec<(String, AwardKind)> = at_close(&plan(), &h)
            .into_iter()
            .map(|a| (a.code, a.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("streak-3".to_owned(), AwardKind::Badge),
                ("promotion".to_owned(), AwardKind::Promotion)
            ]
        );
        let broken = [
            r("2026-09", dec!(0.9), dec!(95)),
            r("2026-10", dec!(1.15), dec!(92)),
            r("2026-11", dec!(1.3), dec!(85)),
        ];
        assert!(at_close(&plan(), &broken).is_empty());
    }
}
