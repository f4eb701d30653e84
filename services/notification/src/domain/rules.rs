//! Which facts notify whom, and what they say: what happened, why, and what next.

use rust_decimal::Decimal;
use serde_json::{Value, json};
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;

/// Every rule name.
pub const RULES: &[&str] = &[
    "commission_earned",
    "tier_reached",
    "goal_milestone",
    "leaderboard_entered",
    "leaderboard_left",
    "award_granted",
    "process_alert",
    "dispute_opened",
    "dispute_resolved",
    "digest",
    "summary",
];

pub fn is_rule(r: &str) -> bool {
    RULES.contains(&r)
}

/// A notification to create.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub recipient: String,
    pub rule: &'static str,
    pub title: String,
    pub body: String,
    pub data: Value,
}

impl Draft {
    /// The fact a draft announces, when it outlives the event that carried it: a tier is
    /// reached once per rep and period, however many recomputations re-post the deal
    /// that crossed it. None: once per event.
    pub fn fact_key(&self) -> Option<String> {
        match self.rule {
            "tier_reached" => Some(format!(
                "tier_reached:{}:{}:{}",
                self.recipient,
                self.data["period"].as_str().unwrap_or_default(),
                self.data["tier"]["tier"]
            )),
            _ => None,
        }
    }
}

/// Who is above a rep: its manager, and for team-level facts the team's manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Org {
    pub rep_name: String,
    pub rep_manager: String,
    pub team_manager: String,
}

fn money(m: Option<&spm_proto::common::v1::Money>) -> String {
    m.map(|m| format!("{} {}", m.amount, m.currency))
        .unwrap_or_default()
}

/// How a rep reads an earning status.
fn status_word(s: i32) -> &'static str {
    match ev::EarningStatus::try_from(s).unwrap_or(ev::EarningStatus::Unspecified) {
        ev::EarningStatus::Earned => "earned (payable as the customer pays)",
        ev::EarningStatus::Payable => "payable",
        ev::EarningStatus::Held => "held",
        ev::EarningStatus::Paid => "paid",
        ev::EarningStatus::Reversed => "reversed",
        ev::EarningStatus::Unspecified => "recorded",
    }
}

