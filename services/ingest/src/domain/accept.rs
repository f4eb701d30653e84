//! Turning a valid event into published records, against what ingest knows: the reps, the
//! deals (their splits, payments and reversals) and the tenant's FX rates.
//!
//! A deal credited to several reps becomes one `DealCredited` per rep, keyed by that rep;
//! its payments and reversals follow the same split. Amounts are allocated with the largest
//! remainder method, so the credits of a deal sum to the deal exactly, in the deal currency
//! and in the base currency alike.
//!
//! CRMs deliver out of order. An event whose rep or deal is not known yet is not rejected:
//! it is accepted as *waiting* ([`Accepted::Waiting`]) and parked; once everything it
//! refers to is known, [`IngestState::release`] applies the parked events in business order
//! (occurred at, then client id), exactly as if they had arrived after their referents.
//! So the records published for a set of events do not depend on their arrival order.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use spm_core::money::{Currency, Money, allocate};
use spm_core::period::Calendar;
use spm_core::topics;
use spm_core::validation::FieldViolation;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload as Out;
use uuid::Uuid;

use super::validate::{ValidEvent, ValidPayload};

/// The tenant an event belongs to, with its calendar and base currency.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub tenant_id: String,
    pub context: common::TenantContext,
    pub calendar: Calendar,
    pub base: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepState {
    pub active: bool,
}

/// What ingest remembers of a closed deal, to fan out its payments and reversals.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DealState {
    pub currency: String,
    pub amount: Decimal,
    /// (rep, share percent).
    pub shares: Vec<(String, Decimal)>,
    pub paid: Decimal,
    pub reversed: Decimal,
    pub closed_by: Uuid,
}

/// Effective-dated FX rates: units of the base currency per unit of a currency.
#[derive(Debug, Clone, Default)]
pub struct FxTable {
    rates: HashMap<String, Vec<(NaiveDate, Decimal)>>,
    /// Currencies whose rates were loaded (perhaps none).
    loaded: BTreeSet<String>,
}

impl FxTable {
    /// Whether the rates of `currency` are in the table (it may have none).
    pub fn has(&self, currency: &str) -> bool {
        self.loaded.contains(currency) || self.rates.contains_key(currency)
    }

    /// Notes that every rate of `currency` has been inserted.
    pub fn mark_loaded(&mut self, currency: &str) {
        self.loaded.insert(currency.to_owned());
    }

    pub fn insert(&mut self, currency: &str, effective_from: NaiveDate, rate: Decimal) {
        let v = self.rates.entry(currency.to_owned()).or_default();
        v.retain(|(d, _)| *d != effective_from);
        v.push((effective_from, rate));
        v.sort_by_key(|(d, _)| *d);
    }

    /// The rate in force on `date`: the latest one effective on or before it.
    pub fn rate_on(&self, currency: &str, date: NaiveDate) -> Option<Decimal> {
        self.rates
            .get(currency)?
            .iter()
            .rev()
            .find(|(d, _)| *d <= date)
            .map(|(_, r)| *r)
    }
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: &'static str,
    pub key: String,
    pub envelope: ev::EventEnvelope,
}

/// Something an event refers to: a rep or a deal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ref {
    Rep(String),
    Deal(String),
}

impl Ref {
    /// `rep:<id>` or `deal:<id>`, as stored and shown.
    pub fn key(&self) -> String {
        match self {
            Self::Rep(r) => format!("rep:{r}"),
            Self::Deal(d) => format!("deal:{d}"),
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        match key.split_once(':')? {
            ("rep", r) if !r.is_empty() => Some(Self::Rep(r.to_owned())),
            ("deal", d) if !d.is_empty() => Some(Self::Deal(d.to_owned())),
            _ => None,
        }
    }

    /// What a person reads: `rep "r-1" (no rep_upserted yet)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Rep(r) => format!("rep {r:?} (no rep_upserted event for it yet)"),
            Self::Deal(d) => format!("deal {d:?} (its deal_closed event has not been applied yet)"),
        }
    }
}

