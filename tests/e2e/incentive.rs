//! Incentive end to end: deals in through ingest, statements and explanations over gRPC.

use std::time::Duration;

use chrono::{Duration as Days, Utc};
use serde_json::Value;
use spm_core::period::{Calendar, PeriodKind};
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload as Out;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_testkit::events::{deal, money, payment, rep, team};
use spm_testkit::kafka::read_topic;
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::scoring::submit;

type Inc = IncentiveServiceClient<tonic::transport::Channel>;

pub(crate) fn plan() -> pb::Plan {
    pb::Plan {
        plan_id: "ae".into(),
        name: "AE".into(),
        effective_from: "2020-01-01".into(),
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
        payout: Some(pb::PayoutSplit {
            at_close_percent: "50".into(),
            on_collection_percent: "50".into(),
        }),
        attainment_bonuses: vec![pb::AttainmentBonus {
            at: "1".into(),
            amount: "1000".into(),
        }],
        clawback_window_days: 90,
        badges: vec![pb::BadgeRule {
            code: "first".into(),
            title: "First deal".into(),
            kind: pb::BadgeKind::FirstDeal as i32,
            threshold: String::new(),
            periods: 0,
        }],
        ..Default::default()
    }
}

struct World {
    env: TestEnv,
    ingest: Service,
    incentive: Service,
    key: String,
}

async fn world(name: &str, with_scoring: bool) -> (World, Option<Service>) {
    let env = TestEnv::new(name).await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let scoring = if with_scoring {
        Some(env.start("scoring").await)
    } else {
        None
    };
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    wait_key_known(&incentive, &t.admin_key).await;
    (
        World {
            env,
            ingest,
            incentive,
            key: t.admin_key,
        },
        scoring,
    )
}

async fn statement(
    inc: &Inc,
    key: &str,
    rep: &str,
    period: Option<common::Period>,
) -> pb::Statement {
    let mut inc = inc.clone();
    inc.get_statement(authed(
        pb::GetStatementRequest {
            as_of: None,
            with_explanations: false,
            rep_id: rep.into(),
            period,
        },
        key,
    ))
    .await
    .expect("statement")
    .into_inner()
    .statement
    .unwrap()
}

fn line<'a>(s: &'a pb::Statement, key: &str) -> &'a pb::StatementLine {
    s.lines.iter().find(|l| l.key == key).unwrap_or_else(|| {
        panic!(
            "no line {key} in {:?}",
            s.lines.iter().map(|l| &l.key).collect::<Vec<_>>()
        )
    })
}

fn statuses(l: &pb::StatementLine) -> Vec<(i32, String)> {
    l.by_status
        .iter()
        .map(|s| (s.status, s.amount.clone()))
        .collect()
}

