//! Arrival order at the edge: CRMs deliver out of order (Salesforce outbound messages and
//! HubSpot webhooks are documented as unordered and at-least-once). A stream whose
//! reversals, payments and deals for unknown reps come first, sent once with no client
//! resend, ends with the same statements as the same events in business order; what waits
//! shows in the admin list meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, Utc};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use spm_core::period::{Calendar, PeriodKind};
use spm_proto::common::v1 as common;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::ingest::v1 as pb;
use spm_proto::ingest::v1::crm_event::Payload;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_testkit::events::{deal, payment, rep, reversal};
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::Code;

use crate::incentive::plan;

fn at(mut e: pb::CrmEvent, t: DateTime<Utc>) -> pb::CrmEvent {
    e.occurred_at = Some(spm_proto::ext::timestamp(t));
    e
}

/// Reps, 14 deals (some split 60/40), payments and partial refunds, in business order.
fn business_order(base: DateTime<Utc>) -> Vec<pb::CrmEvent> {
    let reps = ["r1", "r2", "r3", "r4"];
    let mut out: Vec<pb::CrmEvent> = reps.iter().map(|r| at(rep(r, "", ""), base)).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for i in 0..14i64 {
        let id = format!("d{i}");
        let cents: i64 = rng.random_range(50_000..1_500_000);
        let amount = rust_decimal::Decimal::new(cents, 2);
        let a = reps[usize::try_from(i).unwrap() % 4];
        let b = reps[usize::try_from(i + 1).unwrap() % 4];
        let splits: Vec<(&str, &str)> = if i % 3 == 0 {
            vec![(a, "60"), (b, "40")]
        } else {
            vec![(a, "100")]
        };
        let t = base + Span::seconds(10 * i + 1);
        out.push(at(deal(&id, &amount.to_string(), &splits), t));
        if i % 2 == 0 {
            let part = (amount / rust_decimal::Decimal::TWO).round_dp(2);
            out.push(at(
                payment(&format!("{id}-p"), &id, &part.to_string()),
                t + Span::seconds(2),
            ));
        }
        if i % 5 == 1 {
            let part = (amount / rust_decimal::Decimal::from(4)).round_dp(2);
            out.push(at(
                reversal(&format!("{id}-r"), &id, Some(&part.to_string())),
                t + Span::seconds(4),
            ));
        }
    }
    out
}

async fn send(ingest: &Service, key: &str, events: Vec<pb::CrmEvent>) -> Vec<pb::EventAck> {
    let mut c = IngestServiceClient::new(ingest.channel().await);
    c.submit_events(authed(pb::SubmitEventsRequest { events }, key))
        .await
        .expect("submit")
        .into_inner()
        .acks
}

async fn parked(
    ingest: &Service,
    key: &str,
    waiting_for: &str,
    states: &[pb::ParkedState],
) -> pb::ListParkedEventsResponse {
    IngestAdminServiceClient::new(ingest.channel().await)
        .list_parked_events(authed(
            pb::ListParkedEventsRequest {
                waiting_for: waiting_for.into(),
                states: states.iter().map(|s| *s as i32).collect(),
                limit: 1000,
                ..Default::default()
            },
            key,
        ))
        .await
        .expect("list parked")
        .into_inner()
}

/// A statement line as compared: key, amount, (status, amount) parts.
type LineSeen = (String, String, Vec<(i32, String)>);

