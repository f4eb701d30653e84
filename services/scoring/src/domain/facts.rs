//! Facts: one per input event of a rep, and the cells (sums and counts per rep, period and
//! cell name) each contributes to.
//!
//! A deal's payments and reversals contribute to the periods of the deal (its close month
//! and due month), so their contribution needs both the deal and the payment/reversal. It
//! is applied by whichever of the two arrives second. Hence the cells are a function of the
//! SET of facts, whatever the order: `apply` over any permutation == `recompute`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use spm_core::period::{Calendar, PeriodKind};
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;
use uuid::Uuid;

/// What kind of input a fact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FactKind {
    Deal,
    Payment,
    Reversal,
    Activity(ActivityCell),
    Csat,
    Nps,
}

/// The activity kinds, each counted in its own cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActivityCell {
    Visits,
    Calls,
    Meetings,
    Emails,
    Demos,
    ContractsSigned,
    AfterSalesResolved,
    TrainingsCompleted,
}

impl ActivityCell {
    pub const ALL: [Self; 8] = [
        Self::Visits,
        Self::Calls,
        Self::Meetings,
        Self::Emails,
        Self::Demos,
        Self::ContractsSigned,
        Self::AfterSalesResolved,
        Self::TrainingsCompleted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Visits => "visits",
            Self::Calls => "calls",
            Self::Meetings => "meetings",
            Self::Emails => "emails",
            Self::Demos => "demos",
            Self::ContractsSigned => "contracts_signed",
            Self::AfterSalesResolved => "after_sales_resolved",
            Self::TrainingsCompleted => "trainings_completed",
        }
    }

    fn from_proto(k: ev::ActivityKind) -> Option<Self> {
        Some(match k {
            ev::ActivityKind::Visit => Self::Visits,
            ev::ActivityKind::Call => Self::Calls,
            ev::ActivityKind::Meeting => Self::Meetings,
            ev::ActivityKind::Email => Self::Emails,
            ev::ActivityKind::Demo => Self::Demos,
            ev::ActivityKind::ContractSigned => Self::ContractsSigned,
            ev::ActivityKind::AfterSalesResolved => Self::AfterSalesResolved,
            ev::ActivityKind::TrainingCompleted => Self::TrainingsCompleted,
            ev::ActivityKind::Unspecified => return None,
        })
    }
}

impl FactKind {
    /// The stored name ("deal", "activity:visits", ...).
    pub fn name(self) -> String {
        match self {
            Self::Deal => "deal".into(),
            Self::Payment => "payment".into(),
            Self::Reversal => "reversal".into(),
            Self::Activity(a) => format!("activity:{}", a.name()),
            Self::Csat => "csat".into(),
            Self::Nps => "nps".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "deal" => Self::Deal,
            "payment" => Self::Payment,
            "reversal" => Self::Reversal,
            "csat" => Self::Csat,
            "nps" => Self::Nps,
            other => Self::Activity(
                ActivityCell::ALL
                    .into_iter()
                    .find(|a| other.strip_prefix("activity:") == Some(a.name()))?,
            ),
        })
    }
}

/// One input event of a rep, with the periods it falls in (tenant calendar of the event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub event_id: Uuid,
    /// The client event id it came from.
    pub source_event_id: String,
    pub rep_id: String,
    pub kind: FactKind,
    pub occurred_at: DateTime<Utc>,
    pub week: String,
    pub month: String,
    pub deal_id: String,
    /// Base-currency amount (deals, payments, reversals).
    pub amount: Decimal,
    /// Survey score (CSAT 1..=5, NPS 0..=10).
    pub score: i32,
    /// Month the deal's payment is due (deals only).
    pub due_month: String,
    /// The reversal reverses the whole deal.
    pub full: bool,
}

impl Fact {
    fn links_to_deal(&self) -> bool {
        matches!(self.kind, FactKind::Payment | FactKind::Reversal)
    }
}