const PAYABLE: i32 = ev::EarningStatus::Payable as i32;
const EARNED: i32 = ev::EarningStatus::Earned as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_lines_explain_themselves_and_follow_collection() {
    let (w, _) = world("incentive-statement", false).await;
    let mut adm = IncentiveAdminServiceClient::new(w.incentive.channel().await);
    adm.put_plan(authed(
        pb::PutPlanRequest {
            plan: Some(plan()),
            draft: false,
        },
        &w.key,
    ))
    .await
    .expect("plan");
    let d1 = deal("d1", "8000.00", &[("r1", "100")]);
    let d2 = deal("d2", "4000.00", &[("r1", "100")]);
    submit(
        &w.ingest,
        &w.key,
        vec![rep("r1", "", ""), d1.clone(), d2.clone()],
    )
    .await;
    let inc = IncentiveServiceClient::new(w.incentive.channel().await);
    // Marginal: d1 8000 x 5% = 400; d2 2000 x 5% + 2000 x 8% = 260. Half payable at close.
    let s = eventually(
        Duration::from_secs(30),
        "both deals on the statement",
        || {
            let (inc, key) = (inc.clone(), w.key.clone());
            async move {
                let s = statement(&inc, &key, "r1", None).await;
                (s.lines.len() == 2 && s.total == "660.00").then_some(s)
            }
        },
    )
    .await;
    assert_eq!(
        statuses(line(&s, "commission:d1")),
        [(EARNED, "200.00".into()), (PAYABLE, "200.00".into())]
    );
    assert_eq!(line(&s, "commission:d2").amount, "260.00");
    assert_eq!(s.attainment, "1.2");
    assert_eq!((s.plan_id.as_str(), s.plan_version), ("ae", 1));

    // A payment makes the collection half payable in proportion: 200 + 200 x 4000/8000.
    let p = payment("p1", "d1", "4000.00");
    submit(&w.ingest, &w.key, vec![p.clone()]).await;
    let s = eventually(Duration::from_secs(30), "the payment reflected", || {
        let (inc, key) = (inc.clone(), w.key.clone());
        async move {
            let s = statement(&inc, &key, "r1", None).await;
            (statuses(line(&s, "commission:d1"))
                == [
                    (EARNED, "100.00".to_owned()),
                    (PAYABLE, "300.00".to_owned()),
                ])
            .then_some(s)
        }
    })
    .await;
    // On the earnings topic: one event per line and round, the whole amount with its split;
    // the payment is a move between statuses (net 0), not two adjustments.
    let d1_events = eventually(Duration::from_secs(30), "d1's earnings events", || {
        let env = &w.env;
        async move {
            let evs: Vec<Out> = read_topic(env, topics::EARNINGS)
                .into_iter()
                .filter_map(|r| r.envelope.and_then(|e| e.payload))
                .filter(|p| match p {
                    Out::EarningPosted(e) => e.deal_id == "d1",
                    Out::EarningAdjusted(a) => a.reason.contains("8000"),
                    _ => false,
                })
                .collect();
            (evs.len() >= 2).then_some(evs)
        }
    })
    .await;
    let split = |v: &[ev::StatusAmount]| -> Vec<(i32, String)> {
        v.iter()
            .map(|p| (p.status, p.amount.clone().unwrap_or_default().amount))
            .collect()
    };
    match &d1_events[..] {
        [Out::EarningPosted(p), Out::EarningAdjusted(a)] => {
            assert_eq!(p.amount.as_ref().unwrap().amount, "400.00");
            assert_eq!(
                split(&p.by_status),
                [(EARNED, "200.00".into()), (PAYABLE, "200.00".into())]
            );
            assert_eq!(a.amount.as_ref().unwrap().amount, "0.00");
            assert_eq!(
                split(&a.by_status),
                [(EARNED, "-100.00".into()), (PAYABLE, "100.00".into())]
            );
        }
        other => panic!("one posted and one moved event for d1, got {other:?}"),
    }
    let total: rust_decimal::Decimal = s
        .lines
        .iter()
        .map(|l| l.amount.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(total.to_string(), s.total, "lines sum to the total exactly");
    // Traces only on request (a busy rep's statement has hundreds of lines).
    assert!(s.lines.iter().all(|l| l.explanation_json.is_empty()));
    let full = inc
        .clone()
        .get_statement(authed(
            pb::GetStatementRequest {
                as_of: None,
                rep_id: "r1".into(),
                period: None,
                with_explanations: true,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .statement
        .unwrap();
    assert_eq!(full.lines.len(), s.lines.len());
    let traced: Value =
        serde_json::from_str(&line(&full, "commission:d2").explanation_json).unwrap();
    assert_eq!(traced["plan"]["id"], "ae");

    // Explain: every posting, the inputs, the plan, the tiers.
    let mut inc2 = inc.clone();
    let ex = inc2
        .explain_line(authed(
            pb::ExplainLineRequest {
                as_of: None,
                line_id: line(&s, "commission:d2").line_id.clone(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let e: Value = serde_json::from_str(&ex.line.unwrap().explanation_json).unwrap();
    assert_eq!(e["plan"]["id"], "ae");
    assert_eq!(e["inputs"][0], d2.event_id.as_str());
    assert_eq!(e["slices"].as_array().unwrap().len(), 2, "{e}");
    assert_eq!(e["slices"][1]["rate"], "0.08");
    let ex1 = inc2
        .explain_line(authed(
            pb::ExplainLineRequest {
                as_of: None,
                line_id: line(&s, "commission:d1").line_id.clone(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        ex1.postings.len() >= 3,
        "original posting and the status move: {:?}",
        ex1.postings
    );
    assert!(
        ex1.postings
            .iter()
            .any(|x| x.caused_by.contains(&p1_id(&p))),
        "a posting names the payment as its cause"
    );

    // Awards: the first deal.
    let awards = inc2
        .list_awards(authed(
            pb::ListAwardsRequest {
                rep_id: "r1".into(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .awards;
    assert_eq!(
        awards.iter().map(|a| a.code.as_str()).collect::<Vec<_>>(),
        ["first"]
    );

    // What-if: 3000 more at 8% (position 1.2 -> 1.5).
    let wi = inc2
        .what_if(authed(
            pb::WhatIfRequest {
                rep_id: "r1".into(),
                amount: Some(money("3000.00", "EUR")),
                lines: vec![],
                close_at: None,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (wi.delta.as_str(), wi.attainment_after.as_str()),
        ("240.00", "1.5")
    );
    let bad = inc2
        .what_if(authed(
            pb::WhatIfRequest {
                rep_id: "r1".into(),
                amount: Some(money("1", "USD")),
                lines: vec![],
                close_at: None,
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Plan simulation: doubled rates cost twice as much.
    let mut draft = plan();
    for t in &mut draft.commission.as_mut().unwrap().tiers {
        t.rate = (t.rate.parse::<rust_decimal::Decimal>().unwrap() * rust_decimal::Decimal::TWO)
            .to_string();
    }
    let sim = inc2
        .simulate_plan(authed(
            pb::SimulatePlanRequest {
                draft: Some(draft),
                period: None,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            sim.current_total.as_str(),
            sim.draft_total.as_str(),
            sim.difference.as_str()
        ),
        ("660.00", "1320.00", "660.00")
    );
    assert_eq!(sim.deals, 2);

    // The ledger refuses to be rewritten.
    let pool = w.env.pool("incentive").await;
    let err = sqlx::query("UPDATE ledger SET amount = 0")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(
        sqlx::query("DELETE FROM ledger")
            .execute(&pool)
            .await
            .is_err()
    );
}

fn p1_id(p: &spm_proto::ingest::v1::CrmEvent) -> String {
    p.event_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_rejected_field_by_field() {
    let (w, _) = world("incentive-plans", false).await;
    let mut adm = IncentiveAdminServiceClient::new(w.incentive.channel().await);
    let fields = |s: tonic::Status| -> Vec<String> {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        s.get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    };
    let mut overlapping = plan();
    overlapping.commission.as_mut().unwrap().tiers[2].from = "1".into();
    let e = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(overlapping),
                draft: false,
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["plan.commission.tiers[2].from"]);
    let mut negative = plan();
    negative.commission.as_mut().unwrap().tiers[0].rate = "-0.05".into();
    let e = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(negative),
                draft: false,
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["plan.commission.tiers[0].rate"]);
    let mut splits = plan();
    splits.payout = Some(pb::PayoutSplit {
        at_close_percent: "70".into(),
        on_collection_percent: "20".into(),
    });
    let e = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(splits),
                draft: false,
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["plan.payout"]);
    let mut kpi = plan();
    kpi.gates = vec![pb::Gate {
        metric: "mood".into(),
        op: pb::GateOp::Below as i32,
        value: "1".into(),
        action: pb::GateAction::Hold as i32,
        factor: String::new(),
    }];
    let e = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(kpi),
                draft: false,
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["plan.gates[0].metric"]);
    // Versions.
    adm.put_plan(authed(
        pb::PutPlanRequest {
            plan: Some(plan()),
            draft: false,
        },
        &w.key,
    ))
    .await
    .unwrap();
    let v2 = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(v2.version, 2);
    let hist = adm
        .list_plans(authed(pb::ListPlansRequest { history: true }, &w.key))
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(hist.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_periods_stay_closed_late_deals_become_adjustments() {
    let (w, _) = world("incentive-close", false).await;
    let b = create_tenant(&w.env, &w.ingest, "beta").await;
    wait_key_known(&w.incentive, &b.admin_key).await;
    let mut adm = IncentiveAdminServiceClient::new(w.incentive.channel().await);
    adm.put_plan(authed(
        pb::PutPlanRequest {
            plan: Some(plan()),
            draft: false,
        },
        &w.key,
    ))
    .await
    .unwrap();
    let cal = Calendar::default();
    let this = cal.period(PeriodKind::Month, Utc::now());
    let last = cal.period(PeriodKind::Month, this.start - Days::seconds(1));
    let in_last = |id: &str, amt: &str, day: i64| {
        let mut d = deal(id, amt, &[("r1", "100")]);
        d.occurred_at = Some(spm_proto::ext::timestamp(last.start + Days::days(day)));
        d
    };
    submit(
        &w.ingest,
        &w.key,
        vec![rep("r1", "", ""), in_last("old-1", "11000.00", 5)],
    )
    .await;
    let inc = IncentiveServiceClient::new(w.incentive.channel().await);
    let lastp = common::Period {
        kind: common::PeriodKind::Month as i32,
        key: last.key.clone(),
    };
    eventually(Duration::from_secs(30), "last month's deal", || {
        let (inc, key, p) = (inc.clone(), w.key.clone(), lastp.clone());
        async move { (statement(&inc, &key, "r1", Some(p)).await.lines.len() == 1).then_some(()) }
    })
    .await;
    let closed = adm
        .close_period(authed(
            pb::ClosePeriodRequest {
                period: Some(lastp.clone()),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.reps, 1);
    let at_close = statement(&inc, &w.key, "r1", Some(lastp.clone())).await;
    assert!(at_close.closed);
    // 10000 x 5% + 1000 x 8% = 580, and the 100% bonus of 1000 at close.
    assert_eq!(line(&at_close, "bonus:attainment:1").amount, "1000.00");
    assert_eq!(at_close.total, "1580.00");
    let again = adm
        .close_period(authed(
            pb::ClosePeriodRequest {
                period: Some(lastp.clone()),
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // A late deal of the closed month: posted as an adjustment in the open month.
    // (Closed after old-1 in business order: it sits at 110-120% of quota, 8%.)
    submit(&w.ingest, &w.key, vec![in_last("late", "1000.00", 6)]).await;
    let now_s = eventually(Duration::from_secs(30), "the late adjustment", || {
        let (inc, key) = (inc.clone(), w.key.clone());
        async move {
            let s = statement(&inc, &key, "r1", None).await;
            (!s.lines.is_empty()).then_some(s)
        }
    })
    .await;
    let adj = line(&now_s, &format!("adjust:{}:commission:late", last.key));
    assert_eq!(
        (adj.kind, adj.amount.as_str(), adj.source_period.as_str()),
        (
            ev::EarningKind::Adjustment as i32,
            "80.00",
            last.key.as_str()
        )
    );
    let still = statement(&inc, &w.key, "r1", Some(lastp.clone())).await;
    assert_eq!(still.total, "1580.00", "the closed month is not rewritten");
    eventually(Duration::from_secs(30), "EarningAdjusted for the closed month on the topic", || {
        let env = &w.env;
        let key = last.key.clone();
        async move {
            read_topic(env, topics::EARNINGS)
                .into_iter()
                .any(|r| matches!(r.envelope.and_then(|e| e.payload), Some(Out::EarningAdjusted(a)) if a.adjusts_period.as_ref().is_some_and(|p| p.key == key)))
                .then_some(())
        }
    })
    .await;

    // Paying the closed month moves its payable earnings to paid.
    let paid = adm
        .mark_period_paid(authed(
            pb::MarkPeriodPaidRequest {
                period: Some(lastp.clone()),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.reps, 1);
    let s = statement(&inc, &w.key, "r1", Some(lastp.clone())).await;
    assert!(
        s.paid
            && s.totals_by_status
                .iter()
                .any(|t| t.status == ev::EarningStatus::Paid as i32)
    );

    // Another tenant sees none of it.
    let mut inc_b = inc.clone();
    let e = inc_b
        .explain_line(authed(
            pb::ExplainLineRequest {
                as_of: None,
                line_id: adj.line_id.clone(),
            },
            &b.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        statement(&inc, &b.admin_key, "r1", Some(lastp))
            .await
            .lines
            .is_empty()
    );
    // Late adjustments posted into other periods' chains moved those chains' totals too.
    chain_totals_are_their_sums(&w.env.pool("incentive").await).await;
}

/// Every chain's running total (`ledger_chains.total`, which recomputes read instead of
/// summing the chain) equals the sum of its postings, and every chain with postings has one.
async fn chain_totals_are_their_sums(pool: &sqlx::PgPool) {
    let (chains, off): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE c.total IS DISTINCT FROM s.total)
           FROM (SELECT tenant_id, rep_id, period_kind, period_key, sum(amount) AS total
                   FROM ledger GROUP BY 1, 2, 3, 4) s
           LEFT JOIN ledger_chains c USING (tenant_id, rep_id, period_kind, period_key)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(chains > 0, "no chains");
    assert_eq!(
        off, 0,
        "chains whose total is not the sum of their postings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disputes_gates_from_scoring_and_rebuild() {
    let (mut w, _scoring) = world("incentive-disputes", true).await;
    let mut adm = IncentiveAdminServiceClient::new(w.incentive.channel().await);
    let mut p = plan();
    p.payout = None;
    p.gates = vec![pb::Gate {
        metric: "collection_rate".into(),
        op: pb::GateOp::Below as i32,
        value: "0.7".into(),
        action: pb::GateAction::Multiply as i32,
        factor: "0.5".into(),
    }];
    adm.put_plan(authed(
        pb::PutPlanRequest {
            plan: Some(p),
            draft: false,
        },
        &w.key,
    ))
    .await
    .unwrap();
    submit(
        &w.ingest,
        &w.key,
        vec![
            rep("r1", "", "m1"),
            rep("m1", "", ""),
            deal("d1", "10000.00", &[("r1", "100")]),
        ],
    )
    .await;
    let inc = IncentiveServiceClient::new(w.incentive.channel().await);
    // Nothing collected yet: collection rate 0 < 0.7 halves the commission (500 -> 250).
    eventually(Duration::from_secs(30), "the gate applied", || {
        let (inc, key) = (inc.clone(), w.key.clone());
        async move { (statement(&inc, &key, "r1", None).await.total == "250.00").then_some(()) }
    })
    .await;
    submit(&w.ingest, &w.key, vec![payment("p1", "d1", "10000.00")]).await;
    let s = eventually(
        Duration::from_secs(30),
        "the gate lifted by collection",
        || {
            let (inc, key) = (inc.clone(), w.key.clone());
            async move {
                let s = statement(&inc, &key, "r1", None).await;
                (s.total == "500.00").then_some(s)
            }
        },
    )
    .await;
    let l = line(&s, "commission:d1").clone();
    assert!(l.postings >= 2, "posted, then adjusted");

    // A dispute on the line, accepted with an adjustment.
    let mut inc2 = inc.clone();
    let d = inc2
        .open_dispute(authed(
            pb::OpenDisputeRequest {
                line_id: l.line_id.clone(),
                reason: "the deal was 10,500".into(),
                opened_by: "r1".into(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .dispute
        .unwrap();
    let bad = adm
        .resolve_dispute(authed(
            pb::ResolveDisputeRequest {
                dispute_id: d.dispute_id.clone(),
                outcome: ev::DisputeOutcome::Accepted as i32,
                adjustment: "25.001".into(),
                note: String::new(),
                resolved_by: "m1".into(),
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bad.get_details_bad_request().unwrap().field_violations[0].field,
        "adjustment"
    );
    adm.resolve_dispute(authed(
        pb::ResolveDisputeRequest {
            dispute_id: d.dispute_id.clone(),
            outcome: ev::DisputeOutcome::Accepted as i32,
            adjustment: "25.00".into(),
            note: "agreed".into(),
            resolved_by: "m1".into(),
        },
        &w.key,
    ))
    .await
    .unwrap();
    let s = statement(&inc, &w.key, "r1", None).await;
    assert_eq!(
        line(&s, &format!("dispute:{}", d.dispute_id)).amount,
        "25.00"
    );
    assert_eq!(s.total, "525.00");
    let again = adm
        .resolve_dispute(authed(
            pb::ResolveDisputeRequest {
                dispute_id: d.dispute_id.clone(),
                outcome: ev::DisputeOutcome::Rejected as i32,
                resolved_by: "m1".into(),
                ..Default::default()
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    eventually(
        Duration::from_secs(30),
        "both dispute events on the topic",
        || {
            let env = &w.env;
            async move {
                let kinds: Vec<&str> = read_topic(env, topics::EARNINGS)
                    .into_iter()
                    .filter_map(|r| r.envelope.map(|e| e.event_type()))
                    .filter(|t| t.starts_with("Dispute"))
                    .collect();
                (kinds == ["DisputeOpened", "DisputeResolved"]).then_some(())
            }
        },
    )
    .await;

    // Rebuild: inputs reloaded from the topics, nothing to correct in the ledger.
    let pool = w.env.pool("incentive").await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    w.incentive.terminate(Duration::from_secs(20)).await;
    let out = tokio::process::Command::new(spm_testkit::process::binary("spm-incentive"))
        .arg("rebuild")
        .env("DATABASE_URL", &w.env.db_url)
        .env("KAFKA_BROKERS", &w.env.stack.brokers)
        .env("KAFKA_TOPIC_PREFIX", &w.env.prefix)
        .env("SPM_GRPC_ADDR", "127.0.0.1:0")
        .env("SPM_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("needed 0 corrective postings"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    chain_totals_are_their_sums(&pool).await;
    w.incentive.restart().await;
    assert_eq!(statement(&inc, &w.key, "r1", None).await.total, "525.00");
}

/// Statements are served from memory, yet a change made through any instance shows on
/// every instance well within the cache's lifetime (NOTIFY at commit), and an admin
/// change shows on its own instance at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_statements_follow_changes_made_anywhere() {
    let (w, _) = world("incentive-cache", false).await;
    let other = w.env.start("incentive").await;
    wait_key_known(&other, &w.key).await;
    let mut adm = IncentiveAdminServiceClient::new(w.incentive.channel().await);
    adm.put_plan(authed(
        pb::PutPlanRequest {
            plan: Some(plan()),
            draft: false,
        },
        &w.key,
    ))
    .await
    .unwrap();
    submit(
        &w.ingest,
        &w.key,
        vec![rep("r1", "", ""), deal("c-1", "1000.00", &[("r1", "100")])],
    )
    .await;
    let a = IncentiveServiceClient::new(w.incentive.channel().await);
    let b = IncentiveServiceClient::new(other.channel().await);
    let has = |s: &pb::Statement, key: &str| s.lines.iter().any(|l| l.key == key);
    for inc in [&a, &b] {
        eventually(Duration::from_secs(30), "the first deal on both", || {
            let (inc, key) = (inc.clone(), w.key.clone());
            async move { has(&statement(&inc, &key, "r1", None).await, "commission:c-1").then_some(()) }
        })
        .await;
    }
    // Both instances now hold the statement in memory (10 s). A new deal must show on
    // both long before that.
    submit(
        &w.ingest,
        &w.key,
        vec![deal("c-2", "2000.00", &[("r1", "100")])],
    )
    .await;
    for inc in [&a, &b] {
        eventually(
            Duration::from_secs(4),
            "the second deal on both, not the cached statement",
            || {
                let (inc, key) = (inc.clone(), w.key.clone());
                async move {
                    has(&statement(&inc, &key, "r1", None).await, "commission:c-2").then_some(())
                }
            },
        )
        .await;
    }
    // Closing the period through A: A's next read shows it; B's within moments.
    let now = Calendar::default().period(PeriodKind::Month, Utc::now());
    adm.close_period(authed(
        pb::ClosePeriodRequest {
            period: Some(common::Period {
                kind: common::PeriodKind::Month as i32,
                key: now.key.clone(),
            }),
        },
        &w.key,
    ))
    .await
    .unwrap();
    assert!(
        statement(&a, &w.key, "r1", None).await.closed,
        "read-your-writes on A"
    );
    eventually(Duration::from_secs(2), "B to see the close", || {
        let (b, key) = (b.clone(), w.key.clone());
        async move { statement(&b, &key, "r1", None).await.closed.then_some(()) }
    })
    .await;

    // Statements are served from encoded replies: the errors and isolation still hold.
    let ask = |rep: &str, key: Option<&str>| {
        let req = pb::GetStatementRequest {
            as_of: None,
            with_explanations: false,
            rep_id: rep.into(),
            period: None,
        };
        let (mut a, key) = (a.clone(), key.map(str::to_owned));
        async move {
            match key {
                Some(k) => a.get_statement(authed(req, &k)).await,
                None => a.get_statement(req).await,
            }
        }
    };
    let bad = ask("", Some(&w.key)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert_eq!(
        bad.get_details_bad_request().unwrap().field_violations[0].field,
        "rep_id"
    );
    let anon = ask("r1", None).await.unwrap_err();
    assert_eq!(anon.code(), Code::Unauthenticated, "{anon:?}");
    let other_tenant = create_tenant(&w.env, &w.ingest, "globex").await;
    wait_key_known(&w.incentive, &other_tenant.admin_key).await;
    let theirs = ask("r1", Some(&other_tenant.admin_key))
        .await
        .expect("statement of another tenant's r1")
        .into_inner()
        .statement
        .unwrap();
    assert!(
        theirs.lines.is_empty() && !theirs.closed,
        "a key of another tenant sees its own (empty) r1, not acme's cached one: {theirs:?}"
    );
}

/// A plan assigned to a team governs the reps of that team and of its sub-teams; a rep
/// who moves team, or whose team moves in the hierarchy, is recomputed under the plan
/// that now governs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_plans_follow_the_hierarchy_and_a_team_move() {
    let (w, _) = world("incentive-teams", false).await;
    let mut adm = IncentiveAdminServiceClient::new(w.incentive.channel().await);
    let mut emea = plan();
    emea.plan_id = "emea".into();
    emea.name = "EMEA".into();
    emea.assignment = Some(pb::PlanAssignment {
        team_ids: vec!["emea".into()],
        ..Default::default()
    });
    if let Some(c) = emea.commission.as_mut() {
        c.tiers[0].rate = "0.1".into();
    }
    for p in [plan(), emea] {
        adm.put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(p),
                draft: false,
            },
            &w.key,
        ))
        .await
        .unwrap();
    }
    submit(
        &w.ingest,
        &w.key,
        vec![
            team("emea", "", ""),
            team("emea-north", "emea", ""),
            team("us", "", ""),
            rep("r1", "emea-north", ""),
            rep("r2", "us", ""),
            rep("r3", "emea-north", ""),
        ],
    )
    .await;
    // Deals after incentive knows the org (org and deals travel on different topics).
    let pool = w.env.pool("incentive").await;
    eventually(Duration::from_secs(30), "the org in incentive", || {
        let pool = pool.clone();
        async move {
            let (teams, reps): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM org_teams), (SELECT count(*) FROM org_reps)",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (teams == 3 && reps == 3).then_some(())
        }
    })
    .await;
    submit(
        &w.ingest,
        &w.key,
        vec![
            deal("t-1", "1000.00", &[("r1", "100")]),
            deal("t-2", "1000.00", &[("r2", "100")]),
            deal("t-3", "1000.00", &[("r3", "100")]),
        ],
    )
    .await;
    let inc = IncentiveServiceClient::new(w.incentive.channel().await);
    let expect =
        |rep: &'static str, plan: &'static str, total: &'static str, what: &'static str| {
            let (inc, key) = (inc.clone(), w.key.clone());
            eventually(Duration::from_secs(30), what, move || {
                let (inc, key) = (inc.clone(), key.clone());
                async move {
                    let s = statement(&inc, &key, rep, None).await;
                    (s.plan_id == plan && s.total == total).then_some(())
                }
            })
        };
    // r1's team is under emea: 10% of 1,000; r2 has the tenant's default: 5%.
    expect(
        "r1",
        "emea",
        "100.00",
        "r1 under the emea plan through its parent team",
    )
    .await;
    expect("r2", "ae", "50.00", "r2 under the default plan").await;
    // r1 moves to us: its open period is recomputed under the default plan.
    submit(&w.ingest, &w.key, vec![rep("r1", "us", "")]).await;
    expect(
        "r1",
        "ae",
        "50.00",
        "r1 under the default plan after its move",
    )
    .await;
    let s = statement(&inc, &w.key, "r1", None).await;
    assert_eq!(line(&s, "commission:t-1").amount, "50.00", "{s:?}");
    // r3 stayed in emea-north; then emea-north leaves emea: r3 falls to the default plan.
    expect("r3", "emea", "100.00", "r3 under the emea plan").await;
    submit(&w.ingest, &w.key, vec![team("emea-north", "", "")]).await;
    expect(
        "r3",
        "ae",
        "50.00",
        "r3 under the default plan once its team left emea",
    )
    .await;
    expect("r2", "ae", "50.00", "r2 untouched").await;
}
