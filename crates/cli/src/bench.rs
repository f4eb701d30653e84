//! `spm bench`: SPM's published, reproducible benchmarks. Every figure is measured here, in
//! one run, against the local stack (real Postgres, the real broker) and the release
//! service binaries as processes, with each baseline measured in the same run. Prints a
//! table and writes JSON and Markdown (docs/benchmarks.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use comfy_table::Cell;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use spm_core::period::{Calendar, PeriodKind};
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload as Out;
use spm_proto::incentive::v1 as ipb;
use spm_proto::ingest::v1 as pb;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::notification::v1 as npb;
use spm_proto::scoring::v1 as spb;
use spm_testkit::{Service, TestEnv, authed, create_tenant, wait_key_known};

use crate::out::{num, table, title};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Smaller sizes (a few minutes; for CI and development).
    #[arg(long)]
    pub quick: bool,
    /// Sections to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "broker,ingest,scoring,incentive,incentive-scale,scale-out,auth,portal,notification,rebuild,audit,connect"
    )]
    pub only: Vec<String>,
    /// Markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// JSON report.
    #[arg(long, default_value = "docs/benchmarks.json")]
    pub json: PathBuf,
}

struct Sizes {
    ingest_events: usize,
    scoring_events: usize,
    query_secs: u64,
    incentive_deals: usize,
    /// Deals of the one rep-period that fills up (incentive-scale).
    flat_deals: usize,
    /// Deals of the year a plan change recomputes (incentive-scale).
    retro_deals: usize,
    /// Deals per phase of the scale-out section (with four activities each).
    scale_out_deals: usize,
    notification_secs: u64,
    rebuild_events: usize,
    hop_secs: u64,
    audit_rounds: usize,
    verify_postings: usize,
    /// CDC events through the connector.
    connect_events: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Figure {
    section: String,
    name: String,
    value: f64,
    unit: String,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    rss: HashMap<String, u64>,
    notes: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        section: &str,
        name: &str,
        value: f64,
        unit: &str,
        target: &str,
        met: Option<bool>,
    ) {
        println!(
            "  {name}: {value:.2} {unit}{}",
            if target.is_empty() {
                String::new()
            } else {
                format!(" (target {target})")
            }
        );
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            target: target.into(),
            met,
        });
    }

    /// Where the time went in a consuming service: its mean batch transaction and the mean
    /// age of events when applied, per topic, from its own /metrics.
    async fn stages(&mut self, section: &str, s: &Service) {
        let text = s.metrics().await;
        let sum = |name: &str, l: &[&str]| spm_testkit::process::parse_metric_sum(&text, name, l);
        let batches = sum("spm_processing_seconds_count", &[]);
        if batches > 0.0 {
            self.add(
                section,
                &format!("spm-{} mean consumer batch (of {batches:.0})", s.name),
                sum("spm_processing_seconds_sum", &[]) / batches * 1000.0,
                "ms",
                "",
                None,
            );
        }
        let mut topics: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("spm_event_age_seconds_count{"))
            .filter_map(|l| {
                l.split("topic=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        topics.sort();
        topics.dedup();
        for t in topics {
            let l = format!("topic=\"{t}\"");
            let n = sum("spm_event_age_seconds_count", &[&l]);
            if n > 0.0 {
                self.add(
                    section,
                    &format!("spm-{} mean event age when applied, {t}", s.name),
                    sum("spm_event_age_seconds_sum", &[&l]) / n * 1000.0,
                    "ms",
                    "",
                    None,
                );
            }
        }
    }

    fn rss(&mut self, s: &Service) {
        if let Some(kib) = peak_rss_kib(s) {
            let e = self.rss.entry(s.name.clone()).or_insert(0);
            *e = (*e).max(kib);
        }
    }
}

/// Peak resident set size of a service process (VmHWM), KiB.
fn peak_rss_kib(s: &Service) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU seconds used so far by each component: the services of `svcs`, every postgres
/// process, the broker and this process (the load generator).
fn cpu(svcs: &[&Service]) -> HashMap<String, f64> {
    let ticks = |pid: &str| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(") ")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let t: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(t / 100.0)
    };
    let mut out = HashMap::new();
    for s in svcs {
        if let Some(t) = ticks(&s.pid().to_string()) {
            *out.entry(format!("spm-{}", s.name)).or_insert(0.0) += t;
        }
    }
    out.insert("load generator".into(), ticks("self").unwrap_or(0.0));
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let name = match comm.trim() {
                "postgres" => "postgres",
                "tansu" | "nisshi" => "broker",
                _ => continue,
            };
            *out.entry(name.into()).or_insert(0.0) += ticks(&pid).unwrap_or(0.0);
        }
    }
    out
}

fn cpu_note(before: &HashMap<String, f64>, after: &HashMap<String, f64>, wall: Duration) -> String {
    let mut parts: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = parts.iter().map(|p| p.1).sum();
    format!(
        "CPU over {:.1} s wall: {} (total {:.1} CPU-s of {:.1} available)",
        wall.as_secs_f64(),
        parts
            .iter()
            .map(|(k, v)| format!("{k} {v:.1} s"))
            .collect::<Vec<_>>()
            .join(", "),
        total,
        wall.as_secs_f64() * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
    )
}

/// Latency samples.
#[derive(Default, Clone)]
struct Lat(Vec<Duration>);

impl Lat {
    fn q(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }
}

fn ctx() -> common::TenantContext {
    common::TenantContext {
        time_zone: "UTC".into(),
        fiscal_year_start_month: 1,
        base_currency: "EUR".into(),
    }
}

fn envelope(tenant: &str, id: &str, at: chrono::DateTime<Utc>, p: Out) -> ev::EventEnvelope {
    let ts = spm_proto::ext::timestamp(at);
    ev::EventEnvelope {
        event_id: spm_core::derived_id(&[tenant, id]).to_string(),
        tenant_id: tenant.into(),
        occurred_at: Some(ts),
        recorded_at: Some(spm_proto::ext::timestamp(Utc::now())),
        source: "bench".into(),
        tenant_context: Some(ctx()),
        causation_id: id.into(),
        payload: Some(p),
    }
}

fn money(a: &str) -> Option<common::Money> {
    Some(common::Money {
        amount: a.into(),
        currency: "EUR".into(),
    })
}

fn activity_env(tenant: &str, rep: &str, i: usize, at: chrono::DateTime<Utc>) -> ev::EventEnvelope {
    let kinds = [
        ev::ActivityKind::Visit,
        ev::ActivityKind::Call,
        ev::ActivityKind::Email,
        ev::ActivityKind::Meeting,
    ];
    envelope(
        tenant,
        &format!("act-{i}"),
        at,
        Out::ActivityLogged(ev::ActivityLogged {
            rep_id: rep.into(),
            activity_id: format!("a{i}"),
            kind: kinds[i % kinds.len()] as i32,
            customer_id: format!("c{}", i % 997),
            deal_id: String::new(),
            subject: "bench".into(),
        }),
    )
}

fn deal_env(
    tenant: &str,
    rep: &str,
    i: usize,
    at: chrono::DateTime<Utc>,
    amount: &str,
) -> ev::EventEnvelope {
    envelope(
        tenant,
        &format!("deal-{i}"),
        at,
        Out::DealCredited(ev::DealCredited {
            deal_id: format!("D{i}"),
            rep_id: rep.into(),
            customer_id: format!("c{}", i % 997),
            share_percent: "100".into(),
            credited_amount: money(amount),
            credited_base_amount: money(amount),
            deal_amount: money(amount),
            deal_base_amount: money(amount),
            lines: vec![ev::ProductLine {
                product_id: if i.is_multiple_of(3) {
                    "analytics"
                } else {
                    "platform"
                }
                .into(),
                quantity: 1,
                amount: money(amount),
            }],
            split_count: 1,
            payment_due_at: Some(spm_proto::ext::timestamp(at)),
            name: String::new(),
            fx_rate: "1".into(),
        }),
    )
}

/// Publishes envelopes as fast as the producer takes them: everything enqueued at once,
/// librdkafka batching freely (the best case for raw rdkafka). The producer is warmed up
/// first (connection, metadata, producer id) so only the sends are timed.
async fn produce(
    env: &TestEnv,
    topic: &str,
    envs: &[ev::EventEnvelope],
) -> anyhow::Result<Duration> {
    let k = env.kafka();
    // The topics exist before anything is produced (services create them at start; the
    // rebuild section starts none).
    spm_bus::admin::ensure_topics(&k).await?;
    let p = spm_bus::Producer::new(&k)?;
    let full = k.topic(topic);
    let span = tracing::Span::none();
    let records: Vec<spm_bus::Record> = envs
        .iter()
        .map(|e| {
            let rep = match &e.payload {
                Some(Out::ActivityLogged(a)) => a.rep_id.clone(),
                Some(Out::DealCredited(d)) => d.rep_id.clone(),
                Some(Out::RepUpserted(r)) => r.rep_id.clone(),
                _ => String::new(),
            };
            spm_bus::envelope_record(
                full.clone(),
                spm_core::kafka_key(&e.tenant_id, &rep),
                e,
                &span,
            )
        })
        .collect();
    if let Some(first) = records.first() {
        // Warm-up: one record (a duplicate event id, skipped by any consumer).
        let _ = p.send(first).await;
    }
    let t = Instant::now();
    // In slices of 50,000: everything in flight at once only measures how long the last
    // record waits in the producer's queue (and can exceed its delivery timeout).
    for slice in records.chunks(50_000) {
        for r in p.send_all(slice).await {
            r.context("raw produce")?;
        }
    }
    Ok(t.elapsed())
}

async fn with_service_env(name: &str, partitions: i32) -> TestEnv {
    let mut env = TestEnv::new(name).await;
    env.partitions = partitions;
    env
}

const QUIET: &[(&str, &str)] = &[("RUST_LOG", "warn"), ("SPM_DB_MAX_CONNECTIONS", "10")];