/// How an event was taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Applied: these records are to be published.
    Published(Vec<Outgoing>),
    /// Valid as far as can be told, but it refers to reps or deals not known yet.
    Waiting(BTreeSet<Ref>),
}

/// An accepted event waiting for what it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub event: ValidEvent,
    /// What is still unknown.
    pub waits: BTreeSet<Ref>,
    /// Loaded from the parked table (else parked by this batch).
    pub stored: bool,
    /// `waits` changed since it was loaded.
    pub changed: bool,
}

/// A parked event whose referents are known now, applied or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub event: ValidEvent,
    /// It was in the parked table.
    pub stored: bool,
    /// Its records, or why it cannot be applied after all.
    pub outcome: Result<Vec<Outgoing>, Vec<FieldViolation>>,
}

/// What ingest knows while accepting a batch; changes are tracked for persisting.
#[derive(Debug, Default)]
pub struct IngestState {
    pub reps: HashMap<String, RepState>,
    pub deals: HashMap<String, DealState>,
    pub fx: FxTable,
    pub dirty_reps: BTreeSet<String>,
    pub dirty_deals: BTreeSet<String>,
    /// Reps and deals that became known while accepting (they may release parked events).
    pub created: BTreeSet<Ref>,
    /// Parked events in hand: parked by this batch or loaded because a referent arrived.
    pub parked: Vec<Parked>,
}

impl IngestState {
    /// Whether `r` is known.
    pub fn knows(&self, r: &Ref) -> bool {
        match r {
            Ref::Rep(id) => self.reps.contains_key(id),
            Ref::Deal(id) => self.deals.contains_key(id),
        }
    }

    /// Takes `e` as it arrives: applies it, or parks it when it waits for an unknown rep or
    /// deal, then applies whatever parked events can be applied now (in business order).
    /// Returns how `e` was taken and the parked events released by it. This is the whole
    /// acceptance rule in one call; the pipeline runs the same steps against the database.
    pub fn submit(
        &mut self,
        t: &Tenant,
        e: &ValidEvent,
        recorded_at: DateTime<Utc>,
    ) -> Result<(Accepted, Vec<Released>), Vec<FieldViolation>> {
        let taken = self.accept(t, e, recorded_at)?;
        if let Accepted::Waiting(waits) = &taken {
            self.parked.push(Parked {
                event: e.clone(),
                waits: waits.clone(),
                stored: false,
                changed: false,
            });
        }
        let released = self.release(t, recorded_at);
        Ok((taken, released))
    }

    /// Applies every parked event in hand whose referents are all known, in business order
    /// (occurred at, then client id), repeating while releases make more known (a deal
    /// released by its rep releases its payments). Events still waiting stay in
    /// `self.parked` with what they still wait for.
    pub fn release(&mut self, t: &Tenant, recorded_at: DateTime<Utc>) -> Vec<Released> {
        let mut out = Vec::new();
        loop {
            let mut ready = Vec::new();
            let mut waiting = Vec::new();
            for mut p in std::mem::take(&mut self.parked) {
                let before = p.waits.len();
                p.waits.retain(|r| !self.knows(r));
                p.changed |= p.waits.len() != before;
                if p.waits.is_empty() {
                    ready.push(p);
                } else {
                    waiting.push(p);
                }
            }
            self.parked = waiting;
            if ready.is_empty() {
                return out;
            }
            ready.sort_by(|a, b| {
                (a.event.occurred_at, a.event.client_id)
                    .cmp(&(b.event.occurred_at, b.event.client_id))
            });
            for mut p in ready {
                match self.accept(t, &p.event, recorded_at) {
                    Ok(Accepted::Published(records)) => out.push(Released {
                        event: p.event,
                        stored: p.stored,
                        outcome: Ok(records),
                    }),
                    Ok(Accepted::Waiting(waits)) => {
                        p.waits = waits;
                        p.changed = true;
                        self.parked.push(p);
                    }
                    Err(v) => out.push(Released {
                        event: p.event,
                        stored: p.stored,
                        outcome: Err(v),
                    }),
                }
            }
        }
    }

