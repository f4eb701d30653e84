//! What a rep should have earned in a period under a plan, from the period's deals (with
//! their payments and reversals), the scoring metrics of the period and whether the period
//! is closed or paid. A pure function of its input: the ledger posts the difference
//! between this and what it already holds.
//!
//! Commission: deals in business order (close time, then event id). Net revenue of a deal
//! is its credited amount less reversals within the clawback window. Marginal mode pays
//! each slice of net revenue at the rate of the tier it falls in; retroactive mode pays all
//! of it at the rate of the tier the period reached; below the threshold nothing is paid.
//! Caps bound a deal's and the period's net commission. Gates on scoring metrics multiply
//! the commission or hold every earning. A deal's commission line is its credited amount
//! at the deal's effective rate; a reversal within the window posts a clawback line
//! mirroring it (so the two net to the commission on net revenue). Commission is payable
//! at close and/or in proportion to collection, per the plan's payout split. Rounding:
//! half-even to the currency's minor unit, once per line.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use spm_core::money::Currency;

use super::plan::{Basis, GateAction, Mode, Plan, Reward};
use super::ratio;

/// Ledger line kinds (as in `spm.events.v1.EarningKind`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    Commission,
    Bonus,
    Spiff,
    Clawback,
    Adjustment,
}

/// Ledger statuses (as in `spm.events.v1.EarningStatus`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Status {
    Earned,
    Payable,
    Held,
    Paid,
    Reversed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commission => "commission",
            Self::Bonus => "bonus",
            Self::Spiff => "spiff",
            Self::Clawback => "clawback",
            Self::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Commission,
            Self::Bonus,
            Self::Spiff,
            Self::Clawback,
            Self::Adjustment,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The kind a line key denotes.
    pub fn of_key(key: &str) -> Self {
        match key.split(':').next().unwrap_or_default() {
            "commission" => Self::Commission,
            "bonus" => Self::Bonus,
            "spiff" => Self::Spiff,
            "clawback" | "spiff-clawback" => Self::Clawback,
            _ => Self::Adjustment,
        }
    }

    pub fn to_proto(self) -> i32 {
        use spm_proto::events::v1::EarningKind as K;
        (match self {
            Self::Commission => K::Commission,
            Self::Bonus => K::Bonus,
            Self::Spiff => K::Spiff,
            Self::Clawback => K::Clawback,
            Self::Adjustment => K::Adjustment,
        }) as i32
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earned => "earned",
            Self::Payable => "payable",
            Self::Held => "held",
            Self::Paid => "paid",
            Self::Reversed => "reversed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Earned,
            Self::Payable,
            Self::Held,
            Self::Paid,
            Self::Reversed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn to_proto(self) -> i32 {
        use spm_proto::events::v1::EarningStatus as S;
        (match self {
            Self::Earned => S::Earned,
            Self::Payable => S::Payable,
            Self::Held => S::Held,
            Self::Paid => S::Paid,
            Self::Reversed => S::Reversed,
        }) as i32
    }
}

/// A payment or reversal of a deal (this rep's credit of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub amount: Decimal,
    pub full: bool,
}

/// A deal credited to the rep and closed in the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealIn {
    pub deal_id: String,
    /// The client event id of the deal.
    pub event_id: String,
    pub closed_at: DateTime<Utc>,
    /// Close date in the tenant's time zone (SPIFF windows).
    pub local_date: NaiveDate,
    /// Credited amount in the base currency.
    pub credited: Decimal,
    /// (product, base-currency amount) of the rep's share of each product line.
    pub lines: Vec<(String, Decimal)>,
    pub payments: Vec<Linked>,
    pub reversals: Vec<Linked>,
}

/// Everything the earnings of one rep and period depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepPeriod {
    pub rep_id: String,
    pub period_key: String,
    pub deals: Vec<DealIn>,
    /// The latest scoring metrics of the rep and period.
    pub metrics: BTreeMap<String, Decimal>,
    pub score: Option<Decimal>,
    pub closed: bool,
    pub paid: bool,
}

/// A line's explanation, shared (not copied) by the line, its clawback and each posting
/// made from them.
pub type Explanation = std::sync::Arc<serde_json::Value>;

/// The explanation of a line computed without one (`Explain::Nothing`).
pub fn unexplained() -> Explanation {
    static NULL: std::sync::LazyLock<Explanation> =
        std::sync::LazyLock::new(|| std::sync::Arc::new(serde_json::Value::Null));
    NULL.clone()
}

/// One earning the rep should have, split by status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: String,
    pub kind: Kind,
    pub deal_id: String,
    pub amounts: Vec<(Status, Decimal)>,
    pub summary: String,
    pub explanation: Explanation,
    /// Client event ids the line depends on.
    pub inputs: Vec<String>,
}

impl Line {
    pub fn total(&self) -> Decimal {
        self.amounts.iter().map(|(_, a)| *a).sum()
    }
}

/// The earnings of a rep-period.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub lines: Vec<Line>,
    /// Net credited revenue (after clawed-back reversals).
    pub revenue: Decimal,
    /// Net revenue over quota (attainment basis).
    pub attainment: Option<Decimal>,
    pub held: bool,
}

impl Outcome {
    pub fn total(&self) -> Decimal {
        self.lines.iter().map(Line::total).sum()
    }
}

fn days_between(a: DateTime<Utc>, b: DateTime<Utc>) -> i64 {
    (b - a).num_seconds().div_euclid(86_400)
}

/// The commission tier above the one a period's `revenue` reached: where it starts (a share
/// of quota, or an amount on the cumulative basis), its rate, and the revenue still needed
/// to reach it (rounded once to the currency). None on the top tier or without commission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextTier {
    pub from: Decimal,
    pub rate: Decimal,
    pub revenue_needed: Decimal,
}

pub fn next_tier(plan: &Plan, rep: &str, revenue: Decimal, cur: Currency) -> Option<NextTier> {
    let c = plan.commission.as_ref()?;
    let unit = if c.basis == Basis::Attainment {
        plan.quota_for(rep)
    } else {
        Decimal::ONE
    };
    let bounds: Vec<(Decimal, Decimal)> = c
        .tiers
        .iter()
        .map(|(from, rate)| (*from * unit, *rate))
        .collect();
    let (reached, _) = rate_at(&bounds, revenue);
    c.tiers.get(reached + 1).map(|(from, rate)| NextTier {
        from: *from,
        rate: *rate,
        revenue_needed: cur.round(*from * unit - revenue),
    })
}