/// The fact of an input event, or `None` for events that are not rep facts.
pub fn fact_of(event_id: Uuid, e: &ev::EventEnvelope) -> Option<Fact> {
    let occurred_at = e.occurred_at.as_ref().and_then(spm_proto::ext::datetime)?;
    let cal = e
        .tenant_context
        .as_ref()
        .and_then(|c| Calendar::new(&c.time_zone, c.fiscal_year_start_month).ok())
        .unwrap_or_default();
    let month_of = |t: DateTime<Utc>| cal.period(PeriodKind::Month, t).key;
    let amount_of = |m: &Option<spm_proto::common::v1::Money>| -> Decimal {
        m.as_ref()
            .and_then(|m| spm_core::money::parse_decimal(&m.amount).ok())
            .unwrap_or_default()
    };
    let mut f = Fact {
        event_id,
        source_event_id: e.causation_id.clone(),
        rep_id: String::new(),
        kind: FactKind::Deal,
        occurred_at,
        week: cal.period(PeriodKind::Week, occurred_at).key,
        month: month_of(occurred_at),
        deal_id: String::new(),
        amount: Decimal::ZERO,
        score: 0,
        due_month: String::new(),
        full: false,
    };
    match e.payload.as_ref()? {
        Payload::DealCredited(d) => {
            f.rep_id.clone_from(&d.rep_id);
            f.deal_id.clone_from(&d.deal_id);
            f.amount = amount_of(&d.credited_base_amount);
            let due = d
                .payment_due_at
                .as_ref()
                .and_then(spm_proto::ext::datetime)
                .unwrap_or(occurred_at);
            f.due_month = month_of(due);
        }
        Payload::PaymentCredited(p) => {
            f.kind = FactKind::Payment;
            f.rep_id.clone_from(&p.rep_id);
            f.deal_id.clone_from(&p.deal_id);
            f.amount = amount_of(&p.credited_base_amount);
        }
        Payload::DealReversalCredited(r) => {
            f.kind = FactKind::Reversal;
            f.rep_id.clone_from(&r.rep_id);
            f.deal_id.clone_from(&r.deal_id);
            f.amount = amount_of(&r.credited_base_amount);
            f.full = r.full;
        }
        Payload::ActivityLogged(a) => {
            f.kind = FactKind::Activity(ActivityCell::from_proto(a.kind())?);
            f.rep_id.clone_from(&a.rep_id);
            f.deal_id.clone_from(&a.deal_id);
        }
        Payload::SatisfactionRecorded(s) => {
            f.kind = match s.kind() {
                ev::SurveyKind::Csat => FactKind::Csat,
                ev::SurveyKind::Nps => FactKind::Nps,
                ev::SurveyKind::Unspecified => return None,
            };
            f.rep_id.clone_from(&s.rep_id);
            f.score = i32::try_from(s.score).unwrap_or(0);
        }
        _ => return None,
    }
    if f.source_event_id.is_empty() {
        f.source_event_id = event_id.to_string();
    }
    Some(f)
}

/// A change to one cell: `sum += sum`, `n += n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub rep_id: String,
    pub period_kind: PeriodKind,
    pub period_key: String,
    pub cell: &'static str,
    pub sum: Decimal,
    pub n: i64,
}

fn delta(rep: &str, kind: PeriodKind, key: &str, cell: &'static str, sum: Decimal) -> Delta {
    Delta {
        rep_id: rep.to_owned(),
        period_kind: kind,
        period_key: key.to_owned(),
        cell,
        sum,
        n: 1,
    }
}

