//! CRM event builders for tests and the demo.

use chrono::{DateTime, Utc};
use spm_proto::common::v1::Money;
use spm_proto::events::v1 as ev;
use spm_proto::ingest::v1::CrmEvent;
use spm_proto::ingest::v1::crm_event::Payload;
use uuid::Uuid;

pub fn money(amount: &str, currency: &str) -> Money {
    Money {
        amount: amount.to_owned(),
        currency: currency.to_owned(),
    }
}

/// An event with a fresh id, occurring now.
pub fn event(payload: Payload) -> CrmEvent {
    event_at(payload, Utc::now())
}

pub fn event_at(payload: Payload, at: DateTime<Utc>) -> CrmEvent {
    CrmEvent {
        event_id: Uuid::new_v4().to_string(),
        occurred_at: Some(spm_proto::ext::timestamp(at)),
        source: "test".into(),
        payload: Some(payload),
    }
}

pub fn rep(rep_id: &str, team: &str, manager: &str) -> CrmEvent {
    event(Payload::RepUpserted(ev::RepUpserted {
        rep_id: rep_id.into(),
        display_name: format!("Rep {rep_id}"),
        email: format!("{rep_id}@example.com"),
        team_id: team.into(),
        manager_id: manager.into(),
        role: "ae".into(),
        territory: "north".into(),
        active: true,
        login: String::new(),
    }))
}

pub fn team(team_id: &str, parent: &str, manager: &str) -> CrmEvent {
    event(Payload::TeamUpserted(ev::TeamUpserted {
        team_id: team_id.into(),
        name: format!("Team {team_id}"),
        parent_team_id: parent.into(),
        manager_id: manager.into(),
    }))
}

/// A deal of `amount` EUR credited to `splits` (rep, percent).
pub fn deal(deal_id: &str, amount: &str, splits: &[(&str, &str)]) -> CrmEvent {
    deal_in(deal_id, amount, "EUR", splits)
}

pub fn deal_in(deal_id: &str, amount: &str, currency: &str, splits: &[(&str, &str)]) -> CrmEvent {
    event(Payload::DealClosed(ev::DealClosed {
        deal_id: deal_id.into(),
        customer_id: format!("cust-{deal_id}"),
        amount: Some(money(amount, currency)),
        credits: splits
            .iter()
            .map(|(r, s)| ev::CreditSplit {
                rep_id: (*r).into(),
                share_percent: (*s).into(),
            })
            .collect(),
        lines: vec![],
        payment_due_at: None,
        name: format!("Deal {deal_id}"),
    }))
}

pub fn payment(payment_id: &str, deal_id: &str, amount: &str) -> CrmEvent {
    event(Payload::PaymentReceived(ev::PaymentReceived {
        payment_id: payment_id.into(),
        deal_id: deal_id.into(),
        amount: Some(money(amount, "EUR")),
    }))
}

pub fn reversal(reversal_id: &str, deal_id: &str, amount: Option<&str>) -> CrmEvent {
    event(Payload::DealReversed(ev::DealReversed {
        reversal_id: reversal_id.into(),
        deal_id: deal_id.into(),
        kind: ev::ReversalKind::Refund as i32,
        amount: amount.map(|a| money(a, "EUR")),
        reason: "customer refund".into(),
    }))
}

pub fn activity(rep_id: &str, kind: ev::ActivityKind) -> CrmEvent {
    event(Payload::ActivityLogged(ev::ActivityLogged {
        rep_id: rep_id.into(),
        activity_id: Uuid::new_v4().to_string(),
        kind: kind as i32,
        customer_id: "cust-1".into(),
        deal_id: String::new(),
        subject: "visit".into(),
    }))
}

pub fn csat(rep_id: &str, score: u32) -> CrmEvent {
    event(Payload::SatisfactionRecorded(ev::SatisfactionRecorded {
        rep_id: rep_id.into(),
        survey_id: Uuid::new_v4().to_string(),
        kind: ev::SurveyKind::Csat as i32,
        score,
        customer_id: "cust-1".into(),
    }))
}
