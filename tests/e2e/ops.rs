//! Operability with the real parts: the four services export their spans over OTLP to a
//! collector inside the test (one deal is one trace), and the Debian `prometheus` binary
//! scrapes them with the configuration shipped in deploy/prometheus.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::ingest::v1 as pb;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::notification::v1 as npb;
use spm_proto::notification::v1::notification_admin_service_client::NotificationAdminServiceClient;
use spm_testkit::events::{deal, rep};
use spm_testkit::otlp::{Collector, Span};
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};

use crate::scoring::submit;

/// The trace a CRM integration starts (W3C traceparent on its request).
const TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CLIENT_SPAN: &str = "eee19b7ec3c1b174";

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// Four services, a tenant with a plan and a webhook, and the rep of the deal.
struct Pipeline {
    _env: TestEnv,
    services: Vec<Service>,
    key: String,
    hook: spm_testkit::webhook::Receiver,
}

async fn pipeline(name: &str, extra: &[(&str, &str)]) -> Pipeline {
    let env = TestEnv::new(name).await;
    let mut services = Vec::new();
    for s in ["ingest", "scoring", "incentive", "notification"] {
        services.push(env.start_with(s, extra).await);
    }
    let t = create_tenant(&env, &services[0], "acme").await;
    for s in &services {
        wait_key_known(s, &t.admin_key).await;
    }
    IncentiveAdminServiceClient::new(services[2].channel().await)
        .put_plan(authed(
            ipb::PutPlanRequest {
                plan: Some(crate::incentive::plan()),
                draft: false,
            },
            &t.admin_key,
        ))
        .await
        .expect("plan");
    let hook = spm_testkit::webhook::Receiver::start().await;
    let w = NotificationAdminServiceClient::new(services[3].channel().await)
        .put_webhook(authed(
            npb::PutWebhookRequest {
                url: hook.url(),
                rules: vec!["commission_earned".into()],
            },
            &t.admin_key,
        ))
        .await
        .expect("webhook")
        .into_inner();
    hook.set_secret(&w.secret);
    submit(&services[0], &t.admin_key, vec![rep("r1", "", "")]).await;
    Pipeline {
        _env: env,
        services,
        key: t.admin_key,
        hook,
    }
}

/// Submits one deal inside the client's trace and waits for its webhook.
async fn deal_through(p: &Pipeline, deal_id: &str) {
    let mut req = authed(
        pb::SubmitEventRequest {
            event: Some(deal(deal_id, "1000.00", &[("r1", "100")])),
        },
        &p.key,
    );
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CLIENT_SPAN}-01")
            .parse()
            .expect("header"),
    );
    IngestServiceClient::new(p.services[0].channel().await)
        .submit_event(req)
        .await
        .expect("deal accepted");
    eventually(Duration::from_secs(30), "the deal's webhook", || {
        let got = p
            .hook
            .accepted()
            .iter()
            .any(|r| r.body["data"]["deal_id"] == deal_id);
        async move { got.then_some(()) }
    })
    .await;
}

fn find<'a>(spans: &'a [Span], service: &str, kind: i32, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.service == service && s.kind == kind && s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no {service} span {name:?} (kind {kind}) in the trace; have: {:#?}",
                spans
                    .iter()
                    .map(|s| format!("{} {} {}", s.service, s.kind, s.name))
                    .collect::<Vec<_>>()
            )
        })
}

