//! The portal: server-rendered pages for the people SPM is for. It holds sessions only and
//! calls the services with the signed-in person's access token, so the services decide what
//! the person may see (`spm_server::access`); the portal is never the only guard.
//!
//! Sign-in is the authorization code grant with PKCE against the tenant's provider (found
//! with ingest's `GetSignIn`); the session cookie is HttpOnly, SameSite=Lax, Secure when the
//! public URL is https; every form carries the session's CSRF token.

mod admin;
mod audit;
mod i18n;
mod pages;
mod session;
mod team;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tonic::transport::{Channel, Endpoint};

pub use i18n::Lang;

/// Settings: flags and environment variables.
#[derive(Debug, Clone, Parser)]
#[command(name = "spm-portal", version, about = "SPM portal")]
pub struct Config {
    /// Where the portal listens.
    #[arg(long, env = "SPM_PORTAL_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The address people reach it at (the provider redirects back here).
    #[arg(
        long,
        env = "SPM_PORTAL_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    #[arg(long, env = "SPM_INGEST_URL", default_value = "http://127.0.0.1:50051")]
    pub ingest: String,
    #[arg(
        long,
        env = "SPM_SCORING_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub scoring: String,
    #[arg(
        long,
        env = "SPM_INCENTIVE_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub incentive: String,
    #[arg(
        long,
        env = "SPM_NOTIFICATION_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub notification: String,
    /// The portal's client at the identity provider (a confidential client).
    #[arg(long, env = "SPM_PORTAL_CLIENT_ID", default_value = "spm-portal")]
    pub client_id: String,
    #[arg(
        long,
        env = "SPM_PORTAL_CLIENT_SECRET",
        default_value = "spm-portal-local-secret",
        hide_env_values = true
    )]
    pub client_secret: String,
    /// A session ends this many seconds after sign-in (and never after the token expires).
    #[arg(long, env = "SPM_PORTAL_SESSION_SECS", default_value_t = 3600)]
    pub session_secs: i64,
    #[arg(long, env = "SPM_LOG_FORMAT", default_value = "pretty")]
    pub log_format: spm_telemetry::LogFormat,
}

/// What every request shares.
#[derive(Clone)]
pub struct Portal {
    pub config: Arc<Config>,
    pub ingest: Channel,
    pub scoring: Channel,
    pub incentive: Channel,
    pub notification: Channel,
    pub sessions: session::Sessions,
}

fn lazy(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url} is not a URL"))?
        .connect_lazy())
}

impl Portal {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        url::Url::parse(&config.public_url)
            .with_context(|| format!("SPM_PORTAL_PUBLIC_URL {:?}", config.public_url))?;
        Ok(Self {
            ingest: lazy(&config.ingest)?,
            scoring: lazy(&config.scoring)?,
            incentive: lazy(&config.incentive)?,
            notification: lazy(&config.notification)?,
            sessions: session::Sessions::default(),
            config: Arc::new(config),
        })
    }

    pub fn secure_cookies(&self) -> bool {
        self.config.public_url.starts_with("https://")
    }
}

pub async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = spm_telemetry::init("spm-portal", config.log_format)?;
    let addr = config.addr;
    let portal = Portal::new(config)?;
    let app = pages::router(portal);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding SPM_PORTAL_ADDR {addr}"))?;
    tracing::info!(%addr, "portal listening");
    let cancel = spm_server::shutdown::on_signal();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}
