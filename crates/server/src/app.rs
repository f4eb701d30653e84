//! The life of a service process: start telemetry, connect and migrate its schema, create
//! topics, run consumers and the outbox relay, serve gRPC and HTTP, and on SIGTERM stop
//! taking work, drain, commit offsets and flush the tracer.

use std::sync::Arc;

use anyhow::Context as _;
use spm_bus::consumer::ConsumerLoop;
use spm_bus::outbox::Relay;
use spm_bus::{Handler, Producer};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyStore;
use crate::config::ServiceConfig;
use crate::grpc::GrpcServer;

/// A running service's shared parts.
pub struct App {
    pub name: &'static str,
    pub config: ServiceConfig,
    pub pool: PgPool,
    pub producer: Producer,
    pub keys: KeyStore,
    pub cancel: CancellationToken,
    telemetry: Option<spm_telemetry::Telemetry>,
    relay_wake: Arc<Notify>,
    tasks: JoinSet<()>,
    consumers: JoinSet<()>,
}

impl App {
    /// Starts the shared parts of service `name` (its schema is named after it).
    pub async fn start(
        name: &'static str,
        config: ServiceConfig,
        migrator: &Migrator,
    ) -> anyhow::Result<Self> {
        let telemetry = spm_telemetry::init(&format!("spm-{name}"), config.log_format)?;
        let cancel = crate::shutdown::on_signal();

        // Dependencies may come up after us (orchestrators start everything at once):
        // retry for a while before giving up.
        let pool = retry("Postgres", &cancel, || {
            crate::db::connect(&config.database_url, name, config.db_max_connections)
        })
        .await
        .with_context(|| {
            format!(
                "connecting to DATABASE_URL ({})",
                redact(&config.database_url)
            )
        })?;
        crate::db::migrate(&pool, migrator)
            .await
            .with_context(|| format!("migrating schema {name}"))?;

        retry("Kafka", &cancel, || {
            spm_bus::admin::ensure_topics(&config.kafka)
        })
        .await
        .with_context(|| {
            format!(
                "creating topics on KAFKA_BROKERS ({})",
                config.kafka.brokers
            )
        })?;
        let producer = Producer::new(&config.kafka).context("creating the Kafka producer")?;

        let relay =
            Relay::new(pool.clone(), producer.clone()).topic_prefix(&config.kafka.topic_prefix);
        let relay_wake = relay.waker();
        let mut tasks = JoinSet::new();
        if config.db_keep_statistics {
            tasks.spawn(crate::db::keep_statistics(pool.clone(), cancel.clone()));
        }
        // The relay outlives the consumers: it stops on its own token after they are done.
        let relay_cancel = CancellationToken::new();
        {
            let rc = relay_cancel.clone();
            tasks.spawn(async move { relay.run(rc).await });
            let c = cancel.clone();
            tasks.spawn(async move {
                c.cancelled().await;
                // Give consumers a moment to commit their last batch, then stop the relay.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                relay_cancel.cancel();
            });
        }

        Ok(Self {
            name,
            keys: KeyStore::new(pool.clone()),
            config,
            pool,
            producer,
            cancel,
            telemetry: Some(telemetry),
            relay_wake,
            tasks,
            consumers: JoinSet::new(),
        })
    }

    /// Wakes the outbox relay (after committing outbox rows outside a consumer).
    pub fn relay_waker(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// Runs a consumer loop for group `group` over base topics `topics`.
    pub fn consume(&mut self, group: &str, topics: &[&str], handler: Arc<dyn Handler>) {
        self.consume_with(group, topics, handler, |l| l);
    }

    /// [`Self::consume`] with the loop's settings adjusted by `tune`.
    pub fn consume_with(
        &mut self,
        group: &str,
        topics: &[&str],
        handler: Arc<dyn Handler>,
        tune: impl FnOnce(ConsumerLoop) -> ConsumerLoop,
    ) {
        let l = ConsumerLoop::new(
            &self.config.kafka,
            group,
            topics,
            self.pool.clone(),
            self.producer.clone(),
            handler,
        )
        .wake_relay(self.relay_wake.clone());
        let l = tune(l);
        let cancel = self.cancel.clone();
        self.consumers.spawn(async move {
            if let Err(e) = l.run(cancel.clone()).await {
                tracing::error!(error = %e, "consumer loop failed; shutting down");
                cancel.cancel();
            }
        });
    }

    /// Runs `task` beside the servers; it should end when `self.cancel` is cancelled, and
    /// shutdown waits for it.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Serves `grpc` and `http` (merged with `/metrics` and `/healthz`) until SIGTERM or
    /// SIGINT, then drains and returns.
    pub async fn serve(mut self, grpc: GrpcServer, http: axum::Router) -> anyhow::Result<()> {
        let mut grpc = grpc;
        grpc.add_service(
            spm_proto::audit::v1::audit_service_server::AuditServiceServer::new(
                crate::audit::AuditApi {
                    pool: self.pool.clone(),
                },
            ),
        )
        .people_may_call(crate::audit::PEOPLE_METHODS);
        let c = self.cancel.clone();
        let (grpc_addr, grpc_fut) = grpc
            .bind(self.config.grpc_addr, async move { c.cancelled().await })
            .await
            .with_context(|| format!("binding SPM_GRPC_ADDR ({})", self.config.grpc_addr))?;
        let c = self.cancel.clone();
        let (http_addr, http_fut) = crate::http::bind(
            self.config.http_addr,
            crate::http::base_router().merge(http),
            async move { c.cancelled().await },
        )
        .await
        .with_context(|| format!("binding SPM_HTTP_ADDR ({})", self.config.http_addr))?;
        tracing::info!(service = self.name, %grpc_addr, %http_addr, "service ready");

        let c = self.cancel.clone();
        self.tasks.spawn(async move {
            if let Err(e) = grpc_fut.await {
                tracing::error!(error = %e, "gRPC server failed");
                c.cancel();
            }
        });
        let c = self.cancel.clone();
        self.tasks.spawn(async move {
            if let Err(e) = http_fut.await {
                tracing::error!(error = %e, "HTTP server failed");
                c.cancel();
            }
        });

        self.cancel.cancelled().await;
        while self.consumers.join_next().await.is_some() {}
        while self.tasks.join_next().await.is_some() {}
        self.producer.flush(std::time::Duration::from_secs(5));
        self.pool.close().await;
        tracing::info!(service = self.name, "stopped");
        if let Some(t) = self.telemetry.take() {
            t.shutdown().await;
        }
        Ok(())
    }
}

/// Retries `f` with backoff for up to a minute (or until cancelled).
async fn retry<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e)
                if started.elapsed() < std::time::Duration::from_secs(60)
                    && !cancel.is_cancelled() =>
            {
                tracing::warn!(dependency = what, error = %e, retry_in = ?delay, "dependency not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h:1/db"),
            "postgres://u@h:1/db"
        );
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
    }
}
