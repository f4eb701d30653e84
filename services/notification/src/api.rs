//! `NotificationService` and `NotificationAdminService`.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::Stream;
use spm_core::validation::Violations;
use spm_proto::notification::v1 as pb;
use spm_proto::notification::v1::notification_admin_service_server::NotificationAdminService;
use spm_proto::notification::v1::notification_service_server::NotificationService;
use spm_server::ApiError;
use spm_server::auth::caller;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::fatigue::Quiet;
use crate::domain::rules::is_rule;

#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
    pub live: broadcast::Sender<String>,
    pub email: bool,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

const CHANNELS: &[&str] = &["in_app", "email", "webhook"];

#[derive(sqlx::FromRow)]
struct NoteRow {
    notification_id: Uuid,
    recipient: String,
    rule: String,
    title: String,
    body: String,
    data: serde_json::Value,
    source_event_id: String,
    created_at: DateTime<Utc>,
    read_at: Option<DateTime<Utc>>,
}

const NOTE_COLUMNS: &str =
    "notification_id, recipient, rule, title, body, data, source_event_id, created_at, read_at";

fn note_pb(n: NoteRow) -> pb::Notification {
    pb::Notification {
        notification_id: n.notification_id.to_string(),
        recipient: n.recipient,
        rule: n.rule,
        title: n.title,
        body: n.body,
        data_json: n.data.to_string(),
        source_event_id: n.source_event_id,
        created_at: Some(spm_proto::ext::timestamp(n.created_at)),
        read_at: n.read_at.map(spm_proto::ext::timestamp),
    }
}

