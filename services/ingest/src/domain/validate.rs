//! Stateless validation of a client's CRM event, with field-level violations.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use spm_core::money::{self, Money};
use spm_core::validation::{FieldViolation, Violations};
use spm_proto::events::v1 as ev;
use spm_proto::ingest::v1::CrmEvent;
use spm_proto::ingest::v1::crm_event::Payload;
use uuid::Uuid;

/// Bounds on what ingest accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far in the future `occurred_at` may be (clock skew).
    pub max_future: Duration,
    /// How far in the past `occurred_at` may be.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_future: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

pub const MAX_ID: usize = 128;
pub const MAX_SOURCE: usize = 100;
pub const MAX_SUBJECT: usize = 1000;
pub const MAX_NAME: usize = 200;
pub const MAX_CREDITS: usize = 20;
pub const MAX_LINES: usize = 200;

/// A structurally valid event with its parsed values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub client_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub payload: ValidPayload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValidPayload {
    Activity(ev::ActivityLogged),
    Satisfaction(ev::SatisfactionRecorded),
    Deal {
        msg: ev::DealClosed,
        amount: Money,
        /// (rep, share percent), in the client's order.
        shares: Vec<(String, Decimal)>,
        payment_due_at: Option<DateTime<Utc>>,
    },
    Payment {
        msg: ev::PaymentReceived,
        amount: Money,
    },
    Reversal {
        msg: ev::DealReversed,
        /// `None` reverses whatever of the deal is not reversed yet.
        amount: Option<Money>,
    },
    Rep(ev::RepUpserted),
    Team(ev::TeamUpserted),
}

impl ValidPayload {
    /// The reps this event needs to know (an unknown one parks the event).
    pub fn reps(&self) -> Vec<&str> {
        match self {
            Self::Activity(a) => vec![a.rep_id.as_str()],
            Self::Satisfaction(s) => vec![s.rep_id.as_str()],
            Self::Deal { shares, .. } => shares.iter().map(|(r, _)| r.as_str()).collect(),
            _ => vec![],
        }
    }

    /// The event's kind, as its payload field is named.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Activity(_) => "activity_logged",
            Self::Satisfaction(_) => "satisfaction_recorded",
            Self::Deal { .. } => "deal_closed",
            Self::Payment { .. } => "payment_received",
            Self::Reversal { .. } => "deal_reversed",
            Self::Rep(_) => "rep_upserted",
            Self::Team(_) => "team_upserted",
        }
    }

    /// The deal this event refers to.
    pub fn deal_id(&self) -> Option<&str> {
        match self {
            Self::Deal { msg, .. } => Some(&msg.deal_id),
            Self::Payment { msg, .. } => Some(&msg.deal_id),
            Self::Reversal { msg, .. } => Some(&msg.deal_id),
            _ => None,
        }
    }

    /// Currencies whose FX rates this event needs.
    pub fn currency(&self) -> Option<&str> {
        match self {
            Self::Deal { amount, .. } | Self::Payment { amount, .. } => {
                Some(amount.currency.code())
            }
            Self::Reversal {
                amount: Some(a), ..
            } => Some(a.currency.code()),
            _ => None,
        }
    }
}

