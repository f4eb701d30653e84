//! The append-only ledger: what to post so that the ledger holds exactly the computed
//! earnings. Each (line key, status) the ledger holds is compared with the target; the
//! difference is posted. The first posting of a key has the line's kind; later ones are
//! adjustments. Nothing is ever rewritten.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;

use spm_core::money::Currency;

use super::compute::{Explain, Kind, Outcome, RepPeriod, Status, compute_with};
use super::plan::Plan;

/// What the ledger holds for a rep-period: the sum per (line key, status).
pub type Holdings = BTreeMap<(String, Status), Decimal>;

/// One ledger posting to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub key: String,
    pub kind: Kind,
    pub status: Status,
    pub amount: Decimal,
    pub deal_id: String,
    pub summary: String,
    pub explanation: super::compute::Explanation,
    pub inputs: Vec<String>,
}

/// The postings that bring `held` to `target`, in (line key, status) order.
pub fn diff(target: &Outcome, held: &Holdings) -> Vec<Posting> {
    let mut want: BTreeMap<(&str, Status), Decimal> = BTreeMap::new();
    let mut meta: HashMap<&str, &super::compute::Line> = HashMap::with_capacity(target.lines.len());
    for l in &target.lines {
        meta.insert(&l.key, l);
        for (s, a) in &l.amounts {
            *want.entry((l.key.as_str(), *s)).or_default() += *a;
        }
    }
    // Both maps are in (key, status) order: merge them.
    let mut out = Vec::new();
    let mut w = want.iter().peekable();
    let mut h = held
        .iter()
        .map(|((k, s), a)| ((k.as_str(), *s), a))
        .peekable();
    loop {
        let (k, amount) = match (w.peek(), h.peek()) {
            (None, None) => break,
            (Some((wk, wa)), None) => {
                let r = (**wk, **wa);
                w.next();
                r
            }
            (None, Some((hk, ha))) => {
                let r = (*hk, -**ha);
                h.next();
                r
            }
            (Some((wk, wa)), Some((hk, ha))) => match (**wk).cmp(hk) {
                std::cmp::Ordering::Less => {
                    let r = (**wk, **wa);
                    w.next();
                    r
                }
                std::cmp::Ordering::Greater => {
                    let r = (*hk, -**ha);
                    h.next();
                    r
                }
                std::cmp::Ordering::Equal => {
                    let r = (**wk, **wa - **ha);
                    w.next();
                    h.next();
                    r
                }
            },
        };
        if amount.is_zero() {
            continue;
        }
        let (key, status) = k;
        match meta.get(key) {
            Some(l) => {
                let first = !holds_key(held, key);
                out.push(Posting {
                    key: key.to_owned(),
                    kind: if first { l.kind } else { Kind::Adjustment },
                    status,
                    amount,
                    deal_id: l.deal_id.clone(),
                    summary: if first {
                        l.summary.clone()
                    } else {
                        format!("recomputed: {}", l.summary)
                    },
                    explanation: l.explanation.clone(),
                    inputs: l.inputs.clone(),
                });
            }
            None => out.push(Posting {
                key: key.to_owned(),
                kind: Kind::Adjustment,
                status,
                amount,
                deal_id: String::new(),
                summary: format!("{key} is no longer earned"),
                explanation: crate::domain::compute::Explanation::new(
                    serde_json::json!({"reason": "the line's inputs no longer produce it"}),
                ),
                inputs: Vec::new(),
            }),
        }
    }
    out
}

/// Whether the ledger holds anything (any status) for a line key: later postings of it
/// are adjustments.
fn holds_key(held: &Holdings, key: &str) -> bool {
    held.range((key.to_owned(), Status::Earned)..=(key.to_owned(), Status::Reversed))
        .next()
        .is_some()
}

/// What to post for a rep-period under `plan` (none: everything held is reversed), and its
/// outcome: amounts are computed first without explanations, then only the lines that
/// move are explained (the same postings as explaining everything, at a fraction of the
/// cost). `late_paid`: a late change to a paid period ([`keep_paid`]).
pub fn postings(
    plan: Option<&Plan>,
    rp: &RepPeriod,
    cur: Currency,
    held: &Holdings,
    late_paid: bool,
) -> (Outcome, Vec<Posting>) {
    let Some(plan) = plan else {
        let o = Outcome::default();
        let p = diff(&o, held);
        return (o, p);
    };
    let run = |explain| {
        let mut o = compute_with(plan, rp, cur, explain);
        if late_paid {
            keep_paid(&mut o, held);
        }
        o
    };
    let bare = run(Explain::Nothing);
    let moved = diff(&bare, held);
    if moved.is_empty() {
        return (bare, moved);
    }
    let keys: HashSet<String> = moved.iter().map(|p| p.key.clone()).collect();
    let full = run(Explain::Only(&keys));
    let p = diff(&full, held);
    (full, p)
}

