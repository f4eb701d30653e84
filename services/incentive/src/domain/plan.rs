//! Plans as data: what a plan may say, checked field by field.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use spm_core::metrics::is_metric;
use spm_core::money::parse_decimal;
use spm_core::period::PeriodKind;
use spm_core::validation::{FieldViolation, Violations};
use spm_proto::common::v1 as common;
use spm_proto::incentive::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Basis {
    Attainment,
    CumulativeAmount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    Marginal,
    Retroactive,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Commission {
    pub basis: Basis,
    pub mode: Mode,
    pub quota: Decimal,
    pub rep_quotas: BTreeMap<String, Decimal>,
    /// (from, rate), ascending, first from 0.
    pub tiers: Vec<(Decimal, Decimal)>,
    pub threshold: Decimal,
    pub per_deal_cap: Option<Decimal>,
    pub period_cap: Option<Decimal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GateOp {
    Below,
    AtLeast,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GateAction {
    Multiply(Decimal),
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gate {
    pub metric: String,
    pub op: GateOp,
    pub value: Decimal,
    pub action: GateAction,
}

impl Gate {
    pub fn triggered(&self, v: Decimal) -> bool {
        match self.op {
            GateOp::Below => v < self.value,
            GateOp::AtLeast => v >= self.value,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reward {
    Fixed(Decimal),
    Rate(Decimal),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spiff {
    pub spiff_id: String,
    pub name: String,
    pub products: Vec<String>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub reward: Reward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BadgeKind {
    FirstDeal,
    AttainmentClub,
    Streak,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Badge {
    pub code: String,
    pub title: String,
    pub kind: BadgeKind,
    pub threshold: Decimal,
    pub periods: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Promotion {
    pub periods: u32,
    pub min_attainment: Decimal,
    pub min_score: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub reps: Vec<String>,
    pub teams: Vec<String>,
    pub tenant_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub plan_id: String,
    pub name: String,
    pub version: u32,
    pub effective_from: NaiveDate,
    pub period_kind: PeriodKind,
    pub assignment: Assignment,
    pub commission: Option<Commission>,
    pub gates: Vec<Gate>,
    /// Share of commission payable at close (the rest on collection), in percent.
    pub at_close_percent: Decimal,
    pub attainment_bonuses: Vec<(Decimal, Decimal)>,
    pub score_bonus: Vec<(Decimal, Decimal)>,
    pub spiffs: Vec<Spiff>,
    pub clawback_window_days: u32,
    pub badges: Vec<Badge>,
    pub promotion: Option<Promotion>,
}

impl Plan {
    /// Whether scoring's KPIs change what this plan pays: a gate on a metric, a bonus by
    /// score band, or a promotion rule (which reads the periods' scores at close).
    pub fn depends_on_kpis(&self) -> bool {
        !self.gates.is_empty() || !self.score_bonus.is_empty() || self.promotion.is_some()
    }

    /// The rep's quota (attainment basis) or 1 (amount basis: positions are amounts).
    pub fn quota_for(&self, rep: &str) -> Decimal {
        match &self.commission {
            Some(c) if c.basis == Basis::Attainment => {
                c.rep_quotas.get(rep).copied().unwrap_or(c.quota)
            }
            _ => Decimal::ONE,
        }
    }
}

fn dec(v: &mut Violations, field: &str, s: &str) -> Option<Decimal> {
    match parse_decimal(s) {
        Ok(d) => Some(d),
        Err(e) => {
            v.add(field, e.to_string());
            None
        }
    }
}

fn opt_dec(v: &mut Violations, field: &str, s: &str) -> Option<Option<Decimal>> {
    if s.is_empty() {
        Some(None)
    } else {
        dec(v, field, s).map(Some)
    }
}

fn non_negative(v: &mut Violations, field: &str, s: &str) -> Option<Decimal> {
    let d = dec(v, field, s)?;
    if d < Decimal::ZERO {
        v.add(field, "must not be negative");
        return None;
    }
    Some(d)
}

fn date(v: &mut Violations, field: &str, s: &str) -> Option<NaiveDate> {
    match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(_) => {
            v.add(field, "must be a date YYYY-MM-DD");
            None
        }
    }
}

/// Checks a plan definition; the version is set by the caller.
#[allow(clippy::too_many_lines)]
pub fn from_proto(p: &pb::Plan) -> Result<Plan, Vec<FieldViolation>> {
    let mut v = Violations::new();
    v.id("plan_id", &p.plan_id, 64);
    v.text("name", &p.name, 200);
    let effective_from = date(&mut v, "effective_from", &p.effective_from);
    let period_kind = match common::PeriodKind::try_from(p.period_kind) {
        Ok(common::PeriodKind::Month) => PeriodKind::Month,
        Ok(common::PeriodKind::Quarter) => PeriodKind::Quarter,
        _ => {
            v.add("period_kind", "must be MONTH or QUARTER");
            PeriodKind::Month
        }
    };
    let a = p.assignment.clone().unwrap_or_default();
    if a.rep_ids.is_empty() && a.team_ids.is_empty() && !a.tenant_default {
        v.add("assignment", "name rep_ids, team_ids or set tenant_default");
    }
    for (i, r) in a.rep_ids.iter().enumerate() {
        v.id(format!("assignment.rep_ids[{i}]"), r, 128);
    }
    for (i, t) in a.team_ids.iter().enumerate() {
        v.id(format!("assignment.team_ids[{i}]"), t, 128);
    }

    let commission = p.commission.as_ref().map(|c| {
        let f = "commission";
        let basis = match pb::TierBasis::try_from(c.basis) {
            Ok(pb::TierBasis::CumulativeAmount) => Basis::CumulativeAmount,
            Ok(pb::TierBasis::Attainment) | Ok(pb::TierBasis::Unspecified) => Basis::Attainment,
            Err(_) => {
                v.add(format!("{f}.basis"), "unknown basis");
                Basis::Attainment
            }
        };
        let mode = match pb::TierMode::try_from(c.mode) {
            Ok(pb::TierMode::Retroactive) => Mode::Retroactive,
            Ok(pb::TierMode::Marginal) | Ok(pb::TierMode::Unspecified) => Mode::Marginal,
            Err(_) => {
                v.add(format!("{f}.mode"), "unknown mode");
                Mode::Marginal
            }
        };
        let quota = if basis == Basis::Attainment {
            match dec(&mut v, &format!("{f}.quota"), &c.quota) {
                Some(q) if q > Decimal::ZERO => q,
                Some(_) => {
                    v.add(format!("{f}.quota"), "must be greater than zero");
                    Decimal::ONE
                }
                None => Decimal::ONE,
            }
        } else {
            Decimal::ONE
        };
        let mut rep_quotas = BTreeMap::new();
        for (rep, q) in &c.rep_quotas {
            match dec(&mut v, &format!("{f}.rep_quotas[{rep}]"), q) {
                Some(q) if q > Decimal::ZERO => {
                    rep_quotas.insert(rep.clone(), q);
                }
                Some(_) => v.add(
                    format!("{f}.rep_quotas[{rep}]"),
                    "must be greater than zero",
                ),
                None => {}
            }
        }
        let mut tiers = Vec::new();
        if c.tiers.is_empty() {
            v.add(format!("{f}.tiers"), "at least one tier is required");
        }
        for (i, t) in c.tiers.iter().enumerate() {
            let tf = format!("{f}.tiers[{i}]");
            let from = non_negative(&mut v, &format!("{tf}.from"), &t.from);
            let rate = non_negative(&mut v, &format!("{tf}.rate"), &t.rate);
            if let (Some(from), Some(rate)) = (from, rate) {
                if i == 0 && from != Decimal::ZERO {
                    v.add(format!("{tf}.from"), "the first tier starts at 0");
                }
                if let Some((prev, _)) = tiers.last()
                    && from <= *prev
                {
                    v.add(
                        format!("{tf}.from"),
                        format!("tiers overlap: {from} is not above the previous tier's {prev}"),
                    );
                }
                if rate > Decimal::ONE {
                    v.add(
                        format!("{tf}.rate"),
                        "is a fraction (0.05 = 5%); above 1 pays more than the revenue",
                    );
                }
                tiers.push((from, rate));
            }
        }
        let threshold = if c.threshold.is_empty() {
            Decimal::ZERO
        } else {
            non_negative(&mut v, &format!("{f}.threshold"), &c.threshold).unwrap_or_default()
        };
        let per_deal_cap = opt_dec(&mut v, &format!("{f}.per_deal_cap"), &c.per_deal_cap).flatten();
        let period_cap = opt_dec(&mut v, &format!("{f}.period_cap"), &c.period_cap).flatten();
        for (name, cap) in [("per_deal_cap", per_deal_cap), ("period_cap", period_cap)] {
            if cap.is_some_and(|c| c < Decimal::ZERO) {
                v.add(format!("{f}.{name}"), "must not be negative");
            }
        }
        Commission {
            basis,
            mode,
            quota,
            rep_quotas,
            tiers,
            threshold,
            per_deal_cap,
            period_cap,
        }
    });

    let mut gates = Vec::new();
    for (i, g) in p.gates.iter().enumerate() {
        let gf = format!("gates[{i}]");
        if !is_metric(&g.metric) {
            v.add(
                format!("{gf}.metric"),
                format!("unknown KPI {:?}", g.metric),
            );
        }
        let op = match pb::GateOp::try_from(g.op) {
            Ok(pb::GateOp::Below) => Some(GateOp::Below),
            Ok(pb::GateOp::AtLeast) => Some(GateOp::AtLeast),
            _ => {
                v.add(format!("{gf}.op"), "must be BELOW or AT_LEAST");
                None
            }
        };
        let value = dec(&mut v, &format!("{gf}.value"), &g.value);
        let action = match pb::GateAction::try_from(g.action) {
            Ok(pb::GateAction::Hold) => Some(GateAction::Hold),
            Ok(pb::GateAction::Multiply) => {
                non_negative(&mut v, &format!("{gf}.factor"), &g.factor).map(GateAction::Multiply)
            }
            _ => {
                v.add(format!("{gf}.action"), "must be MULTIPLY or HOLD");
                None
            }
        };
        if let (Some(op), Some(value), Some(action)) = (op, value, action) {
            gates.push(Gate {
                metric: g.metric.clone(),
                op,
                value,
                action,
            });
        }
    }

    let payout = p.payout.clone().unwrap_or_default();
    let at_close_percent =
        if payout.at_close_percent.is_empty() && payout.on_collection_percent.is_empty() {
            Decimal::ONE_HUNDRED
        } else {
            let a = non_negative(
                &mut v,
                "payout.at_close_percent",
                if payout.at_close_percent.is_empty() {
                    "0"
                } else {
                    &payout.at_close_percent
                },
            );
            let b = non_negative(
                &mut v,
                "payout.on_collection_percent",
                if payout.on_collection_percent.is_empty() {
                    "0"
                } else {
                    &payout.on_collection_percent
                },
            );
            match (a, b) {
                (Some(a), Some(b)) if a + b == Decimal::ONE_HUNDRED => a,
                (Some(a), Some(b)) => {
                    v.add("payout", format!("splits must sum to 100%, got {}", a + b));
                    Decimal::ONE_HUNDRED
                }
                _ => Decimal::ONE_HUNDRED,
            }
        };

    let mut attainment_bonuses = Vec::new();
    for (i, b) in p.attainment_bonuses.iter().enumerate() {
        if let (Some(at), Some(amount)) = (
            non_negative(&mut v, &format!("attainment_bonuses[{i}].at"), &b.at),
            non_negative(
                &mut v,
                &format!("attainment_bonuses[{i}].amount"),
                &b.amount,
            ),
        ) {
            attainment_bonuses.push((at, amount));
        }
    }
    let mut score_bonus: Vec<(Decimal, Decimal)> = Vec::new();
    for (i, b) in p.score_bonus.iter().enumerate() {
        if let (Some(min), Some(amount)) = (
            non_negative(&mut v, &format!("score_bonus[{i}].min_score"), &b.min_score),
            non_negative(&mut v, &format!("score_bonus[{i}].amount"), &b.amount),
        ) {
            if score_bonus.last().is_some_and(|(prev, _)| min <= *prev) {
                v.add(
                    format!("score_bonus[{i}].min_score"),
                    "bands must be ascending",
                );
            }
            score_bonus.push((min, amount));
        }
    }

    let mut spiffs = Vec::new();
    let mut spiff_ids = HashSet::new();
    for (i, s) in p.spiffs.iter().enumerate() {
        let sf = format!("spiffs[{i}]");
        if v.id(format!("{sf}.spiff_id"), &s.spiff_id, 64) && !spiff_ids.insert(s.spiff_id.clone())
        {
            v.add(format!("{sf}.spiff_id"), "is used twice");
        }
        let from = date(&mut v, &format!("{sf}.from_date"), &s.from_date);
        let to = date(&mut v, &format!("{sf}.to_date"), &s.to_date);
        if let (Some(f), Some(t)) = (from, to)
            && t < f
        {
            v.add(format!("{sf}.to_date"), "is before from_date");
        }
        let reward = match &s.reward {
            Some(pb::spiff::Reward::FixedAmount(a)) => {
                non_negative(&mut v, &format!("{sf}.fixed_amount"), a).map(Reward::Fixed)
            }
            Some(pb::spiff::Reward::Rate(r)) => {
                non_negative(&mut v, &format!("{sf}.rate"), r).map(Reward::Rate)
            }
            None => {
                v.add(format!("{sf}.reward"), "fixed_amount or rate is required");
                None
            }
        };
        if let (Some(from), Some(to), Some(reward)) = (from, to, reward) {
            spiffs.push(Spiff {
                spiff_id: s.spiff_id.clone(),
                name: s.name.clone(),
                products: s.product_ids.clone(),
                from,
                to,
                reward,
            });
        }
    }

    let mut badges = Vec::new();
    for (i, b) in p.badges.iter().enumerate() {
        let bf = format!("badges[{i}]");
        v.id(format!("{bf}.code"), &b.code, 64);
        let kind = match pb::BadgeKind::try_from(b.kind) {
            Ok(pb::BadgeKind::FirstDeal) => Some(BadgeKind::FirstDeal),
            Ok(pb::BadgeKind::AttainmentClub) => Some(BadgeKind::AttainmentClub),
            Ok(pb::BadgeKind::Streak) => Some(BadgeKind::Streak),
            _ => {
                v.add(
                    format!("{bf}.kind"),
                    "must be FIRST_DEAL, ATTAINMENT_CLUB or STREAK",
                );
                None
            }
        };
        let threshold = if b.threshold.is_empty() {
            Some(Decimal::ZERO)
        } else {
            non_negative(&mut v, &format!("{bf}.threshold"), &b.threshold)
        };
        if kind == Some(BadgeKind::Streak) && b.periods < 2 {
            v.add(format!("{bf}.periods"), "a streak needs at least 2 periods");
        }
        if let (Some(kind), Some(threshold)) = (kind, threshold) {
            badges.push(Badge {
                code: b.code.clone(),
                title: b.title.clone(),
                kind,
                threshold,
                periods: b.periods,
            });
        }
    }
    let promotion = match &p.promotion {
        Some(pr) if pr.periods > 0 => {
            let a = non_negative(&mut v, "promotion.min_attainment", &pr.min_attainment);
            let s = non_negative(&mut v, "promotion.min_score", &pr.min_score);
            a.zip(s).map(|(min_attainment, min_score)| Promotion {
                periods: pr.periods,
                min_attainment,
                min_score,
            })
        }
        Some(_) => {
            v.add("promotion.periods", "must be at least 1");
            None
        }
        None => None,
    };
    if commission.is_none()
        && spiffs.is_empty()
        && attainment_bonuses.is_empty()
        && score_bonus.is_empty()
        && badges.is_empty()
    {
        v.add(
            "commission",
            "a plan needs at least one of commission, spiffs, bonuses or badges",
        );
    }
    let Some(effective_from) = effective_from else {
        return Err(v.0);
    };
    v.finish(Plan {
        plan_id: p.plan_id.clone(),
        name: p.name.clone(),
        version: 0,
        effective_from,
        period_kind,
        assignment: Assignment {
            reps: a.rep_ids,
            teams: a.team_ids,
            tenant_default: a.tenant_default,
        },
        commission,
        gates,
        at_close_percent,
        attainment_bonuses,
        score_bonus,
        spiffs,
        clawback_window_days: p.clawback_window_days,
        badges,
        promotion,
    })
}

fn s(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The wire form of a plan.
pub fn to_proto(p: &Plan) -> pb::Plan {
    pb::Plan {
        plan_id: p.plan_id.clone(),
        name: p.name.clone(),
        version: p.version,
        effective_from: p.effective_from.to_string(),
        period_kind: match p.period_kind {
            PeriodKind::Quarter => common::PeriodKind::Quarter,
            _ => common::PeriodKind::Month,
        } as i32,
        assignment: Some(pb::PlanAssignment {
            rep_ids: p.assignment.reps.clone(),
            team_ids: p.assignment.teams.clone(),
            tenant_default: p.assignment.tenant_default,
        }),
        commission: p.commission.as_ref().map(|c| pb::Commission {
            basis: match c.basis {
                Basis::Attainment => pb::TierBasis::Attainment,
                Basis::CumulativeAmount => pb::TierBasis::CumulativeAmount,
            } as i32,
            mode: match c.mode {
                Mode::Marginal => pb::TierMode::Marginal,
                Mode::Retroactive => pb::TierMode::Retroactive,
            } as i32,
            quota: s(c.quota),
            rep_quotas: c
                .rep_quotas
                .iter()
                .map(|(k, q)| (k.clone(), s(*q)))
                .collect(),
            tiers: c
                .tiers
                .iter()
                .map(|(f, r)| pb::Tier {
                    from: s(*f),
                    rate: s(*r),
                })
                .collect(),
            threshold: s(c.threshold),
            per_deal_cap: c.per_deal_cap.map(s).unwrap_or_default(),
            period_cap: c.period_cap.map(s).unwrap_or_default(),
        }),
        gates: p
            .gates
            .iter()
            .map(|g| pb::Gate {
                metric: g.metric.clone(),
                op: match g.op {
                    GateOp::Below => pb::GateOp::Below,
                    GateOp::AtLeast => pb::GateOp::AtLeast,
                } as i32,
                value: s(g.value),
                action: match g.action {
                    GateAction::Hold => pb::GateAction::Hold,
                    GateAction::Multiply(_) => pb::GateAction::Multiply,
                } as i32,
                factor: match g.action {
                    GateAction::Multiply(f) => s(f),
                    GateAction::Hold => String::new(),
                },
            })
            .collect(),
        payout: Some(pb::PayoutSplit {
            at_close_percent: s(p.at_close_percent),
            on_collection_percent: s(Decimal::ONE_HUNDRED - p.at_close_percent),
        }),
        attainment_bonuses: p
            .attainment_bonuses
            .iter()
            .map(|(at, a)| pb::AttainmentBonus {
                at: s(*at),
                amount: s(*a),
            })
            .collect(),
        score_bonus: p
            .score_bonus
            .iter()
            .map(|(m, a)| pb::ScoreBand {
                min_score: s(*m),
                amount: s(*a),
            })
            .collect(),
        spiffs: p
            .spiffs
            .iter()
            .map(|x| pb::Spiff {
                spiff_id: x.spiff_id.clone(),
                name: x.name.clone(),
                product_ids: x.products.clone(),
                from_date: x.from.to_string(),
                to_date: x.to.to_string(),
                reward: Some(match x.reward {
                    Reward::Fixed(a) => pb::spiff::Reward::FixedAmount(s(a)),
                    Reward::Rate(r) => pb::spiff::Reward::Rate(s(r)),
                }),
            })
            .collect(),
        clawback_window_days: p.clawback_window_days,
        badges: p
            .badges
            .iter()
            .map(|b| pb::BadgeRule {
                code: b.code.clone(),
                title: b.title.clone(),
                kind: match b.kind {
                    BadgeKind::FirstDeal => pb::BadgeKind::FirstDeal,
                    BadgeKind::AttainmentClub => pb::BadgeKind::AttainmentClub,
                    BadgeKind::Streak => pb::BadgeKind::Streak,
                } as i32,
                threshold: s(b.threshold),
                periods: b.periods,
            })
            .collect(),
        promotion: p.promotion.as_ref().map(|pr| pb::PromotionRule {
            periods: pr.periods,
            min_attainment: s(pr.min_attainment),
            min_score: s(pr.min_score),
        }),
        created_at: None,
        ..Default::default()
    }
}

/// Whether any of `plans` is assigned to teams: only then does selecting a rep's plan
/// need the rep's team and the team hierarchy.
pub fn assigns_by_team(plans: &[Plan]) -> bool {
    plans.iter().any(|p| !p.assignment.teams.is_empty())
}

/// The plan governing a rep for a period ending on `last_day`: of every plan, the latest
/// version effective by then; a plan naming the rep beats one for a team (nearest team in
/// `team_chain` first), which beats the tenant default; ties go to the lowest plan id.
pub fn select<'a>(
    plans: &'a [Plan],
    rep: &str,
    team_chain: &[String],
    last_day: NaiveDate,
) -> Option<&'a Plan> {
    let mut latest: BTreeMap<&str, &Plan> = BTreeMap::new();
    for p in plans.iter().filter(|p| p.effective_from <= last_day) {
        match latest.get(p.plan_id.as_str()) {
            Some(q) if q.version >= p.version => {}
            _ => {
                latest.insert(&p.plan_id, p);
            }
        }
    }
    let rank = |p: &Plan| -> Option<usize> {
        if p.assignment.reps.iter().any(|r| r == rep) {
            return Some(0);
        }
        if let Some(i) = team_chain
            .iter()
            .position(|t| p.assignment.teams.contains(t))
        {
            return Some(1 + i);
        }
        p.assignment.tenant_default.then_some(usize::MAX)
    };
    latest
        .into_values()
        .filter_map(|p| rank(p).map(|r| (r, p)))
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.plan_id.cmp(&b.1.plan_id)))
        .map(|(_, p)| p)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A typical plan: 5% to quota, 8% to 150%, 10% above; collection gate; SPIFF.
    pub fn proto_plan() -> pb::Plan {
        pb::Plan {
            plan_id: "ae-2026".into(),
            name: "AE 2026".into(),
            effective_from: "2026-01-01".into(),
            period_kind: common::PeriodKind::Month as i32,
            assignment: Some(pb::PlanAssignment {
                tenant_default: true,
                ..Default::default()
            }),
            commission: Some(pb::Commission {
                basis: pb::TierBasis::Attainment as i32,
                mode: pb::TierMode::Marginal as i32,
                quota: "10000".into(),
                tiers: vec![
                    pb::Tier {
                        from: "0".into(),
                        rate: "0.05".into(),
                    },
                    pb::Tier {
                        from: "1".into(),
                        rate: "0.08".into(),
                    },
                    pb::Tier {
                        from: "1.5".into(),
                        rate: "0.1".into(),
                    },
                ],
                ..Default::default()
            }),
            gates: vec![pb::Gate {
                metric: "collection_rate".into(),
                op: pb::GateOp::Below as i32,
                value: "0.7".into(),
                action: pb::GateAction::Multiply as i32,
                factor: "0.5".into(),
            }],
            clawback_window_days: 90,
            ..Default::default()
        }
    }

    fn fields(p: &pb::Plan) -> Vec<String> {
        from_proto(p)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn kpi_dependence_is_gates_score_bands_or_promotion() {
        let gated = from_proto(&proto_plan()).unwrap();
        assert!(gated.depends_on_kpis());
        let mut plain = gated.clone();
        plain.gates.clear();
        assert!(!plain.depends_on_kpis());
        let mut banded = plain.clone();
        banded.score_bonus = vec![(Decimal::from(90), Decimal::from(500))];
        assert!(banded.depends_on_kpis());
        let mut promoted = plain.clone();
        promoted.promotion = Some(Promotion {
            periods: 2,
            min_attainment: Decimal::ONE,
            min_score: Decimal::ZERO,
        });
        assert!(promoted.depends_on_kpis());
    }

    #[test]
    fn a_good_plan_round_trips() {
        let p = from_proto(&proto_plan()).unwrap();
        assert_eq!(p.commission.as_ref().unwrap().tiers.len(), 3);
        assert_eq!(from_proto(&to_proto(&p)).unwrap(), p);
    }

    #[test]
    fn bad_plans_are_rejected_with_field_errors() {
        let mut overlapping = proto_plan();
        overlapping.commission.as_mut().unwrap().tiers[2].from = "0.9".into();
        assert_eq!(fields(&overlapping), ["commission.tiers[2].from"]);

        let mut negative = proto_plan();
        negative.commission.as_mut().unwrap().tiers[1].rate = "-0.08".into();
        assert_eq!(fields(&negative), ["commission.tiers[1].rate"]);

        let mut splits = proto_plan();
        splits.payout = Some(pb::PayoutSplit {
            at_close_percent: "60".into(),
            on_collection_percent: "30".into(),
        });
        assert_eq!(fields(&splits), ["payout"]);

        let mut kpi = proto_plan();
        kpi.gates[0].metric = "happiness".into();
        assert_eq!(fields(&kpi), ["gates[0].metric"]);

        let mut quota = proto_plan();
        quota.commission.as_mut().unwrap().quota = "0".into();
        assert_eq!(fields(&quota), ["commission.quota"]);

        let mut nothing = proto_plan();
        nothing.assignment = None;
        nothing.effective_from = "next tuesday".into();
        assert_eq!(fields(&nothing), ["effective_from", "assignment"]);
    }
}

#[cfg(test)]
mod select_tests {
    use super::*;

    fn plan(id: &str, version: u32, from: &str, a: Assignment) -> Plan {
        let mut p = from_proto(&tests::proto_plan()).unwrap();
        p.plan_id = id.into();
        p.version = version;
        p.effective_from = from.parse().unwrap();
        p.assignment = a;
        p
    }

    #[test]
    fn precedence_and_effective_dates() {
        let default = Assignment {
            tenant_default: true,
            ..Default::default()
        };
        let team = Assignment {
            teams: vec!["emea".into()],
            ..Default::default()
        };
        let rep = Assignment {
            reps: vec!["r1".into()],
            ..Default::default()
        };
        let plans = vec![
            plan("base", 1, "2026-01-01", default.clone()),
            plan("base", 2, "2026-12-01", default),
            plan("emea", 1, "2026-01-01", team),
            plan("vip", 1, "2026-11-15", rep),
        ];
        let chain = vec!["emea-north".to_owned(), "emea".to_owned()];
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(
            select(&plans, "r1", &chain, d("2026-11-30")).map(|p| p.plan_id.as_str()),
            Some("vip")
        );
        assert_eq!(
            select(&plans, "r1", &chain, d("2026-10-31")).map(|p| p.plan_id.as_str()),
            Some("emea")
        );
        let other = select(&plans, "r2", &[], d("2026-12-31")).unwrap();
        assert_eq!((other.plan_id.as_str(), other.version), ("base", 2));
        assert_eq!(
            select(&plans, "r2", &[], d("2026-11-30")).unwrap().version,
            1
        );
        assert!(assigns_by_team(&plans));
    }

    #[test]
    fn without_team_assignments_the_team_chain_changes_nothing() {
        let plans = vec![
            plan(
                "base",
                1,
                "2026-01-01",
                Assignment {
                    tenant_default: true,
                    ..Default::default()
                },
            ),
            plan(
                "vip",
                1,
                "2026-01-01",
                Assignment {
                    reps: vec!["r1".into()],
                    ..Default::default()
                },
            ),
        ];
        assert!(!assigns_by_team(&plans));
        let d = "2026-11-30".parse::<NaiveDate>().unwrap();
        let chain = vec!["emea-north".to_owned(), "emea".to_owned()];
        for rep in ["r1", "r2"] {
            assert_eq!(
                select(&plans, rep, &chain, d).map(|p| &p.plan_id),
                select(&plans, rep, &[], d).map(|p| &p.plan_id)
            );
        }
        assert_eq!(select(&plans, "r1", &[], d).unwrap().plan_id, "vip");
    }
}
