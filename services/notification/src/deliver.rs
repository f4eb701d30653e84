//! The delivery worker: claims due deliveries (a lease, so several instances share the
//! work), sends each in its own task so a slow or failing endpoint delays no other, and
//! records every attempt. Failures retry with exponential backoff and jitter; after the
//! last attempt a delivery is dead (and listed by `ListDeliveries`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::{fatigue, templates};

/// Retry and timeout policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
}

/// SMTP settings.
#[derive(Clone)]
pub struct Smtp {
    pub transport: AsyncSmtpTransport<Tokio1Executor>,
    pub from: Mailbox,
}

#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub http: reqwest::Client,
    pub smtp: Option<Smtp>,
    pub wake: Arc<Notify>,
    pub policy: Policy,
}

#[derive(Debug, sqlx::FromRow)]
struct Due {
    delivery_id: Uuid,
    tenant_id: String,
    notification_id: Uuid,
    channel: String,
    target: String,
    attempts: i32,
    is_summary: bool,
    summary_key: Option<String>,
    // The notification and the webhook's secret, read with the claim (absent: deleted).
    recipient: Option<String>,
    rule: Option<String>,
    title: Option<String>,
    body: Option<String>,
    data: Option<serde_json::Value>,
    source_event_id: Option<String>,
    trace: Option<serde_json::Value>,
    created_at: Option<DateTime<Utc>>,
    secret: Option<String>,
}

impl Due {
    /// The notification read with the claim, if it still exists.
    fn take_note(&mut self) -> Option<Note> {
        Some(Note {
            recipient: self.recipient.take()?,
            rule: self.rule.take()?,
            title: self.title.take()?,
            body: self.body.take()?,
            data: self.data.take()?,
            source_event_id: self.source_event_id.take()?,
            trace: self.trace.take()?,
            created_at: self.created_at.take()?,
        })
    }
}

#[derive(Debug)]
struct Note {
    recipient: String,
    rule: String,
    title: String,
    body: String,
    data: serde_json::Value,
    source_event_id: String,
    trace: serde_json::Value,
    created_at: DateTime<Utc>,
}

enum Outcome {
    Delivered(u32),
    Failed(u32, String),
}

impl Worker {
    pub async fn run(self, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(64));
        loop {
            let claimed = match self.claim(200).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery worker: cannot claim");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let idle = claimed.is_empty();
            for d in claimed {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let w = self.clone();
                tokio::spawn(async move {
                    w.attempt(d).await;
                    drop(permit);
                });
            }
            if idle {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }

    /// Leases up to `n` due deliveries, with their notification and webhook secret (one
    /// statement: nothing more is read before sending).
    async fn claim(&self, n: i64) -> Result<Vec<Due>, sqlx::Error> {
        sqlx::query_as(
            "WITH claimed AS (
               UPDATE deliveries d SET lease_until = clock_timestamp() + interval '60 seconds'
                 FROM (SELECT delivery_id FROM deliveries
                        WHERE status IN ('pending', 'deferred') AND next_attempt_at <= clock_timestamp()
                          AND (lease_until IS NULL OR lease_until < clock_timestamp())
                        ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
                WHERE d.delivery_id = due.delivery_id
            RETURNING d.delivery_id, d.tenant_id, d.notification_id, d.channel, d.target, d.webhook_id, d.attempts,
                      d.is_summary, d.summary_key)
             SELECT c.delivery_id, c.tenant_id, c.notification_id, c.channel, c.target, c.attempts,
                    c.is_summary, c.summary_key, n.recipient, n.rule, n.title, n.body, n.data, n.source_event_id, n.trace, n.created_at,
                    w.secret
               FROM claimed c
               LEFT JOIN notifications n ON n.tenant_id = c.tenant_id AND n.notification_id = c.notification_id
               LEFT JOIN webhooks w ON w.tenant_id = c.tenant_id AND w.webhook_id = c.webhook_id",
        )
        .bind(n)
        .fetch_all(&self.pool)
        .await
    }

    async fn attempt(&self, mut d: Due) {
        let Some(note) = d.take_note() else {
            tracing::warn!(delivery = %d.delivery_id, "delivery without notification");
            return;
        };
        let stored: Vec<(String, String)> =
            serde_json::from_value(note.trace.clone()).unwrap_or_default();
        let span = tracing::info_span!(
            "deliver",
            otel.name = format!("deliver {}", d.channel),
            otel.kind = "client",
            notification.channel = %d.channel,
            notification.rule = %note.rule,
            tenant = %d.tenant_id,
            delivery.attempt = d.attempts + 1,
        );
        spm_telemetry::propagation::set_parent(
            &span,
            spm_telemetry::propagation::extract_pairs(
                stored.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
        );
        let started = Instant::now();
        let (title, body) = if d.is_summary {
            self.summary(&d).await
        } else {
            (note.title.clone(), note.body.clone())
        };
        let outcome = match d.channel.as_str() {
            "webhook" => {
                self.webhook(&d, &note, &title, &body)
                    .instrument(span.clone())
                    .await
            }
            "email" => {
                self.email(&d, &note, &title, &body)
                    .instrument(span.clone())
                    .await
            }
            other => Outcome::Failed(0, format!("unknown channel {other}")),
        };
        let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let attempt = d.attempts + 1;
        let (code, error, status, next) = match &outcome {
            Outcome::Delivered(code) => (*code, String::new(), "delivered", Utc::now()),
            Outcome::Failed(code, e) => {
                let dead = u32::try_from(attempt).unwrap_or(u32::MAX) >= self.policy.max_attempts;
                let delay = fatigue::backoff(
                    u32::try_from(attempt + 1).unwrap_or(2),
                    self.policy.backoff_base,
                    self.policy.backoff_max,
                    rand::random::<f64>(),
                );
                let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                (
                    *code,
                    e.clone(),
                    if dead { "dead" } else { "pending" },
                    next,
                )
            }
        };
        let m = spm_telemetry::metrics::global();
        let label = match (status, d.channel.as_str()) {
            ("delivered", _) => "delivered",
            ("dead", _) => "dead",
            _ => "retry",
        };
        m.http_requests
            .get_or_create(&spm_telemetry::metrics::labels([
                ("route", &format!("deliver_{}", d.channel)),
                ("status", label),
            ]))
            .inc();
        crate::metrics::delivery(
            &d.channel,
            label,
            (Utc::now() - note.created_at).num_milliseconds(),
        );
        if status == "dead" {
            tracing::warn!(parent: &span, delivery = %d.delivery_id, target = %d.target, attempts = attempt, error = %error, "delivery dead");
        }
        // The attempt and the delivery's new state in one statement (atomic on its own).
        let res = sqlx::query(
            "WITH recorded AS (
               INSERT INTO attempts (delivery_id, attempt, code, error, duration_ms) VALUES ($1, $2, $6, $5, $7))
             UPDATE deliveries SET attempts = $2, status = $3, next_attempt_at = $4, lease_until = NULL, last_error = $5,
                    delivered_at = CASE WHEN $3 = 'delivered' THEN clock_timestamp() END
              WHERE delivery_id = $1",
        )
        .bind(d.delivery_id)
        .bind(attempt)
        .bind(status)
        .bind(next)
        .bind(&error)
        .bind(i32::try_from(code).unwrap_or(0))
        .bind(i32::try_from(ms).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await;
        if let Err(e) = res {
            tracing::warn!(delivery = %d.delivery_id, error = %e, "could not record delivery attempt; the lease expiry retries it");
        }
        if status == "pending" {
            // Wake after the backoff so the retry is not late.
            let wake = self.wake.clone();
            let delay = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                wake.notify_one();
            });
        }
    }

