//! Faults while a stream flows, on a broker and a Postgres of the test's own: every service
//! SIGKILLed once and restarted, the broker paused for 10 s (longer than the consumers'
//! session timeout), the broker SIGKILLed and restarted on its durable (SQLite) engine,
//! Postgres restarted the hard way, 10% duplicates in a shuffled order, poison records on
//! the topics. Afterwards every
//! acknowledged event counts exactly once: scores and statements equal what the test
//! computes on its own from the generated data and what a from-scratch rebuild produces,
//! the poison is on the DLQ, and the partitions kept flowing past it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use rust_decimal::Decimal;
use spm_core::period::{Calendar, PeriodKind};
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::ingest::v1 as pb;
use spm_proto::ingest::v1::crm_event::Payload;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_testkit::events::{deal, event_at, rep};
use spm_testkit::kafka::{publish_raw, read_topic};
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};

/// 10% of every deal's credit, paid at close: what the test can compute on its own.
fn flat_plan() -> ipb::Plan {
    ipb::Plan {
        plan_id: "flat".into(),
        name: "Flat 10%".into(),
        effective_from: "2020-01-01".into(),
        period_kind: common::PeriodKind::Month as i32,
        assignment: Some(ipb::PlanAssignment {
            tenant_default: true,
            ..Default::default()
        }),
        commission: Some(ipb::Commission {
            basis: ipb::TierBasis::Attainment as i32,
            mode: ipb::TierMode::Marginal as i32,
            quota: "1000000".into(),
            tiers: vec![ipb::Tier {
                from: "0".into(),
                rate: "0.1".into(),
            }],
            ..Default::default()
        }),
        payout: Some(ipb::PayoutSplit {
            at_close_percent: "100".into(),
            on_collection_percent: "0".into(),
        }),
        clawback_window_days: 90,
        ..Default::default()
    }
}

const REPS: usize = 12;
const EVENTS: usize = 2400;
const BATCH: usize = 50;

/// What the stream says, computed by the test: per (rep, month) revenue and activity counts.
#[derive(Default)]
struct Expected {
    revenue: BTreeMap<(String, String), Decimal>,
    activities: BTreeMap<(String, String, &'static str), i64>,
    /// (rep, deal) credits.
    credits: HashSet<(String, String)>,
    facts: usize,
}

fn generate(seed: u64) -> (Vec<pb::CrmEvent>, Expected) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let cal = Calendar::default();
    let month_start = cal.period(PeriodKind::Month, now).start;
    let window = (now - month_start).num_seconds().clamp(2, 3 * 86_400) - 1;
    let reps: Vec<String> = (0..REPS).map(|i| format!("r{i:02}")).collect();
    let mut exp = Expected::default();
    let mut out = Vec::with_capacity(EVENTS);
    let kinds = [
        (ev::ActivityKind::Visit, "visits"),
        (ev::ActivityKind::Call, "calls"),
        (ev::ActivityKind::Meeting, "meetings"),
        (ev::ActivityKind::Email, "emails"),
    ];
    for i in 0..EVENTS {
        let at = now - chrono::Duration::seconds(rng.random_range(1..=window));
        let month = cal.period(PeriodKind::Month, at).key;
        let r = reps[rng.random_range(0..REPS)].clone();
        if i % 7 == 0 {
            // A deal: whole tens, so 10% is exact; one in five split 50/50 (even amount).
            let amount = Decimal::from(rng.random_range(1..500) * 20);
            let deal_id = format!("D{i:05}");
            let split = rng.random_bool(0.2);
            let other = reps[(reps.iter().position(|x| *x == r).unwrap_or(0) + 1) % REPS].clone();
            let splits: Vec<(String, Decimal)> = if split {
                vec![
                    (r.clone(), amount / Decimal::TWO),
                    (other, amount / Decimal::TWO),
                ]
            } else {
                vec![(r.clone(), amount)]
            };
            for (who, credit) in &splits {
                *exp.revenue.entry((who.clone(), month.clone())).or_default() += credit;
                exp.credits.insert((who.clone(), deal_id.clone()));
                exp.facts += 1;
            }
            let share = if split { "50" } else { "100" };
            let who: Vec<(&str, &str)> = splits.iter().map(|(w, _)| (w.as_str(), share)).collect();
            let mut e = deal(&deal_id, &format!("{amount}.00"), &who);
            e.occurred_at = Some(spm_proto::ext::timestamp(at));
            out.push(e);
        } else {
            let (kind, cell) = kinds[rng.random_range(0..kinds.len())];
            *exp.activities.entry((r.clone(), month, cell)).or_default() += 1;
            exp.facts += 1;
            out.push(event_at(
                Payload::ActivityLogged(ev::ActivityLogged {
                    rep_id: r,
                    activity_id: format!("a{i}"),
                    kind: kind as i32,
                    customer_id: format!("c{}", i % 40),
                    deal_id: String::new(),
                    subject: String::new(),
                }),
                at,
            ));
        }
    }
    // 10% of the events again (same id, same content), then everything shuffled.
    let dups: Vec<pb::CrmEvent> = out
        .iter()
        .filter(|_| rng.random_bool(0.1))
        .cloned()
        .collect();
    out.extend(dups);
    out.shuffle(&mut rng);
    (out, exp)
}