/// What a fact contributes on its own.
pub fn alone(f: &Fact) -> Vec<Delta> {
    let r = f.rep_id.as_str();
    let m = PeriodKind::Month;
    match f.kind {
        FactKind::Deal => vec![
            delta(r, m, &f.month, "revenue", f.amount),
            delta(r, m, &f.month, "deals_won", Decimal::ONE),
            delta(r, m, &f.due_month, "amount_due", f.amount),
        ],
        FactKind::Payment => vec![delta(r, m, &f.month, "amount_collected", f.amount)],
        FactKind::Reversal => vec![],
        FactKind::Activity(a) => vec![
            delta(r, m, &f.month, a.name(), Decimal::ONE),
            delta(r, PeriodKind::Week, &f.week, a.name(), Decimal::ONE),
        ],
        FactKind::Csat => vec![delta(r, m, &f.month, "csat", Decimal::from(f.score))],
        FactKind::Nps => {
            let s = match f.score {
                9.. => Decimal::ONE,
                ..=6 => -Decimal::ONE,
                _ => Decimal::ZERO,
            };
            vec![delta(r, m, &f.month, "nps", s)]
        }
    }
}

/// What a payment or reversal contributes together with its deal.
pub fn pair(deal: &Fact, linked: &Fact) -> Vec<Delta> {
    debug_assert!(deal.kind == FactKind::Deal && linked.links_to_deal());
    let r = deal.rep_id.as_str();
    let m = PeriodKind::Month;
    match linked.kind {
        FactKind::Payment => vec![delta(r, m, &deal.due_month, "collected", linked.amount)],
        FactKind::Reversal => {
            let mut v = vec![
                delta(r, m, &deal.month, "revenue", -linked.amount),
                delta(r, m, &deal.due_month, "amount_due", -linked.amount),
            ];
            if linked.full {
                v.push(delta(r, m, &deal.month, "deals_won", -Decimal::ONE));
            }
            v
        }
        _ => vec![],
    }
}

/// Which already-applied facts a new fact pairs with: for a deal, its payments and
/// reversals; for a payment or reversal, its deal. (Same rep, same deal id.)
pub fn links(new: &Fact, existing: &Fact) -> bool {
    new.rep_id == existing.rep_id
        && !new.deal_id.is_empty()
        && new.deal_id == existing.deal_id
        && ((new.kind == FactKind::Deal && existing.links_to_deal())
            || (new.links_to_deal() && existing.kind == FactKind::Deal))
}

/// The deltas of applying `new` when `existing` (already applied) holds its linked facts.
pub fn apply(new: &Fact, existing: &[Fact]) -> Vec<Delta> {
    let mut out = alone(new);
    for e in existing.iter().filter(|e| links(new, e)) {
        if new.kind == FactKind::Deal {
            out.extend(pair(new, e));
        } else {
            out.extend(pair(e, new));
        }
    }
    out
}