pub async fn run(a: &Args) -> anyhow::Result<()> {
    let sizes = if a.quick {
        Sizes {
            ingest_events: 40_000,
            scoring_events: 20_000,
            query_secs: 4,
            incentive_deals: 10_000,
            flat_deals: 2_000,
            retro_deals: 10_000,
            scale_out_deals: 4_000,
            notification_secs: 5,
            rebuild_events: 100_000,
            hop_secs: 4,
            audit_rounds: 400,
            verify_postings: 100_000,
            connect_events: 5_000,
        }
    } else {
        Sizes {
            ingest_events: 200_000,
            scoring_events: 100_000,
            query_secs: 10,
            incentive_deals: 100_000,
            flat_deals: 10_000,
            retro_deals: 100_000,
            scale_out_deals: 20_000,
            notification_secs: 15,
            rebuild_events: 1_000_000,
            hop_secs: 10,
            audit_rounds: 2_000,
            verify_postings: 1_000_000,
            connect_events: 20_000,
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::local::stack_up()?;
    // SAFETY of the environment: the testkit reads these to find the stack.
    let mut report = Report::default();
    let started = Instant::now();
    for section in &a.only {
        title(&format!("bench: {section}"));
        // What the previous section wrote is flushed now, not by a checkpoint during this
        // section's measurement.
        checkpoint().await?;
        let t = Instant::now();
        match section.as_str() {
            "broker" => broker(&sizes, &mut report).await?,
            "ingest" => ingest(&sizes, &mut report).await?,
            "scoring" => scoring(&sizes, &mut report).await?,
            "incentive" => incentive(&sizes, &mut report).await?,
            "incentive-scale" => incentive_scale(&sizes, &mut report).await?,
            "scale-out" => scale_out(&sizes, &mut report).await?,
            "auth" => auth(&sizes, &mut report).await?,
            "portal" => portal(&sizes, &mut report).await?,
            "notification" => notification(&sizes, &mut report).await?,
            "rebuild" => rebuild(&sizes, &mut report).await?,
            "audit" => audit(&sizes, &mut report).await?,
            "connect" => connect(&sizes, &mut report).await?,
            other => anyhow::bail!("unknown section {other}"),
        }
        println!("  ({section} took {:.0} s)", t.elapsed().as_secs_f64());
    }
    title("peak RSS of each service under load");
    for (svc, kib) in &report.rss.clone() {
        #[allow(clippy::cast_precision_loss)]
        let mib = *kib as f64 / 1024.0;
        report.add(
            "rss",
            &format!("spm-{svc} peak RSS"),
            mib,
            "MiB",
            "< 100 MiB",
            Some(mib < 100.0),
        );
    }
    write_reports(a, &report, started.elapsed()).await?;
    Ok(())
}

/// Flushes Postgres's dirty buffers (CHECKPOINT) so that sections do not measure each
/// other's write-back.
async fn checkpoint() -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let url = spm_testkit::Stack::from_env().admin_db_url;
    let mut c = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("CHECKPOINT").execute(&mut c).await?;
    Ok(())
}

/// Records when each event reached SPM's consumer loop (inside its batch transaction, as a
/// service's handler sees it).
#[derive(Default)]
struct HopProbe {
    sent: Mutex<HashMap<uuid::Uuid, Instant>>,
    seen: Mutex<Vec<Duration>>,
    applied: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl spm_bus::Handler for HopProbe {
    async fn apply(
        &self,
        _conn: &mut sqlx::PgConnection,
        batch: &[&spm_bus::Incoming],
        _out: &mut spm_bus::Outbox,
    ) -> Result<(), spm_bus::HandlerError> {
        let now = Instant::now();
        let sent = self.sent.lock().expect("sent");
        let mut seen = self.seen.lock().expect("seen");
        for e in batch {
            if let Some(at) = sent.get(&e.event_id) {
                seen.push(now - *at);
            }
        }
        self.applied
            .fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// One produce -> consume hop through SPM's own producer and consumer loop (inbox
/// transaction included) at 1,000 records/s with the shipped settings (fetch wait 10 ms,
/// session timeout 6 s), on each broker that is installed, one after the other in this
/// run: nisshi on its memory and its SQLite engine, and Tansu 0.6.0 as the baseline. Six
/// partitions per topic (SPM's default) unless a label says otherwise.
async fn broker(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    use spm_testkit::{BrokerKind, PrivateBroker, Storage};
    // The SQLite engine once more with one partition per topic: whether its cost is per
    // request (a fetch covers every partition) rather than per record.
    let candidates = [
        ("nisshi memory", BrokerKind::Nisshi, Storage::Memory, 6),
        ("nisshi sqlite", BrokerKind::Nisshi, Storage::Sqlite, 6),
        (
            "nisshi sqlite, 1 partition",
            BrokerKind::Nisshi,
            Storage::Sqlite,
            1,
        ),
        ("Tansu 0.6.0 memory", BrokerKind::Tansu, Storage::Memory, 6),
    ];
    let rate = 1000;
    for (label, kind, storage, partitions) in candidates {
        if !kind.installed() {
            r.notes.push(format!(
                "broker: {label} skipped ({} is not installed)",
                kind.binary()
            ));
            continue;
        }
        let b = PrivateBroker::launch(kind, storage);
        let mut env = TestEnv::new("bench-hop").await;
        env.stack.brokers = b.brokers.clone();
        env.partitions = partitions;
        let k = env.kafka();
        spm_bus::admin::ensure_topics(&k).await?;
        {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(&env.db_url).await?;
            sqlx::query("CREATE SCHEMA hop").execute(&mut c).await?;
            sqlx::query("SET search_path TO hop")
                .execute(&mut c)
                .await?;
            for (_, _, sql) in spm_bus::schema::MIGRATIONS {
                sqlx::raw_sql(sql).execute(&mut c).await?;
            }
        }
        let pool = env.pool("hop").await;
        let producer = spm_bus::Producer::new(&k)?;
        let probe = Arc::new(HopProbe::default());
        let cancel = tokio_util::sync::CancellationToken::new();
        let lp = spm_bus::consumer::ConsumerLoop::new(
            &k,
            "hop",
            &[topics::ACTIVITIES],
            pool,
            producer.clone(),
            probe.clone(),
        );
        let started = Instant::now();
        let task = tokio::spawn(lp.run(cancel.clone()));
        let topic = k.topic(topics::ACTIVITIES);
        let record = |i: usize| {
            let e = activity_env("bench", &format!("rep-{}", i % 60), i, Utc::now());
            let id: uuid::Uuid = e.event_id.parse().expect("uuid");
            let rec = spm_bus::envelope_record(
                topic.clone(),
                format!("bench/rep-{}", i % 60),
                &e,
                &tracing::Span::none(),
            );
            (id, rec)
        };
        // The group forms: records go out every 100 ms until the loop applies one.
        let mut i = 0;
        while probe.applied.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{label}: the consumer group did not form in 60 s"
            );
            let (_, rec) = record(1_000_000 + i);
            producer.send(&rec).await?;
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let join = started.elapsed();
        let (acks, errors) = open_loop(rate, sz.hop_secs, |i| {
            let (id, rec) = record(i);
            probe.sent.lock().expect("sent").insert(id, Instant::now());
            let p = producer.clone();
            async move { p.send(&rec).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .await;
        let n = usize::try_from(u64::from(rate) * sz.hop_secs).unwrap_or(usize::MAX);
        let deadline = Instant::now() + Duration::from_secs(60);
        while probe.seen.lock().expect("seen").len() < n - errors && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        let _ = task.await;
        let hops = Lat(probe.seen.lock().expect("seen").clone());
        let sec = "broker";
        r.add(
            sec,
            &format!("{label}: first group join (loop start -> first record applied)"),
            join.as_secs_f64(),
            "s",
            "",
            None,
        );
        r.add(
            sec,
            &format!("{label}: produce acknowledged p50 ({rate}/s)"),
            acks.q(0.5),
            "ms",
            "",
            None,
        );
        r.add(
            sec,
            &format!("{label}: produce acknowledged p99 ({rate}/s)"),
            acks.q(0.99),
            "ms",
            "",
            None,
        );
        r.add(
            sec,
            &format!("{label}: one hop, produce -> SPM consumer loop p50 ({rate}/s)"),
            hops.q(0.5),
            "ms",
            "",
            None,
        );
        r.add(
            sec,
            &format!("{label}: one hop p99"),
            hops.q(0.99),
            "ms",
            "",
            None,
        );
        #[allow(clippy::cast_precision_loss)]
        r.add(
            sec,
            &format!("{label}: records applied (of {n})"),
            hops.0.len() as f64,
            "records",
            &n.to_string(),
            Some(hops.0.len() == n && errors == 0),
        );
        drop(env);
        drop(b);
    }
    Ok(())
}

async fn ingest(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let env = with_service_env("bench-ingest", 6).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let reps: Vec<String> = (0..1000).map(|i| format!("rep-{i}")).collect();
    let mut c = IngestServiceClient::new(ingest.channel().await);
    for chunk in reps.chunks(500) {
        let events = chunk
            .iter()
            .map(|x| spm_testkit::events::rep(x, "", ""))
            .collect();
        c.submit_events(authed(pb::SubmitEventsRequest { events }, &t.admin_key))
            .await?;
    }
    let now = Utc::now();
    // The baseline: the same number of envelopes of the same size, raw rdkafka, same broker.
    let raw: Vec<ev::EventEnvelope> = (0..sz.ingest_events)
        .map(|i| activity_env("bench", &reps[i % reps.len()], i, now))
        .collect();
    // The median of three runs.
    let mut raw_rates = Vec::new();
    for _ in 0..3 {
        let took = produce(&env, topics::ACTIVITIES, &raw).await?;
        #[allow(clippy::cast_precision_loss)]
        raw_rates.push(sz.ingest_events as f64 / took.as_secs_f64());
    }
    raw_rates.sort_by(f64::total_cmp);
    let raw_rate = raw_rates[1];

    let events: Vec<pb::CrmEvent> = (0..sz.ingest_events)
        .map(|i| {
            let mut e =
                spm_testkit::events::activity(&reps[i % reps.len()], ev::ActivityKind::Visit);
            e.occurred_at = Some(spm_proto::ext::timestamp(now));
            e
        })
        .collect();
    let streams = 4;
    // The requests and connections are made before the clock, as the raw baseline's
    // records are: only sending, ingest's work and the acknowledgements are timed.
    let mut parts = Vec::new();
    for part in events.chunks(events.len().div_ceil(streams)) {
        let requests: Vec<pb::StreamEventsRequest> = part
            .chunks(1000)
            .map(|chunk| pb::StreamEventsRequest {
                events: chunk.to_vec(),
            })
            .collect();
        parts.push((requests, ingest.channel().await));
    }
    drop(events);
    let lat = Arc::new(Mutex::new(Lat::default()));
    let cpu0 = cpu(&[&ingest]);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (requests, ch) in parts {
        let key = t.admin_key.clone();
        let lat = lat.clone();
        handles.push(tokio::spawn(async move {
            let mut c = IngestServiceClient::new(ch);
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::StreamEventsRequest>(4);
            let sent: Arc<Mutex<std::collections::VecDeque<Instant>>> = Arc::default();
            let sent2 = sent.clone();
            let feeder = tokio::spawn(async move {
                for request in requests {
                    sent2.lock().expect("sent").push_back(Instant::now());
                    if tx.send(request).await.is_err() {
                        break;
                    }
                }
            });
            let mut resp = c
                .stream_events(authed(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    &key,
                ))
                .await?
                .into_inner();
            let mut accepted = 0usize;
            while let Some(m) = resp.message().await? {
                let at = sent.lock().expect("sent").pop_front();
                if let Some(at) = at {
                    lat.lock().expect("lat").0.push(at.elapsed());
                }
                accepted += m
                    .acks
                    .iter()
                    .filter(|a| a.status == pb::AckStatus::Accepted as i32)
                    .count();
            }
            feeder.await?;
            anyhow::Ok(accepted)
        }));
    }
    let mut accepted = 0;
    for h in handles {
        accepted += h.await??;
    }
    let took = t0.elapsed();
    let note = format!("ingest phase: {}", cpu_note(&cpu0, &cpu(&[&ingest]), took));
    println!("  {note}");
    r.notes.push(note);
    #[allow(clippy::cast_precision_loss)]
    let rate = accepted as f64 / took.as_secs_f64();

    // The design floor: what ingest cannot do without. The same records produced raw while
    // the same number of idempotency records are inserted by ingest's own statement
    // (`store::claim`), 4 writers in 1,000-row transactions as ingest's 4 streams do,
    // pipelined with the produce.
    let pool = env.pool("ingest").await;
    let ids: Vec<uuid::Uuid> = (0..sz.ingest_events)
        .map(|_| uuid::Uuid::new_v4())
        .collect();
    let hashes: Vec<[u8; 32]> = (0..sz.ingest_events).map(|_| rand::random()).collect();
    let t0 = Instant::now();
    let writers = ids
        .chunks(ids.len().div_ceil(streams))
        .zip(hashes.chunks(ids.len().div_ceil(streams)))
        .map(|(ids, hashes)| {
            let pool = pool.clone();
            let ids = ids.to_vec();
            let hashes = hashes.to_vec();
            async move {
                for (ids, hashes) in ids.chunks(1000).zip(hashes.chunks(1000)) {
                    let mut tx = pool.begin().await?;
                    let h: Vec<&[u8]> = hashes.iter().map(<[u8; 32]>::as_slice).collect();
                    spm_ingest::store::claim(&mut tx, "bench", ids, &h, Utc::now()).await?;
                    tx.commit().await?;
                }
                anyhow::Ok(())
            }
        });
    let (produced, written) = tokio::join!(
        produce(&env, topics::ACTIVITIES, &raw),
        futures::future::try_join_all(writers)
    );
    produced?;
    written?;
    #[allow(clippy::cast_precision_loss)]
    let floor_rate = sz.ingest_events as f64 / t0.elapsed().as_secs_f64();
    let lat = lat.lock().expect("lat").clone();
    let s = "ingest";
    r.add(
        s,
        "raw rdkafka produce rate (same broker, same run, median of 3)",
        raw_rate,
        "events/s",
        "",
        None,
    );
    r.add(
        s,
        "ingest accepted rate (gRPC stream, 4 streams x 1,000-event messages)",
        rate,
        "events/s",
        "",
        None,
    );
    r.add(
        s,
        "ingest / raw produce ratio (target re-based: see the floor below)",
        rate / raw_rate,
        "x",
        "",
        None,
    );
    r.add(
        s,
        "design floor: raw produce + the same idempotency rows by ingest's statement, pipelined",
        floor_rate,
        "events/s",
        "",
        None,
    );
    r.add(
        s,
        "ingest / design floor ratio",
        rate / floor_rate,
        "x",
        ">= 0.8",
        Some(rate / floor_rate >= 0.8),
    );
    r.add(
        s,
        "ack latency p50 (per 1,000-event message)",
        lat.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "ack latency p99 (per 1,000-event message)",
        lat.q(0.99),
        "ms",
        "",
        None,
    );
    anyhow::ensure!(
        accepted == sz.ingest_events,
        "only {accepted} of {} events accepted",
        sz.ingest_events
    );
    r.rss(&ingest);
    Ok(())
}

async fn wait_count(
    pool: &sqlx::PgPool,
    sql: &str,
    want: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        if n >= want {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < limit, "{sql}: {n} of {want} after {limit:?}");
        // A count is linear in the table: poll a large one seldom (every 100 ms over 100k
        // credits cost the measured Postgres ~5 s of CPU). Figures come from commit times,
        // not from when this loop notices.
        tokio::time::sleep(Duration::from_millis(if want > 20_000 {
            1000
        } else {
            100
        }))
        .await;
    }
}

/// Rate from the first to the last applied_at of a service's inbox.
async fn inbox_rate(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<f64> {
    let (first, last): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT min(applied_at), max(applied_at) FROM inbox")
            .fetch_one(pool)
            .await?;
    let secs = (last - first)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64()
        .max(0.001);
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / secs)
}

async fn scoring(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let env = with_service_env("bench-scoring", 6).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    let now = Utc::now();
    let reps: Vec<String> = (0..1000).map(|i| format!("rep-{i}")).collect();
    // 90% activities, 10% deal credits, over the current month.
    let month = Calendar::default().period(PeriodKind::Month, now);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut acts = Vec::new();
    let mut deals = Vec::new();
    for i in 0..sz.scoring_events {
        let rep = &reps[i % reps.len()];
        let at = month.start
            + chrono::Duration::seconds(
                rng.random_range(0..(now - month.start).num_seconds().max(1)),
            );
        if i % 10 == 0 {
            deals.push(deal_env(
                "bench",
                rep,
                i,
                at,
                &format!("{}.00", rng.random_range(500..50_000)),
            ));
        } else {
            acts.push(activity_env("bench", rep, i, at));
        }
    }
    produce(&env, topics::ACTIVITIES, &acts).await?;
    produce(&env, topics::DEALS, &deals).await?;
    let scoring = env.start_with("scoring", QUIET).await;
    wait_key_known(&scoring, &t.admin_key).await;
    let pool = env.pool("scoring").await;
    let n = i64::try_from(sz.scoring_events).unwrap_or(i64::MAX);
    wait_count(
        &pool,
        "SELECT count(*) FROM facts",
        n,
        Duration::from_secs(900),
    )
    .await?;
    let rate = inbox_rate(&pool, sz.scoring_events).await?;
    let s = "scoring";
    r.add(
        s,
        "events applied (batched transactions, from the broker)",
        rate,
        "events/s",
        ">= 10,000/s",
        Some(rate >= 10_000.0),
    );
    r.rss(&scoring);

    // GetScore at a fixed rate, open loop: latency from the scheduled send time.
    let (lat, errors) = open_loop(2000, sz.query_secs, {
        let ch = scoring.channel().await;
        let key = t.admin_key.clone();
        let reps = reps.clone();
        move |i| {
            let mut c = spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient::new(
                ch.clone(),
            );
            let req = authed(
                spb::GetScoreRequest {
                    rep_id: reps[i % reps.len()].clone(),
                    period: None,
                },
                &key,
            );
            async move {
                c.get_score(req)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await;
    r.add(s, "GetScore p50 at 2,000 req/s", lat.q(0.5), "ms", "", None);
    r.add(
        s,
        "GetScore p99 at 2,000 req/s",
        lat.q(0.99),
        "ms",
        "< 5 ms",
        Some(lat.q(0.99) < 5.0),
    );
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        "GetScore errors",
        errors as f64,
        "requests",
        "0",
        Some(errors == 0),
    );
    r.rss(&scoring);
    drop(ingest);
    Ok(())
}

/// Sends `rate` requests per second for `secs` seconds, each at its scheduled time
/// (concurrently, so a slow response does not delay the next: no coordinated omission).
async fn open_loop<F, Fut>(rate: u32, secs: u64, f: F) -> (Lat, usize)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let n = usize::try_from(u64::from(rate) * secs).unwrap_or(usize::MAX);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let lat = Arc::new(Mutex::new(Lat::default()));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        let fut = f(i);
        let (lat, errors) = (lat.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let res = fut.await;
            let took = tokio::time::Instant::now() - at;
            match res {
                Ok(()) => lat.lock().expect("lat").0.push(took),
                Err(e) => {
                    if errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        eprintln!("  first error: {e}");
                    }
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let l = lat.lock().expect("lat").clone();
    (l, errors.load(std::sync::atomic::Ordering::Relaxed))
}

fn bench_plan(spiff_from: &str) -> ipb::Plan {
    ipb::Plan {
        plan_id: "bench".into(),
        name: "bench".into(),
        effective_from: "2020-01-01".into(),
        period_kind: common::PeriodKind::Month as i32,
        assignment: Some(ipb::PlanAssignment {
            tenant_default: true,
            ..Default::default()
        }),
        commission: Some(ipb::Commission {
            basis: ipb::TierBasis::Attainment as i32,
            mode: ipb::TierMode::Marginal as i32,
            quota: "500000".into(),
            tiers: vec![
                ipb::Tier {
                    from: "0".into(),
                    rate: "0.04".into(),
                },
                ipb::Tier {
                    from: "1".into(),
                    rate: "0.07".into(),
                },
                ipb::Tier {
                    from: "1.5".into(),
                    rate: "0.1".into(),
                },
            ],
            per_deal_cap: "5000".into(),
            ..Default::default()
        }),
        payout: Some(ipb::PayoutSplit {
            at_close_percent: "50".into(),
            on_collection_percent: "50".into(),
        }),
        spiffs: vec![ipb::Spiff {
            spiff_id: "analytics".into(),
            name: "analytics".into(),
            product_ids: vec!["analytics".into()],
            from_date: spiff_from.into(),
            to_date: "2099-12-31".into(),
            reward: Some(ipb::spiff::Reward::Rate("0.02".into())),
        }],
        clawback_window_days: 90,
        ..Default::default()
    }
}

/// Puts the bench plan LIVE for the tenant of `key`, effective from `month`'s start.
async fn put_live_plan(
    adm: &mut spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient<
        tonic::transport::Channel,
    >,
    key: &str,
    month: &spm_core::period::Period,
) -> anyhow::Result<()> {
    adm.put_plan(authed(
        ipb::PutPlanRequest {
            plan: Some(bench_plan(&month.start.format("%Y-%m-%d").to_string())),
            draft: false,
        },
        key,
    ))
    .await?;
    Ok(())
}

async fn incentive(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let env = with_service_env("bench-incentive", 6).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let incentive = env.start_with("incentive", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    wait_key_known(&incentive, &t.admin_key).await;
    let now = Utc::now();
    let month = Calendar::default().period(PeriodKind::Month, now);
    let mut adm =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            incentive.channel().await,
        );
    put_live_plan(&mut adm, &t.admin_key, &month).await?;
    let reps: Vec<String> = (0..500).map(|i| format!("rep-{i}")).collect();
    // The same deals for any tenant.
    let deals_of = |tenant: &str| -> Vec<ev::EventEnvelope> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        (0..sz.incentive_deals)
            .map(|i| {
                let at = month.start
                    + chrono::Duration::seconds(
                        rng.random_range(0..(now - month.start).num_seconds().max(1)),
                    );
                deal_env(
                    tenant,
                    &reps[i % reps.len()],
                    i,
                    at,
                    &format!("{}.00", rng.random_range(500..20_000)),
                )
            })
            .collect()
    };
    let (c0, w0) = (cpu(&[&incentive]), Instant::now());
    produce(&env, topics::DEALS, &deals_of("bench")).await?;
    let pool = env.pool("incentive").await;
    let n = i64::try_from(sz.incentive_deals).unwrap_or(i64::MAX);
    wait_count(
        &pool,
        "SELECT count(*) FROM credits",
        n,
        Duration::from_secs(1800),
    )
    .await?;
    let note = format!(
        "incentive apply: {}",
        cpu_note(&c0, &cpu(&[&incentive]), w0.elapsed())
    );
    println!("  {note}");
    r.notes.push(note);
    let rate = inbox_rate(&pool, sz.incentive_deals).await?;
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await?;
    let s = "incentive";
    r.add(
        s,
        &format!(
            "deals processed into ledger lines ({} deals, {lines} lines)",
            sz.incentive_deals
        ),
        rate,
        "deals/s",
        "",
        None,
    );
    r.rss(&incentive);
    let floor = incentive_floor(&env, &pool, "bench", sz.incentive_deals).await?;
    r.add(
        s,
        "design floor: Postgres writing the same rows in the same batches, nothing else",
        floor,
        "deals/s",
        "",
        None,
    );
    let of_floor = rate / floor;
    r.add(
        s,
        "incentive apply / design floor (same run)",
        of_floor,
        "x",
        ">= 0.5x (proposed, in place of 10,000/s)",
        Some(of_floor >= 0.5),
    );

    let mut c = spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
        incentive.channel().await,
    );
    let mut lat = Lat::default();
    for i in 0..2000 {
        let req = ipb::WhatIfRequest {
            rep_id: reps[i % reps.len()].clone(),
            amount: money("12000.00"),
            lines: vec![],
            close_at: None,
        };
        let t0 = Instant::now();
        c.what_if(authed(req, &t.admin_key)).await?;
        lat.0.push(t0.elapsed());
    }
    r.add(
        s,
        &format!(
            "what-if p50 (deal on a rep with ~{} deals)",
            sz.incentive_deals / reps.len()
        ),
        lat.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "what-if p99",
        lat.q(0.99),
        "ms",
        "< 50 ms",
        Some(lat.q(0.99) < 50.0),
    );
    // First read of each rep's statement: from Postgres (then cached until its ledger
    // changes). Closed loop, one at a time.
    let mut cold = Lat::default();
    for rep in &reps {
        let t0 = Instant::now();
        c.get_statement(authed(
            ipb::GetStatementRequest {
                as_of: None,
                with_explanations: false,
                rep_id: rep.clone(),
                period: None,
            },
            &t.admin_key,
        ))
        .await?;
        cold.0.push(t0.elapsed());
    }
    r.add(
        s,
        "GetStatement first read per rep (from Postgres) p50",
        cold.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "GetStatement first read per rep (from Postgres) p99",
        cold.q(0.99),
        "ms",
        "",
        None,
    );
    let (lat, errors) = open_loop(2000, sz.query_secs, {
        let ch = incentive.channel().await;
        let key = t.admin_key.clone();
        let reps = reps.clone();
        move |i| {
            let mut c =
                spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
                    ch.clone(),
                );
            let req = authed(
                ipb::GetStatementRequest {
                    as_of: None,
                    with_explanations: false,
                    rep_id: reps[i % reps.len()].clone(),
                    period: None,
                },
                &key,
            );
            async move {
                c.get_statement(req)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await;
    r.add(
        s,
        &format!(
            "GetStatement p50 at 2,000 req/s (~{} ledger rows each, served from memory)",
            lines / i64::try_from(reps.len()).unwrap_or(1)
        ),
        lat.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "GetStatement p99 at 2,000 req/s",
        lat.q(0.99),
        "ms",
        "< 5 ms",
        Some(lat.q(0.99) < 5.0),
    );
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        "GetStatement errors",
        errors as f64,
        "requests",
        "0",
        Some(errors == 0),
    );
    let mut draft = bench_plan("2020-01-01");
    draft.commission.as_mut().expect("commission").tiers[1].rate = "0.09".into();
    let t0 = Instant::now();
    let sim = c
        .simulate_plan(authed(
            ipb::SimulatePlanRequest {
                draft: Some(draft),
                period: None,
            },
            &t.admin_key,
        ))
        .await?
        .into_inner();
    let took = t0.elapsed();
    r.add(
        s,
        &format!(
            "plan simulation over {} deals ({} reps)",
            sim.deals, sim.reps
        ),
        took.as_secs_f64() * 1000.0,
        "ms",
        "",
        None,
    );
    r.rss(&incentive);

    // The same deals again, for a tenant with the same live plan and one version of it in
    // shadow (computed beside it into its own ledger): the work per deal doubles at most.
    let t2 = create_tenant(&env, &ingest, "bench-shadow").await;
    wait_key_known(&incentive, &t2.admin_key).await;
    put_live_plan(&mut adm, &t2.admin_key, &month).await?;
    let mut shadow = bench_plan(&month.start.format("%Y-%m-%d").to_string());
    shadow.commission.as_mut().expect("commission").tiers[1].rate = "0.09".into();
    adm.put_plan(authed(
        ipb::PutPlanRequest {
            plan: Some(shadow),
            draft: true,
        },
        &t2.admin_key,
    ))
    .await?;
    adm.transition_plan(authed(
        ipb::TransitionPlanRequest {
            plan_id: "bench".into(),
            version: 2,
            to: ipb::PlanState::Shadow as i32,
            reason: "bench".into(),
        },
        &t2.admin_key,
    ))
    .await?;
    let mark: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&pool)
        .await?;
    produce(&env, topics::DEALS, &deals_of("bench-shadow")).await?;
    wait_count(
        &pool,
        "SELECT count(*) FROM credits WHERE tenant_id = 'bench-shadow'",
        n,
        Duration::from_secs(1800),
    )
    .await?;
    let (first, last): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT min(applied_at), max(applied_at) FROM inbox WHERE applied_at >= $1")
            .bind(mark)
            .fetch_one(&pool)
            .await?;
    #[allow(clippy::cast_precision_loss)]
    let rate2 = sz.incentive_deals as f64 / (last - first).to_std()?.as_secs_f64().max(0.001);
    let shadow_lines: i64 =
        sqlx::query_scalar("SELECT count(*) FROM shadow_ledger WHERE tenant_id = 'bench-shadow'")
            .fetch_one(&pool)
            .await?;
    r.add(
        s,
        &format!(
            "deals processed with one plan version in shadow ({} deals, {shadow_lines} shadow lines)",
            sz.incentive_deals
        ),
        rate2,
        "deals/s",
        "",
        None,
    );
    // The two tenants got the same deals under the same live plan, batched differently:
    // their ledgers must net to the same amount on every line and status.
    let differing: i64 = sqlx::query_scalar(
        "WITH a AS (SELECT rep_id, period_kind, source_period_key, line_key, status, sum(amount) AS s FROM ledger
                     WHERE tenant_id = 'bench' GROUP BY 1, 2, 3, 4, 5 HAVING sum(amount) <> 0),
              b AS (SELECT rep_id, period_kind, source_period_key, line_key, status, sum(amount) AS s FROM ledger
                     WHERE tenant_id = 'bench-shadow' GROUP BY 1, 2, 3, 4, 5 HAVING sum(amount) <> 0)
         SELECT count(*) FROM a FULL JOIN b USING (rep_id, period_kind, source_period_key, line_key, status)
          WHERE a.s IS DISTINCT FROM b.s",
    )
    .fetch_one(&pool)
    .await?;
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        "ledger lines netting differently between the two tenants (same deals and live plan, other batches)",
        differing as f64,
        "lines",
        "0",
        Some(differing == 0),
    );
    let ratio = rate2 / rate;
    r.add(
        s,
        "apply rate with one shadow / none (same run)",
        ratio,
        "x",
        ">= 0.5x",
        Some(ratio >= 0.5),
    );
    drop(ingest);
    Ok(())
}

/// The apply rate of `n` deals of one rep produced at once to an idle incentive: deals over
/// the span from just before the produce to the last inbox commit.
async fn apply_phase(
    env: &TestEnv,
    pool: &sqlx::PgPool,
    tenant: &str,
    deals: &[ev::EventEnvelope],
    total: i64,
) -> anyhow::Result<f64> {
    let mark: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    produce(env, topics::DEALS, deals).await?;
    wait_count(
        pool,
        &format!("SELECT count(*) FROM credits WHERE tenant_id = '{tenant}'"),
        total,
        Duration::from_secs(1800),
    )
    .await?;
    let last: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT max(applied_at) FROM inbox WHERE applied_at >= $1")
            .bind(mark)
            .fetch_one(pool)
            .await?;
    #[allow(clippy::cast_precision_loss)]
    Ok(deals.len() as f64 / (last - mark).to_std()?.as_secs_f64().max(0.001))
}

/// Incentive at scale: the cost of a deal as its rep-period fills (marginal and
/// retroactive tiers), and a plan version effective a year back going live over a year of
/// deals, against a bulk COPY of the ledger rows it posts.
async fn incentive_scale(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let s = "incentive-scale";
    let env = with_service_env("bench-scale", 6).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let incentive = env.start_with("incentive", QUIET).await;
    let pool = env.pool("incentive").await;
    let mut adm =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            incentive.channel().await,
        );
    let now = Utc::now();
    let month = Calendar::default().period(PeriodKind::Month, now);

    // 1. One rep-period filling up: the first tenth of its deals, then the last tenth.
    let n = sz.flat_deals;
    let tenth = n / 10;
    for (name, mode) in [
        ("marginal", ipb::TierMode::Marginal),
        ("retroactive", ipb::TierMode::Retroactive),
    ] {
        let tenant = format!("bench-flat-{name}");
        let t = create_tenant(&env, &ingest, &tenant).await;
        wait_key_known(&incentive, &t.admin_key).await;
        let mut plan = bench_plan(&month.start.format("%Y-%m-%d").to_string());
        let c = plan.commission.as_mut().expect("commission");
        c.mode = mode as i32;
        // Tiers crossed somewhere in the first tenth, so both tenths pay at every tier.
        c.quota = format!("{}", tenth * 10_000 / 2);
        adm.put_plan(authed(
            ipb::PutPlanRequest {
                plan: Some(plan),
                draft: false,
            },
            &t.admin_key,
        ))
        .await?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let deals: Vec<ev::EventEnvelope> = (0..n)
            .map(|i| {
                let at = month.start
                    + chrono::Duration::seconds(
                        rng.random_range(0..(now - month.start).num_seconds().max(1)),
                    );
                deal_env(
                    &tenant,
                    "rep-flat",
                    i,
                    at,
                    &format!("{}.00", rng.random_range(500..20_000)),
                )
            })
            .collect();
        let total = |k: usize| i64::try_from(k).unwrap_or(i64::MAX);
        let first = apply_phase(&env, &pool, &tenant, &deals[..tenth], total(tenth)).await?;
        apply_phase(
            &env,
            &pool,
            &tenant,
            &deals[tenth..n - tenth],
            total(n - tenth),
        )
        .await?;
        let last = apply_phase(&env, &pool, &tenant, &deals[n - tenth..], total(n)).await?;
        r.add(
            s,
            &format!("{name} tiers: apply rate, deals 1-{tenth} of one rep-period"),
            first,
            "deals/s",
            "",
            None,
        );
        r.add(
            s,
            &format!(
                "{name} tiers: apply rate, deals {}-{n} of the same rep-period",
                n - tenth + 1
            ),
            last,
            "deals/s",
            "",
            None,
        );
        let ratio = last / first;
        r.add(
            s,
            &format!("{name} tiers: last tenth / first tenth"),
            ratio,
            "x",
            ">= 0.8",
            Some(ratio >= 0.8),
        );
    }

    // 2. A year of deals (500 reps, one month each of the last 12), then a version
    // effective a year back goes live: every open period recomputed, adjustments posted.
    let tenant = "bench-retro";
    let t = create_tenant(&env, &ingest, tenant).await;
    wait_key_known(&incentive, &t.admin_key).await;
    adm.put_plan(authed(
        ipb::PutPlanRequest {
            plan: Some(bench_plan("2020-01-01")),
            draft: false,
        },
        &t.admin_key,
    ))
    .await?;
    let year_back = Calendar::default().period(
        PeriodKind::Month,
        month.start - chrono::Duration::days(30 * 11 + 15),
    );
    let reps: Vec<String> = (0..500).map(|i| format!("rep-{i}")).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let span = (now - year_back.start).num_seconds().max(1);
    let deals: Vec<ev::EventEnvelope> = (0..sz.retro_deals)
        .map(|i| {
            let at = year_back.start + chrono::Duration::seconds(rng.random_range(0..span));
            deal_env(
                tenant,
                &reps[i % reps.len()],
                i,
                at,
                &format!("{}.00", rng.random_range(500..20_000)),
            )
        })
        .collect();
    let applied = apply_phase(
        &env,
        &pool,
        tenant,
        &deals,
        i64::try_from(sz.retro_deals).unwrap_or(i64::MAX),
    )
    .await?;
    r.add(
        s,
        &format!(
            "a year of deals applied ({} deals, 500 reps, 12 months)",
            sz.retro_deals
        ),
        applied,
        "deals/s",
        "",
        None,
    );
    let mut v2 = bench_plan(&year_back.start.format("%Y-%m-%d").to_string());
    let c = v2.commission.as_mut().expect("commission");
    c.tiers[0].rate = "0.05".into();
    c.tiers[1].rate = "0.08".into();
    let mark: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&pool)
        .await?;
    let t0 = Instant::now();
    adm.put_plan(authed(
        ipb::PutPlanRequest {
            plan: Some(v2),
            draft: false,
        },
        &t.admin_key,
    ))
    .await?;
    let took = t0.elapsed();
    let (rows, periods): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (rep_id, period_key)) FROM ledger WHERE tenant_id = $1 AND posted_at >= $2",
    )
    .bind(tenant)
    .bind(mark)
    .fetch_one(&pool)
    .await?;
    // The baseline: the same rows COPYed into a table of the ledger's columns (no index,
    // no trigger), in the same run.
    sqlx::query("CREATE TABLE bulk_ledger (LIKE ledger)")
        .execute(&pool)
        .await?;
    let mut conn = pool.acquire().await?;
    let mut data = Vec::new();
    {
        use futures::TryStreamExt as _;
        let mut out = conn
            .copy_out_raw(&format!(
                "COPY (SELECT * FROM ledger WHERE tenant_id = '{tenant}' AND posted_at >= '{}') TO STDOUT",
                mark.to_rfc3339()
            ))
            .await?;
        while let Some(chunk) = out.try_next().await? {
            data.extend_from_slice(&chunk);
        }
    }
    let t1 = Instant::now();
    let mut copy = conn.copy_in_raw("COPY bulk_ledger FROM STDIN").await?;
    copy.send(data.as_slice()).await?;
    copy.finish().await?;
    let bulk = t1.elapsed();
    drop(conn);
    r.add(
        s,
        &format!(
            "retroactive plan change live: {periods} open rep-periods recomputed, {rows} adjustments posted"
        ),
        took.as_secs_f64(),
        "s",
        "< 30 s",
        Some(took.as_secs_f64() < 30.0),
    );
    r.add(
        s,
        &format!("bulk COPY of the same {rows} ledger rows (baseline)"),
        bulk.as_secs_f64(),
        "s",
        "",
        None,
    );
    r.add(
        s,
        "retroactive plan change / bulk COPY ratio",
        took.as_secs_f64() / bulk.as_secs_f64().max(0.001),
        "x",
        "",
        None,
    );
    r.rss(&incentive);
    drop(ingest);
    Ok(())
}

/// What a person's token costs against an API key: the authentication itself in process
/// (each service's `KeyStore`, with the issuer's keys and the person cached, the signature
/// verified every time), and `GetStatement` at 2,000 req/s end to end with each.
/// Gives the bench tenant the stack's provider (people sign in) and the bench plan from the
/// start of this month; returns the month.
async fn people_tenant(
    idp: &spm_testkit::oidc::Idp,
    ingest: &spm_testkit::Service,
    incentive: &spm_testkit::Service,
    key: &str,
    audience: &str,
) -> anyhow::Result<spm_core::period::Period> {
    spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient::new(
        ingest.channel().await,
    )
    .set_identity_provider(authed(
        pb::SetIdentityProviderRequest {
            provider: Some(pb::IdentityProvider {
                issuer: idp.issuer.clone(),
                audience: audience.to_owned(),
                person_claim: "email".into(),
                jwks_uri: String::new(),
            }),
        },
        key,
    ))
    .await
    .context("the bench tenant's identity provider (is the stack's OpenID provider up?)")?;
    let month = Calendar::default().period(PeriodKind::Month, Utc::now());
    spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
        incentive.channel().await,
    )
    .put_plan(authed(
        ipb::PutPlanRequest {
            plan: Some(bench_plan(&month.start.format("%Y-%m-%d").to_string())),
            draft: false,
        },
        key,
    ))
    .await?;
    Ok(month)
}

/// Signs `email` in to the portal at `portal` through the provider (as a browser does)
/// and returns the session cookie.
async fn portal_session(
    http: &reqwest::Client,
    idp: &spm_testkit::oidc::Idp,
    portal: &str,
    tenant: &str,
    email: &str,
) -> anyhow::Result<String> {
    let login = http
        .get(format!("{portal}/t/{tenant}/login"))
        .send()
        .await?;
    let authorize = login
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("the portal's sign-in redirects to the provider")?
        .to_owned();
    let back = idp
        .browse(&authorize, email, spm_testkit::oidc::PASSWORD)
        .await
        .map_err(|e| anyhow::anyhow!("signing in {email}: {e}"))?;
    let done = http.get(&back).send().await?;
    done.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("spm_session="))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .with_context(|| format!("{email} got no session ({})", done.status()))
}