/// "500.00 EUR payable, 500.00 EUR earned (payable as the customer pays)".
fn parts(by_status: &[ev::StatusAmount]) -> String {
    by_status
        .iter()
        .map(|p| format!("{} {}", money(p.amount.as_ref()), status_word(p.status)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(s: &str) -> String {
    s.parse::<Decimal>()
        .map(|d| format!("{}%", (d * Decimal::ONE_HUNDRED).round_dp(1).normalize()))
        .unwrap_or_else(|_| s.to_owned())
}

fn period(p: Option<&spm_proto::common::v1::Period>) -> String {
    p.map(|p| p.key.clone()).unwrap_or_default()
}

fn name<'a>(org: &'a Org, rep: &'a str) -> &'a str {
    if org.rep_name.is_empty() {
        rep
    } else {
        &org.rep_name
    }
}

/// The notifications an event gives rise to (leaderboard changes are derived elsewhere,
/// from standings).
#[allow(clippy::too_many_lines)]
pub fn drafts(e: &ev::EventEnvelope, org: &Org) -> Vec<Draft> {
    let mut out = Vec::new();
    match &e.payload {
        Some(Payload::EarningPosted(p)) => {
            let expl: Value = serde_json::from_str(&p.explanation_json).unwrap_or(Value::Null);
            let kind = ev::EarningKind::try_from(p.kind).unwrap_or(ev::EarningKind::Unspecified);
            let held = p.status == ev::EarningStatus::Held as i32;
            let what = match kind {
                ev::EarningKind::Clawback => "Clawback",
                ev::EarningKind::Bonus => "Bonus",
                ev::EarningKind::Spiff => "SPIFF",
                _ => "Commission",
            };
            let amount = money(p.amount.as_ref());
            let title = if kind == ev::EarningKind::Clawback {
                format!("{what}: {amount} on deal {}", p.deal_id)
            } else if held {
                format!("{what} of {amount} earned and held")
            } else {
                format!("You earned {amount} ({what})")
            };
            let mut body = format!(
                "{}. Your {} total is now {}.",
                p.summary,
                period(p.period.as_ref()),
                money(p.period_total.as_ref())
            );
            let next = if held {
                expl["gates"]
                    .as_array()
                    .and_then(|g| {
                        g.iter()
                            .find(|x| x["applied"] == true && x["action"] == "hold")
                    })
                    .map(|g| {
                        format!(
                            " Next: bring {} to at least {} to release it.",
                            g["metric"].as_str().unwrap_or("the metric"),
                            g["threshold"].as_str().unwrap_or("")
                        )
                    })
            } else {
                expl["next_tier"].as_object().map(|n| {
                    format!(
                        " Next: {} more revenue reaches the {} tier.",
                        n.get("revenue_needed")
                            .and_then(Value::as_str)
                            .unwrap_or("?"),
                        pct(n.get("rate").and_then(Value::as_str).unwrap_or("0"))
                    )
                })
            };
            if p.by_status.len() > 1 {
                body.push_str(&format!(" Of it: {}.", parts(&p.by_status)));
            }
            body.push_str(&next.unwrap_or_default());
            out.push(Draft {
                recipient: p.rep_id.clone(),
                rule: "commission_earned",
                title,
                body,
                data: json!({"line_id": p.line_id, "deal_id": p.deal_id, "amount": p.amount.as_ref().map(|m| &m.amount),
                             "currency": p.amount.as_ref().map(|m| &m.currency), "kind": kind.as_str_name(),
                             "status": ev::EarningStatus::try_from(p.status).map(|s| s.as_str_name()).unwrap_or_default(),
                             "period": period(p.period.as_ref()), "explanation": expl}),
            });
            // Crossing into a higher tier within this deal.
            if let Some(slices) = expl["slices"].as_array()
                && slices.len() > 1
                && let Some(top) = slices.last()
            {
                out.push(Draft {
                    recipient: p.rep_id.clone(),
                    rule: "tier_reached",
                    title: format!("Tier {} reached: {} commission", top["tier"], pct(top["rate"].as_str().unwrap_or("0"))),
                    body: format!(
                        "Deal {} took you past {} of quota in {}; revenue above it earns {}.{}",
                        p.deal_id,
                        pct(top["from"].as_str().unwrap_or("0")),
                        period(p.period.as_ref()),
                        pct(top["rate"].as_str().unwrap_or("0")),
                        expl["next_tier"]
                            .as_object()
                            .map(|n| format!(
                                " Next: {} more reaches {}.",
                                n.get("revenue_needed").and_then(Value::as_str).unwrap_or("?"),
                                pct(n.get("rate").and_then(Value::as_str).unwrap_or("0"))
                            ))
                            .unwrap_or_default()
                    ),
                    data: json!({"line_id": p.line_id, "tier": top, "period": period(p.period.as_ref())}),
                });
            }
        }
        Some(Payload::EarningAdjusted(a)) => {
            let net = a
                .amount
                .as_ref()
                .and_then(|m| m.amount.parse::<Decimal>().ok())
                .unwrap_or_default();
            // Money moving between statuses (a payment making commission payable) changes
            // no total: say where it went, not "adjusted by 0".
            let moved = a.by_status.iter().find(|p| {
                p.amount
                    .as_ref()
                    .and_then(|m| m.amount.parse::<Decimal>().ok())
                    .is_some_and(|x| x > Decimal::ZERO)
            });
            let title = match moved {
                Some(p) if net.is_zero() => {
                    format!(
                        "{} is now {}",
                        money(p.amount.as_ref()),
                        status_word(p.status)
                    )
                }
                _ if net.is_zero() => return out,
                _ => format!("Earnings adjusted by {}", money(a.amount.as_ref())),
            };
            let mut body = format!(
                "{}. Your {} total is now {}.",
                a.reason,
                period(a.period.as_ref()),
                money(a.period_total.as_ref())
            );
            if a.by_status.len() > 1 {
                body.push_str(&format!(" Moved: {}.", parts(&a.by_status)));
            }
            body.push_str(" Open the statement line to see every posting.");
            out.push(Draft {
                recipient: a.rep_id.clone(),
                rule: "commission_earned",
                title,
                body,
                data: json!({"line_id": a.line_id, "amount": a.amount.as_ref().map(|m| &m.amount), "adjusts_period": period(a.adjusts_period.as_ref()),
                             "by_status": a.by_status.iter().map(|p| json!({"status": status_word(p.status), "amount": p.amount.as_ref().map(|m| &m.amount)})).collect::<Vec<_>>()}),
            });
        }
        Some(Payload::GoalMilestoneReached(g)) => {
            let recipient = if g.rep_id.is_empty() {
                org.team_manager.clone()
            } else {
                g.rep_id.clone()
            };
            if !recipient.is_empty() {
                let subject = if g.rep_id.is_empty() {
                    format!("Team {}", g.team_id)
                } else {
                    "You".to_owned()
                };
                let remaining = g
                    .target
                    .parse::<Decimal>()
                    .ok()
                    .zip(g.value.parse::<Decimal>().ok())
                    .map(|(t, v)| (t - v).max(Decimal::ZERO));
                out.push(Draft {
                    recipient,
                    rule: "goal_milestone",
                    title: format!("{subject} reached {}% of the {} goal", g.milestone_percent, g.metric),
                    body: format!(
                        "{} is at {} of {} for {} ({}).{}",
                        g.metric,
                        g.value,
                        g.target,
                        period(g.period.as_ref()),
                        pct(&g.attainment),
                        remaining
                            .filter(|r| !r.is_zero())
                            .map(|r| format!(" Next: {} to go to 100%.", r.normalize()))
                            .unwrap_or_else(|| " Next: every further unit counts above target.".into())
                    ),
                    data: json!({"goal_id": g.goal_id, "milestone": g.milestone_percent, "value": g.value, "target": g.target}),
                });
            }
        }
        Some(Payload::ProcessAlertRaised(a)) => {
            let manager = if a.manager_id.is_empty() {
                org.rep_manager.clone()
            } else {
                a.manager_id.clone()
            };
            if !manager.is_empty() {
                out.push(Draft {
                    recipient: manager,
                    rule: "process_alert",
                    title: format!("{} is behind on {} this week", name(org, &a.rep_id), a.metric),
                    body: format!(
                        "{} logged {} {} in {} while the goal of {} for {} needs {} by now (alert below {} of pace). Next: check in on pipeline and plan visits for the rest of the week.",
                        name(org, &a.rep_id),
                        a.actual,
                        a.metric,
                        a.window,
                        a.goal_target,
                        period(a.period.as_ref()),
                        a.expected,
                        pct(&a.threshold_share)
                    ),
                    data: json!({"rep_id": a.rep_id, "metric": a.metric, "actual": a.actual, "expected": a.expected, "window": a.window}),
                });
            }
        }
        Some(Payload::AwardGranted(a)) => {
            let what = if a.kind == ev::AwardKind::PromotionEligibility as i32 {
                "Eligible for promotion"
            } else {
                "Badge earned"
            };
            out.push(Draft {
                recipient: a.rep_id.clone(),
                rule: "award_granted",
                title: format!("{what}: {}", a.title),
                body: format!("{}. Congratulations!", a.reason),
                data: json!({"award_id": a.award_id, "code": a.code, "period": period(a.period.as_ref())}),
            });
            if !org.rep_manager.is_empty() {
                out.push(Draft {
                    recipient: org.rep_manager.clone(),
                    rule: "award_granted",
                    title: format!("{} earned: {}", name(org, &a.rep_id), a.title),
                    body: format!("{}. Next: recognise it with the team.", a.reason),
                    data: json!({"award_id": a.award_id, "rep_id": a.rep_id, "code": a.code}),
                });
            }
        }
        Some(Payload::DisputeOpened(d)) if !org.rep_manager.is_empty() => {
            out.push(Draft {
                recipient: org.rep_manager.clone(),
                rule: "dispute_opened",
                title: format!("{} disputes a statement line", name(org, &d.rep_id)),
                body: format!("Reason: {}. Next: review line {} and accept it with an adjustment or reject it.", d.reason, d.line_id),
                data: json!({"dispute_id": d.dispute_id, "line_id": d.line_id, "rep_id": d.rep_id}),
            });
        }
        Some(Payload::DisputeResolved(d)) => {
            let accepted = d.outcome == ev::DisputeOutcome::Accepted as i32;
            out.push(Draft {
                recipient: d.rep_id.clone(),
                rule: "dispute_resolved",
                title: if accepted { format!("Dispute accepted: {}", money(d.adjustment.as_ref())) } else { "Dispute rejected".into() },
                body: format!(
                    "{} resolved your dispute on line {}: {}.{}",
                    d.resolved_by,
                    d.line_id,
                    if d.note.is_empty() { "no note" } else { &d.note },
                    if accepted { " The adjustment is on your current statement." } else { " Reply to your manager if you disagree." }
                ),
                data: json!({"dispute_id": d.dispute_id, "outcome": if accepted {"accepted"} else {"rejected"}}),
            });
        }
        _ => {}
    }
    out
}

/// Entering and leaving the top N: `before` and `after` are the top-N rep lists.
pub fn standings(before: &[String], after: &[String], n: usize, period: &str) -> Vec<Draft> {
    let mut out = Vec::new();
    for (i, rep) in after.iter().enumerate() {
        if !before.contains(rep) {
            out.push(Draft {
                recipient: rep.clone(),
                rule: "leaderboard_entered",
                title: format!("You are in the top {n} for {period}"),
                body: format!(
                    "You rank #{} on the {period} leaderboard. Next: keep the pace to stay there.",
                    i + 1
                ),
                data: json!({"rank": i + 1, "top_n": n, "period": period}),
            });
        }
    }
    for rep in before {
        if !after.contains(rep) {
            out.push(Draft {
                recipient: rep.clone(),
                rule: "leaderboard_left",
                title: format!("You dropped out of the top {n} for {period}"),
                body: format!("Others passed you on the {period} leaderboard. Next: see your score breakdown for the KPI with the most room."),
                data: json!({"top_n": n, "period": period}),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(p: Payload) -> ev::EventEnvelope {
        ev::EventEnvelope {
            payload: Some(p),
            ..Default::default()
        }
    }

    fn eur(a: &str) -> Option<spm_proto::common::v1::Money> {
        Some(spm_proto::common::v1::Money {
            amount: a.into(),
            currency: "EUR".into(),
        })
    }

    fn part(s: ev::EarningStatus, a: &str) -> ev::StatusAmount {
        ev::StatusAmount {
            status: s as i32,
            amount: eur(a),
        }
    }

    #[test]
    fn a_line_split_across_statuses_is_one_notification_of_the_whole() {
        let p = ev::EarningPosted {
            line_id: "l1".into(),
            rep_id: "r1".into(),
            kind: ev::EarningKind::Commission as i32,
            status: ev::EarningStatus::Earned as i32,
            amount: eur("1000.00"),
            by_status: vec![
                part(ev::EarningStatus::Earned, "500.00"),
                part(ev::EarningStatus::Payable, "500.00"),
            ],
            summary: "10% of 10000 EUR".into(),
            ..Default::default()
        };
        let d = drafts(&env(Payload::EarningPosted(p)), &Org::default());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].title, "You earned 1000.00 EUR (Commission)");
        assert!(
            d[0].body.contains(
                "Of it: 500.00 EUR earned (payable as the customer pays), 500.00 EUR payable."
            ),
            "{}",
            d[0].body
        );
    }

    #[test]
    fn money_becoming_payable_says_so_instead_of_adjusted_by_zero() {
        let a = ev::EarningAdjusted {
            line_id: "l1".into(),
            rep_id: "r1".into(),
            amount: eur("0.00"),
            by_status: vec![
                part(ev::EarningStatus::Earned, "-250.00"),
                part(ev::EarningStatus::Payable, "250.00"),
            ],
            reason: "recomputed: 10% of 10000 EUR".into(),
            period_total: eur("1000.00"),
            ..Default::default()
        };
        let d = drafts(&env(Payload::EarningAdjusted(a.clone())), &Org::default());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].title, "250.00 EUR is now payable");
        assert!(
            d[0].body.contains("Moved: -250.00 EUR earned"),
            "{}",
            d[0].body
        );
        // A real change keeps its amount.
        let changed = ev::EarningAdjusted {
            amount: eur("-40.00"),
            by_status: vec![part(ev::EarningStatus::Payable, "-40.00")],
            ..a.clone()
        };
        let d = drafts(&env(Payload::EarningAdjusted(changed)), &Org::default());
        assert_eq!(d[0].title, "Earnings adjusted by -40.00 EUR");
        // Nothing moved anywhere: nothing to say.
        let nothing = ev::EarningAdjusted {
            by_status: vec![],
            ..a
        };
        assert!(drafts(&env(Payload::EarningAdjusted(nothing)), &Org::default()).is_empty());
    }

    #[test]
    fn commission_says_amount_reason_and_next_tier() {
        let p = ev::EarningPosted {
            line_id: "l1".into(),
            rep_id: "r1".into(),
            kind: ev::EarningKind::Commission as i32,
            status: ev::EarningStatus::Payable as i32,
            amount: Some(spm_proto::common::v1::Money { amount: "260.00".into(), currency: "EUR".into() }),
            deal_id: "d2".into(),
            summary: "6.5% of 4000 EUR across 2 tiers".into(),
            explanation_json: r#"{"slices":[{"tier":1,"from":"0","rate":"0.05"},{"tier":2,"from":"1","rate":"0.08"}],"next_tier":{"rate":"0.1","revenue_needed":"3000.00"}}"#.into(),
            period: Some(spm_proto::common::v1::Period { kind: 1, key: "2026-11".into() }),
            period_total: Some(spm_proto::common::v1::Money { amount: "660.00".into(), currency: "EUR".into() }),
            ..Default::default()
        };
        let d = drafts(&env(Payload::EarningPosted(p)), &Org::default());
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].title, "You earned 260.00 EUR (Commission)");
        assert!(d[0].body.contains("660.00 EUR"), "{}", d[0].body);
        assert!(
            d[0].body
                .contains("3000.00 more revenue reaches the 10% tier"),
            "{}",
            d[0].body
        );
        assert_eq!(d[1].rule, "tier_reached");
        assert!(d[1].title.contains("8%"), "{}", d[1].title);
        // Once per rep, period and tier (a recomputed deal re-posts the same crossing);
        // the commission itself is once per event.
        assert_eq!(
            d[1].fact_key().as_deref(),
            Some("tier_reached:r1:2026-11:2")
        );
        assert_eq!(d[0].fact_key(), None);
    }

    #[test]
    fn process_alerts_go_to_the_manager() {
        let a = ev::ProcessAlertRaised {
            rep_id: "r1".into(),
            metric: "visits".into(),
            actual: "3".into(),
            expected: "4.6667".into(),
            threshold_share: "0.7".into(),
            ..Default::default()
        };
        let org = Org {
            rep_name: "Ana".into(),
            rep_manager: "m1".into(),
            team_manager: String::new(),
        };
        let d = drafts(&env(Payload::ProcessAlertRaised(a)), &org);
        assert_eq!(d[0].recipient, "m1");
        assert!(d[0].title.starts_with("Ana is behind on visits"));
        // No manager known: nobody to tell.
        assert!(
            drafts(
                &env(Payload::ProcessAlertRaised(
                    ev::ProcessAlertRaised::default()
                )),
                &Org::default()
            )
            .is_empty()
        );
    }

    #[test]
    fn standings_diff() {
        let before = vec!["a".to_owned(), "b".to_owned()];
        let after = vec!["a".to_owned(), "c".to_owned()];
        let d = standings(&before, &after, 2, "2026-11");
        let got: Vec<(&str, &str)> = d.iter().map(|x| (x.recipient.as_str(), x.rule)).collect();
        assert_eq!(
            got,
            [("c", "leaderboard_entered"), ("b", "leaderboard_left")]
        );
    }
}