fn rate_at(tiers: &[(Decimal, Decimal)], pos: Decimal) -> (usize, Decimal) {
    let mut idx = 0;
    for (i, (from, _)) in tiers.iter().enumerate() {
        if pos >= *from {
            idx = i;
        }
    }
    (idx, tiers.get(idx).map_or(Decimal::ZERO, |t| t.1))
}

/// An amount as computed from a line's inputs, before rounding: a decimal, or a quotient
/// (a commission spread over a deal's credited amount) that need not terminate.
#[derive(Debug, Clone, Copy)]
enum Exact {
    Dec(Decimal),
    Ratio(Decimal, Decimal),
}

impl Exact {
    /// Half-even to the currency's minor unit, once, from the exact value.
    fn round(self, cur: Currency) -> Decimal {
        match self {
            Self::Dec(d) => cur.round(d),
            Self::Ratio(n, d) => cur.round_ratio(n, d),
        }
    }

    /// "29.665", or "8024 / 300" when the quotient does not terminate.
    fn show(self) -> String {
        match self {
            Self::Dec(d) => money(d),
            Self::Ratio(n, d) => {
                let q = n / d;
                if q * d == n {
                    money(q)
                } else {
                    format!("{} / {}", money(n), money(d))
                }
            }
        }
    }
}

fn money(d: Decimal) -> String {
    d.normalize().to_string()
}

fn pct(d: Decimal) -> String {
    format!("{}%", (d * Decimal::ONE_HUNDRED).normalize())
}

/// Splits `amount` into statuses: held, or payable at close + payable on collection
/// (in proportion `collected` = (paid, due)), the rest earned; payable becomes paid once
/// the period is paid. `amount` is already rounded; the parts sum to it exactly.
fn split(
    amount: Decimal,
    at_close_pct: Decimal,
    (collected, due): (Decimal, Decimal),
    cur: Currency,
    held: bool,
    paid: bool,
) -> Vec<(Status, Decimal)> {
    if amount.is_zero() {
        return Vec::new();
    }
    if held {
        return vec![(Status::Held, amount)];
    }
    let at_close = cur.round(amount * at_close_pct / Decimal::ONE_HUNDRED);
    let on_collection = amount - at_close;
    let collected_part = if collected >= due {
        on_collection
    } else {
        cur.round_ratio(on_collection * collected, due)
    };
    let payable = at_close + collected_part;
    let earned = amount - payable;
    let payable_status = if paid { Status::Paid } else { Status::Payable };
    let mut out = Vec::new();
    if !payable.is_zero() {
        out.push((payable_status, payable));
    }
    if !earned.is_zero() {
        out.push((Status::Earned, earned));
    }
    out
}

/// Which lines get their summary, explanation and inputs: building them is most of a
/// computation's cost, and a recompute posts only the few lines whose amounts moved.
/// Amounts, kinds and deals are the same whatever is explained.
#[derive(Debug, Clone, Copy)]
pub enum Explain<'a> {
    All,
    Nothing,
    /// The lines with these keys.
    Only(&'a HashSet<String>),
}

impl Explain<'_> {
    fn wants(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Nothing => false,
            Self::Only(keys) => keys.contains(key),
        }
    }
}

/// Computes the earnings of `rp` under `plan`, in currency `cur` (the tenant base).
pub fn compute(plan: &Plan, rp: &RepPeriod, cur: Currency) -> Outcome {
    compute_with(plan, rp, cur, Explain::All)
}