type Live = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl NotificationService for Api {
    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let c = caller(&req)?;
        let mut r = req.into_inner();
        r.recipient = c.own_recipient(&r.recipient)?;
        let limit = i64::from(if r.limit == 0 { 50 } else { r.limit.min(500) });
        let rows: Vec<NoteRow> = sqlx::query_as(&format!(
            "SELECT {NOTE_COLUMNS} FROM notifications WHERE tenant_id = $1 AND ($2 = '' OR recipient = $2)
               AND (NOT $3 OR read_at IS NULL) ORDER BY created_at DESC, notification_id LIMIT $4"
        ))
        .bind(&c.tenant_id)
        .bind(&r.recipient)
        .bind(r.unread_only)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        let unread: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE tenant_id = $1 AND ($2 = '' OR recipient = $2) AND read_at IS NULL",
        )
        .bind(&c.tenant_id)
        .bind(&r.recipient)
        .fetch_one(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.into_iter().map(note_pb).collect(),
            unread: u32::try_from(unread).unwrap_or(u32::MAX),
        }))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let c = caller(&req)?;
        // A person marks only their own notifications; ids of others' change nothing.
        let own = match c.person {
            Some(_) => Some(c.own_recipient("")?),
            None => None,
        };
        let mut ids = Vec::new();
        for (i, s) in req.into_inner().notification_ids.iter().enumerate() {
            ids.push(Uuid::parse_str(s).map_err(|_| {
                ApiError::invalid(format!("notification_ids[{i}]"), "must be a UUID")
            })?);
        }
        let n = sqlx::query(
            "UPDATE notifications SET read_at = now()
              WHERE tenant_id = $1 AND notification_id = ANY($2) AND read_at IS NULL
                AND ($3::text IS NULL OR recipient = $3)",
        )
        .bind(&c.tenant_id)
        .bind(&ids)
        .bind(own)
        .execute(&self.pool)
        .await
        .map_err(ApiError::from)?
        .rows_affected();
        Ok(Response::new(pb::MarkReadResponse {
            marked: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }

    type SubscribeStream = Live;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Live>, Status> {
        let c = caller(&req)?;
        let recipient = c.own_recipient(&req.into_inner().recipient)?;
        let mut rx = self.live.subscribe();
        let pool = self.pool.clone();
        let tenant = c.tenant_id;
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "Subscribe stream lagged");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&msg) else {
                    continue;
                };
                if v["tenant"] != tenant.as_str()
                    || (!recipient.is_empty() && v["recipient"] != recipient.as_str())
                {
                    continue;
                }
                let Some(id) = v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
                    continue;
                };
                let row: Option<NoteRow> = sqlx::query_as(&format!(
                    "SELECT {NOTE_COLUMNS} FROM notifications WHERE tenant_id = $1 AND notification_id = $2"
                ))
                .bind(&tenant)
                .bind(id)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
                let Some(row) = row else { continue };
                if tx
                    .send(Ok(pb::SubscribeResponse {
                        notification: Some(note_pb(row)),
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn get_preferences(
        &self,
        req: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::GetPreferencesResponse>, Status> {
        let c = caller(&req)?;
        let mut r = req.into_inner();
        r.user_id = c.own_recipient(&r.user_id)?;
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT rule, channel, enabled FROM preferences WHERE tenant_id = $1 AND user_id = $2 ORDER BY rule, channel",
        )
        .bind(&c.tenant_id)
        .bind(&r.user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetPreferencesResponse {
            preferences: rows
                .into_iter()
                .map(|(rule, channel, enabled)| pb::Preference {
                    rule,
                    channel,
                    enabled,
                })
                .collect(),
        }))
    }

    async fn set_preference(
        &self,
        req: Request<pb::SetPreferenceRequest>,
    ) -> Result<Response<pb::SetPreferenceResponse>, Status> {
        let c = caller(&req)?;
        let mut r = req.into_inner();
        r.user_id = c.own_recipient(&r.user_id)?;
        let mut v = Violations::new();
        v.id("user_id", &r.user_id, 128);
        let p = r.preference.unwrap_or_default();
        if !is_rule(&p.rule) {
            v.add("preference.rule", format!("unknown rule {:?}", p.rule));
        }
        if !CHANNELS.contains(&p.channel.as_str()) {
            v.add("preference.channel", "must be in_app, email or webhook");
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        sqlx::query(
            "INSERT INTO preferences (tenant_id, user_id, rule, channel, enabled) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, user_id, rule, channel) DO UPDATE SET enabled = EXCLUDED.enabled",
        )
        .bind(&c.tenant_id)
        .bind(&r.user_id)
        .bind(&p.rule)
        .bind(&p.channel)
        .bind(p.enabled)
        .execute(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::SetPreferenceResponse {
            preference: Some(p),
        }))
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let c = caller(&req)?;
        c.require_tenant_reader()?;
        let r = req.into_inner();
        let nid = if r.notification_id.is_empty() {
            None
        } else {
            Some(
                Uuid::parse_str(&r.notification_id)
                    .map_err(|_| ApiError::invalid("notification_id", "must be a UUID"))?,
            )
        };
        let limit = i64::from(if r.limit == 0 { 100 } else { r.limit.min(1000) });
        #[derive(sqlx::FromRow)]
        struct D {
            delivery_id: Uuid,
            notification_id: Uuid,
            channel: String,
            target: String,
            status: String,
            attempts: i32,
            next_attempt_at: DateTime<Utc>,
            delivered_at: Option<DateTime<Utc>>,
            last_error: String,
            created: DateTime<Utc>,
        }
        let rows: Vec<D> = sqlx::query_as(
            "SELECT d.delivery_id, d.notification_id, d.channel, d.target, d.status, d.attempts, d.next_attempt_at, d.delivered_at,
                    d.last_error, n.created_at AS created
               FROM deliveries d JOIN notifications n ON n.tenant_id = d.tenant_id AND n.notification_id = d.notification_id
              WHERE d.tenant_id = $1 AND ($2 = '' OR d.status = $2) AND ($3::uuid IS NULL OR d.notification_id = $3)
              ORDER BY d.created_at DESC LIMIT $4",
        )
        .bind(&c.tenant_id)
        .bind(&r.status)
        .bind(nid)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        let ids: Vec<Uuid> = rows.iter().map(|d| d.delivery_id).collect();
        let attempts: Vec<(Uuid, i32, DateTime<Utc>, i32, String, i32)> = sqlx::query_as(
            "SELECT delivery_id, attempt, at, code, error, duration_ms FROM attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: rows
                .into_iter()
                .map(|d| pb::Delivery {
                    attempt_log: attempts
                        .iter()
                        .filter(|a| a.0 == d.delivery_id)
                        .map(|a| pb::Attempt {
                            attempt: u32::try_from(a.1).unwrap_or(0),
                            at: Some(spm_proto::ext::timestamp(a.2)),
                            code: u32::try_from(a.3).unwrap_or(0),
                            error: a.4.clone(),
                            duration_ms: u32::try_from(a.5).unwrap_or(0),
                        })
                        .collect(),
                    latency_ms: d.delivered_at.map_or(0, |t| {
                        u32::try_from((t - d.created).num_milliseconds().max(0)).unwrap_or(u32::MAX)
                    }),
                    delivery_id: d.delivery_id.to_string(),
                    notification_id: d.notification_id.to_string(),
                    channel: d.channel,
                    target: d.target,
                    status: d.status,
                    attempts: u32::try_from(d.attempts).unwrap_or(0),
                    next_attempt_at: Some(spm_proto::ext::timestamp(d.next_attempt_at)),
                    delivered_at: d.delivered_at.map(spm_proto::ext::timestamp),
                    last_error: d.last_error,
                })
                .collect(),
        }))
    }
}

