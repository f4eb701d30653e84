//! A realistic synthetic tenant: teams with managers, reps of varying skill, and `days` of
//! visits, calls, meetings, e-mails, demos, contracts, after-sales tickets, trainings, CSAT
//! surveys, deals (some split, some in USD, with product lines), partial payments and a few
//! reversals. Deterministic for a seed.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use spm_proto::events::v1 as ev;
use spm_proto::ingest::v1::CrmEvent;
use spm_proto::ingest::v1::crm_event::Payload;
use uuid::Uuid;

use crate::events::money;

/// The generated data and what it adds up to.
pub struct Demo {
    pub teams: Vec<(String, String)>,
    /// (rep, team, manager, skill)
    pub reps: Vec<(String, String, String, f64)>,
    /// Org events first, then CRM events in time order.
    pub events: Vec<CrmEvent>,
    pub deals: usize,
    pub payments: usize,
    pub reversals: usize,
    pub activities: usize,
    pub surveys: usize,
    /// Client event ids of deals, for tracing one.
    pub deal_event_ids: Vec<String>,
    /// Visits logged (to know when scoring has seen everything).
    pub visits: usize,
    /// Deal credits (one per credited rep) and credits of fully reversed deals.
    pub deal_credits: usize,
    pub reversed_credits: usize,
}

const PRODUCTS: [&str; 4] = ["platform", "analytics", "support", "training"];
const NAMES: [&str; 12] = [
    "Li Wei",
    "Ana Souza",
    "Tom Berg",
    "Mei Chen",
    "Omar Haddad",
    "Sara Costa",
    "Jonas Weber",
    "Yuki Sato",
    "Priya Nair",
    "Lucas Martin",
    "Zhang Min",
    "Eva Novak",
];

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(spm_proto::ext::timestamp(at))
}

fn ev_at(id: Uuid, at: DateTime<Utc>, p: Payload) -> CrmEvent {
    CrmEvent {
        event_id: id.to_string(),
        occurred_at: ts(at),
        source: "demo-crm".into(),
        payload: Some(p),
    }
}