/// The portal's main pages on a tenant like the demo's: server time of the rep home (the
/// statement with its six-period chart, score, badges, questions, leaderboard: 11 service
/// calls), a statement line with its trace, and the manager's team page, at a fixed rate;
/// against /healthz (the HTTP floor) and one GetStatement straight to incentive.
async fn portal(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let s = "portal";
    let idp = spm_testkit::oidc::Idp::from_env();
    let env = with_service_env("bench-portal", 3).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let incentive = env.start_with("incentive", QUIET).await;
    let scoring = env.start_with("scoring", QUIET).await;
    let notification = env.start_with("notification", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    for svc in [&ingest, &incentive, &scoring, &notification] {
        wait_key_known(svc, &t.admin_key).await;
    }
    let month = people_tenant(
        &idp,
        &ingest,
        &incentive,
        &t.admin_key,
        &spm_testkit::oidc::audience_for("bench"),
    )
    .await?;
    // 50 reps in 5 teams of 10; dee manages team t0, where ana is rep-0.
    let mut org: Vec<ev::EventEnvelope> = vec![envelope(
        "bench",
        "mgr",
        month.start,
        Out::RepUpserted(ev::RepUpserted {
            rep_id: "mgr".into(),
            display_name: "Dee Manager".into(),
            email: "dee@example.com".into(),
            active: true,
            ..Default::default()
        }),
    )];
    for team in 0..5 {
        org.push(envelope(
            "bench",
            &format!("t{team}"),
            month.start,
            Out::TeamUpserted(ev::TeamUpserted {
                team_id: format!("t{team}"),
                name: format!("Team {team}"),
                parent_team_id: String::new(),
                manager_id: if team == 0 {
                    "mgr".into()
                } else {
                    String::new()
                },
            }),
        ));
    }
    org.extend((0..50).map(|i| {
        envelope(
            "bench",
            &format!("rep-{i}"),
            month.start,
            Out::RepUpserted(ev::RepUpserted {
                rep_id: format!("rep-{i}"),
                display_name: format!("Rep {i}"),
                email: format!("rep-{i}@bench.example"),
                team_id: format!("t{}", i / 10),
                manager_id: if i < 10 { "mgr".into() } else { String::new() },
                login: if i == 0 {
                    "ana@example.com".into()
                } else {
                    String::new()
                },
                active: true,
                ..Default::default()
            }),
        )
    }));
    let org_n = org.len();
    produce(&env, topics::ORG, &org).await?;
    let deals: Vec<ev::EventEnvelope> = (0..1000)
        .map(|i| {
            deal_env(
                "bench",
                &format!("rep-{}", i % 50),
                i,
                month.start + chrono::Duration::seconds(i64::try_from(i).unwrap_or(0)),
                "1000.00",
            )
        })
        .collect();
    produce(&env, topics::DEALS, &deals).await?;
    wait_count(
        &env.pool("incentive").await,
        "SELECT count(*) FROM inbox",
        i64::try_from(1000 + org_n).unwrap_or(i64::MAX),
        Duration::from_secs(120),
    )
    .await?;
    wait_count(
        &env.pool("scoring").await,
        "SELECT count(*) FROM inbox",
        i64::try_from(1000 + org_n).unwrap_or(i64::MAX),
        Duration::from_secs(120),
    )
    .await?;

    let port = spm_testkit::process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(spm_testkit::process::binary("spm-portal"))
        .env("SPM_PORTAL_ADDR", format!("127.0.0.1:{port}"))
        .env("SPM_PORTAL_PUBLIC_URL", &url)
        .env("SPM_INGEST_URL", format!("http://{}", ingest.grpc))
        .env("SPM_SCORING_URL", format!("http://{}", scoring.grpc))
        .env("SPM_INCENTIVE_URL", format!("http://{}", incentive.grpc))
        .env(
            "SPM_NOTIFICATION_URL",
            format!("http://{}", notification.grpc),
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting spm-portal (cargo build --release --workspace --bins)")?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the portal never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rep = portal_session(&http, &idp, &url, "bench", "ana@example.com").await?;
    let mgr = portal_session(&http, &idp, &url, "bench", "dee@example.com").await?;
    // A line of ana's statement, for the line page.
    let line = {
        let mut c = spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
            incentive.channel().await,
        );
        c.get_statement(authed(
            ipb::GetStatementRequest {
                as_of: None,
                rep_id: "rep-0".into(),
                period: None,
                with_explanations: false,
            },
            &t.admin_key,
        ))
        .await?
        .into_inner()
        .statement
        .and_then(|x| x.lines.into_iter().next())
        .context("rep-0 has a statement line")?
        .line_id
    };
    const RATE: u32 = 50;
    let secs = sz.query_secs.max(5);
    let pages = [
        (
            "/healthz (the HTTP floor)",
            "/healthz".to_owned(),
            rep.clone(),
        ),
        (
            "rep home (statement, chart, score, badges, leaderboard)",
            "/t/bench/".to_owned(),
            rep.clone(),
        ),
        (
            "statement line with its trace",
            format!("/t/bench/lines/{line}"),
            rep.clone(),
        ),
        ("manager team page", "/t/bench/team".to_owned(), mgr.clone()),
    ];
    for (name, path, cookie) in pages {
        let check = http
            .get(format!("{url}{path}"))
            .header("cookie", &cookie)
            .send()
            .await?;
        anyhow::ensure!(check.status().is_success(), "{path}: {}", check.status());
        let (lat, errors) = open_loop(RATE, secs, {
            let (http, target) = (http.clone(), format!("{url}{path}"));
            move |_| {
                let req = http.get(&target).header("cookie", &cookie);
                async move {
                    let res = req.send().await.map_err(|e| e.to_string())?;
                    if !res.status().is_success() {
                        return Err(format!("{}", res.status()));
                    }
                    res.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                }
            }
        })
        .await;
        let baseline = path == "/healthz";
        r.add(
            s,
            &format!("{name}: p50 at {RATE} req/s"),
            lat.q(0.5),
            "ms",
            "",
            None,
        );
        r.add(
            s,
            &format!("{name}: p99 at {RATE} req/s"),
            lat.q(0.99),
            "ms",
            if baseline { "" } else { "< 50 ms" },
            (!baseline).then(|| lat.q(0.99) < 50.0),
        );
        #[allow(clippy::cast_precision_loss)]
        r.add(
            s,
            &format!("{name}: errors"),
            errors as f64,
            "requests",
            "0",
            Some(errors == 0),
        );
    }
    // One backend call the rep home makes, straight over gRPC at the same rate.
    let (lat, errors) = open_loop(RATE, secs, {
        let ch = incentive.channel().await;
        let key = t.admin_key.clone();
        move |_| {
            let mut c =
                spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
                    ch.clone(),
                );
            let req = authed(
                ipb::GetStatementRequest {
                    as_of: None,
                    with_explanations: false,
                    rep_id: "rep-0".into(),
                    period: None,
                },
                &key,
            );
            async move {
                c.get_statement(req)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await;
    r.add(
        s,
        &format!(
            "GetStatement straight to incentive (one of the home's calls): p50 at {RATE} req/s"
        ),
        lat.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        &format!("GetStatement straight to incentive: p99 at {RATE} req/s"),
        lat.q(0.99),
        "ms",
        "",
        None,
    );
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        "GetStatement straight to incentive: errors",
        errors as f64,
        "requests",
        "0",
        Some(errors == 0),
    );
    child.kill().await.ok();
    Ok(())
}

async fn auth(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let s = "auth";
    let idp = spm_testkit::oidc::Idp::from_env();
    let env = with_service_env("bench-auth", 3).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let incentive = env.start_with("incentive", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    wait_key_known(&incentive, &t.admin_key).await;
    let audience = spm_testkit::oidc::audience_for("bench");
    let month = people_tenant(&idp, &ingest, &incentive, &t.admin_key, &audience).await?;
    // The person is rep-0 by the login on the org event.
    let org: Vec<ev::EventEnvelope> = (0..50)
        .map(|i| {
            envelope(
                "bench",
                &format!("rep-{i}"),
                month.start,
                Out::RepUpserted(ev::RepUpserted {
                    rep_id: format!("rep-{i}"),
                    display_name: format!("Rep {i}"),
                    email: format!("rep-{i}@bench.example"),
                    login: if i == 0 {
                        "ana@example.com".into()
                    } else {
                        String::new()
                    },
                    active: true,
                    ..Default::default()
                }),
            )
        })
        .collect();
    produce(&env, topics::ORG, &org).await?;
    let deals: Vec<ev::EventEnvelope> = (0..1000)
        .map(|i| {
            deal_env(
                "bench",
                &format!("rep-{}", i % 50),
                i,
                month.start + chrono::Duration::seconds(i64::try_from(i).unwrap_or(0)),
                "1000.00",
            )
        })
        .collect();
    produce(&env, topics::DEALS, &deals).await?;
    let pool = env.pool("incentive").await;
    wait_count(
        &pool,
        "SELECT count(*) FROM inbox",
        1050,
        Duration::from_secs(120),
    )
    .await?;
    let token = idp.token("ana@example.com", &audience).await;

    // In process: the same KeyStore every service's gRPC edge runs, on incentive's tables.
    let keys = spm_server::auth::KeyStore::new(pool.clone());
    let key_header = format!("Bearer {}", t.admin_key);
    let token_header = format!("Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while keys.authenticate_header(Some(&token_header)).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the person's token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = if sz.query_secs < 10 { 5_000 } else { 20_000 };
    // Tokens never seen before, each verified in full (signature, claims): as many as the
    // provider would issue to different sessions. Signed ahead, outside the clock.
    let fresh: Vec<String> = (0..n / 4)
        .map(|_| {
            format!(
                "Bearer {}",
                idp.forge(&idp.header(), &idp.claims("ana@example.com", &audience))
            )
        })
        .collect();
    let time = |headers: Vec<String>| {
        let keys = keys.clone();
        async move {
            let mut lat = Lat::default();
            for h in &headers {
                let t0 = tokio::time::Instant::now();
                keys.authenticate_header(Some(h))
                    .await
                    .expect("authenticated");
                lat.0.push(t0.elapsed());
            }
            lat
        }
    };
    let by_key = time(vec![key_header.clone(); n]).await;
    let by_token = time(vec![token_header.clone(); n]).await;
    let by_fresh = time(fresh.clone()).await;
    let by_key2 = time(vec![key_header.clone(); n]).await;
    for (name, l, calls) in [
        ("API key", &by_key, n),
        (
            "the same person token again (verified once per 5 s)",
            &by_token,
            n,
        ),
        (
            "a new person token each call (RS256 verified)",
            &by_fresh,
            fresh.len(),
        ),
    ] {
        r.add(
            s,
            &format!("authenticate, {name}: p50 ({calls} calls, in process)"),
            l.q(0.5) * 1000.0,
            "µs",
            "",
            None,
        );
        r.add(
            s,
            &format!("authenticate, {name}: p99"),
            l.q(0.99) * 1000.0,
            "µs",
            "",
            None,
        );
    }
    let key_p99 = by_key.q(0.99).max(by_key2.q(0.99));
    let added = by_fresh.q(0.99) - key_p99;
    r.add(
        s,
        "token verification adds at p99 (new token p99 - key p99, issuer's keys cached)",
        added,
        "ms",
        "< 0.2 ms",
        Some(added < 0.2),
    );

    // End to end: GetStatement of rep-0 at 2,000 req/s, the key first, then the token.
    // Twice each, alternating, so that drift over the run does not favour either.
    let mut p99s = Vec::new();
    for (name, cred) in [
        ("API key", t.admin_key.clone()),
        ("person token", token.clone()),
        ("API key, again", t.admin_key.clone()),
        ("person token, again", token.clone()),
    ] {
        let (lat, errors) = open_loop(2000, sz.query_secs, {
            let ch = incentive.channel().await;
            move |_| {
                let mut c =
                    spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
                        ch.clone(),
                    );
                let req = authed(
                    ipb::GetStatementRequest {
                        as_of: None,
                        with_explanations: false,
                        rep_id: "rep-0".into(),
                        period: None,
                    },
                    &cred,
                );
                async move {
                    c.get_statement(req)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }
        })
        .await;
        r.add(
            s,
            &format!("GetStatement p50 at 2,000 req/s, {name}"),
            lat.q(0.5),
            "ms",
            "",
            None,
        );
        r.add(
            s,
            &format!("GetStatement p99 at 2,000 req/s, {name}"),
            lat.q(0.99),
            "ms",
            "",
            None,
        );
        p99s.push(lat.q(0.99));
        #[allow(clippy::cast_precision_loss)]
        r.add(
            s,
            &format!("GetStatement errors, {name}"),
            errors as f64,
            "requests",
            "0",
            Some(errors == 0),
        );
    }
    if let [k1, t1, k2, t2] = p99s[..] {
        r.add(
            s,
            "GetStatement p99 difference at 2,000 req/s, mean of the token runs - mean of the key runs (end to end, with run-to-run noise)",
            (t1 + t2 - k1 - k2) / 2.0,
            "ms",
            "",
            None,
        );
    }
    drop(ingest);
    Ok(())
}

/// One event in this many of the notification stream is a closed deal.
const DEAL_EVERY: usize = 10;

/// The notification stream's rate: 1,000 events/s unless SPM_BENCH_RATE says otherwise.
fn bench_rate() -> u32 {
    std::env::var("SPM_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// How long a bulk COPY of 200,000 rows shaped like the rebuild baseline's (an event id,
/// tenant, rep, kind, time and a 200-byte payload) takes into a fresh table: the machine's
/// speed, printed beside latencies that depend on it.
async fn copy_speed(env: &TestEnv) -> anyhow::Result<Duration> {
    let pool = env.pool("public").await;
    sqlx::query("CREATE TABLE speed (event_id uuid, tenant_id text, rep_id text, kind text, occurred_at timestamptz, payload bytea)")
        .execute(&pool)
        .await?;
    let payload = hex_encode(&[0x5a; 200]);
    let mut data = String::with_capacity(200_000 * 500);
    for i in 0..200_000 {
        data.push_str(&format!(
            "{},bench,rep-{},activity,2026-11-01T00:00:00Z,\\x{payload}\n",
            uuid::Uuid::new_v4(),
            i % 500
        ));
    }
    let mut conn = pool.acquire().await?;
    let t = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY speed FROM STDIN WITH (FORMAT csv)")
        .await?;
    copy.send(data.as_bytes()).await?;
    copy.finish().await?;
    let took = t.elapsed();
    sqlx::query("DROP TABLE speed").execute(&mut *conn).await?;
    Ok(took)
}

async fn notification(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let env = with_service_env(
        "bench-notify",
        std::env::var("SPM_BENCH_PARTITIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6),
    )
    .await;
    // The machine's speed now: the latencies below hold or not depending on it.
    let speed = copy_speed(&env).await?;
    r.add(
        "notification",
        "machine speed: bulk COPY of 200,000 event rows (the same as the rebuild baseline's rows)",
        speed.as_secs_f64() * 1000.0,
        "ms",
        "",
        None,
    );
    let ingest = env.start_with("ingest", QUIET).await;
    let scoring = env.start_with("scoring", QUIET).await;
    let incentive = env.start_with("incentive", QUIET).await;
    let notification = env.start_with("notification", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    for s in [&ingest, &scoring, &incentive, &notification] {
        wait_key_known(s, &t.admin_key).await;
    }
    let now = Utc::now();
    let month = Calendar::default().period(PeriodKind::Month, now);
    let mut adm =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            incentive.channel().await,
        );
    put_live_plan(&mut adm, &t.admin_key, &month).await?;
    let rx = spm_testkit::webhook::Receiver::start().await;
    let mut nadm = spm_proto::notification::v1::notification_admin_service_client::NotificationAdminServiceClient::new(notification.channel().await);
    let hook = nadm
        .put_webhook(authed(
            npb::PutWebhookRequest {
                url: rx.url(),
                rules: vec!["commission_earned".into()],
            },
            &t.admin_key,
        ))
        .await?
        .into_inner();
    rx.set_secret(&hook.secret);
    let reps: Vec<String> = (0..200).map(|i| format!("rep-{i}")).collect();
    let mut c = IngestServiceClient::new(ingest.channel().await);
    let events = reps
        .iter()
        .map(|x| spm_testkit::events::rep(x, "", ""))
        .collect();
    c.submit_events(authed(pb::SubmitEventsRequest { events }, &t.admin_key))
        .await?;

    // One deal through the whole path before the clock starts. Without it, in about one
    // run in ten the first deals took ~0.5 s from incentive's commit to notification's
    // apply (first records on fresh topics, fresh consumers): a start-up cost of these
    // new services and topics, not the steady-state latency measured here.
    c.submit_events(authed(
        pb::SubmitEventsRequest {
            events: vec![spm_testkit::events::deal(
                "prime",
                "1000.00",
                &[(reps[0].as_str(), "100")],
            )],
        },
        &t.admin_key,
    ))
    .await?;
    let primed = Instant::now();
    while !rx
        .accepted()
        .iter()
        .any(|x| x.body["data"]["deal_id"].as_str() == Some("prime"))
    {
        anyhow::ensure!(
            primed.elapsed() < Duration::from_secs(30),
            "the priming deal never reached the webhook"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A CRM stream at a fixed rate into ingest, one event per request, open loop: nine
    // activities (calls, visits, ...) to one closed deal, like a sales floor. Each deal's
    // commission reaches the webhook; each activity moves a score (scoring, incentive's
    // gates and notification's standings all work on it).
    let rate = bench_rate();
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let visible = Arc::new(Mutex::new(Lat::default()));
    let ch = ingest.channel().await;
    let inc_ch = incentive.channel().await;
    let key = t.admin_key.clone();
    let svcs = [&ingest, &scoring, &incentive, &notification];
    let cpu0 = cpu(&svcs);
    let t_run = Instant::now();
    let kinds = [
        ev::ActivityKind::Call,
        ev::ActivityKind::Visit,
        ev::ActivityKind::Email,
        ev::ActivityKind::Meeting,
        ev::ActivityKind::Demo,
    ];
    let (submit, errors) = open_loop(rate, sz.notification_secs, |i| {
        let mut c = IngestServiceClient::new(ch.clone());
        let rep = reps[(i / DEAL_EVERY) % reps.len()].clone();
        let deal = i % DEAL_EVERY == 0;
        let deal_id = format!("N{}", i / DEAL_EVERY);
        let e = if deal {
            spm_testkit::events::deal(&deal_id, "1000.00", &[(rep.as_str(), "100")])
        } else {
            spm_testkit::events::activity(&rep, kinds[i % kinds.len()])
        };
        let req = authed(pb::SubmitEventRequest { event: Some(e) }, &key);
        let acks = acks.clone();
        let visible = visible.clone();
        let inc_ch = inc_ch.clone();
        let key = key.clone();
        async move {
            c.submit_event(req).await.map_err(|e| e.to_string())?;
            if !deal {
                return Ok(());
            }
            let acked = Instant::now();
            acks.lock().expect("acks").insert(deal_id.clone(), acked);
            // Every 5th deal: poll the statement until its line shows (earnings visible over gRPC).
            if (i / DEAL_EVERY).is_multiple_of(5) {
                let mut ic =
                    spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
                        inc_ch,
                    );
                let line = format!("commission:{deal_id}");
                for _ in 0..4000 {
                    let s = ic
                        .get_statement(authed(
                            ipb::GetStatementRequest {
                                as_of: None,
                                with_explanations: false,
                                rep_id: rep.clone(),
                                period: None,
                            },
                            &key,
                        ))
                        .await
                        .map_err(|e| e.to_string())?
                        .into_inner()
                        .statement
                        .unwrap_or_default();
                    if s.lines.iter().any(|l| l.key == line) {
                        visible.lock().expect("visible").0.push(acked.elapsed());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok(())
        }
    })
    .await;
    // Let the tail arrive.
    let submitted = usize::try_from(u64::from(rate) * sz.notification_secs).unwrap_or(usize::MAX);
    let total = acks.lock().expect("acks").len();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        let got: std::collections::HashSet<String> = rx
            .accepted()
            .iter()
            .filter_map(|x| x.body["data"]["deal_id"].as_str().map(str::to_owned))
            .filter(|d| d != "prime")
            .collect();
        if got.len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu1 = cpu(&svcs);
    let note = format!(
        "notification phase (stream and drain): {}",
        cpu_note(&cpu0, &cpu1, t_run.elapsed())
    );
    println!("  {note}");
    r.notes.push(note);
    // What each part of the deal path costs per CRM event submitted (the events' own CPU
    // and the stream's background: relays, polls, scrapes).
    let mut parts: Vec<(&String, f64)> = cpu1
        .iter()
        .filter(|(k, _)| k.as_str() != "load generator")
        .map(|(k, v)| (k, v - cpu0.get(k).copied().unwrap_or(0.0)))
        .collect();
    parts.sort_by(|a, b| a.0.cmp(b.0));
    for (k, secs) in parts {
        #[allow(clippy::cast_precision_loss)]
        r.add(
            "notification",
            &format!("{k} CPU per event (of {submitted} events)"),
            secs * 1e6 / submitted.max(1) as f64,
            "CPU-us",
            "",
            None,
        );
    }
    let acks = acks.lock().expect("acks").clone();
    let mut first: HashMap<String, Instant> = HashMap::new();
    for x in rx.accepted() {
        if let Some(d) = x.body["data"]["deal_id"].as_str() {
            first
                .entry(d.to_owned())
                .and_modify(|t| *t = (*t).min(x.at))
                .or_insert(x.at);
        }
    }
    let mut lat = Lat::default();
    for (d, at) in &first {
        if let Some(a) = acks.get(d) {
            lat.0.push(at.saturating_duration_since(*a));
        }
    }
    let s = "notification";
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        &format!("deals delivered by webhook (of {submitted} events at {rate}/s, 1 in {DEAL_EVERY} a deal)"),
        lat.0.len() as f64,
        "deals",
        &format!("{total}"),
        Some(lat.0.len() >= total),
    );
    r.add(
        s,
        &format!("ingest ack -> webhook received p50 ({rate} events/s)"),
        lat.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        &format!("ingest ack -> webhook received p99 ({rate} events/s)"),
        lat.q(0.99),
        "ms",
        "< 250 ms",
        Some(lat.q(0.99) < 250.0),
    );
    r.add(
        s,
        &format!("SubmitEvent acknowledged p50 ({rate} events/s, one event per request)"),
        submit.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        &format!("SubmitEvent acknowledged p99 ({rate} events/s, one event per request)"),
        submit.q(0.99),
        "ms",
        "",
        None,
    );
    let v = visible.lock().expect("visible").clone();
    r.add(
        s,
        &format!("deal ack -> earnings visible over gRPC p50 ({rate} events/s)"),
        v.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        &format!("deal ack -> earnings visible over gRPC p99 ({rate} events/s)"),
        v.q(0.99),
        "ms",
        "< 100 ms",
        Some(v.q(0.99) < 100.0),
    );
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        "submit errors",
        errors as f64,
        "requests",
        "0",
        Some(errors == 0),
    );
    for svc in [&scoring, &incentive, &notification] {
        r.stages(s, svc).await;
    }
    for svc in [&ingest, &scoring, &incentive, &notification] {
        r.rss(svc);
    }
    Ok(())
}

async fn rebuild(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let env = with_service_env("bench-rebuild", 6).await;
    let now = Utc::now();
    let cal = Calendar::default();
    let this = cal.period(PeriodKind::Month, now);
    let start = this.start - chrono::Duration::days(60);
    let span = (now - start).num_seconds().max(1);
    let reps: Vec<String> = (0..2000).map(|i| format!("rep-{i}")).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut acts = Vec::with_capacity(sz.rebuild_events);
    let mut deals = Vec::new();
    for i in 0..sz.rebuild_events {
        let at = start + chrono::Duration::seconds(rng.random_range(0..span));
        let rep = &reps[i % reps.len()];
        if i % 10 == 0 {
            deals.push(deal_env(
                "bench",
                rep,
                i,
                at,
                &format!("{}.00", rng.random_range(500..50_000)),
            ));
        } else {
            acts.push(activity_env("bench", rep, i, at));
        }
    }
    let t = Instant::now();
    produce(&env, topics::ACTIVITIES, &acts).await?;
    produce(&env, topics::DEALS, &deals).await?;
    println!(
        "  loaded {} events into the topics in {:.1} s",
        sz.rebuild_events,
        t.elapsed().as_secs_f64()
    );

    // Baseline: bulk-load the same events into Postgres (COPY, one table, no projection).
    let pool = env.pool("public").await;
    sqlx::query("CREATE TABLE bulk (event_id uuid, tenant_id text, rep_id text, kind text, occurred_at timestamptz, payload bytea)")
        .execute(&pool)
        .await?;
    let t = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw("COPY bulk FROM STDIN WITH (FORMAT csv)")
        .await?;
    for e in acts.iter().chain(deals.iter()) {
        let (rep, kind) = match &e.payload {
            Some(Out::ActivityLogged(a)) => (a.rep_id.as_str(), "activity"),
            Some(Out::DealCredited(d)) => (d.rep_id.as_str(), "deal"),
            _ => ("", ""),
        };
        let at = spm_proto::ext::datetime(e.occurred_at.as_ref().expect("ts"))
            .expect("ts")
            .to_rfc3339();
        let line = format!(
            "{},{},{},{},{},\\x{}\n",
            e.event_id,
            e.tenant_id,
            rep,
            kind,
            at,
            hex_encode(&prost::Message::encode_to_vec(e))
        );
        copy.send(line.as_bytes()).await?;
    }
    copy.finish().await?;
    let bulk = t.elapsed();
    drop(conn);

    let run = |bin: &'static str| {
        let env = &env;
        async move {
            let t = Instant::now();
            let out = tokio::process::Command::new(spm_testkit::process::binary(bin))
                .arg("rebuild")
                .env("DATABASE_URL", &env.db_url)
                .env("KAFKA_BROKERS", &env.stack.brokers)
                .env("KAFKA_TOPIC_PREFIX", &env.prefix)
                .env("SPM_GRPC_ADDR", "127.0.0.1:0")
                .env("SPM_HTTP_ADDR", "127.0.0.1:0")
                .env("RUST_LOG", "warn")
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "{bin} rebuild failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok((
                t.elapsed(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            ))
        }
    };
    // A first run creates the schemas (migrations are not part of a rebuild's cost).
    let (scoring_took, scoring_out) = run("spm-scoring").await?;
    println!("  {scoring_out}");
    let (incentive_took, incentive_out) = run("spm-incentive").await?;
    println!("  {incentive_out}");
    let total = scoring_took + incentive_took;
    let s = "rebuild";
    r.add(
        s,
        &format!(
            "bulk COPY of the same {} events into Postgres (baseline)",
            sz.rebuild_events
        ),
        bulk.as_secs_f64(),
        "s",
        "",
        None,
    );
    r.add(
        s,
        &format!("scoring rebuild from {} events", sz.rebuild_events),
        scoring_took.as_secs_f64(),
        "s",
        "",
        None,
    );
    r.add(
        s,
        "incentive rebuild (deal credits)",
        incentive_took.as_secs_f64(),
        "s",
        "",
        None,
    );
    r.add(
        s,
        "full rebuild of all projections",
        total.as_secs_f64(),
        "s",
        "< 30 s",
        Some(total < Duration::from_secs(30)),
    );
    r.add(
        s,
        "rebuild / bulk load ratio",
        total.as_secs_f64() / bulk.as_secs_f64(),
        "x",
        "",
        None,
    );
    Ok(())
}

fn hex_encode(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

async fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{} GiB", k / 1024 / 1024))
        .unwrap_or_default();
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    vec![
        ("CPU".into(), format!("{cpu} ({cores} cores)")),
        ("memory".into(), mem),
        ("kernel".into(), cmd("uname", &["-sr"])),
        ("rustc".into(), cmd("rustc", &["--version"])),
        (
            "PostgreSQL".into(),
            cmd("/usr/lib/postgresql/15/bin/postgres", &["--version"]),
        ),
        ("broker".into(), stack_broker()),
        (
            "build".into(),
            "release services (cargo build --release)".into(),
        ),
    ]
}

/// What the local stack's broker is (`deploy/local/stack` writes it down when it starts one).
fn stack_broker() -> String {
    let what = std::fs::read_to_string(spm_testkit::repo_root().join(".local/broker.what"))
        .unwrap_or_else(|_| "tansu memory".into());
    let mut w = what.split_whitespace();
    let name = match w.next() {
        Some("nisshi") => "nisshi 0.7.0-pre.2",
        _ => "Tansu 0.6.0",
    };
    format!("{name}, {} engine, loopback", w.next().unwrap_or("memory"))
}

async fn write_reports(a: &Args, r: &Report, took: Duration) -> anyhow::Result<()> {
    let m = machine().await;
    let mut t = table(&["section", "figure", "value", "unit", "target", "met"]);
    for f in &r.figures {
        t.add_row(vec![
            Cell::new(&f.section),
            Cell::new(&f.name),
            num(format!("{:.2}", f.value)),
            Cell::new(&f.unit),
            Cell::new(&f.target),
            Cell::new(match f.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }),
        ]);
    }
    println!("{t}");
    let json = serde_json::json!({
        "date": Utc::now().to_rfc3339(),
        "quick": a.quick,
        "machine": m.iter().cloned().collect::<HashMap<_, _>>(),
        "figures": r.figures,
        "notes": r.notes,
        "duration_s": took.as_secs_f64(),
    });
    if let Some(d) = a.json.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&json)?)?;
    let mut md = String::new();
    md.push_str("# SPM benchmarks\n\n");
    md.push_str(&format!(
        "Measured by `target/release/spm bench{}` on {} ({:.0} s). Every figure comes from one run against the local stack; baselines (raw produce, bulk load) are measured in the same run. Regenerate with the command above after `cargo build --release --workspace --bins` and `deploy/local/stack up`.\n\n",
        if a.quick { " --quick" } else { "" },
        Utc::now().format("%Y-%m-%d"),
        took.as_secs_f64()
    ));
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in &m {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str("\nThe broker, Postgres, the services and the load generator share these cores.\n\n## Figures\n\n| section | figure | value | unit | target | met |\n|---|---|---:|---|---|---|\n");
    for f in &r.figures {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {} | {} | {} |\n",
            f.section,
            f.name,
            f.value,
            f.unit,
            f.target,
            match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        ));
    }
    if !r.notes.is_empty() {
        md.push_str("\n## Where the time went\n\n");
        for n in &r.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md.push_str("\n## How each figure is measured\n\n");
    md.push_str("Each section has its own database and topics, deleted when it ends; a Postgres `CHECKPOINT` runs before each section so that none measures the write-back of the one before.\n\n");
    md.push_str("- **broker**: one produce -> consume hop through SPM's own idempotent producer and consumer loop (inbox transaction included, as a service sees an event) at 1,000 records/s open loop, with the shipped settings (fetch wait 10 ms, session timeout 6 s), on a private broker of each kind installed, one after the other in this run: nisshi 0.7.0-pre.2 on its memory and its SQLite engine, Tansu 0.6.0 on its memory engine (the previous broker, as the baseline). The hop is from just before each record is enqueued to the handler seeing it; the join is from the loop's start to the first record applied.\n");
    md.push_str("- **ingest**: the same number of same-size envelopes (same headers) is first produced straight to the broker with the same idempotent, lz4 rdkafka producer settings, all enqueued at once (the best case for raw rdkafka); then as many events go through ingest over 4 concurrent `StreamEvents` streams in 1,000-event messages, built and connected before the clock as the baseline's records are (validation, idempotency records in Postgres, fan-out, publish, commit after the broker's ack). Ack latency is per message.\n");
    md.push_str("- **scoring**: events are produced to the topics first, then scoring starts and applies them; the rate is events over the span between the first and last inbox commit. `GetScore` runs open-loop at 2,000 requests/s (latency from each request's scheduled time).\n");
    md.push_str("- **incentive**: deal credits are produced first; the rate is deals over the inbox span, each recomputing its rep-period and posting ledger lines. What-if is 2,000 sequential calls; simulation runs a draft plan over every deal of the month.\n");
    md.push_str("- **auth**: one tenant with the stack's OpenID provider (oidc-provider 9.13.3, RS256 keys) and a person mapped to a rep by the login on its org event. In process, the `KeyStore` every service's gRPC edge runs authenticates an API key, the same access token again and again (a client reusing its token: verified once per 5 s, its expiry checked every call), and a new token on every call (signature and claims verified each time; the tokens are signed with the provider's key before the clock starts), then the key again; the issuer's keys and the person are cached as in the services. The target compares the new tokens' p99 with the worse of the two key runs. Then `GetStatement` of that rep runs open loop at 2,000 requests/s with the API key and then with the token.\n");
    md.push_str("- **portal**: the four services and the portal (release builds) on a tenant of 50 reps in 5 teams with 1,000 deals this month; a rep (rep-0) and the manager of her 10-rep team sign in through the stack's OpenID provider as a browser does (authorization code with PKCE). Each page is requested open loop at 50 requests/s with the session cookie, latency from each request's scheduled time to the last byte of the page: `/healthz` (the HTTP floor, no service call), the rep home (11 service calls, concurrent where they can be: six statements for the chart, score, awards, questions, leaderboard), one statement line with its trace and postings, the manager's team page (rollup, leaderboard, alerts, calibration, questions). The last figure is one `GetStatement` straight to incentive at the same rate.\n");
    md.push_str("- **incentive-scale**: one rep-period filling up: a tenant with the bench plan in marginal (then retroactive) tier mode and a quota crossed within the first tenth; the rep's deals of this month are produced in three slices to an idle incentive (the first tenth, the middle, the last tenth), each timed from just before its produce to its last inbox commit. Then a tenant with the bench plan of 2020 gets 500 reps' deals spread over the last 12 months; a version effective a year back with higher rates goes live by `PutPlan` (timed to its response: every open rep-period recomputed and its adjustments posted and chained), against a COPY of exactly the ledger rows it posted into a table of the ledger's columns.\n");
    md.push_str("- **notification**: deals are submitted to ingest at 1,000/s (open loop) with all four services running; latency is from each deal's ingest acknowledgement to the first signed webhook for its commission at a receiver in the bench process. Every 25th deal also polls `GetStatement` every 2 ms until its line shows (earnings visible over gRPC). One priming deal goes through the whole path before the clock starts (fresh services and topics: the first records took ~0.5 s in about one run in ten).\n");
    md.push_str("- **audit**: the ledger's append path, in process against incentive's schema: rounds of 20 reps x 5 postings each (what one round of incentive's recompute posts), with realistic explanations, committed one transaction per round, alternating blocks of 50 rounds: chained (the product: the chains' advisory locks, their heads read, postings with their hashes and the heads moved in one statement) and unchained (the same rows with the statement incentive ran before chaining). Then `VerifyLedger` over a tenant of 1M chained postings (2,000 chains), against a plain scan of the same rows as the floor.\n");
    md.push_str("- **rebuild**: the events are produced to the topics; the baseline COPYs the same events into one Postgres table; then `spm-scoring rebuild` and `spm-incentive rebuild` replay the topics from offset 0 into their projections.\n");
    md.push_str(
        "- **RSS**: peak resident set (VmHWM) of each service process under the loads above.\n",
    );
    if let Some(d) = a.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&a.out, md)?;
    println!("wrote {} and {}", a.out.display(), a.json.display());
    Ok(())
}

/// Rows of one bench round of the ledger: `reps` reps x `per` postings of period `key`.
fn ledger_rows(
    round: usize,
    reps: usize,
    per: usize,
    key: &str,
) -> Vec<spm_incentive::store::LedgerRow> {
    let mut rows = Vec::with_capacity(reps * per);
    for r in 0..reps {
        let rep = format!("rep-{}", (round * reps + r) % 500);
        for i in 0..per {
            let deal = format!("D-{round}-{r}-{i}");
            rows.push(spm_incentive::store::LedgerRow {
                posting_id: uuid::Uuid::new_v4(),
                rep_id: rep.clone(),
                period_kind: PeriodKind::Month,
                period_key: key.to_owned(),
                source_period_key: key.to_owned(),
                line_key: format!("commission:{deal}"),
                line_id: uuid::Uuid::new_v4(),
                kind: "commission".into(),
                status: if i % 2 == 0 { "earned" } else { "payable" }.into(),
                amount: rust_decimal::Decimal::new(12_345 + i64::try_from(i).unwrap_or(0), 2),
                currency: "EUR".into(),
                plan_id: "bench".into(),
                plan_version: 1,
                deal_id: deal.clone(),
                summary: "5% of 2469 EUR".into(),
                explanation: spm_core::chain::canonical_json(&serde_json::json!({
                    "plan": {"id": "bench", "version": 1}, "basis": "attainment", "mode": "marginal",
                    "deal": deal, "credited": "2469.00", "quota": "50000", "attainment_before": "0.3121",
                    "slices": [{"from": "0", "rate": "0.05", "amount": "2469.00", "earned": "123.45"}],
                    "payout": {"at_close": "50", "on_collection": "50"}, "status": "earned"
                })),
                caused_by: vec![format!("evt-{deal}")],
            });
        }
    }
    rows
}

/// The statement incentive appended postings with before chaining: the unchained floor.
async fn append_unchained(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    rows: &[spm_incentive::store::LedgerRow],
) -> anyhow::Result<()> {
    let col = |f: fn(&spm_incentive::store::LedgerRow) -> String| {
        rows.iter().map(f).collect::<Vec<String>>()
    };
    sqlx::query(
        "INSERT INTO ledger (posting_id, tenant_id, rep_id, period_kind, period_key, source_period_key, line_key, line_id,
                             kind, status, amount, currency, plan_id, plan_version, deal_id, summary, explanation, caused_by)
         SELECT u.id, $1, u.rep, u.pk, u.key, u.src, u.lk, u.lid, u.kind, u.status, u.amount, u.cur, u.plan, u.ver, u.deal,
                u.summary, u.expl, ARRAY(SELECT jsonb_array_elements_text(u.caused))
           FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::uuid[], $9::text[],
                       $10::text[], $11::numeric[], $12::text[], $13::text[], $14::int[], $15::text[], $16::text[],
                       $17::jsonb[], $18::jsonb[])
                AS u(id, rep, pk, key, src, lk, lid, kind, status, amount, cur, plan, ver, deal, summary, expl, caused)",
    )
    .bind(tenant)
    .bind(rows.iter().map(|r| r.posting_id).collect::<Vec<_>>())
    .bind(col(|r| r.rep_id.clone()))
    .bind(col(|r| r.period_kind.as_str().to_owned()))
    .bind(col(|r| r.period_key.clone()))
    .bind(col(|r| r.source_period_key.clone()))
    .bind(col(|r| r.line_key.clone()))
    .bind(rows.iter().map(|r| r.line_id).collect::<Vec<_>>())
    .bind(col(|r| r.kind.clone()))
    .bind(col(|r| r.status.clone()))
    .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
    .bind(col(|r| r.currency.clone()))
    .bind(col(|r| r.plan_id.clone()))
    .bind(rows.iter().map(|r| r.plan_version).collect::<Vec<_>>())
    .bind(col(|r| r.deal_id.clone()))
    .bind(col(|r| r.summary.clone()))
    .bind(rows.iter().map(|r| r.explanation.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| serde_json::json!(r.caused_by)).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// The chained append as incentive's recompute does it: the chains' locks (and the
/// period's, shared), then the postings chained onto their heads.
async fn append_chained(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    rows: &[spm_incentive::store::LedgerRow],
) -> anyhow::Result<()> {
    let mut locks = spm_incentive::chain::Locks::default();
    locks.period(tenant, PeriodKind::Month, &rows[0].period_key, true);
    for r in rows {
        locks.chain(tenant, &r.rep_id, PeriodKind::Month, &r.period_key, false);
    }
    let mut held = locks.hold(&mut *conn, tenant).await?;
    spm_incentive::chain::append(conn, tenant, rows, &mut held).await?;
    Ok(())
}

async fn audit(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let s = "audit";
    let env = with_service_env("bench-audit", 1).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let incentive = env.start_with("incentive", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    wait_key_known(&incentive, &t.admin_key).await;
    let pool = env.pool("incentive").await;
    let key = Calendar::default()
        .period(PeriodKind::Month, Utc::now())
        .key;
    // Warm up both paths (plans cached, tables and indexes touched).
    {
        let mut c = pool.acquire().await?;
        for i in 0..20 {
            append_unchained(&mut c, "warm-plain", &ledger_rows(i, 20, 5, &key)).await?;
            append_chained(&mut c, "warm-chained", &ledger_rows(i, 20, 5, &key)).await?;
        }
    }
    let (mut plain, mut chained) = (Duration::ZERO, Duration::ZERO);
    let mut rows_each = 0usize;
    let block = 50;
    for b in 0..sz.audit_rounds / block / 2 {
        for chain in [false, true] {
            let t0 = Instant::now();
            for i in 0..block {
                let round = b * block + i;
                let rows = ledger_rows(round, 20, 5, &key);
                let mut tx = pool.begin().await?;
                if chain {
                    append_chained(&mut tx, "bench-chained", &rows).await?;
                } else {
                    append_unchained(&mut tx, "bench-plain", &rows).await?;
                }
                tx.commit().await?;
                if chain {
                    rows_each += rows.len();
                }
            }
            if chain {
                chained += t0.elapsed();
            } else {
                plain += t0.elapsed();
            }
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let n = rows_each as f64;
    let (rate_plain, rate_chained) = (n / plain.as_secs_f64(), n / chained.as_secs_f64());
    r.add(
        s,
        &format!("ledger append, unchained (baseline; {rows_each} postings, 100 per transaction)"),
        rate_plain,
        "postings/s",
        "",
        None,
    );
    r.add(
        s,
        "ledger append, chained (locks, heads, hashes)",
        rate_chained,
        "postings/s",
        "",
        None,
    );
    let ratio = rate_chained / rate_plain;
    r.add(
        s,
        "chained / unchained",
        ratio,
        "x",
        ">= 0.9x",
        Some(ratio >= 0.9),
    );

    // The bench tenant's ledger: many chained postings, then verified by the service.
    let tenant = t.id.clone();
    let per_call = 5_000usize;
    let t0 = Instant::now();
    let mut made = 0usize;
    let mut round = 0usize;
    while made < sz.verify_postings {
        // 2,000 chains: 10 periods x 200 reps, 25 postings per chain per call.
        let period = format!("2025-{:02}", 1 + (round % 10));
        let mut rows = Vec::with_capacity(per_call);
        for rr in 0..200 {
            let mut one = ledger_rows(round * 200 + rr, 1, 25, &period);
            for x in &mut one {
                x.rep_id = format!("rep-{rr}");
            }
            rows.extend(one);
        }
        let mut tx = pool.begin().await?;
        append_chained(&mut tx, &tenant, &rows).await?;
        tx.commit().await?;
        made += rows.len();
        round += 1;
    }
    println!(
        "  ({made} chained postings made in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let mut adm =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            incentive.channel().await,
        );
    sqlx::query("ANALYZE ledger").execute(&pool).await?;
    let t0 = Instant::now();
    let v = adm
        .verify_ledger(authed(
            ipb::VerifyLedgerRequest { period: None },
            &t.admin_key,
        ))
        .await?
        .into_inner();
    let took = t0.elapsed();
    // The floor: the same rows read in the same order, with what verification decodes.
    let t0 = Instant::now();
    let mut scanned = 0i64;
    {
        use futures::TryStreamExt as _;
        let mut rows = sqlx::query(
            "SELECT * FROM ledger WHERE tenant_id = $1 ORDER BY rep_id, period_kind, period_key, chain_seq",
        )
        .bind(&tenant)
        .fetch(&pool);
        while rows.try_next().await?.is_some() {
            scanned += 1;
        }
    }
    let scan = t0.elapsed();
    anyhow::ensure!(v.ok, "the bench ledger verifies: {:?}", v.breaks.first());
    anyhow::ensure!(
        v.postings as usize == made,
        "verified {} of {made}",
        v.postings
    );
    r.add(
        s,
        &format!("the same {scanned} postings read in chain order (floor)"),
        scan.as_secs_f64(),
        "s",
        "",
        None,
    );
    r.add(
        s,
        &format!(
            "VerifyLedger of {} postings in {} chains",
            v.postings, v.chains
        ),
        took.as_secs_f64(),
        "s",
        "",
        None,
    );
    #[allow(clippy::cast_precision_loss)]
    r.add(
        s,
        "verify rate",
        v.postings as f64 / took.as_secs_f64(),
        "postings/s",
        "",
        None,
    );
    r.rss(&incentive);
    Ok(())
}

/// What incentive published to `topic` so far (all partitions, from the beginning), as the
/// outbox rows it wrote for them: topic, key, payload and headers.
async fn published(env: &TestEnv, topic: &str) -> anyhow::Result<Vec<spm_bus::Record>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};
    let k = env.kafka();
    let full = k.topic(topic);
    let mut cfg = k.consumer_config(&format!("bench-floor-{}", uuid::Uuid::new_v4()));
    cfg.set("enable.partition.eof", "true");
    let c: BaseConsumer = cfg.create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..env.partitions {
        tpl.add_partition_offset(&full, p, rdkafka::Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut done = std::collections::HashSet::new();
        let t = Instant::now();
        while done.len() < tpl.count() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "reading {full}");
            match c.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    done.insert(p);
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => out.push(spm_bus::Record {
                    topic: m.topic().to_owned(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            }
        }
        Ok(out)
    })
    .await?
}

/// Incentive's design floor: Postgres writing the same rows the apply wrote for `tenant`'s
/// `deals`, with the same indexes, in transactions of the live consumer's batch (1,000
/// deals), two in flight (one per core), and nothing else: no reads, no computation, no
/// broker. Per batch: its share of the appended rows (ledger, credits, inbox, result
/// history), the upserts of the rep-periods its ledger rows touch (chain heads, credit
/// marks, results), and its share of the events published, inserted into an outbox with
/// the consumer's statement and deleted in a second transaction as the relay does.
/// Returns deals/s.
async fn incentive_floor(
    env: &TestEnv,
    pool: &sqlx::PgPool,
    tenant: &str,
    deals: usize,
) -> anyhow::Result<f64> {
    // Everything published first (the relay runs behind the commits).
    let t = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?
        > 0
    {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "outbox not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = published(env, topics::EARNINGS).await?;
    let cols = |table: &'static str| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT quote_ident(column_name) FROM information_schema.columns
              WHERE table_schema = 'incentive' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await
    };
    let appended = ["ledger", "credits", "inbox", "period_results_history"];
    let upserted = ["ledger_chains", "credit_marks", "period_results"];
    sqlx::query("DROP SCHEMA IF EXISTS floor CASCADE")
        .execute(pool)
        .await?;
    sqlx::query("CREATE SCHEMA floor").execute(pool).await?;
    let mut sizes = HashMap::new();
    for t in appended.iter().chain(&upserted).chain(&["outbox"]) {
        sqlx::query(&format!(
            "CREATE TABLE floor.{t} (LIKE incentive.{t} INCLUDING ALL)"
        ))
        .execute(pool)
        .await?;
    }
    for t in appended {
        let filter = if t == "inbox" {
            String::new()
        } else {
            format!("WHERE tenant_id = '{tenant}'")
        };
        let order = match t {
            "ledger" => "seq",
            "credits" | "period_results_history" => "ctid",
            _ => "applied_at",
        };
        let c = cols(t).await?.join(", ");
        sqlx::query(&format!(
            "CREATE TABLE floor.src_{t} AS SELECT row_number() OVER (ORDER BY {order}) AS rn, {c}
               FROM incentive.{t} {filter}"
        ))
        .execute(pool)
        .await?;
        sqlx::query(&format!("CREATE INDEX ON floor.src_{t} (rn)"))
            .execute(pool)
            .await?;
        sqlx::query(&format!("ANALYZE floor.src_{t}"))
            .execute(pool)
            .await?;
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM floor.src_{t}"))
            .fetch_one(pool)
            .await?;
        sizes.insert(t, n);
    }
    let mut stmts: Vec<(String, &'static str)> = Vec::new();
    for t in appended {
        let c = cols(t).await?.join(", ");
        stmts.push((
            format!(
                "INSERT INTO floor.{t} ({c}) SELECT {c} FROM floor.src_{t}
                  WHERE rn > $1 * {n} / $2 AND rn <= ($1 + 1) * {n} / $2",
                n = sizes[t]
            ),
            t,
        ));
    }
    for t in upserted {
        let all = cols(t).await?;
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(a.attname) FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = $1::regclass AND i.indisprimary",
        )
        .bind(format!("incentive.{t}"))
        .fetch_all(pool)
        .await?;
        let set: Vec<String> = all
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let c = all.join(", ");
        stmts.push((
            format!(
                "INSERT INTO floor.{t} ({c})
                 SELECT {c} FROM incentive.{t} WHERE tenant_id = '{tenant}'
                    AND (rep_id, period_kind, period_key) IN (
                        SELECT rep_id, period_kind, period_key FROM floor.src_ledger
                         WHERE rn > $1 * {n} / $2 AND rn <= ($1 + 1) * {n} / $2)
                  ORDER BY {k}
                 ON CONFLICT ({k}) DO UPDATE SET {s}",
                n = sizes["ledger"],
                k = key.join(", "),
                s = set.join(", ")
            ),
            t,
        ));
    }
    let batches = deals.div_ceil(1000).max(1);
    let mut per: Vec<Vec<spm_bus::Record>> = (0..batches).map(|_| Vec::new()).collect();
    let n_events = events.len();
    for (i, e) in events.into_iter().enumerate() {
        per[i * batches / n_events.max(1)].push(e);
    }
    checkpoint().await?;
    let stmts = Arc::new(stmts);
    let queue = Arc::new(Mutex::new(per.into_iter().enumerate().collect::<Vec<_>>()));
    let spent: Arc<Mutex<HashMap<&'static str, Duration>>> = Arc::default();
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (pool, stmts, queue, spent) =
            (pool.clone(), stmts.clone(), queue.clone(), spent.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            loop {
                let Some((i, records)) = queue.lock().expect("queue").pop() else {
                    return anyhow::Ok(());
                };
                let i = i64::try_from(i)?;
                let b = i64::try_from(batches)?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                for (sql, table) in stmts.iter() {
                    let t = Instant::now();
                    sqlx::query(sql).bind(i).bind(b).execute(&mut *tx).await?;
                    *spent.lock().expect("spent").entry(*table).or_default() += t.elapsed();
                }
                let mut topics = Vec::new();
                let mut keys = Vec::new();
                let mut payloads = Vec::new();
                let mut headers = Vec::new();
                for r in records {
                    topics.push(r.topic);
                    keys.push(r.key);
                    payloads.push(r.payload);
                    headers.push(serde_json::to_value(&r.headers)?);
                }
                let t = Instant::now();
                let ids: Vec<i64> = sqlx::query_scalar(
                    "INSERT INTO floor.outbox (topic, key, payload, headers)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::jsonb[])
                     RETURNING id",
                )
                .bind(&topics)
                .bind(&keys)
                .bind(&payloads)
                .bind(&headers)
                .fetch_all(&mut *tx)
                .await?;
                *spent.lock().expect("spent").entry("outbox").or_default() += t.elapsed();
                let t = Instant::now();
                tx.commit().await?;
                *spent.lock().expect("spent").entry("commit").or_default() += t.elapsed();
                sqlx::query("DELETE FROM floor.outbox WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *conn)
                    .await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let took = t0.elapsed();
    // Every row was written.
    for t in appended {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM floor.{t}"))
            .fetch_one(pool)
            .await?;
        anyhow::ensure!(n == sizes[t], "floor.{t}: {n} rows of {}", sizes[t]);
    }
    println!(
        "  design floor: {} ledger, {} credit, {} inbox, {} history rows, {n_events} events in {batches} transactions, {:.2} s",
        sizes["ledger"],
        sizes["credits"],
        sizes["inbox"],
        sizes["period_results_history"],
        took.as_secs_f64()
    );
    let mut spent: Vec<_> = spent.lock().expect("spent").clone().into_iter().collect();
    spent.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    println!(
        "  design floor, time per statement (two connections): {}",
        spent
            .iter()
            .map(|(t, d)| format!("{t} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    sqlx::query("DROP SCHEMA floor CASCADE")
        .execute(pool)
        .await?;
    checkpoint().await?;
    #[allow(clippy::cast_precision_loss)]
    Ok(deals as f64 / took.as_secs_f64().max(0.001))
}

/// The first projection of docs/scaling.md, verified: instances of scoring and incentive
/// share the partitions of one consumer group. One tenant's deals and activities are
/// applied with one instance of each, then the same load for a second tenant with two of
/// each, on the same stack; the figure is each service's rate with two over one.
async fn scale_out(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let s = "scale-out";
    let env = with_service_env("bench-scale-out", 6).await;
    let ingest = env.start_with("ingest", QUIET).await;
    // Partition assignments are logged at info.
    let logged = &[
        ("RUST_LOG", "warn,spm_bus=info"),
        ("SPM_DB_MAX_CONNECTIONS", "10"),
    ];
    let sc1 = env.start_with("scoring", logged).await;
    let in1 = env.start_with("incentive", logged).await;
    let now = Utc::now();
    let month = Calendar::default().period(PeriodKind::Month, now);
    let mut adm =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            in1.channel().await,
        );
    let mut tenants = Vec::new();
    for id in ["solo", "pair"] {
        let t = create_tenant(&env, &ingest, id).await;
        wait_key_known(&in1, &t.admin_key).await;
        wait_key_known(&sc1, &t.admin_key).await;
        put_live_plan(&mut adm, &t.admin_key, &month).await?;
        tenants.push(t);
    }
    let reps: Vec<String> = (0..500).map(|i| format!("rep-{i}")).collect();
    let load = |tenant: &str| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut deals = Vec::new();
        let mut acts = Vec::new();
        for i in 0..sz.scale_out_deals * 5 {
            let rep = &reps[i % reps.len()];
            let at = month.start
                + chrono::Duration::seconds(
                    rng.random_range(0..(now - month.start).num_seconds().max(1)),
                );
            if i % 5 == 0 {
                deals.push(deal_env(
                    tenant,
                    rep,
                    i,
                    at,
                    &format!("{}.00", rng.random_range(500..20_000)),
                ));
            } else {
                acts.push(activity_env(tenant, rep, i, at));
            }
        }
        (deals, acts)
    };
    let sp = env.pool("scoring").await;
    let ip = env.pool("incentive").await;
    let deals_topic = format!("topic=\"{}\"", topics::DEALS);
    let mut rates: Vec<(f64, f64)> = Vec::new();
    let mut second: Vec<Service> = Vec::new();
    for (phase, t) in tenants.iter().enumerate() {
        if phase == 1 {
            for name in ["scoring", "incentive"] {
                let svc = env.start_with(name, logged).await;
                wait_key_known(&svc, &t.admin_key).await;
                second.push(svc);
            }
            // Both groups rebalanced: the new instances hold partitions.
            for svc in &second {
                let t0 = Instant::now();
                while !svc.log_text().contains("partitions assigned") {
                    anyhow::ensure!(
                        t0.elapsed() < Duration::from_secs(60),
                        "{} got no partitions",
                        svc.name
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let before: Vec<f64> = {
            let mut v = vec![
                in1.metric_sum("spm_events_consumed_total", &[&deals_topic])
                    .await,
            ];
            if let Some(in2) = second.get(1) {
                v.push(
                    in2.metric_sum("spm_events_consumed_total", &[&deals_topic])
                        .await,
                );
            }
            v
        };
        let (deals, acts) = load(&t.id);
        let mark: chrono::DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&sp)
            .await?;
        let (c0, w0) = (
            cpu(&[&sc1, &in1].into_iter().chain(&second).collect::<Vec<_>>()),
            Instant::now(),
        );
        produce(&env, topics::ACTIVITIES, &acts).await?;
        produce(&env, topics::DEALS, &deals).await?;
        let events = i64::try_from(deals.len() + acts.len())?;
        let tid = &t.id;
        wait_count(
            &sp,
            &format!("SELECT count(*) FROM facts WHERE tenant_id = '{tid}'"),
            events,
            Duration::from_secs(900),
        )
        .await?;
        let scored: chrono::DateTime<Utc> =
            sqlx::query_scalar("SELECT max(applied_at) FROM inbox WHERE applied_at >= $1")
                .bind(mark)
                .fetch_one(&sp)
                .await?;
        wait_count(
            &ip,
            &format!("SELECT count(*) FROM credits WHERE tenant_id = '{tid}'"),
            i64::try_from(deals.len())?,
            Duration::from_secs(1800),
        )
        .await?;
        let credited: chrono::DateTime<Utc> = sqlx::query_scalar(
            "SELECT max(applied_at) FROM inbox WHERE applied_at >= $1 AND topic = $2",
        )
        .bind(mark)
        .bind(topics::DEALS)
        .fetch_one(&ip)
        .await?;
        let note = format!(
            "{} instance(s) each: {}",
            phase + 1,
            cpu_note(
                &c0,
                &cpu(&[&sc1, &in1].into_iter().chain(&second).collect::<Vec<_>>()),
                w0.elapsed()
            )
        );
        println!("  {note}");
        r.notes.push(note);
        #[allow(clippy::cast_precision_loss)]
        let (sr, ir) = (
            events as f64 / (scored - mark).to_std()?.as_secs_f64().max(0.001),
            deals.len() as f64 / (credited - mark).to_std()?.as_secs_f64().max(0.001),
        );
        rates.push((sr, ir));
        let label = if phase == 0 {
            "one instance"
        } else {
            "two instances"
        };
        r.add(
            s,
            &format!("scoring, {label} ({events} events)"),
            sr,
            "events/s",
            "",
            None,
        );
        r.add(
            s,
            &format!("incentive, {label} ({} deals)", deals.len()),
            ir,
            "deals/s",
            "",
            None,
        );
        if phase == 1 {
            // Both incentive instances applied a share of the deals.
            let a = in1
                .metric_sum("spm_events_consumed_total", &[&deals_topic])
                .await
                - before[0];
            let b = second[1]
                .metric_sum("spm_events_consumed_total", &[&deals_topic])
                .await
                - before[1];
            let share = b / (a + b).max(1.0);
            r.add(
                s,
                "share of the deals applied by the second incentive instance",
                share,
                "",
                "> 0",
                Some(share > 0.0),
            );
        }
    }
    let (one, two) = (rates[0], rates[1]);
    r.add(
        s,
        "scoring: two instances / one (same stack, same run)",
        two.0 / one.0,
        "x",
        "> 1x",
        Some(two.0 > one.0),
    );
    r.add(
        s,
        "incentive: two instances / one (same stack, same run)",
        two.1 / one.1,
        "x",
        "> 1x",
        Some(two.1 > one.1),
    );
    r.rss(&in1);
    drop(ingest);
    Ok(())
}

/// The connector's mapping for the bench's Salesforce org.
fn connect_config(
    fake: &spm_testkit::salesforce::FakePubSub,
    key: &str,
    topic: &str,
) -> serde_json::Value {
    use spm_testkit::salesforce as sf;
    serde_json::json!({"tenants": [{
        "tenant_id": "bench", "ingest_key": key,
        "salesforce": {
            "pubsub_url": fake.url, "instance_url": sf::INSTANCE_URL, "org_id": sf::ORG_ID,
            "access_token": sf::TOKEN, "topics": [topic], "batch": 100,
            "mapping": {
                "deal": {"object": "Opportunity", "stage": "StageName", "won_stages": ["Closed Won"],
                         "open_stages": ["Prospecting"], "amount": "Amount", "currency": "CurrencyIsoCode",
                         "close_date": "CloseDate", "owner": "OwnerId", "name": "Name"},
                "owners": {"pass_through": true}
            }
        }
    }]})
}

/// One Opportunity created closed won: one CDC event, one DealClosed.
fn won_change(i: usize, owner: &str) -> spm_testkit::salesforce::Change {
    use spm_testkit::salesforce::{Change, F, s};
    Change::new(
        "Opportunity",
        &format!("006B{i:08}"),
        "CREATE",
        &[
            ("Name", s(&format!("Bench deal {i}"))),
            ("OwnerId", s(owner)),
            ("StageName", s("Closed Won")),
            ("Amount", F::D(1000.0 + (i % 997) as f64 + 0.5)),
            ("CurrencyIsoCode", s("EUR")),
            ("CloseDate", F::Date(20_780)),
        ],
    )
}

/// CRM connectors: Salesforce change events through the connector into ingest, against
/// ingest taking the same deals directly in the same run; and the latency the connector
/// adds from a CRM event's publication to ingest's durable acceptance.
async fn connect(sz: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    use spm_testkit::salesforce as sf;
    const TOPIC: &str = "/data/OpportunityChangeEvent";
    let env = with_service_env("bench-connect", 3).await;
    let ingest = env.start_with("ingest", QUIET).await;
    let t = create_tenant(&env, &ingest, "bench").await;
    wait_key_known(&ingest, &t.admin_key).await;
    let reps: Vec<String> = (0..100).map(|i| format!("rep-{i}")).collect();
    let mut c = IngestServiceClient::new(ingest.channel().await);
    c.submit_events(authed(
        pb::SubmitEventsRequest {
            events: reps
                .iter()
                .map(|x| spm_testkit::events::rep(x, "", ""))
                .collect(),
        },
        &t.admin_key,
    ))
    .await?;
    let n = sz.connect_events;

    // Baseline: the same deals submitted straight to ingest, 100 per request, one request
    // at a time (as the connector sends a Pub/Sub batch).
    let direct: Vec<pb::CrmEvent> = (0..n)
        .map(|i| {
            let mut e = spm_testkit::events::deal_in(
                &format!("direct-{i}"),
                "1000.50",
                "EUR",
                &[(&reps[i % reps.len()], "100")],
            );
            e.source = "bench".into();
            e
        })
        .collect();
    let t0 = Instant::now();
    for chunk in direct.chunks(100) {
        c.submit_events(authed(
            pb::SubmitEventsRequest {
                events: chunk.to_vec(),
            },
            &t.admin_key,
        ))
        .await?;
    }
    #[allow(clippy::cast_precision_loss)]
    let direct_rate = n as f64 / t0.elapsed().as_secs_f64();

    let fake = sf::FakePubSub::start().await;
    fake.add_schema("opp-1", &sf::opportunity_schema());
    fake.add_topic(TOPIC);
    let cfg = env.log_dir.join("connectors.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&connect_config(&fake, &t.admin_key, TOPIC))?,
    )?;
    let connect = env
        .start_with(
            "connect",
            &[
                ("RUST_LOG", "warn"),
                ("SPM_CONNECT_CONFIG", cfg.to_str().unwrap_or_default()),
                ("SPM_INGEST_URL", &format!("http://{}", ingest.grpc)),
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Encoded before the clock; published at once, then drained by the connector.
    let schema = sf::opportunity_schema();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| sf::encode_change(&schema, &won_change(i, &reps[i % reps.len()])))
        .collect();
    let pool = env.pool("ingest").await;
    let cpu0 = cpu(&[&ingest, &connect]);
    let t0 = Instant::now();
    let wall0 = Utc::now();
    for p in payloads {
        fake.publish(TOPIC, "opp-1", p);
    }
    let want = i64::try_from(n * 2 + reps.len())?;
    wait_count(
        &pool,
        "SELECT count(*) FROM idempotency",
        want,
        Duration::from_secs(600),
    )
    .await?;
    // From the last acceptance, not from when the poll noticed.
    let last: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT max(accepted_at) FROM idempotency")
            .fetch_one(&pool)
            .await?;
    let took = (last - wall0).to_std().unwrap_or_else(|_| t0.elapsed());
    let note = format!(
        "connect phase: {}",
        cpu_note(&cpu0, &cpu(&[&ingest, &connect]), took)
    );
    println!("  {note}");
    r.notes.push(note);
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / took.as_secs_f64();

    // Latency, open loop: one CRM event every 10 ms; publication to ingest's acceptance
    // (its idempotency record's time), against a direct SubmitEvent in the same run.
    let secs = sz.hop_secs;
    let rate_per_s = 100u32;
    let m = usize::try_from(u64::from(rate_per_s) * secs)?;
    let mut published = Vec::with_capacity(m);
    let interval = Duration::from_millis(10);
    let start = tokio::time::Instant::now();
    for i in 0..m {
        tokio::time::sleep_until(start + interval * u32::try_from(i)?).await;
        let rid = format!("006L{i:08}");
        let mut ch = won_change(n + i, &reps[i % reps.len()]);
        ch.record_id.clone_from(&rid);
        let uuid = fake.publish(TOPIC, "opp-1", sf::encode_change(&schema, &ch));
        let id = spm_core::derived_id(&["connect", "bench", "salesforce", &uuid, &rid, "closed"]);
        published.push((id, Utc::now()));
    }
    let want = want + i64::try_from(m)?;
    wait_count(
        &pool,
        "SELECT count(*) FROM idempotency",
        want,
        Duration::from_secs(120),
    )
    .await?;
    let ids: Vec<uuid::Uuid> = published.iter().map(|(id, _)| *id).collect();
    let rows: Vec<(uuid::Uuid, chrono::DateTime<Utc>)> =
        sqlx::query_as("SELECT event_id, accepted_at FROM idempotency WHERE event_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pool)
            .await?;
    let at: HashMap<uuid::Uuid, chrono::DateTime<Utc>> = rows.into_iter().collect();
    let mut lat = Lat::default();
    for (id, sent) in &published {
        if let Some(a) = at.get(id) {
            lat.0.push((*a - *sent).to_std().unwrap_or_default());
        }
    }
    let (direct_lat, _) = open_loop(rate_per_s, secs, |i| {
        let mut c = c.clone();
        let key = t.admin_key.clone();
        let e = spm_testkit::events::deal_in(
            &format!("direct-lat-{i}"),
            "10",
            "EUR",
            &[("rep-1", "100")],
        );
        async move {
            c.submit_event(authed(pb::SubmitEventRequest { event: Some(e) }, &key))
                .await
                .map(|_| ())
                .map_err(|s| s.to_string())
        }
    })
    .await;
    let s = "connect";
    let text = connect.metrics().await;
    let sum = |name: &str| spm_testkit::process::parse_metric_sum(&text, name, &[]);
    let acks = sum("spm_connect_ack_latency_seconds_count");
    if acks > 0.0 {
        r.add(
            s,
            "connector: mean SubmitEvents -> ack, per Pub/Sub batch",
            sum("spm_connect_ack_latency_seconds_sum") / acks * 1000.0,
            "ms",
            "",
            None,
        );
    }
    r.add(
        s,
        "ingest taking the same deals directly (100 per request)",
        direct_rate,
        "events/s",
        "",
        None,
    );
    r.add(
        s,
        "Salesforce CDC events through the connector into ingest (batches of 100)",
        rate,
        "events/s",
        "",
        None,
    );
    r.add(
        s,
        "connector / direct ratio",
        rate / direct_rate,
        "x",
        "",
        None,
    );
    r.add(
        s,
        "CRM event published -> ingest accepted, p50 (100 events/s)",
        lat.q(0.5),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "CRM event published -> ingest accepted, p99 (100 events/s)",
        lat.q(0.99),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "direct SubmitEvent -> ack, p99 (same rate, same run)",
        direct_lat.q(0.99),
        "ms",
        "",
        None,
    );
    r.add(
        s,
        "latency the connector adds, p99",
        lat.q(0.99) - direct_lat.q(0.99),
        "ms",
        "",
        None,
    );
    anyhow::ensure!(
        lat.0.len() == m,
        "only {} of {m} latency events arrived",
        lat.0.len()
    );
    r.rss(&connect);
    Ok(())
}