/// True when `ancestor` is `span` or above it in the trace.
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut cur = Some(span);
    while let Some(s) = cur {
        if s.span_id == ancestor.span_id {
            return true;
        }
        cur = by_id.get(s.parent_span_id.as_str()).copied();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deal_is_one_trace_across_all_four_services() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let p = pipeline(
        "ops-trace",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // Logs quiet: traces must not depend on the log level.
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    deal_through(&p, "traced-1").await;

    let services = [
        "spm-ingest",
        "spm-scoring",
        "spm-incentive",
        "spm-notification",
    ];
    let spans = eventually(
        Duration::from_secs(30),
        "spans of all four services",
        || {
            let spans: Vec<Span> = collector
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == TRACE)
                .collect();
            let delivered = spans
                .iter()
                .any(|s| s.kind == CLIENT && s.service == "spm-notification");
            let all = services
                .iter()
                .all(|svc| spans.iter().any(|s| s.service == *svc));
            async move { (all && delivered).then_some(spans) }
        },
    )
    .await;

    // The hops, each the child of the one before.
    let rpc = find(
        &spans,
        "spm-ingest",
        SERVER,
        "spm.ingest.v1.IngestService/SubmitEvent",
    );
    assert_eq!(
        rpc.parent_span_id, CLIENT_SPAN,
        "the request continues the client's trace"
    );
    assert_eq!(rpc.attributes["rpc.system"], "grpc");
    assert_eq!(rpc.attributes["rpc.service"], "spm.ingest.v1.IngestService");
    assert_eq!(rpc.attributes["rpc.method"], "SubmitEvent");
    let publish = find(&spans, "spm-ingest", PRODUCER, "publish");
    assert!(
        descends(&spans, publish, rpc),
        "ingest publishes within the request"
    );
    assert_eq!(publish.attributes["messaging.system"], "kafka");

    let deals = "process spm.crm.deals.v1";
    for svc in ["spm-scoring", "spm-incentive"] {
        let process = find(&spans, svc, CONSUMER, deals);
        assert_eq!(
            process.parent_span_id, publish.span_id,
            "{svc} consumes what ingest published"
        );
        assert_eq!(
            process.attributes["messaging.destination.name"],
            "spm.crm.deals.v1"
        );
        assert_eq!(process.attributes["messaging.operation.type"], "process");
        assert!(process.attributes.contains_key("messaging.kafka.offset"));
    }
    // The deal's earning, and the earnings that follow from the scores the deal changed:
    // each published by incentive's outbox inside this trace, each consumed by
    // notification as its child, each webhook delivery under one of those.
    let all = |svc: &str, kind: i32, name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.service == svc && s.kind == kind && s.name == name)
            .collect()
    };
    let inc_process = find(&spans, "spm-incentive", CONSUMER, deals);
    let earnings = all(
        "spm-incentive",
        PRODUCER,
        "publish spm.incentive.earnings.v1",
    );
    assert!(
        earnings.iter().any(|e| descends(&spans, e, inc_process)),
        "the outbox relay publishes the deal's earning inside its trace"
    );
    let notified = all(
        "spm-notification",
        CONSUMER,
        "process spm.incentive.earnings.v1",
    );
    assert!(!notified.is_empty(), "notification consumed the earning");
    for n in &notified {
        assert!(
            earnings.iter().any(|e| n.parent_span_id == e.span_id),
            "notification consumes what incentive published"
        );
    }
    let delivered = all("spm-notification", CLIENT, "deliver webhook");
    assert!(!delivered.is_empty(), "a webhook delivery in the trace");
    for d in &delivered {
        assert!(
            notified.iter().any(|n| descends(&spans, d, n)),
            "the webhook delivery closes the trace"
        );
    }

    // One connected tree: every span's parent is in the trace (the root's is the client).
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for s in &spans {
        assert!(
            s.parent_span_id == CLIENT_SPAN || ids.contains(s.parent_span_id.as_str()),
            "{} {} hangs outside the trace (parent {})",
            s.service,
            s.name,
            s.parent_span_id
        );
    }
    // A batch that mixes traces is its own span, linked to each record: here the deal's
    // batch spans (apply) are either children of the deal's span or linked to it.
    let applies: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| s.name.starts_with("apply "))
        .filter(|s| s.trace_id == TRACE || s.links.iter().any(|(t, _)| t == TRACE))
        .collect();
    assert!(
        applies.iter().any(|s| s.service == "spm-incentive"),
        "incentive's batch span belongs to or links to the deal's trace"
    );
    drop(p);
}

