//! A tenant's field mapping: which CRM fields mean what, and the pure rules that turn CRM
//! records into SPM events. A record the mapping does not cover is a [`Problem`] naming the
//! field, never a guess.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use spm_proto::common::v1::Money;
use spm_proto::events::v1 as ev;

/// A CRM record's fields by CRM field name. Numbers arrive as their decimal text (never a
/// binary float), dates as ISO text or epoch numbers.
pub type Fields = BTreeMap<String, Value>;

/// Why a record did not become an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnknownStage,
    MissingField,
    BadValue,
    UnmappedOwner,
    Schema,
    RejectedByIngest,
    Conflict,
    ChangedAfterClose,
    NotFound,
    BadPayload,
    Gap,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownStage => "unknown_stage",
            Self::MissingField => "missing_field",
            Self::BadValue => "bad_value",
            Self::UnmappedOwner => "unmapped_owner",
            Self::Schema => "schema",
            Self::RejectedByIngest => "rejected_by_ingest",
            Self::Conflict => "conflict",
            Self::ChangedAfterClose => "changed_after_close",
            Self::NotFound => "not_found",
            Self::BadPayload => "bad_payload",
            Self::Gap => "gap",
        }
    }
}

/// One record's problem: the field at fault and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }
}

/// The mapping file's shape (JSON), per tenant. See the connector README.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub deal: DealMap,
    #[serde(default)]
    pub owners: Owners,
    #[serde(default)]
    pub splits: Option<SplitMap>,
    #[serde(default)]
    pub products: Option<ProductMap>,
    #[serde(default)]
    pub payments: Vec<PaymentMap>,
    #[serde(default)]
    pub activities: Vec<ActivityMap>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealMap {
    /// The CRM object: `Opportunity` (Salesforce) or `deal` (HubSpot).
    pub object: String,
    pub stage: String,
    /// Every stage value, each in exactly one list: a value in none is an unknown stage.
    pub won_stages: Vec<String>,
    #[serde(default)]
    pub lost_stages: Vec<String>,
    #[serde(default)]
    pub open_stages: Vec<String>,
    pub amount: String,
    /// The field holding the ISO currency code (multi-currency orgs).
    #[serde(default)]
    pub currency: Option<String>,
    /// The currency when `currency` is unset or the record has none (single-currency orgs).
    #[serde(default)]
    pub default_currency: Option<String>,
    pub close_date: String,
    pub owner: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
}

/// CRM user id -> SPM rep id.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    #[serde(default)]
    pub reps: BTreeMap<String, String>,
    /// Use the CRM user id as the rep id when it is not in `reps` (the reps were upserted
    /// with CRM ids). Off by default: an unmapped owner is a problem.
    #[serde(default)]
    pub pass_through: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitMap {
    pub object: String,
    pub deal: String,
    pub owner: String,
    pub percent: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductMap {
    pub object: String,
    /// The line's deal reference (Salesforce: `OpportunityId`). HubSpot links line items
    /// to deals by association, so there it is left out.
    #[serde(default)]
    pub deal: String,
    pub product: String,
    pub quantity: String,
    pub amount: String,
}

/// A payment signal: a platform event (Salesforce) or object (HubSpot) per payment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentMap {
    pub object: String,
    pub id: String,
    pub deal: String,
    pub amount: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub default_currency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityMap {
    /// `Task`, `Event` (Salesforce), `call`, `meeting`, `email`, `task` (HubSpot).
    pub object: String,
    pub owner: String,
    /// The field whose value picks the kind through `kinds`; without it, `kind` applies.
    #[serde(default)]
    pub kind_field: Option<String>,
    #[serde(default)]
    pub kinds: BTreeMap<String, Kind>,
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default)]
    pub deal: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Visit,
    Call,
    Meeting,
    Email,
    Demo,
    ContractSigned,
    AfterSalesResolved,
    TrainingCompleted,
}