/// Adds postings to holdings.
pub fn hold(held: &mut Holdings, postings: &[Posting]) {
    for p in postings {
        let e = held.entry((p.key.clone(), p.status)).or_default();
        *e += p.amount;
        if e.is_zero() {
            // Keep zero entries: the key has postings (later ones are adjustments).
        }
    }
}

/// For a late change to a period already paid: what the ledger holds as paid stays paid
/// (up to what is still payable for the line); only the rest of the payable amount is new.
pub fn keep_paid(target: &mut Outcome, held: &Holdings) {
    for l in &mut target.lines {
        let paid = held
            .get(&(l.key.clone(), Status::Paid))
            .copied()
            .unwrap_or_default();
        if paid <= Decimal::ZERO {
            continue;
        }
        let payable = l
            .amounts
            .iter()
            .find(|(s, _)| *s == Status::Payable)
            .map_or(Decimal::ZERO, |(_, a)| *a);
        let moved = paid.min(payable);
        if moved.is_zero() {
            continue;
        }
        l.amounts.retain(|(s, _)| *s != Status::Payable);
        if payable > moved {
            l.amounts.push((Status::Payable, payable - moved));
        }
        l.amounts.push((Status::Paid, moved));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::Duration;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    use super::*;
    use crate::domain::compute::tests::{at, deal, eur, period};
    use crate::domain::compute::{Linked, RepPeriod, compute};
    use crate::domain::plan::from_proto;
    use crate::domain::plan::tests::proto_plan;

    #[derive(Debug, Clone)]
    enum Ev {
        Deal(usize, i64, i64),
        Payment(usize, i64, i64),
        Reversal(usize, i64, i64),
        Metric(i64, i64),
    }

    fn state(evs: &[(u32, Ev)]) -> RepPeriod {
        let mut rp = period(vec![]);
        for (_, e) in evs {
            if let Ev::Deal(i, day, cents) = e {
                let mut d = deal(
                    &format!("d{i}"),
                    &format!("2026-11-{:02}", day),
                    Decimal::new(*cents, 2),
                );
                d.event_id = format!("ev-d{i}");
                rp.deals.push(d);
            }
        }
        // Latest snapshot wins by (time, event id), as in the store.
        let mut metric: Option<(i64, u32, i64)> = None;
        for (id, e) in evs {
            match e {
                Ev::Payment(i, day, cents) | Ev::Reversal(i, day, cents) => {
                    if let Some(d) = rp.deals.iter_mut().find(|d| d.deal_id == format!("d{i}")) {
                        let l = Linked {
                            event_id: format!("ev-{id}"),
                            at: at("2026-11-01") + Duration::days(*day),
                            amount: Decimal::new(*cents, 2).min(d.credited),
                            full: false,
                        };
                        if matches!(e, Ev::Payment(..)) {
                            d.payments.push(l);
                        } else {
                            d.reversals.push(l);
                        }
                    }
                }
                Ev::Metric(seq, v) => {
                    if metric.is_none_or(|(s, i, _)| (*seq, *id) > (s, i)) {
                        metric = Some((*seq, *id, *v));
                    }
                }
                Ev::Deal(..) => {}
            }
        }
        if let Some((_, _, v)) = metric {
            rp.metrics
                .insert("collection_rate".into(), Decimal::new(v, 2));
        }
        for d in &mut rp.deals {
            d.payments.sort_by(|a, b| a.event_id.cmp(&b.event_id));
            d.reversals.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        }
        rp
    }

    fn arb_events() -> impl Strategy<Value = Vec<(u32, Ev)>> {
        let ev = prop_oneof![
            (0..4usize, 1..28i64, 10_000..900_000i64).prop_map(|(i, d, c)| Ev::Deal(i, d, c)),
            (0..4usize, 1..60i64, 1_000..300_000i64).prop_map(|(i, d, c)| Ev::Payment(i, d, c)),
            (0..4usize, 1..120i64, 1_000..300_000i64).prop_map(|(i, d, c)| Ev::Reversal(i, d, c)),
            (0..100i64, 40..100i64).prop_map(|(s, v)| Ev::Metric(s, v)),
        ];
        prop::collection::vec(ev, 1..14).prop_map(|v| {
            // One deal event per deal index (a deal closes once).
            let mut seen = HashSet::new();
            v.into_iter()
                .filter(|e| !matches!(e, Ev::Deal(i, ..) if !seen.insert(*i)))
                .enumerate()
                .map(|(n, e)| (u32::try_from(n).unwrap(), e))
                .collect()
        })
    }

    /// The diff as first written (a set of every key, then a lookup of each): what the
    /// merge in [`diff`] must reproduce posting for posting.
    fn reference_diff(target: &Outcome, held: &Holdings) -> Vec<Posting> {
        use std::collections::BTreeSet;
        let held_keys: BTreeSet<&str> = held.keys().map(|(k, _)| k.as_str()).collect();
        let mut want: Holdings = BTreeMap::new();
        let mut meta: BTreeMap<&str, &crate::domain::compute::Line> = BTreeMap::new();
        for l in &target.lines {
            meta.insert(&l.key, l);
            for (s, a) in &l.amounts {
                *want.entry((l.key.clone(), *s)).or_default() += *a;
            }
        }
        let all: BTreeSet<&(String, Status)> = want.keys().chain(held.keys()).collect();
        let mut out = Vec::new();
        for k in all {
            let d =
                want.get(k).copied().unwrap_or_default() - held.get(k).copied().unwrap_or_default();
            if d.is_zero() {
                continue;
            }
            let (key, status) = k;
            let first = !held_keys.contains(key.as_str());
            match meta.get(key.as_str()) {
                Some(l) => out.push(Posting {
                    key: key.clone(),
                    kind: if first { l.kind } else { Kind::Adjustment },
                    status: *status,
                    amount: d,
                    deal_id: l.deal_id.clone(),
                    summary: if first {
                        l.summary.clone()
                    } else {
                        format!("recomputed: {}", l.summary)
                    },
                    explanation: l.explanation.clone(),
                    inputs: l.inputs.clone(),
                }),
                None => out.push(Posting {
                    key: key.clone(),
                    kind: Kind::Adjustment,
                    status: *status,
                    amount: d,
                    deal_id: String::new(),
                    summary: format!("{key} is no longer earned"),
                    explanation: crate::domain::compute::Explanation::new(
                        serde_json::json!({"reason": "the line's inputs no longer produce it"}),
                    ),
                    inputs: Vec::new(),
                }),
            }
        }
        out
    }

    /// Applies events one at a time in `order` (duplicates skipped by id, like the inbox),
    /// recomputing and posting the difference after each; returns the holdings.
    fn run(plan: &crate::domain::plan::Plan, events: &[(u32, Ev)], order: &[usize]) -> Holdings {
        let mut seen = HashSet::new();
        let mut applied = Vec::new();
        let mut held = Holdings::new();
        for &i in order {
            let e = &events[i % events.len()];
            if !seen.insert(e.0) {
                continue;
            }
            applied.push(e.clone());
            let rp = state(&applied);
            let target = compute(plan, &rp, eur());
            let p = diff(&target, &held);
            // The engine's path (amounts first, then only the moved lines explained) and
            // the merge-based diff post exactly what explaining everything and the
            // reference diff post: same keys, kinds, amounts, summaries, explanations.
            assert_eq!(p, reference_diff(&target, &held));
            assert_eq!(postings(Some(plan), &rp, eur(), &held, false).1, p);
            let mut paid = target.clone();
            keep_paid(&mut paid, &held);
            assert_eq!(
                postings(Some(plan), &rp, eur(), &held, true).1,
                diff(&paid, &held)
            );
            hold(&mut held, &p);
        }
        held.retain(|_, v| !v.is_zero());
        held
    }

    proptest! {
        /// Any order of arrival, with redeliveries, leaves the ledger holding exactly the
        /// earnings computed from the whole set at once; the lines sum to the total.
        #[test]
        fn incremental_equals_full_recompute_under_any_order(
            events in arb_events(),
            order in prop::collection::vec(0..100usize, 0..40),
        ) {
            let mut p = proto_plan();
            p.payout = Some(spm_proto::incentive::v1::PayoutSplit { at_close_percent: "40".into(), on_collection_percent: "60".into() });
            let plan = from_proto(&p).unwrap();
            let mut seq: Vec<usize> = order;
            seq.extend(0..events.len());
            let held = run(&plan, &events, &seq);
            let reverse: Vec<usize> = (0..events.len()).rev().collect();
            let held_rev = run(&plan, &events, &reverse);
            let target = compute(&plan, &state(&events), eur());
            let mut want = Holdings::new();
            for l in &target.lines {
                for (s, a) in &l.amounts {
                    *want.entry((l.key.clone(), *s)).or_default() += *a;
                }
            }
            want.retain(|_, v| !v.is_zero());
            prop_assert_eq!(&held, &want);
            prop_assert_eq!(&held_rev, &want);
            let total: Decimal = held.values().copied().sum();
            prop_assert_eq!(total, target.total());
            // Every line is a whole number of cents.
            prop_assert!(held.values().all(|v| v.scale() <= 2));
        }
    }

    #[test]
    fn late_change_becomes_an_adjustment() {
        let plan = from_proto(&proto_plan()).unwrap();
        let rp = period(vec![deal("d1", "2026-11-02", dec!(8000))]);
        let mut held = Holdings::new();
        let first = diff(&compute(&plan, &rp, eur()), &held);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, Kind::Commission);
        hold(&mut held, &first);
        let mut rp2 = rp.clone();
        rp2.metrics.insert("collection_rate".into(), dec!(0.5));
        let second = diff(&compute(&plan, &rp2, eur()), &held);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].kind, Kind::Adjustment);
        assert_eq!(second[0].amount, dec!(-200.00));
        // Nothing changes: nothing to post.
        hold(&mut held, &second);
        assert!(diff(&compute(&plan, &rp2, eur()), &held).is_empty());
    }
}
