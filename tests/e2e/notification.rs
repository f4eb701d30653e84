//! Notification end to end: webhooks with retries and dead endpoints, e-mail through a real
//! SMTP server, the live feed after a deal, redelivery, quiet hours, rate limits, isolation.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload as Out;
use spm_proto::incentive::v1 as ipb;
use spm_proto::notification::v1 as pb;
use spm_proto::notification::v1::notification_admin_service_client::NotificationAdminServiceClient;
use spm_proto::notification::v1::notification_service_client::NotificationServiceClient;
use spm_testkit::events::{deal, rep};
use spm_testkit::kafka::publish_envelope;
use spm_testkit::webhook::Receiver;
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};

use crate::scoring::submit;

type Feed = NotificationServiceClient<tonic::transport::Channel>;

fn earning(tenant: &str, rep: &str, amount: &str) -> ev::EventEnvelope {
    let now = spm_proto::ext::timestamp(Utc::now());
    ev::EventEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant.into(),
        occurred_at: Some(now),
        recorded_at: Some(now),
        source: "test".into(),
        tenant_context: Some(common::TenantContext {
            time_zone: "UTC".into(),
            fiscal_year_start_month: 1,
            base_currency: "EUR".into(),
        }),
        causation_id: String::new(),
        payload: Some(Out::EarningPosted(ev::EarningPosted {
            line_id: uuid::Uuid::new_v4().to_string(),
            rep_id: rep.into(),
            period: Some(common::Period {
                kind: common::PeriodKind::Month as i32,
                key: "2026-11".into(),
            }),
            kind: ev::EarningKind::Commission as i32,
            status: ev::EarningStatus::Payable as i32,
            amount: Some(common::Money {
                amount: amount.into(),
                currency: "EUR".into(),
            }),
            deal_id: "d1".into(),
            summary: format!("5% of {amount} x 20 EUR"),
            explanation_json: "{}".into(),
            period_total: Some(common::Money {
                amount: amount.into(),
                currency: "EUR".into(),
            }),
            ..Default::default()
        })),
    }
}

struct World {
    env: TestEnv,
    ingest: Service,
    notification: Service,
    key: String,
}

async fn world(name: &str, extra: &[(&str, &str)]) -> World {
    let env = TestEnv::new(name).await;
    let ingest = env.start("ingest").await;
    let notification = env.start_with("notification", extra).await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&notification, &t.admin_key).await;
    submit(
        &ingest,
        &t.admin_key,
        vec![rep("r1", "", "m1"), rep("r2", "", "m1"), rep("m1", "", "")],
    )
    .await;
    World {
        env,
        ingest,
        notification,
        key: t.admin_key,
    }
}

async fn deliveries(n: &Service, key: &str, status: &str) -> Vec<pb::Delivery> {
    let mut c = NotificationServiceClient::new(n.channel().await);
    c.list_deliveries(authed(
        pb::ListDeliveriesRequest {
            status: status.into(),
            notification_id: String::new(),
            limit: 1000,
        },
        key,
    ))
    .await
    .unwrap()
    .into_inner()
    .deliveries
}