    async fn summary(&self, d: &Due) -> (String, String) {
        let titles: Vec<String> = sqlx::query_scalar(
            "SELECT n.title FROM deliveries x JOIN notifications n ON n.tenant_id = x.tenant_id AND n.notification_id = x.notification_id
              WHERE x.tenant_id = $1 AND x.summary_key = $2 AND NOT x.is_summary ORDER BY n.created_at",
        )
        .bind(&d.tenant_id)
        .bind(d.summary_key.as_deref().unwrap_or_default())
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        (
            format!("{} updates while you were busy", titles.len()),
            titles
                .iter()
                .map(|t| format!("- {t}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    async fn webhook(&self, d: &Due, note: &Note, title: &str, body: &str) -> Outcome {
        let Some(secret) = d.secret.as_deref() else {
            return Outcome::Failed(0, "webhook no longer exists".into());
        };
        let payload = serde_json::json!({
            "delivery_id": d.delivery_id, "notification_id": d.notification_id, "tenant": d.tenant_id,
            "rule": if d.is_summary { "summary" } else { note.rule.as_str() }, "recipient": note.recipient,
            "title": title, "body": body, "data": note.data, "source_event_id": note.source_event_id,
            "created_at": note.created_at.to_rfc3339(),
        });
        let bytes = serde_json::to_vec(&payload).expect("json");
        let ts = Utc::now().timestamp();
        let mut headers = http::HeaderMap::new();
        spm_telemetry::propagation::inject_http(&mut headers);
        let req = self
            .http
            .post(&d.target)
            .headers(headers)
            .header("content-type", "application/json")
            .header("x-spm-timestamp", ts.to_string())
            .header(
                "x-spm-signature",
                spm_core::signature::sign(secret, ts, &bytes),
            )
            .header("x-spm-delivery-id", d.delivery_id.to_string())
            .header("x-spm-rule", note.rule.as_str())
            .timeout(self.policy.timeout)
            .body(bytes);
        match req.send().await {
            Ok(r) if r.status().is_success() => Outcome::Delivered(u32::from(r.status().as_u16())),
            Ok(r) => Outcome::Failed(
                u32::from(r.status().as_u16()),
                format!("HTTP {}", r.status()),
            ),
            Err(e) => Outcome::Failed(0, e.to_string()),
        }
    }

    async fn email(&self, d: &Due, note: &Note, title: &str, body: &str) -> Outcome {
        let Some(smtp) = &self.smtp else {
            return Outcome::Failed(0, "e-mail is not configured (SPM_SMTP_URL)".into());
        };
        let name: String = sqlx::query_scalar(
            "SELECT display_name FROM org_reps WHERE tenant_id = $1 AND rep_id = $2",
        )
        .bind(&d.tenant_id)
        .bind(&note.recipient)
        .fetch_optional(&self.pool)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| note.recipient.clone());
        let (subject, text, html) = templates::email(title, body, &name);
        let to: Mailbox = match d.target.parse() {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(0, format!("bad address {}: {e}", d.target)),
        };
        let msg = match Message::builder()
            .from(smtp.from.clone())
            .to(to)
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .multipart(MultiPart::alternative_plain_html(text, html))
        {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(0, e.to_string()),
        };
        match tokio::time::timeout(self.policy.timeout, smtp.transport.send(msg)).await {
            Ok(Ok(r)) => Outcome::Delivered(u32::from(r.code().severity as u8) * 100),
            Ok(Err(e)) => Outcome::Failed(0, e.to_string()),
            Err(_) => Outcome::Failed(0, "SMTP timeout".into()),
        }
    }
}