/// Cell totals keyed by (rep, period kind, period key, cell).
pub type Cells = BTreeMap<(String, PeriodKind, String, &'static str), (Decimal, i64)>;

pub fn add(cells: &mut Cells, deltas: impl IntoIterator<Item = Delta>) {
    for d in deltas {
        let e = cells
            .entry((d.rep_id, d.period_kind, d.period_key, d.cell))
            .or_insert((Decimal::ZERO, 0));
        e.0 += d.sum;
        e.1 += d.n;
    }
}

/// The cells of a set of facts computed from scratch.
pub fn recompute(facts: &[Fact]) -> Cells {
    let mut cells = Cells::new();
    for f in facts {
        add(&mut cells, alone(f));
        if f.kind == FactKind::Deal {
            for l in facts.iter().filter(|l| links(f, l)) {
                add(&mut cells, pair(f, l));
            }
        }
    }
    cells
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    use super::*;

    pub fn fact(
        kind: FactKind,
        n: u128,
        deal: &str,
        amount: Decimal,
        month: &str,
        due: &str,
    ) -> Fact {
        Fact {
            event_id: Uuid::from_u128(n),
            source_event_id: format!("src-{n}"),
            rep_id: "rep-1".into(),
            kind,
            occurred_at: "2026-11-02T10:00:00Z".parse().unwrap(),
            week: "2026-W45".into(),
            month: month.into(),
            deal_id: deal.into(),
            amount,
            score: 0,
            due_month: due.into(),
            full: false,
        }
    }

    fn cell(cells: &Cells, month: &str, name: &'static str) -> (Decimal, i64) {
        cells
            .get(&(
                "rep-1".to_owned(),
                PeriodKind::Month,
                month.to_owned(),
                name,
            ))
            .copied()
            .unwrap_or_default()
    }

    #[test]
    fn known_answers() {
        // Deal of 1000 closed in October, due in November; 400 paid in December; 100
        // refunded in November; a second deal of 500 fully cancelled.
        let d1 = fact(FactKind::Deal, 1, "d1", dec!(1000), "2026-10", "2026-11");
        let p1 = fact(FactKind::Payment, 2, "d1", dec!(400), "2026-12", "");
        let r1 = fact(FactKind::Reversal, 3, "d1", dec!(100), "2026-11", "");
        let d2 = fact(FactKind::Deal, 4, "d2", dec!(500), "2026-10", "2026-10");
        let mut r2 = fact(FactKind::Reversal, 5, "d2", dec!(500), "2026-11", "");
        r2.full = true;
        let cells = recompute(&[d1, p1, r1, d2, r2]);
        assert_eq!(cell(&cells, "2026-10", "revenue"), (dec!(900), 4));
        assert_eq!(cell(&cells, "2026-10", "deals_won"), (dec!(1), 3));
        assert_eq!(cell(&cells, "2026-11", "amount_due"), (dec!(900), 2));
        assert_eq!(cell(&cells, "2026-11", "collected"), (dec!(400), 1));
        assert_eq!(cell(&cells, "2026-12", "amount_collected"), (dec!(400), 1));
        assert_eq!(cell(&cells, "2026-10", "amount_due"), (dec!(0), 2));
    }

    #[test]
    fn nps_counts_promoters_minus_detractors() {
        let mut cells = Cells::new();
        for (i, s) in [10, 9, 8, 6, 0].into_iter().enumerate() {
            let mut f = fact(FactKind::Nps, i as u128, "", Decimal::ZERO, "2026-11", "");
            f.score = s;
            add(&mut cells, alone(&f));
        }
        assert_eq!(cell(&cells, "2026-11", "nps"), (dec!(0), 5));
    }

    fn arb_facts() -> impl Strategy<Value = Vec<Fact>> {
        let kinds = prop_oneof![
            Just(FactKind::Deal),
            Just(FactKind::Payment),
            Just(FactKind::Reversal),
            Just(FactKind::Activity(ActivityCell::Visits)),
            Just(FactKind::Csat),
        ];
        prop::collection::vec(
            (
                kinds,
                0..3usize,
                1i64..100_000,
                0..3usize,
                0..3usize,
                any::<bool>(),
            ),
            1..25,
        )
        .prop_map(|v| {
            let months = ["2026-10", "2026-11", "2026-12"];
            v.into_iter()
                .enumerate()
                .map(|(i, (k, deal, cents, m, due, full))| {
                    let mut f = fact(
                        k,
                        i as u128 + 1,
                        &format!("d{deal}"),
                        Decimal::new(cents, 2),
                        months[m],
                        months[due],
                    );
                    f.full = full && k == FactKind::Reversal;
                    f.score = 4;
                    f
                })
                .collect()
        })
    }

    proptest! {
        /// Incremental application in any order, with redeliveries skipped by event id
        /// (as the inbox does), gives exactly the from-scratch cells.
        #[test]
        fn incremental_equals_recompute_under_any_order_and_duplicates(
            facts in arb_facts(),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let want = recompute(&facts);
            // A delivery sequence: every fact at least once, plus random redeliveries.
            let mut seq: Vec<&Fact> = order.iter().map(|i| &facts[i.index(facts.len())]).collect();
            seq.extend(facts.iter());
            let mut seen = HashSet::new();
            let mut applied: Vec<Fact> = Vec::new();
            let mut cells = Cells::new();
            for f in seq {
                if !seen.insert(f.event_id) {
                    continue;
                }
                add(&mut cells, apply(f, &applied));
                applied.push(f.clone());
            }
            prop_assert_eq!(cells, want);
        }
    }
}