    /// Accepts `e`: returns the records to publish and updates the state; or, when `e` is
    /// valid but refers to reps or deals not known yet, what it waits for (the state is
    /// untouched); or the violations, leaving the state untouched.
    pub fn accept(
        &mut self,
        t: &Tenant,
        e: &ValidEvent,
        recorded_at: DateTime<Utc>,
    ) -> Result<Accepted, Vec<FieldViolation>> {
        let mk = |parts: &[&str], payload: Out| envelope(t, e, parts, recorded_at, payload);
        let rep_ref = |rep: &str| {
            (!self.reps.contains_key(rep)).then(|| BTreeSet::from([Ref::Rep(rep.to_owned())]))
        };
        let deal_ref = |deal: &str| {
            (!self.deals.contains_key(deal)).then(|| BTreeSet::from([Ref::Deal(deal.to_owned())]))
        };
        let published = match &e.payload {
            ValidPayload::Activity(a) => {
                if let Some(w) = rep_ref(&a.rep_id) {
                    return Ok(Accepted::Waiting(w));
                }
                vec![Outgoing {
                    topic: topics::ACTIVITIES,
                    key: spm_core::kafka_key(&t.tenant_id, &a.rep_id),
                    envelope: mk(&[], Out::ActivityLogged(a.clone())),
                }]
            }
            ValidPayload::Satisfaction(s) => {
                if let Some(w) = rep_ref(&s.rep_id) {
                    return Ok(Accepted::Waiting(w));
                }
                vec![Outgoing {
                    topic: topics::ACTIVITIES,
                    key: spm_core::kafka_key(&t.tenant_id, &s.rep_id),
                    envelope: mk(&[], Out::SatisfactionRecorded(s.clone())),
                }]
            }
            ValidPayload::Deal {
                msg,
                amount,
                shares,
                payment_due_at,
            } => {
                let mut errs = Vec::new();
                let mut waits = BTreeSet::new();
                let mut unknown = Vec::new();
                for (i, (rep, _)) in shares.iter().enumerate() {
                    if !self.reps.contains_key(rep) {
                        waits.insert(Ref::Rep(rep.clone()));
                        unknown.push(FieldViolation::new(
                            format!("deal_closed.credits[{i}].rep_id"),
                            format!("unknown rep {rep:?}"),
                        ));
                    }
                }
                if let Some(d) = self.deals.get(&msg.deal_id) {
                    errs.push(FieldViolation::new(
                        "deal_closed.deal_id",
                        format!(
                            "deal {} was already closed by event {}",
                            msg.deal_id, d.closed_by
                        ),
                    ));
                }
                let (base_total, rate) =
                    match self.to_base(t, amount, e.occurred_at, "deal_closed.amount") {
                        Ok(x) => x,
                        Err(v) => {
                            errs.push(v);
                            (Decimal::ZERO, Decimal::ONE)
                        }
                    };
                if !errs.is_empty() {
                    // Bad input stays bad whatever arrives later: reject it all at once.
                    errs.extend(unknown);
                    return Err(errs);
                }
                if !waits.is_empty() {
                    return Ok(Accepted::Waiting(waits));
                }
                let weights: Vec<Decimal> = shares.iter().map(|(_, s)| *s).collect();
                let credited = allocate(amount.amount, &weights, amount.currency.unit());
                let credited_base = allocate(base_total, &weights, t.base.unit());
                let line_parts: Vec<Vec<Decimal>> = msg
                    .lines
                    .iter()
                    .map(|l| {
                        let la = l
                            .amount
                            .as_ref()
                            .map_or(Decimal::ZERO, |m| m.amount.parse().unwrap_or_default());
                        allocate(la, &weights, amount.currency.unit())
                    })
                    .collect();
                let due = payment_due_at.unwrap_or(e.occurred_at);
                let out = shares
                    .iter()
                    .enumerate()
                    .map(|(i, (rep, share))| {
                        let lines = msg
                            .lines
                            .iter()
                            .zip(&line_parts)
                            .map(|(l, parts)| ev::ProductLine {
                                product_id: l.product_id.clone(),
                                quantity: l.quantity,
                                amount: Some(money(parts[i], amount.currency)),
                            })
                            .collect();
                        Outgoing {
                            topic: topics::DEALS,
                            key: spm_core::kafka_key(&t.tenant_id, rep),
                            envelope: mk(
                                &[rep],
                                Out::DealCredited(ev::DealCredited {
                                    deal_id: msg.deal_id.clone(),
                                    rep_id: rep.clone(),
                                    customer_id: msg.customer_id.clone(),
                                    share_percent: share.normalize().to_string(),
                                    credited_amount: Some(money(credited[i], amount.currency)),
                                    credited_base_amount: Some(money(credited_base[i], t.base)),
                                    deal_amount: Some(money(amount.amount, amount.currency)),
                                    deal_base_amount: Some(money(base_total, t.base)),
                                    lines,
                                    split_count: u32::try_from(shares.len()).unwrap_or(u32::MAX),
                                    payment_due_at: Some(spm_proto::ext::timestamp(due)),
                                    name: msg.name.clone(),
                                    fx_rate: rate.normalize().to_string(),
                                }),
                            ),
                        }
                    })
                    .collect();
                self.deals.insert(
                    msg.deal_id.clone(),
                    DealState {
                        currency: amount.currency.code().to_owned(),
                        amount: amount.amount,
                        shares: shares.clone(),
                        paid: Decimal::ZERO,
                        reversed: Decimal::ZERO,
                        closed_by: e.client_id,
                    },
                );
                self.dirty_deals.insert(msg.deal_id.clone());
                self.created.insert(Ref::Deal(msg.deal_id.clone()));
                out
            }
            ValidPayload::Payment { msg, amount } => {
                if let Some(w) = deal_ref(&msg.deal_id) {
                    return Ok(Accepted::Waiting(w));
                }
                let deal = self.deals[&msg.deal_id].clone();
                if deal.currency != amount.currency.code() {
                    return Err(vec![FieldViolation::new(
                        "payment_received.amount.currency",
                        format!("must be the deal currency {}", deal.currency),
                    )]);
                }
                let outstanding = deal.amount - deal.reversed - deal.paid;
                if amount.amount > outstanding {
                    return Err(vec![FieldViolation::new(
                        "payment_received.amount.amount",
                        format!(
                            "exceeds what is outstanding on deal {} ({outstanding} {})",
                            msg.deal_id, deal.currency
                        ),
                    )]);
                }
                let (base_total, rate) = self
                    .to_base(t, amount, e.occurred_at, "payment_received.amount")
                    .map_err(|v| vec![v])?;
                let weights: Vec<Decimal> = deal.shares.iter().map(|(_, s)| *s).collect();
                let credited = allocate(amount.amount, &weights, amount.currency.unit());
                let credited_base = allocate(base_total, &weights, t.base.unit());
                let out = deal
                    .shares
                    .iter()
                    .enumerate()
                    .map(|(i, (rep, share))| Outgoing {
                        topic: topics::DEALS,
                        key: spm_core::kafka_key(&t.tenant_id, rep),
                        envelope: mk(
                            &[rep],
                            Out::PaymentCredited(ev::PaymentCredited {
                                payment_id: msg.payment_id.clone(),
                                deal_id: msg.deal_id.clone(),
                                rep_id: rep.clone(),
                                share_percent: share.normalize().to_string(),
                                credited_amount: Some(money(credited[i], amount.currency)),
                                credited_base_amount: Some(money(credited_base[i], t.base)),
                                payment_amount: Some(money(amount.amount, amount.currency)),
                                fx_rate: rate.normalize().to_string(),
                            }),
                        ),
                    })
                    .collect();
                let d = self.deals.get_mut(&msg.deal_id).expect("checked above");
                d.paid += amount.amount;
                self.dirty_deals.insert(msg.deal_id.clone());
                out
            }
            ValidPayload::Reversal { msg, amount } => {
                if let Some(w) = deal_ref(&msg.deal_id) {
                    return Ok(Accepted::Waiting(w));
                }
                let deal = self.deals[&msg.deal_id].clone();
                let currency =
                    Currency::new(&deal.currency).expect("stored deals have valid currencies");
                let remaining = deal.amount - deal.reversed;
                if remaining <= Decimal::ZERO {
                    return Err(vec![FieldViolation::new(
                        "deal_reversed.deal_id",
                        format!("deal {} is already fully reversed", msg.deal_id),
                    )]);
                }
                let amount = match amount {
                    None => Money::new(remaining, currency),
                    Some(a) if a.currency != currency => {
                        return Err(vec![FieldViolation::new(
                            "deal_reversed.amount.currency",
                            format!("must be the deal currency {}", deal.currency),
                        )]);
                    }
                    Some(a) if a.amount > remaining => {
                        return Err(vec![FieldViolation::new(
                            "deal_reversed.amount.amount",
                            format!(
                                "exceeds what is left of deal {} to reverse ({remaining} {})",
                                msg.deal_id, deal.currency
                            ),
                        )]);
                    }
                    Some(a) => *a,
                };
                let (base_total, rate) = self
                    .to_base(t, &amount, e.occurred_at, "deal_reversed.amount")
                    .map_err(|v| vec![v])?;
                let full = deal.reversed + amount.amount == deal.amount;
                let weights: Vec<Decimal> = deal.shares.iter().map(|(_, s)| *s).collect();
                let credited = allocate(amount.amount, &weights, currency.unit());
                let credited_base = allocate(base_total, &weights, t.base.unit());
                let kind =
                    ev::ReversalKind::try_from(msg.kind).unwrap_or(ev::ReversalKind::Cancellation);
                let out = deal
                    .shares
                    .iter()
                    .enumerate()
                    .map(|(i, (rep, share))| Outgoing {
                        topic: topics::DEALS,
                        key: spm_core::kafka_key(&t.tenant_id, rep),
                        envelope: mk(
                            &[rep],
                            Out::DealReversalCredited(ev::DealReversalCredited {
                                reversal_id: msg.reversal_id.clone(),
                                deal_id: msg.deal_id.clone(),
                                rep_id: rep.clone(),
                                kind: kind as i32,
                                share_percent: share.normalize().to_string(),
                                credited_amount: Some(money(credited[i], currency)),
                                credited_base_amount: Some(money(credited_base[i], t.base)),
                                full,
                                reason: msg.reason.clone(),
                                fx_rate: rate.normalize().to_string(),
                            }),
                        ),
                    })
                    .collect();
                let d = self.deals.get_mut(&msg.deal_id).expect("checked above");
                d.reversed += amount.amount;
                self.dirty_deals.insert(msg.deal_id.clone());
                out
            }
            ValidPayload::Rep(r) => {
                let previous = self
                    .reps
                    .insert(r.rep_id.clone(), RepState { active: r.active });
                if previous.is_none() {
                    self.created.insert(Ref::Rep(r.rep_id.clone()));
                }
                self.dirty_reps.insert(r.rep_id.clone());
                vec![Outgoing {
                    topic: topics::ORG,
                    key: spm_core::kafka_key(&t.tenant_id, &r.rep_id),
                    envelope: mk(&[], Out::RepUpserted(r.clone())),
                }]
            }
            ValidPayload::Team(tm) => vec![Outgoing {
                topic: topics::ORG,
                key: spm_core::kafka_key(&t.tenant_id, &format!("team:{}", tm.team_id)),
                envelope: mk(&[], Out::TeamUpserted(tm.clone())),
            }],
        };
        Ok(Accepted::Published(published))
    }

