//! The connect service: CRM-native events in (Salesforce's Pub/Sub API, HubSpot webhooks),
//! SPM events out through ingest's gRPC API, so validation, idempotency, parking and fan-out
//! stay in ingest. Each tenant has a field mapping (`domain::mapping`); every submitted
//! event's id is derived from the CRM's own event id, so a redelivery is a duplicate.

pub mod api;
pub mod domain;
pub mod hubspot;
pub mod metrics;
pub mod salesforce;
pub mod settings;
pub mod store;
pub mod submit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::Parser;
use spm_bus::{Handler, HandlerError, Incoming, Outbox};
use spm_core::topics;
use spm_proto::connect::v1::connect_service_server::ConnectServiceServer;
use spm_proto::ingest::v1::{CrmEvent, crm_event::Payload};
use spm_server::App;
use spm_server::config::ServiceConfig;
use spm_server::grpc::GrpcServer;
use sqlx::{PgConnection, PgPool, Row as _};
use tokio::sync::Notify;

#[derive(Debug, Clone, Parser)]
#[command(name = "spm-connect", version, about = "SPM connect service")]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceConfig,
    /// The connectors file (JSON): per tenant the ingest key, the CRMs and their mappings.
    #[arg(
        long = "config",
        env = "SPM_CONNECT_CONFIG",
        value_name = "SPM_CONNECT_CONFIG"
    )]
    pub connectors: String,
    /// Ingest's gRPC address.
    #[arg(long, env = "SPM_INGEST_URL", default_value = "http://127.0.0.1:50051")]
    pub ingest: String,
    /// The base URL HubSpot calls (it signs the full URL); default `http://<SPM_HTTP_ADDR>`.
    #[arg(long, env = "SPM_CONNECT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long the CRM keeps events: a Salesforce checkpoint older than this is reported
    /// and waits for the operator's choice instead of being resumed.
    #[arg(long, env = "SPM_CONNECT_RETENTION_HOURS", default_value_t = 72)]
    pub retention_hours: u64,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// An SPM event whose id is derived from the CRM's event id, the record and what it says
/// (so a redelivery of the CRM event is a duplicate in ingest).
pub fn spm_event(
    source: &str,
    tenant: &str,
    crm_event_id: &str,
    record: &str,
    kind: &str,
    at: DateTime<Utc>,
    payload: Payload,
) -> CrmEvent {
    CrmEvent {
        event_id: spm_core::derived_id(&["connect", tenant, source, crm_event_id, record, kind])
            .to_string(),
        occurred_at: Some(spm_proto::ext::timestamp(at)),
        source: source.into(),
        payload: Some(payload),
    }
}

/// The record an SPM event is about (for reporting a refusal).
pub fn subject(e: &CrmEvent) -> String {
    match &e.payload {
        Some(Payload::DealClosed(d)) => d.deal_id.clone(),
        Some(Payload::DealReversed(d)) => d.deal_id.clone(),
        Some(Payload::PaymentReceived(p)) => p.payment_id.clone(),
        Some(Payload::ActivityLogged(a)) => a.activity_id.clone(),
        _ => String::new(),
    }
}

/// Tenants and keys from `spm.tenants.v1`, so the connector authenticates its callers.
struct Tenants;

#[async_trait]
impl Handler for Tenants {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[&Incoming],
        _out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        for inc in batch {
            spm_server::auth::apply_tenant_event(conn, &inc.envelope).await?;
        }
        Ok(())
    }
}

/// Every few seconds: each stream's checkpoint age (HubSpot: its oldest pending webhook).
async fn gauges(pool: PgPool, cancel: tokio_util::sync::CancellationToken) {
    loop {
        let rows = sqlx::query(
            "SELECT c.tenant_id, c.source, c.stream,
                    CASE WHEN c.source = 'hubspot' THEN
                        COALESCE((SELECT extract(epoch FROM now() - min(h.received_at))::bigint FROM hubspot_inbox h
                                   WHERE h.tenant_id = c.tenant_id AND h.done_at IS NULL), 0)
                    ELSE COALESCE(extract(epoch FROM now() - c.checkpointed_at)::bigint, 0) END,
                    (SELECT count(*) FROM hubspot_inbox h WHERE c.source = 'hubspot' AND h.tenant_id = c.tenant_id AND h.done_at IS NULL)
               FROM checkpoints c",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for r in rows {
            let (t, s, st): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            metrics::checkpoint_age(&t, &s, &st, r.get(3));
            if s == hubspot::SOURCE {
                metrics::pending(&t, r.get(4));
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = settings::File::load(&config.connectors)?;
    let ingest = submit::Ingest {
        channel: tonic::transport::Endpoint::from_shared(config.ingest.clone())
            .with_context(|| format!("SPM_INGEST_URL {:?} is not a URL", config.ingest))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
    };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.service.http_addr))
        .trim_end_matches('/')
        .to_owned();
    let mut app = App::start("connect", config.service.clone(), &MIGRATOR).await?;
    metrics::init();
    app.consume("connect", &[topics::TENANTS], Arc::new(Tenants));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the CRM API client")?;
    let mut hubspot_tenants = HashMap::new();
    for t in &file.tenants {
        if let Some(sf) = &t.salesforce {
            let sf = Arc::new(sf.clone());
            for topic in &sf.topics {
                let s = salesforce::Subscriber {
                    tenant: t.tenant_id.clone(),
                    ingest_key: t.ingest_key.clone(),
                    sf: sf.clone(),
                    topic: topic.clone(),
                    pool: app.pool.clone(),
                    ingest: ingest.clone(),
                    retention: Duration::from_secs(config.retention_hours * 3600),
                    cancel: app.cancel.clone(),
                    http: http.clone(),
                    token: std::sync::Mutex::new(sf.access_token.clone().unwrap_or_default()),
                };
                app.spawn(s.run());
            }
        }
        if let Some(hs) = &t.hubspot {
            let tenant = Arc::new(hubspot::Tenant {
                id: t.tenant_id.clone(),
                ingest_key: t.ingest_key.clone(),
                hs: hs.clone(),
                wake: Notify::new(),
            });
            hubspot_tenants.insert(t.tenant_id.clone(), tenant.clone());
            let w = hubspot::Worker {
                pool: app.pool.clone(),
                tenant,
                ingest: ingest.clone(),
                http: http.clone(),
                cancel: app.cancel.clone(),
            };
            app.spawn(w.run());
        }
    }
    app.spawn(gauges(app.pool.clone(), app.cancel.clone()));
    tracing::info!(tenants = file.tenants.len(), %public_url, "connectors configured");
    let receiver = hubspot::Receiver {
        pool: app.pool.clone(),
        tenants: Arc::new(hubspot_tenants),
        public_url,
    };
    let max = app.config.max_message_bytes();
    let mut grpc = GrpcServer::new(app.keys.clone());
    grpc.add_service(
        ConnectServiceServer::new(api::Api {
            pool: app.pool.clone(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    app.serve(grpc, hubspot::router(receiver)).await
}