fn prometheus_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/prometheus");
    assert!(
        p.exists(),
        "the Debian prometheus package is required (deploy/local/stack install puts it there)"
    );
    p
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn prom_query(base: &str, q: &str) -> Option<f64> {
    let v: Value = spm_testkit::http()
        .get(format!("{base}/api/v1/query?query={}", percent(q)))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_with_the_shipped_config() {
    let p = pipeline("ops-prom", &[]).await;

    // The shipped configuration and rules, as they are; only the targets file is ours.
    let dir = std::env::temp_dir().join(format!("spm-prom-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("targets")).expect("temp dir");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for f in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(shipped.join(f), dir.join(f)).expect("copy shipped config");
    }
    let targets: Vec<Value> = p
        .services
        .iter()
        .map(
            |s| serde_json::json!({"targets": [s.http.to_string()], "labels": {"service": s.name}}),
        )
        .collect();
    std::fs::write(
        dir.join("targets/test.json"),
        serde_json::to_vec(&targets).expect("json"),
    )
    .expect("targets file");
    let port = spm_testkit::process::free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let mut prom = tokio::process::Command::new(prometheus_bin())
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let base = format!("http://127.0.0.1:{port}");

    // Every service is a healthy target.
    eventually(Duration::from_secs(60), "all four targets up", || {
        let base = base.clone();
        async move {
            let v: Value = spm_testkit::http()
                .get(format!("{base}/api/v1/targets"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let active = v["data"]["activeTargets"].as_array()?.clone();
            let up: Vec<String> = active
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["service"].as_str().map(str::to_owned))
                .collect();
            (active.len() == 4 && up.len() == 4).then_some(())
        }
    })
    .await;
    // The shipped alert rules are loaded.
    let rules: Value = spm_testkit::http()
        .get(format!("{base}/api/v1/rules"))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("rules json");
    let names: Vec<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rules loaded")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for a in [
        "SpmConsumerLagGrowing",
        "SpmEventsDeadLettered",
        "SpmOutboxBacklogOld",
    ] {
        assert!(names.contains(&a), "{a} not loaded: {names:?}");
    }

    // A pipeline counter moves after a deal: incentive applied it, as scraped.
    let q = r#"sum(spm_events_consumed_total{service="incentive", topic="spm.crm.deals.v1"}) or vector(0)"#;
    let before = eventually(
        Duration::from_secs(30),
        "a first scrape of the counter",
        || {
            let base = base.clone();
            async move { prom_query(&base, q).await }
        },
    )
    .await;
    deal_through(&p, "scraped-1").await;
    eventually(
        Duration::from_secs(30),
        "the counter to rise in Prometheus",
        || {
            let base = base.clone();
            async move {
                prom_query(&base, q)
                    .await
                    .filter(|v| *v > before)
                    .map(|_| ())
            }
        },
    )
    .await;
    let _ = prom.start_kill();
    let _ = prom.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service analyzes the tables of its schema as they fill (`spm_server::db::
/// keep_statistics`): rows arriving in one are described to the planner within seconds,
/// not at autovacuum's next round. Without it, a table filled from empty in autovacuum's
/// first minute is planned as if it held a handful of rows (issue #21).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_keeps_its_tables_statistics_current_as_they_fill() {
    let env = TestEnv::new("stats").await;
    let _incentive = env.start("incentive").await;
    let pool = env.pool("incentive").await;
    let stats = || async {
        sqlx::query_as::<_, (f32, Option<chrono::DateTime<chrono::Utc>>)>(
            "SELECT c.reltuples, s.last_analyze FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
              WHERE s.schemaname = 'incentive' AND s.relname = 'inbox'",
        )
        .fetch_one(&pool)
        .await
        .expect("inbox statistics")
    };
    let (before, analyzed) = stats().await;
    assert!(
        before < 1_000.0 && analyzed.is_none(),
        "the service's inbox starts nearly empty and never analyzed by hand: {before} rows, {analyzed:?}"
    );
    sqlx::query(
        "INSERT INTO inbox (event_id, topic, partition, \"offset\")
         SELECT gen_random_uuid(), 'stats-test', 0, g FROM generate_series(1, 5000) g",
    )
    .execute(&pool)
    .await
    .expect("fill the inbox");
    let rows = eventually(Duration::from_secs(30), "the inbox analyzed", || async {
        let (rows, at) = stats().await;
        (at.is_some() && rows >= 5_000.0).then_some(rows)
    })
    .await;
    assert!(
        rows < 5_100.0,
        "the statistics count the rows there are: {rows}"
    );
}
