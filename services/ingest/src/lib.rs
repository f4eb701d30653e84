//! The ingest service: CRM events in over gRPC and an HTTP webhook, authenticated per
//! tenant, validated with field-level errors, recorded idempotently and published to Kafka
//! (one credit per credited rep), answered "accepted" only once the broker has them.

pub mod api;
pub mod domain;
pub mod metrics;
pub mod pipeline;
pub mod store;
pub mod webhook;

use std::time::Duration;

use spm_proto::ingest::v1::ingest_admin_service_server::IngestAdminServiceServer;
use spm_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use spm_server::grpc::GrpcServer;
use spm_server::{App, ServiceConfig};

/// Ingest's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "spm-ingest", about = "SPM ingest service")]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceConfig,

    /// Operator token for CreateTenant (`authorization: Bearer <token>`); unset disables it.
    #[arg(
        long = "admin-token",
        env = "SPM_ADMIN_TOKEN",
        value_name = "SPM_ADMIN_TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Most events per request (unary batch, stream message, webhook body).
    #[arg(long = "max-batch", env = "SPM_INGEST_MAX_BATCH", value_name = "SPM_INGEST_MAX_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,

    /// Largest webhook body in bytes.
    #[arg(long = "max-body-bytes", env = "SPM_INGEST_MAX_BODY_BYTES", value_name = "SPM_INGEST_MAX_BODY_BYTES",
          default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u32,

    /// How old an event's occurred_at may be, in days.
    #[arg(long = "horizon-days", env = "SPM_INGEST_HORIZON_DAYS", value_name = "SPM_INGEST_HORIZON_DAYS", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub horizon_days: u32,

    /// Webhook replay window: how far X-SPM-Timestamp may be from the server clock, seconds.
    #[arg(long = "webhook-window-secs", env = "SPM_WEBHOOK_WINDOW_SECS", value_name = "SPM_WEBHOOK_WINDOW_SECS",
          default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub webhook_window_secs: u32,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Keeps the parked-event gauges current (every 15 s) until cancelled.
async fn watch_parked(pool: sqlx::PgPool, cancel: tokio_util::sync::CancellationToken) {
    loop {
        match store::parked_stats(&pool).await {
            Ok(rows) => {
                let now = chrono::Utc::now();
                let rows: Vec<(String, String, i64, i64)> = rows
                    .into_iter()
                    .map(|(state, on, n, oldest)| {
                        let age = oldest.map_or(0, |t| (now - t).num_seconds().max(0));
                        (state, on, n, age)
                    })
                    .collect();
                metrics::set_parked(&rows);
            }
            Err(e) => tracing::warn!(error = %e, "reading parked events for the metrics failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut app = App::start("ingest", config.service.clone(), &MIGRATOR).await?;
    metrics::init();
    app.spawn(watch_parked(app.pool.clone(), app.cancel.clone()));
    let limits = domain::Limits {
        max_future: Duration::from_secs(300),
        max_age: Duration::from_secs(u64::from(config.horizon_days) * 86_400),
    };
    let pipeline = pipeline::Pipeline::new(
        app.pool.clone(),
        app.producer.clone(),
        app.config.kafka.clone(),
        limits,
    );
    let max_batch = api::BatchLimit(config.max_batch as usize);
    let api = api::Api {
        pipeline: pipeline.clone(),
        max_batch,
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
        relay: app.relay_waker(),
    };
    let max_msg = app.config.max_message_bytes();
    let mut grpc = GrpcServer::new(app.keys.clone());
    grpc.add_service(
        IngestServiceServer::new(api.clone())
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg),
    )
    .add_service(
        IngestAdminServiceServer::new(api)
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg),
    )
    .open_method("/spm.ingest.v1.IngestAdminService/CreateTenant")
    .open_method("/spm.ingest.v1.IngestAdminService/GetSignIn")
    // Ingest knows people only by their explicit grants (it keeps no org projection): a
    // comp admin, finance or auditor may read the tenant and its FX rates; nothing else.
    .people_may_call(&[
        "/spm.ingest.v1.IngestAdminService/GetTenant",
        "/spm.ingest.v1.IngestAdminService/ListFxRates",
    ]);
    let http = webhook::router(webhook::Webhook {
        pipeline,
        max_batch,
        max_body: config.max_body_bytes as usize,
        window: Duration::from_secs(u64::from(config.webhook_window_secs)),
    });
    app.serve(grpc, http).await
}
