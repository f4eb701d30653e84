//! The outbox relay: publishes rows the consumer loop (or an API call) wrote into the
//! outbox table in the same transaction as their cause, then deletes them.
//!
//! One relay per service schema publishes at a time (a transaction-scoped advisory lock),
//! so rows of one key leave in the order they were written. A crash between publish and
//! delete publishes those rows again; consumers dedupe by event id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info_span;

use crate::{Producer, Record};

/// Advisory lock class of the relay (any constant). Advisory locks are scoped to the
/// database, and services may share one database with a schema each: the second key is the
/// schema's hash, so only relays of the same schema (instances of one service) exclude each
/// other. (With one key for all, scoring's relay held off incentive's for up to the poll
/// interval, 500 ms, and that was the webhook's p99.)
const RELAY_LOCK: i32 = 0x5350_4d52; // "SPMR"

/// While another instance's relay holds the lock, try again this often (its round may have
/// started before our rows were committed), for up to [`BUSY_RETRIES`] times.
const BUSY_RETRY: Duration = Duration::from_millis(10);
const BUSY_RETRIES: u32 = 50;

/// Rows published per round.
const ROUND: i64 = 1000;

/// How often the backlog gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Publishes the outbox of one service schema.
pub struct Relay {
    pool: PgPool,
    producer: Producer,
    wake: Arc<Notify>,
    poll_every: Duration,
    /// Stripped from topic names in span names (deployment detail, not the destination).
    topic_prefix: String,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

impl Relay {
    pub fn new(pool: PgPool, producer: Producer) -> Self {
        Self {
            pool,
            producer,
            wake: Arc::new(Notify::new()),
            poll_every: Duration::from_millis(500),
            topic_prefix: String::new(),
        }
    }

    /// Names spans after base topic names (without `prefix`).
    #[must_use]
    pub fn topic_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.topic_prefix);
        self
    }

    /// Notify it after committing outbox rows, for immediate publication.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `cancel`, then publishes what is left (best effort) and returns.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // The gauges count the outbox, a query as dear as a round under load: once a second.
        let mut gauges_at: Option<Instant> = None;
        loop {
            match self.drain().await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if gauges_at.is_none_or(|t| t.elapsed() >= GAUGES_EVERY) {
                        gauges_at = Some(Instant::now());
                        if let Err(e) = self.update_gauges().await {
                            tracing::debug!(error = %e, "outbox gauges");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay round failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll_every) => {}
            }
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), self.drain())
            .await
            .unwrap_or(Ok(()))
        {
            tracing::warn!(error = %e, "outbox relay: final round failed; rows stay for the next start");
        }
    }

    /// Publishes rounds until the outbox is empty (or another instance's relay keeps the
    /// lock for longer than the busy retries).
    async fn drain(&self) -> Result<(), RoundError> {
        let mut busy = 0;
        loop {
            match self.round().await? {
                Some(n) if n == ROUND as usize => busy = 0,
                Some(_) => return Ok(()),
                None if busy < BUSY_RETRIES => {
                    busy += 1;
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                None => return Ok(()),
            }
        }
    }

    /// One round: lock, read up to ROUND rows, publish them all, delete them, commit.
    /// `None` when another relay of this schema holds the lock.
    async fn round(&self) -> Result<Option<usize>, RoundError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext(current_schema()))")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *tx)
                .await?;
        if !locked {
            return Ok(None);
        }
        let rows: Vec<(i64, String, String, Vec<u8>, serde_json::Value)> = sqlx::query_as(
            "SELECT id, topic, key, payload, headers FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(ROUND)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Some(0));
        }
        let mut spans = Vec::with_capacity(rows.len());
        let records: Vec<Record> = rows
            .iter()
            .map(|(_, topic, key, payload, headers)| {
                let stored: Vec<(String, String)> =
                    serde_json::from_value(headers.clone()).unwrap_or_default();
                let parent = spm_telemetry::propagation::extract_pairs(
                    stored.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                );
                let base = topic
                    .strip_prefix(self.topic_prefix.as_str())
                    .unwrap_or(topic);
                let span = info_span!(
                    "publish",
                    otel.name = format!("publish {base}"),
                    otel.kind = "producer",
                    messaging.system = "kafka",
                    messaging.operation.type = "publish",
                    messaging.destination.name = %base,
                );
                spm_telemetry::propagation::set_parent(&span, parent);
                // The record carries the publish span's context (the consumer's parent).
                let mut headers: Vec<(String, String)> = stored
                    .into_iter()
                    .filter(|(k, _)| k != "traceparent" && k != "tracestate")
                    .collect();
                headers.extend(spm_telemetry::propagation::inject_span(&span));
                spans.push(span);
                Record {
                    topic: topic.clone(),
                    key: key.clone(),
                    payload: payload.clone(),
                    headers,
                }
            })
            .collect();
        let results = self.producer.send_all(&records).await;
        drop(spans);
        let mut sent = Vec::with_capacity(rows.len());
        let mut first_err = None;
        for ((id, topic, ..), res) in rows.iter().zip(results) {
            match res {
                Ok(_) => {
                    sent.push(*id);
                    spm_telemetry::metrics::global()
                        .records_published
                        .get_or_create(&spm_telemetry::metrics::labels([("topic", topic)]))
                        .inc();
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(Some(rows.len())),
        }
    }

    async fn update_gauges(&self) -> Result<(), sqlx::Error> {
        // From the ends of the id index, not a count: O(1) however long the backlog (a
        // count every second cost incentive's Postgres 3.5 s of CPU while 180k earnings
        // events queued). The span of ids is an upper bound on the rows (ids of rolled-back
        // writes count too), exact while the relay keeps up.
        let (backlog, age): (Option<i64>, Option<f64>) = sqlx::query_as(
            "SELECT (SELECT max(id) FROM outbox) - (SELECT min(id) FROM outbox) + 1,
                    EXTRACT(EPOCH FROM now() - (SELECT created_at FROM outbox ORDER BY id LIMIT 1))::float8",
        )
        .fetch_one(&self.pool)
        .await?;
        let m = spm_telemetry::metrics::global();
        m.outbox_backlog.set(backlog.unwrap_or(0));
        #[allow(clippy::cast_possible_truncation)]
        m.outbox_oldest_age_seconds
            .set(age.unwrap_or(0.0).round() as i64);
        Ok(())
    }
}