/// Generates `reps_per_team` reps in each of `teams` teams over the `days` days before `now`.
#[allow(
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub fn generate(
    seed: u64,
    teams: usize,
    reps_per_team: usize,
    days: i64,
    now: DateTime<Utc>,
) -> Demo {
    let mut rng = StdRng::seed_from_u64(seed);
    let counter = std::cell::Cell::new(0u128);
    let id = || {
        counter.set(counter.get() + 1);
        uuid::Builder::from_random_bytes((rng_u128(seed) | counter.get()).to_be_bytes()).into_uuid()
    };
    let mut d = Demo {
        teams: Vec::new(),
        reps: Vec::new(),
        events: Vec::new(),
        deals: 0,
        payments: 0,
        reversals: 0,
        activities: 0,
        surveys: 0,
        deal_event_ids: Vec::new(),
        visits: 0,
        deal_credits: 0,
        reversed_credits: 0,
    };
    let org_time = now - Duration::days(days + 1);
    let names = ["north", "south", "east", "west", "central"];
    d.events.push(ev_at(
        id(),
        org_time,
        Payload::RepUpserted(ev::RepUpserted {
            rep_id: "vp-sales".into(),
            display_name: "Helen Ma (VP Sales)".into(),
            email: "vp@demo.example".into(),
            team_id: "sales".into(),
            manager_id: String::new(),
            role: "manager".into(),
            territory: "all".into(),
            active: true,
            login: String::new(),
        }),
    ));
    d.events.push(ev_at(
        id(),
        org_time,
        Payload::TeamUpserted(ev::TeamUpserted {
            team_id: "sales".into(),
            name: "Sales".into(),
            parent_team_id: String::new(),
            manager_id: "vp-sales".into(),
        }),
    ));
    for t in 0..teams {
        let team = names[t % names.len()].to_owned();
        let manager = format!("mgr-{team}");
        d.teams.push((team.clone(), manager.clone()));
        d.events.push(ev_at(
            id(),
            org_time,
            Payload::RepUpserted(ev::RepUpserted {
                rep_id: manager.clone(),
                display_name: format!("Manager {team}"),
                email: format!("{manager}@demo.example"),
                team_id: team.clone(),
                manager_id: "vp-sales".into(),
                role: "manager".into(),
                territory: team.clone(),
                active: true,
                login: String::new(),
            }),
        ));
        d.events.push(ev_at(
            id(),
            org_time,
            Payload::TeamUpserted(ev::TeamUpserted {
                team_id: team.clone(),
                name: format!("Team {team}"),
                parent_team_id: "sales".into(),
                manager_id: manager.clone(),
            }),
        ));
        for r in 0..reps_per_team {
            let rep = format!("{team}-{:02}", r + 1);
            let skill = rng.random_range(0.5..1.6);
            let name = format!("{} {}", NAMES[(t * reps_per_team + r) % NAMES.len()], r + 1);
            d.events.push(ev_at(
                id(),
                org_time,
                Payload::RepUpserted(ev::RepUpserted {
                    rep_id: rep.clone(),
                    display_name: name,
                    email: format!("{rep}@demo.example"),
                    team_id: team.clone(),
                    manager_id: manager.clone(),
                    role: "ae".into(),
                    territory: team.clone(),
                    active: true,
                    login: String::new(),
                }),
            ));
            d.reps.push((rep, team.clone(), manager.clone(), skill));
        }
    }

    let mut timed: Vec<(DateTime<Utc>, CrmEvent)> = Vec::new();
    let start = now - Duration::days(days);
    let mut deal_no = 0;
    for (ri, (rep, _team, _m, skill)) in d.reps.clone().iter().enumerate() {
        for day in 0..days {
            let day_start = start + Duration::days(day);
            let at =
                |rng: &mut StdRng| day_start + Duration::minutes(rng.random_range(8 * 60..18 * 60));
            let act = |rng: &mut StdRng, kind: ev::ActivityKind, p: f64, max: u32| {
                let mut out = Vec::new();
                for _ in 0..max {
                    if rng.random_bool((p * skill).min(0.95)) {
                        let t = at(rng);
                        if t < now {
                            out.push((t, kind));
                        }
                    }
                }
                out
            };
            let mut acts = Vec::new();
            acts.extend(act(&mut rng, ev::ActivityKind::Visit, 0.35, 3));
            acts.extend(act(&mut rng, ev::ActivityKind::Call, 0.5, 4));
            acts.extend(act(&mut rng, ev::ActivityKind::Meeting, 0.3, 2));
            acts.extend(act(&mut rng, ev::ActivityKind::Email, 0.5, 5));
            acts.extend(act(&mut rng, ev::ActivityKind::Demo, 0.15, 1));
            acts.extend(act(&mut rng, ev::ActivityKind::AfterSalesResolved, 0.2, 1));
            acts.extend(act(&mut rng, ev::ActivityKind::TrainingCompleted, 0.03, 1));
            for (t, kind) in acts {
                d.activities += 1;
                if kind == ev::ActivityKind::Visit {
                    d.visits += 1;
                }
                timed.push((
                    t,
                    ev_at(
                        id(),
                        t,
                        Payload::ActivityLogged(ev::ActivityLogged {
                            rep_id: rep.clone(),
                            activity_id: format!("act-{}", id().simple()),
                            kind: kind as i32,
                            customer_id: format!("cust-{}", rng.random_range(1..400)),
                            deal_id: String::new(),
                            subject: String::new(),
                        }),
                    ),
                ));
            }
            // A CSAT survey about twice a week.
            if rng.random_bool(0.3) {
                let t = at(&mut rng);
                if t < now {
                    let score = if rng.random_bool((0.55 * skill).min(0.95)) {
                        5
                    } else {
                        rng.random_range(2..=4)
                    };
                    d.surveys += 1;
                    timed.push((
                        t,
                        ev_at(
                            id(),
                            t,
                            Payload::SatisfactionRecorded(ev::SatisfactionRecorded {
                                rep_id: rep.clone(),
                                survey_id: format!("srv-{}", id().simple()),
                                kind: ev::SurveyKind::Csat as i32,
                                score,
                                customer_id: format!("cust-{}", rng.random_range(1..400)),
                            }),
                        ),
                    ));
                }
            }
            // Deals.
            if rng.random_bool((0.12 * skill).min(0.9)) {
                let t = at(&mut rng);
                if t >= now {
                    continue;
                }
                deal_no += 1;
                let deal_id = format!("D-{deal_no:05}");
                let usd = rng.random_bool(0.1);
                let currency = if usd { "USD" } else { "EUR" };
                let n_lines = rng.random_range(1..=3);
                let mut lines = Vec::new();
                let mut total_cents: i64 = 0;
                for l in 0..n_lines {
                    let cents = rng.random_range(1_000..25_000) * 100;
                    total_cents += cents;
                    lines.push(ev::ProductLine {
                        product_id: PRODUCTS[(deal_no + l) % PRODUCTS.len()].into(),
                        quantity: rng.random_range(1..10),
                        amount: Some(money(
                            &format!("{}.{:02}", cents / 100, cents % 100),
                            currency,
                        )),
                    });
                }
                let amount = format!("{}.{:02}", total_cents / 100, total_cents % 100);
                let credits = if rng.random_bool(0.2) {
                    let other =
                        &d.reps[(ri + 1 + rng.random_range(0..d.reps.len() - 1)) % d.reps.len()].0;
                    vec![
                        ev::CreditSplit {
                            rep_id: rep.clone(),
                            share_percent: "60".into(),
                        },
                        ev::CreditSplit {
                            rep_id: other.clone(),
                            share_percent: "40".into(),
                        },
                    ]
                } else {
                    vec![ev::CreditSplit {
                        rep_id: rep.clone(),
                        share_percent: "100".into(),
                    }]
                };
                let n_credits = credits.len();
                d.deal_credits += n_credits;
                let due = t + Duration::days(30);
                let deal_event = id();
                d.deal_event_ids.push(deal_event.to_string());
                d.deals += 1;
                timed.push((
                    t,
                    ev_at(
                        deal_event,
                        t,
                        Payload::DealClosed(ev::DealClosed {
                            deal_id: deal_id.clone(),
                            customer_id: format!("cust-{}", rng.random_range(1..400)),
                            amount: Some(money(&amount, currency)),
                            credits,
                            lines,
                            payment_due_at: ts(due),
                            name: format!("{} renewal", PRODUCTS[deal_no % PRODUCTS.len()]),
                        }),
                    ),
                ));
                d.activities += 1;
                timed.push((
                    t,
                    ev_at(
                        id(),
                        t,
                        Payload::ActivityLogged(ev::ActivityLogged {
                            rep_id: rep.clone(),
                            activity_id: format!("act-{}", id().simple()),
                            kind: ev::ActivityKind::ContractSigned as i32,
                            customer_id: String::new(),
                            deal_id: deal_id.clone(),
                            subject: "contract signed".into(),
                        }),
                    ),
                ));
                // Payments: most deals pay, some in two parts.
                let paid_at = t + Duration::days(rng.random_range(5..45));
                if paid_at < now && rng.random_bool(0.75) {
                    let first = if rng.random_bool(0.3) {
                        total_cents / 2
                    } else {
                        total_cents
                    };
                    let mut parts = vec![(paid_at, first)];
                    let second_at = paid_at + Duration::days(10);
                    if first < total_cents && second_at < now {
                        parts.push((second_at, total_cents - first));
                    }
                    for (i, (pt, cents)) in parts.into_iter().enumerate() {
                        d.payments += 1;
                        timed.push((
                            pt,
                            ev_at(
                                id(),
                                pt,
                                Payload::PaymentReceived(ev::PaymentReceived {
                                    payment_id: format!("P-{deal_no:05}-{i}"),
                                    deal_id: deal_id.clone(),
                                    amount: Some(money(
                                        &format!("{}.{:02}", cents / 100, cents % 100),
                                        currency,
                                    )),
                                }),
                            ),
                        ));
                    }
                } else if rng.random_bool(0.12) {
                    // A few deals are cancelled before paying.
                    let rt = t + Duration::days(rng.random_range(1..20));
                    if rt < now {
                        d.reversals += 1;
                        d.reversed_credits += n_credits;
                        timed.push((
                            rt,
                            ev_at(
                                id(),
                                rt,
                                Payload::DealReversed(ev::DealReversed {
                                    reversal_id: format!("R-{deal_no:05}"),
                                    deal_id: deal_id.clone(),
                                    kind: ev::ReversalKind::Cancellation as i32,
                                    amount: None,
                                    reason: "customer cancelled".into(),
                                }),
                            ),
                        ));
                    }
                }
            }
        }
    }
    // Stable order: by time; payments and reversals always after their deal.
    timed.sort_by_key(|(t, _)| *t);
    d.events.extend(timed.into_iter().map(|(_, e)| e));
    d
}

fn rng_u128(seed: u64) -> u128 {
    u128::from(seed) << 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_plausible_tenant() {
        let now: DateTime<Utc> = "2026-11-27T12:00:00Z".parse().unwrap();
        let d = generate(7, 3, 10, 60, now);
        assert_eq!(d.teams.len(), 3);
        assert_eq!(d.reps.len(), 30);
        assert!(d.deals > 50, "{} deals", d.deals);
        assert!(d.payments > 20 && d.activities > 5000 && d.surveys > 100);
        // Every event is in the past and within the horizon.
        for e in &d.events {
            let t = spm_proto::ext::datetime(e.occurred_at.as_ref().unwrap()).unwrap();
            assert!(t < now && t > now - Duration::days(62));
        }
    }
}