impl Kind {
    fn proto(self) -> ev::ActivityKind {
        match self {
            Self::Visit => ev::ActivityKind::Visit,
            Self::Call => ev::ActivityKind::Call,
            Self::Meeting => ev::ActivityKind::Meeting,
            Self::Email => ev::ActivityKind::Email,
            Self::Demo => ev::ActivityKind::Demo,
            Self::ContractSigned => ev::ActivityKind::ContractSigned,
            Self::AfterSalesResolved => ev::ActivityKind::AfterSalesResolved,
            Self::TrainingCompleted => ev::ActivityKind::TrainingCompleted,
        }
    }
}

/// Where a deal stands by its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Won,
    Lost,
    Open,
}

/// What the connector already submitted for a deal (kept in Postgres).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DealState {
    /// The amount and currency submitted as closed, when it was.
    pub closed: Option<(Decimal, String)>,
    pub reversed: bool,
}

/// What one change of a deal record asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum DealDecision {
    /// Submit this, then remember the new state.
    Close(ev::DealClosed, DateTime<Utc>),
    Reverse(ev::DealReversed),
    /// Nothing to send (an open deal, a lost deal never won, a change that moves nothing).
    Nothing,
}

impl Mapping {
    /// Checks the mapping itself (at start): every stage in one list, currencies known.
    pub fn check(&self) -> Result<(), String> {
        let d = &self.deal;
        let mut seen = BTreeMap::new();
        for (list, name) in [
            (&d.won_stages, "won_stages"),
            (&d.lost_stages, "lost_stages"),
            (&d.open_stages, "open_stages"),
        ] {
            for s in list {
                if let Some(other) = seen.insert(s.as_str(), name) {
                    return Err(format!("deal stage {s:?} is in both {other} and {name}"));
                }
            }
        }
        if d.won_stages.is_empty() {
            return Err("deal.won_stages is empty: no stage would close a deal".into());
        }
        if d.currency.is_none() && d.default_currency.is_none() {
            return Err("deal: set currency (a field) or default_currency".into());
        }
        for c in d.default_currency.iter().chain(
            self.payments
                .iter()
                .filter_map(|p| p.default_currency.as_ref()),
        ) {
            spm_core::money::Currency::new(c).map_err(|e| format!("default_currency: {e}"))?;
        }
        for a in &self.activities {
            if a.kind_field.is_none() && a.kind.is_none() {
                return Err(format!("activities[{}]: set kind or kind_field", a.object));
            }
        }
        Ok(())
    }