/// Every rep's statement in each period: (period, rep) -> (total, lines).
async fn statements(
    incentive: &Service,
    key: &str,
    periods: &BTreeSet<String>,
) -> BTreeMap<(String, String), (String, Vec<LineSeen>)> {
    let inc = IncentiveServiceClient::new(incentive.channel().await);
    let mut out = BTreeMap::new();
    for p in periods {
        for r in ["r1", "r2", "r3", "r4"] {
            let s = inc
                .clone()
                .get_statement(authed(
                    ipb::GetStatementRequest {
                        as_of: None,
                        rep_id: r.into(),
                        period: Some(common::Period {
                            kind: common::PeriodKind::Month as i32,
                            key: p.clone(),
                        }),
                        with_explanations: false,
                    },
                    key,
                ))
                .await
                .expect("statement")
                .into_inner()
                .statement
                .expect("statement");
            let mut lines: Vec<LineSeen> = s
                .lines
                .iter()
                .map(|l| {
                    let mut st: Vec<(i32, String)> = l
                        .by_status
                        .iter()
                        .map(|b| (b.status, b.amount.clone()))
                        .collect();
                    st.sort();
                    (l.key.clone(), l.amount.clone(), st)
                })
                .collect();
            lines.sort();
            out.insert((p.clone(), r.to_owned()), (s.total, lines));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffled_stream_sent_once_ends_with_the_statements_of_business_order() {
    let env = TestEnv::new("order").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let ordered = create_tenant(&env, &ingest, "ordered").await;
    let shuffled = create_tenant(&env, &ingest, "shuffled").await;
    for t in [&ordered, &shuffled] {
        wait_key_known(&ingest, &t.admin_key).await;
        wait_key_known(&incentive, &t.admin_key).await;
        IncentiveAdminServiceClient::new(incentive.channel().await)
            .put_plan(authed(
                ipb::PutPlanRequest {
                    plan: Some(plan()),
                    draft: false,
                },
                &t.admin_key,
            ))
            .await
            .expect("plan");
    }
    let base = Utc::now() - Span::minutes(10);
    let events = business_order(base);
    let cal = Calendar::new("UTC", 1).unwrap();
    let periods: BTreeSet<String> = [base, base + Span::minutes(5)]
        .iter()
        .map(|t| cal.period(PeriodKind::Month, *t).key)
        .collect();

    // In business order, in one request: everything applies at once.
    let acks = send(&ingest, &ordered.admin_key, events.clone()).await;
    assert!(
        acks.iter()
            .all(|a| a.status == pb::AckStatus::Accepted as i32),
        "{acks:?}"
    );

    // Shuffled: reversals and payments first, then the deals, the reps last; one event in
    // ten delivered twice; sent once, in small requests, never resent.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let kind = |e: &pb::CrmEvent| match e.payload {
        Some(Payload::DealReversed(_) | Payload::PaymentReceived(_)) => 0,
        Some(Payload::DealClosed(_)) => 1,
        _ => 2,
    };
    let mut first: Vec<pb::CrmEvent> = events.iter().filter(|e| kind(e) < 2).cloned().collect();
    first.shuffle(&mut rng);
    first.sort_by_key(|e| kind(e));
    let redelivered: Vec<pb::CrmEvent> = first.iter().step_by(10).cloned().collect();
    first.extend(redelivered);
    let mut pending = 0;
    for chunk in first.chunks(5) {
        for a in send(&ingest, &shuffled.admin_key, chunk.to_vec()).await {
            match pb::AckStatus::try_from(a.status) {
                Ok(pb::AckStatus::AcceptedPending) => {
                    assert!(!a.waiting_for.is_empty(), "{a:?}");
                    pending += 1;
                }
                Ok(pb::AckStatus::Duplicate) => {
                    assert!(a.message.contains("waiting for"), "{a:?}");
                }
                _ => panic!("before its rep, nothing applies: {a:?}"),
            }
        }
    }
    let deals_and_more = events.iter().filter(|e| kind(e) < 2).count();
    assert_eq!(pending, deals_and_more, "every first delivery waits");

    // The admin list shows what waits, and for what.
    let waiting = parked(&ingest, &shuffled.admin_key, "", &[]).await;
    assert_eq!(usize::try_from(waiting.total).unwrap(), deals_and_more);
    let of_d0 = parked(&ingest, &shuffled.admin_key, "deal:d0", &[]).await;
    assert_eq!(
        of_d0
            .events
            .iter()
            .map(|p| p.kind.as_str())
            .collect::<Vec<_>>(),
        ["payment_received"],
        "{of_d0:?}"
    );
    let for_reps = parked(&ingest, &shuffled.admin_key, "rep", &[]).await;
    assert_eq!(
        usize::try_from(for_reps.total).unwrap(),
        14,
        "the deals wait for reps"
    );
    assert!(
        for_reps
            .events
            .iter()
            .all(|p| p.state == pb::ParkedState::Waiting as i32
                && p.waiting_for.iter().all(|w| w.starts_with("rep:")))
    );
    // The gauge counts them within its refresh interval.
    eventually(Duration::from_secs(30), "the parked gauge", || {
        let ingest = &ingest;
        async move {
            let n = ingest
                .metric_sum("spm_ingest_parked_events", &["state=\"waiting\""])
                .await;
            (n >= f64::from(u32::try_from(deals_and_more).unwrap())).then_some(())
        }
    })
    .await;

    // The reps arrive, in reverse: everything is released.
    let mut reps: Vec<pb::CrmEvent> = events.iter().filter(|e| kind(e) == 2).cloned().collect();
    reps.reverse();
    for r in reps {
        let acks = send(&ingest, &shuffled.admin_key, vec![r]).await;
        assert_eq!(acks[0].status, pb::AckStatus::Accepted as i32, "{acks:?}");
    }
    assert_eq!(parked(&ingest, &shuffled.admin_key, "", &[]).await.total, 0);
    assert_eq!(
        usize::try_from(
            parked(
                &ingest,
                &shuffled.admin_key,
                "",
                &[pb::ParkedState::Released]
            )
            .await
            .total
        )
        .unwrap(),
        deals_and_more
    );

    let got = eventually(Duration::from_secs(60), "the same statements", || {
        let (incentive, periods) = (&incentive, &periods);
        let (a, b) = (&ordered.admin_key, &shuffled.admin_key);
        async move {
            let want = statements(incentive, a, periods).await;
            let got = statements(incentive, b, periods).await;
            // 19 commission lines (14 deals, 5 of them split) and 4 clawbacks (3 refunds,
            // one of a split deal).
            let lines: usize = want.values().map(|(_, l)| l.len()).sum();
            (lines == 19 + 4 && got == want).then_some(got)
        }
    })
    .await;
    // And it stays so (nothing was still on its way to one of them).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        statements(&incentive, &ordered.admin_key, &periods).await,
        got
    );
    assert_eq!(
        statements(&incentive, &shuffled.admin_key, &periods).await,
        got
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_that_cannot_apply_is_reported_and_an_admin_can_discard_one() {
    let env = TestEnv::new("order-discard").await;
    let ingest = env.start("ingest").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let k = &t.admin_key;
    // A payment larger than its deal turns out to be, and one for a deal that never comes.
    let too_much = payment("p-big", "d1", "5000.00");
    let orphan = payment("p-orphan", "never", "10.00");
    let acks = send(
        &ingest,
        k,
        vec![too_much.clone(), orphan.clone(), orphan.clone()],
    )
    .await;
    assert_eq!(acks[0].waiting_for, ["deal:d1"]);
    assert_eq!(acks[1].status, pb::AckStatus::AcceptedPending as i32);
    assert_eq!(acks[1].waiting_for, ["deal:never"]);
    // Delivered twice in one request: the copy is a duplicate that says what it waits for.
    assert_eq!(acks[2].status, pb::AckStatus::Duplicate as i32);
    assert_eq!(
        acks[2].message,
        "already accepted; still waiting for deal:never"
    );
    let acks = send(
        &ingest,
        k,
        vec![rep("r1", "", ""), deal("d1", "1000.00", &[("r1", "100")])],
    )
    .await;
    assert!(
        acks.iter()
            .all(|a| a.status == pb::AckStatus::Accepted as i32),
        "{acks:?}"
    );

    let failed = parked(&ingest, k, "", &[pb::ParkedState::Failed]).await;
    assert_eq!(failed.events.len(), 1, "{failed:?}");
    assert_eq!(failed.events[0].event_id, too_much.event_id);
    assert!(
        failed.events[0]
            .error
            .contains("exceeds what is outstanding"),
        "{failed:?}"
    );
    // Resending it says so.
    let acks = send(&ingest, k, vec![too_much.clone()]).await;
    assert_eq!(acks[0].status, pb::AckStatus::Duplicate as i32);
    assert!(acks[0].message.contains("could not be applied"), "{acks:?}");

    let mut adm = IngestAdminServiceClient::new(ingest.channel().await);
    let no_reason = adm
        .discard_parked_event(authed(
            pb::DiscardParkedEventRequest {
                event_id: orphan.event_id.clone(),
                reason: " ".into(),
            },
            k,
        ))
        .await
        .expect_err("a reason is required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let d = adm
        .discard_parked_event(authed(
            pb::DiscardParkedEventRequest {
                event_id: orphan.event_id.clone(),
                reason: "deal never existed in the CRM".into(),
            },
            k,
        ))
        .await
        .expect("discard")
        .into_inner()
        .event
        .unwrap();
    assert_eq!(d.state, pb::ParkedState::Discarded as i32);
    assert_eq!(d.discard_reason, "deal never existed in the CRM");
    assert!(d.discarded_by.starts_with("key:"), "{d:?}");
    let again = adm
        .discard_parked_event(authed(
            pb::DiscardParkedEventRequest {
                event_id: orphan.event_id.clone(),
                reason: "twice".into(),
            },
            k,
        ))
        .await
        .expect_err("already discarded");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("discarded"), "{again:?}");
    let unknown = adm
        .discard_parked_event(authed(
            pb::DiscardParkedEventRequest {
                event_id: uuid::Uuid::new_v4().to_string(),
                reason: "x".into(),
            },
            k,
        ))
        .await
        .expect_err("not parked");
    assert_eq!(unknown.code(), Code::NotFound);
    // The discarded one is gone from what needs attention and stays a duplicate.
    assert_eq!(parked(&ingest, k, "", &[]).await.total, 1);
    let acks = send(&ingest, k, vec![orphan]).await;
    assert_eq!(acks[0].status, pb::AckStatus::Duplicate as i32);
    assert!(acks[0].message.contains("discarded"), "{acks:?}");
    // Even if its deal now arrives, a discarded payment is not applied.
    let acks = send(&ingest, k, vec![deal("never", "100.00", &[("r1", "100")])]).await;
    assert_eq!(acks[0].status, pb::AckStatus::Accepted as i32);
    assert_eq!(
        parked(&ingest, k, "", &[pb::ParkedState::Released])
            .await
            .total,
        0
    );
}