    /// The base-currency amount of `m` at the rate in force on the event's local date.
    fn to_base(
        &self,
        t: &Tenant,
        m: &Money,
        at: DateTime<Utc>,
        field: &str,
    ) -> Result<(Decimal, Decimal), FieldViolation> {
        if m.currency == t.base {
            return Ok((m.amount, Decimal::ONE));
        }
        let date = t.calendar.local_date(at);
        let rate = self.fx.rate_on(m.currency.code(), date).ok_or_else(|| {
            FieldViolation::new(
                format!("{field}.currency"),
                format!(
                    "no FX rate from {} to {} in force on {date} (set one with SetFxRate)",
                    m.currency, t.base
                ),
            )
        })?;
        Ok((t.base.round(m.amount * rate), rate))
    }
}

fn money(amount: Decimal, currency: Currency) -> common::Money {
    common::Money {
        amount: currency.round(amount).to_string(),
        currency: currency.code().to_owned(),
    }
}

/// The envelope of a record derived from client event `e`. Its id is derived from the
/// tenant, the client's id and `parts` (the credited rep), so a retry or replay publishes
/// the same ids and consumers deduplicate them; a tenant can never collide with another.
fn envelope(
    t: &Tenant,
    e: &ValidEvent,
    parts: &[&str],
    recorded_at: DateTime<Utc>,
    payload: Out,
) -> ev::EventEnvelope {
    let client = e.client_id.to_string();
    let mut id_parts = vec![t.tenant_id.as_str(), client.as_str()];
    id_parts.extend_from_slice(parts);
    ev::EventEnvelope {
        event_id: spm_core::derived_id(&id_parts).to_string(),
        tenant_id: t.tenant_id.clone(),
        occurred_at: Some(spm_proto::ext::timestamp(e.occurred_at)),
        recorded_at: Some(spm_proto::ext::timestamp(recorded_at)),
        source: e.source.clone(),
        tenant_context: Some(t.context.clone()),
        causation_id: client,
        payload: Some(payload),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use proptest::prelude::*;
    use spm_proto::ingest::v1::CrmEvent;
    use spm_testkit::events as e;

    use super::*;
    use crate::domain::{Limits, validate_event};

    fn tenant() -> Tenant {
        Tenant {
            tenant_id: "acme".into(),
            context: common::TenantContext {
                time_zone: "UTC".into(),
                fiscal_year_start_month: 1,
                base_currency: "EUR".into(),
            },
            calendar: Calendar::new("UTC", 1).unwrap(),
            base: Currency::new("EUR").unwrap(),
        }
    }

    /// One instant for the whole test run: records carry it as their recording time.
    fn now() -> DateTime<Utc> {
        static NOW: std::sync::LazyLock<DateTime<Utc>> =
            std::sync::LazyLock::new(|| chrono::SubsecRound::trunc_subsecs(Utc::now(), 0));
        *NOW
    }

    /// `hours` hours into a window that starts 60 days ago.
    fn at_day(ev: CrmEvent, hours: u32) -> CrmEvent {
        CrmEvent {
            occurred_at: Some(spm_proto::ext::timestamp(
                now() - chrono::Duration::days(60) + chrono::Duration::hours(i64::from(hours)),
            )),
            ..ev
        }
    }

    fn valid(ev: &CrmEvent) -> ValidEvent {
        validate_event(ev, now(), &Limits::default()).expect("test events are valid")
    }

    fn records(r: &[Released]) -> Vec<&Outgoing> {
        r.iter()
            .flat_map(|r| r.outcome.as_ref().expect("applied"))
            .collect()
    }

    #[test]
    fn a_payment_before_its_deal_waits_and_is_fanned_out_by_the_split_when_the_deal_arrives() {
        let t = tenant();
        let mut s = IngestState::default();
        for r in ["a", "b"] {
            s.submit(&t, &valid(&e::rep(r, "t", "")), now()).unwrap();
        }
        let pay = valid(&at_day(e::payment("p1", "d1", "100"), 2));
        let (taken, released) = s.submit(&t, &pay, now()).unwrap();
        assert_eq!(
            taken,
            Accepted::Waiting(BTreeSet::from([Ref::Deal("d1".into())]))
        );
        assert!(released.is_empty());
        assert_eq!(s.parked.len(), 1);

        let deal = valid(&at_day(
            e::deal("d1", "1000", &[("a", "60"), ("b", "40")]),
            1,
        ));
        let (taken, released) = s.submit(&t, &deal, now()).unwrap();
        assert!(matches!(taken, Accepted::Published(ref o) if o.len() == 2));
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].event.client_id, pay.client_id);
        let credited: Vec<(String, String)> = records(&released)
            .iter()
            .map(|o| match o.envelope.payload.as_ref().unwrap() {
                Out::PaymentCredited(p) => (
                    p.rep_id.clone(),
                    p.credited_amount.as_ref().unwrap().amount.clone(),
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            credited,
            vec![("a".into(), "60.00".into()), ("b".into(), "40.00".into())]
        );
        assert!(s.parked.is_empty());
        assert_eq!(s.deals["d1"].paid, Decimal::ONE_HUNDRED);
    }

    #[test]
    fn a_deal_for_unknown_reps_waits_for_all_of_them_and_releases_its_payments_in_business_order() {
        let t = tenant();
        let mut s = IngestState::default();
        let deal = valid(&at_day(
            e::deal("d1", "900", &[("a", "50"), ("b", "50")]),
            1,
        ));
        let (taken, _) = s.submit(&t, &deal, now()).unwrap();
        assert_eq!(
            taken,
            Accepted::Waiting(BTreeSet::from([Ref::Rep("a".into()), Ref::Rep("b".into())]))
        );
        // Two payments, arriving latest first.
        let p2 = valid(&at_day(e::payment("p2", "d1", "300"), 5));
        let p1 = valid(&at_day(e::payment("p1", "d1", "200"), 3));
        s.submit(&t, &p2, now()).unwrap();
        s.submit(&t, &p1, now()).unwrap();
        let (_, released) = s.submit(&t, &valid(&e::rep("a", "t", "")), now()).unwrap();
        assert!(released.is_empty(), "b is still unknown");
        let deal_waits = &s
            .parked
            .iter()
            .find(|p| p.event.client_id == deal.client_id)
            .unwrap();
        assert_eq!(deal_waits.waits, BTreeSet::from([Ref::Rep("b".into())]));

        let (_, released) = s.submit(&t, &valid(&e::rep("b", "t", "")), now()).unwrap();
        let order: Vec<Uuid> = released.iter().map(|r| r.event.client_id).collect();
        assert_eq!(order, vec![deal.client_id, p1.client_id, p2.client_id]);
        assert!(s.parked.is_empty());
    }

    #[test]
    fn bad_input_is_rejected_even_when_a_referent_is_missing() {
        let t = tenant();
        let mut s = IngestState::default();
        // USD without an FX rate: no amount of waiting fixes that.
        let deal = valid(&e::deal_in("d1", "100", "USD", &[("ghost", "100")]));
        let err = s.accept(&t, &deal, now()).unwrap_err();
        let fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "deal_closed.amount.currency",
                "deal_closed.credits[0].rep_id"
            ]
        );
        assert!(s.parked.is_empty() && s.deals.is_empty());
    }

    #[test]
    fn a_released_event_that_no_longer_fits_is_reported_not_applied() {
        let t = tenant();
        let mut s = IngestState::default();
        s.submit(&t, &valid(&e::rep("a", "t", "")), now()).unwrap();
        let pay = valid(&at_day(e::payment("p1", "d1", "500"), 2));
        s.submit(&t, &pay, now()).unwrap();
        let (_, released) = s
            .submit(
                &t,
                &valid(&at_day(e::deal("d1", "100", &[("a", "100")]), 1)),
                now(),
            )
            .unwrap();
        let err = released[0].outcome.as_ref().unwrap_err();
        assert_eq!(err[0].field, "payment_received.amount.amount");
        assert_eq!(s.deals["d1"].paid, Decimal::ZERO);
    }

    #[test]
    fn refs_round_trip_through_their_keys() {
        for r in [Ref::Rep("r-1".into()), Ref::Deal("d:2".into())] {
            assert_eq!(Ref::parse(&r.key()), Some(r));
        }
        assert_eq!(Ref::parse("team:x"), None);
        assert_eq!(Ref::parse("rep:"), None);
    }

    /// A scenario: reps, deals (some split), payments and partial reversals that fit in
    /// their deal whatever the order, activities; as client events in business order.
    fn scenario() -> impl Strategy<Value = Vec<CrmEvent>> {
        let deal = (
            0..4usize,
            prop::option::of(0..4usize),
            100u32..100_000,
            prop::collection::vec(1u32..30, 0..3),
            prop::option::of(1u32..30),
            0u32..200,
        );
        (
            prop::collection::vec(deal, 1..8),
            prop::collection::vec((0..4usize, 0u32..300), 0..6),
        )
            .prop_map(|(deals, activities)| {
                let reps = ["r0", "r1", "r2", "r3"];
                let mut out: Vec<CrmEvent> =
                    reps.iter().map(|r| at_day(e::rep(r, "t", ""), 0)).collect();
                for (i, (a, b, cents, pays, rev, day)) in deals.into_iter().enumerate() {
                    let id = format!("d{i}");
                    let amount = Decimal::new(i64::from(cents) * 100, 2);
                    let splits: Vec<(&str, &str)> = match b.filter(|b| *b != a) {
                        Some(b) => vec![(reps[a], "60"), (reps[b], "40")],
                        None => vec![(reps[a], "100")],
                    };
                    out.push(at_day(e::deal(&id, &amount.to_string(), &splits), day + 1));
                    // Payments and the reversal take fractions that sum to at most 90%.
                    for (k, pct) in pays.into_iter().enumerate() {
                        let part = (amount * Decimal::from(pct) / Decimal::ONE_HUNDRED).round_dp(2);
                        out.push(at_day(
                            e::payment(&format!("{id}-p{k}"), &id, &part.to_string()),
                            day + 2 + u32::try_from(k).unwrap(),
                        ));
                    }
                    if let Some(pct) = rev {
                        let part = (amount * Decimal::from(pct) / Decimal::ONE_HUNDRED).round_dp(2);
                        out.push(at_day(
                            e::reversal(&format!("{id}-r"), &id, Some(&part.to_string())),
                            day + 40,
                        ));
                    }
                }
                for (r, day) in activities {
                    out.push(at_day(e::activity(reps[r], ev::ActivityKind::Visit), day));
                }
                out
            })
    }

    /// What ingest publishes for `events` taken in this order, duplicates skipped as the
    /// idempotency record skips them: every record by id, and each event's outcome.
    fn run(events: &[CrmEvent]) -> (BTreeMap<String, ev::EventEnvelope>, IngestState) {
        let t = tenant();
        let mut s = IngestState::default();
        let mut seen = HashSet::new();
        let mut published = BTreeMap::new();
        for ce in events {
            let v = valid(ce);
            if !seen.insert(v.client_id) {
                continue;
            }
            let (taken, released) = s.submit(&t, &v, now()).expect("scenario events are valid");
            let mut out: Vec<Outgoing> = match taken {
                Accepted::Published(o) => o,
                Accepted::Waiting(_) => Vec::new(),
            };
            for r in released {
                out.extend(r.outcome.expect("released scenario events apply"));
            }
            for o in out {
                assert!(
                    published
                        .insert(o.envelope.event_id.clone(), o.envelope)
                        .is_none(),
                    "a record is published once"
                );
            }
        }
        (published, s)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Any arrival order (references before referents included) with redeliveries
        /// publishes exactly the records of the business-order stream, and ends with
        /// nothing parked and the same deal states.
        #[test]
        fn any_arrival_order_publishes_what_business_order_publishes(
            events in scenario(),
            keys in prop::collection::vec(any::<u32>(), 64),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let (want, want_state) = run(&events);
            let mut arrival: Vec<(u32, CrmEvent)> = events
                .iter()
                .enumerate()
                .map(|(i, ev)| (keys[i % keys.len()].wrapping_add(u32::try_from(i).unwrap()), ev.clone()))
                .collect();
            for d in &dups {
                let ev = d.get(&events).clone();
                arrival.push((keys[d.index(keys.len())], ev));
            }
            arrival.sort_by_key(|(k, _)| *k);
            let shuffled: Vec<CrmEvent> = arrival.into_iter().map(|(_, ev)| ev).collect();
            let (got, state) = run(&shuffled);
            prop_assert!(state.parked.is_empty());
            prop_assert_eq!(got.len(), want.len());
            prop_assert_eq!(&got, &want);
            let deals = |s: &IngestState| -> BTreeMap<String, (Decimal, Decimal)> {
                s.deals.iter().map(|(k, d)| (k.clone(), (d.paid, d.reversed))).collect()
            };
            prop_assert_eq!(deals(&state), deals(&want_state));
        }
    }
}