/// Checks everything that can be checked without state. Field paths are relative to the
/// event ("deal_closed.amount.currency").
pub fn validate_event(
    e: &CrmEvent,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<ValidEvent, Vec<FieldViolation>> {
    let mut v = Violations::new();
    let client_id = if e.event_id.is_empty() {
        v.add("event_id", "is required");
        None
    } else {
        match Uuid::try_parse(&e.event_id) {
            Ok(id) if !id.is_nil() => Some(id),
            _ => {
                v.add(
                    "event_id",
                    "must be a UUID (e.g. 0b8f9c3e-6f1a-4c2b-9d7e-2a4b5c6d7e8f)",
                );
                None
            }
        }
    };
    let occurred_at = match e.occurred_at.as_ref() {
        None => {
            v.add("occurred_at", "is required");
            None
        }
        Some(ts) => match spm_proto::ext::datetime(ts) {
            None => {
                v.add("occurred_at", "is not a valid timestamp");
                None
            }
            Some(t)
                if t > now + chrono::Duration::from_std(limits.max_future).unwrap_or_default() =>
            {
                v.add(
                    "occurred_at",
                    format!(
                        "is more than {} s in the future",
                        limits.max_future.as_secs()
                    ),
                );
                None
            }
            Some(t) if t < now - chrono::Duration::from_std(limits.max_age).unwrap_or_default() => {
                v.add(
                    "occurred_at",
                    format!(
                        "is older than the {}-day horizon",
                        limits.max_age.as_secs() / 86_400
                    ),
                );
                None
            }
            Some(t) => Some(t),
        },
    };
    v.text("source", &e.source, MAX_SOURCE);

    let payload = match &e.payload {
        None => {
            v.add(
                "payload",
                "one of activity_logged, satisfaction_recorded, deal_closed, payment_received, deal_reversed, rep_upserted, team_upserted is required",
            );
            None
        }
        Some(p) => payload(p, &mut v),
    };
    match (client_id, occurred_at, payload) {
        (Some(client_id), Some(occurred_at), Some(payload)) if v.is_empty() => Ok(ValidEvent {
            client_id,
            occurred_at,
            source: e.source.clone(),
            payload,
        }),
        _ => Err(v.0),
    }
}

fn payload(p: &Payload, v: &mut Violations) -> Option<ValidPayload> {
    match p {
        Payload::ActivityLogged(a) => {
            let f = "activity_logged";
            v.id((f, "rep_id"), &a.rep_id, MAX_ID);
            v.id((f, "activity_id"), &a.activity_id, MAX_ID);
            if !matches!(ev::ActivityKind::try_from(a.kind), Ok(k) if k != ev::ActivityKind::Unspecified)
            {
                v.add(
                    format!("{f}.kind"),
                    "must be one of VISIT, CALL, MEETING, EMAIL, DEMO, CONTRACT_SIGNED, AFTER_SALES_RESOLVED, TRAINING_COMPLETED",
                );
            }
            v.optional_id((f, "customer_id"), &a.customer_id, MAX_ID);
            v.optional_id((f, "deal_id"), &a.deal_id, MAX_ID);
            v.text((f, "subject"), &a.subject, MAX_SUBJECT);
            Some(ValidPayload::Activity(a.clone()))
        }
        Payload::SatisfactionRecorded(s) => {
            let f = "satisfaction_recorded";
            v.id((f, "rep_id"), &s.rep_id, MAX_ID);
            v.id((f, "survey_id"), &s.survey_id, MAX_ID);
            v.optional_id((f, "customer_id"), &s.customer_id, MAX_ID);
            match ev::SurveyKind::try_from(s.kind) {
                Ok(ev::SurveyKind::Csat) if !(1..=5).contains(&s.score) => {
                    v.add(format!("{f}.score"), "must be 1..=5 for a CSAT survey");
                }
                Ok(ev::SurveyKind::Nps) if s.score > 10 => {
                    v.add(format!("{f}.score"), "must be 0..=10 for an NPS survey");
                }
                Ok(ev::SurveyKind::Csat | ev::SurveyKind::Nps) => {}
                _ => v.add(format!("{f}.kind"), "must be CSAT or NPS"),
            }
            Some(ValidPayload::Satisfaction(s.clone()))
        }
        Payload::DealClosed(d) => deal(d, v),
        Payload::PaymentReceived(pm) => {
            let f = "payment_received";
            v.id((f, "payment_id"), &pm.payment_id, MAX_ID);
            v.id((f, "deal_id"), &pm.deal_id, MAX_ID);
            let amount = money_field(
                v,
                &format!("{f}.amount"),
                pm.amount.as_ref(),
                Sign::Positive,
            )?;
            Some(ValidPayload::Payment {
                msg: pm.clone(),
                amount,
            })
        }
        Payload::DealReversed(r) => {
            let f = "deal_reversed";
            v.id((f, "reversal_id"), &r.reversal_id, MAX_ID);
            v.id((f, "deal_id"), &r.deal_id, MAX_ID);
            if !matches!(ev::ReversalKind::try_from(r.kind), Ok(k) if k != ev::ReversalKind::Unspecified)
            {
                v.add(format!("{f}.kind"), "must be CANCELLATION or REFUND");
            }
            v.text((f, "reason"), &r.reason, MAX_SUBJECT);
            let amount = match r.amount.as_ref() {
                None => None,
                Some(m) => Some(money_field(
                    v,
                    &format!("{f}.amount"),
                    Some(m),
                    Sign::Positive,
                )?),
            };
            Some(ValidPayload::Reversal {
                msg: r.clone(),
                amount,
            })
        }
        Payload::RepUpserted(r) => {
            let f = "rep_upserted";
            v.id((f, "rep_id"), &r.rep_id, MAX_ID);
            v.text((f, "display_name"), &r.display_name, MAX_NAME);
            if !r.email.is_empty() && !plausible_email(&r.email) {
                v.add(format!("{f}.email"), "is not an e-mail address");
            }
            v.optional_id((f, "team_id"), &r.team_id, MAX_ID);
            v.optional_id((f, "manager_id"), &r.manager_id, MAX_ID);
            if !r.manager_id.is_empty() && r.manager_id == r.rep_id {
                v.add(format!("{f}.manager_id"), "a rep cannot be its own manager");
            }
            v.text((f, "role"), &r.role, 50);
            v.text((f, "territory"), &r.territory, 100);
            v.text((f, "login"), &r.login, 320);
            if r.login.trim() != r.login {
                v.add(
                    format!("{f}.login"),
                    "must not start or end with white space",
                );
            }
            Some(ValidPayload::Rep(r.clone()))
        }
        Payload::TeamUpserted(t) => {
            let f = "team_upserted";
            v.id((f, "team_id"), &t.team_id, MAX_ID);
            if t.name.is_empty() {
                v.add(format!("{f}.name"), "is required");
            }
            v.text((f, "name"), &t.name, MAX_NAME);
            v.optional_id((f, "parent_team_id"), &t.parent_team_id, MAX_ID);
            if !t.parent_team_id.is_empty() && t.parent_team_id == t.team_id {
                v.add(
                    format!("{f}.parent_team_id"),
                    "a team cannot be its own parent",
                );
            }
            v.optional_id((f, "manager_id"), &t.manager_id, MAX_ID);
            Some(ValidPayload::Team(t.clone()))
        }
    }
}

fn deal(d: &ev::DealClosed, v: &mut Violations) -> Option<ValidPayload> {
    let f = "deal_closed";
    v.id((f, "deal_id"), &d.deal_id, MAX_ID);
    v.optional_id((f, "customer_id"), &d.customer_id, MAX_ID);
    v.text((f, "name"), &d.name, MAX_NAME);
    let amount = money_field(v, &format!("{f}.amount"), d.amount.as_ref(), Sign::Positive);

    let mut shares = Vec::new();
    if d.credits.is_empty() {
        v.add(
            format!("{f}.credits"),
            "at least one credited rep is required",
        );
    } else if d.credits.len() > MAX_CREDITS {
        v.add(
            format!("{f}.credits"),
            format!("at most {MAX_CREDITS} credited reps"),
        );
    } else {
        let mut seen = HashSet::new();
        let mut total = Decimal::ZERO;
        let mut all_ok = true;
        for (i, c) in d.credits.iter().enumerate() {
            let cf = format!("{f}.credits[{i}]");
            if v.id((cf.as_str(), "rep_id"), &c.rep_id, MAX_ID) && !seen.insert(c.rep_id.as_str()) {
                v.add(format!("{cf}.rep_id"), "is credited twice");
                all_ok = false;
            }
            match money::parse_decimal(&c.share_percent) {
                Ok(s) if s > Decimal::ZERO && s <= Decimal::ONE_HUNDRED && s.scale() <= 4 => {
                    total += s;
                    shares.push((c.rep_id.clone(), s));
                }
                Ok(_) => {
                    v.add(
                        format!("{cf}.share_percent"),
                        "must be in (0, 100] with at most 4 decimals",
                    );
                    all_ok = false;
                }
                Err(e) => {
                    v.add(format!("{cf}.share_percent"), e.to_string());
                    all_ok = false;
                }
            }
        }
        if all_ok && total != Decimal::ONE_HUNDRED {
            v.add(
                format!("{f}.credits"),
                format!("shares must sum to 100, got {total}"),
            );
        }
    }

    if d.lines.len() > MAX_LINES {
        v.add(
            format!("{f}.lines"),
            format!("at most {MAX_LINES} product lines"),
        );
    } else if let Some(amount) = amount.as_ref() {
        let mut sum = Decimal::ZERO;
        let mut all_ok = true;
        for (i, l) in d.lines.iter().enumerate() {
            let lf = format!("{f}.lines[{i}]");
            v.id((lf.as_str(), "product_id"), &l.product_id, MAX_ID);
            if l.quantity == 0 {
                v.add(format!("{lf}.quantity"), "must be at least 1");
            }
            match money_field(
                v,
                &format!("{lf}.amount"),
                l.amount.as_ref(),
                Sign::NonNegative,
            ) {
                Some(m) if m.currency == amount.currency => sum += m.amount,
                Some(_) => {
                    v.add(
                        format!("{lf}.amount.currency"),
                        format!("must be the deal currency {}", amount.currency),
                    );
                    all_ok = false;
                }
                None => all_ok = false,
            }
        }
        if all_ok && !d.lines.is_empty() && sum != amount.amount {
            v.add(
                format!("{f}.lines"),
                format!(
                    "line amounts sum to {sum}, the deal amount is {}",
                    amount.amount
                ),
            );
        }
    }

    let payment_due_at = match d.payment_due_at.as_ref() {
        None => None,
        Some(ts) => match spm_proto::ext::datetime(ts) {
            Some(t) => Some(t),
            None => {
                v.add(format!("{f}.payment_due_at"), "is not a valid timestamp");
                None
            }
        },
    };
    Some(ValidPayload::Deal {
        msg: d.clone(),
        amount: amount?,
        shares,
        payment_due_at,
    })
}

#[derive(Clone, Copy)]
enum Sign {
    Positive,
    NonNegative,
}

fn money_field(
    v: &mut Violations,
    field: &str,
    m: Option<&spm_proto::common::v1::Money>,
    sign: Sign,
) -> Option<Money> {
    let Some(m) = m else {
        v.add(field, "is required");
        return None;
    };
    if m.currency.is_empty() {
        v.add(format!("{field}.currency"), "is required");
        return None;
    }
    match Money::parse(&m.amount, &m.currency) {
        Ok(x) => {
            let ok = match sign {
                Sign::Positive => x.amount > Decimal::ZERO,
                Sign::NonNegative => !x.amount.is_sign_negative() || x.amount.is_zero(),
            };
            if ok {
                Some(x)
            } else {
                let what = match sign {
                    Sign::Positive => "must be greater than zero",
                    Sign::NonNegative => "must not be negative",
                };
                v.add(format!("{field}.amount"), what);
                None
            }
        }
        Err(e @ money::Error::UnknownCurrency(_)) => {
            v.add(format!("{field}.currency"), e.to_string());
            None
        }
        Err(e) => {
            v.add(format!("{field}.amount"), e.to_string());
            None
        }
    }
}

fn plausible_email(s: &str) -> bool {
    s.len() <= 254
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !s.chars().any(char::is_whitespace)
}