    /// The CRM fields the mapping reads from records of `object` (for schema checks and
    /// for the properties HubSpot is asked for).
    pub fn fields_of(&self, object: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let d = &self.deal;
        if d.object == object {
            out.extend([d.stage.as_str(), &d.amount, &d.close_date, &d.owner]);
            out.extend(
                [&d.currency, &d.name, &d.customer]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        if let Some(s) = self.splits.as_ref().filter(|s| s.object == object) {
            out.extend([s.deal.as_str(), &s.owner, &s.percent]);
        }
        if let Some(p) = self.products.as_ref().filter(|p| p.object == object) {
            out.extend([p.deal.as_str(), &p.product, &p.quantity, &p.amount]);
        }
        for p in self.payments.iter().filter(|p| p.object == object) {
            out.extend([p.id.as_str(), &p.deal, &p.amount]);
            out.extend(p.currency.as_deref());
        }
        for a in self.activities.iter().filter(|a| a.object == object) {
            out.push(&a.owner);
            out.extend(
                [&a.kind_field, &a.deal, &a.customer, &a.subject]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        out.retain(|f| !f.is_empty());
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn stage(&self, f: &Fields) -> Result<Stage, Problem> {
        let d = &self.deal;
        let s = text(f, &d.stage)?;
        if d.won_stages.iter().any(|x| x == s) {
            Ok(Stage::Won)
        } else if d.lost_stages.iter().any(|x| x == s) {
            Ok(Stage::Lost)
        } else if d.open_stages.iter().any(|x| x == s) {
            Ok(Stage::Open)
        } else {
            Err(Problem::new(
                &d.stage,
                Reason::UnknownStage,
                format!(
                    "stage {s:?} is in none of won_stages, lost_stages, open_stages of the mapping"
                ),
            ))
        }
    }

    pub fn rep(&self, field: &str, f: &Fields) -> Result<String, Problem> {
        let owner = text(f, field)?;
        match self.owners.reps.get(owner) {
            Some(rep) => Ok(rep.clone()),
            None if self.owners.pass_through => Ok(owner.to_owned()),
            None => Err(Problem::new(
                field,
                Reason::UnmappedOwner,
                format!("owner {owner:?} is not mapped to a rep (owners.reps)"),
            )),
        }
    }

    /// What a change of a deal record asks for, given what was submitted before. `splits`
    /// and `lines` are the deal's current split and line-item records.
    pub fn decide(
        &self,
        deal_id: &str,
        deal: &Fields,
        deleted: bool,
        before: &DealState,
        splits: &[Fields],
        lines: &[Fields],
    ) -> Result<DealDecision, Problem> {
        let stage = if deleted {
            Stage::Lost
        } else {
            self.stage(deal)?
        };
        match (stage, &before.closed) {
            (Stage::Won, None) if before.reversed => Err(Problem::new(
                &self.deal.stage,
                Reason::ChangedAfterClose,
                "won again after its close was reversed: not resubmitted; post it by hand",
            )),
            (Stage::Won, None) => {
                let (closed, at) = self.deal_closed(deal_id, deal, splits, lines)?;
                Ok(DealDecision::Close(closed, at))
            }
            (Stage::Won, Some((amount, currency))) => {
                let (now, cur) = self.deal_money(deal)?;
                if now == *amount && cur == *currency {
                    Ok(DealDecision::Nothing)
                } else {
                    Err(Problem::new(
                        &self.deal.amount,
                        Reason::ChangedAfterClose,
                        format!(
                            "the amount changed from {amount} {currency} to {now} {cur} after the deal was closed; post a reversal or adjustment"
                        ),
                    ))
                }
            }
            (Stage::Lost | Stage::Open, Some((amount, currency))) if !before.reversed => {
                Ok(DealDecision::Reverse(ev::DealReversed {
                    reversal_id: format!("{deal_id}:cancel"),
                    deal_id: deal_id.to_owned(),
                    kind: ev::ReversalKind::Cancellation as i32,
                    amount: Some(Money {
                        amount: amount.to_string(),
                        currency: currency.clone(),
                    }),
                    reason: if deleted {
                        "deleted in the CRM".into()
                    } else {
                        format!(
                            "moved to stage {:?} after closing",
                            text(deal, &self.deal.stage).unwrap_or_default()
                        )
                    },
                }))
            }
            _ => Ok(DealDecision::Nothing),
        }
    }

    fn deal_money(&self, f: &Fields) -> Result<(Decimal, String), Problem> {
        let d = &self.deal;
        let amount = decimal(f, &d.amount)?;
        let currency = currency(f, d.currency.as_deref(), d.default_currency.as_deref())?;
        Ok((amount, currency))
    }

    fn deal_closed(
        &self,
        deal_id: &str,
        f: &Fields,
        splits: &[Fields],
        lines: &[Fields],
    ) -> Result<(ev::DealClosed, DateTime<Utc>), Problem> {
        let d = &self.deal;
        let (amount, currency) = self.deal_money(f)?;
        if amount <= Decimal::ZERO {
            return Err(Problem::new(
                &d.amount,
                Reason::BadValue,
                format!("a closed-won deal needs an amount above zero, got {amount}"),
            ));
        }
        let at = date(f, &d.close_date)?;
        let mut credits = Vec::new();
        match self.splits.as_ref() {
            Some(s) if !splits.is_empty() => {
                for sp in splits {
                    let pct = decimal(sp, &s.percent)?;
                    if pct.is_zero() {
                        continue;
                    }
                    credits.push(ev::CreditSplit {
                        rep_id: self.rep(&s.owner, sp)?,
                        share_percent: pct.normalize().to_string(),
                    });
                }
            }
            _ => credits.push(ev::CreditSplit {
                rep_id: self.rep(&d.owner, f)?,
                share_percent: "100".into(),
            }),
        }
        let mut out_lines = Vec::new();
        if let Some(p) = self.products.as_ref() {
            for l in lines {
                let q = decimal(l, &p.quantity)?;
                let quantity = u32::try_from(q.trunc().mantissa())
                    .ok()
                    .filter(|_| q.fract().is_zero() && q > Decimal::ZERO)
                    .ok_or_else(|| {
                        Problem::new(
                            &p.quantity,
                            Reason::BadValue,
                            format!("quantity {q} is not a whole number of at least 1"),
                        )
                    })?;
                out_lines.push(ev::ProductLine {
                    product_id: text(l, &p.product)?.to_owned(),
                    quantity,
                    amount: Some(Money {
                        amount: decimal(l, &p.amount)?.to_string(),
                        currency: currency.clone(),
                    }),
                });
            }
        }
        let opt = |name: &Option<String>| {
            name.as_deref()
                .and_then(|n| text(f, n).ok())
                .unwrap_or_default()
                .to_owned()
        };
        Ok((
            ev::DealClosed {
                deal_id: deal_id.to_owned(),
                customer_id: opt(&d.customer),
                amount: Some(Money {
                    amount: amount.to_string(),
                    currency,
                }),
                credits,
                lines: out_lines,
                payment_due_at: None,
                name: opt(&d.name),
            },
            at,
        ))
    }

    /// A payment record of `object`, or `None` when no payment mapping is for it.
    pub fn payment(
        &self,
        object: &str,
        f: &Fields,
    ) -> Option<Result<ev::PaymentReceived, Problem>> {
        let p = self.payments.iter().find(|p| p.object == object)?;
        Some((|| {
            let amount = decimal(f, &p.amount)?;
            Ok(ev::PaymentReceived {
                payment_id: text(f, &p.id)?.to_owned(),
                deal_id: text(f, &p.deal)?.to_owned(),
                amount: Some(Money {
                    amount: amount.to_string(),
                    currency: currency(f, p.currency.as_deref(), p.default_currency.as_deref())?,
                }),
            })
        })())
    }

    /// An activity record of `object`, or `None` when no activity mapping is for it.
    pub fn activity(
        &self,
        object: &str,
        activity_id: &str,
        f: &Fields,
    ) -> Option<Result<ev::ActivityLogged, Problem>> {
        let a = self.activities.iter().find(|a| a.object == object)?;
        Some((|| {
            let kind = match &a.kind_field {
                Some(kf) => {
                    let v = text(f, kf)?;
                    match a.kinds.get(v).copied().or(a.kind) {
                        Some(k) => k,
                        None => {
                            return Err(Problem::new(
                                kf,
                                Reason::BadValue,
                                format!("activity type {v:?} is not in the mapping's kinds"),
                            ));
                        }
                    }
                }
                None => a.kind.expect("checked at start"),
            };
            let opt = |name: &Option<String>| {
                name.as_deref()
                    .and_then(|n| text(f, n).ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(ev::ActivityLogged {
                rep_id: self.rep(&a.owner, f)?,
                activity_id: activity_id.to_owned(),
                kind: kind.proto() as i32,
                customer_id: opt(&a.customer),
                deal_id: opt(&a.deal),
                subject: opt(&a.subject).chars().take(200).collect(),
            })
        })())
    }
}

/// A non-empty text field.
pub fn text<'a>(f: &'a Fields, name: &str) -> Result<&'a str, Problem> {
    match f.get(name) {
        None | Some(Value::Null) => Err(Problem::new(
            name,
            Reason::MissingField,
            format!("{name} is missing"),
        )),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.as_str()),
        Some(Value::String(_)) => Err(Problem::new(
            name,
            Reason::MissingField,
            format!("{name} is empty"),
        )),
        Some(other) => Err(Problem::new(
            name,
            Reason::BadValue,
            format!("{name} should be text, got {other}"),
        )),
    }
}

/// A decimal field, from its text (CRMs send amounts as text or as numbers, which the
/// decoders hand over as their shortest decimal text).
pub fn decimal(f: &Fields, name: &str) -> Result<Decimal, Problem> {
    let raw = match f.get(name) {
        Some(Value::Number(n)) => n.to_string(),
        _ => text(f, name)?.to_owned(),
    };
    spm_core::money::parse_decimal(raw.trim())
        .or_else(|_| raw.trim().parse::<Decimal>())
        .or_else(|_| Decimal::from_scientific(raw.trim()))
        .map(|d| d.normalize())
        .map_err(|_| {
            Problem::new(
                name,
                Reason::BadValue,
                format!("{name} is {raw:?}, not a number"),
            )
        })
}

fn currency(f: &Fields, field: Option<&str>, default: Option<&str>) -> Result<String, Problem> {
    let from_record = field.and_then(|n| text(f, n).ok());
    match (from_record, default, field) {
        (Some(c), _, Some(n)) => spm_core::money::Currency::new(c)
            .map(|c| c.code().to_owned())
            .map_err(|e| Problem::new(n, Reason::BadValue, e.to_string())),
        (None, Some(d), _) => Ok(d.to_owned()),
        (_, _, n) => Err(Problem::new(
            n.unwrap_or("currency"),
            Reason::MissingField,
            "the record has no currency and the mapping no default_currency",
        )),
    }
}

/// A close date: `YYYY-MM-DD` or days since the epoch (Avro `date`) become noon UTC of that
/// day, which is the same calendar day in every zone from UTC-11 to UTC+11; an ISO instant
/// or epoch milliseconds stay as they are.
pub fn date(f: &Fields, name: &str) -> Result<DateTime<Utc>, Problem> {
    let bad = |v: &dyn std::fmt::Display| {
        Problem::new(
            name,
            Reason::BadValue,
            format!("{name} is {v}, not a date (YYYY-MM-DD, an ISO instant or epoch ms)"),
        )
    };
    let noon = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(12, 0, 0).expect("noon"));
    match f.get(name) {
        Some(Value::Number(n)) => {
            let v = n.as_i64().ok_or_else(|| bad(n))?;
            if v.abs() < 1_000_000 {
                NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|e| e.checked_add_signed(chrono::Duration::days(v)))
                    .map(noon)
                    .ok_or_else(|| bad(n))
            } else {
                DateTime::from_timestamp_millis(v).ok_or_else(|| bad(n))
            }
        }
        _ => {
            let s = text(f, name)?;
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                Ok(noon(d))
            } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                Ok(t.with_timezone(&Utc))
            } else if let Ok(ms) = s.parse::<i64>() {
                DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(&s))
            } else {
                Err(bad(&format!("{s:?}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> Mapping {
        serde_json::from_value(json!({
            "deal": {
                "object": "Opportunity", "stage": "StageName",
                "won_stages": ["Closed Won"], "lost_stages": ["Closed Lost"],
                "open_stages": ["Prospecting", "Negotiation"],
                "amount": "Amount", "currency": "CurrencyIsoCode", "default_currency": "EUR",
                "close_date": "CloseDate", "owner": "OwnerId", "name": "Name",
                "customer": "AccountId"
            },
            "owners": {"reps": {"005A": "rep-a", "005B": "rep-b"}},
            "splits": {"object": "OpportunitySplit", "deal": "OpportunityId",
                       "owner": "SplitOwnerId", "percent": "SplitPercentage"},
            "products": {"object": "OpportunityLineItem", "deal": "OpportunityId",
                         "product": "Product2Id", "quantity": "Quantity", "amount": "TotalPrice"},
            "payments": [{"object": "Payment_Received__e", "id": "Payment_Id__c",
                          "deal": "Opportunity__c", "amount": "Amount__c", "default_currency": "EUR"}],
            "activities": [{"object": "Task", "owner": "OwnerId", "kind_field": "Type",
                            "kinds": {"Call": "call", "Email": "email"}, "deal": "WhatId",
                            "subject": "Subject"}]
        }))
        .expect("mapping parses")
    }

    fn fields(v: serde_json::Value) -> Fields {
        serde_json::from_value(v).expect("fields")
    }

    fn won() -> Fields {
        fields(
            json!({"StageName": "Closed Won", "Amount": "1200.5", "CurrencyIsoCode": "USD",
                      "CloseDate": 20_000, "OwnerId": "005A", "Name": "Big", "AccountId": "001X"}),
        )
    }

    #[test]
    fn a_won_deal_closes_once_with_its_owner_and_exact_amount() {
        let m = mapping();
        m.check().expect("valid");
        let d = m
            .decide("006", &won(), false, &DealState::default(), &[], &[])
            .expect("decides");
        let DealDecision::Close(c, at) = d else {
            panic!("expected a close, got {d:?}")
        };
        assert_eq!(c.amount.as_ref().unwrap().amount, "1200.5");
        assert_eq!(c.amount.as_ref().unwrap().currency, "USD");
        assert_eq!(c.credits.len(), 1);
        assert_eq!(c.credits[0].rep_id, "rep-a");
        assert_eq!(c.credits[0].share_percent, "100");
        assert_eq!((c.name.as_str(), c.customer_id.as_str()), ("Big", "001X"));
        // 20,000 days after the epoch, at noon UTC.
        assert_eq!(at.to_rfc3339(), "2024-10-04T12:00:00+00:00");

        let state = DealState {
            closed: Some((Decimal::new(12005, 1), "USD".into())),
            reversed: false,
        };
        assert_eq!(
            m.decide("006", &won(), false, &state, &[], &[]).unwrap(),
            DealDecision::Nothing,
            "a second change of a won deal that moves nothing sends nothing"
        );
        let mut more = won();
        more.insert("Amount".into(), json!("1300"));
        let p = m.decide("006", &more, false, &state, &[], &[]).unwrap_err();
        assert_eq!(
            (p.field.as_str(), p.reason),
            ("Amount", Reason::ChangedAfterClose)
        );
    }

    #[test]
    fn splits_and_lines_come_from_their_records() {
        let m = mapping();
        let splits = [
            fields(
                json!({"OpportunityId": "006", "SplitOwnerId": "005A", "SplitPercentage": 60.0}),
            ),
            fields(
                json!({"OpportunityId": "006", "SplitOwnerId": "005B", "SplitPercentage": "40"}),
            ),
        ];
        let lines = [fields(
            json!({"OpportunityId": "006", "Product2Id": "01t1", "Quantity": "2", "TotalPrice": "1200.50"}),
        )];
        let DealDecision::Close(c, _) = m
            .decide("006", &won(), false, &DealState::default(), &splits, &lines)
            .unwrap()
        else {
            panic!("close")
        };
        let credits: Vec<_> = c
            .credits
            .iter()
            .map(|s| (s.rep_id.as_str(), s.share_percent.as_str()))
            .collect();
        assert_eq!(credits, [("rep-a", "60"), ("rep-b", "40")]);
        assert_eq!(c.lines[0].quantity, 2);
        assert_eq!(c.lines[0].amount.as_ref().unwrap().amount, "1200.5");
    }

    #[test]
    fn mapping_mistakes_name_the_field_and_are_never_guessed() {
        let m = mapping();
        let none = DealState::default();
        let mut f = won();
        f.insert("StageName".into(), json!("Verbal Yes"));
        let p = m.decide("006", &f, false, &none, &[], &[]).unwrap_err();
        assert_eq!(
            (p.field.as_str(), p.reason),
            ("StageName", Reason::UnknownStage)
        );
        assert!(p.message.contains("Verbal Yes"), "{}", p.message);

        let mut f = won();
        f.remove("Amount");
        let p = m.decide("006", &f, false, &none, &[], &[]).unwrap_err();
        assert_eq!(
            (p.field.as_str(), p.reason),
            ("Amount", Reason::MissingField)
        );

        let mut f = won();
        f.insert("Amount".into(), json!("12,00"));
        let p = m.decide("006", &f, false, &none, &[], &[]).unwrap_err();
        assert_eq!((p.field.as_str(), p.reason), ("Amount", Reason::BadValue));

        let mut f = won();
        f.insert("OwnerId".into(), json!("005Z"));
        let p = m.decide("006", &f, false, &none, &[], &[]).unwrap_err();
        assert_eq!(
            (p.field.as_str(), p.reason),
            ("OwnerId", Reason::UnmappedOwner)
        );

        let mut f = won();
        f.insert("CurrencyIsoCode".into(), json!("XYZ"));
        let p = m.decide("006", &f, false, &none, &[], &[]).unwrap_err();
        assert_eq!(
            (p.field.as_str(), p.reason),
            ("CurrencyIsoCode", Reason::BadValue)
        );

        // An open deal with no amount yet is fine: nothing is sent for it.
        let f = fields(json!({"StageName": "Prospecting"}));
        assert_eq!(
            m.decide("006", &f, false, &none, &[], &[]).unwrap(),
            DealDecision::Nothing
        );
    }

    #[test]
    fn a_won_deal_lost_reopened_or_deleted_is_reversed_in_full_once() {
        let m = mapping();
        let closed = DealState {
            closed: Some((Decimal::new(12005, 1), "USD".into())),
            reversed: false,
        };
        let lost = fields(json!({"StageName": "Closed Lost"}));
        let DealDecision::Reverse(r) = m.decide("006", &lost, false, &closed, &[], &[]).unwrap()
        else {
            panic!("reverse")
        };
        assert_eq!(r.kind, ev::ReversalKind::Cancellation as i32);
        assert_eq!(r.amount.unwrap().amount, "1200.5");
        let DealDecision::Reverse(_) = m
            .decide("006", &Fields::new(), true, &closed, &[], &[])
            .unwrap()
        else {
            panic!("a deleted won deal is reversed")
        };
        let done = DealState {
            reversed: true,
            ..closed
        };
        assert_eq!(
            m.decide("006", &lost, false, &done, &[], &[]).unwrap(),
            DealDecision::Nothing
        );
        let again = DealState {
            closed: None,
            reversed: true,
        };
        let p = m
            .decide("006", &won(), false, &again, &[], &[])
            .unwrap_err();
        assert_eq!(p.reason, Reason::ChangedAfterClose);
    }

    #[test]
    fn payments_and_activities_map_by_object() {
        let m = mapping();
        let p = m
            .payment(
                "Payment_Received__e",
                &fields(
                    json!({"Payment_Id__c": "P1", "Opportunity__c": "006", "Amount__c": 99.95}),
                ),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            p.amount.unwrap(),
            Money {
                amount: "99.95".into(),
                currency: "EUR".into()
            }
        );
        assert!(m.payment("Other__e", &Fields::new()).is_none());

        let a = m
            .activity(
                "Task",
                "00T1",
                &fields(
                    json!({"OwnerId": "005B", "Type": "Call", "WhatId": "006", "Subject": "Intro"}),
                ),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.rep_id.as_str(), a.kind),
            ("rep-b", ev::ActivityKind::Call as i32)
        );
        let bad = m
            .activity(
                "Task",
                "00T2",
                &fields(json!({"OwnerId": "005B", "Type": "Fax"})),
            )
            .unwrap()
            .unwrap_err();
        assert_eq!((bad.field.as_str(), bad.reason), ("Type", Reason::BadValue));
    }

    #[test]
    fn a_mapping_with_a_stage_in_two_lists_is_refused() {
        let mut m = mapping();
        m.deal.lost_stages.push("Closed Won".into());
        assert!(m.check().unwrap_err().contains("Closed Won"));
    }

    #[test]
    fn fields_of_lists_what_the_mapping_reads() {
        let m = mapping();
        let f = m.fields_of("Opportunity");
        assert!(f.contains(&"StageName") && f.contains(&"Amount") && f.contains(&"OwnerId"));
        assert_eq!(
            m.fields_of("OpportunitySplit"),
            ["OpportunityId", "SplitOwnerId", "SplitPercentage"]
        );
    }
}
