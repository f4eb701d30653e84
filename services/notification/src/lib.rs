//! The notification service: facts from scoring and incentive become explained
//! notifications for reps and managers, delivered to an in-app feed (with a live stream),
//! signed webhooks and e-mail, under per-user preferences, quiet hours and rate limits.

pub mod api;
pub mod consume;
pub mod deliver;
pub mod digest;
pub mod domain;
pub mod metrics;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use spm_core::topics;
use spm_proto::notification::v1::notification_admin_service_server::NotificationAdminServiceServer;
use spm_proto::notification::v1::notification_service_server::NotificationServiceServer;
use spm_server::grpc::GrpcServer;
use spm_server::{App, ServiceConfig};
use tokio::sync::{Notify, broadcast};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "spm-notification", about = "SPM notification service")]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceConfig,

    /// SMTP server for e-mail: smtp://host:port (plain), smtps://host:port (TLS), or
    /// smtp://host:port?tls=required (STARTTLS); credentials as smtp://user:pass@host.
    /// Unset: no e-mail.
    #[arg(long = "smtp-url", env = "SPM_SMTP_URL", value_name = "SPM_SMTP_URL")]
    pub smtp_url: Option<String>,

    /// Sender address of e-mails.
    #[arg(
        long = "smtp-from",
        env = "SPM_SMTP_FROM",
        value_name = "SPM_SMTP_FROM",
        default_value = "SPM <spm@localhost>"
    )]
    pub smtp_from: String,

    /// Attempts per delivery before it is dead.
    #[arg(long = "delivery-max-attempts", env = "SPM_DELIVERY_MAX_ATTEMPTS", value_name = "SPM_DELIVERY_MAX_ATTEMPTS",
          default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_attempts: u32,

    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[arg(long = "delivery-backoff-ms", env = "SPM_DELIVERY_BACKOFF_MS", value_name = "SPM_DELIVERY_BACKOFF_MS",
          default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub backoff_ms: u64,

    /// Longest wait for one webhook or SMTP exchange, milliseconds.
    #[arg(long = "delivery-timeout-ms", env = "SPM_DELIVERY_TIMEOUT_MS", value_name = "SPM_DELIVERY_TIMEOUT_MS",
          default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub timeout_ms: u64,

    /// How often digests are checked, seconds.
    #[arg(
        long = "digest-interval-secs",
        env = "SPM_DIGEST_INTERVAL_SECS",
        value_name = "SPM_DIGEST_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub digest_interval_secs: u64,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Topics of the main consumer group: tenants, the org chart and score changes.
pub const TOPICS: &[&str] = &[topics::TENANTS, topics::ORG, topics::SCORES];

/// Earnings have a consumer group of their own: a commission notification never waits
/// behind a batch of score changes (several hundred a second on a busy floor), which had
/// made the webhook's p99 several times its median.
pub const EARNINGS_TOPICS: &[&str] = &[topics::EARNINGS];

pub async fn run(config: Config) -> anyhow::Result<()> {
    // One TLS crypto provider for webhooks and SMTP (ring: no cmake needed to build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smtp = match &config.smtp_url {
        None => None,
        Some(url) => Some(deliver::Smtp {
            transport: lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
                .with_context(|| "SPM_SMTP_URL is not a valid smtp:// or smtps:// URL")?
                .timeout(Some(Duration::from_millis(config.timeout_ms)))
                .build(),
            from: config
                .smtp_from
                .parse()
                .context("SPM_SMTP_FROM is not an e-mail address")?,
        }),
    };
    let mut app = App::start("notification", config.service.clone(), &MIGRATOR).await?;
    metrics::init();
    let wake = Arc::new(Notify::new());
    let email = smtp.is_some();
    let handler = Arc::new(consume::NotificationHandler {
        wake: wake.clone(),
        email,
    });
    app.consume("notification", TOPICS, handler.clone());
    app.consume("notification-earnings", EARNINGS_TOPICS, handler);
    let worker = deliver::Worker {
        pool: app.pool.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .context("building the webhook HTTP client")?,
        smtp,
        wake: wake.clone(),
        policy: deliver::Policy {
            max_attempts: config.max_attempts,
            backoff_base: Duration::from_millis(config.backoff_ms),
            backoff_max: Duration::from_secs(3600),
            timeout: Duration::from_millis(config.timeout_ms),
        },
    };
    tokio::spawn(worker.run(app.cancel.clone()));
    let (live, _) = broadcast::channel(4096);
    tokio::spawn(spm_server::listen::forward(
        app.pool.clone(),
        consume::NOTIFY_CHANNEL,
        live.clone(),
        app.cancel.clone(),
    ));
    {
        let pool = app.pool.clone();
        let cancel = app.cancel.clone();
        let wake = wake.clone();
        let every = Duration::from_secs(config.digest_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match digest::send_due(&pool, None, false, email).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(sent = n, "digests sent");
                        wake.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "digests failed"),
                }
            }
        });
    }
    let api = api::Api {
        pool: app.pool.clone(),
        live,
        email,
        wake,
    };
    let max = app.config.max_message_bytes();
    let mut grpc = GrpcServer::new(app.keys.clone());
    grpc.add_service(
        NotificationServiceServer::new(api.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        NotificationAdminServiceServer::new(api)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .people_may_call(PEOPLE_METHODS);
    app.serve(grpc, axum::Router::new()).await
}

/// What signed-in people may call: their own feed, stream and preferences (the recipient is
/// their rep id); finance, auditors and comp admins also the delivery log.
pub const PEOPLE_METHODS: &[&str] = &[
    "/spm.notification.v1.NotificationService/ListNotifications",
    "/spm.notification.v1.NotificationService/MarkRead",
    "/spm.notification.v1.NotificationService/Subscribe",
    "/spm.notification.v1.NotificationService/GetPreferences",
    "/spm.notification.v1.NotificationService/SetPreference",
    "/spm.notification.v1.NotificationService/ListDeliveries",
];