async fn feed(c: &Feed, key: &str, recipient: &str) -> Vec<pb::Notification> {
    let mut c = c.clone();
    c.list_notifications(authed(
        pb::ListNotificationsRequest {
            recipient: recipient.into(),
            unread_only: false,
            limit: 500,
        },
        key,
    ))
    .await
    .unwrap()
    .into_inner()
    .notifications
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_until_accepted_and_a_hanging_endpoint_delays_nobody() {
    let w = world(
        "notify-webhook",
        &[
            ("SPM_DELIVERY_BACKOFF_MS", "100"),
            ("SPM_DELIVERY_MAX_ATTEMPTS", "3"),
            ("SPM_DELIVERY_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    // An endpoint that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let rx = Receiver::start().await;
    rx.fail_first.store(2, Ordering::SeqCst);
    let mut adm = NotificationAdminServiceClient::new(w.notification.channel().await);
    let rules = vec!["commission_earned".to_owned()];
    let hook = adm
        .put_webhook(authed(
            pb::PutWebhookRequest {
                url: rx.url(),
                rules: rules.clone(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    rx.set_secret(&hook.secret);
    adm.put_webhook(authed(
        pb::PutWebhookRequest {
            url: format!("http://{hang_addr}/hook"),
            rules,
        },
        &w.key,
    ))
    .await
    .unwrap();
    let bad = adm
        .put_webhook(authed(
            pb::PutWebhookRequest {
                url: "ftp://x".into(),
                rules: vec!["nope".into()],
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let started = Instant::now();
    publish_envelope(
        &w.env,
        topics::EARNINGS,
        "acme/r1",
        &earning("acme", "r1", "400.00"),
    )
    .await;
    eventually(Duration::from_secs(30), "one accepted delivery", || {
        let rx = rx.clone();
        async move { (rx.accepted().len() == 1).then_some(()) }
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the hanging endpoint delayed the healthy one: {took:?}"
    );
    assert_eq!(
        rx.requests.load(Ordering::SeqCst),
        3,
        "two failures and the success"
    );
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(rx.accepted()[0].body["rule"], "commission_earned");

    // The log records the outcome just after the receiver has answered.
    let delivered = eventually(Duration::from_secs(10), "the delivery logged", || {
        let (n, key) = (&w.notification, w.key.clone());
        async move {
            let d = deliveries(n, &key, "delivered").await;
            d.iter().any(|d| d.channel == "webhook").then_some(d)
        }
    })
    .await;
    let hooked: Vec<&pb::Delivery> = delivered
        .iter()
        .filter(|d| d.channel == "webhook")
        .collect();
    assert_eq!(hooked.len(), 1);
    let codes: Vec<u32> = hooked[0].attempt_log.iter().map(|a| a.code).collect();
    assert_eq!(codes, [500, 500, 200], "three attempts logged");
    assert_eq!(hooked[0].attempts, 3);

    // The hanging endpoint is dead after its last attempt, and visible.
    let dead = eventually(
        Duration::from_secs(30),
        "the hanging endpoint's delivery to die",
        || {
            let (n, k) = (&w.notification, w.key.clone());
            async move {
                let d = deliveries(n, &k, "dead").await;
                (!d.is_empty()).then_some(d)
            }
        },
    )
    .await;
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].target.contains(&hang_addr.to_string()));
    assert!(!dead[0].last_error.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_real_smtp_server() {
    let smtp = spm_testkit::smtp::Smtp::start(std::path::Path::new(&std::env::temp_dir()));
    let url = smtp.url();
    let w = world(
        "notify-email",
        &[
            ("SPM_SMTP_URL", &url),
            ("SPM_SMTP_FROM", "SPM <spm@example.com>"),
        ],
    )
    .await;
    publish_envelope(
        &w.env,
        topics::EARNINGS,
        "acme/r1",
        &earning("acme", "r1", "400.00"),
    )
    .await;
    let msg = eventually(Duration::from_secs(30), "the e-mail", || {
        let m = smtp.messages();
        async move { m.into_iter().next() }
    })
    .await;
    assert!(msg.contains("To: r1@example.com"), "{msg}");
    assert!(
        msg.contains("Subject: [SPM] You earned 400.00 EUR (Commission)"),
        "{msg}"
    );
    assert!(msg.contains("400.00 EUR"), "{msg}");
    assert!(
        msg.contains("multipart/alternative") && msg.contains("text/html"),
        "plain text and HTML: {msg}"
    );
    // Logged as delivered once the SMTP server has accepted it.
    eventually(
        Duration::from_secs(10),
        "the e-mail delivery logged",
        || {
            let (n, key) = (&w.notification, w.key.clone());
            async move {
                deliveries(n, &key, "delivered")
                    .await
                    .iter()
                    .any(|x| x.channel == "email" && x.target == "r1@example.com")
                    .then_some(())
            }
        },
    )
    .await;
    drop(w.ingest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_updates_live_after_a_deal_is_ingested() {
    let env = TestEnv::new("notify-live").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let notification = env.start("notification").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    for s in [&ingest, &incentive, &notification] {
        wait_key_known(s, &t.admin_key).await;
    }
    let mut adm =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            incentive.channel().await,
        );
    adm.put_plan(authed(
        ipb::PutPlanRequest {
            draft: false,
            plan: Some(ipb::Plan {
                plan_id: "p".into(),
                name: "p".into(),
                effective_from: "2020-01-01".into(),
                period_kind: common::PeriodKind::Month as i32,
                assignment: Some(ipb::PlanAssignment {
                    tenant_default: true,
                    ..Default::default()
                }),
                commission: Some(ipb::Commission {
                    quota: "10000".into(),
                    tiers: vec![
                        ipb::Tier {
                            from: "0".into(),
                            rate: "0.05".into(),
                        },
                        ipb::Tier {
                            from: "1".into(),
                            rate: "0.1".into(),
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        },
        &t.admin_key,
    ))
    .await
    .unwrap();
    submit(&ingest, &t.admin_key, vec![rep("r1", "", "")]).await;
    let mut c = NotificationServiceClient::new(notification.channel().await);
    let mut stream = c
        .subscribe(authed(
            pb::SubscribeRequest {
                recipient: "r1".into(),
            },
            &t.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = Instant::now();
    submit(
        &ingest,
        &t.admin_key,
        vec![deal("d1", "8000.00", &[("r1", "100")])],
    )
    .await;
    let n = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a notification within 10 s")
        .unwrap()
        .unwrap();
    let latency = acked.elapsed();
    eprintln!("ingest ack -> live notification: {latency:?}");
    let n = n.notification.unwrap();
    assert_eq!(
        (n.recipient.as_str(), n.rule.as_str()),
        ("r1", "commission_earned")
    );
    assert!(n.title.contains("400.00 EUR"), "{}", n.title);
    assert!(n.body.contains("Next:"), "says what next: {}", n.body);
    assert!(latency < Duration::from_secs(5), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_fact_quiet_hours_rate_limits_and_isolation() {
    let w = world("notify-fatigue", &[]).await;
    let feedc = NotificationServiceClient::new(w.notification.channel().await);
    let rx = Receiver::start().await;
    let mut adm = NotificationAdminServiceClient::new(w.notification.channel().await);
    let hook = adm
        .put_webhook(authed(
            pb::PutWebhookRequest {
                url: rx.url(),
                rules: vec![],
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    rx.set_secret(&hook.secret);

    // Redelivered: the same event twice, then again after the inbox is wiped (a replay).
    let e1 = earning("acme", "r1", "10.00");
    publish_envelope(&w.env, topics::EARNINGS, "acme/r1", &e1).await;
    publish_envelope(&w.env, topics::EARNINGS, "acme/r1", &e1).await;
    eventually(Duration::from_secs(30), "the first notification", || {
        let c = feedc.clone();
        let k = w.key.clone();
        async move { (!feed(&c, &k, "r1").await.is_empty()).then_some(()) }
    })
    .await;
    let pool = w.env.pool("notification").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("DELETE FROM inbox")
        .execute(&pool)
        .await
        .unwrap();
    publish_envelope(&w.env, topics::EARNINGS, "acme/r1", &e1).await;
    let marker = earning("acme", "r1", "11.00");
    publish_envelope(&w.env, topics::EARNINGS, "acme/r1", &marker).await;
    eventually(
        Duration::from_secs(30),
        "the marker after the replay",
        || {
            let c = feedc.clone();
            let k = w.key.clone();
            async move { (feed(&c, &k, "r1").await.len() >= 2).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        feed(&feedc, &w.key, "r1").await.len(),
        2,
        "the redelivered event notified once"
    );

    // Quiet hours around now: external deliveries wait, the in-app feed does not.
    let now = Utc::now();
    let hm = |t: chrono::DateTime<Utc>| t.format("%H:%M").to_string();
    let quiet = pb::Settings {
        quiet_start: hm(now - chrono::Duration::hours(1)),
        quiet_end: hm(now + chrono::Duration::hours(1)),
        ..Default::default()
    };
    adm.set_settings(authed(
        pb::SetSettingsRequest {
            settings: Some(quiet),
        },
        &w.key,
    ))
    .await
    .unwrap();
    let before = rx.accepted().len();
    publish_envelope(
        &w.env,
        topics::EARNINGS,
        "acme/r2",
        &earning("acme", "r2", "12.00"),
    )
    .await;
    let deferred = eventually(Duration::from_secs(30), "a deferred delivery", || {
        let (n, k) = (&w.notification, w.key.clone());
        async move {
            let d = deliveries(n, &k, "deferred").await;
            (!d.is_empty()).then_some(d)
        }
    })
    .await;
    let next = spm_proto::ext::datetime(deferred[0].next_attempt_at.as_ref().unwrap()).unwrap();
    assert!(
        next > now + chrono::Duration::minutes(50),
        "deferred to the end of quiet hours, not dropped: {next}"
    );
    assert!(
        !feed(&feedc, &w.key, "r2").await.is_empty(),
        "in-app is immediate"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rx.accepted().len(),
        before,
        "nothing sent during quiet hours"
    );
    let bad = adm
        .set_settings(authed(
            pb::SetSettingsRequest {
                settings: Some(pb::Settings {
                    quiet_start: "25:00".into(),
                    quiet_end: "07:00".into(),
                    ..Default::default()
                }),
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // A rate limit of 2 per hour folds a burst of 5 into one summary.
    adm.set_settings(authed(
        pb::SetSettingsRequest {
            settings: Some(pb::Settings {
                rate_limit_per_hour: 2,
                ..Default::default()
            }),
        },
        &w.key,
    ))
    .await
    .unwrap();
    submit(&w.ingest, &w.key, vec![rep("r3", "", "")]).await;
    for i in 0..5 {
        publish_envelope(
            &w.env,
            topics::EARNINGS,
            "acme/r3",
            &earning("acme", "r3", &format!("{i}.00")),
        )
        .await;
    }
    eventually(Duration::from_secs(30), "all five processed", || {
        let c = feedc.clone();
        let k = w.key.clone();
        async move { (feed(&c, &k, "r3").await.len() >= 6).then_some(()) }
    })
    .await;
    let all = deliveries(&w.notification, &w.key, "").await;
    let r3: Vec<&pb::Delivery> = all.iter().filter(|d| d.channel == "webhook").collect();
    let folded = deliveries(&w.notification, &w.key, "folded").await.len();
    assert_eq!(folded, 3, "{r3:?}");
    let summary = feed(&feedc, &w.key, "r3")
        .await
        .into_iter()
        .filter(|n| n.rule == "summary")
        .count();
    assert_eq!(summary, 1);

    // Another tenant sees none of it.
    let b = create_tenant(&w.env, &w.ingest, "beta").await;
    wait_key_known(&w.notification, &b.admin_key).await;
    assert!(feed(&feedc, &b.admin_key, "").await.is_empty());
    assert!(
        deliveries(&w.notification, &b.admin_key, "")
            .await
            .is_empty()
    );
}