/// [`compute`], explaining only the lines `explain` names (the others have an empty
/// summary, a null explanation and no inputs).
#[allow(clippy::too_many_lines)]
pub fn compute_with(plan: &Plan, rp: &RepPeriod, cur: Currency, explain: Explain<'_>) -> Outcome {
    let mut deals: Vec<&DealIn> = rp.deals.iter().collect();
    deals.sort_by(|a, b| {
        a.closed_at
            .cmp(&b.closed_at)
            .then_with(|| a.event_id.cmp(&b.event_id))
    });
    let window = i64::from(plan.clawback_window_days);
    let clawed_of = |d: &DealIn| -> Decimal {
        if window == 0 {
            return Decimal::ZERO;
        }
        let c: Decimal = d
            .reversals
            .iter()
            .filter(|r| days_between(d.closed_at, r.at) <= window)
            .map(|r| r.amount)
            .sum();
        c.min(d.credited).max(Decimal::ZERO)
    };
    let nets: Vec<(Decimal, Decimal)> = deals
        .iter()
        .map(|d| (clawed_of(d), d.credited - clawed_of(d)))
        .collect();
    let revenue: Decimal = nets.iter().map(|(_, n)| *n).sum();
    let quota = plan.quota_for(&rp.rep_id);
    let basis = plan.commission.as_ref().map(|c| c.basis);
    let attainment = (basis != Some(Basis::CumulativeAmount)).then(|| ratio(revenue / quota));

    // Gates.
    let mut factor = Decimal::ONE;
    let mut held = false;
    let mut gate_notes = Vec::new();
    for g in &plan.gates {
        let value = rp.metrics.get(&g.metric).copied();
        let applied = value.is_some_and(|v| g.triggered(v));
        if applied {
            match g.action {
                GateAction::Multiply(f) => factor *= f,
                GateAction::Hold => held = true,
            }
        }
        gate_notes.push(json!({
            "metric": g.metric,
            "value": value.map(money),
            "op": format!("{:?}", g.op),
            "threshold": money(g.value),
            "action": match g.action { GateAction::Multiply(f) => format!("multiply {}", money(f)), GateAction::Hold => "hold".into() },
            "applied": applied,
        }));
    }

    let mut lines = Vec::new();
    let inputs_of = |d: &DealIn| -> Vec<String> {
        let mut v = vec![d.event_id.clone()];
        v.extend(d.payments.iter().map(|p| p.event_id.clone()));
        v.extend(d.reversals.iter().map(|r| r.event_id.clone()));
        v
    };
    // (paid, due): commission on collection is payable in this proportion.
    let collected_of = |d: &DealIn| -> (Decimal, Decimal) {
        let reversed: Decimal = d.reversals.iter().map(|r| r.amount).sum();
        let due = d.credited - reversed;
        let paid: Decimal = d.payments.iter().map(|p| p.amount).sum();
        if due <= Decimal::ZERO {
            (Decimal::ONE, Decimal::ONE)
        } else {
            (paid.max(Decimal::ZERO), due)
        }
    };

    if let Some(c) = &plan.commission {
        // Everything in revenue, not in attainment positions: a tier boundary is its
        // fraction of quota times quota, so slices are exact and a line is computed from
        // its inputs without a division.
        let unit = if c.basis == Basis::Attainment {
            quota
        } else {
            Decimal::ONE
        };
        let bounds: Vec<(Decimal, Decimal)> = c
            .tiers
            .iter()
            .map(|(from, rate)| (*from * unit, *rate))
            .collect();
        let position = |amount: Decimal| {
            if c.basis == Basis::Attainment {
                ratio(amount / quota)
            } else {
                amount
            }
        };
        let below = revenue < c.threshold * unit;
        let (reached_tier, retro_rate) = rate_at(&bounds, revenue);
        let next_tier = next_tier(plan, &rp.rep_id, revenue, cur).map(|n| {
            json!({ "from": money(n.from), "rate": money(n.rate), "revenue_needed": money(n.revenue_needed) })
        });
        let deal_cap = c.per_deal_cap.map(|v| cur.floor(v));
        let period_cap = c.period_cap.map(|v| cur.floor(v));
        let mut cum = Decimal::ZERO;
        // Net commission of the deals so far, as their lines were rounded.
        let mut period_paid = Decimal::ZERO;
        for (d, (clawed, net)) in deals.iter().zip(&nets) {
            let (start, end) = (cum, cum + net);
            cum += net;
            let key = format!("commission:{}", d.deal_id);
            let claw_key = format!("clawback:{}", d.deal_id);
            let want = explain.wants(&key) || explain.wants(&claw_key);
            let mut slices = Vec::new();
            let mut n_slices = 0usize;
            let (comm, rate_here) = if below {
                (Decimal::ZERO, Decimal::ZERO)
            } else {
                match c.mode {
                    Mode::Marginal => {
                        let mut total = Decimal::ZERO;
                        for (i, (from, rate)) in bounds.iter().enumerate() {
                            let to = bounds.get(i + 1).map(|t| t.0);
                            let lo = start.max(*from);
                            let hi = to.map_or(end, |t| end.min(t));
                            if hi > lo {
                                let base = hi - lo;
                                total += base * rate;
                                n_slices += 1;
                                if want {
                                    slices.push(json!({"tier": i + 1, "from": money(c.tiers[i].0), "to": c.tiers.get(i + 1).map(|t| money(t.0)), "rate": money(*rate), "base": money(base), "amount": money(base * rate)}));
                                }
                            }
                        }
                        (total, rate_at(&bounds, start).1)
                    }
                    Mode::Retroactive => {
                        n_slices += 1;
                        if want {
                            slices.push(json!({"tier": reached_tier + 1, "rate": money(retro_rate), "base": money(*net), "amount": money(*net * retro_rate)}));
                        }
                        (*net * retro_rate, retro_rate)
                    }
                }
            };
            // Gates multiply before caps, so that no factor lifts a line over a cap.
            let comm = comm * factor;
            // The deal's commission line is its net commission spread over its credited
            // amount; the clawback line is the reversed part's share. With no net revenue
            // left (all of it clawed back) both are the credited amount at the rate where
            // the deal sits.
            let (mut gross_exact, mut claw_exact) = if net.is_zero() {
                let r = rate_here * factor;
                let g = d.credited * r;
                let g = deal_cap.map_or(g, |cap| g.min(cap));
                (Exact::Dec(g), Exact::Dec(g.min(*clawed * r)))
            } else {
                (
                    Exact::Ratio(comm * d.credited, *net),
                    Exact::Ratio(comm * *clawed, *net),
                )
            };
            let mut gross = gross_exact.round(cur);
            let mut claw = claw_exact.round(cur);
            // Caps hold to the cent: the line that reaches one takes what is left under it,
            // given the other lines as rounded, so the lines shown sum to the cap exactly.
            let mut caps = Vec::new();
            let mut remainder = false;
            if !net.is_zero() {
                let mut limit: Option<Decimal> = None;
                if let Some(cap) = deal_cap
                    && (comm > cap || gross - claw > cap)
                {
                    caps.push(
                        json!({"cap": "per_deal", "limit": money(cap), "before": money(comm)}),
                    );
                    limit = Some(cap);
                }
                if let Some(cap) = period_cap {
                    let room = (cap - period_paid).max(Decimal::ZERO);
                    let so_far = limit.map_or(gross - claw, |l| l);
                    if comm.min(limit.unwrap_or(comm)) > room || so_far > room {
                        caps.push(json!({"cap": "period", "limit": money(cap), "room": money(room), "before": money(comm)}));
                        limit = Some(room);
                    }
                }
                if let Some(l) = limit {
                    claw_exact = Exact::Ratio(l * *clawed, *net);
                    claw = claw_exact.round(cur);
                    gross = l + claw;
                    gross_exact = Exact::Ratio(l * d.credited, *net);
                    remainder = true;
                }
            }
            period_paid += gross - claw;
            let eff = if d.credited.is_zero() {
                rate_here * factor
            } else {
                gross / d.credited
            };
            let (paid, due) = collected_of(d);
            let (summary, explanation) = if want {
                let summary = {
                    let mut s = if n_slices > 1 {
                        format!(
                            "{} of {} {} across {} tiers",
                            pct(ratio(eff)),
                            money(d.credited),
                            cur,
                            n_slices
                        )
                    } else {
                        format!("{} of {} {}", pct(ratio(eff)), money(d.credited), cur)
                    };
                    if below {
                        s = format!(
                            "nothing: period attainment {} is below the {} threshold",
                            money(position(revenue)),
                            money(c.threshold)
                        );
                    }
                    if factor != Decimal::ONE {
                        s.push_str(&format!(", x{} by gate", money(factor)));
                    }
                    if !caps.is_empty() {
                        s.push_str(", capped");
                    }
                    if held {
                        s.push_str(", held by gate");
                    }
                    s
                };
                let rounding = if remainder {
                    format!(
                        "capped: the cap less the other lines as rounded ({} {}); otherwise half-even to {} {} per line",
                        money(gross - claw),
                        cur,
                        cur.unit(),
                        cur
                    )
                } else {
                    format!("half-even to {} {} per line", cur.unit(), cur)
                };
                let explanation = json!({
                    "inputs": inputs_of(d),
                    "plan": {"id": plan.plan_id, "version": plan.version},
                    "basis": format!("{:?}", c.basis), "mode": format!("{:?}", c.mode),
                    "quota": money(quota), "credited": money(d.credited), "net": money(*net), "clawed": money(*clawed),
                    "position": {"from": money(position(start)), "to": money(position(end))},
                    "threshold": {"value": money(c.threshold), "met": !below},
                    "slices": slices, "commission_on_net": money(comm), "effective_rate": money(ratio(eff)),
                    "gates": gate_notes, "factor": money(factor), "caps": caps,
                    "amount": {"exact": gross_exact.show(), "rounded": money(gross)},
                    "clawback": {"exact": claw_exact.show(), "rounded": money(claw)},
                    "payout": {"at_close_percent": money(plan.at_close_percent), "collected_fraction": money(ratio(if due.is_zero() { Decimal::ONE } else { (paid / due).min(Decimal::ONE) }))},
                    "next_tier": next_tier,
                    "rounding": rounding,
                });
                (summary, Explanation::new(explanation))
            } else {
                (String::new(), unexplained())
            };
            let inputs = if want { inputs_of(d) } else { Vec::new() };
            lines.push(Line {
                key,
                kind: Kind::Commission,
                deal_id: d.deal_id.clone(),
                amounts: split(
                    gross,
                    plan.at_close_percent,
                    (paid, due),
                    cur,
                    held,
                    rp.paid,
                ),
                summary,
                explanation: explanation.clone(),
                inputs: inputs.clone(),
            });
            if !claw.is_zero() {
                lines.push(Line {
                    key: claw_key,
                    kind: Kind::Clawback,
                    deal_id: d.deal_id.clone(),
                    amounts: vec![(Status::Reversed, -claw)],
                    summary: if want {
                        format!(
                            "clawback: {} {} reversed within {} days at {}",
                            money(*clawed),
                            cur,
                            window,
                            pct(ratio(eff))
                        )
                    } else {
                        String::new()
                    },
                    explanation,
                    inputs,
                });
            }
        }
    }

    for s in &plan.spiffs {
        for (d, (clawed, _)) in deals.iter().zip(&nets) {
            if d.local_date < s.from || d.local_date > s.to {
                continue;
            }
            let matching: Decimal = if s.products.is_empty() && d.lines.is_empty() {
                d.credited
            } else {
                d.lines
                    .iter()
                    .filter(|(p, _)| s.products.is_empty() || s.products.contains(p))
                    .map(|(_, a)| *a)
                    .sum()
            };
            if matching.is_zero() {
                continue;
            }
            let amount = cur.round(match s.reward {
                Reward::Fixed(a) => a,
                Reward::Rate(r) => matching * r,
            });
            if amount.is_zero() {
                continue;
            }
            let status = if held {
                Status::Held
            } else if rp.paid {
                Status::Paid
            } else {
                Status::Payable
            };
            let key = format!("spiff:{}:{}", s.spiff_id, d.deal_id);
            let claw_key = format!("spiff-clawback:{}:{}", s.spiff_id, d.deal_id);
            let want = explain.wants(&key) || explain.wants(&claw_key);
            let (summary, explanation) = if want {
                let explanation = json!({
                    "inputs": inputs_of(d), "plan": {"id": plan.plan_id, "version": plan.version},
                    "spiff": s.spiff_id, "window": [s.from.to_string(), s.to.to_string()], "products": s.products,
                    "matching_amount": money(matching),
                    "reward": match s.reward { Reward::Fixed(a) => json!({"fixed": money(a)}), Reward::Rate(r) => json!({"rate": money(r)}) },
                    "rounding": format!("half-even to {} {} per line", cur.unit(), cur),
                });
                let summary = match s.reward {
                    Reward::Fixed(a) => format!(
                        "SPIFF {}: {} {} for deal {}",
                        s.spiff_id,
                        money(a),
                        cur,
                        d.deal_id
                    ),
                    Reward::Rate(r) => format!(
                        "SPIFF {}: {} of {} {}",
                        s.spiff_id,
                        pct(r),
                        money(matching),
                        cur
                    ),
                };
                (summary, Explanation::new(explanation))
            } else {
                (String::new(), unexplained())
            };
            let inputs = if want { inputs_of(d) } else { Vec::new() };
            lines.push(Line {
                key,
                kind: Kind::Spiff,
                deal_id: d.deal_id.clone(),
                amounts: vec![(status, amount)],
                summary,
                explanation: explanation.clone(),
                inputs: inputs.clone(),
            });
            if !clawed.is_zero() && d.credited > Decimal::ZERO {
                let claw = cur.round_ratio(amount * *clawed, d.credited);
                if !claw.is_zero() {
                    lines.push(Line {
                        key: claw_key,
                        kind: Kind::Clawback,
                        deal_id: d.deal_id.clone(),
                        amounts: vec![(Status::Reversed, -claw)],
                        summary: if want {
                            format!(
                                "SPIFF {} clawback: {} of {} reversed",
                                s.spiff_id,
                                money(*clawed),
                                money(d.credited)
                            )
                        } else {
                            String::new()
                        },
                        explanation,
                        inputs,
                    });
                }
            }
        }
    }

    if rp.closed {
        let status = if held {
            Status::Held
        } else if rp.paid {
            Status::Paid
        } else {
            Status::Payable
        };
        let all_inputs: Vec<String> = if plan.attainment_bonuses.is_empty() {
            Vec::new()
        } else {
            deals.iter().flat_map(|d| inputs_of(d)).collect()
        };
        if let Some(a) = attainment {
            for (at, amount) in &plan.attainment_bonuses {
                if a >= *at && !amount.is_zero() {
                    lines.push(Line {
                        key: format!("bonus:attainment:{}", money(*at)),
                        kind: Kind::Bonus,
                        deal_id: String::new(),
                        amounts: vec![(status, cur.round(*amount))],
                        summary: format!("attainment {} reached {}: bonus {} {}", pct(a), pct(*at), money(*amount), cur),
                        explanation: Explanation::new(json!({"plan": {"id": plan.plan_id, "version": plan.version}, "attainment": money(a), "milestone": money(*at), "revenue": money(revenue), "quota": money(quota), "inputs": all_inputs})),
                        inputs: all_inputs.clone(),
                    });
                }
            }
        }
        if let Some(score) = rp.score
            && let Some((min, amount)) =
                plan.score_bonus.iter().rev().find(|(min, _)| score >= *min)
            && !amount.is_zero()
        {
            lines.push(Line {
                key: "bonus:score".into(),
                kind: Kind::Bonus,
                deal_id: String::new(),
                amounts: vec![(status, cur.round(*amount))],
                summary: format!("scorecard score {} reached {}: bonus {} {}", money(score), money(*min), money(*amount), cur),
                explanation: Explanation::new(json!({"plan": {"id": plan.plan_id, "version": plan.version}, "score": money(score), "band": money(*min), "bands": plan.score_bonus.iter().map(|(m, a)| json!([money(*m), money(*a)])).collect::<Vec<_>>()})),
                inputs: Vec::new(),
            });
        }
    }

    lines.retain(|l| !l.amounts.is_empty());
    Outcome {
        lines,
        revenue,
        attainment,
        held,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use rust_decimal_macros::dec;
    use spm_proto::incentive::v1 as pb;

    use super::*;
    use crate::domain::plan::{from_proto, tests::proto_plan};

    pub fn eur() -> Currency {
        Currency::new("EUR").unwrap()
    }

    pub fn at(s: &str) -> DateTime<Utc> {
        format!("{s}T10:00:00Z").parse().unwrap()
    }

    pub fn deal(id: &str, day: &str, credited: Decimal) -> DealIn {
        DealIn {
            deal_id: id.into(),
            event_id: format!("ev-{id}"),
            closed_at: at(day),
            local_date: day.parse().unwrap(),
            credited,
            lines: vec![],
            payments: vec![],
            reversals: vec![],
        }
    }

    pub fn period(deals: Vec<DealIn>) -> RepPeriod {
        RepPeriod {
            rep_id: "r1".into(),
            period_key: "2026-11".into(),
            deals,
            ..Default::default()
        }
    }

    fn plan_with(f: impl FnOnce(&mut pb::Plan)) -> Plan {
        let mut p = proto_plan();
        f(&mut p);
        from_proto(&p).unwrap()
    }

    fn line<'a>(o: &'a Outcome, key: &str) -> &'a Line {
        o.lines
            .iter()
            .find(|l| l.key == key)
            .unwrap_or_else(|| panic!("no line {key}: {:?}", o.lines))
    }

    #[test]
    fn marginal_tiers_across_a_boundary() {
        // Quota 10,000; tiers 5% to 100%, 8% to 150%, 10% above.
        // D1 8,000 -> 400.00. D2 4,000: 2,000 at 5% + 2,000 at 8% = 260.00.
        // D3 5,000: 3,000 at 8% + 2,000 at 10% = 440.00.
        let plan = plan_with(|_| {});
        let o = compute(
            &plan,
            &period(vec![
                deal("d1", "2026-11-02", dec!(8000)),
                deal("d2", "2026-11-05", dec!(4000)),
                deal("d3", "2026-11-09", dec!(5000)),
            ]),
            eur(),
        );
        assert_eq!(line(&o, "commission:d1").total(), dec!(400.00));
        assert_eq!(line(&o, "commission:d2").total(), dec!(260.00));
        assert_eq!(line(&o, "commission:d3").total(), dec!(440.00));
        assert_eq!(o.attainment, Some(dec!(1.7)));
        assert_eq!(o.total(), dec!(1100.00));
    }

    #[test]
    fn retroactive_pays_everything_at_the_reached_tier() {
        let plan =
            plan_with(|p| p.commission.as_mut().unwrap().mode = pb::TierMode::Retroactive as i32);
        let below = compute(
            &plan,
            &period(vec![deal("d1", "2026-11-02", dec!(9000))]),
            eur(),
        );
        assert_eq!(below.total(), dec!(450.00));
        // Crossing 100% lifts the earlier deal to 8% too.
        let above = compute(
            &plan,
            &period(vec![
                deal("d1", "2026-11-02", dec!(9000)),
                deal("d2", "2026-11-05", dec!(2000)),
            ]),
            eur(),
        );
        assert_eq!(line(&above, "commission:d1").total(), dec!(720.00));
        assert_eq!(line(&above, "commission:d2").total(), dec!(160.00));
    }

    #[test]
    fn business_order_not_arrival_order_decides_slices() {
        let plan = plan_with(|_| {});
        let a = compute(
            &plan,
            &period(vec![
                deal("d1", "2026-11-02", dec!(8000)),
                deal("d2", "2026-11-05", dec!(4000)),
            ]),
            eur(),
        );
        let b = compute(
            &plan,
            &period(vec![
                deal("d2", "2026-11-05", dec!(4000)),
                deal("d1", "2026-11-02", dec!(8000)),
            ]),
            eur(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn next_tier_is_the_one_above_the_revenue_reached() {
        let plan = plan_with(|p| {
            p.commission
                .as_mut()
                .unwrap()
                .rep_quotas
                .insert("r-big".into(), "30000".into());
        });
        // Quota 10 000: tiers at 0, 100% and 150%.
        let n = next_tier(&plan, "r1", dec!(4000.004), eur()).unwrap();
        assert_eq!(
            (n.from, n.rate, n.revenue_needed),
            (dec!(1), dec!(0.08), dec!(6000.00))
        );
        let n = next_tier(&plan, "r1", dec!(10000), eur()).unwrap();
        assert_eq!((n.from, n.revenue_needed), (dec!(1.5), dec!(5000)));
        assert_eq!(next_tier(&plan, "r1", dec!(15000), eur()), None);
        // A rep's own quota sets the boundary.
        let n = next_tier(&plan, "r-big", dec!(10000), eur()).unwrap();
        assert_eq!(n.revenue_needed, dec!(20000));
        // Cumulative basis: boundaries are amounts.
        let plan = plan_with(|p| {
            let c = p.commission.as_mut().unwrap();
            c.basis = pb::TierBasis::CumulativeAmount as i32;
            c.tiers[1].from = "2500".into();
            c.tiers[2].from = "9000".into();
        });
        let n = next_tier(&plan, "r1", dec!(3000), eur()).unwrap();
        assert_eq!((n.from, n.revenue_needed), (dec!(9000), dec!(6000)));
    }

    #[test]
    fn threshold_pays_nothing_below() {
        let plan = plan_with(|p| p.commission.as_mut().unwrap().threshold = "0.5".into());
        let o = compute(
            &plan,
            &period(vec![deal("d1", "2026-11-02", dec!(4000))]),
            eur(),
        );
        assert_eq!(o.total(), dec!(0));
        let o = compute(
            &plan,
            &period(vec![
                deal("d1", "2026-11-02", dec!(4000)),
                deal("d2", "2026-11-03", dec!(1000)),
            ]),
            eur(),
        );
        assert_eq!(o.total(), dec!(250.00));
    }

    #[test]
    fn caps_per_deal_and_per_period() {
        let plan = plan_with(|p| {
            let c = p.commission.as_mut().unwrap();
            c.per_deal_cap = "300".into();
            c.period_cap = "500".into();
        });
        // d1 8,000 -> 400 capped at 300; d2 4,000 -> 260 but only 200 left in the period.
        let o = compute(
            &plan,
            &period(vec![
                deal("d1", "2026-11-02", dec!(8000)),
                deal("d2", "2026-11-05", dec!(4000)),
            ]),
            eur(),
        );
        assert_eq!(line(&o, "commission:d1").total(), dec!(300.00));
        assert_eq!(line(&o, "commission:d2").total(), dec!(200.00));
        assert!(line(&o, "commission:d1").summary.contains("capped"));
    }

    #[test]
    fn gates_multiply_or_hold() {
        let plan = plan_with(|p| {
            p.gates.push(pb::Gate {
                metric: "csat_avg".into(),
                op: pb::GateOp::Below as i32,
                value: "4".into(),
                action: pb::GateAction::Hold as i32,
                factor: String::new(),
            });
        });
        let mut rp = period(vec![deal("d1", "2026-11-02", dec!(8000))]);
        rp.metrics.insert("collection_rate".into(), dec!(0.65));
        let o = compute(&plan, &rp, eur());
        assert_eq!(
            line(&o, "commission:d1").amounts,
            vec![(Status::Payable, dec!(200.00))]
        );
        rp.metrics.insert("csat_avg".into(), dec!(3.8));
        let o = compute(&plan, &rp, eur());
        assert_eq!(
            line(&o, "commission:d1").amounts,
            vec![(Status::Held, dec!(200.00))]
        );
        assert!(o.held);
        // A metric not reported does not trigger.
        rp.metrics.clear();
        assert_eq!(compute(&plan, &rp, eur()).total(), dec!(400.00));
    }

    #[test]
    fn partial_collection_makes_commission_payable_in_proportion() {
        let plan = plan_with(|p| {
            p.payout = Some(pb::PayoutSplit {
                at_close_percent: "50".into(),
                on_collection_percent: "50".into(),
            });
        });
        let mut d = deal("d1", "2026-11-02", dec!(8000));
        d.payments.push(Linked {
            event_id: "p1".into(),
            at: at("2026-11-20"),
            amount: dec!(2000),
            full: false,
        });
        // 400: 200 at close + 200 x 2000/8000 = 50 on collection -> 250 payable, 150 earned.
        let o = compute(&plan, &period(vec![d]), eur());
        assert_eq!(
            line(&o, "commission:d1").amounts,
            vec![
                (Status::Payable, dec!(250.00)),
                (Status::Earned, dec!(150.00))
            ]
        );
    }

    #[test]
    fn clawback_mirrors_the_original_within_the_window_only() {
        let plan = plan_with(|_| {});
        let mut d = deal("d1", "2026-11-02", dec!(8000));
        d.reversals.push(Linked {
            event_id: "r1".into(),
            at: at("2026-11-20"),
            amount: dec!(2000),
            full: false,
        });
        let o = compute(&plan, &period(vec![d.clone()]), eur());
        assert_eq!(line(&o, "commission:d1").total(), dec!(400.00));
        assert_eq!(
            line(&o, "clawback:d1").amounts,
            vec![(Status::Reversed, dec!(-100.00))]
        );
        assert_eq!(o.revenue, dec!(6000));
        // Outside the 90-day window: no clawback, revenue stays.
        d.reversals[0].at = at("2027-03-01");
        let o = compute(&plan, &period(vec![d]), eur());
        assert!(o.lines.iter().all(|l| l.kind != Kind::Clawback));
        assert_eq!(o.total(), dec!(400.00));
    }

    #[test]
    fn spiff_window_edges() {
        let plan = plan_with(|p| {
            p.spiffs.push(pb::Spiff {
                spiff_id: "q4".into(),
                name: "Analytics push".into(),
                product_ids: vec!["analytics".into()],
                from_date: "2026-11-01".into(),
                to_date: "2026-11-15".into(),
                reward: Some(pb::spiff::Reward::Rate("0.02".into())),
            });
        });
        let mk = |id: &str, day: &str| {
            let mut d = deal(id, day, dec!(5000));
            d.lines = vec![
                ("analytics".into(), dec!(3000)),
                ("support".into(), dec!(2000)),
            ];
            d
        };
        let o = compute(
            &plan,
            &period(vec![
                mk("first-day", "2026-11-01"),
                mk("last-day", "2026-11-15"),
                mk("after", "2026-11-16"),
            ]),
            eur(),
        );
        assert_eq!(line(&o, "spiff:q4:first-day").total(), dec!(60.00));
        assert_eq!(line(&o, "spiff:q4:last-day").total(), dec!(60.00));
        assert!(o.lines.iter().all(|l| l.key != "spiff:q4:after"));
    }

    #[test]
    fn bonuses_only_at_close() {
        let plan = plan_with(|p| {
            p.attainment_bonuses.push(pb::AttainmentBonus {
                at: "1".into(),
                amount: "1000".into(),
            });
            p.score_bonus = vec![
                pb::ScoreBand {
                    min_score: "80".into(),
                    amount: "300".into(),
                },
                pb::ScoreBand {
                    min_score: "100".into(),
                    amount: "600".into(),
                },
            ];
        });
        let mut rp = period(vec![deal("d1", "2026-11-02", dec!(12000))]);
        rp.score = Some(dec!(95));
        assert!(
            compute(&plan, &rp, eur())
                .lines
                .iter()
                .all(|l| l.kind != Kind::Bonus)
        );
        rp.closed = true;
        let o = compute(&plan, &rp, eur());
        assert_eq!(line(&o, "bonus:attainment:1").total(), dec!(1000.00));
        assert_eq!(line(&o, "bonus:score").total(), dec!(300.00));
    }

    #[test]
    fn split_credit_is_paid_on_the_rep_share_only() {
        // Ingest credits 60% of a 10,000 deal: 6,000 to this rep.
        let plan = plan_with(|_| {});
        let o = compute(
            &plan,
            &period(vec![deal("d1", "2026-11-02", dec!(6000))]),
            eur(),
        );
        assert_eq!(o.total(), dec!(300.00));
    }

    #[test]
    fn an_exact_half_cent_goes_to_the_even_cent() {
        // A first tier of 2%: the second deal's line is 29.665 exactly (it was computed as
        // credited x commission / net over attainment positions and came out 29.67).
        let plan = plan_with(|p| {
            let c = p.commission.as_mut().unwrap();
            c.tiers[0].rate = "0.02".into();
        });
        let o = compute(
            &plan,
            &period(vec![
                deal("d0", "2026-11-01", dec!(3333.33)),
                deal("d1", "2026-11-02", dec!(1483.25)),
            ]),
            eur(),
        );
        let l = line(&o, "commission:d1");
        assert_eq!(l.total(), dec!(29.66));
        assert_eq!(l.explanation["amount"]["exact"], "29.665");
        assert_eq!(l.explanation["amount"]["rounded"], "29.66");
        assert!(l.summary.starts_with("2% of 1483.25"), "{}", l.summary);
    }

    #[test]
    fn a_period_cap_is_met_to_the_cent_by_the_line_that_reaches_it() {
        // 5% of many odd amounts: the unrounded room would leave the total a cent off.
        let plan = plan_with(|p| {
            let c = p.commission.as_mut().unwrap();
            c.period_cap = "15000".into();
            c.quota = "1000000".into();
        });
        let deals: Vec<DealIn> = (0..40)
            .map(|i| {
                deal(
                    &format!("d{i:02}"),
                    &format!("2026-11-{:02}", 1 + i % 28),
                    dec!(9876.54) + Decimal::from(i) * dec!(0.33),
                )
            })
            .collect();
        let o = compute(&plan, &period(deals), eur());
        assert_eq!(o.total(), dec!(15000.00));
        let capped: Vec<&Line> = o
            .lines
            .iter()
            .filter(|l| {
                l.explanation["caps"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
            .collect();
        assert_eq!(capped.len(), 1, "deals past the cap have no line");
        assert!(
            capped[0].explanation["rounding"]
                .as_str()
                .unwrap()
                .starts_with("capped")
        );
    }

    #[test]
    fn a_capped_deal_with_a_clawback_nets_exactly_its_cap() {
        let plan = plan_with(|p| p.commission.as_mut().unwrap().per_deal_cap = "333.33".into());
        let mut d = deal("d1", "2026-11-02", dec!(9999.99));
        d.reversals.push(Linked {
            event_id: "r1".into(),
            at: at("2026-11-20"),
            amount: dec!(1234.57),
            full: false,
        });
        let o = compute(&plan, &period(vec![d]), eur());
        let net = line(&o, "commission:d1").total() + line(&o, "clawback:d1").total();
        assert_eq!(net, dec!(333.33));
    }

    #[test]
    fn a_gate_factor_above_one_does_not_lift_a_line_over_its_cap() {
        let plan = plan_with(|p| {
            let c = p.commission.as_mut().unwrap();
            c.per_deal_cap = "300".into();
            p.gates[0].op = pb::GateOp::AtLeast as i32;
            p.gates[0].factor = "1.5".into();
        });
        let mut rp = period(vec![deal("d1", "2026-11-02", dec!(5000))]);
        rp.metrics.insert("collection_rate".into(), dec!(0.9));
        let o = compute(&plan, &rp, eur());
        assert_eq!(line(&o, "commission:d1").total(), dec!(300.00));
    }

    fn money_strategy(max_cents: i64) -> impl Strategy<Value = Decimal> {
        (1..max_cents).prop_map(|c| Decimal::new(c, 2))
    }

    fn scenario() -> impl Strategy<Value = (Plan, RepPeriod)> {
        let one = (
            money_strategy(2_000_000),
            0u32..28,
            prop::option::of(0u32..100),
            prop::option::of(0u32..100),
        );
        (
            prop::collection::vec(one, 1..25),
            any::<bool>(),
            prop::option::of(money_strategy(300_000)),
            prop::option::of(money_strategy(2_000_000)),
            prop::sample::select(vec!["1", "0.5", "1.25", "0.333"]),
            prop::sample::select(vec!["0.05", "0.0333", "0.02", "0.125"]),
            prop::sample::select(vec!["10000", "33333.33", "7777"]),
            any::<bool>(),
        )
            .prop_map(
                |(deals, retro, deal_cap, period_cap, factor, rate, quota, low_collection)| {
                    let plan = plan_with(|p| {
                        let c = p.commission.as_mut().unwrap();
                        c.mode = if retro {
                            pb::TierMode::Retroactive
                        } else {
                            pb::TierMode::Marginal
                        } as i32;
                        c.per_deal_cap = deal_cap.map(|d| d.to_string()).unwrap_or_default();
                        c.period_cap = period_cap.map(|d| d.to_string()).unwrap_or_default();
                        c.tiers[0].rate = rate.into();
                        c.quota = quota.into();
                        p.gates[0].factor = factor.into();
                        p.payout = Some(pb::PayoutSplit {
                            at_close_percent: "30".into(),
                            on_collection_percent: "70".into(),
                        });
                    });
                    let deals = deals
                        .into_iter()
                        .enumerate()
                        .map(|(i, (amount, day, paid_pct, rev_pct))| {
                            let mut d = deal(
                                &format!("d{i:02}"),
                                &format!("2026-11-{:02}", day + 1),
                                amount,
                            );
                            if let Some(pct) = paid_pct {
                                d.payments.push(Linked {
                                    event_id: format!("p{i}"),
                                    at: at("2026-11-28"),
                                    amount: (amount * Decimal::from(pct) / Decimal::ONE_HUNDRED)
                                        .round_dp(2),
                                    full: false,
                                });
                            }
                            if let Some(pct) = rev_pct {
                                d.reversals.push(Linked {
                                    event_id: format!("r{i}"),
                                    at: at("2026-11-29"),
                                    amount: (amount * Decimal::from(pct) / Decimal::ONE_HUNDRED)
                                        .round_dp(2),
                                    full: pct == 100,
                                });
                            }
                            d
                        })
                        .collect();
                    let mut rp = period(deals);
                    if low_collection {
                        rp.metrics.insert("collection_rate".into(), dec!(0.5));
                    }
                    (plan, rp)
                },
            )
    }

    fn dec_of(v: &serde_json::Value) -> Decimal {
        v.as_str().unwrap().parse().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Explaining fewer lines changes nothing else: the same lines, kinds, deals and
        /// amounts, and the lines explained are byte for byte those of a full computation.
        #[test]
        fn explaining_some_lines_changes_nothing_else((plan, rp) in scenario(), pick in 0usize..7) {
            let cur = eur();
            let full = compute(&plan, &rp, cur);
            let bare = compute_with(&plan, &rp, cur, Explain::Nothing);
            let some: HashSet<String> = full.lines.iter().enumerate().filter(|(i, _)| i % 7 == pick).map(|(_, l)| l.key.clone()).collect();
            let part = compute_with(&plan, &rp, cur, Explain::Only(&some));
            for o in [&bare, &part] {
                prop_assert_eq!(o.lines.len(), full.lines.len());
                prop_assert_eq!((o.revenue, o.attainment, o.held), (full.revenue, full.attainment, full.held));
                for (a, b) in o.lines.iter().zip(&full.lines) {
                    prop_assert_eq!((&a.key, a.kind, &a.deal_id, &a.amounts), (&b.key, b.kind, &b.deal_id, &b.amounts));
                }
            }
            // A line is explained as in full (those asked for, and a line sharing its
            // explanation with one asked for), or not at all.
            for (a, b) in part.lines.iter().zip(&full.lines) {
                if a.explanation.is_null() {
                    prop_assert!(!some.contains(&a.key) && a.summary.is_empty() && a.inputs.is_empty());
                } else {
                    prop_assert_eq!(a, b);
                }
            }
            prop_assert!(bare.lines.iter().filter(|l| l.kind != Kind::Bonus).all(|l| l.explanation.is_null()));
        }

        /// Every line is its exact amount rounded half-even once, except the line that
        /// reaches a cap, which takes what is left under it; caps are never exceeded and a
        /// capped period totals its cap; status parts sum to their line.
        #[test]
        fn lines_are_exact_and_caps_hold_to_the_cent((plan, rp) in scenario()) {
            let cur = eur();
            let o = compute(&plan, &rp, cur);
            let c = plan.commission.as_ref().unwrap();
            let mut net_commission = Decimal::ZERO;
            let mut period_capped = false;
            for l in &o.lines {
                prop_assert_eq!(l.amounts.iter().map(|(_, a)| *a).sum::<Decimal>(), l.total());
                prop_assert!(l.total().scale() <= 2);
                if l.kind != Kind::Commission {
                    continue;
                }
                let e = &l.explanation;
                let d = rp.deals.iter().find(|d| d.deal_id == l.deal_id).unwrap();
                let claw = o.lines.iter().find(|k| k.key == format!("clawback:{}", l.deal_id)).map_or(Decimal::ZERO, Line::total);
                let net = dec_of(&e["net"]);
                let slices: Decimal = e["slices"].as_array().unwrap().iter().map(|s| dec_of(&s["amount"])).sum();
                let comm = dec_of(&e["commission_on_net"]);
                let factor = dec_of(&e["factor"]);
                if e["threshold"]["met"].as_bool().unwrap() {
                    prop_assert_eq!(slices * factor, comm);
                }
                let caps = e["caps"].as_array().unwrap();
                net_commission += l.total() + claw;
                if caps.is_empty() {
                    if !net.is_zero() {
                        prop_assert_eq!(l.total(), cur.round_ratio(comm * d.credited, net));
                        prop_assert_eq!(-claw, cur.round_ratio(comm * dec_of(&e["clawed"]), net));
                    }
                } else {
                    for cap in caps {
                        let limit = dec_of(&cap["limit"]);
                        if cap["cap"] == "per_deal" && caps.len() == 1 {
                            prop_assert_eq!(l.total() + claw, limit);
                        }
                        if cap["cap"] == "period" {
                            period_capped = true;
                            prop_assert_eq!(l.total() + claw, dec_of(&cap["room"]));
                        }
                    }
                }
                if let Some(cap) = c.per_deal_cap {
                    prop_assert!(l.total() + claw <= cap);
                }
            }
            if let Some(cap) = c.period_cap {
                prop_assert!(net_commission <= cap);
                if period_capped {
                    prop_assert_eq!(net_commission, cur.floor(cap));
                }
            }
        }
    }
}
