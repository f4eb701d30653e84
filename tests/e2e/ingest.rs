//! Ingest against real Postgres and the real broker: validation, idempotency, auth, tenant
//! isolation, fan-out, the webhook, a paused broker, and garbage at both endpoints.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use spm_core::topics;
use spm_proto::common::v1::Money;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload as Out;
use spm_proto::ingest::v1 as pb;
use spm_proto::ingest::v1::crm_event::Payload;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_testkit::events::{deal, deal_in, event, event_at, money, payment, rep, reversal};
use spm_testkit::kafka::read_topic;
use spm_testkit::{TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::Code;
use tonic_types::StatusExt as _;

type Client = IngestServiceClient<tonic::transport::Channel>;

async fn submit_one(
    c: &mut Client,
    key: &str,
    e: pb::CrmEvent,
) -> Result<pb::EventAck, tonic::Status> {
    c.submit_event(authed(pb::SubmitEventRequest { event: Some(e) }, key))
        .await
        .map(|r| r.into_inner().ack.expect("ack"))
}

fn with<F: FnOnce(&mut pb::CrmEvent)>(mut e: pb::CrmEvent, f: F) -> pb::CrmEvent {
    f(&mut e);
    e
}

fn deal_mut<F: FnOnce(&mut ev::DealClosed)>(f: F) -> pb::CrmEvent {
    let mut e = deal("d-new", "1000.00", &[("r1", "100")]);
    if let Some(Payload::DealClosed(d)) = e.payload.as_mut() {
        d.deal_id = format!("d-{}", uuid::Uuid::new_v4().simple());
        f(d);
    }
    e
}

fn activity(kind: i32, f: impl FnOnce(&mut ev::ActivityLogged)) -> pb::CrmEvent {
    let mut a = ev::ActivityLogged {
        rep_id: "r1".into(),
        activity_id: "a-1".into(),
        kind,
        customer_id: String::new(),
        deal_id: String::new(),
        subject: String::new(),
    };
    f(&mut a);
    event(Payload::ActivityLogged(a))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_with_the_exact_field_and_write_nothing() {
    let env = TestEnv::new("ingest-bad").await;
    let ingest = env.start("ingest").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let mut c = IngestServiceClient::new(ingest.channel().await);
    let k = &t.admin_key;
    for e in [
        rep("r1", "", ""),
        rep("r2", "", ""),
        deal("d1", "1000.00", &[("r1", "100")]),
    ] {
        assert_eq!(
            submit_one(&mut c, k, e).await.expect("setup").status,
            pb::AckStatus::Accepted as i32
        );
    }

    let csat = |kind: ev::SurveyKind, score: u32| {
        event(Payload::SatisfactionRecorded(ev::SatisfactionRecorded {
            rep_id: "r1".into(),
            survey_id: "s-1".into(),
            kind: kind as i32,
            score,
            customer_id: String::new(),
        }))
    };
    let visit = ev::ActivityKind::Visit as i32;
    let cases: Vec<(&str, pb::CrmEvent, &str, &str)> = vec![
        (
            "empty id",
            with(rep("r9", "", ""), |e| e.event_id.clear()),
            "event.event_id",
            "is required",
        ),
        (
            "id not a uuid",
            with(rep("r9", "", ""), |e| e.event_id = "evt-1".into()),
            "event.event_id",
            "must be a UUID",
        ),
        (
            "no occurred_at",
            with(rep("r9", "", ""), |e| e.occurred_at = None),
            "event.occurred_at",
            "is required",
        ),
        (
            "future",
            event_at(
                Payload::RepUpserted(ev::RepUpserted {
                    rep_id: "r9".into(),
                    ..Default::default()
                }),
                Utc::now() + chrono::Duration::hours(1),
            ),
            "event.occurred_at",
            "in the future",
        ),
        (
            "too old",
            event_at(
                Payload::RepUpserted(ev::RepUpserted {
                    rep_id: "r9".into(),
                    ..Default::default()
                }),
                Utc::now() - chrono::Duration::days(500),
            ),
            "event.occurred_at",
            "400-day horizon",
        ),
        (
            "no payload",
            with(rep("r9", "", ""), |e| e.payload = None),
            "event.payload",
            "is required",
        ),
        (
            "long source",
            with(rep("r9", "", ""), |e| e.source = "s".repeat(101)),
            "event.source",
            "at most 100",
        ),
        (
            "activity without rep",
            activity(visit, |a| a.rep_id.clear()),
            "event.activity_logged.rep_id",
            "is required",
        ),
        (
            "activity kind unset",
            activity(0, |_| {}),
            "event.activity_logged.kind",
            "must be one of",
        ),
        (
            "activity kind unknown",
            activity(99, |_| {}),
            "event.activity_logged.kind",
            "must be one of",
        ),
        (
            "activity id with space",
            activity(visit, |a| a.activity_id = "a 1".into()),
            "event.activity_logged.activity_id",
            "whitespace",
        ),
        (
            "subject too long",
            activity(visit, |a| a.subject = "x".repeat(1001)),
            "event.activity_logged.subject",
            "at most 1000",
        ),
        (
            "csat 6",
            csat(ev::SurveyKind::Csat, 6),
            "event.satisfaction_recorded.score",
            "1..=5",
        ),
        (
            "nps 11",
            csat(ev::SurveyKind::Nps, 11),
            "event.satisfaction_recorded.score",
            "0..=10",
        ),
        (
            "deal without amount",
            deal_mut(|d| d.amount = None),
            "event.deal_closed.amount",
            "is required",
        ),
        (
            "comma decimal",
            deal_mut(|d| d.amount = Some(money("12,50", "EUR"))),
            "event.deal_closed.amount.amount",
            "plain decimal",
        ),
        (
            "negative amount",
            deal_mut(|d| d.amount = Some(money("-5", "EUR"))),
            "event.deal_closed.amount.amount",
            "greater than zero",
        ),
        (
            "yen with cents",
            deal_mut(|d| d.amount = Some(money("100.5", "JPY"))),
            "event.deal_closed.amount.amount",
            "0 decimal places",
        ),
        (
            "unknown currency",
            deal_mut(|d| d.amount = Some(money("10", "EURO"))),
            "event.deal_closed.amount.currency",
            "ISO 4217",
        ),
        (
            "no credits",
            deal_mut(|d| d.credits.clear()),
            "event.deal_closed.credits",
            "at least one",
        ),
        (
            "splits 90%",
            deal_mut(|d| {
                d.credits = vec![
                    ev::CreditSplit {
                        rep_id: "r1".into(),
                        share_percent: "60".into(),
                    },
                    ev::CreditSplit {
                        rep_id: "r2".into(),
                        share_percent: "30".into(),
                    },
                ]
            }),
            "event.deal_closed.credits",
            "sum to 100",
        ),
        (
            "zero share",
            deal_mut(|d| d.credits[0].share_percent = "0".into()),
            "event.deal_closed.credits[0].share_percent",
            "(0, 100]",
        ),
        (
            "rep credited twice",
            deal_mut(|d| {
                d.credits = vec![
                    ev::CreditSplit {
                        rep_id: "r1".into(),
                        share_percent: "50".into(),
                    },
                    ev::CreditSplit {
                        rep_id: "r1".into(),
                        share_percent: "50".into(),
                    },
                ]
            }),
            "event.deal_closed.credits[1].rep_id",
            "credited twice",
        ),
        (
            "line in other currency",
            deal_mut(|d| {
                d.lines = vec![ev::ProductLine {
                    product_id: "p".into(),
                    quantity: 1,
                    amount: Some(money("1000.00", "USD")),
                }]
            }),
            "event.deal_closed.lines[0].amount.currency",
            "deal currency",
        ),
        (
            "lines do not add up",
            deal_mut(|d| {
                d.lines = vec![ev::ProductLine {
                    product_id: "p".into(),
                    quantity: 1,
                    amount: Some(money("900.00", "EUR")),
                }]
            }),
            "event.deal_closed.lines",
            "sum to 900",
        ),
        (
            "zero quantity",
            deal_mut(|d| {
                d.lines = vec![ev::ProductLine {
                    product_id: "p".into(),
                    quantity: 0,
                    amount: Some(money("1000.00", "EUR")),
                }]
            }),
            "event.deal_closed.lines[0].quantity",
            "at least 1",
        ),
        (
            "deal already closed",
            deal_mut(|d| d.deal_id = "d1".into()),
            "event.deal_closed.deal_id",
            "already closed",
        ),
        (
            "usd without fx rate",
            deal_mut(|d| d.amount = Some(money("10.00", "USD"))),
            "event.deal_closed.amount.currency",
            "no FX rate",
        ),
        (
            "overpayment",
            payment("p-2", "d1", "1000.01"),
            "event.payment_received.amount.amount",
            "exceeds what is outstanding",
        ),
        (
            "zero payment",
            payment("p-3", "d1", "0"),
            "event.payment_received.amount.amount",
            "greater than zero",
        ),
        (
            "payment in usd",
            with(payment("p-4", "d1", "10.00"), |e| {
                if let Some(Payload::PaymentReceived(p)) = e.payload.as_mut() {
                    p.amount = Some(money("10.00", "USD"))
                }
            }),
            "event.payment_received.amount.currency",
            "deal currency",
        ),
        (
            "reversal kind unset",
            with(reversal("rv-1", "d1", None), |e| {
                if let Some(Payload::DealReversed(r)) = e.payload.as_mut() {
                    r.kind = 0
                }
            }),
            "event.deal_reversed.kind",
            "CANCELLATION or REFUND",
        ),
        (
            "reversal too large",
            reversal("rv-2", "d1", Some("1000.01")),
            "event.deal_reversed.amount.amount",
            "exceeds what is left",
        ),
        (
            "own manager",
            rep("r5", "", "r5"),
            "event.rep_upserted.manager_id",
            "own manager",
        ),
        (
            "bad email",
            with(rep("r6", "", ""), |e| {
                if let Some(Payload::RepUpserted(r)) = e.payload.as_mut() {
                    r.email = "not-an-email".into()
                }
            }),
            "event.rep_upserted.email",
            "not an e-mail",
        ),
        (
            "team its own parent",
            spm_testkit::events::team("t1", "t1", ""),
            "event.team_upserted.parent_team_id",
            "own parent",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut bad_ids = HashSet::new();
    for (name, e, field, desc) in cases {
        bad_ids.insert(e.event_id.clone());
        let err = submit_one(&mut c, k, e).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        let br = err
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{name}: no BadRequest details"));
        assert!(
            br.field_violations
                .iter()
                .any(|v| v.field == field && v.description.contains(desc)),
            "{name}: expected {field}: ..{desc}.., got {:?}",
            br.field_violations
        );
    }

    // Nothing stored and nothing published for any of them.
    let pool = env.pool("ingest").await;
    let stored: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM idempotency")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3, "only the three setup events are recorded");
    for t in [topics::ORG, topics::ACTIVITIES, topics::DEALS] {
        for r in read_topic(&env, t) {
            let cause = r.envelope.map(|e| e.causation_id).unwrap_or_default();
            assert!(!bad_ids.contains(&cause), "a rejected event reached {t}");
        }
    }
    let deals: i64 = sqlx::query_scalar("SELECT count(*) FROM deals")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(deals, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_conflicts_auth_and_tenant_isolation() {
    let env = TestEnv::new("ingest-idem").await;
    let ingest = env.start("ingest").await;
    let a = create_tenant(&env, &ingest, "tenant-a").await;
    let b = create_tenant(&env, &ingest, "tenant-b").await;
    wait_key_known(&ingest, &a.admin_key).await;
    wait_key_known(&ingest, &b.admin_key).await;
    let mut c = IngestServiceClient::new(ingest.channel().await);
    for k in [&a.admin_key, &b.admin_key] {
        submit_one(&mut c, k, rep("r1", "", "")).await.unwrap();
    }

    // Same id, same content: the original acknowledgement, marked duplicate.
    let d = deal("d1", "500.00", &[("r1", "100")]);
    let first = submit_one(&mut c, &a.admin_key, d.clone()).await.unwrap();
    assert_eq!(first.status, pb::AckStatus::Accepted as i32);
    assert_eq!(first.published, 1);
    let again = submit_one(&mut c, &a.admin_key, d.clone()).await.unwrap();
    assert_eq!(again.status, pb::AckStatus::Duplicate as i32);
    assert_eq!(again.accepted_at, first.accepted_at);
    // Same id, other content: ALREADY_EXISTS, nothing written.
    let changed = with(d.clone(), |e| {
        if let Some(Payload::DealClosed(x)) = e.payload.as_mut() {
            x.amount = Some(money("501.00", "EUR"))
        }
    });
    assert_eq!(
        submit_one(&mut c, &a.admin_key, changed.clone())
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    // In one batch: the repeat of an accepted event is a duplicate, a changed one a conflict.
    let fresh = deal("d2", "10.00", &[("r1", "100")]);
    let acks = c
        .submit_events(authed(
            pb::SubmitEventsRequest {
                events: vec![
                    fresh.clone(),
                    fresh.clone(),
                    with(fresh.clone(), |e| e.source = "other".into()),
                ],
            },
            &a.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .acks;
    let st: Vec<i32> = acks.iter().map(|a| a.status).collect();
    assert_eq!(
        st,
        [
            pb::AckStatus::Accepted as i32,
            pb::AckStatus::Duplicate as i32,
            pb::AckStatus::Conflict as i32
        ]
    );

    // The same client id in another tenant is another event.
    let other = submit_one(&mut c, &b.admin_key, d.clone()).await.unwrap();
    assert_eq!(other.status, pb::AckStatus::Accepted as i32);
    let records: Vec<ev::EventEnvelope> = read_topic(&env, topics::DEALS)
        .into_iter()
        .filter_map(|r| r.envelope)
        .filter(|e| e.causation_id == d.event_id)
        .collect();
    assert_eq!(records.len(), 2);
    let tenants: HashSet<&str> = records.iter().map(|e| e.tenant_id.as_str()).collect();
    assert_eq!(tenants, HashSet::from(["tenant-a", "tenant-b"]));
    assert_ne!(records[0].event_id, records[1].event_id);

    // Authentication: missing, garbage and another tenant's webhook secret.
    let none = c
        .submit_event(tonic::Request::new(pb::SubmitEventRequest {
            event: Some(deal("d3", "1.00", &[("r1", "100")])),
        }))
        .await;
    assert_eq!(none.unwrap_err().code(), Code::Unauthenticated);
    let garbage = c
        .submit_event(authed(
            pb::SubmitEventRequest {
                event: Some(deal("d3", "1.00", &[("r1", "100")])),
            },
            "spm_nothing",
        ))
        .await;
    assert_eq!(garbage.unwrap_err().code(), Code::Unauthenticated);

    // Roles: an integration key cannot administer.
    let mut admin = IngestAdminServiceClient::new(ingest.channel().await);
    let integ = admin
        .issue_api_key(authed(
            pb::IssueApiKeyRequest {
                role: ev::ApiKeyRole::Integration as i32,
                label: "crm".into(),
            },
            &a.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    wait_key_known(&ingest, &integ.api_key).await;
    let denied = admin
        .issue_api_key(authed(
            pb::IssueApiKeyRequest {
                role: ev::ApiKeyRole::Admin as i32,
                label: String::new(),
            },
            &integ.api_key,
        ))
        .await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(
        submit_one(&mut c, &integ.api_key, deal("d4", "1.00", &[("r1", "100")]))
            .await
            .unwrap()
            .status,
        pb::AckStatus::Accepted as i32
    );
    // Revoked: refused within the key cache's lifetime, nothing written.
    admin
        .revoke_api_key(authed(
            pb::RevokeApiKeyRequest {
                key_id: integ.key_id.clone(),
            },
            &a.admin_key,
        ))
        .await
        .unwrap();
    let key = integ.api_key.clone();
    eventually(
        Duration::from_secs(15),
        "the revoked key to be refused",
        || {
            let mut c = c.clone();
            let key = key.clone();
            async move {
                let r = submit_one(
                    &mut c,
                    &key,
                    deal(
                        &format!("d-{}", uuid::Uuid::new_v4().simple()),
                        "1.00",
                        &[("r1", "100")],
                    ),
                )
                .await;
                matches!(r, Err(s) if s.code() == Code::Unauthenticated).then_some(())
            }
        },
    )
    .await;
    // A wrong operator token cannot create tenants.
    let op = admin
        .create_tenant(authed(
            pb::CreateTenantRequest {
                tenant_id: "evil".into(),
                name: "x".into(),
                context: None,
            },
            "op-wrong",
        ))
        .await;
    assert_eq!(op.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deals_fan_out_one_credit_per_rep_to_the_cent_with_base_amounts() {
    let env = TestEnv::new("ingest-fanout").await;
    let ingest = env.start("ingest").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let mut admin = IngestAdminServiceClient::new(ingest.channel().await);
    admin
        .set_fx_rate(authed(
            pb::SetFxRateRequest {
                rate: Some(pb::FxRate {
                    currency: "USD".into(),
                    rate: "0.9".into(),
                    effective_from: "2020-01-01".into(),
                }),
            },
            &t.admin_key,
        ))
        .await
        .unwrap();
    let mut c = IngestServiceClient::new(ingest.channel().await);
    for r in ["a", "b", "c"] {
        submit_one(&mut c, &t.admin_key, rep(r, "", ""))
            .await
            .unwrap();
    }
    let d = deal_in("split", "100.01", "USD", &[("a", "60"), ("b", "40")]);
    assert_eq!(
        submit_one(&mut c, &t.admin_key, d.clone())
            .await
            .unwrap()
            .published,
        2
    );
    let p = payment("pay", "split", "50.00");
    let p = with(p, |e| {
        if let Some(Payload::PaymentReceived(x)) = e.payload.as_mut() {
            x.amount = Some(money("50.00", "USD"))
        }
    });
    assert_eq!(
        submit_one(&mut c, &t.admin_key, p.clone())
            .await
            .unwrap()
            .published,
        2
    );
    let thirds = deal(
        "thirds",
        "100.00",
        &[("a", "33.3333"), ("b", "33.3333"), ("c", "33.3334")],
    );
    let ack = submit_one(&mut c, &t.admin_key, thirds.clone())
        .await
        .unwrap();
    assert_eq!(ack.published, 3, "{ack:?}");

    let recs = read_topic(&env, topics::DEALS);
    let credits: Vec<(String, ev::DealCredited)> = recs
        .iter()
        .filter_map(|r| match r.envelope.as_ref()?.payload.as_ref()? {
            Out::DealCredited(x) if x.deal_id == "split" => Some((r.key.clone(), x.clone())),
            _ => None,
        })
        .collect();
    let amt = |m: &Option<Money>| m.as_ref().unwrap().amount.clone();
    let mut got: Vec<(String, String, String, String)> = credits
        .iter()
        .map(|(k, x)| {
            (
                k.clone(),
                x.rep_id.clone(),
                amt(&x.credited_amount),
                amt(&x.credited_base_amount),
            )
        })
        .collect();
    got.sort();
    // 100.01 USD: 60.01 + 40.00; base 90.01 EUR (0.9 x 100.01 = 90.009, half-even) = 54.01 + 36.00.
    assert_eq!(
        got,
        vec![
            ("acme/a".into(), "a".into(), "60.01".into(), "54.01".into()),
            ("acme/b".into(), "b".into(), "40.00".into(), "36.00".into()),
        ]
    );
    let pays: Vec<String> = recs
        .iter()
        .filter_map(|r| match r.envelope.as_ref()?.payload.as_ref()? {
            Out::PaymentCredited(x) => Some(format!("{}={}", x.rep_id, amt(&x.credited_amount))),
            _ => None,
        })
        .collect();
    assert_eq!(pays.len(), 2);
    assert!(
        pays.contains(&"a=30.00".to_owned()) && pays.contains(&"b=20.00".to_owned()),
        "{pays:?}"
    );
    let third_sum: rust_decimal::Decimal = recs
        .iter()
        .filter_map(|r| match r.envelope.as_ref()?.payload.as_ref()? {
            Out::DealCredited(x) if x.deal_id == "thirds" => amt(&x.credited_amount)
                .parse::<rust_decimal::Decimal>()
                .ok(),
            _ => None,
        })
        .sum();
    assert_eq!(
        third_sum,
        rust_decimal::Decimal::new(10000, 2),
        "credits sum to the deal exactly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_checks_signature_window_and_answers_with_json() {
    let env = TestEnv::new("ingest-webhook").await;
    let ingest = env.start("ingest").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let http = spm_testkit::http();
    let url = format!("http://{}/v1/events", ingest.http);
    let send = |body: Vec<u8>, secret: &str, ts: i64, tenant: &str| {
        http.post(&url)
            .header("x-spm-tenant", tenant)
            .header("x-spm-timestamp", ts.to_string())
            .header(
                "x-spm-signature",
                spm_core::signature::sign(secret, ts, &body),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let body = |events: &[pb::CrmEvent]| {
        serde_json::to_vec(&spm_proto::json::to_json(&pb::SubmitEventsRequest {
            events: events.to_vec(),
        }))
        .unwrap()
    };
    let now = Utc::now().timestamp();

    let ok = send(
        body(&[rep("r1", "", ""), deal("d1", "10.00", &[("r1", "100")])]),
        &t.webhook_secret,
        now,
        "acme",
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let j: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(j["acks"][1]["status"], "ACK_STATUS_ACCEPTED");

    let bad_sig = send(body(&[rep("r2", "", "")]), "wrong", now, "acme")
        .await
        .unwrap();
    assert_eq!(bad_sig.status(), 401);
    assert_eq!(
        bad_sig.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthenticated"
    );
    let stale = send(
        body(&[rep("r2", "", "")]),
        &t.webhook_secret,
        now - 3600,
        "acme",
    )
    .await
    .unwrap();
    assert_eq!(stale.status(), 401);
    let other_tenant = send(
        body(&[rep("r2", "", "")]),
        &t.webhook_secret,
        now,
        "someone-else",
    )
    .await
    .unwrap();
    assert_eq!(other_tenant.status(), 401);

    let mixed = send(
        body(&[rep("r3", "", ""), deal("d2", "-1", &[("r1", "100")])]),
        &t.webhook_secret,
        now,
        "acme",
    )
    .await
    .unwrap();
    assert_eq!(mixed.status(), 422);
    let j: serde_json::Value = mixed.json().await.unwrap();
    assert_eq!(
        j["field_violations"][0]["field"],
        "events[1].deal_closed.amount.amount"
    );
    assert_eq!(
        j["acks"][0]["status"], "ACK_STATUS_ACCEPTED",
        "the valid event of the batch was accepted"
    );

    let not_json = send(b"{not json".to_vec(), &t.webhook_secret, now, "acme")
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let huge = send(vec![b' '; 2 * 1024 * 1024], &t.webhook_secret, now, "acme")
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_means_unavailable_never_accepted_then_lost() {
    let env = TestEnv::with_private_broker("ingest-pause").await;
    let ingest = env
        .start_with("ingest", &[("KAFKA_DELIVERY_TIMEOUT_MS", "3000")])
        .await;
    let scoring = env.start("scoring").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let mut c = IngestServiceClient::new(ingest.channel().await);
    submit_one(&mut c, &t.admin_key, rep("r1", "", ""))
        .await
        .unwrap();

    let mut acked = Vec::new();
    let mut unavailable = 0;
    for i in 0..10 {
        let d = deal(&format!("before-{i}"), "10.00", &[("r1", "100")]);
        assert_eq!(
            submit_one(&mut c, &t.admin_key, d.clone())
                .await
                .unwrap()
                .status,
            pb::AckStatus::Accepted as i32
        );
        acked.push(d.event_id);
    }
    env.broker.as_ref().unwrap().pause();
    for i in 0..3 {
        let d = deal(&format!("during-{i}"), "10.00", &[("r1", "100")]);
        let started = Instant::now();
        let r = submit_one(&mut c, &t.admin_key, d.clone()).await;
        let took = started.elapsed();
        match r {
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    s.get_details_retry_info().is_some(),
                    "UNAVAILABLE carries retry advice"
                );
                unavailable += 1;
            }
            Ok(a) => panic!("accepted while the broker is paused: {a:?}"),
        }
        assert!(
            took < Duration::from_secs(8),
            "failed within a bounded time ({took:?})"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    env.broker.as_ref().unwrap().resume();
    assert_eq!(unavailable, 3);
    // It recovers by itself.
    let after = eventually(Duration::from_secs(60), "ingest to accept again", || {
        let mut c = c.clone();
        let key = t.admin_key.clone();
        async move {
            let d = deal(&format!("after-{}", uuid::Uuid::new_v4().simple()), "10.00", &[("r1", "100")]);
            let id = d.event_id.clone();
            matches!(submit_one(&mut c, &key, d).await, Ok(a) if a.status == pb::AckStatus::Accepted as i32).then_some(id)
        }
    })
    .await;
    acked.push(after);

    // Every acknowledged event is on the topic, and counted once downstream.
    let on_topic: HashSet<String> = read_topic(&env, topics::DEALS)
        .into_iter()
        .filter_map(|r| r.envelope.map(|e| e.causation_id))
        .collect();
    for id in &acked {
        assert!(
            on_topic.contains(id),
            "acked event {id} is not on the topic"
        );
    }
    let pool = env.pool("scoring").await;
    let want = i64::try_from(acked.len()).unwrap();
    eventually(Duration::from_secs(60), "scoring to count every acked deal", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT source_event_id) FROM facts WHERE kind = 'deal' AND deal_id NOT LIKE 'during-%'")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == want).then_some(())
        }
    })
    .await;
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) - count(DISTINCT deal_id) FROM facts WHERE kind = 'deal'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0, "nothing counted twice");
    drop(scoring);
}

mod raw {
    //! A gRPC codec sending arbitrary bytes as the request message.
    use bytes::{Buf as _, BufMut as _};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub struct Raw;
    pub struct E;
    pub struct D;
    impl Encoder for E {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for D {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let v = src.chunk().to_vec();
            src.advance(v.len());
            Ok(Some(v))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = E;
        type Decoder = D;
        fn encoder(&mut self) -> E {
            E
        }
        fn decoder(&mut self) -> D {
            D
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_both_endpoints_never_panics_nor_5xx() {
    use rand::{Rng as _, SeedableRng as _};
    let env = TestEnv::new("ingest-fuzz").await;
    let ingest = env.start("ingest").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let http = spm_testkit::http();
    let url = format!("http://{}/v1/events", ingest.http);
    let json_pieces = [
        "{}",
        "[]",
        "null",
        "{\"events\":null}",
        "{\"events\":[{}]}",
        "{\"events\":[{\"eventId\":1}]}",
        "{\"events\":[{\"dealClosed\":{\"amount\":{\"amount\":\"1e999\",\"currency\":\"EUR\"}}}]}",
        "{\"events\":[{\"eventId\":\"00000000-0000-0000-0000-000000000000\",\"occurredAt\":\"9999-12-31T23:59:59Z\"}]}",
        "{\"events\":[{\"repUpserted\":{\"repId\":\"\\u0000\"}}]}",
        "{\"events\":\"x\"}",
    ];
    for i in 0..300 {
        let body: Vec<u8> = if i % 3 == 0 {
            json_pieces[i % json_pieces.len()].as_bytes().to_vec()
        } else {
            (0..rng.random_range(0..400))
                .map(|_| rng.random::<u8>())
                .collect()
        };
        let ts = Utc::now().timestamp();
        let signed = i % 2 == 0;
        let mut req = http
            .post(&url)
            .header("x-spm-tenant", "acme")
            .header("x-spm-timestamp", ts.to_string());
        req = req.header(
            "x-spm-signature",
            if signed {
                spm_core::signature::sign(&t.webhook_secret, ts, &body)
            } else {
                "v1=00".into()
            },
        );
        let r = req.body(body).send().await.expect("webhook answers");
        assert!(
            r.status().as_u16() < 500,
            "5xx for client garbage: {}",
            r.status()
        );
    }
    let mut grpc = tonic::client::Grpc::new(ingest.channel().await);
    for _ in 0..300 {
        let bytes: Vec<u8> = (0..rng.random_range(0..300))
            .map(|_| rng.random::<u8>())
            .collect();
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/spm.ingest.v1.IngestService/SubmitEvents",
        );
        match grpc
            .unary(authed(bytes, &t.admin_key), path, raw::Raw)
            .await
        {
            Ok(_) => {}
            Err(s) => assert!(
                !matches!(s.code(), Code::Internal | Code::Unknown | Code::Unavailable),
                "server error for client garbage: {s:?}"
            ),
        }
    }
    // Still healthy, and the garbage wrote nothing but what was valid.
    let mut c = IngestServiceClient::new(ingest.channel().await);
    assert_eq!(
        submit_one(&mut c, &t.admin_key, rep("r1", "", ""))
            .await
            .unwrap()
            .status,
        pb::AckStatus::Accepted as i32
    );
}

/// Concurrent one-event requests are combined into shared transactions under load; each
/// request still gets exactly its own acknowledgement, its records carry its own trace, a
/// bad event fails only its request, and a repeated id is accepted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_combine_yet_each_keeps_its_ack_and_trace() {
    let env = TestEnv::new("coalesce").await;
    let ingest = env.start("ingest").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let ch = ingest.channel().await;
    let mut c = IngestServiceClient::new(ch.clone());
    submit_one(&mut c, &t.admin_key, rep("r1", "", ""))
        .await
        .expect("rep");

    const UNIQUE: usize = 240;
    const SAME: usize = 40;
    const BAD: usize = 20;
    let shared = spm_testkit::events::activity("r1", ev::ActivityKind::Call);
    let trace_of = |k: usize| format!("{:032x}", k + 1);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..UNIQUE + SAME + BAD {
        let e = if k < UNIQUE {
            spm_testkit::events::activity("r1", ev::ActivityKind::Visit)
        } else if k < UNIQUE + SAME {
            shared.clone()
        } else {
            // No rep at all: invalid whatever arrives later.
            spm_testkit::events::activity("", ev::ActivityKind::Visit)
        };
        let mut req = authed(
            pb::SubmitEventRequest {
                event: Some(e.clone()),
            },
            &t.admin_key,
        );
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", trace_of(k))
                .parse()
                .expect("header"),
        );
        let mut c = IngestServiceClient::new(ch.clone());
        tasks.spawn(async move { (k, e.event_id, c.submit_event(req).await) });
    }
    let mut shared_acks = Vec::new();
    let mut unique_ids = std::collections::HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (k, id, res) = r.expect("task");
        if k < UNIQUE + SAME {
            let ack = res
                .expect("valid events are acknowledged")
                .into_inner()
                .ack
                .expect("ack");
            assert_eq!(ack.event_id, id, "request {k} got another request's ack");
            if k < UNIQUE {
                assert_eq!(ack.status, pb::AckStatus::Accepted as i32, "{ack:?}");
                unique_ids.insert(id, k);
            } else {
                shared_acks.push(ack);
            }
        } else {
            let st = res.expect_err("an event without a rep is rejected");
            assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
            let fields: Vec<String> = st
                .get_details_bad_request()
                .expect("field details")
                .field_violations
                .into_iter()
                .map(|v| v.field)
                .collect();
            assert_eq!(fields, ["event.activity_logged.rep_id"], "{st:?}");
        }
    }
    assert_eq!(unique_ids.len(), UNIQUE);
    let accepted = shared_acks
        .iter()
        .filter(|a| a.status == pb::AckStatus::Accepted as i32)
        .count();
    assert_eq!(
        accepted, 1,
        "one copy of a repeated id is accepted: {shared_acks:?}"
    );
    assert!(
        shared_acks
            .iter()
            .all(|a| a.status == pb::AckStatus::Accepted as i32
                || a.status == pb::AckStatus::Duplicate as i32),
        "{shared_acks:?}"
    );
    let first = shared_acks[0].accepted_at;
    assert!(
        shared_acks.iter().all(|a| a.accepted_at == first),
        "every copy reports the one acceptance time: {shared_acks:?}"
    );

    // Every accepted event published once, carrying the trace of the request that sent it.
    let records = read_topic(&env, topics::ACTIVITIES);
    let mut seen = HashSet::new();
    for r in &records {
        let cause = r.envelope.as_ref().expect("envelope").causation_id.clone();
        assert!(seen.insert(cause.clone()), "{cause} published twice");
        if let Some(&k) = unique_ids.get(&cause) {
            let tp = r.header("traceparent").expect("traceparent");
            assert_eq!(
                tp.split('-').nth(1),
                Some(trace_of(k).as_str()),
                "the record of request {k} carries another request's trace"
            );
        }
    }
    assert_eq!(
        records.len(),
        UNIQUE + 1,
        "unique events plus the repeated one"
    );

    // And the requests were in fact combined: fewer transactions than requests.
    let txs = ingest
        .metric_sum("spm_ingest_batch_requests_count", &[])
        .await;
    let reqs = ingest
        .metric_sum("spm_ingest_batch_requests_sum", &[])
        .await;
    assert!(
        txs < reqs,
        "{reqs} requests in {txs} transactions: nothing was combined"
    );
}
