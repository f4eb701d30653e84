//! Turning a valid event into published records, against what ingest knows: the reps, the
//! deals (their splits, payments and reversals) and the tenant's FX rates.
//!
//! A deal credited to several reps becomes one `DealCredited` per rep, keyed by that rep;
//! its payments and reversals follow the same split. Amounts are allocated with the largest
//! remainder method, so the credits of a deal sum to the deal exactly, in the deal currency
//! and in the base currency alike.

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
}

impl FxTable {
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

/// What ingest knows while accepting a batch; changes are tracked for persisting.
#[derive(Debug, Default)]
pub struct IngestState {
    pub reps: HashMap<String, RepState>,
    pub deals: HashMap<String, DealState>,
    pub fx: FxTable,
    pub dirty_reps: BTreeSet<String>,
    pub dirty_deals: BTreeSet<String>,
}

impl IngestState {
    /// Accepts `e`: returns the records to publish and updates the state, or returns the
    /// violations and leaves the state untouched.
    pub fn accept(
        &mut self,
        t: &Tenant,
        e: &ValidEvent,
        recorded_at: DateTime<Utc>,
    ) -> Result<Vec<Outgoing>, Vec<FieldViolation>> {
        let mk = |parts: &[&str], payload: Out| envelope(t, e, parts, recorded_at, payload);
        match &e.payload {
            ValidPayload::Activity(a) => {
                self.known_rep(&a.rep_id, "activity_logged.rep_id")?;
                Ok(vec![Outgoing {
                    topic: topics::ACTIVITIES,
                    key: spm_core::kafka_key(&t.tenant_id, &a.rep_id),
                    envelope: mk(&[], Out::ActivityLogged(a.clone())),
                }])
            }
            ValidPayload::Satisfaction(s) => {
                self.known_rep(&s.rep_id, "satisfaction_recorded.rep_id")?;
                Ok(vec![Outgoing {
                    topic: topics::ACTIVITIES,
                    key: spm_core::kafka_key(&t.tenant_id, &s.rep_id),
                    envelope: mk(&[], Out::SatisfactionRecorded(s.clone())),
                }])
            }
            ValidPayload::Deal {
                msg,
                amount,
                shares,
                payment_due_at,
            } => {
                let mut errs = Vec::new();
                for (i, (rep, _)) in shares.iter().enumerate() {
                    if let Err(mut v) =
                        self.known_rep(rep, &format!("deal_closed.credits[{i}].rep_id"))
                    {
                        errs.append(&mut v);
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
                    return Err(errs);
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
                Ok(out)
            }
            ValidPayload::Payment { msg, amount } => {
                let deal = self.deal(&msg.deal_id, "payment_received.deal_id")?.clone();
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
                Ok(out)
            }
            ValidPayload::Reversal { msg, amount } => {
                let deal = self.deal(&msg.deal_id, "deal_reversed.deal_id")?.clone();
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
                Ok(out)
            }
            ValidPayload::Rep(r) => {
                self.reps
                    .insert(r.rep_id.clone(), RepState { active: r.active });
                self.dirty_reps.insert(r.rep_id.clone());
                Ok(vec![Outgoing {
                    topic: topics::ORG,
                    key: spm_core::kafka_key(&t.tenant_id, &r.rep_id),
                    envelope: mk(&[], Out::RepUpserted(r.clone())),
                }])
            }
            ValidPayload::Team(tm) => Ok(vec![Outgoing {
                topic: topics::ORG,
                key: spm_core::kafka_key(&t.tenant_id, &format!("team:{}", tm.team_id)),
                envelope: mk(&[], Out::TeamUpserted(tm.clone())),
            }]),
        }
    }

    fn known_rep(&self, rep: &str, field: &str) -> Result<(), Vec<FieldViolation>> {
        if self.reps.contains_key(rep) {
            Ok(())
        } else {
            Err(vec![FieldViolation::new(
                field,
                format!("unknown rep {rep:?} (send a rep_upserted event for it first)"),
            )])
        }
    }

    fn deal(&self, deal_id: &str, field: &str) -> Result<&DealState, Vec<FieldViolation>> {
        self.deals.get(deal_id).ok_or_else(|| {
            vec![FieldViolation::new(
                field,
                format!("unknown deal {deal_id:?} (send its deal_closed event first)"),
            )]
        })
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