/// Submits a batch until every event is acknowledged (accepted or duplicate), retrying
/// what the system says it could not take (unavailable, transport errors) as a CRM
/// integration would.
async fn submit_until_acked(
    ch: &tonic::transport::Channel,
    key: &str,
    batch: &[pb::CrmEvent],
    acked: &mut HashSet<String>,
) {
    let mut pending: Vec<pb::CrmEvent> = batch.to_vec();
    let started = Instant::now();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "events not acknowledged within 2 minutes"
        );
        let mut c = IngestServiceClient::new(ch.clone());
        let res = c
            .submit_events(authed(
                pb::SubmitEventsRequest {
                    events: pending.clone(),
                },
                key,
            ))
            .await;
        let Ok(resp) = res else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut retry = Vec::new();
        for (e, a) in pending.iter().zip(resp.into_inner().acks) {
            match pb::AckStatus::try_from(a.status) {
                Ok(pb::AckStatus::Accepted | pb::AckStatus::Duplicate) => {
                    acked.insert(e.event_id.clone());
                }
                Ok(pb::AckStatus::Unavailable) => retry.push(e.clone()),
                other => panic!("event {} not accepted: {other:?} {a:?}", e.event_id),
            }
        }
        if !retry.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pending = retry;
    }
}

async fn scalar(pool: &sqlx::PgPool, q: &str, tenant: &str) -> i64 {
    sqlx::query_scalar(q)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

async fn rebuild(env: &TestEnv, svc: &str) -> String {
    let out = tokio::process::Command::new(spm_testkit::process::binary(&format!("spm-{svc}")))
        .arg("rebuild")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &env.db_url)
        .env("KAFKA_BROKERS", &env.stack.brokers)
        .env("KAFKA_TOPIC_PREFIX", &env.prefix)
        .env("KAFKA_PARTITIONS", env.partitions.to_string())
        .env("SPM_GRPC_ADDR", "127.0.0.1:0")
        .env("SPM_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run rebuild");
    assert!(
        out.status.success(),
        "spm-{svc} rebuild: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn every_acknowledged_event_counts_once_through_kills_pauses_and_restarts() {
    let mut env = TestEnv::with_private_stack("faults").await;
    let mut svcs: HashMap<&str, Service> = HashMap::new();
    for s in ["ingest", "scoring", "incentive", "notification"] {
        svcs.insert(s, env.start(s).await);
    }
    let t = create_tenant(&env, &svcs["ingest"], "acme").await;
    for s in svcs.values() {
        wait_key_known(s, &t.admin_key).await;
    }
    IncentiveAdminServiceClient::new(svcs["incentive"].channel().await)
        .put_plan(authed(
            ipb::PutPlanRequest {
                plan: Some(flat_plan()),
                draft: false,
            },
            &t.admin_key,
        ))
        .await
        .expect("plan");
    let ch = svcs["ingest"].channel().await;
    let mut acked = HashSet::new();
    let org: Vec<pb::CrmEvent> = (0..REPS)
        .map(|i| rep(&format!("r{i:02}"), "", ""))
        .collect();
    submit_until_acked(&ch, &t.admin_key, &org, &mut acked).await;

    let (stream, exp) = generate(7);
    let poison_marker = format!("poison-{}", uuid::Uuid::new_v4().simple());
    let mut pause: Option<tokio::task::JoinHandle<()>> = None;
    let broker_pid = env.broker.as_ref().expect("private broker").pid();
    let started = Instant::now();
    for (k, batch) in stream.chunks(BATCH).enumerate() {
        submit_until_acked(&ch, &t.admin_key, batch, &mut acked).await;
        match k {
            4 | 10 | 16 => {
                let name = ["scoring", "incentive", "notification"][(k - 4) / 6];
                svcs.get_mut(name).expect("service").kill9().await;
            }
            7 | 13 | 19 => {
                let name = ["scoring", "incentive", "notification"][(k - 7) / 6];
                svcs.get_mut(name).expect("service").restart().await;
            }
            22 => {
                // Ingest dies between requests; the client retries until it is back.
                let ingest = svcs.get_mut("ingest").expect("ingest");
                ingest.kill9().await;
                ingest.restart().await;
            }
            25 => {
                // Poison on the consumed topics: not a protobuf, and an envelope without
                // a tenant. Consumers must dead-letter them and carry on.
                for topic in [topics::DEALS, topics::ACTIVITIES] {
                    publish_raw(
                        &env,
                        topic,
                        "acme/r00",
                        poison_marker.clone().into_bytes(),
                        vec![],
                    )
                    .await;
                    let bad = ev::EventEnvelope {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        payload: Some(ev::event_envelope::Payload::ActivityLogged(
                            ev::ActivityLogged {
                                rep_id: poison_marker.clone(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    };
                    publish_raw(
                        &env,
                        topic,
                        "acme/r01",
                        prost::Message::encode_to_vec(&bad),
                        vec![],
                    )
                    .await;
                }
            }
            28 => {
                // The broker stops answering for 10 s while the stream goes on.
                pause = Some(tokio::spawn(async move {
                    spm_testkit::signal(broker_pid, "STOP");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    spm_testkit::signal(broker_pid, "CONT");
                }));
            }
            34 => {
                // The broker dies mid-stream and comes back on the same data: topics,
                // records and committed offsets survive; producers and consumers carry on
                // by themselves.
                if let Some(p) = pause.take() {
                    p.await.expect("pause task");
                }
                let broker = env.broker.as_mut().expect("private broker");
                broker.kill9();
                tokio::time::sleep(Duration::from_secs(2)).await;
                broker.restart();
            }
            40 => {
                // Postgres dies and comes back (immediate shutdown: crash recovery).
                env.postgres.as_ref().expect("private postgres").restart();
            }
            _ => {}
        }
    }
    if let Some(p) = pause {
        p.await.expect("pause task");
    }
    eprintln!(
        "streamed {} events ({} unique acknowledged) in {:.1} s",
        stream.len(),
        acked.len(),
        started.elapsed().as_secs_f64()
    );

    // Everything settles.
    let scoring = env.pool("scoring").await;
    let incentive = env.pool("incentive").await;
    let notification = env.pool("notification").await;
    let tenant = t.id.as_str();
    let want_facts = i64::try_from(exp.facts).unwrap_or(i64::MAX);
    let want_credits = i64::try_from(exp.credits.len()).unwrap_or(i64::MAX);
    eventually(
        Duration::from_secs(180),
        "every fact and credit applied",
        || {
            let (scoring, incentive) = (scoring.clone(), incentive.clone());
            async move {
                let f = scalar(
                    &scoring,
                    "SELECT count(*) FROM facts WHERE tenant_id = $1",
                    tenant,
                )
                .await;
                let c = scalar(
                    &incentive,
                    "SELECT count(*) FROM credits WHERE tenant_id = $1 AND kind = 'deal'",
                    tenant,
                )
                .await;
                (f == want_facts && c == want_credits).then_some(())
            }
        },
    )
    .await;
    // Unique events: the stream without its duplicates, all acknowledged.
    let unique: HashSet<&str> = stream.iter().map(|e| e.event_id.as_str()).collect();
    assert!(
        unique.iter().all(|id| acked.contains(*id)),
        "an event was never acknowledged"
    );

    // Exactly once: no fact twice, and the numbers are the test's own.
    let dup_facts = scalar(
        &scoring,
        "SELECT count(*) - count(DISTINCT (event_id)) FROM facts WHERE tenant_id = $1",
        tenant,
    )
    .await;
    assert_eq!(dup_facts, 0, "a fact counted twice");
    let cells: Vec<(String, String, String, Decimal)> = sqlx::query_as(
        "SELECT rep_id, period_key, cell, sum FROM cells WHERE tenant_id = $1 AND period_kind = 'month'",
    )
    .bind(tenant)
    .fetch_all(&scoring)
    .await
    .expect("cells");
    let cell = |rep: &str, month: &str, name: &str| {
        cells
            .iter()
            .find(|(r, m, c, _)| r == rep && m == month && c == name)
            .map_or(Decimal::ZERO, |x| x.3)
    };
    for ((rep, month), revenue) in &exp.revenue {
        assert_eq!(
            cell(rep, month, "revenue"),
            *revenue,
            "revenue of {rep} in {month}"
        );
    }
    for ((rep, month, name), n) in &exp.activities {
        assert_eq!(
            cell(rep, month, name),
            Decimal::from(*n),
            "{name} of {rep} in {month}"
        );
    }
    // Statements: 10% of each rep's credits, to the cent, exactly once.
    let mut want_pay: BTreeMap<String, Decimal> = BTreeMap::new();
    for ((rep, _), revenue) in &exp.revenue {
        *want_pay.entry(rep.clone()).or_default() += revenue / Decimal::TEN;
    }
    let ledger = || {
        let incentive = incentive.clone();
        async move {
            let rows: Vec<(String, Decimal)> = sqlx::query_as(
                "SELECT rep_id, sum(amount) FROM ledger WHERE tenant_id = $1 GROUP BY rep_id ORDER BY rep_id",
            )
            .bind(tenant)
            .fetch_all(&incentive)
            .await
            .expect("ledger");
            rows.into_iter()
                .map(|(r, a)| (r, a.normalize()))
                .collect::<BTreeMap<String, Decimal>>()
        }
    };
    let want_pay: BTreeMap<String, Decimal> = want_pay
        .into_iter()
        .map(|(r, a)| (r, a.normalize()))
        .collect();
    let paid = eventually(
        Duration::from_secs(60),
        "statements to match the stream",
        || {
            let ledger = ledger();
            let want = want_pay.clone();
            async move {
                let got = ledger.await;
                (got == want).then_some(got)
            }
        },
    )
    .await;
    assert_eq!(paid, want_pay);
    // One commission notification per credited deal, none twice.
    let count = || {
        let notification = notification.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(DISTINCT (recipient, data->>'deal_id')) FROM notifications
                  WHERE tenant_id = $1 AND rule = 'commission_earned'",
            )
            .bind(tenant)
            .fetch_one(&notification)
            .await
            .expect("notifications")
        }
    };
    let notes = eventually(Duration::from_secs(60), "a notification per credit", || {
        let n = count();
        async move {
            let got = n.await;
            (got.1 >= want_credits).then_some(got)
        }
    })
    .await;
    assert_eq!(
        notes,
        (want_credits, want_credits),
        "commission notifications"
    );

    // The poison is on the DLQ, from both topics, with the reason; nothing else is.
    let dlq = read_topic(&env, topics::DLQ);
    let from: HashSet<String> = dlq
        .iter()
        .filter(|r| {
            r.payload == poison_marker.as_bytes()
                || String::from_utf8_lossy(&r.payload).contains(&poison_marker)
        })
        .filter_map(|r| {
            assert!(
                r.header("spm-dlq-error").is_some_and(|e| !e.is_empty()),
                "{r:?}"
            );
            r.header("spm-dlq-topic").map(str::to_owned)
        })
        .collect();
    assert_eq!(
        from,
        [topics::DEALS, topics::ACTIVITIES]
            .iter()
            .map(|t| env.kafka().topic(t))
            .collect::<HashSet<_>>(),
        "poison of both topics on the DLQ"
    );
    for r in &dlq {
        assert!(
            String::from_utf8_lossy(&r.payload).contains(&poison_marker),
            "a record that is not poison was dead-lettered: {:?}",
            r.header("spm-dlq-error")
        );
    }

    // A from-scratch rebuild agrees with what the live services computed.
    let scores = || {
        let scoring = scoring.clone();
        async move {
            sqlx::query_as::<_, (String, String, String, Option<Decimal>)>(
                "SELECT rep_id, period_kind, period_key, score FROM scores WHERE tenant_id = $1 ORDER BY 1, 2, 3",
            )
            .bind(tenant)
            .fetch_all(&scoring)
            .await
            .expect("scores")
        }
    };
    let live_scores = scores().await;
    assert!(!live_scores.is_empty());
    for s in ["scoring", "incentive"] {
        svcs.get_mut(s)
            .expect("service")
            .terminate(Duration::from_secs(30))
            .await;
    }
    rebuild(&env, "scoring").await;
    assert_eq!(
        scores().await,
        live_scores,
        "scores equal a from-scratch rebuild"
    );
    let out = rebuild(&env, "incentive").await;
    assert!(out.contains("needed 0 corrective postings"), "{out}");
    assert_eq!(
        ledger().await,
        want_pay,
        "statements equal a from-scratch rebuild"
    );
}
