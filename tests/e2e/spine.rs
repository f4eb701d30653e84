//! The spine proves itself: a deal submitted to ingest over gRPC is recorded by scoring's
//! consumer in Postgres through the shared loop, with the trace id carried in the Kafka
//! headers; duplicates count once; a consumer killed between its DB commit and its offset
//! commit counts once after restart; two instances of a consumer split the partitions; an outbox spilled early
//! belongs to its transaction and keeps its order.

use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use spm_core::topics;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::ingest::v1::{AckStatus, SubmitEventsRequest};
use spm_testkit::events::{deal, rep};
use spm_testkit::kafka::{publish_raw, read_topic};
use spm_testkit::{TestEnv, authed, create_tenant, eventually, wait_key_known};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn deal_facts(pool: &sqlx::PgPool, tenant: &str, deal_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM facts WHERE tenant_id = $1 AND deal_id = $2 AND kind = 'deal'",
    )
    .bind(tenant)
    .bind(deal_id)
    .fetch_one(pool)
    .await
    .expect("count facts")
}

async fn revenue(pool: &sqlx::PgPool, tenant: &str) -> Decimal {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(sum), 0) FROM cells WHERE tenant_id = $1 AND cell = 'revenue'",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .expect("revenue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deal_flows_once_with_its_trace_through_kill_and_duplicates() {
    let env = TestEnv::new("spine").await;
    let ingest = env.start("ingest").await;
    let mut scoring = env.start("scoring").await;
    let tenant = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &tenant.admin_key).await;
    let pool = env.pool("scoring").await;

    let mut client = IngestServiceClient::new(ingest.channel().await);
    let submit = |events| {
        let mut r = authed(SubmitEventsRequest { events }, &tenant.admin_key);
        r.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE}-00f067aa0ba902b7-01")
                .parse()
                .expect("header"),
        );
        r
    };

    // A rep, then a deal, over gRPC.
    let d1 = deal("d-1", "1000.00", &[("r1", "100")]);
    let acks = client
        .submit_events(submit(vec![rep("r1", "", ""), d1.clone()]))
        .await
        .expect("submit")
        .into_inner()
        .acks;
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Accepted as i32),
        "{acks:?}"
    );

    // Scoring's consumer records it in Postgres through the shared loop.
    eventually(
        Duration::from_secs(30),
        "scoring to record the deal",
        || {
            let pool = pool.clone();
            async move { (deal_facts(&pool, "acme", "d-1").await == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(revenue(&pool, "acme").await, Decimal::new(100_000, 2));

    // The trace id travelled in the Kafka headers.
    let records = read_topic(&env, topics::DEALS);
    let rec = records
        .iter()
        .find(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.causation_id == d1.event_id)
        })
        .expect("deal credit on the topic");
    let tp = rec.header("traceparent").expect("traceparent header");
    assert_eq!(spm_telemetry_trace(tp), TRACE, "{tp}");
    assert_eq!(rec.header("spm-event-type"), Some("DealCredited"));
    assert_eq!(rec.key, "acme/r1");

    // The same event submitted twice counts once; so does a raw redelivery of the record.
    let again = client
        .submit_events(submit(vec![d1.clone()]))
        .await
        .expect("resubmit")
        .into_inner()
        .acks;
    assert_eq!(again[0].status, AckStatus::Duplicate as i32);
    publish_raw(
        &env,
        topics::DEALS,
        &rec.key,
        rec.payload.clone(),
        rec.headers.clone(),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the redelivered record to be skipped",
        || {
            let s = &scoring;
            async move {
                (s.metric_sum(
                    "spm_events_duplicate_total",
                    &["topic=\"spm.crm.deals.v1\""],
                )
                .await
                    >= 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(deal_facts(&pool, "acme", "d-1").await, 1);
    assert_eq!(revenue(&pool, "acme").await, Decimal::new(100_000, 2));

    // SIGKILL after the DB commit and before the offset commit, then restart: once.
    scoring.terminate(Duration::from_secs(20)).await;
    scoring
        .restart_with(&[("SPM_FAILPOINT", "hang_after_db_commit")], &[])
        .await;
    let d2 = deal("d-2", "250.00", &[("r1", "100")]);
    client
        .submit_events(submit(vec![d2]))
        .await
        .expect("submit d-2");
    scoring
        .wait_log(
            "failpoint hang_after_db_commit reached",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        deal_facts(&pool, "acme", "d-2").await,
        1,
        "committed before the kill"
    );
    scoring.kill9().await;
    scoring.restart_with(&[], &["SPM_FAILPOINT"]).await;
    // The record is delivered again (its offset was never committed) and skipped.
    eventually(
        Duration::from_secs(40),
        "the replayed record to be skipped",
        || {
            let s = &scoring;
            async move {
                (s.metric_sum(
                    "spm_events_duplicate_total",
                    &["topic=\"spm.crm.deals.v1\""],
                )
                .await
                    >= 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(deal_facts(&pool, "acme", "d-2").await, 1);
    assert_eq!(revenue(&pool, "acme").await, Decimal::new(125_000, 2));

    // A clean stop on SIGTERM.
    let status = scoring.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "scoring exited with {status}");
}

fn spm_telemetry_trace(tp: &str) -> &str {
    tp.split('-').nth(1).unwrap_or_default()
}

/// Submits `events` in one request; every one is accepted.
async fn submit_accepted(
    client: &mut IngestServiceClient<tonic::transport::Channel>,
    key: &str,
    events: Vec<spm_proto::ingest::v1::CrmEvent>,
) {
    let acks = client
        .submit_events(authed(SubmitEventsRequest { events }, key))
        .await
        .expect("submit")
        .into_inner()
        .acks;
    assert!(acks.iter().all(|a| a.status == AckStatus::Accepted as i32));
}

/// Waits until scoring has counted `n` deal facts.
async fn deals_counted(pool: &sqlx::PgPool, n: usize, what: &str) {
    eventually(Duration::from_secs(60), what, || {
        let pool = pool.clone();
        async move {
            let c: i64 = sqlx::query_scalar("SELECT count(*) FROM facts WHERE kind = 'deal'")
                .fetch_one(&pool)
                .await
                .ok()?;
            (c == i64::try_from(n).ok()?).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_count_every_event_once() {
    let env = TestEnv::new("scaleout").await;
    let ingest = env.start("ingest").await;
    let a = env.start("scoring").await;
    a.wait_log("partitions assigned", Duration::from_secs(30))
        .await;
    let b = env.start("scoring").await;
    // The group rebalances: b gets its share, a gets its remaining share again.
    b.wait_log("partitions assigned", Duration::from_secs(60))
        .await;
    a.wait_log_count("partitions assigned", 2, Duration::from_secs(60))
        .await;
    let tenant = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &tenant.admin_key).await;
    let pool = env.pool("scoring").await;
    let mut client = IngestServiceClient::new(ingest.channel().await);

    let reps: Vec<String> = (0..12).map(|i| format!("rep-{i}")).collect();
    let mut events: Vec<_> = reps.iter().map(|r| rep(r, "", "")).collect();
    let n = 240;
    for i in 0..n {
        let r = &reps[i % reps.len()];
        events.push(deal(&format!("d-{i}"), "10.00", &[(r.as_str(), "100")]));
    }
    for chunk in events.chunks(100) {
        submit_accepted(&mut client, &tenant.admin_key, chunk.to_vec()).await;
    }
    deals_counted(&pool, n, "every deal counted").await;
    assert_eq!(revenue(&pool, "acme").await, Decimal::new(240_000, 2));
    let topic = ["topic=\"spm.crm.deals.v1\""];
    let (ca, cb) = (
        a.metric_sum("spm_events_consumed_total", &topic).await,
        b.metric_sum("spm_events_consumed_total", &topic).await,
    );
    assert!(
        ca > 0.0 && cb > 0.0,
        "both instances consumed deals: {ca} + {cb}"
    );
    assert_eq!(
        ca + cb,
        240.0,
        "each record applied exactly once across the group"
    );

    // b dies without leaving the group: once its session expires, a takes its partitions
    // and applies what was written to them meanwhile.
    let mut b = b;
    b.kill9().await;
    let killed = Instant::now();
    let more: Vec<_> = (n..n + 60)
        .map(|i| {
            deal(
                &format!("d-{i}"),
                "10.00",
                &[(reps[i % reps.len()].as_str(), "100")],
            )
        })
        .collect();
    submit_accepted(&mut client, &tenant.admin_key, more).await;
    deals_counted(&pool, n + 60, "the survivor counts every deal").await;
    eprintln!(
        "after kill -9 of one of two members the other applied all of its records {:.1} s later (session timeout {} ms)",
        killed.elapsed().as_secs_f64(),
        spm_bus::DEFAULT_SESSION_TIMEOUT_MS
    );
    a.wait_log_count("partitions assigned", 3, Duration::from_secs(5))
        .await;
    assert_eq!(revenue(&pool, "acme").await, Decimal::new(300_000, 2));
}

/// A long computation writes its events into the outbox as they pile up
/// (`Outbox::spill`): the rows are the transaction's (gone on rollback, there on commit),
/// in emission order, and counted as emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_outbox_belongs_to_its_transaction_and_keeps_its_order() {
    use sqlx::Connection as _;
    let env = TestEnv::new("spill").await;
    let admin = env.pool("public").await;
    sqlx::query("CREATE SCHEMA spill")
        .execute(&admin)
        .await
        .expect("schema");
    let pool = env.pool("spill").await;
    sqlx::raw_sql(spm_bus::schema::MIGRATIONS[0].2)
        .execute(&pool)
        .await
        .expect("bus tables");
    let emit = |out: &mut spm_bus::Outbox, from: usize, n: usize| {
        for i in from..from + n {
            let e = spm_proto::events::v1::EventEnvelope {
                event_id: format!("e{i}"),
                ..Default::default()
            };
            out.emit(&tracing::Span::none(), "t", format!("k{i}"), &e);
        }
    };
    let rows = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT key FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("outbox")
    };
    for commit in [false, true] {
        let mut conn = pool.acquire().await.expect("conn");
        let mut tx = conn.begin().await.expect("begin");
        let mut out = spm_bus::Outbox::new(&env.kafka());
        emit(&mut out, 0, 4);
        out.spill(&mut tx, 5).await.expect("spill");
        assert!(rows(pool.clone()).await.is_empty(), "below the bound: held");
        emit(&mut out, 4, 3);
        out.spill(&mut tx, 5).await.expect("spill");
        let in_tx: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&mut *tx)
            .await
            .expect("count");
        assert_eq!(in_tx, 7, "at the bound: written in the transaction");
        emit(&mut out, 7, 2);
        assert_eq!(out.len(), 9, "spilled rows count as emitted");
        assert!(!out.is_empty());
        out.write(&mut tx).await.expect("write");
        if commit {
            tx.commit().await.expect("commit");
            let want: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
            assert_eq!(rows(pool.clone()).await, want, "in emission order");
        } else {
            tx.rollback().await.expect("rollback");
            assert!(rows(pool.clone()).await.is_empty(), "rolled back with it");
        }
    }
}

/// The test kit's ports are free when it looks, not always when the service binds them:
/// a service whose port is taken meanwhile starts on new ones (the CI flake of
/// "binding SPM_HTTP_ADDR ... Address already in use").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_port_was_taken_starts_on_new_ones() {
    let env = TestEnv::new("ports").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let svc = env.start_with("scoring", &[("SPM_HTTP_ADDR", &addr)]).await;
    assert_ne!(svc.http.to_string(), addr, "moved off the taken port");
    assert!(
        svc.log_text().contains("Address already in use"),
        "the first start met the taken port"
    );
    assert!(
        svc.metrics().await.contains("spm_"),
        "serves its metrics on the new port"
    );
    drop(taken);
}