fn settings_pb(s: &crate::store::Settings) -> pb::Settings {
    pb::Settings {
        quiet_start: s.quiet_start.clone(),
        quiet_end: s.quiet_end.clone(),
        rate_limit_per_hour: u32::try_from(s.rate_limit_per_hour).unwrap_or(0),
        digest: s.digest.clone(),
        digest_hour: u32::try_from(s.digest_hour).unwrap_or(18),
        top_n: u32::try_from(s.top_n).unwrap_or(5),
        disabled_rules: s.disabled_rules.clone(),
    }
}

/// Settings as the audit trail shows them.
fn settings_json(s: &crate::store::Settings) -> serde_json::Value {
    serde_json::json!({
        "quiet_start": s.quiet_start,
        "quiet_end": s.quiet_end,
        "rate_limit_per_hour": s.rate_limit_per_hour,
        "digest": s.digest,
        "digest_hour": s.digest_hour,
        "top_n": s.top_n,
        "disabled_rules": s.disabled_rules,
    })
}

#[tonic::async_trait]
impl NotificationAdminService for Api {
    async fn put_webhook(
        &self,
        req: Request<pb::PutWebhookRequest>,
    ) -> Result<Response<pb::PutWebhookResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let r = req.into_inner();
        let mut v = Violations::new();
        match reqwest::Url::parse(&r.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => v.add("url", "must be an absolute http(s) URL"),
        }
        for (i, rule) in r.rules.iter().enumerate() {
            if !is_rule(rule) {
                v.add(format!("rules[{i}]"), format!("unknown rule {rule:?}"));
            }
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let id = Uuid::new_v4();
        let secret = spm_server::auth::generate_secret();
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        sqlx::query("INSERT INTO webhooks (tenant_id, webhook_id, url, secret, rules) VALUES ($1, $2, $3, $4, $5)")
            .bind(&c.tenant_id)
            .bind(id)
            .bind(&r.url)
            .bind(&secret)
            .bind(&r.rules)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new("notification", "webhook.put", format!("webhook:{id}"))
                .after(serde_json::json!({"url": r.url, "rules": r.rules, "enabled": true})),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::PutWebhookResponse {
            webhook: Some(pb::Webhook {
                webhook_id: id.to_string(),
                url: r.url,
                rules: r.rules,
                enabled: true,
            }),
            secret,
        }))
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let c = caller(&req)?;
        let rows: Vec<(Uuid, String, Vec<String>, bool)> =
            sqlx::query_as("SELECT webhook_id, url, rules, enabled FROM webhooks WHERE tenant_id = $1 ORDER BY created_at")
                .bind(&c.tenant_id)
                .fetch_all(&self.pool)
                .await
                .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: rows
                .into_iter()
                .map(|(id, url, rules, enabled)| pb::Webhook {
                    webhook_id: id.to_string(),
                    url,
                    rules,
                    enabled,
                })
                .collect(),
        }))
    }

    async fn disable_webhook(
        &self,
        req: Request<pb::DisableWebhookRequest>,
    ) -> Result<Response<pb::DisableWebhookResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let id = Uuid::parse_str(&req.into_inner().webhook_id)
            .map_err(|_| ApiError::invalid("webhook_id", "must be a UUID"))?;
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        let before: Option<(String, Vec<String>, bool)> = sqlx::query_as(
            "SELECT url, rules, enabled FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2 FOR UPDATE",
        )
        .bind(&c.tenant_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let Some((url, rules, enabled)) = before else {
            return Err(ApiError::NotFound(format!("webhook {id}")).into());
        };
        sqlx::query("UPDATE webhooks SET enabled = false WHERE tenant_id = $1 AND webhook_id = $2")
            .bind(&c.tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "notification",
                "webhook.disable",
                format!("webhook:{id}"),
            )
            .before(serde_json::json!({"url": url, "rules": rules, "enabled": enabled}))
            .after(serde_json::json!({"url": url, "rules": rules, "enabled": false})),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::DisableWebhookResponse {}))
    }

    async fn get_settings(
        &self,
        req: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let c = caller(&req)?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let s = crate::store::settings(&mut conn, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetSettingsResponse {
            settings: Some(settings_pb(&s)),
        }))
    }

    async fn set_settings(
        &self,
        req: Request<pb::SetSettingsRequest>,
    ) -> Result<Response<pb::SetSettingsResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let s = req.into_inner().settings.unwrap_or_default();
        let mut v = Violations::new();
        if let Err(e) = Quiet::parse(&s.quiet_start, &s.quiet_end) {
            v.add("settings.quiet_start", e);
        }
        let digest = if s.digest.is_empty() {
            "off".to_owned()
        } else {
            s.digest.clone()
        };
        if !["off", "daily", "weekly"].contains(&digest.as_str()) {
            v.add("settings.digest", "must be off, daily or weekly");
        }
        if s.digest_hour > 23 {
            v.add("settings.digest_hour", "must be 0..=23");
        }
        if s.top_n > 100 {
            v.add("settings.top_n", "must be at most 100");
        }
        for (i, r) in s.disabled_rules.iter().enumerate() {
            if !is_rule(r) {
                v.add(
                    format!("settings.disabled_rules[{i}]"),
                    format!("unknown rule {r:?}"),
                );
            }
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let stored = crate::store::Settings {
            quiet_start: s.quiet_start.clone(),
            quiet_end: s.quiet_end.clone(),
            rate_limit_per_hour: i32::try_from(s.rate_limit_per_hour).unwrap_or(i32::MAX),
            digest,
            digest_hour: i32::try_from(s.digest_hour).unwrap_or(18),
            top_n: i32::try_from(if s.top_n == 0 { 5 } else { s.top_n }).unwrap_or(5),
            disabled_rules: s.disabled_rules.clone(),
        };
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        let before = crate::store::settings(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "notification",
                "settings.set",
                format!("tenant:{}", c.tenant_id),
            )
            .before(settings_json(&before))
            .after(settings_json(&stored)),
        )
        .await
        .map_err(ApiError::from)?;
        sqlx::query(
            "INSERT INTO settings (tenant_id, quiet_start, quiet_end, rate_limit_per_hour, digest, digest_hour, top_n, disabled_rules)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant_id) DO UPDATE SET quiet_start = EXCLUDED.quiet_start, quiet_end = EXCLUDED.quiet_end,
               rate_limit_per_hour = EXCLUDED.rate_limit_per_hour, digest = EXCLUDED.digest, digest_hour = EXCLUDED.digest_hour,
               top_n = EXCLUDED.top_n, disabled_rules = EXCLUDED.disabled_rules",
        )
        .bind(&c.tenant_id)
        .bind(&stored.quiet_start)
        .bind(&stored.quiet_end)
        .bind(stored.rate_limit_per_hour)
        .bind(&stored.digest)
        .bind(stored.digest_hour)
        .bind(stored.top_n)
        .bind(&stored.disabled_rules)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::SetSettingsResponse {
            settings: Some(settings_pb(&stored)),
        }))
    }

    async fn send_digests(
        &self,
        req: Request<pb::SendDigestsRequest>,
    ) -> Result<Response<pb::SendDigestsResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let sent = crate::digest::send_due(&self.pool, Some(&c.tenant_id), true, self.email)
            .await
            .map_err(ApiError::from)?;
        self.wake.notify_one();
        Ok(Response::new(pb::SendDigestsResponse { sent }))
    }
}
